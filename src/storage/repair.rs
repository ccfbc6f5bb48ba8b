//! The loops that heal the cluster without anyone reading the data:
//!
//! - hinted handoff: writes a reachable-again replica missed are re-sent;
//! - anti-entropy: every `anti_entropy_interval_seconds` a node compares its
//!   1024 partition digests with one peer (round robin) and, for partitions
//!   that differ, pushes what the peer owns and lacks and pulls what it owns
//!   and lacks. Because ownership comes from the current placement, the same
//!   pass catches up a restarted node, repairs stale versions, re-replicates
//!   the objects of a node dead longer than `rereplication_delay_seconds`,
//!   and rebalances onto a node that joined. The last only with
//!   `auto_rebalance` (see `rebalance.rs` for which move is which); the
//!   repairs always;
//! - cleanup (every `cleanup_interval_hours`, and on demand): drops replicas
//!   this node no longer owns once every owner confirmed a copy at least as
//!   new (handing them over first, unless that would be rebalancing with
//!   `auto_rebalance` off), purges tombstones past their grace, and scrubs
//!   (re-hashes every local object and replaces corrupt ones from a healthy
//!   replica).
//!
//! - under-replication count (every [`COUNT_EVERY`] anti-entropy ticks):
//!   of the live objects this node owns, how many have fewer current live
//!   replicas than their factor; each object is counted by one node only,
//!   its first current holder in placement order ([`counts_object`]). The
//!   count is gossiped in the node's record and shown as
//!   `plexi_storage_under_replicated_objects`.
//!
//! All traffic is throttled to `repair_mib_per_second` and every pass is
//! bounded in partitions and objects.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plexi_store::objects::{FactorDigest, ObjectMeta, ObjectStore};
use plexi_store::placement::PARTITIONS;
use plexi_store::StoreError;

use super::rebalance::{self, Held, Moves, Transfer};
use super::wire::{StoreCall, StoreReply, MAX_BATCH, MAX_ENTRIES_PARTITIONS};
use super::{Member, Storage};
use plexi_util::clock::wall_ms;

/// Most differing partitions examined with one peer per pass.
const MAX_PARTITIONS_PER_PASS: usize = 128;
/// Every this many anti-entropy ticks, drop copies this node no longer owns.
const HANDOFF_EVERY: usize = 12;
/// Most anti-entropy passes one sync with a peer repeats.
/// Two cycles over every partition.
const MAX_SYNC_PASSES: usize = 2 * PARTITIONS as usize / MAX_PARTITIONS_PER_PASS;
/// Most hints replayed per peer per pass.
const MAX_HINTS_PER_PASS: usize = 256;
/// Every this many anti-entropy ticks, recount under-replicated objects.
const COUNT_EVERY: usize = 4;
/// Most local objects one under-replication count examines.
const MAX_COUNTED_OBJECTS: usize = 100_000;

/// Progress of a running or finished background job (rebalance, cleanup).
#[derive(Debug, Default)]
pub struct Progress {
    pub examined: AtomicU64,
    pub total: AtomicU64,
    pub moved_objects: AtomicU64,
    pub moved_bytes: AtomicU64,
    pub removed: AtomicU64,
    pub repaired: AtomicU64,
    /// Values rewritten under the current data key (re-encryption).
    pub reencrypted: AtomicU64,
}

/// Sleeps as needed to keep `bytes` over the pass under the throttle.
pub(super) struct Throttle {
    started: Instant,
    bytes: u64,
    per_second: u64,
}

impl Throttle {
    pub(super) fn new(per_second: u64) -> Self {
        Throttle {
            started: Instant::now(),
            bytes: 0,
            per_second: per_second.max(1),
        }
    }

