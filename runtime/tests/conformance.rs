//! The conformance kit: a correct manager passes every check, and each
//! deliberately broken manager fails exactly the checks meant to catch its
//! bug, with a message naming the method.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeSet, HashSet};

use support::{Bug, TestManager};
use websocket_manager::conformance::{Check, Conformance, is_probe_id};
use websocket_manager::{
    ConnectionHealth, ConnectionId, Delivery, DynManager, ManagerError, ThreadId, UserId,
    WebSocketConnection, WebSocketHandle, WebSocketManager,
    socket::QueueLimits,
    startup::{BuildContext, BuildError, ConstructManager, ManagerMode},
};

async fn run(
    mode: ManagerMode,
    bug: Option<Bug>,
) -> websocket_manager::conformance::ConformanceReport {
    Conformance::new(mode)
        .run(|context| support::build(mode, context, bug))
        .await
}

fn failing(report: &websocket_manager::conformance::ConformanceReport) -> BTreeSet<Check> {
    report
        .outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| o.check)
        .collect()
}

#[tokio::test]
async fn a_correct_manager_passes_every_check_in_both_modes() {
    let unified = run(ManagerMode::Unified, None).await;
    assert!(unified.passed(), "{unified}");
    assert_eq!(
        unified.checks_run(),
        17,
        "isolation checks do not apply to unified"
    );
    let isolated = run(ManagerMode::Isolated, None).await;
    assert!(isolated.passed(), "{isolated}");
    assert_eq!(isolated.checks_run(), 19);
    assert_eq!(Check::ALL.len(), 19);
}

/// Runs the kit on a manager with `bug` and asserts exactly `expected` fail,
/// the first of them in `method`.
async fn assert_caught(mode: ManagerMode, bug: Bug, expected: &[Check], method: &str) {
    let report = run(mode, Some(bug)).await;
    let expected_set: BTreeSet<Check> = expected.iter().copied().collect();
    assert_eq!(failing(&report), expected_set, "{bug:?}:\n{report}");
    let failure = report
        .outcome(expected[0])
        .unwrap()
        .failure
        .as_ref()
        .unwrap();
    assert_eq!(failure.method, method, "{bug:?}: {failure}");
    assert_eq!(failure.check, expected[0].name());
    assert!(!failure.expected.is_empty() && !failure.got.is_empty() && !failure.fix.is_empty());
    let text = report.to_string();
    assert!(text.contains("FAIL") && text.contains(method), "{text}");
}

#[tokio::test]
async fn lookup_by_socket_returning_none_is_caught() {
    assert_caught(
        ManagerMode::Unified,
        Bug::LookupBySocketNone,
        &[Check::AddThenLookupBySocket],
        "get_connection_id_by_websocket",
    )
    .await;
    let report = run(ManagerMode::Unified, Some(Bug::LookupBySocketNone)).await;
    let failure = report.failures()[0];
    assert_eq!(failure.got, "None");
    assert!(
        failure.expected.starts_with("Some(__wsm_probe_conn_"),
        "{failure}"
    );
    assert!(failure.fix.contains("SocketId"), "{failure}");
}

#[tokio::test]
async fn send_to_thread_reaching_the_whole_user_is_caught() {
    assert_caught(
        ManagerMode::Unified,
        Bug::ThreadSendsToUser,
        &[Check::ThreadRouting],
        "send_to_thread",
    )
    .await;
    // Same bug in an isolated manager: caught through the sibling socket.
    assert_caught(
        ManagerMode::Isolated,
        Bug::ThreadSendsToUser,
        &[Check::ThreadRouting],
        "send_to_thread",
    )
    .await;
}

#[tokio::test]
async fn queries_answering_for_every_user_are_caught() {
    assert_caught(
        ManagerMode::Unified,
        Bug::QueriesAnswerForEveryone,
        &[Check::QueriesAreScopedToTheUser],
        "get_user_connections",
    )
    .await;
}

#[tokio::test]
async fn an_offline_critical_event_answered_ok_but_dropped_is_blamed_on_the_emitter() {
    for mode in [ManagerMode::Unified, ManagerMode::Isolated] {
        // the resume check emits to an offline user too
        let caught = [
            Check::OfflineCriticalEventIsReplayed,
            Check::ResumeFromOffset,
        ];
        assert_caught(
            mode,
            Bug::DropsOfflineCriticalEvents,
            &caught,
            "emit_critical_event",
        )
        .await;
        let report = run(mode, Some(Bug::DropsOfflineCriticalEvents)).await;
        for check in caught {
            let failure = report.outcome(check).unwrap().failure.as_ref().unwrap();
            assert_eq!(failure.method, "emit_critical_event", "{failure}");
            assert!(failure.got.contains("0 pending"), "{failure}");
        }
    }
}

