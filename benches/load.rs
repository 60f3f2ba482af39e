//! The load generator (issue 19): many real WebSocket clients over
//! loopback, spread over several source addresses and, past one process's
//! descriptor limit, over several client processes (this binary again,
//! `--worker`), each client a tab that keeps its offset and resumes from it
//! as the JavaScript client does.
//!
//! ```text
//! cargo bench --bench load -- single                  # ~19,000 sockets, library vs bare axum
//! cargo build --release --example agent_server
//! cargo bench --bench load -- cluster                 # 6 agent_server nodes x 17,000, one redis-server, the storm
//! cargo bench --bench load -- cluster --per-node 2000 --admission off   # smaller
//! ```
//!
//! **single**: one server process at a time (a child of this binary, so
//! the clients' memory is not counted), alternated: the library
//! (`UnifiedWebSocketManager` behind the axum adapter) and a bare axum
//! server doing the same work by hand (each socket split into a reader
//! task and a writer task fed by a bounded tokio mpsc, a registry of the
//! senders, the same 4 KiB read and 16 KiB write buffers; it does not
//! verify the token, which only costs the library connect rate). Measured:
//! connect rate, RSS per idle connection, and broadcasts to every
//! connection (the server's CPU time per delivered message, deliveries per
//! second, p50/p99 from the server's send to the client's receipt).
//!
//! **cluster**: a `redis-server`, `--nodes` `agent_server` processes (the
//! example, release build) joined through it, one client process per node,
//! and, in this process, one more cluster node without sockets that emits
//! (a backend worker). Measured: connect rate, idle RSS per connection on
//! the nodes, a critical event to every user (emit to receipt across
//! nodes, CPU of the nodes and Redis per delivery), then **the storm**:
//! critical events keep flowing while node 0 is SIGKILLed; its clients
//! reconnect to the survivors, each resuming from its offset. Measured:
//! the time from the kill until each of them has every event emitted
//! before the kill (p50/p99/max), the survivors' peak memory, Redis's CPU
//! and commands, and, at the end, that every client holds every event of
//! its user once and in order. `--admission both` (the default) runs the
//! whole thing twice: without admission control, then with
//! `--connection-rate` on every node.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use websocket_manager::events::EventPrint;
use websocket_manager_test_support::bench::cpu_model;
use websocket_manager_test_support::redis::{RedisServer, flush_all, info};

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A small xorshift: jitter and node choice, no dependency.
fn random(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Every client socket and every server socket is a descriptor.
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("could not raise the open-files limit: {error}");
    }
    if args.iter().any(|a| a == "--worker") {
        return worker::main(&args);
    }
    if let Some(kind) = flag(&args, "--serve") {
        return single::serve(&kind);
    }
    println!("CPU: {} ({} cores)", cpu_model(), num_cores());
    if args.iter().any(|a| a == "cluster") {
        cluster::main(&args);
    } else if args.iter().any(|a| a == "single") {
        single::main(&args);
    } else {
        eprintln!(
            "usage: load single [--connections N] [--rounds N] | cluster [--nodes N] [--per-node N] [--admission off|on|both]"
        );
    }
}

fn num_cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

// ------------------------------------------------------------- processes

/// `VmRSS` and `VmHWM` (peak) of a process, KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// User plus system CPU time of a process, in clock ticks turned into µs.
fn cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces).
    let rest = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) * 10_000
}

