//! An AI-agent backend on `websocket-manager`, end to end: strict startup
//! validation, an authenticated WebSocket endpoint into the unified manager,
//! a simulated agent that streams the five critical events, health and
//! manager reports, a demo page, and a graceful shutdown on Ctrl-C.
//!
//! ```text
//! cargo run --example agent_server -- --demo        # then open http://127.0.0.1:3000/
//! cargo run --example agent_server -- --demo --port 0
//! cargo run --example agent_server -- --demo --port 0 --redis redis://127.0.0.1:6379   # one node of a cluster
//! cargo run --example agent_server -- --demo --redis redis+sentinel://127.0.0.1:26379/mymaster --redis-wait-replicas 1   # under Sentinel, durable
//! cargo run --example agent_server -- --demo --redis redis+cluster://127.0.0.1:7000,127.0.0.1:7001   # on a Redis Cluster
//! AGENT_SERVER_JWT_SECRET=... cargo run --example agent_server   # real tokens only
//! ```
//!
//! Routes (bound to 127.0.0.1 only):
//!
//! * `GET /ws?thread=<user>:<name>&resume=<stream>:<sequence>`: the upgrade,
//!   authenticated with a JWT (HS256, audience `agent-server`) from
//!   `Authorization: Bearer` or the `Sec-WebSocket-Protocol` header; no token
//!   -> 401, foreign `Origin` or another user's thread -> 403, malformed
//!   `resume` -> 400. With `resume` (the offset of the last critical event
//!   the client saw) the connection first gets every critical event after it.
//!   The socket speaks the library's wire protocol (`docs/protocol.md`): the
//!   first frame is `hello` (sent once the connection is registered: the
//!   user, the token's expiry, the latest offset, the retention window),
//!   then any `resync` notice and the replay; a `heartbeat` frame fills each
//!   idle ping interval; `{"type":"refresh_token","token":"..."}` with a
//!   fresh token of the same user moves the connection's deadline (4401
//!   `token expired`) without a reconnect.
//!   Send `{"type":"run","prompt":"..."}` to start an agent run.
//!   A user may run `--max-runs-per-user` agents at once (default 4), the
//!   server `--max-runs` (default 64); past either limit the answer is
//!   `{"type":"busy","limit":"user"|"server"}`, so one user cannot take every
//!   slot.
//! * Operator routes, answered only with `Authorization: Bearer <operator
//!   token>` (`--operator-token` or `AGENT_SERVER_OPERATOR_TOKEN`, 16+
//!   bytes); with no operator token configured they answer 404:
//!   * `GET /health/{user}`: that user's connections and counters (JSON).
//!   * `GET /managers`: the startup validation report (JSON).
//!   * `GET /metrics`: the manager's counters and gauges, Prometheus text.
//! * `GET /ready`: `200 ready` while upgrades are admitted; `503` with
//!   `Retry-After` and the reason (`starting`, `reconnecting`, `draining`...)
//!   otherwise. `GET /live`: `200 live` while the event loop runs. Neither
//!   needs the operator token; neither says anything about users.
//! * `POST /demo-token` (`--demo` only): `{"user":"alice"}` -> a 15-minute
//!   token; `{"user":"alice","ttl_seconds":5}` -> a shorter one (1 to 900 s),
//!   to watch the client refresh it in-band.
//! * `GET /`: the demo page, built on the official JavaScript client
//!   (`clients/js`), which it loads from `GET /client.js`.
//!
//! `--drain-delay-ms N` (default 0): on SIGTERM `/ready` turns 503 at
//! once and the sockets are closed with 1001 N ms later, so a balancer
//! that polls `/ready` stops sending clients first.
//!
//! `--ping-interval-ms N` sets how often the server pings (and, when the
//! connection is idle, sends its `heartbeat` frame); 25 s by default.
//!
//! `--max-connections N`: past N connections an upgrade is answered `503`
//! with `Retry-After` (`at_capacity`). By default N is the open-files limit
//! (raised to its hard limit at startup) less 512, so a node at its limit
//! still answers instead of leaving clients unanswered in the kernel's
//! queue; the startup line says which. `--connection-rate N[/BURST]` does
//! the same past N new connections per second (off by default).

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;
use websocket_manager::DynManager;

