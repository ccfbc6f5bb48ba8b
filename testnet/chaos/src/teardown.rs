//! What must be undone when the harness exits on a signal: the node
//! processes it started (their pids, registered by `cluster.rs`) and the
//! netns plan in use (registered by `net.rs`). [`on_signal`] waits for
//! Ctrl-C or SIGTERM, kills the processes, removes the namespaces, links
//! and mounts, and exits 130. Normal exits clean up through `Drop`.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::net::Plan;

/// Exit code after a signal.
pub const SIGNAL_EXIT: i32 = 130;
/// How long killed processes get to vanish before the namespaces go.
pub const KILL_WAIT: Duration = Duration::from_secs(5);

static PIDS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());
static NET: Mutex<Option<Plan>> = Mutex::new(None);

pub fn register_pid(pid: u32) {
    PIDS.lock().unwrap_or_else(|p| p.into_inner()).insert(pid);
}

pub fn forget_pid(pid: u32) {
    PIDS.lock().unwrap_or_else(|p| p.into_inner()).remove(&pid);
}

pub fn register_net(plan: Plan) {
    *NET.lock().unwrap_or_else(|p| p.into_inner()) = Some(plan);
}

pub fn forget_net() {
    *NET.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

fn gone(pid: u32) -> bool {
    // SAFETY: waitpid(2) with WNOHANG reaps our own child if it exited.
    unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Kills every registered process (each supervisor; its worker dies with
/// it through PDEATHSIG) and removes the registered netns plan.
pub fn emergency() {
    let pids: Vec<u32> = PIDS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .copied()
        .collect();
    for &pid in &pids {
        // SAFETY: kill(2) on a process we started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let deadline = Instant::now() + KILL_WAIT;
    while !pids.iter().all(|&p| gone(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let plan = NET.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(plan) = plan {
        for p in crate::net::remove_all(&plan) {
            eprintln!("netns cleanup: {p}");
        }
    }
}

/// Waits for Ctrl-C or SIGTERM, cleans up, exits 130.
pub async fn on_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return;
    };
    let Ok(mut int) = signal(SignalKind::interrupt()) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("signal: stopping the nodes and removing the namespaces");
    tokio::task::spawn_blocking(emergency).await.ok();
    std::process::exit(SIGNAL_EXIT);
}
