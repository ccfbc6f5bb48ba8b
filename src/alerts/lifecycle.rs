//! Pure: the alert table over time. [`Lifecycle::apply`] takes the desired
//! set of one moment (from `rules::derive`) and turns it into transitions:
//! an id newly desired is raised, an active id no longer desired is
//! resolved and moves to the bounded history of recent alerts
//! ([`MAX_RECENT`], newest resolved first).

use std::collections::{BTreeMap, VecDeque};

use plexi_util::types::AlertKind;

use super::rules::Desired;

/// Resolved alerts kept for `recent`.
pub const MAX_RECENT: usize = 200;

/// One alert as the table holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertRecord {
    pub alert_id: String,
    pub kind: AlertKind,
    pub subject: String,
    pub message: String,
    pub raised_at_ms: u64,
    pub resolved_at_ms: Option<u64>,
}

/// What one [`Lifecycle::apply`] changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    Raised(AlertRecord),
    Resolved(AlertRecord),
}

#[derive(Debug, Default)]
pub struct Lifecycle {
    active: BTreeMap<String, AlertRecord>,
    /// Newest resolved first.
    recent: VecDeque<AlertRecord>,
}

impl Lifecycle {
    /// Makes the active set `desired` at `now_ms`. A raised alert takes the
    /// fact's own time when it has one, else `now_ms`; an active one keeps
    /// its raise time and takes the latest message.
    pub fn apply(&mut self, desired: &[Desired], now_ms: u64) -> Vec<Transition> {
        let mut out = Vec::new();
        let wanted: BTreeMap<&str, &Desired> =
            desired.iter().map(|d| (d.alert_id.as_str(), d)).collect();
        let gone: Vec<String> = self
            .active
            .keys()
            .filter(|id| !wanted.contains_key(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            let mut rec = self.active.remove(&id).expect("listed above");
            rec.resolved_at_ms = Some(now_ms.max(rec.raised_at_ms));
            self.recent.push_front(rec.clone());
            out.push(Transition::Resolved(rec));
        }
        self.recent.truncate(MAX_RECENT);
        for (id, d) in wanted {
            match self.active.get_mut(id) {
                Some(rec) => rec.message.clone_from(&d.message),
                None => {
                    let rec = AlertRecord {
                        alert_id: d.alert_id.clone(),
                        kind: d.kind,
                        subject: d.subject.clone(),
                        message: d.message.clone(),
                        raised_at_ms: d.raised_at_ms.unwrap_or(now_ms),
                        resolved_at_ms: None,
                    };
                    self.active.insert(d.alert_id.clone(), rec.clone());
                    out.push(Transition::Raised(rec));
                }
            }
        }
        out
    }

    /// Active alerts, newest raised first (ties by id).
    pub fn active(&self) -> Vec<AlertRecord> {
        let mut v: Vec<AlertRecord> = self.active.values().cloned().collect();
        v.sort_by(|a, b| {
            b.raised_at_ms
                .cmp(&a.raised_at_ms)
                .then_with(|| a.alert_id.cmp(&b.alert_id))
        });
        v
    }

    /// Resolved alerts, newest resolved first.
    pub fn recent(&self) -> impl Iterator<Item = &AlertRecord> {
        self.recent.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(id: &str, at: Option<u64>) -> Desired {
        Desired {
            alert_id: id.into(),
            kind: AlertKind::MemberDead,
            subject: "s2".into(),
            message: format!("m{id}"),
            raised_at_ms: at,
        }
    }

    #[test]
    fn raised_while_desired_then_resolved_into_recent() {
        let mut l = Lifecycle::default();
        let t = l.apply(&[d("a", None), d("b", Some(5))], 100);
        assert_eq!(t.len(), 2);
        assert!(t.iter().all(|t| matches!(t, Transition::Raised(_))));
        let active = l.active();
        assert_eq!(active[0].alert_id, "a", "newest raised first");
        assert_eq!(active[0].raised_at_ms, 100);
        assert_eq!(active[1].raised_at_ms, 5, "the fact's own time");
        // Still desired: nothing changes.
        assert!(l.apply(&[d("a", None), d("b", Some(5))], 200).is_empty());
        let t = l.apply(&[d("b", Some(5))], 300);
        let Transition::Resolved(r) = &t[0] else {
            panic!("{t:?}")
        };
        assert_eq!((r.alert_id.as_str(), r.resolved_at_ms), ("a", Some(300)));
        assert_eq!(l.recent().count(), 1);
        assert_eq!(l.active().len(), 1);
    }

    proptest! {
        /// Over any sequence of desired sets: the active set is exactly the
        /// last desired one, each change is reported once, recent stays
        /// bounded and newest first, and nothing resolves before it rose.
        #[test]
        fn the_table_follows_the_desired_sets(
            steps in proptest::collection::vec(proptest::collection::btree_set(0u8..40, 0..20), 1..60),
        ) {
            let mut l = Lifecycle::default();
            let mut prev = std::collections::BTreeSet::new();
            for (i, ids) in steps.iter().enumerate() {
                let now = 1000 + i as u64 * 10;
                let want: Vec<Desired> = ids.iter().map(|n| d(&n.to_string(), (n % 3 == 0).then_some(now + 5))).collect();
                let t = l.apply(&want, now);
                let raised = t.iter().filter(|t| matches!(t, Transition::Raised(_))).count();
                let resolved = t.iter().filter(|t| matches!(t, Transition::Resolved(_))).count();
                prop_assert_eq!(raised, ids.difference(&prev).count());
                prop_assert_eq!(resolved, prev.difference(ids).count());
                let active: std::collections::BTreeSet<u8> =
                    l.active().iter().map(|r| r.alert_id.parse().unwrap()).collect();
                prop_assert_eq!(&active, ids);
                let recent: Vec<&AlertRecord> = l.recent().collect();
                prop_assert!(recent.len() <= MAX_RECENT);
                for w in recent.windows(2) {
                    prop_assert!(w[0].resolved_at_ms >= w[1].resolved_at_ms);
                }
                for r in recent {
                    prop_assert!(r.resolved_at_ms.unwrap() >= r.raised_at_ms);
                }
                prev = ids.clone();
            }
        }
    }
}
