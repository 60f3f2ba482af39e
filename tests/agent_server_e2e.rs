//! The agent server example as a user runs it: the real binary
//! (`cargo build --example agent_server`), spawned on 127.0.0.1 port 0,
//! driven over real sockets. Checks the fairness of its run slots, its run
//! ids, and that its operator routes (`/health/{user}`, `/managers`,
//! `/metrics`) answer only the operator.
#![allow(missing_docs, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Every wait is bounded by this.
const STEP: Duration = Duration::from_secs(10);
const OPERATOR_TOKEN: &str = "operator-token-for-the-e2e-test";

/// The example binary, built by the cargo that runs this test (a no-op
/// when `cargo test` already built the examples).
fn example_binary() -> PathBuf {
    // target/<profile>/deps/agent_server_e2e-<hash>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let target_dir = profile_dir.parent().unwrap();
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--quiet", "--example", "agent_server"])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().unwrap();
    assert!(
        status.success(),
        "cargo build --example agent_server failed"
    );
    profile_dir.join("examples").join("agent_server")
}

/// A running example server, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// What follows "agent server listening on http://" at startup.
    startup_line: String,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        Server::start_with(args, &[])
    }

    fn start_with(args: &[&str], env: &[(&str, &str)]) -> Server {
        let server = Server::spawn(args, env);
        // A cluster node listens before it has joined (503 `starting`
        // until then): wait for /ready, as a load balancer would.
        server.wait_ready(Duration::from_secs(60));
        server
    }

    /// Polls `GET /ready` until it answers 200, at most `limit`.
    fn wait_ready(&self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        while self.http("GET", "/ready", None, "").0 != 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "not ready within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Started and listening, not necessarily ready.
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = Command::new(example_binary());
        command
            .args(["--demo", "--port", "0"])
            .args(args)
            .envs(env.iter().copied())
            .stderr(Stdio::null());
        Server::spawn_command(command)
    }

    /// Started under `ulimit -n open_files` (soft and hard: the server
    /// cannot raise it), its log (`RUST_LOG=warn`) collected.
    fn spawn_limited(open_files: u32, args: &[&str]) -> (Server, Arc<Mutex<String>>) {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {open_files} && exec \"$0\" \"$@\""))
            .arg(example_binary())
            .args(["--demo", "--port", "0"])
            .args(args)
            .stderr(Stdio::piped());
        let mut server = Server::spawn_command(command);
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = server.child.stderr.take().unwrap();
        let collected = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                collected.lock().unwrap().push_str(&line);
            }
        });
        (server, log)
    }

    fn spawn_command(mut command: Command) -> Server {
        let mut child = command
            .env_remove("AGENT_SERVER_OPERATOR_TOKEN")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Read stdout on a thread until the "listening on" line, then keep
        // draining it so the server never blocks on a full pipe.
        let stdout = child.stdout.take().unwrap();
        let (found, listening) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(rest) = line.strip_prefix("agent server listening on http://") {
                    let _ = found.send(rest.to_owned());
                }
            }
        });
        let line = listening
            .recv_timeout(Duration::from_secs(60))
            .expect("the example did not print its address");
        let addr = line.split('/').next().unwrap_or_default().parse().unwrap();
        Server {
            child,
            addr,
            startup_line: line,
        }
    }

    /// An upgraded connection of `user`, held open.
    fn hold_upgrade(&self, user: &str) -> TcpStream {
        let token = self.demo_token(user);
        let mut stream = TcpStream::connect(self.addr).unwrap();
        stream.set_read_timeout(Some(STEP)).unwrap();
        stream
            .write_all(format!(
                "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n",
                self.addr
            ).as_bytes())
            .unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 101", "{user} upgraded");
        stream
    }

    /// One raw HTTP/1.1 exchange: the whole response (head and body).
    fn exchange(&self, request: &str) -> String {
        let mut stream = TcpStream::connect(self.addr).unwrap();
        stream.set_read_timeout(Some(STEP)).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = Vec::new();
        // An upgrade answered 101 keeps the connection open: read what came.
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stream.read(&mut chunk) {
            if n == 0 {
                break;
            }
            response.extend_from_slice(&chunk[..n]);
            if response.windows(4).any(|w| w == b"\r\n\r\n")
                && response.starts_with(b"HTTP/1.1 101")
            {
                break;
            }
        }
        String::from_utf8_lossy(&response).into_owned()
    }

    /// `GET /ready`: the status, the `Retry-After` header if any, the body.
    fn readiness(&self) -> (u16, Option<u64>, String) {
        let response = self.exchange(&format!(
            "GET /ready HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        ));
        parse_refusal(&response)
    }

    /// A WebSocket upgrade of `user` as raw HTTP: status, `Retry-After`, body.
    fn raw_upgrade(&self, user: &str) -> (u16, Option<u64>, String) {
        let token = self.demo_token(user);
        let response = self.exchange(&format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n",
            self.addr
        ));
        parse_refusal(&response)
    }

    fn demo_token(&self, user: &str) -> String {
        let (status, body) = self.http(
            "POST",
            "/demo-token",
            None,
            &json!({"user": user}).to_string(),
        );
        assert_eq!(status, 200, "demo token: {body}");
        let token: Value = serde_json::from_str(&body).unwrap();
        token["token"].as_str().unwrap().to_owned()
    }

    /// One HTTP/1.1 request, with `Authorization: Bearer <bearer>` when
    /// given; returns the status and the body.
    fn http(&self, method: &str, path: &str, bearer: Option<&str>, body: &str) -> (u16, String) {
        let authorization = bearer.map(|token| format!("Bearer {token}"));
        self.http_authorized(method, path, authorization.as_deref(), body)
    }

    /// One HTTP/1.1 request with this `Authorization` header value, if any.
    fn http_authorized(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: &str,
    ) -> (u16, String) {
        let mut stream = TcpStream::connect(self.addr).unwrap();
        stream.set_read_timeout(Some(STEP)).unwrap();
        let auth = authorization
            .map(|value| format!("Authorization: {value}\r\n"))
            .unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    fn operator_get(&self, path: &str) -> String {
        let (status, body) = self.http("GET", path, Some(OPERATOR_TOKEN), "");
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn connect(&self, user: &str) -> Tab {
        self.connect_to(user, "/ws").await
    }

    async fn connect_to(&self, user: &str, path: &str) -> Tab {
        let token = self.demo_token(user);
        let mut request = format!("ws://{}{path}", self.addr)
            .into_client_request()
            .unwrap();
        let headers = request.headers_mut();
        let bearer = format!("Bearer {token}");
        headers.insert("authorization", bearer.parse().unwrap());
        let origin = format!("http://127.0.0.1:{}", self.addr.port());
        headers.insert("origin", origin.parse().unwrap());
        let stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let (socket, _) =
            tokio::time::timeout(STEP, tokio_tungstenite::client_async(request, stream))
                .await
                .expect("upgrade timed out")
                .unwrap();
        Tab { socket }
    }
}

/// Status, `Retry-After` (seconds) and body of a raw HTTP response.
fn parse_refusal(response: &str) -> (u16, Option<u64>, String) {
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response, ""));
    let retry_after = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("retry-after")
            .then(|| value.trim().parse().ok())?
    });
    (status, retry_after, body.to_owned())
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Tab {
    socket: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
}

