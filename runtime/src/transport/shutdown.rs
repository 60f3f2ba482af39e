//! The live-connection set of a service, the [`Registered`] guard that
//! releases a connection from it exactly once (on the normal path, or in
//! `Drop` when the serving future is aborted), and graceful shutdown:
//! [`ShutdownReport`].

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;

use super::record::ConnectionRecord;
use crate::close::CloseReason;
use crate::connection::SocketId;
use crate::dyn_manager::DynManager;
use crate::ids::{ConnectionId, UserId};
use crate::protocol::WebSocketManager;

#[derive(Debug, Default)]
struct TrackerState {
    /// Shutdown began: nothing registers any more.
    closed: bool,
    /// No new upgrade is admitted (set before `closed`, so a readiness
    /// route can say so while connections still run).
    draining: bool,
    live: HashMap<SocketId, Arc<ConnectionRecord>>,
    /// Upgrades admitted (their `101` sent or about to be) and not yet
    /// registered: counted by shutdown, which waits for them too.
    pending: usize,
    /// Admitted upgrades that reached registration after shutdown began,
    /// and were closed with 1001 at once.
    closed_late: usize,
}

/// Why [`ConnectionTracker::begin_upgrade`] admits no new upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpgradeRefused {
    Draining,
    AtCapacity,
}

/// An admitted upgrade that is not registered yet. Shutdown counts it and
/// waits for it; it is settled when the connection registers (or is
/// closed because shutdown began), or when dropped (the upgrade never
/// completed).
#[derive(Debug)]
pub(crate) struct PendingUpgrade {
    tracker: Arc<ConnectionTracker>,
    settled: AtomicBool,
}

impl PendingUpgrade {
    /// Settles this upgrade under the tracker's lock; `false` if it was
    /// already.
    fn settle(&self, state: &mut TrackerState) -> bool {
        let first = !self.settled.swap(true, Ordering::SeqCst);
        if first {
            state.pending = state.pending.saturating_sub(1);
        }
        first
    }
}

impl Drop for PendingUpgrade {
    fn drop(&mut self) {
        let settled = {
            let mut state = self.tracker.state();
            self.settle(&mut state)
        };
        if settled {
            self.tracker.changed.notify_waiters();
        }
    }
}

/// The [`PendingUpgrade`] an [`Admission`](super::Admission) carries, if
/// it came from [`admit`](super::WebSocketService::admit). Equal to any
/// other ticket: it is bookkeeping, not part of what was admitted.
#[derive(Debug, Clone, Default)]
pub(crate) struct UpgradeTicket(pub(crate) Option<Arc<PendingUpgrade>>);

impl PartialEq for UpgradeTicket {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Every connection a service drives, so that shutdown can close them all.
#[derive(Debug, Default)]
pub(crate) struct ConnectionTracker {
    state: Mutex<TrackerState>,
    changed: Notify,
}

impl ConnectionTracker {
    fn state(&self) -> MutexGuard<'_, TrackerState> {
        // A panic elsewhere never leaves the map half-updated: every
        // critical section is a single insert or remove.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits one upgrade: counted (and waited for by shutdown) from now
    /// until it registers or is dropped. Refused while draining, or when
    /// `max_connections` connections are live or upgrading.
    pub fn begin_upgrade(
        self: &Arc<Self>,
        max_connections: Option<usize>,
    ) -> Result<PendingUpgrade, UpgradeRefused> {
        let mut state = self.state();
        if state.closed || state.draining {
            return Err(UpgradeRefused::Draining);
        }
        if max_connections.is_some_and(|max| state.live.len() + state.pending >= max) {
            return Err(UpgradeRefused::AtCapacity);
        }
        state.pending += 1;
        Ok(PendingUpgrade {
            tracker: Arc::clone(self),
            settled: AtomicBool::new(false),
        })
    }

