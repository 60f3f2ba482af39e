//! Mixed operations on a `UnifiedWebSocketManager` holding 10,000
//! connections, from 1 and 2 threads, against a plain
//! `std::sync::RwLock<HashMap>` registry doing the same work in the same
//! run. Two mixes, each on its own manager and baseline:
//!
//! * **mixed** (2,500 users x 4 tabs): one op is one call, in a fixed
//!   rotation over random targets: `get_connection_id_by_websocket`,
//!   `get_connection`, `get_user_connections`, `is_connection_active`,
//!   `send_to_user` (the text serialized once, then `try_send` into each of
//!   the user's queues);
//! * **read-heavy** (1,000 users x 10 tabs, issue 19): 40 %
//!   `get_connection_id_by_websocket`, 40 % `get_user_connections`, 20 %
//!   `send_to_user`.
//!
//! Both sides return the same values and push into the same kind of
//! `WebSocketHandle` queues; the baseline keeps, like a good hand-written
//! registry, each user's handles next to the user (no second lookup per
//! send) and counts nothing. The manager's `send_to_user` is called through
//! its async contract (a native `async fn`: no box) and polled once.
//!
//! Paired rounds: each round runs one timed batch of the manager and one of
//! the baseline (order alternating), every thread starting at a barrier;
//! queues are drained between batches, outside the timing. Printed: total
//! ops/s of each and the median [p25 p75] of the per-round ratios.
//!
//! ```text
//! cargo bench -p websocket-manager --bench contention
//! ```
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::sync::{Barrier, RwLock};
use std::time::{Duration, Instant};

use websocket_manager::{managers::*, socket::*, *};

/// One mix: its topology and its rotation of ops (0 by socket, 1
/// connection, 2 user's connections, 3 active, 4 send).
struct Mix {
    name: &'static str,
    users: usize,
    tabs: usize,
    rotation: &'static [usize],
}

const MIXES: [Mix; 2] = [
    Mix {
        name: "mixed",
        users: 2_500,
        tabs: 4,
        rotation: &[0, 1, 2, 3, 4],
    },
    Mix {
        name: "read-heavy",
        users: 1_000,
        tabs: 10,
        rotation: &[0, 2, 0, 2, 4],
    },
];
/// Ops per thread per timed batch.
const BATCH: usize = 20_000;
const ROUNDS: usize = 41;

/// `CONTENTION_ROUNDS=3` (for a profiler) runs fewer rounds.
fn rounds() -> usize {
    std::env::var("CONTENTION_ROUNDS")
        .map_or(ROUNDS, |n| n.parse().expect("CONTENTION_ROUNDS: a number"))
}

/// `CONTENTION_THREADS=2` (for a profiler) runs only that thread count.
fn thread_counts() -> Vec<usize> {
    match std::env::var("CONTENTION_THREADS") {
        Ok(n) => vec![n.parse().expect("CONTENTION_THREADS: a number")],
        Err(_) => vec![1, 2],
    }
}

/// What the ops need, shared by both sides: the same sockets' handles and
/// connection ids, by index.
struct Targets {
    rotation: &'static [usize],
    users: Vec<UserId>,
    /// connection index -> (connection id, handle on its socket).
    connections: Vec<(ConnectionId, WebSocketHandle)>,
}

/// The plain registry people write: one `RwLock` over three `HashMap`s.
#[derive(Default)]
struct Baseline {
    state: RwLock<BaselineState>,
}

#[derive(Default)]
struct BaselineState {
    connections: HashMap<ConnectionId, WebSocketConnection>,
    sockets: HashMap<SocketId, ConnectionId>,
    users: HashMap<UserId, Vec<(ConnectionId, WebSocketHandle)>>,
}

impl Baseline {
    fn add(&self, connection: WebSocketConnection) {
        let mut state = self.state.write().unwrap();
        let id = connection.connection_id.clone();
        state.sockets.insert(connection.websocket.id(), id.clone());
        state
            .users
            .entry(connection.user_id.clone())
            .or_default()
            .push((id.clone(), connection.websocket.clone()));
        state.connections.insert(id, connection);
    }
}

/// The baseline's five operations, written as people write them.
impl Registry for Baseline {
    fn by_socket(&self, socket: &WebSocketHandle) -> Option<ConnectionId> {
        self.state
            .read()
            .unwrap()
            .sockets
            .get(&socket.id())
            .cloned()
    }

