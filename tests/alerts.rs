//! Alerts on real processes: every node derives the same alerts (same ids)
//! from gossiped and replicated facts; they resolve on every node; the
//! event stream, opened with a ticket and no header, carries them.

mod common;

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// [`FAST`]'s timings, and 0.0001 GiB (107 KB) of capacity: a 70 KB
/// object puts every node above the warning level, below the maximum
/// (placement keeps every node).
const CONFIG: &str = "
node:
  capacity_gb: 0.0001
membership:
  heartbeat_interval_ms: 200
  exchange_interval_ms: 300
  suspect_after_ms: 800
  dead_after_ms: 1500
distributed_storage:
  rereplication_delay_seconds: 2
  anti_entropy_interval_seconds: 0.3
  health_check_interval_seconds: 1
  warn_node_usage_percentage: 50
  max_node_usage_percentage: 99
";

fn alerts(node: &TestNode) -> Value {
    node.get_json("/api/v1/clustering/alerts?limit=1000")
}

/// The one active alert of `kind` about `subject` on `node`, if any.
fn active(node: &TestNode, kind: &str, subject: &str) -> Option<Value> {
    alerts(node)["active"]
        .as_array()?
        .iter()
        .find(|a| a["kind"] == kind && a["subject"] == subject)
        .cloned()
}

fn resolved(node: &TestNode, id: &str) -> Option<Value> {
    let list = alerts(node);
    if list["active"]
        .as_array()?
        .iter()
        .any(|a| a["alert_id"] == id)
    {
        return None;
    }
    list["recent"]
        .as_array()?
        .iter()
        .find(|a| a["alert_id"] == id)
        .cloned()
}

/// The same active alert (by id) on every node of `nodes`.
fn same_everywhere(nodes: &[&TestNode], kind: &str, subject: &str) -> Option<Value> {
    let found: Vec<Value> = nodes
        .iter()
        .map(|n| active(n, kind, subject))
        .collect::<Option<_>>()?;
    found
        .iter()
        .all(|a| a["alert_id"] == found[0]["alert_id"])
        .then(|| found[0].clone())
}

