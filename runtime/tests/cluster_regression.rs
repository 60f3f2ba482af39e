//! A Redis that comes back with an older state than it acknowledged (here a
//! restart from an older snapshot; asynchronous replication losing writes
//! in a failover does the same) must never make one offset name two events
//! for a client: the nodes notice (a connection given an offset beyond the
//! stream's head; a client resuming from one; a client resuming with the
//! print of another event than the one now at its offset), retire the
//! stream for a new one, and the clients are told with a `resync`
//! (`unknown_stream`).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::json;
use websocket_manager::managers::{ClusterConfig, ClusterWebSocketManager};
use websocket_manager::{events::*, managers::*, *};
use websocket_manager_test_support::redis::{RedisServer, redis_server_available, unique_prefix};
use websocket_manager_test_support::tab::ResumingTab;

async fn node(url: &str, prefix: &str, name: &str) -> ClusterWebSocketManager {
    let cluster = ClusterConfig::builder(url)
        .key_prefix(prefix)
        .node_id(name)
        .command_timeout(Duration::from_millis(400))
        .heartbeat_interval(Duration::from_millis(200))
        // The restart takes well under this: the nodes are not fenced.
        .node_ttl(Duration::from_secs(20))
        .build()
        .unwrap();
    let manager = ClusterWebSocketManager::new(ManagerConfig::default(), cluster).unwrap();
    manager.ready().await.unwrap();
    manager
}

fn alice() -> UserId {
    UserId::new("alice").unwrap()
}

async fn ready(manager: &ClusterWebSocketManager) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !manager.cluster_stats().ready {
        assert!(Instant::now() < deadline, "not ready again within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn available() -> bool {
    if redis_server_available() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set but there is no redis-server binary (.ci/ensure-redis installs it)"
    );
    eprintln!("SKIPPED: no redis-server binary (apt-get install redis-server)");
    false
}

