//! Composition root: opens the store, starts Raft, serves gRPC and the admin
//! HTTP endpoints, runs the background tasks. The only place tasks are
//! spawned; the shutdown order lives here.

mod tasks;

use tasks::{admin_http, audit_denied, expiry_sweeper, metrics_loop, tls_reloader};

use crate::api::authz::{AuthzLayer, Gate, Stopping};
use crate::api::{self, Api};
use crate::bgp::speaker::Speaker;
use crate::config::{BackendKind, Config, TlsConfig};
use crate::dataplane::backend::Device;
use crate::dataplane::identity::Identity;
use crate::health::controller::Controller;
use crate::health::{BgpStatus, DataplaneStatus};
use crate::metrics::Metrics;
use crate::raft::network::{Channels, MAX_RAFT_MESSAGE};
use crate::raft::service::RaftServiceImpl;
use crate::raft::{raft_config, HandOff, RaftNode};
use crate::reconcile::Reconciler;
use crate::store;
use anygate_proto::raft::v1::raft_service_server::RaftServiceServer;
use anygate_proto::tls::{Role, Tls};
use anygate_proto::v1::audit_service_server::AuditServiceServer;
use anygate_proto::v1::backup_service_server::BackupServiceServer;
use anygate_proto::v1::cluster_service_server::ClusterServiceServer;
use anygate_proto::v1::identity_service_server::IdentityServiceServer;
use anygate_proto::v1::peer_service_server::PeerServiceServer;
use anygate_proto::v1::policy_service_server::PolicyServiceServer;
use anygate_proto::v1::pool_service_server::PoolServiceServer;
use anygate_proto::v1::settings_service_server::SettingsServiceServer;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

/// How long a stopping leader waits for a voter to catch up and take over.
const HAND_OFF_WITHIN: Duration = Duration::from_secs(2);

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
    #[error("tls: {0}")]
    Tls(String),
    #[error("{0}")]
    Permissions(String),
}

/// Listeners are injected so tests can bind 127.0.0.1:0.
pub struct App {
    pub cfg: Config,
    pub grpc: TcpListener,
    pub admin: Option<TcpListener>,
    /// The portal's listener (`[portal] listen`).
    pub portal: Option<TcpListener>,
    /// The WireGuard identity (None when the dataplane is off).
    pub identity: Option<Identity>,
}

