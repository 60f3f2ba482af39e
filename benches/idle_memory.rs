//! Idle memory per connection, measured as anyone can rerun it:
//!
//! ```text
//! cargo bench --bench idle_memory                        # 10,000 connections
//! cargo bench --bench idle_memory -- --connections 2000 --servers axum,bare
//! ```
//!
//! Each server runs in a child process of this binary (so the clients'
//! memory is not counted): the library over axum (`transport::axum::serve`,
//! as in the example), the library over the tokio-tungstenite adapter
//! (`transport::tungstenite::serve`), and two baselines: a bare
//! tokio-tungstenite echo server (no auth, no registry, tungstenite's default
//! buffers) and the same with 4 KiB read and write buffers (the library's
//! read buffer; its write buffer is 16 KiB, allocated at the first write). This
//! process opens N loopback connections with a raw HTTP upgrade carrying a
//! JWT (each connection is its own user), waits until they are idle, and
//! reads the child's RSS (`VmRSS`) before and after: the delta divided by N
//! is the cost of one idle authenticated connection. Then the child sends a
//! burst of 20 messages to every user, waits until every queue is drained
//! (the frames sit in the kernel's socket buffers, not in the process) and
//! the RSS is read again.
//!
//! Last, in this process, the manager alone: N connections registered in a
//! `UnifiedWebSocketManager` through bare handles, its heap bytes per idle
//! connection counted by a counting allocator, before and after a burst of
//! 50 messages per user that is drained.
//!
//! Needs N + 64 open files per process: the binary raises its soft limit to
//! the hard limit itself (`ulimit -n`), and says so when that is not enough.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use websocket_manager::DynManager;
use websocket_manager_test_support::bench as auth;
use websocket_manager_test_support::bench::cpu_model;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use websocket_manager::managers::UnifiedWebSocketManager;
use websocket_manager::transport::{TransportConfig, WebSocketService};
use websocket_manager::{
    UserId, WebSocketConnection, WebSocketHandle, WebSocketManager, managers::ManagerConfig,
    socket::OutboundEvent,
};

/// Messages per user in the burst sent to the servers.
const SERVER_BURST: usize = 20;
/// Messages per user in the burst sent to the bare manager.
const MANAGER_BURST: usize = 50;

/// Counts this process's live heap bytes (the manager measurement).
#[path = "../tests/common/counting_alloc.rs"]
mod counting_alloc;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Server {
    /// The library, axum adapter.
    Axum,
    /// The library, tokio-tungstenite adapter.
    Tungstenite,
    /// Bare tokio-tungstenite echo server, default buffers.
    Bare,
    /// Bare tokio-tungstenite echo server, 4 KiB buffers.
    Bare4k,
}

impl Server {
    const ALL: [Server; 4] = [
        Server::Bare,
        Server::Bare4k,
        Server::Axum,
        Server::Tungstenite,
    ];

    fn name(self) -> &'static str {
        match self {
            Server::Axum => "axum",
            Server::Tungstenite => "tungstenite",
            Server::Bare => "bare",
            Server::Bare4k => "bare-4k",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Server::Axum => "library, axum adapter (transport::axum::serve)",
            Server::Tungstenite => "library, tungstenite adapter (transport::tungstenite::serve)",
            Server::Bare => "bare tokio-tungstenite echo, default 128 KiB buffers",
            Server::Bare4k => "bare tokio-tungstenite echo, 4 KiB buffers",
        }
    }

    fn parse(name: &str) -> Option<Server> {
        Server::ALL.into_iter().find(|s| s.name() == name)
    }
}

struct Args {
    connections: usize,
    servers: Vec<Server>,
    child: Option<Server>,
}

fn parse_args() -> Args {
    let mut args = Args {
        connections: 10_000,
        servers: Server::ALL.to_vec(),
        child: None,
    };
    let mut raw = std::env::args().skip(1);
    while let Some(arg) = raw.next() {
        match arg.as_str() {
            "--connections" => {
                args.connections = raw
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--connections takes a number")
            }
            "--servers" => {
                args.servers = raw
                    .next()
                    .expect("--servers takes a list")
                    .split(',')
                    .map(|name| {
                        Server::parse(name).unwrap_or_else(|| panic!("unknown server {name}"))
                    })
                    .collect()
            }
            "--child" => args.child = raw.next().as_deref().and_then(Server::parse),
            // `cargo bench` passes `--bench`; anything else is ignored too.
            _ => {}
        }
    }
    args
}

