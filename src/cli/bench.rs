//! `plexi bench`: a bounded load generator against one or more node APIs
//! (round-robin), or, with `--engine-baseline`, against a bare sled database
//! in a temporary directory (each put is an insert and a flush, as a
//! durable replica write is), so that storage figures can be set beside the
//! raw engine on the same machine. Both print the same table (or JSON).
//!
//! Keys are `PREFIX-NNNNNNNN` over a key space of `--keys`: puts overwrite
//! keys of that space (worker `w` writes `w, w+c, w+2c, ...` modulo the
//! space), gets pick keys uniformly. Modes `get` and `mixed` first fill the
//! key space with puts (not timed). Every put body is the same random
//! payload with a fresh counter in its first 8 bytes, so no write is a
//! no-op overwrite (the copy is part of the measured put). Unless `--keep`,
//! the keys written are deleted afterwards (not timed).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axum::body::Bytes;
use clap::{Args, ValueEnum};
use rand::{Rng, RngCore, SeedableRng};
use serde::Serialize;

use super::client::{data_path, describe_reqwest, parse_consistency, Consistency, Pool};
use super::table::{human_bytes, Left, Right, Table};

/// Timeout of one request; the run is bounded even if a node hangs.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Distinct error messages kept per run (the rest are counted as "other").
const MAX_ERROR_KINDS: usize = 16;
const MIB: f64 = 1024.0 * 1024.0;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Base URL of a node's API; repeatable or comma-separated (requests go
    /// round-robin over them).
    #[arg(
        long = "api",
        env = "PLEXI_API",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080"
    )]
    pub apis: Vec<String>,
    /// Bearer token (admin: the bench writes).
    #[arg(long, env = "PLEXI_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// put | get | mixed (50/50 after filling the key space).
    #[arg(long, value_enum, default_value_t = Mode::Put)]
    pub mode: Mode,
    /// Object size: bytes, or with a suffix (4KiB, 1MiB, 10KB, 1M).
    #[arg(long, default_value = "4KiB", value_parser = parse_size)]
    pub size: u64,
    /// Concurrent workers, each with one request in flight.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Length of the timed phase, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// strong | eventual | weak (default: the cluster's).
    #[arg(long, value_parser = parse_consistency)]
    pub consistency: Option<Consistency>,
    /// Total copies per object (default: the cluster's).
    #[arg(long)]
    pub replication_factor: Option<u32>,
    /// Size of the key space.
    #[arg(long, default_value_t = 256)]
    pub keys: u64,
    /// Key prefix (default: bench-<random>, so runs do not collide).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Leave the keys in place afterwards (default: delete them).
    #[arg(long)]
    pub keep: bool,
    /// Check the blake3 of every get against its ETag (costs client CPU).
    #[arg(long)]
    pub verify: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait after the run (and its deletes) before the last
    /// memory sample, so the nodes' allocator trim has run.
    #[arg(long, default_value_t = 6.0)]
    pub settle: f64,
    /// Measure bare sled on this machine instead of a cluster: insert +
    /// flush per put (get: sled get) in a temporary directory.
    #[arg(long)]
    pub engine_baseline: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Put,
    Get,
    Mixed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Put,
    Get,
    Delete,
}

/// Parses `4096`, `4KiB`, `1MiB`, `1.5M`, `10KB` (KB/MB/GB are decimal;
/// K/M/G and KiB/MiB/GiB binary).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 4096, 4KiB, 1MiB)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "ki" | "kib" => 1024.0,
        "kb" => 1e3,
        "m" | "mi" | "mib" => MIB,
        "mb" => 1e6,
        "g" | "gi" | "gib" => MIB * 1024.0,
        "gb" => 1e9,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    let v = n * mult;
    if !v.is_finite() || v < 0.0 || v > u32::MAX as f64 || v.fract() != 0.0 {
        return Err(format!("{s:?} is not a whole number of bytes up to 4 GiB"));
    }
    Ok(v as u64)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn key(prefix: &str, idx: u64) -> String {
    format!("{prefix}-{idx:08}")
}

