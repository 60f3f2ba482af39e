//! The sending and receiving ends of one socket's outbound queue:
//! [`WebSocketHandle`] for the manager, [`OutboundReceiver`] for the
//! transport's writer, and what travels between them.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;

use super::SocketId;
use super::frame::{OutboundEvent, TextFrame};
use super::limits::{QueueLimits, SendError};
use super::queue::OutboundQueue;
use crate::close::CloseReason;
use crate::offset::StreamPosition;

/// The manager's handle on one socket.
///
/// Created with [`WebSocketHandle::channel`], together with the
/// [`OutboundReceiver`] the transport's writer drains. Clones share the same
/// socket and identity; equality and hashing use the [`SocketId`].
///
/// ```
/// use websocket_manager::{WebSocketHandle, CloseReason, socket::{QueueLimits, SendError, TextFrame}};
/// let (socket, mut receiver) = WebSocketHandle::channel(QueueLimits::new(1, 1024));
/// socket.try_send(TextFrame::from_string("one".into()))?;
/// assert_eq!(socket.try_send(TextFrame::from_string("two".into())), Err(SendError::Full));
/// socket.close(CloseReason::normal());
/// assert!(socket.is_closed());
/// assert_eq!(socket.try_send(TextFrame::from_string("three".into())), Err(SendError::Closed));
/// # Ok::<(), SendError>(())
/// ```
pub struct WebSocketHandle {
    id: SocketId,
    queue: Arc<OutboundQueue>,
}

impl WebSocketHandle {
    /// Creates a handle and the receiving end of its bounded queue.
    pub fn channel(limits: QueueLimits) -> (WebSocketHandle, OutboundReceiver) {
        let limits = QueueLimits::new(limits.max_messages, limits.max_bytes);
        let id = SocketId::next();
        let queue = Arc::new(OutboundQueue::new(limits));
        (
            WebSocketHandle {
                id,
                queue: Arc::clone(&queue),
            },
            OutboundReceiver {
                id,
                queue,
                finished: false,
                burst_drained_at: 0,
            },
        )
    }

    /// The socket's stable identity.
    pub fn id(&self) -> SocketId {
        self.id
    }

    /// The queue's bounds.
    pub fn limits(&self) -> QueueLimits {
        self.queue.limits()
    }

    /// Queues a frame without waiting.
    ///
    /// # Errors
    ///
    /// [`SendError::Full`] when the queue is at its message or byte bound,
    /// [`SendError::Closed`] when the socket is closed,
    /// [`SendError::TooLarge`] when the frame alone exceeds the byte bound.
    pub fn try_send(&self, frame: TextFrame) -> Result<(), SendError> {
        self.queue.push(frame)
    }

    /// Queues a binary message without waiting (audio, images...), in
    /// order with the text frames and within the same message and byte
    /// bounds. The writer sends it as a WebSocket binary message.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use websocket_manager::{WebSocketHandle, socket::{OutboundEvent, QueueLimits, TextFrame}};
    /// let (socket, mut receiver) = WebSocketHandle::channel(QueueLimits::new(8, 1024));
    /// socket.try_send(TextFrame::from_string("header".into()))?;
    /// socket.send_binary(Bytes::from_static(&[0, 1, 2]))?;
    /// assert_eq!(socket.queued_bytes(), 9);
    /// let mut batch = Vec::new();
    /// receiver.try_recv_many(&mut batch, 8);
    /// assert_eq!(batch[1], OutboundEvent::Binary(Bytes::from_static(&[0, 1, 2])));
    /// # Ok::<(), websocket_manager::socket::SendError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`try_send`](Self::try_send).
    pub fn send_binary(&self, bytes: Bytes) -> Result<(), SendError> {
        self.queue.push_binary(bytes)
    }

