//! Retry-safe critical events on the in-memory managers
//! ([`IdempotentEmit`]): a retry with the same key within the window stores
//! and sends nothing and answers the first attempt's offset; concurrent
//! attempts store once; after the window, or once the key is forgotten, the
//! same key stores again. (The cluster manager: `cluster_idempotency.rs`.)
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use websocket_manager::startup::UserContext;
use websocket_manager::{events::*, managers::*, *};

fn key(name: &str) -> IdempotencyKey {
    IdempotencyKey::new(name).unwrap()
}

/// The unified and the isolated manager (alice's), with `config`.
fn managers(config: &ManagerConfig) -> (UnifiedWebSocketManager, IsolatedWebSocketManager) {
    (
        UnifiedWebSocketManager::new(config.clone()),
        IsolatedWebSocketManager::new(UserContext::new(alice()), config.clone()),
    )
}

/// Emits to alice with a key, on one manager.
type Emit<'a> = &'a dyn Fn(&str, serde_json::Value) -> Result<Delivery, ManagerError>;

/// Runs `check` on both managers, named.
fn on_both<F>(config: ManagerConfig, check: F)
where
    F: Fn(&str, Emit<'_>, &DynManager),
{
    let (unified, isolated) = managers(&config);
    let unified = Arc::new(unified);
    let isolated = Arc::new(isolated);
    let u = Arc::clone(&unified);
    check(
        "unified",
        &move |k, data| now(u.emit_critical_event_with_key(&alice(), &key(k), AGENT_STARTED, data)),
        &DynManager::from_arc(unified),
    );
    let i = Arc::clone(&isolated);
    check(
        "isolated",
        &move |k, data| now(i.emit_critical_event_with_key(&alice(), &key(k), AGENT_STARTED, data)),
        &DynManager::from_arc(isolated),
    );
}

#[test]
fn a_retry_stores_and_sends_nothing_and_answers_the_first_offset() {
    on_both(ManagerConfig::default(), |name, emit, manager| {
        let (c, mut receiver) = connection("c1", &alice(), None);
        now(manager.add_connection(c)).unwrap();
        let first = emit("run-1/started", json!({"n": 1})).unwrap();
        assert_eq!(first.recipients(), 1, "{name}");
        for _ in 0..3 {
            let retry = emit("run-1/started", json!({"n": 1})).unwrap();
            assert!(retry.is_duplicate(), "{name}: {retry}");
            assert_eq!(retry.offset(), first.offset(), "{name}");
            assert_eq!(retry.recipients(), 0, "{name}");
        }
        // Another key is another event, numbered after it.
        let other = emit("run-1/completed", json!({"n": 2})).unwrap();
        assert_eq!(other.offset().unwrap().sequence, 2, "{name}");
        let got: Vec<_> = drain_json(&mut receiver).iter().map(envelope).collect();
        assert_eq!(
            got.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [1, 2],
            "{name}: the socket got each event once"
        );
        let health = manager.get_connection_health(&alice());
        assert_eq!(health.retained_critical_events, 2, "{name}");
    });
}

#[test]
fn a_retry_while_offline_is_not_queued_twice() {
    on_both(ManagerConfig::default(), |name, emit, manager| {
        let first = emit("k", json!(1)).unwrap();
        assert!(first.is_queued(), "{name}");
        assert!(emit("k", json!(1)).unwrap().is_duplicate(), "{name}");
        assert_eq!(
            manager
                .get_connection_health(&alice())
                .pending_critical_events,
            1,
            "{name}"
        );
        let (c, mut receiver) = connection("c1", &alice(), None);
        now(manager.add_connection(c)).unwrap();
        assert_eq!(drain_json(&mut receiver).len(), 1, "{name}: replayed once");
    });
}

#[test]
fn after_the_window_the_same_key_stores_again() {
    let config = ManagerConfig::builder()
        .idempotency_window(Duration::from_millis(40))
        .build()
        .unwrap();
    on_both(config, |name, emit, _| {
        let first = emit("k", json!(1)).unwrap();
        assert!(emit("k", json!(1)).unwrap().is_duplicate(), "{name}");
        std::thread::sleep(Duration::from_millis(90));
        let again = emit("k", json!(1)).unwrap();
        assert!(!again.is_duplicate(), "{name}: {again}");
        assert_eq!(
            again.offset().unwrap().sequence,
            first.offset().unwrap().sequence + 1,
            "{name}"
        );
    });
}

#[test]
fn the_oldest_key_is_forgotten_past_the_per_user_bound() {
    let config = ManagerConfig::builder()
        .idempotency_keys_per_user(2)
        .build()
        .unwrap();
    on_both(config, |name, emit, _| {
        for k in ["a", "b", "c"] {
            emit(k, json!(k)).unwrap();
        }
        assert!(emit("c", json!("c")).unwrap().is_duplicate(), "{name}");
        assert!(emit("b", json!("b")).unwrap().is_duplicate(), "{name}");
        let a = emit("a", json!("a")).unwrap();
        assert!(
            !a.is_duplicate(),
            "{name}: `a` was forgotten, so stored again"
        );
    });
}

#[test]
fn a_refused_attempt_records_no_key() {
    let config = ManagerConfig::builder()
        .history_max_bytes(512)
        .build()
        .unwrap();
    on_both(config, |name, emit, _| {
        let error = emit("k", json!("x".repeat(600))).unwrap_err();
        assert!(
            matches!(error, ManagerError::CriticalEventTooLarge { .. }),
            "{name}: {error}"
        );
        let stored = emit("k", json!("small")).unwrap();
        assert!(!stored.is_duplicate(), "{name}: {stored}");
        assert_eq!(stored.offset().unwrap().sequence, 1, "{name}");
    });
}

#[test]
fn keys_are_per_user() {
    let manager = UnifiedWebSocketManager::default();
    let k = key("same");
    let a =
        now(manager.emit_critical_event_with_key(&user("a"), &k, AGENT_STARTED, json!(1))).unwrap();
    let b =
        now(manager.emit_critical_event_with_key(&user("b"), &k, AGENT_STARTED, json!(1))).unwrap();
    assert!(!a.is_duplicate() && !b.is_duplicate());
    // The isolated manager refuses another user's emit, key or not.
    let isolated =
        IsolatedWebSocketManager::new(UserContext::new(alice()), ManagerConfig::default());
    assert!(matches!(
        now(isolated.emit_critical_event_with_key(&user("bob"), &k, AGENT_STARTED, json!(1))),
        Err(ManagerError::IsolationViolation { .. })
    ));
}

#[test]
fn concurrent_retries_of_one_key_store_it_once() {
    let manager = Arc::new(UnifiedWebSocketManager::default());
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let manager = Arc::clone(&manager);
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| {
                        now(manager.emit_critical_event_with_key(
                            &alice(),
                            &key(&format!("k{i}")),
                            AGENT_STARTED,
                            json!(i),
                        ))
                        .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<Vec<Delivery>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for i in 0..50 {
        let attempts: Vec<&Delivery> = results.iter().map(|r| &r[i]).collect();
        let stored = attempts.iter().filter(|d| !d.is_duplicate()).count();
        assert_eq!(stored, 1, "key k{i}: {attempts:?}");
        assert!(
            attempts.iter().all(|d| d.offset() == attempts[0].offset()),
            "key k{i}: one offset for every attempt"
        );
    }
    let health = manager.get_connection_health(&alice());
    assert_eq!(health.pending_critical_events, 50);
    assert_eq!(health.latest_offset.unwrap().sequence, 50);
}
