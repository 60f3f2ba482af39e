//! [`LocalIndex`]: the connections of this node, each with its cursor in its
//! user's critical-event stream.
//!
//! # Why a cursor per connection
//!
//! Critical events reach a node through Redis pub/sub in stream order, but
//! pub/sub is at most once: a reconnect to Redis loses what was published
//! meanwhile. Each connection therefore remembers the last offset it was
//! given. An event is pushed only when it is the next one (`sequence + 1`
//! on the same stream); an older one is a duplicate and skipped; anything
//! else is a gap, and the connection is closed with
//! [`close::RESUME`](crate::close::RESUME) so its client resumes from its offset and Redis
//! replays exactly what it missed. Nothing is skipped silently.
//!
//! # Catching up
//!
//! `add_connection` registers the connection as *catching up* before it
//! reads the history from Redis. Critical events that arrive meanwhile are
//! buffered (at most one queue's worth); when the history is in, the
//! history, then the buffered events after it, go into the socket under the
//! user's lock, and only then is the connection live. Ordinary sends skip a
//! connection until it is live, as in the local engine.
//!
//! # Locks
//!
//! One `parking_lot::Mutex` per user, never held across `.await` (nothing
//! here awaits) and never while another user's is held. Pushes are
//! `try_send`, so a push under the lock never waits. Map guards are never
//! held while a user's mutex is taken.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::close::{self, CloseReason};
use crate::config::{ManagerConfig, SlowConsumerPolicy};
use crate::connection::{SocketId, TextFrame, WebSocketConnection, WebSocketHandle};
use crate::error::ManagerError;
use crate::health::{ConnectionSummary, unix_millis};
use crate::ids::{ConnectionId, ThreadId, UserId};
use crate::managers::fan_out::{FanOut, Recipient, Totals, UserCounters, bump, fan_out};
use crate::managers::stats::{IndexSizes, ManagerStats};
use crate::offset::StreamOffset;

use super::wire::PresenceEntry;

/// Where a connection stands in its user's stream.
#[derive(Debug)]
enum Cursor {
    /// Registered, history not in yet: live critical events wait here.
    CatchingUp {
        buffered: Vec<(StreamOffset, TextFrame)>,
        overflowed: bool,
    },
    /// In step: `at` is the last event it was given (`None`: none yet, and
    /// the user had no stream when it caught up).
    Live { at: Option<StreamOffset> },
}

#[derive(Debug)]
struct LocalConnection {
    connection: WebSocketConnection,
    cursor: Cursor,
}

#[derive(Debug, Default)]
struct UserLocal {
    /// Set when the slot left `users`: whoever locks it must look again.
    retired: bool,
    connections: Vec<LocalConnection>,
    counters: Arc<UserCounters>,
}

/// What `finish` pushes before the connection goes live.
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

/// A change of this node's presence, for the other nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PresenceChange {
    Join(ConnectionId, PresenceEntry),
    Leave(ConnectionId),
    /// A connection bound to a thread: its whole entry, thread included,
    /// so the presence hash (which other nodes re-read every heartbeat)
    /// holds the binding, not only the bus message.
    Moved(ConnectionId, PresenceEntry),
    /// Ask node `.0`, which holds connection `.1`, to bind it to `.2`.
    Bind(String, ConnectionId, ThreadId),
}

/// Where presence changes go (never blocks: it queues or marks the
/// presence for a rewrite).
pub(crate) type PresenceSink = Arc<dyn Fn(PresenceChange) + Send + Sync>;

pub(crate) struct LocalIndex {
    config: ManagerConfig,
    sink: PresenceSink,
    connections: DashMap<ConnectionId, UserId>,
    sockets: DashMap<SocketId, ConnectionId>,
    users: DashMap<UserId, Arc<Mutex<UserLocal>>>,
    threads: DashMap<ThreadId, Vec<Recipient>>,
    pub totals: Totals,
}

enum Decision {
    Push,
    Skip,
    Defer,
    Gap,
}

