//! `plexi storage ...`: the cluster-wide overview, the storage nodes, the
//! replica distribution (per node, region and zone), and the rebalance,
//! cleanup and re-encryption jobs, followed with a progress bar to the end.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use plexi_api::model::{Distribution, Job, StorageNodes, StorageOverview};
use plexi_util::types::{JobKind, JobStatus};
use reqwest::Method;

use super::client::{encode_segment, ApiArgs};
use super::table::{human_bytes, yes_no, Left, Right, Table};

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
    /// After a data key rotation: rewrite every value not sealed under the
    /// current data key, on every node, and follow it to the end.
    Reencrypt(JobArgs),
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
        StorageCmd::Rebalance(a) => job(api, JobKind::Rebalance, a).await,
        StorageCmd::Cleanup(a) => job(api, JobKind::Cleanup, a).await,
        StorageCmd::Reencrypt(a) => job(api, JobKind::Reencrypt, a).await,
    }
}

fn gb(v: f64) -> String {
    format!("{v:.2} GB")
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
    let mut t = Table::new(&[
        ("NODE", Left),
        ("STATUS", Left),
        ("REGION", Left),
        ("ZONE", Left),
        ("CAP(GB)", Right),
        ("USED(GB)", Right),
        ("USE%", Right),
        ("OBJECTS", Right),
        ("PERF", Right),
        ("REL", Right),
        ("RD(ms)", Right),
        ("WR(ms)", Right),
        ("HEALTHY", Left),
        ("NEW", Left),
    ]);
    for x in &n.nodes {
        t.row([
            x.node_id.to_string(),
            x.status.to_string(),
            x.region.clone(),
            x.zone.clone(),
            format!("{:.2}", x.total_capacity_gb),
            format!("{:.3}", x.used_capacity_gb),
            format!("{:.1}", x.usage_percentage),
            x.object_count.to_string(),
            format!("{:.0}", x.performance_score),
            format!("{:.0}", x.reliability_score),
            opt_ms(x.read_latency_ms),
            opt_ms(x.write_latency_ms),
            yes_no(x.is_healthy).to_string(),
            yes_no(x.accepts_new_replicas).to_string(),
        ]);
    }
    t.print();
    Ok(())
}

async fn distribution(api: &ApiArgs, json: bool) -> Result<()> {
    let d: Distribution = api.get("/api/v1/clustering/storage/distribution").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    let mut t = Table::new(&[
        ("NODE", Left),
        ("REGION", Left),
        ("ZONE", Left),
        ("REPLICAS", Right),
        ("BYTES", Right),
    ]);
    for n in &d.nodes {
        t.row([
            n.node_id.to_string(),
            n.region.clone(),
            n.zone.clone(),
            n.objects.to_string(),
            human_bytes(n.bytes),
        ]);
    }
    t.print();
    for (name, groups) in [("REGION", &d.regions), ("ZONE", &d.zones)] {
        println!();
        let mut t = Table::new(&[(name, Left), ("REPLICAS", Right), ("BYTES", Right)]);
        for (g, h) in groups {
            t.row([g.clone(), h.objects.to_string(), human_bytes(h.bytes)]);
        }
        t.print();
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
    if j.kind == JobKind::Reencrypt {
        return format!(
            "examined {}/{}, re-encrypted {}, repaired {}",
            j.examined_objects, j.total_objects, j.reencrypted_objects, j.repaired_replicas
        );
    }
    format!(
        "moved {} ({}), removed {}, repaired {}",
        j.moved_objects,
        human_bytes(j.moved_bytes),
        j.removed_replicas,
        j.repaired_replicas
    )
}

fn job_counts(j: &Job) -> String {
    if j.kind == JobKind::Reencrypt {
        return format!(
            "{} of {} entries examined, {} values re-encrypted, {} replaced from other replicas",
            j.examined_objects, j.total_objects, j.reencrypted_objects, j.repaired_replicas
        );
    }
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
    let mut t = Table::new(&[("NODE", Left), ("STATUS", Left), ("PROGRESS", Right)])
        .indent("  ")
        .headless();
    for p in &j.nodes {
        t.row([
            p.node_id.to_string(),
            p.status.to_string(),
            format!("{:.0}%", p.progress_percentage),
        ]);
    }
    t.print();
    if let Some(e) = &j.error {
        println!("  error: {e}");
    }
    Ok(())
}

/// Polling period of a job.
const JOB_POLL: Duration = Duration::from_millis(500);
/// Consecutive failed polls after which the CLI gives up.
const JOB_POLL_FAILURES: u32 = 10;

async fn job(api: &ApiArgs, kind: JobKind, a: &JobArgs) -> Result<()> {
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
    while job.status == JobStatus::Running {
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
    match job.status {
        JobStatus::Completed => Ok(()),
        other => bail!(
            "{kind} job {} {other}: {}",
            job.job_id,
            job.error.as_deref().unwrap_or("no error given")
        ),
    }
}
