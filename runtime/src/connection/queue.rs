//! The bounded queue between a socket's [`WebSocketHandle`](super::WebSocketHandle)s
//! and its [`OutboundReceiver`](super::OutboundReceiver): frames bounded in
//! count and in bytes, one close reason, one waiting writer.
//!
//! Why not tokio's `mpsc`: a manager's send pushes one frame into every
//! recipient's queue, so the cost of one push is paid once per recipient.
//! tokio's bounded channel spends four atomic read-modify-writes on a push
//! (semaphore, tail, slot flags, waker state), and a byte bound kept beside
//! it adds a fifth on another cache line. Here one short lock guards the
//! frames, both counts, the close and the waker together: a push is a lock,
//! a `push_back` and an unlock, both bounds are exact, and a close drops the
//! queued frames at once. Only the socket's own senders and its writer take
//! the lock, always for a few operations and never across an `.await`, so a
//! slow socket contends with nobody else.

use std::collections::VecDeque;
use std::mem;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::offset::StreamPosition;

use super::frame::OutboundEvent;
use super::frame::TextFrame;
use super::limits::{QueueLimits, SendError};
use crate::close::CloseReason;

/// A queue drained to empty keeps at most this many slots (160 bytes); a
/// burst's larger buffer is given back so that an idle socket costs the
/// manager well under 1 KiB, also after a burst. Steady traffic of a few
/// frames at a time never reallocates.
const IDLE_CAPACITY: usize = 4;

/// A burst's buffer (of at most [`BURST_CAPACITY`] slots, 1.25 KiB) is kept,
/// not freed, when the queue drains again within this long of its previous
/// drain: the socket gets bursts back to back, and the next one would
/// allocate the same buffer again. A larger buffer is always freed, so what
/// a socket keeps this way stays bounded.
///
/// Why: the sender allocates the buffer on its thread and the writer frees
/// it on another, and such a `free` takes the lock of the sender's
/// allocator arena, against the sender's own allocations. In the broadcast
/// of `benches/transport_e2e.rs` (every socket one burst per round) that
/// was a sixth of the process's futex calls. An isolated burst is still
/// freed at its drain, and a buffer kept this way is given back by the
/// writer at its next ping ([`OutboundQueue::release_idle_buffer`]) if the
/// socket has gone quiet meanwhile.
const KEEP_BURST_BUFFER: coarsetime::Duration = coarsetime::Duration::from_millis(1000);

/// A queue that outgrows its idle slots grows straight to this many (1.25 KiB,
/// or the queue's bound if lower), then doubles as usual.
///
/// Why: a burst's buffer is allocated by the sending thread and given back
/// by the writer on another, so each step goes through the allocator's
/// shared arena rather than a thread-local cache. Growing 4 → 8 → 16 → 32
/// one doubling at a time cost three such reallocations per burst; in the
/// broadcast of `benches/transport_e2e.rs` (each socket's writer falling up
/// to 20 frames behind) they were a quarter of the send's time.
const BURST_CAPACITY: usize = 32;

/// One queued frame. Text is what a manager fans out; binary is what a
/// handler streams (audio...). Both count in the same bounds. (A slot is
/// 40 bytes where a bare `TextFrame` took 32: the push does the same work.)
#[derive(Debug)]
enum Queued {
    Text(TextFrame),
    Binary(Bytes),
}

impl Queued {
    #[inline]
    fn len(&self) -> usize {
        match self {
            Queued::Text(frame) => frame.len(),
            Queued::Binary(bytes) => bytes.len(),
        }
    }

    #[inline]
    fn into_event(self) -> OutboundEvent {
        match self {
            Queued::Text(frame) => OutboundEvent::Frame(frame),
            Queued::Binary(bytes) => OutboundEvent::Binary(bytes),
        }
    }
}

