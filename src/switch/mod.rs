//! The switch protocol: the files under `DATA_DIR/releases/` and
//! `DATA_DIR/backups/` through which a worker and its supervisor agree on a
//! version switch. Both sides use this module and nothing else touches
//! those paths.
//!
//! ```text
//! releases/<version>/plexi     installed binaries (0755)
//! releases/current             relative symlink -> <version>
//! releases/ready.json          Ready {pid, version}: the worker serves
//! releases/switch.json         SwitchRequest (worker -> supervisor)
//! releases/switch-result.json  SwitchResult (supervisor -> worker)
//! backups/<op>/store           snapshot of store/ taken for a switch
//! backups/<op>/store.sealed    the same, every file sealed (with a data key)
//! releases/restore.json        the restore journal after a failed switch ([`restore`])
//! ```
//!
//! With a data key every snapshot file is sealed ([`sealed`]) and the
//! restore opens them: no snapshot byte is readable without the key.
//!
//! Every file is written tmp + fsync + rename + fsync dir; `current` is
//! flipped by renaming a temp symlink over it. The result is written before
//! `switch.json` is removed, so a `switch.json` without a result for its
//! operation means the supervisor died mid-switch.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::files::{copy_dir_except, fsync_dir, remove_dir_if_exists};
use plexi_util::at_rest::{self, VALUES_DIR};
use plexi_util::secret::SecretKey;

pub mod restore;
pub mod sealed;
pub use crate::files::{read_json, write_json_atomic};

/// Worker exit code meaning "switch to the version in `releases/switch.json`".
pub const EXIT_SWITCH: i32 = 75;

/// Environment variable set to `1` for a worker started by the supervisor.
pub const SUPERVISED_ENV: &str = "PLEXI_SUPERVISED";

pub const RELEASES: &str = "releases";
pub const CURRENT: &str = "current";
pub const BINARY: &str = "plexi";
pub const SWITCH_FILE: &str = "switch.json";
pub const RESULT_FILE: &str = "switch-result.json";
pub const READY_FILE: &str = "ready.json";
pub const BACKUPS: &str = "backups";
/// Versions kept besides `current` and the one switched from.
pub const EXTRA_RELEASES_KEPT: usize = 3;
pub const BACKUPS_KEPT: usize = 3;
/// Written by the worker before it exits with [`EXIT_SWITCH`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchRequest {
    pub operation_id: String,
    pub from_version: String,
    pub to_version: String,
    /// Hex blake3 of `releases/<to_version>/plexi`.
    pub to_blake3: String,
    /// How long the target has, from its start, to write `ready.json`.
    pub deadline_seconds: u64,
    /// Where `store/` is snapshotted before the switch (relative paths are
    /// under the data dir); `backup_dir/store` holds the copy.
    pub backup_dir: Option<PathBuf>,
    pub restore_data_on_failure: bool,
}

/// The supervisor's decision on one [`SwitchRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchResult {
    pub operation_id: String,
    pub from_version: String,
    pub to_version: String,
    pub outcome: SwitchOutcome,
    pub reason: Option<String>,
    pub at_ms: u64,
    /// The pid of the target worker, when it was started.
    pub attempted_pid: Option<u32>,
}

/// How a switch ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwitchOutcome {
    /// The target serves.
    Switched,
    /// The target failed; the old version runs again.
    RolledBack,
}

/// Written by a worker once it serves (`releases/ready.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub pid: u32,
    pub version: String,
}

// Worker-side helpers and file layout.

pub fn releases_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(RELEASES)
}

/// `DATA_DIR/releases/<version>`.
pub fn release_dir(data_dir: &Path, version: impl std::fmt::Display) -> PathBuf {
    releases_dir(data_dir).join(version.to_string())
}

/// True in a worker started by the supervisor.
pub fn supervised() -> bool {
    std::env::var(SUPERVISED_ENV).is_ok_and(|v| v == "1")
}

/// Asks the supervisor for a switch; the caller then exits with [`EXIT_SWITCH`].
pub fn request_switch(data_dir: &Path, req: &SwitchRequest) -> io::Result<()> {
    let dir = releases_dir(data_dir);
    fs::create_dir_all(&dir)?;
    write_json_atomic(&dir.join(SWITCH_FILE), req)
}

/// The switch in progress, if any.
pub fn pending_switch(data_dir: &Path) -> Option<SwitchRequest> {
    read_json(&releases_dir(data_dir).join(SWITCH_FILE))
}

/// The supervisor's last decision, once final, reported once: the file is
/// renamed to `switch-result.<at_ms>.json`.
pub fn take_switch_result(data_dir: &Path) -> Option<SwitchResult> {
    let dir = releases_dir(data_dir);
    let path = dir.join(RESULT_FILE);
    let result: SwitchResult = read_json(&path)?;
    // Not final while the supervisor still holds the request.
    if pending_switch(data_dir).is_some_and(|p| p.operation_id == result.operation_id) {
        return None;
    }
    let archived = dir.join(format!("switch-result.{}.json", result.at_ms));
    fs::rename(&path, &archived).ok()?;
    let _ = fsync_dir(&dir);
    Some(result)
}

