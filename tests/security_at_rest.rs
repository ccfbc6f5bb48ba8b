//! Encryption at rest with real `plexi node` processes: with a data key no
//! byte of a stored marker is anywhere under any node's directory (store,
//! value files, logs, snapshots), and without one it is (so the grep can fail);
//! a node restarted with its key reads everything back; a key rotation
//! through the re-encryption job (API and CLI) leaves a cluster whose nodes,
//! started with only the new key, read everything; a node that lost its key
//! is served by the other replicas and repaired, and answers 503 (never 404
//! or 500) for what nobody can serve; and the supervisor's store snapshot
//! before a switch is sealed and restores byte-identical (also after the
//! supervisor died mid-switch).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{cluster, wait_for, TestNode, ADMIN, BIN, FAST};
use serde_json::{json, Value};

/// A marker no other test run writes.
fn marker() -> Vec<u8> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let h = blake3::hash(format!("{nanos}-{}", std::process::id()).as_bytes());
    format!("MARKER-{}", &h.to_hex()[..24]).into_bytes()
}

/// A fresh random data key written to `path`.
fn write_key(path: &Path, seed: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let hex = blake3::hash(format!("{seed}-{nanos}-{}", std::process::id()).as_bytes())
        .to_hex()
        .to_string();
    std::fs::write(path, format!("{hex}\n")).unwrap();
    hex
}

/// Every file under `dir` (recursively, symlinks not followed) holding `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(kind) = e.file_type() else { continue };
            let p = e.path();
            if kind.is_dir() {
                stack.push(p);
            } else if kind.is_file() {
                if let Ok(bytes) = std::fs::read(&p) {
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        out.push(p);
                    }
                }
            }
        }
    }
    out
}

/// Files under `dir` whose path contains `part`.
fn files_named(dir: &Path, part: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().contains(part) {
                out.push(p);
            }
        }
    }
    out
}

/// The small and the large (over sled's 128 KiB blob threshold) objects.
fn objects(marker: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut small = b"small object: ".to_vec();
    small.extend_from_slice(marker);
    let big: Vec<u8> = marker
        .iter()
        .chain(b" large object filler ")
        .copied()
        .cycle()
        .take(200 * 1024)
        .collect();
    vec![("at-rest-small".into(), small), ("at-rest-big".into(), big)]
}

fn assert_reads(n: &TestNode, id: &str, want: &[u8]) {
    let got = wait_for(Duration::from_secs(20), || {
        let r = n.fetch(id, "consistency=eventual");
        (r.status() == 200).then(|| r.bytes().unwrap().to_vec())
    })
    .unwrap_or_else(|| panic!("{} cannot read {id}\n{}", n.name, n.log_tail()));
    assert_eq!(got, want, "{} GET {id}", n.name);
}

/// Stops every node gracefully (SIGTERM: flushed, clean stop marked).
fn stop_all(nodes: &mut [TestNode]) {
    for n in nodes.iter() {
        n.signal(libc::SIGTERM);
    }
    for n in nodes.iter_mut() {
        assert!(
            n.wait_exit(Duration::from_secs(30)).is_some(),
            "{} did not stop",
            n.name
        );
    }
}

/// Restarts stopped nodes: the first alone, the others bootstrapping from it.
fn restart_all(nodes: &mut [TestNode]) {
    nodes[0].restart(vec![]);
    let first = nodes[0].p2p.clone();
    for n in nodes.iter_mut().skip(1) {
        n.restart(vec![first.clone()]);
    }
    assert!(
        common::all_see(nodes, nodes.len(), Duration::from_secs(30)),
        "the restarted cluster did not converge"
    );
}

/// Writes the objects (strong: every replica flushed before the answer),
/// checks each node reads them, and stops the cluster.
fn write_and_stop(nodes: &mut [TestNode], objs: &[(String, Vec<u8>)]) {
    for (id, body) in objs {
        let r = nodes[0].put(id, body, "consistency=strong&replication_factor=3");
        assert!(r.status().is_success(), "PUT {id}: {}", r.status());
    }
    for n in nodes.iter() {
        for (id, body) in objs {
            assert_reads(n, id, body);
        }
    }
    stop_all(nodes);
}

