//! The audit log across real processes: a refused release publish on one
//! node is recorded there and reaches every other node (push), with the same
//! hash and verified chains; a node that was down when an entry was written
//! catches up by the periodic sync after it restarts.

mod common;

use std::time::Duration;

use common::{cluster, wait_for, TestNode, ADMIN, FAST};
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
    // Everyone lists the same entries, newest first.
    let reference = audit(&nodes[0]);
    let ok = wait_for(Duration::from_secs(10), || {
        nodes[1..]
            .iter()
            .all(|n| audit(n)["entries"] == reference["entries"])
            .then_some(())
    });
    assert!(
        ok.is_some(),
        "views differ: {reference} vs {}",
        audit(&nodes[2])
    );
    let entries = reference["entries"].as_array().unwrap();
    assert_eq!(entries[0]["hash"], second["hash"]);
}
