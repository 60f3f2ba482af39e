//! An echo server for the Autobahn WebSocket conformance suite
//! (`.ci/autobahn`), built on the public transport API as a new user would:
//! every text message is sent back as text, every binary message as binary,
//! through the connection's own queue.
//!
//! It serves three listeners at once:
//!
//! * `--tungstenite ADDR` (default `127.0.0.1:9002`): our transport, tokio-tungstenite adapter;
//! * `--axum ADDR` (default `127.0.0.1:9003`): our transport, axum adapter;
//! * `--bare ADDR` (default `127.0.0.1:9001`): a bare tokio-tungstenite echo
//!   loop with the same size limits, the baseline the suite compares against.
//!
//! ```text
//! cargo run --release --example autobahn_echo
//! ```
//!
//! Every connection is its own user (the suite sends no credential), and the
//! size limits are the suite's: 16 MiB messages and frames.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use websocket_manager::transport::{
    AuthError, Authenticator, Identity, InboundContext, InboundMessage, OriginPolicy,
    TransportConfig, UpgradeRequest, WebSocketService, handler_fn,
};
use websocket_manager::{
    DynManager, UserId, managers::UnifiedWebSocketManager, socket::QueueLimits,
};

/// The largest message and frame the suite sends (its 9.x cases go to 16 MiB).
const MAX_MESSAGE: usize = 16 << 20;

/// Accepts every upgrade, each as a user of its own (the suite sends no
/// credential, and one user per connection keeps the per-user cap out of
/// the way).
struct EveryoneIsNew(AtomicU64);

#[websocket_manager::transport::async_trait]
impl Authenticator for EveryoneIsNew {
    async fn authenticate(&self, _: &UpgradeRequest<'_>) -> Result<Identity, AuthError> {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        let user = UserId::new(format!("autobahn-{n}"))
            .map_err(|error| AuthError::Unauthorized(error.to_string().into()))?;
        Ok(Identity::new(user))
    }
}

fn addr_arg(args: &[String], flag: &str, default: &str) -> SocketAddr {
    let value = args
        .iter()
        .position(|arg| arg == flag)
        .and_then(|i| args.get(i + 1))
        .map_or(default, String::as_str);
    value
        .parse()
        .unwrap_or_else(|error| panic!("{flag} {value}: {error}"))
}

fn service() -> WebSocketService {
    let echo = handler_fn(
        |context: InboundContext, message: InboundMessage| async move {
            match message {
                InboundMessage::Text(text) => context.socket().try_send(text)?,
                InboundMessage::Binary(bytes) => context.socket().send_binary(bytes)?,
            }
            Ok(())
        },
    );
    let config = TransportConfig::builder()
        // The suite expects an echo and nothing else: no protocol frames.
        .hello_frame(false)
        .heartbeat_frames(false)
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .binary_messages(true)
        // Room for a few of the largest messages in flight.
        .queue_limits(QueueLimits::new(1024, 4 * MAX_MESSAGE))
        .build()
        .unwrap();
    let manager = Arc::new(UnifiedWebSocketManager::default());
    WebSocketService::builder(DynManager::from(manager), EveryoneIsNew(AtomicU64::new(0)))
        .origins(OriginPolicy::any())
        .config(config)
        .handler(echo)
        .build()
}

/// The baseline: tokio-tungstenite's own echo loop, as in its autobahn server.
async fn bare_echo(stream: tokio::net::TcpStream) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let Ok(mut socket) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
    else {
        return;
    };
    while let Some(Ok(message)) = socket.next().await {
        if (message.is_text() || message.is_binary()) && socket.send(message).await.is_err() {
            return;
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let bare = addr_arg(&args, "--bare", "127.0.0.1:9001");
    let tungstenite = addr_arg(&args, "--tungstenite", "127.0.0.1:9002");
    let axum_addr = addr_arg(&args, "--axum", "127.0.0.1:9003");

    let service = service();
    let listener = tokio::net::TcpListener::bind(tungstenite).await?;
    tokio::spawn(websocket_manager::transport::tungstenite::serve(
        listener,
        service.clone(),
    ));

    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(websocket_manager::transport::axum::upgrade),
        )
        .with_state(service);
    let listener = websocket_manager::transport::axum::WebSocketListener::new(
        tokio::net::TcpListener::bind(axum_addr).await?,
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let listener = tokio::net::TcpListener::bind(bare).await?;
    println!(
        "autobahn echo: bare {bare}, tungstenite adapter {tungstenite}, axum adapter {axum_addr}"
    );
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(bare_echo(stream));
    }
}
