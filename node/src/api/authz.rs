//! Who may call what. The role in the caller's certificate is compared with
//! the least role each gRPC method needs, in one table, checked by a tower
//! layer in front of every service so no handler can forget it. A refused
//! call answers PermissionDenied, is counted, and is audited (replicated,
//! rate-limited per caller so a looping script cannot flood the log).

use crate::metrics::Metrics;
use anygate_proto::tls::{ConnInfo, Role};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Status;

/// The least role that may call `path` (`/package.Service/Method`).
/// Unknown methods need admin (tonic then answers Unimplemented).
pub fn required(path: &str) -> Role {
    let method = path.trim_start_matches('/');
    if method.starts_with("anygate.raft.v1.") {
        return Role::Node;
    }
    match method {
        "anygate.v1.PeerService/ListPeers"
        | "anygate.v1.PeerService/GetPeer"
        | "anygate.v1.PeerService/ListEndpoints"
        | "anygate.v1.PeerService/ListRevokedKeys"
        | "anygate.v1.PeerService/StreamPeers"
        | "anygate.v1.PoolService/ListPools"
        | "anygate.v1.SettingsService/GetSettings"
        | "anygate.v1.AuditService/ListAudit"
        | "anygate.v1.PolicyService/ListPolicies"
        | "anygate.v1.IdentityService/ListIdpMappings"
        | "anygate.v1.ClusterService/Status"
        | "anygate.v1.ClusterService/NodeInfo"
        | "anygate.v1.ClusterService/ListRevokedCertificates" => Role::Viewer,
        "anygate.v1.PeerService/AddPeers"
        | "anygate.v1.PeerService/SetPeerState"
        | "anygate.v1.PeerService/RemovePeer"
        | "anygate.v1.PeerService/RotatePeer"
        | "anygate.v1.PeerService/RevokeKeys"
        | "anygate.v1.PoolService/AddPool"
        | "anygate.v1.PoolService/RemovePool"
        | "anygate.v1.ClusterService/Drain" => Role::Operator,
        "anygate.v1.PeerService/ReportEndpoints" => Role::Node,
        _ => Role::Admin,
    }
}

/// The answer to a caller whose role is below `need` for `what`.
pub fn denial(name: &str, role: Role, what: &str, need: Role) -> Status {
    Status::permission_denied(format!(
        "{name} (role {role}) may not {what}: it needs role {need} or higher"
    ))
}

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Certificate name (or, in insecure dev mode, the actor header).
    pub name: String,
    pub role: Role,
    /// Proven by a certificate (false in insecure dev mode).
    pub verified: bool,
}

/// A refusal to audit.
#[derive(Debug, Clone)]
pub struct Denied {
    pub caller: String,
    pub role: Role,
    pub method: String,
}

/// Why a verified certificate may no longer call `path` (revoked; a node
/// that is not a member calling Raft), or None.
pub type IdentityCheck =
    Arc<dyn Fn(&anygate_proto::tls::Identity, &str) -> Option<String> + Send + Sync>;

pub struct Gate {
    pub identity_check: Option<IdentityCheck>,
    pub metrics: Metrics,
    pub denied: tokio::sync::mpsc::Sender<Denied>,
    /// How far the node has got in stopping (a [`Stopping`] as u8).
    pub stopping: std::sync::atomic::AtomicU8,
    pub node_id: u64,
}

/// The stages of a stopping node, in order: operator calls are refused
/// first (clients go to another gateway), then forwarded writes too, so
/// the log stops growing and a voter can catch up for the hand-off;
/// Raft's own messages are served to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Stopping {
    No = 0,
    Api = 1,
    Forwarding = 2,
}

/// Whether `path` is still served at stage `s`.
pub fn served(path: &str, s: Stopping) -> bool {
    let method = path.trim_start_matches('/');
    match s {
        Stopping::No => true,
        Stopping::Api => method.starts_with("anygate.raft.v1."),
        Stopping::Forwarding => {
            method.starts_with("anygate.raft.v1.")
                && method != "anygate.raft.v1.RaftService/Forward"
        }
    }
}

impl Gate {
    /// Move to stage `s` (never back).
    pub fn stop(&self, s: Stopping) {
        self.stopping
            .fetch_max(s as u8, std::sync::atomic::Ordering::SeqCst);
    }

