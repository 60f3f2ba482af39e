//! Critical events while offline: buffered, replayed in order before anything
//! newer, overflow reported, memory bounded, and the replay-ordering race.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use websocket_manager::managers::{
    AGENT_COMPLETED, AGENT_EVENTS, AGENT_STARTED, CriticalEnvelope, UnifiedWebSocketManager,
};
use websocket_manager::*;

#[test]
fn offline_events_are_replayed_in_order_before_newer_messages() {
    for (name, manager) in both(ManagerConfig::default()) {
        for (i, event) in AGENT_EVENTS.iter().enumerate() {
            let delivery =
                now(manager.emit_critical_event(&alice(), event, json!({"step": i}))).unwrap();
            assert_eq!(delivery, Delivery::Queued { pending: i + 1 }, "{name}");
        }
        assert_eq!(
            manager
                .get_connection_health(&alice())
                .pending_critical_events,
            5,
            "{name}"
        );

        let (c, mut receiver) = connection("c1", &alice(), None);
        now(manager.add_connection(c)).unwrap();
        now(manager.send_to_user(&alice(), json!({"type": "newer"}))).unwrap();
        now(manager.emit_critical_event(&alice(), AGENT_STARTED, json!({"run": 2}))).unwrap();

        let frames = drain_json(&mut receiver);
        assert_eq!(frames.len(), 7, "{name}");
        for (i, event) in AGENT_EVENTS.iter().enumerate() {
            let replayed = envelope(&frames[i]);
            assert_eq!(replayed.event_type, *event, "{name}");
            assert_eq!(replayed.sequence, i as u64 + 1, "{name}");
            assert_eq!(replayed.data, json!({"step": i}), "{name}");
        }
        assert_eq!(frames[5], json!({"type": "newer"}), "{name}");
        assert_eq!(
            envelope(&frames[6]).sequence,
            6,
            "{name}: sequence continues"
        );
        assert_eq!(
            manager
                .get_connection_health(&alice())
                .pending_critical_events,
            0,
            "{name}"
        );
    }
}