impl App {
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AppError> {
        let cfg = self.cfg;
        prepare_data_dir(&cfg.data_dir)?;
        let metrics = Metrics::new();
        let tls = match &cfg.tls {
            TlsConfig::Mutual { paths, .. } => {
                check_private(&paths.key, "tls.key")?;
                let t = Tls::load(paths.clone()).map_err(|e| AppError::Tls(e.to_string()))?;
                let id = t.identity();
                if id.role != Role::Node {
                    return Err(AppError::Tls(format!(
                        "{}: the certificate of {:?} has role {}; a node needs role node",
                        paths.cert.display(),
                        id.name,
                        id.role
                    )));
                }
                metrics.tls_cert_expiry.set(id.not_after);
                info!(name = %id.name, expires = id.not_after, "mutual TLS on every gRPC connection");
                Some(t)
            }
            TlsConfig::InsecureDev => {
                warn!("--insecure-dev: gRPC is PLAINTEXT and unauthenticated, every caller is admin; never run a real gateway like this");
                None
            }
        };
        let (log, mut sm) = store::open(&cfg.data_dir)?;
        if let Some(d) = cfg.hold_back_apply {
            warn!(delay = ?d, "test hook: every apply is held back");
            sm.hold_back_apply(d);
        }
        let view = sm.view();
        let channels = Channels::new(tls.clone());
        let rcfg = Arc::new(
            raft_config(cfg.snapshot_logs, cfg.raft)
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
            leading: Default::default(),
            vote_lease: crate::raft::vote_lease(cfg.raft),
        };
        // The dataplane: a reconciler owning the device, or a fixed "off" status.
        let device = match (&self.identity, cfg.dataplane.backend) {
            (Some(_), b) if b != BackendKind::None => {
                let ifname = cfg
                    .dataplane
                    .interface
                    .clone()
                    .unwrap_or_else(|| node.view.read(|i| i.settings().interface.clone()));
                Some(
                    Device::open(&cfg.dataplane, &ifname)
                        .map_err(|e| AppError::Dataplane(e.to_string()))?,
                )
            }
            _ => None,
        };
        let (dp_status, dp_rx) = tokio::sync::watch::channel(match &device {
            Some(d) => {
                let (backend, supervised) = d.backend();
                DataplaneStatus::starting(backend, supervised)
            }
            None => DataplaneStatus::disabled(),
        });
        let (bgp_status, bgp_rx) = tokio::sync::watch::channel(match &cfg.bgp {
            Some(_) => BgpStatus::starting(),
            None => BgpStatus::disabled(),
        });
        let reconciler = match (self.identity, device) {
            (Some(id), Some(device)) => Some(Reconciler::new(
                cfg.dataplane.clone(),
                node.clone(),
                metrics.clone(),
                id,
                device,
                dp_status,
                bgp_rx.clone(),
            )),
            _ => None,
        };
        let controller = Controller::new(shutdown.clone());
        let held = reconciler.as_ref().map(|r| r.sessions());
        let speaker = cfg.bgp.clone().map(|b| {
            Speaker::new(
                b,
                node.clone(),
                dp_rx.clone(),
                controller.failed(),
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
            limiter: api::write_limiter(cfg.api),
            limits: cfg.api,
        };
        let (denied_tx, denied_rx) = tokio::sync::mpsc::channel(256);
        let gate = Arc::new(Gate {
            identity_check: Some(identity_check(node.clone())),
            metrics: metrics.clone(),
            denied: denied_tx,
            stopping: Default::default(),
            node_id: cfg.id,
        });
        info!(id = cfg.id, listen = %cfg.listen, advertise = %cfg.advertise, data_dir = %cfg.data_dir.display(), "node starting");

        let tasks = TaskTracker::new();
        let stop_api = CancellationToken::new();

        // gRPC: operator API and Raft on one listener.
        let grpc = {
            let limit = api::MAX_API_MESSAGE;
            let router = tonic::transport::Server::builder()
                .layer(AuthzLayer(gate.clone()))
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
                    PolicyServiceServer::new(api::policies::PolicyApi(api.clone()))
                        .max_decoding_message_size(limit),
                )
                .add_service(
                    IdentityServiceServer::new(api::identity::IdentityApi(api.clone()))
                        .max_decoding_message_size(limit),
                )
                .add_service(
                    BackupServiceServer::new(api::backup::BackupApi(api.clone()))
                        .max_decoding_message_size(limit)
                        .max_encoding_message_size(usize::MAX),
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
            let m = metrics.clone();
            anygate_proto::tls::raise_nofile();
            let limits = anygate_proto::tls::Limits::for_this_process();
            info!(
                connections = limits.connections,
                per_source = limits.per_source,
                handshakes = limits.handshakes,
                "gRPC connection limits"
            );
            let incoming =
                anygate_proto::tls::incoming(self.grpc, tls.clone(), limits, move |_| {
                    m.tls_refused.inc();
                });
            let stop = stop_api.clone();
            tasks.spawn(
                controller.guard(
                    "gRPC server",
                    stop_api.clone(),
                    async move {
                        let r = router
                            .serve_with_incoming_shutdown(incoming, stop.cancelled())
                            .await;
                        if let Err(e) = &r {
                            warn!(error = %e, "gRPC server failed");
                        }
                    }
                    .instrument(tracing::info_span!("grpc")),
                ),
            )
        };

        if let Some(l) = self.admin {
            let (m, n, stop) = (metrics.clone(), node.clone(), stop_api.clone());
            tasks.spawn(controller.guard(
                "admin HTTP",
                stop_api.clone(),
                admin_http(l, m, n, stop).instrument(tracing::info_span!("admin")),
            ));
        }
        if let (Some(l), Some(pc)) = (self.portal, cfg.portal.clone()) {
            check_private(&pc.key, "portal.key")?;
            let pc =
                crate::portal::prepare(pc).map_err(|e| AppError::Tls(format!("portal: {e}")))?;
            let (m, n, stop) = (metrics.clone(), node.clone(), stop_api.clone());
            tasks.spawn(controller.guard(
                "portal",
                stop_api.clone(),
                crate::portal::serve(pc, l, n, m, stop).instrument(tracing::info_span!("portal")),
            ));
        }
        tasks.spawn(
            controller.guard(
                "metrics",
                shutdown.clone(),
                metrics_loop(node.clone(), metrics.clone(), shutdown.clone())
                    .instrument(tracing::info_span!("metrics")),
            ),
        );
        let stop_dp = CancellationToken::new();
        let dataplane = reconciler.map(|r| {
            tasks.spawn(
                controller.guard(
                    "dataplane",
                    stop_dp.clone(),
                    r.run(stop_dp.clone())
                        .instrument(tracing::info_span!("dataplane")),
                ),
            )
        });
        // BGP sees the shutdown first: it withdraws, waits its grace, and only
        // then does the rest of the node stop serving.
        let bgp = speaker.map(|s| {
            tasks.spawn(
                controller.guard(
                    "BGP speaker",
                    shutdown.clone(),
                    s.run(shutdown.clone())
                        .instrument(tracing::info_span!("bgp")),
                ),
            )
        });
        tasks.spawn(
            controller.guard(
                "expiry sweeper",
                shutdown.clone(),
                expiry_sweeper(node.clone(), shutdown.clone())
                    .instrument(tracing::info_span!("expiry")),
            ),
        );
        tasks.spawn(
            controller.guard(
                "refusal audit",
                shutdown.clone(),
                audit_denied(node.clone(), denied_rx, shutdown.clone())
                    .instrument(tracing::info_span!("authz")),
            ),
        );
        if let (
            Some(t),
            TlsConfig::Mutual {
                reload_interval, ..
            },
        ) = (&tls, &cfg.tls)
        {
            tasks.spawn(
                controller.guard(
                    "TLS reloader",
                    shutdown.clone(),
                    tls_reloader(
                        t.clone(),
                        *reload_interval,
                        metrics.clone(),
                        shutdown.clone(),
                    )
                    .instrument(tracing::info_span!("tls")),
                ),
            );
        }
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
        // Order: (BGP withdrawn above), refuse operator calls (Raft is still
        // served), stop the dataplane and its endpoint writes, hand
        // leadership to a caught-up voter, stop serving, stop Raft, close
        // RocksDB (drop).
        gate.stop(Stopping::Api);
        stop_dp.cancel();
        if let Some(d) = dataplane {
            let _ = tokio::time::timeout(Duration::from_secs(5), d).await;
        }
        node.await_vote_lease().await;
        gate.stop(Stopping::Forwarding);
        match node.hand_off(HAND_OFF_WITHIN).await {
            HandOff::Done { to } => info!(to, "leadership handed over"),
            HandOff::Failed(why) => {
                warn!(%why, "leadership hand-off failed; the followers elect a leader after their election timeout")
            }
            HandOff::NotLeader | HandOff::Alone => {}
        }
        stop_api.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), grpc).await;
        if let Err(e) = raft.shutdown().await {
            warn!(error = %e, "raft shutdown");
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
        info!("stopped");
        Ok(())
    }
}

/// The data dir holds the inventory, preshared keys included: it is
/// created 0700, and an existing one that others can read is refused.
fn prepare_data_dir(p: &std::path::Path) -> Result<(), AppError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let shown = || p.display().to_string();
    if !p.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(p)
            .map_err(|e| AppError::DataDir(shown(), e))?;
        // DirBuilder's mode is filtered by the umask; make it exact.
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| AppError::DataDir(shown(), e))?;
        return Ok(());
    }
    let mode = std::fs::metadata(p)
        .map_err(|e| AppError::DataDir(shown(), e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(AppError::Permissions(format!(
            "refusing to start: data dir {} is mode {:o}, readable or writable by others; it holds preshared keys: chmod 700 {}",
            shown(),
            mode & 0o777,
            shown()
        )));
    }
    Ok(())
}

