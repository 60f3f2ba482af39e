//! One send to many sockets: [`fan_out`] pushes a frame, serialized once,
//! into every recipient's bounded queue without waiting, applies the
//! slow-consumer policy, and counts what happened per user and per manager.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::config::SlowConsumerPolicy;
use crate::connection::{CloseReason, SendError, TextFrame, WebSocketHandle};
use crate::delivery::{Delivery, DeliveryTarget, NotDeliveredReason};
use crate::error::ManagerError;
use crate::health::unix_millis;
use crate::ids::ConnectionId;

/// Per-user counters, shared by the user's slot and every [`Recipient`] of
/// the user (thread sends update them without a user lookup).
#[derive(Debug, Default)]
pub(crate) struct UserCounters {
    pub(crate) sent: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) slow_disconnects: AtomicU64,
    /// Milliseconds since the epoch; 0 for never.
    pub(crate) last_activity_ms: AtomicU64,
}

impl UserCounters {
    /// Copies the counters into a user's health report.
    pub(crate) fn report_into(&self, health: &mut crate::health::ConnectionHealth) {
        health.messages_sent = self.sent.load(Ordering::Relaxed);
        health.messages_failed = self.failed.load(Ordering::Relaxed);
        health.messages_dropped = self.dropped.load(Ordering::Relaxed);
        health.slow_consumer_disconnects = self.slow_disconnects.load(Ordering::Relaxed);
        health.last_activity_ms = match self.last_activity_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(ms),
        };
    }

    /// Records activity now, to within one kernel tick (see [`coarse_unix_millis`]).
    pub(crate) fn touch(&self) {
        self.last_activity_ms
            .store(coarse_unix_millis(), Ordering::Relaxed);
    }
}

/// Milliseconds since the epoch, to within one kernel tick (1 to 10 ms),
/// cheap enough to call on every send.
///
/// `SystemTime::now()` reads the time stamp counter and costs about 8 % of a
/// send to 8 sockets (`benches/fan_out.rs`, measured with and without it).
/// This reads the kernel's coarse monotonic clock instead (a few loads from
/// the vDSO page on Linux) and adds an offset to the wall clock, renewed with
/// one `SystemTime::now()` at most once a second: a step of the system clock
/// shows within a second. Threads renewing it at the same time each store a
/// valid offset; one atomic holds it, so no reader sees half an update.
pub(crate) fn coarse_unix_millis() -> u64 {
    /// Wall-clock ms minus coarse monotonic ms (wrapping); 0 before the first sync.
    static OFFSET: AtomicU64 = AtomicU64::new(0);
    /// Coarse monotonic ms of the last sync.
    static SYNCED_AT: AtomicU64 = AtomicU64::new(0);
    let monotonic = coarsetime::Instant::now_without_cache_update()
        .duration_since(coarsetime::Instant::from_u64(0))
        .as_millis();
    let offset = OFFSET.load(Ordering::Relaxed);
    if offset == 0 || monotonic.wrapping_sub(SYNCED_AT.load(Ordering::Relaxed)) >= 1000 {
        let wall = unix_millis(SystemTime::now());
        OFFSET.store(wall.wrapping_sub(monotonic), Ordering::Relaxed);
        SYNCED_AT.store(monotonic, Ordering::Relaxed);
        return wall;
    }
    monotonic.wrapping_add(offset)
}

/// What holds a user's [`UserCounters`]: the user's slot in the index,
/// which a [`Recipient`] shares (the counters live in the slot's
/// allocation rather than in one of their own: one allocation fewer per
/// user).
pub(crate) trait HoldsCounters: Send + Sync + std::fmt::Debug {
    fn counters(&self) -> &UserCounters;
}

/// The user's counters, shared.
pub(crate) type SharedCounters = Arc<dyn HoldsCounters>;

/// One connection as a send sees it.
#[derive(Debug, Clone)]
pub(crate) struct Recipient {
    pub(crate) connection_id: ConnectionId,
    pub(crate) socket: WebSocketHandle,
    pub(crate) counters: SharedCounters,
}

pub(crate) type Recipients = Arc<[Recipient]>;

pub(crate) fn no_recipients() -> Recipients {
    Arc::from(Vec::new())
}

/// Manager-wide counters behind [`ManagerStats`](super::ManagerStats).
#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub(crate) sent: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) slow_disconnects: AtomicU64,
    pub(crate) critical_rejected: AtomicU64,
    pub(crate) history_evicted: AtomicU64,
    pub(crate) history_expired: AtomicU64,
    pub(crate) pending_expired: AtomicU64,
    pub(crate) replayed: AtomicU64,
    pub(crate) resync_notices: AtomicU64,
    pub(crate) pending_discarded: AtomicU64,
}

