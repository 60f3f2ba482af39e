//! [`ConnectionHealth`]: what a manager knows about one user's connections.

use serde::Serialize;

use crate::connection::WebSocketConnection;
use crate::ids::{ConnectionId, ThreadId, UserId};
use crate::offset::StreamOffset;

/// A user's connections and counters, as returned by
/// [`WebSocketManager::get_connection_health`](crate::WebSocketManager::get_connection_health).
///
/// Times are milliseconds since the Unix epoch. Build one with
/// [`ConnectionHealth::empty`] and set the fields you know: new fields may
/// be added in minor releases.
///
/// ```
/// use websocket_manager::{ConnectionHealth, UserId};
/// let health = ConnectionHealth::empty(UserId::new("alice")?);
/// assert_eq!(health.total_connections, 0);
/// let json = serde_json::to_value(&health).unwrap();
/// assert_eq!(json["user_id"], "alice");
/// # Ok::<(), websocket_manager::IdError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ConnectionHealth {
    /// The user described.
    pub user_id: UserId,
    /// Registered connections.
    pub total_connections: usize,
    /// Registered connections whose socket is still open.
    pub active_connections: usize,
    /// Critical events no connection has taken yet (replayed to the user's
    /// next connection).
    pub pending_critical_events: usize,
    /// Critical events retained for resume (pending ones included).
    pub retained_critical_events: usize,
    /// Bytes of the retained critical events.
    pub retained_bytes: usize,
    /// The offset of the last critical event emitted to the user, if any.
    pub latest_offset: Option<StreamOffset>,
    /// The oldest offset a client can still resume after without a resync
    /// notice is the one before this.
    pub oldest_retained: Option<StreamOffset>,
    /// Retained events evicted to make room for newer ones.
    pub history_evicted: u64,
    /// Retained events dropped for age.
    pub history_expired: u64,
    /// Frames accepted into this user's queues.
    pub messages_sent: u64,
    /// Sends to this user that reached no connection.
    pub messages_failed: u64,
    /// Frames dropped for a full queue (drop policy).
    pub messages_dropped: u64,
    /// Connections closed because their queue filled up (disconnect policy).
    pub slow_consumer_disconnects: u64,
    /// Last send or connection change, if any.
    pub last_activity_ms: Option<u64>,
    /// One entry per registered connection, sorted by connection id.
    pub connections: Vec<ConnectionSummary>,
    /// `true` when the answer may be incomplete: a cluster manager cut off
    /// from its engine (Redis) answers from its last view of the other
    /// nodes. Always `false` for a single-process manager.
    pub partial: bool,
}

impl ConnectionHealth {
    /// Health of a user the manager knows nothing about.
    pub fn empty(user_id: UserId) -> Self {
        ConnectionHealth {
            user_id,
            total_connections: 0,
            active_connections: 0,
            pending_critical_events: 0,
            retained_critical_events: 0,
            retained_bytes: 0,
            latest_offset: None,
            oldest_retained: None,
            history_evicted: 0,
            history_expired: 0,
            messages_sent: 0,
            messages_failed: 0,
            messages_dropped: 0,
            slow_consumer_disconnects: 0,
            last_activity_ms: None,
            connections: Vec::new(),
            partial: false,
        }
    }
}

/// One connection in a [`ConnectionHealth`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ConnectionSummary {
    /// The connection.
    pub connection_id: ConnectionId,
    /// The thread it follows.
    pub thread_id: Option<ThreadId>,
    /// When it was accepted.
    pub connected_at_ms: u64,
    /// Frames waiting in its queue.
    pub queue_depth: usize,
    /// Whether its socket is closed.
    pub closed: bool,
}

impl ConnectionSummary {
    /// The summary of `connection` as it is now.
    ///
    /// ```
    /// use websocket_manager::{events::*, managers::*, socket::*, *};
    /// let (socket, _outbound) = WebSocketHandle::channel(QueueLimits::default());
    /// let connection = WebSocketConnection::new(UserId::new("alice")?, socket);
    /// let summary = ConnectionSummary::of(&connection);
    /// assert_eq!(summary.connection_id, connection.connection_id);
    /// assert!(!summary.closed);
    /// # Ok::<(), websocket_manager::IdError>(())
    /// ```
    pub fn of(connection: &WebSocketConnection) -> Self {
        ConnectionSummary {
            connection_id: connection.connection_id.clone(),
            thread_id: connection.thread_id.clone(),
            connected_at_ms: unix_millis(connection.connected_at),
            queue_depth: connection.websocket.queue_depth(),
            closed: connection.websocket.is_closed(),
        }
    }
}

/// Milliseconds since the Unix epoch (0 for times before it).
pub fn unix_millis(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
