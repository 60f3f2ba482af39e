//! Critical events through the Redis cluster: deliveries/s and latency for
//! a 2-node cluster against 1 node, in the same run, on the same Redis.
//!
//! 1,000 sockets (100 users x 10 tabs; with 2 nodes each user's tabs are
//! split between them) receive critical events published open-loop at a
//! fixed rate to random users, each publish from a node in turn. Latency is
//! from just before `emit_critical_event` to the frame leaving the socket's
//! queue. Every publish must reach all 10 tabs of its user: losses are
//! counted and reported.
//!
//! ```sh
//! cargo bench --bench cluster_fanout            # 1k, 5k and 20k publishes/s, 5 s each
//! CLUSTER_BENCH_SECONDS=2 cargo bench --bench cluster_fanout
//! ```
//!
//! Uses `REDIS_URL`, or starts its own `redis-server`.
//!
//! With `--redis-cluster` (issue 18) it compares instead the same 2 nodes,
//! sockets and publish rates against one `redis-server` of its own and a
//! Redis Cluster of its own (3 masters, no replicas:
//! `RedisClusterGroup::with_replicas(0)`), alternated round by round in the
//! same run, and prints the ratios cluster / single per rate. A lost event
//! fails the bench (exit status 1).
//!
//! ```sh
//! cargo bench --bench cluster_fanout -- --redis-cluster      # 3 rounds
//! CLUSTER_BENCH_ROUNDS=5 cargo bench --bench cluster_fanout -- --redis-cluster
//! ```
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Semaphore;
use websocket_manager::managers::{ClusterConfig, ClusterWebSocketManager};
use websocket_manager::{managers::*, socket::*, *};
use websocket_manager_test_support::bench::cpu_model;
use websocket_manager_test_support::cluster::own_cluster_for;
use websocket_manager_test_support::redis::{own_redis_for, redis_for, unique_prefix};

const USERS: usize = 100;
const TABS: usize = 10;
const IN_FLIGHT: usize = 512;

struct Outcome {
    publishes: u64,
    failed: u64,
    deliveries: u64,
    expected: u64,
    seconds: f64,
    p50_us: u64,
    p99_us: u64,
}

