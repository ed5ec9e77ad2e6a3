//! PeerService: add (single or batch import), list, show, state changes,
//! remove, rotate, endpoints.

use super::convert::{self, peer_ref, peer_to_pb};
use super::status::invalid;
use super::{committed, unexpected, Api, MAX_PEERS_PER_REQUEST};
use crate::model::{Command, EndpointRecord, Response};
use anygate_proto::tls::Role;
use anygate_proto::v1::peer_service_server::PeerService;
use anygate_proto::v1::*;
use tonic::{Request, Response as Reply, Status};

pub struct PeerApi(pub Api);

fn peers(r: Response) -> Result<Vec<crate::model::Peer>, Status> {
    match r {
        Response::Peers(p) => Ok(p),
        other => Err(unexpected(other)),
    }
}

fn one(r: Response) -> Result<Reply<Peer>, Status> {
    let p = peers(r)?;
    p.first()
        .map(|p| Reply::new(peer_to_pb(p, false)))
        .ok_or_else(|| Status::internal("empty answer"))
}

impl PeerApi {
    /// The peers a listing asks for, from one read of the state, and the
    /// index it was read at.
    async fn listed(&self, r: &ListPeersRequest) -> Result<(u64, Vec<crate::model::Peer>), Status> {
        self.0.read_barrier(&r.read).await?;
        let want_state = convert::state_from_pb(r.state)?;
        let view = &self.0.node.view;
        Ok(view.read(|inv| {
            let peers = inv
                .peers()
                .filter(|p| r.user.is_empty() || p.user == r.user)
                .filter(|p| r.group.is_empty() || p.group == r.group)
                .filter(|p| want_state.is_none_or(|s| p.state == s))
                .cloned()
                .collect();
            (view.applied(), peers)
        }))
    }
}

