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
#![allow(clippy::unwrap_used)]

mod failover;
use failover::node;

use std::time::{Duration, Instant};

use serde_json::json;
use websocket_manager::managers::ClusterWebSocketManager;
use websocket_manager::{events::*, *};
use websocket_manager_test_support::cluster::{RedisClusterGroup, own_cluster_for};
use websocket_manager_test_support::redis::unique_prefix;
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

/// A cluster of the test's own, started on a blocking thread (it waits
/// for the cluster to form); `None` when skipped (said why).
async fn cluster_for(name: &'static str, replicas: usize) -> Option<RedisClusterGroup> {
    tokio::task::spawn_blocking(move || own_cluster_for(name, replicas))
        .await
        .unwrap()
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
    let Some(mut group) = cluster_for(name, if durable { 2 } else { 1 }).await else {
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
    let Some(group) = cluster_for("redis_cluster_migration", 1).await else {
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