    fn connection(&self, id: &ConnectionId) -> Option<WebSocketConnection> {
        self.state.read().unwrap().connections.get(id).cloned()
    }

    fn user_connections(&self, user: &UserId) -> HashSet<ConnectionId> {
        let state = self.state.read().unwrap();
        state
            .users
            .get(user)
            .map(|tabs| tabs.iter().map(|(id, _)| id.clone()).collect())
            .unwrap_or_default()
    }

    fn active(&self, user: &UserId) -> bool {
        let state = self.state.read().unwrap();
        state
            .users
            .get(user)
            .is_some_and(|tabs| tabs.iter().any(|(_, socket)| !socket.is_closed()))
    }

    fn send(&self, user: &UserId, message: serde_json::Value) -> usize {
        let frame = TextFrame::from_json(&message).unwrap();
        let state = self.state.read().unwrap();
        state.users.get(user).map_or(0, |tabs| {
            tabs.iter()
                .filter(|(_, socket)| socket.try_send(frame.clone()).is_ok())
                .count()
        })
    }
}

fn message() -> serde_json::Value {
    serde_json::json!({
        "type": "agent_thinking",
        "data": {"run_id": "run-42", "step": 7, "text": "Looking up the three most recent invoices"},
    })
}

/// `CONTENTION_MIX=read-heavy` runs only that mix.
fn only_mix() -> Option<String> {
    std::env::var("CONTENTION_MIX").ok()
}

/// `CONTENTION_OP=4` (for a profiler, or to see one op's ratio) runs only
/// that op of the rotation: 0 by socket, 1 connection, 2 user's connections,
/// 3 active, 4 send.
fn only_op() -> Option<usize> {
    std::env::var("CONTENTION_OP")
        .ok()
        .map(|n| n.parse().expect("CONTENTION_OP: 0 to 4"))
}

/// The five operations, as the manager and the baseline offer them.
trait Registry {
    fn by_socket(&self, socket: &WebSocketHandle) -> Option<ConnectionId>;
    fn connection(&self, id: &ConnectionId) -> Option<WebSocketConnection>;
    fn user_connections(&self, user: &UserId) -> HashSet<ConnectionId>;
    fn active(&self, user: &UserId) -> bool;
    /// Recipients reached.
    fn send(&self, user: &UserId, message: serde_json::Value) -> usize;
}

impl Registry for UnifiedWebSocketManager {
    fn by_socket(&self, socket: &WebSocketHandle) -> Option<ConnectionId> {
        self.get_connection_id_by_websocket(socket)
    }
    fn connection(&self, id: &ConnectionId) -> Option<WebSocketConnection> {
        self.get_connection(id)
    }
    fn user_connections(&self, user: &UserId) -> HashSet<ConnectionId> {
        self.get_user_connections(user)
    }
    fn active(&self, user: &UserId) -> bool {
        self.is_connection_active(user)
    }
    fn send(&self, user: &UserId, message: serde_json::Value) -> usize {
        // Through the async contract, polled once (it never waits).
        common::now(self.send_to_user(user, message))
            .unwrap()
            .recipients()
    }
}

/// The manager's batch, as a named frame for profilers
/// (`valgrind --toggle-collect='contention::manager_ops'`).
#[inline(never)]
fn manager_ops(manager: &UnifiedWebSocketManager, targets: &Targets, seed: u64) {
    ops(manager, targets, seed);
}

/// The baseline's batch, as a named frame for profilers.
#[inline(never)]
fn baseline_ops(baseline: &Baseline, targets: &Targets, seed: u64) {
    ops(baseline, targets, seed);
}

/// `BATCH` ops of the rotation, on random targets from `seed`.
#[inline(always)]
fn ops<R: Registry>(registry: &R, targets: &Targets, seed: u64) {
    let mut rng = common::Rng::new(seed);
    let template = message();
    let only = only_op();
    for op in 0..BATCH {
        match only.unwrap_or(targets.rotation[op % targets.rotation.len()]) {
            0 => {
                let (_, socket) = &targets.connections[rng.below(targets.connections.len())];
                black_box(registry.by_socket(socket));
            }
            1 => {
                let (id, _) = &targets.connections[rng.below(targets.connections.len())];
                black_box(registry.connection(id));
            }
            2 => {
                let user = &targets.users[rng.below(targets.users.len())];
                black_box(registry.user_connections(user));
            }
            3 => {
                let user = &targets.users[rng.below(targets.users.len())];
                black_box(registry.active(user));
            }
            _ => {
                let user = &targets.users[rng.below(targets.users.len())];
                black_box(registry.send(user, template.clone()));
            }
        }
    }
}

