//! [`ManagerCore`]: the engine both reference managers run on. The unified
//! manager exposes it to every user; the isolated manager puts an owner check
//! in front of it. Neither copies any of it.
//!
//! # Indexes
//!
//! | index | key -> value | used by |
//! |---|---|---|
//! | `connections` | `ConnectionId` -> `WebSocketConnection` | `get_connection`, removal |
//! | `sockets` | `SocketId` -> `ConnectionId` | `get_connection_id_by_websocket` |
//! | `users` | `UserId` -> `UserEntry` (the `UserSlot`: event log, counters; and, inline, the published connections and the user's send counters) | user sends, critical events, health |
//! | `threads` | `ThreadId` -> `Arc<[Recipient]>` | `send_to_thread` |
//!
//! All four are [`DashMap`]s: sharded `RwLock`ed hash maps, so every lookup is
//! an O(1) hash lookup that only contends with writers of the same shard.
//! They hash with `ahash`, keyed at random once per process
//! ([`IndexHasher`]): user, thread and connection ids can come from
//! clients, so an attacker who could predict the hash could fill one bucket
//! (HashDoS); with secret keys they cannot, as with std's SipHash, at a
//! fraction of its cost on short ids.
//!
//! # Locking discipline
//!
//! * Every change to a user's connections (add, remove, thread move,
//!   eviction, critical event, replay) runs under that user's slot mutex.
//!   Changes of one user are therefore serialized, and the indexes move from
//!   one consistent state to the next; users never wait for each other except
//!   on a map shard for the duration of one insert.
//! * Readers take no user lock. A query on one index that races with a change
//!   may see it a moment before or after a query on another index does (an
//!   add publishes the connection and socket entries first, and the user and
//!   thread entries only after the replay); every change is complete when
//!   the call that makes it returns.
//! * Lock order: user mutex, then map shards (`connections` before
//!   `sockets`), then a socket's queue lock. No code holds a map guard while
//!   taking a user mutex (slots are cloned out of `users` first), and no
//!   code holds two user mutexes.
//! * No guard of any kind is held across an `.await`: nothing here awaits.
//!   Sends are `try_send`, which never blocks.
//! * Recipients are kept as immutable `Arc<[Recipient]>` snapshots, rebuilt
//!   on every connection change (a user has at most `max_connections_per_user`
//!   connections). The slot's state holds the current one; code under the
//!   user's mutex reads it there. When a change under the mutex is complete
//!   (after any replay), `with_user` *publishes* the new snapshot into the
//!   user's `users` entry, still under the mutex, so publications happen in
//!   the order of the changes: its sockets are copied into the entry
//!   itself (inline for up to four connections), its connection ids into
//!   one allocation the entry points to (read only by an eviction and
//!   `get_user_connections`). Sends and
//!   queries read them under the entry's shard read guard, without the
//!   user's mutex, in place: a send fans out under that read guard (bounded
//!   work: one non-blocking push per connection, each taking only that
//!   socket's queue lock, which follows the map shards in the lock order),
//!   counts in the entry's atomics, and evicts only after releasing it.
//!   Cloning a snapshot's `Arc` to fan out without the guard cost a locked
//!   write to a cold cache line per send, and following pointers from the
//!   entry (to a snapshot, to the user's counters) one cache miss each
//!   (`contention` bench); the guard only delays writers to that shard for
//!   the serialization and the pushes. `get_user_connections` and
//!   `is_connection_active` read the entry in place too.
//!
//! # Replay ordering
//!
//! `add_connection` replays into the new socket (a resync notice if one is
//! due, then the retained events after the client's offset, or the pending
//! ones without an offset) *before* publishing the connection in the
//! `users` and `threads` indexes, all under the user's mutex. A critical
//! event emitted concurrently takes the same mutex: either it ran first (and
//! was logged, so it is replayed in order) or it runs after the connection
//! is published (and is pushed after the replayed events into the same FIFO
//! queue). An ordinary send reads only published snapshots, and the snapshot
//! holding the new connection is published after the replay was pushed
//! (publish order matters: `with_user` publishes once `f` returned, never
//! from inside it), so the replayed events are ahead of any ordinary send
//! in the socket's queue.
//!
//! # Memory bounds
//!
//! A user slot exists only while the user has a connection or holds history
//! (retained events, or a loss not yet announced). Logs are bounded per user
//! (events, bytes, age) and per manager (`max_history_users`); expired
//! events are pruned whenever the user is touched, by
//! [`ManagerCore::prune_expired`], and by a sweep (at most once a second)
//! when the user limit is reached.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use parking_lot::Mutex;
use smallvec::SmallVec;

