//! Admission control: how fast new connections are admitted and how fast a
//! connection may send, as token buckets ([`RateLimit`]), and what the
//! service counts of its refusals ([`TransportStats`]).
//!
//! | limit | set with | what the client sees |
//! |---|---|---|
//! | connections at once | [`WebSocketServiceBuilder::max_connections`](super::WebSocketServiceBuilder::max_connections) | `503` + `Retry-After` at the upgrade (`at_capacity`) |
//! | new connections per second | [`WebSocketServiceBuilder::connection_rate`](super::WebSocketServiceBuilder::connection_rate) | `503` + jittered `Retry-After` at the upgrade (`rate_limited`) |
//! | messages per second, per connection | [`TransportConfigBuilder::inbound_rate`](super::TransportConfigBuilder::inbound_rate) | an error frame `rate_limited` per message over the rate (the message is not handled); past the error-frame budget, close `1008` `message rate exceeded` |
//!
//! All are off by default. A client that backs off on `503` (the official
//! client does, with jitter) spreads a reconnect storm over the
//! `Retry-After` window instead of hammering the node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// A token-bucket rate: `per_second` on average, up to `burst` at once.
///
/// ```
/// use websocket_manager::transport::RateLimit;
/// let limit = RateLimit::new(200, 400).unwrap();
/// assert_eq!((limit.per_second(), limit.burst()), (200, 400));
/// assert!(RateLimit::new(0, 10).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    per_second: u32,
    burst: u32,
}

/// A [`RateLimit`] with a zero rate or burst (it would admit nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a rate limit needs a rate and a burst above zero (got {per_second}/s, burst {burst})")]
pub struct RateLimitError {
    /// The rate given.
    pub per_second: u32,
    /// The burst given.
    pub burst: u32,
}

impl RateLimit {
    /// `per_second` on average, bursts of up to `burst`.
    ///
    /// # Errors
    ///
    /// [`RateLimitError`] when either is zero.
    pub fn new(per_second: u32, burst: u32) -> Result<Self, RateLimitError> {
        if per_second == 0 || burst == 0 {
            return Err(RateLimitError { per_second, burst });
        }
        Ok(RateLimit { per_second, burst })
    }

    /// The average rate.
    pub fn per_second(&self) -> u32 {
        self.per_second
    }

    /// The most taken at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }
}

/// A token bucket, full at the start; not shared (a caller that shares it
/// locks it).
#[derive(Debug)]
pub(crate) struct TokenBucket {
    limit: RateLimit,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        TokenBucket {
            limit,
            tokens: f64::from(limit.burst),
            refilled: now,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * f64::from(self.limit.per_second))
            .min(f64::from(self.limit.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until the next token.
    pub fn next_token_in(&self) -> Duration {
        let missing = (1.0 - self.tokens).max(0.0);
        Duration::from_secs_f64(missing / f64::from(self.limit.per_second))
    }
}

/// What a service refused or limited since it was built (see the module
/// table), and how many connections it drives now.
///
/// ```
/// use websocket_manager::transport::TransportStats;
/// let stats = TransportStats::default();
/// assert_eq!(stats.upgrades_refused_rate_limited, 0);
/// assert!(stats.to_string().starts_with("0 connection(s)"));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TransportStats {
    /// Connections registered and driven now.
    pub connections: usize,
    /// Upgrades admitted (authenticated, counted until served).
    pub upgrades_admitted: u64,
    /// Upgrades refused with `503` because the service was at its
    /// connection limit.
    pub upgrades_refused_at_capacity: u64,
    /// Upgrades refused with `503` because new connections arrived faster
    /// than the connection rate.
    pub upgrades_refused_rate_limited: u64,
    /// Upgrades refused with `503` for any other reason (draining, held,
    /// the manager not ready).
    pub upgrades_refused_not_ready: u64,
    /// Inbound messages over a connection's rate, answered with a
    /// `rate_limited` error frame and not handled.
    pub messages_rate_limited: u64,
    /// Connections closed with 1008 `message rate exceeded`.
    pub closed_for_message_rate: u64,
}

impl std::fmt::Display for TransportStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} connection(s); upgrades: {} admitted, refused {} at capacity, {} rate-limited, {} not ready; messages: {} rate-limited, {} connection(s) closed for their rate",
            self.connections,
            self.upgrades_admitted,
            self.upgrades_refused_at_capacity,
            self.upgrades_refused_rate_limited,
            self.upgrades_refused_not_ready,
            self.messages_rate_limited,
            self.closed_for_message_rate
        )
    }
}

/// The service's counters behind [`TransportStats`].
#[derive(Debug, Default)]
pub(crate) struct TransportCounters {
    pub upgrades_admitted: AtomicU64,
    pub upgrades_refused_at_capacity: AtomicU64,
    pub upgrades_refused_rate_limited: AtomicU64,
    pub upgrades_refused_not_ready: AtomicU64,
    pub messages_rate_limited: AtomicU64,
    pub closed_for_message_rate: AtomicU64,
}

impl TransportCounters {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self, connections: usize) -> TransportStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TransportStats {
            connections,
            upgrades_admitted: get(&self.upgrades_admitted),
            upgrades_refused_at_capacity: get(&self.upgrades_refused_at_capacity),
            upgrades_refused_rate_limited: get(&self.upgrades_refused_rate_limited),
            upgrades_refused_not_ready: get(&self.upgrades_refused_not_ready),
            messages_rate_limited: get(&self.messages_rate_limited),
            closed_for_message_rate: get(&self.closed_for_message_rate),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(RateLimit::new(10, 3).unwrap(), start);
        assert!((0..3).all(|_| bucket.try_take(start)), "the burst");
        assert!(!bucket.try_take(start), "nothing left");
        assert_eq!(bucket.next_token_in(), Duration::from_millis(100));
        // 250 ms at 10/s: two tokens.
        let later = start + Duration::from_millis(250);
        assert!(bucket.try_take(later));
        assert!(bucket.try_take(later));
        assert!(!bucket.try_take(later));
        // A long pause refills to the burst, not beyond.
        let much_later = later + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| bucket.try_take(much_later)).count(), 3);
    }

    #[test]
    fn zero_rates_are_refused() {
        assert_eq!(
            RateLimit::new(5, 0),
            Err(RateLimitError {
                per_second: 5,
                burst: 0
            })
        );
        assert!(RateLimit::new(0, 5).is_err());
    }
}