#[tokio::test]
async fn an_offline_critical_event_kept_but_not_replayed_is_blamed_on_add_connection() {
    for mode in [ManagerMode::Unified, ManagerMode::Isolated] {
        let caught = [
            Check::OfflineCriticalEventIsReplayed,
            Check::ResumeFromOffset,
        ];
        assert_caught(mode, Bug::AddSkipsReplay, &caught, "add_connection").await;
        let report = run(mode, Some(Bug::AddSkipsReplay)).await;
        for check in caught {
            let failure = report.outcome(check).unwrap().failure.as_ref().unwrap();
            assert_eq!(failure.method, "add_connection", "{failure}");
        }
        let offline = report
            .outcome(Check::OfflineCriticalEventIsReplayed)
            .unwrap()
            .failure
            .as_ref()
            .unwrap();
        assert!(offline.got.contains("1 pending"), "{offline}");
    }
}

#[tokio::test]
async fn critical_events_without_offsets_are_caught() {
    // The old envelope: wrong shape, nothing to resume from, and (sent as
    // a plain frame) skipped on a full socket that stays open.
    assert_caught(
        ManagerMode::Unified,
        Bug::EnvelopeWithoutOffsets,
        &[
            Check::CriticalEnvelope,
            Check::FullSocketNeverLosesACriticalEvent,
            Check::OfflineCriticalEventIsReplayed,
            Check::ResumeFromOffset,
        ],
        "emit_critical_event",
    )
    .await;
}

#[tokio::test]
async fn a_manager_that_ignores_the_resume_offset_is_caught() {
    for mode in [ManagerMode::Unified, ManagerMode::Isolated] {
        assert_caught(
            mode,
            Bug::IgnoresResume,
            &[Check::ResumeFromOffset],
            "add_connection",
        )
        .await;
    }
}

#[tokio::test]
async fn inventing_an_unknown_connection_is_caught() {
    assert_caught(
        ManagerMode::Unified,
        Bug::UpdateUnknownTrue,
        &[Check::UnknownIds],
        "update_connection_thread",
    )
    .await;
}

#[tokio::test]
async fn removal_that_forgets_an_index_is_caught() {
    assert_caught(
        ManagerMode::Unified,
        Bug::RemoveForgetsSocketIndex,
        &[Check::RemovalClearsLookups],
        "remove_connection",
    )
    .await;
    let report = run(ManagerMode::Unified, Some(Bug::RemoveForgetsSocketIndex)).await;
    let failure = report.failures()[0];
    assert!(
        failure.expected.contains("get_connection_id_by_websocket"),
        "{failure}"
    );
    assert!(failure.got.contains("socket index"), "{failure}");
}

#[tokio::test]
async fn a_duplicate_connection_id_accepted_is_caught() {
    for mode in [ManagerMode::Unified, ManagerMode::Isolated] {
        assert_caught(
            mode,
            Bug::AcceptsDuplicateId,
            &[Check::DuplicateConnectionIdRefused],
            "add_connection",
        )
        .await;
    }
    let report = run(ManagerMode::Unified, Some(Bug::AcceptsDuplicateId)).await;
    let failure = report.failures()[0];
    assert!(
        failure.expected.contains("DuplicateConnection"),
        "{failure}"
    );
    assert!(failure.got.starts_with("Ok(())"), "{failure}");
}

#[tokio::test]
async fn a_duplicate_socket_accepted_is_caught() {
    for mode in [ManagerMode::Unified, ManagerMode::Isolated] {
        assert_caught(
            mode,
            Bug::AcceptsDuplicateSocket,
            &[Check::DuplicateSocketRefused],
            "add_connection",
        )
        .await;
    }
    let report = run(ManagerMode::Unified, Some(Bug::AcceptsDuplicateSocket)).await;
    assert!(
        report.failures()[0]
            .expected
            .contains("SocketAlreadyRegistered"),
        "{report}"
    );
}

