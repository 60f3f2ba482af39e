//! The link to Redis fails loudly: [`LinkState`], and the watchdog that
//! replaces a silent connection and fences a node cut off for too long.
//!
//! # Why a watchdog
//!
//! redis-rs reconnects after an I/O error, not after a timeout, and a
//! black-holed TCP connection (an expired NAT entry, a firewall that
//! dropped its state, a failover that moved the address) gives no I/O
//! error for many minutes: commands time out, pushes stop, and the node
//! would wait forever on a dead socket. As Centrifuge does for its
//! subscriber connections (centrifuge PR 594), the watchdog probes a
//! connection that has been silent for `probe_interval` and replaces it
//! with a fresh one when the probe is not answered within `probe_timeout`.
//!
//! On a Redis Cluster the node holds one connection per master, and a
//! message from one master says nothing of the others: every
//! `probe_interval`, busy or not, the watchdog asks `CLUSTER SLOTS` of the
//! first master to answer and sends a `PING` to each master that serves a
//! slot of this node's keys or channels, routed by that slot on the node's
//! own connection (so a connection the node still routes to a master that
//! was failed over is probed too). One master unanswered within
//! `probe_timeout` counts as a probe timeout and the whole connection is
//! replaced, as on one server (the warning names the masters); the node
//! then resubscribes, each channel where its slot is now, and audits.
//!
//! # Why a fence
//!
//! The other nodes forget this one `node_ttl` after its last heartbeat.
//! A node that cannot renew its heartbeat for `fence_after` (below
//! `node_ttl`) closes its connections with
//! [`close::RESUME`](crate::close::RESUME) so their clients resume
//! on a healthy node, and refuses new ones until Redis answers again: no
//! tab stays open and silent on a node the others have forgotten.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use crate::health::unix_millis;

use super::Shared;
use super::backplane::{LinkClock, MastersProbe};
use super::config::watchdog_period;

/// Where this node stands with the cluster's Redis, from
/// [`ClusterWebSocketManager::link_state`](super::ClusterWebSocketManager::link_state).
///
/// A transport can refuse upgrades before they happen (503 with
/// `Retry-After`) unless the state is [`Serving`](Self::Serving).
///
/// ```
/// use websocket_manager::managers::LinkState;
/// let state = LinkState::Fenced { since_ms: 1_700_000_000_000 };
/// assert_eq!(state.to_string(), "fenced (cut off from Redis) since 1700000000000 ms after the epoch");
/// assert!(!state.is_serving());
/// assert_eq!(serde_json::to_value(LinkState::Serving).unwrap()["state"], "serving");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum LinkState {
    /// Not yet subscribed and registered since the node started.
    Joining,
    /// Subscribed and registered: the node serves.
    Serving,
    /// The link was lost and the node is getting it back; connections are
    /// still open (they get what this node can give, and are closed with
    /// `close::RESUME` (1012) if they missed anything); new ones wait for the
    /// link, up to `ready_timeout`.
    Reconnecting {
        /// When the link was lost, in Unix milliseconds.
        since_ms: u64,
    },
    /// Cut off longer than `fence_after`: every local connection was
    /// closed with `close::RESUME` (1012) and new ones are refused until
    /// Redis answers again.
    Fenced {
        /// When the node fenced itself, in Unix milliseconds.
        since_ms: u64,
    },
    /// [`shutdown`](super::ClusterWebSocketManager::shutdown) was called.
    ShutDown,
}

impl LinkState {
    /// Whether the node serves (accepts connections without waiting).
    pub fn is_serving(&self) -> bool {
        matches!(self, LinkState::Serving)
    }
}

impl std::fmt::Display for LinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkState::Joining => f.write_str("joining the cluster"),
            LinkState::Serving => f.write_str("serving"),
            LinkState::Reconnecting { since_ms } => {
                write!(
                    f,
                    "reconnecting to Redis since {since_ms} ms after the epoch"
                )
            }
            LinkState::Fenced { since_ms } => write!(
                f,
                "fenced (cut off from Redis) since {since_ms} ms after the epoch"
            ),
            LinkState::ShutDown => f.write_str("shut down"),
        }
    }
}

