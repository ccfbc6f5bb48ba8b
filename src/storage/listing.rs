//! The object listing (`GET /clustering/storage/data?prefix=&after=&limit=`):
//! every reachable member answers a bounded `StoreCall::List` from its local
//! range scan (tombstones included, in id order); the coordinator merges the
//! answers (newest version per id wins, current holders counted), drops
//! deleted objects and cuts the page.
//!
//! A round is exact up to its *horizon*: the smallest last id among the
//! answers that said more entries follow. Every id at or before it was
//! answered by every member holding it, so its newest version and holder
//! count are right; ids past it wait for the next round, which starts at the
//! horizon. A page takes at most [`MAX_LIST_ROUNDS`] rounds (more only when
//! deleted objects fill the rounds); past them it ends early with
//! `next_after` set, never with a wrong answer.
//!
//! Completeness: an object is missed only if every node holding it is
//! unreachable. The listing says `complete` while fewer members are
//! unreachable than the smallest replication factor in play (the default
//! and every factor seen while listing), since each object then keeps a
//! copy on a member that answered. An object written with a factor below
//! both, whose every copy sits on unreachable nodes, is not detectable from
//! the answers (nothing reachable knows it); that is the known limit.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use plexi_api::model::{ObjectList, ObjectSummary};
use plexi_store::objects::ObjectMeta;
use plexi_util::types::ReplicaHealth;

use super::wire::{StoreCall, StoreReply, MAX_LIST};
use super::Storage;

/// Most rounds of calls one page makes (see the module comment).
pub const MAX_LIST_ROUNDS: usize = 8;

/// One member's answer to one `List` call.
#[derive(Clone, Debug)]
pub struct NodeAnswer {
    pub entries: Vec<ObjectMeta>,
    /// More entries follow the last one on that member.
    pub more: bool,
}

/// What one round of answers says, up to its horizon.
#[derive(Clone, Debug, PartialEq)]
pub struct Round {
    /// Live objects (newest version not a tombstone) in id order, each with
    /// its count of current holders.
    pub objects: Vec<(ObjectMeta, u32)>,
    /// The smallest last id of an answer with more to come; `None`:
    /// every answer was whole, the listing ends in this round.
    pub horizon: Option<String>,
    /// Smallest replication factor among every entry seen (tombstones too).
    pub min_rf: Option<u8>,
}

/// Merges one round of answers (pure).
pub fn merge(answers: &[NodeAnswer]) -> Round {
    let horizon = answers
        .iter()
        .filter(|a| a.more)
        .filter_map(|a| a.entries.last().map(|m| m.data_id.clone()))
        .min();
    let mut newest: BTreeMap<&str, (&ObjectMeta, u32)> = BTreeMap::new();
    let mut min_rf: Option<u8> = None;
    for e in answers.iter().flat_map(|a| &a.entries) {
        min_rf = Some(min_rf.map_or(e.replication_factor, |r| r.min(e.replication_factor)));
        if horizon.as_deref().is_some_and(|h| e.data_id.as_str() > h) {
            continue;
        }
        let slot = newest.entry(e.data_id.as_str()).or_insert((e, 0));
        if e.version > slot.0.version {
            *slot = (e, 0);
        }
        if e.version == slot.0.version {
            slot.1 += 1;
        }
    }
    Round {
        objects: newest
            .into_values()
            .filter(|(m, _)| !m.tombstone)
            .map(|(m, n)| (m.clone(), n))
            .collect(),
        horizon,
        min_rf,
    }
}

/// The summary an object gets in the listing.
pub fn summary(meta: &ObjectMeta, holders: u32) -> ObjectSummary {
    let rf = meta.replication_factor as u32;
    ObjectSummary {
        data_id: meta.data_id.clone(),
        data_type: meta.data_type.clone(),
        size_bytes: meta.size_bytes,
        checksum: meta.checksum_hex(),
        version: meta.version.to_text(),
        replication_factor: rf,
        replicas_found: holders,
        replica_health: if holders >= rf {
            ReplicaHealth::Healthy
        } else {
            ReplicaHealth::UnderReplicated
        },
    }
}

