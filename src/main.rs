//! The `plexi` binary: argument parsing and exit codes only; everything
//! else is the `plexi` library (`src/lib.rs`). `plexi node`
//! runs the supervisor (`supervisor/`), which runs the node as `plexi worker`
//! (hidden; `node/`); every other command is a client of any node's REST API
//! (`cli/`). anyhow lives only here and in `cli/`, at the edge.

use plexi::{cli, config, node, supervisor};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "plexi", version = plexi_util::version::VERSION, about = "A self-managing storage cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node. Without --bootstrap it starts a new cluster.
    Node(NodeArgs),
    /// The node itself, started by `plexi node` (the supervisor).
    #[command(hide = true)]
    Worker(NodeArgs),
    /// List the cluster's nodes as any node sees them.
    Nodes {
        #[command(flatten)]
        api: cli::ApiArgs,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// A node's health checks, asked through any node.
    Health {
        node_id: String,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// Store an object (from a file or standard input) through any node.
    Put {
        #[command(flatten)]
        args: cli::objects::PutArgs,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// Read an object; its blake3 is checked against the ETag.
    Get {
        #[command(flatten)]
        args: cli::objects::GetArgs,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// Delete an object.
    Rm {
        data_id: String,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// An object's metadata and where each replica is.
    Info {
        data_id: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// List the cluster's objects (all pages), optionally by id prefix.
    Ls {
        #[command(flatten)]
        args: cli::objects::LsArgs,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// Cluster storage: overview, nodes, distribution, rebalance, cleanup.
    Storage {
        #[command(subcommand)]
        cmd: cli::storage::StorageCmd,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// Load generator against node APIs, or the bare engine (--engine-baseline).
    Bench(cli::bench::BenchArgs),
    /// Signed releases: keygen, publish, list.
    Release {
        #[command(subcommand)]
        cmd: cli::release::ReleaseCmd,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// Cluster updates: plan, execute, status, rollback, active, history.
    Update {
        #[command(subcommand)]
        cmd: cli::update::UpdateCmd,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// Cluster maintenance mode: on, off, status.
    Maintenance {
        #[command(subcommand)]
        cmd: cli::maintenance::MaintenanceCmd,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// The audit log of every change, newest first.
    Audit {
        #[command(subcommand)]
        cmd: Option<cli::audit::AuditCmd>,
        #[command(flatten)]
        args: cli::audit::AuditArgs,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// The cluster's active alerts; --all adds recently resolved ones.
    Alerts {
        #[command(flatten)]
        args: cli::alerts::AlertsArgs,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// API tokens: create one (printed once, with its config line).
    Token {
        #[command(subcommand)]
        cmd: cli::token::TokenCmd,
    },
}

#[derive(clap::Args, Debug)]
struct NodeArgs {
    /// Config file (default: config/clustering.yml when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Unique node name (default: derived from the peer id).
    #[arg(long)]
    name: Option<String>,
    /// libp2p listen multiaddr, e.g. /ip4/0.0.0.0/tcp/7000.
    #[arg(long)]
    listen: Option<String>,
    /// REST API address, e.g. 0.0.0.0:8080.
    #[arg(long)]
    api: Option<String>,
    /// Address of any live member (peer id optional); repeatable.
    #[arg(long)]
    bootstrap: Vec<String>,
    #[arg(long)]
    region: Option<String>,
    #[arg(long)]
    zone: Option<String>,
    #[arg(long)]
    capacity_gb: Option<f64>,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PLEXI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,libp2p=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

impl NodeArgs {
    fn split(self) -> (Option<PathBuf>, config::Overrides) {
        let overrides = config::Overrides {
            data_dir: self.data_dir,
            name: self.name,
            listen: self.listen,
            api: self.api,
            bootstrap: self.bootstrap,
            region: self.region,
            zone: self.zone,
            capacity_gb: self.capacity_gb,
        };
        (self.config, overrides)
    }
}

fn main() -> ExitCode {
    node::memory::limit_arenas();
    let cli = Cli::parse();
    match cli.command {
        // The supervisor builds its own current-thread runtime on this thread.
        Command::Node(a) => supervise(a),
        command => run(command),
    }
}

fn supervise(a: NodeArgs) -> ExitCode {
    init_tracing();
    // `Cli` has no global options, so argv is `plexi node ARGS...`: the
    // worker gets ARGS exactly as given.
    let worker_args: Vec<std::ffi::OsString> = std::env::args_os().skip(2).collect();
    let (config_path, overrides) = a.split();
    match supervisor::run(config_path, overrides, worker_args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(supervisor::SupervisorError::Config(e)) => {
            eprintln!("error: configuration: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match command {
        Command::Node(_) => unreachable!("`plexi node` is the supervisor, run from main"),
        Command::Worker(a) => {
            init_tracing();
            let (config_path, overrides) = a.split();
            match runtime.block_on(node::run(config_path, overrides)) {
                Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
                Err(node::NodeError::Config(e)) => {
                    eprintln!("error: configuration: {e}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        client => report(runtime.block_on(client_command(client))),
    }
}

/// Runs one of the client commands (all but `node` and `worker`).
async fn client_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Node(_) | Command::Worker(_) => unreachable!("not a client command"),
        Command::Nodes { api, json } => cli::nodes::nodes(&api, json).await,
        Command::Health { node_id, api } => cli::nodes::health(&api, &node_id).await,
        Command::Put { args, api } => cli::objects::put(&api, &args).await,
        Command::Get { args, api } => cli::objects::get(&api, &args).await,
        Command::Rm { data_id, api } => cli::objects::rm(&api, &data_id).await,
        Command::Info { data_id, json, api } => cli::objects::info(&api, &data_id, json).await,
        Command::Ls { args, api } => cli::objects::ls(&api, &args).await,
        Command::Storage { cmd, api } => cli::storage::storage(&api, &cmd).await,
        Command::Bench(args) => cli::bench::run(args).await,
        Command::Release { cmd, api } => cli::release::command(&api, cmd).await,
        Command::Update { cmd, api } => cli::update::update(&api, &cmd).await,
        Command::Maintenance { cmd, api } => cli::maintenance::maintenance(&api, &cmd).await,
        Command::Audit {
            cmd: Some(cli::audit::AuditCmd::Verify { json }),
            api,
            ..
        } => cli::audit::verify(&api, json).await,
        Command::Audit {
            cmd: None,
            args,
            api,
        } => cli::audit::audit(&api, &args).await,
        Command::Alerts { args, api } => cli::alerts::alerts(&api, &args).await,
        Command::Token { cmd } => cli::token::command(&cmd),
    }
}

fn report(res: anyhow::Result<()>) -> ExitCode {
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
