//! The supervisor (`plexi node`) with real processes: first-start install,
//! no orphan worker after SIGKILL, clean SIGTERM, restart of a killed worker,
//! and the version switch protocol. The switch tests run shell-script
//! "releases" as workers (they write `ready.json`, exit 75 on a trigger file,
//! exit at once, or never become ready), which exercises the supervisor's
//! mechanism without an update engine.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{parent_pid, process_alive, wait_for, NodeSpec, TestNode, BIN};
use serde_json::{json, Value};

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn node_json(node: &TestNode) -> Value {
    read_json(&node.dir.join("data/node.json")).expect("node.json")
}

#[test]
fn first_start_installs_its_binary_and_runs_a_worker() {
    let root = tempfile::tempdir().unwrap();
    let node = TestNode::spawn(root.path(), NodeSpec::new("sup1"));
    let info = node_json(&node);
    let version = info["version"].as_str().unwrap().to_string();
    let worker = info["pid"].as_u64().unwrap() as u32;
    assert_ne!(worker, node.pid(), "node.json names the worker");
    assert_eq!(parent_pid(worker), Some(node.pid()));

    let releases = node.dir.join("data/releases");
    let current = std::fs::read_link(releases.join("current")).unwrap();
    assert_eq!(current, PathBuf::from(&version), "relative symlink");
    let bin = releases.join(&version).join("plexi");
    let mode = std::fs::metadata(&bin).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    let out = Command::new(&bin).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("plexi {version}")
    );
    let cmdline = std::fs::read(format!("/proc/{worker}/cmdline")).unwrap();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    assert!(args[0].ends_with(b"releases/current/plexi"));
    assert_eq!(args[1], b"worker");
    let environ = std::fs::read(format!("/proc/{worker}/environ")).unwrap();
    assert!(environ
        .split(|b| *b == 0)
        .any(|e| e == b"PLEXI_SUPERVISED=1"));

    let ready = wait_for(Duration::from_secs(5), || {
        read_json(&releases.join("ready.json")).filter(|r| r["pid"] == worker)
    })
    .expect("the worker writes ready.json");
    assert_eq!(ready["version"], version.as_str());
}

#[test]
fn sigkill_of_the_supervisor_leaves_no_worker() {
    let root = tempfile::tempdir().unwrap();
    let mut node = TestNode::spawn(root.path(), NodeSpec::new("sup2"));
    let worker = node.worker_pid().expect("worker pid");
    let mut child = node.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let gone = wait_for(Duration::from_secs(5), || {
        (!process_alive(worker)).then_some(())
    });
    assert!(gone.is_some(), "worker {worker} outlived its supervisor");
}

#[test]
fn sigterm_stops_worker_and_supervisor() {
    let root = tempfile::tempdir().unwrap();
    let mut node = TestNode::spawn(root.path(), NodeSpec::new("sup3"));
    let worker = node.worker_pid().expect("worker pid");
    node.signal(libc::SIGTERM);
    let code = node.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "supervisor exit\n{}", node.log_tail());
    assert!(!process_alive(worker), "worker still running");
    assert!(
        node.log_tail().contains("SIGTERM received"),
        "the worker got SIGTERM"
    );
}

#[test]
fn a_killed_worker_is_restarted() {
    let root = tempfile::tempdir().unwrap();
    let node = TestNode::spawn(root.path(), NodeSpec::new("sup4"));
    let first = node.worker_pid().expect("worker pid");
    let rc = unsafe { libc::kill(first as i32, libc::SIGKILL) };
    assert_eq!(rc, 0);
    let info = wait_for(Duration::from_secs(20), || {
        let v = read_json(&node.dir.join("data/node.json"))?;
        let pid = v["pid"].as_u64()? as u32;
        (pid != first && parent_pid(pid) == Some(node.pid())).then_some(v)
    })
    .unwrap_or_else(|| panic!("no new worker\n{}", node.log_tail()));
    let api = format!("http://{}", info["api_address"].as_str().unwrap());
    let served = wait_for(Duration::from_secs(10), || {
        reqwest::blocking::get(format!("{api}/health"))
            .ok()
            .filter(|r| r.status().is_success())
    });
    assert!(
        served.is_some(),
        "restarted worker does not serve\n{}",
        node.log_tail()
    );
}