/// Adds `n` to a counter (skipped for 0).
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    if n > 0 {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// What one fan-out did.
#[derive(Debug, Default)]
pub(crate) struct FanOut {
    pub(crate) delivered: usize,
    pub(crate) targeted: usize,
    pub(crate) full: usize,
    pub(crate) too_large: usize,
    /// Connections to remove: closed, or disconnected for slowness.
    pub(crate) evict: Vec<ConnectionId>,
}

impl FanOut {
    pub(crate) fn result(
        &self,
        target: impl FnOnce() -> DeliveryTarget,
    ) -> Result<Delivery, ManagerError> {
        if self.delivered > 0 {
            return Ok(Delivery::delivered(
                self.delivered,
                self.targeted - self.delivered,
            ));
        }
        let reason = if self.full > 0 {
            NotDeliveredReason::QueuesFull
        } else if self.too_large > 0 {
            NotDeliveredReason::TooLarge
        } else {
            NotDeliveredReason::ConnectionsClosed
        };
        Err(ManagerError::NotDelivered {
            target: target(),
            reason,
        })
    }
}

/// What one push did.
enum Pushed {
    Taken,
    /// Queue full; under the disconnect policy the socket was closed now
    /// (`true`) or already (`false`).
    Full {
        closed_now: bool,
    },
    Closed,
    TooLarge {
        len: usize,
        max: usize,
    },
}

/// Pushes `frame` into `socket` without waiting and applies `policy` to a
/// full queue (closing the socket under `Disconnect`).
#[inline]
fn push(socket: &WebSocketHandle, frame: &TextFrame, policy: SlowConsumerPolicy) -> Pushed {
    match socket.try_send(frame.clone()) {
        Ok(()) => Pushed::Taken,
        Err(SendError::Full) => Pushed::Full {
            closed_now: policy == SlowConsumerPolicy::Disconnect
                && socket.close(CloseReason::slow_consumer()),
        },
        Err(SendError::Closed) => Pushed::Closed,
        Err(SendError::TooLarge { len, max }) => Pushed::TooLarge { len, max },
    }
}

/// Records what one push did in `fan` and in the counters: the manager's
/// `totals` and, for a refusal, the user's. The connection's id and the
/// user's counters are only looked at for a refusal (`connection_id`,
/// `counters`), so that a push that went through reads no more cache lines.
/// `true` when the socket took the frame; the caller counts those itself.
#[inline(always)]
fn settle<'a>(
    fan: &mut FanOut,
    pushed: Pushed,
    connection_id: impl FnOnce() -> &'a ConnectionId,
    counters: impl FnOnce() -> &'a UserCounters,
    policy: SlowConsumerPolicy,
    totals: &Totals,
) -> bool {
    match pushed {
        Pushed::Taken => {
            fan.delivered += 1;
            return true;
        }
        Pushed::Full { closed_now } => {
            fan.full += 1;
            let connection_id = connection_id();
            match policy {
                SlowConsumerPolicy::Disconnect => {
                    if closed_now {
                        if crate::conformance::is_probe_id(connection_id.as_str()) {
                            // The startup probes fill a queue on purpose:
                            // no news for an operator.
                            tracing::debug!(%connection_id,
                                "slow consumer (a probe's): outbound queue full, disconnecting");
                        } else {
                            tracing::warn!(%connection_id,
                                "slow consumer: outbound queue full, disconnecting");
                        }
                        bump(&counters().slow_disconnects, 1);
                        bump(&totals.slow_disconnects, 1);
                    }
                    fan.evict.push(connection_id.clone());
                }
                SlowConsumerPolicy::DropMessage => {
                    tracing::debug!(%connection_id,
                        "slow consumer: outbound queue full, message dropped");
                    bump(&counters().dropped, 1);
                    bump(&totals.dropped, 1);
                }
            }
        }
        Pushed::Closed => fan.evict.push(connection_id().clone()),
        Pushed::TooLarge { len, max } => {
            let connection_id = connection_id();
            tracing::warn!(%connection_id, len, max,
                "message larger than the connection's queue bound, dropped");
            fan.too_large += 1;
            bump(&counters().dropped, 1);
            bump(&totals.dropped, 1);
        }
    }
    false
}

/// Pushes `frame` into every recipient's queue without waiting and
/// applies the slow-consumer policy. Counters are updated here; evicted
/// connections are left to the caller (it may hold the user's lock).
#[inline]
pub(crate) fn fan_out(
    recipients: &[Recipient],
    frame: &TextFrame,
    policy: SlowConsumerPolicy,
    totals: &Totals,
) -> FanOut {
    let mut fan = FanOut {
        targeted: recipients.len(),
        ..FanOut::default()
    };
    // Consecutive recipients usually share counters (a user's
    // connections): add to them once per run, not once per frame.
    let mut run: Option<(&SharedCounters, u64)> = None;
    recipients.iter().for_each(|r| r.socket.prefetch());
    for recipient in recipients {
        let pushed = push(&recipient.socket, frame, policy);
        let counters = || recipient.counters.counters();
        if settle(
            &mut fan,
            pushed,
            || &recipient.connection_id,
            counters,
            policy,
            totals,
        ) {
            match &mut run {
                Some((counters, n)) if Arc::ptr_eq(counters, &recipient.counters) => *n += 1,
                _ => {
                    if let Some((counters, n)) = run.replace((&recipient.counters, 1)) {
                        bump(&counters.counters().sent, n);
                    }
                }
            }
        }
    }
    if let Some((counters, n)) = run {
        bump(&counters.counters().sent, n);
    }
    bump(&totals.sent, fan.delivered as u64);
    fan
}

