//! Prometheus metrics and the admin HTTP endpoints (/metrics, /ready, /live).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub action: String,
    pub result: String,
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub writes: Family<WriteLabels, Counter>,
    pub term: Gauge,
    pub is_leader: Gauge,
    pub last_log_index: Gauge,
    pub applied_index: Gauge,
    pub peers: Gauge,
    pub members: Gauge,
    /// Seconds per reconcile pass (incremental or full).
    pub reconcile_seconds: Family<PassLabels, Histogram>,
    pub reconcile_actions: Family<ActionLabels, Counter>,
    pub drift_repairs: Counter,
    pub reconcile_errors: Counter,
    pub device_peers: Gauge,
    pub dataplane_healthy: Gauge,
    pub dataplane_applied_index: Gauge,
    pub endpoint_updates: Counter,
    pub route_repairs: Counter,
    pub bgp_announced: Gauge,
    pub bgp_transitions: Family<TransitionLabels, Counter>,
    pub bgp_sessions_established: Gauge,
    pub bgp_gobgpd_restarts: Counter,
    pub bgp_path_repairs: Counter,
    pub bgp_errors: Counter,
    pub react_kicks: Family<ReasonLabels, Counter>,
    pub loser_flushes: Counter,
    pub takeover_kicks: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    /// announce | withdraw
    pub to: String,
    /// healthy, or why not (health::Withdraw::kind)
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
}

fn pass_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("anygate");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            writes: Family::default(),
            term: Gauge::default(),
            is_leader: Gauge::default(),
            last_log_index: Gauge::default(),
            applied_index: Gauge::default(),
            peers: Gauge::default(),
            members: Gauge::default(),
            reconcile_seconds: Family::new_with_constructor(pass_histogram),
            reconcile_actions: Family::default(),
            drift_repairs: Counter::default(),
            reconcile_errors: Counter::default(),
            device_peers: Gauge::default(),
            dataplane_healthy: Gauge::default(),
            dataplane_applied_index: Gauge::default(),
            endpoint_updates: Counter::default(),
            route_repairs: Counter::default(),
            bgp_announced: Gauge::default(),
            bgp_transitions: Family::default(),
            bgp_sessions_established: Gauge::default(),
            bgp_gobgpd_restarts: Counter::default(),
            bgp_path_repairs: Counter::default(),
            bgp_errors: Counter::default(),
            react_kicks: Family::default(),
            loser_flushes: Counter::default(),
            takeover_kicks: Counter::default(),
        };
        r.register(
            "react_handshakes",
            "Handshakes started to clients whose data arrived here without a working session (failover react), by reason: no_session | stalled",
            m.react_kicks.clone(),
        );
        r.register(
            "loser_flushes",
            "Sessions dropped because the client's flow moved to another gateway (ends the old gateway's handshake retries)",
            m.loser_flushes.clone(),
        );
        r.register(
            "takeover_kicks",
            "Handshakes started to a lost gateway's recent clients by the sole survivor",
            m.takeover_kicks.clone(),
        );
        r.register(
            "bgp_announced",
            "1 while this node announces the anycast prefixes",
            m.bgp_announced.clone(),
        );
        r.register(
            "bgp_transitions",
            "Announcement decisions that changed, by direction and reason",
            m.bgp_transitions.clone(),
        );
        r.register(
            "bgp_sessions_established",
            "BGP sessions in state Established",
            m.bgp_sessions_established.clone(),
        );
        r.register(
            "bgp_gobgpd_restarts",
            "Times the supervised gobgpd was restarted",
            m.bgp_gobgpd_restarts.clone(),
        );
        r.register(
            "bgp_path_repairs",
            "Our paths found missing from gobgpd's RIB and re-added",
            m.bgp_path_repairs.clone(),
        );
        r.register(
            "bgp_errors",
            "Failed gobgpd API calls or connections (retried with backoff)",
            m.bgp_errors.clone(),
        );
        r.register(
            "writes",
            "Operator writes by action and result",
            m.writes.clone(),
        );
        r.register("raft_term", "Current Raft term", m.term.clone());
        r.register(
            "raft_is_leader",
            "1 when this node is the Raft leader",
            m.is_leader.clone(),
        );
        r.register(
            "raft_last_log_index",
            "Last log index on this node",
            m.last_log_index.clone(),
        );
        r.register(
            "raft_applied_index",
            "Last applied log index on this node",
            m.applied_index.clone(),
        );
        r.register("peers", "Peers in the inventory", m.peers.clone());
        r.register(
            "raft_members",
            "Nodes in the Raft membership",
            m.members.clone(),
        );
        r.register(
            "reconcile_seconds",
            "Duration of reconcile passes (kind: commit = incremental, sync = device read back)",
            m.reconcile_seconds.clone(),
        );
        r.register(
            "reconcile_actions",
            "Changes applied to the WireGuard device, by action",
            m.reconcile_actions.clone(),
        );
        r.register(
            "drift_repairs",
            "Device changes undone because the device differed from the replicated state",
            m.drift_repairs.clone(),
        );
        r.register(
            "reconcile_errors",
            "Failed reconcile passes (retried with backoff)",
            m.reconcile_errors.clone(),
        );
        r.register(
            "device_peers",
            "Peers on this node's WireGuard device",
            m.device_peers.clone(),
        );
        r.register(
            "dataplane_healthy",
            "1 when the device is programmed, current and its identity matches",
            m.dataplane_healthy.clone(),
        );
        r.register(
            "dataplane_applied_index",
            "Raft index whose state the device reflects",
            m.dataplane_applied_index.clone(),
        );
        r.register(
            "endpoint_updates",
            "Client endpoint observations proposed to the replicated endpoint map",
            m.endpoint_updates.clone(),
        );
        r.register(
            "route_repairs",
            "Host links, addresses and routes restored (e.g. after a link flap)",
            m.route_repairs.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    pub fn write_result(&self, action: &str, ok: bool) {
        self.writes
            .get_or_create(&WriteLabels {
                action: action.into(),
                result: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry)
            .expect("encode to String");
        s
    }
}