use std::collections::HashMap;

use axum::extract::{FromRef, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{Value, json};
use websocket_manager::transport::{
    HandlerError, InboundContext, InboundError, InboundMessage, JwtAuthenticator, MessageHandler,
    OriginPolicy, RateLimit, TransportConfig, UserScopedThreads, WebSocketService, encode_hs256,
};
use websocket_manager::{
    NotReady, NotReadyReason,
    managers::{ClusterConfig, ClusterWebSocketManager, ManagerStats, UnifiedWebSocketManager},
};
use websocket_manager::{
    UserId, WebSocketManager,
    events::{AGENT_COMPLETED, AGENT_STARTED, AGENT_THINKING, TOOL_COMPLETED, TOOL_EXECUTING},
    managers::ManagerConfig,
    startup::{StartupOptions, StartupReport, validate_on_startup},
};

/// The event that carries a run's answer, on the user's critical stream.
const FINAL_ANSWER: &str = "final_answer";
/// The audience every token of this server must name.
const AUDIENCE: &str = "agent-server";
/// How long a demo token lives.
const DEMO_TOKEN_TTL: u64 = 15 * 60;
/// Default for `--max-runs`: agent runs in flight at once, server-wide.
const MAX_RUNS: usize = 64;
/// Default for `--max-runs-per-user`: agent runs in flight for one user.
const MAX_RUNS_PER_USER: usize = 4;
/// Descriptors kept for what is not a WebSocket (the upgrades being
/// answered, Redis, the listener, files) when `--max-connections` is not
/// given and the connections are bounded by the open-files limit.
const RESERVED_DESCRIPTORS: usize = 512;

/// The shortest operator token accepted.
const MIN_OPERATOR_TOKEN: usize = 16;
/// Longest prompt accepted.
const MAX_PROMPT: usize = 2_000;
/// How long shutdown waits for connections to close.
const DRAIN: Duration = Duration::from_secs(5);

/// The demo page, served at `/`.
const PAGE: &str = include_str!("agent_server_page.html");
/// The official JavaScript client (an ES module), served at `/client.js`
/// for the demo page: the page has no protocol code of its own.
const CLIENT_JS: &str = include_str!("../clients/js/src/index.js");

#[derive(Clone)]
struct AppState {
    service: WebSocketService,
    /// The startup validation report; empty until it ran (a cluster node
    /// validates once it has joined, see `main`).
    report: Arc<OnceLock<StartupReport>>,
    /// The signing secret, only when `--demo` hands out tokens.
    demo_secret: Option<Arc<Vec<u8>>>,
    /// The typed manager (the service holds it as a `DynManager`),
    /// for `/metrics`.
    manager: TypedManager,
    /// Renders what `websocket_manager::metrics::publish` recorded.
    prometheus: PrometheusHandle,
    /// The operator routes' bearer token; `None` turns those routes off.
    operator_token: Option<Arc<str>>,
}

impl FromRef<AppState> for WebSocketService {
    fn from_ref(state: &AppState) -> Self {
        state.service.clone()
    }
}

/// The manager this process serves with, by type, for its `stats()`.
#[derive(Clone)]
enum TypedManager {
    Unified(Arc<UnifiedWebSocketManager>),
    Cluster(Arc<ClusterWebSocketManager>),
}

impl TypedManager {
    fn stats(&self) -> ManagerStats {
        match self {
            TypedManager::Unified(manager) => manager.stats(),
            TypedManager::Cluster(manager) => manager.stats(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            TypedManager::Unified(_) => "unified",
            TypedManager::Cluster(_) => "cluster",
        }
    }

    fn as_dyn(&self) -> DynManager {
        match self {
            TypedManager::Unified(manager) => DynManager::from(Arc::clone(manager)),
            TypedManager::Cluster(manager) => DynManager::from(Arc::clone(manager)),
        }
    }
}

struct Args {
    demo: bool,
    /// `--redis URL`: serve as one node of a cluster (`redis://HOST:PORT`,
    /// `redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME`, or
    /// `redis+cluster://HOST:PORT[,HOST:PORT...]` for a Redis Cluster).
    redis: Option<String>,
    /// `--redis-wait-replicas N`: the durability setting
    /// (`ClusterConfig::wait_for_replicas`).
    redis_wait_replicas: usize,
    port: u16,
    max_runs: usize,
    max_runs_per_user: usize,
    operator_token: Option<String>,
    /// `--ping-interval-ms N`: the transport's ping (and heartbeat) interval.
    ping_interval: Option<Duration>,
    /// `--drain-delay-ms N`: after SIGTERM, how long `/ready` says 503
    /// before the sockets are closed (time for a balancer to notice).
    drain_delay: Duration,
    /// `--max-connections N`: 503 past N connections (default: the
    /// open-files limit less `RESERVED_DESCRIPTORS`).
    max_connections: Option<usize>,
    /// `--connection-rate N[/BURST]`: new connections per second.
    connection_rate: Option<RateLimit>,
    /// `--inbound-rate N[/BURST]`: messages per second per connection.
    inbound_rate: Option<RateLimit>,
}

const USAGE: &str = "usage: agent_server [--demo] [--port N] [--redis URL] [--redis-wait-replicas N] [--max-runs N] [--max-runs-per-user N] [--operator-token TOKEN] [--ping-interval-ms N] [--drain-delay-ms N] [--max-connections N] [--connection-rate PER_SECOND[/BURST]] [--inbound-rate PER_SECOND[/BURST]]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        demo: false,
        redis: None,
        redis_wait_replicas: 0,
        port: 3000,
        max_runs: MAX_RUNS,
        max_runs_per_user: MAX_RUNS_PER_USER,
        operator_token: std::env::var("AGENT_SERVER_OPERATOR_TOKEN").ok(),
        ping_interval: None,
        drain_delay: Duration::ZERO,
        max_connections: None,
        connection_rate: None,
        inbound_rate: None,
    };
    let mut rest = std::env::args().skip(1);
    while let Some(arg) = rest.next() {
        let mut value = || rest.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--demo" => args.demo = true,
            "--port" => {
                let value = value()?;
                args.port = value
                    .parse()
                    .map_err(|_| format!("--port: `{value}` is not a port number"))?;
            }
            "--max-runs" => args.max_runs = positive(&arg, &value()?)?,
            "--max-runs-per-user" => args.max_runs_per_user = positive(&arg, &value()?)?,
            "--operator-token" => args.operator_token = Some(value()?),
            "--redis" => args.redis = Some(value()?),
            "--redis-wait-replicas" => {
                let value = value()?;
                args.redis_wait_replicas = value
                    .parse()
                    .map_err(|_| format!("--redis-wait-replicas: `{value}` is not a number"))?;
            }
            "--ping-interval-ms" => {
                let ms = positive(&arg, &value()?)?;
                args.ping_interval = Some(Duration::from_millis(ms as u64));
            }
            "--drain-delay-ms" => {
                let value = value()?;
                let ms: u64 = value
                    .parse()
                    .map_err(|_| format!("--drain-delay-ms: `{value}` is not a number"))?;
                args.drain_delay = Duration::from_millis(ms);
            }
            "--max-connections" => args.max_connections = Some(positive(&arg, &value()?)?),
            "--connection-rate" => args.connection_rate = Some(rate(&arg, &value()?)?),
            "--inbound-rate" => args.inbound_rate = Some(rate(&arg, &value()?)?),
            other => return Err(format!("unknown argument `{other}`; {USAGE}")),
        }
    }
    if let Some(token) = &args.operator_token
        && token.len() < MIN_OPERATOR_TOKEN
    {
        return Err(format!(
            "the operator token must be at least {MIN_OPERATOR_TOKEN} bytes (it is {})",
            token.len()
        ));
    }
    Ok(args)
}