/// [`fan_out`] for `n` connections of one user, the `i`th given by
/// `socket(i)` and `connection_id(i)` (a user's members under its lock, in
/// place: nothing cloned, nothing allocated). Counts in `counters` and
/// `totals`.
#[inline]
pub(crate) fn fan_out_to_members<'a>(
    n: usize,
    socket: impl Fn(usize) -> &'a WebSocketHandle,
    connection_id: impl Fn(usize) -> &'a ConnectionId,
    counters: &UserCounters,
    frame: &TextFrame,
    policy: SlowConsumerPolicy,
    totals: &Totals,
) -> FanOut {
    let mut fan = FanOut {
        targeted: n,
        ..FanOut::default()
    };
    (0..n).for_each(|i| socket(i).prefetch());
    for i in 0..n {
        let pushed = push(socket(i), frame, policy);
        settle(
            &mut fan,
            pushed,
            || connection_id(i),
            || counters,
            policy,
            totals,
        );
    }
    bump(&counters.sent, fan.delivered as u64);
    bump(&totals.sent, fan.delivered as u64);
    fan
}

/// [`fan_out`] for one user's published connections: `sockets[i]` is the
/// socket of `connection_ids()[i]`. Counts what was taken only in `totals`:
/// the caller adds it to the user's send counters. The ids and the user's
/// slot counters are looked at only for a refused push.
#[inline]
pub(crate) fn fan_out_to_user<'a>(
    sockets: &[WebSocketHandle],
    connection_ids: impl Fn() -> &'a [ConnectionId],
    counters: impl Fn() -> &'a UserCounters,
    frame: &TextFrame,
    policy: SlowConsumerPolicy,
    totals: &Totals,
) -> FanOut {
    let mut fan = FanOut {
        targeted: sockets.len(),
        ..FanOut::default()
    };
    sockets.iter().for_each(WebSocketHandle::prefetch);
    for (i, socket) in sockets.iter().enumerate() {
        let pushed = push(socket, frame, policy);
        // `sockets` and the ids are published together, with equal lengths.
        let id = || &connection_ids()[i];
        settle(&mut fan, pushed, id, &counters, policy, totals);
    }
    bump(&totals.sent, fan.delivered as u64);
    fan
}

/// Sends one frame to a set of sockets the way the contract wants it, for a
/// manager of your own: pushes into every queue without waiting, applies
/// `policy` to a full queue (closing the socket under
/// [`Disconnect`](SlowConsumerPolicy::Disconnect)), and reports
/// [`Delivery::delivered`] or, when no socket took it,
/// [`ManagerError::NotDelivered`] with the right reason (`empty` when there
/// was no socket at all).
///
/// ```
/// use websocket_manager::managers::deliver_frame;
/// use websocket_manager::{events::*, managers::*, socket::*, *};
/// let (socket, _outbound) = WebSocketHandle::channel(QueueLimits::new(8, 1 << 16));
/// let target = DeliveryTarget::User(UserId::new("alice")?);
/// let frame = TextFrame::from_json(&serde_json::json!({"type": "hello"}))?;
/// let policy = SlowConsumerPolicy::Disconnect;
/// let delivery = deliver_frame(target.clone(), &[socket], &frame, policy, NotDeliveredReason::NoConnections)?;
/// assert_eq!(delivery.recipients(), 1);
/// let nobody = deliver_frame(target, &[], &frame, policy, NotDeliveredReason::NoConnections);
/// assert!(matches!(nobody, Err(ManagerError::NotDelivered { reason: NotDeliveredReason::NoConnections, .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// [`ManagerError::NotDelivered`] when no socket took the frame.
pub fn deliver_frame(
    target: DeliveryTarget,
    sockets: &[WebSocketHandle],
    frame: &TextFrame,
    policy: SlowConsumerPolicy,
    empty: NotDeliveredReason,
) -> Result<Delivery, ManagerError> {
    if sockets.is_empty() {
        return Err(ManagerError::NotDelivered {
            target,
            reason: empty,
        });
    }
    let mut fan = FanOut {
        targeted: sockets.len(),
        ..FanOut::default()
    };
    for socket in sockets {
        match push(socket, frame, policy) {
            Pushed::Taken => fan.delivered += 1,
            Pushed::Full { .. } => fan.full += 1,
            Pushed::Closed => {}
            Pushed::TooLarge { .. } => fan.too_large += 1,
        }
    }
    fan.result(|| target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_follows_the_wall_clock_to_within_a_few_ticks() {
        // First call syncs, later ones add the coarse monotonic time to the offset.
        for _ in 0..3 {
            let before = unix_millis(SystemTime::now());
            let coarse = coarse_unix_millis();
            let after = unix_millis(SystemTime::now());
            // One kernel tick is at most 10 ms; leave room for a slow machine.
            assert!(
                coarse + 50 >= before && coarse <= after + 50,
                "{before} <= {coarse} <= {after}, to within 50 ms"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
