//! What happened to a message: [`Delivery`], and when it reached nobody,
//! its [`DeliveryTarget`] and [`NotDeliveredReason`].

use std::fmt;

use serde::Serialize;

use crate::ids::{ThreadId, UserId};
use crate::offset::StreamOffset;

/// The outcome of a send that did not fail.
///
/// Built with [`Delivery::delivered`] and [`Delivery::queued`] (plus
/// [`with_offset`](Delivery::with_offset) for a critical event), read with
/// the accessors or by matching with `..`: both the enum and its variants
/// may gain fields and variants in minor releases.
///
/// ```
/// use websocket_manager::{Delivery, events::StreamOffset};
/// let delivery = Delivery::delivered(2, 1);
/// assert_eq!(delivery.recipients(), 2);
/// assert_eq!(delivery.skipped(), 1);
/// assert!(!delivery.is_queued());
/// let queued = Delivery::queued(3).with_offset(StreamOffset::new(9, 4));
/// assert!(queued.is_queued());
/// assert_eq!(queued.offset(), Some(StreamOffset::new(9, 4)));
/// assert!(matches!(queued, Delivery::Queued { pending: 3, .. }));
/// assert_eq!(
///     serde_json::to_value(queued).unwrap(),
///     serde_json::json!({"status": "queued", "pending": 3, "offset": {"stream": 9, "sequence": 4}})
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Delivery {
    /// The message was put into `recipients` connections' queues (at least
    /// one). `skipped` connections were targeted but did not take it (queue
    /// full under the drop policy, or found closed and removed).
    #[non_exhaustive]
    Delivered {
        /// Connections whose queue accepted the message.
        recipients: usize,
        /// Connections that were targeted but did not take it.
        skipped: usize,
        /// For a critical event: the offset it was given (see
        /// [`StreamOffset`]); `None` for an ordinary send.
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<StreamOffset>,
    },
    /// No connection could take it now; the message (a critical event) is
    /// retained and replayed on the user's next connection. `pending` events
    /// (this one included) are waiting for a connection.
    #[non_exhaustive]
    Queued {
        /// Events waiting for the user's next connection, this one included.
        pending: usize,
        /// The offset the critical event was given.
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<StreamOffset>,
    },
    /// Sent through a cluster (`websocket_manager::managers::ClusterWebSocketManager`): this
    /// node's `local` connections took it now (an exact count), and it was
    /// published once to `remote_nodes` other nodes, whose delivery is not
    /// awaited. A critical event also reaches this node's sockets that were
    /// not yet in step through the cluster, in stream order.
    #[non_exhaustive]
    Relayed {
        /// Connections of this node whose queue accepted the message.
        local: usize,
        /// Connections of this node that were targeted but did not take it.
        skipped: usize,
        /// Other nodes holding recipients, as this node's presence replica
        /// saw them when the message was published.
        remote_nodes: usize,
        /// For a critical event: the offset it was given.
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<StreamOffset>,
    },
    /// A retry: a critical event with the same idempotency key was emitted
    /// to this user within the window
    /// ([`IdempotentEmit`](crate::managers::IdempotentEmit)), so nothing
    /// was stored or sent this time; `offset` is the first attempt's.
    #[non_exhaustive]
    Duplicate {
        /// The offset the first attempt was given.
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<StreamOffset>,
    },
}

impl Delivery {
    /// Put into `recipients` queues; `skipped` targeted connections did not
    /// take it.
    pub const fn delivered(recipients: usize, skipped: usize) -> Self {
        Delivery::Delivered {
            recipients,
            skipped,
            offset: None,
        }
    }

    /// Relayed through a cluster: `local` connections of this node took it,
    /// `skipped` did not, and it was published to `remote_nodes` other
    /// nodes.
    ///
    /// ```
    /// use websocket_manager::Delivery;
    /// let delivery = Delivery::relayed(1, 0, 2);
    /// assert_eq!(delivery.recipients(), 1);
    /// assert_eq!(delivery.remote_nodes(), 2);
    /// assert_eq!(delivery.to_string(), "delivered to 1 connection(s) of this node, 0 skipped, relayed to 2 other node(s)");
    /// ```
    pub const fn relayed(local: usize, skipped: usize, remote_nodes: usize) -> Self {
        Delivery::Relayed {
            local,
            skipped,
            remote_nodes,
            offset: None,
        }
    }

    /// Waiting for a connection, `pending` events deep.
    pub const fn queued(pending: usize) -> Self {
        Delivery::Queued {
            pending,
            offset: None,
        }
    }

