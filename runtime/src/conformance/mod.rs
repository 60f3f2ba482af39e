//! The conformance kit: behavioural checks any [`WebSocketManager`](crate::WebSocketManager) can be
//! run through, each able to fail.
//!
//! The compiler and `#[websocket_manager]` prove a manager has the 11 methods
//! with the right signatures. These checks prove the methods *do* what the
//! contract says: a connection added is found by its socket, by its id and
//! by its thread; a duplicate id or socket and a connection beyond the
//! per-user cap are refused; a thread send reaches exactly the sockets bound
//! to that thread; removal clears every lookup and closes the socket; a send
//! reports how many sockets really got the frame, never "succeeds" without
//! one and never waits for a full socket; health counts what is there;
//! queries about one user never reveal another's connections; critical
//! events arrive in their envelope with offsets, close a socket that cannot
//! take them rather than skip it, are kept for an offline user and resume
//! from an offset; and an isolated manager refuses every other user.
//!
//! A failure names the method at fault, not the one where the symptom
//! showed: an offline critical event that never arrives is blamed on
//! `emit_critical_event` when `get_connection_health` counts nothing
//! pending, on `add_connection` when it does; a check that times out names
//! the async call it was awaiting.
//!
//! Every probe uses synthetic identities under the reserved
//! [`PROBE_PREFIX`] with a unique suffix, and sockets created for the probe;
//! it removes what it added before returning. [`Conformance::run`] builds a
//! fresh instance per check. [`Conformance::run_live`] runs only the checks
//! that cannot reach a real user's socket (lookups of unknown ids and the
//! isolation refusal), and lists the others as skipped.
//!
//! ```
//! use websocket_manager::conformance::Conformance;
//! use websocket_manager::{DynManager, startup::{BuildContext, BuildError, ManagerMode}};
//!
//! # struct Quiet;
//! # #[websocket_manager::websocket_manager(factory = false)]
//! # impl Quiet {
//! #     async fn add_connection(&self, _c: websocket_manager::WebSocketConnection) -> Result<(), websocket_manager::ManagerError> { Ok(()) }
//! #     async fn remove_connection(&self, _c: &websocket_manager::ConnectionId) -> Option<websocket_manager::WebSocketConnection> { None }
//! #     fn get_connection(&self, _c: &websocket_manager::ConnectionId) -> Option<websocket_manager::WebSocketConnection> { None }
//! #     fn get_user_connections(&self, _u: &websocket_manager::UserId) -> std::collections::HashSet<websocket_manager::ConnectionId> { Default::default() }
//! #     fn is_connection_active(&self, _u: &websocket_manager::UserId) -> bool { false }
//! #     fn get_connection_id_by_websocket(&self, _w: &websocket_manager::WebSocketHandle) -> Option<websocket_manager::ConnectionId> { None }
//! #     fn update_connection_thread(&self, _c: &websocket_manager::ConnectionId, _t: websocket_manager::ThreadId) -> bool { false }
//! #     async fn send_to_user(&self, _u: &websocket_manager::UserId, _m: serde_json::Value) -> Result<websocket_manager::Delivery, websocket_manager::ManagerError> { Ok(websocket_manager::Delivery::delivered(1, 0)) }
//! #     async fn emit_critical_event(&self, _u: &websocket_manager::UserId, _e: &str, _d: serde_json::Value) -> Result<websocket_manager::Delivery, websocket_manager::ManagerError> { Ok(websocket_manager::Delivery::queued(1)) }
//! #     fn get_connection_health(&self, u: &websocket_manager::UserId) -> websocket_manager::ConnectionHealth { websocket_manager::ConnectionHealth::empty(u.clone()) }
//! #     async fn send_to_thread(&self, _t: &websocket_manager::ThreadId, _m: serde_json::Value) -> Result<websocket_manager::Delivery, websocket_manager::ManagerError> { Ok(websocket_manager::Delivery::delivered(1, 0)) }
//! # }
//! fn build(_: &BuildContext<'_>) -> Result<DynManager, BuildError> {
//!     Ok(DynManager::new(Quiet)) // a manager that forgets everything it is told
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let report = Conformance::new(ManagerMode::Unified).run(build).await;
//! assert!(!report.passed());
//! let failure = &report.failures()[0];
//! assert_eq!(failure.method, "get_connection");
//! println!("{report}"); // every failure: method, expected, got, fix
//! # });
//! ```