#[tokio::test]
async fn a_manager_without_the_connection_cap_is_caught() {
    for mode in [ManagerMode::Unified, ManagerMode::Isolated] {
        assert_caught(
            mode,
            Bug::IgnoresConnectionCap,
            &[Check::ConnectionCapEnforced],
            "add_connection",
        )
        .await;
    }
    let report = run(ManagerMode::Unified, Some(Bug::IgnoresConnectionCap)).await;
    let failure = report.failures()[0];
    // The default configuration's cap of 32, named in the message.
    assert!(failure.expected.contains("limit: 32"), "{failure}");
    assert!(failure.expected.contains("connection 33"), "{failure}");
}

#[tokio::test]
async fn the_cap_probed_is_the_configured_one_and_a_large_one_is_lowered() {
    use websocket_manager::conformance::PROBED_CONNECTION_CAP;
    use websocket_manager::managers::ManagerConfig;
    // A correct manager built with cap 3 passes; a kit that assumed the
    // default (32) would see the 4th connection refused and fail it.
    let small = ManagerConfig::builder()
        .max_connections_per_user(3)
        .build()
        .unwrap();
    let report = Conformance::new(ManagerMode::Unified)
        .config(small.clone())
        .only([Check::ConnectionCapEnforced])
        .run(|context| support::build(ManagerMode::Unified, context, None))
        .await;
    assert!(report.passed(), "{report}");
    let broken = Conformance::new(ManagerMode::Unified)
        .config(small)
        .only([Check::ConnectionCapEnforced])
        .run(|context| {
            support::build(
                ManagerMode::Unified,
                context,
                Some(Bug::IgnoresConnectionCap),
            )
        })
        .await;
    let failure = broken.failures()[0];
    assert!(failure.expected.contains("limit: 3 "), "{failure}");

    // A cap of 10 000 is probed at PROBED_CONNECTION_CAP: the manager is
    // built with the lowered cap and holds that many.
    let large = ManagerConfig::builder()
        .max_connections_per_user(10_000)
        .build()
        .unwrap();
    let caps = std::sync::Mutex::new(Vec::new());
    let report = Conformance::new(ManagerMode::Unified)
        .config(large)
        .only([Check::ConnectionCapEnforced, Check::UnknownIds])
        .run(|context| {
            caps.lock()
                .unwrap()
                .push(context.config.max_connections_per_user());
            support::build(ManagerMode::Unified, context, None)
        })
        .await;
    assert!(report.passed(), "{report}");
    assert_eq!(
        *caps.lock().unwrap(),
        [PROBED_CONNECTION_CAP, 10_000],
        "only the cap probe's instance gets the lowered cap"
    );
}

#[tokio::test]
async fn a_removal_that_leaves_the_socket_open_is_caught() {
    for mode in [ManagerMode::Unified, ManagerMode::Isolated] {
        assert_caught(
            mode,
            Bug::RemoveLeavesSocketOpen,
            &[Check::RemovalClosesTheSocket],
            "remove_connection",
        )
        .await;
    }
}

#[tokio::test]
async fn a_thread_given_on_add_but_not_indexed_is_caught() {
    for mode in [ManagerMode::Unified, ManagerMode::Isolated] {
        assert_caught(
            mode,
            Bug::AddForgetsThreadIndex,
            &[Check::AddIndexesTheThread],
            "add_connection",
        )
        .await;
    }
}

#[tokio::test]
async fn silent_success_without_a_connection_is_caught() {
    // Caught by the delivery check and again after a removal.
    assert_caught(
        ManagerMode::Unified,
        Bug::SilentSuccess,
        &[Check::DeliveryCounts, Check::RemovalClearsLookups],
        "send_to_user",
    )
    .await;
}

#[tokio::test]
async fn overcounted_recipients_are_caught() {
    assert_caught(
        ManagerMode::Unified,
        Bug::OvercountsRecipients,
        // also with one socket full: 1 took it, 2 reported
        &[Check::DeliveryCounts, Check::FullSocketDoesNotBlockSends],
        "send_to_user",
    )
    .await;
    let report = run(ManagerMode::Unified, Some(Bug::OvercountsRecipients)).await;
    let failure = report.failures()[0];
    assert!(failure.expected.contains("recipients: 2"), "{failure}");
    assert!(failure.got.contains("recipients: 3"), "{failure}");
}

#[tokio::test]
async fn wrong_health_counts_are_caught() {
    assert_caught(
        ManagerMode::Unified,
        Bug::HealthCountsZero,
        &[Check::HealthCounts],
        "get_connection_health",
    )
    .await;
}

