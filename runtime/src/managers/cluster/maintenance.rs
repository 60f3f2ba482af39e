//! The maintenance task: writes presence changes in batches, joins the
//! cluster and keeps the node in it (heartbeat, refresh of the others'
//! presence, audits after a possible loss), and leaves it at shutdown.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::Shared;
use super::backplane::NodePresence;
use super::presence::{self, PresenceChange};
use crate::error::ClusterFailure;
use crate::ids::UserId;
use crate::managers::events::critical_frame;
use crate::managers::history::next_stream;
use crate::managers::index::frame_print;
use crate::offset::StreamOffset;

/// Writes presence changes in batches; a failed batch makes the next
/// heartbeat rewrite the whole presence.
pub(super) async fn write_presence(
    shared: Weak<Shared>,
    mut outbound: mpsc::Receiver<PresenceChange>,
) {
    let mut batch = Vec::with_capacity(256);
    while outbound.recv_many(&mut batch, 256).await > 0 {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(error) = shared.backplane.write_presence(&batch).await {
            tracing::warn!(%error, changes = batch.len(),
                "presence changes not written; the next heartbeat rewrites this node's presence");
            shared.presence_dirty.store(true, Ordering::SeqCst);
        }
        batch.clear();
    }
}

/// Subscribes, then every heartbeat interval: renews the heartbeat,
/// rewrites presence when Redis lost it, refreshes the replica, and audits
/// after a disconnect.
pub(super) async fn maintain(shared: Weak<Shared>) {
    let interval = match shared.upgrade() {
        Some(shared) => shared.cluster.heartbeat_interval(),
        None => return,
    };
    let mut next = Instant::now();
    loop {
        {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            if shared.shut_down.load(Ordering::SeqCst) {
                leave(&shared).await;
                return;
            }
            let ready = shared.is_ready();
            let result = if ready {
                tick(&shared).await
            } else {
                connect(&shared).await
            };
            if let Err(error) = result {
                if ready {
                    tracing::warn!(%error, node = shared.cluster.node_id(), "cluster maintenance failed; retrying");
                }
                shared.link_lost();
            }
        }
        next += interval;
        let now = Instant::now();
        if next < now {
            next = now;
        }
        // Not ready: retry sooner than a full interval.
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let wait = if strong.is_ready() {
            next - now
        } else {
            Duration::from_millis(200).min(interval)
        };
        // Holding the manager while asleep delays its drop by at most one
        // interval; a shutdown wakes the task at once.
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = strong.wake.notified() => {}
            () = strong.stop.notified() => {}
        }
    }
}

/// Leaves the cluster for good (and deletes a probe's namespace).
async fn leave(shared: &Shared) {
    if let Err(error) = shared.backplane.leave_cluster().await {
        tracing::warn!(%error, node = shared.cluster.node_id(),
            "could not remove this node's presence; the others drop it when its heartbeat expires");
    }
    if shared.probe
        && let Err(error) = shared.backplane.delete_namespace().await
    {
        tracing::warn!(%error, prefix = shared.cluster.key_prefix(), "probe namespace not deleted");
    }
    shared.stopped.notify_one();
}

/// (Re)joins: subscribes (again), audits if messages may have been lost,
/// registers presence, reads the cluster; then the node is ready.
async fn connect(shared: &Shared) -> Result<(), ClusterFailure> {
    // Under Sentinel, the primary may have moved since the last join (a
    // failover): what was published meanwhile never reached us.
    if shared.backplane.follow_primary().await? {
        shared.audit_due.store(true, Ordering::SeqCst);
    }
    shared.backplane.subscribe().await?;
    // Subscribed first: anything published from now on reaches us, so the
    // audit's reads cannot miss an event.
    if shared.audit_due.swap(false, Ordering::SeqCst)
        && let Err(error) = audit(shared).await
    {
        shared.audit_due.store(true, Ordering::SeqCst);
        return Err(error);
    }
    shared.renew_heartbeat().await?;
    shared.presence_dirty.store(false, Ordering::SeqCst);
    rewrite_presence(shared).await?;
    // Messages may have been lost while joining: read everyone.
    refresh(shared, true).await?;
    shared.link_joined();
    tracing::info!(node = shared.cluster.node_id(), "joined the cluster");
    Ok(())
}

async fn tick(shared: &Shared) -> Result<(), ClusterFailure> {
    if shared.audit_due.load(Ordering::SeqCst) {
        // A full inbound buffer: messages were dropped while connected.
        return connect(shared).await;
    }
    let registered = shared.renew_heartbeat().await?;
    if !registered || shared.presence_dirty.swap(false, Ordering::SeqCst) {
        if !registered {
            tracing::warn!(
                node = shared.cluster.node_id(),
                "this node's presence is gone from Redis (restart or flush): rewriting it"
            );
        }
        rewrite_presence(shared).await?;
    }
    let ticks = shared.refreshes.fetch_add(1, Ordering::Relaxed) + 1;
    refresh(shared, ticks.is_multiple_of(FULL_REFRESH_EVERY)).await
}

/// Every this many heartbeats a node re-reads every other node's presence
/// in full, whatever the versions say: a bound on any drift nothing else
/// noticed (in between it reads only what changed, see
/// `Backplane::read_cluster`).
const FULL_REFRESH_EVERY: u64 = 20;

