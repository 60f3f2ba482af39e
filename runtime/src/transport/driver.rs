//! The connection driver: one writer task draining the connection's bounded
//! queue into the socket, and a reader loop feeding the application's
//! handler, watching the heartbeat and the size limit.
//!
//! Every write is bounded in time and every socket has its own writer task,
//! so a client that stops reading can only stall its own writer; the
//! manager never waits on a socket at all (it only `try_send`s).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use serde::Serialize;
use tokio::time::Instant;

use super::admission::{TokenBucket, TransportCounters};
use super::auth::{Authenticator, Identity, RefreshError};
use super::config::TransportConfig;
use super::control::{self, ClientControl};
use super::handler::{InboundContext, InboundError, InboundMessage, MessageHandler};
use super::wire::{WireError, WireMessage, WireSocket};
use crate::close;
use crate::connection::{CloseReason, OutboundEvent, OutboundReceiver, WebSocketHandle};

/// Events taken from the queue per lock, and the most the writer's event
/// buffer ever holds: it reaches that size at the first batch of more than
/// 4 events and is never reallocated again. (It used to take 32 and shrink
/// back to 4 after each batch: at every wake-up of a socket that had fallen
/// behind, three growths and a shrink of a block too large for the
/// allocator's per-thread cache, each taking the allocator's lock against
/// every other thread. A lock of the queue per 8 frames instead of per 32
/// costs nothing measurable.)
const MAX_BATCH: usize = 8;

/// Frames fed to the socket per flush at most. The writer keeps taking what
/// arrived while it was feeding and flushes once the queue is drained (one
/// write for a whole burst, as a hand-written writer does), or after this
/// many frames so that the client starts receiving a long burst early.
const MAX_FLUSH: usize = 1024;

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EndReason {
    /// The client sent a close frame.
    ClientClosed {
        /// The client's close code, if it gave one.
        code: Option<u16>,
    },
    /// The connection dropped without a close frame.
    Disconnected,
    /// The client sent a message or frame over the limit (closed with 1009).
    MessageTooLarge {
        /// Size seen.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Nothing arrived within the idle timeout (closed with 4408).
    HeartbeatTimeout,
    /// A text message was not valid UTF-8 (closed with 1007).
    InvalidPayload {
        /// What was wrong.
        error: String,
    },
    /// The client violated the WebSocket protocol (closed with 1002).
    ProtocolViolation {
        /// The violation.
        error: String,
    },
    /// A binary message arrived while binary messages are refused (closed with 1003).
    BinaryRefused,
    /// More invalid messages than the error-frame limit allows (closed with 1008).
    TooManyInvalidMessages,
    /// Messages over the connection's inbound rate, past the error-frame
    /// limit (closed with 1008 `message rate exceeded`).
    MessageRateExceeded,
    /// The token the connection was authenticated with expired (closed with 4401).
    TokenExpired,
    /// The server closed it: the manager removed it (slow consumer,
    /// `remove_connection`) or the server shut down.
    ServerClosed {
        /// The close code sent.
        code: u16,
        /// The reason sent.
        reason: String,
    },
    /// A write stalled longer than the write timeout.
    WriteStalled,
    /// Reading or writing failed.
    TransportError {
        /// The error.
        error: String,
    },
    /// The manager refused the registration; the socket was closed with this
    /// code and reason right away.
    Refused {
        /// The close code sent.
        code: u16,
        /// The reason sent.
        reason: String,
    },
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndReason::ClientClosed { code: Some(code) } => {
                write!(f, "closed by the client ({code})")
            }
            EndReason::ClientClosed { code: None } => f.write_str("closed by the client"),
            EndReason::Disconnected => f.write_str("disconnected without a close frame"),
            EndReason::MessageTooLarge { size, max } => {
                write!(
                    f,
                    "inbound message of {size} bytes over the {max} byte limit"
                )
            }
            EndReason::HeartbeatTimeout => f.write_str("heartbeat timeout"),
            EndReason::InvalidPayload { error } => write!(f, "invalid payload: {error}"),
            EndReason::ProtocolViolation { error } => write!(f, "protocol violation: {error}"),
            EndReason::BinaryRefused => f.write_str("binary message refused"),
            EndReason::TooManyInvalidMessages => f.write_str("too many invalid messages"),
            EndReason::MessageRateExceeded => f.write_str("message rate exceeded"),
            EndReason::TokenExpired => f.write_str("token expired"),
            EndReason::ServerClosed { code, reason } => {
                write!(f, "closed by the server ({code} {reason})")
            }
            EndReason::WriteStalled => f.write_str("write stalled"),
            EndReason::TransportError { error } => write!(f, "transport error: {error}"),
            EndReason::Refused { code, reason } => {
                write!(f, "registration refused ({code} {reason})")
            }
        }
    }
}

