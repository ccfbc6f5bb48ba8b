//! Complete restoration after a failed switch: the supervisor puts back the
//! pre-update store snapshot and config copy of `backups/<ms>-<op>/` (both
//! opened with the node's data keys when sealed), as a journalled step
//! machine, so a crash at any point is finished at the next supervisor
//! start.
//!
//! ```text
//! releases/restore.json   RestoreJournal {operation_id, snapshot, config_copy, config_file, step}
//! store.restoring         the snapshot being staged (complete once step >= swap)
//! store.replaced          the store that was replaced (removed at done)
//! ```
//!
//! Steps, each written to the journal (tmp + fsync + rename) before it runs,
//! and each safe to run again:
//! `stage` (rebuild `store.restoring` from the snapshot, fsynced) →
//! `swap` (`store` → `store.replaced`, `store.restoring` → `store`, dir
//! fsynced; [`swap_action`] decides from what is on disk) → `config` (the
//! config copy written over the config file, tmp + fsync + rename) →
//! `done` (`store.replaced` removed). A journal not at `done` is resumed by
//! [`resume`]; a `done` journal names the last operation restored, so a
//! rollback repeated after a crash does not restore twice
//! ([`restored`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{releases_dir, sealed, LINKED_VALUES, SEALED_SNAPSHOT};
use crate::files::{
    copy_dir_except, fsync_dir, link_dir, read_json, remove_dir_if_exists, write_json_atomic,
};
use plexi_util::secret::SecretKey;

pub const RESTORE_FILE: &str = "restore.json";
/// The plain config copy the engine's backup step writes.
pub const CONFIG_COPY: &str = "clustering.yml";
const STORE: &str = "store";
const RESTORING: &str = "store.restoring";
const REPLACED: &str = "store.replaced";

/// Where a restore is (the next step to run, or `done`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreStep {
    Stage,
    Swap,
    Config,
    Done,
}

impl RestoreStep {
    pub fn next(self) -> RestoreStep {
        match self {
            RestoreStep::Stage => RestoreStep::Swap,
            RestoreStep::Swap => RestoreStep::Config,
            RestoreStep::Config | RestoreStep::Done => RestoreStep::Done,
        }
    }
}

/// `releases/restore.json`: what is restored from where, and how far it got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreJournal {
    pub operation_id: String,
    /// The store snapshot (`store` or `store.sealed`), if there is one.
    pub snapshot: Option<PathBuf>,
    /// The config copy (`clustering.yml` or `clustering.yml.sealed`).
    pub config_copy: Option<PathBuf>,
    /// The config file the node runs with, written back from the copy.
    pub config_file: Option<PathBuf>,
    pub step: RestoreStep,
}

impl RestoreJournal {
    /// The restore of `backup_dir` (its complete snapshot, sealed preferred,
    /// and its config copy) onto `config_file`.
    pub fn for_backup(
        operation_id: &str,
        backup_dir: &Path,
        config_file: Option<&Path>,
    ) -> RestoreJournal {
        let first = |names: [&str; 2]| {
            names
                .into_iter()
                .map(|n| backup_dir.join(n))
                .find(|p| p.exists())
        };
        RestoreJournal {
            operation_id: operation_id.to_string(),
            snapshot: first([SEALED_SNAPSHOT, STORE]).filter(|p| p.is_dir()),
            config_copy: first([sealed::SEALED_CONFIG, CONFIG_COPY]).filter(|p| p.is_file()),
            config_file: config_file.map(Path::to_path_buf),
            step: RestoreStep::Stage,
        }
    }

    /// Nothing to put back.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && (self.config_copy.is_none() || self.config_file.is_none())
    }
}

/// What the swap step does, from what is on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwapAction {
    /// `store` aside to `store.replaced`, then `store.restoring` in.
    AsideThenIn,
    /// No `store` (first run crashed between the renames, or none existed):
    /// `store.restoring` in.
    In,
    /// No `store.restoring`: the swap already happened.
    AlreadyDone,
}

/// The swap decision (pure): `restoring` and `store` say which of
/// `store.restoring` and `store` exist.
pub fn swap_action(restoring: bool, store: bool) -> SwapAction {
    match (restoring, store) {
        (false, _) => SwapAction::AlreadyDone,
        (true, true) => SwapAction::AsideThenIn,
        (true, false) => SwapAction::In,
    }
}

fn journal_path(data_dir: &Path) -> PathBuf {
    releases_dir(data_dir).join(RESTORE_FILE)
}

/// The journal on disk, if any.
pub fn journal(data_dir: &Path) -> Option<RestoreJournal> {
    read_json(&journal_path(data_dir))
}

