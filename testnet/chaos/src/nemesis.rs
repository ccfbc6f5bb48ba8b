//! Nemeses, the pure part: the kinds of fault ([`NemesisKind`]), one drawn
//! fault with its parameters ([`Fault`]), and the seeded schedule of
//! combined faults ([`schedule`], [`timeline`]): up to `concurrency` faults
//! at once, on different nodes, at most one partition at a time, and never
//! more than a minority of the nodes lost (killed, paused, cut off, out of
//! disk or crashing) at once, so that fewer than RF nodes are ever lost.
//! Injecting and healing on a live cluster is `apply.rs`.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

use crate::partition::{minority, Partition, Shape};

/// The kinds of fault (the `value` of a nemesis event says which).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NemesisKind {
    /// SIGKILL of supervisor and worker, restart on the same data dir.
    Kill,
    /// SIGSTOP of the worker, SIGCONT at heal.
    Pause,
    /// One node cut from all others (netns).
    Isolate,
    /// Majority/minority split (netns).
    Split,
    /// Two halves that do not see each other, one node seeing both (netns).
    Bridge,
    /// One node's packets to another dropped, not the reverse (netns).
    OneWay,
    /// Delay, loss, duplication, reordering of one node's messages: tc
    /// netem in its namespace, else the fault file's `net_*` fields.
    Netem,
    /// The node's wall clock offset (fault file `clock_offset_ms`).
    ClockSkew,
    /// The node's tmpfs data dir filled by a ballast file (netns/root).
    DiskFull,
    /// A share of the node's object writes fail (fault file
    /// `store_write_error_percent`).
    StoreErrors,
    /// The node's next object write is torn and the worker aborts (fault
    /// file `store_torn_write`); the supervisor restarts it.
    TornWrite,
}

impl NemesisKind {
    pub const ALL: [NemesisKind; 11] = [
        NemesisKind::Kill,
        NemesisKind::Pause,
        NemesisKind::Isolate,
        NemesisKind::Split,
        NemesisKind::Bridge,
        NemesisKind::OneWay,
        NemesisKind::Netem,
        NemesisKind::ClockSkew,
        NemesisKind::DiskFull,
        NemesisKind::StoreErrors,
        NemesisKind::TornWrite,
    ];

    /// The kinds a loopback cluster can inject (no namespaces, no tmpfs).
    pub const LOOPBACK: [NemesisKind; 6] = [
        NemesisKind::Kill,
        NemesisKind::Pause,
        NemesisKind::Netem,
        NemesisKind::ClockSkew,
        NemesisKind::StoreErrors,
        NemesisKind::TornWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NemesisKind::Kill => "kill",
            NemesisKind::Pause => "pause",
            NemesisKind::Isolate => "isolate",
            NemesisKind::Split => "split",
            NemesisKind::Bridge => "bridge",
            NemesisKind::OneWay => "one_way",
            NemesisKind::Netem => "netem",
            NemesisKind::ClockSkew => "clock_skew",
            NemesisKind::DiskFull => "disk_full",
            NemesisKind::StoreErrors => "store_errors",
            NemesisKind::TornWrite => "torn_write",
        }
    }

    pub fn parse(s: &str) -> Option<NemesisKind> {
        NemesisKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Which partition shape this kind draws, if it is a partition.
    pub fn shape(self) -> Option<Shape> {
        match self {
            NemesisKind::Isolate => Some(Shape::Isolate),
            NemesisKind::Split => Some(Shape::Split),
            NemesisKind::Bridge => Some(Shape::Bridge),
            NemesisKind::OneWay => Some(Shape::OneWay),
            _ => None,
        }
    }
}

/// Bound of a drawn clock offset (each node its own, drawn from the seed).
pub const MAX_SKEW_MS: i64 = 30_000;
/// Ranges of the drawn message faults.
pub const NET_DELAY_MIN_MS: (u64, u64) = (5, 30);
pub const NET_DELAY_MAX_MS: (u64, u64) = (50, 300);
pub const NET_LOSS_PERCENT: (u8, u8) = (1, 10);
pub const NET_DUPLICATE_PERCENT: (u8, u8) = (1, 5);
/// Range of the drawn share of failing store writes.
pub const STORE_ERROR_PERCENT: (u8, u8) = (10, 50);

/// One fault with everything needed to inject and heal it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    Kill {
        node: usize,
    },
    Pause {
        node: usize,
    },
    Partition(Partition),
    Netem {
        node: usize,
        delay_ms: [u64; 2],
        loss_percent: u8,
        duplicate_percent: u8,
    },
    ClockSkew {
        node: usize,
        offset_ms: i64,
    },
    DiskFull {
        node: usize,
    },
    StoreErrors {
        node: usize,
        percent: u8,
    },
    TornWrite {
        node: usize,
    },
}

