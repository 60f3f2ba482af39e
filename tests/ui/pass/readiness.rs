// A manager with a notion of readiness reports it through
// `readiness = path`; the transport asks it through `DynManager`, also when
// the manager is only known as some `WebSocketManager`.
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use websocket_manager::{prelude::*, startup::*, *};

#[derive(Default)]
struct Warming {
    warm: AtomicBool,
}

impl Warming {
    // Same name as the hidden hook: the attribute calls this one.
    fn readiness(&self) -> Readiness {
        if self.warm.load(Ordering::SeqCst) {
            Readiness::Ready
        } else {
            Readiness::not_ready(NotReadyReason::Starting, "warming up", Duration::from_secs(1))
        }
    }
}

#[websocket_manager(factory = false, readiness = Self::readiness)]
impl WebSocketManager for Warming {
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

fn erased<M: WebSocketManager>(manager: std::sync::Arc<M>) -> DynManager {
    DynManager::from(manager)
}

fn main() {
    let manager = std::sync::Arc::new(Warming::default());
    let shared = erased(manager.clone());
    assert_eq!(shared.readiness().reason(), Some(NotReadyReason::Starting));
    manager.warm.store(true, Ordering::SeqCst);
    assert!(shared.readiness().is_ready());
}
