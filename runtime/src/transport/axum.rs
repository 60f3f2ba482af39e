//! The axum adapter (feature `axum`, axum 0.8): [`upgrade`], a ready handler
//! for `GET /ws`, and [`accept`] with its extractor [`WebSocketUpgrade`] to
//! call from your own handler. The application's ordinary routes take
//! [`Authenticated`] as an extractor: the same identity and thread policy
//! as `/ws`, and an [`AuthError`] as the rejection (it is a response: its
//! status, its public message, and `WWW-Authenticate: Bearer` on a 401).
//!
//! ```
//! use axum::{Router, routing::get};
//! # fn app(service: websocket_manager::transport::WebSocketService) -> Router {
//! Router::new()
//!     .route("/ws", get(websocket_manager::transport::axum::upgrade))
//!     .with_state(service) // a WebSocketService, or a state it can be taken from (FromRef)
//! # }
//! ```
//!
//! Serve the router with [`serve`] (or `axum::serve` over a
//! [`WebSocketListener`]) rather than `axum::serve` over a bare
//! `TcpListener`: it turns Nagle's algorithm off on every accepted socket
//! (`TCP_NODELAY`; with it on, small frames wait for the peer's delayed ACK,
//! up to 40 ms on Linux) and drops a connection whose request is not
//! answered within the header-read timeout (axum sets none, so stalled
//! partial upgrades would pile up).
//!
//! ```no_run
//! # async fn run(app: axum::Router) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! websocket_manager::transport::axum::serve(listener, app).await
//! # }
//! ```
//!
//! The socket is tokio-tungstenite's, run on hyper's upgraded connection,
//! as axum's own `WebSocket` is, but without axum's message type in between:
//! axum's text message can only be built from shared bytes by checking
//! them for UTF-8 again, once per recipient socket, and a frame the manager
//! serialized is UTF-8 already. Both adapters serve sockets through the same
//! code.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRef, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::Role;

use super::auth::{AuthError, Authenticated, UpgradeRequest};
use super::config::DEFAULT_HEADER_READ_TIMEOUT;
use super::handshake::{accept_headers, check_upgrade, websocket_config};
use super::service::{WebSocketService, unboxed};
use super::tungstenite_socket::TungsteniteSocket;

/// The ready `GET /ws` handler: authenticates the upgrade request with the
/// service's authenticator and Origin policy (401 / 403 / 400, or 503 with
/// `Retry-After` when the service is not [ready](WebSocketService::readiness);
/// no socket), then upgrades with the service's size limits and serves the
/// socket. The thread comes from the `thread` query parameter.
// The state is named rather than destructured in the signature: rustdoc
// shows a pattern argument as `__arg0`.
pub async fn upgrade(service: State<WebSocketService>, upgrade: WebSocketUpgrade) -> Response {
    accept(&service.0, upgrade).await
}

/// What [`upgrade`] does, for a handler of your own: admits the request
/// through the service, answers `101 Switching Protocols` and serves the
/// socket on its own task once the connection is upgraded.
///
/// ```
/// use axum::extract::State;
/// use axum::response::Response;
/// use websocket_manager::transport::WebSocketService;
/// use websocket_manager::transport::axum::{WebSocketUpgrade, accept};
///
/// async fn agent_socket(State(service): State<WebSocketService>, upgrade: WebSocketUpgrade) -> Response {
///     tracing::debug!(path = upgrade.uri().path(), "websocket upgrade");
///     accept(&service, upgrade).await
/// }
/// # let _ = axum::Router::<WebSocketService>::new().route("/ws", axum::routing::get(agent_socket));
/// ```
pub async fn accept(service: &WebSocketService, upgrade: WebSocketUpgrade) -> Response {
    let WebSocketUpgrade {
        uri,
        headers,
        on_upgrade,
    } = upgrade;
    let request = UpgradeRequest::new(&uri, &headers);
    let admission = match service.admit(&request).await {
        Ok(admission) => admission,
        Err(error) => return error.into_response(),
    };
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "upgrade");
    for (name, value) in accept_headers(&request, &admission) {
        response = response.header(name, value);
    }
    let response = match response.body(Body::empty()) {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(%error, "could not build the 101 response");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    // The request (its token among the headers) is not kept for the
    // connection's whole life.
    drop((uri, headers));
    let service = service.clone();
    // This task serves the connection for its whole life, and what its
    // future captures keeps its room all along: the admission is boxed
    // (freed when `serve` takes it), the tungstenite config made inside,
    // in a block of its own.
    let admission = Box::new(admission);
    tokio::spawn(async move {
        let socket = {
            // Resolves once hyper has written the `101`.
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(error) => {
                    tracing::debug!(%error, user = %admission.identity.user_id,
                        "the connection was not upgraded");
                    return;
                }
            };
            let config = websocket_config(service.config());
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await
        };
        service
            .serve(TungsteniteSocket::new(socket), unboxed(admission))
            .await;
    });
    response
}

