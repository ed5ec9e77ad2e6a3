//! `anygatectl node ...`: per-node operator actions.

use super::Result;
use crate::output::json;
use crate::Ctx;
use anygate_proto::v1::cluster_service_client::ClusterServiceClient as C;
use anygate_proto::v1::*;
use clap::Subcommand;
use std::time::{Duration, Instant};

#[derive(Subcommand)]
pub enum NodeCmd {
    /// Take a node out of service without stopping it: it re-announces the
    /// anycast prefixes with GRACEFUL_SHUTDOWN (65535:0) so routers move
    /// clients away, then withdraws. The flag is replicated: it survives
    /// restarts until `node undrain`. Waits until the node has withdrawn.
    Drain {
        /// The node's Raft id (see `cluster status`).
        id: u64,
        /// Return once the flag is committed; do not wait for the withdrawal.
        #[arg(long)]
        no_wait: bool,
    },
    /// Put a drained node back into service; waits until it announces again
    /// (if its health allows it).
    Undrain {
        id: u64,
        #[arg(long)]
        no_wait: bool,
    },
}

impl NodeCmd {
    pub async fn run(self, ctx: &Ctx) -> Result {
        let (id, drained, no_wait) = match self {
            NodeCmd::Drain { id, no_wait } => (id, true, no_wait),
            NodeCmd::Undrain { id, no_wait } => (id, false, no_wait),
        };
        let c = &ctx.client;
        let r = c
            .call(|ch| async move {
                crate::grpc!(C, ch)
                    .drain(c.req(DrainRequest { id, drained }))
                    .await
            })
            .await?;
        let verb = if drained { "drained" } else { "undrained" };
        if no_wait {
            if ctx.json {
                println!("{}", json(&r));
            } else {
                println!("node {id} {verb} (index {})", r.index);
            }
            return Ok(());
        }
        // Watch the node's announcement until it follows the flag.
        let spinner = (!ctx.json).then(|| {
            let s = indicatif::ProgressBar::new_spinner();
            s.set_message(format!(
                "node {id} {verb}; waiting for its announcement to follow"
            ));
            s.enable_steady_tick(Duration::from_millis(100));
            s
        });
        let deadline = Instant::now() + c.timeout;
        let last = loop {
            let s = c
                .call(|ch| async move { crate::grpc!(C, ch).status(c.req(StatusRequest {})).await })
                .await?;
            let n = s.nodes.into_iter().find(|n| n.id == id);
            let bgp = n.as_ref().and_then(|n| n.bgp.clone()).unwrap_or_default();
            let done = match bgp.state() {
                BgpState::Disabled | BgpState::Unspecified => true,
                s if drained => s == BgpState::Withdrawn,
                // Undrained: announced, or held back by something else.
                BgpState::Announced => true,
                _ => !matches!(
                    bgp.withdraw_reason(),
                    WithdrawReason::Drained | WithdrawReason::None
                ),
            };
            if done || Instant::now() > deadline {
                break (done, bgp);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if let Some(s) = spinner {
            s.finish_and_clear();
        }
        let (done, bgp) = last;
        if ctx.json {
            println!(
                "{}",
                serde_json::json!({"id": id, "drained": drained, "index": r.index, "bgp": bgp})
            );
        } else {
            let state = super::cluster::state_name(bgp.state());
            let ann = if matches!(bgp.state(), BgpState::Disabled | BgpState::Unspecified) {
                "BGP not enabled on that node".to_string()
            } else if bgp.reason.is_empty() {
                state
            } else {
                format!("{state} ({})", bgp.reason)
            };
            println!("node {id} {verb} (index {}); announcement: {ann}", r.index);
        }
        if !done {
            return Err(tonic::Status::deadline_exceeded(format!(
                "node {id} is {verb} in the cluster state, but its announcement did not follow within {:?}",
                c.timeout
            )));
        }
        Ok(())
    }
}
