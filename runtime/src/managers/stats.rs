//! [`ManagerStats`] and [`IndexSizes`]: manager-wide counters and the size of
//! every index, for metrics and for leak checks in tests.

use std::fmt;

use serde::Serialize;

/// How many entries each index of a reference manager holds.
///
/// After every connection was removed and every retained event expired,
/// all of them are zero: nothing leaks.
///
/// ```
/// use websocket_manager::managers::UnifiedWebSocketManager;
/// let manager = UnifiedWebSocketManager::default();
/// assert!(manager.index_sizes().is_empty());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct IndexSizes {
    /// Connection id -> connection.
    pub connections: usize,
    /// User -> connections, pending events and counters.
    pub users: usize,
    /// Socket identity -> connection id.
    pub sockets: usize,
    /// Thread -> connections.
    pub threads: usize,
    /// Users holding retained critical events (or a loss not yet
    /// announced).
    pub history_users: usize,
}

impl IndexSizes {
    /// Whether every index is empty.
    pub fn is_empty(&self) -> bool {
        *self == IndexSizes::default()
    }

    /// Whether no connection is left: every connection index is empty, and
    /// the only users left are those holding retained critical events
    /// (they go when their history expires). The leak check after every
    /// connection was removed.
    ///
    /// ```
    /// use websocket_manager::{events::AGENT_STARTED, managers::UnifiedWebSocketManager};
    /// use websocket_manager::{UserId, WebSocketManager};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let manager = UnifiedWebSocketManager::default();
    /// manager.emit_critical_event(&UserId::new("alice")?, AGENT_STARTED, serde_json::json!({})).await?;
    /// let sizes = manager.index_sizes();
    /// assert!(!sizes.is_empty() && sizes.holds_no_connection());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn holds_no_connection(&self) -> bool {
        self.connections == 0
            && self.sockets == 0
            && self.threads == 0
            && self.users == self.history_users
    }
}

impl fmt::Display for IndexSizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} connections, {} users, {} sockets, {} threads, {} users holding history",
            self.connections, self.users, self.sockets, self.threads, self.history_users
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
#[non_exhaustive]
pub struct ManagerStats {
    /// Current index sizes.
    pub indexes: IndexSizes,
    /// Frames accepted into connection queues (one per recipient).
    pub messages_sent: u64,
    /// Sends and critical events that reached no connection and were not
    /// buffered (the caller got an error).
    pub messages_failed: u64,
    /// Frames dropped for one connection: queue full under
    /// [`SlowConsumerPolicy::DropMessage`](crate::managers::SlowConsumerPolicy::DropMessage),
    /// or a frame larger than the queue's byte bound.
    pub messages_dropped: u64,
    /// Connections closed because their queue was full
    /// ([`SlowConsumerPolicy::Disconnect`](crate::managers::SlowConsumerPolicy::Disconnect)).
    pub slow_consumer_disconnects: u64,
    /// Critical events refused (not stored, not sent): the user's history
    /// was full of pending events, the event was larger than the history, or
    /// too many users held history.
    pub critical_rejected: u64,
    /// Retained critical events evicted to make room for newer ones (each
    /// had been taken by a connection).
    pub history_evicted: u64,
    /// Retained critical events dropped because they outlived
    /// `history_max_age`.
    pub history_expired: u64,
    /// Of those, events no connection had taken: lost, and announced to the
    /// user's next connection with a resync notice.
    pub pending_expired: u64,
    /// Critical events replayed into new connections.
    pub replayed: u64,
    /// Resync notices sent (a connection was told it missed events).
    pub resync_notices: u64,
    /// Critical events no connection had taken, dropped by `shutdown()`.
    pub pending_discarded_at_shutdown: u64,
}

impl fmt::Display for ManagerStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "indexes: {}", self.indexes)?;
        write!(
            f,
            "sent {}, failed {}, dropped {}, slow-consumer disconnects {}, critical rejected {}, history evicted {}, history expired {} ({} never taken), replayed {}, resync notices {}, pending discarded at shutdown {}",
            self.messages_sent,
            self.messages_failed,
            self.messages_dropped,
            self.slow_consumer_disconnects,
            self.critical_rejected,
            self.history_evicted,
            self.history_expired,
            self.pending_expired,
            self.replayed,
            self.resync_notices,
            self.pending_discarded_at_shutdown
        )
    }
}
