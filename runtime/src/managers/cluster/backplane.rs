//! [`Backplane`]: every Redis call the cluster manager makes, each bounded
//! by the command timeout and answered with a typed [`ClusterFailure`].
//!
//! One `redis::aio::ConnectionManager` over RESP3 carries commands and the
//! two subscriptions (the bus and this node's channel) on one multiplexed
//! TCP connection; it reconnects by itself after an I/O error and
//! resubscribes, and tells the push handler when the connection dropped
//! (what was published meanwhile is lost to this node: see the audit in
//! [`super`]).
//!
//! A connection that goes silent without an I/O error (a black-holed TCP
//! connection: an expired NAT entry, a firewall that dropped its state, a
//! failover that moved the address) gives redis-rs only timeouts, on which
//! it does not reconnect. So the connection is replaceable:
//! [`Backplane::rebuild`] makes a brand-new client and connection (a fresh
//! TCP connection) and retires the old one; the [`LinkClock`] records when
//! the current connection last answered a command and last delivered a
//! push, which the link watchdog in [`super`] reads to decide.
//!
//! On a Redis Cluster the connection is a `ClusterConnection` instead (one
//! per master, sharded subscriptions), behind the same [`Conn`] type: see
//! `conn`. Every pipeline here is single-slot there (see [`Keys`] for the
//! hash tags); the per-user reads of an audit are grouped by slot.
//!
//! Under Redis Sentinel the address is not fixed: [`Backplane::follow_primary`]
//! asks the sentinels which server is the primary each time the node
//! (re)joins, and moves the connection there when it changed. A primary
//! that died or was demoted fails the node's commands (refused, or
//! `READONLY`), the node leaves the ready state, and its next join asks
//! again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    Client, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, RedisConnectionInfo, Script,
    Value,
};

use crate::error::ClusterFailure;
use crate::ids::{ConnectionId, IdempotencyKey, UserId};
use crate::offset::StreamOffset;

use super::config::{ClusterConfig, resend_window};
use super::conn::{Conn, Node};
use super::presence::PresenceChange;
use super::target::RedisTarget;
use super::wire::{BusMessage, Keys, PresenceEntry};

/// Numbers, stores and publishes one critical event atomically
/// (`append.lua` says how, and its KEYS and ARGV).
const APPEND: &str = include_str!("append.lua");

/// Reads what a connection catching up needs, in one atomic snapshot
/// (`read.lua` says how, and its KEYS and ARGV).
const READ: &str = include_str!("read.lua");

/// Marks the events through a sequence as taken (`taken.lua` says how,
/// and its KEYS and ARGV).
const TAKEN: &str = include_str!("taken.lua");

/// Retires a stream whose numbering went backwards (`rotate.lua` says how,
/// and its KEYS and ARGV).
const ROTATE: &str = include_str!("rotate.lua");

/// A critical event as the append script stored it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Appended {
    pub offset: StreamOffset,
    /// Events no connection has taken, this one included.
    pub pending: u64,
    /// A retry of an idempotency key: nothing was stored, `offset` is the
    /// first attempt's.
    pub duplicate: bool,
    /// The Redis client re-sent this append after the server had stored it
    /// (see [`Attempts`]): nothing was stored or published again, `offset`
    /// and `pending` are the first store's. For the caller, the event was
    /// stored once, by this call.
    pub resent: bool,
}

/// The attempt keys of a node's appends on a Redis Cluster.
///
/// redis-rs's cluster connection re-sends a command whose connection
/// dropped before the answer came (`RetryMethod::Reconnect` in
/// `cluster_handling/async_connection/request.rs`, `choose_response`; an
/// I/O error other than a drop is `RetryImmediately`), so one append can
/// run twice on the server: the same event stored under two offsets. Each
/// append without an idempotency key of the caller's therefore carries a
/// key of its own, unique to the call: the first run sets it (with the
/// offset) in the same atomic step that stores the event, and a re-send of
/// the same command finds it and is answered with that offset, storing and
/// publishing nothing. A one-server or Sentinel connection (redis-rs's
/// `ConnectionManager`) never re-sends a command (the error goes to the
/// caller, the reconnection happens in the background): no attempt key
/// there.
#[derive(Debug)]
struct Attempts {
    /// `<node id>:<random incarnation>`: a node restarted under the same
    /// id starts its counter again, so the incarnation tells the runs apart.
    name: String,
    counter: AtomicU64,
    /// How long an attempt key lives (`resend_window`).
    window: Duration,
}

impl Attempts {
    fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}:{n}", self.name)
    }
}

/// Why an append stored nothing.
#[derive(Debug)]
pub(crate) enum AppendError {
    /// The user is offline and `pending` untaken events fill the stream.
    Full {
        pending: u64,
    },
    Failed(ClusterFailure),
}

/// What a probe of every master of a Redis Cluster found
/// ([`Backplane::probe_masters`]): each master that serves a slot of this
/// node's keys or channels got a `PING` routed by that slot, on the
/// connection that carries the slot's commands and sharded subscriptions.
#[derive(Debug, Default)]
pub(crate) struct MastersProbe {
    /// Masters that answered.
    pub answered: usize,
    /// Masters that did not (address, slot and why), or why none could be
    /// asked.
    pub unanswered: Vec<String>,
}

impl MastersProbe {
    fn failed(why: String) -> Self {
        MastersProbe {
            answered: 0,
            unanswered: vec![why],
        }
    }
}

/// What a refresh learned of another node (see [`Backplane::read_cluster`]).
#[derive(Debug)]
pub(crate) enum NodePresence {
    /// Its heartbeat expired.
    Dead,
    /// Its presence is at the version this node already read.
    Unchanged,
    /// Its presence, read at `version`.
    Read {
        version: u64,
        entries: Vec<(ConnectionId, PresenceEntry)>,
    },
}

/// One retained event read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredEvent {
    pub sequence: u64,
    pub event_type: String,
    pub data: String,
    pub timestamp: u64,
}

