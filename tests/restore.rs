//! Complete restoration on rollback, with real processes and real builds:
//! a rolling update to a release that migrates (a marker in its store, one
//! config key rewritten) and then fails its health check or crashes. The
//! node returns by itself to the old binary, the pre-update config (byte
//! for byte) and the pre-update store snapshot, then catches up from its
//! replicas: every write acknowledged before and during the update reads
//! back through every node.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    api_of, build_version, cluster, get_json_at, read_object_at, release_keygen, release_publish,
    wait_for, TestNode, ADMIN, BIN, FAST,
};
use serde_json::{json, Value};

/// The tree and key the `migrate-*` builds write (src/node/fault.rs).
const MIGRATION_TREE: &str = "storage.migrations";
const MIGRATION_MARKER: &str = "migrated-by";
/// Bounds of the polls below.
const FINAL_WITHIN: Duration = Duration::from_secs(90);
const CONVERGE_WITHIN: Duration = Duration::from_secs(30);

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn write(api: &str, key: &str, body: &[u8], query: &str) -> bool {
    http()
        .put(format!(
            "{api}/api/v1/clustering/storage/data/{key}?{query}"
        ))
        .bearer_auth(ADMIN)
        .body(body.to_vec())
        .send()
        .is_ok_and(|r| r.status().is_success())
}

fn version_of(dir: &Path) -> Option<String> {
    let api = api_of(dir)?;
    Some(
        get_json_at(&api, "/health")?["version"]
            .as_str()?
            .to_string(),
    )
}

