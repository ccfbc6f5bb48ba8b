//! The client side of the CLI: commands that call any node's REST API
//! (`--api URL` or `PLEXI_API`, `--token` or `PLEXI_TOKEN`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::body::Bytes;
use clap::{Args, Subcommand};
use plexi_api::model::{
    DataInfo, Distribution, HealthReport, Job, NodeList, PutResult, StorageNodes, StorageOverview,
};
use reqwest::{Method, Response};

pub mod bench;
pub mod release;
pub mod update;

#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// Base URL of any node's API.
    #[arg(
        long,
        env = "PLEXI_API",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub api: String,
    /// Bearer token (read or admin).
    #[arg(long, env = "PLEXI_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

pub use plexi_util::types::Consistency;

/// Parses `--consistency` before anything is sent.
pub fn parse_consistency(s: &str) -> Result<Consistency, String> {
    s.parse()
        .map_err(|e: plexi_util::types::UnknownName| e.to_string())
}

/// `http://host:port` from `host:port` or a URL, without a trailing slash.
pub fn base_url(api: &str) -> String {
    let base = api.trim().trim_end_matches('/');
    if base.starts_with("http://") || base.starts_with("https://") {
        base.to_string()
    } else {
        format!("http://{base}")
    }
}

/// Percent-encodes one path segment (everything but RFC 3986 unreserved).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The API path of an object.
pub fn data_path(data_id: &str) -> String {
    format!(
        "/api/v1/clustering/storage/data/{}",
        encode_segment(data_id)
    )
}

/// Turns a non-2xx answer into an error carrying the API's message.
pub async fn check(res: Response) -> Result<Response> {
    let status = res.status();
    if status.is_success() {
        return Ok(res);
    }
    let text = res.text().await.unwrap_or_default();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let reason = status.canonical_reason().unwrap_or("");
    match (
        body["error"]["code"].as_str(),
        body["error"]["message"].as_str(),
    ) {
        (Some(code), Some(msg)) => bail!("{} {reason} ({code}): {msg}", status.as_u16()),
        (None, Some(msg)) => bail!("{} {reason}: {msg}", status.as_u16()),
        _ if !text.trim().is_empty() && text.len() < 512 => {
            bail!("{} {reason}: {}", status.as_u16(), text.trim())
        }
        _ => bail!("{} {reason}: no error message", status.as_u16()),
    }
}

impl ApiArgs {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", base_url(&self.api))
    }

    /// Sends one request and returns the answer if it is a success; a
    /// failure becomes an error with the API's message.
    async fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Bytes>,
    ) -> Result<Response> {
        let client = reqwest::Client::new();
        let mut req = client.request(method, self.url(path));
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(b);
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.api))?;
        check(res).await
    }

    /// A JSON answer to a request.
    pub(crate) async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Bytes>,
    ) -> Result<T> {
        self.request(method, path, query, body)
            .await?
            .json()
            .await
            .context("undecodable response")
    }

    pub(crate) async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, &[], None).await
    }

    /// POSTs a JSON body and decodes the JSON answer.
    pub(crate) async fn post_json<T: serde::de::DeserializeOwned, B: serde::Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let mut req = reqwest::Client::new().post(self.url(path)).json(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.api))?;
        check(res)
            .await?
            .json()
            .await
            .context("undecodable response")
    }
}

pub async fn nodes(api: &ApiArgs, json: bool) -> Result<()> {
    let list: NodeList = api.get("/api/v1/clustering/nodes").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<8} {:<9} {:<10} {:<10} {:>6} {:<22} PEER",
        "NODE", "STATUS", "VERSION", "REGION", "ZONE", "HB(s)", "API"
    );
    for n in list.nodes {
        println!(
            "{:<16} {:<8} {:<9} {:<10} {:<10} {:>6.1} {:<22} {}{}",
            n.node_id,
            n.status,
            n.version,
            n.region,
            n.zone,
            n.last_heartbeat_age_ms as f64 / 1000.0,
            n.api_address,
            n.peer_id,
            if n.is_local { " (answering)" } else { "" }
        );
    }
    Ok(())
}

