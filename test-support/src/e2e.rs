//! Shared pieces of the end-to-end tests: a real axum server on 127.0.0.1
//! port 0 around a `UnifiedWebSocketManager`, JWTs, and a tokio-tungstenite
//! client. No mocks: every byte crosses a real loopback TCP connection.
// Test helpers, named for what they do; their docs are the tests that use them.
#![allow(missing_docs, clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use websocket_manager::DynManager;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use websocket_manager::managers::UnifiedWebSocketManager;
use websocket_manager::transport::{
    IgnoreMessages, JwtAuthenticator, MessageHandler, OriginPolicy, TransportConfig,
    WebSocketService,
};
use websocket_manager::{UserId, WebSocketManager, managers::ManagerConfig};

pub const SECRET: &[u8] = b"end-to-end test secret, 32 bytes+";
pub const AUDIENCE: &str = "agent-api";
pub const ALLOWED_ORIGIN: &str = "http://127.0.0.1:5173";
/// Every wait in these tests is bounded by this.
pub const STEP: Duration = Duration::from_secs(5);

pub type Client = WebSocketStream<TcpStream>;

/// Bounds a whole test, so nothing can hang CI.
pub async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(Duration::from_secs(30), test)
        .await
        .expect("the test did not finish within 30 s");
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub service: WebSocketService,
    pub manager: Arc<UnifiedWebSocketManager>,
    server: tokio::task::JoinHandle<()>,
}

pub struct ServerOptions {
    pub transport: TransportConfig,
    pub manager: ManagerConfig,
    pub handler: Arc<dyn MessageHandler>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            transport: TransportConfig::default(),
            manager: ManagerConfig::default(),
            handler: Arc::new(IgnoreMessages),
        }
    }
}

pub fn authenticator() -> JwtAuthenticator {
    JwtAuthenticator::hs256(SECRET)
        .expect("the test secret is 32 bytes or more")
        .audience([AUDIENCE])
}

impl TestServer {
    pub async fn start(options: ServerOptions) -> TestServer {
        let manager = Arc::new(UnifiedWebSocketManager::new(options.manager));
        let service =
            WebSocketService::builder(DynManager::from(Arc::clone(&manager)), authenticator())
                .origins(OriginPolicy::allow([ALLOWED_ORIGIN]))
                .config(options.transport)
                .shared_handler(options.handler)
                .build();
        let (addr, server) = axum_server(service.clone()).await;
        TestServer {
            addr,
            service,
            manager,
            server,
        }
    }

