//! The node's outside contract with one or two real processes: config errors
//! (exit 2, key and file named), a fresh node with no config, auth roles, the
//! error shape, /metrics, /health, the OpenAPI document.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{wait_for, NodeSpec, TestNode, ADMIN, BIN, READ};
use serde_json::Value;

fn run_with_config(yaml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("clustering.yml");
    std::fs::write(&cfg, yaml).unwrap();
    let log = dir.path().join("log");
    let mut cmd = Command::new(BIN);
    cmd.arg("node")
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stderr(std::fs::File::create(&log).unwrap());
    // Flags override the file: give ports only when the file has no node section.
    if !yaml.contains("node:") {
        cmd.args(["--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0"]);
    }
    let mut child = cmd.spawn().unwrap();
    let status = wait_for(Duration::from_secs(20), || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("node accepted a bad config:\n{yaml}\n{stderr}"));
    assert!(
        stderr.contains(&cfg.display().to_string()),
        "file not named: {stderr}"
    );
    (status.code().unwrap_or(-1), stderr)
}

#[test]
fn misspelt_key_exits_2_naming_key_and_file() {
    let (code, err) = run_with_config("cluster_updates:\n  max_concurent_updates: 2\n");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("max_concurent_updates"), "{err}");
}

#[test]
fn bad_values_exit_2_naming_the_key() {
    for (yaml, key) in [
        (
            "distributed_storage:\n  max_replication_factor: many\n",
            "max_replication_factor",
        ),
        (
            "distributed_storage:\n  default_replication_factor: 9\n",
            "default_replication_factor",
        ),
        (
            "distributed_storage:\n  storage_strategy: random\n",
            "storage_strategy",
        ),
        (
            "distributed_storage:\n  max_node_usage_percentage: 101\n",
            "max_node_usage_percentage",
        ),
        (
            "node:\n  listen: not-a-multiaddr\n  api: 127.0.0.1:0\n",
            "node.listen",
        ),
        (
            "node:\n  listen: /ip4/127.0.0.1/tcp/0\n  api: 127.0.0.1:0\n  zone: \"a b\"\n",
            "node.zone",
        ),
        (
            "membership:\n  dead_after_ms: 10\n",
            "membership.dead_after_ms",
        ),
    ] {
        let (code, err) = run_with_config(yaml);
        assert_eq!(code, 2, "{yaml}: {err}");
        assert!(err.contains(key), "{yaml}: {err}");
    }
}

#[test]
fn missing_explicit_config_exits_2() {
    let out = Command::new(BIN)
        .args(["node", "--config", "/nonexistent/clustering.yml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/clustering.yml"));
}

#[test]
fn version_flag_prints_compiled_version() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), format!("plexi {}", env!("CARGO_PKG_VERSION")));
}

/// A node started with no config file and no flags at all serves on the
/// default ports with a generated admin token.
#[test]
fn fresh_node_without_config_or_flags_serves() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .arg("node")
        .current_dir(dir.path())
        .env_remove("PLEXI_ADMIN_TOKEN")
        .env_remove("PLEXI_READ_TOKEN")
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    let token_path = dir.path().join("plexi-data/admin.token");
    let served = wait_for(Duration::from_secs(20), || {
        let r = reqwest::blocking::get("http://127.0.0.1:8080/health").ok()?;
        r.status().is_success().then_some(())
    });
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    let token = std::fs::read_to_string(&token_path).ok();
    let _ = child.kill();
    let _ = child.wait();
    assert!(served.is_some(), "fresh node did not serve: {log}");
    let token = token.expect("admin.token generated");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(log.contains("admin.token"), "path of the token is logged");
    assert!(
        !log.contains(token.trim()),
        "the token itself is never logged"
    );
}

