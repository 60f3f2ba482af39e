//! [`MemoryHistory`]: every user's critical events, numbered and retained in
//! this process (an [`EventLog`] per user holding history, bounded by a
//! [`HistoryLedger`]).
//!
//! A user's log exists while it holds something (retained events, or a loss
//! not yet announced). When it empties while connections of the user are in
//! step, the next log goes on numbering their stream (`continue_from`), so a
//! stream id changes only when its events are really gone.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use parking_lot::Mutex;

use super::log::{AppendRefused, EventLog, HistoryLedger, HistoryLimits, refusal_error};
use super::{Appended, HistoryRead, NewEvent, next_stream, plan_resume};
use crate::config::ManagerConfig;
use crate::connection::TextFrame;
use crate::error::ManagerError;
use crate::health::{ConnectionHealth, unix_millis};
use crate::ids::{IdempotencyKey, UserId};
use crate::managers::fan_out::{Totals, bump};
use crate::managers::index::{Arrival, CriticalOutcome, IndexHasher, LocalIndex, Replay};
use crate::offset::{StreamOffset, StreamPosition};

#[derive(Debug)]
struct UserLog {
    /// Set when the log left `logs`: whoever locks it must look again.
    retired: bool,
    log: EventLog,
    /// Critical events refused for the user while the log held history
    /// (its health's `messages_failed`; a connection's failures count in
    /// the index).
    refused: u64,
    /// Idempotency keys of the last `idempotency_window`, oldest first.
    keys: RecentKeys,
}

/// The idempotency keys a user's events were emitted with, each with the
/// offset it got, for `window`, at most `max` (the oldest forgotten first).
#[derive(Debug, Default)]
struct RecentKeys {
    offsets: HashMap<IdempotencyKey, StreamOffset>,
    order: VecDeque<(IdempotencyKey, Instant)>,
}

impl RecentKeys {
    fn forget_older_than(&mut self, now: Instant, window: Duration) {
        while let Some((key, at)) = self.order.front() {
            if now.saturating_duration_since(*at) <= window {
                break;
            }
            self.offsets.remove(key);
            self.order.pop_front();
        }
    }

    fn get(&self, key: &IdempotencyKey) -> Option<StreamOffset> {
        self.offsets.get(key).copied()
    }

    fn insert(&mut self, key: IdempotencyKey, offset: StreamOffset, now: Instant, max: usize) {
        while self.order.len() >= max {
            if let Some((oldest, _)) = self.order.pop_front() {
                self.offsets.remove(&oldest);
            }
        }
        self.offsets.insert(key.clone(), offset);
        self.order.push_back((key, now));
    }

    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// Why an append attempt stopped before storing the event.
enum Refused {
    TooManyUsers,
    Error(ManagerError),
}

/// Every user's retained critical events, in this process (module docs).
#[derive(Debug)]
pub(crate) struct MemoryHistory {
    limits: HistoryLimits,
    max_age: Duration,
    idempotency_window: Duration,
    keys_per_user: usize,
    logs: DashMap<UserId, Arc<Mutex<UserLog>>, IndexHasher>,
    ledger: HistoryLedger,
    /// What it evicted, expired and refused (the manager's stats add them).
    totals: Totals,
    /// Last full sweep of expired events, in ms since the epoch.
    last_sweep_ms: AtomicU64,
}

impl MemoryHistory {
    /// Empty, with the history bounds of `config`.
    pub fn new(config: &ManagerConfig) -> Self {
        MemoryHistory {
            limits: HistoryLimits {
                capacity: config.history_capacity(),
                max_bytes: config.history_max_bytes(),
            },
            max_age: config.history_max_age(),
            idempotency_window: config.idempotency_window(),
            keys_per_user: config.idempotency_keys_per_user(),
            logs: DashMap::with_hasher(IndexHasher::new()),
            ledger: HistoryLedger::new(config.max_history_users()),
            totals: Totals::default(),
            last_sweep_ms: AtomicU64::new(0),
        }
    }

    /// Its counters.
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Users holding a log.
    pub fn users(&self) -> usize {
        self.ledger.users()
    }

    /// Runs `f` on `user`'s locked log, creating it (on a stream from
    /// `start`) when `start` is given; retires a log that holds nothing.
    fn with_log<R>(
        &self,
        user: &UserId,
        start: Option<&dyn Fn() -> EventLog>,
        f: impl FnOnce(&mut EventLog) -> R,
    ) -> Option<R> {
        self.with_user_log(user, start, |state| f(&mut state.log))
    }

