//! [`ClusterWebSocketManager`]: one manager across many server processes,
//! through a real Redis (feature `redis`).
//!
//! Each process (a *node*) holds its own sockets; Redis carries what the
//! nodes share:
//!
//! * **Critical events** live in a Redis Stream per user. One Lua script
//!   per event creates the user's stream id (the *epoch*) when missing,
//!   numbers the event, appends it (`XADD MAXLEN history_capacity`),
//!   refreshes the expiries and publishes it on the bus, atomically, so the
//!   `(stream, sequence)` a tab sees is the same on every node and a client
//!   can resume on any node. A Redis that lost its data has no epoch for
//!   the user: the next read or event creates a new one, and a client that
//!   resumes from the old stream gets a `resync` notice (`unknown_stream`),
//!   never a silent fresh start.
//! * **Ordinary sends** go to this node's sockets directly, then are
//!   published once per call: to the one other node that holds recipients,
//!   or on the bus when several do, or not at all when none does (as this
//!   node's presence replica sees it).
//! * **Presence**: each node keeps its connections in a Redis hash and
//!   announces every change on the bus; every node keeps a replica of the
//!   others' (see `presence`), refreshed every heartbeat interval, and drops
//!   a node whose heartbeat key expired, within
//!   [`ClusterConfig::presence_bound`].
//!
//! See `docs/cluster.md` in the repository for what each contract method means
//! across nodes and how stale each answer can be.
//!
//! # Failures
//!
//! Every Redis call is bounded by the command timeout. A call that needs
//! Redis and cannot reach it fails with [`ManagerError::Cluster`] (never
//! `Ok`): `emit_critical_event` always needs it (the sequence lives
//! there), `add_connection` needs it (the history lives there), sends need
//! it only when other nodes hold recipients (this node's sockets still get
//! the message, and the error says how many did). The Redis connection
//! comes back by itself; after any disconnect (or a full inbound buffer)
//! the node audits every local user's stream head and closes, with close
//! code [`close::RESUME`](crate::close::RESUME), the connections that fell behind, so their
//! clients resume from their offset and lose nothing.
//!
//! A connection to Redis that goes silent without an I/O error (a
//! black-holed TCP connection) is found by the link watchdog (see `link`):
//! after `probe_interval` without a message it probes the subscription,
//! and a probe unanswered within `probe_timeout` replaces the connection
//! with a fresh one, then the recovery above runs. A node that cannot renew
//! its heartbeat for `fence_after` fences itself: it closes its
//! connections with [`close::RESUME`](crate::close::RESUME) and refuses new ones
//! ([`ClusterFailure::Fenced`]) until Redis answers again, so no tab stays
//! open on a node the others have forgotten. [`LinkState`] says where the
//! node stands.

mod backplane;
mod bus;
mod config;
mod link;
mod local;
mod maintenance;
mod presence;
mod stats;
mod wire;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use redis::{PushInfo, PushKind};
use tokio::sync::{mpsc, watch};

use crate::config::ManagerConfig;
use crate::connection::{CloseReason, TextFrame, WebSocketConnection, WebSocketHandle};
use crate::delivery::{Delivery, DeliveryTarget, NotDeliveredReason};
use crate::error::{ClusterFailure, ManagerError};
use crate::health::{ConnectionHealth, ConnectionSummary, unix_millis};
use crate::ids::{ConnectionId, ThreadId, UserId};
use crate::managers::core::next_stream;
use crate::managers::events::{ResyncNotice, ResyncReason, validate_event_type};
use crate::managers::fan_out::{FanOut, bump};
use crate::offset::{StreamOffset, StreamPosition};
use crate::protocol::WebSocketManager;
use crate::registry::{BuildContext, BuildError, ConstructManager};
use crate::websocket_manager;

use backplane::{AppendError, Backplane, History, PushHandler, StoredEvent};
pub use config::{ClusterConfig, ClusterConfigBuilder};
use link::Link;
pub use link::LinkState;
use local::{LocalIndex, PresenceChange, Replay};
use presence::Replica;
pub use stats::ClusterStats;
use wire::{BusMessage, critical_frame, critical_frame_max_len};