impl Fault {
    pub fn kind(&self) -> NemesisKind {
        match self {
            Fault::Kill { .. } => NemesisKind::Kill,
            Fault::Pause { .. } => NemesisKind::Pause,
            Fault::Partition(p) => match p.shape {
                Shape::Isolate => NemesisKind::Isolate,
                Shape::Split => NemesisKind::Split,
                Shape::Bridge => NemesisKind::Bridge,
                Shape::OneWay => NemesisKind::OneWay,
            },
            Fault::Netem { .. } => NemesisKind::Netem,
            Fault::ClockSkew { .. } => NemesisKind::ClockSkew,
            Fault::DiskFull { .. } => NemesisKind::DiskFull,
            Fault::StoreErrors { .. } => NemesisKind::StoreErrors,
            Fault::TornWrite { .. } => NemesisKind::TornWrite,
        }
    }

    /// The single node a node fault is on (`None` for a partition).
    pub fn node(&self) -> Option<usize> {
        match self {
            Fault::Partition(_) => None,
            Fault::Kill { node }
            | Fault::Pause { node }
            | Fault::Netem { node, .. }
            | Fault::ClockSkew { node, .. }
            | Fault::DiskFull { node }
            | Fault::StoreErrors { node, .. }
            | Fault::TornWrite { node } => Some(*node),
        }
    }

    /// The nodes it acts on; two faults at once never share one.
    pub fn footprint(&self) -> BTreeSet<usize> {
        match self {
            Fault::Partition(p) => p.footprint(),
            f => f.node().into_iter().collect(),
        }
    }

    /// The nodes it takes away from the rest while it holds.
    pub fn lost(&self) -> BTreeSet<usize> {
        match self {
            Fault::Partition(p) => p.lost(),
            Fault::Kill { node }
            | Fault::Pause { node }
            | Fault::DiskFull { node }
            | Fault::TornWrite { node } => BTreeSet::from([*node]),
            Fault::Netem { .. } | Fault::ClockSkew { .. } | Fault::StoreErrors { .. } => {
                BTreeSet::new()
            }
        }
    }

    /// The history's parameters (node names through `name`).
    pub fn params(&self, name: &dyn Fn(usize) -> String) -> Json {
        match self {
            Fault::Partition(p) => p.params(name),
            Fault::Netem {
                delay_ms,
                loss_percent,
                duplicate_percent,
                ..
            } => json!({
                "delay_ms": delay_ms,
                "loss_percent": loss_percent,
                "duplicate_percent": duplicate_percent,
            }),
            Fault::ClockSkew { offset_ms, .. } => json!({ "clock_offset_ms": offset_ms }),
            Fault::StoreErrors { percent, .. } => json!({ "store_write_error_percent": percent }),
            Fault::Kill { .. } | Fault::Pause { .. } | Fault::DiskFull { .. } => json!({}),
            Fault::TornWrite { .. } => json!({ "store_torn_write": true }),
        }
    }
}

/// Whether `f` may join the faults `active` (already under the
/// concurrency bound): different nodes, one partition at most, and the
/// nodes lost together stay a minority.
pub fn admissible(active: &[&Fault], f: &Fault, nodes: usize) -> bool {
    let fp = f.footprint();
    if active.iter().any(|a| !a.footprint().is_disjoint(&fp)) {
        return false;
    }
    let partition = |x: &Fault| matches!(x, Fault::Partition(_));
    if partition(f) && active.iter().any(|a| partition(a)) {
        return false;
    }
    let mut lost = f.lost();
    for a in active {
        lost.extend(a.lost());
    }
    lost.len() <= minority(nodes)
}

/// Each node's own clock offset, drawn from the seed: at least 1 s and at
/// most [`MAX_SKEW_MS`] away from true time, either way.
pub fn clock_offsets(seed: u64, nodes: usize) -> Vec<i64> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x636c_6f63_6b00);
    (0..nodes)
        .map(|_| {
            let m = rng.gen_range(1_000..=MAX_SKEW_MS);
            if rng.gen_bool(0.5) {
                m
            } else {
                -m
            }
        })
        .collect()
}

