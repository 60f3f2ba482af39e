//! What happened to a message: [`Delivery`] and [`NotDeliveredReason`].

use std::fmt;

use serde::Serialize;

/// The outcome of a send that did not fail.
///
/// ```
/// use websocket_manager::Delivery;
/// let delivery = Delivery::Delivered { recipients: 2, skipped: 1 };
/// assert_eq!(delivery.recipients(), 2);
/// assert!(!delivery.is_queued());
/// assert!(Delivery::Queued { pending: 3 }.is_queued());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Delivery {
    /// The message was put into `recipients` connections' queues (at least
    /// one). `skipped` connections were targeted but did not take it (queue
    /// full under the drop policy, or found closed and removed).
    Delivered {
        /// Connections whose queue accepted the message.
        recipients: usize,
        /// Connections that were targeted but did not take it.
        skipped: usize,
    },
    /// No connection could take it now; the message (a critical event) waits
    /// in the user's pending buffer, `pending` entries deep, and is replayed
    /// on the user's next connection.
    Queued {
        /// Entries in the pending buffer, this one included.
        pending: usize,
    },
}

impl Delivery {
    /// How many connections got the message now (0 when queued).
    pub fn recipients(&self) -> usize {
        match self {
            Delivery::Delivered { recipients, .. } => *recipients,
            Delivery::Queued { .. } => 0,
        }
    }

    /// Whether the message waits for a later connection.
    pub fn is_queued(&self) -> bool {
        matches!(self, Delivery::Queued { .. })
    }
}

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Delivery::Delivered {
                recipients,
                skipped,
            } => {
                write!(
                    f,
                    "delivered to {recipients} connection(s), {skipped} skipped"
                )
            }
            Delivery::Queued { pending } => write!(f, "queued ({pending} pending)"),
        }
    }
}

/// Why a message reached no connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NotDeliveredReason {
    /// The user has no connection.
    NoConnections,
    /// No connection is bound to the thread.
    NoThreadConnections,
    /// Every targeted connection's queue was full.
    QueuesFull,
    /// Every targeted connection was closed (and has been removed).
    ConnectionsClosed,
    /// The message is larger than every targeted connection's queue bound.
    TooLarge,
}

impl fmt::Display for NotDeliveredReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotDeliveredReason::NoConnections => "the user has no connection",
            NotDeliveredReason::NoThreadConnections => "no connection is bound to the thread",
            NotDeliveredReason::QueuesFull => "every targeted connection's queue was full",
            NotDeliveredReason::ConnectionsClosed => "every targeted connection was closed",
            NotDeliveredReason::TooLarge => "the message exceeds every connection's queue bound",
        })
    }
}