#[test]
fn a_full_buffer_is_an_error_and_keeps_the_oldest_events() {
    let config = ManagerConfig::builder()
        .pending_capacity(2)
        .build()
        .unwrap();
    let manager = UnifiedWebSocketManager::new(config.clone());
    for (name, manager) in both(config).into_iter().chain([(
        "unified-stats",
        Arc::new(manager) as Arc<dyn WebSocketManager>,
    )]) {
        now(manager.emit_critical_event(&alice(), AGENT_STARTED, json!(1))).unwrap();
        now(manager.emit_critical_event(&alice(), AGENT_STARTED, json!(2))).unwrap();
        match now(manager.emit_critical_event(&alice(), AGENT_COMPLETED, json!(3))) {
            Err(ManagerError::PendingBufferFull { user_id, capacity }) => {
                assert_eq!((user_id, capacity), (alice(), 2), "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
        assert_eq!(
            manager.get_connection_health(&alice()).messages_failed,
            1,
            "{name}"
        );
        let (c, mut receiver) = connection("c1", &alice(), None);
        now(manager.add_connection(c)).unwrap();
        let replayed: Vec<_> = drain_json(&mut receiver).iter().map(envelope).collect();
        let data: Vec<_> = replayed.iter().map(|e| e.data.clone()).collect();
        assert_eq!(data, vec![json!(1), json!(2)], "{name}");
        assert_eq!(
            replayed.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [1, 2],
            "{name}"
        );
    }
}

#[test]
fn refusal_is_counted_in_the_manager_stats() {
    let manager = UnifiedWebSocketManager::new(
        ManagerConfig::builder()
            .pending_capacity(1)
            .build()
            .unwrap(),
    );
    now(manager.emit_critical_event(&alice(), AGENT_STARTED, json!(1))).unwrap();
    assert!(now(manager.emit_critical_event(&alice(), AGENT_STARTED, json!(2))).is_err());
    let stats = manager.stats();
    assert_eq!((stats.pending_rejected, stats.messages_failed), (1, 1));
    assert_eq!(stats.indexes.pending_users, 1);
}

#[test]
fn the_number_of_offline_users_with_pending_events_is_bounded() {
    let manager = UnifiedWebSocketManager::new(
        ManagerConfig::builder()
            .max_pending_users(2)
            .build()
            .unwrap(),
    );
    now(manager.emit_critical_event(&user("a"), AGENT_STARTED, json!(1))).unwrap();
    now(manager.emit_critical_event(&user("b"), AGENT_STARTED, json!(1))).unwrap();
    // A user that already has a buffer can still add to it.
    now(manager.emit_critical_event(&user("a"), AGENT_STARTED, json!(2))).unwrap();
    match now(manager.emit_critical_event(&user("c"), AGENT_STARTED, json!(1))) {
        Err(ManagerError::PendingUsersFull { limit }) => assert_eq!(limit, 2),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        manager.index_sizes().users,
        2,
        "the refused user left nothing behind"
    );
    // A connected user is not limited: its events are delivered.
    let (c, _r) = connection("c1", &user("c"), None);
    now(manager.add_connection(c)).unwrap();
    assert!(
        !now(manager.emit_critical_event(&user("c"), AGENT_STARTED, json!(1)))
            .unwrap()
            .is_queued()
    );
    // Replaying a user's buffer frees its place.
    let (a, _ra) = connection("a1", &user("a"), None);
    now(manager.add_connection(a)).unwrap();
    now(manager.remove_connection(&conn_id("c1"))).unwrap();
    now(manager.emit_critical_event(&user("c"), AGENT_STARTED, json!(2))).unwrap();
    assert_eq!(manager.stats().pending_rejected, 1);
}

#[test]
fn expired_events_are_pruned_counted_and_not_replayed() {
    let config = ManagerConfig::builder()
        .pending_max_age(Duration::from_millis(20))
        .build()
        .unwrap();
    for (name, manager) in both(config.clone()) {
        now(manager.emit_critical_event(&alice(), AGENT_STARTED, json!(1))).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        now(manager.emit_critical_event(&alice(), AGENT_COMPLETED, json!(2))).unwrap();
        let (c, mut receiver) = connection("c1", &alice(), None);
        now(manager.add_connection(c)).unwrap();
        let replayed: Vec<_> = drain_json(&mut receiver).iter().map(envelope).collect();
        assert_eq!(replayed.len(), 1, "{name}");
        assert_eq!(replayed[0].data, json!(2), "{name}");
        assert_eq!(
            replayed[0].sequence, 2,
            "{name}: the gap tells the client one was lost"
        );
    }
    let manager = UnifiedWebSocketManager::new(config);
    for name in ["a", "b", "c"] {
        now(manager.emit_critical_event(&user(name), AGENT_STARTED, json!(1))).unwrap();
    }
    std::thread::sleep(Duration::from_millis(40));
    assert_eq!(manager.prune_expired(), 3);
    assert_eq!(manager.stats().pending_expired, 3);
    assert!(
        manager.index_sizes().is_empty(),
        "{}",
        manager.index_sizes()
    );
}

#[test]
fn the_sweep_frees_places_held_by_expired_buffers() {
    let config = ManagerConfig::builder()
        .max_pending_users(1)
        .pending_max_age(Duration::from_millis(20))
        .build()
        .unwrap();
    let manager = UnifiedWebSocketManager::new(config);
    now(manager.emit_critical_event(&user("a"), AGENT_STARTED, json!(1))).unwrap();
    std::thread::sleep(Duration::from_millis(40));
    let delivery = now(manager.emit_critical_event(&user("b"), AGENT_STARTED, json!(1))).unwrap();
    assert_eq!(delivery, Delivery::Queued { pending: 1 });
    assert_eq!(manager.stats().pending_expired, 1);
}

#[test]
fn a_critical_event_to_a_full_queue_disconnects_it_and_is_kept_for_the_next_connection() {
    let config = ManagerConfig::builder()
        .queue_capacity(2)
        .pending_capacity(2)
        .build()
        .unwrap();
    for (name, manager) in both(config.clone()) {
        let (handle, mut stalled) = WebSocketHandle::channel(config.queue_limits());
        now(manager.add_connection(WebSocketConnection::with_id(conn_id("c1"), alice(), handle)))
            .unwrap();
        now(manager.send_to_user(&alice(), json!(1))).unwrap();
        now(manager.send_to_user(&alice(), json!(2))).unwrap();
        let delivery =
            now(manager.emit_critical_event(&alice(), AGENT_STARTED, json!("kept"))).unwrap();
        assert_eq!(delivery, Delivery::Queued { pending: 1 }, "{name}");
        assert_eq!(
            try_recv(&mut stalled),
            Some(OutboundEvent::Close(CloseReason::slow_consumer())),
            "{name}"
        );
        assert!(manager.get_connection(&conn_id("c1")).is_none(), "{name}");

        let (handle, mut fresh) = WebSocketHandle::channel(config.queue_limits());
        now(manager.add_connection(WebSocketConnection::with_id(conn_id("c2"), alice(), handle)))
            .unwrap();
        let replayed: Vec<_> = drain_json(&mut fresh).iter().map(envelope).collect();
        assert_eq!(replayed.len(), 1, "{name}");
        assert_eq!(replayed[0].data, json!("kept"), "{name}");
    }
}

#[test]
fn under_the_drop_policy_pending_events_are_flushed_before_newer_ones() {
    let config = ManagerConfig::builder()
        .queue_capacity(2)
        .pending_capacity(2)
        .slow_consumer_policy(SlowConsumerPolicy::DropMessage)
        .build()
        .unwrap();
    let manager = UnifiedWebSocketManager::new(config.clone());
    let (handle, mut receiver) = WebSocketHandle::channel(config.queue_limits());
    now(manager.add_connection(WebSocketConnection::with_id(conn_id("c1"), alice(), handle)))
        .unwrap();
    now(manager.send_to_user(&alice(), json!("a"))).unwrap();
    now(manager.send_to_user(&alice(), json!("b"))).unwrap();
    // Queue full, connection kept: the event waits.
    let delivery = now(manager.emit_critical_event(&alice(), AGENT_STARTED, json!(1))).unwrap();
    assert_eq!(delivery, Delivery::Queued { pending: 1 });
    assert_eq!(drain_json(&mut receiver), vec![json!("a"), json!("b")]);
    // The next event flushes the pending one first.
    now(manager.emit_critical_event(&alice(), AGENT_COMPLETED, json!(2))).unwrap();
    let events: Vec<_> = drain_json(&mut receiver).iter().map(envelope).collect();
    assert_eq!(
        events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(manager.index_sizes().pending_users, 0);
}

/// Events emitted while a connection is being added are neither overtaken by
/// nor overtake the replayed ones, and an ordinary message never arrives
/// before a replayed event.
#[test]
fn replay_ordering_race() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    const EVENTS: u64 = 200;
    for round in 0..30u64 {
        let manager = Arc::new(UnifiedWebSocketManager::default());
        let (handle, mut receiver) = WebSocketHandle::channel(manager.config().queue_limits());
        let connection = WebSocketConnection::with_id(conn_id("c1"), alice(), handle);
        // The connection is added while the emitter is around event `target`.
        let target = (round * 7) % EVENTS;
        let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (queued_max, plain_sent) = runtime.block_on(async {
            let emitter = tokio::spawn({
                let manager = manager.clone();
                let progress = progress.clone();
                async move {
                    let mut queued_max = 0;
                    for i in 1..=EVENTS {
                        let delivery = manager
                            .emit_critical_event(&alice(), AGENT_STARTED, json!(i))
                            .await
                            .unwrap();
                        if delivery.is_queued() {
                            queued_max = i;
                        }
                        progress.store(i, std::sync::atomic::Ordering::SeqCst);
                        tokio::task::yield_now().await;
                    }
                    queued_max
                }
            });
            let sender = tokio::spawn({
                let manager = manager.clone();
                async move {
                    let mut sent = 0;
                    for _ in 0..EVENTS {
                        if manager.send_to_user(&alice(), json!("plain")).await.is_ok() {
                            sent += 1;
                        }
                        tokio::task::yield_now().await;
                    }
                    sent
                }
            });
            let adder = tokio::spawn({
                let manager = manager.clone();
                let progress = progress.clone();
                async move {
                    while progress.load(std::sync::atomic::Ordering::SeqCst) < target {
                        tokio::task::yield_now().await;
                    }
                    manager.add_connection(connection).await.unwrap();
                }
            });
            adder.await.unwrap();
            let queued_max = emitter.await.unwrap();
            (queued_max, sender.await.unwrap())
        });
        let frames = drain_json(&mut receiver);
        let sequences: Vec<u64> = frames
            .iter()
            .filter(|f| f.get("critical").is_some())
            .map(|f| envelope(f).sequence)
            .collect();
        assert_eq!(
            sequences,
            (1..=EVENTS).collect::<Vec<_>>(),
            "round {round}: every event, in order"
        );
        let first_plain = frames
            .iter()
            .position(|f| *f == json!("plain"))
            .unwrap_or(frames.len());
        assert!(
            first_plain >= queued_max as usize,
            "round {round}: an ordinary message overtook replayed event {queued_max} (at {first_plain})"
        );
        assert_eq!(frames.len() as u64, EVENTS + plain_sent, "round {round}");
    }
}

#[test]
fn stream_holds_across_an_offline_gap_and_changes_only_when_nothing_was_owed() {
    for (name, manager) in both(ManagerConfig::default()) {
        let (c1, mut r1) = connection("s1", &alice(), None);
        now(manager.add_connection(c1)).unwrap();
        now(manager.emit_critical_event(&alice(), AGENT_STARTED, json!({}))).unwrap();
        let first = envelope(&drain_json(&mut r1)[0]);
        now(manager.remove_connection(&conn_id("s1"))).unwrap();

        // offline with nothing pending: the manager forgets the user, and a
        // new stream tells the client that nothing from the old one is owed
        let (c2, mut r2) = connection("s2", &alice(), None);
        now(manager.add_connection(c2)).unwrap();
        now(manager.emit_critical_event(&alice(), AGENT_STARTED, json!({}))).unwrap();
        let second = envelope(&drain_json(&mut r2)[0]);
        assert_ne!(second.stream, first.stream, "{name}");
        assert_eq!(second.sequence, 1, "{name}");
        now(manager.remove_connection(&conn_id("s2"))).unwrap();

        // events emitted while offline open a stream that the replay and
        // every later event continue, without a gap
        now(manager.emit_critical_event(&alice(), AGENT_STARTED, json!({}))).unwrap();
        now(manager.emit_critical_event(&alice(), AGENT_COMPLETED, json!({}))).unwrap();
        let (c3, mut r3) = connection("s3", &alice(), None);
        now(manager.add_connection(c3)).unwrap();
        now(manager.emit_critical_event(&alice(), AGENT_STARTED, json!({}))).unwrap();
        let frames: Vec<CriticalEnvelope> = drain_json(&mut r3).iter().map(envelope).collect();
        assert_ne!(frames[0].stream, second.stream, "{name}");
        assert!(
            frames.iter().all(|e| e.stream == frames[0].stream),
            "{name}"
        );
        let sequences: Vec<u64> = frames.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, [1, 2, 3], "{name}");
    }
}
