//! The operator API: one tonic service per file, all sharing [`Api`]. Services
//! parse and validate syntax, stamp the request (actor, proposer time) and hand
//! it to [`RaftNode`]; they never mutate state themselves.

pub mod audit;
pub mod cluster;
pub mod convert;
pub mod peers;
pub mod pools;
pub mod settings;
pub mod status;

use crate::metrics::Metrics;
use crate::model::{Command, Request};
use crate::raft::{RaftNode, Written};
use anygate_proto::v1::ReadOptions;
use std::time::{SystemTime, UNIX_EPOCH};
use tonic::Status;

/// Operator requests may carry at most this many bytes.
pub const MAX_API_MESSAGE: usize = 16 * 1024 * 1024;
/// Peers in one AddPeers request (one log entry).
pub const MAX_PEERS_PER_REQUEST: usize = 5_000;

pub const ACTOR_HEADER: &str = "x-anygate-actor";

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Clone)]
pub struct Api {
    pub node: RaftNode,
    pub metrics: Metrics,
}

impl Api {
    /// Who is asking: the actor header (until client certificates name
    /// them), and the remote address.
    pub fn actor<T>(req: &tonic::Request<T>) -> String {
        let who = req
            .metadata()
            .get(ACTOR_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|s| !s.is_empty() && s.len() <= 128)
            .unwrap_or("anonymous");
        match req.remote_addr() {
            Some(a) => format!("{who}@{}", a.ip()),
            None => who.to_string(),
        }
    }

    pub async fn write<T>(&self, req: &tonic::Request<T>, cmd: Command) -> Result<Written, Status> {
        let r = Request {
            actor: Self::actor(req),
            at_ms: now_ms(),
            cmd,
        };
        let action = r.cmd.describe().0;
        let res = self.node.write(r).await;
        self.metrics.write_result(action, res.is_ok());
        res.map_err(Status::from)
    }

    /// Linearizable unless the caller asked for a stale (local) read.
    pub async fn read_barrier(&self, opts: &Option<ReadOptions>) -> Result<(), Status> {
        if opts.as_ref().is_some_and(|o| o.stale) {
            return Ok(());
        }
        self.node.read_barrier().await.map_err(Status::from)
    }
}

fn unexpected(r: crate::model::Response) -> Status {
    Status::internal(format!("unexpected state machine answer: {r:?}"))
}