    fn stage(&self) -> Stopping {
        match self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            0 => Stopping::No,
            1 => Stopping::Api,
            _ => Stopping::Forwarding,
        }
    }

    /// Unavailable once the node stops serving `path`, then the role check.
    pub fn admit(&self, path: &str, info: Option<&ConnInfo>) -> Result<(), Status> {
        if !served(path, self.stage()) {
            return Err(Status::unavailable(format!(
                "node {} is stopping: send this call to another gateway",
                self.node_id
            )));
        }
        self.check(path, info)
    }

    /// Ok, or the PermissionDenied answer (counted, and queued for audit).
    pub fn check(&self, path: &str, info: Option<&ConnInfo>) -> Result<(), Status> {
        let Some(id) = info.and_then(|i| i.identity.as_ref()) else {
            // Plaintext connections exist only with --insecure-dev.
            return Ok(());
        };
        if let Some(why) = self.identity_check.as_ref().and_then(|f| f(id, path)) {
            tracing::warn!(caller = %id.name, serial = %id.serial, reason = %why, "certificate refused");
            return Err(Status::unauthenticated(why));
        }
        let need = required(path);
        if id.role >= need {
            return Ok(());
        }
        let method = path.trim_start_matches('/').to_string();
        // The label is a known method or "unknown": a caller cannot create
        // metric series by inventing paths.
        self.metrics
            .denied(id.role.as_str(), anygate_proto::methods::label(path));
        tracing::warn!(caller = %id.name, role = %id.role, %method, need = %need, "permission denied");
        // Audit asynchronously; if the queue is full the refusal is still
        // counted and logged above.
        let _ = self.denied.try_send(Denied {
            caller: id.name.clone(),
            role: id.role,
            method: method.clone(),
        });
        Err(denial(&id.name, id.role, &format!("call {method}"), need))
    }
}

/// The tower layer that puts a [`Gate`] in front of the gRPC routes.
#[derive(Clone)]
pub struct AuthzLayer(pub Arc<Gate>);

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            gate: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
    gate: Arc<Gate>,
}

type BoxFut<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Authz<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFut<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match self
            .gate
            .admit(req.uri().path(), req.extensions().get::<ConnInfo>())
        {
            Ok(()) => {
                // The clone that was polled ready serves this call.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(req))
            }
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_least_privilege() {
        use Role::*;
        let cases = [
            ("/anygate.raft.v1.RaftService/AppendEntries", Node),
            ("/anygate.raft.v1.RaftService/Forward", Node),
            ("/anygate.v1.PeerService/ListPeers", Viewer),
            ("/anygate.v1.PeerService/AddPeers", Operator),
            ("/anygate.v1.PeerService/ReportEndpoints", Node),
            ("/anygate.v1.ClusterService/Drain", Operator),
            ("/anygate.v1.ClusterService/AddLearner", Admin),
            ("/anygate.v1.ClusterService/Export", Admin),
            ("/anygate.v1.SettingsService/SetSettings", Admin),
            ("/anygate.v1.PolicyService/AddPolicy", Admin),
            ("/anygate.v1.PolicyService/ListPolicies", Viewer),
            ("/anygate.v1.IdentityService/MapIdpGroup", Admin),
            ("/anygate.v1.IdentityService/UnmapIdpGroup", Admin),
            ("/anygate.v1.IdentityService/ListIdpMappings", Viewer),
            ("/anygate.v1.Nope/Nothing", Admin),
        ];
        for (path, need) in cases {
            assert_eq!(required(path), need, "{path}");
        }
        let fwd = "/anygate.raft.v1.RaftService/Forward";
        let add = "/anygate.v1.PeerService/AddPeers";
        assert!(served(add, Stopping::No));
        assert!(!served(add, Stopping::Api) && served(fwd, Stopping::Api));
        assert!(!served(fwd, Stopping::Forwarding));
        assert!(served(
            "/anygate.raft.v1.RaftService/Vote",
            Stopping::Forwarding
        ));
        assert!(served(
            "/anygate.raft.v1.RaftService/TimeoutNow",
            Stopping::Forwarding
        ));
        use anygate_proto::methods::label;
        assert_eq!(label(fwd), "anygate.raft.v1.RaftService/Forward");
        assert_eq!(label(add), "anygate.v1.PeerService/AddPeers");
        assert_eq!(label("/anygate.v1.PeerService/AddPeers2"), "unknown");
        assert_eq!(label("/x/y"), "unknown");
        assert!(anygate_proto::methods::METHODS.contains(&"anygate.raft.v1.RaftService/TimeoutNow"));
        // An admin is not a node: it cannot speak Raft.
        assert!(Admin < Node && Operator < Admin && Viewer < Operator);
    }
}
