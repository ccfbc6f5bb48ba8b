//! Cluster self-update with real processes and real binaries: a second
//! version built with PLEXI_BUILD_VERSION is published into the cluster,
//! planned and executed; nodes restart into it through their supervisors.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    api_of, build_version, cluster, get_json_at, read_object_at, release_keygen as keygen,
    release_publish as publish, wait_for, TestNode, ADMIN, BIN, FAST, READ,
};
use serde_json::{json, Value};

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn post(api: &str, path: &str, body: Value) -> (u16, Value) {
    let res = client()
        .post(format!("{api}{path}"))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().unwrap_or(Value::Null))
}

fn config(public_key: &str, extra: &str) -> String {
    let fast = FAST.replace("max_object_mib: 8", "max_object_mib: 128");
    format!(
        "{fast}cluster_updates:\n  release_public_keys: [\"{public_key}\"]\n  rolling_update_delay_seconds: 1\n  health_check_timeout_seconds: 30\n  rollback_timeout_seconds: 120\n  canary_soak_seconds: 2\n{extra}"
    )
}

/// Plans and executes through `api`; returns the operation id.
fn plan_and_execute(api: &str, body: Value) -> String {
    let (st, op) = post(api, "/api/v1/clustering/updates/plan", body);
    assert_eq!(st, 201, "{op}");
    let id = op["operation_id"].as_str().unwrap().to_string();
    let (st, op) = post(
        api,
        &format!("/api/v1/clustering/updates/{id}/execute"),
        json!({}),
    );
    assert_eq!(st, 202, "{op}");
    id
}

