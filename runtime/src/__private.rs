//! What the generated code of `#[websocket_manager]` needs. Not public
//! API: its paths do not depend on where the public items live.

pub use crate::context::ManagerMode;
pub use crate::protocol::PROTOCOL_FINGERPRINT;
pub use crate::registry::{Registration, construct};
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