/// How far the writer got: frames written (fed and flushed) so far, and
/// the reader waiting for a count, if it is. The reader waits for its
/// handler's replies to be written before it reads on, so that a close
/// read right after a message cannot overtake the reply (tungstenite sends
/// nothing but the close reply once it has read the peer's close).
#[derive(Default)]
struct Written {
    frames: AtomicU64,
    reader_waits: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Written {
    /// Called by the writer after each flush: one add and one load.
    fn add(&self, frames: u64) {
        self.frames.fetch_add(frames, Ordering::SeqCst);
        if self.reader_waits.load(Ordering::SeqCst) {
            self.notify.notify_waiters();
        }
    }

    /// Whether `target` frames are written.
    fn reached(&self, target: u64) -> bool {
        self.frames.load(Ordering::SeqCst) >= target
    }

    /// Waits until `target` frames are written, at most `limit`.
    async fn wait_for(&self, target: u64, limit: Duration) {
        if self.reached(target) {
            return;
        }
        let _ = tokio::time::timeout(limit, async {
            self.reader_waits.store(true, Ordering::SeqCst);
            loop {
                let notified = self.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.frames.load(Ordering::SeqCst) >= target {
                    break;
                }
                notified.await;
            }
        })
        .await;
        self.reader_waits.store(false, Ordering::SeqCst);
    }
}

/// Which side ended a connection. The reader's end still needs its close
/// frame written ([`closing`]); the writer's was written (or could not be),
/// `None` when the writer task did not end normally.
enum Ended {
    Reader(EndReason),
    Writer(Option<EndReason>),
}

/// Who a connection was authenticated as, and how to verify the tokens its
/// client sends to refresh it.
pub(crate) struct Session {
    pub authenticator: Arc<dyn Authenticator>,
    /// The identity now in force; its `expires_at` is the deadline.
    pub identity: Identity,
}

/// Runs one registered connection to its end: spawns the writer, reads until
/// something ends the connection, and makes sure the writer is gone.
///
/// A plain `fn` returning an `async move` block (as [`write_loop`]): this
/// future lives inside the connection's task for the connection's whole
/// life, and an `async fn` would keep every argument twice in it.
// Not an `async fn`, on purpose (see above).
#[allow(clippy::manual_async_fn)]
pub(crate) fn drive<'a, S: WireSocket>(
    (sink, mut stream): (SplitSink<S, WireMessage>, SplitStream<S>),
    outbound: OutboundReceiver,
    context: InboundContext,
    config: &'a TransportConfig,
    handler: Arc<dyn MessageHandler>,
    session: &'a mut Session,
    counters: &'a TransportCounters,
) -> impl Future<Output = EndReason> + 'a {
    // The writer is spawned here, when `serve` calls this right before
    // awaiting it, so that this future does not keep the writer's sink and
    // queue among its captures for the connection's whole life.
    let written = Arc::new(Written::default());
    let mut writer = tokio::spawn(write_loop(
        sink,
        outbound,
        context.socket().clone(),
        WriterSettings::new(config),
        Arc::clone(&written),
    ));
    async move {
        let mut reader = Reader {
            context: &context,
            config,
            handler: &handler,
            session,
            written: &written,
            rate: config
                .inbound_rate()
                .map(|limit| TokenBucket::new(limit, std::time::Instant::now())),
            counters,
        };
        let (end, ended_by_writer) = match reader.run(&mut stream, &mut writer).await {
            Ended::Writer(end) => (
                end.unwrap_or_else(|| EndReason::TransportError {
                    error: "writer task ended abnormally".to_owned(),
                }),
                true,
            ),
            Ended::Reader(end) => {
                let (reason, after) = closing(&end);
                stop_writer(context.socket(), reason, after, config, &mut writer).await;
                (end, false)
            }
        };
        let discarded = context.socket().discarded_at_close();
        if discarded > 0 {
            tracing::info!(connection = %context.connection_id(), user = %context.user_id(),
                discarded_at_close = discarded, %end,
                "frames the queue had accepted were dropped unwritten at close");
        }

        // The server closed: give the client the time of the close handshake to
        // answer, so it sees a clean close rather than a reset.
        if ended_by_writer && let EndReason::ServerClosed { .. } = end {
            let _ = tokio::time::timeout(config.close_timeout(), async {
                while let Some(Ok(message)) = stream.next().await {
                    if matches!(message, WireMessage::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
        end
    }
}

/// What the close frame may follow.
#[derive(Clone, Copy)]
enum After {
    /// The frames the queue has accepted.
    Queued,
    /// Nothing: queued frames are dropped (and counted).
    Nothing,
}

/// Closes the socket so the writer sends the close frame (or flushes the
/// reply to the client's own close) and stops. With [`After::Queued`], the
/// writer first writes what was queued, for at most the close timeout; then
/// (or at once) the close is abrupt, and may take no longer than one write
/// and one close handshake.
async fn stop_writer(
    socket: &WebSocketHandle,
    reason: CloseReason,
    after: After,
    config: &TransportConfig,
    writer: &mut tokio::task::JoinHandle<EndReason>,
) {
    if let After::Queued = after
        && socket.close_after_queued(reason.clone())
        && tokio::time::timeout(config.close_timeout(), &mut *writer)
            .await
            .is_ok()
    {
        return;
    }
    // Drops what is still queued (counted in `discarded_at_close`).
    socket.close(reason);
    let bound = config.close_timeout() + config.write_timeout();
    if tokio::time::timeout(bound, &mut *writer).await.is_err() {
        writer.abort();
    }
}

/// The close frame for a connection the reader ended, and what it may
/// follow: what the queue accepted, when the client's data decided the
/// close (RFC 6455 lets data precede a close); nothing when the client
/// closed or is gone (tungstenite then sends only its close reply), is
/// idle, or its token expired (nothing more is owed to it).
fn closing(end: &EndReason) -> (CloseReason, After) {
    match end {
        EndReason::ClientClosed { .. } | EndReason::Disconnected => {
            (close::client_gone(), After::Nothing)
        }
        EndReason::MessageTooLarge { .. } => (close::message_too_big(), After::Queued),
        EndReason::HeartbeatTimeout => (close::heartbeat_timeout(), After::Nothing),
        EndReason::InvalidPayload { .. } => (close::invalid_payload(), After::Queued),
        EndReason::ProtocolViolation { .. } => (close::protocol_error(), After::Queued),
        EndReason::BinaryRefused => (close::binary_refused(), After::Queued),
        EndReason::TooManyInvalidMessages => (close::too_many_invalid_messages(), After::Queued),
        EndReason::MessageRateExceeded => (close::message_rate_exceeded(), After::Queued),
        EndReason::TokenExpired => (close::token_expired(), After::Nothing),
        // Not the reader's: the writer's ends and a refused registration.
        EndReason::TransportError { .. }
        | EndReason::ServerClosed { .. }
        | EndReason::WriteStalled
        | EndReason::Refused { .. } => (close::transport_error(), After::Nothing),
    }
}

/// The reading half of a connection.
struct Reader<'a> {
    context: &'a InboundContext,
    config: &'a TransportConfig,
    handler: &'a Arc<dyn MessageHandler>,
    /// Borrowed from `serve`'s future: one copy for the connection.
    session: &'a mut Session,
    written: &'a Written,
    /// The connection's inbound rate, if limited.
    rate: Option<TokenBucket>,
    counters: &'a TransportCounters,
}

/// Counts the error frames sent in the current window.
struct ErrorBudget {
    window_start: Instant,
    sent: u32,
}

impl Reader<'_> {
    async fn run<St>(
        &mut self,
        stream: &mut St,
        writer: &mut tokio::task::JoinHandle<EndReason>,
    ) -> Ended
    where
        St: Stream<Item = Result<WireMessage, WireError>> + Unpin,
    {
        let config = self.config;
        let idle = tokio::time::sleep(config.idle_timeout());
        tokio::pin!(idle);
        let expiry = tokio::time::sleep(until(self.session.identity.expires_at));
        tokio::pin!(expiry);
        let mut budget = ErrorBudget {
            window_start: Instant::now(),
            sent: 0,
        };
        loop {
            tokio::select! {
                biased;
                exit = &mut *writer => return Ended::Writer(exit.ok()),
                () = &mut expiry, if self.session.identity.expires_at.is_some() => {
                    return Ended::Reader(EndReason::TokenExpired);
                }
                item = stream.next() => {
                    idle.as_mut().reset(Instant::now() + config.idle_timeout());
                    if let Some(Ok(WireMessage::Text(_) | WireMessage::Binary(_))) = &item
                        && let Some(rate) = &mut self.rate
                        && !rate.try_take(std::time::Instant::now())
                    {
                        TransportCounters::add(&self.counters.messages_rate_limited);
                        let refusal = InboundError::new(
                            InboundError::RATE_LIMITED,
                            "over the connection's message rate; slow down",
                        );
                        if !self.answer(&mut budget, &refusal) {
                            TransportCounters::add(&self.counters.closed_for_message_rate);
                            return Ended::Reader(EndReason::MessageRateExceeded);
                        }
                        continue;
                    }
                    let message = match item {
                        Some(Ok(WireMessage::Text(text))) => match control::client_control(text.as_str()) {
                            None => InboundMessage::Text(text),
                            Some(ClientControl::Heartbeat) => continue,
                            Some(ClientControl::RefreshToken(token)) => {
                                let bounded = self.session.identity.expires_at.is_some();
                                let refused = tokio::select! {
                                    biased;
                                    // The old deadline wins over a refresh in flight.
                                    () = &mut expiry, if bounded => {
                                        return Ended::Reader(EndReason::TokenExpired);
                                    }
                                    // Boxed: once per token, and inline it would
                                    // take its room in every connection's future.
                                    refused = Box::pin(self.refresh(&token)) => refused,
                                };
                                match refused {
                                    None => expiry
                                        .as_mut()
                                        .reset(Instant::now() + until(self.session.identity.expires_at)),
                                    Some(refusal) => {
                                        if !self.answer(&mut budget, &refusal) {
                                            return Ended::Reader(EndReason::TooManyInvalidMessages);
                                        }
                                    }
                                }
                                continue;
                            }
                            Some(ClientControl::MalformedRefresh) => {
                                let refusal = InboundError::new(
                                    InboundError::INVALID_MESSAGE,
                                    "`refresh_token` needs a string member `token`",
                                );
                                if !self.answer(&mut budget, &refusal) {
                                    return Ended::Reader(EndReason::TooManyInvalidMessages);
                                }
                                continue;
                            }
                        },
                        Some(Ok(WireMessage::Binary(bytes))) => {
                            if !config.binary_messages() {
                                return Ended::Reader(EndReason::BinaryRefused);
                            }
                            InboundMessage::Binary(bytes)
                        }
                        Some(Ok(WireMessage::Ping(_) | WireMessage::Pong(_))) => continue,
                        Some(Ok(WireMessage::Close(reason))) => {
                            return Ended::Reader(EndReason::ClientClosed { code: reason.map(|r| r.code) });
                        }
                        Some(Err(WireError::MessageTooLarge { size, max })) => {
                            return Ended::Reader(EndReason::MessageTooLarge { size, max });
                        }
                        Some(Err(WireError::InvalidPayload(error))) => {
                            return Ended::Reader(EndReason::InvalidPayload { error });
                        }
                        Some(Err(WireError::Protocol(error))) => {
                            return Ended::Reader(EndReason::ProtocolViolation { error });
                        }
                        Some(Err(WireError::Closed)) | None => return Ended::Reader(EndReason::Disconnected),
                        Some(Err(error)) => {
                            return Ended::Reader(EndReason::TransportError { error: error.to_string() });
                        }
                    };
                    let accepted = self.context.socket().accepted_frames();
                    if let Some(rejection) = dispatch(self.handler, self.context, message).await
                        && !self.answer(&mut budget, &rejection)
                    {
                        return Ended::Reader(EndReason::TooManyInvalidMessages);
                    }
                    // The handler answered: its replies are written before
                    // the next read, as a plain echo loop would (a close
                    // read next would otherwise overtake them).
                    // (Boxed: rare, and inline its timer would take its room
                    // in every connection's future for the connection's life.)
                    let replied = self.context.socket().accepted_frames();
                    if replied > accepted && !self.written.reached(replied) {
                        Box::pin(self.written.wait_for(replied, config.close_timeout())).await;
                    }
                }
                () = &mut idle => return Ended::Reader(EndReason::HeartbeatTimeout),
            }
        }
    }

    /// Verifies a token the client sent to extend the connection; on
    /// success the session takes the new identity (and deadline) and the
    /// client is told `token_refreshed`. Returns the error frame to send
    /// for a refusal.
    async fn refresh(&mut self, token: &str) -> Option<InboundError> {
        let current = &self.session.identity;
        let verified = AssertUnwindSafe(self.session.authenticator.refresh(current, token))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                tracing::error!(connection = %self.context.connection_id(),
                    "authenticator panicked on a token refresh");
                Err(RefreshError::Invalid("the authenticator panicked".into()))
            })
            .and_then(|identity| {
                // Whatever the authenticator says, a connection never
                // changes user, and a deadline in the past is no refresh.
                if identity.user_id != current.user_id {
                    Err(RefreshError::OtherUser)
                } else if identity
                    .expires_at
                    .is_some_and(|at| at <= SystemTime::now())
                {
                    Err(RefreshError::Expired)
                } else {
                    Ok(identity)
                }
            });
        match verified {
            Ok(identity) => {
                tracing::debug!(connection = %self.context.connection_id(),
                    user = %self.context.user_id(), expires_at = ?identity.expires_at,
                    "token refreshed in-band");
                let frame = control::token_refreshed_frame(identity.expires_at);
                self.session.identity = identity;
                if let Err(error) = self.context.socket().try_send(frame) {
                    tracing::debug!(connection = %self.context.connection_id(), %error,
                        "token_refreshed frame not queued");
                }
                None
            }
            Err(error) => {
                tracing::info!(connection = %self.context.connection_id(),
                    user = %self.context.user_id(), %error,
                    "in-band token refresh refused; the old deadline stays");
                Some(InboundError::new(
                    InboundError::TOKEN_REFRESH_REFUSED,
                    error.reason(),
                ))
            }
        }
    }

    /// Sends the error frame for a rejected message; `false` once the
    /// window's budget is spent (the connection is then closed).
    fn answer(&self, budget: &mut ErrorBudget, rejection: &InboundError) -> bool {
        let now = Instant::now();
        if now.duration_since(budget.window_start) >= self.config.error_frame_window() {
            budget.window_start = now;
            budget.sent = 0;
        }
        if budget.sent >= self.config.error_frame_limit() {
            tracing::info!(connection = %self.context.connection_id(), user = %self.context.user_id(),
                "too many invalid messages; closing with 1008");
            return false;
        }
        budget.sent += 1;
        let frame = crate::connection::TextFrame::from_string(rejection.to_json().to_string());
        if let Err(error) = self.context.socket().try_send(frame) {
            tracing::debug!(connection = %self.context.connection_id(), %error,
                "error frame not queued");
        }
        true
    }
}