/// Builds one page from successive rounds; `ask(after, n)` gives the
/// answers of one round for up to `n` entries after `after` (the network
/// stays in `ask`, so tests drive this with plain lists).
pub async fn page<F, Fut>(after: Option<String>, limit: usize, mut ask: F) -> Page
where
    F: FnMut(Option<String>, u32) -> Fut,
    Fut: std::future::Future<Output = Vec<NodeAnswer>>,
{
    let mut out: Vec<(ObjectMeta, u32)> = Vec::new();
    let mut cursor = after;
    let mut min_rf: Option<u8> = None;
    for _ in 0..MAX_LIST_ROUNDS {
        let need = limit - out.len();
        let round = merge(&ask(cursor.clone(), need as u32).await);
        min_rf = match (min_rf, round.min_rf) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let found = round.objects.len();
        out.extend(round.objects.into_iter().take(need));
        if out.len() == limit {
            let more = found > need || round.horizon.is_some();
            let next_after = more.then(|| out[limit - 1].0.data_id.clone());
            return Page {
                objects: out,
                next_after,
                min_rf,
            };
        }
        match round.horizon {
            None => {
                return Page {
                    objects: out,
                    next_after: None,
                    min_rf,
                }
            }
            Some(h) => cursor = Some(h),
        }
    }
    Page {
        objects: out,
        next_after: cursor,
        min_rf,
    }
}

/// A page before it becomes the API's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    pub objects: Vec<(ObjectMeta, u32)>,
    pub next_after: Option<String>,
    pub min_rf: Option<u8>,
}

/// Whether a listing can have missed an object: only if at least as many
/// members are unreachable as the smallest replication factor in play.
pub fn complete(unreachable: usize, default_rf: u32, min_rf_seen: Option<u8>) -> bool {
    let min_rf = min_rf_seen.map_or(default_rf, |r| (r as u32).min(default_rf));
    unreachable < min_rf.max(1) as usize
}

/// Lists one page of live objects cluster-wide. `limit` is clamped to
/// 1..=[`MAX_LIST`] (the API refuses others before this).
pub async fn list(s: &Arc<Storage>, prefix: &str, after: Option<String>, limit: u32) -> ObjectList {
    let limit = limit.clamp(1, MAX_LIST) as usize;
    let (asked, mut unreachable) = s.members_to_ask();
    let failed = std::sync::Mutex::new(Vec::<String>::new());
    let page = page(after, limit, |cursor, n| {
        let (asked, failed) = (&asked, &failed);
        async move {
            let mut calls: FuturesUnordered<_> = asked
                .iter()
                .filter(|m| !failed.lock().expect("failed lock").contains(&m.name))
                .map(|m| {
                    let call = StoreCall::List {
                        prefix: prefix.to_string(),
                        after: cursor.clone(),
                        limit: n,
                    };
                    async move { (m, s.call(&m.peer_id, call).await) }
                })
                .collect();
            let mut answers = Vec::new();
            while let Some((m, r)) = calls.next().await {
                match r {
                    Ok(StoreReply::List { entries, more }) if entries.len() <= n as usize => {
                        answers.push(NodeAnswer { entries, more })
                    }
                    other => {
                        tracing::warn!(node_id = %m.name, reply = ?other.err(), "listing call failed");
                        failed.lock().expect("failed lock").push(m.name.clone());
                    }
                }
            }
            answers
        }
    })
    .await;
    unreachable.extend(failed.into_inner().expect("failed lock"));
    unreachable.sort();
    unreachable.dedup();
    ObjectList {
        objects: page.objects.iter().map(|(m, n)| summary(m, *n)).collect(),
        next_after: page.next_after,
        complete: complete(
            unreachable.len(),
            s.config.default_replication_factor,
            page.min_rf,
        ),
        unreachable_nodes: unreachable,
    }
}

