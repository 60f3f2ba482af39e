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
use crate::managers::events::{ResyncNotice, ResyncReason, validate_event_type};
use crate::managers::fan_out::bump;
use crate::managers::index::{CriticalOutcome, LocalIndex, Replay, UserHistory};
use crate::offset::{EventPrint, ResumePoint, StreamOffset, StreamPosition};

pub(crate) use memory::{LocalHistory, MemoryHistory, UserLog};

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
    /// The data (a store that ships it elsewhere serializes it itself).
    pub data: &'a serde_json::Value,
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
    /// The event's frame at `offset`, serialized once into one buffer:
    /// byte for byte what [`critical_frame`] builds from the data's JSON
    /// text.
    pub fn frame(&self, offset: StreamOffset) -> Result<TextFrame, ManagerError> {
        use std::io::Write;
        // serde_json's own buffer grows 128 -> 256: most events fit 256
        // bytes without a reallocation.
        let mut buffer = Vec::with_capacity(256);
        // `event_type` passed `validate_event_type`: nothing to escape.
        let _ = write!(buffer, r#"{{"type":"{}","data":"#, self.event_type);
        serde_json::to_writer(&mut buffer, self.data)?;
        let _ = write!(
            buffer,
            r#","timestamp":{},"critical":true,"stream":{},"sequence":{}}}"#,
            self.timestamp, offset.stream, offset.sequence
        );
        // Only UTF-8 went in: the type (validated), serde_json's output and
        // digits.
        Ok(TextFrame::from_json_bytes(buffer))
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
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // the cluster manager's path
    pub marks_taken: bool,
}

/// Numbering and retention of every user's critical events.
///
/// `append` numbers the event, retains it and hands it, with its offset,
/// to the index: the in-memory store under the user's one lock (its log is
/// in the user's slot), so in stream order; Redis's with
/// [`Arrival::Direct`](crate::managers::index::Arrival::Direct), its
/// pub/sub bringing the in-order copy. `read` answers what a
/// connection resuming from an offset is owed; `replayed` records that it
/// got it.
pub(crate) trait HistoryStore: Send + Sync {
    /// What it keeps per user in the index's user slot.
    type Slot: UserHistory;

    fn append<'a>(
        &'a self,
        user: &'a UserId,
        event: NewEvent<'a>,
        index: &'a LocalIndex<Self::Slot>,
    ) -> impl Future<Output = Result<Appended, ManagerError>> + Send + 'a;

    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // the cluster manager's path
    fn read<'a>(
        &'a self,
        user: &'a UserId,
        resume: Option<ResumePoint>,
    ) -> impl Future<Output = Result<HistoryRead, ManagerError>> + Send + 'a;

    /// A connection of `user` was sent everything up to `through`: what
    /// was pending up to there is taken.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // the cluster manager's path
    fn replayed<'a>(
        &'a self,
        user: &'a UserId,
        through: Option<StreamOffset>,
    ) -> impl Future<Output = ()> + Send + 'a;
}

/// What a store holds of a user's stream when a connection registers: all
/// [`plan_resume`] needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamView {
    pub stream: u64,
    /// The last sequence numbered (0: none yet).
    pub head: u64,
    /// The first sequence still retained (`head + 1` when none is).
    pub first_retained: u64,
    /// Every event up to this sequence was taken by a connection.
    pub taken: u64,
    /// Events no connection took that are gone (evicted or expired) and
    /// not yet announced: a connection without an offset is told.
    pub unannounced_loss: Option<u64>,
}

/// What a registering connection is sent: a notice when part of what it is
/// owed is gone, then the retained events from `from` on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResumePlan {
    pub notice: Option<ResyncNotice>,
    pub from: u64,
}

/// Whether the client resuming from `resume` saw another event than the
/// one the store holds at its offset: it sent the event's print, the store
/// still holds an event there (`print_at`, in the same stream), and the
/// prints differ. Only a storage that lost events and numbered new ones
/// over them (or an offset from elsewhere) does that.
pub(crate) fn saw_another_event(
    stream: u64,
    resume: Option<ResumePoint>,
    print_at: impl FnOnce(u64) -> Option<EventPrint>,
) -> bool {
    let Some(point) = resume else {
        return false;
    };
    let Some(print) = point.checked_print() else {
        return false;
    };
    point.offset.stream == stream
        && print_at(point.offset.sequence).is_some_and(|held| held != print)
}

/// The one rule for resuming, for every store: from the client's offset
/// when its stream still holds what follows; a `trimmed` notice (with how
/// many) when some of it is gone; `unknown_stream` or `ahead` (then every
/// retained event) when the offset means nothing on this stream, or names
/// another event than the client saw (`print_at`: the print of the event
/// the store holds at a sequence, see [`saw_another_event`]); without an
/// offset, what no connection took, after a notice of what of that is gone.
pub(crate) fn plan_resume(
    view: &StreamView,
    resume: Option<ResumePoint>,
    print_at: impl FnOnce(u64) -> Option<EventPrint>,
    timestamp: u64,
) -> ResumePlan {
    let notice = |reason, requested, lost, from: u64| ResyncNotice {
        reason,
        requested,
        oldest_retained: (from <= view.head).then(|| StreamOffset::new(view.stream, from)),
        latest: StreamOffset::new(view.stream, view.head),
        lost,
        timestamp,
    };
    let Some(offset) = resume.map(|point| point.offset) else {
        let from = (view.taken + 1).max(view.first_retained);
        return ResumePlan {
            notice: view
                .unannounced_loss
                .map(|lost| notice(ResyncReason::Trimmed, None, Some(lost), from)),
            from,
        };
    };
    let (reason, lost) = if offset.stream != view.stream {
        (ResyncReason::UnknownStream, None)
    } else if offset.sequence > view.head {
        (ResyncReason::Ahead, None)
    } else if saw_another_event(view.stream, resume, print_at) {
        (ResyncReason::UnknownStream, None)
    } else if offset.sequence + 1 < view.first_retained {
        (
            ResyncReason::Trimmed,
            Some(view.first_retained - 1 - offset.sequence),
        )
    } else {
        return ResumePlan {
            notice: None,
            from: offset.sequence + 1,
        };
    };
    ResumePlan {
        notice: Some(notice(reason, Some(offset), lost, view.first_retained)),
        from: view.first_retained,
    }
}

