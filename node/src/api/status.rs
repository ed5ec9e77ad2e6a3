//! The one mapping from node errors to gRPC status. "Not leader" is
//! `Unavailable` carrying the leader's address in metadata, which anygatectl
//! follows.

use crate::model::ErrorKind;
use crate::raft::NodeError;
use tonic::{Code, Status};

pub const LEADER_ADDR: &str = "x-anygate-leader";
pub const LEADER_ID: &str = "x-anygate-leader-id";

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        match e {
            NodeError::NotLeader { leader } => {
                let mut s = Status::unavailable(
                    NodeError::NotLeader {
                        leader: leader.clone(),
                    }
                    .to_string(),
                );
                if let Some((id, addr)) = leader {
                    if let Ok(v) = addr.parse() {
                        s.metadata_mut().insert(LEADER_ADDR, v);
                    }
                    if let Ok(v) = id.to_string().parse() {
                        s.metadata_mut().insert(LEADER_ID, v);
                    }
                }
                s
            }
            NodeError::Unavailable(m) => Status::unavailable(m),
            NodeError::Fatal(m) => Status::internal(m),
            NodeError::InvalidArgument(m) => Status::invalid_argument(m),
            NodeError::FailedPrecondition(m) => Status::failed_precondition(m),
            NodeError::Rejected(a) => {
                let code = match a.kind {
                    ErrorKind::InvalidArgument => Code::InvalidArgument,
                    ErrorKind::NotFound => Code::NotFound,
                    ErrorKind::AlreadyExists => Code::AlreadyExists,
                    ErrorKind::FailedPrecondition => Code::FailedPrecondition,
                    ErrorKind::OutOfRange => Code::OutOfRange,
                    ErrorKind::ResourceExhausted => Code::ResourceExhausted,
                    ErrorKind::PermissionDenied => Code::PermissionDenied,
                };
                Status::new(code, a.message)
            }
        }
    }
}

pub fn invalid(msg: impl std::fmt::Display) -> Status {
    Status::invalid_argument(msg.to_string())
}
