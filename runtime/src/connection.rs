//! One socket as a manager sees it: [`WebSocketHandle`] (the sending side of a
//! bounded queue, with a stable [`SocketId`]), the [`OutboundReceiver`] a
//! transport's writer drains, and the [`WebSocketConnection`] record.
//!
//! A manager never writes to a socket itself. It pushes [`TextFrame`]s into
//! the connection's bounded queue without waiting ([`WebSocketHandle::try_send`]);
//! the transport's writer task drains the queue into the real socket. So a
//! stalled client can only fill its own queue, never delay anybody else.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{Notify, mpsc};

use crate::ids::{ConnectionId, ThreadId, UserId};

/// The stable identity of one socket, unique within the process.
///
/// [`WebSocketManager::get_connection_id_by_websocket`](crate::WebSocketManager::get_connection_id_by_websocket)
/// keys on it, so the reverse lookup is a hash lookup, not a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SocketId(u64);

impl SocketId {
    fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        SocketId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The raw number, for logs and metrics.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "socket-{}", self.0)
    }
}

/// A serialized text message, shared by reference count among all recipients.
///
/// Serialize once, clone the frame for every connection: a clone is a
/// reference-count increment, never a copy of the bytes.
///
/// ```
/// use websocket_manager::TextFrame;
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

impl TryFrom<Bytes> for TextFrame {
    type Error = std::str::Utf8Error;

    /// Wraps received bytes, checking they are UTF-8 (no copy).
    ///
    /// ```
    /// use websocket_manager::TextFrame;
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

/// Why a socket is being closed: a WebSocket close code and a short reason.
///
/// ```
/// use websocket_manager::CloseReason;
/// assert_eq!(CloseReason::going_away().code, 1001);
/// assert_eq!(CloseReason::new(4000, "bye").reason, "bye");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CloseReason {
    /// The close code sent in the close frame (RFC 6455, section 7.4).
    pub code: u16,
    /// A short human-readable reason (at most 123 bytes on the wire).
    pub reason: Cow<'static, str>,
}

impl CloseReason {
    /// A close reason with any code.
    pub fn new(code: u16, reason: impl Into<Cow<'static, str>>) -> Self {
        CloseReason {
            code,
            reason: reason.into(),
        }
    }

    /// 1000: the connection was removed on purpose.
    pub fn normal() -> Self {
        Self::new(1000, "connection removed")
    }

    /// 1001: the server is shutting down.
    pub fn going_away() -> Self {
        Self::new(1001, "server shutting down")
    }

    /// 1008: the client did not read fast enough and its queue filled up.
    pub fn slow_consumer() -> Self {
        Self::new(1008, "slow consumer: outbound queue full")
    }

    /// 1008: the connection broke a policy (per-user cap, isolation...).
    pub fn policy(reason: impl Into<Cow<'static, str>>) -> Self {
        Self::new(1008, reason)
    }
}

/// Bounds of one connection's outbound queue.
///
/// ```
/// use websocket_manager::QueueLimits;
/// let limits = QueueLimits::new(128, 1 << 20);
/// assert_eq!(limits.max_messages, 128);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QueueLimits {
    /// How many frames may wait in the queue.
    pub max_messages: usize,
    /// How many bytes may wait in the queue, all frames together.
    pub max_bytes: usize,
}

impl QueueLimits {
    /// Limits with the given message and byte bounds (each at least 1).
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        QueueLimits {
            max_messages: max_messages.max(1),
            max_bytes: max_bytes.max(1),
        }
    }
}

impl Default for QueueLimits {
    /// 1,024 messages and 8 MiB.
    fn default() -> Self {
        QueueLimits::new(1024, 8 << 20)
    }
}

