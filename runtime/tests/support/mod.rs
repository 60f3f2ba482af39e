//! A small, correct in-memory manager for the tests, with switchable bugs:
//! each [`Bug`] breaks exactly one behaviour, so a test can show that the
//! conformance check meant to catch it does.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use websocket_manager::DynManager;

use websocket_manager::managers::CriticalEventLog;
use websocket_manager::{
    CloseReason, ConnectionHealth, ConnectionId, ConnectionSummary, Delivery, DeliveryTarget,
    ManagerError, NotDeliveredReason, ThreadId, UserId, WebSocketConnection, WebSocketHandle,
    WebSocketManager,
    managers::ManagerConfig,
    socket::{SocketId, TextFrame},
    startup::{BuildContext, BuildError, ManagerMode, Registration},
    websocket_manager,
};

/// One deliberate defect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// `get_connection_id_by_websocket` always answers `None`.
    LookupBySocketNone,
    /// `send_to_thread` sends to every connection of the users on the thread.
    ThreadSendsToUser,
    /// `update_connection_thread` answers `true` for unknown connections.
    UpdateUnknownTrue,
    /// `remove_connection` forgets to clear the socket index.
    RemoveForgetsSocketIndex,
    /// `send_to_user` to a user with no connection reports success.
    SilentSuccess,
    /// `send_to_user` reports one recipient more than it reached.
    OvercountsRecipients,
    /// `get_connection_health` always reports zero connections.
    HealthCountsZero,
    /// An "isolated" manager that accepts and serves every user.
    AcceptsOtherUsers,
    /// An isolated manager that refuses other users' connections but sends
    /// to them.
    SendsToOtherUsers,
    /// `send_to_user` never returns (the original deadlock).
    SendHangs,
    /// `get_user_connections` answers every user's connections.
    QueriesAnswerForEveryone,
    /// `emit_critical_event` for a user with no connection answers
    /// `Ok(Queued)` but drops the event.
    DropsOfflineCriticalEvents,
    /// Critical events go out as `{type, data, critical}`, without offsets
    /// (the envelope before offsets existed).
    EnvelopeWithoutOffsets,
    /// `add_connection` ignores the connection's resume offset.
    IgnoresResume,
    /// `add_connection` overwrites a connection registered under the same
    /// id instead of refusing it.
    AcceptsDuplicateId,
    /// `add_connection` registers a socket that is already registered under
    /// another connection id.
    AcceptsDuplicateSocket,
    /// `add_connection` has no per-user connection cap.
    IgnoresConnectionCap,
    /// `add_connection` stores a connection's thread but does not index it.
    AddForgetsThreadIndex,
    /// `remove_connection` leaves the socket open.
    RemoveLeavesSocketOpen,
    /// `add_connection` does not replay what the user is owed (the events
    /// are kept, and counted as pending, but never delivered).
    AddSkipsReplay,
    /// `send_to_user` waits for room in a full socket's queue (as
    /// `send().await` on a bounded channel would).
    SendWaitsForRoom,
    /// `emit_critical_event` skips a socket whose queue is full, leaving it
    /// open without the event.
    CriticalSkipsFullSocket,
    /// `update_connection_thread` records the thread on the connection but
    /// does not move it into the thread index.
    UpdateForgetsThreadIndex,
    /// `send_to_thread` reaches no connection.
    ThreadSendReachesNobody,
    /// `remove_connection` forgets to clear the user index.
    RemoveForgetsUserIndex,
    /// `add_connection` refuses a duplicate id, but only after indexing the
    /// refused socket.
    DuplicateIdLeavesSocketIndexed,
}

#[derive(Default)]
struct State {
    connections: HashMap<ConnectionId, WebSocketConnection>,
    by_user: HashMap<UserId, HashSet<ConnectionId>>,
    by_socket: HashMap<SocketId, ConnectionId>,
    by_thread: HashMap<ThreadId, HashSet<ConnectionId>>,
    sent: HashMap<UserId, u64>,
}

impl State {
    fn sockets_of(&self, user_id: &UserId) -> Vec<WebSocketHandle> {
        self.by_user
            .get(user_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.connections.get(id))
            .map(|c| c.websocket.clone())
            .collect()
    }
}

