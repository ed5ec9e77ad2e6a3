//! Raft transport, server side: feeds openraft the messages other nodes send,
//! and serves forwarded writes and read-index requests.

use super::network::{decode, encode};
use super::{NodeError, RaftNode};
use anygate_proto::raft::v1::raft_service_server::RaftService;
use anygate_proto::raft::v1::{
    RaftPayload, ReadIndexRequest, ReadIndexResponse, TimeoutNowRequest, TimeoutNowResponse,
};
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::raft::AppendEntriesResponse;
use tonic::{Request, Response, Status};

pub struct RaftServiceImpl {
    node: RaftNode,
}

impl RaftServiceImpl {
    pub fn new(node: RaftNode) -> Self {
        RaftServiceImpl { node }
    }
}

fn bad(e: serde_json::Error) -> Status {
    Status::invalid_argument(format!("undecodable raft message: {e}"))
}

#[tonic::async_trait]
impl RaftService for RaftServiceImpl {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: openraft::raft::AppendEntriesRequest<super::types::TypeConfig> =
            decode(req.get_ref()).map_err(bad)?;
        let commit = rpc.leader_commit.map(|l| l.index);
        let res = self.node.raft.append_entries(rpc).await;
        // Accepted from a current leader (a conflict still proves the
        // leader's term is current): the node is not partitioned.
        if matches!(
            res,
            Ok(AppendEntriesResponse::Success
                | AppendEntriesResponse::PartialSuccess(_)
                | AppendEntriesResponse::Conflict)
        ) {
            self.node.contact.touch(commit);
        }
        Ok(Response::new(encode(&res)))
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(req.get_ref()).map_err(bad)?;
        Ok(Response::new(encode(&self.node.raft.vote(rpc).await)))
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(req.get_ref()).map_err(bad)?;
        Ok(Response::new(encode(
            &self.node.raft.install_snapshot(rpc).await,
        )))
    }

    async fn forward(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let r = decode(req.get_ref()).map_err(bad)?;
        // Only one hop: a forwarded write is never forwarded again.
        let res: Result<super::Written, NodeError> = self.node.write_local(r).await;
        Ok(Response::new(encode(&res)))
    }

    async fn read_index(
        &self,
        _req: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        match self.node.raft.get_read_log_id().await {
            Ok((read, _)) => Ok(Response::new(ReadIndexResponse {
                index: read.map(|l| l.index).unwrap_or(0),
            })),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                Err(Status::failed_precondition("not the leader"))
            }
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    async fn timeout_now(
        &self,
        req: Request<TimeoutNowRequest>,
    ) -> Result<Response<TimeoutNowResponse>, Status> {
        let req = req.into_inner();
        tracing::info!(
            from = req.leader_id,
            term = req.term,
            "the stopping leader hands leadership to this node"
        );
        match self.node.timeout_now(req).await {
            Ok(()) => Ok(Response::new(TimeoutNowResponse {})),
            Err(NodeError::FailedPrecondition(m)) => Err(Status::failed_precondition(m)),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }
}
