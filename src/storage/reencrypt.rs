//! The re-encryption job's part on one node: after a data key rotation,
//! rewrite every local value that is plain or sealed under a retired key
//! under the current key, at the repair rate (`repair_mib_per_second`), in
//! batches made durable one by one.
//!
//! Restartable: a value already under the current key is skipped, so a job
//! run again after a crash or a restart only does what is left. A value the
//! node cannot open (a key it no longer holds, corrupt bytes) is replaced
//! from another replica, as scrub does; the new copy is sealed under the
//! current key on arrival. Metadata, versions and digests never change.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use plexi_store::objects::{ObjectStore, Resealed};

use super::repair::{scrub_one, Progress, Throttle};
use super::Storage;

/// Entries read and resealed per batch (one flush each).
pub const RESEAL_BATCH: usize = 256;

/// Runs this node's part; `Err` says why it could not finish.
pub async fn run(s: &Arc<Storage>, progress: &Progress) -> Result<(), String> {
    let engine = s.engine().clone();
    let Some(current) = engine.keyring().current_id() else {
        return Err(
            "no data key on this node (PLEXI_DATA_KEY or node.data_key_file): nothing to seal under"
                .into(),
        );
    };
    progress
        .total
        .store(engine.entry_count() as u64, Ordering::Relaxed);
    tracing::info!(key_id = %current, "re-encryption started");
    let mut throttle = Throttle::new(s.config.repair_bytes_per_second());
    let mut cursor: Option<Vec<u8>> = None;
    let mut unreadable = 0u64;
    loop {
        let e = engine.clone();
        let after = cursor.clone();
        let (ids, next) =
            tokio::task::spawn_blocking(move || e.ids_page(after.as_deref(), RESEAL_BATCH))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        for id in ids {
            let e = engine.clone();
            let one = id.clone();
            let res = tokio::task::spawn_blocking(move || {
                let size = e.meta(&one)?.map(|m| m.size_bytes).unwrap_or(0);
                e.reseal(&one).map(|r| (r, size))
            })
            .await
            .map_err(|e| e.to_string())?;
            match res {
                Ok((Resealed::Rewritten, size)) => {
                    progress.reencrypted.fetch_add(1, Ordering::Relaxed);
                    throttle.spend(size).await;
                }
                Ok((Resealed::Unchanged | Resealed::Superseded, _)) => {}
                Err(err) if err.is_bad_replica() => {
                    tracing::warn!(data_id = %id, error = %err, "re-encryption: value cannot be opened here; replacing it from another replica");
                    let healed = match engine.meta(&id) {
                        Ok(Some(meta)) => {
                            let before = progress.repaired.load(Ordering::Relaxed);
                            scrub_one(s, &id, &meta, &s.peers(), progress).await;
                            progress.repaired.load(Ordering::Relaxed) > before
                        }
                        _ => false,
                    };
                    if !healed {
                        unreadable += 1;
                    }
                }
                Err(err) => return Err(format!("{id}: {err}")),
            }
            progress.examined.fetch_add(1, Ordering::Relaxed);
        }
        let e = engine.clone();
        tokio::task::spawn_blocking(move || e.flush())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    tracing::info!(
        key_id = %current,
        rewritten = progress.reencrypted.load(Ordering::Relaxed),
        unreadable,
        "re-encryption finished"
    );
    if unreadable > 0 {
        return Err(format!(
            "{unreadable} value(s) could not be opened with any data key held here nor replaced from another replica"
        ));
    }
    Ok(())
}