use crate::config::{ManagerConfig, SlowConsumerPolicy};
use crate::connection::{CloseReason, SocketId, TextFrame, WebSocketConnection, WebSocketHandle};
use crate::delivery::{Delivery, DeliveryTarget, NotDeliveredReason};
use crate::error::ManagerError;
use crate::health::{ConnectionHealth, ConnectionSummary, unix_millis};
use crate::ids::{ConnectionId, ThreadId, UserId};
use crate::managers::events::{CriticalEnvelope, validate_event_type};
use crate::managers::fan_out::{
    Recipient, Recipients, Totals, UserCounters, bump, coarse_unix_millis, fan_out,
    fan_out_to_user, no_recipients,
};
use crate::managers::history::{
    AppendRefused, EventLog, HistoryLedger, HistoryLimits, refusal_error, replay_into,
};
use crate::managers::stats::{IndexSizes, ManagerStats};
use crate::offset::StreamOffset;

/// The hasher of every index: `ahash` with random keys (see the module docs).
pub(crate) type IndexHasher = ahash::RandomState;

/// Mutable per-user state, behind the slot's mutex.
#[derive(Debug)]
struct UserState {
    /// Set when the slot is removed from `users`: whoever locks it afterwards
    /// must look the user up again.
    retired: bool,
    /// The current recipients; `with_user` publishes them in the user's
    /// [`UserEntry`] when a change is complete.
    recipients: Recipients,
    /// Retained critical events; its stream lives as long as the slot.
    log: EventLog,
}

#[derive(Debug)]
struct UserSlot {
    state: Mutex<UserState>,
    counters: Arc<UserCounters>,
}

/// Connections a user's `users` entry holds inline; a user with more has
/// them in one allocation, as before.
const INLINE_CONNECTIONS: usize = 4;

/// A `users` entry: the slot, and what sends and queries read without its
/// mutex, under the entry's shard read guard: the user's connections (a
/// copy of the slot's recipients, published by `with_user`) and the user's
/// send counters.
///
/// Why inline and not an `Arc<[Recipient]>` with the counters behind
/// another `Arc`: a send has to read this entry anyway (its key), and each
/// pointer it followed from there was one more cache line to fetch per send,
/// with 10,000 connections rarely in cache. Here the counters and the
/// sockets lie on the entry's own lines (`repr(C)`: in that order, what a
/// send writes and reads first); the ids, which only an eviction and
/// `get_user_connections` read, are behind one pointer, to keep the entry
/// (and the map's table, slack included) small.
#[derive(Debug)]
#[repr(C)]
struct UserEntry {
    /// Frames the user's sends (`send_to_user`) put into queues; thread
    /// sends, replays and critical events count in the slot's
    /// [`UserCounters`], and a health report adds both.
    sent: AtomicU64,
    /// Last `send_to_user`, in ms since the epoch (0: never); a health
    /// report takes the later of this and the slot's.
    last_activity_ms: AtomicU64,
    /// `sockets[i]` belongs to `connection_ids[i]`. The sockets, which
    /// every send reads, are inline; the ids, which only a refused push and
    /// `get_user_connections` read, are in an allocation of their own: the
    /// entry is stored in the map's table, whose slack (up to 8/7 of the
    /// users, rounded up to a power of two) multiplies every inline byte.
    sockets: SmallVec<[WebSocketHandle; INLINE_CONNECTIONS]>,
    connection_ids: Box<[ConnectionId]>,
    slot: Arc<UserSlot>,
}

impl UserEntry {
    fn new(slot: Arc<UserSlot>) -> Self {
        UserEntry {
            sent: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(0),
            sockets: SmallVec::new(),
            connection_ids: Box::default(),
            slot,
        }
    }

    /// Replaces the published connections with `recipients`.
    fn publish(&mut self, recipients: &[Recipient]) {
        self.sockets = recipients.iter().map(|r| r.socket.clone()).collect();
        self.connection_ids = recipients.iter().map(|r| r.connection_id.clone()).collect();
    }

    /// Adds the send counters to a health report filled from the slot's.
    fn report_into(&self, health: &mut ConnectionHealth) {
        health.messages_sent += self.sent.load(Ordering::Relaxed);
        let last = self.last_activity_ms.load(Ordering::Relaxed);
        if last > 0 {
            health.last_activity_ms = Some(health.last_activity_ms.map_or(last, |ms| ms.max(last)));
        }
    }
}