    /// Adds a connection, settling its upgrade in the same step (so that
    /// shutdown never counts it twice nor misses it); `false` once shutdown
    /// has begun: the caller closes it with 1001 and then drops the ticket,
    /// and the report counts it as closed.
    pub fn register(&self, connection: Arc<ConnectionRecord>, ticket: &UpgradeTicket) -> bool {
        let mut state = self.state();
        if state.closed {
            state.closed_late += 1;
            return false;
        }
        state.live.insert(connection.socket.id(), connection);
        if let Some(pending) = &ticket.0 {
            pending.settle(&mut state);
        }
        true
    }

    /// Admits no new upgrade from now on; connections keep running.
    pub fn stop_admitting(&self) {
        self.state().draining = true;
    }

    /// Connections live or upgrading.
    pub fn load(&self) -> usize {
        let state = self.state();
        state.live.len() + state.pending
    }

    pub fn unregister(&self, socket: SocketId) {
        let removed = self.state().live.remove(&socket).is_some();
        if removed {
            self.changed.notify_waiters();
        }
    }

    pub fn is_accepting(&self) -> bool {
        let state = self.state();
        !state.closed && !state.draining
    }

    pub fn len(&self) -> usize {
        self.state().live.len()
    }

    /// Stops accepting, closes every connection with 1001, waits up to
    /// `drain` for their drivers to finish, removes whatever is left from the
    /// manager and says what happened.
    pub async fn shutdown(&self, manager: &DynManager, drain: Duration) -> ShutdownReport {
        let started = Instant::now();
        let (snapshot, upgrading): (Vec<Arc<ConnectionRecord>>, usize) = {
            let mut state = self.state();
            state.closed = true;
            state.draining = true;
            state.closed_late = 0;
            (state.live.values().cloned().collect(), state.pending)
        };
        tracing::info!(
            connections = snapshot.len(),
            upgrading,
            ?drain,
            "shutdown: closing every connection with 1001"
        );
        for connection in &snapshot {
            connection.socket.close(CloseReason::going_away());
        }
        let deadline = tokio::time::Instant::now() + drain;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Register interest before looking, so no removal is missed.
            notified.as_mut().enable();
            let idle = {
                let state = self.state();
                state.live.is_empty() && state.pending == 0
            };
            if idle {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        let (left, closed_late): (Vec<Arc<ConnectionRecord>>, usize) = {
            let state = self.state();
            (state.live.values().cloned().collect(), state.closed_late)
        };
        for connection in &left {
            tracing::warn!(connection = %connection.connection_id, user = %connection.user_id,
                "shutdown: connection did not finish within the drain time; removing it");
            manager.remove_connection(&connection.connection_id).await;
        }
        let mut left: Vec<LeftConnection> = left
            .into_iter()
            .map(|c| LeftConnection {
                connection_id: c.connection_id.clone(),
                user_id: c.user_id.clone(),
            })
            .collect();
        left.sort_by(|a, b| a.connection_id.cmp(&b.connection_id));
        ShutdownReport {
            connections_at_start: snapshot.len() + upgrading,
            closed_within_drain: snapshot.len().saturating_sub(left.len()) + closed_late,
            upgrades_not_served: upgrading.saturating_sub(closed_late),
            left,
            drain_limit_ms: millis(drain),
            elapsed_ms: millis(started.elapsed()),
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Releases a connection from the service's tracker and, once
/// [`offered`](Self::offered_to_manager), in the manager: released from
/// both, exactly once.
pub(crate) struct Registered {
    record: Arc<ConnectionRecord>,
    manager: DynManager,
    tracker: Arc<ConnectionTracker>,
    in_manager: bool,
    released: bool,
}

impl Registered {
    /// Takes charge of a record the tracker has just registered.
    pub fn tracked(
        record: Arc<ConnectionRecord>,
        manager: DynManager,
        tracker: Arc<ConnectionTracker>,
    ) -> Self {
        Registered {
            record,
            manager,
            tracker,
            in_manager: false,
            released: false,
        }
    }

    /// The connection goes to `add_connection`: releasing removes it from
    /// the manager too (a no-op for one the manager refused), also when the
    /// future is dropped while the manager registers it.
    pub fn offered_to_manager(&mut self) {
        self.in_manager = true;
    }

    /// Removes the connection from the manager (if it was added), then from
    /// the tracker, so that a finished shutdown implies clean manager
    /// indexes.
    pub async fn release(mut self) {
        self.released = true;
        if self.in_manager {
            self.manager
                .remove_connection(&self.record.connection_id)
                .await;
        }
        self.tracker.unregister(self.record.socket.id());
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // The writer task, if still running, stops on this close.
        self.record.socket.close(CloseReason::going_away());
        let tracker = Arc::clone(&self.tracker);
        let record = Arc::clone(&self.record);
        if !self.in_manager {
            tracker.unregister(record.socket.id());
            return;
        }
        tracing::warn!(connection = %record.connection_id, user = %record.user_id,
            "connection task dropped early; removing it");
        let manager = self.manager.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    manager.remove_connection(&record.connection_id).await;
                    tracker.unregister(record.socket.id());
                });
            }
            // No runtime left (process exit): nothing will read the manager.
            Err(_) => tracker.unregister(record.socket.id()),
        }
    }
}

/// A connection still running when the drain time ran out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeftConnection {
    /// The connection.
    pub connection_id: ConnectionId,
    /// Its user.
    pub user_id: UserId,
}

