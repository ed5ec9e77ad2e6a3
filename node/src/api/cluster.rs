//! ClusterService: membership (init, learners, promotion, removal) and the
//! cluster status table. Membership changes run on the leader; elsewhere
//! they answer `Unavailable` with the leader's address.

use super::Api;
use crate::raft::{write_error, NodeError};
use crate::time::now_ms;
use anygate_proto::v1::cluster_service_client::ClusterServiceClient;
use anygate_proto::v1::cluster_service_server::ClusterService;
use anygate_proto::v1::WithdrawReason;
use anygate_proto::v1::*;
use openraft::{BasicNode, ChangeMembers, ServerState};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tonic::{Request, Response as Reply, Status};

pub struct ClusterApi(pub Api);

impl ClusterApi {
    fn membership_config(&self) -> std::sync::Arc<crate::raft::types::StoredMembership> {
        self.0
            .node
            .raft
            .metrics()
            .borrow()
            .membership_config
            .clone()
    }

    fn membership(&self, log_index: u64) -> MembershipResponse {
        let m = self.membership_config();
        let voters: BTreeSet<u64> = m.membership().voter_ids().collect();
        MembershipResponse {
            learners: m.membership().learner_ids().collect(),
            voters: voters.into_iter().collect(),
            log_index,
        }
    }

    fn local_status(&self) -> NodeStatus {
        let node = &self.0.node;
        let m = node.raft.metrics().borrow().clone();
        let voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == node.id);
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Candidate => "candidate",
            ServerState::Follower if voter => "follower",
            ServerState::Follower | ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        NodeStatus {
            id: node.id,
            addr: node.addr.clone(),
            role: role.into(),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            lag: 0,
            leader_id: m.current_leader.unwrap_or(0),
            voter,
            clock_ms: now_ms(),
            error: String::new(),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.map(|l| l.index).unwrap_or(0),
            dataplane: Some({
                let d = self.0.dataplane.borrow();
                anygate_proto::v1::DataplaneStatus {
                    backend: proto_backend(d.backend) as i32,
                    supervised: d.supervised,
                    interface: d.interface.clone(),
                    public_key: d.public_key.map(|k| k.to_string()).unwrap_or_default(),
                    identity_ok: d.identity_ok,
                    healthy: d.healthy,
                    reason: d.reason.clone(),
                    applied_index: d.applied_index,
                    device_peers: d.device_peers,
                }
            }),
            bgp: Some({
                let b = self.0.bgp.borrow();
                anygate_proto::v1::BgpStatus {
                    state: proto_bgp_state(b.state) as i32,
                    withdraw_reason: b
                        .reason
                        .as_ref()
                        .map_or(WithdrawReason::None, proto_withdraw)
                        as i32,
                    reason: b.reason.as_ref().map(|r| r.to_string()).unwrap_or_default(),
                    sessions_established: b.sessions_established,
                    sessions: b.sessions,
                    routes: b.routes.clone(),
                    gobgpd_restarts: b.gobgpd_restarts,
                    client_routes: b.client_routes,
                }
            }),
            drained: node
                .view
                .read(|i| i.node_flags(node.id).map(|f| f.drained))
                .unwrap_or(false),
        }
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn revoke_certificates(
        &self,
        req: Request<RevokeCertificatesRequest>,
    ) -> Result<Reply<RevokeCertificatesResponse>, Status> {
        let serials = req
            .get_ref()
            .serials
            .iter()
            .map(|s| {
                s.trim()
                    .trim_start_matches("0x")
                    .replace(':', "")
                    .to_ascii_lowercase()
            })
            .collect();
        let w = self
            .0
            .write(&req, crate::model::Command::RevokeCertificates(serials))
            .await?;
        match w.response {
            crate::model::Response::Count(revoked) => Ok(super::committed(
                w.index,
                RevokeCertificatesResponse { revoked },
            )),
            other => Err(super::unexpected(other)),
        }
    }

    async fn list_revoked_certificates(
        &self,
        _req: Request<ListRevokedCertificatesRequest>,
    ) -> Result<Reply<ListRevokedCertificatesResponse>, Status> {
        self.0.read_barrier(&None).await?;
        let certificates = self.0.node.view.read(|inv| {
            inv.revoked_certs()
                .map(|(s, r)| RevokedCertificate {
                    serial: s.clone(),
                    revoked_at_ms: r.at_ms,
                    index: r.index,
                })
                .collect()
        });
        Ok(Reply::new(ListRevokedCertificatesResponse { certificates }))
    }