    /// Waits until the manager holds no connection (users remain only while
    /// they hold retained critical events).
    pub async fn assert_indexes_empty(&self) {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let sizes = self.manager.index_sizes();
            if sizes.holds_no_connection() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "manager indexes not empty: {sizes}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `user` has exactly `count` registered connections.
    pub async fn wait_connections(&self, user: &str, count: usize) {
        let user = UserId::new(user).unwrap();
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let now = self.manager.get_user_connections(&user).len();
            if now == count {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "user {user} has {now} connection(s), expected {count}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A signed token for `user`, expiring `ttl_secs` from now (negative: expired).
pub fn token(user: &str, ttl_secs: i64) -> String {
    token_signed(user, ttl_secs, SECRET)
}

pub fn token_signed(user: &str, ttl_secs: i64, secret: &[u8]) -> String {
    token_expiring(user, unix_secs().saturating_add_signed(ttl_secs), secret)
}

/// Seconds since the Unix epoch, now.
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token for `user` whose `exp` is `exp` (seconds since the epoch).
pub fn token_expiring(user: &str, exp: u64, secret: &[u8]) -> String {
    websocket_manager::transport::encode_hs256(
        &serde_json::json!({"sub": user, "exp": exp, "aud": AUDIENCE}),
        secret,
    )
}

pub struct Connect<'a> {
    pub path: &'a str,
    pub bearer: Option<String>,
    pub origin: Option<&'a str>,
    pub protocols: Option<String>,
    /// Shrinks the client's receive buffer (for a client that stops reading).
    pub recv_buffer: Option<u32>,
}

impl<'a> Connect<'a> {
    pub fn new(path: &'a str, bearer: Option<String>) -> Self {
        Connect {
            path,
            bearer,
            origin: None,
            protocols: None,
            recv_buffer: None,
        }
    }
}

/// Opens a WebSocket to the test server; `Err` carries tungstenite's error
/// (`Error::Http(response)` for a refused upgrade).
pub async fn try_connect(
    addr: SocketAddr,
    options: Connect<'_>,
) -> Result<(Client, tungstenite::handshake::client::Response), tungstenite::Error> {
    let mut request = format!("ws://{addr}{}", options.path)
        .into_client_request()
        .unwrap();
    if let Some(token) = options.bearer {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    if let Some(origin) = options.origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    if let Some(protocols) = options.protocols {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocols.parse().unwrap());
    }
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(size) = options.recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let stream = socket.connect(addr).await.unwrap();
    tokio::time::timeout(STEP, tokio_tungstenite::client_async(request, stream))
        .await
        .expect("handshake timed out")
}

/// Connects as `user` and reads the `hello` frame: from then on the
/// connection is registered, and every event emitted reaches it.
pub async fn connect(addr: SocketAddr, user: &str, thread: Option<&str>) -> Client {
    let path = match thread {
        Some(thread) => format!("/ws?thread={thread}"),
        None => "/ws".to_owned(),
    };
    let mut client = try_connect(addr, Connect::new(&path, Some(token(user, 600))))
        .await
        .unwrap()
        .0;
    let hello = next_frame(&mut client).await;
    assert!(
        matches!(&hello, Seen::Json(value) if value["type"] == "hello"),
        "the first frame is not a hello: {hello:?}"
    );
    client
}

/// What a client saw.
#[derive(Debug, PartialEq)]
pub enum Seen {
    Json(serde_json::Value),
    Close(Option<(u16, String)>),
    /// The stream ended or failed without a close frame.
    Gone,
}

/// What a client saw next, pings and pongs skipped, and the protocol's own
/// `hello` and `heartbeat` frames too (the tests of those frames read with
/// [`next_frame`]).
pub async fn next_seen(client: &mut Client) -> Seen {
    loop {
        let seen = next_frame(client).await;
        if let Seen::Json(value) = &seen
            && (value["type"] == "hello" || value["type"] == "heartbeat")
        {
            continue;
        }
        return seen;
    }
}

/// The text of the next frame, as it came off the wire (pings, pongs,
/// `hello` and `heartbeat` skipped): what a client computes an event's
/// print from.
pub async fn next_text(client: &mut Client) -> String {
    loop {
        let message = tokio::time::timeout(STEP, client.next())
            .await
            .expect("nothing arrived within the step timeout");
        match message {
            Some(Ok(Message::Text(text))) => {
                let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                if value["type"] != "hello" && value["type"] != "heartbeat" {
                    return text.to_string();
                }
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// What a client saw next, only pings and pongs skipped.
pub async fn next_frame(client: &mut Client) -> Seen {
    loop {
        let message = tokio::time::timeout(STEP, client.next())
            .await
            .expect("nothing arrived within the step timeout");
        return match message {
            Some(Ok(Message::Text(text))) => Seen::Json(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(frame))) => Seen::Close(
                frame.map(|CloseFrame { code, reason }| (u16::from(code), reason.to_string())),
            ),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => panic!("unexpected message {other:?}"),
            Some(Err(_)) | None => Seen::Gone,
        };
    }
}

pub async fn next_json(client: &mut Client) -> serde_json::Value {
    match next_seen(client).await {
        Seen::Json(value) => value,
        other => panic!("expected a JSON message, got {other:?}"),
    }
}

/// Reads until the close frame and returns its code (None: no close frame).
pub async fn expect_close(client: &mut Client) -> Option<(u16, String)> {
    loop {
        match next_seen(client).await {
            Seen::Json(_) => continue,
            Seen::Close(frame) => {
                // Keep reading, as a browser does: that flushes our close
                // reply and completes the handshake.
                let _ =
                    tokio::time::timeout(STEP, async { while client.next().await.is_some() {} })
                        .await;
                return frame;
            }
            Seen::Gone => return None,
        }
    }
}

pub async fn close(mut client: Client) {
    let _ = client
        .close(Some(CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await;
    // Read the server's close reply so the handshake completes.
    let _ = tokio::time::timeout(STEP, async { while client.next().await.is_some() {} }).await;
}

/// The axum adapter at `/ws` on its own listener, over `service`.
pub async fn axum_server(service: WebSocketService) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new()
        .route(
            "/ws",
            axum::routing::get(websocket_manager::transport::axum::upgrade),
        )
        .with_state(service.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The documented way: TCP_NODELAY and the configured header-read timeout.
    let listener = websocket_manager::transport::axum::WebSocketListener::new(listener)
        .header_read_timeout(service.config().header_read_timeout());
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, server)
}

/// The tungstenite adapter on its own listener, over `service`.
pub async fn tungstenite_server(service: WebSocketService) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service.clone();
            tokio::spawn(async move {
                let _ = websocket_manager::transport::tungstenite::accept(&service, stream).await;
            });
        }
    });
    addr
}

pub async fn send_text(client: &mut Client, text: String) {
    client.send(Message::text(text)).await.unwrap();
}
