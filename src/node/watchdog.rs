//! The store watchdog: a plain thread (not a tokio task: when the store
//! wedges, tokio's workers can be stuck in it too) that exits the worker
//! when a store flush has not returned for [`FLUSH_STALL_LIMIT`]. sled does
//! not come back from a failed write on a full disk: its flush waits
//! forever and every read behind it blocks (chaos seed 3, `disk_full`: the
//! node answered nothing for minutes after the disk had space again). A
//! wedged store cannot make anything durable, so the node stops; the
//! supervisor restarts the worker (an unplanned restart) and the reopened
//! store recovers from its log, then catches up from its replicas.
//!
//! The same when flushes keep failing although the disk has room again
//! ([`poisoned`]): sled 0.34 keeps the first write error and returns it
//! from every later flush (the CI run of chaos seed 3: "No space left on
//! device" for 80 s after the full disk was healed, and 307 objects
//! under-replicated at the end). On a disk that is still full the node
//! stays up (reads go on) and the watchdog waits for space.
//!
//! The group commit's flushes are not the only way in: the first error can
//! come through writes alone (object applies, hints, the audit head) with
//! no flush ever failing (CI's next run of seed 3: 381 objects stayed
//! under-replicated). So a second thread probes the store itself (a write
//! and a flush, [`PROBE_EVERY`], only while the disk has room) and its
//! failures and stalls count as the flushes' do.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use plexi_store::objects::FlushRecord;
use plexi_store::NodeStore;

use crate::storage::Storage;

/// A flush running longer than this means the store is wedged (a healthy
/// flush of this store takes milliseconds; a slow disk, seconds).
pub const FLUSH_STALL_LIMIT: Duration = Duration::from_secs(20);
/// How often the watchdog looks.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// The worker's exit code when it stops for a wedged store.
pub const EXIT_STORE_WEDGED: i32 = 75;

/// Flushes failing this long, with [`ROOM_BYTES`] free, mean the store is
/// poisoned.
pub const FLUSH_FAILING_LIMIT: Duration = Duration::from_secs(10);
/// Free space on the data dir's file system that makes a failing store a
/// poisoned one rather than one on a full disk.
pub const ROOM_BYTES: u64 = 64 * 1024 * 1024;

/// How often the probe thread writes and flushes the store while the disk
/// has room.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// The longer of two "for how long" figures (None when neither holds).
fn longest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    a.max(b)
}

/// Free bytes on the file system of `data_dir` (None: unknown).
fn free_bytes(data_dir: &std::path::Path) -> Option<u64> {
    super::health::fs_space(data_dir).ok().map(|(_, free)| free)
}

/// Starts the probe thread: every [`PROBE_EVERY`], while the disk has
/// [`ROOM_BYTES`] free, one write and flush of the store.
fn spawn_probe(store: Arc<NodeStore>, data_dir: PathBuf, probe: Arc<FlushRecord>) {
    let spawned = std::thread::Builder::new()
        .name("store-probe".into())
        .spawn(move || loop {
            std::thread::sleep(PROBE_EVERY);
            if free_bytes(&data_dir).is_none_or(|f| f < ROOM_BYTES) {
                continue; // a full disk fails writes for good reason: wait
            }
            probe.started();
            let res = store.probe();
            if let Err(e) = &res {
                tracing::warn!(error = %e, "store probe failed with room on the disk");
            }
            probe.ended(res.is_ok());
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the store probe");
    }
}

/// Whether flushes failing for `failing` with `free` bytes free on the
/// data dir's file system (None: unknown) mean the store is poisoned.
pub fn poisoned(failing: Option<Duration>, free: Option<u64>) -> bool {
    failing.is_some_and(|d| d >= FLUSH_FAILING_LIMIT) && free.is_some_and(|f| f >= ROOM_BYTES)
}

/// Whether a flush running for `running` means the store is wedged.
pub fn wedged(running: Option<Duration>) -> bool {
    running.is_some_and(|d| d >= FLUSH_STALL_LIMIT)
}

/// Starts the watchdog and probe threads; `data_dir` is where the store
/// lives.
pub fn spawn(storage: Arc<Storage>, store: Arc<NodeStore>, data_dir: PathBuf) {
    let probe = Arc::new(FlushRecord::default());
    spawn_probe(store, data_dir.clone(), probe.clone());
    let spawned = std::thread::Builder::new()
        .name("store-watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(CHECK_EVERY);
            let failing = longest(storage.flush_failing_for(), probe.failing_for());
            if failing.is_some() {
                let free = free_bytes(&data_dir);
                if poisoned(failing, free) {
                    tracing::error!(
                        failing_s = failing.unwrap_or_default().as_secs(),
                        free_bytes = free.unwrap_or_default(),
                        exit_code = EXIT_STORE_WEDGED,
                        "store flushes keep failing although the disk has room: the store is poisoned by an earlier write error; exiting so the supervisor reopens it"
                    );
                    std::process::exit(EXIT_STORE_WEDGED);
                }
            }
            let running = longest(storage.flush_stalled_for(), probe.stalled_for());
            if wedged(running) {
                tracing::error!(
                    stalled_s = running.unwrap_or_default().as_secs(),
                    exit_code = EXIT_STORE_WEDGED,
                    "store flush has not returned: the store is wedged (a failed write on a full or failing disk); exiting so the supervisor reopens it"
                );
                std::process::exit(EXIT_STORE_WEDGED);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the store watchdog");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_flushes_failing_long_with_room_on_disk_are_a_poisoned_store() {
        let long = Some(FLUSH_FAILING_LIMIT);
        assert!(poisoned(long, Some(ROOM_BYTES)));
        assert!(
            !poisoned(None, Some(ROOM_BYTES)),
            "the last flush succeeded"
        );
        assert!(
            !poisoned(
                Some(FLUSH_FAILING_LIMIT - Duration::from_millis(1)),
                Some(1 << 40)
            ),
            "not failing long enough"
        );
        assert!(
            !poisoned(long, Some(ROOM_BYTES - 1)),
            "the disk is still full: wait"
        );
        assert!(!poisoned(long, None), "free space unknown: do not guess");
    }

    #[test]
    fn the_longer_of_two_durations_counts() {
        assert_eq!(
            longest(Some(Duration::from_secs(1)), None),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            longest(Some(Duration::from_secs(1)), Some(Duration::from_secs(3))),
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn only_a_flush_running_past_the_limit_is_wedged() {
        assert!(!wedged(None));
        assert!(!wedged(Some(Duration::from_secs(2))));
        assert!(!wedged(Some(FLUSH_STALL_LIMIT - Duration::from_millis(1))));
        assert!(wedged(Some(FLUSH_STALL_LIMIT)));
    }
}
