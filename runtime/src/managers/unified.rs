//! [`UnifiedWebSocketManager`]: one manager shared by every user of a server.

use std::collections::HashSet;

use crate::config::ManagerConfig;
use crate::connection::{CloseReason, WebSocketConnection, WebSocketHandle};
use crate::delivery::Delivery;
use crate::error::ManagerError;
use crate::health::ConnectionHealth;
use crate::ids::{ConnectionId, ThreadId, UserId};
use crate::managers::core::ManagerCore;
use crate::managers::stats::{IndexSizes, ManagerStats};
use crate::protocol::WebSocketManager;
use crate::registry::{BuildContext, BuildError, ConstructManager};
use crate::websocket_manager;

/// The reference manager for a whole server: every user's connections in
/// O(1) indexes, non-blocking fan-out into bounded queues, slow consumers
/// handled by policy, critical events buffered while a user is offline.
///
/// The guarantees, shared with [`IsolatedWebSocketManager`](crate::managers::IsolatedWebSocketManager), follow the
/// example.
///
/// ```
/// use websocket_manager::{events::*, managers::*, socket::*, *};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let manager = UnifiedWebSocketManager::new(ManagerConfig::default());
/// let alice = UserId::new("alice")?;
///
/// // Offline: the critical event waits for alice's next connection.
/// let queued = manager.emit_critical_event(&alice, AGENT_STARTED, serde_json::json!({"run": 1})).await?;
/// assert!(queued.is_queued());
///
/// let (socket, mut outbound) = WebSocketHandle::channel(manager.config().queue_limits());
/// manager.add_connection(WebSocketConnection::new(alice.clone(), socket)).await?;
/// let Some(OutboundEvent::Frame(replayed)) = outbound.recv().await else { panic!() };
/// assert!(replayed.as_str().contains("\"sequence\":1"));
///
/// let delivery = manager.send_to_user(&alice, serde_json::json!({"type": "hello"})).await?;
/// assert_eq!(delivery.recipients(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
///
/// # Guarantees
///
/// * **O(1) lookups.** Connection by id, user to connections, socket to
///   connection (the reverse lookup the original did by linear scan) and
///   thread to connections are hash lookups.
/// * **Consistent indexes under concurrency.** Every change to a user's
///   connections is serialized by that user's lock; a failed add registers
///   nothing; a remove clears every index and closes the socket.
/// * **No lock across `.await`, no send under a lock that removal needs.**
///   Nothing in the managers awaits. Sends copy an `Arc` of the recipient
///   list out of the index and push with `try_send`; closed and slow sockets
///   found on the way are removed afterwards, so a failed send cannot
///   deadlock (the original's did).
/// * **Serialize once.** A send serializes its JSON once into a
///   [`TextFrame`](crate::socket::TextFrame); each recipient gets a reference-counted
///   clone of the same bytes.
/// * **Slow consumers.** A full queue triggers the configured
///   [`SlowConsumerPolicy`](crate::managers::SlowConsumerPolicy): `Disconnect` (default)
///   closes that connection with [`CloseReason::slow_consumer`](crate::CloseReason::slow_consumer),
///   `DropMessage` drops the frame for that connection; both are counted.
///   Other connections are never delayed: nothing waits on a queue.
/// * **Nothing lost silently.** A send that reaches no connection is
///   [`ManagerError::NotDelivered`](crate::ManagerError::NotDelivered) with a
///   reason. Ordinary sends are at most once and not retained. Critical
///   events ([`emit_critical_event`](crate::WebSocketManager::emit_critical_event))
///   are wrapped in a [`CriticalEnvelope`](crate::events::CriticalEnvelope) with a per-user
///   [`StreamOffset`](crate::events::StreamOffset) (reported in the
///   [`Delivery`](crate::Delivery)) and appended to the user's retained log
///   whether or not a socket took them. A connection that resumes from an
///   offset ([`WebSocketConnection::with_resume`](crate::WebSocketConnection::with_resume))
///   gets every retained event after it, in order and before anything newer;
///   one without an offset gets the events no connection has taken yet
///   ([`Delivery::Queued`](crate::Delivery::Queued)). When an offset cannot
///   be honoured (evicted, expired, unknown stream), the connection first
///   receives a [`ResyncNotice`](crate::events::ResyncNotice) that says so. A history full of events no
///   connection has taken is [`ManagerError::HistoryFull`](crate::ManagerError::HistoryFull),
///   never a silent drop of the oldest.
///
/// # Why `DashMap`
///
/// The indexes are [`dashmap::DashMap`]s (sharded `RwLock`ed hash maps) and
/// each user's mutable state sits behind its own `parking_lot::Mutex`. The
/// alternatives were one `RwLock` around all indexes (simple and atomic, but
/// every add, remove and send of every user contends on one lock) and a
/// hand-sharded map (what `DashMap` already is, tested). Sends mostly read;
/// with sharding they contend only with writers of the same shard, and the
/// per-user mutex keeps multi-index changes of a user atomic with respect to
/// each other without a global lock. A `DashMap` guard is a lock guard: the
/// engine never holds one across `.await` (it never awaits) nor while taking a
/// user's mutex. The lock order is documented in the engine's source.
///
/// # Memory bounds
///
/// * Each connection's queue: `queue_capacity` frames and `queue_max_bytes`
///   bytes. A stalled client costs at most that.
/// * Connections per user: `max_connections_per_user`. Sockets found closed
///   (a tab that died without the transport noticing) are evicted before a
///   new connection is refused, so dead tabs never lock a user out.
/// * Retained critical events: per user at most `history_capacity` events
///   and `history_max_bytes` bytes, each at most `history_max_age` old; per
///   manager at most `max_history_users` users holding history (then
///   [`ManagerError::HistoryUsersFull`](crate::ManagerError::HistoryUsersFull)).
///   Expired events are pruned when their user is touched, by
///   `prune_expired()` (call it from a timer if you want memory back sooner),
///   and by a sweep when the user limit is reached.
/// * A user with neither a connection nor history occupies nothing; its
///   counters and stream start over when it comes back, and a client that
///   resumes from the forgotten stream is told so with a [`ResyncNotice`](crate::events::ResyncNotice).
///
/// See [`IndexSizes`](crate::managers::IndexSizes) and [`ManagerStats`](crate::managers::ManagerStats).
#[derive(Debug)]
pub struct UnifiedWebSocketManager {
    core: ManagerCore,
}

