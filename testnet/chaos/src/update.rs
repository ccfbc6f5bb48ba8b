//! The update workload: a cluster self-update executed while the nemeses
//! run. Before the cluster starts, [`prepare`] makes a release key and
//! finds (or builds) a plexi binary of another version;
//! [`publish_release`] publishes it before the faults; [`run`] plans and
//! executes a rolling or canary update through some node, samples every node's own progress every [`SAMPLE_PERIOD`]
//! into the history (`update_sample` events, checked by
//! `check::updates`), and records the final status, or that there was
//! none within [`FINAL_TIMEOUT`] (a hang is a violation).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value as Json};

use crate::check::updates::{UpdateSample, FINAL, PLANNED};
use crate::cluster::{Cluster, ADMIN_TOKEN};
use crate::history::{EventType, Op, OpFn, Recorder, Value, UPDATE_PROCESS};

/// The version of the release the workload rolls out (a build of this
/// workspace with `PLEXI_BUILD_VERSION`, as `tests/updates.rs` makes).
pub const TARGET_VERSION: &str = "0.1.1";
/// Period of the progress samples.
pub const SAMPLE_PERIOD: Duration = Duration::from_millis(200);
/// Timeout of one sample request.
pub const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts (through the nodes in turn) at publishing, planning, executing.
pub const STEP_ATTEMPTS: usize = 30;
pub const STEP_RETRY: Duration = Duration::from_millis(500);
/// From the plan, how long the operation has to reach a final status.
pub const FINAL_TIMEOUT: Duration = Duration::from_secs(150);
/// The health-check deadline of the update (short: the harness's nodes are
/// fast, and a hang must show within [`FINAL_TIMEOUT`]).
pub const HEALTH_CHECK_TIMEOUT_SECONDS: u64 = 30;

/// What the workload needs, made before the cluster starts.
#[derive(Clone, Debug)]
pub struct Release {
    pub binary: PathBuf,
    pub version: String,
    pub key: PathBuf,
    pub public_key: String,
}

impl Release {
    /// The config the nodes need to accept it.
    pub fn config(&self) -> String {
        format!(
            "cluster_updates:\n  release_public_keys: [\"{}\"]\n  rolling_update_delay_seconds: 1\n  health_check_timeout_seconds: {HEALTH_CHECK_TIMEOUT_SECONDS}\n  rollback_timeout_seconds: 120\n  canary_soak_seconds: 2\n",
            self.public_key
        )
    }
}

/// The workspace's `target/alt` (where `tests/common::build_version` puts
/// its builds; shared, under the same lock).
fn alt_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/alt")
}

/// `target/alt/bins/plexi-VERSION`, built from the current sources (a
/// no-op for cargo when `tests/updates.rs` just built it; the target
/// version must carry the fixes under test too).
pub fn target_binary() -> Result<PathBuf> {
    use std::os::unix::io::AsRawFd;
    let alt = alt_dir();
    let out = alt.join("bins").join(format!("plexi-{TARGET_VERSION}"));
    std::fs::create_dir_all(alt.join("bins"))?;
    let lock = std::fs::File::create(alt.join("build.lock"))?;
    // SAFETY: flock on a descriptor we own; released when it closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("cannot lock {}", alt.join("build.lock").display());
    }
    eprintln!("building plexi {TARGET_VERSION} for the update workload (cargo, incremental)");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
        .args(["build", "--bin", "plexi", "--quiet"])
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &alt)
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .env("PLEXI_BUILD_VERSION", TARGET_VERSION)
        .env("PLEXI_BUILD_FAULT", "")
        .status()
        .context("run cargo build")?;
    if !status.success() {
        bail!("building plexi {TARGET_VERSION} failed");
    }
    let tmp = out.with_extension("tmp");
    std::fs::copy(alt.join("debug/plexi"), &tmp)?;
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

/// `BINARY --version` → the version it reports.
fn version_of(binary: &Path) -> Result<String> {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("plexi ")
        .map(str::to_string)
        .ok_or(anyhow!("{} --version said {text:?}", binary.display()))
}

