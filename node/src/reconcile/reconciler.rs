//! The reconcile loop: the one task that writes the WireGuard device. It
//! plans every commit against the belief (no dump per write), reads the
//! device back every `observe-interval` (endpoints for the replicated map,
//! drift repair, the host check), and every `resync-interval` also
//! re-creates the device if it vanished and checks the nftables tables.
//! Between reads it checks the device is alive and carries out what
//! failover asks for. A failing pass is logged, counted and retried with
//! backoff; the loop only ends at shutdown.

use super::belief::Belief;
use super::peer_metrics::PeerMetrics;
use super::plan::{desired_peer, desired_peers, plan, Desired, Plan};
use crate::config::DataplaneConfig;
use crate::dataplane::backend::{Device, Reader};
use crate::dataplane::identity::Identity;
use crate::dataplane::{DataplaneError, DeviceSettings, Observed};
use crate::endpoints::Batcher;
use crate::failover::{decide::fresh_sessions, Failover, Kick};
use crate::health::{BgpStatus, DataplaneStatus};
use crate::host::net::net_desired;
use crate::host::{policy, Host};
use crate::metrics::{ActionLabels, Metrics, PassLabels};
use crate::model::{Inventory, WgKey};
use crate::raft::RaftNode;
use crate::time::now_ms;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

type ReadTask = tokio::task::JoinHandle<Result<Observed, DataplaneError>>;

/// Which pass a timing is for (the `reconcile_seconds` label).
#[derive(Clone, Copy)]
enum Pass {
    Commit,
    Observe,
    Resync,
}

impl Pass {
    fn read(full: bool) -> Pass {
        if full {
            Pass::Resync
        } else {
            Pass::Observe
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Pass::Commit => "commit",
            Pass::Observe => "observe",
            Pass::Resync => "resync",
        }
    }
}

pub struct Reconciler {
    cfg: DataplaneConfig,
    node: RaftNode,
    metrics: Metrics,
    identity: Identity,
    device: Device,
    /// Routes, NAT and policy tables (None: routes not managed).
    host: Option<Host>,
    failover: Failover,
    endpoints: Batcher,
    peer_metrics: PeerMetrics,
    /// The interface name in use (node override or cluster setting).
    ifname: String,
    belief: Belief,
    last_error: Option<String>,
    backoff: Duration,
    retry_at: Instant,
    status: watch::Sender<DataplaneStatus>,
    /// Fresh sessions, updated after every device read.
    sessions: watch::Sender<Arc<BTreeSet<WgKey>>>,
    /// Since when the device has been behind the applied state.
    behind_since: Option<Instant>,
    read_started: Option<Instant>,
    reader: Option<Reader>,
    /// No periodic read before this (duty-cycle bound).
    next_read_at: Instant,
    /// The access-policy table wanted, as of an applied index.
    wanted_policy: Option<(u64, policy::Wanted)>,
}

/// A device read (plus processing it) takes at most 1/8 of the time.
const READ_DUTY_INVERSE: u32 = 8;

/// How long the device may trail the applied state before the node calls
/// itself unhealthy.
const LAG_GRACE: Duration = Duration::from_secs(2);

/// How often the device's liveness is checked between full reads.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(100);

