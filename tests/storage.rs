//! Distributed storage with real processes: bytes cross libp2p and land in
//! sled on several nodes. Written through one node, read through others, at
//! each consistency level; replica holders SIGKILLed; re-replication after
//! the delay; joins and rebalancing; corrupt bytes on disk; bad input.

mod common;

use std::time::{Duration, Instant};

use common::{all_see, cluster, wait_for, TestNode, ADMIN, FAST, READ};
use serde_json::Value;

fn body(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j * 7 % 251) as u8).collect()
}

fn blake3_hex(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}

fn info(n: &TestNode, id: &str) -> Value {
    n.get_json(&format!("/api/v1/clustering/storage/data/{id}/info"))
}

/// Starts a storage job through `start` and follows it through `watch` until
/// it is no longer running (bounded); returns its final status.
fn run_job(start: &TestNode, watch: &TestNode, kind: &str) -> Value {
    let job: Value = start
        .post(&format!("/api/v1/clustering/storage/{kind}"))
        .json()
        .unwrap();
    let job_id = job["job_id"].as_str().unwrap().to_string();
    wait_for(Duration::from_secs(60), || {
        let j = watch.get_json(&format!("/api/v1/clustering/storage/jobs/{job_id}"));
        (j["status"] != "running").then_some(j)
    })
    .unwrap_or_else(|| panic!("{kind} job {job_id} still running after 60 s"))
}

/// Reads `id` through `n` and checks bytes and ETag.
fn assert_reads(n: &TestNode, id: &str, want: &[u8], consistency: &str) {
    let res = n.fetch(id, &format!("consistency={consistency}"));
    assert_eq!(res.status(), 200, "{} GET {id} ({consistency})", n.name);
    let etag = res.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_string();
    let got = res.bytes().unwrap();
    assert_eq!(got.as_ref(), want, "{} GET {id} bytes", n.name);
    assert_eq!(etag, blake3_hex(want));
}

