//! `anygatectl policy ...`: per-group access policies (default deny).

use super::{read_opts, Result};
use crate::output::{json, table};
use crate::Ctx;
use anygate_proto::v1::policy_service_client::PolicyServiceClient as C;
use anygate_proto::v1::*;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Allow the peers of a group to reach destinations.
    ///
    /// Client traffic is dropped unless a policy allows it (the cluster
    /// default is deny). Every gateway applies the change within a second,
    /// to connected clients too (no reconnect).
    ///
    ///   anygatectl policy add eng-web --group eng --to 10.1.0.0/24 --proto tcp --port 443
    ///   anygatectl policy add everyone-dns --group '*' --to 10.0.0.53 --proto udp --port 53
    Add {
        /// Policy name (A-Z a-z 0-9 - _ .).
        name: String,
        /// Peer group, or '*' for every peer.
        #[arg(long)]
        group: String,
        /// Destination CIDR or address (repeatable).
        #[arg(long = "to", required = true, value_name = "CIDR")]
        to: Vec<String>,
        /// any, tcp, udp or icmp.
        #[arg(long, default_value = "any")]
        proto: String,
        /// Destination port or range like 8000-8080 (repeatable; tcp/udp only).
        #[arg(long)]
        port: Vec<String>,
    },
    /// List policies.
    List {
        /// Only the policies that apply to this group (including '*').
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        stale: bool,
    },
    /// Remove a policy (its traffic is dropped at once, open connections too).
    Remove { name: String },
}

/// "10.1.0.0/24 tcp/443" for tables.
pub fn describe(p: &Policy) -> String {
    let proto = match (p.protocol.as_str(), p.ports.is_empty()) {
        ("" | "any", _) => "any".to_string(),
        (x, true) => x.to_string(),
        (x, false) => format!("{x}/{}", p.ports.join(",")),
    };
    format!("{} {proto}", p.destinations.join(","))
}

/// The policies that apply to `group` (all with ""), for `peer show` and
/// `policy list`.
pub async fn for_group(ctx: &Ctx, group: &str, stale: bool) -> Result<Vec<Policy>> {
    let c = &ctx.client;
    let group = group.to_string();
    let r = c
        .call(|ch| {
            let group = group.clone();
            async move {
                crate::grpc!(C, ch)
                    .list_policies(c.req(ListPoliciesRequest {
                        read: read_opts(stale),
                        group,
                    }))
                    .await
            }
        })
        .await?;
    Ok(r.policies)
}

impl PolicyCmd {
    pub async fn run(self, ctx: &Ctx) -> Result {
        let c = &ctx.client;
        match self {
            PolicyCmd::Add {
                name,
                group,
                to,
                proto,
                port,
            } => {
                let policy = Policy {
                    name,
                    group,
                    destinations: to,
                    protocol: proto,
                    ports: port,
                    revision: 0,
                };
                let p = c
                    .call(|ch| {
                        let policy = policy.clone();
                        async move {
                            crate::grpc!(C, ch)
                                .add_policy(c.req(AddPolicyRequest {
                                    policy: Some(policy),
                                }))
                                .await
                        }
                    })
                    .await?;
                if ctx.json {
                    println!("{}", json(&p));
                } else {
                    println!(
                        "policy {} added: group {} may reach {}",
                        p.name,
                        p.group,
                        describe(&p)
                    );
                }
            }
            PolicyCmd::List { group, stale } => {
                let policies = for_group(ctx, group.as_deref().unwrap_or(""), stale).await?;
                if ctx.json {
                    println!("{}", json(&policies));
                    return Ok(());
                }
                let rows = policies
                    .iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            p.group.clone(),
                            p.destinations.join(", "),
                            if p.protocol.is_empty() {
                                "any".into()
                            } else {
                                p.protocol.clone()
                            },
                            if p.ports.is_empty() {
                                "-".into()
                            } else {
                                p.ports.join(",")
                            },
                        ]
                    })
                    .collect();
                println!(
                    "{}",
                    table(&["NAME", "GROUP", "DESTINATIONS", "PROTO", "PORTS"], rows)
                );
                println!(
                    "{} {}; anything else from clients is dropped",
                    policies.len(),
                    if policies.len() == 1 {
                        "policy"
                    } else {
                        "policies"
                    }
                );
            }
            PolicyCmd::Remove { name } => {
                c.call(|ch| {
                    let name = name.clone();
                    async move {
                        crate::grpc!(C, ch)
                            .remove_policy(c.req(RemovePolicyRequest { name }))
                            .await
                    }
                })
                .await?;
                println!("policy {name} removed");
            }
        }
        Ok(())
    }
}
