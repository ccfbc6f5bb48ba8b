//! The minority checker (pure): no strong write is acknowledged through a
//! node cut off from a majority of the cluster. For every `split` and
//! `isolate` in the history, the side smaller than a majority of the nodes
//! is the minority from its injection to its heal; a strong `add` or
//! `write` invoked after the injection and acknowledged (`ok`) before the
//! heal through a node of that side is a violation: that node could not
//! have heard from a majority of the object's owners (RF 3 on 5 nodes: at
//! most 2 are on its side).

use std::collections::BTreeSet;

use serde::Serialize;

use super::pair;
use crate::history::{Consistency, Event, EventType, OpFn, Value};

/// The partitions with a minority side.
const KINDS: [&str; 2] = ["split", "isolate"];

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MinorityResult {
    /// Partitions with a minority side seen in the history.
    pub partitions: u64,
    /// Strong writes invoked through a minority node while it was cut off.
    pub attempted: u64,
    /// Of them, acknowledged: each one a violation.
    pub acknowledged: u64,
    pub examples: Vec<String>,
}

/// One minority window: its nodes, from the inject's index to the heal's.
struct Window {
    nodes: BTreeSet<String>,
    from: u64,
    until: u64,
}

fn nemesis_text(e: &Event) -> Option<(&str, &str)> {
    match (&e.f, &e.value) {
        (OpFn::Nemesis, Some(Value::Text(t))) => t.split_once(' '),
        _ => None,
    }
}

/// The side(s) of a partition event smaller than a majority of `nodes`.
fn minority_of(e: &Event, nodes: usize) -> BTreeSet<String> {
    let need = nodes / 2 + 1;
    e.params
        .as_ref()
        .and_then(|p| p["sides"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|side| side.as_array())
        .filter(|side| side.len() < need)
        .flatten()
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect()
}

/// The cluster's size: the `setup` event's, else the nodes named anywhere.
fn cluster_size(events: &[Event]) -> usize {
    let named: BTreeSet<&str> = events.iter().filter_map(|e| e.node.as_deref()).collect();
    named.len()
}

pub fn check(events: &[Event]) -> MinorityResult {
    let nodes = cluster_size(events);
    let mut windows: Vec<Window> = Vec::new();
    let mut open: Vec<(String, Window)> = Vec::new();
    for e in events {
        let Some((action, kind)) = nemesis_text(e) else {
            continue;
        };
        if !KINDS.contains(&kind) {
            continue;
        }
        match action {
            "inject" if e.kind == EventType::Ok => open.push((
                kind.to_string(),
                Window {
                    nodes: minority_of(e, nodes),
                    from: e.index,
                    until: u64::MAX,
                },
            )),
            "heal" => {
                if let Some(i) = open.iter().position(|(k, _)| k == kind) {
                    let (_, mut w) = open.remove(i);
                    w.until = e.index;
                    windows.push(w);
                }
            }
            _ => {}
        }
    }
    windows.extend(open.into_iter().map(|(_, w)| w));
    let mut r = MinorityResult {
        partitions: windows.iter().filter(|w| !w.nodes.is_empty()).count() as u64,
        ..Default::default()
    };
    for p in pair(events) {
        let inv = p.invoke;
        if inv.consistency != Some(Consistency::Strong) || !matches!(inv.f, OpFn::Add | OpFn::Write)
        {
            continue;
        }
        let Some(node) = inv.node.as_deref() else {
            continue;
        };
        let Some(w) = windows
            .iter()
            .find(|w| w.nodes.contains(node) && w.from < inv.index && inv.index < w.until)
        else {
            continue;
        };
        r.attempted += 1;
        if let Some(done) = p
            .done
            .filter(|d| d.kind == EventType::Ok && d.index < w.until)
        {
            r.acknowledged += 1;
            if r.examples.len() < super::updates::MAX_EXAMPLES {
                r.examples.push(format!(
                    "strong {:?} of {:?} acknowledged through {node} (minority) at index {}",
                    inv.f, inv.value, done.index
                ));
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Op, Recorder, NEMESIS_PROCESS};

    fn nemesis(rec: &Recorder, text: &str, sides: serde_json::Value) {
        let mut o = Op::new(NEMESIS_PROCESS, EventType::Ok, OpFn::Nemesis);
        o.value = Some(Value::Text(text.into()));
        o.params = Some(serde_json::json!({ "sides": sides }));
        rec.record(o);
    }

    fn add(rec: &Recorder, p: u64, node: &str, v: u64, outcome: EventType) {
        let mut o = Op::new(p, EventType::Invoke, OpFn::Add);
        o.value = Some(Value::Int(v));
        o.consistency = Some(Consistency::Strong);
        o.node = Some(node.into());
        rec.record(o.clone());
        o.kind = outcome;
        rec.record(o);
    }

    #[test]
    fn a_strong_ack_through_the_minority_is_caught_and_refusals_pass() {
        let rec = Recorder::in_memory();
        for (i, n) in ["c1", "c2", "c3", "c4", "c5"].iter().enumerate() {
            add(&rec, i as u64, n, i as u64, EventType::Ok);
        }
        let sides = serde_json::json!([["c1", "c4"], ["c2", "c3", "c5"]]);
        nemesis(&rec, "inject split", sides.clone());
        add(&rec, 1, "c1", 10, EventType::Info);
        add(&rec, 2, "c2", 11, EventType::Ok);
        let r = check(&rec.events());
        assert_eq!(
            (r.partitions, r.attempted, r.acknowledged),
            (1, 1, 0),
            "{r:?}"
        );
        add(&rec, 4, "c4", 12, EventType::Ok);
        nemesis(&rec, "heal split", sides);
        add(&rec, 1, "c1", 13, EventType::Ok);
        let r = check(&rec.events());
        assert_eq!((r.attempted, r.acknowledged), (2, 1), "{r:?}");
        assert!(r.examples[0].contains("c4"));
    }
}
