//! [`ClusterConfig`]: where the cluster's Redis is, how this node is named,
//! and the time bounds of every cluster operation.

use std::time::Duration;

use crate::config::{ConfigError, ManagerConfig};

use super::target::RedisTarget;

/// How a [`ClusterWebSocketManager`](super::ClusterWebSocketManager) reaches
/// the cluster. Put it in the factory's
/// [`Extensions`](crate::startup::Extensions); the manager takes its queue bounds and
/// history retention from the [`ManagerConfig`] as usual.
///
/// ```
/// use std::time::Duration;
/// use websocket_manager::managers::ClusterConfig;
/// let config = ClusterConfig::builder("redis://127.0.0.1:6379")
///     .key_prefix("chat")
///     .node_id("web-1")
///     .command_timeout(Duration::from_millis(500))
///     .build()?;
/// assert_eq!(config.node_id(), "web-1");
/// // A dead node disappears from every replica within this bound.
/// assert_eq!(config.presence_bound(), Duration::from_secs(12) + Duration::from_millis(500));
/// // A node cut off from Redis closes its connections before that: before
/// // any other node can forget it.
/// assert_eq!(config.fence_after(), Duration::from_secs(8));
/// assert!(config.fence_after() < config.node_ttl());
/// # Ok::<(), websocket_manager::managers::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    redis_url: String,
    key_prefix: String,
    node_id: String,
    command_timeout: Duration,
    ready_timeout: Duration,
    heartbeat_interval: Duration,
    node_ttl: Duration,
    outbound_capacity: usize,
    inbound_capacity: usize,
    stream_meta_ttl: Duration,
    probe_interval: Duration,
    probe_timeout: Duration,
    fence_after: Duration,
    history_reads: usize,
    wait_for_replicas: usize,
    /// `redis_url`, read (set by `build`).
    target: RedisTarget,
}

impl ClusterConfig {
    /// A builder with the defaults: prefix `wsm`, a random node id, 1 s
    /// command timeout, 3 s heartbeat, 9 s node TTL, link probed after 2 s
    /// of silence with a 2 s answer bound, fenced after 8 s without a
    /// heartbeat (8/9 of the node TTL unless set).
    pub fn builder(redis_url: impl Into<String>) -> ClusterConfigBuilder {
        ClusterConfigBuilder {
            fence_after: None,
            config: ClusterConfig {
                redis_url: redis_url.into(),
                key_prefix: "wsm".to_owned(),
                node_id: random_node_id(),
                command_timeout: Duration::from_secs(1),
                ready_timeout: Duration::from_secs(2),
                heartbeat_interval: Duration::from_secs(3),
                node_ttl: Duration::from_secs(9),
                outbound_capacity: 4096,
                inbound_capacity: 65_536,
                stream_meta_ttl: Duration::from_secs(24 * 3600),
                probe_interval: Duration::from_secs(2),
                probe_timeout: Duration::from_secs(2),
                fence_after: Duration::ZERO,
                history_reads: 64,
                wait_for_replicas: 0,
                target: RedisTarget::Server(String::new()),
            },
        }
    }

    /// The Redis URL (`redis://host:port/db`).
    pub fn redis_url(&self) -> &str {
        &self.redis_url
    }

    /// The prefix of every key and channel this cluster uses.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// This node's id, unique in the cluster.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The bound on every Redis call.
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// On a Redis Cluster, how long the *attempt key* of an append lives:
    /// four command timeouts (4 s with the defaults).
    ///
    /// redis-rs's cluster connection re-sends a command whose connection
    /// dropped before the answer came; the server may then run an append
    /// twice. Each append without an idempotency key of the caller's carries
    /// a key unique to the call (`<prefix>:{<bucket>}:try:<node>:<run>:<n>`,
    /// in the user's slot, apart from the idempotency keys), set by the same
    /// atomic step that stores the event: a re-send that finds it is
    /// answered with the first store's offset and stores and publishes
    /// nothing. redis-rs re-sends only while the call waits, and the call
    /// waits at most one command timeout, so a re-send reaches the server
    /// within one command timeout of the first attempt; the other three
    /// leave room for a server that runs them late. Each key costs about
    /// 200 bytes of Redis memory for the window (4,000 appends a second:
    /// some 3 MB) and about 5 µs of Redis CPU. One server and Sentinel need
    /// none: redis-rs does not re-send there.
    ///
    /// ```
    /// use std::time::Duration;
    /// use websocket_manager::managers::ClusterConfig;
    /// let config = ClusterConfig::builder("redis+cluster://127.0.0.1:7000").build()?;
    /// assert_eq!(config.resend_window(), Duration::from_secs(4));
    /// # Ok::<(), websocket_manager::managers::ConfigError>(())
    /// ```
    pub fn resend_window(&self) -> Duration {
        resend_window(self)
    }

