// The main form, with fully qualified types, `'_`, `self: &Self`, a name and a
// mode: accepted, registered, and usable as `DynManager`.
use std::collections::HashSet;
use std::sync::Arc;
use websocket_manager::{prelude::*, startup::*, *};

struct MyManager;

impl ConstructManager for MyManager {
    fn construct(_context: &BuildContext<'_>) -> Result<Self, BuildError> {
        Ok(MyManager)
    }
}

#[websocket_manager(name = "mine", mode = "isolated")]
impl websocket_manager::WebSocketManager for MyManager {
    async fn add_connection(&self, _connection: WebSocketConnection) -> Result<(), ManagerError> { Ok(()) }
    async fn remove_connection(&self, _connection_id: &ConnectionId) -> Option<WebSocketConnection> { None }
    fn get_connection(&self, _connection_id: &ConnectionId) -> Option<WebSocketConnection> { None }
    fn get_user_connections(&self, _user_id: &websocket_manager::UserId) -> std::collections::HashSet<websocket_manager::ConnectionId> { HashSet::new() }
    fn is_connection_active(self: &Self, _user_id: &UserId) -> bool { false }
    fn get_connection_id_by_websocket(&self, _websocket: &WebSocketHandle) -> Option<ConnectionId> { None }
    fn update_connection_thread(&self, _connection_id: &ConnectionId, _thread_id: ThreadId) -> bool { false }
    async fn send_to_user(&self, _user_id: &'_ UserId, _message: websocket_manager::serde_json::Value) -> std::result::Result<websocket_manager::Delivery, websocket_manager::ManagerError> { Ok(Delivery::queued(0)) }
    async fn emit_critical_event(&self, _user_id: &UserId, _event_type: &str, _data: serde_json::Value) -> Result<Delivery, ManagerError> { Ok(Delivery::queued(0)) }
    fn get_connection_health(&self, user_id: &UserId) -> ConnectionHealth { ConnectionHealth::empty(user_id.clone()) }
    async fn send_to_thread(&self, _thread_id: &ThreadId, _message: serde_json::Value) -> Result<Delivery, ManagerError> { Ok(Delivery::queued(0)) }
}

fn main() {
    let registry = Registry::global();
    let registration = registry.get("mine").unwrap();
    assert_eq!(registration.type_name, "MyManager");
    assert_eq!(registration.mode, ManagerMode::Isolated);
    assert!(registration.matches_protocol());
    assert!(registration.location().ends_with(".rs:16"), "{}", registration.location());
    let config = ManagerConfig::default();
    let extensions = Extensions::new();
    let manager: DynManager = registration.build(&BuildContext::new(&config, &extensions)).unwrap();
    assert!(!manager.is_connection_active(&UserId::new("alice").unwrap()));
}
