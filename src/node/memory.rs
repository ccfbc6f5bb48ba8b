//! The node's process memory: the allocator's bound on arenas, freed heap
//! given back to the OS, and the resident-set gauges at `/metrics`
//! (`plexi_process_resident_bytes`, worker and supervisor), which
//! `plexi bench` reports beside its throughput.
//!
//! Why: glibc's malloc gives every thread that allocates its own arena (up
//! to 8 per core) and keeps each arena's peak. A burst of 1 MiB puts
//! spreads bodies over tokio's workers and the blocking pool's threads,
//! and the worker kept that peak resident when idle (issue 12: 750 MiB to
//! 1.1 GiB after 1 MiB puts). [`MALLOC_ARENAS`] bounds the arenas, and the
//! trim task returns free pages every [`TRIM_EVERY`].

use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// glibc malloc arenas per process (its default is 8 per core).
pub const MALLOC_ARENAS: i32 = 2;
/// Allocations of this size or more are mapped on their own and unmapped
/// when freed (glibc's threshold is dynamic: it rises to the largest block
/// freed, up to 32 MiB, so 1 MiB bodies end up on the heap and the heap's
/// peak stays resident). Measured (docs/BENCHMARKS.md): peak per node
/// during 1 MiB puts 194-324 MiB without it, 138-151 MiB with it, at about
/// 30 % of the 1 MiB put rate.
pub const MMAP_THRESHOLD_BYTES: i32 = 512 * 1024;
/// How often freed heap memory is given back to the OS (`malloc_trim`).
pub const TRIM_EVERY: Duration = Duration::from_secs(5);

/// Bounds the allocator's arenas and fixes its mmap threshold; call first
/// thing in the process, before threads start. Elsewhere than glibc:
/// nothing to do.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt(3) takes plain integers; called before other threads
    // allocate.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    }
}

/// Gives free heap pages back to the OS.
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim(3) has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Starts the trim task (the trim itself runs on the blocking pool: it
/// walks the arenas under their locks).
pub fn spawn_trim() {
    tokio::spawn(async {
        let mut every = tokio::time::interval(TRIM_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    });
}

/// The resident set of process `pid` (`None`: this one), from
/// `/proc/PID/statm`; `None` where that cannot be read.
pub fn resident_bytes(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/statm"),
        None => "/proc/self/statm".to_string(),
    };
    let statm = std::fs::read_to_string(path).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_bytes())
}

fn page_bytes() -> u64 {
    // SAFETY: sysconf(3) has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ProcessLabels {
    process: &'static str,
}

/// `plexi_process_resident_bytes`, read at each scrape: the worker's and
/// its supervisor's (the worker's parent) resident sets.
#[derive(Debug)]
pub struct MemoryGauges;

impl Collector for MemoryGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut m = encoder.encode_descriptor(
            "plexi_process_resident_bytes",
            "Resident memory of this node's processes (the worker, and its supervisor), bytes",
            None,
            MetricType::Gauge,
        )?;
        let supervisor = resident_bytes(Some(std::os::unix::process::parent_id()));
        for (process, bytes) in [("worker", resident_bytes(None)), ("supervisor", supervisor)] {
            if let Some(b) = bytes {
                ConstGauge::new(b as i64).encode(m.encode_family(&ProcessLabels { process })?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resident_set_is_read_from_proc() {
        let mine = resident_bytes(None).expect("/proc/self/statm");
        // A test binary holds at least a page and less than 16 GiB.
        assert!((4096..16 << 30).contains(&mine), "{mine}");
        let parent = resident_bytes(Some(std::os::unix::process::parent_id()));
        assert!(parent.is_some_and(|b| b > 0));
        assert_eq!(resident_bytes(Some(u32::MAX)), None, "no such process");
    }
}
