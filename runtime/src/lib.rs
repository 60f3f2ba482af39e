#![doc = include_str!("../README.md")]
//!
//! ## Where things are
//!
//! Every item has one path. At the root: the contract
//! ([`WebSocketManager`] and [`#[websocket_manager]`](macro@websocket_manager))
//! and the types its methods take and return (ids, [`WebSocketConnection`],
//! [`WebSocketHandle`], [`Delivery`], [`ConnectionHealth`], [`ManagerError`]),
//! [`DynManager`], [`CloseReason`] and [`Readiness`]. The rest is in modules
//! named for who uses them:
//!
//! | module | what | for |
//! |---|---|---|
//! | [`prelude`] | what writing or using a manager takes, in one `use` | everyone |
//! | [`managers`] | the reference managers, their config and building blocks | servers, manager authors |
//! | [`startup`] | registry, factory, startup validation and its reports | servers at startup |
//! | [`conformance`] | the probes that prove a manager keeps the contract | manager authors, tests |
//! | [`events`] | critical-event envelope, offsets, `resync`, agent event names | clients' and servers' event code |
//! | [`close`] | every close code the library sends | transports, clients |
//! | [`socket`] | one socket's outbound queue and its frames | transport and manager authors |
//! | [`contract`] | the contract as data (methods, fingerprint) | reports, tools |
//! | `transport` | sockets, authentication, admission (feature `transport`, adapters `axum`, `tungstenite`) | servers |
//! | `metrics` | the stats through the `metrics` facade (feature `metrics`) | servers |
//!
//! ```
//! for registration in websocket_manager::startup::Registry::global().entries() {
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
pub mod managers;
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
pub use connection::{WebSocketConnection, WebSocketHandle};
pub use delivery::{Delivery, DeliveryTarget, NotDeliveredReason};
pub use dyn_manager::DynManager;
pub use error::{ClusterFailure, ManagerError};
pub use health::{ConnectionHealth, ConnectionSummary};
pub use ids::{ConnectionId, IdError, MAX_ID_LEN, ThreadId, UserId};
pub use protocol::WebSocketManager;
pub use readiness::{NotReady, NotReadyReason, Readiness};

/// What a server uses to find, build and check its managers before it
/// takes traffic: the [`Registry`](startup::Registry) of every registered
/// manager, the [`ConstructManager`](startup::ConstructManager) hook and its
/// [`BuildContext`](startup::BuildContext), the factory, the validation at
/// startup and its reports.
///
/// ```
/// for registration in websocket_manager::startup::Registry::global().entries() {
///     println!("{} {} {}", registration.name, registration.mode, registration.location());
/// }
/// ```
pub mod startup {
    pub use crate::context::{ManagerMode, UnknownMode, UserContext};
    pub use crate::extensions::Extensions;
    pub use crate::factory::{
        BuiltManager, FactoryError, ManagerFactory, StandardFactory, StandardFactoryBuilder,
    };
    pub use crate::registry::{
        BuildContext, BuildError, ConstructManager, Constructor, DuplicateName, Registration,
        Registry, RegistryError, construct,
    };
    pub use crate::report::{
        CheckRecord, ComplianceReport, FactoryValidationResult, SkippedStep, StartupReport,
        Verdict, Violation, ViolationKind,
    };
    pub use crate::validation::{AlertCallback, StartupError, StartupOptions, validate_on_startup};
}

/// The contract described as data, for reports and tools: its methods, their
/// groups, and the fingerprint every registration records. The contract
/// itself is the trait [`WebSocketManager`].
pub mod contract {
    pub use crate::protocol::{
        CONTRACT_METHODS, MethodGroup, MethodSpec, PROTOCOL_FINGERPRINT, contract_method,
    };
}

/// What a client receives besides ordinary messages: the critical-event
/// envelope and its [`StreamOffset`](events::StreamOffset), the `resync`
/// notice, and the agent event names.
pub mod events {
    pub use crate::health::unix_millis;
    pub use crate::ids::IdempotencyKey;
    pub use crate::managers::events::{
        AGENT_COMPLETED, AGENT_EVENTS, AGENT_STARTED, AGENT_THINKING, CriticalEnvelope,
        MAX_EVENT_TYPE_LEN, RESYNC, ResyncNotice, ResyncReason, TOOL_COMPLETED, TOOL_EXECUTING,
        validate_event_type,
    };
    pub use crate::offset::{
        EventPrint, OffsetParseError, ResumePoint, StreamOffset, StreamPosition,
    };
}

/// One socket's outbound queue, for whoever writes a transport or a manager
/// of their own: the frames that travel in it, its bounds and its receiving
/// end. (The handle on it, [`WebSocketHandle`], is
/// at the crate root with the contract.)
pub mod socket {
    pub use crate::connection::{
        OutboundEvent, OutboundReceiver, QueueLimits, SendError, SocketId, TextFrame,
    };
}

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
    pub use crate::events::{
        AGENT_COMPLETED, AGENT_STARTED, AGENT_THINKING, StreamOffset, TOOL_COMPLETED,
        TOOL_EXECUTING,
    };
    pub use crate::managers::{IsolatedWebSocketManager, ManagerConfig, UnifiedWebSocketManager};
    pub use crate::socket::{OutboundEvent, TextFrame};
    pub use crate::startup::{BuildContext, BuildError, ConstructManager, ManagerMode};
    pub use crate::{
        CloseReason, ConnectionHealth, ConnectionId, ConnectionSummary, Delivery, DeliveryTarget,
        DynManager, ManagerError, NotDeliveredReason, ThreadId, UserId, WebSocketConnection,
        WebSocketHandle, WebSocketManager, serde_json, websocket_manager,
    };
}

/// What the generated code needs. Not public API.
#[doc(hidden)]
pub mod __private;