impl UserSlot {
    fn new() -> Self {
        UserSlot {
            state: Mutex::new(UserState {
                retired: false,
                recipients: no_recipients(),
                log: EventLog::new(next_stream()),
            }),
            counters: Arc::default(),
        }
    }
}

/// A fresh stream id: unique within the process and, because it starts from
/// the clock, increasing across restarts too.
pub(crate) fn next_stream() -> u64 {
    static NEXT: std::sync::OnceLock<AtomicU64> = std::sync::OnceLock::new();
    NEXT.get_or_init(|| AtomicU64::new(unix_millis(SystemTime::now()).saturating_mul(1000)))
        .fetch_add(1, Ordering::Relaxed)
}

/// Critical events are never dropped from a live connection, whatever the
/// configured policy: a connection that cannot take one would have a silent
/// gap, so it is closed instead and its client resumes from its offset.
const CRITICAL_POLICY: SlowConsumerPolicy = SlowConsumerPolicy::Disconnect;

/// Why an `emit` attempt stopped before storing the event.
enum EmitFailure {
    TooManyHistoryUsers,
    Error(ManagerError),
}

/// The engine shared by [`UnifiedWebSocketManager`](super::UnifiedWebSocketManager)
/// and [`IsolatedWebSocketManager`](super::IsolatedWebSocketManager).
#[derive(Debug)]
pub(crate) struct ManagerCore {
    config: ManagerConfig,
    connections: DashMap<ConnectionId, WebSocketConnection, IndexHasher>,
    sockets: DashMap<SocketId, ConnectionId, IndexHasher>,
    users: DashMap<UserId, UserEntry, IndexHasher>,
    threads: DashMap<ThreadId, Recipients, IndexHasher>,
    ledger: HistoryLedger,
    totals: Totals,
    shut_down: AtomicBool,
    /// Last full sweep of expired pending events, in ms since the epoch.
    last_sweep_ms: AtomicU64,
}

impl ManagerCore {
    pub fn new(config: ManagerConfig) -> Self {
        ManagerCore {
            ledger: HistoryLedger::new(config.max_history_users()),
            config,
            connections: DashMap::with_hasher(IndexHasher::new()),
            sockets: DashMap::with_hasher(IndexHasher::new()),
            users: DashMap::with_hasher(IndexHasher::new()),
            threads: DashMap::with_hasher(IndexHasher::new()),
            totals: Totals::default(),
            shut_down: AtomicBool::new(false),
            last_sweep_ms: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    pub fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::SeqCst)
    }

    // ----- user slots -------------------------------------------------------

    fn slot(&self, user: &UserId) -> Option<Arc<UserSlot>> {
        // Clone the slot out: no map guard may be held while its mutex is taken.
        self.users.get(user).map(|entry| Arc::clone(&entry.slot))
    }

    /// Runs `f` on `user`'s locked state (creating the slot when `create`),
    /// then retires the slot if it holds neither a connection nor history,
    /// or else publishes its recipients if `f` changed them.
    /// `None` when the user has no slot and `create` is false.
    fn with_user<R>(
        &self,
        user: &UserId,
        create: bool,
        f: impl FnOnce(&mut UserState, &Arc<UserCounters>) -> R,
    ) -> Option<R> {
        loop {
            let slot = if create {
                let entry = self
                    .users
                    .entry(user.clone())
                    .or_insert_with(|| UserEntry::new(Arc::new(UserSlot::new())));
                Arc::clone(&entry.slot)
            } else {
                self.slot(user)?
            };
            let mut state = slot.state.lock();
            if state.retired {
                // Removed from `users` after we cloned it: look again.
                continue;
            }
            let before = Arc::clone(&state.recipients);
            let result = f(&mut state, &slot.counters);
            if state.recipients.is_empty() && !state.log.holds_history() {
                state.retired = true;
                self.users
                    .remove_if(user, |_, current| Arc::ptr_eq(&current.slot, &slot));
            } else if !Arc::ptr_eq(&before, &state.recipients) {
                // Published only now that `f` is done (after any replay),
                // and under the mutex, so in the order of the changes.
                if let Some(mut entry) = self.users.get_mut(user)
                    && Arc::ptr_eq(&entry.slot, &slot)
                {
                    entry.publish(&state.recipients);
                }
            }
            return Some(result);
        }
    }

