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
use criterion::{BenchmarkId, Criterion, criterion_group};
use serde_json::json;
use tokio::sync::mpsc;
use websocket_manager::managers::UnifiedWebSocketManager;
use websocket_manager::{managers::*, socket::*, *};

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

/// The three series for one connection count, each over its own sockets:
/// the manager (one user, alice, with `connections` sockets), the same kind of
/// `WebSocketHandle`s without a manager, and raw tokio mpsc senders.
struct Fixture {
    manager: UnifiedWebSocketManager,
    alice: UserId,
    receivers: Vec<OutboundReceiver>,
    handles: Vec<WebSocketHandle>,
    handle_receivers: Vec<OutboundReceiver>,
    senders: Vec<mpsc::Sender<Bytes>>,
    raw_receivers: Vec<mpsc::Receiver<Bytes>>,
}

impl Fixture {
    fn new(connections: usize) -> Self {
        let config = ManagerConfig::builder()
            .max_connections_per_user(64)
            .build()
            .unwrap();
        let manager = UnifiedWebSocketManager::new(config.clone());
        let alice = common::alice();
        let receivers = (0..connections)
            .map(|_| {
                let (socket, receiver) = WebSocketHandle::channel(config.queue_limits());
                common::now(
                    manager.add_connection(WebSocketConnection::new(alice.clone(), socket)),
                )
                .unwrap();
                receiver
            })
            .collect();
        let (handles, handle_receivers) = (0..connections)
            .map(|_| WebSocketHandle::channel(config.queue_limits()))
            .unzip();
        let (senders, raw_receivers) = (0..connections)
            .map(|_| mpsc::channel(config.queue_capacity()))
            .unzip();
        Fixture {
            manager,
            alice,
            receivers,
            handles,
            handle_receivers,
            senders,
            raw_receivers,
        }
    }

    /// `iters` sends through the manager's `send_to_user`.
    fn manager(&mut self, iters: u64) -> Duration {
        let (manager, alice) = (&self.manager, &self.alice);
        let receivers = &mut self.receivers;
        timed_batches(
            iters,
            |m| {
                black_box(common::now(manager.send_to_user(alice, m)).unwrap());
            },
            || {
                receivers
                    .iter_mut()
                    .for_each(|r| drop(common::drain_frames(r)))
            },
        )
    }

    /// `iters` sends straight into the handles: isolates what the socket
    /// queue costs over raw mpsc.
    fn handles_only(&mut self, iters: u64) -> Duration {
        let handles = &self.handles;
        let receivers = &mut self.handle_receivers;
        timed_batches(
            iters,
            |m| {
                let frame = TextFrame::from_json(&m).unwrap();
                for handle in handles {
                    black_box(handle.try_send(frame.clone()).is_ok());
                }
            },
            || {
                receivers
                    .iter_mut()
                    .for_each(|r| drop(common::drain_frames(r)))
            },
        )
    }

    /// The baseline: serialize once, `try_send` the shared bytes.
    fn raw_mpsc(&mut self, iters: u64) -> Duration {
        let senders = &self.senders;
        let receivers = &mut self.raw_receivers;
        timed_batches(
            iters,
            |m| {
                let bytes = Bytes::from(serde_json::to_vec(&m).unwrap());
                for sender in senders {
                    black_box(sender.try_send(bytes.clone()).is_ok());
                }
            },
            || {
                for r in receivers.iter_mut() {
                    while r.try_recv().is_ok() {}
                }
            },
        )
    }
}

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("fan_out");
    for connections in [1usize, 8, 64] {
        let mut fixture = Fixture::new(connections);
        group.bench_function(BenchmarkId::new("manager_send_to_user", connections), |b| {
            b.iter_custom(|iters| fixture.manager(iters))
        });
        group.bench_function(BenchmarkId::new("handles_only", connections), |b| {
            b.iter_custom(|iters| fixture.handles_only(iters))
        });
        group.bench_function(BenchmarkId::new("raw_mpsc_baseline", connections), |b| {
            b.iter_custom(|iters| fixture.raw_mpsc(iters))
        });
    }
    group.finish();
}

/// Paired comparison, robust to a noisy machine: alternate one batch of the
/// manager and one of each baseline, many rounds, and report the median (and
/// quartiles) of the per-round time ratios. Printed after criterion's output.
fn paired_ratios() {
    const ROUNDS: usize = 301;
    println!("\npaired ratios (median [p25 p75] of {ROUNDS} alternating rounds of {BATCH} sends):");
    println!(
        "{:>11}  {:>22}  {:>22}",
        "connections", "manager / raw mpsc", "handles_only / raw"
    );
    for connections in [1usize, 8, 64] {
        let mut fixture = Fixture::new(connections);
        let mut manager_ratios = Vec::with_capacity(ROUNDS);
        let mut handle_ratios = Vec::with_capacity(ROUNDS);
        for round in 0..ROUNDS {
            // Alternate the order so neither side always runs on a warm cache.
            let (m, h, r) = if round % 2 == 0 {
                let m = fixture.manager(BATCH);
                let h = fixture.handles_only(BATCH);
                (m, h, fixture.raw_mpsc(BATCH))
            } else {
                let r = fixture.raw_mpsc(BATCH);
                let h = fixture.handles_only(BATCH);
                (fixture.manager(BATCH), h, r)
            };
            manager_ratios.push(m.as_secs_f64() / r.as_secs_f64());
            handle_ratios.push(h.as_secs_f64() / r.as_secs_f64());
        }
        let quartiles = |ratios: &mut Vec<f64>| {
            ratios.sort_by(f64::total_cmp);
            let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q) as usize];
            format!("{:.2}x [{:.2} {:.2}]", at(0.5), at(0.25), at(0.75))
        };
        println!(
            "{connections:>11}  {:>22}  {:>22}",
            quartiles(&mut manager_ratios),
            quartiles(&mut handle_ratios)
        );
    }
}

criterion_group!(benches, fan_out);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    paired_ratios();
}