/// Tells the supervisor this process serves as `version`.
pub fn write_ready(data_dir: &Path, version: &str) -> io::Result<()> {
    let dir = releases_dir(data_dir);
    fs::create_dir_all(&dir)?;
    let ready = Ready {
        pid: std::process::id(),
        version: version.to_string(),
    };
    write_json_atomic(&dir.join(READY_FILE), &ready)
}

/// Versions with an installed binary, oldest first.
#[cfg(test)]
pub fn installed_versions(data_dir: &Path) -> Vec<semver::Version> {
    let mut v: Vec<semver::Version> = version_dirs(&releases_dir(data_dir))
        .into_iter()
        .filter(|v| release_dir(data_dir, v).join(BINARY).is_file())
        .collect();
    v.sort();
    v
}

/// Installs `bytes` as `releases/<version>/plexi` (tmp, fsync, 0755, rename,
/// fsync dir) and returns its path.
pub fn install_release(data_dir: &Path, version: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    check_version(version)?;
    let dir = release_dir(data_dir, version);
    fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!(".{BINARY}.{}.tmp", std::process::id()));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    finish_install(&tmp, &dir)
}

/// The version `current` points at.
pub fn current_version(data_dir: &Path) -> Option<String> {
    let target = fs::read_link(releases_dir(data_dir).join(CURRENT)).ok()?;
    target.to_str().map(str::to_string)
}

pub fn check_version(version: &str) -> io::Result<()> {
    semver::Version::parse(version).map(|_| ()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("release version {version:?}: {e}"),
        )
    })
}

pub fn finish_install(tmp: &Path, dir: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(tmp, fs::Permissions::from_mode(0o755))?;
    let dst = dir.join(BINARY);
    fs::rename(tmp, &dst)?;
    fsync_dir(dir)?;
    Ok(dst)
}

pub fn version_dirs(releases: &Path) -> Vec<semver::Version> {
    let Ok(entries) = fs::read_dir(releases) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| semver::Version::parse(e.file_name().to_str()?).ok())
        .collect()
}

/// Points `releases/current` at `version` atomically (temp symlink renamed
/// over it, dir fsynced).
pub fn flip_current(releases: &Path, version: &str) -> io::Result<()> {
    check_version(version)?;
    let tmp = releases.join(format!(".{CURRENT}.{}.tmp", std::process::id()));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::os::unix::fs::symlink(version, &tmp)?;
    fs::rename(&tmp, releases.join(CURRENT))?;
    fsync_dir(releases)
}

pub fn file_blake3(path: &Path) -> io::Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_reader(File::open(path)?)?;
    Ok(h.finalize().to_hex().to_string())
}

/// Name of a snapshot whose files are sealed.
pub const SEALED_SNAPSHOT: &str = "store.sealed";
/// In a store snapshot, hard links to the store's value files
/// (`DATA_DIR/store/values/`, [`VALUES_DIR`]): each is
/// written once under a fresh name, fsynced and never changed, so a link
/// keeps its pre-switch bytes without reading them (copied where linking
/// fails). Sealing them again was most of a switch's snapshot: a release
/// binary is a value file (28 MB in the rolling-upgrade benchmark). With a
/// data key only value files already sealed under it are linked; the
/// others (written before the key, not yet resealed) are sealed with the
/// rest of the store. Snapshots without it (older builds) hold every value
/// file among the sealed or copied ones, and restore as before.
pub const LINKED_VALUES: &str = "values.linked";

/// Copies `DATA_DIR/store` to `backup_dir/store`, or with `seal` (the data
/// key) seals every file into `backup_dir/store.sealed` (through a
/// `.partial` name, so a complete snapshot is the only thing so named);
/// value files are linked into [`LINKED_VALUES`] instead where they can be.
pub fn snapshot_store(
    data_dir: &Path,
    backup_dir: &Path,
    seal: Option<&SecretKey>,
) -> io::Result<PathBuf> {
    fs::create_dir_all(backup_dir)?;
    let name = if seal.is_some() {
        SEALED_SNAPSHOT
    } else {
        "store"
    };
    let partial = backup_dir.join(format!("{name}.partial"));
    let dst = backup_dir.join(name);
    remove_dir_if_exists(&partial)?;
    let store = data_dir.join("store");
    match (store.exists(), seal) {
        (true, Some(key)) => sealed::seal_dir(&store, &partial, key, Some(VALUES_DIR))?,
        (true, None) => copy_dir_except(&store, &partial, Some(VALUES_DIR))?,
        (false, _) => fs::create_dir(&partial)?,
    }
    if store.join(VALUES_DIR).is_dir() {
        let seal = seal.map(|key| (at_rest::sealed_prefix(key), key));
        let seal = seal.as_ref().map(|(h, k)| (h.as_slice(), *k));
        snapshot_values(&store.join(VALUES_DIR), &partial, Path::new(""), seal)?;
        fsync_dir(&partial)?;
    }
    remove_dir_if_exists(&dst)?;
    fs::rename(&partial, &dst)?;
    fsync_dir(backup_dir)?;
    Ok(dst)
}

