//! [`ManagerError`]: every failure a caller of a manager can act on.

use crate::connection::SocketId;
use crate::delivery::NotDeliveredReason;
use crate::ids::{ConnectionId, ThreadId, UserId};

/// A manager operation failed. One variant per thing a caller can do
/// something about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// `add_connection` with an id that is already registered.
    #[error("connection `{0}` is already registered")]
    DuplicateConnection(ConnectionId),
    /// `add_connection` with a socket that is already registered under
    /// another connection id.
    #[error("{socket} is already registered as connection `{existing}`")]
    SocketAlreadyRegistered {
        /// The socket given.
        socket: SocketId,
        /// The connection that already owns it.
        existing: ConnectionId,
    },
    /// The user is at the per-user connection cap.
    #[error("user `{user_id}` already has {limit} connections, the per-user limit")]
    ConnectionLimit {
        /// The user.
        user_id: UserId,
        /// The configured cap.
        limit: usize,
    },
    /// The message reached no connection.
    #[error("message to {target} not delivered: {reason}")]
    NotDelivered {
        /// `user `alice`` or `thread `t-1``.
        target: String,
        /// Why.
        reason: NotDeliveredReason,
    },
    /// A critical event found no connection and the user's pending buffer is
    /// full: the event was not stored.
    #[error(
        "pending buffer of user `{user_id}` is full ({capacity} events); the critical event was not stored"
    )]
    PendingBufferFull {
        /// The user.
        user_id: UserId,
        /// The buffer's capacity.
        capacity: usize,
    },
    /// A critical event found no connection, the user had no pending buffer
    /// yet, and the manager already keeps pending buffers for `limit` users:
    /// the event was not stored.
    #[error(
        "{limit} users already have pending critical events, the per-manager limit; the critical event was not stored"
    )]
    PendingUsersFull {
        /// The configured `max_pending_users`.
        limit: usize,
    },
    /// `emit_critical_event` with an unusable event type.
    #[error("invalid event type `{event_type}`: {reason}")]
    InvalidEventType {
        /// The event type given (truncated to 64 characters).
        event_type: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An isolated manager was asked to act for another user.
    #[error("isolation violation: this manager serves user `{owner}`, not `{requested}`")]
    IsolationViolation {
        /// The user the manager was built for.
        owner: UserId,
        /// The user that was asked for.
        requested: UserId,
    },
    /// `update_connection_thread`-style operations on a thread that does not exist.
    #[error("thread `{0}` is unknown")]
    UnknownThread(ThreadId),
    /// The message could not be serialized.
    #[error("message could not be serialized: {0}")]
    Serialization(#[from] serde_json::Error),
    /// The manager was shut down.
    #[error("the manager has been shut down")]
    ShutDown,
    /// A failure inside a third-party manager's backend (a database, a
    /// message bus...).
    #[error("manager backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}
