//! Prometheus metrics and the admin HTTP endpoints (/metrics, /ready, /live).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
        };
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