/// A release key under `root` and the binary to roll out (`binary`, or
/// the workspace's build of [`TARGET_VERSION`]).
pub fn prepare(plexi: &Path, root: &Path, binary: Option<PathBuf>) -> Result<Release> {
    std::fs::create_dir_all(root)?;
    let binary = match binary {
        Some(b) => b,
        None => target_binary()?,
    };
    let version = version_of(&binary)?;
    if version == version_of(plexi)? {
        bail!(
            "the update binary {} has the running version {version}",
            binary.display()
        );
    }
    let key = root.join("release.key");
    if key.exists() {
        // A key of an earlier run with this output dir: a fresh one.
        std::fs::remove_file(&key)?;
    }
    let out = std::process::Command::new(plexi)
        .args(["release", "keygen", "--out"])
        .arg(&key)
        .output()?;
    if !out.status.success() {
        bail!(
            "plexi release keygen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let public_key = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_string();
    Ok(Release {
        binary,
        version,
        key,
        public_key,
    })
}

fn event(rec: &Recorder, kind: EventType, text: String, node: Option<String>, err: Option<String>) {
    let mut op = Op::new(UPDATE_PROCESS, kind, OpFn::Update);
    op.value = Some(Value::Text(text));
    op.node = node;
    op.error = err;
    rec.record(op);
}

/// Tries `step` through the running nodes in turn, bounded.
async fn through_any<F, Fut, T>(cluster: &Cluster, what: &str, mut step: F) -> Result<(usize, T)>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut last = anyhow!("no node was running");
    for attempt in 0..STEP_ATTEMPTS {
        let i = attempt % cluster.len();
        if let Some(api) = cluster.api(i) {
            match step(api).await {
                Ok(v) => return Ok((i, v)),
                Err(e) => last = e,
            }
        }
        tokio::time::sleep(STEP_RETRY).await;
    }
    Err(last.context(format!("{what}: {STEP_ATTEMPTS} attempts failed")))
}

async fn publish(plexi: &Path, release: &Release, api: String) -> Result<()> {
    let out = tokio::process::Command::new(plexi)
        .args(["release", "publish", "--binary"])
        .arg(&release.binary)
        .args(["--version", &release.version, "--key"])
        .arg(&release.key)
        .args(["--api", &api, "--token", ADMIN_TOKEN])
        .output()
        .await?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

async fn post(cluster: &Cluster, url: String, body: Json) -> Result<Json> {
    let res = cluster
        .http
        .post(url)
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    let status = res.status();
    let body: Json = res.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{status}: {body}");
    }
    Ok(body)
}

/// One node's own progress, as it says itself.
async fn sample_node(cluster: &Cluster, i: usize, op: &str, rec: &Recorder) {
    let Some(api) = cluster.api(i) else { return };
    let name = cluster.name(i);
    let invoke_ms = rec.elapsed_ms();
    let url = format!("{api}/api/v1/clustering/updates/{op}/status");
    let Ok(res) = cluster
        .http
        .get(url)
        .bearer_auth(crate::cluster::READ_TOKEN)
        .timeout(SAMPLE_TIMEOUT)
        .send()
        .await
    else {
        return;
    };
    let Ok(v) = res.json::<Json>().await else {
        return;
    };
    let mine = &v["node_statuses"][&name];
    let (Some(phase), Some(status)) = (mine["current_phase"].as_str(), mine["status"].as_str())
    else {
        return;
    };
    let lease = v["leases"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["holder"] == name.as_str())
        .and_then(|l| Some((l["slot"].as_u64()? as u32, l["epoch"].as_u64()?)));
    let mut e = Op::new(UPDATE_PROCESS, EventType::Ok, OpFn::UpdateSample);
    e.node = Some(name);
    e.sample = Some(UpdateSample {
        invoke_ms,
        operation_id: op.to_string(),
        phase: phase.to_string(),
        status: status.to_string(),
        lease,
    });
    rec.record(e);
}

/// Whether `op` has left `planned` (it was executed).
async fn running(cluster: &Cluster, api: &str, op: &str) -> bool {
    cluster
        .get_json(api, &format!("/api/v1/clustering/updates/{op}/status"))
        .await
        .is_some_and(|v| v["status"].as_str().is_some_and(|s| s != "planned"))
}

fn is_final(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "rolled_back" | "cancelled")
}

