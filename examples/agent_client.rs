//! A terminal client for `agent_server --demo`: gets a demo token, connects
//! (token in `Sec-WebSocket-Protocol`, as a browser would send it), starts an
//! agent run, and after `agent_thinking` loses the network the worst way: it
//! stops reading while the run goes on, then the connection is reset with
//! unread data. It reconnects with `?resume=<stream>:<sequence>`, the offset
//! of the last critical event it saw, and prints what arrives: every critical
//! event it missed, the final answer included, in order, exactly once (or a
//! resync notice first, if the server could no longer replay them).
//!
//! It follows the wire protocol (`docs/protocol.md`): it reads the `hello`
//! frame before it starts the run (from then on every event reaches it),
//! watches the server's liveness (any frame within `heartbeat_ms` + 10 s),
//! and refreshes its token in-band at 80 % of its lifetime.
//!
//! ```text
//! cargo run --example agent_server -- --demo &
//! cargo run --example agent_client -- --port 3000 --user alice
//! ```

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use websocket_manager::transport::Hello;

type Client = WebSocketStream<TcpStream>;
type Error = Box<dyn std::error::Error>;

/// `POST /demo-token` over plain HTTP/1.1 (loopback only, no TLS).
async fn demo_token(port: u16, user: &str) -> Result<String, Error> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let body = json!({ "user": user }).to_string();
    let request = format!(
        "POST /demo-token HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("malformed response")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("demo token refused: {}", head.lines().next().unwrap_or("")).into());
    }
    let value: Value = serde_json::from_str(body)?;
    Ok(value["token"]
        .as_str()
        .ok_or("no token in the response")?
        .to_owned())
}

/// What the client knows of its connection, from the `hello` frame on.
struct Session {
    port: u16,
    user: String,
    /// The newest token: a reconnect uses it.
    token: String,
    /// The server is presumed dead after this long without any frame.
    dead_after: Duration,
    /// When to send a fresh token (80 % of the current one's lifetime).
    refresh_at: Option<tokio::time::Instant>,
}

