//! The membership table and failure detector: a pure state machine.
//!
//! Each member is known by its latest signed record. Records of one peer are
//! ordered by `(incarnation, left, heartbeat)` (ties broken by signature bytes, so
//! merging is commutative, associative and idempotent). Liveness is judged
//! locally from when a member's record last *advanced*, on the caller's
//! monotonic clock (`now_ms`): silent for `suspect_after_ms` is suspect, for
//! `dead_after_ms` dead. A record relayed by a third party carries its age, so
//! a node that first hears of a dead member learns it is dead, and a stale
//! record never resurrects anyone: only a newer record counts as progress.
//! A restarted node comes back with a higher incarnation and supersedes its old
//! record at once. A record whose owner says `left` is final for that
//! incarnation.
//!
//! No I/O, no clock, no randomness: the swarm driver feeds it.

use std::collections::BTreeMap;

use crate::protocol::{AgedRecord, MAX_MEMBERS};
use crate::record::{SelfStatus, VerifiedRecord};

/// Failure-detector timings, in milliseconds of the local monotonic clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    pub suspect_after_ms: u64,
    pub dead_after_ms: u64,
    /// Dead or left members are forgotten after this long.
    pub forget_after_ms: u64,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            suspect_after_ms: 3_000,
            dead_after_ms: 6_000,
            forget_after_ms: 24 * 3600 * 1000,
        }
    }
}

pub use plexi_util::types::MemberStatus;

#[derive(Clone, Debug)]
struct Member {
    record: VerifiedRecord,
    /// Local monotonic time at which this member's record last advanced.
    last_progress_ms: u64,
}

/// What merging one record did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MergeOutcome {
    /// First record of this peer.
    New,
    /// A newer record replaced the one we had.
    Advanced,
    /// Nothing new.
    Stale,
    /// Someone holds a record of *ours* that is newer than what we run (for
    /// instance from before a data-dir restore): we must move past it.
    OwnRecordSuperseded { incarnation: u64 },
    /// The table is full; the record was dropped.
    Full,
}

/// A member as the rest of the node sees it.
#[derive(Clone, Debug)]
pub struct MemberView {
    pub record: VerifiedRecord,
    pub status: MemberStatus,
    /// How long since the record last advanced.
    pub silent_ms: u64,
}

#[derive(Clone, Debug)]
pub struct Membership {
    local_peer: String,
    timings: Timings,
    members: BTreeMap<String, Member>,
}

/// Whether `a` supersedes `b` (same peer).
fn supersedes(a: &VerifiedRecord, b: &VerifiedRecord) -> bool {
    match a.state.precedence().cmp(&b.state.precedence()) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        // Equal versions with different bodies only happen if the owner
        // equivocated; pick deterministically so merge order does not matter.
        std::cmp::Ordering::Equal => a.signed.signature > b.signed.signature,
    }
}

impl Membership {
    pub fn new(local_peer: impl Into<String>, timings: Timings) -> Self {
        assert!(timings.suspect_after_ms <= timings.dead_after_ms);
        Membership {
            local_peer: local_peer.into(),
            timings,
            members: BTreeMap::new(),
        }
    }

    pub fn timings(&self) -> Timings {
        self.timings
    }

    /// Installs the local node's own, freshly signed record.
    pub fn set_local(&mut self, record: VerifiedRecord, now_ms: u64) {
        assert_eq!(record.state.peer_id, self.local_peer);
        self.members.insert(
            self.local_peer.clone(),
            Member {
                record,
                last_progress_ms: now_ms,
            },
        );
    }

