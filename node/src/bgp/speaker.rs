//! The BGP speaker task: runs (or attaches to) gobgpd, configures it over its
//! API, watches the sessions, and keeps exactly the announcements the health
//! decision allows in gobgpd's RIB.
//!
//! - `supervised`: gobgpd is this node's child under PR_SET_PDEATHSIG (via
//!   setpriv), so a crashed node's gobgpd dies with it, its TCP sessions
//!   close and routers withdraw within milliseconds. It is restarted with
//!   backoff and reconfigured; paths are re-added.
//! - `external`: a gobgpd started elsewhere; the node starts BGP there if it
//!   is not started, adds missing neighbors, and repairs its own paths.
//!
//! Drain re-announces with GRACEFUL_SHUTDOWN (RFC 8326) for
//! `graceful-shutdown-grace` before withdrawing, so routers move traffic
//! while the node still serves. Shutdown withdraws first, waits
//! `shutdown-grace`, and only then lets the rest of the node stop.

use super::client::{Gobgp, Route, Session, GRACEFUL_SHUTDOWN};
use crate::config::{BgpConfig, BgpMode};
use crate::health::announce::{decide, lease_deadline, Inputs};
use crate::health::lease::leader_age;
use crate::health::{Backend, BgpState, BgpStatus, DataplaneRx, SessionsRx, Withdraw};
use crate::metrics::{Metrics, TransitionLabels};
use crate::model::{PeerState, ReturnMode};
use crate::raft::RaftNode;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Why a connection to gobgpd ended (the speaker withdraws and retries).
#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error(transparent)]
    Api(#[from] super::client::BgpError),
    #[error("gobgpd's event stream ended")]
    StreamEnded,
    #[error("gobgpd exited ({0})")]
    Exited(String),
    #[error("gobgpd exited at start; is {0} already in use?")]
    ExitedAtStart(std::net::SocketAddr),
    #[error("cannot start {0}: {1}")]
    Spawn(String, std::io::Error),
    #[error("a gobgpd not started by this node answers at {0} (AS {1}); stop it or use bgp.mode = \"external\"")]
    Foreign(std::net::SocketAddr, u32),
    #[error("the gobgpd at {0} runs AS {1}, config says bgp.asn = {2}")]
    WrongAs(std::net::SocketAddr, u32, u32),
    #[error("gobgpd lists a path with a bad prefix {0}")]
    BadPrefix(String),
}

/// This process's user id.
fn process_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// The nftables table `inet anygate_bgp`: connections to gobgpd's API
/// address from any local user but `uid` are reset, and from other hosts
/// dropped. Pure.
pub fn api_guard(api: std::net::SocketAddr, uid: u32) -> String {
    let (fam, ip, port) = match api.ip() {
        std::net::IpAddr::V4(a) => ("ip", a.to_string(), api.port()),
        std::net::IpAddr::V6(a) => ("ip6", a.to_string(), api.port()),
    };
    format!(
        "table inet anygate_bgp\ndelete table inet anygate_bgp\ntable inet anygate_bgp {{\n  chain output {{\n    type filter hook output priority filter; policy accept;\n    tcp dport {port} {fam} daddr {ip} meta skuid != {uid} reject with tcp reset\n  }}\n  chain input {{\n    type filter hook input priority filter; policy accept;\n    tcp dport {port} iifname != \"lo\" drop\n  }}\n}}\n"
    )
}

pub struct Speaker {
    cfg: BgpConfig,
    node: RaftNode,
    dp: DataplaneRx,
    /// A long-lived task of the node that failed (health controller).
    failed: watch::Receiver<Option<String>>,
    /// Sessions this node's device holds (None without a dataplane).
    held: Option<SessionsRx>,
    metrics: Metrics,
    status: watch::Sender<BgpStatus>,
    /// gobgpd, when supervised.
    child: crate::child::Supervisor,
    backoff: Duration,
    /// Routes we put in gobgpd's RIB, by prefix.
    installed: BTreeMap<String, Route>,
    sessions: BTreeMap<String, Session>,
    /// Draining: announcing with GRACEFUL_SHUTDOWN until then.
    gshut_until: Option<Instant>,
    last: Option<Result<(), Withdraw>>,
    client_count: u32,
}

/// How often gobgpd's RIB is checked against what we installed.
const VERIFY_EVERY: Duration = Duration::from_secs(5);

