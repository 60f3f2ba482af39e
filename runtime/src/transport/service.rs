//! [`WebSocketService`]: admits upgrade requests, registers sockets with a
//! manager, drives them, and shuts them all down gracefully.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde::Serialize;

use super::auth::{AuthError, Authenticator, Identity, OriginPolicy, UpgradeRequest};
use super::close;
use super::config::TransportConfig;
use super::control::Hello;
use super::driver::{self, EndReason, Session};
use super::handler::{IgnoreMessages, InboundContext, MessageHandler};
use super::shutdown::{ConnectionTracker, LiveConnection, ShutdownReport};
use super::wire::{WireMessage, WireSocket};
use crate::connection::{CloseReason, TextFrame, WebSocketConnection, WebSocketHandle};
use crate::dyn_manager::DynManager;
use crate::ids::{ConnectionId, ThreadId, UserId};
use crate::offset::StreamOffset;
use crate::protocol::WebSocketManager;

/// An upgrade request that passed the `Origin` check and authentication.
#[derive(Debug, Clone, PartialEq)]
pub struct Admission {
    /// Who the request was authenticated as.
    pub identity: Identity,
    /// The thread from the `thread` query parameter, already authorized.
    pub thread_id: Option<ThreadId>,
    /// The offset from the `resume` query parameter (`<stream>:<sequence>`):
    /// the connection replays the user's critical events after it.
    pub resume: Option<StreamOffset>,
}

/// How one connection ended, returned by [`WebSocketService::serve`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionOutcome {
    /// The connection (registered or refused).
    pub connection_id: ConnectionId,
    /// Its user.
    pub user_id: UserId,
    /// Why it ended.
    pub end: EndReason,
    /// How long it lived, in milliseconds.
    pub duration_ms: u64,
}

impl std::fmt::Display for ConnectionOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "connection {} of user {} ended after {} ms: {}",
            self.connection_id, self.user_id, self.duration_ms, self.end
        )
    }
}

struct ServiceInner {
    manager: DynManager,
    authenticator: Arc<dyn Authenticator>,
    handler: Arc<dyn MessageHandler>,
    origins: OriginPolicy,
    config: TransportConfig,
    tracker: ConnectionTracker,
}

/// Connects real sockets to a [`WebSocketManager`].
///
/// For each upgrade request: [`admit`](Self::admit) (Origin allow-list, then
/// the application's [`Authenticator`], then the thread), then — once the
/// adapter has upgraded — [`serve`](Self::serve): register with the manager
/// (a refusal closes the socket with 1008 and its reason), run the
/// [driver](super) until the connection ends, remove it from the manager.
/// [`shutdown`](Self::shutdown) closes everyone with 1001.
///
/// The adapters (`axum`, `tungstenite` features) do both steps for you.
/// Cloning is cheap and shares everything.
///
/// ```
/// use std::sync::Arc;
/// use websocket_manager::transport::{OriginPolicy, TransportConfig, WebSocketService};
/// # use websocket_manager::transport::{AuthError, Authenticator, Identity, UpgradeRequest};
/// # struct MyAuth;
/// # #[websocket_manager::transport::async_trait]
/// # impl Authenticator for MyAuth {
/// #     async fn authenticate(&self, _: &UpgradeRequest<'_>) -> Result<Identity, AuthError> {
/// #         Err(AuthError::Unauthorized("demo".into()))
/// #     }
/// # }
/// # fn build(manager: websocket_manager::DynManager) -> Result<(), Box<dyn std::error::Error>> {
/// let service = WebSocketService::builder(manager, MyAuth)
///     .origins(OriginPolicy::allow(["https://app.example"]))
///     .config(TransportConfig::builder().build()?)
///     .build();
/// assert!(service.is_accepting());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct WebSocketService {
    inner: Arc<ServiceInner>,
}

impl std::fmt::Debug for WebSocketService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketService")
            .field("config", &self.inner.config)
            .field("origins", &self.inner.origins)
            .field("live_connections", &self.live_connections())
            .finish_non_exhaustive()
    }
}

/// Builds a [`WebSocketService`].
pub struct WebSocketServiceBuilder {
    manager: DynManager,
    authenticator: Arc<dyn Authenticator>,
    handler: Arc<dyn MessageHandler>,
    origins: OriginPolicy,
    config: TransportConfig,
}

impl std::fmt::Debug for WebSocketServiceBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketServiceBuilder")
            .field("origins", &self.origins)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl WebSocketServiceBuilder {
    /// The handler of inbound application messages (default: ignore them).
    pub fn handler(mut self, handler: impl MessageHandler) -> Self {
        self.handler = Arc::new(handler);
        self
    }

    /// The same, already shared.
    pub fn shared_handler(mut self, handler: Arc<dyn MessageHandler>) -> Self {
        self.handler = handler;
        self
    }

    /// The `Origin` allow-list (default: no browser origin, non-browser
    /// clients allowed).
    pub fn origins(mut self, origins: OriginPolicy) -> Self {
        self.origins = origins;
        self
    }

    /// Heartbeat, limits and timeouts (default: [`TransportConfig::default`]).
    pub fn config(mut self, config: TransportConfig) -> Self {
        self.config = config;
        self
    }

    /// The service.
    pub fn build(self) -> WebSocketService {
        WebSocketService {
            inner: Arc::new(ServiceInner {
                manager: self.manager,
                authenticator: self.authenticator,
                handler: self.handler,
                origins: self.origins,
                config: self.config,
                tracker: ConnectionTracker::default(),
            }),
        }
    }
}

