//! Bounded exponential backoff for redialing, pure: the caller passes the
//! clock and the jitter.

/// When the next dial to one target may happen.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    base_ms: u64,
    max_ms: u64,
    attempts: u32,
    next_at_ms: u64,
}

impl Backoff {
    pub fn new(base_ms: u64, max_ms: u64) -> Self {
        assert!(base_ms > 0 && base_ms <= max_ms);
        Backoff {
            base_ms,
            max_ms,
            attempts: 0,
            next_at_ms: 0,
        }
    }

    pub fn due(&self, now_ms: u64) -> bool {
        now_ms >= self.next_at_ms
    }

    /// How long from `now_ms` until the next attempt is due.
    pub fn wait_ms(&self, now_ms: u64) -> u64 {
        self.next_at_ms.saturating_sub(now_ms)
    }

    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Records an attempt made at `now_ms`; the next one waits
    /// `min(max, base * 2^attempts)`, of which the upper half is scaled by
    /// `jitter` in `[0, 1]` so that many nodes do not redial in lockstep.
    pub fn attempted(&mut self, now_ms: u64, jitter: f64) {
        let exp = self.attempts.min(20);
        let delay = self.base_ms.saturating_mul(1 << exp).min(self.max_ms);
        let jitter = jitter.clamp(0.0, 1.0);
        let delay = delay / 2 + ((delay / 2) as f64 * jitter) as u64;
        self.attempts = self.attempts.saturating_add(1);
        self.next_at_ms = now_ms + delay.max(1);
        debug_assert!(self.next_at_ms - now_ms <= self.max_ms);
    }

    /// The target answered: the next failure starts from the base delay.
    pub fn succeeded(&mut self) {
        self.attempts = 0;
        self.next_at_ms = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps_and_resets() {
        let mut b = Backoff::new(500, 30_000);
        let mut now = 0;
        let mut delays = vec![];
        for _ in 0..12 {
            assert!(b.due(now));
            b.attempted(now, 1.0);
            let next = (0..).map(|d| now + d).find(|t| b.due(*t)).unwrap();
            delays.push(next - now);
            now = next;
        }
        assert_eq!(&delays[..4], &[500, 1000, 2000, 4000]);
        assert!(delays.iter().all(|d| *d <= 30_000));
        assert_eq!(*delays.last().unwrap(), 30_000);
        b.succeeded();
        assert!(b.due(now));
        b.attempted(now, 1.0);
        assert!(b.due(now + 500));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let mut b = Backoff::new(1000, 1000);
        b.attempted(0, 0.0);
        assert!(!b.due(499) && b.due(500));
        assert_eq!(
            (b.wait_ms(100), b.wait_ms(500), b.wait_ms(900)),
            (400, 0, 0)
        );
    }
}
