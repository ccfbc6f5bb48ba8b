//! Replica writes to one peer, coalesced: small objects queued for the same
//! peer go out together in one `PutMany` call, which the replica applies and
//! makes durable with one flush. Every call to a peer is a stream through
//! two swarm tasks and two connection tasks on each side (issue 12's profile:
//! most of a 4 KiB put's CPU was threads waking each other), so a batch of
//! eight costs about what one put did.
//!
//! Owns one queue per peer (bounded: [`MAX_QUEUED_PUTS`]) and the task that
//! drains it. A batch leaves as soon as a slot is free ([`MAX_BATCHES_IN_FLIGHT`]
//! per peer): nothing waits for a batch to fill, so a lone put pays no
//! delay, and puts that arrive while the slots are busy ride together
//! (like the group commit's flushes). A queue idle for [`IDLE`] ends with
//! its task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use plexi_store::objects::ObjectMeta;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::wire::{PutItem, StoreCall, StoreReply, MAX_BATCH_BYTES, MAX_BATCH_PUTS};
use super::Storage;

/// Puts waiting for one peer; past it a writer sends its own call.
pub const MAX_QUEUED_PUTS: usize = 1024;
/// Batches to one peer out at once.
pub const MAX_BATCHES_IN_FLIGHT: usize = 4;
/// Objects at most this large are batched; larger ones go alone.
pub const MAX_BATCHED_OBJECT_BYTES: usize = 64 * 1024;
/// A peer's queue idle this long ends (its task with it).
const IDLE: Duration = Duration::from_secs(30);

/// What a replica answered for one put: `Ok(stored)` as for `Put`.
pub type PutOutcome = Result<bool, String>;

struct Queued {
    item: PutItem,
    reply: oneshot::Sender<PutOutcome>,
}

/// The per-peer queues.
#[derive(Default)]
pub struct Batcher {
    queues: Mutex<HashMap<String, mpsc::Sender<Queued>>>,
}

impl Batcher {
    /// Queues one put for `peer`; `None` when its queue is full or ended
    /// (the caller sends the put alone).
    fn enqueue(
        &self,
        storage: &Arc<Storage>,
        peer: &str,
        item: PutItem,
    ) -> Option<oneshot::Receiver<PutOutcome>> {
        let (reply, rx) = oneshot::channel();
        let tx = {
            let mut queues = self.queues.lock().expect("batch queues lock");
            match queues.get(peer) {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let (tx, queue) = mpsc::channel(MAX_QUEUED_PUTS);
                    queues.insert(peer.to_string(), tx.clone());
                    tokio::spawn(drain(Arc::downgrade(storage), peer.to_string(), queue));
                    tx
                }
            }
        };
        tx.try_send(Queued { item, reply }).ok()?;
        Some(rx)
    }

    /// Forgets `peer`'s queue once its task ended (its channel closed; a
    /// queue opened since stays).
    fn forget_closed(&self, peer: &str) {
        let mut queues = self.queues.lock().expect("batch queues lock");
        if queues.get(peer).is_some_and(|tx| tx.is_closed()) {
            queues.remove(peer);
        }
    }
}

impl Storage {
    /// Sends one small object to a replica inside a batch; Ok once the
    /// replica flushed it.
    pub(super) async fn put_batched(
        self: &Arc<Self>,
        peer: &str,
        meta: &ObjectMeta,
        data: &[u8],
    ) -> PutOutcome {
        let item = PutItem {
            meta: meta.clone(),
            data: data.to_vec(),
        };
        let Some(rx) = self.batcher.enqueue(self, peer, item) else {
            return self.put_alone(peer, meta, data).await;
        };
        match rx.await {
            Ok(Err(e)) if e == SEND_ALONE => self.put_alone(peer, meta, data).await,
            Ok(outcome) => outcome,
            Err(_) => Err("batch dropped; shutting down".into()),
        }
    }

    /// One `Put` call for one object, encoded straight from the borrowed
    /// bytes (one copy: the body).
    pub(super) async fn put_alone(
        self: &Arc<Self>,
        peer: &str,
        meta: &ObjectMeta,
        data: &[u8],
    ) -> PutOutcome {
        let body = plexi_p2p::codec::encode_cbor(&super::wire::PutRef::Put { meta, data })
            .map_err(|e| e.to_string())?;
        match self.call_encoded(peer, "write", body).await? {
            StoreReply::Applied { stored } => Ok(stored),
            other => Err(format!("unexpected reply {other:?}")),
        }
    }

