//! [`LocalIndex`]: the connections of this process, the one index every
//! shipped manager runs on (the unified and isolated managers with the
//! in-memory history, the cluster manager with Redis's). It knows nothing
//! of how critical events are numbered or retained: a history store
//! ([`super::history::HistoryStore`]) does, and hands the index each event
//! with its offset.
//!
//! # Indexes
//!
//! | index | key -> value | used by |
//! |---|---|---|
//! | `connections` | `ConnectionId` -> `WebSocketConnection` | `get_connection`, removal |
//! | `sockets` | `SocketId` -> `ConnectionId` | `get_connection_id_by_websocket` |
//! | `users` | `UserId` -> `UserEntry` (the `UserSlot`: members and their cursors, counters; and, inline, the published connections and the user's send counters) | user sends, critical events, health |
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
//! # A cursor per connection
//!
//! Every connection remembers the last critical event it was given (its
//! [`Cursor`]). An event is pushed only when it is the next one
//! (`sequence + 1` on the same stream); an older one is a duplicate and
//! skipped; anything else is a gap, and the connection is closed with
//! [`close::RESUME`](crate::close::RESUME) so its client resumes from its
//! offset and the history replays exactly what it missed. Nothing is skipped
//! silently. With the in-memory history events arrive in order under the
//! store's lock and a gap cannot happen; through Redis pub/sub (at most
//! once) it can.
//!
//! # Catching up
//!
//! [`LocalIndex::begin`] registers a connection as *catching up* before its
//! history is read. Critical events that arrive meanwhile are buffered (at
//! most one queue's worth); [`LocalIndex::finish`] pushes the history, then
//! the buffered events after it, under the user's lock, and only then
//! publishes the connection to sends: nothing newer can reach the socket
//! before its replay, and no event falls between the read and the
//! publication.
//!
//! # Locking discipline
//!
//! * Every change to a user's connections (add, remove, thread move,
//!   eviction, critical event, replay) runs under that user's slot mutex.
//!   Changes of one user are therefore serialized, and the indexes move from
//!   one consistent state to the next; users never wait for each other except
//!   on a map shard for the duration of one insert.
//! * Readers take no user lock. A query on one index that races with a change
//!   may see it a moment before or after a query on another index does (a
//!   registration publishes the connection and socket entries first, and the
//!   user and thread entries only after the replay); every change is
//!   complete when the call that makes it returns.
//! * One lock per user orders everything of that user, the in-memory
//!   history's log included (it lives in the user's slot, [`UserHistory`]):
//!   an event is numbered, retained and delivered under it.
//! * Lock order: the user mutex, then map shards
//!   (`connections` before `sockets`), then a socket's queue lock. No code
//!   holds a map guard while taking a user mutex (slots are cloned out of
//!   `users` first), and no code holds two user mutexes.
//! * No guard of any kind is held across an `.await`: nothing here awaits.
//!   Sends are `try_send`, which never blocks.
//! * A user's recipients are its live members (a user has at most
//!   `max_connections_per_user` connections); code under the user's mutex
//!   reads them there. When a change of them under the mutex is complete
//!   (after any replay), `with_user` *publishes* them into the
//!   user's `users` entry, still under the mutex, so publications happen in
//!   the order of the changes: its sockets are copied into the entry
//!   itself, its connection ids beside them (each list inline for one
//!   connection, else in one allocation; the ids are read only by an
//!   eviction and `get_user_connections`). Sends and queries read them under the entry's
//!   shard read guard, without the user's mutex, in place: a send fans out
//!   under that read guard (bounded work: one non-blocking push per
//!   connection, each taking only that socket's queue lock, which follows
//!   the map shards in the lock order), counts in the entry's atomics, and
//!   evicts only after releasing it. Cloning a snapshot's `Arc` to fan out
//!   without the guard cost a locked write to a cold cache line per send,
//!   and following pointers from the entry (to a snapshot, to the user's
//!   counters) one cache miss each (`contention` bench); the guard only
//!   delays writers to that shard for the serialization and the pushes.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use parking_lot::Mutex;
use smallvec::SmallVec;

use crate::close::{self, CloseReason};
use crate::config::{ManagerConfig, SlowConsumerPolicy};
use crate::connection::{SocketId, TextFrame, WebSocketConnection, WebSocketHandle};
use crate::error::ManagerError;
use crate::health::{ConnectionHealth, ConnectionSummary};
use crate::ids::{ConnectionId, ThreadId, UserId};
use crate::managers::fan_out::{
    FanOut, HoldsCounters, Recipient, Recipients, SharedCounters, Totals, UserCounters, bump,
    coarse_unix_millis, fan_out, fan_out_to_members, fan_out_to_user, no_recipients,
};
use crate::managers::stats::{IndexSizes, ManagerStats};
use crate::offset::{ResumePoint, StreamOffset, StreamPosition};

/// The hasher of every index: `ahash` with random keys (see the module docs).
pub(crate) type IndexHasher = ahash::RandomState;

/// Critical events are never dropped from a live connection, whatever the
/// configured policy: a connection that cannot take one would have a silent
/// gap, so it is closed instead and its client resumes from its offset.
const CRITICAL_POLICY: SlowConsumerPolicy = SlowConsumerPolicy::Disconnect;

/// Where a connection stands in its user's stream of critical events.
#[derive(Debug)]
enum Cursor {
    /// Registered, history not in yet: critical events wait here.
    CatchingUp {
        buffered: Vec<(StreamOffset, TextFrame)>,
        overflowed: bool,
    },
    /// In step: `at` is the last event it was given (`None`: none yet, and
    /// the user had no stream when it caught up).
    Live { at: Option<StreamOffset> },
}

/// A registered connection of the user, live or catching up.
#[derive(Debug)]
struct Member {
    connection_id: ConnectionId,
    socket: WebSocketHandle,
    cursor: Cursor,
    /// A fingerprint of the event the cursor is at ([`frame_print`]; 0:
    /// unknown or not kept), so that a history store that lost events can
    /// be caught numbering different events with the same offsets.
    print: u64,
}

impl Member {
    /// Whether the connection went live (is published to sends).
    fn is_live(&self) -> bool {
        matches!(self.cursor, Cursor::Live { .. })
    }
}

/// A fingerprint of a critical event's frame, to tell two events with the
/// same offset apart (within this process only).
pub(crate) fn frame_print(frame: &TextFrame) -> u64 {
    static HASHER: std::sync::OnceLock<ahash::RandomState> = std::sync::OnceLock::new();
    HASHER
        .get_or_init(|| ahash::RandomState::with_seeds(7, 11, 13, 17))
        .hash_one(frame.as_str().as_bytes())
        .max(1)
}

/// What a history store keeps per user in the user's slot, under the
/// user's lock (the in-memory history's log; nothing for Redis's): one
/// lock orders a user's registrations and critical events.
pub(crate) trait UserHistory: Default + std::fmt::Debug + Send + 'static {
    /// Whether it holds something that must outlive the user's connections
    /// (the slot is kept while it does).
    fn holds(&self) -> bool;
}

impl UserHistory for () {
    fn holds(&self) -> bool {
        false
    }
}

