//! [`ManagerCore`]: what the unified and isolated managers run on: the one
//! [`LocalIndex`] with the in-memory history ([`MemoryHistory`]). The
//! unified manager exposes it to every user; the isolated manager puts an
//! owner check in front of it. The cluster manager runs the same index and
//! the same two flows ([`history::register`], [`history::emit`]) with the
//! Redis history instead.
//!
//! # Replay ordering
//!
//! `add_connection` registers the connection as catching up, reads what it
//! is owed under the user's lock (the user's log is in the user's slot),
//! and pushes it before the connection is published to sends (see the
//! index's module docs). A critical event emitted meanwhile is numbered and
//! delivered under the same lock: either it was in the read (the
//! catching-up cursor skips it) or it comes after it (buffered, then pushed
//! after the replay). An ordinary send reads only published connections, so the
//! replayed events are ahead of any ordinary send in the socket's queue.
//!
//! # Memory bounds
//!
//! A user has a slot while it has a connection or its log holds something
//! (retained events, a loss not yet announced, recent idempotency keys).
//! Logs are bounded per user (events, bytes, age) and per manager
//! (`max_history_users`); expired events are pruned whenever the user is
//! touched, by [`ManagerCore::prune_expired`], and by a sweep (at most once
//! a second) when the user limit is reached.

use std::collections::HashSet;

use crate::close::CloseReason;
use crate::config::ManagerConfig;
use crate::connection::{TextFrame, WebSocketConnection, WebSocketHandle};
use crate::delivery::{Delivery, DeliveryTarget, NotDeliveredReason};
use crate::error::ManagerError;
use crate::health::ConnectionHealth;
use crate::ids::{ConnectionId, IdempotencyKey, ThreadId, UserId};
use crate::managers::fan_out::{FanOut, bump};
use crate::managers::history::{self, LocalHistory, MemoryHistory, UserLog};
use crate::managers::index::LocalIndex;
use crate::managers::stats::{IndexSizes, ManagerStats};

/// The engine shared by [`UnifiedWebSocketManager`](super::UnifiedWebSocketManager)
/// and [`IsolatedWebSocketManager`](super::IsolatedWebSocketManager).
#[derive(Debug)]
pub(crate) struct ManagerCore {
    index: LocalIndex<UserLog>,
    history: MemoryHistory,
}

impl ManagerCore {
    pub fn new(config: ManagerConfig) -> Self {
        ManagerCore {
            history: MemoryHistory::new(&config),
            index: LocalIndex::new(config),
        }
    }

    pub fn config(&self) -> &ManagerConfig {
        self.index.config()
    }

    pub fn is_shut_down(&self) -> bool {
        self.index.is_shut_down()
    }

    fn store(&self) -> LocalHistory<'_> {
        LocalHistory {
            history: &self.history,
            index: &self.index,
        }
    }

    pub async fn add_connection(
        &self,
        connection: WebSocketConnection,
    ) -> Result<(), ManagerError> {
        history::register_locked(&self.index, &self.history, connection)
    }

    pub fn remove_connection(
        &self,
        connection_id: &ConnectionId,
        reason: CloseReason,
    ) -> Option<WebSocketConnection> {
        self.index.remove(connection_id, reason)
    }

    pub fn get_connection(&self, connection_id: &ConnectionId) -> Option<WebSocketConnection> {
        self.index.get(connection_id)
    }

    pub fn get_user_connections(&self, user: &UserId) -> HashSet<ConnectionId> {
        self.index.user_connections(user)
    }

    pub fn is_connection_active(&self, user: &UserId) -> bool {
        self.index.is_active(user)
    }

    pub fn get_connection_id_by_websocket(
        &self,
        websocket: &WebSocketHandle,
    ) -> Option<ConnectionId> {
        self.index.by_socket(websocket)
    }

    pub fn update_connection_thread(&self, connection_id: &ConnectionId, thread: ThreadId) -> bool {
        self.index.update_thread(connection_id, thread)
    }

    /// The result of a local send: reached nobody at all is `empty`.
    fn delivery(
        &self,
        fan: &FanOut,
        target: impl FnOnce() -> DeliveryTarget,
        empty: NotDeliveredReason,
    ) -> Result<Delivery, ManagerError> {
        if fan.targeted == 0 {
            self.index.count_unreachable();
            return Err(ManagerError::NotDelivered {
                target: target(),
                reason: empty,
            });
        }
        fan.result(target)
    }

    pub fn send_to_user(
        &self,
        user: &UserId,
        message: &serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        if self.is_shut_down() {
            return Err(ManagerError::ShutDown);
        }
        let frame = TextFrame::from_json(message)?;
        let fan = self.index.send_to_user(user, &frame);
        self.delivery(
            &fan,
            || DeliveryTarget::User(user.clone()),
            NotDeliveredReason::NoConnections,
        )
    }

    pub fn send_to_thread(
        &self,
        thread: &ThreadId,
        message: &serde_json::Value,
    ) -> Result<Delivery, ManagerError> {
        if self.is_shut_down() {
            return Err(ManagerError::ShutDown);
        }
        let frame = TextFrame::from_json(message)?;
        let fan = self.index.send_to_thread(thread, &frame);
        self.delivery(
            &fan,
            || DeliveryTarget::Thread(thread.clone()),
            NotDeliveredReason::NoThreadConnections,
        )
    }

    /// `emit_critical_event`, or with `key` its retry-safe form.
    pub async fn emit_critical_event(
        &self,
        user: &UserId,
        event_type: &str,
        data: serde_json::Value,
        key: Option<&IdempotencyKey>,
    ) -> Result<Delivery, ManagerError> {
        let appended = history::emit(
            &self.index,
            &self.store(),
            user,
            event_type,
            &data,
            false,
            key,
        )
        .await?;
        let outcome = appended.outcome;
        let delivery = if appended.duplicate {
            Delivery::duplicate()
        } else if outcome.delivered > 0 {
            Delivery::delivered(outcome.delivered, outcome.closed)
        } else {
            Delivery::queued(usize::try_from(appended.pending).unwrap_or(usize::MAX))
        };
        Ok(delivery.with_offset(appended.offset))
    }

    pub fn get_connection_health(&self, user: &UserId) -> ConnectionHealth {
        let mut health = ConnectionHealth::empty(user.clone());
        self.index.health_into(user, &mut health);
        self.history.report_into(&self.index, user, &mut health);
        health
    }

    /// Drops every expired retained event; returns how many.
    pub fn prune_expired(&self) -> usize {
        self.history.prune_expired(&self.index)
    }

    /// Closes every socket with `going_away`, empties every index, drops the
    /// retained events, and refuses all further work.
    pub fn shutdown(&self) {
        let Some(closed) = self.index.shut_down() else {
            return;
        };
        let discarded = self.history.clear(&self.index);
        bump(&self.history.totals().pending_discarded, discarded as u64);
        if discarded > 0 {
            tracing::warn!(
                discarded,
                "shutdown discarded critical events no connection had taken"
            );
        }
        tracing::info!(closed, "manager shut down");
    }

    pub fn index_sizes(&self) -> IndexSizes {
        self.index.sizes(self.history.users())
    }

    pub fn stats(&self) -> ManagerStats {
        self.index
            .stats(Some(self.history.totals()), self.history.users())
    }
}