impl Session {
    /// Schedules the next refresh at 80 % of the time left until
    /// `expires_at` (server clock, Unix ms), measured against the server's
    /// `now` so that a skewed local clock does not matter.
    fn schedule_refresh(&mut self, expires_at: Option<u64>, server_now: u64) {
        self.refresh_at = expires_at.map(|expires_at| {
            let left = Duration::from_millis(expires_at.saturating_sub(server_now));
            tokio::time::Instant::now() + left.mul_f64(0.8)
        });
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Opens the socket and reads its `hello` frame.
async fn connect(
    session: &mut Session,
    token: &str,
    thread: &str,
    resume: Option<&str>,
) -> Result<Client, Error> {
    let port = session.port;
    let resume = resume.map(|o| format!("&resume={o}")).unwrap_or_default();
    let mut request =
        format!("ws://127.0.0.1:{port}/ws?thread={thread}{resume}").into_client_request()?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("websocket-manager, bearer.{token}").parse()?,
    );
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let (client, response) = tokio_tungstenite::client_async(request, stream).await?;
    println!(
        "connected; server selected subprotocol {:?}",
        response.headers().get("sec-websocket-protocol")
    );
    let mut client = client;
    let hello = loop {
        let message = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .map_err(|_| "no hello frame within 10 s")?
            .ok_or("the server closed before its hello")??;
        match message {
            Message::Text(text) => break serde_json::from_str::<Hello>(&text)?,
            Message::Close(frame) => {
                return Err(format!("refused after the upgrade: {frame:?}").into());
            }
            _ => continue,
        }
    };
    if hello.protocol != websocket_manager::transport::PROTOCOL_VERSION {
        return Err(format!("the server speaks protocol {}", hello.protocol).into());
    }
    println!(
        "hello: user {} (connection {}), latest event {}, retained: {}",
        hello.user,
        hello.connection_id,
        hello
            .latest
            .map_or("unknown".to_owned(), |offset| offset.to_string()),
        hello.retention.map_or("unknown".to_owned(), |r| format!(
            "{} events for {} s, oldest {}",
            r.max_events,
            r.max_age_ms / 1000,
            r.oldest
                .map_or("none".to_owned(), |offset| offset.to_string())
        )),
    );
    session.dead_after = hello.heartbeat_ms.map_or(Duration::from_secs(60), |ms| {
        Duration::from_millis(ms) + Duration::from_secs(10)
    });
    session.schedule_refresh(hello.token_expires_at, hello.ts);
    Ok(client)
}

/// Sends a fresh token when the current one nears its expiry.
async fn refresh_if_due(client: &mut Client, session: &mut Session) -> Result<(), Error> {
    if session
        .refresh_at
        .is_none_or(|at| tokio::time::Instant::now() < at)
    {
        return Ok(());
    }
    session.refresh_at = None; // one refresh in flight
    let token = demo_token(session.port, &session.user).await?;
    println!("  (token at 80 % of its lifetime: refreshing it in-band)");
    client
        .send(Message::text(
            json!({"type": "refresh_token", "token": token}).to_string(),
        ))
        .await?;
    session.token = token;
    Ok(())
}

/// Prints events until `stop` returns true for one, or the server looks
/// dead (no frame, not even a heartbeat, within `heartbeat_ms` + 10 s),
/// keeping in `last` the offset of the last critical event seen.
async fn print_until(
    client: &mut Client,
    session: &mut Session,
    last: &mut Option<String>,
    stop: impl Fn(&Value) -> bool,
) -> Result<(), Error> {
    loop {
        refresh_if_due(client, session).await?;
        let next = tokio::time::timeout(session.dead_after, client.next()).await;
        let Ok(Some(message)) = next else {
            println!(
                "  (no frame within {:?}: the server is gone)",
                session.dead_after
            );
            return Ok(());
        };
        if let Message::Text(text) = message? {
            let event: Value = serde_json::from_str(&text)?;
            match event["type"].as_str() {
                Some("heartbeat") => continue,
                Some("token_refreshed") => {
                    println!(
                        "  token refreshed; the connection now lasts until {}",
                        event["expires_at"]
                    );
                    let expires_at = event["expires_at"].as_u64();
                    session.schedule_refresh(
                        expires_at,
                        event["ts"].as_u64().unwrap_or_else(unix_millis),
                    );
                    continue;
                }
                Some("error") if event["code"] == "token_refresh_refused" => {
                    println!(
                        "  token refresh refused ({}); the connection ends at the old expiry",
                        event["detail"]
                    );
                    continue;
                }
                _ => {}
            }
            if event["type"] == "resync" {
                println!(
                    "  RESYNC: missed {} event(s) ({}); reload the run's state. {event}",
                    event["lost"], event["reason"]
                );
                continue;
            }
            if event["type"] == "busy" {
                return Err(format!(
                    "the server refused the run: its {} limit on concurrent runs is reached",
                    event["limit"].as_str().unwrap_or("?")
                )
                .into());
            }
            if event["critical"] == true {
                *last = Some(format!("{}:{}", event["stream"], event["sequence"]));
            }
            println!(
                "  {:<16} stream={} seq={:<3} {}",
                event["type"].as_str().unwrap_or("?"),
                event["stream"],
                event["sequence"],
                event.get("data").unwrap_or(&event)
            );
            if stop(&event) {
                return Ok(());
            }
        }
    }
}

async fn run(port: u16, user: &str) -> Result<(), Error> {
    let token = demo_token(port, user).await?;
    let thread = format!("{user}:thread-1");
    let mut last = None;
    let mut session = Session {
        port,
        user: user.to_owned(),
        token: token.clone(),
        dead_after: Duration::from_secs(60),
        refresh_at: None,
    };
    // Once the hello is read the connection is registered: the run's first
    // event cannot be missed.
    let mut client = connect(&mut session, &token, &thread, None).await?;
    client
        .send(Message::text(
            json!({"type": "run", "prompt": "What is the weather in Lisbon?"}).to_string(),
        ))
        .await?;
    println!("run started; the network goes away after agent_thinking:");
    print_until(&mut client, &mut session, &mut last, |event| {
        event["type"] == "agent_thinking"
    })
    .await?;
    println!("not reading for 4 s while the run goes on, then a connection reset...");
    tokio::time::sleep(Duration::from_secs(4)).await;
    // SO_LINGER 0: closing with unread data sends RST, as a dead network does.
    client.get_ref().set_zero_linger()?;
    drop(client);
    let resume = last.clone();
    println!(
        "back online, resuming after {}; what arrives:",
        resume.as_deref().unwrap_or("(nothing seen)")
    );
    let token = session.token.clone();
    let mut client = connect(&mut session, &token, &thread, resume.as_deref()).await?;
    print_until(&mut client, &mut session, &mut last, |event| {
        event["type"] == "final_answer"
    })
    .await?;
    client.close(None).await?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut port = 3000u16;
    let mut user = "alice".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--port", Some(value)) => match value.parse() {
                Ok(value) => port = value,
                Err(_) => {
                    eprintln!("--port: `{value}` is not a port number");
                    return ExitCode::from(2);
                }
            },
            ("--user", Some(value)) => user = value,
            _ => {
                eprintln!("usage: agent_client [--port N] [--user NAME]");
                return ExitCode::from(2);
            }
        }
    }
    match run(port, &user).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
