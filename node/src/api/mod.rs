//! The operator API: one tonic service per file, all sharing [`Api`]. Services
//! parse and validate syntax, stamp the request (actor, proposer time) and hand
//! it to [`RaftNode`]; they never mutate state themselves.

pub mod audit;
pub mod authz;
pub mod backup;
pub mod cluster;
pub mod convert;
pub mod identity;
pub mod peers;
pub mod policies;
pub mod pools;
#[cfg(test)]
mod requests_prop;
pub mod settings;
pub mod status;

use crate::metrics::Metrics;
use crate::model::{Command, Request, Response};
use crate::raft::{RaftNode, Written};
use anygate_proto::tls::{ConnInfo, Role};
use anygate_proto::v1::ReadOptions;
pub use authz::Caller;
use std::sync::Arc;
use tonic::Status;

/// Operator requests may carry at most this many bytes.
pub const MAX_API_MESSAGE: usize = 16 * 1024 * 1024;
/// Peers in one AddPeers request (one log entry).
pub const MAX_PEERS_PER_REQUEST: usize = crate::model::limits::PEERS_PER_REQUEST;

pub const ACTOR_HEADER: &str = "x-anygate-actor";
/// Clients that retry send the same id with every attempt of one write.
pub const REQUEST_ID_HEADER: &str = "x-anygate-request-id";

use crate::time::now_ms;

/// Writes per second per caller, keyed by the caller's name.
pub type WriteLimiter = governor::DefaultKeyedRateLimiter<String>;

pub fn write_limiter(l: crate::config::ApiLimits) -> Arc<WriteLimiter> {
    let rate = std::num::NonZeroU32::new(l.write_rate).unwrap_or(std::num::NonZeroU32::MIN);
    let burst = std::num::NonZeroU32::new(l.write_burst).unwrap_or(rate);
    Arc::new(governor::RateLimiter::keyed(
        governor::Quota::per_second(rate).allow_burst(burst),
    ))
}

#[derive(Clone)]
pub struct Api {
    pub node: RaftNode,
    pub metrics: Metrics,
    pub dataplane: crate::health::DataplaneRx,
    pub bgp: crate::health::BgpRx,
    pub limiter: Arc<WriteLimiter>,
    pub limits: crate::config::ApiLimits,
}

impl Api {
    /// Who is asking: the name and role in the client certificate; on a
    /// plaintext (`--insecure-dev`) connection, the unverified actor header
    /// with the remote address, as admin.
    pub fn caller<T>(req: &tonic::Request<T>) -> Caller {
        let info = req.extensions().get::<ConnInfo>();
        if let Some(id) = info.and_then(|i| i.identity.as_ref()) {
            return Caller {
                name: id.name.clone(),
                role: id.role,
                verified: true,
            };
        }
        let who = req
            .metadata()
            .get(ACTOR_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|s| !s.is_empty() && s.len() <= 128)
            .unwrap_or("anonymous");
        let name = match info.and_then(|i| i.remote).or(req.remote_addr()) {
            Some(a) => format!("{who}@{}", a.ip()),
            None => who.to_string(),
        };
        Caller {
            name,
            role: Role::Admin,
            verified: false,
        }
    }

    /// The audit actor of a request.
    pub fn actor<T>(req: &tonic::Request<T>) -> String {
        Self::caller(req).name
    }

    /// Refuses a caller below `need` (for checks finer than the method,
    /// such as secrets in an otherwise read-only call).
    pub fn require<T>(req: &tonic::Request<T>, need: Role, what: &str) -> Result<Caller, Status> {
        let c = Self::caller(req);
        if c.role >= need {
            Ok(c)
        } else {
            Err(authz::denial(&c.name, c.role, what, need))
        }
    }

