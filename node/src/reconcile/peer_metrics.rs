//! Per-peer traffic and handshake gauges, labelled as operators name the
//! device (user, device, group); the series of peers gone from the device
//! are dropped, so the registry does not grow with churn.

use crate::dataplane::Observed;
use crate::metrics::{Metrics, PeerLabels};
use crate::model::{Inventory, WgKey};
use std::collections::BTreeMap;

#[derive(Default)]
pub struct PeerMetrics {
    /// Label sets exported, by peer (removed with the peer).
    exported: BTreeMap<WgKey, PeerLabels>,
}

impl PeerMetrics {
    pub fn update(&mut self, m: &Metrics, inv: &Inventory, observed: &Observed) {
        let labels: BTreeMap<WgKey, PeerLabels> = observed
            .peers
            .keys()
            .filter_map(|k| {
                inv.peer(k).map(|p| {
                    (
                        *k,
                        PeerLabels {
                            user: p.user.clone(),
                            device: p.device.clone(),
                            group: p.group.clone(),
                        },
                    )
                })
            })
            .collect();
        for (k, old) in &self.exported {
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
        self.exported = labels;
    }
}
