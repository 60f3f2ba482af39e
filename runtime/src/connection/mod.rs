//! One socket as a manager sees it: [`WebSocketHandle`] (the sending side of a
//! bounded queue, with a stable [`SocketId`]), the [`OutboundReceiver`] a
//! transport's writer drains, and the [`WebSocketConnection`] record.
//!
//! A manager never writes to a socket itself. It pushes [`TextFrame`]s into
//! the connection's bounded queue without waiting ([`WebSocketHandle::try_send`]);
//! the transport's writer task drains the queue into the real socket. So a
//! stalled client can only fill its own queue, never delay anybody else.

mod frame;
mod handle;
mod limits;
mod queue;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::Serialize;

use crate::ids::{ConnectionId, ThreadId, UserId};
use crate::offset::{EventPrint, ResumePoint, StreamOffset};

pub(crate) use crate::close::CloseReason;
pub use frame::{OutboundEvent, TextFrame};
pub use handle::{OutboundReceiver, WebSocketHandle};
pub use limits::{QueueLimits, SendError};

/// The stable identity of one socket, unique within the process.
///
/// [`WebSocketManager::get_connection_id_by_websocket`](crate::WebSocketManager::get_connection_id_by_websocket)
/// keys on it, so the reverse lookup is a hash lookup, not a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SocketId(u64);

impl SocketId {
    pub(crate) fn next() -> Self {
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

/// One registered connection: who it belongs to, which thread it follows, and
/// the handle to its socket.
///
/// ```
/// use websocket_manager::{UserId, ThreadId, WebSocketConnection, WebSocketHandle, socket::QueueLimits};
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
    /// The offset of the last critical event the client saw, when it
    /// resumes: the manager replays what followed (or sends a
    /// [`ResyncNotice`](crate::events::ResyncNotice) first when it cannot).
    /// `None`: only events no connection has taken yet are replayed.
    pub resume: Option<StreamOffset>,
    /// The [`EventPrint`] of the event at `resume`, when the client sent
    /// one: the manager checks that the event it holds there is the one
    /// the client saw (a different one means the numbering was reused
    /// after a storage loss; the client is then sent a
    /// [`ResyncNotice`](crate::events::ResyncNotice)). Ignored without
    /// `resume`.
    pub resume_print: Option<EventPrint>,
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
            resume: None,
            resume_print: None,
        }
    }

    /// Binds the connection to a thread.
    pub fn with_thread(mut self, thread_id: ThreadId) -> Self {
        self.thread_id = Some(thread_id);
        self
    }

    /// Resumes the user's critical events after `offset`, the last one the
    /// client saw.
    pub fn with_resume(mut self, offset: StreamOffset) -> Self {
        self.resume = Some(offset);
        self
    }

    /// Resumes after `point`: its offset and, when the client kept it, the
    /// print of the event there (see [`resume_print`](Self::resume_print)).
    ///
    /// ```
    /// use websocket_manager::{UserId, WebSocketConnection, WebSocketHandle, socket::QueueLimits};
    /// use websocket_manager::events::ResumePoint;
    /// let (socket, _receiver) = WebSocketHandle::channel(QueueLimits::default());
    /// let point: ResumePoint = "9:7:e40c292c".parse()?;
    /// let connection = WebSocketConnection::new(UserId::new("alice")?, socket).with_resume_point(point);
    /// assert_eq!(connection.resume_point(), Some(point));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_resume_point(mut self, point: ResumePoint) -> Self {
        self.resume = Some(point.offset);
        self.resume_print = point.print;
        self
    }

    /// Where the connection resumes, `None` without an offset.
    pub fn resume_point(&self) -> Option<ResumePoint> {
        self.resume.map(|offset| ResumePoint {
            offset,
            print: self.resume_print,
        })
    }

    /// Adds one metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: serde_json::Value) -> Self {
        self.metadata.insert(key.into(), value);
        self
    }
}
