//! Socket queues with their writers running, on a two-worker tokio runtime:
//! the case `fan_out` leaves out (there, queues are drained between batches
//! and no writer is parked, so no push has to wake one).
//!
//! * `one_socket/{1,4}`: 1 or 4 producer tasks push 10,000 frames in all
//!   into one socket while its writer task drains it.
//! * `fan_out_live/64`: one producer pushes 500 frames into each of 64
//!   sockets, each drained by its own writer task.
//!
//! Each series runs three times in the same process: through
//! `WebSocketHandle` (frame and byte bound, one lock); through the design it
//! replaced, tokio's `mpsc::channel::<Bytes>` plus a shared byte counter; and
//! through a raw tokio `mpsc::channel::<Bytes>` (frame bound only) as the
//! baseline. Producers that find a queue full yield and retry; writers take
//! up to 32 frames per wake-up (`recv_many`), the same way for all three.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tokio::sync::mpsc;
use websocket_manager::{
    WebSocketHandle,
    socket::{OutboundEvent, QueueLimits, SendError, TextFrame},
};

const FRAMES: usize = 10_000;
const FAN_OUT_SOCKETS: usize = 64;
const FAN_OUT_FRAMES: usize = 500;
/// What a writer takes per wake-up (the transport's writer takes 32).
const BATCH: usize = 32;

const PAYLOAD: &str = r#"{"type":"agent_thinking","data":{"run_id":"run-42","step":7}}"#;

/// The two queues under test, behind one interface.
trait Queue: Sized + Send + 'static {
    type Sender: Clone + Send + Sync + 'static;
    /// What a push clones: built once, outside the timed pushes.
    type Frame: Send + Sync;
    fn frame() -> Self::Frame;
    fn channel(limits: QueueLimits) -> (Self::Sender, Self);
    /// `Err(())` when full.
    fn try_push(sender: &Self::Sender, frame: &Self::Frame) -> Result<(), ()>;
    /// Receives until every sender is gone; returns how many frames came.
    fn drain(self) -> impl Future<Output = usize> + Send;
}

struct Handle(websocket_manager::socket::OutboundReceiver);

impl Queue for Handle {
    type Sender = WebSocketHandle;
    type Frame = TextFrame;
    fn frame() -> TextFrame {
        TextFrame::from_string(PAYLOAD.to_owned())
    }
    fn channel(limits: QueueLimits) -> (WebSocketHandle, Self) {
        let (sender, receiver) = WebSocketHandle::channel(limits);
        (sender, Handle(receiver))
    }
    fn try_push(sender: &WebSocketHandle, frame: &TextFrame) -> Result<(), ()> {
        match sender.try_send(frame.clone()) {
            Ok(()) => Ok(()),
            Err(SendError::Full) => Err(()),
            Err(other) => panic!("{other}"),
        }
    }
    async fn drain(mut self) -> usize {
        let mut n = 0;
        let mut batch = Vec::with_capacity(BATCH);
        while self.0.recv_many(&mut batch, BATCH).await > 0 {
            for event in batch.drain(..) {
                assert!(matches!(event, OutboundEvent::Frame(_)));
                black_box(event);
                n += 1;
            }
        }
        n
    }
}

struct RawMpsc(mpsc::Receiver<Bytes>);

impl Queue for RawMpsc {
    type Sender = mpsc::Sender<Bytes>;
    type Frame = Bytes;
    fn frame() -> Bytes {
        Bytes::from(PAYLOAD.to_owned())
    }
    fn channel(limits: QueueLimits) -> (mpsc::Sender<Bytes>, Self) {
        let (sender, receiver) = mpsc::channel(limits.max_messages);
        (sender, RawMpsc(receiver))
    }
    fn try_push(sender: &mpsc::Sender<Bytes>, frame: &Bytes) -> Result<(), ()> {
        match sender.try_send(frame.clone()) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(()),
            Err(mpsc::error::TrySendError::Closed(_)) => panic!("closed"),
        }
    }
    async fn drain(mut self) -> usize {
        let mut n = 0;
        let mut batch = Vec::with_capacity(BATCH);
        while self.0.recv_many(&mut batch, BATCH).await > 0 {
            n += batch.len();
            black_box(batch.drain(..).count());
        }
        n
    }
}

