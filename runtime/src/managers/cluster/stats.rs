//! [`ClusterStats`]: the counters of a node's cluster side.

use super::LinkState;

/// Counters of the cluster side, in [`ClusterWebSocketManager::cluster_stats`](super::ClusterWebSocketManager::cluster_stats).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ClusterStats {
    /// This node's id.
    pub node_id: String,
    /// Whether the node is subscribed and registered.
    pub ready: bool,
    /// Connections held by this node.
    pub local_connections: usize,
    /// Other nodes' connections in this node's replica.
    pub remote_connections: usize,
    /// Other nodes in the replica.
    pub remote_nodes: usize,
    /// Messages from Redis dropped on a full inbound buffer (each one
    /// triggered an audit).
    pub inbound_dropped: u64,
    /// Audits of every local user run after a possible message loss.
    pub audits: u64,
    /// Where the node stands with Redis.
    pub link: LinkState,
    /// Fresh connections to Redis made after the link went silent.
    pub reconnects: u64,
    /// Probes of the link left unanswered past `probe_timeout` (each one
    /// replaced the connection).
    pub probe_timeouts: u64,
    /// Times the node fenced itself (cut off longer than `fence_after`).
    pub fenced: u64,
    /// Registrations that waited for a history read's turn (more than
    /// `ClusterConfig::history_reads` at once: a reconnect storm).
    pub history_read_waits: u64,
    /// Registrations that used a history read another registration of the
    /// same user sent (resumes waiting at the same time share one read).
    pub history_reads_shared: u64,
    /// Critical events the Redis client sent twice (its connection to a
    /// Redis Cluster master dropped before the answer) after the first had
    /// been stored: answered with the first store's offset, stored and
    /// published once (see [`ClusterConfig::resend_window`](super::ClusterConfig::resend_window)).
    pub resent_appends: u64,
}

impl ClusterStats {
    /// Every counter at zero (the metrics' descriptions are read from it).
    #[cfg(feature = "metrics")]
    pub(crate) fn zero() -> Self {
        ClusterStats {
            node_id: String::new(),
            ready: false,
            local_connections: 0,
            remote_connections: 0,
            remote_nodes: 0,
            inbound_dropped: 0,
            audits: 0,
            link: LinkState::Joining,
            reconnects: 0,
            probe_timeouts: 0,
            fenced: 0,
            history_read_waits: 0,
            history_reads_shared: 0,
            resent_appends: 0,
        }
    }
}

impl std::fmt::Display for ClusterStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "node {} ({}, {}): {} local connection(s), {} on {} other node(s); {} inbound message(s) dropped, {} audit(s); {} reconnect(s), {} probe timeout(s), fenced {} time(s); {} registration(s) waited for a history read, {} shared one; {} re-sent append(s) stored once",
            self.node_id,
            if self.ready { "ready" } else { "NOT READY" },
            self.link,
            self.local_connections,
            self.remote_connections,
            self.remote_nodes,
            self.inbound_dropped,
            self.audits,
            self.reconnects,
            self.probe_timeouts,
            self.fenced,
            self.history_read_waits,
            self.history_reads_shared,
            self.resent_appends
        )
    }
}