/// The test manager: unified when `owner` is `None`, isolated otherwise.
pub struct TestManager {
    owner: Option<UserId>,
    bug: Option<Bug>,
    state: Mutex<State>,
    critical: CriticalEventLog,
    cap: usize,
}

impl TestManager {
    pub fn new(owner: Option<UserId>, bug: Option<Bug>) -> Self {
        Self::with_config(owner, bug, &ManagerConfig::default())
    }

    pub fn with_config(owner: Option<UserId>, bug: Option<Bug>, config: &ManagerConfig) -> Self {
        TestManager {
            owner,
            bug,
            state: Mutex::new(State::default()),
            critical: CriticalEventLog::new(config),
            cap: config.max_connections_per_user(),
        }
    }

    fn has(&self, bug: Bug) -> bool {
        self.bug == Some(bug)
    }

    fn guard(&self, user_id: &UserId, sending: bool) -> Result<(), ManagerError> {
        let Some(owner) = &self.owner else {
            return Ok(());
        };
        if owner == user_id
            || self.has(Bug::AcceptsOtherUsers)
            || (sending && self.has(Bug::SendsToOtherUsers))
        {
            return Ok(());
        }
        Err(ManagerError::IsolationViolation {
            owner: owner.clone(),
            requested: user_id.clone(),
        })
    }

    fn deliver(
        &self,
        targets: Vec<WebSocketHandle>,
        user: Option<&UserId>,
        frame: TextFrame,
        target: DeliveryTarget,
        empty: NotDeliveredReason,
        via_send_to_user: bool,
    ) -> Result<Delivery, ManagerError> {
        let mut recipients = 0;
        let mut skipped = 0;
        for socket in &targets {
            match socket.try_send(frame.clone()) {
                Ok(()) => recipients += 1,
                Err(_) => skipped += 1,
            }
        }
        if let Some(user) = user {
            *self
                .state
                .lock()
                .unwrap()
                .sent
                .entry(user.clone())
                .or_default() += recipients as u64;
        }
        if recipients == 0 && !(via_send_to_user && self.has(Bug::SilentSuccess)) {
            return Err(ManagerError::NotDelivered {
                target,
                reason: empty,
            });
        }
        if via_send_to_user && self.has(Bug::OvercountsRecipients) {
            recipients += 1;
        }
        Ok(Delivery::delivered(recipients, skipped))
    }

    fn user_sockets(&self, user_id: &UserId) -> Vec<WebSocketHandle> {
        self.state.lock().unwrap().sockets_of(user_id)
    }
}

#[websocket_manager(name = "test-manager", factory = false)]
impl WebSocketManager for TestManager {
    async fn add_connection(&self, connection: WebSocketConnection) -> Result<(), ManagerError> {
        self.guard(&connection.user_id, false)?;
        let mut state = self.state.lock().unwrap();
        if state.connections.contains_key(&connection.connection_id)
            && !self.has(Bug::AcceptsDuplicateId)
        {
            if self.has(Bug::DuplicateIdLeavesSocketIndexed) {
                state
                    .by_socket
                    .insert(connection.websocket.id(), connection.connection_id.clone());
            }
            return Err(ManagerError::DuplicateConnection(connection.connection_id));
        }
        if let Some(existing) = state.by_socket.get(&connection.websocket.id())
            && !self.has(Bug::AcceptsDuplicateSocket)
        {
            return Err(ManagerError::SocketAlreadyRegistered {
                socket: connection.websocket.id(),
                existing: existing.clone(),
            });
        }
        let held = state
            .by_user
            .get(&connection.user_id)
            .map_or(0, HashSet::len);
        if held >= self.cap && !self.has(Bug::IgnoresConnectionCap) {
            return Err(ManagerError::ConnectionLimit {
                user_id: connection.user_id.clone(),
                limit: self.cap,
            });
        }
        // Replayed under the state lock: no event can slip in between.
        let mut replayed = connection.clone();
        if self.has(Bug::IgnoresResume) {
            replayed.resume = None;
        }
        if !self.has(Bug::AddSkipsReplay) {
            self.critical.attach(&replayed)?;
        }
        let id = connection.connection_id.clone();
        state
            .by_user
            .entry(connection.user_id.clone())
            .or_default()
            .insert(id.clone());
        state
            .by_socket
            .insert(connection.websocket.id(), id.clone());
        if let Some(thread) = &connection.thread_id
            && !self.has(Bug::AddForgetsThreadIndex)
        {
            state
                .by_thread
                .entry(thread.clone())
                .or_default()
                .insert(id.clone());
        }
        state.connections.insert(id, connection);
        Ok(())
    }