#[test]
fn writes_anywhere_read_everywhere_survive_kill_and_rereplicate() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 5, FAST);
    let levels = ["strong", "eventual", "weak"];
    let mut objects = Vec::new();
    for i in 0..45 {
        let id = format!("obj-{i}");
        let data = body(i, 100 + i * 37);
        let level = levels[i % 3];
        let res = nodes[i % 5].put(
            &id,
            &data,
            &format!("consistency={level}&data_type=test%2Fbin"),
        );
        assert_eq!(res.status(), 201, "PUT {id}");
        let r: Value = res.json().unwrap();
        assert_eq!(r["checksum"], blake3_hex(&data));
        assert_eq!(r["replication_factor"], 3);
        assert_eq!(r["replicas"].as_array().unwrap().len(), 3);
        if level == "strong" {
            assert_eq!(r["acknowledged_by"].as_array().unwrap().len(), 3);
        }
        objects.push((id, data));
    }
    // One large object, moved in chunks.
    let big = body(7, 5 * 1024 * 1024 + 123);
    assert_eq!(
        nodes[1].put("big", &big, "consistency=strong").status(),
        201
    );
    objects.push(("big".into(), big));

    // Weak writes are acknowledged before they land: wait until every object
    // has its replicas, then read each through a node that did not write it.
    let settled = wait_for(Duration::from_secs(20), || {
        objects
            .iter()
            .all(|(id, _)| info(&nodes[0], id)["live_replicas"] == 3)
            .then_some(())
    });
    assert!(settled.is_some(), "objects did not reach 3 live replicas");
    for (i, (id, data)) in objects.iter().enumerate() {
        assert_reads(&nodes[(i + 2) % 5], id, data, "eventual");
        assert_reads(&nodes[(i + 3) % 5], id, data, "strong");
    }
    let r = nodes[4].fetch("obj-3", "");
    assert_eq!(r.headers()["x-data-type"], "test/bin");

    // Overview counts logical objects.
    let o = nodes[2].get_json("/api/v1/clustering/storage/overview");
    assert_eq!(o["total_data_objects"], objects.len() as u64);
    assert_eq!(o["total_nodes"], 5);
    assert_eq!(o["under_replicated_objects"], 0);
    for key in [
        "healthy_nodes",
        "total_capacity_gb",
        "used_capacity_gb",
        "available_capacity_gb",
        "usage_percentage",
        "replication_factor",
        "storage_strategy",
        "consistency_level",
    ] {
        assert!(o.get(key).is_some(), "overview lacks {key}");
    }

    // SIGKILL a node that holds replicas of obj-0: every read still succeeds.
    let holder = info(&nodes[0], "obj-0")["replicas"][0]["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    let victim = nodes.iter().position(|n| n.name == holder).unwrap();
    nodes[victim].kill();
    let killed_at = Instant::now();
    let survivors: Vec<usize> = (0..5).filter(|&i| i != victim).collect();
    for (i, (id, data)) in objects.iter().enumerate() {
        assert_reads(&nodes[survivors[i % 4]], id, data, "eventual");
    }
    // Strong reads need a majority (2 of 3): still fine with one holder down.
    for (i, (id, data)) in objects.iter().enumerate().take(10) {
        assert_reads(&nodes[survivors[(i + 1) % 4]], id, data, "strong");
    }

    // After the delay every object is back to 3 live replicas, none on the dead node.
    let back = wait_for(Duration::from_secs(60), || {
        objects
            .iter()
            .all(|(id, _)| {
                let v = info(&nodes[survivors[0]], id);
                v["live_replicas"] == 3
                    && v["replicas"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|r| r["node_id"] != holder.as_str())
            })
            .then_some(())
    });
    assert!(back.is_some(), "re-replication did not complete");
    eprintln!(
        "every object back to 3 live replicas {:?} after the SIGKILL",
        killed_at.elapsed()
    );
    let d = nodes[survivors[1]].get_json("/api/v1/clustering/storage/distribution");
    assert_eq!(d["under_replicated_objects"], 0, "{d}");

    // Bad input: 4xx with the JSON error shape.
    let s = &nodes[survivors[0]];
    for (query, code) in [
        ("replication_factor=0", "invalid_replication_factor"),
        ("replication_factor=9", "invalid_replication_factor"),
        ("replication_factor=three", "invalid_replication_factor"),
        ("consistency=sometimes", "invalid_consistency"),
    ] {
        let res = s.put("bad", b"x", query);
        assert_eq!(res.status(), 400, "{query}");
        assert_eq!(
            res.json::<Value>().unwrap()["error"]["code"],
            code,
            "{query}"
        );
    }
    let too_big = vec![0u8; 8 * 1024 * 1024 + 1];
    let res = s.put("huge", &too_big, "");
    assert_eq!(res.status(), 413);
    assert_eq!(
        res.json::<Value>().unwrap()["error"]["code"],
        "payload_too_large"
    );
    let res = reqwest::blocking::Client::new()
        .put(format!("{}/api/v1/clustering/storage/data/x", s.api))
        .bearer_auth(READ)
        .body("x")
        .send()
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = s.put("", b"x", "");
    assert!(res.status().is_client_error());
    let res = s.fetch("never-written", "");
    assert_eq!(res.status(), 404);
    assert_eq!(res.json::<Value>().unwrap()["error"]["code"], "not_found");

    // Delete through one node, gone through another.
    let res = reqwest::blocking::Client::new()
        .delete(format!("{}/api/v1/clustering/storage/data/obj-1", s.api))
        .bearer_auth(ADMIN)
        .send()
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(
        nodes[survivors[2]]
            .fetch("obj-1", "consistency=strong")
            .status(),
        404
    );
}