fn positive(flag: &str, value: &str) -> Result<usize, String> {
    match value.parse() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag}: `{value}` is not a positive number")),
    }
}

/// `PER_SECOND[/BURST]` (the burst defaults to one second's worth).
fn rate(flag: &str, value: &str) -> Result<RateLimit, String> {
    let (per_second, burst) = value.split_once('/').unwrap_or((value, value));
    let number = |text: &str| {
        text.parse::<u32>()
            .map_err(|_| format!("{flag}: `{value}` is not PER_SECOND[/BURST]"))
    };
    RateLimit::new(number(per_second)?, number(burst)?).map_err(|error| format!("{flag}: {error}"))
}

/// A random u64 from the standard library's randomly seeded hasher; good
/// enough for a demo secret and run ids that live as long as the process.
fn random_u64(salt: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(salt);
    hasher.finish()
}

/// 32 random bytes (see [`random_u64`]).
fn demo_secret() -> Vec<u8> {
    (0..4u64)
        .flat_map(|i| random_u64(i).to_le_bytes())
        .collect()
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };

    // With `--redis`, this process is one node of a cluster: the cluster
    // manager is configured, expected, validated against the real Redis.
    let cluster = match &args.redis {
        Some(url) => match ClusterConfig::builder(url.as_str())
            .key_prefix("agent_server")
            .wait_for_replicas(args.redis_wait_replicas)
            .build()
        {
            Ok(config) => Some(config),
            Err(error) => {
                eprintln!("--redis: {error}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let mut options = StartupOptions::strict().expect(["unified", "isolated"]);
    if let Some(cluster) = &cluster {
        let mut extensions = websocket_manager::startup::Extensions::new();
        extensions.insert(cluster.clone());
        options = options.expect(["cluster"]).extensions(extensions);
    }

    // 1. Strict startup validation: refuse to serve with a broken manager.
    //    Without a cluster nothing outside this process is needed, so it
    //    runs before anything listens. A cluster node validates against
    //    the real Redis, which may not be up yet: it listens at once,
    //    answers `/ready` and upgrades with 503 `starting`, and validates
    //    once it has joined (see `join_then_validate`).
    let report = Arc::new(OnceLock::new());
    if cluster.is_none() {
        match validate_on_startup(&options).await {
            Ok(validated) => {
                println!("{validated}");
                let _ = report.set(validated);
            }
            Err(error) => {
                eprintln!("{}", error.report());
                eprintln!("startup validation failed; not serving");
                return ExitCode::FAILURE;
            }
        }
    }

    // 2. The manager. Built here by its type, not through
    //    `StandardFactory::create_named` (which returns `DynManager`), so
    //    that `/metrics` can read its typed `stats()`.
    let manager_config = ManagerConfig::default();
    let typed = match cluster {
        Some(cluster) => match ClusterWebSocketManager::new(manager_config.clone(), cluster) {
            Ok(manager) => TypedManager::Cluster(Arc::new(manager)),
            Err(error) => {
                eprintln!("cannot build the cluster manager: {error}");
                return ExitCode::FAILURE;
            }
        },
        None => TypedManager::Unified(Arc::new(UnifiedWebSocketManager::new(
            manager_config.clone(),
        ))),
    };
    let manager = typed.as_dyn();

    // Metrics: a Prometheus recorder without its own HTTP listener; the
    // operator route `/metrics` renders it.
    let prometheus = match PrometheusBuilder::new().install_recorder() {
        Ok(handle) => handle,
        Err(error) => {
            eprintln!("cannot install the metrics recorder: {error}");
            return ExitCode::FAILURE;
        }
    };
    websocket_manager::metrics::describe();

    // 3. Authentication: a JWT secret from the environment, or a fresh
    //    random one in demo mode (which then signs the demo tokens).
    let secret = match (std::env::var("AGENT_SERVER_JWT_SECRET"), args.demo) {
        (Ok(secret), _) => secret.into_bytes(),
        (Err(_), true) => demo_secret(),
        (Err(_), false) => {
            eprintln!("set AGENT_SERVER_JWT_SECRET (32+ bytes), or run with --demo");
            return ExitCode::from(2);
        }
    };
    // The library refuses a secret shorter than 32 bytes.
    let authenticator = match JwtAuthenticator::hs256(&secret) {
        Ok(authenticator) => authenticator.audience([AUDIENCE]),
        Err(error) => {
            eprintln!("AGENT_SERVER_JWT_SECRET: {error}");
            return ExitCode::from(2);
        }
    };

    // Every socket is a descriptor: take the hard limit (the soft one is
    // often 1,024), and keep the limit to bound the connections below.
    let descriptor_limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => usize::try_from(limit).ok(),
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise the open-files limit");
            None
        }
    };
    let listener = match tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, args.port)).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("cannot bind 127.0.0.1:{}: {error}", args.port);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener
        .local_addr()
        .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, args.port)));
    let mut transport = TransportConfig::builder().manager_config(&manager_config);
    if let Some(interval) = args.ping_interval {
        transport = transport.ping_interval(interval);
    }
    if let Some(limit) = args.inbound_rate {
        transport = transport.inbound_rate(limit);
    }
    let transport = match transport.build() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let service = WebSocketService::builder(
        manager.clone(),
        // A user may follow only their own threads, `<user>:<name>`.
        UserScopedThreads(authenticator),
    )
    .origins(OriginPolicy::allow([
        format!("http://127.0.0.1:{}", addr.port()),
        format!("http://localhost:{}", addr.port()),
    ]))
    .config(transport)
    .handler(Agent::new(args.max_runs, args.max_runs_per_user));
    // At its descriptor limit a process cannot even accept, and clients
    // wait unanswered in the kernel's queue: unless told otherwise, admit
    // connections only while descriptors remain for answering 503 (and for
    // Redis, the listener, files).
    let max_connections = args.max_connections.or_else(|| {
        descriptor_limit.map(|limit| limit.saturating_sub(RESERVED_DESCRIPTORS).max(1))
    });
    let service = match max_connections {
        Some(max) => service.max_connections(max),
        None => service,
    };
    let service = match args.connection_rate {
        Some(limit) => service.connection_rate(limit),
        None => service,
    };
    let service = service.build();

    let operator_routes = args.operator_token.is_some();
    let state = AppState {
        service: service.clone(),
        report: Arc::clone(&report),
        demo_secret: args.demo.then(|| Arc::new(secret)),
        manager: typed.clone(),
        prometheus,
        operator_token: args.operator_token.map(Arc::from),
    };
    let operator = axum::Router::new()
        .route("/health/{user}", get(health))
        .route("/managers", get(managers))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_operator,
        ));
    let app = axum::Router::new()
        .route("/", get(page))
        .route("/client.js", get(client_js))
        .route("/ws", get(websocket_manager::transport::axum::upgrade))
        .route("/demo-token", post(demo_token))
        .route("/ready", get(ready))
        .route("/live", get(live))
        .merge(operator)
        .with_state(state);

    println!(
        "agent server listening on http://{addr}/ (demo tokens: {}, operator routes: {}, runs: {} per user, {} per server, connections: {})",
        if args.demo { "on" } else { "off" },
        if operator_routes { "on" } else { "off" },
        args.max_runs_per_user,
        args.max_runs,
        max_connections.map_or("no limit".to_owned(), |max| format!("at most {max}")),
    );
    // A cluster node: refuse until joined and validated; a node whose
    // validation fails stops (`startup_failed`), as one without a cluster
    // never starts.
    let (startup_failed, startup_failure) = tokio::sync::oneshot::channel::<()>();
    if let TypedManager::Cluster(manager) = &typed {
        service.hold(NotReady::new(
            NotReadyReason::Starting,
            "waiting for the cluster's Redis, then startup validation",
            Duration::from_secs(1),
        ));
        tokio::spawn(join_then_validate(
            Arc::clone(manager),
            options,
            service.clone(),
            Arc::clone(&report),
            args.redis.clone().unwrap_or_default(),
            startup_failed,
        ));
    }
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drain_delay = args.drain_delay;
    let shutdown = {
        let service = service.clone();
        let failed = Arc::clone(&failed);
        async move {
            tokio::select! {
                () = termination() => {}
                Ok(()) = startup_failure => {
                    failed.store(true, Ordering::SeqCst);
                }
            }
            // `/ready` says 503 first, so a balancer stops sending clients
            // here; then close every socket with 1001, drain, report.
            service.stop_admitting();
            // Connections already open keep being served meanwhile.
            tokio::time::sleep(drain_delay).await;
            let report = service.shutdown(DRAIN).await;
            println!("{report}");
            // A cluster node also leaves the cluster at once.
            if let TypedManager::Cluster(manager) = &typed {
                manager.shutdown().await;
            }
        }
    };
    // TCP_NODELAY and a header-read timeout, which `axum::serve` alone lacks.
    if let Err(error) = websocket_manager::transport::axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        eprintln!("server error: {error}");
        return ExitCode::FAILURE;
    }
    if failed.load(Ordering::SeqCst) {
        eprintln!("startup validation failed; stopped serving");
        return ExitCode::FAILURE;
    }
    println!("bye");
    ExitCode::SUCCESS
}

