//! The per-user pending buffer of critical events, and the ledger that bounds
//! how many users may have one.
//!
//! Bounds, so memory stays bounded whatever clients do:
//! * per user: at most `pending_capacity` events and at most
//!   `queue_max_bytes` bytes (so a replay always fits a fresh connection's
//!   queue), each kept at most `pending_max_age`;
//! * per manager: at most `max_pending_users` users with a non-empty buffer
//!   ([`PendingLedger`]).
//!
//! A full buffer refuses the new event (the caller gets an error); the
//! oldest is never dropped to make room. Expired events are dropped, counted
//! and logged.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::connection::TextFrame;

/// One critical event waiting for its user's next connection.
#[derive(Debug, Clone)]
pub(crate) struct PendingEvent {
    /// The event's per-user sequence number.
    pub sequence: u64,
    /// The serialized envelope.
    pub frame: TextFrame,
    /// When it was buffered.
    pub queued_at: Instant,
}

/// Why an event could not be buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushRefused {
    /// The user's buffer is at its event or byte bound.
    BufferFull,
    /// The manager already keeps buffers for `max_pending_users` users.
    TooManyUsers,
}

/// Counts users whose buffer is non-empty, against a limit. Every
/// empty-to-non-empty transition reserves a slot, every non-empty-to-empty
/// transition releases it, inside [`PendingBuffer`]'s own methods, so the
/// count cannot drift.
#[derive(Debug)]
pub(crate) struct PendingLedger {
    users: AtomicUsize,
    limit: usize,
}

impl PendingLedger {
    pub fn new(limit: usize) -> Self {
        PendingLedger {
            users: AtomicUsize::new(0),
            limit,
        }
    }

    /// Users with a non-empty buffer.
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

/// One user's buffered critical events, oldest first.
#[derive(Debug, Default)]
pub(crate) struct PendingBuffer {
    events: VecDeque<PendingEvent>,
    bytes: usize,
}

impl PendingBuffer {
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Appends an event. Returns the number of events now buffered.
    pub fn push(
        &mut self,
        event: PendingEvent,
        capacity: usize,
        max_bytes: usize,
        ledger: &PendingLedger,
    ) -> Result<usize, PushRefused> {
        if self.events.len() >= capacity || self.bytes + event.frame.len() > max_bytes {
            return Err(PushRefused::BufferFull);
        }
        if self.events.is_empty() && !ledger.try_reserve() {
            return Err(PushRefused::TooManyUsers);
        }
        self.bytes += event.frame.len();
        self.events.push_back(event);
        Ok(self.events.len())
    }

    /// The oldest event, if any.
    pub fn front(&self) -> Option<&PendingEvent> {
        self.events.front()
    }

    /// Removes the oldest event.
    pub fn pop_front(&mut self, ledger: &PendingLedger) -> Option<PendingEvent> {
        let event = self.events.pop_front()?;
        self.bytes -= event.frame.len();
        if self.events.is_empty() {
            ledger.release();
        }
        Some(event)
    }

    /// Drops the events older than `max_age` at `now`; returns how many.
    pub fn drop_expired(
        &mut self,
        now: Instant,
        max_age: Duration,
        ledger: &PendingLedger,
    ) -> usize {
        let mut dropped = 0;
        while let Some(front) = self.events.front() {
            if now.saturating_duration_since(front.queued_at) <= max_age {
                break;
            }
            self.pop_front(ledger);
            dropped += 1;
        }
        dropped
    }

    /// Drops everything; returns how many events were dropped.
    pub fn clear(&mut self, ledger: &PendingLedger) -> usize {
        let dropped = self.events.len();
        if dropped > 0 {
            self.events.clear();
            self.bytes = 0;
            ledger.release();
        }
        dropped
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn event(sequence: u64, text: &str, queued_at: Instant) -> PendingEvent {
        PendingEvent {
            sequence,
            frame: TextFrame::from_string(text.to_owned()),
            queued_at,
        }
    }

    #[test]
    fn full_buffer_refuses_the_new_event_and_keeps_the_oldest() {
        let ledger = PendingLedger::new(10);
        let mut buffer = PendingBuffer::default();
        let now = Instant::now();
        assert_eq!(buffer.push(event(1, "a", now), 2, 100, &ledger), Ok(1));
        assert_eq!(buffer.push(event(2, "b", now), 2, 100, &ledger), Ok(2));
        assert_eq!(
            buffer.push(event(3, "c", now), 2, 100, &ledger),
            Err(PushRefused::BufferFull)
        );
        assert_eq!(buffer.front().unwrap().sequence, 1);
        assert_eq!(buffer.len(), 2);
    }

    #[test]
    fn byte_bound_refuses_what_would_not_fit_a_fresh_queue() {
        let ledger = PendingLedger::new(10);
        let mut buffer = PendingBuffer::default();
        let now = Instant::now();
        buffer.push(event(1, "12345", now), 10, 8, &ledger).unwrap();
        assert_eq!(
            buffer.push(event(2, "1234", now), 10, 8, &ledger),
            Err(PushRefused::BufferFull)
        );
        buffer.push(event(2, "123", now), 10, 8, &ledger).unwrap();
        buffer.pop_front(&ledger).unwrap();
        buffer.push(event(3, "1234", now), 10, 8, &ledger).unwrap();
    }

    #[test]
    fn ledger_counts_users_with_events_and_enforces_its_limit() {
        let ledger = PendingLedger::new(2);
        let now = Instant::now();
        let mut a = PendingBuffer::default();
        let mut b = PendingBuffer::default();
        let mut c = PendingBuffer::default();
        a.push(event(1, "x", now), 5, 100, &ledger).unwrap();
        a.push(event(2, "x", now), 5, 100, &ledger).unwrap();
        assert_eq!(ledger.users(), 1);
        b.push(event(1, "x", now), 5, 100, &ledger).unwrap();
        assert_eq!(
            c.push(event(1, "x", now), 5, 100, &ledger),
            Err(PushRefused::TooManyUsers)
        );
        assert_eq!(a.clear(&ledger), 2);
        assert_eq!(ledger.users(), 1);
        c.push(event(1, "x", now), 5, 100, &ledger).unwrap();
        assert_eq!(ledger.users(), 2);
        b.pop_front(&ledger).unwrap();
        assert_eq!(ledger.users(), 1);
        assert_eq!(b.pop_front(&ledger).map(|e| e.sequence), None);
        assert_eq!(ledger.users(), 1);
    }

    #[test]
    fn expired_events_are_dropped_oldest_first() {
        let ledger = PendingLedger::new(10);
        let mut buffer = PendingBuffer::default();
        let start = Instant::now();
        let later = start + Duration::from_secs(10);
        buffer.push(event(1, "a", start), 5, 100, &ledger).unwrap();
        buffer.push(event(2, "b", later), 5, 100, &ledger).unwrap();
        let max_age = Duration::from_secs(5);
        assert_eq!(buffer.drop_expired(later, max_age, &ledger), 1);
        assert_eq!(buffer.front().unwrap().sequence, 2);
        assert_eq!(ledger.users(), 1);
        assert_eq!(
            buffer.drop_expired(later + Duration::from_secs(6), max_age, &ledger),
            1
        );
        assert!(buffer.is_empty());
        assert_eq!(ledger.users(), 0);
    }
}
