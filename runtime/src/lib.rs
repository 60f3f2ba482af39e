#![doc = include_str!("../README.md")]
//!
//! ## The parts
//!
//! * [`WebSocketManager`]: the 11-method contract, written down once.
//! * [`#[websocket_manager]`](macro@websocket_manager): put it on an impl
//!   block; it checks every method against the contract at compile time,
//!   reports every problem in one build, and registers the manager.
//! * [`Registry`]: every registered manager, enumerated at startup.
//! * [`StandardFactory`]: builds the manager for a mode or a name, shared
//!   (unified) or per user (isolated).
//! * [`validate_on_startup`]: proves every registered manager works before
//!   traffic arrives, with the probes of [`conformance`], and reports it
//!   ([`StartupReport`]).
//! * [`UnifiedWebSocketManager`] and [`IsolatedWebSocketManager`]: the two
//!   reference managers (and, with the feature `redis`,
//!   `ClusterWebSocketManager`, one manager across many servers).
//!
//! ## Where things are
//!
//! Every item has one path. The contract, its data types, the managers and
//! the registry, factory and startup validation are at the crate root.
//! Three optional subsystems are modules of their own: [`conformance`] (the
//! kit that probes a manager), `transport` (sockets, authentication; feature
//! `transport` and its adapters) and `metrics` (feature `metrics`).
//! [`prelude`] brings what writing or using a manager takes, with one `use`.
//!
//! ```
//! for registration in websocket_manager::Registry::global().entries() {
//!     println!("{} {} {}", registration.name, registration.mode, registration.location());
//! }
//! ```
//!
//! ## Linkage rule
//!
//! Registrations live in the crates that define the managers. A crate that
//! nothing in your binary references is not linked, and its managers vanish
//! from the registry without a word: reference such a crate with
//! `use my_managers as _;`.

// docs.rs (`--cfg docsrs`, see Cargo.toml): each feature-gated item says
// which feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

// The generated code names `::websocket_manager`; this makes the crate's own
// managers use the same paths.
extern crate self as websocket_manager;

pub mod close;
mod config;
pub mod conformance;
mod connection;
mod context;
mod delivery;
mod dyn_manager;
mod error;
mod extensions;
mod factory;
mod health;
mod ids;
mod managers;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
mod offset;
mod protocol;
mod readiness;
mod registry;
mod report;
mod table;
#[cfg(feature = "transport")]
#[cfg_attr(docsrs, doc(cfg(feature = "transport")))]
pub mod transport;
mod validation;

pub use close::CloseReason;
pub use config::{
    ConfigError, ManagerConfig, ManagerConfigBuilder, RESYNC_NOTICE_RESERVE, SlowConsumerPolicy,
};
pub use connection::{
    OutboundEvent, OutboundReceiver, QueueLimits, SendError, SocketId, TextFrame,
    WebSocketConnection, WebSocketHandle,
};
pub use context::{ManagerMode, UnknownMode, UserContext};
pub use delivery::{Delivery, DeliveryTarget, NotDeliveredReason};
pub use dyn_manager::DynManager;
pub use error::{ClusterFailure, ManagerError};
pub use extensions::Extensions;
pub use factory::{
    BuiltManager, FactoryError, ManagerFactory, StandardFactory, StandardFactoryBuilder,
};
pub use health::{ConnectionHealth, ConnectionSummary, unix_millis};
pub use ids::{ConnectionId, IdError, MAX_ID_LEN, ThreadId, UserId};
pub use managers::{
    AGENT_COMPLETED, AGENT_EVENTS, AGENT_STARTED, AGENT_THINKING, CriticalEnvelope,
    CriticalEventLog, IndexSizes, IsolatedWebSocketManager, MAX_EVENT_TYPE_LEN, ManagerStats,
    RESYNC, ResyncNotice, ResyncReason, TOOL_COMPLETED, TOOL_EXECUTING, UnifiedWebSocketManager,
    deliver_frame, validate_event_type,
};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use managers::{
    ClusterConfig, ClusterConfigBuilder, ClusterStats, ClusterWebSocketManager, LinkState,
    RESUME_CLOSE_CODE,
};
pub use offset::{OffsetParseError, StreamOffset, StreamPosition};
pub use protocol::{
    CONTRACT_METHODS, MethodGroup, MethodSpec, PROTOCOL_FINGERPRINT, WebSocketManager,
    contract_method,
};
pub use readiness::{NotReady, NotReadyReason, Readiness};
pub use registry::{
    BuildContext, BuildError, ConstructManager, Constructor, DuplicateName, Registration, Registry,
    RegistryError, construct,
};
pub use report::{
    CheckRecord, ComplianceReport, FactoryValidationResult, SkippedStep, StartupReport, Verdict,
    Violation, ViolationKind,
};
pub use validation::{AlertCallback, StartupError, StartupOptions, validate_on_startup};

