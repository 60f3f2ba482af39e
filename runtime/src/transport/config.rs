//! [`TransportConfig`]: heartbeat, size limits, timeouts and queue bounds of
//! every connection a [`WebSocketService`](super::WebSocketService) drives.

use std::time::Duration;

use serde::Serialize;

use super::admission::RateLimit;
use crate::config::ManagerConfig;
use crate::connection::QueueLimits;

/// A transport setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid transport configuration: `{field}` {problem}")]
pub struct TransportConfigError {
    /// The field.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: &'static str,
}

/// Per-connection settings of the transport.
///
/// | setting | default | meaning |
/// |---|---|---|
/// | `ping_interval` | 25 s | the server sends a ping this often |
/// | `idle_timeout` | 60 s | a connection from which nothing (no message, no pong) arrived for this long is closed (code 4408) and removed |
/// | `max_message_size` | 64 KiB | a larger inbound message closes the socket with 1009; at most `queue_limits`' byte bound |
/// | `max_frame_size` | 64 KiB | a larger inbound frame closes the socket with 1009 |
/// | `write_timeout` | 10 s | one write may stall this long before the socket is dropped |
/// | `close_timeout` | 2 s | how long to wait for the peer's side of the close handshake |
/// | `queue_limits` | the manager's | each connection's outbound queue: by default what the manager asks for (a reference manager: its [`ManagerConfig`]'s, 1,024 frames / 8 MiB by default; another manager: 1,024 / 8 MiB); set here only for a manager of your own |
/// | `read_buffer_size` | 4 KiB | tungstenite's read buffer of each socket (its own default, 128 KiB, costs 128 KiB per idle connection) |
/// | `write_buffer_size` | 16 KiB | frames are gathered up to this size before a write (every batch is flushed anyway); allocated at the first write, and a socket keeps up to this much after a burst |
/// | `header_read_timeout` | 10 s | an upgrade request whose head (or answer) takes longer is dropped, so stalled upgrades cannot pile up |
/// | `binary_messages` | refused | an inbound binary message closes the socket with 1003, unless allowed |
/// | `error_frames` | 10 per 10 s | invalid inbound messages answered with an error frame; more within the window close the socket with 1008 |
/// | `hello_frame` | on | the protocol's `hello` frame, written first on every connection (user, connection id, token expiry, stream offset, retention; `docs/protocol.md`); off only for clients that do not speak the protocol (a plain echo server) |
/// | `inbound_rate` | none | each connection's messages per second (token bucket); a message over it is answered with an error frame `rate_limited` and not handled, and past the error-frame budget the connection is closed with 1008 `message rate exceeded` |
/// | `heartbeat_frames` | on | a `{"type":"heartbeat","ts":...}` text frame on the ping timer when nothing else was written, so a browser (which cannot see pings) receives a frame at least every `ping_interval` |
///
/// The heartbeat follows socket.io's habit: a client that answers pings (every
/// browser and WebSocket library does so by itself) is never idle; a client
/// whose network vanished stops answering and is removed after
/// `idle_timeout`, which must be longer than `ping_interval`.
///
/// ```
/// use std::time::Duration;
/// use websocket_manager::transport::TransportConfig;
/// let config = TransportConfig::builder()
///     .ping_interval(Duration::from_secs(10))
///     .idle_timeout(Duration::from_secs(30))
///     .build()?;
/// assert_eq!(config.max_message_size(), 64 * 1024);
/// assert!(TransportConfig::builder()
///     .ping_interval(Duration::from_secs(30))
///     .idle_timeout(Duration::from_secs(10))
///     .build()
///     .is_err());
/// # Ok::<(), websocket_manager::transport::TransportConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransportConfig {
    #[serde(serialize_with = "millis")]
    ping_interval: Duration,
    #[serde(serialize_with = "millis")]
    idle_timeout: Duration,
    max_message_size: usize,
    max_frame_size: usize,
    #[serde(serialize_with = "millis")]
    write_timeout: Duration,
    #[serde(serialize_with = "millis")]
    close_timeout: Duration,
    queue_limits: Option<QueueLimits>,
    read_buffer_size: usize,
    write_buffer_size: usize,
    #[serde(serialize_with = "millis")]
    header_read_timeout: Duration,
    binary_messages: bool,
    error_frame_limit: u32,
    #[serde(serialize_with = "millis")]
    error_frame_window: Duration,
    heartbeat_frames: bool,
    hello_frame: bool,
    inbound_rate: Option<RateLimit>,
}