/// The value files under `values` (at `rel` below the store's
/// `values/`) into the snapshot `partial`: linked into [`LINKED_VALUES`],
/// or with `seal` (the sealed-value header of the data key, and the key),
/// sealed into `values/` like the store's other files when a file does not
/// start with that header. Every directory made is fsynced.
fn snapshot_values(
    values: &Path,
    partial: &Path,
    rel: &Path,
    seal: Option<(&[u8], &SecretKey)>,
) -> io::Result<()> {
    let vdir = Path::new(VALUES_DIR);
    let linked = partial.join(LINKED_VALUES).join(rel);
    fs::create_dir_all(&linked)?;
    let mut sealed_here = false;
    for entry in fs::read_dir(values)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let rel = rel.join(entry.file_name());
        if kind.is_dir() {
            snapshot_values(&entry.path(), partial, &rel, seal)?;
            continue;
        }
        match seal {
            Some((header, key)) if !starts_with(&entry.path(), header)? => {
                let to = partial.join(vdir).join(&rel);
                if let Some(dir) = to.parent() {
                    fs::create_dir_all(dir)?;
                }
                let name = vdir.join(&rel);
                sealed::seal_file(&entry.path(), &to, key, &name.to_string_lossy())?;
                sealed_here = true;
            }
            _ => crate::files::link_file(&entry.path(), &linked.join(entry.file_name()))?,
        }
    }
    fsync_dir(&linked)?;
    if sealed_here {
        // This directory and its parents up to the snapshot's `values/`.
        let mut dir = partial.join(vdir).join(rel);
        while dir.starts_with(partial) && dir != partial {
            fsync_dir(&dir)?;
            dir.pop();
        }
    }
    Ok(())
}

/// Whether the file at `path` begins with `header`.
fn starts_with(path: &Path, header: &[u8]) -> io::Result<bool> {
    use std::io::Read;
    let mut buf = vec![0u8; header.len()];
    let mut f = File::open(path)?;
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => return Ok(false),
            n => got += n,
        }
    }
    Ok(buf == header)
}

/// Replaces `DATA_DIR/store` by a copy of `snapshot` through the
/// journalled [`restore`] steps (store only); a sealed snapshot
/// ([`SEALED_SNAPSHOT`]) is opened with whichever of `keys` sealed it, and
/// the store is left as it was if any file fails to open.
pub fn restore_store(data_dir: &Path, snapshot: &Path, keys: &[SecretKey]) -> io::Result<()> {
    let journal = restore::RestoreJournal {
        operation_id: String::new(),
        snapshot: Some(snapshot.to_path_buf()),
        config_copy: None,
        config_file: None,
        step: restore::RestoreStep::Stage,
    };
    restore::run(data_dir, journal, keys)
}

/// The versions to delete: all but `keep` and the `extra` newest others.
pub fn releases_to_prune(
    installed: &[semver::Version],
    keep: &[&str],
    extra: usize,
) -> Vec<semver::Version> {
    let mut others: Vec<semver::Version> = installed
        .iter()
        .filter(|v| !keep.contains(&v.to_string().as_str()))
        .cloned()
        .collect();
    others.sort_by(|a, b| b.cmp(a));
    others.into_iter().skip(extra).collect()
}

pub fn prune_releases(releases: &Path, keep: &[&str]) {
    for v in releases_to_prune(&version_dirs(releases), keep, EXTRA_RELEASES_KEPT) {
        let dir = releases.join(v.to_string());
        match fs::remove_dir_all(&dir) {
            Ok(()) => tracing::info!(version = %v, "old release removed"),
            Err(e) => tracing::warn!(version = %v, error = %e, "cannot remove old release"),
        }
    }
}

/// Keeps the `BACKUPS_KEPT` most recent directories under `DATA_DIR/backups`
/// (never `keep`).
pub fn prune_backups(data_dir: &Path, keep: &Path) {
    let dir = data_dir.join(BACKUPS);
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    let mut dirs: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| {
            let t = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(UNIX_EPOCH);
            (t, e.path())
        })
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    for (_, path) in dirs.into_iter().skip(BACKUPS_KEPT) {
        if path == keep {
            continue;
        }
        match fs::remove_dir_all(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "old backup removed"),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove old backup")
            }
        }
    }
}
