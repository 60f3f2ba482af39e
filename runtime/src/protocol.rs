//! The contract: the [`WebSocketManager`] trait, its method table
//! [`CONTRACT_METHODS`] and its [`PROTOCOL_FINGERPRINT`].
//!
//! The trait below is the contract as users read it. `#[websocket_manager]`
//! checks impls against its own copy in the `websocket-manager-macros` crate
//! (`macros/src/contract.rs`); the `#[__contract]` attribute on the trait
//! compares the two, signature by signature, each time this crate is built
//! (a difference is a compile error), and generates the method table and
//! the fingerprint from that same copy.

use std::collections::HashSet;
use std::fmt;

use serde::Serialize;

use crate::__private::Annotated;
use crate::connection::{WebSocketConnection, WebSocketHandle};
use crate::delivery::Delivery;
use crate::error::ManagerError;
use crate::health::ConnectionHealth;
use crate::ids::{ConnectionId, ThreadId, UserId};

/// The five groups of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodGroup {
    /// Adding, removing and looking up connections.
    ConnectionManagement,
    /// The two methods whose absence crashed production.
    Critical,
    /// Sending to a user and critical agent events.
    Messaging,
    /// Health monitoring.
    Health,
    /// Sending to a thread.
    Compatibility,
}

impl fmt::Display for MethodGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MethodGroup::ConnectionManagement => "connection management",
            MethodGroup::Critical => "critical",
            MethodGroup::Messaging => "messaging",
            MethodGroup::Health => "health",
            MethodGroup::Compatibility => "compatibility",
        })
    }
}

/// One method of the contract, as the method table describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MethodSpec {
    /// The method's name.
    pub name: &'static str,
    /// Its group.
    pub group: MethodGroup,
    /// Whether it is `async`.
    pub is_async: bool,
    /// Whether it is one of the two critical methods.
    pub critical: bool,
    /// Its signature as written in the contract.
    pub signature: &'static str,
}