impl Speaker {
    pub fn new(
        cfg: BgpConfig,
        node: RaftNode,
        dp: DataplaneRx,
        failed: watch::Receiver<Option<String>>,
        held: Option<SessionsRx>,
        metrics: Metrics,
        status: watch::Sender<BgpStatus>,
    ) -> Speaker {
        let gobgpd = cfg.gobgpd.clone();
        Speaker {
            cfg,
            node,
            dp,
            failed,
            held,
            metrics,
            status,
            child: crate::child::Supervisor::new("gobgpd", gobgpd),
            backoff: Duration::from_millis(200),
            installed: BTreeMap::new(),
            sessions: BTreeMap::new(),
            gshut_until: None,
            last: None,
            client_count: 0,
        }
    }

    /// Runs until `shutdown`; then withdraws, waits the grace and stops gobgpd.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut shutting = false;
        loop {
            let r = self.session(&shutdown, &mut shutting).await;
            if shutting {
                break;
            }
            if let Err(e) = r {
                warn!(error = %e, "BGP speaker: gobgpd unavailable; retrying");
                self.metrics.bgp_errors.inc();
            }
            self.installed.clear();
            self.sessions.clear();
            self.publish(BgpState::Withdrawn, Some(Withdraw::GobgpdUnavailable));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.backoff) => {}
            }
            self.backoff = (self.backoff * 2).min(Duration::from_secs(10));
        }
        let why = self.failed.borrow().clone().map(Withdraw::TaskFailed);
        self.publish(
            BgpState::Withdrawn,
            Some(why.unwrap_or(Withdraw::ShuttingDown)),
        );
        tokio::time::sleep(self.cfg.shutdown_grace).await;
        self.child.stop().await;
        info!("BGP speaker stopped");
    }

    /// One connection to gobgpd: configure, then keep announcements right
    /// until gobgpd goes away (Err) or shutdown has withdrawn them (Ok).
    async fn session(
        &mut self,
        shutdown: &CancellationToken,
        shutting: &mut bool,
    ) -> Result<(), SpeakerError> {
        let api = self.attach().await?;
        let mut watch = Box::pin(api.watch_sessions().await?);
        for s in api.sessions().await? {
            self.sessions.insert(s.address.clone(), s);
        }
        // Our prefixes already in the RIB (external mode, or a reconnect).
        self.installed.clear();
        let ours: std::collections::BTreeSet<String> = self
            .candidates()
            .iter()
            .chain(self.client_routes().iter())
            .map(|r| r.cidr())
            .collect();
        for v6 in [false, true] {
            for l in api.list_paths(v6).await? {
                if l.local && ours.contains(&l.cidr) {
                    self.installed.insert(
                        l.cidr.clone(),
                        Route {
                            prefix: l
                                .cidr
                                .split('/')
                                .next()
                                .unwrap_or_default()
                                .parse()
                                .map_err(|_| SpeakerError::BadPrefix(l.cidr.clone()))?,
                            prefix_len: l
                                .cidr
                                .rsplit('/')
                                .next()
                                .and_then(|x| x.parse().ok())
                                .unwrap_or(32),
                            communities: l.communities,
                            med: l.med,
                            prepend: vec![],
                        },
                    );
                }
            }
        }
        let mut raft = self.node.raft.metrics();
        let mut dp = self.dp.clone();
        let mut failed = self.failed.clone();
        let mut held = self.held.clone();
        let mut verify = tokio::time::interval(VERIFY_EVERY);
        verify.reset();
        loop {
            let wake = self.step(&api, *shutting).await?;
            if *shutting && self.installed.is_empty() {
                return Ok(());
            }
            let child_exit = self.child.exited();
            tokio::select! {
                ev = watch.next() => match ev {
                    Some(s) => {
                        let was = self.sessions.get(&s.address).map(|o| o.established);
                        if was != Some(s.established) {
                            info!(neighbor = %s.address, state = %s.state, "BGP session {}", if s.established { "established" } else { "down" });
                        }
                        self.sessions.insert(s.address.clone(), s);
                    }
                    None => return Err(SpeakerError::StreamEnded),
                },
                st = child_exit => {
                    return Err(SpeakerError::Exited(st.map(|s| s.to_string()).unwrap_or_default()));
                }
                // A closed channel is a dead reconciler: `inputs` sees it.
                r = dp.changed() => if r.is_err() { dp = self.dp.clone(); },
                r = failed.changed() => if r.is_err() { failed = self.failed.clone(); },
                r = async {
                    match held.as_mut() {
                        Some(h) => h.changed().await,
                        None => std::future::pending().await,
                    }
                } => if r.is_err() { held = None; },
                _ = raft.changed() => {}
                _ = shutdown.cancelled(), if !*shutting => {
                    info!("shutdown: withdrawing the anycast routes first");
                    *shutting = true;
                }
                _ = verify.tick() => self.verify(&api).await?,
                _ = tokio::time::sleep(wake) => {}
            }
        }
    }

    /// Start gobgpd if we supervise it, connect, start BGP, add neighbors.
    async fn attach(&mut self) -> Result<Gobgp, SpeakerError> {
        if self.cfg.mode == BgpMode::Supervised && !self.child.running() {
            self.spawn()?;
            // gobgpd's API has no authentication: only this node's user
            // may reach it (nftables), never another host.
            let script = api_guard(self.cfg.api, process_uid());
            if let Err(e) = crate::host::nft::apply_nft(&script).await {
                warn!(error = %e, api = %self.cfg.api, "cannot restrict gobgpd's API to this node's user; any local user can reach it");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let api = loop {
            match Gobgp::connect(self.cfg.api).await {
                Ok(a) => match a.get_asn().await {
                    Ok(_) => break a,
                    Err(e) if Instant::now() > deadline => return Err(e.into()),
                    Err(_) => {}
                },
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => {}
            }
            if self.cfg.mode == BgpMode::Supervised && !self.child.running() {
                return Err(SpeakerError::ExitedAtStart(self.cfg.api));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let asn = api.get_asn().await?;
        if asn == 0 {
            api.start(
                self.cfg.asn,
                &self.cfg.router_id.to_string(),
                self.cfg.listen_port,
            )
            .await?;
        } else if self.cfg.mode == BgpMode::Supervised {
            return Err(SpeakerError::Foreign(self.cfg.api, asn));
        } else if asn != self.cfg.asn {
            return Err(SpeakerError::WrongAs(self.cfg.api, asn, self.cfg.asn));
        }
        let have: Vec<String> = api
            .sessions()
            .await?
            .into_iter()
            .map(|s| s.address)
            .collect();
        for n in &self.cfg.neighbors {
            if !have.contains(&n.address.to_string()) {
                api.add_neighbor(
                    n,
                    self.cfg.hold_time,
                    self.cfg.keepalive,
                    self.cfg.connect_retry,
                )
                .await?;
            }
        }
        info!(api = %self.cfg.api, asn = self.cfg.asn, router_id = %self.cfg.router_id, neighbors = self.cfg.neighbors.len(), "gobgpd configured");
        Ok(api)
    }

    fn spawn(&mut self) -> Result<(), SpeakerError> {
        let api = self.cfg.api;
        let child = self
            .child
            .start(|cmd| {
                cmd.arg(format!("--api-hosts={api}"))
                    .args(["--log-plain", "--log-level=info", "--pprof-disable"])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
            })
            .map_err(|e| SpeakerError::Spawn(self.cfg.gobgpd.display().to_string(), e))?;
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(out).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    debug!(target: "gobgpd", "{l}");
                }
            });
        }
        if self.child.restarts() > 0 {
            self.metrics.bgp_gobgpd_restarts.inc();
        }
        Ok(())
    }

    /// The routes we would announce when healthy (settings' anycast addresses).
    fn candidates(&self) -> Vec<Route> {
        let (v4, v6) = self
            .node
            .view
            .read(|i| (i.settings().anycast_v4, i.settings().anycast_v6));
        let mk = |prefix: std::net::IpAddr, len: u8| Route {
            prefix,
            prefix_len: len,
            communities: self.cfg.communities.clone(),
            med: self.cfg.med,
            prepend: vec![self.cfg.asn; self.cfg.as_path_prepend as usize],
        };
        v4.map(|a| mk(a.into(), 32))
            .into_iter()
            .chain(v6.map(|a| mk(a.into(), 128)))
            .collect()
    }

    /// Routed return mode: a host route for every address of every client
    /// whose session this node holds — a fresh handshake on this device,
    /// and the replicated endpoint map naming this node as the last to see
    /// it (so exactly one node claims each client). Tagged NO_EXPORT by
    /// default (`client-route-communities`): internal routes only.
    fn client_routes(&self) -> Vec<Route> {
        let Some(held) = &self.held else {
            return vec![];
        };
        let held = held.borrow().clone();
        self.node.view.read(|inv| {
            if inv.settings().return_mode != ReturnMode::Routed {
                return vec![];
            }
            let mut out = Vec::new();
            for k in held.iter() {
                let (Some(p), Some(e)) = (inv.peer(k), inv.endpoint(k)) else {
                    continue;
                };
                if e.observed_by != self.node.id || p.state != PeerState::Active {
                    continue;
                }
                for n in &p.allowed_ips {
                    out.push(Route {
                        prefix: n.network(),
                        prefix_len: n.prefix_len(),
                        communities: self.cfg.client_route_communities.clone(),
                        med: None,
                        prepend: vec![],
                    });
                }
            }
            out
        })
    }

    fn inputs(&self, shutting: bool) -> Inputs {
        let dp = self.dp.borrow().clone();
        // The reconciler is gone (its sender dropped): its last status is
        // no longer news, whatever it said.
        let dp_gone = self.dp.has_changed().is_err();
        let facts = self.node.leader_facts();
        Inputs {
            failed_task: self.failed.borrow().clone(),
            shutting_down: shutting,
            drained: self
                .node
                .view
                .read(|i| i.node_flags(self.node.id).map(|f| f.drained))
                .unwrap_or(false),
            dataplane_enabled: dp.backend != Backend::None,
            dataplane_healthy: dp.healthy && !dp_gone,
            dataplane_reason: if dp_gone {
                "the dataplane task stopped".into()
            } else {
                dp.reason
            },
            leader_age: leader_age(&facts),
            leader_lease: self.cfg.leader_lease,
            voters: facts.voters,
            // Not before the device holds what the cluster had committed
            // when this node first heard a leader (a joining or restarted
            // gateway); reached once, it stays reached.
            catching_up: self
                .node
                .contact
                .first_commit()
                .filter(|c| dp.applied_index < *c)
                .map(|c| (dp.applied_index, c)),
            sessions_established: self.sessions.values().filter(|s| s.established).count(),
        }
    }

    /// Decide, bring gobgpd's RIB to the decision, publish. Returns how long
    /// until time alone could change the decision.
    async fn step(&mut self, api: &Gobgp, shutting: bool) -> Result<Duration, SpeakerError> {
        let inputs = self.inputs(shutting);
        let decision = decide(&inputs);
        let now = Instant::now();
        // Drain: announce with GRACEFUL_SHUTDOWN for a grace, then withdraw.
        match &decision {
            Err(Withdraw::Drained) => {
                if self.gshut_until.is_none()
                    && self
                        .installed
                        .values()
                        .any(|r| !r.communities.contains(&GRACEFUL_SHUTDOWN))
                {
                    self.gshut_until = Some(now + self.cfg.graceful_shutdown_grace);
                }
            }
            _ => self.gshut_until = None,
        }
        let gshut = self.gshut_until.filter(|t| *t > now);
        let mut desired: BTreeMap<String, Route> = BTreeMap::new();
        if decision.is_ok() || gshut.is_some() {
            for mut r in self.candidates() {
                if gshut.is_some() {
                    r.communities.push(GRACEFUL_SHUTDOWN);
                }
                desired.insert(r.cidr(), r);
            }
        }
        let anycast = desired.len();
        // A drained node still serves the sessions it holds until they move,
        // so their return routes stay; any other reason withdraws them.
        if matches!(decision, Ok(()) | Err(Withdraw::Drained)) {
            for r in self.client_routes() {
                desired.entry(r.cidr()).or_insert(r);
            }
        }
        let stale: Vec<Route> = self
            .installed
            .iter()
            .filter(|(k, _)| !desired.contains_key(*k))
            .map(|(_, r)| r.clone())
            .collect();
        for r in stale {
            api.delete_path(&r).await?;
            info!(prefix = %r.cidr(), "withdrawn");
            self.installed.remove(&r.cidr());
        }
        for (k, r) in &desired {
            if self.installed.get(k) != Some(r) {
                api.add_path(r).await?;
                info!(prefix = %k, graceful_shutdown = gshut.is_some(), "announced");
                self.installed.insert(k.clone(), r.clone());
            }
        }
        if self.last.as_ref() != Some(&decision) {
            let (to, why) = match &decision {
                Ok(()) => ("announce", "healthy"),
                Err(w) => ("withdraw", w.kind()),
            };
            match &decision {
                Ok(()) => info!("announcing: healthy"),
                Err(w) => warn!(reason = %w, "not announcing"),
            }
            self.metrics
                .bgp_transitions
                .get_or_create(&TransitionLabels {
                    to: to.into(),
                    reason: why.into(),
                })
                .inc();
            self.last = Some(decision.clone());
        }
        self.backoff = Duration::from_millis(200);
        let (state, reason) = match (&decision, gshut) {
            (Err(w), Some(_)) => (BgpState::GracefulShutdown, Some(w.clone())),
            (Err(w), None) => (BgpState::Withdrawn, Some(w.clone())),
            (Ok(()), _) if anycast == 0 => (BgpState::Withdrawn, Some(Withdraw::NoAnycastAddress)),
            (Ok(()), _) => (BgpState::Announced, None),
        };
        self.client_count = (desired.len() - anycast) as u32;
        self.publish(state, reason);
        let mut wake = VERIFY_EVERY;
        if let Some(d) = lease_deadline(&inputs) {
            wake = wake.min(d + Duration::from_millis(1));
        }
        if let Some(t) = gshut {
            wake = wake.min(t - now);
        }
        if decision.is_ok() && inputs.leader_age.is_none() {
            wake = wake.min(Duration::from_millis(100));
        }
        Ok(wake)
    }

    /// gobgpd's RIB still holds what we installed (a restarted external
    /// gobgpd, or a path deleted by hand, is repaired here).
    async fn verify(&mut self, api: &Gobgp) -> Result<(), SpeakerError> {
        let mut present = Vec::new();
        for v6 in [false, true] {
            for l in api.list_paths(v6).await? {
                if l.local {
                    present.push(l.cidr);
                }
            }
        }
        let missing: Vec<String> = self
            .installed
            .keys()
            .filter(|k| !present.contains(k))
            .cloned()
            .collect();
        for k in missing {
            warn!(prefix = %k, "our path vanished from gobgpd; re-adding");
            self.metrics.bgp_path_repairs.inc();
            self.installed.remove(&k);
        }
        Ok(())
    }

    fn publish(&mut self, state: BgpState, reason: Option<Withdraw>) {
        self.metrics.bgp_announced.set(state.announced() as i64);
        let est = self.sessions.values().filter(|s| s.established).count();
        self.metrics.bgp_sessions_established.set(est as i64);
        for (n, s) in &self.sessions {
            self.metrics
                .bgp_session_up
                .get_or_create(&crate::metrics::NeighborLabels {
                    neighbor: n.to_string(),
                })
                .set(s.established as i64);
        }
        for st in BgpState::ALL {
            if st == BgpState::Disabled {
                continue;
            }
            self.metrics
                .bgp_state
                .get_or_create(&crate::metrics::StateLabels {
                    state: st.as_str().into(),
                })
                .set((st == state) as i64);
        }
        let anycast: std::collections::BTreeSet<String> =
            self.candidates().iter().map(|r| r.cidr()).collect();
        if self.installed.is_empty() {
            self.client_count = 0;
        }
        let st = BgpStatus {
            state,
            reason,
            sessions_established: est as u32,
            sessions: self.sessions.len() as u32,
            routes: self
                .installed
                .keys()
                .filter(|k| anycast.contains(*k))
                .cloned()
                .collect(),
            client_routes: self.client_count,
            gobgpd_restarts: self.child.restarts(),
        };
        self.status.send_if_modified(|s| {
            let changed = *s != st;
            *s = st;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_nodes_user_reaches_the_gobgpd_api() {
        let s = super::api_guard("127.0.0.1:50051".parse().unwrap(), 998);
        assert!(
            s.contains(
                "tcp dport 50051 ip daddr 127.0.0.1 meta skuid != 998 reject with tcp reset"
            ),
            "{s}"
        );
        assert!(s.contains("tcp dport 50051 iifname != \"lo\" drop"), "{s}");
        assert!(s.starts_with("table inet anygate_bgp\ndelete table inet anygate_bgp\n"));
        let s6 = super::api_guard("[::1]:50052".parse().unwrap(), 0);
        assert!(
            s6.contains("tcp dport 50052 ip6 daddr ::1 meta skuid != 0"),
            "{s6}"
        );
    }
}