/// Mutable per-user state, behind the slot's mutex.
#[derive(Debug)]
struct UserState<H> {
    /// Set when the slot is removed from `users`: whoever locks it afterwards
    /// must look the user up again.
    retired: bool,
    /// Every registered connection of the user, with its cursor (inline for
    /// one: most users have one tab, and a `Vec` would allocate four).
    members: SmallVec<[Member; 1]>,
    /// Set when the live members changed (one went live or left):
    /// `with_user` publishes them in the user's [`UserEntry`] when the change
    /// is complete. (The live members are the members whose cursor is
    /// [`Cursor::Live`], in registration order: no list of them is kept
    /// besides the published one, which was one more allocation per user.)
    republish: bool,
    /// The history store's part.
    history: H,
}

/// A user's slot: its state behind its mutex, and its counters, which the
/// user's [`Recipient`]s share (as [`SharedCounters`]: the slot itself, so
/// the counters take no allocation of their own). Code under the user's
/// lock gets the slot as `counters` and reads the counters through it
/// (`Deref`).
#[derive(Debug)]
struct UserSlot<H> {
    counters: UserCounters,
    state: Mutex<UserState<H>>,
}

impl<H> std::ops::Deref for UserSlot<H> {
    type Target = UserCounters;

    fn deref(&self) -> &UserCounters {
        &self.counters
    }
}

impl<H: UserHistory> HoldsCounters for UserSlot<H> {
    fn counters(&self) -> &UserCounters {
        &self.counters
    }
}

/// The user's counters as a [`Recipient`] shares them.
fn shared<H: UserHistory>(slot: &Arc<UserSlot<H>>) -> SharedCounters {
    Arc::clone(slot) as SharedCounters
}

/// Connections a user's `users` entry holds inline; a user with more has
/// them in one allocation. One: most users have one tab, and every byte of
/// the entry is paid per user and again for the table's slack (a hash
/// table is half to seven eighths full), where the bare registry a server
/// writes by hand holds one small entry per socket (`users_entry_stays_small`).
const INLINE_CONNECTIONS: usize = 1;

/// A `users` entry: the slot, and what sends and queries read without its
/// mutex, under the entry's shard read guard: the user's live connections
/// (a copy of the slot's live members, published by `with_user`) and the
/// user's send counters.
///
/// Why inline and not an `Arc<[Recipient]>` with the counters behind
/// another `Arc`: a send has to read this entry anyway (its key), and each
/// pointer it followed from there was one more cache line to fetch per send,
/// with 10,000 connections rarely in cache. Here the counters and the
/// sockets lie on the entry's own lines (`repr(C)`: in that order, what a
/// send writes and reads first), then the ids, which only an eviction and
/// `get_user_connections` read. One connection of each is inline: a user
/// with more has each list in one allocation.
#[derive(Debug)]
#[repr(C)]
struct UserEntry<H> {
    /// Frames the user's sends (`send_to_user`) put into queues; thread
    /// sends, replays and critical events count in the slot's
    /// [`UserCounters`], and a health report adds both.
    sent: AtomicU64,
    /// Last `send_to_user`, in ms since the epoch (0: never); a health
    /// report takes the later of this and the slot's.
    last_activity_ms: AtomicU64,
    /// `sockets[i]` belongs to `connection_ids[i]` (see the type's docs).
    sockets: SmallVec<[WebSocketHandle; INLINE_CONNECTIONS]>,
    /// Inline as the sockets: a boxed slice was one more allocation (32
    /// bytes with malloc's header) per user.
    connection_ids: SmallVec<[ConnectionId; INLINE_CONNECTIONS]>,
    slot: Arc<UserSlot<H>>,
}

impl<H> UserEntry<H> {
    fn new(slot: Arc<UserSlot<H>>) -> Self {
        UserEntry {
            sent: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(0),
            sockets: SmallVec::new(),
            connection_ids: SmallVec::new(),
            slot,
        }
    }

    /// Replaces the published connections with the live `members`.
    fn publish(&mut self, members: &[Member]) {
        let live = || members.iter().filter(|m| m.is_live());
        self.sockets = live().map(|m| m.socket.clone()).collect();
        self.connection_ids = live().map(|m| m.connection_id.clone()).collect();
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

impl<H: UserHistory> UserSlot<H> {
    fn new() -> Self {
        UserSlot {
            state: Mutex::new(UserState {
                retired: false,
                members: SmallVec::new(),
                republish: false,
                history: H::default(),
            }),
            counters: UserCounters::default(),
        }
    }
}

/// What [`LocalIndex::finish`] pushes before the connection goes live.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    /// A resync notice, first.
    pub notice: Option<TextFrame>,
    /// Retained events after the client's offset, oldest first.
    pub events: Vec<(StreamOffset, TextFrame)>,
    /// The user's stream head when the history was read (`None`: no
    /// stream yet).
    pub head: Option<StreamOffset>,
}

/// A connection [`LocalIndex::finish`] made live.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Finished {
    /// Retained events replayed (a notice not counted).
    pub events: usize,
    /// The last event it was given: everything up to here is taken.
    pub at: Option<StreamOffset>,
}

/// How a critical event reaches the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// In stream order (the in-memory history, under its lock; the Redis
    /// bus): an event that is not the next one for a connection is a gap.
    InOrder,
    /// The emitting node's own copy, which may overtake events still in
    /// flight through Redis: not the next one means "wait for the bus".
    Direct,
}

/// What a critical event did on this node.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CriticalOutcome {
    /// Connections that took it now.
    pub delivered: usize,
    /// Connections that will get it later (catching up, or in step only
    /// once an earlier event arrives).
    pub deferred: usize,
    /// Connections closed for a gap or a full queue.
    pub closed: usize,
}

