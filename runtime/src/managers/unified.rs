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
/// See [the module docs](crate::managers) for the guarantees.
///
/// ```
/// use websocket_manager::*;
/// use websocket_manager::managers::{UnifiedWebSocketManager, AGENT_STARTED};
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

#[websocket_manager(name = "unified", mode = "unified")]
impl WebSocketManager for UnifiedWebSocketManager {
    async fn add_connection(&self, connection: WebSocketConnection) -> Result<(), ManagerError> {
        self.core.add_connection(connection)
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
        self.core.emit_critical_event(user_id, event_type, data)
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
