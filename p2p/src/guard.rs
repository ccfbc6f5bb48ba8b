//! Who may call us, and how much: the pure rules the swarm applies to every
//! inbound peer call. No I/O, no clock (the caller passes `now_ms`).
//!
//! - [`may_call`]: only members in good standing (alive or suspect in our
//!   table) get their calls served; a member that left, is dead or
//!   forgotten, or was never seen must (re-)join first, by sending a valid
//!   signed record of itself in a membership exchange or push
//!   ([`Admission`]).
//! - [`RateLimiter`]: a token bucket per peer bounds the calls we serve.
//! - [`Strikes`]: misbehaviour (malformed or unauthorised calls, bad
//!   records, calls over the rate limit) counted in a sliding window; past
//!   [`STRIKE_LIMIT`] the peer is disconnected and banned for
//!   [`BAN_MS`].

use std::collections::{HashMap, VecDeque};

use crate::membership::MemberStatus;

/// Sustained calls per second one peer may make before it is refused.
/// Generous: a coordinator moving 1 MiB chunks or a busy repair loop stays
/// far below it; only a flood reaches it.
pub const RATE_PER_SECOND: u32 = 2_000;
/// Burst one peer may make at once above [`RATE_PER_SECOND`].
pub const RATE_BURST: u32 = 4_000;
/// Misbehaviour a peer may show within [`STRIKE_WINDOW_MS`] before it is
/// disconnected and banned.
pub const STRIKE_LIMIT: usize = 64;
/// The sliding window in which strikes count.
pub const STRIKE_WINDOW_MS: u64 = 10_000;
/// How long a banned peer stays disconnected (its dials are refused).
pub const BAN_MS: u64 = 60_000;
/// Bound on the peers whose buckets, strikes and bans are tracked; past it
/// the least recently seen are dropped (a peer id costs nothing to make, so
/// this table must not grow with them).
pub const MAX_TRACKED_PEERS: usize = 4_096;
/// How often one peer's refusals are logged and reported (audit): at most
/// once per this interval, with the count since the last report.
pub const REFUSAL_REPORT_MS: u64 = 10_000;

/// Whether a peer with this status in our table may have its calls served.
pub fn may_call(status: Option<MemberStatus>) -> bool {
    matches!(status, Some(MemberStatus::Alive | MemberStatus::Suspect))
}

/// What to do with a membership exchange or push from a caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// A member in good standing: merge everything it sends.
    Member,
    /// Not in good standing, but it sends a valid record of itself: merge
    /// that record first, then admit it if the record makes it a member in
    /// good standing (a `left` record does not).
    Joining,
    /// Neither: drop what it sends and refuse it.
    Refused,
}

/// How an exchange or push from a caller with `status` is admitted, given
/// whether it carries a valid signed record of the caller itself.
pub fn admission(status: Option<MemberStatus>, carries_own_record: bool) -> Admission {
    if may_call(status) {
        Admission::Member
    } else if carries_own_record {
        Admission::Joining
    } else {
        Admission::Refused
    }
}

/// Why a call was refused or counted against a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Offence {
    /// Not a member in good standing.
    NotMember,
    /// Over its request rate.
    RateLimited,
    /// A request that did not decode, or a service body its service could
    /// not decode.
    Malformed,
    /// A call for a service we do not serve.
    UnknownService,
    /// A membership record with a bad signature, or otherwise invalid.
    BadRecord,
}

impl Offence {
    pub fn as_str(self) -> &'static str {
        match self {
            Offence::NotMember => "not_member",
            Offence::RateLimited => "rate_limited",
            Offence::Malformed => "malformed",
            Offence::UnknownService => "unknown_service",
            Offence::BadRecord => "bad_record",
        }
    }
}