    /// How long `add_connection` waits for the node to be subscribed.
    pub fn ready_timeout(&self) -> Duration {
        self.ready_timeout
    }

    /// How often the node renews its heartbeat and re-reads presence.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// How long a node counts as alive after its last heartbeat.
    pub fn node_ttl(&self) -> Duration {
        self.node_ttl
    }

    /// The bound on presence changes waiting to be written to Redis.
    pub fn outbound_capacity(&self) -> usize {
        self.outbound_capacity
    }

    /// The bound on messages from Redis waiting for this node's
    /// dispatcher.
    pub fn inbound_capacity(&self) -> usize {
        self.inbound_capacity
    }

    /// How many history reads (one per connection that registers: its
    /// replay) this node sends to Redis at once.
    pub fn history_reads(&self) -> usize {
        self.history_reads
    }

    /// Replicas that must acknowledge a critical event before it is
    /// published and its emit answers `Ok` (0, the default: none).
    pub fn wait_for_replicas(&self) -> usize {
        self.wait_for_replicas
    }

    /// Where the Redis is: one server, or Sentinel's primary.
    pub(crate) fn target(&self) -> &RedisTarget {
        &self.target
    }

    /// How long a user's stream id (epoch) and sequence survive without a
    /// new critical event. After that, a client resuming on the old stream
    /// is told `unknown_stream`.
    pub fn stream_meta_ttl(&self) -> Duration {
        self.stream_meta_ttl
    }

    /// How long the link to Redis may stay silent before this node probes
    /// it: after this long without a message on its subscription, the node
    /// publishes a probe to itself (and at once after a command timed out).
    /// On a Redis Cluster the node probes every `probe_interval`, busy or
    /// not, and each master it uses (a message from one master says
    /// nothing of the others): a `PING` to each, routed by a slot of its
    /// own, and the probe to itself.
    pub fn probe_interval(&self) -> Duration {
        self.probe_interval
    }

    /// How long a probe may go unanswered. Past it the node drops its
    /// connection to Redis and opens a fresh one (new TCP connection,
    /// resubscribed, audited, presence rewritten). A link that goes silent
    /// is replaced within `probe_interval + probe_timeout` plus one command
    /// timeout (5 s with the defaults); on a Redis Cluster, a link to any
    /// one master.
    pub fn probe_timeout(&self) -> Duration {
        self.probe_timeout
    }

    /// How long this node may go without renewing its heartbeat before it
    /// *fences* itself: it closes every local connection with
    /// [`close::RESUME`](crate::close::RESUME) (their clients
    /// reconnect to a healthy node and resume there) and refuses new ones
    /// with [`ClusterFailure::Fenced`](crate::ClusterFailure::Fenced) until
    /// Redis answers again. Always below `node_ttl`, the earliest moment
    /// another node can forget this one: a tab is never left open while the
    /// others have forgotten it.
    pub fn fence_after(&self) -> Duration {
        self.fence_after
    }

    /// The longest time a dead node's connections stay in a replica: its
    /// heartbeat expires after `node_ttl`, and the next refresh (at most one
    /// `heartbeat_interval` later, plus one command timeout) drops them.
    pub fn presence_bound(&self) -> Duration {
        self.node_ttl + self.heartbeat_interval + self.command_timeout
    }

    /// The same configuration with a fresh key prefix under this one and a
    /// fresh node id: what the startup probes run in, so they never touch
    /// the keys of real users.
    pub(crate) fn for_probe(&self) -> ClusterConfig {
        let mut config = self.clone();
        config.key_prefix = format!("{}:probe:{}", self.key_prefix, random_node_id());
        config.node_id = random_node_id();
        config
    }
}

/// Builds a [`ClusterConfig`]; see [`ClusterConfig::builder`].
#[derive(Debug, Clone)]
pub struct ClusterConfigBuilder {
    config: ClusterConfig,
    /// `None`: 8/9 of the node TTL, whatever TTL is set.
    fence_after: Option<Duration>,
}

