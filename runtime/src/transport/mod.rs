//! Real sockets (feature `transport`): authenticate the upgrade, register the
//! socket with a [`WebSocketManager`](crate::WebSocketManager), drive it,
//! shut everything down gracefully.
//!
//! * [`WebSocketService`]: the one object an application builds.
//! * [`Authenticator`] (the application's, or [`JwtAuthenticator`] with
//!   feature `jwt`) and [`OriginPolicy`]: run on the HTTP upgrade request,
//!   before any registration. Refusals are 401 / 403, with no socket.
//! * The driver: per socket, a writer task draining the connection's bounded
//!   queue (close events become close frames) and a reader loop that feeds
//!   your [`MessageHandler`], enforces the size limit (1009) and the
//!   heartbeat (ping every `ping_interval`, close after `idle_timeout` of
//!   silence). See [`TransportConfig`] and the close codes in [`close`].
//! * Adapters: [`axum`](mod@self::axum) (feature `axum`) and
//!   [`tungstenite`](mod@self::tungstenite) (feature `tungstenite`). Any
//!   other library plugs in through [`WireSocket`].
//!
//! With axum, the whole server side is:
//!
//! ```ignore
//! let service = WebSocketService::builder(manager, JwtAuthenticator::hs256(secret)).build();
//! let app = Router::new()
//!     .route("/ws", get(websocket_manager::transport::axum::upgrade))
//!     .with_state(service.clone());
//! ```

#[cfg(feature = "axum")]
pub mod axum;
pub mod close;
#[cfg(feature = "tungstenite")]
pub mod tungstenite;

mod auth;
mod config;
mod driver;
mod handler;
#[cfg(feature = "jwt")]
mod jwt;
mod service;
mod shutdown;
mod wire;

/// `async_trait`, re-exported to implement [`Authenticator`] and
/// [`MessageHandler`] without another dependency.
pub use async_trait::async_trait;
pub use auth::{AuthError, Authenticator, Identity, OriginPolicy, UpgradeRequest};
pub use config::{TransportConfig, TransportConfigBuilder, TransportConfigError};
pub use driver::EndReason;
pub use handler::{
    HandlerError, HandlerFn, IgnoreMessages, InboundContext, InboundMessage, MessageHandler,
    handler_fn,
};
#[cfg(feature = "jwt")]
pub use jwt::{JwtAuthenticator, JwtError};
pub use service::{Admission, ConnectionOutcome, WebSocketService, WebSocketServiceBuilder};
pub use shutdown::{LeftConnection, ShutdownReport};
pub use wire::{Utf8Text, WireError, WireMessage, WireSocket};
