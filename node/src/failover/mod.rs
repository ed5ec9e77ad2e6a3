//! Failover assists: getting a client's traffic flowing again within a
//! round trip when the router moves it to this gateway, instead of
//! WireGuard's 15 s (or 2 minutes, failing back).
//!
//! - `react.rs`: the react sets (nftables, read over netlink) and the pure
//!   rule that finds orphans (data from a client without a working session).
//! - `nflog.rs`: react's event path, the first packet of a new source.
//! - `decide.rs`: lost sessions, takeover candidates, hold-off (pure).
//! - [`Failover`] (here): the state between decisions — the endpoint index
//!   from the last device read, who was kicked when, the sole survivor's
//!   queue. It decides; it never writes the device. The reconciler is the
//!   one device writer: it asks [`Failover`] what to do and does it, so a
//!   kick and a commit can never interleave on the device.

pub use anygate_core::failover::decide;
pub mod nflog;
pub mod react;

use crate::config::DataplaneConfig;
use crate::dataplane::{Observed, PeerConfig};
use crate::health::{BgpState, BgpStatus};
use crate::metrics::{Metrics, ReasonLabels};
use crate::model::{NodeId, WgKey};
use crate::raft::RaftNode;
use crate::time::now_ms;
use decide::Kicked;
use react::Why;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// How often the react sets are read at most.
pub const REACT_INTERVAL: Duration = Duration::from_millis(100);
/// Reading the react sets takes at most 1/10 of the time.
const REACT_DUTY_INVERSE: u32 = 10;
/// Sole survivor: the lost gateway's clients are kicked at most this many
/// per react tick (500 handshakes a second).
const KICK_PER_TICK: usize = 50;

/// A handshake to start: flush the peer's session state and re-add it with
/// keepalive 1 towards `src`, so the device initiates at once.
#[derive(Clone, Debug)]
pub struct Kick {
    pub peer: WgKey,
    pub config: PeerConfig,
    pub src: SocketAddr,
    pub why: Why,
    /// "poll" (the set read) or "event" (NFLOG), for the log.
    pub via: &'static str,
}

impl Kick {
    /// The device actions that start the handshake.
    pub fn actions(&self) -> [crate::dataplane::Action; 2] {
        let mut cfg = self.config.clone();
        cfg.endpoint = Some(self.src);
        cfg.persistent_keepalive = 1;
        [
            crate::dataplane::Action::RemovePeer(self.peer),
            crate::dataplane::Action::AddPeer(cfg),
        ]
    }
}

pub struct Failover {
    react: bool,
    kick: bool,
    flush_loser: bool,
    kick_after: Duration,
    node: RaftNode,
    metrics: Metrics,
    /// Endpoint -> peer, from the last device read and the commits since.
    index: react::Index,
    /// When each peer was last kicked, and how often in a row.
    kicked: BTreeMap<WgKey, Kicked>,
    /// Peers whose index handshake time is a kick's assumption, not yet
    /// confirmed by a device read: if that handshake did not complete, the
    /// stall rule may retry it without other corroboration.
    assumed: BTreeSet<WgKey>,
    /// When a kept (spared) stalled session was last logged, per peer.
    spared_logged: BTreeMap<WgKey, Instant>,
    /// No set read before this (duty-cycle bound).
    next_read_at: Instant,
    /// When each peer's moved-away session was last dropped here.
    flushed: BTreeMap<WgKey, Instant>,
    /// Sole survivor: the lost node and its clients still to kick.
    queue: Option<(NodeId, Vec<(WgKey, SocketAddr)>)>,
    /// This node's announcement, and since when it has been announced
    /// without a break (None: not announced now).
    bgp: watch::Receiver<BgpStatus>,
    announced_since: Option<Instant>,
}

impl Failover {
    /// `sets`: the react sets exist (the node manages the host's nftables).
    pub fn new(
        cfg: &DataplaneConfig,
        sets: bool,
        node: RaftNode,
        metrics: Metrics,
        bgp: watch::Receiver<BgpStatus>,
    ) -> Failover {
        Failover {
            bgp,
            announced_since: None,
            react: cfg.react && sets,
            kick: cfg.kick,
            flush_loser: cfg.flush_loser,
            kick_after: cfg.kick_after,
            node,
            metrics,
            index: Default::default(),
            kicked: BTreeMap::new(),
            assumed: BTreeSet::new(),
            spared_logged: BTreeMap::new(),
            next_read_at: Instant::now(),
            flushed: BTreeMap::new(),
            queue: None,
        }
    }

