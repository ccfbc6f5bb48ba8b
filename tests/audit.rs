//! The audit log across real processes: a refused release publish on one
//! node is recorded there and reaches every other node (push), with the same
//! hash and verified chains; a node that was down when an entry was written
//! catches up by the periodic sync after it restarts. One byte of one
//! audit entry edited in a stopped node's sled store makes `plexi audit
//! verify` against that node fail and name the entry.

mod common;

use std::time::Duration;

use common::{cluster, wait_for, TestNode, ADMIN, BIN, FAST, READ};
use serde_json::{json, Value};

/// Posts a well-formed manifest signed by a key no node trusts: refused
/// (untrusted_release_key, checked before any storage read) and audited.
fn publish_untrusted(node: &TestNode, version: &str) {
    let manifest = json!({
        "manifest": {
            "version": version,
            "blake3": "ab".repeat(32),
            "size_bytes": 4,
            "breaking": false,
            "min_compatible_version": null,
            "notes": "audit test",
            "created_at_ms": 1,
        },
        "public_key": "cd".repeat(32),
        "signature": "ef".repeat(64),
    });
    let res = reqwest::blocking::Client::new()
        .post(format!("{}/api/v1/clustering/updates/releases", node.api))
        .bearer_auth(ADMIN)
        .json(&manifest)
        .timeout(Duration::from_secs(15))
        .send()
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(
        res.json::<Value>().unwrap()["error"]["code"],
        "untrusted_release_key"
    );
}

fn audit(node: &TestNode) -> Value {
    node.get_json("/api/v1/clustering/audit?limit=50")
}

/// The `release.refused` entry of `version` as `node` lists it, once its
/// chains verify.
fn refusal(node: &TestNode, version: &str) -> Option<Value> {
    let list = audit(node);
    if list["chains_verified"] != true {
        return None;
    }
    list["entries"]
        .as_array()?
        .iter()
        .find(|e| e["action"] == "release.refused" && e["detail"]["version"] == version)
        .cloned()
}

#[test]
fn audit_entries_replicate_with_their_hashes() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 3, FAST);

    publish_untrusted(&nodes[0], "9.0.0");
    let first = refusal(&nodes[0], "9.0.0").expect("the refusal is audited where it happened");
    assert_eq!(first["node_id"], "s1");
    assert_eq!(first["detail"]["code"], "untrusted_release_key");
    assert!(!first["actor"].as_str().unwrap().is_empty(), "{first}");
    let seq = first["seq"].as_u64().unwrap();
    assert!(seq >= 1);
    for n in &nodes[1..] {
        let seen = wait_for(Duration::from_secs(15), || {
            refusal(n, "9.0.0").filter(|e| e["hash"] == first["hash"])
        });
        assert_eq!(
            seen.as_ref(),
            Some(&first),
            "{} never listed s1's entry: {}\n{}",
            n.name,
            audit(n),
            n.log_tail()
        );
    }

    // s3 is down while s1 records another refusal; after its restart the
    // periodic sync brings the entry, linked to the first.
    nodes[2].kill();
    publish_untrusted(&nodes[0], "9.0.1");
    let second = refusal(&nodes[0], "9.0.1").expect("second refusal audited");
    assert_eq!(second["seq"].as_u64(), Some(seq + 1));
    assert_eq!(second["prev_hash"], first["hash"]);
    let boot = nodes[0].p2p.clone();
    nodes[2].restart(vec![boot]);
    let seen = wait_for(Duration::from_secs(20), || {
        refusal(&nodes[2], "9.0.1").filter(|e| e["hash"] == second["hash"])
    });
    assert!(
        seen.is_some(),
        "s3 never caught up: {}\n{}",
        audit(&nodes[2]),
        nodes[2].log_tail()
    );
    // Everyone lists the same entries, newest first (compared at one
    // moment: entries written meanwhile, such as a restarted node's
    // start-up audit, reach all).
    let same = wait_for(Duration::from_secs(15), || {
        let reference = audit(&nodes[0]);
        nodes[1..]
            .iter()
            .all(|n| audit(n)["entries"] == reference["entries"])
            .then_some(reference)
    });
    let reference = same
        .unwrap_or_else(|| panic!("views differ: {} vs {}", audit(&nodes[0]), audit(&nodes[2])));
    let entries = reference["entries"].as_array().unwrap();
    assert!(entries.iter().any(|e| e["hash"] == second["hash"]));
    let ats: Vec<&str> = entries.iter().map(|e| e["at"].as_str().unwrap()).collect();
    assert!(
        ats.windows(2).all(|w| w[0] >= w[1]),
        "not newest first: {ats:?}"
    );
}

