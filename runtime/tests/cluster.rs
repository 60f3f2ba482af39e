//! The cluster manager against a real `redis-server`: two or three nodes in
//! one process, each a `ClusterWebSocketManager` with its own node id and
//! the same key prefix.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::json;
use websocket_manager::ClusterFailure;
use websocket_manager::conformance::Conformance;
use websocket_manager::{
    close::RESUME,
    managers::{ClusterConfig, ClusterWebSocketManager},
};
use websocket_manager::{events::*, managers::*, socket::*, startup::*, *};
use websocket_manager_test_support::redis::{count_keys, own_redis_for, redis_for, unique_prefix};

fn cluster(url: &str, prefix: &str, node: &str) -> ClusterConfig {
    cluster_with_ttl(url, prefix, node, Duration::from_secs(2))
}

/// A node TTL of 2 s makes a node fence itself after 1.78 s without an
/// acknowledged heartbeat: long enough that a heartbeat delayed by a loaded
/// CI machine does not fence a healthy node mid-test (at 600 ms it did);
/// the tests of Redis outages use a longer one still, so what they check
/// (typed errors, local sends, recovery) happens before the fence (tested
/// in `cluster_liveness.rs`).
fn cluster_with_ttl(url: &str, prefix: &str, node: &str, node_ttl: Duration) -> ClusterConfig {
    ClusterConfig::builder(url)
        .key_prefix(prefix)
        .node_id(node)
        .command_timeout(Duration::from_millis(400))
        .heartbeat_interval(Duration::from_millis(200))
        .node_ttl(node_ttl)
        .build()
        .unwrap()
}

async fn node(url: &str, prefix: &str, name: &str) -> ClusterWebSocketManager {
    start(cluster(url, prefix, name)).await
}

/// A node that tolerates an outage of a few seconds before fencing itself.
async fn patient_node(url: &str, prefix: &str, name: &str) -> ClusterWebSocketManager {
    start(cluster_with_ttl(url, prefix, name, Duration::from_secs(5))).await
}

async fn start(config: ClusterConfig) -> ClusterWebSocketManager {
    let manager = ClusterWebSocketManager::new(ManagerConfig::default(), config).unwrap();
    manager.ready().await.unwrap();
    manager
}

fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

struct Tab {
    id: ConnectionId,
    outbound: OutboundReceiver,
}

async fn connect(
    manager: &ClusterWebSocketManager,
    user: &UserId,
    resume: Option<StreamOffset>,
) -> Tab {
    let (socket, outbound) = WebSocketHandle::channel(manager.config().queue_limits());
    let mut connection = WebSocketConnection::new(user.clone(), socket);
    if let Some(offset) = resume {
        connection = connection.with_resume(offset);
    }
    let id = connection.connection_id.clone();
    manager.add_connection(connection).await.unwrap();
    Tab { id, outbound }
}

/// Frames received within `wait` (stops at a close).
async fn frames(tab: &mut Tab, wait: Duration) -> (Vec<serde_json::Value>, Option<CloseReason>) {
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, tab.outbound.recv()).await {
            Ok(Some(OutboundEvent::Frame(frame))) => {
                frames.push(serde_json::from_str(frame.as_str()).unwrap())
            }
            Ok(Some(OutboundEvent::Close(reason))) => return (frames, Some(reason)),
            Ok(Some(OutboundEvent::Binary(bytes))) => panic!("a manager sent binary: {bytes:?}"),
            Ok(None) | Err(_) => return (frames, None),
        }
    }
}