impl Shared {
    /// A version above every earlier one of this node, also across a
    /// restart under the same node id (it starts from the clock).
    fn next_presence_version(&self) -> u64 {
        let now = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros(),
        )
        .unwrap_or(u64::MAX);
        let mut version = 0;
        let _ = self
            .presence_version
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |before| {
                version = now.max(before + 1);
                Some(version)
            });
        version
    }

    /// The version of each other node's presence read last.
    fn presence_versions(&self) -> HashMap<String, u64> {
        self.presence_versions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records that `node`'s presence was read at `version` (`None`: the
    /// node is gone).
    fn read_presence_version(&self, node: &str, version: Option<u64>) {
        let mut versions = self
            .presence_versions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match version {
            Some(version) => versions.insert(node.to_owned(), version),
            None => versions.remove(node),
        };
    }
}

/// Rewrites this node's presence hash under a new version, so the others
/// read it again.
async fn rewrite_presence(shared: &Shared) -> Result<(), ClusterFailure> {
    let version = shared.next_presence_version();
    shared
        .backplane
        .rewrite_presence(
            &presence::presence_entries(&shared.local),
            version,
            shared.cluster.node_ttl(),
        )
        .await
}

/// Refreshes the replica of the others' presence: reads the nodes whose
/// presence changed version since it was read (every node when `full`);
/// forgets dead nodes.
async fn refresh(shared: &Shared, full: bool) -> Result<(), ClusterFailure> {
    let read_at = Instant::now();
    let known = (!full).then(|| shared.presence_versions());
    let nodes = shared.backplane.read_cluster(known.as_ref()).await?;
    for (node, presence) in nodes {
        match presence {
            NodePresence::Read { version, entries } => {
                shared.replica.replace_node(&node, entries, read_at);
                shared.read_presence_version(&node, Some(version));
            }
            NodePresence::Unchanged => {}
            NodePresence::Dead => {
                let dropped = shared.replica.drop_node(&node);
                shared.read_presence_version(&node, None);
                tracing::info!(%node, connections = dropped, "node missed its heartbeat: forgotten");
                shared.backplane.forget_node(&node).await?;
            }
        }
    }
    // Joins and leaves heard before this read are settled by it (or by
    // an earlier read of an unchanged node).
    shared.replica.settle(read_at);
    Ok(())
}

/// Compares every local user's stream in Redis with what their connections
/// were given: connections behind are closed (for a resume); a stream whose
/// numbering went backwards (a connection was given an offset beyond the
/// head, or a different event at the same offset: Redis lost events) is
/// retired for a new one, and the user's connections are closed, so their
/// clients are told (`unknown_stream`) instead of taking new events for
/// ones they saw.
async fn audit(shared: &Shared) -> Result<(), ClusterFailure> {
    let cursors = shared.local.cursors();
    let mut closed = 0;
    let mut rotated = 0;
    for chunk in cursors.chunks(512) {
        let probes: Vec<(UserId, Option<StreamOffset>)> = chunk
            .iter()
            .map(|(user, furthest)| (user.clone(), furthest.map(|(at, _)| at)))
            .collect();
        let states = shared.backplane.stream_states(&probes).await?;
        for ((user, furthest), (head, entry)) in chunk.iter().zip(states) {
            let head = head.filter(|h| h.sequence > 0);
            let print_at = entry.map(|e| {
                let at = StreamOffset::new(head.map_or(0, |h| h.stream), e.sequence);
                frame_print(&critical_frame(&e.event_type, &e.data, e.timestamp, at))
            });
            if let Some((at, _)) = furthest
                && regressed(*furthest, head, print_at)
            {
                if shared
                    .backplane
                    .rotate_stream(
                        user,
                        at.stream,
                        next_stream(),
                        shared.cluster.stream_meta_ttl(),
                    )
                    .await?
                {
                    rotated += 1;
                }
                tracing::warn!(user_id = %user, given = %at, head = ?head.map(|h| h.to_string()),
                    "the user's stream in Redis went backwards (events were lost there): retired it; its clients are told");
                closed += shared
                    .local
                    .close_user(user, &crate::close::missed_events());
            } else {
                closed += shared.local.close_behind(user, head);
            }
        }
    }
    shared.audits.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        users = cursors.len(),
        closed,
        rotated,
        "audit after a possible message loss"
    );
    Ok(())
}

/// Whether the stream went backwards under a connection that was given
/// `furthest` (its offset and fingerprint): its offset is beyond the head
/// of the same stream, or the event Redis holds there is another one
/// (`print_at`, when still retained).
fn regressed(
    furthest: Option<(StreamOffset, u64)>,
    head: Option<StreamOffset>,
    print_at: Option<u64>,
) -> bool {
    let Some((at, print)) = furthest else {
        return false;
    };
    match head {
        // Same stream: beyond its head, or another event at that offset.
        Some(head) if head.stream == at.stream => {
            at.sequence > head.sequence || matches!(print_at, Some(p) if print != 0 && p != print)
        }
        // Another stream, or none: the client resumes and is told.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_went_backwards_when_a_connection_is_beyond_it_or_holds_another_event() {
        let given = |sequence, print| Some((StreamOffset::new(7, sequence), print));
        let head = |sequence| Some(StreamOffset::new(7, sequence));
        assert!(regressed(given(8, 42), head(5), None), "beyond the head");
        assert!(
            regressed(given(5, 42), head(9), Some(43)),
            "another event at 5"
        );
        assert!(
            !regressed(given(5, 42), head(9), Some(42)),
            "the same event: behind"
        );
        assert!(
            !regressed(given(5, 42), head(9), None),
            "no longer retained: behind"
        );
        assert!(
            !regressed(given(5, 0), head(9), Some(43)),
            "no fingerprint kept"
        );
        assert!(!regressed(given(5, 42), head(5), Some(42)), "in step");
        assert!(
            !regressed(given(5, 42), Some(StreamOffset::new(8, 1)), None),
            "another stream: the resume tells"
        );
        assert!(!regressed(None, head(5), None));
    }
}
