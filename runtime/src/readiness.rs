//! [`Readiness`]: whether a manager (or a whole service) admits new
//! connections right now, and if not, why and when to try again.
//!
//! Transport-neutral: the transport refuses an upgrade that arrives while
//! its service is [`NotReady`] with `503 Service Unavailable` and a
//! `Retry-After` header, before any `101`; a server's readiness route
//! answers the same way so a load balancer stops sending it clients.
//!
//! A manager reports its readiness through `#[websocket_manager(readiness =
//! path)]` (a method `fn(&Self) -> Readiness`); managers that have no notion
//! of it are always [`Readiness::Ready`]. [`DynManager::readiness`](crate::DynManager::readiness)
//! asks any manager, also one the factory built.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use serde::{Serialize, Serializer};

/// Why a manager or a service does not admit new connections.
///
/// ```
/// use websocket_manager::NotReadyReason;
/// assert_eq!(NotReadyReason::Fenced.to_string(), "fenced");
/// assert_eq!(serde_json::to_value(NotReadyReason::AtCapacity).unwrap(), "at_capacity");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NotReadyReason {
    /// Still starting: not yet joined to what it depends on (a cluster's
    /// Redis, a startup check still running).
    Starting,
    /// Lost the link to what it depends on and is joining again.
    Reconnecting,
    /// Cut off from the cluster for longer than the others remember it:
    /// it must not serve until it has joined again.
    Fenced,
    /// Shutting down: draining its connections, taking no new ones.
    Draining,
    /// At its connection limit.
    AtCapacity,
    /// New connections arrive faster than its connection rate: this one
    /// upgrade is refused (readiness routes never say so).
    RateLimited,
    /// Shut down for good.
    ShutDown,
}

impl NotReadyReason {
    /// The reason as one lower-case word, as in [`Display`](fmt::Display)
    /// and the serialized form.
    pub fn as_str(self) -> &'static str {
        match self {
            NotReadyReason::Starting => "starting",
            NotReadyReason::Reconnecting => "reconnecting",
            NotReadyReason::Fenced => "fenced",
            NotReadyReason::Draining => "draining",
            NotReadyReason::AtCapacity => "at_capacity",
            NotReadyReason::RateLimited => "rate_limited",
            NotReadyReason::ShutDown => "shut_down",
        }
    }
}

impl fmt::Display for NotReadyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Not admitting connections: why, a detail for the operator's logs, and
/// how long a client should wait before trying again (here or elsewhere).
///
/// The detail is for logs and operator routes; what a client is shown is
/// only the [`reason`](Self::reason) (see
/// `transport::AuthError::public_message`, feature `transport`).
///
/// ```
/// use std::time::Duration;
/// use websocket_manager::{NotReady, NotReadyReason};
/// let not_ready = NotReady::new(NotReadyReason::Starting, "redis unreachable", Duration::from_millis(1500));
/// assert_eq!(not_ready.retry_after_secs(), 2); // whole seconds, rounded up
/// assert_eq!(not_ready.to_string(), "not ready (starting): redis unreachable; retry after 2 s");
/// let json = serde_json::to_value(&not_ready).unwrap();
/// assert_eq!(json["reason"], "starting");
/// assert_eq!(json["retry_after_ms"], 1500);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotReady {
    /// Why.
    pub reason: NotReadyReason,
    /// A short explanation for the operator (never user data).
    pub detail: Cow<'static, str>,
    /// How long a client should wait before trying again.
    #[serde(rename = "retry_after_ms", serialize_with = "millis")]
    pub retry_after: Duration,
}

impl NotReady {
    /// The shortest `Retry-After` a refusal advertises.
    pub const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

    /// A refusal for `reason`.
    pub fn new(
        reason: NotReadyReason,
        detail: impl Into<Cow<'static, str>>,
        retry_after: Duration,
    ) -> Self {
        NotReady {
            reason,
            detail: detail.into(),
            retry_after,
        }
    }

    /// [`retry_after`](Self::retry_after) in whole seconds, rounded up, at
    /// least 1 (the unit of the HTTP `Retry-After` header).
    pub fn retry_after_secs(&self) -> u64 {
        let retry = self.retry_after.max(Self::MIN_RETRY_AFTER);
        retry.as_secs() + u64::from(retry.subsec_nanos() > 0)
    }

