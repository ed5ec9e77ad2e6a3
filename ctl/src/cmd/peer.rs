//! `anygatectl peer ...`

use super::audit::parse_time;
use super::{read_opts, Result};
use crate::keys;
use crate::output::{json, table, when};
use crate::Ctx;
use anygate_proto::v1::peer_service_client::PeerServiceClient as P;
use anygate_proto::v1::settings_service_client::SettingsServiceClient as S;
use anygate_proto::v1::*;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{BufRead, Write};
use tonic::Status;

#[derive(Subcommand)]
pub enum PeerCmd {
    /// Add a client device and print its WireGuard config.
    ///
    /// Without --public-key, anygatectl generates the key pair itself; the
    /// private key only appears in the printed config. Without --address and
    /// --allowed-ip, tunnel addresses come from --pool (or the only pool).
    Add(AddArgs),
    /// List peers (filters combine).
    List {
        /// Only this user's devices.
        #[arg(long)]
        user: Option<String>,
        /// Only this group.
        #[arg(long)]
        group: Option<String>,
        /// active, disabled or revoked.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        stale: bool,
    },
    /// Show one peer (public key or user/device).
    Show {
        peer: String,
        /// Include the preshared key.
        #[arg(long)]
        secrets: bool,
        /// Print a wg-quick config template for the peer instead.
        #[arg(long)]
        config: bool,
        /// With --config: sign it with this ed25519 key (`config keygen`).
        #[arg(long, value_name = "FILE", requires = "config")]
        sign_key: Option<std::path::PathBuf>,
        #[arg(long)]
        stale: bool,
    },
    /// Stop accepting the peer on every gateway (reversible).
    Disable { peer: String },
    /// Accept a disabled peer again.
    Enable { peer: String },
    /// Revoke the key for good (it can never be enabled again).
    Revoke { peer: String },
    /// Delete the peer and free its addresses. A revoked key stays revoked
    /// after its peer is removed (see `peer revoked`).
    Remove { peer: String },
    /// List every revoked key. Revocation is for good: a revoked key is
    /// refused for any new peer or rotation, and backups carry the list.
    Revoked {
        #[arg(long)]
        stale: bool,
    },
    /// Give a peer a new key pair, keeping its addresses.
    Rotate {
        peer: String,
        #[arg(long)]
        public_key: Option<String>,
        /// Also generate a new preshared key.
        #[arg(long)]
        psk: bool,
        #[arg(long)]
        qr: bool,
        /// Sign the printed config with this ed25519 key (`config keygen`).
        #[arg(long, value_name = "FILE")]
        sign_key: Option<std::path::PathBuf>,
    },
    /// Add peers from a file: JSON lines (or one JSON array) of objects with
    /// the fields of `peer export` (public_key, user, device, group, pool,
    /// allowed_ips, addresses, labels, ...). Each batch is all or nothing.
    Import {
        file: std::path::PathBuf,
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// Print peers as JSON lines that `peer import` reads.
    Export {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        stale: bool,
    },
}

#[derive(Args)]
pub struct AddArgs {
    /// The person (or service) the device belongs to.
    #[arg(long)]
    user: String,
    /// The device name, unique per user (e.g. laptop, phone).
    #[arg(long)]
    device: String,
    /// Group for pool choice and access policy (e.g. eng, sales).
    #[arg(long)]
    group: Option<String>,
    /// Allocate from this pool.
    #[arg(long)]
    pool: Option<String>,
    /// The client's public key (its private key then stays with the client).
    #[arg(long)]
    public_key: Option<String>,
    /// Explicit tunnel address (inside a pool); repeatable.
    #[arg(long)]
    address: Vec<String>,
    /// Routes behind the client (CIDR); repeatable. Disables allocation unless --pool is given.
    #[arg(long)]
    allowed_ip: Vec<String>,
    /// Ephemeral peer: removed everywhere after this long (e.g. 8h).
    #[arg(long, conflicts_with = "expires", value_parser = humantime::parse_duration)]
    ttl: Option<std::time::Duration>,
    /// Ephemeral peer: removed everywhere at this time (RFC 3339).
    #[arg(long)]
    expires: Option<String>,
    /// Add a generated preshared key.
    #[arg(long)]
    psk: bool,
    /// PersistentKeepalive in seconds (default from settings, 25).
    #[arg(long)]
    keepalive: Option<u32>,
    /// key=value label; repeatable.
    #[arg(long, value_parser = parse_label)]
    label: Vec<(String, String)>,
    /// Also print the config as a terminal QR code (for mobile apps).
    #[arg(long)]
    qr: bool,
    /// Sign the printed config with this ed25519 key (`config keygen`), so
    /// its receiver can check it with `anygatectl config verify`.
    #[arg(long, value_name = "FILE")]
    sign_key: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("label {0:?} is not key=value")]
struct NotALabel(String);

fn parse_label(s: &str) -> std::result::Result<(String, String), NotALabel> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| NotALabel(s.to_string()))
}

