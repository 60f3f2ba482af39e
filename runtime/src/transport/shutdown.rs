//! The live-connection set of a service, and graceful shutdown:
//! [`ShutdownReport`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;

use crate::connection::{CloseReason, SocketId, WebSocketHandle};
use crate::dyn_manager::DynManager;
use crate::ids::{ConnectionId, UserId};
use crate::protocol::WebSocketManager;

/// One connection the service is driving.
#[derive(Debug, Clone)]
pub(crate) struct LiveConnection {
    pub connection_id: ConnectionId,
    pub user_id: UserId,
    pub socket: WebSocketHandle,
}

#[derive(Debug, Default)]
struct TrackerState {
    closed: bool,
    live: HashMap<SocketId, LiveConnection>,
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

    /// Adds a connection; `false` once shutdown has begun.
    pub fn register(&self, connection: LiveConnection) -> bool {
        let mut state = self.state();
        if state.closed {
            return false;
        }
        state.live.insert(connection.socket.id(), connection);
        true
    }

    pub fn unregister(&self, socket: SocketId) {
        let removed = self.state().live.remove(&socket).is_some();
        if removed {
            self.changed.notify_waiters();
        }
    }

    pub fn is_accepting(&self) -> bool {
        !self.state().closed
    }

    pub fn len(&self) -> usize {
        self.state().live.len()
    }

    /// Stops accepting, closes every connection with 1001, waits up to
    /// `drain` for their drivers to finish, removes whatever is left from the
    /// manager and says what happened.
    pub async fn shutdown(&self, manager: &DynManager, drain: Duration) -> ShutdownReport {
        let started = Instant::now();
        let snapshot: Vec<LiveConnection> = {
            let mut state = self.state();
            state.closed = true;
            state.live.values().cloned().collect()
        };
        tracing::info!(
            connections = snapshot.len(),
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
            if self.len() == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        let left: Vec<LiveConnection> = self.state().live.values().cloned().collect();
        for connection in &left {
            tracing::warn!(connection = %connection.connection_id, user = %connection.user_id,
                "shutdown: connection did not finish within the drain time; removing it");
            manager.remove_connection(&connection.connection_id).await;
        }
        let mut left: Vec<LeftConnection> = left
            .into_iter()
            .map(|c| LeftConnection {
                connection_id: c.connection_id,
                user_id: c.user_id,
            })
            .collect();
        left.sort_by(|a, b| a.connection_id.cmp(&b.connection_id));
        ShutdownReport {
            connections_at_start: snapshot.len(),
            closed_within_drain: snapshot.len().saturating_sub(left.len()),
            left,
            drain_limit_ms: millis(drain),
            elapsed_ms: millis(started.elapsed()),
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
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
///     left: vec![],
///     drain_limit_ms: 5000,
///     elapsed_ms: 12,
/// };
/// assert!(report.is_clean());
/// assert!(report.to_string().starts_with("shutdown: 2 of 2 connection(s) closed with 1001"));
/// assert_eq!(serde_json::to_value(&report).unwrap()["closed_within_drain"], 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShutdownReport {
    /// Connections open when shutdown began.
    pub connections_at_start: usize,
    /// Of those, how many finished their close within the drain time.
    pub closed_within_drain: usize,
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
        Ok(())
    }
}
