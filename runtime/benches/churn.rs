//! `add_connection` + `remove_connection` of one connection, against a bare
//! concurrent map (`DashMap<ConnectionId, WebSocketHandle>`) insert + remove.
//! Both start with 1,000 other connections registered; creating the socket
//! is setup, not timed.
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use dashmap::DashMap;
use websocket_manager::managers::UnifiedWebSocketManager;
use websocket_manager::{managers::*, *};

fn churn(c: &mut Criterion) {
    let mut group = c.benchmark_group("churn");
    let config = ManagerConfig::builder()
        .queue_capacity(4)
        .history_capacity(3)
        .build()
        .unwrap();
    let limits = config.queue_limits();

    let manager = UnifiedWebSocketManager::new(config.clone());
    let mut keep = Vec::new();
    for i in 0..1_000 {
        let (socket, receiver) = WebSocketHandle::channel(limits);
        let user = common::user(&format!("user-{i}"));
        common::now(manager.add_connection(WebSocketConnection::new(user, socket))).unwrap();
        keep.push(receiver);
    }
    let alice = common::alice();
    group.bench_function("manager_add_remove", |b| {
        b.iter_batched(
            || {
                let (socket, receiver) = WebSocketHandle::channel(limits);
                (WebSocketConnection::new(alice.clone(), socket), receiver)
            },
            |(connection, receiver)| {
                let id = connection.connection_id.clone();
                common::now(manager.add_connection(connection)).unwrap();
                black_box(common::now(manager.remove_connection(&id)).unwrap());
                receiver
            },
            BatchSize::SmallInput,
        );
    });

    let map: DashMap<ConnectionId, WebSocketHandle> = DashMap::new();
    for _ in 0..1_000 {
        let (socket, receiver) = WebSocketHandle::channel(limits);
        map.insert(ConnectionId::generate(), socket);
        keep.push(receiver);
    }
    group.bench_function("dashmap_insert_remove_baseline", |b| {
        b.iter_batched(
            || {
                let (socket, receiver) = WebSocketHandle::channel(limits);
                (ConnectionId::generate(), socket, receiver)
            },
            |(id, socket, receiver)| {
                map.insert(id.clone(), socket);
                black_box(map.remove(&id).unwrap());
                receiver
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

criterion_group!(benches, churn);
criterion_main!(benches);