    /// Polling is needed at all (react or kick on).
    pub fn active(&self) -> bool {
        self.react || self.kick
    }

    /// React's event path is wanted.
    pub fn reacts(&self) -> bool {
        self.react
    }

    /// The device was programmed without a belief (just created, or after
    /// a failure it may not have survived): forget what the react sets saw.
    pub async fn device_new(&mut self) {
        if !self.react {
            return;
        }
        match react::forget(crate::host::net::NFT_TABLE).await {
            Ok(()) => info!("react: sets emptied for a new device"),
            Err(e) => {
                warn!(error = %e, "react: cannot empty the sets; stale sources may cause early handshakes")
            }
        }
    }

    /// A full device read: the index starts over from it.
    pub fn learn(&mut self, observed: &Observed) {
        self.index = react::index(observed);
        self.assumed.clear();
    }

    /// Before a commit's actions are applied to the belief: drop the
    /// touched peers' old endpoints.
    pub fn unlearn(&mut self, belief: &Observed, touched: &[WgKey]) {
        for k in touched {
            if let Some(ep) = belief.peers.get(k).and_then(|o| o.config.endpoint) {
                self.index.remove(&ep);
            }
        }
    }

    /// After: learn the touched peers from the belief, so react knows peers
    /// (and endpoints) a commit added before the next device read — a
    /// gateway that just joined gets its clients' flows as soon as it
    /// announces.
    pub fn relearn(&mut self, belief: &Observed, touched: &[WgKey]) {
        for k in touched {
            self.assumed.remove(k);
            if let Some(o) = belief.peers.get(k) {
                if let Some(ep) = o.config.endpoint {
                    let hs = o.stats.last_handshake_ms();
                    self.index.insert(ep, (*k, o.config.clone(), hs));
                }
            }
        }
    }

    /// The periodic pass: orphans from the react sets (duty-cycle bound)
    /// and, as the sole survivor of a two-gateway cluster, the lost
    /// gateway's clients.
    pub async fn poll(&mut self) -> Vec<Kick> {
        let now = Instant::now();
        self.kicked
            .retain(|_, k| now.duration_since(k.at) < decide::FORGET);
        let mut kicks = Vec::new();
        if self.react && now >= self.next_read_at {
            let read = react::read(crate::host::net::NFT_TABLE).await;
            self.next_read_at = now + REACT_INTERVAL.max(now.elapsed() * REACT_DUTY_INVERSE);
            self.metrics
                .react_read_seconds
                .observe(now.elapsed().as_secs_f64());
            match read {
                Ok(seen) => {
                    let found = self.node.view.read(|inv| {
                        react::orphans(&seen, &self.index, now_ms(), |k, hs| {
                            self.assumed.contains(k)
                                || decide::moved_elsewhere(inv, k, hs, self.node.id)
                        })
                    });
                    self.spare(&found.spared);
                    kicks.extend(
                        found
                            .orphans
                            .into_iter()
                            .map(|(peer, config, src, why)| Kick {
                                peer,
                                config,
                                src,
                                why,
                                via: "poll",
                            }),
                    );
                }
                Err(e) => debug!(error = %e, "react: cannot read the nftables sets"),
            }
        }
        if self.kick {
            kicks.extend(self.takeover());
        }
        kicks
    }

    /// Stalled-looking sessions kept because nothing authenticated says the
    /// client moved: counted, and logged once per peer per hold-off.
    fn spare(&mut self, spared: &[(WgKey, SocketAddr)]) {
        let now = Instant::now();
        for (peer, src) in spared {
            self.metrics.react_spared.inc();
            if self
                .spared_logged
                .get(peer)
                .is_some_and(|t| now.duration_since(*t) < decide::FORGET)
            {
                continue;
            }
            self.spared_logged.insert(*peer, now);
            info!(%peer, endpoint = %src, "react: payload that does not decrypt, but no sign the client moved: session kept (spoofed or stray packets?)");
        }
        self.spared_logged
            .retain(|_, t| now.duration_since(*t) < decide::FORGET);
    }

    /// React's event path: the first data packet of a source this gateway
    /// had not seen for a while. A known client without a live session here
    /// is kicked at once; one with a session is the poll's to judge.
    pub fn arrival(&self, src: SocketAddr) -> Option<Kick> {
        let (peer, config, hs) = self.index.get(&src)?;
        if react::live(*hs, now_ms()) {
            return None;
        }
        Some(Kick {
            peer: *peer,
            config: config.clone(),
            src,
            why: Why::NoSession,
            via: "event",
        })
    }

