//! The cluster manager on a Redis Cluster, against real processes: three
//! masters and three replicas (six for the durable failover) on loopback
//! (`websocket_manager_test_support::cluster`), each test its own cluster.
//! (The rest of the cluster suite runs against a Redis Cluster too when
//! `REDIS_URL` is a `redis+cluster://` URL: `.ci/run` does both.)
//!
//! Asserted from a client's point of view: two nodes, critical events
//! emitted on one, a tab on the other that resumes from its offset whenever
//! its connection ends (`ResumingTab`), alternating between the nodes.
//!
//! * The master of the user's slot SIGKILLed mid-run: emits fail with typed
//!   errors during the failover and recover by themselves; with the
//!   durability setting on every acknowledged event reaches the tab exactly
//!   once, in order; with it off an event lost with the master is announced
//!   to the tab by a `resync` notice, and no offset names two events.
//! * The user's slot moved to another master mid-run (keys migrated one
//!   batch at a time, as `redis-cli --cluster reshard` does): nothing is
//!   lost and nothing repeated, and the nodes notice that Redis dropped
//!   their sharded subscription and audit.
//! * A master that serves neither the node's own channel nor the
//!   cluster-wide keys frozen with SIGSTOP (its connections stay open,
//!   nothing answers): the link watchdog, which probes every master, finds
//!   it within `probe_interval + probe_timeout` and replaces the
//!   connection, and after the failover an event for a user of that master
//!   reaches a tab on the node.
//! * An append whose connection drops after the master ran it and before
//!   the answer came (a TCP proxy in front of that master cuts it): redis-rs
//!   sends it again, and the event is still stored once and published once,
//!   with the first store's offset.
#![allow(clippy::unwrap_used)]

mod failover;
use failover::{capture_logs, node, watched_node};

use std::time::{Duration, Instant};

use serde_json::json;
use websocket_manager::managers::{ClusterStats, ClusterWebSocketManager};
use websocket_manager::{events::*, *};
use websocket_manager_test_support::cluster::{RedisClusterGroup, own_cluster_for};
use websocket_manager_test_support::fault_proxy::FaultProxy;
use websocket_manager_test_support::redis::{Eavesdropper, unique_prefix};
use websocket_manager_test_support::sentinel::cli;
use websocket_manager_test_support::tab::ResumingTab;

fn alice() -> UserId {
    UserId::new("alice").unwrap()
}

/// A run: events emitted on `a`, a resuming tab alternating between `b`
/// and `a`; `disturb` is called once, at the 10th emit; the run ends once
/// 20 events were acknowledged after it and the tab has every one of them
/// (or fails after 40 s).
struct Run {
    acknowledged: Vec<(StreamOffset, i64)>,
    /// Emits that failed (typed), by their number, and whether the error
    /// was a timeout (the event may have been stored: ambiguous).
    failed: Vec<(i64, bool)>,
    errors: Vec<String>,
    tab: ResumingTab,
    reconnects: usize,
}

async fn run(
    a: &ClusterWebSocketManager,
    b: &ClusterWebSocketManager,
    mut disturb: impl FnMut(),
    durable: bool,
) -> Run {
    let mut run = Run {
        acknowledged: Vec::new(),
        failed: Vec::new(),
        errors: Vec::new(),
        tab: ResumingTab::new(alice()),
        reconnects: 0,
    };
    assert!(run.tab.connect(b, b.config().queue_limits()).await);
    let mut disturbed_at = None;
    let started = Instant::now();
    let mut i = 0i64;
    loop {
        let after = run
            .acknowledged
            .iter()
            .filter(|(_, n)| disturbed_at.is_some_and(|k| *n > k))
            .count();
        let caught_up = run.acknowledged.last().is_none_or(|(_, n)| {
            run.tab.seen.iter().any(|(_, d)| d["i"] == *n)
                || (!durable && !run.tab.notices.is_empty())
        });
        if after >= 20 && caught_up {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "no recovery within 40 s: {} acknowledged ({after} after), {} errors (the last: {:?}), tab at {:?}, notices {:?}",
            run.acknowledged.len(),
            run.errors.len(),
            run.errors.last(),
            run.tab.last.map(|o| o.to_string()),
            run.tab.notices
        );
        if i == 10 && disturbed_at.is_none() {
            disturb();
            disturbed_at = Some(i);
        }
        if after < 20 {
            match a
                .emit_critical_event(&alice(), AGENT_THINKING, json!({"i": i}))
                .await
            {
                Ok(delivery) => run.acknowledged.push((delivery.offset().unwrap(), i)),
                Err(error @ ManagerError::Cluster { .. }) => {
                    let timeout = matches!(
                        error,
                        ManagerError::Cluster {
                            failure: ClusterFailure::Timeout { .. },
                            ..
                        }
                    );
                    run.failed.push((i, timeout));
                    run.errors.push(error.to_string());
                }
                Err(other) => panic!("untyped failure: {other}"),
            }
            i += 1;
        }
        if !run.tab.read(Duration::from_millis(30)).await {
            // The connection ended (a resume): come back with the offset.
            run.reconnects += 1;
            let node = if run.reconnects.is_multiple_of(2) {
                b
            } else {
                a
            };
            let _ = run.tab.connect(node, node.config().queue_limits()).await;
        }
    }
    run
}