/// A [`WebSocketManager`] shared by every node of a cluster through Redis.
///
/// Built by the factory (name `"cluster"`) when the factory's
/// [`Extensions`](crate::startup::Extensions) hold a [`ClusterConfig`]; the startup
/// probes then run against the real Redis, in a namespace of their own that
/// they delete afterwards. Without a `ClusterConfig`, startup validation
/// lists it as *not configured*.
///
/// ```no_run
/// use websocket_manager::{events::*, managers::*, socket::*, *};
/// use websocket_manager::managers::{ClusterConfig, ClusterWebSocketManager};
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = ClusterConfig::builder("redis://127.0.0.1:6379").node_id("web-1").build()?;
/// let manager = ClusterWebSocketManager::new(ManagerConfig::default(), cluster)?;
/// manager.ready().await?; // subscribed, presence registered
/// let alice = UserId::new("alice")?;
/// // Reaches alice's tabs on every node, with the same offset everywhere.
/// let delivery = manager.emit_critical_event(&alice, AGENT_STARTED, serde_json::json!({})).await?;
/// println!("{delivery}");
/// manager.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ClusterWebSocketManager {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: ManagerConfig,
    cluster: ClusterConfig,
    local: LocalIndex,
    replica: Replica,
    backplane: Backplane,
    /// `true` once subscribed and registered; `false` again while the
    /// connection to Redis is down.
    ready: watch::Sender<bool>,
    /// Set when messages may have been lost (disconnect, full buffer).
    audit_due: Arc<AtomicBool>,
    /// Messages from Redis dropped on a full inbound buffer.
    inbound_dropped: Arc<AtomicU64>,
    /// Audits run (after a disconnect or a full buffer).
    audits: AtomicU64,
    /// Set when a presence change could not be queued or written: the next
    /// heartbeat rewrites this node's whole presence.
    presence_dirty: Arc<AtomicBool>,
    shut_down: AtomicBool,
    /// Set the first time the node joined: not ready before is "starting",
    /// after is "reconnecting".
    /// Delete the key namespace on drop (the probes' instances).
    probe: bool,
    /// The bounded queue the presence writer drains.
    outbound: mpsc::Sender<PresenceChange>,
    /// The link watchdog's bookkeeping and counters.
    link: Link,
    /// Bounds the history reads in flight (`ClusterConfig::history_reads`).
    history_reads: tokio::sync::Semaphore,
    /// Registrations that had to wait for a history read's turn.
    history_read_waits: AtomicU64,
    /// Wakes the maintenance task to rejoin at once (a fresh connection).
    wake: tokio::sync::Notify,
    /// Wakes the maintenance task to leave the cluster...
    stop: tokio::sync::Notify,
    /// ...which it signals here once it has.
    stopped: tokio::sync::Notify,
}

impl ClusterWebSocketManager {
    /// A node of the cluster `cluster`. Connects lazily: call
    /// [`ready`](Self::ready) to wait for the subscription (add_connection
    /// waits for it too, up to `ready_timeout`). Needs a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`BuildError`] for an invalid URL or configuration, or when called
    /// outside a tokio runtime.
    pub fn new(config: ManagerConfig, cluster: ClusterConfig) -> Result<Self, BuildError> {
        Self::build(config, cluster, false)
    }