impl Tab {
    async fn run(&mut self, prompt: &str) {
        let request = json!({"type": "run", "prompt": prompt}).to_string();
        self.socket.send(Message::text(request)).await.unwrap();
    }

    /// The next JSON message whose `type` is one of `types`.
    async fn next_of(&mut self, types: &[&str]) -> Value {
        loop {
            let message = tokio::time::timeout(STEP, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no {types:?} within {STEP:?}"));
            if let Some(Ok(Message::Text(text))) = message {
                let value: Value = serde_json::from_str(&text).unwrap();
                if types.iter().any(|t| value["type"] == *t) {
                    return value;
                }
            } else if !matches!(message, Some(Ok(_))) {
                panic!("the socket ended: {message:?}");
            }
        }
    }
}

/// The value of `name{manager="unified"}` in Prometheus text.
fn sample(metrics: &str, name: &str) -> f64 {
    let prefix = format!("{name}{{manager=\"unified\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

fn run_id(event: &Value) -> String {
    event["data"]["run_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_slots_are_limited_per_user_and_per_server_and_run_ids_are_unique() {
    let server = Server::start(&["--max-runs", "3", "--max-runs-per-user", "2"]);
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut alice = server.connect("alice").await;
        for prompt in ["one", "two", "three"] {
            alice.run(prompt).await;
        }
        // Two runs start; the third is refused by the per-user limit.
        let mut started = Vec::new();
        let mut busy = Vec::new();
        while started.len() < 2 || busy.is_empty() {
            let event = alice.next_of(&["agent_started", "busy"]).await;
            if event["type"] == "busy" {
                busy.push(event);
            } else {
                started.push(run_id(&event));
            }
        }
        assert_eq!(busy, [json!({"type": "busy", "limit": "user"})]);

        // Bob is not starved by alice: he gets the server's last slot...
        let mut bob = server.connect("bob").await;
        bob.run("bob's").await;
        let bobs = bob.next_of(&["agent_started", "busy"]).await;
        assert_eq!(bobs["type"], "agent_started", "{bobs}");
        started.push(run_id(&bobs));
        // ...and then the server is full for a third user.
        let mut carol = server.connect("carol").await;
        carol.run("carol's").await;
        let refused = carol.next_of(&["agent_started", "busy"]).await;
        assert_eq!(refused, json!({"type": "busy", "limit": "server"}));

        // Runs started in the same second have different ids.
        let mut unique = started.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 3, "run ids repeat: {started:?}");

        // A finished run gives its slot back.
        alice.next_of(&["agent_completed"]).await;
        alice.run("four").await;
        let again = alice.next_of(&["agent_started", "busy"]).await;
        assert_eq!(again["type"], "agent_started", "{again}");
        assert!(!started.contains(&run_id(&again)));
    })
    .await
    .expect("the test did not finish within 60 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_routes_need_the_operator_token_and_metrics_follow_traffic() {
    let server = Server::start(&["--operator-token", OPERATOR_TOKEN]);
    for path in ["/metrics", "/managers", "/health/alice"] {
        for bearer in [None, Some("not-the-operator-token-at-all"), Some("")] {
            let (status, body) = server.http("GET", path, bearer, "");
            assert_eq!(status, 401, "GET {path} with {bearer:?}: {body}");
        }
    }
    // The scheme is case-insensitive (RFC 7235, 2.1); the token is not.
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let authorization = format!("{scheme} {OPERATOR_TOKEN}");
        let (status, body) = server.http_authorized("GET", "/managers", Some(&authorization), "");
        assert_eq!(status, 200, "{authorization}: {body}");
    }
    let shouted = format!("Bearer {}", OPERATOR_TOKEN.to_uppercase());
    let (status, _) = server.http_authorized("GET", "/managers", Some(&shouted), "");
    assert_eq!(status, 401);
    // A user's own token is not an operator token.
    let (_, body) = server.http("POST", "/demo-token", None, r#"{"user":"alice"}"#);
    let user_token: Value = serde_json::from_str(&body).unwrap();
    let (status, _) = server.http("GET", "/metrics", user_token["token"].as_str(), "");
    assert_eq!(status, 401);

    let before = server.operator_get("/metrics");
    assert!(
        before.contains("# TYPE websocket_manager_messages_sent_total counter"),
        "{before}"
    );
    assert_eq!(sample(&before, "websocket_manager_connections"), 0.0);
    let sent_before = sample(&before, "websocket_manager_messages_sent_total");

    tokio::time::timeout(Duration::from_secs(30), async {
        let mut alice = server.connect("alice").await;
        alice.run("metrics").await;
        alice.next_of(&["agent_thinking"]).await;
        let during = server.operator_get("/metrics");
        assert_eq!(sample(&during, "websocket_manager_connections"), 1.0);
        assert!(
            sample(&during, "websocket_manager_messages_sent_total") >= sent_before + 2.0,
            "two events reached alice, yet:\n{during}"
        );
        let health: Value = serde_json::from_str(&server.operator_get("/health/alice")).unwrap();
        assert_eq!(health["user_id"], "alice", "{health}");
        let report: Value = serde_json::from_str(&server.operator_get("/managers")).unwrap();
        assert!(report.is_object(), "{report}");
    })
    .await
    .expect("the test did not finish within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_operator_token_the_operator_routes_are_off() {
    let server = Server::start(&[]);
    for path in ["/metrics", "/managers", "/health/alice"] {
        for bearer in [None, Some(OPERATOR_TOKEN)] {
            let (status, body) = server.http("GET", path, bearer, "");
            assert_eq!(status, 404, "GET {path} with {bearer:?}: {body}");
        }
    }
    // The public routes still work.
    let (status, _) = server.http("GET", "/", None, "");
    assert_eq!(status, 200);
}

/// Headless Chromium, driven over the DevTools protocol (a WebSocket on
/// loopback), killed when dropped.
struct Browser {
    child: Child,
    devtools: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    next_id: u64,
    _profile: TempDir,
}

/// A directory removed when dropped (the browser profile).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    /// `None` (with the reason printed) when no Chromium is installed and CI
    /// is not set; under CI a missing browser fails the test (`.ci/run`
    /// installs Debian's `chromium`).
    async fn launch() -> Option<Browser> {
        let binary = ["chromium", "chromium-browser"].into_iter().find(|name| {
            Command::new(name)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        let Some(binary) = binary else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but no chromium is installed (.ci/run installs it)"
            );
            eprintln!("SKIPPED: the demo page test needs Chromium (apt-get install chromium)");
            return None;
        };
        // one profile per browser: tests run in parallel, and Chromium
        // refuses a profile another instance holds
        static LAUNCHED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let launch = LAUNCHED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let profile =
            std::env::temp_dir().join(format!("wsm-chromium-{}-{launch}", std::process::id()));
        let mut child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (found, devtools_url) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = found.send(url.trim().to_owned());
                }
            }
        });
        let url = devtools_url
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium did not print its DevTools address");
        let request = url.as_str().into_client_request().unwrap();
        let addr = format!(
            "{}:{}",
            request.uri().host().unwrap(),
            request.uri().port_u16().unwrap()
        );
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (devtools, _) = tokio_tungstenite::client_async(request, stream)
            .await
            .unwrap();
        Some(Browser {
            child,
            devtools,
            next_id: 0,
            _profile: TempDir(profile),
        })
    }

    /// One DevTools command; returns its `result`.
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        self.devtools
            .send(Message::text(command.to_string()))
            .await
            .unwrap();
        loop {
            let message = tokio::time::timeout(STEP, self.devtools.next())
                .await
                .expect("DevTools did not answer")
                .unwrap()
                .unwrap();
            let Message::Text(text) = message else {
                continue;
            };
            let reply: Value = serde_json::from_str(&text).unwrap();
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Opens `url` in a new tab; returns the DevTools session of the tab.
    async fn open(&mut self, url: &str) -> String {
        let target = self
            .call(None, "Target.createTarget", json!({"url": url}))
            .await;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        attached["sessionId"].as_str().unwrap().to_owned()
    }

    /// Evaluates `expression` in the tab until it returns `true`-ish JSON
    /// with a `done` field, or `limit` passes; returns the last value.
    async fn wait_for(&mut self, session: &str, expression: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let result = self
                .call(
                    Some(session),
                    "Runtime.evaluate",
                    json!({"expression": expression, "returnByValue": true}),
                )
                .await;
            let value = result["result"]["value"].clone();
            if value["done"] == true || tokio::time::Instant::now() >= deadline {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The page's event log as `[type, stream:seq, details]` rows, plus its
/// "last offset" label; `done` once a final answer is shown.
const PAGE_STATE: &str = r#"(() => {
  const rows = [...document.querySelectorAll('#log tr')].map(r => [...r.cells].map(c => c.textContent));
  return {rows, offset: document.getElementById('offset').textContent,
          done: rows.some(r => r[1].startsWith('final_answer'))};
})()"#;

fn page_rows(state: &Value) -> Vec<(String, String, String)> {
    state["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let cell = |i: usize| r[i].as_str().unwrap_or_default().to_owned();
            (cell(1), cell(2), cell(3))
        })
        .collect()
}

