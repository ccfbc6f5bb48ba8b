//! One run: start the cluster, run the client tasks and the seeded nemesis
//! schedule side by side until the profile's time is up, then the final
//! phase (heal everything, wait for membership and repair, bounded; read
//! every set through every node and every register through every node),
//! then the summary. Every wait here is bounded by a named const.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::apply;
use crate::cluster::{Cluster, POLL};
use crate::history::{Consistency, EventType, Op, OpFn, Recorder, Value, NEMESIS_PROCESS};
use crate::nemesis::{schedule, timeline, Action, NemesisKind, ScheduleSpec};
use crate::net::{Net, NetMode, Plan};
use crate::summary::{nemesis_value, summarize, Summary, FINAL_READS};
use crate::update;
use crate::workload::{register_key, Client, REGISTER_KEYS};

/// How long the final phase waits for every node to see every node alive.
pub const HEAL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it waits for the cluster to report no under-replicated object.
pub const REPAIR_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts of one final read through one node.
pub const FINAL_READ_ATTEMPTS: usize = 20;
/// How long all the final reads together may take (5 nodes, 3 levels, the
/// registers); beyond it the run fails as hung rather than reports.
pub const FINAL_READS_ALLOWANCE: Duration = Duration::from_secs(90);

/// What one run does.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub seed: u64,
    pub profile: String,
    pub nodes: usize,
    pub clients: usize,
    pub duration: Duration,
    pub gap_ms: (u64, u64),
    pub hold_ms: (u64, u64),
    pub plexi: PathBuf,
    pub out: PathBuf,
    /// Run a self-update of the cluster under the faults.
    pub update: bool,
    /// The binary it rolls out (default: the workspace's build of
    /// `update::TARGET_VERSION`, brought up to date).
    pub update_binary: Option<PathBuf>,
    /// Loopback, or one network namespace per node (root).
    pub net: NetMode,
    /// The kinds the schedule draws (`NemesisKind::LOOPBACK` or `ALL`).
    pub kinds: Vec<NemesisKind>,
    /// Most faults in place at once.
    pub concurrency: usize,
}

/// The update strategy the seed picks (both allow one node out at once).
fn strategy_for(seed: u64) -> &'static str {
    if seed.is_multiple_of(2) {
        "rolling"
    } else {
        "canary"
    }
}

/// The kinds a mode can inject.
pub fn kinds_for(mode: NetMode) -> Vec<NemesisKind> {
    match mode {
        NetMode::Netns => NemesisKind::ALL.to_vec(),
        NetMode::Loopback => NemesisKind::LOOPBACK.to_vec(),
    }
}

fn nemesis_event(
    rec: &Recorder,
    kind: EventType,
    value: Value,
    node: Option<String>,
    err: Option<String>,
) {
    nemesis_event_with(rec, kind, value, node, err, None);
}

fn nemesis_event_with(
    rec: &Recorder,
    kind: EventType,
    value: Value,
    node: Option<String>,
    err: Option<String>,
    params: Option<serde_json::Value>,
) {
    let mut op = Op::new(NEMESIS_PROCESS, kind, OpFn::Nemesis);
    op.value = Some(value);
    op.node = node;
    op.error = err;
    op.params = params;
    rec.record(op);
}