/// Opens `GET /events?ticket=` on `node` without an Authorization header
/// and forwards every `(event name, data)` it reads.
fn event_stream(node: &TestNode) -> mpsc::Receiver<(String, Value)> {
    let ticket = node.get_json("/api/v1/events/ticket")["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    let res = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .unwrap()
        .get(format!("{}/api/v1/events?ticket={ticket}", node.api))
        .send()
        .unwrap();
    assert_eq!(
        res.status(),
        200,
        "a ticket opens the stream without a header"
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut name = String::new();
        for line in BufReader::new(res).lines() {
            let Ok(line) = line else { return };
            if let Some(n) = line.strip_prefix("event: ") {
                name = n.to_string();
            } else if let Some(d) = line.strip_prefix("data: ") {
                let ev: Value = serde_json::from_str(d).unwrap_or_default();
                if tx.send((name.clone(), ev["data"].clone())).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Every event read so far, and the stream's receiver.
struct Events {
    rx: mpsc::Receiver<(String, Value)>,
    seen: Vec<(String, Value)>,
}

impl Events {
    /// Waits for an event named `name` whose data matches `pred`, among
    /// those read so far or arriving (the order of a `member` event and
    /// the alert it causes is not fixed).
    fn expect(&mut self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some((_, d)) = self.seen.iter().find(|(n, d)| n == name && pred(d)) {
                return d.clone();
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(ev) => self.seen.push(ev),
                Err(e) => panic!("no {name} event: {e}; seen {:?}", self.seen),
            }
        }
    }
}

fn set_maintenance(node: &TestNode, enabled: bool) {
    let res = reqwest::blocking::Client::new()
        .post(format!("{}/api/v1/clustering/maintenance", node.api))
        .bearer_auth(ADMIN)
        .json(&json!({ "enabled": enabled, "reason": "alerts test" }))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[test]
fn alerts_are_the_same_on_every_node_and_resolve_everywhere() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 3, CONFIG);
    let mut events = Events {
        rx: event_stream(&nodes[0]),
        seen: Vec::new(),
    };

    // Bad input: the JSON error body.
    let res = nodes[0].get("/api/v1/clustering/alerts?limit=0", Some(READ));
    assert_eq!(res.status(), 400);
    let v: Value = res.json().unwrap();
    assert!(v["error"]["code"].is_string(), "{v}");

    // Usage: a 70 KB object on all three nodes of 107 KB each.
    let res = nodes[0].put(
        "full",
        &vec![7u8; 70_000],
        "replication_factor=3&consistency=strong",
    );
    assert!(res.status().is_success(), "{}", res.status());
    let all: Vec<&TestNode> = nodes.iter().collect();
    for n in ["s1", "s2", "s3"] {
        let a = wait_for(WAIT, || same_everywhere(&all, "node_usage_warning", n))
            .unwrap_or_else(|| panic!("node_usage_warning for {n}: {}", alerts(&nodes[0])));
        assert_eq!(a["severity"], "warning");
        assert_eq!(a["state"], "active");
    }
    events.expect("alert.raised", |d| d["kind"] == "node_usage_warning");

    // Maintenance on: the same alert everywhere; off: resolved everywhere.
    set_maintenance(&nodes[1], true);
    let m = wait_for(WAIT, || same_everywhere(&all, "maintenance_on", "cluster"))
        .expect("maintenance_on on every node");
    let id = m["alert_id"].as_str().unwrap().to_string();
    set_maintenance(&nodes[2], false);
    for n in &nodes {
        let r = wait_for(WAIT, || resolved(n, &id)).expect("maintenance_on resolved");
        assert_eq!(r["state"], "resolved");
        assert!(r["resolved_at"].is_string());
    }
    events.expect("alert.resolved", |d| d["alert_id"] == id.as_str());

    // SIGKILL s3: the survivors report the same member_dead alert.
    nodes[2].kill();
    let survivors: Vec<&TestNode> = nodes[..2].iter().collect();
    let dead = wait_for(WAIT, || same_everywhere(&survivors, "member_dead", "s3"))
        .unwrap_or_else(|| panic!("member_dead for s3: {}", alerts(&nodes[0])));
    assert_eq!(dead["severity"], "critical");
    let dead_id = dead["alert_id"].as_str().unwrap().to_string();
    events.expect("member", |d| d["node_id"] == "s3" && d["status"] == "dead");
    events.expect("alert.raised", |d| d["alert_id"] == dead_id.as_str());
    // The one object now has two live copies of three: one survivor counts it.
    let under = wait_for(WAIT, || {
        let found: Vec<Value> = survivors
            .iter()
            .filter_map(|n| {
                ["s1", "s2"]
                    .iter()
                    .find_map(|s| active(n, "under_replicated", s))
            })
            .collect();
        (found.len() == 2 && found[0]["alert_id"] == found[1]["alert_id"]).then(|| found[0].clone())
    })
    .unwrap_or_else(|| panic!("under_replicated: {}", alerts(&nodes[0])));
    assert!(
        under["message"]
            .as_str()
            .unwrap()
            .starts_with("1 object has"),
        "{under}"
    );
    let metrics = nodes[0].get("/metrics", Some(READ)).text().unwrap();
    assert!(
        metrics.contains("plexi_alerts_active{severity=\"critical\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("plexi_storage_under_replicated_objects"),
        "{metrics}"
    );

    // Back: resolved on every survivor.
    let bootstrap = vec![nodes[0].p2p.clone()];
    nodes[2].restart(bootstrap);
    for n in &nodes[..2] {
        let r = wait_for(WAIT, || resolved(n, &dead_id))
            .unwrap_or_else(|| panic!("member_dead resolved on {}: {}", n.name, alerts(n)));
        assert_eq!(r["kind"], "member_dead");
    }
    events.expect("member", |d| d["node_id"] == "s3" && d["status"] == "alive");
}