/// The demo page as a person uses it, in a real browser: it drops mid-run,
/// reconnects with `?resume=` its last offset, and shows every later event
/// once, the final answer included; a resume from a stream the server never
/// had shows the resync notice first.
#[tokio::test]
async fn the_demo_page_resumes_after_a_drop_in_headless_chromium() {
    let Some(mut browser) = Browser::launch().await else {
        return;
    };
    let server = Server::start(&[]);
    let page = format!("http://{}/?auto=drop&user=carol", server.addr);
    let tab = browser.open(&page).await;
    let state = browser
        .wait_for(&tab, PAGE_STATE, Duration::from_secs(30))
        .await;
    let rows = page_rows(&state);
    assert_eq!(state["done"], true, "no final answer shown: {rows:?}");
    let events: Vec<&(String, String, String)> = rows
        .iter()
        .filter(|(_, offset, _)| !offset.is_empty())
        .collect();
    let sequences: Vec<u64> = events
        .iter()
        .map(|(_, offset, _)| offset.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        sequences,
        [1, 2, 3, 4, 5, 6],
        "each event once, in order: {rows:?}"
    );
    let stream = events[0].1.split(':').next().unwrap();
    assert!(
        events.iter().all(|(_, o, _)| o.starts_with(stream)),
        "{rows:?}"
    );
    assert!(
        rows.iter().any(|(kind, _, details)| kind == "open"
            && details.contains(&format!("resuming after {stream}:2"))),
        "the page reconnects with its last offset: {rows:?}"
    );
    assert!(
        rows.iter()
            .any(|(kind, _, _)| kind == "tool_executing (replayed)"),
        "what was emitted while offline is replayed: {rows:?}"
    );
    assert_eq!(events[5].0.trim_end_matches(" (replayed)"), "final_answer");
    assert_offset_with_print(&state["offset"], &format!("{stream}:6"));
    assert!(!rows.iter().any(|(kind, _, _)| kind == "resync notice"));

    // A resume from a stream this server never had: the notice comes first.
    let page = format!("http://{}/?auto=run&user=dave&resume=12:5", server.addr);
    let tab = browser.open(&page).await;
    let state = browser
        .wait_for(&tab, PAGE_STATE, Duration::from_secs(30))
        .await;
    let rows = page_rows(&state);
    let first_event = rows
        .iter()
        .find(|(kind, _, _)| kind != "open")
        .unwrap_or_else(|| panic!("nothing shown: {rows:?}"));
    assert_eq!(first_event.0, "resync notice", "{rows:?}");
    assert!(first_event.2.contains("unknown_stream"), "{rows:?}");
    assert_eq!(state["done"], true, "{rows:?}");
}

