//! Randomized, concurrent: many users, connections and tasks doing random
//! adds, removes, thread moves, sends and critical events. Every frame any
//! socket receives belongs to that socket's user (and, for thread sends, to a
//! thread the connection was bound to); critical events arrive in order; and
//! once everything is removed, every index is empty.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::*;
use parking_lot::Mutex;
use serde_json::json;
use websocket_manager::{events::AGENT_THINKING, managers::UnifiedWebSocketManager};
use websocket_manager::{managers::*, socket::*, *};

const TASKS: u64 = 8;
const OPS_PER_TASK: usize = 1000;
const USERS: usize = 6;
/// `u0` is also a thread name: a thread send must never reach user `u0`'s
/// other sockets.
const THREADS: [&str; 5] = ["t0", "t1", "t2", "t3", "u0"];

struct Owned {
    id: ConnectionId,
    user: UserId,
    socket: WebSocketHandle,
    threads: Arc<Mutex<HashSet<String>>>,
}

/// Drains one socket until it is closed; returns (frames, violations).
async fn reader(
    mut receiver: OutboundReceiver,
    user: UserId,
    threads: Arc<Mutex<HashSet<String>>>,
) -> (usize, Vec<String>) {
    let mut frames = 0;
    let mut violations = Vec::new();
    let mut last_sequence = 0;
    while let Some(event) = receiver.recv().await {
        let OutboundEvent::Frame(frame) = event else {
            break;
        };
        frames += 1;
        let value: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
        if value.get("critical").is_some() {
            let event = envelope(&value);
            if event.data["u"] != user.as_str() {
                violations.push(format!(
                    "{user} got a critical event for {}",
                    event.data["u"]
                ));
            }
            if event.sequence <= last_sequence {
                violations.push(format!(
                    "{user}: sequence {} after {last_sequence}",
                    event.sequence
                ));
            }
            last_sequence = event.sequence;
        } else if let Some(u) = value.get("u") {
            if *u != user.as_str() {
                violations.push(format!("{user} got a user message for {u}"));
            }
        } else if let Some(t) = value.get("t").and_then(|t| t.as_str()) {
            if !threads.lock().contains(t) {
                violations.push(format!("{user} got a message for thread {t}"));
            }
        } else {
            violations.push(format!("unexpected frame {value}"));
        }
    }
    (frames, violations)
}