/// Registers `connection`: catching up in the index, its history read,
/// replayed, then live. `still_wanted` runs once it is live (the cluster
/// manager refuses it there when it was fenced meanwhile; it removes the
/// connection itself).
#[cfg_attr(not(feature = "redis"), allow(dead_code))] // the cluster manager's path
pub(crate) async fn register<S: HistoryStore>(
    index: &LocalIndex<S::Slot>,
    store: &S,
    connection: WebSocketConnection,
    still_wanted: impl FnOnce() -> Result<(), ManagerError>,
) -> Result<(), ManagerError> {
    let user = connection.user_id.clone();
    let id = connection.connection_id.clone();
    let resume = connection.resume_point();
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
        tracing::warn!(user_id = %user, connection_id = %id, %error, "connection refused");
    })?;
    let Some(finished) = finished else {
        // Removed while catching up: nothing to record.
        return Ok(());
    };
    still_wanted()?;
    announce(index, &user, &id, notice.as_ref(), finished.events);
    if marks_taken {
        store.replayed(&user, finished.at).await;
    }
    Ok(())
}

/// Registers `connection` in one step under its user's lock, for the
/// in-memory history (its log is in the user's slot): nothing can come
/// between the read and the publication, however busy the user.
pub(crate) fn register_locked(
    index: &LocalIndex<UserLog>,
    history: &MemoryHistory,
    connection: WebSocketConnection,
) -> Result<(), ManagerError> {
    let user = connection.user_id.clone();
    let id = connection.connection_id.clone();
    let resume = connection.resume_point();
    let (finished, notice) = index
        .register_locked(
            connection,
            |state, user| {
                history
                    .plan_for(state, user, resume)
                    .map(|read| (read.replay, read.position, read.notice))
            },
            |state, through| history.replayed(state, through),
        )
        .inspect_err(|error| {
            // The other refusals (a duplicate, the per-user cap) are the
            // caller's to report; this one is ours.
            if matches!(error, ManagerError::ReplayFailed { .. }) {
                tracing::warn!(user_id = %user, connection_id = %id, %error,
                    "replay did not fit the new socket's queue; connection refused");
            }
        })?;
    if let Some(finished) = finished {
        announce(index, &user, &id, notice.as_ref(), finished.events);
    }
    Ok(())
}

/// Logs and counts what a registration replayed.
fn announce<H: UserHistory>(
    index: &LocalIndex<H>,
    user: &UserId,
    id: &crate::ids::ConnectionId,
    notice: Option<&ResyncNotice>,
    events: usize,
) {
    if let Some(notice) = notice {
        // Routine after a restart or a long absence; a loss of events no
        // connection took was already warned about when it happened.
        tracing::debug!(user_id = %user, connection_id = %id, reason = ?notice.reason,
            requested = ?notice.requested, lost = ?notice.lost,
            "resync notice sent: the client missed critical events that are no longer retained");
        bump(&index.totals().resync_notices, 1);
    }
    if events > 0 {
        tracing::debug!(user_id = %user, connection_id = %id, events,
            "replayed critical events");
    }
}

/// Emits a critical event: validated, numbered and retained by `store`,
/// delivered by `index`. The caller turns the result into a `Delivery`.
pub(crate) async fn emit<S: HistoryStore>(
    index: &LocalIndex<S::Slot>,
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
    let event = NewEvent {
        event_type,
        data,
        timestamp: unix_millis(SystemTime::now()),
        online,
        key,
    };
    store.append(user, event, index).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::managers::events::CriticalEnvelope;

    #[test]
    fn an_event_frame_is_the_envelope_serde_writes() {
        let data = serde_json::json!({"text": "a \"quoted\" line\n", "n": [1, 2.5, null]});
        let event = NewEvent {
            event_type: "tool.progress-2",
            data: &data,
            timestamp: 1_700_000_000_123,
            online: false,
            key: None,
        };
        let envelope = CriticalEnvelope {
            event_type: "tool.progress-2".to_owned(),
            data: data.clone(),
            timestamp: 1_700_000_000_123,
            critical: true,
            stream: 17_000_000_001_234,
            sequence: 42,
        };
        let frame = event
            .frame(StreamOffset::new(17_000_000_001_234, 42))
            .unwrap();
        let serde = serde_json::to_string(&envelope).unwrap();
        assert_eq!(frame.as_str(), serde);
        // The frame the cluster builds from the data's JSON text (bus,
        // replay) is the same bytes.
        #[cfg(feature = "redis")]
        assert_eq!(
            crate::managers::events::critical_frame(
                "tool.progress-2",
                &serde_json::to_string(&data).unwrap(),
                1_700_000_000_123,
                StreamOffset::new(17_000_000_001_234, 42),
            )
            .as_str(),
            serde
        );
    }
}
