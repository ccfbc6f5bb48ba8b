//! The served OpenAPI document is exact, checked over requests generated
//! from it against a real node:
//! - every request the document calls valid (path and query parameters
//!   and JSON bodies drawn from their schemas, edges included: shortest,
//!   longest, smallest, largest, every enum value) is never refused as
//!   malformed, gets a status the document lists for that operation, and
//!   its JSON body matches the schema the document gives that status;
//! - every parameter value the document calls invalid (one past a length
//!   or range bound, a character outside the pattern, an unknown enum
//!   value) gets a listed 4xx with the JSON error body.
//!
//! The generator reads only the document (it knows JSON Schema, not our
//! routes), so a constraint the server checks but the document leaves out
//! shows up as a refused "valid" request.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{cluster, ADMIN, FAST};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use rand::{Rng, SeedableRng};
use reqwest::blocking::Client;
use serde_json::{json, Map, Value};

/// Requests generated per operation.
const PER_OPERATION: usize = 12;
/// Error codes a well-formed request can earn from the cluster's state (an
/// unknown release, node or key), each listed under its status in the
/// document. Everything else with status 400 means "malformed".
const STATE_DEPENDENT_400: [&str; 9] = [
    "release_not_published",
    "unknown_nodes",
    "nodes_not_alive",
    "update_type_mismatch",
    "nothing_to_update",
    "untrusted_release_key",
    "bad_release_signature",
    "release_hash_mismatch",
    "release_binary_missing",
];
/// Routes whose answer never ends (a server-sent event stream): only the
/// status and content type are checked.
const STREAMS: [&str; 1] = ["/api/v1/events"];

struct Gen {
    rng: rand::rngs::StdRng,
    runner: TestRunner,
    doc: Value,
}

