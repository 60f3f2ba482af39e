//! [`MemoryHistory`]: every user's critical events, numbered and retained in
//! this process: an [`EventLog`] per user ([`UserLog`]) kept in the user's
//! slot of the [`LocalIndex`], under the user's one lock, bounded by a
//! [`HistoryLedger`].
//!
//! A user's slot, and so its log and stream id, lives while the user has a
//! connection or the log holds something (retained events, a loss not yet
//! announced, recent idempotency keys): a stream id changes only when its
//! events are really gone.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::log::{AppendRefused, EventLog, HistoryLedger, HistoryLimits, refusal_error};
use super::{Appended, HistoryRead, NewEvent, StreamView, next_stream, plan_resume};
use crate::config::ManagerConfig;
use crate::connection::TextFrame;
use crate::error::ManagerError;
use crate::health::{ConnectionHealth, unix_millis};
use crate::ids::{IdempotencyKey, UserId};
use crate::managers::fan_out::{Totals, bump};
use crate::managers::index::{CriticalOutcome, LocalIndex, Locked, Replay, UserHistory};
use crate::offset::{ResumePoint, StreamOffset, StreamPosition};

/// A user's part of the in-memory history, in the user's index slot.
#[derive(Debug, Default)]
pub(crate) struct UserLog {
    /// The user's stream id (0: none yet), given at the first registration
    /// or event and kept as long as the slot.
    stream: u64,
    /// Made at the first event, on `stream`; lives as long as the slot.
    /// Boxed: every connected user has a slot, far fewer have history, and
    /// the slot's size is paid per idle connection.
    log: Option<Box<EventLog>>,
    /// Critical events refused for the user while the slot lived (its
    /// health's `messages_failed`; a connection's failures count in the
    /// index).
    refused: u64,
    /// Idempotency keys of the last `idempotency_window`, oldest first
    /// (boxed, as `log`, and made on the first key).
    keys: Option<Box<RecentKeys>>,
    /// Connections attached through [`CriticalEventLog`](crate::managers::CriticalEventLog),
    /// which registers none in the index.
    pub(crate) attached: usize,
}

impl UserHistory for UserLog {
    fn holds(&self) -> bool {
        self.log.as_ref().is_some_and(|log| log.holds_history())
            || self.keys.as_ref().is_some_and(|keys| !keys.is_empty())
            || self.attached > 0
    }
}

impl UserLog {
    /// The log, made now (on a new stream) if the user had none.
    fn log(&mut self) -> &mut EventLog {
        let stream = self.stream();
        self.log
            .get_or_insert_with(|| Box::new(EventLog::new(stream)))
    }

    /// The user's stream id, given now if it had none.
    fn stream(&mut self) -> u64 {
        if self.stream == 0 {
            self.stream = next_stream();
        }
        self.stream
    }

    /// Forgets the keys older than `window`; drops the set when empty.
    fn forget_keys(&mut self, now: Instant, window: Duration) {
        if let Some(keys) = self.keys.as_mut() {
            keys.forget_older_than(now, window);
            if keys.is_empty() {
                self.keys = None;
            }
        }
    }
}

/// The idempotency keys a user's events were emitted with, each with the
/// offset it got, for `window`, at most `max` (the oldest forgotten first).
#[derive(Debug, Default)]
pub(crate) struct RecentKeys {
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

/// Every user's retained critical events, in this process (module docs):
/// the bounds, the ledger and the counters; the logs themselves are in the
/// index's user slots.
#[derive(Debug)]
pub(crate) struct MemoryHistory {
    limits: HistoryLimits,
    max_age: Duration,
    idempotency_window: Duration,
    keys_per_user: usize,
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

    fn expire_at(&self, log: &mut EventLog, user: &UserId, now: Instant) {
        let expired = log.expire(now, self.max_age, &self.ledger);
        if expired.pending > 0 {
            tracing::warn!(user_id = %user, lost = expired.pending,
                "critical events expired before any connection of the user took them; the next connection is told");
        }
        bump(&self.totals.history_expired, expired.events as u64);
        bump(&self.totals.pending_expired, expired.pending as u64);
    }

