//! [`RedisHistory`]: the cluster manager's [`HistoryStore`]: each user's
//! critical events numbered by a Lua script in a Redis stream, read back
//! for a registering connection, and delivered on this node directly (the
//! in-order copy comes through the bus, see [`super::bus`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Shared;
use super::backplane::{AppendError, History, StoredEvent};
use crate::connection::TextFrame;
use crate::error::{ClusterFailure, ManagerError};
use crate::health::unix_millis;
use crate::ids::UserId;
use crate::managers::events::{ResyncNotice, critical_frame, critical_frame_max_len};
use crate::managers::fan_out::bump;
use crate::managers::history::{
    Appended, HistoryRead, HistoryStore, NewEvent, StreamView, next_stream, plan_resume,
    saw_another_event,
};
use crate::managers::index::{Arrival, CriticalOutcome, LocalIndex, Replay};
use crate::offset::{EventPrint, ResumePoint, StreamOffset, StreamPosition};

/// The Redis history of the node `shared`.
#[derive(Debug, Clone, Copy)]
pub(super) struct RedisHistory<'a> {
    pub shared: &'a Shared,
}

impl HistoryStore for RedisHistory<'_> {
    /// Redis keeps the history; the index's slots keep nothing of it.
    type Slot = ();

    async fn append<'a>(
        &'a self,
        user: &'a UserId,
        event: NewEvent<'a>,
        index: &'a LocalIndex,
    ) -> Result<Appended, ManagerError> {
        let shared = self.shared;
        let rejected = || bump(&shared.local.totals().critical_rejected, 1);
        let data = serde_json::to_string(event.data)?;
        // The frame's size is bounded before Redis assigns the sequence.
        let len = critical_frame_max_len(event.event_type, &data, event.timestamp);
        if len > shared.config.history_max_bytes() {
            rejected();
            return Err(ManagerError::CriticalEventTooLarge {
                user_id: user.clone(),
                len,
                max: shared.config.history_max_bytes(),
            });
        }
        let appended = shared
            .backplane
            .append(
                user,
                next_stream(),
                event.event_type,
                &data,
                event.timestamp,
                event.online,
                shared.config.history_capacity(),
                shared.config.history_max_age(),
                shared.cluster.stream_meta_ttl(),
                event
                    .key
                    .map(|key| (key, shared.config.idempotency_window())),
            )
            .await;
        let appended = match appended {
            Ok(appended) => appended,
            Err(AppendError::Full { pending }) => {
                rejected();
                return Err(ManagerError::HistoryFull {
                    user_id: user.clone(),
                    pending: usize::try_from(pending).unwrap_or(usize::MAX),
                });
            }
            Err(AppendError::Failed(failure)) => {
                rejected();
                return Err(super::cluster_error("append critical event", failure, 0));
            }
        };
        let offset = appended.offset;
        if appended.duplicate {
            return Ok(Appended {
                offset,
                pending: appended.pending,
                outcome: CriticalOutcome::default(),
                duplicate: true,
            });
        }
        let frame = critical_frame(event.event_type, &data, event.timestamp, offset);
        let outcome = index.deliver_critical(user, offset, &frame, Arrival::Direct);
        Ok(Appended {
            offset,
            pending: appended.pending,
            outcome,
            duplicate: false,
        })
    }

    async fn read<'a>(
        &'a self,
        user: &'a UserId,
        resume: Option<ResumePoint>,
    ) -> Result<HistoryRead, ManagerError> {
        let shared = self.shared;
        let history = read_history(shared, user, resume)
            .await
            .map_err(|failure| super::cluster_error("read history", failure, 0))?;
        if history.rotated {
            tracing::warn!(user_id = %user, resume = ?resume.map(|o| o.to_string()), head = history.stream,
                "a client resumed beyond the head of its stream in Redis (events were lost there): retired the stream; the client is told");
        }
        let now = unix_millis(SystemTime::now());
        // `read_history` compared the print: another event at the offset
        // retired the stream, so what it returned is the new one.
        let resume = resume.map(|point| point.offset);
        let (notice, events) = plan(&history, resume, shared.config.history_max_age(), now);
        let head = StreamOffset::new(history.stream, history.head);
        // For the transport's `hello`: what Redis holds. The read returned
        // the entries from `read_from` on, filtered by age; when it started
        // at the stream's first entry, the first one left is the oldest a
        // client can still get, else the stream's first entry is.
        let read_from = match resume {
            Some(offset) if offset.stream == history.stream => offset.sequence + 1,
            Some(_) => 1,
            None => history.taken + 1,
        };
        let oldest = if history.oldest == 0 {
            None
        } else if read_from <= history.oldest {
            events.first().map(|e| e.sequence)
        } else {
            Some(history.oldest)
        };
        let replayed_any = !events.is_empty() || notice.is_some();
        Ok(HistoryRead {
            replay: Replay {
                notice: match &notice {
                    Some(notice) => Some(TextFrame::from_json(notice)?),
                    None => None,
                },
                events: events
                    .iter()
                    .map(|e| {
                        let offset = StreamOffset::new(history.stream, e.sequence);
                        (
                            offset,
                            critical_frame(&e.event_type, &e.data, e.timestamp, offset),
                        )
                    })
                    .collect(),
                head: (history.head > 0).then_some(head),
            },
            notice,
            position: Some(StreamPosition::new(
                Some(head),
                oldest.map(|sequence| StreamOffset::new(history.stream, sequence)),
                shared.config.history_capacity(),
                shared.config.history_max_age(),
            )),
            // Only a connection without an offset takes what is pending.
            marks_taken: resume.is_none() && replayed_any && history.head > history.taken,
        })
    }

    async fn replayed<'a>(&'a self, user: &'a UserId, through: Option<StreamOffset>) {
        let Some(through) = through else {
            return;
        };
        // Best effort: a failure only means a later connection without an
        // offset is sent these events again.
        if let Err(error) = self.shared.backplane.mark_taken(user, through).await {
            tracing::debug!(%error, "could not mark replayed events as taken");
        }
    }
}

