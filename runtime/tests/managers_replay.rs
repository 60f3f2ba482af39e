//! Critical events while offline: retained, replayed in order before anything
//! newer, overflow reported, memory bounded, and the replay-ordering race.
//! (Resuming from an offset: `managers_resume.rs`.)
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use websocket_manager::{events::*, managers::*, socket::*, *};
use websocket_manager::{
    events::{AGENT_COMPLETED, AGENT_EVENTS, AGENT_STARTED},
    managers::UnifiedWebSocketManager,
};

#[test]
fn offline_events_are_replayed_in_order_before_newer_messages() {
    for (name, manager) in both(ManagerConfig::default()) {
        for (i, event) in AGENT_EVENTS.iter().enumerate() {
            let delivery =
                now(manager.emit_critical_event(&alice(), event, json!({"step": i}))).unwrap();
            assert!(delivery.is_queued(), "{name}");
            assert_eq!(delivery.pending(), i + 1, "{name}");
            assert_eq!(
                delivery.offset().map(|o| o.sequence),
                Some(i as u64 + 1),
                "{name}"
            );
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
fn a_history_full_of_pending_events_is_an_error_and_keeps_the_oldest() {
    let config = ManagerConfig::builder()
        .history_capacity(2)
        .build()
        .unwrap();
    let manager = UnifiedWebSocketManager::new(config.clone());
    for (name, manager) in both(config)
        .into_iter()
        .chain([("unified-stats", DynManager::new(manager))])
    {
        now(manager.emit_critical_event(&alice(), AGENT_STARTED, json!(1))).unwrap();
        now(manager.emit_critical_event(&alice(), AGENT_STARTED, json!(2))).unwrap();
        match now(manager.emit_critical_event(&alice(), AGENT_COMPLETED, json!(3))) {
            Err(ManagerError::HistoryFull { user_id, pending }) => {
                assert_eq!((user_id, pending), (alice(), 2), "{name}");
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
            .history_capacity(1)
            .build()
            .unwrap(),
    );
    now(manager.emit_critical_event(&alice(), AGENT_STARTED, json!(1))).unwrap();
    assert!(now(manager.emit_critical_event(&alice(), AGENT_STARTED, json!(2))).is_err());
    let stats = manager.stats();
    assert_eq!((stats.critical_rejected, stats.messages_failed), (1, 1));
    assert_eq!(stats.indexes.history_users, 1);
}

#[test]
fn the_number_of_users_holding_history_is_bounded() {
    let manager = UnifiedWebSocketManager::new(
        ManagerConfig::builder()
            .max_history_users(2)
            .build()
            .unwrap(),
    );
    now(manager.emit_critical_event(&user("a"), AGENT_STARTED, json!(1))).unwrap();
    now(manager.emit_critical_event(&user("b"), AGENT_STARTED, json!(1))).unwrap();
    // A user that already holds history can still add to it.
    now(manager.emit_critical_event(&user("a"), AGENT_STARTED, json!(2))).unwrap();
    match now(manager.emit_critical_event(&user("c"), AGENT_STARTED, json!(1))) {
        Err(ManagerError::HistoryUsersFull { limit }) => assert_eq!(limit, 2),
        other => panic!("{other:?}"),
    }
    let sizes = manager.index_sizes();
    assert_eq!(
        (sizes.users, sizes.history_users),
        (2, 2),
        "the refused user left nothing behind"
    );
    // Connected or not: every critical event is retained, so a connected
    // user without history is refused too, with the same typed error, and
    // its socket receives nothing it could not resume after.
    let (c, mut rc) = connection("c1", &user("c"), None);
    now(manager.add_connection(c)).unwrap();
    assert!(matches!(
        now(manager.emit_critical_event(&user("c"), AGENT_STARTED, json!(1))),
        Err(ManagerError::HistoryUsersFull { limit: 2 })
    ));
    assert!(drain_json(&mut rc).is_empty());
    assert_eq!(manager.stats().critical_rejected, 2);
}

#[test]
fn expired_events_are_pruned_counted_and_announced_not_replayed() {
    let config = ManagerConfig::builder()
        .history_max_age(Duration::from_millis(20))
        .build()
        .unwrap();
    for (name, manager) in both(config.clone()) {
        now(manager.emit_critical_event(&alice(), AGENT_STARTED, json!(1))).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        now(manager.emit_critical_event(&alice(), AGENT_COMPLETED, json!(2))).unwrap();
        let (c, mut receiver) = connection("c1", &alice(), None);
        now(manager.add_connection(c)).unwrap();
        let frames = drain_json(&mut receiver);
        assert_eq!(frames.len(), 2, "{name}: {frames:?}");
        assert_eq!(
            frames[0]["type"], "resync",
            "{name}: the loss is announced first"
        );
        assert_eq!(frames[0]["lost"], 1, "{name}");
        let replayed = envelope(&frames[1]);
        assert_eq!((replayed.data, replayed.sequence), (json!(2), 2), "{name}");
    }
    let manager = UnifiedWebSocketManager::new(config);
    for name in ["a", "b", "c"] {
        now(manager.emit_critical_event(&user(name), AGENT_STARTED, json!(1))).unwrap();
    }
    std::thread::sleep(Duration::from_millis(40));
    assert_eq!(manager.prune_expired(), 3);
    assert_eq!(manager.stats().pending_expired, 3);
    assert_eq!(
        manager.index_sizes().history_users,
        3,
        "each loss is remembered until announced, or for history_max_age"
    );
    std::thread::sleep(Duration::from_millis(40));
    assert_eq!(manager.prune_expired(), 0);
    assert!(
        manager.index_sizes().is_empty(),
        "{}",
        manager.index_sizes()
    );
}

#[test]
fn the_sweep_frees_places_held_by_expired_history() {
    let config = ManagerConfig::builder()
        .max_history_users(1)
        .history_max_age(Duration::from_millis(20))
        .build()
        .unwrap();
    let manager = UnifiedWebSocketManager::new(config);
    let (a, _ra) = connection("a1", &user("a"), None);
    now(manager.add_connection(a)).unwrap();
    now(manager.emit_critical_event(&user("a"), AGENT_STARTED, json!(1))).unwrap();
    std::thread::sleep(Duration::from_millis(40));
    let delivery = now(manager.emit_critical_event(&user("b"), AGENT_STARTED, json!(1))).unwrap();
    assert!(delivery.is_queued());
    assert_eq!(delivery.pending(), 1);
    let stats = manager.stats();
    assert_eq!((stats.history_expired, stats.pending_expired), (1, 0));
}

#[test]
fn a_critical_event_to_a_full_queue_disconnects_it_and_is_kept_for_the_next_connection() {
    let config = ManagerConfig::builder()
        .queue_capacity(3)
        .history_capacity(2)
        .build()
        .unwrap();
    for (name, manager) in both(config.clone()) {
        let (handle, mut stalled) = WebSocketHandle::channel(config.queue_limits());
        now(manager.add_connection(WebSocketConnection::with_id(conn_id("c1"), alice(), handle)))
            .unwrap();
        for i in 0..3 {
            now(manager.send_to_user(&alice(), json!(i))).unwrap();
        }
        let delivery =
            now(manager.emit_critical_event(&alice(), AGENT_STARTED, json!("kept"))).unwrap();
        assert!(delivery.is_queued(), "{name}");
        assert_eq!(delivery.pending(), 1, "{name}");
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

/// Under the drop policy ordinary messages are dropped for a full socket,
/// but a critical event never is: the socket would have a silent gap. It is
/// closed instead, and the event waits for the next connection.
#[test]
fn under_the_drop_policy_a_critical_event_closes_a_full_socket_instead_of_dropping() {
    let config = ManagerConfig::builder()
        .queue_capacity(3)
        .history_capacity(2)
        .slow_consumer_policy(SlowConsumerPolicy::DropMessage)
        .build()
        .unwrap();
    let manager = UnifiedWebSocketManager::new(config.clone());
    let (full, mut full_rx) = WebSocketHandle::channel(config.queue_limits());
    let (fine, mut fine_rx) = WebSocketHandle::channel(config.queue_limits());
    now(manager.add_connection(WebSocketConnection::with_id(conn_id("full"), alice(), full)))
        .unwrap();
    for text in ["a", "b", "c"] {
        now(manager.send_to_user(&alice(), json!(text))).unwrap();
    }
    now(manager.add_connection(WebSocketConnection::with_id(conn_id("fine"), alice(), fine)))
        .unwrap();
    // an ordinary message is dropped for the full socket, which stays
    let delivery = now(manager.send_to_user(&alice(), json!("d"))).unwrap();
    assert_eq!((delivery.recipients(), delivery.skipped()), (1, 1));
    assert!(manager.get_connection(&conn_id("full")).is_some());
    // a critical event closes it instead
    let delivery = now(manager.emit_critical_event(&alice(), AGENT_STARTED, json!(1))).unwrap();
    assert_eq!((delivery.recipients(), delivery.skipped()), (1, 1));
    assert!(manager.get_connection(&conn_id("full")).is_none());
    assert_eq!(
        drain_json(&mut full_rx),
        Vec::<serde_json::Value>::new(),
        "a close frees what was queued"
    );
    let fine_frames = drain_json(&mut fine_rx);
    assert_eq!(fine_frames[0], json!("d"));
    assert_eq!(envelope(&fine_frames[1]).sequence, 1);
    assert_eq!(manager.stats().slow_consumer_disconnects, 1);
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
fn stream_holds_while_history_is_retained_and_a_new_one_is_announced_to_a_resume() {
    let config = ManagerConfig::builder()
        .history_max_age(Duration::from_millis(30))
        .build()
        .unwrap();
    for (name, manager) in both(config.clone()) {
        let (c1, mut r1) = connection("s1", &alice(), None);
        now(manager.add_connection(c1)).unwrap();
        now(manager.emit_critical_event(&alice(), AGENT_STARTED, json!({}))).unwrap();
        let first = envelope(&drain_json(&mut r1)[0]);
        now(manager.remove_connection(&conn_id("s1"))).unwrap();

        // offline, history retained: the stream goes on
        now(manager.emit_critical_event(&alice(), AGENT_COMPLETED, json!({}))).unwrap();
        let (c2, mut r2) = connection("s2", &alice(), None);
        now(manager.add_connection(c2.with_resume(StreamOffset::new(first.stream, 1)))).unwrap();
        let second = envelope(&drain_json(&mut r2)[0]);
        assert_eq!(
            (second.stream, second.sequence),
            (first.stream, 2),
            "{name}"
        );
        now(manager.remove_connection(&conn_id("s2"))).unwrap();

        // history expired and nothing owed: the manager forgets the user; a
        // client resuming from the old stream is told, never left to guess
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            manager
                .get_connection_health(&alice())
                .retained_critical_events,
            0,
            "{name}"
        );
        let (c3, mut r3) = connection("s3", &alice(), None);
        now(manager.add_connection(c3.with_resume(StreamOffset::new(first.stream, 2)))).unwrap();
        now(manager.emit_critical_event(&alice(), AGENT_STARTED, json!({}))).unwrap();
        let frames = drain_json(&mut r3);
        assert_eq!(frames[0]["type"], "resync", "{name}: {frames:?}");
        assert_eq!(frames[0]["reason"], "unknown_stream", "{name}");
        let third = envelope(&frames[1]);
        assert_ne!(third.stream, first.stream, "{name}");
        assert_eq!(third.sequence, 1, "{name}");
        assert_eq!(frames[0]["latest"]["stream"], third.stream, "{name}");
    }
}

#[test]
fn a_connected_users_stream_outlives_its_expired_history() {
    // Every retained event expires while the user stays connected: the next
    // event must go on the same stream, numbered after the last one the
    // connection got, or its cursor would see a gap and close it.
    let config = ManagerConfig::builder()
        .history_max_age(Duration::from_millis(30))
        .build()
        .unwrap();
    for (name, manager) in both(config) {
        let (c, mut receiver) = connection("c1", &alice(), None);
        now(manager.add_connection(c)).unwrap();
        drain_json(&mut receiver);
        let first = now(manager.emit_critical_event(&alice(), AGENT_STARTED, json!(1))).unwrap();
        std::thread::sleep(Duration::from_millis(80));
        let health = manager.get_connection_health(&alice());
        assert_eq!(health.retained_critical_events, 0, "{name}: expired");
        let second = now(manager.emit_critical_event(&alice(), AGENT_STARTED, json!(2))).unwrap();
        assert_eq!(second.recipients(), 1, "{name}: {second}");
        let (first, second) = (first.offset().unwrap(), second.offset().unwrap());
        assert_eq!(
            (second.stream, second.sequence),
            (first.stream, first.sequence + 1),
            "{name}"
        );
        let got: Vec<_> = drain_json(&mut receiver).iter().map(envelope).collect();
        assert_eq!(
            got.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [1, 2],
            "{name}"
        );
        assert_eq!(manager.get_user_connections(&alice()).len(), 1, "{name}");
    }
}
