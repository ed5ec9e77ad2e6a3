//! SettingsService: the gateway settings every node shares.

use super::convert::{settings_patch, settings_to_pb};
use super::status::invalid;
use super::{committed, unexpected, Api};
use crate::model::{Command, Response};
use anygate_proto::v1::settings_service_server::SettingsService;
use anygate_proto::v1::*;
use tonic::{Request, Response as Reply, Status};

pub struct SettingsApi(pub Api);

#[tonic::async_trait]
impl SettingsService for SettingsApi {
    async fn get_settings(
        &self,
        req: Request<GetSettingsRequest>,
    ) -> Result<Reply<GatewaySettings>, Status> {
        self.0.read_barrier(&req.get_ref().read).await?;
        Ok(Reply::new(
            self.0.node.view.read(|inv| settings_to_pb(inv.settings())),
        ))
    }

    async fn set_settings(
        &self,
        req: Request<SetSettingsRequest>,
    ) -> Result<Reply<GatewaySettings>, Status> {
        let Some(p) = &req.get_ref().patch else {
            return Err(invalid("patch is required"));
        };
        let patch = settings_patch(p)?;
        if patch == Default::default() {
            return Err(invalid("nothing to change: give at least one setting"));
        }
        if let Some(r) = &patch.routable_prefixes {
            self.0.check_client_routes("routable prefix", r)?;
        }
        let w = self.0.write(&req, Command::SetSettings(patch)).await?;
        match w.response {
            Response::Settings(s) => Ok(committed(w.index, settings_to_pb(&s))),
            other => Err(unexpected(other)),
        }
    }
}