/// The link's bookkeeping, in [`Shared`].
#[derive(Debug, Default)]
pub(super) struct Link {
    /// Set at the first join.
    joined: AtomicBool,
    /// When the link was lost (Unix ms; 0 while serving).
    lost_at_ms: AtomicU64,
    /// When the node fenced itself (Unix ms; 0: not fenced).
    fenced_at_ms: AtomicU64,
    /// When the last heartbeat that Redis acknowledged was sent, on the
    /// backplane's clock (0: never).
    heartbeat_sent: AtomicU64,
    /// Fresh connections made after a silent link.
    pub reconnects: AtomicU64,
    /// Probes unanswered within `probe_timeout`.
    pub probe_timeouts: AtomicU64,
    /// Times the node fenced itself.
    pub fenced: AtomicU64,
}

fn now_ms() -> u64 {
    unix_millis(SystemTime::now())
}

impl Shared {
    /// The link is down: not ready, since now (unless already).
    pub(super) fn link_lost(&self) {
        self.ready.send_replace(false);
        let _ =
            self.link
                .lost_at_ms
                .compare_exchange(0, now_ms(), Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Whether the node is joined and serving now. The one way to read
    /// `ready`: a `watch::Ref` kept past its statement holds the channel's
    /// read lock, and a second read on the same thread (as `link_state`
    /// does) then waits behind a writer (`link_lost`, `link_joined`) that
    /// waits for the first: `cluster_stats` deadlocked the node so.
    pub(super) fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Joined (again): ready, and no longer fenced.
    pub(super) fn link_joined(&self) {
        self.link.joined.store(true, Ordering::SeqCst);
        self.link.lost_at_ms.store(0, Ordering::SeqCst);
        let fenced_at = self.link.fenced_at_ms.swap(0, Ordering::SeqCst);
        self.ready.send_replace(true);
        if fenced_at > 0 {
            tracing::info!(
                node = self.cluster.node_id(),
                fenced_ms = now_ms().saturating_sub(fenced_at),
                "Redis answers again: no longer fenced, serving"
            );
        }
    }

    /// Renews the heartbeat, remembering when an acknowledged one was sent.
    pub(super) async fn renew_heartbeat(&self) -> Result<bool, crate::ClusterFailure> {
        let sent = self.backplane.clock().now();
        let version = self.presence_version.load(Ordering::SeqCst);
        let registered = self
            .backplane
            .heartbeat(self.cluster.node_ttl(), version)
            .await?;
        self.link.heartbeat_sent.fetch_max(sent, Ordering::SeqCst);
        Ok(registered)
    }

    /// How long this node has been fenced, if it is.
    pub(super) fn fenced_for_ms(&self) -> Option<u64> {
        match self.link.fenced_at_ms.load(Ordering::SeqCst) {
            0 => None,
            at => Some(now_ms().saturating_sub(at)),
        }
    }

    /// How long since the last acknowledged heartbeat was sent.
    pub(super) fn cut_off_ms(&self) -> u64 {
        let clock = self.backplane.clock();
        clock
            .now()
            .saturating_sub(self.link.heartbeat_sent.load(Ordering::SeqCst))
    }

    pub(super) fn link_state(&self) -> LinkState {
        if self.shut_down.load(Ordering::SeqCst) {
            return LinkState::ShutDown;
        }
        let fenced_at = self.link.fenced_at_ms.load(Ordering::SeqCst);
        if fenced_at > 0 {
            return LinkState::Fenced {
                since_ms: fenced_at,
            };
        }
        if self.is_ready() {
            return LinkState::Serving;
        }
        if !self.link.joined.load(Ordering::SeqCst) {
            return LinkState::Joining;
        }
        LinkState::Reconnecting {
            since_ms: self.link.lost_at_ms.load(Ordering::SeqCst),
        }
    }

    /// Fences the node when its last acknowledged heartbeat is older than
    /// `fence_after`.
    fn check_fence(&self) {
        let sent = self.link.heartbeat_sent.load(Ordering::SeqCst);
        if !self.link.joined.load(Ordering::SeqCst)
            || sent == 0
            || self.link.fenced_at_ms.load(Ordering::SeqCst) > 0
        {
            return;
        }
        let silent = self.backplane.clock().now().saturating_sub(sent);
        if u128::from(silent) <= self.cluster.fence_after().as_millis() {
            return;
        }
        self.link.fenced_at_ms.store(now_ms(), Ordering::SeqCst);
        self.link.fenced.fetch_add(1, Ordering::Relaxed);
        self.link_lost();
        let closed = self.local.close_all(&crate::close::fenced());
        tracing::warn!(
            node = self.cluster.node_id(),
            silent_ms = silent,
            closed,
            "cut off from Redis for longer than fence_after: closed every local connection (clients resume on another node) and refusing new ones until Redis answers"
        );
    }

    /// Drops the current connection to Redis and makes a fresh one; the
    /// maintenance task then resubscribes, audits, rewrites presence and
    /// re-reads the others.
    fn replace_connection(&self, why: &str) {
        match self.backplane.rebuild() {
            Ok(generation) => {
                self.link.reconnects.fetch_add(1, Ordering::Relaxed);
                self.audit_due.store(true, Ordering::SeqCst);
                self.link_lost();
                tracing::warn!(
                    node = self.cluster.node_id(),
                    generation,
                    why,
                    "the link to Redis went silent: replaced it with a fresh connection"
                );
                self.wake.notify_one();
            }
            Err(error) => {
                tracing::warn!(node = self.cluster.node_id(), %error, "could not make a fresh connection to Redis");
            }
        }
    }
}

/// A probe in flight.
#[derive(Debug)]
struct Probe {
    /// When it was sent, on the backplane's clock.
    sent: u64,
    /// Whether it was a publish to this node's own channel (answered by a
    /// push) rather than a PING (answered by a reply).
    published: bool,
    /// On a Redis Cluster: the probe of every master, which reports when
    /// it is done (within `probe_timeout`).
    masters: Option<tokio::sync::oneshot::Receiver<MastersProbe>>,
}

/// How a probe ended.
enum Verdict {
    Pending,
    Answered,
    Unanswered(String),
}

impl Probe {
    fn verdict(&mut self, clock: &LinkClock, now: u64, timeout: u128) -> Verdict {
        let heard = if self.published {
            clock.pushed_at()
        } else {
            clock.answered_at()
        } >= self.sent;
        let masters = match self.masters.as_mut().map(|masters| masters.try_recv()) {
            None => Some(Ok(())),
            Some(Ok(probe)) if probe.unanswered.is_empty() => {
                self.masters = None;
                Some(Ok(()))
            }
            Some(Ok(probe)) => Some(Err(format!(
                "{} master(s) of the Redis Cluster unanswered ({} answered): {}",
                probe.unanswered.len(),
                probe.answered,
                probe.unanswered.join("; ")
            ))),
            Some(Err(tokio::sync::oneshot::error::TryRecvError::Empty)) => None,
            Some(Err(tokio::sync::oneshot::error::TryRecvError::Closed)) => Some(Err(
                "the probe of the masters ended without a word".to_owned(),
            )),
        };
        match masters {
            Some(Err(why)) => return Verdict::Unanswered(why),
            Some(Ok(())) if heard => return Verdict::Answered,
            _ => {}
        }
        if u128::from(now.saturating_sub(self.sent)) < timeout {
            return Verdict::Pending;
        }
        Verdict::Unanswered(if masters.is_none() {
            "the probe of the Redis Cluster's masters did not end within probe_timeout".to_owned()
        } else if self.published {
            "the probe published to this node's own channel did not come back".to_owned()
        } else {
            "no answer to PING".to_owned()
        })
    }
}

/// Probes a silent link, replaces a connection whose probe goes
/// unanswered, and fences the node when it is cut off too long.
pub(super) async fn watch(shared: Weak<Shared>) {
    let (period, interval, timeout) = match shared.upgrade() {
        Some(shared) => (
            watchdog_period(&shared.cluster),
            u128::from(
                u64::try_from(shared.cluster.probe_interval().as_millis()).unwrap_or(u64::MAX),
            ),
            u128::from(
                u64::try_from(shared.cluster.probe_timeout().as_millis()).unwrap_or(u64::MAX),
            ),
        ),
        None => return,
    };
    let mut pending: Option<Probe> = None;
    // At most one fresh connection per `probe_interval + probe_timeout`,
    // however many commands time out: a flapping link cannot make the node
    // reconnect in a loop.
    let mut replaced_at = 0u64;
    // On a Redis Cluster every master is probed every `probe_interval`,
    // busy or not: a push from one master says nothing of the others.
    let mut round_at = 0u64;
    loop {
        // The manager is held only while looking, never while asleep: the
        // maintenance task's drop of the last reference must free it.
        let clock = {
            let Some(strong) = shared.upgrade() else {
                return;
            };
            if strong.shut_down.load(Ordering::SeqCst) {
                return;
            }
            strong.check_fence();
            let clock = Arc::clone(strong.backplane.clock());
            let now = clock.now();
            let since = |at: u64| u128::from(now.saturating_sub(at));
            match pending.as_mut() {
                Some(probe) => match probe.verdict(&clock, now, timeout) {
                    Verdict::Pending => {}
                    Verdict::Answered => pending = None,
                    Verdict::Unanswered(why) => {
                        strong.link.probe_timeouts.fetch_add(1, Ordering::Relaxed);
                        strong.replace_connection(&why);
                        pending = None;
                        replaced_at = clock.now();
                        round_at = replaced_at;
                    }
                },
                None => {
                    let published = clock.subscribed();
                    let last = if published {
                        clock.pushed_at()
                    } else {
                        clock.answered_at()
                    };
                    let silent = if strong.backplane.is_cluster() {
                        since(round_at) >= interval
                    } else {
                        since(last) >= interval
                    };
                    if silent || (clock.timeouts() > 0 && since(replaced_at) >= interval) {
                        round_at = now;
                        let masters = strong
                            .backplane
                            .probe_masters(strong.cluster.probe_timeout());
                        let masters = masters.map(|masters| {
                            let (report, reported) = tokio::sync::oneshot::channel();
                            tokio::spawn(async move {
                                let _ = report.send(masters.await);
                            });
                            reported
                        });
                        pending = Some(Probe {
                            sent: now,
                            published,
                            masters,
                        });
                        let probe = strong.backplane.probe();
                        tokio::spawn(async move {
                            if let Err(error) = probe.await {
                                tracing::debug!(%error, "link probe failed");
                            }
                        });
                    }
                }
            }
            clock
        };
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = clock.timed_out.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::managers::{ClusterConfig, ClusterWebSocketManager, ManagerConfig};

    /// `cluster_stats` read `ready` twice in one statement (its own field,
    /// then through `link_state`): a writer (`link_lost`, `link_joined`)
    /// arriving between the two left the reader waiting behind the writer
    /// and the writer waiting for the reader, and every task that read
    /// `ready` after them (seen: a whole node stuck, test thread, watchdog
    /// and maintenance). Readers and a flapping writer on two threads must
    /// all finish.
    #[test]
    fn reading_the_stats_while_the_link_flaps_never_deadlocks() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        // Nothing listens there: the node keeps trying to join.
        let cluster = ClusterConfig::builder("redis://127.0.0.1:1")
            .build()
            .expect("a valid config");
        let manager = {
            let _entered = runtime.enter();
            ClusterWebSocketManager::new(ManagerConfig::default(), cluster).expect("a manager")
        };
        let shared = Arc::clone(&manager.shared);
        let rounds = 100_000;
        let (finished, done) = std::sync::mpsc::channel();
        let writer_finished = finished.clone();
        std::thread::spawn(move || {
            for _ in 0..rounds {
                shared.link_lost();
                shared.link_joined();
            }
            let _ = writer_finished.send("writer");
        });
        std::thread::spawn(move || {
            for _ in 0..rounds {
                let _ = manager.cluster_stats();
            }
            let _ = finished.send("reader");
        });
        let both = (0..2).all(|_| done.recv_timeout(Duration::from_secs(60)).is_ok());
        // Before asserting: never wait for a worker (a stuck one would
        // hang the test instead of failing it).
        runtime.shutdown_background();
        assert!(
            both,
            "deadlock: the stats reader and the link's writer stopped each other"
        );
    }
}