/// Why [`WebSocketHandle::try_send`] refused a frame. The caller keeps no
/// frame back: frames are cheap shared clones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The queue holds `max_messages` frames or `max_bytes` bytes already:
    /// the client is not reading fast enough.
    #[error("outbound queue full")]
    Full,
    /// The socket was closed, or its writer is gone.
    #[error("socket closed")]
    Closed,
    /// The frame alone is larger than the queue's byte bound.
    #[error("frame of {len} bytes exceeds the queue's {max} byte bound")]
    TooLarge {
        /// Size of the refused frame.
        len: usize,
        /// The queue's byte bound.
        max: usize,
    },
}

struct Shared {
    id: SocketId,
    limits: QueueLimits,
    queued_bytes: AtomicUsize,
    close_reason: OnceLock<CloseReason>,
    close_signal: Notify,
}

/// The manager's handle on one socket.
///
/// Created with [`WebSocketHandle::channel`], together with the
/// [`OutboundReceiver`] the transport's writer drains. Clones share the same
/// socket and identity; equality and hashing use the [`SocketId`].
///
/// ```
/// use websocket_manager::{QueueLimits, SendError, TextFrame, WebSocketHandle, CloseReason};
/// let (socket, mut receiver) = WebSocketHandle::channel(QueueLimits::new(1, 1024));
/// socket.try_send(TextFrame::from_string("one".into()))?;
/// assert_eq!(socket.try_send(TextFrame::from_string("two".into())), Err(SendError::Full));
/// socket.close(CloseReason::normal());
/// assert!(socket.is_closed());
/// assert_eq!(socket.try_send(TextFrame::from_string("three".into())), Err(SendError::Closed));
/// # Ok::<(), SendError>(())
/// ```
#[derive(Clone)]
pub struct WebSocketHandle {
    shared: Arc<Shared>,
    sender: mpsc::Sender<TextFrame>,
}

impl WebSocketHandle {
    /// Creates a handle and the receiving end of its bounded queue.
    pub fn channel(limits: QueueLimits) -> (WebSocketHandle, OutboundReceiver) {
        let limits = QueueLimits::new(limits.max_messages, limits.max_bytes);
        let (sender, receiver) = mpsc::channel(limits.max_messages);
        let shared = Arc::new(Shared {
            id: SocketId::next(),
            limits,
            queued_bytes: AtomicUsize::new(0),
            close_reason: OnceLock::new(),
            close_signal: Notify::new(),
        });
        (
            WebSocketHandle {
                shared: Arc::clone(&shared),
                sender,
            },
            OutboundReceiver {
                shared,
                receiver,
                finished: false,
            },
        )
    }

    /// The socket's stable identity.
    pub fn id(&self) -> SocketId {
        self.shared.id
    }

    /// The queue's bounds.
    pub fn limits(&self) -> QueueLimits {
        self.shared.limits
    }

    /// Queues a frame without waiting.
    ///
    /// # Errors
    ///
    /// [`SendError::Full`] when the queue is at its message or byte bound,
    /// [`SendError::Closed`] when the socket is closed,
    /// [`SendError::TooLarge`] when the frame alone exceeds the byte bound.
    pub fn try_send(&self, frame: TextFrame) -> Result<(), SendError> {
        // a gone writer is reported by the channel itself; only the manager's
        // close needs a check of its own
        if self.shared.close_reason.get().is_some() {
            return Err(SendError::Closed);
        }
        let len = frame.len();
        let max = self.shared.limits.max_bytes;
        if len > max {
            return Err(SendError::TooLarge { len, max });
        }
        let before = self.shared.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if before + len > max {
            self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(SendError::Full);
        }
        match self.sender.try_send(frame) {
            Ok(()) => Ok(()),
            Err(error) => {
                self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                Err(match error {
                    mpsc::error::TrySendError::Full(_) => SendError::Full,
                    mpsc::error::TrySendError::Closed(_) => SendError::Closed,
                })
            }
        }
    }