    /// Each caller gets `write-rate` writes per second (burst
    /// `write-burst`); beyond that ResourceExhausted, before anything
    /// reaches the log. Other gateways are not limited.
    fn rate_limit(&self, c: &Caller) -> Result<(), Status> {
        if c.role == Role::Node {
            return Ok(());
        }
        match self.limiter.check_key(&c.name) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                self.metrics.rate_limited.inc();
                Err(Status::resource_exhausted(format!(
                    "write rate limit: {} may make {} writes per second (burst {}); retry in {} ms",
                    c.name,
                    self.limits.write_rate,
                    self.limits.write_burst,
                    wait.as_millis().max(1)
                )))
            }
        }
    }

    pub async fn write<T>(&self, req: &tonic::Request<T>, cmd: Command) -> Result<Written, Status> {
        let caller = Self::caller(req);
        self.rate_limit(&caller)?;
        let request_id = match req.metadata().get(REQUEST_ID_HEADER) {
            None => None,
            Some(v) => match v.to_str() {
                Ok(s) if !s.is_empty() && s.len() <= 64 => Some(s.to_string()),
                _ => {
                    return Err(status::invalid(format!(
                        "{REQUEST_ID_HEADER} must be 1-64 visible ASCII characters"
                    )))
                }
            },
        };
        let r = Request {
            actor: caller.name,
            at_ms: now_ms(),
            request_id,
            cmd,
        };
        let action = r.cmd.describe().0;
        let replay = Replay::of(&r.cmd);
        let res = self.node.write(r).await;
        self.metrics.write_result(action, res.is_ok());
        match res {
            Ok(Written {
                index,
                response: Response::Duplicate { index: first },
            }) => {
                // A retry of a write that already applied: answer from the
                // state as it is now, once this node has applied that far.
                self.node
                    .wait_applied(index, crate::raft::CLIENT_TIMEOUT)
                    .await?;
                tracing::info!(
                    first,
                    action,
                    "retried request answered without applying it again"
                );
                Ok(Written {
                    index,
                    response: self.replay(replay),
                })
            }
            other => other.map_err(Status::from),
        }
    }

    /// Refuses a client route (an allowed IP, a routable prefix) that
    /// covers a gateway's cluster address: routed into a tunnel, it would
    /// cut the cluster apart. (The state machine cannot see membership
    /// addresses; each node also refuses to install a route over its own
    /// addresses, neighbors and next hops: `host::net::Guard`.)
    pub fn check_client_routes<'a>(
        &self,
        field: &str,
        nets: impl IntoIterator<Item = &'a ipnet::IpNet>,
    ) -> Result<(), Status> {
        let members: Vec<(u64, std::net::IpAddr)> = self
            .node
            .member_hosts()
            .into_iter()
            .filter_map(|(id, h)| Some((id, h.parse().ok()?)))
            .collect();
        for n in nets {
            if let Some((id, ip)) = members.iter().find(|(_, ip)| n.contains(ip)) {
                return Err(status::invalid(format!(
                    "{field} {n} covers {ip}, the cluster address of gateway {id}"
                )));
            }
        }
        Ok(())
    }

    /// Puts "`caller` read `object`" into the replicated audit log, and
    /// only then lets the read go on: a secret read that cannot be audited
    /// (no quorum, rate limit) is refused.
    pub async fn audit_secret_read<T>(
        &self,
        req: &tonic::Request<T>,
        object: String,
    ) -> Result<(), Status> {
        self.write(req, Command::SecretRead { object })
            .await
            .map(|_| ())
            .map_err(|e| {
                Status::new(
                    e.code(),
                    format!(
                        "the secret read could not be audited, so it is refused: {}",
                        e.message()
                    ),
                )
            })
    }

    /// The answer a command would have given, rebuilt from current state.
    fn replay(&self, key: Replay) -> Response {
        self.node.view.read(|inv| match key {
            Replay::Peers(keys) => {
                Response::Peers(keys.iter().filter_map(|k| inv.peer(k).cloned()).collect())
            }
            Replay::PeerRef(r) => Response::Peers(inv.resolve(&r).cloned().into_iter().collect()),
            Replay::Pool(name) => match inv.pools().into_iter().find(|p| p.name == name) {
                Some(p) => Response::Pool(p),
                None => Response::Empty,
            },
            Replay::Settings => Response::Settings(inv.settings().clone()),
            Replay::Policy(name) => match inv.policies().find(|p| p.name == name) {
                Some(p) => Response::Policy(p.clone()),
                None => Response::Empty,
            },
            Replay::Idp(claim) => match inv.idp_mappings().find(|m| m.claim == claim) {
                Some(m) => Response::IdpMapping(m.clone()),
                None => Response::Empty,
            },
            Replay::Count => Response::Count(0),
            Replay::Empty => Response::Empty,
        })
    }

    /// Linearizable unless the caller asked for a stale (local) read.
    pub async fn read_barrier(&self, opts: &Option<ReadOptions>) -> Result<(), Status> {
        if opts.as_ref().is_some_and(|o| o.stale) {
            return Ok(());
        }
        self.node.read_barrier().await.map_err(Status::from)
    }
}