    async fn remove_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection> {
        let mut state = self.state.lock().unwrap();
        let connection = state.connections.remove(connection_id)?;
        self.critical.detach(&connection.user_id);
        if let Some(ids) = state.by_user.get_mut(&connection.user_id)
            && !self.has(Bug::RemoveForgetsUserIndex)
        {
            ids.remove(connection_id);
            if ids.is_empty() {
                state.by_user.remove(&connection.user_id);
            }
        }
        if !self.has(Bug::RemoveForgetsSocketIndex) {
            state.by_socket.remove(&connection.websocket.id());
        }
        if let Some(thread) = &connection.thread_id
            && let Some(ids) = state.by_thread.get_mut(thread)
        {
            ids.remove(connection_id);
        }
        if !self.has(Bug::RemoveLeavesSocketOpen) {
            connection.websocket.close(CloseReason::normal());
        }
        Some(connection)
    }

    fn get_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection> {
        self.state
            .lock()
            .unwrap()
            .connections
            .get(connection_id)
            .cloned()
    }

    fn get_user_connections(&self, user_id: &UserId) -> HashSet<ConnectionId> {
        if self.guard(user_id, false).is_err() {
            return HashSet::new();
        }
        let state = self.state.lock().unwrap();
        if self.has(Bug::QueriesAnswerForEveryone) {
            return state.connections.keys().cloned().collect();
        }
        state.by_user.get(user_id).cloned().unwrap_or_default()
    }

    fn is_connection_active(&self, user_id: &UserId) -> bool {
        !self.get_user_connections(user_id).is_empty()
    }

    fn get_connection_id_by_websocket(&self, websocket: &WebSocketHandle) -> Option<ConnectionId> {
        if self.has(Bug::LookupBySocketNone) {
            return None;
        }
        self.state
            .lock()
            .unwrap()
            .by_socket
            .get(&websocket.id())
            .cloned()
    }

    fn update_connection_thread(&self, connection_id: &ConnectionId, thread_id: ThreadId) -> bool {
        let mut state = self.state.lock().unwrap();
        let Some(connection) = state.connections.get_mut(connection_id) else {
            return self.has(Bug::UpdateUnknownTrue);
        };
        let old = connection.thread_id.replace(thread_id.clone());
        if self.has(Bug::UpdateForgetsThreadIndex) {
            return true;
        }
        if let Some(old) = old
            && let Some(ids) = state.by_thread.get_mut(&old)
        {
            ids.remove(connection_id);
        }
        state
            .by_thread
            .entry(thread_id)
            .or_default()
            .insert(connection_id.clone());
        true
    }

