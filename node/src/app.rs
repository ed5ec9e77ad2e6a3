//! Composition root: opens the store, starts Raft, serves gRPC and the admin
//! HTTP endpoints, runs the background tasks. The only place tasks are
//! spawned; the shutdown order lives here.

use crate::api::{self, Api};
use crate::bgp::speaker::{BgpStatus, Speaker};
use crate::config::{BackendKind, Config};
use crate::dataplane::backend::Device;
use crate::dataplane::identity::Identity;
use crate::metrics::Metrics;
use crate::model::{Command, Request};
use crate::raft::network::{Channels, MAX_RAFT_MESSAGE};
use crate::raft::service::RaftServiceImpl;
use crate::raft::{raft_config, RaftNode};
use crate::reconcile::driver::{disabled_status, DataplaneStatus, Reconciler};
use crate::store;
use anygate_proto::raft::v1::raft_service_server::RaftServiceServer;
use anygate_proto::v1::audit_service_server::AuditServiceServer;
use anygate_proto::v1::cluster_service_server::ClusterServiceServer;
use anygate_proto::v1::peer_service_server::PeerServiceServer;
use anygate_proto::v1::pool_service_server::PoolServiceServer;
use anygate_proto::v1::settings_service_server::SettingsServiceServer;
use openraft::ServerState;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] store::OpenError),
    #[error("cannot create data dir {0}: {1}")]
    DataDir(String, std::io::Error),
    #[error("raft: {0}")]
    Raft(String),
    #[error("dataplane: {0}")]
    Dataplane(String),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Listeners are injected so tests can bind 127.0.0.1:0.
pub struct App {
    pub cfg: Config,
    pub grpc: TcpListener,
    pub admin: Option<TcpListener>,
    /// The WireGuard identity (None when the dataplane is off).
    pub identity: Option<Identity>,
}

impl App {
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AppError> {
        let cfg = self.cfg;
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| AppError::DataDir(cfg.data_dir.display().to_string(), e))?;
        restrict_dir(&cfg.data_dir);
        let (log, sm) = store::open(&cfg.data_dir)?;
        let view = sm.view();
        let channels = Channels::default();
        let rcfg = Arc::new(
            raft_config(cfg.snapshot_logs)
                .validate()
                .map_err(|e| AppError::Raft(e.to_string()))?,
        );
        let raft = openraft::Raft::new(cfg.id, rcfg, channels.clone(), log, sm)
            .await
            .map_err(|e| AppError::Raft(e.to_string()))?;
        let node = RaftNode {
            id: cfg.id,
            addr: cfg.advertise.clone(),
            raft: raft.clone(),
            view,
            channels,
            contact: Default::default(),
        };
        let metrics = Metrics::new();
        // The dataplane: a reconciler owning the device, or a fixed "off" status.
        let (dp_status, dp_rx) = match (&self.identity, cfg.dataplane.backend) {
            (Some(_), b) if b != BackendKind::None => {
                tokio::sync::watch::channel(DataplaneStatus {
                    backend: format!("{:?}", Device::resolve(b)).to_lowercase(),
                    reason: "starting".into(),
                    ..Default::default()
                })
            }
            _ => disabled_status(),
        };
        let reconciler = match self.identity {
            Some(id) if cfg.dataplane.backend != BackendKind::None => {
                let ifname = cfg
                    .dataplane
                    .interface
                    .clone()
                    .unwrap_or_else(|| node.view.read(|i| i.settings().interface.clone()));
                let device = Device::open(&cfg.dataplane, &ifname)
                    .map_err(|e| AppError::Dataplane(e.to_string()))?;
                Some(Reconciler::new(
                    cfg.dataplane.clone(),
                    node.clone(),
                    metrics.clone(),
                    id,
                    device,
                    dp_status,
                ))
            }
            _ => None,
        };
        let (bgp_status, bgp_rx) = match &cfg.bgp {
            Some(_) => tokio::sync::watch::channel(BgpStatus {
                enabled: true,
                state: "withdrawn".into(),
                reason: "starting".into(),
                ..Default::default()
            }),
            None => crate::bgp::speaker::disabled(),
        };
        let held = reconciler.as_ref().map(|r| r.sessions());
        let speaker = cfg.bgp.clone().map(|b| {
            Speaker::new(
                b,
                node.clone(),
                dp_rx.clone(),
                held,
                metrics.clone(),
                bgp_status,
            )
        });
        let api = Api {
            node: node.clone(),
            metrics: metrics.clone(),
            dataplane: dp_rx.clone(),
            bgp: bgp_rx,
        };
        info!(id = cfg.id, listen = %cfg.listen, advertise = %cfg.advertise, data_dir = %cfg.data_dir.display(), "node starting");

        let tasks = TaskTracker::new();
        let stop_api = CancellationToken::new();