/// A token bucket (pure: refilled from the `now_ms` the caller passes).
#[derive(Clone, Debug, PartialEq)]
pub struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    fn full(now_ms: u64, burst: u32) -> Self {
        Bucket {
            tokens: burst as f64,
            at_ms: now_ms,
        }
    }

    /// Adds what `rate_per_second` earned since the last call, up to `burst`.
    fn refill(&mut self, now_ms: u64, rate_per_second: u32, burst: u32) {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate_per_second as f64).min(burst as f64);
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// Takes one token if there is one.
    fn take(&mut self, now_ms: u64, rate_per_second: u32, burst: u32) -> bool {
        self.refill(now_ms, rate_per_second, burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One token bucket per peer, bounded by [`MAX_TRACKED_PEERS`].
#[derive(Debug)]
pub struct RateLimiter<P> {
    rate_per_second: u32,
    burst: u32,
    buckets: HashMap<P, Bucket>,
}

impl<P: std::hash::Hash + Eq + Clone> RateLimiter<P> {
    pub fn new(rate_per_second: u32, burst: u32) -> Self {
        assert!(rate_per_second > 0 && burst > 0);
        RateLimiter {
            rate_per_second,
            burst,
            buckets: HashMap::new(),
        }
    }

    /// Whether `peer` may make one more call now (and takes it).
    pub fn allow(&mut self, peer: &P, now_ms: u64) -> bool {
        let (rate, burst) = (self.rate_per_second, self.burst);
        if !self.buckets.contains_key(peer) && self.buckets.len() >= MAX_TRACKED_PEERS {
            // A bucket that refilled to the brim forgets nothing when dropped.
            self.buckets.retain(|_, b| {
                b.refill(now_ms, rate, burst);
                b.tokens < burst as f64
            });
            if self.buckets.len() >= MAX_TRACKED_PEERS {
                if let Some(k) = self.buckets.keys().next().cloned() {
                    self.buckets.remove(&k);
                }
            }
        }
        self.buckets
            .entry(peer.clone())
            .or_insert_with(|| Bucket::full(now_ms, burst))
            .take(now_ms, rate, burst)
    }
}

/// What counting one strike decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Below the limit: keep serving (or refusing) as usual.
    Tolerated { strikes: usize },
    /// The limit is reached: disconnect and ban the peer until `until_ms`.
    Ban { until_ms: u64 },
}

/// Strikes per peer in a sliding window, and the bans they led to.
#[derive(Debug)]
pub struct Strikes<P> {
    limit: usize,
    window_ms: u64,
    ban_ms: u64,
    strikes: HashMap<P, VecDeque<u64>>,
    bans: HashMap<P, u64>,
}

impl<P: std::hash::Hash + Eq + Clone> Strikes<P> {
    pub fn new(limit: usize, window_ms: u64, ban_ms: u64) -> Self {
        assert!(limit > 0 && window_ms > 0);
        Strikes {
            limit,
            window_ms,
            ban_ms,
            strikes: HashMap::new(),
            bans: HashMap::new(),
        }
    }

    /// Counts one strike against `peer` at `now_ms`.
    pub fn strike(&mut self, peer: &P, now_ms: u64) -> Verdict {
        if !self.strikes.contains_key(peer) && self.strikes.len() >= MAX_TRACKED_PEERS {
            let window = self.window_ms;
            self.strikes
                .retain(|_, q| q.back().is_some_and(|t| now_ms.saturating_sub(*t) < window));
            if self.strikes.len() >= MAX_TRACKED_PEERS {
                if let Some(k) = self.strikes.keys().next().cloned() {
                    self.strikes.remove(&k);
                }
            }
        }
        let q = self.strikes.entry(peer.clone()).or_default();
        while q
            .front()
            .is_some_and(|t| now_ms.saturating_sub(*t) >= self.window_ms)
        {
            q.pop_front();
        }
        q.push_back(now_ms);
        if q.len() >= self.limit {
            self.strikes.remove(peer);
            let until_ms = now_ms.saturating_add(self.ban_ms);
            self.prune_bans(now_ms);
            if self.bans.len() < MAX_TRACKED_PEERS {
                self.bans.insert(peer.clone(), until_ms);
            }
            Verdict::Ban { until_ms }
        } else {
            Verdict::Tolerated { strikes: q.len() }
        }
    }

    /// Whether `peer` is banned at `now_ms`.
    pub fn banned(&self, peer: &P, now_ms: u64) -> bool {
        self.bans.get(peer).is_some_and(|until| now_ms < *until)
    }

    /// Drops bans that ended; returns the peers whose ban ended.
    pub fn prune_bans(&mut self, now_ms: u64) -> Vec<P> {
        let ended: Vec<P> = self
            .bans
            .iter()
            .filter(|(_, until)| now_ms >= **until)
            .map(|(p, _)| p.clone())
            .collect();
        for p in &ended {
            self.bans.remove(p);
        }
        ended
    }
}

/// Rate-limits reports (log line, audit entry) of refusals per peer: the
/// first refusal of a peer is reported at once, later ones at most every
/// [`REFUSAL_REPORT_MS`] with how many were refused since.
#[derive(Debug, Default)]
pub struct RefusalReports<P> {
    last: HashMap<P, (u64, u64)>,
}

impl<P: std::hash::Hash + Eq + Clone> RefusalReports<P> {
    pub fn new() -> Self {
        RefusalReports {
            last: HashMap::new(),
        }
    }

    /// Counts one refusal; `Some(n)` when it is to be reported now, `n`
    /// refusals (this one included) since the last report.
    pub fn refused(&mut self, peer: &P, now_ms: u64) -> Option<u64> {
        if !self.last.contains_key(peer) && self.last.len() >= MAX_TRACKED_PEERS {
            self.last
                .retain(|_, (at, _)| now_ms.saturating_sub(*at) < REFUSAL_REPORT_MS);
            if self.last.len() >= MAX_TRACKED_PEERS {
                return None;
            }
        }
        match self.last.get_mut(peer) {
            None => {
                self.last.insert(peer.clone(), (now_ms, 0));
                Some(1)
            }
            Some((at, pending)) => {
                *pending += 1;
                if now_ms.saturating_sub(*at) >= REFUSAL_REPORT_MS {
                    let n = *pending;
                    *at = now_ms;
                    *pending = 0;
                    Some(n)
                } else {
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_alive_and_suspect_members_may_call() {
        assert!(may_call(Some(MemberStatus::Alive)));
        assert!(may_call(Some(MemberStatus::Suspect)));
        assert!(!may_call(Some(MemberStatus::Dead)));
        assert!(!may_call(Some(MemberStatus::Left)));
        assert!(!may_call(None), "unknown or forgotten");
    }

    #[test]
    fn exchange_admits_members_and_joiners_with_their_own_record() {
        for status in [Some(MemberStatus::Alive), Some(MemberStatus::Suspect)] {
            assert_eq!(admission(status, false), Admission::Member);
            assert_eq!(admission(status, true), Admission::Member);
        }
        for status in [None, Some(MemberStatus::Dead), Some(MemberStatus::Left)] {
            assert_eq!(admission(status, true), Admission::Joining);
            assert_eq!(admission(status, false), Admission::Refused);
        }
    }

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let mut rl = RateLimiter::new(10, 20);
        let p = 1u32;
        let allowed = (0..100).filter(|_| rl.allow(&p, 0)).count();
        assert_eq!(allowed, 20, "the burst");
        assert!(!rl.allow(&p, 0));
        // 1 s later: 10 more.
        let allowed = (0..100).filter(|_| rl.allow(&p, 1000)).count();
        assert_eq!(allowed, 10);
        // Another peer has its own bucket.
        assert!(rl.allow(&2, 1000));
        // A clock going backwards adds nothing.
        assert!(!rl.allow(&p, 500));
    }

    #[test]
    fn rate_limiter_table_is_bounded() {
        let mut rl = RateLimiter::new(1, 1);
        for p in 0..(MAX_TRACKED_PEERS as u32 * 2) {
            assert!(rl.allow(&p, 0));
        }
        assert!(rl.buckets.len() <= MAX_TRACKED_PEERS);
    }

    #[test]
    fn strikes_in_the_window_ban_and_bans_end() {
        let mut s = Strikes::new(3, 1000, 5000);
        let p = 7u32;
        assert_eq!(s.strike(&p, 0), Verdict::Tolerated { strikes: 1 });
        assert_eq!(s.strike(&p, 100), Verdict::Tolerated { strikes: 2 });
        // The first two fall out of the window.
        assert_eq!(s.strike(&p, 1500), Verdict::Tolerated { strikes: 1 });
        assert_eq!(s.strike(&p, 1600), Verdict::Tolerated { strikes: 2 });
        assert_eq!(s.strike(&p, 1700), Verdict::Ban { until_ms: 6700 });
        assert!(s.banned(&p, 1700));
        assert!(s.banned(&p, 6699));
        assert!(!s.banned(&p, 6700));
        assert!(!s.banned(&8, 1700));
        assert_eq!(s.prune_bans(6700), vec![p]);
        // Strikes start over after a ban.
        assert_eq!(s.strike(&p, 6800), Verdict::Tolerated { strikes: 1 });
    }

    #[test]
    fn refusals_are_reported_first_then_at_most_every_interval() {
        let mut r = RefusalReports::new();
        assert_eq!(r.refused(&1u32, 0), Some(1));
        assert_eq!(r.refused(&1, 10), None);
        assert_eq!(r.refused(&1, 20), None);
        assert_eq!(r.refused(&1, REFUSAL_REPORT_MS), Some(3));
        assert_eq!(r.refused(&2, 10), Some(1));
    }
}
