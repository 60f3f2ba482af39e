//! An AI-agent backend on `websocket-manager`, end to end: strict startup
//! validation, an authenticated WebSocket endpoint into the unified manager,
//! a simulated agent that streams the five critical events, health and
//! manager reports, a demo page, and a graceful shutdown on Ctrl-C.
//!
//! ```text
//! cargo run --example agent_server -- --demo        # then open http://127.0.0.1:3000/
//! cargo run --example agent_server -- --demo --port 0
//! AGENT_SERVER_JWT_SECRET=... cargo run --example agent_server   # real tokens only
//! ```
//!
//! Routes (bound to 127.0.0.1 only):
//!
//! * `GET /ws?thread=<user>:<name>`: the upgrade, authenticated with a JWT
//!   (HS256, audience `agent-server`) from `Authorization: Bearer` or the
//!   `Sec-WebSocket-Protocol` header; no token -> 401, foreign `Origin` or
//!   another user's thread -> 403.
//!   Send `{"type":"run","prompt":"..."}` to start an agent run.
//! * `GET /health/{user}`: that user's connections and counters (JSON).
//! * `GET /managers`: the startup validation report (JSON).
//!
//!   Both are operator routes, unauthenticated here only because the server
//!   binds 127.0.0.1; in production put them behind your admin auth.
//! * `POST /demo-token` (`--demo` only): `{"user":"alice"}` -> a 15-minute token.
//! * `GET /`: the demo page.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{FromRef, Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::{get, post};
use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
use serde_json::{Value, json};
use websocket_manager::transport::{
    HandlerError, InboundContext, InboundError, InboundMessage, JwtAuthenticator, MessageHandler,
    OriginPolicy, TransportConfig, UserScopedThreads, WebSocketService,
};
use websocket_manager::{
    AGENT_COMPLETED, AGENT_STARTED, AGENT_THINKING, ManagerConfig, StandardFactory, StartupOptions,
    StartupReport, TOOL_COMPLETED, TOOL_EXECUTING, UserId, validate_on_startup,
};

/// The audience every token of this server must name.
const AUDIENCE: &str = "agent-server";
/// How long a demo token lives.
const DEMO_TOKEN_TTL: u64 = 15 * 60;
/// Agent runs in flight at once, server-wide; more are refused.
const MAX_RUNS: usize = 64;
/// Longest prompt accepted.
const MAX_PROMPT: usize = 2_000;
/// How long shutdown waits for connections to close.
const DRAIN: Duration = Duration::from_secs(5);

/// The demo page, served at `/`.
const PAGE: &str = include_str!("agent_server_page.html");

#[derive(Clone)]
struct AppState {
    service: WebSocketService,
    report: Arc<StartupReport>,
    /// The signing secret, only when `--demo` hands out tokens.
    demo_secret: Option<Arc<Vec<u8>>>,
}

impl FromRef<AppState> for WebSocketService {
    fn from_ref(state: &AppState) -> Self {
        state.service.clone()
    }
}

