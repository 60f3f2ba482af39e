//! Validated identifiers: [`UserId`], [`ConnectionId`] and [`ThreadId`].
//!
//! Each is a distinct type, so a thread id can never be passed where a user id
//! is expected (the original `send_to_thread` did exactly that). All three are
//! cheap to clone (an `Arc<str>` inside) and are validated on construction:
//! non-empty, at most [`MAX_ID_LEN`] bytes, no control characters, no
//! Unicode format characters (zero-width and direction-changing ones, which
//! make `"alice\u{200B}"` or `"\u{202E}ecila"` look like `alice` in a log
//! or a dashboard) and no whitespace at either end.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest identifier accepted, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// Why a string was refused as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The string was empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which identifier was being built (`"user id"`, ...).
        kind: &'static str,
    },
    /// The string was longer than [`MAX_ID_LEN`] bytes.
    #[error("{kind} is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Which identifier was being built.
        kind: &'static str,
        /// The length that was given.
        len: usize,
        /// The limit, [`MAX_ID_LEN`].
        max: usize,
    },
    /// The string contained a control character (newline, NUL, escape...).
    #[error("{kind} contains a control character at byte {index}")]
    ControlCharacter {
        /// Which identifier was being built.
        kind: &'static str,
        /// Byte offset of the first control character.
        index: usize,
    },
    /// The string contained a Unicode format character (general category
    /// `Cf`: zero-width spaces and joiners, bidirectional marks, embeddings
    /// and overrides, the byte order mark, the soft hyphen, tags...). They
    /// are invisible or reorder the text around them, so an id holding one
    /// looks like another user's.
    #[error(
        "{kind} contains U+{code:04X} (a Unicode format character, invisible or direction-changing) at byte {index}",
        code = u32::from(*.character)
    )]
    FormatCharacter {
        /// Which identifier was being built.
        kind: &'static str,
        /// The first format character found.
        character: char,
        /// Its byte offset.
        index: usize,
    },
    /// The string started or ended with whitespace (`char::is_whitespace`:
    /// a space, a no-break space, an ideographic space...), which makes
    /// `"alice "` look like `"alice"`.
    #[error(
        "{kind} {} with whitespace (U+{code:04X}); trim it first",
        if *.leading { "starts" } else { "ends" },
        code = u32::from(*.character)
    )]
    SurroundingWhitespace {
        /// Which identifier was being built.
        kind: &'static str,
        /// The whitespace character at that end.
        character: char,
        /// `true` at the start, `false` at the end.
        leading: bool,
    },
}

/// Unicode general category `Cf` (Format), as inclusive ranges: from
/// `DerivedGeneralCategory.txt` of the Unicode Character Database 15.1
/// (<https://www.unicode.org/Public/15.1.0/ucd/extracted/DerivedGeneralCategory.txt>,
/// 170 code points). A small explicit table rather than a Unicode crate;
/// a `Cf` character added by a later Unicode version is not refused until
/// it is listed here.
const FORMAT_CHARACTERS: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),   // soft hyphen
    ('\u{0600}', '\u{0605}'),   // Arabic number signs
    ('\u{061C}', '\u{061C}'),   // Arabic letter mark
    ('\u{06DD}', '\u{06DD}'),   // Arabic end of ayah
    ('\u{070F}', '\u{070F}'),   // Syriac abbreviation mark
    ('\u{0890}', '\u{0891}'),   // Arabic pound and piastre marks above
    ('\u{08E2}', '\u{08E2}'),   // Arabic disputed end of ayah
    ('\u{180E}', '\u{180E}'),   // Mongolian vowel separator
    ('\u{200B}', '\u{200F}'),   // zero-width space, (non-)joiner, LRM, RLM
    ('\u{202A}', '\u{202E}'),   // bidirectional embeddings and overrides
    ('\u{2060}', '\u{2064}'),   // word joiner, invisible operators
    ('\u{2066}', '\u{206F}'),   // bidirectional isolates, deprecated format characters
    ('\u{FEFF}', '\u{FEFF}'),   // zero-width no-break space (byte order mark)
    ('\u{FFF9}', '\u{FFFB}'),   // interlinear annotation
    ('\u{110BD}', '\u{110BD}'), // Kaithi number sign
    ('\u{110CD}', '\u{110CD}'), // Kaithi number sign above
    ('\u{13430}', '\u{1343F}'), // Egyptian hieroglyph format controls
    ('\u{1BCA0}', '\u{1BCA3}'), // shorthand format controls
    ('\u{1D173}', '\u{1D17A}'), // musical symbol beam and phrase controls
    ('\u{E0001}', '\u{E0001}'), // language tag
    ('\u{E0020}', '\u{E007F}'), // tag characters
];

/// Whether `c` is in Unicode general category `Cf` (see [`FORMAT_CHARACTERS`]).
fn is_format_character(c: char) -> bool {
    // ASCII is never `Cf`: the common case costs one comparison
    !c.is_ascii()
        && FORMAT_CHARACTERS
            .iter()
            .any(|&(first, last)| (first..=last).contains(&c))
}