/// The page's rows, status and counters; `done` once `finals` final
/// answers are shown.
fn page_state(finals: usize) -> String {
    format!(
        r#"(() => {{
  const rows = [...document.querySelectorAll('#log tr')].map(r => [...r.cells].map(c => c.textContent));
  const text = (id) => document.getElementById(id).textContent;
  return {{rows, offset: text('offset'), status: text('status'), refreshes: text('refreshes'),
          done: rows.filter(r => r[1].startsWith('final_answer')).length >= {finals}}};
}})()"#
    )
}

/// The `stream:seq` cells of the critical events shown, as numbers.
fn shown_offsets(rows: &[(String, String, String)]) -> Vec<(u64, u64)> {
    rows.iter()
        .filter(|(kind, offset, _)| !offset.is_empty() && kind != "resync notice")
        .map(|(_, offset, _)| {
            let (stream, seq) = offset.split_once(':').unwrap();
            (stream.parse().unwrap(), seq.parse().unwrap())
        })
        .collect()
}

/// The page (on the JavaScript client) through a server killed with SIGKILL
/// and restarted on its port: it reconnects by itself, shows the
/// `unknown_stream` resync notice (the in-memory manager forgot the user),
/// and the next run arrives whole on the new stream.
#[tokio::test]
async fn the_demo_page_reconnects_by_itself_through_a_server_restart_in_headless_chromium() {
    let Some(mut browser) = Browser::launch().await else {
        return;
    };
    let server = Server::start(&[]);
    let addr = server.addr;
    let tab = browser
        .open(&format!("http://{addr}/?auto=run&user=frank"))
        .await;
    let state = browser
        .wait_for(&tab, &page_state(1), Duration::from_secs(30))
        .await;
    assert_eq!(state["done"], true, "{:?}", page_rows(&state));
    drop(server); // SIGKILL
    let _server = Server::start(&["--port", &addr.port().to_string()]);
    const BACK: &str = r#"(() => {
  const rows = [...document.querySelectorAll('#log tr')].map(r => [...r.cells].map(c => c.textContent));
  return {rows, done: document.getElementById('status').textContent === 'open'
                      && rows.some(r => r[1] === 'resync notice')};
})()"#;
    let state = browser.wait_for(&tab, BACK, Duration::from_secs(30)).await;
    assert_eq!(
        state["done"],
        true,
        "no reconnect with a notice: {:?}",
        page_rows(&state)
    );
    browser
        .call(
            Some(&tab),
            "Runtime.evaluate",
            json!({"expression": "document.getElementById('run').click()"}),
        )
        .await;
    let state = browser
        .wait_for(&tab, &page_state(2), Duration::from_secs(30))
        .await;
    let rows = page_rows(&state);
    assert_eq!(state["done"], true, "no second answer: {rows:?}");
    let offsets = shown_offsets(&rows);
    assert_eq!(offsets.len(), 12, "{rows:?}");
    let (old, new) = offsets.split_at(6);
    assert!(old.iter().all(|(s, _)| *s == old[0].0), "{rows:?}");
    assert!(new.iter().all(|(s, _)| *s == new[0].0), "{rows:?}");
    assert_ne!(old[0].0, new[0].0, "a new stream after the restart");
    let sequences = |events: &[(u64, u64)]| events.iter().map(|(_, q)| *q).collect::<Vec<_>>();
    assert_eq!(sequences(old), [1, 2, 3, 4, 5, 6], "{rows:?}");
    assert_eq!(sequences(new), [1, 2, 3, 4, 5, 6], "{rows:?}");
    // the notice sits between the two runs, and names the reason
    let notice = rows
        .iter()
        .position(|(kind, _, _)| kind == "resync notice")
        .unwrap();
    let first_new = rows
        .iter()
        .position(|(_, offset, _)| offset == &format!("{}:1", new[0].0))
        .unwrap();
    let last_old = rows
        .iter()
        .position(|(_, offset, _)| offset == &format!("{}:6", old[0].0))
        .unwrap();
    assert!(last_old < notice && notice < first_new, "{rows:?}");
    assert!(rows[notice].2.contains("unknown_stream"), "{rows:?}");
    assert!(
        rows.iter()
            .any(|(kind, _, details)| kind == "close" && details.contains("reconnecting in")),
        "the page says it reconnects: {rows:?}"
    );
    assert_offset_with_print(&state["offset"], &format!("{}:6", new[0].0));
}

