//! Which close code ends a connection for which reason, in one place.
//!
//! | situation | code |
//! |---|---|
//! | the client closed | its own code, echoed |
//! | `remove_connection` by the application | 1000 |
//! | server shutdown | 1001 |
//! | the client was too slow (slow-consumer policy) | 1008 |
//! | per-user cap or isolation refused the registration | 1008 |
//! | inbound message or frame over the limit | 1009 |
//! | the registration failed for an internal reason | 1011 |
//! | no frame (not even a pong) within `idle_timeout` | 4408 |
//! | one write stalled longer than `write_timeout` | 4409 (rarely seen: the client is not reading) |

use crate::connection::CloseReason;
use crate::error::ManagerError;

/// 1009: an inbound message or frame exceeded the configured size.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// 4408: nothing arrived from the client within the idle timeout.
pub const HEARTBEAT_TIMEOUT: u16 = 4408;
/// 4409: writing to the client stalled longer than the write timeout.
pub const WRITE_TIMEOUT: u16 = 4409;
/// 1011: the server failed for an internal reason.
pub const INTERNAL_ERROR: u16 = 1011;

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
    CloseReason::new(1000, "closed by client")
}

pub(crate) fn transport_error() -> CloseReason {
    CloseReason::new(INTERNAL_ERROR, "transport error")
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
        _ => CloseReason::new(INTERNAL_ERROR, "registration failed"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
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
        let duplicate = ManagerError::DuplicateConnection(crate::ConnectionId::generate());
        assert_eq!(registration_refused(&duplicate).code, 1011);
    }
}