#[tokio::test]
async fn an_isolated_manager_that_accepts_other_users_is_caught() {
    assert_caught(
        ManagerMode::Isolated,
        Bug::AcceptsOtherUsers,
        &[
            Check::IsolationRefusesConnections,
            Check::IsolationRefusesSends,
        ],
        "add_connection",
    )
    .await;
}

#[tokio::test]
async fn an_isolated_manager_that_sends_to_other_users_is_caught() {
    assert_caught(
        ManagerMode::Isolated,
        Bug::SendsToOtherUsers,
        &[Check::IsolationRefusesSends],
        "send_to_user",
    )
    .await;
}

#[tokio::test]
async fn a_failing_constructor_fails_every_check_naming_the_constructor() {
    let report = Conformance::new(ManagerMode::Unified)
        .run(|_| Err(BuildError::MissingUserContext))
        .await;
    assert_eq!(report.checks_passed(), 0);
    assert!(report.failures().iter().all(|f| f.method == "constructor"));
}

#[tokio::test]
async fn probes_leave_nothing_behind_and_never_touch_a_real_users_socket() {
    // A live unified manager with a real user on it.
    let manager = DynManager::new(TestManager::new(None, None));
    let alice = UserId::new("alice").unwrap();
    let (socket, mut receiver) = WebSocketHandle::channel(QueueLimits::default());
    let connection = WebSocketConnection::new(alice.clone(), socket);
    let alice_connection = connection.connection_id.clone();
    manager.add_connection(connection).await.unwrap();

    // Every check, run on the same (live) instance.
    let kit = Conformance::new(ManagerMode::Unified);
    let scope = websocket_manager::conformance::ProbeScope::new();
    assert!(is_probe_id(scope.owner().as_str()) && is_probe_id(scope.other().as_str()));
    for &check in kit.checks() {
        assert_eq!(
            kit.run_check(check, &manager, &scope).await,
            None,
            "{check}"
        );
    }
    // Alice is untouched: her connection is there, her socket got nothing.
    assert_eq!(
        manager.get_user_connections(&alice),
        [alice_connection].into()
    );
    let nothing = tokio::time::timeout(std::time::Duration::from_millis(20), receiver.recv()).await;
    assert!(nothing.is_err(), "alice's socket received {nothing:?}");
    // No probe connection is left.
    assert!(manager.get_user_connections(scope.owner()).is_empty());
    assert!(manager.get_user_connections(scope.other()).is_empty());
    assert_eq!(
        manager
            .get_connection_health(scope.owner())
            .total_connections,
        0
    );
}

#[tokio::test]
async fn live_runs_only_the_safe_checks_and_says_which_it_skipped() {
    let manager = DynManager::new(TestManager::new(Some(UserId::new("alice").unwrap()), None));
    let report = Conformance::new(ManagerMode::Isolated)
        .run_live(&manager)
        .await;
    let ran: Vec<Check> = report.outcomes.iter().map(|o| o.check).collect();
    assert_eq!(ran, [Check::UnknownIds, Check::IsolationRefusesConnections]);
    assert!(report.passed(), "{report}");
    assert_eq!(report.skipped.len(), 17);
    assert!(report.skipped.iter().all(|s| !s.check.is_live_safe()));

    // The live isolation probe still catches a manager that accepts anyone.
    let broken = DynManager::new(TestManager::new(
        Some(UserId::new("alice").unwrap()),
        Some(Bug::AcceptsOtherUsers),
    ));
    let report = Conformance::new(ManagerMode::Isolated)
        .run_live(&broken)
        .await;
    let failing = failing(&report);
    assert_eq!(failing, [Check::IsolationRefusesConnections].into());
    // ... and removed the connection it wrongly accepted.
    assert!(
        broken
            .get_user_connections(&UserId::new("alice").unwrap())
            .is_empty()
    );
}

#[tokio::test]
async fn report_serializes_with_the_same_outcomes() {
    let report = run(ManagerMode::Unified, Some(Bug::LookupBySocketNone)).await;
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["mode"], "unified");
    let outcomes = json["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), report.checks_run());
    assert_eq!(outcomes[0]["check"], "add_then_lookup_by_socket");
    assert_eq!(
        outcomes[0]["failure"]["method"],
        "get_connection_id_by_websocket"
    );
    assert!(outcomes[1]["failure"].is_null());
}