    async fn send_to_user(
        &self,
        user_id: &UserId,
        message: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        self.guard(user_id, true)?;
        if self.has(Bug::SendHangs) {
            std::future::pending::<()>().await;
        }
        let frame = TextFrame::from_json(&message)?;
        let sockets = self.user_sockets(user_id);
        if self.has(Bug::SendWaitsForRoom) {
            for socket in &sockets {
                while socket.queue_depth() >= socket.limits().max_messages && !socket.is_closed() {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
        }
        self.deliver(
            sockets,
            Some(user_id),
            frame,
            DeliveryTarget::User(user_id.clone()),
            NotDeliveredReason::NoConnections,
            true,
        )
    }

    async fn emit_critical_event(
        &self,
        user_id: &UserId,
        event_type: &str,
        data: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        self.guard(user_id, true)?;
        if self.has(Bug::EnvelopeWithoutOffsets) {
            let envelope =
                serde_json::json!({ "type": event_type, "data": data, "critical": true });
            let frame = TextFrame::from_json(&envelope)?;
            let sockets = self.user_sockets(user_id);
            return self.deliver(
                sockets,
                Some(user_id),
                frame,
                DeliveryTarget::User(user_id.clone()),
                NotDeliveredReason::NoConnections,
                false,
            );
        }
        // The state lock keeps emits and connection changes in one order.
        let state = self.state.lock().unwrap();
        let mut sockets = state.sockets_of(user_id);
        if self.has(Bug::CriticalSkipsFullSocket) {
            sockets.retain(|s| s.queue_depth() < s.limits().max_messages);
        }
        if sockets.is_empty() && self.has(Bug::DropsOfflineCriticalEvents) {
            return Ok(Delivery::queued(1));
        }
        self.critical.emit(user_id, event_type, data, &sockets)
    }

    fn get_connection_health(&self, user_id: &UserId) -> ConnectionHealth {
        let mut health = ConnectionHealth::empty(user_id.clone());
        if self.guard(user_id, false).is_err() {
            return health;
        }
        let state = self.state.lock().unwrap();
        let connections: Vec<&WebSocketConnection> = state
            .by_user
            .get(user_id)
            .into_iter()
            .flatten()
            .filter_map(|id| state.connections.get(id))
            .collect();
        if !self.has(Bug::HealthCountsZero) {
            // Counted from the user index, as many managers do: a removal
            // that forgets that index shows here too.
            health.total_connections = state.by_user.get(user_id).map_or(0, HashSet::len);
            health.active_connections = connections
                .iter()
                .filter(|c| !c.websocket.is_closed())
                .count();
        }
        health.messages_sent = state.sent.get(user_id).copied().unwrap_or(0);
        health.pending_critical_events = self.critical.pending(user_id);
        health.connections = connections
            .iter()
            .map(|c| ConnectionSummary::of(c))
            .collect();
        health
    }

    async fn send_to_thread(
        &self,
        thread_id: &ThreadId,
        message: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        let frame = TextFrame::from_json(&message)?;
        let sockets: Vec<WebSocketHandle> = {
            let state = self.state.lock().unwrap();
            let bound = state.by_thread.get(thread_id).into_iter().flatten();
            if self.has(Bug::ThreadSendsToUser) {
                let users: HashSet<UserId> = bound
                    .filter_map(|id| state.connections.get(id))
                    .map(|c| c.user_id.clone())
                    .collect();
                users
                    .iter()
                    .flat_map(|u| state.by_user.get(u).into_iter().flatten())
                    .filter_map(|id| state.connections.get(id))
                    .map(|c| c.websocket.clone())
                    .collect()
            } else if self.has(Bug::ThreadSendReachesNobody) {
                Vec::new()
            } else {
                bound
                    .filter_map(|id| state.connections.get(id))
                    .map(|c| c.websocket.clone())
                    .collect()
            }
        };
        self.deliver(
            sockets,
            None,
            frame,
            DeliveryTarget::Thread(thread_id.clone()),
            NotDeliveredReason::NoThreadConnections,
            false,
        )
    }
}

/// Builds a unified test manager with `bug`.
pub fn unified(bug: Option<Bug>) -> DynManager {
    DynManager::new(TestManager::new(None, bug))
}

/// Builds an isolated test manager for the context's user, with `bug`.
pub fn isolated(context: &BuildContext<'_>, bug: Option<Bug>) -> Result<DynManager, BuildError> {
    let owner = context.require_user_context()?.user_id.clone();
    Ok(DynManager::new(TestManager::with_config(
        Some(owner),
        bug,
        context.config,
    )))
}

/// A constructor for a registration: the manager of `mode` with `bug`.
pub fn build(
    mode: ManagerMode,
    context: &BuildContext<'_>,
    bug: Option<Bug>,
) -> Result<DynManager, BuildError> {
    match mode {
        ManagerMode::Unified => Ok(DynManager::new(TestManager::with_config(
            None,
            bug,
            context.config,
        ))),
        ManagerMode::Isolated => isolated(context, bug),
    }
}

pub fn good_unified(context: &BuildContext<'_>) -> Result<DynManager, BuildError> {
    build(ManagerMode::Unified, context, None)
}

pub fn good_isolated(context: &BuildContext<'_>) -> Result<DynManager, BuildError> {
    build(ManagerMode::Isolated, context, None)
}

/// A registration written by hand, as `#[websocket_manager]` would.
pub fn registration(
    name: &'static str,
    mode: ManagerMode,
    constructor: Option<websocket_manager::startup::Constructor>,
) -> Registration {
    Registration::new(name, "TestManager", mode, constructor).at(module_path!(), file!(), line!())
}