    /// Runs `f` on `user`'s entry (its published connections), under the
    /// entry's shard read guard and without the user's mutex. `f` may push
    /// into the sockets' queues (their locks come after map shards in the
    /// lock order) but must not take a user mutex or another map guard.
    fn read_published<R>(&self, user: &UserId, f: impl FnOnce(&UserEntry) -> R) -> Option<R> {
        self.users.get(user).map(|entry| f(&entry))
    }

    // ----- thread index -----------------------------------------------------

    fn thread_insert(&self, thread: ThreadId, recipient: Recipient) {
        let mut entry = self.threads.entry(thread).or_insert_with(no_recipients);
        let updated: Recipients = entry.iter().cloned().chain([recipient]).collect();
        *entry = updated;
    }

    fn thread_remove(&self, thread: &ThreadId, connection_id: &ConnectionId) {
        if let Entry::Occupied(mut entry) = self.threads.entry(thread.clone()) {
            let updated: Recipients = entry
                .get()
                .iter()
                .filter(|r| r.connection_id != *connection_id)
                .cloned()
                .collect();
            if updated.is_empty() {
                entry.remove();
            } else {
                entry.insert(updated);
            }
        }
    }

    // ----- connections ------------------------------------------------------

    pub fn add_connection(&self, connection: WebSocketConnection) -> Result<(), ManagerError> {
        if self.is_shut_down() {
            return Err(ManagerError::ShutDown);
        }
        let user = connection.user_id.clone();
        self.with_user(&user, true, |state, counters| {
            // Checked again under the lock: `shutdown` sweeps every user
            // under this lock after setting the flag.
            if self.is_shut_down() {
                return Err(ManagerError::ShutDown);
            }
            let limit = self.config.max_connections_per_user();
            if state.recipients.len() >= limit {
                // Tabs that died without the transport telling us must not
                // keep a user out: drop closed sockets before refusing.
                let closed: Vec<ConnectionId> = state
                    .recipients
                    .iter()
                    .filter(|r| r.socket.is_closed())
                    .map(|r| r.connection_id.clone())
                    .collect();
                self.evict_locked(state, counters, &user, &closed);
            }
            if state.recipients.len() >= limit {
                return Err(ManagerError::ConnectionLimit {
                    user_id: user.clone(),
                    limit,
                });
            }
            let connection_id = connection.connection_id.clone();
            let socket = connection.websocket.clone();
            let thread = connection.thread_id.clone();
            let resume = connection.resume;
            // Both ids are checked and inserted while both entries are held,
            // so a failed add leaves nothing behind.
            match self.connections.entry(connection_id.clone()) {
                Entry::Occupied(_) => {
                    return Err(ManagerError::DuplicateConnection(connection_id));
                }
                Entry::Vacant(vacant_connection) => match self.sockets.entry(socket.id()) {
                    Entry::Occupied(existing) => {
                        return Err(ManagerError::SocketAlreadyRegistered {
                            socket: socket.id(),
                            existing: existing.get().clone(),
                        });
                    }
                    Entry::Vacant(vacant_socket) => {
                        vacant_socket.insert(connection_id.clone());
                        vacant_connection.insert(connection);
                    }
                },
            }
            // Replay before publishing: nothing newer can reach this socket first.
            if let Err(error) =
                self.replay_locked(state, &socket, counters, &user, &connection_id, resume)
            {
                // A partial replay would leave the client a silent gap: refuse.
                self.connections.remove(&connection_id);
                self.sockets
                    .remove_if(&socket.id(), |_, id| *id == connection_id);
                socket.close(crate::close::replay_did_not_fit());
                return Err(error);
            }
            let recipient = Recipient {
                connection_id,
                socket,
                counters: Arc::clone(counters),
            };
            if let Some(thread) = thread {
                self.thread_insert(thread, recipient.clone());
            }
            state.recipients = state
                .recipients
                .iter()
                .cloned()
                .chain([recipient])
                .collect();
            counters.touch();
            Ok(())
        })
        .unwrap_or(Err(ManagerError::ShutDown))
    }

