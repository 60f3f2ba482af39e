//! The library's server against a bare tokio-tungstenite fan-out server, in
//! the same run, with the same client, over real loopback sockets.
//!
//! * library (axum): axum + `WebSocketService` (JWT at the upgrade) +
//!   `UnifiedWebSocketManager::send_to_user`.
//! * library (tungstenite): the same service through the library's
//!   tokio-tungstenite adapter (`transport::tungstenite::accept`), which
//!   tells the cost of axum/hyper's upgraded stream from the library's own.
//! * bare: what people write by hand, done well: `accept_hdr_async`, a
//!   `RwLock<HashMap<user, Vec<Sender>>>`, a bounded mpsc queue (same
//!   capacity as the manager's) per socket filled with `try_send`, the text
//!   serialized once per send, and a writer task that feeds everything
//!   queued before one flush (as the library's writer does).
//!
//! Every server sets `TCP_NODELAY` on every accepted socket (and the client
//! on its own), so neither pays Nagle/delayed-ACK stalls.
//!
//! Scenarios, each rotating the servers round by round (warm-up discarded):
//! * `8 tabs x 500`: one user with 8 tabs; 500 `send_to_user` back to back.
//! * `broadcast 1000`: 1,000 sockets over 50 users (20 tabs each); 20
//!   broadcasts, each a `send_to_user` to every user.
//!
//! Each message carries its send time (ns on a process-wide monotonic
//! clock); the client records send-to-receipt latency for every message.
//! msg/s = messages received / time from the first send to the last
//! receipt, summed over rounds. Output: one table, with lib/bare ratios
//! over all rounds and, more robust on a shared machine, the median of the
//! per-round ratios (rounds of the servers run back to back).
//!
//! ```text
//! cargo bench --bench transport_e2e
//! TRANSPORT_E2E_ONLY=axum TRANSPORT_E2E_ROUNDS=20 perf record -g target/release/deps/transport_e2e-<hash>
//! ```
//!
//! `cpu us/msg` is the CPU time of the whole process (servers, sender and
//! clients, all threads) per message received, from `/proc/self/task/*/schedstat`.
//! `TRANSPORT_E2E_ONLY=axum|tung|bare` runs the broadcast on that server
//! alone (for a profiler, which cannot tell the servers apart in one run);
//! `TRANSPORT_E2E_CLIENT_READ_BUFFER=<bytes>` sets the clients' tungstenite
//! read buffer (default tungstenite's 128 KiB).
//!
//! 6,000+ sockets live in this one process (clients and three servers), so
//! the soft `RLIMIT_NOFILE` is raised to the hard limit at start.
#![allow(missing_docs, clippy::unwrap_used)]

use websocket_manager::DynManager;
use websocket_manager_test_support::bench as auth;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use axum::serve::ListenerExt;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use websocket_manager::managers::UnifiedWebSocketManager;
use websocket_manager::transport::WebSocketService;
use websocket_manager::{UserId, WebSocketManager, managers::ManagerConfig};

/// Rounds per server and scenario, after one warm-up round each. A round
/// takes milliseconds (the bench's time goes to opening 6,000 sockets), and
/// on a shared VM one round's ratio swings by ±15 %: many rounds make the
/// median of the paired ratios steady from run to run.
const TAB_ROUNDS: usize = 60;
const BROADCAST_ROUNDS: usize = 45;
const TABS: usize = 8;
const BURST: usize = 500;
const BROADCAST_USERS: usize = 50;
const TABS_PER_BROADCAST_USER: usize = 20;
const BROADCASTS: usize = 20;
/// Bounds every round, so nothing can hang.
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);

type Client = WebSocketStream<TcpStream>;

/// The clients' tungstenite read buffer: `TRANSPORT_E2E_CLIENT_READ_BUFFER`
/// bytes, or tungstenite's default (128 KiB). tungstenite zero-fills the
/// free part of it before every read, about a fifth of this process's CPU
/// time with the default; both servers pay it alike (the ratios barely move
/// with 4 KiB), but it dilutes them.
fn client_read_buffer() -> usize {
    env_number("TRANSPORT_E2E_CLIENT_READ_BUFFER").unwrap_or(128 << 10)
}

fn env_number(name: &str) -> Option<usize> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value}: not a number")),
    )
}