    /// A retry of an event already emitted with the same idempotency key
    /// (see [`Delivery::Duplicate`]).
    ///
    /// ```
    /// use websocket_manager::{Delivery, events::StreamOffset};
    /// let retry = Delivery::duplicate().with_offset(StreamOffset::new(9, 4));
    /// assert!(retry.is_duplicate());
    /// assert_eq!((retry.recipients(), retry.offset()), (0, Some(StreamOffset::new(9, 4))));
    /// assert_eq!(retry.to_string(), "already emitted at 9:4 (a retry: nothing stored or sent)");
    /// ```
    pub const fn duplicate() -> Self {
        Delivery::Duplicate { offset: None }
    }

    /// The same outcome, for a critical event given `offset`.
    #[must_use]
    pub const fn with_offset(self, offset: StreamOffset) -> Self {
        match self {
            Delivery::Delivered {
                recipients,
                skipped,
                ..
            } => Delivery::Delivered {
                recipients,
                skipped,
                offset: Some(offset),
            },
            Delivery::Queued { pending, .. } => Delivery::Queued {
                pending,
                offset: Some(offset),
            },
            Delivery::Relayed {
                local,
                skipped,
                remote_nodes,
                ..
            } => Delivery::Relayed {
                local,
                skipped,
                remote_nodes,
                offset: Some(offset),
            },
            Delivery::Duplicate { .. } => Delivery::Duplicate {
                offset: Some(offset),
            },
        }
    }

    /// How many connections got the message now (0 when queued; this
    /// node's connections only when relayed).
    pub fn recipients(&self) -> usize {
        match self {
            Delivery::Delivered { recipients, .. } => *recipients,
            Delivery::Relayed { local, .. } => *local,
            Delivery::Queued { .. } | Delivery::Duplicate { .. } => 0,
        }
    }

    /// How many targeted connections did not take it (0 when queued).
    pub fn skipped(&self) -> usize {
        match self {
            Delivery::Delivered { skipped, .. } | Delivery::Relayed { skipped, .. } => *skipped,
            Delivery::Queued { .. } | Delivery::Duplicate { .. } => 0,
        }
    }

    /// Events waiting for the user's next connection (0 when delivered).
    pub fn pending(&self) -> usize {
        match self {
            Delivery::Delivered { .. } | Delivery::Relayed { .. } | Delivery::Duplicate { .. } => 0,
            Delivery::Queued { pending, .. } => *pending,
        }
    }

    /// Other cluster nodes the message was published to (0 unless relayed).
    pub fn remote_nodes(&self) -> usize {
        match self {
            Delivery::Relayed { remote_nodes, .. } => *remote_nodes,
            Delivery::Delivered { .. } | Delivery::Queued { .. } | Delivery::Duplicate { .. } => 0,
        }
    }

    /// The offset a critical event was given; `None` for ordinary sends.
    pub fn offset(&self) -> Option<StreamOffset> {
        match self {
            Delivery::Delivered { offset, .. }
            | Delivery::Queued { offset, .. }
            | Delivery::Relayed { offset, .. }
            | Delivery::Duplicate { offset } => *offset,
        }
    }

    /// Whether the message waits for a later connection.
    pub fn is_queued(&self) -> bool {
        matches!(self, Delivery::Queued { .. })
    }

    /// Whether this was a retry that stored and sent nothing
    /// ([`Delivery::Duplicate`]).
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Delivery::Duplicate { .. })
    }
}

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Delivery::Delivered {
                recipients,
                skipped,
                ..
            } => {
                write!(
                    f,
                    "delivered to {recipients} connection(s), {skipped} skipped"
                )?;
            }
            Delivery::Queued { pending, .. } => write!(f, "queued ({pending} pending)")?,
            Delivery::Relayed {
                local,
                skipped,
                remote_nodes,
                ..
            } => write!(
                f,
                "delivered to {local} connection(s) of this node, {skipped} skipped, relayed to {remote_nodes} other node(s)"
            )?,
            Delivery::Duplicate { offset } => {
                write!(f, "already emitted")?;
                if let Some(offset) = offset {
                    write!(f, " at {offset}")?;
                }
                return write!(f, " (a retry: nothing stored or sent)");
            }
        }
        match self.offset() {
            Some(offset) => write!(f, " at offset {offset}"),
            None => Ok(()),
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

/// Whom a send was addressed to, as data (errors carry it, not prose).
///
/// ```
/// use websocket_manager::{DeliveryTarget, UserId};
/// let target = DeliveryTarget::User(UserId::new("alice")?);
/// assert_eq!(target.to_string(), "user `alice`");
/// assert_eq!(serde_json::to_value(&target)?, serde_json::json!({"user": "alice"}));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeliveryTarget {
    /// Every connection of a user.
    User(UserId),
    /// Every connection bound to a thread.
    Thread(ThreadId),
}

impl fmt::Display for DeliveryTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeliveryTarget::User(user) => write!(f, "user `{user}`"),
            DeliveryTarget::Thread(thread) => write!(f, "thread `{thread}`"),
        }
    }
}