// ---------------------------------------------------------------------------
// Switch protocol, with shell-script releases.

const OLD: &str = "1.0.0";
const NEW: &str = "9.9.9";

/// A supervisor over a data dir whose releases are shell scripts.
struct ScriptNode {
    _root: tempfile::TempDir,
    dir: PathBuf,
    data: PathBuf,
    child: Option<Child>,
}

impl ScriptNode {
    /// Installs the `OLD` script release as `current` (plus whatever `setup`
    /// adds) and starts the supervisor.
    fn start(setup: impl FnOnce(&ScriptNode)) -> ScriptNode {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().to_path_buf();
        let data = dir.join("data");
        std::fs::create_dir_all(data.join("releases")).unwrap();
        let mut node = ScriptNode {
            _root: root,
            dir,
            data,
            child: None,
        };
        node.install(OLD, &old_release(&node.data));
        std::os::unix::fs::symlink(OLD, node.releases().join("current")).unwrap();
        setup(&node);
        let log = std::fs::File::create(node.dir.join("supervisor.log")).unwrap();
        let child = Command::new(BIN)
            .arg("node")
            .arg("--data-dir")
            .arg(&node.data)
            .env("PLEXI_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        node.child = Some(child);
        node
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn releases(&self) -> PathBuf {
        self.data.join("releases")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("supervisor.log")).unwrap_or_default()
    }

    fn install(&self, version: &str, script: &str) -> String {
        let dir = self.releases().join(version);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("plexi");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        blake3::hash(script.as_bytes()).to_hex().to_string()
    }

    fn current(&self) -> String {
        let link = std::fs::read_link(self.releases().join("current")).unwrap();
        link.to_str().unwrap().to_string()
    }

    /// Waits for a worker of `version`, child of the supervisor and not
    /// `other_than`, to be ready; returns its pid.
    fn ready_worker(&self, version: &str, other_than: Option<u32>) -> u32 {
        wait_for(Duration::from_secs(10), || {
            let r = read_json(&self.releases().join("ready.json"))?;
            let pid = r["pid"].as_u64()? as u32;
            let ok = r["version"] == version
                && Some(pid) != other_than
                && parent_pid(pid) == Some(self.pid());
            ok.then_some(pid)
        })
        .unwrap_or_else(|| panic!("no ready worker {version}\n{}", self.log()))
    }

    /// What the update engine does: switch.json, then exit 75 (the script
    /// worker exits 75 when the trigger file appears).
    fn request_switch(&self, req: &Value) {
        let tmp = self.releases().join("switch.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(req).unwrap()).unwrap();
        std::fs::rename(&tmp, self.releases().join("switch.json")).unwrap();
        std::fs::write(self.data.join("trigger"), b"").unwrap();
    }

    fn result(&self, op: &str, timeout: Duration) -> Value {
        wait_for(timeout, || {
            read_json(&self.releases().join("switch-result.json"))
                .filter(|r| r["operation_id"] == op)
        })
        .unwrap_or_else(|| panic!("no switch result for {op}\n{}", self.log()))
    }

    /// Pids the script release `version` recorded when it started.
    fn started(&self, version: &str) -> Vec<u32> {
        std::fs::read_to_string(self.data.join(format!("started.{version}")))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for ScriptNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Script prelude: records its pid in `started.<version>` and defines
/// `ready` (writes ready.json atomically).
fn prelude(data: &Path, version: &str) -> String {
    format!(
        "#!/bin/sh\n\
         D='{}'\n\
         V='{version}'\n\
         echo $$ >> \"$D/started.$V\"\n\
         ready() {{\n\
           printf '{{\"pid\":%s,\"version\":\"%s\"}}' $$ \"$V\" > \"$D/releases/.ready.$$\"\n\
           mv \"$D/releases/.ready.$$\" \"$D/releases/ready.json\"\n\
         }}\n",
        data.display()
    )
}

/// Polls for a condition (the script's way of blocking).
const IDLE: &str = "while :; do sleep 0.05; done\n";

/// The old release: ready, then exit 75 once `trigger` appears.
fn old_release(data: &Path) -> String {
    prelude(data, OLD)
        + "ready\n\
           while [ ! -e \"$D/trigger\" ]; do sleep 0.05; done\n\
           rm -f \"$D/trigger\"\n\
           exit 75\n"
}

fn switch_request(op: &str, blake3: &str, deadline: u64) -> Value {
    json!({
        "operation_id": op,
        "from_version": OLD,
        "to_version": NEW,
        "to_blake3": blake3,
        "deadline_seconds": deadline,
        "backup_dir": null,
        "restore_data_on_failure": false,
    })
}

/// After a rollback: `current` is OLD again, a new OLD worker serves, and the
/// request is gone.
fn assert_rolled_back(node: &ScriptNode, result: &Value, first: u32) {
    assert_eq!(result["outcome"], "rolled_back", "{result}");
    assert_eq!(result["from_version"], OLD);
    assert_eq!(result["to_version"], NEW);
    assert_eq!(node.current(), OLD);
    node.ready_worker(OLD, Some(first));
    assert!(!node.releases().join("switch.json").exists());
}

#[test]
fn switch_to_a_release_that_exits_at_once_rolls_back() {
    let mut blake = String::new();
    let node = ScriptNode::start(|n| {
        blake = n.install(NEW, &(prelude(&n.data, NEW) + "exit 3\n"));
    });
    let first = node.ready_worker(OLD, None);
    node.request_switch(&switch_request("op-a", &blake, 10));
    let result = node.result("op-a", Duration::from_secs(15));
    assert_rolled_back(&node, &result, first);
    let reason = result["reason"].as_str().unwrap();
    assert_eq!(
        reason,
        "worker 9.9.9 exited with code 3 before becoming ready"
    );
    let attempted = node.started(NEW);
    assert_eq!(attempted.len(), 1);
    assert_eq!(result["attempted_pid"], attempted[0]);
}

#[test]
fn switch_to_a_release_that_never_gets_ready_rolls_back_at_the_deadline() {
    let mut blake = String::new();
    let node = ScriptNode::start(|n| {
        blake = n.install(NEW, &(prelude(&n.data, NEW) + IDLE));
    });
    let first = node.ready_worker(OLD, None);
    node.request_switch(&switch_request("op-b", &blake, 2));
    let result = node.result("op-b", Duration::from_secs(15));
    assert_rolled_back(&node, &result, first);
    assert_eq!(result["reason"], "worker 9.9.9 not ready within 2 s");
    let attempted = node.started(NEW);
    assert_eq!(attempted.len(), 1);
    assert!(
        !process_alive(attempted[0]),
        "the failed target was stopped"
    );
}

#[test]
fn switch_to_a_release_that_gets_ready_switches() {
    let mut blake = String::new();
    let node = ScriptNode::start(|n| {
        blake = n.install(NEW, &(prelude(&n.data, NEW) + "ready\n" + IDLE));
        // Older releases beyond the 3 kept besides current and previous.
        for v in ["0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0"] {
            n.install(v, "#!/bin/sh\nexit 1\n");
        }
    });
    node.ready_worker(OLD, None);
    node.request_switch(&switch_request("op-c", &blake, 10));
    let result = node.result("op-c", Duration::from_secs(15));
    assert_eq!(result["outcome"], "switched", "{result}");
    assert_eq!(result["reason"], Value::Null);
    assert_eq!(node.current(), NEW);
    let pid = node.ready_worker(NEW, None);
    assert_eq!(result["attempted_pid"], pid);
    assert!(!node.releases().join("switch.json").exists());
    let mut left: Vec<String> = std::fs::read_dir(node.releases())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["0.3.0", "0.4.0", "0.5.0", OLD, NEW]);

    // The supervisor goes on supervising the new version; SIGTERM stops both.
    let mut node = node;
    assert_eq!(unsafe { libc::kill(node.pid() as i32, libc::SIGTERM) }, 0);
    let mut child = node.child.take().unwrap();
    let status = wait_for(Duration::from_secs(20), || child.try_wait().ok().flatten())
        .expect("supervisor exits");
    assert_eq!(status.code(), Some(0), "{}", node.log());
    assert!(!process_alive(pid));
}

#[test]
fn switch_with_a_blake3_mismatch_never_starts_the_target() {
    let node = ScriptNode::start(|n| {
        n.install(NEW, &(prelude(&n.data, NEW) + "ready\n" + IDLE));
    });
    let first = node.ready_worker(OLD, None);
    let wrong = blake3::hash(b"some other binary").to_hex().to_string();
    node.request_switch(&switch_request("op-d", &wrong, 10));
    let result = node.result("op-d", Duration::from_secs(15));
    assert_rolled_back(&node, &result, first);
    let reason = result["reason"].as_str().unwrap();
    assert!(reason.contains("blake3 mismatch"), "{reason}");
    assert_eq!(result["attempted_pid"], Value::Null);
    assert!(node.started(NEW).is_empty(), "the target was started");
}

#[test]
fn failed_switch_restores_the_store_snapshot() {
    let mut blake = String::new();
    let node = ScriptNode::start(|n| {
        std::fs::create_dir_all(n.data.join("store/sub")).unwrap();
        std::fs::write(n.data.join("store/a"), "before").unwrap();
        std::fs::write(n.data.join("store/sub/x"), "x").unwrap();
        let body = "echo after > \"$D/store/a\"\n\
                    echo new > \"$D/store/b\"\n\
                    exit 3\n";
        blake = n.install(NEW, &(prelude(&n.data, NEW) + body));
    });
    let first = node.ready_worker(OLD, None);
    let mut req = switch_request("op-e", &blake, 10);
    req["backup_dir"] = json!("backups/op-e");
    req["restore_data_on_failure"] = json!(true);
    node.request_switch(&req);
    let result = node.result("op-e", Duration::from_secs(15));
    assert_rolled_back(&node, &result, first);
    assert_eq!(node.started(NEW).len(), 1, "the target ran");
    let store = node.data.join("store");
    assert_eq!(std::fs::read_to_string(store.join("a")).unwrap(), "before");
    assert_eq!(std::fs::read_to_string(store.join("sub/x")).unwrap(), "x");
    assert!(!store.join("b").exists(), "the target's write was undone");
    let snap = node.data.join("backups/op-e/store");
    assert_eq!(std::fs::read_to_string(snap.join("a")).unwrap(), "before");
}

#[test]
fn supervisor_restarted_during_a_switch_rolls_back() {
    let node = ScriptNode::start(|n| {
        let blake = n.install(NEW, &(prelude(&n.data, NEW) + "ready\n" + IDLE));
        // Killed after flipping `current`, before a decision.
        let link = n.releases().join("current");
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(NEW, &link).unwrap();
        let req = switch_request("op-f", &blake, 10);
        std::fs::write(
            n.releases().join("switch.json"),
            serde_json::to_vec(&req).unwrap(),
        )
        .unwrap();
    });
    let result = node.result("op-f", Duration::from_secs(10));
    assert_eq!(result["outcome"], "rolled_back");
    assert_eq!(result["reason"], "supervisor restarted during the switch");
    assert_eq!(node.current(), OLD);
    node.ready_worker(OLD, None);
    assert!(node.started(NEW).is_empty());
    assert!(!node.releases().join("switch.json").exists());
}

#[test]
fn a_second_supervisor_on_the_same_data_dir_refuses_to_start() {
    let node = ScriptNode::start(|_| {});
    let first = node.ready_worker(OLD, None);
    let out = Command::new(BIN)
        .arg("node")
        .arg("--data-dir")
        .arg(&node.data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another supervisor"), "{err}");
    assert!(process_alive(first), "the running worker is untouched");
    assert_eq!(node.started(OLD).len(), 1);
}
