//! [`WebSocketService`]: admits upgrade requests, registers sockets with a
//! manager, drives them, and shuts them all down gracefully.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use std::future::Future;

use futures_util::{Sink, SinkExt, StreamExt};
use serde::Serialize;

use super::admission::{RateLimit, TokenBucket, TransportCounters, TransportStats};
use super::auth::{
    AuthError, Authenticated, Authenticator, Identity, OriginPolicy, UpgradeRequest,
};
use super::config::TransportConfig;
use super::control::Hello;
use super::driver::{self, EndReason, Session};
use super::handler::{IgnoreMessages, InboundContext, MessageHandler};
use super::record::ConnectionRecord;
use super::shutdown::{
    ConnectionTracker, Registered, ShutdownReport, UpgradeRefused, UpgradeTicket,
};
use super::wire::{WireError, WireMessage, WireSocket};
use crate::close::{self, CloseReason};
use crate::connection::{QueueLimits, TextFrame, WebSocketConnection, WebSocketHandle};
use crate::dyn_manager::DynManager;
use crate::ids::{ConnectionId, ThreadId, UserId};
use crate::offset::{EventPrint, ResumePoint, StreamOffset};
use crate::protocol::WebSocketManager;
use crate::readiness::{NotReady, NotReadyReason, Readiness};

/// The `Retry-After` of a draining service: it is going away, so the
/// client had better try another server (the balancer sends it there).
const DRAINING_RETRY_AFTER: Duration = Duration::from_secs(5);
/// The `Retry-After` of a service at its connection limit.
const AT_CAPACITY_RETRY_AFTER: Duration = Duration::from_secs(2);

/// An upgrade request that passed the readiness check, the `Origin` check
/// and authentication. Made by [`WebSocketService::admit`] only: from then
/// on the service counts it (a shutdown that begins before it is served
/// closes it with 1001 and reports it).
#[derive(Debug, Clone, PartialEq)]
pub struct Admission {
    /// Who the request was authenticated as.
    pub identity: Identity,
    /// The thread from the `thread` query parameter, already authorized.
    pub thread_id: Option<ThreadId>,
    /// The offset from the `resume` query parameter (`<stream>:<sequence>`):
    /// the connection replays the user's critical events after it.
    pub resume: Option<StreamOffset>,
    /// The print of the event at `resume`, when the parameter carried one
    /// (`<stream>:<sequence>:<print>`): see
    /// [`WebSocketConnection::resume_print`].
    pub resume_print: Option<EventPrint>,
    /// Counts the upgrade in the service until it is registered.
    pub(crate) ticket: UpgradeTicket,
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
    tracker: Arc<ConnectionTracker>,
    max_connections: Option<usize>,
    /// Every socket's queue bounds: the config's, else the manager's.
    queue_limits: QueueLimits,
    /// New connections per second, if limited.
    connection_rate: Option<Mutex<TokenBucket>>,
    counters: TransportCounters,
    /// Set by the application ([`WebSocketService::hold`]).
    hold: Mutex<Option<NotReady>>,
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
    max_connections: Option<usize>,
    connection_rate: Option<RateLimit>,
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

