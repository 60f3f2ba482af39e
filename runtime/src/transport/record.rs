//! The one record the transport keeps for a registered connection, and the
//! one guard that releases it.
//!
//! `serve` builds the [`ConnectionRecord`] once; the tracker (for shutdown),
//! the [`InboundContext`](super::InboundContext) handed to the handler and
//! the [`Registered`] guard share it. Releasing is the guard's job alone:
//! [`Registered::release`] on the normal path, its `Drop` when the serving
//! future is dropped early (an aborted task).

use std::sync::Arc;

use super::shutdown::ConnectionTracker;
use crate::close::CloseReason;
use crate::connection::WebSocketHandle;
use crate::dyn_manager::DynManager;
use crate::ids::{ConnectionId, UserId};
use crate::protocol::WebSocketManager;

/// Who a registered connection is, and its socket.
#[derive(Debug)]
pub(crate) struct ConnectionRecord {
    pub connection_id: ConnectionId,
    pub user_id: UserId,
    pub socket: WebSocketHandle,
}

/// A connection in the service's tracker and, once
/// [`offered`](Self::offered_to_manager), in the manager: released from
/// both, exactly once.
pub(crate) struct Registered {
    record: Arc<ConnectionRecord>,
    manager: DynManager,
    tracker: Arc<ConnectionTracker>,
    in_manager: bool,
    released: bool,
}

impl Registered {
    /// Takes charge of a record the tracker has just registered.
    pub fn tracked(
        record: Arc<ConnectionRecord>,
        manager: DynManager,
        tracker: Arc<ConnectionTracker>,
    ) -> Self {
        Registered {
            record,
            manager,
            tracker,
            in_manager: false,
            released: false,
        }
    }

    /// The connection goes to `add_connection`: releasing removes it from
    /// the manager too (a no-op for one the manager refused), also when the
    /// future is dropped while the manager registers it.
    pub fn offered_to_manager(&mut self) {
        self.in_manager = true;
    }

    /// Removes the connection from the manager (if it was added), then from
    /// the tracker, so that a finished shutdown implies clean manager
    /// indexes.
    pub async fn release(mut self) {
        self.released = true;
        if self.in_manager {
            self.manager
                .remove_connection(&self.record.connection_id)
                .await;
        }
        self.tracker.unregister(self.record.socket.id());
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // The writer task, if still running, stops on this close.
        self.record.socket.close(CloseReason::going_away());
        let tracker = Arc::clone(&self.tracker);
        let record = Arc::clone(&self.record);
        if !self.in_manager {
            tracker.unregister(record.socket.id());
            return;
        }
        tracing::warn!(connection = %record.connection_id, user = %record.user_id,
            "connection task dropped early; removing it");
        let manager = self.manager.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    manager.remove_connection(&record.connection_id).await;
                    tracker.unregister(record.socket.id());
                });
            }
            // No runtime left (process exit): nothing will read the manager.
            Err(_) => tracker.unregister(record.socket.id()),
        }
    }
}
