//! Linearizability of strong registers, per key (a register's history is
//! linearizable iff each key's is: P-compositionality). The search is
//! Wing & Gong's, with Lowe's memoisation as Porcupine does it: walk the
//! call/return entries in real-time order, linearize a call whenever the
//! register model allows it, back off at a return that was not reached;
//! a cache of (linearized set, state) prunes configurations already seen.
//! The search is bounded ([`MAX_STEPS`] per key): past it the key's verdict
//! is `Unknown`, never a guess.
//!
//! Operations: `write` (value) and `read` (value, `None` = absent key) at
//! level strong. A failed write never took effect; a write with unknown
//! outcome (`info`, or no completion) may take effect at any point after
//! its invoke, or never. Reads that did not complete with `ok` constrain
//! nothing and are dropped.
//!
//! Before the search, [`reduce`] bounds unknown writes (values are unique
//! per write, as the workload makes them): one whose value no read saw is
//! dropped (any linearization with it is one without it: nothing read the
//! state it made), and one that was read must take effect before the first
//! read of its value returned, which becomes its return. Left open-ended,
//! each unknown write stays concurrent with the rest of the history and
//! the search explodes (a 161-operation key hit the 2 M step bound).

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use super::pair;
use crate::history::{Consistency, Event, EventType, OpFn, Value};

/// Search steps per key before the verdict is `Unknown`.
pub const MAX_STEPS: u64 = 2_000_000;

/// The register model's operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegOp {
    Write(u64),
    /// What the read returned (`None`: the key was absent).
    Read(Option<u64>),
}

/// One operation of one key: `call < ret`, in history index units;
/// `ret == None` means it may take effect any time after `call`, or never.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operation {
    pub op: RegOp,
    pub call: u64,
    pub ret: Option<u64>,
    /// The history index of the invoke (for reports).
    pub invoke_index: u64,
}

/// The verdict for one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Linearizable,
    /// No linearization exists.
    Violation,
    /// The bound on the search was hit.
    Unknown,
}

/// One key's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyResult {
    pub key: String,
    pub verdict: Verdict,
    pub operations: usize,
    pub steps: u64,
    /// On a violation: the invoke index of an operation whose return the
    /// deepest search could not pass (where to look in the history).
    pub stuck_at: Option<u64>,
}

/// Every key's result, by key.
pub fn check(events: &[Event], max_steps: u64) -> Vec<KeyResult> {
    let mut by_key: BTreeMap<String, Vec<Operation>> = BTreeMap::new();
    for p in pair(events) {
        let inv = p.invoke;
        if inv.consistency != Some(Consistency::Strong) {
            continue;
        }
        let Some(key) = inv.key.clone() else { continue };
        let ret = p.done.map(|d| d.index);
        let op = match (inv.f, p.outcome()) {
            (OpFn::Write, EventType::Fail) | (OpFn::Read, EventType::Fail | EventType::Info) => {
                continue
            }
            (OpFn::Write, kind) => {
                let Some(Value::Int(v)) = inv.value else {
                    continue;
                };
                Operation {
                    op: RegOp::Write(v),
                    call: inv.index,
                    ret: if kind == EventType::Ok { ret } else { None },
                    invoke_index: inv.index,
                }
            }
            (OpFn::Read, _) => {
                let got = match p.done.and_then(|d| d.value.as_ref()) {
                    Some(Value::Int(v)) => Some(*v),
                    _ => None,
                };
                Operation {
                    op: RegOp::Read(got),
                    call: inv.index,
                    ret,
                    invoke_index: inv.index,
                }
            }
            _ => continue,
        };
        by_key.entry(key).or_default().push(op);
    }
    by_key
        .into_iter()
        .map(|(key, ops)| {
            let (verdict, steps, stuck_at) = check_ops(&ops, max_steps);
            KeyResult {
                key,
                verdict,
                operations: ops.len(),
                steps,
                stuck_at,
            }
        })
        .collect()
}

