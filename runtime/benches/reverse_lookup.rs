//! `get_connection_id_by_websocket` with 10, 1,000 and 100,000 connections
//! registered: a hash lookup, so it should stay flat.
//!
//! Each iteration looks up the next socket of a fixed, shuffled list of 1,024
//! registered sockets (all of them when fewer), so larger managers are not
//! flattered by one hot cache line.
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use websocket_manager::managers::UnifiedWebSocketManager;
use websocket_manager::{managers::*, *};

fn reverse_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("reverse_lookup");
    for connections in [10usize, 1_000, 100_000] {
        let config = ManagerConfig::builder()
            .queue_capacity(4)
            .history_capacity(3)
            .max_connections_per_user(1_000)
            .build()
            .unwrap();
        let manager = UnifiedWebSocketManager::new(config.clone());
        let mut sockets = Vec::with_capacity(connections);
        let mut receivers = Vec::with_capacity(connections);
        for i in 0..connections {
            let (socket, receiver) = WebSocketHandle::channel(config.queue_limits());
            let user = common::user(&format!("user-{}", i % 1_000));
            common::now(manager.add_connection(WebSocketConnection::new(user, socket.clone())))
                .unwrap();
            sockets.push(socket);
            receivers.push(receiver);
        }
        let mut rng = common::Rng::new(7);
        let probes: Vec<WebSocketHandle> = (0..1_024.min(connections))
            .map(|_| sockets[rng.below(connections)].clone())
            .collect();
        group.bench_with_input(
            BenchmarkId::from_parameter(connections),
            &connections,
            |b, _| {
                let mut next = 0;
                b.iter(|| {
                    let socket = &probes[next];
                    next = (next + 1) % probes.len();
                    black_box(manager.get_connection_id_by_websocket(socket)).unwrap()
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, reverse_lookup);
criterion_main!(benches);