/// `a`'s fields with `b`'s added.
fn merged(mut a: serde_json::Value, b: serde_json::Value) -> serde_json::Value {
    if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// Records one inject or heal: `ok` with the parameters it reported, or
/// `on_error` with the error.
fn record_step(
    rec: &Recorder,
    action: &str,
    kind: NemesisKind,
    node: Option<String>,
    params: serde_json::Value,
    res: Result<serde_json::Value>,
    on_error: EventType,
) {
    let (t, extra, err) = match res {
        Ok(extra) => (EventType::Ok, extra, None),
        Err(e) => (on_error, serde_json::json!({}), Some(format!("{e:#}"))),
    };
    let value = nemesis_value(action, kind);
    nemesis_event_with(rec, t, value, node, err, Some(merged(params, extra)));
}

/// Performs the seeded schedule's timeline in order (so the faults that
/// overlap are the planned ones); injections due after `until` are
/// skipped, heals of injected faults always run.
async fn run_nemesis(cluster: Arc<Cluster>, rec: Recorder, spec: RunSpec, until: Instant) {
    let steps = schedule(
        spec.seed,
        &ScheduleSpec {
            nodes: spec.nodes,
            within: spec.duration,
            gap_ms: spec.gap_ms,
            hold_ms: spec.hold_ms,
            kinds: spec.kinds.clone(),
            concurrency: spec.concurrency,
        },
    );
    let start = Instant::now();
    let name = |i: usize| cluster.name(i);
    let mut injected = vec![false; steps.len()];
    for (at, action, i) in timeline(&steps) {
        tokio::time::sleep_until((start + at).into()).await;
        let fault = &steps[i].fault;
        let kind = fault.kind();
        let node = fault.node().map(name);
        let params = fault.params(&name);
        match action {
            Action::Inject => {
                if Instant::now() >= until {
                    continue;
                }
                // A failed injection definitely did not take effect.
                let res = apply::inject(&cluster, fault).await;
                injected[i] = res.is_ok();
                record_step(&rec, "inject", kind, node, params, res, EventType::Fail);
            }
            Action::Heal => {
                if !injected[i] {
                    continue;
                }
                // A failed heal may have healed part of the fault.
                let res = apply::heal(&cluster, fault).await;
                record_step(&rec, "heal", kind, node, params, res, EventType::Info);
            }
        }
    }
}

async fn wait_until<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Heal, wait for membership and repair; true when repair was seen.
async fn final_heal(cluster: &Arc<Cluster>, rec: &Recorder) -> Result<bool> {
    nemesis_event(
        rec,
        EventType::Info,
        Value::Text("heal_all".into()),
        None,
        None,
    );
    apply::heal_all(cluster).await.context("healing")?;
    let alive = wait_until(HEAL_TIMEOUT, || cluster.all_alive()).await;
    let repaired = alive && wait_until(REPAIR_TIMEOUT, || cluster.repaired()).await;
    if !repaired {
        eprintln!("warning: the cluster did not report itself repaired (alive: {alive}); final reads go ahead");
        for line in cluster.repair_report().await {
            eprintln!("  {line}");
        }
    }
    Ok(repaired)
}

/// Reads every set and register through every node.
async fn final_reads(cluster: &Arc<Cluster>, rec: &Recorder, seed: u64, clients: usize) {
    nemesis_event(
        rec,
        EventType::Info,
        Value::Text(FINAL_READS.into()),
        None,
        None,
    );
    let reader = Client::new(seed, clients as u64, cluster.clone(), rec.clone());
    for node in 0..cluster.len() {
        for level in Consistency::ALL {
            for _ in 0..FINAL_READ_ATTEMPTS {
                if reader.read_all(node, level).await {
                    break;
                }
                tokio::time::sleep(POLL).await;
            }
        }
        for k in 0..REGISTER_KEYS {
            reader.read(node, &register_key(k)).await;
        }
    }
}

/// The whole run; the summary is also written to `out/summary.json`.
pub async fn run(spec: RunSpec) -> Result<Summary> {
    std::fs::create_dir_all(&spec.out)?;
    let rec = Recorder::to_file(&spec.out.join("history.jsonl"))?;
    // Before the old node dirs go: an earlier run's tmpfs mounts are there.
    let net = match spec.net {
        NetMode::Netns => Some(Net::setup(Plan::new(spec.seed, spec.nodes)?)?),
        NetMode::Loopback => None,
    };
    let root = spec.out.join("nodes");
    if root.exists() {
        std::fs::remove_dir_all(&root).context("clearing the old node dirs")?;
    }
    let release = if spec.update {
        let r = update::prepare(
            &spec.plexi,
            &spec.out.join("release"),
            spec.update_binary.clone(),
        )
        .context("preparing the update workload")?;
        eprintln!("update workload: {} from {}", r.version, r.binary.display());
        Some(r)
    } else {
        None
    };
    let extra = release.as_ref().map(|r| r.config()).unwrap_or_default();
    nemesis_event_with(
        &rec,
        EventType::Info,
        Value::Text("setup".into()),
        None,
        None,
        Some(serde_json::json!({
            "net": spec.net.as_str(),
            "subnet": net.as_ref().map(|n| format!("{}/24", n.plan.bridge_addr())),
            "kinds": spec.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
            "concurrency": spec.concurrency,
        })),
    );
    eprintln!(
        "starting {} nodes under {} ({})",
        spec.nodes,
        root.display(),
        spec.net.as_str()
    );
    let cluster = Arc::new(
        Cluster::start_with(&spec.plexi, &root, spec.nodes, spec.seed, net, &extra).await?,
    );
    let release = match release {
        Some(r) if update::publish_release(&cluster, &rec, &spec.plexi, &r).await => Some(r),
        _ => None,
    };
    let until = Instant::now() + spec.duration;
    eprintln!("running workload and nemesis for {:?}", spec.duration);
    let mut tasks = Vec::new();
    for c in 0..spec.clients {
        let client = Client::new(spec.seed, c as u64, cluster.clone(), rec.clone());
        tasks.push(tokio::spawn(client.run(until)));
    }
    let nem = tokio::spawn(run_nemesis(
        cluster.clone(),
        rec.clone(),
        spec.clone(),
        until,
    ));
    let upd = release.map(|r| {
        tokio::spawn(update::run(
            cluster.clone(),
            rec.clone(),
            r,
            strategy_for(spec.seed),
            spec.duration / 6,
        ))
    });
    for t in tasks {
        t.await?;
    }
    nem.await?;
    if let Some(u) = upd {
        eprintln!(
            "faults over; waiting for the update to end (at most {:?})",
            update::FINAL_TIMEOUT
        );
        u.await?;
    }
    eprintln!("final phase: heal, repair, read everything through every node");
    let repaired = final_heal(&cluster, &rec).await?;
    if tokio::time::timeout(
        FINAL_READS_ALLOWANCE,
        final_reads(&cluster, &rec, spec.seed, spec.clients),
    )
    .await
    .is_err()
    {
        cluster.shutdown().await;
        bail!("the final reads did not end within {FINAL_READS_ALLOWANCE:?}");
    }
    rec.flush()?;
    cluster.shutdown().await;
    let summary = summarize(
        &rec.events(),
        spec.seed,
        &spec.profile,
        spec.nodes,
        repaired,
    );
    std::fs::write(
        spec.out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    Ok(summary)
}
