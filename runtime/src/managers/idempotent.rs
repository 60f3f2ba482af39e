//! [`IdempotentEmit`]: a critical event a caller may retry safely.

use std::future::Future;

use crate::delivery::Delivery;
use crate::error::ManagerError;
use crate::ids::{IdempotencyKey, UserId};

/// Emitting a critical event with an idempotency key, so that a retry
/// stores nothing twice. Outside the 11-method contract (which stays as it
/// is); the unified, isolated and cluster managers implement it.
///
/// Why: after a [`ManagerError::Cluster`] timeout the event may have been
/// stored after all, and a plain retry would store it twice. With a key,
/// a retry within the manager's
/// [`idempotency_window`](crate::managers::ManagerConfig::idempotency_window)
/// (5 minutes by default, as Centrifugo's) answers
/// [`Delivery::Duplicate`] with the first attempt's offset and stores and
/// sends nothing; concurrent attempts with one key store it once. After the
/// window, or once the in-memory managers have forgotten the key (they keep
/// the last
/// [`idempotency_keys_per_user`](crate::managers::ManagerConfig::idempotency_keys_per_user)
/// per user), the same key stores the event again. An attempt that was
/// refused with an error stored nothing and records no key.
///
/// ```
/// use websocket_manager::{events::{AGENT_STARTED, IdempotencyKey}, managers::*, UserId};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let manager = UnifiedWebSocketManager::default();
/// let alice = UserId::new("alice")?;
/// let key = IdempotencyKey::new("run-7/started")?;
/// let first = manager.emit_critical_event_with_key(&alice, &key, AGENT_STARTED, serde_json::json!({})).await?;
/// let retry = manager.emit_critical_event_with_key(&alice, &key, AGENT_STARTED, serde_json::json!({})).await?;
/// assert!(retry.is_duplicate());
/// assert_eq!(retry.offset(), first.offset());
/// assert_eq!(manager.get_connection_health(&alice).retained_critical_events, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// # use websocket_manager::WebSocketManager;
/// ```
pub trait IdempotentEmit {
    /// `emit_critical_event`, unless an event with `key` was emitted to
    /// `user_id` within the window: then [`Delivery::Duplicate`] with the
    /// first attempt's offset, and nothing stored or sent.
    ///
    /// # Errors
    ///
    /// Those of `emit_critical_event`.
    fn emit_critical_event_with_key(
        &self,
        user_id: &UserId,
        key: &IdempotencyKey,
        event_type: &str,
        data: serde_json::Value,
    ) -> impl Future<Output = Result<Delivery, ManagerError>> + Send;
}