    /// Closes the socket: the writer stops, sends a close frame with `reason`
    /// and drops whatever was still queued. Returns `true` if this call
    /// closed it, `false` if it was already closed.
    pub fn close(&self, reason: CloseReason) -> bool {
        let first = self.shared.close_reason.set(reason).is_ok();
        if first {
            // notify_one keeps a permit if the writer is not waiting yet.
            self.shared.close_signal.notify_one();
        }
        first
    }

    /// Whether the socket was closed, or its writer has gone away.
    pub fn is_closed(&self) -> bool {
        self.shared.close_reason.get().is_some() || self.sender.is_closed()
    }

    /// The reason given to [`close`](Self::close), if it was called.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.close_reason.get().cloned()
    }

    /// Frames waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }

    /// Bytes waiting in the queue.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Acquire)
    }
}

impl PartialEq for WebSocketHandle {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}

impl Eq for WebSocketHandle {}

impl std::hash::Hash for WebSocketHandle {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id().hash(state);
    }
}

impl fmt::Debug for WebSocketHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketHandle")
            .field("id", &self.id())
            .field("queue_depth", &self.queue_depth())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// What the writer gets from [`OutboundReceiver::recv`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundEvent {
    /// A frame to write to the socket.
    Frame(TextFrame),
    /// The manager closed the socket: send a close frame with this reason and
    /// stop. Frames still queued are dropped.
    Close(CloseReason),
}

/// The receiving end of a [`WebSocketHandle`]'s queue, drained by the
/// transport's writer task.
///
/// ```
/// use websocket_manager::{OutboundEvent, QueueLimits, TextFrame, WebSocketHandle, CloseReason};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let (socket, mut receiver) = WebSocketHandle::channel(QueueLimits::default());
/// socket.try_send(TextFrame::from_string("hi".into())).unwrap();
/// assert!(matches!(receiver.recv().await, Some(OutboundEvent::Frame(f)) if f.as_str() == "hi"));
/// socket.close(CloseReason::going_away());
/// assert_eq!(receiver.recv().await, Some(OutboundEvent::Close(CloseReason::going_away())));
/// assert_eq!(receiver.recv().await, None);
/// # });
/// ```
pub struct OutboundReceiver {
    shared: Arc<Shared>,
    receiver: mpsc::Receiver<TextFrame>,
    finished: bool,
}

impl OutboundReceiver {
    /// The identity of the socket this queue belongs to.
    pub fn id(&self) -> SocketId {
        self.shared.id
    }

    /// Waits for the next frame or the close. Returns `None` after the close
    /// was delivered, or when every handle was dropped without a close.
    pub async fn recv(&mut self) -> Option<OutboundEvent> {
        if self.finished {
            return None;
        }
        if let Some(event) = self.take_close() {
            return Some(event);
        }
        tokio::select! {
            biased;
            () = self.shared.close_signal.notified() => self.take_close(),
            frame = self.receiver.recv() => match frame {
                Some(frame) => {
                    self.shared.queued_bytes.fetch_sub(frame.len(), Ordering::AcqRel);
                    Some(OutboundEvent::Frame(frame))
                }
                None => {
                    self.finished = true;
                    None
                }
            },
        }
    }

    /// Closes the queue from the writer's side (the socket died): every
    /// handle then reports [`is_closed`](WebSocketHandle::is_closed).
    pub fn close(&mut self) {
        self.receiver.close();
    }

    fn take_close(&mut self) -> Option<OutboundEvent> {
        let reason = self.shared.close_reason.get()?.clone();
        self.finished = true;
        self.receiver.close();
        Some(OutboundEvent::Close(reason))
    }
}

impl fmt::Debug for OutboundReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundReceiver")
            .field("id", &self.shared.id)
            .field("finished", &self.finished)
            .finish()
    }
}