/// Nanoseconds since the first call, on a monotonic clock shared by the
/// servers' senders and the clients (same process).
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn payload(seq: usize) -> Value {
    json!({
        "type": "agent_thinking",
        "seq": seq,
        "sent_ns": now_ns(),
        "data": {"run_id": "run-42", "text": "Looking up the three most recent invoices for this customer"},
    })
}

// ----- the two servers --------------------------------------------------

/// One user's sockets in the bare server.
type BareTabs = Vec<(u64, mpsc::Sender<Message>)>;

#[derive(Default)]
struct BareRegistry {
    users: RwLock<HashMap<String, BareTabs>>,
    next_id: AtomicU64,
}

impl BareRegistry {
    fn send_to_user(&self, user: &str, message: &Value) -> usize {
        let text = Utf8Bytes::from(serde_json::to_string(message).unwrap());
        let users = self.users.read().unwrap();
        let Some(tabs) = users.get(user) else {
            return 0;
        };
        tabs.iter()
            .filter(|(_, tab)| tab.try_send(Message::Text(text.clone())).is_ok())
            .count()
    }

    fn connections(&self, user: &str) -> usize {
        self.users.read().unwrap().get(user).map_or(0, Vec::len)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Adapter {
    Axum,
    Tungstenite,
}

enum Server {
    Library {
        addr: SocketAddr,
        manager: Arc<UnifiedWebSocketManager>,
        adapter: Adapter,
    },
    Bare {
        addr: SocketAddr,
        registry: Arc<BareRegistry>,
    },
}

impl Server {
    async fn library(adapter: Adapter) -> Server {
        let manager = Arc::new(UnifiedWebSocketManager::new(ManagerConfig::default()));
        let service = WebSocketService::builder(
            DynManager::from(Arc::clone(&manager)),
            auth::authenticator(),
        )
        .build();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        match adapter {
            Adapter::Axum => {
                let app = axum::Router::new()
                    .route(
                        "/ws",
                        axum::routing::get(websocket_manager::transport::axum::upgrade),
                    )
                    .with_state(service);
                let listener = listener.tap_io(|tcp| tcp.set_nodelay(true).unwrap());
                tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            }
            Adapter::Tungstenite => {
                tokio::spawn(async move {
                    loop {
                        let (stream, _) = listener.accept().await.unwrap();
                        stream.set_nodelay(true).unwrap();
                        let service = service.clone();
                        tokio::spawn(async move {
                            let _ =
                                websocket_manager::transport::tungstenite::accept(&service, stream)
                                    .await;
                        });
                    }
                });
            }
        }
        Server::Library {
            addr,
            manager,
            adapter,
        }
    }

    async fn bare() -> Server {
        let registry = Arc::new(BareRegistry::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepting = Arc::clone(&registry);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                stream.set_nodelay(true).unwrap();
                tokio::spawn(serve_bare(stream, Arc::clone(&accepting)));
            }
        });
        Server::Bare { addr, registry }
    }

    fn name(&self) -> &'static str {
        match self {
            Server::Library {
                adapter: Adapter::Axum,
                ..
            } => "lib/axum",
            Server::Library {
                adapter: Adapter::Tungstenite,
                ..
            } => "lib/tung",
            Server::Bare { .. } => "bare",
        }
    }

    async fn connect(&self, user: &str) -> Client {
        let (addr, request) = match self {
            Server::Library { addr, .. } => (addr, auth::upgrade_request(*addr, user)),
            Server::Bare { addr, .. } => (
                addr,
                format!("ws://{addr}/ws?user={user}")
                    .into_client_request()
                    .unwrap(),
            ),
        };
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let config = WebSocketConfig::default().read_buffer_size(client_read_buffer());
        tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .unwrap()
            .0
    }

    fn connections(&self, user: &str) -> usize {
        match self {
            Server::Library { manager, .. } => manager
                .get_user_connections(&UserId::new(user).unwrap())
                .len(),
            Server::Bare { registry, .. } => registry.connections(user),
        }
    }

    async fn send_to_user(&self, user: &UserId, message: Value) {
        let delivered = match self {
            Server::Library { manager, .. } => manager
                .send_to_user(user, message)
                .await
                .unwrap()
                .recipients(),
            Server::Bare { registry, .. } => registry.send_to_user(user.as_str(), &message),
        };
        assert!(
            delivered > 0,
            "{}: nothing delivered to {user}",
            self.name()
        );
    }

    /// Opens `tabs` sockets for `user` and waits until the server has
    /// registered them all.
    async fn open_tabs(&self, user: &str, tabs: usize) -> Vec<Client> {
        let mut clients = Vec::with_capacity(tabs);
        for _ in 0..tabs {
            clients.push(self.connect(user).await);
        }
        let deadline = Instant::now() + ROUND_TIMEOUT;
        while self.connections(user) < tabs {
            assert!(Instant::now() < deadline, "{user}'s tabs never registered");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        clients
    }
}