#[tonic::async_trait]
impl PeerService for PeerApi {
    async fn add_peers(
        &self,
        req: Request<AddPeersRequest>,
    ) -> Result<Reply<AddPeersResponse>, Status> {
        let specs = &req.get_ref().peers;
        if specs.is_empty() {
            return Err(invalid("no peers given"));
        }
        if specs.len() > MAX_PEERS_PER_REQUEST {
            return Err(invalid(format!(
                "request too large: {} peers, at most {MAX_PEERS_PER_REQUEST} per request; send them in batches",
                specs.len()
            )));
        }
        let list = specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                convert::new_peer(s).map_err(|st| {
                    if specs.len() == 1 {
                        st
                    } else {
                        invalid(format!(
                            "peer {} of {}: {}",
                            i + 1,
                            specs.len(),
                            st.message()
                        ))
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.0
            .check_client_routes("allowed IP", list.iter().flat_map(|p| &p.allowed_ips))?;
        let w = self.0.write(&req, Command::AddPeers(list)).await?;
        let out = peers(w.response)?;
        Ok(committed(
            w.index,
            AddPeersResponse {
                peers: out.iter().map(|p| peer_to_pb(p, false)).collect(),
            },
        ))
    }

    async fn list_peers(
        &self,
        req: Request<ListPeersRequest>,
    ) -> Result<Reply<ListPeersResponse>, Status> {
        let (applied_index, peers) = self.listed(req.get_ref()).await?;
        Ok(Reply::new(ListPeersResponse {
            peers: peers.iter().map(|p| peer_to_pb(p, false)).collect(),
            applied_index,
        }))
    }

    type StreamPeersStream = super::PageStream<ListPeersResponse>;

    async fn stream_peers(
        &self,
        req: Request<ListPeersRequest>,
    ) -> Result<Reply<Self::StreamPeersStream>, Status> {
        let (applied_index, peers) = self.listed(req.get_ref()).await?;
        Ok(Reply::new(super::pages(peers, move |chunk| {
            ListPeersResponse {
                peers: chunk.iter().map(|p| peer_to_pb(p, false)).collect(),
                applied_index,
            }
        })))
    }

    async fn get_peer(&self, req: Request<GetPeerRequest>) -> Result<Reply<Peer>, Status> {
        let r = req.get_ref();
        if r.secrets {
            // Preshared keys are for admins only, and reading one is audited.
            let c = Api::require(&req, Role::Admin, "read preshared keys").inspect_err(|_| {
                self.0.metrics.denied(
                    Api::caller(&req).role.as_str(),
                    "anygate.v1.PeerService/GetPeer?secrets",
                )
            })?;
            let pr = peer_ref(&r.peer)?;
            if self.0.node.view.read(|inv| inv.resolve(&pr).is_none()) {
                return Err(Status::not_found(format!("no peer {pr}")));
            }
            self.0
                .audit_secret_read(&req, format!("preshared key of {pr}"))
                .await?;
            tracing::info!(caller = %c.name, peer = %r.peer, "preshared key read");
        }
        let pr = peer_ref(&r.peer)?;
        self.0.read_barrier(&r.read).await?;
        self.0
            .node
            .view
            .read(|inv| inv.resolve(&pr).map(|p| peer_to_pb(p, r.secrets)))
            .map(Reply::new)
            .ok_or_else(|| Status::not_found(format!("no peer {pr}")))
    }

    async fn set_peer_state(
        &self,
        req: Request<SetPeerStateRequest>,
    ) -> Result<Reply<Peer>, Status> {
        let r = req.get_ref();
        let peer = peer_ref(&r.peer)?;
        let Some(state) = convert::state_from_pb(r.state)? else {
            return Err(invalid("state is required (active, disabled or revoked)"));
        };
        let w = self
            .0
            .write(&req, Command::SetPeerState { peer, state })
            .await?;
        Ok(committed(w.index, one(w.response)?.into_inner()))
    }

    async fn remove_peer(
        &self,
        req: Request<RemovePeerRequest>,
    ) -> Result<Reply<RemovePeerResponse>, Status> {
        let peer = peer_ref(&req.get_ref().peer)?;
        let w = self.0.write(&req, Command::RemovePeer { peer }).await?;
        let removed = peers(w.response)?.first().map(|p| peer_to_pb(p, false));
        Ok(committed(w.index, RemovePeerResponse { removed }))
    }

    async fn rotate_peer(&self, req: Request<RotatePeerRequest>) -> Result<Reply<Peer>, Status> {
        let r = req.get_ref();
        let peer = peer_ref(&r.peer)?;
        let new_key = convert::key("new_public_key", &r.new_public_key)?;
        let new_psk = r
            .new_preshared_key
            .as_deref()
            .map(|k| convert::key("new_preshared_key", k))
            .transpose()?;
        let w = self
            .0
            .write(
                &req,
                Command::RotatePeer {
                    peer,
                    new_key,
                    new_psk,
                },
            )
            .await?;
        Ok(committed(w.index, one(w.response)?.into_inner()))
    }

    async fn revoke_keys(
        &self,
        req: Request<RevokeKeysRequest>,
    ) -> Result<Reply<RevokeKeysResponse>, Status> {
        let keys = req
            .get_ref()
            .public_keys
            .iter()
            .map(|k| convert::key("public_keys", k))
            .collect::<Result<Vec<_>, _>>()?;
        let w = self.0.write(&req, Command::RevokeKeys(keys)).await?;
        match w.response {
            Response::Count(revoked) => Ok(committed(w.index, RevokeKeysResponse { revoked })),
            other => Err(unexpected(other)),
        }
    }

    async fn list_revoked_keys(
        &self,
        req: Request<ListRevokedKeysRequest>,
    ) -> Result<Reply<ListRevokedKeysResponse>, Status> {
        self.0.read_barrier(&req.get_ref().read).await?;
        let keys = self.0.node.view.read(|inv| {
            inv.revoked()
                .map(|(k, r)| convert::revoked_to_pb(k, r))
                .collect()
        });
        Ok(Reply::new(ListRevokedKeysResponse { keys }))
    }

    async fn list_endpoints(
        &self,
        req: Request<ListEndpointsRequest>,
    ) -> Result<Reply<ListEndpointsResponse>, Status> {
        self.0.read_barrier(&req.get_ref().read).await?;
        let endpoints = self.0.node.view.read(|inv| {
            inv.endpoints()
                .map(|(k, e)| Endpoint {
                    public_key: k.to_string(),
                    endpoint: e.endpoint.to_string(),
                    last_handshake_ms: e.last_handshake_ms,
                    observed_by: e.observed_by,
                    observed_at_ms: e.observed_at_ms,
                })
                .collect()
        });
        Ok(Reply::new(ListEndpointsResponse { endpoints }))
    }

    async fn report_endpoints(
        &self,
        req: Request<ReportEndpointsRequest>,
    ) -> Result<Reply<ReportEndpointsResponse>, Status> {
        let r = req.get_ref();
        if r.endpoints.len() > MAX_PEERS_PER_REQUEST {
            return Err(invalid(format!(
                "at most {MAX_PEERS_PER_REQUEST} endpoints per report"
            )));
        }
        let obs =
            r.endpoints
                .iter()
                .map(|e| {
                    let key = convert::key("public_key", &e.public_key)?;
                    let endpoint = e.endpoint.parse().map_err(|_| {
                        invalid(format!("endpoint {:?} is not ip:port", e.endpoint))
                    })?;
                    Ok((
                        key,
                        EndpointRecord {
                            endpoint,
                            last_handshake_ms: e.last_handshake_ms,
                            observed_by: e.observed_by,
                            observed_at_ms: e.observed_at_ms,
                        },
                    ))
                })
                .collect::<Result<Vec<_>, Status>>()?;
        let w = self.0.write(&req, Command::UpdateEndpoints(obs)).await?;
        match w.response {
            Response::Count(n) => Ok(Reply::new(ReportEndpointsResponse { accepted: n as u32 })),
            other => Err(unexpected(other)),
        }
    }
}
