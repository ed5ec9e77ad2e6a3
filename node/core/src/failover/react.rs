//! React: the gateway that receives WireGuard transport data from a client
//! it has no working session with starts a handshake to that client at once.
//!
//! After a failover (or a failback, or any ECMP rehash) the router sends a
//! client's packets to a gateway that has the peer (same key, same config)
//! but not the client's current session: WireGuard drops them silently and
//! the client only re-handshakes after 10 s + 5 s — or, held hostage by the
//! old gateway's retries, after up to 2 minutes.
//!
//! The node's nftables table (see `net::net_desired`) keeps three kinds of
//! dynamic sets, updated in the kernel at line rate, with per-element
//! expiry so that the age of the last packet can be read back:
//! - `wg_data4/6`: source address and port of every transport-data packet
//!   (WireGuard message type 4) arriving on the listen port;
//! - `wg_load4/6`: the same, only for packets that carry a payload (UDP
//!   length > 40: not a keepalive);
//! - `wg_in4/6`: the inner source address of every packet the device
//!   decrypted (arriving on the WireGuard interface).
//!
//! The first data packet of a source not in the data set (not seen for 2 s:
//! a client the router just moved here) is also logged to an NFLOG group;
//! the node acts on that event at once (`nflog.rs`). The node reads the
//! sets every 100 ms over nftables netlink (at most a tenth of the time).
//! A source that is a known peer's endpoint is an orphan when
//! - the device has no live session with the peer (never, or older than
//!   REJECT_AFTER_TIME) and transport data arrives from it, or
//! - payload keeps arriving from it for [`STALL_MS`] after the last packet
//!   the device decrypted from the peer: the device holds a session, but
//!   not the one the client uses (it was moved here by a rehash).
//!
//! For an orphan the node flushes the peer and re-adds it with persistent
//! keepalive 1, which makes the device send a handshake initiation at once;
//! the next device read restores the configured keepalive (drift repair).
//!
//! The sets see packets before WireGuard authenticates them, so anyone who
//! can send UDP from a client's address and port can put it there. Data
//! with no session here may start a handshake (that is all it does). A
//! stalled session is only flushed when something authenticated says the
//! client's session is elsewhere (`corroborated`: the endpoint map shows a
//! newer handshake with another gateway, or the session is one this node's
//! own kick assumed and no device read has confirmed): a spoofed payload
//! packet never tears down a session the client is using.

use crate::dataplane::{Observed, PeerConfig};
use crate::model::WgKey;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// WireGuard drops a session this long after its handshake (REJECT_AFTER_TIME).
pub const SESSION_LIFETIME_MS: i64 = 180_000;

/// A session with a handshake at `hs_ms` (0 = never) is live at `now_ms`.
pub fn live(hs_ms: i64, now_ms: i64) -> bool {
    hs_ms > 0 && now_ms - hs_ms <= SESSION_LIFETIME_MS
}

/// The NFLOG group the table logs new sources to (one per network
/// namespace; "AG").
pub const NFLOG_GROUP: u16 = 0x4147;

/// Set names, as the nftables table declares them.
pub const SET_DATA4: &str = "wg_data4";
pub const SET_DATA6: &str = "wg_data6";
pub const SET_LOAD4: &str = "wg_load4";
pub const SET_LOAD6: &str = "wg_load6";
pub const SET_IN4: &str = "wg_in4";
pub const SET_IN6: &str = "wg_in6";

/// Element lifetime of every react set (refreshed by each packet).
pub const SET_TIMEOUT_MS: u64 = 2_000;

/// Payload arriving this long after the last decrypted packet means the
/// device's session is not the client's.
pub const STALL_MS: u64 = 300;

/// What the sets say: the age in ms of the last packet per key.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Seen {
    pub data: HashMap<SocketAddr, u64>,
    pub load: HashMap<SocketAddr, u64>,
    pub inner: HashMap<IpAddr, u64>,
}

/// Why a peer was found orphaned (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Data from the client, no session here at all.
    NoSession,
    /// A session here, but the client's packets no longer decrypt with it.
    Stalled,
    /// Sole survivor: the lost gateway held the client's session.
    Takeover,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::NoSession => "no_session",
            Why::Stalled => "stalled",
            Why::Takeover => "takeover",
        }
    }
}

