//! Injecting and healing a [`Fault`] on a live [`Cluster`] (the glue of
//! `nemesis.rs`): signals for kill and pause, blackhole routes for
//! partitions, tc netem or else the fault file's `net_*` fields, the fault
//! file for clock skew and store faults, the ballast for a full disk.
//! Each returns what it did beyond the fault's own parameters (merged into
//! the history's `params`), e.g. `{"via": "fault_file"}`. [`heal_all`]
//! heals every kind on every node, whatever the schedule believes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value as Json};
use tokio::task::JoinHandle;

use crate::cluster::Cluster;
use crate::faults::Faults;
use crate::nemesis::Fault;
use crate::net::Net;

/// Most time a torn write's watcher waits for the worker's abort (the
/// heal, at the end of the fault's hold, stops it sooner).
pub const TORN_TIMEOUT: Duration = Duration::from_secs(60);
/// Poll period while waiting for the torn write's abort (well below the
/// supervisor's 0.5 s restart backoff, so the flag is cleared before the
/// next worker starts).
pub const TORN_POLL: Duration = Duration::from_millis(20);

fn net(cluster: &Cluster) -> Result<&Net> {
    cluster.net().ok_or(anyhow!(
        "this fault needs the netns mode (--net netns, as root)"
    ))
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rfind(')')
                    .and_then(|i| s[i + 1..].split_whitespace().next().map(str::to_string))
            })
            .is_some_and(|st| st != "Z" && st != "X")
}

/// Injects `fault`; on error nothing of it is left in place.
pub async fn inject(cluster: &Arc<Cluster>, fault: &Fault) -> Result<Json> {
    match fault {
        Fault::Kill { node } => cluster.kill(*node).await.map(|_| json!({})),
        Fault::Pause { node } => cluster.pause(*node).map(|_| json!({})),
        Fault::Partition(p) => {
            let net = net(cluster)?;
            let mut done = Vec::new();
            for &(a, b) in &p.cuts {
                if let Err(e) = net.cut(a, b) {
                    for &(x, y) in &done {
                        let _ = net.uncut(x, y);
                    }
                    return Err(e.into());
                }
                done.push((a, b));
            }
            Ok(json!({}))
        }
        Fault::Netem {
            node,
            delay_ms,
            loss_percent,
            duplicate_percent,
        } => {
            let tc = match cluster.net() {
                Some(net) => net.netem_add(*node, *delay_ms, *loss_percent, *duplicate_percent),
                None => {
                    return set_net_faults(cluster, *node, fault)
                        .map(|_| json!({"via": "fault_file", "why": "loopback"}))
                }
            };
            match tc {
                Ok(()) => {
                    cluster.set_netem_tc(*node, true);
                    Ok(json!({"via": "tc"}))
                }
                Err(e) => set_net_faults(cluster, *node, fault)
                    .map(|_| json!({"via": "fault_file", "why": e.to_string()})),
            }
        }
        Fault::ClockSkew { node, offset_ms } => {
            cluster.set_faults(*node, |f| f.clock_offset_ms = Some(*offset_ms))?;
            Ok(json!({}))
        }
        Fault::StoreErrors { node, percent } => {
            cluster.set_faults(*node, |f| f.store_write_error_percent = Some(*percent))?;
            Ok(json!({}))
        }
        Fault::DiskFull { node } => {
            net(cluster)?;
            let (ballast, free) = crate::disk::fill(&cluster.data_dir(*node))?;
            Ok(json!({"ballast_bytes": ballast, "free_bytes": free}))
        }
        Fault::TornWrite { node } => torn_write(cluster, *node).await,
    }
}

fn set_net_faults(cluster: &Cluster, node: usize, fault: &Fault) -> Result<()> {
    let Fault::Netem {
        delay_ms,
        loss_percent,
        duplicate_percent,
        ..
    } = fault
    else {
        bail!("not a netem fault");
    };
    cluster.set_faults(node, |f| {
        f.net_delay_ms = Some(*delay_ms);
        f.net_loss_percent = Some(*loss_percent);
        f.net_duplicate_percent = Some(*duplicate_percent);
    })?;
    Ok(())
}

/// The armed torn writes: node -> (its worker when armed, the watcher).
static TORN: Mutex<BTreeMap<usize, (u32, JoinHandle<()>)>> = Mutex::new(BTreeMap::new());