/// True when the restore for `operation_id` already finished.
pub fn restored(data_dir: &Path, operation_id: &str) -> bool {
    journal(data_dir).is_some_and(|j| j.operation_id == operation_id && j.step == RestoreStep::Done)
}

/// Runs `journal` from its step to `done`.
pub fn run(data_dir: &Path, journal: RestoreJournal, keys: &[SecretKey]) -> io::Result<()> {
    run_until(data_dir, journal, keys, None)
}

/// Finishes an interrupted restore at supervisor start: `None` when there
/// is none, else its operation and the outcome.
pub fn resume(data_dir: &Path, keys: &[SecretKey]) -> Option<(String, io::Result<()>)> {
    let j = journal(data_dir).filter(|j| j.step != RestoreStep::Done)?;
    let op = j.operation_id.clone();
    Some((op, run(data_dir, j, keys)))
}

/// [`run`], stopping (as a crash would) before `crash_before` when given.
fn run_until(
    data_dir: &Path,
    mut j: RestoreJournal,
    keys: &[SecretKey],
    crash_before: Option<RestoreStep>,
) -> io::Result<()> {
    fs::create_dir_all(releases_dir(data_dir))?;
    loop {
        // `done` is recorded after its cleanup: a crash before it resumes
        // at `config`, which runs again harmlessly.
        if j.step != RestoreStep::Done {
            write_json_atomic(&journal_path(data_dir), &j)?;
        }
        if crash_before == Some(j.step) {
            return Err(io::Error::other("simulated crash"));
        }
        let res = step(data_dir, &j, keys);
        if let Err(e) = res {
            if j.step == RestoreStep::Stage {
                // Nothing was changed yet: drop the journal, keep the store.
                let _ = remove_dir_if_exists(&data_dir.join(RESTORING));
                let _ = crate::files::remove_file_synced(&journal_path(data_dir));
            }
            return Err(e);
        }
        if j.step == RestoreStep::Done {
            return write_json_atomic(&journal_path(data_dir), &j);
        }
        j.step = j.step.next();
    }
}

fn step(data_dir: &Path, j: &RestoreJournal, keys: &[SecretKey]) -> io::Result<()> {
    let incoming = data_dir.join(RESTORING);
    match (j.step, &j.snapshot) {
        (RestoreStep::Stage, Some(snapshot)) => {
            remove_dir_if_exists(&incoming)?;
            let linked = Some(LINKED_VALUES);
            if snapshot.file_name().is_some_and(|n| n == SEALED_SNAPSHOT) {
                sealed::open_dir(snapshot, &incoming, keys, linked)?;
            } else {
                copy_dir_except(snapshot, &incoming, linked)?;
            }
            if snapshot.join(LINKED_VALUES).is_dir() {
                link_dir(
                    &snapshot.join(LINKED_VALUES),
                    &incoming.join(plexi_util::at_rest::VALUES_DIR),
                )?;
            }
            fsync_dir(data_dir)
        }
        (RestoreStep::Swap, Some(_)) => {
            let store = data_dir.join(STORE);
            let replaced = data_dir.join(REPLACED);
            match swap_action(incoming.exists(), store.exists()) {
                SwapAction::AlreadyDone => return Ok(()),
                SwapAction::AsideThenIn => {
                    remove_dir_if_exists(&replaced)?;
                    fs::rename(&store, &replaced)?;
                    fs::rename(&incoming, &store)?;
                }
                SwapAction::In => fs::rename(&incoming, &store)?,
            }
            fsync_dir(data_dir)
        }
        (RestoreStep::Stage | RestoreStep::Swap, None) => Ok(()),
        (RestoreStep::Config, _) => match (&j.config_copy, &j.config_file) {
            (Some(copy), Some(file)) => restore_config(copy, file, keys),
            _ => Ok(()),
        },
        (RestoreStep::Done, _) => remove_dir_if_exists(&data_dir.join(REPLACED)),
    }
}

