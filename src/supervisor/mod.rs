//! The supervisor: what `plexi node` runs. It owns one worker process
//! (`releases/current/plexi worker ARGS`, which runs the node) and acts on
//! the switch protocol's files (`crate::switch`, the only module it shares
//! with the worker). It never opens sled, never talks to the network and
//! never imports storage or updates (tidy test).
//!
//! - First start: installs its own binary as `releases/<VERSION>/plexi` and
//!   points `current` (a relative symlink) at it. Later starts run whatever
//!   `current` points at.
//! - The worker dies with the supervisor (`PR_SET_PDEATHSIG`, SIGKILL), so
//!   killing the supervisor, even with SIGKILL, leaves no orphan.
//! - SIGTERM/SIGINT: SIGTERM to the worker, 15 s, SIGKILL; exit 0.
//! - A worker that exits on its own is restarted with backoff (0.5 s doubling
//!   to 30 s, reset after it ran 60 s).
//! - A worker that exits with [`EXIT_SWITCH`] asks for a version switch
//!   described by `releases/switch.json` ([`SwitchRequest`]): verify the
//!   target's blake3, snapshot `store/` when asked, flip `current`, start the
//!   target and wait for its `releases/ready.json` ([`Ready`]) within the
//!   deadline; on failure stop it, flip back, restore the snapshot when asked,
//!   and start the old version. The decision is `releases/switch-result.json`
//!   ([`SwitchResult`]), written before `switch.json` is removed.
//!
//! The worker side of the protocol ([`request_switch`], [`pending_switch`],
//! [`take_switch_result`], [`write_ready`], [`install_release`], ...) is in
//! `crate::switch` too.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::config::{Config, ConfigError, Overrides};
use crate::files::{create_private_dir, remove_file_synced};
use crate::switch::*;
use plexi_util::clock::wall_ms;
use plexi_util::version::VERSION;

const LOCK_FILE: &str = "supervisor.lock";

/// Grace period for the worker when the supervisor itself is stopped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);
/// Grace period for a failed switch target.
const FAILED_TARGET_GRACE: Duration = Duration::from_secs(5);
const RESTART_BASE: Duration = Duration::from_millis(500);
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A worker that ran this long resets the restart backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// How often a switch looks for the new worker's ready file (one stat of
/// a small file; the whole wait is bounded by the switch's deadline).
const READY_POLL: Duration = Duration::from_millis(25);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("configuration error: {0}")]
    Config(#[from] ConfigError),
    #[error("another supervisor runs on this data dir (it holds {0})")]
    Locked(PathBuf),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SupervisorError {
    let what = what.into();
    move |source| SupervisorError::Io { what, source }
}

// ---------------------------------------------------------------------------
/// Delay before the restart after `failures` unexpected exits in a row.
fn restart_delay(failures: u32) -> Duration {
    RESTART_BASE
        .saturating_mul(1u32 << failures.min(16))
        .min(RESTART_MAX)
}

fn describe_exit(status: &io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            _ => format!("exited ({s})"),
        },
        Err(e) => format!("could not be waited for ({e})"),
    }
}

// ---------------------------------------------------------------------------
// The supervisor process.

