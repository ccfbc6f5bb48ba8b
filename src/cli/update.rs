//! `plexi update ...`: planning, executing, following (`--watch`, a
//! progress bar per node, rotating through the cluster's nodes while the
//! one asked restarts), rolling back and listing cluster update operations.
//! Every command talks to any node's REST API through [`ApiArgs`]; an API
//! error prints its message and exits 1.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use plexi_api::model::{PlanRequest, UpdateList, UpdateOperation};
use plexi_util::types::{NodeId, NodeUpdateStatus, OperationStatus, UpdatePhase};
use reqwest::Method;

use super::client::{encode_segment, ApiArgs};
use super::table::{dash, Left, Right, Table};

const UPDATES: &str = "/api/v1/clustering/updates";
/// Polling period of `--watch`.
const WATCH_POLL: Duration = Duration::from_millis(500);
/// How long `--watch` keeps retrying (rotating through the cluster's nodes)
/// before it gives up: the node it talks to may itself be restarting.
const WATCH_GIVE_UP: Duration = Duration::from_secs(180);
/// How long `rollback --watch` waits for the operation to enter
/// `rolling_back` when it was already failed or completed.
const ROLLBACK_START_GRACE: Duration = Duration::from_secs(15);

#[derive(Subcommand, Debug)]
pub enum UpdateCmd {
    /// Plan an update and print it (the operation id alone on the last line).
    Plan(PlanArgs),
    /// Start a planned operation.
    Execute {
        operation_id: String,
        /// Follow the operation with a progress bar per node until it ends;
        /// exit 0 only if it completed.
        #[arg(long)]
        watch: bool,
    },
    /// An operation as it stands.
    Status {
        operation_id: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Roll an operation back (running, failed or completed).
    Rollback {
        operation_id: String,
        /// Follow the rollback until it ends; exit 0 only if it rolled back.
        #[arg(long)]
        watch: bool,
    },
    /// Operations that are planned, running or rolling back.
    Active {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Past and present operations, newest first.
    History {
        /// How many operations (1-1000).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// The release to run (published with `plexi release publish`).
    #[arg(long = "version", value_name = "VERSION")]
    pub target_version: String,
    #[arg(long = "type", default_value = "upgrade", value_parser = ["upgrade", "downgrade", "reinstall"])]
    pub update_type: String,
    #[arg(long, default_value = "rolling", value_parser = ["rolling", "parallel", "canary"])]
    pub strategy: String,
    /// Comma-separated node names (default: every live node).
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Plan even across breaking changes.
    #[arg(long)]
    pub force: bool,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
}

fn op_path(id: &str, action: &str) -> String {
    format!("{UPDATES}/{}/{action}", encode_segment(id))
}

pub async fn update(api: &ApiArgs, cmd: &UpdateCmd) -> Result<()> {
    match cmd {
        UpdateCmd::Plan(a) => plan(api, a).await,
        UpdateCmd::Execute {
            operation_id,
            watch,
        } => {
            let op: UpdateOperation = api
                .call(Method::POST, &op_path(operation_id, "execute"), &[], None)
                .await?;
            if *watch {
                follow(api, op, Goal::Complete).await
            } else {
                print_operation(&op);
                println!(
                    "follow it with: plexi update status {} (or execute --watch)",
                    op.operation_id
                );
                Ok(())
            }
        }
        UpdateCmd::Status { operation_id, json } => {
            let op: UpdateOperation = api.get(&op_path(operation_id, "status")).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&op)?);
            } else {
                print_operation(&op);
            }
            Ok(())
        }
        UpdateCmd::Rollback {
            operation_id,
            watch,
        } => {
            let op: UpdateOperation = api
                .call(Method::POST, &op_path(operation_id, "rollback"), &[], None)
                .await?;
            if *watch {
                follow(api, op, Goal::RollBack).await
            } else {
                print_operation(&op);
                Ok(())
            }
        }
        UpdateCmd::Active { json } => {
            let list: UpdateList = api.get(&format!("{UPDATES}/active")).await?;
            print_list(&list, *json, "no active update operation")
        }
        UpdateCmd::History { limit, json } => {
            let list: UpdateList = api
                .call(
                    Method::GET,
                    &format!("{UPDATES}/history"),
                    &[("limit", limit.to_string())],
                    None,
                )
                .await?;
            print_list(&list, *json, "no update operation yet")
        }
    }
}