/// Polls the operation through any node until it reaches a final status.
fn wait_final(nodes: &[TestNode], id: &str, timeout: Duration) -> Value {
    let start = Instant::now();
    let mut last = Value::Null;
    while start.elapsed() < timeout {
        for n in nodes {
            let Some(api) = api_of(&n.dir) else { continue };
            if let Some(op) = get_json_at(&api, &format!("/api/v1/clustering/updates/{id}/status"))
            {
                let status = op["status"].as_str().unwrap_or("").to_string();
                last = op;
                if matches!(
                    status.as_str(),
                    "completed" | "failed" | "rolled_back" | "cancelled"
                ) {
                    // The state is replicated: wait until every node says so.
                    let everywhere = wait_for(Duration::from_secs(20), || {
                        nodes
                            .iter()
                            .all(|n| {
                                api_of(&n.dir)
                                    .and_then(|api| {
                                        get_json_at(
                                            &api,
                                            &format!("/api/v1/clustering/updates/{id}/status"),
                                        )
                                    })
                                    .is_some_and(|op| op["status"] == status.as_str())
                            })
                            .then_some(())
                    });
                    assert!(everywhere.is_some(), "not every node sees {id} {status}");
                    return last;
                }
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let logs: Vec<String> = nodes
        .iter()
        .map(|n| format!("--- {} log:\n{}", n.name, n.log_tail()))
        .collect();
    panic!(
        "operation {id} not final after {timeout:?}: {}\n{}",
        serde_json::to_string_pretty(&last).unwrap(),
        logs.join("\n")
    );
}

fn versions(nodes: &[TestNode]) -> BTreeMap<String, String> {
    nodes
        .iter()
        .map(|n| {
            let v = api_of(&n.dir)
                .and_then(|api| get_json_at(&api, "/health"))
                .map(|h| h["version"].as_str().unwrap_or("").to_string())
                .unwrap_or_default();
            (n.name.clone(), v)
        })
        .collect()
}

/// Out-of-service intervals per node from the audit log (drain to back in
/// service), as (start, end) RFC 3339 strings.
fn out_of_service(api: &str, op: &str) -> Vec<(String, String, String)> {
    let audit = get_json_at(api, "/api/v1/clustering/audit?limit=1000").unwrap();
    assert_eq!(audit["chains_verified"], true);
    let mut entries: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["operation_id"] == op)
        .collect();
    entries.sort_by_key(|e| e["at"].as_str().unwrap().to_string());
    let mut open: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for e in entries {
        let node = e["detail"]["node_id"].as_str().unwrap_or("").to_string();
        match e["action"].as_str().unwrap() {
            "node.out_of_service" => {
                open.insert(node, e["at"].as_str().unwrap().to_string());
            }
            "node.in_service" => {
                // The moment it served again (its entry may be appended later).
                let at = e["detail"]["in_service_at"]
                    .as_str()
                    .unwrap_or_else(|| e["at"].as_str().unwrap());
                if let Some(s) = open.remove(&node) {
                    out.push((node, s, at.to_string()));
                }
            }
            _ => {}
        }
    }
    for (node, s) in open {
        out.push((node, s, "~".into()));
    }
    out
}

fn max_overlap(intervals: &[(String, String, String)]) -> usize {
    intervals
        .iter()
        .map(|(_, s, _)| {
            intervals
                .iter()
                .filter(|(_, s2, e2)| s2 <= s && s < e2)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Acknowledged writes: (key, bytes).
type Acked = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A client that writes and reads through every node, retrying on another
/// node when one refuses (503 draining) or is down.
struct Client {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicUsize>,
    ops: Arc<AtomicUsize>,
    acked: Acked,
    latencies: Arc<Mutex<Vec<Duration>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn start(dirs: Vec<PathBuf>) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicUsize::new(0));
        let ops = Arc::new(AtomicUsize::new(0));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let (s, f, o, a, l) = (
            stop.clone(),
            failures.clone(),
            ops.clone(),
            acked.clone(),
            latencies.clone(),
        );
        let handle = std::thread::spawn(move || {
            let http = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let mut i = 0usize;
            while !s.load(Ordering::SeqCst) {
                i += 1;
                let write = i % 2 == 1;
                let key = format!("client-{i}");
                let body = format!("value {i}").into_bytes();
                let read_target = a.lock().unwrap().last().cloned();
                let started = Instant::now();
                let mut ok = false;
                // Up to 3 rounds over every node.
                'attempts: for round in 0..3 {
                    for k in 0..dirs.len() {
                        let dir = &dirs[(i + k) % dirs.len()];
                        let Some(api) = api_of(dir) else { continue };
                        let res = if write {
                            http.put(format!(
                                "{api}/api/v1/clustering/storage/data/{key}?consistency=eventual"
                            ))
                            .bearer_auth(ADMIN)
                            .body(body.clone())
                            .send()
                        } else {
                            match &read_target {
                                Some((k, _)) => http
                                    .get(format!("{api}/api/v1/clustering/storage/data/{k}"))
                                    .bearer_auth(READ)
                                    .send(),
                                None => {
                                    ok = true;
                                    break 'attempts;
                                }
                            }
                        };
                        match res {
                            Ok(r) if r.status().is_success() => {
                                if write {
                                    a.lock().unwrap().push((key.clone(), body.clone()));
                                    ok = true;
                                } else {
                                    let (_, want) = read_target.as_ref().unwrap();
                                    ok = r.bytes().map(|b| b.to_vec() == *want).unwrap_or(false);
                                }
                                if ok {
                                    break 'attempts;
                                }
                            }
                            _ => {}
                        }
                    }
                    std::thread::sleep(Duration::from_millis(200 * (round + 1) as u64));
                }
                o.fetch_add(1, Ordering::SeqCst);
                l.lock().unwrap().push(started.elapsed());
                if !ok {
                    f.fetch_add(1, Ordering::SeqCst);
                    eprintln!("client operation {i} failed on every node");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Client {
            stop,
            failures,
            ops,
            acked,
            latencies,
            handle: Some(handle),
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
    }
}

#[test]
fn rolling_upgrade_under_load_then_broken_release_then_downgrade() {
    let (_guard, root) = test_dir();
    let v2 = build_version("0.1.1", "");
    let broken = build_version("0.1.2", "exit-at-start");
    let public = keygen(root.as_path());
    let nodes = cluster(root.as_path(), 3, &config(&public, ""));
    let api = nodes[0].api.clone();
    let base = String::from_utf8(Command::new(BIN).arg("--version").output().unwrap().stdout)
        .unwrap()
        .trim()
        .trim_start_matches("plexi ")
        .to_string();
    publish(&api, root.as_path(), &v2, "0.1.1", &[]);
    publish(&api, root.as_path(), &broken, "0.1.2", &[]);
    publish(&api, root.as_path(), Path::new(BIN), &base, &[]);

    // Some data first, so post-checks read real objects.
    for i in 0..20 {
        assert!(nodes[i % 3]
            .put(
                &format!("pre-{i}"),
                format!("pre {i}").as_bytes(),
                "consistency=strong"
            )
            .status()
            .is_success());
    }

    // 1. Rolling upgrade from a node that is not first, under client load.
    // Every node fetches the planned release before anything is executed,
    // and says so in the status (staged_at), so the roll fetches nothing.
    let mut client = Client::start(nodes.iter().map(|n| n.dir.clone()).collect());
    let (st, planned) = post(
        &nodes[1].api,
        "/api/v1/clustering/updates/plan",
        json!({"target_version": "0.1.1", "update_type": "upgrade", "strategy": "rolling"}),
    );
    assert_eq!(st, 201, "{planned}");
    let id = planned["operation_id"].as_str().unwrap().to_string();
    let staged = wait_for(Duration::from_secs(120), || {
        let op = get_json_at(&api, &format!("/api/v1/clustering/updates/{id}/status"))?;
        let nodes = op["node_statuses"].as_object()?;
        (nodes.len() == 3 && nodes.values().all(|n| n["staged_at"].is_string())).then_some(op)
    });
    assert!(
        staged.is_some(),
        "not every node staged 0.1.1 after the plan"
    );
    let (st, body) = post(
        &nodes[1].api,
        &format!("/api/v1/clustering/updates/{id}/execute"),
        json!({}),
    );
    assert_eq!(st, 202, "{body}");
    let op = wait_final(&nodes, &id, Duration::from_secs(240));
    // Each node's turn used what it staged (its log says so) instead of
    // fetching again.
    let used = format!("(prefetched) operation_id=\"{id}\"");
    for n in &nodes {
        assert!(
            n.log().contains(&used),
            "{} fetched during its turn although it was staged:\n{}",
            n.name,
            n.log_tail()
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    client.stop();
    assert_eq!(op["status"], "completed", "{op:#}");
    assert!(
        versions(&nodes).values().all(|v| v == "0.1.1"),
        "{:?}",
        versions(&nodes)
    );
    let (ops, failures) = (
        client.ops.load(Ordering::SeqCst),
        client.failures.load(Ordering::SeqCst),
    );
    eprintln!("client: {ops} operations, {failures} failed");
    assert_eq!(failures, 0, "client operations failed during the roll");
    assert!(ops > 20, "the client barely ran: {ops}");
    // Every node but the first had the release installed ahead of its turn.
    let prefetched = nodes
        .iter()
        .filter(|n| n.log().contains("installed (prefetched)"))
        .count();
    assert!(
        prefetched >= nodes.len() - 1,
        "{prefetched} of {} nodes switched to a prefetched release",
        nodes.len()
    );
    // Every acknowledged write is readable.
    let api = api_of(&nodes[2].dir).unwrap();
    for (key, body) in client.acked.lock().unwrap().iter() {
        let res = read_object_at(&api, key);
        assert_eq!(res.as_deref(), Some(body.as_slice()), "{key} lost");
    }
    // Never more than one node out of service, from the audit records.
    let intervals = out_of_service(&api, &id);
    assert_eq!(intervals.len(), 3, "{intervals:?}");
    assert_eq!(max_overlap(&intervals), 1, "{intervals:?}");
    let audit = get_json_at(&api, "/api/v1/clustering/audit?limit=1000").unwrap();
    let grants = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["operation_id"] == id.as_str() && e["action"] == "lease.grant")
        .count();
    assert_eq!(grants, 3);
    // Phase timings cover the restart and the post-check too (they span the
    // old and the new process). The fetch is timed too, but a release
    // staged since the plan (`staged_at`) takes well under the 1 ms the
    // figures are rounded to.
    for (n, st) in op["node_statuses"].as_object().unwrap() {
        let phases = &st["phase_seconds"];
        assert!(phases["fetch"].as_f64().is_some(), "{n} fetch: {st:#}");
        for phase in ["restart", "post_check"] {
            assert!(
                phases[phase].as_f64().unwrap_or(0.0) > 0.0,
                "{n} {phase}: {st:#}"
            );
        }
    }
    let lat = client.latencies.lock().unwrap().clone();
    eprintln!("client p99 {:?}", percentile(&lat, 0.99));

    // 2. A release that exits at start: the first node returns to 0.1.1 by
    // itself and the operation rolls back.
    let id = plan_and_execute(
        &api,
        json!({"target_version": "0.1.2", "strategy": "rolling"}),
    );
    let op = wait_final(&nodes, &id, Duration::from_secs(180));
    assert_eq!(op["status"], "rolled_back", "{op:#}");
    let failed: Vec<&Value> = op["node_statuses"]
        .as_object()
        .unwrap()
        .values()
        .filter(|n| n["error_message"].is_string())
        .collect();
    assert_eq!(failed.len(), 1, "{op:#}");
    assert!(wait_for(Duration::from_secs(30), || versions(&nodes)
        .values()
        .all(|v| v == "0.1.1")
        .then_some(()))
    .is_some());

    // 3. Downgrade back to the base version.
    let id = plan_and_execute(
        &api,
        json!({"target_version": base, "update_type": "downgrade", "strategy": "rolling"}),
    );
    let op = wait_final(&nodes, &id, Duration::from_secs(240));
    assert_eq!(op["status"], "completed", "{op:#}");
    assert!(versions(&nodes).values().all(|v| *v == base));
    for i in 0..20 {
        assert_eq!(
            read_object_at(&api_of(&nodes[i % 3].dir).unwrap(), &format!("pre-{i}")).as_deref(),
            Some(format!("pre {i}").as_bytes())
        );
    }
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(((v.len() as f64 - 1.0) * p) as usize)
        .copied()
        .unwrap_or_default()
}

#[test]
fn parallel_update_breaking_unhealthy_and_tampered_releases() {
    let (_guard, root) = test_dir();
    let v2 = build_version("0.1.1", "");
    let unhealthy = build_version("0.1.3", "unhealthy");
    let public = keygen(root.as_path());
    let nodes = cluster(
        root.as_path(),
        4,
        &config(&public, "  max_concurrent_updates: 2\n"),
    );
    let api = nodes[0].api.clone();
    publish(&api, root.as_path(), &v2, "0.1.1", &["--breaking"]);
    publish(&api, root.as_path(), &unhealthy, "0.1.3", &[]);

    // Breaking without force: 409 naming it; unknown node: 400.
    let (st, body) = post(
        &api,
        "/api/v1/clustering/updates/plan",
        json!({"target_version": "0.1.1", "strategy": "parallel"}),
    );
    assert_eq!(st, 409, "{body}");
    assert_eq!(body["error"]["code"], "breaking_changes");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("release 0.1.1 is marked breaking"));
    let (st, body) = post(
        &api,
        "/api/v1/clustering/updates/plan",
        json!({"target_version": "0.1.1", "target_nodes": ["s1", "nope"], "force": true}),
    );
    assert_eq!(st, 400, "{body}");
    assert_eq!(body["error"]["code"], "unknown_nodes");

    // Parallel, two at a time, inside maintenance mode.
    let id = plan_and_execute(
        &nodes[3].api,
        json!({"target_version": "0.1.1", "strategy": "parallel", "force": true}),
    );
    let parallel_id = id.clone();
    let m = get_json_at(&api, "/api/v1/clustering/maintenance").unwrap();
    assert_eq!(m["enabled"], true, "{m}");
    let op = wait_final(&nodes, &id, Duration::from_secs(240));
    assert_eq!(op["status"], "completed", "{op:#}");
    assert_eq!(op["batches"].as_array().unwrap().len(), 2);
    assert!(versions(&nodes).values().all(|v| v == "0.1.1"));
    let api = api_of(&nodes[0].dir).unwrap();
    // A node's in_service entry may be appended (and reach this node) after
    // the operation is final: wait until every interval is closed.
    let intervals = wait_for(Duration::from_secs(20), || {
        let i = out_of_service(&api, &id);
        (i.len() == 4 && i.iter().all(|(_, _, end)| end != "~")).then_some(i)
    })
    .unwrap_or_else(|| out_of_service(&api, &id));
    assert_eq!(intervals.len(), 4, "{intervals:?}");
    let overlap = max_overlap(&intervals);
    assert!((1..=2).contains(&overlap), "{intervals:?}");
    // Maintenance is left once the operation is final.
    assert!(wait_for(Duration::from_secs(10), || {
        (get_json_at(&api, "/api/v1/clustering/maintenance")?["enabled"] == false).then_some(())
    })
    .is_some());

    // A release that starts but fails its health check: the supervisor
    // returns the node to 0.1.1 after the deadline; the operation rolls back.
    let id = plan_and_execute(&api, json!({"target_version": "0.1.3"}));
    let op = wait_final(&nodes, &id, Duration::from_secs(180));
    assert_eq!(op["status"], "rolled_back", "{op:#}");
    assert!(wait_for(Duration::from_secs(30), || versions(&nodes)
        .values()
        .all(|v| v == "0.1.1")
        .then_some(()))
    .is_some());

    // A tampered artifact: the stored binary no longer matches its signed
    // manifest, so the first node refuses it before anything runs.
    let base = String::from_utf8(Command::new(BIN).arg("--version").output().unwrap().stdout)
        .unwrap()
        .trim()
        .trim_start_matches("plexi ")
        .to_string();
    let api = api_of(&nodes[0].dir).unwrap();
    publish(&api, root.as_path(), Path::new(BIN), &base, &[]);
    let res = client()
        .put(format!(
            "{api}/api/v1/clustering/storage/data/release.{base}.bin?consistency=strong"
        ))
        .bearer_auth(ADMIN)
        .body(b"#!/bin/sh\nexit 0\n".to_vec())
        .send()
        .unwrap();
    assert!(res.status().is_success());
    let id = plan_and_execute(
        &api,
        json!({"target_version": base, "update_type": "downgrade"}),
    );
    let op = wait_final(&nodes, &id, Duration::from_secs(120));
    assert_eq!(op["status"], "rolled_back", "{op:#}");
    let errors: Vec<String> = op["node_statuses"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|n| n["error_message"].as_str().map(str::to_string))
        .collect();
    assert_eq!(errors.len(), 1, "{op:#}");
    assert!(errors[0].contains("refused"), "{errors:?}");
    assert!(versions(&nodes).values().all(|v| v == "0.1.1"));
    let audit = get_json_at(&api, "/api/v1/clustering/audit?limit=1000").unwrap();
    assert!(audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "release.refused" && e["operation_id"] == id.as_str()));

    // Rolling back the completed parallel operation: batches in reverse
    // order, each together, back to the base version; repeating is harmless.
    let (st, body) = post(
        &api,
        &format!("/api/v1/clustering/updates/{parallel_id}/rollback"),
        json!({}),
    );
    assert_eq!(st, 202, "{body}");
    let op = wait_final(&nodes, &parallel_id, Duration::from_secs(180));
    assert_eq!(op["status"], "rolled_back", "{op:#}");
    for (n, st) in op["node_statuses"].as_object().unwrap() {
        assert_eq!(st["status"], "rolled_back", "{n}: {op:#}");
    }
    assert!(
        versions(&nodes).values().all(|v| *v == base),
        "{:?}",
        versions(&nodes)
    );
    let api = api_of(&nodes[1].dir).unwrap();
    let (st, again) = post(
        &api,
        &format!("/api/v1/clustering/updates/{parallel_id}/rollback"),
        json!({}),
    );
    assert_eq!(st, 202, "{again}");
    assert_eq!(again["status"], "rolled_back");
    // The second batch went back first.
    let intervals = out_of_service(&api, &parallel_id);
    let start_of = |node: &str| {
        intervals
            .iter()
            .filter(|(n, _, _)| n == node)
            .map(|(_, s, _)| s.clone())
            .max()
            .unwrap()
    };
    assert!(start_of("s3") < start_of("s1"), "{intervals:?}");
    assert!(start_of("s4") < start_of("s2"), "{intervals:?}");
}

#[test]
fn sigkill_of_the_lease_holder_fails_it_and_rolls_back() {
    let (_guard, root) = test_dir();
    let v2 = build_version("0.1.1", "");
    let public = keygen(root.as_path());
    let mut nodes = cluster(
        root.as_path(),
        3,
        &config(&public, "").replace(
            "health_check_timeout_seconds: 30",
            "health_check_timeout_seconds: 5",
        ),
    );
    let api = nodes[1].api.clone();
    publish(&api, root.as_path(), &v2, "0.1.1", &[]);
    let base = versions(&nodes)["s1"].clone();
    let id = plan_and_execute(&api, json!({"target_version": "0.1.1"}));
    // s1 updates first (batches are by name); kill it mid-update.
    let phase = wait_for(Duration::from_secs(60), || {
        let op = get_json_at(&api, &format!("/api/v1/clustering/updates/{id}/status"))?;
        let n = &op["node_statuses"]["s1"];
        let phase = n["current_phase"].as_str()?.to_string();
        (n["status"] == "updating"
            && ["pre_check", "drain", "backup", "fetch", "install"].contains(&phase.as_str()))
        .then_some(phase)
    })
    .expect("s1 never started updating");
    eprintln!("killing s1 in phase {phase}");
    nodes[0].kill();
    let op = wait_final(&nodes[1..], &id, Duration::from_secs(120));
    assert_eq!(op["status"], "rolled_back", "{op:#}");
    assert_eq!(op["node_statuses"]["s1"]["status"], "failed", "{op:#}");
    for n in ["s2", "s3"] {
        assert_eq!(op["node_statuses"][n]["status"], "pending", "{op:#}");
    }
    let live = versions(&nodes[1..]);
    assert!(live.values().all(|v| *v == base), "{live:?}");
    let audit = get_json_at(
        &api_of(&nodes[1].dir).unwrap(),
        "/api/v1/clustering/audit?limit=1000",
    )
    .unwrap();
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["operation_id"] == id.as_str())
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"lease.expire"), "{actions:?}");
    assert!(actions.contains(&"update.node_failed"), "{actions:?}");
    assert_eq!(
        actions.iter().filter(|a| **a == "lease.grant").count(),
        1,
        "no other node took a lease: {actions:?}"
    );

    // s1 comes back on its old version; a canary update then goes to one
    // node first, soaks, and only then to the rest.
    let boot = vec![nodes[1].p2p.clone()];
    nodes[0].restart(boot);
    assert!(wait_for(Duration::from_secs(20), || {
        nodes.iter().all(|n| n.alive_count() == 3).then_some(())
    })
    .is_some());
    let api = api_of(&nodes[2].dir).unwrap();
    let id = plan_and_execute(
        &api,
        json!({"target_version": "0.1.1", "strategy": "canary"}),
    );
    let op = wait_final(&nodes, &id, Duration::from_secs(180));
    assert_eq!(op["status"], "completed", "{op:#}");
    assert!(versions(&nodes).values().all(|v| v == "0.1.1"));
    let st = &op["node_statuses"];
    let canary_done = st["s1"]["completed_at"].as_str().unwrap().to_string();
    for n in ["s2", "s3"] {
        let started = st[n]["started_at"].as_str().unwrap();
        assert!(
            started > canary_done.as_str(),
            "{n} started during the canary: {op:#}"
        );
    }
}

/// A scratch dir, kept (and printed) when PLEXI_KEEP_TEST_DIRS is set.
/// Holds a test's directory and its turn: the tests of this file run one
/// at a time. Each runs a 3-5 node cluster through timed rollouts (lease
/// ttls, health-check timeouts); four at once on a 2-core machine starve
/// those timers and turn a timing margin into a false failure.
struct TestGuard {
    _dir: Option<tempfile::TempDir>,
    _turn: std::sync::MutexGuard<'static, ()>,
}

fn test_dir() -> (TestGuard, PathBuf) {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that failed poisons the lock; the next one still runs.
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    if std::env::var_os("PLEXI_KEEP_TEST_DIRS").is_some() {
        let path = dir.keep();
        eprintln!("test dir kept: {}", path.display());
        return (
            TestGuard {
                _dir: None,
                _turn: turn,
            },
            path,
        );
    }
    let path = dir.path().to_path_buf();
    (
        TestGuard {
            _dir: Some(dir),
            _turn: turn,
        },
        path,
    )
}

#[test]
fn without_a_majority_an_update_waits_and_never_proceeds() {
    let (_guard, root) = test_dir();
    let v2 = build_version("0.1.1", "");
    let public = keygen(root.as_path());
    let mut nodes = cluster(root.as_path(), 3, &config(&public, ""));
    let api = nodes[0].api.clone();
    publish(&api, root.as_path(), &v2, "0.1.1", &[]);
    let base = versions(&nodes)["s1"].clone();

    // Two of three members down: s1 alone is no majority.
    nodes[1].kill();
    nodes[2].kill();
    assert!(wait_for(Duration::from_secs(20), || {
        (nodes[0].status_of("s2")? == "dead" && nodes[0].status_of("s3")? == "dead").then_some(())
    })
    .is_some());
    let id = plan_and_execute(
        &api,
        json!({"target_version": "0.1.1", "target_nodes": ["s1"]}),
    );
    // It waits for a lease, and nothing destructive happens meanwhile.
    assert!(wait_for(Duration::from_secs(10), || {
        let op = get_json_at(&api, &format!("/api/v1/clustering/updates/{id}/status"))?;
        (op["node_statuses"]["s1"]["current_phase"] == "lease").then_some(())
    })
    .is_some());
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        let op = get_json_at(&api, &format!("/api/v1/clustering/updates/{id}/status")).unwrap();
        assert_eq!(op["status"], "running", "{op:#}");
        assert_eq!(
            op["node_statuses"]["s1"]["current_phase"], "lease",
            "{op:#}"
        );
        assert_eq!(op["leases"].as_array().unwrap().len(), 0, "{op:#}");
        assert_eq!(versions(&nodes[..1])["s1"], base);
        std::thread::sleep(Duration::from_millis(500));
    }
    // A second member back: a majority, and the update goes through.
    let boot = vec![nodes[0].p2p.clone()];
    nodes[1].restart(boot);
    let op = wait_final(&nodes[..2], &id, Duration::from_secs(120));
    assert_eq!(op["status"], "completed", "{op:#}");
    assert_eq!(versions(&nodes[..1])["s1"], "0.1.1");
}

/// Chaos seed 2 (docs/RELIABILITY.md, "Findings"): a node killed during its
/// pre-check and back at once came up with its part still `updating`;
/// nothing moved it on (a node's part starts only from `pending`, and the
/// dead-holder watch needs the node dead) and the rolling update hung. The
/// restarted worker now fails its interrupted part, so the operation rolls
/// back instead.
#[test]
fn a_node_restarted_before_its_switch_fails_its_part_and_the_update_ends() {
    let (_guard, root) = test_dir();
    let v2 = build_version("0.1.1", "");
    let public = keygen(root.as_path());
    let nodes = cluster(root.as_path(), 3, &config(&public, ""));
    let api = nodes[1].api.clone();
    publish(&api, root.as_path(), &v2, "0.1.1", &[]);
    // Every peer call of s1 waits 1.5 s (the debug build's fault file), so
    // its steps before the switch (lease rounds, syncs) last seconds.
    let faults = nodes[0].dir.join("data/test-faults.json");
    std::fs::write(&faults, r#"{"net_delay_ms": [1500, 1500]}"#).unwrap();
    let id = plan_and_execute(&api, json!({"target_version": "0.1.1"}));
    // s1 updates first (batches are by name); killed between its lease and
    // its switch (each of those steps ends the same way: its part is
    // failed at restart). Asked of s1 itself: its own
    // progress reaches the others late, its pushes being delayed too.
    let s1_api = nodes[0].api.clone();
    let mut seen = Vec::new();
    let reached = wait_for(Duration::from_secs(60), || {
        let op = get_json_at(&s1_api, &format!("/api/v1/clustering/updates/{id}/status"))?;
        let n = &op["node_statuses"]["s1"];
        let now = format!("{}/{}", n["status"], n["current_phase"]);
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        let phase = n["current_phase"].as_str().unwrap_or("");
        let before_switch = ["lease", "pre_check", "drain", "backup", "fetch", "install"];
        (n["status"] == "updating" && before_switch.contains(&phase)).then_some(())
    });
    assert!(
        reached.is_some(),
        "s1 never was between lease and switch: {seen:?}"
    );
    eprintln!("killing s1's worker at {:?}", seen.last());
    std::fs::remove_file(&faults).unwrap();
    let worker = nodes[0].worker_pid().expect("s1's worker");
    // SAFETY: kill(2) on a pid this test started; the supervisor restarts it.
    assert_eq!(unsafe { libc::kill(worker as i32, libc::SIGKILL) }, 0);
    let op = wait_final(&nodes, &id, Duration::from_secs(120));
    assert_eq!(op["status"], "rolled_back", "{op:#}");
    let s1 = &op["node_statuses"]["s1"];
    assert_eq!(s1["status"], "failed", "{op:#}");
    assert!(
        s1["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("restarted during its update")),
        "{op:#}"
    );
    let base = String::from_utf8(Command::new(BIN).arg("--version").output().unwrap().stdout)
        .unwrap()
        .trim()
        .trim_start_matches("plexi ")
        .to_string();
    assert!(
        versions(&nodes).values().all(|v| *v == base),
        "{:?}",
        versions(&nodes)
    );
}
