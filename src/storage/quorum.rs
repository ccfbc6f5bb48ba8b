//! The quorum rules of the data path, without I/O: how many replicas a
//! write needs reachable and how many acknowledgements it waits for, whether
//! a strong read heard from a majority, which answer wins and which replicas
//! must be repaired. The async code in `mod.rs` gathers answers and calls
//! these; everything here is decided from its arguments alone.
//!
//! Vocabulary: `rf` is the object's replication factor (total copies);
//! `owners` are the object's placement set at that factor, primary first;
//! the *nominal* owners are that set ranked over every member that has not
//! left, whatever this node's failure detector says, so every node (also
//! one whose view shrank: partitioned, or just resumed from a pause) judges
//! a strong read or write by the same set, and any two majorities of it
//! intersect; an
//! [`Answer`] is what one replica said when asked for the object's metadata
//! (a replica that did not answer has no answer at all).

use plexi_util::hlc::Version;
use plexi_util::types::Consistency;

use super::StorageError;

/// Replica acknowledgements (durable writes) a write waits for before it
/// answers: strong = every one of the `rf` replicas, eventual = one, weak =
/// none (accepted by the coordinator).
pub fn acks_needed(consistency: Consistency, rf: usize) -> usize {
    match consistency {
        Consistency::Strong => rf,
        Consistency::Eventual => rf.min(1),
        Consistency::Weak => 0,
    }
}

/// Whether a write may start with `reachable` of its `rf` placement nodes
/// reachable: strong needs all of them (it could never collect its acks
/// otherwise), eventual and weak need one to send the bytes to.
pub fn check_reachable(
    consistency: Consistency,
    rf: usize,
    reachable: usize,
) -> Result<(), StorageError> {
    if consistency == Consistency::Strong && reachable < rf {
        return Err(StorageError::InsufficientReplicas { rf, reachable });
    }
    if reachable == 0 {
        return Err(StorageError::NoReplicas);
    }
    Ok(())
}

/// A majority of `rf` replicas.
pub fn majority(rf: usize) -> usize {
    rf / 2 + 1
}

/// What one replica answered about an object: the version it holds, or
/// `None` when it holds nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer<'a> {
    pub peer: &'a str,
    pub version: Option<Version>,
}

/// The factor a strong read judges its majority by: the newest answer's
/// own factor, else the configured default; never more than the
/// candidates placement has (a small cluster holds fewer copies).
pub fn strong_read_rf(newest_rf: Option<usize>, default_rf: usize, candidates: usize) -> usize {
    newest_rf
        .unwrap_or(default_rf)
        .min(candidates.max(1))
        .max(1)
}

/// Ok when a majority of `owners` answered (holding a copy or not);
/// otherwise the strong read has no quorum.
pub fn check_strong_read(owners: &[&str], answers: &[Answer]) -> Result<(), StorageError> {
    let rf = owners.len();
    let answered = owners
        .iter()
        .filter(|o| answers.iter().any(|a| a.peer == **o))
        .count();
    let majority = majority(rf);
    if answered < majority {
        return Err(StorageError::NoQuorum {
            consistency: Consistency::Strong,
            majority,
            rf,
            answered,
        });
    }
    Ok(())
}

/// Whether a strong write may start: a majority of its nominal owners
/// must be among the replicas it is about to write (reachable). The write
/// also needs every reachable placement replica ([`check_reachable`]); this
/// is what keeps a node that sees a shrunken cluster (a minority side, or
/// its own view after a pause) from acknowledging a strong write its
/// majority-side readers cannot see.
pub fn check_strong_write(nominal: &[&str], live: &[&str]) -> Result<(), StorageError> {
    let reachable = nominal.iter().filter(|n| live.contains(n)).count();
    if reachable < majority(nominal.len()) {
        return Err(StorageError::InsufficientReplicas {
            rf: nominal.len(),
            reachable,
        });
    }
    Ok(())
}

/// The winning version and the replicas that hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Newest {
    pub version: Version,
    /// Indices into the answers holding `version`, in the answers' order:
    /// the order to fetch the bytes in. Callers pass answers in placement
    /// order, so ties go to the replica placement ranks first.
    pub holders: Vec<usize>,
}

/// The newest version among the answers (last writer wins; versions are
/// totally ordered, so the winner is the same whatever order answers
/// arrived in). `None` when no replica holds a copy.
pub fn newest(answers: &[Answer]) -> Option<Newest> {
    let version = answers.iter().filter_map(|a| a.version).max()?;
    let holders = answers
        .iter()
        .enumerate()
        .filter(|(_, a)| a.version == Some(version))
        .map(|(i, _)| i)
        .collect();
    Some(Newest { version, holders })
}