mod checks;
mod probe;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::config::ManagerConfig;
use crate::context::{ManagerMode, UserContext};
use crate::dyn_manager::DynManager;
use crate::extensions::Extensions;
use crate::ids::{ConnectionId, ThreadId, UserId};
use crate::registry::{BuildContext, BuildError};
use probe::Probe;

/// The prefix reserved for the probes' synthetic user, connection and thread
/// ids. Real ids must not start with it.
pub const PROBE_PREFIX: &str = "__wsm_probe_";

/// Whether `id` is one of the probes' synthetic ids.
///
/// ```
/// assert!(websocket_manager::conformance::is_probe_id("__wsm_probe_user_1f_3"));
/// assert!(!websocket_manager::conformance::is_probe_id("alice"));
/// ```
pub fn is_probe_id(id: &str) -> bool {
    id.starts_with(PROBE_PREFIX)
}

/// One behavioural check of the kit.
///
/// Each check names one line of the contract; the table of what each
/// method must do (`docs/managers.md`) lists which check covers which line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// A connection just added is found by id, by socket and by user.
    AddThenLookupBySocket,
    /// `add_connection` refuses a connection id that is already registered
    /// (`DuplicateConnection`) and keeps the first connection as it was.
    DuplicateConnectionIdRefused,
    /// `add_connection` refuses a socket that is already registered under
    /// another connection id (`SocketAlreadyRegistered`) and registers
    /// nothing.
    DuplicateSocketRefused,
    /// `add_connection` refuses a user's connection beyond
    /// [`ManagerConfig::max_connections_per_user`] (`ConnectionLimit`),
    /// registers nothing, and accepts one again after a removal.
    ConnectionCapEnforced,
    /// A connection moved to a thread receives `send_to_thread`, and no other
    /// socket does; moving it away stops that.
    ThreadRouting,
    /// A connection added with a thread already set receives
    /// `send_to_thread` for it: `add_connection` indexes the thread.
    AddIndexesTheThread,
    /// Unknown ids give `None`, `false` or empty answers, never an invented
    /// one.
    UnknownIds,
    /// After `remove_connection`, no lookup and no send finds the connection.
    RemovalClearsLookups,
    /// `remove_connection` closes the removed connection's socket.
    RemovalClosesTheSocket,
    /// `Delivered { recipients }` equals the sockets that got the frame; a
    /// send to a user with no connection is an error.
    DeliveryCounts,
    /// `send_to_user` does not wait for a socket whose queue is full (a
    /// client that stopped reading): it returns, the user's other socket gets
    /// the frame, and only that one is counted.
    FullSocketDoesNotBlockSends,
    /// A critical event a full socket cannot take is not skipped silently:
    /// that socket is closed, so its client reconnects and resumes.
    FullSocketNeverLosesACriticalEvent,
    /// `get_connection_health` counts the connections that are there.
    HealthCounts,
    /// An isolated manager refuses another user's connection.
    IsolationRefusesConnections,
    /// An isolated manager refuses sends and critical events to another user.
    IsolationRefusesSends,
    /// Queries about a user with no connection answer empty while another
    /// user is connected: no answer leaks another user's connections.
    QueriesAreScopedToTheUser,
    /// A critical event for a user with no connection is kept (`Ok`) and
    /// reaches the user's next connection. When it does not arrive,
    /// `get_connection_health` tells which method lost it: an event counted
    /// as pending was kept (so `add_connection` did not replay it), one that
    /// is not was never kept (so `emit_critical_event` answered `Ok` for an
    /// event it dropped).
    OfflineCriticalEventIsReplayed,
    /// Critical events arrive as the documented envelope (`type`, `data`,
    /// `timestamp`, `critical`, `stream`, `sequence`), numbered 1, 2... within
    /// a stream, with the offset the `Delivery` reported.
    CriticalEnvelope,
    /// A connection resuming from an offset (with the print of the event
    /// there) gets exactly the events after it; one resuming with another
    /// event's print, or from an unknown stream, gets an `unknown_stream`
    /// resync notice first.
    ResumeFromOffset,
}

