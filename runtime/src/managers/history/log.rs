//! The retained per-user log of critical events ([`EventLog`]) and the
//! ledger that bounds how many users may hold one ([`HistoryLedger`]).
//!
//! Every critical event is appended to its user's log with its offset,
//! whether or not a socket took it, so a client that lost events in flight
//! (a dead socket, a half-open TCP connection) can resume from the last
//! offset it saw. Events no connection has taken yet are *pending*: they
//! form a suffix of the log and are replayed to the user's next connection
//! even when it brings no offset.
//!
//! Bounds, so memory stays bounded whatever clients do:
//! * per user: at most `history_capacity` events and `history_max_bytes`
//!   bytes (so a replay always fits a fresh connection's queue), each kept at
//!   most `history_max_age`. The oldest *delivered* events are evicted to
//!   make room; a pending event is never evicted (the new event is refused
//!   instead, and the caller gets an error).
//! * per manager: at most `max_history_users` users holding a log
//!   ([`HistoryLedger`]).
//!
//! What is dropped is never dropped silently: eviction and expiry advance
//! [`EventLog::trimmed_through`], so a resume from an older offset is told
//! what it missed; a pending event that expires is remembered as a [`Loss`]
//! until a connection of the user has been told, or for `history_max_age`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::StreamView;
use crate::connection::TextFrame;
use crate::error::ManagerError;
use crate::ids::UserId;
use crate::offset::{EventPrint, StreamOffset};

/// One retained critical event.
#[derive(Debug, Clone)]
pub(crate) struct LoggedEvent {
    /// The serialized envelope.
    pub frame: TextFrame,
    /// When it was appended.
    pub appended_at: Instant,
}

/// The bounds of one user's log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HistoryLimits {
    pub capacity: usize,
    pub max_bytes: usize,
}

/// Why an event could not be appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppendRefused {
    /// Making room would evict events no connection has taken yet.
    PendingFull,
    /// The event alone is larger than `history_max_bytes`.
    TooLarge,
    /// The manager already keeps logs for `max_history_users` users.
    TooManyUsers,
}

/// Pending events that were dropped (expired) before any connection took
/// them, not yet announced to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loss {
    /// How many.
    pub count: u64,
    /// When the last of them was dropped.
    pub at: Instant,
}

/// Counts users holding a log (retained events or an unannounced loss),
/// against a limit. Each [`EventLog`] reserves a place when it starts
/// holding something and releases it when it holds nothing, inside its own
/// methods, so the count cannot drift.
#[derive(Debug)]
pub(crate) struct HistoryLedger {
    users: AtomicUsize,
    limit: usize,
}

impl HistoryLedger {
    pub fn new(limit: usize) -> Self {
        HistoryLedger {
            users: AtomicUsize::new(0),
            limit,
        }
    }

