//! `anygatectl cluster ...`

use super::Result;
use crate::output::{json, table};
use crate::Ctx;
use anygate_proto::v1::cluster_service_client::ClusterServiceClient as C;
use anygate_proto::v1::*;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Start a new cluster with the node at --endpoint as its only voter.
    Init,
    /// Add a node as a non-voting learner; it catches up before this returns.
    AddLearner {
        #[arg(long)]
        id: u64,
        /// The node's gRPC address as the other nodes reach it (host:port).
        #[arg(long)]
        addr: String,
    },
    /// Make a learner a voter.
    Promote {
        #[arg(long)]
        id: u64,
    },
    /// Remove a node (voter or learner) from the cluster.
    Remove {
        #[arg(long)]
        id: u64,
    },
    /// Every node: role, term, log and applied index, lag, leader, dataplane
    /// and anycast announcement (state and established BGP sessions / configured).
    Status,
    /// Build a snapshot on the node at --endpoint and purge its log behind it.
    Snapshot,
}

impl ClusterCmd {
    pub async fn run(self, ctx: &Ctx) -> Result {
        let c = &ctx.client;
        match self {
            ClusterCmd::Init => {
                let r = c
                    .call(|ch| async move { crate::grpc!(C, ch).init(c.req(InitRequest {})).await })
                    .await?;
                println!("cluster initialised; node {} is the leader", r.leader_id);
            }
            ClusterCmd::AddLearner { id, addr } => {
                let m = c
                    .call(|ch| {
                        let addr = addr.clone();
                        async move {
                            crate::grpc!(C, ch)
                                .add_learner(c.req(AddLearnerRequest { id, addr }))
                                .await
                        }
                    })
                    .await?;
                print_membership(ctx, &m, &format!("node {id} added as a learner"));
            }
            ClusterCmd::Promote { id } => {
                let m = c
                    .call(|ch| async move {
                        crate::grpc!(C, ch)
                            .promote(c.req(PromoteRequest { id }))
                            .await
                    })
                    .await?;
                print_membership(ctx, &m, &format!("node {id} is now a voter"));
            }
            ClusterCmd::Remove { id } => {
                let m = c
                    .call(|ch| async move {
                        crate::grpc!(C, ch)
                            .remove_node(c.req(RemoveNodeRequest { id }))
                            .await
                    })
                    .await?;
                print_membership(ctx, &m, &format!("node {id} removed"));
            }
            ClusterCmd::Status => {
                let s =
                    c.call(|ch| async move {
                        crate::grpc!(C, ch).status(c.req(StatusRequest {})).await
                    })
                    .await?;
                if ctx.json {
                    println!("{}", json(&s));
                    return Ok(());
                }
                let rows = s
                    .nodes
                    .iter()
                    .map(|n| {
                        vec![
                            n.id.to_string(),
                            n.addr.clone(),
                            n.role.clone(),
                            if n.voter { "voter" } else { "learner" }.into(),
                            n.term.to_string(),
                            n.last_log_index.to_string(),
                            n.applied_index.to_string(),
                            n.lag.to_string(),
                            if n.leader_id == 0 {
                                "-".into()
                            } else {
                                n.leader_id.to_string()
                            },
                            dataplane_cell(n.dataplane.as_ref()),
                            bgp_cell(n),
                        ]
                    })
                    .collect();
                println!(
                    "{}",
                    table(
                        &[
                            "ID",
                            "ADDRESS",
                            "ROLE",
                            "MEMBER",
                            "TERM",
                            "LAST LOG",
                            "APPLIED",
                            "LAG",
                            "LEADER",
                            "DATAPLANE",
                            "ANYCAST"
                        ],
                        rows
                    )
                );
                let leader = if s.leader_id == 0 {
                    "none".into()
                } else {
                    s.leader_id.to_string()
                };
                println!(
                    "leader: {leader}   term: {}   answered by node {}",
                    s.term, s.answered_by
                );
                for n in &s.nodes {
                    if let Some(d) = n
                        .dataplane
                        .as_ref()
                        .filter(|d| !d.healthy && d.backend() != DataplaneBackend::None)
                    {
                        println!("warning: node {} dataplane unhealthy: {}", n.id, d.reason);
                    }
                }
                for n in &s.nodes {
                    if let Some(b) = n
                        .bgp
                        .as_ref()
                        .filter(|b| !matches!(b.state(), BgpState::Disabled | BgpState::Announced))
                    {
                        println!("note: node {} not announcing: {}", n.id, b.reason);
                    }
                }
                for n in s.nodes.iter().filter(|n| !n.error.is_empty()) {
                    println!(
                        "warning: node {} ({}) unreachable: {}",
                        n.id, n.addr, n.error
                    );
                }
                let clocks: Vec<i64> = s
                    .nodes
                    .iter()
                    .filter(|n| n.clock_ms > 0)
                    .map(|n| n.clock_ms)
                    .collect();
                if let (Some(min), Some(max)) = (clocks.iter().min(), clocks.iter().max()) {
                    // Includes the time it took to ask; a real skew shows as a large spread.
                    if max - min > 100 {
                        println!("warning: node clocks differ by about {} ms (gateways share a key; keep them NTP-synced)", max - min);
                    }
                }
            }
            ClusterCmd::Snapshot => {
                let r = c
                    .call(|ch| async move {
                        crate::grpc!(C, ch)
                            .trigger_snapshot(c.req(SnapshotRequest {}))
                            .await
                    })
                    .await?;
                println!("snapshot built at index {}", r.index);
            }
        }
        Ok(())
    }
}

fn print_membership(ctx: &Ctx, m: &MembershipResponse, msg: &str) {
    if ctx.json {
        println!("{}", json(m));
    } else {
        println!(
            "{msg} (voters {:?}, learners {:?}, log index {})",
            m.voters, m.learners, m.log_index
        );
    }
}

/// "announced 2/2", "withdrawn", "DRAINED", "off" (the reason is printed below the table).
fn bgp_cell(n: &NodeStatus) -> String {
    match n.bgp.as_ref() {
        None if n.drained => "DRAINED".into(),
        None => "-".into(),
        Some(b) if b.state() == BgpState::Disabled => {
            if n.drained { "off, DRAINED" } else { "off" }.into()
        }
        Some(b) => {
            let s = format!(
                "{} {}/{}",
                state_name(b.state()),
                b.sessions_established,
                b.sessions
            );
            if n.drained {
                format!("{s} DRAINED")
            } else {
                s
            }
        }
    }
}

/// "ok 1000 peers @42" or "UNHEALTHY" (the reason is printed below the table).
fn dataplane_cell(d: Option<&anygate_proto::v1::DataplaneStatus>) -> String {
    match d {
        None => "-".into(),
        Some(d) if d.backend() == DataplaneBackend::None => "off".into(),
        Some(d) if d.healthy => format!("ok {} peers @{}", d.device_peers, d.applied_index),
        Some(_) => "UNHEALTHY".into(),
    }
}

/// "announced", "graceful-shutdown", …: the name JSON uses too.
pub fn state_name(s: BgpState) -> String {
    anygate_proto::enum_names::short_name(s.as_str_name(), "BGP_STATE_")
}