    /// Starts fetching the queue's lock into the cache, without taking it.
    ///
    /// Why: a fan-out pushes into many sockets' queues, each on a cache line
    /// of its own that is rarely in cache, and a push takes the queue's lock
    /// with a locked instruction, which waits for every earlier load: pushed
    /// one after the other, the misses follow one another. Touching every
    /// queue first (a plain load each) lets the CPU fetch them all at once.
    #[inline]
    pub(crate) fn prefetch(&self) {
        self.queue.prefetch();
    }

    /// Closes the socket: the writer stops, sends a close frame with `reason`
    /// and drops whatever was still queued (counted by
    /// [`discarded_at_close`](Self::discarded_at_close)). Returns `true` if
    /// this call closed it, `false` if it was already closed. A close that
    /// was waiting for its queued frames ([`close_after_queued`](Self::close_after_queued))
    /// stops waiting: they are dropped, and the first reason is kept.
    pub fn close(&self, reason: CloseReason) -> bool {
        self.queue.close(reason)
    }

    /// Closes the socket after what it has already accepted: new frames are
    /// refused ([`SendError::Closed`]), the writer writes those queued,
    /// then the close frame with `reason` (RFC 6455 lets data precede a
    /// close). Returns `true` if this call closed it, `false` if it was
    /// already closed.
    ///
    /// ```
    /// use websocket_manager::{CloseReason, WebSocketHandle, socket::{OutboundEvent, QueueLimits, TextFrame}};
    /// let (socket, mut receiver) = WebSocketHandle::channel(QueueLimits::default());
    /// socket.try_send(TextFrame::from_string("last words".into()))?;
    /// assert!(socket.close_after_queued(CloseReason::normal()));
    /// let mut batch = Vec::new();
    /// while receiver.try_recv_many(&mut batch, 8) > 0 {}
    /// assert_eq!(batch, [
    ///     OutboundEvent::Frame(TextFrame::from_string("last words".into())),
    ///     OutboundEvent::Close(CloseReason::normal()),
    /// ]);
    /// assert_eq!(socket.discarded_at_close(), 0);
    /// # Ok::<(), websocket_manager::socket::SendError>(())
    /// ```
    pub fn close_after_queued(&self, reason: CloseReason) -> bool {
        self.queue.close_after_queued(reason)
    }

    /// Frames this socket accepted (`Ok` from a send) that a close then
    /// dropped unwritten.
    pub fn discarded_at_close(&self) -> usize {
        self.queue.discarded_at_close()
    }

    /// Frames accepted so far and not dropped (taken by the writer, or
    /// waiting): the writer has written them all once it has written this
    /// many.
    #[cfg_attr(not(feature = "transport"), allow(dead_code))]
    pub(crate) fn accepted_frames(&self) -> u64 {
        self.queue.accepted()
    }

    /// Ready once the socket is closed abruptly; woken by that close alone
    /// (the writer waits on it while a write cannot progress).
    #[cfg_attr(not(feature = "transport"), allow(dead_code))]
    pub(crate) fn poll_abrupt_close(&self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        self.queue.poll_abrupt_close(cx)
    }

