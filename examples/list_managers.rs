//! Lists every manager registered with `#[websocket_manager]` in this binary:
//! name, mode, type, where it is defined, and whether the factory can build it.
//!
//! ```text
//! cargo run --example list_managers
//! ```

use std::collections::HashSet;
use std::process::ExitCode;

use example_managers as _; // linked on purpose: its managers register too
use websocket_manager::{
    ConnectionHealth, ConnectionId, Delivery, DeliveryTarget, ManagerError, NotDeliveredReason,
    ThreadId, UserId, WebSocketConnection, WebSocketHandle, WebSocketManager, serde_json,
    startup::{BuildContext, BuildError, ConstructManager, Registry},
    websocket_manager,
};

/// A manager of this example's own: it accepts nothing and says so, which
/// is enough to show that a binary's own managers register like any other.
struct ReadOnlyManager;

impl ConstructManager for ReadOnlyManager {
    fn construct(_context: &BuildContext<'_>) -> Result<Self, BuildError> {
        Ok(ReadOnlyManager)
    }
}

fn nobody(target: DeliveryTarget) -> ManagerError {
    ManagerError::NotDelivered {
        target,
        reason: NotDeliveredReason::NoConnections,
    }
}

#[websocket_manager(name = "read-only")]
impl WebSocketManager for ReadOnlyManager {
    async fn add_connection(&self, connection: WebSocketConnection) -> Result<(), ManagerError> {
        Err(ManagerError::ConnectionLimit {
            user_id: connection.user_id,
            limit: 0,
        })
    }
    async fn remove_connection(
        &self,
        _connection_id: &ConnectionId,
    ) -> Option<WebSocketConnection> {
        None
    }
    fn get_connection(&self, _connection_id: &ConnectionId) -> Option<WebSocketConnection> {
        None
    }
    fn get_user_connections(&self, _user_id: &UserId) -> HashSet<ConnectionId> {
        HashSet::new()
    }
    fn is_connection_active(&self, _user_id: &UserId) -> bool {
        false
    }
    fn get_connection_id_by_websocket(&self, _websocket: &WebSocketHandle) -> Option<ConnectionId> {
        None
    }
    fn update_connection_thread(
        &self,
        _connection_id: &ConnectionId,
        _thread_id: ThreadId,
    ) -> bool {
        false
    }
    async fn send_to_user(
        &self,
        user_id: &UserId,
        _message: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        Err(nobody(DeliveryTarget::User(user_id.clone())))
    }
    async fn emit_critical_event(
        &self,
        user_id: &UserId,
        _event_type: &str,
        _data: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        Err(nobody(DeliveryTarget::User(user_id.clone())))
    }
    fn get_connection_health(&self, user_id: &UserId) -> ConnectionHealth {
        ConnectionHealth::empty(user_id.clone())
    }
    async fn send_to_thread(
        &self,
        thread_id: &ThreadId,
        _message: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        Err(nobody(DeliveryTarget::Thread(thread_id.clone())))
    }
}

fn main() -> ExitCode {
    let registry = Registry::global();
    println!("{} registered WebSocket managers:\n", registry.len());
    println!("{registry}");
    match registry.validate_unique() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("\nerror: {error}");
            ExitCode::FAILURE
        }
    }
}
