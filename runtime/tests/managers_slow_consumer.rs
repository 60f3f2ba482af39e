//! One stalled connection never delays the others; it is handled per policy
//! and costs at most its queue's bound.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use websocket_manager::managers::UnifiedWebSocketManager;
use websocket_manager::{managers::*, socket::*, *};

const CAPACITY: usize = 8;
const MESSAGES: usize = 500;

fn config(policy: SlowConsumerPolicy) -> ManagerConfig {
    ManagerConfig::builder()
        .queue_capacity(CAPACITY)
        .history_capacity(CAPACITY - 1)
        .slow_consumer_policy(policy)
        .build()
        .unwrap()
}

/// Three readers that keep up and one that never reads. Every send is ready
/// at its first poll (`now` panics otherwise): nothing waits on the stalled
/// queue.
struct Fixture {
    fast: Vec<OutboundReceiver>,
    stalled: OutboundReceiver,
    stalled_socket: WebSocketHandle,
}

fn fixture(manager: &impl WebSocketManager, limits: QueueLimits) -> Fixture {
    let mut fast = Vec::new();
    for id in ["fast-1", "fast-2", "fast-3"] {
        let (handle, receiver) = WebSocketHandle::channel(limits);
        now(manager.add_connection(WebSocketConnection::with_id(conn_id(id), alice(), handle)))
            .unwrap();
        fast.push(receiver);
    }
    let (stalled_socket, stalled) = WebSocketHandle::channel(limits);
    now(manager.add_connection(WebSocketConnection::with_id(
        conn_id("stalled"),
        alice(),
        stalled_socket.clone(),
    )))
    .unwrap();
    Fixture {
        fast,
        stalled,
        stalled_socket,
    }
}

#[test]
fn disconnect_policy_closes_the_stalled_connection_and_the_others_get_everything() {
    let config = config(SlowConsumerPolicy::Disconnect);
    for (name, manager) in both(config.clone()) {
        let mut f = fixture(&manager, config.queue_limits());
        let mut received = [0usize; 3];
        for i in 0..MESSAGES {
            let delivery = now(manager.send_to_user(&alice(), json!({"i": i}))).unwrap();
            let expected = match i {
                i if i < CAPACITY => Delivery::delivered(4, 0),
                i if i == CAPACITY => Delivery::delivered(3, 1),
                _ => Delivery::delivered(3, 0),
            };
            assert_eq!(delivery, expected, "{name}: send {i}");
            for (count, receiver) in received.iter_mut().zip(&mut f.fast) {
                let frames = drain_json(receiver);
                assert_eq!(frames, vec![json!({"i": i})], "{name}");
                *count += frames.len();
            }
            assert!(
                f.stalled_socket.queue_depth() <= CAPACITY,
                "{name}: bounded"
            );
        }
        assert_eq!(received, [MESSAGES; 3], "{name}");
        assert_eq!(
            try_recv(&mut f.stalled),
            Some(OutboundEvent::Close(CloseReason::slow_consumer())),
            "{name}"
        );
        assert!(
            manager.get_connection(&conn_id("stalled")).is_none(),
            "{name}"
        );
        assert_eq!(
            manager.get_connection_id_by_websocket(&f.stalled_socket),
            None,
            "{name}"
        );
        let health = manager.get_connection_health(&alice());
        assert_eq!(health.slow_consumer_disconnects, 1, "{name}");
        assert_eq!(health.total_connections, 3, "{name}");
        assert_eq!(
            health.messages_sent as usize,
            3 * MESSAGES + CAPACITY,
            "{name}"
        );
    }
}

#[test]
fn drop_policy_keeps_the_stalled_connection_drops_and_counts_its_frames() {
    let config = config(SlowConsumerPolicy::DropMessage);
    for (name, manager) in both(config.clone()) {
        let mut f = fixture(&manager, config.queue_limits());
        for i in 0..MESSAGES {
            let delivery = now(manager.send_to_user(&alice(), json!({"i": i}))).unwrap();
            let skipped = usize::from(i >= CAPACITY);
            assert_eq!(
                delivery,
                Delivery::delivered(4 - skipped, skipped),
                "{name}: send {i}"
            );
            for receiver in &mut f.fast {
                assert_eq!(drain_json(receiver), vec![json!({"i": i})], "{name}");
            }
        }
        assert_eq!(
            f.stalled_socket.queue_depth(),
            CAPACITY,
            "{name}: memory bounded by the queue"
        );
        assert!(!f.stalled_socket.is_closed(), "{name}");
        let health = manager.get_connection_health(&alice());
        assert_eq!(
            health.messages_dropped as usize,
            MESSAGES - CAPACITY,
            "{name}"
        );
        assert_eq!(health.slow_consumer_disconnects, 0, "{name}");
        // The stalled client sees the oldest frames, then nothing was reordered.
        let kept = drain_json(&mut f.stalled);
        assert_eq!(
            kept,
            (0..CAPACITY).map(|i| json!({"i": i})).collect::<Vec<_>>(),
            "{name}"
        );
    }
}

#[test]
fn the_byte_bound_also_triggers_the_policy() {
    let config = ManagerConfig::builder()
        .queue_max_bytes(2048)
        .history_max_bytes(1024)
        .build()
        .unwrap();
    let manager = UnifiedWebSocketManager::new(config.clone());
    let (handle, mut stalled) = WebSocketHandle::channel(config.queue_limits());
    now(manager.add_connection(WebSocketConnection::with_id(conn_id("c1"), alice(), handle)))
        .unwrap();
    let payload = json!("x".repeat(1000)); // 1,002 bytes
    for _ in 0..2 {
        now(manager.send_to_user(&alice(), payload.clone())).unwrap();
    }
    match now(manager.send_to_user(&alice(), payload)) {
        Err(ManagerError::NotDelivered { reason, .. }) => {
            assert_eq!(reason, NotDeliveredReason::QueuesFull)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        try_recv(&mut stalled),
        Some(OutboundEvent::Close(CloseReason::slow_consumer()))
    );
    let stats = manager.stats();
    assert_eq!(
        (stats.slow_consumer_disconnects, stats.messages_failed),
        (1, 1)
    );
    assert!(stats.indexes.is_empty(), "{}", stats.indexes);
}