/// What the load goes to.
enum Target {
    Http(Http),
    Engine(Engine),
}

struct Http {
    pool: Pool,
    consistency: Option<Consistency>,
    replication_factor: Option<u32>,
    verify: bool,
}

struct Engine {
    db: sled::Db,
    // Removed when the run ends.
    _dir: tempfile::TempDir,
}

/// Counter stamped into every put body (starts at a random value per run).
static PUT_STAMP: AtomicU64 = AtomicU64::new(0);

/// A copy of `payload` whose first bytes hold a fresh counter value: every
/// put writes bytes different from what the key held (sled skips an insert
/// of the value already stored, so identical bodies would measure nothing).
fn stamped(payload: &Bytes) -> Bytes {
    let stamp = PUT_STAMP.fetch_add(1, Ordering::Relaxed).to_le_bytes();
    let mut v = payload.to_vec();
    let n = v.len().min(stamp.len());
    v[..n].copy_from_slice(&stamp[..n]);
    Bytes::from(v)
}

impl Target {
    /// One operation; `turn` picks the API (round-robin). A put sends a
    /// stamped copy of `payload`.
    async fn run(&self, op: Op, key: &str, payload: &Bytes, turn: usize) -> Result<(), String> {
        let stamped_body;
        let body = if op == Op::Put {
            stamped_body = stamped(payload);
            &stamped_body
        } else {
            payload
        };
        match self {
            Target::Http(h) => h.run(op, key, body, turn).await,
            Target::Engine(e) => e.run(op, key, body).await,
        }
    }
}

impl Http {
    async fn run(&self, op: Op, key: &str, payload: &Bytes, turn: usize) -> Result<(), String> {
        let mut query: Vec<(&str, String)> = Vec::with_capacity(2);
        if let Some(c) = self.consistency {
            query.push(("consistency", c.as_str().to_string()));
        }
        let (method, body) = match op {
            Op::Put => {
                if let Some(rf) = self.replication_factor {
                    query.push(("replication_factor", rf.to_string()));
                }
                (reqwest::Method::PUT, Some(payload.clone()))
            }
            Op::Get => (reqwest::Method::GET, None),
            Op::Delete => (reqwest::Method::DELETE, None),
        };
        let res = self
            .pool
            .send(turn, method, &data_path(key), &query, body)
            .await?;
        let etag = res
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim_matches('"').to_string());
        // Read the whole body so the connection is reused.
        let body = res.bytes().await.map_err(|e| describe_reqwest(&e))?;
        if op == Op::Get {
            if body.len() != payload.len() {
                return Err(format!(
                    "get returned {} bytes, expected {}",
                    body.len(),
                    payload.len()
                ));
            }
            if self.verify {
                let got = blake3::hash(&body).to_hex().to_string();
                if etag.as_deref() != Some(got.as_str()) {
                    return Err("checksum mismatch between ETag and bytes".into());
                }
            }
        }
        Ok(())
    }
}

