// A generic manager: checked like any other; `register` names the concrete
// instantiation the registry holds.
use std::collections::HashSet;
use websocket_manager::{prelude::*, startup::*, *};

trait Store: Send + Sync + 'static {}
struct MemoryStore;
impl Store for MemoryStore {}

struct MyManager<S: Store> {
    _store: S,
}

impl<S: Store> ConstructManager for MyManager<S>
where
    S: Default,
{
    fn construct(_context: &BuildContext<'_>) -> Result<Self, BuildError> {
        Ok(MyManager { _store: S::default() })
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore
    }
}

#[websocket_manager(register = MyManager<MemoryStore>, name = "memory")]
impl<S: Store> WebSocketManager for MyManager<S> {
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
}

fn main() {
    let registry = Registry::global();
    let registration = registry.get("memory").unwrap();
    assert_eq!(registration.type_name, "MyManager<MemoryStore>");
    assert!(registration.is_buildable());
}
