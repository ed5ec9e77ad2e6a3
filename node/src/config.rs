//! Typed node configuration: a TOML file (kebab-case keys, unknown keys
//! refused) where every key can also be given as a flag, and `validate()`
//! before any port is bound or any file written. Bad config exits 64 and names
//! the key.

use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {msg}")]
pub struct ConfigError {
    pub key: &'static str,
    pub msg: String,
}

fn bad(key: &'static str, msg: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        msg: msg.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    Text,
    Json,
}

/// The anygate gateway node. Every config-file key can also be given as a
/// flag of the same name; flags win.
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
    #[arg(long)]
    pub resync_interval: Option<String>,
    /// How often the device is read for endpoints and routes are checked [default: 1s].
    #[arg(long)]
    pub observe_interval: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    Auto,
    Kernel,
    Userspace,
    None,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileDataplane {
    backend: Option<BackendKind>,
    interface: Option<String>,
    private_key_file: Option<PathBuf>,
    uapi_socket: Option<PathBuf>,
    wireguard_go: Option<PathBuf>,
    resync_interval: Option<String>,
    observe_interval: Option<String>,
    fwmark: Option<u32>,
    manage_routes: Option<bool>,
    endpoint_batch_interval: Option<String>,
    endpoint_batch_max: Option<usize>,
}

/// Validated `[dataplane]` section.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    pub backend: BackendKind,
    /// Overrides the cluster setting `interface` when set.
    pub interface: Option<String>,
    pub private_key_file: Option<PathBuf>,
    pub uapi_socket: Option<PathBuf>,
    pub wireguard_go: Option<PathBuf>,
    pub resync_interval: std::time::Duration,
    pub observe_interval: std::time::Duration,
    pub fwmark: u32,
    pub manage_routes: bool,
    pub endpoint_batch_interval: std::time::Duration,
    pub endpoint_batch_max: usize,
}

fn duration(
    key: &'static str,
    v: Option<String>,
    default: &str,
) -> Result<std::time::Duration, ConfigError> {
    let s = v.unwrap_or_else(|| default.to_string());
    let d = humantime::parse_duration(&s).map_err(|e| {
        bad(
            key,
            format!("{s:?} is not a duration like 10s or 500ms: {e}"),
        )
    })?;
    if d.is_zero() {
        return Err(bad(key, "must be more than zero"));
    }
    Ok(d)
}