/// Writes the (opened) config copy over `file`: tmp + fsync + rename +
/// fsync dir, so the file is either the old or the restored one.
fn restore_config(copy: &Path, file: &Path, keys: &[SecretKey]) -> io::Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("config");
    let tmp = dir.join(format!(".{name}.restoring.tmp"));
    if copy.file_name().is_some_and(|n| n == sealed::SEALED_CONFIG) {
        sealed::open_file(copy, &tmp, keys, sealed::SEALED_CONFIG)?;
    } else {
        fs::copy(copy, &tmp)?;
        fs::File::open(&tmp)?.sync_all()?;
    }
    fs::rename(&tmp, file)?;
    fsync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::switch::snapshot_store;

    #[test]
    fn swap_decision() {
        assert_eq!(swap_action(true, true), SwapAction::AsideThenIn);
        assert_eq!(swap_action(true, false), SwapAction::In);
        assert_eq!(swap_action(false, true), SwapAction::AlreadyDone);
        assert_eq!(swap_action(false, false), SwapAction::AlreadyDone);
    }

    #[test]
    fn steps_go_forward_to_done() {
        let mut s = RestoreStep::Stage;
        let mut seen = vec![s];
        while s != RestoreStep::Done {
            s = s.next();
            seen.push(s);
        }
        use RestoreStep::*;
        assert_eq!(seen, [Stage, Swap, Config, Done]);
        assert_eq!(Done.next(), Done);
    }

    /// A data dir with a store, a backup (snapshot + config copy) taken from
    /// it, then a "migration" that changed both.
    fn migrated(d: &Path, key: Option<&SecretKey>) -> (PathBuf, RestoreJournal) {
        fs::create_dir_all(d.join("store/sub")).unwrap();
        fs::create_dir_all(d.join("store/values/ab")).unwrap();
        fs::write(d.join("store/db"), "before").unwrap();
        fs::write(d.join("store/sub/x"), "x").unwrap();
        fs::write(d.join("store/values/ab/v1"), "value one").unwrap();
        let cfg = d.join("clustering.yml");
        fs::write(&cfg, "a: 1\n# comment\n").unwrap();
        let backup = d.join("backups/1-op1");
        fs::create_dir_all(&backup).unwrap();
        match key {
            Some(k) => sealed::seal_file(
                &cfg,
                &backup.join(sealed::SEALED_CONFIG),
                k,
                sealed::SEALED_CONFIG,
            )
            .unwrap(),
            None => {
                fs::copy(&cfg, backup.join(CONFIG_COPY)).unwrap();
            }
        }
        snapshot_store(d, &backup, key).unwrap();
        fs::write(d.join("store/db"), "migrated").unwrap();
        fs::write(d.join("store/marker"), "m").unwrap();
        // The store supersedes value files: new names, old ones removed.
        fs::remove_file(d.join("store/values/ab/v1")).unwrap();
        fs::create_dir_all(d.join("store/values/cd")).unwrap();
        fs::write(d.join("store/values/cd/v2"), "value two").unwrap();
        fs::write(&cfg, "a: 2\n").unwrap();
        let j = RestoreJournal::for_backup("op1", &backup, Some(&cfg));
        assert!(!j.is_empty());
        (cfg, j)
    }

    fn assert_restored(d: &Path, cfg: &Path) {
        assert_eq!(fs::read_to_string(d.join("store/db")).unwrap(), "before");
        assert_eq!(fs::read_to_string(d.join("store/sub/x")).unwrap(), "x");
        assert_eq!(
            fs::read_to_string(d.join("store/values/ab/v1")).unwrap(),
            "value one"
        );
        assert!(!d.join("store/values/cd").exists(), "later value file left");
        assert!(!d.join("store/marker").exists(), "migration marker left");
        assert_eq!(fs::read_to_string(cfg).unwrap(), "a: 1\n# comment\n");
        assert!(!d.join(RESTORING).exists());
        assert!(!d.join(REPLACED).exists());
        assert!(restored(d, "op1"));
        assert!(resume(d, &[]).is_none(), "nothing left to resume");
    }

    #[test]
    fn restores_store_and_config() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (cfg, j) = migrated(d, None);
        run(d, j, &[]).unwrap();
        assert_restored(d, &cfg);
    }

    /// The snapshot links the value files (the same inode: nothing read or
    /// sealed) and seals or copies everything else; with a data key, a
    /// value file not sealed under it (written before the key) is sealed
    /// with the rest. A restore brings both back.
    #[test]
    fn value_files_are_linked_where_already_sealed() {
        use std::os::unix::fs::MetadataExt;
        let key = SecretKey::from_bytes([9; 32]);
        let mut sealed_value = plexi_util::at_rest::sealed_prefix(&key).to_vec();
        sealed_value.extend_from_slice(b"nonce and ciphertext");
        let plain = b"PLAIN-VALUE-7c1d".repeat(100);
        for k in [None, Some(&key)] {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            fs::create_dir_all(d.join("store/values/ab")).unwrap();
            fs::write(d.join("store/db"), "db").unwrap();
            fs::write(d.join("store/values/ab/sealed"), &sealed_value).unwrap();
            fs::write(d.join("store/values/ab/plain"), &plain).unwrap();
            let snap = snapshot_store(d, &d.join("backups/1-op1"), k).unwrap();
            let ino = |p: &Path| fs::metadata(p).unwrap().ino();
            let linked = snap.join(LINKED_VALUES).join("ab");
            assert_eq!(
                ino(&linked.join("sealed")),
                ino(&d.join("store/values/ab/sealed"))
            );
            // Without a key everything is linked; with one, the plain
            // value is sealed into the snapshot, never linked.
            assert_eq!(linked.join("plain").exists(), k.is_none());
            if k.is_some() {
                let copy = fs::read(snap.join("values/ab/plain")).unwrap();
                assert!(!copy.windows(16).any(|w| w == &plain[..16]));
            }
            fs::remove_dir_all(d.join("store/values")).unwrap();
            fs::write(d.join("store/db"), "migrated").unwrap();
            let keys: Vec<SecretKey> = k.into_iter().cloned().collect();
            crate::switch::restore_store(d, &snap, &keys).unwrap();
            assert_eq!(fs::read_to_string(d.join("store/db")).unwrap(), "db");
            let back = d.join("store/values/ab");
            assert_eq!(ino(&back.join("sealed")), ino(&linked.join("sealed")));
            assert_eq!(fs::read(back.join("plain")).unwrap(), plain);
        }
    }

    /// A snapshot an older build took (every file of the store, values
    /// included, sealed into `store.sealed`) restores as before.
    #[test]
    fn a_snapshot_without_linked_values_restores_as_before() {
        let key = SecretKey::from_bytes([9; 32]);
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("store/values/ab")).unwrap();
        fs::write(d.join("store/db"), "db").unwrap();
        fs::write(d.join("store/values/ab/v1"), "value one").unwrap();
        let snap = d.join("backups/1-op1").join(SEALED_SNAPSHOT);
        sealed::seal_dir(&d.join("store"), &snap, &key, None).unwrap();
        fs::remove_dir_all(d.join("store/values")).unwrap();
        crate::switch::restore_store(d, &snap, &[key]).unwrap();
        assert_eq!(
            fs::read_to_string(d.join("store/values/ab/v1")).unwrap(),
            "value one"
        );
    }

    /// A crash before any step (journal written, step not run; before `done`
    /// the journal still says `config`) is finished
    /// by `resume` at the next start, sealed snapshots included.
    #[test]
    fn a_crash_at_any_step_is_finished_at_the_next_start() {
        use RestoreStep::*;
        let key = SecretKey::from_bytes([9; 32]);
        for sealed in [false, true] {
            for at in [Stage, Swap, Config, Done] {
                let dir = tempfile::tempdir().unwrap();
                let d = dir.path();
                let k = sealed.then_some(&key);
                let (cfg, j) = migrated(d, k);
                let keys: Vec<SecretKey> = k.into_iter().cloned().collect();
                assert!(run_until(d, j, &keys, Some(at)).is_err());
                let recorded = if at == Done { Config } else { at };
                assert_eq!(journal(d).unwrap().step, recorded);
                assert!(!restored(d, "op1"));
                let (op, res) = resume(d, &keys).expect("an interrupted restore");
                assert_eq!(op, "op1");
                res.unwrap();
                assert_restored(d, &cfg);
            }
        }
    }

    /// Between the two renames of the swap there is no `store`: resuming
    /// moves the staged copy in.
    #[test]
    fn a_crash_between_the_swap_renames_is_finished() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (cfg, j) = migrated(d, None);
        assert!(run_until(d, j, &[], Some(RestoreStep::Swap)).is_err());
        fs::rename(d.join(STORE), d.join(REPLACED)).unwrap();
        resume(d, &[]).unwrap().1.unwrap();
        assert_restored(d, &cfg);
    }

    /// A sealed snapshot the keys cannot open leaves store, config and
    /// journal as they were before the restore.
    #[test]
    fn a_snapshot_that_does_not_open_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (cfg, j) = migrated(d, Some(&SecretKey::from_bytes([1; 32])));
        let wrong = SecretKey::from_bytes([2; 32]);
        assert!(run(d, j, &[wrong]).is_err());
        assert_eq!(fs::read_to_string(d.join("store/db")).unwrap(), "migrated");
        assert_eq!(fs::read_to_string(&cfg).unwrap(), "a: 2\n");
        assert!(journal(d).is_none());
        assert!(!d.join(RESTORING).exists());
    }

    #[test]
    fn a_backup_without_parts_restores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("backups/op")).unwrap();
        fs::create_dir_all(d.join("backups/op/store.partial")).unwrap();
        let j = RestoreJournal::for_backup("op", &d.join("backups/op"), None);
        assert!(j.is_empty(), "{j:?}");
    }
}
