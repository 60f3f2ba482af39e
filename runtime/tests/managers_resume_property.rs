//! Randomized and concurrent: emitters keep emitting critical events while
//! clients connect, read, stall, drop abruptly or cleanly, and reconnect with
//! their last offset (or, after a "reload", without one). For every client:
//! within a stream, every event follows the previous one it saw (no gap that
//! a resync notice did not announce, nothing at or before its offset
//! repeated), a stream changes only after a notice, no client ever sees
//! another user's event, and a final resume brings every client up to its
//! user's latest offset.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use websocket_manager::{events::*, managers::*, socket::*, *};
use websocket_manager::{
    events::{AGENT_THINKING, CriticalEnvelope, ResyncNotice},
    managers::UnifiedWebSocketManager,
};

const USERS: usize = 3;
const CLIENTS_PER_USER: usize = 2;
const EMITTERS: u64 = 2;
const EVENTS_PER_EMITTER: usize = 1500;
const SESSIONS_PER_CLIENT: usize = 40;

/// What one client knows and has checked.
struct Client {
    user: UserId,
    last: Option<StreamOffset>,
    events_seen: usize,
    notices_seen: usize,
    violations: Vec<String>,
}

impl Client {
    /// Checks one session's frames in order.
    fn check_session(&mut self, frames: &[Value]) {
        let mut announced: Option<ResyncNotice> = None;
        for (i, frame) in frames.iter().enumerate() {
            if frame["type"] == "resync" {
                if i != 0 {
                    self.violations
                        .push(format!("{}: a notice at position {i}", self.user));
                }
                announced = Some(serde_json::from_value(frame.clone()).unwrap());
                self.notices_seen += 1;
                continue;
            }
            let event: CriticalEnvelope = serde_json::from_value(frame.clone()).unwrap();
            if event.data["u"] != self.user.as_str() {
                self.violations
                    .push(format!("{} got {}'s event", self.user, event.data["u"]));
            }
            let got = StreamOffset::new(event.stream, event.sequence);
            let expected = match (announced.take(), self.last) {
                (Some(notice), _) => Some(notice.oldest_retained.unwrap_or(StreamOffset::new(
                    notice.latest.stream,
                    notice.latest.sequence + 1,
                ))),
                (None, Some(last)) => Some(StreamOffset::new(last.stream, last.sequence + 1)),
                (None, None) => None, // a fresh client: anything may come first
            };
            if let Some(expected) = expected
                && got != expected
            {
                self.violations.push(format!(
                    "{}: expected {expected}, got {got} (last seen {:?})",
                    self.user, self.last
                ));
            }
            self.last = Some(got);
            self.events_seen += 1;
        }
    }
}

/// Reads what arrives within `wait` (at most `limit` frames); `None` once the
/// server closed the socket.
async fn read_some(
    receiver: &mut OutboundReceiver,
    limit: usize,
    wait: Duration,
    frames: &mut Vec<Value>,
) -> bool {
    for _ in 0..limit {
        match tokio::time::timeout(wait, receiver.recv()).await {
            Ok(Some(OutboundEvent::Frame(frame))) => {
                frames.push(serde_json::from_str(frame.as_str()).unwrap())
            }
            Ok(_) => return false,
            Err(_) => return true,
        }
    }
    true
}

async fn run_client(
    manager: Arc<UnifiedWebSocketManager>,
    mut client: Client,
    seed: u64,
    emitting: Arc<AtomicBool>,
) -> Client {
    let mut rng = Rng::new(seed);
    let limits = manager.config().queue_limits();
    for session in 0..SESSIONS_PER_CLIENT {
        if !emitting.load(Ordering::Relaxed) && session > 2 {
            break;
        }
        if rng.below(8) == 0 {
            // a reload: the page lost its offset and starts afresh
            client.last = None;
        }
        let (socket, mut receiver) = WebSocketHandle::channel(limits);
        let id = ConnectionId::new(format!("{}-{seed}-{session}", client.user)).unwrap();
        let mut connection = WebSocketConnection::with_id(id.clone(), client.user.clone(), socket);
        if let Some(offset) = client.last {
            connection = connection.with_resume(offset);
        }
        manager.add_connection(connection).await.unwrap();
        let mut frames = Vec::new();
        let open = read_some(
            &mut receiver,
            rng.below(60) + 1,
            Duration::from_millis(2),
            &mut frames,
        )
        .await;
        match rng.below(3) {
            // abrupt: the socket dies with whatever is queued; the server
            // notices a little later
            0 => {
                drop(receiver);
                tokio::time::sleep(Duration::from_millis(rng.below(3) as u64)).await;
            }
            // half-open: the client stops reading while the server keeps
            // pushing (its queue may fill and be closed as a slow consumer)
            1 => {
                tokio::time::sleep(Duration::from_millis(rng.below(5) as u64)).await;
                drop(receiver);
            }
            // clean: read what is there, then leave
            _ => {
                if open {
                    read_some(&mut receiver, 1000, Duration::from_millis(1), &mut frames).await;
                }
            }
        }
        let _ = manager.remove_connection(&id).await;
        client.check_session(&frames);
    }
    client
}

