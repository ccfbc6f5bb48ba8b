//! `plexi-chaos`: argument parsing, the profiles, exit codes. The run
//! itself is `runner::run`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use plexi_chaos::net::NetMode;
use plexi_chaos::runner::{kinds_for, run, RunSpec};
use plexi_chaos::{cluster, runner, update};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Profile {
    /// About a minute of faults; at most 3 minutes in all.
    Short,
    /// `--duration` of faults (default 10 minutes).
    Long,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Net {
    /// One network namespace per node on a bridge (needs root): adds
    /// partitions and the full disk.
    Netns,
    /// 127.0.0.1: process faults and fault-file faults only.
    Loopback,
}

#[derive(Parser, Debug)]
#[command(about = "Seeded fault injection against a real plexi cluster, with history checkers")]
struct Args {
    #[arg(long, required_unless_present = "check")]
    seed: Option<u64>,
    /// Check an existing history file instead of running (prints the summary).
    #[arg(long)]
    check: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "short")]
    profile: Profile,
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Concurrent client tasks.
    #[arg(long, default_value_t = 6)]
    clients: usize,
    /// Time under faults (long profile; the short one is fixed).
    #[arg(long, value_parser = parse_secs)]
    duration: Option<Duration>,
    /// Output directory (history.jsonl, summary.json, nodes/).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The plexi binary; default: target/debug/plexi beside this binary.
    #[arg(long)]
    plexi: Option<PathBuf>,
    /// Do not run a self-update of the cluster under the faults.
    #[arg(long)]
    no_update: bool,
    /// The binary the update rolls out (another version; default: the
    /// workspace's build of plexi 0.1.1 in target/alt, brought up to date).
    #[arg(long)]
    update_binary: Option<PathBuf>,
    /// Where the nodes run; default netns as root, loopback otherwise.
    #[arg(long, value_enum)]
    net: Option<Net>,
    /// Most faults at once (default: 2 short, 3 long).
    #[arg(long)]
    concurrency: Option<usize>,
}

/// What a long run may take beyond its time under faults, the sum of the
/// bounds of its other phases: the start ([`cluster::SERVE_TIMEOUT`] and
/// as much again for publishing the release), the update's end
/// ([`update::FINAL_TIMEOUT`]), heal and repair ([`runner::HEAL_TIMEOUT`],
/// [`runner::REPAIR_TIMEOUT`]) and the final reads
/// ([`runner::FINAL_READS_ALLOWANCE`]).
const RUN_OVERHEAD_LONG: Duration = Duration::from_secs(
    2 * cluster::SERVE_TIMEOUT.as_secs()
        + update::FINAL_TIMEOUT.as_secs()
        + runner::HEAL_TIMEOUT.as_secs()
        + runner::REPAIR_TIMEOUT.as_secs()
        + runner::FINAL_READS_ALLOWANCE.as_secs(),
);
/// The short profile's whole run stays within 5 minutes (the CI promise):
/// its phases share what is left after the faults, and a run whose phases
/// all take their worst case fails as hung (exit 3) rather than overrun.
/// Typical runs take 2-3 minutes. The update binary is built before either
/// clock starts (a compile is not the harness hanging).
const RUN_OVERHEAD_SHORT: Duration = Duration::from_secs(240);

fn parse_secs(s: &str) -> Result<Duration, String> {
    let s = s.trim_end_matches('s');
    s.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| format!("seconds: {e}"))
}

/// `plexi` beside our own binary (cargo puts both in one target dir).
fn default_plexi() -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    let p = me.parent()?.join("plexi");
    p.exists().then_some(p)
}

fn check_file(path: &std::path::Path) -> std::process::ExitCode {
    match plexi_chaos::history::read(path) {
        Ok(events) => {
            let s = plexi_chaos::summary::summarize(&events, 0, "check", 0, true);
            print!("{}", s.render());
            if s.violations > 0 {
                std::process::ExitCode::from(1)
            } else {
                std::process::ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            std::process::ExitCode::from(2)
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(path) = &args.check {
        return check_file(path);
    }
    let seed = args.seed.unwrap_or_default();
    let Some(plexi) = args.plexi.clone().or_else(default_plexi) else {
        eprintln!("no plexi binary: build it (cargo build --bin plexi) or pass --plexi PATH");
        return std::process::ExitCode::from(2);
    };
    if args.nodes < 3 {
        eprintln!("--nodes must be at least 3 (replication factor 3)");
        return std::process::ExitCode::from(2);
    }
    let (profile, duration, gap_ms, hold_ms, concurrency) = match args.profile {
        Profile::Short => (
            "short",
            Duration::from_secs(60),
            (1000, 4000),
            (2000, 8000),
            2,
        ),
        Profile::Long => (
            "long",
            args.duration.unwrap_or(Duration::from_secs(600)),
            (500, 6000),
            (1000, 15000),
            3,
        ),
    };
    let net = match args.net {
        Some(Net::Netns) => NetMode::Netns,
        Some(Net::Loopback) => NetMode::Loopback,
        None => NetMode::default_for_user(),
    };
    if net == NetMode::Netns && !plexi_chaos::net::is_root() {
        eprintln!("--net netns needs root (network namespaces, tmpfs mounts)");
        return std::process::ExitCode::from(2);
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("plexi-chaos-{seed}")));
    // Built (or found up to date) before the run and its watchdog start.
    let update_binary = match (&args.update_binary, args.no_update) {
        (Some(b), _) => Some(b.clone()),
        (None, true) => None,
        (None, false) => match plexi_chaos::update::target_binary() {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("the update workload's binary: {e:#}");
                return std::process::ExitCode::from(2);
            }
        },
    };
    let spec = RunSpec {
        seed,
        profile: profile.to_string(),
        nodes: args.nodes,
        clients: args.clients,
        duration,
        gap_ms,
        hold_ms,
        plexi,
        out: out.clone(),
        update: !args.no_update,
        update_binary,
        net,
        kinds: kinds_for(net),
        concurrency: args.concurrency.unwrap_or(concurrency).max(1),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    rt.spawn(plexi_chaos::teardown::on_signal());
    // A harness that hangs is a failure too, not a CI job that never ends.
    let budget = duration
        + match args.profile {
            Profile::Short => RUN_OVERHEAD_SHORT,
            Profile::Long => RUN_OVERHEAD_LONG,
        };
    let outcome = rt.block_on(async { tokio::time::timeout(budget, run(spec)).await });
    let Ok(outcome) = outcome else {
        eprintln!("run did not end within {budget:?} (seed {seed}): the harness hung; history so far in {}", out.display());
        plexi_chaos::teardown::emergency();
        return std::process::ExitCode::from(3);
    };
    match outcome {
        Ok(summary) => {
            print!("{}", summary.render());
            println!("history: {}", out.join("history.jsonl").display());
            if summary.violations > 0 {
                println!("VIOLATIONS found; replay with --seed {seed}");
                std::process::ExitCode::from(1)
            } else {
                std::process::ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("run failed (seed {seed}): {e:#}");
            std::process::ExitCode::from(3)
        }
    }
}