#[test]
fn random_concurrent_operations_keep_routing_exact_and_leave_no_trace() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let config = ManagerConfig::builder()
        .queue_capacity(8192)
        .queue_max_bytes(64 << 20)
        .max_connections_per_user(10_000)
        .build()
        .unwrap();
    let manager = Arc::new(UnifiedWebSocketManager::new(config.clone()));
    let users: Vec<UserId> = (0..USERS).map(|i| user(&format!("u{i}"))).collect();

    let (readers, owned) = runtime.block_on(async {
        let mut workers = Vec::new();
        for seed in 0..TASKS {
            let manager = manager.clone();
            let users = users.clone();
            let limits = config.queue_limits();
            workers.push(tokio::spawn(async move {
                let mut rng = Rng::new(seed + 1);
                let mut owned: Vec<Owned> = Vec::new();
                let mut readers = Vec::new();
                for op in 0..OPS_PER_TASK {
                    match rng.below(100) {
                        0..30 => {
                            let user = users[rng.below(USERS)].clone();
                            let (socket, receiver) = WebSocketHandle::channel(limits);
                            let id = ConnectionId::new(format!("w{seed}-{op}")).unwrap();
                            let mut connection = WebSocketConnection::with_id(
                                id.clone(),
                                user.clone(),
                                socket.clone(),
                            );
                            let threads = Arc::new(Mutex::new(HashSet::new()));
                            if rng.below(2) == 0 {
                                let t = THREADS[rng.below(THREADS.len())];
                                threads.lock().insert(t.to_owned());
                                connection = connection.with_thread(thread(t));
                            }
                            readers.push(tokio::spawn(reader(
                                receiver,
                                user.clone(),
                                threads.clone(),
                            )));
                            manager.add_connection(connection).await.unwrap();
                            assert_eq!(
                                manager.get_connection_id_by_websocket(&socket),
                                Some(id.clone())
                            );
                            assert!(manager.get_user_connections(&user).contains(&id));
                            owned.push(Owned {
                                id,
                                user,
                                socket,
                                threads,
                            });
                        }
                        30..45 if !owned.is_empty() => {
                            let gone = owned.swap_remove(rng.below(owned.len()));
                            let removed = manager
                                .remove_connection(&gone.id)
                                .await
                                .expect("owner removes");
                            assert_eq!(removed.user_id, gone.user);
                            assert_eq!(manager.get_connection_id_by_websocket(&gone.socket), None);
                            assert!(manager.get_connection(&gone.id).is_none());
                            assert!(!manager.get_user_connections(&gone.user).contains(&gone.id));
                        }
                        45..60 if !owned.is_empty() => {
                            let moved = &owned[rng.below(owned.len())];
                            let t = THREADS[rng.below(THREADS.len())];
                            // Record first: a frame for `t` may arrive right after the move.
                            moved.threads.lock().insert(t.to_owned());
                            assert!(manager.update_connection_thread(&moved.id, thread(t)));
                        }
                        60..78 => {
                            let u = &users[rng.below(USERS)];
                            match manager
                                .send_to_user(u, json!({"u": u.as_str(), "op": op}))
                                .await
                            {
                                Ok(delivery) => assert!(delivery.recipients() > 0),
                                Err(ManagerError::NotDelivered {
                                    reason: NotDeliveredReason::NoConnections,
                                    ..
                                }) => {}
                                Err(other) => panic!("send_to_user: {other}"),
                            }
                        }
                        78..95 => {
                            let t = THREADS[rng.below(THREADS.len())];
                            match manager
                                .send_to_thread(&thread(t), json!({"t": t, "op": op}))
                                .await
                            {
                                Ok(delivery) => assert!(delivery.recipients() > 0),
                                Err(ManagerError::NotDelivered {
                                    reason: NotDeliveredReason::NoThreadConnections,
                                    ..
                                }) => {}
                                Err(other) => panic!("send_to_thread: {other}"),
                            }
                        }
                        _ => {
                            let u = &users[rng.below(USERS)];
                            manager
                                .emit_critical_event(u, AGENT_THINKING, json!({"u": u.as_str()}))
                                .await
                                .unwrap();
                        }
                    }
                    if op % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                (readers, owned)
            }));
        }
        let mut readers = Vec::new();
        let mut owned = Vec::new();
        for worker in workers {
            let (r, o) = worker.await.unwrap();
            readers.extend(r);
            owned.extend(o);
        }
        (readers, owned)
    });

    runtime.block_on(async {
        let mut readers = readers;
        for gone in owned {
            assert!(manager.remove_connection(&gone.id).await.is_some());
        }
        // Users that went offline with pending events: connect once to get
        // the replay, then leave.
        for (i, u) in users.iter().enumerate() {
            if manager.get_connection_health(u).pending_critical_events > 0 {
                let (socket, receiver) = WebSocketHandle::channel(config.queue_limits());
                let id = ConnectionId::new(format!("final-{i}")).unwrap();
                readers.push(tokio::spawn(reader(receiver, u.clone(), Arc::default())));
                manager
                    .add_connection(WebSocketConnection::with_id(id.clone(), u.clone(), socket))
                    .await
                    .unwrap();
                manager.remove_connection(&id).await.unwrap();
            }
        }
        let mut frames = 0;
        let mut violations = Vec::new();
        for reader in readers {
            let (n, v) = reader.await.unwrap();
            frames += n;
            violations.extend(v);
        }
        assert!(
            violations.is_empty(),
            "{} violations, first: {:?}",
            violations.len(),
            &violations[..violations.len().min(5)]
        );
        assert!(frames > 1000, "the test delivered only {frames} frames");
        let stats = manager.stats();
        // Connection indexes are empty; users remain only as long as they
        // hold retained critical events (for `history_max_age`).
        assert!(
            stats.indexes.holds_no_connection(),
            "leak: {}",
            stats.indexes
        );
        assert!(stats.indexes.history_users <= USERS);
        // A close drops what is still queued (the writer stops), so readers
        // see at most what was accepted.
        assert!(frames <= stats.messages_sent as usize);
        assert_eq!(stats.slow_consumer_disconnects, 0);
    });
}

