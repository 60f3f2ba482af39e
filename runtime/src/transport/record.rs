//! The one record the transport keeps for a registered connection.
//!
//! `serve` builds the [`ConnectionRecord`] once; the tracker (for shutdown),
//! the [`InboundContext`](super::InboundContext) handed to the handler and
//! the [`Registered`](super::shutdown::Registered) guard, which alone
//! releases the connection, share it.

use crate::connection::WebSocketHandle;
use crate::ids::{ConnectionId, UserId};

/// Who a registered connection is, and its socket.
#[derive(Debug)]
pub(crate) struct ConnectionRecord {
    pub connection_id: ConnectionId,
    pub user_id: UserId,
    pub socket: WebSocketHandle,
}
