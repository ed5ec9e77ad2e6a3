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
    /// Portal sign-ins by result (`ok`, or why they were refused).
    pub portal_signins: Family<ReasonLabels, Counter>,
    /// Devices enrolled at the portal (this node's requests).
    pub portal_enrollments: Counter,
    pub react_spared: Counter,
    pub loser_flushes: Counter,
    pub takeover_kicks: Counter,
    pub react_read_seconds: Histogram,
    pub denied: Family<DeniedLabels, Counter>,
    pub policy_rules: Gauge,
    pub bgp_session_up: Family<NeighborLabels, Gauge>,
    pub bgp_state: Family<StateLabels, Gauge>,
    pub raft_leader: Gauge,
    pub raft_follower_lag: Family<FollowerLabels, Gauge>,
    pub peer_rx_bytes: Family<PeerLabels, Gauge>,
    pub peer_tx_bytes: Family<PeerLabels, Gauge>,
    pub peer_last_handshake: Family<PeerLabels, Gauge>,
    pub policy_denied_packets: Gauge,
    pub rate_limited: Counter,
    pub tls_refused: Counter,
    pub tls_cert_expiry: Gauge,
    pub tls_reloads: Family<ResultLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NeighborLabels {
    pub neighbor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FollowerLabels {
    pub follower: String,
}

/// A client device, as operators name it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PeerLabels {
    pub user: String,
    pub device: String,
    pub group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeniedLabels {
    pub role: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
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
            portal_signins: Family::default(),
            portal_enrollments: Counter::default(),
            react_spared: Counter::default(),
            loser_flushes: Counter::default(),
            takeover_kicks: Counter::default(),
            react_read_seconds: pass_histogram(),
            denied: Family::default(),
            policy_rules: Gauge::default(),
            bgp_session_up: Family::default(),
            bgp_state: Family::default(),
            raft_leader: Gauge::default(),
            raft_follower_lag: Family::default(),
            peer_rx_bytes: Family::default(),
            peer_tx_bytes: Family::default(),
            peer_last_handshake: Family::default(),
            policy_denied_packets: Gauge::default(),
            rate_limited: Counter::default(),
            tls_refused: Counter::default(),
            tls_cert_expiry: Gauge::default(),
            tls_reloads: Family::default(),
        };
        r.register(
            "api_denied",
            "Calls refused because the caller's certificate role is below what the method needs",
            m.denied.clone(),
        );
        r.register(
            "bgp_session_up",
            "1 when the BGP session with this neighbor is established",
            m.bgp_session_up.clone(),
        );
        r.register(
            "bgp_state",
            "1 for the current announcement state (announced, graceful-shutdown, withdrawn)",
            m.bgp_state.clone(),
        );
        r.register(
            "raft_leader",
            "Node id of the Raft leader this node knows (0: none)",
            m.raft_leader.clone(),
        );
        r.register(
            "raft_follower_lag",
            "On the leader: log entries each follower is behind",
            m.raft_follower_lag.clone(),
        );
        r.register(
            "peer_rx_bytes",
            "Bytes received from a client device by this gateway's WireGuard (device counter)",
            m.peer_rx_bytes.clone(),
        );
        r.register(
            "peer_tx_bytes",
            "Bytes sent to a client device by this gateway's WireGuard (device counter)",
            m.peer_tx_bytes.clone(),
        );
        r.register(
            "peer_last_handshake_timestamp_seconds",
            "Unix time of the client device's last handshake with this gateway (0: none)",
            m.peer_last_handshake.clone(),
        );
        r.register(
            "policy_rules",
            "Access-policy rules programmed on this gateway (one per policy and address family)",
            m.policy_rules.clone(),
        );
        r.register(
            "policy_denied_packets",
            "Client packets dropped by the default deny (no policy allowed them), as of the last resync",
            m.policy_denied_packets.clone(),
        );
        r.register(
            "api_rate_limited",
            "Writes refused by the per-client write rate limit",
            m.rate_limited.clone(),
        );
        r.register(
            "tls_handshakes_refused",
            "Connections refused before or during the TLS handshake (over a connection limit, no certificate, unknown CA, expired, no role)",
            m.tls_refused.clone(),
        );
        r.register(
            "tls_certificate_expiry_timestamp_seconds",
            "Unix time at which this node's certificate expires",
            m.tls_cert_expiry.clone(),
        );
        r.register(
            "tls_reloads",
            "Re-reads of the TLS files after they changed or on SIGHUP, by result",
            m.tls_reloads.clone(),
        );
        r.register(
            "react_handshakes",
            "Handshakes started to clients whose data arrived here without a working session (failover react), by reason: no_session | stalled",
            m.react_kicks.clone(),
        );
        r.register(
            "react_spared",
            "Stalled-looking sessions kept: payload from the client's endpoint did not decrypt, but nothing authenticated (a newer handshake elsewhere) says the client moved, e.g. spoofed packets (each react read that saw one)",
            m.react_spared.clone(),
        );
        r.register(
            "loser_flushes",
            "Sessions dropped because the client's flow moved to another gateway (ends the old gateway's handshake retries)",
            m.loser_flushes.clone(),
        );
        r.register(
            "react_read_seconds",
            "Time to read the react sets (nftables netlink), per read",
            m.react_read_seconds.clone(),
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
            "portal_signins",
            "Portal sign-ins at this node by result (ok, or the reason they were refused)",
            m.portal_signins.clone(),
        );
        r.register(
            "portal_enrollments",
            "Devices enrolled through this node's portal",
            m.portal_enrollments.clone(),
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

    pub fn denied(&self, role: &str, method: &str) {
        self.denied
            .get_or_create(&DeniedLabels {
                role: role.into(),
                method: method.into(),
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

#[cfg(test)]
mod tests {
    /// Every metric deploy/grafana/anygate.json queries is one the node
    /// exports (so the dashboard cannot silently go blank after a rename).
    #[test]
    fn the_grafana_dashboard_uses_only_exported_metrics() {
        // Registered names (families without samples are not encoded yet).
        let source = include_str!("metrics.rs");
        let dash = include_str!("../../deploy/grafana/anygate.json");
        let v: serde_json::Value = serde_json::from_str(dash).expect("dashboard is JSON");
        assert!(v["panels"].as_array().is_some_and(|p| p.len() > 10));
        let mut names = std::collections::BTreeSet::new();
        let b = dash.as_bytes();
        let mut i = 0;
        while let Some(at) = dash[i..].find("anygate_") {
            let start = i + at;
            let mut end = start;
            while end < b.len()
                && (b[end].is_ascii_lowercase() || b[end].is_ascii_digit() || b[end] == b'_')
            {
                end += 1;
            }
            names.insert(&dash[start..end]);
            i = end;
        }
        assert!(names.len() > 20, "{names:?}");
        for n in names {
            let base = ["_bucket", "_total", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n);
            let registered = base
                .strip_prefix("anygate_")
                .is_some_and(|b| source.contains(&format!("\"{b}\",")));
            assert!(
                registered,
                "the dashboard queries {n}, which the node does not export"
            );
        }
    }
}