/// Acknowledged writes: (key, bytes).
type Acked = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Writes unique keys through every node in turn (strong and eventual,
/// replication factor 3 and 2), moving on to the next node when one
/// refuses or is down; records every acknowledged write.
fn start_writer(
    dirs: Vec<PathBuf>,
    stop: Arc<AtomicBool>,
    acked: Acked,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut i = 0usize;
        let mut attempts = 0usize;
        while !stop.load(Ordering::SeqCst) {
            i += 1;
            let key = format!("during-{i}");
            let body = format!("during value {i}").into_bytes();
            let level = if i.is_multiple_of(2) {
                "strong"
            } else {
                "eventual"
            };
            let rf = if i.is_multiple_of(3) { 2 } else { 3 };
            let query = format!("consistency={level}&replication_factor={rf}");
            for k in 0..dirs.len() {
                attempts += 1;
                let Some(api) = api_of(&dirs[(i + k) % dirs.len()]) else {
                    continue;
                };
                if write(&api, &key, &body, &query) {
                    acked.lock().unwrap().push((key.clone(), body.clone()));
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        attempts
    })
}

fn config(public_key: &str) -> String {
    // Releases are stored as objects: room for a debug binary.
    let fast = FAST.replace("max_object_mib: 8", "max_object_mib: 128");
    format!(
        "{fast}cluster_updates:\n  release_public_keys: [\"{public_key}\"]\n  rolling_update_delay_seconds: 1\n  health_check_timeout_seconds: 12\n  rollback_timeout_seconds: 120\n"
    )
}

/// The migration marker in a stopped node's store, if any.
fn marker(dir: &Path) -> Option<Vec<u8>> {
    let store = plexi_store::NodeStore::open(&dir.join("data/store")).unwrap();
    let tree = store.tree(MIGRATION_TREE).unwrap();
    tree.get(MIGRATION_MARKER).unwrap().map(|v| v.to_vec())
}

/// One test at a time: each runs a 3-node cluster through timed rollouts.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn rollback_restores(version: &str, fault: &str) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let faulty = build_version(version, fault);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let public = release_keygen(root);
    let text = config(&public);
    let nodes: Vec<TestNode> = cluster(root, 3, &text);
    let base = String::from_utf8(Command::new(BIN).arg("--version").output().unwrap().stdout)
        .unwrap()
        .trim()
        .trim_start_matches("plexi ")
        .to_string();
    release_publish(&nodes[0].api, root, &faulty, version, &[]);

    // Before: strong and eventual, RF 3 and 2, through every node.
    let mut acked: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..24 {
        let level = ["strong", "eventual"][i % 2];
        let rf = [3, 2][(i / 2) % 2];
        let key = format!("before-{i}");
        let body = format!("before value {i}").into_bytes();
        let query = format!("consistency={level}&replication_factor={rf}");
        assert!(write(&nodes[i % 3].api, &key, &body, &query), "{key}");
        acked.push((key, body));
    }
    let configs: Vec<Vec<u8>> = nodes
        .iter()
        .map(|n| std::fs::read(n.dir.join("clustering.yml")).unwrap())
        .collect();
    assert!(configs.iter().all(|c| c == text.as_bytes()));

    // During: a writer through every node while the update rolls.
    let stop = Arc::new(AtomicBool::new(false));
    let during: Acked = Arc::new(Mutex::new(Vec::new()));
    let dirs: Vec<PathBuf> = nodes.iter().map(|n| n.dir.clone()).collect();
    let writer = start_writer(dirs, stop.clone(), during.clone());
    let started = Instant::now();
    let body = json!({"target_version": version, "strategy": "rolling"});
    let r = http()
        .post(format!("{}/api/v1/clustering/updates/plan", nodes[1].api))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let id = r.json::<Value>().unwrap()["operation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = http()
        .post(format!(
            "{}/api/v1/clustering/updates/{id}/execute",
            nodes[1].api
        ))
        .bearer_auth(ADMIN)
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);

    // The operation rolls back by itself on every node.
    let status_path = format!("/api/v1/clustering/updates/{id}/status");
    let op = wait_for(FINAL_WITHIN, || {
        let ops: Vec<Value> = nodes
            .iter()
            .map(|n| get_json_at(&api_of(&n.dir)?, &status_path))
            .collect::<Option<_>>()?;
        ops.iter()
            .all(|o| o["status"] == "rolled_back")
            .then(|| ops[0].clone())
    })
    .unwrap_or_else(|| {
        // Each node's view of the operation, then its log.
        let logs: Vec<String> = nodes
            .iter()
            .map(|n| {
                let view = api_of(&n.dir).and_then(|a| get_json_at(&a, &status_path));
                format!(
                    "--- {} sees {}\n{}",
                    n.name,
                    view.map_or("no answer".into(), |v| format!(
                        "{} {}",
                        v["status"], v["node_statuses"]
                    )),
                    n.log_tail()
                )
            })
            .collect();
        panic!(
            "{id} did not roll back everywhere within {FINAL_WITHIN:?}\n{}",
            logs.join("\n")
        )
    });
    let failed: Vec<String> = op["node_statuses"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, s)| s["error_message"].is_string())
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(failed.len(), 1, "{op:#}");
    let restored = nodes.iter().position(|n| n.name == failed[0]).unwrap();
    let node = &nodes[restored];
    // Every node (the failed one too) serves the old version again.
    let back = wait_for(CONVERGE_WITHIN, || {
        nodes
            .iter()
            .all(|n| version_of(&n.dir).as_deref() == Some(base.as_str()))
            .then_some(())
    });
    assert!(back.is_some(), "not every node is back on {base}");
    // Keep writing a little after the return, then stop.
    let n_during = during.lock().unwrap().len();
    wait_for(CONVERGE_WITHIN, || {
        (during.lock().unwrap().len() >= n_during + 10).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    let attempts = writer.join().unwrap();
    let during = during.lock().unwrap().clone();
    eprintln!(
        "{fault}: rolled back in {:?}; {} writes acknowledged during the update ({attempts} attempts)",
        started.elapsed(),
        during.len()
    );
    assert!(during.len() > 20, "the writer barely ran: {}", during.len());

    // The faulty build did migrate, and the supervisor put things back.
    let log = node.log();
    assert!(
        log.contains("test build: migration marker written"),
        "{}",
        node.log_tail()
    );
    assert!(
        log.contains("test build: config key rewritten"),
        "{}",
        node.log_tail()
    );
    assert!(
        log.contains("store and config restored to their pre-update state"),
        "{}",
        node.log_tail()
    );
    for (n, before) in nodes.iter().zip(&configs) {
        assert_eq!(
            &std::fs::read(n.dir.join("clustering.yml")).unwrap(),
            before,
            "{}: config file changed",
            n.name
        );
    }

    // Every acknowledged write reads back with its bytes through every
    // node, the restored one included once it caught up (polled).
    acked.extend(during);
    let check_started = Instant::now();
    for n in &nodes {
        let missing = wait_for(CONVERGE_WITHIN, || {
            let api = api_of(&n.dir)?;
            let wrong: Vec<&str> = acked
                .iter()
                .filter(|(k, v)| read_object_at(&api, k).as_deref() != Some(v.as_slice()))
                .map(|(k, _)| k.as_str())
                .collect();
            wrong.is_empty().then_some(())
        });
        if missing.is_none() {
            let api = api_of(&n.dir).unwrap();
            let wrong: Vec<&str> = acked
                .iter()
                .filter(|(k, v)| read_object_at(&api, k).as_deref() != Some(v.as_slice()))
                .map(|(k, _)| k.as_str())
                .collect();
            panic!(
                "{}: {} acknowledged writes unreadable: {wrong:?}\n{}",
                n.name,
                wrong.len(),
                n.log_tail()
            );
        }
    }
    eprintln!(
        "{fault}: {} acknowledged writes read back through all 3 nodes in {:?}",
        acked.len(),
        check_started.elapsed()
    );

    // Stopped, the restored node's store holds no migration marker.
    let mut nodes = nodes;
    nodes[restored].kill();
    assert_eq!(
        marker(&nodes[restored].dir),
        None,
        "migration marker left in the store"
    );
}

#[test]
fn a_release_that_migrates_then_fails_its_health_check_is_undone() {
    rollback_restores("0.1.5", "migrate-unhealthy");
}

#[test]
fn a_release_that_migrates_then_crashes_is_undone() {
    rollback_restores("0.1.6", "migrate-crash");
}
