//! [`ManagerStats`] and [`IndexSizes`]: manager-wide counters and the size of
//! every index, for metrics and for leak checks in tests.

use std::fmt;

use serde::Serialize;

/// How many entries each index of a reference manager holds.
///
/// After every connection was removed and every pending event was replayed
/// or expired, all of them are zero: nothing leaks.
///
/// ```
/// use websocket_manager::managers::UnifiedWebSocketManager;
/// let manager = UnifiedWebSocketManager::default();
/// assert!(manager.index_sizes().is_empty());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IndexSizes {
    /// Connection id -> connection.
    pub connections: usize,
    /// User -> connections, pending events and counters.
    pub users: usize,
    /// Socket identity -> connection id.
    pub sockets: usize,
    /// Thread -> connections.
    pub threads: usize,
    /// Users with a non-empty pending buffer.
    pub pending_users: usize,
}

impl IndexSizes {
    /// Whether every index is empty.
    pub fn is_empty(&self) -> bool {
        *self == IndexSizes::default()
    }
}

impl fmt::Display for IndexSizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} connections, {} users, {} sockets, {} threads, {} users with pending events",
            self.connections, self.users, self.sockets, self.threads, self.pending_users
        )
    }
}

/// Manager-wide counters since the manager was built, plus its index sizes.
///
/// ```
/// use websocket_manager::managers::UnifiedWebSocketManager;
/// let stats = UnifiedWebSocketManager::default().stats();
/// assert_eq!(stats.messages_sent, 0);
/// println!("{stats}");
/// let json = serde_json::to_value(&stats).unwrap();
/// assert_eq!(json["indexes"]["connections"], 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ManagerStats {
    /// Current index sizes.
    pub indexes: IndexSizes,
    /// Frames accepted into connection queues (one per recipient).
    pub messages_sent: u64,
    /// Sends and critical events that reached no connection and were not
    /// buffered (the caller got an error).
    pub messages_failed: u64,
    /// Frames dropped for one connection: queue full under
    /// [`SlowConsumerPolicy::DropMessage`](crate::SlowConsumerPolicy::DropMessage),
    /// or a frame larger than the queue's byte bound.
    pub messages_dropped: u64,
    /// Connections closed because their queue was full
    /// ([`SlowConsumerPolicy::Disconnect`](crate::SlowConsumerPolicy::Disconnect)).
    pub slow_consumer_disconnects: u64,
    /// Critical events refused because the user's pending buffer, or the
    /// manager's set of pending users, was full.
    pub pending_rejected: u64,
    /// Pending critical events dropped because they outlived `pending_max_age`.
    pub pending_expired: u64,
    /// Pending critical events dropped by `shutdown()`.
    pub pending_discarded_at_shutdown: u64,
}

impl fmt::Display for ManagerStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "indexes: {}", self.indexes)?;
        write!(
            f,
            "sent {}, failed {}, dropped {}, slow-consumer disconnects {}, pending rejected {}, pending expired {}, pending discarded at shutdown {}",
            self.messages_sent,
            self.messages_failed,
            self.messages_dropped,
            self.slow_consumer_disconnects,
            self.pending_rejected,
            self.pending_expired,
            self.pending_discarded_at_shutdown
        )
    }
}
