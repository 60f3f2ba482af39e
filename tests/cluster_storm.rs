//! A small reconnect storm (issue 19, item 5): two cluster nodes on one real
//! `redis-server`, 2,000 tabs (1,000 users x 2) on node A over real
//! loopback sockets, critical events emitted through node B all along. Node
//! A dies abruptly (its whole runtime is dropped: every socket cut without a
//! close frame, its Redis connections gone, nothing said to anyone); its
//! tabs reconnect to B at once, each resuming from the last offset it saw.
//! Every tab must end with every event of its user exactly once and in
//! order: nothing lost, repeated or reordered, and no `resync` (the stream
//! was never lost), within a bound.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use websocket_manager::events::{EventPrint, ResumePoint, StreamOffset};
use websocket_manager::managers::{ClusterConfig, ClusterWebSocketManager, ManagerConfig};
use websocket_manager::transport::{OriginPolicy, WebSocketService};
use websocket_manager::{DynManager, UserId, WebSocketManager};
use websocket_manager_test_support::e2e::{
    Connect, authenticator, axum_server, token, try_connect,
};
use websocket_manager_test_support::redis::{redis_for, unique_prefix};

const USERS: usize = 1_000;
const TABS: usize = 2;
const ROUNDS: usize = 6;
/// Every tab has caught up within this after the last event.
const CATCH_UP: Duration = Duration::from_secs(60);