/// The deadline of a connection without an expiry (its branch is disabled).
const NO_EXPIRY: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long until `deadline` (zero if it passed; [`NO_EXPIRY`] without one).
fn until(deadline: Option<SystemTime>) -> Duration {
    deadline.map_or(NO_EXPIRY, |at| {
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    })
}

/// Hands one message to the application. An error or a panic is logged;
/// the connection goes on. Returns the handler's [`InboundError`], which
/// the client is told about.
async fn dispatch(
    handler: &Arc<dyn MessageHandler>,
    context: &InboundContext,
    message: InboundMessage,
) -> Option<InboundError> {
    match AssertUnwindSafe(handler.on_message(context.clone(), message))
        .catch_unwind()
        .await
    {
        Ok(Ok(())) => None,
        Ok(Err(error)) => match error.downcast::<InboundError>() {
            Ok(rejection) => {
                tracing::debug!(connection = %context.connection_id(), user = %context.user_id(), %rejection,
                    "inbound message rejected");
                Some(*rejection)
            }
            Err(error) => {
                tracing::warn!(connection = %context.connection_id(), user = %context.user_id(), %error,
                    "message handler failed; the connection stays open");
                None
            }
        },
        Err(_) => {
            tracing::error!(connection = %context.connection_id(), user = %context.user_id(),
                "message handler panicked; the connection stays open");
            None
        }
    }
}

