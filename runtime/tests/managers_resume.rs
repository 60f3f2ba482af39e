//! Resuming critical events from an offset: everything after it, exactly
//! once and in order, or a resync notice first that says what is gone.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use websocket_manager::{events::*, managers::*, socket::*, *};
use websocket_manager::{
    events::{
        AGENT_COMPLETED, AGENT_STARTED, AGENT_THINKING, ResyncNotice, ResyncReason, TOOL_COMPLETED,
        TOOL_EXECUTING,
    },
    managers::UnifiedWebSocketManager,
};

fn emit(manager: &impl WebSocketManager, event: &str, step: u64) -> Delivery {
    now(manager.emit_critical_event(&alice(), event, json!({"step": step}))).unwrap()
}

fn notice(value: &Value) -> ResyncNotice {
    serde_json::from_value(value.clone()).unwrap()
}

fn steps(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f["type"] != "resync")
        .map(|f| f["data"]["step"].as_u64().unwrap())
        .collect()
}

/// The scenario of the issue: a client reads two events, its socket dies
/// unnoticed while the run goes on (frames pushed into a queue nobody reads),
/// then the transport removes it. Resuming with the last offset it saw
/// gives it every later event exactly once, and what follows.
#[test]
fn a_client_whose_socket_died_unnoticed_resumes_without_a_gap_or_a_repeat() {
    for (name, manager) in both(ManagerConfig::default()) {
        let (c1, mut r1) = connection("c1", &alice(), None);
        now(manager.add_connection(c1)).unwrap();
        emit(&manager, AGENT_STARTED, 1);
        emit(&manager, AGENT_THINKING, 2);
        let seen: Vec<_> = drain_json(&mut r1).iter().map(envelope).collect();
        let last_seen = StreamOffset::new(seen[1].stream, seen[1].sequence);
        // Network gone: these are "delivered" into the dead socket's queue.
        for (step, event) in [(3, TOOL_EXECUTING), (4, TOOL_COMPLETED)] {
            assert!(!emit(&manager, event, step).is_queued(), "{name}");
        }
        drop(r1); // the reset: the queued frames are gone with the socket
        now(manager.remove_connection(&conn_id("c1"))).unwrap();
        let completed = emit(&manager, AGENT_COMPLETED, 5);
        assert!(completed.is_queued(), "{name}");
        assert_eq!(
            completed.offset(),
            Some(StreamOffset::new(last_seen.stream, 5))
        );

        let (c2, mut r2) = connection("c2", &alice(), None);
        now(manager.add_connection(c2.with_resume(last_seen))).unwrap();
        emit(&manager, AGENT_STARTED, 6);
        let frames = drain_json(&mut r2);
        assert_eq!(steps(&frames), [3, 4, 5, 6], "{name}: {frames:?}");
        assert!(frames.iter().all(|f| f["type"] != "resync"), "{name}");
        let sequences: Vec<u64> = frames.iter().map(|f| envelope(f).sequence).collect();
        assert_eq!(sequences, [3, 4, 5, 6], "{name}");
    }
}

#[test]
fn without_an_offset_only_events_no_connection_took_are_replayed() {
    for (name, manager) in both(ManagerConfig::default()) {
        let (c1, _r1) = connection("c1", &alice(), None);
        now(manager.add_connection(c1)).unwrap();
        emit(&manager, AGENT_STARTED, 1);
        now(manager.remove_connection(&conn_id("c1"))).unwrap();
        emit(&manager, AGENT_COMPLETED, 2);
        let (c2, mut r2) = connection("c2", &alice(), None);
        now(manager.add_connection(c2)).unwrap();
        assert_eq!(steps(&drain_json(&mut r2)), [2], "{name}");
        // a second tab without an offset is owed nothing
        let (c3, mut r3) = connection("c3", &alice(), None);
        now(manager.add_connection(c3)).unwrap();
        assert!(drain_json(&mut r3).is_empty(), "{name}");
    }
}