/// Checks an impl block against the [`WebSocketManager`] contract at compile
/// time and registers the manager. Every form and argument is in
/// `docs/managers.md` of the repository, every diagnostic in
/// `docs/diagnostics.md`.
pub use websocket_manager_macros::websocket_manager;

/// `serde_json`, re-exported so a manager crate needs no other dependency.
pub use serde_json;

/// What writing or using a manager takes, in one `use`:
///
/// ```
/// use std::collections::HashSet;
/// use websocket_manager::prelude::*;
///
/// struct Nobody;
///
/// #[websocket_manager(factory = false)]
/// impl WebSocketManager for Nobody {
///     async fn add_connection(&self, _connection: WebSocketConnection) -> Result<(), ManagerError> { Ok(()) }
///     async fn remove_connection(&self, _connection_id: &ConnectionId) -> Option<WebSocketConnection> { None }
///     fn get_connection(&self, _connection_id: &ConnectionId) -> Option<WebSocketConnection> { None }
///     fn get_user_connections(&self, _user_id: &UserId) -> HashSet<ConnectionId> { HashSet::new() }
///     fn is_connection_active(&self, _user_id: &UserId) -> bool { false }
///     fn get_connection_id_by_websocket(&self, _websocket: &WebSocketHandle) -> Option<ConnectionId> { None }
///     fn update_connection_thread(&self, _connection_id: &ConnectionId, _thread_id: ThreadId) -> bool { false }
///     async fn send_to_user(&self, user_id: &UserId, _message: serde_json::Value) -> Result<Delivery, ManagerError> {
///         Err(ManagerError::NotDelivered { target: DeliveryTarget::User(user_id.clone()), reason: NotDeliveredReason::NoConnections })
///     }
///     async fn emit_critical_event(&self, user_id: &UserId, _event_type: &str, _data: serde_json::Value) -> Result<Delivery, ManagerError> {
///         Err(ManagerError::NotDelivered { target: DeliveryTarget::User(user_id.clone()), reason: NotDeliveredReason::NoConnections })
///     }
///     fn get_connection_health(&self, user_id: &UserId) -> ConnectionHealth { ConnectionHealth::empty(user_id.clone()) }
///     async fn send_to_thread(&self, thread_id: &ThreadId, _message: serde_json::Value) -> Result<Delivery, ManagerError> {
///         Err(ManagerError::NotDelivered { target: DeliveryTarget::Thread(thread_id.clone()), reason: NotDeliveredReason::NoThreadConnections })
///     }
/// }
///
/// let manager = UnifiedWebSocketManager::new(ManagerConfig::default());
/// assert!(!manager.is_connection_active(&UserId::new("alice").unwrap()));
/// let _event = serde_json::json!({"type": AGENT_STARTED});
/// ```
pub mod prelude {
    pub use crate::{
        AGENT_COMPLETED, AGENT_STARTED, AGENT_THINKING, BuildContext, BuildError, CloseReason,
        ConnectionHealth, ConnectionId, ConnectionSummary, ConstructManager, Delivery,
        DeliveryTarget, DynManager, IsolatedWebSocketManager, ManagerConfig, ManagerError,
        ManagerMode, NotDeliveredReason, OutboundEvent, StreamOffset, TOOL_COMPLETED,
        TOOL_EXECUTING, TextFrame, ThreadId, UnifiedWebSocketManager, UserId, WebSocketConnection,
        WebSocketHandle, WebSocketManager, serde_json, websocket_manager,
    };
}

/// What the generated code needs. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::registry::construct;
    pub use inventory;
    pub use serde_json;

    /// Implemented by `#[websocket_manager]` and nothing else: a supertrait
    /// of `WebSocketManager`, so an impl that forgot the attribute is told
    /// to add it.
    #[diagnostic::on_unimplemented(
        message = "annotate this impl with `#[websocket_manager]`",
        label = "this impl of `WebSocketManager` lacks `#[websocket_manager]`",
        note = "`#[websocket_manager]` checks the methods against the contract and registers `{Self}`; write it on the line above `impl WebSocketManager for {Self}`"
    )]
    pub trait Annotated {
        /// The manager's [`Readiness`](crate::Readiness): `Ready` unless the
        /// attribute was given `readiness = path`, which this then calls.
        /// Named apart from any `readiness` method of the type itself, so
        /// that `readiness = Self::readiness` never calls itself.
        fn reported_readiness(&self) -> crate::Readiness {
            crate::Readiness::Ready
        }
    }
}
