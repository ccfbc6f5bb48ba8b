//! The workloads and their HTTP glue. A client task draws its operations
//! and target nodes from its own seeded generator: set `add`s of unique
//! values and `read_all`s at each consistency level (objects
//! `set-LEVEL-VALUE`), and strong `write`/`read`s of a few hot register keys
//! (objects `reg-KEY`). Each operation is an invoke event, then ok / fail
//! (definitely not applied: a 4xx, or the request never reached a node) /
//! info (unknown: timeout, reset, a 5xx after a partial write).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::{Cluster, ADMIN_TOKEN, READ_TOKEN};
use crate::history::{Consistency, EventType, Op, OpFn, Recorder, Value};

/// Timeout of one client request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Page size of a set listing, and most pages one `read_all` reads.
pub const LIST_PAGE: usize = 500;
pub const MAX_PAGES: usize = 200;
/// Pause between two operations of one client (keeps the load moderate on
/// a shared machine; it is pacing, not waiting for a condition).
pub const THINK_TIME: Duration = Duration::from_millis(20);
/// The hot register keys.
pub const REGISTER_KEYS: usize = 3;
/// Values of client `c` are `c * VALUE_STRIDE + n`: unique across clients.
pub const VALUE_STRIDE: u64 = 1_000_000_000;

pub fn set_prefix(level: Consistency) -> String {
    format!("set-{}-", level.as_str())
}

pub fn register_id(key: &str) -> String {
    format!("reg-{key}")
}

pub fn register_key(k: usize) -> String {
    format!("k{k}")
}

/// How a request ended.
enum Outcome {
    Ok(Option<Value>),
    Fail(String),
    Info(String),
}

fn from_error(e: &reqwest::Error) -> Outcome {
    if e.is_connect() {
        Outcome::Fail(format!("connect: {e}"))
    } else if e.is_timeout() {
        Outcome::Info(format!("timeout after {REQUEST_TIMEOUT:?}"))
    } else {
        Outcome::Info(format!("transport: {e}"))
    }
}

async fn error_code(res: reqwest::Response) -> String {
    let status = res.status().as_u16();
    let body: serde_json::Value = res.json().await.unwrap_or_default();
    let code = body["error"]["code"].as_str().unwrap_or("");
    format!("{status} {code}")
}

/// One client: its process number, generator and value counter.
pub struct Client {
    pub process: u64,
    rng: StdRng,
    next_value: u64,
    cluster: Arc<Cluster>,
    rec: Recorder,
}

