//! The node's long-lived background tasks, each started (and guarded) by
//! `App::run`: TLS reloads, auditing refused calls, the admin HTTP
//! endpoints, Raft metrics, and the expiry sweeper.

use super::check_private;
use crate::api;
use crate::metrics::{Metrics, ResultLabels};
use crate::model::{Command, Request};
use crate::raft::RaftNode;
use anygate_proto::tls::{Role, Tls};
use openraft::ServerState;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Re-reads the TLS files when they change (checked every `every`) or at
/// once on SIGHUP: rotated certificates are used by every new connection,
/// with no restart. Bad new files are refused and the old material stays.
pub(super) async fn tls_reloader(
    tls: Arc<Tls>,
    every: Duration,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "no SIGHUP handler; TLS files are still polled");
            None
        }
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let force = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => false,
            Some(()) = async { match &mut hup { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        let res = check_private(&tls.paths().key, "tls.key")
            .map_err(|e| e.to_string())
            .and_then(|()| tls.reload(force).map_err(|e| e.to_string()));
        match res {
            Ok(None) => {}
            Ok(Some(id)) if id.role == Role::Node => {
                metrics.tls_cert_expiry.set(id.not_after);
                metrics
                    .tls_reloads
                    .get_or_create(&ResultLabels {
                        result: "ok".into(),
                    })
                    .inc();
                info!(name = %id.name, expires = id.not_after, "TLS material reloaded; new connections use it");
            }
            Ok(Some(id)) => {
                metrics
                    .tls_reloads
                    .get_or_create(&ResultLabels {
                        result: "error".into(),
                    })
                    .inc();
                warn!(name = %id.name, role = %id.role, "reloaded certificate is not a node certificate; it is in use but other nodes will refuse it");
            }
            Err(e) => {
                metrics
                    .tls_reloads
                    .get_or_create(&ResultLabels {
                        result: "error".into(),
                    })
                    .inc();
                warn!(error = %e, "TLS reload failed; the previous certificates stay in use");
            }
        }
    }
}

/// Refused calls go into the replicated audit log, at most one per caller
/// per second (burst 5); beyond that they are only counted and logged.
pub(super) async fn audit_denied(
    node: RaftNode,
    mut rx: tokio::sync::mpsc::Receiver<api::authz::Denied>,
    stop: CancellationToken,
) {
    let limiter = governor::RateLimiter::keyed(
        governor::Quota::per_second(std::num::NonZeroU32::MIN)
            .allow_burst(std::num::NonZeroU32::new(5).expect("5 > 0")),
    );
    loop {
        let d = tokio::select! {
            _ = stop.cancelled() => return,
            d = rx.recv() => match d { Some(d) => d, None => return },
        };
        if limiter.check_key(&d.caller).is_err() {
            continue;
        }
        let req = Request {
            actor: d.caller,
            at_ms: crate::time::now_ms(),
            request_id: None,
            cmd: Command::Denied {
                method: d.method,
                role: d.role.to_string(),
            },
        };
        match node.write(req).await {
            // The entry is in the log, recorded as refused: that is the point.
            Ok(_) | Err(crate::raft::NodeError::Rejected(_)) => {}
            Err(e) => warn!(error = %e, "could not audit a refused call"),
        }
    }
}

pub(super) async fn admin_http(
    l: TcpListener,
    metrics: Metrics,
    node: RaftNode,
    stop: CancellationToken,
) {
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

pub(super) async fn metrics_loop(node: RaftNode, metrics: Metrics, shutdown: CancellationToken) {
    let mut rx = node.raft.metrics();
    loop {
        {
            let m = rx.borrow_and_update().clone();
            node.note_leading(&m);
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
                .raft_leader
                .set(m.current_leader.unwrap_or(0) as i64);
            metrics.raft_follower_lag.clear();
            if let (Some(rep), Some(last)) = (&m.replication, m.last_log_index) {
                for (id, matched) in rep {
                    if *id == node.id {
                        continue;
                    }
                    let at = matched.map(|l| l.index).unwrap_or(0);
                    metrics
                        .raft_follower_lag
                        .get_or_create(&crate::metrics::FollowerLabels {
                            follower: id.to_string(),
                        })
                        .set(last.saturating_sub(at) as i64);
                }
            }
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
pub(super) async fn expiry_sweeper(node: RaftNode, shutdown: CancellationToken) {
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
        let now = crate::time::now_ms();
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