        // gRPC: operator API and Raft on one listener.
        let grpc = {
            let limit = api::MAX_API_MESSAGE;
            let router = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(
                    RaftServiceServer::new(RaftServiceImpl::new(node.clone()))
                        .max_decoding_message_size(MAX_RAFT_MESSAGE)
                        .max_encoding_message_size(MAX_RAFT_MESSAGE),
                )
                .add_service(
                    PeerServiceServer::new(api::peers::PeerApi(api.clone()))
                        .max_decoding_message_size(limit)
                        .max_encoding_message_size(usize::MAX),
                )
                .add_service(
                    PoolServiceServer::new(api::pools::PoolApi(api.clone()))
                        .max_decoding_message_size(limit),
                )
                .add_service(
                    SettingsServiceServer::new(api::settings::SettingsApi(api.clone()))
                        .max_decoding_message_size(limit),
                )
                .add_service(
                    AuditServiceServer::new(api::audit::AuditApi(api.clone()))
                        .max_decoding_message_size(limit)
                        .max_encoding_message_size(usize::MAX),
                )
                .add_service(
                    ClusterServiceServer::new(api::cluster::ClusterApi(api.clone()))
                        .max_decoding_message_size(limit),
                );
            let incoming = TcpListenerStream::new(self.grpc);
            let stop = stop_api.clone();
            let trip = shutdown.clone();
            tasks.spawn(
                async move {
                    let r = router
                        .serve_with_incoming_shutdown(incoming, stop.cancelled())
                        .await;
                    if let Err(e) = &r {
                        warn!(error = %e, "gRPC server failed");
                    }
                    trip.cancel();
                }
                .instrument(tracing::info_span!("grpc")),
            )
        };

        if let Some(l) = self.admin {
            let (m, n, stop) = (metrics.clone(), node.clone(), stop_api.clone());
            tasks.spawn(admin_http(l, m, n, stop).instrument(tracing::info_span!("admin")));
        }
        tasks.spawn(
            metrics_loop(node.clone(), metrics.clone(), shutdown.clone())
                .instrument(tracing::info_span!("metrics")),
        );
        let stop_dp = CancellationToken::new();
        let dataplane = reconciler.map(|r| {
            tasks.spawn(
                r.run(stop_dp.clone())
                    .instrument(tracing::info_span!("dataplane")),
            )
        });
        // BGP sees the shutdown first: it withdraws, waits its grace, and only
        // then does the rest of the node stop serving.
        let bgp = speaker.map(|s| {
            tasks.spawn(
                s.run(shutdown.clone())
                    .instrument(tracing::info_span!("bgp")),
            )
        });
        tasks.spawn(
            expiry_sweeper(node.clone(), shutdown.clone())
                .instrument(tracing::info_span!("expiry")),
        );
        tasks.close();

        shutdown.cancelled().await;
        info!("shutting down");
        if let Some(b) = bgp {
            let grace = cfg
                .bgp
                .as_ref()
                .map(|b| b.shutdown_grace)
                .unwrap_or_default();
            let _ = tokio::time::timeout(grace + Duration::from_secs(5), b).await;
        }
        // Order: (BGP withdrawn above), stop serving, hand leadership over by stepping down, stop Raft, close RocksDB (drop).
        stop_api.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), grpc).await;
        stop_dp.cancel();
        if let Some(d) = dataplane {
            let _ = tokio::time::timeout(Duration::from_secs(5), d).await;
        }
        if let Err(e) = raft.shutdown().await {
            warn!(error = %e, "raft shutdown");
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
        info!("stopped");
        Ok(())
    }
}

#[cfg(unix)]
fn restrict_dir(p: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)) {
        warn!(error = %e, dir = %p.display(), "could not restrict data dir to 0700");
    }
}

async fn admin_http(l: TcpListener, metrics: Metrics, node: RaftNode, stop: CancellationToken) {
    use axum::{http::StatusCode, routing::get, Router};
    let m = metrics.clone();
    let n = node.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/live", get(|| async { "ok\n" }))
        .route(
            "/ready",
            get(move || {
                let n = n.clone();
                async move {
                    let met = n.raft.metrics().borrow().clone();
                    match met.current_leader {
                        Some(l) => (
                            StatusCode::OK,
                            format!("ready: leader {l}, applied {}\n", n.view.applied()),
                        ),
                        None => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: no leader\n".to_string(),
                        ),
                    }
                }
            }),
        );
    if let Err(e) = axum::serve(l, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        warn!(error = %e, "admin HTTP server failed");
    }
}

async fn metrics_loop(node: RaftNode, metrics: Metrics, shutdown: CancellationToken) {
    let mut rx = node.raft.metrics();
    loop {
        {
            let m = rx.borrow_and_update().clone();
            metrics.term.set(m.current_term as i64);
            metrics
                .is_leader
                .set((m.state == ServerState::Leader) as i64);
            metrics
                .last_log_index
                .set(m.last_log_index.unwrap_or(0) as i64);
            metrics
                .applied_index
                .set(m.last_applied.map(|l| l.index).unwrap_or(0) as i64);
            metrics
                .members
                .set(m.membership_config.membership().nodes().count() as i64);
            metrics
                .peers
                .set(node.view.read(|inv| inv.peer_count()) as i64);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
    }
}

/// The leader proposes the removal of expired peers, so expiry is one
/// replicated, audited event with the leader's clock.
async fn expiry_sweeper(node: RaftNode, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if node.raft.metrics().borrow().state != ServerState::Leader {
            continue;
        }
        let now = api::now_ms();
        if node
            .view
            .read(|inv| inv.next_expiry())
            .is_some_and(|t| t <= now)
        {
            let req = Request {
                actor: format!("node-{}/expiry", node.id),
                at_ms: now,
                request_id: None,
                cmd: Command::ExpirePeers,
            };
            match node.write_local(req).await {
                Ok(w) => info!(index = w.index, "expired peers removed"),
                Err(e) => warn!(error = %e, "expiry sweep failed"),
            }
        }
    }
}