    fn build(
        config: ManagerConfig,
        cluster: ClusterConfig,
        probe: bool,
    ) -> Result<Self, BuildError> {
        config::check_against(&cluster, &config)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            BuildError::Failed(format!("the cluster manager needs a tokio runtime: {e}").into())
        })?;
        // When the inbound buffer is full the message is dropped and every
        // local user audited: a lost message is never silently lost.
        let (inbound, inbound_rx) = mpsc::channel::<PushInfo>(cluster.inbound_capacity());
        let audit_due = Arc::new(AtomicBool::new(false));
        let inbound_dropped = Arc::new(AtomicU64::new(0));
        let (overflow, dropped) = (Arc::clone(&audit_due), Arc::clone(&inbound_dropped));
        let push: PushHandler = Arc::new(move |info: PushInfo| {
            // Subscription confirmations and the like carry nothing to act on.
            if !matches!(info.kind, PushKind::Message | PushKind::Disconnection) {
                return;
            }
            if inbound.try_send(info).is_err() {
                dropped.fetch_add(1, Ordering::Relaxed);
                overflow.store(true, Ordering::SeqCst);
            }
        });
        let backplane =
            Backplane::connect(&cluster, push).map_err(|e| BuildError::Failed(Box::new(e)))?;
        let (outbound, outbound_rx) = mpsc::channel::<PresenceChange>(cluster.outbound_capacity());
        let presence_dirty = Arc::new(AtomicBool::new(false));
        let dirty = Arc::clone(&presence_dirty);
        let queue = outbound.clone();
        let sink = Arc::new(move |change: PresenceChange| {
            if queue.try_send(change).is_err() {
                dirty.store(true, Ordering::SeqCst);
            }
        });
        let history_reads = cluster.history_reads();
        let shared = Arc::new(Shared {
            local: LocalIndex::new(config.clone(), sink),
            config,
            cluster,
            replica: Replica::default(),
            backplane,
            ready: watch::Sender::new(false),
            audit_due,
            inbound_dropped,
            audits: AtomicU64::new(0),
            presence_dirty,
            shut_down: AtomicBool::new(false),
            probe,
            outbound,
            link: Link::default(),
            history_reads: tokio::sync::Semaphore::new(history_reads),
            history_read_waits: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
            stop: tokio::sync::Notify::new(),
            stopped: tokio::sync::Notify::new(),
        });
        runtime.spawn(bus::dispatch(Arc::downgrade(&shared), inbound_rx));
        runtime.spawn(maintenance::write_presence(
            Arc::downgrade(&shared),
            outbound_rx,
        ));
        runtime.spawn(maintenance::maintain(Arc::downgrade(&shared)));
        runtime.spawn(link::watch(Arc::downgrade(&shared)));
        Ok(ClusterWebSocketManager { shared })
    }

    /// Waits until the node is subscribed and registered (at most
    /// `ready_timeout`).
    ///
    /// # Errors
    ///
    /// [`ManagerError::Cluster`] with [`ClusterFailure::NotReady`].
    pub async fn ready(&self) -> Result<(), ManagerError> {
        self.shared.wait_ready("connect").await
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        self.shared.cluster.node_id()
    }

    /// The manager's configuration.
    pub fn config(&self) -> &ManagerConfig {
        &self.shared.config
    }

    /// Where this node stands with the cluster's Redis: joining, serving,
    /// reconnecting, fenced (cut off longer than
    /// [`ClusterConfig::fence_after`]: connections closed, new ones
    /// refused) or shut down. Cheap (atomics only): a transport may call it
    /// before every upgrade.
    ///
    /// ```no_run
    /// use websocket_manager::{events::*, managers::*, socket::*, *};
    /// use websocket_manager::managers::{ClusterConfig, ClusterWebSocketManager, LinkState};
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = ClusterConfig::builder("redis://127.0.0.1:6379").build()?;
    /// let manager = ClusterWebSocketManager::new(ManagerConfig::default(), cluster)?;
    /// if !manager.link_state().is_serving() {
    ///     // Refuse the upgrade: 503 with Retry-After.
    /// }
    /// # Ok(()) }
    /// ```
    pub fn link_state(&self) -> LinkState {
        self.shared.link_state()
    }

    /// The cluster configuration.
    pub fn cluster_config(&self) -> &ClusterConfig {
        &self.shared.cluster
    }

    /// This node's counters and index sizes (the same figures as the
    /// reference managers'; retained history lives in Redis).
    pub fn stats(&self) -> crate::managers::ManagerStats {
        self.shared.local.stats()
    }

    /// What this node knows of the cluster.
    pub fn cluster_stats(&self) -> ClusterStats {
        ClusterStats {
            node_id: self.node_id().to_owned(),
            ready: *self.shared.ready.borrow(),
            local_connections: self.shared.local.connection_count(),
            remote_connections: self.shared.replica.len(),
            remote_nodes: self.shared.replica.nodes().len(),
            inbound_dropped: self.shared.inbound_dropped.load(Ordering::Relaxed),
            audits: self.shared.audits.load(Ordering::Relaxed),
            link: self.shared.link_state(),
            reconnects: self.shared.link.reconnects.load(Ordering::Relaxed),
            probe_timeouts: self.shared.link.probe_timeouts.load(Ordering::Relaxed),
            fenced: self.shared.link.fenced.load(Ordering::Relaxed),
            history_read_waits: self.shared.history_read_waits.load(Ordering::Relaxed),
        }
    }

    /// Whether this node admits new connections: only while it is joined
    /// to the cluster (subscribed, presence registered). Before the first
    /// join it is [`Starting`](crate::NotReadyReason::Starting), after a
    /// lost link [`Reconnecting`](crate::NotReadyReason::Reconnecting),
    /// once cut off past [`ClusterConfig::fence_after`]
    /// [`Fenced`](crate::NotReadyReason::Fenced), after [`shutdown`](Self::shutdown)
    /// [`ShutDown`](crate::NotReadyReason::ShutDown). A connection
    /// accepted meanwhile would wait up to `ready_timeout` in
    /// `add_connection` and then be closed; refusing it at the upgrade
    /// sends the client to another node at once.
    pub fn readiness(&self) -> crate::Readiness {
        use crate::{NotReadyReason, Readiness};
        // A node joins within a heartbeat interval of Redis answering again.
        let retry_after = self.shared.cluster.heartbeat_interval();
        match self.link_state() {
            LinkState::Serving => Readiness::Ready,
            LinkState::ShutDown => crate::readiness::unless_shut_down(true),
            LinkState::Joining => Readiness::not_ready(
                NotReadyReason::Starting,
                "not joined to the cluster yet (is its Redis reachable?)",
                retry_after,
            ),
            LinkState::Reconnecting { .. } => Readiness::not_ready(
                NotReadyReason::Reconnecting,
                "the link to the cluster's Redis is down; joining again",
                retry_after,
            ),
            LinkState::Fenced { .. } => Readiness::not_ready(
                NotReadyReason::Fenced,
                "cut off from the cluster's Redis past the fence bound; its tabs were closed to resume elsewhere",
                retry_after,
            ),
        }
    }

    /// Leaves the cluster cleanly: closes every local socket with
    /// [`CloseReason::going_away`], removes this node's presence (the other
    /// nodes forget it at once) and refuses further work.
    pub async fn shutdown(&self) {
        self.shared.stop_and_wait().await;
    }
}

