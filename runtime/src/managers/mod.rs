//! The two reference managers, built on one shared engine.
//!
//! * [`UnifiedWebSocketManager`] (`"unified"`): one instance for a whole
//!   server.
//! * [`IsolatedWebSocketManager`] (`"isolated"`): one instance per
//!   [`UserContext`](crate::UserContext), refusing every other user.
//!
//! Both are registered with `#[websocket_manager]` and built by the factory
//! from a [`BuildContext`](crate::BuildContext).
//!
//! With the feature `redis`, a third: `ClusterWebSocketManager`
//! (`"cluster"`), one manager across many server processes through a real
//! Redis (critical events in Redis Streams, presence replicated to every
//! node). It has its own critical path and reuses the fan-out building
//! blocks; see its docs and the README's "Cluster" section.
//!
//! # Guarantees
//!
//! * **O(1) lookups.** Connection by id, user to connections, socket to
//!   connection (the reverse lookup the original did by linear scan) and
//!   thread to connections are hash lookups.
//! * **Consistent indexes under concurrency.** Every change to a user's
//!   connections is serialized by that user's lock; a failed add registers
//!   nothing; a remove clears every index and closes the socket.
//! * **No lock across `.await`, no send under a lock that removal needs.**
//!   Nothing in the managers awaits. Sends copy an `Arc` of the recipient
//!   list out of the index and push with `try_send`; closed and slow sockets
//!   found on the way are removed afterwards, so a failed send cannot
//!   deadlock (the original's did).
//! * **Serialize once.** A send serializes its JSON once into a
//!   [`TextFrame`](crate::TextFrame); each recipient gets a reference-counted
//!   clone of the same bytes.
//! * **Slow consumers.** A full queue triggers the configured
//!   [`SlowConsumerPolicy`](crate::SlowConsumerPolicy): `Disconnect` (default)
//!   closes that connection with [`CloseReason::slow_consumer`](crate::CloseReason::slow_consumer),
//!   `DropMessage` drops the frame for that connection; both are counted.
//!   Other connections are never delayed: nothing waits on a queue.
//! * **Nothing lost silently.** A send that reaches no connection is
//!   [`ManagerError::NotDelivered`](crate::ManagerError::NotDelivered) with a
//!   reason. Ordinary sends are at most once and not retained. Critical
//!   events ([`emit_critical_event`](crate::WebSocketManager::emit_critical_event))
//!   are wrapped in a [`CriticalEnvelope`] with a per-user
//!   [`StreamOffset`](crate::StreamOffset) (reported in the
//!   [`Delivery`](crate::Delivery)) and appended to the user's retained log
//!   whether or not a socket took them. A connection that resumes from an
//!   offset ([`WebSocketConnection::with_resume`](crate::WebSocketConnection::with_resume))
//!   gets every retained event after it, in order and before anything newer;
//!   one without an offset gets the events no connection has taken yet
//!   ([`Delivery::Queued`](crate::Delivery::Queued)). When an offset cannot
//!   be honoured (evicted, expired, unknown stream), the connection first
//!   receives a [`ResyncNotice`] that says so. A history full of events no
//!   connection has taken is [`ManagerError::HistoryFull`](crate::ManagerError::HistoryFull),
//!   never a silent drop of the oldest.
//!
//! # Why `DashMap`
//!
//! The indexes are [`dashmap::DashMap`]s (sharded `RwLock`ed hash maps) and
//! each user's mutable state sits behind its own `parking_lot::Mutex`. The
//! alternatives were one `RwLock` around all indexes (simple and atomic, but
//! every add, remove and send of every user contends on one lock) and a
//! hand-sharded map (what `DashMap` already is, tested). Sends mostly read;
//! with sharding they contend only with writers of the same shard, and the
//! per-user mutex keeps multi-index changes of a user atomic with respect to
//! each other without a global lock. A `DashMap` guard is a lock guard: the
//! engine never holds one across `.await` (it never awaits) nor while taking a
//! user's mutex. The lock order is documented in the engine's source.
//!
//! # Memory bounds
//!
//! * Each connection's queue: `queue_capacity` frames and `queue_max_bytes`
//!   bytes. A stalled client costs at most that.
//! * Connections per user: `max_connections_per_user`. Sockets found closed
//!   (a tab that died without the transport noticing) are evicted before a
//!   new connection is refused, so dead tabs never lock a user out.
//! * Retained critical events: per user at most `history_capacity` events
//!   and `history_max_bytes` bytes, each at most `history_max_age` old; per
//!   manager at most `max_history_users` users holding history (then
//!   [`ManagerError::HistoryUsersFull`](crate::ManagerError::HistoryUsersFull)).
//!   Expired events are pruned when their user is touched, by
//!   `prune_expired()` (call it from a timer if you want memory back sooner),
//!   and by a sweep when the user limit is reached.
//! * A user with neither a connection nor history occupies nothing; its
//!   counters and stream start over when it comes back, and a client that
//!   resumes from the forgotten stream is told so with a [`ResyncNotice`].
//!
//! See [`IndexSizes`] and [`ManagerStats`].

#[cfg(feature = "redis")]
mod cluster;
mod core;
mod critical_log;
mod events;
mod fan_out;
mod history;
mod isolated;
mod stats;
mod unified;

#[cfg(feature = "redis")]
pub use cluster::{
    ClusterConfig, ClusterConfigBuilder, ClusterStats, ClusterWebSocketManager, RESUME_CLOSE_CODE,
};
pub use critical_log::CriticalEventLog;
pub use events::{
    AGENT_COMPLETED, AGENT_EVENTS, AGENT_STARTED, AGENT_THINKING, CriticalEnvelope,
    MAX_EVENT_TYPE_LEN, RESYNC, ResyncNotice, ResyncReason, TOOL_COMPLETED, TOOL_EXECUTING,
    validate_event_type,
};
pub use fan_out::deliver_frame;
pub use isolated::IsolatedWebSocketManager;
pub use stats::{IndexSizes, ManagerStats};
pub use unified::UnifiedWebSocketManager;