    /// Pushes into `socket` what its client is owed (see
    /// [`replay_into`]), with logs and counters.
    fn replay_locked(
        &self,
        state: &mut UserState,
        socket: &WebSocketHandle,
        counters: &UserCounters,
        user: &UserId,
        connection_id: &ConnectionId,
        resume: Option<StreamOffset>,
    ) -> Result<(), ManagerError> {
        self.expire_locked(state, user);
        let retention = (
            self.config.history_capacity(),
            self.config.history_max_age(),
        );
        let replayed = replay_into(
            &mut state.log,
            socket,
            connection_id,
            resume,
            &self.ledger,
            retention,
        )
        .inspect_err(|error| {
            tracing::warn!(user_id = %user, %connection_id, %error,
                    "replay did not fit the new socket's queue; connection refused");
        })?;
        if let Some(notice) = &replayed.notice {
            // Routine after a restart or a long absence; a loss of events no
            // connection took was already warned about when it happened.
            tracing::debug!(user_id = %user, %connection_id, reason = ?notice.reason,
                requested = ?notice.requested, lost = ?notice.lost,
                "resync notice sent: the client missed critical events that are no longer retained");
            bump(&self.totals.resync_notices, 1);
        }
        if replayed.events > 0 {
            tracing::debug!(user_id = %user, %connection_id, events = replayed.events,
                "replayed critical events");
        }
        let events = replayed.events as u64;
        bump(&counters.sent, events);
        bump(&self.totals.sent, events);
        bump(&self.totals.replayed, events);
        Ok(())
    }

    fn expire_locked(&self, state: &mut UserState, user: &UserId) {
        let expired = state
            .log
            .expire(Instant::now(), self.config.history_max_age(), &self.ledger);
        if expired.pending > 0 {
            tracing::warn!(user_id = %user, lost = expired.pending,
                "critical events expired before any connection of the user took them; the next connection is told");
        }
        bump(&self.totals.history_expired, expired.events as u64);
        bump(&self.totals.pending_expired, expired.pending as u64);
    }

    /// Removes `connection_id` if it belongs to `user`, from every index, and
    /// closes its socket with `reason`. Runs under the user's lock.
    fn remove_locked(
        &self,
        state: &mut UserState,
        counters: &UserCounters,
        user: &UserId,
        connection_id: &ConnectionId,
        reason: CloseReason,
    ) -> Option<WebSocketConnection> {
        let (_, connection) = self
            .connections
            .remove_if(connection_id, |_, c| c.user_id == *user)?;
        self.sockets
            .remove_if(&connection.websocket.id(), |_, id| id == connection_id);
        if let Some(thread) = &connection.thread_id {
            self.thread_remove(thread, connection_id);
        }
        state.recipients = state
            .recipients
            .iter()
            .filter(|r| r.connection_id != *connection_id)
            .cloned()
            .collect();
        connection.websocket.close(reason);
        counters.touch();
        Some(connection)
    }

    /// Finds the owner of `connection_id` and runs `f` under its lock; `f`
    /// returns `None` when the connection moved to another user meanwhile,
    /// and the lookup is retried. `None` for an unknown connection.
    fn with_connection_owner<R>(
        &self,
        connection_id: &ConnectionId,
        mut f: impl FnMut(&mut UserState, &Arc<UserCounters>, &UserId) -> Option<R>,
    ) -> Option<R> {
        loop {
            let user = self.connections.get(connection_id)?.user_id.clone();
            if let Some(Some(result)) =
                self.with_user(&user, false, |state, counters| f(state, counters, &user))
            {
                return Some(result);
            }
        }
    }

    pub fn remove_connection(
        &self,
        connection_id: &ConnectionId,
        reason: CloseReason,
    ) -> Option<WebSocketConnection> {
        self.with_connection_owner(connection_id, |state, counters, user| {
            self.remove_locked(state, counters, user, connection_id, reason.clone())
        })
    }

    pub fn get_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection> {
        self.connections.get(connection_id).map(|c| {
            // The clone is a locked increment per shared field, each waiting
            // for the loads before it: touch them all first, so their cache
            // misses overlap (the stored connection id was just read, to
            // compare keys).
            c.user_id.prefetch();
            c.websocket.prefetch();
            if let Some(thread) = &c.thread_id {
                thread.prefetch();
            }
            c.value().clone()
        })
    }

    pub fn get_user_connections(&self, user: &UserId) -> HashSet<ConnectionId> {
        self.read_published(user, |entry| {
            // Each clone is a locked increment, which waits for the loads
            // before it: touch every id first, so their misses overlap.
            entry.connection_ids.iter().for_each(ConnectionId::prefetch);
            entry.connection_ids.iter().cloned().collect()
        })
        .unwrap_or_default()
    }

    pub fn is_connection_active(&self, user: &UserId) -> bool {
        self.read_published(user, |entry| entry.sockets.iter().any(|s| !s.is_closed()))
            .unwrap_or(false)
    }

    pub fn get_connection_id_by_websocket(
        &self,
        websocket: &WebSocketHandle,
    ) -> Option<ConnectionId> {
        self.sockets
            .get(&websocket.id())
            .map(|id| id.value().clone())
    }