impl Engine {
    /// `Db::flush` on the blocking pool. Not `flush_async`: in sled 0.34
    /// concurrent `flush_async` calls on one tree deadlock (sled issue
    /// #1308, fixed on its main branch but never released); the node's
    /// store flushes the same way.
    async fn flush(&self) -> Result<(), String> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| format!("flush task: {e}"))?
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn run(&self, op: Op, key: &str, payload: &Bytes) -> Result<(), String> {
        match op {
            Op::Put => {
                self.db
                    .insert(key.as_bytes(), payload.as_ref())
                    .map_err(|e| e.to_string())?;
                self.flush().await?;
            }
            Op::Get => {
                let v = self.db.get(key.as_bytes()).map_err(|e| e.to_string())?;
                match v {
                    Some(v) if v.len() == payload.len() => {}
                    Some(v) => {
                        return Err(format!(
                            "read {} bytes, expected {}",
                            v.len(),
                            payload.len()
                        ))
                    }
                    None => return Err("key absent".into()),
                }
            }
            Op::Delete => {
                self.db.remove(key.as_bytes()).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct OpStats {
    ops: u64,
    errors: u64,
    lat_us: Vec<u64>,
}

#[derive(Default)]
struct WorkerStats {
    put: OpStats,
    get: OpStats,
    errors: BTreeMap<String, u64>,
}

impl WorkerStats {
    fn record(&mut self, op: Op, res: Result<(), String>, lat: Duration) {
        let s = match op {
            Op::Get => &mut self.get,
            _ => &mut self.put,
        };
        match res {
            Ok(()) => {
                s.ops += 1;
                s.lat_us.push(lat.as_micros() as u64);
            }
            Err(e) => {
                s.errors += 1;
                note_error(&mut self.errors, e);
            }
        }
    }

    fn merge(&mut self, o: WorkerStats) {
        for (mine, theirs) in [(&mut self.put, o.put), (&mut self.get, o.get)] {
            mine.ops += theirs.ops;
            mine.errors += theirs.errors;
            mine.lat_us.extend(theirs.lat_us);
        }
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        // Keep the bound after merging too.
        while self.errors.len() > MAX_ERROR_KINDS {
            let k = self.errors.keys().next().cloned().expect("non-empty");
            let v = self.errors.remove(&k).unwrap_or(0);
            *self.errors.entry("(other errors)".into()).or_default() += v;
        }
    }
}

fn note_error(errors: &mut BTreeMap<String, u64>, e: String) {
    let mut e = e;
    if e.len() > 200 {
        let mut cut = 200;
        while !e.is_char_boundary(cut) {
            cut -= 1;
        }
        e.truncate(cut);
        e.push('…');
    }
    if errors.len() >= MAX_ERROR_KINDS && !errors.contains_key(&e) {
        e = "(other errors)".into();
    }
    *errors.entry(e).or_default() += 1;
}

/// One row of the result.
#[derive(Serialize, Debug)]
pub struct Row {
    pub op: String,
    pub ops: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub mib_per_sec: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Serialize, Debug)]
pub struct Report {
    /// `cluster` or `engine` (bare sled).
    pub target: &'static str,
    /// `debug` or `release`: how this client was built.
    pub build: &'static str,
    pub mode: Mode,
    pub size_bytes: u64,
    pub concurrency: usize,
    pub duration_s: f64,
    pub elapsed_s: f64,
    pub consistency: Option<&'static str>,
    pub replication_factor: Option<u32>,
    pub keys: u64,
    pub apis: Vec<String>,
    pub results: Vec<Row>,
    /// Error messages and how often each was seen.
    pub errors: BTreeMap<String, u64>,
    /// Each node's resident memory (worker + supervisor), from its
    /// `plexi_process_resident_bytes`; empty for the engine.
    pub memory: Vec<NodeMemory>,
}

/// One node's resident memory over the run, MiB (worker and supervisor
/// together): before the timed phase, the largest sample during it (every
/// [`MEMORY_SAMPLE_EVERY`]), and after the deletes and `--settle`.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct NodeMemory {
    pub api: String,
    pub before_mib: f64,
    pub peak_mib: f64,
    pub after_mib: f64,
}

/// How often the nodes' memory is sampled during the timed phase.
const MEMORY_SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// The sum of `plexi_process_resident_bytes` in a `/metrics` text, MiB.
fn resident_mib(metrics: &str) -> Option<f64> {
    let mut found = false;
    let mut total = 0.0;
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("plexi_process_resident_bytes{") {
            let value = rest.rsplit(' ').next()?.parse::<f64>().ok()?;
            total += value;
            found = true;
        }
    }
    found.then_some(total / MIB)
}

/// One memory sample of every node (`None` where a node did not answer).
async fn sample_memory(pool: &Pool) -> Vec<Option<f64>> {
    let mut out = Vec::new();
    for turn in 0..pool.bases().len() {
        let text = match pool
            .send(turn, reqwest::Method::GET, "/metrics", &[], None)
            .await
        {
            Ok(res) => res.text().await.ok(),
            Err(_) => None,
        };
        out.push(text.as_deref().and_then(resident_mib));
    }
    out
}

