//! The reconcile loop: one task owns the WireGuard device and the host
//! routes. It plans every commit against what it believes the device holds
//! (no dump per write), reads the device back every `observe-interval`
//! (endpoints for the replicated map, drift repair, route check), and every
//! `resync-interval` also re-creates the device if it vanished and rewrites
//! the nftables table. A failing pass is logged, counted and retried with
//! backoff; the loop only ends at shutdown.

use super::plan::{apply_to, desired_peer, desired_peers, plan, Desired, Plan};
use crate::config::DataplaneConfig;
use crate::dataplane::backend::{Device, Reader};
use crate::dataplane::identity::Identity;
use crate::dataplane::net::{apply_nft, net_desired, NetDesired, NetManager};
use crate::dataplane::react;
use crate::dataplane::{Action, DeviceSettings, Observed, PeerConfig};
use crate::metrics::{ActionLabels, Metrics, PassLabels};
use crate::model::{Command, EndpointRecord, Inventory, NodeId, Request, WgKey};
use crate::raft::RaftNode;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// What this node's dataplane looks like, for `cluster status`, /ready and BGP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataplaneStatus {
    pub backend: String,
    pub interface: String,
    pub public_key: Option<WgKey>,
    pub identity_ok: bool,
    /// Device programmed, current and identity right.
    pub healthy: bool,
    /// Why not healthy (empty when healthy).
    pub reason: String,
    /// Raft index whose state the device reflects.
    pub applied_index: u64,
    pub device_peers: u64,
}

pub type StatusRx = watch::Receiver<DataplaneStatus>;

type ReadTask = tokio::task::JoinHandle<Result<Observed, crate::dataplane::DataplaneError>>;

/// A status for nodes that run without a dataplane.
pub fn disabled_status() -> (watch::Sender<DataplaneStatus>, StatusRx) {
    watch::channel(DataplaneStatus {
        backend: "none".into(),
        reason: "dataplane disabled (backend = none)".into(),
        ..Default::default()
    })
}

/// Peers whose sessions this node's device holds (fresh handshakes).
pub type SessionsRx = watch::Receiver<Arc<BTreeSet<WgKey>>>;

pub struct Reconciler {
    /// Endpoint -> peer, from the last device read (for react).
    react_index: crate::dataplane::react::Index,
    /// When each peer was last kicked, and how often in a row.
    react_last: BTreeMap<WgKey, Kicked>,
    /// No react read before this (duty-cycle bound).
    react_next_at: Instant,
    /// When each peer's moved-away session was last dropped here.
    flushed_last: BTreeMap<WgKey, Instant>,
    /// Sole survivor: the lost node and its clients still to kick.
    kick_queue: Option<(NodeId, Vec<(WgKey, SocketAddr)>)>,
    /// Fresh sessions, updated after every device read.
    sessions: watch::Sender<Arc<BTreeSet<WgKey>>>,
    cfg: DataplaneConfig,
    node: RaftNode,
    metrics: Metrics,
    identity: Identity,
    device: Device,
    net: Option<NetManager>,
    /// The interface name in use (node override or cluster setting).
    ifname: String,
    /// What the device holds, as far as we know; None = read it back first.
    believed: Option<Observed>,
    believed_index: u64,
    last_error: Option<String>,
    backoff: Duration,
    retry_at: Instant,
    last_nft: Option<String>,
    /// The access-policy table as last read or written (None: read it).
    policy_have: Option<crate::dataplane::policy::Present>,
    /// Label sets of the per-peer metrics exported (removed with the peer).
    peer_labels: BTreeMap<WgKey, crate::metrics::PeerLabels>,
    pending_endpoints: BTreeMap<WgKey, EndpointRecord>,
    endpoint_flush_at: Instant,
    endpoint_write: Option<tokio::task::JoinHandle<()>>,
    status: watch::Sender<DataplaneStatus>,
    /// Since when the device has been behind the applied state.
    behind_since: Option<Instant>,
    read_started: Option<Instant>,
    reader: Option<Reader>,
    /// No periodic read before this (duty-cycle bound).
    next_read_at: Instant,
}

/// A device read (plus processing it) takes at most 1/8 of the time.
const READ_DUTY_INVERSE: u32 = 8;

/// How long the device may trail the applied state before the node calls
/// itself unhealthy.
const LAG_GRACE: Duration = Duration::from_secs(2);

/// How often the react set is read, and how long a kicked peer is left alone.
const REACT_INTERVAL: Duration = Duration::from_millis(100);
const REACT_HOLDOFF: Duration = Duration::from_secs(1);
/// Reading the react sets takes at most 1/10 of the time.
const REACT_DUTY_INVERSE: u32 = 10;
/// A peer not kicked for this long starts again from REACT_HOLDOFF.
const REACT_FORGET: Duration = Duration::from_secs(120);

/// The last handshake react (or the kick) started to a peer. A peer kicked
/// again and again (a client whose packets never decrypt into its allowed
/// IPs, say) waits twice as long each time, up to a minute.
#[derive(Clone, Copy, Debug)]
struct Kicked {
    at: Instant,
    strikes: u32,
}

impl Kicked {
    fn holdoff(&self) -> Duration {
        (REACT_HOLDOFF * 2u32.pow(self.strikes.min(6))).min(Duration::from_secs(60))
    }
}

/// Sole survivor: the lost gateway's clients are kicked at most this many
/// per react tick (500 handshakes a second).
const KICK_PER_TICK: usize = 50;

/// How often the device's liveness is checked between full reads.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(100);

fn now_ms() -> i64 {
    crate::api::now_ms()
}