/// Polls `condition` every 20 ms for at most `limit`.
async fn eventually(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn offsets(frames: &[serde_json::Value]) -> Vec<(u64, u64)> {
    frames
        .iter()
        .filter(|f| f["critical"] == true)
        .map(|f| {
            (
                f["stream"].as_u64().unwrap(),
                f["sequence"].as_u64().unwrap(),
            )
        })
        .collect()
}

const SHORT: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_cross_nodes_once_and_never_reach_another_user() {
    let Some(redis) = redis_for("sends_cross_nodes") else {
        return;
    };
    let prefix = unique_prefix("sends");
    let (a, b) = (
        node(&redis.url(), &prefix, "a").await,
        node(&redis.url(), &prefix, "b").await,
    );
    let (alice, bob) = (user("alice"), user("bob"));
    let mut alice_a = connect(&a, &alice, None).await;
    let mut alice_b = connect(&b, &alice, None).await;
    let mut bob_b = connect(&b, &bob, None).await;
    eventually(
        Duration::from_secs(2),
        "node a sees alice's and bob's tabs on b",
        || a.get_user_connections(&alice).len() == 2 && a.is_connection_active(&bob),
    )
    .await;
    assert_eq!(a.get_connection_health(&alice).total_connections, 2);
    assert!(a.get_connection_health(&alice).last_activity_ms.is_some());

    let delivery = a
        .send_to_user(&alice, json!({"type": "hello"}))
        .await
        .unwrap();
    assert_eq!(
        (delivery.recipients(), delivery.remote_nodes()),
        (1, 1),
        "{delivery}"
    );
    for tab in [&mut alice_a, &mut alice_b] {
        let (got, _) = frames(tab, SHORT).await;
        assert_eq!(got, [json!({"type": "hello"})], "exactly once on each node");
    }
    // Critical events: same offsets on both nodes, bob never sees them.
    for n in 0..3 {
        b.emit_critical_event(&alice, AGENT_THINKING, json!({"n": n}))
            .await
            .unwrap();
    }
    let (on_a, _) = frames(&mut alice_a, SHORT).await;
    let (on_b, _) = frames(&mut alice_b, SHORT).await;
    assert_eq!(offsets(&on_a).len(), 3, "{on_a:?}");
    assert_eq!(offsets(&on_a), offsets(&on_b));
    assert_eq!(
        on_a.iter()
            .map(|f| f["data"]["n"].clone())
            .collect::<Vec<_>>(),
        [json!(0), json!(1), json!(2)]
    );
    let (bob_got, _) = frames(&mut bob_b, SHORT).await;
    assert!(bob_got.is_empty(), "bob got {bob_got:?}");

    // A thread binding asked of node a for a connection of node b.
    let thread = ThreadId::new("t-1").unwrap();
    assert!(a.update_connection_thread(&alice_b.id, thread.clone()));
    eventually(
        Duration::from_secs(2),
        "b binds its connection to the thread",
        || {
            b.get_connection(&alice_b.id)
                .is_some_and(|c| c.thread_id.as_ref() == Some(&thread))
        },
    )
    .await;
    let a_knows_the_binding = || {
        a.get_connection_health(&alice)
            .connections
            .iter()
            .any(|c| c.thread_id.as_ref() == Some(&thread))
    };
    eventually(
        Duration::from_secs(2),
        "a learns the binding",
        a_knows_the_binding,
    )
    .await;
    // a re-reads b's presence from Redis every heartbeat (200 ms): the
    // binding must be in the presence hash, not only in the bus message.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        a_knows_the_binding(),
        "a forgot the binding when it re-read b's presence"
    );
    let delivery = a
        .send_to_thread(&thread, json!({"type": "to-thread"}))
        .await
        .unwrap();
    assert_eq!((delivery.recipients(), delivery.remote_nodes()), (0, 1));
    let (thread_b, _) = frames(&mut alice_b, SHORT).await;
    let (thread_a, _) = frames(&mut alice_a, SHORT).await;
    assert_eq!(thread_b, [json!({"type": "to-thread"})]);
    assert!(thread_a.is_empty());

    // A user nobody holds: a typed refusal, and nothing published.
    let nobody = a.send_to_user(&user("nobody"), json!({})).await;
    assert!(matches!(
        nobody,
        Err(ManagerError::NotDelivered {
            reason: NotDeliveredReason::NoConnections,
            ..
        })
    ));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_drops_on_one_node_resumes_on_another_and_loses_nothing() {
    let Some(redis) = redis_for("resume_across_nodes") else {
        return;
    };
    let prefix = unique_prefix("resume");
    let (a, b) = (
        node(&redis.url(), &prefix, "a").await,
        node(&redis.url(), &prefix, "b").await,
    );
    let alice = user("alice");
    let mut tab = connect(&a, &alice, None).await;
    let first = a
        .emit_critical_event(&alice, AGENT_STARTED, json!({"n": 1}))
        .await
        .unwrap();
    assert_eq!(first.recipients(), 1, "{first}");
    let (got, _) = frames(&mut tab, SHORT).await;
    let seen = offsets(&got);
    assert_eq!(seen.len(), 1);
    let last = StreamOffset::new(seen[0].0, seen[0].1);
    assert_eq!(first.offset(), Some(last));
    a.remove_connection(&tab.id).await;
    eventually(Duration::from_secs(2), "b sees alice offline", || {
        !b.is_connection_active(&alice)
    })
    .await;

    // Offline: both nodes append; nothing is lost.
    let queued = b
        .emit_critical_event(&alice, AGENT_THINKING, json!({"n": 2}))
        .await
        .unwrap();
    assert!(queued.is_queued(), "{queued}");
    a.emit_critical_event(&alice, AGENT_COMPLETED, json!({"n": 3}))
        .await
        .unwrap();

    let mut resumed = connect(&b, &alice, Some(last)).await;
    let (got, _) = frames(&mut resumed, SHORT).await;
    assert_eq!(
        got.iter()
            .map(|f| f["data"]["n"].clone())
            .collect::<Vec<_>>(),
        [json!(2), json!(3)],
        "exactly the events after the offset: {got:?}"
    );
    assert_eq!(offsets(&got), [(last.stream, 2), (last.stream, 3)]);

    // Live on b, emitted on a: in order after the replay.
    a.emit_critical_event(&alice, TOOL_EXECUTING, json!({"n": 4}))
        .await
        .unwrap();
    let (got, _) = frames(&mut resumed, SHORT).await;
    assert_eq!(offsets(&got), [(last.stream, 4)]);

    // An offset from a stream the user never had: told, then everything.
    let mut stale = connect(&a, &alice, Some(StreamOffset::new(last.stream + 1, 9))).await;
    let (got, _) = frames(&mut stale, SHORT).await;
    assert_eq!(got[0]["type"], "resync");
    assert_eq!(got[0]["reason"], "unknown_stream");
    assert_eq!(offsets(&got[1..]).len(), 4);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dropped_without_cleanup_disappears_within_the_bound() {
    let Some(redis) = redis_for("dead_node") else {
        return;
    };
    let prefix = unique_prefix("dead");
    let a = node(&redis.url(), &prefix, "a").await;
    let c = node(&redis.url(), &prefix, "c").await;
    let carol = user("carol");
    let _tab = connect(&c, &carol, None).await;
    eventually(Duration::from_secs(2), "a sees carol on c", || {
        a.is_connection_active(&carol)
    })
    .await;
    let bound = c.cluster_config().presence_bound();
    // No shutdown: the process died.
    drop(c);
    let dropped = Instant::now();
    eventually(
        bound + Duration::from_millis(500),
        "a forgets the dead node",
        || !a.is_connection_active(&carol),
    )
    .await;
    eprintln!(
        "dead node forgotten after {:?} (bound {bound:?})",
        dropped.elapsed()
    );
    assert_eq!(a.cluster_stats().remote_nodes, 0);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_gives_typed_errors_then_recovers_and_announces_the_loss() {
    let Some(mut server) = own_redis_for("redis_restart") else {
        return;
    };
    let url = server.url();
    let prefix = unique_prefix("restart");
    let (a, b) = (
        patient_node(&url, &prefix, "a").await,
        patient_node(&url, &prefix, "b").await,
    );
    let (alice, dave) = (user("alice"), user("dave"));
    let mut tab = connect(&a, &alice, None).await;
    let mut other_tab = connect(&b, &alice, None).await;
    let mut dave_tab = connect(&a, &dave, None).await;
    a.emit_critical_event(&alice, AGENT_STARTED, json!({"n": 1}))
        .await
        .unwrap();
    let (got, _) = frames(&mut tab, SHORT).await;
    let before = offsets(&got);
    assert_eq!(before.len(), 1);
    eventually(Duration::from_secs(2), "a sees alice on b", || {
        a.get_user_connections(&alice).len() == 2
    })
    .await;

    server.kill();
    let started = Instant::now();
    let error = a
        .emit_critical_event(&alice, AGENT_THINKING, json!({"n": 2}))
        .await
        .unwrap_err();
    assert!(matches!(error, ManagerError::Cluster { .. }), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded: {:?}",
        started.elapsed()
    );
    // A send that needs another node is refused, with the local count.
    let error = a
        .send_to_user(&alice, json!({"type": "x"}))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ManagerError::Cluster {
                delivered_locally: 1,
                ..
            }
        ),
        "{error}"
    );
    // A user held only here is still served.
    eventually(Duration::from_secs(3), "a notices the outage", || {
        !a.cluster_stats().ready
    })
    .await;
    assert!(
        a.get_connection_health(&alice).partial,
        "an answer from a stale view says so"
    );
    let local = a
        .send_to_user(&dave, json!({"type": "local"}))
        .await
        .unwrap();
    assert_eq!(local.recipients(), 1);
    let (dave_got, _) = frames(&mut dave_tab, SHORT).await;
    assert!(dave_got.contains(&json!({"type": "local"})));

    server.restart(); // empty: the streams are gone
    eventually(Duration::from_secs(8), "a rejoins", || {
        a.cluster_stats().ready
    })
    .await;
    eventually(Duration::from_secs(8), "b rejoins", || {
        b.cluster_stats().ready
    })
    .await;
    // alice's tab had an offset on a stream Redis no longer has: it is
    // closed so the client resumes, and the resume is told what happened.
    for tab in [&mut tab, &mut other_tab] {
        let (rest, closed) = frames(tab, Duration::from_secs(3)).await;
        assert_eq!(closed.map(|c| c.code), Some(RESUME), "{rest:?}");
    }
    let last = StreamOffset::new(before[0].0, before[0].1);
    let mut resumed = connect(&b, &alice, Some(last)).await;
    let (got, _) = frames(&mut resumed, SHORT).await;
    assert_eq!(got[0]["type"], "resync", "{got:?}");
    assert_eq!(got[0]["reason"], "unknown_stream");
    let delivery = a
        .emit_critical_event(&alice, AGENT_COMPLETED, json!({"n": 3}))
        .await
        .unwrap();
    let (got, _) = frames(&mut resumed, SHORT).await;
    let new = offsets(&got);
    assert_eq!(new.len(), 1, "once: {got:?}");
    assert_ne!(new[0].0, last.stream, "a new stream id");
    assert_eq!(new[0].1, 1);
    assert_eq!(delivery.offset(), Some(StreamOffset::new(new[0].0, 1)));
    // Presence came back: a sees the tab on b.
    eventually(Duration::from_secs(3), "presence resynchronised", || {
        a.is_connection_active(&alice)
    })
    .await;
    assert!(!a.get_connection_health(&alice).partial);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_kit_passes_on_the_cluster_manager() {
    let Some(redis) = redis_for("cluster_conformance") else {
        return;
    };
    let prefix = unique_prefix("kit");
    let mut extensions = Extensions::new();
    extensions.insert(cluster(&redis.url(), &prefix, "kit"));
    let report = Conformance::new(ManagerMode::Unified)
        .extensions(extensions)
        .run_type::<ClusterWebSocketManager>()
        .await;
    assert!(report.passed(), "{report:?}");
    // The probes ran in namespaces of their own, and deleted them.
    let pattern = format!("{prefix}:*");
    eventually(
        Duration::from_secs(3),
        "the probes' keys are deleted",
        || count_keys(&redis.url(), &pattern) == 0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_agree_on_presence() {
    let Some(redis) = redis_for("three_nodes") else {
        return;
    };
    let prefix = unique_prefix("three");
    let url = redis.url();
    let nodes = [
        node(&url, &prefix, "n1").await,
        node(&url, &prefix, "n2").await,
        node(&url, &prefix, "n3").await,
    ];
    let users = [user("u1"), user("u2"), user("u3"), user("u4")];
    let mut tabs = Vec::new();
    for (i, u) in users.iter().enumerate() {
        for k in 0..=i {
            tabs.push((u.clone(), connect(&nodes[(i + k) % 3], u, None).await));
        }
    }
    let expected: Vec<usize> = (1..=4).collect();
    let counts = |n: &ClusterWebSocketManager| -> Vec<usize> {
        users
            .iter()
            .map(|u| n.get_user_connections(u).len())
            .collect()
    };
    eventually(
        Duration::from_secs(3),
        "every replica holds every tab",
        || nodes.iter().all(|n| counts(n) == expected),
    )
    .await;
    // Every node answers with the same connection ids.
    for u in &users {
        let first = nodes[0].get_user_connections(u);
        assert!(nodes.iter().all(|n| n.get_user_connections(u) == first));
    }
    // Removals propagate too.
    for (u, tab) in tabs.iter().filter(|(u, _)| *u == users[3]) {
        for n in &nodes {
            n.remove_connection(&tab.id).await;
        }
        let _ = u;
    }
    eventually(Duration::from_secs(3), "u4 is gone everywhere", || {
        nodes.iter().all(|n| !n.is_connection_active(&users[3]))
    })
    .await;
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_validates_the_cluster_manager_and_lists_it_when_unconfigured() {
    let report = validate_on_startup(&StartupOptions::new()).await.unwrap();
    let listed = report.manager("cluster").unwrap();
    assert_eq!(listed.verdict, Verdict::NotConfigured, "{report}");
    let strict = validate_on_startup(&StartupOptions::strict().expect(["cluster"])).await;
    assert!(
        strict.is_err(),
        "expected but unconfigured must fail startup"
    );

    let Some(redis) = redis_for("cluster_startup") else {
        return;
    };
    let mut extensions = Extensions::new();
    extensions.insert(cluster(&redis.url(), &unique_prefix("startup"), "n1"));
    let report = validate_on_startup(
        &StartupOptions::strict()
            .expect(["cluster"])
            .extensions(extensions),
    )
    .await
    .unwrap();
    assert_eq!(
        report.manager("cluster").unwrap().verdict,
        Verdict::Compliant,
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbound_buffer_loses_nothing_silently() {
    let Some(redis) = redis_for("inbound_overflow") else {
        return;
    };
    let prefix = unique_prefix("overflow");
    let url = redis.url();
    // A node whose buffer of messages from Redis holds one message.
    let tiny = ClusterConfig::builder(url.as_str())
        .key_prefix(&prefix)
        .node_id("tiny")
        .heartbeat_interval(Duration::from_millis(200))
        .node_ttl(Duration::from_millis(600))
        .inbound_capacity(1)
        .build()
        .unwrap();
    let config = ManagerConfig::builder()
        .queue_capacity(4096)
        .queue_max_bytes(8 << 20)
        .build()
        .unwrap();
    let a = ClusterWebSocketManager::new(config, tiny).unwrap();
    a.ready().await.unwrap();
    let b = std::sync::Arc::new(node(&url, &prefix, "b").await);
    let alice = user("alice");
    let mut tab = connect(&a, &alice, None).await;
    eventually(Duration::from_secs(2), "b sees alice's tab", || {
        b.is_connection_active(&alice)
    })
    .await;
    // Bursts from the other node: many events arrive in one read. (Fewer
    // than the history holds: once the tab is closed, alice is offline and
    // her events wait for her.)
    const EVENTS: u64 = 200;
    for _ in 0..EVENTS / 100 {
        let mut emits = Vec::new();
        for _ in 0..100 {
            let b = std::sync::Arc::clone(&b);
            let alice = alice.clone();
            emits.push(tokio::spawn(async move {
                b.emit_critical_event(&alice, AGENT_THINKING, json!({}))
                    .await
            }));
        }
        for emit in emits {
            emit.await.unwrap().unwrap();
        }
    }
    let (got, closed) = frames(&mut tab, Duration::from_secs(3)).await;
    let stats = a.cluster_stats();
    assert!(
        stats.inbound_dropped > 0,
        "the buffer never overflowed: {stats}"
    );
    // What arrived is a gap-free prefix; the rest comes by resuming.
    let seen = offsets(&got);
    assert!(
        seen.windows(2).all(|w| w[1].1 == w[0].1 + 1),
        "a gap was passed on: {seen:?}"
    );
    assert!(seen.len() < EVENTS as usize, "{stats}");
    assert_eq!(closed.map(|c| c.code), Some(RESUME), "{stats}");
    let stream = seen.first().map_or(0, |s| s.0);
    let last = seen.last().map_or(0, |s| s.1);
    let mut resumed = connect(&b, &alice, Some(StreamOffset::new(stream, last))).await;
    let (rest, _) = frames(&mut resumed, Duration::from_secs(1)).await;
    let rest = offsets(&rest);
    assert_eq!(rest.first().map(|r| r.1), Some(last + 1));
    assert_eq!(
        last as usize + rest.len(),
        EVENTS as usize,
        "every event exactly once"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_gives_bounded_typed_errors_and_nothing_is_lost_after() {
    let Some(server) = own_redis_for("redis_hung") else {
        return;
    };
    let url = server.url();
    let prefix = unique_prefix("hung");
    let (a, b) = (
        patient_node(&url, &prefix, "a").await,
        patient_node(&url, &prefix, "b").await,
    );
    let alice = user("alice");
    let mut tab = connect(&b, &alice, None).await;
    eventually(Duration::from_secs(2), "a sees alice", || {
        a.is_connection_active(&alice)
    })
    .await;
    a.emit_critical_event(&alice, AGENT_STARTED, json!({"n": 1}))
        .await
        .unwrap();

    server.pause();
    let started = Instant::now();
    let error = a
        .emit_critical_event(&alice, AGENT_THINKING, json!({"n": 2}))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(
            error,
            ManagerError::Cluster {
                failure: ClusterFailure::Timeout { .. } | ClusterFailure::Engine(_),
                ..
            }
        ),
        "{error}"
    );
    assert!(
        waited < Duration::from_secs(2),
        "bounded by the 400 ms command timeout: {waited:?}"
    );
    server.unpause();

    eventually(Duration::from_secs(8), "a is ready again", || {
        a.cluster_stats().ready
    })
    .await;
    a.emit_critical_event(&alice, AGENT_COMPLETED, json!({"n": 3}))
        .await
        .unwrap();
    let (got, closed) = frames(&mut tab, SHORT).await;
    assert!(closed.is_none(), "{got:?}");
    // The refused event was sent before Redis hung, so it may have been
    // stored after all: the error says so, and either way the tab sees a
    // gap-free stream, each event once.
    let data: Vec<_> = got.iter().map(|f| f["data"]["n"].clone()).collect();
    let ManagerError::Cluster { failure, .. } = &error else {
        unreachable!()
    };
    assert!(failure.may_have_taken_effect(), "{failure}");
    assert!(
        data == [json!(1), json!(3)] || data == [json!(1), json!(2), json!(3)],
        "{got:?}"
    );
    let seen = offsets(&got);
    assert!(seen.windows(2).all(|w| w[1].1 == w[0].1 + 1), "{seen:?}");
    a.shutdown().await;
    b.shutdown().await;
}