pub async fn health(api: &ApiArgs, node_id: &str) -> Result<()> {
    let r: HealthReport = api
        .get(&format!(
            "/api/v1/clustering/nodes/{}/health",
            encode_segment(node_id)
        ))
        .await?;
    println!(
        "{} ({}) {} healthy={} status={} uptime={}s source={}",
        r.node_id, r.peer_id, r.version, r.healthy, r.status, r.uptime_seconds, r.source
    );
    for c in r.checks {
        println!(
            "  [{}] {:<12} {}",
            if c.ok { "ok" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    Ok(())
}

// ---- data: put, get, rm, info ----

#[derive(Args, Debug)]
pub struct PutArgs {
    pub data_id: String,
    /// File to store; `-` or absent reads standard input.
    pub file: Option<PathBuf>,
    /// Free-form type stored with the object (node default: application/octet-stream).
    #[arg(long)]
    pub data_type: Option<String>,
    /// strong | eventual | weak (default: the cluster's consistency_level).
    #[arg(long, value_parser = parse_consistency)]
    pub consistency: Option<Consistency>,
    /// Total copies (default: the cluster's default_replication_factor).
    #[arg(long)]
    pub replication_factor: Option<u32>,
    /// Print the raw JSON answer.
    #[arg(long)]
    pub json: bool,
}

pub async fn put(api: &ApiArgs, a: &PutArgs) -> Result<()> {
    let bytes = match a.file.as_deref() {
        None => read_stdin()?,
        Some(p) if p == Path::new("-") => read_stdin()?,
        Some(p) => std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
    };
    let mut query = Vec::new();
    if let Some(t) = &a.data_type {
        query.push(("data_type", t.clone()));
    }
    if let Some(c) = a.consistency {
        query.push(("consistency", c.as_str().to_string()));
    }
    if let Some(rf) = a.replication_factor {
        query.push(("replication_factor", rf.to_string()));
    }
    let r: PutResult = api
        .call(
            Method::PUT,
            &data_path(&a.data_id),
            &query,
            Some(Bytes::from(bytes)),
        )
        .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "stored {} ({}, {} bytes) version {} checksum {} consistency {} rf {}",
        r.data_id,
        r.data_type,
        r.size_bytes,
        r.version,
        r.checksum,
        r.consistency_level,
        r.replication_factor
    );
    for n in &r.replicas {
        let acked = r.acknowledged_by.contains(n);
        println!(
            "  replica {n}{}",
            if acked { " (acknowledged)" } else { "" }
        );
    }
    if r.under_replicated {
        println!(
            "  warning: under-replicated ({} of {} replicas placed); repair will add the missing ones",
            r.replicas.len(),
            r.replication_factor
        );
    }
    Ok(())
}

fn read_stdin() -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut buf)
        .context("cannot read standard input")?;
    Ok(buf)
}

#[derive(Args, Debug)]
pub struct GetArgs {
    pub data_id: String,
    /// Write the bytes to this file instead of standard output.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// strong | eventual | weak (default: the cluster's consistency_level).
    #[arg(long, value_parser = parse_consistency)]
    pub consistency: Option<Consistency>,
}

pub async fn get(api: &ApiArgs, a: &GetArgs) -> Result<()> {
    let mut query = Vec::new();
    if let Some(c) = a.consistency {
        query.push(("consistency", c.as_str().to_string()));
    }
    let res = api
        .request(Method::GET, &data_path(&a.data_id), &query, None)
        .await?;
    let etag = res
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.trim()
                .trim_start_matches("W/")
                .trim_matches('"')
                .to_string()
        });
    let bytes = res.bytes().await.context("the transfer broke off")?;
    let got = blake3::hash(&bytes).to_hex().to_string();
    match etag {
        None => bail!(
            "the answer carries no ETag: cannot verify the {} bytes received; nothing written",
            bytes.len()
        ),
        Some(want) if !want.eq_ignore_ascii_case(&got) => bail!(
            "CHECKSUM MISMATCH for {}: the node says blake3 {want} but the {} bytes received hash to {got}; nothing written",
            a.data_id,
            bytes.len()
        ),
        Some(_) => {}
    }
    match &a.output {
        Some(p) if p != Path::new("-") => {
            std::fs::write(p, &bytes).with_context(|| format!("cannot write {}", p.display()))?
        }
        _ => {
            let mut out = std::io::stdout().lock();
            match out.write_all(&bytes).and_then(|()| out.flush()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                Err(e) => return Err(e).context("cannot write standard output"),
            }
        }
    }
    Ok(())
}

pub async fn rm(api: &ApiArgs, data_id: &str) -> Result<()> {
    api.request(Method::DELETE, &data_path(data_id), &[], None)
        .await?;
    println!("deleted {data_id}");
    Ok(())
}