#[test]
fn node_stopped_during_writes_catches_up_without_reads() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 3, FAST);
    nodes[2].kill();
    let dead = wait_for(Duration::from_secs(10), || {
        (nodes[0].status_of("s3").as_deref() == Some("dead")).then_some(())
    });
    assert!(dead.is_some());
    // With 2 of 3 up, eventual writes succeed and are under-replicated.
    let mut objects = Vec::new();
    for i in 0..20 {
        let id = format!("late-{i}");
        let data = body(i, 64 + i);
        let res = nodes[i % 2].put(&id, &data, "consistency=eventual");
        assert_eq!(res.status(), 201);
        objects.push((id, data));
    }
    // Strong writes need every replica: 503 with a clear error.
    let res = nodes[0].put("strong-now", b"x", "consistency=strong");
    assert_eq!(res.status(), 503);
    assert_eq!(
        res.json::<Value>().unwrap()["error"]["code"],
        "insufficient_replicas"
    );

    // Bring it back (within the re-replication delay or not): no reads, it
    // converges through hints and anti-entropy; then read through it alone
    // at `weak` (first replica that answers is itself when it holds it).
    let boot = vec![nodes[0].p2p.clone()];
    nodes[2].restart(boot);
    let converged = wait_for(Duration::from_secs(30), || {
        let d = nodes[2].get_json("/api/v1/clustering/storage/distribution");
        let mine = d["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["node_id"] == "s3")?["objects"]
            .as_u64()?;
        (mine == objects.len() as u64).then_some(())
    });
    assert!(
        converged.is_some(),
        "restarted node did not receive the writes it missed"
    );
    for (id, data) in &objects {
        assert_reads(&nodes[2], id, data, "weak");
    }
}

#[test]
fn join_moves_a_share_and_cleanup_drops_old_copies() {
    let root = tempfile::tempdir().unwrap();
    let config = format!("{FAST}  default_replication_factor: 2\n");
    let mut nodes = cluster(root.path(), 3, &config);
    let mut objects = Vec::new();
    for i in 0..60 {
        let id = format!("j-{i}");
        let data = body(i, 200);
        let res = nodes[i % 3].put(&id, &data, "consistency=strong");
        assert_eq!(
            res.status(),
            201,
            "PUT {id}: {}",
            res.text().unwrap_or_default()
        );
        objects.push((id, data));
    }
    // A fourth node joins.
    let boot = vec![nodes[0].p2p.clone()];
    nodes.push(TestNode::spawn(
        root.path(),
        common::NodeSpec {
            name: "s4",
            bootstrap: boot,
            region: "r1",
            zone: "z4",
            config: Some(&config),
        },
    ));
    assert!(wait_for(Duration::from_secs(15), || nodes
        .iter()
        .all(|n| n.alive_count() == 4)
        .then_some(()))
    .is_some());
    // Every object stays readable throughout.
    for (i, (id, data)) in objects.iter().enumerate() {
        assert_reads(&nodes[i % 4], id, data, "eventual");
    }
    // A rebalance job with progress; afterwards each object sits exactly on
    // its 2 owners and s4 holds about 2/4 of the objects (RF 2 of 4 nodes).
    // Started through s2, followed through s3.
    let done = run_job(&nodes[1], &nodes[2], "rebalance");
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress_percentage"], 100.0);
    let settled = wait_for(Duration::from_secs(30), || {
        let d = nodes[0].get_json("/api/v1/clustering/storage/distribution");
        let total: u64 = d["nodes"]
            .as_array()?
            .iter()
            .map(|n| n["objects"].as_u64().unwrap())
            .sum();
        (total == 2 * objects.len() as u64 && d["under_replicated_objects"] == 0).then_some(d)
    });
    let d = settled.expect("exactly RF copies after rebalance and cleanup");
    let s4 = d["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == "s4")
        .unwrap()["objects"]
        .as_u64()
        .unwrap();
    eprintln!(
        "s4 holds {s4} of {} objects after joining (ideal 30)",
        objects.len()
    );
    assert!((15..=45).contains(&s4), "s4 holds {s4}");
    for (i, (id, data)) in objects.iter().enumerate() {
        assert_reads(&nodes[(i + 1) % 4], id, data, "strong");
    }
}

#[test]
fn corrupt_replica_is_never_served_and_is_repaired() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 3, FAST);
    let data = body(1, 4096);
    assert_eq!(
        nodes[0].put("victim", &data, "consistency=strong").status(),
        201
    );

    // Flip the bytes of s2's replica on disk while it is down.
    nodes[1].kill();
    {
        let db = sled::open(nodes[1].dir.join("data/store")).unwrap();
        let tree = db.open_tree("objects.data").unwrap();
        let key = plexi_store::objects::object_key("victim");
        let mut bad = tree
            .get(&key)
            .unwrap()
            .expect("s2 holds a replica")
            .to_vec();
        bad[10] ^= 0xff;
        tree.insert(&key, bad).unwrap();
        db.flush().unwrap();
    }
    let boot = vec![nodes[0].p2p.clone()];
    nodes[1].restart(boot);
    // Every node sees every other (peers serve s2's calls only once they
    // hold its new record: a restarted node must be a member again).
    assert!(all_see(&nodes, 3, Duration::from_secs(15)));

    // Reads through s2 (which tries itself first) still give the good bytes.
    for _ in 0..3 {
        assert_reads(&nodes[1], "victim", &data, "eventual");
        assert_reads(&nodes[1], "victim", &data, "weak");
    }
    // Cleanup scrubs: the corrupt replica is detected and replaced.
    let done = run_job(&nodes[1], &nodes[1], "cleanup");
    assert_eq!(done["status"], "completed", "{done}");
    assert!(done["repaired_replicas"].as_u64().unwrap() >= 1, "{done}");
    let metrics = nodes[1].get("/metrics", Some(READ)).text().unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("plexi_storage_corrupt_replicas_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
    // s2's own copy is good again: stop the others and read from it alone.
    nodes[0].kill();
    nodes[2].kill();
    assert_reads(&nodes[1], "victim", &data, "weak");
}