/// The replica side of `StoreCall::List`: a bounded local range scan.
pub fn local_list(
    s: &Storage,
    prefix: &str,
    after: Option<&str>,
    limit: u32,
) -> Result<StoreReply, String> {
    let max_id = plexi_util::limits::MAX_DATA_ID_BYTES;
    if limit == 0
        || limit > MAX_LIST
        || prefix.len() > max_id
        || after.is_some_and(|a| a.len() > max_id)
    {
        return Err("list call out of bounds".into());
    }
    let mut entries = s
        .engine()
        .list_page(
            prefix.as_bytes(),
            after.map(str::as_bytes),
            limit as usize + 1,
        )
        .map_err(|e| e.to_string())?;
    let more = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    Ok(StoreReply::List { entries, more })
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexi_util::hlc::Version;
    use plexi_util::types::Consistency;

    fn m(id: &str, ms: u64, tombstone: bool, rf: u8) -> ObjectMeta {
        ObjectMeta {
            data_id: id.into(),
            data_type: "t".into(),
            size_bytes: 1,
            checksum: [0; 32],
            version: Version {
                physical_ms: ms,
                logical: 0,
                node: 1,
            },
            replication_factor: rf,
            consistency_level: Consistency::Eventual,
            created_at_ms: ms,
            tombstone,
        }
    }

    fn ids(r: &[(ObjectMeta, u32)]) -> Vec<(&str, u32)> {
        r.iter().map(|(m, n)| (m.data_id.as_str(), *n)).collect()
    }

    #[test]
    fn newest_wins_holders_counted_tombstones_dropped() {
        let a = NodeAnswer {
            entries: vec![m("a", 1, false, 2), m("b", 5, true, 2), m("c", 1, false, 2)],
            more: false,
        };
        let b = NodeAnswer {
            entries: vec![
                m("a", 1, false, 2),
                m("b", 3, false, 2),
                m("c", 2, false, 2),
            ],
            more: false,
        };
        let r = merge(&[a, b]);
        // a: both current; b: deleted on one node (newest) → gone;
        // c: the newer copy is on one node only.
        assert_eq!(ids(&r.objects), vec![("a", 2), ("c", 1)]);
        assert_eq!(r.objects[1].0.version.physical_ms, 2);
        assert_eq!(r.horizon, None);
        assert_eq!(r.min_rf, Some(2));
    }

    #[test]
    fn horizon_is_the_smallest_last_id_of_a_cut_answer() {
        // Node 1 stopped at "b" (more follow); node 2 answered whole, "c"
        // included. "c" is past the horizon: node 1 may hold a newer "c".
        let one = NodeAnswer {
            entries: vec![m("a", 1, false, 2), m("b", 1, false, 2)],
            more: true,
        };
        let two = NodeAnswer {
            entries: vec![m("b", 1, false, 1), m("c", 1, false, 2)],
            more: false,
        };
        let r = merge(&[one, two]);
        assert_eq!(r.horizon.as_deref(), Some("b"));
        assert_eq!(ids(&r.objects), vec![("a", 1), ("b", 2)]);
        assert_eq!(r.min_rf, Some(1));
    }

    /// Members as sorted entry lists; `ask` answers like `local_list`.
    fn cluster(
        nodes: Vec<Vec<ObjectMeta>>,
    ) -> impl Fn(Option<String>, u32) -> std::future::Ready<Vec<NodeAnswer>> {
        move |after, n| {
            let answers = nodes
                .iter()
                .map(|entries| {
                    let mut e: Vec<ObjectMeta> = entries
                        .iter()
                        .filter(|m| after.as_deref().is_none_or(|a| m.data_id.as_str() > a))
                        .take(n as usize + 1)
                        .cloned()
                        .collect();
                    let more = e.len() > n as usize;
                    e.truncate(n as usize);
                    NodeAnswer { entries: e, more }
                })
                .collect();
            std::future::ready(answers)
        }
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn pages_cover_the_set_exactly_despite_tombstones_and_skew() {
        // 40 objects over 3 nodes at RF 2, every 5th deleted (the tombstone
        // on one replica only, the old copy on the other), plus ids only one
        // node has.
        let mut nodes = vec![Vec::new(), Vec::new(), Vec::new()];
        let mut live = Vec::new();
        for i in 0..40u64 {
            let id = format!("k{i:02}");
            let (x, y) = ((i % 3) as usize, ((i + 1) % 3) as usize);
            if i % 5 == 0 {
                nodes[x].push(m(&id, 2, true, 2));
                nodes[y].push(m(&id, 1, false, 2));
            } else if i % 7 == 0 {
                nodes[x].push(m(&id, 1, false, 2));
            } else {
                nodes[x].push(m(&id, 1, false, 2));
                nodes[y].push(m(&id, 1, false, 2));
                live.push(id.clone());
                continue;
            }
            if i % 5 != 0 {
                live.push(id);
            }
        }
        for n in &mut nodes {
            n.sort_by(|a, b| a.data_id.cmp(&b.data_id));
        }
        let ask = cluster(nodes);
        for limit in [1usize, 3, 7, 100] {
            let mut got = Vec::new();
            let mut after = None;
            let mut pages = 0;
            loop {
                let p = run(page(after.clone(), limit, &ask));
                assert!(p.objects.len() <= limit);
                got.extend(p.objects.iter().map(|(m, _)| m.data_id.clone()));
                pages += 1;
                assert!(pages < 100, "listing does not end");
                match p.next_after {
                    Some(a) => after = Some(a),
                    None => break,
                }
            }
            assert_eq!(got, live, "limit {limit}");
        }
        // Holder counts: k07 is on one node only.
        let all = run(page(None, 100, &ask));
        let k07 = all
            .objects
            .iter()
            .find(|(m, _)| m.data_id == "k07")
            .unwrap();
        assert_eq!(k07.1, 1);
        assert_eq!(
            summary(&k07.0, k07.1).replica_health,
            ReplicaHealth::UnderReplicated
        );
        let k01 = all
            .objects
            .iter()
            .find(|(m, _)| m.data_id == "k01")
            .unwrap();
        assert_eq!(
            summary(&k01.0, k01.1).replica_health,
            ReplicaHealth::Healthy
        );
    }

    #[test]
    fn a_page_of_tombstones_ends_early_with_a_cursor() {
        // More deleted entries than MAX_LIST_ROUNDS rounds of 1 can pass.
        let mut n: Vec<ObjectMeta> = (0..20)
            .map(|i| m(&format!("d{i:02}"), 1, true, 2))
            .collect();
        n.push(m("z", 1, false, 2));
        let ask = cluster(vec![n]);
        let p = run(page(None, 1, &ask));
        assert!(p.objects.is_empty());
        let cursor = p.next_after.clone().expect("not the end");
        assert_eq!(cursor, format!("d{:02}", MAX_LIST_ROUNDS - 1));
        let mut after = Some(cursor);
        let mut found = Vec::new();
        while let Some(a) = after {
            let p = run(page(Some(a), 1, &ask));
            found.extend(p.objects.into_iter().map(|(m, _)| m.data_id));
            after = p.next_after;
        }
        assert_eq!(found, vec!["z".to_string()]);
    }

    #[test]
    fn completeness_follows_the_smallest_factor() {
        assert!(complete(0, 1, Some(1)));
        assert!(complete(1, 2, Some(2)));
        assert!(!complete(2, 2, Some(3)));
        assert!(
            !complete(1, 2, Some(1)),
            "an RF-1 object may sit on the lost node"
        );
        assert!(!complete(1, 1, None));
        assert!(complete(2, 3, None));
    }
}
