//! Signed releases through the real CLI and API: keygen, publish into the
//! cluster's own storage, listing with trust; untrusted keys, tampered
//! binaries and replayed manifests are refused.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{cluster, wait_for, ADMIN, BIN, FAST};
use serde_json::Value;

fn keygen(dir: &std::path::Path, name: &str) -> String {
    let out = Command::new(BIN)
        .args(["release", "keygen", "--out"])
        .arg(dir.join(name))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let public = text.lines().last().unwrap().trim().to_string();
    assert_eq!(public.len(), 64, "{text}");
    public
}

fn publish(
    api: &str,
    dir: &std::path::Path,
    key: &str,
    version: &str,
    binary: &[u8],
) -> (bool, String) {
    let bin = dir.join(format!("plexi-{version}"));
    std::fs::write(&bin, binary).unwrap();
    let out = Command::new(BIN)
        .args(["release", "publish", "--binary"])
        .arg(&bin)
        .args(["--version", version, "--key"])
        .arg(dir.join(key))
        .args(["--notes", "test release", "--api", api, "--token", ADMIN])
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn post_manifest(api: &str, manifest: &Value) -> reqwest::blocking::Response {
    reqwest::blocking::Client::new()
        .post(format!("{api}/api/v1/clustering/updates/releases"))
        .bearer_auth(ADMIN)
        .json(manifest)
        .send()
        .unwrap()
}

#[test]
fn publish_list_and_refusals() {
    let root = tempfile::tempdir().unwrap();
    let keys = root.path();
    let trusted = keygen(keys, "trusted.key");
    let _stranger = keygen(keys, "stranger.key");
    let config = format!("{FAST}cluster_updates:\n  release_public_keys: [\"{trusted}\"]\n");
    let nodes = cluster(root.path(), 3, &config);
    let api = nodes[0].api.clone();

    // Publish through one node; every node lists it as trusted.
    let (ok, out) = publish(&api, keys, "trusted.key", "1.0.0", b"first binary");
    assert!(ok, "{out}");
    for n in &nodes {
        let list = n.get_json("/api/v1/clustering/updates/releases");
        let r = &list["releases"][0];
        assert_eq!(r["version"], "1.0.0", "{list}");
        assert_eq!(r["trusted"], true);
        assert_eq!(r["blake3"], blake3::hash(b"first binary").to_hex().as_str());
    }
    // The stored manifest, kept to replay later.
    let old: Value = nodes[1]
        .fetch("release.1.0.0.manifest", "consistency=strong")
        .json()
        .unwrap();

    // An untrusted key is refused, and nothing is listed for it.
    let (ok, out) = publish(&api, keys, "stranger.key", "2.0.0", b"evil");
    assert!(!ok);
    assert!(
        out.contains("untrusted") || out.contains("release_public_keys"),
        "{out}"
    );
    let list = nodes[2].get_json("/api/v1/clustering/updates/releases");
    assert!(list["releases"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["version"] != "2.0.0"));

    // A tampered manifest (size changed after signing) fails its signature.
    let mut tampered = old.clone();
    tampered["manifest"]["notes"] = "changed".into();
    let res = post_manifest(&api, &tampered);
    assert_eq!(res.status(), 400);
    assert_eq!(
        res.json::<Value>().unwrap()["error"]["code"],
        "bad_release_signature"
    );

    // A binary swapped after publishing no longer matches its manifest.
    assert_eq!(
        nodes[0]
            .put("release.1.0.0.bin", b"swapped binary", "consistency=strong")
            .status(),
        201
    );
    let res = post_manifest(&api, &old);
    assert_eq!(res.status(), 400);
    assert_eq!(
        res.json::<Value>().unwrap()["error"]["code"],
        "release_hash_mismatch"
    );

    // Republish 1.0.0 with a newer manifest, then replay the old one: 409.
    std::thread::sleep(Duration::from_millis(5));
    let (ok, out) = publish(&api, keys, "trusted.key", "1.0.0", b"first binary");
    assert!(ok, "{out}");
    let res = post_manifest(&api, &old);
    assert_eq!(res.status(), 409);
    assert_eq!(
        res.json::<Value>().unwrap()["error"]["code"],
        "release_replay"
    );
    let listed = wait_for(Duration::from_secs(5), || {
        let list = nodes[2].get_json("/api/v1/clustering/updates/releases");
        (list["releases"].as_array()?.len() == 1).then_some(list)
    });
    assert!(listed.is_some());
}