/// Reads a registering connection's history through the node's
/// [`HistoryReads`](super::history_reads::HistoryReads): bounded, and
/// shared with the user's other registrations waiting at the same time.
///
/// A resume that carries a print reads from the event it names, to check
/// it: another event there means Redis lost the one the client saw and
/// numbered a new one over it, so the stream is retired (as the audit
/// does) and the client is told (`unknown_stream`).
async fn read_history(
    shared: &Shared,
    user: &UserId,
    resume: Option<ResumePoint>,
) -> Result<Arc<History>, ClusterFailure> {
    let reads = &shared.history_reads;
    let offset = resume.map(|point| point.offset);
    let start = match resume {
        Some(point) if point.checked_print().is_some() => Some(StreamOffset::new(
            point.offset.stream,
            point.offset.sequence - 1,
        )),
        _ => offset,
    };
    let read = reads
        .read(&shared.backplane, &shared.cluster, user, start)
        .await?;
    // A read that started lower than this offset (shared, or for the
    // print); one beyond the head it saw means the numbering went
    // backwards, which only a read from this very offset settles (it
    // retires the stream): read alone.
    let beyond_head = |history: &History| {
        offset.is_some_and(|o| o.stream == history.stream && o.sequence > history.head)
    };
    if read.from != offset && beyond_head(&read.history) {
        let own = reads
            .read_alone(&shared.backplane, &shared.cluster, user, offset)
            .await?;
        return Ok(own.history);
    }
    let history = &read.history;
    if names_another_event(history, resume) {
        let retired = shared
            .backplane
            .rotate_stream(
                user,
                history.stream,
                next_stream(),
                shared.cluster.stream_meta_ttl(),
            )
            .await?;
        tracing::warn!(user_id = %user, resume = ?resume.map(|r| r.to_string()), retired,
            "a client resumed from an event Redis no longer holds at its offset (events were lost there and their offsets numbered again): retired the stream; the client is told");
        let own = reads
            .read_alone(&shared.backplane, &shared.cluster, user, offset)
            .await?;
        return Ok(own.history);
    }
    Ok(read.history)
}

/// Whether the client resuming from `resume` saw another event than the
/// one this read holds at its offset (see [`saw_another_event`]).
fn names_another_event(history: &History, resume: Option<ResumePoint>) -> bool {
    saw_another_event(history.stream, resume, |sequence| {
        print_at(history, sequence)
    })
}

/// The print of the event at `sequence` in what a read returned, if it
/// returned it.
fn print_at(history: &History, sequence: u64) -> Option<EventPrint> {
    let event = history.events.iter().find(|e| e.sequence == sequence)?;
    let offset = StreamOffset::new(history.stream, sequence);
    let frame = critical_frame(&event.event_type, &event.data, event.timestamp, offset);
    Some(EventPrint::of(frame.as_str()))
}