    /// Numbers `event`, retains it and hands it to `deliver` under the
    /// user's lock (so in stream order); marks it taken when a connection
    /// took it.
    pub fn append_with(
        &self,
        index: &LocalIndex<UserLog>,
        user: &UserId,
        event: NewEvent<'_>,
        deliver: impl FnOnce(&mut Locked<'_, UserLog>, StreamOffset, &TextFrame) -> CriticalOutcome,
    ) -> Result<Appended, ManagerError> {
        let mut deliver = Some(deliver);
        for attempt in 0..2 {
            let result = index.with_history(user, true, |state, locked| {
                let now = Instant::now();
                state.forget_keys(now, self.idempotency_window);
                if let Some(offset) = event
                    .key
                    .and_then(|key| state.keys.as_ref().and_then(|keys| keys.get(key)))
                {
                    return Ok(Appended {
                        offset,
                        pending: state.log().pending() as u64,
                        outcome: CriticalOutcome::default(),
                        duplicate: true,
                    });
                }
                let log = state.log();
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
                        let error =
                            refusal_error(reason, user, &frame, self.limits, log, &self.ledger);
                        state.refused += 1;
                        return Err(Refused::Error(error));
                    }
                }
                let outcome = match deliver.take() {
                    Some(deliver) => deliver(locked, offset, &frame),
                    None => CriticalOutcome::default(),
                };
                let log = state.log();
                if outcome.delivered > 0 {
                    // Cursors move one by one: a connection that took this
                    // one has every event before it.
                    log.mark_taken_through(offset.sequence);
                } else {
                    tracing::debug!(user_id = %user, event_type = event.event_type,
                        pending = log.pending(),
                        "critical event retained until a connection of the user takes it");
                }
                let pending = log.pending() as u64;
                if let Some(key) = event.key {
                    state.keys.get_or_insert_default().insert(
                        key.clone(),
                        offset,
                        now,
                        self.keys_per_user,
                    );
                }
                Ok(Appended {
                    offset,
                    pending,
                    outcome,
                    duplicate: false,
                })
            });
            let error = match result {
                Some(Ok(appended)) => return Ok(appended),
                // Expired logs may be holding the places: sweep (at most
                // once a second, and never under a user lock), then retry once.
                Some(Err(Refused::TooManyUsers))
                    if attempt == 0 && self.sweep_expired_throttled(index) > 0 =>
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

    /// What a connection resuming from `resume` is owed, from `state` (the
    /// user's part, under its lock): a resync notice when some of it is
    /// gone, then the retained events, oldest first.
    pub fn plan_for(
        &self,
        state: &mut UserLog,
        user: &UserId,
        resume: Option<ResumePoint>,
    ) -> Result<HistoryRead, ManagerError> {
        let now_ms = unix_millis(SystemTime::now());
        let stream = state.stream();
        if let Some(log) = state.log.as_mut() {
            self.expire_at(log, user, Instant::now());
        }
        // A user without events has no log (and allocates none): an empty
        // stream, nothing owed.
        let log = state.log.as_deref();
        let view = log.map_or(
            StreamView {
                stream,
                head: 0,
                first_retained: 1,
                taken: 0,
                unannounced_loss: None,
            },
            EventLog::view,
        );
        let plan = plan_resume(
            &view,
            resume,
            |sequence| log.and_then(|log| log.print_at(sequence)),
            now_ms,
        );
        let notice = match &plan.notice {
            Some(notice) => Some(TextFrame::from_json(notice)?),
            None => None,
        };
        let head = StreamOffset::new(view.stream, view.head);
        let events = log.map_or_else(Vec::new, |log| {
            log.events_from(plan.from)
                .zip(plan.from..)
                .map(|(event, sequence)| (StreamOffset::new(stream, sequence), event.frame.clone()))
                .collect()
        });
        Ok(HistoryRead {
            replay: Replay {
                notice,
                events,
                head: Some(head),
            },
            notice: plan.notice,
            position: Some(StreamPosition::new(
                Some(head),
                log.and_then(EventLog::oldest_retained),
                self.limits.capacity,
                self.max_age,
            )),
            marks_taken: true,
        })
    }

    /// A connection of `user` was sent everything up to `through`: what
    /// was pending up to there is taken, and any loss was announced.
    pub fn replayed(&self, state: &mut UserLog, through: Option<StreamOffset>) {
        let Some(log) = state.log.as_mut() else {
            return;
        };
        if let Some(at) = through
            && at.stream == log.latest().stream
        {
            log.replayed(at.sequence, &self.ledger);
        }
    }

    /// Fills the history half of `health`.
    pub fn report_into(
        &self,
        index: &LocalIndex<UserLog>,
        user: &UserId,
        health: &mut ConnectionHealth,
    ) {
        index.with_history(user, false, |state, _| {
            health.messages_failed += state.refused;
            let Some(log) = state.log.as_mut() else {
                return;
            };
            self.expire_at(log, user, Instant::now());
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
    pub fn latest(&self, index: &LocalIndex<UserLog>, user: &UserId) -> Option<StreamOffset> {
        index
            .with_history(user, false, |state, _| {
                state.log.as_ref().map(|log| log.latest())
            })
            .flatten()
            .filter(|latest| latest.sequence > 0)
    }

    /// Events retained for `user` that no connection has taken yet.
    pub fn pending(&self, index: &LocalIndex<UserLog>, user: &UserId) -> usize {
        index
            .with_history(user, false, |state, _| {
                state.log.as_ref().map_or(0, |log| log.pending())
            })
            .unwrap_or(0)
    }

    /// Drops every expired retained event and idempotency key; returns how
    /// many events.
    pub fn prune_expired(&self, index: &LocalIndex<UserLog>) -> usize {
        let before = self.totals.history_expired.load(Ordering::Relaxed);
        let now = Instant::now();
        for user in index.user_ids() {
            index.with_history(&user, false, |state, _| {
                state.forget_keys(now, self.idempotency_window);
                if let Some(log) = state.log.as_mut() {
                    self.expire_at(log, &user, now);
                }
            });
        }
        let after = self.totals.history_expired.load(Ordering::Relaxed);
        usize::try_from(after - before).unwrap_or(usize::MAX)
    }

    fn sweep_expired_throttled(&self, index: &LocalIndex<UserLog>) -> usize {
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
        self.prune_expired(index)
    }

    /// Drops everything; returns how many events no connection had taken.
    pub fn clear(&self, index: &LocalIndex<UserLog>) -> usize {
        let mut discarded = 0;
        for user in index.user_ids() {
            index.with_history(&user, false, |state, _| {
                if let Some(log) = state.log.as_mut() {
                    discarded += log.clear(&self.ledger);
                }
                state.keys = None;
            });
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
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // the cluster manager's path
    pub index: &'a LocalIndex<UserLog>,
}

impl super::HistoryStore for LocalHistory<'_> {
    type Slot = UserLog;

    async fn append<'a>(
        &'a self,
        user: &'a UserId,
        event: NewEvent<'a>,
        index: &'a LocalIndex<UserLog>,
    ) -> Result<Appended, ManagerError> {
        self.history
            .append_with(index, user, event, |locked, offset, frame| {
                locked.deliver(offset, frame)
            })
    }

    async fn read<'a>(
        &'a self,
        user: &'a UserId,
        resume: Option<ResumePoint>,
    ) -> Result<HistoryRead, ManagerError> {
        // The registration made the user's slot (`begin`), so it is there
        // unless the connection went meanwhile.
        self.index
            .with_history(user, true, |state, _| {
                self.history.plan_for(state, user, resume)
            })
            .unwrap_or(Err(ManagerError::ShutDown))
    }

    async fn replayed<'a>(&'a self, user: &'a UserId, through: Option<StreamOffset>) {
        self.index.with_history(user, false, |state, _| {
            self.history.replayed(state, through)
        });
    }
}