impl UnifiedWebSocketManager {
    /// A manager with the given bounds and policies.
    pub fn new(config: ManagerConfig) -> Self {
        UnifiedWebSocketManager {
            core: ManagerCore::new(config),
        }
    }

    /// The manager's configuration (use its
    /// [`queue_limits`](ManagerConfig::queue_limits) to create sockets).
    pub fn config(&self) -> &ManagerConfig {
        self.core.config()
    }

    /// Manager-wide counters and index sizes.
    pub fn stats(&self) -> ManagerStats {
        self.core.stats()
    }

    /// The size of every index (all zero once every connection is removed
    /// and no event is pending).
    pub fn index_sizes(&self) -> IndexSizes {
        self.core.index_sizes()
    }

    /// Drops every retained critical event older than `history_max_age`
    /// (they are also pruned whenever their user is touched); returns how
    /// many. Call it from a timer if many users never come back.
    pub fn prune_expired(&self) -> usize {
        self.core.prune_expired()
    }

    /// Closes every socket with [`CloseReason::going_away`], drops retained
    /// events (pending ones counted and logged), and refuses all further work: sends fail
    /// with [`ManagerError::ShutDown`], queries answer empty.
    pub fn shutdown(&self) {
        self.core.shutdown();
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shut_down(&self) -> bool {
        self.core.is_shut_down()
    }

    /// [`Readiness::Ready`](crate::Readiness::Ready) until
    /// [`shutdown`](Self::shutdown), then
    /// [`NotReadyReason::ShutDown`](crate::NotReadyReason::ShutDown): a
    /// transport refuses upgrades before the `101` instead of accepting
    /// sockets the manager would refuse.
    pub fn readiness(&self) -> crate::Readiness {
        crate::readiness::unless_shut_down(self.is_shut_down())
    }
}

impl crate::managers::idempotent::IdempotentEmit for UnifiedWebSocketManager {
    async fn emit_critical_event_with_key(
        &self,
        user_id: &UserId,
        key: &crate::ids::IdempotencyKey,
        event_type: &str,
        data: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        self.core
            .emit_critical_event(user_id, event_type, data, Some(key))
            .await
    }
}

impl Default for UnifiedWebSocketManager {
    /// A manager with [`ManagerConfig::default`].
    fn default() -> Self {
        Self::new(ManagerConfig::default())
    }
}

#[diagnostic::do_not_recommend]
impl ConstructManager for UnifiedWebSocketManager {
    fn construct(context: &BuildContext<'_>) -> Result<Self, BuildError> {
        Ok(Self::new(context.config.clone()))
    }
}

#[websocket_manager(name = "unified", mode = "unified", readiness = Self::readiness)]
impl WebSocketManager for UnifiedWebSocketManager {
    async fn add_connection(&self, connection: WebSocketConnection) -> Result<(), ManagerError> {
        self.core.add_connection(connection).await
    }

    async fn remove_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection> {
        self.core
            .remove_connection(connection_id, CloseReason::normal())
    }

    fn get_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection> {
        self.core.get_connection(connection_id)
    }

    fn get_user_connections(&self, user_id: &UserId) -> HashSet<ConnectionId> {
        self.core.get_user_connections(user_id)
    }

    fn is_connection_active(&self, user_id: &UserId) -> bool {
        self.core.is_connection_active(user_id)
    }

    fn get_connection_id_by_websocket(&self, websocket: &WebSocketHandle) -> Option<ConnectionId> {
        self.core.get_connection_id_by_websocket(websocket)
    }

    fn update_connection_thread(&self, connection_id: &ConnectionId, thread_id: ThreadId) -> bool {
        self.core.update_connection_thread(connection_id, thread_id)
    }

    async fn send_to_user(
        &self,
        user_id: &UserId,
        message: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        self.core.send_to_user(user_id, &message)
    }

    async fn emit_critical_event(
        &self,
        user_id: &UserId,
        event_type: &str,
        data: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        self.core
            .emit_critical_event(user_id, event_type, data, None)
            .await
    }

    fn get_connection_health(&self, user_id: &UserId) -> ConnectionHealth {
        self.core.get_connection_health(user_id)
    }

    async fn send_to_thread(
        &self,
        thread_id: &ThreadId,
        message: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        self.core.send_to_thread(thread_id, &message)
    }
}