/// The bare server's connection: the user from `?user=`, a writer task
/// that batches what is queued into one flush, a reader until close.
#[allow(clippy::result_large_err)] // the callback signature is tungstenite's
async fn serve_bare(stream: TcpStream, registry: Arc<BareRegistry>) {
    let mut user = String::new();
    let callback = |request: &Request, response: Response| {
        user = request
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("user="))
            .unwrap_or("anonymous")
            .to_owned();
        Ok(response)
    };
    let Ok(socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let (mut sink, mut inbound) = socket.split();
    let (tab, mut queue) = mpsc::channel(ManagerConfig::default().queue_capacity());
    let id = registry.next_id.fetch_add(1, Ordering::Relaxed);
    registry
        .users
        .write()
        .unwrap()
        .entry(user.clone())
        .or_default()
        .push((id, tab));
    let writer = tokio::spawn(async move {
        while let Some(message) = queue.recv().await {
            if sink.feed(message).await.is_err() {
                return;
            }
            while let Ok(message) = queue.try_recv() {
                if sink.feed(message).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(message)) = inbound.next().await {
        if message.is_close() {
            break;
        }
    }
    let mut users = registry.users.write().unwrap();
    if let Some(tabs) = users.get_mut(&user) {
        tabs.retain(|(tab, _)| *tab != id);
        if tabs.is_empty() {
            users.remove(&user);
        }
    }
    drop(users);
    writer.abort();
}

// ----- the client -------------------------------------------------------

/// What one socket saw in a round.
struct Received {
    client: Client,
    latencies_ns: Vec<u64>,
    last_receipt: Instant,
}

/// Reads `count` text messages, recording each one's latency.
async fn receive(mut client: Client, count: usize) -> Received {
    let mut latencies_ns = Vec::with_capacity(count);
    while latencies_ns.len() < count {
        match client.next().await {
            Some(Ok(Message::Text(text))) => {
                let now = now_ns();
                let message: Value = serde_json::from_str(&text).unwrap();
                // The library's protocol frames (`hello` first, `heartbeat`
                // when idle) carry no send time.
                if message["type"] == "hello" || message["type"] == "heartbeat" {
                    continue;
                }
                let sent = message["sent_ns"].as_u64().unwrap();
                latencies_ns.push(now.saturating_sub(sent));
            }
            Some(Ok(_)) => continue,
            other => panic!("a tab closed mid-round: {other:?}"),
        }
    }
    Received {
        client,
        latencies_ns,
        last_receipt: Instant::now(),
    }
}

/// One server's figures over all its rounds.
#[derive(Default)]
struct Tally {
    messages: usize,
    busy: Duration,
    latencies_ns: Vec<u64>,
    /// Per round: (msg/s, p99 ms), for ratios paired round by round.
    rounds: Vec<(f64, f64)>,
    /// CPU time of the whole process (servers, senders and clients) over the rounds.
    cpu: Duration,
}

impl Tally {
    fn messages_per_second(&self) -> f64 {
        self.messages as f64 / self.busy.as_secs_f64()
    }

    fn percentile_ms(&mut self, q: f64) -> f64 {
        percentile_ms(&mut self.latencies_ns, q)
    }

    /// CPU time of the whole process (servers, sender and clients) per message.
    fn cpu_us_per_message(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.messages as f64
    }
}

fn percentile_ms(latencies_ns: &mut [u64], q: f64) -> f64 {
    latencies_ns.sort_unstable();
    let at = ((latencies_ns.len() - 1) as f64 * q).round() as usize;
    latencies_ns[at] as f64 / 1e6
}

/// CPU time of every thread of this process so far (`/proc/self/task/*/schedstat`,
/// nanoseconds on a CPU); zero where that is not available.
fn process_cpu() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// Median of `library[i] / bare[i]` over rounds.
fn median_ratio(library: &[f64], bare: &[f64]) -> f64 {
    let mut ratios: Vec<f64> = library.iter().zip(bare).map(|(l, b)| l / b).collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

/// One round: every client reads `per_client` messages while `send` runs;
/// returns the clients for the next round.
async fn round<F, Fut>(
    clients: Vec<Client>,
    per_client: usize,
    send: F,
    tally: Option<&mut Tally>,
) -> Vec<Client>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let readers: Vec<_> = clients
        .into_iter()
        .map(|client| tokio::spawn(receive(client, per_client)))
        .collect();
    let cpu_start = process_cpu();
    let start = Instant::now();
    let finished = tokio::time::timeout(ROUND_TIMEOUT, async {
        send().await;
        let mut done = Vec::with_capacity(readers.len());
        for reader in readers {
            done.push(reader.await.unwrap());
        }
        done
    })
    .await
    .expect("a round did not finish in time");
    let last = finished.iter().map(|r| r.last_receipt).max().unwrap();
    let cpu = process_cpu().saturating_sub(cpu_start);
    if let Some(tally) = tally {
        tally.cpu += cpu;
        let messages = finished.len() * per_client;
        let mut latencies: Vec<u64> = finished
            .iter()
            .flat_map(|r| r.latencies_ns.iter().copied())
            .collect();
        tally.rounds.push((
            messages as f64 / (last - start).as_secs_f64(),
            percentile_ms(&mut latencies, 0.99),
        ));
        tally.messages += messages;
        tally.busy += last - start;
        tally.latencies_ns.extend_from_slice(&latencies);
    }
    finished.into_iter().map(|r| r.client).collect()
}

/// Runs `rounds` (plus one warm-up) of a scenario on every server,
/// rotating which goes first.
async fn scenario(
    servers: &[Server],
    clients: &mut [Vec<Client>],
    users: &[UserId],
    messages_per_user: usize,
    rounds: usize,
) -> Vec<Tally> {
    let mut tallies: Vec<Tally> = servers.iter().map(|_| Tally::default()).collect();
    for round_no in 0..=rounds {
        for k in 0..servers.len() {
            let i = (round_no + k) % servers.len();
            let server = &servers[i];
            let send = || async {
                for seq in 0..messages_per_user {
                    for user in users {
                        server.send_to_user(user, payload(seq)).await;
                    }
                }
            };
            let taken = std::mem::take(&mut clients[i]);
            let tally = (round_no > 0).then_some(&mut tallies[i]);
            clients[i] = round(taken, messages_per_user, send, tally).await;
        }
    }
    tallies
}

/// Rows per server, then each library's ratio to the bare server (the last).
fn report(name: &str, servers: &[Server], tallies: &mut [Tally]) {
    for (server, tally) in servers.iter().zip(tallies.iter_mut()) {
        let server = server.name();
        let (p50, p99, max) = (
            tally.percentile_ms(0.5),
            tally.percentile_ms(0.99),
            tally.percentile_ms(1.0),
        );
        println!(
            "{name:<16} {server:<8} {:>12.0} {:>9.2} {:>9.2} {:>9.2} {:>10.2}",
            tally.messages_per_second(),
            p50,
            p99,
            max,
            tally.cpu_us_per_message(),
        );
    }
    let (libraries, bare) = tallies.split_at_mut(servers.len() - 1);
    let bare = &mut bare[0];
    let column = |tally: &Tally, i: usize| -> Vec<f64> {
        tally
            .rounds
            .iter()
            .map(|r| if i == 0 { r.0 } else { r.1 })
            .collect()
    };
    for (server, library) in servers.iter().zip(libraries) {
        println!(
            "{name:<16} {:<13} {:>6.2}x {:>8.2}x {:>8.2}x {:>8.2}x {:>9.2}x   paired: {:.2}x msg/s, {:.2}x p99",
            format!("{}/bare", server.name()),
            library.messages_per_second() / bare.messages_per_second(),
            library.percentile_ms(0.5) / bare.percentile_ms(0.5),
            library.percentile_ms(0.99) / bare.percentile_ms(0.99),
            library.percentile_ms(1.0) / bare.percentile_ms(1.0),
            library.cpu_us_per_message() / bare.cpu_us_per_message(),
            median_ratio(&column(library, 0), &column(bare, 0)),
            median_ratio(&column(library, 1), &column(bare, 1)),
        );
    }
}

/// `TRANSPORT_E2E_ONLY=axum|tung|bare`: the broadcast on one server alone,
/// for a profiler (`perf record`, `valgrind --tool=callgrind`), which
/// cannot tell the servers apart when they share the worker threads.
/// `TRANSPORT_E2E_ROUNDS` rounds (default 100) after a warm-up.
async fn one_server(name: &str) {
    let server = match name {
        "axum" => Server::library(Adapter::Axum).await,
        "tung" => Server::library(Adapter::Tungstenite).await,
        "bare" => Server::bare().await,
        other => panic!("TRANSPORT_E2E_ONLY={other}: expected axum, tung or bare"),
    };
    let rounds = env_number("TRANSPORT_E2E_ROUNDS").unwrap_or(100);
    let users: Vec<UserId> = (0..BROADCAST_USERS)
        .map(|i| UserId::new(format!("b{i}")).unwrap())
        .collect();
    let mut clients = vec![Vec::new()];
    for user in &users {
        clients[0].extend(
            server
                .open_tabs(user.as_str(), TABS_PER_BROADCAST_USER)
                .await,
        );
    }
    let servers = [server];
    let mut tally = scenario(&servers, &mut clients, &users, BROADCASTS, rounds).await;
    let tally = &mut tally[0];
    println!(
        "broadcast {} on {} alone, {rounds} rounds: {:.0} msg/s, p99 {:.2} ms, CPU {:.2} us per message",
        BROADCAST_USERS * TABS_PER_BROADCAST_USER,
        servers[0].name(),
        tally.messages_per_second(),
        tally.percentile_ms(0.99),
        tally.cpu_us_per_message(),
    );
}

async fn bench() {
    if let Ok(only) = std::env::var("TRANSPORT_E2E_ONLY") {
        return one_server(&only).await;
    }
    // The bare server last: `report` compares the others to it.
    let servers = [
        Server::library(Adapter::Axum).await,
        Server::library(Adapter::Tungstenite).await,
        Server::bare().await,
    ];

    // 8 tabs x 500.
    let tab_user = [UserId::new("tabs").unwrap()];
    let mut clients = Vec::new();
    for server in &servers {
        clients.push(server.open_tabs("tabs", TABS).await);
    }
    let mut tabs = scenario(&servers, &mut clients, &tab_user, BURST, TAB_ROUNDS).await;

    // Broadcast to 1,000 sockets over 50 users.
    let users: Vec<UserId> = (0..BROADCAST_USERS)
        .map(|i| UserId::new(format!("b{i}")).unwrap())
        .collect();
    let mut clients: Vec<Vec<Client>> = servers.iter().map(|_| Vec::new()).collect();
    for (server, sockets) in servers.iter().zip(&mut clients) {
        for user in &users {
            sockets.extend(
                server
                    .open_tabs(user.as_str(), TABS_PER_BROADCAST_USER)
                    .await,
            );
        }
    }
    let mut broadcast =
        scenario(&servers, &mut clients, &users, BROADCASTS, BROADCAST_ROUNDS).await;

    println!(
        "\n{:<16} {:<8} {:>12} {:>9} {:>9} {:>9} {:>10}",
        "scenario", "server", "msg/s", "p50 ms", "p99 ms", "max ms", "cpu us/msg"
    );
    report(&format!("{TABS} tabs x {BURST}"), &servers, &mut tabs);
    report(
        &format!("broadcast {}", BROADCAST_USERS * TABS_PER_BROADCAST_USER),
        &servers,
        &mut broadcast,
    );
    println!(
        "({TAB_ROUNDS} and {BROADCAST_ROUNDS} rounds per server after a warm-up, rotating; latency = payload send time to client receipt;\n ratio rows: over all rounds, then `paired`: the median of the per-round ratios, robust to load from other jobs)"
    );
}

fn main() {
    // Clients and the three servers share this process: 6,000+ descriptors.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => println!("RLIMIT_NOFILE soft limit: {limit}"),
        Err(error) => println!("cannot raise RLIMIT_NOFILE ({error}); 1,000 sockets may fail"),
    }
    // The servers, the senders and the clients share two worker threads
    // (the machine has two cores); everything runs on the workers.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async { tokio::spawn(bench()).await.unwrap() });
}