/// Two tasks race to register the same connection id (or the same socket)
/// for different users: exactly one wins and the loser leaves nothing behind.
#[test]
fn racing_duplicate_registrations_never_half_register() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let manager = Arc::new(UnifiedWebSocketManager::default());
    runtime.block_on(async {
        for round in 0..300 {
            let id = ConnectionId::new(format!("race-{round}")).unwrap();
            let (shared_socket, _shared_receiver) = socket();
            let mut tasks = Vec::new();
            for contender in 0..2 {
                let manager = manager.clone();
                let id = id.clone();
                // Even rounds: same id, different sockets; odd rounds: same
                // socket, different ids.
                let (socket, receiver) = if round % 2 == 0 {
                    let (s, r) = self::socket();
                    (s, Some(r))
                } else {
                    (shared_socket.clone(), None)
                };
                let id = if round % 2 == 0 {
                    id
                } else {
                    ConnectionId::new(format!("race-{round}-{contender}")).unwrap()
                };
                let user = user(&format!("contender-{contender}"));
                tasks.push(tokio::spawn(async move {
                    let result = manager
                        .add_connection(WebSocketConnection::with_id(
                            id.clone(),
                            user.clone(),
                            socket.clone(),
                        ))
                        .await;
                    drop(receiver);
                    (result, id, user, socket)
                }));
            }
            let mut results = Vec::new();
            for task in tasks {
                results.push(task.await.unwrap());
            }
            let mut winners = 0;
            for (result, id, user, socket) in results {
                match result {
                    Ok(()) => {
                        winners += 1;
                        assert_eq!(manager.get_connection(&id).unwrap().user_id, user);
                        assert_eq!(
                            manager.get_connection_id_by_websocket(&socket),
                            Some(id.clone())
                        );
                        manager.remove_connection(&id).await.unwrap();
                    }
                    Err(ManagerError::DuplicateConnection(_))
                    | Err(ManagerError::SocketAlreadyRegistered { .. }) => {
                        assert!(!manager.get_user_connections(&user).contains(&id));
                    }
                    Err(other) => panic!("round {round}: {other}"),
                }
            }
            assert_eq!(winners, 1, "round {round}");
        }
    });
    assert!(
        manager.index_sizes().is_empty(),
        "{}",
        manager.index_sizes()
    );
}

/// `shutdown` racing with adds and sends: afterwards nothing is registered,
/// every socket whose add succeeded is closed, and later adds fail.
#[test]
fn shutdown_racing_with_adds_leaves_nothing_open() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let config = ManagerConfig::builder()
        .max_connections_per_user(10_000)
        .build()
        .unwrap();
    for round in 0..20u64 {
        let manager = Arc::new(UnifiedWebSocketManager::new(config.clone()));
        let accepted = runtime.block_on(async {
            let mut tasks = Vec::new();
            for worker in 0..4u64 {
                let manager = manager.clone();
                tasks.push(tokio::spawn(async move {
                    let mut accepted = Vec::new();
                    for i in 0..200u64 {
                        let (socket, receiver) = socket();
                        let user = user(&format!("u{}", (worker + i) % 5));
                        match manager
                            .add_connection(WebSocketConnection::new(user.clone(), socket.clone()))
                            .await
                        {
                            Ok(()) => accepted.push((socket, receiver)),
                            Err(ManagerError::ShutDown) => break,
                            Err(other) => panic!("{other}"),
                        }
                        let _ = manager.send_to_user(&user, json!(i)).await;
                        if i % 8 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                    accepted
                }));
            }
            for _ in 0..round * 3 {
                tokio::task::yield_now().await;
            }
            manager.shutdown();
            let mut accepted = Vec::new();
            for task in tasks {
                accepted.extend(task.await.unwrap());
            }
            accepted
        });
        assert!(
            manager.index_sizes().is_empty(),
            "round {round}: {}",
            manager.index_sizes()
        );
        for (socket, _receiver) in &accepted {
            assert!(
                socket.is_closed(),
                "round {round}: an accepted socket was left open"
            );
        }
        let (late, _r) = socket();
        assert!(matches!(
            common::now(manager.add_connection(WebSocketConnection::new(user("late"), late))),
            Err(ManagerError::ShutDown)
        ));
    }
}