    /// Merges a verified record that arrived `age_ms` after its sender last
    /// saw it advance.
    pub fn merge(&mut self, record: VerifiedRecord, age_ms: u64, now_ms: u64) -> MergeOutcome {
        let peer = record.state.peer_id.clone();
        let seen_at = now_ms.saturating_sub(age_ms);
        if peer == self.local_peer {
            return match self.members.get(&peer) {
                Some(own) if supersedes(&record, &own.record) => {
                    MergeOutcome::OwnRecordSuperseded {
                        incarnation: record.state.incarnation,
                    }
                }
                _ => MergeOutcome::Stale,
            };
        }
        match self.members.get_mut(&peer) {
            None => {
                if self.members.len() >= MAX_MEMBERS {
                    return MergeOutcome::Full;
                }
                self.members.insert(
                    peer,
                    Member {
                        record,
                        last_progress_ms: seen_at,
                    },
                );
                MergeOutcome::New
            }
            Some(member) => {
                if !supersedes(&record, &member.record) {
                    return MergeOutcome::Stale;
                }
                let progressed = record.state.precedence() > member.record.state.precedence();
                member.record = record;
                if progressed {
                    member.last_progress_ms = member.last_progress_ms.max(seen_at);
                }
                MergeOutcome::Advanced
            }
        }
    }

    /// Whether a record with this (unverified) body and signature would
    /// change the table; lets the driver skip signature checks on the many
    /// stale copies that gossip and exchanges deliver.
    pub fn is_news(&self, state: &crate::record::NodeState, signature: &[u8]) -> bool {
        match self.members.get(&state.peer_id) {
            None => true,
            Some(m) => match state.precedence().cmp(&m.record.state.precedence()) {
                std::cmp::Ordering::Greater => true,
                std::cmp::Ordering::Less => false,
                std::cmp::Ordering::Equal => signature > m.record.signed.signature.as_slice(),
            },
        }
    }

    fn status_of(&self, peer: &str, member: &Member, now_ms: u64) -> MemberStatus {
        if member.record.state.status == SelfStatus::Left {
            return MemberStatus::Left;
        }
        if peer == self.local_peer {
            return MemberStatus::Alive;
        }
        let silent = now_ms.saturating_sub(member.last_progress_ms);
        if silent >= self.timings.dead_after_ms {
            MemberStatus::Dead
        } else if silent >= self.timings.suspect_after_ms {
            MemberStatus::Suspect
        } else {
            MemberStatus::Alive
        }
    }

    pub fn get(&self, peer: &str, now_ms: u64) -> Option<MemberView> {
        self.members.get(peer).map(|m| self.view(peer, m, now_ms))
    }

    fn view(&self, peer: &str, m: &Member, now_ms: u64) -> MemberView {
        MemberView {
            record: m.record.clone(),
            status: self.status_of(peer, m, now_ms),
            silent_ms: now_ms.saturating_sub(m.last_progress_ms),
        }
    }

