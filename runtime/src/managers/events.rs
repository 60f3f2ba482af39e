//! Critical agent events: the five event names, the envelope every critical
//! event travels in, the [`ResyncNotice`] control frame, and the validation
//! of event types.
//!
//! A critical event reaches the client as one JSON text frame:
//!
//! ```json
//! {"type":"tool_executing","data":{"tool":"search"},"timestamp":1767225600000,"critical":true,"stream":1767225000000042,"sequence":7}
//! ```
//!
//! * `type`: the event type, validated by [`validate_event_type`].
//! * `data`: the caller's JSON, untouched.
//! * `timestamp`: milliseconds since the Unix epoch when the event was emitted
//!   (not when it was replayed).
//! * `critical`: always `true`.
//! * `stream` and `sequence`: the event's [`StreamOffset`]. `sequence` counts
//!   1, 2, 3... per user, in emission order, within one `stream`; a client
//!   keeps the last offset it saw and resumes from it when it reconnects.
//!   A new `stream` means the manager started a new numbering for the user
//!   (it had forgotten the user, or restarted). The client is never left to
//!   guess what that means: a client that resumes from an offset the manager
//!   cannot honour first receives a [`ResyncNotice`].

use serde::{Deserialize, Serialize};

#[cfg(feature = "redis")]
use crate::connection::TextFrame;
use crate::error::ManagerError;
use crate::offset::StreamOffset;

/// An agent run started.
pub const AGENT_STARTED: &str = "agent_started";
/// The agent is thinking (progress).
pub const AGENT_THINKING: &str = "agent_thinking";
/// The agent started a tool.
pub const TOOL_EXECUTING: &str = "tool_executing";
/// A tool finished.
pub const TOOL_COMPLETED: &str = "tool_completed";
/// The agent run finished.
pub const AGENT_COMPLETED: &str = "agent_completed";

/// The five agent events a user must see, all of them and in order, for
/// every agent run.
pub const AGENT_EVENTS: [&str; 5] = [
    AGENT_STARTED,
    AGENT_THINKING,
    TOOL_EXECUTING,
    TOOL_COMPLETED,
    AGENT_COMPLETED,
];

/// The longest event type accepted, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 64;

/// A critical event as it is sent to the client (see the module docs).
///
/// ```
/// use websocket_manager::events::CriticalEnvelope;
/// let text = r#"{"type":"agent_started","data":{"run":1},"timestamp":5,"critical":true,"stream":9,"sequence":1}"#;
/// let event: CriticalEnvelope = serde_json::from_str(text)?;
/// assert_eq!(event.event_type, "agent_started");
/// assert_eq!(event.sequence, 1);
/// assert_eq!(serde_json::to_string(&event)?, text);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CriticalEnvelope {
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The caller's payload.
    pub data: serde_json::Value,
    /// Milliseconds since the Unix epoch at emission.
    pub timestamp: u64,
    /// Always `true`: marks the frame as a critical event.
    pub critical: bool,
    /// The user's current run of sequence numbers (see the module docs).
    pub stream: u64,
    /// Per-user emission order, starting at 1.
    pub sequence: u64,
}

/// The `type` of the [`ResyncNotice`] control frame. It is reserved:
/// [`validate_event_type`] refuses it, so no event can pass for a notice.
pub const RESYNC: &str = "resync";

/// Why a [`ResyncNotice`] was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ResyncReason {
    /// Events after the requested offset (or events no connection had taken
    /// yet, when no offset was given) were evicted or expired before they
    /// could be replayed. `lost` says how many.
    Trimmed,
    /// The requested stream is not the user's current one: the manager
    /// forgot the user or restarted since. How many events were lost is
    /// unknown.
    UnknownStream,
    /// The requested sequence is beyond the last one the stream assigned
    /// (a client bug, or an offset from another deployment).
    Ahead,
}

/// The control frame a connection receives first when the manager cannot
/// replay everything its client is owed. It is a JSON text frame:
///
/// ```json
/// {"type":"resync","reason":"trimmed","requested":{"stream":9,"sequence":2},"oldest_retained":{"stream":9,"sequence":5},"latest":{"stream":9,"sequence":7},"lost":2,"timestamp":1767225600000}
/// ```
///
/// The retained events (from `oldest_retained` to `latest`) follow it, in
/// order. A client that receives it has missed events: it should reload
/// the state those events describe (e.g. fetch the agent run's result over
/// HTTP), then carry on from the events that follow.
///
/// ```
/// use websocket_manager::events::StreamOffset;
/// use websocket_manager::events::{ResyncNotice, ResyncReason};
/// let text = r#"{"type":"resync","reason":"unknown_stream","requested":{"stream":3,"sequence":8},"oldest_retained":null,"latest":{"stream":9,"sequence":0},"lost":null,"timestamp":5}"#;
/// let notice: ResyncNotice = serde_json::from_str(text)?;
/// assert_eq!(notice.reason, ResyncReason::UnknownStream);
/// assert_eq!(notice.requested, Some(StreamOffset::new(3, 8)));
/// assert_eq!(serde_json::to_string(&notice)?, text);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "resync")]
pub struct ResyncNotice {
    /// Why the manager cannot replay everything.
    pub reason: ResyncReason,
    /// The offset the client resumed from (`None`: it gave none, and events
    /// no connection had taken were lost).
    pub requested: Option<StreamOffset>,
    /// The first event that follows this notice, if any is retained.
    pub oldest_retained: Option<StreamOffset>,
    /// The user's current stream and the last sequence it assigned (0: none
    /// yet).
    pub latest: StreamOffset,
    /// How many events were lost, when known.
    pub lost: Option<u64>,
    /// Milliseconds since the Unix epoch when the notice was sent.
    pub timestamp: u64,
}