fn config_with_key(key_file: &Path) -> String {
    format!("{FAST}node:\n  data_key_file: {}\n", key_file.display())
}

#[test]
fn with_a_data_key_the_marker_is_nowhere_on_disk_and_reads_survive_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let key = root.path().join("data.key");
    write_key(&key, "at-rest");
    let marker = marker();
    let objs = objects(&marker);
    let mut nodes = cluster(root.path(), 3, &config_with_key(&key));
    write_and_stop(&mut nodes, &objs);

    // The large object really lies in value files, on every node.
    for n in &nodes {
        let files = files_named(&n.dir.join("data/store"), "/values/");
        assert!(
            !files.is_empty(),
            "{}: no value file; the large object did not exercise value files",
            n.name
        );
    }
    // Every file under every node's directory: store, value files, logs, config.
    let found = files_containing(root.path(), &marker);
    assert!(found.is_empty(), "the marker is on disk in: {found:?}");
    let key_hex = std::fs::read_to_string(&key).unwrap();
    let leaked = files_containing(root.path(), key_hex.trim().as_bytes());
    assert_eq!(leaked, vec![key.clone()], "the data key leaked into files");

    // Restarted with the key, every node reads everything back.
    restart_all(&mut nodes);
    for n in &nodes {
        for (id, body) in &objs {
            assert_reads(n, id, body);
        }
    }
}

#[test]
fn without_a_data_key_the_marker_is_found_on_disk() {
    // The control run: the same writes and grep find the marker in every
    // node's store, so the test above can fail.
    let root = tempfile::tempdir().unwrap();
    let marker = marker();
    let objs = objects(&marker);
    let mut nodes = cluster(root.path(), 3, FAST);
    write_and_stop(&mut nodes, &objs);
    let found = files_containing(root.path(), &marker);
    for n in &nodes {
        let store = n.dir.join("data/store");
        assert!(
            found.iter().any(|p| p.starts_with(&store)),
            "{}: marker not found in its store without a data key: {found:?}",
            n.name
        );
        assert!(
            found
                .iter()
                .any(|p| p.to_string_lossy().contains("/values/")),
            "the large object's plaintext is not in a value file: {found:?}"
        );
    }
}

/// Polls a job until it is no longer running; returns every status seen.
fn follow_job(n: &TestNode, job_id: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    wait_for(Duration::from_secs(90), || {
        let j = n.get_json(&format!("/api/v1/clustering/storage/jobs/{job_id}"));
        let running = j["status"] == "running";
        seen.push(j);
        (!running).then_some(())
    })
    .unwrap_or_else(|| panic!("job {job_id} still running after 90 s"));
    seen
}