/// Default of [`TransportConfig::header_read_timeout`].
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            max_message_size: 64 * 1024,
            max_frame_size: 64 * 1024,
            write_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            queue_limits: None,
            read_buffer_size: 4 * 1024,
            write_buffer_size: 16 * 1024,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            binary_messages: false,
            error_frame_limit: 10,
            error_frame_window: Duration::from_secs(10),
            heartbeat_frames: true,
            hello_frame: true,
            inbound_rate: None,
        }
    }
}

impl TransportConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> TransportConfigBuilder {
        TransportConfigBuilder {
            config: TransportConfig::default(),
        }
    }

    /// How often the server pings.
    pub fn ping_interval(&self) -> Duration {
        self.ping_interval
    }

    /// Silence after which a connection is closed and removed.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Largest inbound message, in bytes.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// Largest inbound frame, in bytes.
    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    /// How long one write may stall.
    pub fn write_timeout(&self) -> Duration {
        self.write_timeout
    }

    /// How long to wait for the peer's close frame.
    pub fn close_timeout(&self) -> Duration {
        self.close_timeout
    }

    /// Bounds of each connection's outbound queue, when set here; `None`
    /// (the default) lets the service take them from its manager (the
    /// reference managers' [`ManagerConfig`]; see
    /// [`DynManager::queue_limits`](crate::DynManager::queue_limits)), so a
    /// manager configured once configures its sockets too.
    pub fn queue_limits(&self) -> Option<QueueLimits> {
        self.queue_limits
    }

    /// Initial size of each socket's read buffer, in bytes (it grows for a
    /// larger message and is the main per-connection cost of an idle socket).
    pub fn read_buffer_size(&self) -> usize {
        self.read_buffer_size
    }

    /// Bytes gathered before a write to the socket (each batch is flushed).
    ///
    /// The writer feeds a whole burst before it flushes, so a larger buffer
    /// means fewer writes: 16 KiB reached the bare tokio-tungstenite server's
    /// throughput (its 128 KiB default) in `benches/transport_e2e.rs`, where
    /// 4 KiB gave 0.79x to 0.86x. The buffer is allocated at the first write
    /// (an idle socket holds none) and keeps the size a burst needed.
    pub fn write_buffer_size(&self) -> usize {
        self.write_buffer_size
    }

    /// How long an upgrade request may take from the accepted connection to
    /// the server's answer (its head must arrive within it).
    pub fn header_read_timeout(&self) -> Duration {
        self.header_read_timeout
    }

    /// Whether inbound binary messages reach the handler (else: close 1003).
    pub fn binary_messages(&self) -> bool {
        self.binary_messages
    }

    /// At most this many error frames are sent per [`error_frame_window`](Self::error_frame_window);
    /// one more invalid message closes the socket with 1008.
    pub fn error_frame_limit(&self) -> u32 {
        self.error_frame_limit
    }

    /// The window of [`error_frame_limit`](Self::error_frame_limit).
    pub fn error_frame_window(&self) -> Duration {
        self.error_frame_window
    }

    /// Whether the server sends application-level heartbeat frames
    /// (`{"type":"heartbeat","ts":<unix ms>}`) on an idle connection: at
    /// least one frame reaches the client every
    /// [`ping_interval`](Self::ping_interval), which a browser can watch
    /// (it cannot see WebSocket pings). See `docs/protocol.md`.
    pub fn heartbeat_frames(&self) -> bool {
        self.heartbeat_frames
    }

    /// How many messages per second each connection may send (every text or
    /// binary message counts, the protocol's own included; pings do not).
    pub fn inbound_rate(&self) -> Option<RateLimit> {
        self.inbound_rate
    }

    /// Whether every connection starts with the protocol's `hello` frame
    /// (see `docs/protocol.md`; the official client waits for it).
    pub fn hello_frame(&self) -> bool {
        self.hello_frame
    }
}