impl Drop for ClusterWebSocketManager {
    fn drop(&mut self) {
        // The probes' instances delete their namespace; a real node that is
        // dropped without `shutdown` is dropped by the others after its
        // heartbeat expires.
        if self.shared.probe
            && !self.shared.shut_down.load(Ordering::SeqCst)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let shared = Arc::clone(&self.shared);
            runtime.spawn(async move { shared.stop_and_wait().await });
        }
    }
}

#[diagnostic::do_not_recommend]
impl ConstructManager for ClusterWebSocketManager {
    fn construct(context: &BuildContext<'_>) -> Result<Self, BuildError> {
        let cluster = context.require_extension::<ClusterConfig>()?;
        if context.for_probe {
            Self::build(context.config.clone(), cluster.for_probe(), true)
        } else {
            Self::new(context.config.clone(), cluster.clone())
        }
    }
}

impl Shared {
    /// Closes every local socket and has the maintenance task leave the
    /// cluster (and delete a probe's namespace), after any Redis work it
    /// has in flight; waits for it at most a few command timeouts.
    async fn stop_and_wait(&self) {
        self.shut_down.store(true, Ordering::SeqCst);
        self.local.close_all(&CloseReason::going_away());
        self.stop.notify_one();
        let limit = self.cluster.command_timeout() * 4 + Duration::from_millis(200);
        if tokio::time::timeout(limit, self.stopped.notified())
            .await
            .is_err()
        {
            tracing::warn!(
                node = self.cluster.node_id(),
                "could not leave the cluster in time; the others drop this node when its heartbeat expires"
            );
        }
    }