impl Reconciler {
    pub fn new(
        cfg: DataplaneConfig,
        node: RaftNode,
        metrics: Metrics,
        identity: Identity,
        device: Device,
        status: watch::Sender<DataplaneStatus>,
    ) -> Reconciler {
        let net = if cfg.manage_routes {
            match NetManager::new() {
                Ok(n) => Some(n),
                Err(e) => {
                    warn!(error = %e, "rtnetlink unavailable: routes will not be managed");
                    None
                }
            }
        } else {
            None
        };
        let ifname = cfg
            .interface
            .clone()
            .unwrap_or_else(|| node.view.read(|i| i.settings().interface.clone()));
        Reconciler {
            cfg,
            node,
            metrics,
            identity,
            device,
            net,
            ifname,
            believed: None,
            believed_index: 0,
            last_error: None,
            backoff: Duration::from_millis(100),
            retry_at: Instant::now(),
            last_nft: None,
            policy_have: None,
            peer_labels: BTreeMap::new(),
            pending_endpoints: BTreeMap::new(),
            endpoint_flush_at: Instant::now(),
            endpoint_write: None,
            status,
            sessions: watch::channel(Arc::new(BTreeSet::new())).0,
            react_index: Default::default(),
            react_last: BTreeMap::new(),
            react_next_at: Instant::now(),
            flushed_last: BTreeMap::new(),
            kick_queue: None,
            behind_since: None,
            read_started: None,
            reader: None,
            next_read_at: Instant::now(),
        }
    }

