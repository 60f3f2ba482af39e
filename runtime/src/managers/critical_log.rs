//! [`CriticalEventLog`]: the retained critical-event logs of many users, as a
//! building block for managers of your own.

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;

use crate::config::ManagerConfig;
use crate::connection::{CloseReason, SendError, TextFrame, WebSocketConnection, WebSocketHandle};
use crate::delivery::Delivery;
use crate::error::ManagerError;
use crate::health::unix_millis;
use crate::ids::UserId;
use crate::managers::core::next_stream;
use crate::managers::events::{CriticalEnvelope, validate_event_type};
use crate::managers::history::{
    AppendRefused, EventLog, HistoryLedger, HistoryLimits, refusal_error, replay_into,
};
use crate::offset::StreamOffset;

/// One user's log and how many of the user's connections are attached.
#[derive(Debug)]
struct UserLog {
    log: EventLog,
    connections: usize,
}

/// What a manager of your own needs to honour the critical-event half of the
/// contract exactly as the reference managers do: every event wrapped in a
/// [`CriticalEnvelope`] with a per-user [`StreamOffset`], retained within the
/// [`ManagerConfig`] history bounds, pushed to the user's sockets in order,
/// and replayed (with a [`ResyncNotice`](crate::events::ResyncNotice) first when
/// something is gone) to every new connection.
///
/// Call [`attach`](Self::attach) from `add_connection` before the connection
/// becomes visible to sends, [`detach`](Self::detach) from
/// `remove_connection`, and [`emit`](Self::emit) from `emit_critical_event`
/// with the user's current sockets. Keep your own lock around `attach` and
/// the publication of the connection, and around `emit`, so an event cannot
/// slip between a replay and the connection's first live event. Nothing here
/// awaits.
///
/// ```
/// use websocket_manager::{events::AGENT_STARTED, managers::CriticalEventLog};
/// use websocket_manager::{UserId, WebSocketConnection, WebSocketHandle, managers::ManagerConfig};
/// let log = CriticalEventLog::new(&ManagerConfig::default());
/// let alice = UserId::new("alice")?;
///
/// // offline: retained, pending
/// let queued = log.emit(&alice, AGENT_STARTED, serde_json::json!({"run": 1}), &[])?;
/// assert!(queued.is_queued());
///
/// // a new connection gets it replayed
/// let (socket, mut outbound) = WebSocketHandle::channel(ManagerConfig::default().queue_limits());
/// log.attach(&WebSocketConnection::new(alice.clone(), socket.clone()))?;
/// assert_eq!(socket.queue_depth(), 1);
///
/// // connected: pushed at once, with its offset
/// let delivered = log.emit(&alice, AGENT_STARTED, serde_json::json!({"run": 2}), &[socket])?;
/// assert_eq!(delivered.recipients(), 1);
/// assert_eq!(delivered.offset().map(|o| o.sequence), Some(2));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct CriticalEventLog {
    limits: HistoryLimits,
    max_age: std::time::Duration,
    users: Mutex<HashMap<UserId, UserLog>>,
    ledger: HistoryLedger,
}

impl CriticalEventLog {
    /// An empty log with the history bounds of `config`.
    pub fn new(config: &ManagerConfig) -> Self {
        CriticalEventLog {
            limits: HistoryLimits {
                capacity: config.history_capacity(),
                max_bytes: config.history_max_bytes(),
            },
            max_age: config.history_max_age(),
            users: Mutex::new(HashMap::new()),
            ledger: HistoryLedger::new(config.max_history_users()),
        }
    }

    /// Replays into `connection`'s socket what its client is owed (after
    /// its [`resume`](WebSocketConnection::resume) offset, or the events no
    /// connection took) and counts the connection as attached.
    ///
    /// # Errors
    ///
    /// [`ManagerError::ReplayFailed`] when the socket's queue cannot take the
    /// whole replay: refuse the connection (a fresh socket always fits).
    pub fn attach(&self, connection: &WebSocketConnection) -> Result<(), ManagerError> {
        let mut users = self.users.lock();
        let entry = users
            .entry(connection.user_id.clone())
            .or_insert_with(|| UserLog {
                log: EventLog::new(next_stream()),
                connections: 0,
            });
        entry.log.expire(Instant::now(), self.max_age, &self.ledger);
        let result = replay_into(
            &mut entry.log,
            &connection.websocket,
            &connection.connection_id,
            connection.resume,
            &self.ledger,
            (self.limits.capacity, self.max_age),
        );
        if result.is_ok() {
            entry.connections += 1;
        }
        let idle = entry.connections == 0 && !entry.log.holds_history();
        if idle {
            users.remove(&connection.user_id);
        }
        result.map(|_| ())
    }

