//! `anygatectl backup export | restore`: the inventory as one JSON file,
//! and back into a fresh cluster through the ordinary (validated, audited)
//! write API.

use super::peer::{add_in_batches, to_spec};
use super::pki::write_file;
use super::Result;
use crate::output::json;
use crate::Ctx;
use anygate_proto::v1::backup_service_client::BackupServiceClient as B;
use anygate_proto::v1::identity_service_client::IdentityServiceClient as Idp;
use anygate_proto::v1::peer_service_client::PeerServiceClient as P;
use anygate_proto::v1::policy_service_client::PolicyServiceClient as Pol;
use anygate_proto::v1::pool_service_client::PoolServiceClient as Pools;
use anygate_proto::v1::settings_service_client::SettingsServiceClient as S;
use anygate_proto::v1::*;
use clap::Subcommand;
use std::path::PathBuf;
use tonic::Status;

const FORMAT: &str = "anygate-backup/1";

#[derive(Subcommand)]
pub enum BackupCmd {
    /// Write the whole inventory (settings, pools, policies, IdP group
    /// mappings, peers with their preshared keys) at one Raft index to FILE (mode 0600). Admin.
    ///
    /// Not in it: the gateways' WireGuard private key (a file on each
    /// gateway: back it up with the node's config), the endpoint map and
    /// the audit log.
    Export { file: PathBuf },
    /// Restore FILE into an empty cluster (just initialised: no peers,
    /// pools or policies): settings, pools, policies, IdP group mappings,
    /// the revoked keys,
    /// then peers in batches with their addresses, keys and states (each
    /// peer and its state in one write).
    Restore {
        file: PathBuf,
        /// Peers per write (each batch all or nothing).
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
}

fn bad(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

impl BackupCmd {
    pub async fn run(self, ctx: &Ctx) -> Result {
        let c = &ctx.client;
        match self {
            BackupCmd::Export { file } => {
                let bar = if ctx.json {
                    indicatif::ProgressBar::hidden()
                } else {
                    indicatif::ProgressBar::new(0)
                };
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:40} {pos}/{len} peers  {per_sec}",
                    )
                    .expect("valid template"),
                );
                let b = c
                    .call(|ch| {
                        let bar = bar.clone();
                        async move {
                            let mut s = crate::grpc!(B, ch)
                                .export(c.req(ExportRequest {}))
                                .await?
                                .into_inner();
                            let Some(mut b) = s.message().await? else {
                                return Err(Status::data_loss("the node sent an empty backup"));
                            };
                            bar.set_position(0);
                            bar.set_length(b.peer_count);
                            while let Some(page) = s.message().await? {
                                bar.inc(page.peers.len() as u64);
                                b.peers.extend(page.peers);
                            }
                            if b.peers.len() as u64 != b.peer_count {
                                return Err(Status::data_loss(format!(
                                    "the backup stream ended after {} of {} peers",
                                    b.peers.len(),
                                    b.peer_count
                                )));
                            }
                            Ok(tonic::Response::new(b))
                        }
                    })
                    .await?;
                bar.finish_and_clear();
                let text = serde_json::to_string_pretty(&b).expect("serialisable");
                write_file(&file, &text, 0o600)?;
                if ctx.json {
                    println!(
                        "{}",
                        json(
                            &serde_json::json!({"file": file, "applied_index": b.applied_index, "peers": b.peers.len(), "pools": b.pools.len(), "policies": b.policies.len()})
                        )
                    );
                } else {
                    println!(
                        "{}: {} peers, {} pools, {} policies at index {} (holds preshared keys: keep it like a key)",
                        file.display(),
                        b.peers.len(),
                        b.pools.len(),
                        b.policies.len(),
                        b.applied_index
                    );
                }
            }
            BackupCmd::Restore { file, batch } => {
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| bad(format!("{}: {e}", file.display())))?;
                let b: Backup = serde_json::from_str(&text)
                    .map_err(|e| bad(format!("{}: not a backup: {e}", file.display())))?;
                if b.format != FORMAT {
                    return Err(bad(format!(
                        "{}: format {:?}, this anygatectl reads {FORMAT:?}",
                        file.display(),
                        b.format
                    )));
                }
                // Only into an empty cluster: nothing is merged or overwritten.
                let read = Some(ReadOptions { stale: false });
                let peers = c
                    .call(|ch| async move {
                        crate::grpc!(P, ch)
                            .list_peers(c.req(ListPeersRequest {
                                read,
                                ..Default::default()
                            }))
                            .await
                    })
                    .await?;
                let pools = c
                    .call(|ch| async move {
                        crate::grpc!(Pools, ch)
                            .list_pools(c.req(ListPoolsRequest { read }))
                            .await
                    })
                    .await?;
                let policies = c
                    .call(|ch| async move {
                        crate::grpc!(Pol, ch)
                            .list_policies(c.req(ListPoliciesRequest {
                                read,
                                group: String::new(),
                            }))
                            .await
                    })
                    .await?;
                if !peers.peers.is_empty()
                    || !pools.pools.is_empty()
                    || !policies.policies.is_empty()
                {
                    return Err(Status::failed_precondition(format!(
                        "the cluster is not empty ({} peers, {} pools, {} policies): restore goes into a freshly initialised cluster",
                        peers.peers.len(),
                        pools.pools.len(),
                        policies.policies.len()
                    )));
                }
                if let Some(s) = &b.settings {
                    let patch = SettingsPatch {
                        interface: Some(s.interface.clone()),
                        listen_port: Some(s.listen_port),
                        server_public_key: (!s.server_public_key.is_empty())
                            .then(|| s.server_public_key.clone()),
                        mtu: Some(s.mtu),
                        anycast_v4: Some(s.anycast_v4.clone()),
                        anycast_v6: Some(s.anycast_v6.clone()),
                        dns: s.dns.clone(),
                        set_dns: true,
                        return_mode: Some(s.return_mode.clone()),
                        client_keepalive: Some(s.client_keepalive),
                        endpoint_host: Some(s.endpoint_host.clone()),
                        client_routes: s.client_routes.clone(),
                        set_client_routes: true,
                        routable_prefixes: s.routable_prefixes.clone(),
                        set_routable_prefixes: true,
                        // A backup from before retention existed has 0.
                        audit_max_entries: (s.audit_max_entries > 0).then_some(s.audit_max_entries),
                        audit_max_age_days: (s.audit_max_age_days > 0)
                            .then_some(s.audit_max_age_days),
                    };
                    c.call(|ch| {
                        let patch = patch.clone();
                        async move {
                            crate::grpc!(S, ch)
                                .set_settings(c.req(SetSettingsRequest { patch: Some(patch) }))
                                .await
                        }
                    })
                    .await
                    .map_err(|e| Status::new(e.code(), format!("settings: {}", e.message())))?;
                }
                for p in &b.pools {
                    let pool = Pool {
                        name: p.name.clone(),
                        cidrs: p.cidrs.clone(),
                        group: p.group.clone(),
                        ..Default::default()
                    };
                    c.call(|ch| {
                        let pool = pool.clone();
                        async move {
                            crate::grpc!(Pools, ch)
                                .add_pool(c.req(AddPoolRequest { pool: Some(pool) }))
                                .await
                        }
                    })
                    .await
                    .map_err(|e| {
                        Status::new(e.code(), format!("pool {}: {}", p.name, e.message()))
                    })?;
                }
                for p in &b.policies {
                    let policy = Policy {
                        revision: 0,
                        ..p.clone()
                    };
                    c.call(|ch| {
                        let policy = policy.clone();
                        async move {
                            crate::grpc!(Pol, ch)
                                .add_policy(c.req(AddPolicyRequest {
                                    policy: Some(policy),
                                }))
                                .await
                        }
                    })
                    .await
                    .map_err(|e| {
                        Status::new(e.code(), format!("policy {}: {}", p.name, e.message()))
                    })?;
                }
                for m in &b.idp_mappings {
                    let mapping = IdpMapping {
                        revision: 0,
                        ..m.clone()
                    };
                    c.call(|ch| {
                        let mapping = mapping.clone();
                        async move {
                            crate::grpc!(Idp, ch)
                                .map_idp_group(c.req(MapIdpGroupRequest {
                                    mapping: Some(mapping),
                                }))
                                .await
                        }
                    })
                    .await
                    .map_err(|e| {
                        Status::new(
                            e.code(),
                            format!("IdP mapping {:?}: {}", m.idp_group, e.message()),
                        )
                    })?;
                }
                // Revocations first: a key the old cluster revoked (even one
                // no peer holds any more) is refused from here on, and the
                // peers come with their states in the same writes.
                let keys: Vec<String> = b.revoked.iter().map(|r| r.public_key.clone()).collect();
                for chunk in keys.chunks(5000) {
                    let req = RevokeKeysRequest {
                        public_keys: chunk.to_vec(),
                    };
                    c.call(|ch| {
                        let req = req.clone();
                        async move { crate::grpc!(P, ch).revoke_keys(c.req(req)).await }
                    })
                    .await
                    .map_err(|e| Status::new(e.code(), format!("revoked keys: {}", e.message())))?;
                }
                let specs: Vec<PeerSpec> = b.peers.iter().map(to_spec).collect();
                let added = add_in_batches(ctx, &specs, batch).await?;
                let states = b
                    .peers
                    .iter()
                    .filter(|p| p.state != PeerState::Active as i32)
                    .count();
                if ctx.json {
                    println!(
                        "{}",
                        json(
                            &serde_json::json!({"peers": added, "pools": b.pools.len(), "policies": b.policies.len(), "states": states, "revoked_keys": keys.len()})
                        )
                    );
                } else {
                    println!(
                        "restored {added} peers ({states} disabled or revoked), {} revoked keys, {} pools, {} policies and the settings from index {} of the old cluster",
                        keys.len(),
                        b.pools.len(),
                        b.policies.len(),
                        b.applied_index
                    );
                }
            }
        }
        Ok(())
    }
}