/// What a connection catching up gets from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct History {
    /// The user's stream id.
    pub stream: u64,
    pub head: u64,
    pub taken: u64,
    /// The oldest retained sequence (0: nothing retained).
    pub oldest: u64,
    pub events: Vec<StoredEvent>,
    /// The read retired the user's stream: the client's offset was beyond
    /// its head, so its numbering had gone backwards.
    pub rotated: bool,
}

/// Where the messages of the subscriptions go (never blocks).
pub(crate) type PushHandler = Arc<dyn Fn(PushInfo) + Send + Sync>;

/// When the current connection to Redis was last heard from. Times are
/// milliseconds since the clock was made (0: never), so they fit atomics.
#[derive(Debug)]
pub(crate) struct LinkClock {
    base: Instant,
    /// Which connection is current; bumped by every rebuild. Answers and
    /// pushes from an older one are not counted (nor passed on).
    generation: AtomicU64,
    /// The last answer to a command on the current connection.
    answered_at: AtomicU64,
    /// The last push (any message, probes included) on the current one.
    pushed_at: AtomicU64,
    /// `generation + 1` once the current connection is subscribed.
    subscribed: AtomicU64,
    /// Commands that timed out on the current connection since its last
    /// answer.
    timeouts: AtomicU64,
    /// Wakes the watchdog when a command timed out.
    pub timed_out: tokio::sync::Notify,
}

impl LinkClock {
    fn new() -> Self {
        LinkClock {
            base: Instant::now(),
            generation: AtomicU64::new(0),
            answered_at: AtomicU64::new(0),
            pushed_at: AtomicU64::new(0),
            subscribed: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            timed_out: tokio::sync::Notify::new(),
        }
    }

    /// Now, on this clock (never 0).
    pub fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn answered(&self, generation: u64) {
        if self.generation() == generation {
            self.answered_at.store(self.now(), Ordering::SeqCst);
            self.timeouts.store(0, Ordering::SeqCst);
        }
    }

    fn timed_out(&self, generation: u64) {
        if self.generation() == generation {
            self.timeouts.fetch_add(1, Ordering::SeqCst);
            self.timed_out.notify_one();
        }
    }

    /// The last answer to a command on the current connection.
    pub fn answered_at(&self) -> u64 {
        self.answered_at.load(Ordering::SeqCst)
    }

    /// The last push on the current connection.
    pub fn pushed_at(&self) -> u64 {
        self.pushed_at.load(Ordering::SeqCst)
    }

    /// Whether the current connection has subscribed.
    pub fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::SeqCst) == self.generation() + 1
    }

    /// Commands timed out on the current connection since its last answer.
    pub fn timeouts(&self) -> u64 {
        self.timeouts.load(Ordering::SeqCst)
    }
}

/// Where the primary is.
enum Source {
    /// One server, always the same.
    Server(Client),
    /// Whatever the sentinels name; `primary` is the last answer.
    Sentinel {
        sentinels: Box<tokio::sync::Mutex<SentinelClient>>,
        master: String,
        primary: RwLock<Option<Client>>,
    },
    /// A Redis Cluster, reached through any of these nodes.
    Cluster(Vec<String>),
}

pub(crate) struct Backplane {
    source: Source,
    push: PushHandler,
    /// Replicas that must acknowledge a critical event before it is
    /// published and its emit answers `Ok` (0: none).
    wait_for_replicas: usize,
    /// The exact bytes of this node's probe message: recognised (and
    /// swallowed) by the push handler, whatever the inbound buffer holds.
    probe: Vec<u8>,
    /// The current connection with its generation (`None` until Sentinel
    /// named a primary). Cloned out of the lock, never held across an
    /// `.await`.
    connection: RwLock<(u64, Option<Conn>)>,
    clock: Arc<LinkClock>,
    keys: Keys,
    node: String,
    timeout: Duration,
    /// Redis Cluster only: see [`Attempts`].
    attempts: Option<Attempts>,
    /// Appends redis-rs re-sent after the server had stored them, answered
    /// with the first store's offset.
    resent_appends: AtomicU64,
    append: Script,
    read: Script,
    taken: Script,
    rotate: Script,
}

impl std::fmt::Debug for Backplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backplane")
            .field("prefix", &self.keys.prefix())
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn engine(error: &redis::RedisError) -> ClusterFailure {
    if error.is_connection_refusal() {
        ClusterFailure::Unreachable(error.to_string())
    } else {
        ClusterFailure::Engine(error.to_string())
    }
}

fn protocol(what: &str) -> ClusterFailure {
    ClusterFailure::Protocol(what.to_owned())
}