    /// The value of a `Retry-After` header for one refused client:
    /// [`retry_after_secs`](Self::retry_after_secs) plus a random extra of
    /// up to a quarter of it (at least one second), so that the clients
    /// refused together do not all come back in the same second.
    ///
    /// ```
    /// use std::time::Duration;
    /// use websocket_manager::{NotReady, NotReadyReason};
    /// let not_ready = NotReady::new(NotReadyReason::Draining, "shutting down", Duration::from_secs(4));
    /// let secs = not_ready.jittered_retry_after_secs();
    /// assert!((4..=5).contains(&secs), "{secs}");
    /// ```
    pub fn jittered_retry_after_secs(&self) -> u64 {
        let base = self.retry_after_secs();
        let spread = (base / 4).max(1);
        base + random_u64() % (spread + 1)
    }
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not ready ({}): {}; retry after {} s",
            self.reason,
            self.detail,
            self.retry_after_secs()
        )
    }
}

/// Whether new connections are admitted right now.
///
/// Serialized as `{"state":"ready"}` or `{"state":"not_ready","reason":
/// "...","detail":"...","retry_after_ms":...}`.
///
/// ```
/// use std::time::Duration;
/// use websocket_manager::{NotReadyReason, Readiness};
/// assert!(Readiness::Ready.is_ready());
/// assert_eq!(Readiness::Ready.to_string(), "ready");
/// let draining = Readiness::not_ready(NotReadyReason::Draining, "SIGTERM", Duration::from_secs(5));
/// assert!(!draining.is_ready());
/// assert_eq!(draining.reason(), Some(NotReadyReason::Draining));
/// assert_eq!(serde_json::to_value(&draining).unwrap()["state"], "not_ready");
/// assert_eq!(serde_json::to_value(Readiness::Ready).unwrap(), serde_json::json!({"state": "ready"}));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Readiness {
    /// Admitting connections.
    Ready,
    /// Not admitting connections.
    NotReady(NotReady),
}

impl Readiness {
    /// Shorthand for `Readiness::NotReady(NotReady::new(..))`.
    pub fn not_ready(
        reason: NotReadyReason,
        detail: impl Into<Cow<'static, str>>,
        retry_after: Duration,
    ) -> Self {
        Readiness::NotReady(NotReady::new(reason, detail, retry_after))
    }

    /// Whether new connections are admitted.
    pub fn is_ready(&self) -> bool {
        matches!(self, Readiness::Ready)
    }

    /// Why not, when not ready.
    pub fn reason(&self) -> Option<NotReadyReason> {
        match self {
            Readiness::Ready => None,
            Readiness::NotReady(not_ready) => Some(not_ready.reason),
        }
    }

    /// `Ok(())` when ready, else the refusal.
    ///
    /// # Errors
    ///
    /// The [`NotReady`] when not ready.
    pub fn into_result(self) -> Result<(), NotReady> {
        match self {
            Readiness::Ready => Ok(()),
            Readiness::NotReady(not_ready) => Err(not_ready),
        }
    }
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Readiness::Ready => f.write_str("ready"),
            Readiness::NotReady(not_ready) => not_ready.fmt(f),
        }
    }
}

/// How long a client refused by a shut-down manager waits: the manager is
/// not coming back, so the client had better try another server.
pub(crate) const SHUT_DOWN_RETRY_AFTER: Duration = Duration::from_secs(5);

/// `Ready`, or [`NotReadyReason::ShutDown`] once a manager was shut down.
pub(crate) fn unless_shut_down(shut_down: bool) -> Readiness {
    if shut_down {
        Readiness::not_ready(
            NotReadyReason::ShutDown,
            "the manager was shut down",
            SHUT_DOWN_RETRY_AFTER,
        )
    } else {
        Readiness::Ready
    }
}

fn millis<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// A random u64 from the standard library's randomly seeded hasher: enough
/// to spread retries, not for secrets.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0x5eed);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_at_least_one() {
        let secs = |ms| {
            NotReady::new(NotReadyReason::Starting, "", Duration::from_millis(ms))
                .retry_after_secs()
        };
        assert_eq!(secs(0), 1);
        assert_eq!(secs(1000), 1);
        assert_eq!(secs(1001), 2);
        assert_eq!(secs(30_000), 30);
    }

    #[test]
    fn the_jitter_stays_within_a_quarter_and_varies() {
        let not_ready = NotReady::new(NotReadyReason::Fenced, "", Duration::from_secs(8));
        let seen: std::collections::HashSet<u64> = (0..200)
            .map(|_| not_ready.jittered_retry_after_secs())
            .collect();
        assert!(seen.iter().all(|s| (8..=10).contains(s)), "{seen:?}");
        assert!(seen.len() > 1, "no jitter: {seen:?}");
    }
}