/// Within a stream offsets follow each other; and (the tab checks as it
/// reads) no offset named two events.
fn assert_no_gap_or_repeat(tab: &ResumingTab) {
    for pair in tab.seen.windows(2) {
        let ((x, _), (y, _)) = (&pair[0], &pair[1]);
        assert!(
            x.stream != y.stream || y.sequence == x.sequence + 1,
            "{x} then {y}: a gap or a repeat"
        );
    }
}

/// Every acknowledged event reached the tab once, with its offset.
fn assert_every_acknowledged_event_once(run: &Run) {
    for (offset, n) in &run.acknowledged {
        let got: Vec<_> = run.tab.seen.iter().filter(|(_, d)| d["i"] == *n).collect();
        assert_eq!(
            got.len(),
            1,
            "event {n} at {offset}: {got:?}; notices {:?}",
            run.tab.notices
        );
        assert_eq!(got[0].0, *offset, "event {n}");
    }
}

/// One test's cluster at a time: six of them at once (up to 36 processes)
/// on a 2-core CI machine made `WAIT` and failovers miss their bounds.
static TURN: std::sync::OnceLock<tokio::sync::Mutex<()>> = std::sync::OnceLock::new();

/// A cluster of the test's own, started on a blocking thread (it waits
/// for the cluster to form), with the turn the test holds while it runs;
/// `None` when skipped (said why).
async fn cluster_for(
    name: &'static str,
    replicas: usize,
) -> Option<(tokio::sync::MutexGuard<'static, ()>, RedisClusterGroup)> {
    capture_logs();
    let turn = TURN
        .get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await;
    let group = tokio::task::spawn_blocking(move || own_cluster_for(name, replicas))
        .await
        .unwrap()?;
    Some((turn, group))
}

/// The port of the master that holds `prefix`'s keys of alice.
fn alices_master(group: &RedisClusterGroup, prefix: &str) -> (u16, u16) {
    let key = group
        .find_key(&format!("{prefix}:*meta:alice"))
        .expect("alice's stream meta is stored");
    let slot = group.slot_of(&key);
    (group.master_of_slot(slot), slot)
}

