//! Update leases: how many nodes may be out of service at once, without a
//! coordinator. Pure state machines; the clock is injected.
//!
//! Every member is a *granter* with a [`LeaseTable`]: per slot it grants one
//! holder at a time, for an epoch, until an expiry measured on the granter's
//! own monotonic clock. A node *holds* a slot only while a strict majority of
//! the members granted it (tracked by [`Acquisition`]); two majorities
//! intersect, and a granter never grants a live slot to a second holder, so
//! at most one node holds a slot at any time. The holder counts its lease
//! from *before* it sent the requests, minus a drift margin, so it stops
//! believing it holds the slot before any granter lets it go.

use std::collections::{BTreeMap, BTreeSet};

/// A lease slot: an operation and one of its `max_concurrent` slots.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotId {
    pub operation: String,
    pub index: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub holder: String,
    pub epoch: u64,
    /// Granter's monotonic clock, ms.
    pub expires_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Granted {
        expires_at_ms: u64,
    },
    Denied {
        holder: String,
        epoch: u64,
        remaining_ms: u64,
    },
}

/// Upper bound on a lease's time to live.
pub const MAX_TTL_MS: u64 = 10 * 60 * 1000;
/// Upper bound on slots one granter tracks.
pub const MAX_SLOTS: usize = 4096;

/// One granter's grants.
#[derive(Clone, Debug, Default)]
pub struct LeaseTable {
    grants: BTreeMap<SlotId, Grant>,
}

impl LeaseTable {
    /// Grants `slot` to `holder` for `ttl_ms` unless another holder has it
    /// live. The same holder renews. An expired grant can be taken by anyone
    /// at an epoch above the expired one's.
    pub fn acquire(
        &mut self,
        slot: &SlotId,
        holder: &str,
        epoch: u64,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Decision {
        let ttl_ms = ttl_ms.min(MAX_TTL_MS);
        self.expire(now_ms);
        if let Some(g) = self.grants.get(slot) {
            let live = g.expires_at_ms > now_ms;
            let same = g.holder == holder && g.epoch == epoch;
            if live && !same {
                return Decision::Denied {
                    holder: g.holder.clone(),
                    epoch: g.epoch,
                    remaining_ms: g.expires_at_ms - now_ms,
                };
            }
        }
        if !self.grants.contains_key(slot) && self.grants.len() >= MAX_SLOTS {
            return Decision::Denied {
                holder: String::new(),
                epoch: 0,
                remaining_ms: 0,
            };
        }
        let expires_at_ms = now_ms + ttl_ms;
        self.grants.insert(
            slot.clone(),
            Grant {
                holder: holder.to_string(),
                epoch,
                expires_at_ms,
            },
        );
        Decision::Granted { expires_at_ms }
    }

    /// Releases `slot` if `holder` at `epoch` holds it.
    pub fn release(&mut self, slot: &SlotId, holder: &str, epoch: u64) -> bool {
        match self.grants.get(slot) {
            Some(g) if g.holder == holder && g.epoch == epoch => {
                self.grants.remove(slot);
                true
            }
            _ => false,
        }
    }

    /// Drops expired grants; returns them (for the audit log).
    pub fn expire(&mut self, now_ms: u64) -> Vec<(SlotId, Grant)> {
        let expired: Vec<SlotId> = self
            .grants
            .iter()
            .filter(|(_, g)| g.expires_at_ms <= now_ms)
            .map(|(s, _)| s.clone())
            .collect();
        expired
            .into_iter()
            .filter_map(|s| self.grants.remove(&s).map(|g| (s, g)))
            .collect()
    }

    pub fn holder(&self, slot: &SlotId, now_ms: u64) -> Option<&Grant> {
        self.grants.get(slot).filter(|g| g.expires_at_ms > now_ms)
    }
}

/// A strict majority of `members`.
pub fn majority(members: usize) -> usize {
    members / 2 + 1
}

/// The holder's side of one acquisition or renewal round.
#[derive(Clone, Debug)]
pub struct Acquisition {
    members: BTreeSet<String>,
    granted: BTreeSet<String>,
    denied: BTreeSet<String>,
    /// Holder's monotonic clock when the requests went out.
    sent_at_ms: u64,
    ttl_ms: u64,
    drift_margin_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still waiting for answers.
    Pending,
    /// A strict majority granted; the lease is ours until `valid_until_ms`
    /// (holder's clock).
    Held { valid_until_ms: u64 },
    /// A majority can no longer be reached: release what was granted.
    Lost,
}

impl Acquisition {
    pub fn new(
        members: impl IntoIterator<Item = String>,
        sent_at_ms: u64,
        ttl_ms: u64,
        drift_margin_ms: u64,
    ) -> Self {
        Acquisition {
            members: members.into_iter().collect(),
            granted: BTreeSet::new(),
            denied: BTreeSet::new(),
            sent_at_ms,
            ttl_ms: ttl_ms.min(MAX_TTL_MS),
            drift_margin_ms,
        }
    }

