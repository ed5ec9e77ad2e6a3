//! `anygatectl pool ...`

use super::{read_opts, Result};
use crate::output::{json, table};
use crate::Ctx;
use anygate_proto::v1::pool_service_client::PoolServiceClient as C;
use anygate_proto::v1::*;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum PoolCmd {
    /// Add a pool: one IPv4 and/or one IPv6 CIDR (repeat --cidr).
    ///
    /// The network address, the v4 broadcast address and the first host
    /// (the gateways' own tunnel address) are never given to clients.
    Add {
        name: String,
        #[arg(long, required = true)]
        cidr: Vec<String>,
        /// Reserve the pool for peers of this group.
        #[arg(long)]
        group: Option<String>,
    },
    /// List pools with their use.
    List {
        #[arg(long)]
        stale: bool,
    },
    /// Remove an empty pool.
    Remove { name: String },
}

impl PoolCmd {
    pub async fn run(self, ctx: &Ctx) -> Result {
        let c = &ctx.client;
        match self {
            PoolCmd::Add { name, cidr, group } => {
                let pool = Pool {
                    name,
                    cidrs: cidr,
                    group: group.unwrap_or_default(),
                    ..Default::default()
                };
                let p = c
                    .call(|ch| {
                        let pool = pool.clone();
                        async move {
                            crate::grpc!(C, ch)
                                .add_pool(c.req(AddPoolRequest { pool: Some(pool) }))
                                .await
                        }
                    })
                    .await?;
                if ctx.json {
                    println!("{}", json(&p));
                } else {
                    println!(
                        "pool {} added: {} ({} addresses)",
                        p.name,
                        p.cidrs.join(", "),
                        capacity(p.capacity)
                    );
                }
            }
            PoolCmd::List { stale } => {
                let r = c
                    .call(|ch| async move {
                        crate::grpc!(C, ch)
                            .list_pools(c.req(ListPoolsRequest {
                                read: read_opts(stale),
                            }))
                            .await
                    })
                    .await?;
                if ctx.json {
                    println!("{}", json(&r.pools));
                    return Ok(());
                }
                let rows = r
                    .pools
                    .iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            p.cidrs.join(", "),
                            if p.group.is_empty() {
                                "-".into()
                            } else {
                                p.group.clone()
                            },
                            p.allocated.to_string(),
                            capacity(p.capacity),
                        ]
                    })
                    .collect();
                println!(
                    "{}",
                    table(&["NAME", "CIDRS", "GROUP", "ALLOCATED", "CAPACITY"], rows)
                );
            }
            PoolCmd::Remove { name } => {
                c.call(|ch| {
                    let name = name.clone();
                    async move {
                        crate::grpc!(C, ch)
                            .remove_pool(c.req(RemovePoolRequest { name }))
                            .await
                    }
                })
                .await?;
                println!("pool {name} removed");
            }
        }
        Ok(())
    }
}

/// The API saturates at 2^64-1 (an IPv6 /64 alone has 2^64 addresses).
fn capacity(c: u64) -> String {
    if c == u64::MAX {
        "2^64 or more".into()
    } else {
        c.to_string()
    }
}
