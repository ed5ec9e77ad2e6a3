//! `anygatectl`: the operator CLI for an anygate cluster.

mod client;
mod cmd;
mod keys;
mod output;

use anygate_proto::tls::{Paths, Tls};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
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
    /// Who you are in the audit log, on an --insecure-dev node only (with
    /// TLS your certificate names you) [default: $USER].
    #[arg(long, global = true, env = "ANYGATE_OPERATOR")]
    operator: Option<String>,
    /// CA bundle the nodes' certificates must chain to.
    #[arg(long, global = true, env = "ANYGATE_CA")]
    ca: Option<PathBuf>,
    /// Your certificate (from `anygatectl pki issue`); its name is recorded
    /// in the audit log and its role decides what you may do.
    #[arg(long, global = true, env = "ANYGATE_CERT")]
    cert: Option<PathBuf>,
    /// Your certificate's private key.
    #[arg(long, global = true, env = "ANYGATE_KEY")]
    key: Option<PathBuf>,
    /// Talk plaintext to a node started with --insecure-dev (a lab only).
    #[arg(long, global = true, env = "ANYGATE_INSECURE_DEV")]
    insecure_dev: bool,
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
    /// Access policies: which destinations each group of peers may reach.
    #[command(subcommand)]
    Policy(cmd::policy::PolicyCmd),
    /// Identity-provider groups: what their members may enroll and do.
    #[command(subcommand)]
    Idp(cmd::idp::IdpCmd),
    /// Who changed what, and when.
    #[command(subcommand)]
    Audit(cmd::audit::AuditCmd),
    /// Back up the inventory to a file, restore it into a fresh cluster.
    #[command(subcommand)]
    Backup(cmd::backup::BackupCmd),
    /// The cluster's certificates: a CA, node and operator certificates.
    #[command(subcommand)]
    Pki(cmd::pki::PkiCmd),
    /// Signed client configs: a signing key, and checking a config.
    #[command(subcommand)]
    Config(cmd::config::ConfigCmd),
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
    // Local commands need no connection.
    let cmd = match cli.cmd {
        Cmd::Pki(c) if c.is_local() => return finish(c.run(cli.json)),
        Cmd::Config(c) => return finish(c.run(cli.json)),
        other => other,
    };
    let tls =
        match (cli.ca, cli.cert, cli.key) {
            (Some(ca), Some(cert), Some(key)) if !cli.insecure_dev => {
                match Tls::load(Paths { ca, cert, key }) {
                    Ok(t) => Some(t),
                    Err(e) => return finish(Err(tonic::Status::invalid_argument(e.to_string()))),
                }
            }
            (None, None, None) if cli.insecure_dev => None,
            (None, None, None) => return finish(Err(tonic::Status::invalid_argument(
                "no client certificate: give --ca, --cert and --key (or ANYGATE_CA, ANYGATE_CERT, \
                 ANYGATE_KEY; `anygatectl pki init` makes them), or --insecure-dev for a node \
                 started with --insecure-dev",
            ))),
            _ if cli.insecure_dev => {
                return finish(Err(tonic::Status::invalid_argument(
                    "--insecure-dev and --ca/--cert/--key exclude each other",
                )))
            }
            _ => {
                return finish(Err(tonic::Status::invalid_argument(
                    "--ca, --cert and --key go together",
                )))
            }
        };
    let ctx = Ctx {
        client: client::Client::new(cli.endpoint, tls, actor, cli.timeout),
        json: cli.json,
    };
    let res = match cmd {
        Cmd::Cluster(c) => c.run(&ctx).await,
        Cmd::Node(c) => c.run(&ctx).await,
        Cmd::Peer(c) => c.run(&ctx).await,
        Cmd::Pool(c) => c.run(&ctx).await,
        Cmd::Settings(c) => c.run(&ctx).await,
        Cmd::Audit(c) => c.run(&ctx).await,
        Cmd::Policy(c) => c.run(&ctx).await,
        Cmd::Idp(c) => c.run(&ctx).await,
        Cmd::Backup(c) => c.run(&ctx).await,
        Cmd::Pki(c) => c.run_remote(&ctx).await,
        Cmd::Config(_) => unreachable!("handled above"),
    };
    finish(res)
}

fn finish(res: cmd::Result) -> ExitCode {
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("anygatectl: {}", cmd::describe(&e));
            ExitCode::from(cmd::exit_code(&e))
        }
    }
}
