//! [`MessageHandler`]: where inbound application messages go.

use std::borrow::Cow;
use std::future::Future;

use bytes::Bytes;

use std::sync::Arc;

use super::record::ConnectionRecord;
use crate::connection::TextFrame;
use crate::connection::WebSocketHandle;
use crate::dyn_manager::DynManager;
use crate::ids::{ConnectionId, ThreadId, UserId};
use crate::protocol::WebSocketManager;

/// The error a handler may return. It is logged with the connection's ids and
/// the connection stays open. When it is an [`InboundError`], the client is
/// also told, with an error frame.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An inbound message the application could not accept; returned by a
/// [`MessageHandler`] (boxed into a [`HandlerError`]), the client receives
/// it as an error frame, one JSON text message:
///
/// ```json
/// {"type": "error", "code": "malformed_json", "detail": "expected value at line 1 column 1"}
/// ```
///
/// Codes used by the library: [`MALFORMED_JSON`](Self::MALFORMED_JSON),
/// [`UNKNOWN_TYPE`](Self::UNKNOWN_TYPE), [`INVALID_MESSAGE`](Self::INVALID_MESSAGE),
/// [`TOKEN_REFRESH_REFUSED`](Self::TOKEN_REFRESH_REFUSED);
/// an application may use its own. Error frames are bounded per connection
/// ([`TransportConfig::error_frame_limit`](super::TransportConfig::error_frame_limit)
/// per window); one more invalid message within the window closes the socket
/// with 1008 `too many invalid messages`, so a flood cannot make the server
/// write without limit.
///
/// ```
/// use websocket_manager::transport::{InboundError, InboundMessage};
/// #[derive(Debug, serde::Deserialize)]
/// #[serde(tag = "type", rename_all = "snake_case")]
/// enum Request { Ping }
/// let message = InboundMessage::Text("{\"type\":\"dance\"}".to_owned().into());
/// let error = message.json::<Request>().unwrap_err();
/// assert_eq!(error.code, InboundError::UNKNOWN_TYPE);
/// assert_eq!(error.to_json()["type"], "error");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[error("invalid inbound message ({code}): {detail}")]
pub struct InboundError {
    /// A short machine-readable code.
    pub code: Cow<'static, str>,
    /// A human-readable explanation (sent to the client: no secrets).
    pub detail: String,
}

impl InboundError {
    /// The text is not JSON.
    pub const MALFORMED_JSON: &'static str = "malformed_json";
    /// JSON whose `type` the application does not know.
    pub const UNKNOWN_TYPE: &'static str = "unknown_type";
    /// JSON of a known shape with wrong or missing fields, or a binary message.
    pub const INVALID_MESSAGE: &'static str = "invalid_message";
    /// A `refresh_token` the transport refused (its detail: `invalid token`,
    /// `other user`, `expired` or `not supported`); the connection keeps its
    /// old deadline.
    pub const TOKEN_REFRESH_REFUSED: &'static str = "token_refresh_refused";
    /// A message over the connection's
    /// [`inbound_rate`](super::TransportConfig::inbound_rate): dropped, not
    /// handled. Too many of them close the connection with 1008
    /// `message rate exceeded`.
    pub const RATE_LIMITED: &'static str = "rate_limited";

    /// An error with an application code.
    pub fn new(code: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        InboundError {
            code: code.into(),
            detail: detail.into(),
        }
    }

    /// The error frame sent to the client.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"type": "error", "code": self.code, "detail": self.detail})
    }
}

/// One inbound application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundMessage {
    /// A text message (JSON, usually).
    Text(TextFrame),
    /// A binary message.
    Binary(Bytes),
}

impl InboundMessage {
    /// The text, for a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            InboundMessage::Text(text) => Some(text.as_str()),
            InboundMessage::Binary(_) => None,
        }
    }

    /// Parses a text message as JSON into `T`; the error says why not with
    /// the code the client should see ([`InboundError`]): not JSON
    /// (`malformed_json`), an unknown variant, usually the `type` tag
    /// (`unknown_type`), anything else (`invalid_message`).
    ///
    /// # Errors
    ///
    /// [`InboundError`], to return from the handler as is.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, InboundError> {
        let Some(text) = self.as_text() else {
            return Err(InboundError::new(
                InboundError::INVALID_MESSAGE,
                "a binary message where JSON text was expected",
            ));
        };
        serde_json::from_str(text).map_err(|error| {
            let code = match error.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                    InboundError::MALFORMED_JSON
                }
                _ if error.to_string().starts_with("unknown variant") => InboundError::UNKNOWN_TYPE,
                _ => InboundError::INVALID_MESSAGE,
            };
            InboundError::new(code, error.to_string())
        })
    }
}

