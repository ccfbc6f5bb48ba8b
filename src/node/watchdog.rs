//! The store watchdog: a plain thread (not a tokio task: when the store
//! wedges, tokio's workers can be stuck in it too) that exits the worker
//! when a store flush has not returned for [`FLUSH_STALL_LIMIT`]. sled does
//! not come back from a failed write on a full disk: its flush waits
//! forever and every read behind it blocks (chaos seed 3, `disk_full`: the
//! node answered nothing for minutes after the disk had space again). A
//! wedged store cannot make anything durable, so the node stops; the
//! supervisor restarts the worker (an unplanned restart) and the reopened
//! store recovers from its log, then catches up from its replicas.

use std::sync::Arc;
use std::time::Duration;

use crate::storage::Storage;

/// A flush running longer than this means the store is wedged (a healthy
/// flush of this store takes milliseconds; a slow disk, seconds).
pub const FLUSH_STALL_LIMIT: Duration = Duration::from_secs(20);
/// How often the watchdog looks.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// The worker's exit code when it stops for a wedged store.
pub const EXIT_STORE_WEDGED: i32 = 75;

/// Whether a flush running for `running` means the store is wedged.
pub fn wedged(running: Option<Duration>) -> bool {
    running.is_some_and(|d| d >= FLUSH_STALL_LIMIT)
}

/// Starts the watchdog thread.
pub fn spawn(storage: Arc<Storage>) {
    let spawned = std::thread::Builder::new()
        .name("store-watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(CHECK_EVERY);
            let running = storage.flush_stalled_for();
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
    fn only_a_flush_running_past_the_limit_is_wedged() {
        assert!(!wedged(None));
        assert!(!wedged(Some(Duration::from_secs(2))));
        assert!(!wedged(Some(FLUSH_STALL_LIMIT - Duration::from_millis(1))));
        assert!(wedged(Some(FLUSH_STALL_LIMIT)));
    }
}
