//! [`WireMessage`]: the transport-neutral WebSocket message the connection
//! driver speaks, and [`WireSocket`], what an adapter must provide.
//!
//! An adapter (axum, tokio-tungstenite, or your own) wraps its socket in a
//! type that is a `Stream` of `Result<WireMessage, WireError>` and a
//! `Sink<WireMessage, Error = WireError>`; the driver does the rest.

use std::fmt;

use bytes::Bytes;
use futures_util::{Sink, Stream};

use crate::connection::CloseReason;

/// Text that is known to be valid UTF-8, sharing its bytes.
///
/// ```
/// use websocket_manager::transport::Utf8Text;
/// let text = Utf8Text::try_from(bytes::Bytes::from_static(b"hello"))?;
/// assert_eq!(text.as_str(), "hello");
/// assert!(Utf8Text::try_from(bytes::Bytes::from_static(&[0xff])).is_err());
/// # Ok::<(), std::str::Utf8Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Utf8Text(Bytes);

impl Utf8Text {
    /// The text.
    pub fn as_str(&self) -> &str {
        // Validated on construction; the fallback is never taken.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The raw bytes (valid UTF-8).
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<Bytes> for Utf8Text {
    type Error = std::str::Utf8Error;
    fn try_from(bytes: Bytes) -> Result<Self, Self::Error> {
        std::str::from_utf8(&bytes)?;
        Ok(Utf8Text(bytes))
    }
}

impl From<String> for Utf8Text {
    fn from(text: String) -> Self {
        Utf8Text(Bytes::from(text))
    }
}

impl From<crate::connection::TextFrame> for Utf8Text {
    fn from(frame: crate::connection::TextFrame) -> Self {
        // A TextFrame is valid UTF-8 by construction.
        Utf8Text(frame.into_bytes())
    }
}

impl fmt::Debug for Utf8Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Utf8Text").field(&self.as_str()).finish()
    }
}

/// One WebSocket message, independent of the library that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireMessage {
    /// A text message.
    Text(Utf8Text),
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

/// Maps tungstenite's error (both adapters run on tungstenite) to the
/// driver's: the size limit and a closed connection are told apart.
#[cfg(any(feature = "axum", feature = "tungstenite"))]
pub(crate) fn from_tungstenite_error(error: tungstenite::Error) -> WireError {
    use tungstenite::error::{CapacityError, Error};
    match error {
        Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            WireError::MessageTooLarge {
                size,
                max: max_size,
            }
        }
        Error::ConnectionClosed | Error::AlreadyClosed => WireError::Closed,
        other => WireError::Other(Box::new(other)),
    }
}

/// Truncates a close reason to the 123 bytes a close frame can carry,
/// on a character boundary.
#[cfg_attr(not(any(feature = "axum", feature = "tungstenite")), allow(dead_code))]
pub(crate) fn close_reason_text(reason: &str) -> &str {
    const MAX: usize = 123;
    if reason.len() <= MAX {
        return reason;
    }
    let mut end = MAX;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let long = "é".repeat(100); // 200 bytes
        let cut = close_reason_text(&long);
        assert!(cut.len() <= 123);
        assert_eq!(cut.len(), 122);
        assert_eq!(close_reason_text("short"), "short");
    }
}