    /// Reads a registering connection's history, at most
    /// `ClusterConfig::history_reads` at once on this node: the others wait
    /// their turn, up to `command_timeout`.
    async fn read_history(
        &self,
        user: &UserId,
        resume: Option<StreamOffset>,
    ) -> Result<History, ClusterFailure> {
        let permit = match self.history_reads.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                self.history_read_waits.fetch_add(1, Ordering::Relaxed);
                let wait = self.cluster.command_timeout();
                match tokio::time::timeout(wait, self.history_reads.acquire()).await {
                    Ok(Ok(permit)) => permit,
                    // Closed never happens (the semaphore is never closed);
                    // both are "busy".
                    Ok(Err(_)) | Err(_) => {
                        return Err(ClusterFailure::Busy {
                            waited_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        });
                    }
                }
            }
        };
        let history = self
            .backplane
            .read_history(user, resume, next_stream(), self.cluster.stream_meta_ttl())
            .await;
        drop(permit);
        history
    }

    fn refuse_if_shut_down(&self) -> Result<(), ManagerError> {
        if self.shut_down.load(Ordering::SeqCst) {
            Err(ManagerError::ShutDown)
        } else {
            Ok(())
        }
    }

    fn refuse_if_fenced(&self) -> Result<(), ManagerError> {
        match self.fenced_for_ms() {
            Some(_) => Err(cluster_error(
                "add connection",
                ClusterFailure::Fenced {
                    cut_off_ms: self.cut_off_ms(),
                },
                0,
            )),
            None => Ok(()),
        }
    }

    async fn wait_ready(&self, operation: &'static str) -> Result<(), ManagerError> {
        let mut ready = self.ready.subscribe();
        match tokio::time::timeout(self.cluster.ready_timeout(), ready.wait_for(|r| *r)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(cluster_error(operation, ClusterFailure::NotReady, 0)),
        }
    }

    /// Sends `frame` to `remote` other nodes: on one node's channel, or on
    /// the bus for several; once either way.
    async fn relay(
        &self,
        remote: &HashSet<String>,
        message: &BusMessage,
    ) -> Result<(), ClusterFailure> {
        let keys = self.backplane.keys();
        let channel = match remote.iter().next() {
            Some(node) if remote.len() == 1 => keys.node_channel(node),
            _ => keys.bus(),
        };
        self.backplane.publish(channel, message).await
    }

    /// The local result of an ordinary send plus its relay.
    async fn send(
        &self,
        target: DeliveryTarget,
        fan: &FanOut,
        remote: HashSet<String>,
        message: impl FnOnce() -> BusMessage,
    ) -> Result<Delivery, ManagerError> {
        if remote.is_empty() {
            if fan.targeted == 0 {
                bump(&self.local.totals.failed, 1);
                let reason = match target {
                    DeliveryTarget::Thread(_) => NotDeliveredReason::NoThreadConnections,
                    _ => NotDeliveredReason::NoConnections,
                };
                return Err(ManagerError::NotDelivered { target, reason });
            }
            return fan.result(|| target);
        }
        self.relay(&remote, &message())
            .await
            .map_err(|failure| cluster_error("publish", failure, fan.delivered))?;
        Ok(Delivery::relayed(
            fan.delivered,
            fan.targeted - fan.delivered,
            remote.len(),
        ))
    }
}

fn cluster_error(
    operation: &'static str,
    failure: ClusterFailure,
    delivered_locally: usize,
) -> ManagerError {
    ManagerError::Cluster {
        operation,
        failure,
        delivered_locally,
    }
}

