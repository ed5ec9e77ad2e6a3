//! IdentityService: identity-provider group mappings (what an IdP group's
//! members get: an anygate group for their enrolled devices, a console
//! role, enrollment limits). Admin writes, viewer reads.

use super::status::invalid;
use super::{unexpected, Api};
use crate::model::idp::{self, ConsoleRole, IdpMapping as Mapping};
use crate::model::{Command, Response};
use anygate_proto::v1::identity_service_server::IdentityService;
use anygate_proto::v1::{self as pb, *};
use std::time::Duration;
use tonic::{Request, Response as Reply, Status};

pub struct IdentityApi(pub Api);

fn role_to_pb(r: Option<ConsoleRole>) -> pb::ConsoleRole {
    match r {
        None => pb::ConsoleRole::None,
        Some(ConsoleRole::Viewer) => pb::ConsoleRole::Viewer,
        Some(ConsoleRole::Operator) => pb::ConsoleRole::Operator,
        Some(ConsoleRole::Admin) => pb::ConsoleRole::Admin,
    }
}

pub fn mapping_to_pb(m: &Mapping) -> IdpMapping {
    IdpMapping {
        idp_group: m.claim.clone(),
        group: m.group.clone().unwrap_or_default(),
        role: role_to_pb(m.role).into(),
        lifetime_seconds: m.lifetime_ms / 1000,
        max_devices: m.max_devices,
        require_mfa: m.require_mfa,
        revision: m.revision,
    }
}

/// Defaults filled in (0 = default), syntax and bounds checked, before
/// anything reaches the log.
pub fn mapping_from_pb(m: &IdpMapping) -> Result<Mapping, Status> {
    let role = match pb::ConsoleRole::try_from(m.role) {
        Ok(pb::ConsoleRole::None) => None,
        Ok(pb::ConsoleRole::Viewer) => Some(ConsoleRole::Viewer),
        Ok(pb::ConsoleRole::Operator) => Some(ConsoleRole::Operator),
        Ok(pb::ConsoleRole::Admin) => Some(ConsoleRole::Admin),
        Err(_) => return Err(invalid(format!("role {} is not a console role", m.role))),
    };
    let lifetime = match m.lifetime_seconds {
        0 => idp::DEFAULT_LIFETIME,
        // Far beyond the bound: refused by validate, without overflow.
        s => Duration::from_secs(s.min(u64::MAX / 1000)),
    };
    let out = Mapping {
        claim: m.idp_group.clone(),
        group: Some(m.group.clone()).filter(|g| !g.is_empty()),
        role,
        lifetime_ms: lifetime.as_millis() as u64,
        max_devices: match m.max_devices {
            0 => idp::DEFAULT_MAX_DEVICES,
            n => n,
        },
        require_mfa: m.require_mfa,
        revision: 0,
    };
    out.validate().map_err(|e| invalid(e.to_string()))?;
    Ok(out)
}

#[tonic::async_trait]
impl IdentityService for IdentityApi {
    async fn map_idp_group(
        &self,
        req: Request<MapIdpGroupRequest>,
    ) -> Result<Reply<IdpMapping>, Status> {
        let Some(m) = &req.get_ref().mapping else {
            return Err(invalid("mapping is required"));
        };
        let m = mapping_from_pb(m)?;
        match self.0.write(&req, Command::MapIdpGroup(m)).await?.response {
            Response::IdpMapping(m) => Ok(Reply::new(mapping_to_pb(&m))),
            other => Err(unexpected(other)),
        }
    }

    async fn list_idp_mappings(
        &self,
        req: Request<ListIdpMappingsRequest>,
    ) -> Result<Reply<ListIdpMappingsResponse>, Status> {
        self.0.read_barrier(&req.get_ref().read).await?;
        let mappings = self
            .0
            .node
            .view
            .read(|inv| inv.idp_mappings().map(mapping_to_pb).collect());
        Ok(Reply::new(ListIdpMappingsResponse { mappings }))
    }

    async fn unmap_idp_group(
        &self,
        req: Request<UnmapIdpGroupRequest>,
    ) -> Result<Reply<UnmapIdpGroupResponse>, Status> {
        let claim = req.get_ref().idp_group.clone();
        idp::check_claim(&claim).map_err(|e| invalid(e.to_string()))?;
        match self
            .0
            .write(&req, Command::UnmapIdpGroup { claim })
            .await?
            .response
        {
            Response::IdpMapping(m) => Ok(Reply::new(UnmapIdpGroupResponse {
                removed: Some(mapping_to_pb(&m)),
            })),
            // A retried request already applied.
            Response::Empty => Ok(Reply::new(UnmapIdpGroupResponse { removed: None })),
            other => Err(unexpected(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_refusals_from_the_wire() {
        let m = mapping_from_pb(&IdpMapping {
            idp_group: "eng".into(),
            group: "engineering".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(m.lifetime_ms, 12 * 3_600_000);
        assert_eq!(m.max_devices, 5);
        assert_eq!(m.role, None);
        assert_eq!(mapping_to_pb(&m).lifetime_seconds, 12 * 3600);
        let refused = |m: IdpMapping| mapping_from_pb(&m).unwrap_err().message().to_string();
        assert!(refused(IdpMapping {
            idp_group: "eng".into(),
            ..Default::default()
        })
        .contains("a group (--group), a role (--role) or both"));
        assert!(refused(IdpMapping {
            idp_group: "eng".into(),
            role: 9,
            ..Default::default()
        })
        .contains("not a console role"));
        assert!(refused(IdpMapping {
            idp_group: "eng".into(),
            group: "g".into(),
            lifetime_seconds: u64::MAX,
            ..Default::default()
        })
        .contains("between 10 minutes and 365 days"));
        let admin = mapping_from_pb(&IdpMapping {
            idp_group: "ops".into(),
            role: pb::ConsoleRole::Admin.into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(admin.role, Some(ConsoleRole::Admin));
        assert_eq!(admin.group, None);
    }
}