/// Number of live objects `name` holds, as `through` reports it.
fn objects_on(through: &TestNode, name: &str) -> Option<u64> {
    let d = through.get_json("/api/v1/clustering/storage/distribution");
    d["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["node_id"] == name)?["objects"]
        .as_u64()
}

#[test]
fn without_auto_rebalance_lost_replicas_are_rebuilt_but_a_joiner_gets_no_share() {
    let root = tempfile::tempdir().unwrap();
    let config = format!("{FAST}  auto_rebalance: false\n");
    let mut nodes = cluster(root.path(), 4, &config);
    let mut objects = Vec::new();
    for i in 0..30 {
        let id = format!("ar-{i}");
        let data = body(i, 300 + i);
        assert_eq!(
            nodes[i % 4].put(&id, &data, "consistency=strong").status(),
            201,
            "PUT {id}"
        );
        objects.push((id, data));
    }

    // SIGKILL a holder: after rereplication_delay_seconds every object is
    // back to 3 live replicas on the survivors, with no read to trigger it.
    let holder = info(&nodes[0], "ar-0")["replicas"][0]["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    let victim = nodes.iter().position(|n| n.name == holder).unwrap();
    nodes[victim].kill();
    let survivors: Vec<usize> = (0..4).filter(|&i| i != victim).collect();
    let w = survivors[0];
    let rebuilt = wait_for(Duration::from_secs(60), || {
        objects
            .iter()
            .all(|(id, _)| {
                let v = info(&nodes[w], id);
                v["live_replicas"] == 3
                    && v["replicas"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|r| r["node_id"] != holder.as_str())
            })
            .then_some(())
    });
    assert!(
        rebuilt.is_some(),
        "with auto_rebalance: false, lost replicas were not rebuilt"
    );

    // A node joins. Every object still has 3 current copies on the
    // survivors, so moving any onto the newcomer would be rebalancing: it
    // receives none by itself, neither through its start-up catch-up nor
    // through the next 20 anti-entropy intervals (0.3 s each).
    let boot = vec![nodes[w].p2p.clone()];
    nodes.push(TestNode::spawn(
        root.path(),
        common::NodeSpec {
            name: "s5",
            bootstrap: boot,
            region: "r1",
            zone: "z5",
            config: Some(&config),
        },
    ));
    let live: Vec<usize> = survivors.iter().copied().chain([4]).collect();
    assert!(wait_for(Duration::from_secs(15), || live
        .iter()
        .all(|&i| nodes[i].alive_count() == 4)
        .then_some(()))
    .is_some());
    let log = nodes[4].dir.join("node.log");
    let caught_up = wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .ok()?
            .contains("caught up; serving reads as a replica")
            .then_some(())
    });
    assert!(caught_up.is_some(), "s5 never finished its catch-up");
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(6) {
        assert_eq!(
            objects_on(&nodes[4], "s5"),
            Some(0),
            "s5 received a share without auto_rebalance"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Reads through the newcomer still find every object.
    for (id, data) in &objects {
        assert_reads(&nodes[4], id, data, "eventual");
    }

    // An explicit rebalance moves its share (3 of 4 owners per object).
    let done = run_job(&nodes[4], &nodes[w], "rebalance");
    assert_eq!(done["status"], "completed", "{done}");
    let moved = wait_for(Duration::from_secs(30), || {
        objects_on(&nodes[4], "s5").filter(|&n| n >= 10)
    });
    assert!(moved.is_some(), "a rebalance job moved nothing onto s5");
    for (i, (id, data)) in objects.iter().enumerate() {
        assert_reads(&nodes[live[i % 4]], id, data, "strong");
    }
}

/// Every node's (performance_score, reliability_score, unplanned_restarts)
/// as one node reports them, by node id.
type Scores = std::collections::BTreeMap<String, (f64, f64, Option<u64>)>;

fn scores(n: &TestNode) -> Scores {
    n.get_json("/api/v1/clustering/storage/nodes")["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["node_id"].as_str().unwrap().to_string(),
                (
                    x["performance_score"].as_f64().unwrap(),
                    x["reliability_score"].as_f64().unwrap(),
                    x["unplanned_restarts"].as_u64(),
                ),
            )
        })
        .collect()
}

