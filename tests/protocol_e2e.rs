//! The wire protocol of `docs/protocol.md`, end to end over real loopback
//! sockets, on both adapters (axum and tokio-tungstenite) serving the same
//! service: the `hello` frame (first, after registration, with where the
//! client stands), its order before the resync notice and the replay, the
//! in-band token refresh, and the application heartbeat.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use websocket_manager::prelude::*;
use websocket_manager::transport::{
    HandlerError, InboundContext, InboundError, InboundMessage, OriginPolicy, TransportConfig,
    WebSocketService, handler_fn,
};
use websocket_manager::{
    events::AGENT_EVENTS,
    managers::{ClusterConfig, ClusterWebSocketManager},
};
use websocket_manager_test_support::e2e::*;
use websocket_manager_test_support::redis::{redis_for, unique_prefix};

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

/// A service over any manager, reachable through both adapters.
struct Served {
    adapters: [(&'static str, SocketAddr); 2],
    axum: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.axum.abort();
    }
}

async fn serve(manager: DynManager) -> Served {
    let service = WebSocketService::builder(manager, authenticator())
        .origins(OriginPolicy::allow([ALLOWED_ORIGIN]))
        .build();
    let (axum, server) = axum_server(service.clone()).await;
    let tungstenite = tungstenite_server(service).await;
    Served {
        adapters: [("axum", axum), ("tungstenite", tungstenite)],
        axum: server,
    }
}

/// The unified manager behind a registration that takes 30 ms, as one
/// through a remote registry does. A hello written before the registration
/// would reach the client well before the manager could route to it.
struct SlowRegistration(UnifiedWebSocketManager);

impl ConstructManager for SlowRegistration {
    fn construct(context: &BuildContext<'_>) -> Result<Self, BuildError> {
        Ok(SlowRegistration(UnifiedWebSocketManager::new(
            context.config.clone(),
        )))
    }
}

#[websocket_manager(name = "slow_registration", mode = "unified")]
impl WebSocketManager for SlowRegistration {
    async fn add_connection(&self, connection: WebSocketConnection) -> Result<(), ManagerError> {
        tokio::time::sleep(Duration::from_millis(30)).await;
        self.0.add_connection(connection).await
    }
    async fn remove_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection> {
        self.0.remove_connection(connection_id).await
    }
    fn get_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection> {
        self.0.get_connection(connection_id)
    }
    fn get_user_connections(&self, user_id: &UserId) -> HashSet<ConnectionId> {
        self.0.get_user_connections(user_id)
    }
    fn is_connection_active(&self, user_id: &UserId) -> bool {
        self.0.is_connection_active(user_id)
    }
    fn get_connection_id_by_websocket(&self, websocket: &WebSocketHandle) -> Option<ConnectionId> {
        self.0.get_connection_id_by_websocket(websocket)
    }
    fn update_connection_thread(&self, connection_id: &ConnectionId, thread_id: ThreadId) -> bool {
        self.0.update_connection_thread(connection_id, thread_id)
    }
    async fn send_to_user(
        &self,
        user_id: &UserId,
        message: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        self.0.send_to_user(user_id, message).await
    }
    async fn emit_critical_event(
        &self,
        user_id: &UserId,
        event_type: &str,
        data: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        self.0.emit_critical_event(user_id, event_type, data).await
    }
    fn get_connection_health(&self, user_id: &UserId) -> ConnectionHealth {
        self.0.get_connection_health(user_id)
    }
    async fn send_to_thread(
        &self,
        thread_id: &ThreadId,
        message: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        self.0.send_to_thread(thread_id, message).await
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

#[tokio::test]
async fn without_the_hello_frame_the_first_frame_is_the_first_replayed_event() {
    bounded(async {
        let servers = Servers::start(ServerOptions {
            manager: manager_config(),
            transport: TransportConfig::builder()
                .hello_frame(false)
                .build()
                .unwrap(),
            ..ServerOptions::default()
        })
        .await;
        let manager = &servers.server.manager;
        for (adapter, addr) in servers.adapters() {
            let delivery = manager
                .emit_critical_event(&alice(), AGENT_EVENTS[0], json!({"adapter": adapter}))
                .await
                .unwrap();
            let mut client = open(addr, "/ws", token("alice", 600)).await;
            let first = frame(&mut client).await;
            assert_eq!(first["type"], AGENT_EVENTS[0], "{adapter}: {first}");
            assert_eq!(
                offset(&first),
                json!(delivery.offset().unwrap()),
                "{adapter}"
            );
            close(client).await;
            servers.server.assert_indexes_empty().await;
        }
    })
    .await;
}

/// The ordering promise: once a client has the hello, it is registered,
/// so a run emitted at that instant reaches it whole. (Before the hello,
/// the 101 came before the registration, and a test that emitted as soon as
/// the handshake returned lost the first event about once in fifteen.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_emitted_as_soon_as_hello_arrives_is_received_whole() {
    bounded(async {
        let servers = Servers::start(ServerOptions::default()).await;
        run_after_hello(
            DynManager::from(Arc::clone(&servers.server.manager)),
            servers.adapters(),
            40,
        )
        .await;
        servers.server.assert_indexes_empty().await;
        let slow = DynManager::new(SlowRegistration(UnifiedWebSocketManager::default()));
        let served = serve(slow.clone()).await;
        run_after_hello(slow.clone(), served.adapters, 10).await;
        assert!(slow.get_user_connections(&alice()).is_empty());
    })
    .await;
}

/// `rounds` times: a new tab of alice reads its hello, and at once a note
/// and a run are sent to alice; the tab must receive them all, in order.
async fn run_after_hello(
    manager: DynManager,
    adapters: [(&'static str, SocketAddr); 2],
    rounds: usize,
) {
    {
        // Another tab of the user takes every event, so none is pending
        // for the new tab: it gets only what is emitted after it registered.
        let mut other_tab = open(adapters[0].1, "/ws", token("alice", 600)).await;
        read_hello(&mut other_tab).await;
        for round in 0..rounds {
            let (adapter, addr) = adapters[round % 2];
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
        let deadline = tokio::time::Instant::now() + STEP;
        while !manager.get_user_connections(&alice()).is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "alice's tabs stay registered"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
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
    websocket_manager::events::unix_millis(std::time::SystemTime::now())
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

/// Pre-emits three events to alice, connects her through both adapters of
/// a service over `manager` and checks the hello's offsets and retention
/// (`max_events`, `max_age_ms`) against what the manager holds.
async fn hello_reports_the_managers_own_position(
    manager: DynManager,
    max_events: u64,
    max_age_ms: u64,
) {
    let served = serve(manager.clone()).await;
    let mut stream = None;
    for event in &AGENT_EVENTS[..3] {
        let delivery = manager
            .emit_critical_event(&alice(), event, json!({}))
            .await
            .unwrap();
        stream = delivery.offset().map(|o| o.stream);
    }
    let stream = stream.unwrap();
    for (round, (adapter, addr)) in served.adapters.into_iter().enumerate() {
        let mut tab = open(addr, "/ws", token("alice", 600)).await;
        let hello = read_hello(&mut tab).await;
        let name = manager.type_name();
        assert_eq!(
            hello["latest"],
            json!({"stream": stream, "sequence": 3}),
            "{name} {adapter}"
        );
        assert_eq!(
            hello["retention"],
            json!({"max_events": max_events, "max_age_ms": max_age_ms, "oldest": {"stream": stream, "sequence": 1}}),
            "{name} {adapter}"
        );
        if round == 0 {
            // Nobody had taken them: replayed right after the hello.
            for sequence in 1..=3 {
                let event = frame(&mut tab).await;
                assert_eq!(event["sequence"], sequence, "{name} {adapter}: {event}");
            }
        }
        close(tab).await;
        let deadline = tokio::time::Instant::now() + STEP;
        while !manager.get_user_connections(&alice()).is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}: alice stays registered"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test]
async fn hello_reports_a_custom_managers_position_through_its_critical_event_log() {
    bounded(async {
        hello_reports_the_managers_own_position(
            DynManager::new(example_managers::MinimalManager::default()),
            256,
            300_000,
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_reports_the_cluster_managers_position_from_redis() {
    let Some(redis) = redis_for("protocol_hello") else {
        return;
    };
    bounded(async {
        let config = ManagerConfig::builder()
            .history_capacity(40)
            .history_max_age(Duration::from_secs(120))
            .build()
            .unwrap();
        let cluster = ClusterConfig::builder(redis.url())
            .key_prefix(unique_prefix("protocol_hello"))
            .node_id("a")
            .build()
            .unwrap();
        let manager = ClusterWebSocketManager::new(config, cluster).unwrap();
        manager.ready().await.unwrap();
        let manager = DynManager::new(manager);
        hello_reports_the_managers_own_position(manager.clone(), 40, 120_000).await;
        // The ordering promise holds with a registration that goes to Redis.
        let served = serve(manager.clone()).await;
        run_after_hello(manager, served.adapters, 10).await;
    })
    .await;
}