impl WebSocketService {
    /// A builder for a service over `manager` (a [`DynManager`], or an
    /// `Arc` of any manager), authenticating with `authenticator`.
    pub fn builder(
        manager: impl Into<DynManager>,
        authenticator: impl Authenticator,
    ) -> WebSocketServiceBuilder {
        Self::builder_shared(manager, Arc::new(authenticator))
    }

    /// The same with an authenticator that is already shared.
    pub fn builder_shared(
        manager: impl Into<DynManager>,
        authenticator: Arc<dyn Authenticator>,
    ) -> WebSocketServiceBuilder {
        WebSocketServiceBuilder {
            manager: manager.into(),
            authenticator,
            handler: Arc::new(IgnoreMessages),
            origins: OriginPolicy::default(),
            config: TransportConfig::default(),
        }
    }

    /// The manager connections are registered with.
    pub fn manager(&self) -> &DynManager {
        &self.inner.manager
    }

    /// The transport settings.
    pub fn config(&self) -> &TransportConfig {
        &self.inner.config
    }

    /// Connections being driven right now.
    pub fn live_connections(&self) -> usize {
        self.inner.tracker.len()
    }

    /// Whether new connections are accepted (`false` once shutdown began).
    pub fn is_accepting(&self) -> bool {
        self.inner.tracker.is_accepting()
    }

    /// Decides an upgrade request, before any socket exists: the server is
    /// accepting, the `Origin` is allowed (else 403), the authenticator
    /// accepts the credential (else 401), the `thread` query parameter is a
    /// valid thread id (else 400) the user may follow (else 403), and the
    /// `resume` query parameter, if any, is a valid
    /// [`StreamOffset`] `<stream>:<sequence>` (else 400, saying why).
    ///
    /// # Errors
    ///
    /// The [`AuthError`] to answer with; its detail is logged here, and
    /// [`AuthError::public_message`] is what the client should see.
    pub async fn admit(&self, request: &UpgradeRequest<'_>) -> Result<Admission, AuthError> {
        let result = self.admit_inner(request).await;
        if let Err(error) = &result {
            tracing::info!(path = request.uri.path(), status = error.status().as_u16(), %error,
                "websocket upgrade refused");
        }
        result
    }

    async fn admit_inner(&self, request: &UpgradeRequest<'_>) -> Result<Admission, AuthError> {
        if !self.is_accepting() {
            return Err(AuthError::ShuttingDown);
        }
        self.inner.origins.check(request.origin())?;
        let identity = self.inner.authenticator.authenticate(request).await?;
        let resume = match request.query_param_checked("resume")? {
            None => None,
            Some(raw) => Some(raw.parse::<StreamOffset>().map_err(|error| {
                AuthError::BadRequest(format!("query parameter `resume`: {error}").into())
            })?),
        };
        let thread_id = match request.query_param_checked("thread")? {
            None => None,
            Some(raw) => {
                let thread = ThreadId::new(raw)
                    .map_err(|error| AuthError::BadRequest(error.to_string().into()))?;
                self.inner
                    .authenticator
                    .authorize_thread(&identity, &thread)
                    .await?;
                Some(thread)
            }
        };
        Ok(Admission {
            identity,
            thread_id,
            resume,
        })
    }

