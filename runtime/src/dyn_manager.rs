//! [`DynManager`]: any manager behind one type, for the registry, the
//! factory and the transport.

use crate::connection::QueueLimits;
use std::any::Any;
use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::connection::{WebSocketConnection, WebSocketHandle};
use crate::delivery::Delivery;
use crate::error::ManagerError;
use crate::health::ConnectionHealth;
use crate::ids::{ConnectionId, ThreadId, UserId};
use crate::protocol::WebSocketManager;
use crate::readiness::Readiness;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The contract in dyn-compatible form: each async method returns a boxed
/// future. Implemented for every manager; private, so it never competes
/// with [`WebSocketManager`] in method resolution.
trait ErasedManager: Send + Sync + 'static {
    fn add_connection(
        &self,
        connection: WebSocketConnection,
    ) -> BoxFuture<'_, Result<(), ManagerError>>;
    fn remove_connection<'a>(
        &'a self,
        connection_id: &'a ConnectionId,
    ) -> BoxFuture<'a, Option<WebSocketConnection>>;
    fn get_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection>;
    fn get_user_connections(&self, user_id: &UserId) -> HashSet<ConnectionId>;
    fn is_connection_active(&self, user_id: &UserId) -> bool;
    fn get_connection_id_by_websocket(&self, websocket: &WebSocketHandle) -> Option<ConnectionId>;
    fn update_connection_thread(&self, connection_id: &ConnectionId, thread_id: ThreadId) -> bool;
    fn send_to_user<'a>(
        &'a self,
        user_id: &'a UserId,
        message: serde_json::Value,
    ) -> BoxFuture<'a, Result<Delivery, ManagerError>>;
    fn emit_critical_event<'a>(
        &'a self,
        user_id: &'a UserId,
        event_type: &'a str,
        data: serde_json::Value,
    ) -> BoxFuture<'a, Result<Delivery, ManagerError>>;
    fn get_connection_health(&self, user_id: &UserId) -> ConnectionHealth;
    fn send_to_thread<'a>(
        &'a self,
        thread_id: &'a ThreadId,
        message: serde_json::Value,
    ) -> BoxFuture<'a, Result<Delivery, ManagerError>>;
    fn readiness(&self) -> Readiness;
    fn as_any(&self) -> &dyn Any;
    fn type_name(&self) -> &'static str;
}

impl<T: WebSocketManager> ErasedManager for T {
    fn add_connection(
        &self,
        connection: WebSocketConnection,
    ) -> BoxFuture<'_, Result<(), ManagerError>> {
        Box::pin(WebSocketManager::add_connection(self, connection))
    }

    fn remove_connection<'a>(
        &'a self,
        connection_id: &'a ConnectionId,
    ) -> BoxFuture<'a, Option<WebSocketConnection>> {
        Box::pin(WebSocketManager::remove_connection(self, connection_id))
    }

    fn get_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection> {
        WebSocketManager::get_connection(self, connection_id)
    }

    fn get_user_connections(&self, user_id: &UserId) -> HashSet<ConnectionId> {
        WebSocketManager::get_user_connections(self, user_id)
    }

    fn is_connection_active(&self, user_id: &UserId) -> bool {
        WebSocketManager::is_connection_active(self, user_id)
    }

    fn get_connection_id_by_websocket(&self, websocket: &WebSocketHandle) -> Option<ConnectionId> {
        WebSocketManager::get_connection_id_by_websocket(self, websocket)
    }

    fn update_connection_thread(&self, connection_id: &ConnectionId, thread_id: ThreadId) -> bool {
        WebSocketManager::update_connection_thread(self, connection_id, thread_id)
    }

    fn send_to_user<'a>(
        &'a self,
        user_id: &'a UserId,
        message: serde_json::Value,
    ) -> BoxFuture<'a, Result<Delivery, ManagerError>> {
        Box::pin(WebSocketManager::send_to_user(self, user_id, message))
    }

    fn emit_critical_event<'a>(
        &'a self,
        user_id: &'a UserId,
        event_type: &'a str,
        data: serde_json::Value,
    ) -> BoxFuture<'a, Result<Delivery, ManagerError>> {
        Box::pin(WebSocketManager::emit_critical_event(
            self, user_id, event_type, data,
        ))
    }

    fn get_connection_health(&self, user_id: &UserId) -> ConnectionHealth {
        WebSocketManager::get_connection_health(self, user_id)
    }

    fn send_to_thread<'a>(
        &'a self,
        thread_id: &'a ThreadId,
        message: serde_json::Value,
    ) -> BoxFuture<'a, Result<Delivery, ManagerError>> {
        Box::pin(WebSocketManager::send_to_thread(self, thread_id, message))
    }

    fn readiness(&self) -> Readiness {
        crate::__private::Annotated::reported_readiness(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }
}