/// Arms the torn write and leaves a watcher: when the worker aborts on
/// its next object write, the watcher disarms the flag at once (before the
/// supervisor's 0.5 s restart backoff, so the next worker does not tear
/// again) and waits for the next worker to serve. Bounded by
/// [`TORN_TIMEOUT`]; the heal stops it in any case.
async fn torn_write(cluster: &Arc<Cluster>, node: usize) -> Result<Json> {
    let worker = cluster
        .worker_pid(node)
        .ok_or(anyhow!("{} has no worker", cluster.name(node)))?;
    cluster.set_faults(node, |f| f.store_torn_write = Some(true))?;
    let c = cluster.clone();
    let watcher = tokio::spawn(async move {
        let deadline = Instant::now() + TORN_TIMEOUT;
        while alive(worker) && Instant::now() < deadline {
            tokio::time::sleep(TORN_POLL).await;
        }
        if !alive(worker) {
            let _ = c.set_faults(node, |f| f.store_torn_write = None);
            let _ = c.await_restarted(node, Some(worker)).await;
        }
    });
    let old = TORN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(node, (worker, watcher));
    if let Some((_, h)) = old {
        h.abort();
    }
    Ok(json!({ "worker": worker }))
}

/// Disarms, stops the watcher, and if the worker did abort, waits for its
/// successor to serve.
async fn heal_torn_write(cluster: &Cluster, node: usize) -> Result<Json> {
    cluster.set_faults(node, |f| f.store_torn_write = None)?;
    let armed = TORN.lock().unwrap_or_else(|p| p.into_inner()).remove(&node);
    let Some((worker, watcher)) = armed else {
        return Ok(json!({}));
    };
    watcher.abort();
    let crashed = !alive(worker);
    if crashed {
        cluster.await_restarted(node, Some(worker)).await?;
    }
    Ok(json!({ "crashed": crashed }))
}

/// Heals `fault`.
pub async fn heal(cluster: &Cluster, fault: &Fault) -> Result<Json> {
    match fault {
        Fault::Kill { node } => cluster.launch(*node).await.map(|_| json!({})),
        Fault::Pause { node } => cluster.resume(*node).map(|_| json!({})),
        Fault::Partition(p) => {
            let net = net(cluster)?;
            let mut first = None;
            for &(a, b) in &p.cuts {
                if let Err(e) = net.uncut(a, b) {
                    first.get_or_insert(e);
                }
            }
            match first {
                None => Ok(json!({})),
                Some(e) => Err(e.into()),
            }
        }
        Fault::Netem { node, .. } => {
            if cluster.netem_tc(*node) {
                net(cluster)?.netem_del(*node)?;
                cluster.set_netem_tc(*node, false);
            }
            cluster.set_faults(*node, |f| {
                f.net_delay_ms = None;
                f.net_loss_percent = None;
                f.net_duplicate_percent = None;
            })?;
            Ok(json!({}))
        }
        Fault::ClockSkew { node, .. } => {
            cluster.set_faults(*node, |f| f.clock_offset_ms = None)?;
            Ok(json!({}))
        }
        Fault::StoreErrors { node, .. } => {
            cluster.set_faults(*node, |f| f.store_write_error_percent = None)?;
            Ok(json!({}))
        }
        Fault::DiskFull { node } => {
            crate::disk::drain(&cluster.data_dir(*node))?;
            Ok(json!({}))
        }
        Fault::TornWrite { node } => heal_torn_write(cluster, *node).await,
    }
}

/// Heals every kind everywhere: routes, netem qdiscs, fault files,
/// ballast, then processes (SIGCONT, restart). Each step runs even when
/// an earlier one failed; the first error is returned.
pub async fn heal_all(cluster: &Cluster) -> Result<()> {
    let mut first: Option<anyhow::Error> = None;
    let mut keep = |r: Result<()>| {
        if let Err(e) = r {
            first.get_or_insert(e);
        }
    };
    if let Some(net) = cluster.net() {
        keep(net.uncut_all().map_err(Into::into));
        for i in 0..cluster.len() {
            if cluster.netem_tc(i) {
                keep(net.netem_del(i).map_err(Into::into));
                cluster.set_netem_tc(i, false);
            }
            keep(crate::disk::drain(&cluster.data_dir(i)).map_err(Into::into));
        }
    }
    for i in 0..cluster.len() {
        keep(cluster.set_faults(i, |f| *f = Faults::default()).map(drop));
    }
    let armed: Vec<usize> = TORN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .copied()
        .collect();
    for node in armed {
        keep(heal_torn_write(cluster, node).await.map(drop));
    }
    keep(cluster.heal_all().await);
    match first {
        None => Ok(()),
        Some(e) => Err(e),
    }
}