/// The contract every WebSocket manager honours: 11 methods in five
/// groups (see [`CONTRACT_METHODS`]).
///
/// Do not implement it by hand: put `#[websocket_manager]` on the impl
/// block. The attribute checks every method against the contract at
/// compile time, reports every problem at once and registers the manager
/// for startup validation.
///
/// The async methods are written `async fn` in an impl, as below; the trait
/// declares them as returning `impl Future + Send`, so every manager's
/// futures can move between a multi-threaded runtime's workers, and a call
/// on a concrete manager allocates nothing. To hold any manager behind one
/// type (as the factory and the transport do), use [`DynManager`](crate::DynManager).
///
/// ```
/// use std::collections::HashSet;
/// use websocket_manager::{events::*, managers::*, socket::*, *};
///
/// struct Silent;
///
/// #[websocket_manager(factory = false)]
/// impl WebSocketManager for Silent {
///     async fn add_connection(&self, _connection: WebSocketConnection) -> Result<(), ManagerError> { Ok(()) }
///     async fn remove_connection(&self, _connection_id: &ConnectionId) -> Option<WebSocketConnection> { None }
///     fn get_connection(&self, _connection_id: &ConnectionId) -> Option<WebSocketConnection> { None }
///     fn get_user_connections(&self, _user_id: &UserId) -> HashSet<ConnectionId> { HashSet::new() }
///     fn is_connection_active(&self, _user_id: &UserId) -> bool { false }
///     fn get_connection_id_by_websocket(&self, _websocket: &WebSocketHandle) -> Option<ConnectionId> { None }
///     fn update_connection_thread(&self, _connection_id: &ConnectionId, _thread_id: ThreadId) -> bool { false }
///     async fn send_to_user(&self, user_id: &UserId, _message: serde_json::Value) -> Result<Delivery, ManagerError> {
///         Err(ManagerError::NotDelivered { target: DeliveryTarget::User(user_id.clone()), reason: NotDeliveredReason::NoConnections })
///     }
///     async fn emit_critical_event(&self, user_id: &UserId, _event_type: &str, _data: serde_json::Value) -> Result<Delivery, ManagerError> {
///         Err(ManagerError::NotDelivered { target: DeliveryTarget::User(user_id.clone()), reason: NotDeliveredReason::NoConnections })
///     }
///     fn get_connection_health(&self, user_id: &UserId) -> ConnectionHealth { ConnectionHealth::empty(user_id.clone()) }
///     async fn send_to_thread(&self, thread_id: &ThreadId, _message: serde_json::Value) -> Result<Delivery, ManagerError> {
///         Err(ManagerError::NotDelivered { target: DeliveryTarget::Thread(thread_id.clone()), reason: NotDeliveredReason::NoThreadConnections })
///     }
/// }
///
/// let manager = DynManager::new(Silent);
/// assert!(!manager.is_connection_active(&UserId::new("alice").unwrap()));
/// ```
///
/// # Forgetting the attribute
///
/// An impl without `#[websocket_manager]` does not compile, and the error
/// says why: "annotate this impl with `#[websocket_manager]`" (the attribute
/// implements a hidden supertrait that this message belongs to).
#[websocket_manager_macros::__contract]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a WebSocket manager",
    label = "`{Self}` does not implement the `WebSocketManager` contract",
    note = "put `#[websocket_manager]` on `impl WebSocketManager for {Self} {{ ... }}` (the 11 contract methods), or on `impl {Self} {{ ... }}` if the type already has them; if the attribute is there, this error follows from the errors reported inside that impl: fix those first"
)]
pub trait WebSocketManager: Annotated + Send + Sync + 'static {
    /// Registers a new connection.
    ///
    /// Fails without registering anything when the connection id or the socket
    /// is already registered, or the user is at the per-user connection cap.
    /// Critical events kept for the user while they were offline are replayed
    /// on the new connection, in order, before anything newer.
    fn add_connection(
        &self,
        connection: WebSocketConnection,
    ) -> impl Future<Output = Result<(), ManagerError>> + Send;

    /// Removes a connection from every index and closes its socket.
    ///
    /// Returns the removed connection, or `None` for an unknown id.
    fn remove_connection(
        &self,
        connection_id: &ConnectionId,
    ) -> impl Future<Output = Option<WebSocketConnection>> + Send;

    /// The connection registered under `connection_id`, if any.
    fn get_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection>;

    /// The ids of every connection of `user_id` (empty for an unknown user).
    fn get_user_connections(&self, user_id: &UserId) -> HashSet<ConnectionId>;

    /// Whether `user_id` has at least one open connection.
    fn is_connection_active(&self, user_id: &UserId) -> bool;

    /// The id of the connection that owns `websocket`, found by the socket's
    /// identity ([`SocketId`](crate::socket::SocketId)).
    ///
    /// Critical: its absence from one manager crashed production; agent code
    /// calls it on every run to find which connection a socket belongs to.
    fn get_connection_id_by_websocket(&self, websocket: &WebSocketHandle) -> Option<ConnectionId>;

    /// Binds a connection to a thread, so `send_to_thread` reaches it.
    ///
    /// Returns `false` for an unknown connection. Critical: the companion of
    /// `get_connection_id_by_websocket`.
    fn update_connection_thread(&self, connection_id: &ConnectionId, thread_id: ThreadId) -> bool;

    /// Sends a JSON message to every connection of `user_id`.
    ///
    /// At most once: a user with no deliverable connection gets
    /// `ManagerError::NotDelivered`, never a silent success, and the message is
    /// not kept.
    fn send_to_user(
        &self,
        user_id: &UserId,
        message: serde_json::Value,
    ) -> impl Future<Output = Result<Delivery, ManagerError>> + Send;

    /// Sends a critical agent event (`agent_started`, `agent_thinking`,
    /// `tool_executing`, `tool_completed`, `agent_completed`...) to `user_id`.
    ///
    /// Never lost silently: when the user has no deliverable connection the event
    /// is kept and replayed on their next connection (`Delivery::Queued`), or the
    /// caller gets an error.
    fn emit_critical_event(
        &self,
        user_id: &UserId,
        event_type: &str,
        data: serde_json::Value,
    ) -> impl Future<Output = Result<Delivery, ManagerError>> + Send;

    /// Connections, counters and pending events of `user_id`.
    fn get_connection_health(&self, user_id: &UserId) -> ConnectionHealth;

    /// Sends a JSON message to exactly the connections bound to `thread_id`.
    fn send_to_thread(
        &self,
        thread_id: &ThreadId,
        message: serde_json::Value,
    ) -> impl Future<Output = Result<Delivery, ManagerError>> + Send;
}

/// Looks a contract method up by name.
///
/// ```
/// let spec = websocket_manager::contract::contract_method("get_connection_id_by_websocket").unwrap();
/// assert!(spec.critical);
/// assert!(!spec.is_async);
/// ```
pub fn contract_method(name: &str) -> Option<&'static MethodSpec> {
    CONTRACT_METHODS.iter().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_table_has_the_eleven_methods_in_order() {
        let names: Vec<_> = CONTRACT_METHODS.iter().map(|m| m.name).collect();
        assert_eq!(
            names,
            [
                "add_connection",
                "remove_connection",
                "get_connection",
                "get_user_connections",
                "is_connection_active",
                "get_connection_id_by_websocket",
                "update_connection_thread",
                "send_to_user",
                "emit_critical_event",
                "get_connection_health",
                "send_to_thread",
            ]
        );
        let critical: Vec<_> = CONTRACT_METHODS
            .iter()
            .filter(|m| m.critical)
            .map(|m| m.name)
            .collect();
        assert_eq!(
            critical,
            ["get_connection_id_by_websocket", "update_connection_thread"]
        );
        let asyncs = CONTRACT_METHODS.iter().filter(|m| m.is_async).count();
        assert_eq!(asyncs, 5);
        let send = contract_method("send_to_user").unwrap();
        assert_eq!(send.group, MethodGroup::Messaging);
        assert_eq!(
            send.signature,
            "async fn send_to_user(&self, user_id: &UserId, message: serde_json::Value) -> Result<Delivery, ManagerError>"
        );
    }
}
