//! The summary of a run, derived from its history alone (pure): operations
//! and outcomes, the set checker per level, the linearizability checker
//! per key, and per nemesis kind the faults injected and the outcomes of
//! the operations invoked while such a fault was in place.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::check::{linear, minority, pair, set, updates};
use crate::history::{Consistency, Event, EventType, OpFn, Value};
use crate::nemesis::NemesisKind;

/// The `value` of the nemesis event after which the final reads start.
pub const FINAL_READS: &str = "final_reads";

/// Outcome counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Outcomes {
    pub invoked: u64,
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
}

impl Outcomes {
    fn count(&mut self, kind: EventType) {
        self.invoked += 1;
        match kind {
            EventType::Ok => self.ok += 1,
            EventType::Fail => self.fail += 1,
            _ => self.info += 1,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NemesisFigures {
    pub injected: u64,
    /// Operations invoked while a fault of this kind was in place.
    pub operations_during: Outcomes,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub seed: u64,
    pub profile: String,
    pub nodes: usize,
    pub operations: Outcomes,
    pub set: BTreeMap<Consistency, set::SetResult>,
    pub registers: Vec<linear::KeyResult>,
    pub linearizability_violations: u64,
    pub linearizability_unknown: u64,
    pub nemesis: BTreeMap<NemesisKind, NemesisFigures>,
    /// The update run under the faults, if there was one.
    pub update: updates::UpdateResult,
    /// Strong writes through the minority side of a partition.
    pub minority: minority::MinorityResult,
    /// Whether the cluster reported itself repaired before the final reads.
    pub repair_converged: bool,
    pub violations: u64,
}

/// Nemesis event values are `inject KIND` and `heal KIND`.
pub fn nemesis_value(action: &str, kind: NemesisKind) -> Value {
    Value::Text(format!("{action} {}", kind.as_str()))
}

fn parse_nemesis(e: &Event) -> Option<(&str, NemesisKind)> {
    let Some(Value::Text(t)) = &e.value else {
        return None;
    };
    let (action, kind) = t.split_once(' ')?;
    Some((action, NemesisKind::parse(kind)?))
}

/// The index of the final-reads marker (`u64::MAX` without one: every
/// acknowledged value then counts as lost, as no final read exists).
pub fn final_from(events: &[Event]) -> u64 {
    events
        .iter()
        .find(|e| e.f == OpFn::Nemesis && e.value == Some(Value::Text(FINAL_READS.into())))
        .map(|e| e.index)
        .unwrap_or(u64::MAX)
}

/// Per kind: faults injected, and operations invoked while one was active.
fn nemesis_figures(events: &[Event]) -> BTreeMap<NemesisKind, NemesisFigures> {
    let mut figures: BTreeMap<NemesisKind, NemesisFigures> = NemesisKind::ALL
        .into_iter()
        .map(|k| (k, NemesisFigures::default()))
        .collect();
    let mut active: BTreeMap<NemesisKind, i64> = BTreeMap::new();
    // invoke index -> kinds active at that moment
    let mut during: BTreeMap<u64, Vec<NemesisKind>> = BTreeMap::new();
    for e in events {
        if e.f == OpFn::Nemesis {
            if let Some((action, kind)) = parse_nemesis(e) {
                let n = active.entry(kind).or_default();
                match action {
                    "inject" if e.kind == EventType::Ok => {
                        *n += 1;
                        figures.entry(kind).or_default().injected += 1;
                    }
                    "heal" => *n = (*n - 1).max(0),
                    _ => {}
                }
            }
        } else if e.kind == EventType::Invoke {
            let kinds: Vec<NemesisKind> = active
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, _)| *k)
                .collect();
            during.insert(e.index, kinds);
        }
    }
    for p in pair(events) {
        for k in during.get(&p.invoke.index).into_iter().flatten() {
            figures
                .entry(*k)
                .or_default()
                .operations_during
                .count(p.outcome());
        }
    }
    figures
}

/// Everything the checkers say about `events`.
pub fn summarize(
    events: &[Event],
    seed: u64,
    profile: &str,
    nodes: usize,
    repair_converged: bool,
) -> Summary {
    let mut operations = Outcomes::default();
    for p in pair(events) {
        operations.count(p.outcome());
    }
    let fin = final_from(events);
    let set: BTreeMap<Consistency, set::SetResult> = Consistency::ALL
        .into_iter()
        .map(|l| (l, set::check(events, l, fin)))
        .collect();
    let registers = linear::check(events, linear::MAX_STEPS);
    let count = |v: linear::Verdict| registers.iter().filter(|r| r.verdict == v).count() as u64;
    let linearizability_violations = count(linear::Verdict::Violation);
    let linearizability_unknown = count(linear::Verdict::Unknown);
    let update = updates::check(events);
    let minority = minority::check(events);
    let violations = set.iter().map(|(l, r)| r.violations(*l)).sum::<u64>()
        + linearizability_violations
        + update.violations()
        + minority.acknowledged;
    Summary {
        seed,
        profile: profile.to_string(),
        nodes,
        operations,
        set,
        registers,
        linearizability_violations,
        linearizability_unknown,
        nemesis: nemesis_figures(events),
        update,
        minority,
        repair_converged,
        violations,
    }
}

impl Summary {
    /// A human-readable table.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let o = &self.operations;
        s.push_str(&format!(
            "seed {} profile {} nodes {}\noperations {} (ok {}, fail {}, info {})\n",
            self.seed, self.profile, self.nodes, o.invoked, o.ok, o.fail, o.info
        ));
        for (level, r) in &self.set {
            s.push_str(&format!(
                "set {:<8} attempted {:>5} acknowledged {:>5} unknown {:>4} (present {:>4}) lost {} never-written {} failed-but-present {} stale {} over {} reads; final reads from {:?}\n",
                level.as_str(), r.attempted, r.acknowledged, r.unknown, r.unknown_present,
                r.lost, r.never_written, r.failed_but_present, r.stale, r.reads, r.final_nodes
            ));
            if !r.lost_examples.is_empty() {
                s.push_str(&format!("  lost e.g. {:?}\n", r.lost_examples));
            }
        }
        for r in &self.registers {
            s.push_str(&format!(
                "register {} {:?}: {} operations, {} steps{}\n",
                r.key,
                r.verdict,
                r.operations,
                r.steps,
                r.stuck_at
                    .map(|i| format!(", stuck at history index {i}"))
                    .unwrap_or_default()
            ));
        }
        for (k, f) in self.nemesis.iter().filter(|(_, f)| f.injected > 0) {
            let d = &f.operations_during;
            s.push_str(&format!(
                "nemesis {:<12} injected {:>3}; operations during: {} (ok {}, fail {}, info {})\n",
                k.as_str(),
                f.injected,
                d.invoked,
                d.ok,
                d.fail,
                d.info
            ));
        }
        let u = &self.update;
        if let Some(op) = &u.operation_id {
            s.push_str(&format!(
                "update {op} ({}): final {}; {} samples; most out of service at once {} (bound {}); over the bound {}; lease overlaps {}{}\n",
                u.strategy.as_deref().unwrap_or("?"),
                u.final_status.as_deref().unwrap_or("NONE (hung)"),
                u.samples,
                u.max_out_of_service,
                u.bound,
                u.out_of_service_violations,
                u.lease_overlaps,
                if u.examples.is_empty() { String::new() } else { format!("\n  e.g. {:?}", u.examples) }
            ));
        }
        let m = &self.minority;
        if m.partitions > 0 {
            s.push_str(&format!(
                "minority sides: {} partitions; strong writes through them {}, acknowledged {}{}\n",
                m.partitions,
                m.attempted,
                m.acknowledged,
                if m.examples.is_empty() {
                    String::new()
                } else {
                    format!("\n  e.g. {:?}", m.examples)
                }
            ));
        }
        if u.operation_id.is_none() && !u.examples.is_empty() {
            s.push_str(&format!("update not run: {:?}\n", u.examples));
        }
        s.push_str(&format!(
            "repair converged before final reads: {}\nviolations: {}\n",
            self.repair_converged, self.violations
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Op, Recorder, NEMESIS_PROCESS};

    #[test]
    fn operations_during_a_fault_are_counted_under_its_kind() {
        let rec = Recorder::in_memory();
        let nem = |action: &str, kind: EventType| {
            let mut o = Op::new(NEMESIS_PROCESS, kind, OpFn::Nemesis);
            o.value = Some(nemesis_value(action, NemesisKind::Kill));
            rec.record(o);
        };
        let add = |p: u64, v: u64, outcome: EventType| {
            let mut o = Op::new(p, EventType::Invoke, OpFn::Add);
            o.value = Some(Value::Int(v));
            o.consistency = Some(Consistency::Strong);
            rec.record(o.clone());
            o.kind = outcome;
            rec.record(o);
        };
        add(1, 1, EventType::Ok);
        nem("inject", EventType::Ok);
        add(1, 2, EventType::Info);
        nem("heal", EventType::Ok);
        add(1, 3, EventType::Ok);
        let mut marker = Op::new(NEMESIS_PROCESS, EventType::Info, OpFn::Nemesis);
        marker.value = Some(Value::Text(FINAL_READS.into()));
        rec.record(marker);
        let mut r = Op::new(2, EventType::Invoke, OpFn::ReadAll);
        r.consistency = Some(Consistency::Strong);
        r.node = Some("c1".into());
        rec.record(r.clone());
        r.kind = EventType::Ok;
        r.value = Some(Value::List(vec![1, 3]));
        rec.record(r);
        let s = summarize(&rec.events(), 7, "short", 5, true);
        let kill = &s.nemesis[&NemesisKind::Kill];
        assert_eq!(kill.injected, 1);
        assert_eq!(kill.operations_during.invoked, 1);
        assert_eq!(kill.operations_during.info, 1);
        assert_eq!(s.operations.invoked, 4);
        assert_eq!(s.set[&Consistency::Strong].lost, 0);
        assert_eq!(s.violations, 0);
        assert!(s.render().contains("violations: 0"));
    }
}