/// Samples every node until `stop` is set; the largest sample per node.
async fn sample_peaks(pool: Arc<Target>, stop: Arc<AtomicBool>) -> Vec<f64> {
    let Target::Http(h) = &*pool else {
        return Vec::new();
    };
    let mut peaks = vec![0.0f64; h.pool.bases().len()];
    while !stop.load(Ordering::Relaxed) {
        for (p, s) in peaks.iter_mut().zip(sample_memory(&h.pool).await) {
            *p = p.max(s.unwrap_or(0.0));
        }
        tokio::time::sleep(MEMORY_SAMPLE_EVERY).await;
    }
    peaks
}

fn row(op: &str, mut s: OpStats, size: u64, elapsed: f64) -> Row {
    s.lat_us.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    let mean = if s.lat_us.is_empty() {
        0.0
    } else {
        s.lat_us.iter().sum::<u64>() as f64 / s.lat_us.len() as f64 / 1000.0
    };
    Row {
        op: op.into(),
        ops: s.ops,
        errors: s.errors,
        ops_per_sec: s.ops as f64 / elapsed,
        mib_per_sec: s.ops as f64 * size as f64 / MIB / elapsed,
        mean_ms: mean,
        p50_ms: ms(percentile(&s.lat_us, 50.0)),
        p95_ms: ms(percentile(&s.lat_us, 95.0)),
        p99_ms: ms(percentile(&s.lat_us, 99.0)),
        max_ms: ms(s.lat_us.last().copied().unwrap_or(0)),
    }
}

/// Runs `op` over the keys of `indices` with `concurrency` tasks; returns
/// how many failed and the first error. Not timed.
async fn over_keys(
    target: &Arc<Target>,
    op: Op,
    prefix: &str,
    indices: Vec<u64>,
    payload: &Bytes,
    concurrency: usize,
) -> (u64, Option<String>) {
    let indices = Arc::new(indices);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (target, indices, next, payload) = (
            target.clone(),
            indices.clone(),
            next.clone(),
            payload.clone(),
        );
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut failed = 0u64;
            let mut first = None;
            let mut turn = w;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(idx) = indices.get(i) else { break };
                if let Err(e) = target.run(op, &key(&prefix, *idx), &payload, turn).await {
                    failed += 1;
                    first.get_or_insert(e);
                }
                turn += 1;
            }
            (failed, first)
        }));
    }
    let mut failed = 0;
    let mut first = None;
    for t in tasks {
        match t.await {
            Ok((f, e)) => {
                failed += f;
                if first.is_none() {
                    first = e;
                }
            }
            Err(e) => {
                failed += 1;
                first.get_or_insert(format!("worker panicked: {e}"));
            }
        }
    }
    (failed, first)
}

fn validate(a: &BenchArgs) -> Result<()> {
    if a.concurrency == 0 || a.concurrency > 4096 {
        bail!("--concurrency must be 1-4096");
    }
    if !(a.duration.is_finite() && a.duration > 0.0 && a.duration <= 86_400.0) {
        bail!("--duration must be a number of seconds in (0, 86400]");
    }
    if a.keys == 0 {
        bail!("--keys must be at least 1");
    }
    if let Some(0) = a.replication_factor {
        bail!("--replication-factor must be at least 1");
    }
    Ok(())
}

/// The target and the normalised API URLs (none for the engine). The APIs
/// must answer `/health` first.
async fn open_target(a: &BenchArgs) -> Result<(Target, Vec<String>)> {
    if a.engine_baseline {
        let dir = tempfile::Builder::new()
            .prefix("plexi-engine-baseline.")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let db = sled::open(dir.path()).context("cannot open sled")?;
        return Ok((Target::Engine(Engine { db, _dir: dir }), Vec::new()));
    }
    let pool = Pool::new(&a.apis, a.token.clone(), REQUEST_TIMEOUT, a.concurrency)?;
    pool.probe().await?;
    let bases = pool.bases().to_vec();
    let http = Http {
        pool,
        consistency: a.consistency,
        replication_factor: a.replication_factor,
        verify: a.verify,
    };
    Ok((Target::Http(http), bases))
}