enum WriteFailure {
    /// The manager closed the socket while a write was stuck.
    ClosedWhileStalled(CloseReason),
    TimedOut,
    Failed(String),
}

/// What the writer needs of the [`TransportConfig`]: a copy of four
/// fields rather than a clone of the whole config (176 bytes), since the
/// writer's future is allocated once per connection and lives as long; the
/// durations in nanoseconds (8 bytes each rather than 16; 584 years at
/// most).
#[derive(Clone, Copy)]
struct WriterSettings {
    ping_interval: u64,
    write_timeout: u64,
    close_timeout: u64,
    heartbeats: bool,
}

/// `duration` in nanoseconds, at most `u64::MAX`.
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl WriterSettings {
    fn new(config: &TransportConfig) -> Self {
        WriterSettings {
            ping_interval: nanos(config.ping_interval()),
            write_timeout: nanos(config.write_timeout()),
            close_timeout: nanos(config.close_timeout()),
            heartbeats: config.heartbeat_frames(),
        }
    }

    fn write_timeout(&self) -> Duration {
        Duration::from_nanos(self.write_timeout)
    }

    fn close_timeout(&self) -> Duration {
        Duration::from_nanos(self.close_timeout)
    }

    /// The writer's timer period. With heartbeat frames the timer ticks
    /// twice per ping interval: a ping at every second tick, and a
    /// heartbeat at any tick when no frame was written since the tick
    /// before. A frame written just after a tick is then followed by
    /// another (a heartbeat at the latest) within two ticks, one ping
    /// interval: the bound `docs/protocol.md` promises. (One tick per
    /// interval would leave gaps of up to two intervals.)
    fn tick_period(&self) -> Duration {
        let ping_interval = Duration::from_nanos(self.ping_interval);
        if self.heartbeats {
            ping_interval / 2
        } else {
            ping_interval
        }
    }
}