/// Publishes the release (before the faults: publishing is set-up, the
/// update is what runs under them). The outcome is recorded.
pub async fn publish_release(
    cluster: &Cluster,
    rec: &Recorder,
    plexi: &Path,
    release: &Release,
) -> bool {
    let published = through_any(cluster, "publish", |api| publish(plexi, release, api)).await;
    let ok = published.is_ok();
    event(
        rec,
        if ok { EventType::Ok } else { EventType::Fail },
        format!("publish {}", release.version),
        None,
        published.err().map(|e| format!("{e:#}")),
    );
    ok
}

/// Plans and executes after `delay`, samples until final.
pub async fn run(
    cluster: Arc<Cluster>,
    rec: Recorder,
    release: Release,
    strategy: &'static str,
    delay: Duration,
) {
    tokio::time::sleep(delay).await;
    let body =
        json!({"target_version": release.version, "update_type": "upgrade", "strategy": strategy});
    // Plan once; then execute that operation (a lost answer to an execute
    // that did start is an "already running" conflict: it started).
    let planned = through_any(&cluster, "plan", |api| {
        let body = body.clone();
        let c = cluster.clone();
        async move {
            let plan = post(&c, format!("{api}/api/v1/clustering/updates/plan"), body).await?;
            plan["operation_id"]
                .as_str()
                .map(str::to_string)
                .ok_or(anyhow!("no operation_id in {plan}"))
        }
    })
    .await;
    let planned = match planned {
        Ok((node, id)) => through_any(&cluster, "execute", |api| {
            let (c, id) = (cluster.clone(), id.clone());
            async move {
                let url = format!("{api}/api/v1/clustering/updates/{id}/execute");
                match post(&c, url, json!({})).await {
                    Ok(_) => Ok(()),
                    Err(e) if running(&c, &api, &id).await => {
                        eprintln!("execute answered {e:#}, but {id} runs");
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        })
        .await
        .map(|_| (node, id)),
        Err(e) => Err(e),
    };
    let (node, op) = match planned {
        Ok(v) => v,
        Err(e) => {
            event(
                &rec,
                EventType::Fail,
                "plan".into(),
                None,
                Some(format!("{e:#}")),
            );
            return;
        }
    };
    // Rolling and canary take one node at a time.
    event(
        &rec,
        EventType::Ok,
        format!("{PLANNED} {op} {strategy} 1"),
        Some(cluster.name(node)),
        None,
    );
    let deadline = Instant::now() + FINAL_TIMEOUT;
    loop {
        let samples = (0..cluster.len()).map(|i| sample_node(&cluster, i, &op, &rec));
        futures::future::join_all(samples).await;
        if let Some(status) = final_status(&cluster, &op).await {
            event(&rec, EventType::Ok, format!("{FINAL} {status}"), None, None);
            return;
        }
        if Instant::now() >= deadline {
            event(
                &rec,
                EventType::Info,
                format!("{FINAL} not final after {} s", FINAL_TIMEOUT.as_secs()),
                None,
                None,
            );
            return;
        }
        tokio::time::sleep(SAMPLE_PERIOD).await;
    }
}

/// The operation's status once every node runs and reports the same final
/// one (the state is replicated).
async fn final_status(cluster: &Cluster, op: &str) -> Option<String> {
    let mut seen: Option<String> = None;
    for i in 0..cluster.len() {
        let api = cluster.api(i)?;
        let v = cluster
            .get_json(&api, &format!("/api/v1/clustering/updates/{op}/status"))
            .await?;
        let s = v["status"].as_str()?.to_string();
        if !is_final(&s) || seen.as_ref().is_some_and(|x| *x != s) {
            return None;
        }
        seen = Some(s);
    }
    seen
}
