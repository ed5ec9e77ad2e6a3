//! AuditService: who changed what, from the replicated audit entries.

use super::convert::audit_to_pb;
use super::Api;
use crate::store::AuditFilter;
use anygate_proto::v1::audit_service_server::AuditService;
use anygate_proto::v1::*;
use tonic::{Request, Response as Reply, Status};

pub struct AuditApi(pub Api);

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit(
        &self,
        req: Request<ListAuditRequest>,
    ) -> Result<Reply<ListAuditResponse>, Status> {
        let r = req.get_ref();
        self.0.read_barrier(&r.read).await?;
        let f = AuditFilter {
            since_ms: r.since_ms,
            actor: (!r.actor.is_empty()).then(|| r.actor.clone()),
            limit: if r.limit == 0 {
                1000
            } else {
                r.limit.min(100_000) as usize
            },
            before_index: r.before_index,
        };
        let view = self.0.node.view.clone();
        let page = tokio::task::spawn_blocking(move || view.audit(&f))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Reply::new(ListAuditResponse {
            entries: page.entries.iter().map(audit_to_pb).collect(),
            next_before_index: page.next_before_index,
        }))
    }
}