fn draw_fault(kind: NemesisKind, nodes: usize, offsets: &[i64], rng: &mut StdRng) -> Fault {
    if let Some(shape) = kind.shape() {
        return Fault::Partition(Partition::draw(shape, nodes, rng));
    }
    let node = rng.gen_range(0..nodes);
    match kind {
        NemesisKind::Kill => Fault::Kill { node },
        NemesisKind::Pause => Fault::Pause { node },
        NemesisKind::Netem => Fault::Netem {
            node,
            delay_ms: [
                rng.gen_range(NET_DELAY_MIN_MS.0..=NET_DELAY_MIN_MS.1),
                rng.gen_range(NET_DELAY_MAX_MS.0..=NET_DELAY_MAX_MS.1),
            ],
            loss_percent: rng.gen_range(NET_LOSS_PERCENT.0..=NET_LOSS_PERCENT.1),
            duplicate_percent: rng.gen_range(NET_DUPLICATE_PERCENT.0..=NET_DUPLICATE_PERCENT.1),
        },
        NemesisKind::ClockSkew => Fault::ClockSkew {
            node,
            offset_ms: offsets[node],
        },
        NemesisKind::DiskFull => Fault::DiskFull { node },
        NemesisKind::StoreErrors => Fault::StoreErrors {
            node,
            percent: rng.gen_range(STORE_ERROR_PERCENT.0..=STORE_ERROR_PERCENT.1),
        },
        _ => Fault::TornWrite { node },
    }
}

/// One scheduled fault: inject at `at` (from the start of the faults),
/// heal at `at + hold`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub at: Duration,
    pub hold: Duration,
    pub fault: Fault,
}

/// Bounds of a schedule.
#[derive(Clone, Debug)]
pub struct ScheduleSpec {
    pub nodes: usize,
    /// Every fault is healed within this.
    pub within: Duration,
    /// Time between two injections.
    pub gap_ms: (u64, u64),
    pub hold_ms: (u64, u64),
    pub kinds: Vec<NemesisKind>,
    /// Most faults in place at once.
    pub concurrency: usize,
}

/// Most steps of one schedule.
pub const MAX_STEPS: usize = 10_000;
/// Draws tried for one injection before it is skipped (every draw would
/// break a rule: all nodes busy, or too many lost).
pub const MAX_DRAWS: usize = 16;