#[test]
fn key_rotation_reencrypts_everything_so_the_old_key_can_go() {
    let root = tempfile::tempdir().unwrap();
    let old_key = root.path().join("old.key");
    let new_key = root.path().join("new.key");
    write_key(&old_key, "old");
    write_key(&new_key, "new");
    let marker = marker();
    let mut objs = objects(&marker);
    for i in 0..40 {
        objs.push((
            format!("rot-{i}"),
            format!("object {i} {marker:?}").into_bytes(),
        ));
    }
    // A store written before any key: plaintext values, later sealed too.
    objs.push((
        "plain-before-keys".into(),
        b"written without a key".to_vec(),
    ));
    let mut nodes = cluster(root.path(), 3, FAST);
    let r = nodes[0].put(
        "plain-before-keys",
        b"written without a key",
        "consistency=strong",
    );
    assert!(r.status().is_success());
    stop_all(&mut nodes);
    let set_config = |nodes: &[TestNode], text: &str| {
        for n in nodes {
            std::fs::write(n.dir.join("clustering.yml"), text).unwrap();
        }
    };
    set_config(&nodes, &config_with_key(&old_key));
    restart_all(&mut nodes);
    write_and_stop(&mut nodes, &objs[..objs.len() - 1]);

    // Rotate: the new key is current, the old one retired.
    set_config(
        &nodes,
        &format!(
            "{FAST}node:\n  data_key_file: {}\n  retired_data_key_files: [{}]\n",
            new_key.display(),
            old_key.display()
        ),
    );
    restart_all(&mut nodes);
    for (id, body) in &objs {
        assert_reads(&nodes[1], id, body);
    }
    // A read token may not start it.
    let r = reqwest::blocking::Client::new()
        .post(format!(
            "{}/api/v1/clustering/storage/reencrypt",
            nodes[0].api
        ))
        .bearer_auth(common::READ)
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let started: Value = nodes[0]
        .post("/api/v1/clustering/storage/reencrypt")
        .json()
        .unwrap();
    assert_eq!(started["kind"], "reencrypt", "{started}");
    let job_id = started["job_id"].as_str().unwrap().to_string();
    let seen = follow_job(&nodes[2], &job_id);
    let done = seen.last().unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress_percentage"], 100.0);
    assert_eq!(done["nodes"].as_array().unwrap().len(), 3, "{done}");
    let total = done["total_objects"].as_u64().unwrap();
    assert!(total >= 3 * objs.len() as u64, "{done}");
    assert_eq!(done["examined_objects"].as_u64().unwrap(), total, "{done}");
    assert_eq!(
        done["reencrypted_objects"].as_u64().unwrap(),
        3 * objs.len() as u64,
        "every replica of every object rewritten once: {done}"
    );
    let mut last = 0.0;
    for j in &seen {
        let p = j["progress_percentage"].as_f64().unwrap();
        assert!(p >= last, "progress went back: {seen:?}");
        last = p;
    }
    // Audited: the start (with the caller) and every node's part.
    let audited = wait_for(Duration::from_secs(15), || {
        let list = nodes[0].get_json("/api/v1/clustering/audit?limit=100");
        let entries = list["entries"].as_array()?.clone();
        let mine: Vec<&Value> = entries
            .iter()
            .filter(|e| e["operation_id"] == job_id.as_str())
            .collect();
        let started = mine
            .iter()
            .filter(|e| e["action"] == "storage.reencrypt.started")
            .count();
        let parts = mine
            .iter()
            .filter(|e| e["action"] == "storage.reencrypt.part_finished")
            .count();
        (started == 1 && parts == 3).then_some(entries)
    });
    assert!(audited.is_some(), "the re-encryption job is not audited");
    // The CLI follows a second run (nothing left to do) to its end.
    let out = Command::new(BIN)
        .args([
            "storage",
            "reencrypt",
            "--api",
            &nodes[1].api,
            "--token",
            ADMIN,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("completed") && text.contains("0 values re-encrypted"),
        "{text}"
    );

    // Only the new key now: everything reads, on every node.
    stop_all(&mut nodes);
    set_config(&nodes, &config_with_key(&new_key));
    restart_all(&mut nodes);
    for n in &nodes {
        for (id, body) in &objs {
            assert_reads(n, id, body);
        }
    }
    stop_all(&mut nodes);
    // sled may keep superseded log segments for a while; the live values
    // are what the job guarantees, so this is informational only.
    let found = files_containing(root.path(), b"written without a key");
    eprintln!("plaintext written before the key, still in files after rotation: {found:?}");
}

/// A supervisor over a data dir whose releases are shell scripts (as in
/// tests/supervisor.rs), started with a data key in its environment.
struct ScriptNode {
    _root: tempfile::TempDir,
    dir: PathBuf,
    data: PathBuf,
    child: Option<Child>,
}

impl Drop for ScriptNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl ScriptNode {
    /// Starts `plexi node` on `root/data` with `PLEXI_DATA_KEY=key_hex`.
    fn start(root: tempfile::TempDir, key_hex: &str) -> ScriptNode {
        let dir = root.path().to_path_buf();
        let data = dir.join("data");
        let log = std::fs::File::create(dir.join("supervisor.log")).unwrap();
        let child = Command::new(BIN)
            .arg("node")
            .arg("--data-dir")
            .arg(&data)
            .env("PLEXI_DATA_KEY", key_hex)
            .env("PLEXI_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        ScriptNode {
            _root: root,
            dir,
            data,
            child: Some(child),
        }
    }
}

fn install(data: &Path, version: &str, script: &str) -> String {
    let dir = data.join("releases").join(version);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("plexi");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    blake3::hash(script.as_bytes()).to_hex().to_string()
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

#[test]
fn the_supervisors_store_snapshot_is_sealed_and_restores_with_the_key() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().to_path_buf();
    let data = dir.join("data");
    let marker = marker();
    // A store with the marker in a small file and in a large one.
    let store = data.join("store");
    std::fs::create_dir_all(store.join("blobs")).unwrap();
    let big: Vec<u8> = marker.iter().cycle().take(300_000).copied().collect();
    std::fs::write(store.join("db"), &marker).unwrap();
    std::fs::write(store.join("blobs/1"), &big).unwrap();
    // A value file written before the data key (plaintext): the snapshot
    // seals it, where it links value files already sealed.
    std::fs::create_dir_all(store.join("values/ab")).unwrap();
    std::fs::write(store.join("values/ab/v1"), &marker).unwrap();
    let prelude = |v: &str| {
        format!(
            "#!/bin/sh\nD='{}'\nready() {{ printf '{{\"pid\":%s,\"version\":\"{v}\"}}' $$ > \"$D/releases/.r.$$\"; mv \"$D/releases/.r.$$\" \"$D/releases/ready.json\"; }}\n",
            data.display()
        )
    };
    install(
        &data,
        "1.0.0",
        &(prelude("1.0.0")
            + "ready\nwhile [ ! -e \"$D/trigger\" ]; do sleep 0.05; done\nrm -f \"$D/trigger\"\nexit 75\n"),
    );
    // The target scribbles over the store and fails: the snapshot is restored.
    let blake = install(
        &data,
        "9.9.9",
        &(prelude("9.9.9") + "echo scribbled > \"$D/store/db\"\nexit 3\n"),
    );
    std::os::unix::fs::symlink("1.0.0", data.join("releases/current")).unwrap();
    let key_hex = "5a".repeat(32);
    let node = ScriptNode::start(root, &key_hex);
    let logs = || std::fs::read_to_string(node.dir.join("supervisor.log")).unwrap_or_default();
    wait_for(Duration::from_secs(10), || {
        read_json(&node.data.join("releases/ready.json")).filter(|r| r["version"] == "1.0.0")
    })
    .unwrap_or_else(|| panic!("old release never ready\n{}", logs()));
    let req = json!({
        "operation_id": "op-sealed",
        "from_version": "1.0.0",
        "to_version": "9.9.9",
        "to_blake3": blake,
        "deadline_seconds": 10,
        "backup_dir": "backups/op-sealed",
        "restore_data_on_failure": true,
    });
    let tmp = data.join("releases/switch.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&req).unwrap()).unwrap();
    std::fs::rename(&tmp, data.join("releases/switch.json")).unwrap();
    std::fs::write(data.join("trigger"), b"").unwrap();
    let result = wait_for(Duration::from_secs(20), || {
        read_json(&data.join("releases/switch-result.json"))
            .filter(|r| r["operation_id"] == "op-sealed")
    })
    .unwrap_or_else(|| panic!("no switch result\n{}", logs()));
    assert_eq!(result["outcome"], "rolled_back", "{result}");

    // Restored byte-identical with the key.
    assert_eq!(
        std::fs::read(store.join("db")).unwrap(),
        marker,
        "{}",
        logs()
    );
    assert_eq!(std::fs::read(store.join("blobs/1")).unwrap(), big);
    assert_eq!(std::fs::read(store.join("values/ab/v1")).unwrap(), marker);
    // The snapshot: sealed, no plaintext, no unsealed copy beside it.
    let backup = data.join("backups/op-sealed");
    let snap = backup.join(plexi::switch::SEALED_SNAPSHOT);
    assert!(snap.join("blobs/1").is_file(), "{}", logs());
    assert!(
        !backup.join("store").exists(),
        "an unsealed snapshot exists"
    );
    let found = files_containing(&backup, &marker);
    assert!(found.is_empty(), "plaintext in the snapshot: {found:?}");
    // Another key cannot open it; the right one gives identical bytes.
    let other = plexi_util::secret::SecretKey::from_hex(&"77".repeat(32)).unwrap();
    let out = tempfile::tempdir().unwrap();
    assert!(plexi::switch::sealed::open_dir(&snap, &out.path().join("x"), &[other], None).is_err());
    let key = plexi_util::secret::SecretKey::from_hex(&key_hex).unwrap();
    plexi::switch::sealed::open_dir(&snap, &out.path().join("y"), &[key], None).unwrap();
    assert_eq!(std::fs::read(out.path().join("y/db")).unwrap(), marker);
    assert_eq!(std::fs::read(out.path().join("y/blobs/1")).unwrap(), big);
    assert_eq!(
        std::fs::read(out.path().join("y/values/ab/v1")).unwrap(),
        marker
    );
}

#[test]
fn a_value_sealed_under_a_key_the_node_lacks_is_a_clear_error_not_a_500() {
    let root = tempfile::tempdir().unwrap();
    let key_a = root.path().join("a.key");
    let key_b = root.path().join("b.key");
    let hex_a = write_key(&key_a, "a");
    write_key(&key_b, "b");
    let mut nodes = cluster(root.path(), 1, &config_with_key(&key_a));
    let r = nodes[0].put(
        "lonely",
        b"one replica only",
        "replication_factor=1&consistency=strong",
    );
    assert!(r.status().is_success(), "{}", r.status());
    stop_all(&mut nodes);
    std::fs::write(nodes[0].dir.join("clustering.yml"), config_with_key(&key_b)).unwrap();
    nodes[0].restart(vec![]);
    let r = nodes[0].fetch("lonely", "consistency=eventual");
    let status = r.status();
    let body = r.text().unwrap();
    assert_eq!(status, 503, "{body}");
    let err: Value = serde_json::from_str(&body).expect("a JSON error body");
    assert!(
        err["error"].is_object() || err["code"].is_string() || err["message"].is_string(),
        "{err}"
    );
    assert!(!body.contains(&hex_a), "the key is in the error body");
    // The log names the key the value is sealed under, by its id.
    let key_id = plexi_util::secret::SecretKey::from_hex(&hex_a)
        .unwrap()
        .fingerprint();
    let logged = wait_for(Duration::from_secs(10), || {
        let log = std::fs::read_to_string(nodes[0].dir.join("node.log")).unwrap_or_default();
        log.contains(&key_id).then_some(log)
    })
    .expect("the node log names the missing key id");
    assert!(!logged.contains(&hex_a), "the key itself is in the log");
    // Metadata is not secret: info still answers.
    assert_eq!(
        nodes[0]
            .get(
                "/api/v1/clustering/storage/data/lonely/info",
                Some(common::READ)
            )
            .status(),
        200
    );
}

#[test]
fn a_node_that_lost_its_key_is_served_by_other_replicas_and_repaired() {
    let root = tempfile::tempdir().unwrap();
    let key = root.path().join("data.key");
    let other = root.path().join("other.key");
    write_key(&key, "shared");
    write_key(&other, "lost");
    let marker = marker();
    let objs = objects(&marker);
    let mut nodes = cluster(root.path(), 3, &config_with_key(&key));
    write_and_stop(&mut nodes, &objs);
    // s3 comes back with a different key: its copies are sealed under a
    // key it no longer holds.
    std::fs::write(nodes[2].dir.join("clustering.yml"), config_with_key(&other)).unwrap();
    restart_all(&mut nodes);
    for (id, body) in &objs {
        assert_reads(&nodes[2], id, body);
    }
    // The re-encryption job replaces them from the other replicas, sealed
    // under s3's key now.
    let started: Value = nodes[2]
        .post("/api/v1/clustering/storage/reencrypt")
        .json()
        .unwrap();
    let job_id = started["job_id"].as_str().unwrap().to_string();
    let done = follow_job(&nodes[0], &job_id).pop().unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["repaired_replicas"].as_u64().unwrap(),
        objs.len() as u64,
        "s3's unreadable copies replaced: {done}"
    );
    // s3 alone now serves its own copies.
    nodes[0].kill();
    nodes[1].kill();
    for (id, body) in &objs {
        assert_reads(&nodes[2], id, body);
    }
}

#[test]
fn a_supervisor_restarted_mid_switch_restores_the_sealed_snapshot() {
    // The supervisor died after sealing the snapshot and flipping `current`;
    // the target had scribbled over the store. At its next start it rolls
    // back and restores the sealed snapshot with the data key.
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let store = data.join("store");
    std::fs::create_dir_all(store.join("blobs")).unwrap();
    let marker = marker();
    std::fs::write(store.join("db"), &marker).unwrap();
    std::fs::write(store.join("blobs/3"), vec![1u8; 200_000]).unwrap();
    let key_hex = "6b".repeat(32);
    let key = plexi_util::secret::SecretKey::from_hex(&key_hex).unwrap();
    let snap =
        plexi::switch::snapshot_store(&data, &data.join("backups/op-g"), Some(&key)).unwrap();
    assert!(files_containing(&snap, &marker).is_empty());
    std::fs::write(store.join("db"), b"scribbled by the target").unwrap();
    let ready = |v: &str| {
        format!(
            "#!/bin/sh\nprintf '{{\"pid\":%s,\"version\":\"{v}\"}}' $$ > '{d}/releases/.r.'$$; mv '{d}/releases/.r.'$$ '{d}/releases/ready.json'\nwhile :; do sleep 0.05; done\n",
            d = data.display()
        )
    };
    install(&data, "1.0.0", &ready("1.0.0"));
    let blake = install(&data, "9.9.9", &ready("9.9.9"));
    std::os::unix::fs::symlink("9.9.9", data.join("releases/current")).unwrap();
    let req = json!({
        "operation_id": "op-g",
        "from_version": "1.0.0",
        "to_version": "9.9.9",
        "to_blake3": blake,
        "deadline_seconds": 10,
        "backup_dir": "backups/op-g",
        "restore_data_on_failure": true,
    });
    std::fs::write(
        data.join("releases/switch.json"),
        serde_json::to_vec(&req).unwrap(),
    )
    .unwrap();
    let node = ScriptNode::start(root, &key_hex);
    let logs = || std::fs::read_to_string(node.dir.join("supervisor.log")).unwrap_or_default();
    let result = wait_for(Duration::from_secs(15), || {
        read_json(&node.data.join("releases/switch-result.json"))
            .filter(|r| r["operation_id"] == "op-g")
    })
    .unwrap_or_else(|| panic!("no switch result\n{}", logs()));
    assert_eq!(result["outcome"], "rolled_back", "{result}");
    assert_eq!(
        std::fs::read(node.data.join("store/db")).unwrap(),
        marker,
        "the sealed snapshot was not restored\n{}",
        logs()
    );
    assert_eq!(
        std::fs::read(node.data.join("store/blobs/3")).unwrap(),
        vec![1u8; 200_000]
    );
}
