//! Real sockets (feature `transport`): authenticate the upgrade, register the
//! socket with a [`WebSocketManager`](crate::WebSocketManager), drive it,
//! shut everything down gracefully.
//!
//! * [`WebSocketService`]: the one object an application builds.
//! * [`Authenticator`] (the application's, or [`JwtAuthenticator`] with
//!   feature `jwt`) and [`OriginPolicy`]: run on the HTTP upgrade request,
//!   before any registration. Refusals are 401 / 403, with no socket; a
//!   service whose manager is not ready (a cluster node not joined or
//!   fenced), that is draining or at its connection limit answers 503 with
//!   `Retry-After` before any check of the credential
//!   ([`WebSocketService::readiness`], [`Readiness`](crate::Readiness)).
//! * The driver: per socket, a writer task draining the connection's bounded
//!   queue (close events become close frames) and a reader loop that feeds
//!   your [`MessageHandler`], enforces the size limit (1009) and the
//!   heartbeat (ping every `ping_interval`, close after `idle_timeout` of
//!   silence). See [`TransportConfig`] and the close codes in [`close`](crate::close).
//! * Adapters: [`axum`](mod@self::axum) (feature `axum`) and
//!   [`tungstenite`](mod@self::tungstenite) (feature `tungstenite`). Any
//!   other library plugs in through [`WireSocket`].
//!
//! # The wire protocol
//!
//! What travels on the socket is specified, normatively, in
//! `docs/protocol.md` at the root of the repository (the upgrade and its
//! refusals, every frame in both directions, and the client's action on
//! each close code). The transport's own part of it:
//!
//! * **`hello` first.** Once the manager has registered the connection,
//!   the service writes a [`Hello`] straight to the socket, before the
//!   writer drains what the manager queued while registering (a `resync`
//!   notice, the replay) and before any live frame. So every event emitted
//!   after the client read the hello reaches it. The hello carries the
//!   user, the connection id, the token's expiry, the stream's latest offset
//!   and the retention window, which the manager records on the socket
//!   ([`WebSocketHandle::record_stream_position`](crate::WebSocketHandle::record_stream_position)).
//! * **Heartbeat frames.** On the ping timer, a `{"type":"heartbeat","ts":...}`
//!   frame when nothing else was written, so a browser (which cannot see
//!   pings) receives a frame at least every `ping_interval`
//!   ([`TransportConfig::heartbeat_frames`]).
//! * **In-band token refresh.** `{"type":"refresh_token","token":...}` from the
//!   client is verified by [`Authenticator::refresh`] (same user), moves the
//!   connection's deadline and is answered `token_refreshed`; a refusal is an
//!   `error` frame with code `token_refresh_refused`, and the old deadline
//!   (4401) stays. `refresh_token` and `heartbeat` frames never reach the
//!   [`MessageHandler`].
//!
//! Serve with [`axum::serve`](fn@self::axum::serve) or
//! [`tungstenite::serve`](fn@self::tungstenite::serve): both set
//! `TCP_NODELAY` on every accepted socket (with Nagle's algorithm on, a
//! small frame can wait for the client's delayed ACK, up to 40 ms on Linux)
//! and drop upgrade requests that do not arrive within
//! [`TransportConfig::header_read_timeout`]. A plain `axum::serve(listener, app)`
//! does neither.
//!
//! Per idle connection the transport keeps a read buffer of
//! [`TransportConfig::read_buffer_size`] (4 KiB; tungstenite's own default
//! is 128 KiB), two small tasks and the manager's entry; see
//! `BENCHMARKS.md` for the measured figure.
//!
//! With axum (features `axum` and `jwt`), the whole server side is:
//!
//! ```no_run
//! # #[cfg(all(feature = "axum", feature = "jwt"))]
//! # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use axum::{Router, routing::get};
//! use websocket_manager::transport::{JwtAuthenticator, OriginPolicy, WebSocketService};
//! use websocket_manager::managers::UnifiedWebSocketManager;
//!
//! let manager = Arc::new(UnifiedWebSocketManager::default());
//! let authenticator = JwtAuthenticator::hs256(b"32+ bytes of secret, from a vault")?
//!     .audience(["app.example"]);
//! let service = WebSocketService::builder(manager, authenticator)
//!     .origins(OriginPolicy::allow(["https://app.example"]))
//!     .build();
//! let app = Router::new()
//!     .route("/ws", get(websocket_manager::transport::axum::upgrade))
//!     .with_state(service.clone());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! websocket_manager::transport::axum::serve(listener, app)
//!     .with_graceful_shutdown(async move {
//!         let _ = tokio::signal::ctrl_c().await;
//!         println!("{}", service.shutdown(std::time::Duration::from_secs(5)).await);
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

// The module docs link both adapters; a build with one of them links to
// nothing for the other (tokio does the same for its feature-gated items).
#![cfg_attr(
    not(all(feature = "axum", feature = "tungstenite")),
    allow(rustdoc::broken_intra_doc_links)
)]

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum;
#[cfg(feature = "tungstenite")]
#[cfg_attr(docsrs, doc(cfg(feature = "tungstenite")))]
pub mod tungstenite;

#[cfg(any(feature = "axum", feature = "tungstenite"))]
mod accept;
mod admission;
mod auth;
mod config;
mod control;
mod driver;
mod handler;
#[cfg(any(feature = "axum", feature = "tungstenite"))]
mod handshake;
#[cfg(feature = "jwt")]
mod jwt;
mod record;
mod service;
mod shutdown;
#[cfg(any(feature = "axum", feature = "tungstenite"))]
mod tungstenite_socket;
mod wire;

pub use admission::{RateLimit, RateLimitError, TransportStats};
/// `async_trait`, re-exported to implement [`Authenticator`] and
/// [`MessageHandler`] without another dependency.
pub use async_trait::async_trait;
pub use auth::{
    AuthError, Authenticated, Authenticator, Identity, OriginPolicy, RefreshError, UpgradeRequest,
    UserScopedThreads, bearer_token,
};
pub use config::{
    DEFAULT_HEADER_READ_TIMEOUT, TransportConfig, TransportConfigBuilder, TransportConfigError,
};
pub use control::{Hello, PROTOCOL_VERSION, Retention};
pub use driver::EndReason;
pub use handler::{
    HandlerError, HandlerFn, IgnoreMessages, InboundContext, InboundError, InboundMessage,
    MessageHandler, handler_fn,
};
#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
pub use jwt::{
    DEFAULT_SUBPROTOCOL, JwtAuthenticator, JwtConfigError, JwtError, MAX_TOKEN_LEN,
    MIN_HS256_SECRET_LEN, MIN_RSA_KEY_BITS, TOKEN_PROTOCOL_PREFIX, TokenPart, VerifiedToken,
    encode_hs256,
};
pub use service::{Admission, ConnectionOutcome, WebSocketService, WebSocketServiceBuilder};
pub use shutdown::{LeftConnection, ShutdownReport};
pub use wire::{WireError, WireMessage, WireSocket};