    pub fn update_connection_thread(&self, connection_id: &ConnectionId, thread: ThreadId) -> bool {
        if self.is_shut_down() {
            return false;
        }
        self.with_connection_owner(connection_id, |state, counters, user| {
            let previous = {
                let mut connection = self.connections.get_mut(connection_id)?;
                if connection.user_id != *user {
                    return None;
                }
                connection.thread_id.replace(thread.clone())
            };
            if previous.as_ref() == Some(&thread) {
                return Some(true);
            }
            if let Some(previous) = &previous {
                self.thread_remove(previous, connection_id);
            }
            if let Some(recipient) = state
                .recipients
                .iter()
                .find(|r| r.connection_id == *connection_id)
            {
                self.thread_insert(thread.clone(), recipient.clone());
            }
            counters.touch();
            Some(true)
        })
        .unwrap_or(false)
    }

    // ----- sending ----------------------------------------------------------

    fn evict(&self, evicted: &[ConnectionId]) {
        for connection_id in evicted {
            self.remove_connection(connection_id, CloseReason::normal());
        }
    }

    fn fail(
        &self,
        counters: &[&UserCounters],
        target: DeliveryTarget,
        reason: NotDeliveredReason,
    ) -> ManagerError {
        for counters in counters {
            bump(&counters.failed, 1);
        }
        bump(&self.totals.failed, 1);
        ManagerError::NotDelivered { target, reason }
    }

    pub fn send_to_user(
        &self,
        user: &UserId,
        message: &serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        if self.is_shut_down() {
            return Err(ManagerError::ShutDown);
        }
        let target = || DeliveryTarget::User(user.clone());
        let policy = self.config.slow_consumer_policy();
        // The published connections, without the user's mutex (module
        // docs), fanned out while the map's read guard is held: cloning a
        // snapshot's `Arc` instead was a locked write to a cold cache line
        // on every send. Nothing in the closure touches the maps; evictions
        // happen after it.
        let sent = self.read_published(user, |entry| {
            // The slot's counters, only for what went wrong.
            let counters = || &*entry.slot.counters;
            if entry.sockets.is_empty() {
                // A user without connections may still have a slot (history).
                return Err(self.fail(&[counters()], target(), NotDeliveredReason::NoConnections));
            }
            let frame = TextFrame::from_json(message)?;
            let fan = fan_out_to_user(
                &entry.sockets,
                || &entry.connection_ids,
                counters,
                &frame,
                policy,
                &self.totals,
            );
            bump(&entry.sent, fan.delivered as u64);
            entry
                .last_activity_ms
                .store(coarse_unix_millis(), Ordering::Relaxed);
            let result = fan.result(target);
            if result.is_err() {
                bump(&counters().failed, 1);
                bump(&self.totals.failed, 1);
            }
            Ok((result, fan.evict))
        });
        let Some(sent) = sent else {
            return Err(self.fail(&[], target(), NotDeliveredReason::NoConnections));
        };
        let (result, evict) = sent?;
        self.evict(&evict);
        result
    }

    pub fn send_to_thread(
        &self,
        thread: &ThreadId,
        message: &serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        if self.is_shut_down() {
            return Err(ManagerError::ShutDown);
        }
        let target = || DeliveryTarget::Thread(thread.clone());
        let Some(recipients) = self.threads.get(thread).map(|r| Arc::clone(r.value())) else {
            return Err(self.fail(&[], target(), NotDeliveredReason::NoThreadConnections));
        };
        let frame = TextFrame::from_json(message)?;
        let fan = fan_out(
            &recipients,
            &frame,
            self.config.slow_consumer_policy(),
            &self.totals,
        );
        self.evict(&fan.evict);
        let mut users: Vec<&Arc<UserCounters>> = Vec::new();
        for recipient in recipients.iter() {
            if !users.iter().any(|c| Arc::ptr_eq(c, &recipient.counters)) {
                users.push(&recipient.counters);
            }
        }
        for counters in &users {
            counters.touch();
        }
        fan.result(target).inspect_err(|_| {
            for counters in &users {
                bump(&counters.failed, 1);
            }
            bump(&self.totals.failed, 1);
        })
    }