pub async fn info(api: &ApiArgs, data_id: &str, json: bool) -> Result<()> {
    let i: DataInfo = api.get(&format!("{}/info", data_path(data_id))).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&i)?);
        return Ok(());
    }
    println!("data_id:            {}", i.data_id);
    println!("data_type:          {}", i.data_type);
    println!("size:               {} bytes", i.size_bytes);
    println!("checksum (blake3):  {}", i.checksum);
    println!("version:            {}", i.version);
    println!("consistency:        {}", i.consistency_level);
    println!(
        "replication:        {} of {} live{}",
        i.live_replicas,
        i.replication_factor,
        if i.under_replicated {
            " (UNDER-REPLICATED)"
        } else {
            ""
        }
    );
    println!("partition:          {}", i.partition);
    println!("created_at:         {}", i.created_at);
    println!(
        "last_accessed:      {} ({} accesses)",
        i.last_accessed.as_deref().unwrap_or("-"),
        i.access_count
    );
    println!(
        "{:<16} {:<8} {:<5} {:<8} {:<7} VERSION",
        "REPLICA", "STATUS", "COPY", "CURRENT", "HEALTHY"
    );
    for r in &i.replicas {
        println!(
            "{:<16} {:<8} {:<5} {:<8} {:<7} {}",
            r.node_id,
            r.status,
            yes_no(r.has_copy),
            yes_no(r.is_current),
            yes_no(r.is_healthy),
            r.version.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

// ---- storage ----

#[derive(Subcommand, Debug)]
pub enum StorageCmd {
    /// Cluster-wide capacity, usage and object counts.
    Overview {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Capacity, health and measured latency of every node.
    Nodes {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replicas per node, region and zone; replica-count histogram.
    Distribution {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a cluster-wide rebalance and follow it to the end.
    Rebalance(JobArgs),
    /// Start a cluster-wide cleanup and follow it to the end.
    Cleanup(JobArgs),
}

#[derive(Args, Debug)]
pub struct JobArgs {
    /// Print the job as started and return at once.
    #[arg(long)]
    pub no_wait: bool,
    /// Print the final job as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn storage(api: &ApiArgs, cmd: &StorageCmd) -> Result<()> {
    match cmd {
        StorageCmd::Overview { json } => overview(api, *json).await,
        StorageCmd::Nodes { json } => storage_nodes(api, *json).await,
        StorageCmd::Distribution { json } => distribution(api, *json).await,
        StorageCmd::Rebalance(a) => job(api, "rebalance", a).await,
        StorageCmd::Cleanup(a) => job(api, "cleanup", a).await,
    }
}

fn gb(v: f64) -> String {
    format!("{v:.2} GB")
}

/// Bytes as a short human figure (binary units).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

async fn overview(api: &ApiArgs, json: bool) -> Result<()> {
    let o: StorageOverview = api.get("/api/v1/clustering/storage/overview").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&o)?);
        return Ok(());
    }
    println!(
        "nodes:              {} ({} healthy)",
        o.total_nodes, o.healthy_nodes
    );
    println!(
        "capacity:           {} total, {} used, {} available ({:.1}% used)",
        gb(o.total_capacity_gb),
        gb(o.used_capacity_gb),
        gb(o.available_capacity_gb),
        o.usage_percentage
    );
    println!(
        "objects:            {} ({} replicas, {} under-replicated)",
        o.total_data_objects, o.total_replicas, o.under_replicated_objects
    );
    println!("replication factor: {}", o.replication_factor);
    println!("strategy:           {}", o.storage_strategy);
    println!("consistency:        {}", o.consistency_level);
    if !o.unreachable_nodes.is_empty() {
        println!(
            "unreachable (not counted): {}",
            o.unreachable_nodes.join(", ")
        );
    }
    Ok(())
}

fn opt_ms(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into())
}

async fn storage_nodes(api: &ApiArgs, json: bool) -> Result<()> {
    let n: StorageNodes = api.get("/api/v1/clustering/storage/nodes").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&n)?);
        return Ok(());
    }
    println!(
        "{:<14} {:<8} {:<9} {:<12} {:>10} {:>10} {:>6} {:>8} {:>5} {:>5} {:>7} {:>7} {:<7} NEW",
        "NODE",
        "STATUS",
        "REGION",
        "ZONE",
        "CAP(GB)",
        "USED(GB)",
        "USE%",
        "OBJECTS",
        "PERF",
        "REL",
        "RD(ms)",
        "WR(ms)",
        "HEALTHY"
    );
    for x in &n.nodes {
        println!(
            "{:<14} {:<8} {:<9} {:<12} {:>10.2} {:>10.3} {:>6.1} {:>8} {:>5.0} {:>5.0} {:>7} {:>7} {:<7} {}",
            x.node_id,
            x.status,
            x.region,
            x.zone,
            x.total_capacity_gb,
            x.used_capacity_gb,
            x.usage_percentage,
            x.object_count,
            x.performance_score,
            x.reliability_score,
            opt_ms(x.read_latency_ms),
            opt_ms(x.write_latency_ms),
            yes_no(x.is_healthy),
            yes_no(x.accepts_new_replicas)
        );
    }
    Ok(())
}