impl Check {
    /// Every check, in the order they run.
    pub const ALL: [Check; 19] = [
        Check::AddThenLookupBySocket,
        Check::DuplicateConnectionIdRefused,
        Check::DuplicateSocketRefused,
        Check::ConnectionCapEnforced,
        Check::ThreadRouting,
        Check::AddIndexesTheThread,
        Check::UnknownIds,
        Check::RemovalClearsLookups,
        Check::RemovalClosesTheSocket,
        Check::DeliveryCounts,
        Check::FullSocketDoesNotBlockSends,
        Check::FullSocketNeverLosesACriticalEvent,
        Check::HealthCounts,
        Check::IsolationRefusesConnections,
        Check::IsolationRefusesSends,
        Check::QueriesAreScopedToTheUser,
        Check::OfflineCriticalEventIsReplayed,
        Check::CriticalEnvelope,
        Check::ResumeFromOffset,
    ];

    /// The snake_case name used in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Check::AddThenLookupBySocket => "add_then_lookup_by_socket",
            Check::DuplicateConnectionIdRefused => "duplicate_connection_id_refused",
            Check::DuplicateSocketRefused => "duplicate_socket_refused",
            Check::ConnectionCapEnforced => "connection_cap_enforced",
            Check::ThreadRouting => "thread_routing",
            Check::AddIndexesTheThread => "add_indexes_the_thread",
            Check::UnknownIds => "unknown_ids",
            Check::RemovalClearsLookups => "removal_clears_lookups",
            Check::RemovalClosesTheSocket => "removal_closes_the_socket",
            Check::DeliveryCounts => "delivery_counts",
            Check::FullSocketDoesNotBlockSends => "full_socket_does_not_block_sends",
            Check::FullSocketNeverLosesACriticalEvent => "full_socket_never_loses_a_critical_event",
            Check::HealthCounts => "health_counts",
            Check::IsolationRefusesConnections => "isolation_refuses_connections",
            Check::IsolationRefusesSends => "isolation_refuses_sends",
            Check::QueriesAreScopedToTheUser => "queries_are_scoped_to_the_user",
            Check::OfflineCriticalEventIsReplayed => "offline_critical_event_is_replayed",
            Check::CriticalEnvelope => "critical_envelope",
            Check::ResumeFromOffset => "resume_from_offset",
        }
    }

    /// Whether the check applies to a manager of `mode` (the isolation
    /// checks apply to isolated managers only).
    pub fn applies_to(self, mode: ManagerMode) -> bool {
        match self {
            Check::IsolationRefusesConnections | Check::IsolationRefusesSends => {
                mode == ManagerMode::Isolated
            }
            _ => true,
        }
    }

    /// Whether the check is safe on a manager that serves real users: it
    /// sends nothing and adds no connection of the manager's own user, so
    /// even a broken manager cannot route a probe frame to a real socket.
    pub fn is_live_safe(self) -> bool {
        matches!(self, Check::UnknownIds | Check::IsolationRefusesConnections)
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed expectation: which method, what was expected, what happened and
/// how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CheckFailure {
    /// The check (or startup step) that failed.
    pub check: String,
    /// The contract method that misbehaved (or the startup step).
    pub method: String,
    /// What the contract requires.
    pub expected: String,
    /// What the manager did.
    pub got: String,
    /// How to fix it.
    pub fix: String,
}

impl CheckFailure {
    /// A failure of `check` in `method`.
    pub fn new(
        check: impl Into<String>,
        method: impl Into<String>,
        expected: impl Into<String>,
        got: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        CheckFailure {
            check: check.into(),
            method: method.into(),
            expected: expected.into(),
            got: got.into(),
            fix: fix.into(),
        }
    }
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] {}: expected {}; got {}. Fix: {}",
            self.check, self.method, self.expected, self.got, self.fix
        )
    }
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CheckOutcome {
    /// The check.
    pub check: Check,
    /// `None` when it passed.
    pub failure: Option<CheckFailure>,
}

impl CheckOutcome {
    /// Whether the check passed.
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

/// A check that was not run, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SkippedCheck {
    /// The check.
    pub check: Check,
    /// Why it was not run.
    pub reason: String,
}

/// The outcome of a conformance run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ConformanceReport {
    /// The mode the manager was checked as.
    pub mode: ManagerMode,
    /// One entry per check that ran.
    pub outcomes: Vec<CheckOutcome>,
    /// Checks that were not run, with the reason.
    pub skipped: Vec<SkippedCheck>,
}

impl ConformanceReport {
    /// Whether every check that ran passed (and at least one ran).
    pub fn passed(&self) -> bool {
        !self.outcomes.is_empty() && self.outcomes.iter().all(CheckOutcome::passed)
    }