/// The owners to send `winner` to: those that answered with an older
/// version or with nothing. Owners that did not answer are left to hints and
/// anti-entropy (they cannot be reached now); replicas outside the
/// placement set are never repaired by a read.
pub fn repair_targets<'a>(owners: &[&'a str], answers: &[Answer], winner: Version) -> Vec<&'a str> {
    owners
        .iter()
        .copied()
        .filter(|o| {
            answers
                .iter()
                .find(|a| a.peer == *o)
                .is_some_and(|a| a.version.is_none_or(|v| v < winner))
        })
        .collect()
}

/// Whether a strong read may answer with `winner`: a majority of the
/// nominal `owners` must hold it now, those that answered with it (or
/// newer) and those it was just written back to (`written_back`). This is
/// the write-back half of a majority read (ABD): a version held by a
/// minority (a write that failed part-way, its outcome unknown) may be
/// returned only once a majority has it, or a later strong read through
/// another majority would miss what this one returned.
pub fn check_write_back(
    owners: &[&str],
    answers: &[Answer],
    written_back: &[&str],
    winner: Version,
) -> Result<(), StorageError> {
    let holding = owners
        .iter()
        .filter(|o| {
            written_back.contains(o)
                || answers
                    .iter()
                    .any(|a| a.peer == **o && a.version.is_some_and(|v| v >= winner))
        })
        .count();
    let majority = majority(owners.len());
    if holding < majority {
        return Err(StorageError::WriteBackFailed {
            majority,
            rf: owners.len(),
            holding,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// How strong a consistency level is, weakest first (the declaration
    /// order of `Consistency` is strongest first).
    fn strength(c: Consistency) -> u8 {
        match c {
            Consistency::Weak => 0,
            Consistency::Eventual => 1,
            Consistency::Strong => 2,
        }
    }

    fn v(physical_ms: u64, logical: u32, node: u64) -> Version {
        Version {
            physical_ms,
            logical,
            node,
        }
    }

    #[test]
    fn acks_per_level() {
        assert_eq!(acks_needed(Consistency::Strong, 3), 3);
        assert_eq!(acks_needed(Consistency::Eventual, 3), 1);
        assert_eq!(acks_needed(Consistency::Weak, 3), 0);
        assert_eq!(acks_needed(Consistency::Strong, 1), 1);
    }

    #[test]
    fn a_strong_write_needs_every_replica_reachable() {
        assert_eq!(
            check_reachable(Consistency::Strong, 3, 2),
            Err(StorageError::InsufficientReplicas {
                rf: 3,
                reachable: 2
            })
        );
        assert_eq!(check_reachable(Consistency::Strong, 3, 3), Ok(()));
        assert_eq!(check_reachable(Consistency::Eventual, 3, 1), Ok(()));
        assert_eq!(check_reachable(Consistency::Weak, 3, 1), Ok(()));
        assert_eq!(
            check_reachable(Consistency::Weak, 3, 0),
            Err(StorageError::NoReplicas)
        );
    }

    #[test]
    fn strong_read_majority() {
        let owners = ["a", "b", "c"];
        let one = [Answer {
            peer: "a",
            version: None,
        }];
        assert!(matches!(
            check_strong_read(&owners, &one),
            Err(StorageError::NoQuorum {
                majority: 2,
                rf: 3,
                answered: 1,
                ..
            })
        ));
        // An answer from outside the owners does not count.
        let two = [
            one[0],
            Answer {
                peer: "x",
                version: Some(v(1, 0, 0)),
            },
        ];
        assert!(check_strong_read(&owners, &two).is_err());
        let two = [
            one[0],
            Answer {
                peer: "c",
                version: None,
            },
        ];
        assert_eq!(check_strong_read(&owners, &two), Ok(()));
        assert_eq!(strong_read_rf(Some(5), 3, 3), 3);
        assert_eq!(strong_read_rf(None, 3, 4), 3);
        assert_eq!(strong_read_rf(Some(2), 3, 0), 1);
    }

    #[test]
    fn a_strong_read_answers_only_what_a_majority_holds() {
        let owners = ["a", "b", "c"];
        let new = v(2, 0, 0);
        let answers = [
            Answer {
                peer: "a",
                version: Some(new),
            },
            Answer {
                peer: "b",
                version: Some(v(1, 0, 0)),
            },
        ];
        // Held by a alone: the write-back to b must succeed first.
        assert_eq!(
            check_write_back(&owners, &answers, &[], new),
            Err(StorageError::WriteBackFailed {
                majority: 2,
                rf: 3,
                holding: 1
            })
        );
        assert_eq!(check_write_back(&owners, &answers, &["b"], new), Ok(()));
        // A write-back to a non-owner does not count.
        assert!(check_write_back(&owners, &answers, &["x"], new).is_err());
        // Newer than the winner (a write landed since) counts as holding it.
        let answers = [
            answers[0],
            Answer {
                peer: "c",
                version: Some(v(3, 0, 0)),
            },
        ];
        assert_eq!(check_write_back(&owners, &answers, &[], new), Ok(()));
    }

    proptest! {
        /// Any two strong reads that both pass the write-back rule over
        /// the same owners share an owner holding the first's winner: the
        /// second cannot miss it.
        #[test]
        fn write_back_majorities_intersect(
            first in proptest::collection::vec(any::<bool>(), 5),
            second in proptest::collection::vec(any::<bool>(), 5),
        ) {
            let owners = ["a", "b", "c", "d", "e"];
            let new = v(2, 0, 0);
            let holders = |mask: &[bool]| -> Vec<&str> {
                owners.iter().zip(mask).filter(|(_, m)| **m).map(|(o, _)| *o).collect()
            };
            let (held, asked) = (holders(&first), holders(&second));
            let answers: Vec<Answer> = held
                .iter()
                .map(|p| Answer { peer: p, version: Some(new) })
                .collect();
            if check_write_back(&owners, &answers, &[], new).is_ok()
                && check_strong_read(&owners, &asked.iter().map(|p| Answer { peer: p, version: None }).collect::<Vec<_>>()).is_ok()
            {
                prop_assert!(asked.iter().any(|p| held.contains(p)));
            }
        }
    }

    #[test]
    fn ties_go_to_the_first_in_placement_order() {
        let answers = [
            Answer {
                peer: "a",
                version: Some(v(5, 0, 1)),
            },
            Answer {
                peer: "b",
                version: Some(v(9, 0, 1)),
            },
            Answer {
                peer: "c",
                version: Some(v(9, 0, 1)),
            },
        ];
        let n = newest(&answers).unwrap();
        assert_eq!(n.version, v(9, 0, 1));
        assert_eq!(n.holders, vec![1, 2]);
        assert_eq!(
            repair_targets(&["a", "b", "c", "d"], &answers, n.version),
            vec!["a"]
        );
    }

    fn arb_version() -> impl Strategy<Value = Version> {
        // Few distinct values so that ties happen often.
        (0u64..4, 0u32..3, 0u64..3).prop_map(|(p, l, n)| v(p, l, n))
    }

    const PEERS: [&str; 8] = ["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7"];

    /// Answers from a random subset of peers (each at most once), each
    /// holding a random version or nothing; and a random placement set.
    fn arb_case() -> impl Strategy<Value = (Vec<(usize, Option<Version>)>, Vec<usize>)> {
        (
            proptest::sample::subsequence((0..PEERS.len()).collect::<Vec<_>>(), 0..=PEERS.len())
                .prop_shuffle(),
            proptest::collection::vec(proptest::option::of(arb_version()), PEERS.len()),
            proptest::sample::subsequence((0..PEERS.len()).collect::<Vec<_>>(), 1..=5)
                .prop_shuffle(),
        )
            .prop_map(|(who, versions, owners)| {
                (who.into_iter().map(|i| (i, versions[i])).collect(), owners)
            })
    }

    fn answers_of(case: &[(usize, Option<Version>)]) -> Vec<Answer<'static>> {
        case.iter()
            .map(|&(i, version)| Answer {
                peer: PEERS[i],
                version,
            })
            .collect()
    }

    /// A node that sees only itself (everyone else dead past the
    /// re-replication delay, as right after a long pause) has a placement
    /// of one: judged by it, a strong read of its own stale copy had a
    /// "majority" (CI chaos seed 1). Judged by the nominal owners it has
    /// none, and a strong write is refused before it starts.
    #[test]
    fn a_shrunken_view_makes_no_strong_majority() {
        let nominal = ["a", "b", "c"];
        let answers = [Answer {
            peer: "a",
            version: None,
        }];
        assert!(check_strong_read(&nominal, &answers).is_err());
        assert!(
            check_strong_read(&nominal[..1], &answers).is_ok(),
            "the old judgement"
        );
        assert!(check_strong_write(&nominal, &["a"]).is_err());
        // A replacement replica does not count for a missing nominal one.
        assert!(check_strong_write(&nominal, &["a", "d", "e"]).is_err());
        assert!(check_strong_write(&nominal, &["a", "c", "d"]).is_ok());
    }

    proptest! {
        #[test]
        fn the_winner_is_never_older_than_any_answer((case, _) in arb_case()) {
            let answers = answers_of(&case);
            match newest(&answers) {
                None => prop_assert!(answers.iter().all(|a| a.version.is_none())),
                Some(n) => {
                    for a in &answers {
                        prop_assert!(a.version.is_none_or(|x| x <= n.version));
                    }
                    // Holders are exactly the answers with the winning
                    // version, in the order given.
                    let want: Vec<usize> = (0..answers.len())
                        .filter(|&i| answers[i].version == Some(n.version))
                        .collect();
                    prop_assert_eq!(&n.holders, &want);
                    prop_assert!(!n.holders.is_empty());
                    // The order answers arrive in does not change the winner.
                    let mut reversed = answers.clone();
                    reversed.reverse();
                    prop_assert_eq!(newest(&reversed).map(|r| r.version), Some(n.version));
                }
            }
        }

        #[test]
        fn repair_targets_are_exactly_the_stale_or_missing_owners((case, owner_ix) in arb_case()) {
            let answers = answers_of(&case);
            let owners: Vec<&str> = owner_ix.iter().map(|&i| PEERS[i]).collect();
            let Some(n) = newest(&answers) else { return Ok(()); };
            let targets = repair_targets(&owners, &answers, n.version);
            for p in PEERS {
                let answer = answers.iter().find(|a| a.peer == p);
                let stale_or_missing = answer.is_some_and(|a| a.version.is_none_or(|x| x < n.version));
                let should = owners.contains(&p) && stale_or_missing;
                prop_assert_eq!(targets.contains(&p), should, "peer {}", p);
            }
            // In placement order, each once.
            let in_order: Vec<&str> = owners.iter().copied().filter(|o| targets.contains(o)).collect();
            prop_assert_eq!(targets, in_order);
        }

        #[test]
        fn acks_needed_grow_with_the_consistency_level(rf in 1usize..16) {
            let mut levels = Consistency::ALL.to_vec();
            levels.sort_by_key(|c| strength(*c));
            for pair in levels.windows(2) {
                prop_assert!(acks_needed(pair[0], rf) <= acks_needed(pair[1], rf));
            }
            for c in Consistency::ALL {
                prop_assert!(acks_needed(*c, rf) <= rf);
                // What a write waits for is never more than it needs reachable.
                prop_assert!(check_reachable(*c, rf, acks_needed(*c, rf).max(1)).is_ok());
            }
            prop_assert_eq!(acks_needed(Consistency::Strong, rf), rf);
        }

        #[test]
        fn a_strong_read_needs_a_majority_of_owners((case, owner_ix) in arb_case()) {
            let answers = answers_of(&case);
            let owners: Vec<&str> = owner_ix.iter().map(|&i| PEERS[i]).collect();
            let answered = owners.iter().filter(|o| answers.iter().any(|a| a.peer == **o)).count();
            prop_assert_eq!(check_strong_read(&owners, &answers).is_ok(), 2 * answered > owners.len());
        }

        /// Whatever view each side has, a strong write and a strong read
        /// that both passed their checks against the nominal owners share a
        /// replica: the write's acknowledgers include a nominal majority
        /// (every live replica acks a strong write), the read heard one.
        #[test]
        fn strong_writes_and_reads_judged_by_nominal_owners_intersect(
            rf in 1usize..6,
            write_live in prop::collection::vec(any::<bool>(), 6),
            read_live in prop::collection::vec(any::<bool>(), 6),
        ) {
            let nominal: Vec<&str> = PEERS.iter().copied().take(rf).collect();
            let w: Vec<&str> = nominal.iter().copied().zip(&write_live).filter(|(_, l)| **l).map(|(p, _)| p).collect();
            let r: Vec<Answer> = nominal.iter().copied().zip(&read_live).filter(|(_, l)| **l)
                .map(|(peer, _)| Answer { peer, version: None }).collect();
            if check_strong_write(&nominal, &w).is_ok() && check_strong_read(&nominal, &r).is_ok() {
                prop_assert!(r.iter().any(|a| w.contains(&a.peer)), "write {:?} read {:?}", w, r);
            }
        }
    }
}