    async fn init(&self, _req: Request<InitRequest>) -> Result<Reply<InitResponse>, Status> {
        let node = &self.0.node;
        if node
            .raft
            .is_initialized()
            .await
            .map_err(|e| Status::internal(e.to_string()))?
        {
            return Err(Status::failed_precondition(format!(
                "node {} already belongs to an initialised cluster; use `cluster add-learner` on the leader to grow it",
                node.id
            )));
        }
        let members = BTreeMap::from([(node.id, BasicNode::new(node.addr.clone()))]);
        node.raft
            .initialize(members)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let mut rx = node.raft.metrics();
        let waited = tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|m| m.current_leader.is_some()),
        )
        .await;
        if waited.is_err() {
            return Err(Status::deadline_exceeded(
                "initialised, but no leader was elected within 10 s",
            ));
        }
        Ok(Reply::new(InitResponse { leader_id: node.id }))
    }

    async fn add_learner(
        &self,
        req: Request<AddLearnerRequest>,
    ) -> Result<Reply<MembershipResponse>, Status> {
        let r = req.get_ref();
        if r.id == 0 {
            return Err(Status::invalid_argument(
                "node id must be a positive integer",
            ));
        }
        if r.addr.parse::<std::net::SocketAddr>().is_err() && !r.addr.contains(':') {
            return Err(Status::invalid_argument(format!(
                "address {:?} is not host:port",
                r.addr
            )));
        }
        let m = self.membership_config();
        if let Some(n) = m.membership().get_node(&r.id) {
            if n.addr != r.addr {
                return Err(Status::already_exists(format!(
                    "node {} is already a member at {}; remove it first to change its address",
                    r.id, n.addr
                )));
            }
        }
        let res = self
            .0
            .node
            .raft
            .add_learner(r.id, BasicNode::new(r.addr.clone()), true)
            .await
            .map_err(|e| Status::from(write_error(e)))?;
        Ok(Reply::new(self.membership(res.log_id.index)))
    }

    async fn promote(
        &self,
        req: Request<PromoteRequest>,
    ) -> Result<Reply<MembershipResponse>, Status> {
        let id = req.get_ref().id;
        let m = self.membership_config();
        if m.membership().get_node(&id).is_none() {
            return Err(Status::not_found(format!(
                "node {id} is not a member; add it with `cluster add-learner` first"
            )));
        }
        let res = self
            .0
            .node
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| Status::from(write_error(e)))?;
        Ok(Reply::new(self.membership(res.log_id.index)))
    }

    async fn remove_node(
        &self,
        req: Request<RemoveNodeRequest>,
    ) -> Result<Reply<MembershipResponse>, Status> {
        let id = req.get_ref().id;
        let m = self.membership_config();
        let is_voter = m.membership().voter_ids().any(|v| v == id);
        if m.membership().get_node(&id).is_none() {
            return Err(Status::not_found(format!("node {id} is not a member")));
        }
        if is_voter && m.membership().voter_ids().count() == 1 {
            return Err(Status::failed_precondition("cannot remove the last voter"));
        }
        let change = if is_voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        let res = self
            .0
            .node
            .raft
            .change_membership(change, false)
            .await
            .map_err(|e| Status::from(write_error(e)))?;
        Ok(Reply::new(self.membership(res.log_id.index)))
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Result<Reply<StatusResponse>, Status> {
        let node = &self.0.node;
        let m = node.raft.metrics().borrow().clone();
        let members: Vec<(u64, String)> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        let me = self.local_status();
        let asks = members.iter().map(|(id, addr)| {
            let channels = node.channels.clone();
            let me = me.clone();
            let (id, addr) = (*id, addr.clone());
            async move {
                if id == me.id {
                    return me;
                }
                let ask = async {
                    let mut c =
                        ClusterServiceClient::new(channels.get(&addr).map_err(|e| e.to_string())?);
                    let mut r = Request::new(NodeInfoRequest {});
                    r.set_timeout(Duration::from_millis(800));
                    c.node_info(r)
                        .await
                        .map(|r| r.into_inner())
                        .map_err(|s| s.message().to_string())
                };
                ask.await.unwrap_or_else(|error| NodeStatus {
                    id,
                    addr,
                    role: "unreachable".into(),
                    error,
                    ..Default::default()
                })
            }
        });
        let mut nodes: Vec<NodeStatus> = futures::future::join_all(asks).await;
        let leader_id = m.current_leader.unwrap_or(0);
        let leader_last = nodes
            .iter()
            .find(|n| n.id == leader_id)
            .map(|n| n.last_log_index)
            .unwrap_or(me.last_log_index);
        let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
        for n in &mut nodes {
            n.voter = voters.contains(&n.id);
            if n.role != "unreachable" {
                n.lag = leader_last.saturating_sub(n.applied_index);
            }
        }
        Ok(Reply::new(StatusResponse {
            leader_id,
            term: m.current_term,
            nodes,
            answered_by: node.id,
        }))
    }

    async fn node_info(&self, _req: Request<NodeInfoRequest>) -> Result<Reply<NodeStatus>, Status> {
        Ok(Reply::new(self.local_status()))
    }

    async fn drain(&self, req: Request<DrainRequest>) -> Result<Reply<DrainResponse>, Status> {
        let r = req.get_ref();
        let (id, drained) = (r.id, r.drained);
        if self
            .membership_config()
            .membership()
            .get_node(&id)
            .is_none()
        {
            return Err(Status::not_found(format!(
                "node {id} is not a member of this cluster (see `anygatectl cluster status`)"
            )));
        }
        let w = self
            .0
            .write(
                &req,
                crate::model::Command::SetNodeFlags {
                    node: id,
                    drained: Some(drained),
                    site: None,
                },
            )
            .await?;
        Ok(super::committed(
            w.index,
            DrainResponse {
                id,
                drained,
                index: w.index,
            },
        ))
    }

    async fn trigger_snapshot(
        &self,
        _req: Request<SnapshotRequest>,
    ) -> Result<Reply<SnapshotResponse>, Status> {
        let node = &self.0.node;
        let applied = node.view.applied();
        node.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut rx = node.raft.metrics();
        let res = tokio::time::timeout(
            Duration::from_secs(30),
            rx.wait_for(|m| m.snapshot.is_some_and(|s| s.index >= applied)),
        )
        .await;
        match res {
            Ok(Ok(m)) => Ok(Reply::new(SnapshotResponse {
                index: m.snapshot.map(|s| s.index).unwrap_or(0),
            })),
            _ => Err(Status::from(NodeError::Unavailable(
                "snapshot did not complete within 30 s".into(),
            ))),
        }
    }
}