    fn with_user_log<R>(
        &self,
        user: &UserId,
        start: Option<&dyn Fn() -> EventLog>,
        f: impl FnOnce(&mut UserLog) -> R,
    ) -> Option<R> {
        loop {
            // Cloned out: no map guard may be held while its mutex is taken.
            // A read first: the log exists on every emit but a user's first.
            let existing = self.logs.get(user).map(|slot| Arc::clone(&slot));
            let slot = match (existing, start) {
                (Some(slot), _) => slot,
                (None, Some(start)) => Arc::clone(
                    self.logs
                        .entry(user.clone())
                        .or_insert_with(|| {
                            Arc::new(Mutex::new(UserLog {
                                retired: false,
                                log: start(),
                                refused: 0,
                                keys: RecentKeys::default(),
                            }))
                        })
                        .value(),
                ),
                (None, None) => return None,
            };
            let mut state = slot.lock();
            if state.retired {
                continue;
            }
            let result = f(&mut state);
            if !state.log.holds_history() && state.keys.is_empty() {
                state.retired = true;
                self.logs.remove_if(user, |_, s| Arc::ptr_eq(s, &slot));
            }
            return Some(result);
        }
    }

    fn expire(&self, log: &mut EventLog, user: &UserId) {
        self.expire_at(log, user, Instant::now());
    }

    fn expire_at(&self, log: &mut EventLog, user: &UserId, now: Instant) {
        let expired = log.expire(now, self.max_age, &self.ledger);
        if expired.pending > 0 {
            tracing::warn!(user_id = %user, lost = expired.pending,
                "critical events expired before any connection of the user took them; the next connection is told");
        }
        bump(&self.totals.history_expired, expired.events as u64);
        bump(&self.totals.pending_expired, expired.pending as u64);
    }

    /// A log for a user that has none: on the stream its connections
    /// follow (`continue_from`), else on a new one.
    fn fresh_log(continue_from: Option<StreamOffset>) -> EventLog {
        match continue_from {
            Some(offset) => EventLog::continuing(offset),
            None => EventLog::new(next_stream()),
        }
    }

    /// Numbers `event`, retains it and hands it to `deliver` under the
    /// user's lock, in stream order; marks it taken when a connection took
    /// it. `continue_from`: where the user's connections stand, for a user
    /// without a log.
    pub fn append_with(
        &self,
        user: &UserId,
        event: NewEvent<'_>,
        continue_from: impl Fn() -> Option<StreamOffset>,
        deliver: impl FnOnce(StreamOffset, &TextFrame, Arrival) -> CriticalOutcome,
    ) -> Result<Appended, ManagerError> {
        let mut deliver = Some(deliver);
        let start = || Self::fresh_log(continue_from());
        for attempt in 0..2 {
            let result = self.with_user_log(user, Some(&start), |state| {
                let now = Instant::now();
                if !state.keys.is_empty() {
                    state.keys.forget_older_than(now, self.idempotency_window);
                }
                if let Some(offset) = event.key.and_then(|key| state.keys.get(key)) {
                    return Ok(Appended {
                        offset,
                        pending: state.log.pending() as u64,
                        outcome: CriticalOutcome::default(),
                        duplicate: true,
                    });
                }
                let refused = &mut state.refused;
                let log = &mut state.log;
                self.expire_at(log, user, now);
                let offset = log.next_offset();
                let frame = match event.frame(offset) {
                    Ok(frame) => frame,
                    Err(error) => return Err(Refused::Error(error)),
                };
                // Retained before it is sent: an event a client may have
                // seen can always be resumed after.
                match log.append(frame.clone(), now, self.limits, &self.ledger) {
                    Ok(evicted) => bump(&self.totals.history_evicted, evicted as u64),
                    Err(AppendRefused::TooManyUsers) => return Err(Refused::TooManyUsers),
                    Err(reason) => {
                        *refused += 1;
                        let error =
                            refusal_error(reason, user, &frame, self.limits, log, &self.ledger);
                        return Err(Refused::Error(error));
                    }
                }
                let outcome = match deliver.take() {
                    Some(deliver) => deliver(offset, &frame, Arrival::InOrder),
                    None => CriticalOutcome::default(),
                };
                if outcome.delivered > 0 {
                    // Cursors move one by one: a connection that took this
                    // one has every event before it.
                    log.mark_taken_through(offset.sequence);
                } else {
                    tracing::debug!(user_id = %user, event_type = event.event_type,
                        pending = log.pending(),
                        "critical event retained until a connection of the user takes it");
                }
                if let Some(key) = event.key {
                    state
                        .keys
                        .insert(key.clone(), offset, now, self.keys_per_user);
                }
                Ok(Appended {
                    offset,
                    pending: state.log.pending() as u64,
                    outcome,
                    duplicate: false,
                })
            });
            let error = match result {
                Some(Ok(appended)) => return Ok(appended),
                // Expired logs may be holding the places: sweep (at most
                // once a second, and never under a user lock), then retry once.
                Some(Err(Refused::TooManyUsers))
                    if attempt == 0 && self.sweep_expired_throttled() > 0 =>
                {
                    continue;
                }
                Some(Err(Refused::TooManyUsers)) => ManagerError::HistoryUsersFull {
                    limit: self.ledger.limit(),
                },
                Some(Err(Refused::Error(error))) => error,
                None => ManagerError::ShutDown,
            };
            bump(&self.totals.critical_rejected, 1);
            bump(&self.totals.failed, 1);
            tracing::warn!(user_id = %user, event_type = event.event_type, %error,
                "critical event refused");
            return Err(error);
        }
        Err(ManagerError::HistoryUsersFull {
            limit: self.ledger.limit(),
        })
    }