    /// Whether the socket was closed, or its writer has gone away.
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// The reason given to [`close`](Self::close), if it was called.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.queue.close_reason()
    }

    /// Slots of the queue's buffer (tests of its memory).
    #[cfg(test)]
    pub(crate) fn queue_capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// Asks the manager that registers this socket to record its
    /// [`StreamPosition`] (the transport does, before `add_connection`, for
    /// its `hello` frame). Without the request a record is not kept, so a
    /// socket nobody asks about costs nothing.
    pub fn request_stream_position(&self) {
        self.queue.request_position();
    }

    /// Records where this socket's connection stands in its user's stream
    /// of critical events, and the manager's retention: a manager calls it
    /// in `add_connection`, when it replays (see [`StreamPosition`]); the
    /// transport takes it for the `hello` frame. Kept only when
    /// [requested](Self::request_stream_position) and only the first time;
    /// returns whether it was kept.
    ///
    /// ```
    /// use std::time::Duration;
    /// use websocket_manager::{WebSocketHandle, events::StreamPosition, socket::QueueLimits};
    /// let (socket, _outbound) = WebSocketHandle::channel(QueueLimits::default());
    /// let position = StreamPosition::new(None, None, 256, Duration::from_secs(300));
    /// assert!(!socket.record_stream_position(position)); // nobody asked
    /// socket.request_stream_position();
    /// assert!(socket.record_stream_position(position));
    /// assert_eq!(socket.stream_position(), Some(position));
    /// assert_eq!(socket.take_stream_position(), Some(position));
    /// assert_eq!(socket.stream_position(), None); // freed
    /// ```
    pub fn record_stream_position(&self, position: StreamPosition) -> bool {
        self.queue.record_position(position)
    }

    /// What the manager recorded with
    /// [`record_stream_position`](Self::record_stream_position), if anything.
    pub fn stream_position(&self) -> Option<StreamPosition> {
        self.queue.position()
    }

    /// The recorded position, removed (its memory freed): the transport
    /// reads it once, for the `hello` frame.
    pub fn take_stream_position(&self) -> Option<StreamPosition> {
        self.queue.take_position()
    }

    /// Frames waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.queue.depth()
    }

    /// Bytes waiting in the queue.
    pub fn queued_bytes(&self) -> usize {
        self.queue.bytes()
    }
}

impl Clone for WebSocketHandle {
    fn clone(&self) -> Self {
        self.queue.add_sender();
        WebSocketHandle {
            id: self.id,
            queue: Arc::clone(&self.queue),
        }
    }
}

impl Drop for WebSocketHandle {
    fn drop(&mut self) {
        self.queue.drop_sender();
    }
}

impl PartialEq for WebSocketHandle {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}

impl Eq for WebSocketHandle {}

impl std::hash::Hash for WebSocketHandle {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id().hash(state);
    }
}

impl fmt::Debug for WebSocketHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketHandle")
            .field("id", &self.id())
            .field("queue_depth", &self.queue_depth())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// The receiving end of a [`WebSocketHandle`]'s queue, drained by the
/// transport's writer task.
///
/// ```
/// use websocket_manager::{WebSocketHandle, CloseReason, socket::{OutboundEvent, QueueLimits, TextFrame}};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let (socket, mut receiver) = WebSocketHandle::channel(QueueLimits::default());
/// socket.try_send(TextFrame::from_string("hi".into())).unwrap();
/// assert!(matches!(receiver.recv().await, Some(OutboundEvent::Frame(f)) if f.as_str() == "hi"));
/// socket.close(CloseReason::going_away());
/// assert_eq!(receiver.recv().await, Some(OutboundEvent::Close(CloseReason::going_away())));
/// assert_eq!(receiver.recv().await, None);
/// # });
/// ```
pub struct OutboundReceiver {
    id: SocketId,
    queue: Arc<OutboundQueue>,
    finished: bool,
    /// When this receiver last drained a burst's buffer (coarse clock
    /// ticks, 0 for never or since the last release): see
    /// [`release_idle_buffer`](Self::release_idle_buffer).
    burst_drained_at: u64,
}

impl OutboundReceiver {
    /// The identity of the socket this queue belongs to.
    pub fn id(&self) -> SocketId {
        self.id
    }