#[tokio::test]
async fn both_reference_managers_pass_the_kit() {
    use websocket_manager::managers::{IsolatedWebSocketManager, UnifiedWebSocketManager};
    let unified = Conformance::new(ManagerMode::Unified)
        .run_type::<UnifiedWebSocketManager>()
        .await;
    assert!(unified.passed(), "{unified}");
    let isolated = Conformance::new(ManagerMode::Isolated)
        .run_type::<IsolatedWebSocketManager>()
        .await;
    assert!(isolated.passed(), "{isolated}");
    assert_eq!(isolated.checks_run(), 19);
    assert_eq!(unified.checks_run(), 17);
}

/// A manager that forgets everything it is told, built by its own
/// `ConstructManager`.
struct Forgetful;

#[websocket_manager::websocket_manager(factory = false)]
impl Forgetful {
    async fn add_connection(&self, _c: WebSocketConnection) -> Result<(), ManagerError> {
        Ok(())
    }
    async fn remove_connection(&self, _c: &ConnectionId) -> Option<WebSocketConnection> {
        None
    }
    fn get_connection(&self, _c: &ConnectionId) -> Option<WebSocketConnection> {
        None
    }
    fn get_user_connections(&self, _u: &UserId) -> HashSet<ConnectionId> {
        HashSet::new()
    }
    fn is_connection_active(&self, _u: &UserId) -> bool {
        false
    }
    fn get_connection_id_by_websocket(&self, _w: &WebSocketHandle) -> Option<ConnectionId> {
        None
    }
    fn update_connection_thread(&self, _c: &ConnectionId, _t: ThreadId) -> bool {
        false
    }
    async fn send_to_user(
        &self,
        _u: &UserId,
        _m: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        Ok(Delivery::queued(1))
    }
    async fn emit_critical_event(
        &self,
        _u: &UserId,
        _e: &str,
        _d: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        Ok(Delivery::queued(1))
    }
    fn get_connection_health(&self, u: &UserId) -> ConnectionHealth {
        ConnectionHealth::empty(u.clone())
    }
    async fn send_to_thread(
        &self,
        _t: &ThreadId,
        _m: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        Ok(Delivery::queued(1))
    }
}

impl ConstructManager for Forgetful {
    fn construct(_context: &BuildContext<'_>) -> Result<Self, BuildError> {
        Ok(Forgetful)
    }
}

#[tokio::test]
async fn run_type_builds_and_checks_the_given_type() {
    let report = Conformance::new(ManagerMode::Unified)
        .run_type::<Forgetful>()
        .await;
    assert!(!report.passed());
    assert_eq!(
        report.checks_run(),
        Check::ALL
            .iter()
            .filter(|c| c.applies_to(ManagerMode::Unified))
            .count()
    );
    assert_eq!(report.failures()[0].method, "get_connection", "{report}");
}

#[tokio::test]
async fn a_hung_async_method_fails_its_checks_instead_of_hanging() {
    let report = Conformance::new(ManagerMode::Unified)
        .check_timeout(Some(std::time::Duration::from_millis(50)))
        .run(|context| support::build(ManagerMode::Unified, context, Some(Bug::SendHangs)))
        .await;
    assert_eq!(
        failing(&report),
        [
            Check::RemovalClearsLookups,
            Check::DeliveryCounts,
            Check::FullSocketDoesNotBlockSends
        ]
        .into(),
        "{report}"
    );
    let failure = report
        .outcome(Check::DeliveryCounts)
        .unwrap()
        .failure
        .as_ref()
        .unwrap();
    // The hung call is named, not "an async method".
    assert_eq!(failure.method, "send_to_user", "{failure}");
    assert_eq!(failure.got, "send_to_user never returned");
    assert!(failure.fix.contains(".await"));
}

/// The map-based manager a new user writes from `docs/managers.md`: one map from
/// connection id to connection, the library's building blocks for critical
/// events and fan-out, and nothing else. It forgets three lines of the
/// table: it overwrites a duplicate id or socket instead of refusing it, has
/// no per-user cap, and does not close the socket it removes. The kit passed
/// it 10/10 before those lines were checked.
struct NaiveMapManager {
    connections: std::sync::Mutex<std::collections::HashMap<ConnectionId, WebSocketConnection>>,
    critical: websocket_manager::managers::CriticalEventLog,
}

