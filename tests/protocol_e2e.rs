//! The wire protocol of `docs/protocol.md`, end to end over real loopback
//! sockets, on both adapters (axum and tokio-tungstenite) serving the same
//! service: the `hello` frame (first, after registration, with where the
//! client stands), its order before the resync notice and the replay, the
//! in-band token refresh, and the application heartbeat.
#![allow(clippy::unwrap_used)]

mod e2e_support;

use std::net::SocketAddr;
use std::time::Duration;

use e2e_support::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use websocket_manager::transport::{
    HandlerError, InboundContext, InboundError, InboundMessage, TransportConfig, handler_fn,
};
use websocket_manager::{AGENT_EVENTS, ManagerConfig, StreamOffset, UserId, WebSocketManager};

fn alice() -> UserId {
    UserId::new("alice").unwrap()
}

/// One service, reachable through both adapters.
struct Servers {
    server: TestServer,
    tungstenite: SocketAddr,
}

impl Servers {
    async fn start(options: ServerOptions) -> Servers {
        let server = TestServer::start(options).await;
        let tungstenite = tungstenite_server(server.service.clone()).await;
        Servers {
            server,
            tungstenite,
        }
    }

    /// `(adapter name, address)` of both adapters.
    fn adapters(&self) -> [(&'static str, SocketAddr); 2] {
        [
            ("axum", self.server.addr),
            ("tungstenite", self.tungstenite),
        ]
    }
}

/// Connects with a bearer token; nothing read yet.
async fn open(addr: SocketAddr, path: &str, token: String) -> Client {
    try_connect(addr, Connect::new(path, Some(token)))
        .await
        .unwrap()
        .0
}

/// The next frame, which must be JSON (pings skipped, nothing else).
async fn frame(client: &mut Client) -> Value {
    match next_frame(client).await {
        Seen::Json(value) => value,
        other => panic!("expected a JSON frame, got {other:?}"),
    }
}

/// The first frame, which must be a `hello`.
async fn read_hello(client: &mut Client) -> Value {
    let first = frame(client).await;
    assert_eq!(first["type"], "hello", "the first frame: {first}");
    first
}

fn offset(value: &Value) -> Value {
    json!({"stream": value["stream"], "sequence": value["sequence"]})
}

fn manager_config() -> ManagerConfig {
    ManagerConfig::builder()
        .history_capacity(64)
        .history_max_age(Duration::from_secs(90))
        .build()
        .unwrap()
}

#[tokio::test]
async fn hello_comes_first_and_says_who_where_and_until_when() {
    bounded(async {
        let servers = Servers::start(ServerOptions {
            manager: manager_config(),
            transport: TransportConfig::builder()
                .ping_interval(Duration::from_secs(7))
                .build()
                .unwrap(),
            ..ServerOptions::default()
        })
        .await;
        let manager = &servers.server.manager;
        // Three events nobody took: replayed after the hello.
        let mut emitted = Vec::new();
        for event in &AGENT_EVENTS[..3] {
            let delivery = manager
                .emit_critical_event(&alice(), event, json!({}))
                .await
                .unwrap();
            emitted.push(delivery.offset().unwrap());
        }
        let stream = emitted[0].stream;
        for (adapter, addr) in servers.adapters() {
            let exp = unix_secs() + 600;
            let mut tab = open(addr, "/ws", token_expiring("alice", exp, SECRET)).await;
            let hello = read_hello(&mut tab).await;
            let ids = manager.get_user_connections(&alice());
            assert_eq!(ids.len(), 1, "{adapter}");
            let id = ids.into_iter().next().unwrap();
            assert_eq!(hello["protocol"], 1, "{adapter}");
            assert_eq!(hello["user"], "alice", "{adapter}");
            assert_eq!(hello["connection_id"], id.as_str(), "{adapter}");
            assert_eq!(hello["token_expires_at"], exp * 1000, "{adapter}");
            assert_eq!(
                hello["latest"],
                json!({"stream": stream, "sequence": 3}),
                "{adapter}"
            );
            assert_eq!(
                hello["retention"],
                json!({"max_events": 64, "max_age_ms": 90_000, "oldest": {"stream": stream, "sequence": 1}}),
                "{adapter}"
            );
            assert_eq!(hello["heartbeat_ms"], 7000, "{adapter}");
            if adapter == "axum" {
                // The first connection takes the pending events, after the hello.
                for sequence in 1..=3 {
                    let event = frame(&mut tab).await;
                    assert_eq!(offset(&event), json!({"stream": stream, "sequence": sequence}));
                }
            }
            close(tab).await;
            servers.server.wait_connections("alice", 0).await;
        }
        // A user the manager never saw: a fresh stream with nothing in it.
        let mut bob = open(servers.tungstenite, "/ws", token("bob", 60)).await;
        let hello = read_hello(&mut bob).await;
        assert_eq!(hello["latest"]["sequence"], 0, "{hello}");
        assert_eq!(hello["retention"]["oldest"], Value::Null, "{hello}");
        close(bob).await;
        servers.server.assert_indexes_empty().await;
    })
    .await;
}

/// The ordering promise: once a client has the hello, it is registered,
/// so a run emitted at that instant reaches it whole. (Before the hello,
/// the 101 came before the registration, and a test that emitted as soon as
/// the handshake returned lost the first event about once in fifteen.)
#[tokio::test]
async fn a_run_emitted_as_soon_as_hello_arrives_is_received_whole() {
    bounded(async {
        let servers = Servers::start(ServerOptions::default()).await;
        let manager = servers.server.manager.clone();
        // Another tab of the user takes every event, so none is pending
        // for the new tab: it gets only what is emitted after it registered.
        let mut other_tab = connect(servers.server.addr, "alice", None).await;
        for round in 0..40 {
            let (adapter, addr) = servers.adapters()[round % 2];
            let mut tab = open(addr, "/ws", token("alice", 600)).await;
            read_hello(&mut tab).await;
            manager
                .send_to_user(&alice(), json!({"type": "note", "round": round}))
                .await
                .unwrap();
            for event in AGENT_EVENTS {
                manager
                    .emit_critical_event(&alice(), event, json!({"round": round}))
                    .await
                    .unwrap();
            }
            let note = frame(&mut tab).await;
            assert_eq!(
                note,
                json!({"type": "note", "round": round}),
                "{adapter} round {round}"
            );
            for event in AGENT_EVENTS {
                let seen = frame(&mut tab).await;
                assert_eq!(seen["type"], event, "{adapter} round {round}: {seen}");
                assert_eq!(seen["data"]["round"], round, "{adapter} round {round}");
            }
            close(tab).await;
            // The other tab saw the same, so it never falls behind.
            for _ in 0..=AGENT_EVENTS.len() {
                next_json(&mut other_tab).await;
            }
        }
        close(other_tab).await;
        servers.server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn a_resumed_connection_gets_hello_then_the_notice_then_the_replay() {
    bounded(async {
        let servers = Servers::start(ServerOptions::default()).await;
        let manager = &servers.server.manager;
        let mut offsets: Vec<StreamOffset> = Vec::new();
        for event in &AGENT_EVENTS[..3] {
            let delivery = manager
                .emit_critical_event(&alice(), event, json!({}))
                .await
                .unwrap();
            offsets.push(delivery.offset().unwrap());
        }
        let stream = offsets[0].stream;
        for (adapter, addr) in servers.adapters() {
            // From a stream the server never had: hello, the notice, then
            // everything retained.
            let mut tab = open(addr, "/ws?resume=12:5", token("alice", 600)).await;
            let hello = read_hello(&mut tab).await;
            assert_eq!(hello["latest"], json!({"stream": stream, "sequence": 3}));
            let notice = frame(&mut tab).await;
            assert_eq!(notice["type"], "resync", "{adapter}: {notice}");
            assert_eq!(notice["reason"], "unknown_stream", "{adapter}");
            for sequence in 1..=3 {
                let event = frame(&mut tab).await;
                assert_eq!(
                    offset(&event),
                    json!({"stream": stream, "sequence": sequence}),
                    "{adapter}"
                );
            }
            close(tab).await;
            // From a known offset: hello, then what follows it, no notice.
            let path = format!("/ws?resume={}", offsets[0]);
            let mut tab = open(addr, &path, token("alice", 600)).await;
            read_hello(&mut tab).await;
            for sequence in 2..=3 {
                let event = frame(&mut tab).await;
                assert_eq!(event["critical"], true, "{adapter}: {event}");
                assert_eq!(event["sequence"], sequence, "{adapter}");
            }
            close(tab).await;
            servers.server.wait_connections("alice", 0).await;
        }
        servers.server.assert_indexes_empty().await;
    })
    .await;
}

/// Reads frames until the close; the JSON frames before it and the close.
async fn until_close(client: &mut Client) -> (Vec<Value>, Option<(u16, String)>) {
    let mut frames = Vec::new();
    loop {
        match next_seen(client).await {
            Seen::Json(value) => frames.push(value),
            Seen::Close(close) => return (frames, close),
            Seen::Gone => return (frames, None),
        }
    }
}

#[tokio::test]
async fn an_in_band_refresh_moves_the_deadline_without_a_reconnect() {
    bounded(async {
        let servers = Servers::start(ServerOptions::default()).await;
        let runs = servers.adapters().map(|(adapter, addr)| async move {
            let first_exp = unix_secs() + 2;
            let mut tab = open(addr, "/ws", token_expiring("alice", first_exp, SECRET)).await;
            assert_eq!(read_hello(&mut tab).await["token_expires_at"], first_exp * 1000);
            let second_exp = first_exp + 2;
            let refresh = json!({"type": "refresh_token", "token": token_expiring("alice", second_exp, SECRET)});
            send_text(&mut tab, refresh.to_string()).await;
            let answer = next_json(&mut tab).await;
            assert_eq!(answer["type"], "token_refreshed", "{adapter}: {answer}");
            assert_eq!(answer["expires_at"], second_exp * 1000, "{adapter}");
            // Past the first token's expiry the connection is still open...
            tokio::time::sleep(Duration::from_millis(
                (first_exp * 1000 + 300).saturating_sub(unix_millis()),
            ))
            .await;
            send_text(&mut tab, json!({"type": "heartbeat"}).to_string()).await;
            // ...and it ends with 4401 at the second one, not before.
            let (frames, close) = until_close(&mut tab).await;
            let closed_at = unix_millis();
            assert_eq!(frames, Vec::<Value>::new(), "{adapter}");
            assert_eq!(close, Some((4401, "token expired".to_owned())), "{adapter}");
            assert!(
                closed_at >= second_exp * 1000,
                "{adapter}: closed at {closed_at}, before the new deadline {}",
                second_exp * 1000
            );
        });
        futures_util::future::join_all(runs).await;
        servers.server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn a_refused_refresh_is_answered_and_the_old_deadline_holds() {
    bounded(async {
        let servers = Servers::start(ServerOptions::default()).await;
        let runs = servers.adapters().map(|(adapter, addr)| async move {
            let exp = unix_secs() + 2;
            let mut tab = open(addr, "/ws", token_expiring("alice", exp, SECRET)).await;
            read_hello(&mut tab).await;
            let later = exp + 60;
            for (token, reason) in [
                (token_expiring("bob", later, SECRET), "other user"),
                (
                    token_expiring("alice", later, b"another secret, 32 bytes long..."),
                    "invalid token",
                ),
                ("not.a.jwt".to_owned(), "invalid token"),
                (token_expiring("alice", unix_secs() - 10, SECRET), "expired"),
            ] {
                let refresh = json!({"type": "refresh_token", "token": token});
                send_text(&mut tab, refresh.to_string()).await;
                let answer = next_json(&mut tab).await;
                assert_eq!(
                    answer,
                    json!({"type": "error", "code": "token_refresh_refused", "detail": reason}),
                    "{adapter}"
                );
            }
            let (frames, close) = until_close(&mut tab).await;
            let closed_at = unix_millis();
            assert_eq!(frames, Vec::<Value>::new(), "{adapter}");
            assert_eq!(close, Some((4401, "token expired".to_owned())), "{adapter}");
            // At the old deadline, nowhere near the refused tokens' one.
            assert!(
                closed_at < (exp + 30) * 1000,
                "{adapter}: closed at {closed_at}, the old deadline was {}",
                exp * 1000
            );
        });
        futures_util::future::join_all(runs).await;
        servers.server.assert_indexes_empty().await;
    })
    .await;
}

fn unix_millis() -> u64 {
    websocket_manager::unix_millis(std::time::SystemTime::now())
}

/// Counts what an idle client receives for `window`: (heartbeats, pings).
async fn idle_traffic(client: &mut Client, window: Duration) -> (usize, usize) {
    let (mut heartbeats, mut pings) = (0, 0);
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(message) = tokio::time::timeout_at(deadline, client.next()).await {
        match message {
            Some(Ok(Message::Text(text))) => {
                let value: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(value["type"], "heartbeat", "{value}");
                assert!(value["ts"].as_u64().unwrap() > 0, "{value}");
                heartbeats += 1;
            }
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    (heartbeats, pings)
}

#[tokio::test]
async fn an_idle_connection_gets_one_heartbeat_per_ping_interval_unless_turned_off() {
    bounded(async {
        let interval = Duration::from_millis(400);
        let window = Duration::from_millis(2400); // six intervals
        let on = Servers::start(ServerOptions {
            transport: TransportConfig::builder()
                .ping_interval(interval)
                .idle_timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            ..ServerOptions::default()
        })
        .await;
        let off = Servers::start(ServerOptions {
            transport: TransportConfig::builder()
                .ping_interval(interval)
                .idle_timeout(Duration::from_secs(10))
                .heartbeat_frames(false)
                .build()
                .unwrap(),
            ..ServerOptions::default()
        })
        .await;
        let mut runs = Vec::new();
        for (servers, expected) in [(&on, Some(400)), (&off, None)] {
            for (adapter, addr) in servers.adapters() {
                runs.push(async move {
                    let mut tab = open(addr, "/ws", token("alice", 600)).await;
                    let hello = read_hello(&mut tab).await;
                    assert_eq!(hello["heartbeat_ms"].as_u64(), expected, "{adapter}");
                    let (heartbeats, pings) = idle_traffic(&mut tab, window).await;
                    (adapter, expected.is_some(), heartbeats, pings, tab)
                });
            }
        }
        for (adapter, on, heartbeats, pings, tab) in futures_util::future::join_all(runs).await {
            // Pings go on either way (liveness of the client is theirs).
            assert!((3..=7).contains(&pings), "{adapter}: {pings} pings");
            if on {
                // One per idle interval: not one per timer tick (12 here).
                assert!(
                    (4..=7).contains(&heartbeats),
                    "{adapter}: {heartbeats} heartbeats in six intervals"
                );
            } else {
                assert_eq!(heartbeats, 0, "{adapter}: heartbeats are off");
            }
            close(tab).await;
        }
        on.server.assert_indexes_empty().await;
        off.server.assert_indexes_empty().await;
    })
    .await;
}

/// A connection that keeps receiving frames gets no heartbeat: they fill
/// silence only.
#[tokio::test]
async fn a_busy_connection_gets_no_heartbeat() {
    bounded(async {
        let servers = Servers::start(ServerOptions {
            transport: TransportConfig::builder()
                .ping_interval(Duration::from_millis(600))
                .idle_timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            ..ServerOptions::default()
        })
        .await;
        let mut tab = connect(servers.server.addr, "alice", None).await;
        let mut heartbeats = 0;
        for round in 0..30 {
            servers
                .server
                .manager
                .send_to_user(&alice(), json!({"type": "note", "round": round}))
                .await
                .unwrap();
            loop {
                let value = frame(&mut tab).await;
                if value["type"] == "heartbeat" {
                    heartbeats += 1;
                    continue;
                }
                assert_eq!(value["round"], round);
                break;
            }
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        // 30 rounds of about 60 ms: three ping intervals, six timer ticks,
        // each with a frame written since the one before.
        assert!(
            heartbeats <= 1,
            "{heartbeats} heartbeats on a busy connection"
        );
        close(tab).await;
        servers.server.assert_indexes_empty().await;
    })
    .await;
}

#[tokio::test]
async fn client_protocol_frames_never_reach_the_application() {
    bounded(async {
        // An application that refuses every message it is given.
        let handler = handler_fn(|_: InboundContext, message: InboundMessage| async move {
            let text = message.as_text().unwrap_or_default().to_owned();
            Err::<(), HandlerError>(Box::new(InboundError::new("refused", text)))
        });
        let servers = Servers::start(ServerOptions {
            handler: std::sync::Arc::new(handler),
            ..ServerOptions::default()
        })
        .await;
        for (adapter, addr) in servers.adapters() {
            let mut tab = open(addr, "/ws", token("alice", 600)).await;
            read_hello(&mut tab).await;
            send_text(&mut tab, json!({"type": "heartbeat"}).to_string()).await;
            let refresh = json!({"type": "refresh_token", "token": token("alice", 900)});
            send_text(&mut tab, refresh.to_string()).await;
            send_text(&mut tab, json!({"type": "refresh_token"}).to_string()).await;
            send_text(&mut tab, json!({"type": "app"}).to_string()).await;
            // No answer to the heartbeat; the refresh answered by the
            // transport; a malformed refresh is invalid; only `app` reaches
            // the handler.
            assert_eq!(
                frame(&mut tab).await["type"],
                "token_refreshed",
                "{adapter}"
            );
            assert_eq!(
                frame(&mut tab).await["code"],
                "invalid_message",
                "{adapter}"
            );
            let refused = frame(&mut tab).await;
            assert_eq!(
                refused,
                json!({"type": "error", "code": "refused", "detail": r#"{"type":"app"}"#}),
                "{adapter}"
            );
            close(tab).await;
        }
        servers.server.assert_indexes_empty().await;
    })
    .await;
}