    /// Follow the sessions this device holds (for routed-mode host routes).
    pub fn sessions(&self) -> SessionsRx {
        self.sessions.subscribe()
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        info!(backend = self.device.kind(), ifname = %self.ifname, public_key = %self.identity.public_key, "dataplane starting");
        let mut applied = self.node.view.subscribe();
        let mut observe = tokio::time::interval(self.cfg.observe_interval);
        observe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resync = tokio::time::interval(self.cfg.resync_interval);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await;
        // Between reads, a cheap liveness check: a dead device must stop
        // the BGP announcement within about this long, not an observe-interval.
        let mut liveness = tokio::time::interval(LIVENESS_INTERVAL);
        liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut react = tokio::time::interval(REACT_INTERVAL);
        react.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reacting = (self.cfg.react && self.net.is_some()) || self.cfg.kick;
        // React's event path (NFLOG); without it the poll alone reacts.
        let mut arrivals = None;
        if self.cfg.react && self.net.is_some() {
            let (tx, rx) = tokio::sync::mpsc::channel(4096);
            match crate::dataplane::nflog::listen(tx) {
                Ok(()) => arrivals = Some(rx),
                Err(e) => warn!(error = %e, "react: no NFLOG events; the 100 ms poll alone reacts"),
            }
        }
        self.sync(true).await;
        // A device read in flight: (read, belief index when it started, full).
        let mut reading: Option<(ReadTask, u64, bool)> = None;
        loop {
            let retry = tokio::time::sleep_until(self.retry_at.into());
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = applied.changed() => {
                    if r.is_err() { break }
                    self.on_commit().await;
                }
                _ = retry, if self.believed.is_none() => self.sync(true).await,
                r = async { (&mut reading.as_mut().expect("guarded").0).await }, if reading.is_some() => {
                    let (_, since, full) = reading.take().expect("guarded");
                    let started = Instant::now();
                    let read_took = self.read_started.map(|t| t.elapsed()).unwrap_or_default();
                    match r {
                        Ok(Ok(observed)) => self.observed(observed, since, full).await,
                        Ok(Err(e)) => self.failed(format!("reading {}: {e}", self.ifname)),
                        Err(e) => self.failed(format!("device read task: {e}")),
                    }
                    self.observe_pass(if full { "resync" } else { "observe" }, started);
                    // Keep reading the device to a bounded share of the
                    // time: a big device (a 60k-peer dump takes hundreds of
                    // ms) is read less often than observe-interval.
                    self.next_read_at = Instant::now() + (read_took + started.elapsed()) * READ_DUTY_INVERSE;
                    self.flush_endpoints();
                    self.publish();
                }
                // The tick is always consumed: a guard on next_read_at here
                // would leave nothing to wake the loop when it passes.
                _ = observe.tick(), if reading.is_none() => {
                    if Instant::now() >= self.next_read_at {
                        reading = self.start_read(false).await;
                    }
                }
                _ = liveness.tick(), if self.believed.is_some() => {
                    if let Err(e) = self.device.alive() {
                        self.failed(format!("device not alive: {e}"));
                        self.publish();
                    }
                }
                _ = react.tick(), if reacting && self.believed.is_some() => self.react().await,
                r = async { arrivals.as_mut().expect("guarded").recv().await }, if arrivals.is_some() => {
                    match r {
                        Some(src) if self.believed.is_some() => self.arrival(src).await,
                        Some(_) => {}
                        None => {
                            warn!("react: the NFLOG listener stopped; the 100 ms poll alone reacts");
                            arrivals = None;
                        }
                    }
                }
                _ = resync.tick(), if reading.is_none() => {
                    reading = self.start_read(true).await;
                }
            }
        }
        if let Some((t, _, _)) = reading.take() {
            t.abort();
        }
        if let Some(h) = self.endpoint_write.take() {
            h.abort();
        }
        self.device.shutdown().await;
        info!("dataplane stopped");
    }

    /// Device settings, and every peer when `peers` is set.
    fn desired(&self, inv: &Inventory, peers: bool) -> Desired {
        Desired {
            device: Some(DeviceSettings {
                private_key: self.identity.private_key,
                listen_port: inv.settings().listen_port,
                fwmark: self.cfg.fwmark,
            }),
            peers: if peers {
                desired_peers(inv, now_ms())
            } else {
                BTreeMap::new()
            },
        }
    }

    /// Incremental: plan the peers the new commits touched against the
    /// belief and apply only that (falls back to the whole inventory when
    /// settings or pools changed, or the change history is gone).
    async fn on_commit(&mut self) {
        let Some(believed) = &self.believed else {
            return; // a full sync is pending (retry timer)
        };
        let started = Instant::now();
        let changes = self.node.view.changes_since(self.believed_index);
        // Group membership follows peers; policies are a global change.
        let touches_policy = changes
            .as_ref()
            .is_none_or(|cs| cs.global || !cs.peers.is_empty());
        let (index, p, net) = match changes {
            Some(cs) if !cs.global => {
                let p = self.node.view.read(|inv| {
                    let now = now_ms();
                    let mut want = Desired {
                        device: self.desired(inv, false).device,
                        peers: BTreeMap::new(),
                    };
                    let mut have = Observed {
                        private_key: believed.private_key,
                        listen_port: believed.listen_port,
                        fwmark: believed.fwmark,
                        peers: BTreeMap::new(),
                    };
                    for k in &cs.peers {
                        if let Some(d) = desired_peer(inv, k, now) {
                            want.peers.insert(*k, d);
                        }
                        if let Some(o) = believed.peers.get(k) {
                            have.peers.insert(*k, o.clone());
                        }
                    }
                    plan(&want, &have)
                });
                (cs.upto, p, None)
            }
            _ => {
                let index = self.node.view.applied();
                let (p, net) = self.node.view.read(|inv| {
                    let d = self.desired(inv, true);
                    (plan(&d, believed), net_desired(inv, &self.ifname))
                });
                (index, p, Some(net))
            }
        };
        match self.apply(&p).await {
            Ok(()) => {
                if let Some(b) = &mut self.believed {
                    // React must know peers (and endpoints) a commit added
                    // before the next device read: a gateway that just
                    // joined gets its clients' flows as soon as it announces.
                    let touched: Vec<WgKey> = p.actions.iter().filter_map(action_peer).collect();
                    for k in &touched {
                        if let Some(ep) = b.peers.get(k).and_then(|o| o.config.endpoint) {
                            self.react_index.remove(&ep);
                        }
                    }
                    apply_to(b, &p.actions);
                    for k in &touched {
                        if let Some(o) = b.peers.get(k) {
                            if let Some(ep) = o.config.endpoint {
                                let hs = o.stats.last_handshake_ms();
                                self.react_index.insert(ep, (*k, o.config.clone(), hs));
                            }
                        }
                    }
                }
                self.believed_index = self.believed_index.max(index);
                if !p.is_empty() {
                    debug!(index, plan = %p, "applied commit");
                }
                if let Some(net) = net {
                    if self.net.is_some() {
                        self.reconcile_net(&net, false).await;
                    }
                }
                if self.net.is_some() && (touches_policy || !p.is_empty()) {
                    self.sync_policy(false).await;
                }
                self.last_error = None;
            }
            Err(e) => self.failed(format!("applying commit {index}: {e}")),
        }
        self.observe_pass("commit", started);
        self.publish();
    }

    /// Start reading the device in the background, so commits are applied
    /// meanwhile (a dump of a big device takes a while). Without a belief
    /// (startup, after a failure) sync in line instead.
    async fn start_read(&mut self, full: bool) -> Option<(ReadTask, u64, bool)> {
        if self.believed.is_none() {
            self.sync(true).await;
            return None;
        }
        if full {
            if let Err(e) = self.ensure_device().await {
                self.failed(e);
                self.publish();
                return None;
            }
            if self.believed.is_none() {
                // The device was re-created: program it now.
                self.sync(true).await;
                return None;
            }
        }
        // One reader (for the kernel: one extra netlink socket) for the
        // node's lifetime, not one per read.
        let reader = self
            .reader
            .get_or_insert_with(|| self.device.reader())
            .clone();
        self.read_started = Some(Instant::now());
        Some((
            tokio::spawn(async move { reader.get().await }),
            self.believed_index,
            full,
        ))
    }

    /// Create or restart the device if it is gone; a new device is empty,
    /// so the belief is dropped.
    async fn ensure_device(&mut self) -> Result<(), String> {
        if let Some(net) = &self.net {
            if self
                .device
                .ensure(net, &self.ifname)
                .await
                .map_err(|e| format!("device {}: {e}", self.ifname))?
            {
                self.believed = None;
            }
        }
        Ok(())
    }

    /// Read the device in line, repair, check the host network.
    async fn sync(&mut self, full: bool) {
        if self.believed.is_none() && Instant::now() < self.retry_at {
            return;
        }
        let started = Instant::now();
        let read = async {
            self.ensure_device().await?;
            self.device
                .get()
                .await
                .map_err(|e| format!("reading {}: {e}", self.ifname))
        };
        match read.await {
            Ok(observed) => {
                let since = self.believed_index;
                self.observed(observed, since, full).await
            }
            Err(e) => self.failed(e),
        }
        self.observe_pass(if full { "resync" } else { "observe" }, started);
        self.flush_endpoints();
        self.publish();
    }

    /// A device read is back. Peers changed by commits applied since the
    /// read started are taken from the belief (the read may predate them);
    /// everything else that differs from the replicated state is repaired.
    async fn observed(&mut self, mut observed: Observed, since: u64, full: bool) {
        let had_belief = self.believed.is_some();
        if let Some(b) = &self.believed {
            if self.believed_index > since {
                match self.node.view.changes_since(since) {
                    Some(cs) if !cs.global => {
                        for k in &cs.peers {
                            match b.peers.get(k) {
                                Some(p) => observed.peers.insert(*k, p.clone()),
                                None => observed.peers.remove(k),
                            };
                        }
                    }
                    // Too much changed meanwhile: skip this round.
                    _ => return,
                }
            }
        }
        let index = self.node.view.applied();
        let (p, net, proposals) = self.node.view.read(|inv| {
            let d = self.desired(inv, true);
            (
                plan(&d, &observed),
                net_desired(inv, &self.ifname),
                endpoint_proposals(inv, &observed, self.node.id, now_ms()),
            )
        });
        let fresh = fresh_sessions(&observed, now_ms());
        self.sessions.send_if_modified(|s| {
            let changed = **s != fresh;
            if changed {
                *s = Arc::new(fresh);
            }
            changed
        });
        if let Err(e) = self.apply(&p).await {
            self.failed(format!("programming {}: {e}", self.ifname));
            return;
        }
        if had_belief && !p.is_empty() {
            warn!(plan = %p, "device differed from the replicated state (hand edit?); repaired");
            self.metrics.drift_repairs.inc_by(p.actions.len() as u64);
        } else if !p.is_empty() {
            info!(plan = %p, "device programmed");
        }
        apply_to(&mut observed, &p.actions);
        if self.cfg.flush_loser && had_belief {
            self.flush_losers(&observed).await;
        }
        self.react_index = crate::dataplane::react::index(&observed);
        self.metrics.device_peers.set(observed.peers.len() as i64);
        self.peer_metrics(&observed);
        self.believed = Some(observed);
        self.believed_index = index;
        self.last_error = None;
        self.backoff = Duration::from_millis(100);
        for (k, r) in proposals {
            self.pending_endpoints.insert(k, r);
        }
        if self.net.is_some() {
            self.reconcile_net(&net, full).await;
            self.sync_policy(full).await;
        }
    }

    /// Per-peer traffic and handshake gauges, labelled as operators name
    /// the device; series of peers gone from the device are dropped.
    fn peer_metrics(&mut self, observed: &Observed) {
        let labels: BTreeMap<WgKey, crate::metrics::PeerLabels> = self.node.view.read(|inv| {
            observed
                .peers
                .keys()
                .filter_map(|k| {
                    inv.peer(k).map(|p| {
                        (
                            *k,
                            crate::metrics::PeerLabels {
                                user: p.user.clone(),
                                device: p.device.clone(),
                                group: p.group.clone(),
                            },
                        )
                    })
                })
                .collect()
        });
        let m = &self.metrics;
        for (k, old) in &self.peer_labels {
            if labels.get(k) != Some(old) {
                m.peer_rx_bytes.remove(old);
                m.peer_tx_bytes.remove(old);
                m.peer_last_handshake.remove(old);
            }
        }
        for (k, l) in &labels {
            let st = &observed.peers[k].stats;
            m.peer_rx_bytes.get_or_create(l).set(st.rx_bytes as i64);
            m.peer_tx_bytes.get_or_create(l).set(st.tx_bytes as i64);
            m.peer_last_handshake
                .get_or_create(l)
                .set(st.last_handshake.0 as i64);
        }
        self.peer_labels = labels;
    }

    /// Brings `table inet anygate_policy` to what the policies and group
    /// memberships ask for, with the smallest change. `full` (every
    /// resync) reads the kernel first, so hand edits are repaired.
    async fn sync_policy(&mut self, full: bool) {
        use crate::dataplane::net::list_table;
        use crate::dataplane::policy;
        let want = self
            .node
            .view
            .read(|inv| policy::desired(inv, &self.ifname));
        let rules_differ = self
            .policy_have
            .as_ref()
            .is_none_or(|h| !h.rules.keys().eq(want.rules.keys()));
        let had = self.policy_have.is_some();
        if full || rules_differ {
            match list_table(policy::TABLE, true).await {
                Ok(t) => {
                    self.policy_have = t.map(|t| policy::parse(&t));
                    if let Some(h) = &self.policy_have {
                        self.metrics
                            .policy_denied_packets
                            .set(h.denied_packets as i64);
                    }
                }
                Err(e) => {
                    self.metrics.reconcile_errors.inc();
                    warn!(error = %e, "cannot read the access-policy table; will retry");
                    self.policy_have = None;
                    return;
                }
            }
        }
        let Some(script) = policy::plan(self.policy_have.as_ref(), &want) else {
            return;
        };
        match apply_nft(&script).await {
            Ok(()) => {
                if full && had {
                    warn!(script = %script.trim(), "access-policy table differed from the policies (hand edit?); repaired");
                    self.metrics.drift_repairs.inc();
                } else {
                    debug!(script = %script.trim(), "access-policy table updated");
                }
                self.metrics.policy_rules.set(want.rules.len() as i64);
                if script.contains(" rule ") || script.contains("delete table") {
                    // New rules' handles are needed to remove them later.
                    self.policy_have = None;
                } else if let Some(h) = &mut self.policy_have {
                    h.sets = want.sets;
                }
            }
            Err(e) => {
                self.metrics.reconcile_errors.inc();
                warn!(error = %e, "access-policy table not updated; will retry");
                self.policy_have = None;
            }
        }
    }

    async fn reconcile_net(&mut self, want: &NetDesired, nft: bool) {
        let Some(net) = &mut self.net else { return };
        match net.reconcile(want).await {
            Ok(rep) if !rep.is_empty() => {
                info!(ifname = %want.ifname, ?rep, "host network restored");
                self.metrics.route_repairs.inc();
            }
            Ok(_) => {}
            Err(e) => {
                self.metrics.reconcile_errors.inc();
                warn!(error = %e, "host network reconcile failed; will retry");
            }
        }
        if nft || self.last_nft.as_deref() != Some(&want.nft) {
            match apply_nft(&want.nft).await {
                Ok(()) => self.last_nft = Some(want.nft.clone()),
                Err(e) => {
                    self.metrics.reconcile_errors.inc();
                    warn!(error = %e, "nftables table anygate not applied; will retry");
                }
            }
        }
    }

    async fn apply(&self, p: &Plan) -> Result<(), crate::dataplane::DataplaneError> {
        if p.is_empty() {
            return Ok(());
        }
        self.device.set(&p.actions).await?;
        for a in &p.actions {
            let action = match a {
                Action::SetDevice(_) => "device",
                Action::AddPeer(_) => "add",
                Action::UpdatePeer { .. } => "update",
                Action::RemovePeer(_) => "remove",
            };
            self.metrics
                .reconcile_actions
                .get_or_create(&ActionLabels {
                    action: action.into(),
                })
                .inc();
        }
        Ok(())
    }

    /// Start a handshake to every client whose transport data arrives here
    /// without a working session (see dataplane/react.rs), and, as the sole
    /// survivor of a two-gateway cluster, to the lost gateway's clients.
    async fn react(&mut self) {
        let now = Instant::now();
        // Forget peers that have been quiet for a while (their hold-off
        // starts again from REACT_HOLDOFF).
        self.react_last
            .retain(|_, k| now.duration_since(k.at) < REACT_FORGET);
        let mut kicks: Vec<(WgKey, PeerConfig, SocketAddr, &'static str)> = Vec::new();
        // Listing the sets costs about 30 ms per 1,000 active clients (nft
        // formats every element): keep it to a tenth of the time, so a
        // gateway with 10,000 clients reads them every ~3 s, not 10 times a
        // second.
        if self.cfg.react && self.net.is_some() && now >= self.react_next_at {
            let read = react::read(crate::dataplane::net::NFT_TABLE).await;
            self.react_next_at = now + REACT_INTERVAL.max(now.elapsed() * REACT_DUTY_INVERSE);
            match read {
                Ok(seen) => kicks.extend(
                    react::orphans(&seen, &self.react_index, now_ms())
                        .into_iter()
                        .map(|(k, c, s, why)| (k, c, s, why.as_str())),
                ),
                Err(e) => debug!(error = %e, "react: cannot read the nftables sets"),
            }
        }
        if self.cfg.kick {
            kicks.extend(self.takeover_kicks());
        }
        for (k, cfg, src, why) in kicks {
            self.start_handshake(now, k, cfg, src, why, "poll").await;
        }
    }

    /// React's event path: the first data packet of a source this gateway
    /// had not seen for a while (see dataplane/nflog.rs). A known client
    /// without a session here gets the handshake at once.
    async fn arrival(&mut self, src: SocketAddr) {
        let Some((k, cfg, hs)) = self.react_index.get(&src) else {
            return;
        };
        if react::live(*hs, now_ms()) {
            return; // a session here: the poll judges whether it is stale
        }
        let (k, cfg) = (*k, cfg.clone());
        self.start_handshake(Instant::now(), k, cfg, src, "no_session", "event")
            .await;
    }

    /// Flush whatever session state the device has for the peer, then
    /// re-add it with keepalive 1: the device sends a handshake initiation
    /// at once. The next read restores the keepalive. At most once per
    /// peer per hold-off.
    async fn start_handshake(
        &mut self,
        now: Instant,
        k: WgKey,
        mut cfg: PeerConfig,
        src: SocketAddr,
        why: &'static str,
        via: &'static str,
    ) {
        let strikes = match self.react_last.get(&k) {
            Some(prev) if now.duration_since(prev.at) < prev.holdoff() => return,
            // Again soon after the last one: escalate.
            Some(prev) if now.duration_since(prev.at) < prev.holdoff() * 4 => prev.strikes + 1,
            _ => 0,
        };
        self.react_last.insert(k, Kicked { at: now, strikes });
        cfg.endpoint = Some(src);
        cfg.persistent_keepalive = 1;
        match self
            .device
            .set(&[Action::RemovePeer(k), Action::AddPeer(cfg)])
            .await
        {
            Ok(()) => {
                // Until the next device read, count the handshake as done:
                // data without a session must not flush it again; if it did
                // not complete, the stall rule finds it.
                if let Some(e) = self.react_index.get_mut(&src) {
                    e.2 = now_ms();
                }
                if why == "takeover" {
                    self.metrics.takeover_kicks.inc();
                } else {
                    self.metrics
                        .react_kicks
                        .get_or_create(&crate::metrics::ReasonLabels { reason: why.into() })
                        .inc();
                }
                info!(peer = %k, endpoint = %src, reason = why, via, "handshake started to take the client over");
            }
            Err(e) => warn!(peer = %k, error = %e, "could not start a handshake"),
        }
    }

    /// Kick: in a two-gateway cluster whose other gateway has gone silent,
    /// the clients it held recently (the endpoint map) are handshaken from
    /// here at once, at most KICK_PER_TICK per react tick (a paced start,
    /// not a storm), once per loss.
    fn takeover_kicks(&mut self) -> Vec<(WgKey, PeerConfig, SocketAddr, &'static str)> {
        let Some(lost) = self.node.sole_survivor_of(self.cfg.kick_after) else {
            self.kick_queue = None;
            return Vec::new();
        };
        if self.kick_queue.as_ref().map(|(n, _)| *n) != Some(lost) {
            let queue = self
                .node
                .view
                .read(|inv| takeover_candidates(inv, &self.react_index, lost, now_ms()));
            if !queue.is_empty() {
                info!(
                    lost,
                    clients = queue.len(),
                    "sole survivor: taking the lost gateway's clients over"
                );
            }
            self.kick_queue = Some((lost, queue));
        }
        let Some((_, queue)) = &mut self.kick_queue else {
            return Vec::new();
        };
        let n = queue.len().min(KICK_PER_TICK);
        queue
            .drain(..n)
            .filter_map(|(k, ep)| {
                let (_, cfg, _) = self.react_index.get(&ep)?;
                Some((k, cfg.clone(), ep, "takeover"))
            })
            .collect()
    }

    /// Flush the loser: a session here whose client the endpoint map shows
    /// handshaking later with another gateway is dropped (the peer is
    /// re-added without a session), so this device stops retrying the
    /// handshake for 90 s — each of those retries would cancel the client's
    /// own recovery timer. At most once per peer per REACT_HOLDOFF.
    async fn flush_losers(&mut self, observed: &Observed) {
        let losers = self
            .node
            .view
            .read(|inv| lost_sessions(inv, observed, self.node.id, now_ms()));
        let now = Instant::now();
        for k in losers {
            if self
                .flushed_last
                .get(&k)
                .is_some_and(|t| now.duration_since(*t) < REACT_HOLDOFF)
            {
                continue;
            }
            let Some(p) = observed.peers.get(&k) else {
                continue;
            };
            self.flushed_last.insert(k, now);
            match self
                .device
                .set(&[Action::RemovePeer(k), Action::AddPeer(p.config.clone())])
                .await
            {
                Ok(()) => {
                    self.metrics.loser_flushes.inc();
                    info!(peer = %k, "session moved to another gateway; dropped here");
                }
                Err(e) => warn!(peer = %k, error = %e, "could not drop a moved session"),
            }
        }
        self.flushed_last
            .retain(|_, t| now.duration_since(*t) < REACT_HOLDOFF * 4);
    }

    fn failed(&mut self, e: String) {
        self.metrics.reconcile_errors.inc();
        warn!(error = %e, retry_in = ?self.backoff, "dataplane pass failed");
        self.last_error = Some(e);
        self.believed = None;
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
    }

    fn observe_pass(&self, kind: &str, started: Instant) {
        self.metrics
            .reconcile_seconds
            .get_or_create(&PassLabels { kind: kind.into() })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Propose the coalesced endpoint observations, at most one batch per
    /// `endpoint-batch-interval` and one write in flight.
    fn flush_endpoints(&mut self) {
        if self.pending_endpoints.is_empty() || Instant::now() < self.endpoint_flush_at {
            return;
        }
        if self
            .endpoint_write
            .as_ref()
            .is_some_and(|h| !h.is_finished())
        {
            return;
        }
        let mut batch = Vec::new();
        while batch.len() < self.cfg.endpoint_batch_max {
            match self.pending_endpoints.pop_first() {
                Some(e) => batch.push(e),
                None => break,
            }
        }
        self.endpoint_flush_at = Instant::now() + self.cfg.endpoint_batch_interval;
        let n = batch.len() as u64;
        // Operators follow clients by these lines; a mass move (a failover
        // of thousands) is summarised instead of flooding the log.
        const LOGGED: usize = 20;
        for (k, r) in batch.iter().take(LOGGED) {
            info!(peer = %k, endpoint = %r.endpoint, handshake_ms = r.last_handshake_ms, "client endpoint changed (handshake here)");
        }
        if batch.len() > LOGGED {
            info!(
                more = batch.len() - LOGGED,
                "more client endpoints changed in this batch"
            );
        }
        let node = self.node.clone();
        let metrics = self.metrics.clone();
        self.endpoint_write = Some(tokio::spawn(async move {
            let req = Request {
                actor: format!("node-{}/endpoints", node.id),
                at_ms: now_ms(),
                request_id: None,
                cmd: Command::UpdateEndpoints(batch),
            };
            match node.write(req).await {
                Ok(w) => {
                    metrics.endpoint_updates.inc_by(n);
                    debug!(
                        index = w.index,
                        endpoints = n,
                        "endpoint observations replicated"
                    );
                }
                // Dropped, not retried: the next read observes them again.
                Err(e) => debug!(error = %e, "endpoint observations not replicated"),
            }
        }));
    }

    fn publish(&mut self) {
        let settings_key = self.node.view.read(|inv| inv.settings().server_public_key);
        let identity_ok = settings_key == Some(self.identity.public_key);
        let applied = self.node.view.applied();
        // A device a few commits behind while they are being applied is
        // normal; behind for longer than LAG_GRACE is not.
        let behind = self.believed.is_none() || self.believed_index < applied;
        let since = *self.behind_since.get_or_insert_with(Instant::now);
        if !behind {
            self.behind_since = None;
        }
        let current = !behind || (self.believed.is_some() && since.elapsed() < LAG_GRACE);
        let reason = if !identity_ok {
            match settings_key {
                None => "cluster setting server-public-key is not set".to_string(),
                Some(k) => format!(
                    "identity mismatch: this node's key is {}, the cluster's server-public-key is {k}",
                    self.identity.public_key
                ),
            }
        } else if let Some(e) = &self.last_error {
            e.clone()
        } else if !current {
            format!(
                "device at index {}, state at {applied}",
                self.believed_index
            )
        } else {
            String::new()
        };
        let healthy = reason.is_empty();
        self.metrics.dataplane_healthy.set(healthy as i64);
        self.metrics
            .dataplane_applied_index
            .set(self.believed_index as i64);
        let st = DataplaneStatus {
            backend: self.device.kind().into(),
            interface: self.ifname.clone(),
            public_key: Some(self.identity.public_key),
            identity_ok,
            healthy,
            reason,
            applied_index: self.believed_index,
            device_peers: self
                .believed
                .as_ref()
                .map(|b| b.peers.len() as u64)
                .unwrap_or(0),
        };
        self.status.send_if_modified(|s| {
            if *s != st {
                if s.healthy != st.healthy {
                    if st.healthy {
                        info!("dataplane healthy");
                    } else {
                        warn!(reason = %st.reason, "dataplane unhealthy");
                    }
                }
                *s = st;
                true
            } else {
                false
            }
        });
    }
}

pub use crate::dataplane::react::SESSION_LIFETIME_MS;

/// Peers with a live session on this device: a handshake within the
/// session lifetime. Pure.
pub fn fresh_sessions(observed: &Observed, now_ms: i64) -> BTreeSet<WgKey> {
    observed
        .peers
        .iter()
        .filter(|(_, p)| react::live(p.stats.last_handshake_ms(), now_ms))
        .map(|(k, _)| *k)
        .collect()
}

/// The peer an action is about.
fn action_peer(a: &Action) -> Option<WgKey> {
    match a {
        Action::SetDevice(_) => None,
        Action::AddPeer(c) => Some(c.public_key),
        Action::UpdatePeer { public_key, .. } => Some(*public_key),
        Action::RemovePeer(k) => Some(*k),
    }
}

/// Sessions this device holds whose client has since handshaken with
/// another gateway (a newer handshake in the endpoint map, observed by
/// someone else): the flow moved away. Pure.
pub fn lost_sessions(inv: &Inventory, observed: &Observed, node: u64, now_ms: i64) -> Vec<WgKey> {
    observed
        .peers
        .iter()
        .filter(|(k, p)| {
            let hs = p.stats.last_handshake_ms();
            react::live(hs, now_ms)
                && inv
                    .endpoint(k)
                    .is_some_and(|r| r.observed_by != node && r.last_handshake_ms > hs)
        })
        .map(|(k, _)| *k)
        .collect()
}

/// The clients a lost node held within the session lifetime, that this
/// device has no newer session with: (peer, endpoint), oldest handshake
/// last. Pure.
pub fn takeover_candidates(
    inv: &Inventory,
    index: &crate::dataplane::react::Index,
    lost: u64,
    now_ms: i64,
) -> Vec<(WgKey, SocketAddr)> {
    let mut v: Vec<(i64, WgKey, SocketAddr)> = inv
        .endpoints()
        .filter(|(_, r)| r.observed_by == lost && react::live(r.last_handshake_ms, now_ms))
        .filter(|(k, r)| match index.get(&r.endpoint) {
            Some((ik, _, hs)) => *ik == **k && *hs < r.last_handshake_ms,
            None => false,
        })
        .map(|(k, r)| (r.last_handshake_ms, *k, r.endpoint))
        .collect();
    v.sort_by_key(|x| std::cmp::Reverse(x.0));
    v.into_iter().map(|(_, k, e)| (k, e)).collect()
}

/// Endpoint observations worth replicating: the device saw the client at an
/// endpoint the map does not have, after the map's last handshake. Pure.
pub fn endpoint_proposals(
    inv: &Inventory,
    observed: &Observed,
    node: u64,
    now_ms: i64,
) -> Vec<(WgKey, EndpointRecord)> {
    let mut out = Vec::new();
    for (k, p) in &observed.peers {
        let Some(ep) = p.config.endpoint else {
            continue;
        };
        let hs_ms = p.stats.last_handshake_ms();
        if hs_ms == 0 || inv.peer(k).is_none() {
            continue;
        }
        // Nothing new: the map already has this endpoint from this node, or
        // a handshake at least as recent. A newer handshake at the same
        // endpoint seen by another node means the session moved here (the
        // router rehashed): that is news too, for routed-mode host routes.
        match inv.endpoint(k) {
            Some(r)
                if (r.endpoint == ep && r.observed_by == node) || r.last_handshake_ms >= hs_ms =>
            {
                continue
            }
            _ => {}
        }
        out.push((
            *k,
            EndpointRecord {
                endpoint: ep,
                last_handshake_ms: hs_ms,
                observed_by: node,
                observed_at_ms: now_ms,
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{ObservedPeer, PeerConfig, PeerStats};
    use crate::model::{Changes, NewPeer};

    fn inv_with(keys: &[WgKey], hint: Option<(WgKey, &str, i64)>) -> Inventory {
        let mut inv = Inventory::default();
        let mut ch = Changes::default();
        let mut run = |inv: &mut Inventory, cmd| {
            inv.apply(
                1,
                &Request {
                    actor: "t".into(),
                    at_ms: 0,
                    request_id: None,
                    cmd,
                },
                &mut ch,
            )
        };
        let peers = keys
            .iter()
            .enumerate()
            .map(|(i, k)| NewPeer {
                public_key: *k,
                preshared_key: None,
                allowed_ips: vec![format!("10.0.0.{}/32", i + 2).parse().unwrap()],
                addresses: vec![],
                user: format!("u{i}"),
                device: "d".into(),
                group: String::new(),
                labels: Default::default(),
                persistent_keepalive: None,
                expires_at_ms: None,
                pool: None,
            })
            .collect();
        run(&mut inv, Command::AddPeers(peers));
        if let Some((k, ep, hs)) = hint {
            run(
                &mut inv,
                Command::UpdateEndpoints(vec![(
                    k,
                    EndpointRecord {
                        endpoint: ep.parse().unwrap(),
                        last_handshake_ms: hs,
                        observed_by: 2,
                        observed_at_ms: hs + 500,
                    },
                )]),
            );
        }
        inv
    }

    fn seen(k: WgKey, ep: &str, hs_s: u64) -> (WgKey, ObservedPeer) {
        (
            k,
            ObservedPeer {
                config: PeerConfig {
                    public_key: k,
                    preshared_key: None,
                    endpoint: Some(ep.parse().unwrap()),
                    persistent_keepalive: 0,
                    allowed_ips: vec![],
                },
                stats: PeerStats {
                    last_handshake: (hs_s, 0),
                    ..Default::default()
                },
            },
        )
    }

    #[test]
    fn a_session_is_lost_when_another_node_saw_a_newer_handshake() {
        let (a, b) = (WgKey([1; 32]), WgKey([2; 32]));
        // Node 2 saw `a` handshake at t = 60 s.
        let inv = inv_with(&[a, b], Some((a, "192.0.2.1:1000", 60_000)));
        let mut obs = Observed::default();
        obs.peers.extend([
            seen(a, "192.0.2.1:1000", 50), // ours is older: the flow moved
            seen(b, "192.0.2.2:2000", 50), // no record elsewhere
        ]);
        assert_eq!(lost_sessions(&inv, &obs, 1, 100_000), [a]);
        // Node 2 itself holds it; a newer session here is not lost either.
        assert!(lost_sessions(&inv, &obs, 2, 100_000).is_empty());
        obs.peers.extend([seen(a, "192.0.2.1:1000", 70)]);
        assert!(lost_sessions(&inv, &obs, 1, 100_000).is_empty());
        // An expired session here is nothing to flush.
        obs.peers.extend([seen(a, "192.0.2.1:1000", 50)]);
        assert!(lost_sessions(&inv, &obs, 1, 50_000 + SESSION_LIFETIME_MS + 1).is_empty());
    }

    #[test]
    fn takeover_kicks_the_lost_nodes_recent_clients_only() {
        let a = WgKey([1; 32]);
        let inv = inv_with(&[a], Some((a, "192.0.2.1:1000", 60_000)));
        let index = |hs_s: u64| {
            let mut o = Observed::default();
            o.peers.extend([seen(a, "192.0.2.1:1000", hs_s)]);
            crate::dataplane::react::index(&o)
        };
        let ep: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        assert_eq!(takeover_candidates(&inv, &index(0), 2, 100_000), [(a, ep)]);
        // Another node was lost: not its client.
        assert!(takeover_candidates(&inv, &index(0), 3, 100_000).is_empty());
        // This device already has a newer session with the client.
        assert!(takeover_candidates(&inv, &index(70), 2, 100_000).is_empty());
        // The lost node's session is long expired: the client is idle.
        assert!(
            takeover_candidates(&inv, &index(0), 2, 60_000 + SESSION_LIFETIME_MS + 1).is_empty()
        );
    }

    #[test]
    fn endpoint_proposals_only_when_new_and_fresher() {
        let (a, b, c, stranger) = (
            WgKey([1; 32]),
            WgKey([2; 32]),
            WgKey([3; 32]),
            WgKey([9; 32]),
        );
        // The map knows `a` at 192.0.2.1:1000 since t = 50 s.
        let inv = inv_with(&[a, b, c], Some((a, "192.0.2.1:1000", 50_000)));
        let mut obs = Observed::default();
        obs.peers.extend([
            seen(a, "192.0.2.1:1000", 50), // same endpoint, same handshake: nothing to say
            seen(b, "192.0.2.2:2000", 70), // unknown to the map: propose
            seen(stranger, "192.0.2.9:9", 70), // not in the inventory: ignore
        ]);
        // `c` has an endpoint but never completed a handshake: ignore.
        obs.peers.insert(c, {
            let mut p = seen(c, "192.0.2.3:3000", 0).1;
            p.stats.last_handshake = (0, 0);
            p
        });
        let got = endpoint_proposals(&inv, &obs, 1, 99_000);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, b);
        assert_eq!(got[0].1.last_handshake_ms, 70_000);
        assert_eq!((got[0].1.observed_by, got[0].1.observed_at_ms), (1, 99_000));
        // `a` roamed: a newer handshake at a new endpoint is proposed, an
        // older one is not.
        obs.peers.extend([seen(a, "198.51.100.7:4000", 80)]);
        assert!(endpoint_proposals(&inv, &obs, 1, 99_000)
            .iter()
            .any(|(k, r)| *k == a && r.endpoint.port() == 4000));
        obs.peers.extend([seen(a, "198.51.100.7:4000", 40)]);
        assert!(!endpoint_proposals(&inv, &obs, 1, 99_000)
            .iter()
            .any(|(k, _)| *k == a));
        // The same endpoint with a newer handshake: node 2 saw it last, so
        // the session moved to node 1 (proposed); node 2 itself says nothing.
        obs.peers.extend([seen(a, "192.0.2.1:1000", 60)]);
        assert!(endpoint_proposals(&inv, &obs, 1, 99_000)
            .iter()
            .any(|(k, r)| *k == a && r.observed_by == 1));
        assert!(!endpoint_proposals(&inv, &obs, 2, 99_000)
            .iter()
            .any(|(k, _)| *k == a));
    }

    #[test]
    fn fresh_sessions_are_handshakes_within_reject_after_time() {
        let (a, b, c) = (WgKey([1; 32]), WgKey([2; 32]), WgKey([3; 32]));
        let mut obs = Observed::default();
        obs.peers.extend([
            seen(a, "192.0.2.1:1", 1_000),
            seen(b, "192.0.2.2:2", 1_000 - 181),
            seen(c, "192.0.2.3:3", 0),
        ]);
        let s = fresh_sessions(&obs, 1_000_000);
        assert_eq!(s.into_iter().collect::<Vec<_>>(), [a]);
    }
}