/// Any manager, behind one cheaply cloneable type: what the factory builds,
/// the registry's constructors return and the transport serves.
///
/// [`WebSocketManager`]'s async methods return `impl Future + Send`, so the
/// trait itself cannot be a `dyn` type; `DynManager` is its type-erased form
/// (an `Arc` inside, each async call boxes its future). It implements
/// [`WebSocketManager`], so code generic over managers takes it too, and
/// [`downcast_ref`](Self::downcast_ref) gets the concrete manager back.
///
/// ```
/// use websocket_manager::prelude::*;
/// use websocket_manager::DynManager;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let manager = DynManager::new(UnifiedWebSocketManager::new(ManagerConfig::default()));
/// let alice = UserId::new("alice").unwrap();
/// assert!(manager.send_to_user(&alice, serde_json::json!({"hi": 1})).await.is_err());
/// assert!(manager.downcast_ref::<UnifiedWebSocketManager>().is_some());
/// let same = manager.clone();
/// assert!(same.ptr_eq(&manager));
/// # });
/// ```
#[derive(Clone)]
pub struct DynManager {
    inner: Arc<dyn ErasedManager>,
}

impl DynManager {
    /// Wraps `manager`.
    pub fn new<T: WebSocketManager>(manager: T) -> Self {
        DynManager {
            inner: Arc::new(manager),
        }
    }

    /// Wraps a manager the caller keeps a typed `Arc` to (to read its
    /// statistics, say). Same as `DynManager::from(manager)`.
    pub fn from_arc<T: WebSocketManager>(manager: Arc<T>) -> Self {
        DynManager { inner: manager }
    }

    /// The concrete manager, when it is a `T`.
    pub fn downcast_ref<T: WebSocketManager>(&self) -> Option<&T> {
        self.inner.as_any().downcast_ref()
    }

    /// Whether both are the same manager instance.
    pub fn ptr_eq(&self, other: &DynManager) -> bool {
        // compare the data pointers only: vtables of one type may differ
        // between codegen units
        std::ptr::addr_eq(Arc::as_ptr(&self.inner), Arc::as_ptr(&other.inner))
    }

    /// Whether the manager admits new connections now (see [`Readiness`]):
    /// what its `#[websocket_manager(readiness = ...)]` method says, or
    /// [`Readiness::Ready`] for a manager without the notion. Works the
    /// same for a manager the factory or the registry built.
    ///
    /// ```
    /// use websocket_manager::{DynManager, managers::{ManagerConfig, UnifiedWebSocketManager}};
    /// let manager = DynManager::new(UnifiedWebSocketManager::new(ManagerConfig::default()));
    /// assert!(manager.readiness().is_ready());
    /// ```
    pub fn readiness(&self) -> Readiness {
        self.inner.readiness()
    }

    /// The outbound queue bounds the manager's sockets need, when it says:
    /// the reference managers' [`ManagerConfig::queue_limits`](crate::managers::ManagerConfig::queue_limits)
    /// (their replays are sized to fit them), `None` for a manager of your
    /// own. The transport creates every socket with these unless its
    /// config sets other bounds.
    ///
    /// ```
    /// use websocket_manager::{DynManager, managers::{ManagerConfig, UnifiedWebSocketManager}};
    /// let config = ManagerConfig::builder().queue_capacity(64).history_capacity(32).build()?;
    /// let manager = DynManager::new(UnifiedWebSocketManager::new(config.clone()));
    /// assert_eq!(manager.queue_limits(), Some(config.queue_limits()));
    /// # Ok::<(), websocket_manager::managers::ConfigError>(())
    /// ```
    pub fn queue_limits(&self) -> Option<QueueLimits> {
        let any = self.inner.as_any();
        if let Some(unified) = any.downcast_ref::<crate::managers::UnifiedWebSocketManager>() {
            return Some(unified.config().queue_limits());
        }
        if let Some(isolated) = any.downcast_ref::<crate::managers::IsolatedWebSocketManager>() {
            return Some(isolated.config().queue_limits());
        }
        #[cfg(feature = "redis")]
        if let Some(cluster) = any.downcast_ref::<crate::managers::ClusterWebSocketManager>() {
            return Some(cluster.config().queue_limits());
        }
        None
    }