    pub fn emit_critical_event(
        &self,
        user: &UserId,
        event_type: &str,
        data: serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        validate_event_type(event_type)?;
        if self.is_shut_down() {
            return Err(ManagerError::ShutDown);
        }
        let mut envelope = CriticalEnvelope::new(event_type, data);
        match self.try_emit(user, &mut envelope) {
            Err(EmitFailure::TooManyHistoryUsers) => {
                // Expired logs may be holding the places: sweep (at most
                // once a second, and never under a user lock), then retry once.
                if self.sweep_expired_throttled() > 0
                    && let Ok(delivery) = self.try_emit(user, &mut envelope)
                {
                    return Ok(delivery);
                }
                bump(&self.totals.critical_rejected, 1);
                bump(&self.totals.failed, 1);
                let limit = self.ledger.limit();
                tracing::warn!(user_id = %user, event_type, limit,
                    "critical event refused: too many users hold history");
                Err(ManagerError::HistoryUsersFull { limit })
            }
            Err(EmitFailure::Error(error)) => Err(error),
            Ok(delivery) => Ok(delivery),
        }
    }

    fn history_limits(&self) -> HistoryLimits {
        HistoryLimits {
            capacity: self.config.history_capacity(),
            max_bytes: self.config.history_max_bytes(),
        }
    }

    /// Logs the event, then pushes it to the user's connections unless
    /// older events are still waiting for one (order first).
    fn try_emit(
        &self,
        user: &UserId,
        envelope: &mut CriticalEnvelope,
    ) -> Result<Delivery, EmitFailure> {
        self.with_user(user, true, |state, counters| {
            if self.is_shut_down() {
                return Err(EmitFailure::Error(ManagerError::ShutDown));
            }
            self.expire_locked(state, user);
            let offset = state.log.next_offset();
            envelope.stream = offset.stream;
            envelope.sequence = offset.sequence;
            let frame = TextFrame::from_json(&*envelope)
                .map_err(|e| EmitFailure::Error(ManagerError::Serialization(e)))?;
            counters.touch();
            // Older pending events go first, so order holds for every reader.
            self.flush_pending_locked(state, counters, user);
            // Retained before it is sent: an event a client may have seen can
            // always be resumed after.
            match state.log.append(
                frame.clone(),
                Instant::now(),
                self.history_limits(),
                &self.ledger,
            ) {
                Ok(evicted) => bump(&self.totals.history_evicted, evicted as u64),
                Err(AppendRefused::TooManyUsers) => return Err(EmitFailure::TooManyHistoryUsers),
                Err(refused) => {
                    bump(&counters.failed, 1);
                    bump(&self.totals.failed, 1);
                    bump(&self.totals.critical_rejected, 1);
                    let error = refusal_error(
                        refused,
                        user,
                        &frame,
                        self.history_limits(),
                        &state.log,
                        &self.ledger,
                    );
                    tracing::warn!(user_id = %user, event_type = %envelope.event_type, %error,
                        "critical event refused");
                    return Err(EmitFailure::Error(error));
                }
            }
            if state.log.pending() == 1 && !state.recipients.is_empty() {
                let recipients = Arc::clone(&state.recipients);
                let fan = fan_out(&recipients, &frame, CRITICAL_POLICY, &self.totals);
                self.evict_locked(state, counters, user, &fan.evict);
                if fan.delivered > 0 {
                    state.log.mark_taken_through(offset.sequence);
                    return Ok(
                        Delivery::delivered(fan.delivered, fan.targeted - fan.delivered)
                            .with_offset(offset),
                    );
                }
            }
            let pending = state.log.pending();
            tracing::debug!(user_id = %user, event_type = %envelope.event_type, pending,
                "critical event retained until a connection of the user takes it");
            Ok(Delivery::queued(pending).with_offset(offset))
        })
        .unwrap_or(Err(EmitFailure::Error(ManagerError::ShutDown)))
    }

    /// Delivers pending events to the user's current connections, oldest
    /// first, stopping at the first one no connection takes.
    fn flush_pending_locked(&self, state: &mut UserState, counters: &UserCounters, user: &UserId) {
        while !state.recipients.is_empty() {
            let Some((sequence, event)) = state.log.first_pending() else {
                return;
            };
            let frame = event.frame.clone();
            let recipients = Arc::clone(&state.recipients);
            let fan = fan_out(&recipients, &frame, CRITICAL_POLICY, &self.totals);
            self.evict_locked(state, counters, user, &fan.evict);
            if fan.delivered == 0 {
                return;
            }
            state.log.mark_taken_through(sequence);
        }
    }

    fn evict_locked(
        &self,
        state: &mut UserState,
        counters: &UserCounters,
        user: &UserId,
        evicted: &[ConnectionId],
    ) {
        for connection_id in evicted {
            self.remove_locked(state, counters, user, connection_id, CloseReason::normal());
        }
    }

