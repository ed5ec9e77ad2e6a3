//! React: the gateway that receives WireGuard transport data from a client
//! it has no session with starts a handshake to that client at once.
//!
//! After a failover the router sends a client's packets to a survivor that
//! has the peer (same key, same config) but not the session: WireGuard drops
//! them silently and the client only re-handshakes after 10 s + 5 s. The
//! node's nftables table counts every transport-data packet (message type 4)
//! into a dynamic set keyed by source address and port (updated in the
//! kernel at line rate); the node reads the set every 100 ms, and for a
//! source that is a known peer's endpoint with no live session here, it
//! flushes that peer and re-adds it with persistent keepalive 1 — which
//! makes the device send a handshake initiation immediately. The next
//! device read restores the configured keepalive (drift repair).

use super::{Observed, PeerConfig};
use crate::model::WgKey;
use std::collections::HashMap;
use std::net::SocketAddr;

/// The set the `inet anygate` table feeds (see `net::net_desired`).
pub const SET4: &str = "wg_data4";

/// Sources of transport data seen in the last couple of seconds, from
/// `nft -j list set inet anygate wg_data4`.
pub async fn sources() -> Result<Vec<SocketAddr>, String> {
    let out = tokio::process::Command::new("nft")
        .args(["-j", "list", "set", "inet", super::net::NFT_TABLE, SET4])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("nft -j: {e}"))?;
    let mut found = Vec::new();
    collect(&v, &mut found);
    Ok(found)
}

/// Every `{"concat": [ip, port]}` in nft's JSON, wherever it sits.
fn collect(v: &serde_json::Value, out: &mut Vec<SocketAddr>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(serde_json::Value::Array(c)) = m.get("concat") {
                if let (Some(ip), Some(port)) = (
                    c.first()
                        .and_then(|x| x.as_str())
                        .and_then(|s| s.parse().ok()),
                    c.get(1).and_then(|x| x.as_u64()),
                ) {
                    out.push(SocketAddr::new(ip, port as u16));
                    return;
                }
            }
            for x in m.values() {
                collect(x, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
        _ => {}
    }
}

/// What a device read tells react: endpoint -> (peer, its config, last
/// handshake in unix ms).
pub type Index = HashMap<SocketAddr, (WgKey, PeerConfig, i64)>;

pub fn index(observed: &Observed) -> Index {
    observed
        .peers
        .iter()
        .filter_map(|(k, p)| {
            let hs = p.stats.last_handshake_ms();
            p.config.endpoint.map(|e| (e, (*k, p.config.clone(), hs)))
        })
        .collect()
}

/// Peers to start a handshake with: a source sending transport data that
/// is a known peer's endpoint, with no session here (never, or older than
/// WireGuard's REJECT_AFTER_TIME). Pure.
pub fn orphans(
    sources: &[SocketAddr],
    index: &Index,
    now_ms: i64,
    session_lifetime_ms: i64,
) -> Vec<(WgKey, PeerConfig, SocketAddr)> {
    sources
        .iter()
        .filter_map(|s| {
            let (k, cfg, hs) = index.get(s)?;
            (*hs == 0 || now_ms - hs > session_lifetime_ms).then(|| (*k, cfg.clone(), *s))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{ObservedPeer, PeerStats};

    #[test]
    fn parses_nft_json_set_elements() {
        let j = serde_json::json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"set": {"family": "inet", "name": "wg_data4", "table": "anygate",
                "elem": [
                    {"elem": {"val": {"concat": ["10.80.1.2", 45268]}, "timeout": 2, "expires": 1}},
                    {"concat": ["10.80.2.2", 51000]}
                ]}}
        ]});
        let mut v = vec![];
        collect(&j, &mut v);
        assert_eq!(
            v,
            [
                "10.80.1.2:45268".parse::<SocketAddr>().unwrap(),
                "10.80.2.2:51000".parse().unwrap()
            ]
        );
    }

    #[test]
    fn only_known_endpoints_without_a_live_session() {
        let cfg = |k: u8, ep: &str| PeerConfig {
            public_key: WgKey([k; 32]),
            preshared_key: None,
            endpoint: Some(ep.parse().unwrap()),
            persistent_keepalive: 0,
            allowed_ips: vec![],
        };
        let mut o = Observed::default();
        for (k, ep, hs) in [
            (1, "192.0.2.1:1", 0u64),
            (2, "192.0.2.2:2", 990),
            (3, "192.0.2.3:3", 500),
        ] {
            o.peers.insert(
                WgKey([k; 32]),
                ObservedPeer {
                    config: cfg(k, ep),
                    stats: PeerStats {
                        last_handshake: (hs, 0),
                        ..Default::default()
                    },
                },
            );
        }
        let idx = index(&o);
        let srcs: Vec<SocketAddr> = ["192.0.2.1:1", "192.0.2.2:2", "192.0.2.3:3", "192.0.2.9:9"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let got: Vec<u8> = orphans(&srcs, &idx, 1_000_000, 180_000)
            .iter()
            .map(|(k, _, _)| k.0[0])
            .collect();
        // 1: never a session; 2: live (10 s old); 3: 500 s old, expired; 9: unknown.
        assert_eq!(got, [1, 3]);
    }
}