    /// The most connections (live, or admitted and upgrading) this service
    /// takes; past it, upgrades get `503` with `Retry-After` and
    /// [`readiness`](WebSocketService::readiness) says
    /// [`AtCapacity`](NotReadyReason::AtCapacity). Default: no limit.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = Some(max);
        self
    }

    /// How many new connections per second this service admits (a token
    /// bucket: `burst` at once, `per_second` on average); an upgrade over
    /// it gets `503` with a jittered `Retry-After` (reason `rate_limited`)
    /// before any authentication work, so that a reconnect storm is spread
    /// out instead of flattening the node. Readiness routes are unaffected.
    /// Default: no limit.
    pub fn connection_rate(mut self, limit: RateLimit) -> Self {
        self.connection_rate = Some(limit);
        self
    }

    /// The service.
    pub fn build(self) -> WebSocketService {
        let queue_limits = self
            .config
            .queue_limits()
            .or_else(|| self.manager.queue_limits())
            .unwrap_or_default();
        if self.config.max_message_size() > queue_limits.max_bytes {
            tracing::warn!(
                max_message_size = self.config.max_message_size(),
                queue_max_bytes = queue_limits.max_bytes,
                "a message the reader accepts may not fit a socket's queue (SendError::TooLarge on an echo)"
            );
        }
        WebSocketService {
            inner: Arc::new(ServiceInner {
                manager: self.manager,
                authenticator: self.authenticator,
                handler: self.handler,
                origins: self.origins,
                config: self.config,
                tracker: Arc::new(ConnectionTracker::default()),
                max_connections: self.max_connections,
                queue_limits,
                connection_rate: self
                    .connection_rate
                    .map(|limit| Mutex::new(TokenBucket::new(limit, std::time::Instant::now()))),
                counters: TransportCounters::default(),
                hold: Mutex::new(None),
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
            max_connections: None,
            connection_rate: None,
        }
    }

    /// The manager connections are registered with.
    pub fn manager(&self) -> &DynManager {
        &self.inner.manager
    }

    /// The bounds every socket's outbound queue is created with: the
    /// transport config's when set, else what the manager asks for
    /// ([`DynManager::queue_limits`]), else the default.
    pub fn queue_limits(&self) -> QueueLimits {
        self.inner.queue_limits
    }

    /// The transport settings.
    pub fn config(&self) -> &TransportConfig {
        &self.inner.config
    }

    /// Connections being driven right now.
    pub fn live_connections(&self) -> usize {
        self.inner.tracker.len()
    }

    /// What the service refused or limited so far, and its connections now.
    pub fn stats(&self) -> TransportStats {
        self.inner.counters.snapshot(self.inner.tracker.len())
    }

    /// Whether new connections are accepted (`false` once
    /// [`stop_admitting`](Self::stop_admitting) or shutdown began).
    pub fn is_accepting(&self) -> bool {
        self.inner.tracker.is_accepting()
    }

    /// Whether an upgrade arriving now would be admitted (credentials
    /// aside), and if not why: the service is draining
    /// ([`stop_admitting`](Self::stop_admitting), [`shutdown`](Self::shutdown)),
    /// the application [holds](Self::hold) it, its manager is not ready
    /// ([`DynManager::readiness`]: a cluster node not joined), or it is at
    /// its [connection limit](WebSocketServiceBuilder::max_connections).
    /// What a readiness route for a load balancer should answer.
    ///
    /// ```
    /// # use websocket_manager::transport::{AuthError, Authenticator, Identity, UpgradeRequest, WebSocketService};
    /// # struct Nobody;
    /// # #[websocket_manager::transport::async_trait]
    /// # impl Authenticator for Nobody {
    /// #     async fn authenticate(&self, _: &UpgradeRequest<'_>) -> Result<Identity, AuthError> {
    /// #         Err(AuthError::Unauthorized("demo".into()))
    /// #     }
    /// # }
    /// use websocket_manager::{NotReadyReason, managers::UnifiedWebSocketManager};
    /// let service = WebSocketService::builder(std::sync::Arc::new(UnifiedWebSocketManager::default()), Nobody).build();
    /// assert!(service.readiness().is_ready());
    /// service.stop_admitting();
    /// assert_eq!(service.readiness().reason(), Some(NotReadyReason::Draining));
    /// ```
    pub fn readiness(&self) -> Readiness {
        let inner = &self.inner;
        if !inner.tracker.is_accepting() {
            return Readiness::NotReady(draining());
        }
        let held = inner
            .hold
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(held) = held {
            return Readiness::NotReady(held);
        }
        let manager = inner.manager.readiness();
        if !manager.is_ready() {
            return manager;
        }
        if inner
            .max_connections
            .is_some_and(|max| inner.tracker.load() >= max)
        {
            return Readiness::NotReady(at_capacity());
        }
        Readiness::Ready
    }

    /// Refuses upgrades with `not_ready` (503, `Retry-After`) until
    /// [`release`](Self::release): for what the application itself waits
    /// on before serving (a startup check, a warm-up). Connections already
    /// open are untouched.
    pub fn hold(&self, not_ready: NotReady) {
        *self
            .inner
            .hold
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(not_ready);
    }

    /// Ends a [`hold`](Self::hold).
    pub fn release(&self) {
        *self
            .inner
            .hold
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The first step of a graceful shutdown: from now on every upgrade is
    /// refused (503, `Retry-After`) and [`readiness`](Self::readiness) says
    /// [`Draining`](NotReadyReason::Draining), while the open connections
    /// keep running, so that a load balancer stops sending clients here
    /// before [`shutdown`](Self::shutdown) closes them. Cannot be undone.
    pub fn stop_admitting(&self) {
        self.inner.tracker.stop_admitting();
        tracing::info!("websocket service draining: new upgrades are refused");
    }

    /// Decides an upgrade request, before any socket exists: the service
    /// and its manager are [ready](Self::readiness) (else 503 with
    /// `Retry-After`, before any authentication work), the `Origin` is allowed (else 403), the authenticator
    /// accepts the credential (else 401), the `thread` query parameter is a
    /// valid thread id (else 400) the user may follow (else 403), and the
    /// `resume` query parameter, if any, is a valid
    /// [`ResumePoint`], `<stream>:<sequence>` or `<stream>:<sequence>:<print>`
    /// (else 400, saying why).
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
        let counters = &self.inner.counters;
        if let Readiness::NotReady(not_ready) = self.readiness() {
            TransportCounters::add(match not_ready.reason {
                NotReadyReason::AtCapacity => &counters.upgrades_refused_at_capacity,
                _ => &counters.upgrades_refused_not_ready,
            });
            return Err(AuthError::Unavailable(not_ready));
        }
        if let Some(refusal) = self.over_connection_rate() {
            TransportCounters::add(&counters.upgrades_refused_rate_limited);
            return Err(AuthError::Unavailable(refusal));
        }
        // Counted from here: a shutdown that begins while this request is
        // authenticated, or after its `101`, still closes and reports it.
        let pending = self
            .inner
            .tracker
            .begin_upgrade(self.inner.max_connections)
            .map_err(|refused| {
                AuthError::Unavailable(match refused {
                    UpgradeRefused::Draining => {
                        TransportCounters::add(&counters.upgrades_refused_not_ready);
                        draining()
                    }
                    UpgradeRefused::AtCapacity => {
                        TransportCounters::add(&counters.upgrades_refused_at_capacity);
                        at_capacity()
                    }
                })
            })?;
        self.inner.origins.check(request.origin())?;
        let identity = self.inner.authenticator.authenticate(request).await?;
        let resume = match request.query_param_checked("resume")? {
            None => None,
            Some(raw) => Some(raw.parse::<ResumePoint>().map_err(|error| {
                AuthError::BadRequest(format!("query parameter `resume`: {error}").into())
            })?),
        };
        let thread_id = self.thread_from_query(request, &identity).await?;
        TransportCounters::add(&counters.upgrades_admitted);
        Ok(Admission {
            identity,
            thread_id,
            resume: resume.map(|point| point.offset),
            resume_print: resume.and_then(|point| point.print),
            ticket: UpgradeTicket(Some(Arc::new(pending))),
        })
    }

    /// The refusal for an upgrade over the connection rate, if it is.
    fn over_connection_rate(&self) -> Option<NotReady> {
        let bucket = self.inner.connection_rate.as_ref()?;
        let mut bucket = bucket.lock().unwrap_or_else(PoisonError::into_inner);
        if bucket.try_take(std::time::Instant::now()) {
            return None;
        }
        Some(NotReady::new(
            NotReadyReason::RateLimited,
            "new connections arrive faster than the connection rate",
            bucket.next_token_in().max(NotReady::MIN_RETRY_AFTER),
        ))
    }

    /// The `thread` query parameter, a valid thread id (else 400) the user
    /// may follow (else 403); `None` when absent.
    async fn thread_from_query(
        &self,
        request: &UpgradeRequest<'_>,
        identity: &Identity,
    ) -> Result<Option<ThreadId>, AuthError> {
        let Some(raw) = request.query_param_checked("thread")? else {
            return Ok(None);
        };
        let thread =
            ThreadId::new(raw).map_err(|error| AuthError::BadRequest(error.to_string().into()))?;
        self.authorize_thread(identity, &thread).await?;
        Ok(Some(thread))
    }

    /// Authenticates an ordinary HTTP request of the application (posting
    /// a message to a thread, say) as the WebSocket upgrade is: the
    /// `Origin` is allowed (else 403), the authenticator accepts the
    /// credential (else 401), and the `thread` query parameter, if any, is
    /// a valid thread id (else 400) the user may follow (else 403). Unlike
    /// [`admit`](Self::admit) it does not refuse once shutdown began (that
    /// is about new sockets) and reads no `resume`.
    ///
    /// With feature `axum`, [`Authenticated`] is also an extractor that
    /// calls this. Elsewhere, build the request from `http::request::Parts`
    /// (`UpgradeRequest::from(&parts)`) or from a URI and headers.
    ///
    /// ```
    /// # use websocket_manager::transport::{AuthError, Authenticator, Identity, UpgradeRequest, UserScopedThreads, WebSocketService};
    /// # use websocket_manager::{UserId, managers::UnifiedWebSocketManager};
    /// # struct ApiKey;
    /// # #[websocket_manager::transport::async_trait]
    /// # impl Authenticator for ApiKey {
    /// #     async fn authenticate(&self, request: &UpgradeRequest<'_>) -> Result<Identity, AuthError> {
    /// #         match request.bearer_token() {
    /// #             Some("key-of-alice") => Ok(Identity::new(UserId::new("alice").unwrap())),
    /// #             _ => Err(AuthError::Unauthorized("unknown key".into())),
    /// #         }
    /// #     }
    /// # }
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let manager = std::sync::Arc::new(UnifiedWebSocketManager::default());
    /// // a user may follow only their own threads, `<user id>:...`
    /// let service = WebSocketService::builder(manager, UserScopedThreads(ApiKey)).build();
    /// let (parts, _body) = http::Request::post("/messages?thread=alice%3Arun-1")
    ///     .header("authorization", "bearer key-of-alice")
    ///     .body(())
    ///     .unwrap()
    ///     .into_parts();
    /// let who = service.authenticate_http(&UpgradeRequest::from(&parts)).await?;
    /// assert_eq!(who.identity.user_id.as_str(), "alice");
    /// assert_eq!(who.thread_id.unwrap().as_str(), "alice:run-1");
    ///
    /// let (parts, _body) = http::Request::post("/messages?thread=bob%3Arun-1")
    ///     .header("authorization", "bearer key-of-alice")
    ///     .body(())
    ///     .unwrap()
    ///     .into_parts();
    /// let refused = service.authenticate_http(&UpgradeRequest::from(&parts)).await.unwrap_err();
    /// assert_eq!(refused.status(), 403);
    /// # Ok::<(), AuthError>(()) }).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// The [`AuthError`] to answer with (logged here with its detail; the
    /// client should see [`AuthError::public_message`]).
    pub async fn authenticate_http(
        &self,
        request: &UpgradeRequest<'_>,
    ) -> Result<Authenticated, AuthError> {
        let result = self.authenticate_http_inner(request).await;
        if let Err(error) = &result {
            tracing::info!(path = request.uri.path(), status = error.status().as_u16(), %error,
                "http request refused");
        }
        result
    }

    async fn authenticate_http_inner(
        &self,
        request: &UpgradeRequest<'_>,
    ) -> Result<Authenticated, AuthError> {
        self.inner.origins.check(request.origin())?;
        let identity = self.inner.authenticator.authenticate(request).await?;
        let thread_id = self.thread_from_query(request, &identity).await?;
        Ok(Authenticated {
            identity,
            thread_id,
        })
    }

    /// Whether `identity` may follow `thread`, by the service's
    /// authenticator ([`Authenticator::authorize_thread`]): for a route
    /// that names the thread elsewhere than in the `thread` query parameter
    /// (in its path, say).
    ///
    /// # Errors
    ///
    /// [`AuthError::Forbidden`] (or whatever the authenticator answers) to
    /// refuse.
    pub async fn authorize_thread(
        &self,
        identity: &Identity,
        thread: &ThreadId,
    ) -> Result<(), AuthError> {
        self.inner
            .authenticator
            .authorize_thread(identity, thread)
            .await
    }

    /// Registers an upgraded socket with the manager, writes the protocol's
    /// `hello` frame (only now: from then on every event reaches the
    /// connection, and the hello precedes any notice, replay or live frame),
    /// drives the connection until it ends, then removes it from the
    /// manager. Returns how it ended.
    ///
    /// A refused registration (per-user cap, isolation, shutdown) closes the
    /// socket at once with the matching close code and reason.
    ///
    /// (A plain `fn` returning an `async move` block: this future is the
    /// connection's task for its whole life, and an `async fn` would keep
    /// the socket and the admission twice in it. The socket is split here,
    /// before the future is built, so the future holds its two halves only.)
    pub fn serve<S: WireSocket>(
        &self,
        socket: S,
        admission: Admission,
    ) -> impl Future<Output = ConnectionOutcome> + '_ {
        let (sink, stream) = socket.split();
        // Boxed, as the registration below: the writer takes the sink and
        // the queue's receiving end, and an upvar moved out of keeps its
        // room in this future for the connection's whole life (the sink
        // holds a slot for one message); a box keeps a pointer's.
        let mut sink = Box::new(sink);
        let Admission {
            identity,
            thread_id,
            resume,
            resume_print,
            ticket,
        } = admission;
        // The session the reader keeps (for in-band token refreshes) is
        // this future's only copy of the identity; `drive` borrows it.
        let mut session = Session {
            authenticator: Arc::clone(&self.inner.authenticator),
            identity,
        };
        // The registration, made now rather than captured piece by piece
        // (boxed: freed when the manager takes it).
        let (handle, outbound) = WebSocketHandle::channel(self.inner.queue_limits);
        let outbound = Box::new(outbound);
        let connection = {
            let identity = &session.identity;
            let mut connection = WebSocketConnection::new(identity.user_id.clone(), handle.clone());
            connection.thread_id = thread_id;
            connection.resume = resume;
            connection.resume_print = resume_print;
            connection.metadata = identity.metadata.clone();
            Box::new(connection)
        };
        async move {
            let identity = &session.identity;
            let started = Instant::now();
            let inner = &self.inner;
            let connection_id = connection.connection_id.clone();
            let user_id = identity.user_id.clone();

            let record = Arc::new(ConnectionRecord {
                connection_id: connection_id.clone(),
                user_id: user_id.clone(),
                socket: handle.clone(),
            });
            if !inner.tracker.register(Arc::clone(&record), &ticket) {
                // Admitted before shutdown began (its `101` is out): closed
                // with 1001 like the others, then the ticket tells shutdown.
                let reason = CloseReason::going_away();
                close_unregistered(&mut *sink, reason.clone(), &inner.config).await;
                drop(ticket);
                return connection_outcome(&connection_id, &user_id, started, refused(reason));
            }
            drop(ticket);
            // From here the guard releases the connection, also when this
            // future is dropped before the end (the task was aborted).
            let mut registered = Registered::tracked(
                Arc::clone(&record),
                inner.manager.clone(),
                Arc::clone(&inner.tracker),
            );
            // For the hello frame: the manager records where the connection
            // stands while it registers it.
            if inner.config.hello_frame() {
                handle.request_stream_position();
            }
            registered.offered_to_manager();
            if let Err(error) = inner.manager.add_connection(unboxed(connection)).await {
                registered.release().await;
                let reason = close::registration_refused(&error);
                tracing::info!(connection = %connection_id, user = %user_id, %error,
                    code = reason.code, "registration refused; closing the socket");
                close_unregistered(&mut *sink, reason.clone(), &inner.config).await;
                return connection_outcome(&connection_id, &user_id, started, refused(reason));
            }
            tracing::debug!(connection = %connection_id, user = %user_id, "connection registered");

            // The hello goes straight to the socket, ahead of what the manager
            // queued while registering (the resync notice, the replay) and of
            // every live frame: the writer only starts draining the queue in
            // `drive`. Since the connection is registered, every event emitted
            // after the client read the hello reaches it.
            let sent = {
                let hello = inner.config.hello_frame().then(|| {
                    Hello::new(
                        &user_id,
                        &connection_id,
                        identity.expires_at,
                        handle.take_stream_position(),
                        &inner.config,
                    )
                });
                send_hello(&mut *sink, hello, &inner.config)
            };
            let end = match sent.await {
                Err(end) => {
                    handle.close(close::transport_error());
                    end
                }
                Ok(()) => {
                    let context = InboundContext::new(record, inner.manager.clone());
                    driver::drive(
                        (unboxed(sink), stream),
                        unboxed(outbound),
                        context,
                        &inner.config,
                        Arc::clone(&inner.handler),
                        &mut session,
                        &inner.counters,
                    )
                    .await
                }
            };
            registered.release().await;
            let outcome = connection_outcome(&connection_id, &user_id, started, end);
            tracing::debug!(%outcome, "connection ended");
            outcome
        }
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

/// The value of a box, the box freed now (a box moved out of with `*`
/// is freed only at the end of its scope: here, the connection's life).
// The box is the point: it is freed here rather than at the end of the
// caller's scope.
#[allow(clippy::boxed_local)]
pub(super) fn unboxed<T>(boxed: Box<T>) -> T {
    *boxed
}

/// How a connection ended. (A fn, not a closure in `serve`: a closure's
/// captures would keep 24 more bytes in every connection's future.)
fn connection_outcome(
    connection_id: &ConnectionId,
    user_id: &UserId,
    started: Instant,
    end: EndReason,
) -> ConnectionOutcome {
    ConnectionOutcome {
        connection_id: connection_id.clone(),
        user_id: user_id.clone(),
        end,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

fn draining() -> NotReady {
    NotReady::new(
        NotReadyReason::Draining,
        "the service is shutting down",
        DRAINING_RETRY_AFTER,
    )
}

fn at_capacity() -> NotReady {
    NotReady::new(
        NotReadyReason::AtCapacity,
        "the service is at its connection limit",
        AT_CAPACITY_RETRY_AFTER,
    )
}

fn refused(reason: CloseReason) -> EndReason {
    EndReason::Refused {
        code: reason.code,
        reason: reason.reason.into_owned(),
    }
}

/// Writes the hello frame, within the write timeout; how the connection
/// ended if it could not. Takes the hello by value: it is serialized before
/// the first await, so it is not kept in the connection's future.
async fn send_hello<K: Sink<WireMessage, Error = WireError> + Unpin>(
    socket: &mut K,
    hello: Option<Hello>,
    config: &TransportConfig,
) -> Result<(), EndReason> {
    let Some(hello) = hello else {
        return Ok(());
    };
    let frame = TextFrame::from_json(&hello).map_err(|error| EndReason::TransportError {
        error: format!("hello frame: {error}"),
    })?;
    drop(hello);
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
async fn close_unregistered<K: Sink<WireMessage, Error = WireError> + Unpin>(
    socket: &mut K,
    reason: CloseReason,
    config: &TransportConfig,
) {
    let _ = tokio::time::timeout(config.close_timeout(), async {
        let _ = socket.send(WireMessage::Close(Some(reason))).await;
        let _ = socket.close().await;
    })
    .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::managers::{ManagerConfig, UnifiedWebSocketManager};

    struct Nobody;

    #[async_trait::async_trait]
    impl Authenticator for Nobody {
        async fn authenticate(&self, _: &UpgradeRequest<'_>) -> Result<Identity, AuthError> {
            Err(AuthError::Unauthorized("test".into()))
        }
    }

    /// The serving future is the connection's task for the connection's
    /// whole life: 3,048 bytes on a tokio-tungstenite socket when `serve`
    /// and `drive` were `async fn`s (the socket kept three times, the
    /// admission twice, the hello and the registration's connection for the
    /// whole life); 1,288 since; 1,224 with the sink and the queue's
    /// receiving end boxed until the writer takes them. Behind axum the
    /// task's future is 64 bytes more (1,256) and tokio allocates a task
    /// as the future plus 104 bytes rounded up to 128: 1,408 bytes, where
    /// 1,320 took 1,536 (issue 19).
    #[cfg(feature = "tungstenite")]
    #[tokio::test]
    async fn the_serving_future_stays_small() {
        use crate::transport::tungstenite_socket::TungsteniteSocket;
        let manager = DynManager::new(UnifiedWebSocketManager::default());
        let service = WebSocketService::builder(manager, Nobody).build();
        let (server, _client) = tokio::io::duplex(64);
        let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
            server,
            tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let admission = Admission {
            identity: Identity::new(UserId::new("alice").unwrap()),
            thread_id: None,
            resume: None,
            resume_print: None,
            ticket: UpgradeTicket::default(),
        };
        let serving = service.serve(TungsteniteSocket::new(socket), admission);
        let size = std::mem::size_of_val(&serving);
        assert!(size <= 1240, "the serving future is {size} bytes");
    }

    #[test]
    fn sockets_take_the_managers_queue_bounds_unless_the_transport_sets_its_own() {
        let config = ManagerConfig::builder()
            .queue_capacity(64)
            .queue_max_bytes(1 << 21)
            .history_capacity(32)
            .build()
            .unwrap();
        let manager = DynManager::new(UnifiedWebSocketManager::new(config.clone()));
        // Configured once, on the manager: the sockets follow.
        let service = WebSocketService::builder(manager.clone(), Nobody).build();
        assert_eq!(service.queue_limits(), QueueLimits::new(64, 1 << 21));
        // Set on the transport: that wins.
        let explicit = TransportConfig::builder()
            .queue_limits(QueueLimits::new(128, 1 << 22))
            .build()
            .unwrap();
        let service = WebSocketService::builder(manager, Nobody)
            .config(explicit)
            .build();
        assert_eq!(service.queue_limits(), QueueLimits::new(128, 1 << 22));
        // The isolated manager says too.
        let isolated = DynManager::new(crate::managers::IsolatedWebSocketManager::new(
            crate::startup::UserContext::new(crate::ids::UserId::new("alice").unwrap()),
            config,
        ));
        assert_eq!(isolated.queue_limits(), Some(QueueLimits::new(64, 1 << 21)));
    }
}