/// A change a [`LocalIndex`] reports to its observer (the cluster manager
/// keeps its presence in Redis with them).
#[derive(Debug)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))] // read by the cluster's observer
pub(crate) enum IndexChange<'a> {
    /// The connection went live.
    Joined(&'a WebSocketConnection),
    /// The connection left.
    Left(&'a ConnectionId),
    /// A live connection was bound to another thread.
    Moved(&'a WebSocketConnection),
}

/// Where index changes go; it must not block (it queues).
pub(crate) type IndexObserver = Box<dyn Fn(IndexChange<'_>) + Send + Sync>;

enum Decision {
    Push,
    Skip,
    Defer,
    Gap,
}

/// What to do with critical event `offset` for a connection at `cursor`.
fn decide(
    cursor: &mut Cursor,
    offset: StreamOffset,
    arrival: Arrival,
    limit: usize,
    frame: &TextFrame,
) -> Decision {
    match cursor {
        Cursor::CatchingUp {
            buffered,
            overflowed,
        } => {
            // The direct copy is not buffered: the in-order one follows.
            if arrival == Arrival::InOrder {
                if buffered.len() < limit {
                    buffered.push((offset, frame.clone()));
                } else {
                    *overflowed = true;
                }
            }
            Decision::Defer
        }
        Cursor::Live { at } => {
            let next = match at {
                None => offset.sequence == 1,
                Some(at) if at.stream == offset.stream => {
                    if offset.sequence <= at.sequence {
                        return Decision::Skip;
                    }
                    offset.sequence == at.sequence + 1
                }
                Some(_) => false,
            };
            if next {
                Decision::Push
            } else if arrival == Arrival::Direct {
                Decision::Defer
            } else {
                Decision::Gap
            }
        }
    }
}

/// A registered connection as the `connections` index keeps it: the
/// [`WebSocketConnection`] without its id (the map's key) and with its
/// metadata boxed (most connections have none), itself boxed so that the
/// table, at most seven eighths full and often half, holds a key and a
/// pointer per slot rather than the whole record (`connections_entry_stays_small`).
#[derive(Debug)]
struct StoredConnection {
    user_id: UserId,
    thread_id: Option<ThreadId>,
    websocket: WebSocketHandle,
    connected_at: std::time::SystemTime,
    metadata: Option<Box<serde_json::Map<String, serde_json::Value>>>,
    /// Boxed too: most connections do not resume, and the print makes it
    /// 32 bytes.
    resume: Option<Box<ResumePoint>>,
}

impl StoredConnection {
    fn new(connection: WebSocketConnection) -> Box<Self> {
        let WebSocketConnection {
            connection_id: _,
            user_id,
            thread_id,
            websocket,
            connected_at,
            metadata,
            resume,
            resume_print,
        } = connection;
        Box::new(StoredConnection {
            user_id,
            thread_id,
            websocket,
            connected_at,
            metadata: (!metadata.is_empty()).then(|| Box::new(metadata)),
            resume: resume.map(|offset| {
                Box::new(ResumePoint {
                    offset,
                    print: resume_print,
                })
            }),
        })
    }

    /// The connection `connection_id` as registered.
    fn to_connection(&self, connection_id: &ConnectionId) -> WebSocketConnection {
        WebSocketConnection {
            connection_id: connection_id.clone(),
            user_id: self.user_id.clone(),
            thread_id: self.thread_id.clone(),
            websocket: self.websocket.clone(),
            connected_at: self.connected_at,
            metadata: self.metadata.as_deref().cloned().unwrap_or_default(),
            resume: self.resume.as_ref().map(|point| point.offset),
            resume_print: self.resume.as_ref().and_then(|point| point.print),
        }
    }

    /// The same, the record consumed.
    fn into_connection(self, connection_id: ConnectionId) -> WebSocketConnection {
        WebSocketConnection {
            connection_id,
            user_id: self.user_id,
            thread_id: self.thread_id,
            websocket: self.websocket,
            connected_at: self.connected_at,
            metadata: self.metadata.map(|m| *m).unwrap_or_default(),
            resume: self.resume.as_ref().map(|point| point.offset),
            resume_print: self.resume.as_ref().and_then(|point| point.print),
        }
    }

    fn summary(&self, connection_id: &ConnectionId) -> ConnectionSummary {
        ConnectionSummary {
            connection_id: connection_id.clone(),
            thread_id: self.thread_id.clone(),
            connected_at_ms: crate::health::unix_millis(self.connected_at),
            queue_depth: self.websocket.queue_depth(),
            closed: self.websocket.is_closed(),
        }
    }
}

/// The connections of this process (see the module docs), with a history
/// store's per-user part `H` in each user's slot.
pub(crate) struct LocalIndex<H = ()> {
    config: ManagerConfig,
    observer: Option<IndexObserver>,
    connections: DashMap<ConnectionId, Box<StoredConnection>, IndexHasher>,
    sockets: DashMap<SocketId, ConnectionId, IndexHasher>,
    users: DashMap<UserId, UserEntry<H>, IndexHasher>,
    threads: DashMap<ThreadId, Recipients, IndexHasher>,
    totals: Totals,
    shut_down: AtomicBool,
    /// Keep each cursor's [`frame_print`] (the cluster's audit compares
    /// them with what Redis holds).
    prints: bool,
}

impl<H> std::fmt::Debug for LocalIndex<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalIndex")
            .field("connections", &self.connections.len())
            .field("users", &self.users.len())
            .field("threads", &self.threads.len())
            .field("shut_down", &self.shut_down.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<H: UserHistory> LocalIndex<H> {
    /// An empty index.
    pub fn new(config: ManagerConfig) -> Self {
        LocalIndex {
            config,
            observer: None,
            connections: DashMap::with_hasher(IndexHasher::new()),
            sockets: DashMap::with_hasher(IndexHasher::new()),
            users: DashMap::with_hasher(IndexHasher::new()),
            threads: DashMap::with_hasher(IndexHasher::new()),
            totals: Totals::default(),
            shut_down: AtomicBool::new(false),
            prints: false,
        }
    }

    /// The same, reporting every change to `observer` and keeping each
    /// cursor's fingerprint (the cluster manager's index).
    #[cfg(feature = "redis")]
    pub fn observed(config: ManagerConfig, observer: IndexObserver) -> Self {
        LocalIndex {
            observer: Some(observer),
            prints: true,
            ..LocalIndex::new(config)
        }
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    pub fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::SeqCst)
    }

    fn report(&self, change: impl FnOnce() -> Option<WebSocketConnection>, what: Change) {
        let Some(observer) = &self.observer else {
            return;
        };
        if let Some(connection) = change() {
            observer(match what {
                Change::Joined => IndexChange::Joined(&connection),
                Change::Moved => IndexChange::Moved(&connection),
            });
        }
    }

    // ----- user slots -------------------------------------------------------

    /// Runs `f` on `user`'s locked state (creating the slot when `create`),
    /// then retires the slot if it holds no connection, or else publishes
    /// its live members if `f` changed them. `None` when the user has no slot
    /// and `create` is false.
    fn with_user<R>(
        &self,
        user: &UserId,
        create: bool,
        f: impl FnOnce(&mut UserState<H>, &Arc<UserSlot<H>>) -> R,
    ) -> Option<R> {
        loop {
            let slot = if create {
                let entry = self
                    .users
                    .entry(user.clone())
                    .or_insert_with(|| UserEntry::new(Arc::new(UserSlot::new())));
                Arc::clone(&entry.slot)
            } else {
                // Cloned out: no map guard may be held while its mutex is taken.
                Arc::clone(&self.users.get(user)?.slot)
            };
            let mut state = slot.state.lock();
            if state.retired {
                // Removed from `users` after we cloned it: look again.
                continue;
            }
            let result = f(&mut state, &slot);
            if state.members.is_empty() && !state.history.holds() {
                state.retired = true;
                self.users
                    .remove_if(user, |_, current| Arc::ptr_eq(&current.slot, &slot));
            } else if std::mem::take(&mut state.republish) {
                // Published only now that `f` is done (after any replay),
                // and under the mutex, so in the order of the changes.
                if let Some(mut entry) = self.users.get_mut(user)
                    && Arc::ptr_eq(&entry.slot, &slot)
                {
                    entry.publish(&state.members);
                }
            }
            return Some(result);
        }
    }

    /// Runs `f` on `user`'s entry (its published connections), under the
    /// entry's shard read guard and without the user's mutex. `f` may push
    /// into the sockets' queues (their locks come after map shards in the
    /// lock order) but must not take a user mutex or another map guard.
    #[inline]
    fn read_published<R>(&self, user: &UserId, f: impl FnOnce(&UserEntry<H>) -> R) -> Option<R> {
        self.users.get(user).map(|entry| f(&entry))
    }

    /// Finds the owner of `connection_id` and runs `f` under its lock; `f`
    /// returns `None` when the connection is not the user's (it moved
    /// meanwhile), and the lookup is retried. `None` for an unknown
    /// connection.
    fn with_connection_owner<R>(
        &self,
        connection_id: &ConnectionId,
        mut f: impl FnMut(&mut UserState<H>, &Arc<UserSlot<H>>, &UserId) -> Option<R>,
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

    // ----- registration -----------------------------------------------------

    /// Registers `connection` as catching up: in the `connections` and
    /// `sockets` indexes, not yet in the user's published connections nor
    /// its thread's. Closed sockets of the user are dropped first, so tabs
    /// that died without the transport telling us never lock a user out.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // the cluster manager's path
    pub fn begin(&self, connection: WebSocketConnection) -> Result<(), ManagerError> {
        if self.is_shut_down() {
            return Err(ManagerError::ShutDown);
        }
        let user = connection.user_id.clone();
        self.with_user(&user, true, |state, counters| {
            self.begin_locked(state, counters, &user, connection)
        })
        .unwrap_or(Err(ManagerError::ShutDown))
    }

    /// `begin` under the user's lock.
    fn begin_locked(
        &self,
        state: &mut UserState<H>,
        counters: &Arc<UserSlot<H>>,
        user: &UserId,
        connection: WebSocketConnection,
    ) -> Result<(), ManagerError> {
        // Checked again under the lock: `close_all` sweeps every user
        // under this lock after the flag is set.
        if self.is_shut_down() {
            return Err(ManagerError::ShutDown);
        }
        let limit = self.config.max_connections_per_user();
        if state.members.len() >= limit {
            self.unlink_where(state, counters, user, &CloseReason::normal(), |m| {
                m.socket.is_closed()
            });
        }
        if state.members.len() >= limit {
            return Err(ManagerError::ConnectionLimit {
                user_id: user.clone(),
                limit,
            });
        }
        let connection_id = connection.connection_id.clone();
        let socket = connection.websocket.clone();
        // Both ids are checked and inserted while both entries are held,
        // so a refused registration leaves nothing behind.
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
                    vacant_connection.insert(StoredConnection::new(connection));
                }
            },
        }
        state.members.push(Member {
            connection_id,
            socket,
            cursor: Cursor::CatchingUp {
                buffered: Vec::new(),
                overflowed: false,
            },
            print: 0,
        });
        Ok(())
    }

    /// Pushes `replay`, then the events buffered while catching up that
    /// follow it, and publishes the connection. All or nothing: when the
    /// queue cannot take everything, or events were lost while catching up,
    /// the connection is removed, its socket closed (its client resumes)
    /// and [`ManagerError::ReplayFailed`] says how far it got (or
    /// [`ManagerError::MissedWhileCatchingUp`] that live events were missed).
    /// `Ok(None)`: it was removed while catching up.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // the cluster manager's path
    pub fn finish(
        &self,
        user: &UserId,
        connection_id: &ConnectionId,
        replay: Replay,
    ) -> Result<Option<Finished>, ManagerError> {
        self.with_user(user, false, |state, counters| {
            self.finish_locked(state, counters, user, connection_id, replay)
        })
        .unwrap_or(Ok(None))
    }

    /// `finish` under the user's lock.
    fn finish_locked(
        &self,
        state: &mut UserState<H>,
        counters: &Arc<UserSlot<H>>,
        user: &UserId,
        connection_id: &ConnectionId,
        replay: Replay,
    ) -> Result<Option<Finished>, ManagerError> {
        let limit = self.config.queue_capacity();
        let Some(position) = state
            .members
            .iter()
            .position(|m| &m.connection_id == connection_id)
        else {
            return Ok(None);
        };
        let member = &mut state.members[position];
        let Cursor::CatchingUp {
            buffered,
            overflowed,
        } = std::mem::replace(&mut member.cursor, Cursor::Live { at: replay.head })
        else {
            return Ok(None);
        };
        let socket = member.socket.clone();
        let mut at = replay.head;
        let prints = self.prints;
        let mut print = match replay.events.last() {
            Some((_, frame)) if prints => frame_print(frame),
            _ => 0,
        };
        let mut frames: Vec<TextFrame> = replay.notice.into_iter().collect();
        let events = replay.events.len();
        frames.extend(replay.events.into_iter().map(|(_, frame)| frame));
        let mut gap = overflowed;
        for (offset, frame) in buffered {
            let mut cursor = Cursor::Live { at };
            match decide(&mut cursor, offset, Arrival::InOrder, limit, &frame) {
                Decision::Push => {
                    if prints {
                        print = frame_print(&frame);
                    }
                    frames.push(frame);
                    at = Some(offset);
                }
                Decision::Skip => {}
                Decision::Defer | Decision::Gap => gap = true,
            }
        }
        let total = frames.len();
        let mut replayed = 0;
        for frame in frames {
            if gap || socket.try_send(frame).is_err() {
                break;
            }
            replayed += 1;
        }
        if gap || replayed < total {
            let reason = if gap {
                close::missed_events()
            } else {
                close::replay_did_not_fit()
            };
            self.unlink_locked(
                &mut state.members,
                &mut state.republish,
                counters,
                user,
                connection_id,
                reason,
            );
            return Err(if gap {
                ManagerError::MissedWhileCatchingUp {
                    connection_id: connection_id.clone(),
                }
            } else {
                ManagerError::ReplayFailed {
                    connection_id: connection_id.clone(),
                    replayed,
                    total,
                }
            });
        }
        state.members[position].cursor = Cursor::Live { at };
        state.members[position].print = print;
        let recipient = Recipient {
            connection_id: connection_id.clone(),
            socket,
            counters: shared(counters),
        };
        let thread = self
            .connections
            .get(connection_id)
            .and_then(|c| c.thread_id.clone());
        if let Some(thread) = thread {
            self.thread_insert(thread, recipient);
        }
        state.republish = true;
        let events = events as u64;
        bump(&counters.sent, events);
        bump(&self.totals.sent, events);
        bump(&self.totals.replayed, events);
        counters.touch();
        self.report(|| self.get(connection_id), Change::Joined);
        Ok(Some(Finished {
            events: events as usize,
            at,
        }))
    }

    /// Registers `connection` in one step, under its user's lock: `read`
    /// answers what it is owed from the user's history part (the replay,
    /// the stream position for the socket, and whatever else the caller
    /// wants back, `N`), `replayed` records what it was given. For a
    /// history kept in the slot (the in-memory one), so nothing can come
    /// between the read and the publication, however busy the user.
    pub fn register_locked<N>(
        &self,
        connection: WebSocketConnection,
        read: impl FnOnce(&mut H, &UserId) -> Result<(Replay, Option<StreamPosition>, N), ManagerError>,
        replayed: impl FnOnce(&mut H, Option<StreamOffset>),
    ) -> Result<(Option<Finished>, N), ManagerError> {
        if self.is_shut_down() {
            return Err(ManagerError::ShutDown);
        }
        let user = connection.user_id.clone();
        let id = connection.connection_id.clone();
        let socket = connection.websocket.clone();
        self.with_user(&user, true, |state, counters| {
            self.begin_locked(state, counters, &user, connection)?;
            let (replay, position, rest) = match read(&mut state.history, &user) {
                Ok(read) => read,
                Err(error) => {
                    self.unlink_locked(
                        &mut state.members,
                        &mut state.republish,
                        counters,
                        &user,
                        &id,
                        CloseReason::going_away(),
                    );
                    return Err(error);
                }
            };
            if let Some(position) = position {
                socket.record_stream_position(position);
            }
            let finished = self.finish_locked(state, counters, &user, &id, replay)?;
            if let Some(finished) = &finished {
                replayed(&mut state.history, finished.at);
            }
            Ok((finished, rest))
        })
        .unwrap_or(Err(ManagerError::ShutDown))
    }

    /// Removes `connection_id` from every index and closes its socket with
    /// `reason`. Runs under the user's lock.
    fn unlink_locked(
        &self,
        members: &mut SmallVec<[Member; 1]>,
        republish: &mut bool,
        counters: &UserCounters,
        user: &UserId,
        connection_id: &ConnectionId,
        reason: CloseReason,
    ) -> Option<WebSocketConnection> {
        let (id, connection) = self
            .connections
            .remove_if(connection_id, |_, c| c.user_id == *user)?;
        self.sockets
            .remove_if(&connection.websocket.id(), |_, id| id == connection_id);
        if let Some(thread) = &connection.thread_id {
            self.thread_remove(thread, connection_id);
        }
        let live = members
            .iter()
            .any(|m| m.connection_id == *connection_id && m.is_live());
        members.retain(|m| m.connection_id != *connection_id);
        *republish |= live;
        connection.websocket.close(reason);
        counters.touch();
        if let Some(observer) = &self.observer {
            observer(IndexChange::Left(connection_id));
        }
        Some(connection.into_connection(id))
    }

    /// Removes a connection from every index and closes its socket.
    pub fn remove(
        &self,
        connection_id: &ConnectionId,
        reason: CloseReason,
    ) -> Option<WebSocketConnection> {
        self.with_connection_owner(connection_id, |state, counters, user| {
            self.unlink_locked(
                &mut state.members,
                &mut state.republish,
                counters,
                user,
                connection_id,
                reason.clone(),
            )
        })
    }

    fn evict(&self, evicted: &[ConnectionId], reason: &CloseReason) {
        for connection_id in evicted {
            self.remove(connection_id, reason.clone());
        }
    }

    // ----- queries ----------------------------------------------------------

    pub fn get(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection> {
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
            c.to_connection(connection_id)
        })
    }

    /// The user's live connections.
    pub fn user_connections(&self, user: &UserId) -> HashSet<ConnectionId> {
        self.read_published(user, |entry| {
            // Each clone is a locked increment, which waits for the loads
            // before it: touch every id first, so their misses overlap.
            entry.connection_ids.iter().for_each(ConnectionId::prefetch);
            entry.connection_ids.iter().cloned().collect()
        })
        .unwrap_or_default()
    }

    /// Whether a live connection of the user has an open socket.
    pub fn is_active(&self, user: &UserId) -> bool {
        self.read_published(user, |entry| entry.sockets.iter().any(|s| !s.is_closed()))
            .unwrap_or(false)
    }

    /// Whether the user has a registered connection here (live or catching up).
    #[cfg(feature = "redis")]
    pub fn has_user(&self, user: &UserId) -> bool {
        self.users.contains_key(user)
    }

    pub fn by_socket(&self, websocket: &WebSocketHandle) -> Option<ConnectionId> {
        self.sockets
            .get(&websocket.id())
            .map(|id| id.value().clone())
    }

    /// Binds a connection of this process to `thread`; false when unknown
    /// here.
    pub fn update_thread(&self, connection_id: &ConnectionId, thread: ThreadId) -> bool {
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
            // Only a live connection is in the thread index; one catching up
            // joins it when it goes live, with the thread it has then.
            if let Some(member) = state
                .members
                .iter()
                .find(|m| m.connection_id == *connection_id && m.is_live())
            {
                let recipient = Recipient {
                    connection_id: member.connection_id.clone(),
                    socket: member.socket.clone(),
                    counters: shared(counters),
                };
                self.thread_insert(thread.clone(), recipient);
                self.report(|| self.get(connection_id), Change::Moved);
            }
            counters.touch();
            Some(true)
        })
        .unwrap_or(false)
    }

    // ----- sending ----------------------------------------------------------

    /// Fans `frame` out to the user's live connections (none: `targeted`
    /// is 0). A failure to reach any of them is counted.
    #[inline]
    pub fn send_to_user(&self, user: &UserId, frame: &TextFrame) -> FanOut {
        let policy = self.config.slow_consumer_policy();
        // The published connections, without the user's mutex (module
        // docs), fanned out while the map's read guard is held. Nothing in
        // the closure touches the maps; evictions happen after it.
        let fan = self.read_published(user, |entry| {
            let counters = || &entry.slot.counters;
            let fan = fan_out_to_user(
                &entry.sockets,
                || &entry.connection_ids,
                counters,
                frame,
                policy,
                &self.totals,
            );
            bump(&entry.sent, fan.delivered as u64);
            entry
                .last_activity_ms
                .store(coarse_unix_millis(), Ordering::Relaxed);
            if fan.delivered == 0 && fan.targeted > 0 {
                bump(&counters().failed, 1);
                bump(&self.totals.failed, 1);
            }
            fan
        });
        let fan = fan.unwrap_or_default();
        self.evict(&fan.evict, &CloseReason::normal());
        fan
    }

    /// Fans `frame` out to the thread's live connections here. A failure to
    /// reach any of them is counted.
    pub fn send_to_thread(&self, thread: &ThreadId, frame: &TextFrame) -> FanOut {
        let Some(recipients) = self.threads.get(thread).map(|r| Arc::clone(r.value())) else {
            return FanOut::default();
        };
        let fan = fan_out(
            &recipients,
            frame,
            self.config.slow_consumer_policy(),
            &self.totals,
        );
        self.evict(&fan.evict, &CloseReason::normal());
        let mut users: Vec<&SharedCounters> = Vec::new();
        for recipient in recipients.iter() {
            if !users.iter().any(|c| Arc::ptr_eq(c, &recipient.counters)) {
                users.push(&recipient.counters);
            }
        }
        for counters in users.iter().map(|c| c.counters()) {
            counters.touch();
            if fan.delivered == 0 {
                bump(&counters.failed, 1);
            }
        }
        if fan.delivered == 0 {
            bump(&self.totals.failed, 1);
        }
        fan
    }

    /// Counts a send that found no connection at all.
    pub fn count_unreachable(&self) {
        bump(&self.totals.failed, 1);
    }

    /// Delivers critical event `offset` to the user's connections here,
    /// each after the one its cursor is at (module docs).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // the cluster manager's path
    pub fn deliver_critical(
        &self,
        user: &UserId,
        offset: StreamOffset,
        frame: &TextFrame,
        arrival: Arrival,
    ) -> CriticalOutcome {
        self.with_user(user, false, |state, counters| {
            self.deliver_locked(
                &mut state.members,
                &mut state.republish,
                counters,
                user,
                (offset, frame, arrival),
            )
        })
        .unwrap_or_default()
    }

    /// `deliver_critical` under the user's lock.
    fn deliver_locked(
        &self,
        members: &mut SmallVec<[Member; 1]>,
        republish: &mut bool,
        counters: &Arc<UserSlot<H>>,
        user: &UserId,
        (offset, frame, arrival): (StreamOffset, &TextFrame, Arrival),
    ) -> CriticalOutcome {
        let limit = self.config.queue_capacity();
        let mut outcome = CriticalOutcome::default();
        if members.is_empty() {
            return outcome;
        }
        let print = if self.prints { frame_print(frame) } else { 0 };
        let mut push: SmallVec<[usize; 8]> = SmallVec::new();
        let mut gaps: SmallVec<[ConnectionId; 1]> = SmallVec::new();
        for (index, member) in members.iter_mut().enumerate() {
            match decide(&mut member.cursor, offset, arrival, limit, frame) {
                Decision::Push => push.push(index),
                // A cursor at or past the event means the connection
                // has it (cursors only move by pushing): the emitter's
                // own copy was overtaken by the one through Redis.
                Decision::Skip if arrival == Arrival::Direct => outcome.delivered += 1,
                Decision::Skip => {}
                Decision::Defer => outcome.deferred += 1,
                Decision::Gap => {
                    tracing::warn!(connection_id = %member.connection_id, %offset,
                        "critical event out of order (events were lost in transit): closing so the client resumes");
                    gaps.push(member.connection_id.clone());
                }
            }
        }
        // Under the lock: a later event must not overtake this one. Fanned
        // out over the members in step, in place.
        let fan = fan_out_to_members(
            push.len(),
            |n| &members[push[n]].socket,
            |n| &members[push[n]].connection_id,
            counters,
            frame,
            CRITICAL_POLICY,
            &self.totals,
        );
        for &i in &push {
            let member = &mut members[i];
            if !fan.evict.contains(&member.connection_id) {
                member.cursor = Cursor::Live { at: Some(offset) };
                member.print = print;
            }
        }
        if fan.delivered > 0 {
            counters.touch();
        }
        outcome.delivered += fan.delivered;
        outcome.closed += gaps.len() + fan.evict.len();
        for id in gaps.iter().chain(&fan.evict) {
            self.unlink_locked(
                members,
                republish,
                counters,
                user,
                id,
                close::missed_events(),
            );
        }
        outcome
    }

    /// Runs `f` on `user`'s history part (creating the slot when `create`)
    /// under the user's lock, with what it needs to deliver a critical event
    /// to the user's connections in order ([`Locked`]). `None` when the
    /// user has no slot and `create` is false.
    pub fn with_history<R>(
        &self,
        user: &UserId,
        create: bool,
        f: impl FnOnce(&mut H, &mut Locked<'_, H>) -> R,
    ) -> Option<R> {
        self.with_user(user, create, |state, counters| {
            let UserState {
                members,
                republish,
                history,
                ..
            } = state;
            let mut locked = Locked {
                index: self,
                members,
                republish,
                counters,
                user,
            };
            f(history, &mut locked)
        })
    }

    // ----- health, maintenance ---------------------------------------------

    /// Fills the connection half of `health` (connections, counters, the
    /// newest offset a connection was given); false when the user has no
    /// connection here.
    pub fn health_into(&self, user: &UserId, health: &mut ConnectionHealth) -> bool {
        let found = self.with_user(user, false, |state, counters| {
            health.total_connections = state.members.len();
            health.active_connections = state
                .members
                .iter()
                .filter(|m| !m.socket.is_closed())
                .count();
            health.latest_offset = latest_of(&state.members);
            counters.report_into(health);
            // The user's own sends count in the entry (`UserEntry`).
            if let Some(entry) = self.users.get(user)
                && Arc::ptr_eq(&entry.slot, counters)
            {
                entry.report_into(health);
            }
            health.connections = state
                .members
                .iter()
                .filter_map(|m| {
                    let connection = self.connections.get(&m.connection_id)?;
                    Some(connection.summary(&m.connection_id))
                })
                .collect();
        });
        health
            .connections
            .sort_by(|a, b| a.connection_id.cmp(&b.connection_id));
        found.is_some()
    }

    /// Every connection here, live or catching up.
    #[cfg(feature = "redis")]
    pub fn connections(&self) -> Vec<WebSocketConnection> {
        self.connections
            .iter()
            .map(|c| c.to_connection(c.key()))
            .collect()
    }

    /// Each user's furthest live cursor and its fingerprint, for the audit
    /// after a Redis reconnect (`None`: live, but given nothing yet).
    #[cfg(feature = "redis")]
    pub fn cursors(&self) -> Vec<(UserId, Option<(StreamOffset, u64)>)> {
        self.user_ids()
            .into_iter()
            .filter_map(|user| {
                let furthest = self.with_user(&user, false, |state, _| {
                    state
                        .members
                        .iter()
                        .filter_map(|m| match m.cursor {
                            Cursor::Live { at: Some(at) } => Some((at, m.print)),
                            _ => None,
                        })
                        .max_by_key(|(o, _)| (o.stream, o.sequence))
                })?;
                Some((user, furthest))
            })
            .collect()
    }

    /// Closes every connection of `user` with `reason`; returns how many.
    pub fn close_user(&self, user: &UserId, reason: &CloseReason) -> usize {
        self.with_user(user, false, |state, counters| {
            self.unlink_where(state, counters, user, reason, |_| true)
        })
        .unwrap_or(0)
    }

    /// Removes every connection of the locked user that `doomed` picks and
    /// closes its socket with `reason`; returns how many.
    fn unlink_where(
        &self,
        state: &mut UserState<H>,
        counters: &UserCounters,
        user: &UserId,
        reason: &CloseReason,
        doomed: impl Fn(&Member) -> bool,
    ) -> usize {
        let ids: SmallVec<[ConnectionId; 4]> = state
            .members
            .iter()
            .filter(|m| doomed(m))
            .map(|m| m.connection_id.clone())
            .collect();
        ids.iter()
            .filter(|id| {
                self.unlink_locked(
                    &mut state.members,
                    &mut state.republish,
                    counters,
                    user,
                    id,
                    reason.clone(),
                )
                .is_some()
            })
            .count()
    }

    /// Closes (for a resume) every live connection of `user` that is behind
    /// `head`, the stream head the history reports, and every connection
    /// still catching up; returns how many.
    ///
    /// For the audit after a possible loss of messages: a connection
    /// catching up may have read its history before an event that the
    /// node then never heard live (published while the subscription was
    /// down, or dropped from a full inbound buffer); once live it would sit
    /// behind that event without a word until the next one.
    #[cfg(feature = "redis")]
    pub fn close_behind(&self, user: &UserId, head: Option<StreamOffset>) -> usize {
        self.with_user(user, false, |state, counters| {
            self.unlink_where(state, counters, user, &close::missed_events(), |m| {
                match (&m.cursor, head) {
                    // Behind the head, or on a stream the history no longer has.
                    (Cursor::Live { at: Some(at) }, Some(head)) => {
                        at.stream != head.stream || at.sequence < head.sequence
                    }
                    (Cursor::Live { at: None }, Some(_)) => true,
                    (Cursor::Live { at }, None) => at.is_some(),
                    (Cursor::CatchingUp { .. }, _) => true,
                }
            })
        })
        .unwrap_or(0)
    }

    /// Closes and forgets every connection; returns how many.
    pub fn close_all(&self, reason: &CloseReason) -> usize {
        self.user_ids()
            .iter()
            .map(|user| self.close_user(user, reason))
            .sum()
    }

    /// Refuses every further registration, then closes every connection
    /// with `going_away`; returns how many, or `None` when already shut down.
    pub fn shut_down(&self) -> Option<usize> {
        if self.shut_down.swap(true, Ordering::SeqCst) {
            return None;
        }
        Some(self.close_all(&CloseReason::going_away()))
    }

    pub fn user_ids(&self) -> Vec<UserId> {
        self.users.iter().map(|entry| entry.key().clone()).collect()
    }

    #[cfg(feature = "redis")]
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// The sizes of the indexes; `history_users` is the store's.
    pub fn sizes(&self, history_users: usize) -> IndexSizes {
        IndexSizes {
            connections: self.connections.len(),
            users: self.users.len(),
            sockets: self.sockets.len(),
            threads: self.threads.len(),
            history_users,
        }
    }

    /// The counters and index sizes, with a history store's counters
    /// (`history`) and its number of users holding history.
    pub fn stats(&self, history: Option<&Totals>, history_users: usize) -> ManagerStats {
        let load = |c: fn(&Totals) -> &AtomicU64| {
            c(&self.totals).load(Ordering::Relaxed)
                + history.map_or(0, |h| c(h).load(Ordering::Relaxed))
        };
        ManagerStats {
            indexes: self.sizes(history_users),
            messages_sent: load(|t| &t.sent),
            messages_failed: load(|t| &t.failed),
            messages_dropped: load(|t| &t.dropped),
            slow_consumer_disconnects: load(|t| &t.slow_disconnects),
            critical_rejected: load(|t| &t.critical_rejected),
            history_evicted: load(|t| &t.history_evicted),
            history_expired: load(|t| &t.history_expired),
            pending_expired: load(|t| &t.pending_expired),
            replayed: load(|t| &t.replayed),
            resync_notices: load(|t| &t.resync_notices),
            pending_discarded_at_shutdown: load(|t| &t.pending_discarded),
        }
    }
}

