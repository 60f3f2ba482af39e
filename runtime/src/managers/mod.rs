//! The managers, their configuration and the building blocks they are made
//! of: [`UnifiedWebSocketManager`] (one shared; its docs state the
//! guarantees), [`IsolatedWebSocketManager`] (one per user) and, with the
//! feature `redis`, `ClusterWebSocketManager` (one across many servers).

#[cfg(feature = "redis")]
mod cluster;
mod core;
mod critical_log;
pub(crate) mod events;
mod fan_out;
mod history;
mod idempotent;
mod index;
mod isolated;
mod stats;
mod unified;

pub use crate::config::{
    ConfigError, ManagerConfig, ManagerConfigBuilder, RESYNC_NOTICE_RESERVE, SlowConsumerPolicy,
};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use cluster::{
    ClusterConfig, ClusterConfigBuilder, ClusterStats, ClusterWebSocketManager, LinkState,
};
pub use critical_log::CriticalEventLog;
pub use fan_out::deliver_frame;
pub use idempotent::IdempotentEmit;
pub use isolated::IsolatedWebSocketManager;
pub use stats::{IndexSizes, ManagerStats};
pub use unified::UnifiedWebSocketManager;
