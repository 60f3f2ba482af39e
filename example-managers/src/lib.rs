//! Managers defined in a crate of their own, to prove that registration works
//! across crates.
//!
//! A binary that wants these managers in its registry must reference the
//! crate, or the linker drops it and its registrations with it:
//!
//! ```
//! use example_managers as _;
//! let registry = websocket_manager::startup::Registry::global();
//! assert!(registry.get("minimal").is_ok());
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use websocket_manager::managers::{CriticalEventLog, deliver_frame};
use websocket_manager::{
    ConnectionHealth, ConnectionId, ConnectionSummary, Delivery, DeliveryTarget, ManagerError,
    NotDeliveredReason, ThreadId, UserId, WebSocketConnection, WebSocketHandle,
    managers::{ManagerConfig, SlowConsumerPolicy},
    serde_json,
    socket::{SocketId, TextFrame},
    startup::{BuildContext, BuildError, ConstructManager},
    websocket_manager,
};

/// The smallest correct manager: one mutex around two plain maps, written in
/// the "compatible interface" form (the contract methods are the type's own
/// API), with the library's [`CriticalEventLog`] for critical events (offsets,
/// retention, replay and resume). User and thread queries scan, which is fine
/// for a handful of connections; the socket lookup, which agent code makes on
/// every run, is a map. Use the reference managers in production.
#[derive(Debug)]
pub struct MinimalManager {
    state: Mutex<State>,
    critical: CriticalEventLog,
    /// Connections one user may hold (`ManagerConfig::max_connections_per_user`).
    cap: usize,
}

impl Default for MinimalManager {
    fn default() -> Self {
        MinimalManager::with_config(&ManagerConfig::default())
    }
}

#[derive(Debug, Default)]
struct State {
    connections: HashMap<ConnectionId, WebSocketConnection>,
    sockets: HashMap<SocketId, ConnectionId>,
}

impl ConstructManager for MinimalManager {
    fn construct(context: &BuildContext<'_>) -> Result<Self, BuildError> {
        Ok(MinimalManager::with_config(context.config))
    }
}

impl MinimalManager {
    fn with_config(config: &ManagerConfig) -> Self {
        MinimalManager {
            state: Mutex::default(),
            critical: CriticalEventLog::new(config),
            cap: config.max_connections_per_user(),
        }
    }

    /// Runs `f` on the connections. A poisoned lock only means another
    /// thread panicked mid-update of plain maps; the data is still usable.
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<ConnectionId, WebSocketConnection>) -> R) -> R {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard.connections)
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    /// The sockets of the connections `keep` selects.
    fn sockets(&self, keep: impl Fn(&WebSocketConnection) -> bool) -> Vec<WebSocketHandle> {
        self.with(|map| {
            map.values()
                .filter(|c| keep(c))
                .map(|c| c.websocket.clone())
                .collect()
        })
    }
}

#[websocket_manager(name = "minimal")]
impl MinimalManager {
    async fn add_connection(&self, connection: WebSocketConnection) -> Result<(), ManagerError> {
        self.with_state(|state| {
            if state.connections.contains_key(&connection.connection_id) {
                return Err(ManagerError::DuplicateConnection(
                    connection.connection_id.clone(),
                ));
            }
            if let Some(existing) = state.sockets.get(&connection.websocket.id()) {
                return Err(ManagerError::SocketAlreadyRegistered {
                    socket: connection.websocket.id(),
                    existing: existing.clone(),
                });
            }
            let held = state
                .connections
                .values()
                .filter(|c| c.user_id == connection.user_id)
                .count();
            if held >= self.cap {
                return Err(ManagerError::ConnectionLimit {
                    user_id: connection.user_id.clone(),
                    limit: self.cap,
                });
            }
            // Replayed under the lock, before anything can see the
            // connection: no critical event slips in between.
            self.critical.attach(&connection)?;
            state
                .sockets
                .insert(connection.websocket.id(), connection.connection_id.clone());
            state
                .connections
                .insert(connection.connection_id.clone(), connection);
            Ok(())
        })
    }

    async fn remove_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection> {
        let removed = self.with_state(|state| {
            let removed = state.connections.remove(connection_id)?;
            state.sockets.remove(&removed.websocket.id());
            self.critical.detach(&removed.user_id);
            Some(removed)
        })?;
        removed
            .websocket
            .close(websocket_manager::CloseReason::normal());
        Some(removed)
    }

    fn get_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection> {
        self.with(|map| map.get(connection_id).cloned())
    }

    fn get_user_connections(&self, user_id: &UserId) -> HashSet<ConnectionId> {
        self.with(|map| {
            map.values()
                .filter(|c| &c.user_id == user_id)
                .map(|c| c.connection_id.clone())
                .collect()
        })
    }

    fn is_connection_active(&self, user_id: &UserId) -> bool {
        self.with(|map| {
            map.values()
                .any(|c| &c.user_id == user_id && !c.websocket.is_closed())
        })
    }

    fn get_connection_id_by_websocket(&self, websocket: &WebSocketHandle) -> Option<ConnectionId> {
        self.with_state(|state| state.sockets.get(&websocket.id()).cloned())
    }

    fn update_connection_thread(&self, connection_id: &ConnectionId, thread_id: ThreadId) -> bool {
        self.with(|map| match map.get_mut(connection_id) {
            Some(connection) => {
                connection.thread_id = Some(thread_id);
                true
            }
            None => false,
        })
    }

    async fn send_to_user(
        &self,
        user_id: &UserId,
        message: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        let frame = TextFrame::from_json(&message)?;
        deliver_frame(
            DeliveryTarget::User(user_id.clone()),
            &self.sockets(|c| &c.user_id == user_id),
            &frame,
            SlowConsumerPolicy::Disconnect,
            NotDeliveredReason::NoConnections,
        )
    }

    async fn emit_critical_event(
        &self,
        user_id: &UserId,
        event_type: &str,
        data: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        // Under the lock, so the event and connection changes keep one order.
        self.with(|map| {
            let sockets: Vec<WebSocketHandle> = map
                .values()
                .filter(|c| &c.user_id == user_id)
                .map(|c| c.websocket.clone())
                .collect();
            self.critical.emit(user_id, event_type, data, &sockets)
        })
    }

    fn get_connection_health(&self, user_id: &UserId) -> ConnectionHealth {
        let mut health = ConnectionHealth::empty(user_id.clone());
        self.with(|map| {
            for c in map.values().filter(|c| &c.user_id == user_id) {
                health.total_connections += 1;
                health.active_connections += usize::from(!c.websocket.is_closed());
                health.connections.push(ConnectionSummary::of(c));
            }
        });
        health
            .connections
            .sort_by(|a, b| a.connection_id.cmp(&b.connection_id));
        health
    }

    async fn send_to_thread(
        &self,
        thread_id: &ThreadId,
        message: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        let frame = TextFrame::from_json(&message)?;
        deliver_frame(
            DeliveryTarget::Thread(thread_id.clone()),
            &self.sockets(|c| c.thread_id.as_ref() == Some(thread_id)),
            &frame,
            SlowConsumerPolicy::Disconnect,
            NotDeliveredReason::NoThreadConnections,
        )
    }
}
