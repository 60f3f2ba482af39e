// A wrong return type, and a missing one.
use std::collections::HashSet;
use websocket_manager::prelude::*;

struct MyManager;

#[websocket_manager(factory = false)]
impl WebSocketManager for MyManager {
    async fn add_connection(&self, _connection: WebSocketConnection) -> Result<(), ManagerError> { Ok(()) }
    async fn remove_connection(&self, _connection_id: &ConnectionId) -> Option<WebSocketConnection> { None }
    fn get_connection(&self, _connection_id: &ConnectionId) -> Option<WebSocketConnection> { None }
    fn get_user_connections(&self, _user_id: &UserId) -> HashSet<ConnectionId> { HashSet::new() }
    fn is_connection_active(&self, _user_id: &UserId) -> bool { false }
    fn get_connection_id_by_websocket(&self, _websocket: &WebSocketHandle) -> Option<String> { None }
    fn update_connection_thread(&self, _connection_id: &ConnectionId, _thread_id: ThreadId) {}
    async fn send_to_user(&self, _user_id: &UserId, _message: serde_json::Value) -> Result<Delivery, ManagerError> { Ok(Delivery::queued(0)) }
    async fn emit_critical_event(&self, _user_id: &UserId, _event_type: &str, _data: serde_json::Value) -> Result<Delivery, ManagerError> { Ok(Delivery::queued(0)) }
    fn get_connection_health(&self, user_id: &UserId) -> ConnectionHealth { ConnectionHealth::empty(user_id.clone()) }
    async fn send_to_thread(&self, _thread_id: &ThreadId, _message: serde_json::Value) -> Result<Delivery, ManagerError> { Ok(Delivery::queued(0)) }
}

fn main() {}