    /// Registers an upgraded socket with the manager, writes the protocol's
    /// `hello` frame (only now: from then on every event reaches the
    /// connection, and the hello precedes any notice, replay or live frame),
    /// drives the connection until it ends, then removes it from the
    /// manager. Returns how it ended.
    ///
    /// A refused registration (per-user cap, isolation, shutdown) closes the
    /// socket at once with the matching close code and reason.
    pub async fn serve<S: WireSocket>(
        &self,
        mut socket: S,
        admission: Admission,
    ) -> ConnectionOutcome {
        let started = Instant::now();
        let inner = &self.inner;
        let (handle, outbound) = WebSocketHandle::channel(inner.config.queue_limits());
        let Admission {
            identity,
            thread_id,
            resume,
        } = admission;
        let mut connection = WebSocketConnection::new(identity.user_id.clone(), handle.clone());
        connection.thread_id = thread_id;
        connection.resume = resume;
        connection.metadata = identity.metadata.clone();
        let connection_id = connection.connection_id.clone();
        let user_id = identity.user_id.clone();
        let outcome = |end: EndReason| ConnectionOutcome {
            connection_id: connection_id.clone(),
            user_id: user_id.clone(),
            end,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };

        let live = LiveConnection {
            connection_id: connection_id.clone(),
            user_id: user_id.clone(),
            socket: handle.clone(),
        };
        if !inner.tracker.register(live) {
            let reason = CloseReason::going_away();
            close_unregistered(&mut socket, reason.clone(), &inner.config).await;
            return outcome(refused(reason));
        }
        if let Err(error) = inner.manager.add_connection(connection).await {
            inner.tracker.unregister(handle.id());
            let reason = close::registration_refused(&error);
            tracing::info!(connection = %connection_id, user = %user_id, %error,
                code = reason.code, "registration refused; closing the socket");
            close_unregistered(&mut socket, reason.clone(), &inner.config).await;
            return outcome(refused(reason));
        }
        tracing::debug!(connection = %connection_id, user = %user_id, "connection registered");
        // If this future is dropped before the end (the task was aborted),
        // the guard still takes the connection out of the manager.
        let mut registered = RegisteredGuard {
            inner: Arc::clone(inner),
            connection_id: Some(connection_id.clone()),
            socket: handle.clone(),
        };

        // The hello goes straight to the socket, ahead of what the manager
        // queued while registering (the resync notice, the replay) and of
        // every live frame: the writer only starts draining the queue in
        // `drive`. Since the connection is registered, every event emitted
        // after the client read the hello reaches it.
        let hello = Hello::new(
            &user_id,
            &connection_id,
            identity.expires_at,
            handle.stream_position(),
            &inner.config,
        );
        let end = match send_hello(&mut socket, &hello, &inner.config).await {
            Err(end) => {
                handle.close(close::transport_error());
                end
            }
            Ok(()) => {
                let context = InboundContext {
                    connection_id: connection_id.clone(),
                    user_id: user_id.clone(),
                    thread_id: None,
                    socket: handle.clone(),
                    manager: inner.manager.clone(),
                };
                let session = Session {
                    authenticator: Arc::clone(&inner.authenticator),
                    identity,
                };
                driver::drive(
                    socket,
                    outbound,
                    context,
                    &inner.config,
                    Arc::clone(&inner.handler),
                    session,
                )
                .await
            }
        };

        // Remove from the manager before the tracker, so that a finished
        // shutdown implies clean manager indexes.
        registered.connection_id = None;
        inner.manager.remove_connection(&connection_id).await;
        inner.tracker.unregister(handle.id());
        let outcome = outcome(end);
        tracing::debug!(%outcome, "connection ended");
        outcome
    }

    /// Graceful shutdown: stops accepting (new upgrades get 503), closes
    /// every connection with 1001, waits up to `drain` for them to finish,
    /// removes any that did not from the manager, and reports.
    pub async fn shutdown(&self, drain: Duration) -> ShutdownReport {
        let report = self
            .inner
            .tracker
            .shutdown(&self.inner.manager, drain)
            .await;
        tracing::info!(%report, "websocket service shut down");
        report
    }
}

/// Removes a registered connection whose `serve` future was dropped early.
struct RegisteredGuard {
    inner: Arc<ServiceInner>,
    /// `None` once `serve` removed the connection itself.
    connection_id: Option<ConnectionId>,
    socket: WebSocketHandle,
}

impl Drop for RegisteredGuard {
    fn drop(&mut self) {
        let Some(connection_id) = self.connection_id.take() else {
            return;
        };
        // The writer task, if still running, stops on this close.
        self.socket.close(CloseReason::going_away());
        let inner = Arc::clone(&self.inner);
        let socket = self.socket.id();
        tracing::warn!(connection = %connection_id, "connection task dropped early; removing it");
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    inner.manager.remove_connection(&connection_id).await;
                    inner.tracker.unregister(socket);
                });
            }
            // No runtime left (process exit): nothing will read the manager.
            Err(_) => inner.tracker.unregister(socket),
        }
    }
}

fn refused(reason: CloseReason) -> EndReason {
    EndReason::Refused {
        code: reason.code,
        reason: reason.reason.into_owned(),
    }
}

/// Writes the hello frame, within the write timeout; how the connection
/// ended if it could not.
async fn send_hello<S: WireSocket>(
    socket: &mut S,
    hello: &Hello,
    config: &TransportConfig,
) -> Result<(), EndReason> {
    let frame = TextFrame::from_json(hello).map_err(|error| EndReason::TransportError {
        error: format!("hello frame: {error}"),
    })?;
    match tokio::time::timeout(
        config.write_timeout(),
        socket.send(WireMessage::Text(frame)),
    )
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(EndReason::TransportError {
            error: error.to_string(),
        }),
        Err(_) => Err(EndReason::WriteStalled),
    }
}

/// Closes a socket that was never registered (no writer task runs yet).
async fn close_unregistered<S: WireSocket>(
    socket: &mut S,
    reason: CloseReason,
    config: &TransportConfig,
) {
    let _ = tokio::time::timeout(config.close_timeout(), async {
        let _ = socket.send(WireMessage::Close(Some(reason))).await;
        let _ = socket.close().await;
    })
    .await;
}