async fn distribution(api: &ApiArgs, json: bool) -> Result<()> {
    let d: Distribution = api.get("/api/v1/clustering/storage/distribution").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    println!(
        "{:<14} {:<9} {:<12} {:>9} {:>12}",
        "NODE", "REGION", "ZONE", "REPLICAS", "BYTES"
    );
    for n in &d.nodes {
        println!(
            "{:<14} {:<9} {:<12} {:>9} {:>12}",
            n.node_id,
            n.region,
            n.zone,
            n.objects,
            human_bytes(n.bytes)
        );
    }
    println!();
    println!("{:<22} {:>9} {:>12}", "REGION", "REPLICAS", "BYTES");
    for (r, h) in &d.regions {
        println!("{r:<22} {:>9} {:>12}", h.objects, human_bytes(h.bytes));
    }
    println!();
    println!("{:<22} {:>9} {:>12}", "ZONE", "REPLICAS", "BYTES");
    for (z, h) in &d.zones {
        println!("{z:<22} {:>9} {:>12}", h.objects, human_bytes(h.bytes));
    }
    println!();
    let mut hist: Vec<(&String, &u64)> = d.replica_histogram.iter().collect();
    hist.sort_by_key(|(k, _)| k.parse::<u64>().unwrap_or(u64::MAX));
    println!(
        "replicas per object: {}",
        hist.iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "objects: {}, under-replicated: {}, average replication factor: {:.2}, efficiency: {:.1}%",
        d.total_objects,
        d.under_replicated_objects,
        d.average_replication_factor,
        d.replication_efficiency * 100.0
    );
    if !d.unreachable_nodes.is_empty() {
        println!(
            "unreachable (not counted): {}",
            d.unreachable_nodes.join(", ")
        );
    }
    Ok(())
}

/// The running counts of a job, short enough for the progress line.
fn job_short(j: &Job) -> String {
    format!(
        "moved {} ({}), removed {}, repaired {}",
        j.moved_objects,
        human_bytes(j.moved_bytes),
        j.removed_replicas,
        j.repaired_replicas
    )
}

fn job_counts(j: &Job) -> String {
    format!(
        "moved {} objects ({}), removed {} replicas, repaired {}",
        j.moved_objects,
        human_bytes(j.moved_bytes),
        j.removed_replicas,
        j.repaired_replicas
    )
}

fn print_job(j: &Job, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(j)?);
        return Ok(());
    }
    println!(
        "{} job {}: {} ({:.0}%), {}",
        j.kind,
        j.job_id,
        j.status,
        j.progress_percentage,
        job_counts(j)
    );
    for p in &j.nodes {
        println!(
            "  {:<14} {:<10} {:>5.0}%",
            p.node_id, p.status, p.progress_percentage
        );
    }
    if let Some(e) = &j.error {
        println!("  error: {e}");
    }
    Ok(())
}

/// Polling period of a job.
const JOB_POLL: Duration = Duration::from_millis(500);
/// Consecutive failed polls after which the CLI gives up.
const JOB_POLL_FAILURES: u32 = 10;

async fn job(api: &ApiArgs, kind: &str, a: &JobArgs) -> Result<()> {
    let started: Job = api
        .call(
            Method::POST,
            &format!("/api/v1/clustering/storage/{kind}"),
            &[],
            None,
        )
        .await?;
    if a.no_wait {
        return print_job(&started, a.json);
    }
    let bar = indicatif::ProgressBar::new(100);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {prefix} [{elapsed_precise}] [{bar:30}] {pos:>3}% {wide_msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_prefix(format!(
        "{kind} {}",
        started.job_id.get(..8).unwrap_or(&started.job_id)
    ));
    bar.enable_steady_tick(Duration::from_millis(120));
    let path = format!(
        "/api/v1/clustering/storage/jobs/{}",
        encode_segment(&started.job_id)
    );
    let mut job = started;
    let mut failures = 0;
    while job.status == "running" {
        bar.set_position(job.progress_percentage.clamp(0.0, 100.0) as u64);
        bar.set_message(job_short(&job));
        tokio::time::sleep(JOB_POLL).await;
        match api.get::<Job>(&path).await {
            Ok(j) => {
                failures = 0;
                job = j;
            }
            Err(e) => {
                failures += 1;
                if failures >= JOB_POLL_FAILURES {
                    bar.abandon();
                    return Err(e).context(format!(
                        "job {} could not be followed ({failures} polls failed in a row)",
                        job.job_id
                    ));
                }
                bar.set_message(format!("poll failed, retrying: {e:#}"));
            }
        }
    }
    bar.set_position(job.progress_percentage.clamp(0.0, 100.0) as u64);
    bar.finish_and_clear();
    print_job(&job, a.json)?;
    match job.status.as_str() {
        "completed" => Ok(()),
        other => bail!(
            "{kind} job {} {other}: {}",
            job.job_id,
            job.error.as_deref().unwrap_or("no error given")
        ),
    }
}