    /// Waits for the next frame or the close. Returns `None` after the close
    /// was delivered, or when every handle was dropped without a close.
    ///
    /// Cancel-safe: dropping the future before it completes loses nothing,
    /// so it can be used in `tokio::select!`.
    pub async fn recv(&mut self) -> Option<OutboundEvent> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next frame or the close; see [`recv`](Self::recv).
    /// For writers written as hand-made futures or streams.
    ///
    /// ```
    /// use std::task::{Context, Poll, Waker};
    /// use websocket_manager::{WebSocketHandle, socket::{OutboundEvent, QueueLimits, TextFrame}};
    /// let (socket, mut receiver) = WebSocketHandle::channel(QueueLimits::default());
    /// let mut cx = Context::from_waker(Waker::noop());
    /// assert!(receiver.poll_recv(&mut cx).is_pending());
    /// socket.try_send(TextFrame::from_string("hi".into())).unwrap();
    /// assert!(matches!(receiver.poll_recv(&mut cx), Poll::Ready(Some(OutboundEvent::Frame(_)))));
    /// ```
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<OutboundEvent>> {
        let mut event = None;
        std::task::ready!(self.poll_take(Some(cx), 1, |e| event = Some(e)));
        Poll::Ready(event)
    }

    /// Waits like [`recv`](Self::recv), then takes up to `limit` events at
    /// once (at least one), appending them to `buffer`; returns how many.
    /// `0` means the queue has ended, like `recv` returning `None`.
    ///
    /// A writer that flushes once per batch takes the whole batch with one
    /// lock of the queue. A close always comes alone, after the frames it
    /// waits for (see [`OutboundEvent::Close`]).
    ///
    /// Cancel-safe, like [`recv`](Self::recv).
    ///
    /// ```
    /// use websocket_manager::{WebSocketHandle, socket::{OutboundEvent, QueueLimits, TextFrame}};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let (socket, mut receiver) = WebSocketHandle::channel(QueueLimits::default());
    /// for text in ["a", "b", "c"] {
    ///     socket.try_send(TextFrame::from_string(text.into())).unwrap();
    /// }
    /// let mut batch = Vec::new();
    /// assert_eq!(receiver.recv_many(&mut batch, 32).await, 3);
    /// assert_eq!(batch[2], OutboundEvent::Frame(TextFrame::from_string("c".into())));
    /// drop(socket);
    /// assert_eq!(receiver.recv_many(&mut batch, 32).await, 0);
    /// # });
    /// ```
    pub async fn recv_many(&mut self, buffer: &mut Vec<OutboundEvent>, limit: usize) -> usize {
        std::future::poll_fn(|cx| self.poll_take(Some(cx), limit, |e| buffer.push(e))).await
    }

    /// Takes up to `limit` events that are queued right now, like
    /// [`recv_many`](Self::recv_many) but without waiting: `0` when nothing
    /// is queued (or the queue has ended; the next `recv_many` tells which).
    ///
    /// A writer that fed a batch to its socket takes what arrived meanwhile
    /// before it flushes, so a burst goes out in as few writes as possible.
    ///
    /// ```
    /// use websocket_manager::{WebSocketHandle, socket::{OutboundEvent, QueueLimits, TextFrame}};
    /// let (socket, mut receiver) = WebSocketHandle::channel(QueueLimits::default());
    /// let mut batch = Vec::new();
    /// assert_eq!(receiver.try_recv_many(&mut batch, 32), 0);
    /// socket.try_send(TextFrame::from_string("a".into())).unwrap();
    /// assert_eq!(receiver.try_recv_many(&mut batch, 32), 1);
    /// assert_eq!(batch[0], OutboundEvent::Frame(TextFrame::from_string("a".into())));
    /// ```
    pub fn try_recv_many(&mut self, buffer: &mut Vec<OutboundEvent>, limit: usize) -> usize {
        match self.poll_take(None, limit, |e| buffer.push(e)) {
            Poll::Ready(n) => n,
            Poll::Pending => 0,
        }
    }

