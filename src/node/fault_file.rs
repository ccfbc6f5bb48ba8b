//! The node's side of the test-only fault file (`DATA_DIR/test-faults.json`,
//! see `plexi_util::faults`): in debug builds it is read at start, before
//! any service writes, and then every [`POLL_INTERVAL_MS`]; a changed file is
//! validated and put in force, and each change is logged at `warn` with its
//! values. A malformed file is logged and changes nothing; a removed file
//! clears every fault. A release build never reads it (`start` returns at
//! once) and refuses to start while it exists (checked in `run` and in the
//! supervisor, through `plexi_util::faults::release_refusal`).
//!
//! A torn write aborts the process; the restarted worker must not tear
//! again for the same file, so the spent torn write is remembered in
//! `DATA_DIR/test-faults.torn` (the blake3 of the file that asked for it,
//! as a JSON string),
//! removed with the fault file.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexi_util::faults::{self, Faults, FILE_NAME, MAX_FILE_BYTES, POLL_INTERVAL_MS};

/// Where a spent torn write is remembered.
pub const TORN_MARKER: &str = "test-faults.torn";

/// What the poller last saw.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Absent,
    /// The file's blake3 (hex), applied or refused.
    Content(String),
    /// The file could not be read (the error's text).
    Unreadable(String),
}

struct Poller {
    file: PathBuf,
    marker: PathBuf,
    seen: Seen,
    /// The hash of the file whose torn write is armed (for the marker).
    torn_by: Arc<Mutex<Option<String>>>,
}

/// Reads the file now (so a restarted worker starts with its faults) and
/// polls it from then on. Nothing in a release build.
pub fn start(data_dir: &Path) {
    if !cfg!(debug_assertions) {
        return;
    }
    let torn_by = Arc::new(Mutex::new(None::<String>));
    let marker = data_dir.join(TORN_MARKER);
    {
        let (torn_by, marker) = (torn_by.clone(), marker.clone());
        faults::set_torn_write_hook(Box::new(move || {
            let hash = torn_by.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(hash) = hash {
                if let Err(e) = crate::files::write_json_atomic(&marker, &hash) {
                    tracing::error!(error = %e, path = %marker.display(), "cannot remember the spent torn write");
                }
            }
        }));
    }
    let mut poller = Poller {
        file: data_dir.join(FILE_NAME),
        marker,
        seen: Seen::Absent,
        torn_by,
    };
    poller.poll();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(POLL_INTERVAL_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            poller = match tokio::task::spawn_blocking(move || {
                poller.poll();
                poller
            })
            .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "fault file poller failed; faults stay as they are");
                    return;
                }
            };
        }
    });
}

/// The file's text, `None` when it does not exist. Bounded by
/// [`MAX_FILE_BYTES`] (one byte more is read to tell a bigger file).
fn read_bounded(path: &Path) -> std::io::Result<Option<String>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text)?;
    Ok(Some(text))
}

impl Poller {
    fn poll(&mut self) {
        let text = match read_bounded(&self.file) {
            Ok(t) => t,
            Err(e) => {
                let seen = Seen::Unreadable(e.to_string());
                if seen != self.seen {
                    tracing::warn!(path = %self.file.display(), error = %e, "test-only fault file unreadable; faults unchanged");
                    self.seen = seen;
                }
                return;
            }
        };
        let Some(text) = text else {
            if self.seen != Seen::Absent {
                self.seen = Seen::Absent;
                let _ = std::fs::remove_file(&self.marker);
                self.put_in_force(Faults::NONE, None);
            }
            return;
        };
        let hash = blake3::hash(text.as_bytes()).to_hex().to_string();
        if self.seen == Seen::Content(hash.clone()) {
            return;
        }
        self.seen = Seen::Content(hash.clone());
        match faults::parse(&text) {
            Err(e) => {
                tracing::warn!(path = %self.file.display(), error = %e, "test-only fault file refused; faults unchanged")
            }
            Ok(mut f) => {
                let spent: Option<String> = crate::files::read_json(&self.marker);
                if f.store_torn_write && spent.as_deref() == Some(hash.as_str()) {
                    tracing::warn!("test-only fault file: its torn write was already spent before a restart; not armed again");
                    f.store_torn_write = false;
                }
                self.put_in_force(f, Some(hash));
            }
        }
    }

    fn put_in_force(&mut self, f: Faults, hash: Option<String>) {
        *self.torn_by.lock().unwrap_or_else(|p| p.into_inner()) =
            hash.filter(|_| f.store_torn_write);
        let before = faults::apply(f);
        if before != f {
            tracing::warn!(
                path = %self.file.display(),
                clock_offset_ms = f.clock_offset_ms,
                store_write_error_percent = f.store_write_error_percent,
                store_torn_write = f.store_torn_write,
                net_delay_ms = ?f.net_delay_ms,
                net_loss_percent = f.net_loss_percent,
                net_duplicate_percent = f.net_duplicate_percent,
                "test-only faults changed"
            );
        }
    }
}
