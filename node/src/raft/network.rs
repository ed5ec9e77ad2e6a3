//! Raft transport, client side: one lazily connected tonic channel per peer
//! node; openraft messages travel as serde-JSON bytes inside `RaftPayload`.

use super::types::TypeConfig;
use crate::model::NodeId;
use anygate_proto::raft::v1::raft_service_client::RaftServiceClient;
use anygate_proto::raft::v1::RaftPayload;
use anygate_proto::tls::{AddressError, Tls};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

/// Raft messages can be large (snapshot chunks, batches of entries).
pub const MAX_RAFT_MESSAGE: usize = 64 * 1024 * 1024;

// One bounded log entry (and its envelope) always fits one message, so the
// sender can always make progress by sending fewer entries.
const _: () = assert!(crate::model::limits::ENTRY_BYTES + 1024 * 1024 < MAX_RAFT_MESSAGE);

/// Shared cache of channels by address, used by Raft and by write forwarding.
/// With TLS every (re)connect presents this node's current certificate.
#[derive(Clone, Default)]
pub struct Channels {
    inner: Arc<Mutex<HashMap<String, Channel>>>,
    tls: Option<Arc<Tls>>,
}

impl Channels {
    pub fn new(tls: Option<Arc<Tls>>) -> Channels {
        Channels {
            inner: Default::default(),
            tls,
        }
    }

    pub fn get(&self, addr: &str) -> Result<Channel, AddressError> {
        let mut m = self.inner.lock().expect("channel cache poisoned");
        if let Some(c) = m.get(addr) {
            return Ok(c.clone());
        }
        let ch = anygate_proto::tls::channel(addr, self.tls.clone(), Duration::from_millis(500))?;
        m.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    pub fn raft_client(&self, addr: &str) -> Result<RaftServiceClient<Channel>, AddressError> {
        Ok(RaftServiceClient::new(self.get(addr)?)
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE))
    }
}

impl RaftNetworkFactory<TypeConfig> for Channels {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Conn {
        Conn {
            target,
            addr: node.addr.clone(),
            client: self.raft_client(&node.addr),
        }
    }
}

pub struct Conn {
    target: NodeId,
    addr: String,
    client: Result<RaftServiceClient<Channel>, AddressError>,
}

pub fn encode<T: Serialize>(v: &T) -> RaftPayload {
    RaftPayload {
        data: serde_json::to_vec(v).expect("raft message serialises"),
    }
}

pub fn decode<T: DeserializeOwned>(p: &RaftPayload) -> Result<T, serde_json::Error> {
    serde_json::from_slice(&p.data)
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl Conn {
    async fn call<
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    >(
        &mut self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
        self.send(rpc, encode(req), option).await
    }

    async fn send<Resp: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &mut self,
        rpc: Rpc,
        payload: RaftPayload,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
        let client = match &mut self.client {
            Ok(c) => c,
            Err(e) => {
                return Err(RPCError::Unreachable(Unreachable::new(&Msg(format!(
                    "{}: {e}",
                    self.addr
                )))))
            }
        };
        let mut request = tonic::Request::new(payload);
        request.set_timeout(option.hard_ttl());
        let res = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let payload = match res {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&Msg(format!(
                    "{}: {}",
                    self.addr,
                    s.message()
                )))))
            }
            Err(s) => {
                return Err(RPCError::Network(NetworkError::new(&Msg(format!(
                    "{}: {}",
                    self.addr,
                    s.message()
                )))))
            }
        };
        let res: Result<Resp, RaftError<NodeId, E>> =
            decode(&payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let payload = encode(&rpc);
        let n = rpc.entries.len() as u64;
        // Leave room for the envelope; openraft retries with fewer entries.
        let limit = MAX_RAFT_MESSAGE as u64 - 64 * 1024;
        let size = payload.data.len() as u64;
        if size > limit && n > 1 {
            let hint = (n * limit / size).clamp(1, n - 1);
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        if size > limit {
            // Only an entry admitted before entries were bounded can get
            // here; say so instead of failing quietly on every retry.
            tracing::error!(
                target = self.target,
                bytes = size,
                first = ?rpc.entries.first().map(|e| e.log_id),
                "a log entry is larger than a Raft message; it predates the entry bound and cannot be replicated"
            );
        }
        self.send(Rpc::Append, payload, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}
