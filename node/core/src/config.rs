//! The node's config file, as written: one serde struct per TOML section
//! (kebab-case keys, unknown keys refused, durations in humantime form such
//! as `500ms` or `3s`). Every key is optional here; the node merges its
//! flags over a [`File`], checks it once and refuses bad values naming the
//! key (`anygate_node::config`). The lab and the tests write gateway configs
//! by serialising these types, so a renamed key breaks their build, not a
//! drill at run time.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum LogFormat {
    Text,
    Json,
}

/// Which WireGuard implementation the node programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum BackendKind {
    /// The kernel when its module is there, else userspace.
    Auto,
    Kernel,
    /// A userspace WireGuard (wireguard-go, boringtun) over its UAPI socket.
    Userspace,
    /// No dataplane: a Raft member that programs nothing.
    None,
}

/// How the node reaches gobgpd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BgpMode {
    /// The node starts gobgpd as its child (it dies with the node) and configures it.
    Supervised,
    /// Use a gobgpd started elsewhere, at `api`.
    External,
}

/// The whole file (top-level keys and sections).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct File {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_logs: Option<u64>,
    #[serde(default)]
    pub dataplane: Dataplane,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<Bgp>,
    #[serde(default)]
    pub tls: Tls,
    #[serde(default)]
    pub api: Api,
    #[serde(default)]
    pub raft: Raft,
    /// `[portal]`; absent = this node serves no portal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portal: Option<Portal>,
}

/// The user portal: an HTTPS listener where people sign in at the
/// company's identity provider (OpenID Connect) and enroll their devices.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Portal {
    /// ip:port of the HTTPS listener (e.g. `0.0.0.0:443`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// PEM certificate chain and key the portal presents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The URL people open (the same on every gateway: the anycast name);
    /// the redirect URI registered at the provider is `<url>/portal/callback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The provider's issuer URL (its discovery document is
    /// `<issuer>/.well-known/openid-configuration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// A file (mode 0600) holding the client secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    /// The ID-token claim that lists the user's groups (default `groups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_claim: Option<String>,
    /// ID-token signature algorithms accepted (default RS256, ES256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithms: Option<Vec<String>>,
    /// How long a portal sign-in lasts (default 8h).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub session_lifetime: Option<Duration>,
}

/// `[dataplane]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Dataplane {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uapi_socket: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_go: Option<PathBuf>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub resync_interval: Option<Duration>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub observe_interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fwmark: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manage_routes: Option<bool>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub endpoint_batch_interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_batch_max: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub react: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_loser: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kick: Option<bool>,
}

/// `[bgp]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Bgp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<BgpMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gobgpd: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<i32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub hold_time: Option<Duration>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub keepalive: Option<Duration>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub connect_retry: Option<Duration>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub leader_lease: Option<Duration>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub shutdown_grace: Option<Duration>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub graceful_shutdown_grace: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub communities: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_route_communities: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub med: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_path_prepend: Option<u8>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub neighbors: Vec<Neighbor>,
}

/// `[[bgp.neighbors]]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Neighbor {
    pub address: String,
    pub peer_as: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multihop_ttl: Option<u8>,
    /// Refused with a pointer to `password-file` (a secret does not belong
    /// in a config file others may read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

/// `[raft]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Raft {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub heartbeat_interval: Option<Duration>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub election_timeout: Option<Duration>,
}

/// `[tls]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Tls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_dev: Option<bool>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub reload_interval: Option<Duration>,
}

/// `[api]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Api {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_rate: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_burst: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_toml_with_humantime_durations() {
        let f = File {
            id: Some(3),
            dataplane: Dataplane {
                react: Some(false),
                observe_interval: Some(Duration::from_millis(250)),
                ..Default::default()
            },
            bgp: Some(Bgp {
                asn: Some(65010),
                hold_time: Some(Duration::from_secs(3)),
                neighbors: vec![Neighbor {
                    address: "10.78.1.1".into(),
                    peer_as: 65000,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = toml::to_string(&f).unwrap();
        assert!(text.contains("observe-interval = \"250ms\""), "{text}");
        assert!(text.contains("hold-time = \"3s\""), "{text}");
        assert!(text.contains("[[bgp.neighbors]]"), "{text}");
        assert_eq!(toml::from_str::<File>(&text).unwrap(), f);
    }

    #[test]
    fn refuses_unknown_keys_and_bare_numbers_for_durations() {
        let e = toml::from_str::<File>("[bgp]\nhold-tme = \"3s\"\n").unwrap_err();
        assert!(e.message().contains("hold-tme"), "{e}");
        assert!(toml::from_str::<File>("[bgp]\nhold-time = 3\n").is_err());
        assert!(toml::from_str::<File>("[raft]\nelection-timeout = \"soon\"\n").is_err());
    }
}