/// The register model: `Some(new state)` when `op` may follow `state`.
fn step(state: Option<u64>, op: RegOp) -> Option<Option<u64>> {
    match op {
        RegOp::Write(v) => Some(Some(v)),
        RegOp::Read(got) => (got == state).then_some(state),
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    op: usize,
    is_call: bool,
    /// A return at "infinity": an operation with unknown outcome.
    open_end: bool,
}

/// Bounds unknown-outcome writes (see the module doc); the identity when
/// two writes share a value (then a read does not name its write).
pub fn reduce(ops: &[Operation]) -> Vec<Operation> {
    let mut values = HashSet::new();
    let unique = ops.iter().all(|o| match o.op {
        RegOp::Write(v) => values.insert(v),
        RegOp::Read(_) => true,
    });
    if !unique {
        return ops.to_vec();
    }
    let mut first_read: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    for o in ops {
        if let (RegOp::Read(Some(v)), Some(r)) = (o.op, o.ret) {
            let e = first_read.entry(v).or_insert(r);
            *e = (*e).min(r);
        }
    }
    ops.iter()
        .filter_map(|o| match (o.op, o.ret) {
            (RegOp::Write(v), None) => match first_read.get(&v) {
                None => None,
                Some(&r) if r > o.call => Some(Operation { ret: Some(r), ..*o }),
                // Read before it was invoked: left open, the search finds
                // the violation.
                Some(_) => Some(*o),
            },
            _ => Some(*o),
        })
        .collect()
}

/// The search over one key's operations; initial state: absent.
pub fn check_ops(ops: &[Operation], max_steps: u64) -> (Verdict, u64, Option<u64>) {
    let reduced = reduce(ops);
    search(&reduced, max_steps)
}

fn search(ops: &[Operation], max_steps: u64) -> (Verdict, u64, Option<u64>) {
    // Entries in real-time order; at equal times a call precedes a return
    // (more concurrency is the safe reading). Open-ended returns go last.
    let mut entries: Vec<(u64, u8, Entry)> = Vec::with_capacity(ops.len() * 2);
    for (i, o) in ops.iter().enumerate() {
        entries.push((
            o.call,
            0,
            Entry {
                op: i,
                is_call: true,
                open_end: false,
            },
        ));
        let (t, open) = match o.ret {
            Some(r) => (r, false),
            None => (u64::MAX, true),
        };
        entries.push((
            t,
            1,
            Entry {
                op: i,
                is_call: false,
                open_end: open,
            },
        ));
    }
    entries.sort_by_key(|(t, order, e)| (*t, *order, e.op));
    let list: Vec<Entry> = entries.into_iter().map(|(_, _, e)| e).collect();
    let n = list.len();
    // Doubly linked list over entry positions; n is the head sentinel.
    let mut next: Vec<usize> = (0..=n).map(|i| if i == n { 0 } else { i + 1 }).collect();
    let mut prev: Vec<usize> = (0..=n).map(|i| if i == 0 { n } else { i - 1 }).collect();
    if n == 0 {
        return (Verdict::Linearizable, 0, None);
    }
    next[n] = 0;
    prev[0] = n;
    // next[n - 1] == n marks the end (the sentinel).
    let mut ret_pos = vec![0usize; ops.len()];
    for (pos, e) in list.iter().enumerate() {
        if !e.is_call {
            ret_pos[e.op] = pos;
        }
    }
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    let mut calls: Vec<(usize, Option<u64>)> = Vec::new();
    let mut state: Option<u64> = None;
    let mut steps = 0u64;
    let mut deepest = 0usize;
    let mut stuck_at = None;
    let mut pos = next[n];
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, p: usize| {
        let (a, b) = (prev[p], next[p]);
        next[a] = b;
        prev[b] = a;
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, p: usize| {
        let (a, b) = (prev[p], next[p]);
        next[a] = p;
        prev[b] = p;
    };
    while next[n] != n {
        steps += 1;
        if steps > max_steps {
            return (Verdict::Unknown, steps, None);
        }
        let e = list[pos];
        if e.is_call {
            let mut linearized_now = false;
            if let Some(new_state) = step(state, ops[e.op].op) {
                let mut bits = linearized.clone();
                bits[e.op / 64] |= 1 << (e.op % 64);
                if cache.insert((bits.clone(), new_state)) {
                    calls.push((pos, state));
                    state = new_state;
                    linearized = bits;
                    // Lift the call, then its return (the return is later).
                    lift(&mut next, &mut prev, pos);
                    lift(&mut next, &mut prev, ret_pos[e.op]);
                    pos = next[n];
                    linearized_now = true;
                }
            }
            if !linearized_now {
                pos = next[pos];
            }
        } else {
            if e.open_end {
                // Every operation with a definite return is linearized (a
                // definite return would come first); the rest may never
                // have taken effect.
                return (Verdict::Linearizable, steps, None);
            }
            if calls.len() >= deepest {
                deepest = calls.len();
                stuck_at = Some(ops[e.op].invoke_index);
            }
            let Some((call_pos, old_state)) = calls.pop() else {
                return (Verdict::Violation, steps, stuck_at);
            };
            let op = list[call_pos].op;
            state = old_state;
            linearized[op / 64] &= !(1 << (op % 64));
            // Restore in reverse order of lifting: the return, then the call.
            unlift(&mut next, &mut prev, ret_pos[op]);
            unlift(&mut next, &mut prev, call_pos);
            pos = next[call_pos];
        }
    }
    (Verdict::Linearizable, steps, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn op(op: RegOp, call: u64, ret: Option<u64>) -> Operation {
        Operation {
            op,
            call,
            ret,
            invoke_index: call,
        }
    }

    #[test]
    fn sequential_register_is_linearizable() {
        let ops = [
            op(RegOp::Read(None), 0, Some(1)),
            op(RegOp::Write(1), 2, Some(3)),
            op(RegOp::Read(Some(1)), 4, Some(5)),
            op(RegOp::Write(2), 6, Some(7)),
            op(RegOp::Read(Some(2)), 8, Some(9)),
        ];
        assert_eq!(check_ops(&ops, MAX_STEPS).0, Verdict::Linearizable);
    }

    #[test]
    fn reading_an_overwritten_value_is_a_violation() {
        let ops = [
            op(RegOp::Write(1), 0, Some(1)),
            op(RegOp::Write(2), 2, Some(3)),
            op(RegOp::Read(Some(1)), 4, Some(5)),
        ];
        let (v, _, stuck) = check_ops(&ops, MAX_STEPS);
        assert_eq!(v, Verdict::Violation);
        assert!(stuck.is_some());
    }

    #[test]
    fn concurrent_write_may_be_ordered_either_way() {
        let ops = [
            op(RegOp::Write(1), 0, Some(10)),
            op(RegOp::Write(2), 1, Some(9)),
            op(RegOp::Read(Some(1)), 11, Some(12)),
        ];
        assert_eq!(check_ops(&ops, MAX_STEPS).0, Verdict::Linearizable);
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never() {
        // Write 1 unknown; a later read sees it after write 2 completed.
        let late = [
            op(RegOp::Write(1), 0, None),
            op(RegOp::Write(2), 2, Some(3)),
            op(RegOp::Read(Some(1)), 4, Some(5)),
        ];
        assert_eq!(check_ops(&late, MAX_STEPS).0, Verdict::Linearizable);
        let never = [
            op(RegOp::Write(1), 0, None),
            op(RegOp::Read(None), 4, Some(5)),
        ];
        assert_eq!(check_ops(&never, MAX_STEPS).0, Verdict::Linearizable);
        // But never before its invoke.
        let early = [
            op(RegOp::Read(Some(1)), 0, Some(1)),
            op(RegOp::Write(1), 2, None),
        ];
        assert_eq!(check_ops(&early, MAX_STEPS).0, Verdict::Violation);
    }

    #[test]
    fn a_tiny_bound_gives_unknown_not_a_guess() {
        let ops: Vec<Operation> = (0..20)
            .map(|i| op(RegOp::Write(i), 0, Some(100)))
            .chain([op(RegOp::Read(Some(999)), 101, Some(102))])
            .collect();
        assert_eq!(check_ops(&ops, 10).0, Verdict::Unknown);
    }

    #[test]
    fn history_events_are_grouped_by_key_and_failed_writes_dropped() {
        use crate::history::{Op, Recorder};
        let rec = Recorder::in_memory();
        let rec_op = |p: u64, kind: EventType, f: OpFn, key: &str, v: Option<u64>| {
            let mut o = Op::new(p, kind, f);
            o.key = Some(key.into());
            o.value = v.map(Value::Int);
            o.consistency = Some(Consistency::Strong);
            rec.record(o);
        };
        rec_op(1, EventType::Invoke, OpFn::Write, "a", Some(1));
        rec_op(1, EventType::Fail, OpFn::Write, "a", Some(1));
        rec_op(2, EventType::Invoke, OpFn::Read, "a", None);
        rec_op(2, EventType::Ok, OpFn::Read, "a", None);
        rec_op(1, EventType::Invoke, OpFn::Write, "b", Some(5));
        rec_op(1, EventType::Ok, OpFn::Write, "b", Some(5));
        rec_op(2, EventType::Invoke, OpFn::Write, "b", Some(6));
        rec_op(2, EventType::Ok, OpFn::Write, "b", Some(6));
        rec_op(3, EventType::Invoke, OpFn::Read, "b", None);
        rec_op(3, EventType::Ok, OpFn::Read, "b", Some(5));
        let res = check(&rec.events(), MAX_STEPS);
        assert_eq!(res.len(), 2);
        assert_eq!(res[0].key, "a");
        assert_eq!(res[0].verdict, Verdict::Linearizable);
        assert_eq!(res[0].operations, 1);
        assert_eq!(res[1].verdict, Verdict::Violation);
    }

    /// A sequential register execution: ops at linearization points
    /// 10, 20, 30, ...; each gets an interval around its point.
    fn sequential() -> impl Strategy<Value = Vec<Operation>> {
        proptest::collection::vec((any::<bool>(), 0u64..40, 0u64..40, 0u8..6), 1..40).prop_map(
            |specs| {
                let mut state = None;
                let mut out = Vec::new();
                for (i, (is_write, before, after, fate)) in specs.into_iter().enumerate() {
                    let point = 10 * (i as u64 + 1) + 50;
                    let call = point - before;
                    let ret = point + after;
                    if is_write {
                        let v = i as u64 + 1;
                        state = Some(v);
                        // A sixth of the writes have an unknown outcome.
                        let ret = if fate == 0 { None } else { Some(ret) };
                        out.push(op(RegOp::Write(v), call, ret));
                    } else {
                        out.push(op(RegOp::Read(state), call, Some(ret)));
                    }
                }
                out
            },
        )
    }

    /// Brute force: some subset of the unknown writes took effect, in some
    /// order respecting real time, and the register model accepts it.
    fn brute_force(ops: &[Operation]) -> bool {
        let unknown: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].ret.is_none()).collect();
        for mask in 0u32..(1 << unknown.len()) {
            let chosen: Vec<usize> = (0..ops.len())
                .filter(|&i| match unknown.iter().position(|&u| u == i) {
                    Some(k) => mask & (1 << k) != 0,
                    None => true,
                })
                .collect();
            if permute(
                ops,
                &chosen,
                &mut Vec::new(),
                &mut vec![false; ops.len()],
                None,
            ) {
                return true;
            }
        }
        false
    }

    fn permute(
        ops: &[Operation],
        chosen: &[usize],
        order: &mut Vec<usize>,
        used: &mut Vec<bool>,
        state: Option<u64>,
    ) -> bool {
        if order.len() == chosen.len() {
            return true;
        }
        for &i in chosen {
            if used[i] {
                continue;
            }
            // Every unused chosen op that returned before i was invoked
            // must come first.
            let blocked = chosen
                .iter()
                .any(|&j| !used[j] && j != i && ops[j].ret.is_some_and(|r| r < ops[i].call));
            if blocked {
                continue;
            }
            let Some(next) = step(state, ops[i].op) else {
                continue;
            };
            used[i] = true;
            order.push(i);
            if permute(ops, chosen, order, used, next) {
                return true;
            }
            order.pop();
            used[i] = false;
        }
        false
    }

    /// Small random histories: writes of unique values (some unknown),
    /// reads of any written value or absent, random intervals.
    fn small_history() -> impl Strategy<Value = Vec<Operation>> {
        proptest::collection::vec((any::<bool>(), 0u64..20, 1u64..8, 0u8..4, 0u64..5), 1..7)
            .prop_map(|specs| {
                let writes = specs.iter().filter(|s| s.0).count() as u64;
                specs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (is_write, call, len, fate, read))| {
                        let (call, ret) = (call * 2, call * 2 + len * 2 + 1);
                        if is_write {
                            let ret = if fate == 0 { None } else { Some(ret) };
                            op(RegOp::Write(100 + i as u64), call, ret)
                        } else {
                            let got = (read < writes.max(1) + 1)
                                .then_some(read)
                                .filter(|&r| r > 0)
                                .map(|r| 100 + r - 1);
                            op(RegOp::Read(got), call, Some(ret))
                        }
                    })
                    .collect()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        /// The search (with the reduction of unknown writes) agrees with a
        /// brute-force enumeration on small histories.
        #[test]
        fn the_search_agrees_with_brute_force(ops in small_history()) {
            let (v, _, _) = check_ops(&ops, MAX_STEPS);
            let expected = if brute_force(&ops) { Verdict::Linearizable } else { Verdict::Violation };
            prop_assert_eq!(v, expected, "{:?}", ops);
        }
    }

    #[test]
    fn many_unknown_writes_no_longer_explode_the_search() {
        // 60 unknown writes never read (timeouts during a pause: concurrent
        // with everything after them), and 40 unknown writes each read soon
        // after: before the reduction, every one stayed open to the end.
        let mut ops: Vec<Operation> = (0..60).map(|i| op(RegOp::Write(i), i, None)).collect();
        for k in 0..40u64 {
            let t = 100 + 10 * k;
            ops.push(op(RegOp::Write(1_000 + k), t, None));
            ops.push(op(RegOp::Read(Some(1_000 + k)), t + 2, Some(t + 3)));
        }
        let (v, steps, _) = check_ops(&ops, MAX_STEPS);
        assert_eq!(v, Verdict::Linearizable);
        assert!(steps < 10_000, "{steps} steps");
        // A read of a value overwritten by a completed write after the
        // first read of it is still caught.
        ops.push(op(RegOp::Write(5_000), 600, Some(601)));
        ops.push(op(RegOp::Read(Some(1_000)), 602, Some(603)));
        assert_eq!(check_ops(&ops, MAX_STEPS).0, Verdict::Violation);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn histories_of_a_sequential_register_are_linearizable(ops in sequential()) {
            let (v, _, _) = check_ops(&ops, MAX_STEPS);
            prop_assert_eq!(v, Verdict::Linearizable);
        }

        #[test]
        fn a_read_of_an_overwritten_value_is_not_linearizable(
            ops in sequential(),
            pick in any::<proptest::sample::Index>(),
        ) {
            let end = ops.iter().map(|o| o.ret.unwrap_or(o.call)).max().unwrap_or(0);
            let acked: Vec<u64> = ops
                .iter()
                .filter_map(|o| match (o.op, o.ret) {
                    (RegOp::Write(v), Some(_)) => Some(v),
                    _ => None,
                })
                .collect();
            let mut ops = ops;
            let stale = if acked.is_empty() {
                ops.push(op(RegOp::Write(777), end + 1, Some(end + 2)));
                777
            } else {
                acked[pick.index(acked.len())]
            };
            // Overwritten by a write that completed before the read began.
            ops.push(op(RegOp::Write(1_000_000), end + 3, Some(end + 4)));
            ops.push(op(RegOp::Read(Some(stale)), end + 5, Some(end + 6)));
            let (v, _, _) = check_ops(&ops, MAX_STEPS);
            prop_assert_eq!(v, Verdict::Violation);
        }
    }
}