fn state_name(s: i32) -> &'static str {
    match PeerState::try_from(s) {
        Ok(PeerState::Active) => "active",
        Ok(PeerState::Disabled) => "disabled",
        Ok(PeerState::Revoked) => "revoked",
        _ => "unknown",
    }
}

fn parse_state(s: &str) -> std::result::Result<PeerState, Status> {
    match s {
        "active" => Ok(PeerState::Active),
        "disabled" => Ok(PeerState::Disabled),
        "revoked" => Ok(PeerState::Revoked),
        _ => Err(Status::invalid_argument(format!(
            "state {s:?} is not one of: active, disabled, revoked"
        ))),
    }
}

fn peer_json(p: &Peer) -> serde_json::Value {
    let mut v = serde_json::to_value(p).expect("serialisable");
    v["state"] = state_name(p.state).into();
    v
}

/// The peer's tunnel addresses as host routes (/32, /128).
fn host_routes(p: &Peer) -> Vec<String> {
    p.addresses
        .iter()
        .map(|a| {
            if a.contains(':') {
                format!("{a}/128")
            } else {
                format!("{a}/32")
            }
        })
        .collect()
}

pub fn to_spec(p: &Peer) -> PeerSpec {
    // Allocated addresses are exported explicitly so an import into a fresh
    // cluster keeps them.
    let hosts = host_routes(p);
    PeerSpec {
        public_key: p.public_key.clone(),
        preshared_key: p.preshared_key.clone(),
        allowed_ips: p
            .allowed_ips
            .iter()
            .filter(|n| !hosts.contains(n))
            .cloned()
            .collect(),
        addresses: p.addresses.clone(),
        user: p.user.clone(),
        device: p.device.clone(),
        group: p.group.clone(),
        labels: p.labels.clone(),
        persistent_keepalive: Some(p.persistent_keepalive),
        expires_at_ms: p.expires_at_ms,
        pool: String::new(),
        // Disabled and revoked peers come back as they were, in the same
        // write (an import that re-activated a revoked key was the bug).
        state: p.state,
    }
}

/// A wg-quick config for the client, written through the one writer
/// (`anygate_core::wgquick::client`).
fn client_config(
    p: &Peer,
    s: &GatewaySettings,
    private_key: Option<&str>,
    psk: Option<&str>,
) -> std::result::Result<String, Status> {
    anygate_core::wgquick::client(&anygate_core::wgquick::Client {
        title: format!("{}/{}", p.user, p.device),
        public_key: p.public_key.clone(),
        private_key,
        preshared_key: psk,
        addresses: p.addresses.clone(),
        dns: s.dns.clone(),
        mtu: s.mtu,
        server_public_key: s.server_public_key.clone(),
        hosts: [
            s.endpoint_host.clone(),
            s.anycast_v4.clone(),
            s.anycast_v6.clone(),
        ],
        listen_port: s.listen_port,
        routes: s.client_routes.clone(),
        keepalive: p.persistent_keepalive,
    })
    .map_err(|e| {
        Status::failed_precondition(format!(
            "{e}; fix the setting with `anygatectl settings set`"
        ))
    })
}

/// Refuses settings no config can be written from, before a write that
/// would hand out a config (so a refusal leaves nothing half-done).
fn renderable(s: &GatewaySettings) -> std::result::Result<(), Status> {
    client_config(&Peer::default(), s, None, None).map(|_| ())
}