async fn master_killed_mid_run(durable: bool) {
    let name = if durable {
        "redis_cluster_failover_durable"
    } else {
        "redis_cluster_failover"
    };
    // Durable: two replicas per master, so one is left to acknowledge
    // writes once the other was promoted.
    let Some((_turn, mut group)) = cluster_for(name, if durable { 2 } else { 1 }).await else {
        return;
    };
    let url = group.url();
    let prefix = unique_prefix(name);
    let a = node(&url, &prefix, "a", durable).await;
    let b = node(&url, &prefix, "b", durable).await;
    // One event first, so alice's keys exist and her master can be found.
    a.emit_critical_event(&alice(), AGENT_STARTED, json!({"i": -1}))
        .await
        .unwrap();
    let (master, _) = alices_master(&group, &prefix);
    let run = run(&a, &b, || group.kill(master), durable).await;
    assert!(!run.errors.is_empty(), "the failover was never seen");
    assert_no_gap_or_repeat(&run.tab);
    if durable {
        assert_every_acknowledged_event_once(&run);
    } else {
        // Without the setting an acknowledged event may be lost with the
        // master; then the tab is told, never left with a silent gap.
        let missing = run
            .acknowledged
            .iter()
            .filter(|(_, n)| !run.tab.seen.iter().any(|(_, d)| d["i"] == *n))
            .count();
        assert!(
            missing == 0 || !run.tab.notices.is_empty(),
            "{missing} acknowledged events lost without a resync notice"
        );
    }
    eprintln!(
        "Redis Cluster failover (durable: {durable}): {} acknowledged, {} typed errors, {} reconnects, notices {:?}",
        run.acknowledged.len(),
        run.errors.len(),
        run.reconnects,
        run.tab.notices
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_run_loses_no_acknowledged_event_with_durability_on() {
    master_killed_mid_run(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_run_announces_any_loss_with_durability_off() {
    master_killed_mid_run(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_mid_run_loses_and_repeats_nothing() {
    let Some((_turn, group)) = cluster_for("redis_cluster_migration", 1).await else {
        return;
    };
    let url = group.url();
    let prefix = unique_prefix("migration");
    let a = node(&url, &prefix, "a", false).await;
    let b = node(&url, &prefix, "b", false).await;
    a.emit_critical_event(&alice(), AGENT_STARTED, json!({"i": -1}))
        .await
        .unwrap();
    let (source, slot) = alices_master(&group, &prefix);
    let audits_before = b.cluster_stats().audits;
    let group = std::sync::Arc::new(group);
    let mover = std::sync::Arc::clone(&group);
    let mut moving = None;
    let run = run(
        &a,
        &b,
        || {
            let group = std::sync::Arc::clone(&mover);
            // Moved while events keep flowing: keys go one batch at a time.
            moving = Some(std::thread::spawn(move || {
                group.migrate_slot(slot, Duration::from_millis(100))
            }));
        },
        false,
    )
    .await;
    let (from, to) = moving.unwrap().join().unwrap();
    assert_eq!(from, source);
    assert_eq!(group.master_of_slot(slot), to, "the slot moved");
    assert_no_gap_or_repeat(&run.tab);
    assert_every_acknowledged_event_once(&run);
    // Nothing repeated: the tab saw each event once, and none that was
    // refused (an emit that timed out may have been stored: the caller was
    // told it cannot know).
    for (offset, data) in &run.tab.seen {
        let n = data["i"].as_i64().unwrap();
        assert_eq!(
            run.tab.seen.iter().filter(|(_, d)| d["i"] == n).count(),
            1,
            "event {n} seen twice"
        );
        assert!(
            n == -1
                || run.acknowledged.iter().any(|(_, m)| *m == n)
                || run.failed.contains(&(n, true)),
            "event {n} at {offset} was refused yet stored (failed: {:?}, errors: {:?})",
            run.failed,
            run.errors
        );
    }
    assert!(run.tab.notices.is_empty(), "{:?}", run.tab.notices);
    // The `sunsubscribe` push of the slot's last step may reach the node
    // after the run's last event (seen on a loaded machine): wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.cluster_stats().audits <= audits_before {
        assert!(
            Instant::now() < deadline,
            "the node never noticed its sharded subscription was dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "Redis Cluster slot {slot} moved {from} -> {to}: {} acknowledged, {} typed errors, {} reconnects",
        run.acknowledged.len(),
        run.errors.len(),
        run.reconnects
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// redis-rs's cluster connection re-sends a command whose connection
/// dropped before the answer came (`RetryMethod::Reconnect`). A TCP proxy in
/// front of alice's master (which announces the proxy's port, so node A
/// reaches it only through the proxy) passes A's append to the master, then
/// closes A's connection before the answer: the master stored the event,
/// and redis-rs sends the same append again on a fresh connection. The
/// event must be stored once, published once, and the emit answered with
/// that one offset. With the durability setting on, the event is published
/// by the node after `WAIT`, from the re-send's answer (the first answer
/// never arrived).
async fn resent_append(durable: bool) {
    let name = if durable {
        "redis_cluster_resend_durable"
    } else {
        "redis_cluster_resend"
    };
    let Some((_turn, group)) = cluster_for(name, usize::from(durable)).await else {
        return;
    };
    let prefix = unique_prefix(name);
    // Alice's keys are written once, so her master can be found.
    let scout = node(&group.url(), &prefix, "scout", durable).await;
    scout
        .emit_critical_event(&alice(), AGENT_STARTED, json!({"i": -1}))
        .await
        .unwrap();
    scout.shutdown().await;
    let (master, _) = alices_master(&group, &prefix);
    let meta = group.find_key(&format!("{prefix}:*meta:alice")).unwrap();
    let stream = meta.replace("meta:alice", "stream:alice");
    let channel = meta.replace("meta:alice", "bus");

    let proxy = FaultProxy::start(&format!("127.0.0.1:{master}")).await;
    let announced = proxy.port();
    let group = std::sync::Arc::new(group);
    let announcing = std::sync::Arc::clone(&group);
    tokio::task::spawn_blocking(move || announcing.announce(master, announced))
        .await
        .unwrap();
    // A reaches the cluster through the proxy (the cluster tells it where
    // the other masters are), B through any node; every client reaches
    // alice's master through the proxy now, but only A's append is cut.
    let a = node(
        &format!("redis+cluster://127.0.0.1:{announced}"),
        &prefix,
        "a",
        durable,
    )
    .await;
    let b = node(&group.url(), &prefix, "b", durable).await;
    let mut tab = ResumingTab::new(alice());
    assert!(tab.connect(&b, b.config().queue_limits()).await);
    // What is published on alice's channel, heard on the master itself.
    let heard = Eavesdropper::start(&format!("127.0.0.1:{master}"), "SSUBSCRIBE", &channel);

    let marker = "resent-append-5f1c";
    proxy.cut_after(marker.as_bytes());
    let delivery = a
        .emit_critical_event(&alice(), AGENT_THINKING, json!({ "marker": marker }))
        .await
        .expect("the re-sent append is answered");
    // The append twice (redis-rs re-sent it after the cut); with the
    // durability setting, then the node's SPUBLISH after WAIT.
    assert_eq!(
        proxy.seen(),
        2 + usize::from(durable),
        "the master should have received the append twice"
    );
    let offset = delivery.offset().expect("an offset");

    // Stored once: one entry with the marker, at the offset the emit gave.
    let entries = cli(master, &["XRANGE", &stream, "-", "+"]);
    assert_eq!(
        entries.matches(marker).count(),
        1,
        "the event is stored once: {entries}"
    );
    assert_eq!(
        cli(master, &["XLEN", &stream]),
        "2",
        "the scout's event and this one: {entries}"
    );
    let id = format!("{}-1", offset.sequence);
    let at = cli(master, &["XRANGE", &stream, &id, &id]);
    assert!(
        at.contains(marker),
        "the emit's offset {offset} names the event: {at}"
    );

    // Published once, and delivered once with that offset.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tab.seen.iter().any(|(_, d)| d["marker"] == marker) {
        assert!(Instant::now() < deadline, "the tab never got the event");
        if !tab.read(Duration::from_millis(50)).await {
            let _ = tab.connect(&b, b.config().queue_limits()).await;
        }
    }
    let _ = tab.read(Duration::from_millis(300)).await;
    let got: Vec<_> = tab
        .seen
        .iter()
        .filter(|(_, d)| d["marker"] == marker)
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, offset);
    assert_eq!(heard.count(marker), 1, "published once");
    assert_eq!(a.cluster_stats().resent_appends, 1, "{}", a.cluster_stats());
    drop(heard);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_re_sent_after_its_connection_dropped_is_stored_and_published_once() {
    resent_append(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_sent_append_is_published_once_after_wait_with_durability_on() {
    resent_append(true).await;
}

/// The master that serves the key matching `pattern`.
fn master_of_key(group: &RedisClusterGroup, pattern: &str) -> u16 {
    let key = group.find_key(pattern).expect("the key is stored");
    group.master_of_slot(group.slot_of(&key))
}

/// Before, a node probed only the master of its own channel: a frozen
/// master that serves neither that channel nor the cluster-wide keys (so
/// no heartbeat times out on it) left the node's sharded subscriptions
/// there dead without a word, and after the failover the node never heard
/// that master's users again. Now every master is probed every
/// `probe_interval`: the frozen one is found within `probe_interval +
/// probe_timeout` (1 s here; 5 s allowed for a loaded CI machine), counted
/// in `probe_timeouts`, the connection replaced; once the cluster failed it
/// over, the node serves that master's users again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_master_the_node_does_not_probe_by_its_channel_is_found_and_replaced() {
    let Some((_turn, group)) = cluster_for("redis_cluster_frozen_master", 1).await else {
        return;
    };
    let url = group.url();
    let prefix = unique_prefix("frozen");
    // Probed every 500 ms, each probe answered within 500 ms.
    let probe = Duration::from_millis(500);
    let a = watched_node(&url, &prefix, "a", probe).await;
    let b = watched_node(&url, &prefix, "b", probe).await;
    // Neither B's own channel nor the cluster-wide keys live on the victim.
    let own = group
        .masters()
        .into_iter()
        .find(|port| {
            !cli(
                *port,
                &["PUBSUB", "SHARDCHANNELS", &format!("{prefix}:*node:b")],
            )
            .is_empty()
        })
        .expect("a master serves b's own channel");
    let shared = master_of_key(&group, &format!("{prefix}:*nodes"));
    let victim = group
        .masters()
        .into_iter()
        .find(|port| *port != own && *port != shared)
        .expect("a third master");
    // A user of the victim's.
    let mut user = None;
    for i in 0..64 {
        let candidate = UserId::new(format!("u{i}")).unwrap();
        a.emit_critical_event(&candidate, AGENT_STARTED, json!({"i": -1}))
            .await
            .unwrap();
        if master_of_key(&group, &format!("{prefix}:*meta:u{i}")) == victim {
            user = Some(candidate);
            break;
        }
    }
    let user = user.expect("a user of the victim's among 64");
    let mut tab = ResumingTab::new(user.clone());
    assert!(tab.connect(&b, b.config().queue_limits()).await);
    let before = (b.cluster_stats(), a.cluster_stats());

    group.pause(victim); // SIGSTOP: its connections stay open, silent
    let frozen = Instant::now();
    let bound = Duration::from_secs(5);
    // Found (a probe timed out) and replaced (a fresh connection): two
    // counters, the second moved just after the first.
    let moved = |now: &ClusterStats, then: &ClusterStats| {
        now.probe_timeouts > then.probe_timeouts && now.reconnects > then.reconnects
    };
    while !moved(&b.cluster_stats(), &before.0) || !moved(&a.cluster_stats(), &before.1) {
        assert!(
            frozen.elapsed() < bound,
            "the frozen master {victim} was not found within {bound:?}: {} / {}",
            b.cluster_stats(),
            a.cluster_stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let found = frozen.elapsed();

    // After the failover, an event for the victim's user reaches the tab on
    // B: live on B's new subscription, or by a resume after B's audit.
    let deadline = Instant::now() + Duration::from_secs(30);
    let offset = loop {
        match a
            .emit_critical_event(&user, AGENT_THINKING, json!({"i": 1}))
            .await
        {
            Ok(delivery) => break delivery.offset().unwrap(),
            Err(ManagerError::Cluster { .. }) => {
                assert!(
                    Instant::now() < deadline,
                    "no emit for the frozen master's user succeeded within 30 s: {}",
                    a.cluster_stats()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(other) => panic!("untyped failure: {other}"),
        }
    };
    let (mut connected, mut refused) = (0, 0);
    while !tab.seen.iter().any(|(at, _)| *at == offset) {
        assert!(
            Instant::now() < deadline,
            "the tab on b never got the event at {offset}: {}; the tab saw {:?}, \
             notices {:?}, connected again {connected} time(s), refused {refused}",
            b.cluster_stats(),
            tab.seen
                .iter()
                .map(|(at, _)| at.to_string())
                .collect::<Vec<_>>(),
            tab.notices
        );
        if !tab.read(Duration::from_millis(50)).await {
            if tab.connect(&b, b.config().queue_limits()).await {
                connected += 1;
            } else {
                refused += 1;
            }
        }
    }
    eprintln!(
        "frozen master {victim} found in {found:?}; then {} / {}",
        b.cluster_stats(),
        a.cluster_stats()
    );
    a.shutdown().await;
    b.shutdown().await;
}
