//! Typed node configuration: a TOML file (kebab-case keys, unknown keys
//! refused) where every key can also be given as a flag, and `validate()`
//! before any port is bound or any file written. Bad config exits 64 and names
//! the key.

mod cli;

pub use anygate_core::config::{BackendKind, BgpMode, LogFormat};
pub use cli::Cli;

use anygate_core::config as file;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Start a handshake to a client whose data arrives here without a
    /// session (after a failover); off only for baseline drills.
    pub react: bool,
    /// Drop a session whose client moved to another gateway (the endpoint
    /// map names a newer handshake elsewhere); off only for baselines.
    pub flush_loser: bool,
    /// In a two-gateway cluster, the survivor starts handshakes to the lost
    /// gateway's recent clients; off only for baselines.
    pub kick: bool,
    /// How long the other gateway must be silent before the kick: the BGP
    /// hold time + 500 ms (set from `[bgp]`).
    pub kick_after: std::time::Duration,
}

/// A duration key (flag or file, already parsed as humantime): the
/// default when unset; zero refused.
fn duration(
    key: &'static str,
    v: Option<Duration>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = v.unwrap_or(default);
    if d.is_zero() {
        return Err(bad(key, "must be more than zero"));
    }
    Ok(d)
}

/// A BGP timer: whole seconds (the protocol carries seconds).
fn seconds(key: &'static str, v: Option<Duration>, default: u64) -> Result<u64, ConfigError> {
    match v {
        None => Ok(default),
        Some(d) if d.subsec_nanos() != 0 => Err(bad(
            key,
            format!(
                "{} is not a whole number of seconds (BGP timers are seconds)",
                humantime::format_duration(d)
            ),
        )),
        Some(d) => Ok(d.as_secs()),
    }
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl DataplaneConfig {
    fn load(cli: &Cli, f: file::Dataplane) -> Result<DataplaneConfig, ConfigError> {
        let backend = cli
            .dataplane_backend
            .or(f.backend)
            .unwrap_or(BackendKind::Auto);
        let interface = cli.wg_interface.clone().or(f.interface);
        if let Some(i) = &interface {
            crate::model::check_ifname(i).map_err(|e| bad("dataplane.interface", e.to_string()))?;
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
                cli.resync_interval.or(f.resync_interval),
                ms(10_000),
            )?,
            observe_interval: duration(
                "dataplane.observe-interval",
                cli.observe_interval.or(f.observe_interval),
                ms(1_000),
            )?,
            fwmark: f.fwmark.unwrap_or(0),
            manage_routes: f.manage_routes.unwrap_or(true),
            endpoint_batch_interval: duration(
                "dataplane.endpoint-batch-interval",
                f.endpoint_batch_interval,
                ms(1_000),
            )?,
            endpoint_batch_max,
            react: f.react.unwrap_or(true),
            flush_loser: f.flush_loser.unwrap_or(true),
            kick: f.kick.unwrap_or(true),
            kick_after: std::time::Duration::from_millis(3500),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbor {
    pub address: std::net::IpAddr,
    pub peer_as: u32,
    pub local_address: Option<std::net::IpAddr>,
    /// eBGP multihop TTL (None: directly connected).
    pub multihop_ttl: Option<u8>,
    pub password: Option<String>,
}

/// Validated `[bgp]` section.
#[derive(Debug, Clone)]
pub struct BgpConfig {
    pub mode: BgpMode,
    pub gobgpd: PathBuf,
    pub api: SocketAddr,
    pub asn: u32,
    pub router_id: std::net::Ipv4Addr,
    /// 179 by default; -1: gobgpd does not listen (it connects out only).
    pub listen_port: i32,
    pub hold_time: u64,
    pub keepalive: u64,
    pub connect_retry: u64,
    pub neighbors: Vec<Neighbor>,
    pub leader_lease: std::time::Duration,
    pub shutdown_grace: std::time::Duration,
    pub graceful_shutdown_grace: std::time::Duration,
    /// Standard communities as (asn << 16) | value.
    pub communities: Vec<u32>,
    /// On routed-mode client host routes (default NO_EXPORT).
    pub client_route_communities: Vec<u32>,
    pub med: Option<u32>,
    pub as_path_prepend: u8,
}

/// A BGP community that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommunityError {
    #[error("{0:?} is not ASN:VALUE (two 16-bit numbers) or a well-known name")]
    Form(String),
    #[error("{community:?}: {part:?} is not a 16-bit number")]
    Number { community: String, part: String },
}

/// "65010:100" -> (65010 << 16) | 100; also the well-known names.
pub fn parse_community(s: &str) -> Result<u32, CommunityError> {
    match s {
        "graceful-shutdown" => return Ok(0xFFFF_0000),
        "no-export" => return Ok(0xFFFF_FF01),
        "no-advertise" => return Ok(0xFFFF_FF02),
        _ => {}
    }
    let (a, v) = s
        .split_once(':')
        .ok_or_else(|| CommunityError::Form(s.to_string()))?;
    let num = |x: &str| {
        x.parse::<u16>().map_err(|_| CommunityError::Number {
            community: s.to_string(),
            part: x.to_string(),
        })
    };
    Ok(((num(a)? as u32) << 16) | num(v)? as u32)
}

impl BgpConfig {
    fn load(cli: &Cli, f: file::Bgp) -> Result<BgpConfig, ConfigError> {
        let asn = cli
            .bgp_asn
            .or(f.asn)
            .ok_or_else(|| bad("bgp.asn", "is required in a [bgp] section"))?;
        if asn == 0 || asn == 23456 {
            return Err(bad("bgp.asn", format!("{asn} is not a usable AS number")));
        }
        let ip = |key: &'static str, s: &str| -> Result<std::net::IpAddr, ConfigError> {
            s.parse()
                .map_err(|_| bad(key, format!("{s:?} is not an IP address")))
        };
        let mut neighbors = Vec::new();
        for n in f.neighbors {
            neighbors.push(Neighbor {
                address: ip("bgp.neighbors.address", &n.address)?,
                peer_as: n.peer_as,
                local_address: n
                    .local_address
                    .as_deref()
                    .map(|s| ip("bgp.neighbors.local-address", s))
                    .transpose()?,
                multihop_ttl: n.multihop_ttl,
                password: match (n.password, n.password_file) {
                    (Some(_), _) => {
                        return Err(bad(
                            "bgp.neighbors.password",
                            "inline passwords are refused: put the TCP-MD5 secret in a file of mode 0600 and name it with password-file",
                        ))
                    }
                    (None, Some(p)) => Some(secret_file("bgp.neighbors.password-file", &p)?),
                    (None, None) => None,
                },
            });
        }
        for s in &cli.bgp_neighbors {
            let (a, p) = s
                .rsplit_once(':')
                .ok_or_else(|| bad("bgp.neighbors", format!("{s:?} is not ADDRESS:PEER-AS")))?;
            neighbors.push(Neighbor {
                address: ip("bgp.neighbors", a)?,
                peer_as: p
                    .parse()
                    .map_err(|_| bad("bgp.neighbors", format!("{p:?} is not an AS number")))?,
                local_address: None,
                multihop_ttl: None,
                password: None,
            });
        }
        if neighbors.is_empty() {
            return Err(bad("bgp.neighbors", "at least one neighbor is required"));
        }
        for n in &neighbors {
            if n.peer_as == 0 {
                return Err(bad("bgp.neighbors.peer-as", "must be a positive AS number"));
            }
        }
        let router_id = match cli.bgp_router_id.clone().or(f.router_id) {
            Some(s) => s
                .parse()
                .map_err(|_| bad("bgp.router-id", format!("{s:?} is not an IPv4 address")))?,
            None => match neighbors.iter().find_map(|n| n.local_address) {
                Some(std::net::IpAddr::V4(a)) => a,
                _ => {
                    return Err(bad(
                        "bgp.router-id",
                        "is required unless a neighbor has an IPv4 local-address",
                    ))
                }
            },
        };
        let hold_time = seconds("bgp.hold-time", f.hold_time, 3)?;
        let keepalive = seconds("bgp.keepalive", f.keepalive, 1)?;
        if hold_time < 3 {
            return Err(bad(
                "bgp.hold-time",
                "must be at least 3 (RFC 4271; routers refuse 1 and 2)",
            ));
        }
        if keepalive == 0 || keepalive * 3 > hold_time {
            return Err(bad(
                "bgp.keepalive",
                format!(
                    "must be 1..={} (at most a third of hold-time)",
                    hold_time / 3
                ),
            ));
        }
        let api_s = cli
            .bgp_api
            .clone()
            .or(f.api)
            .unwrap_or_else(|| "127.0.0.1:50051".into());
        let api: SocketAddr = api_s
            .parse()
            .map_err(|_| bad("bgp.api", format!("{api_s:?} is not ip:port")))?;
        if f.mode.unwrap_or(BgpMode::Supervised) == BgpMode::Supervised && !api.ip().is_loopback() {
            return Err(bad(
                "bgp.api",
                format!("{api} is not a loopback address: gobgpd's API has no authentication, so the gobgpd this node starts listens on loopback only"),
            ));
        }
        let listen_port = f.listen_port.unwrap_or(179);
        if !(-1..=65535).contains(&listen_port) || listen_port == 0 {
            return Err(bad(
                "bgp.listen-port",
                "must be 1..=65535, or -1 to not listen",
            ));
        }
        let communities = f
            .communities
            .unwrap_or_default()
            .iter()
            .map(|c| parse_community(c).map_err(|e| bad("bgp.communities", e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let client_route_communities = f
            .client_route_communities
            .unwrap_or_else(|| vec!["no-export".into()])
            .iter()
            .map(|c| {
                parse_community(c).map_err(|e| bad("bgp.client-route-communities", e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let as_path_prepend = f.as_path_prepend.unwrap_or(0);
        if as_path_prepend > 10 {
            return Err(bad("bgp.as-path-prepend", "must be 0..=10"));
        }
        Ok(BgpConfig {
            mode: f.mode.unwrap_or(BgpMode::Supervised),
            gobgpd: cli
                .gobgpd
                .clone()
                .or(f.gobgpd)
                .unwrap_or_else(|| PathBuf::from("gobgpd")),
            api,
            asn,
            router_id,
            listen_port,
            hold_time,
            keepalive,
            connect_retry: seconds("bgp.connect-retry", f.connect_retry, 1)?.max(1),
            neighbors,
            leader_lease: duration(
                "bgp.leader-lease",
                cli.leader_lease.or(f.leader_lease),
                ms(10_000),
            )?,
            shutdown_grace: duration("bgp.shutdown-grace", f.shutdown_grace, ms(1_000))?,
            graceful_shutdown_grace: duration(
                "bgp.graceful-shutdown-grace",
                f.graceful_shutdown_grace,
                ms(2_000),
            )?,
            communities,
            client_route_communities,
            med: f.med,
            as_path_prepend,
        })
    }
}

/// Validated `[raft]` section: the timers of a LAN cluster of gateways by
/// default; longer ones where the machines are slow (a cluster inside
/// one emulated VM) or far apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTimings {
    /// How often the leader sends heartbeats [default: 100ms].
    pub heartbeat: std::time::Duration,
    /// A follower that heard no leader for a random time between this and
    /// twice this starts an election [default: 400ms].
    pub election_timeout: std::time::Duration,
}

impl RaftTimings {
    fn load(f: file::Raft) -> Result<RaftTimings, ConfigError> {
        let heartbeat = duration("raft.heartbeat-interval", f.heartbeat_interval, ms(100))?;
        let election_timeout = duration("raft.election-timeout", f.election_timeout, ms(400))?;
        if election_timeout < heartbeat * 3 {
            return Err(bad(
                "raft.election-timeout",
                format!(
                    "{election_timeout:?} must be at least three heartbeat intervals ({:?}), or followers call elections while the leader is fine",
                    heartbeat * 3
                ),
            ));
        }
        Ok(RaftTimings {
            heartbeat,
            election_timeout,
        })
    }
}

/// Validated `[tls]` section: mutual TLS, or the explicit insecure dev mode.
#[derive(Debug, Clone)]
pub enum TlsConfig {
    Mutual {
        paths: anygate_proto::tls::Paths,
        /// How often the files are checked for new material (SIGHUP reloads at once).
        reload_interval: std::time::Duration,
    },
    InsecureDev,
}

impl TlsConfig {
    fn load(cli: &Cli, f: file::Tls) -> Result<TlsConfig, ConfigError> {
        let insecure = cli.insecure_dev || f.insecure_dev.unwrap_or(false);
        let ca = cli.tls_ca.clone().or(f.ca);
        let cert = cli.tls_cert.clone().or(f.cert);
        let key = cli.tls_key.clone().or(f.key);
        match (ca, cert, key) {
            (Some(_), Some(_), Some(_)) if insecure => Err(bad(
                "tls.insecure-dev",
                "is given together with tls.ca/cert/key: choose one",
            )),
            (Some(ca), Some(cert), Some(key)) => Ok(TlsConfig::Mutual {
                paths: anygate_proto::tls::Paths { ca, cert, key },
                reload_interval: duration("tls.reload-interval", f.reload_interval, ms(10_000))?,
            }),
            (None, None, None) if insecure => Ok(TlsConfig::InsecureDev),
            (None, None, None) => Err(bad(
                "tls",
                "no certificates: set tls.ca, tls.cert and tls.key (anygatectl pki init makes \
                 them), or start with --insecure-dev for a plaintext lab",
            )),
            (ca, cert, _) => Err(bad(
                if ca.is_none() {
                    "tls.ca"
                } else if cert.is_none() {
                    "tls.cert"
                } else {
                    "tls.key"
                },
                "is missing: tls.ca, tls.cert and tls.key go together",
            )),
        }
    }
}

/// Request limits of the operator API.
#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    /// Sustained writes per second per client.
    pub write_rate: u32,
    /// Writes a client may make at once before the rate applies.
    pub write_burst: u32,
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
    /// `[bgp]`; None = this node announces nothing.
    pub bgp: Option<BgpConfig>,
    pub tls: TlsConfig,
    pub api: ApiLimits,
    pub raft: RaftTimings,
    /// Tests only (hidden flag `--test-hold-back-apply`).
    pub hold_back_apply: Option<std::time::Duration>,
    /// `[portal]`; None = no portal on this node.
    pub portal: Option<PortalConfig>,
}

/// Validated `[portal]` section.
#[derive(Clone)]
pub struct PortalConfig {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The base URL people open, without a trailing slash.
    pub url: String,
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    pub groups_claim: String,
    pub algorithms: Vec<String>,
    pub session_lifetime: Duration,
}

impl std::fmt::Debug for PortalConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortalConfig")
            .field("listen", &self.listen)
            .field("url", &self.url)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The ID-token signature algorithms the portal can check.
pub const PORTAL_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

impl PortalConfig {
    fn load(f: file::Portal) -> Result<PortalConfig, ConfigError> {
        let listen_s = f.listen.unwrap_or_else(|| "0.0.0.0:443".into());
        let listen = listen_s
            .parse()
            .map_err(|_| bad("portal.listen", format!("{listen_s:?} is not ip:port")))?;
        let cert = f
            .cert
            .ok_or_else(|| bad("portal.cert", "is required (a PEM certificate chain)"))?;
        let key = f
            .key
            .ok_or_else(|| bad("portal.key", "is required (the certificate's PEM key)"))?;
        let url = f.url.ok_or_else(|| {
            bad(
                "portal.url",
                "is required (the URL people open, e.g. https://vpn.example.com)",
            )
        })?;
        let url = url.trim_end_matches('/').to_string();
        let parsed = url::Url::parse(&url)
            .map_err(|e| bad("portal.url", format!("{url:?} is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "https" | "http") || parsed.host().is_none() {
            return Err(bad(
                "portal.url",
                format!("{url:?} must be https://host[:port]"),
            ));
        }
        let issuer = f.issuer.ok_or_else(|| {
            bad(
                "portal.issuer",
                "is required (the identity provider's issuer URL)",
            )
        })?;
        url::Url::parse(&issuer)
            .map_err(|e| bad("portal.issuer", format!("{issuer:?} is not a URL: {e}")))?;
        let client_id = f
            .client_id
            .filter(|c| !c.is_empty())
            .ok_or_else(|| bad("portal.client-id", "is required"))?;
        let secret_path = f
            .client_secret_file
            .ok_or_else(|| bad("portal.client-secret-file", "is required (a 0600 file)"))?;
        let client_secret = secret_file("portal.client-secret-file", &secret_path)?;
        let groups_claim = f.groups_claim.unwrap_or_else(|| "groups".into());
        if groups_claim.is_empty() {
            return Err(bad("portal.groups-claim", "must not be empty"));
        }
        let algorithms = f
            .algorithms
            .unwrap_or_else(|| vec!["RS256".into(), "ES256".into()]);
        if algorithms.is_empty() {
            return Err(bad("portal.algorithms", "must name at least one algorithm"));
        }
        for a in &algorithms {
            if !PORTAL_ALGORITHMS.contains(&a.as_str()) {
                return Err(bad(
                    "portal.algorithms",
                    format!("{a:?} is not one of {}", PORTAL_ALGORITHMS.join(", ")),
                ));
            }
        }
        let session_lifetime = f.session_lifetime.unwrap_or(Duration::from_secs(8 * 3600));
        if session_lifetime < Duration::from_secs(60) {
            return Err(bad("portal.session-lifetime", "must be at least 1m"));
        }
        Ok(PortalConfig {
            listen,
            cert,
            key,
            url,
            issuer,
            client_id,
            client_secret,
            groups_claim,
            algorithms,
            session_lifetime,
        })
    }
}

impl Config {
    /// Merge file and flags (flags win), then validate.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(p) => read_file(p)?,
            None => file::File::default(),
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
        let mut dataplane = DataplaneConfig::load(cli, file.dataplane)?;
        let bgp = match file.bgp {
            Some(b) => Some(BgpConfig::load(cli, b)?),
            None if cli.bgp_asn.is_some() => Some(BgpConfig::load(cli, file::Bgp::default())?),
            None => None,
        };
        // Kick only once the router has surely dropped a silent gateway
        // (its hold time): kicking earlier, the client's answer would still
        // go to the lost gateway and the kick would hold the client hostage.
        if let Some(b) = &bgp {
            dataplane.kick_after = std::time::Duration::from_millis(b.hold_time * 1000 + 500);
        }
        let tls = TlsConfig::load(cli, file.tls)?;
        let write_rate = cli.write_rate.or(file.api.write_rate).unwrap_or(100);
        if write_rate == 0 {
            return Err(bad("api.write-rate", "must be at least 1"));
        }
        let write_burst = file.api.write_burst.unwrap_or(write_rate * 2).max(1);
        let raft = RaftTimings::load(file.raft)?;
        let hold_back_apply = cli.test_hold_back_apply;
        let portal = file.portal.map(PortalConfig::load).transpose()?;
        Ok(Config {
            portal,
            hold_back_apply,
            raft,
            dataplane,
            bgp,
            tls,
            api: ApiLimits {
                write_rate,
                write_burst,
            },
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

/// A secret from a file that only its owner may read (mode 0600 or
/// stricter), trimmed.
fn secret_file(key: &'static str, p: &Path) -> Result<String, ConfigError> {
    match anygate_proto::pki::loose_mode(p) {
        Ok(None) => {}
        Ok(Some(mode)) => {
            return Err(bad(
                key,
                format!(
                    "{} is mode {mode:o}; a secret must be 0600 or stricter: chmod 600 {}",
                    p.display(),
                    p.display()
                ),
            ))
        }
        Err(e) => return Err(bad(key, format!("{}: {e}", p.display()))),
    }
    let s = std::fs::read_to_string(p)
        .map_err(|e| bad(key, format!("cannot read {}: {e}", p.display())))?;
    let s = s.trim().to_string();
    if s.is_empty() {
        return Err(bad(key, format!("{} is empty", p.display())));
    }
    Ok(s)
}

fn read_file(p: &Path) -> Result<file::File, ConfigError> {
    let text = std::fs::read_to_string(p)
        .map_err(|e| bad("config", format!("cannot read {}: {e}", p.display())))?;
    toml::from_str(&text).map_err(|e| {
        // Name the line: serde's message says what is wrong, not where.
        let at = e
            .span()
            .map(|sp| {
                let line = text[..sp.start].matches('\n').count() + 1;
                let shown = text.lines().nth(line - 1).unwrap_or_default().trim();
                format!(" line {line} (`{shown}`)")
            })
            .unwrap_or_default();
        bad("config", format!("{}{at}: {}", p.display(), e.message()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// Flags for a plaintext test node (TLS has its own test below).
    fn cli(args: &[&str]) -> Cli {
        let tls = args
            .iter()
            .any(|a| a.starts_with("--tls") || *a == "--insecure-dev");
        let dev = (!tls).then_some("--insecure-dev");
        Cli::parse_from(
            std::iter::once("anygate")
                .chain(args.iter().copied())
                .chain(dev),
        )
    }

    #[test]
    fn tls_is_required_unless_insecure_dev() {
        let base = [
            "anygate",
            "--id",
            "1",
            "--data-dir",
            "/tmp/x",
            "--dataplane-backend",
            "none",
        ];
        let e = Config::load(&Cli::parse_from(base)).unwrap_err();
        assert_eq!(e.key, "tls");
        assert!(e.msg.contains("--insecure-dev"), "{e}");
        let c = Config::load(&Cli::parse_from(base.iter().chain(&["--insecure-dev"]))).unwrap();
        assert!(matches!(c.tls, TlsConfig::InsecureDev));
        let e = Config::load(&Cli::parse_from(base.iter().chain(&[
            "--tls-ca",
            "/ca.pem",
            "--tls-cert",
            "/c.pem",
        ])))
        .unwrap_err();
        assert_eq!(e.key, "tls.key");
        let all = [
            "--tls-ca",
            "/ca.pem",
            "--tls-cert",
            "/c.pem",
            "--tls-key",
            "/k.pem",
        ];
        let c = Config::load(&Cli::parse_from(base.iter().chain(&all))).unwrap();
        assert!(matches!(c.tls, TlsConfig::Mutual { .. }));
        let e = Config::load(&Cli::parse_from(
            base.iter().chain(&all).chain(&["--insecure-dev"]),
        ))
        .unwrap_err();
        assert_eq!(e.key, "tls.insecure-dev");
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
                    "0s",
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
            (
                vec![
                    "--id",
                    "1",
                    "--data-dir",
                    "/tmp/x",
                    "--wg-private-key-file",
                    "/k",
                    "--wg-interface",
                    "wg\"#",
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
        let c = Config::load(&Cli::parse_from(["anygate", "--config", p])).unwrap();
        assert_eq!(c.dataplane.backend, BackendKind::Auto);
        let TlsConfig::Mutual {
            paths,
            reload_interval,
        } = &c.tls
        else {
            panic!("the example runs with mutual TLS");
        };
        assert_eq!(paths.key, Path::new("/etc/anygate/pki/gw1.key"));
        assert_eq!(*reload_interval, std::time::Duration::from_secs(10));
        assert_eq!((c.api.write_rate, c.api.write_burst), (100, 200));
        assert_eq!(
            c.dataplane.private_key_file.as_deref(),
            Some(Path::new("/etc/anygate/wg.key"))
        );
        assert_eq!(
            c.dataplane.observe_interval,
            std::time::Duration::from_secs(1)
        );
        assert_eq!(c.dataplane.endpoint_batch_max, 5000);
        let b = c.bgp.expect("the example has a [bgp] section");
        assert_eq!((b.asn, b.hold_time, b.keepalive), (65010, 3, 1));
        assert_eq!(b.router_id.to_string(), "10.0.0.11");
        assert_eq!(b.communities, [(65010 << 16) | 100]);
        assert_eq!(b.neighbors[0].peer_as, 65000);
        assert_eq!(b.leader_lease, std::time::Duration::from_secs(10));
    }

    #[test]
    fn the_bgp_password_comes_from_a_private_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (p, secret) = (dir.path().join("n.toml"), dir.path().join("md5.secret"));
        std::fs::write(&secret, "s3cret\n").unwrap();
        let conf = |neighbor_key: &str| {
            format!("id = 1\ndata-dir = \"/tmp/y\"\n[dataplane]\nbackend = \"none\"\n[bgp]\nasn = 65010\nrouter-id = \"1.1.1.1\"\n[[bgp.neighbors]]\naddress = \"10.0.0.1\"\npeer-as = 1\n{neighbor_key}\n")
        };
        let load = |text: String| {
            std::fs::write(&p, text).unwrap();
            Config::load(&cli(&["--config", p.to_str().unwrap()]))
        };
        let file_key = format!("password-file = {:?}", secret.to_str().unwrap());
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load(conf(&file_key)).unwrap_err();
        assert_eq!(e.key, "bgp.neighbors.password-file", "{e}");
        assert!(e.msg.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = load(conf(&file_key)).unwrap();
        assert_eq!(
            c.bgp.unwrap().neighbors[0].password.as_deref(),
            Some("s3cret")
        );
        let e = load(conf("password = \"inline\"")).unwrap_err();
        assert_eq!(e.key, "bgp.neighbors.password", "{e}");
    }

    #[test]
    fn raft_timers_are_configurable_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.toml");
        let load = |raft: &str| {
            let base = "id = 1\ndata-dir = \"/tmp/y\"\n[dataplane]\nbackend = \"none\"\n";
            std::fs::write(&p, format!("{base}{raft}")).unwrap();
            Config::load(&cli(&["--config", p.to_str().unwrap()]))
        };
        let d = load("").unwrap().raft;
        assert_eq!(d.heartbeat, std::time::Duration::from_millis(100));
        assert_eq!(d.election_timeout, std::time::Duration::from_millis(400));
        let vm =
            load("[raft]\nheartbeat-interval = \"500ms\"\nelection-timeout = \"3s\"\n").unwrap();
        assert_eq!(vm.raft.election_timeout, std::time::Duration::from_secs(3));
        let e =
            load("[raft]\nheartbeat-interval = \"1s\"\nelection-timeout = \"2s\"\n").unwrap_err();
        assert_eq!(e.key, "raft.election-timeout", "{e}");
        let e = load("[raft]\nheartbeat = \"1s\"\n").unwrap_err();
        assert_eq!(e.key, "config", "unknown keys are refused: {e}");
    }

    #[test]
    fn duration_flags_take_humantime_and_name_the_flag() {
        let e = Cli::try_parse_from(["anygate", "--resync-interval", "soon"]).unwrap_err();
        assert!(e.to_string().contains("--resync-interval"), "{e}");
        let c = Config::load(&cli(&[
            "--id",
            "1",
            "--data-dir",
            "/tmp/x",
            "--dataplane-backend",
            "none",
            "--observe-interval",
            "250ms",
        ]))
        .unwrap();
        assert_eq!(c.dataplane.observe_interval, Duration::from_millis(250));
    }

    #[test]
    fn bgp_section_is_validated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.toml");
        let base = "id = 1\ndata-dir = \"/tmp/y\"\n[dataplane]\nbackend = \"none\"\n";
        for (bgp, key) in [
            ("[bgp]\nrouter-id = \"1.1.1.1\"\n[[bgp.neighbors]]\naddress = \"10.0.0.1\"\npeer-as = 1\n", "bgp.asn"),
            ("[bgp]\nasn = 65010\nrouter-id = \"1.1.1.1\"\n", "bgp.neighbors"),
            ("[bgp]\nasn = 65010\n[[bgp.neighbors]]\naddress = \"10.0.0.1\"\npeer-as = 1\n", "bgp.router-id"),
            ("[bgp]\nasn = 65010\nrouter-id = \"1.1.1.1\"\nhold-time = \"2s\"\n[[bgp.neighbors]]\naddress = \"10.0.0.1\"\npeer-as = 1\n", "bgp.hold-time"),
            ("[bgp]\nasn = 65010\nrouter-id = \"1.1.1.1\"\nhold-time = \"3500ms\"\n[[bgp.neighbors]]\naddress = \"10.0.0.1\"\npeer-as = 1\n", "bgp.hold-time"),
            ("[bgp]\nasn = 65010\nrouter-id = \"1.1.1.1\"\nhold-time = 3\n[[bgp.neighbors]]\naddress = \"10.0.0.1\"\npeer-as = 1\n", "config"),
            ("[bgp]\nasn = 65010\nrouter-id = \"1.1.1.1\"\nkeepalive = \"2s\"\n[[bgp.neighbors]]\naddress = \"10.0.0.1\"\npeer-as = 1\n", "bgp.keepalive"),
            ("[bgp]\nasn = 65010\nrouter-id = \"1.1.1.1\"\ncommunities = [\"65010\"]\n[[bgp.neighbors]]\naddress = \"10.0.0.1\"\npeer-as = 1\n", "bgp.communities"),
            ("[bgp]\nasn = 65010\nrouter-id = \"1.1.1.1\"\n[[bgp.neighbors]]\naddress = \"gw\"\npeer-as = 1\n", "bgp.neighbors.address"),
            ("[bgp]\nasn = 65010\nrouter-id = \"1.1.1.1\"\nleader-lease = \"0s\"\n[[bgp.neighbors]]\naddress = \"10.0.0.1\"\npeer-as = 1\n", "bgp.leader-lease"),
        ] {
            std::fs::write(&p, format!("{base}{bgp}")).unwrap();
            let e = Config::load(&cli(&["--config", p.to_str().unwrap()])).unwrap_err();
            assert_eq!(e.key, key, "{bgp}: {e}");
            if key == "config" {
                assert!(e.msg.contains("`hold-time = 3`"), "names the line: {e}");
            }
        }
        // Flags alone enable BGP; the router id defaults to an IPv4 local address.
        let c = Config::load(&cli(&[
            "--id",
            "1",
            "--data-dir",
            "/tmp/x",
            "--dataplane-backend",
            "none",
            "--bgp-asn",
            "65010",
            "--bgp-router-id",
            "10.0.0.2",
            "--bgp-neighbor",
            "10.0.0.1:65000",
        ]))
        .unwrap();
        let b = c.bgp.unwrap();
        assert_eq!(b.neighbors[0].address.to_string(), "10.0.0.1");
        assert_eq!(b.mode, BgpMode::Supervised);
        assert_eq!(parse_community("graceful-shutdown"), Ok(0xFFFF_0000));
        assert_eq!(parse_community("65535:0"), Ok(0xFFFF_0000));
    }
}