struct Args {
    demo: bool,
    port: u16,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        demo: false,
        port: 3000,
    };
    let mut rest = std::env::args().skip(1);
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--demo" => args.demo = true,
            "--port" => {
                let value = rest.next().ok_or("--port needs a value")?;
                args.port = value
                    .parse()
                    .map_err(|_| format!("--port: `{value}` is not a port number"))?;
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}`; usage: agent_server [--demo] [--port N]"
                ));
            }
        }
    }
    Ok(args)
}

/// 32 random bytes from the standard library's randomly seeded hasher; good
/// enough for a demo secret that lives as long as the process.
fn demo_secret() -> Vec<u8> {
    use std::hash::{BuildHasher, Hasher};
    (0..4u64)
        .flat_map(|i| {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u64(i);
            hasher.finish().to_le_bytes()
        })
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

    // 1. Strict startup validation: refuse to serve with a broken manager.
    let report = match validate_on_startup(
        &StartupOptions::strict().expect(["unified", "isolated"]),
    )
    .await
    {
        Ok(report) => report,
        Err(error) => {
            eprint!("{}", error.report());
            eprintln!("startup validation failed; not serving");
            return ExitCode::FAILURE;
        }
    };
    print!("{report}");

    // 2. The unified manager, from the factory that validated it.
    let manager_config = ManagerConfig::default();
    let factory = StandardFactory::builder()
        .config(manager_config.clone())
        .build();
    let manager = match factory.create_named("unified", None) {
        Ok(manager) => manager,
        Err(error) => {
            eprintln!("could not build the unified manager: {error}");
            return ExitCode::FAILURE;
        }
    };

    // 3. Authentication: a JWT secret from the environment, or a fresh
    //    random one in demo mode (which then signs the demo tokens).
    let secret = match (std::env::var("AGENT_SERVER_JWT_SECRET"), args.demo) {
        (Ok(secret), _) if secret.len() >= 32 => secret.into_bytes(),
        (Ok(_), _) => {
            eprintln!("AGENT_SERVER_JWT_SECRET must be at least 32 bytes");
            return ExitCode::from(2);
        }
        (Err(_), true) => demo_secret(),
        (Err(_), false) => {
            eprintln!("set AGENT_SERVER_JWT_SECRET (32+ bytes), or run with --demo");
            return ExitCode::from(2);
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
    let transport = match TransportConfig::builder()
        .manager_config(&manager_config)
        .build()
    {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let service = WebSocketService::builder(
        Arc::clone(&manager),
        // A user may follow only their own threads, `<user>:<name>`.
        UserScopedThreads(JwtAuthenticator::hs256(&secret).audience([AUDIENCE])),
    )
    .origins(OriginPolicy::allow([
        format!("http://127.0.0.1:{}", addr.port()),
        format!("http://localhost:{}", addr.port()),
    ]))
    .config(transport)
    .handler(Agent::default())
    .build();

    let state = AppState {
        service: service.clone(),
        report: Arc::new(report),
        demo_secret: args.demo.then(|| Arc::new(secret)),
    };
    let app = axum::Router::new()
        .route("/", get(page))
        .route("/ws", get(websocket_manager::transport::axum::upgrade))
        .route("/health/{user}", get(health))
        .route("/managers", get(managers))
        .route("/demo-token", post(demo_token))
        .with_state(state);

    println!(
        "agent server listening on http://{addr}/ (demo tokens: {})",
        if args.demo { "on" } else { "off" }
    );
    let shutdown = {
        let service = service.clone();
        async move {
            if let Err(error) = tokio::signal::ctrl_c().await {
                tracing::error!(%error, "cannot listen for Ctrl-C; shutting down");
            }
            // Stop upgrades, close every socket with 1001, drain, report.
            let report = service.shutdown(DRAIN).await;
            print!("{report}");
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
    println!("bye");
    ExitCode::SUCCESS
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn health(State(state): State<AppState>, Path(user): Path<String>) -> Response {
    match UserId::new(&user) {
        Ok(user) => Json(state.service.manager().get_connection_health(&user)).into_response(),
        Err(error) => (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    }
}

async fn managers(State(state): State<AppState>) -> Json<StartupReport> {
    Json(StartupReport::clone(&state.report))
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
    let claims = json!({
        "sub": user.as_str(),
        "aud": AUDIENCE,
        "exp": get_current_timestamp() + DEMO_TOKEN_TTL,
    });
    match encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(&secret),
    ) {
        Ok(token) => Json(json!({"token": token, "user": user, "expires_in": DEMO_TOKEN_TTL}))
            .into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// The simulated agent: `{"type":"run","prompt":...}` starts a run.
#[derive(Default)]
struct Agent {
    runs_in_flight: Arc<AtomicUsize>,
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
        if self.runs_in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_RUNS {
            self.runs_in_flight.fetch_sub(1, Ordering::AcqRel);
            context
                .socket
                .try_send(websocket_manager::TextFrame::from_json(
                    &json!({"type": "busy"}),
                )?)?;
            return Ok(());
        }
        // The run outlives this message: spawn it, so this connection keeps
        // reading (and answering pings) meanwhile.
        let runs = Arc::clone(&self.runs_in_flight);
        tokio::spawn(async move {
            if let Err(error) = run_agent(&context, &prompt).await {
                tracing::warn!(user = %context.user_id, %error, "agent run failed");
            }
            runs.fetch_sub(1, Ordering::AcqRel);
        });
        Ok(())
    }
}

/// One agent run: the five critical events through `emit_critical_event`
/// (kept and replayed if the user is offline), then the answer to the thread.
async fn run_agent(context: &InboundContext, prompt: &str) -> Result<(), HandlerError> {
    let manager = &context.manager;
    let user = &context.user_id;
    let run_id = format!("run-{}", get_current_timestamp());
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
        "type": "final_answer",
        "run_id": run_id,
        "text": format!("About \"{prompt}\": it is 21 °C with a light wind and a clear sky."),
    });
    let delivery = match &context.thread_id {
        Some(thread) => manager.send_to_thread(thread, answer).await,
        None => manager.send_to_user(user, answer).await,
    };
    if let Err(error) = delivery {
        // Not a critical event: a user who left misses the answer, and the
        // log says so.
        tracing::info!(user = %user, %error, "final answer not delivered");
    }
    Ok(())
}
