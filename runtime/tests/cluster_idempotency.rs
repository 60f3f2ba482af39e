//! Retry-safe critical events on the cluster manager, against a real
//! `redis-server`: the idempotency key is set in the same Lua step that
//! stores the event, so concurrent attempts on two nodes store it once, a
//! retry after a timeout (Redis stopped with SIGSTOP) stores nothing twice,
//! and after the window the key stores again.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use websocket_manager::managers::{ClusterConfig, ClusterWebSocketManager, IdempotentEmit};
use websocket_manager::{events::*, managers::*, socket::*, *};
use websocket_manager_test_support::redis::{count_keys, own_redis_for, redis_for, unique_prefix};

async fn node(
    url: &str,
    prefix: &str,
    name: &str,
    config: ManagerConfig,
) -> ClusterWebSocketManager {
    let cluster = ClusterConfig::builder(url)
        .key_prefix(prefix)
        .node_id(name)
        .command_timeout(Duration::from_millis(400))
        .heartbeat_interval(Duration::from_millis(200))
        .node_ttl(Duration::from_secs(5))
        .build()
        .unwrap();
    let manager = ClusterWebSocketManager::new(config, cluster).unwrap();
    manager.ready().await.unwrap();
    manager
}

fn alice() -> UserId {
    UserId::new("alice").unwrap()
}

fn key(name: &str) -> IdempotencyKey {
    IdempotencyKey::new(name).unwrap()
}

async fn connect(manager: &ClusterWebSocketManager) -> OutboundReceiver {
    let (socket, outbound) = WebSocketHandle::channel(manager.config().queue_limits());
    manager
        .add_connection(WebSocketConnection::new(alice(), socket))
        .await
        .unwrap();
    outbound
}

/// The critical events received within `wait`, as (sequence, data).
async fn received(
    outbound: &mut OutboundReceiver,
    wait: Duration,
) -> Vec<(u64, serde_json::Value)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, outbound.recv()).await {
        match event {
            OutboundEvent::Frame(frame) => {
                let value: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
                if value["critical"] == true {
                    got.push((value["sequence"].as_u64().unwrap(), value["data"].clone()));
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

async fn eventually(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_attempts_on_two_nodes_store_the_event_once() {
    let Some(redis) = redis_for("idempotency_concurrent") else {
        return;
    };
    let url = redis.url();
    let prefix = unique_prefix("idem-concurrent");
    let a = Arc::new(node(&url, &prefix, "a", ManagerConfig::default()).await);
    let b = Arc::new(node(&url, &prefix, "b", ManagerConfig::default()).await);
    let mut tab = connect(&b).await;
    eventually(Duration::from_secs(2), "a sees alice", || {
        a.is_connection_active(&alice())
    })
    .await;
    let mut attempts = Vec::new();
    for i in 0..16 {
        let node = Arc::clone(if i % 2 == 0 { &a } else { &b });
        attempts.push(tokio::spawn(async move {
            node.emit_critical_event_with_key(
                &alice(),
                &key("run-1/done"),
                AGENT_COMPLETED,
                json!({"i": i}),
            )
            .await
            .unwrap()
        }));
    }
    let mut results = Vec::new();
    for attempt in attempts {
        results.push(attempt.await.unwrap());
    }
    let stored: Vec<_> = results.iter().filter(|d| !d.is_duplicate()).collect();
    assert_eq!(stored.len(), 1, "{results:?}");
    assert!(
        results.iter().all(|d| d.offset() == stored[0].offset()),
        "{results:?}"
    );
    let got = received(&mut tab, Duration::from_millis(500)).await;
    assert_eq!(got.len(), 1, "the tab got the event once: {got:?}");
    assert_eq!(Some(got[0].0), stored[0].offset().map(|o| o.sequence));
    assert_eq!(count_keys(&url, &format!("{prefix}:*idem:*")), 1);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_timeout_stores_nothing_twice() {
    let Some(server) = own_redis_for("idempotency_timeout") else {
        return;
    };
    let url = server.url();
    let prefix = unique_prefix("idem-timeout");
    let a = node(&url, &prefix, "a", ManagerConfig::default()).await;
    let mut tab = connect(&a).await;
    let k = key("run-2/step-1");

    server.pause(); // SIGSTOP
    let error = a
        .emit_critical_event_with_key(&alice(), &k, AGENT_THINKING, json!({"step": 1}))
        .await
        .unwrap_err();
    let ManagerError::Cluster { failure, .. } = &error else {
        panic!("{error}");
    };
    assert!(failure.may_have_taken_effect(), "{failure}");
    server.unpause(); // SIGCONT: the script sent before the stop runs now
    eventually(Duration::from_secs(8), "ready again", || {
        a.cluster_stats().ready
    })
    .await;

    let mut offsets = Vec::new();
    for _ in 0..3 {
        let retry = a
            .emit_critical_event_with_key(&alice(), &k, AGENT_THINKING, json!({"step": 1}))
            .await
            .unwrap();
        offsets.push(retry.offset());
    }
    assert!(offsets.iter().all(|o| *o == offsets[0]), "{offsets:?}");
    // Whether or not the timed-out attempt was stored, the event exists once.
    let history = a.get_connection_health(&alice());
    let latest = history.latest_offset.unwrap();
    assert_eq!(Some(latest), offsets[0]);
    assert_eq!(latest.sequence, 1, "stored once");
    // The tab may have been closed for a resume by the outage; if not, it
    // got the event exactly once.
    let got = received(&mut tab, Duration::from_millis(300)).await;
    assert!(got.len() <= 1, "{got:?}");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_window_the_same_key_stores_again() {
    let Some(redis) = redis_for("idempotency_window") else {
        return;
    };
    let url = redis.url();
    let prefix = unique_prefix("idem-window");
    let config = ManagerConfig::builder()
        .idempotency_window(Duration::from_millis(200))
        .build()
        .unwrap();
    let a = node(&url, &prefix, "a", config).await;
    let k = key("k");
    let first = a
        .emit_critical_event_with_key(&alice(), &k, AGENT_STARTED, json!(1))
        .await
        .unwrap();
    let retry = a
        .emit_critical_event_with_key(&alice(), &k, AGENT_STARTED, json!(1))
        .await
        .unwrap();
    assert!(
        retry.is_duplicate() && retry.offset() == first.offset(),
        "{retry}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = a
        .emit_critical_event_with_key(&alice(), &k, AGENT_STARTED, json!(1))
        .await
        .unwrap();
    assert!(!again.is_duplicate(), "{again}");
    assert_eq!(
        again.offset().unwrap().sequence,
        first.offset().unwrap().sequence + 1
    );
    a.shutdown().await;
}