/// The keys, the payload and which keys were written: what every phase
/// shares.
struct Load {
    target: Arc<Target>,
    prefix: String,
    payload: Bytes,
    written: Vec<AtomicBool>,
}

/// Fills the key space with puts (not timed); on failure deletes what was
/// written and fails.
async fn fill(a: &BenchArgs, l: &Load) -> Result<()> {
    eprintln!(
        "filling the key space: {} keys of {} ...",
        a.keys,
        human_bytes(a.size)
    );
    let (failed, first) = over_keys(
        &l.target,
        Op::Put,
        &l.prefix,
        (0..a.keys).collect(),
        &l.payload,
        a.concurrency,
    )
    .await;
    for w in l.written.iter() {
        w.store(true, Ordering::Relaxed);
    }
    if let Target::Engine(e) = &*l.target {
        e.flush()
            .await
            .map_err(|e| anyhow::anyhow!("sled flush: {e}"))?;
    }
    if failed > 0 {
        cleanup(a, &l.target, &l.prefix, &l.written, &l.payload).await;
        bail!(
            "{failed} of {} puts filling the key space failed, first: {}",
            a.keys,
            first.unwrap_or_default()
        );
    }
    Ok(())
}

/// One worker of the timed phase: operations back to back until `deadline`.
async fn worker(
    l: Arc<Load>,
    w: usize,
    (mode, keys, concurrency): (Mode, u64, u64),
    deadline: Instant,
) -> WorkerStats {
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut stats = WorkerStats::default();
    let mut seq: u64 = 0;
    let mut turn = w;
    while Instant::now() < deadline {
        let op = match mode {
            Mode::Put => Op::Put,
            Mode::Get => Op::Get,
            Mode::Mixed if rng.gen_bool(0.5) => Op::Put,
            Mode::Mixed => Op::Get,
        };
        let idx = match op {
            Op::Put => {
                let i = (w as u64 + seq * concurrency) % keys;
                seq += 1;
                l.written[i as usize].store(true, Ordering::Relaxed);
                i
            }
            _ => rng.gen_range(0..keys),
        };
        let t0 = Instant::now();
        let res = l
            .target
            .run(op, &key(&l.prefix, idx), &l.payload, turn)
            .await;
        stats.record(op, res, t0.elapsed());
        turn += 1;
    }
    stats
}

/// The timed phase: every worker's stats merged, and the seconds it took.
async fn timed(a: &BenchArgs, l: &Arc<Load>) -> Result<(WorkerStats, f64)> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(a.duration);
    let shape = (a.mode, a.keys, a.concurrency as u64);
    let tasks: Vec<_> = (0..a.concurrency)
        .map(|w| tokio::spawn(worker(l.clone(), w, shape, deadline)))
        .collect();
    let mut total = WorkerStats::default();
    for t in tasks {
        total.merge(t.await.context("a worker panicked")?);
    }
    Ok((total, started.elapsed().as_secs_f64()))
}

