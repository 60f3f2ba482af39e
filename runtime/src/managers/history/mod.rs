//! Numbering and retention of critical events, behind one interface
//! ([`HistoryStore`]) with two implementations: [`MemoryHistory`] (this
//! process; the unified and isolated managers, and the public
//! [`CriticalEventLog`](super::CriticalEventLog)) and, with the feature
//! `redis`, the cluster manager's Redis streams. The
//! [`LocalIndex`](super::index::LocalIndex) delivers what a store numbers;
//! [`register`] and [`emit`] are the two flows every shipped manager runs.
//!
//! The model is centrifuge's `Node { hub, broker }`: the hub (our index)
//! holds connections and their positions, the broker (our store) assigns
//! offsets, retains, and hands each event to the hub in stream order.

mod log;
mod memory;

use std::future::Future;
use std::time::SystemTime;

use crate::close;
use crate::connection::{TextFrame, WebSocketConnection};
use crate::error::ManagerError;
use crate::health::unix_millis;
use crate::ids::{IdempotencyKey, UserId};
use crate::managers::events::{ResyncNotice, critical_frame, validate_event_type};
use crate::managers::fan_out::bump;
use crate::managers::index::{CriticalOutcome, LocalIndex, Replay};
use crate::offset::{StreamOffset, StreamPosition};

pub(crate) use memory::{LocalHistory, MemoryHistory};

/// A fresh stream id: unique within the process and, because it starts from
/// the clock, increasing across restarts too.
pub(crate) fn next_stream() -> u64 {
    static NEXT: std::sync::OnceLock<std::sync::atomic::AtomicU64> = std::sync::OnceLock::new();
    NEXT.get_or_init(|| {
        std::sync::atomic::AtomicU64::new(unix_millis(SystemTime::now()).saturating_mul(1000))
    })
    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A critical event about to be numbered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewEvent<'a> {
    pub event_type: &'a str,
    /// The data, as JSON text.
    pub data: &'a str,
    /// When it was emitted, in ms since the epoch.
    pub timestamp: u64,
    /// Whether a connection of the user is known anywhere: a store that
    /// cannot see deliveries (Redis) marks the event taken at once when so.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub online: bool,
    /// A retry with this key within the window stores nothing new and
    /// answers the first attempt's offset.
    pub key: Option<&'a IdempotencyKey>,
}

impl NewEvent<'_> {
    /// The event's frame at `offset`.
    pub fn frame(&self, offset: StreamOffset) -> TextFrame {
        critical_frame(self.event_type, self.data, self.timestamp, offset)
    }
}

/// What a store did with an event.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Appended {
    pub offset: StreamOffset,
    /// Events no connection has taken, this one included.
    pub pending: u64,
    /// What the index did with it.
    pub outcome: CriticalOutcome,
    /// A retry of `NewEvent::key`: nothing was stored or sent, `offset` is
    /// the first attempt's.
    pub duplicate: bool,
}

/// What a registering connection is owed, as a store reads it.
#[derive(Debug, Default)]
pub(crate) struct HistoryRead {
    /// The frames, for [`LocalIndex::finish`].
    pub replay: Replay,
    /// The notice in `replay`, for logs and counters.
    pub notice: Option<ResyncNotice>,
    /// What the transport's `hello` says of the user's stream.
    pub position: Option<StreamPosition>,
    /// Whether [`HistoryStore::replayed`] has something to record once the
    /// connection is live (the cluster skips the round trip when not).
    pub marks_taken: bool,
}

/// Numbering and retention of every user's critical events.
///
/// `append` numbers the event, retains it and hands it, with its offset,
/// to [`LocalIndex::deliver_critical`]: a store that
/// can keep stream order (memory) calls it under its per-user lock with
/// [`Arrival::InOrder`]; one that cannot (Redis, whose pub/sub brings the
/// in-order copy) with [`Arrival::Direct`]. `read` answers what a
/// connection resuming from an offset is owed; `replayed` records that it
/// got it.
pub(crate) trait HistoryStore: Send + Sync {
    fn append<'a>(
        &'a self,
        user: &'a UserId,
        event: NewEvent<'a>,
        index: &'a LocalIndex,
    ) -> impl Future<Output = Result<Appended, ManagerError>> + Send + 'a;

    fn read<'a>(
        &'a self,
        user: &'a UserId,
        resume: Option<StreamOffset>,
    ) -> impl Future<Output = Result<HistoryRead, ManagerError>> + Send + 'a;

    /// A connection of `user` was sent everything up to `through`: what
    /// was pending up to there is taken.
    fn replayed<'a>(
        &'a self,
        user: &'a UserId,
        through: Option<StreamOffset>,
    ) -> impl Future<Output = ()> + Send + 'a;
}

/// Registers `connection`: catching up in the index, its history read,
/// replayed, then live. `still_wanted` runs once it is live (the cluster
/// manager refuses it there when it was fenced meanwhile; it removes the
/// connection itself).
pub(crate) async fn register<S: HistoryStore>(
    index: &LocalIndex,
    store: &S,
    connection: WebSocketConnection,
    still_wanted: impl FnOnce() -> Result<(), ManagerError>,
) -> Result<(), ManagerError> {
    let user = connection.user_id.clone();
    let id = connection.connection_id.clone();
    let resume = connection.resume;
    let socket = connection.websocket.clone();
    index.begin(connection)?;
    let read = match store.read(&user, resume).await {
        Ok(read) => read,
        Err(error) => {
            index.remove(&id, close::CloseReason::going_away());
            return Err(error);
        }
    };
    if let Some(position) = read.position {
        socket.record_stream_position(position);
    }
    drop(socket);
    let notice = read.notice;
    let marks_taken = read.marks_taken;
    let finished = index.finish(&user, &id, read.replay).inspect_err(|error| {
        tracing::warn!(user_id = %user, connection_id = %id, %error,
            "replay did not fit the new socket's queue; connection refused");
    })?;
    let Some(finished) = finished else {
        // Removed while catching up: nothing to record.
        return Ok(());
    };
    still_wanted()?;
    if let Some(notice) = &notice {
        // Routine after a restart or a long absence; a loss of events no
        // connection took was already warned about when it happened.
        tracing::debug!(user_id = %user, connection_id = %id, reason = ?notice.reason,
            requested = ?notice.requested, lost = ?notice.lost,
            "resync notice sent: the client missed critical events that are no longer retained");
        bump(&index.totals().resync_notices, 1);
    }
    if finished.events > 0 {
        tracing::debug!(user_id = %user, connection_id = %id, events = finished.events,
            "replayed critical events");
    }
    if marks_taken {
        store.replayed(&user, finished.at).await;
    }
    Ok(())
}

/// Emits a critical event: validated, numbered and retained by `store`,
/// delivered by `index`. The caller turns the result into a `Delivery`.
pub(crate) async fn emit<S: HistoryStore>(
    index: &LocalIndex,
    store: &S,
    user: &UserId,
    event_type: &str,
    data: &serde_json::Value,
    online: bool,
    key: Option<&IdempotencyKey>,
) -> Result<Appended, ManagerError> {
    validate_event_type(event_type)?;
    if index.is_shut_down() {
        return Err(ManagerError::ShutDown);
    }
    let data = serde_json::to_string(data)?;
    let event = NewEvent {
        event_type,
        data: &data,
        timestamp: unix_millis(SystemTime::now()),
        online,
        key,
    };
    store.append(user, event, index).await
}
