//! `emit_critical_event` with its retained log, against the same manager's
//! `send_to_user` of the same envelope in the same run (what an emit cost
//! before the log, minus the sequence bookkeeping): 1 and 8 sockets, steady
//! state (the log is full, so every emit also evicts the oldest event).
//!
//! Then the memory the log costs, as resident memory (RSS, Linux
//! `/proc/self/statm`, so allocator overhead included) over many events and
//! users: bytes per retained event beyond its serialized frame, and bytes per
//! connected user whose log is empty.
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group};
use serde_json::json;
use websocket_manager::{events::AGENT_THINKING, managers::UnifiedWebSocketManager};
use websocket_manager::{managers::*, socket::*, *};

const BATCH: u64 = 256;

fn data() -> serde_json::Value {
    json!({"run_id": "run-42", "step": 7, "text": "Looking up the three most recent invoices for this customer"})
}

/// The same frame content as an emit, as an ordinary message.
fn envelope() -> serde_json::Value {
    json!({"type": AGENT_THINKING, "data": data(), "timestamp": 1_767_225_600_000u64,
           "critical": true, "stream": 1_767_225_000_000_042u64, "sequence": 7})
}

struct Fixture {
    manager: UnifiedWebSocketManager,
    alice: UserId,
    receivers: Vec<OutboundReceiver>,
}

impl Fixture {
    fn new(connections: usize) -> Self {
        let manager = UnifiedWebSocketManager::default();
        let alice = common::alice();
        let receivers = (0..connections)
            .map(|_| {
                let (socket, receiver) = WebSocketHandle::channel(manager.config().queue_limits());
                common::now(
                    manager.add_connection(WebSocketConnection::new(alice.clone(), socket)),
                )
                .unwrap();
                receiver
            })
            .collect();
        let mut fixture = Fixture {
            manager,
            alice,
            receivers,
        };
        // steady state: the log is full, every emit evicts one
        fixture.emit(ManagerConfig::default().history_capacity() as u64 * 2);
        fixture
    }

    fn drain(&mut self) {
        self.receivers
            .iter_mut()
            .for_each(|r| drop(common::drain_frames(r)));
    }

    fn timed(&mut self, iters: u64, mut one: impl FnMut(&Self)) -> Duration {
        let mut total = Duration::ZERO;
        let mut done = 0;
        while done < iters {
            let batch = BATCH.min(iters - done);
            let start = Instant::now();
            for _ in 0..batch {
                one(self);
            }
            total += start.elapsed();
            self.drain();
            done += batch;
        }
        total
    }

    // Both series clone a prebuilt value inside the timed loop (a caller
    // hands over an owned `Value`); neither builds JSON there.
    fn emit(&mut self, iters: u64) -> Duration {
        let data = data();
        self.timed(iters, |f| {
            let delivery = f
                .manager
                .emit_critical_event(&f.alice, AGENT_THINKING, data.clone());
            black_box(common::now(delivery).unwrap());
        })
    }

    fn send_envelope(&mut self, iters: u64) -> Duration {
        let envelope = envelope();
        self.timed(iters, |f| {
            black_box(common::now(f.manager.send_to_user(&f.alice, envelope.clone())).unwrap());
        })
    }
}

fn critical_emit(c: &mut Criterion) {
    let mut group = c.benchmark_group("critical_emit");
    for connections in [1usize, 8] {
        let mut fixture = Fixture::new(connections);
        group.bench_function(BenchmarkId::new("emit_with_log", connections), |b| {
            b.iter_custom(|iters| fixture.emit(iters))
        });
        group.bench_function(
            BenchmarkId::new("send_to_user_same_envelope", connections),
            |b| b.iter_custom(|iters| fixture.send_envelope(iters)),
        );
    }
    group.finish();
}

/// Alternating batches, median [p25 p75] of the per-round ratios.
fn paired_ratios() {
    const ROUNDS: usize = 201;
    println!("\npaired ratios (median [p25 p75] of {ROUNDS} alternating rounds of {BATCH}):");
    println!(
        "{:>11}  {:>34}",
        "connections", "emit (log) / send_to_user (no log)"
    );
    for connections in [1usize, 8] {
        let mut fixture = Fixture::new(connections);
        let mut ratios: Vec<f64> = (0..ROUNDS)
            .map(|round| {
                let (e, s) = if round % 2 == 0 {
                    let e = fixture.emit(BATCH);
                    (e, fixture.send_envelope(BATCH))
                } else {
                    let s = fixture.send_envelope(BATCH);
                    (fixture.emit(BATCH), s)
                };
                e.as_secs_f64() / s.as_secs_f64()
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q) as usize];
        println!(
            "{connections:>11}  {:>34}",
            format!("{:.2}x [{:.2} {:.2}]", at(0.5), at(0.25), at(0.75))
        );
    }
}

/// Resident set size in bytes (Linux).
fn rss() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0
}

/// Resident bytes per retained event beyond its frame, and per connected
/// user whose log is empty.
fn memory() {
    const USERS: usize = 500;
    const EVENTS: usize = 250; // per user, within the default capacity of 256
    let manager = UnifiedWebSocketManager::default();
    let users: Vec<UserId> = (0..USERS)
        .map(|i| common::user(&format!("offline-{i}")))
        .collect();
    // the first event creates each user's slot; measure the events after it
    for user in &users {
        common::now(manager.emit_critical_event(user, AGENT_THINKING, data())).unwrap();
    }
    let before = rss();
    for _ in 1..EVENTS {
        for user in &users {
            common::now(manager.emit_critical_event(user, AGENT_THINKING, data())).unwrap();
        }
    }
    let events = (USERS * (EVENTS - 1)) as f64;
    let per_event = (rss() - before) / events;
    let health = manager.get_connection_health(&users[0]);
    let frame = health.retained_bytes as f64 / health.retained_critical_events as f64;
    drop(manager);

    const CONNECTED: usize = 20_000;
    let manager = UnifiedWebSocketManager::default();
    let users: Vec<UserId> = (0..CONNECTED)
        .map(|i| common::user(&format!("user-{i}")))
        .collect();
    let (sockets, receivers): (Vec<_>, Vec<_>) = (0..CONNECTED)
        .map(|_| WebSocketHandle::channel(manager.config().queue_limits()))
        .unzip();
    let before = rss();
    for (user, socket) in users.iter().zip(&sockets) {
        common::now(manager.add_connection(WebSocketConnection::new(user.clone(), socket.clone())))
            .unwrap();
    }
    let per_user = (rss() - before) / CONNECTED as f64;
    println!("\nmemory (RSS delta, allocator overhead included):");
    println!(
        "  per retained event: {per_event:.0} B, of which {frame:.0} B is the serialized frame: {:.0} B beyond the payload ({USERS} users x {} events)",
        per_event - frame,
        EVENTS - 1
    );
    println!(
        "  per connected user with an empty log: {per_user:.0} B ({CONNECTED} users; slot, log, indexes and connection record; an empty log allocates nothing)"
    );
    drop(receivers);
}

criterion_group!(benches, critical_emit);

/// `EMIT_ONLY=<sockets>:<count>`: only that many emits, no timing, for an
/// instruction count under `valgrind --tool=callgrind` (deterministic on a
/// loaded machine); subtract a run with count 0 for the setup.
fn emit_only(spec: &str) {
    let (sockets, count) = spec.split_once(':').unwrap();
    let mut fixture = Fixture::new(sockets.parse().unwrap());
    fixture.emit(count.parse().unwrap());
}

fn main() {
    if let Ok(spec) = std::env::var("EMIT_ONLY") {
        return emit_only(&spec);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    paired_ratios();
    memory();
}