impl Reconciler {
    pub fn new(
        cfg: DataplaneConfig,
        node: RaftNode,
        metrics: Metrics,
        identity: Identity,
        device: Device,
        status: watch::Sender<DataplaneStatus>,
        bgp: watch::Receiver<BgpStatus>,
    ) -> Reconciler {
        let host = if cfg.manage_routes {
            match Host::new(metrics.clone()) {
                Ok(h) => Some(h),
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
            failover: Failover::new(&cfg, host.is_some(), node.clone(), metrics.clone(), bgp),
            endpoints: Batcher::new(
                node.clone(),
                metrics.clone(),
                cfg.endpoint_batch_max,
                cfg.endpoint_batch_interval,
            ),
            peer_metrics: PeerMetrics::default(),
            cfg,
            node,
            metrics,
            identity,
            device,
            host,
            ifname,
            belief: Belief::default(),
            last_error: None,
            backoff: Duration::from_millis(100),
            retry_at: Instant::now(),
            status,
            sessions: watch::channel(Arc::new(BTreeSet::new())).0,
            behind_since: None,
            read_started: None,
            reader: None,
            next_read_at: Instant::now(),
            wanted_policy: None,
        }
    }

    /// Follow the sessions this device holds (for routed-mode host routes).
    pub fn sessions(&self) -> crate::health::SessionsRx {
        self.sessions.subscribe()
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let (backend, supervised) = self.device.backend();
        info!(backend = backend.as_str(), supervised, ifname = %self.ifname, public_key = %self.identity.public_key, "dataplane starting");
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
        let mut react = tokio::time::interval(crate::failover::REACT_INTERVAL);
        react.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // React's event path (NFLOG); without it the poll alone reacts.
        let mut arrivals = None;
        if self.failover.reacts() {
            let (tx, rx) = tokio::sync::mpsc::channel(4096);
            match crate::failover::nflog::listen(tx) {
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
                _ = retry, if !self.belief.known() => self.sync(true).await,
                r = async { (&mut reading.as_mut().expect("guarded").0).await }, if reading.is_some() => {
                    let (_, since, full) = reading.take().expect("guarded");
                    let started = Instant::now();
                    let read_took = self.read_started.map(|t| t.elapsed()).unwrap_or_default();
                    match r {
                        Ok(Ok(observed)) => self.observed(observed, since, full).await,
                        Ok(Err(e)) => self.failed(format!("reading {}: {e}", self.ifname)),
                        Err(e) => self.failed(format!("device read task: {e}")),
                    }
                    self.observe_pass(Pass::read(full), started);
                    // Keep reading the device to a bounded share of the
                    // time: a big device (a 60k-peer dump takes hundreds of
                    // ms) is read less often than observe-interval.
                    self.next_read_at = Instant::now() + (read_took + started.elapsed()) * READ_DUTY_INVERSE;
                    self.endpoints.flush();
                    self.publish();
                }
                // The tick is always consumed: a guard on next_read_at here
                // would leave nothing to wake the loop when it passes.
                _ = observe.tick(), if reading.is_none() => {
                    if Instant::now() >= self.next_read_at {
                        reading = self.start_read(false).await;
                    }
                }
                _ = liveness.tick(), if self.belief.known() => {
                    if let Err(e) = self.device.alive() {
                        self.failed(format!("device not alive: {e}"));
                        self.publish();
                    }
                }
                _ = react.tick(), if self.failover.active() && self.belief.known() => {
                    for k in self.failover.poll().await {
                        self.kick(k).await;
                    }
                }
                r = async { arrivals.as_mut().expect("guarded").recv().await }, if arrivals.is_some() => {
                    match r {
                        Some(src) if self.belief.known() => self.arrival(src).await,
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
        let Some(believed) = &self.belief.device else {
            return; // a full sync is pending (retry timer)
        };
        let started = Instant::now();
        let changes = self.node.view.changes_since(self.belief.index);
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
                let touched: Vec<WgKey> = p.actions.iter().filter_map(|a| a.peer()).collect();
                if let Some(b) = &self.belief.device {
                    self.failover.unlearn(b, &touched);
                }
                self.belief.applied(&p.actions, index);
                if let Some(b) = &self.belief.device {
                    self.failover.relearn(b, &touched);
                }
                if !p.is_empty() {
                    debug!(index, plan = %p, "applied commit");
                }
                if let (Some(net), Some(host)) = (net, &mut self.host) {
                    host.reconcile(&net, false).await;
                }
                if touches_policy || !p.is_empty() {
                    self.sync_policy(false).await;
                }
                self.last_error = None;
            }
            Err(e) => self.failed(format!("applying commit {index}: {e}")),
        }
        self.observe_pass(Pass::Commit, started);
        self.publish();
    }

    /// Start reading the device in the background, so commits are applied
    /// meanwhile (a dump of a big device takes a while). Without a belief
    /// (startup, after a failure) sync in line instead.
    async fn start_read(&mut self, full: bool) -> Option<(ReadTask, u64, bool)> {
        if !self.belief.known() {
            self.sync(true).await;
            return None;
        }
        if full {
            if let Err(e) = self.ensure_device().await {
                self.failed(format!("device {}: {e}", self.ifname));
                self.publish();
                return None;
            }
            if !self.belief.known() {
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
            self.belief.index,
            full,
        ))
    }

    /// Create or restart the device if it is gone; a new device is empty,
    /// so the belief is dropped.
    async fn ensure_device(&mut self) -> Result<(), DataplaneError> {
        if let Some(host) = &self.host {
            if self.device.ensure(host.net(), &self.ifname).await? {
                self.belief.forget();
            }
        }
        Ok(())
    }

    /// Read the device in line, repair, check the host network.
    async fn sync(&mut self, full: bool) {
        if !self.belief.known() && Instant::now() < self.retry_at {
            return;
        }
        let started = Instant::now();
        let read = async {
            self.ensure_device()
                .await
                .map_err(|e| format!("device {}: {e}", self.ifname))?;
            self.device
                .get()
                .await
                .map_err(|e| format!("reading {}: {e}", self.ifname))
        };
        match read.await {
            Ok(observed) => {
                let since = self.belief.index;
                self.observed(observed, since, full).await
            }
            Err(e) => self.failed(e),
        }
        self.observe_pass(Pass::read(full), started);
        self.endpoints.flush();
        self.publish();
    }

    /// A device read is back. Peers changed by commits applied since the
    /// read started are taken from the belief (the read may predate them);
    /// everything else that differs from the replicated state is repaired.
    async fn observed(&mut self, read: Observed, since: u64, full: bool) {
        let had_belief = self.belief.known();
        let view = self.node.view.clone();
        let Some(mut observed) = self
            .belief
            .merge_read(read, since, |s| view.changes_since(s))
        else {
            return; // too much changed meanwhile: skip this round
        };
        let index = self.node.view.applied();
        let (p, net, proposals) = self.node.view.read(|inv| {
            let d = self.desired(inv, true);
            (
                plan(&d, &observed),
                net_desired(inv, &self.ifname),
                crate::endpoints::proposals(inv, &observed, self.node.id, now_ms()),
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
        let drift = p.actions.iter().filter(|a| !a.endpoint_only()).count();
        if had_belief && drift > 0 {
            warn!(plan = %p, "device differed from the replicated state (hand edit?); repaired");
            self.metrics.drift_repairs.inc_by(drift as u64);
        } else if had_belief && !p.is_empty() {
            debug!(plan = %p, "endpoints taken from the replicated endpoint map");
        } else if !p.is_empty() {
            info!(plan = %p, "device programmed");
        }
        super::plan::apply_to(&mut observed, &p.actions);
        if had_belief {
            for (k, cfg) in self.failover.losers(&observed) {
                let (remove, add) = (
                    crate::dataplane::Action::RemovePeer(k),
                    crate::dataplane::Action::AddPeer(cfg),
                );
                match self.device.set(&[remove, add]).await {
                    Ok(()) => {
                        self.metrics.loser_flushes.inc();
                        info!(peer = %k, "session moved to another gateway; dropped here");
                    }
                    Err(e) => warn!(peer = %k, error = %e, "could not drop a moved session"),
                }
            }
        }
        self.failover.learn(&observed);
        self.metrics.device_peers.set(observed.peers.len() as i64);
        let (pm, m) = (&mut self.peer_metrics, &self.metrics);
        self.node.view.read(|inv| pm.update(m, inv, &observed));
        self.belief.device = Some(observed);
        self.belief.index = index;
        self.last_error = None;
        self.backoff = Duration::from_millis(100);
        self.endpoints.offer(proposals);
        if let Some(host) = &mut self.host {
            host.reconcile(&net, full).await;
            // After the table check, so the sets exist on a first start.
            if !had_belief {
                self.failover.device_new().await;
            }
        }
        self.sync_policy(full).await;
        if let Some(host) = &mut self.host {
            host.refresh_counters();
        }
    }

    /// The access-policy table (see host/policy.rs). The wanted table is
    /// kept current from the change feed, so a commit touching k peers
    /// costs O(k log n) and writes only the changed set elements. It is
    /// rebuilt (one pass over the peers) at the resync, when policies,
    /// settings or pools changed, and when the feed no longer reaches back.
    /// A cluster without policies whose table is empty costs nothing.
    async fn sync_policy(&mut self, check: bool) {
        let Some(host) = &mut self.host else { return };
        let view = &self.node.view;
        if !check && host.policy_is_empty() && view.read(|inv| inv.policies().next().is_none()) {
            self.wanted_policy = None;
            return;
        }
        if !check {
            if let Some((index, wanted)) = &mut self.wanted_policy {
                if let Some(cs) = view.changes_since(*index).filter(|cs| !cs.global) {
                    let delta = view.read(|inv| wanted.update(inv, &cs.peers));
                    *index = cs.upto;
                    host.sync_policy_delta(&delta, wanted).await;
                    return;
                }
            }
        }
        // The applied index first: the inventory read after it is at least
        // that new, and replaying a change twice is harmless.
        let index = view.applied();
        let wanted = view.read(|inv| policy::Wanted::build(inv, &self.ifname));
        host.sync_policy(wanted.desired(), check).await;
        self.wanted_policy = Some((index, wanted));
    }

    async fn apply(&self, p: &Plan) -> Result<(), DataplaneError> {
        if p.is_empty() {
            return Ok(());
        }
        self.device.set(&p.actions).await?;
        for a in &p.actions {
            self.metrics
                .reconcile_actions
                .get_or_create(&ActionLabels {
                    action: a.kind().into(),
                })
                .inc();
        }
        Ok(())
    }

    /// React's event path (see failover/nflog.rs).
    async fn arrival(&mut self, src: SocketAddr) {
        if let Some(k) = self.failover.arrival(src) {
            self.kick(k).await;
        }
    }

    /// Carry out a failover kick, if the peer's hold-off allows it.
    async fn kick(&mut self, k: Kick) {
        if !self.failover.admit(&k, Instant::now()) {
            return;
        }
        match self.device.set(&k.actions()).await {
            Ok(()) => self.failover.kicked(&k),
            Err(e) => warn!(peer = %k.peer, error = %e, "could not start a handshake"),
        }
    }

    fn failed(&mut self, e: String) {
        self.metrics.reconcile_errors.inc();
        warn!(error = %e, retry_in = ?self.backoff, "dataplane pass failed");
        self.last_error = Some(e);
        self.belief.forget();
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
    }

    fn observe_pass(&self, pass: Pass, started: Instant) {
        self.metrics
            .reconcile_seconds
            .get_or_create(&PassLabels {
                kind: pass.as_str().into(),
            })
            .observe(started.elapsed().as_secs_f64());
    }

    fn publish(&mut self) {
        let settings_key = self.node.view.read(|inv| inv.settings().server_public_key);
        let identity_ok = settings_key == Some(self.identity.public_key);
        let applied = self.node.view.applied();
        // A device a few commits behind while they are being applied is
        // normal; behind for longer than LAG_GRACE is not.
        let behind = !self.belief.known() || self.belief.index < applied;
        let since = *self.behind_since.get_or_insert_with(Instant::now);
        if !behind {
            self.behind_since = None;
        }
        let current = !behind || (self.belief.known() && since.elapsed() < LAG_GRACE);
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
            format!("device at index {}, state at {applied}", self.belief.index)
        } else {
            String::new()
        };
        let healthy = reason.is_empty();
        self.metrics.dataplane_healthy.set(healthy as i64);
        self.metrics
            .dataplane_applied_index
            .set(self.belief.index as i64);
        let (backend, supervised) = self.device.backend();
        let st = DataplaneStatus {
            backend,
            supervised,
            interface: self.ifname.clone(),
            public_key: Some(self.identity.public_key),
            identity_ok,
            healthy,
            reason,
            applied_index: self.belief.index,
            device_peers: self
                .belief
                .device
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
