//! The managers and their building blocks (all re-exported at the crate
//! root; the guarantees are documented on `UnifiedWebSocketManager`).

#[cfg(feature = "redis")]
mod cluster;
mod core;
mod critical_log;
mod events;
mod fan_out;
mod history;
mod isolated;
mod stats;
mod unified;

#[cfg(feature = "redis")]
pub use cluster::{
    ClusterConfig, ClusterConfigBuilder, ClusterStats, ClusterWebSocketManager, LinkState,
    RESUME_CLOSE_CODE,
};
pub use critical_log::CriticalEventLog;
pub use events::{
    AGENT_COMPLETED, AGENT_EVENTS, AGENT_STARTED, AGENT_THINKING, CriticalEnvelope,
    MAX_EVENT_TYPE_LEN, RESYNC, ResyncNotice, ResyncReason, TOOL_COMPLETED, TOOL_EXECUTING,
    validate_event_type,
};
pub use fan_out::deliver_frame;
pub use isolated::IsolatedWebSocketManager;
pub use stats::{IndexSizes, ManagerStats};
pub use unified::UnifiedWebSocketManager;