/// What to do with critical event `offset` for a connection at `cursor`.
/// `direct`: the emitting node's own copy, which may overtake events still
/// in flight through Redis, so it defers instead of declaring a gap.
fn decide(
    cursor: &mut Cursor,
    offset: StreamOffset,
    direct: bool,
    limit: usize,
    frame: &TextFrame,
) -> Decision {
    match cursor {
        Cursor::CatchingUp {
            buffered,
            overflowed,
        } => {
            if !direct {
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
            } else if direct {
                Decision::Defer
            } else {
                Decision::Gap
            }
        }
    }
}

impl std::fmt::Debug for LocalIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalIndex")
            .field("connections", &self.connections.len())
            .field("users", &self.users.len())
            .field("threads", &self.threads.len())
            .finish_non_exhaustive()
    }
}

impl LocalIndex {
    pub fn new(config: ManagerConfig, sink: PresenceSink) -> Self {
        LocalIndex {
            config,
            sink,
            connections: DashMap::new(),
            sockets: DashMap::new(),
            users: DashMap::new(),
            threads: DashMap::new(),
            totals: Totals::default(),
        }
    }

    fn slot(&self, user: &UserId) -> Option<Arc<Mutex<UserLocal>>> {
        self.users.get(user).map(|slot| Arc::clone(slot.value()))
    }

    /// Runs `f` on the user's locked state; retires an empty slot after.
    fn with_user<R>(
        &self,
        user: &UserId,
        create: bool,
        f: impl FnOnce(&mut UserLocal) -> R,
    ) -> Option<R> {
        loop {
            let slot = if create {
                Arc::clone(self.users.entry(user.clone()).or_default().value())
            } else {
                self.slot(user)?
            };
            let mut state = slot.lock();
            if state.retired {
                continue;
            }
            let result = f(&mut state);
            if state.connections.is_empty() {
                state.retired = true;
                self.users.remove_if(user, |_, s| Arc::ptr_eq(s, &slot));
            }
            return Some(result);
        }
    }

    /// Registers `connection` as catching up.
    pub fn begin(&self, connection: WebSocketConnection) -> Result<(), ManagerError> {
        let user = connection.user_id.clone();
        let limit = self.config.max_connections_per_user();
        self.with_user(&user, true, |state| {
            if self.connections.contains_key(&connection.connection_id) {
                return Err(ManagerError::DuplicateConnection(
                    connection.connection_id.clone(),
                ));
            }
            if let Some(existing) = self.sockets.get(&connection.websocket.id()) {
                return Err(ManagerError::SocketAlreadyRegistered {
                    socket: connection.websocket.id(),
                    existing: existing.value().clone(),
                });
            }
            // Dead tabs never lock a user out.
            let closed: Vec<ConnectionId> = state
                .connections
                .iter()
                .filter(|c| c.connection.websocket.is_closed())
                .map(|c| c.connection.connection_id.clone())
                .collect();
            for id in &closed {
                self.unlink(state, id);
            }
            if state.connections.len() >= limit {
                return Err(ManagerError::ConnectionLimit {
                    user_id: user.clone(),
                    limit,
                });
            }
            self.connections
                .insert(connection.connection_id.clone(), user.clone());
            self.sockets
                .insert(connection.websocket.id(), connection.connection_id.clone());
            state.connections.push(LocalConnection {
                connection,
                cursor: Cursor::CatchingUp {
                    buffered: Vec::new(),
                    overflowed: false,
                },
            });
            Ok(())
        })
        .unwrap_or(Err(ManagerError::ShutDown))
    }