/// What a connection resuming from `resume` is sent, from what Redis
/// holds: a notice when part of it is gone, then the events it is owed.
fn plan(
    history: &History,
    resume: Option<StreamOffset>,
    max_age: Duration,
    now_ms: u64,
) -> (Option<ResyncNotice>, Vec<StoredEvent>) {
    let oldest_allowed =
        now_ms.saturating_sub(u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX));
    let events: Vec<StoredEvent> = history
        .events
        .iter()
        .filter(|e| e.timestamp >= oldest_allowed)
        .cloned()
        .collect();
    let latest = StreamOffset::new(history.stream, history.head);
    let first_available = events.first().map_or(history.head + 1, |e| e.sequence);
    let notice = |reason, requested, lost| ResyncNotice {
        reason,
        requested,
        oldest_retained: events
            .first()
            .map(|e| StreamOffset::new(history.stream, e.sequence)),
        latest,
        lost,
        timestamp: now_ms,
    };
    let owed_from = match resume {
        Some(offset) if offset.stream != history.stream => {
            return (
                Some(notice(ResyncReason::UnknownStream, Some(offset), None)),
                events,
            );
        }
        Some(offset) if offset.sequence > history.head => {
            return (
                Some(notice(ResyncReason::Ahead, Some(offset), None)),
                Vec::new(),
            );
        }
        Some(offset) => offset.sequence + 1,
        None => history.taken + 1,
    };
    if first_available > owed_from {
        let lost = first_available - owed_from;
        (
            Some(notice(ResyncReason::Trimmed, resume, Some(lost))),
            events,
        )
    } else {
        (None, events)
    }
}

#[websocket_manager(name = "cluster", mode = "unified", readiness = Self::readiness)]
impl WebSocketManager for ClusterWebSocketManager {
    async fn add_connection(&self, connection: WebSocketConnection) -> Result<(), ManagerError> {
        let shared = &self.shared;
        shared.refuse_if_shut_down()?;
        shared.refuse_if_fenced()?;
        shared.wait_ready("add connection").await?;
        let user = connection.user_id.clone();
        let id = connection.connection_id.clone();
        let resume = connection.resume;
        let socket = connection.websocket.clone();
        shared.local.begin(connection)?;
        let history = match shared.read_history(&user, resume).await {
            Ok(history) => history,
            Err(failure) => {
                shared.local.remove(&id, CloseReason::going_away());
                return Err(cluster_error("read history", failure, 0));
            }
        };
        let now = unix_millis(SystemTime::now());
        let (notice, events) = plan(&history, resume, shared.config.history_max_age(), now);
        let head = StreamOffset::new(history.stream, history.head);
        // For the transport's `hello`: what Redis holds. The read returned
        // the entries from `read_from` on, filtered by age; when it started
        // at the stream's first entry, the first one left is the oldest a
        // client can still get, else the stream's first entry is.
        let read_from = match resume {
            Some(offset) if offset.stream == history.stream => offset.sequence + 1,
            Some(_) => 1,
            None => history.taken + 1,
        };
        let oldest = if history.oldest == 0 {
            None
        } else if read_from <= history.oldest {
            events.first().map(|e| e.sequence)
        } else {
            Some(history.oldest)
        };
        socket.record_stream_position(StreamPosition::new(
            Some(head),
            oldest.map(|sequence| StreamOffset::new(history.stream, sequence)),
            shared.config.history_capacity(),
            shared.config.history_max_age(),
        ));
        drop(socket);
        let replay = Replay {
            notice: match &notice {
                Some(notice) => Some(TextFrame::from_json(notice)?),
                None => None,
            },
            events: events
                .iter()
                .map(|e| {
                    let offset = StreamOffset::new(history.stream, e.sequence);
                    (
                        offset,
                        critical_frame(&e.event_type, &e.data, e.timestamp, offset),
                    )
                })
                .collect(),
            head: (history.head > 0).then_some(head),
        };
        let replayed_any = !replay.events.is_empty() || notice.is_some();
        let live = shared.local.finish(&user, &id, replay)?;
        // Fenced meanwhile: the fence closed the others; this one too.
        if let Err(error) = shared.refuse_if_fenced() {
            shared.local.remove(&id, crate::close::fenced());
            return Err(error);
        }
        if live {
            if notice.is_some() {
                bump(&shared.local.totals.resync_notices, 1);
            }
            if resume.is_none() && replayed_any && history.head > history.taken {
                // Best effort: a failure only means a later connection
                // without an offset is sent these events again.
                if let Err(error) = shared.backplane.mark_taken(&user, head).await {
                    tracing::debug!(%error, "could not mark replayed events as taken");
                }
            }
        }
        Ok(())
    }

    async fn remove_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection> {
        self.shared
            .local
            .remove(connection_id, CloseReason::normal())
    }

    fn get_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection> {
        self.shared.local.get(connection_id)
    }