/// Runs one call on connection `generation` within `timeout`, and tells
/// the clock how it went.
async fn bounded<T>(
    clock: &LinkClock,
    timeout: Duration,
    generation: u64,
    call: impl Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, ClusterFailure> {
    let expired = ClusterFailure::Timeout {
        timeout_ms: millis(timeout),
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => {
            clock.answered(generation);
            Ok(value)
        }
        // redis-rs's own response timeout: the command was sent.
        Ok(Err(error)) if error.is_timeout() => {
            clock.timed_out(generation);
            Err(expired)
        }
        Ok(Err(error)) => {
            // An answer from Redis (a script error...) is still an answer;
            // a failed connection is not.
            if !(error.is_io_error()
                || error.is_connection_dropped()
                || error.is_connection_refusal())
            {
                clock.answered(generation);
            }
            Err(engine(&error))
        }
        Err(_) => {
            clock.timed_out(generation);
            Err(expired)
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// What receives connection `generation`'s pushes: passes them to `push`
/// while it is the current one, and swallows this node's probes.
fn push_sender(
    push: &PushHandler,
    probe: &[u8],
    clock: &Arc<LinkClock>,
    generation: u64,
) -> impl Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static {
    let (push, probe, clock) = (Arc::clone(push), probe.to_vec(), Arc::clone(clock));
    move |info: PushInfo| -> Result<(), ()> {
        // A retired connection that comes back to life must not deliver
        // twice what the current one delivers.
        if clock.generation() != generation {
            return Ok(());
        }
        // A disconnection is news about the link, not a sign of life.
        if info.kind != PushKind::Disconnection {
            clock.pushed_at.store(clock.now(), Ordering::SeqCst);
        }
        let is_probe = matches!(info.kind, PushKind::Message | PushKind::SMessage)
            && matches!(info.data.get(1), Some(Value::BulkString(bytes)) if bytes.as_slice() == probe.as_slice());
        if !is_probe {
            push(info);
        }
        Ok(())
    }
}

/// A lazy connection manager (connects on first use) whose pushes reach
/// `push` only while it is generation `generation`.
fn open(
    client: Client,
    timeout: Duration,
    push: &PushHandler,
    probe: &[u8],
    clock: &Arc<LinkClock>,
    generation: u64,
) -> Result<Conn, redis::RedisError> {
    let sender = push_sender(push, probe, clock, generation);
    let manager_config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(timeout))
        .set_connection_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1))
        .set_push_sender(sender)
        .set_automatic_resubscription();
    ConnectionManager::new_lazy_with_config(client, manager_config).map(Conn::Server)
}

/// A Redis Cluster connection (connects in the background; commands wait
/// for it) over RESP3, whose pushes reach `push` only while it is
/// generation `generation`. redis-rs retries a command that met a
/// redirection (`MOVED`/`ASK`), a `TRYAGAIN` or `CLUSTERDOWN`, or a dropped
/// connection, a few times within the command timeout.
fn open_cluster(
    nodes: &[String],
    timeout: Duration,
    push: &PushHandler,
    probe: &[u8],
    clock: &Arc<LinkClock>,
    generation: u64,
) -> Result<Conn, redis::RedisError> {
    let client = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
        .use_protocol(ProtocolVersion::RESP3)
        .push_sender(push_sender(push, probe, clock, generation))
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(3)
        .min_retry_wait(20)
        .max_retry_wait(200)
        .build()?;
    let config = redis::cluster::ClusterConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout);
    Ok(Conn::Cluster(
        client.get_pending_async_connection_with_config(config),
    ))
}