/// The page keeps the print of its last event beside its offset
/// (`<stream>:<sequence>:<print>`, docs/protocol.md section 4.1).
fn assert_offset_with_print(shown: &serde_json::Value, offset: &str) {
    let shown = shown.as_str().unwrap_or_default();
    let print = shown
        .strip_prefix(offset)
        .and_then(|rest| rest.strip_prefix(':'));
    assert!(
        print.is_some_and(|p| p.len() == 8 && p.bytes().all(|b| b.is_ascii_hexdigit())),
        "the page shows {shown:?}, expected {offset}:<print>"
    );
}

/// The page through token refreshes: with 2-second tokens a run outlives
/// several of them; the client refreshes in-band, so there is one
/// connection, no close, and every event once.
#[tokio::test]
async fn the_demo_page_refreshes_its_token_in_band_in_headless_chromium() {
    let Some(mut browser) = Browser::launch().await else {
        return;
    };
    let server = Server::start(&[]);
    let tab = browser
        .open(&format!("http://{}/?auto=run&user=gina&ttl=2", server.addr))
        .await;
    let state = browser
        .wait_for(&tab, &page_state(1), Duration::from_secs(30))
        .await;
    let rows = page_rows(&state);
    assert_eq!(state["done"], true, "no final answer: {rows:?}");
    let refreshed = rows
        .iter()
        .filter(|(kind, _, _)| kind == "token refreshed")
        .count();
    assert!(refreshed >= 1, "no refresh shown: {rows:?}");
    assert_eq!(state["refreshes"], refreshed.to_string(), "{rows:?}");
    let opens = rows.iter().filter(|(kind, _, _)| kind == "open").count();
    assert_eq!(opens, 1, "one connection all along: {rows:?}");
    assert!(!rows.iter().any(|(kind, _, _)| kind == "close"), "{rows:?}");
    let sequences: Vec<u64> = shown_offsets(&rows).iter().map(|(_, q)| *q).collect();
    assert_eq!(sequences, [1, 2, 3, 4, 5, 6], "{rows:?}");
}

