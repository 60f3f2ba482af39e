//! Every close code the library sends, what each means, and the
//! [`CloseReason`] that carries one: in one place.
//!
//! | situation | code |
//! |---|---|
//! | the client closed | its own code, echoed |
//! | `remove_connection` by the application | 1000 |
//! | server shutdown | 1001 |
//! | the client was too slow (slow-consumer policy) | 1008 |
//! | per-user cap or isolation refused the registration | 1008 |
//! | more invalid messages than `error_frame_limit` within `error_frame_window` | 1008 |
//! | messages over the connection's `inbound_rate`, past the error-frame budget | 1008 `message rate exceeded` |
//! | a binary message while `binary_messages` is off | 1003 |
//! | a text message that is not valid UTF-8 | 1007 |
//! | a WebSocket protocol violation (unmasked client frame, reserved bits, bad opcode...) | 1002 |
//! | inbound message or frame over the limit | 1009 |
//! | the registration failed, or reading failed, for an internal reason | 1011 |
//! | the manager could not fit the replay into the new socket's queue | 1013 `replay did not fit; reconnect` |
//! | cluster manager: the connection missed events this node cannot fill in order, or the node was cut off | 1012 ([`RESUME`]) |
//! | the token the connection was authenticated with expired (`Identity::expires_at`, feature `transport`) | 4401 `token expired` |
//! | no frame (not even a pong) within `idle_timeout` | 4408 |
//! | one write stalled longer than `write_timeout` | 4409 (rarely seen: the client is not reading) |
//!
//! What a client does on each code (reconnect at once, with backoff, after a
//! new token, or never) is in `docs/protocol.md`, section 7.
//!
//! The closes the reader decides on a client's data (1002, 1003, 1007, 1008
//! for too many invalid messages, 1009) follow what the queue had already
//! accepted, written within `close_timeout`; the others drop it (the client
//! is gone, idle, not reading, or its token expired). Frames dropped this
//! way are counted ([`WebSocketHandle::discarded_at_close`](crate::WebSocketHandle::discarded_at_close)).

// The closes the transport decides are unused without it.
#![cfg_attr(not(feature = "transport"), allow(dead_code))]

use std::borrow::Cow;

use serde::Serialize;

use crate::error::ManagerError;

/// Why a socket is being closed: a WebSocket close code and a short reason.
///
/// ```
/// use websocket_manager::CloseReason;
/// assert_eq!(CloseReason::going_away().code, 1001);
/// assert_eq!(CloseReason::new(4000, "bye").reason, "bye");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CloseReason {
    /// The close code sent in the close frame (RFC 6455, section 7.4).
    pub code: u16,
    /// A short human-readable reason (at most 123 bytes on the wire).
    pub reason: Cow<'static, str>,
}

impl CloseReason {
    /// A close reason with any code.
    pub fn new(code: u16, reason: impl Into<Cow<'static, str>>) -> Self {
        CloseReason {
            code,
            reason: reason.into(),
        }
    }

    /// 1000: the connection was removed on purpose.
    pub fn normal() -> Self {
        Self::new(NORMAL, "connection removed")
    }

    /// 1001: the server is shutting down.
    pub fn going_away() -> Self {
        Self::new(GOING_AWAY, "server shutting down")
    }

    /// 1008: the client did not read fast enough and its queue filled up.
    pub fn slow_consumer() -> Self {
        Self::new(POLICY_VIOLATION, "slow consumer: outbound queue full")
    }

    /// 1008: the connection broke a policy (per-user cap, isolation...).
    pub fn policy(reason: impl Into<Cow<'static, str>>) -> Self {
        Self::new(POLICY_VIOLATION, reason)
    }
}

/// 1000: the connection was removed on purpose, or the client closed.
pub const NORMAL: u16 = 1000;
/// 1001: the server is shutting down.
pub const GOING_AWAY: u16 = 1001;

/// 1009: an inbound message or frame exceeded the configured size.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// 4408: nothing arrived from the client within the idle timeout.
pub const HEARTBEAT_TIMEOUT: u16 = 4408;
/// 4409: writing to the client stalled longer than the write timeout.
pub const WRITE_TIMEOUT: u16 = 4409;
/// 1011: the server failed for an internal reason.
pub const INTERNAL_ERROR: u16 = 1011;
/// 1002: the client violated the WebSocket protocol (RFC 6455, 7.4.1).
pub const PROTOCOL_ERROR: u16 = 1002;
/// 1003: the client sent a kind of data the server does not accept (binary).
pub const UNSUPPORTED_DATA: u16 = 1003;
/// 1007: a text message was not valid UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// 1008: a policy was violated (slow consumer, connection cap, too many
/// invalid messages).
pub const POLICY_VIOLATION: u16 = 1008;
/// 1012 (service restart): the connection missed events this server cannot
/// fill in order, or its node was cut off from the cluster; the client
/// resumes at once from its offset, through any node (cluster manager).
pub const RESUME: u16 = 1012;
/// 1013: try again later; the manager could not replay what the new
/// connection is owed into its queue.
pub const TRY_AGAIN_LATER: u16 = 1013;
/// 4401: the token the connection was authenticated with expired; the
/// client should reconnect with a fresh one. The reason is `token expired`.
pub const TOKEN_EXPIRED: u16 = 4401;

pub(crate) fn protocol_error() -> CloseReason {
    CloseReason::new(PROTOCOL_ERROR, "protocol error")
}

pub(crate) fn invalid_payload() -> CloseReason {
    CloseReason::new(INVALID_PAYLOAD, "invalid utf-8 in a text message")
}