    fn get_user_connections(&self, user_id: &UserId) -> HashSet<ConnectionId> {
        let mut all = self.shared.local.user_connections(user_id);
        all.extend(self.shared.replica.user_connections(user_id));
        all
    }

    fn is_connection_active(&self, user_id: &UserId) -> bool {
        self.shared.local.has_user(user_id) || self.shared.replica.has_user(user_id)
    }

    fn get_connection_id_by_websocket(&self, websocket: &WebSocketHandle) -> Option<ConnectionId> {
        self.shared.local.by_socket(websocket)
    }

    fn update_connection_thread(&self, connection_id: &ConnectionId, thread_id: ThreadId) -> bool {
        let shared = &self.shared;
        if shared
            .local
            .update_thread(connection_id, thread_id.clone())
            .is_some()
        {
            return true;
        }
        let Some(node) = shared.replica.holder(connection_id) else {
            return false;
        };
        // The connection lives on another node: ask it, through the
        // bounded outbound queue (no waiting here).
        match shared
            .outbound
            .try_send(PresenceChange::Bind(node, connection_id.clone(), thread_id))
        {
            Ok(()) => true,
            Err(_) => {
                tracing::warn!(%connection_id, "outbound queue full: thread binding for another node refused");
                false
            }
        }
    }

    async fn send_to_user(
        &self,
        user_id: &UserId,
        message: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        let shared = &self.shared;
        shared.refuse_if_shut_down()?;
        let frame = TextFrame::from_json(&message)?;
        let fan = shared.local.send_to_user(user_id, &frame);
        let remote = shared.replica.user_nodes(user_id);
        shared
            .send(DeliveryTarget::User(user_id.clone()), &fan, remote, || {
                BusMessage::User {
                    origin: shared.cluster.node_id().to_owned(),
                    user: user_id.clone(),
                    frame: frame.as_str().to_owned(),
                }
            })
            .await
    }

    async fn emit_critical_event(
        &self,
        user_id: &UserId,
        event_type: &str,
        data: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        let shared = &self.shared;
        shared.refuse_if_shut_down()?;
        validate_event_type(event_type)?;
        let data = serde_json::to_string(&data)?;
        let timestamp = unix_millis(SystemTime::now());
        // The frame's size is bounded before Redis assigns the sequence.
        let len = critical_frame_max_len(event_type, &data, timestamp);
        if len > shared.config.history_max_bytes() {
            bump(&shared.local.totals.critical_rejected, 1);
            return Err(ManagerError::CriticalEventTooLarge {
                user_id: user_id.clone(),
                len,
                max: shared.config.history_max_bytes(),
            });
        }
        let online = self.is_connection_active(user_id);
        let appended = shared
            .backplane
            .append(
                user_id,
                next_stream(),
                event_type,
                &data,
                timestamp,
                online,
                shared.config.history_capacity(),
                shared.config.history_max_age(),
                shared.cluster.stream_meta_ttl(),
            )
            .await;
        let appended = match appended {
            Ok(appended) => appended,
            Err(AppendError::Full { pending }) => {
                bump(&shared.local.totals.critical_rejected, 1);
                return Err(ManagerError::HistoryFull {
                    user_id: user_id.clone(),
                    pending: usize::try_from(pending).unwrap_or(usize::MAX),
                });
            }
            Err(AppendError::Failed(failure)) => {
                bump(&shared.local.totals.critical_rejected, 1);
                return Err(cluster_error("append critical event", failure, 0));
            }
        };
        let offset = appended.offset;
        let frame = critical_frame(event_type, &data, timestamp, offset);
        let outcome = shared.local.deliver_critical(user_id, offset, &frame, true);
        let remote = shared.replica.user_nodes(user_id).len();
        let delivery = if !online {
            Delivery::queued(usize::try_from(appended.pending).unwrap_or(usize::MAX))
        } else if remote == 0 && outcome.deferred == 0 && outcome.delivered > 0 {
            Delivery::delivered(outcome.delivered, outcome.closed)
        } else {
            Delivery::relayed(outcome.delivered, outcome.closed, remote)
        };
        Ok(delivery.with_offset(offset))
    }