/// `at` plus `period`, or far in the future if that overflows.
fn later(at: Instant, period: Duration) -> Instant {
    at.checked_add(period)
        .or_else(|| at.checked_add(Duration::from_secs(86_400 * 365 * 30)))
        .unwrap_or(at)
}

/// When the writer's timer, due at `due`, ticks next (it is `now`): one
/// period after `due`, or, when the tick came more than 5 ms late, one
/// period after `now` (as `tokio::time::Interval` with
/// `MissedTickBehavior::Delay`: late ticks are not made up in a burst).
fn next_tick(due: Instant, now: Instant, period: Duration) -> Instant {
    if due
        .checked_add(Duration::from_millis(5))
        .is_some_and(|late| now > late)
    {
        later(now, period)
    } else {
        later(due, period)
    }
}

/// The writer task. A plain `fn` returning an `async move` block rather
/// than an `async fn`: an `async fn` keeps each argument twice in its
/// future (as captured and as a local), and this future is allocated once
/// per connection for the connection's whole life.
// Not an `async fn`, on purpose (see above).
#[allow(clippy::manual_async_fn)]
fn write_loop<K>(
    mut sink: K,
    mut outbound: OutboundReceiver,
    socket: WebSocketHandle,
    config: WriterSettings,
    written: Arc<Written>,
) -> impl Future<Output = EndReason>
where
    K: Sink<WireMessage, Error = WireError> + Unpin,
{
    async move {
        // The timer (see `tick_period`) inline, not a
        // `tokio::time::Interval`, which boxes its timer (112 bytes, 128 with
        // malloc's header, per connection); it ticks as an interval with
        // `MissedTickBehavior::Delay` would.
        let heartbeats = config.heartbeats;
        let timer = tokio::time::sleep_until(later(Instant::now(), config.tick_period()));
        let mut timer = std::pin::pin!(timer);
        // With heartbeat frames, a ping at every second tick.
        let mut ping_at_next_tick = false;
        let mut wrote_since_tick = false;
        let mut events = Vec::new();
        loop {
            let mut ping_due = false;
            let mut heartbeat_due = false;
            tokio::select! {
                biased;
                n = outbound.recv_many(&mut events, MAX_BATCH) => {
                    if n == 0 {
                        // Every handle is gone without a close: close normally.
                        events.push(OutboundEvent::Close(CloseReason::normal()));
                    }
                },
                () = timer.as_mut() => {
                    let next = next_tick(timer.deadline(), Instant::now(), config.tick_period());
                    timer.as_mut().reset(next);
                    ping_due = !heartbeats || ping_at_next_tick;
                    ping_at_next_tick = !ping_at_next_tick;
                    if ping_due {
                        // Quiet or not, a burst's buffer kept for the next burst
                        // is given back once per ping interval.
                        outbound.release_idle_buffer();
                    }
                    // The heartbeat sent now counts as the next interval's frame.
                    heartbeat_due = heartbeats && !wrote_since_tick;
                    wrote_since_tick = heartbeat_due;
                }
            }
            let batch = Batch {
                events: &mut events,
                outbound: &mut outbound,
                ping: ping_due,
                heartbeat: heartbeat_due,
                wrote: &mut wrote_since_tick,
                written: &written,
            };
            let result = write_bounded(&mut sink, batch, &socket, config.write_timeout()).await;
            events.clear();
            let reason = match result {
                Ok(None) => continue,
                // The close wins over frames still queued, as documented on
                // `OutboundEvent::Close` (frames already fed go out first).
                Ok(Some(reason)) | Err(WriteFailure::ClosedWhileStalled(reason)) => reason,
                Err(WriteFailure::TimedOut) => {
                    // Abrupt on purpose, like the slow-consumer close: the
                    // client is not reading, so what is queued could not be
                    // written anyway; it is dropped (and counted).
                    socket.close(close::write_timeout());
                    tracing::warn!(socket = %socket.id(), timeout = ?config.write_timeout(),
                        "write stalled; dropping the socket");
                    return EndReason::WriteStalled;
                }
                Err(WriteFailure::Failed(error)) => {
                    socket.close(close::transport_error());
                    return EndReason::TransportError { error };
                }
            };
            // Boxed: once per connection, and it would otherwise take its
            // room in the writer's future for the connection's whole life.
            Box::pin(send_close(
                &mut sink,
                reason.clone(),
                config.close_timeout(),
            ))
            .await;
            return server_closed(reason);
        }
    }
}

