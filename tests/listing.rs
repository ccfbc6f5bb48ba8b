//! The object listing with real processes: `GET /clustering/storage/data`
//! pages through every live object of a 3-node cluster at RF 2 in id order,
//! filters by prefix, leaves deleted objects out, stays complete and
//! identical after a node is SIGKILLed, and refuses bad queries with 400
//! JSON. `plexi ls` pages through the same set.

mod common;

use std::time::Duration;

use common::{cluster, wait_for, TestNode, ADMIN, BIN, FAST, READ};
use serde_json::Value;

fn list(n: &TestNode, query: &str) -> Value {
    n.get_json(&format!("/api/v1/clustering/storage/data?{query}"))
}

/// Every page with `limit`, followed through `next_after`; the ids in
/// order, and each page as returned.
fn page_through(n: &TestNode, prefix: &str, limit: usize) -> (Vec<String>, Vec<Value>) {
    let mut ids = Vec::new();
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..100 {
        let mut q = format!("limit={limit}&prefix={prefix}");
        if let Some(a) = &after {
            q.push_str(&format!("&after={a}"));
        }
        let p = list(n, &q);
        let objs = p["objects"].as_array().unwrap();
        assert!(objs.len() <= limit, "page over its limit: {p}");
        ids.extend(
            objs.iter()
                .map(|o| o["data_id"].as_str().unwrap().to_string()),
        );
        after = p["next_after"].as_str().map(str::to_string);
        pages.push(p);
        if after.is_none() {
            return (ids, pages);
        }
    }
    panic!("listing did not end within 100 pages");
}

#[test]
fn listing_pages_in_order_survives_a_kill_and_refuses_bad_queries() {
    let root = tempfile::tempdir().unwrap();
    let config = format!("{FAST}  default_replication_factor: 2\n");
    let mut nodes = cluster(root.path(), 3, &config);
    let mut live: Vec<String> = Vec::new();
    for i in 0..50 {
        let id = if i < 30 {
            format!("alpha-{i:02}")
        } else {
            format!("beta-{i:02}")
        };
        let through = &nodes[i % 3];
        let res = through.put(
            &id,
            format!("object {i}").as_bytes(),
            "consistency=strong&data_type=text/plain",
        );
        assert_eq!(res.status(), 201, "put {id}");
        live.push(id);
    }
    // Delete every seventh: absent from the listing.
    let deleted: Vec<String> = live.iter().step_by(7).cloned().collect();
    for id in &deleted {
        let res = reqwest::blocking::Client::new()
            .delete(format!(
                "{}/api/v1/clustering/storage/data/{id}?consistency=strong",
                nodes[1].api
            ))
            .bearer_auth(ADMIN)
            .send()
            .unwrap();
        assert_eq!(res.status(), 204, "delete {id}");
    }
    live.retain(|id| !deleted.contains(id));
    live.sort();

    // Limit 7: exactly the live set, in byte order, through any node.
    let (ids, pages) = page_through(&nodes[2], "", 7);
    assert_eq!(ids, live);
    assert!(pages.len() >= live.len() / 7, "{} pages", pages.len());
    for p in &pages {
        assert_eq!(p["complete"], true, "{p}");
        assert_eq!(p["unreachable_nodes"], serde_json::json!([]));
    }
    let one = &pages[0]["objects"][0];
    assert_eq!(one["data_type"], "text/plain");
    assert_eq!(one["replication_factor"], 2);
    assert_eq!(one["size_bytes"], "object 1".len());
    let info = nodes[0].get_json(&format!(
        "/api/v1/clustering/storage/data/{}/info",
        one["data_id"].as_str().unwrap()
    ));
    assert_eq!(one["version"], info["version"], "version as info shows it");
    assert_eq!(one["checksum"], info["checksum"]);
    // Strong writes: both replicas current, so every object is healthy.
    for p in &pages {
        for o in p["objects"].as_array().unwrap() {
            assert_eq!(o["replicas_found"], 2, "{o}");
            assert_eq!(o["replica_health"], "healthy", "{o}");
        }
    }

    // Prefix filter.
    let (beta, _) = page_through(&nodes[0], "beta-", 1000);
    let want: Vec<String> = live
        .iter()
        .filter(|i| i.starts_with("beta-"))
        .cloned()
        .collect();
    assert_eq!(beta, want);
    // The default page is 100: everything in one page here.
    let all = list(&nodes[1], "");
    assert_eq!(all["objects"].as_array().unwrap().len(), live.len());
    assert!(all["next_after"].is_null());

    // plexi ls pages through the same set.
    let out = std::process::Command::new(BIN)
        .args(["ls", "beta-", "--limit", "3", "--api", &nodes[0].api])
        .env("PLEXI_TOKEN", READ)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Vec<&str> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.starts_with("beta-"))
        .collect();
    assert_eq!(shown, want, "{text}");
    assert!(text.contains(&format!("{} objects", want.len())), "{text}");

    // SIGKILL one node: still complete (every object has another replica),
    // the same ids, the dead node named.
    nodes[2].kill();
    let (after_kill, pages) = page_through(&nodes[0], "", 7);
    assert_eq!(after_kill, live);
    for p in &pages {
        assert_eq!(p["complete"], true, "{p}");
        assert_eq!(p["unreachable_nodes"], serde_json::json!(["s3"]), "{p}");
    }
    let under = pages
        .iter()
        .flat_map(|p| p["objects"].as_array().unwrap().clone())
        .filter(|o| o["replica_health"] == "under_replicated")
        .count();
    assert!(under > 0, "objects with a replica on s3 count one copy now");

    // Bad queries: 400 invalid_query with the JSON error body.
    let long = "x".repeat(513);
    for q in [
        "limit=0".to_string(),
        "limit=1001".to_string(),
        "limit=abc".to_string(),
        "limit=-1".to_string(),
        format!("prefix={long}"),
        format!("after={long}"),
    ] {
        let res = nodes[0].get(&format!("/api/v1/clustering/storage/data?{q}"), Some(READ));
        assert_eq!(res.status(), 400, "{q}");
        let v: Value = res.json().unwrap();
        assert_eq!(v["error"]["code"], "invalid_query", "{q}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // No token: 401 as everywhere.
    let res = nodes[0].get("/api/v1/clustering/storage/data", None);
    assert_eq!(res.status(), 401);

    // Two of three down at RF 2: some object may have lost every copy.
    nodes[1].kill();
    let p = wait_for(Duration::from_secs(10), || {
        let p = list(&nodes[0], "limit=1000");
        (p["unreachable_nodes"].as_array().map(Vec::len) == Some(2)).then_some(p)
    })
    .expect("both dead nodes named");
    assert_eq!(p["complete"], false, "{p}");
}