/// Who sent an inbound message, and the means to answer: the connection's
/// record (shared with the service, not copied per message) and the manager.
///
/// ```
/// use websocket_manager::transport::{InboundContext, InboundMessage, HandlerError};
/// async fn on_message(context: InboundContext, _message: InboundMessage) -> Result<(), HandlerError> {
///     // Answer only this tab.
///     let reply = websocket_manager::socket::TextFrame::from_string(format!("hello {}", context.user_id()));
///     context.socket().try_send(reply)?;
///     Ok(())
/// }
/// ```
#[derive(Clone)]
pub struct InboundContext {
    record: Arc<ConnectionRecord>,
    manager: DynManager,
}

impl InboundContext {
    pub(crate) fn new(record: Arc<ConnectionRecord>, manager: DynManager) -> Self {
        InboundContext { record, manager }
    }

    /// A context for a connection served elsewhere: to call a
    /// [`MessageHandler`] from a test, or from a transport of your own.
    pub fn for_connection(
        connection_id: ConnectionId,
        user_id: UserId,
        socket: WebSocketHandle,
        manager: DynManager,
    ) -> Self {
        let record = ConnectionRecord {
            connection_id,
            user_id,
            socket,
        };
        InboundContext::new(Arc::new(record), manager)
    }

    /// The connection the message arrived on.
    pub fn connection_id(&self) -> &ConnectionId {
        &self.record.connection_id
    }

    /// The authenticated user of that connection.
    pub fn user_id(&self) -> &UserId {
        &self.record.user_id
    }

    /// The connection's own socket, to answer only this tab.
    pub fn socket(&self) -> &WebSocketHandle {
        &self.record.socket
    }

    /// The manager, to answer the user, a thread, or emit critical events.
    pub fn manager(&self) -> &DynManager {
        &self.manager
    }

    /// The thread the connection follows now, asked of the manager when
    /// called (so `update_connection_thread` is taken into account, whoever
    /// called it); a handler that never needs it costs nothing.
    pub fn thread_id(&self) -> Option<ThreadId> {
        self.manager
            .get_connection(&self.record.connection_id)
            .and_then(|connection| connection.thread_id)
    }
}

impl std::fmt::Debug for InboundContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundContext")
            .field("connection_id", &self.record.connection_id)
            .field("user_id", &self.record.user_id)
            .finish_non_exhaustive()
    }
}

/// Receives the application messages of every connection.
///
/// It runs on the connection's reader, one message at a time and in order:
/// spawn long work (an agent run) instead of awaiting it here, or the
/// connection stops reading meanwhile. An `Err` or a panic is logged and the
/// connection stays open. A closure works too, through [`handler_fn`].
///
/// ```
/// use websocket_manager::WebSocketManager;
/// use websocket_manager::transport::{InboundContext, InboundMessage, HandlerError, MessageHandler};
/// struct Echo;
/// #[websocket_manager::transport::async_trait]
/// impl MessageHandler for Echo {
///     async fn on_message(&self, context: InboundContext, message: InboundMessage) -> Result<(), HandlerError> {
///         if let Some(text) = message.as_text() {
///             context.manager().send_to_user(context.user_id(), serde_json::json!({"echo": text})).await?;
///         }
///         Ok(())
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait MessageHandler: Send + Sync + 'static {
    /// Handles one message.
    ///
    /// # Errors
    ///
    /// Anything; it is logged and the connection stays open.
    async fn on_message(
        &self,
        context: InboundContext,
        message: InboundMessage,
    ) -> Result<(), HandlerError>;
}

/// A [`MessageHandler`] made from an async closure; see [`handler_fn`].
#[derive(Debug, Clone)]
pub struct HandlerFn<F>(F);

/// Turns an async closure into a [`MessageHandler`].
///
/// ```
/// use websocket_manager::transport::{handler_fn, InboundContext, InboundMessage, HandlerError};
/// let handler = handler_fn(|context: InboundContext, message: InboundMessage| async move {
///     tracing::info!(user = %context.user_id(), ?message, "received");
///     Ok::<(), HandlerError>(())
/// });
/// # let _ = handler;
/// ```
pub fn handler_fn<F, Fut>(function: F) -> HandlerFn<F>
where
    F: Fn(InboundContext, InboundMessage) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    HandlerFn(function)
}

#[async_trait::async_trait]
impl<F, Fut> MessageHandler for HandlerFn<F>
where
    F: Fn(InboundContext, InboundMessage) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    async fn on_message(
        &self,
        context: InboundContext,
        message: InboundMessage,
    ) -> Result<(), HandlerError> {
        (self.0)(context, message).await
    }
}

/// A handler that ignores every message (the default of a service that only
/// pushes to its clients).
#[derive(Debug, Clone, Copy, Default)]
pub struct IgnoreMessages;

#[async_trait::async_trait]
impl MessageHandler for IgnoreMessages {
    async fn on_message(
        &self,
        context: InboundContext,
        _: InboundMessage,
    ) -> Result<(), HandlerError> {
        tracing::debug!(connection = %context.connection_id(), "inbound message ignored");
        Ok(())
    }
}