/// Runs `plexi node`: loads the config (for the data dir) and supervises the
/// worker on a current-thread runtime on this thread, until SIGTERM/SIGINT.
/// `worker_args` are passed to `plexi worker` unchanged.
pub fn run(
    config_path: Option<PathBuf>,
    overrides: Overrides,
    worker_args: Vec<OsString>,
) -> Result<(), SupervisorError> {
    let (config, file) = Config::load(config_path.as_deref(), &overrides)?;
    let faults_path = config.node.data_dir.join(plexi_util::faults::FILE_NAME);
    if let Some(message) = plexi_util::faults::release_refusal(
        faults_path.exists(),
        &faults_path.display().to_string(),
    ) {
        return Err(SupervisorError::Config(ConfigError { file, message }));
    }
    check_cluster_key(&config, &file)?;
    // The same keys as the worker's: snapshots are sealed under the data key.
    // A data key that cannot be read is a configuration error (exit 2).
    let data_keys = sealed::DataKeys::resolve(&config).map_err(|e| {
        SupervisorError::Config(ConfigError {
            file: file.clone(),
            message: format!("data key: {e}"),
        })
    })?;
    let data_dir = config.node.data_dir;
    // The file a failed switch's restore writes the config copy back to:
    // the one this node runs with (the worker gets the same arguments).
    let config_file = config_path
        .or_else(|| Some(PathBuf::from(crate::config::DEFAULT_PATH)).filter(|p| p.is_file()));
    // PR_SET_PDEATHSIG follows the thread that forks: every spawn happens
    // here, on the main thread, which lives as long as the process.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("cannot start the async runtime"))?;
    runtime.block_on(async move {
        let signals = Signals {
            term: signal(SignalKind::terminate()).map_err(io_err("SIGTERM handler"))?,
            int: signal(SignalKind::interrupt()).map_err(io_err("SIGINT handler"))?,
        };
        let mut sup = Supervisor {
            releases: releases_dir(&data_dir),
            data_dir,
            worker_args,
            signals,
            data_keys,
            config_file,
        };
        sup.supervise().await
    })
}

/// A node that joins (`--bootstrap`, `node.bootstrap`, or peers its worker
/// remembered in `DATA_DIR/peers.json`) without a cluster key stops here,
/// before any worker runs: a configuration error (exit 2) naming the key it
/// needs. So does a key that does not parse. A first node without one goes
/// on: its worker creates `DATA_DIR/cluster.key`. (The worker applies the
/// same rule; checking here makes the exit the supervisor's, not a restart
/// loop.)
fn check_cluster_key(config: &Config, file: &str) -> Result<(), SupervisorError> {
    let config_error = |message: String| {
        SupervisorError::Config(ConfigError {
            file: file.to_string(),
            message,
        })
    };
    let found = crate::keys::find_cluster_key(
        std::env::var(crate::keys::CLUSTER_KEY_ENV).ok(),
        config.node.cluster_key_file.as_deref(),
        &config.node.data_dir,
    )
    .map_err(|e| config_error(format!("cluster key: {e}")))?;
    let remembered: Vec<String> =
        crate::files::read_json(&config.node.data_dir.join("peers.json")).unwrap_or_default();
    let joining = !config.node.bootstrap.is_empty() || !remembered.is_empty();
    if found.is_none() && joining {
        return Err(config_error(crate::keys::missing_cluster_key(
            &config.node.data_dir,
        )));
    }
    Ok(())
}

struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

struct Worker {
    child: tokio::process::Child,
    pid: u32,
    version: String,
    started: Instant,
}

/// How a switch ended for the supervise loop.
enum SwitchEnd {
    /// The target serves; keep supervising it.
    Running(Box<Worker>),
    /// Start whatever `current` now points at.
    StartCurrent,
    /// No usable request: an unexpected exit.
    NoRequest,
    /// We were told to stop during the switch.
    Shutdown,
}

struct Supervisor {
    data_dir: PathBuf,
    releases: PathBuf,
    worker_args: Vec<OsString>,
    signals: Signals,
    /// Seals store snapshots (current key) and opens them (any key).
    data_keys: sealed::DataKeys,
    /// The config file a restore writes back (`--config` or the default).
    config_file: Option<PathBuf>,
}