#[test]
fn random_drops_and_resumes_never_leave_an_unannounced_gap_or_a_repeat() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let config = ManagerConfig::builder()
        .queue_capacity(32)
        .history_capacity(16)
        .build()
        .unwrap();
    let manager = Arc::new(UnifiedWebSocketManager::new(config));
    let users: Vec<UserId> = (0..USERS).map(|i| user(&format!("u{i}"))).collect();
    let emitting = Arc::new(AtomicBool::new(true));

    let clients = runtime.block_on(async {
        let mut client_tasks = Vec::new();
        for (u, user) in users.iter().enumerate() {
            for k in 0..CLIENTS_PER_USER {
                let client = Client {
                    user: user.clone(),
                    last: None,
                    events_seen: 0,
                    notices_seen: 0,
                    violations: Vec::new(),
                };
                let seed = (u * CLIENTS_PER_USER + k) as u64 + 1;
                client_tasks.push(tokio::spawn(run_client(
                    manager.clone(),
                    client,
                    seed,
                    emitting.clone(),
                )));
            }
        }
        let mut emitters = Vec::new();
        for e in 0..EMITTERS {
            let manager = manager.clone();
            let users = users.clone();
            emitters.push(tokio::spawn(async move {
                let mut rng = Rng::new(100 + e);
                let mut refused = 0usize;
                for _ in 0..EVENTS_PER_EMITTER {
                    let user = &users[rng.below(USERS)];
                    match manager
                        .emit_critical_event(user, AGENT_THINKING, json!({"u": user.as_str()}))
                        .await
                    {
                        Ok(delivery) => assert!(delivery.offset().is_some()),
                        // every tab offline for long: typed, never silent
                        Err(ManagerError::HistoryFull { .. }) => refused += 1,
                        Err(other) => panic!("emit: {other}"),
                    }
                    if rng.below(4) == 0 {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
                refused
            }));
        }
        for emitter in emitters {
            emitter.await.unwrap();
        }
        emitting.store(false, Ordering::Relaxed);
        let mut clients = Vec::new();
        for task in client_tasks {
            clients.push(task.await.unwrap());
        }
        clients
    });

    // A final resume brings every client up to its user's latest offset.
    let mut clients = clients;
    let mut notices = 0;
    for (i, client) in clients.iter_mut().enumerate() {
        let (socket, mut receiver) = WebSocketHandle::channel(manager.config().queue_limits());
        let id = ConnectionId::new(format!("final-{i}")).unwrap();
        let mut connection = WebSocketConnection::with_id(id.clone(), client.user.clone(), socket);
        if let Some(offset) = client.last {
            connection = connection.with_resume(offset);
        }
        now(manager.add_connection(connection)).unwrap();
        client.check_session(&drain_json(&mut receiver));
        now(manager.remove_connection(&id)).unwrap();
        let latest = manager.get_connection_health(&client.user).latest_offset;
        assert_eq!(client.last, latest, "{}: not caught up", client.user);
        assert!(
            client.violations.is_empty(),
            "{} violations, first: {:?}",
            client.violations.len(),
            &client.violations[..client.violations.len().min(5)]
        );
        assert!(
            client.events_seen > 100,
            "{}: saw only {}",
            client.user,
            client.events_seen
        );
        notices += client.notices_seen;
    }
    // However the random phase went (on a loaded machine every client may
    // have kept up), a client that resumes from its stream's first event,
    // long evicted, is told what it lost, then gets the rest once each.
    for user in &users {
        let latest = manager.get_connection_health(user).latest_offset.unwrap();
        let stale = StreamOffset::new(latest.stream, 0);
        let mut client = Client {
            user: user.clone(),
            last: Some(stale),
            events_seen: 0,
            notices_seen: 0,
            violations: Vec::new(),
        };
        let (socket, mut receiver) = WebSocketHandle::channel(manager.config().queue_limits());
        let id = ConnectionId::new(format!("stale-{user}")).unwrap();
        let connection =
            WebSocketConnection::with_id(id.clone(), user.clone(), socket).with_resume(stale);
        now(manager.add_connection(connection)).unwrap();
        client.check_session(&drain_json(&mut receiver));
        now(manager.remove_connection(&id)).unwrap();
        assert_eq!(client.notices_seen, 1, "{user}: the loss is announced");
        assert_eq!(client.last, Some(latest), "{user}: not caught up");
        assert!(client.violations.is_empty(), "{:?}", client.violations);
        notices += client.notices_seen;
    }
    let stats = manager.stats();
    // The scenario must exercise what it claims to: replays, evictions and
    // announced losses all happened.
    assert!(stats.replayed > 100, "{stats}");
    assert!(stats.history_evicted > 0, "{stats}");
    assert!(
        notices > 0 && stats.resync_notices as usize >= notices,
        "{stats}"
    );
}