/// A cluster node served on its own runtime and thread, so that dropping
/// the runtime kills it as abruptly as a SIGKILL kills a process.
struct Node {
    addr: SocketAddr,
    manager: DynManager,
    kill: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    fn start(redis: &str, prefix: &str, id: &str, history_reads: usize) -> Node {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
        let (redis, prefix, id) = (redis.to_owned(), prefix.to_owned(), id.to_owned());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let config = ManagerConfig::builder()
                    .max_connections_per_user(TABS)
                    .build()
                    .unwrap();
                let cluster = ClusterConfig::builder(redis)
                    .key_prefix(prefix)
                    .node_id(id)
                    .history_reads(history_reads)
                    .build()
                    .unwrap();
                let manager = ClusterWebSocketManager::new(config, cluster).unwrap();
                manager.ready().await.unwrap();
                let manager = DynManager::new(manager);
                let service = WebSocketService::builder(manager.clone(), authenticator())
                    .origins(OriginPolicy::any())
                    .build();
                let (addr, _server) = axum_server(service).await;
                ready_tx.send((addr, manager)).unwrap();
            });
            // Until killed; then every task, socket and Redis connection of
            // the node goes at once, without a word.
            let _ = kill_rx.recv();
            runtime.shutdown_background();
        });
        let (addr, manager) = ready_rx.recv().unwrap();
        Node {
            addr,
            manager,
            kill: Some(kill_tx),
            thread: Some(thread),
        }
    }

    fn kill(&mut self) {
        drop(self.kill.take());
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What one tab saw, shared with the test.
#[derive(Default)]
struct Seen {
    offsets: Vec<StreamOffset>,
    /// The print of the last event, sent with its offset.
    print: Option<EventPrint>,
    reconnects: usize,
    resyncs: usize,
}

/// One tab: reads critical events, and on a lost connection reconnects to
/// `fallback` with `resume` at the last offset it saw.
async fn tab(user: String, first: SocketAddr, fallback: SocketAddr, seen: Arc<Mutex<Seen>>) {
    let mut addr = first;
    loop {
        let last = {
            let seen = seen.lock().unwrap();
            seen.offsets.last().map(|&offset| ResumePoint {
                offset,
                print: seen.print,
            })
        };
        let path = match last {
            Some(point) => format!("/ws?resume={point}"),
            None => "/ws".to_owned(),
        };
        let Ok((mut client, _)) =
            try_connect(addr, Connect::new(&path, Some(token(&user, 3600)))).await
        else {
            // Refused or the node is gone: the survivor, with backoff.
            addr = fallback;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        while let Some(Ok(message)) = client.next().await {
            let Message::Text(text) = message else {
                if let Message::Close(_) = message {
                    break;
                }
                continue;
            };
            let frame: Value = serde_json::from_str(&text).unwrap();
            let mut seen = seen.lock().unwrap();
            if frame["type"] == "resync" {
                seen.resyncs += 1;
            } else if frame["critical"] == true {
                seen.offsets.push(StreamOffset::new(
                    frame["stream"].as_u64().unwrap(),
                    frame["sequence"].as_u64().unwrap(),
                ));
                seen.print = Some(EventPrint::of(&text));
            }
        }
        seen.lock().unwrap().reconnects += 1;
        addr = fallback;
    }
}

#[test]
fn a_node_killed_in_a_storm_loses_repeats_and_reorders_nothing() {
    let Some(redis) = redis_for("cluster_storm") else {
        return;
    };
    let prefix = unique_prefix("cluster_storm");
    let mut a = Node::start(&redis.url(), &prefix, "storm-a", 64);
    // The survivor reads at most 16 histories at once: the storm waits its
    // turn (or is told to come back) instead of flattening Redis.
    let b = Node::start(&redis.url(), &prefix, "storm-b", 16);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let users: Vec<String> = (0..USERS).map(|u| format!("storm-user-{u}")).collect();
        let mut tabs = Vec::new();
        for user in &users {
            for _ in 0..TABS {
                let seen = Arc::new(Mutex::new(Seen::default()));
                tokio::spawn(tab(user.clone(), a.addr, b.addr, Arc::clone(&seen)));
                tabs.push((user.clone(), seen));
            }
        }
        // Every tab registered on A before the first event.
        let all_on_a = Instant::now();
        loop {
            let stats = a
                .manager
                .downcast_ref::<ClusterWebSocketManager>()
                .unwrap()
                .cluster_stats();
            if stats.local_connections == USERS * TABS {
                break;
            }
            assert!(
                all_on_a.elapsed() < Duration::from_secs(60),
                "only {} of {} tabs connected",
                stats.local_connections,
                USERS * TABS
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let emitted: Arc<Mutex<HashMap<String, Vec<StreamOffset>>>> = Arc::default();
        let emit_round = {
            let emitted = Arc::clone(&emitted);
            let users = Arc::new(users.clone());
            let manager = b.manager.clone();
            move |round: usize| {
                let emitted = Arc::clone(&emitted);
                let users = Arc::clone(&users);
                let manager = manager.clone();
                async move {
                    // Four emitters, each with its own users, so a user's events
                    // are emitted in order.
                    let chunks: Vec<Vec<String>> =
                        users.chunks(USERS / 4).map(<[String]>::to_vec).collect();
                    let tasks = chunks.into_iter().map(|chunk| {
                        let emitted = Arc::clone(&emitted);
                        let manager = manager.clone();
                        tokio::spawn(async move {
                            for user in chunk {
                                let id = UserId::new(user.as_str()).unwrap();
                                let delivery = manager
                                    .emit_critical_event(
                                        &id,
                                        "agent_thinking",
                                        json!({"round": round}),
                                    )
                                    .await
                                    .unwrap();
                                emitted
                                    .lock()
                                    .unwrap()
                                    .entry(user)
                                    .or_default()
                                    .push(delivery.offset().unwrap());
                            }
                        })
                    });
                    for task in tasks {
                        task.await.unwrap();
                    }
                }
            }
        };
        // Round 0 reaches every tab on A: each has an offset to resume from.
        emit_round(0).await;
        let first = Instant::now();
        while tabs
            .iter()
            .any(|(_, seen)| seen.lock().unwrap().offsets.is_empty())
        {
            assert!(
                first.elapsed() < Duration::from_secs(30),
                "round 0 not delivered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Events keep flowing while A dies.
        let emitter = tokio::spawn({
            let emit_round = emit_round.clone();
            async move {
                for round in 1..ROUNDS {
                    emit_round(round).await;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let killed = Instant::now();
        tokio::task::spawn_blocking(move || a.kill()).await.unwrap();
        emitter.await.unwrap();

        let emitted = emitted.lock().unwrap().clone();
        let caught_up = |seen: &Seen, user: &str| {
            seen.offsets.last() == emitted.get(user).and_then(|list| list.last())
        };
        let last_event = Instant::now();
        while !tabs
            .iter()
            .all(|(user, seen)| caught_up(&seen.lock().unwrap(), user))
        {
            let behind = tabs
                .iter()
                .filter(|(user, seen)| !caught_up(&seen.lock().unwrap(), user))
                .count();
            assert!(
                last_event.elapsed() < CATCH_UP,
                "{behind} of {} tabs never caught up",
                tabs.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let all_caught_up = killed.elapsed();
        let mut reconnected = 0;
        for (user, seen) in &tabs {
            let seen = seen.lock().unwrap();
            assert_eq!(seen.resyncs, 0, "{user}: a resync, but nothing was lost");
            assert_eq!(
                &seen.offsets, &emitted[user],
                "{user}: every event exactly once, in order"
            );
            reconnected += usize::from(seen.reconnects > 0);
        }
        assert_eq!(reconnected, tabs.len(), "every tab of A reconnected");
        let stats = b
            .manager
            .downcast_ref::<ClusterWebSocketManager>()
            .unwrap()
            .cluster_stats();
        let (waits, shared) = (stats.history_read_waits, stats.history_reads_shared);
        assert!(waits > 0, "2,000 resumes never waited for one of 16 history reads");
        eprintln!(
            "storm: {} tabs reconnected to B and caught up {} ms after A died; {} events per user; {waits} registrations waited for a history read, {shared} shared one",
            tabs.len(),
            all_caught_up.as_millis(),
            ROUNDS
        );
    });
    drop(b);
}
