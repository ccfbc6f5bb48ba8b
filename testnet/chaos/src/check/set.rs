//! Set-full checker, per consistency level. Each `add` adds one unique
//! value; `read_all` reads the whole set. After the final phase (events at
//! or after `final_from`), every acknowledged value must be in the final
//! read through every node (else *lost*); no read may show a value never
//! invoked (*never-written*) or one whose add definitely failed
//! (*failed-but-present*). During the run, a read missing a value
//! acknowledged before the read began is *stale* (noted, allowed for
//! eventual and weak). Adds with unknown outcome may be present or not.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::pair;
use crate::history::{Consistency, Event, EventType, OpFn, Value};

/// How many example values a result lists per category.
pub const MAX_EXAMPLES: usize = 20;

/// The verdict for one consistency level.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SetResult {
    pub attempted: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub unknown: u64,
    /// Unknown-outcome adds found in the final reads.
    pub unknown_present: u64,
    /// Acknowledged values missing from some final read.
    pub lost: u64,
    pub lost_examples: Vec<u64>,
    /// Values read that no add invoked.
    pub never_written: u64,
    pub never_written_examples: Vec<u64>,
    /// Values read whose add failed for certain.
    pub failed_but_present: u64,
    /// (read, value) pairs during the run where an acknowledged value was absent.
    pub stale: u64,
    /// Reads during the run that completed.
    pub reads: u64,
    /// Nodes with a completed final read.
    pub final_nodes: Vec<String>,
}

impl SetResult {
    /// Lost (for strong and eventual), never-written and failed-but-present
    /// values are violations; stale reads and weak losses are not.
    pub fn violations(&self, level: Consistency) -> u64 {
        let lost = if level == Consistency::Weak {
            0
        } else {
            self.lost
        };
        lost + self.never_written + self.failed_but_present
    }
}

fn push_example(list: &mut Vec<u64>, v: u64) {
    if list.len() < MAX_EXAMPLES {
        list.push(v);
    }
}

