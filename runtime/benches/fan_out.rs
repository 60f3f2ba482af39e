//! `send_to_user` to a user with 1, 8 and 64 connections, against a raw
//! baseline in the same run: serialize once with serde_json, then `try_send`
//! the shared bytes into a `Vec` of tokio mpsc senders.
//!
//! A third series, `handles_only`, pushes into the same `WebSocketHandle`s
//! without the manager, to separate the handle's cost from the manager's.
//!
//! Only the sends are timed; queues are drained between batches, outside the
//! timed region, so they never fill.
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use serde_json::json;
use tokio::sync::mpsc;
use websocket_manager::managers::UnifiedWebSocketManager;
use websocket_manager::*;

const BATCH: u64 = 256;

fn message() -> serde_json::Value {
    json!({
        "type": "agent_thinking",
        "data": {"run_id": "run-42", "step": 7, "text": "Looking up the three most recent invoices for this customer"},
    })
}

/// Runs `send` `iters` times in batches, timing only the sends and calling
/// `drain` between batches.
fn timed_batches(
    iters: u64,
    mut send: impl FnMut(serde_json::Value),
    mut drain: impl FnMut(),
) -> Duration {
    let template = message();
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let batch = BATCH.min(iters - done);
        let messages: Vec<_> = (0..batch).map(|_| template.clone()).collect();
        let start = Instant::now();
        for m in messages {
            send(m);
        }
        total += start.elapsed();
        drain();
        done += batch;
    }
    total
}

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("fan_out");
    for connections in [1usize, 8, 64] {
        let config = ManagerConfig::builder()
            .max_connections_per_user(64)
            .build()
            .unwrap();
        let manager = UnifiedWebSocketManager::new(config.clone());
        let alice = common::alice();
        let mut receivers: Vec<OutboundReceiver> = (0..connections)
            .map(|_| {
                let (socket, receiver) = WebSocketHandle::channel(config.queue_limits());
                common::now(
                    manager.add_connection(WebSocketConnection::new(alice.clone(), socket)),
                )
                .unwrap();
                receiver
            })
            .collect();
        group.bench_with_input(
            BenchmarkId::new("manager_send_to_user", connections),
            &connections,
            |b, _| {
                b.iter_custom(|iters| {
                    timed_batches(
                        iters,
                        |m| {
                            black_box(common::now(manager.send_to_user(&alice, m)).unwrap());
                        },
                        || {
                            for r in &mut receivers {
                                common::drain_frames(r);
                            }
                        },
                    )
                });
            },
        );

        // The same sockets without the manager: isolates what the handle's
        // own bookkeeping (close flag, byte bound) costs over raw mpsc.
        let (handles, mut handle_receivers): (Vec<WebSocketHandle>, Vec<OutboundReceiver>) = (0
            ..connections)
            .map(|_| WebSocketHandle::channel(config.queue_limits()))
            .unzip();
        group.bench_with_input(
            BenchmarkId::new("handles_only", connections),
            &connections,
            |b, _| {
                b.iter_custom(|iters| {
                    timed_batches(
                        iters,
                        |m| {
                            let frame = TextFrame::from_json(&m).unwrap();
                            for handle in &handles {
                                black_box(handle.try_send(frame.clone()).is_ok());
                            }
                        },
                        || {
                            for r in &mut handle_receivers {
                                common::drain_frames(r);
                            }
                        },
                    )
                });
            },
        );

        let (senders, mut raw_receivers): (Vec<mpsc::Sender<Bytes>>, Vec<mpsc::Receiver<Bytes>>) =
            (0..connections)
                .map(|_| mpsc::channel(config.queue_capacity()))
                .unzip();
        group.bench_with_input(
            BenchmarkId::new("raw_mpsc_baseline", connections),
            &connections,
            |b, _| {
                b.iter_custom(|iters| {
                    timed_batches(
                        iters,
                        |m| {
                            let bytes = Bytes::from(serde_json::to_vec(&m).unwrap());
                            for sender in &senders {
                                black_box(sender.try_send(bytes.clone()).is_ok());
                            }
                        },
                        || {
                            for r in &mut raw_receivers {
                                while r.try_recv().is_ok() {}
                            }
                        },
                    )
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, fan_out);
criterion_main!(benches);