#[test]
fn evicted_history_is_announced_with_what_was_lost_then_the_rest_follows() {
    let config = ManagerConfig::builder()
        .history_capacity(3)
        .build()
        .unwrap();
    for (name, manager) in both(config.clone()) {
        let (c1, _r1) = connection("c1", &alice(), None);
        now(manager.add_connection(c1)).unwrap();
        let first = emit(&manager, AGENT_STARTED, 1).offset().unwrap();
        for step in 2..=5 {
            emit(&manager, AGENT_THINKING, step);
        }
        let (c2, mut r2) = connection("c2", &alice(), None);
        now(manager.add_connection(c2.with_resume(first))).unwrap();
        let frames = drain_json(&mut r2);
        let resync = notice(&frames[0]);
        assert_eq!(resync.reason, ResyncReason::Trimmed, "{name}");
        assert_eq!(resync.requested, Some(first), "{name}");
        assert_eq!(resync.lost, Some(1), "{name}: event 2 was evicted");
        assert_eq!(
            resync.oldest_retained,
            Some(StreamOffset::new(first.stream, 3))
        );
        assert_eq!(resync.latest, StreamOffset::new(first.stream, 5));
        assert_eq!(steps(&frames), [3, 4, 5], "{name}");
        let health = manager.get_connection_health(&alice());
        assert_eq!(health.history_evicted, 2, "{name}");
        assert_eq!(health.retained_critical_events, 3, "{name}");
    }
    let manager = UnifiedWebSocketManager::new(config);
    let (c1, _r1) = connection("c1", &alice(), None);
    now(manager.add_connection(c1)).unwrap();
    for step in 1..=5 {
        emit(&manager, AGENT_THINKING, step);
    }
    assert_eq!(manager.stats().history_evicted, 2);
}

/// The second hole of the issue: an event that expires before the user
/// comes back must not be forgotten together with the user.
#[test]
fn an_event_that_expired_offline_is_announced_with_and_without_an_offset() {
    let config = ManagerConfig::builder()
        .history_max_age(Duration::from_millis(50))
        .build()
        .unwrap();
    for with_offset in [false, true] {
        for (name, manager) in both(config.clone()) {
            let (c1, mut r1) = connection("c1", &alice(), None);
            now(manager.add_connection(c1)).unwrap();
            emit(&manager, AGENT_STARTED, 1);
            let seen = envelope(&drain_json(&mut r1)[0]);
            now(manager.remove_connection(&conn_id("c1"))).unwrap();
            let queued = emit(&manager, AGENT_COMPLETED, 2);
            assert!(queued.is_queued(), "{name}");
            std::thread::sleep(Duration::from_millis(120));
            let health = manager.get_connection_health(&alice());
            assert_eq!(health.history_expired, 2, "{name}");
            assert_eq!(health.pending_critical_events, 0, "{name}");

            let (c2, mut r2) = connection("c2", &alice(), None);
            let c2 = if with_offset {
                c2.with_resume(StreamOffset::new(seen.stream, seen.sequence))
            } else {
                c2
            };
            now(manager.add_connection(c2)).unwrap();
            emit(&manager, AGENT_STARTED, 3);
            let frames = drain_json(&mut r2);
            let resync = notice(&frames[0]);
            assert_eq!(resync.reason, ResyncReason::Trimmed, "{name} {with_offset}");
            assert_eq!(resync.lost, Some(1), "{name} {with_offset}: {frames:?}");
            let next = envelope(&frames[1]);
            assert_eq!(
                (next.stream, next.sequence),
                (seen.stream, 3),
                "{name} {with_offset}: the stream goes on; the loss is said, not implied"
            );
            assert_eq!(frames.len(), 2, "{name} {with_offset}");
        }
    }
}

#[test]
fn after_a_prune_the_user_is_kept_until_the_loss_was_announced() {
    let manager = UnifiedWebSocketManager::new(
        ManagerConfig::builder()
            .history_max_age(Duration::from_millis(50))
            .build()
            .unwrap(),
    );
    emit(&manager, AGENT_STARTED, 1);
    std::thread::sleep(Duration::from_millis(120));
    assert_eq!(manager.prune_expired(), 1);
    assert_eq!(manager.stats().pending_expired, 1);
    let (c, mut r) = connection("c1", &alice(), None);
    now(manager.add_connection(c)).unwrap();
    emit(&manager, AGENT_STARTED, 2);
    let frames = drain_json(&mut r);
    assert_eq!(notice(&frames[0]).lost, Some(1), "{frames:?}");
    assert_eq!(envelope(&frames[1]).sequence, 2);
    assert_eq!(manager.stats().resync_notices, 1);
}

