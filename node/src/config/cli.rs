//! The node's flags: the keys operators set per machine or per run (identity,
//! addresses, files, the backend); everything else is a config-file key
//! only. A flag wins over the file.

use super::{BackendKind, LogFormat};
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// The anygate gateway node. The flags below name config-file keys an
/// operator sets per machine or per run; a flag wins over the file. Every
/// other key is set in the file only (deploy/config/node.example.toml
/// documents each one).
#[derive(Debug, Parser, Default)]
#[command(name = "anygate", version, about, long_about = None)]
pub struct Cli {
    /// TOML config file (see deploy/config/node.example.toml).
    #[arg(long, short = 'c', env = "ANYGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's Raft id: a positive integer, unique in the cluster, never reused.
    #[arg(long)]
    pub id: Option<u64>,
    /// gRPC listen address, for the operator API and Raft alike [default: 127.0.0.1:7400].
    #[arg(long)]
    pub listen: Option<String>,
    /// Address other nodes and anygatectl use to reach this node (default: --listen).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Directory of the RocksDB database (log and state machine).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// HTTP address for /metrics, /ready and /live (off when unset).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Log format [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. "info" or "anygate_node=debug,openraft=warn".
    #[arg(long)]
    pub log_level: Option<String>,
    /// Build a snapshot (and purge the log) every this many applied entries [default: 10000].
    #[arg(long)]
    pub snapshot_logs: Option<u64>,
    /// WireGuard backend: auto (kernel when the module is there), kernel,
    /// userspace (UAPI socket of wireguard-go/boringtun) or none [default: auto].
    #[arg(long, value_enum)]
    pub dataplane_backend: Option<BackendKind>,
    /// WireGuard interface name on this node [default: the cluster setting `interface`].
    #[arg(long)]
    pub wg_interface: Option<String>,
    /// File holding the gateways' shared WireGuard private key (base64, mode 0600 or stricter).
    #[arg(long)]
    pub wg_private_key_file: Option<PathBuf>,
    /// UAPI socket of a userspace WireGuard [default: /var/run/wireguard/IFNAME.sock].
    #[arg(long)]
    pub wg_uapi_socket: Option<PathBuf>,
    /// Start and supervise this wireguard-go binary (userspace backend) instead
    /// of using one started elsewhere.
    #[arg(long)]
    pub wireguard_go: Option<PathBuf>,
    /// Full resync of the device and host routes (repairs hand edits) [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub resync_interval: Option<Duration>,
    /// How often the device is read for endpoints and routes are checked [default: 1s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub observe_interval: Option<Duration>,
    /// Enable BGP with this local AS (the file's `[bgp] asn`).
    #[arg(long)]
    pub bgp_asn: Option<u32>,
    /// BGP router id (an IPv4 address) [default: the first neighbor's local address].
    #[arg(long)]
    pub bgp_router_id: Option<String>,
    /// BGP neighbor as ADDRESS:PEER-AS (repeatable; adds to the file's neighbors).
    #[arg(long = "bgp-neighbor", value_name = "ADDRESS:PEER-AS")]
    pub bgp_neighbors: Vec<String>,
    /// gobgpd to start and supervise [default: gobgpd from PATH].
    #[arg(long)]
    pub gobgpd: Option<PathBuf>,
    /// gobgpd's gRPC API address [default: 127.0.0.1:50051].
    #[arg(long)]
    pub bgp_api: Option<String>,
    /// Withdraw when no Raft leader was heard for this long [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub leader_lease: Option<Duration>,
    /// CA bundle (PEM) that node and operator certificates must chain to
    /// (`anygatectl pki init` makes one). During a CA rotation, both CAs.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM, role `node`, naming its advertise host).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM, mode 0600 or stricter).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Serve and dial plaintext gRPC, with no certificates and no roles
    /// (everyone is admin). For a laptop lab only; logs a warning.
    #[arg(long)]
    pub insecure_dev: bool,
    /// Writes each client (certificate name) may make per second, sustained
    /// (burst: twice that) [default: 100].
    #[arg(long)]
    pub write_rate: Option<u32>,
    /// Tests only: wait this long before applying each batch of committed
    /// entries (a follower that lags), e.g. "1500ms".
    #[arg(long, hide = true, value_parser = humantime::parse_duration)]
    pub test_hold_back_apply: Option<Duration>,
}