/// The rows (put, get, and for mixed both together) and the settings.
fn report(
    a: &BenchArgs,
    apis: Vec<String>,
    total: WorkerStats,
    elapsed: f64,
    memory: Vec<NodeMemory>,
) -> Report {
    let mut results = Vec::new();
    let WorkerStats { put, get, errors } = total;
    let both = a.mode == Mode::Mixed;
    let all = both.then(|| OpStats {
        ops: put.ops + get.ops,
        errors: put.errors + get.errors,
        lat_us: put
            .lat_us
            .iter()
            .chain(get.lat_us.iter())
            .copied()
            .collect(),
    });
    let op_name = |op: &str| {
        if a.engine_baseline && op == "put" {
            "put+flush".to_string()
        } else {
            op.to_string()
        }
    };
    if a.mode != Mode::Get {
        results.push(row(&op_name("put"), put, a.size, elapsed));
    }
    if a.mode != Mode::Put {
        results.push(row(&op_name("get"), get, a.size, elapsed));
    }
    if let Some(all) = all {
        results.push(row("all", all, a.size, elapsed));
    }
    Report {
        target: if a.engine_baseline {
            "engine"
        } else {
            "cluster"
        },
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        mode: a.mode,
        size_bytes: a.size,
        concurrency: a.concurrency,
        duration_s: a.duration,
        elapsed_s: elapsed,
        consistency: if a.engine_baseline {
            None
        } else {
            a.consistency.map(Consistency::as_str)
        },
        replication_factor: if a.engine_baseline {
            None
        } else {
            a.replication_factor
        },
        keys: a.keys,
        apis,
        results,
        errors,
        memory,
    }
}

