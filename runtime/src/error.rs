//! [`ManagerError`]: every failure a caller of a manager can act on.

use crate::connection::SocketId;
use crate::delivery::{DeliveryTarget, NotDeliveredReason};
use crate::ids::{ConnectionId, UserId};

/// Why a cluster operation failed (see [`ManagerError::Cluster`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterFailure {
    /// No answer within the configured command timeout. The command had
    /// been sent, so it may still take effect (see
    /// [`may_have_taken_effect`](Self::may_have_taken_effect)).
    #[error(
        "no answer from the engine within {timeout_ms} ms (the command was sent and may still take effect)"
    )]
    Timeout {
        /// The timeout that expired.
        timeout_ms: u64,
    },
    /// The engine answered with an error, or the connection to it failed
    /// after the command was sent.
    #[error("the engine failed: {0}")]
    Engine(String),
    /// The engine could not be reached at all (connection refused): the
    /// command was not sent.
    #[error("the engine is unreachable: {0}")]
    Unreachable(String),
    /// This node is not (or no longer) subscribed to the cluster's
    /// channels, so it could not take part without missing messages.
    #[error("this node is not connected to the cluster yet")]
    NotReady,
    /// This node has been cut off from the engine for longer than its
    /// `fence_after` bound: it closed its connections (so their clients
    /// resume on a healthy node) and refuses new ones until the engine
    /// answers again. Nothing was sent.
    #[error(
        "this node is fenced: cut off from the engine for {cut_off_ms} ms; connect to another node"
    )]
    Fenced {
        /// How long since this node last renewed its heartbeat.
        cut_off_ms: u64,
    },
    /// The engine answered something this version does not understand.
    #[error("unexpected answer from the engine: {0}")]
    Protocol(String),
    /// This node already has as many history reads in flight as it allows
    /// (`ClusterConfig::history_reads`) and none finished within
    /// `command_timeout`: a reconnect storm. Nothing was sent; a client
    /// retries with backoff (or on another node).
    #[error("this node is busy: no history read free within {waited_ms} ms; nothing was sent")]
    Busy {
        /// How long the registration waited.
        waited_ms: u64,
    },
    /// The critical event is stored on the primary, but fewer replicas than
    /// `ClusterConfig::wait_for_replicas` acknowledged it within the command
    /// timeout: it was not published, and a failover may lose it. Retry it
    /// with an idempotency key.
    #[error(
        "only {acknowledged} of {wanted} replica(s) acknowledged the event in time: stored on the primary but not published (a failover may lose it)"
    )]
    NotReplicated {
        /// Replicas that acknowledged it.
        acknowledged: usize,
        /// Replicas the configuration asks for.
        wanted: usize,
    },
}

impl ClusterFailure {
    /// Whether the operation may have been carried out despite the error:
    /// after a timeout, a hung engine that recovers still runs what it was
    /// sent. A critical event refused this way may still be stored and
    /// delivered (once, with its offset), so retrying it can store it
    /// twice. `Unreachable` and `NotReady` mean nothing was sent.
    ///
    /// ```
    /// use websocket_manager::ClusterFailure;
    /// assert!(ClusterFailure::Timeout { timeout_ms: 1000 }.may_have_taken_effect());
    /// assert!(!ClusterFailure::NotReady.may_have_taken_effect());
    /// assert!(!ClusterFailure::Busy { waited_ms: 1000 }.may_have_taken_effect());
    /// assert!(!ClusterFailure::Fenced { cut_off_ms: 9000 }.may_have_taken_effect());
    /// assert!(!ClusterFailure::Unreachable("connection refused".into()).may_have_taken_effect());
    /// ```
    pub fn may_have_taken_effect(&self) -> bool {
        !matches!(
            self,
            ClusterFailure::Unreachable(_)
                | ClusterFailure::NotReady
                | ClusterFailure::Fenced { .. }
                | ClusterFailure::Busy { .. }
        )
    }
}

