//! A node keeps its replica of the others' presence from their
//! announcements on the bus, and re-reads another node's presence hash
//! only when that node rewrote it under a new version (the version rides in
//! its heartbeat key), plus a full read every 20 heartbeats: a refresh no
//! longer reads every connection of the cluster each heartbeat, which at
//! 100,000 connections took the nodes' and Redis's CPU (issue 19). Against
//! a real `redis-server` of the test's own (its command counters are read).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use websocket_manager::managers::{ClusterConfig, ClusterWebSocketManager};
use websocket_manager::{UserId, WebSocketConnection, WebSocketHandle, WebSocketManager};
use websocket_manager_test_support::redis::{info, own_redis_for, unique_prefix};

const HEARTBEAT: Duration = Duration::from_millis(100);

async fn node(url: &str, prefix: &str, name: &str) -> ClusterWebSocketManager {
    let cluster = ClusterConfig::builder(url)
        .key_prefix(prefix)
        .node_id(name)
        .heartbeat_interval(HEARTBEAT)
        .node_ttl(Duration::from_secs(3))
        .build()
        .unwrap();
    let manager = ClusterWebSocketManager::new(Default::default(), cluster).unwrap();
    manager.ready().await.unwrap();
    manager
}

fn hgetall_calls(url: &str) -> u64 {
    info(url, "commandstats")
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_hgetall:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

async fn eventually(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_rereads_anothers_presence_only_when_its_version_changed() {
    let Some(redis) = own_redis_for("cluster_presence_versions") else {
        return;
    };
    let url = redis.url();
    let prefix = unique_prefix("presence_versions");
    let a = node(&url, &prefix, "pv-a").await;
    let b = node(&url, &prefix, "pv-b").await;
    let (socket, _outbound) = WebSocketHandle::channel(b.config().queue_limits());
    b.add_connection(WebSocketConnection::new(
        UserId::new("bob").unwrap(),
        socket,
    ))
    .await
    .unwrap();
    eventually(Duration::from_secs(5), "A sees B's connection", || {
        a.cluster_stats().remote_connections == 1
    })
    .await;

    // 2 s = 20 heartbeats of each node: reading every hash each heartbeat
    // would be 40 reads; by version, a node reads the other's hash about
    // once (its full read every 20 heartbeats).
    let before = hgetall_calls(&url);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reads = hgetall_calls(&url) - before;
    assert!(reads <= 8, "{reads} presence hashes read in 20 heartbeats");

    // A connection written into B's hash behind everyone's back, with a
    // new version: A reads it within a few heartbeats.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::pipe()
        .hset(
            format!("{prefix}:presence:pv-b"),
            "ghost-connection",
            r#"{"u":"ghost","t":0}"#,
        )
        .cmd("SET")
        .arg(format!("{prefix}:alive:pv-b"))
        .arg(u64::MAX / 2)
        .arg("PX")
        .arg(3000)
        .query_async(&mut connection)
        .await
        .unwrap();
    eventually(
        HEARTBEAT * 10,
        "A read B's presence again once its version changed",
        || a.cluster_stats().remote_connections == 2,
    )
    .await;
}