fn proto_backend(b: crate::health::Backend) -> anygate_proto::v1::DataplaneBackend {
    use crate::health::Backend;
    use anygate_proto::v1::DataplaneBackend as P;
    match b {
        Backend::None => P::None,
        Backend::Kernel => P::Kernel,
        Backend::Userspace => P::Userspace,
    }
}

fn proto_bgp_state(s: crate::health::BgpState) -> anygate_proto::v1::BgpState {
    use crate::health::BgpState;
    use anygate_proto::v1::BgpState as P;
    match s {
        BgpState::Disabled => P::Disabled,
        BgpState::Withdrawn => P::Withdrawn,
        BgpState::GracefulShutdown => P::GracefulShutdown,
        BgpState::Announced => P::Announced,
    }
}

fn proto_withdraw(w: &crate::health::Withdraw) -> WithdrawReason {
    use crate::health::Withdraw;
    match w {
        Withdraw::Starting => WithdrawReason::Starting,
        Withdraw::NotConfigured => WithdrawReason::NotConfigured,
        Withdraw::GobgpdUnavailable => WithdrawReason::GobgpdUnavailable,
        Withdraw::NoAnycastAddress => WithdrawReason::NoAnycastAddress,
        Withdraw::TaskFailed(_) => WithdrawReason::TaskFailed,
        Withdraw::ShuttingDown => WithdrawReason::ShuttingDown,
        Withdraw::Drained => WithdrawReason::Drained,
        Withdraw::NoDataplane => WithdrawReason::NoDataplane,
        Withdraw::Dataplane(_) => WithdrawReason::Dataplane,
        Withdraw::LeaderLease(_) => WithdrawReason::LeaderLease,
        Withdraw::CatchingUp(..) => WithdrawReason::CatchingUp,
        Withdraw::NoSession => WithdrawReason::NoSession,
    }
}