#[test]
fn auth_roles_error_shape_metrics_and_openapi() {
    let root = tempfile::tempdir().unwrap();
    let a = TestNode::spawn(root.path(), NodeSpec::new("a"));
    let b = TestNode::spawn(
        root.path(),
        NodeSpec {
            bootstrap: vec![a.p2p.clone()],
            ..NodeSpec::new("b")
        },
    );
    let client = reqwest::blocking::Client::new();

    // /health needs no token.
    assert_eq!(a.get("/health", None).status(), 200);

    // Nodes: 401 without token (JSON error, WWW-Authenticate), 401 with a
    // wrong one, 200 with the read token.
    let res = a.get("/api/v1/clustering/nodes", None);
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    let body: Value = res.json().unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    assert!(body["error"]["message"].as_str().unwrap().len() > 10);
    assert_eq!(
        a.get("/api/v1/clustering/nodes", Some("wrong-token-value"))
            .status(),
        401
    );
    assert_eq!(a.get("/api/v1/clustering/nodes", Some(READ)).status(), 200);
    assert_eq!(a.get("/api/v1/clustering/nodes", Some(ADMIN)).status(), 200);

    // A change with the read token: 403 before routing; admin passes auth
    // and finds the path takes no POST: 405 with the JSON shape.
    let res = client
        .post(format!("{}/api/v1/clustering/nodes", a.api))
        .bearer_auth(READ)
        .send()
        .unwrap();
    assert_eq!(res.status(), 403);
    let body: Value = res.json().unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
    let res = client
        .post(format!("{}/api/v1/clustering/nodes", a.api))
        .bearer_auth(ADMIN)
        .send()
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(
        res.json::<Value>().unwrap()["error"]["code"],
        "method_not_allowed"
    );

    // Unknown endpoint and unknown node: 404 with the JSON error shape.
    let res = a.get("/api/v1/nope", Some(READ));
    assert_eq!(res.status(), 404);
    assert_eq!(res.json::<Value>().unwrap()["error"]["code"], "not_found");
    let res = a.get("/api/v1/clustering/nodes/ghost/health", Some(READ));
    assert_eq!(res.status(), 404);
    assert_eq!(res.json::<Value>().unwrap()["error"]["code"], "not_found");

    // Both see each other; health of b through a comes from b.
    assert!(wait_for(Duration::from_secs(15), || (a.alive_count() == 2
        && b.alive_count() == 2)
        .then_some(()))
    .is_some());
    let h = a.get_json("/api/v1/clustering/nodes/b/health");
    assert_eq!(h["source"], "peer");
    assert_eq!(h["peer_id"], b.peer_id.as_str());
    let h = a.get_json("/api/v1/clustering/nodes/a/health");
    assert_eq!(h["source"], "local");

    // /metrics: Prometheus text with ours and libp2p's metrics (member
    // gauges refresh at each heartbeat).
    let res = a.get("/metrics", Some(READ));
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("text"));
    let text = wait_for(Duration::from_secs(5), || {
        let t = a.get("/metrics", Some(READ)).text().ok()?;
        t.contains("plexi_members{status=\"alive\"} 2").then_some(t)
    })
    .unwrap_or_else(|| a.get("/metrics", Some(READ)).text().unwrap());
    for needle in [
        "# TYPE plexi_members gauge",
        "plexi_members{status=\"alive\"} 2",
        "plexi_http_requests_total{",
        "libp2p_",
    ] {
        assert!(text.contains(needle), "metrics lack {needle:?}:\n{text}");
    }

    // The OpenAPI document names our paths.
    let doc: Value = a.get("/api/v1/openapi.json", Some(READ)).json().unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/api/v1/clustering/nodes",
        "/api/v1/clustering/nodes/{node_id}/health",
        "/health",
        "/metrics",
    ] {
        assert!(doc["paths"].get(p).is_some(), "openapi lacks {p}");
    }
}