/// What a connection resuming from `resume` is sent, from what Redis
/// holds: [`plan_resume`] over the events the read returned that are not
/// older than `max_age` (the read started at the first one the client is
/// owed, so the first of them is the first it can still get).
fn plan(
    history: &History,
    resume: Option<StreamOffset>,
    max_age: Duration,
    now_ms: u64,
) -> (Option<ResyncNotice>, Vec<StoredEvent>) {
    let oldest_allowed =
        now_ms.saturating_sub(u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX));
    let events: Vec<StoredEvent> = history
        .events
        .iter()
        .filter(|e| e.timestamp >= oldest_allowed)
        .cloned()
        .collect();
    let first_available = events.first().map_or(history.head + 1, |e| e.sequence);
    let view = StreamView {
        stream: history.stream,
        head: history.head,
        first_retained: first_available,
        taken: history.taken,
        unannounced_loss: (first_available > history.taken + 1)
            .then(|| first_available - history.taken - 1),
    };
    // The print was compared before (`names_another_event`), once.
    let plan = plan_resume(&view, resume.map(ResumePoint::new), |_| None, now_ms);
    let events = events
        .into_iter()
        .filter(|e| e.sequence >= plan.from)
        .collect();
    (plan.notice, events)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::managers::events::ResyncReason;

    fn history(head: u64, taken: u64, retained: std::ops::RangeInclusive<u64>, ts: u64) -> History {
        History {
            stream: 7,
            head,
            taken,
            oldest: *retained.start(),
            rotated: false,
            events: retained
                .map(|sequence| StoredEvent {
                    sequence,
                    event_type: "agent_thinking".to_owned(),
                    data: "{}".to_owned(),
                    timestamp: ts,
                })
                .collect(),
        }
    }

    const AGE: Duration = Duration::from_secs(60);

    #[test]
    fn resume_plans_say_what_was_lost() {
        let now = 1_000_000;
        // Exact resume: the read started after the offset; no notice.
        let (notice, events) = plan(
            &history(10, 10, 6..=10, now),
            Some(StreamOffset::new(7, 5)),
            AGE,
            now,
        );
        assert!(notice.is_none());
        assert_eq!(events.len(), 5);
        let h = history(10, 10, 4..=10, now);
        // Trimmed: 3 lost (1..=3 gone, client had 0).
        let (notice, _) = plan(&h, Some(StreamOffset::new(7, 0)), AGE, now);
        let notice = notice.unwrap();
        assert_eq!(
            (notice.reason, notice.lost),
            (ResyncReason::Trimmed, Some(3))
        );
        assert_eq!(notice.oldest_retained, Some(StreamOffset::new(7, 4)));
        // Another stream.
        let (notice, events) = plan(&h, Some(StreamOffset::new(8, 5)), AGE, now);
        assert_eq!(notice.unwrap().reason, ResyncReason::UnknownStream);
        assert_eq!(events.len(), 7);
        // Ahead.
        let (notice, events) = plan(&h, Some(StreamOffset::new(7, 11)), AGE, now);
        assert_eq!(notice.unwrap().reason, ResyncReason::Ahead);
        assert_eq!(
            events.len(),
            7,
            "then everything retained, as for another stream"
        );
    }

    #[test]
    fn a_resume_whose_print_names_another_event_is_caught() {
        let now = 1_000_000;
        let h = history(10, 10, 4..=10, now);
        let seen = |sequence| print_at(&h, sequence).unwrap();
        let resume = |stream, sequence, print| {
            Some(ResumePoint {
                offset: StreamOffset::new(stream, sequence),
                print: Some(print),
            })
        };
        // The event the client saw: an exact resume, no notice.
        assert!(!names_another_event(&h, resume(7, 6, seen(6))));
        let (notice, events) = plan(&h, Some(StreamOffset::new(7, 6)), AGE, now);
        assert!(notice.is_none());
        assert_eq!(events.first().map(|e| e.sequence), Some(7));
        // Another event at its offset (the stream is then retired).
        assert!(names_another_event(&h, resume(7, 6, seen(5))));
        // Nothing to compare: its event is gone, another stream, no print.
        assert!(!names_another_event(&h, resume(7, 2, seen(5))));
        assert!(!names_another_event(&h, resume(8, 6, seen(5))));
        assert!(!names_another_event(
            &h,
            Some(ResumePoint::new(StreamOffset::new(7, 6)))
        ));
    }

    #[test]
    fn expired_pending_events_are_announced_to_a_fresh_connection() {
        let now = 1_000_000;
        // Taken through 4; 5..=10 pending but older than max_age.
        let h = history(10, 4, 5..=10, now - 61_000);
        let (notice, events) = plan(&h, None, AGE, now);
        let notice = notice.unwrap();
        assert_eq!(
            (notice.reason, notice.lost, notice.requested),
            (ResyncReason::Trimmed, Some(6), None)
        );
        assert!(events.is_empty());
        // Nothing pending: nothing to say.
        let (notice, _) = plan(&history(10, 10, 5..=10, now), None, AGE, now);
        assert!(notice.is_none());
    }
}