/// The schedule the seed gives. Pure: same seed and spec, same schedule.
pub fn schedule(seed: u64, spec: &ScheduleSpec) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7300);
    let offsets = clock_offsets(seed, spec.nodes);
    let mut out: Vec<Step> = Vec::new();
    if spec.nodes < 3 || spec.kinds.is_empty() || spec.concurrency == 0 {
        return out;
    }
    let mut t = Duration::ZERO;
    while out.len() < MAX_STEPS {
        t += Duration::from_millis(rng.gen_range(spec.gap_ms.0..=spec.gap_ms.1));
        let hold = Duration::from_millis(rng.gen_range(spec.hold_ms.0..=spec.hold_ms.1));
        if t + hold > spec.within {
            break;
        }
        let active: Vec<&Fault> = out
            .iter()
            .filter(|s| s.at + s.hold > t)
            .map(|s| &s.fault)
            .collect();
        if active.len() >= spec.concurrency {
            continue;
        }
        for _ in 0..MAX_DRAWS {
            let kind = spec.kinds[rng.gen_range(0..spec.kinds.len())];
            let fault = draw_fault(kind, spec.nodes, &offsets, &mut rng);
            if admissible(&active, &fault, spec.nodes) {
                out.push(Step { at: t, hold, fault });
                break;
            }
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Inject,
    Heal,
}

/// The schedule as one ordered list of (time, action, step index): heals
/// before injections at the same instant. The runner performs it in this
/// order, so the faults that overlap are exactly the planned ones, even
/// when an action takes longer than planned.
pub fn timeline(steps: &[Step]) -> Vec<(Duration, Action, usize)> {
    let mut out: Vec<(Duration, Action, usize)> = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        out.push((s.at, Action::Inject, i));
        out.push((s.at + s.hold, Action::Heal, i));
    }
    out.sort_by_key(|&(t, a, i)| (t, a == Action::Inject, i));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kinds: &[NemesisKind], concurrency: usize) -> ScheduleSpec {
        ScheduleSpec {
            nodes: 5,
            within: Duration::from_secs(600),
            gap_ms: (200, 2000),
            hold_ms: (1000, 8000),
            kinds: kinds.to_vec(),
            concurrency,
        }
    }

    /// Replays the timeline, checking the rules at every injection.
    fn replay(steps: &[Step], s: &ScheduleSpec) -> usize {
        let mut active: Vec<usize> = Vec::new();
        let mut most = 0;
        for (_, action, i) in timeline(steps) {
            match action {
                Action::Heal => active.retain(|&j| j != i),
                Action::Inject => {
                    let faults: Vec<&Fault> = active.iter().map(|&j| &steps[j].fault).collect();
                    assert!(admissible(&faults, &steps[i].fault, s.nodes), "step {i}");
                    active.push(i);
                    most = most.max(active.len());
                    assert!(active.len() <= s.concurrency);
                    let lost: BTreeSet<usize> =
                        active.iter().flat_map(|&j| steps[j].fault.lost()).collect();
                    assert!(lost.len() <= 2, "lost {lost:?}");
                    let partitions = active
                        .iter()
                        .filter(|&&j| matches!(steps[j].fault, Fault::Partition(_)))
                        .count();
                    assert!(partitions <= 1);
                }
            }
        }
        assert!(active.is_empty(), "everything healed");
        most
    }

    #[test]
    fn same_seed_same_schedule_and_it_fits_its_window() {
        let s = spec(&NemesisKind::ALL, 2);
        let a = schedule(42, &s);
        assert_eq!(a, schedule(42, &s));
        assert_ne!(a, schedule(43, &s));
        assert!(!a.is_empty());
        assert!(a.iter().all(|st| st.at + st.hold <= s.within));
        assert!(a
            .iter()
            .all(|st| (1000..=8000).contains(&(st.hold.as_millis() as u64))));
    }

    #[test]
    fn combined_faults_respect_concurrency_nodes_and_the_minority_bound() {
        for k in 1..=3 {
            let s = spec(&NemesisKind::ALL, k);
            let mut reached = 0;
            for seed in 0..40 {
                let steps = schedule(seed, &s);
                reached = reached.max(replay(&steps, &s));
            }
            assert_eq!(reached, k, "concurrency {k} is reached, never passed");
        }
    }

    #[test]
    fn process_faults_alone_never_take_a_majority() {
        let s = spec(&[NemesisKind::Kill, NemesisKind::Pause], 3);
        for seed in 0..40 {
            let steps = schedule(seed, &s);
            // With 5 nodes at most 2 can be down: a third is never drawn.
            assert!(replay(&steps, &s) <= 2);
        }
    }

    #[test]
    fn only_the_kinds_asked_for_are_drawn() {
        let s = spec(&NemesisKind::LOOPBACK, 3);
        let steps = schedule(7, &s);
        assert!(steps
            .iter()
            .all(|st| NemesisKind::LOOPBACK.contains(&st.fault.kind())));
        let seen: BTreeSet<NemesisKind> = steps.iter().map(|st| st.fault.kind()).collect();
        assert_eq!(seen.len(), NemesisKind::LOOPBACK.len());
    }

    #[test]
    fn clock_offsets_are_per_node_bounded_and_seeded() {
        let a = clock_offsets(3, 5);
        assert_eq!(a, clock_offsets(3, 5));
        assert_ne!(a, clock_offsets(4, 5));
        assert!(a.iter().all(|o| (1000..=MAX_SKEW_MS).contains(&o.abs())));
        let steps = schedule(3, &spec(&[NemesisKind::ClockSkew], 3));
        for st in steps {
            let Fault::ClockSkew { node, offset_ms } = st.fault else {
                panic!()
            };
            assert_eq!(offset_ms, a[node]);
        }
    }

    #[test]
    fn a_kill_beside_a_split_is_refused_when_it_would_lose_a_majority() {
        let split = Fault::Partition(Partition {
            shape: Shape::Split,
            cuts: BTreeSet::new(),
            sides: vec![vec![0, 1], vec![2, 3, 4]],
            bridge: None,
        });
        assert!(!admissible(&[&split], &Fault::Kill { node: 2 }, 5));
        assert!(!admissible(&[&split], &Fault::Kill { node: 0 }, 5));
        assert!(admissible(
            &[&split],
            &Fault::ClockSkew {
                node: 3,
                offset_ms: 5
            },
            5
        ));
        let one = Fault::Partition(Partition::draw(
            Shape::Isolate,
            5,
            &mut StdRng::seed_from_u64(1),
        ));
        assert!(!admissible(&[&split], &one, 5), "one partition at a time");
    }

    #[test]
    fn heals_come_before_injections_at_the_same_instant() {
        let steps = vec![
            Step {
                at: Duration::from_secs(1),
                hold: Duration::from_secs(1),
                fault: Fault::Kill { node: 0 },
            },
            Step {
                at: Duration::from_secs(2),
                hold: Duration::from_secs(1),
                fault: Fault::Kill { node: 0 },
            },
        ];
        let t = timeline(&steps);
        assert_eq!(t[1], (Duration::from_secs(2), Action::Heal, 0));
        assert_eq!(t[2], (Duration::from_secs(2), Action::Inject, 1));
    }

    #[test]
    fn kinds_round_trip_their_names() {
        for k in NemesisKind::ALL {
            assert_eq!(NemesisKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(NemesisKind::parse("partition"), None);
    }
}
