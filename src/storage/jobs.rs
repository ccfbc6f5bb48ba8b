//! Cluster-wide storage jobs (rebalance, cleanup, re-encryption). The node that receives the
//! POST starts its own part and asks every reachable node to start theirs;
//! any node answers a job's status by asking every node for its part.
//! Parts live in memory on each node, the newest [`MAX_JOBS`] kept.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use futures::stream::{FuturesUnordered, StreamExt};
use plexi_api::model::{Job, JobPart};

use super::reencrypt;
use super::repair::{self, Progress};
use super::wire::{JobPartStatus, StoreCall, StoreReply};
use super::{Storage, StorageError};
use plexi_util::clock::{rfc3339_ms, wall_ms};
use plexi_util::types::{JobKind, JobStatus};

/// Bound on the job parts a node remembers.
pub const MAX_JOBS: usize = 64;

pub struct LocalJob {
    kind: JobKind,
    started_ms: u64,
    progress: Progress,
    outcome: Mutex<Option<(u64, Result<(), String>)>>,
}

impl LocalJob {
    fn status(&self) -> JobPartStatus {
        let outcome = self.outcome.lock().expect("job lock").clone();
        let total = self.progress.total.load(Ordering::Relaxed).max(1);
        let examined = self.progress.examined.load(Ordering::Relaxed);
        let (status, finished_ms, error) = match outcome {
            None => (JobStatus::Running, None, None),
            Some((at, Ok(()))) => (JobStatus::Completed, Some(at), None),
            Some((at, Err(e))) => (JobStatus::Failed, Some(at), Some(e)),
        };
        JobPartStatus {
            kind: self.kind,
            status,
            progress: if status == JobStatus::Running {
                (examined as f64 * 100.0 / total as f64).min(99.0)
            } else {
                100.0
            },
            started_ms: self.started_ms,
            finished_ms,
            moved_objects: self.progress.moved_objects.load(Ordering::Relaxed),
            moved_bytes: self.progress.moved_bytes.load(Ordering::Relaxed),
            removed: self.progress.removed.load(Ordering::Relaxed),
            repaired: self.progress.repaired.load(Ordering::Relaxed),
            error,
            examined,
            total: self.progress.total.load(Ordering::Relaxed),
            reencrypted: self.progress.reencrypted.load(Ordering::Relaxed),
        }
    }
}

/// A job event for the node's audit log: a cluster job started here (by
/// `actor`), or this node's part of one ended.
#[derive(Clone, Debug)]
pub enum JobEvent {
    Started {
        job_id: String,
        kind: JobKind,
        actor: String,
    },
    PartFinished {
        job_id: String,
        kind: JobKind,
        status: JobPartStatus,
    },
}

/// Called for every [`JobEvent`]; set once by the node (it appends to the
/// audit log). Must not block.
pub type JobHook = Box<dyn Fn(JobEvent) + Send + Sync>;

#[derive(Default)]
pub struct Jobs {
    parts: Mutex<BTreeMap<String, Arc<LocalJob>>>,
    hook: std::sync::OnceLock<JobHook>,
}

impl Jobs {
    /// Sets the hook job events go to (once; false if already set).
    pub fn on_event(&self, hook: JobHook) -> bool {
        self.hook.set(hook).is_ok()
    }

    fn emit(&self, event: JobEvent) {
        if let Some(h) = self.hook.get() {
            h(event);
        }
    }

    pub fn status(&self, job_id: &str) -> Option<JobPartStatus> {
        self.parts
            .lock()
            .expect("jobs lock")
            .get(job_id)
            .map(|j| j.status())
    }

    /// Starts this node's part of `job_id` (idempotent).
    pub fn start(&self, storage: &Arc<Storage>, job_id: &str, kind: JobKind) {
        let job = {
            let mut parts = self.parts.lock().expect("jobs lock");
            if parts.contains_key(job_id) {
                return;
            }
            while parts.len() >= MAX_JOBS {
                let oldest = parts
                    .iter()
                    .min_by_key(|(_, j)| j.started_ms)
                    .map(|(k, _)| k.clone())
                    .expect("non-empty");
                parts.remove(&oldest);
            }
            let job = Arc::new(LocalJob {
                kind,
                started_ms: wall_ms(),
                progress: Progress::default(),
                outcome: Mutex::new(None),
            });
            parts.insert(job_id.to_string(), job.clone());
            job
        };
        let storage = storage.clone();
        let job_id = job_id.to_string();
        tokio::spawn(async move {
            let res = match job.kind {
                JobKind::Rebalance => repair::rebalance(&storage, &job.progress).await,
                JobKind::Cleanup => repair::cleanup(&storage, &job.progress).await,
                JobKind::Reencrypt => reencrypt::run(&storage, &job.progress).await,
            };
            tracing::info!(%job_id, kind = %job.kind, ok = res.is_ok(), "storage job part finished");
            *job.outcome.lock().expect("job lock") = Some((wall_ms(), res));
            storage.jobs.emit(JobEvent::PartFinished {
                job_id,
                kind: job.kind,
                status: job.status(),
            });
        });
    }
}