/// A user's connections under the user's lock, for a history store that
/// delivers as it numbers ([`LocalIndex::with_history`]).
pub(crate) struct Locked<'s, H> {
    index: &'s LocalIndex<H>,
    members: &'s mut SmallVec<[Member; 1]>,
    republish: &'s mut bool,
    counters: &'s Arc<UserSlot<H>>,
    user: &'s UserId,
}

impl<H: UserHistory> Locked<'_, H> {
    /// Delivers critical event `offset`, in stream order.
    pub fn deliver(&mut self, offset: StreamOffset, frame: &TextFrame) -> CriticalOutcome {
        self.index.deliver_locked(
            self.members,
            self.republish,
            self.counters,
            self.user,
            (offset, frame, Arrival::InOrder),
        )
    }
}

/// Which change [`LocalIndex::report`] reports.
#[derive(Clone, Copy)]
enum Change {
    Joined,
    Moved,
}

/// The furthest cursor of `members` that are live.
fn latest_of(members: &[Member]) -> Option<StreamOffset> {
    members
        .iter()
        .filter_map(|m| match m.cursor {
            Cursor::Live { at } => at,
            Cursor::CatchingUp { .. } => None,
        })
        .max_by_key(|o| (o.stream, o.sequence))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::connection::{OutboundEvent, OutboundReceiver};

    // What an idle connection costs the index (issue 19: RSS per idle
    // connection against a bare axum server, whose registry holds one
    // 16-byte entry per socket): every byte of a map's entry is paid again
    // for the table's slack (at 19,000 connections, 1.7 slots per entry).
    // `tests/connection_memory.rs` counts the whole with an allocator.

    /// 128 bytes when the entry held four sockets inline and the ids in a
    /// boxed slice (one more allocation per user).
    #[test]
    fn users_entry_stays_small() {
        let size = std::mem::size_of::<(UserId, UserEntry<crate::managers::history::UserLog>)>();
        assert!(size <= 88, "a `users` entry is {size} bytes");
    }

    /// 144 bytes when the table held the whole `WebSocketConnection`
    /// (its id twice, its empty metadata map); now a key and a pointer to
    /// 80 bytes (96 with the resume offset inline).
    #[test]
    fn connections_entry_stays_small() {
        let entry = std::mem::size_of::<(ConnectionId, Box<StoredConnection>)>();
        let record = std::mem::size_of::<StoredConnection>();
        assert!(entry <= 24, "a `connections` entry is {entry} bytes");
        assert!(record <= 80, "a stored connection is {record} bytes");
    }

    /// The slot and the user's counters, one allocation: 160 bytes and a
    /// second allocation of 56 for the counters when the state also kept
    /// its own list of recipients (an `Arc<[Recipient]>`: 16 bytes here and
    /// 56 more per user); 176 now, counters included.
    #[test]
    fn user_slot_stays_small() {
        let size = std::mem::size_of::<UserSlot<crate::managers::history::UserLog>>();
        assert!(size <= 176, "a user's slot is {size} bytes");
    }

    /// A user with one connection has its published socket and id inline.
    #[test]
    fn one_connection_is_published_inline() {
        let index = index(8);
        let (id, _socket, _receiver) = begun(&index);
        index.finish(&alice(), &id, Replay::default()).unwrap();
        let entry = index.users.get(&alice()).unwrap();
        assert_eq!(entry.connection_ids.as_slice(), [id]);
        assert!(!entry.sockets.spilled() && !entry.connection_ids.spilled());
    }

    fn index(queue: usize) -> LocalIndex {
        let config = ManagerConfig::builder()
            .queue_capacity(queue)
            .history_capacity(queue - 1)
            .build()
            .unwrap();
        LocalIndex::new(config)
    }

    fn alice() -> UserId {
        UserId::new("alice").unwrap()
    }

    /// A connection of alice's, registered as catching up.
    fn begun(index: &LocalIndex) -> (ConnectionId, WebSocketHandle, OutboundReceiver) {
        let (socket, receiver) = WebSocketHandle::channel(index.config().queue_limits());
        let connection = WebSocketConnection::new(alice(), socket.clone());
        let id = connection.connection_id.clone();
        index.begin(connection).unwrap();
        (id, socket, receiver)
    }

    fn event(sequence: u64) -> (StreamOffset, TextFrame) {
        (
            StreamOffset::new(7, sequence),
            TextFrame::from_string(format!("e{sequence}")),
        )
    }

    fn received(receiver: &mut OutboundReceiver) -> Vec<String> {
        let mut batch = Vec::new();
        receiver.try_recv_many(&mut batch, 64);
        batch
            .into_iter()
            .map(|e| match e {
                OutboundEvent::Frame(frame) => frame.as_str().to_owned(),
                OutboundEvent::Close(reason) => format!("close {}", reason.code),
                OutboundEvent::Binary(_) => "binary".to_owned(),
            })
            .collect()
    }

    fn deliver(index: &LocalIndex, sequence: u64, arrival: Arrival) -> CriticalOutcome {
        let (offset, frame) = event(sequence);
        index.deliver_critical(&alice(), offset, &frame, arrival)
    }

    #[test]
    fn events_while_catching_up_follow_the_replay_once_each_in_order() {
        let index = index(16);
        let (id, _socket, mut receiver) = begun(&index);
        // Not published yet: an ordinary send reaches nobody.
        assert_eq!(
            index
                .send_to_user(&alice(), &TextFrame::from_string("x".into()))
                .targeted,
            0
        );
        // 2 is in the history read below, 3 and 4 are not.
        for sequence in 2..=4 {
            assert_eq!(deliver(&index, sequence, Arrival::InOrder).deferred, 1);
        }
        let replay = Replay {
            notice: None,
            events: vec![event(1), event(2)],
            head: Some(StreamOffset::new(7, 2)),
        };
        let finished = index.finish(&alice(), &id, replay).unwrap().unwrap();
        assert_eq!(
            (finished.events, finished.at),
            (2, Some(StreamOffset::new(7, 4)))
        );
        assert_eq!(received(&mut receiver), ["e1", "e2", "e3", "e4"]);
        assert_eq!(index.user_connections(&alice()).len(), 1);
        // Live and in step: the next one is pushed, a repeat is skipped.
        assert_eq!(deliver(&index, 5, Arrival::InOrder).delivered, 1);
        assert_eq!(deliver(&index, 5, Arrival::InOrder).delivered, 0);
        assert_eq!(received(&mut receiver), ["e5"]);
    }

    /// The audit after a possible message loss: a connection whose history
    /// read may predate an event the node never heard live is told to
    /// resume, not left to finish behind it.
    #[cfg(feature = "redis")]
    #[test]
    fn the_audit_closes_a_connection_still_catching_up() {
        let index = index(16);
        let (id, socket, mut receiver) = begun(&index);
        assert_eq!(
            index.close_behind(&alice(), Some(StreamOffset::new(7, 3))),
            1
        );
        assert_eq!(socket.close_reason().map(|r| r.code), Some(close::RESUME));
        assert_eq!(received(&mut receiver), ["close 1012"]);
        // Its read comes back after the close: nothing to publish.
        let replay = Replay {
            notice: None,
            events: vec![event(1), event(2)],
            head: Some(StreamOffset::new(7, 2)),
        };
        assert!(index.finish(&alice(), &id, replay).unwrap().is_none());
        assert!(index.get(&id).is_none() && index.sizes(0).is_empty());
    }

    #[test]
    fn a_gap_in_order_closes_the_connection_for_a_resume() {
        let index = index(16);
        let (id, socket, mut receiver) = begun(&index);
        index.finish(&alice(), &id, Replay::default()).unwrap();
        assert_eq!(deliver(&index, 1, Arrival::InOrder).delivered, 1);
        let outcome = deliver(&index, 3, Arrival::InOrder);
        assert_eq!((outcome.delivered, outcome.closed), (0, 1));
        assert_eq!(socket.close_reason().map(|r| r.code), Some(close::RESUME));
        // The close drops what was queued (e1 too): the client resumes from
        // the last offset it read, so nothing is lost, only replayed.
        assert_eq!(received(&mut receiver), ["close 1012"]);
        assert!(index.get(&id).is_none() && index.sizes(0).is_empty());
    }

    #[test]
    fn a_direct_copy_ahead_waits_for_the_in_order_one() {
        let index = index(16);
        let (id, socket, mut receiver) = begun(&index);
        index.finish(&alice(), &id, Replay::default()).unwrap();
        // 2 overtook 1: deferred, nothing closed.
        assert_eq!(deliver(&index, 2, Arrival::Direct).deferred, 1);
        assert!(!socket.is_closed());
        deliver(&index, 1, Arrival::InOrder);
        deliver(&index, 2, Arrival::InOrder);
        // The emitter's copy after the bus's: it has it already.
        assert_eq!(deliver(&index, 2, Arrival::Direct).delivered, 1);
        assert_eq!(received(&mut receiver), ["e1", "e2"]);
    }

    #[test]
    fn more_events_while_catching_up_than_a_queue_holds_refuse_the_connection() {
        let index = index(2);
        let (id, socket, _receiver) = begun(&index);
        for sequence in 1..=3 {
            deliver(&index, sequence, Arrival::InOrder);
        }
        match index.finish(&alice(), &id, Replay::default()) {
            Err(ManagerError::MissedWhileCatchingUp { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(socket.close_reason().map(|r| r.code), Some(close::RESUME));
        assert!(index.sizes(0).is_empty(), "nothing left behind");
    }

    #[test]
    fn a_replay_larger_than_the_queue_is_refused_with_how_far_it_got() {
        let index = index(2);
        let (id, socket, _receiver) = begun(&index);
        let replay = Replay {
            notice: None,
            events: vec![event(1), event(2), event(3)],
            head: Some(StreamOffset::new(7, 3)),
        };
        match index.finish(&alice(), &id, replay) {
            Err(ManagerError::ReplayFailed {
                replayed: 2,
                total: 3,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        assert!(socket.is_closed());
        assert!(index.sizes(0).is_empty());
    }

    #[test]
    #[cfg(feature = "redis")]
    fn the_observer_hears_joins_moves_and_leaves() {
        let heard = Arc::new(Mutex::new(Vec::<String>::new()));
        let log = Arc::clone(&heard);
        let observer: IndexObserver = Box::new(move |change| {
            log.lock().push(match change {
                IndexChange::Joined(c) => format!("joined {:?}", c.thread_id),
                IndexChange::Moved(c) => format!("moved {:?}", c.thread_id),
                IndexChange::Left(_) => "left".to_owned(),
            });
        });
        let index = LocalIndex::observed(ManagerConfig::default(), observer);
        let (id, _socket, _receiver) = begun(&index);
        // A thread bound while catching up is joined with the connection.
        let thread = ThreadId::new("t1").unwrap();
        assert!(index.update_thread(&id, thread.clone()));
        index.finish(&alice(), &id, Replay::default()).unwrap();
        assert!(index.update_thread(&id, ThreadId::new("t2").unwrap()));
        index.remove(&id, CloseReason::normal());
        let heard = heard.lock().clone();
        assert_eq!(
            heard,
            [
                format!("joined {:?}", Some(thread)),
                format!("moved {:?}", Some(ThreadId::new("t2").unwrap())),
                "left".to_owned(),
            ]
        );
    }
}
