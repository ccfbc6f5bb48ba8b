//! The API's own bounds: requests served at once by this node (past it:
//! 503 `overloaded` with Retry-After), requests per second per token (a
//! token bucket per token name; past it: 429 `rate_limited` with
//! Retry-After), and the largest request body of the JSON routes (the data
//! route has its own, `max_object_bytes`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Requests this node serves at once (handlers running; an event stream
/// counts only while it is being set up). Past it a request is refused at
/// once with 503, never queued.
pub const MAX_CONCURRENT_REQUESTS: usize = 256;
/// Event streams (`GET /events`) open at once on this node; each holds a
/// receiver of the node's event channel. Past it: 503 `overloaded`.
pub const MAX_EVENT_STREAMS: usize = 64;
/// Sustained requests per second one token (by name) may make on one node:
/// well above what one client's data path needs (a benchmark with 8
/// workers on loopback made 1 600 requests/s on a debug build), so it only
/// stops a runaway client from taking a node for itself.
pub const TOKEN_REQUESTS_PER_SECOND: u32 = 20_000;
/// Requests one token may make in a burst above the sustained rate.
pub const TOKEN_BURST: u32 = 40_000;
/// Largest body of a JSON request (plans, maintenance, release manifests).
pub const MAX_JSON_BODY_BYTES: usize = 1024 * 1024;
/// Retry-After (seconds) on a 503 `overloaded`.
pub const OVERLOADED_RETRY_AFTER_SECONDS: u64 = 1;

/// The limits one router enforces (tests shrink them).
#[derive(Clone, Debug)]
pub struct ApiLimits {
    pub max_concurrent_requests: usize,
    pub max_event_streams: usize,
    pub token_requests_per_second: u32,
    pub token_burst: u32,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_concurrent_requests: MAX_CONCURRENT_REQUESTS,
            max_event_streams: MAX_EVENT_STREAMS,
            token_requests_per_second: TOKEN_REQUESTS_PER_SECOND,
            token_burst: TOKEN_BURST,
        }
    }
}

/// One token's bucket: `tokens` left as of `at`.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The shared state behind [`ApiLimits`]: the concurrency permits and one
/// bucket per token name. The buckets are as many as the configured token
/// names (callers are identified before they are counted), so the map is
/// bounded by the config.
#[derive(Clone, Debug)]
pub struct Limiter {
    limits: ApiLimits,
    permits: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    buckets: Arc<Mutex<HashMap<String, Bucket>>>,
}

impl Limiter {
    pub fn new(limits: ApiLimits) -> Self {
        Limiter {
            permits: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
            streams: Arc::new(Semaphore::new(limits.max_event_streams)),
            limits,
            buckets: Arc::default(),
        }
    }

    pub fn limits(&self) -> &ApiLimits {
        &self.limits
    }

    /// A permit to serve one request now, or None when the node is at its
    /// bound.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// A permit for one open event stream (held by the stream), or None at
    /// the bound.
    pub fn admit_stream(&self) -> Option<OwnedSemaphorePermit> {
        self.streams.clone().try_acquire_owned().ok()
    }

    /// Takes one request from `token`'s bucket; Err(wait) when it is empty.
    pub fn take(&self, token: &str) -> Result<(), Duration> {
        self.take_at(token, Instant::now())
    }

    fn take_at(&self, token: &str, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(self.limits.token_requests_per_second.max(1));
        let burst = f64::from(self.limits.token_burst.max(1));
        let mut buckets = self.buckets.lock().expect("rate buckets lock");
        let b = buckets.entry(token.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let l = Limiter::new(ApiLimits {
            max_concurrent_requests: 2,
            max_event_streams: 1,
            token_requests_per_second: 10,
            token_burst: 3,
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.take_at("a", t0).is_ok());
        }
        let wait = l.take_at("a", t0).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100));
        // Another token has its own bucket.
        assert!(l.take_at("b", t0).is_ok());
        // 100 ms refills one request, never more than the burst.
        assert!(l.take_at("a", t0 + Duration::from_millis(100)).is_ok());
        assert!(l.take_at("a", t0 + Duration::from_millis(100)).is_err());
        for _ in 0..3 {
            assert!(l.take_at("a", t0 + Duration::from_secs(60)).is_ok());
        }
        assert!(l.take_at("a", t0 + Duration::from_secs(60)).is_err());
        // Permits are bounded and come back when dropped.
        let (p1, p2) = (l.admit().unwrap(), l.admit().unwrap());
        assert!(l.admit().is_none());
        drop(p1);
        assert!(l.admit().is_some());
        drop(p2);
        let s = l.admit_stream().unwrap();
        assert!(l.admit_stream().is_none());
        drop(s);
        assert!(l.admit_stream().is_some());
    }
}