/// One registered connection: who it belongs to, which thread it follows, and
/// the handle to its socket.
///
/// ```
/// use websocket_manager::{QueueLimits, UserId, ThreadId, WebSocketConnection, WebSocketHandle};
/// let (socket, _receiver) = WebSocketHandle::channel(QueueLimits::default());
/// let connection = WebSocketConnection::new(UserId::new("alice")?, socket)
///     .with_thread(ThreadId::new("t-1")?);
/// assert_eq!(connection.user_id.as_str(), "alice");
/// assert_eq!(connection.thread_id.as_ref().map(|t| t.as_str()), Some("t-1"));
/// # Ok::<(), websocket_manager::IdError>(())
/// ```
#[derive(Debug, Clone)]
pub struct WebSocketConnection {
    /// The connection's id, unique within a manager.
    pub connection_id: ConnectionId,
    /// The authenticated user the connection belongs to.
    pub user_id: UserId,
    /// The thread the connection follows, if any.
    pub thread_id: Option<ThreadId>,
    /// The handle on the socket.
    pub websocket: WebSocketHandle,
    /// When the connection was accepted.
    pub connected_at: SystemTime,
    /// Application data (client version, user agent...).
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl WebSocketConnection {
    /// A connection with a freshly generated id, no thread and no metadata.
    pub fn new(user_id: UserId, websocket: WebSocketHandle) -> Self {
        Self::with_id(ConnectionId::generate(), user_id, websocket)
    }

    /// A connection with a given id.
    pub fn with_id(
        connection_id: ConnectionId,
        user_id: UserId,
        websocket: WebSocketHandle,
    ) -> Self {
        WebSocketConnection {
            connection_id,
            user_id,
            thread_id: None,
            websocket,
            connected_at: SystemTime::now(),
            metadata: serde_json::Map::new(),
        }
    }

    /// Binds the connection to a thread.
    pub fn with_thread(mut self, thread_id: ThreadId) -> Self {
        self.thread_id = Some(thread_id);
        self
    }

    /// Adds one metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: serde_json::Value) -> Self {
        self.metadata.insert(key.into(), value);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> TextFrame {
        TextFrame::from_string(text.to_owned())
    }

    #[test]
    fn byte_bound_is_enforced_and_released_on_receive() {
        let (socket, mut receiver) = WebSocketHandle::channel(QueueLimits::new(10, 8));
        socket.try_send(frame("12345")).unwrap();
        assert_eq!(socket.try_send(frame("1234")), Err(SendError::Full));
        assert_eq!(
            socket.try_send(frame("123456789")),
            Err(SendError::TooLarge { len: 9, max: 8 })
        );
        assert_eq!(socket.queued_bytes(), 5);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(matches!(
                receiver.recv().await,
                Some(OutboundEvent::Frame(_))
            ));
        });
        assert_eq!(socket.queued_bytes(), 0);
        socket.try_send(frame("1234")).unwrap();
        assert_eq!(socket.queue_depth(), 1);
    }

    #[test]
    fn close_wins_over_queued_frames_and_is_reported_once() {
        let (socket, mut receiver) = WebSocketHandle::channel(QueueLimits::new(4, 1024));
        socket.try_send(frame("a")).unwrap();
        assert!(socket.close(CloseReason::slow_consumer()));
        assert!(!socket.close(CloseReason::normal()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            assert_eq!(
                receiver.recv().await,
                Some(OutboundEvent::Close(CloseReason::slow_consumer()))
            );
            assert_eq!(receiver.recv().await, None);
        });
    }

    #[test]
    fn dropped_receiver_makes_the_handle_closed() {
        let (socket, receiver) = WebSocketHandle::channel(QueueLimits::default());
        assert!(!socket.is_closed());
        drop(receiver);
        assert!(socket.is_closed());
        assert_eq!(socket.try_send(frame("x")), Err(SendError::Closed));
    }

    #[test]
    fn identity_is_stable_across_clones_and_distinct_between_sockets() {
        let (a, _ra) = WebSocketHandle::channel(QueueLimits::default());
        let (b, _rb) = WebSocketHandle::channel(QueueLimits::default());
        assert_eq!(a.clone(), a);
        assert_eq!(a.clone().id(), a.id());
        assert_ne!(a, b);
    }
}