    /// May this kick go ahead now (the peer's hold-off)? Records it if so.
    pub fn admit(&mut self, k: &Kick, now: Instant) -> bool {
        match Kicked::next(self.kicked.get(&k.peer), now) {
            Some(rec) => {
                self.kicked.insert(k.peer, rec);
                true
            }
            None => false,
        }
    }

    /// The device took the kick.
    pub fn kicked(&mut self, k: &Kick) {
        // Until the next device read, count the handshake as done: data
        // without a session must not flush it again; if it did not
        // complete, the stall rule finds it.
        if let Some(e) = self.index.get_mut(&k.src) {
            e.2 = now_ms();
            self.assumed.insert(k.peer);
        }
        if k.why == Why::Takeover {
            self.metrics.takeover_kicks.inc();
        } else {
            self.metrics
                .react_kicks
                .get_or_create(&ReasonLabels {
                    reason: k.why.as_str().into(),
                })
                .inc();
        }
        info!(peer = %k.peer, endpoint = %k.src, reason = k.why.as_str(), via = k.via, "handshake started to take the client over");
    }

    /// Kick: in a two-gateway cluster whose other gateway has gone silent,
    /// the clients it held recently (the endpoint map) are handshaken from
    /// here at once, at most KICK_PER_TICK per tick (a paced start, not a
    /// storm), once per loss.
    fn takeover(&mut self) -> Vec<Kick> {
        let age = crate::health::lease::leader_age(&self.node.leader_facts());
        // Without BGP (no [bgp]) the node is as reachable as it ever is.
        let reachable = matches!(
            self.bgp.borrow().state,
            BgpState::Announced | BgpState::GracefulShutdown | BgpState::Disabled
        );
        self.announced_since = match (reachable, self.announced_since) {
            (true, since) => Some(since.unwrap_or_else(Instant::now)),
            (false, _) => None,
        };
        let Some(lost) = decide::sole_survivor_of(
            self.node.id,
            &self.node.voters(),
            age,
            self.kick_after,
            self.announced_since.map(|t| t.elapsed()),
        ) else {
            self.queue = None;
            return Vec::new();
        };
        if self.queue.as_ref().map(|(n, _)| *n) != Some(lost) {
            let queue = self
                .node
                .view
                .read(|inv| decide::takeover_candidates(inv, &self.index, lost, now_ms()));
            if !queue.is_empty() {
                info!(
                    lost,
                    clients = queue.len(),
                    "sole survivor: taking the lost gateway's clients over"
                );
            }
            self.queue = Some((lost, queue));
        }
        let Some((_, queue)) = &mut self.queue else {
            return Vec::new();
        };
        let n = queue.len().min(KICK_PER_TICK);
        queue
            .drain(..n)
            .filter_map(|(k, ep)| {
                let (_, cfg, _) = self.index.get(&ep)?;
                Some(Kick {
                    peer: k,
                    config: cfg.clone(),
                    src: ep,
                    why: Why::Takeover,
                    via: "poll",
                })
            })
            .collect()
    }

    /// Flush the loser: sessions here whose client the endpoint map shows
    /// handshaking later with another gateway, to be dropped (the peer
    /// re-added without a session) so this device stops retrying the
    /// handshake for 90 s — each retry would cancel the client's own
    /// recovery timer. At most once per peer per hold-off.
    pub fn losers(&mut self, observed: &Observed) -> Vec<(WgKey, PeerConfig)> {
        if !self.flush_loser {
            return Vec::new();
        }
        let lost = self
            .node
            .view
            .read(|inv| decide::lost_sessions(inv, observed, self.node.id, now_ms()));
        let now = Instant::now();
        let mut out = Vec::new();
        for k in lost {
            if self
                .flushed
                .get(&k)
                .is_some_and(|t| now.duration_since(*t) < decide::HOLDOFF)
            {
                continue;
            }
            // A peer kicked within its hold-off has a handshake in flight
            // (the kick already dropped the old session): flushing it now
            // would throw that handshake away and cost the client the
            // hold-off (seen in a silent drill's failback: 1.25 s).
            if self.kicked.get(&k).is_some_and(|r| r.holding(now)) {
                continue;
            }
            if let Some(p) = observed.peers.get(&k) {
                self.flushed.insert(k, now);
                out.push((k, p.config.clone()));
            }
        }
        self.flushed
            .retain(|_, t| now.duration_since(*t) < decide::HOLDOFF * 4);
        out
    }
}
