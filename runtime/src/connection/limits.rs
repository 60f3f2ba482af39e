//! The bounds of one socket's outbound queue, and why a push was refused.

use serde::Serialize;

/// Bounds of one connection's outbound queue.
///
/// ```
/// use websocket_manager::socket::QueueLimits;
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

/// Why [`WebSocketHandle::try_send`](super::WebSocketHandle::try_send)
/// refused a frame. The caller keeps no frame back: frames are cheap shared
/// clones.
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