    /// Number of checks that passed.
    pub fn checks_passed(&self) -> usize {
        self.outcomes.iter().filter(|o| o.passed()).count()
    }

    /// Number of checks that ran.
    pub fn checks_run(&self) -> usize {
        self.outcomes.len()
    }

    /// The failures, in check order.
    pub fn failures(&self) -> Vec<&CheckFailure> {
        self.outcomes
            .iter()
            .filter_map(|o| o.failure.as_ref())
            .collect()
    }

    /// The outcome of `check`, if it ran.
    pub fn outcome(&self, check: Check) -> Option<&CheckOutcome> {
        self.outcomes.iter().find(|o| o.check == check)
    }
}

impl fmt::Display for ConformanceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: Vec<[String; 2]> = self
            .outcomes
            .iter()
            .map(|o| {
                [
                    o.check.name().to_owned(),
                    if o.passed() { "pass" } else { "FAIL" }.to_owned(),
                ]
            })
            .chain(
                self.skipped
                    .iter()
                    .map(|s| [s.check.name().to_owned(), format!("skipped: {}", s.reason)]),
            )
            .collect();
        writeln!(
            f,
            "conformance ({}): {}/{} checks passed",
            self.mode,
            self.checks_passed(),
            self.checks_run()
        )?;
        crate::table::write_table(f, &["CHECK", "RESULT"], &rows)?;
        for failure in self.failures() {
            writeln!(f, "{failure}")?;
        }
        Ok(())
    }
}

/// Synthetic identities for one probe run: a user the manager works for, a
/// second user, and a counter for connection, thread and message ids. All
/// start with [`PROBE_PREFIX`] and carry a suffix unique to this run.
#[derive(Debug)]
pub struct ProbeScope {
    suffix: String,
    owner: UserId,
    other: UserId,
    counter: AtomicU64,
}

impl ProbeScope {
    /// A scope with fresh ids.
    pub fn new() -> Self {
        static RUNS: AtomicU64 = AtomicU64::new(1);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let suffix = format!("{:x}{:x}_{run}", std::process::id(), nanos);
        let user = |role: &str| synthetic_user(&format!("{PROBE_PREFIX}{role}_{suffix}"));
        ProbeScope {
            owner: user("owner"),
            other: user("other"),
            suffix,
            counter: AtomicU64::new(1),
        }
    }

    /// The user the probed manager works for (an isolated manager is built
    /// for it).
    pub fn owner(&self) -> &UserId {
        &self.owner
    }

    /// Another user, whom an isolated manager must refuse.
    pub fn other(&self) -> &UserId {
        &self.other
    }

    /// The synthetic context an isolated manager is built with.
    pub fn context(&self) -> UserContext {
        UserContext::new(self.owner.clone())
            .with_request_id(format!("{PROBE_PREFIX}{}", self.suffix))
    }

    fn next(&self, kind: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{PROBE_PREFIX}{kind}_{}_{n}", self.suffix)
    }

    fn connection_id(&self) -> ConnectionId {
        ConnectionId::new(self.next("conn")).unwrap_or_else(|_| ConnectionId::generate())
    }

    fn thread_id(&self) -> ThreadId {
        // The generated id is short ASCII, always valid; the fallback cannot
        // be reached but keeps library code free of panics.
        ThreadId::new(self.next("thread")).unwrap_or_else(|_| fallback_thread())
    }

    fn user_id(&self) -> UserId {
        synthetic_user(&self.next("user"))
    }
}

impl Default for ProbeScope {
    fn default() -> Self {
        Self::new()
    }
}

fn synthetic_user(id: &str) -> UserId {
    UserId::new(id).unwrap_or_else(|_| fallback_user())
}

fn fallback_user() -> UserId {
    UserId::from_constant("__wsm_probe_user")
}

fn fallback_thread() -> ThreadId {
    ThreadId::from_constant("__wsm_probe_thread")
}

/// How long one check may take by default before it fails as hung.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest per-user connection cap the kit probes as configured: a
/// larger one is lowered to this for the instance [`Conformance::run`]
/// builds for [`Check::ConnectionCapEnforced`], so the probe stays small.
pub const PROBED_CONNECTION_CAP: usize = 64;

