//! Every method of both reference managers, including every error path.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;

use common::*;
use serde_json::json;
use websocket_manager::{events::*, managers::*, socket::*, startup::*, *};
use websocket_manager::{
    events::{AGENT_STARTED, TOOL_EXECUTING},
    managers::{IsolatedWebSocketManager, UnifiedWebSocketManager},
};

fn config() -> ManagerConfig {
    ManagerConfig::default()
}

#[test]
fn add_then_look_up_by_id_user_socket_and_thread() {
    for (name, manager) in both(config()) {
        let (connection, mut receiver) = connection("c1", &alice(), Some("t1"));
        let socket = connection.websocket.clone();
        now(manager.add_connection(connection)).unwrap();

        let found = manager.get_connection(&conn_id("c1")).expect(name);
        assert_eq!(found.user_id, alice(), "{name}");
        assert_eq!(found.thread_id, Some(thread("t1")), "{name}");
        assert_eq!(
            manager.get_user_connections(&alice()),
            HashSet::from([conn_id("c1")]),
            "{name}"
        );
        assert!(manager.is_connection_active(&alice()), "{name}");
        assert_eq!(
            manager.get_connection_id_by_websocket(&socket),
            Some(conn_id("c1")),
            "{name}"
        );
        let delivery = now(manager.send_to_thread(&thread("t1"), json!({"n": 1}))).unwrap();
        assert_eq!(delivery, Delivery::delivered(1, 0), "{name}");
        assert_eq!(drain_json(&mut receiver), vec![json!({"n": 1})], "{name}");
    }
}

#[test]
fn unknown_ids_answer_none_empty_or_false() {
    for (name, manager) in both(config()) {
        let (other_socket, _receiver) = socket();
        assert!(manager.get_connection(&conn_id("nope")).is_none(), "{name}");
        assert!(
            now(manager.remove_connection(&conn_id("nope"))).is_none(),
            "{name}"
        );
        assert!(manager.get_user_connections(&alice()).is_empty(), "{name}");
        assert!(!manager.is_connection_active(&alice()), "{name}");
        assert_eq!(
            manager.get_connection_id_by_websocket(&other_socket),
            None,
            "{name}"
        );
        assert!(
            !manager.update_connection_thread(&conn_id("nope"), thread("t")),
            "{name}"
        );
        let health = manager.get_connection_health(&alice());
        assert_eq!(health, ConnectionHealth::empty(alice()), "{name}");
    }
}

#[test]
fn duplicate_connection_id_is_refused_and_registers_nothing() {
    for (name, manager) in both(config()) {
        let (first, _r1) = connection("c1", &alice(), Some("t1"));
        now(manager.add_connection(first)).unwrap();
        let (second, _r2) = connection("c1", &alice(), Some("t2"));
        let second_socket = second.websocket.clone();
        match now(manager.add_connection(second)) {
            Err(ManagerError::DuplicateConnection(id)) => assert_eq!(id, conn_id("c1"), "{name}"),
            other => panic!("{name}: {other:?}"),
        }
        assert_eq!(
            manager.get_connection_id_by_websocket(&second_socket),
            None,
            "{name}"
        );
        assert_eq!(
            manager.get_connection(&conn_id("c1")).unwrap().thread_id,
            Some(thread("t1")),
            "{name}"
        );
        assert!(
            matches!(
                now(manager.send_to_thread(&thread("t2"), json!(1))),
                Err(ManagerError::NotDelivered {
                    reason: NotDeliveredReason::NoThreadConnections,
                    ..
                })
            ),
            "{name}"
        );
        assert_eq!(manager.get_user_connections(&alice()).len(), 1, "{name}");
    }
}