    fn get_connection_health(&self, user_id: &UserId) -> ConnectionHealth {
        let shared = &self.shared;
        let mut health = ConnectionHealth::empty(user_id.clone());
        if let Some((summaries, counters, latest)) = shared.local.health(user_id) {
            health.active_connections = summaries.iter().filter(|s| !s.closed).count();
            health.connections = summaries;
            health.latest_offset = latest;
            counters.report_into(&mut health);
        }
        for (connection_id, _node, entry) in shared.replica.user_entries(user_id) {
            health.active_connections += 1;
            health.connections.push(ConnectionSummary {
                connection_id,
                thread_id: entry.thread,
                connected_at_ms: entry.connected_at_ms,
                queue_depth: 0,
                closed: false,
            });
        }
        health.total_connections = health.connections.len();
        // Cut off from Redis: the other nodes' part is the last one known.
        health.partial = !*shared.ready.borrow();
        health
            .connections
            .sort_by(|a, b| a.connection_id.cmp(&b.connection_id));
        health
    }

    async fn send_to_thread(
        &self,
        thread_id: &ThreadId,
        message: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        let shared = &self.shared;
        shared.refuse_if_shut_down()?;
        let frame = TextFrame::from_json(&message)?;
        let fan = shared.local.send_to_thread(thread_id, &frame);
        let remote = shared.replica.thread_nodes(thread_id);
        shared
            .send(
                DeliveryTarget::Thread(thread_id.clone()),
                &fan,
                remote,
                || BusMessage::Thread {
                    origin: shared.cluster.node_id().to_owned(),
                    thread: thread_id.clone(),
                    frame: frame.as_str().to_owned(),
                },
            )
            .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn history(head: u64, taken: u64, retained: std::ops::RangeInclusive<u64>, ts: u64) -> History {
        History {
            stream: 7,
            head,
            taken,
            oldest: *retained.start(),
            events: retained
                .map(|sequence| StoredEvent {
                    sequence,
                    event_type: "agent_thinking".to_owned(),
                    data: "{}".to_owned(),
                    timestamp: ts,
                })
                .collect(),
        }
    }

    const AGE: Duration = Duration::from_secs(60);

    #[test]
    fn resume_plans_say_what_was_lost() {
        let now = 1_000_000;
        // Exact resume: the read started after the offset; no notice.
        let (notice, events) = plan(
            &history(10, 10, 6..=10, now),
            Some(StreamOffset::new(7, 5)),
            AGE,
            now,
        );
        assert!(notice.is_none());
        assert_eq!(events.len(), 5);
        let h = history(10, 10, 4..=10, now);
        // Trimmed: 3 lost (1..=3 gone, client had 0).
        let (notice, _) = plan(&h, Some(StreamOffset::new(7, 0)), AGE, now);
        let notice = notice.unwrap();
        assert_eq!(
            (notice.reason, notice.lost),
            (ResyncReason::Trimmed, Some(3))
        );
        assert_eq!(notice.oldest_retained, Some(StreamOffset::new(7, 4)));
        // Another stream.
        let (notice, events) = plan(&h, Some(StreamOffset::new(8, 5)), AGE, now);
        assert_eq!(notice.unwrap().reason, ResyncReason::UnknownStream);
        assert_eq!(events.len(), 7);
        // Ahead.
        let (notice, events) = plan(&h, Some(StreamOffset::new(7, 11)), AGE, now);
        assert_eq!(notice.unwrap().reason, ResyncReason::Ahead);
        assert!(events.is_empty());
    }

    #[test]
    fn expired_pending_events_are_announced_to_a_fresh_connection() {
        let now = 1_000_000;
        // Taken through 4; 5..=10 pending but older than max_age.
        let h = history(10, 4, 5..=10, now - 61_000);
        let (notice, events) = plan(&h, None, AGE, now);
        let notice = notice.unwrap();
        assert_eq!(
            (notice.reason, notice.lost, notice.requested),
            (ResyncReason::Trimmed, Some(6), None)
        );
        assert!(events.is_empty());
        // Nothing pending: nothing to say.
        let (notice, _) = plan(&history(10, 10, 5..=10, now), None, AGE, now);
        assert!(notice.is_none());
    }
}