/// A child process that takes one command per stdin line and answers one
/// line on stdout.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    fn spawn(args: &[String]) -> Worker {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Worker {
            child,
            stdin,
            stdout,
        }
    }

    fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn answer(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "a worker ended");
        line.trim_end().to_owned()
    }

    fn ask(&mut self, command: &str) -> String {
        self.send(command);
        self.answer()
    }

    fn ask_json(&mut self, command: &str) -> Value {
        let answer = self.ask(command);
        serde_json::from_str(&answer).unwrap_or_else(|_| panic!("worker said {answer}"))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `command` to every worker at once, then reads every answer.
fn ask_all(workers: &mut [Worker], command: &str) -> Vec<Value> {
    for worker in workers.iter_mut() {
        worker.send(command);
    }
    workers
        .iter_mut()
        .map(|w| {
            let answer = w.answer();
            serde_json::from_str(&answer).unwrap_or_else(|_| panic!("worker said {answer}"))
        })
        .collect()
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Every worker's latency samples (µs), sorted; they are taken (cleared).
fn latencies(workers: &mut [Worker]) -> Vec<u64> {
    let mut all: Vec<u64> = ask_all(workers, "latencies")
        .into_iter()
        .flat_map(|v| {
            v["samples"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|s| s.as_u64())
        })
        .collect();
    all.sort_unstable();
    all
}

fn sum(values: &[Value], field: &str) -> u64 {
    values.iter().filter_map(|v| v[field].as_u64()).sum()
}

// ---------------------------------------------------------------- worker

/// A client process: `--worker --nodes A[,B...] --users-from F --users N
/// --source IP[,IP...] --secret S --audience A`. Its tabs connect to the
/// first node and move to another when theirs is gone.
mod worker {
    use super::*;

    /// What one user's tab saw.
    #[derive(Default)]
    struct Tab {
        stream: u64,
        last: u64,
        /// The print of event `last`, sent with the offset as the
        /// JavaScript client does.
        print: Option<EventPrint>,
        /// When each `hello` arrived (unix µs), the latest few.
        hellos: VecDeque<u64>,
        /// (sequence, unix µs) of the latest critical events.
        receipts: VecDeque<(u64, u64)>,
        /// (node index, unix µs) of the latest connections that ended.
        ended: VecDeque<(usize, u64)>,
    }

    #[derive(Default)]
    struct Tally {
        open: AtomicUsize,
        hellos: AtomicU64,
        events: AtomicU64,
        gaps: AtomicU64,
        repeats: AtomicU64,
        resyncs: AtomicU64,
        streams_changed: AtomicU64,
        reconnects: AtomicU64,
        refused: AtomicU64,
        /// Of `refused`: not ready (starting, reconnecting, fenced...).
        not_ready: AtomicU64,
        /// Of `refused`: the connection rate or the connection limit.
        rate_limited: AtomicU64,
        failures: AtomicU64,
    }

    struct Ctx {
        nodes: Vec<SocketAddr>,
        sources: Vec<Ipv4Addr>,
        first_user: usize,
        tabs: Vec<Mutex<Tab>>,
        tally: Tally,
        latencies: Mutex<Vec<u64>>,
        /// Why connections ended, and how often.
        ends: Mutex<std::collections::BTreeMap<String, u64>>,
        /// When the latest sample arrived (unix µs).
        last_sample: AtomicU64,
        secret: Vec<u8>,
        audience: String,
        /// Bounds the handshakes this process has in flight.
        handshakes: tokio::sync::Semaphore,
        kill_us: AtomicU64,
        /// The killed node's index in `nodes`.
        killed: AtomicUsize,
        expected: Mutex<Vec<u64>>,
        started: AtomicBool,
    }

    pub fn main(args: &[String]) {
        let list = |name: &str| -> Vec<String> {
            flag(args, name)
                .unwrap_or_default()
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let users: usize = flag(args, "--users").unwrap().parse().unwrap();
        let ctx = Arc::new(Ctx {
            nodes: list("--nodes").iter().map(|a| a.parse().unwrap()).collect(),
            sources: list("--source")
                .iter()
                .map(|a| a.parse().unwrap())
                .collect(),
            first_user: flag(args, "--users-from").unwrap().parse().unwrap(),
            tabs: (0..users).map(|_| Mutex::new(Tab::default())).collect(),
            tally: Tally::default(),
            latencies: Mutex::new(Vec::new()),
            ends: Mutex::default(),
            last_sample: AtomicU64::new(0),
            secret: flag(args, "--secret").unwrap().into_bytes(),
            audience: flag(args, "--audience").unwrap(),
            handshakes: tokio::sync::Semaphore::new(256),
            kill_us: AtomicU64::new(0),
            killed: AtomicUsize::new(usize::MAX),
            expected: Mutex::new(Vec::new()),
            started: AtomicBool::new(false),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let stdout = std::io::stdout();
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { return };
            let (command, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            let answer = match command {
                "connect" => runtime.block_on(connect(Arc::clone(&ctx))),
                "status" => status(&ctx),
                "latencies" => {
                    let samples = std::mem::take(&mut *ctx.latencies.lock().unwrap());
                    json!({ "samples": samples, "last_us": ctx.last_sample.load(Ordering::Relaxed) })
                }
                "storm" => {
                    let mut parts = rest.splitn(3, ' ');
                    let kill = parts.next().unwrap_or_default();
                    let killed: SocketAddr = parts.next().unwrap_or_default().parse().unwrap();
                    *ctx.expected.lock().unwrap() = parse_list(parts.next().unwrap_or_default());
                    let killed = ctx.nodes.iter().position(|n| *n == killed);
                    ctx.killed
                        .store(killed.map_or(usize::MAX, |k| k), Ordering::SeqCst);
                    ctx.kill_us.store(kill.parse().unwrap(), Ordering::SeqCst);
                    json!({ "ok": true })
                }
                "catchup" => catch_up(&ctx),
                "final" => final_check(&ctx, &parse_list(rest)),
                other => json!({ "error": format!("unknown command {other}") }),
            };
            let mut out = stdout.lock();
            writeln!(out, "{answer}").unwrap();
            out.flush().unwrap();
        }
    }

    fn parse_list(text: &str) -> Vec<u64> {
        text.split(',').filter_map(|n| n.parse().ok()).collect()
    }

    /// Starts every tab (once) and waits until each has its `hello`.
    async fn connect(ctx: Arc<Ctx>) -> Value {
        let started = Instant::now();
        if !ctx.started.swap(true, Ordering::SeqCst) {
            for index in 0..ctx.tabs.len() {
                tokio::spawn(tab(Arc::clone(&ctx), index));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(600);
        while ctx.tally.hellos.load(Ordering::Relaxed) < ctx.tabs.len() as u64 {
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        json!({
            "connected": ctx.tally.hellos.load(Ordering::Relaxed),
            "ms": started.elapsed().as_millis() as u64,
        })
    }

    fn status(ctx: &Ctx) -> Value {
        let t = &ctx.tally;
        json!({
            "open": t.open.load(Ordering::Relaxed),
            "hellos": t.hellos.load(Ordering::Relaxed),
            "events": t.events.load(Ordering::Relaxed),
            "gaps": t.gaps.load(Ordering::Relaxed),
            "repeats": t.repeats.load(Ordering::Relaxed),
            "resyncs": t.resyncs.load(Ordering::Relaxed),
            "streams_changed": t.streams_changed.load(Ordering::Relaxed),
            "reconnects": t.reconnects.load(Ordering::Relaxed),
            "refused": t.refused.load(Ordering::Relaxed),
            "not_ready": t.not_ready.load(Ordering::Relaxed),
            "rate_limited": t.rate_limited.load(Ordering::Relaxed),
            "failures": t.failures.load(Ordering::Relaxed),
            "ends": *ctx.ends.lock().unwrap(),
        })
    }

    /// For each tab the kill cut (its connection to the killed node ended
    /// after the kill), the time from the kill until it is connected again
    /// and holds the event that was its user's latest at the kill.
    fn catch_up(ctx: &Ctx) -> Value {
        let kill = ctx.kill_us.load(Ordering::SeqCst);
        let killed = ctx.killed.load(Ordering::SeqCst);
        let expected = ctx.expected.lock().unwrap().clone();
        let mut done = Vec::new();
        let mut pending = 0;
        for (index, tab) in ctx.tabs.iter().enumerate() {
            let tab = tab.lock().unwrap();
            if !tab
                .ended
                .iter()
                .any(|(node, at)| *node == killed && *at >= kill)
            {
                continue;
            }
            let want = expected.get(index).copied().unwrap_or(0);
            let Some(&hello) = tab.hellos.iter().find(|&&at| at > kill) else {
                pending += 1;
                continue;
            };
            if tab.last < want {
                pending += 1;
                continue;
            }
            // Received after the kill (in the replay or live), or before.
            let event = tab
                .receipts
                .iter()
                .find(|(sequence, at)| *sequence == want && *at > kill)
                .map_or(0, |(_, at)| *at);
            done.push(hello.max(event) - kill);
        }
        done.sort_unstable();
        json!({
            "done": done.len(),
            "pending": pending,
            "samples_ms": done.iter().map(|us| us / 1000).collect::<Vec<_>>(),
        })
    }

    /// Each tab against the last sequence acknowledged to its user.
    fn final_check(ctx: &Ctx, expected: &[u64]) -> Value {
        let (mut equal, mut behind, mut ahead) = (0, 0, 0);
        for (index, tab) in ctx.tabs.iter().enumerate() {
            let last = tab.lock().unwrap().last;
            match last.cmp(&expected.get(index).copied().unwrap_or(0)) {
                std::cmp::Ordering::Equal => equal += 1,
                std::cmp::Ordering::Less => behind += 1,
                std::cmp::Ordering::Greater => ahead += 1,
            }
        }
        let mut status = status(ctx);
        status["equal"] = json!(equal);
        status["behind"] = json!(behind);
        status["ahead"] = json!(ahead);
        status
    }

    enum Refusal {
        /// 503 with `Retry-After` (seconds), and whether it said "not ready".
        Busy(u64, bool),
        Other,
    }

    /// One tab, for ever: connect, read, and after any end reconnect (to
    /// another node when its own is gone) with the last offset, with the
    /// JavaScript client's full-jitter backoff (500 ms doubling, 20 s at
    /// most), or after `Retry-After` on a 503.
    async fn tab(ctx: Arc<Ctx>, index: usize) {
        let user = format!("u{}", ctx.first_user + index);
        let mut seed = (ctx.first_user + index) as u64 * 2_654_435_761 + 1;
        let mut node = 0;
        let mut attempt = 0u32;
        loop {
            let resume = {
                let tab = ctx.tabs[index].lock().unwrap();
                (tab.stream > 0).then(|| match tab.print {
                    Some(print) => format!("{}:{}:{print}", tab.stream, tab.last),
                    None => format!("{}:{}", tab.stream, tab.last),
                })
            };
            match open(&ctx, index, &user, node, resume).await {
                Ok(socket) => {
                    attempt = 0;
                    ctx.tally.open.fetch_add(1, Ordering::Relaxed);
                    let why = read(&ctx, index, socket).await;
                    ctx.tally.open.fetch_sub(1, Ordering::Relaxed);
                    ctx.tally.reconnects.fetch_add(1, Ordering::Relaxed);
                    *ctx.ends.lock().unwrap().entry(why).or_default() += 1;
                    {
                        let mut tab = ctx.tabs[index].lock().unwrap();
                        if tab.ended.len() == 4 {
                            tab.ended.pop_front();
                        }
                        tab.ended.push_back((node, unix_us()));
                    }
                    // Its node may be gone: try another next.
                    node = next_node(&ctx, node, &mut seed);
                    let bound = 500u64;
                    tokio::time::sleep(Duration::from_millis(random(&mut seed) % bound)).await;
                }
                Err(Refusal::Busy(seconds, not_ready)) => {
                    ctx.tally.refused.fetch_add(1, Ordering::Relaxed);
                    let reason = if not_ready {
                        &ctx.tally.not_ready
                    } else {
                        &ctx.tally.rate_limited
                    };
                    reason.fetch_add(1, Ordering::Relaxed);
                    // As the JavaScript client: another URL next time.
                    node = next_node(&ctx, node, &mut seed);
                    let wait = seconds.max(1) * 1000;
                    tokio::time::sleep(Duration::from_millis(wait / 2 + random(&mut seed) % wait))
                        .await;
                }
                Err(Refusal::Other) => {
                    ctx.tally.failures.fetch_add(1, Ordering::Relaxed);
                    attempt += 1;
                    node = next_node(&ctx, node, &mut seed);
                    let bound = (500u64 << attempt.min(6)).min(20_000);
                    tokio::time::sleep(Duration::from_millis(random(&mut seed) % bound)).await;
                }
            }
        }
    }

    fn next_node(ctx: &Ctx, node: usize, seed: &mut u64) -> usize {
        let n = ctx.nodes.len();
        if n < 2 {
            return node;
        }
        (node + 1 + (random(seed) as usize % (n - 1))) % n
    }

    type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

    async fn open(
        ctx: &Ctx,
        index: usize,
        user: &str,
        node: usize,
        resume: Option<String>,
    ) -> Result<Socket, Refusal> {
        let _turn = ctx.handshakes.acquire().await.map_err(|_| Refusal::Other)?;
        let addr = ctx.nodes[node];
        let source = ctx.sources[index % ctx.sources.len()];
        let socket = TcpSocket::new_v4().map_err(|_| Refusal::Other)?;
        socket
            .bind(SocketAddr::new(IpAddr::V4(source), 0))
            .map_err(|_| Refusal::Other)?;
        let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(addr))
            .await
            .map_err(|_| Refusal::Other)?
            .map_err(|_| Refusal::Other)?;
        let _ = stream.set_nodelay(true);
        let path = match resume {
            Some(offset) => format!("ws://{addr}/ws?resume={offset}"),
            None => format!("ws://{addr}/ws"),
        };
        let mut request = path.into_client_request().unwrap();
        let exp = unix_us() / 1_000_000 + 4 * 3600;
        let token = websocket_manager::transport::encode_hs256(
            &json!({ "sub": user, "exp": exp, "aud": ctx.audience }),
            &ctx.secret,
        );
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let config = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(4 * 1024);
        let handshake = tokio_tungstenite::client_async_with_config(request, stream, Some(config));
        match tokio::time::timeout(Duration::from_secs(20), handshake).await {
            Ok(Ok((socket, _))) => Ok(socket),
            Ok(Err(WsError::Http(response))) if response.status() == 503 => {
                let seconds = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                let body = response.body().as_deref().unwrap_or_default();
                // "Service Unavailable: <reason>": the admission limits say
                // `rate_limited` or `at_capacity`, a node not ready says why
                // (`starting`, `reconnecting`, `fenced`, `draining`).
                let body = String::from_utf8_lossy(body);
                let not_ready = !(body.contains("rate_limited") || body.contains("at_capacity"));
                Err(Refusal::Busy(seconds, not_ready))
            }
            _ => Err(Refusal::Other),
        }
    }

    /// Reads until the connection ends; returns why (the close code, or
    /// what ended the stream), checking every critical event against the
    /// last one.
    async fn read(ctx: &Ctx, index: usize, mut socket: Socket) -> String {
        loop {
            let message = match socket.next().await {
                Some(Ok(message)) => message,
                Some(Err(error)) => return format!("error: {error}"),
                None => return "end of stream".to_owned(),
            };
            let text = match message {
                Message::Text(text) => text,
                Message::Close(frame) => {
                    return frame.map_or("close without code".to_owned(), |f| {
                        format!("close {}", u16::from(f.code))
                    });
                }
                Message::Ping(payload) => {
                    let _ = socket.send(Message::Pong(payload)).await;
                    continue;
                }
                _ => continue,
            };
            let now = unix_us();
            let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if let Some(sent) = frame["data"]["t"].as_u64().or(frame["t"].as_u64()) {
                ctx.latencies.lock().unwrap().push(now.saturating_sub(sent));
                ctx.last_sample.fetch_max(now, Ordering::Relaxed);
            }
            let mut tab = ctx.tabs[index].lock().unwrap();
            match frame["type"].as_str() {
                Some("hello") => {
                    ctx.tally.hellos.fetch_add(1, Ordering::Relaxed);
                    if tab.hellos.len() == 4 {
                        tab.hellos.pop_front();
                    }
                    tab.hellos.push_back(now);
                    continue;
                }
                Some("resync") => {
                    ctx.tally.resyncs.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                _ => {}
            }
            if frame["critical"] != true {
                continue;
            }
            let (Some(stream), Some(sequence)) =
                (frame["stream"].as_u64(), frame["sequence"].as_u64())
            else {
                continue;
            };
            ctx.tally.events.fetch_add(1, Ordering::Relaxed);
            if stream != tab.stream {
                if tab.stream != 0 {
                    ctx.tally.streams_changed.fetch_add(1, Ordering::Relaxed);
                }
                tab.stream = stream;
                tab.last = sequence.saturating_sub(1);
            }
            if sequence <= tab.last {
                ctx.tally.repeats.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if sequence > tab.last + 1 {
                ctx.tally
                    .gaps
                    .fetch_add(sequence - tab.last - 1, Ordering::Relaxed);
            }
            tab.last = sequence;
            tab.print = Some(EventPrint::of(&text));
            if tab.receipts.len() == 32 {
                tab.receipts.pop_front();
            }
            tab.receipts.push_back((sequence, now));
        }
    }
}

// ---------------------------------------------------------------- single

mod single {
    use super::*;
    use websocket_manager::managers::UnifiedWebSocketManager;
    use websocket_manager::transport::{TransportConfig, WebSocketService};
    use websocket_manager::{DynManager, UserId, WebSocketManager};
    use websocket_manager_test_support::e2e::{AUDIENCE, SECRET, authenticator, axum_server};

    const KINDS: [&str; 2] = ["bare", "library"];

    pub fn main(args: &[String]) {
        let connections: usize = flag(args, "--connections").map_or(19_000, |n| n.parse().unwrap());
        let rounds: usize = flag(args, "--rounds").map_or(2, |n| n.parse().unwrap());
        let broadcasts: usize = flag(args, "--broadcasts").map_or(10, |n| n.parse().unwrap());
        println!(
            "{connections} idle authenticated connections over loopback (4 source addresses, one client process), {broadcasts} broadcasts to all; server alternated, {rounds} round(s) each"
        );
        println!(
            "{:<8} {:>10} {:>14} {:>14} {:>12} {:>10} {:>10}",
            "server", "conn/s", "KiB/conn idle", "CPU ns/msg", "deliveries/s", "p50 ms", "p99 ms"
        );
        let mut figures: Vec<(&str, [f64; 6])> = Vec::new();
        for _ in 0..rounds {
            for kind in KINDS {
                let f = measure(kind, connections, broadcasts);
                println!(
                    "{kind:<8} {:>10.0} {:>14.2} {:>14.0} {:>12.0} {:>10.2} {:>10.2}",
                    f[0], f[1], f[2], f[3], f[4], f[5]
                );
                figures.push((kind, f));
            }
        }
        let median = |kind: &str, i: usize| {
            let mut v: Vec<f64> = figures
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, f)| f[i])
                .collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        for (i, name) in [
            "connect rate",
            "RSS per idle connection",
            "CPU per delivered message",
            "deliveries per second",
            "p50",
            "p99",
        ]
        .iter()
        .enumerate()
        {
            println!(
                "library / bare, {name}: {:.2}x",
                median("library", i) / median("bare", i)
            );
        }
    }

    /// [connect rate, KiB per idle connection, CPU ns per delivery,
    /// deliveries/s, p50 ms, p99 ms] of one server.
    fn measure(kind: &str, connections: usize, broadcasts: usize) -> [f64; 6] {
        let mut server = Worker::spawn(&["--serve".to_owned(), kind.to_owned()]);
        let addr = server.answer();
        let pid = server.child.id();
        std::thread::sleep(Duration::from_millis(300));
        let (before, _) = memory_kib(pid);
        let mut client = Worker::spawn(&[
            "--worker".to_owned(),
            "--nodes".to_owned(),
            addr,
            "--users-from".to_owned(),
            "0".to_owned(),
            "--users".to_owned(),
            connections.to_string(),
            "--source".to_owned(),
            "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5".to_owned(),
            "--secret".to_owned(),
            String::from_utf8_lossy(SECRET).into_owned(),
            "--audience".to_owned(),
            AUDIENCE.to_owned(),
        ]);
        let connected = client.ask_json("connect");
        assert_eq!(
            connected["connected"].as_u64(),
            Some(connections as u64),
            "{kind}: {connected}"
        );
        let rate = connections as f64 / (connected["ms"].as_f64().unwrap().max(1.0) / 1000.0);
        std::thread::sleep(Duration::from_secs(2));
        let (idle, _) = memory_kib(pid);
        let cpu_before = cpu_us(pid);
        let answer = server.ask(&format!("broadcast {broadcasts}"));
        let sent_at: u64 = answer
            .strip_prefix("OK ")
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{kind}: {answer}"));
        let expected = connections * broadcasts;
        let waiting = Instant::now();
        let mut samples = Vec::new();
        let mut last_receipt = 0;
        while samples.len() < expected && waiting.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(100));
            let answer = client.ask_json("latencies");
            samples.extend(
                answer["samples"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(Value::as_u64),
            );
            last_receipt = last_receipt.max(answer["last_us"].as_u64().unwrap_or(0));
        }
        assert_eq!(samples.len(), expected, "{kind}: every broadcast received");
        samples.sort_unstable();
        let wall = (last_receipt.saturating_sub(sent_at)) as f64 / 1e6;
        let cpu = (cpu_us(pid) - cpu_before) as f64 * 1000.0;
        drop(client);
        drop(server);
        [
            rate,
            (idle as f64 - before as f64) / connections as f64,
            cpu / samples.len().max(1) as f64,
            samples.len() as f64 / wall,
            percentile(&samples, 0.5) as f64 / 1000.0,
            percentile(&samples, 0.99) as f64 / 1000.0,
        ]
    }

    /// A server process: prints its address, then takes `broadcast N`.
    pub fn serve(kind: &str) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = runtime.block_on(async {
            let (addr, server) = match kind {
                "library" => {
                    let (addr, service) = library().await;
                    (addr, Server::Library(service))
                }
                _ => {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                    (listener.local_addr().unwrap(), Server::Bare(bare(listener)))
                }
            };
            println!("{addr}");
            server
        });
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { return };
            let answer = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["broadcast", n] => runtime.block_on(server.broadcast(n.parse().unwrap())),
                other => format!("unknown command {other:?}"),
            };
            println!("{answer}");
        }
    }

    enum Server {
        Library(WebSocketService),
        Bare(Arc<bare::Registry>),
    }

    impl Server {
        async fn broadcast(&self, times: usize) -> String {
            let started = unix_us();
            for round in 0..times {
                match self {
                    Server::Library(service) => {
                        let manager = service.manager();
                        for i in 0..service.live_connections() {
                            let user = UserId::new(format!("u{i}")).unwrap();
                            let _ = manager
                                .send_to_user(
                                    &user,
                                    json!({"type": "agent_thinking", "round": round, "t": unix_us()}),
                                )
                                .await;
                        }
                    }
                    Server::Bare(registry) => registry.broadcast(round),
                }
            }
            format!("OK {started}")
        }
    }

    async fn library() -> (SocketAddr, WebSocketService) {
        let manager = Arc::new(UnifiedWebSocketManager::default());
        let service =
            WebSocketService::builder(DynManager::from(Arc::clone(&manager)), authenticator())
                .config(TransportConfig::default())
                .build();
        let (addr, _server) = axum_server(service.clone()).await;
        (addr, service)
    }

    /// What people write by hand with axum (see the module docs).
    mod bare {
        use super::*;
        use axum::extract::ws::{Message as AxumMessage, WebSocket, WebSocketUpgrade};
        use std::collections::HashMap;
        use tokio::sync::mpsc;

        #[derive(Default)]
        pub struct Registry {
            next: AtomicU64,
            senders: std::sync::RwLock<HashMap<u64, mpsc::Sender<AxumMessage>>>,
        }

        impl Registry {
            pub fn broadcast(&self, round: usize) {
                let senders = self.senders.read().unwrap();
                for sender in senders.values() {
                    let text = json!({"type": "agent_thinking", "round": round, "t": unix_us()})
                        .to_string();
                    let _ = sender.try_send(AxumMessage::Text(text.into()));
                }
            }
        }

        pub fn bare(listener: tokio::net::TcpListener) -> Arc<Registry> {
            let registry = Arc::new(Registry::default());
            let app =
                axum::Router::new()
                    .route(
                        "/ws",
                        axum::routing::get(
                            |upgrade: WebSocketUpgrade,
                             axum::extract::State(registry): axum::extract::State<
                                Arc<Registry>,
                            >| async move {
                                upgrade
                                    .read_buffer_size(4 * 1024)
                                    .write_buffer_size(16 * 1024)
                                    .on_upgrade(move |socket| serve_socket(socket, registry))
                            },
                        ),
                    )
                    .with_state(Arc::clone(&registry));
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            registry
        }

        async fn serve_socket(socket: WebSocket, registry: Arc<Registry>) {
            let (mut sink, mut stream) = socket.split();
            let (sender, mut queue) = mpsc::channel::<AxumMessage>(64);
            let id = registry.next.fetch_add(1, Ordering::Relaxed);
            // The hello a client waits for, as the library sends one.
            let _ = sender.try_send(AxumMessage::Text(r#"{"type":"hello"}"#.into()));
            registry.senders.write().unwrap().insert(id, sender);
            let writer = tokio::spawn(async move {
                while let Some(message) = queue.recv().await {
                    if sink.send(message).await.is_err() {
                        break;
                    }
                }
            });
            while let Some(Ok(_)) = stream.next().await {}
            registry.senders.write().unwrap().remove(&id);
            writer.abort();
        }
    }
    use bare::bare;
}

// --------------------------------------------------------------- cluster

mod cluster {
    use super::*;
    use websocket_manager::managers::{ClusterConfig, ClusterWebSocketManager};
    use websocket_manager::{UserId, WebSocketManager};

    const SECRET: &str = "the load generator's secret, 32 bytes and more";

    pub fn main(args: &[String]) {
        let nodes: usize = flag(args, "--nodes").map_or(6, |n| n.parse().unwrap());
        let per_node: usize = flag(args, "--per-node").map_or(17_000, |n| n.parse().unwrap());
        let admission = flag(args, "--admission").unwrap_or_else(|| "both".to_owned());
        let rate = flag(args, "--connection-rate").unwrap_or_else(|| "1000/200".to_owned());
        let storm_rate: u64 = flag(args, "--storm-rate").map_or(2_000, |n| n.parse().unwrap());
        let binary = std::env::current_exe()
            .unwrap()
            .parent()
            .and_then(|deps| deps.parent())
            .map(|dir| dir.join("examples").join("agent_server"))
            .unwrap();
        if !binary.exists() {
            eprintln!(
                "{} is missing: run `cargo build --release --example agent_server` first",
                binary.display()
            );
            std::process::exit(2);
        }
        let settings: Vec<Option<&str>> = match admission.as_str() {
            "off" => vec![None],
            "on" => vec![Some(rate.as_str())],
            _ => vec![None, Some(rate.as_str())],
        };
        let redis = RedisServer::start();
        for setting in settings {
            println!(
                "\n== {nodes} agent_server nodes x {per_node} clients, one redis-server; admission control {}",
                setting.map_or("off".to_owned(), |r| format!(
                    "on (--connection-rate {r} per node)"
                ))
            );
            run(&binary, &redis.url(), nodes, per_node, setting, storm_rate);
            flush_all(&redis.url());
        }
    }

    struct Node {
        child: Child,
        addr: SocketAddr,
    }

    impl Drop for Node {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn start_node(binary: &std::path::Path, redis: &str, rate: Option<&str>, n: usize) -> Node {
        let mut command = Command::new(binary);
        command
            .args(["--port", "0", "--redis", redis, "--max-runs", "4096"])
            .env("AGENT_SERVER_JWT_SECRET", SECRET)
            .env("RUST_LOG", "warn,agent_server=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(rate) = rate {
            command.args(["--connection-rate", rate]);
        }
        let mut child = command.spawn().unwrap();
        // Both pipes drained for ever (so the node never blocks on a log)
        // into a file per node, for the warnings of a run.
        let log_path = std::env::temp_dir().join(format!("wsm-load-node-{n}.log"));
        let log = Arc::new(Mutex::new(std::fs::File::create(&log_path).unwrap()));
        let (sender, address) = std::sync::mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (sender, log) = (sender.clone(), Arc::clone(&log));
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = writeln!(log.lock().unwrap(), "{line}");
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr = rest.split('/').next().unwrap_or_default().to_owned();
                        let _ = sender.send(addr);
                    }
                }
            });
        }
        let addr = address
            .recv_timeout(Duration::from_secs(30))
            .expect("the node says where it listens")
            .parse()
            .unwrap();
        let node = Node { child, addr };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready(node.addr) {
            assert!(Instant::now() < deadline, "node {} never ready", node.addr);
            std::thread::sleep(Duration::from_millis(100));
        }
        node
    }

    fn ready(addr: SocketAddr) -> bool {
        let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
            return false;
        };
        let _ = write!(
            stream,
            "GET /ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        );
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.1 200")
    }

    /// What the nodes' logs say of their links to Redis: how often one went
    /// silent (a probe unanswered: replaced) and how often a node fenced
    /// itself (closing its connections), which a starved machine provokes.
    fn link_events(nodes: usize) -> String {
        let (mut silent, mut fenced) = (0, 0);
        for n in 0..nodes {
            let log = std::fs::read_to_string(
                std::env::temp_dir().join(format!("wsm-load-node-{n}.log")),
            )
            .unwrap_or_default();
            silent += log.matches("the link to Redis went silent").count();
            fenced += log
                .matches("cut off from Redis for longer than fence_after")
                .count();
        }
        format!(
            "nodes' links to Redis: {silent} went silent (replaced), {fenced} fence(s) (see the logs in {})",
            std::env::temp_dir().display()
        )
    }

    /// Redis's `used_cpu_sys + used_cpu_user`, µs.
    fn redis_cpu_us(url: &str) -> u64 {
        let text = info(url, "cpu");
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        ((field("used_cpu_sys:") + field("used_cpu_user:")) * 1e6) as u64
    }

    /// Calls of each script command so far (`EVALSHA`, all scripts).
    fn redis_calls(url: &str, command: &str) -> u64 {
        info(url, "commandstats")
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Emits one critical event to each of `users` (by index), `tasks` at
    /// once, each user's events in order; records each acknowledged
    /// sequence in `last`.
    async fn emit_to(
        emitter: &Arc<ClusterWebSocketManager>,
        users: Vec<usize>,
        last: &Arc<Vec<AtomicU64>>,
        failures: &Arc<AtomicU64>,
    ) {
        let tasks = 32;
        let mut set = tokio::task::JoinSet::new();
        for task in 0..tasks {
            let mine: Vec<usize> = users.iter().copied().skip(task).step_by(tasks).collect();
            let (emitter, last, failures) =
                (Arc::clone(emitter), Arc::clone(last), Arc::clone(failures));
            set.spawn(async move {
                for index in mine {
                    let user = UserId::new(format!("u{index}")).unwrap();
                    match emitter
                        .emit_critical_event(&user, "agent_thinking", json!({ "t": unix_us() }))
                        .await
                    {
                        Ok(delivery) => {
                            if let Some(offset) = delivery.offset() {
                                last[index].store(offset.sequence, Ordering::SeqCst);
                            }
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        while set.join_next().await.is_some() {}
    }

    fn run(
        binary: &std::path::Path,
        redis: &str,
        nodes: usize,
        per_node: usize,
        rate: Option<&str>,
        storm_rate: u64,
    ) {
        let users = nodes * per_node;
        let mut servers: Vec<Node> = (0..nodes)
            .map(|n| start_node(binary, redis, rate, n))
            .collect();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let emitter = runtime.block_on(async {
            let cluster = ClusterConfig::builder(redis)
                .key_prefix("agent_server")
                .node_id("load-emitter")
                .command_timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let manager = ClusterWebSocketManager::new(Default::default(), cluster).unwrap();
            manager.ready().await.unwrap();
            Arc::new(manager)
        });
        let before: Vec<u64> = servers.iter().map(|s| memory_kib(s.child.id()).0).collect();
        let addresses: Vec<String> = servers.iter().map(|s| s.addr.to_string()).collect();
        let mut workers: Vec<Worker> = (0..nodes)
            .map(|n| {
                // Home node first, the others after it.
                let mut order = addresses.clone();
                order.rotate_left(n);
                Worker::spawn(&[
                    "--worker".to_owned(),
                    "--nodes".to_owned(),
                    order.join(","),
                    "--users-from".to_owned(),
                    (n * per_node).to_string(),
                    "--users".to_owned(),
                    per_node.to_string(),
                    "--source".to_owned(),
                    format!("127.0.{}.2,127.0.{}.3", n + 1, n + 1),
                    "--secret".to_owned(),
                    SECRET.to_owned(),
                    "--audience".to_owned(),
                    "agent-server".to_owned(),
                ])
            })
            .collect();

        // 1. Connect every client.
        let connected = ask_all(&mut workers, "connect");
        let total = sum(&connected, "connected");
        let status = ask_all(&mut workers, "status");
        let slowest = connected
            .iter()
            .filter_map(|c| c["ms"].as_u64())
            .max()
            .unwrap_or(1);
        println!(
            "connected {total} of {users} in {:.1} s: {:.0} connections/s ({} refused with 503 and retried: {} not ready, {} admission)",
            slowest as f64 / 1000.0,
            total as f64 / (slowest as f64 / 1000.0),
            sum(&status, "refused"),
            sum(&status, "not_ready"),
            sum(&status, "rate_limited"),
        );
        std::thread::sleep(Duration::from_secs(3));
        let idle: Vec<f64> = servers
            .iter()
            .zip(&before)
            .map(|(s, b)| (memory_kib(s.child.id()).0 - b) as f64 / per_node as f64)
            .collect();
        println!(
            "idle RSS per connection on the nodes: {} KiB (node RSS {} MiB each)",
            idle.iter()
                .map(|k| format!("{k:.1}"))
                .collect::<Vec<_>>()
                .join(", "),
            servers
                .iter()
                .map(|s| (memory_kib(s.child.id()).0 / 1024).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );

        // 2. A critical event to every user, through the emitter node.
        let last: Arc<Vec<AtomicU64>> = Arc::new((0..users).map(|_| AtomicU64::new(0)).collect());
        let failures = Arc::new(AtomicU64::new(0));
        let _ = latencies(&mut workers);
        let cpu_before: u64 = servers.iter().map(|s| cpu_us(s.child.id())).sum();
        let redis_before = redis_cpu_us(redis);
        let started = Instant::now();
        runtime.block_on(emit_to(&emitter, (0..users).collect(), &last, &failures));
        let emitted_in = started.elapsed();
        let mut received = 0;
        while received < users as u64 && started.elapsed() < Duration::from_secs(300) {
            received = sum(&ask_all(&mut workers, "status"), "events");
            std::thread::sleep(Duration::from_millis(100));
        }
        let delivered_in = started.elapsed();
        let cpu = servers.iter().map(|s| cpu_us(s.child.id())).sum::<u64>() - cpu_before;
        let redis_cpu = redis_cpu_us(redis) - redis_before;
        let samples = latencies(&mut workers);
        println!(
            "one critical event to each of {users} users: emitted in {:.1} s ({:.0}/s, {} failed), all received in {:.1} s; emit to receipt p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; CPU per delivery: nodes {:.0} µs, redis {:.0} µs",
            emitted_in.as_secs_f64(),
            users as f64 / emitted_in.as_secs_f64(),
            failures.load(Ordering::Relaxed),
            delivered_in.as_secs_f64(),
            percentile(&samples, 0.5) as f64 / 1000.0,
            percentile(&samples, 0.99) as f64 / 1000.0,
            samples.last().copied().unwrap_or(0) as f64 / 1000.0,
            cpu as f64 / received.max(1) as f64,
            redis_cpu as f64 / received.max(1) as f64,
        );

        // 3. The storm: events keep flowing while node 0 dies.
        let flowing = Arc::new(AtomicBool::new(true));
        let emission = runtime.spawn({
            let (emitter, last, failures, flowing) = (
                Arc::clone(&emitter),
                Arc::clone(&last),
                Arc::clone(&failures),
                Arc::clone(&flowing),
            );
            async move {
                // Batches of storm_rate / 10 users every 100 ms, round robin.
                let batch = (storm_rate / 10).max(1) as usize;
                let mut next = 0;
                let mut emitted = 0u64;
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                while flowing.load(Ordering::SeqCst) {
                    tick.tick().await;
                    let chosen: Vec<usize> =
                        (0..batch).map(|i| (next + i * 7919) % users).collect();
                    next = (next + 1) % users;
                    emit_to(&emitter, chosen, &last, &failures).await;
                    emitted += batch as u64;
                }
                emitted
            }
        });
        std::thread::sleep(Duration::from_secs(2));
        let redis_before = redis_cpu_us(redis);
        let calls_before = redis_calls(redis, "evalsha");
        let survivors_before: Vec<u64> = servers[1..]
            .iter()
            .map(|s| memory_kib(s.child.id()).0)
            .collect();
        let killed = unix_us();
        let kill_started = Instant::now();
        let killed_addr = servers[0].addr;
        servers.remove(0); // SIGKILL
        // Every worker: its tabs on the killed node (and only those) must
        // catch up with what their user had at the kill.
        for (n, worker) in workers.iter_mut().enumerate() {
            let expected: Vec<String> = (n * per_node..(n + 1) * per_node)
                .map(|i| last[i].load(Ordering::SeqCst).to_string())
                .collect();
            worker.ask(&format!(
                "storm {killed} {killed_addr} {}",
                expected.join(",")
            ));
        }
        let mut peak_calls_per_s = 0.0f64;
        let mut caught_up: Vec<u64> = Vec::new();
        let mut pending = 0;
        let mut calls_at = (Instant::now(), calls_before);
        while kill_started.elapsed() < Duration::from_secs(300) {
            std::thread::sleep(Duration::from_millis(500));
            if kill_started.elapsed() > Duration::from_secs(5) {
                flowing.store(false, Ordering::SeqCst);
            }
            let calls = redis_calls(redis, "evalsha");
            let rate = (calls - calls_at.1) as f64 / calls_at.0.elapsed().as_secs_f64();
            peak_calls_per_s = peak_calls_per_s.max(rate);
            calls_at = (Instant::now(), calls);
            let answers = ask_all(&mut workers, "catchup");
            pending = sum(&answers, "pending");
            caught_up = answers
                .iter()
                .flat_map(|a| a["samples_ms"].as_array().cloned().unwrap_or_default())
                .filter_map(|v| v.as_u64())
                .collect();
            if pending == 0 && kill_started.elapsed() > Duration::from_secs(2) {
                break;
            }
        }
        caught_up.sort_unstable();
        flowing.store(false, Ordering::SeqCst);
        let storm_emitted = runtime.block_on(emission).unwrap();
        let redis_cpu = redis_cpu_us(redis) - redis_before;
        let calls = redis_calls(redis, "evalsha") - calls_before;
        let survivors_peak: Vec<u64> = servers.iter().map(|s| memory_kib(s.child.id()).1).collect();
        println!(
            "storm: node 0 SIGKILLed while {storm_rate} critical events/s flowed ({storm_emitted} in all); of the {} tabs it cut, {} caught up (connected again and holding every event emitted before the kill), {pending} not: p50 {} ms, p99 {} ms, max {} ms after the kill",
            caught_up.len() as u64 + pending,
            caught_up.len(),
            percentile(&caught_up, 0.5),
            percentile(&caught_up, 0.99),
            caught_up.last().copied().unwrap_or(0),
        );
        println!(
            "  survivors' RSS before the kill {} MiB, peak after {} MiB; redis: {:.1} CPU s during the storm, {calls} script calls (peak {:.0}/s)",
            survivors_before
                .iter()
                .map(|k| (k / 1024).to_string())
                .collect::<Vec<_>>()
                .join(", "),
            survivors_peak
                .iter()
                .map(|k| (k / 1024).to_string())
                .collect::<Vec<_>>()
                .join(", "),
            redis_cpu as f64 / 1e6,
            peak_calls_per_s,
        );

        // 4. Nothing lost, repeated or reordered: every tab against the last
        //    sequence acknowledged to its user.
        std::thread::sleep(Duration::from_secs(3));
        let mut finals = Vec::new();
        for (n, worker) in workers.iter_mut().enumerate() {
            let expected: Vec<String> = (n * per_node..(n + 1) * per_node)
                .map(|i| last[i].load(Ordering::SeqCst).to_string())
                .collect();
            finals.push(worker.ask_json(&format!("final {}", expected.join(","))));
        }
        println!(
            "  end: {} tabs hold exactly the last acknowledged event of their user, {} behind, {} ahead (an emit that failed may be stored: {} failed); gaps {}, repeats {}, resyncs {}, streams changed {}, reconnects {}, 503s {}, failed attempts {}",
            sum(&finals, "equal"),
            sum(&finals, "behind"),
            sum(&finals, "ahead"),
            failures.load(Ordering::Relaxed),
            sum(&finals, "gaps"),
            sum(&finals, "repeats"),
            sum(&finals, "resyncs"),
            sum(&finals, "streams_changed"),
            sum(&finals, "reconnects"),
            sum(&finals, "refused"),
            sum(&finals, "failures"),
        );
        println!("  {}", link_events(nodes));
        let mut ends = std::collections::BTreeMap::<String, u64>::new();
        for status in &finals {
            if let Some(map) = status["ends"].as_object() {
                for (why, n) in map {
                    *ends.entry(why.clone()).or_default() += n.as_u64().unwrap_or(0);
                }
            }
        }
        println!("  why connections ended: {ends:?}");
        drop(workers);
        drop(servers);
        runtime.shutdown_timeout(Duration::from_secs(2));
    }
}