fn timed_out(limit: Duration, in_flight: Option<&'static str>) -> CheckFailure {
    CheckFailure::new(
        "",
        in_flight.unwrap_or("(an async method)"),
        format!("the check to finish within {limit:?}"),
        match in_flight {
            Some(method) => format!("{method} never returned"),
            None => "an async method never returned".to_owned(),
        },
        "never hold a lock across `.await`, and never wait inside a contract method: a send must `try_send` and apply the slow-consumer policy to a full socket, not wait for room or for a lock another call holds",
    )
}

/// How the kit builds the instances it probes and how long it waits: the
/// settings [`Conformance`] and startup validation
/// ([`StartupOptions`](crate::startup::StartupOptions)) share. Set through their
/// builder methods, or as a whole with [`Conformance::options`] and
/// `StartupOptions::conformance`.
///
/// ```
/// use std::time::Duration;
/// use websocket_manager::conformance::{Conformance, ConformanceOptions};
/// use websocket_manager::startup::{ManagerMode, StartupOptions};
/// let mut options = ConformanceOptions::default();
/// options.delivery_wait = Duration::from_millis(50);
/// let kit = Conformance::new(ManagerMode::Unified).options(options.clone());
/// let startup = StartupOptions::strict().conformance(options);
/// assert_eq!(kit.current_options().delivery_wait, startup.conformance_options().delivery_wait);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConformanceOptions {
    /// The configuration handed to the constructor.
    pub config: ManagerConfig,
    /// The application resources handed to the constructor.
    pub extensions: Extensions,
    /// How long to wait for an expected frame (see
    /// [`Conformance::delivery_wait`]).
    pub delivery_wait: Duration,
    /// How long one check may take before it fails as hung; `None` waits
    /// forever (see [`Conformance::check_timeout`]).
    pub check_timeout: Option<Duration>,
}

impl Default for ConformanceOptions {
    /// Default configuration, no extensions, no delivery wait,
    /// [`DEFAULT_CHECK_TIMEOUT`].
    fn default() -> Self {
        ConformanceOptions {
            config: ManagerConfig::default(),
            extensions: Extensions::new(),
            delivery_wait: Duration::ZERO,
            check_timeout: Some(DEFAULT_CHECK_TIMEOUT),
        }
    }
}

/// Runs the kit against a manager constructor or a live instance.
///
/// ```
/// use std::time::Duration;
/// use websocket_manager::conformance::{Check, Conformance};
/// use websocket_manager::startup::ManagerMode;
/// let kit = Conformance::new(ManagerMode::Isolated)
///     .delivery_wait(Duration::from_millis(50)) // for managers that fan out on another task
///     .only([Check::IsolationRefusesConnections, Check::IsolationRefusesSends]);
/// assert_eq!(kit.checks(), [Check::IsolationRefusesConnections, Check::IsolationRefusesSends]);
/// ```
#[derive(Debug, Clone)]
pub struct Conformance {
    mode: ManagerMode,
    options: ConformanceOptions,
    checks: Vec<Check>,
}

impl Conformance {
    /// Every check that applies to `mode`, default configuration, no
    /// extensions, no delivery wait.
    pub fn new(mode: ManagerMode) -> Self {
        Conformance {
            mode,
            options: ConformanceOptions::default(),
            checks: Check::ALL
                .into_iter()
                .filter(|c| c.applies_to(mode))
                .collect(),
        }
    }

    /// The configuration handed to the constructor (for
    /// [`Check::ConnectionCapEnforced`], with the per-user cap lowered to
    /// [`PROBED_CONNECTION_CAP`] when it is larger).
    pub fn config(mut self, config: ManagerConfig) -> Self {
        self.options.config = config;
        self
    }

    /// The application resources handed to the constructor.
    pub fn extensions(mut self, extensions: Extensions) -> Self {
        self.options.extensions = extensions;
        self
    }

    /// How long to wait for an expected frame. The default, zero, suits
    /// managers that queue frames before `send_*` returns (the reference
    /// managers); a manager that delivers from another task needs a wait.
    pub fn delivery_wait(mut self, wait: Duration) -> Self {
        self.options.delivery_wait = wait;
        self
    }

    /// How long one check may take before it fails as hung (default
    /// [`DEFAULT_CHECK_TIMEOUT`]); `None` waits forever. A limit needs the
    /// tokio time driver, which `#[tokio::main]` and `#[tokio::test]` enable.
    pub fn check_timeout(mut self, limit: Option<Duration>) -> Self {
        self.options.check_timeout = limit;
        self
    }

