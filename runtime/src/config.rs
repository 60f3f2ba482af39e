//! [`ManagerConfig`]: the bounds and policies of the reference managers.

use std::time::Duration;

use serde::Serialize;

use crate::connection::QueueLimits;

/// What a manager does when a connection's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumerPolicy {
    /// Close that connection with [`CloseReason::slow_consumer`](crate::CloseReason::slow_consumer)
    /// and count it. The default: a client that cannot keep up resyncs on
    /// reconnect instead of silently missing messages.
    #[default]
    Disconnect,
    /// Drop this message for that connection only, and count it. Applies to
    /// ordinary messages: a critical event is never dropped from a live
    /// connection (that would be a silent gap in its stream); a connection
    /// that cannot take one is disconnected, and its client resumes from its
    /// offset.
    DropMessage,
}

/// A configuration value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid manager configuration: `{field}` {problem}")]
pub struct ConfigError {
    /// The field.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: &'static str,
}

/// Bounds and policies shared by the reference managers.
///
/// | field | default |
/// |---|---|
/// | `queue_capacity` (frames per connection) | 1,024 |
/// | `queue_max_bytes` (bytes per connection) | 8 MiB |
/// | `max_connections_per_user` | 32 |
/// | `slow_consumer_policy` | [`SlowConsumerPolicy::Disconnect`] |
/// | `history_capacity` (critical events retained per user) | 256 |
/// | `history_max_bytes` (bytes of critical events retained per user) | 1 MiB |
/// | `history_max_age` (how long a critical event is retained) | 5 minutes |
/// | `max_history_users` (users holding retained events, per manager) | 10,000 |
/// | `idempotency_window` (how long an idempotency key is remembered) | 5 minutes |
/// | `idempotency_keys_per_user` (keys remembered per user, in memory) | 1,024 |
///
/// A replay (a [`ResyncNotice`](crate::events::ResyncNotice) plus the whole
/// history) must fit the fresh queue of the user's next connection, so
/// `history_capacity` must be below `queue_capacity`, and
/// `history_max_bytes` plus [`RESYNC_NOTICE_RESERVE`] at most
/// `queue_max_bytes`. Size `max_history_users` above your peak of users
/// receiving critical events within `history_max_age`: past it, critical
/// events for users without history are refused
/// ([`ManagerError::HistoryUsersFull`](crate::ManagerError::HistoryUsersFull)).
///
/// ```
/// use std::time::Duration;
/// use websocket_manager::managers::{ManagerConfig, SlowConsumerPolicy};
/// let config = ManagerConfig::builder()
///     .queue_capacity(128)
///     .history_capacity(64)
///     .slow_consumer_policy(SlowConsumerPolicy::DropMessage)
///     .history_max_age(Duration::from_secs(60))
///     .build()?;
/// assert_eq!(config.queue_capacity(), 128);
/// assert!(ManagerConfig::builder().queue_capacity(0).build().is_err());
/// // a replay must fit a fresh queue
/// assert!(ManagerConfig::builder().queue_capacity(16).history_capacity(16).build().is_err());
/// # Ok::<(), websocket_manager::managers::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManagerConfig {
    queue_capacity: usize,
    queue_max_bytes: usize,
    max_connections_per_user: usize,
    slow_consumer_policy: SlowConsumerPolicy,
    history_capacity: usize,
    history_max_bytes: usize,
    #[serde(serialize_with = "serialize_duration_ms")]
    history_max_age: Duration,
    max_history_users: usize,
    idempotency_window: Duration,
    idempotency_keys_per_user: usize,
}

/// Bytes of a connection's queue kept free for the
/// [`ResyncNotice`](crate::events::ResyncNotice) that may precede a replay.
pub const RESYNC_NOTICE_RESERVE: usize = 1024;

fn serialize_duration_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            queue_capacity: 1024,
            queue_max_bytes: 8 << 20,
            max_connections_per_user: 32,
            slow_consumer_policy: SlowConsumerPolicy::Disconnect,
            history_capacity: 256,
            history_max_bytes: 1 << 20,
            history_max_age: Duration::from_secs(300),
            max_history_users: 10_000,
            idempotency_window: Duration::from_secs(300),
            idempotency_keys_per_user: 1024,
        }
    }
}

impl ManagerConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> ManagerConfigBuilder {
        ManagerConfigBuilder {
            config: ManagerConfig::default(),
        }
    }

    /// Frames one connection's queue holds.
    pub fn queue_capacity(&self) -> usize {
        self.queue_capacity
    }

    /// Bytes one connection's queue holds.
    pub fn queue_max_bytes(&self) -> usize {
        self.queue_max_bytes
    }

    /// The queue bounds to create sockets with.
    pub fn queue_limits(&self) -> QueueLimits {
        QueueLimits::new(self.queue_capacity, self.queue_max_bytes)
    }

    /// Connections one user may hold at once.
    pub fn max_connections_per_user(&self) -> usize {
        self.max_connections_per_user
    }

    /// What happens when a queue is full.
    pub fn slow_consumer_policy(&self) -> SlowConsumerPolicy {
        self.slow_consumer_policy
    }

    /// Critical events retained per user, for replay and resume.
    pub fn history_capacity(&self) -> usize {
        self.history_capacity
    }

    /// Bytes of critical events retained per user.
    pub fn history_max_bytes(&self) -> usize {
        self.history_max_bytes
    }

    /// How long a critical event is retained.
    pub fn history_max_age(&self) -> Duration {
        self.history_max_age
    }

    /// How many users may hold retained critical events at once, per manager.
    pub fn max_history_users(&self) -> usize {
        self.max_history_users
    }

    /// How long an idempotency key is remembered: a retry within it stores
    /// nothing new ([`IdempotentEmit`](crate::managers::IdempotentEmit)).
    pub fn idempotency_window(&self) -> Duration {
        self.idempotency_window
    }

    /// How many idempotency keys the in-memory managers remember per user,
    /// the oldest forgotten first (the cluster manager keeps each key in
    /// Redis for the window, whatever their number).
    pub fn idempotency_keys_per_user(&self) -> usize {
        self.idempotency_keys_per_user
    }
}

