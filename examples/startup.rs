//! What a server runs before it accepts traffic: strict startup validation of
//! every registered WebSocket manager, printed as the table an operator reads
//! in the logs (or as JSON for CI).
//!
//! ```text
//! cargo run --example startup                     # table; exit code 1 on any failure
//! cargo run --example startup -- --json           # the same report as JSON
//! cargo run --example startup -- --include-broken # also validate a broken manager
//! ```
//!
//! This binary defines two managers of its own, both registered by
//! `#[websocket_manager]` at compile time like any other:
//!
//! * `audited`: the reference unified manager wrapped to count what it sends,
//!   the way an application adds its own behaviour to a manager;
//! * `broken-lookup`: the same, with the bug that crashed production in the
//!   original system: `get_connection_id_by_websocket` always returns `None`.
//!
//! Registration cannot be undone at run time, so `broken-lookup` is always in
//! the registry. By default the validation excludes it by name
//! (`StartupOptions::exclude`), and the report lists it as excluded, so it
//! never vanishes silently; `--include-broken` validates it too, and the
//! report shows the failure with the fix.
//!
//! Violations are also `tracing` error events (stderr); the table or JSON is
//! on stdout.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use example_managers as _; // linked on purpose: its managers are validated too
use websocket_manager::conformance::is_probe_id;
use websocket_manager::{
    ConnectionHealth, ConnectionId, Delivery, ManagerError, ThreadId, UserId, WebSocketConnection,
    WebSocketHandle, WebSocketManager,
    managers::UnifiedWebSocketManager,
    serde_json,
    startup::{
        BuildContext, BuildError, ConstructManager, StartupOptions, StartupReport,
        validate_on_startup,
    },
    websocket_manager,
};

/// The reference unified manager, plus a count of every message it delivered
/// to real users: startup validation's probe users are not counted.
struct AuditedManager {
    inner: UnifiedWebSocketManager,
    delivered: AtomicU64,
    /// `false` on an instance built only for the probes.
    audits: bool,
}

impl ConstructManager for AuditedManager {
    fn construct(context: &BuildContext<'_>) -> Result<Self, BuildError> {
        Ok(AuditedManager {
            inner: UnifiedWebSocketManager::construct(context)?,
            delivered: AtomicU64::new(0),
            audits: !context.for_probe,
        })
    }
}

impl AuditedManager {
    /// Counts what reached `target` (a user or thread id), unless a probe
    /// sent it: probe ids also reach live instances (`run_live`).
    fn audit(&self, target: &str, result: &Result<Delivery, ManagerError>) {
        if !self.audits || is_probe_id(target) {
            return;
        }
        if let Ok(delivery) = result {
            let recipients = u64::try_from(delivery.recipients()).unwrap_or(u64::MAX);
            self.delivered.fetch_add(recipients, Ordering::Relaxed);
        }
    }
}

#[websocket_manager(name = "audited")]
impl WebSocketManager for AuditedManager {
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
        let result = self.inner.send_to_user(user_id, message).await;
        self.audit(user_id.as_str(), &result);
        result
    }
    async fn emit_critical_event(
        &self,
        user_id: &UserId,
        event_type: &str,
        data: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        let result = self
            .inner
            .emit_critical_event(user_id, event_type, data)
            .await;
        self.audit(user_id.as_str(), &result);
        result
    }
    fn get_connection_health(&self, user_id: &UserId) -> ConnectionHealth {
        self.inner.get_connection_health(user_id)
    }
    async fn send_to_thread(
        &self,
        thread_id: &ThreadId,
        message: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        let result = self.inner.send_to_thread(thread_id, message).await;
        self.audit(thread_id.as_str(), &result);
        result
    }
}

/// The audited manager with the original production bug: it cannot find a
/// connection by its socket.
struct BrokenLookupManager(AuditedManager);

impl ConstructManager for BrokenLookupManager {
    fn construct(context: &BuildContext<'_>) -> Result<Self, BuildError> {
        AuditedManager::construct(context).map(BrokenLookupManager)
    }
}

/// Registered under this name; excluded unless `--include-broken`.
const BROKEN: &str = "broken-lookup";

#[websocket_manager(name = "broken-lookup")]
impl WebSocketManager for BrokenLookupManager {
    async fn add_connection(&self, connection: WebSocketConnection) -> Result<(), ManagerError> {
        self.0.add_connection(connection).await
    }
    async fn remove_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection> {
        self.0.remove_connection(connection_id).await
    }
    fn get_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection> {
        self.0.get_connection(connection_id)
    }
    fn get_user_connections(&self, user_id: &UserId) -> HashSet<ConnectionId> {
        self.0.get_user_connections(user_id)
    }
    fn is_connection_active(&self, user_id: &UserId) -> bool {
        self.0.is_connection_active(user_id)
    }
    fn get_connection_id_by_websocket(&self, _websocket: &WebSocketHandle) -> Option<ConnectionId> {
        None // the bug
    }
    fn update_connection_thread(&self, connection_id: &ConnectionId, thread_id: ThreadId) -> bool {
        self.0.update_connection_thread(connection_id, thread_id)
    }
    async fn send_to_user(
        &self,
        user_id: &UserId,
        message: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        self.0.send_to_user(user_id, message).await
    }
    async fn emit_critical_event(
        &self,
        user_id: &UserId,
        event_type: &str,
        data: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        self.0.emit_critical_event(user_id, event_type, data).await
    }
    fn get_connection_health(&self, user_id: &UserId) -> ConnectionHealth {
        self.0.get_connection_health(user_id)
    }
    async fn send_to_thread(
        &self,
        thread_id: &ThreadId,
        message: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        self.0.send_to_thread(thread_id, message).await
    }
}

/// The command line: `--json`, `--include-broken`.
struct Args {
    json: bool,
    include_broken: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        json: false,
        include_broken: false,
    };
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--json" => args.json = true,
            "--include-broken" => args.include_broken = true,
            other => {
                return Err(format!(
                    "unknown argument `{other}`; usage: startup [--json] [--include-broken]"
                ));
            }
        }
    }
    Ok(args)
}

fn print(report: &StartupReport, json: bool) -> Result<(), serde_json::Error> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let mut options = StartupOptions::strict()
        .expect(["unified", "isolated", "audited"])
        .on_violation(|violation| {
            // Where a pager or a metrics counter would go.
            eprintln!("ALERT {} {}", violation.manager, violation.kind);
        });
    if !args.include_broken {
        options = options.exclude([BROKEN]);
    }
    let (report, passed) = match validate_on_startup(&options).await {
        Ok(report) => (report, true),
        Err(error) => (error.into_report(), false),
    };
    if let Err(error) = print(&report, args.json) {
        eprintln!("could not print the report: {error}");
        return ExitCode::FAILURE;
    }
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