fn server_closed(reason: CloseReason) -> EndReason {
    EndReason::ServerClosed {
        code: reason.code,
        reason: reason.reason.into_owned(),
    }
}

/// What the writer has to write: the events it took, more from the queue
/// as they come, and a ping and a heartbeat frame when they are due.
struct Batch<'a> {
    events: &'a mut Vec<OutboundEvent>,
    outbound: &'a mut OutboundReceiver,
    ping: bool,
    heartbeat: bool,
    /// Set when a frame of the queue was fed.
    wrote: &'a mut bool,
    /// Told how many frames each flush wrote.
    written: &'a Written,
}

/// Writes a batch and flushes once, giving up after `limit`, or as soon as
/// the socket is closed while the write cannot progress. `Some` close
/// reason when the batch ended with the close.
///
/// (This and [`write_batch`] are plain `fn`s returning `async move`
/// blocks, as [`write_loop`] is: an `async fn` would keep its arguments
/// twice in the writer's future.)
#[allow(clippy::manual_async_fn)]
fn write_bounded<'a, K>(
    sink: &'a mut K,
    batch: Batch<'a>,
    socket: &'a WebSocketHandle,
    limit: Duration,
) -> impl Future<Output = Result<Option<CloseReason>, WriteFailure>> + 'a
where
    K: Sink<WireMessage, Error = WireError> + Unpin,
{
    async move {
        let written = |result: Result<Option<CloseReason>, WireError>| {
            result.map_err(|error| WriteFailure::Failed(error.to_string()))
        };
        let mut write = std::pin::pin!(write_batch(sink, batch));
        // Most batches are written at once (the socket's send buffer has room):
        // only a write that has to wait arms the write timeout and waits for a
        // close, which saves a clock read and a timer handle per flush.
        if let Poll::Ready(result) =
            std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await
        {
            return written(result);
        }
        // A close waiting for the queued frames does not cut their write short;
        // `stop_writer` makes it abrupt after the close timeout. The deadline is
        // boxed: only this slow path needs one, and inline it would take its
        // room in every writer's future for the connection's whole life.
        let close_requested = std::future::poll_fn(|cx| socket.poll_abrupt_close(cx));
        let deadline = Box::pin(tokio::time::sleep(limit));
        tokio::select! {
            biased;
            result = write => written(result),
            () = deadline => Err(WriteFailure::TimedOut),
            reason = close_requested => Err(WriteFailure::ClosedWhileStalled(reason)),
        }
    }
}