    /// Replaces every setting of [`ConformanceOptions`] at once.
    pub fn options(mut self, options: ConformanceOptions) -> Self {
        self.options = options;
        self
    }

    /// The settings in effect.
    pub fn current_options(&self) -> &ConformanceOptions {
        &self.options
    }

    /// Runs only these checks (those that do not apply to the mode are
    /// dropped).
    pub fn only(mut self, checks: impl IntoIterator<Item = Check>) -> Self {
        let mode = self.mode;
        let wanted: BTreeSet<Check> = checks.into_iter().filter(|c| c.applies_to(mode)).collect();
        self.checks = wanted.into_iter().collect();
        self
    }

    /// The checks that will run, in order.
    pub fn checks(&self) -> &[Check] {
        &self.checks
    }

    /// The mode checked.
    pub fn mode(&self) -> ManagerMode {
        self.mode
    }

    /// Runs every selected check on a fresh instance from `constructor`,
    /// built with a synthetic [`UserContext`] when the mode is isolated (none
    /// when unified, as the factory does).
    pub async fn run<F>(&self, constructor: F) -> ConformanceReport
    where
        F: Fn(&BuildContext<'_>) -> Result<DynManager, BuildError>,
    {
        let mut outcomes = Vec::with_capacity(self.checks.len());
        let small_cap = self.with_probed_cap();
        for &check in &self.checks {
            let kit = match (check, &small_cap) {
                (Check::ConnectionCapEnforced, Some(kit)) => kit,
                _ => self,
            };
            let scope = ProbeScope::new();
            let context = scope.context();
            let mut build =
                BuildContext::new(&kit.options.config, &kit.options.extensions).for_probe();
            if self.mode == ManagerMode::Isolated {
                build = build.with_user_context(&context);
            }
            let failure = match constructor(&build) {
                Ok(manager) => kit.run_check(check, &manager, &scope).await,
                Err(error) => Some(CheckFailure::new(
                    check.name(),
                    "constructor",
                    "a fresh instance for the probe",
                    format!("Err({error})"),
                    "make the constructor succeed with the default configuration and a synthetic user context",
                )),
            };
            outcomes.push(CheckOutcome { check, failure });
        }
        ConformanceReport {
            mode: self.mode,
            outcomes,
            skipped: Vec::new(),
        }
    }

    /// This kit with the per-user connection cap lowered to
    /// [`PROBED_CONNECTION_CAP`], when the configured one is larger: the cap
    /// probe fills a user up to the cap, and a cap of thousands would make it
    /// slow without proving more. `None` when the configured cap is small.
    fn with_probed_cap(&self) -> Option<Conformance> {
        let config = &self.options.config;
        if config.max_connections_per_user() <= PROBED_CONNECTION_CAP {
            return None;
        }
        // Every setting copied, only the cap lowered; a copy that does not
        // validate (it cannot: a lower cap is always valid) keeps the
        // configured cap.
        let lowered = ManagerConfig::builder()
            .queue_capacity(config.queue_capacity())
            .queue_max_bytes(config.queue_max_bytes())
            .max_connections_per_user(PROBED_CONNECTION_CAP)
            .slow_consumer_policy(config.slow_consumer_policy())
            .history_capacity(config.history_capacity())
            .history_max_bytes(config.history_max_bytes())
            .history_max_age(config.history_max_age())
            .max_history_users(config.max_history_users())
            .build()
            .ok()?;
        Some(self.clone().config(lowered))
    }

    /// Runs every selected check on fresh instances of `T`, each built by
    /// its [`ConstructManager::construct`](crate::startup::ConstructManager::construct)
    /// as [`run`](Self::run) builds them.
    ///
    /// ```
    /// use websocket_manager::conformance::Conformance;
    /// use websocket_manager::{managers::UnifiedWebSocketManager, startup::ManagerMode};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let report = Conformance::new(ManagerMode::Unified)
    ///     .run_type::<UnifiedWebSocketManager>()
    ///     .await;
    /// assert!(report.passed(), "{report}");
    /// # });
    /// ```
    pub async fn run_type<T: crate::startup::ConstructManager>(&self) -> ConformanceReport {
        self.run(crate::registry::construct::<T>).await
    }

    /// Runs only the live-safe checks ([`Check::is_live_safe`]) on a manager
    /// that may be serving real users, and lists the others as skipped.
    pub async fn run_live(&self, manager: &DynManager) -> ConformanceReport {
        let mut outcomes = Vec::new();
        let mut skipped = Vec::new();
        for &check in &self.checks {
            if check.is_live_safe() {
                let scope = ProbeScope::new();
                let failure = self.run_check(check, manager, &scope).await;
                outcomes.push(CheckOutcome { check, failure });
            } else {
                skipped.push(SkippedCheck {
                    check,
                    reason: "adds connections and sends frames; run it on a fresh instance (startup validation)".to_owned(),
                });
            }
        }
        ConformanceReport {
            mode: self.mode,
            outcomes,
            skipped,
        }
    }

    /// Runs one check on `manager` with the identities of `scope`, and
    /// removes every probe connection it added. `None` when it passed.
    ///
    /// For an isolated manager, the manager must have been built for
    /// `scope.owner()`, except for the live-safe checks, which never use the
    /// owner.
    pub async fn run_check(
        &self,
        check: Check,
        manager: &DynManager,
        scope: &ProbeScope,
    ) -> Option<CheckFailure> {
        let mut probe = Probe::new(manager, scope, self.mode, self.options.delivery_wait);
        let body = async {
            match check {
                Check::AddThenLookupBySocket => checks::add_then_lookup_by_socket(&mut probe).await,
                Check::DuplicateConnectionIdRefused => {
                    checks::duplicate_connection_id_refused(&mut probe).await
                }
                Check::DuplicateSocketRefused => checks::duplicate_socket_refused(&mut probe).await,
                Check::ConnectionCapEnforced => {
                    let cap = self.options.config.max_connections_per_user();
                    checks::connection_cap_enforced(&mut probe, cap).await
                }
                Check::ThreadRouting => checks::thread_routing(&mut probe).await,
                Check::AddIndexesTheThread => checks::add_indexes_the_thread(&mut probe).await,
                Check::UnknownIds => checks::unknown_ids(&mut probe).await,
                Check::RemovalClearsLookups => checks::removal_clears_lookups(&mut probe).await,
                Check::RemovalClosesTheSocket => {
                    checks::removal_closes_the_socket(&mut probe).await
                }
                Check::DeliveryCounts => checks::delivery_counts(&mut probe).await,
                Check::FullSocketDoesNotBlockSends => {
                    checks::full_socket_does_not_block_sends(&mut probe).await
                }
                Check::FullSocketNeverLosesACriticalEvent => {
                    checks::full_socket_never_loses_a_critical_event(&mut probe).await
                }
                Check::HealthCounts => checks::health_counts(&mut probe).await,
                Check::IsolationRefusesConnections => {
                    checks::isolation_refuses_connections(&mut probe).await
                }
                Check::IsolationRefusesSends => checks::isolation_refuses_sends(&mut probe).await,
                Check::QueriesAreScopedToTheUser => {
                    checks::queries_are_scoped_to_the_user(&mut probe).await
                }
                Check::OfflineCriticalEventIsReplayed => {
                    checks::offline_critical_event_is_replayed(&mut probe).await
                }
                Check::CriticalEnvelope => checks::critical_envelope(&mut probe).await,
                Check::ResumeFromOffset => checks::resume_from_offset(&mut probe).await,
            }
        };
        let result = match self.options.check_timeout {
            // A hung async method (a lock held across `.await`, the original
            // system's deadlock) must fail the check, not hang startup.
            Some(limit) => match tokio::time::timeout(limit, body).await {
                Ok(result) => result,
                Err(_) => Err(timed_out(limit, probe.in_flight)),
            },
            None => body.await,
        };
        match self.options.check_timeout {
            Some(limit) => {
                // Cleanup may hang on the same lock; give up on it then.
                let _ = tokio::time::timeout(limit, probe.cleanup()).await;
            }
            None => probe.cleanup().await,
        }
        result.err().map(|failure| CheckFailure {
            check: check.name().to_owned(),
            ..failure
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fallback_probe_ids_are_valid_probe_ids() {
        for id in [fallback_user().as_str(), fallback_thread().as_str()] {
            assert!(UserId::new(id).is_ok() && ThreadId::new(id).is_ok(), "{id}");
            assert!(is_probe_id(id), "{id}");
        }
    }
}
