//! [`WireMessage`]: the transport-neutral WebSocket message the connection
//! driver speaks, and [`WireSocket`], what an adapter must provide.
//!
//! An adapter (axum, tokio-tungstenite, or your own) wraps its socket in a
//! type that is a `Stream` of `Result<WireMessage, WireError>` and a
//! `Sink<WireMessage, Error = WireError>`; the driver does the rest.

use bytes::Bytes;
use futures_util::{Sink, Stream};

use crate::connection::{CloseReason, TextFrame};

/// One WebSocket message, independent of the library that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireMessage {
    /// A text message.
    Text(TextFrame),
    /// A binary message.
    Binary(Bytes),
    /// A ping (payload at most 125 bytes).
    Ping(Bytes),
    /// A pong (payload at most 125 bytes).
    Pong(Bytes),
    /// A close frame, with or without a code and reason.
    Close(Option<CloseReason>),
}

/// What an adapter reports when reading or writing fails.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// An inbound message or frame was larger than the configured limit.
    #[error("message of {size} bytes exceeds the {max} byte limit")]
    MessageTooLarge {
        /// Size seen so far (at least `max + 1`).
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// A text message was not valid UTF-8 (closed with 1007).
    #[error("invalid payload: {0}")]
    InvalidPayload(String),
    /// The peer violated the WebSocket protocol (closed with 1002).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The connection is already closed.
    #[error("connection closed")]
    Closed,
    /// Anything else (I/O, protocol violation...).
    #[error("transport error: {0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// A socket the driver can run: a stream of inbound [`WireMessage`]s and a
/// sink for outbound ones. Implemented automatically for every such type.
pub trait WireSocket:
    Stream<Item = Result<WireMessage, WireError>>
    + Sink<WireMessage, Error = WireError>
    + Send
    + Unpin
    + 'static
{
}

impl<T> WireSocket for T where
    T: Stream<Item = Result<WireMessage, WireError>>
        + Sink<WireMessage, Error = WireError>
        + Send
        + Unpin
        + 'static
{
}
