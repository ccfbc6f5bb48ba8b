//! Harness for process-level tests: real `plexi node` processes on loopback,
//! each in its own temp data dir, killed on drop. A node keeps its p2p port
//! for life, across restarts (as a deployed node keeps the one in its
//! config: with ports new at every start, nodes that all restart at once,
//! a rollback's, would each remember only ports nobody listens on any
//! more); its API port is the OS's choice at every start.
//! Conditions are polled with deadlines, never waited for with fixed sleeps.
//!
//! Every node of one test root gets the same cluster key
//! (`PLEXI_CLUSTER_KEY`, derived from the root's path, so nodes of
//! different tests never mix); [`TestNode::spawn_keyed`] starts one with
//! another key or none.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_plexi");
pub const ADMIN: &str = "test-admin-token-0123456789abcdef";
pub const READ: &str = "test-read-token-0123456789abcdef";

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Which cluster key a test node gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterKey {
    /// The key of its test root ([`root_key`]).
    Root,
    /// This key (64 hex) in `PLEXI_CLUSTER_KEY`.
    Hex(String),
    /// None: `PLEXI_CLUSTER_KEY` unset.
    Unset,
}

/// The cluster key every node under `root` shares (64 hex): derived from
/// the root's path, so each test root is its own cluster.
pub fn root_key(root: &Path) -> String {
    blake3::derive_key("plexi tests cluster key", root.to_string_lossy().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub struct TestNode {
    pub name: String,
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub api: String,
    pub p2p: String,
    pub peer_id: String,
    config: Option<PathBuf>,
    /// The p2p listen address, the same at every start.
    listen: String,
    region: String,
    zone: String,
    key: ClusterKey,
}

pub struct NodeSpec<'a> {
    pub name: &'a str,
    pub bootstrap: Vec<String>,
    pub region: &'a str,
    pub zone: &'a str,
    /// YAML written to a config file passed with --config.
    pub config: Option<&'a str>,
}

impl<'a> NodeSpec<'a> {
    pub fn new(name: &'a str) -> Self {
        NodeSpec {
            name,
            bootstrap: vec![],
            region: "r1",
            zone: "z1",
            config: None,
        }
    }
}

/// A loopback port free now and never handed out before by this process.
fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        if !handed.contains(&port) {
            handed.push(port);
            return port;
        }
    }
}