/// Checks the set of level `level`; reads at or after index `final_from`
/// are the final reads (one per node expected; the last per node counts).
pub fn check(events: &[Event], level: Consistency, final_from: u64) -> SetResult {
    let ops: Vec<_> = pair(events)
        .into_iter()
        .filter(|p| p.invoke.consistency == Some(level))
        .collect();
    let mut r = SetResult::default();
    let mut invoked: BTreeSet<u64> = BTreeSet::new();
    let mut failed: BTreeSet<u64> = BTreeSet::new();
    let mut unknown: BTreeSet<u64> = BTreeSet::new();
    // value -> index of its ok event
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    for p in ops.iter().filter(|p| p.invoke.f == OpFn::Add) {
        let Some(Value::Int(v)) = p.invoke.value else {
            continue;
        };
        r.attempted += 1;
        invoked.insert(v);
        match (p.outcome(), p.done) {
            (EventType::Ok, Some(d)) => {
                acked.insert(v, d.index);
            }
            (EventType::Fail, _) => {
                failed.insert(v);
            }
            _ => {
                unknown.insert(v);
            }
        }
    }
    r.acknowledged = acked.len() as u64;
    r.failed = failed.len() as u64;
    r.unknown = unknown.len() as u64;

    let mut finals: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut seen_bad: BTreeSet<u64> = BTreeSet::new();
    for p in ops.iter().filter(|p| p.invoke.f == OpFn::ReadAll) {
        let (EventType::Ok, Some(done)) = (p.outcome(), p.done) else {
            continue;
        };
        let Some(Value::List(values)) = &done.value else {
            continue;
        };
        let got: BTreeSet<u64> = values.iter().copied().collect();
        for &v in &got {
            if !seen_bad.insert(v) {
                continue;
            }
            if !invoked.contains(&v) {
                r.never_written += 1;
                push_example(&mut r.never_written_examples, v);
            } else if failed.contains(&v) {
                r.failed_but_present += 1;
            } else {
                seen_bad.remove(&v);
            }
        }
        if p.invoke.index >= final_from {
            let node = p.invoke.node.clone().unwrap_or_default();
            finals.insert(node, got);
        } else {
            r.reads += 1;
            r.stale += acked
                .iter()
                .filter(|(v, ok_at)| **ok_at < p.invoke.index && !got.contains(v))
                .count() as u64;
        }
    }
    for v in acked.keys() {
        if finals.is_empty() || finals.values().any(|got| !got.contains(v)) {
            r.lost += 1;
            push_example(&mut r.lost_examples, *v);
        }
    }
    r.unknown_present = unknown
        .iter()
        .filter(|v| finals.values().any(|got| got.contains(v)))
        .count() as u64;
    r.final_nodes = finals.into_keys().collect();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Op, Recorder};
    use proptest::prelude::*;

    const L: Consistency = Consistency::Eventual;

    fn add(rec: &Recorder, p: u64, v: u64, outcome: Option<EventType>) {
        let mut op = Op::new(p, EventType::Invoke, OpFn::Add);
        op.value = Some(Value::Int(v));
        op.consistency = Some(L);
        rec.record(op.clone());
        if let Some(kind) = outcome {
            op.kind = kind;
            rec.record(op);
        }
    }

    fn read_all(rec: &Recorder, p: u64, node: &str, values: Vec<u64>) -> u64 {
        let mut op = Op::new(p, EventType::Invoke, OpFn::ReadAll);
        op.consistency = Some(L);
        op.node = Some(node.into());
        let at = rec.record(op.clone()).index;
        op.kind = EventType::Ok;
        op.value = Some(Value::List(values));
        rec.record(op);
        at
    }

    #[test]
    fn a_missing_acknowledged_value_is_lost_and_a_stranger_is_never_written() {
        let rec = Recorder::in_memory();
        add(&rec, 1, 10, Some(EventType::Ok));
        add(&rec, 1, 11, Some(EventType::Ok));
        add(&rec, 2, 12, Some(EventType::Info));
        add(&rec, 2, 13, Some(EventType::Fail));
        read_all(&rec, 3, "n1", vec![10]); // stale: 11 acked before
        let fin = read_all(&rec, 3, "n1", vec![10, 11, 12]);
        read_all(&rec, 4, "n2", vec![10, 99]);
        let r = check(&rec.events(), L, fin);
        assert_eq!(r.attempted, 4);
        assert_eq!(r.acknowledged, 2);
        assert_eq!(r.unknown, 1);
        assert_eq!(r.failed, 1);
        assert_eq!(r.stale, 1);
        assert_eq!(r.lost, 1);
        assert_eq!(r.lost_examples, vec![11]);
        assert_eq!(r.never_written_examples, vec![99]);
        assert_eq!(r.unknown_present, 1);
        assert_eq!(r.final_nodes, vec!["n1".to_string(), "n2".to_string()]);
        assert_eq!(r.violations(L), 2);
        assert_eq!(r.violations(Consistency::Weak), 1);
    }

    #[test]
    fn a_value_whose_add_failed_for_certain_must_not_appear() {
        let rec = Recorder::in_memory();
        add(&rec, 1, 5, Some(EventType::Fail));
        let fin = read_all(&rec, 2, "n1", vec![5]);
        let r = check(&rec.events(), L, fin);
        assert_eq!(r.failed_but_present, 1);
        assert_eq!(r.lost, 0);
    }

    #[test]
    fn no_final_read_means_every_acknowledged_value_is_lost() {
        let rec = Recorder::in_memory();
        add(&rec, 1, 5, Some(EventType::Ok));
        let r = check(&rec.events(), L, u64::MAX);
        assert_eq!(r.lost, 1);
    }

    #[test]
    fn other_levels_are_not_mixed_in() {
        let rec = Recorder::in_memory();
        add(&rec, 1, 5, Some(EventType::Ok));
        let fin = read_all(&rec, 2, "n1", vec![]);
        let r = check(&rec.events(), Consistency::Strong, fin);
        assert_eq!(r, SetResult::default());
    }

    proptest! {
        /// Final reads holding every acknowledged value and any subset of
        /// the unknown ones: nothing lost, nothing never-written; dropping
        /// one acknowledged value from one node's read is exactly one loss.
        #[test]
        fn complete_final_reads_pass_and_one_dropped_value_is_one_loss(
            outcomes in proptest::collection::vec(0u8..4, 1..60),
            keep_unknown in proptest::collection::vec(any::<bool>(), 60),
            drop_pick in any::<proptest::sample::Index>(),
        ) {
            let rec = Recorder::in_memory();
            let mut final_set = Vec::new();
            let mut acked = Vec::new();
            for (i, o) in outcomes.iter().enumerate() {
                let v = 1000 + i as u64;
                let kind = match o {
                    0 => Some(EventType::Ok),
                    1 => Some(EventType::Fail),
                    2 => Some(EventType::Info),
                    _ => None, // never completed
                };
                add(&rec, i as u64 % 4, v, kind);
                if kind == Some(EventType::Ok) {
                    final_set.push(v);
                    acked.push(v);
                } else if kind != Some(EventType::Fail) && keep_unknown[i] {
                    final_set.push(v);
                }
            }
            let fin = rec.events().len() as u64;
            read_all(&rec, 10, "n1", final_set.clone());
            read_all(&rec, 11, "n2", final_set.clone());
            let r = check(&rec.events(), L, fin);
            prop_assert_eq!(r.lost, 0);
            prop_assert_eq!(r.never_written, 0);
            prop_assert_eq!(r.violations(L), 0);
            prop_assert_eq!(r.acknowledged, acked.len() as u64);
            if !acked.is_empty() {
                let gone = acked[drop_pick.index(acked.len())];
                let rec2 = Recorder::in_memory();
                for e in rec.events().iter().filter(|e| e.index < fin) {
                    let mut op = Op::new(e.process, e.kind, e.f);
                    op.value = e.value.clone();
                    op.consistency = e.consistency;
                    rec2.record(op);
                }
                read_all(&rec2, 10, "n1", final_set.clone());
                let without: Vec<u64> = final_set.iter().copied().filter(|v| *v != gone).collect();
                read_all(&rec2, 11, "n2", without);
                let r2 = check(&rec2.events(), L, fin);
                prop_assert_eq!(r2.lost, 1);
                prop_assert_eq!(r2.lost_examples, vec![gone]);
            }
        }
    }
}