    // ----- health, maintenance ---------------------------------------------

    pub fn get_connection_health(&self, user: &UserId) -> ConnectionHealth {
        let mut health = ConnectionHealth::empty(user.clone());
        self.with_user(user, false, |state, counters| {
            self.expire_locked(state, user);
            health.total_connections = state.recipients.len();
            health.active_connections = state
                .recipients
                .iter()
                .filter(|r| !r.socket.is_closed())
                .count();
            health.pending_critical_events = state.log.pending();
            health.retained_critical_events = state.log.len();
            health.retained_bytes = state.log.bytes();
            health.latest_offset = (state.log.latest().sequence > 0).then(|| state.log.latest());
            health.oldest_retained = state.log.oldest_retained();
            health.history_evicted = state.log.evicted;
            health.history_expired = state.log.expired;
            counters.report_into(&mut health);
            // The user's own sends count in the entry (`UserEntry`).
            if let Some(entry) = self.users.get(user)
                && Arc::ptr_eq(&entry.slot.counters, counters)
            {
                entry.report_into(&mut health);
            }
            health.connections = state
                .recipients
                .iter()
                .filter_map(|r| {
                    let connection = self.connections.get(&r.connection_id)?;
                    Some(ConnectionSummary::of(&connection))
                })
                .collect();
            health
                .connections
                .sort_by(|a, b| a.connection_id.cmp(&b.connection_id));
        });
        health
    }

    fn user_ids(&self) -> Vec<UserId> {
        self.users.iter().map(|entry| entry.key().clone()).collect()
    }

    /// Drops every expired retained event; returns how many.
    pub fn prune_expired(&self) -> usize {
        let before = self.totals.history_expired.load(Ordering::Relaxed);
        for user in self.user_ids() {
            self.with_user(&user, false, |state, _| self.expire_locked(state, &user));
        }
        let after = self.totals.history_expired.load(Ordering::Relaxed);
        usize::try_from(after - before).unwrap_or(usize::MAX)
    }

    fn sweep_expired_throttled(&self) -> usize {
        let now = unix_millis(SystemTime::now());
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 1000
            || self
                .last_sweep_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return 0;
        }
        self.prune_expired()
    }

    /// Closes every socket with `going_away`, empties every index, drops the
    /// retained events, and refuses all further work.
    pub fn shutdown(&self) {
        if self.shut_down.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut closed = 0usize;
        let mut discarded = 0usize;
        for user in self.user_ids() {
            self.with_user(&user, false, |state, counters| {
                let ids: Vec<ConnectionId> = state
                    .recipients
                    .iter()
                    .map(|r| r.connection_id.clone())
                    .collect();
                for connection_id in &ids {
                    if self
                        .remove_locked(
                            state,
                            counters,
                            &user,
                            connection_id,
                            CloseReason::going_away(),
                        )
                        .is_some()
                    {
                        closed += 1;
                    }
                }
                discarded += state.log.clear(&self.ledger);
            });
        }
        bump(&self.totals.pending_discarded, discarded as u64);
        if discarded > 0 {
            tracing::warn!(
                discarded,
                "shutdown discarded critical events no connection had taken"
            );
        }
        tracing::info!(closed, "manager shut down");
    }

    pub fn index_sizes(&self) -> IndexSizes {
        IndexSizes {
            connections: self.connections.len(),
            users: self.users.len(),
            sockets: self.sockets.len(),
            threads: self.threads.len(),
            history_users: self.ledger.users(),
        }
    }

    pub fn stats(&self) -> ManagerStats {
        let t = &self.totals;
        ManagerStats {
            indexes: self.index_sizes(),
            messages_sent: t.sent.load(Ordering::Relaxed),
            messages_failed: t.failed.load(Ordering::Relaxed),
            messages_dropped: t.dropped.load(Ordering::Relaxed),
            slow_consumer_disconnects: t.slow_disconnects.load(Ordering::Relaxed),
            critical_rejected: t.critical_rejected.load(Ordering::Relaxed),
            history_evicted: t.history_evicted.load(Ordering::Relaxed),
            history_expired: t.history_expired.load(Ordering::Relaxed),
            pending_expired: t.pending_expired.load(Ordering::Relaxed),
            replayed: t.replayed.load(Ordering::Relaxed),
            resync_notices: t.resync_notices.load(Ordering::Relaxed),
            pending_discarded_at_shutdown: t.pending_discarded.load(Ordering::Relaxed),
        }
    }
}