impl Supervisor {
    async fn supervise(&mut self) -> Result<(), SupervisorError> {
        create_private_dir(&self.data_dir)
            .map_err(io_err(format!("data dir {}", self.data_dir.display())))?;
        // Held until we exit (the fd is close-on-exec: the worker lacks it).
        let _lock = lock_releases(&self.releases)?;
        self.ensure_installed()?;
        self.resume_restore().await;
        self.recover_interrupted_switch().await;
        let mut failures = 0u32;
        let mut next: Option<Worker> = None;
        loop {
            let mut worker = match next.take() {
                Some(w) => w,
                None => match self.spawn_current() {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the worker");
                        if self.pause(&mut failures).await {
                            return Ok(());
                        }
                        continue;
                    }
                },
            };
            let status = tokio::select! {
                s = worker.child.wait() => s,
                sig = self.signals.recv() => {
                    tracing::info!(signal = sig, pid = worker.pid, "stopping the worker");
                    stop_worker(&mut worker, SHUTDOWN_GRACE).await;
                    tracing::info!("supervisor exits");
                    return Ok(());
                }
            };
            let ran = worker.started.elapsed();
            if ran >= HEALTHY_RUN {
                failures = 0;
            }
            if matches!(&status, Ok(s) if s.code() == Some(EXIT_SWITCH)) {
                tracing::info!(pid = worker.pid, version = %worker.version, "worker asks for a version switch");
                match self.switch().await {
                    SwitchEnd::Running(w) => {
                        failures = 0;
                        next = Some(*w);
                        continue;
                    }
                    SwitchEnd::StartCurrent => continue,
                    SwitchEnd::Shutdown => return Ok(()),
                    SwitchEnd::NoRequest => {}
                }
            }
            tracing::warn!(
                pid = worker.pid,
                version = %worker.version,
                ran_ms = ran.as_millis() as u64,
                "worker {}; restarting",
                describe_exit(&status)
            );
            if self.pause(&mut failures).await {
                return Ok(());
            }
        }
    }

    /// Waits the backoff delay; true when a stop signal came meanwhile.
    async fn pause(&mut self, failures: &mut u32) -> bool {
        let delay = restart_delay(*failures);
        *failures = failures.saturating_add(1);
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            "worker restart backoff"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => false,
            sig = self.signals.recv() => {
                tracing::info!(signal = sig, "supervisor exits");
                true
            }
        }
    }

    /// First start: installs our own binary and points `current` at it.
    fn ensure_installed(&self) -> Result<(), SupervisorError> {
        let current = self.releases.join(CURRENT);
        if fs::symlink_metadata(&current).is_ok() {
            return Ok(());
        }
        let exe = std::env::current_exe().map_err(io_err("cannot find our own binary"))?;
        let dir = self.releases.join(VERSION);
        fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        let tmp = dir.join(format!(".{BINARY}.{}.tmp", std::process::id()));
        let installed = fs::copy(&exe, &tmp)
            .and_then(|_| File::open(&tmp)?.sync_all())
            .and_then(|_| finish_install(&tmp, &dir))
            .map_err(io_err(format!(
                "install {} into {}",
                exe.display(),
                dir.display()
            )))?;
        flip_current(&self.releases, VERSION)
            .map_err(io_err(format!("point {} at {VERSION}", current.display())))?;
        tracing::info!(version = VERSION, path = %installed.display(), "installed our own binary as the current release");
        Ok(())
    }

    fn spawn_current(&self) -> io::Result<Worker> {
        let exe = self.releases.join(CURRENT).join(BINARY);
        let version = current_version(&self.data_dir).unwrap_or_else(|| "?".into());
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("worker")
            .args(&self.worker_args)
            .env(SUPERVISED_ENV, "1")
            .kill_on_drop(true);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) run
        // between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                #[cfg(target_os = "linux")]
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                ) == -1
                {
                    return Err(io::Error::last_os_error());
                }
                // The supervisor died before prctl took effect.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("spawn {}: {e}", exe.display())))?;
        let pid = child.id().unwrap_or(0);
        tracing::info!(pid, version = %version, "worker started");
        Ok(Worker {
            child,
            pid,
            version,
            started: Instant::now(),
        })
    }

    /// A `switch.json` at start means we died mid-switch: roll back, unless
    /// the decision was already written.
    async fn recover_interrupted_switch(&mut self) {
        let path = self.releases.join(SWITCH_FILE);
        if !path.exists() {
            return;
        }
        let Some(req) = read_json::<SwitchRequest>(&path) else {
            tracing::error!(path = %path.display(), "unreadable switch request removed");
            let _ = remove_file_synced(&path);
            return;
        };
        let decided = read_json::<SwitchResult>(&self.releases.join(RESULT_FILE))
            .is_some_and(|r| r.operation_id == req.operation_id);
        if decided {
            let _ = remove_file_synced(&path);
            return;
        }
        // A complete snapshot, sealed (with a data key) or not.
        let snapshot = self.backup_dir(&req).and_then(|b| {
            [SEALED_SNAPSHOT, "store"]
                .into_iter()
                .map(|name| b.join(name))
                .find(|s| s.is_dir())
        });
        self.roll_back(
            &req,
            "supervisor restarted during the switch".into(),
            None,
            snapshot,
        )
        .await;
    }

    fn backup_dir(&self, req: &SwitchRequest) -> Option<PathBuf> {
        req.backup_dir.as_ref().map(|b| self.data_dir.join(b))
    }

    /// Checks done before anything changes: versions, binaries, blake3.
    async fn preflight(&self, req: &SwitchRequest) -> Result<(), String> {
        for v in [&req.from_version, &req.to_version] {
            check_version(v).map_err(|e| e.to_string())?;
        }
        let from_bin = self.releases.join(&req.from_version).join(BINARY);
        if !from_bin.is_file() {
            return Err(format!("release {} is not installed", req.from_version));
        }
        let to_bin = self.releases.join(&req.to_version).join(BINARY);
        if !to_bin.is_file() {
            return Err(format!("release {} is not installed", req.to_version));
        }
        let path = to_bin.clone();
        let found = tokio::task::spawn_blocking(move || file_blake3(&path))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot hash {}: {e}", to_bin.display()))?;
        if !found.eq_ignore_ascii_case(&req.to_blake3) {
            return Err(format!(
                "release {} blake3 mismatch: expected {}, found {found}",
                req.to_version, req.to_blake3
            ));
        }
        Ok(())
    }

    async fn switch(&mut self) -> SwitchEnd {
        let Some(req) = read_json::<SwitchRequest>(&self.releases.join(SWITCH_FILE)) else {
            tracing::error!("worker exited {EXIT_SWITCH} without a readable releases/switch.json");
            return SwitchEnd::NoRequest;
        };
        let to = req.to_version.clone();
        tracing::info!(op = %req.operation_id, from = %req.from_version, to = %to, "switching version");
        if let Err(reason) = self.preflight(&req).await {
            self.roll_back(&req, reason, None, None).await;
            return SwitchEnd::StartCurrent;
        }
        let mut snapshot = None;
        if let Some(backup_dir) = self.backup_dir(&req) {
            let data_dir = self.data_dir.clone();
            let b = backup_dir.clone();
            let seal = self.data_keys.current.clone();
            let started = std::time::Instant::now();
            let res =
                tokio::task::spawn_blocking(move || snapshot_store(&data_dir, &b, seal.as_ref()))
                    .await
                    .map_err(io::Error::other)
                    .and_then(|r| r);
            match res {
                Ok(s) => {
                    tracing::info!(
                        path = %s.display(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "store snapshotted"
                    );
                    prune_backups(&self.data_dir, &backup_dir);
                    snapshot = Some(s);
                }
                Err(e) => {
                    let reason = format!("backup to {} failed: {e}", backup_dir.display());
                    self.roll_back(&req, reason, None, None).await;
                    return SwitchEnd::StartCurrent;
                }
            }
        }
        if let Err(e) = flip_current(&self.releases, &to) {
            let reason = format!("cannot point current at {to}: {e}");
            self.roll_back(&req, reason, None, snapshot).await;
            return SwitchEnd::StartCurrent;
        }
        let mut worker = match self.spawn_current() {
            Ok(w) => w,
            Err(e) => {
                let reason = format!("cannot start worker {to}: {e}");
                self.roll_back(&req, reason, None, snapshot).await;
                return SwitchEnd::StartCurrent;
            }
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(req.deadline_seconds);
        let ready_path = self.releases.join(READY_FILE);
        let mut poll = tokio::time::interval(READY_POLL);
        let verdict: Result<(), String> = loop {
            tokio::select! {
                s = worker.child.wait() => {
                    break Err(format!("worker {to} {} before becoming ready", describe_exit(&s)));
                }
                _ = tokio::time::sleep_until(deadline) => {
                    break Err(format!("worker {to} not ready within {} s", req.deadline_seconds));
                }
                sig = self.signals.recv() => {
                    // switch.json stays: the next start rolls back.
                    tracing::info!(signal = sig, pid = worker.pid, "stopping during a switch");
                    stop_worker(&mut worker, SHUTDOWN_GRACE).await;
                    return SwitchEnd::Shutdown;
                }
                _ = poll.tick() => {
                    let ready = read_json::<Ready>(&ready_path);
                    if ready.is_some_and(|r| r.pid == worker.pid && r.version == to) {
                        break Ok(());
                    }
                }
            }
        };
        match verdict {
            Ok(()) => {
                let result = SwitchResult {
                    operation_id: req.operation_id.clone(),
                    from_version: req.from_version.clone(),
                    to_version: to.clone(),
                    outcome: SwitchOutcome::Switched,
                    reason: None,
                    at_ms: wall_ms(),
                    attempted_pid: Some(worker.pid),
                };
                self.decide(&result);
                prune_releases(&self.releases, &[&to, &req.from_version]);
                tracing::info!(op = %req.operation_id, to = %to, pid = worker.pid, "switched");
                SwitchEnd::Running(Box::new(worker))
            }
            Err(reason) => {
                stop_worker(&mut worker, FAILED_TARGET_GRACE).await;
                self.roll_back(&req, reason, Some(worker.pid), snapshot)
                    .await;
                SwitchEnd::StartCurrent
            }
        }
    }

    /// Flips `current` back to `from`, restores the snapshot when asked, and
    /// records the decision. The caller starts the old worker.
    async fn roll_back(
        &self,
        req: &SwitchRequest,
        reason: String,
        attempted_pid: Option<u32>,
        snapshot: Option<PathBuf>,
    ) {
        tracing::warn!(op = %req.operation_id, from = %req.from_version, to = %req.to_version, %reason, "switch failed; rolling back");
        let from_ok = check_version(&req.from_version).is_ok()
            && self.releases.join(&req.from_version).join(BINARY).is_file();
        if from_ok {
            if let Err(e) = flip_current(&self.releases, &req.from_version) {
                tracing::error!(error = %e, "cannot point current back at {}", req.from_version);
            }
        } else {
            tracing::error!(
                "release {} is not installed; current left as it is",
                req.from_version
            );
        }
        if let (true, Some(snapshot)) = (req.restore_data_on_failure, snapshot) {
            self.restore(req, snapshot).await;
        }
        let result = SwitchResult {
            operation_id: req.operation_id.clone(),
            from_version: req.from_version.clone(),
            to_version: req.to_version.clone(),
            outcome: SwitchOutcome::RolledBack,
            reason: Some(reason),
            at_ms: wall_ms(),
            attempted_pid,
        };
        self.decide(&result);
    }

    /// Complete restoration after a failed switch: the pre-update store
    /// snapshot and the config copy of the request's backup dir go back in
    /// place ([`restore`], journalled), unless this operation's restore
    /// already finished (a rollback repeated after a crash). The old worker
    /// then catches up from its replicas like after any restart.
    async fn restore(&self, req: &SwitchRequest, snapshot: PathBuf) {
        if restore::restored(&self.data_dir, &req.operation_id) {
            tracing::info!(op = %req.operation_id, "already restored");
            return;
        }
        let Some(backup_dir) = self.backup_dir(req) else {
            return;
        };
        let mut journal = restore::RestoreJournal::for_backup(
            &req.operation_id,
            &backup_dir,
            self.config_file.as_deref(),
        );
        journal.snapshot = Some(snapshot);
        self.run_restore(journal).await;
    }

    /// Finishes a restore a crash interrupted (`releases/restore.json` not
    /// at `done`), before anything else runs.
    async fn resume_restore(&self) {
        let Some(journal) = restore::journal(&self.data_dir) else {
            return;
        };
        if journal.step != restore::RestoreStep::Done {
            tracing::warn!(op = %journal.operation_id, step = ?journal.step, "finishing an interrupted restore");
            self.run_restore(journal).await;
        }
    }

    async fn run_restore(&self, journal: restore::RestoreJournal) {
        let data_dir = self.data_dir.clone();
        let keys = self.data_keys.all();
        let op = journal.operation_id.clone();
        let (snapshot, config) = (journal.snapshot.clone(), journal.config_copy.clone());
        let res = tokio::task::spawn_blocking(move || restore::run(&data_dir, journal, &keys))
            .await
            .map_err(io::Error::other)
            .and_then(|r| r);
        match res {
            Ok(()) => tracing::info!(
                %op,
                store_from = ?snapshot,
                config_from = ?config,
                "store and config restored to their pre-update state"
            ),
            Err(e) => tracing::error!(%op, error = %e, "cannot restore the pre-update state"),
        }
    }

    /// Writes the result, then drops the request (that order: a result
    /// naming the request's operation means it was decided).
    fn decide(&self, result: &SwitchResult) {
        let path = self.releases.join(RESULT_FILE);
        if let Err(e) = write_json_atomic(&path, result) {
            tracing::error!(error = %e, path = %path.display(), "cannot write the switch result");
        }
        if let Err(e) = remove_file_synced(&self.releases.join(SWITCH_FILE)) {
            tracing::error!(error = %e, "cannot remove switch.json");
        }
    }
}

/// SIGTERM, `grace`, then SIGKILL; reaps the worker.
async fn stop_worker(worker: &mut Worker, grace: Duration) {
    if let Ok(Some(_)) = worker.child.try_wait() {
        return;
    }
    if let Some(pid) = worker.child.id() {
        // SAFETY: plain kill(2) on our own unreaped child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
    match tokio::time::timeout(grace, worker.child.wait()).await {
        Ok(status) => {
            tracing::info!(pid = worker.pid, "worker {}", describe_exit(&status));
        }
        Err(_) => {
            tracing::warn!(
                pid = worker.pid,
                grace_s = grace.as_secs(),
                "worker ignored SIGTERM; SIGKILL"
            );
            let _ = worker.child.kill().await;
        }
    }
}

/// One supervisor per data dir: an exclusive flock on
/// `releases/supervisor.lock`.
fn lock_releases(releases: &Path) -> Result<File, SupervisorError> {
    use std::os::fd::AsRawFd;
    let path = releases.join(LOCK_FILE);
    fs::create_dir_all(releases).map_err(io_err(format!("create {}", releases.display())))?;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(format!("open {}", path.display())))?;
    // SAFETY: flock(2) on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Err(SupervisorError::Locked(path));
        }
        return Err(io_err(format!("lock {}", path.display()))(e));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> semver::Version {
        semver::Version::parse(s).unwrap()
    }

    #[test]
    fn restart_delay_doubles_and_caps() {
        let d: Vec<u64> = (0..9)
            .map(|f| restart_delay(f).as_millis() as u64)
            .collect();
        assert_eq!(d, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        assert_eq!(restart_delay(u32::MAX), RESTART_MAX);
    }

    #[test]
    fn prune_keeps_current_previous_and_three_newest_others() {
        let installed: Vec<_> = [
            "0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "1.0.0",
        ]
        .iter()
        .map(|s| v(s))
        .collect();
        let gone = releases_to_prune(&installed, &["1.0.0", "0.1.0"], 3);
        assert_eq!(gone, vec![v("0.3.0"), v("0.2.0")]);
        assert!(releases_to_prune(&installed[..3], &["0.1.0"], 3).is_empty());
    }

    #[test]
    fn release_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(install_release(d, "../evil", b"x").is_err());
        let p = install_release(d, "1.2.3", b"#!/bin/sh\n").unwrap();
        assert_eq!(p, release_dir(d, "1.2.3").join("plexi"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o755
        );
        fs::create_dir_all(release_dir(d, "2.0.0")).unwrap(); // no binary
        assert_eq!(installed_versions(d), vec![v("1.2.3")]);

        flip_current(&releases_dir(d), "1.2.3").unwrap();
        assert_eq!(current_version(d).as_deref(), Some("1.2.3"));
        assert!(flip_current(&releases_dir(d), "not/a/version").is_err());

        let req = SwitchRequest {
            operation_id: "op1".into(),
            from_version: "1.2.3".into(),
            to_version: "1.3.0".into(),
            to_blake3: "00".into(),
            deadline_seconds: 5,
            backup_dir: None,
            restore_data_on_failure: false,
        };
        request_switch(d, &req).unwrap();
        assert_eq!(pending_switch(d), Some(req.clone()));

        let result = SwitchResult {
            operation_id: "op1".into(),
            from_version: "1.2.3".into(),
            to_version: "1.3.0".into(),
            outcome: SwitchOutcome::Switched,
            reason: None,
            at_ms: 42,
            attempted_pid: Some(7),
        };
        write_json_atomic(&releases_dir(d).join(RESULT_FILE), &result).unwrap();
        // Not final while the request is still there.
        assert_eq!(take_switch_result(d), None);
        remove_file_synced(&releases_dir(d).join(SWITCH_FILE)).unwrap();
        assert_eq!(take_switch_result(d), Some(result));
        assert_eq!(take_switch_result(d), None, "reported once");
        assert!(releases_dir(d).join("switch-result.42.json").is_file());

        write_ready(d, "1.3.0").unwrap();
        let ready: Ready = read_json(&releases_dir(d).join(READY_FILE)).unwrap();
        assert_eq!(ready.pid, std::process::id());
    }

    #[test]
    fn snapshot_and_restore_store() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("store/sub")).unwrap();
        fs::write(d.join("store/a"), "before").unwrap();
        fs::write(d.join("store/sub/b"), "b").unwrap();
        let snap = snapshot_store(d, &d.join("backups/op1"), None).unwrap();
        assert_eq!(fs::read_to_string(snap.join("sub/b")).unwrap(), "b");
        fs::write(d.join("store/a"), "after").unwrap();
        fs::write(d.join("store/c"), "new").unwrap();
        restore_store(d, &snap, &[]).unwrap();
        assert_eq!(fs::read_to_string(d.join("store/a")).unwrap(), "before");
        assert!(!d.join("store/c").exists());
        assert!(!d.join("store.replaced").exists());
        assert!(snap.join("a").is_file(), "the snapshot is kept");
    }

    /// With a data key the snapshot holds no plaintext byte, another key
    /// cannot restore it, and the key restores byte-identical files.
    #[test]
    fn sealed_snapshot_restores_only_with_its_key() {
        use plexi_util::secret::SecretKey;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let marker = b"SNAPSHOT-MARKER-5be1";
        let big: Vec<u8> = marker.iter().cycle().take(300_000).copied().collect();
        fs::create_dir_all(d.join("store/blobs")).unwrap();
        fs::write(d.join("store/db"), marker).unwrap();
        fs::write(d.join("store/blobs/7"), &big).unwrap();
        fs::write(d.join("store/empty"), b"").unwrap();
        let key = SecretKey::from_bytes([5; 32]);
        let other = SecretKey::from_bytes([6; 32]);
        let snap = snapshot_store(d, &d.join("backups/op1"), Some(&key)).unwrap();
        assert!(snap.ends_with(SEALED_SNAPSHOT));
        for f in ["db", "blobs/7", "empty"] {
            let bytes = fs::read(snap.join(f)).unwrap();
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker),
                "{f} holds plaintext"
            );
        }
        fs::write(d.join("store/db"), "after").unwrap();
        let e = restore_store(d, &snap, std::slice::from_ref(&other)).unwrap_err();
        assert!(e.to_string().contains(&key.fingerprint()), "{e}");
        assert_eq!(
            fs::read(d.join("store/db")).unwrap(),
            b"after",
            "left as it was"
        );
        assert!(!d.join("store.restoring").exists());
        restore_store(d, &snap, &[other, key]).unwrap();
        assert_eq!(fs::read(d.join("store/db")).unwrap(), marker);
        assert_eq!(fs::read(d.join("store/blobs/7")).unwrap(), big);
        assert_eq!(fs::read(d.join("store/empty")).unwrap(), b"");
    }
}