impl ClusterConfigBuilder {
    /// The prefix of every key and channel (ASCII letters, digits, `_`,
    /// `-`, `.`, `:`; at most 64 bytes). Two clusters on one Redis need two
    /// prefixes.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.key_prefix = prefix.into();
        self
    }

    /// This node's id (same characters as the prefix). Two live nodes must
    /// never share one; the default is random.
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.config.node_id = id.into();
        self
    }

    /// The bound on every Redis call (default 1 s).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.config.command_timeout = timeout;
        self
    }

    /// How long `add_connection` waits for this node's subscription before
    /// refusing with [`ClusterFailure::NotReady`](crate::ClusterFailure::NotReady) (default 2 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.config.ready_timeout = timeout;
        self
    }

    /// Heartbeat and presence refresh period (default 3 s).
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.config.heartbeat_interval = interval;
        self
    }

    /// How long a node counts as alive after its last heartbeat (default
    /// 9 s; at least twice the heartbeat interval).
    pub fn node_ttl(mut self, ttl: Duration) -> Self {
        self.config.node_ttl = ttl;
        self
    }

    /// The bound on presence changes waiting to be written (default 4096).
    /// When it is full, the node rewrites its whole presence at the next
    /// heartbeat instead: late, never lost.
    pub fn outbound_capacity(mut self, capacity: usize) -> Self {
        self.config.outbound_capacity = capacity;
        self
    }

    /// The bound on messages from Redis waiting for this node's dispatcher
    /// (default 65,536). A message that finds it full is dropped, and the
    /// node then audits every local user: connections that missed an event
    /// are closed with `close::RESUME` (1012) so their clients resume. Late,
    /// never lost.
    pub fn inbound_capacity(mut self, capacity: usize) -> Self {
        self.config.inbound_capacity = capacity;
        self
    }

    /// How many history reads this node sends to Redis at once (default
    /// 64). Every connection that registers reads its user's stream once;
    /// in a reconnect storm (a node died and its clients all come here) the
    /// rest wait their turn, up to `command_timeout`, instead of flattening
    /// Redis; one that waits longer is refused (its client retries with
    /// backoff). Counted in `ClusterStats::history_read_waits`.
    pub fn history_reads(mut self, reads: usize) -> Self {
        self.config.history_reads = reads;
        self
    }

    /// The durability setting: how many replicas must acknowledge a
    /// critical event (Redis `WAIT`, bounded by `command_timeout`) before it
    /// is published and `emit_critical_event` answers `Ok` (default 0). With
    /// 1 and one replica under Sentinel, an acknowledged event survives a
    /// failover of the primary, and no client ever sees an event a failover
    /// could lose; it costs the replication round trip on every emit (and
    /// holds this node's connection for it). Too few acknowledgements in
    /// time: `ClusterFailure::NotReplicated` (stored on the primary, not
    /// published; retry with an idempotency key).
    pub fn wait_for_replicas(mut self, replicas: usize) -> Self {
        self.config.wait_for_replicas = replicas;
        self
    }

    /// How long a user's stream id and sequence survive without a new
    /// critical event (default 24 h; at least `history_max_age`, checked
    /// when the manager is built).
    pub fn stream_meta_ttl(mut self, ttl: Duration) -> Self {
        self.config.stream_meta_ttl = ttl;
        self
    }

    /// How long the subscription may stay silent before the node probes
    /// the link (default 2 s). See [`ClusterConfig::probe_interval`].
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.config.probe_interval = interval;
        self
    }

    /// How long a probe may go unanswered before the connection is
    /// replaced by a fresh one (default 2 s). See
    /// [`ClusterConfig::probe_timeout`].
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.config.probe_timeout = timeout;
        self
    }

    /// How long without a renewed heartbeat before the node fences itself
    /// (default 8/9 of `node_ttl`: 8 s; must be below `node_ttl`). See
    /// [`ClusterConfig::fence_after`].
    pub fn fence_after(mut self, after: Duration) -> Self {
        self.fence_after = Some(after);
        self
    }

    /// Checks the configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the field at fault.
    pub fn build(self) -> Result<ClusterConfig, ConfigError> {
        let mut c = self.config;
        c.fence_after = self.fence_after.unwrap_or(c.node_ttl / 9 * 8);
        let refuse = |field, problem| Err(ConfigError { field, problem });
        c.target = match RedisTarget::parse(&c.redis_url) {
            Ok(target) => target,
            Err(problem) => return refuse("redis_url", problem),
        };
        if !valid_name(&c.key_prefix) {
            return refuse(
                "key_prefix",
                "must be 1 to 64 ASCII letters, digits, `_`, `-`, `.` or `:`",
            );
        }
        if !valid_name(&c.node_id) {
            return refuse(
                "node_id",
                "must be 1 to 64 ASCII letters, digits, `_`, `-`, `.` or `:`",
            );
        }
        if c.history_reads == 0 {
            return refuse("history_reads", "must be greater than zero");
        }
        if c.command_timeout.is_zero() || c.ready_timeout.is_zero() {
            return refuse("command_timeout", "must be greater than zero");
        }
        if c.heartbeat_interval.is_zero() {
            return refuse("heartbeat_interval", "must be greater than zero");
        }
        if c.node_ttl < c.heartbeat_interval * 2 {
            return refuse(
                "node_ttl",
                "must be at least twice `heartbeat_interval`, or one late heartbeat kills a live node",
            );
        }
        if c.probe_interval.is_zero() {
            return refuse("probe_interval", "must be greater than zero");
        }
        if c.probe_timeout.is_zero() {
            return refuse("probe_timeout", "must be greater than zero");
        }
        if c.fence_after.is_zero() || c.fence_after + fence_margin(&c) > c.node_ttl {
            return refuse(
                "fence_after",
                "must be greater than zero and below `node_ttl` (by at least 1/20 of it), or the other nodes may forget this node's connections while they are still open",
            );
        }
        if c.outbound_capacity == 0 {
            return refuse("outbound_capacity", "must be at least 1");
        }
        if c.inbound_capacity == 0 {
            return refuse("inbound_capacity", "must be at least 1");
        }
        Ok(c)
    }
}