fn validate(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            kind,
            len: value.len(),
            max: MAX_ID_LEN,
        });
    }
    if let Some((index, _)) = value.char_indices().find(|(_, c)| c.is_control()) {
        return Err(IdError::ControlCharacter { kind, index });
    }
    if let Some((index, character)) = value.char_indices().find(|&(_, c)| is_format_character(c)) {
        return Err(IdError::FormatCharacter {
            kind,
            character,
            index,
        });
    }
    for (character, leading) in [
        (value.chars().next(), true),
        (value.chars().next_back(), false),
    ] {
        if let Some(character) = character.filter(|c| c.is_whitespace()) {
            return Err(IdError::SurroundingWhitespace {
                kind,
                character,
                leading,
            });
        }
    }
    Ok(())
}

macro_rules! define_id {
    ($(#[$meta:meta])* $name:ident, $kind:literal) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            #[doc = concat!("Builds a ", $kind, ", validating it first.")]
            ///
            /// # Errors
            ///
            /// [`IdError`] when the value is empty, longer than [`MAX_ID_LEN`]
            /// bytes, contains a control or a Unicode format character, or
            /// starts or ends with whitespace.
            pub fn new(value: impl AsRef<str>) -> Result<Self, IdError> {
                let value = value.as_ref();
                validate($kind, value)?;
                Ok(Self(Arc::from(value)))
            }

            /// An id the crate itself spells out (a constant, known valid):
            /// no validation to fail, so no error path that cannot happen.
            #[allow(dead_code, reason = "not every kind of id has constants")]
            pub(crate) fn from_constant(value: &'static str) -> Self {
                debug_assert!(validate($kind, value).is_ok(), "{value}");
                Self(Arc::from(value))
            }

            #[doc = concat!("The ", $kind, " as a string slice.")]
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Loads the id's first byte, so that its cache line (which
            /// also holds the reference count) is on its way before a clone
            /// needs it; see [`WebSocketHandle::prefetch`](crate::WebSocketHandle::prefetch).
            #[allow(dead_code, reason = "not every kind of id is cloned in bulk")]
            #[inline]
            pub(crate) fn prefetch(&self) {
                std::hint::black_box(self.0.as_bytes().first().copied());
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(value: &str) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::new(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

define_id!(
    /// The authenticated identity of a user; every connection belongs to one.
    ///
    /// ```
    /// use websocket_manager::UserId;
    /// let user: UserId = "alice".parse()?;
    /// assert_eq!(user.as_str(), "alice");
    /// assert_eq!(UserId::new("josé")?.as_str(), "josé");
    /// assert!(UserId::new("").is_err());
    /// // lookalikes of `alice`: a zero-width space, a right-to-left override, a space
    /// assert_eq!(
    ///     UserId::new("alice\u{200B}").unwrap_err().to_string(),
    ///     "user id contains U+200B (a Unicode format character, invisible or direction-changing) at byte 5"
    /// );
    /// assert!(UserId::new("\u{202E}ecila").is_err());
    /// assert!(UserId::new("alice ").is_err());
    /// # Ok::<(), websocket_manager::IdError>(())
    /// ```
    UserId,
    "user id"
);

define_id!(
    /// Identifies one connection (one socket) within a manager.
    ///
    /// ```
    /// use websocket_manager::ConnectionId;
    /// let a = ConnectionId::generate();
    /// let b = ConnectionId::generate();
    /// assert_ne!(a, b);
    /// assert_eq!(ConnectionId::new("conn-1")?.as_str(), "conn-1");
    /// # Ok::<(), websocket_manager::IdError>(())
    /// ```
    ConnectionId,
    "connection id"
);

define_id!(
    /// A conversation thread (an agent run's channel); connections can be
    /// bound to one, and `send_to_thread` reaches exactly those.
    ///
    /// ```
    /// use websocket_manager::ThreadId;
    /// let thread = ThreadId::new("thread-42")?;
    /// assert_eq!(thread.to_string(), "thread-42");
    /// assert!(ThreadId::new("bad\nid").is_err());
    /// # Ok::<(), websocket_manager::IdError>(())
    /// ```
    ThreadId,
    "thread id"
);

define_id!(
    /// Names one logical critical event, so that a caller may retry its
    /// emit safely: within the manager's `idempotency_window`, a retry with
    /// the same key (for the same user) stores and sends nothing and answers
    /// the first attempt's offset ([`Delivery::Duplicate`](crate::Delivery::Duplicate)).
    /// See [`IdempotentEmit`](crate::managers::IdempotentEmit).
    ///
    /// ```
    /// use websocket_manager::events::IdempotencyKey;
    /// let key = IdempotencyKey::new("run-42/step-3")?;
    /// assert_eq!(key.as_str(), "run-42/step-3");
    /// assert!(IdempotencyKey::new("").is_err());
    /// # Ok::<(), websocket_manager::IdError>(())
    /// ```
    IdempotencyKey,
    "idempotency key"
);

impl ConnectionId {
    /// Generates a fresh, process-unique connection id.
    ///
    /// The id combines a per-process random prefix with a counter, so ids are
    /// unique within a process and very unlikely to collide across processes.
    pub fn generate() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(1);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self(Arc::from(format!("conn-{:012x}-{n}", process_prefix())))
    }
}

/// A random 48-bit value fixed for the life of the process.
fn process_prefix() -> u64 {
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PREFIX.get_or_init(|| random_u64() & 0xffff_ffff_ffff)
}

/// 64 random bits from the standard library's randomly seeded hasher (no
/// extra dependency); each call draws fresh keys. Not for cryptography.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// The bytes allowed in names the library puts on the wire (event types,
/// cluster key prefixes and node ids): ASCII letters, digits, `_`, `-`,
/// `.`, `:`. Nothing in them needs escaping in JSON or in a Redis key.
pub(crate) fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_long_and_control_characters() {
        assert_eq!(UserId::new(""), Err(IdError::Empty { kind: "user id" }));
        let long = "x".repeat(MAX_ID_LEN + 1);
        assert!(matches!(
            ThreadId::new(&long),
            Err(IdError::TooLong { len, .. }) if len == MAX_ID_LEN + 1
        ));
        assert!(ThreadId::new("x".repeat(MAX_ID_LEN)).is_ok());
        assert_eq!(
            ConnectionId::new("ab\u{7}c"),
            Err(IdError::ControlCharacter {
                kind: "connection id",
                index: 2
            })
        );
    }

    #[test]
    fn lookalike_ids_are_refused_naming_the_code_point() {
        for (value, character, index) in [
            ("alice\u{200B}", '\u{200B}', 5),
            ("\u{202E}ecila", '\u{202E}', 0),
            ("al\u{200D}ice", '\u{200D}', 2),
            ("ali\u{00AD}ce", '\u{00AD}', 3),
            ("\u{FEFF}alice", '\u{FEFF}', 0),
            ("alice\u{2066}", '\u{2066}', 5),
            ("alice\u{E0041}", '\u{E0041}', 5),
        ] {
            let error = UserId::new(value).unwrap_err();
            assert_eq!(
                error,
                IdError::FormatCharacter {
                    kind: "user id",
                    character,
                    index
                },
                "{value:?}"
            );
            let code = format!("U+{:04X}", u32::from(character));
            assert!(error.to_string().contains(&code), "{error}");
        }
        for (value, character, leading) in [
            (" alice", ' ', true),
            ("alice ", ' ', false),
            ("alice\u{00A0}", '\u{00A0}', false),
            ("\u{3000}alice", '\u{3000}', true),
        ] {
            assert_eq!(
                UserId::new(value),
                Err(IdError::SurroundingWhitespace {
                    kind: "user id",
                    character,
                    leading
                }),
                "{value:?}"
            );
        }
        assert_eq!(
            UserId::new("alice ").unwrap_err().to_string(),
            "user id ends with whitespace (U+0020); trim it first"
        );
        // the same rule for every kind of id
        assert!(ThreadId::new("alice:run\u{202E}1").is_err());
        assert!(ConnectionId::new(" conn-1").is_err());
    }

    #[test]
    fn plain_ids_in_any_script_are_accepted() {
        for value in ["alice", "josé", "用户", "Ωmega", "a b", "alice:run-1", "ñ"] {
            assert_eq!(UserId::new(value).unwrap().as_str(), value);
        }
        // the table's edges: just outside each end of a range is not `Cf`
        for value in [
            "a\u{00AC}b",
            "a\u{00AE}b",
            "a\u{200A}b",
            "a\u{2010}b",
            "a\u{202F}b",
            "a\u{2065}b",
            "a\u{FEFE}b",
        ] {
            assert!(UserId::new(value).is_ok(), "{value:?}");
        }
    }

    #[test]
    fn the_format_table_is_sorted_and_disjoint() {
        let mut previous: Option<char> = None;
        for &(first, last) in FORMAT_CHARACTERS {
            assert!(first <= last, "{first:?}..={last:?}");
            assert!(previous.is_none_or(|p| p < first), "{first:?}");
            previous = Some(last);
        }
        let count: u32 = FORMAT_CHARACTERS
            .iter()
            .map(|&(first, last)| u32::from(last) - u32::from(first) + 1)
            .sum();
        // Unicode 15.1 has 170 code points in `Cf`
        assert_eq!(count, 170);
    }

    #[test]
    fn serde_round_trip_validates() {
        let user = UserId::new("bob").unwrap();
        let json = serde_json::to_string(&user).unwrap();
        assert_eq!(json, "\"bob\"");
        assert_eq!(serde_json::from_str::<UserId>(&json).unwrap(), user);
        assert!(serde_json::from_str::<UserId>("\"\"").is_err());
    }

    #[test]
    fn generated_ids_are_unique() {
        let ids: std::collections::HashSet<_> =
            (0..1000).map(|_| ConnectionId::generate()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