    /// Users holding a log.
    pub fn users(&self) -> usize {
        self.users.load(Ordering::Acquire)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    fn try_reserve(&self) -> bool {
        self.users
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        self.users.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What [`EventLog::expire`] dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Expired {
    /// Events dropped for age.
    pub events: usize,
    /// Of those, events no connection had taken (now a [`Loss`]).
    pub pending: usize,
}

/// One user's retained critical events, oldest first, with sequence numbers
/// `trimmed_through + 1 ..= last_sequence` (contiguous).
#[derive(Debug)]
pub(crate) struct EventLog {
    stream: u64,
    events: VecDeque<LoggedEvent>,
    bytes: usize,
    last_sequence: u64,
    /// Every sequence up to this one is no longer retained.
    trimmed_through: u64,
    /// The first sequence no connection has taken (`last_sequence + 1` when
    /// nothing is pending).
    pending_from: u64,
    loss: Option<Loss>,
    /// Whether this log holds a place in the ledger.
    reserved: bool,
    /// Events evicted to make room, since the log was created.
    pub evicted: u64,
    /// Events dropped for age, since the log was created.
    pub expired: u64,
}

impl EventLog {
    pub fn new(stream: u64) -> Self {
        EventLog {
            stream,
            events: VecDeque::new(),
            bytes: 0,
            last_sequence: 0,
            trimmed_through: 0,
            pending_from: 1,
            loss: None,
            reserved: false,
            evicted: 0,
            expired: 0,
        }
    }

    /// The offset of the last event appended (sequence 0 before the first).
    pub fn latest(&self) -> StreamOffset {
        StreamOffset::new(self.stream, self.last_sequence)
    }

    /// The offset the next event will get.
    pub fn next_offset(&self) -> StreamOffset {
        StreamOffset::new(self.stream, self.last_sequence + 1)
    }

    /// The oldest retained event's offset.
    pub fn oldest_retained(&self) -> Option<StreamOffset> {
        (!self.events.is_empty()).then(|| StreamOffset::new(self.stream, self.trimmed_through + 1))
    }

    /// Retained events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Retained bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Events no connection has taken yet.
    pub fn pending(&self) -> usize {
        usize::try_from(self.last_sequence + 1 - self.pending_from).unwrap_or(usize::MAX)
    }

    /// Whether the log holds anything that must outlive the user's
    /// connections: retained events or an unannounced loss.
    pub fn holds_history(&self) -> bool {
        !self.events.is_empty() || self.loss.is_some()
    }

    /// Records that a connection took every event up to `sequence`.
    pub fn mark_taken_through(&mut self, sequence: u64) {
        // Never past the last event: nothing after it exists to be taken.
        self.pending_from = self.pending_from.max(sequence.min(self.last_sequence) + 1);
    }

    /// Appends the event with sequence `next_offset().sequence`, evicting the
    /// oldest delivered events to make room. Returns how many were evicted.
    pub fn append(
        &mut self,
        frame: TextFrame,
        now: Instant,
        limits: HistoryLimits,
        ledger: &HistoryLedger,
    ) -> Result<usize, AppendRefused> {
        let len = frame.len();
        if len > limits.max_bytes {
            return Err(AppendRefused::TooLarge);
        }
        // How many of the oldest events must go; none of them may be pending.
        let mut evict = 0usize;
        let mut bytes = self.bytes;
        while self.events.len() - evict >= limits.capacity || bytes + len > limits.max_bytes {
            let Some(oldest) = self.events.get(evict) else {
                break;
            };
            if self.trimmed_through + 1 + evict as u64 >= self.pending_from {
                return Err(AppendRefused::PendingFull);
            }
            bytes -= oldest.frame.len();
            evict += 1;
        }
        if !self.reserved {
            if !ledger.try_reserve() {
                return Err(AppendRefused::TooManyUsers);
            }
            self.reserved = true;
        }
        for _ in 0..evict {
            self.pop_oldest();
        }
        self.evicted += evict as u64;
        self.bytes += len;
        self.events.push_back(LoggedEvent {
            frame,
            appended_at: now,
        });
        self.last_sequence += 1;
        Ok(evict)
    }

    fn pop_oldest(&mut self) -> Option<LoggedEvent> {
        let event = self.events.pop_front()?;
        self.bytes -= event.frame.len();
        self.trimmed_through += 1;
        // A dropped event is no longer owed to anyone (a pending one is
        // recorded as a loss by the caller).
        self.pending_from = self.pending_from.max(self.trimmed_through + 1);
        Some(event)
    }

    /// Drops events older than `max_age`, and a loss announced to nobody
    /// for `max_age`. Pending events that expire become a [`Loss`].
    pub fn expire(&mut self, now: Instant, max_age: Duration, ledger: &HistoryLedger) -> Expired {
        let mut expired = Expired::default();
        while let Some(oldest) = self.events.front() {
            if now.saturating_duration_since(oldest.appended_at) <= max_age {
                break;
            }
            let was_pending = self.trimmed_through + 1 >= self.pending_from;
            self.pop_oldest();
            expired.events += 1;
            if was_pending {
                expired.pending += 1;
            }
        }
        if expired.pending > 0 {
            let count = self.loss.map_or(0, |loss| loss.count) + expired.pending as u64;
            self.loss = Some(Loss { count, at: now });
        } else if self
            .loss
            .is_some_and(|loss| now.saturating_duration_since(loss.at) > max_age)
        {
            self.loss = None;
        }
        self.expired += expired.events as u64;
        self.settle(ledger);
        expired
    }

    /// What the log holds, for [`plan_resume`](super::plan_resume).
    pub fn view(&self) -> StreamView {
        StreamView {
            stream: self.stream,
            head: self.last_sequence,
            first_retained: self.trimmed_through + 1,
            taken: self.pending_from - 1,
            unannounced_loss: self.loss.map(|loss| loss.count),
        }
    }

    /// The print of the retained event at `sequence`, if it is retained:
    /// what a resume's print is checked against.
    pub fn print_at(&self, sequence: u64) -> Option<EventPrint> {
        let index = sequence.checked_sub(self.trimmed_through + 1)?;
        let event = self.events.get(usize::try_from(index).ok()?)?;
        Some(EventPrint::of(event.frame.as_str()))
    }

    /// The retained events from `from` on, oldest first.
    pub fn events_from(&self, from: u64) -> impl Iterator<Item = &LoggedEvent> {
        let skip = from.saturating_sub(self.trimmed_through + 1);
        self.events
            .iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
    }

    /// Records that a connection was sent its replay up to `through`: what
    /// is pending up to there is taken, and any loss has been announced.
    pub fn replayed(&mut self, through: u64, ledger: &HistoryLedger) {
        self.mark_taken_through(through);
        self.loss = None;
        self.settle(ledger);
    }

    /// Drops everything; returns how many pending events were dropped.
    pub fn clear(&mut self, ledger: &HistoryLedger) -> usize {
        let pending = self.pending();
        while self.pop_oldest().is_some() {}
        self.pending_from = self.last_sequence + 1;
        self.loss = None;
        self.settle(ledger);
        pending
    }

    /// Releases the ledger place once the log holds nothing.
    fn settle(&mut self, ledger: &HistoryLedger) {
        if self.reserved && !self.holds_history() {
            ledger.release();
            self.reserved = false;
        }
    }
}

/// The error for an append refused for a reason other than the user limit.
pub(crate) fn refusal_error(
    refused: AppendRefused,
    user: &UserId,
    frame: &TextFrame,
    limits: HistoryLimits,
    log: &EventLog,
    ledger: &HistoryLedger,
) -> ManagerError {
    match refused {
        AppendRefused::TooLarge => ManagerError::CriticalEventTooLarge {
            user_id: user.clone(),
            len: frame.len(),
            max: limits.max_bytes,
        },
        AppendRefused::PendingFull => ManagerError::HistoryFull {
            user_id: user.clone(),
            pending: log.pending(),
        },
        AppendRefused::TooManyUsers => ManagerError::HistoryUsersFull {
            limit: ledger.limit(),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::managers::events::ResyncReason;

    const LIMITS: HistoryLimits = HistoryLimits {
        capacity: 3,
        max_bytes: 100,
    };

    fn frame(text: &str) -> TextFrame {
        TextFrame::from_string(text.to_owned())
    }

    fn appended(log: &mut EventLog, n: usize, now: Instant, ledger: &HistoryLedger) {
        for i in 0..n {
            log.append(frame(&format!("e{i}")), now, LIMITS, ledger)
                .unwrap();
        }
    }

    fn plan_of(log: &EventLog, resume: Option<StreamOffset>) -> super::super::ResumePlan {
        super::super::plan_resume(
            &log.view(),
            resume.map(crate::offset::ResumePoint::new),
            |sequence| log.print_at(sequence),
            0,
        )
    }

    fn texts(log: &EventLog, from: u64) -> Vec<String> {
        log.events_from(from)
            .map(|e| e.frame.as_str().to_owned())
            .collect()
    }

    #[test]
    fn delivered_events_are_evicted_oldest_first_and_pending_ones_never() {
        let ledger = HistoryLedger::new(10);
        let mut log = EventLog::new(7);
        let now = Instant::now();
        appended(&mut log, 3, now, &ledger);
        assert_eq!(log.pending(), 3);
        // all three pending: a fourth would evict a pending event
        assert_eq!(
            log.append(frame("x"), now, LIMITS, &ledger),
            Err(AppendRefused::PendingFull)
        );
        assert_eq!(log.latest(), StreamOffset::new(7, 3));
        log.mark_taken_through(2);
        assert_eq!(log.append(frame("e3"), now, LIMITS, &ledger), Ok(1));
        assert_eq!(log.oldest_retained(), Some(StreamOffset::new(7, 2)));
        assert_eq!(texts(&log, 0), ["e1", "e2", "e3"]);
        assert_eq!(log.pending(), 2);
        assert_eq!(log.evicted, 1);
        assert_eq!(ledger.users(), 1);
    }

    #[test]
    fn the_byte_bound_evicts_too_and_an_oversized_event_is_refused() {
        let ledger = HistoryLedger::new(10);
        let mut log = EventLog::new(1);
        let now = Instant::now();
        let big = "x".repeat(60);
        log.append(frame(&big), now, LIMITS, &ledger).unwrap();
        log.mark_taken_through(1);
        assert_eq!(log.append(frame(&big), now, LIMITS, &ledger), Ok(1));
        assert_eq!(log.bytes(), 60);
        assert_eq!(
            log.append(frame(&"y".repeat(101)), now, LIMITS, &ledger),
            Err(AppendRefused::TooLarge)
        );
    }

    #[test]
    fn a_print_of_another_event_at_the_offset_is_told_unknown_stream() {
        use crate::offset::{EventPrint, ResumePoint};
        let ledger = HistoryLedger::new(10);
        let mut log = EventLog::new(5);
        appended(&mut log, 3, Instant::now(), &ledger);
        let plan = |sequence, print: &str| {
            let point = ResumePoint {
                offset: StreamOffset::new(5, sequence),
                print: Some(EventPrint::of(print)),
            };
            super::super::plan_resume(&log.view(), Some(point), |s| log.print_at(s), 0)
        };
        // Event 2 is the frame "e1".
        assert_eq!(log.print_at(2), Some(EventPrint::of("e1")));
        assert_eq!((plan(2, "e1").notice, plan(2, "e1").from), (None, 3));
        let refused = plan(2, "another").notice.unwrap();
        assert_eq!(refused.reason, ResyncReason::UnknownStream);
        assert_eq!(plan(2, "another").from, 1, "then everything retained");
        // Sequence 0 names no event: its print is not checked.
        assert_eq!(plan(0, "another").notice, None);
        assert_eq!(log.print_at(0), None);
        assert_eq!(log.print_at(4), None);
    }

    #[test]
    fn resume_plans_say_exactly_what_was_lost() {
        let ledger = HistoryLedger::new(10);
        let mut log = EventLog::new(5);
        let now = Instant::now();
        appended(&mut log, 3, now, &ledger);
        log.mark_taken_through(3);
        appended(&mut log, 2, now, &ledger); // evicts e0 and e1: retained 3..=5
        assert_eq!(log.oldest_retained(), Some(StreamOffset::new(5, 3)));

        let plan = plan_of(&log, Some(StreamOffset::new(5, 3)));
        assert_eq!((plan.notice, plan.from), (None, 4));
        let plan = plan_of(&log, Some(StreamOffset::new(5, 2)));
        assert_eq!((plan.notice, plan.from), (None, 3));

        let plan = plan_of(&log, Some(StreamOffset::new(5, 0)));
        let notice = plan.notice.unwrap();
        assert_eq!(notice.reason, ResyncReason::Trimmed);
        assert_eq!(notice.lost, Some(2));
        assert_eq!(notice.oldest_retained, Some(StreamOffset::new(5, 3)));
        assert_eq!(notice.latest, StreamOffset::new(5, 5));
        assert_eq!(plan.from, 3);

        let plan = plan_of(&log, Some(StreamOffset::new(4, 9)));
        let notice = plan.notice.unwrap();
        assert_eq!(
            (notice.reason, notice.lost),
            (ResyncReason::UnknownStream, None)
        );
        assert_eq!(plan.from, 3);

        let plan = plan_of(&log, Some(StreamOffset::new(5, 6)));
        assert_eq!(plan.notice.unwrap().reason, ResyncReason::Ahead);

        // without an offset: what no connection took (e3, e4 after the
        // second append were never taken)
        let plan = plan_of(&log, None);
        assert_eq!((plan.notice, plan.from), (None, 4));
        assert_eq!(texts(&log, plan.from), ["e0", "e1"]);
    }

    #[test]
    fn expired_pending_events_become_a_loss_that_is_announced_once() {
        let ledger = HistoryLedger::new(10);
        let mut log = EventLog::new(2);
        let start = Instant::now();
        appended(&mut log, 2, start, &ledger);
        let max_age = Duration::from_secs(5);
        let later = start + Duration::from_secs(6);
        let expired = log.expire(later, max_age, &ledger);
        assert_eq!(
            expired,
            Expired {
                events: 2,
                pending: 2
            }
        );
        assert!(log.holds_history(), "the loss must outlive the events");
        assert_eq!(ledger.users(), 1);
        let plan = plan_of(&log, None);
        let notice = plan.notice.unwrap();
        assert_eq!(
            (notice.reason, notice.lost),
            (ResyncReason::Trimmed, Some(2))
        );
        assert_eq!(notice.oldest_retained, None);
        log.replayed(log.latest().sequence, &ledger);
        assert!(!log.holds_history());
        assert_eq!(ledger.users(), 0);
        assert_eq!(plan_of(&log, None).notice, None);
    }

    #[test]
    fn an_unannounced_loss_is_forgotten_after_max_age() {
        let ledger = HistoryLedger::new(10);
        let mut log = EventLog::new(2);
        let start = Instant::now();
        appended(&mut log, 1, start, &ledger);
        let max_age = Duration::from_secs(5);
        log.expire(start + Duration::from_secs(6), max_age, &ledger);
        assert!(log.holds_history());
        log.expire(start + Duration::from_secs(10), max_age, &ledger);
        assert!(log.holds_history());
        log.expire(start + Duration::from_secs(12), max_age, &ledger);
        assert!(!log.holds_history());
        assert_eq!(ledger.users(), 0);
    }

    #[test]
    fn the_ledger_bounds_users_holding_history() {
        let ledger = HistoryLedger::new(1);
        let now = Instant::now();
        let mut a = EventLog::new(1);
        let mut b = EventLog::new(2);
        a.append(frame("x"), now, LIMITS, &ledger).unwrap();
        assert_eq!(
            b.append(frame("y"), now, LIMITS, &ledger),
            Err(AppendRefused::TooManyUsers)
        );
        assert_eq!(b.latest().sequence, 0, "a refused append assigns nothing");
        assert_eq!(a.clear(&ledger), 1);
        assert_eq!(ledger.users(), 0);
        b.append(frame("y"), now, LIMITS, &ledger).unwrap();
        assert_eq!(ledger.users(), 1);
    }
}

#[cfg(test)]
mod size {
    /// What an empty log costs a connected user, inline in its slot (an
    /// empty `VecDeque` allocates nothing). BENCHMARKS.md quotes it.
    #[test]
    fn an_empty_log_stays_small() {
        let size = std::mem::size_of::<super::EventLog>();
        println!("size_of::<EventLog>() = {size} bytes");
        assert!(size <= 144, "EventLog grew to {size} bytes");
    }
}
