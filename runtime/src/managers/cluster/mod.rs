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
//!   others' (see `presence`), re-read where a version changed, and drops
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
//! after `probe_interval` without a message it probes the subscription
//! (on a Redis Cluster: every `probe_interval`, each master), and a probe
//! unanswered within `probe_timeout` replaces the connection with a fresh
//! one, then the recovery above runs. A node that cannot renew
//! its heartbeat for `fence_after` fences itself: it closes its
//! connections with [`close::RESUME`](crate::close::RESUME) and refuses new ones
//! ([`ClusterFailure::Fenced`]) until Redis answers again, so no tab stays
//! open on a node the others have forgotten. [`LinkState`] says where the
//! node stands.

mod backplane;
mod bus;
mod config;
mod conn;
mod history_reads;
mod link;
mod maintenance;
mod presence;
mod redis_history;
mod stats;
mod target;
mod wire;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::{PushInfo, PushKind};
use tokio::sync::{mpsc, watch};

use crate::config::ManagerConfig;
use crate::connection::{CloseReason, TextFrame, WebSocketConnection, WebSocketHandle};
use crate::delivery::{Delivery, DeliveryTarget, NotDeliveredReason};
use crate::error::{ClusterFailure, ManagerError};
use crate::health::{ConnectionHealth, ConnectionSummary};
use crate::ids::{ConnectionId, IdempotencyKey, ThreadId, UserId};
use crate::managers::fan_out::{FanOut, bump};
use crate::managers::history;
use crate::managers::index::{IndexChange, IndexObserver, LocalIndex};
use crate::protocol::WebSocketManager;
use crate::registry::{BuildContext, BuildError, ConstructManager};
use crate::websocket_manager;