/// The page shows a refused run (`busy`) instead of dropping it: with one
/// run per user, a second run asked for while the first is going is refused,
/// and the page says which limit refused it.
#[tokio::test]
async fn the_demo_page_shows_a_refused_run_in_headless_chromium() {
    let Some(mut browser) = Browser::launch().await else {
        return;
    };
    let server = Server::start(&["--max-runs-per-user", "1"]);
    let page = format!("http://{}/?auto=run&user=erin", server.addr);
    let tab = browser.open(&page).await;
    // once the first run has started, click "Run agent" once more
    const SECOND_RUN: &str = r#"(() => {
  const rows = [...document.querySelectorAll('#log tr')].map(r => [...r.cells].map(c => c.textContent));
  if (rows.some(r => r[1] === 'agent_started') && !window.secondRunAsked) {
    window.secondRunAsked = true;
    document.getElementById('run').click();
  }
  return {rows, done: rows.some(r => r[1] === 'busy')};
})()"#;
    let state = browser
        .wait_for(&tab, SECOND_RUN, Duration::from_secs(30))
        .await;
    let rows = page_rows(&state);
    assert_eq!(state["done"], true, "no busy row shown: {rows:?}");
    let busy = rows.iter().find(|(kind, _, _)| kind == "busy").unwrap();
    assert!(busy.2.contains("user limit"), "{busy:?}");
    // the first run is unaffected
    let state = browser
        .wait_for(&tab, PAGE_STATE, Duration::from_secs(30))
        .await;
    assert_eq!(state["done"], true, "{:?}", page_rows(&state));
}