    /// Sends one batch and hands each put its outcome. A peer that does
    /// not know `PutMany` (an older release, mid-update) gets the puts one
    /// by one.
    async fn send_batch(self: &Arc<Self>, peer: &str, batch: Vec<Queued>) {
        let (items, replies): (Vec<PutItem>, Vec<_>) =
            batch.into_iter().map(|q| (q.item, q.reply)).unzip();
        let n = items.len();
        let outcome = match plexi_p2p::codec::encode_cbor(&StoreCall::PutMany { puts: items }) {
            Ok(body) => self.call_encoded(peer, "write", body).await,
            Err(e) => Err(e.to_string()),
        };
        let outcomes: Vec<PutOutcome> = match outcome {
            Ok(StoreReply::AppliedMany(outcomes)) if outcomes.len() == n => outcomes,
            Ok(other) => vec![Err(format!("unexpected reply to a batch: {other:?}")); n],
            Err(e) if e.contains("malformed request") => {
                tracing::debug!(peer, error = %e, "peer takes no batches; puts sent one by one");
                vec![Err(SEND_ALONE.into()); n]
            }
            Err(e) => vec![Err(e); n],
        };
        for (reply, o) in replies.into_iter().zip(outcomes) {
            let _ = reply.send(o);
        }
    }
}

/// What a put in a batch learns when it must go alone after all: the peer
/// does not know batches, or the queue ended with the put still in it.
const SEND_ALONE: &str = "send alone";

/// Takes up to [`MAX_BATCH_PUTS`] queued puts and [`MAX_BATCH_BYTES`] of
/// their bytes, `first` included, without waiting for more.
fn take_batch(first: Queued, queue: &mut mpsc::Receiver<Queued>) -> Vec<Queued> {
    let mut bytes = first.item.data.len();
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH_PUTS && bytes < MAX_BATCH_BYTES {
        match queue.try_recv() {
            Ok(q) => {
                bytes += q.item.data.len();
                batch.push(q);
            }
            Err(_) => break,
        }
    }
    debug_assert!(batch.len() <= MAX_BATCH_PUTS);
    batch
}

/// A peer's queue: a batch leaves whenever one of its slots is free.
async fn drain(storage: Weak<Storage>, peer: String, mut queue: mpsc::Receiver<Queued>) {
    let slots = Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let first = match tokio::time::timeout(IDLE, queue.recv()).await {
            Ok(Some(q)) => q,
            Ok(None) | Err(_) => break,
        };
        let batch = take_batch(first, &mut queue);
        let Some(s) = storage.upgrade() else { break };
        let peer = peer.clone();
        tokio::spawn(async move {
            s.send_batch(&peer, batch).await;
            drop(slot);
        });
    }
    // Puts that slipped in meanwhile: their senders see the channel closed
    // and go alone.
    queue.close();
    while let Ok(q) = queue.try_recv() {
        let _ = q.reply.send(Err(SEND_ALONE.into()));
    }
    if let Some(s) = storage.upgrade() {
        s.batcher.forget_closed(&peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexi_util::hlc::Version;
    use plexi_util::types::Consistency;

    fn queued(bytes: usize) -> (Queued, oneshot::Receiver<PutOutcome>) {
        let (reply, rx) = oneshot::channel();
        let meta = ObjectMeta {
            data_id: "k".into(),
            data_type: "bin".into(),
            size_bytes: bytes as u64,
            checksum: [0; 32],
            version: Version::default(),
            replication_factor: 3,
            consistency_level: Consistency::Eventual,
            created_at_ms: 0,
            tombstone: false,
        };
        let item = PutItem {
            meta,
            data: vec![0; bytes],
        };
        (Queued { item, reply }, rx)
    }

    #[test]
    fn a_batch_takes_what_is_queued_within_its_bounds() {
        let (tx, mut rx) = mpsc::channel(MAX_QUEUED_PUTS);
        // Nothing else queued: the first put leaves alone, at once.
        let (first, _r) = queued(10);
        assert_eq!(take_batch(first, &mut rx).len(), 1);
        // More queued than a batch holds: a full batch, the rest stays.
        let mut keep = Vec::new();
        for _ in 0..MAX_BATCH_PUTS + 5 {
            let (q, r) = queued(10);
            keep.push(r);
            tx.try_send(q).ok().unwrap();
        }
        let (first, _r) = queued(10);
        assert_eq!(take_batch(first, &mut rx).len(), MAX_BATCH_PUTS);
        // The next one: its first and the 6 left over.
        let (first, _r) = queued(10);
        assert_eq!(take_batch(first, &mut rx).len(), 7);
        // Bytes bound a batch too: it stops once past MAX_BATCH_BYTES.
        let big = MAX_BATCHED_OBJECT_BYTES;
        for _ in 0..MAX_BATCH_PUTS {
            let (q, r) = queued(big);
            keep.push(r);
            tx.try_send(q).ok().unwrap();
        }
        let (first, _r) = queued(big);
        let batch = take_batch(first, &mut rx);
        let bytes: usize = batch.iter().map(|q| q.item.data.len()).sum();
        assert_eq!(bytes, MAX_BATCH_BYTES.div_ceil(big) * big);
        assert!(bytes < MAX_BATCH_BYTES + big);
    }
}