impl Gen {
    fn new(doc: Value, seed: u64) -> Self {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        Gen {
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            runner: TestRunner::new_with_rng(
                Config::default(),
                TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
            ),
            doc,
        }
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => self
                .doc
                .pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling $ref {r}")),
            None => schema,
        }
    }

    fn regex_value(&mut self, pattern: &str) -> String {
        let inner = pattern.trim_start_matches('^').trim_end_matches('$');
        let s = proptest::string::string_regex(inner).expect("pattern compiles");
        s.new_tree(&mut self.runner).expect("value").current()
    }

    /// A value of `[class]*`-shaped `pattern` with exactly `len` characters.
    fn repeat_class(&mut self, pattern: &str, len: usize) -> String {
        let class = pattern
            .trim_start_matches('^')
            .trim_end_matches('$')
            .trim_end_matches('*');
        (0..len).map(|_| self.regex_value(class)).collect()
    }

    fn string(&mut self, s: &Value) -> String {
        if let Some(e) = s["enum"].as_array() {
            return e[self.rng.gen_range(0..e.len())]
                .as_str()
                .unwrap()
                .to_string();
        }
        let min = s["minLength"].as_u64().unwrap_or(0) as usize;
        let max = s["maxLength"].as_u64().unwrap_or(24) as usize;
        let forbidden: Vec<&str> = s["not"]["enum"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let pattern = s["pattern"].as_str().unwrap_or("^[a-z]*$").to_string();
        for _ in 0..100 {
            let v = if pattern.ends_with("]*$") {
                let len = match self.rng.gen_range(0..4) {
                    0 => min,
                    1 => max,
                    _ => self.rng.gen_range(min..=max.min(min + 16)),
                };
                self.repeat_class(&pattern, len)
            } else {
                self.regex_value(&pattern)
            };
            let n = v.chars().count();
            if n >= min && n <= max && !forbidden.contains(&v.as_str()) {
                return v;
            }
        }
        panic!("no value found for {s}");
    }

    fn integer(&mut self, s: &Value) -> u64 {
        let min = s["minimum"].as_u64().unwrap_or(0);
        let max = s["maximum"].as_u64().unwrap_or(1000);
        match self.rng.gen_range(0..4) {
            0 => min,
            1 => max,
            _ => self.rng.gen_range(min..=max),
        }
    }

    /// A JSON value valid under `schema`.
    fn value(&mut self, schema: &Value) -> Value {
        let s = self.resolve(schema).clone();
        if let Some(all) = s.get("allOf").or(s.get("oneOf")).and_then(Value::as_array) {
            let pick = all[self.rng.gen_range(0..all.len())].clone();
            return self.value(&pick);
        }
        let types: Vec<String> = match &s["type"] {
            Value::String(t) => vec![t.clone()],
            Value::Array(v) => v
                .iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect(),
            _ => vec!["object".into()],
        };
        let t = types[self.rng.gen_range(0..types.len())].clone();
        match t.as_str() {
            "null" => Value::Null,
            "boolean" => json!(self.rng.gen_bool(0.5)),
            "integer" => json!(self.integer(&s)),
            "string" => json!(self.string(&s)),
            "array" => {
                let n = self.rng.gen_range(0..3);
                Value::Array((0..n).map(|_| self.value(&s["items"])).collect())
            }
            _ => {
                let required: BTreeSet<String> = s["required"]
                    .as_array()
                    .map(|v| {
                        v.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                let mut out = Map::new();
                for (k, sub) in s["properties"].as_object().cloned().unwrap_or_default() {
                    if required.contains(&k) || self.rng.gen_bool(0.5) {
                        out.insert(k, self.value(&sub));
                    }
                }
                Value::Object(out)
            }
        }
    }

    /// A value that breaks `schema` (a string or integer parameter), if one exists.
    fn invalid(&mut self, s: &Value, in_path: bool) -> Option<String> {
        if s["enum"].is_array() {
            return Some("no-such-value".into());
        }
        if s["type"] == "integer" {
            return Some(match s["maximum"].as_u64() {
                Some(m) if self.rng.gen_bool(0.5) => (m + 1).to_string(),
                _ => match s["minimum"].as_u64() {
                    Some(m) if m > 0 => (m - 1).to_string(),
                    _ => "not-a-number".into(),
                },
            });
        }
        let max = s["maxLength"].as_u64()? as usize;
        let pattern = s["pattern"].as_str()?.to_string();
        if self.rng.gen_bool(0.5) && pattern.ends_with("]*$") {
            return Some(self.repeat_class(&pattern, max + 1));
        }
        // A character the pattern refuses, inside an otherwise fine value.
        for c in ['\u{7}', ' ', '%', 'é', '\u{85}', '/', 'Z'] {
            let v = format!("a{c}0");
            if in_path && c == '/' {
                continue;
            }
            if !regex::Regex::new(&pattern).unwrap().is_match(&v) {
                return Some(v);
            }
        }
        None
    }
}

/// Percent-encodes a path segment (everything but unreserved characters).
fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

struct Request {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    body: Option<Value>,
    raw_body: Option<Vec<u8>>,
}

fn parameters(op: &Value) -> Vec<Value> {
    op["parameters"].as_array().cloned().unwrap_or_default()
}

fn build(g: &mut Gen, template: &str, method: &str, op: &Value) -> Request {
    let mut path = template.to_string();
    let mut query = Vec::new();
    for p in parameters(op) {
        let name = p["name"].as_str().unwrap();
        let value = match g.value(&p["schema"]) {
            Value::String(s) => s,
            v => v.to_string(),
        };
        if p["in"] == "path" {
            path = path.replace(&format!("{{{name}}}"), &encode_segment(&value));
        } else if p["required"] == true || g.rng.gen_bool(0.7) {
            query.push((name.to_string(), value));
        }
    }
    let mut body = None;
    let mut raw_body = None;
    if let Some(s) = op.pointer("/requestBody/content/application~1json/schema") {
        body = Some(g.value(&s.clone()));
    } else if op.pointer("/requestBody/content").is_some() {
        let n = g.rng.gen_range(0..64);
        raw_body = Some((0..n).map(|_| g.rng.gen()).collect());
    }
    Request {
        method: method.to_uppercase(),
        path,
        query,
        body,
        raw_body,
    }
}

struct Answer {
    status: u16,
    content_type: String,
    body: Option<Value>,
}

fn send(client: &Client, api: &str, r: &Request, stream: bool) -> Answer {
    let mut req = client
        .request(r.method.parse().unwrap(), format!("{api}{}", r.path))
        .bearer_auth(ADMIN)
        .query(&r.query)
        .timeout(Duration::from_secs(30));
    if let Some(b) = &r.body {
        req = req.json(b);
    }
    if let Some(b) = &r.raw_body {
        req = req
            .header("content-type", "application/octet-stream")
            .body(b.clone());
    }
    let res = req
        .send()
        .unwrap_or_else(|e| panic!("{} {}: {e}", r.method, r.path));
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if stream && status == 200 {
        return Answer {
            status,
            content_type,
            body: None,
        };
    }
    let bytes = res.bytes().unwrap_or_default();
    let body = content_type
        .starts_with("application/json")
        .then(|| serde_json::from_slice(&bytes).unwrap_or(Value::Null));
    Answer {
        status,
        content_type,
        body,
    }
}

/// Checks `a` against what the document lists for `op`; a description of
/// every mismatch.
fn conformance(doc: &Value, op: &Value, a: &Answer) -> Vec<String> {
    let mut out = Vec::new();
    let Some(resp) = op["responses"].get(a.status.to_string()) else {
        let listed: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
        return vec![format!(
            "status {} is not listed (listed: {listed:?}); body {:?}",
            a.status, a.body
        )];
    };
    let resp = match resp.get("$ref").and_then(Value::as_str) {
        Some(r) => doc.pointer(r.trim_start_matches('#')).unwrap(),
        None => resp,
    };
    let Some(content) = resp["content"].as_object() else {
        return out;
    };
    let media = a.content_type.split(';').next().unwrap_or_default().trim();
    let Some(listed) = content.get(media) else {
        out.push(format!(
            "status {}: content type {media:?} not listed ({:?})",
            a.status,
            content.keys().collect::<Vec<_>>()
        ));
        return out;
    };
    if let (Some(schema), Some(body)) = (listed.get("schema"), &a.body) {
        let mut root = json!({ "components": doc["components"].clone() });
        for (k, v) in schema.as_object().unwrap() {
            root[k] = v.clone();
        }
        let v = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&root)
            .unwrap_or_else(|e| panic!("schema {schema} does not compile: {e}"));
        for e in v.iter_errors(body) {
            out.push(format!(
                "status {}: body breaks its schema at {}: {e}",
                a.status,
                e.instance_path()
            ));
        }
    }
    out
}

#[test]
fn requests_valid_by_the_document_are_served_as_it_says_and_invalid_ones_refused() {
    let root = tempfile::tempdir().unwrap();
    let nodes = cluster(root.path(), 1, FAST);
    let node = &nodes[0];
    let client = Client::new();
    let doc: Value = client
        .get(format!("{}/api/v1/openapi.json", node.api))
        .bearer_auth(ADMIN)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let seed: u64 = std::env::var("OPENAPI_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("OPENAPI_SEED={seed}");
    let mut g = Gen::new(doc.clone(), seed);
    let mut failures = Vec::new();
    let mut sent = 0usize;
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let stream = STREAMS.contains(&template.as_str());
            for _ in 0..PER_OPERATION {
                let r = build(&mut g, template, method, op);
                let a = send(&client, &node.api, &r, stream);
                sent += 1;
                let what = format!("{method} {} {:?} {:?}", r.path, r.query, r.body);
                for m in conformance(&doc, op, &a) {
                    failures.push(format!("{what}: {m}"));
                }
                if a.status == 400 {
                    let code = a.body.as_ref().and_then(|b| b["error"]["code"].as_str());
                    if !code.is_some_and(|c| STATE_DEPENDENT_400.contains(&c)) {
                        failures.push(format!(
                            "{what}: a valid request refused as malformed: {:?}",
                            a.body
                        ));
                    }
                }
                if a.status >= 500 && a.status != 503 {
                    failures.push(format!("{what}: status {}: {:?}", a.status, a.body));
                }
            }
            // One parameter at a time made invalid.
            for (i, p) in parameters(op).iter().enumerate() {
                let in_path = p["in"] == "path";
                let Some(bad) = g.invalid(&p["schema"], in_path) else {
                    continue;
                };
                let mut r = build(&mut g, template, method, op);
                let name = p["name"].as_str().unwrap();
                if in_path {
                    // Rebuild the path with this parameter replaced.
                    let mut path = template.clone();
                    for (j, q) in parameters(op).iter().enumerate() {
                        if q["in"] != "path" {
                            continue;
                        }
                        let qn = q["name"].as_str().unwrap();
                        let v = if i == j {
                            bad.clone()
                        } else {
                            match g.value(&q["schema"]) {
                                Value::String(s) => s,
                                v => v.to_string(),
                            }
                        };
                        path = path.replace(&format!("{{{qn}}}"), &encode_segment(&v));
                    }
                    r.path = path;
                } else {
                    r.query.retain(|(k, _)| k != name);
                    r.query.push((name.to_string(), bad.clone()));
                }
                let a = send(&client, &node.api, &r, stream);
                sent += 1;
                let what = format!("{method} {} {:?} (bad {name} = {bad:?})", r.path, r.query);
                if a.status != 400 {
                    failures.push(format!(
                        "{what}: an invalid request got {} {:?}",
                        a.status, a.body
                    ));
                }
                for m in conformance(&doc, op, &a) {
                    failures.push(format!("{what}: {m}"));
                }
            }
        }
    }
    eprintln!("{sent} generated requests");
    assert!(sent > 200, "too few requests generated: {sent}");
    assert!(
        failures.is_empty(),
        "OPENAPI_SEED={seed}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