fn main() {
    let args = parse_args();
    if let Some(server) = args.child {
        return child_main(server);
    }
    ensure_open_files(args.connections + 64);
    println!("CPU: {}", cpu_model());
    println!(
        "{} idle authenticated connections over 127.0.0.1, one user each; RSS of the server process",
        args.connections
    );
    println!(
        "{:<12} {:>10} {:>10} {:>13} {:>15} {:>13}",
        "server", "RSS before", "RSS idle", "KiB/conn idle", "RSS after burst", "KiB/conn burst"
    );
    let mut idle_per_connection = Vec::new();
    for server in &args.servers {
        let figures = measure_server(*server, args.connections);
        println!(
            "{:<12} {:>7} KiB {:>7} KiB {:>13.1} {:>11} KiB {:>13.1}   {}",
            server.name(),
            figures.before_kib,
            figures.idle_kib,
            figures.idle_per_connection(args.connections),
            figures.burst_kib,
            figures.burst_per_connection(args.connections),
            server.describe()
        );
        idle_per_connection.push((*server, figures.idle_per_connection(args.connections)));
    }
    let find = |wanted| {
        idle_per_connection
            .iter()
            .find(|(s, _)| *s == wanted)
            .map(|(_, kib)| *kib)
    };
    for library in [Server::Axum, Server::Tungstenite] {
        for baseline in [Server::Bare, Server::Bare4k] {
            if let (Some(ours), Some(theirs)) = (find(library), find(baseline)) {
                println!(
                    "ratio {} / {}: {:.2}x",
                    library.name(),
                    baseline.name(),
                    ours / theirs
                );
            }
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (idle, burst) = rt.block_on(manager_bytes(args.connections));
    println!(
        "manager alone (UnifiedWebSocketManager, heap bytes per idle connection): {idle:.0} B idle, {burst:.0} B after a drained burst of {MANAGER_BURST} messages"
    );
}

struct Figures {
    before_kib: u64,
    idle_kib: u64,
    burst_kib: u64,
}

impl Figures {
    fn idle_per_connection(&self, n: usize) -> f64 {
        (self.idle_kib as f64 - self.before_kib as f64) / n as f64
    }

    fn burst_per_connection(&self, n: usize) -> f64 {
        (self.burst_kib as f64 - self.before_kib as f64) / n as f64
    }
}

struct ChildServer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl ChildServer {
    fn start(server: Server) -> (ChildServer, SocketAddr) {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--child", server.name()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut this = ChildServer {
            child,
            stdin,
            stdout,
        };
        let ready = this.line();
        let addr = ready
            .strip_prefix("READY ")
            .and_then(|addr| addr.trim().parse().ok())
            .unwrap_or_else(|| panic!("the child said {ready:?}"));
        (this, addr)
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    fn command(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        self.line()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn measure_server(server: Server, n: usize) -> Figures {
    let (mut child, addr) = ChildServer::start(server);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Let the child settle (runtime threads started, listener bound).
    std::thread::sleep(Duration::from_millis(500));
    let before_kib = child.rss_kib();
    let clients = rt.block_on(open_connections(addr, n));
    // Idle: every handshake answered, registrations done, nothing moving.
    let answer = child.command(&format!("wait {n}"));
    assert!(answer.starts_with("OK"), "child: {answer}");
    std::thread::sleep(Duration::from_secs(2));
    let idle_kib = child.rss_kib();
    let answer = child.command("burst");
    assert!(answer.starts_with("OK"), "child: {answer}");
    std::thread::sleep(Duration::from_secs(1));
    let burst_kib = child.rss_kib();
    // The server goes first, so the TIME_WAIT sockets are its (in the kernel).
    drop(child);
    drop(clients);
    rt.shutdown_timeout(Duration::from_secs(1));
    Figures {
        before_kib,
        idle_kib,
        burst_kib,
    }
}

/// Opens `n` upgraded connections (256 handshakes in flight at most) and
/// returns the raw streams, which are never read again.
async fn open_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let started = Instant::now();
    let mut streams = Vec::with_capacity(n);
    let mut in_flight = tokio::task::JoinSet::new();
    for i in 0..n {
        if in_flight.len() >= 256 {
            streams.push(in_flight.join_next().await.unwrap().unwrap());
        }
        in_flight.spawn(raw_upgrade(addr, format!("u{i}")));
    }
    while let Some(stream) = in_flight.join_next().await {
        streams.push(stream.unwrap());
    }
    eprintln!("  {n} connections open in {:.1?}", started.elapsed());
    streams
}

async fn raw_upgrade(addr: SocketAddr, user: String) -> TcpStream {
    let deadline = Duration::from_secs(30);
    tokio::time::timeout(deadline, async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Authorization: Bearer {}\r\n\r\n",
            auth::token(&user)
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut buffer = [0u8; 512];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let read = stream.read(&mut buffer).await.unwrap();
            assert!(read > 0, "the server closed during the handshake");
            head.extend_from_slice(&buffer[..read]);
            assert!(head.len() < 8192, "no end of the response head");
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "upgrade refused: {}",
            String::from_utf8_lossy(&head)
        );
        stream
    })
    .await
    .expect("a handshake took longer than 30 s")
}

// ---------------------------------------------------------------- child side

fn child_main(server: Server) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let state = rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = match server {
            Server::Axum | Server::Tungstenite => start_library(server, listener),
            Server::Bare | Server::Bare4k => {
                let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                tokio::spawn(bare_server(listener, server, Arc::clone(&connections)));
                ChildState::Bare(connections)
            }
        };
        println!("READY {addr}");
        state
    });
    // The servers run on the runtime's workers; this thread takes commands
    // until the parent closes stdin (or kills this process).
    for line in std::io::stdin().lines() {
        let Ok(line) = line else { return };
        let answer = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["wait", n] => rt.block_on(state.wait_connections(n.parse().unwrap())),
            ["burst"] => rt.block_on(state.burst()),
            other => format!("unknown command {other:?}"),
        };
        println!("{answer}");
    }
}