/// Runs `ops(thread index)` on `threads` threads released together;
/// returns the wall time until the last one is done.
fn timed(threads: usize, ops: &(dyn Fn(u64) + Sync)) -> Duration {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    ops(t as u64);
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for worker in workers {
            worker.join().unwrap();
        }
        start.elapsed()
    })
}

fn main() {
    for mix in &MIXES {
        if only_mix().is_none_or(|name| name == mix.name) {
            run(mix);
        }
    }
}

fn run(mix: &Mix) {
    let (users_n, tabs) = (mix.users, mix.tabs);
    let config = ManagerConfig::default();
    let manager = UnifiedWebSocketManager::new(config.clone());
    let baseline = Baseline::default();
    let users: Vec<UserId> = (0..users_n)
        .map(|i| common::user(&format!("user-{i}")))
        .collect();
    let mut connections = Vec::with_capacity(users_n * tabs);
    let mut manager_queues = Vec::with_capacity(users_n * tabs);
    let mut baseline_queues = Vec::with_capacity(users_n * tabs);
    for user in &users {
        for _ in 0..tabs {
            // The same connection id on both sides; each its own socket.
            let (socket, queue) = WebSocketHandle::channel(config.queue_limits());
            let connection = WebSocketConnection::new(user.clone(), socket.clone());
            let id = connection.connection_id.clone();
            common::now(manager.add_connection(connection)).unwrap();
            manager_queues.push(queue);
            let (twin, queue) = WebSocketHandle::channel(config.queue_limits());
            baseline.add(WebSocketConnection::with_id(id.clone(), user.clone(), twin));
            baseline_queues.push(queue);
            connections.push((id, socket));
        }
    }
    // The baseline looks sockets up by its own handles.
    let baseline_targets = Targets {
        rotation: mix.rotation,
        users: users.clone(),
        connections: {
            let state = baseline.state.read().unwrap();
            connections
                .iter()
                .map(|(id, _)| (id.clone(), state.connections[id].websocket.clone()))
                .collect()
        },
    };
    let manager_targets = Targets {
        rotation: mix.rotation,
        users,
        connections,
    };
    let drain = |queues: &mut Vec<OutboundReceiver>| {
        queues
            .iter_mut()
            .for_each(|q| drop(common::drain_frames(q)))
    };

    println!(
        "contention, {} mix: {} connections ({users_n} users x {tabs}), {BATCH} ops per thread per batch, {} paired rounds",
        mix.name,
        users_n * tabs,
        rounds()
    );
    println!(
        "{:>7}  {:>16}  {:>16}  {:>24}",
        "threads", "manager ops/s", "baseline ops/s", "manager/baseline"
    );
    for threads in thread_counts() {
        let (mut manager_time, mut baseline_time) = (Duration::ZERO, Duration::ZERO);
        let rounds = rounds();
        let mut ratios = Vec::with_capacity(rounds);
        for round in 0..rounds {
            let seed = |t: u64| (round as u64) << 8 | t;
            let run_manager = || {
                timed(threads, &|t| {
                    manager_ops(&manager, &manager_targets, seed(t))
                })
            };
            let run_baseline = || {
                timed(threads, &|t| {
                    baseline_ops(&baseline, &baseline_targets, seed(t))
                })
            };
            let (m, b) = if round % 2 == 0 {
                let m = run_manager();
                (m, run_baseline())
            } else {
                let b = run_baseline();
                (run_manager(), b)
            };
            drain(&mut manager_queues);
            drain(&mut baseline_queues);
            manager_time += m;
            baseline_time += b;
            // ops/s ratio = inverse time ratio
            ratios.push(b.as_secs_f64() / m.as_secs_f64());
        }
        assert_eq!(
            manager.index_sizes().connections,
            users_n * tabs,
            "no connection may be lost"
        );
        ratios.sort_by(f64::total_cmp);
        let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q) as usize];
        let ops = (rounds * BATCH * threads) as f64;
        println!(
            "{threads:>7}  {:>16.0}  {:>16.0}  {:>10.2}x [{:.2} {:.2}]",
            ops / manager_time.as_secs_f64(),
            ops / baseline_time.as_secs_f64(),
            at(0.5),
            at(0.25),
            at(0.75)
        );
    }
}