use backplane::{Backplane, PushHandler};
pub use config::{ClusterConfig, ClusterConfigBuilder};
use history_reads::HistoryReads;
use link::Link;
pub use link::LinkState;
use presence::{PresenceChange, Replica, presence_of};
use redis_history::RedisHistory;
pub use stats::ClusterStats;
use wire::BusMessage;

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
    /// The version of this node's presence hash in Redis (set with each
    /// rewrite; the heartbeat carries it).
    presence_version: AtomicU64,
    /// The version of each other node's presence this node last read.
    presence_versions: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Maintenance ticks so far (every `FULL_REFRESH_EVERY`th reads all).
    refreshes: AtomicU64,
    /// The history reads of registering connections: bounded
    /// (`ClusterConfig::history_reads`), shared per user when they wait.
    history_reads: HistoryReads,
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
            // Subscription confirmations and the like carry nothing to act
            // on; a `sunsubscribe` is the server dropping a sharded
            // subscription (its slot moved): a loss, like a disconnection.
            if !matches!(
                info.kind,
                PushKind::Message
                    | PushKind::SMessage
                    | PushKind::Disconnection
                    | PushKind::SUnsubscribe
            ) {
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
        let observer: IndexObserver = Box::new(move |change: IndexChange<'_>| {
            let change = match change {
                IndexChange::Joined(c) => {
                    PresenceChange::Join(c.connection_id.clone(), presence_of(c))
                }
                IndexChange::Left(id) => PresenceChange::Leave(id.clone()),
                IndexChange::Moved(c) => {
                    PresenceChange::Moved(c.connection_id.clone(), presence_of(c))
                }
            };
            if queue.try_send(change).is_err() {
                dirty.store(true, Ordering::SeqCst);
            }
        });
        let history_reads = cluster.history_reads();
        let shared = Arc::new(Shared {
            local: LocalIndex::observed(config.clone(), observer),
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
            presence_version: AtomicU64::new(0),
            presence_versions: std::sync::Mutex::default(),
            refreshes: AtomicU64::new(0),
            history_reads: HistoryReads::new(history_reads),
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
    pub fn stats(&self) -> crate::managers::stats::ManagerStats {
        self.shared.local.stats(None, 0)
    }

    /// What this node knows of the cluster.
    pub fn cluster_stats(&self) -> ClusterStats {
        ClusterStats {
            node_id: self.node_id().to_owned(),
            ready: self.shared.is_ready(),
            local_connections: self.shared.local.connection_count(),
            remote_connections: self.shared.replica.len(),
            remote_nodes: self.shared.replica.nodes().len(),
            inbound_dropped: self.shared.inbound_dropped.load(Ordering::Relaxed),
            audits: self.shared.audits.load(Ordering::Relaxed),
            link: self.shared.link_state(),
            reconnects: self.shared.link.reconnects.load(Ordering::Relaxed),
            probe_timeouts: self.shared.link.probe_timeouts.load(Ordering::Relaxed),
            fenced: self.shared.link.fenced.load(Ordering::Relaxed),
            history_read_waits: self.shared.history_reads.waits(),
            history_reads_shared: self.shared.history_reads.shared(),
            resent_appends: self.shared.backplane.resent_appends(),
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

    /// Whether a connection of `user` is known anywhere in the cluster.
    fn has_user(&self, user: &UserId) -> bool {
        self.local.has_user(user) || self.replica.has_user(user)
    }

    /// `emit_critical_event`, or with `key` its retry-safe form.
    async fn emit(
        &self,
        user_id: &UserId,
        event_type: &str,
        data: serde_json::Value,
        key: Option<&IdempotencyKey>,
    ) -> Result<Delivery, ManagerError> {
        self.refuse_if_shut_down()?;
        let online = self.has_user(user_id);
        let appended = history::emit(
            &self.local,
            &self.store(),
            user_id,
            event_type,
            &data,
            online,
            key,
        )
        .await?;
        if appended.duplicate {
            return Ok(Delivery::duplicate().with_offset(appended.offset));
        }
        let outcome = appended.outcome;
        let remote = self.replica.user_nodes(user_id).len();
        let delivery = if !online {
            Delivery::queued(usize::try_from(appended.pending).unwrap_or(usize::MAX))
        } else if remote == 0 && outcome.deferred == 0 && outcome.delivered > 0 {
            Delivery::delivered(outcome.delivered, outcome.closed)
        } else {
            Delivery::relayed(outcome.delivered, outcome.closed, remote)
        };
        Ok(delivery.with_offset(appended.offset))
    }

    fn store(&self) -> RedisHistory<'_> {
        RedisHistory { shared: self }
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
    /// the bus for several (the user's or thread's bucket channel on a
    /// Redis Cluster); once either way.
    async fn relay(
        &self,
        remote: &HashSet<String>,
        message: &BusMessage,
    ) -> Result<(), ClusterFailure> {
        let keys = self.backplane.keys();
        let channel = match remote.iter().next() {
            Some(node) if remote.len() == 1 => keys.node_channel(node),
            _ => keys.bus_of(message),
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
                bump(&self.local.totals().failed, 1);
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

impl crate::managers::idempotent::IdempotentEmit for ClusterWebSocketManager {
    async fn emit_critical_event_with_key(
        &self,
        user_id: &UserId,
        key: &IdempotencyKey,
        event_type: &str,
        data: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        self.shared.emit(user_id, event_type, data, Some(key)).await
    }
}

#[websocket_manager(name = "cluster", mode = "unified", readiness = Self::readiness)]
impl WebSocketManager for ClusterWebSocketManager {
    async fn add_connection(&self, connection: WebSocketConnection) -> Result<(), ManagerError> {
        let shared = &self.shared;
        shared.refuse_if_shut_down()?;
        shared.refuse_if_fenced()?;
        shared.wait_ready("add connection").await?;
        let id = connection.connection_id.clone();
        history::register(&shared.local, &shared.store(), connection, || {
            // Fenced meanwhile: the fence closed the others; this one too.
            shared.refuse_if_fenced().inspect_err(|_| {
                shared.local.remove(&id, crate::close::fenced());
            })
        })
        .await
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
        self.shared.has_user(user_id)
    }

    fn get_connection_id_by_websocket(&self, websocket: &WebSocketHandle) -> Option<ConnectionId> {
        self.shared.local.by_socket(websocket)
    }

    fn update_connection_thread(&self, connection_id: &ConnectionId, thread_id: ThreadId) -> bool {
        let shared = &self.shared;
        if shared.local.update_thread(connection_id, thread_id.clone()) {
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
        self.shared.emit(user_id, event_type, data, None).await
    }

    fn get_connection_health(&self, user_id: &UserId) -> ConnectionHealth {
        let shared = &self.shared;
        let mut health = ConnectionHealth::empty(user_id.clone());
        shared.local.health_into(user_id, &mut health);
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
        health.partial = !shared.is_ready();
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