fn qr(text: &str) -> std::result::Result<String, Status> {
    let code = qrcode::QrCode::new(text.as_bytes())
        .map_err(|e| Status::internal(format!("QR code: {e}")))?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .quiet_zone(true)
        .build())
}

impl PeerCmd {
    pub async fn run(self, ctx: &Ctx) -> Result {
        let c = &ctx.client;
        let settings = || async {
            c.call(|ch| async move {
                crate::grpc!(S, ch)
                    .get_settings(c.req(GetSettingsRequest {
                        read: read_opts(false),
                    }))
                    .await
            })
            .await
        };
        match self {
            PeerCmd::Add(a) => {
                // A bad signing key is refused before anything is written.
                let signer = super::config::signer(a.sign_key.as_deref())?;
                let generated = a.public_key.is_none().then(keys::generate);
                let public_key = a
                    .public_key
                    .clone()
                    .or(generated.as_ref().map(|k| k.public.clone()))
                    .unwrap_or_default();
                let psk = a.psk.then(keys::preshared);
                let expires_at_ms = match (&a.ttl, &a.expires) {
                    (Some(d), _) => Some(parse_time("0s")? + d.as_millis() as i64),
                    (_, Some(t)) => Some(parse_time(t)?),
                    _ => None,
                };
                let spec = PeerSpec {
                    public_key,
                    preshared_key: psk.clone(),
                    allowed_ips: a.allowed_ip,
                    addresses: a.address,
                    user: a.user,
                    device: a.device,
                    group: a.group.unwrap_or_default(),
                    labels: a.label.into_iter().collect(),
                    persistent_keepalive: a.keepalive,
                    expires_at_ms,
                    pool: a.pool.unwrap_or_default(),
                    state: PeerState::Unspecified as i32,
                };
                // Settings no config can be written from are refused
                // before the peer is added.
                let s = settings().await?;
                renderable(&s)?;
                let r = c
                    .call(|ch| {
                        let spec = spec.clone();
                        async move {
                            crate::grpc!(P, ch)
                                .add_peers(c.req(AddPeersRequest { peers: vec![spec] }))
                                .await
                        }
                    })
                    .await?;
                let p = r
                    .peers
                    .first()
                    .ok_or_else(|| Status::internal("empty answer"))?;
                let cfg = client_config(
                    p,
                    &s,
                    generated.as_ref().map(|k| k.private.as_str()),
                    psk.as_deref(),
                )?;
                let cfg = super::config::maybe_sign(cfg, signer.as_ref());
                if ctx.json {
                    let mut v = peer_json(p);
                    v["client_config"] = cfg.into();
                    println!("{}", json(&v));
                } else {
                    eprintln!(
                        "peer {}/{} added: {} [{}]{}",
                        p.user,
                        p.device,
                        p.public_key,
                        p.addresses.join(", "),
                        p.expires_at_ms
                            .map(|t| format!(", expires {}", when(t)))
                            .unwrap_or_default()
                    );
                    print!("{cfg}");
                    if a.qr {
                        println!("{}", qr(&cfg)?);
                    }
                }
            }
            PeerCmd::List {
                user,
                group,
                state,
                stale,
            } => {
                let req = ListPeersRequest {
                    read: read_opts(stale),
                    user: user.unwrap_or_default(),
                    group: group.unwrap_or_default(),
                    state: state
                        .as_deref()
                        .map(parse_state)
                        .transpose()?
                        .map(|s| s as i32)
                        .unwrap_or(0),
                };
                let r = list_all(c, req).await?;
                if ctx.json {
                    println!(
                        "{}",
                        json(&r.peers.iter().map(peer_json).collect::<Vec<_>>())
                    );
                    return Ok(());
                }
                let mut peers: Vec<&Peer> = r.peers.iter().collect();
                peers.sort_by(|a, b| (&a.user, &a.device).cmp(&(&b.user, &b.device)));
                let rows = peers
                    .iter()
                    .map(|p| {
                        vec![
                            p.user.clone(),
                            p.device.clone(),
                            if p.group.is_empty() {
                                "-".into()
                            } else {
                                p.group.clone()
                            },
                            p.public_key.clone(),
                            p.addresses.join(", "),
                            state_name(p.state).into(),
                            p.expires_at_ms.map(when).unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                println!(
                    "{}",
                    table(
                        &[
                            "USER",
                            "DEVICE",
                            "GROUP",
                            "PUBLIC KEY",
                            "ADDRESSES",
                            "STATE",
                            "EXPIRES"
                        ],
                        rows
                    )
                );
                println!(
                    "{} peers (applied index {})",
                    r.peers.len(),
                    r.applied_index
                );
            }
            PeerCmd::Show {
                peer,
                secrets,
                config,
                sign_key,
                stale,
            } => {
                let signer = super::config::signer(sign_key.as_deref())?;
                let p = c
                    .call(|ch| {
                        let peer = peer.clone();
                        async move {
                            crate::grpc!(P, ch)
                                .get_peer(c.req(GetPeerRequest {
                                    read: read_opts(stale),
                                    peer,
                                    secrets,
                                }))
                                .await
                        }
                    })
                    .await?;
                if config {
                    let s = settings().await?;
                    let cfg = client_config(&p, &s, None, p.preshared_key.as_deref())?;
                    print!("{}", super::config::maybe_sign(cfg, signer.as_ref()));
                } else if ctx.json {
                    let access = super::policy::for_group(ctx, &p.group, stale).await?;
                    let mut v = peer_json(&p);
                    v["access"] = serde_json::to_value(&access).expect("serialisable");
                    println!("{}", json(&v));
                } else {
                    let access = super::policy::for_group(ctx, &p.group, stale).await?;
                    let mut rows = vec![
                        vec!["public key".into(), p.public_key.clone()],
                        vec!["user/device".into(), format!("{}/{}", p.user, p.device)],
                        vec!["group".into(), p.group.clone()],
                        vec!["state".into(), state_name(p.state).into()],
                        vec!["addresses".into(), p.addresses.join(", ")],
                        vec!["allowed IPs".into(), p.allowed_ips.join(", ")],
                        vec!["pool".into(), p.pool.clone()],
                        vec!["keepalive".into(), format!("{} s", p.persistent_keepalive)],
                        vec![
                            "preshared key".into(),
                            p.preshared_key.clone().unwrap_or_else(|| {
                                if p.has_preshared_key {
                                    "(hidden)".into()
                                } else {
                                    "-".into()
                                }
                            }),
                        ],
                        vec!["created".into(), when(p.created_at_ms)],
                        vec![
                            "expires".into(),
                            p.expires_at_ms.map(when).unwrap_or_else(|| "-".into()),
                        ],
                        vec!["revision".into(), p.revision.to_string()],
                    ];
                    for (k, v) in &p.labels {
                        rows.push(vec![format!("label {k}"), v.clone()]);
                    }
                    rows.push(vec![
                        "access".into(),
                        if access.is_empty() {
                            "none: no policy covers this group (default deny)".into()
                        } else {
                            access
                                .iter()
                                .map(|a| format!("{} ({})", super::policy::describe(a), a.name))
                                .collect::<Vec<_>>()
                                .join("\n")
                        },
                    ]);
                    println!("{}", table(&["FIELD", "VALUE"], rows));
                }
            }
            PeerCmd::Disable { peer } => set_state(ctx, peer, PeerState::Disabled).await?,
            PeerCmd::Enable { peer } => set_state(ctx, peer, PeerState::Active).await?,
            PeerCmd::Revoke { peer } => set_state(ctx, peer, PeerState::Revoked).await?,
            PeerCmd::Remove { peer } => {
                let r = c
                    .call(|ch| {
                        let peer = peer.clone();
                        async move {
                            crate::grpc!(P, ch)
                                .remove_peer(c.req(RemovePeerRequest { peer }))
                                .await
                        }
                    })
                    .await?;
                if ctx.json {
                    println!("{}", json(&r.removed.as_ref().map(peer_json)));
                } else if let Some(p) = r.removed {
                    println!("peer {}/{} ({}) removed", p.user, p.device, p.public_key);
                }
            }
            PeerCmd::Rotate {
                peer,
                public_key,
                psk,
                qr: show_qr,
                sign_key,
            } => {
                let signer = super::config::signer(sign_key.as_deref())?;
                let generated = public_key.is_none().then(keys::generate);
                let new_public_key = public_key
                    .or(generated.as_ref().map(|k| k.public.clone()))
                    .unwrap_or_default();
                let new_psk = psk.then(keys::preshared);
                let req = RotatePeerRequest {
                    peer,
                    new_public_key,
                    new_preshared_key: new_psk.clone(),
                };
                let s = settings().await?;
                renderable(&s)?;
                let p = c
                    .call(|ch| {
                        let req = req.clone();
                        async move { crate::grpc!(P, ch).rotate_peer(c.req(req)).await }
                    })
                    .await?;
                let cfg = client_config(
                    &p,
                    &s,
                    generated.as_ref().map(|k| k.private.as_str()),
                    new_psk.as_deref(),
                )?;
                let cfg = super::config::maybe_sign(cfg, signer.as_ref());
                if ctx.json {
                    let mut v = peer_json(&p);
                    v["client_config"] = cfg.into();
                    println!("{}", json(&v));
                } else {
                    eprintln!("peer {}/{} rotated to {}", p.user, p.device, p.public_key);
                    print!("{cfg}");
                    if show_qr {
                        println!("{}", qr(&cfg)?);
                    }
                }
            }
            PeerCmd::Import { file, batch } => import(ctx, &file, batch.clamp(1, 5000)).await?,
            PeerCmd::Revoked { stale } => {
                let read = read_opts(stale);
                let r = c
                    .call(|ch| async move {
                        crate::grpc!(P, ch)
                            .list_revoked_keys(c.req(ListRevokedKeysRequest { read }))
                            .await
                    })
                    .await?;
                if ctx.json {
                    println!("{}", json(&r.keys));
                    return Ok(());
                }
                let rows = r
                    .keys
                    .iter()
                    .map(|k| {
                        vec![
                            k.public_key.clone(),
                            when(k.revoked_at_ms),
                            k.index.to_string(),
                        ]
                    })
                    .collect();
                println!("{}", table(&["PUBLIC KEY", "REVOKED", "LOG INDEX"], rows));
                println!("{} revoked keys", r.keys.len());
            }
            PeerCmd::Export { user, group, stale } => {
                let req = ListPeersRequest {
                    read: read_opts(stale),
                    user: user.unwrap_or_default(),
                    group: group.unwrap_or_default(),
                    state: 0,
                };
                let r = list_all(c, req).await?;
                let mut out = std::io::stdout().lock();
                for p in &r.peers {
                    let _ = writeln!(
                        out,
                        "{}",
                        serde_json::to_string(&to_spec(p)).expect("serialisable")
                    );
                }
            }
        }
        Ok(())
    }
}

/// Every peer a listing asks for, streamed in pages (any number of peers;
/// a single answer would stop at the message limit near 30,000).
pub async fn list_all(
    c: &crate::client::Client,
    req: ListPeersRequest,
) -> Result<ListPeersResponse> {
    c.call(|ch| {
        let req = req.clone();
        async move {
            let mut s = crate::grpc!(P, ch)
                .stream_peers(c.req(req))
                .await?
                .into_inner();
            let mut all = ListPeersResponse::default();
            while let Some(page) = s.message().await? {
                all.applied_index = page.applied_index;
                all.peers.extend(page.peers);
            }
            Ok(tonic::Response::new(all))
        }
    })
    .await
}

async fn set_state(ctx: &Ctx, peer: String, state: PeerState) -> Result {
    let c = &ctx.client;
    let p = c
        .call(|ch| {
            let peer = peer.clone();
            async move {
                crate::grpc!(P, ch)
                    .set_peer_state(c.req(SetPeerStateRequest {
                        peer,
                        state: state as i32,
                    }))
                    .await
            }
        })
        .await?;
    if ctx.json {
        println!("{}", json(&peer_json(&p)));
    } else {
        println!(
            "peer {}/{} is now {}",
            p.user,
            p.device,
            state_name(p.state)
        );
    }
    Ok(())
}

fn read_specs(path: &std::path::Path) -> std::result::Result<Vec<PeerSpec>, Status> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Status::invalid_argument(format!("cannot read {}: {e}", path.display())))?;
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(&text).map_err(|e| {
            Status::invalid_argument(format!(
                "{}: not a JSON array of peers: {e}",
                path.display()
            ))
        });
    }
    let mut out = Vec::new();
    for (i, line) in std::io::Cursor::new(text).lines().enumerate() {
        let line = line.map_err(|e| Status::invalid_argument(e.to_string()))?;
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| {
            Status::invalid_argument(format!("{} line {}: {e}", path.display(), i + 1))
        })?);
    }
    Ok(out)
}