    /// Records one granter's answer; answers from non-members are ignored.
    pub fn answer(&mut self, granter: &str, granted: bool) {
        if !self.members.contains(granter) {
            return;
        }
        if granted {
            self.denied.remove(granter);
            self.granted.insert(granter.to_string());
        } else {
            self.granted.remove(granter);
            self.denied.insert(granter.to_string());
        }
    }

    pub fn granted_by(&self) -> impl Iterator<Item = &String> {
        self.granted.iter()
    }

    pub fn outcome(&self) -> Outcome {
        let need = majority(self.members.len());
        if self.granted.len() >= need {
            return Outcome::Held {
                valid_until_ms: (self.sent_at_ms + self.ttl_ms)
                    .saturating_sub(self.drift_margin_ms),
            };
        }
        if self.members.len() - self.denied.len() < need {
            return Outcome::Lost;
        }
        Outcome::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn slot() -> SlotId {
        SlotId {
            operation: "op".into(),
            index: 0,
        }
    }

    #[test]
    fn one_holder_per_slot_until_expiry() {
        let mut t = LeaseTable::default();
        assert!(matches!(
            t.acquire(&slot(), "a", 1, 1000, 0),
            Decision::Granted { .. }
        ));
        assert!(matches!(
            t.acquire(&slot(), "b", 1, 1000, 500),
            Decision::Denied { .. }
        ));
        // The holder renews.
        assert_eq!(
            t.acquire(&slot(), "a", 1, 1000, 600),
            Decision::Granted {
                expires_at_ms: 1600
            }
        );
        // After expiry someone else may take it.
        assert!(matches!(
            t.acquire(&slot(), "b", 2, 1000, 1600),
            Decision::Granted { .. }
        ));
        assert!(!t.release(&slot(), "a", 1));
        assert!(t.release(&slot(), "b", 2));
        assert!(t.holder(&slot(), 1700).is_none());
    }

    #[test]
    fn expiry_is_reported() {
        let mut t = LeaseTable::default();
        t.acquire(&slot(), "a", 1, 100, 0);
        assert!(t.expire(99).is_empty());
        assert_eq!(t.expire(100).len(), 1);
    }

    #[test]
    fn majority_rules() {
        assert_eq!(majority(1), 1);
        assert_eq!(majority(2), 2);
        assert_eq!(majority(3), 2);
        assert_eq!(majority(4), 3);
        let mut a = Acquisition::new(["x", "y", "z"].map(String::from), 0, 1000, 50);
        a.answer("x", true);
        assert_eq!(a.outcome(), Outcome::Pending);
        a.answer("stranger", true);
        assert_eq!(a.outcome(), Outcome::Pending);
        a.answer("y", true);
        assert_eq!(
            a.outcome(),
            Outcome::Held {
                valid_until_ms: 950
            }
        );
        let mut b = Acquisition::new(["x", "y", "z"].map(String::from), 0, 1000, 50);
        b.answer("x", false);
        b.answer("y", false);
        assert_eq!(b.outcome(), Outcome::Lost);
    }

    proptest! {
        /// Whatever order requests from several holders reach the granters
        /// (all at one instant, no expiry), at most one holder gathers a
        /// majority for a slot.
        #[test]
        fn at_most_one_majority_holder(
            members in 1usize..7,
            requests in prop::collection::vec((0usize..3, 0usize..7), 0..60),
        ) {
            let names: Vec<String> = (0..members).map(|i| format!("g{i}")).collect();
            let mut tables: Vec<LeaseTable> = vec![LeaseTable::default(); members];
            let holders = ["h0", "h1", "h2"];
            let mut acq: Vec<Acquisition> = holders
                .iter()
                .map(|_| Acquisition::new(names.clone(), 0, 10_000, 100))
                .collect();
            for (h, g) in requests {
                let g = g % members;
                let d = tables[g].acquire(&slot(), holders[h], 1, 10_000, 0);
                acq[h].answer(&names[g], matches!(d, Decision::Granted { .. }));
            }
            let held = acq.iter().filter(|a| matches!(a.outcome(), Outcome::Held { .. })).count();
            prop_assert!(held <= 1);
        }
    }
}
