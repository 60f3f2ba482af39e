//! Validated identifiers: [`UserId`], [`ConnectionId`] and [`ThreadId`].
//!
//! Each is a distinct type, so a thread id can never be passed where a user id
//! is expected (the original `send_to_thread` did exactly that). All three are
//! cheap to clone (an `Arc<str>` inside) and are validated on construction:
//! non-empty, at most [`MAX_ID_LEN`] bytes, no control characters.

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
            /// bytes, or contains a control character.
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
    /// assert!(UserId::new("").is_err());
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