async fn plan(api: &ApiArgs, a: &PlanArgs) -> Result<()> {
    let req = PlanRequest {
        target_version: a.target_version.clone(),
        update_type: a.update_type.parse()?,
        strategy: a.strategy.parse()?,
        target_nodes: a
            .nodes
            .iter()
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
            .map(NodeId::from)
            .collect(),
        force: a.force,
    };
    let op: UpdateOperation = api.post_json(&format!("{UPDATES}/plan"), &req).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&op)?);
        return Ok(());
    }
    println!(
        "planned {} of {} ({}, {}{})",
        op.update_type,
        op.target_version,
        op.strategy,
        plural(op.target_nodes.len(), "node"),
        if op.force { ", forced" } else { "" }
    );
    for (i, batch) in op.batches.iter().enumerate() {
        let from: Vec<String> = batch
            .iter()
            .map(|n| match op.node_statuses.get(n) {
                Some(s) if !s.from_version.is_empty() => format!("{n} ({})", s.from_version),
                _ => n.to_string(),
            })
            .collect();
        println!("  batch {:>2}: {}", i + 1, from.join(", "));
    }
    println!(
        "estimated completion: {}",
        op.estimated_completion.as_deref().unwrap_or("unknown")
    );
    if op.breaking_changes.is_empty() {
        println!("breaking changes: none");
    } else {
        println!("breaking changes:");
        for b in &op.breaking_changes {
            println!("  - {b}");
        }
    }
    for w in &op.warnings {
        println!("warning: {w}");
    }
    println!(
        "start it with: plexi update execute {} --watch",
        op.operation_id
    );
    println!("{}", op.operation_id);
    Ok(())
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// The operation and one line per node, in update order.
pub fn print_operation(op: &UpdateOperation) {
    println!(
        "operation {}: {} ({:.0}%), phase {}",
        op.operation_id, op.status, op.overall_progress, op.current_phase
    );
    println!(
        "  {} of {} ({}), created {} by {}, started {}, completed {}",
        op.update_type,
        op.target_version,
        op.strategy,
        op.created_at,
        op.created_by,
        dash(&op.started_at),
        dash(&op.completed_at)
    );
    if let Some(r) = &op.halted_reason {
        println!("  halted: {r}");
    }
    for l in &op.leases {
        println!(
            "  lease slot {} held by {} (epoch {}, {} ms left)",
            l.slot, l.holder, l.epoch, l.remaining_ms
        );
    }
    let mut t = Table::new(&[
        ("NODE", Left),
        ("STATUS", Left),
        ("PHASE", Left),
        ("PROG", Right),
        ("VERSION", Left),
        ("ERROR", Left),
    ])
    .indent("  ");
    for id in node_order(op) {
        let Some(n) = op.node_statuses.get(&id) else {
            continue;
        };
        t.row([
            n.node_id.to_string(),
            n.status.to_string(),
            n.current_phase.to_string(),
            format!("{:.0}%", n.progress_percentage),
            format!("{} -> {}", n.from_version, n.to_version),
            dash(&n.error_message).to_string(),
        ]);
    }
    t.print();
}