/// A manager operation failed. One variant per thing a caller can do
/// something about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// `add_connection` with an id that is already registered.
    #[error("connection `{0}` is already registered")]
    DuplicateConnection(ConnectionId),
    /// `add_connection` with a socket that is already registered under
    /// another connection id.
    #[error("{socket} is already registered as connection `{existing}`")]
    SocketAlreadyRegistered {
        /// The socket given.
        socket: SocketId,
        /// The connection that already owns it.
        existing: ConnectionId,
    },
    /// The user is at the per-user connection cap.
    #[error("user `{user_id}` already has {limit} connections, the per-user limit")]
    ConnectionLimit {
        /// The user.
        user_id: UserId,
        /// The configured cap.
        limit: usize,
    },
    /// The message reached no connection.
    #[error("message to {target} not delivered: {reason}")]
    NotDelivered {
        /// The user or thread it was addressed to.
        target: DeliveryTarget,
        /// Why.
        reason: NotDeliveredReason,
    },
    /// A critical event could not be retained: making room in the user's
    /// history would evict events no connection has taken yet. The event was
    /// not stored and not sent.
    #[error(
        "the history of user `{user_id}` is full of {pending} critical events no connection has taken yet; the critical event was not stored (raise `history_capacity` / `history_max_bytes`, or connect the user)"
    )]
    HistoryFull {
        /// The user.
        user_id: UserId,
        /// Events waiting for a connection.
        pending: usize,
    },
    /// A critical event is larger than the user's whole history may hold
    /// (`history_max_bytes`). The event was not stored and not sent.
    #[error(
        "critical event for user `{user_id}` is {len} bytes, more than `history_max_bytes` ({max}); it was not stored"
    )]
    CriticalEventTooLarge {
        /// The user.
        user_id: UserId,
        /// The serialized event's size.
        len: usize,
        /// The configured `history_max_bytes`.
        max: usize,
    },
    /// A critical event for a user without history, while the manager
    /// already retains history for `limit` users. The event was not stored
    /// and not sent.
    #[error(
        "{limit} users already hold retained critical events, the per-manager limit (`max_history_users`); the critical event was not stored"
    )]
    HistoryUsersFull {
        /// The configured `max_history_users`.
        limit: usize,
    },
    /// `add_connection` could not push the connection's replay (resync
    /// notice and retained events) into its socket's queue, so the socket
    /// would have a gap: the connection was not registered. Use a fresh
    /// socket, whose queue always fits a replay.
    #[error(
        "connection `{connection_id}` was refused: its socket's queue took {replayed} of the {total} frames of its replay"
    )]
    ReplayFailed {
        /// The connection.
        connection_id: ConnectionId,
        /// Frames of the replay the queue took.
        replayed: usize,
        /// Frames the replay had.
        total: usize,
    },
    /// `add_connection` caught the connection up from the history, but
    /// live critical events that arrived meanwhile do not follow the
    /// replay without a gap (they were lost in transit, or belong to a
    /// stream the replay retired): the connection was not registered. Its
    /// client resumes from its offset at once and is sent what it missed.
    #[error(
        "connection `{connection_id}` was refused: live critical events it was owed did not follow its replay without a gap; its client resumes from its offset"
    )]
    MissedWhileCatchingUp {
        /// The connection.
        connection_id: ConnectionId,
    },
    /// `emit_critical_event` with an unusable event type.
    #[error("invalid event type `{event_type}`: {reason}")]
    InvalidEventType {
        /// The event type given (truncated to 64 characters).
        event_type: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An isolated manager was asked to act for another user.
    #[error("isolation violation: this manager serves user `{owner}`, not `{requested}`")]
    IsolationViolation {
        /// The user the manager was built for.
        owner: UserId,
        /// The user that was asked for.
        requested: UserId,
    },
    /// The message could not be serialized.
    #[error("message could not be serialized: {0}")]
    Serialization(#[from] serde_json::Error),
    /// The manager was shut down.
    #[error("the manager has been shut down")]
    ShutDown,
    /// The cluster's shared engine (Redis, for
    /// `websocket_manager::managers::ClusterWebSocketManager`) did not answer in time or
    /// refused: the operation was not carried out cluster-wide. Never an
    /// `Ok`: the caller decides whether to retry.
    #[error(
        "the cluster backplane failed during {operation}: {failure}{}",
        if *delivered_locally > 0 { format!(" (this node's {delivered_locally} connection(s) did get the message)") } else { String::new() }
    )]
    Cluster {
        /// What the manager was doing (`publish`, `append critical event`...).
        operation: &'static str,
        /// What went wrong.
        failure: ClusterFailure,
        /// Connections of this node that took the message before the
        /// failure (only ordinary sends deliver locally first).
        delivered_locally: usize,
    },
    /// A failure inside a third-party manager's backend (a database, a
    /// message bus...).
    #[error("manager backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}
