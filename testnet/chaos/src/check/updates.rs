//! The update checker (pure): from the samples the harness took of every
//! node's own view of its own update progress, whether more nodes were out
//! of service at once than the operation's strategy allows, whether two
//! nodes held one lease slot at once, and whether the operation ended
//! (completed, rolled back or failed) instead of hanging.
//!
//! Only what a sample proves counts. A sample is a request to node X that
//! went out at `invoke_ms` and came back at `time_ms`; X's state was what
//! it says at some instant in between. So a run of samples of X saying
//! "out of service" (not broken by a sample saying "in service") proves X
//! was out throughout `[time_ms of the first, invoke_ms of the last]`,
//! its *definite* interval, if that is not empty. Overlapping definite
//! intervals are real overlaps; a short overlap between two samples can be
//! missed (sampling), never invented.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::history::{Event, EventType, OpFn, Value};

/// One sample of one node's own progress in the operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateSample {
    /// When the request went out (ms since the run started); the event's
    /// `time_ms` is when the answer came.
    pub invoke_ms: u64,
    pub operation_id: String,
    /// The node's phase (`lease`, `pre_check`, `drain`, ..., `done`).
    pub phase: String,
    /// The node's status (`pending`, `updating`, `completed`, ...).
    pub status: String,
    /// The lease slot and epoch the node holds, as it says itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<(u32, u64)>,
}

/// Phases during which a node serves no clients (from the drain to the
/// end of the post-update check).
pub const OUT_OF_SERVICE_PHASES: [&str; 6] = [
    "drain",
    "backup",
    "fetch",
    "install",
    "restart",
    "post_check",
];

impl UpdateSample {
    pub fn out_of_service(&self) -> bool {
        OUT_OF_SERVICE_PHASES.contains(&self.phase.as_str())
            && matches!(self.status.as_str(), "updating" | "rolling_back")
    }
}

/// The `value` texts of `update` events the checker reads.
pub const PLANNED: &str = "planned";
pub const FINAL: &str = "final";

/// What the checker found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UpdateResult {
    pub operation_id: Option<String>,
    pub strategy: Option<String>,
    /// Most nodes out of service at once the strategy allows.
    pub bound: usize,
    pub samples: u64,
    /// Most definite out-of-service intervals seen overlapping.
    pub max_out_of_service: usize,
    /// Instants (interval starts) where the bound was exceeded.
    pub out_of_service_violations: u64,
    /// Pairs of nodes whose definite holding of one slot overlapped.
    pub lease_overlaps: u64,
    /// The final status, if the operation ended.
    pub final_status: Option<String>,
    /// Planned but never final within the harness's bound.
    pub hung: bool,
    /// The workload ran but could not publish or plan the update.
    pub not_started: bool,
    pub examples: Vec<String>,
}

impl UpdateResult {
    pub fn violations(&self) -> u64 {
        self.out_of_service_violations
            + self.lease_overlaps
            + u64::from(self.hung)
            + u64::from(self.not_started)
    }
}

/// Most examples kept.
pub const MAX_EXAMPLES: usize = 10;

/// A definite interval of one node: `[from, until]`, ms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interval {
    pub node: String,
    pub from: u64,
    pub until: u64,
}

/// Per node, the definite intervals where `pred` held, from samples in
/// time order: a run of samples with the same `Some(key)` makes one.
pub fn definite<K: PartialEq + Clone>(
    samples: &[(&Event, &UpdateSample)],
    pred: impl Fn(&UpdateSample) -> Option<K>,
) -> Vec<(K, Interval)> {
    let mut by_node: BTreeMap<&str, Vec<(&Event, &UpdateSample)>> = BTreeMap::new();
    for (e, s) in samples {
        by_node
            .entry(e.node.as_deref().unwrap_or(""))
            .or_default()
            .push((e, s));
    }
    let mut out = Vec::new();
    for (node, mut list) in by_node {
        list.sort_by_key(|(e, _)| (e.time_ms, e.index));
        let mut run: Option<(K, u64, u64)> = None;
        let close = |run: &mut Option<(K, u64, u64)>, out: &mut Vec<(K, Interval)>| {
            if let Some((k, from, until)) = run.take() {
                if from <= until {
                    out.push((
                        k,
                        Interval {
                            node: node.to_string(),
                            from,
                            until,
                        },
                    ));
                }
            }
        };
        for (e, s) in list {
            match (pred(s), run.as_mut()) {
                (Some(k), Some((rk, _, until))) if *rk == k => *until = s.invoke_ms,
                (Some(k), _) => {
                    close(&mut run, &mut out);
                    run = Some((k, e.time_ms, s.invoke_ms));
                }
                (None, _) => close(&mut run, &mut out),
            }
        }
        close(&mut run, &mut out);
    }
    out
}