impl Backplane {
    /// A lazy connection (made on first use, remade after every I/O
    /// failure, replaced by [`rebuild`](Self::rebuild));
    /// `push` receives the subscriptions' messages and disconnections.
    pub fn connect(config: &ClusterConfig, push: PushHandler) -> Result<Self, redis::RedisError> {
        let timeout = config.command_timeout();
        let keys = match config.target() {
            RedisTarget::Cluster { .. } => Keys::sharded(config.key_prefix()),
            _ => Keys::new(config.key_prefix()),
        };
        let probe = serde_json::to_vec(&BusMessage::Probe {
            origin: config.node_id().to_owned(),
        })
        .map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Client, "probe message", e.to_string()))
        })?;
        let clock = Arc::new(LinkClock::new());
        let (source, connection) = match config.target() {
            RedisTarget::Server(url) => {
                let info = url.as_str().into_connection_info()?;
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                let client = Client::open(info.set_redis_settings(settings))?;
                let connection = open(client.clone(), timeout, &push, &probe, &clock, 0)?;
                (Source::Server(client), Some(connection))
            }
            RedisTarget::Sentinel { sentinels, master } => {
                let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(
                    RedisConnectionInfo::default().set_protocol(ProtocolVersion::RESP3),
                );
                let sentinel = SentinelClient::build(
                    sentinels.clone(),
                    master.clone(),
                    Some(node),
                    SentinelServerType::Master,
                )?;
                let source = Source::Sentinel {
                    sentinels: Box::new(tokio::sync::Mutex::new(sentinel)),
                    master: master.clone(),
                    primary: RwLock::new(None),
                };
                // No connection until the sentinels name the primary
                // (`follow_primary`, on the node's first join).
                (source, None)
            }
            RedisTarget::Cluster { nodes } => {
                let connection = open_cluster(nodes, timeout, &push, &probe, &clock, 0)?;
                (Source::Cluster(nodes.clone()), Some(connection))
            }
        };
        Ok(Backplane {
            source,
            push,
            wait_for_replicas: config.wait_for_replicas(),
            probe,
            connection: RwLock::new((0, connection)),
            clock,
            keys,
            node: config.node_id().to_owned(),
            timeout,
            attempts: matches!(config.target(), RedisTarget::Cluster { .. }).then(|| Attempts {
                name: format!("{}:{:016x}", config.node_id(), crate::ids::random_u64()),
                counter: AtomicU64::new(0),
                window: resend_window(config),
            }),
            resent_appends: AtomicU64::new(0),
            append: Script::new(APPEND),
            read: Script::new(READ),
            taken: Script::new(TAKEN),
            rotate: Script::new(ROTATE),
        })
    }

    /// Under Sentinel: asks the sentinels which server is the primary and,
    /// when it is not the one this node talks to, moves there (a fresh
    /// connection). `Ok(true)`: it moved (events published meanwhile may
    /// have been missed: audit). One server: nothing to do.
    pub async fn follow_primary(&self) -> Result<bool, ClusterFailure> {
        let Source::Sentinel {
            sentinels,
            master,
            primary,
        } = &self.source
        else {
            return Ok(false);
        };
        // Every sentinel may be tried, each bounded by the command timeout.
        let ask = async { sentinels.lock().await.async_get_client().await };
        let client = match tokio::time::timeout(self.timeout * 3, ask).await {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => {
                return Err(ClusterFailure::Unreachable(format!(
                    "no sentinel named a primary for `{master}`: {error}"
                )));
            }
            Err(_) => {
                return Err(ClusterFailure::Unreachable(format!(
                    "no sentinel answered within {} ms for `{master}`",
                    millis(self.timeout * 3)
                )));
            }
        };
        let address = client.get_connection_info().addr().clone();
        let known = primary
            .read()
            .as_ref()
            .map(|c| c.get_connection_info().addr().clone());
        if known.as_ref() == Some(&address) {
            return Ok(false);
        }
        *primary.write() = Some(client);
        self.rebuild()?;
        tracing::warn!(node = %self.node, %master, %address, previous = ?known.map(|a| a.to_string()),
            "following the primary Redis Sentinel names");
        Ok(true)
    }

    /// A new connection to the one server, the primary Sentinel last named
    /// (`None`: none named yet) or the Redis Cluster, as generation
    /// `generation`.
    fn open(&self, generation: u64) -> Result<Option<Conn>, redis::RedisError> {
        let (timeout, push, probe, clock) = (self.timeout, &self.push, &self.probe, &self.clock);
        let client = match &self.source {
            Source::Server(client) => client.clone(),
            Source::Sentinel { primary, .. } => match primary.read().clone() {
                Some(client) => client,
                None => return Ok(None),
            },
            Source::Cluster(nodes) => {
                return open_cluster(nodes, timeout, push, probe, clock, generation).map(Some);
            }
        };
        open(client, timeout, push, probe, clock, generation).map(Some)
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// When the current connection was last heard from.
    pub fn clock(&self) -> &Arc<LinkClock> {
        &self.clock
    }

    /// Retires the current connection and makes a brand-new one (a new
    /// client, so a new TCP connection on first use). Nothing from the old
    /// one counts or is passed on any more; its commands in flight end with
    /// their timeout. Returns the new generation.
    pub fn rebuild(&self) -> Result<u64, ClusterFailure> {
        let mut current = self.connection.write();
        let generation = current.0 + 1;
        let Some(connection) = self.open(generation).map_err(|e| engine(&e))? else {
            return Err(ClusterFailure::NotReady);
        };
        // The generation first: from here on the old connection is mute.
        self.clock.generation.store(generation, Ordering::SeqCst);
        self.clock.timeouts.store(0, Ordering::SeqCst);
        let now = self.clock.now();
        // A fresh connection gets a full probe interval before it is judged.
        self.clock.answered_at.store(now, Ordering::SeqCst);
        self.clock.pushed_at.store(now, Ordering::SeqCst);
        *current = (generation, Some(connection));
        Ok(generation)
    }

    /// The current connection, cloned out of the lock; `NotReady` while
    /// Sentinel has named no primary yet.
    fn current(&self) -> Result<(u64, Conn), ClusterFailure> {
        let current = self.connection.read();
        match &current.1 {
            Some(connection) => Ok((current.0, connection.clone())),
            None => Err(ClusterFailure::NotReady),
        }
    }

    /// Runs one call on connection `generation` within the command timeout,
    /// and tells the clock how it went.
    async fn bounded<T>(
        &self,
        generation: u64,
        call: impl Future<Output = Result<T, redis::RedisError>>,
    ) -> Result<T, ClusterFailure> {
        bounded(&self.clock, self.timeout, generation, call).await
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
    ) -> Result<T, ClusterFailure> {
        let (generation, mut connection) = self.current()?;
        self.bounded(generation, command.query_async(&mut connection))
            .await
    }

    async fn pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, ClusterFailure> {
        let (generation, mut connection) = self.current()?;
        self.bounded(generation, pipe.query_async(&mut connection))
            .await
    }

    /// Subscribes the current connection to the bus and this node's
    /// channel.
    pub async fn subscribe(&self) -> Result<(), ClusterFailure> {
        let (generation, mut connection) = self.current()?;
        let channels = self.keys.channels(&self.node);
        self.bounded(generation, connection.subscribe(&channels))
            .await?;
        // A connection retired meanwhile does not count as subscribed.
        if self.clock.generation() != generation {
            return Err(ClusterFailure::NotReady);
        }
        self.clock
            .subscribed
            .store(generation + 1, Ordering::SeqCst);
        Ok(())
    }

    /// Probes the link: publishes this node's probe on its own channel when
    /// subscribed (the watchdog then waits for it to come back as a push),
    /// a PING otherwise (it waits for the answer). The future holds the
    /// connection and the clock, not the backplane, so a probe in flight
    /// never keeps a dropped manager alive.
    pub fn probe(&self) -> impl Future<Output = Result<(), ClusterFailure>> + Send + 'static {
        let current = self.current();
        let command = match &current {
            Ok(_) if self.clock.subscribed() => {
                let mut publish = redis::cmd(self.publish_command());
                publish
                    .arg(self.keys.node_channel(&self.node))
                    .arg(self.probe.as_slice());
                publish
            }
            _ => redis::cmd("PING"),
        };
        let (clock, timeout) = (Arc::clone(&self.clock), self.timeout);
        async move {
            let (generation, mut connection) = current?;
            bounded(
                &clock,
                timeout,
                generation,
                command.query_async::<Value>(&mut connection),
            )
            .await
            .map(drop)
        }
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.source, Source::Cluster(_))
    }

    /// On a Redis Cluster, probes every master this node uses (see
    /// [`MastersProbe`]) within `limit`; `None` on one server (the probe of
    /// [`probe`](Self::probe) covers its one connection). Like `probe`, the
    /// future holds the connection and the clock, not the backplane.
    pub fn probe_masters(
        &self,
        limit: Duration,
    ) -> Option<impl Future<Output = MastersProbe> + Send + 'static> {
        if !self.is_cluster() {
            return None;
        }
        let current = self.current();
        let buckets = self.keys.bucket_slots();
        let clock = Arc::clone(&self.clock);
        Some(async move {
            let (generation, connection) = match current {
                Ok(current) => current,
                Err(error) => return MastersProbe::failed(format!("no connection: {error}")),
            };
            let deadline = tokio::time::Instant::now() + limit;
            let mut asking = connection.clone();
            let ranges = match tokio::time::timeout_at(deadline, asking.slot_masters()).await {
                Ok(Ok(ranges)) => ranges,
                Ok(Err(error)) => {
                    return MastersProbe::failed(format!("CLUSTER SLOTS failed: {error}"));
                }
                Err(_) => {
                    return MastersProbe::failed(format!(
                        "no master answered CLUSTER SLOTS within {} ms",
                        millis(limit)
                    ));
                }
            };
            // One slot of ours per master: every key and channel of this
            // node is in a bucket's slot.
            let mut picked: Vec<(String, u16)> = Vec::new();
            for slot in buckets {
                if let Some((_, _, master)) = ranges
                    .iter()
                    .find(|(first, last, _)| (*first..=*last).contains(&slot))
                    && !picked.iter().any(|(m, _)| m == master)
                {
                    picked.push((master.clone(), slot));
                }
            }
            let mut pings = tokio::task::JoinSet::new();
            for (master, slot) in picked {
                let mut connection = connection.clone();
                pings.spawn(async move {
                    let answered =
                        tokio::time::timeout_at(deadline, connection.ping_slot(slot)).await;
                    (master, slot, answered)
                });
            }
            let mut probe = MastersProbe::default();
            while let Some(done) = pings.join_next().await {
                let Ok((master, slot, answered)) = done else {
                    probe.unanswered.push("a probe task failed".to_owned());
                    continue;
                };
                match answered {
                    Ok(Ok(())) => probe.answered += 1,
                    Ok(Err(error)) => probe
                        .unanswered
                        .push(format!("{master} (slot {slot}): {error}")),
                    Err(_) => probe.unanswered.push(format!(
                        "{master} (slot {slot}): no answer within {} ms",
                        millis(limit)
                    )),
                }
            }
            if probe.unanswered.is_empty() {
                clock.answered(generation);
            }
            probe
        })
    }

    /// Appends (and publishes) a critical event.
    #[allow(clippy::too_many_arguments)]
    pub async fn append(
        &self,
        user: &UserId,
        candidate_stream: u64,
        event_type: &str,
        data: &str,
        timestamp: u64,
        online: bool,
        maxlen: usize,
        stream_ttl: Duration,
        meta_ttl: Duration,
        idempotency: Option<(&IdempotencyKey, Duration)>,
    ) -> Result<Appended, AppendError> {
        let (generation, mut connection) = self.current().map_err(AppendError::Failed)?;
        let mut invocation = self.append.prepare_invoke();
        invocation
            .key(self.keys.stream_meta(user))
            .key(self.keys.stream(user))
            .arg(candidate_stream.to_string())
            .arg(maxlen)
            .arg(millis(stream_ttl).max(1))
            .arg(millis(meta_ttl).max(1))
            .arg(event_type)
            .arg(data)
            .arg(timestamp.to_string())
            .arg(if online { "1" } else { "0" })
            .arg(self.keys.user_bus(user))
            .arg(user.as_str())
            .arg(if self.wait_for_replicas == 0 {
                "1"
            } else {
                "0"
            })
            .arg(self.publish_command());
        // The caller's key wins: with it, a re-send is the caller's retry
        // (answered `Duplicate`), as it always was.
        if let Some((key, window)) = idempotency {
            invocation
                .key(self.keys.idempotency(user, key))
                .arg(millis(window).max(1));
        } else if let Some(attempts) = &self.attempts {
            invocation
                .key(self.keys.attempt(user, &attempts.next()))
                .arg(millis(attempts.window).max(1))
                .arg("attempt");
        }
        let value: Value = self
            .bounded(generation, invocation.invoke_async(&mut connection))
            .await
            .map_err(AppendError::Failed)?;
        let items = array(value).map_err(AppendError::Failed)?;
        let stream_id = |stream: &Value| {
            text(stream)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| AppendError::Failed(protocol("stream id is not a number")))
        };
        match items.as_slice() {
            [status, stream, sequence] if text(status).as_deref() == Some("dup") => Ok(Appended {
                offset: StreamOffset::new(
                    stream_id(stream)?,
                    number(sequence).map_err(AppendError::Failed)?,
                ),
                pending: 0,
                duplicate: true,
                resent: false,
            }),
            [status, pending] if text(status).as_deref() == Some("full") => {
                Err(AppendError::Full {
                    pending: number(pending).map_err(AppendError::Failed)?,
                })
            }
            [status, stream, sequence, pending, rest @ ..] => {
                let resent = text(status).as_deref() == Some("again");
                let appended = Appended {
                    offset: StreamOffset::new(
                        stream_id(stream)?,
                        number(sequence).map_err(AppendError::Failed)?,
                    ),
                    pending: number(pending).map_err(AppendError::Failed)?,
                    duplicate: false,
                    resent,
                };
                if resent {
                    self.resent_appends.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(user_id = %user, offset = %appended.offset,
                        "the Redis client re-sent an append the server had already stored (its connection dropped before the answer): answered with the first store's offset, nothing stored or published twice");
                }
                match rest {
                    [] => Ok(appended),
                    [message] => {
                        let message = text(message)
                            .ok_or_else(|| AppendError::Failed(protocol("append message")))?;
                        self.replicate_then_publish(generation, &mut connection, user, message)
                            .await
                            .map_err(AppendError::Failed)?;
                        Ok(appended)
                    }
                    _ => Err(AppendError::Failed(protocol("append script answer"))),
                }
            }
            _ => Err(AppendError::Failed(protocol("append script answer"))),
        }
    }

    /// With `wait_for_replicas`: waits (on the connection that stored the
    /// event, bounded by the command timeout) until that many replicas
    /// acknowledged every write so far, then publishes the event. Fewer
    /// acknowledgements: `NotReplicated`, and the event is not published (it
    /// is stored on the primary, and a failover may lose it).
    async fn replicate_then_publish(
        &self,
        generation: u64,
        connection: &mut Conn,
        user: &UserId,
        message: String,
    ) -> Result<(), ClusterFailure> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(self.wait_for_replicas)
            .arg(millis(self.timeout).saturating_sub(50).max(1));
        // On a Redis Cluster: on the master that stored the event.
        let meta = self.keys.stream_meta(user);
        let acknowledged: usize = self
            .bounded(generation, connection.query_where(&meta, &wait))
            .await?;
        if acknowledged < self.wait_for_replicas {
            return Err(ClusterFailure::NotReplicated {
                acknowledged,
                wanted: self.wait_for_replicas,
            });
        }
        let mut publish = redis::cmd(self.publish_command());
        publish.arg(self.keys.user_bus(user)).arg(message);
        self.bounded(generation, publish.query_async::<Value>(connection))
            .await
            .map(drop)
    }

    /// Reads what a connection resuming from `resume` is owed.
    pub async fn read_history(
        &self,
        user: &UserId,
        resume: Option<StreamOffset>,
        candidate_stream: u64,
        meta_ttl: Duration,
    ) -> Result<History, ClusterFailure> {
        let (generation, mut connection) = self.current()?;
        let mut invocation = self.read.prepare_invoke();
        invocation
            .key(self.keys.stream_meta(user))
            .key(self.keys.stream(user))
            .arg(resume.map_or(String::new(), |o| o.stream.to_string()))
            .arg(resume.map_or(0, |o| o.sequence).to_string())
            .arg(candidate_stream.to_string())
            .arg(millis(meta_ttl).max(1));
        let value: Value = self
            .bounded(generation, invocation.invoke_async(&mut connection))
            .await?;
        let items = array(value)?;
        let [stream, head, taken, oldest, entries, rotated] =
            <[Value; 6]>::try_from(items).map_err(|_| protocol("read script answer"))?;
        let stream = text(&stream)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| protocol("stream id is not a number"))?;
        let events = array(entries)?
            .into_iter()
            .map(stored_event)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(History {
            stream,
            head: number(&head)?,
            taken: number(&taken)?,
            oldest: number(&oldest)?,
            events,
            rotated: number(&rotated)? == 1,
        })
    }

    /// Records that a connection took the user's events through `head`.
    pub async fn mark_taken(
        &self,
        user: &UserId,
        head: StreamOffset,
    ) -> Result<(), ClusterFailure> {
        let (generation, mut connection) = self.current()?;
        let mut invocation = self.taken.prepare_invoke();
        invocation
            .key(self.keys.stream_meta(user))
            .arg(head.stream.to_string())
            .arg(head.sequence.to_string());
        self.bounded(
            generation,
            invocation.invoke_async::<Value>(&mut connection),
        )
        .await
        .map(drop)
    }

    /// Publishes `message` once on `channel`.
    pub async fn publish(
        &self,
        channel: String,
        message: &BusMessage,
    ) -> Result<(), ClusterFailure> {
        let text = serde_json::to_string(message).map_err(|e| protocol(&e.to_string()))?;
        let (generation, mut connection) = self.current()?;
        let mut publish = redis::cmd(self.publish_command());
        publish.arg(channel).arg(text);
        self.bounded(generation, publish.query_async::<Value>(&mut connection))
            .await
            .map(drop)
    }

    /// Appends redis-rs re-sent after the server had stored them (see
    /// [`Attempts`]).
    pub fn resent_appends(&self) -> u64 {
        self.resent_appends.load(Ordering::Relaxed)
    }

    /// `PUBLISH`, or `SPUBLISH` on a Redis Cluster.
    fn publish_command(&self) -> &'static str {
        match &self.source {
            Source::Cluster(_) => "SPUBLISH",
            _ => "PUBLISH",
        }
    }

    /// Writes presence changes to this node's hash and announces them, in
    /// one pipeline (one slot on a Redis Cluster), and forwards thread
    /// bindings to their nodes.
    pub async fn write_presence(&self, changes: &[PresenceChange]) -> Result<(), ClusterFailure> {
        let hash = self.keys.presence(&self.node);
        let bus = self.keys.bus();
        let origin = self.node.clone();
        let publish = self.publish_command();
        let mut binds = Vec::new();
        let mut pipe = redis::pipe();
        for change in changes {
            let message = match change {
                PresenceChange::Join(connection, entry) => {
                    pipe.hset(&hash, connection.as_str(), entry_json(entry)?)
                        .ignore();
                    BusMessage::Join {
                        origin: origin.clone(),
                        connection: connection.clone(),
                        entry: entry.clone(),
                    }
                }
                PresenceChange::Leave(connection) => {
                    pipe.hdel(&hash, connection.as_str()).ignore();
                    BusMessage::Leave {
                        origin: origin.clone(),
                        connection: connection.clone(),
                    }
                }
                PresenceChange::Moved(connection, entry) => {
                    // Into the hash too: a node that re-reads this node's
                    // presence must not lose the binding the bus announced.
                    pipe.hset(&hash, connection.as_str(), entry_json(entry)?)
                        .ignore();
                    let Some(thread) = entry.thread.clone() else {
                        continue;
                    };
                    BusMessage::Moved {
                        origin: origin.clone(),
                        connection: connection.clone(),
                        thread,
                    }
                }
                PresenceChange::Bind(node, connection, thread) => {
                    // Each on its node's channel (another slot on a Redis
                    // Cluster): after the pipeline.
                    binds.push((
                        self.keys.node_channel(node),
                        BusMessage::Bind {
                            origin: origin.clone(),
                            connection: connection.clone(),
                            thread: thread.clone(),
                        },
                    ));
                    continue;
                }
            };
            let text = serde_json::to_string(&message).map_err(|e| protocol(&e.to_string()))?;
            pipe.cmd(publish).arg(&bus).arg(text).ignore();
        }
        if !pipe.is_empty() {
            self.pipeline::<Value>(&pipe).await?;
        }
        for (channel, message) in binds {
            self.publish(channel, &message).await?;
        }
        Ok(())
    }

    /// Renews this node's heartbeat, which carries the version of its
    /// presence hash (see [`read_cluster`](Self::read_cluster)); answers
    /// whether the hash is still there (a Redis that lost its data has none).
    pub async fn heartbeat(&self, ttl: Duration, version: u64) -> Result<bool, ClusterFailure> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.keys.alive(&self.node))
            .arg(version)
            .arg("PX")
            .arg(millis(ttl).max(1))
            .ignore()
            .sadd(self.keys.nodes(), &self.node)
            .ignore()
            .hexists(self.keys.presence(&self.node), NODE_MARKER);
        let (exists,): (bool,) = self.pipeline(&pipe).await?;
        Ok(exists)
    }

    /// Replaces this node's presence hash with `entries` (plus a marker
    /// field, so an empty node still has a hash and the heartbeat can tell
    /// a flushed Redis from a node with no connection), as `version`.
    pub async fn rewrite_presence(
        &self,
        entries: &[(ConnectionId, PresenceEntry)],
        version: u64,
        ttl: Duration,
    ) -> Result<(), ClusterFailure> {
        let hash = self.keys.presence(&self.node);
        let mut pipe = redis::pipe();
        // The new version with the new hash, atomically: the other nodes
        // re-read a hash whose version they have not read yet.
        pipe.atomic()
            .del(&hash)
            .ignore()
            .hset(&hash, NODE_MARKER, "1")
            .ignore()
            .cmd("SET")
            .arg(self.keys.alive(&self.node))
            .arg(version)
            .arg("PX")
            .arg(millis(ttl).max(1))
            .ignore();
        for chunk in entries.chunks(512) {
            let mut fields = Vec::with_capacity(chunk.len());
            for (connection, entry) in chunk {
                fields.push((connection.as_str().to_owned(), entry_json(entry)?));
            }
            pipe.hset_multiple(&hash, &fields).ignore();
        }
        self.pipeline::<Value>(&pipe).await.map(drop)
    }

    /// Every other node, with its presence when it must be read: every
    /// node when `known` is `None` (a full read), else those whose presence
    /// version (in the heartbeat key) is not the one `known` has for them.
    ///
    /// The others' presence reaches this node on the bus; a node rewrites
    /// its hash under a new version only when announcements may have been
    /// lost (a failed write, a Redis that lost its data, a rejoin), and this
    /// node reads in full after it lost messages itself (a dropped
    /// connection, a full inbound buffer). So a refresh costs one small key
    /// per node, not every connection of the cluster each heartbeat.
    pub async fn read_cluster(
        &self,
        known: Option<&HashMap<String, u64>>,
    ) -> Result<Vec<(String, NodePresence)>, ClusterFailure> {
        let nodes: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.keys.nodes()))
            .await?;
        let others: Vec<String> = nodes.into_iter().filter(|n| *n != self.node).collect();
        if others.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for node in &others {
            pipe.get(self.keys.alive(node));
        }
        let versions: Vec<Option<String>> = self.pipeline(&pipe).await?;
        let mut cluster = Vec::with_capacity(others.len());
        let mut to_read = Vec::new();
        for (node, version) in others.into_iter().zip(versions) {
            let Some(version) = version else {
                cluster.push((node, NodePresence::Dead));
                continue;
            };
            // A node of an older release writes `1`: read as a version.
            let version = version.parse().unwrap_or(0);
            if known.is_some_and(|known| known.get(&node) == Some(&version)) {
                cluster.push((node, NodePresence::Unchanged));
            } else {
                to_read.push((node, version));
            }
        }
        if to_read.is_empty() {
            return Ok(cluster);
        }
        let mut pipe = redis::pipe();
        for (node, _) in &to_read {
            pipe.hgetall(self.keys.presence(node));
        }
        let hashes: Vec<Value> = self.pipeline(&pipe).await?;
        for ((node, version), hash) in to_read.into_iter().zip(hashes) {
            let fields: Vec<(String, String)> =
                redis::from_redis_value(hash).map_err(|e| engine(&e.into()))?;
            let entries = fields
                .into_iter()
                .filter(|(field, _)| field != NODE_MARKER)
                .filter_map(|(field, value)| {
                    // A malformed entry (another version) is skipped, not fatal.
                    Some((
                        ConnectionId::new(field).ok()?,
                        serde_json::from_str(&value).ok()?,
                    ))
                })
                .collect();
            cluster.push((node, NodePresence::Read { version, entries }));
        }
        Ok(cluster)
    }

    /// Removes a dead node's traces.
    pub async fn forget_node(&self, node: &str) -> Result<(), ClusterFailure> {
        let mut pipe = redis::pipe();
        pipe.srem(self.keys.nodes(), node)
            .ignore()
            .del(self.keys.presence(node))
            .ignore();
        self.pipeline::<Value>(&pipe).await.map(drop)
    }

    /// The stream head of each user (`None`: no stream).
    pub async fn stream_heads(
        &self,
        users: &[UserId],
    ) -> Result<Vec<Option<StreamOffset>>, ClusterFailure> {
        let commands = users.iter().map(|user| {
            let mut hmget = redis::cmd("HMGET");
            hmget.arg(self.keys.stream_meta(user)).arg("e").arg("s");
            (self.keys.group(user), hmget)
        });
        let answers = self.grouped(commands).await?;
        Ok(answers
            .into_iter()
            .map(|answer| {
                let (stream, sequence): (Option<String>, Option<String>) =
                    redis::from_redis_value(answer).ok()?;
                Some(StreamOffset::new(
                    stream?.parse().ok()?,
                    sequence?.parse().ok()?,
                ))
            })
            .collect())
    }

    /// Each user's stream head and, for `at` on that stream and not beyond
    /// it, the retained event there (to compare with what a connection was
    /// given), for the audit.
    pub async fn stream_states(
        &self,
        probes: &[(UserId, Option<StreamOffset>)],
    ) -> Result<Vec<(Option<StreamOffset>, Option<StoredEvent>)>, ClusterFailure> {
        let users: Vec<UserId> = probes.iter().map(|(user, _)| user.clone()).collect();
        let heads = self.stream_heads(&users).await?;
        let mut commands = Vec::new();
        let mut asked = Vec::new();
        for (i, ((user, at), head)) in probes.iter().zip(&heads).enumerate() {
            if let (Some(at), Some(head)) = (at, head)
                && at.stream == head.stream
                && at.sequence >= 1
                && at.sequence <= head.sequence
            {
                let id = format!("{}-1", at.sequence);
                let mut xrange = redis::cmd("XRANGE");
                xrange.arg(self.keys.stream(user)).arg(&id).arg(&id);
                commands.push((self.keys.group(user), xrange));
                asked.push(i);
            }
        }
        let mut entries: Vec<Option<StoredEvent>> = vec![None; probes.len()];
        if !asked.is_empty() {
            let answers = self.grouped(commands).await?;
            for (i, answer) in asked.into_iter().zip(answers) {
                entries[i] = array(answer)?
                    .into_iter()
                    .next()
                    .map(stored_event)
                    .transpose()?;
            }
        }
        Ok(heads.into_iter().zip(entries).collect())
    }

    /// Runs `commands`, one pipeline per group (a slot on a Redis Cluster,
    /// all together otherwise), and answers in their order.
    async fn grouped(
        &self,
        commands: impl IntoIterator<Item = (usize, redis::Cmd)>,
    ) -> Result<Vec<Value>, ClusterFailure> {
        let mut groups: std::collections::BTreeMap<usize, (redis::Pipeline, Vec<usize>)> =
            std::collections::BTreeMap::new();
        let mut count = 0;
        for (i, (group, command)) in commands.into_iter().enumerate() {
            let (pipe, places) = groups
                .entry(group)
                .or_insert_with(|| (redis::pipe(), Vec::new()));
            pipe.add_command(command);
            places.push(i);
            count += 1;
        }
        let mut answers = vec![Value::Nil; count];
        for (pipe, places) in groups.into_values() {
            let values: Vec<Value> = self.pipeline(&pipe).await?;
            if values.len() != places.len() {
                return Err(protocol("pipeline answer"));
            }
            for (place, value) in places.into_iter().zip(values) {
                answers[place] = value;
            }
        }
        Ok(answers)
    }

    /// Retires `user`'s stream `judged` for a new one (see `rotate.lua`);
    /// false when it had changed meanwhile.
    pub async fn rotate_stream(
        &self,
        user: &UserId,
        judged: u64,
        candidate: u64,
        meta_ttl: Duration,
    ) -> Result<bool, ClusterFailure> {
        let (generation, mut connection) = self.current()?;
        let mut invocation = self.rotate.prepare_invoke();
        invocation
            .key(self.keys.stream_meta(user))
            .key(self.keys.stream(user))
            .arg(judged.to_string())
            .arg(candidate.to_string())
            .arg(millis(meta_ttl).max(1));
        let rotated: u64 = self
            .bounded(generation, invocation.invoke_async(&mut connection))
            .await?;
        Ok(rotated == 1)
    }

    /// Leaves the cluster: removes this node's presence and heartbeat and
    /// tells the others.
    pub async fn leave_cluster(&self) -> Result<(), ClusterFailure> {
        let bye = serde_json::to_string(&BusMessage::Bye {
            origin: self.node.clone(),
        })
        .map_err(|e| protocol(&e.to_string()))?;
        let mut pipe = redis::pipe();
        pipe.del(self.keys.presence(&self.node))
            .ignore()
            .del(self.keys.alive(&self.node))
            .ignore()
            .srem(self.keys.nodes(), &self.node)
            .ignore()
            .cmd(self.publish_command())
            .arg(self.keys.bus())
            .arg(bye)
            .ignore();
        self.pipeline::<Value>(&pipe).await.map(drop)
    }

    /// Deletes every key under this cluster's prefix (the probes' own
    /// namespace, after they ran), on every master of a Redis Cluster.
    /// Bounded: at most 100 SCAN rounds per server.
    pub async fn delete_namespace(&self) -> Result<usize, ClusterFailure> {
        let pattern = format!("{}:*", self.keys.prefix());
        let (generation, mut connection) = self.current()?;
        let nodes = self.bounded(generation, connection.nodes()).await?;
        let mut deleted = 0;
        for node in &nodes {
            let mut cursor = 0u64;
            for _ in 0..100 {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(500);
                let (next, keys): (u64, Vec<String>) = self
                    .bounded(generation, connection.query_on(node, &scan))
                    .await?;
                deleted += keys.len();
                if *node == Node::Server && !keys.is_empty() {
                    self.query::<Value>(redis::cmd("DEL").arg(&keys)).await?;
                } else {
                    // Keys of several slots: one at a time, each routed.
                    for key in keys {
                        self.query::<Value>(redis::cmd("DEL").arg(key)).await?;
                    }
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(deleted)
    }
}

/// The field that keeps a node's presence hash in existence.
const NODE_MARKER: &str = "~node";

fn entry_json(entry: &PresenceEntry) -> Result<String, ClusterFailure> {
    serde_json::to_string(entry).map_err(|e| protocol(&e.to_string()))
}

fn array(value: Value) -> Result<Vec<Value>, ClusterFailure> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(protocol(&format!("expected an array, got {other:?}"))),
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn number(value: &Value) -> Result<u64, ClusterFailure> {
    match value {
        Value::Int(n) => u64::try_from(*n).map_err(|_| protocol("negative number")),
        other => text(other)
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| protocol(&format!("expected a number, got {other:?}"))),
    }
}

/// One XRANGE entry: `[id, [field, value, ...]]`.
fn stored_event(entry: Value) -> Result<StoredEvent, ClusterFailure> {
    let [id, fields] =
        <[Value; 2]>::try_from(array(entry)?).map_err(|_| protocol("stream entry"))?;
    let id = text(&id).ok_or_else(|| protocol("stream entry id"))?;
    let sequence = id
        .split('-')
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| protocol("stream entry id"))?;
    let mut event = StoredEvent {
        sequence,
        event_type: String::new(),
        data: String::new(),
        timestamp: 0,
    };
    let fields = array(fields)?;
    for pair in fields.chunks(2) {
        let [name, value] = pair else {
            return Err(protocol("stream entry fields"));
        };
        let value = text(value).ok_or_else(|| protocol("stream entry field"))?;
        match text(name).as_deref() {
            Some("y") => event.event_type = value,
            Some("d") => event.data = value,
            Some("t") => event.timestamp = value.parse().map_err(|_| protocol("timestamp"))?,
            _ => {}
        }
    }
    Ok(event)
}
