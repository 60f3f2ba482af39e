// The "compatible interface" form: the methods are the type's own API; the
// attribute checks them and generates the trait impl that delegates to them.
// Other inherent methods are allowed.
use std::collections::HashSet;
use websocket_manager::{prelude::*, startup::*, *};

struct MyManager;

#[websocket_manager(factory = false)]
impl MyManager {
    async fn add_connection(&self, _connection: WebSocketConnection) -> Result<(), ManagerError> { Ok(()) }
    async fn remove_connection(&self, _connection_id: &ConnectionId) -> Option<WebSocketConnection> { None }
    fn get_connection(&self, _connection_id: &ConnectionId) -> Option<WebSocketConnection> { None }
    fn get_user_connections(&self, _user_id: &UserId) -> HashSet<ConnectionId> { HashSet::new() }
    fn is_connection_active(&self, _user_id: &UserId) -> bool { false }
    fn get_connection_id_by_websocket(&self, _websocket: &WebSocketHandle) -> Option<ConnectionId> { None }
    fn update_connection_thread(&self, _connection_id: &ConnectionId, _thread_id: ThreadId) -> bool { false }
    async fn send_to_user(&self, _user_id: &UserId, _message: serde_json::Value) -> Result<Delivery, ManagerError> { Ok(Delivery::queued(0)) }
    async fn emit_critical_event(&self, _user_id: &UserId, _event_type: &str, _data: serde_json::Value) -> Result<Delivery, ManagerError> { Ok(Delivery::queued(0)) }
    fn get_connection_health(&self, user_id: &UserId) -> ConnectionHealth { ConnectionHealth::empty(user_id.clone()) }
    async fn send_to_thread(&self, _thread_id: &ThreadId, _message: serde_json::Value) -> Result<Delivery, ManagerError> { Ok(Delivery::queued(0)) }
    fn helper(&self) -> u32 {
        7
    }
    pub fn new() -> Self {
        MyManager
    }
}

fn main() {
    let manager = MyManager::new();
    assert_eq!(manager.helper(), 7);
    let shared = DynManager::new(manager);
    let user = UserId::new("bob").unwrap();
    assert_eq!(shared.get_connection_health(&user).user_id, user);
    let registry = Registry::global();
    let registration = registry.get("MyManager").unwrap();
    assert_eq!(registration.mode, ManagerMode::Unified);
    assert!(!registration.is_buildable());
}