    /// Gives back the buffer a burst left behind, when nothing is queued.
    ///
    /// A drained queue frees a burst's buffer at once, unless it drained
    /// another burst less than a second before: a socket receiving bursts
    /// back to back keeps its buffer rather than allocate it again for each
    /// (on the sender's thread, to be freed on the writer's). A writer of
    /// your own calls this when its socket has been quiet for a while, as
    /// the transport's writer does at every ping, so an idle socket costs
    /// its idle size again.
    ///
    /// ```
    /// use websocket_manager::{WebSocketHandle, socket::{QueueLimits, TextFrame}};
    /// let (socket, mut receiver) = WebSocketHandle::channel(QueueLimits::default());
    /// let mut batch = Vec::new();
    /// for _burst in 0..2 {
    ///     for _ in 0..20 {
    ///         socket.try_send(TextFrame::from_string("tick".into())).unwrap();
    ///     }
    ///     while receiver.try_recv_many(&mut batch, 32) > 0 {}
    /// }
    /// // Later, at the writer's next heartbeat:
    /// receiver.release_idle_buffer();
    /// assert_eq!(socket.queue_depth(), 0);
    /// ```
    pub fn release_idle_buffer(&mut self) {
        if self.queue.release_idle_buffer() {
            // The next burst counts as an isolated one again.
            self.burst_drained_at = 0;
        }
    }

    fn poll_take(
        &mut self,
        cx: Option<&mut Context<'_>>,
        limit: usize,
        mut take: impl FnMut(OutboundEvent),
    ) -> Poll<usize> {
        if self.finished {
            return Poll::Ready(0);
        }
        let mut ended = false;
        let n = std::task::ready!(self.queue.poll_take(
            cx,
            limit,
            &mut self.burst_drained_at,
            |event| {
                ended = matches!(event, OutboundEvent::Close(_));
                take(event);
            }
        ));
        if n == 0 || ended {
            self.finished = true;
            self.queue.close_receiver();
        }
        Poll::Ready(n)
    }

    /// Closes the queue from the writer's side (the socket died): every
    /// handle then reports [`is_closed`](WebSocketHandle::is_closed).
    pub fn close(&mut self) {
        self.queue.close_receiver();
    }
}

impl Drop for OutboundReceiver {
    fn drop(&mut self) {
        self.queue.drop_receiver();
    }
}