pub async fn run(a: BenchArgs) -> Result<()> {
    validate(&a)?;
    let prefix = a
        .prefix
        .clone()
        .unwrap_or_else(|| format!("bench-{:08x}", rand::thread_rng().next_u32()));

    let mut payload = vec![0u8; a.size as usize];
    rand::thread_rng().fill_bytes(&mut payload);
    PUT_STAMP.store(rand::thread_rng().next_u64() >> 1, Ordering::Relaxed);
    let payload = Bytes::from(payload);

    let (target, apis) = open_target(&a).await?;
    let load = Arc::new(Load {
        target: Arc::new(target),
        prefix,
        payload,
        written: (0..a.keys).map(|_| AtomicBool::new(false)).collect(),
    });
    if a.mode != Mode::Put {
        fill(&a, &load).await?;
    }
    let before = match &*load.target {
        Target::Http(h) => sample_memory(&h.pool).await,
        Target::Engine(_) => Vec::new(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let peaks = tokio::spawn(sample_peaks(load.target.clone(), stop.clone()));
    let (total, elapsed) = timed(&a, &load).await?;
    stop.store(true, Ordering::Relaxed);
    let peaks = peaks.await.unwrap_or_default();
    cleanup(&a, &load.target, &load.prefix, &load.written, &load.payload).await;
    let memory = match &*load.target {
        Target::Http(h) => {
            tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;
            let after = sample_memory(&h.pool).await;
            apis.iter()
                .enumerate()
                .map(|(i, api)| NodeMemory {
                    api: api.clone(),
                    before_mib: before.get(i).copied().flatten().unwrap_or(0.0),
                    peak_mib: peaks.get(i).copied().unwrap_or(0.0),
                    after_mib: after.get(i).copied().flatten().unwrap_or(0.0),
                })
                .collect()
        }
        Target::Engine(_) => Vec::new(),
    };

    let report = report(&a, apis, total, elapsed, memory);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    let ops: u64 = report.results.iter().take(2).map(|r| r.ops).sum();
    if ops == 0 {
        bail!("no operation succeeded");
    }
    Ok(())
}

/// Deletes the keys written, unless `--keep`; reports failures on stderr.
async fn cleanup(
    a: &BenchArgs,
    target: &Arc<Target>,
    prefix: &str,
    written: &[AtomicBool],
    payload: &Bytes,
) {
    if a.keep || a.engine_baseline {
        // The engine's directory goes away with the run.
        return;
    }
    let idx: Vec<u64> = (0..a.keys)
        .filter(|i| written[*i as usize].load(Ordering::Relaxed))
        .collect();
    if idx.is_empty() {
        return;
    }
    let n = idx.len();
    let (failed, first) = over_keys(target, Op::Delete, prefix, idx, payload, a.concurrency).await;
    if failed > 0 {
        eprintln!(
            "warning: {failed} of {n} deletes of {prefix}-* failed, first: {}",
            first.unwrap_or_default()
        );
    }
}

fn print_report(r: &Report) {
    let target = if r.target == "engine" {
        "bare sled (temp dir)".to_string()
    } else if r.apis.len() == 1 {
        r.apis[0].clone()
    } else {
        format!("{} APIs round-robin ({})", r.apis.len(), r.apis.join(", "))
    };
    let mut cfg = format!(
        "mode={} size={} concurrency={} duration={}s keys={}",
        match r.mode {
            Mode::Put => "put",
            Mode::Get => "get",
            Mode::Mixed => "mixed",
        },
        human_bytes(r.size_bytes),
        r.concurrency,
        r.duration_s,
        r.keys
    );
    if r.target != "engine" {
        cfg.push_str(&format!(
            " consistency={} rf={}",
            r.consistency.unwrap_or("cluster default"),
            r.replication_factor
                .map(|v| v.to_string())
                .unwrap_or_else(|| "cluster default".into())
        ));
    }
    println!("plexi bench ({} build) against {target}", r.build);
    println!("{cfg}, elapsed {:.2}s", r.elapsed_s);
    let mut t = Table::new(&[
        ("OP", Left),
        ("OPS", Right),
        ("ERRORS", Right),
        ("OPS/S", Right),
        ("MIB/S", Right),
        ("MEAN ms", Right),
        ("P50 ms", Right),
        ("P95 ms", Right),
        ("P99 ms", Right),
        ("MAX ms", Right),
    ]);
    for x in &r.results {
        t.row([
            x.op.clone(),
            x.ops.to_string(),
            x.errors.to_string(),
            format!("{:.1}", x.ops_per_sec),
            format!("{:.2}", x.mib_per_sec),
            format!("{:.2}", x.mean_ms),
            format!("{:.2}", x.p50_ms),
            format!("{:.2}", x.p95_ms),
            format!("{:.2}", x.p99_ms),
            format!("{:.2}", x.max_ms),
        ]);
    }
    t.print();
    if !r.memory.is_empty() {
        println!("resident memory per node (worker + supervisor), MiB:");
        let mut t = Table::new(&[
            ("NODE API", Left),
            ("BEFORE", Right),
            ("PEAK", Right),
            ("AFTER", Right),
        ]);
        for m in &r.memory {
            t.row([
                m.api.clone(),
                format!("{:.1}", m.before_mib),
                format!("{:.1}", m.peak_mib),
                format!("{:.1}", m.after_mib),
            ]);
        }
        t.print();
    }
    for (e, n) in &r.errors {
        println!("error ×{n}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_summed_from_the_metrics_text() {
        let text = "# HELP plexi_process_resident_bytes x\n\
            # TYPE plexi_process_resident_bytes gauge\n\
            plexi_process_resident_bytes{process=\"worker\"} 20971520\n\
            plexi_process_resident_bytes{process=\"supervisor\"} 8388608\n\
            plexi_node_uptime_seconds 3\n";
        assert_eq!(resident_mib(text), Some(28.0));
        assert_eq!(resident_mib("plexi_node_uptime_seconds 3\n"), None);
        assert_eq!(
            resident_mib("plexi_process_resident_bytes{process=\"worker\"} x\n"),
            None
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1.5M"), Ok(3 << 19));
        assert_eq!(parse_size("10KB"), Ok(10_000));
        assert_eq!(parse_size(" 2 mib "), Ok(2 << 20));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("").is_err());
        assert!(parse_size("1.5").is_err());
        assert!(parse_size("4XB").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("5GiB").is_err());
    }

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 95.0), 95);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn stamps_differ() {
        let p = Bytes::from(vec![7u8; 32]);
        let (a, b) = (stamped(&p), stamped(&p));
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert_eq!(a[8..], p[8..]);
        assert_eq!(stamped(&Bytes::from(vec![1u8; 3])).len(), 3);
        assert!(stamped(&Bytes::new()).is_empty());
    }

    #[test]
    fn error_kinds_are_bounded() {
        let mut m = BTreeMap::new();
        for i in 0..100 {
            note_error(&mut m, format!("e{i}"));
        }
        assert!(m.len() <= MAX_ERROR_KINDS + 1);
        assert_eq!(m.values().sum::<u64>(), 100);
    }
}