/// A private key file must not be readable by group or others.
fn check_private(p: &std::path::Path, key: &str) -> Result<(), AppError> {
    let loose = anygate_proto::pki::loose_mode(p)
        .map_err(|e| AppError::Permissions(format!("{key} {}: {e}", p.display())))?;
    match loose {
        Some(mode) => Err(AppError::Permissions(format!(
            "refusing to start: {key} {} is mode {mode:o}; a private key must be 0600 or stricter: chmod 600 {}",
            p.display(),
            p.display()
        ))),
        None => Ok(()),
    }
}

/// A revoked certificate serial is refused on every call; a node
/// certificate calling Raft (or forwarding a write) must name one of the
/// current members' addresses, so a removed node keeps no Raft rights.
/// Until this node knows its membership (a node being added) any node
/// certificate may call Raft.
fn identity_check(node: crate::raft::RaftNode) -> crate::api::authz::IdentityCheck {
    Arc::new(move |id, path| {
        if let Some(r) = node
            .view
            .read(|inv| inv.cert_revocation(&id.serial).cloned())
        {
            return Some(format!(
                "certificate {:?} (serial {}) was revoked at log index {}",
                id.name, id.serial, r.index
            ));
        }
        let raft = path.trim_start_matches('/').starts_with("anygate.raft.v1.");
        if !raft || id.role != anygate_proto::tls::Role::Node {
            return None;
        }
        let hosts: Vec<String> = node.member_hosts().into_iter().map(|(_, h)| h).collect();
        if hosts.is_empty() || id.sans.iter().any(|s| hosts.contains(s)) {
            return None;
        }
        Some(format!(
            "node certificate {:?} names none of the members' addresses ({}): only a current member may speak Raft",
            id.name,
            hosts.join(", ")
        ))
    })
}