/// A cluster node's start: waits (for as long as it takes) until the node
/// has joined through Redis, runs the strict startup validation against
/// it, then admits connections. A validation that fails while the node is
/// serving means a broken manager: the server stops. One that fails while
/// the link is down again is retried.
async fn join_then_validate(
    manager: Arc<ClusterWebSocketManager>,
    options: StartupOptions,
    service: WebSocketService,
    report: Arc<OnceLock<StartupReport>>,
    redis: String,
    failed: tokio::sync::oneshot::Sender<()>,
) {
    loop {
        while let Err(error) = manager.ready().await {
            tracing::warn!(%error, redis, "not joined to the cluster yet; /ready answers 503 starting");
        }
        match validate_on_startup(&options).await {
            Ok(validated) => {
                println!("{validated}");
                let _ = report.set(validated);
                break;
            }
            Err(error) if manager.link_state().is_serving() => {
                eprintln!("{}", error.report());
                let _ = failed.send(());
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "startup validation could not reach Redis; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    println!("cluster node {} joined through {redis}", manager.node_id());
    service.release();
}

/// Ctrl-C or SIGTERM (what an orchestrator sends).
async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                return;
            }
            Err(error) => tracing::error!(%error, "cannot listen for SIGTERM"),
        }
    }
    if let Err(error) = tokio::signal::ctrl_c().await {
        tracing::error!(%error, "cannot listen for Ctrl-C; shutting down");
    }
}

