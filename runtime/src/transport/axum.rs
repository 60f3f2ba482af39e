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

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{Sink, Stream};

use super::auth::UpgradeRequest;
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