/// Waits until every running node reports the same scores for all three
/// nodes and `accept` takes them.
fn agreed_scores(nodes: &[TestNode], accept: impl Fn(&Scores) -> bool) -> Option<Scores> {
    wait_for(Duration::from_secs(30), || {
        let all: Vec<_> = nodes.iter().map(scores).collect();
        let first = &all[0];
        (first.len() == 3 && all.iter().all(|s| s == first) && accept(first)).then(|| first.clone())
    })
}

#[test]
fn node_scores_agree_everywhere_and_only_unplanned_restarts_lower_reliability() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 3, FAST);
    // Every node answers the same scores for every node.
    let first = agreed_scores(&nodes, |_| true).unwrap_or_else(|| {
        panic!(
            "nodes disagree on the scores: {:?}",
            nodes.iter().map(scores).collect::<Vec<_>>()
        )
    });
    let reliability = |s: &Scores| s["s3"].1;
    let start = reliability(&first);
    assert_eq!(first["s3"].2, Some(0), "{first:?}");

    // A graceful stop (SIGTERM) and a restart: no failure.
    nodes[2].signal(libc::SIGTERM);
    assert_eq!(nodes[2].wait_exit(Duration::from_secs(30)), Some(0));
    let boot = vec![nodes[0].p2p.clone()];
    nodes[2].restart(boot.clone());
    assert!(all_see(&nodes, 3, Duration::from_secs(20)));
    let after_term = agreed_scores(&nodes, |s| s["s3"].2 == Some(0)).unwrap_or_else(|| {
        panic!(
            "after SIGTERM: {:?}",
            nodes.iter().map(scores).collect::<Vec<_>>()
        )
    });
    assert_eq!(reliability(&after_term), start, "{after_term:?}");

    // A crash (SIGKILL) and a restart: one unplanned restart, lower
    // reliability, the same on every node.
    nodes[2].kill();
    nodes[2].restart(boot);
    assert!(all_see(&nodes, 3, Duration::from_secs(20)));
    let after_kill = agreed_scores(&nodes, |s| s["s3"].2 == Some(1)).unwrap_or_else(|| {
        panic!(
            "after SIGKILL: {:?}",
            nodes.iter().map(scores).collect::<Vec<_>>()
        )
    });
    assert!(reliability(&after_kill) < start, "{after_kill:?}");
    eprintln!(
        "scores at start {first:?}, after SIGTERM {after_term:?}, after SIGKILL {after_kill:?}"
    );
    // The other nodes' figures did not move.
    for n in ["s1", "s2"] {
        assert_eq!(after_kill[n].1, first[n].1, "{n}: {after_kill:?}");
    }
}

