//! PoolService: IPAM pools.

use super::convert::{cidr, pool_to_pb};
use super::status::invalid;
use super::{unexpected, Api};
use crate::model::{Command, Response};
use anygate_proto::v1::pool_service_server::PoolService;
use anygate_proto::v1::*;
use tonic::{Request, Response as Reply, Status};

pub struct PoolApi(pub Api);

#[tonic::async_trait]
impl PoolService for PoolApi {
    async fn add_pool(&self, req: Request<AddPoolRequest>) -> Result<Reply<Pool>, Status> {
        let Some(p) = &req.get_ref().pool else {
            return Err(invalid("pool is required"));
        };
        crate::model::limits::check_pool_name(&p.name).map_err(|e| invalid(e.message))?;
        if p.cidrs.is_empty() || p.cidrs.len() > crate::model::limits::POOL_CIDRS {
            return Err(invalid(format!(
                "a pool needs 1-{} CIDRs",
                crate::model::limits::POOL_CIDRS
            )));
        }
        let cidrs = p
            .cidrs
            .iter()
            .map(|c| cidr("cidr", c))
            .collect::<Result<Vec<_>, _>>()?;
        let cmd = Command::AddPool {
            name: p.name.clone(),
            cidrs,
            group: (!p.group.is_empty()).then(|| p.group.clone()),
        };
        match self.0.write(&req, cmd).await?.response {
            Response::Pool(v) => Ok(Reply::new(pool_to_pb(&v))),
            other => Err(unexpected(other)),
        }
    }

    async fn list_pools(
        &self,
        req: Request<ListPoolsRequest>,
    ) -> Result<Reply<ListPoolsResponse>, Status> {
        self.0.read_barrier(&req.get_ref().read).await?;
        let pools = self
            .0
            .node
            .view
            .read(|inv| inv.pools().iter().map(pool_to_pb).collect());
        Ok(Reply::new(ListPoolsResponse { pools }))
    }

    async fn remove_pool(
        &self,
        req: Request<RemovePoolRequest>,
    ) -> Result<Reply<RemovePoolResponse>, Status> {
        let name = req.get_ref().name.clone();
        self.0.write(&req, Command::RemovePool { name }).await?;
        Ok(Reply::new(RemovePoolResponse {}))
    }
}
