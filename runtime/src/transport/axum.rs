//! The axum adapter (feature `axum`, axum 0.8): [`upgrade`], a ready handler
//! for `GET /ws`, [`accept`] to call from your own handler, and
//! [`AxumSocket`], `axum::extract::ws::WebSocket` as a [`WireSocket`](super::WireSocket).
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

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

use super::auth::UpgradeRequest;
use super::config::DEFAULT_HEADER_READ_TIMEOUT;
use super::service::WebSocketService;
use super::wire::{WireError, WireMessage, close_reason_text};
use crate::connection::CloseReason;
use crate::connection::TextFrame;

/// The ready `GET /ws` handler: authenticates the upgrade request with the
/// service's authenticator and Origin policy (401 / 403 / 400 / 503, no
/// socket), then upgrades with the service's size limits and serves the
/// socket. The thread comes from the `thread` query parameter.
pub async fn upgrade(
    State(service): State<WebSocketService>,
    websocket: WebSocketUpgrade,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    accept(&service, websocket, &uri, &headers).await
}

/// What [`upgrade`] does, for a handler of your own.
pub async fn accept(
    service: &WebSocketService,
    websocket: WebSocketUpgrade,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response {
    let request = UpgradeRequest::new(uri, headers);
    let admission = match service.admit(&request).await {
        Ok(admission) => admission,
        Err(error) => return (error.status(), error.public_message().into_owned()).into_response(),
    };
    let config = service.config();
    let mut websocket = websocket
        .read_buffer_size(config.read_buffer_size())
        .write_buffer_size(config.write_buffer_size())
        .max_message_size(config.max_message_size())
        .max_frame_size(config.max_frame_size());
    if let Some(protocol) = admission.identity.subprotocol.clone() {
        // Selected only if the client offered it.
        websocket = websocket.protocols([protocol]);
    }
    let service = service.clone();
    websocket.on_upgrade(move |socket| async move {
        service.serve(AxumSocket::new(socket), admission).await;
    })
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
        let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
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

/// `axum::extract::ws::WebSocket` as a [`WireSocket`](super::WireSocket).
#[derive(Debug)]
pub struct AxumSocket(WebSocket);

impl AxumSocket {
    /// Wraps an upgraded socket.
    pub fn new(socket: WebSocket) -> Self {
        AxumSocket(socket)
    }
}

fn wire_error(error: axum::Error) -> WireError {
    let inner = error.into_inner();
    match inner.downcast::<tungstenite::Error>() {
        Ok(error) => super::wire::from_tungstenite_error(*error),
        Err(other) => WireError::Other(other),
    }
}

fn to_wire(message: Message) -> Result<WireMessage, WireError> {
    Ok(match message {
        Message::Text(text) => WireMessage::Text(
            TextFrame::try_from(Bytes::from(text)).map_err(|e| WireError::Other(Box::new(e)))?,
        ),
        Message::Binary(bytes) => WireMessage::Binary(bytes),
        Message::Ping(bytes) => WireMessage::Ping(bytes),
        Message::Pong(bytes) => WireMessage::Pong(bytes),
        Message::Close(frame) => WireMessage::Close(
            frame.map(|f| CloseReason::new(f.code, f.reason.as_str().to_owned())),
        ),
    })
}

fn from_wire(message: WireMessage) -> Result<Message, WireError> {
    Ok(match message {
        WireMessage::Text(text) => Message::Text(
            text.into_bytes()
                .try_into()
                .map_err(|e| WireError::Other(Box::new(e)))?,
        ),
        WireMessage::Binary(bytes) => Message::Binary(bytes),
        WireMessage::Ping(bytes) => Message::Ping(bytes),
        WireMessage::Pong(bytes) => Message::Pong(bytes),
        WireMessage::Close(reason) => Message::Close(reason.map(|r| CloseFrame {
            code: r.code,
            reason: close_reason_text(&r.reason).into(),
        })),
    })
}

impl Stream for AxumSocket {
    type Item = Result<WireMessage, WireError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0)
            .poll_next(cx)
            .map(|item| item.map(|result| result.map_err(wire_error).and_then(to_wire)))
    }
}

impl Sink<WireMessage> for AxumSocket {
    type Error = WireError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WireError>> {
        Pin::new(&mut self.0).poll_ready(cx).map_err(wire_error)
    }

    fn start_send(mut self: Pin<&mut Self>, item: WireMessage) -> Result<(), WireError> {
        Pin::new(&mut self.0)
            .start_send(from_wire(item)?)
            .map_err(wire_error)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WireError>> {
        Pin::new(&mut self.0).poll_flush(cx).map_err(wire_error)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WireError>> {
        Pin::new(&mut self.0).poll_close(cx).map_err(wire_error)
    }
}