/// What a graceful shutdown did.
///
/// ```
/// use websocket_manager::transport::ShutdownReport;
/// let report = ShutdownReport {
///     connections_at_start: 2,
///     closed_within_drain: 2,
///     upgrades_not_served: 0,
///     left: vec![],
///     drain_limit_ms: 5000,
///     elapsed_ms: 12,
/// };
/// assert!(report.is_clean());
/// assert!(report.to_string().starts_with("shutdown: 2 of 2 connection(s) closed with 1001"));
/// assert!(!report.to_string().ends_with('\n'));
/// assert_eq!(serde_json::to_value(&report).unwrap()["closed_within_drain"], 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShutdownReport {
    /// Connections open when shutdown began: registered ones, and those
    /// admitted at the upgrade (`101` sent or about to be) but not yet
    /// registered.
    pub connections_at_start: usize,
    /// Of those, how many finished their close within the drain time
    /// (an admitted upgrade that registers after shutdown began is closed
    /// with 1001 at once, and counted here).
    pub closed_within_drain: usize,
    /// Upgrades admitted before shutdown that never became a connection
    /// within the drain time (the client went away during the handshake,
    /// or it had not completed yet).
    pub upgrades_not_served: usize,
    /// Those that did not (they were removed from the manager anyway).
    pub left: Vec<LeftConnection>,
    /// The drain time allowed.
    pub drain_limit_ms: u64,
    /// How long the shutdown took.
    pub elapsed_ms: u64,
}

impl ShutdownReport {
    /// Whether every connection closed within the drain time.
    pub fn is_clean(&self) -> bool {
        self.left.is_empty()
    }
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::table::lines(f, |f| self.render(f))
    }
}

impl ShutdownReport {
    fn render(&self, f: &mut String) -> fmt::Result {
        use fmt::Write;
        writeln!(
            f,
            "shutdown: {} of {} connection(s) closed with 1001 in {} ms (drain limit {} ms); {} left",
            self.closed_within_drain,
            self.connections_at_start,
            self.elapsed_ms,
            self.drain_limit_ms,
            self.left.len()
        )?;
        for left in &self.left {
            writeln!(f, "  left: {} (user {})", left.connection_id, left.user_id)?;
        }
        if self.upgrades_not_served > 0 {
            writeln!(
                f,
                "  {} admitted upgrade(s) never became a connection",
                self.upgrades_not_served
            )?;
        }
        Ok(())
    }
}