/// Feeds the batch's frames, then whatever arrived meanwhile (up to
/// [`MAX_FLUSH`] frames), and flushes once. Stops at a close, which it
/// returns without flushing (`send_close` flushes with the close frame).
fn write_batch<'a, K>(
    sink: &'a mut K,
    batch: Batch<'a>,
) -> impl Future<Output = Result<Option<CloseReason>, WireError>> + 'a
where
    K: Sink<WireMessage, Error = WireError> + Unpin,
{
    let Batch {
        events,
        outbound,
        ping,
        heartbeat,
        wrote,
        written,
    } = batch;
    async move {
        // `ready` then `start_send` is what `feed` does, but the message is
        // made (and an event taken from the batch) only once the sink is
        // ready: the future keeps no message and no iterator across the
        // wait, which saves about a hundred bytes in every writer's future.
        if ping {
            ready(sink).await?;
            sink.start_send_unpin(WireMessage::Ping(Bytes::new()))?;
        }
        if heartbeat {
            ready(sink).await?;
            sink.start_send_unpin(WireMessage::Text(control::heartbeat_frame()))?;
        }
        let mut fed = 0;
        loop {
            // Taken from the back, in order.
            events.reverse();
            while let Some(next) = events.last() {
                // A close comes alone and ends the queue; it is returned
                // without waiting for the sink.
                if let OutboundEvent::Close(_) = next {
                    if let Some(OutboundEvent::Close(reason)) = events.pop() {
                        return Ok(Some(reason));
                    }
                    break;
                }
                ready(sink).await?;
                match events.pop() {
                    Some(OutboundEvent::Frame(frame)) => {
                        *wrote = true;
                        sink.start_send_unpin(WireMessage::Text(frame))?;
                    }
                    Some(OutboundEvent::Binary(bytes)) => {
                        *wrote = true;
                        sink.start_send_unpin(WireMessage::Binary(bytes))?;
                    }
                    Some(OutboundEvent::Close(reason)) => return Ok(Some(reason)),
                    None => break,
                }
                fed += 1;
            }
            if fed >= MAX_FLUSH || outbound.try_recv_many(events, MAX_BATCH) == 0 {
                break;
            }
        }
        sink.flush().await?;
        written.add(fed as u64);
        Ok(None)
    }
}

/// Ready once `sink` can take a message.
fn ready<K>(sink: &mut K) -> impl Future<Output = Result<(), WireError>> + '_
where
    K: Sink<WireMessage, Error = WireError> + Unpin,
{
    std::future::poll_fn(move |cx| sink.poll_ready_unpin(cx))
}

