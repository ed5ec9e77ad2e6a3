//! `anygatectl idp ...`: what the groups of the company's identity provider
//! mean here (self-service enrollment and console roles).

use super::{read_opts, Result};
use crate::output::{json, table};
use crate::Ctx;
use anygate_proto::v1::identity_service_client::IdentityServiceClient as C;
use anygate_proto::v1::*;
use clap::{Subcommand, ValueEnum};
use std::time::Duration;

#[derive(Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Viewer,
    Operator,
    Admin,
}

impl From<RoleArg> for ConsoleRole {
    fn from(r: RoleArg) -> ConsoleRole {
        match r {
            RoleArg::Viewer => ConsoleRole::Viewer,
            RoleArg::Operator => ConsoleRole::Operator,
            RoleArg::Admin => ConsoleRole::Admin,
        }
    }
}

#[derive(Subcommand)]
pub enum IdpCmd {
    /// Map a group of the identity provider: what its members get.
    ///
    /// IDP_GROUP is the group exactly as the provider puts it in the ID
    /// token's groups claim (a name, a path like /staff/eng, or an id).
    /// Its members may enroll devices into the anygate GROUP (that group's
    /// access policies apply to them), get a console ROLE, or both. A user
    /// none of whose groups is mapped gets nothing. A user in several
    /// mapped groups gets every group, the highest role, and the strictest
    /// limits. Mapping a group again replaces its mapping.
    ///
    ///   anygatectl idp map engineering --group eng --lifetime 30d --max-devices 3
    ///   anygatectl idp map contractors --group vendors --lifetime 12h --require-mfa
    ///   anygatectl idp map vpn-admins --role admin
    Map {
        idp_group: String,
        /// The anygate group enrolled devices join.
        #[arg(long)]
        group: Option<String>,
        /// The console role members get.
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
        /// How long an enrolled config lives before signing in again must
        /// renew it (10m to 365d).
        #[arg(long, default_value = "12h", value_parser = humantime::parse_duration)]
        lifetime: Duration,
        /// Devices one user may enroll (1-100).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
        max_devices: u32,
        /// The ID token must show multi-factor authentication.
        #[arg(long)]
        require_mfa: bool,
    },
    /// List the mappings.
    List {
        #[arg(long)]
        stale: bool,
    },
    /// Remove a mapping: its members can no longer enroll or renew through
    /// it (devices already enrolled run until their expiry).
    Unmap { idp_group: String },
}

/// "operator" (as `--json` prints it), "-" for no role.
fn role_name(m: &IdpMapping) -> String {
    match m.role() {
        ConsoleRole::None => "-".into(),
        r => anygate_proto::enum_names::short_name(r.as_str_name(), "CONSOLE_ROLE_"),
    }
}

fn lifetime(m: &IdpMapping) -> String {
    humantime::format_duration(Duration::from_secs(m.lifetime_seconds)).to_string()
}

impl IdpCmd {
    pub async fn run(self, ctx: &Ctx) -> Result {
        let c = &ctx.client;
        match self {
            IdpCmd::Map {
                idp_group,
                group,
                role,
                lifetime: life,
                max_devices,
                require_mfa,
            } => {
                // 0 on the wire means "the default": refuse it here.
                if life.is_zero() {
                    return Err(tonic::Status::invalid_argument(
                        "lifetime 0s: between 10 minutes and 365 days",
                    ));
                }
                let mut mapping = IdpMapping {
                    idp_group,
                    group: group.unwrap_or_default(),
                    lifetime_seconds: life.as_secs(),
                    max_devices,
                    require_mfa,
                    ..Default::default()
                };
                if let Some(r) = role {
                    mapping.set_role(r.into());
                }
                let m = c
                    .call(|ch| {
                        let mapping = mapping.clone();
                        async move {
                            crate::grpc!(C, ch)
                                .map_idp_group(c.req(MapIdpGroupRequest {
                                    mapping: Some(mapping),
                                }))
                                .await
                        }
                    })
                    .await?;
                if ctx.json {
                    println!("{}", json(&m));
                } else {
                    let mut gets = Vec::new();
                    if !m.group.is_empty() {
                        gets.push(format!("devices in group {}", m.group));
                    }
                    if m.role() != ConsoleRole::None {
                        gets.push(format!("console role {}", role_name(&m)));
                    }
                    println!(
                        "IdP group {:?} mapped: {}; configs live {}, at most {} devices per user{}",
                        m.idp_group,
                        gets.join(", "),
                        lifetime(&m),
                        m.max_devices,
                        if m.require_mfa { ", MFA required" } else { "" }
                    );
                }
            }
            IdpCmd::List { stale } => {
                let r = c
                    .call(|ch| async move {
                        crate::grpc!(C, ch)
                            .list_idp_mappings(c.req(ListIdpMappingsRequest {
                                read: read_opts(stale),
                            }))
                            .await
                    })
                    .await?;
                if ctx.json {
                    println!("{}", json(&r.mappings));
                    return Ok(());
                }
                let rows = r
                    .mappings
                    .iter()
                    .map(|m| {
                        vec![
                            m.idp_group.clone(),
                            if m.group.is_empty() {
                                "-".into()
                            } else {
                                m.group.clone()
                            },
                            role_name(m),
                            lifetime(m),
                            m.max_devices.to_string(),
                            if m.require_mfa { "yes" } else { "no" }.into(),
                        ]
                    })
                    .collect();
                println!(
                    "{}",
                    table(
                        &["IDP GROUP", "GROUP", "ROLE", "LIFETIME", "DEVICES", "MFA"],
                        rows
                    )
                );
                println!(
                    "{} {}; a user in no mapped group gets nothing",
                    r.mappings.len(),
                    if r.mappings.len() == 1 {
                        "mapping"
                    } else {
                        "mappings"
                    }
                );
            }
            IdpCmd::Unmap { idp_group } => {
                c.call(|ch| {
                    let idp_group = idp_group.clone();
                    async move {
                        crate::grpc!(C, ch)
                            .unmap_idp_group(c.req(UnmapIdpGroupRequest { idp_group }))
                            .await
                    }
                })
                .await?;
                println!("IdP group {idp_group:?} unmapped");
            }
        }
        Ok(())
    }
}
