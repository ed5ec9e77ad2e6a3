//! The endpoint map's pure rule: which device observations are news (the
//! node batches them into Raft writes, see its `endpoints` module).

use crate::dataplane::Observed;
use crate::model::{EndpointRecord, Inventory, WgKey};

/// Endpoint observations worth replicating: the device saw the client at an
/// endpoint the map does not have, after the map's last handshake. Pure.
pub fn proposals(
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
    use crate::failover::decide::tests::{inv_with, seen};

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
        let got = proposals(&inv, &obs, 1, 99_000);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, b);
        assert_eq!(got[0].1.last_handshake_ms, 70_000);
        assert_eq!((got[0].1.observed_by, got[0].1.observed_at_ms), (1, 99_000));
        // `a` roamed: a newer handshake at a new endpoint is proposed, an
        // older one is not.
        obs.peers.extend([seen(a, "198.51.100.7:4000", 80)]);
        assert!(proposals(&inv, &obs, 1, 99_000)
            .iter()
            .any(|(k, r)| *k == a && r.endpoint.port() == 4000));
        obs.peers.extend([seen(a, "198.51.100.7:4000", 40)]);
        assert!(!proposals(&inv, &obs, 1, 99_000)
            .iter()
            .any(|(k, _)| *k == a));
        // The same endpoint with a newer handshake: node 2 saw it last, so
        // the session moved to node 1 (proposed); node 2 itself says nothing.
        obs.peers.extend([seen(a, "192.0.2.1:1000", 60)]);
        assert!(proposals(&inv, &obs, 1, 99_000)
            .iter()
            .any(|(k, r)| *k == a && r.observed_by == 1));
        assert!(!proposals(&inv, &obs, 2, 99_000)
            .iter()
            .any(|(k, _)| *k == a));
    }
}