impl Client {
    pub fn new(seed: u64, process: u64, cluster: Arc<Cluster>, rec: Recorder) -> Client {
        Client {
            process,
            rng: StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ process),
            next_value: process * VALUE_STRIDE + 1,
            cluster,
            rec,
        }
    }

    /// Runs random operations until `until`.
    pub async fn run(mut self, until: Instant) {
        while Instant::now() < until {
            let node = self.rng.gen_range(0..self.cluster.len());
            let roll = self.rng.gen_range(0..100);
            if roll < 45 {
                let level = Consistency::ALL[self.rng.gen_range(0..3)];
                let v = self.next_value;
                self.next_value += 1;
                self.add(node, level, v).await;
            } else if roll < 55 {
                let level = Consistency::ALL[self.rng.gen_range(0..3)];
                self.read_all(node, level).await;
            } else {
                let key = register_key(self.rng.gen_range(0..REGISTER_KEYS));
                if self.rng.gen_bool(0.5) {
                    let v = self.next_value;
                    self.next_value += 1;
                    self.write(node, &key, v).await;
                } else {
                    self.read(node, &key).await;
                }
            }
            tokio::time::sleep(THINK_TIME).await;
        }
    }

    fn invoke(&self, f: OpFn, node: usize, level: Consistency) -> Op {
        let mut op = Op::new(self.process, EventType::Invoke, f);
        op.node = Some(self.cluster.name(node));
        op.consistency = Some(level);
        op
    }

    fn complete(&self, mut op: Op, outcome: Outcome) {
        match outcome {
            Outcome::Ok(v) => {
                op.kind = EventType::Ok;
                if v.is_some() || op.f == OpFn::Read {
                    op.value = v;
                }
            }
            Outcome::Fail(e) => {
                op.kind = EventType::Fail;
                op.error = Some(e);
            }
            Outcome::Info(e) => {
                op.kind = EventType::Info;
                op.error = Some(e);
            }
        }
        self.rec.record(op);
    }

    async fn put(&self, node: usize, id: &str, body: String, level: Consistency) -> Outcome {
        let Some(api) = self.cluster.api(node) else {
            return Outcome::Fail("node down".into());
        };
        let url = format!(
            "{api}/api/v1/clustering/storage/data/{id}?consistency={}",
            level.as_str()
        );
        let res = self
            .cluster
            .http
            .put(url)
            .bearer_auth(ADMIN_TOKEN)
            .body(body)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await;
        match res {
            Err(e) => from_error(&e),
            Ok(r) if r.status().is_success() => Outcome::Ok(None),
            Ok(r) if r.status().is_client_error() => Outcome::Fail(error_code(r).await),
            // A 5xx may follow a partial write (e.g. strong: some replicas
            // flushed, not all): the outcome is unknown.
            Ok(r) => Outcome::Info(error_code(r).await),
        }
    }

    /// Adds `v` to the set of `level`.
    pub async fn add(&self, node: usize, level: Consistency, v: u64) {
        let mut op = self.invoke(OpFn::Add, node, level);
        op.value = Some(Value::Int(v));
        self.rec.record(op.clone());
        let id = format!("{}{v}", set_prefix(level));
        let outcome = self.put(node, &id, v.to_string(), level).await;
        self.complete(op, outcome);
    }

    /// Writes `v` to register `key` (strong).
    pub async fn write(&self, node: usize, key: &str, v: u64) {
        let mut op = self.invoke(OpFn::Write, node, Consistency::Strong);
        op.key = Some(key.into());
        op.value = Some(Value::Int(v));
        self.rec.record(op.clone());
        let outcome = self
            .put(node, &register_id(key), v.to_string(), Consistency::Strong)
            .await;
        self.complete(op, outcome);
    }

    /// Reads register `key` (strong).
    pub async fn read(&self, node: usize, key: &str) {
        let mut op = self.invoke(OpFn::Read, node, Consistency::Strong);
        op.key = Some(key.into());
        self.rec.record(op.clone());
        let outcome = self.get_register(node, key).await;
        self.complete(op, outcome);
    }

    async fn get_register(&self, node: usize, key: &str) -> Outcome {
        let Some(api) = self.cluster.api(node) else {
            return Outcome::Fail("node down".into());
        };
        let url = format!(
            "{api}/api/v1/clustering/storage/data/{}?consistency=strong",
            register_id(key)
        );
        let r = match self.read_get(url).await {
            Err(outcome) => return outcome,
            Ok(r) => r,
        };
        if r.status().as_u16() == 404 {
            return Outcome::Ok(None);
        }
        if !r.status().is_success() {
            return Outcome::Fail(error_code(r).await);
        }
        match r.text().await.map(|t| t.trim().parse::<u64>()) {
            Ok(Ok(v)) => Outcome::Ok(Some(Value::Int(v))),
            Ok(Err(e)) => Outcome::Info(format!("unparsable register value: {e}")),
            Err(e) => Outcome::Info(format!("body: {e}")),
        }
    }

    /// `GET url` with the read token; a transport error as its outcome.
    async fn read_get(&self, url: String) -> Result<reqwest::Response, Outcome> {
        self.cluster
            .http
            .get(url)
            .bearer_auth(READ_TOKEN)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| from_error(&e))
    }

    /// Reads the whole set of `level` through `node` (the listing; a page
    /// that says it is incomplete makes the read `fail`: it saw a part).
    pub async fn read_all(&self, node: usize, level: Consistency) -> bool {
        let op = self.invoke(OpFn::ReadAll, node, level);
        self.rec.record(op.clone());
        let outcome = self.list(node, level).await;
        let ok = matches!(outcome, Outcome::Ok(_));
        self.complete(op, outcome);
        ok
    }

    async fn list(&self, node: usize, level: Consistency) -> Outcome {
        let Some(api) = self.cluster.api(node) else {
            return Outcome::Fail("node down".into());
        };
        let prefix = set_prefix(level);
        let mut values = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut url =
                format!("{api}/api/v1/clustering/storage/data?prefix={prefix}&limit={LIST_PAGE}");
            if let Some(a) = &after {
                url.push_str(&format!("&after={a}"));
            }
            let r = match self.read_get(url).await {
                Err(outcome) => return outcome,
                Ok(r) => r,
            };
            if !r.status().is_success() {
                return Outcome::Fail(error_code(r).await);
            }
            let page: serde_json::Value = match r.json().await {
                Ok(p) => p,
                Err(e) => return Outcome::Fail(format!("listing body: {e}")),
            };
            if page["complete"] != true {
                return Outcome::Fail(format!("incomplete listing: {}", page["unreachable_nodes"]));
            }
            for o in page["objects"].as_array().into_iter().flatten() {
                let id = o["data_id"].as_str().unwrap_or("");
                if let Some(v) = id.strip_prefix(&prefix).and_then(|s| s.parse().ok()) {
                    values.push(v);
                }
            }
            match page["next_after"].as_str() {
                Some(next) => after = Some(next.to_string()),
                None => return Outcome::Ok(Some(Value::List(values))),
            }
        }
        Outcome::Fail(format!("more than {MAX_PAGES} pages"))
    }
}