#[derive(Debug)]
struct State {
    frames: VecDeque<Queued>,
    /// Total length of `frames`.
    bytes: usize,
    /// Set once by [`OutboundQueue::close`] or
    /// [`OutboundQueue::close_after_queued`]; the writer reports it first,
    /// unless `close_when_drained`.
    close: Option<CloseReason>,
    /// The close waits for the frames queued before it
    /// ([`OutboundQueue::close_after_queued`]); cleared by an abrupt
    /// [`OutboundQueue::close`], which drops them.
    close_when_drained: bool,
    /// Frames accepted by `push` but dropped by a close, never written.
    discarded_at_close: usize,
    /// Frames the writer has taken so far (see [`OutboundQueue::accepted`]).
    taken: u64,
    /// The receiving side was closed or dropped: pushes fail.
    receiver_closed: bool,
    /// Live handles. At zero the receiver ends once the queue is drained.
    senders: usize,
    /// The writer waiting for the next event, if any.
    waker: Option<Waker>,
    /// The writer is blocked in a write and waits for an abrupt close only
    /// ([`OutboundQueue::poll_abrupt_close`]): pushes leave its waker alone.
    watching_close: bool,
}

impl State {
    /// The writer's waker, for an event it waits for: none while it waits
    /// for an abrupt close only.
    #[inline]
    fn writer_to_wake(&mut self) -> Option<Waker> {
        if self.watching_close {
            None
        } else {
            self.waker.take()
        }
    }
}

#[derive(Debug)]
pub(super) struct OutboundQueue {
    limits: QueueLimits,
    state: Mutex<State>,
    /// Recorded by the manager at registration only when the transport
    /// asked for it (`.0`), taken by the transport for its `hello` frame:
    /// an idle connection keeps no position, and one the transport never
    /// asks about (a bare handle) never allocates one. 16 bytes inline.
    position: Mutex<(bool, Option<Box<StreamPosition>>)>,
}

impl OutboundQueue {
    /// An empty queue with one sender.
    pub(super) fn new(limits: QueueLimits) -> Self {
        OutboundQueue {
            limits,
            state: Mutex::new(State {
                frames: VecDeque::new(),
                bytes: 0,
                close: None,
                close_when_drained: false,
                discarded_at_close: 0,
                taken: 0,
                receiver_closed: false,
                senders: 1,
                waker: None,
                watching_close: false,
            }),
            position: Mutex::new((false, None)),
        }
    }

    pub(super) fn request_position(&self) {
        self.position.lock().0 = true;
    }

    /// Keeps the first position recorded, if one was requested; `false`
    /// when none was, or one is already kept.
    pub(super) fn record_position(&self, position: StreamPosition) -> bool {
        let mut slot = self.position.lock();
        if !slot.0 || slot.1.is_some() {
            return false;
        }
        slot.1 = Some(Box::new(position));
        true
    }

    pub(super) fn position(&self) -> Option<StreamPosition> {
        self.position.lock().1.as_deref().copied()
    }

    /// The recorded position, freed; later records are not kept.
    pub(super) fn take_position(&self) -> Option<StreamPosition> {
        let mut slot = self.position.lock();
        slot.0 = false;
        slot.1.take().map(|position| *position)
    }

    pub(super) fn limits(&self) -> QueueLimits {
        self.limits
    }

    #[inline]
    pub(super) fn push(&self, frame: TextFrame) -> Result<(), SendError> {
        self.push_queued(Queued::Text(frame))
    }

    pub(super) fn push_binary(&self, bytes: Bytes) -> Result<(), SendError> {
        self.push_queued(Queued::Binary(bytes))
    }