/// Nodes in batch order, then any others the operation reports.
fn node_order(op: &UpdateOperation) -> Vec<NodeId> {
    let mut out: Vec<NodeId> = Vec::new();
    for n in op.batches.iter().flatten().chain(op.node_statuses.keys()) {
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    out
}

fn print_list(list: &UpdateList, json: bool, empty: &str) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(list)?);
        return Ok(());
    }
    if list.operations.is_empty() {
        println!("{empty}");
        return Ok(());
    }
    let mut t = Table::new(&[
        ("OPERATION", Left),
        ("STATUS", Left),
        ("VERSION", Left),
        ("TYPE", Left),
        ("STRATEGY", Left),
        ("NODES", Right),
        ("PROG", Right),
        ("CREATED", Left),
        ("BY", Left),
    ]);
    for op in &list.operations {
        t.row([
            op.operation_id.clone(),
            op.status.to_string(),
            op.target_version.clone(),
            op.update_type.to_string(),
            op.strategy.to_string(),
            op.target_nodes.len().to_string(),
            format!("{:.0}%", op.overall_progress),
            op.created_at.clone(),
            op.created_by.clone(),
        ]);
    }
    t.print();
    Ok(())
}

/// What `--watch` waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    /// execute: success is `completed`.
    Complete,
    /// rollback: success is `rolled_back`.
    RollBack,
}

/// Whether `--watch` stops at `status`, given whether the operation has been
/// seen rolling back and how long ago the watch began.
pub fn watch_done(
    goal: Goal,
    status: OperationStatus,
    seen_rolling_back: bool,
    waited: Duration,
) -> bool {
    match goal {
        Goal::Complete => status.is_final(),
        // A rollback of a failed or completed operation starts from that
        // status: it is final only once the rollback ran (or never started).
        Goal::RollBack => match status {
            OperationStatus::RolledBack | OperationStatus::Cancelled => true,
            OperationStatus::Failed | OperationStatus::Completed => {
                seen_rolling_back || waited >= ROLLBACK_START_GRACE
            }
            OperationStatus::Planned | OperationStatus::Running | OperationStatus::RollingBack => {
                false
            }
        },
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>16} [{bar:30}] {pos:>3}% {wide_msg}")
        .expect("static template")
        .progress_chars("=> ")
}

fn percent(p: f64) -> u64 {
    if p.is_finite() {
        p.clamp(0.0, 100.0).round() as u64
    } else {
        0
    }
}

struct Bars {
    mp: MultiProgress,
    overall: ProgressBar,
    nodes: BTreeMap<NodeId, ProgressBar>,
    /// Last (status, phase) seen per node, to log changes.
    last: BTreeMap<NodeId, (NodeUpdateStatus, UpdatePhase)>,
    last_op: String,
}

impl Bars {
    fn new(op: &UpdateOperation) -> Bars {
        let mp = MultiProgress::new();
        let overall = mp.add(ProgressBar::new(100));
        overall.set_style(bar_style());
        overall.set_prefix(format!(
            "{} {}",
            op.operation_id.get(..8).unwrap_or(&op.operation_id),
            op.target_version
        ));
        let mut bars = Bars {
            mp,
            overall,
            nodes: BTreeMap::new(),
            last: BTreeMap::new(),
            last_op: String::new(),
        };
        bars.show(op, None);
        bars
    }

    fn log(&self, line: String) {
        if self.mp.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.mp.println(line);
        }
    }

    fn show(&mut self, op: &UpdateOperation, trouble: Option<&str>) {
        let op_state = format!("{} {}", op.status, op.current_phase);
        if op_state != self.last_op {
            self.log(format!("operation: {op_state}"));
            self.last_op = op_state.clone();
        }
        self.overall.set_position(percent(op.overall_progress));
        self.overall.set_message(match trouble {
            Some(t) => format!("{op_state} ({t})"),
            None => op_state,
        });
        for id in node_order(op) {
            let Some(n) = op.node_statuses.get(&id) else {
                continue;
            };
            let bar = self.nodes.entry(id.clone()).or_insert_with(|| {
                let b = self.mp.add(ProgressBar::new(100));
                b.set_style(bar_style());
                b.set_prefix(id.to_string());
                b
            });
            bar.set_position(percent(n.progress_percentage));
            let mut msg = format!("{} {}", n.status, n.current_phase);
            if let Some(e) = &n.error_message {
                msg.push_str(&format!(": {e}"));
            }
            bar.set_message(msg);
            let now = (n.status, n.current_phase);
            if self.last.get(&id) != Some(&now) {
                self.log(format!("{id}: {} ({})", now.0, now.1));
                self.last.insert(id, now);
            }
        }
    }

    fn finish(&self) {
        self.overall.finish();
        for b in self.nodes.values() {
            b.finish();
        }
    }
}