#[test]
fn an_unknown_stream_or_a_restarted_manager_is_announced() {
    for (name, manager) in both(ManagerConfig::default()) {
        emit(&manager, AGENT_STARTED, 1);
        let stale = StreamOffset::new(42, 17); // e.g. from before a restart
        let (c, mut r) = connection("c1", &alice(), None);
        now(manager.add_connection(c.with_resume(stale))).unwrap();
        let frames = drain_json(&mut r);
        let resync = notice(&frames[0]);
        assert_eq!(resync.reason, ResyncReason::UnknownStream, "{name}");
        assert_eq!(resync.lost, None, "{name}: unknown, and said so");
        assert_eq!(resync.requested, Some(stale));
        assert_eq!(steps(&frames), [1], "{name}: what is retained follows");
    }
    // a brand-new manager knows nothing of the client's stream
    let manager = UnifiedWebSocketManager::default();
    let (c, mut r) = connection("c1", &alice(), None);
    now(manager.add_connection(c.with_resume(StreamOffset::new(7, 3)))).unwrap();
    let frames = drain_json(&mut r);
    assert_eq!(frames.len(), 1);
    let resync = notice(&frames[0]);
    assert_eq!(resync.reason, ResyncReason::UnknownStream);
    assert_eq!(resync.oldest_retained, None);
    assert_eq!(resync.latest.sequence, 0);
    let next = emit(&manager, AGENT_STARTED, 1).offset().unwrap();
    assert_eq!(
        next.stream, resync.latest.stream,
        "the notice names the new stream"
    );
}

#[test]
fn an_offset_ahead_of_the_stream_is_announced() {
    let manager = UnifiedWebSocketManager::default();
    let first = emit(&manager, AGENT_STARTED, 1).offset().unwrap();
    let (c, mut r) = connection("c1", &alice(), None);
    now(manager.add_connection(c.with_resume(StreamOffset::new(first.stream, 9)))).unwrap();
    let frames = drain_json(&mut r);
    assert_eq!(notice(&frames[0]).reason, ResyncReason::Ahead);
    assert_eq!(steps(&frames), [1]);
}

#[test]
fn resuming_at_the_latest_offset_replays_nothing() {
    let manager = UnifiedWebSocketManager::default();
    let (c1, _r1) = connection("c1", &alice(), None);
    now(manager.add_connection(c1)).unwrap();
    let latest = emit(&manager, AGENT_STARTED, 1).offset().unwrap();
    let (c2, mut r2) = connection("c2", &alice(), None);
    now(manager.add_connection(c2.with_resume(latest))).unwrap();
    assert!(drain_json(&mut r2).is_empty());
    assert_eq!(manager.stats().replayed, 0);
}

/// A replay that does not fit the socket's queue would leave a silent gap:
/// the connection is refused, nothing is registered, and the history is
/// intact for the next attempt.
#[test]
fn a_replay_that_does_not_fit_refuses_the_connection_and_keeps_the_history() {
    let manager = UnifiedWebSocketManager::default();
    for step in 1..=3 {
        emit(&manager, AGENT_THINKING, step);
    }
    let (tiny, mut tiny_rx) = WebSocketHandle::channel(QueueLimits::new(2, 1 << 20));
    match now(manager.add_connection(WebSocketConnection::with_id(conn_id("t"), alice(), tiny))) {
        Err(ManagerError::ReplayFailed {
            connection_id,
            replayed,
            total,
        }) => assert_eq!((connection_id, replayed, total), (conn_id("t"), 2, 3)),
        other => panic!("{other:?}"),
    }
    assert!(manager.get_connection(&conn_id("t")).is_none());
    assert_eq!(manager.index_sizes().connections, 0);
    assert_eq!(manager.index_sizes().sockets, 0);
    let _partial = drain_frames(&mut tiny_rx);
    assert!(matches!(
        try_recv(&mut tiny_rx),
        None | Some(OutboundEvent::Close(_))
    ));
    let (c, mut r) = connection("c", &alice(), None);
    now(manager.add_connection(c)).unwrap();
    assert_eq!(steps(&drain_json(&mut r)), [1, 2, 3]);
}

#[test]
fn an_isolated_manager_refuses_another_users_resume() {
    let (_, manager) = both(ManagerConfig::default()).pop().unwrap();
    emit(&manager, AGENT_STARTED, 1);
    let (c, mut r) = connection("m1", &user("mallory"), None);
    assert!(matches!(
        now(manager.add_connection(c.with_resume(StreamOffset::new(1, 0)))),
        Err(ManagerError::IsolationViolation { .. })
    ));
    assert!(drain_json(&mut r).is_empty());
}

#[test]
fn health_reports_the_retained_history() {
    for (name, manager) in both(ManagerConfig::default()) {
        assert_eq!(manager.get_connection_health(&alice()).latest_offset, None);
        let first = emit(&manager, AGENT_STARTED, 1).offset().unwrap();
        let second = emit(&manager, AGENT_COMPLETED, 2).offset().unwrap();
        let health = manager.get_connection_health(&alice());
        assert_eq!(health.latest_offset, Some(second), "{name}");
        assert_eq!(health.oldest_retained, Some(first), "{name}");
        assert_eq!(health.retained_critical_events, 2, "{name}");
        assert_eq!(health.pending_critical_events, 2, "{name}");
        assert!(health.retained_bytes > 100, "{name}");
    }
}
