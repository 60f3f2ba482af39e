//! The bus handler: applies what arrives from Redis (critical events for
//! local users, sends relayed by other nodes, other nodes' presence) in
//! order, and notes a lost connection so the maintenance task audits.

use std::sync::Weak;
use std::sync::atomic::Ordering;

use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::Shared;
use super::wire::BusMessage;
use crate::connection::TextFrame;
use crate::managers::events::critical_frame;
use crate::managers::index::Arrival;
use crate::offset::StreamOffset;

/// Applies what arrives from Redis, in order.
pub(super) async fn dispatch(shared: Weak<Shared>, mut inbound: mpsc::Receiver<PushInfo>) {
    while let Some(info) = inbound.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match info.kind {
            PushKind::Message | PushKind::SMessage => {
                let Some(Value::BulkString(payload)) = info.data.get(1) else {
                    continue;
                };
                match serde_json::from_slice::<BusMessage>(payload) {
                    Ok(message) => apply(&shared, message),
                    Err(error) => tracing::warn!(%error, "unreadable cluster message ignored"),
                }
            }
            PushKind::Disconnection => {
                tracing::warn!(
                    node = shared.cluster.node_id(),
                    "connection to Redis lost: messages published meanwhile are lost to this node; auditing after reconnect"
                );
                shared.link_lost();
                shared.audit_due.store(true, Ordering::SeqCst);
            }
            // Only the server unsubscribes this node (it never does): its
            // slot moved to another master (a reshard), or the master was
            // demoted. Messages published there since are lost to this node
            // until it subscribes again: rejoin (which subscribes where the
            // slot is now), then audit.
            PushKind::SUnsubscribe => {
                let channel = match info.data.first() {
                    Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
                    _ => String::new(),
                };
                tracing::warn!(
                    node = shared.cluster.node_id(),
                    %channel,
                    "sharded subscription dropped by Redis (its slot moved, or its master failed over): messages published meanwhile are lost to this node; subscribing again, then auditing"
                );
                shared.link_lost();
                shared.audit_due.store(true, Ordering::SeqCst);
                shared.wake.notify_one();
            }
            _ => {}
        }
    }
}

fn apply(shared: &Shared, message: BusMessage) {
    let me = shared.cluster.node_id();
    match message {
        BusMessage::Critical {
            user,
            stream,
            sequence,
            event_type,
            timestamp,
            data,
        } => {
            let (Ok(stream), Ok(sequence), Ok(timestamp)) =
                (stream.parse(), sequence.parse(), timestamp.parse())
            else {
                tracing::warn!(%user, "critical event with unreadable numbers ignored; auditing");
                shared.audit_due.store(true, Ordering::SeqCst);
                return;
            };
            // Every node hears every critical event: build the frame only
            // for users this node holds. (A connection registered after
            // this check reads the event from Redis: it was stored before
            // it was published, so before that connection's read.)
            if !shared.local.has_user(&user) {
                return;
            }
            let offset = StreamOffset::new(stream, sequence);
            let frame = critical_frame(&event_type, &data, timestamp, offset);
            shared
                .local
                .deliver_critical(&user, offset, &frame, Arrival::InOrder);
        }
        BusMessage::User {
            origin,
            user,
            frame,
        } if origin != me => {
            shared.local.send_to_user(&user, &TextFrame::from(frame));
        }
        BusMessage::Thread {
            origin,
            thread,
            frame,
        } if origin != me => {
            shared
                .local
                .send_to_thread(&thread, &TextFrame::from(frame));
        }
        BusMessage::Join {
            origin,
            connection,
            entry,
        } if origin != me => {
            shared.replica.join(&origin, connection, entry);
        }
        BusMessage::Leave { origin, connection } if origin != me => {
            shared.replica.leave(&origin, &connection);
        }
        BusMessage::Moved {
            origin,
            connection,
            thread,
        } if origin != me => {
            shared.replica.moved(&origin, &connection, thread);
        }
        BusMessage::Bind {
            connection, thread, ..
        } => {
            shared.local.update_thread(&connection, thread);
        }
        BusMessage::Bye { origin } if origin != me => {
            shared.replica.drop_node(&origin);
        }
        _ => {}
    }
}
