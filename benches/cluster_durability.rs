//! The cost of the durability setting (`ClusterConfig::wait_for_replicas`)
//! per critical event, against the same cluster without it, in the same
//! run: a primary, two replicas and three sentinels on loopback
//! (`websocket_manager_test_support::sentinel`), one node per setting, both
//! reaching Redis through Sentinel. Sequential emits (each awaited), rounds
//! alternated between the two nodes; per-emit latency p50/p99 and the
//! ratio of the medians.
//!
//! ```sh
//! cargo bench --bench cluster_durability
//! ```
//!
//! Needs `redis-server` (Debian's; the sentinels run as `redis-server
//! --sentinel`).
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::json;
use websocket_manager::managers::{ClusterConfig, ClusterWebSocketManager};
use websocket_manager::{managers::*, *};
use websocket_manager_test_support::redis::{redis_server_available, unique_prefix};
use websocket_manager_test_support::sentinel::SentinelGroup;

const ROUNDS: usize = 20;
const EMITS_PER_ROUND: usize = 200;

async fn node(url: &str, prefix: &str, wait_for_replicas: usize) -> ClusterWebSocketManager {
    let cluster = ClusterConfig::builder(url)
        .key_prefix(prefix)
        .node_id(format!("bench-{wait_for_replicas}"))
        .wait_for_replicas(wait_for_replicas)
        .build()
        .unwrap();
    let manager = ClusterWebSocketManager::new(ManagerConfig::default(), cluster).unwrap();
    manager.ready().await.unwrap();
    manager
}

async fn round(manager: &ClusterWebSocketManager, user: &UserId, latencies: &mut Vec<Duration>) {
    for i in 0..EMITS_PER_ROUND {
        let started = Instant::now();
        manager
            .emit_critical_event(user, "agent_thinking", json!({"i": i}))
            .await
            .unwrap();
        latencies.push(started.elapsed());
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn main() {
    if !redis_server_available() {
        eprintln!("SKIPPED: no redis-server binary (apt-get install redis-server)");
        return;
    }
    // `cargo bench --no-run` compiles; `cargo test --benches` would run us
    // with `--bench` absent: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let group = SentinelGroup::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let prefix = unique_prefix("durability");
        let plain = node(&group.url(), &prefix, 0).await;
        let durable = node(&group.url(), &prefix, 1).await;
        let (a, b) = (UserId::new("plain").unwrap(), UserId::new("durable").unwrap());
        // A tab per user, drained as it goes: every event is taken (an
        // offline user's pending events would fill its history).
        for (manager, user) in [(&plain, &a), (&durable, &b)] {
            let (socket, mut outbound) = WebSocketHandle::channel(manager.config().queue_limits());
            manager
                .add_connection(WebSocketConnection::new(user.clone(), socket))
                .await
                .unwrap();
            tokio::spawn(async move { while outbound.recv().await.is_some() {} });
        }
        let (mut plain_lat, mut durable_lat) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            round(&plain, &a, &mut plain_lat).await;
            round(&durable, &b, &mut durable_lat).await;
        }
        plain_lat.sort();
        durable_lat.sort();
        let (p50, d50) = (percentile(&plain_lat, 0.5), percentile(&durable_lat, 0.5));
        let (p99, d99) = (percentile(&plain_lat, 0.99), percentile(&durable_lat, 0.99));
        println!(
            "cluster durability: {} sequential emits per setting through Sentinel (primary + 2 replicas on loopback)",
            plain_lat.len()
        );
        println!("setting              p50        p99");
        println!("wait_for_replicas 0  {p50:>9.1?}  {p99:>9.1?}");
        println!("wait_for_replicas 1  {d50:>9.1?}  {d99:>9.1?}");
        println!(
            "ratio (1 / 0)        {:>8.2}x  {:>8.2}x",
            d50.as_secs_f64() / p50.as_secs_f64(),
            d99.as_secs_f64() / p99.as_secs_f64()
        );
        plain.shutdown().await;
        durable.shutdown().await;
    });
    drop(group);
}
