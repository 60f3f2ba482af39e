//! The cluster manager under Redis Sentinel, against real processes: one
//! primary, two replicas and three sentinels on loopback
//! (`websocket_manager_test_support::sentinel`). The primary is SIGKILLed
//! mid-run while critical events keep flowing: emits fail with typed errors
//! for the failover's duration, the nodes follow the new primary by
//! themselves, and with the durability setting on
//! (`ClusterConfig::wait_for_replicas(1)`) every acknowledged event is still
//! there: a client that resumes from its offsets gets each of them exactly
//! once, in order, and no offset ever names two different events. With the
//! setting off an acknowledged event may go with the primary: then the
//! client is told (`resync`), never left with a silent gap, and still no
//! offset names two events.
#![allow(clippy::unwrap_used)]

mod failover;
use failover::{capture_logs, node};

use std::time::{Duration, Instant};

use serde_json::json;
use websocket_manager::{events::*, *};
use websocket_manager_test_support::redis::{redis_server_available, unique_prefix};
use websocket_manager_test_support::sentinel::SentinelGroup;
use websocket_manager_test_support::tab::ResumingTab;

fn alice() -> UserId {
    UserId::new("alice").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_mid_run_loses_no_acknowledged_event_with_durability_on() {
    primary_killed_mid_run(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_mid_run_announces_any_loss_with_durability_off() {
    primary_killed_mid_run(false).await;
}

async fn primary_killed_mid_run(durable: bool) {
    capture_logs();
    if !redis_server_available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but there is no redis-server binary (.ci/ensure-redis installs it)"
        );
        eprintln!("SKIPPED: no redis-server binary (apt-get install redis-server)");
        return;
    }
    let mut group = tokio::task::spawn_blocking(SentinelGroup::start)
        .await
        .unwrap();
    let url = group.url();
    let prefix = unique_prefix("sentinel");
    let a = node(&url, &prefix, "a", durable).await;
    let b = node(&url, &prefix, "b", durable).await;
    let mut tab = ResumingTab::new(alice());
    let mut reconnects = 0usize;
    assert!(tab.connect(&b, b.config().queue_limits()).await);

    let mut acknowledged: Vec<(StreamOffset, i64)> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut killed_at = None;
    let started = Instant::now();
    let mut i = 0i64;
    // Emit until 20 events were acknowledged after the kill (or 40 s).
    while acknowledged
        .iter()
        .filter(|(_, n)| killed_at.is_some_and(|k| *n > k))
        .count()
        < 20
    {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "no recovery within 40 s: {} errors, the last: {:?}",
            errors.len(),
            errors.last()
        );
        if i == 10 {
            group.kill_primary();
            killed_at = Some(i);
        }
        match a
            .emit_critical_event(&alice(), AGENT_THINKING, json!({"i": i}))
            .await
        {
            Ok(delivery) => acknowledged.push((delivery.offset().unwrap(), i)),
            Err(error @ ManagerError::Cluster { .. }) => errors.push(error.to_string()),
            Err(other) => panic!("untyped failure: {other}"),
        }
        i += 1;
        if !tab.read(Duration::from_millis(30)).await {
            // The connection ended (a resume): come back with the offset.
            reconnects += 1;
            let node = if reconnects.is_multiple_of(2) { &a } else { &b };
            let _ = tab.connect(node, node.config().queue_limits()).await;
        }
    }
    assert!(!errors.is_empty(), "the failover was never seen");
    // A last resume from the tab's offset brings it up to date.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tab.read(Duration::from_millis(300)).await;
    tab.disconnect();
    assert!(
        tab.connect(&b, b.config().queue_limits()).await,
        "a final resume"
    );
    tab.read(Duration::from_millis(500)).await;

    // No offset named two events (the tab checks as it reads); within a
    // stream, offsets only grow.
    for pair in tab.seen.windows(2) {
        let ((x, _), (y, _)) = (&pair[0], &pair[1]);
        assert!(
            x.stream != y.stream || y.sequence == x.sequence + 1,
            "{x} then {y}: a gap or a repeat"
        );
    }
    if !durable {
        // An acknowledged event may have gone with the primary; then the
        // tab was told. What reached it, reached it once.
        let missing = acknowledged
            .iter()
            .filter(|(_, n)| !tab.seen.iter().any(|(_, d)| d["i"] == *n))
            .count();
        assert!(
            missing == 0 || !tab.notices.is_empty(),
            "{missing} acknowledged events lost without a resync notice"
        );
        for (_, n) in &acknowledged {
            let got = tab.seen.iter().filter(|(_, d)| d["i"] == *n).count();
            assert!(got <= 1, "event {n} seen {got} times");
        }
    }
    // Every acknowledged event reached the tab once, with its offset.
    for (offset, n) in acknowledged.iter().filter(|_| durable) {
        let got: Vec<_> = tab.seen.iter().filter(|(_, d)| d["i"] == *n).collect();
        assert_eq!(
            got.len(),
            1,
            "event {n} at {offset}: {got:?}; notices {:?}",
            tab.notices
        );
        assert_eq!(got[0].0, *offset, "event {n}");
    }
    eprintln!(
        "sentinel failover (durable: {durable}): {} acknowledged, {} typed errors, {} reconnects, notices {:?}",
        acknowledged.len(),
        errors.len(),
        reconnects,
        tab.notices
    );
    a.shutdown().await;
    b.shutdown().await;
}
