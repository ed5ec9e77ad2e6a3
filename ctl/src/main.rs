//! `anygatectl`: the operator CLI for an anygate cluster.

mod client;
mod cmd;
mod keys;
mod output;

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::time::Duration;

/// Manage an anygate cluster: membership, drains, peers, pools, settings, audit.
///
/// Any node accepts any command: writes reach the Raft leader and reads are
/// linearizable unless --stale is given. Give several --endpoint addresses
/// (or a comma-separated list) and anygatectl uses the first that answers.
#[derive(Parser)]
#[command(
    name = "anygatectl",
    version,
    propagate_version = true,
    args_override_self = true
)]
struct Cli {
    /// Node gRPC address(es), host:port, comma-separated.
    #[arg(
        long,
        short = 'e',
        global = true,
        env = "ANYGATE_ENDPOINT",
        value_delimiter = ',',
        default_value = "127.0.0.1:7400"
    )]
    endpoint: Vec<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Who you are, as recorded in the audit log (default: $USER).
    #[arg(long, global = true, env = "ANYGATE_OPERATOR")]
    operator: Option<String>,
    /// Give up after this long (e.g. 10s, 1m).
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Cluster membership and status.
    #[command(subcommand)]
    Cluster(cmd::cluster::ClusterCmd),
    /// Per-node actions: drain and undrain.
    #[command(subcommand)]
    Node(cmd::node::NodeCmd),
    /// Client peers (users' devices).
    #[command(subcommand)]
    Peer(cmd::peer::PeerCmd),
    /// Address pools that client tunnel addresses are allocated from.
    #[command(subcommand)]
    Pool(cmd::pool::PoolCmd),
    /// Gateway settings shared by every node.
    #[command(subcommand)]
    Settings(cmd::settings::SettingsCmd),
    /// Who changed what, and when.
    #[command(subcommand)]
    Audit(cmd::audit::AuditCmd),
}

pub struct Ctx {
    pub client: client::Client,
    pub json: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let actor = cli
        .operator
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "anygatectl".into());
    let ctx = Ctx {
        client: client::Client::new(cli.endpoint, actor, cli.timeout),
        json: cli.json,
    };
    let res = match cli.cmd {
        Cmd::Cluster(c) => c.run(&ctx).await,
        Cmd::Node(c) => c.run(&ctx).await,
        Cmd::Peer(c) => c.run(&ctx).await,
        Cmd::Pool(c) => c.run(&ctx).await,
        Cmd::Settings(c) => c.run(&ctx).await,
        Cmd::Audit(c) => c.run(&ctx).await,
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("anygatectl: {}", cmd::describe(&e));
            ExitCode::from(cmd::exit_code(&e))
        }
    }
}