/// Chaos seed 1 (docs/RELIABILITY.md, "Findings"): a node resumed from a
/// SIGSTOP longer than failure detection plus the re-replication delay sees
/// every peer dead past that delay, so its placement of any key is itself
/// alone; it judged strong reads by that view and answered them from its
/// own stale copy (or a 404). Strong reads count a majority of the key's
/// nominal owners now: through the resumed node they answer the newest
/// acknowledged value or 503, never an older value and never a 404.
#[test]
fn a_node_resumed_from_a_long_pause_serves_no_stale_strong_read() {
    let root = tempfile::tempdir().unwrap();
    let nodes = cluster(root.path(), 4, FAST);
    let keys: Vec<String> = (0..24).map(|i| format!("pause-{i}")).collect();
    for k in &keys {
        let res = nodes[0].put(k, b"old", "consistency=strong");
        assert_eq!(res.status(), 201, "{k}: {}", res.text().unwrap());
    }
    let worker = nodes[3].worker_pid().expect("s4's worker");
    // SAFETY: kill(2) on a pid this test started.
    assert_eq!(unsafe { libc::kill(worker as i32, libc::SIGSTOP) }, 0);
    let dead = wait_for(Duration::from_secs(10), || {
        (nodes[0].status_of("s4").as_deref() == Some("dead")).then(Instant::now)
    })
    .expect("s4 seen dead");
    // Past the re-replication delay (2 s in FAST) the others place without
    // s4, so strong writes through them go to the three of them.
    std::thread::sleep(Duration::from_millis(2_500).saturating_sub(dead.elapsed()));
    for k in &keys {
        let res = nodes[0].put(k, b"new", "consistency=strong");
        assert_eq!(res.status(), 201, "{k}: {}", res.text().unwrap());
    }
    // Strong reads sent to s4 while it is stopped wait in its socket and
    // are served first thing after SIGCONT, while its view is shrunken.
    let api = nodes[3].api.clone();
    let readers: Vec<_> = keys
        .iter()
        .map(|k| {
            let (url, k) = (
                format!("{api}/api/v1/clustering/storage/data/{k}?consistency=strong"),
                k.clone(),
            );
            std::thread::spawn(move || {
                let res = reqwest::blocking::Client::new()
                    .get(url)
                    .bearer_auth(READ)
                    .timeout(Duration::from_secs(30))
                    .send();
                match res {
                    Ok(r) => (
                        k,
                        r.status().as_u16(),
                        r.bytes().unwrap_or_default().to_vec(),
                    ),
                    Err(e) => (k, 0, e.to_string().into_bytes()),
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(unsafe { libc::kill(worker as i32, libc::SIGCONT) }, 0);
    let mut answered = 0;
    for r in readers {
        let (k, status, body) = r.join().unwrap();
        match status {
            200 => {
                assert_eq!(
                    body, b"new",
                    "{k}: a stale strong read through the resumed node"
                );
                answered += 1;
            }
            503 => {}
            other => panic!(
                "{k}: strong read through the resumed node answered {other}: {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }
    eprintln!(
        "{answered} of {} strong reads answered at resume, the rest 503",
        keys.len()
    );
    // And once its view has healed, it answers every one.
    for k in &keys {
        let got = wait_for(Duration::from_secs(15), || {
            let r = nodes[3].get(
                &format!("/api/v1/clustering/storage/data/{k}?consistency=strong"),
                Some(READ),
            );
            (r.status() == 200).then(|| r.bytes().unwrap().to_vec())
        });
        assert_eq!(got.as_deref(), Some(&b"new"[..]), "{k}");
    }
}