/// What is needed to answer a retried request again (small: never the
/// whole command).
enum Replay {
    Peers(Vec<crate::model::WgKey>),
    PeerRef(crate::model::PeerRef),
    Pool(String),
    Policy(String),
    Idp(String),
    Settings,
    Count,
    Empty,
}

impl Replay {
    fn of(cmd: &Command) -> Replay {
        match cmd {
            Command::AddPeers(list) => Replay::Peers(list.iter().map(|p| p.public_key).collect()),
            Command::Enroll { peer, .. } => Replay::Peers(vec![peer.public_key]),
            Command::RenewUser { .. } => Replay::Peers(vec![]),
            Command::SetPeerState { peer, .. } => Replay::PeerRef(peer.clone()),
            Command::RotatePeer { new_key, .. } => Replay::Peers(vec![*new_key]),
            Command::RemovePeer { .. } => Replay::Peers(vec![]),
            Command::AddPool { name, .. } => Replay::Pool(name.clone()),
            Command::SetSettings(_) => Replay::Settings,
            Command::ExpirePeers
            | Command::UpdateEndpoints(_)
            | Command::RevokeKeys(_)
            | Command::RevokeCertificates(_) => Replay::Count,
            Command::RemovePool { .. }
            | Command::SetNodeFlags { .. }
            | Command::Denied { .. }
            | Command::SecretRead { .. }
            | Command::UnmapIdpGroup { .. }
            | Command::SignIn { .. }
            | Command::InitPortalKey(_)
            | Command::RemovePolicy { .. } => Replay::Empty,
            Command::AddPolicy(p) => Replay::Policy(p.name.clone()),
            Command::MapIdpGroup(m) => Replay::Idp(m.claim.clone()),
        }
    }
}

/// A server stream of pages.
pub type PageStream<T> =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Items per page of a streamed listing (a page stays far below the
/// message limit whatever the items hold).
pub const PAGE: usize = 1_000;

/// `items` as a stream of pages of at most [`PAGE`], each built by `page`
/// as it is sent (so the whole answer is never encoded at once).
pub fn pages<I, T>(items: Vec<I>, page: impl Fn(&[I]) -> T + Send + 'static) -> PageStream<T>
where
    I: Send + 'static,
    T: Send + 'static,
{
    let mut items = items.into_iter();
    Box::pin(futures::stream::iter(std::iter::from_fn(move || {
        let chunk: Vec<I> = items.by_ref().take(PAGE).collect();
        (!chunk.is_empty()).then(|| Ok(page(&chunk)))
    })))
}

/// Response metadata naming the Raft index a write committed at: with it a
/// client can wait for a node (or its dataplane) to have applied the write.
pub const INDEX_HEADER: &str = "x-anygate-index";

pub fn committed<T>(index: u64, msg: T) -> tonic::Response<T> {
    let mut r = tonic::Response::new(msg);
    r.metadata_mut().insert(
        INDEX_HEADER,
        index
            .to_string()
            .parse()
            .expect("digits are valid metadata"),
    );
    r
}

fn unexpected(r: crate::model::Response) -> Status {
    Status::internal(format!("unexpected state machine answer: {r:?}"))
}