    /// What a connection resuming from `resume` is owed: a resync notice
    /// when some of it is gone, then the retained events, oldest first.
    /// `continue_from`: where the user's connections stand, for a user
    /// without a log.
    pub fn read_now(
        &self,
        user: &UserId,
        resume: Option<StreamOffset>,
        continue_from: impl FnOnce() -> Option<StreamOffset>,
    ) -> Result<HistoryRead, ManagerError> {
        let now_ms = unix_millis(SystemTime::now());
        let plan = |log: &EventLog| -> Result<HistoryRead, ManagerError> {
            let plan = plan_resume(&log.view(), resume, now_ms);
            let notice = match &plan.notice {
                Some(notice) => Some(TextFrame::from_json(notice)?),
                None => None,
            };
            let stream = log.latest().stream;
            let events = log
                .events_from(plan.from)
                .zip(plan.from..)
                .map(|(event, sequence)| (StreamOffset::new(stream, sequence), event.frame.clone()))
                .collect();
            Ok(HistoryRead {
                replay: Replay {
                    notice,
                    events,
                    head: Some(log.latest()),
                },
                notice: plan.notice,
                position: Some(StreamPosition::new(
                    Some(log.latest()),
                    log.oldest_retained(),
                    self.limits.capacity,
                    self.max_age,
                )),
                marks_taken: true,
            })
        };
        let read = self.with_log(user, None, |log| {
            self.expire(log, user);
            plan(log)
        });
        match read {
            Some(read) => read,
            // Nothing retained: the plan of an empty log on the stream the
            // user's connections follow (or a new one), which is the log
            // the next event starts.
            None => plan(&Self::fresh_log(continue_from())),
        }
    }

    /// A connection of `user` was sent everything up to `through`: what
    /// was pending up to there is taken, and any loss was announced.
    pub fn replayed(&self, user: &UserId, through: Option<StreamOffset>) {
        self.with_log(user, None, |log| {
            if let Some(at) = through
                && at.stream == log.latest().stream
            {
                log.replayed(at.sequence, &self.ledger);
            }
        });
    }

    /// Fills the history half of `health`.
    pub fn report_into(&self, user: &UserId, health: &mut ConnectionHealth) {
        self.with_user_log(user, None, |state| {
            health.messages_failed += state.refused;
            let log = &mut state.log;
            self.expire(log, user);
            health.pending_critical_events = log.pending();
            health.retained_critical_events = log.len();
            health.retained_bytes = log.bytes();
            if log.latest().sequence > 0 {
                health.latest_offset = Some(log.latest());
            }
            health.oldest_retained = log.oldest_retained();
            health.history_evicted = log.evicted;
            health.history_expired = log.expired;
        });
    }

    /// The offset of the last event retained for `user`, if any.
    pub fn latest(&self, user: &UserId) -> Option<StreamOffset> {
        self.with_log(user, None, |log| log.latest())
            .filter(|latest| latest.sequence > 0)
    }

    /// Events retained for `user` that no connection has taken yet.
    pub fn pending(&self, user: &UserId) -> usize {
        self.with_log(user, None, |log| log.pending()).unwrap_or(0)
    }

    /// Drops every expired retained event; returns how many.
    pub fn prune_expired(&self) -> usize {
        let before = self.totals.history_expired.load(Ordering::Relaxed);
        let users: Vec<UserId> = self.logs.iter().map(|e| e.key().clone()).collect();
        let now = Instant::now();
        for user in users {
            self.with_user_log(&user, None, |state| {
                state.keys.forget_older_than(now, self.idempotency_window);
                self.expire_at(&mut state.log, &user, now);
            });
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

    /// Drops everything; returns how many events no connection had taken.
    pub fn clear(&self) -> usize {
        let users: Vec<UserId> = self.logs.iter().map(|e| e.key().clone()).collect();
        let mut discarded = 0;
        for user in users {
            self.with_log(&user, None, |log| discarded += log.clear(&self.ledger));
        }
        discarded
    }
}

/// The in-memory history of a manager whose connections are in `index`:
/// the [`HistoryStore`](super::HistoryStore) of the unified and isolated
/// managers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalHistory<'a> {
    pub history: &'a MemoryHistory,
    pub index: &'a LocalIndex,
}

impl super::HistoryStore for LocalHistory<'_> {
    async fn append<'a>(
        &'a self,
        user: &'a UserId,
        event: NewEvent<'a>,
        index: &'a LocalIndex,
    ) -> Result<Appended, ManagerError> {
        self.history.append_with(
            user,
            event,
            || index.latest_cursor(user),
            |offset, frame, arrival| index.deliver_critical(user, offset, frame, arrival),
        )
    }

    async fn read<'a>(
        &'a self,
        user: &'a UserId,
        resume: Option<StreamOffset>,
    ) -> Result<HistoryRead, ManagerError> {
        self.history
            .read_now(user, resume, || self.index.latest_cursor(user))
    }

    async fn replayed<'a>(&'a self, user: &'a UserId, through: Option<StreamOffset>) {
        self.history.replayed(user, through);
    }
}
