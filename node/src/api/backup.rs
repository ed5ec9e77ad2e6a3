//! BackupService: a consistent export of the inventory (admin only, by the
//! authorization table). Restore is `anygatectl backup restore`, through
//! the ordinary write API, so every restored item is validated and audited.

use super::convert::{peer_to_pb, pool_to_pb, revoked_to_pb, settings_to_pb};
use super::policies::policy_to_pb;
use super::Api;
use crate::time::now_ms;
use anygate_proto::v1::backup_service_server::BackupService;
use anygate_proto::v1::*;
use tonic::{Request, Response as Reply, Status};

pub const FORMAT: &str = "anygate-backup/1";

pub struct BackupApi(pub Api);

#[tonic::async_trait]
impl BackupService for BackupApi {
    type ExportStream = super::PageStream<Backup>;

    /// One read of the state (everything at the same applied index), sent
    /// as a header and then pages of peers.
    async fn export(
        &self,
        req: Request<ExportRequest>,
    ) -> Result<Reply<Self::ExportStream>, Status> {
        self.0
            .audit_secret_read(&req, "backup (every preshared key)".into())
            .await?;
        self.0.read_barrier(&None).await?;
        let caller = Api::caller(&req);
        let (head, peers) = self.0.node.view.read(|inv| {
            let peers: Vec<crate::model::Peer> = inv.peers().cloned().collect();
            let head = Backup {
                format: FORMAT.into(),
                taken_at_ms: now_ms(),
                applied_index: self.0.node.view.applied(),
                settings: Some(settings_to_pb(inv.settings())),
                pools: inv.pools().iter().map(pool_to_pb).collect(),
                policies: inv.policies().map(policy_to_pb).collect(),
                peers: vec![],
                revoked: inv.revoked().map(|(k, r)| revoked_to_pb(k, r)).collect(),
                peer_count: peers.len() as u64,
                idp_mappings: inv
                    .idp_mappings()
                    .map(super::identity::mapping_to_pb)
                    .collect(),
            };
            (head, peers)
        });
        tracing::info!(caller = %caller.name, peers = peers.len(), index = head.applied_index, "inventory exported (with preshared keys)");
        let rest = super::pages(peers, |chunk| Backup {
            peers: chunk.iter().map(|p| peer_to_pb(p, true)).collect(),
            ..Default::default()
        });
        Ok(Reply::new(Box::pin(futures::StreamExt::chain(
            futures::stream::once(async move { Ok(head) }),
            rest,
        ))))
    }
}