/// An `ipv4_addr` / `ipv6_addr` key: the address in network order. Pure.
pub fn addr_key(k: &[u8]) -> Option<IpAddr> {
    match k.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(k).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(k).ok()?)),
        _ => None,
    }
}

/// An `addr . inet_service` key: the address, then the port in network
/// order padded to a 4-byte register. Pure.
pub fn sock_key(k: &[u8]) -> Option<SocketAddr> {
    let (addr, port) = match k.len() {
        8 => (addr_key(&k[..4])?, &k[4..6]),
        20 => (addr_key(&k[..16])?, &k[16..18]),
        _ => return None,
    };
    Some(SocketAddr::new(
        addr,
        u16::from_be_bytes([port[0], port[1]]),
    ))
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

/// Age of the last packet decrypted from any of the peer's allowed IPs.
fn inner_age(seen: &Seen, cfg: &PeerConfig) -> Option<u64> {
    let mut best: Option<u64> = None;
    for net in &cfg.allowed_ips {
        let host = net.prefix_len() == net.max_prefix_len();
        let ages: Box<dyn Iterator<Item = u64>> = if host {
            Box::new(seen.inner.get(&net.addr()).copied().into_iter())
        } else {
            Box::new(
                seen.inner
                    .iter()
                    .filter(|(a, _)| net.contains(*a))
                    .map(|(_, age)| *age),
            )
        };
        for a in ages {
            best = Some(best.map_or(a, |b| b.min(a)));
        }
    }
    best
}

/// What one look at the sets found.
#[derive(Debug, Default)]
pub struct Found {
    /// Peers to start a handshake with.
    pub orphans: Vec<(WgKey, PeerConfig, SocketAddr, Why)>,
    /// Stalled-looking sessions kept: nothing authenticated says the client
    /// moved (unauthenticated payload alone, e.g. spoofed).
    pub spared: Vec<(WgKey, SocketAddr)>,
}

/// Peers to start a handshake with (see the module doc). `corroborated(peer,
/// hs)`: something authenticated says the client's session is no longer the
/// one this device made at `hs`. Pure.
pub fn orphans(
    seen: &Seen,
    index: &Index,
    now_ms: i64,
    corroborated: impl Fn(&WgKey, i64) -> bool,
) -> Found {
    let mut found = Found::default();
    let out = &mut found.orphans;
    for (src, (k, cfg, hs)) in index {
        if !live(*hs, now_ms) {
            if seen.data.contains_key(src) {
                out.push((*k, cfg.clone(), *src, Why::NoSession));
            }
            continue;
        }
        let Some(load_age) = seen.load.get(src) else {
            continue;
        };
        let stalled = match inner_age(seen, cfg) {
            None => true,
            Some(inner) => inner >= load_age + STALL_MS,
        };
        // A session younger than the stall window has not had the chance
        // to carry anything yet.
        if stalled && now_ms - hs > STALL_MS as i64 {
            if corroborated(k, *hs) {
                out.push((*k, cfg.clone(), *src, Why::Stalled));
            } else {
                found.spared.push((*k, *src));
            }
        }
    }
    found.orphans.sort_by_key(|(k, ..)| *k);
    found.spared.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{ObservedPeer, PeerStats};

    #[test]
    fn set_keys_as_the_kernel_stores_them() {
        // 10.80.1.2 . 45268 (0xb0d4), the port padded to 4 bytes.
        let k = [10, 80, 1, 2, 0xb0, 0xd4, 0, 0];
        assert_eq!(sock_key(&k), Some("10.80.1.2:45268".parse().unwrap()));
        let mut k6 = vec![0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        k6.extend([0xd1, 0x70, 0, 0]);
        assert_eq!(sock_key(&k6), Some("[fd00::2]:53616".parse().unwrap()));
        assert_eq!(
            addr_key(&[100, 64, 0, 2]),
            Some("100.64.0.2".parse().unwrap())
        );
        assert_eq!(sock_key(&[1, 2, 3]), None);
        assert_eq!(addr_key(&[1, 2, 3, 4, 5]), None);
    }

    fn peer(k: u8, hs_s: u64) -> (WgKey, ObservedPeer) {
        let cfg = PeerConfig {
            public_key: WgKey([k; 32]),
            preshared_key: None,
            endpoint: Some(format!("192.0.2.{k}:{k}").parse().unwrap()),
            persistent_keepalive: 0,
            allowed_ips: vec![format!("100.64.0.{k}/32").parse().unwrap()],
        };
        (
            WgKey([k; 32]),
            ObservedPeer {
                config: cfg,
                stats: PeerStats {
                    last_handshake: (hs_s, 0),
                    ..Default::default()
                },
            },
        )
    }

    fn found(seen: &Seen, o: &Observed) -> Vec<(u8, Why)> {
        orphans(seen, &index(o), 1_000_000, |_, _| true)
            .orphans
            .iter()
            .map(|(k, _, _, w)| (k.0[0], *w))
            .collect()
    }

    #[test]
    fn no_session_only_for_known_endpoints() {
        let mut o = Observed::default();
        o.peers.extend([peer(1, 0), peer(2, 990), peer(3, 500)]);
        let mut seen = Seen::default();
        for ep in ["192.0.2.1:1", "192.0.2.2:2", "192.0.2.3:3", "192.0.2.9:9"] {
            seen.data.insert(ep.parse().unwrap(), 50);
        }
        // 1: never a session; 2: live (10 s old), nothing in load; 3: 500 s
        // old, expired; 9: unknown.
        assert_eq!(found(&seen, &o), [(1, Why::NoSession), (3, Why::NoSession)]);
    }

    #[test]
    fn stalled_when_payload_outlives_decryption() {
        let mut o = Observed::default();
        o.peers
            .extend([peer(1, 990), peer(2, 990), peer(3, 990), peer(4, 990)]);
        let mut seen = Seen::default();
        let ep = |k: u8| format!("192.0.2.{k}:{k}").parse::<SocketAddr>().unwrap();
        let inner = |k: u8| format!("100.64.0.{k}").parse::<IpAddr>().unwrap();
        // 1: healthy, payload and decryption together.
        seen.load.insert(ep(1), 20);
        seen.inner.insert(inner(1), 21);
        // 2: payload 50 ms ago, nothing decrypted for 400 ms: stalled.
        seen.load.insert(ep(2), 50);
        seen.inner.insert(inner(2), 400);
        // 3: payload, never decrypted within the set's lifetime: stalled.
        seen.load.insert(ep(3), 10);
        // 4: decrypted 200 ms before the last payload: within the window.
        seen.load.insert(ep(4), 10);
        seen.inner.insert(inner(4), 210);
        assert_eq!(found(&seen, &o), [(2, Why::Stalled), (3, Why::Stalled)]);
        // A session younger than the window is left alone.
        let mut young = Observed::default();
        young.peers.extend([{
            let (k, mut p) = peer(3, 0);
            p.stats.last_handshake = (999, 900_000_000); // 0.1 s before now
            (k, p)
        }]);
        assert_eq!(found(&seen, &young), []);
    }

    #[test]
    fn a_stall_needs_corroboration_a_missing_session_does_not() {
        let mut o = Observed::default();
        o.peers.extend([peer(1, 0), peer(2, 990), peer(3, 990)]);
        let mut seen = Seen::default();
        let ep = |k: u8| format!("192.0.2.{k}:{k}").parse::<SocketAddr>().unwrap();
        // 1: no session, data arrives: a handshake, whatever is said.
        seen.data.insert(ep(1), 10);
        // 2 and 3: payload that never decrypts, e.g. spoofed.
        for k in [2, 3] {
            seen.data.insert(ep(k), 10);
            seen.load.insert(ep(k), 10);
        }
        // Only 3's move is corroborated (say, a newer handshake elsewhere).
        let f = orphans(&seen, &index(&o), 1_000_000, |k, hs| {
            assert_eq!(hs, 990_000, "the device's own handshake time");
            k.0[0] == 3
        });
        let got: Vec<_> = f.orphans.iter().map(|(k, .., w)| (k.0[0], *w)).collect();
        assert_eq!(got, [(1, Why::NoSession), (3, Why::Stalled)]);
        assert_eq!(f.spared, [(WgKey([2; 32]), ep(2))]);
    }
}
