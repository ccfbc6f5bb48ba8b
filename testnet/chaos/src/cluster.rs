//! The cluster under test: N real `plexi node` processes (supervisor plus
//! worker), one data dir each under a temp root, one cluster key and one
//! pair of tokens for all, fast timings. On loopback (ports chosen by the
//! OS) or, given a [`Net`], each node in its own network namespace on fixed
//! ports with its data dir on its own tmpfs. It owns starting, SIGKILL +
//! restart, SIGSTOP/SIGCONT of the worker, each node's fault file as last
//! written, the current API address of each node (read from `node.json`,
//! which a restart rewrites), and the bounded polls for "serving" and
//! "repaired".

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value as Json;

use crate::faults::{self, Faults};
use crate::net::{Net, API_PORT, P2P_PORT};

pub const ADMIN_TOKEN: &str = "chaos-admin-token-0123456789abcdef";
pub const READ_TOKEN: &str = "chaos-read-token-0123456789abcdef";
/// How long a started node has to write node.json and answer /health.
pub const SERVE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a killed worker has to disappear.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// Poll period of every wait.
pub const POLL: Duration = Duration::from_millis(100);
/// Timeout of one status request of the harness itself.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// Fast timings (as the process tests use): failure detection in ~1.5 s,
/// re-replication after 2 s, anti-entropy every 0.3 s.
pub const FAST_CONFIG: &str = "
membership:
  heartbeat_interval_ms: 200
  exchange_interval_ms: 300
  suspect_after_ms: 800
  dead_after_ms: 1500
distributed_storage:
  rereplication_delay_seconds: 2
  anti_entropy_interval_seconds: 0.3
  health_check_interval_seconds: 1
  max_object_mib: 128
";

/// One node's process state.
pub struct NodeProc {
    pub name: String,
    pub dir: PathBuf,
    child: Option<Child>,
    pub p2p: String,
    /// The worker is SIGSTOPped.
    pub paused: bool,
    /// The fault file as last written.
    pub faults: Faults,
    /// A tc netem qdisc is in place (netem nemesis, netns mode).
    pub netem_tc: bool,
}

pub struct Cluster {
    bin: PathBuf,
    root: PathBuf,
    key: String,
    config: PathBuf,
    nodes: Vec<std::sync::Mutex<NodeProc>>,
    /// `http://host:port` of each node while it runs (None when killed).
    apis: RwLock<Vec<Option<String>>>,
    pub http: reqwest::Client,
    /// The namespaces (netns mode); dropped after the processes.
    net: Option<Net>,
}

/// The parent pid of `pid` (from /proc), if it is alive.
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// True while any thread of `pid` has not finished exiting.
fn process_alive(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            return false;
        };
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next());
        !matches!(state, None | Some("Z") | Some("X"))
    })
}

fn signal(pid: u32, sig: i32) -> Result<()> {
    // SAFETY: kill(2) on a pid we started; no memory is involved.
    let rc = unsafe { libc::kill(pid as i32, sig) };
    if rc != 0 {
        bail!("kill({pid}, {sig}) failed");
    }
    Ok(())
}

fn read_node_json(dir: &Path) -> Option<Json> {
    let text = std::fs::read_to_string(dir.join("data/node.json")).ok()?;
    serde_json::from_str(&text).ok()
}