pub(crate) fn binary_refused() -> CloseReason {
    CloseReason::new(UNSUPPORTED_DATA, "binary messages are not accepted")
}

pub(crate) fn too_many_invalid_messages() -> CloseReason {
    CloseReason::new(POLICY_VIOLATION, "too many invalid messages")
}

pub(crate) fn message_rate_exceeded() -> CloseReason {
    CloseReason::new(POLICY_VIOLATION, "message rate exceeded")
}

pub(crate) fn token_expired() -> CloseReason {
    CloseReason::new(TOKEN_EXPIRED, "token expired")
}

pub(crate) fn message_too_big() -> CloseReason {
    CloseReason::new(MESSAGE_TOO_BIG, "message too big")
}

pub(crate) fn heartbeat_timeout() -> CloseReason {
    CloseReason::new(HEARTBEAT_TIMEOUT, "heartbeat timeout")
}

pub(crate) fn write_timeout() -> CloseReason {
    CloseReason::new(WRITE_TIMEOUT, "write timeout")
}

pub(crate) fn client_gone() -> CloseReason {
    CloseReason::new(NORMAL, "closed by client")
}

pub(crate) fn transport_error() -> CloseReason {
    CloseReason::new(INTERNAL_ERROR, "transport error")
}

/// 1012: the cluster manager cannot fill in order the critical events this
/// connection missed; its client resumes from its offset.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn missed_events() -> CloseReason {
    CloseReason::new(
        RESUME,
        "missed critical events: reconnect and resume from your offset",
    )
}

/// 1012: every local connection of a cluster node that fenced itself; the
/// client reconnects (through the balancer, to a healthy node) and resumes
/// from its offset.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn fenced() -> CloseReason {
    CloseReason::new(
        RESUME,
        "this node is cut off from the cluster: reconnect and resume from your offset",
    )
}

/// 1013: the replay a new connection is owed did not fit its queue.
pub(crate) fn replay_did_not_fit() -> CloseReason {
    CloseReason::new(TRY_AGAIN_LATER, "replay did not fit; reconnect")
}

/// The longest close reason a close frame can carry: 125 bytes of control
/// payload less the 2-byte code.
pub const MAX_REASON_LEN: usize = 123;

/// Truncates a close reason to the [`MAX_REASON_LEN`] bytes a close frame
/// can carry, on a character boundary.
#[cfg_attr(not(any(feature = "axum", feature = "tungstenite")), allow(dead_code))]
pub(crate) fn reason_on_the_wire(reason: &str) -> &str {
    if reason.len() <= MAX_REASON_LEN {
        return reason;
    }
    let mut end = MAX_REASON_LEN;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// The close frame for a registration the manager refused.
pub(crate) fn registration_refused(error: &ManagerError) -> CloseReason {
    match error {
        ManagerError::ConnectionLimit { .. } => {
            CloseReason::policy("per-user connection limit reached")
        }
        ManagerError::IsolationViolation { .. } => {
            CloseReason::policy("connection refused: isolation violation")
        }
        ManagerError::ShutDown => CloseReason::going_away(),
        // Nothing is wrong with the client: a fresh attempt, with its
        // offset, fits once the user's backlog is smaller.
        ManagerError::ReplayFailed { .. } => replay_did_not_fit(),
        // Live events it was owed did not follow its replay: at once, with
        // its offset (as a live connection that fell behind).
        ManagerError::MissedWhileCatchingUp { .. } => missed_events(),
        // A reconnect storm: the node reads only so many histories at once.
        ManagerError::Cluster {
            failure: crate::error::ClusterFailure::Busy { .. },
            ..
        } => CloseReason::new(TRY_AGAIN_LATER, "node busy; reconnect"),
        _ => CloseReason::new(INTERNAL_ERROR, "registration failed"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let long = "é".repeat(100); // 200 bytes
        let cut = reason_on_the_wire(&long);
        assert!(cut.len() <= MAX_REASON_LEN);
        assert_eq!(cut.len(), 122);
        assert_eq!(reason_on_the_wire("short"), "short");
    }
    use crate::ids::UserId;

    #[test]
    fn refusals_map_to_policy_and_internal_codes() {
        let user = UserId::new("u").unwrap();
        let cap = ManagerError::ConnectionLimit {
            user_id: user.clone(),
            limit: 2,
        };
        assert_eq!(registration_refused(&cap).code, 1008);
        let isolation = ManagerError::IsolationViolation {
            owner: user.clone(),
            requested: UserId::new("v").unwrap(),
        };
        assert_eq!(registration_refused(&isolation).code, 1008);
        assert_eq!(registration_refused(&ManagerError::ShutDown).code, 1001);
        let duplicate = ManagerError::DuplicateConnection(crate::ids::ConnectionId::generate());
        assert_eq!(registration_refused(&duplicate).code, 1011);
        let replay = ManagerError::ReplayFailed {
            connection_id: crate::ids::ConnectionId::generate(),
            replayed: 3,
            total: 9,
        };
        assert_eq!(registration_refused(&replay).code, 1013);
        let missed = ManagerError::MissedWhileCatchingUp {
            connection_id: crate::ids::ConnectionId::generate(),
        };
        assert_eq!(registration_refused(&missed).code, 1012);
        let busy = ManagerError::Cluster {
            operation: "read history",
            failure: crate::error::ClusterFailure::Busy { waited_ms: 1000 },
            delivered_locally: 0,
        };
        assert_eq!(registration_refused(&busy).code, 1013);
    }
}