/// Checks what only the pair of configurations can tell.
pub(crate) fn check_against(
    cluster: &ClusterConfig,
    manager: &ManagerConfig,
) -> Result<(), ConfigError> {
    if cluster.stream_meta_ttl < manager.history_max_age() {
        return Err(ConfigError {
            field: "stream_meta_ttl",
            problem: "must be at least `history_max_age`, or retained events outlive their stream id",
        });
    }
    Ok(())
}

/// How much `fence_after` must stay below `node_ttl`: the watchdog checks
/// the fence at most this often, so it fences before the heartbeat key the
/// others read expires.
fn fence_margin(config: &ClusterConfig) -> Duration {
    config.node_ttl / 20
}

/// See [`ClusterConfig::resend_window`].
pub(crate) fn resend_window(config: &ClusterConfig) -> Duration {
    config.command_timeout.saturating_mul(4)
}

/// How often the link watchdog looks at the clock: often enough to keep
/// every bound it enforces within a few percent.
pub(crate) fn watchdog_period(config: &ClusterConfig) -> Duration {
    config
        .probe_interval
        .min(config.probe_timeout)
        .min(fence_margin(config))
        .div_f64(4.0)
        .clamp(Duration::from_millis(5), Duration::from_millis(250))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(crate::ids::is_name_byte)
}

/// 64 random bits in hex.
fn random_node_id() -> String {
    format!("{:016x}", crate::ids::random_u64())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_refused_by_field() {
        let cases = [
            (ClusterConfig::builder(""), "redis_url"),
            (
                ClusterConfig::builder("redis://x").key_prefix("a b"),
                "key_prefix",
            ),
            (ClusterConfig::builder("redis://x").node_id(""), "node_id"),
            (
                ClusterConfig::builder("redis://x").command_timeout(Duration::ZERO),
                "command_timeout",
            ),
            (
                ClusterConfig::builder("redis://x")
                    .heartbeat_interval(Duration::from_secs(5))
                    .node_ttl(Duration::from_secs(6)),
                "node_ttl",
            ),
            (
                ClusterConfig::builder("redis://x").outbound_capacity(0),
                "outbound_capacity",
            ),
            (
                ClusterConfig::builder("redis://x").probe_timeout(Duration::ZERO),
                "probe_timeout",
            ),
            (
                ClusterConfig::builder("redis://x").fence_after(Duration::from_secs(9)),
                "fence_after",
            ),
        ];
        for (builder, field) in cases {
            assert_eq!(builder.build().unwrap_err().field, field);
        }
    }

    #[test]
    fn node_ids_are_random_and_probes_get_their_own_namespace() {
        let a = ClusterConfig::builder("redis://x").build().unwrap();
        let b = ClusterConfig::builder("redis://x").build().unwrap();
        assert_ne!(a.node_id(), b.node_id());
        let probe = a.for_probe();
        assert!(probe.key_prefix().starts_with("wsm:probe:"));
        assert_ne!(probe.node_id(), a.node_id());
    }

    #[test]
    fn the_fence_defaults_below_the_node_ttl_and_follows_it() {
        let default = ClusterConfig::builder("redis://x").build().unwrap();
        assert_eq!(default.fence_after(), Duration::from_secs(8));
        assert!(default.fence_after() < default.node_ttl());
        assert!(default.fence_after() < default.presence_bound());
        let short = ClusterConfig::builder("redis://x")
            .heartbeat_interval(Duration::from_millis(300))
            .node_ttl(Duration::from_millis(900))
            .build()
            .unwrap();
        assert_eq!(short.fence_after(), Duration::from_millis(800));
        assert!(watchdog_period(&short) <= Duration::from_millis(250));
    }

    #[test]
    fn meta_ttl_must_cover_the_history_age() {
        let cluster = ClusterConfig::builder("redis://x")
            .stream_meta_ttl(Duration::from_secs(1))
            .build()
            .unwrap();
        let error = check_against(&cluster, &ManagerConfig::default()).unwrap_err();
        assert_eq!(error.field, "stream_meta_ttl");
    }
}