impl fmt::Debug for OutboundReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundReceiver")
            .field("id", &self.id)
            .field("finished", &self.finished)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> TextFrame {
        TextFrame::from_string(text.to_owned())
    }

    fn abrupt_close(socket: &WebSocketHandle) -> Option<CloseReason> {
        match socket.poll_abrupt_close(&mut Context::from_waker(std::task::Waker::noop())) {
            Poll::Ready(reason) => Some(reason),
            Poll::Pending => None,
        }
    }

    /// A waker that records whether it was woken.
    struct Flag(std::sync::atomic::AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl Flag {
        fn waker() -> (Arc<Flag>, std::task::Waker) {
            let flag = Arc::new(Flag(std::sync::atomic::AtomicBool::new(false)));
            let waker = std::task::Waker::from(Arc::clone(&flag));
            (flag, waker)
        }

        fn woken(&self) -> bool {
            self.0.swap(false, std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[test]
    fn a_writer_stalled_in_a_write_is_woken_by_an_abrupt_close_and_not_by_pushes() {
        let (socket, _receiver) = WebSocketHandle::channel(QueueLimits::default());
        let (flag, waker) = Flag::waker();
        let mut cx = Context::from_waker(&waker);
        assert!(socket.poll_abrupt_close(&mut cx).is_pending());
        socket.try_send(frame("a")).unwrap();
        assert!(!flag.woken(), "a push woke a writer that waits for a close");
        assert!(socket.close_after_queued(CloseReason::normal()));
        assert!(
            !flag.woken(),
            "a close that waits for the queue is not abrupt"
        );
        assert!(socket.poll_abrupt_close(&mut cx).is_pending());
        assert!(!socket.close(CloseReason::going_away()));
        assert!(flag.woken(), "the abrupt close did not wake the writer");
        assert_eq!(
            socket.poll_abrupt_close(&mut cx),
            Poll::Ready(CloseReason::normal())
        );
        // Back to waiting for events, pushes wake the writer again.
        let (socket, mut receiver) = WebSocketHandle::channel(QueueLimits::default());
        assert!(socket.poll_abrupt_close(&mut cx).is_pending());
        assert!(receiver.poll_recv(&mut cx).is_pending());
        socket.try_send(frame("b")).unwrap();
        assert!(
            flag.woken(),
            "a push did not wake the writer waiting for events"
        );
    }

    #[test]
    fn a_try_leaves_the_waiting_writers_waker_in_place() {
        let (socket, mut receiver) = WebSocketHandle::channel(QueueLimits::default());
        let (flag, waker) = Flag::waker();
        assert!(
            receiver
                .poll_recv(&mut Context::from_waker(&waker))
                .is_pending()
        );
        let mut batch = Vec::new();
        assert_eq!(receiver.try_recv_many(&mut batch, 8), 0);
        socket.try_send(frame("a")).unwrap();
        assert!(flag.woken(), "the writer was not woken");
        assert_eq!(receiver.try_recv_many(&mut batch, 8), 1);
    }

    #[test]
    fn byte_bound_is_enforced_and_released_on_receive() {
        let (socket, mut receiver) = WebSocketHandle::channel(QueueLimits::new(10, 8));
        socket.try_send(frame("12345")).unwrap();
        assert_eq!(socket.try_send(frame("1234")), Err(SendError::Full));
        assert_eq!(
            socket.try_send(frame("123456789")),
            Err(SendError::TooLarge { len: 9, max: 8 })
        );
        assert_eq!(socket.queued_bytes(), 5);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(matches!(
                receiver.recv().await,
                Some(OutboundEvent::Frame(_))
            ));
        });
        assert_eq!(socket.queued_bytes(), 0);
        socket.try_send(frame("1234")).unwrap();
        assert_eq!(socket.queue_depth(), 1);
    }

    #[test]
    fn close_wins_over_queued_frames_and_is_reported_once() {
        let (socket, mut receiver) = WebSocketHandle::channel(QueueLimits::new(4, 1024));
        socket.try_send(frame("a")).unwrap();
        assert!(socket.close(CloseReason::slow_consumer()));
        assert!(!socket.close(CloseReason::normal()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            assert_eq!(
                receiver.recv().await,
                Some(OutboundEvent::Close(CloseReason::slow_consumer()))
            );
            assert_eq!(receiver.recv().await, None);
        });
    }

    #[test]
    fn dropped_receiver_makes_the_handle_closed() {
        let (socket, receiver) = WebSocketHandle::channel(QueueLimits::default());
        assert!(!socket.is_closed());
        drop(receiver);
        assert!(socket.is_closed());
        assert_eq!(socket.try_send(frame("x")), Err(SendError::Closed));
    }

    #[test]
    fn identity_is_stable_across_clones_and_distinct_between_sockets() {
        let (a, _ra) = WebSocketHandle::channel(QueueLimits::default());
        let (b, _rb) = WebSocketHandle::channel(QueueLimits::default());
        assert_eq!(a.clone(), a);
        assert_eq!(a.clone().id(), a.id());
        assert_ne!(a, b);
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap()
    }

    fn try_recv(receiver: &mut OutboundReceiver) -> Option<Option<OutboundEvent>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match receiver.poll_recv(&mut cx) {
            Poll::Ready(event) => Some(event),
            Poll::Pending => None,
        }
    }

    #[test]
    fn the_last_dropped_handle_ends_the_receiver_after_the_queued_frames() {
        let (socket, mut receiver) = WebSocketHandle::channel(QueueLimits::default());
        let clone = socket.clone();
        socket.try_send(frame("a")).unwrap();
        drop(socket);
        assert!(try_recv(&mut receiver).is_some_and(|e| e.is_some()));
        assert_eq!(try_recv(&mut receiver), None, "a clone is still alive");
        clone.try_send(frame("b")).unwrap();
        drop(clone);
        assert_eq!(
            try_recv(&mut receiver),
            Some(Some(OutboundEvent::Frame(frame("b"))))
        );
        assert_eq!(try_recv(&mut receiver), Some(None));
    }

    #[test]
    fn close_drops_queued_frames_and_their_bytes() {
        let (socket, mut receiver) = WebSocketHandle::channel(QueueLimits::new(8, 64));
        socket.try_send(frame("12345")).unwrap();
        socket.try_send(frame("678")).unwrap();
        assert_eq!((socket.queue_depth(), socket.queued_bytes()), (2, 8));
        socket.close(CloseReason::normal());
        assert_eq!((socket.queue_depth(), socket.queued_bytes()), (0, 0));
        assert_eq!(
            try_recv(&mut receiver),
            Some(Some(OutboundEvent::Close(CloseReason::normal())))
        );
        assert_eq!(try_recv(&mut receiver), Some(None));
    }

    #[test]
    fn a_close_after_queued_frames_waits_for_them_until_an_abrupt_close_drops_and_counts_them() {
        let (socket, mut receiver) = WebSocketHandle::channel(QueueLimits::new(8, 64));
        socket.try_send(frame("a")).unwrap();
        socket.send_binary(Bytes::from_static(b"bc")).unwrap();
        socket.try_send(frame("d")).unwrap();
        assert!(socket.close_after_queued(CloseReason::normal()));
        assert!(!socket.close_after_queued(CloseReason::going_away()));
        assert_eq!(socket.try_send(frame("late")), Err(SendError::Closed));
        assert_eq!(abrupt_close(&socket), None, "still waiting");
        assert_eq!(
            try_recv(&mut receiver),
            Some(Some(OutboundEvent::Frame(frame("a"))))
        );
        assert_eq!(socket.accepted_frames(), 3);
        // The wait runs out: the rest is dropped and counted, the first
        // reason stays.
        assert!(!socket.close(CloseReason::policy("late")));
        assert_eq!(abrupt_close(&socket), Some(CloseReason::normal()));
        assert_eq!(socket.discarded_at_close(), 2);
        assert_eq!((socket.queue_depth(), socket.queued_bytes()), (0, 0));
        assert_eq!(
            try_recv(&mut receiver),
            Some(Some(OutboundEvent::Close(CloseReason::normal())))
        );
        assert_eq!(try_recv(&mut receiver), Some(None));
    }

    #[test]
    fn an_abrupt_close_counts_what_it_drops() {
        let (socket, _receiver) = WebSocketHandle::channel(QueueLimits::new(8, 64));
        socket.try_send(frame("a")).unwrap();
        socket.send_binary(Bytes::from_static(b"b")).unwrap();
        assert!(socket.close(CloseReason::slow_consumer()));
        assert_eq!(socket.discarded_at_close(), 2);
    }

    #[test]
    fn a_closed_receiver_refuses_new_frames_but_yields_the_queued_ones() {
        let (socket, mut receiver) = WebSocketHandle::channel(QueueLimits::default());
        socket.try_send(frame("queued")).unwrap();
        receiver.close();
        assert!(socket.is_closed());
        assert_eq!(socket.try_send(frame("late")), Err(SendError::Closed));
        assert_eq!(
            try_recv(&mut receiver),
            Some(Some(OutboundEvent::Frame(frame("queued"))))
        );
        assert_eq!(try_recv(&mut receiver), Some(None));
    }

    #[test]
    fn a_dropped_receiver_frees_what_was_queued() {
        let (socket, receiver) = WebSocketHandle::channel(QueueLimits::default());
        socket.try_send(frame("never read")).unwrap();
        drop(receiver);
        assert_eq!((socket.queue_depth(), socket.queued_bytes()), (0, 0));
    }

    #[test]
    fn recv_many_respects_its_limit_releases_bytes_and_returns_a_close_alone() {
        let (socket, mut receiver) = WebSocketHandle::channel(QueueLimits::default());
        for text in ["a", "bb", "ccc", "dddd"] {
            socket.try_send(frame(text)).unwrap();
        }
        let rt = runtime();
        rt.block_on(async {
            let mut batch = Vec::new();
            assert_eq!(receiver.recv_many(&mut batch, 2).await, 2);
            assert_eq!(
                batch,
                [
                    OutboundEvent::Frame(frame("a")),
                    OutboundEvent::Frame(frame("bb"))
                ]
            );
            assert_eq!((socket.queue_depth(), socket.queued_bytes()), (2, 7));
            socket.close(CloseReason::going_away());
            batch.clear();
            assert_eq!(receiver.recv_many(&mut batch, 32).await, 1);
            assert_eq!(batch, [OutboundEvent::Close(CloseReason::going_away())]);
            assert_eq!(receiver.recv_many(&mut batch, 32).await, 0);
            assert_eq!(batch.len(), 1, "nothing appended after the end");
        });
    }

    #[test]
    fn a_waiting_writer_is_woken_by_a_frame_by_a_close_and_by_the_last_drop() {
        let rt = runtime();
        rt.block_on(async {
            let wait = std::time::Duration::from_secs(5);
            for ending in ["frame", "close", "drop"] {
                let (socket, mut receiver) = WebSocketHandle::channel(QueueLimits::default());
                let writer = tokio::spawn(async move { receiver.recv().await });
                // Let the writer park first, so the wake-up is what is tested.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                match ending {
                    "frame" => socket.try_send(frame("x")).unwrap(),
                    "close" => assert!(socket.close(CloseReason::going_away())),
                    _ => drop(socket),
                }
                let event = tokio::time::timeout(wait, writer)
                    .await
                    .unwrap_or_else(|_| panic!("writer not woken by {ending}"))
                    .unwrap();
                let expected = match ending {
                    "frame" => Some(OutboundEvent::Frame(frame("x"))),
                    "close" => Some(OutboundEvent::Close(CloseReason::going_away())),
                    _ => None,
                };
                assert_eq!(event, expected, "{ending}");
            }
        });
    }

    #[test]
    fn concurrent_senders_lose_nothing_keep_their_order_and_respect_both_bounds() {
        const SENDERS: usize = 4;
        const FRAMES: usize = 5_000;
        let limits = QueueLimits::new(16, 64);
        let rt = runtime();
        rt.block_on(async {
            let (socket, mut receiver) = WebSocketHandle::channel(limits);
            let mut tasks = Vec::new();
            for sender in 0..SENDERS {
                let socket = socket.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0..FRAMES {
                        let text = format!("{sender}:{i}");
                        loop {
                            match socket.try_send(frame(&text)) {
                                Ok(()) => break,
                                Err(SendError::Full) => tokio::task::yield_now().await,
                                Err(other) => panic!("{other}"),
                            }
                        }
                        assert!(socket.queued_bytes() <= limits.max_bytes);
                        assert!(socket.queue_depth() <= limits.max_messages);
                    }
                }));
            }
            drop(socket);
            let mut next = [0usize; SENDERS];
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            while let Some(event) = tokio::time::timeout_at(deadline, receiver.recv())
                .await
                .expect("the writer stalled: a wake-up was lost")
            {
                let OutboundEvent::Frame(f) = event else {
                    panic!("unexpected {event:?}")
                };
                let (sender, i) = f.as_str().split_once(':').unwrap();
                let sender: usize = sender.parse().unwrap();
                assert_eq!(
                    i.parse::<usize>().unwrap(),
                    next[sender],
                    "order of {sender}"
                );
                next[sender] += 1;
            }
            for task in tasks {
                task.await.unwrap();
            }
            assert_eq!(next, [FRAMES; SENDERS]);
        });
    }
}
