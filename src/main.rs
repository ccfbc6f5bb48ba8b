//! The `plexi` binary: `plexi node` runs a node; the other commands are
//! clients of any node's REST API. anyhow lives only here, at the edge.

mod bench;
mod cli;
mod config;
mod health;
mod node;
mod release;
mod storage;
mod tokens;
mod updates;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "plexi", version = node::VERSION, about = "A self-managing storage cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node. Without --bootstrap it starts a new cluster.
    Node(NodeArgs),
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
        args: cli::PutArgs,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// Read an object; its blake3 is checked against the ETag.
    Get {
        #[command(flatten)]
        args: cli::GetArgs,
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
    /// Cluster storage: overview, nodes, distribution, rebalance, cleanup.
    Storage {
        #[command(subcommand)]
        cmd: cli::StorageCmd,
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// Load generator against node APIs, or the bare engine (--engine-baseline).
    Bench(bench::BenchArgs),
    /// Signed releases: keygen, publish, list.
    Release {
        #[command(subcommand)]
        cmd: release::ReleaseCmd,
        #[command(flatten)]
        api: cli::ApiArgs,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    match cli.command {
        Command::Node(a) => {
            init_tracing();
            let overrides = config::Overrides {
                data_dir: a.data_dir,
                name: a.name,
                listen: a.listen,
                api: a.api,
                bootstrap: a.bootstrap,
                region: a.region,
                zone: a.zone,
                capacity_gb: a.capacity_gb,
            };
            match runtime.block_on(node::run(a.config, overrides)) {
                Ok(()) => ExitCode::SUCCESS,
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
        Command::Nodes { api, json } => report(runtime.block_on(cli::nodes(&api, json))),
        Command::Health { node_id, api } => report(runtime.block_on(cli::health(&api, &node_id))),
        Command::Put { args, api } => report(runtime.block_on(cli::put(&api, &args))),
        Command::Get { args, api } => report(runtime.block_on(cli::get(&api, &args))),
        Command::Rm { data_id, api } => report(runtime.block_on(cli::rm(&api, &data_id))),
        Command::Info { data_id, json, api } => {
            report(runtime.block_on(cli::info(&api, &data_id, json)))
        }
        Command::Storage { cmd, api } => report(runtime.block_on(cli::storage(&api, &cmd))),
        Command::Bench(args) => report(runtime.block_on(bench::run(args))),
        Command::Release { cmd, api } => report(runtime.block_on(release::command(&api, cmd))),
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