/// Most intervals overlapping at one instant, and the instants (interval
/// starts) where more than `bound` did.
pub fn max_overlap(intervals: &[Interval], bound: usize) -> (usize, Vec<(u64, Vec<String>)>) {
    let mut max = 0;
    let mut over = Vec::new();
    for a in intervals {
        let at = a.from;
        let live: Vec<String> = intervals
            .iter()
            .filter(|b| b.from <= at && at <= b.until)
            .map(|b| b.node.clone())
            .collect();
        max = max.max(live.len());
        if live.len() > bound {
            over.push((at, live));
        }
    }
    (max, over)
}

fn text(e: &Event) -> Option<&str> {
    match &e.value {
        Some(Value::Text(t)) => Some(t.as_str()),
        _ => None,
    }
}

/// Checks the update in `events` (none planned: an empty result).
pub fn check(events: &[Event]) -> UpdateResult {
    let mut r = UpdateResult::default();
    // "planned OP STRATEGY BOUND"
    for e in events.iter().filter(|e| e.f == OpFn::Update) {
        let Some(t) = text(e) else { continue };
        let words: Vec<&str> = t.split_whitespace().collect();
        match words.as_slice() {
            [PLANNED, id, strategy, bound] if e.kind == EventType::Ok => {
                r.operation_id = Some(id.to_string());
                r.strategy = Some(strategy.to_string());
                r.bound = bound.parse().unwrap_or(1);
            }
            [FINAL, status] if e.kind == EventType::Ok => r.final_status = Some(status.to_string()),
            [FINAL, ..] => r.hung = r.operation_id.is_some(),
            _ if e.kind == EventType::Fail && r.examples.len() < MAX_EXAMPLES => {
                r.examples
                    .push(format!("{t} failed: {}", e.error.as_deref().unwrap_or("?")));
            }
            _ => {}
        }
    }
    let Some(op) = r.operation_id.clone() else {
        r.not_started = !r.examples.is_empty();
        return r;
    };
    let samples: Vec<(&Event, &UpdateSample)> = events
        .iter()
        .filter(|e| e.f == OpFn::UpdateSample && e.kind == EventType::Ok)
        .filter_map(|e| e.sample.as_ref().map(|s| (e, s)))
        .filter(|(_, s)| s.operation_id == op)
        .collect();
    r.samples = samples.len() as u64;
    let out: Vec<Interval> = definite(&samples, |s| s.out_of_service().then_some(()))
        .into_iter()
        .map(|(_, i)| i)
        .collect();
    let (max, over) = max_overlap(&out, r.bound);
    r.max_out_of_service = max;
    r.out_of_service_violations = over.len() as u64;
    for (at, nodes) in over.iter().take(MAX_EXAMPLES) {
        r.examples
            .push(format!("at {at} ms out of service at once: {nodes:?}"));
    }
    let leases = definite(&samples, |s| s.lease);
    let mut by_slot: BTreeMap<u32, Vec<(u64, Interval)>> = BTreeMap::new();
    for ((slot, epoch), i) in leases {
        by_slot.entry(slot).or_default().push((epoch, i));
    }
    for (slot, list) in by_slot {
        for (i, (_, a)) in list.iter().enumerate() {
            for (_, b) in &list[i + 1..] {
                if a.node != b.node && a.from <= b.until && b.from <= a.until {
                    r.lease_overlaps += 1;
                    if r.examples.len() < MAX_EXAMPLES {
                        r.examples.push(format!(
                            "slot {slot} held by {} [{}, {}] and {} [{}, {}] ms",
                            a.node, a.from, a.until, b.node, b.from, b.until
                        ));
                    }
                }
            }
        }
    }
    if r.final_status.is_none() {
        r.hung = true;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(
        index: u64,
        node: &str,
        invoke_ms: u64,
        time_ms: u64,
        phase: &str,
        lease: Option<(u32, u64)>,
    ) -> Event {
        Event {
            index,
            time_ms,
            process: 0,
            kind: EventType::Ok,
            f: OpFn::UpdateSample,
            key: None,
            value: None,
            consistency: None,
            node: Some(node.into()),
            error: None,
            params: None,
            sample: Some(UpdateSample {
                invoke_ms,
                operation_id: "op".into(),
                phase: phase.into(),
                status: if phase == "done" {
                    "completed".into()
                } else {
                    "updating".into()
                },
                lease,
            }),
        }
    }

    fn update(index: u64, kind: EventType, text: &str) -> Event {
        Event {
            index,
            time_ms: 0,
            process: 0,
            kind,
            f: OpFn::Update,
            key: None,
            value: Some(Value::Text(text.into())),
            consistency: None,
            node: None,
            error: None,
            params: None,
            sample: None,
        }
    }

    /// Two nodes taking turns, the second starting after the first is
    /// back: no violation. The same with the turns overlapping by one
    /// whole sample period: one.
    #[test]
    fn overlapping_turns_are_found_and_clean_turns_pass() {
        let mut ev = vec![update(0, EventType::Ok, "planned op rolling 1")];
        let mut i = 1;
        let mut push = |ev: &mut Vec<Event>, node: &str, t: u64, phase: &str, lease| {
            ev.push(sample(i, node, t, t + 20, phase, lease));
            i += 1;
        };
        for t in (0..1000).step_by(100) {
            let phase = if t < 500 { "install" } else { "done" };
            let lease = (t < 500).then_some((0, 1));
            push(&mut ev, "a", t, phase, lease);
            let phase = if t >= 600 { "restart" } else { "waiting" };
            let lease = (t >= 600).then_some((0, 2));
            push(&mut ev, "b", t, phase, lease);
        }
        ev.push(update(i, EventType::Ok, "final completed"));
        let r = check(&ev);
        assert_eq!(r.violations(), 0, "{r:?}");
        assert_eq!(r.max_out_of_service, 1);
        assert_eq!(r.final_status.as_deref(), Some("completed"));

        // b goes out at 300 while a is out until 400: both definite.
        for e in ev.iter_mut() {
            if let Some(s) = e.sample.as_mut() {
                if e.node.as_deref() == Some("b") && s.invoke_ms >= 300 {
                    s.phase = "drain".into();
                    s.lease = Some((0, 2));
                }
            }
        }
        let r = check(&ev);
        assert_eq!(r.max_out_of_service, 2, "{r:?}");
        assert!(r.out_of_service_violations > 0);
        assert_eq!(r.lease_overlaps, 1);
    }

    /// A single sample each, or runs that only touch within one sample's
    /// uncertainty, prove nothing: no false violation.
    #[test]
    fn sampling_uncertainty_never_invents_an_overlap() {
        let ev = vec![
            update(0, EventType::Ok, "planned op rolling 1"),
            // a: out, proven over [120, 200].
            sample(1, "a", 100, 120, "install", None),
            sample(2, "a", 200, 220, "install", None),
            // b: its one out sample answered at 230, sent at 190: no
            // definite interval (190 < 230).
            sample(3, "b", 190, 230, "drain", None),
            update(4, EventType::Ok, "final completed"),
        ];
        let r = check(&ev);
        assert_eq!(r.max_out_of_service, 1, "{r:?}");
        assert_eq!(r.violations(), 0);
    }

    #[test]
    fn an_update_that_never_ends_is_hung() {
        let ev = vec![
            update(0, EventType::Ok, "planned op parallel 2"),
            update(1, EventType::Info, "final not final after 240 s"),
        ];
        let r = check(&ev);
        assert!(r.hung);
        assert_eq!(r.bound, 2);
        assert_eq!(r.violations(), 1);
        // No update at all: nothing to check, nothing violated.
        assert_eq!(check(&[]).violations(), 0);
    }
}
