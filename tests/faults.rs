//! The test-only fault file (`DATA_DIR/test-faults.json`) on a real
//! three-node cluster: each fault has its effect on the node whose data dir
//! holds it, and removing the file heals it. One cluster, one phase per
//! fault, every wait polled.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::Value;

/// Changes the node has logged applying.
fn changes(node: &TestNode) -> usize {
    node.log().matches("test-only faults changed").count()
}

/// Waits until the node logs one more change than `before`.
fn wait_change(node: &TestNode, before: usize) {
    wait_for(Duration::from_secs(5), || {
        (changes(node) > before).then_some(())
    })
    .unwrap_or_else(|| panic!("{} applied no change\n{}", node.name, node.log_tail()));
}

/// Writes the file as the harness does (tmp + rename), and waits until the
/// node has applied it.
fn write_faults(node: &TestNode, json: &str) {
    let before = changes(node);
    write_file(node, json);
    wait_change(node, before);
}

fn write_file(node: &TestNode, json: &str) {
    let data = node.dir.join("data");
    let tmp = data.join("test-faults.json.tmp");
    std::fs::write(&tmp, json).unwrap();
    std::fs::rename(&tmp, data.join("test-faults.json")).unwrap();
}

/// Removes the file and waits until the node has cleared its faults.
fn remove_faults(node: &TestNode) {
    let before = changes(node);
    std::fs::remove_file(node.dir.join("data/test-faults.json")).unwrap();
    wait_change(node, before);
}