impl DataplaneConfig {
    fn load(cli: &Cli, f: FileDataplane) -> Result<DataplaneConfig, ConfigError> {
        let backend = cli
            .dataplane_backend
            .or(f.backend)
            .unwrap_or(BackendKind::Auto);
        let interface = cli.wg_interface.clone().or(f.interface);
        if let Some(i) = &interface {
            if i.is_empty() || i.len() > 15 || i.contains(['/', ' ']) {
                return Err(bad(
                    "dataplane.interface",
                    format!("{i:?} is not a valid interface name (1-15 characters, no / or space)"),
                ));
            }
        }
        let private_key_file = cli.wg_private_key_file.clone().or(f.private_key_file);
        if backend != BackendKind::None && private_key_file.is_none() {
            return Err(bad(
                "dataplane.private-key-file",
                "is required unless dataplane.backend = \"none\"",
            ));
        }
        let wireguard_go = cli.wireguard_go.clone().or(f.wireguard_go);
        if wireguard_go.is_some() && backend == BackendKind::Kernel {
            return Err(bad(
                "dataplane.wireguard-go",
                "only applies to the userspace backend",
            ));
        }
        let endpoint_batch_max = f.endpoint_batch_max.unwrap_or(5000);
        if endpoint_batch_max == 0 || endpoint_batch_max > 5000 {
            return Err(bad("dataplane.endpoint-batch-max", "must be 1..=5000"));
        }
        Ok(DataplaneConfig {
            backend,
            interface,
            private_key_file,
            uapi_socket: cli.wg_uapi_socket.clone().or(f.uapi_socket),
            wireguard_go,
            resync_interval: duration(
                "dataplane.resync-interval",
                cli.resync_interval.clone().or(f.resync_interval),
                "10s",
            )?,
            observe_interval: duration(
                "dataplane.observe-interval",
                cli.observe_interval.clone().or(f.observe_interval),
                "1s",
            )?,
            fwmark: f.fwmark.unwrap_or(0),
            manage_routes: f.manage_routes.unwrap_or(true),
            endpoint_batch_interval: duration(
                "dataplane.endpoint-batch-interval",
                f.endpoint_batch_interval,
                "1s",
            )?,
            endpoint_batch_max,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    id: Option<u64>,
    listen: Option<String>,
    advertise: Option<String>,
    data_dir: Option<PathBuf>,
    metrics_listen: Option<String>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    snapshot_logs: Option<u64>,
    #[serde(default)]
    dataplane: FileDataplane,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub id: u64,
    pub listen: SocketAddr,
    pub advertise: String,
    pub data_dir: PathBuf,
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub log_level: String,
    pub snapshot_logs: u64,
    pub dataplane: DataplaneConfig,
}

impl Config {
    /// Merge file and flags (flags win), then validate.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let id = cli
            .id
            .or(file.id)
            .ok_or_else(|| bad("id", "is required (a positive integer)"))?;
        if id == 0 {
            return Err(bad("id", "must be a positive integer"));
        }
        let listen_s = cli
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:7400".into());
        let listen: SocketAddr = listen_s
            .parse()
            .map_err(|_| bad("listen", format!("{listen_s:?} is not ip:port")))?;
        let advertise = cli
            .advertise
            .clone()
            .or(file.advertise)
            .unwrap_or_else(|| listen.to_string());
        if !advertise.contains(':') {
            return Err(bad("advertise", format!("{advertise:?} is not host:port")));
        }
        if listen.ip().is_unspecified()
            && cli.advertise.is_none()
            && advertise == listen.to_string()
        {
            return Err(bad(
                "advertise",
                "is required when listen is a wildcard address",
            ));
        }
        let data_dir = cli
            .data_dir
            .clone()
            .or(file.data_dir)
            .ok_or_else(|| bad("data-dir", "is required"))?;
        if data_dir.exists() && !data_dir.is_dir() {
            return Err(bad(
                "data-dir",
                format!("{} exists and is not a directory", data_dir.display()),
            ));
        }
        let metrics_listen = cli
            .metrics_listen
            .clone()
            .or(file.metrics_listen)
            .map(|s| {
                s.parse()
                    .map_err(|_| bad("metrics-listen", format!("{s:?} is not ip:port")))
            })
            .transpose()?;
        let log_level = cli
            .log_level
            .clone()
            .or(file.log_level)
            .unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(bad(
                "log-level",
                format!("{log_level:?} is not a valid filter"),
            ));
        }
        let snapshot_logs = cli.snapshot_logs.or(file.snapshot_logs).unwrap_or(10_000);
        if snapshot_logs == 0 {
            return Err(bad("snapshot-logs", "must be at least 1"));
        }
        let dataplane = DataplaneConfig::load(cli, file.dataplane)?;
        Ok(Config {
            dataplane,
            id,
            listen,
            advertise,
            data_dir,
            metrics_listen,
            log_format: cli
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            log_level,
            snapshot_logs,
        })
    }
}

fn read_file(p: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(p)
        .map_err(|e| bad("config", format!("cannot read {}: {e}", p.display())))?;
    toml::from_str(&text).map_err(|e| {
        // toml names the offending key in its message.
        bad("config", format!("{}: {}", p.display(), e.message()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once("anygate").chain(args.iter().copied()))
    }

    #[test]
    fn flags_and_errors_name_the_key() {
        let c = Config::load(&cli(&[
            "--id",
            "3",
            "--data-dir",
            "/tmp/x",
            "--listen",
            "127.0.0.1:9",
            "--dataplane-backend",
            "none",
        ]))
        .unwrap();
        assert_eq!((c.id, c.advertise.as_str()), (3, "127.0.0.1:9"));
        for (args, key) in [
            (vec!["--data-dir", "/tmp/x"], "id"),
            (vec!["--id", "0", "--data-dir", "/tmp/x"], "id"),
            (vec!["--id", "1"], "data-dir"),
            (
                vec!["--id", "1", "--data-dir", "/tmp/x", "--listen", "nope"],
                "listen",
            ),
            (
                vec!["--id", "1", "--data-dir", "/tmp/x", "--metrics-listen", "x"],
                "metrics-listen",
            ),
            (
                vec!["--id", "1", "--data-dir", "/tmp/x", "--listen", "0.0.0.0:1"],
                "advertise",
            ),
            (
                vec!["--id", "1", "--data-dir", "/tmp/x"],
                "dataplane.private-key-file",
            ),
            (
                vec![
                    "--id",
                    "1",
                    "--data-dir",
                    "/tmp/x",
                    "--wg-private-key-file",
                    "/k",
                    "--resync-interval",
                    "soon",
                ],
                "dataplane.resync-interval",
            ),
            (
                vec![
                    "--id",
                    "1",
                    "--data-dir",
                    "/tmp/x",
                    "--wg-private-key-file",
                    "/k",
                    "--wg-interface",
                    "a-name-far-too-long",
                ],
                "dataplane.interface",
            ),
        ] {
            let e = Config::load(&cli(&args)).unwrap_err();
            assert_eq!(e.key, key, "{args:?}: {e}");
        }
    }

    #[test]
    fn file_unknown_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.toml");
        std::fs::write(&p, "id = 2\ndata-dir = \"/tmp/y\"\nlisten-port = 5\n").unwrap();
        let e = Config::load(&cli(&["--config", p.to_str().unwrap()])).unwrap_err();
        assert!(e.to_string().contains("listen-port"), "{e}");
        std::fs::write(
            &p,
            "id = 2\ndata-dir = \"/tmp/y\"\n[dataplane]\nbackend = \"userspace\"\nprivate-key-file = \"/k\"\nresync-interval = \"2s\"\n",
        )
        .unwrap();
        let c = Config::load(&cli(&["--config", p.to_str().unwrap(), "--id", "5"])).unwrap();
        assert_eq!(c.id, 5, "flags win over the file");
        assert_eq!(c.dataplane.backend, BackendKind::Userspace);
        assert_eq!(
            c.dataplane.resync_interval,
            std::time::Duration::from_secs(2)
        );
    }

    #[test]
    fn the_documented_example_config_loads() {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/config/node.example.toml"
        );
        let c = Config::load(&cli(&["--config", p])).unwrap();
        assert_eq!(c.dataplane.backend, BackendKind::Auto);
        assert_eq!(
            c.dataplane.private_key_file.as_deref(),
            Some(Path::new("/etc/anygate/wg.key"))
        );
        assert_eq!(
            c.dataplane.observe_interval,
            std::time::Duration::from_secs(1)
        );
        assert_eq!(c.dataplane.endpoint_batch_max, 5000);
    }
}
