//! `anygatectl settings ...`

use super::{read_opts, Result};
use crate::output::{json, table};
use crate::Ctx;
use anygate_proto::v1::settings_service_client::SettingsServiceClient as C;
use anygate_proto::v1::*;
use clap::{Args, Subcommand};

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum SettingsCmd {
    /// Show the gateway settings.
    Get {
        #[arg(long)]
        stale: bool,
    },
    /// Change settings; unset flags stay as they are. An empty value clears an optional setting.
    Set(SetArgs),
}

#[derive(Args)]
pub struct SetArgs {
    /// WireGuard interface name on every gateway (default wg0).
    #[arg(long)]
    interface: Option<String>,
    /// UDP listen port (default 51820).
    #[arg(long)]
    listen_port: Option<u32>,
    /// The gateways' shared public key (the private key stays in a 0600 file on each node).
    #[arg(long)]
    server_public_key: Option<String>,
    /// Tunnel MTU (default 1420).
    #[arg(long)]
    mtu: Option<u32>,
    /// Anycast IPv4 address clients connect to.
    #[arg(long)]
    anycast_v4: Option<String>,
    /// Anycast IPv6 address.
    #[arg(long)]
    anycast_v6: Option<String>,
    /// DNS servers for client configs (comma-separated; "" clears).
    #[arg(long, value_delimiter = ',')]
    dns: Option<Vec<String>>,
    /// Return traffic: nat or routed.
    #[arg(long)]
    return_mode: Option<String>,
    /// PersistentKeepalive for new clients, seconds (default 25).
    #[arg(long)]
    client_keepalive: Option<u32>,
    /// Host name for client configs instead of the anycast address.
    #[arg(long)]
    endpoint_host: Option<String>,
    /// AllowedIPs of client configs (comma-separated; default 0.0.0.0/0, ::/0).
    #[arg(long, value_delimiter = ',')]
    client_routes: Option<Vec<String>>,
    /// Prefixes peers may route behind them (site-to-site, servers):
    /// allowed IPs outside every pool must lie inside one of these
    /// (comma-separated; "" clears). At most /8 (IPv4) or /16 (IPv6) wide,
    /// never covering the anycast address. Admin.
    #[arg(long, value_delimiter = ',')]
    routable_prefixes: Option<Vec<String>>,
    /// Audit entries kept (newest first; 1000-10000000, default 100000).
    #[arg(long)]
    audit_max_entries: Option<u64>,
    /// Audit entries older than this many days are deleted (1-3650,
    /// default 90). Export what you must keep longer: `audit list --json`.
    #[arg(long)]
    audit_max_age_days: Option<u32>,
}

impl SettingsCmd {
    pub async fn run(self, ctx: &Ctx) -> Result {
        let c = &ctx.client;
        let s = match self {
            SettingsCmd::Get { stale } => {
                c.call(|ch| async move {
                    crate::grpc!(C, ch)
                        .get_settings(c.req(GetSettingsRequest {
                            read: read_opts(stale),
                        }))
                        .await
                })
                .await?
            }
            SettingsCmd::Set(a) => {
                let nonempty = |v: Option<Vec<String>>| {
                    v.map(|v| v.into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>())
                };
                let dns = nonempty(a.dns);
                let routes = nonempty(a.client_routes);
                let routable = nonempty(a.routable_prefixes);
                let patch = SettingsPatch {
                    interface: a.interface,
                    listen_port: a.listen_port,
                    server_public_key: a.server_public_key,
                    mtu: a.mtu,
                    anycast_v4: a.anycast_v4,
                    anycast_v6: a.anycast_v6,
                    set_dns: dns.is_some(),
                    dns: dns.unwrap_or_default(),
                    return_mode: a.return_mode,
                    client_keepalive: a.client_keepalive,
                    endpoint_host: a.endpoint_host,
                    set_client_routes: routes.is_some(),
                    client_routes: routes.unwrap_or_default(),
                    set_routable_prefixes: routable.is_some(),
                    routable_prefixes: routable.unwrap_or_default(),
                    audit_max_entries: a.audit_max_entries,
                    audit_max_age_days: a.audit_max_age_days,
                };
                c.call(|ch| {
                    let patch = patch.clone();
                    async move {
                        crate::grpc!(C, ch)
                            .set_settings(c.req(SetSettingsRequest { patch: Some(patch) }))
                            .await
                    }
                })
                .await?
            }
        };
        if ctx.json {
            println!("{}", json(&s));
            return Ok(());
        }
        let dash = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.to_string()
            }
        };
        let rows = vec![
            vec!["interface".into(), s.interface.clone()],
            vec!["listen-port".into(), s.listen_port.to_string()],
            vec!["server-public-key".into(), dash(&s.server_public_key)],
            vec!["mtu".into(), s.mtu.to_string()],
            vec!["anycast-v4".into(), dash(&s.anycast_v4)],
            vec!["anycast-v6".into(), dash(&s.anycast_v6)],
            vec!["dns".into(), dash(&s.dns.join(", "))],
            vec!["return-mode".into(), s.return_mode.clone()],
            vec!["client-keepalive".into(), s.client_keepalive.to_string()],
            vec!["endpoint-host".into(), dash(&s.endpoint_host)],
            vec!["client-routes".into(), dash(&s.client_routes.join(", "))],
            vec![
                "routable-prefixes".into(),
                dash(&s.routable_prefixes.join(", ")),
            ],
            vec!["audit-max-entries".into(), s.audit_max_entries.to_string()],
            vec![
                "audit-max-age-days".into(),
                s.audit_max_age_days.to_string(),
            ],
        ];
        println!("{}", table(&["SETTING", "VALUE"], rows));
        Ok(())
    }
}