/// Builds a validated [`ManagerConfig`]; see its table of defaults.
#[derive(Debug, Clone)]
pub struct ManagerConfigBuilder {
    config: ManagerConfig,
}

impl ManagerConfigBuilder {
    /// Frames per connection queue (at least 1).
    pub fn queue_capacity(mut self, frames: usize) -> Self {
        self.config.queue_capacity = frames;
        self
    }

    /// Bytes per connection queue (at least 1).
    pub fn queue_max_bytes(mut self, bytes: usize) -> Self {
        self.config.queue_max_bytes = bytes;
        self
    }

    /// Connections per user (at least 1).
    pub fn max_connections_per_user(mut self, connections: usize) -> Self {
        self.config.max_connections_per_user = connections;
        self
    }

    /// Policy for full queues.
    pub fn slow_consumer_policy(mut self, policy: SlowConsumerPolicy) -> Self {
        self.config.slow_consumer_policy = policy;
        self
    }

    /// Critical events retained per user (at least 1, below `queue_capacity`).
    pub fn history_capacity(mut self, events: usize) -> Self {
        self.config.history_capacity = events;
        self
    }

    /// Bytes of critical events retained per user (at least 1; plus
    /// [`RESYNC_NOTICE_RESERVE`], at most `queue_max_bytes`).
    pub fn history_max_bytes(mut self, bytes: usize) -> Self {
        self.config.history_max_bytes = bytes;
        self
    }

    /// Age after which a retained critical event is dropped (non-zero).
    pub fn history_max_age(mut self, age: Duration) -> Self {
        self.config.history_max_age = age;
        self
    }

    /// Users holding retained critical events per manager (at least 1).
    pub fn max_history_users(mut self, users: usize) -> Self {
        self.config.max_history_users = users;
        self
    }

    /// How long an idempotency key is remembered (non-zero).
    pub fn idempotency_window(mut self, window: Duration) -> Self {
        self.config.idempotency_window = window;
        self
    }

    /// Idempotency keys remembered per user by the in-memory managers (at
    /// least 1).
    pub fn idempotency_keys_per_user(mut self, keys: usize) -> Self {
        self.config.idempotency_keys_per_user = keys;
        self
    }

    /// Validates and returns the configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first field that is zero, or the history
    /// bound a replay would not fit a fresh queue with.
    pub fn build(self) -> Result<ManagerConfig, ConfigError> {
        let c = &self.config;
        let checks = [
            ("queue_capacity", c.queue_capacity == 0),
            ("queue_max_bytes", c.queue_max_bytes == 0),
            ("max_connections_per_user", c.max_connections_per_user == 0),
            ("history_capacity", c.history_capacity == 0),
            ("history_max_bytes", c.history_max_bytes == 0),
            ("history_max_age", c.history_max_age.is_zero()),
            ("max_history_users", c.max_history_users == 0),
            ("idempotency_window", c.idempotency_window.is_zero()),
            (
                "idempotency_keys_per_user",
                c.idempotency_keys_per_user == 0,
            ),
        ];
        if let Some((field, _)) = checks.iter().find(|(_, zero)| *zero) {
            return Err(ConfigError {
                field,
                problem: "must be greater than zero",
            });
        }
        if c.history_capacity >= c.queue_capacity {
            return Err(ConfigError {
                field: "history_capacity",
                problem: "must be below queue_capacity (a resync notice and the whole history must fit a fresh queue)",
            });
        }
        if c.history_max_bytes.saturating_add(RESYNC_NOTICE_RESERVE) > c.queue_max_bytes {
            return Err(ConfigError {
                field: "history_max_bytes",
                problem: "plus RESYNC_NOTICE_RESERVE (1 KiB) must not exceed queue_max_bytes (a replay must fit a fresh queue)",
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
    fn history_bounds_are_validated() {
        let error = ManagerConfig::builder()
            .max_history_users(0)
            .build()
            .unwrap_err();
        assert_eq!(error.field, "max_history_users");
        let error = ManagerConfig::builder()
            .queue_capacity(8)
            .history_capacity(8)
            .build()
            .unwrap_err();
        assert_eq!(error.field, "history_capacity");
        let error = ManagerConfig::builder()
            .queue_max_bytes(4096)
            .history_max_bytes(4096 - RESYNC_NOTICE_RESERVE + 1)
            .build()
            .unwrap_err();
        assert_eq!(error.field, "history_max_bytes");
        let config = ManagerConfig::builder()
            .queue_capacity(8)
            .history_capacity(7)
            .queue_max_bytes(4096)
            .history_max_bytes(4096 - RESYNC_NOTICE_RESERVE)
            .max_history_users(3)
            .build()
            .unwrap();
        assert_eq!(config.max_history_users(), 3);
        assert_eq!(ManagerConfig::default().max_history_users(), 10_000);
        ManagerConfig::builder().build().unwrap();
    }
}