/// Waits until the node's log says `needle` (a change it applied).
fn wait_log(node: &TestNode, needle: &str, within: Duration) {
    wait_for(within, || node.log().contains(needle).then_some(()))
        .unwrap_or_else(|| panic!("{} never logged {needle:?}\n{}", node.name, node.log_tail()));
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// How far the node's own clock is from ours: the `checked_at` of its
/// local health report minus our wall clock, in ms.
fn clock_skew_ms(node: &TestNode) -> Option<i64> {
    let h = node.try_get_json(&format!("/api/v1/clustering/nodes/{}/health", node.name))?;
    let at = humantime::parse_rfc3339(h["checked_at"].as_str()?).ok()?;
    let at = at.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64;
    Some(at - now_ms())
}

/// The physical part (ms) of a version `physical.logical.node`.
fn physical_ms(put: &Value) -> i64 {
    put["version"]
        .as_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn put_ok(node: &TestNode, id: &str, body: &[u8], level: &str) -> Value {
    let res = node.put(id, body, &format!("consistency={level}"));
    assert!(
        res.status().is_success(),
        "put {id} ({level}) through {}: {}",
        node.name,
        res.status()
    );
    res.json().unwrap()
}

fn has_copy_on(node: &TestNode, id: &str, holder: &str) -> bool {
    node.try_get_json(&format!("/api/v1/clustering/storage/data/{id}/info"))
        .and_then(|v| v["replicas"].as_array().cloned())
        .is_some_and(|r| {
            r.iter()
                .any(|x| x["node_id"] == holder && x["has_copy"] == true && x["is_current"] == true)
        })
}

#[test]
fn each_fault_has_its_effect_and_removing_the_file_heals_it() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 3, FAST);
    let started = Instant::now();

    clock_offset(&nodes);
    store_write_errors(&nodes);
    torn_write(&mut nodes);
    network_loss_and_delay(&nodes);
    network_duplication(&nodes);

    // A malformed file is logged and changes nothing; the node serves on.
    let before = changes(&nodes[0]);
    write_file(&nodes[0], r#"{"net_los_percent": 100}"#);
    wait_log(
        &nodes[0],
        "test-only fault file refused",
        Duration::from_secs(5),
    );
    put_ok(&nodes[0], "after-typo", b"x", "strong");
    assert_eq!(
        changes(&nodes[0]),
        before,
        "a malformed file changed the faults"
    );
    // Removing it changes nothing either: no fault was in force.
    std::fs::remove_file(nodes[0].dir.join("data/test-faults.json")).unwrap();
    eprintln!("fault phases took {:?}", started.elapsed());
}

/// `clock_offset_ms` moves the node's wall clock: its reported time and
/// the HLC versions it gives; removing the file brings the time back.
fn clock_offset(nodes: &[TestNode]) {
    let s1 = &nodes[0];
    assert!(clock_skew_ms(s1).unwrap().abs() < 2_000);
    write_faults(s1, r#"{"clock_offset_ms": 20000}"#);
    wait_for(Duration::from_secs(5), || {
        clock_skew_ms(s1).filter(|d| (d - 20_000).abs() < 2_000)
    })
    .unwrap_or_else(|| panic!("s1's clock never moved by 20 s\n{}", s1.log_tail()));
    let before = now_ms();
    let put = put_ok(s1, "skewed", b"from the future", "strong");
    assert!(
        physical_ms(&put) >= before + 18_000,
        "the version {} is not 20 s ahead of {before}",
        put["version"]
    );
    // The other nodes took the version (within the HLC's 60 s bound).
    assert_eq!(
        nodes[1]
            .fetch("skewed", "consistency=strong")
            .bytes()
            .unwrap()
            .as_ref(),
        b"from the future"
    );
    a_later_strong_write_outranks_one_from_a_clock_ahead(nodes);
    remove_faults(s1);
    wait_for(Duration::from_secs(5), || {
        clock_skew_ms(s1).filter(|d| d.abs() < 2_000)
    })
    .expect("s1's clock came back");
}

/// s1's clock is 20 s ahead. A strong write through s1 of an object whose
/// one replica is s3, then one through s2 (whose clock is right, and which
/// never saw that version): the second must win, since it began after the
/// first was acknowledged. Without the coordinator learning the newest
/// version from a majority first, the second write was acknowledged with
/// a lower version and lost to the first by last-writer-wins.
fn a_later_strong_write_outranks_one_from_a_clock_ahead(nodes: &[TestNode]) {
    let (s1, s2, s3) = (&nodes[0], &nodes[1], &nodes[2]);
    let query = "consistency=strong&replication_factor=1";
    let id = (0..200)
        .map(|i| format!("skew-order-{i}"))
        .find(|id| {
            let res = s1.put(id, b"first, from s1", query);
            assert!(res.status().is_success(), "put {id}: {}", res.status());
            let put: Value = res.json().unwrap();
            put["replicas"] == serde_json::json!([s3.name])
        })
        .expect("some object placed on s3 alone");
    let res = s2.put(&id, b"second, from s2", query);
    assert!(
        res.status().is_success(),
        "put {id} via s2: {}",
        res.status()
    );
    for node in nodes {
        let got = node.fetch(&id, "consistency=strong").bytes().unwrap();
        assert_eq!(
            got.as_ref(),
            b"second, from s2",
            "a strong read of {id} through {} returned the earlier write",
            node.name
        );
    }
}

/// `store_write_error_percent: 100` on s3: every write of its store
/// fails, so a strong write (all three replicas) fails wherever it
/// enters, while eventual writes succeed through the other replicas, s3
/// included as coordinator, and leave s3 to be repaired; after removal,
/// s3 gets its copy and strong writes pass again.
fn store_write_errors(nodes: &[TestNode]) {
    let s3 = &nodes[2];
    write_faults(s3, r#"{"store_write_error_percent": 100}"#);
    wait_log(s3, "store_write_error_percent=100", Duration::from_secs(5));
    for n in nodes {
        let res = n.put("strong-refused", b"x", "consistency=strong");
        assert!(
            res.status().is_server_error(),
            "strong write through {} with s3's store failing: {}",
            n.name,
            res.status()
        );
    }
    let put = put_ok(&nodes[0], "eventual-1", b"one", "eventual");
    let acked: Vec<&str> = put["acknowledged_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        !acked.contains(&"s3"),
        "s3 acknowledged a write its store failed: {acked:?}"
    );
    let through_s3 = put_ok(s3, "eventual-2", b"two", "eventual");
    assert!(!through_s3["acknowledged_by"].to_string().contains("s3"));
    assert!(!has_copy_on(&nodes[0], "eventual-1", "s3"));
    assert!(s3.log().contains("injected by the test-only fault file"));

    remove_faults(s3);
    wait_for(Duration::from_secs(20), || {
        (has_copy_on(&nodes[0], "eventual-1", "s3") && has_copy_on(&nodes[0], "eventual-2", "s3"))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("s3 never got the writes it missed\n{}", s3.log_tail()));
    put_ok(&nodes[0], "strong-after", b"y", "strong");
}

/// `store_torn_write` on s2: the next object write it stores is torn, the
/// worker aborts and its supervisor restarts it, the torn copy is never
/// served, and the same file does not tear again after the restart.
fn torn_write(nodes: &mut [TestNode]) {
    let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let s2_worker = nodes[1].worker_pid().expect("s2's worker");
    write_faults(&nodes[1], r#"{"store_torn_write": true}"#);
    wait_log(&nodes[1], "store_torn_write=true", Duration::from_secs(5));
    put_ok(&nodes[0], "torn", &body, "eventual");
    wait_log(
        &nodes[1],
        "torn write stored and flushed",
        Duration::from_secs(10),
    );
    let restarted = wait_for(Duration::from_secs(20), || {
        nodes[1].worker_pid().filter(|p| *p != s2_worker)
    });
    assert!(
        restarted.is_some(),
        "s2's worker was not restarted\n{}",
        nodes[1].log_tail()
    );
    wait_log(
        &nodes[1],
        "its torn write was already spent",
        Duration::from_secs(20),
    );
    let s2 = &nodes[1];
    wait_for(Duration::from_secs(20), || {
        reqwest::blocking::get(format!("{}/health", api_of(&s2.dir)?))
            .ok()
            .filter(|r| r.status().is_success())
    })
    .expect("s2 serves again");
    let api = api_of(&s2.dir).unwrap();
    // Every read through s2 at every level: the right bytes, or a clean
    // error, never the torn half.
    for level in ["weak", "eventual", "strong"] {
        let got = wait_for(Duration::from_secs(10), || {
            let res = reqwest::blocking::Client::new()
                .get(format!(
                    "{api}/api/v1/clustering/storage/data/torn?consistency={level}"
                ))
                .bearer_auth(READ)
                .timeout(Duration::from_secs(10))
                .send()
                .ok()?;
            if !res.status().is_success() {
                return None;
            }
            Some(res.bytes().ok()?.to_vec())
        })
        .unwrap_or_else(|| panic!("no {level} read of the torn object through s2"));
        assert_eq!(got.len(), body.len(), "{level} read served torn bytes");
        assert_eq!(got, body, "{level} read served wrong bytes");
    }
    // A read that met the torn copy had s2 replace it at once from a
    // replica (no scrub needed); a full scrub (the cleanup job) finds
    // nothing more.
    nodes[1].api = api;
    let s2 = &nodes[1];
    let replaced = wait_for(Duration::from_secs(15), || {
        // Reads through s2 go on until one meets its own copy: right after
        // its restart s2 reads its own copy last (catching up), and an
        // earlier read may have been served elsewhere.
        let _ = reqwest::blocking::Client::new()
            .get(format!(
                "{}/api/v1/clustering/storage/data/torn?consistency=weak",
                s2.api
            ))
            .bearer_auth(READ)
            .timeout(Duration::from_secs(5))
            .send();
        (metric(s2, "plexi_storage_corrupt_replicas_total") >= 1
            && metric(s2, "plexi_storage_repaired_replicas_total") >= 1)
            .then_some(())
    });
    assert!(
        replaced.is_some(),
        "no read found and replaced s2's torn copy\n{}",
        s2.log_tail()
    );
    run_cleanup(s2);
    let corrupt = metric(s2, "plexi_storage_corrupt_replicas_total");
    assert!(
        corrupt >= 1,
        "s2 never found its torn copy\n{}",
        s2.log_tail()
    );
    run_cleanup(s2);
    assert_eq!(
        metric(s2, "plexi_storage_corrupt_replicas_total"),
        corrupt,
        "the torn copy was not replaced"
    );
    // The restarted worker runs with no fault in force (the torn write
    // was spent), so the removal changes no fault: only the marker goes.
    std::fs::remove_file(s2.dir.join("data/test-faults.json")).unwrap();
    wait_for(Duration::from_secs(5), || {
        (!s2.dir.join("data/test-faults.torn").exists()).then_some(())
    })
    .expect("the spent-torn-write marker is removed with the file");
}

/// Runs a cleanup job (which scrubs) from `node` to its end.
fn run_cleanup(node: &TestNode) {
    let job: Value = node
        .post("/api/v1/clustering/storage/cleanup")
        .json()
        .unwrap();
    let id = job["job_id"].as_str().expect("a job id").to_string();
    wait_for(Duration::from_secs(30), || {
        let j = node.try_get_json(&format!("/api/v1/clustering/storage/jobs/{id}"))?;
        (j["status"] != "running").then_some(())
    })
    .unwrap_or_else(|| panic!("cleanup job {id} still running"));
}

/// The sum of the samples of `name` on the node's `/metrics`.
fn metric(node: &TestNode, name: &str) -> u64 {
    let text = node.get("/metrics", Some(READ)).text().unwrap();
    text.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// `net_loss_percent: 100` on s3: its heartbeats, exchanges and answers
/// are lost, so the others see it suspect, then dead; after removal it is
/// alive again. `net_delay_ms` holds each request s1 sends.
fn network_loss_and_delay(nodes: &[TestNode]) {
    let s3 = &nodes[2];
    write_faults(s3, r#"{"net_loss_percent": 100}"#);
    wait_log(s3, "net_loss_percent=100", Duration::from_secs(5));
    for n in &nodes[..2] {
        wait_for(Duration::from_secs(10), || {
            n.status_of("s3").filter(|s| s == "dead")
        })
        .unwrap_or_else(|| panic!("{} never saw s3 dead", n.name));
    }
    remove_faults(s3);
    for n in &nodes[..2] {
        wait_for(Duration::from_secs(15), || {
            n.status_of("s3").filter(|s| s == "alive")
        })
        .unwrap_or_else(|| panic!("{} never saw s3 alive again", n.name));
    }

    let s1 = &nodes[0];
    write_faults(s1, r#"{"net_delay_ms": [400, 400]}"#);
    wait_log(s1, "net_delay_ms=Some((400, 400))", Duration::from_secs(5));
    let t = Instant::now();
    put_ok(s1, "delayed", b"late", "strong");
    let delayed = t.elapsed();
    assert!(
        delayed >= Duration::from_millis(400),
        "a strong write took {delayed:?} under a 400 ms delay"
    );
    remove_faults(s1);
}

/// The node's count of application calls served.
fn app_calls_served(node: &TestNode) -> u64 {
    let text = node.get("/metrics", Some(READ)).text().unwrap();
    text.lines()
        .find(|l| l.starts_with("plexi_p2p_inbound_requests_total{kind=\"app\"}"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or_else(|| panic!("no app call counter on {}", node.name))
}

/// `net_duplicate_percent: 100` on s1: each call it makes runs twice on
/// the callee. 50 health calls s1 -> s2 are served at least 100 times
/// (background calls only add to the count; without duplication it stays
/// near 50).
fn network_duplication(nodes: &[TestNode]) {
    let (s1, s2) = (&nodes[0], &nodes[1]);
    write_faults(s1, r#"{"net_duplicate_percent": 100}"#);
    wait_log(s1, "net_duplicate_percent=100", Duration::from_secs(5));
    const CALLS: u64 = 50;
    let before = app_calls_served(s2);
    for _ in 0..CALLS {
        let h = s1.get_json("/api/v1/clustering/nodes/s2/health");
        assert_eq!(h["source"], "peer", "s2 answered itself: {h}");
    }
    let served = app_calls_served(s2) - before;
    assert!(
        served >= 2 * CALLS,
        "{CALLS} duplicated calls served {served} times"
    );
    remove_faults(s1);
}