    /// Every member, the local node included, in peer-id order.
    pub fn members(&self, now_ms: u64) -> Vec<MemberView> {
        self.members
            .iter()
            .map(|(peer, m)| self.view(peer, m, now_ms))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The table as sent in a push-pull exchange.
    pub fn exchange_view(&self, now_ms: u64) -> Vec<AgedRecord> {
        self.members
            .values()
            .map(|m| AgedRecord {
                record: m.record.signed.clone(),
                age_ms: now_ms.saturating_sub(m.last_progress_ms),
            })
            .collect()
    }

    /// Forgets dead and left members silent for longer than `forget_after_ms`.
    /// Returns how many were forgotten.
    pub fn prune(&mut self, now_ms: u64) -> usize {
        let forget = self.timings.forget_after_ms;
        let local = self.local_peer.clone();
        let before = self.members.len();
        self.members
            .retain(|peer, m| *peer == local || now_ms.saturating_sub(m.last_progress_ms) < forget);
        before - self.members.len()
    }

    /// Count of members per status (the local node included).
    pub fn counts(&self, now_ms: u64) -> [(MemberStatus, usize); 4] {
        let mut out = [
            (MemberStatus::Alive, 0),
            (MemberStatus::Suspect, 0),
            (MemberStatus::Dead, 0),
            (MemberStatus::Left, 0),
        ];
        for (peer, m) in &self.members {
            let s = self.status_of(peer, m, now_ms);
            // `out` lists every status, in order.
            out[s as usize].1 += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::state_for;
    use crate::record::SignedRecord;
    use libp2p::identity::Keypair;
    use proptest::prelude::*;

    fn timings() -> Timings {
        Timings {
            suspect_after_ms: 3_000,
            dead_after_ms: 6_000,
            forget_after_ms: 60_000,
        }
    }

    fn rec(key: &Keypair, inc: u64, hb: u64) -> VerifiedRecord {
        SignedRecord::sign(key, &state_for(key, inc, hb)).unwrap()
    }

    fn table(local: &Keypair) -> Membership {
        let mut m = Membership::new(local.public().to_peer_id().to_string(), timings());
        m.set_local(rec(local, 1, 0), 0);
        m
    }

    fn status(m: &Membership, key: &Keypair, now: u64) -> MemberStatus {
        m.get(&key.public().to_peer_id().to_string(), now)
            .unwrap()
            .status
    }

    #[test]
    fn silence_makes_suspect_then_dead() {
        let (me, other) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let mut m = table(&me);
        assert_eq!(m.merge(rec(&other, 1, 1), 0, 1_000), MergeOutcome::New);
        assert_eq!(status(&m, &other, 3_999), MemberStatus::Alive);
        assert_eq!(status(&m, &other, 4_000), MemberStatus::Suspect);
        assert_eq!(status(&m, &other, 7_000), MemberStatus::Dead);
        // A heartbeat brings it back.
        assert_eq!(m.merge(rec(&other, 1, 2), 0, 7_500), MergeOutcome::Advanced);
        assert_eq!(status(&m, &other, 7_500), MemberStatus::Alive);
    }

    #[test]
    fn stale_record_does_not_resurrect_a_dead_member() {
        let (me, other) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let mut m = table(&me);
        m.merge(rec(&other, 1, 5), 0, 0);
        assert_eq!(status(&m, &other, 10_000), MemberStatus::Dead);
        // Someone relays the same and an older record: nothing changes.
        assert_eq!(m.merge(rec(&other, 1, 5), 0, 10_000), MergeOutcome::Stale);
        assert_eq!(m.merge(rec(&other, 1, 4), 0, 10_000), MergeOutcome::Stale);
        assert_eq!(status(&m, &other, 10_000), MemberStatus::Dead);
    }

    #[test]
    fn relayed_old_record_arrives_dead_at_a_newcomer() {
        let (me, other) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let mut m = table(&me);
        // A relay last saw it advance 20 s ago.
        m.merge(rec(&other, 1, 5), 20_000, 100_000);
        assert_eq!(status(&m, &other, 100_000), MemberStatus::Dead);
    }

    #[test]
    fn restart_with_higher_incarnation_supersedes() {
        let (me, other) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let mut m = table(&me);
        m.merge(rec(&other, 3, 900), 0, 0);
        assert_eq!(status(&m, &other, 20_000), MemberStatus::Dead);
        assert_eq!(
            m.merge(rec(&other, 4, 0), 0, 20_000),
            MergeOutcome::Advanced
        );
        assert_eq!(status(&m, &other, 20_000), MemberStatus::Alive);
    }

    #[test]
    fn left_is_final_for_the_incarnation() {
        let (me, other) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let mut m = table(&me);
        m.merge(rec(&other, 1, 1), 0, 0);
        let mut st = state_for(&other, 1, 2);
        st.status = SelfStatus::Left;
        m.merge(SignedRecord::sign(&other, &st).unwrap(), 0, 100);
        assert_eq!(status(&m, &other, 100), MemberStatus::Left);
        // An older alive record relayed late changes nothing.
        m.merge(rec(&other, 1, 1), 0, 200);
        assert_eq!(status(&m, &other, 200), MemberStatus::Left);
    }

    #[test]
    fn a_later_heartbeat_of_the_same_incarnation_does_not_undo_left() {
        let (me, other) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let mut st = state_for(&other, 1, 2);
        st.status = SelfStatus::Left;
        let left = SignedRecord::sign(&other, &st).unwrap();
        let later = rec(&other, 1, 50);
        // In either order, the left record wins; a new incarnation rejoins.
        for order in [[left.clone(), later.clone()], [later, left]] {
            let mut m = table(&me);
            for r in order {
                m.merge(r, 0, 100);
            }
            assert_eq!(status(&m, &other, 100), MemberStatus::Left);
            assert_eq!(m.merge(rec(&other, 2, 0), 0, 200), MergeOutcome::Advanced);
            assert_eq!(status(&m, &other, 200), MemberStatus::Alive);
        }
    }

    #[test]
    fn newer_record_of_ourselves_is_reported() {
        let me = Keypair::generate_ed25519();
        let mut m = table(&me);
        assert_eq!(
            m.merge(rec(&me, 7, 0), 0, 0),
            MergeOutcome::OwnRecordSuperseded { incarnation: 7 }
        );
        assert_eq!(m.merge(rec(&me, 1, 0), 0, 0), MergeOutcome::Stale);
    }

    #[test]
    fn is_news_matches_merge() {
        let (me, other) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let mut m = table(&me);
        let r = rec(&other, 1, 5);
        assert!(m.is_news(&r.state, &r.signed.signature));
        m.merge(r.clone(), 0, 0);
        assert!(!m.is_news(&r.state, &r.signed.signature));
        let older = rec(&other, 1, 4);
        assert!(!m.is_news(&older.state, &older.signed.signature));
        let newer = rec(&other, 2, 0);
        assert!(m.is_news(&newer.state, &newer.signed.signature));
    }

    #[test]
    fn forgotten_after_grace() {
        let (me, other) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let mut m = table(&me);
        m.merge(rec(&other, 1, 1), 0, 0);
        assert_eq!(m.prune(59_999), 0);
        assert_eq!(m.prune(60_000), 1);
        assert_eq!(m.len(), 1);
    }

    fn final_records(m: &Membership) -> Vec<(String, (u64, u64), Vec<u8>)> {
        m.members(0)
            .into_iter()
            .map(|v| {
                (
                    v.record.state.peer_id.clone(),
                    v.record.state.version(),
                    v.record.signed.signature.clone(),
                )
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Merging the same records in any order gives the same table, and
        /// merging them again changes nothing.
        #[test]
        fn merge_is_commutative_and_idempotent(
            picks in prop::collection::vec((0usize..3, 0u64..3, 0u64..5), 1..20),
            seed in any::<u64>(),
        ) {
            let keys: Vec<Keypair> = (0..4).map(|_| Keypair::generate_ed25519()).collect();
            let me = &keys[3];
            let records: Vec<VerifiedRecord> =
                picks.iter().map(|(k, inc, hb)| rec(&keys[*k], *inc, *hb)).collect();

            let mut a = table(me);
            for r in &records { a.merge(r.clone(), 0, 0); }

            // A deterministic shuffle of the same records.
            let mut shuffled = records.clone();
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            let mut b = table(me);
            for r in &shuffled { b.merge(r.clone(), 0, 0); }
            prop_assert_eq!(final_records(&a), final_records(&b));

            let before = final_records(&a);
            for r in &records {
                prop_assert!(matches!(a.merge(r.clone(), 0, 0), MergeOutcome::Stale));
            }
            prop_assert_eq!(before, final_records(&a));
        }

        /// Merging two tables into each other (an exchange) makes them equal.
        #[test]
        fn exchange_converges(
            left in prop::collection::vec((0usize..3, 0u64..3, 0u64..5), 0..10),
            right in prop::collection::vec((0usize..3, 0u64..3, 0u64..5), 0..10),
        ) {
            let keys: Vec<Keypair> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
            let me = Keypair::generate_ed25519();
            let mut a = table(&me);
            let mut b = table(&me);
            for (k, inc, hb) in &left { a.merge(rec(&keys[*k], *inc, *hb), 0, 0); }
            for (k, inc, hb) in &right { b.merge(rec(&keys[*k], *inc, *hb), 0, 0); }
            for aged in b.exchange_view(0) {
                a.merge(aged.record.verify().unwrap(), aged.age_ms, 0);
            }
            for aged in a.exchange_view(0) {
                b.merge(aged.record.verify().unwrap(), aged.age_ms, 0);
            }
            prop_assert_eq!(final_records(&a), final_records(&b));
        }
    }
}