    pub(super) async fn spend(&mut self, bytes: u64) {
        self.bytes += bytes;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.per_second as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

/// Bound on the start-up catch-up: after this the node serves reads anyway.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(120);
/// Peers the start-up catch-up syncs with at once (a restarted node is out
/// of service until it is done, so not one after another).
const CATCH_UP_PARALLEL: usize = 8;

/// How long a node that joins a cluster waits, at start, for its first
/// peer (the membership exchange with it brings the whole member list).
const CATCH_UP_VIEW_WAIT: Duration = Duration::from_secs(15);

/// Longest wait, after its first peer, for the rest of the members a
/// restarted node remembers (`peers.json`); a founding node waits this
/// long (at most `anti_entropy_interval`) for anyone at all.
const CATCH_UP_VIEW_SETTLE: Duration = Duration::from_secs(2);

/// How often the start-up view wait looks at membership.
const CATCH_UP_VIEW_POLL: Duration = Duration::from_millis(50);

/// What a start knows of the cluster it is part of.
#[derive(Clone, Copy, Debug, Default)]
pub struct Start {
    /// It joins a cluster (bootstrap addresses, or peers remembered from
    /// an earlier run) rather than founds one.
    pub joins: bool,
    /// Distinct other members `peers.json` remembers alive at the last run.
    pub remembered_peers: usize,
}

/// Whether a start's view of the cluster is settled enough to coordinate
/// strong operations over. A joining node needs a peer, and then either
/// every member it remembers back in its view or `settle` since it
/// started (never later than a fixed wait would be); a founding node waits
/// `settle` for anyone to show up. Pure: the caller brings the clock.
pub fn view_settled(start: Start, peers: usize, since_start: Duration, settle: Duration) -> bool {
    if !start.joins {
        return since_start >= settle;
    }
    if peers == 0 {
        // Never a peer: judged alone only after the long wait.
        return since_start >= CATCH_UP_VIEW_WAIT;
    }
    (start.remembered_peers > 0 && peers >= start.remembered_peers) || since_start >= settle
}

/// Start-up: learn the cluster, then serve strong operations as a
/// coordinator (before, this node's view may hold itself alone, and a
/// strong majority counted over it would be a majority of one: see
/// [`Storage::set_view_ready`]); sync with every reachable peer once (hints
/// they hold for us arrive meanwhile), then serve reads as a replica. A
/// restarted node (a rolling update's) is ready as soon as the members it
/// remembers are back in its view, not after a fixed wait.
async fn catch_up(s: &Arc<Storage>, start: Start) {
    let moves = Moves::automatic(s.config.auto_rebalance);
    let started = Instant::now();
    let settle = s.config.anti_entropy_interval().min(CATCH_UP_VIEW_SETTLE);
    while !view_settled(start, s.peers().len(), started.elapsed(), settle) {
        tokio::time::sleep(CATCH_UP_VIEW_POLL).await;
    }
    tracing::info!(
        peers = s.peers().len(),
        remembered = start.remembered_peers,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "learned the cluster"
    );
    s.set_view_ready();
    let peers: Vec<Member> = s.peers();
    let progress = Progress::default();
    let syncs = async {
        for group in peers.chunks(CATCH_UP_PARALLEL) {
            let syncs = group
                .iter()
                .map(|peer| sync_with(s, peer, &progress, moves));
            for (peer, r) in group.iter().zip(futures::future::join_all(syncs).await) {
                if let Err(e) = r {
                    tracing::debug!(node_id = %peer.name, error = %e, "catch-up pass failed");
                }
            }
        }
    };
    if tokio::time::timeout(CATCH_UP_LIMIT.saturating_sub(started.elapsed()), syncs)
        .await
        .is_err()
    {
        tracing::warn!("catch-up took too long; serving reads anyway");
    }
    s.set_caught_up();
    tracing::info!(
        peers = peers.len(),
        pulled = progress.moved_objects.load(Ordering::Relaxed),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "caught up; serving reads as a replica"
    );
}

/// Starts the background loops; `start`: what this start knows of its
/// cluster (see [`catch_up`]).
pub fn spawn(storage: Arc<Storage>, start: Start) {
    let s = storage.clone();
    tokio::spawn(async move {
        catch_up(&s, start).await;
        let mut tick = tokio::time::interval(s.config.anti_entropy_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut round = 0usize;
        // Per peer, the partition the next pass with it starts at: digests
        // of two nodes differ for good in partitions only one of them owns,
        // so each pass goes on where the last one stopped.
        let mut cursors: HashMap<String, u16> = HashMap::new();
        // Repairs always run; moving data onto nodes that joined only with
        // auto_rebalance (else on POST rebalance).
        let moves = Moves::automatic(s.config.auto_rebalance);
        loop {
            tick.tick().await;
            replay_hints(&s).await;
            if round.is_multiple_of(COUNT_EVERY) {
                match count_under_replicated(&s).await {
                    Ok(n) => {
                        s.metrics.under_replicated.set(n as i64);
                    }
                    Err(e) => tracing::debug!(error = %e, "under-replication count failed"),
                }
            }
            if round % HANDOFF_EVERY == HANDOFF_EVERY - 1 {
                let p = Progress::default();
                if let Err(e) = cleanup_pass(&s, &p, false, moves).await {
                    tracing::debug!(error = %e, "handoff pass failed");
                }
                let removed = p.removed.load(Ordering::Relaxed);
                if removed > 0 {
                    tracing::info!(removed, "dropped replicas this node no longer owns");
                }
            }
            let peers: Vec<Member> = s.peers();
            if !peers.is_empty() {
                let peer = &peers[round % peers.len()];
                round = round.wrapping_add(1);
                cursors.retain(|p, _| peers.iter().any(|m| m.peer_id == *p));
                let start = cursors.get(&peer.peer_id).copied().unwrap_or(0);
                match exchange(&s, peer, &Progress::default(), moves, start).await {
                    Ok(pass) => {
                        cursors.insert(peer.peer_id.clone(), pass.next);
                    }
                    Err(e) => {
                        tracing::debug!(node_id = %peer.name, error = %e, "anti-entropy pass failed")
                    }
                }
            }
        }
    });
    let s = storage;
    tokio::spawn(async move {
        let moves = Moves::automatic(s.config.auto_rebalance);
        let mut tick = tokio::time::interval(s.config.cleanup_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // not at start
        loop {
            tick.tick().await;
            let p = Progress::default();
            match cleanup_pass(&s, &p, true, moves).await {
                Ok(()) => tracing::info!(
                    removed = p.removed.load(Ordering::Relaxed),
                    repaired = p.repaired.load(Ordering::Relaxed),
                    "scheduled cleanup done"
                ),
                Err(e) => tracing::warn!(error = %e, "scheduled cleanup failed"),
            }
        }
    });
}

/// The object's current owners (placement at its own factor).
pub(super) fn owners(s: &Storage, meta: &ObjectMeta, placement: &[Member]) -> Vec<Member> {
    s.replicas_among(&meta.data_id, meta.replication_factor as usize, placement)
}

fn local_object(s: &Storage, data_id: &str) -> Result<Option<(ObjectMeta, Vec<u8>)>, StoreError> {
    s.engine().get(data_id)
}

async fn replay_hints(s: &Arc<Storage>) {
    let store_peers = match s.hinted_peers() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list hints");
            return;
        }
    };
    if store_peers.is_empty() {
        return;
    }
    let members = s.members();
    for peer in store_peers {
        let Some(m) = members.iter().find(|m| m.peer_id == peer) else {
            continue;
        };
        if !m.reachable() {
            continue;
        }
        let ids = s.hints_for(&peer, MAX_HINTS_PER_PASS).unwrap_or_default();
        let mut throttle = Throttle::new(s.config.repair_bytes_per_second());
        for id in ids {
            // The bytes: ours if we hold a replica, else from any replica.
            let obj = match local_object(s, &id) {
                Ok(Some(o)) => Some(o),
                _ => s.get_any(&id).await,
            };
            let done = match obj {
                Some((meta, data)) => {
                    let ok = s.send_object(&peer, &meta, &data).await.is_ok();
                    if ok {
                        s.metrics
                            .repaired(super::RepairSource::Hint, data.len() as u64);
                        throttle.spend(data.len() as u64).await;
                    }
                    ok
                }
                None => true, // nothing to hand off any more
            };
            if done {
                let _ = s.remove_hint(&peer, &id);
            } else {
                break; // try this peer again next pass
            }
        }
    }
}

/// Compares digests with `peer` and exchanges what differs in every
/// partition, in the direction placement says: the repairs, and
/// rebalancing only with `auto_rebalance`.
pub async fn anti_entropy_with(
    s: &Arc<Storage>,
    peer: &Member,
    progress: &Progress,
) -> Result<(), String> {
    sync_with(s, peer, progress, Moves::automatic(s.config.auto_rebalance)).await
}

/// What one pass of [`exchange`] covered.
struct Pass {
    /// Partitions examined.
    examined: usize,
    /// Partitions whose digests differed.
    differing: usize,
    /// Where the next pass with this peer starts.
    next: u16,
}

/// One pass of anti-entropy with `peer` over at most
/// [`MAX_PARTITIONS_PER_PASS`] differing partitions from `start` on, making
/// `moves`; with [`Moves::RepairOnly`] only the moves that repair (see
/// `rebalance.rs`).
async fn exchange(
    s: &Arc<Storage>,
    peer: &Member,
    progress: &Progress,
    moves: Moves,
    start: u16,
) -> Result<Pass, String> {
    let members = s.members();
    let placement = s.placement_members(&members);
    let worth = worth_by_digests(s, peer, &placement).await?;
    let (examined, next) = partitions_from(&worth, start, MAX_PARTITIONS_PER_PASS);
    let pass = Pass {
        examined: examined.len(),
        differing: worth.iter().filter(|w| **w).count(),
        next,
    };
    if examined.is_empty() {
        return Ok(pass);
    }
    let mut throttle = Throttle::new(s.config.repair_bytes_per_second());
    for chunk in examined.chunks(MAX_ENTRIES_PARTITIONS) {
        let theirs_by_partition = their_entries(s, peer, chunk).await?;
        for (&p, their_entries) in chunk.iter().zip(theirs_by_partition) {
            let their: HashMap<String, plexi_util::hlc::Version> =
                their_entries.into_iter().collect();
            let my_entries = s.engine().entries(p).map_err(|e| e.to_string())?;
            // Push: ours is newer or theirs is missing, and they own it.
            let mut push = Vec::new();
            for (id, v) in &my_entries {
                let held = match their.get(id) {
                    Some(tv) if tv >= v => continue,
                    Some(_) => Held::Older,
                    None => Held::Nothing,
                };
                let Ok(Some(meta)) = s.engine().meta(id) else {
                    continue;
                };
                if owners(s, &meta, &placement)
                    .iter()
                    .any(|o| o.peer_id == peer.peer_id)
                {
                    push.push((meta, held));
                }
            }
            let push = allowed(
                s,
                moves,
                &members,
                &placement,
                &peer.peer_id,
                s.local_peer(),
                push,
            )
            .await;
            for meta in push {
                let Ok(Some((meta, data))) = local_object(s, &meta.data_id) else {
                    continue;
                };
                if s.send_object(&peer.peer_id, &meta, &data).await.is_ok() {
                    s.metrics
                        .repaired(super::RepairSource::AntiEntropy, data.len() as u64);
                    progress.moved_objects.fetch_add(1, Ordering::Relaxed);
                    progress
                        .moved_bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    throttle.spend(data.len() as u64).await;
                }
            }
            // Pull: theirs is newer or ours is missing, and we own it.
            let mine_map: HashMap<&str, plexi_util::hlc::Version> =
                my_entries.iter().map(|(id, v)| (id.as_str(), *v)).collect();
            let wanted: Vec<String> = their
                .iter()
                .filter(|(id, tv)| mine_map.get(id.as_str()).is_none_or(|mv| mv < *tv))
                .map(|(id, _)| id.clone())
                .collect();
            for batch in wanted.chunks(MAX_BATCH) {
                let metas = match s
                    .call(
                        &peer.peer_id,
                        StoreCall::Metas {
                            data_ids: batch.to_vec(),
                        },
                    )
                    .await?
                {
                    StoreReply::Metas(m) => m,
                    _ => return Err("bad metas reply".into()),
                };
                let pull: Vec<(ObjectMeta, Held)> = metas
                    .into_iter()
                    .flatten()
                    .map(|(meta, _)| meta)
                    .filter(|meta| {
                        owners(s, meta, &placement)
                            .iter()
                            .any(|o| o.peer_id == s.local_peer())
                    })
                    .map(|meta| {
                        let held = if mine_map.contains_key(meta.data_id.as_str()) {
                            Held::Older
                        } else {
                            Held::Nothing
                        };
                        (meta, held)
                    })
                    .collect();
                let pull = allowed(
                    s,
                    moves,
                    &members,
                    &placement,
                    s.local_peer(),
                    &peer.peer_id,
                    pull,
                )
                .await;
                for meta in pull {
                    if let Ok(Some((meta, data))) =
                        s.fetch_object(&peer.peer_id, &meta.data_id).await
                    {
                        let len = data.len() as u64;
                        if s.apply_durably(meta, data).await.is_ok() {
                            s.metrics.repaired(super::RepairSource::AntiEntropy, len);
                            progress.moved_objects.fetch_add(1, Ordering::Relaxed);
                            progress.moved_bytes.fetch_add(len, Ordering::Relaxed);
                            throttle.spend(len).await;
                        }
                    }
                }
            }
        }
    }
    Ok(pass)
}

/// Which partitions are worth an exchange with `peer` (index =
/// partition): those where, for some replication factor, the two digests
/// of the objects written at that factor differ and placement at that
/// factor lets something move ([`worth_exchanging`]). With a peer that
/// does not know `FactorDigests`, whole partitions at the largest factor.
async fn worth_by_digests(
    s: &Arc<Storage>,
    peer: &Member,
    placement: &[Member],
) -> Result<Vec<bool>, String> {
    let owns = |p: u16, rf: usize| {
        let owners = s.partition_replicas(p, rf, placement);
        let owns = |id: &str| owners.iter().any(|o| o.peer_id == id);
        (owns(s.local_peer()), owns(&peer.peer_id))
    };
    if !knows_not(&s.whole_partition_digests, peer) {
        match s.call(&peer.peer_id, StoreCall::FactorDigests).await {
            Ok(StoreReply::FactorDigests(theirs)) => {
                let mine = s.engine().factor_digests().map_err(|e| e.to_string())?;
                return Ok(worth_by_factor(&mine, &theirs, owns));
            }
            Ok(_) => return Err("bad factor digests reply".into()),
            Err(e) if !e.contains(MALFORMED_CALL) => return Err(e),
            Err(_) => remember_knows_not(
                &s.whole_partition_digests,
                peer,
                "per-factor digests; comparing whole partitions",
            ),
        }
    }
    let theirs = match s.call(&peer.peer_id, StoreCall::Digests).await? {
        StoreReply::Digests(d) if d.len() == PARTITIONS as usize => d,
        _ => return Err("bad digests reply".into()),
    };
    let mine = s.engine().digests().map_err(|e| e.to_string())?;
    // The same rule with every object counted at the largest factor,
    // whose owners contain every object's owners.
    let rf = u8::try_from(s.config.max_replication_factor).unwrap_or(u8::MAX);
    Ok(worth_by_factor(
        &as_factor_digests(&mine, rf),
        &as_factor_digests(&theirs, rf),
        owns,
    ))
}

/// Whole-partition digests as per-factor ones, all at factor `rf` (empty
/// partitions left out, as `factor_digests` leaves them).
fn as_factor_digests(whole: &[[u8; 32]], rf: u8) -> Vec<FactorDigest> {
    (0..PARTITIONS)
        .zip(whole)
        .filter(|(_, d)| **d != EMPTY_DIGEST)
        .map(|(partition, digest)| FactorDigest {
            partition,
            rf,
            digest: *digest,
        })
        .collect()
}

/// [`worth_by_digests`] from both sides' per-factor digests (absent =
/// holds nothing at that factor); `owns(partition, rf)` says whether this
/// node and the peer are among the partition's owners at factor `rf`.
/// Pure.
fn worth_by_factor(
    mine: &[FactorDigest],
    theirs: &[FactorDigest],
    owns: impl Fn(u16, usize) -> (bool, bool),
) -> Vec<bool> {
    let index = |v: &[FactorDigest]| -> HashMap<(u16, u8), [u8; 32]> {
        v.iter()
            .filter(|d| d.partition < PARTITIONS)
            .map(|d| ((d.partition, d.rf), d.digest))
            .collect()
    };
    let (m, t) = (index(mine), index(theirs));
    let mut worth = vec![false; PARTITIONS as usize];
    for &(p, rf) in m.keys().chain(t.keys()) {
        if worth[p as usize] {
            continue;
        }
        let (a, b) = (m.get(&(p, rf)), t.get(&(p, rf)));
        if a == b {
            continue;
        }
        let (i_own, peer_owns) = owns(p, rf.max(1) as usize);
        worth[p as usize] = worth_exchanging(a.is_some(), b.is_some(), i_own, peer_owns);
    }
    worth
}

/// The peer's entries of `partitions` (at most [`MAX_ENTRIES_PARTITIONS`]),
/// in their order: one call, or one per partition with a peer that does
/// not know the batched call (a version before it, during a roll).
async fn their_entries(
    s: &Arc<Storage>,
    peer: &Member,
    partitions: &[u16],
) -> Result<Vec<Vec<(String, plexi_util::hlc::Version)>>, String> {
    if !knows_not(&s.entries_one_by_one, peer) {
        let batched = s
            .call(
                &peer.peer_id,
                StoreCall::EntriesOf {
                    partitions: partitions.to_vec(),
                },
            )
            .await;
        match batched {
            Ok(StoreReply::EntriesOf(e)) if e.len() == partitions.len() => return Ok(e),
            Ok(_) => return Err("bad entries reply".into()),
            Err(e) if !e.contains(MALFORMED_CALL) => return Err(e),
            Err(_) => remember_knows_not(
                &s.entries_one_by_one,
                peer,
                "batched entries; asking per partition",
            ),
        }
    }
    let mut out = Vec::with_capacity(partitions.len());
    for &partition in partitions {
        match s
            .call(&peer.peer_id, StoreCall::Entries { partition })
            .await?
        {
            StoreReply::Entries(e) => out.push(e),
            _ => return Err("bad entries reply".into()),
        }
    }
    Ok(out)
}

/// The objects of one partition that `moves` lets anti-entropy move from
/// `sender` (which holds each at its version) onto `receiver` (an owner
/// lacking it). With [`Moves::RepairOnly`] the current copies are counted:
/// reachable members are asked in the partition's placement order (where
/// the holders a newcomer displaced rank) until each object has `rf`
/// copies other than the receiver's, which makes the move a rebalance.
async fn allowed(
    s: &Arc<Storage>,
    moves: Moves,
    members: &[Member],
    placement: &[Member],
    receiver: &str,
    sender: &str,
    objects: Vec<(ObjectMeta, Held)>,
) -> Vec<ObjectMeta> {
    if moves == Moves::All || objects.iter().all(|(_, h)| *h == Held::Older) {
        return objects.into_iter().map(|(o, _)| o).collect();
    }
    let classify = |(o, held): &(ObjectMeta, Held), holders: &[&str]| {
        rebalance::classify(o.replication_factor as usize, receiver, *held, holders)
    };
    let mut holders: Vec<Vec<&str>> = vec![vec![sender]; objects.len()];
    let ranked = s.replicas_among(&objects[0].0.data_id, placement.len(), placement);
    let others = members
        .iter()
        .filter(|m| !ranked.iter().any(|r| r.peer_id == m.peer_id));
    let asked = ranked
        .iter()
        .chain(others)
        .filter(|m| m.reachable() && m.peer_id != receiver && m.peer_id != sender);
    for m in asked {
        // Objects that are a repair so far, unless more holders turn up.
        let open: Vec<usize> = (0..objects.len())
            .filter(|&i| objects[i].1 == Held::Nothing)
            .filter(|&i| classify(&objects[i], &holders[i]) == Transfer::Repair)
            .collect();
        if open.is_empty() {
            break;
        }
        for chunk in open.chunks(MAX_BATCH) {
            let data_ids = chunk
                .iter()
                .map(|&i| objects[i].0.data_id.clone())
                .collect();
            let Ok(StoreReply::Metas(found)) =
                s.call(&m.peer_id, StoreCall::Metas { data_ids }).await
            else {
                continue;
            };
            for (&i, entry) in chunk.iter().zip(found) {
                if entry.is_some_and(|(meta, _)| meta.version >= objects[i].0.version) {
                    holders[i].push(&m.peer_id);
                }
            }
        }
    }
    let keep: Vec<bool> = objects
        .iter()
        .zip(&holders)
        .map(|(o, h)| moves.allows(classify(o, h)))
        .collect();
    let skipped = keep.iter().filter(|k| !**k).count();
    if skipped > 0 {
        tracing::debug!(
            receiver,
            skipped,
            "auto_rebalance is off: fully replicated objects not moved onto an owner that joined"
        );
    }
    objects
        .into_iter()
        .zip(keep)
        .filter_map(|((o, _), k)| k.then_some(o))
        .collect()
}

/// Whether `peer` is known (from an earlier refusal) not to know a call.
fn knows_not(peers: &std::sync::Mutex<std::collections::HashSet<String>>, peer: &Member) -> bool {
    peers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&peer.peer_id)
}

/// Remembers that `peer` refused a call as malformed (a version before
/// it, during a roll), so it is not asked again and handed strikes.
fn remember_knows_not(
    peers: &std::sync::Mutex<std::collections::HashSet<String>>,
    peer: &Member,
    what: &str,
) {
    tracing::info!(node_id = %peer.name, "peer does not know {what}");
    peers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(peer.peer_id.clone());
}

/// How a peer's refusal of a call it could not decode reads
/// (`plexi_p2p::CallError::Malformed`).
const MALFORMED_CALL: &str = "malformed request";

/// The digest of a partition holding nothing (an XOR over no entries).
const EMPTY_DIGEST: [u8; 32] = [0; 32];

/// Whether a partition whose digests differ between this node and a peer
/// is worth an exchange: a push needs the peer to own it and this node to
/// hold something in it, a pull the reverse. Anything else (a partition
/// only one side owns, the other holding nothing) would be examined on
/// every pass and never move anything. Ownership is the placement at the
/// largest factor, which contains every object's owners.
fn worth_exchanging(mine_holds: bool, theirs_holds: bool, i_own: bool, peer_owns: bool) -> bool {
    (peer_owns && mine_holds) || (i_own && theirs_holds)
}

/// Up to `max` partitions marked in `worth`, scanning from `start` and
/// wrapping around; and where the next scan should start: after the last
/// one taken when the bound cut the scan short, else at `start` again.
fn partitions_from(worth: &[bool], start: u16, max: usize) -> (Vec<u16>, u16) {
    let start = start % PARTITIONS;
    let differing: Vec<u16> = (0..PARTITIONS)
        .map(|i| (start + i) % PARTITIONS)
        .filter(|&p| worth[p as usize])
        .take(max + 1)
        .collect();
    if differing.len() <= max {
        return (differing, start);
    }
    let next = differing[max];
    (differing[..max].to_vec(), next)
}

/// Anti-entropy with `peer`, pass after pass, until every differing
/// partition was examined once with nothing moved (at most
/// [`MAX_SYNC_PASSES`], since one pass handles a bounded number of partitions).
async fn sync_with(
    s: &Arc<Storage>,
    peer: &Member,
    progress: &Progress,
    moves: Moves,
) -> Result<(), String> {
    let mut start = 0;
    // Partitions examined since something last moved.
    let mut quiet = 0;
    for _ in 0..MAX_SYNC_PASSES {
        let before = progress.moved_objects.load(Ordering::Relaxed);
        let pass = exchange(s, peer, progress, moves, start).await?;
        if progress.moved_objects.load(Ordering::Relaxed) == before {
            quiet += pass.examined;
        } else {
            quiet = 0;
        }
        if quiet >= pass.differing {
            break;
        }
        start = pass.next;
    }
    Ok(())
}

/// A full rebalance pass (a rebalance job: every move, whatever
/// `auto_rebalance` says): anti-entropy with every reachable peer, then
/// cleanup of what this node no longer owns.
pub async fn rebalance(s: &Arc<Storage>, progress: &Progress) -> Result<(), String> {
    let peers: Vec<Member> = s.peers();
    // The whole job's size up front, so progress only grows.
    progress
        .total
        .store(peers.len() as u64 + PARTITIONS as u64, Ordering::Relaxed);
    for peer in &peers {
        sync_with(s, peer, progress, Moves::All).await?;
        progress.examined.fetch_add(1, Ordering::Relaxed);
    }
    cleanup_pass(s, progress, true, Moves::All).await
}

/// A cleanup job: drops replicas this node no longer owns (once every owner
/// holds a copy at least as new, handed over first where missing), purges
/// old tombstones, scrubs local bytes.
pub async fn cleanup(s: &Arc<Storage>, progress: &Progress) -> Result<(), String> {
    progress.total.store(PARTITIONS as u64, Ordering::Relaxed);
    cleanup_pass(s, progress, true, Moves::All).await
}

/// `full`: also purge tombstones and scrub; otherwise only hand off and drop
/// replicas this node no longer owns (the automatic half of a rebalance).
/// With [`Moves::RepairOnly`] a copy is never handed to an owner lacking it
/// (that would move data onto a node that joined); it is dropped only once
/// every owner already holds one.
async fn cleanup_pass(
    s: &Arc<Storage>,
    progress: &Progress,
    full: bool,
    moves: Moves,
) -> Result<(), String> {
    let placement = s.placement_members(&s.members());
    let grace_ms = s.config.tombstone_grace().as_millis() as u64;
    let now = wall_ms();
    for p in 0..PARTITIONS {
        let entries = s.engine().entries(p).map_err(|e| e.to_string())?;
        for (id, v) in entries {
            let meta = match s.engine().meta(&id) {
                Ok(Some(m)) => m,
                _ => continue,
            };
            if full && meta.tombstone && meta.version.physical_ms + grace_ms < now {
                if s.engine().remove_if(&id, v).unwrap_or(false) {
                    progress.removed.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            let owners = owners(s, &meta, &placement);
            let i_own = owners.iter().any(|o| o.peer_id == s.local_peer());
            if !i_own {
                if owners.len() < meta.replication_factor as usize
                    || owners.iter().any(|o| !o.reachable())
                {
                    continue; // keep our copy until every owner can confirm
                }
                let mut confirmed = true;
                for o in &owners {
                    let ok = matches!(
                        s.call(&o.peer_id, StoreCall::Metas { data_ids: vec![id.clone()] }).await,
                        Ok(StoreReply::Metas(ref m)) if m.first().and_then(|x| x.as_ref()).is_some_and(|(om, _)| om.version >= v)
                    );
                    if !ok && moves == Moves::RepairOnly {
                        confirmed = false;
                    } else if !ok {
                        // Hand it over before we let go.
                        let handed = match local_object(s, &id) {
                            Ok(Some((meta, data))) => {
                                s.send_object(&o.peer_id, &meta, &data).await.is_ok()
                            }
                            _ => false,
                        };
                        confirmed &= handed;
                    }
                }
                if confirmed && s.engine().remove_if(&id, v).unwrap_or(false) {
                    progress.removed.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            if full && !meta.tombstone {
                scrub_one(s, &id, &meta, &owners, progress).await;
            }
        }
        progress.examined.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// What one owner of an object holds, as a count pass sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct OwnerCopy {
    /// This node.
    pub me: bool,
    /// Alive or suspect: its copy counts as live.
    pub reachable: bool,
    /// Its version and tombstone flag, if it holds one (unknown = none).
    pub held: Option<(plexi_util::hlc::Version, bool)>,
}

/// Whether this node counts an object as under-replicated: its owners (in
/// placement order) hold fewer current live copies than `rf`, the current
/// version is not a tombstone, and this node is the first owner holding
/// it, so that exactly one node counts each object.
pub(super) fn counts_object(rf: usize, owners: &[OwnerCopy]) -> bool {
    let live = || owners.iter().filter(|o| o.reachable);
    let Some((newest, tombstone)) = live().filter_map(|o| o.held).max() else {
        return false;
    };
    if tombstone {
        return false;
    }
    let current: Vec<&OwnerCopy> = live()
        .filter(|o| o.held.map(|h| h.0) == Some(newest))
        .collect();
    current.len() < rf && current.first().is_some_and(|o| o.me)
}

/// Counts the objects this node must count as under-replicated (see
/// [`counts_object`]): asks every other live owner of its objects for their
/// versions, in batches of [`MAX_BATCH`]. An owner that does not answer
/// holds no live copy as far as this count goes.
async fn count_under_replicated(s: &Arc<Storage>) -> Result<u64, String> {
    let placement = s.placement_members(&s.members());
    let me = s.local_peer().to_string();
    let metas = s
        .engine()
        .census(MAX_COUNTED_OBJECTS)
        .map_err(|e| e.to_string())?;
    let mut asks: HashMap<String, Vec<String>> = HashMap::new();
    let mut mine = Vec::new();
    // Placement is per partition and factor: asked once for each, shared
    // by its objects (once per object it held a list of members per
    // object for the whole pass: 20 MiB at 400 000 objects, heaptrack).
    let mut by_partition: HashMap<(u16, usize), Arc<Vec<Member>>> = HashMap::new();
    for m in metas.into_iter().filter(|m| !m.tombstone) {
        let rf = m.replication_factor as usize;
        let partition = plexi_store::placement::partition_of(&m.data_id);
        let owners = by_partition
            .entry((partition, rf))
            .or_insert_with(|| Arc::new(s.partition_replicas(partition, rf, &placement)))
            .clone();
        if !owners.iter().any(|o| o.peer_id == me) {
            continue; // a copy this node does not own: its owners count it
        }
        for o in owners.iter().filter(|o| o.peer_id != me && o.reachable()) {
            asks.entry(o.peer_id.clone())
                .or_default()
                .push(m.data_id.clone());
        }
        mine.push((m, owners));
    }
    let mut held: HashMap<(String, String), (plexi_util::hlc::Version, bool)> = HashMap::new();
    for (peer, ids) in asks {
        for chunk in ids.chunks(MAX_BATCH) {
            let call = StoreCall::Metas {
                data_ids: chunk.to_vec(),
            };
            let Ok(StoreReply::Metas(answers)) = s.call(&peer, call).await else {
                break; // unreachable: none of its copies count
            };
            for (id, a) in chunk.iter().zip(answers) {
                if let Some((om, _)) = a {
                    held.insert((peer.clone(), id.clone()), (om.version, om.tombstone));
                }
            }
        }
    }
    let count = mine
        .iter()
        .filter(|(m, owners)| {
            let copies: Vec<OwnerCopy> = owners
                .iter()
                .map(|o| OwnerCopy {
                    me: o.peer_id == me,
                    reachable: o.peer_id == me || o.reachable(),
                    held: if o.peer_id == me {
                        Some((m.version, m.tombstone))
                    } else {
                        held.get(&(o.peer_id.clone(), m.data_id.clone())).copied()
                    },
                })
                .collect();
            counts_object(m.replication_factor as usize, &copies)
        })
        .count();
    Ok(count as u64)
}

/// Re-hashes one local object; a corrupt replica is replaced from another.
pub(super) async fn scrub_one(
    s: &Arc<Storage>,
    id: &str,
    meta: &ObjectMeta,
    owners: &[Member],
    progress: &Progress,
) {
    match s.engine().get(id) {
        Ok(_) => {}
        Err(e) if e.is_bad_replica() => {
            s.metrics.corrupt_found();
            tracing::warn!(data_id = id, error = %e, "scrub found a replica it cannot serve; replacing it");
            replace_bad_replica(s, id, meta, owners, progress).await;
        }
        Err(e) => tracing::warn!(data_id = id, error = %e, "scrub read failed"),
    }
}

/// Replaces this node's copy of `id` (at `meta`'s version), which it cannot
/// serve, by a copy at that version or newer from another owner. True when
/// replaced.
pub(super) async fn replace_bad_replica(
    s: &Arc<Storage>,
    id: &str,
    meta: &ObjectMeta,
    owners: &[Member],
    progress: &Progress,
) -> bool {
    for o in owners
        .iter()
        .filter(|o| o.peer_id != s.local_peer() && o.reachable())
    {
        if let Ok(Some((good, data))) = s.fetch_object(&o.peer_id, id).await {
            let len = data.len() as u64;
            if good.version >= meta.version
                && s.engine().remove_if(id, meta.version).is_ok()
                && s.apply_durably(good, data).await.is_ok()
            {
                progress.repaired.fetch_add(1, Ordering::Relaxed);
                s.metrics.repaired(super::RepairSource::Scrub, len);
                return true;
            }
        }
    }
    tracing::error!(
        data_id = id,
        "no healthy replica to replace a corrupt one with"
    );
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexi_util::hlc::Version;

    fn v(ms: u64) -> Version {
        Version {
            physical_ms: ms,
            logical: 0,
            node: 0,
        }
    }

    #[test]
    fn a_restarted_node_settles_its_view_once_the_members_it_remembers_are_back() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let settle = s(2);
        let rejoin = Start {
            joins: true,
            remembered_peers: 4,
        };
        // No peer yet: not settled, until the long wait says alone.
        assert!(!view_settled(rejoin, 0, ms(300), settle));
        assert!(!view_settled(rejoin, 0, s(14), settle));
        assert!(view_settled(rejoin, 0, CATCH_UP_VIEW_WAIT, settle));
        // Some of them: not yet; all of them: at once, long before settle.
        assert!(!view_settled(rejoin, 3, ms(400), settle));
        assert!(view_settled(rejoin, 4, ms(400), settle));
        assert!(view_settled(rejoin, 5, ms(400), settle));
        // One stays away (dead, a batch-mate restarting): settle bounds it.
        assert!(!view_settled(rejoin, 3, ms(1999), settle));
        assert!(view_settled(rejoin, 3, settle, settle));
        // A first join remembers nobody: settle, as long as it has a peer.
        let first_join = Start {
            joins: true,
            remembered_peers: 0,
        };
        assert!(!view_settled(first_join, 7, s(1), settle));
        assert!(view_settled(first_join, 7, settle, settle));
        assert!(!view_settled(first_join, 0, s(3), settle));
        // A founder waits settle for anyone, then is on its own.
        let founds = Start::default();
        assert!(!view_settled(founds, 0, ms(1999), settle));
        assert!(view_settled(founds, 0, settle, settle));
    }

    /// The same owners as seen by owner `i`.
    fn seen_by(i: usize, owners: &[OwnerCopy]) -> Vec<OwnerCopy> {
        owners
            .iter()
            .enumerate()
            .map(|(j, o)| OwnerCopy { me: i == j, ..*o })
            .collect()
    }

    #[test]
    fn partitions_are_compared_per_factor_where_both_own() {
        let d = |partition: u16, rf: u8, b: u8| FactorDigest {
            partition,
            rf,
            digest: [b; 32],
        };
        // Ownership: at factor 3 both own every partition; at factor 5 only
        // this node owns partition 2's objects... and at factor 1 only the
        // peer owns partition 4's.
        let owns = |p: u16, rf: usize| match (p, rf) {
            (4, 1) => (false, true),
            (2, 5) => (true, false),
            _ => (true, true),
        };
        let mine = [d(1, 3, 7), d(2, 3, 7), d(2, 5, 9), d(3, 3, 1), d(5, 3, 1)];
        let theirs = [d(1, 3, 7), d(2, 3, 7), d(3, 3, 2), d(4, 1, 1), d(6, 3, 1)];
        let worth = worth_by_factor(&mine, &theirs, owns);
        let marked: Vec<usize> = (0..worth.len()).filter(|&p| worth[p]).collect();
        // 1: equal. 2: equal at 3; at 5 only mine, and the peer owns none of
        // those (the difference that stays for good): skip. 3: differ, both
        // own. 4: theirs at 1, which only they own: nothing to move. 5: mine
        // only, they own it: push. 6: theirs only, I own it: pull.
        assert_eq!(marked, vec![3, 5, 6]);
        // Out-of-range partitions from a peer are ignored, not a panic.
        let worth = worth_by_factor(&[], &[d(u16::MAX, 3, 1)], owns);
        assert!(worth.iter().all(|w| !w));
    }

    #[test]
    fn the_first_current_live_holder_counts_a_short_object() {
        let copy = |reachable, held: Option<u64>| OwnerCopy {
            me: false,
            reachable,
            held: held.map(|ms| (v(ms), false)),
        };
        // Three owners, one dead: two live copies of three.
        let owners = [
            copy(false, Some(5)),
            copy(true, Some(5)),
            copy(true, Some(5)),
        ];
        let counters: Vec<bool> = (0..3)
            .map(|i| counts_object(3, &seen_by(i, &owners)))
            .collect();
        assert_eq!(counters, [false, true, false]);
        // Fully replicated: nobody counts it.
        let full = [
            copy(true, Some(5)),
            copy(true, Some(5)),
            copy(true, Some(5)),
        ];
        assert!((0..3).all(|i| !counts_object(3, &seen_by(i, &full))));
        // A stale first owner: the current copies are two, counted by the second.
        let stale = [
            copy(true, Some(4)),
            copy(true, Some(5)),
            copy(true, Some(5)),
        ];
        let counters: Vec<bool> = (0..3)
            .map(|i| counts_object(3, &seen_by(i, &stale)))
            .collect();
        assert_eq!(counters, [false, true, false]);
        // A deleted object (newest is a tombstone) is not counted.
        let mut gone = stale;
        gone[2].held = Some((v(6), true));
        assert!((0..3).all(|i| !counts_object(3, &seen_by(i, &gone))));
        // Fewer owners than the factor (a small cluster).
        let small = [copy(true, Some(5)), copy(true, Some(5))];
        assert!(counts_object(3, &seen_by(0, &small)));
    }

    proptest::proptest! {
        /// Every owner judging the same view: exactly one counts an object
        /// with fewer current live copies than its factor, none counts any
        /// other.
        #[test]
        fn exactly_one_owner_counts_each_short_object(
            rf in 1usize..5,
            owners in proptest::collection::vec(
                (proptest::bool::ANY, proptest::option::of((0u64..3, proptest::bool::ANY))),
                1..6,
            ),
        ) {
            let owners: Vec<OwnerCopy> = owners
                .into_iter()
                .map(|(reachable, held)| OwnerCopy {
                    me: false,
                    reachable,
                    held: held.map(|(ms, t)| (v(ms), t)),
                })
                .collect();
            let newest = owners.iter().filter(|o| o.reachable).filter_map(|o| o.held).max();
            let short = match newest {
                Some((n, false)) => {
                    owners
                        .iter()
                        .filter(|o| o.reachable && o.held.map(|h| h.0) == Some(n))
                        .count()
                        < rf
                }
                _ => false,
            };
            // Only owners holding a copy run the count.
            let counting = (0..owners.len())
                .filter(|&i| owners[i].held.is_some() && owners[i].reachable)
                .filter(|&i| counts_object(rf, &seen_by(i, &owners)))
                .count();
            proptest::prop_assert_eq!(counting, usize::from(short));
        }
    }

    /// Partitions marked in `parts` (in no particular order).
    fn marked(parts: &[u16]) -> Vec<bool> {
        let mut worth = vec![false; PARTITIONS as usize];
        for &p in parts {
            worth[p as usize] = true;
        }
        worth
    }

    /// A partition only one side owns, the other holding nothing, is never
    /// worth an exchange (it would be examined on every pass); one where a
    /// side that holds something meets an owner is.
    #[test]
    fn only_partitions_an_exchange_could_move_are_examined() {
        // (mine holds, theirs holds, I own, peer owns)
        assert!(
            !worth_exchanging(true, false, true, false),
            "only I own it, the peer holds nothing"
        );
        assert!(
            !worth_exchanging(false, true, false, true),
            "only the peer owns it, I hold nothing"
        );
        assert!(
            !worth_exchanging(true, true, false, false),
            "neither owns it (both old owners)"
        );
        assert!(
            worth_exchanging(true, false, false, true),
            "a push: I hold, the peer owns"
        );
        assert!(
            worth_exchanging(false, true, true, false),
            "a pull: the peer holds, I own"
        );
        assert!(
            worth_exchanging(true, true, true, true),
            "both own, and they differ"
        );
    }

    /// Two nodes' digests differ for good in every partition only one of
    /// them owns, so one pass taking the first `max` differing partitions
    /// would never reach the others: successive passes must cover them all.
    #[test]
    fn successive_passes_examine_every_differing_partition() {
        let parts: Vec<u16> = (0..PARTITIONS).filter(|p| p % 3 != 1).collect();
        let worth = marked(&parts);
        let max = 128;
        let passes = parts.len().div_ceil(max);
        let mut seen = std::collections::BTreeSet::new();
        let mut start = 0;
        for _ in 0..passes {
            let (taken, next) = partitions_from(&worth, start, max);
            assert!(taken.len() <= max);
            assert!(taken.iter().all(|p| parts.contains(p)));
            seen.extend(taken);
            start = next;
        }
        assert_eq!(seen.len(), parts.len(), "partitions never examined");
        // Fewer differing than the bound: one pass takes them all, and the
        // next starts where this one did.
        let (taken, next) = partitions_from(&marked(&[3, 1000, 512]), 700, max);
        assert_eq!(taken, vec![1000, 3, 512]);
        assert_eq!(next, 700);
        assert_eq!(partitions_from(&marked(&[]), 5, max), (vec![], 5));
    }
}
