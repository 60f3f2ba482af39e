//! A terminal client for `agent_server --demo`: gets a demo token, connects
//! (token in `Sec-WebSocket-Protocol`, as a browser would send it), starts an
//! agent run, and after `agent_thinking` loses the network the worst way: it
//! stops reading while the run goes on, then the connection is reset with
//! unread data. It reconnects with `?resume=<stream>:<sequence>`, the offset
//! of the last critical event it saw, and prints what arrives: every critical
//! event it missed, the final answer included, in order, exactly once (or a
//! resync notice first, if the server could no longer replay them).
//!
//! ```text
//! cargo run --example agent_server -- --demo &
//! cargo run --example agent_client -- --port 3000 --user alice
//! ```

use std::process::ExitCode;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

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

async fn connect(
    port: u16,
    token: &str,
    thread: &str,
    resume: Option<&str>,
) -> Result<Client, Error> {
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
    Ok(client)
}

/// Prints events until `stop` returns true for one, or 10 s pass quietly,
/// keeping in `last` the offset of the last critical event seen.
async fn print_until(
    client: &mut Client,
    last: &mut Option<String>,
    stop: impl Fn(&Value) -> bool,
) -> Result<(), Error> {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), client.next()).await;
        let Ok(Some(message)) = next else {
            println!("  (no more events)");
            return Ok(());
        };
        if let Message::Text(text) = message? {
            let event: Value = serde_json::from_str(&text)?;
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
    let mut client = connect(port, &token, &thread, None).await?;
    client
        .send(Message::text(
            json!({"type": "run", "prompt": "What is the weather in Lisbon?"}).to_string(),
        ))
        .await?;
    println!("run started; the network goes away after agent_thinking:");
    print_until(&mut client, &mut last, |event| {
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
    let mut client = connect(port, &token, &thread, resume.as_deref()).await?;
    print_until(&mut client, &mut last, |event| {
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