impl ConstructManager for NaiveMapManager {
    fn construct(context: &BuildContext<'_>) -> Result<Self, BuildError> {
        Ok(NaiveMapManager {
            connections: Default::default(),
            critical: websocket_manager::managers::CriticalEventLog::new(context.config),
        })
    }
}

impl NaiveMapManager {
    fn sockets(&self, keep: impl Fn(&WebSocketConnection) -> bool) -> Vec<WebSocketHandle> {
        let map = self.connections.lock().unwrap();
        map.values()
            .filter(|c| keep(c))
            .map(|c| c.websocket.clone())
            .collect()
    }
}

#[websocket_manager::websocket_manager(factory = false)]
impl WebSocketManager for NaiveMapManager {
    async fn add_connection(&self, connection: WebSocketConnection) -> Result<(), ManagerError> {
        let mut map = self.connections.lock().unwrap();
        self.critical.attach(&connection)?;
        map.insert(connection.connection_id.clone(), connection);
        Ok(())
    }
    async fn remove_connection(&self, id: &ConnectionId) -> Option<WebSocketConnection> {
        let removed = self.connections.lock().unwrap().remove(id)?;
        self.critical.detach(&removed.user_id);
        Some(removed)
    }
    fn get_connection(&self, id: &ConnectionId) -> Option<WebSocketConnection> {
        self.connections.lock().unwrap().get(id).cloned()
    }
    fn get_user_connections(&self, user: &UserId) -> HashSet<ConnectionId> {
        let map = self.connections.lock().unwrap();
        map.values()
            .filter(|c| &c.user_id == user)
            .map(|c| c.connection_id.clone())
            .collect()
    }
    fn is_connection_active(&self, user: &UserId) -> bool {
        !self
            .sockets(|c| &c.user_id == user && !c.websocket.is_closed())
            .is_empty()
    }
    fn get_connection_id_by_websocket(&self, socket: &WebSocketHandle) -> Option<ConnectionId> {
        let map = self.connections.lock().unwrap();
        map.values()
            .find(|c| c.websocket.id() == socket.id())
            .map(|c| c.connection_id.clone())
    }
    fn update_connection_thread(&self, id: &ConnectionId, thread: ThreadId) -> bool {
        match self.connections.lock().unwrap().get_mut(id) {
            Some(connection) => {
                connection.thread_id = Some(thread);
                true
            }
            None => false,
        }
    }
    async fn send_to_user(
        &self,
        user: &UserId,
        message: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        websocket_manager::managers::deliver_frame(
            websocket_manager::DeliveryTarget::User(user.clone()),
            &self.sockets(|c| &c.user_id == user),
            &websocket_manager::socket::TextFrame::from_json(&message)?,
            websocket_manager::managers::SlowConsumerPolicy::Disconnect,
            websocket_manager::NotDeliveredReason::NoConnections,
        )
    }
    async fn emit_critical_event(
        &self,
        user: &UserId,
        event_type: &str,
        data: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        let map = self.connections.lock().unwrap();
        let sockets: Vec<WebSocketHandle> = map
            .values()
            .filter(|c| &c.user_id == user)
            .map(|c| c.websocket.clone())
            .collect();
        self.critical.emit(user, event_type, data, &sockets)
    }
    fn get_connection_health(&self, user: &UserId) -> ConnectionHealth {
        let mut health = ConnectionHealth::empty(user.clone());
        let map = self.connections.lock().unwrap();
        for connection in map.values().filter(|c| &c.user_id == user) {
            health.total_connections += 1;
            health.active_connections += usize::from(!connection.websocket.is_closed());
            health
                .connections
                .push(websocket_manager::ConnectionSummary::of(connection));
        }
        health.pending_critical_events = self.critical.pending(user);
        health
    }
    async fn send_to_thread(
        &self,
        thread: &ThreadId,
        message: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        websocket_manager::managers::deliver_frame(
            websocket_manager::DeliveryTarget::Thread(thread.clone()),
            &self.sockets(|c| c.thread_id.as_ref() == Some(thread)),
            &websocket_manager::socket::TextFrame::from_json(&message)?,
            websocket_manager::managers::SlowConsumerPolicy::Disconnect,
            websocket_manager::NotDeliveredReason::NoThreadConnections,
        )
    }
}