async fn import(ctx: &Ctx, path: &std::path::Path, batch: usize) -> Result {
    let specs = read_specs(path)?;
    let started = std::time::Instant::now();
    let added = add_in_batches(ctx, &specs, batch).await?;
    let secs = started.elapsed().as_secs_f64();
    if ctx.json {
        println!(
            "{}",
            json(&serde_json::json!({ "added": added, "seconds": secs }))
        );
    } else {
        println!(
            "imported {added} peers in {secs:.2} s ({:.0} peers/s)",
            added as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}

/// Adds `specs` in batches of `batch` (each all or nothing) with a
/// progress bar; on a refusal says which batch and what was added before.
pub async fn add_in_batches(ctx: &Ctx, specs: &[PeerSpec], batch: usize) -> Result<usize> {
    let c = &ctx.client;
    let bar = if ctx.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(specs.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} peers  {per_sec}  eta {eta}")
            .expect("valid template"),
    );
    let mut added = 0usize;
    for (n, chunk) in specs.chunks(batch.clamp(1, 5000)).enumerate() {
        let res = c
            .call(|ch| {
                let peers = chunk.to_vec();
                async move {
                    crate::grpc!(P, ch)
                        .add_peers(c.req(AddPeersRequest { peers }))
                        .await
                }
            })
            .await;
        match res {
            Ok(r) => {
                added += r.peers.len();
                bar.inc(chunk.len() as u64);
            }
            Err(e) => {
                bar.abandon();
                let first = n * batch + 1;
                return Err(Status::new(
                    e.code(),
                    format!(
                        "batch of peers {first}-{} was refused, nothing of it applied ({added} peers from earlier batches were added): {}",
                        first + chunk.len() - 1,
                        e.message()
                    ),
                ));
            }
        }
    }
    bar.finish_and_clear();
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> GatewaySettings {
        GatewaySettings {
            mtu: 1420,
            listen_port: 51820,
            server_public_key: "c2VydmVy".into(),
            anycast_v6: "2001:db8::1".into(),
            dns: vec!["10.0.0.53".into()],
            ..Default::default()
        }
    }

    #[test]
    fn a_config_is_only_what_the_writer_allows() {
        let p = Peer {
            user: "eve\nPostUp = touch /tmp/pwned".into(),
            device: "laptop".into(),
            public_key: "cGVlcg==".into(),
            addresses: vec!["100.64.0.2".into()],
            ..Default::default()
        };
        let cfg = client_config(&p, &settings(), Some("cHJpdmF0ZQ=="), None).unwrap();
        anygate_core::wgquick::check(&cfg).unwrap();
        assert!(
            cfg.starts_with("# anygate client config for eve\\nPostUp"),
            "{cfg}"
        );
        assert!(cfg.contains("Endpoint = [2001:db8::1]:51820\n"), "{cfg}");
        // A setting a node stored before settings were checked.
        let mut s = settings();
        s.endpoint_host = "vpn.example.com\nPostUp = touch /tmp/pwned".into();
        let e = client_config(&p, &s, None, None).unwrap_err();
        assert!(e.message().contains("Endpoint value"), "{}", e.message());
        assert!(renderable(&s).is_err());
        s.endpoint_host.clear();
        s.dns = vec!["10.0.0.53 # x".into()];
        assert!(renderable(&s).is_err());
    }
}
