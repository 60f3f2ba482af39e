//! # websocket-manager
//!
//! A contract for per-user WebSocket managers that the compiler enforces.
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
//! * [`managers`]: the two reference managers, [`UnifiedWebSocketManager`]
//!   and [`IsolatedWebSocketManager`].
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

pub mod config;
pub mod conformance;
pub mod connection;
pub mod context;
pub mod delivery;
pub mod error;
pub mod extensions;
pub mod factory;
pub mod health;
pub mod ids;
pub mod managers;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
pub mod offset;
pub mod protocol;
pub mod registry;
pub mod report;
mod table;
#[cfg(feature = "transport")]
#[cfg_attr(docsrs, doc(cfg(feature = "transport")))]
pub mod transport;
pub mod validation;

pub use config::{
    ConfigError, ManagerConfig, ManagerConfigBuilder, RESYNC_NOTICE_RESERVE, SlowConsumerPolicy,
};
pub use connection::{
    CloseReason, OutboundEvent, OutboundReceiver, QueueLimits, SendError, SocketId, TextFrame,
    WebSocketConnection, WebSocketHandle,
};
pub use context::{ManagerMode, UnknownMode, UserContext};
pub use delivery::{Delivery, DeliveryTarget, NotDeliveredReason};
pub use error::{ClusterFailure, ManagerError};
pub use extensions::Extensions;
pub use factory::{
    BuiltManager, FactoryError, ManagerFactory, StandardFactory, StandardFactoryBuilder,
};
pub use health::{ConnectionHealth, ConnectionSummary};
pub use ids::{ConnectionId, IdError, MAX_ID_LEN, ThreadId, UserId};
pub use managers::{
    AGENT_COMPLETED, AGENT_EVENTS, AGENT_STARTED, AGENT_THINKING, CriticalEnvelope,
    IsolatedWebSocketManager, ResyncNotice, ResyncReason, TOOL_COMPLETED, TOOL_EXECUTING,
    UnifiedWebSocketManager,
};
pub use offset::{OffsetParseError, StreamOffset};
pub use protocol::{
    CONTRACT_METHODS, MethodGroup, MethodSpec, PROTOCOL_FINGERPRINT, WebSocketManager,
    contract_method,
};
pub use registry::{
    BuildContext, BuildError, ConstructManager, Constructor, DuplicateName, Registration, Registry,
    RegistryError,
};
pub use report::{
    ComplianceReport, FactoryValidationResult, StartupReport, Verdict, Violation, ViolationKind,
};
pub use validation::{AlertCallback, StartupError, StartupOptions, validate_on_startup};

/// Checks an impl block against the [`WebSocketManager`] contract at compile
/// time and registers the manager. See the crate README for every form,
/// argument and diagnostic.
pub use websocket_manager_macros::websocket_manager;

/// `serde_json`, re-exported so a manager crate needs no other dependency.
pub use serde_json;

/// What the generated code needs. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::registry::construct;
    pub use async_trait::async_trait;
    pub use inventory;
    pub use serde_json;

    /// Implemented by `#[websocket_manager]` and nothing else: a supertrait
    /// of `WebSocketManager`, so an impl that forgot the attribute is told
    /// to add it.
    #[diagnostic::on_unimplemented(
        message = "annotate this impl with `#[websocket_manager]`",
        label = "this impl of `WebSocketManager` lacks `#[websocket_manager]`",
        note = "`#[websocket_manager]` checks the methods against the contract, applies async-trait and registers `{Self}`; write it on the line above `impl WebSocketManager for {Self}`"
    )]
    pub trait Annotated {}
}