/// For a load balancer or a readiness probe: whether upgrades are admitted.
async fn ready(State(state): State<AppState>) -> Response {
    match state.service.readiness() {
        websocket_manager::Readiness::Ready => (StatusCode::OK, "ready").into_response(),
        websocket_manager::Readiness::NotReady(not_ready) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(
                header::RETRY_AFTER,
                not_ready.jittered_retry_after_secs().to_string(),
            )],
            format!("not ready: {}", not_ready.reason),
        )
            .into_response(),
    }
}

/// For a liveness probe: answered as long as the event loop runs.
async fn live() -> &'static str {
    "live"
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn client_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        CLIENT_JS,
    )
}

/// Lets a request through to an operator route only with the operator
/// token as its bearer token; without a configured token the routes do not
/// exist (404), so a default deployment reveals nothing.
async fn require_operator(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = &state.operator_token else {
        return (
            StatusCode::NOT_FOUND,
            "operator routes are off; start with --operator-token or AGENT_SERVER_OPERATOR_TOKEN",
        )
            .into_response();
    };
    // The scheme is case-insensitive: `bearer` and `BEARER` too (RFC 7235, 2.1).
    let presented = websocket_manager::transport::bearer_token(request.headers());
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => {
            next.run(request).await
        }
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "operator token required",
        )
            .into_response(),
    }
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Prometheus text: a fresh snapshot of the manager's stats, published
/// into the recorder and rendered.
async fn metrics(State(state): State<AppState>) -> Response {
    let labels = [websocket_manager::metrics::Label::new(
        "manager",
        state.manager.name(),
    )];
    websocket_manager::metrics::publish(&state.manager.stats(), &labels);
    websocket_manager::metrics::publish_transport(&state.service.stats(), &labels);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.prometheus.render(),
    )
        .into_response()
}