fn start(
    dir: &Path,
    spec: &NodeSpec,
    config: Option<&Path>,
    listen: &str,
    api: &str,
    key: &ClusterKey,
) -> Child {
    let log = std::fs::File::create(dir.join("node.log")).expect("log file");
    let mut cmd = Command::new(BIN);
    cmd.arg("node")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--name", spec.name, "--listen", listen, "--api", api])
        .args(["--region", spec.region, "--zone", spec.zone]);
    for b in &spec.bootstrap {
        cmd.args(["--bootstrap", b]);
    }
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    match key {
        ClusterKey::Root => {
            let root = dir.parent().expect("a node dir is under its test root");
            cmd.env("PLEXI_CLUSTER_KEY", root_key(root));
        }
        ClusterKey::Hex(hex) => {
            cmd.env("PLEXI_CLUSTER_KEY", hex);
        }
        ClusterKey::Unset => {
            cmd.env_remove("PLEXI_CLUSTER_KEY");
        }
    }
    cmd.env("PLEXI_ADMIN_TOKEN", ADMIN)
        .env("PLEXI_READ_TOKEN", READ)
        .env("PLEXI_LOG", "info,plexi_p2p=debug,libp2p=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    cmd.spawn().expect("spawn plexi node")
}

impl TestNode {
    /// Starts a node in a fresh directory under `root` and waits until it serves.
    pub fn spawn(root: &Path, spec: NodeSpec) -> TestNode {
        Self::spawn_keyed(root, spec, ClusterKey::Root)
    }

    /// Starts a node whose process has not yet served (or never will):
    /// the caller polls its log, its exit code or node.json itself.
    pub fn start_keyed(root: &Path, spec: NodeSpec, key: ClusterKey) -> TestNode {
        let dir = root.join(spec.name);
        std::fs::create_dir_all(&dir).unwrap();
        let config = spec.config.map(|text| {
            let p = dir.join("clustering.yml");
            std::fs::write(&p, text).unwrap();
            p
        });
        let listen = format!("/ip4/127.0.0.1/tcp/{}", free_port());
        let child = start(&dir, &spec, config.as_deref(), &listen, "127.0.0.1:0", &key);
        TestNode {
            name: spec.name.to_string(),
            dir,
            child: Some(child),
            listen,
            api: String::new(),
            p2p: String::new(),
            peer_id: String::new(),
            config,
            region: spec.region.to_string(),
            zone: spec.zone.to_string(),
            key,
        }
    }

    /// Starts a node with the cluster key `key` and waits until it serves.
    pub fn spawn_keyed(root: &Path, spec: NodeSpec, key: ClusterKey) -> TestNode {
        let mut node = Self::start_keyed(root, spec, key);
        node.await_serving(None);
        node
    }

    /// The whole log of the node.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }

    /// Waits for a node.json newer than `after` (a restart rewrites it) and
    /// for /health to answer.
    pub fn await_serving(&mut self, old_pid: Option<u32>) {
        let path = self.dir.join("data").join("node.json");
        let pid = self.pid();
        let info: Value = wait_for(Duration::from_secs(20), || {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
            let file_pid = v["pid"].as_u64()? as u32;
            // `plexi node` is the supervisor; node.json names its worker.
            let ours = file_pid == pid || parent_pid(file_pid) == Some(pid);
            (ours && Some(file_pid) != old_pid).then_some(v)
        })
        .unwrap_or_else(|| panic!("{} never wrote node.json\n{}", self.name, self.log_tail()));
        self.api = format!("http://{}", info["api_address"].as_str().unwrap());
        self.p2p = info["p2p_addresses"][0].as_str().unwrap().to_string();
        self.peer_id = info["peer_id"].as_str().unwrap().to_string();
        wait_for(Duration::from_secs(10), || {
            reqwest::blocking::get(format!("{}/health", self.api))
                .ok()
                .filter(|r| r.status().is_success())
        })
        .unwrap_or_else(|| panic!("{} does not serve /health\n{}", self.name, self.log_tail()));
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, sig: i32) {
        let rc = unsafe { libc::kill(self.pid() as i32, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// The worker's pid (node.json), when it is the supervisor's child.
    pub fn worker_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.join("data/node.json")).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        let pid = v["pid"].as_u64()? as u32;
        (parent_pid(pid) == Some(self.pid())).then_some(pid)
    }

    /// SIGKILL and reap the supervisor; its worker dies with it (waited
    /// for, bounded, so a restart never meets the old store lock).
    pub fn kill(&mut self) {
        // Every child of the supervisor (the worker, however it started).
        let workers: Vec<u32> = match &self.child {
            Some(c) => children_of(c.id()),
            None => vec![],
        };
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for w in workers {
            let gone = wait_for(Duration::from_secs(10), || {
                (!process_alive(w)).then_some(())
            });
            assert!(gone.is_some(), "worker {w} outlived its supervisor");
        }
    }

    /// Waits (bounded) for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let code = wait_for(timeout, || child.try_wait().ok().flatten())?;
        self.child = None;
        code.code()
    }

    /// Starts the node again on the same data dir (its p2p port, a new
    /// API port).
    pub fn restart(&mut self, bootstrap: Vec<String>) {
        assert!(self.child.is_none(), "restart a stopped node");
        let (name, region, zone) = (self.name.clone(), self.region.clone(), self.zone.clone());
        let spec = NodeSpec {
            name: &name,
            bootstrap,
            region: &region,
            zone: &zone,
            config: None,
        };
        let old = std::fs::read_to_string(self.dir.join("data/node.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["pid"].as_u64())
            .map(|p| p as u32);
        self.child = Some(start(
            &self.dir,
            &spec,
            self.config.as_deref(),
            &self.listen,
            "127.0.0.1:0",
            &self.key,
        ));
        self.await_serving(old);
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> reqwest::blocking::Response {
        let client = reqwest::blocking::Client::new();
        let mut req = client
            .get(format!("{}{path}", self.api))
            .timeout(Duration::from_secs(15));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().expect("request")
    }

    /// `GET path` as JSON with the read token, or `None` while the node
    /// does not answer it (restarting, refusing).
    pub fn try_get_json(&self, path: &str) -> Option<Value> {
        get_json_at(&self.api, path)
    }

    pub fn get_json(&self, path: &str) -> Value {
        let res = self.get(path, Some(READ));
        assert!(res.status().is_success(), "GET {path}: {}", res.status());
        res.json().expect("json")
    }

    /// Status of `name` as this node sees it.
    pub fn status_of(&self, name: &str) -> Option<String> {
        let res = self.get("/api/v1/clustering/nodes", Some(READ));
        let v: Value = res.json().ok()?;
        v["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["node_id"] == name)
            .map(|n| n["status"].as_str().unwrap_or("").to_string())
    }

    pub fn nodes(&self) -> Vec<Value> {
        self.get_json("/api/v1/clustering/nodes")["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn alive_count(&self) -> usize {
        self.nodes()
            .iter()
            .filter(|n| n["status"] == "alive")
            .count()
    }
}

/// The parent pid of `pid` (from /proc), if it is alive.
pub fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Live processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| parent_pid(p) == Some(pid) && process_alive(p))
        .collect()
}

/// True while any thread of `pid` has not finished exiting. A killed
/// multi-threaded process shows its leader as a zombie while other threads
/// still tear down (and still hold its files and locks), so every task
/// counts.
pub fn process_alive(pid: u32) -> bool {
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

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Fast timings for storage tests: failure detection in ~1.5 s, re-replication
/// after 2 s, anti-entropy twice a second.
pub const FAST: &str = "
membership:
  heartbeat_interval_ms: 200
  exchange_interval_ms: 300
  suspect_after_ms: 800
  dead_after_ms: 1500
distributed_storage:
  rereplication_delay_seconds: 2
  anti_entropy_interval_seconds: 0.3
  health_check_interval_seconds: 1
  max_object_mib: 8
";

impl TestNode {
    pub fn put(&self, id: &str, body: &[u8], query: &str) -> reqwest::blocking::Response {
        reqwest::blocking::Client::new()
            .put(format!(
                "{}/api/v1/clustering/storage/data/{id}?{query}",
                self.api
            ))
            .bearer_auth(ADMIN)
            .body(body.to_vec())
            .timeout(Duration::from_secs(30))
            .send()
            .expect("put")
    }

    pub fn fetch(&self, id: &str, query: &str) -> reqwest::blocking::Response {
        reqwest::blocking::Client::new()
            .get(format!(
                "{}/api/v1/clustering/storage/data/{id}?{query}",
                self.api
            ))
            .bearer_auth(READ)
            .timeout(Duration::from_secs(30))
            .send()
            .expect("get")
    }

    pub fn post(&self, path: &str) -> reqwest::blocking::Response {
        reqwest::blocking::Client::new()
            .post(format!("{}{path}", self.api))
            .bearer_auth(ADMIN)
            .timeout(Duration::from_secs(30))
            .send()
            .expect("post")
    }
}

/// Starts `n` nodes with `config`, each bootstrapping from the first, in
/// distinct zones, and waits until all see all.
pub fn cluster(root: &Path, n: usize, config: &str) -> Vec<TestNode> {
    let names: Vec<String> = (1..=n).map(|i| format!("s{i}")).collect();
    let zones: Vec<String> = (1..=n).map(|i| format!("z{i}")).collect();
    let mut nodes: Vec<TestNode> = Vec::new();
    for i in 0..n {
        let bootstrap = nodes
            .first()
            .map(|f| vec![f.p2p.clone()])
            .unwrap_or_default();
        nodes.push(TestNode::spawn(
            root,
            NodeSpec {
                name: &names[i],
                bootstrap,
                region: "r1",
                zone: &zones[i],
                config: Some(config),
            },
        ));
    }
    assert!(
        all_see(&nodes, n, Duration::from_secs(20)),
        "cluster of {n} did not converge"
    );
    nodes
}

/// Whether every node sees `n` members alive within `within` (polled).
pub fn all_see(nodes: &[TestNode], n: usize, within: Duration) -> bool {
    wait_for(within, || {
        nodes.iter().all(|x| x.alive_count() == n).then_some(())
    })
    .is_some()
}

/// Builds a second real `plexi` with `PLEXI_BUILD_VERSION=version` (and
/// `PLEXI_BUILD_FAULT=fault`, empty for a sound build) into its own target
/// dir (`target/alt`, without debug info so it stays well under the object
/// size limit), and returns a copy of it that nothing overwrites. Builds
/// are serialised across test processes with a lock file; cargo makes
/// repeated builds cheap (only the `plexi` crate recompiles).
pub fn build_version(version: &str, fault: &str) -> PathBuf {
    use std::os::unix::io::AsRawFd;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let alt = root.join("target/alt");
    std::fs::create_dir_all(alt.join("bins")).unwrap();
    let out = alt.join("bins").join(format!(
        "plexi-{version}{}",
        if fault.is_empty() {
            String::new()
        } else {
            format!("-{fault}")
        }
    ));
    let lock = std::fs::File::create(alt.join("build.lock")).unwrap();
    // SAFETY: flock on a file descriptor we own; released when it closes.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let status = Command::new(env!("CARGO"))
        .args(["build", "--bin", "plexi", "--quiet"])
        .current_dir(root)
        .env("CARGO_TARGET_DIR", &alt)
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .env("PLEXI_BUILD_VERSION", version)
        .env("PLEXI_BUILD_FAULT", fault)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building plexi {version} {fault} failed");
    let tmp = out.with_extension("tmp");
    std::fs::copy(alt.join("debug/plexi"), &tmp).unwrap();
    std::fs::rename(&tmp, &out).unwrap();
    drop(lock);
    out
}

/// `plexi release keygen` into `dir/release.key`; the public key (hex).
pub fn release_keygen(dir: &Path) -> String {
    let out = Command::new(BIN)
        .args(["release", "keygen", "--out"])
        .arg(dir.join("release.key"))
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_string()
}

/// `plexi release publish` of `binary` as `version`, signed with
/// `dir/release.key`, with `extra` flags (e.g. `--breaking`).
pub fn release_publish(api: &str, dir: &Path, binary: &Path, version: &str, extra: &[&str]) {
    let out = Command::new(BIN)
        .args(["release", "publish", "--binary"])
        .arg(binary)
        .args(["--version", version, "--key"])
        .arg(dir.join("release.key"))
        .args(extra)
        .args(["--api", api, "--token", ADMIN])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "publish {version}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The API address (`http://host:port`) the node in `dir` serves now, from
/// its `data/node.json` (a restarted or switched worker may bind anew).
pub fn api_of(dir: &Path) -> Option<String> {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("data/node.json")).ok()?).ok()?;
    Some(format!("http://{}", v["api_address"].as_str()?))
}

fn polling_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `GET api+path` as JSON with the read token; `None` while the node does
/// not answer it with a success.
pub fn get_json_at(api: &str, path: &str) -> Option<Value> {
    let r = polling_client()
        .get(format!("{api}{path}"))
        .bearer_auth(READ)
        .send()
        .ok()?;
    r.status().is_success().then(|| r.json().ok()).flatten()
}

/// The bytes of object `key` read through `api` (default consistency);
/// `None` unless it answers them.
pub fn read_object_at(api: &str, key: &str) -> Option<Vec<u8>> {
    let r = polling_client()
        .get(format!("{api}/api/v1/clustering/storage/data/{key}"))
        .bearer_auth(READ)
        .send()
        .ok()?;
    r.status()
        .is_success()
        .then(|| r.bytes().ok().map(|b| b.to_vec()))
        .flatten()
}