/// `plexi audit verify` against `node`: (exit ok, stdout + stderr).
fn verify_cli(node: &TestNode) -> (bool, String) {
    let out = std::process::Command::new(BIN)
        .args(["audit", "verify", "--api", &node.api, "--token", READ])
        .output()
        .expect("run plexi audit verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn one_edited_byte_in_sled_fails_verify_and_names_the_entry() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 2, FAST);
    publish_untrusted(&nodes[0], "9.1.0");
    let entry = refusal(&nodes[0], "9.1.0").expect("audited");
    let chain = entry["peer_id"].as_str().unwrap().to_string();
    assert_eq!(
        chain, nodes[0].peer_id,
        "s1's chain is keyed by its peer id"
    );
    assert!(
        entry["signature"].as_str().is_some_and(|s| s.len() == 128),
        "{entry}"
    );
    let seq = entry["seq"].as_u64().unwrap();
    assert!(
        wait_for(Duration::from_secs(15), || refusal(&nodes[1], "9.1.0")).is_some(),
        "s2 never got s1's entry"
    );
    for n in &nodes {
        let (ok, text) = verify_cli(n);
        assert!(ok, "{} does not verify before the edit: {text}", n.name);
    }

    // Stop s2 and change one byte of s1's entry in s2's store.
    nodes[1].kill();
    {
        let db = sled::open(nodes[1].dir.join("data/store")).unwrap();
        let tree = db.open_tree("audit").unwrap();
        let mut key = chain.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(&seq.to_be_bytes());
        let mut raw = tree
            .get(&key)
            .unwrap()
            .expect("the entry is in s2's store")
            .to_vec();
        let at = raw
            .windows(b"release.refused".len())
            .position(|w| w == b"release.refused")
            .expect("the action's bytes");
        raw[at + 9] = b'a'; // release.rafused
        tree.insert(&key, raw).unwrap();
        db.flush().unwrap();
    }
    let boot = nodes[0].p2p.clone();
    nodes[1].restart(vec![boot]);

    let (ok, text) = verify_cli(&nodes[1]);
    assert!(!ok, "verify passed over an edited entry: {text}");
    assert!(text.contains("modified"), "{text}");
    assert!(text.contains(&format!("seq {seq}")), "{text}");
    assert!(text.contains("s1") && text.contains(&chain), "{text}");
    let report = nodes[1].get_json("/api/v1/clustering/audit/verify");
    assert_eq!(report["ok"], false);
    let bad: Vec<&Value> = report["chains"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "failed")
        .collect();
    assert_eq!(bad.len(), 1, "{report}");
    assert_eq!(bad[0]["chain"], chain.as_str());
    assert_eq!(bad[0]["problem"]["seq"].as_u64(), Some(seq));
    assert_eq!(bad[0]["problem"]["fault"], "modified");
    // The sync does not paper over it, and s1's own copy still verifies.
    assert_eq!(audit(&nodes[1])["chains_verified"], false);
    let (ok, text) = verify_cli(&nodes[0]);
    assert!(ok, "{text}");
}

fn set_maintenance(node: &TestNode, enabled: bool) {
    let res = reqwest::blocking::Client::new()
        .post(format!("{}/api/v1/clustering/maintenance", node.api))
        .bearer_auth(ADMIN)
        .json(&json!({ "enabled": enabled, "reason": "audit test" }))
        .timeout(Duration::from_secs(15))
        .send()
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().unwrap());
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Seq of the last entry of `chain` as `node` lists it.
fn last_seq(node: &TestNode, chain: &str) -> u64 {
    audit(node)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["peer_id"] == chain)
        .filter_map(|e| e["seq"].as_u64())
        .max()
        .unwrap_or(0)
}

/// A node whose store is put back to an older copy (as a rolled-back
/// update restores its snapshot) takes back the later entries of its own
/// chain from its peers before it appends again: no fork, every chain
/// verifies everywhere.
#[test]
fn a_restored_store_catches_up_its_own_chain_before_appending() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 2, FAST);
    let s2 = nodes[1].peer_id.clone();
    set_maintenance(&nodes[1], true);
    let before = wait_for(Duration::from_secs(15), || {
        let s = last_seq(&nodes[0], &s2);
        (s > 0 && s == last_seq(&nodes[1], &s2)).then_some(s)
    })
    .expect("s2's entry reached s1");

    // The snapshot, then one more entry of s2's that only the peers keep.
    nodes[1].kill();
    let store = nodes[1].dir.join("data/store");
    let snapshot = root.path().join("snapshot");
    copy_dir(&store, &snapshot);
    let boot = nodes[0].p2p.clone();
    nodes[1].restart(vec![boot.clone()]);
    set_maintenance(&nodes[1], false);
    let lost = wait_for(Duration::from_secs(15), || {
        let s = last_seq(&nodes[0], &s2);
        (s > before).then_some(s)
    })
    .expect("the later entry reached s1");
    nodes[1].kill();
    std::fs::remove_dir_all(&store).unwrap();
    copy_dir(&snapshot, &store);

    // Restarted on the old copy, s2 appends at once.
    nodes[1].restart(vec![boot]);
    set_maintenance(&nodes[1], true);
    let ok = wait_for(Duration::from_secs(20), || {
        let s = last_seq(&nodes[0], &s2);
        (s > lost && s == last_seq(&nodes[1], &s2)).then_some(())
    });
    assert!(
        ok.is_some(),
        "s2's new entry never reached s1 (a fork?): s1 holds {}, s2 holds {}\n{}",
        last_seq(&nodes[0], &s2),
        last_seq(&nodes[1], &s2),
        nodes[1].log_tail()
    );
    for n in &nodes {
        let (ok, text) = verify_cli(n);
        assert!(ok, "{}: {text}", n.name);
    }
}