/// Sends a close frame and flushes, within `limit`. After the client's own
/// close the frame is refused (the reply is already queued); the second
/// `close` then flushes that reply.
async fn send_close<K>(sink: &mut K, reason: CloseReason, limit: Duration)
where
    K: Sink<WireMessage, Error = WireError> + Unpin,
{
    let _ = tokio::time::timeout(limit, async {
        if sink.send(WireMessage::Close(Some(reason))).await.is_err() {
            let _ = sink.close().await;
        }
        let _ = sink.close().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;
    use crate::connection::{QueueLimits, TextFrame};

    /// A sink that records what it is fed and counts its flushes.
    #[derive(Default)]
    struct Recording {
        fed: Vec<WireMessage>,
        flushes: usize,
    }

    impl Sink<WireMessage> for Recording {
        type Error = WireError;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WireError>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(mut self: Pin<&mut Self>, item: WireMessage) -> Result<(), WireError> {
            self.fed.push(item);
            Ok(())
        }
        fn poll_flush(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Result<(), WireError>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WireError>> {
            Poll::Ready(Ok(()))
        }
    }

    fn frame(n: usize) -> TextFrame {
        TextFrame::from_string(format!("frame {n}"))
    }

    #[tokio::test]
    async fn a_burst_is_fed_whole_and_flushed_once() {
        let (socket, mut outbound) = WebSocketHandle::channel(QueueLimits::new(4096, 1 << 20));
        for n in 0..1500 {
            socket.try_send(frame(n)).unwrap();
        }
        let mut sink = Recording::default();
        let mut events = Vec::new();
        assert_eq!(outbound.recv_many(&mut events, MAX_BATCH).await, MAX_BATCH);
        let batch = Batch {
            events: &mut events,
            outbound: &mut outbound,
            ping: false,
            heartbeat: false,
            wrote: &mut false,
            written: &Written::default(),
        };
        assert_eq!(write_batch(&mut sink, batch).await.unwrap(), None);
        // Everything queued went out with one flush, up to MAX_FLUSH frames.
        assert_eq!(sink.flushes, 1);
        assert_eq!(sink.fed.len(), MAX_FLUSH);
        assert_eq!(
            sink.fed[MAX_FLUSH - 1],
            WireMessage::Text(frame(MAX_FLUSH - 1))
        );
        assert_eq!(socket.queue_depth(), 1500 - MAX_FLUSH);
    }

    #[tokio::test(start_paused = true)]
    async fn the_writer_gives_back_a_kept_burst_buffer_at_its_next_ping() {
        let config = TransportConfig::builder()
            .ping_interval(Duration::from_secs(5))
            .build()
            .unwrap();
        let (socket, outbound) = WebSocketHandle::channel(QueueLimits::default());
        let writer = tokio::spawn(write_loop(
            Recording::default(),
            outbound,
            socket.clone(),
            WriterSettings::new(&config),
            Arc::default(),
        ));
        for burst in 0..2 {
            for n in 0..20 {
                socket.try_send(frame(burst * 20 + n)).unwrap();
            }
            while socket.queue_depth() > 0 {
                tokio::task::yield_now().await;
            }
        }
        assert!(
            socket.queue_capacity() > 4,
            "back-to-back bursts keep their buffer"
        );
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(
            socket.queue_capacity() <= 4,
            "released at the ping: {} slots",
            socket.queue_capacity()
        );
        writer.abort();
    }

    /// The writer's future is allocated once per connection and lives as
    /// long: 1,216 bytes when it cloned the whole config and kept each
    /// argument twice (an `async fn`) and its write timeout inline; 632
    /// with `WriterSettings`, `fn` + `async move` and the timeout boxed on
    /// the slow path; 472 since `write_batch` keeps no message across a
    /// wait (on a tokio-tungstenite socket); 536 with its timer inline
    /// rather than a `tokio::time::Interval`, which allocated 112 bytes per
    /// connection, and the settings in nanoseconds. Tokio allocates a task
    /// as the future plus 104 bytes rounded up to 128: 536 is the most that
    /// keeps the writer's task at 640 bytes.
    /// The writer's timer ticks as `tokio::time::Interval` with
    /// `MissedTickBehavior::Delay` did: one period after the tick it was
    /// due, unless it came more than 5 ms late, then one period after now.
    #[test]
    fn the_writer_timer_delays_missed_ticks() {
        let due = Instant::now();
        let period = Duration::from_secs(10);
        let on_time = due + Duration::from_millis(5);
        assert_eq!(next_tick(due, on_time, period), due + period);
        let late = due + Duration::from_secs(25);
        assert_eq!(next_tick(due, late, period), late + period);
        assert!(later(due, Duration::MAX) > due);
    }

    #[cfg(feature = "tungstenite")]
    #[tokio::test]
    async fn the_writer_future_stays_small() {
        use crate::transport::tungstenite_socket::TungsteniteSocket;
        let (server, _client) = tokio::io::duplex(64);
        let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
            server,
            tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let (sink, _stream) = TungsteniteSocket::new(socket).split();
        let (handle, outbound) = WebSocketHandle::channel(QueueLimits::default());
        let writer = write_loop(
            sink,
            outbound,
            handle,
            WriterSettings::new(&TransportConfig::default()),
            Arc::default(),
        );
        let size = std::mem::size_of_val(&writer);
        assert!(size <= 536, "the writer's future is {size} bytes");
    }

    #[tokio::test]
    async fn a_close_met_while_draining_stops_the_batch_unflushed() {
        let (socket, mut outbound) = WebSocketHandle::channel(QueueLimits::default());
        socket.try_send(frame(0)).unwrap();
        let mut events = Vec::new();
        outbound.recv_many(&mut events, MAX_BATCH).await;
        socket.try_send(frame(1)).unwrap();
        socket.close(CloseReason::going_away());
        let mut sink = Recording::default();
        let batch = Batch {
            events: &mut events,
            outbound: &mut outbound,
            ping: true,
            heartbeat: false,
            wrote: &mut false,
            written: &Written::default(),
        };
        let close = write_batch(&mut sink, batch).await.unwrap();
        assert_eq!(close, Some(CloseReason::going_away()));
        // The ping and the frame taken before the close; the frame queued
        // behind the close is dropped; the close frame flushes them.
        assert_eq!(
            sink.fed,
            vec![WireMessage::Ping(Bytes::new()), WireMessage::Text(frame(0))]
        );
        assert_eq!(sink.flushes, 0);
    }
}