/// A WebSocket upgrade request (HTTP/1.1, RFC 6455), as an axum extractor
/// (`FromRequestParts`, so it goes with any state): the checked request and
/// hyper's handle on the connection, which [`accept`] answers and serves.
///
/// A request that is not an upgrade is refused with an [`UpgradeRejection`]
/// saying what is missing, before any authentication.
#[derive(Debug)]
pub struct WebSocketUpgrade {
    uri: Uri,
    headers: HeaderMap,
    on_upgrade: OnUpgrade,
}

impl WebSocketUpgrade {
    /// The request target (path and query).
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The request headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = UpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        check_upgrade(parts.version, &parts.method, &parts.headers)
            .map_err(UpgradeRejection::NotWebSocket)?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(UpgradeRejection::NotUpgradable)?;
        Ok(WebSocketUpgrade {
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
            on_upgrade,
        })
    }
}

/// Why a request is not a WebSocket upgrade [`accept`] can serve; as a
/// response, its status and a plain-text body saying why.
///
/// ```
/// use axum::response::IntoResponse;
/// use websocket_manager::transport::axum::UpgradeRejection;
/// let response = UpgradeRejection::NotWebSocket("missing `Upgrade: websocket`").into_response();
/// assert_eq!(response.status(), 400);
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeRejection {
    /// Not a WebSocket upgrade request over HTTP/1.1 (400): the problem.
    #[error("Bad Request: {0}")]
    NotWebSocket(&'static str),
    /// The request carries no upgrade handle (426): the router is not
    /// served by hyper (`axum::serve`, [`serve`]), or something took it.
    #[error("this connection cannot be upgraded")]
    NotUpgradable,
}

impl UpgradeRejection {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            UpgradeRejection::NotWebSocket(_) => StatusCode::BAD_REQUEST,
            UpgradeRejection::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
        }
    }
}

impl IntoResponse for UpgradeRejection {
    fn into_response(self) -> Response {
        (self.status(), self.to_string()).into_response()
    }
}

/// The identity of an ordinary request of the application, checked as the
/// WebSocket upgrade is, by
/// [`WebSocketService::authenticate_http`] (the service is taken from the
/// router's state, like [`upgrade`] does): a handler that takes it runs
/// only for an authenticated user, and for a thread (the `thread` query
/// parameter) that user may follow. Otherwise the [`AuthError`] is the
/// response (401 with `WWW-Authenticate: Bearer`, 403, 400).
///
/// ```
/// use axum::{Router, routing::post};
/// use websocket_manager::transport::{Authenticated, AuthError, WebSocketService};
///
/// /// `POST /messages?thread=<user>:<name>`: a message from the user into a thread.
/// async fn post_message(who: Authenticated, body: String) -> Result<String, AuthError> {
///     let thread = who.thread_id.ok_or(AuthError::BadRequest("`thread` is required".into()))?;
///     Ok(format!("{} posted {} bytes to {thread}", who.identity.user_id, body.len()))
/// }
/// # fn app(service: WebSocketService) -> Router {
/// Router::new()
///     .route("/ws", axum::routing::get(websocket_manager::transport::axum::upgrade))
///     .route("/messages", post(post_message))
///     .with_state(service) // or a state the service can be taken from (FromRef)
/// # }
/// ```
impl<S> FromRequestParts<S> for Authenticated
where
    WebSocketService: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let service = WebSocketService::from_ref(state);
        service
            .authenticate_http(&UpgradeRequest::from(&*parts))
            .await
    }
}

