//! `anygatectl audit ...`

use super::{read_opts, Result};
use crate::output::{json, table, when};
use crate::Ctx;
use anygate_proto::v1::audit_service_client::AuditServiceClient as C;
use anygate_proto::v1::*;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Newest first.
    List {
        /// Only entries at or after this time (RFC 3339, e.g. 2026-11-25T10:00:00Z) or this long ago (e.g. 1h).
        #[arg(long)]
        since: Option<String>,
        /// Only this actor.
        #[arg(long)]
        actor: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Only entries below this log index: the next (older) page starts
        /// below the last index shown (the table prints the flag to use).
        #[arg(long, value_name = "INDEX")]
        before: Option<u64>,
        #[arg(long)]
        stale: bool,
    },
}

pub fn parse_time(s: &str) -> std::result::Result<i64, tonic::Status> {
    let now = std::time::SystemTime::now();
    let t = if let Ok(d) = humantime::parse_duration(s) {
        now - d
    } else {
        humantime::parse_rfc3339_weak(s).map_err(|_| {
            tonic::Status::invalid_argument(format!(
                "{s:?} is neither a time (RFC 3339) nor a duration"
            ))
        })?
    };
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0))
}

impl AuditCmd {
    pub async fn run(self, ctx: &Ctx) -> Result {
        let c = &ctx.client;
        let AuditCmd::List {
            since,
            actor,
            limit,
            before,
            stale,
        } = self;
        let since_ms = since.as_deref().map(parse_time).transpose()?.unwrap_or(0);
        let req = ListAuditRequest {
            read: read_opts(stale),
            since_ms,
            actor: actor.unwrap_or_default(),
            limit,
            before_index: before.unwrap_or(0),
        };
        let r = c
            .call(|ch| {
                let req = req.clone();
                async move { crate::grpc!(C, ch).list_audit(c.req(req)).await }
            })
            .await?;
        if ctx.json {
            println!("{}", json(&r.entries));
            return Ok(());
        }
        let rows = r
            .entries
            .iter()
            .map(|e| {
                vec![
                    e.index.to_string(),
                    when(e.at_ms),
                    e.actor.clone(),
                    e.action.clone(),
                    e.object.clone(),
                    if e.error.is_empty() {
                        e.detail.clone()
                    } else {
                        format!("REFUSED: {}", e.error)
                    },
                ]
            })
            .collect();
        println!(
            "{}",
            table(
                &["INDEX", "TIME", "ACTOR", "ACTION", "OBJECT", "RESULT"],
                rows
            )
        );
        if r.next_before_index > 0 {
            println!("older entries: --before {}", r.next_before_index);
        }
        Ok(())
    }
}