/// Emits events 1 to 3 for alice, Redis's snapshot taken after the first.
async fn three_events_the_snapshot_holds_one_of(
    node: &ClusterWebSocketManager,
    server: &RedisServer,
) {
    node.emit_critical_event(&alice(), AGENT_STARTED, json!({"i": 1}))
        .await
        .unwrap();
    server.save();
    for i in 2..=3 {
        node.emit_critical_event(&alice(), AGENT_THINKING, json!({"i": i}))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_back_from_an_older_snapshot_never_makes_an_offset_name_two_events() {
    if !available() {
        return;
    }
    let mut server = RedisServer::start_persistent();
    let url = server.url();
    let prefix = unique_prefix("regression");
    let a = node(&url, &prefix, "a").await;
    let b = node(&url, &prefix, "b").await;
    // `live` stays connected to node A; `away` leaves node B before the crash.
    let (mut live, mut away) = (ResumingTab::new(alice()), ResumingTab::new(alice()));
    assert!(live.connect(&a, a.config().queue_limits()).await);
    assert!(away.connect(&b, b.config().queue_limits()).await);
    for i in 1..=5 {
        a.emit_critical_event(&alice(), AGENT_THINKING, json!({"i": i}))
            .await
            .unwrap();
    }
    server.save(); // the snapshot Redis will come back with: head 5
    for i in 6..=8 {
        a.emit_critical_event(&alice(), AGENT_THINKING, json!({"i": i}))
            .await
            .unwrap();
    }
    live.read(Duration::from_millis(300)).await;
    away.read(Duration::from_millis(300)).await;
    let seen = live.last.unwrap();
    assert_eq!((seen.sequence, away.last), (8, Some(seen)));
    away.disconnect();
    let id = b
        .get_user_connections(&alice())
        .into_iter()
        .find(|id| b.get_connection(id).is_some())
        .unwrap();
    b.remove_connection(&id).await;

    server.kill();
    server.restart(); // back at head 5 on the same stream
    ready(&a).await;
    ready(&b).await;

    // Node A's audit finds its connection beyond the head: the stream is
    // retired and the connection closed, so its client resumes and is told.
    let deadline = Instant::now() + Duration::from_secs(10);
    while live.read(Duration::from_millis(100)).await {
        assert!(Instant::now() < deadline, "the live tab was never closed");
    }
    assert!(live.connect(&a, a.config().queue_limits()).await);
    assert!(away.connect(&b, b.config().queue_limits()).await);
    b.emit_critical_event(&alice(), AGENT_COMPLETED, json!({"i": 9}))
        .await
        .unwrap();
    live.read(Duration::from_millis(400)).await;
    away.read(Duration::from_millis(400)).await;
    for (name, tab) in [("live", &live), ("away", &away)] {
        assert_eq!(tab.notices, ["unknown_stream"], "{name} was told");
        let last = tab.last.unwrap();
        assert_ne!(last.stream, seen.stream, "{name}: a new stream");
        assert_eq!(tab.named[&last], json!({"i": 9}), "{name}");
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resuming_beyond_the_head_retires_the_stream() {
    if !available() {
        return;
    }
    let mut server = RedisServer::start_persistent();
    let url = server.url();
    let prefix = unique_prefix("regression-resume");
    let a = node(&url, &prefix, "a").await;
    let mut tab = ResumingTab::new(alice());
    assert!(tab.connect(&a, a.config().queue_limits()).await);
    three_events_the_snapshot_holds_one_of(&a, &server).await;
    tab.read(Duration::from_millis(300)).await;
    let seen = tab.last.unwrap();
    assert_eq!(seen.sequence, 3);
    tab.disconnect();
    let id = a.get_user_connections(&alice()).into_iter().next().unwrap();
    a.remove_connection(&id).await;

    server.kill();
    server.restart(); // head 1
    ready(&a).await;
    // Nobody was connected to notice; the resume from 3 does.
    assert!(tab.connect(&a, a.config().queue_limits()).await);
    a.emit_critical_event(&alice(), AGENT_COMPLETED, json!({"i": 4}))
        .await
        .unwrap();
    tab.read(Duration::from_millis(400)).await;
    assert_eq!(tab.notices, ["unknown_stream"]);
    let last = tab.last.unwrap();
    assert_ne!(last.stream, seen.stream);
    assert_eq!((last.sequence, &tab.named[&last]), (1, &json!({"i": 4})));
    a.shutdown().await;
}

/// The case only the client can see: it was connected to no node when
/// Redis lost events, and resumes only after new events were numbered
/// over the offsets it saw. Its resume's print names another event than the
/// one Redis now holds there: told, never handed the new events as if it
/// had seen them; the stream is retired, so a client that sends no print
/// and comes back afterwards is told too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resuming_after_its_offsets_were_numbered_again_is_told() {
    if !available() {
        return;
    }
    let mut server = RedisServer::start_persistent();
    let url = server.url();
    let prefix = unique_prefix("regression-print");
    let a = node(&url, &prefix, "a").await;
    let mut tab = ResumingTab::new(alice());
    let mut plain = ResumingTab::new(alice()).without_prints();
    assert!(tab.connect(&a, a.config().queue_limits()).await);
    assert!(plain.connect(&a, a.config().queue_limits()).await);
    three_events_the_snapshot_holds_one_of(&a, &server).await;
    tab.read(Duration::from_millis(300)).await;
    plain.read(Duration::from_millis(300)).await;
    let seen = tab.last.unwrap();
    assert_eq!((seen.sequence, plain.last), (3, Some(seen)));
    tab.disconnect();
    plain.disconnect();
    for id in a.get_user_connections(&alice()) {
        a.remove_connection(&id).await;
    }

    server.kill();
    server.restart(); // head 1: events 2 and 3 are gone
    ready(&a).await;
    // Nobody is connected; two new events take offsets 2 and 3 again.
    for i in [20, 30] {
        a.emit_critical_event(&alice(), AGENT_THINKING, json!({"i": i}))
            .await
            .unwrap();
    }
    // The pub/sub copies of those emits may still be on their way to the
    // node: arriving while the tab catches up, on the stream its resume
    // retires, they refuse the registration (a gap) and the client tries
    // again, as every client does.
    let connected = tab.connect(&a, a.config().queue_limits()).await
        || tab.connect(&a, a.config().queue_limits()).await;
    assert!(connected);
    tab.read(Duration::from_millis(400)).await;
    assert_eq!(tab.notices, ["unknown_stream"], "the tab was told");
    assert_eq!(a.get_user_connections(&alice()).len(), 1);
    a.emit_critical_event(&alice(), AGENT_COMPLETED, json!({"i": 4}))
        .await
        .unwrap();
    tab.read(Duration::from_millis(400)).await;
    let last = tab.last.unwrap();
    assert_ne!(last.stream, seen.stream, "the stream was retired");
    assert_eq!((last.sequence, &tab.named[&last]), (1, &json!({"i": 4})));

    // The stream is retired: a client without a print is told too now.
    assert!(plain.connect(&a, a.config().queue_limits()).await);
    plain.read(Duration::from_millis(400)).await;
    assert_eq!(plain.notices, ["unknown_stream"]);
    a.shutdown().await;
}
