//! `/metrics` with real processes: the storage request histogram counts
//! exactly the requests sent (by op and consistency), used bytes and
//! replica gauges follow the data (locally and, through gossip, per
//! member), the census gauges match the overview; and every metric the
//! Grafana dashboard (`docs/grafana/plexi.json`) queries exists in a real
//! node's `/metrics` (or is one of the two the alerts part adds).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::{cluster, wait_for, NodeSpec, TestNode, ADMIN, FAST, READ};
use serde_json::Value;

/// Metrics the alerts work adds in its own branch; the dashboard may use
/// them before they exist here. Keep this list explicit and short.
const ALERT_METRICS: [&str; 2] = [
    "plexi_storage_under_replicated_objects",
    "plexi_alerts_active",
];

fn scrape(n: &TestNode) -> String {
    let res = n.get("/metrics", Some(READ));
    assert_eq!(res.status(), 200);
    res.text().unwrap()
}

/// Sample lines as `series -> value` (`name{labels}` exactly as encoded).
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn value(text: &str, series: &str) -> f64 {
    samples(text).get(series).copied().unwrap_or(0.0)
}

fn sum_of(nodes: &[&TestNode], series: &str) -> f64 {
    nodes.iter().map(|n| value(&scrape(n), series)).sum()
}

#[test]
fn request_histograms_and_storage_gauges_follow_the_traffic() {
    let root = tempfile::tempdir().unwrap();
    let config = format!("{FAST}  default_replication_factor: 2\n");
    let nodes = cluster(root.path(), 3, &config);
    let all: Vec<&TestNode> = nodes.iter().collect();
    let s1 = &nodes[0];
    let before = scrape(s1);
    assert_eq!(
        value(
            &before,
            r#"plexi_storage_request_duration_seconds_count{op="put",consistency="strong"}"#
        ),
        0.0
    );
    assert_eq!(value(&before, "plexi_storage_used_bytes"), 0.0);
    assert!(
        value(&before, "plexi_storage_capacity_bytes") > 0.0,
        "{before}"
    );

    let size = 1000usize;
    for i in 0..6 {
        let res = s1.put(&format!("m{i}"), &vec![i as u8; size], "consistency=strong");
        assert_eq!(res.status(), 201);
    }
    for i in 6..10 {
        let res = s1.put(
            &format!("m{i}"),
            &vec![i as u8; size],
            "consistency=eventual",
        );
        assert_eq!(res.status(), 201);
    }
    // Strong reads right after the cluster formed: replicas still
    // catching up serve the version a majority vouches for (CI saw 503
    // read_failed here when they refused every read).
    for i in 0..5 {
        let res = s1.fetch(&format!("m{i}"), "consistency=strong");
        let status = res.status();
        assert_eq!(status, 200, "{}", res.text().unwrap_or_default());
    }
    assert_eq!(s1.fetch("m9", "consistency=weak").status(), 200);
    assert_eq!(s1.fetch("nope", "consistency=weak").status(), 404);
    for i in 8..10 {
        let res = reqwest::blocking::Client::new()
            .delete(format!(
                "{}/api/v1/clustering/storage/data/m{i}?consistency=strong",
                s1.api
            ))
            .bearer_auth(ADMIN)
            .send()
            .unwrap();
        assert_eq!(res.status(), 204);
    }
    let text = scrape(s1);
    let count = |op: &str, c: &str| {
        value(
            &text,
            &format!(
                r#"plexi_storage_request_duration_seconds_count{{op="{op}",consistency="{c}"}}"#
            ),
        )
    };
    assert_eq!(count("put", "strong"), 6.0);
    assert_eq!(count("put", "eventual"), 4.0);
    assert_eq!(count("get", "strong"), 5.0);
    assert_eq!(
        count("get", "weak"),
        2.0,
        "a not-found read is a request too"
    );
    assert_eq!(count("delete", "strong"), 2.0);
    assert_eq!(count("delete", "eventual"), 0.0);
    // The +Inf bucket holds every observation; the sum is positive.
    let inf = value(
        &text,
        r#"plexi_storage_request_duration_seconds_bucket{le="+Inf",op="put",consistency="strong"}"#,
    );
    let inf = if inf == 0.0 {
        value(
            &text,
            r#"plexi_storage_request_duration_seconds_bucket{op="put",consistency="strong",le="+Inf"}"#,
        )
    } else {
        inf
    };
    assert_eq!(inf, 6.0, "{text}");
    assert!(
        value(
            &text,
            r#"plexi_storage_request_duration_seconds_sum{op="put",consistency="strong"}"#
        ) > 0.0
    );
    // Other nodes coordinated nothing.
    assert_eq!(
        value(
            &scrape(&nodes[1]),
            r#"plexi_storage_request_duration_seconds_count{op="put",consistency="strong"}"#
        ),
        0.0
    );

    // 8 live objects of 1000 bytes at RF 2: 16 replicas, 16000 bytes, over
    // the three nodes' own gauges (eventual writes finish in the background).
    let settled = wait_for(Duration::from_secs(15), || {
        let used = sum_of(&all, "plexi_storage_used_bytes");
        let replicas = sum_of(&all, "plexi_storage_replicas");
        (used == 16_000.0 && replicas == 16.0).then_some(())
    });
    assert!(
        settled.is_some(),
        "used {} replicas {}",
        sum_of(&all, "plexi_storage_used_bytes"),
        sum_of(&all, "plexi_storage_replicas")
    );
    // Per member, as gossiped: s1's view of s2 agrees with s2's own gauge.
    let own = value(&scrape(&nodes[1]), "plexi_storage_used_bytes");
    let seen = wait_for(Duration::from_secs(10), || {
        let v = value(
            &scrape(s1),
            r#"plexi_cluster_node_used_bytes{node_id="s2"}"#,
        );
        (v == own).then_some(v)
    });
    assert_eq!(seen, Some(own), "gossiped used bytes of s2");
    let t = scrape(s1);
    assert_eq!(value(&t, r#"plexi_cluster_node_up{node_id="s3"}"#), 1.0);

    // Census gauges: the overview runs a census and sets them.
    let overview = s1.get_json("/api/v1/clustering/storage/overview");
    assert_eq!(overview["total_data_objects"], 8);
    let t = scrape(s1);
    assert_eq!(value(&t, "plexi_storage_cluster_objects"), 8.0);
    assert_eq!(value(&t, "plexi_storage_cluster_replicas"), 16.0);
    assert_eq!(value(&t, "plexi_storage_replication_efficiency"), 1.0);
    // Update operations: none yet, every status present at 0.
    assert_eq!(
        value(&t, r#"plexi_update_operations{status="completed"}"#),
        0.0
    );
    assert!(
        t.contains(r#"plexi_update_operations{status="running"} 0"#),
        "{t}"
    );
}

/// Every `plexi_*` name in the PromQL expressions of the dashboard.
fn dashboard_metrics() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana/plexi.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match v {
                        Value::String(s) if k == "expr" => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&doc, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard has its queries");
    let mut names = BTreeSet::new();
    for e in exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("plexi_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    names
}

/// Every series name a scrape can show: sample names, and for each
/// declared family the names its type gives it (a family with no sample
/// yet, e.g. a counter nobody incremented, still counts).
fn exposed_names(text: &str) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = samples(text)
        .keys()
        .map(|s| s.split('{').next().unwrap().to_string())
        .collect();
    for l in text.lines() {
        let mut w = l.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (w.next(), w.next(), w.next(), w.next())
        {
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_count", "_sum"],
                _ => &[""],
            };
            for s in suffixes {
                names.insert(format!("{name}{s}"));
            }
        }
    }
    names
}

#[test]
fn the_dashboard_queries_only_metrics_a_node_exposes() {
    let root = tempfile::tempdir().unwrap();
    let n = TestNode::spawn(root.path(), NodeSpec::new("d1"));
    let exposed = exposed_names(&scrape(&n));
    let queried = dashboard_metrics();
    let missing: Vec<&String> = queried
        .iter()
        .filter(|q| !exposed.contains(*q) && !ALERT_METRICS.contains(&q.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no node exposes: {missing:?}"
    );
    for a in ALERT_METRICS {
        assert!(
            queried.contains(a),
            "{a} is listed but the dashboard does not use it"
        );
    }
    // The check bites: a made-up name is not exposed.
    assert!(!exposed.contains("plexi_storage_made_up_total"));
}