    #[inline]
    fn push_queued(&self, frame: Queued) -> Result<(), SendError> {
        let len = frame.len();
        let max = self.limits.max_bytes;
        let waker = {
            let mut state = self.state.lock();
            if state.close.is_some() || state.receiver_closed {
                return Err(SendError::Closed);
            }
            if len > max {
                return Err(SendError::TooLarge { len, max });
            }
            // `state.bytes <= max` always holds, so the subtraction cannot wrap.
            if state.frames.len() >= self.limits.max_messages || len > max - state.bytes {
                return Err(SendError::Full);
            }
            let queued = state.frames.len();
            if queued == state.frames.capacity()
                && (IDLE_CAPACITY..BURST_CAPACITY).contains(&queued)
            {
                // `queued < max_messages` (checked above), so this reserves at least one slot.
                let burst = BURST_CAPACITY.min(self.limits.max_messages);
                state.frames.reserve_exact(burst - queued);
            }
            state.frames.push_back(frame);
            state.bytes += len;
            state.writer_to_wake()
        };
        // Wake outside the lock: the writer's first act is to take it.
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Records the close reason, drops the queued frames (counted in
    /// `discarded_at_close`) and wakes the writer. `false` if the queue was
    /// already closed; a close still waiting for its queued frames
    /// ([`close_after_queued`](Self::close_after_queued)) becomes abrupt all
    /// the same, with its own reason.
    pub(super) fn close(&self, reason: CloseReason) -> bool {
        let (closed_now, dropped, waker) = {
            let mut state = self.state.lock();
            let closed_now = state.close.is_none();
            if !closed_now && !state.close_when_drained {
                return false;
            }
            if closed_now {
                state.close = Some(reason);
            }
            state.close_when_drained = false;
            state.bytes = 0;
            state.discarded_at_close += state.frames.len();
            (closed_now, mem::take(&mut state.frames), state.waker.take())
        };
        drop(dropped);
        if let Some(waker) = waker {
            waker.wake();
        }
        closed_now
    }

    /// Records the close reason to be reported once the frames already
    /// queued are taken; refuses new frames from now on, and wakes the
    /// writer. `false` if the queue was already closed.
    pub(super) fn close_after_queued(&self, reason: CloseReason) -> bool {
        let waker = {
            let mut state = self.state.lock();
            if state.close.is_some() {
                return false;
            }
            state.close = Some(reason);
            state.close_when_drained = !state.frames.is_empty();
            state.writer_to_wake()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    /// Takes up to `limit` (at least 1) events for the writer, in order,
    /// handing each to `take`, and returns how many: the close reason alone
    /// (it goes before any queued frame, unless the close was asked for
    /// after them), or queued frames, or 0 once the
    /// queue is drained and every handle or the receiving side is gone.
    /// Registers `cx`'s waker when there is nothing yet (without `cx`, a
    /// non-blocking try: the waker registered before stays). Cancel-safe: a
    /// `Pending` poll changes nothing but the waker.
    ///
    /// `burst_drained_at` is the receiver's record of when it last drained a
    /// burst's buffer (coarse clock ticks, 0 for never): kept by the receiver
    /// rather than in the shared state, whose size every push pays for.
    pub(super) fn poll_take(
        &self,
        cx: Option<&mut Context<'_>>,
        limit: usize,
        burst_drained_at: &mut u64,
        mut take: impl FnMut(OutboundEvent),
    ) -> Poll<usize> {
        let mut state = self.state.lock();
        let State {
            frames,
            bytes,
            close,
            close_when_drained,
            taken,
            receiver_closed,
            senders,
            waker,
            watching_close,
            ..
        } = &mut *state;
        if cx.is_some() {
            // The writer is back to waiting for events.
            *watching_close = false;
        }
        // A close goes first, unless it waits for the queued frames.
        if let Some(reason) = close
            && (!*close_when_drained || frames.is_empty())
        {
            take(OutboundEvent::Close(reason.clone()));
            return Poll::Ready(1);
        }
        if !frames.is_empty() {
            let n = limit.clamp(1, frames.len());
            *taken += n as u64;
            for frame in frames.drain(..n) {
                *bytes -= frame.len();
                take(frame.into_event());
            }
            if frames.is_empty() && frames.capacity() > IDLE_CAPACITY {
                let now = coarsetime::Instant::now_without_cache_update().as_ticks();
                let back_to_back = *burst_drained_at != 0
                    && coarsetime::Duration::from_ticks(now.saturating_sub(*burst_drained_at))
                        < KEEP_BURST_BUFFER;
                *burst_drained_at = now;
                if !back_to_back || frames.capacity() > BURST_CAPACITY {
                    // Freed whole rather than shrunk in place: a shrinking
                    // `realloc` always takes the allocator's arena lock, a
                    // `free` of a small block usually only the thread's
                    // cache. The next push allocates `IDLE_CAPACITY` slots.
                    *frames = VecDeque::new();
                }
            }
            return Poll::Ready(n);
        }
        if *senders == 0 || *receiver_closed {
            return Poll::Ready(0);
        }
        if let Some(cx) = cx {
            match waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
        }
        Poll::Pending
    }

    /// Gives back a burst's buffer kept by a drained queue (see
    /// [`KEEP_BURST_BUFFER`]): the writer calls it at every ping, so a
    /// socket that has gone quiet costs its idle size again within one ping
    /// interval. Nothing happens while frames are queued.
    pub(super) fn release_idle_buffer(&self) -> bool {
        let released = {
            let mut state = self.state.lock();
            if !state.frames.is_empty() || state.frames.capacity() <= IDLE_CAPACITY {
                return false;
            }
            mem::take(&mut state.frames)
        };
        drop(released);
        true
    }

    /// Slots the queue's buffer holds (for tests of its memory).
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.state.lock().frames.capacity()
    }

    /// The receiving side stops accepting frames; those already queued can
    /// still be received.
    pub(super) fn close_receiver(&self) {
        self.state.lock().receiver_closed = true;
    }

    /// The receiving side is gone: nothing queued will ever be read.
    pub(super) fn drop_receiver(&self) {
        let dropped = {
            let mut state = self.state.lock();
            state.receiver_closed = true;
            state.bytes = 0;
            state.waker = None;
            mem::take(&mut state.frames)
        };
        drop(dropped);
    }

    pub(super) fn add_sender(&self) {
        self.state.lock().senders += 1;
    }

    /// One handle is gone; the last one wakes the writer so it can end.
    pub(super) fn drop_sender(&self) {
        let waker = {
            let mut state = self.state.lock();
            state.senders = state.senders.saturating_sub(1);
            if state.senders > 0 {
                return;
            }
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Reads the lock word without taking it, so that its cache line is
    /// on its way before [`push`](Self::push) needs it (see
    /// [`WebSocketHandle::prefetch`](super::WebSocketHandle::prefetch)).
    #[inline]
    pub(super) fn prefetch(&self) {
        std::hint::black_box(self.state.is_locked());
    }

    /// Closed by [`close`](Self::close), or the receiving side is gone.
    pub(super) fn is_closed(&self) -> bool {
        let state = self.state.lock();
        state.close.is_some() || state.receiver_closed
    }

    pub(super) fn close_reason(&self) -> Option<CloseReason> {
        self.state.lock().close.clone()
    }

    /// Ready with the close reason once the queue is closed abruptly
    /// ([`close`](Self::close)); until then `cx` is woken by that close only,
    /// not by pushes: the writer waits here while a write cannot progress,
    /// so that a close wins over it at once (it used to look every 20 ms).
    #[cfg_attr(not(feature = "transport"), allow(dead_code))]
    pub(super) fn poll_abrupt_close(&self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        let mut state = self.state.lock();
        if !state.close_when_drained
            && let Some(reason) = &state.close
        {
            let reason = reason.clone();
            state.watching_close = false;
            return Poll::Ready(reason);
        }
        state.watching_close = true;
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Frames accepted by a push and not dropped since: taken by the
    /// writer so far, plus those waiting. Grows by one per push.
    #[cfg_attr(not(feature = "transport"), allow(dead_code))]
    pub(super) fn accepted(&self) -> u64 {
        let state = self.state.lock();
        state.taken + state.frames.len() as u64
    }

    /// Frames a close dropped without their being written.
    pub(super) fn discarded_at_close(&self) -> usize {
        self.state.lock().discarded_at_close
    }

    /// Frames waiting.
    pub(super) fn depth(&self) -> usize {
        self.state.lock().frames.len()
    }

    /// Bytes waiting.
    pub(super) fn bytes(&self) -> usize {
        self.state.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pushes `n` frames, then drains them as a receiver does, with its
    /// record of when it last drained a burst.
    fn burst(queue: &OutboundQueue, n: usize, drained: &mut u64) {
        for _ in 0..n {
            queue.push(TextFrame::from_string("x".into())).unwrap();
        }
        let mut cx = Context::from_waker(Waker::noop());
        while let Poll::Ready(1..) = queue.poll_take(Some(&mut cx), 7, drained, drop) {}
        assert_eq!(queue.bytes(), 0);
    }

    #[test]
    fn a_drained_queue_gives_back_a_bursts_buffer() {
        let queue = OutboundQueue::new(QueueLimits::new(1024, 1 << 20));
        for _ in 0..1000 {
            queue.push(TextFrame::from_string("x".into())).unwrap();
        }
        assert!(queue.capacity() >= 1000);
        let mut cx = Context::from_waker(Waker::noop());
        let mut drained = 0;
        while let Poll::Ready(1..) = queue.poll_take(Some(&mut cx), 7, &mut drained, drop) {}
        assert!(queue.capacity() <= IDLE_CAPACITY);
        assert_eq!(queue.bytes(), 0);
    }

    #[test]
    fn back_to_back_bursts_keep_their_buffer_until_the_writer_releases_it() {
        let queue = OutboundQueue::new(QueueLimits::new(1024, 1 << 20));
        let mut drained = 0;
        burst(&queue, 10, &mut drained);
        assert!(
            queue.capacity() <= IDLE_CAPACITY,
            "an isolated burst's buffer is freed at its drain"
        );
        burst(&queue, 10, &mut drained);
        assert_eq!(
            queue.capacity(),
            BURST_CAPACITY,
            "a burst right after another keeps the buffer for the next"
        );
        queue.push(TextFrame::from_string("x".into())).unwrap();
        assert!(!queue.release_idle_buffer());
        assert_eq!(
            queue.capacity(),
            BURST_CAPACITY,
            "nothing is released while frames wait"
        );
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(
            queue.poll_take(Some(&mut cx), 7, &mut drained, drop),
            Poll::Ready(1)
        );
        assert!(queue.release_idle_buffer());
        assert!(queue.capacity() <= IDLE_CAPACITY);

        // A buffer larger than a burst's is never kept.
        for _ in 0..2 {
            burst(&queue, 100, &mut drained);
            assert!(queue.capacity() <= IDLE_CAPACITY);
        }
    }

    #[test]
    fn a_burst_grows_the_queue_straight_past_its_idle_slots() {
        let capacity = |queue: &OutboundQueue| queue.state.lock().frames.capacity();
        let push = |queue: &OutboundQueue, n: usize| {
            (0..n).try_for_each(|_| queue.push(TextFrame::from_string("x".into())))
        };
        let queue = OutboundQueue::new(QueueLimits::new(1024, 1 << 20));
        push(&queue, IDLE_CAPACITY).unwrap();
        assert_eq!(
            capacity(&queue),
            IDLE_CAPACITY,
            "a trickle keeps the idle slots"
        );
        push(&queue, 1).unwrap();
        assert_eq!(capacity(&queue), BURST_CAPACITY);
        push(&queue, BURST_CAPACITY - IDLE_CAPACITY - 1).unwrap();
        assert_eq!(
            capacity(&queue),
            BURST_CAPACITY,
            "no reallocation up to the burst size"
        );
        push(&queue, 1).unwrap();
        assert!(
            capacity(&queue) > BURST_CAPACITY,
            "then it doubles as usual"
        );

        // A bound below the burst size is not exceeded.
        let small = OutboundQueue::new(QueueLimits::new(6, 1 << 20));
        push(&small, 6).unwrap();
        assert_eq!(capacity(&small), 6);
        assert_eq!(push(&small, 1), Err(SendError::Full));
    }
}
