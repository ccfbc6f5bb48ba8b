//! API tokens on a real 3-node cluster: the whole endpoint-by-role matrix,
//! derived from the served OpenAPI document so a new route cannot be left
//! out (every route 401 without a token except `/health`, every mutating
//! route 403 for a read token, every route allowed for admin); a token made
//! by `plexi token create` works once its config line is added and is
//! audited by name; no token ever appears in a node's log or in a 401/403
//! body.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::{cluster, wait_for, TestNode, ADMIN, BIN, FAST, READ};
use reqwest::blocking::{Client, Response};
use reqwest::Method;
use serde_json::Value;

/// A well-formed token no node knows.
const UNKNOWN: &str = "unknown-token-0123456789abcdef0123";

/// One row of the matrix: a route as the document names it, the concrete
/// path to call, and the body to send.
struct Route {
    method: &'static str,
    template: &'static str,
    path: &'static str,
    body: Option<&'static str>,
}

fn matrix() -> Vec<Route> {
    let r = |method, template, path, body| Route {
        method,
        template,
        path,
        body,
    };
    vec![
        r("get", "/health", "/health", None),
        r("get", "/metrics", "/metrics", None),
        r("get", "/api/v1/openapi.json", "/api/v1/openapi.json", None),
        r("get", "/api/v1/whoami", "/api/v1/whoami", None),
        r(
            "get",
            "/api/v1/clustering/nodes",
            "/api/v1/clustering/nodes",
            None,
        ),
        r(
            "get",
            "/api/v1/clustering/nodes/{node_id}/health",
            "/api/v1/clustering/nodes/s2/health",
            None,
        ),
        r(
            "get",
            "/api/v1/clustering/updates/releases",
            "/api/v1/clustering/updates/releases",
            None,
        ),
        r(
            "post",
            "/api/v1/clustering/updates/releases",
            "/api/v1/clustering/updates/releases",
            Some("{}"),
        ),
        r(
            "get",
            "/api/v1/clustering/storage/data",
            "/api/v1/clustering/storage/data?prefix=auth&limit=5",
            None,
        ),
        r(
            "put",
            "/api/v1/clustering/storage/data/{data_id}",
            "/api/v1/clustering/storage/data/auth-matrix",
            Some("bytes"),
        ),
        r(
            "get",
            "/api/v1/clustering/storage/data/{data_id}",
            "/api/v1/clustering/storage/data/auth-matrix",
            None,
        ),
        r(
            "get",
            "/api/v1/clustering/storage/data/{data_id}/info",
            "/api/v1/clustering/storage/data/auth-matrix/info",
            None,
        ),
        r(
            "delete",
            "/api/v1/clustering/storage/data/{data_id}",
            "/api/v1/clustering/storage/data/auth-matrix",
            None,
        ),
        r(
            "get",
            "/api/v1/clustering/storage/overview",
            "/api/v1/clustering/storage/overview",
            None,
        ),
        r(
            "get",
            "/api/v1/clustering/storage/nodes",
            "/api/v1/clustering/storage/nodes",
            None,
        ),
        r(
            "get",
            "/api/v1/clustering/storage/distribution",
            "/api/v1/clustering/storage/distribution",
            None,
        ),
        r(
            "post",
            "/api/v1/clustering/storage/rebalance",
            "/api/v1/clustering/storage/rebalance",
            None,
        ),
        r(
            "post",
            "/api/v1/clustering/storage/cleanup",
            "/api/v1/clustering/storage/cleanup",
            None,
        ),
        r(
            "post",
            "/api/v1/clustering/storage/reencrypt",
            "/api/v1/clustering/storage/reencrypt",
            None,
        ),
        r(
            "get",
            "/api/v1/clustering/storage/jobs/{job_id}",
            "/api/v1/clustering/storage/jobs/3f2b1c9e-0000-4000-8000-0000000000bb",
            None,
        ),
        r(
            "post",
            "/api/v1/clustering/updates/plan",
            "/api/v1/clustering/updates/plan",
            Some(r#"{"target_version": "99.0.0"}"#),
        ),
        r(
            "post",
            "/api/v1/clustering/updates/{operation_id}/execute",
            "/api/v1/clustering/updates/3f2b1c9e-0000-4000-8000-0000000000aa/execute",
            None,
        ),
        r(
            "get",
            "/api/v1/clustering/updates/{operation_id}/status",
            "/api/v1/clustering/updates/3f2b1c9e-0000-4000-8000-0000000000aa/status",
            None,
        ),
        r(
            "post",
            "/api/v1/clustering/updates/{operation_id}/rollback",
            "/api/v1/clustering/updates/3f2b1c9e-0000-4000-8000-0000000000aa/rollback",
            None,
        ),
        r(
            "get",
            "/api/v1/clustering/updates/active",
            "/api/v1/clustering/updates/active",
            None,
        ),
        r(
            "get",
            "/api/v1/clustering/updates/history",
            "/api/v1/clustering/updates/history",
            None,
        ),
        r(
            "get",
            "/api/v1/clustering/maintenance",
            "/api/v1/clustering/maintenance",
            None,
        ),
        r(
            "post",
            "/api/v1/clustering/maintenance",
            "/api/v1/clustering/maintenance",
            Some(r#"{"enabled": false}"#),
        ),
        r(
            "get",
            "/api/v1/clustering/audit",
            "/api/v1/clustering/audit",
            None,
        ),
        r(
            "get",
            "/api/v1/clustering/audit/verify",
            "/api/v1/clustering/audit/verify",
            None,
        ),
        r("get", "/api/v1/events", "/api/v1/events", None),
        r(
            "get",
            "/api/v1/events/ticket",
            "/api/v1/events/ticket",
            None,
        ),
        r(
            "get",
            "/api/v1/clustering/alerts",
            "/api/v1/clustering/alerts",
            None,
        ),
    ]
}

fn call(node: &TestNode, route: &Route, token: Option<&str>) -> Response {
    let method = Method::from_bytes(route.method.to_uppercase().as_bytes()).unwrap();
    let mut req = Client::new()
        .request(method, format!("{}{}", node.api, route.path))
        .timeout(Duration::from_secs(30));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = route.body {
        let ct = if route.method == "put" {
            "application/octet-stream"
        } else {
            "application/json"
        };
        req = req.header("content-type", ct).body(b.to_string());
    }
    req.send().expect("request")
}

/// The status, and the body unless it is a stream (the event stream is
/// only opened).
fn status_and_body(res: Response, route: &Route) -> (u16, String) {
    let status = res.status().as_u16();
    if route.template == "/api/v1/events" && status == 200 {
        return (status, String::new());
    }
    (status, res.text().unwrap_or_default())
}

/// `plexi token create NAME --role ROLE`: (token, config line).
fn create_token(name: &str, role: &str) -> (String, String) {
    let out = Command::new(BIN)
        .args(["token", "create", name, "--role", role])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text.lines().next().unwrap().trim().to_string();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("- {"))
        .expect("a config line")
        .to_string();
    assert_eq!(token.len(), 64, "{text}");
    assert!(
        !line.contains(&token),
        "the config line holds the token: {line}"
    );
    assert!(line.contains(blake3::hash(token.as_bytes()).to_hex().as_str()));
    (token, line)
}

#[test]
fn every_route_by_role_and_no_token_leaks() {
    let (created, line) = create_token("ci-reader", "read");
    let config = format!("{FAST}node:\n  tokens:\n    {line}\n");
    let root = tempfile::tempdir().unwrap();
    let nodes = cluster(root.path(), 3, &config);
    let a = &nodes[0];

    // The matrix covers exactly the routes the document names.
    let doc: Value = a.get("/api/v1/openapi.json", Some(READ)).json().unwrap();
    let served: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|m| ["get", "put", "post", "delete", "patch", "head"].contains(&m.as_str()))
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let rows = matrix();
    let covered: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| (r.method.to_string(), r.template.to_string()))
        .collect();
    let missing: Vec<_> = served.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the auth matrix: {missing:?}"
    );
    let stale: Vec<_> = covered.difference(&served).collect();
    assert!(
        stale.is_empty(),
        "matrix rows for routes that are gone: {stale:?}"
    );

    let mut refusals = Vec::new();
    for (i, route) in rows.iter().enumerate() {
        // Spread over the three nodes: each one enforces the same rules.
        let node = &nodes[i % nodes.len()];
        let what = format!("{} {} on {}", route.method, route.path, node.name);
        let public = route.template == "/health";
        let mutating = route.method != "get";

        for token in [None, Some(UNKNOWN)] {
            let (s, body) = status_and_body(call(node, route, token), route);
            if public {
                assert_eq!(s, 200, "{what} without a token: {body}");
                continue;
            }
            assert_eq!(s, 401, "{what} with {token:?}: {body}");
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            assert_eq!(v["error"]["code"], "unauthorized", "{what}: {body}");
            refusals.push(body);
        }
        for read in [READ, created.as_str()] {
            let (s, body) = status_and_body(call(node, route, Some(read)), route);
            if mutating {
                assert_eq!(s, 403, "{what} with a read token: {body}");
                let v: Value = serde_json::from_str(&body).unwrap_or_default();
                assert_eq!(v["error"]["code"], "forbidden", "{what}: {body}");
                refusals.push(body);
            } else {
                assert!(
                    ![401, 403].contains(&s),
                    "{what} refused a read token: {s} {body}"
                );
            }
        }
        let (s, body) = status_and_body(call(node, route, Some(ADMIN)), route);
        assert!(
            ![401, 403, 500].contains(&s),
            "{what} refused admin (or failed): {s} {body}"
        );
    }

    // The created token was audited by name and role, on every node.
    let audited = wait_for(Duration::from_secs(15), || {
        nodes
            .iter()
            .all(|n| {
                let list = n.get_json("/api/v1/clustering/audit?limit=1000");
                list["entries"].as_array().unwrap().iter().any(|e| {
                    e["action"] == "token.added"
                        && e["detail"]["name"] == "ci-reader"
                        && e["detail"]["role"] == "read"
                })
            })
            .then_some(())
    });
    assert!(
        audited.is_some(),
        "token.added for ci-reader not seen everywhere"
    );

    // No token in any refusal body, nor in any node's log.
    let secrets = [ADMIN, READ, created.as_str(), UNKNOWN];
    let hash = blake3::hash(created.as_bytes()).to_hex().to_string();
    for body in &refusals {
        for s in secrets {
            assert!(!body.contains(s), "a refusal body holds a token: {body}");
        }
    }
    for n in &nodes {
        let log = std::fs::read_to_string(n.dir.join("node.log")).unwrap();
        assert!(
            log.contains("audit entry appended"),
            "{} log is empty?",
            n.name
        );
        for s in secrets.iter().copied().chain([hash.as_str()]) {
            assert!(
                !log.contains(s),
                "{}'s log holds a token or its hash",
                n.name
            );
        }
    }
    let audit = serde_json::to_string(&a.get_json("/api/v1/clustering/audit?limit=1000")).unwrap();
    for s in secrets.iter().copied().chain([hash.as_str()]) {
        assert!(
            !audit.contains(s),
            "the audit log holds a token or its hash"
        );
    }
}