/// The design `WebSocketHandle` replaced: tokio's channel for the frame
/// bound, plus a shared byte counter for the byte bound.
struct MpscByteCounter {
    receiver: mpsc::Receiver<Bytes>,
    bytes: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct CountingSender {
    sender: mpsc::Sender<Bytes>,
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl Queue for MpscByteCounter {
    type Sender = CountingSender;
    type Frame = Bytes;
    fn frame() -> Bytes {
        Bytes::from(PAYLOAD.to_owned())
    }
    fn channel(limits: QueueLimits) -> (CountingSender, Self) {
        let (sender, receiver) = mpsc::channel(limits.max_messages);
        let bytes = Arc::new(AtomicUsize::new(0));
        let counting = CountingSender {
            sender,
            bytes: Arc::clone(&bytes),
            max_bytes: limits.max_bytes,
        };
        (counting, MpscByteCounter { receiver, bytes })
    }
    fn try_push(sender: &CountingSender, frame: &Bytes) -> Result<(), ()> {
        let len = frame.len();
        if sender.bytes.fetch_add(len, Ordering::AcqRel) + len > sender.max_bytes {
            sender.bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(());
        }
        match sender.sender.try_send(frame.clone()) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                sender.bytes.fetch_sub(len, Ordering::AcqRel);
                Err(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => panic!("closed"),
        }
    }
    async fn drain(mut self) -> usize {
        let mut n = 0;
        let mut batch = Vec::with_capacity(BATCH);
        while self.receiver.recv_many(&mut batch, BATCH).await > 0 {
            n += batch.len();
            for frame in batch.drain(..) {
                self.bytes.fetch_sub(frame.len(), Ordering::AcqRel);
                black_box(frame);
            }
        }
        n
    }
}

async fn push_all<Q: Queue>(senders: &[Q::Sender], frames: usize) {
    let frame = Q::frame();
    for _ in 0..frames {
        for sender in senders {
            while Q::try_push(sender, &frame).is_err() {
                tokio::task::yield_now().await;
            }
        }
    }
}

/// `producers` tasks push `FRAMES` frames in all into one socket.
async fn one_socket<Q: Queue>(producers: usize) {
    let (sender, queue) = Q::channel(QueueLimits::default());
    let writer = tokio::spawn(queue.drain());
    let tasks: Vec<_> = (0..producers)
        .map(|_| {
            let sender = sender.clone();
            tokio::spawn(async move { push_all::<Q>(&[sender], FRAMES / producers).await })
        })
        .collect();
    drop(sender);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(writer.await.unwrap(), FRAMES);
}

/// One producer pushes `FAN_OUT_FRAMES` frames into each of
/// `FAN_OUT_SOCKETS` sockets, each with its own writer.
async fn fan_out_live<Q: Queue>() {
    let (senders, writers): (Vec<_>, Vec<_>) = (0..FAN_OUT_SOCKETS)
        .map(|_| {
            let (sender, queue) = Q::channel(QueueLimits::default());
            (sender, tokio::spawn(queue.drain()))
        })
        .unzip();
    push_all::<Q>(&senders, FAN_OUT_FRAMES).await;
    drop(senders);
    for writer in writers {
        assert_eq!(writer.await.unwrap(), FAN_OUT_FRAMES);
    }
}

fn time<F: Future<Output = ()>>(
    runtime: &tokio::runtime::Runtime,
    iters: u64,
    run: impl Fn() -> F,
) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        runtime.block_on(run());
    }
    start.elapsed()
}

fn socket_queue(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let mut group = c.benchmark_group("socket_queue");
    group.sample_size(20);
    for producers in [1usize, 4] {
        group.bench_with_input(
            BenchmarkId::new("one_socket/handle", producers),
            &producers,
            |b, &p| b.iter_custom(|iters| time(&runtime, iters, || one_socket::<Handle>(p))),
        );
        group.bench_with_input(
            BenchmarkId::new("one_socket/mpsc_byte_counter", producers),
            &producers,
            |b, &p| {
                b.iter_custom(|iters| time(&runtime, iters, || one_socket::<MpscByteCounter>(p)))
            },
        );
        group.bench_with_input(
            BenchmarkId::new("one_socket/raw_mpsc", producers),
            &producers,
            |b, &p| b.iter_custom(|iters| time(&runtime, iters, || one_socket::<RawMpsc>(p))),
        );
    }
    group.bench_function(
        BenchmarkId::new("fan_out_live/handle", FAN_OUT_SOCKETS),
        |b| b.iter_custom(|iters| time(&runtime, iters, fan_out_live::<Handle>)),
    );
    group.bench_function(
        BenchmarkId::new("fan_out_live/mpsc_byte_counter", FAN_OUT_SOCKETS),
        |b| b.iter_custom(|iters| time(&runtime, iters, fan_out_live::<MpscByteCounter>)),
    );
    group.bench_function(
        BenchmarkId::new("fan_out_live/raw_mpsc", FAN_OUT_SOCKETS),
        |b| b.iter_custom(|iters| time(&runtime, iters, fan_out_live::<RawMpsc>)),
    );
    group.finish();
}

criterion_group!(benches, socket_queue);
criterion_main!(benches);