enum ChildState {
    Library(WebSocketService),
    Bare(Arc<std::sync::atomic::AtomicUsize>),
}

impl ChildState {
    fn live(&self) -> usize {
        match self {
            ChildState::Library(service) => service.live_connections(),
            ChildState::Bare(count) => count.load(Ordering::Relaxed),
        }
    }

    async fn wait_connections(&self, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.live() < n {
            if Instant::now() > deadline {
                return format!("ERROR only {} of {n} connections live", self.live());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        "OK".to_owned()
    }

    /// Sends the burst (library: through the manager; bare: nothing to send
    /// without a registry) and waits until every queue is drained.
    async fn burst(&self) -> String {
        let ChildState::Library(service) = self else {
            return "OK (no registry to send through)".to_owned();
        };
        let manager = service.manager();
        let users: Vec<UserId> = (0..self.live())
            .map(|i| UserId::new(format!("u{i}")).unwrap())
            .collect();
        for round in 0..SERVER_BURST {
            for user in &users {
                let _ = manager
                    .send_to_user(
                        user,
                        json!({"type": "agent_thinking", "round": round, "text": "a short update of an agent run"}),
                    )
                    .await;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let queued: usize = users
                .iter()
                .flat_map(|user| manager.get_user_connections(user))
                .filter_map(|id| manager.get_connection(&id))
                .map(|connection| connection.websocket.queue_depth())
                .sum();
            if queued == 0 {
                return "OK".to_owned();
            }
            if Instant::now() > deadline {
                return format!("ERROR {queued} frames still queued");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn start_library(server: Server, listener: TcpListener) -> ChildState {
    let manager = Arc::new(UnifiedWebSocketManager::default());
    let service = WebSocketService::builder(
        DynManager::from(Arc::clone(&manager)),
        auth::authenticator(),
    )
    .config(TransportConfig::default())
    .build();
    match server {
        Server::Axum => {
            let app = axum::Router::new()
                .route(
                    "/ws",
                    axum::routing::get(websocket_manager::transport::axum::upgrade),
                )
                .with_state(service.clone());
            tokio::spawn(async move {
                websocket_manager::transport::axum::serve(listener, app)
                    .await
                    .unwrap()
            });
        }
        _ => {
            tokio::spawn(websocket_manager::transport::tungstenite::serve(
                listener,
                service.clone(),
            ));
        }
    }
    ChildState::Library(service)
}

/// What people write by hand: accept, upgrade, echo; no auth, no registry.
async fn bare_server(
    listener: TcpListener,
    server: Server,
    live: Arc<std::sync::atomic::AtomicUsize>,
) {
    let config = match server {
        Server::Bare4k => Some(
            tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                .read_buffer_size(4 * 1024)
                .write_buffer_size(4 * 1024),
        ),
        _ => None,
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let live = Arc::clone(&live);
        tokio::spawn(async move {
            let Ok(mut socket) = tokio_tungstenite::accept_async_with_config(stream, config).await
            else {
                return;
            };
            live.fetch_add(1, Ordering::Relaxed);
            while let Some(Ok(message)) = socket.next().await {
                if (message.is_text() || message.is_binary()) && socket.send(message).await.is_err()
                {
                    break;
                }
            }
            live.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

// ------------------------------------------------------- the manager alone

/// Heap bytes per idle connection of a `UnifiedWebSocketManager` holding `n`
/// connections, before and after a drained burst.
async fn manager_bytes(n: usize) -> (f64, f64) {
    let limits = ManagerConfig::default().queue_limits();
    let mut sockets: Vec<(WebSocketHandle, websocket_manager::socket::OutboundReceiver)> =
        Vec::with_capacity(n);
    let users: Vec<UserId> = (0..n)
        .map(|i| UserId::new(format!("u{i}")).unwrap())
        .collect();
    let manager = UnifiedWebSocketManager::default();
    let baseline = counting_alloc::live_bytes();
    for user in &users {
        let (handle, receiver) = WebSocketHandle::channel(limits);
        manager
            .add_connection(WebSocketConnection::new(user.clone(), handle.clone()))
            .await
            .unwrap();
        sockets.push((handle, receiver));
    }
    let idle = (counting_alloc::live_bytes() - baseline) as f64 / n as f64;
    for round in 0..MANAGER_BURST {
        for user in &users {
            manager
                .send_to_user(user, json!({"type": "agent_thinking", "round": round}))
                .await
                .unwrap();
        }
    }
    let mut events: Vec<OutboundEvent> = Vec::new();
    for (handle, receiver) in &mut sockets {
        while handle.queue_depth() > 0 {
            receiver.recv_many(&mut events, 64).await;
            events.clear();
        }
    }
    drop(events);
    let burst = (counting_alloc::live_bytes() - baseline) as f64 / n as f64;
    (idle, burst)
}

// ---------------------------------------------------------------- utilities

/// Makes sure this process (and its children) may open `needed` files:
/// re-executes itself under `ulimit -n <hard limit>` when the soft limit is
/// lower.
fn ensure_open_files(needed: usize) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let (soft, hard) = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .map(|rest| {
            let mut fields = rest.split_whitespace();
            let parse = |f: Option<&str>| match f {
                Some("unlimited") => usize::MAX,
                Some(n) => n.parse().unwrap_or(0),
                None => 0,
            };
            (parse(fields.next()), parse(fields.next()))
        })
        .unwrap_or((0, 0));
    if soft >= needed {
        return;
    }
    if hard < needed {
        eprintln!(
            "needs {needed} open files, the hard limit is {hard}: raise it (e.g. `ulimit -Hn {needed}` as root) or pass --connections {}",
            hard.saturating_sub(64)
        );
        std::process::exit(2);
    }
    if std::env::var_os("IDLE_MEMORY_REEXEC").is_some() {
        eprintln!("could not raise the open-files limit to {needed}");
        std::process::exit(2);
    }
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {needed} && exec \"$0\" \"$@\""))
        .arg(std::env::current_exe().unwrap())
        .args(std::env::args().skip(1))
        .env("IDLE_MEMORY_REEXEC", "1")
        .status()
        .unwrap();
    std::process::exit(status.code().unwrap_or(1));
}