/// Starts a job on every reachable node; returns its first status.
pub async fn start_cluster_job(
    s: &Arc<Storage>,
    kind: JobKind,
    actor: &str,
) -> Result<Job, StorageError> {
    let job_id = uuid::Uuid::new_v4().to_string();
    s.jobs.start(s, &job_id, kind);
    tracing::info!(%job_id, %kind, actor, "storage job started");
    s.jobs.emit(JobEvent::Started {
        job_id: job_id.clone(),
        kind,
        actor: actor.to_string(),
    });
    let peers: Vec<_> = s.peers();
    let mut calls: FuturesUnordered<_> = peers
        .iter()
        .map(|m| {
            let (s, m, job_id) = (s.clone(), m.clone(), job_id.clone());
            async move {
                let r = s
                    .call(&m.peer_id, StoreCall::StartJob { job_id, kind })
                    .await;
                (m, r)
            }
        })
        .collect();
    while let Some((m, r)) = calls.next().await {
        if !matches!(r, Ok(StoreReply::JobStarted)) {
            tracing::warn!(node_id = %m.name, "could not start its part of the job");
        }
    }
    job_status(s, &job_id).await
}

/// A job's status, assembled from every node's part.
pub async fn job_status(s: &Arc<Storage>, job_id: &str) -> Result<Job, StorageError> {
    let members: Vec<_> = s.members().into_iter().filter(|m| m.reachable()).collect();
    let mut asks: FuturesUnordered<_> = members
        .iter()
        .map(|m| {
            let (s, m, job_id) = (s.clone(), m.clone(), job_id.to_string());
            async move {
                let r = s.call(&m.peer_id, StoreCall::JobStatus { job_id }).await;
                (m, r)
            }
        })
        .collect();
    let mut parts: Vec<(String, JobPartStatus)> = Vec::new();
    while let Some((m, r)) = asks.next().await {
        if let Ok(StoreReply::Job(Some(p))) = r {
            parts.push((m.name.clone(), p));
        }
    }
    if parts.is_empty() {
        return Err(StorageError::NoSuchJob {
            job_id: job_id.to_string(),
        });
    }
    parts.sort_by(|a, b| a.0.cmp(&b.0));
    let status = if parts.iter().any(|(_, p)| p.status == JobStatus::Failed) {
        JobStatus::Failed
    } else if parts.iter().any(|(_, p)| p.status == JobStatus::Running) {
        JobStatus::Running
    } else {
        JobStatus::Completed
    };
    let n = parts.len() as f64;
    let finished = parts
        .iter()
        .map(|(_, p)| p.finished_ms)
        .collect::<Option<Vec<u64>>>();
    Ok(Job {
        job_id: job_id.to_string(),
        kind: parts[0].1.kind,
        status,
        progress_percentage: (parts.iter().map(|(_, p)| p.progress).sum::<f64>() / n * 10.0)
            .round()
            / 10.0,
        started_at: rfc3339_ms(parts.iter().map(|(_, p)| p.started_ms).min().unwrap_or(0)),
        completed_at: finished.and_then(|f| f.into_iter().max()).map(rfc3339_ms),
        moved_objects: parts.iter().map(|(_, p)| p.moved_objects).sum(),
        moved_bytes: parts.iter().map(|(_, p)| p.moved_bytes).sum(),
        removed_replicas: parts.iter().map(|(_, p)| p.removed).sum(),
        repaired_replicas: parts.iter().map(|(_, p)| p.repaired).sum(),
        examined_objects: parts.iter().map(|(_, p)| p.examined).sum(),
        total_objects: parts.iter().map(|(_, p)| p.total).sum(),
        reencrypted_objects: parts.iter().map(|(_, p)| p.reencrypted).sum(),
        error: parts
            .iter()
            .find_map(|(n, p)| p.error.as_ref().map(|e| format!("{n}: {e}"))),
        nodes: parts
            .into_iter()
            .map(|(node_id, p)| JobPart {
                node_id: node_id.into(),
                status: p.status,
                progress_percentage: (p.progress * 10.0).round() / 10.0,
            })
            .collect(),
    })
}
