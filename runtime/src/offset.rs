//! [`StreamOffset`]: where a client is in a user's stream of critical events.
//!
//! Every critical event a manager emits gets an offset: the user's `stream`
//! (an id that changes whenever the manager starts a new numbering for the
//! user, e.g. after a restart) and a `sequence` (1, 2, 3... within the
//! stream). A client keeps the offset of the last event it saw and hands it
//! back when it reconnects (`resume=<stream>:<sequence>` on the upgrade URL);
//! the manager then replays what followed, or says explicitly what it can no
//! longer replay (see [`ResyncNotice`](crate::events::ResyncNotice)).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The position of one critical event in a user's stream.
///
/// Its text form, used in the `resume` query parameter, is
/// `<stream>:<sequence>` in decimal.
///
/// ```
/// use websocket_manager::events::StreamOffset;
/// let offset: StreamOffset = "1767225000000042:7".parse()?;
/// assert_eq!(offset, StreamOffset::new(1767225000000042, 7));
/// assert_eq!(offset.to_string(), "1767225000000042:7");
/// assert!("42".parse::<StreamOffset>().is_err());
/// # Ok::<(), websocket_manager::events::OffsetParseError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StreamOffset {
    /// The user's stream id.
    pub stream: u64,
    /// The event's sequence number within the stream (0: before the first
    /// event).
    pub sequence: u64,
}

impl StreamOffset {
    /// An offset.
    pub const fn new(stream: u64, sequence: u64) -> Self {
        StreamOffset { stream, sequence }
    }
}

impl fmt::Display for StreamOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.stream, self.sequence)
    }
}

/// Why a text is not a [`StreamOffset`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid stream offset `{input}`: {problem}; expected `<stream>:<sequence>` in decimal, e.g. `1767225000000042:7`"
)]
pub struct OffsetParseError {
    /// The text given (at most 64 characters of it).
    pub input: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl FromStr for StreamOffset {
    type Err = OffsetParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |problem| OffsetParseError {
            input: text.chars().take(64).collect(),
            problem,
        };
        let (stream, sequence) = text.split_once(':').ok_or_else(|| fail("no `:`"))?;
        let number = |part: &str, what| {
            // `u64::from_str` accepts a leading `+`; an offset is digits only.
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(fail(what));
            }
            part.parse::<u64>()
                .map_err(|_| fail("a number is too large"))
        };
        Ok(StreamOffset {
            stream: number(stream, "the stream is not a decimal number")?,
            sequence: number(sequence, "the sequence is not a decimal number")?,
        })
    }
}

/// Where a new connection stands in its user's stream of critical events
/// when the manager registered it, and how much the manager retains: what
/// the transport's `hello` frame tells the client (see `docs/protocol.md`),
/// so it can choose between resuming and reloading before it has to.
///
/// A manager records it on the connection's socket during
/// [`add_connection`](crate::WebSocketManager::add_connection), at the
/// replay, with [`WebSocketHandle::record_stream_position`](crate::WebSocketHandle::record_stream_position);
/// the reference managers and [`CriticalEventLog`](crate::managers::CriticalEventLog) do.
///
/// ```
/// use std::time::Duration;
/// use websocket_manager::events::{StreamOffset, StreamPosition};
/// let position = StreamPosition::new(
///     Some(StreamOffset::new(9, 7)),
///     Some(StreamOffset::new(9, 5)),
///     256,
///     Duration::from_secs(300),
/// );
/// assert_eq!(position.latest, Some(StreamOffset::new(9, 7)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StreamPosition {
    /// The offset of the last critical event emitted to the user (sequence
    /// 0: the user's current stream has none yet); `None` when unknown.
    pub latest: Option<StreamOffset>,
    /// The oldest critical event still retained for replay, if any.
    pub oldest_retained: Option<StreamOffset>,
    /// At most this many critical events are retained per user.
    pub max_events: usize,
    /// Each critical event is retained at most this long.
    #[serde(serialize_with = "millis")]
    pub max_age: Duration,
}

impl StreamPosition {
    /// A position (see the fields).
    pub fn new(
        latest: Option<StreamOffset>,
        oldest_retained: Option<StreamOffset>,
        max_events: usize,
        max_age: Duration,
    ) -> Self {
        StreamPosition {
            latest,
            oldest_retained,
            max_events,
            max_age,
        }
    }
}

fn millis<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_refuses_everything_else() {
        let offset = StreamOffset::new(u64::MAX, 0);
        assert_eq!(offset.to_string().parse::<StreamOffset>().unwrap(), offset);
        for (input, problem) in [
            ("", "no `:`"),
            ("12", "no `:`"),
            (":3", "the stream is not a decimal number"),
            ("12:", "the sequence is not a decimal number"),
            ("+1:2", "the stream is not a decimal number"),
            ("1:-2", "the sequence is not a decimal number"),
            ("1:2:3", "the sequence is not a decimal number"),
            (" 1:2", "the stream is not a decimal number"),
            ("18446744073709551616:1", "a number is too large"),
        ] {
            let error = input.parse::<StreamOffset>().unwrap_err();
            assert_eq!(error.problem, problem, "{input:?}");
            assert!(error.to_string().contains("<stream>:<sequence>"));
        }
    }
}