    /// The concrete manager's Rust type name (for logs).
    pub fn type_name(&self) -> &'static str {
        self.inner.type_name()
    }
}

impl<T: WebSocketManager> From<Arc<T>> for DynManager {
    fn from(manager: Arc<T>) -> Self {
        DynManager::from_arc(manager)
    }
}

impl fmt::Debug for DynManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DynManager")
            .field(&self.inner.type_name())
            .finish()
    }
}

// keeps `DynManager` out of the "annotate this impl" and "not a manager"
// errors users get about their own types
#[diagnostic::do_not_recommend]
impl crate::__private::Annotated for DynManager {
    fn reported_readiness(&self) -> Readiness {
        self.inner.readiness()
    }
}

#[diagnostic::do_not_recommend]
impl WebSocketManager for DynManager {
    async fn add_connection(&self, connection: WebSocketConnection) -> Result<(), ManagerError> {
        self.inner.add_connection(connection).await
    }

    async fn remove_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection> {
        self.inner.remove_connection(connection_id).await
    }

    fn get_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection> {
        self.inner.get_connection(connection_id)
    }

    fn get_user_connections(&self, user_id: &UserId) -> HashSet<ConnectionId> {
        self.inner.get_user_connections(user_id)
    }

    fn is_connection_active(&self, user_id: &UserId) -> bool {
        self.inner.is_connection_active(user_id)
    }

    fn get_connection_id_by_websocket(&self, websocket: &WebSocketHandle) -> Option<ConnectionId> {
        self.inner.get_connection_id_by_websocket(websocket)
    }

    fn update_connection_thread(&self, connection_id: &ConnectionId, thread_id: ThreadId) -> bool {
        self.inner
            .update_connection_thread(connection_id, thread_id)
    }

    async fn send_to_user(
        &self,
        user_id: &UserId,
        message: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        self.inner.send_to_user(user_id, message).await
    }

    async fn emit_critical_event(
        &self,
        user_id: &UserId,
        event_type: &str,
        data: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        self.inner
            .emit_critical_event(user_id, event_type, data)
            .await
    }

    fn get_connection_health(&self, user_id: &UserId) -> ConnectionHealth {
        self.inner.get_connection_health(user_id)
    }

    async fn send_to_thread(
        &self,
        thread_id: &ThreadId,
        message: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        self.inner.send_to_thread(thread_id, message).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::managers::{ManagerConfig, UnifiedWebSocketManager};

    #[test]
    fn wraps_clones_and_downcasts() {
        let typed = Arc::new(UnifiedWebSocketManager::new(ManagerConfig::default()));
        let manager = DynManager::from(Arc::clone(&typed));
        let other = DynManager::new(UnifiedWebSocketManager::new(ManagerConfig::default()));
        assert!(manager.clone().ptr_eq(&manager));
        assert!(!manager.ptr_eq(&other));
        let back = manager.downcast_ref::<UnifiedWebSocketManager>();
        assert!(back.is_some_and(|back| std::ptr::eq(back, &*typed)));
        assert!(manager.downcast_ref::<DynManager>().is_none());
        assert!(manager.type_name().ends_with("UnifiedWebSocketManager"));
        assert!(format!("{manager:?}").contains("UnifiedWebSocketManager"));
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn a_factory_built_manager_reports_its_readiness() {
        let factory = crate::startup::StandardFactory::builder().build();
        let manager = factory
            .create_named("unified", None)
            .unwrap()
            .into_manager();
        assert!(manager.readiness().is_ready());
        manager
            .downcast_ref::<UnifiedWebSocketManager>()
            .unwrap()
            .shutdown();
        assert_eq!(
            manager.readiness().reason(),
            Some(crate::NotReadyReason::ShutDown)
        );
    }
}