#[test]
fn a_socket_registered_twice_is_refused_with_the_existing_id() {
    for (name, manager) in both(config()) {
        let (first, _r1) = connection("c1", &alice(), None);
        let socket = first.websocket.clone();
        now(manager.add_connection(first)).unwrap();
        let again = WebSocketConnection::with_id(conn_id("c2"), alice(), socket.clone());
        match now(manager.add_connection(again)) {
            Err(ManagerError::SocketAlreadyRegistered {
                socket: s,
                existing,
            }) => {
                assert_eq!(s, socket.id(), "{name}");
                assert_eq!(existing, conn_id("c1"), "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
        assert!(manager.get_connection(&conn_id("c2")).is_none(), "{name}");
        assert_eq!(
            manager.get_user_connections(&alice()),
            HashSet::from([conn_id("c1")]),
            "{name}"
        );
    }
}

#[test]
fn per_user_cap_is_enforced_with_a_typed_error() {
    let capped = ManagerConfig::builder()
        .max_connections_per_user(2)
        .build()
        .unwrap();
    for (name, manager) in both(capped) {
        let mut receivers = Vec::new();
        for id in ["c1", "c2"] {
            let (c, r) = connection(id, &alice(), None);
            receivers.push(r);
            now(manager.add_connection(c)).unwrap();
        }
        let (third, _r3) = connection("c3", &alice(), Some("t3"));
        let third_socket = third.websocket.clone();
        match now(manager.add_connection(third)) {
            Err(ManagerError::ConnectionLimit { user_id, limit }) => {
                assert_eq!((user_id, limit), (alice(), 2), "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
        assert!(manager.get_connection(&conn_id("c3")).is_none(), "{name}");
        assert_eq!(
            manager.get_connection_id_by_websocket(&third_socket),
            None,
            "{name}"
        );
        // Freeing a place lets the next one in.
        now(manager.remove_connection(&conn_id("c1"))).unwrap();
        let (fourth, _r4) = connection("c4", &alice(), None);
        now(manager.add_connection(fourth)).unwrap();
        // A socket that died unnoticed does not hold a place either.
        drop(receivers.pop());
        let (fifth, _r5) = connection("c5", &alice(), None);
        now(manager.add_connection(fifth)).unwrap();
        assert!(
            manager.get_connection(&conn_id("c2")).is_none(),
            "{name}: dead c2 was evicted"
        );
        let (sixth, _r6) = connection("c6", &alice(), None);
        assert!(
            matches!(
                now(manager.add_connection(sixth)),
                Err(ManagerError::ConnectionLimit { .. })
            ),
            "{name}: live connections still count"
        );
    }
}

#[test]
fn remove_clears_every_index_and_closes_the_socket() {
    for (name, manager) in both(config()) {
        let (c, mut receiver) = connection("c1", &alice(), Some("t1"));
        let socket = c.websocket.clone();
        now(manager.add_connection(c)).unwrap();
        let removed = now(manager.remove_connection(&conn_id("c1"))).expect(name);
        assert_eq!(removed.connection_id, conn_id("c1"), "{name}");
        assert_eq!(
            try_recv(&mut receiver),
            Some(OutboundEvent::Close(CloseReason::normal())),
            "{name}"
        );
        assert!(manager.get_connection(&conn_id("c1")).is_none(), "{name}");
        assert!(manager.get_user_connections(&alice()).is_empty(), "{name}");
        assert_eq!(
            manager.get_connection_id_by_websocket(&socket),
            None,
            "{name}"
        );
        assert!(!manager.is_connection_active(&alice()), "{name}");
        assert!(
            matches!(
                now(manager.send_to_thread(&thread("t1"), json!(1))),
                Err(ManagerError::NotDelivered {
                    reason: NotDeliveredReason::NoThreadConnections,
                    ..
                })
            ),
            "{name}"
        );
        assert!(
            now(manager.remove_connection(&conn_id("c1"))).is_none(),
            "{name}"
        );
    }
    let unified = UnifiedWebSocketManager::default();
    let (c, _r) = connection("c1", &alice(), Some("t1"));
    now(unified.add_connection(c)).unwrap();
    now(unified.remove_connection(&conn_id("c1"))).unwrap();
    assert!(
        unified.index_sizes().is_empty(),
        "{}",
        unified.index_sizes()
    );
}

#[test]
fn update_connection_thread_moves_between_thread_sets() {
    for (name, manager) in both(config()) {
        let (c1, mut r1) = connection("c1", &alice(), Some("t1"));
        let (c2, mut r2) = connection("c2", &alice(), Some("t1"));
        now(manager.add_connection(c1)).unwrap();
        now(manager.add_connection(c2)).unwrap();
        assert!(
            manager.update_connection_thread(&conn_id("c1"), thread("t2")),
            "{name}"
        );
        assert_eq!(
            manager.get_connection(&conn_id("c1")).unwrap().thread_id,
            Some(thread("t2")),
            "{name}"
        );
        assert!(
            manager.update_connection_thread(&conn_id("c1"), thread("t2")),
            "{name}: same thread"
        );

        now(manager.send_to_thread(&thread("t2"), json!("to t2"))).unwrap();
        now(manager.send_to_thread(&thread("t1"), json!("to t1"))).unwrap();
        assert_eq!(drain_json(&mut r1), vec![json!("to t2")], "{name}");
        assert_eq!(drain_json(&mut r2), vec![json!("to t1")], "{name}");

        // The last connection leaving a thread removes the thread.
        assert!(
            manager.update_connection_thread(&conn_id("c2"), thread("t2")),
            "{name}"
        );
        assert!(
            matches!(
                now(manager.send_to_thread(&thread("t1"), json!(1))),
                Err(ManagerError::NotDelivered {
                    reason: NotDeliveredReason::NoThreadConnections,
                    ..
                })
            ),
            "{name}"
        );
        let delivery = now(manager.send_to_thread(&thread("t2"), json!(2))).unwrap();
        assert_eq!(delivery.recipients(), 2, "{name}");
    }
}

#[test]
fn send_to_user_serializes_once_and_shares_the_bytes() {
    for (name, manager) in both(config()) {
        let mut receivers = Vec::new();
        for id in ["c1", "c2", "c3"] {
            let (c, r) = connection(id, &alice(), None);
            receivers.push(r);
            now(manager.add_connection(c)).unwrap();
        }
        let delivery = now(manager.send_to_user(&alice(), json!({"type": "hello"}))).unwrap();
        assert_eq!(delivery, Delivery::delivered(3, 0), "{name}");
        let frames: Vec<TextFrame> = receivers.iter_mut().flat_map(drain_frames).collect();
        assert_eq!(frames.len(), 3, "{name}");
        assert!(
            frames.iter().all(|f| f.as_str() == r#"{"type":"hello"}"#),
            "{name}"
        );
        let pointer = frames[0].as_bytes().as_ptr();
        assert!(
            frames.iter().all(|f| f.as_bytes().as_ptr() == pointer),
            "{name}: bytes copied"
        );
        assert_eq!(
            manager.get_connection_health(&alice()).messages_sent,
            3,
            "{name}"
        );
    }
}

#[test]
fn send_to_nobody_is_an_error_with_the_reason_and_is_counted() {
    for (name, manager) in both(config()) {
        match now(manager.send_to_user(&alice(), json!(1))) {
            Err(ManagerError::NotDelivered { target, reason }) => {
                assert_eq!(reason, NotDeliveredReason::NoConnections, "{name}");
                assert_eq!(target, DeliveryTarget::User(alice()), "{name}");
                assert_eq!(target.to_string(), "user `alice`", "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
        match now(manager.send_to_thread(&thread("t9"), json!(1))) {
            Err(ManagerError::NotDelivered { target, reason }) => {
                assert_eq!(reason, NotDeliveredReason::NoThreadConnections, "{name}");
                assert_eq!(target, DeliveryTarget::Thread(thread("t9")), "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    let unified = UnifiedWebSocketManager::default();
    let _ = now(unified.send_to_user(&alice(), json!(1)));
    assert_eq!(unified.stats().messages_failed, 1);
}

#[test]
fn send_to_thread_reaches_exactly_the_thread_never_the_user_of_the_same_name() {
    for (name, manager) in both(config()) {
        // A thread named like the user: the original code sent to the user.
        let (on_thread, mut r_on) = connection("c1", &alice(), Some("alice"));
        let (off_thread, mut r_off) = connection("c2", &alice(), None);
        let (other_thread, mut r_other) = connection("c3", &alice(), Some("t2"));
        for c in [on_thread, off_thread, other_thread] {
            now(manager.add_connection(c)).unwrap();
        }
        let delivery = now(manager.send_to_thread(&thread("alice"), json!("thread"))).unwrap();
        assert_eq!(delivery.recipients(), 1, "{name}");
        assert_eq!(drain_json(&mut r_on), vec![json!("thread")], "{name}");
        assert!(drain_json(&mut r_off).is_empty(), "{name}");
        assert!(drain_json(&mut r_other).is_empty(), "{name}");
    }
}

#[test]
fn closed_sockets_found_during_a_send_are_removed() {
    for (name, manager) in both(config()) {
        let (c1, mut r1) = connection("c1", &alice(), Some("t"));
        let (c2, r2) = connection("c2", &alice(), Some("t"));
        let closed_socket = c2.websocket.clone();
        now(manager.add_connection(c1)).unwrap();
        now(manager.add_connection(c2)).unwrap();
        drop(r2); // the client went away without the transport telling us
        let delivery = now(manager.send_to_user(&alice(), json!(1))).unwrap();
        assert_eq!(delivery, Delivery::delivered(1, 1), "{name}");
        assert!(manager.get_connection(&conn_id("c2")).is_none(), "{name}");
        assert_eq!(
            manager.get_connection_id_by_websocket(&closed_socket),
            None,
            "{name}"
        );
        assert_eq!(
            now(manager.send_to_thread(&thread("t"), json!(2)))
                .unwrap()
                .recipients(),
            1,
            "{name}"
        );

        r1.close();
        match now(manager.send_to_thread(&thread("t"), json!(3))) {
            Err(ManagerError::NotDelivered { reason, .. }) => {
                assert_eq!(reason, NotDeliveredReason::ConnectionsClosed, "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
        assert!(manager.get_user_connections(&alice()).is_empty(), "{name}");
        assert!(!manager.is_connection_active(&alice()), "{name}");
    }
}

#[test]
fn a_message_larger_than_every_queue_is_not_delivered_too_large() {
    let small = ManagerConfig::builder()
        .queue_max_bytes(2048)
        .history_max_bytes(1024)
        .build()
        .unwrap();
    for (name, manager) in both(small.clone()) {
        let (handle, mut receiver) = WebSocketHandle::channel(small.queue_limits());
        now(manager.add_connection(WebSocketConnection::with_id(conn_id("c1"), alice(), handle)))
            .unwrap();
        match now(manager.send_to_user(&alice(), json!("x".repeat(3000)))) {
            Err(ManagerError::NotDelivered { reason, .. }) => {
                assert_eq!(reason, NotDeliveredReason::TooLarge, "{name}")
            }
            other => panic!("{name}: {other:?}"),
        }
        // Too large is a property of the message, not of the socket: it stays.
        assert!(manager.is_connection_active(&alice()), "{name}");
        assert!(drain_frames(&mut receiver).is_empty(), "{name}");
        assert_eq!(
            manager.get_connection_health(&alice()).messages_dropped,
            1,
            "{name}"
        );
    }
}

#[test]
fn critical_events_are_validated_wrapped_and_sequenced() {
    for (name, manager) in both(config()) {
        match now(manager.emit_critical_event(&alice(), "bad type!", json!({}))) {
            Err(ManagerError::InvalidEventType { event_type, .. }) => {
                assert_eq!(event_type, "bad type!", "{name}")
            }
            other => panic!("{name}: {other:?}"),
        }
        let (c, mut receiver) = connection("c1", &alice(), None);
        now(manager.add_connection(c)).unwrap();
        let mut offsets = Vec::new();
        for (i, event) in [AGENT_STARTED, TOOL_EXECUTING].into_iter().enumerate() {
            let delivery =
                now(manager.emit_critical_event(&alice(), event, json!({"i": i}))).unwrap();
            assert_eq!(
                (delivery.recipients(), delivery.skipped()),
                (1, 0),
                "{name}"
            );
            assert!(!delivery.is_queued(), "{name}");
            offsets.push(
                delivery
                    .offset()
                    .expect("a critical event reports its offset"),
            );
        }
        let received: Vec<_> = drain_json(&mut receiver).iter().map(envelope).collect();
        assert_eq!(received.len(), 2, "{name}");
        for (i, event) in received.iter().enumerate() {
            assert!(event.critical, "{name}");
            assert_eq!(event.sequence, i as u64 + 1, "{name}");
            assert_eq!(
                offsets[i],
                StreamOffset::new(event.stream, event.sequence),
                "{name}: the caller learns the offset the client sees"
            );
            assert_eq!(event.data, json!({"i": i}), "{name}");
            assert!(event.timestamp > 1_600_000_000_000, "{name}");
        }
        assert_eq!(received[0].event_type, AGENT_STARTED, "{name}");
        assert_eq!(received[1].event_type, TOOL_EXECUTING, "{name}");
        // The refused event consumed no sequence number.
        assert_eq!(
            manager.get_connection_health(&alice()).messages_sent,
            2,
            "{name}"
        );
    }
}

#[test]
fn health_reports_connections_and_counters() {
    for (name, manager) in both(config()) {
        let (c1, _r1) = connection("c2", &alice(), Some("t1"));
        let (c2, r2) = connection("c1", &alice(), None);
        now(manager.add_connection(c1)).unwrap();
        now(manager.add_connection(c2)).unwrap();
        now(manager.send_to_user(&alice(), json!(1))).unwrap();
        let health = manager.get_connection_health(&alice());
        assert_eq!(health.total_connections, 2, "{name}");
        assert_eq!(health.active_connections, 2, "{name}");
        assert_eq!(health.messages_sent, 2, "{name}");
        assert!(health.last_activity_ms.is_some(), "{name}");
        let ids: Vec<_> = health
            .connections
            .iter()
            .map(|c| c.connection_id.as_str())
            .collect();
        assert_eq!(ids, ["c1", "c2"], "{name}: sorted by id");
        assert_eq!(
            health.connections[1].thread_id,
            Some(thread("t1")),
            "{name}"
        );
        assert_eq!(health.connections[0].queue_depth, 1, "{name}");
        assert!(health.connections[0].connected_at_ms > 0, "{name}");

        drop(r2);
        let health = manager.get_connection_health(&alice());
        assert_eq!(
            (health.total_connections, health.active_connections),
            (2, 1),
            "{name}"
        );
        let json = serde_json::to_value(&health).unwrap();
        assert_eq!(json["connections"][0]["closed"], true, "{name}");
    }
}

#[test]
fn both_managers_are_registered_and_built_by_the_registry() {
    let registry = Registry::global();
    let unified = registry.get("unified").unwrap();
    assert_eq!(unified.mode, ManagerMode::Unified);
    assert!(unified.matches_protocol());
    let isolated = registry.get("isolated").unwrap();
    assert_eq!(isolated.mode, ManagerMode::Isolated);

    let config = ManagerConfig::builder()
        .max_connections_per_user(1)
        .build()
        .unwrap();
    let extensions = Extensions::new();
    let context = BuildContext::new(&config, &extensions);
    let built = unified.build(&context).unwrap();
    let (c1, _r1) = connection("c1", &alice(), None);
    let (c2, _r2) = connection("c2", &alice(), None);
    now(built.add_connection(c1)).unwrap();
    assert!(matches!(
        now(built.add_connection(c2)),
        Err(ManagerError::ConnectionLimit { limit: 1, .. })
    ));

    assert!(matches!(
        isolated.build(&context),
        Err(BuildError::MissingUserContext)
    ));
    let owner = UserContext::new(user("bob"));
    let built = isolated.build(&context.with_user_context(&owner)).unwrap();
    let (for_alice, _r) = connection("c1", &alice(), None);
    assert!(matches!(
        now(built.add_connection(for_alice)),
        Err(ManagerError::IsolationViolation { ref owner, .. }) if *owner == user("bob")
    ));
}

#[test]
fn unified_keeps_users_apart() {
    let manager = UnifiedWebSocketManager::default();
    let (a, mut ra) = connection("a1", &alice(), Some("shared"));
    let (b, mut rb) = connection("b1", &user("bob"), Some("shared"));
    now(manager.add_connection(a)).unwrap();
    now(manager.add_connection(b)).unwrap();
    now(manager.send_to_user(&alice(), json!("for alice"))).unwrap();
    assert_eq!(drain_json(&mut ra), vec![json!("for alice")]);
    assert!(drain_json(&mut rb).is_empty());
    assert_eq!(
        now(manager.send_to_thread(&thread("shared"), json!("both")))
            .unwrap()
            .recipients(),
        2
    );
    assert_eq!(drain_json(&mut rb), vec![json!("both")]);
    assert_eq!(
        manager.get_user_connections(&user("bob")),
        HashSet::from([conn_id("b1")])
    );
    // A connection id freed by one user can be used by another.
    now(manager.remove_connection(&conn_id("a1"))).unwrap();
    let (reuse, _r) = connection("a1", &user("bob"), None);
    now(manager.add_connection(reuse)).unwrap();
    assert_eq!(manager.get_user_connections(&user("bob")).len(), 2);
    assert!(manager.get_user_connections(&alice()).is_empty());
}

/// The startup probes provoke refusals on purpose: a manager built for them
/// refuses just the same, without an error event on every boot.
#[test]
fn an_isolated_manager_built_for_the_probes_refuses_quietly() {
    let context = UserContext::new(alice());
    let config = config();
    let extensions = Extensions::new();
    let build = BuildContext::new(&config, &extensions).with_user_context(&context);
    for (for_probe, expected_errors) in [(false, 1), (true, 0)] {
        let build = if for_probe { build.for_probe() } else { build };
        let manager = IsolatedWebSocketManager::construct(&build).unwrap();
        let errors = tracing_errors(|| {
            assert!(matches!(
                now(manager.send_to_user(&user("mallory"), json!(1))),
                Err(ManagerError::IsolationViolation { .. })
            ));
        });
        assert_eq!(errors, expected_errors, "for_probe: {for_probe}");
    }
}

#[test]
fn isolated_refuses_other_users_and_reveals_nothing() {
    let manager = IsolatedWebSocketManager::new(UserContext::new(alice()), config());
    let (mine, _r) = connection("c1", &alice(), Some("t"));
    now(manager.add_connection(mine)).unwrap();
    let mallory = user("mallory");
    let (theirs, _r2) = connection("m1", &mallory, Some("t"));
    let errors = tracing_errors(|| {
        let refusals = [
            now(manager.add_connection(theirs)).map(|_| Delivery::queued(0)),
            now(manager.send_to_user(&mallory, json!(1))),
            now(manager.emit_critical_event(&mallory, AGENT_STARTED, json!({}))),
        ];
        for refusal in refusals {
            match refusal {
                Err(ManagerError::IsolationViolation { owner, requested }) => {
                    assert_eq!((owner, requested), (alice(), mallory.clone()));
                }
                other => panic!("{other:?}"),
            }
        }
    });
    assert_eq!(errors, 3, "one tracing error event per refusal");
    assert!(manager.get_connection(&conn_id("m1")).is_none());
    assert!(manager.get_user_connections(&mallory).is_empty());
    assert!(!manager.is_connection_active(&mallory));
    assert_eq!(
        manager.get_connection_health(&mallory),
        ConnectionHealth::empty(mallory.clone())
    );
    // The owner's thread send reaches only the owner's connection.
    assert_eq!(
        now(manager.send_to_thread(&thread("t"), json!(1)))
            .unwrap()
            .recipients(),
        1
    );
    assert_eq!(manager.owner(), &alice());
}

#[test]
fn shutdown_closes_everything_and_every_method_answers_consistently() {
    let unified = std::sync::Arc::new(UnifiedWebSocketManager::default());
    let isolated = std::sync::Arc::new(IsolatedWebSocketManager::new(
        UserContext::new(alice()),
        config(),
    ));
    type ShutdownCase = (&'static str, DynManager, Box<dyn Fn()>);
    let cases: Vec<ShutdownCase> = vec![
        (
            "unified",
            DynManager::from(unified.clone()),
            Box::new({
                let m = unified.clone();
                move || m.shutdown()
            }),
        ),
        (
            "isolated",
            DynManager::from(isolated.clone()),
            Box::new({
                let m = isolated.clone();
                move || m.shutdown()
            }),
        ),
    ];
    for (name, manager, shutdown) in cases {
        let (c, mut receiver) = connection("c1", &alice(), Some("t"));
        let socket = c.websocket.clone();
        now(manager.add_connection(c)).unwrap();
        shutdown();
        assert_eq!(
            try_recv(&mut receiver),
            Some(OutboundEvent::Close(CloseReason::going_away())),
            "{name}"
        );
        let (again, _r) = connection("c2", &alice(), None);
        assert!(
            matches!(
                now(manager.add_connection(again)),
                Err(ManagerError::ShutDown)
            ),
            "{name}"
        );
        assert!(
            now(manager.remove_connection(&conn_id("c1"))).is_none(),
            "{name}"
        );
        assert!(manager.get_connection(&conn_id("c1")).is_none(), "{name}");
        assert!(manager.get_user_connections(&alice()).is_empty(), "{name}");
        assert!(!manager.is_connection_active(&alice()), "{name}");
        assert_eq!(
            manager.get_connection_id_by_websocket(&socket),
            None,
            "{name}"
        );
        assert!(
            !manager.update_connection_thread(&conn_id("c1"), thread("t2")),
            "{name}"
        );
        assert!(
            matches!(
                now(manager.send_to_user(&alice(), json!(1))),
                Err(ManagerError::ShutDown)
            ),
            "{name}"
        );
        assert!(
            matches!(
                now(manager.send_to_thread(&thread("t"), json!(1))),
                Err(ManagerError::ShutDown)
            ),
            "{name}"
        );
        assert!(
            matches!(
                now(manager.emit_critical_event(&alice(), AGENT_STARTED, json!({}))),
                Err(ManagerError::ShutDown)
            ),
            "{name}"
        );
        assert_eq!(
            manager.get_connection_health(&alice()),
            ConnectionHealth::empty(alice()),
            "{name}"
        );
    }
    assert!(unified.index_sizes().is_empty());
    assert!(isolated.index_sizes().is_empty());
    assert!(isolated.is_shut_down());
    // Isolation is not checked after shutdown: everything is ShutDown.
    let (other, _r) = connection("m1", &user("mallory"), None);
    assert!(matches!(
        now(isolated.add_connection(other)),
        Err(ManagerError::ShutDown)
    ));
}

#[test]
fn shutdown_discards_pending_events_and_counts_them() {
    let manager = UnifiedWebSocketManager::default();
    now(manager.emit_critical_event(&alice(), AGENT_STARTED, json!({}))).unwrap();
    now(manager.emit_critical_event(&user("bob"), AGENT_STARTED, json!({}))).unwrap();
    assert_eq!(manager.index_sizes().history_users, 2);
    manager.shutdown();
    assert_eq!(manager.stats().pending_discarded_at_shutdown, 2);
    assert!(
        manager.index_sizes().is_empty(),
        "{}",
        manager.index_sizes()
    );
}

/// Counts `tracing` events at ERROR level emitted while `f` runs.
fn tracing_errors(f: impl FnOnce()) -> usize {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tracing::{Event, Level, Metadata, Subscriber, span};

    struct CountErrors(Arc<AtomicUsize>);
    impl Subscriber for CountErrors {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
            span::Id::from_u64(1)
        }
        fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
        fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
        fn event(&self, event: &Event<'_>) {
            if *event.metadata().level() == Level::ERROR {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        fn enter(&self, _: &span::Id) {}
        fn exit(&self, _: &span::Id) {}
    }
    let count = Arc::new(AtomicUsize::new(0));
    tracing::subscriber::with_default(CountErrors(count.clone()), f);
    count.load(Ordering::SeqCst)
}

/// A user's own sends count where a send finds them (the user's index
/// entry), thread sends in the user's slot: a health report shows both, and
/// the later activity.
#[test]
fn health_adds_user_and_thread_sends_and_shows_the_latest_send() {
    for (name, manager) in both(config()) {
        let (c1, _r1) = connection("c1", &alice(), Some("t1"));
        let (c2, _r2) = connection("c2", &alice(), None);
        now(manager.add_connection(c1)).unwrap();
        now(manager.add_connection(c2)).unwrap();
        now(manager.send_to_user(&alice(), json!(1))).unwrap();
        now(manager.send_to_thread(&thread("t1"), json!(2))).unwrap();
        assert_eq!(
            manager.get_connection_health(&alice()).messages_sent,
            3,
            "{name}: 2 from the user send, 1 from the thread send"
        );
        // Well past the clock's tick (at most 10 ms), so the user send's
        // time is distinguishable from the thread send's.
        std::thread::sleep(std::time::Duration::from_millis(60));
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        now(manager.send_to_user(&alice(), json!(3))).unwrap();
        let health = manager.get_connection_health(&alice());
        assert_eq!(health.messages_sent, 5, "{name}");
        let last = health.last_activity_ms.expect(name);
        assert!(
            last + 20 >= before,
            "{name}: last activity {last} is older than the send at {before}"
        );
    }
}

/// Sends from many threads at once, user and thread sends mixed: the
/// manager-wide count and the user's (kept in two places, see
/// `health_adds_user_and_thread_sends_and_shows_the_latest_send`) must
/// each hold every frame.
#[test]
fn sends_from_many_threads_are_all_counted() {
    const THREADS: usize = 4;
    const SENDS: usize = 250;
    let manager = UnifiedWebSocketManager::new(config());
    let (c1, _r1) = connection("c1", &alice(), Some("t1"));
    let (c2, _r2) = connection("c2", &alice(), None);
    now(manager.add_connection(c1)).unwrap();
    now(manager.add_connection(c2)).unwrap();
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let manager = &manager;
            scope.spawn(move || {
                for i in 0..SENDS {
                    if t % 2 == 0 {
                        now(manager.send_to_user(&alice(), json!(i))).unwrap();
                    } else {
                        now(manager.send_to_thread(&thread("t1"), json!(i))).unwrap();
                    }
                }
            });
        }
    });
    // Threads 0 and 2 reach both connections, 1 and 3 only the thread's.
    let expected = (2 * SENDS * 2 + 2 * SENDS) as u64;
    assert_eq!(manager.stats().messages_sent, expected);
    assert_eq!(
        manager.get_connection_health(&alice()).messages_sent,
        expected
    );
}