/// The critical events a tab receives up to and including the run's final
/// answer, as `(stream, sequence, type)`.
async fn critical_until_final(tab: &mut Tab) -> Vec<(u64, u64, String)> {
    let mut seen = Vec::new();
    loop {
        let event = tab
            .next_of(&[
                "agent_started",
                "agent_thinking",
                "tool_executing",
                "tool_completed",
                "agent_completed",
                "final_answer",
                "resync",
            ])
            .await;
        assert_ne!(event["type"], "resync", "nothing may be lost: {event}");
        if event["critical"] == true {
            seen.push((
                event["stream"].as_u64().unwrap(),
                event["sequence"].as_u64().unwrap(),
                event["type"].as_str().unwrap().to_owned(),
            ));
        }
        if event["type"] == "final_answer" {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_redis_behave_as_one() {
    let Some(redis) = websocket_manager_test_support::redis::redis_for("agent_server_cluster")
    else {
        return;
    };
    let url = redis.url();
    let secret = (
        "AGENT_SERVER_JWT_SECRET",
        "a shared secret of the two nodes, 32+ bytes long",
    );
    let args = ["--redis", url.as_str(), "--operator-token", OPERATOR_TOKEN];
    let a = Server::start_with(&args, &[secret]);
    let b = Server::start_with(&args, &[secret]);
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut on_a = a.connect("alice").await;
        let mut on_b = b.connect("alice").await;
        let mut live_on_b = b.connect("alice").await;
        // `/health/{user}` on either node counts the tabs on both.
        let deadline = std::time::Instant::now() + STEP;
        loop {
            let health: Value = serde_json::from_str(&a.operator_get("/health/alice")).unwrap();
            if health["total_connections"] == 3 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a never counted b's tab: {health}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let report: Value = serde_json::from_str(&b.operator_get("/managers")).unwrap();
        assert!(report.to_string().contains("\"cluster\""), "{report}");

        // A run started on node a: b's tab sees the same events, same offsets.
        on_a.run("cluster").await;
        let first_on_b = on_b.next_of(&["agent_started"]).await;
        let resume_from = format!("{}:{}", first_on_b["stream"], first_on_b["sequence"]);
        // b's tab drops after the first event; the run goes on.
        drop(on_b);
        let all = critical_until_final(&mut on_a).await;
        assert!(all.len() >= 3, "{all:?}");
        assert_eq!(all[0].2, "agent_started");
        // It resumes on the other node and gets exactly what followed.
        let mut resumed = a
            .connect_to("alice", &format!("/ws?resume={resume_from}"))
            .await;
        let rest = critical_until_final(&mut resumed).await;
        assert_eq!(
            rest,
            all[1..].to_vec(),
            "the events after the offset, once each"
        );
        // The tab that stayed on b saw the whole run live, final answer
        // included, with the same offsets as the tab on a.
        assert_eq!(critical_until_final(&mut live_on_b).await, all);
    })
    .await
    .expect("the test did not finish within 60 s");
}

/// A cluster node started while its Redis is down listens at once, says
/// `starting` on `/ready` and refuses upgrades with 503 + `Retry-After`
/// (never 101 then a close), then joins by itself when Redis comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_without_redis_refuses_until_it_joins_by_itself() {
    let Some(mut redis) =
        websocket_manager_test_support::redis::own_redis_for("agent_server_start")
    else {
        return;
    };
    // Down before the node starts (restarted on the same port below).
    redis.kill();
    let url = redis.url();
    let node = Server::spawn(&["--redis", url.as_str()], &[]);
    let (status, retry_after, body) = node.readiness();
    assert_eq!((status, body.as_str()), (503, "not ready: starting"));
    assert!(retry_after.is_some_and(|s| s >= 1), "no Retry-After");
    let (status, retry_after, _) = node.raw_upgrade("alice");
    assert_eq!(status, 503, "an upgrade before the join");
    assert!(retry_after.is_some_and(|s| s >= 1), "no Retry-After");
    // Still waiting, still alive, a few seconds later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(node.readiness().0, 503);
    assert_eq!(node.http("GET", "/live", None, "").0, 200);

    redis.restart();
    node.wait_ready(Duration::from_secs(20));
    let mut tab = node.connect("alice").await;
    tab.run("joined").await;
    assert_eq!(
        tab.next_of(&["agent_started"]).await["type"],
        "agent_started"
    );
}

/// Two nodes on one Redis, Redis frozen (SIGSTOP) past the fence bound:
/// `/ready` turns 503 on both within the bound, an upgrade is refused with
/// 503 + `Retry-After`, and an open tab is closed with 1012 (to resume
/// elsewhere), not left open and silent; once Redis answers, both serve
/// again by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_says_so_refuses_upgrades_and_serves_again() {
    let Some(redis) = websocket_manager_test_support::redis::own_redis_for("agent_server_fence")
    else {
        return;
    };
    let url = redis.url();
    let secret = (
        "AGENT_SERVER_JWT_SECRET",
        "a shared secret of the two nodes, 32+ bytes long",
    );
    let args = ["--redis", url.as_str()];
    let a = Server::start_with(&args, &[secret]);
    let b = Server::start_with(&args, &[secret]);
    let mut tab = b.connect("alice").await;
    // Registered (the hello comes after): a registration whose history
    // read meets the pause is refused with 1011, not the fence's 1012.
    tab.next_of(&["hello"]).await;
    assert_eq!(a.readiness().0, 200);

    redis.pause();
    let cut_at = std::time::Instant::now();
    // The default fence bound is 8 s (8/9 of the 9 s node TTL): /ready
    // says `fenced` by then, a few seconds of slack for a loaded machine.
    let bound = Duration::from_secs(8) + Duration::from_secs(4);
    let closed = tokio::time::timeout(bound, async {
        loop {
            match tab.socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await
    .expect("the tab on the cut-off node stayed open and silent past the fence bound");
    assert_eq!(closed, Some(1012), "closed to resume elsewhere");
    loop {
        let (status, _, body) = b.readiness();
        if status == 503 && body == "not ready: fenced" {
            break;
        }
        assert!(cut_at.elapsed() < bound, "/ready said {status} {body:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, retry_after, _) = b.raw_upgrade("bob");
    assert_eq!(status, 503, "an upgrade on a fenced node");
    assert!(retry_after.is_some_and(|s| s >= 1), "no Retry-After");
    assert_eq!(a.readiness().0, 503, "a is cut off too");

    redis.unpause();
    a.wait_ready(Duration::from_secs(15));
    b.wait_ready(Duration::from_secs(15));
    let mut again = b.connect("alice").await;
    again.run("back").await;
    assert_eq!(
        again.next_of(&["agent_started"]).await["type"],
        "agent_started"
    );
}

/// SIGTERM: `/ready` turns 503 (`draining`) first, while the open tab is
/// still served; only after the drain delay is the tab closed with 1001,
/// and the process exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flips_ready_to_503_before_draining_with_1001() {
    let mut server = Server::start(&["--drain-delay-ms", "1500"]);
    let mut tab = server.connect("alice").await;
    assert_eq!(server.readiness().0, 200);
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let signalled = std::time::Instant::now();
    let (status, retry_after, body) = loop {
        let answer = server.readiness();
        if answer.0 == 503 {
            break answer;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(1),
            "/ready still says {answer:?} after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((status, body.as_str()), (503, "not ready: draining"));
    assert!(retry_after.is_some_and(|s| s >= 1), "no Retry-After");
    let flipped = signalled.elapsed();
    let close = tokio::time::timeout(STEP, async {
        loop {
            match tab.socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await
    .expect("the tab was never closed");
    let closed = signalled.elapsed();
    assert_eq!(close, Some(1001));
    assert!(
        closed >= Duration::from_millis(1500) && flipped < closed,
        "/ready flipped after {flipped:?}, the tab closed after {closed:?}"
    );
    let exit = tokio::task::spawn_blocking(move || server.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit}");
}

/// A clean start says nothing at `warn` or above, so that an operator who
/// sees a warning at boot knows it means something (the startup probes
/// fill queues and close sockets on purpose: that is theirs, at `debug`).
#[test]
fn a_clean_startup_logs_no_warning() {
    let (server, log) = Server::spawn_limited(4096, &[]);
    server.wait_ready(STEP);
    assert!(server.startup_line.contains("connections: at most 3584"));
    drop(server);
    // The reader thread has the whole log once the process is gone.
    std::thread::sleep(Duration::from_millis(200));
    let log = log.lock().unwrap().clone();
    assert!(
        !log.contains("WARN") && !log.contains("ERROR"),
        "the startup logged: {log}"
    );
}

/// At its descriptor limit a process cannot even accept: its clients would
/// wait unanswered in the kernel's queue. The server bounds its connections
/// below the limit by itself (503 `at_capacity`, which clients back off
/// from), and, bounded higher by hand, says in its log why clients wait.
#[test]
fn a_server_at_its_descriptor_limit_answers_503_or_says_why_it_cannot() {
    // 600 descriptors, 512 kept back: 88 connections.
    let (server, _) = Server::spawn_limited(600, &[]);
    server.wait_ready(STEP);
    assert!(
        server.startup_line.contains("connections: at most 88"),
        "{}",
        server.startup_line
    );
    let held: Vec<TcpStream> = (0..88)
        .map(|i| server.hold_upgrade(&format!("u{i}")))
        .collect();
    let (status, retry_after, body) = server.raw_upgrade("one-too-many");
    assert_eq!(
        (status, body.as_str()),
        (503, "Service Unavailable: at_capacity")
    );
    assert!(retry_after.is_some(), "with Retry-After");
    drop(held);
    drop(server);

    // Bounded above the limit by hand: the accept fails, loudly.
    let (server, log) = Server::spawn_limited(600, &["--max-connections", "5000"]);
    server.wait_ready(STEP);
    let waiting: Vec<TcpStream> = (0..700)
        .map_while(|_| TcpStream::connect(server.addr).ok())
        .collect();
    let deadline = std::time::Instant::now() + STEP;
    while !log.lock().unwrap().contains("out of file descriptors") {
        assert!(
            std::time::Instant::now() < deadline,
            "no word of the descriptor limit in the log with {} connections: {}",
            waiting.len(),
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