impl NodeProc {
    /// The worker's pid (node.json's, when the supervisor is its parent).
    pub fn worker_pid(&self) -> Option<u32> {
        let sup = self.child.as_ref()?.id();
        let pid = read_node_json(&self.dir)?["pid"].as_u64()? as u32;
        (parent_pid(pid) == Some(sup)).then_some(pid)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

impl Cluster {
    /// Starts `n` nodes under `root` (each bootstraps from the first) and
    /// waits until every node sees all `n` alive.
    pub async fn start(bin: &Path, root: &Path, n: usize, seed: u64) -> Result<Cluster> {
        Cluster::start_with(bin, root, n, seed, None, "").await
    }

    /// As [`Cluster::start`], in `net`'s namespaces when given (each data
    /// dir then on its own tmpfs of `disk::TMPFS_MIB`); `extra_config` is
    /// appended to [`FAST_CONFIG`] (YAML sections).
    pub async fn start_with(
        bin: &Path,
        root: &Path,
        n: usize,
        seed: u64,
        net: Option<Net>,
        extra_config: &str,
    ) -> Result<Cluster> {
        std::fs::create_dir_all(root)?;
        let config = root.join("clustering.yml");
        std::fs::write(&config, format!("{FAST_CONFIG}{extra_config}"))?;
        let key: String = blake3::derive_key("plexi-chaos cluster key", &seed.to_le_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let nodes = (1..=n)
            .map(|i| {
                std::sync::Mutex::new(NodeProc {
                    name: format!("c{i}"),
                    dir: root.join(format!("c{i}")),
                    child: None,
                    p2p: String::new(),
                    paused: false,
                    faults: Faults::default(),
                    netem_tc: false,
                })
            })
            .collect();
        let cluster = Cluster {
            bin: bin.to_path_buf(),
            root: root.to_path_buf(),
            key,
            config,
            nodes,
            apis: RwLock::new(vec![None; n]),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(4)
                .build()?,
            net,
        };
        if let Some(net) = &cluster.net {
            for i in 0..n {
                let data = cluster.data_dir(i);
                crate::disk::mount_tmpfs(&data, &net.plan.mount_source(), crate::disk::TMPFS_MIB)
                    .with_context(|| format!("tmpfs for {}", data.display()))?;
            }
        }
        for i in 0..n {
            cluster.launch(i).await?;
        }
        cluster
            .await_all_alive(Duration::from_secs(60))
            .await
            .context("the cluster did not converge")?;
        Ok(cluster)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The namespaces, in netns mode.
    pub fn net(&self) -> Option<&Net> {
        self.net.as_ref()
    }

    /// Node `i`'s data dir (where its fault file lives).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.node(i).dir.join("data")
    }

    /// Changes node `i`'s faults and writes its fault file (atomically).
    pub fn set_faults(&self, i: usize, change: impl FnOnce(&mut Faults)) -> Result<Faults> {
        let mut n = self.node(i);
        let mut f = n.faults.clone();
        change(&mut f);
        faults::write(&n.dir.join("data"), &f)?;
        n.faults = f.clone();
        Ok(f)
    }

    pub fn set_netem_tc(&self, i: usize, on: bool) {
        self.node(i).netem_tc = on;
    }

    pub fn netem_tc(&self, i: usize) -> bool {
        self.node(i).netem_tc
    }

    /// The worker's pid of node `i`, if it runs.
    pub fn worker_pid(&self, i: usize) -> Option<u32> {
        self.node(i).worker_pid()
    }

    fn node(&self, i: usize) -> std::sync::MutexGuard<'_, NodeProc> {
        self.nodes[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn name(&self, i: usize) -> String {
        self.node(i).name.clone()
    }

    /// The API base of node `i` while it runs.
    pub fn api(&self, i: usize) -> Option<String> {
        self.apis.read().unwrap_or_else(|p| p.into_inner())[i].clone()
    }

    fn set_api(&self, i: usize, api: Option<String>) {
        self.apis.write().unwrap_or_else(|p| p.into_inner())[i] = api;
    }

    /// A running, not paused node's p2p address other than `i`'s.
    fn bootstrap_for(&self, i: usize) -> Vec<String> {
        (0..self.len())
            .filter(|&j| j != i)
            .filter_map(|j| {
                let n = self.node(j);
                (n.running() && !n.paused && !n.p2p.is_empty()).then(|| n.p2p.clone())
            })
            .take(2)
            .collect()
    }

    /// Starts node `i` (first time or after a kill) and waits until it serves.
    pub async fn launch(&self, i: usize) -> Result<()> {
        let bootstrap = self.bootstrap_for(i);
        let (dir, name, old_pid) = {
            let n = self.node(i);
            if n.running() {
                bail!("{} is already running", n.name);
            }
            let old = read_node_json(&n.dir).and_then(|v| v["pid"].as_u64());
            (n.dir.clone(), n.name.clone(), old)
        };
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("node.log"))?;
        let (mut cmd, listen, api) = match &self.net {
            None => (
                Command::new(&self.bin),
                "/ip4/127.0.0.1/tcp/0".to_string(),
                "127.0.0.1:0".to_string(),
            ),
            Some(net) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &net.plan.ns(i)]).arg(&self.bin);
                let a = net.plan.addr(i);
                (
                    c,
                    format!("/ip4/{a}/tcp/{P2P_PORT}"),
                    format!("{a}:{API_PORT}"),
                )
            }
        };
        cmd.arg("node")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--name", &name, "--listen", &listen])
            .args(["--api", &api, "--region", "r1"])
            .args(["--zone", &format!("z{}", i + 1)])
            .arg("--config")
            .arg(&self.config);
        for b in &bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        cmd.env("PLEXI_CLUSTER_KEY", &self.key)
            .env("PLEXI_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("PLEXI_READ_TOKEN", READ_TOKEN)
            .env("PLEXI_LOG", "info,libp2p=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().context("spawn plexi node")?;
        let sup = child.id();
        crate::teardown::register_pid(sup);
        self.node(i).child = Some(child);
        self.await_serving(i, sup, old_pid).await
    }

    /// After the supervisor restarted node `i`'s worker on its own (a torn
    /// write aborts it): waits for the new worker to serve, takes its API
    /// address (a loopback restart picks a new port).
    pub async fn await_restarted(&self, i: usize, old_worker: Option<u32>) -> Result<()> {
        self.set_api(i, None);
        // Two statements: `name` takes the node's lock, which the first
        // one holds (a std mutex does not re-enter: it deadlocked).
        let sup = self.node(i).child.as_ref().map(|c| c.id());
        let sup = sup.ok_or_else(|| anyhow!("{} is not running", self.name(i)))?;
        self.await_serving(i, sup, old_worker.map(u64::from)).await
    }

    /// Waits (bounded) until a worker of supervisor `sup` other than
    /// `old_pid` wrote node.json and answers /health; records its addresses.
    async fn await_serving(&self, i: usize, sup: u32, old_pid: Option<u64>) -> Result<()> {
        let (dir, name) = {
            let n = self.node(i);
            (n.dir.clone(), n.name.clone())
        };
        let deadline = Instant::now() + SERVE_TIMEOUT;
        let info = loop {
            if let Some(v) = read_node_json(&dir) {
                let pid = v["pid"].as_u64().unwrap_or(0);
                let ours = pid as u32 == sup || parent_pid(pid as u32) == Some(sup);
                if ours && Some(pid) != old_pid {
                    break v;
                }
            }
            if Instant::now() >= deadline {
                bail!("{name} never wrote node.json (see {})", dir.display());
            }
            tokio::time::sleep(POLL).await;
        };
        let api = format!(
            "http://{}",
            info["api_address"]
                .as_str()
                .ok_or(anyhow!("no api_address"))?
        );
        let p2p = info["p2p_addresses"][0].as_str().unwrap_or("").to_string();
        loop {
            if self.get_json(&api, "/health").await.is_some() {
                break;
            }
            if Instant::now() >= deadline {
                bail!("{name} does not serve /health");
            }
            tokio::time::sleep(POLL).await;
        }
        self.node(i).p2p = p2p;
        self.set_api(i, Some(api));
        Ok(())
    }

    /// SIGKILL of the supervisor and the worker; waits (bounded) until the
    /// worker is gone, so a restart never meets its store lock.
    pub async fn kill(&self, i: usize) -> Result<()> {
        self.set_api(i, None);
        let (worker, child) = {
            let mut n = self.node(i);
            let worker = n.worker_pid();
            n.paused = false;
            (worker, n.child.take())
        };
        let Some(mut child) = child else {
            return Ok(());
        };
        if let Some(w) = worker {
            let _ = signal(w, libc::SIGKILL);
        }
        let _ = child.kill();
        let _ = child.wait();
        crate::teardown::forget_pid(child.id());
        if let Some(w) = worker {
            let deadline = Instant::now() + EXIT_TIMEOUT;
            while process_alive(w) {
                if Instant::now() >= deadline {
                    bail!("worker {w} outlived SIGKILL");
                }
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(())
    }

    /// SIGSTOP of the worker (the supervisor keeps waiting on it).
    pub fn pause(&self, i: usize) -> Result<()> {
        let mut n = self.node(i);
        let w = n.worker_pid().ok_or(anyhow!("{} has no worker", n.name))?;
        signal(w, libc::SIGSTOP)?;
        n.paused = true;
        Ok(())
    }

    pub fn resume(&self, i: usize) -> Result<()> {
        let mut n = self.node(i);
        if !n.paused {
            return Ok(());
        }
        if let Some(w) = n.worker_pid() {
            signal(w, libc::SIGCONT)?;
        }
        n.paused = false;
        Ok(())
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.node(i).running()
    }

    /// Heal every process fault: SIGCONT the paused, restart the dead.
    pub async fn heal_all(&self) -> Result<()> {
        for i in 0..self.len() {
            self.resume(i)?;
        }
        for i in 0..self.len() {
            if !self.is_running(i) {
                self.launch(i).await?;
            }
        }
        Ok(())
    }

    /// `GET path` with the read token as JSON, `None` on any failure.
    pub async fn get_json(&self, api: &str, path: &str) -> Option<Json> {
        let res = self
            .http
            .get(format!("{api}{path}"))
            .bearer_auth(READ_TOKEN)
            .timeout(STATUS_TIMEOUT)
            .send()
            .await
            .ok()?;
        if !res.status().is_success() {
            return None;
        }
        res.json().await.ok()
    }

    /// Whether every node sees every node alive.
    pub async fn all_alive(&self) -> bool {
        let n = self.len();
        for i in 0..n {
            let Some(api) = self.api(i) else { return false };
            let Some(v) = self.get_json(&api, "/api/v1/clustering/nodes").await else {
                return false;
            };
            let alive = v["nodes"]
                .as_array()
                .map(|a| a.iter().filter(|m| m["status"] == "alive").count())
                .unwrap_or(0);
            if alive != n {
                return false;
            }
        }
        true
    }

    pub async fn await_all_alive(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while !self.all_alive().await {
            if Instant::now() >= deadline {
                bail!("not every node sees {} alive", self.len());
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// Whether every node reports no under-replicated object and a
    /// complete view (no unreachable node).
    pub async fn repaired(&self) -> bool {
        for i in 0..self.len() {
            let Some(api) = self.api(i) else { return false };
            let path = "/api/v1/clustering/storage/distribution";
            let Some(v) = self.get_json(&api, path).await else {
                return false;
            };
            let under = v["under_replicated_objects"].as_u64().unwrap_or(u64::MAX);
            let unreachable = v["unreachable_nodes"].as_array().map(|a| a.len());
            if under != 0 || unreachable != Some(0) {
                return false;
            }
        }
        true
    }

    /// Each node's under-replicated count and unreachable nodes, as the
    /// nodes report them (for the warning when repair does not converge).
    pub async fn repair_report(&self) -> Vec<String> {
        let mut out = Vec::new();
        for i in 0..self.len() {
            let name = self.name(i);
            let Some(api) = self.api(i) else {
                out.push(format!("{name}: not running"));
                continue;
            };
            let path = "/api/v1/clustering/storage/distribution";
            match self.get_json(&api, path).await {
                Some(v) => out.push(format!(
                    "{name}: under-replicated {} unreachable {}",
                    v["under_replicated_objects"], v["unreachable_nodes"]
                )),
                None => out.push(format!("{name}: no answer")),
            }
        }
        out
    }

    /// Kills every node (end of run).
    pub async fn shutdown(&self) {
        for i in 0..self.len() {
            let _ = self.resume(i);
            if let Err(e) = self.kill(i).await {
                eprintln!("stopping {}: {e}", self.name(i));
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &self.nodes {
            let mut n = n.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(w) = n.worker_pid() {
                let _ = signal(w, libc::SIGKILL);
            }
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