/// Builds a validated [`TransportConfig`]; see its table of defaults.
#[derive(Debug, Clone)]
pub struct TransportConfigBuilder {
    config: TransportConfig,
}

impl TransportConfigBuilder {
    /// How often the server pings (non-zero).
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.config.ping_interval = interval;
        self
    }

    /// Silence after which a connection is removed (longer than the ping interval).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Largest inbound message in bytes (non-zero).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.config.max_message_size = bytes;
        self
    }

    /// Largest inbound frame in bytes (non-zero).
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.config.max_frame_size = bytes;
        self
    }

    /// How long one write may stall (non-zero).
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.config.write_timeout = timeout;
        self
    }

    /// How long to wait for the peer's close frame (non-zero).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.config.close_timeout = timeout;
        self
    }

    /// Outbound queue bounds, over what the manager asks for (for a
    /// manager of your own, which the service cannot ask).
    pub fn queue_limits(mut self, limits: QueueLimits) -> Self {
        self.config.queue_limits = Some(limits);
        self
    }

    /// Initial read buffer of each socket in bytes (non-zero; tungstenite's
    /// own default is 128 KiB).
    pub fn read_buffer_size(mut self, bytes: usize) -> Self {
        self.config.read_buffer_size = bytes;
        self
    }

    /// Bytes gathered before a write (0: write each frame at once).
    pub fn write_buffer_size(mut self, bytes: usize) -> Self {
        self.config.write_buffer_size = bytes;
        self
    }

    /// Time allowed from an accepted connection to the answer of its upgrade
    /// request (non-zero).
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.config.header_read_timeout = timeout;
        self
    }

    /// Lets inbound binary messages reach the handler instead of closing the
    /// socket with 1003.
    pub fn binary_messages(mut self, accept: bool) -> Self {
        self.config.binary_messages = accept;
        self
    }

    /// At most `count` error frames per `window` (both non-zero); one more
    /// invalid message within the window closes the socket with 1008.
    pub fn error_frames(mut self, count: u32, window: Duration) -> Self {
        self.config.error_frame_limit = count;
        self.config.error_frame_window = window;
        self
    }

    /// Sends heartbeat frames on idle connections (default `true`; see
    /// [`TransportConfig::heartbeat_frames`]).
    pub fn heartbeat_frames(mut self, send: bool) -> Self {
        self.config.heartbeat_frames = send;
        self
    }

    /// Limits each connection's inbound messages (default: no limit; see
    /// [`TransportConfig::inbound_rate`] and the table above).
    pub fn inbound_rate(mut self, limit: RateLimit) -> Self {
        self.config.inbound_rate = Some(limit);
        self
    }

    /// Writes the `hello` frame first on every connection (default `true`;
    /// see [`TransportConfig::hello_frame`]). Turn it off only for clients
    /// that do not speak the protocol, such as an echo server's.
    pub fn hello_frame(mut self, send: bool) -> Self {
        self.config.hello_frame = send;
        self
    }

    /// Takes the outbound queue bounds from the manager's configuration, so
    /// that the transport and the manager agree on them.
    pub fn manager_config(self, config: &ManagerConfig) -> Self {
        self.queue_limits(config.queue_limits())
    }

    /// Validates and returns the configuration.
    ///
    /// # Errors
    ///
    /// [`TransportConfigError`] naming the first bad field: a zero where
    /// a positive value is needed, an `idle_timeout` not longer than
    /// `ping_interval`, or a `max_message_size` larger than the outbound
    /// queue's byte bound (`queue_limits`), so that an echo of what the
    /// reader accepts can always be queued.
    ///
    /// ```
    /// use websocket_manager::socket::QueueLimits;
    /// use websocket_manager::transport::TransportConfig;
    /// let error = TransportConfig::builder()
    ///     .max_message_size(1 << 20)
    ///     .queue_limits(QueueLimits::new(64, 64 * 1024))
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(error.field, "max_message_size");
    /// ```
    pub fn build(self) -> Result<TransportConfig, TransportConfigError> {
        let c = &self.config;
        let zero = [
            ("ping_interval", c.ping_interval.is_zero()),
            ("idle_timeout", c.idle_timeout.is_zero()),
            ("max_message_size", c.max_message_size == 0),
            ("max_frame_size", c.max_frame_size == 0),
            ("write_timeout", c.write_timeout.is_zero()),
            ("close_timeout", c.close_timeout.is_zero()),
            ("read_buffer_size", c.read_buffer_size == 0),
            ("header_read_timeout", c.header_read_timeout.is_zero()),
            ("error_frame_limit", c.error_frame_limit == 0),
            ("error_frame_window", c.error_frame_window.is_zero()),
        ];
        if let Some((field, _)) = zero.iter().find(|(_, is_zero)| *is_zero) {
            return Err(TransportConfigError {
                field,
                problem: "must be greater than zero",
            });
        }
        if c.idle_timeout <= c.ping_interval {
            return Err(TransportConfigError {
                field: "idle_timeout",
                problem: "must be longer than ping_interval, or every healthy client would time out",
            });
        }
        if let Some(limits) = c.queue_limits
            && c.max_message_size > limits.max_bytes
        {
            return Err(TransportConfigError {
                field: "max_message_size",
                problem: "must not exceed queue_limits' max_bytes, or a message the reader accepts could never be queued back (SendError::TooLarge)",
            });
        }
        Ok(self.config)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn zero_fields_are_refused_by_name() {
        let error = TransportConfig::builder()
            .max_message_size(0)
            .build()
            .unwrap_err();
        assert_eq!(error.field, "max_message_size");
        let error = TransportConfig::builder()
            .close_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(error.field, "close_timeout");
    }

    #[test]
    fn memory_and_hostile_client_settings_have_safe_defaults_and_refuse_zero() {
        let config = TransportConfig::default();
        assert_eq!(config.read_buffer_size(), 4 * 1024);
        assert!(config.header_read_timeout() <= Duration::from_secs(10));
        assert!(!config.binary_messages());
        assert_eq!(config.error_frame_limit(), 10);
        for (builder, field) in [
            (
                TransportConfig::builder().read_buffer_size(0),
                "read_buffer_size",
            ),
            (
                TransportConfig::builder().header_read_timeout(Duration::ZERO),
                "header_read_timeout",
            ),
            (
                TransportConfig::builder().error_frames(0, Duration::from_secs(1)),
                "error_frame_limit",
            ),
            (
                TransportConfig::builder().error_frames(1, Duration::ZERO),
                "error_frame_window",
            ),
        ] {
            assert_eq!(builder.build().unwrap_err().field, field);
        }
        // Zero is a valid write buffer: every frame is written at once.
        assert!(
            TransportConfig::builder()
                .write_buffer_size(0)
                .build()
                .is_ok()
        );
    }

    #[test]
    fn a_message_larger_than_the_queue_byte_bound_is_refused() {
        let refused = TransportConfig::builder()
            .max_message_size(64 * 1024 + 1)
            .queue_limits(QueueLimits::new(16, 64 * 1024))
            .build()
            .unwrap_err();
        assert_eq!(refused.field, "max_message_size");
        assert!(refused.to_string().contains("max_bytes"), "{refused}");
        // Equal is fine: the largest message fits in an empty queue.
        let config = TransportConfig::builder()
            .max_message_size(64 * 1024)
            .queue_limits(QueueLimits::new(16, 64 * 1024))
            .build()
            .unwrap();
        assert_eq!(
            Some(config.max_message_size()),
            config.queue_limits().map(|q| q.max_bytes)
        );
    }

    #[test]
    fn queue_limits_follow_the_manager_config() {
        let manager = ManagerConfig::builder()
            .queue_capacity(7)
            .queue_max_bytes(7000)
            .history_capacity(6)
            .history_max_bytes(4096)
            .build()
            .unwrap();
        let config = TransportConfig::builder()
            .manager_config(&manager)
            .max_message_size(7000)
            .build()
            .unwrap();
        assert_eq!(config.queue_limits(), Some(QueueLimits::new(7, 7000)));
    }
}