async fn health(State(state): State<AppState>, Path(user): Path<String>) -> Response {
    match UserId::new(&user) {
        Ok(user) => Json(state.service.manager().get_connection_health(&user)).into_response(),
        Err(error) => (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    }
}

async fn managers(State(state): State<AppState>) -> Response {
    match state.report.get() {
        Some(report) => Json(report.clone()).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "startup validation has not run yet (the node is waiting for the cluster's Redis)",
        )
            .into_response(),
    }
}

async fn demo_token(State(state): State<AppState>, body: Option<Json<Value>>) -> Response {
    let Some(secret) = state.demo_secret else {
        return (
            StatusCode::NOT_FOUND,
            "demo tokens are off; start with --demo",
        )
            .into_response();
    };
    let requested = body
        .as_ref()
        .and_then(|Json(body)| body.get("user"))
        .and_then(Value::as_str)
        .unwrap_or("demo-user");
    let user = match UserId::new(requested) {
        Ok(user) => user,
        Err(error) => return (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    };
    // A shorter lifetime on request, to watch a client refresh its token.
    let ttl = match body.as_ref().and_then(|Json(body)| body.get("ttl_seconds")) {
        None => DEMO_TOKEN_TTL,
        Some(ttl) => match ttl.as_u64() {
            Some(ttl @ 1..=DEMO_TOKEN_TTL) => ttl,
            _ => {
                let message = format!("ttl_seconds must be 1 to {DEMO_TOKEN_TTL}, not {ttl}");
                return (StatusCode::BAD_REQUEST, message).into_response();
            }
        },
    };
    let claims = json!({
        "sub": user.as_str(),
        "aud": AUDIENCE,
        "exp": unix_now() + ttl,
    });
    let token = encode_hs256(&claims, &secret);
    Json(json!({"token": token, "user": user, "expires_in": ttl})).into_response()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The simulated agent: `{"type":"run","prompt":...}` starts a run.
struct Agent {
    slots: Arc<RunSlots>,
    /// Random per process, so run ids of two server lifetimes differ too.
    run_id_prefix: u64,
    next_run: AtomicU64,
}

impl Agent {
    fn new(max_runs: usize, max_runs_per_user: usize) -> Self {
        Agent {
            slots: Arc::new(RunSlots {
                max_runs,
                max_runs_per_user,
                in_flight: Mutex::new(RunsInFlight::default()),
            }),
            run_id_prefix: random_u64(u64::from(std::process::id())),
            next_run: AtomicU64::new(1),
        }
    }

    /// A run id unique within the process (a counter) and across restarts
    /// (a random prefix), unlike a timestamp.
    fn next_run_id(&self) -> String {
        let n = self.next_run.fetch_add(1, Ordering::Relaxed);
        format!("run-{:08x}-{n}", self.run_id_prefix as u32)
    }
}

/// Which limit refused a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunLimit {
    User,
    Server,
}

/// Agent runs in flight, per user and in total, each bounded.
struct RunSlots {
    max_runs: usize,
    max_runs_per_user: usize,
    in_flight: Mutex<RunsInFlight>,
}

#[derive(Default)]
struct RunsInFlight {
    total: usize,
    /// Only users with a run in flight (entries are removed at 0).
    per_user: HashMap<UserId, usize>,
}

impl RunSlots {
    /// Takes a slot for `user`, or says which limit is reached. The slot is
    /// given back when the returned guard drops, even if the run panics.
    fn acquire(self: &Arc<Self>, user: &UserId) -> Result<RunSlot, RunLimit> {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mine = in_flight.per_user.get(user).copied().unwrap_or(0);
        if mine >= self.max_runs_per_user {
            return Err(RunLimit::User);
        }
        if in_flight.total >= self.max_runs {
            return Err(RunLimit::Server);
        }
        in_flight.total += 1;
        in_flight.per_user.insert(user.clone(), mine + 1);
        Ok(RunSlot {
            slots: Arc::clone(self),
            user: user.clone(),
        })
    }
}

struct RunSlot {
    slots: Arc<RunSlots>,
    user: UserId,
}

impl Drop for RunSlot {
    fn drop(&mut self) {
        let mut in_flight = self
            .slots
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        in_flight.total -= 1;
        if let Some(mine) = in_flight.per_user.get_mut(&self.user) {
            *mine -= 1;
            if *mine == 0 {
                in_flight.per_user.remove(&self.user);
            }
        }
    }
}

#[websocket_manager::transport::async_trait]
impl MessageHandler for Agent {
    async fn on_message(
        &self,
        context: InboundContext,
        message: InboundMessage,
    ) -> Result<(), HandlerError> {
        // Errors of this type reach the client as an error frame.
        let request: Value = message.json()?;
        if request["type"] != "run" {
            let detail = format!("unknown message type {}", request["type"]);
            return Err(InboundError::new(InboundError::UNKNOWN_TYPE, detail).into());
        }
        let prompt = request["prompt"].as_str().unwrap_or_default();
        let prompt: String = prompt.chars().take(MAX_PROMPT).collect();
        let slot = match self.slots.acquire(context.user_id()) {
            Ok(slot) => slot,
            Err(limit) => {
                let limit = match limit {
                    RunLimit::User => "user",
                    RunLimit::Server => "server",
                };
                context
                    .socket()
                    .try_send(websocket_manager::socket::TextFrame::from_json(
                        &json!({"type": "busy", "limit": limit}),
                    )?)?;
                return Ok(());
            }
        };
        let run_id = self.next_run_id();
        // The run outlives this message: spawn it, so this connection keeps
        // reading (and answering pings) meanwhile. The slot is held until
        // the run ends.
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(error) = run_agent(&context, &run_id, &prompt).await {
                tracing::warn!(user = %context.user_id(), %error, "agent run failed");
            }
        });
        Ok(())
    }
}

