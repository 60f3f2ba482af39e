//! What travels in a socket's queue: [`TextFrame`], one serialized message
//! shared by every recipient, and [`OutboundEvent`], what the writer takes.

use std::fmt;

use bytes::Bytes;
use serde::Serialize;

use crate::close::CloseReason;

/// A serialized text message, shared by reference count among all recipients.
///
/// Serialize once, clone the frame for every connection: a clone is a
/// reference-count increment, never a copy of the bytes.
///
/// ```
/// use websocket_manager::socket::TextFrame;
/// let frame = TextFrame::from_json(&serde_json::json!({"type": "hello"}))?;
/// assert_eq!(frame.as_str(), r#"{"type":"hello"}"#);
/// let copy = frame.clone(); // shares the same bytes
/// assert_eq!(copy.as_bytes().as_ptr(), frame.as_bytes().as_ptr());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct TextFrame(Bytes);

impl TextFrame {
    /// Serializes a JSON value into a frame.
    ///
    /// # Errors
    ///
    /// Whatever `serde_json` reports (in practice only for values holding
    /// non-string map keys built through custom serializers).
    pub fn from_json<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::to_vec(value).map(|bytes| TextFrame(Bytes::from(bytes)))
    }

    /// Wraps bytes the crate wrote from UTF-8 pieces and `serde_json`
    /// output (as [`from_json`](Self::from_json) does), without checking
    /// them again.
    pub(crate) fn from_json_bytes(bytes: Vec<u8>) -> Self {
        TextFrame(Bytes::from(bytes))
    }

    /// Wraps a string that is already the text to send.
    pub fn from_string(text: String) -> Self {
        TextFrame(Bytes::from(text))
    }

    /// The text. Frames are built only from `String`s or `serde_json`
    /// output, so the bytes are always valid UTF-8.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The raw bytes (valid UTF-8).
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Gives up the shared bytes (valid UTF-8), e.g. to build a transport's
    /// text message without copying.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TextFrame {
    /// Wraps text tungstenite has already checked for UTF-8 (no copy, no
    /// second check).
    #[cfg(any(feature = "axum", feature = "tungstenite"))]
    pub(crate) fn from_utf8_bytes(text: tungstenite::Utf8Bytes) -> Self {
        TextFrame(Bytes::from(text))
    }
}

impl TryFrom<Bytes> for TextFrame {
    type Error = std::str::Utf8Error;

    /// Wraps received bytes, checking they are UTF-8 (no copy).
    ///
    /// ```
    /// use websocket_manager::socket::TextFrame;
    /// let frame = TextFrame::try_from(bytes::Bytes::from_static(b"hello"))?;
    /// assert_eq!(frame.as_str(), "hello");
    /// assert!(TextFrame::try_from(bytes::Bytes::from_static(&[0xff])).is_err());
    /// # Ok::<(), std::str::Utf8Error>(())
    /// ```
    fn try_from(bytes: Bytes) -> Result<Self, Self::Error> {
        std::str::from_utf8(&bytes)?;
        Ok(TextFrame(bytes))
    }
}

impl From<String> for TextFrame {
    fn from(text: String) -> Self {
        TextFrame::from_string(text)
    }
}

impl fmt::Debug for TextFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TextFrame").field(&self.as_str()).finish()
    }
}

/// What the writer gets from [`OutboundReceiver::recv`](super::OutboundReceiver::recv).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundEvent {
    /// A text frame to write to the socket.
    Frame(TextFrame),
    /// A binary message to write to the socket ([`WebSocketHandle::send_binary`](super::WebSocketHandle::send_binary)).
    Binary(Bytes),
    /// The socket was closed: send a close frame with this reason and
    /// stop. Frames still queued were dropped, unless the close was asked
    /// for after them ([`WebSocketHandle::close_after_queued`](super::WebSocketHandle::close_after_queued)): they came first.
    Close(CloseReason),
}