fn micros_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The `"at":N` number in a frame, without parsing the JSON.
fn sent_at(frame: &str) -> Option<u64> {
    let start = frame.find("\"at\":")? + 5;
    let digits: String = frame[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

async fn scenario(url: &str, nodes: usize, rate: u64, seconds: u64) -> Outcome {
    let prefix = unique_prefix(&format!("bench{nodes}n{rate}"));
    let mut managers = Vec::new();
    for n in 0..nodes {
        let config = ManagerConfig::builder()
            .max_connections_per_user(TABS)
            .build()
            .unwrap();
        let cluster = ClusterConfig::builder(url)
            .key_prefix(&prefix)
            .node_id(format!("bench-{n}"))
            .build()
            .unwrap();
        let manager = Arc::new(ClusterWebSocketManager::new(config, cluster).unwrap());
        manager.ready().await.unwrap();
        managers.push(manager);
    }
    let base = Instant::now();
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(1 << 20)));
    let deliveries = Arc::new(AtomicU64::new(0));
    let users: Vec<UserId> = (0..USERS)
        .map(|u| UserId::new(format!("user-{u}")).unwrap())
        .collect();
    let mut readers = Vec::new();
    for (u, user) in users.iter().enumerate() {
        for tab in 0..TABS {
            let manager = &managers[(u + tab) % nodes];
            let (socket, mut outbound) = WebSocketHandle::channel(manager.config().queue_limits());
            manager
                .add_connection(WebSocketConnection::new(user.clone(), socket))
                .await
                .unwrap();
            let latencies = Arc::clone(&latencies);
            let deliveries = Arc::clone(&deliveries);
            readers.push(tokio::spawn(async move {
                let mut local = Vec::new();
                while let Some(OutboundEvent::Frame(frame)) = outbound.recv().await {
                    if let Some(at) = sent_at(frame.as_str()) {
                        local.push(micros_since(base).saturating_sub(at));
                        deliveries.fetch_add(1, Ordering::Relaxed);
                    }
                    if local.len() >= 1024 {
                        latencies.lock().unwrap().append(&mut local);
                    }
                }
                latencies.lock().unwrap().append(&mut local);
            }));
        }
    }
    // Every node must see every other node's tabs before publishing.
    let deadline = Instant::now() + Duration::from_secs(10);
    while managers
        .iter()
        .any(|m| m.get_user_connections(&users[USERS - 1]).len() < TABS)
    {
        assert!(Instant::now() < deadline, "presence did not converge");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let failed = Arc::new(AtomicU64::new(0));
    let total = rate * seconds;
    let started = Instant::now();
    let mut published = 0u64;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    while published < total {
        // Open loop: catch up to the schedule every millisecond.
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while published < due.min(total) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let user = users[(seed % USERS as u64) as usize].clone();
            let manager = Arc::clone(&managers[(published % nodes as u64) as usize]);
            let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
            let failed = Arc::clone(&failed);
            tokio::spawn(async move {
                let at = micros_since(base);
                if manager
                    .emit_critical_event(&user, "tick", json!({"at": at}))
                    .await
                    .is_err()
                {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                drop(permit);
            });
            published += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let _ = permits.acquire_many(IN_FLIGHT as u32).await.unwrap();
    let failed = failed.load(Ordering::Relaxed);
    let expected = (total - failed) * TABS as u64;
    let drain = Instant::now() + Duration::from_secs(5);
    while deliveries.load(Ordering::Relaxed) < expected && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds_taken = started.elapsed().as_secs_f64();
    for manager in &managers {
        manager.shutdown().await;
    }
    for reader in readers {
        let _ = reader.await;
    }
    let mut all = std::mem::take(&mut *latencies.lock().unwrap());
    all.sort_unstable();
    let pick = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Outcome {
        publishes: total,
        failed,
        deliveries: deliveries.load(Ordering::Relaxed),
        expected,
        seconds: seconds_taken,
        p50_us: pick(0.50),
        p99_us: pick(0.99),
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn bench_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn main() {
    if std::env::args().any(|a| a == "--redis-cluster") {
        redis_cluster_against_single();
        return;
    }
    let Some(redis) = redis_for("cluster_fanout bench") else {
        return;
    };
    let seconds = env_number("CLUSTER_BENCH_SECONDS", 5);
    let runtime = bench_runtime();
    println!(
        "{USERS} users x {TABS} tabs = {} sockets, {seconds} s per scenario, critical events to random users",
        USERS * TABS
    );
    println!("nodes  target/s  publishes  failed  deliveries/s  lost  p50 ms  p99 ms");
    for rate in [1_000u64, 5_000, 20_000] {
        let mut rows = Vec::new();
        for nodes in [1usize, 2] {
            let outcome = runtime.block_on(scenario(&redis.url(), nodes, rate, seconds));
            let per_second = outcome.deliveries as f64 / outcome.seconds;
            println!(
                "{nodes:>5}  {rate:>8}  {:>9}  {:>6}  {per_second:>12.0}  {:>4}  {:>6.2}  {:>6.2}",
                outcome.publishes,
                outcome.failed,
                outcome.expected.saturating_sub(outcome.deliveries),
                outcome.p50_us as f64 / 1000.0,
                outcome.p99_us as f64 / 1000.0,
            );
            rows.push((per_second, outcome.p99_us));
        }
        let (one, two) = (rows[0], rows[1]);
        println!(
            "  2 nodes vs 1 at {rate}/s: {:.2}x deliveries/s, p99 {:.2}x",
            two.0 / one.0,
            two.1 as f64 / one.1.max(1) as f64
        );
    }
}

/// The median and the range of `values` (not empty).
fn spread(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

/// `--redis-cluster`: 2 nodes on one `redis-server` against 2 nodes on a
/// 3-master Redis Cluster, rounds alternated (see the module docs).
fn redis_cluster_against_single() {
    let Some(single) = own_redis_for("cluster_fanout bench --redis-cluster") else {
        return;
    };
    // The fewest replicas the group allows: none, three masters only.
    let Some(cluster) = own_cluster_for("cluster_fanout bench --redis-cluster", 0) else {
        return;
    };
    let seconds = env_number("CLUSTER_BENCH_SECONDS", 5);
    let rounds = env_number("CLUSTER_BENCH_ROUNDS", 3).max(1);
    let runtime = bench_runtime();
    let setups = [("single", single.url()), ("cluster", cluster.url())];
    println!("CPU: {}", cpu_model());
    println!(
        "2 nodes, {USERS} users x {TABS} tabs = {} sockets, {seconds} s per scenario, critical events to random users",
        USERS * TABS
    );
    println!(
        "one redis-server against a Redis Cluster of 3 masters (no replicas), {rounds} rounds alternated per rate"
    );
    println!("round  redis    target/s  publishes  failed  deliveries/s  lost  p50 ms  p99 ms");
    let mut lost_total = 0u64;
    let mut summary = Vec::new();
    for rate in [1_000u64, 5_000, 20_000] {
        // Per setup: deliveries/s, p50 ms, p99 ms of every round.
        let mut figures = [
            [Vec::new(), Vec::new(), Vec::new()],
            [Vec::new(), Vec::new(), Vec::new()],
        ];
        let mut ratios = [Vec::new(), Vec::new(), Vec::new()];
        for round in 1..=rounds {
            // Alternate which setup goes first, so neither always follows
            // the other's leftovers.
            let order = if round % 2 == 1 { [0, 1] } else { [1, 0] };
            let mut this_round = [(0.0, 0.0, 0.0); 2];
            for s in order {
                let (name, url) = &setups[s];
                let outcome = runtime.block_on(scenario(url, 2, rate, seconds));
                let per_second = outcome.deliveries as f64 / outcome.seconds;
                let lost = outcome.expected.saturating_sub(outcome.deliveries);
                lost_total += lost + outcome.failed;
                let (p50, p99) = (
                    outcome.p50_us as f64 / 1000.0,
                    outcome.p99_us as f64 / 1000.0,
                );
                println!(
                    "{round:>5}  {name:<7}  {rate:>8}  {:>9}  {:>6}  {per_second:>12.0}  {lost:>4}  {p50:>6.2}  {p99:>6.2}",
                    outcome.publishes, outcome.failed,
                );
                this_round[s] = (per_second, p50, p99);
                figures[s][0].push(per_second);
                figures[s][1].push(p50);
                figures[s][2].push(p99);
            }
            let ([one, many], eps) = (this_round, 1e-3);
            ratios[0].push(many.0 / one.0);
            ratios[1].push(many.1 / one.1.max(eps));
            ratios[2].push(many.2 / one.2.max(eps));
        }
        let [d, p50, p99] = ratios.map(|mut r| spread(&mut r));
        println!(
            "  cluster / single at {rate}/s (median [min to max] of {rounds} rounds): deliveries/s {:.2}x [{:.2} to {:.2}], p50 {:.2}x [{:.2} to {:.2}], p99 {:.2}x [{:.2} to {:.2}]",
            d.0, d.1, d.2, p50.0, p50.1, p50.2, p99.0, p99.1, p99.2
        );
        let medians = figures.map(|f| f.map(|mut v| spread(&mut v).0));
        summary.push((rate, d.0, p50.0, p99.0, medians));
    }
    println!();
    println!(
        "target/s  deliveries/s cluster/single  p50 cluster/single  p99 cluster/single  deliveries/s single, cluster  p50 ms single, cluster  p99 ms single, cluster"
    );
    for (rate, d, p50, p99, [one, many]) in summary {
        println!(
            "{rate:>8}  {d:>27.2}x  {p50:>17.2}x  {p99:>17.2}x  {:>14.0}, {:>12.0}  {:>13.2}, {:>7.2}  {:>13.2}, {:>7.2}",
            one[0], many[0], one[1], many[1], one[2], many[2]
        );
    }
    drop(cluster);
    drop(single);
    if lost_total > 0 {
        eprintln!("FAILED: {lost_total} events lost or not published");
        std::process::exit(1);
    }
    println!("lost: 0");
}