    /// Counts one of `user_id`'s connections as gone; a user with no
    /// connection and no history is forgotten.
    pub fn detach(&self, user_id: &UserId) {
        let mut users = self.users.lock();
        if let Some(entry) = users.get_mut(user_id) {
            entry.connections = entry.connections.saturating_sub(1);
            if entry.connections == 0 && !entry.log.holds_history() {
                users.remove(user_id);
            }
        }
    }

    /// Emits a critical event to `user_id`, whose current sockets are
    /// `sockets`: validates the type, assigns the next offset, retains the
    /// event, and pushes it (after any older pending ones) into every socket.
    /// A socket that cannot take it is closed as a slow consumer (its client
    /// resumes from its offset), never skipped silently.
    ///
    /// # Errors
    ///
    /// [`ManagerError::InvalidEventType`], [`ManagerError::HistoryFull`],
    /// [`ManagerError::CriticalEventTooLarge`],
    /// [`ManagerError::HistoryUsersFull`]: the event was neither stored nor
    /// sent.
    pub fn emit(
        &self,
        user_id: &UserId,
        event_type: &str,
        data: serde_json::Value,
        sockets: &[WebSocketHandle],
    ) -> Result<Delivery, ManagerError> {
        validate_event_type(event_type)?;
        let mut envelope = CriticalEnvelope::new(event_type, data);
        // A second attempt only after sweeping expired logs off the ledger.
        for attempt in 0..2 {
            let mut users = self.users.lock();
            let entry = users.entry(user_id.clone()).or_insert_with(|| UserLog {
                log: EventLog::new(next_stream()),
                connections: 0,
            });
            let log = &mut entry.log;
            log.expire(Instant::now(), self.max_age, &self.ledger);
            let offset = log.next_offset();
            envelope.stream = offset.stream;
            envelope.sequence = offset.sequence;
            let frame = TextFrame::from_json(&envelope)?;
            // older pending events first
            while let Some((sequence, pending)) = log.first_pending() {
                let pending = pending.frame.clone();
                if push_all(sockets, &pending) == 0 {
                    break;
                }
                log.mark_taken_through(sequence);
            }
            match log.append(frame.clone(), Instant::now(), self.limits, &self.ledger) {
                Ok(_) => {
                    if log.pending() == 1 {
                        let delivered = push_all(sockets, &frame);
                        if delivered > 0 {
                            log.mark_taken_through(offset.sequence);
                            return Ok(Delivery::delivered(delivered, sockets.len() - delivered)
                                .with_offset(offset));
                        }
                    }
                    return Ok(Delivery::queued(log.pending()).with_offset(offset));
                }
                Err(refused) => {
                    let error =
                        refusal_error(refused, user_id, &frame, self.limits, log, &self.ledger);
                    if entry.connections == 0 && !entry.log.holds_history() {
                        users.remove(user_id);
                    }
                    if refused != AppendRefused::TooManyUsers || attempt > 0 {
                        return Err(error);
                    }
                }
            }
            drop(users);
            self.prune_expired();
        }
        Err(ManagerError::HistoryUsersFull {
            limit: self.ledger.limit(),
        })
    }

    /// The offset of the last event emitted to `user_id`, if any.
    pub fn latest(&self, user_id: &UserId) -> Option<StreamOffset> {
        let users = self.users.lock();
        let latest = users.get(user_id)?.log.latest();
        (latest.sequence > 0).then_some(latest)
    }

    /// Events retained for `user_id` that no connection has taken yet.
    pub fn pending(&self, user_id: &UserId) -> usize {
        self.users
            .lock()
            .get(user_id)
            .map_or(0, |entry| entry.log.pending())
    }

    /// Drops every event older than `history_max_age`; returns how many.
    pub fn prune_expired(&self) -> usize {
        let now = Instant::now();
        let mut users = self.users.lock();
        let mut dropped = 0;
        users.retain(|_, entry| {
            dropped += entry.log.expire(now, self.max_age, &self.ledger).events;
            entry.connections > 0 || entry.log.holds_history()
        });
        dropped
    }
}

/// Pushes `frame` into every open socket; a full one is closed (a critical
/// event is never skipped on a live socket). Returns how many took it.
fn push_all(sockets: &[WebSocketHandle], frame: &TextFrame) -> usize {
    let mut delivered = 0;
    for socket in sockets {
        match socket.try_send(frame.clone()) {
            Ok(()) => delivered += 1,
            Err(SendError::Full | SendError::TooLarge { .. }) => {
                socket.close(CloseReason::slow_consumer());
            }
            Err(SendError::Closed) => {}
        }
    }
    delivered
}

impl CriticalEnvelope {
    /// An envelope stamped now, with its offset still to be assigned.
    pub(crate) fn new(event_type: &str, data: serde_json::Value) -> Self {
        CriticalEnvelope {
            event_type: event_type.to_owned(),
            data,
            timestamp: unix_millis(SystemTime::now()),
            critical: true,
            stream: 0,
            sequence: 0,
        }
    }
}