/// The update routes on a real node: roles (read may GET, only admin may
/// change), bad input as 400 with the JSON shape before the node is asked,
/// the event stream, the OpenAPI paths, and the CLI's error reporting.
#[test]
fn update_routes_roles_and_bad_input() {
    let root = tempfile::tempdir().unwrap();
    let a = TestNode::spawn(root.path(), NodeSpec::new("a"));
    let client = reqwest::blocking::Client::new();
    let op = "/api/v1/clustering/updates/3f2b1c9e-0000-4000-8000-000000000001";

    for path in [
        format!("{op}/status"),
        "/api/v1/clustering/updates/active".into(),
        "/api/v1/clustering/updates/history".into(),
        "/api/v1/clustering/maintenance".into(),
        "/api/v1/clustering/audit".into(),
        "/api/v1/events".into(),
    ] {
        assert_eq!(a.get(&path, None).status(), 401, "{path}");
        let res = a.get(&path, Some(READ));
        let status = res.status().as_u16();
        assert!(![401, 403, 405].contains(&status), "{path}: {status}");
        if status == 404 {
            // The unknown operation, not an unrouted path.
            let v: Value = res.json().unwrap();
            assert_ne!(v["error"]["message"], "no such endpoint", "{path}");
        }
    }
    let post = |path: &str, token: &str, body: Option<&str>| {
        let mut req = client
            .post(format!("{}{path}", a.api))
            .bearer_auth(token)
            .timeout(Duration::from_secs(15));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        req.send().unwrap()
    };
    for (path, body) in [
        (
            "/api/v1/clustering/updates/plan".to_string(),
            Some(r#"{"target_version":"9.9.9"}"#),
        ),
        (format!("{op}/execute"), None),
        (format!("{op}/rollback"), None),
        (
            "/api/v1/clustering/maintenance".into(),
            Some(r#"{"enabled":true}"#),
        ),
    ] {
        let res = post(&path, READ, body);
        assert_eq!(res.status(), 403, "{path}");
        assert_eq!(res.json::<Value>().unwrap()["error"]["code"], "forbidden");
    }

    for body in [
        "{not json",
        r#"{"target_version":"9.9.9","colour":"red"}"#,
        r#"{"target_version":"9.9.9","strategy":"yolo"}"#,
    ] {
        let res = post("/api/v1/clustering/updates/plan", ADMIN, Some(body));
        assert_eq!(res.status(), 400, "{body}");
        let v: Value = res.json().unwrap();
        assert!(v["error"]["code"].as_str().unwrap().starts_with("invalid_"));
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    for q in ["0", "1001", "ten"] {
        let res = a.get(
            &format!("/api/v1/clustering/updates/history?limit={q}"),
            Some(READ),
        );
        assert_eq!(res.status(), 400, "limit={q}");
        assert_eq!(
            res.json::<Value>().unwrap()["error"]["code"],
            "invalid_limit"
        );
    }

    // The event stream answers at once with its content type.
    let res = a.get("/api/v1/events", Some(READ));
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    drop(res);

    let doc: Value = a.get("/api/v1/openapi.json", Some(READ)).json().unwrap();
    for p in [
        "/api/v1/clustering/updates/plan",
        "/api/v1/clustering/updates/{operation_id}/execute",
        "/api/v1/clustering/updates/{operation_id}/status",
        "/api/v1/clustering/updates/{operation_id}/rollback",
        "/api/v1/clustering/updates/active",
        "/api/v1/clustering/updates/history",
        "/api/v1/clustering/maintenance",
        "/api/v1/clustering/audit",
        "/api/v1/events",
    ] {
        assert!(doc["paths"].get(p).is_some(), "openapi lacks {p}");
    }

    // CLI: an API refusal prints the API's message and exits 1; a bad flag
    // is clap's exit 2.
    for args in [
        vec!["update", "plan", "--version", "9.9.9"],
        vec!["maintenance", "on", "--reason", "test"],
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .args(["--api", &a.api, "--token", READ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("403") && err.contains("admin role"), "{err}");
    }
    let out = Command::new(BIN)
        .args(["update", "history", "--limit", "0", "--api", &a.api])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