#[tokio::test]
async fn the_naive_map_manager_fails_exactly_the_lines_it_forgets() {
    let report = Conformance::new(ManagerMode::Unified)
        .run_type::<NaiveMapManager>()
        .await;
    let blamed: Vec<(Check, &str)> = report
        .outcomes
        .iter()
        .filter_map(|o| o.failure.as_ref().map(|f| (o.check, f.method.as_str())))
        .collect();
    assert_eq!(
        blamed,
        [
            (Check::DuplicateConnectionIdRefused, "add_connection"),
            (Check::DuplicateSocketRefused, "add_connection"),
            (Check::ConnectionCapEnforced, "add_connection"),
            (Check::RemovalClosesTheSocket, "remove_connection"),
        ],
        "{report}"
    );
    assert_eq!((report.checks_passed(), report.checks_run()), (13, 17));
    assert!(
        report.to_string().contains("13/17 checks passed"),
        "{report}"
    );
}

#[tokio::test]
async fn a_send_that_waits_for_a_full_socket_is_caught_and_named() {
    for mode in [ManagerMode::Unified, ManagerMode::Isolated] {
        let report = Conformance::new(mode)
            .check_timeout(Some(std::time::Duration::from_millis(300)))
            .run(|context| support::build(mode, context, Some(Bug::SendWaitsForRoom)))
            .await;
        assert_eq!(
            failing(&report),
            [Check::FullSocketDoesNotBlockSends].into(),
            "{report}"
        );
        let failure = report.failures()[0];
        assert_eq!(failure.method, "send_to_user", "{failure}");
        assert_eq!(failure.got, "send_to_user never returned");
    }
}

#[tokio::test]
async fn a_critical_event_skipped_on_a_full_socket_is_caught() {
    for mode in [ManagerMode::Unified, ManagerMode::Isolated] {
        assert_caught(
            mode,
            Bug::CriticalSkipsFullSocket,
            &[Check::FullSocketNeverLosesACriticalEvent],
            "emit_critical_event",
        )
        .await;
    }
}

#[tokio::test]
async fn a_thread_recorded_but_not_indexed_by_the_update_is_blamed_on_the_update() {
    for mode in [ManagerMode::Unified, ManagerMode::Isolated] {
        assert_caught(
            mode,
            Bug::UpdateForgetsThreadIndex,
            &[Check::ThreadRouting],
            "update_connection_thread",
        )
        .await;
    }
}

#[tokio::test]
async fn a_thread_send_that_reaches_nobody_is_blamed_on_send_to_thread_not_on_the_indexes() {
    for mode in [ManagerMode::Unified, ManagerMode::Isolated] {
        let report = run(mode, Some(Bug::ThreadSendReachesNobody)).await;
        let blamed: Vec<(Check, &str)> = report
            .outcomes
            .iter()
            .filter_map(|o| o.failure.as_ref().map(|f| (o.check, f.method.as_str())))
            .collect();
        assert_eq!(
            blamed,
            [
                (Check::ThreadRouting, "send_to_thread"),
                (Check::AddIndexesTheThread, "send_to_thread"),
            ],
            "{report}"
        );
    }
}

#[tokio::test]
async fn a_removal_that_keeps_the_user_index_is_blamed_on_remove_connection_everywhere() {
    // Seen by three checks (the lookups, a place under the cap that the
    // removal did not free, the health count taken from the user index);
    // each names remove_connection, not the method that showed the stale
    // entry.
    let report = run(ManagerMode::Unified, Some(Bug::RemoveForgetsUserIndex)).await;
    let blamed: Vec<(Check, &str)> = report
        .outcomes
        .iter()
        .filter_map(|o| o.failure.as_ref().map(|f| (o.check, f.method.as_str())))
        .collect();
    assert_eq!(
        blamed,
        [
            (Check::ConnectionCapEnforced, "remove_connection"),
            (Check::RemovalClearsLookups, "remove_connection"),
            (Check::HealthCounts, "remove_connection"),
        ],
        "{report}"
    );
}

#[tokio::test]
async fn a_duplicate_id_refused_after_indexing_its_socket_is_caught() {
    assert_caught(
        ManagerMode::Unified,
        Bug::DuplicateIdLeavesSocketIndexed,
        &[Check::DuplicateConnectionIdRefused],
        "add_connection",
    )
    .await;
    let report = run(
        ManagerMode::Unified,
        Some(Bug::DuplicateIdLeavesSocketIndexed),
    )
    .await;
    let failure = report.failures()[0];
    assert!(
        failure
            .got
            .contains("get_connection_id_by_websocket(refused socket) = Some"),
        "{failure}"
    );
}
