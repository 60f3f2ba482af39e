//! [`CriticalEventLog`]: the retained critical-event logs of many users, as a
//! building block for managers of your own.

use std::time::SystemTime;

use crate::config::ManagerConfig;
use crate::connection::{CloseReason, SendError, TextFrame, WebSocketConnection, WebSocketHandle};
use crate::delivery::Delivery;
use crate::error::ManagerError;
use crate::health::unix_millis;
use crate::ids::UserId;
use crate::managers::events::validate_event_type;
use crate::managers::history::{MemoryHistory, NewEvent, UserLog};
use crate::managers::index::{CriticalOutcome, LocalIndex};
use crate::offset::StreamOffset;

/// What a manager of your own needs to honour the critical-event half of the
/// contract exactly as the reference managers do: every event wrapped in a
/// [`CriticalEnvelope`](crate::events::CriticalEnvelope) with a per-user [`StreamOffset`], retained within the
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
    /// Users' slots, each holding the user's log (no connection is
    /// registered here: your manager keeps its own).
    users: LocalIndex<UserLog>,
    /// The history the unified and isolated managers run on.
    history: MemoryHistory,
}

impl CriticalEventLog {
    /// An empty log with the history bounds of `config`.
    pub fn new(config: &ManagerConfig) -> Self {
        CriticalEventLog {
            users: LocalIndex::new(config.clone()),
            history: MemoryHistory::new(config),
        }
    }

    /// Replays into `connection`'s socket what its client is owed (after
    /// its [`resume`](WebSocketConnection::resume) offset, checked against
    /// its [`resume_print`](WebSocketConnection::resume_print), or the events no
    /// connection took) and counts the connection as attached.
    ///
    /// # Errors
    ///
    /// [`ManagerError::ReplayFailed`] when the socket's queue cannot take the
    /// whole replay: refuse the connection (a fresh socket always fits).
    pub fn attach(&self, connection: &WebSocketConnection) -> Result<(), ManagerError> {
        let user_id = &connection.user_id;
        self.users
            .with_history(user_id, true, |state, _| {
                let read = self
                    .history
                    .plan_for(state, user_id, connection.resume_point())?;
                let replay = read.replay;
                let frames: Vec<TextFrame> = replay
                    .notice
                    .into_iter()
                    .chain(replay.events.into_iter().map(|(_, frame)| frame))
                    .collect();
                let total = frames.len();
                for (replayed, frame) in frames.into_iter().enumerate() {
                    if connection.websocket.try_send(frame).is_err() {
                        return Err(ManagerError::ReplayFailed {
                            connection_id: connection.connection_id.clone(),
                            replayed,
                            total,
                        });
                    }
                }
                if let Some(position) = read.position {
                    connection.websocket.record_stream_position(position);
                }
                self.history.replayed(state, replay.head);
                state.attached += 1;
                Ok(())
            })
            .unwrap_or(Err(ManagerError::ShutDown))
    }

    /// Counts one of `user_id`'s connections as gone.
    pub fn detach(&self, user_id: &UserId) {
        self.users.with_history(user_id, false, |state, _| {
            state.attached = state.attached.saturating_sub(1);
        });
    }

    /// Emits a critical event to `user_id`, whose current (attached)
    /// sockets are `sockets`: validates the type, assigns the next offset,
    /// retains the event, and pushes it into every socket. A socket that
    /// cannot take it is closed as a slow consumer (its client resumes from
    /// its offset), never skipped silently.
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
        let event = NewEvent {
            event_type,
            data: &data,
            timestamp: unix_millis(SystemTime::now()),
            online: !sockets.is_empty(),
            key: None,
        };
        let appended = self
            .history
            .append_with(&self.users, user_id, event, |_, _, frame| {
                let delivered = push_all(sockets, frame);
                CriticalOutcome {
                    delivered,
                    deferred: 0,
                    closed: sockets.len() - delivered,
                }
            })?;
        let offset = appended.offset;
        if appended.outcome.delivered > 0 {
            return Ok(
                Delivery::delivered(appended.outcome.delivered, appended.outcome.closed)
                    .with_offset(offset),
            );
        }
        Ok(
            Delivery::queued(usize::try_from(appended.pending).unwrap_or(usize::MAX))
                .with_offset(offset),
        )
    }

    /// The offset of the last event emitted to `user_id`, if any.
    pub fn latest(&self, user_id: &UserId) -> Option<StreamOffset> {
        self.history.latest(&self.users, user_id)
    }

    /// Events retained for `user_id` that no connection has taken yet.
    pub fn pending(&self, user_id: &UserId) -> usize {
        self.history.pending(&self.users, user_id)
    }

    /// Drops every event older than `history_max_age`; returns how many.
    pub fn prune_expired(&self) -> usize {
        self.history.prune_expired(&self.users)
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
