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
    /// Drop this message for that connection only, and count it.
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
/// | `pending_capacity` (critical events per offline user) | 256 |
/// | `pending_max_age` | 5 minutes |
/// | `max_pending_users` (users with pending events, per manager) | 10,000 |
///
/// `pending_capacity` may not exceed `queue_capacity`: a replay must fit the
/// fresh queue of the user's next connection.
///
/// ```
/// use std::time::Duration;
/// use websocket_manager::{ManagerConfig, SlowConsumerPolicy};
/// let config = ManagerConfig::builder()
///     .queue_capacity(128)
///     .pending_capacity(64)
///     .slow_consumer_policy(SlowConsumerPolicy::DropMessage)
///     .pending_max_age(Duration::from_secs(60))
///     .build()?;
/// assert_eq!(config.queue_capacity(), 128);
/// assert!(ManagerConfig::builder().queue_capacity(0).build().is_err());
/// // a replay must fit a fresh queue
/// assert!(ManagerConfig::builder().queue_capacity(16).pending_capacity(32).build().is_err());
/// # Ok::<(), websocket_manager::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManagerConfig {
    queue_capacity: usize,
    queue_max_bytes: usize,
    max_connections_per_user: usize,
    slow_consumer_policy: SlowConsumerPolicy,
    pending_capacity: usize,
    #[serde(serialize_with = "serialize_duration_ms")]
    pending_max_age: Duration,
    max_pending_users: usize,
}

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
            pending_capacity: 256,
            pending_max_age: Duration::from_secs(300),
            max_pending_users: 10_000,
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

    /// Critical events kept per user while they have no connection.
    pub fn pending_capacity(&self) -> usize {
        self.pending_capacity
    }

    /// How long a pending critical event is kept.
    pub fn pending_max_age(&self) -> Duration {
        self.pending_max_age
    }

    /// How many users may have pending critical events at once, per manager.
    pub fn max_pending_users(&self) -> usize {
        self.max_pending_users
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

    /// Pending critical events per offline user (at least 1).
    pub fn pending_capacity(mut self, events: usize) -> Self {
        self.config.pending_capacity = events;
        self
    }

    /// Age after which a pending critical event is discarded (non-zero).
    pub fn pending_max_age(mut self, age: Duration) -> Self {
        self.config.pending_max_age = age;
        self
    }

    /// Users with pending critical events per manager (at least 1).
    pub fn max_pending_users(mut self, users: usize) -> Self {
        self.config.max_pending_users = users;
        self
    }

    /// Validates and returns the configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first field that is zero, or
    /// `pending_capacity` when it exceeds `queue_capacity`.
    pub fn build(self) -> Result<ManagerConfig, ConfigError> {
        let c = &self.config;
        let checks = [
            ("queue_capacity", c.queue_capacity == 0),
            ("queue_max_bytes", c.queue_max_bytes == 0),
            ("max_connections_per_user", c.max_connections_per_user == 0),
            ("pending_capacity", c.pending_capacity == 0),
            ("pending_max_age", c.pending_max_age.is_zero()),
            ("max_pending_users", c.max_pending_users == 0),
        ];
        if let Some((field, _)) = checks.iter().find(|(_, zero)| *zero) {
            return Err(ConfigError {
                field,
                problem: "must be greater than zero",
            });
        }
        if c.pending_capacity > c.queue_capacity {
            return Err(ConfigError {
                field: "pending_capacity",
                problem: "must not exceed queue_capacity (a replay must fit a fresh queue)",
            });
        }
        Ok(self.config)
    }
}
