//! Helpers shared by the manager tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use websocket_manager::{
    events::CriticalEnvelope,
    managers::{IsolatedWebSocketManager, UnifiedWebSocketManager},
};
use websocket_manager::{managers::*, socket::*, startup::*, *};

pub fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

pub fn thread(name: &str) -> ThreadId {
    ThreadId::new(name).unwrap()
}

pub fn conn_id(name: &str) -> ConnectionId {
    ConnectionId::new(name).unwrap()
}

/// The user the generic tests run as (the isolated manager's owner).
pub fn alice() -> UserId {
    user("alice")
}

/// Both reference managers, the isolated one owned by `alice`.
pub fn both(config: ManagerConfig) -> Vec<(&'static str, DynManager)> {
    vec![
        (
            "unified",
            DynManager::new(UnifiedWebSocketManager::new(config.clone())),
        ),
        (
            "isolated",
            DynManager::new(IsolatedWebSocketManager::new(
                UserContext::new(alice()),
                config,
            )),
        ),
    ]
}

/// A socket with the manager's default queue limits.
pub fn socket() -> (WebSocketHandle, OutboundReceiver) {
    WebSocketHandle::channel(ManagerConfig::default().queue_limits())
}

/// A connection for `user` with a fixed id and an optional thread.
pub fn connection(
    id: &str,
    user_id: &UserId,
    thread_id: Option<&str>,
) -> (WebSocketConnection, OutboundReceiver) {
    let (handle, receiver) = socket();
    let mut connection = WebSocketConnection::with_id(conn_id(id), user_id.clone(), handle);
    if let Some(t) = thread_id {
        connection = connection.with_thread(thread(t));
    }
    (connection, receiver)
}

/// Polls a future once; the managers never wait, so their futures are ready
/// at the first poll. Panics otherwise.
pub fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("manager future was not ready at first poll"),
    }
}

/// The next event already in the queue, without waiting.
pub fn try_recv(receiver: &mut OutboundReceiver) -> Option<OutboundEvent> {
    let mut future = pin!(receiver.recv());
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(event) => event,
        Poll::Pending => None,
    }
}

/// Every frame already queued, in order (stops at a close).
pub fn drain_frames(receiver: &mut OutboundReceiver) -> Vec<TextFrame> {
    let mut frames = Vec::new();
    while let Some(OutboundEvent::Frame(frame)) = try_recv(receiver) {
        frames.push(frame);
    }
    frames
}

/// Every JSON value already queued, in order.
pub fn drain_json(receiver: &mut OutboundReceiver) -> Vec<serde_json::Value> {
    drain_frames(receiver)
        .iter()
        .map(|f| serde_json::from_str(f.as_str()).unwrap())
        .collect()
}

/// Parses a critical event frame.
pub fn envelope(value: &serde_json::Value) -> CriticalEnvelope {
    serde_json::from_value(value.clone()).unwrap()
}

/// A small seeded xorshift generator, so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}