/// Follows an operation until `watch_done`, rotating through the cluster's
/// nodes when polls fail; prints the end state; an error unless the goal
/// was reached.
async fn follow(api: &ApiArgs, start: UpdateOperation, goal: Goal) -> Result<()> {
    let apis = api.with_alternates().await;
    let mut at = 0;
    let path = op_path(&start.operation_id, "status");
    let began = Instant::now();
    let mut seen_rolling_back = start.status == OperationStatus::RollingBack;
    let mut bars = Bars::new(&start);
    let mut op = start;
    let mut failing_since: Option<Instant> = None;
    while !watch_done(goal, op.status, seen_rolling_back, began.elapsed()) {
        tokio::time::sleep(WATCH_POLL).await;
        match apis[at].get::<UpdateOperation>(&path).await {
            Ok(o) => {
                failing_since = None;
                seen_rolling_back |= o.status == OperationStatus::RollingBack;
                op = o;
                bars.show(&op, None);
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= WATCH_GIVE_UP {
                    bars.finish();
                    return Err(e).context(format!(
                        "operation {} could not be followed for {} s (no node answered); \
                         it goes on in the cluster: plexi update status {}",
                        op.operation_id,
                        WATCH_GIVE_UP.as_secs(),
                        op.operation_id
                    ));
                }
                let trouble = format!("{} did not answer, retrying: {e:#}", apis[at].api);
                at = (at + 1) % apis.len();
                bars.show(&op, Some(&trouble));
            }
        }
    }
    bars.finish();
    print_operation(&op);
    let wanted = match goal {
        Goal::Complete => OperationStatus::Completed,
        Goal::RollBack => OperationStatus::RolledBack,
    };
    if op.status == wanted {
        return Ok(());
    }
    // Node errors the halted reason does not already say.
    let halted = op.halted_reason.as_deref().unwrap_or("");
    let errors: Vec<String> = node_order(&op)
        .iter()
        .filter_map(|id| {
            let e = op.node_statuses.get(id)?.error_message.as_deref()?;
            (!halted.contains(e)).then(|| format!("{id}: {e}"))
        })
        .collect();
    bail!(
        "operation {} ended {}{}{}",
        op.operation_id,
        op.status,
        op.halted_reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default(),
        if errors.is_empty() {
            String::new()
        } else {
            format!(" ({})", errors.join("; "))
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_stops_at_final_statuses() {
        use OperationStatus as S;
        let t0 = Duration::ZERO;
        for s in [S::Planned, S::Running, S::RollingBack] {
            assert!(!watch_done(Goal::Complete, s, false, t0), "{s}");
        }
        for s in [S::Completed, S::Failed, S::RolledBack, S::Cancelled] {
            assert!(watch_done(Goal::Complete, s, false, t0), "{s}");
        }
        // A rollback of a failed operation is not over before it ran...
        assert!(!watch_done(Goal::RollBack, S::Failed, false, t0));
        assert!(!watch_done(Goal::RollBack, S::Completed, false, t0));
        assert!(!watch_done(Goal::RollBack, S::RollingBack, true, t0));
        // ...but is once it did, or when it never started.
        assert!(watch_done(Goal::RollBack, S::Failed, true, t0));
        assert!(watch_done(
            Goal::RollBack,
            S::Completed,
            false,
            ROLLBACK_START_GRACE
        ));
        assert!(watch_done(Goal::RollBack, S::RolledBack, false, t0));
    }

    #[test]
    fn plurals() {
        assert_eq!(plural(1, "node"), "1 node");
        assert_eq!(plural(3, "node"), "3 nodes");
    }
}
