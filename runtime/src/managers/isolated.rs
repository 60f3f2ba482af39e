//! [`IsolatedWebSocketManager`]: one manager per [`UserContext`], refusing
//! every other user.

use std::collections::HashSet;

use crate::config::ManagerConfig;
use crate::connection::{CloseReason, WebSocketConnection, WebSocketHandle};
use crate::context::UserContext;
use crate::delivery::Delivery;
use crate::error::ManagerError;
use crate::health::ConnectionHealth;
use crate::ids::{ConnectionId, ThreadId, UserId};
use crate::managers::core::ManagerCore;
use crate::managers::stats::{IndexSizes, ManagerStats};
use crate::protocol::WebSocketManager;
use crate::registry::{BuildContext, BuildError, ConstructManager};
use crate::websocket_manager;

/// A manager built for one [`UserContext`] (per user or per request).
///
/// It runs the same engine as
/// [`UnifiedWebSocketManager`](super::UnifiedWebSocketManager) (indexes,
/// bounds, slow-consumer policy, critical-event buffering) behind an owner
/// check:
///
/// * connections, sends and critical events for any other user fail with
///   [`ManagerError::IsolationViolation`] and a `tracing` error event;
/// * queries about another user answer as if it did not exist (empty set,
///   `false`, empty health), revealing nothing;
/// * after [`shutdown`](Self::shutdown) every socket is closed, commands
///   fail with [`ManagerError::ShutDown`] and queries answer empty.
///
/// ```
/// use websocket_manager::startup::UserContext;
/// use websocket_manager::{events::*, managers::*, socket::*, *};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let alice = UserId::new("alice")?;
/// let manager = IsolatedWebSocketManager::new(UserContext::new(alice.clone()), ManagerConfig::default());
/// let (socket, _outbound) = WebSocketHandle::channel(manager.config().queue_limits());
/// let mallory = WebSocketConnection::new(UserId::new("mallory")?, socket);
/// assert!(matches!(
///     manager.add_connection(mallory).await,
///     Err(ManagerError::IsolationViolation { .. })
/// ));
/// assert!(manager.get_user_connections(&UserId::new("mallory")?).is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct IsolatedWebSocketManager {
    context: UserContext,
    core: ManagerCore,
    /// Built for the probes, which provoke refusals on purpose.
    quiet_refusals: bool,
}

impl IsolatedWebSocketManager {
    /// A manager serving only `context.user_id`.
    pub fn new(context: UserContext, config: ManagerConfig) -> Self {
        IsolatedWebSocketManager {
            context,
            core: ManagerCore::new(config),
            quiet_refusals: false,
        }
    }

    /// The context the manager was built for.
    pub fn context(&self) -> &UserContext {
        &self.context
    }

    /// The only user the manager serves.
    pub fn owner(&self) -> &UserId {
        &self.context.user_id
    }

    /// The manager's configuration.
    pub fn config(&self) -> &ManagerConfig {
        self.core.config()
    }

    /// Counters and index sizes.
    pub fn stats(&self) -> ManagerStats {
        self.core.stats()
    }

    /// The size of every index.
    pub fn index_sizes(&self) -> IndexSizes {
        self.core.index_sizes()
    }

    /// Drops expired retained critical events; returns how many.
    pub fn prune_expired(&self) -> usize {
        self.core.prune_expired()
    }

    /// Closes every socket with [`CloseReason::going_away`], drops retained
    /// events, and refuses all further work.
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

    fn is_owner(&self, user_id: &UserId) -> bool {
        *user_id == self.context.user_id
    }

    /// The error for a command on behalf of another user, logged.
    fn refuse(&self, operation: &'static str, requested: &UserId) -> ManagerError {
        if self.quiet_refusals {
            // the startup isolation probe provokes this on purpose: an
            // error-level event on every boot would page someone for nothing
            tracing::debug!(
                owner = %self.context.user_id,
                requested = %requested,
                operation,
                "isolation probe: refused an operation for another user, as required"
            );
        } else {
            tracing::error!(
                owner = %self.context.user_id,
                requested = %requested,
                operation,
                request_id = self.context.request_id.as_deref(),
                "isolation violation: refused an operation for another user"
            );
        }
        ManagerError::IsolationViolation {
            owner: self.context.user_id.clone(),
            requested: requested.clone(),
        }
    }

    /// Shutdown first, then ownership: after `shutdown` every command fails
    /// the same way whoever it is for.
    fn check_command(&self, operation: &'static str, user_id: &UserId) -> Result<(), ManagerError> {
        if self.core.is_shut_down() {
            Err(ManagerError::ShutDown)
        } else if self.is_owner(user_id) {
            Ok(())
        } else {
            Err(self.refuse(operation, user_id))
        }
    }
}

#[diagnostic::do_not_recommend]
impl ConstructManager for IsolatedWebSocketManager {
    fn construct(context: &BuildContext<'_>) -> Result<Self, BuildError> {
        let user_context = context.require_user_context()?;
        let mut manager = Self::new(user_context.clone(), context.config.clone());
        manager.quiet_refusals = context.for_probe;
        Ok(manager)
    }
}

#[websocket_manager(name = "isolated", mode = "isolated", readiness = Self::readiness)]
impl WebSocketManager for IsolatedWebSocketManager {
    async fn add_connection(&self, connection: WebSocketConnection) -> Result<(), ManagerError> {
        self.check_command("add_connection", &connection.user_id)?;
        self.core.add_connection(connection).await
    }

    async fn remove_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection> {
        // Only the owner's connections are ever registered here.
        self.core
            .remove_connection(connection_id, CloseReason::normal())
    }

    fn get_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection> {
        self.core.get_connection(connection_id)
    }

    fn get_user_connections(&self, user_id: &UserId) -> HashSet<ConnectionId> {
        if self.is_owner(user_id) {
            self.core.get_user_connections(user_id)
        } else {
            HashSet::new()
        }
    }

    fn is_connection_active(&self, user_id: &UserId) -> bool {
        self.is_owner(user_id) && self.core.is_connection_active(user_id)
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
        self.check_command("send_to_user", user_id)?;
        self.core.send_to_user(user_id, &message)
    }

    async fn emit_critical_event(
        &self,
        user_id: &UserId,
        event_type: &str,
        data: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        self.check_command("emit_critical_event", user_id)?;
        self.core
            .emit_critical_event(user_id, event_type, data, None)
            .await
    }

    fn get_connection_health(&self, user_id: &UserId) -> ConnectionHealth {
        if self.is_owner(user_id) {
            self.core.get_connection_health(user_id)
        } else {
            ConnectionHealth::empty(user_id.clone())
        }
    }

    async fn send_to_thread(
        &self,
        thread_id: &ThreadId,
        message: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        // The thread index only holds the owner's connections.
        self.core.send_to_thread(thread_id, &message)
    }
}

impl crate::managers::idempotent::IdempotentEmit for IsolatedWebSocketManager {
    async fn emit_critical_event_with_key(
        &self,
        user_id: &UserId,
        key: &crate::ids::IdempotencyKey,
        event_type: &str,
        data: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        self.check_command("emit_critical_event", user_id)?;
        self.core
            .emit_critical_event(user_id, event_type, data, Some(key))
            .await
    }
}