    /// Pushes `replay`, then what was buffered after it, and makes the
    /// connection live. On any failure the connection is removed and its
    /// socket closed. `Ok(false)`: it was removed while catching up.
    pub fn finish(
        &self,
        user: &UserId,
        connection_id: &ConnectionId,
        replay: Replay,
    ) -> Result<bool, ManagerError> {
        let limit = self.config.queue_capacity();
        self.with_user(user, false, |state| {
            let Some(position) = state
                .connections
                .iter()
                .position(|c| &c.connection.connection_id == connection_id)
            else {
                return Ok(false);
            };
            let entry = &mut state.connections[position];
            let Cursor::CatchingUp {
                buffered,
                overflowed,
            } = std::mem::replace(&mut entry.cursor, Cursor::Live { at: replay.head })
            else {
                return Ok(true);
            };
            let socket = entry.connection.websocket.clone();
            let mut at = replay.head;
            let mut frames: Vec<TextFrame> = replay.notice.into_iter().collect();
            let events = replay.events.len();
            frames.extend(replay.events.into_iter().map(|(_, frame)| frame));
            let mut gap = overflowed;
            for (offset, frame) in buffered {
                let mut cursor = Cursor::Live { at };
                match decide(&mut cursor, offset, false, limit, &frame) {
                    Decision::Push => {
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
                self.unlink(state, connection_id);
                socket.close(close::missed_events());
                return Err(ManagerError::ReplayFailed {
                    connection_id: connection_id.clone(),
                    replayed,
                    total,
                });
            }
            bump(&self.totals.replayed, events as u64);
            state.counters.touch();
            let entry = &mut state.connections[position];
            entry.cursor = Cursor::Live { at };
            if let Some(thread) = entry.connection.thread_id.clone() {
                let recipient = recipient_of(&entry.connection, &state.counters);
                self.threads.entry(thread).or_default().push(recipient);
            }
            (self.sink)(PresenceChange::Join(
                connection_id.clone(),
                presence_of(&entry.connection),
            ));
            Ok(true)
        })
        .unwrap_or(Ok(false))
    }

    /// Removes a connection from every index (caller holds the user lock).
    fn unlink(
        &self,
        state: &mut UserLocal,
        connection_id: &ConnectionId,
    ) -> Option<WebSocketConnection> {
        let position = state
            .connections
            .iter()
            .position(|c| &c.connection.connection_id == connection_id)?;
        let removed = state.connections.swap_remove(position).connection;
        self.connections.remove(connection_id);
        self.sockets.remove(&removed.websocket.id());
        if let Some(thread) = &removed.thread_id {
            self.unthread(thread, connection_id);
        }
        (self.sink)(PresenceChange::Leave(connection_id.clone()));
        Some(removed)
    }

    fn unthread(&self, thread: &ThreadId, connection_id: &ConnectionId) {
        if let dashmap::mapref::entry::Entry::Occupied(mut entry) =
            self.threads.entry(thread.clone())
        {
            entry
                .get_mut()
                .retain(|r| &r.connection_id != connection_id);
            if entry.get().is_empty() {
                entry.remove();
            }
        }
    }

    pub fn remove(
        &self,
        connection_id: &ConnectionId,
        reason: CloseReason,
    ) -> Option<WebSocketConnection> {
        let user = self.connections.get(connection_id)?.value().clone();
        let removed = self.with_user(&user, false, |state| self.unlink(state, connection_id))??;
        removed.websocket.close(reason);
        Some(removed)
    }

    /// Delivers critical event `offset` to the user's connections here.
    pub fn deliver_critical(
        &self,
        user: &UserId,
        offset: StreamOffset,
        frame: &TextFrame,
        direct: bool,
    ) -> CriticalOutcome {
        let limit = self.config.queue_capacity();
        let mut outcome = CriticalOutcome::default();
        let mut evict = Vec::new();
        self.with_user(user, false, |state| {
            let mut push = Vec::new();
            for (index, entry) in state.connections.iter_mut().enumerate() {
                match decide(&mut entry.cursor, offset, direct, limit, frame) {
                    Decision::Push => push.push(index),
                    // A cursor at or past the event means the connection
                    // has it (cursors only move by pushing): the emitter's
                    // own copy was overtaken by the one through Redis.
                    Decision::Skip if direct => outcome.delivered += 1,
                    Decision::Skip => {}
                    Decision::Defer => outcome.deferred += 1,
                    Decision::Gap => {
                        tracing::warn!(connection_id = %entry.connection.connection_id, %offset,
                            "critical event out of order (events were lost in transit): closing so the client resumes");
                        entry.connection.websocket.close(close::missed_events());
                        evict.push(entry.connection.connection_id.clone());
                        outcome.closed += 1;
                    }
                }
            }
            let recipients: Vec<Recipient> = push
                .iter()
                .map(|&i| recipient_of(&state.connections[i].connection, &state.counters))
                .collect();
            // Under the lock: a later event must not overtake this one.
            let fan = fan_out(&recipients, frame, SlowConsumerPolicy::Disconnect, &self.totals);
            for &i in &push {
                let entry = &mut state.connections[i];
                if !fan.evict.contains(&entry.connection.connection_id) {
                    entry.cursor = Cursor::Live { at: Some(offset) };
                }
            }
            if fan.delivered > 0 {
                state.counters.touch();
            }
            outcome.delivered += fan.delivered;
            outcome.closed += fan.evict.len();
            evict.extend(fan.evict);
        });
        for id in evict {
            self.remove(&id, close::missed_events());
        }
        outcome
    }

    /// Fans an ordinary frame out to the user's live connections here.
    pub fn send_to_user(&self, user: &UserId, frame: &TextFrame) -> FanOut {
        let recipients = self
            .with_user(user, false, |state| {
                state
                    .connections
                    .iter()
                    .filter(|c| matches!(c.cursor, Cursor::Live { .. }))
                    .map(|c| recipient_of(&c.connection, &state.counters))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        self.fan_out(&recipients, frame)
    }

    /// Fans an ordinary frame out to the thread's live connections here.
    pub fn send_to_thread(&self, thread: &ThreadId, frame: &TextFrame) -> FanOut {
        let recipients = self
            .threads
            .get(thread)
            .map(|r| r.value().clone())
            .unwrap_or_default();
        self.fan_out(&recipients, frame)
    }

    fn fan_out(&self, recipients: &[Recipient], frame: &TextFrame) -> FanOut {
        let fan = fan_out(
            recipients,
            frame,
            self.config.slow_consumer_policy(),
            &self.totals,
        );
        if fan.delivered > 0 {
            // A user's recipients share their counters: touch each run once.
            let mut touched: Option<&Arc<UserCounters>> = None;
            for recipient in recipients {
                if !touched.is_some_and(|t| Arc::ptr_eq(t, &recipient.counters)) {
                    recipient.counters.touch();
                    touched = Some(&recipient.counters);
                }
            }
        }
        for id in &fan.evict {
            self.remove(id, CloseReason::slow_consumer());
        }
        fan
    }

    pub fn get(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection> {
        let user = self.connections.get(connection_id)?.value().clone();
        self.with_user(&user, false, |state| {
            state
                .connections
                .iter()
                .find(|c| &c.connection.connection_id == connection_id)
                .map(|c| c.connection.clone())
        })?
    }

    pub fn user_connections(&self, user: &UserId) -> HashSet<ConnectionId> {
        self.with_user(user, false, |state| {
            state
                .connections
                .iter()
                .map(|c| c.connection.connection_id.clone())
                .collect()
        })
        .unwrap_or_default()
    }

    pub fn has_user(&self, user: &UserId) -> bool {
        self.users.contains_key(user)
    }

    pub fn by_socket(&self, socket: &WebSocketHandle) -> Option<ConnectionId> {
        self.sockets.get(&socket.id()).map(|c| c.value().clone())
    }

    /// Binds a connection of this node to `thread`; `None` when unknown.
    pub fn update_thread(
        &self,
        connection_id: &ConnectionId,
        thread: ThreadId,
    ) -> Option<PresenceEntry> {
        let user = self.connections.get(connection_id)?.value().clone();
        self.with_user(&user, false, |state| {
            let counters = Arc::clone(&state.counters);
            let entry = state
                .connections
                .iter_mut()
                .find(|c| &c.connection.connection_id == connection_id)?;
            if let Some(old) = entry.connection.thread_id.replace(thread.clone()) {
                self.unthread(&old, connection_id);
            }
            if matches!(entry.cursor, Cursor::Live { .. }) {
                let recipient = recipient_of(&entry.connection, &counters);
                self.threads
                    .entry(thread.clone())
                    .or_default()
                    .push(recipient);
                (self.sink)(PresenceChange::Moved(
                    connection_id.clone(),
                    presence_of(&entry.connection),
                ));
            }
            Some(presence_of(&entry.connection))
        })?
    }

    /// Summaries, counters and the newest offset seen, for health.
    pub fn health(
        &self,
        user: &UserId,
    ) -> Option<(
        Vec<ConnectionSummary>,
        Arc<UserCounters>,
        Option<StreamOffset>,
    )> {
        self.with_user(user, false, |state| {
            let latest = state
                .connections
                .iter()
                .filter_map(|c| match c.cursor {
                    Cursor::Live { at } => at,
                    Cursor::CatchingUp { .. } => None,
                })
                .max_by_key(|o| (o.stream, o.sequence));
            (
                state
                    .connections
                    .iter()
                    .map(|c| ConnectionSummary::of(&c.connection))
                    .collect(),
                Arc::clone(&state.counters),
                latest,
            )
        })
    }

    /// Every connection here, as the presence hash keeps it.
    pub fn presence(&self) -> Vec<(ConnectionId, PresenceEntry)> {
        let slots: Vec<_> = self.users.iter().map(|s| Arc::clone(s.value())).collect();
        let mut all = Vec::new();
        for slot in slots {
            let state = slot.lock();
            all.extend(state.connections.iter().map(|c| {
                (
                    c.connection.connection_id.clone(),
                    presence_of(&c.connection),
                )
            }));
        }
        all
    }

    /// Each user's live connections' cursors, for the audit after a Redis
    /// reconnect.
    pub fn cursors(&self) -> Vec<(UserId, Vec<Option<StreamOffset>>)> {
        let slots: Vec<_> = self
            .users
            .iter()
            .map(|s| (s.key().clone(), Arc::clone(s.value())))
            .collect();
        slots
            .into_iter()
            .map(|(user, slot)| {
                let state = slot.lock();
                let cursors = state
                    .connections
                    .iter()
                    .filter_map(|c| match c.cursor {
                        Cursor::Live { at } => Some(at),
                        Cursor::CatchingUp { .. } => None,
                    })
                    .collect();
                (user, cursors)
            })
            .collect()
    }

    /// Closes (for a resume) every live connection of `user` that is behind
    /// `head`, the stream head Redis reports; returns how many.
    pub fn close_behind(&self, user: &UserId, head: Option<StreamOffset>) -> usize {
        let behind: Vec<ConnectionId> = self
            .with_user(user, false, |state| {
                state
                    .connections
                    .iter()
                    .filter(|c| match (&c.cursor, head) {
                        // Behind the head, or on a stream Redis no longer has.
                        (Cursor::Live { at: Some(at) }, Some(head)) => {
                            at.stream != head.stream || at.sequence < head.sequence
                        }
                        (Cursor::Live { at: None }, Some(_)) => true,
                        (Cursor::Live { at }, None) => at.is_some(),
                        (Cursor::CatchingUp { .. }, _) => false,
                    })
                    .map(|c| c.connection.connection_id.clone())
                    .collect()
            })
            .unwrap_or_default();
        for id in &behind {
            self.remove(id, close::missed_events());
        }
        behind.len()
    }

    /// Closes and forgets every connection.
    pub fn close_all(&self, reason: &CloseReason) -> usize {
        let ids: Vec<ConnectionId> = self.connections.iter().map(|c| c.key().clone()).collect();
        ids.iter()
            .filter(|id| self.remove(id, reason.clone()).is_some())
            .count()
    }

    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// This node's counters and index sizes (history lives in Redis:
    /// `history_users` is 0).
    pub fn stats(&self) -> ManagerStats {
        let t = &self.totals;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        ManagerStats {
            indexes: IndexSizes {
                connections: self.connections.len(),
                users: self.users.len(),
                sockets: self.sockets.len(),
                threads: self.threads.len(),
                history_users: 0,
            },
            messages_sent: load(&t.sent),
            messages_failed: load(&t.failed),
            messages_dropped: load(&t.dropped),
            slow_consumer_disconnects: load(&t.slow_disconnects),
            critical_rejected: load(&t.critical_rejected),
            history_evicted: load(&t.history_evicted),
            history_expired: load(&t.history_expired),
            pending_expired: load(&t.pending_expired),
            replayed: load(&t.replayed),
            resync_notices: load(&t.resync_notices),
            pending_discarded_at_shutdown: load(&t.pending_discarded),
        }
    }
}

fn recipient_of(connection: &WebSocketConnection, counters: &Arc<UserCounters>) -> Recipient {
    Recipient {
        connection_id: connection.connection_id.clone(),
        socket: connection.websocket.clone(),
        counters: Arc::clone(counters),
    }
}

fn presence_of(connection: &WebSocketConnection) -> PresenceEntry {
    PresenceEntry {
        user: connection.user_id.clone(),
        thread: connection.thread_id.clone(),
        connected_at_ms: unix_millis(connection.connected_at),
    }
}
