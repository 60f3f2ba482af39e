//! [`StreamOffset`]: where a client is in a user's stream of critical events.
//!
//! Every critical event a manager emits gets an offset: the user's `stream`
//! (an id that changes whenever the manager starts a new numbering for the
//! user, e.g. after a restart) and a `sequence` (1, 2, 3... within the
//! stream). A client keeps the offset of the last event it saw and hands it
//! back when it reconnects (`resume=<stream>:<sequence>` on the upgrade URL);
//! the manager then replays what followed, or says explicitly what it can no
//! longer replay (see [`ResyncNotice`](crate::events::ResyncNotice)).
//!
//! A client may add the [`EventPrint`] of that event
//! (`resume=<stream>:<sequence>:<print>`, a [`ResumePoint`]): the manager
//! then also checks that the event it holds at that offset is the one the
//! client saw, which catches a numbering that a storage loss made reuse
//! an offset (see `docs/protocol.md`, section 4).

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
    "invalid stream offset `{input}`: {problem}; expected `<stream>:<sequence>` in decimal, e.g. `1767225000000042:7` (a `resume` may add `:<print>`, 8 hexadecimal digits)"
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

/// The fingerprint of one critical event: FNV-1a (32 bits) over the UTF-8
/// bytes of its frame, exactly as the server sent it.
///
/// A client keeps it with the event's offset and sends it back in
/// `resume=<stream>:<sequence>:<print>`, so the manager can tell the event
/// it holds at that offset from the one the client saw: after a storage
/// loss (a Redis failover, a restart from an older snapshot) the numbering
/// can hand a seen offset to a new event. Its text form is 8 lowercase
/// hexadecimal digits. Two different frames share a print with odds of
/// about one in four billion.
///
/// ```
/// use websocket_manager::events::EventPrint;
/// let frame = r#"{"type":"agent_started","data":{},"timestamp":1,"critical":true,"stream":9,"sequence":1}"#;
/// let print = EventPrint::of(frame);
/// assert_eq!(print.to_string().len(), 8);
/// assert_eq!(print.to_string().parse::<EventPrint>(), Ok(print));
/// // FNV-1a's published check value.
/// assert_eq!(EventPrint::of("a").to_string(), "e40c292c");
/// assert!("e40c292".parse::<EventPrint>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EventPrint(u32);

impl EventPrint {
    /// The print of a frame's text.
    pub fn of(frame: &str) -> Self {
        const OFFSET_BASIS: u32 = 0x811c_9dc5;
        const PRIME: u32 = 0x0100_0193;
        EventPrint(frame.bytes().fold(OFFSET_BASIS, |hash, byte| {
            (hash ^ u32::from(byte)).wrapping_mul(PRIME)
        }))
    }

    /// The raw 32-bit value.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for EventPrint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl FromStr for EventPrint {
    type Err = OffsetParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // `u32::from_str_radix` accepts a sign; a print is 8 digits only.
        let digits = text.len() == 8 && text.bytes().all(|b| b.is_ascii_hexdigit());
        digits
            .then(|| u32::from_str_radix(text, 16).ok())
            .flatten()
            .map(EventPrint)
            .ok_or_else(|| OffsetParseError {
                input: text.chars().take(64).collect(),
                problem: "the print is not 8 hexadecimal digits",
            })
    }
}

/// Where a client resumes: the offset of the last critical event it
/// processed and, when it kept one, that event's [`EventPrint`]. The text
/// form of the `resume` query parameter: `<stream>:<sequence>` or
/// `<stream>:<sequence>:<print>`.
///
/// ```
/// use websocket_manager::events::{EventPrint, ResumePoint, StreamOffset};
/// let plain: ResumePoint = "9:7".parse()?;
/// assert_eq!((plain.offset, plain.print), (StreamOffset::new(9, 7), None));
/// let checked: ResumePoint = "9:7:e40c292c".parse()?;
/// assert_eq!(checked.print, Some(EventPrint::of("a")));
/// assert_eq!(checked.to_string(), "9:7:e40c292c");
/// assert!("9:7:xyz".parse::<ResumePoint>().is_err());
/// # Ok::<(), websocket_manager::events::OffsetParseError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResumePoint {
    /// The offset of the last critical event the client processed.
    pub offset: StreamOffset,
    /// That event's print, when the client kept it.
    pub print: Option<EventPrint>,
}

impl ResumePoint {
    /// A resume from `offset`, with no print.
    pub const fn new(offset: StreamOffset) -> Self {
        ResumePoint {
            offset,
            print: None,
        }
    }

    /// The print to check, when there is an event to check it against
    /// (sequence 0 names none).
    pub(crate) fn checked_print(&self) -> Option<EventPrint> {
        self.print.filter(|_| self.offset.sequence > 0)
    }
}

impl fmt::Display for ResumePoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.print {
            Some(print) => write!(f, "{}:{print}", self.offset),
            None => write!(f, "{}", self.offset),
        }
    }
}

impl FromStr for ResumePoint {
    type Err = OffsetParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // The offset is `<digits>:<digits>`: a third part is the print.
        let (offset, print) = match text.match_indices(':').nth(1) {
            Some((at, _)) => (&text[..at], Some(&text[at + 1..])),
            None => (text, None),
        };
        // An error names the whole value, not the part that failed.
        let whole = |mut error: OffsetParseError| {
            error.input = text.chars().take(64).collect();
            error
        };
        let offset = offset.parse::<StreamOffset>().map_err(whole)?;
        let print = print
            .map(|print| print.parse::<EventPrint>().map_err(whole))
            .transpose()?;
        Ok(ResumePoint { offset, print })
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

    #[test]
    fn the_print_is_fnv1a_32_over_the_frame_bytes() {
        // The published FNV-1a 32 test vectors.
        for (text, print) in [
            ("", 0x811c_9dc5),
            ("a", 0xe40c_292c),
            ("foobar", 0xbf9c_f968),
        ] {
            assert_eq!(EventPrint::of(text).get(), print, "{text:?}");
        }
        // Over UTF-8 bytes, not characters.
        assert_eq!(EventPrint::of("é").get(), 0x1e9d_e8c1);
    }

    #[test]
    fn a_resume_point_round_trips_and_refuses_a_bad_print() {
        for text in ["1:2", "1:2:0000abcd", "18446744073709551615:0:ffffffff"] {
            assert_eq!(text.parse::<ResumePoint>().unwrap().to_string(), text);
        }
        assert_eq!(
            "1:2:ABCDEF01".parse::<ResumePoint>().unwrap().print,
            Some(EventPrint(0xabcd_ef01))
        );
        for (input, problem) in [
            ("1:2:", "the print is not 8 hexadecimal digits"),
            ("1:2:abc", "the print is not 8 hexadecimal digits"),
            ("1:2:+bcdef01", "the print is not 8 hexadecimal digits"),
            ("1:2:abcdef012", "the print is not 8 hexadecimal digits"),
            ("1:2:abcd:ef01", "the print is not 8 hexadecimal digits"),
            ("1:x:abcdef01", "the sequence is not a decimal number"),
            ("12", "no `:`"),
        ] {
            let error = input.parse::<ResumePoint>().unwrap_err();
            assert_eq!((error.problem, error.input.as_str()), (problem, input));
        }
    }
}
