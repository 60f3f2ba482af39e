//! The heap an idle connection costs the manager, counted by a counting
//! allocator (this test binary's only test, so nothing else allocates
//! meanwhile): connections registered the way the transport registers them
//! (`WebSocketHandle::channel` with the default queue bounds, then
//! `add_connection`), each its own user, as in the load bench
//! (`benches/load.rs`, issue 19: RSS per idle connection against a bare
//! axum server, whose registry is one `HashMap<u64, mpsc::Sender>`).
//!
//! What it measured at 19,000 connections (2 cores, so 8 map shards; the
//! tables then have 1.7 slots per entry, whatever the number of shards):
//! the socket's queue and ids 224 bytes per connection; the manager 820
//! bytes before issue 19's last change (a `users` entry of 128 bytes with
//! room for four sockets, the `connections` table holding the whole
//! 128-byte record inline, a list of recipients, a boxed slice of ids and
//! the counters allocated per user), 528 since.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "common/counting_alloc.rs"]
mod counting_alloc;

use websocket_manager::managers::UnifiedWebSocketManager;
use websocket_manager::socket::QueueLimits;
use websocket_manager::{UserId, WebSocketConnection, WebSocketHandle, WebSocketManager};

use counting_alloc::live_bytes as live;

/// Connections registered: the load bench's number.
const CONNECTIONS: usize = 19_000;

#[tokio::test(flavor = "current_thread")]
async fn an_idle_connection_costs_the_manager_little_heap() {
    let manager = UnifiedWebSocketManager::default();
    let limits = QueueLimits::default();
    // Users made first: the transport has the user id from the token.
    let users: Vec<UserId> = (0..CONNECTIONS)
        .map(|i| UserId::new(format!("u{i}")).unwrap())
        .collect();

    let start = live();
    let mut receivers = Vec::with_capacity(CONNECTIONS);
    let mut connections = Vec::with_capacity(CONNECTIONS);
    let reserved = live();
    for user in &users {
        let (socket, receiver) = WebSocketHandle::channel(limits);
        receivers.push(receiver);
        connections.push(WebSocketConnection::new(user.clone(), socket));
    }
    let sockets = live();
    for connection in connections.drain(..) {
        manager.add_connection(connection).await.unwrap();
    }
    let registered = live();

    let per = |bytes: isize| bytes as f64 / CONNECTIONS as f64;
    let queue = per(sockets - reserved);
    let index = per(registered - sockets);
    println!(
        "per connection: socket queue and ids {queue:.0} bytes, manager {index:.0} bytes ({} connections; the test's own vectors {:.0})",
        CONNECTIONS,
        per(reserved - start)
    );
    assert_eq!(manager.index_sizes().connections, CONNECTIONS);
    // The queue is allocated whole at `channel` (its ring grows with use).
    assert!(
        queue <= 240.0,
        "the socket's queue and ids: {queue:.0} bytes"
    );
    // The bound of issue 19: a bare axum server's registry costs about 30
    // bytes a socket and its tokio mpsc 2,080; this is what is left to the
    // manager's indexes and per-user state.
    assert!(
        index <= 560.0,
        "the manager keeps {index:.0} bytes per idle connection"
    );
    drop(receivers);
}
