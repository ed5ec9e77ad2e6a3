//! PolicyService: per-group access policies (default deny).

use super::convert::cidr;
use super::status::invalid;
use super::{unexpected, Api};
use crate::model::policy::{self, PortRange, Protocol};
use crate::model::{Command, Response};
use anygate_proto::v1::policy_service_server::PolicyService;
use anygate_proto::v1::*;
use tonic::{Request, Response as Reply, Status};

pub struct PolicyApi(pub Api);

pub fn policy_to_pb(p: &policy::Policy) -> Policy {
    Policy {
        name: p.name.clone(),
        group: p.group.clone(),
        destinations: p.destinations.iter().map(|d| d.to_string()).collect(),
        protocol: p
            .protocol
            .map(Protocol::as_str)
            .unwrap_or("any")
            .to_string(),
        ports: p.ports.iter().map(|r| r.to_string()).collect(),
        revision: p.revision,
    }
}

/// Syntax and limits, before anything reaches the log.
pub fn policy_from_pb(p: &Policy) -> Result<policy::Policy, Status> {
    if p.destinations.len() > policy::MAX_DESTINATIONS {
        return Err(invalid(format!(
            "at most {} destinations",
            policy::MAX_DESTINATIONS
        )));
    }
    if p.ports.len() > policy::MAX_PORTS {
        return Err(invalid(format!("at most {} ports", policy::MAX_PORTS)));
    }
    let out = policy::Policy {
        name: p.name.clone(),
        group: p.group.clone(),
        destinations: p
            .destinations
            .iter()
            .map(|d| cidr("destination", d).map(|n| n.trunc()))
            .collect::<Result<_, _>>()?,
        protocol: Protocol::parse(&p.protocol).map_err(invalid)?,
        ports: p
            .ports
            .iter()
            .map(|s| PortRange::parse(s).map_err(invalid))
            .collect::<Result<_, _>>()?,
        revision: 0,
    };
    out.validate().map_err(invalid)?;
    Ok(out)
}

#[tonic::async_trait]
impl PolicyService for PolicyApi {
    async fn add_policy(&self, req: Request<AddPolicyRequest>) -> Result<Reply<Policy>, Status> {
        let Some(p) = &req.get_ref().policy else {
            return Err(invalid("policy is required"));
        };
        let p = policy_from_pb(p)?;
        match self.0.write(&req, Command::AddPolicy(p)).await?.response {
            Response::Policy(p) => Ok(Reply::new(policy_to_pb(&p))),
            other => Err(unexpected(other)),
        }
    }

    async fn list_policies(
        &self,
        req: Request<ListPoliciesRequest>,
    ) -> Result<Reply<ListPoliciesResponse>, Status> {
        let r = req.get_ref();
        self.0.read_barrier(&r.read).await?;
        let policies = self.0.node.view.read(|inv| {
            inv.policies()
                .filter(|p| r.group.is_empty() || p.applies_to(&r.group))
                .map(policy_to_pb)
                .collect()
        });
        Ok(Reply::new(ListPoliciesResponse { policies }))
    }

    async fn remove_policy(
        &self,
        req: Request<RemovePolicyRequest>,
    ) -> Result<Reply<RemovePolicyResponse>, Status> {
        let name = req.get_ref().name.clone();
        match self
            .0
            .write(&req, Command::RemovePolicy { name })
            .await?
            .response
        {
            Response::Policy(p) => Ok(Reply::new(RemovePolicyResponse {
                removed: Some(policy_to_pb(&p)),
            })),
            Response::Empty => Ok(Reply::new(RemovePolicyResponse { removed: None })),
            other => Err(unexpected(other)),
        }
    }
}