/// A refusal as a response: [`AuthError::status`] and
/// [`AuthError::public_message`] as plain text (never the verification
/// detail, which the service logs), with `WWW-Authenticate: Bearer` on a
/// 401 (RFC 7235, 3.1).
///
/// ```
/// use axum::response::IntoResponse;
/// use websocket_manager::transport::AuthError;
/// let response = AuthError::Unauthorized("bad signature".into()).into_response();
/// assert_eq!(response.status(), 401);
/// assert_eq!(response.headers()["www-authenticate"], "Bearer");
/// ```
impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, self.public_message().into_owned()).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        // 503 (not ready, draining): when to come back, jittered per client.
        if let Some(secs) = self.retry_after_header() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// `axum::serve` over a [`WebSocketListener`] with the default
/// header-read timeout ([`DEFAULT_HEADER_READ_TIMEOUT`], 10 s) and
/// `TCP_NODELAY` on every accepted socket. The result is axum's `Serve`:
/// `.with_graceful_shutdown(...)` works as usual.
///
/// ```no_run
/// # async fn run(app: axum::Router, service: websocket_manager::transport::WebSocketService) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// websocket_manager::transport::axum::serve(listener, app)
///     .with_graceful_shutdown(async move {
///         let _ = tokio::signal::ctrl_c().await;
///         service.shutdown(std::time::Duration::from_secs(5)).await;
///     })
///     .await
/// # }
/// ```
pub fn serve(
    listener: TcpListener,
    router: axum::Router,
) -> axum::serve::Serve<WebSocketListener, axum::Router, axum::Router> {
    axum::serve(WebSocketListener::new(listener), router)
}

/// A `TcpListener` for `axum::serve` that sets `TCP_NODELAY` on each
/// accepted socket and drops a connection whose request is not answered
/// within [`header_read_timeout`](Self::header_read_timeout): the clock runs
/// from the accept to the first byte the server writes (for an upgrade, the
/// `101`), so a client that sends its head slowly, or not at all, is
/// dropped. Take the timeout from the service's
/// [`TransportConfig::header_read_timeout`](super::TransportConfig::header_read_timeout).
///
/// ```no_run
/// # async fn run(app: axum::Router, service: websocket_manager::transport::WebSocketService) -> std::io::Result<()> {
/// use websocket_manager::transport::axum::WebSocketListener;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// let listener = WebSocketListener::new(listener)
///     .header_read_timeout(service.config().header_read_timeout());
/// axum::serve(listener, app).await
/// # }
/// ```
#[derive(Debug)]
pub struct WebSocketListener {
    listener: TcpListener,
    header_read_timeout: Duration,
}

impl WebSocketListener {
    /// Wraps a bound listener, with the default header-read timeout.
    pub fn new(listener: TcpListener) -> Self {
        WebSocketListener {
            listener,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        }
    }

    /// Time from the accept to the server's first response byte.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }
}

impl axum::serve::Listener for WebSocketListener {
    type Io = HeadDeadlineStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's own loop for a `TcpListener` retries silently (it logs only
        // with its `tracing` feature): ours says why clients wait.
        let (stream, addr) = loop {
            match self.listener.accept().await {
                Ok(accepted) => break accepted,
                Err(error) => super::accept::accept_failed(&error).await,
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, %addr, "could not set TCP_NODELAY");
        }
        let deadline = Box::pin(tokio::time::sleep(self.header_read_timeout));
        (
            HeadDeadlineStream {
                stream,
                deadline: Some(deadline),
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// An accepted `TcpStream` whose reads fail with `TimedOut` once the
/// header-read deadline passed, until the server's first write disarms it.
#[derive(Debug)]
pub struct HeadDeadlineStream {
    stream: TcpStream,
    /// `None` once the server answered.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl HeadDeadlineStream {
    /// The TCP stream.
    pub fn get_ref(&self) -> &TcpStream {
        &self.stream
    }

    fn disarm_after(&mut self, written: &Poll<io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
            self.deadline = None;
        }
    }
}

impl AsyncRead for HeadDeadlineStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(deadline) = &mut self.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the request was not complete within the header-read timeout",
            )));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for HeadDeadlineStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.disarm_after(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.disarm_after(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