/// One agent run: the five critical events through `emit_critical_event`,
/// then the final answer the same way, since it is what the user waits for:
/// all six are retained and replayed to a client that resumes from its last
/// offset, whatever happened to its connection meanwhile.
async fn run_agent(
    context: &InboundContext,
    run_id: &str,
    prompt: &str,
) -> Result<(), HandlerError> {
    let manager = context.manager();
    let user = context.user_id();
    let pause = |ms| tokio::time::sleep(Duration::from_millis(ms));
    manager
        .emit_critical_event(
            user,
            AGENT_STARTED,
            json!({"run_id": run_id, "prompt": prompt}),
        )
        .await?;
    pause(500).await;
    manager
        .emit_critical_event(user, AGENT_THINKING, json!({"run_id": run_id, "thought": "Splitting the question: place, then current conditions."}))
        .await?;
    pause(900).await;
    manager
        .emit_critical_event(
            user,
            TOOL_EXECUTING,
            json!({"run_id": run_id, "tool": "weather_lookup", "input": {"query": prompt}}),
        )
        .await?;
    pause(1_500).await;
    manager
        .emit_critical_event(user, TOOL_COMPLETED, json!({"run_id": run_id, "tool": "weather_lookup", "output": {"summary": "21 °C, light wind, clear sky"}}))
        .await?;
    pause(700).await;
    manager
        .emit_critical_event(user, AGENT_COMPLETED, json!({"run_id": run_id, "steps": 5}))
        .await?;
    let answer = json!({
        "run_id": run_id,
        "thread": context.thread_id(),
        "text": format!("About \"{prompt}\": it is 21 °C with a light wind and a clear sky."),
    });
    manager
        .emit_critical_event(user, FINAL_ANSWER, answer)
        .await?;
    Ok(())
}