/// Checks an event type: non-empty, at most [`MAX_EVENT_TYPE_LEN`] bytes,
/// only ASCII letters, digits and `_ - . :`, and not the reserved
/// [`RESYNC`].
///
/// ```
/// use websocket_manager::events::{validate_event_type, TOOL_EXECUTING};
/// assert!(validate_event_type(TOOL_EXECUTING).is_ok());
/// assert!(validate_event_type("").is_err());
/// assert!(validate_event_type("<script>").is_err());
/// assert!(validate_event_type("resync").is_err()); // reserved
/// ```
///
/// # Errors
///
/// [`ManagerError::InvalidEventType`] saying what is wrong.
pub fn validate_event_type(event_type: &str) -> Result<(), ManagerError> {
    let reason = if event_type == RESYNC {
        Some("is reserved for the manager's resync notice")
    } else if event_type.is_empty() {
        Some("must not be empty")
    } else if event_type.len() > MAX_EVENT_TYPE_LEN {
        Some("is longer than 64 bytes")
    } else if !event_type.bytes().all(crate::ids::is_name_byte) {
        Some("may only contain ASCII letters, digits, `_`, `-`, `.` and `:`")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(ManagerError::InvalidEventType {
            event_type: event_type.chars().take(64).collect(),
            reason,
        }),
    }
}

#[cfg(feature = "redis")]
/// The length of [`critical_frame`]'s output for the largest possible
/// offset, known before Redis assigns the sequence (no frame is built).
pub(crate) fn critical_frame_max_len(event_type: &str, data_json: &str, timestamp: u64) -> usize {
    const FIXED: usize =
        r#"{"type":"","data":,"timestamp":,"critical":true,"stream":,"sequence":}"#.len();
    let digits = |n: u64| n.checked_ilog10().map_or(1, |d| d as usize + 1);
    FIXED + event_type.len() + data_json.len() + digits(timestamp) + 2 * digits(u64::MAX)
}

#[cfg(feature = "redis")]
/// The frame of a critical event, byte for byte what
/// `serde_json::to_string(&CriticalEnvelope { .. })` writes, built from the
/// data's JSON text without parsing it again, so every node (and the
/// in-memory history) sends the same bytes.
pub(crate) fn critical_frame(
    event_type: &str,
    data_json: &str,
    timestamp: u64,
    offset: StreamOffset,
) -> TextFrame {
    // `event_type` passed `validate_event_type` (no character needs
    // escaping); `data_json` was written by serde_json.
    TextFrame::from(format!(
        r#"{{"type":"{event_type}","data":{data_json},"timestamp":{timestamp},"critical":true,"stream":{},"sequence":{}}}"#,
        offset.stream, offset.sequence
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    #[cfg(feature = "redis")]
    fn the_maximum_length_is_the_frame_length_at_the_largest_offset() {
        for (data, timestamp) in [
            ("{}", 0),
            (r#"{"a":[1,2]}"#, 9),
            ("null", 1_700_000_000_123),
        ] {
            let max = critical_frame(
                "agent_started",
                data,
                timestamp,
                StreamOffset::new(u64::MAX, u64::MAX),
            );
            assert_eq!(
                critical_frame_max_len("agent_started", data, timestamp),
                max.len()
            );
            let small = critical_frame("agent_started", data, timestamp, StreamOffset::new(1, 1));
            assert!(small.len() <= max.len());
        }
    }

    #[test]
    fn the_five_agent_events_are_valid_and_distinct() {
        for event in AGENT_EVENTS {
            validate_event_type(event).unwrap();
        }
        let distinct: std::collections::HashSet<_> = AGENT_EVENTS.iter().collect();
        assert_eq!(distinct.len(), 5);
    }

    #[test]
    fn invalid_event_types_are_refused_with_a_reason() {
        let cases = [
            ("", "must not be empty"),
            ("agent started", "may only contain"),
            ("ünïcode", "may only contain"),
            ("a\nb", "may only contain"),
            ("resync", "is reserved"),
        ];
        for (input, expected) in cases {
            match validate_event_type(input) {
                Err(ManagerError::InvalidEventType { reason, .. }) => {
                    assert!(reason.starts_with(expected), "{input:?}: {reason}");
                }
                other => panic!("{input:?} was accepted: {other:?}"),
            }
        }
        let long = "x".repeat(MAX_EVENT_TYPE_LEN + 1);
        match validate_event_type(&long) {
            Err(ManagerError::InvalidEventType { event_type, reason }) => {
                assert_eq!(event_type.len(), 64);
                assert_eq!(reason, "is longer than 64 bytes");
            }
            other => panic!("accepted: {other:?}"),
        }
        validate_event_type(&"x".repeat(MAX_EVENT_TYPE_LEN)).unwrap();
        validate_event_type("ns:tool.progress-2_b").unwrap();
    }
}
