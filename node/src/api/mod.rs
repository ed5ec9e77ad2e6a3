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
use crate::model::{Command, Request, Response};
use crate::raft::{RaftNode, Written};
use anygate_proto::v1::ReadOptions;
use std::time::{SystemTime, UNIX_EPOCH};
use tonic::Status;

/// Operator requests may carry at most this many bytes.
pub const MAX_API_MESSAGE: usize = 16 * 1024 * 1024;
/// Peers in one AddPeers request (one log entry).
pub const MAX_PEERS_PER_REQUEST: usize = 5_000;

pub const ACTOR_HEADER: &str = "x-anygate-actor";
/// Clients that retry send the same id with every attempt of one write.
pub const REQUEST_ID_HEADER: &str = "x-anygate-request-id";

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
    pub dataplane: crate::reconcile::driver::StatusRx,
    pub bgp: crate::bgp::speaker::BgpRx,
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
        let request_id = match req.metadata().get(REQUEST_ID_HEADER) {
            None => None,
            Some(v) => match v.to_str() {
                Ok(s) if !s.is_empty() && s.len() <= 64 => Some(s.to_string()),
                _ => {
                    return Err(status::invalid(format!(
                        "{REQUEST_ID_HEADER} must be 1-64 visible ASCII characters"
                    )))
                }
            },
        };
        let r = Request {
            actor: Self::actor(req),
            at_ms: now_ms(),
            request_id,
            cmd,
        };
        let action = r.cmd.describe().0;
        let replay = Replay::of(&r.cmd);
        let res = self.node.write(r).await;
        self.metrics.write_result(action, res.is_ok());
        match res {
            Ok(Written {
                index,
                response: Response::Duplicate { index: first },
            }) => {
                // A retry of a write that already applied: answer from the
                // state as it is now, once this node has applied that far.
                self.node
                    .wait_applied(index, crate::raft::CLIENT_TIMEOUT)
                    .await?;
                tracing::info!(
                    first,
                    action,
                    "retried request answered without applying it again"
                );
                Ok(Written {
                    index,
                    response: self.replay(replay),
                })
            }
            other => other.map_err(Status::from),
        }
    }

    /// The answer a command would have given, rebuilt from current state.
    fn replay(&self, key: Replay) -> Response {
        self.node.view.read(|inv| match key {
            Replay::Peers(keys) => {
                Response::Peers(keys.iter().filter_map(|k| inv.peer(k).cloned()).collect())
            }
            Replay::PeerRef(r) => Response::Peers(inv.resolve(&r).cloned().into_iter().collect()),
            Replay::Pool(name) => match inv.pools().into_iter().find(|p| p.name == name) {
                Some(p) => Response::Pool(p),
                None => Response::Empty,
            },
            Replay::Settings => Response::Settings(inv.settings().clone()),
            Replay::Count => Response::Count(0),
            Replay::Empty => Response::Empty,
        })
    }

    /// Linearizable unless the caller asked for a stale (local) read.
    pub async fn read_barrier(&self, opts: &Option<ReadOptions>) -> Result<(), Status> {
        if opts.as_ref().is_some_and(|o| o.stale) {
            return Ok(());
        }
        self.node.read_barrier().await.map_err(Status::from)
    }
}

/// What is needed to answer a retried request again (small: never the
/// whole command).
enum Replay {
    Peers(Vec<crate::model::WgKey>),
    PeerRef(crate::model::PeerRef),
    Pool(String),
    Settings,
    Count,
    Empty,
}

impl Replay {
    fn of(cmd: &Command) -> Replay {
        match cmd {
            Command::AddPeers(list) => Replay::Peers(list.iter().map(|p| p.public_key).collect()),
            Command::SetPeerState { peer, .. } => Replay::PeerRef(peer.clone()),
            Command::RotatePeer { new_key, .. } => Replay::Peers(vec![*new_key]),
            Command::RemovePeer { .. } => Replay::Peers(vec![]),
            Command::AddPool { name, .. } => Replay::Pool(name.clone()),
            Command::SetSettings(_) => Replay::Settings,
            Command::ExpirePeers | Command::UpdateEndpoints(_) => Replay::Count,
            Command::RemovePool { .. } | Command::SetNodeFlags { .. } => Replay::Empty,
        }
    }
}

/// Response metadata naming the Raft index a write committed at: with it a
/// client can wait for a node (or its dataplane) to have applied the write.
pub const INDEX_HEADER: &str = "x-anygate-index";

pub fn committed<T>(index: u64, msg: T) -> tonic::Response<T> {
    let mut r = tonic::Response::new(msg);
    r.metadata_mut().insert(
        INDEX_HEADER,
        index
            .to_string()
            .parse()
            .expect("digits are valid metadata"),
    );
    r
}

fn unexpected(r: crate::model::Response) -> Status {
    Status::internal(format!("unexpected state machine answer: {r:?}"))
}
