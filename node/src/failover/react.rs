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
//! sets every 100 ms (at most a tenth of the time: listing 10,000 sources
//! takes ~0.3 s). A source that is a known peer's endpoint is an orphan when
//! - the device has no live session with the peer (never, or older than
//!   REJECT_AFTER_TIME) and transport data arrives from it, or
//! - payload keeps arriving from it for [`STALL_MS`] after the last packet
//!   the device decrypted from the peer: the device holds a session, but
//!   not the one the client uses (it was moved here by a rehash).
//!
//! For an orphan the node flushes the peer and re-adds it with persistent
//! keepalive 1, which makes the device send a handshake initiation at once;
//! the next device read restores the configured keepalive (drift repair).

use super::{Observed, PeerConfig};
use crate::model::WgKey;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// WireGuard drops a session this long after its handshake (REJECT_AFTER_TIME).
pub const SESSION_LIFETIME_MS: i64 = 180_000;

/// A session with a handshake at `hs_ms` (0 = never) is live at `now_ms`.
pub fn live(hs_ms: i64, now_ms: i64) -> bool {
    hs_ms > 0 && now_ms - hs_ms <= SESSION_LIFETIME_MS
}

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
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::NoSession => "no_session",
            Why::Stalled => "stalled",
        }
    }
}

/// Read the sets: one `nft list table inet anygate` (its text form, which
/// gives expiry in milliseconds; the JSON form rounds to seconds).
pub async fn read(table: &str) -> Result<Seen, String> {
    let out = tokio::process::Command::new("nft")
        .args(["list", "table", "inet", table])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(parse(&String::from_utf8_lossy(&out.stdout)))
}

/// One set element: an address, or an address and a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem {
    Addr(IpAddr),
    Sock(SocketAddr),
}

/// The react sets out of `nft list table` text. Pure.
pub fn parse(text: &str) -> Seen {
    let mut seen = Seen::default();
    for (name, timeout, elems) in sets(text) {
        for (e, expires) in elems {
            let age = timeout.saturating_sub(expires);
            match (name.as_str(), e) {
                (SET_DATA4 | SET_DATA6, Elem::Sock(s)) => {
                    seen.data.insert(s, age);
                }
                (SET_LOAD4 | SET_LOAD6, Elem::Sock(s)) => {
                    seen.load.insert(s, age);
                }
                (SET_IN4 | SET_IN6, Elem::Addr(a)) => {
                    seen.inner.insert(a, age);
                }
                _ => {}
            }
        }
    }
    seen
}

/// One listed set: name, timeout in ms, elements with their expiry in ms.
type ListedSet = (String, u64, Vec<(Elem, u64)>);

/// Every set in an `nft list table` listing.
fn sets(text: &str) -> Vec<ListedSet> {
    let mut out: Vec<ListedSet> = Vec::new();
    let mut elements: Option<String> = None;
    for line in text.lines() {
        let l = line.trim();
        if let Some(buf) = &mut elements {
            buf.push(' ');
            buf.push_str(l);
        } else if let Some(rest) = l.strip_prefix("set ") {
            let name = rest.trim_end_matches('{').trim().to_string();
            out.push((name, SET_TIMEOUT_MS, Vec::new()));
            continue;
        } else if let (Some(rest), Some(cur)) = (l.strip_prefix("timeout "), out.last_mut()) {
            if let Some(ms) = duration_ms(rest) {
                cur.1 = ms;
            }
            continue;
        } else if let Some(rest) = l.strip_prefix("elements = {") {
            elements = Some(rest.to_string());
        } else {
            continue;
        }
        let buf = elements.as_ref().expect("set above");
        if let Some(end) = buf.find('}') {
            let body = buf[..end].to_string();
            elements = None;
            if let Some(cur) = out.last_mut() {
                cur.2.extend(body.split(',').filter_map(element));
            }
        }
    }
    out
}

/// `10.0.0.1 . 4500 expires 1s688ms`, `fd00::1 expires 250ms`.
fn element(s: &str) -> Option<(Elem, u64)> {
    let t: Vec<&str> = s.split_whitespace().collect();
    let ip: IpAddr = t.first()?.parse().ok()?;
    let (elem, rest) = if t.get(1) == Some(&".") {
        let port: u16 = t.get(2)?.parse().ok()?;
        (Elem::Sock(SocketAddr::new(ip, port)), &t[3..])
    } else {
        (Elem::Addr(ip), &t[1..])
    };
    let expires = rest
        .iter()
        .position(|x| *x == "expires")
        .and_then(|i| rest.get(i + 1))
        .and_then(|d| duration_ms(d))
        .unwrap_or(0);
    Some((elem, expires))
}

/// nft's durations: `2s`, `1s688ms`, `1m30s`, `1d2h`, `500ms`.
fn duration_ms(s: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut num = String::new();
    let mut chars = s.trim().chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            'd' => 86_400_000,
            'h' => 3_600_000,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                1
            }
            'm' => 60_000,
            's' => 1_000,
            _ => return None,
        };
        total += n * unit;
        any = true;
    }
    (any && num.is_empty()).then_some(total)
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

/// Peers to start a handshake with (see the module doc). Pure.
pub fn orphans(
    seen: &Seen,
    index: &Index,
    now_ms: i64,
) -> Vec<(WgKey, PeerConfig, SocketAddr, Why)> {
    let mut out = Vec::new();
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
            out.push((*k, cfg.clone(), *src, Why::Stalled));
        }
    }
    out.sort_by_key(|(k, ..)| *k);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{ObservedPeer, PeerStats};

    const LISTING: &str = "table inet anygate {
	set wg_data4 {
		type ipv4_addr . inet_service
		size 65536
		flags dynamic,timeout
		timeout 2s
		elements = { 10.80.1.2 . 45268 expires 1s688ms,
			     10.80.2.2 . 51000 expires 250ms }
	}

	set wg_data6 {
		type ipv6_addr . inet_service
		size 65536
		flags dynamic,timeout
		timeout 2s
		elements = { fd00::2 . 53608 expires 1s900ms }
	}

	set wg_load4 {
		type ipv4_addr . inet_service
		size 65536
		flags dynamic,timeout
		timeout 2s
	}

	set wg_in4 {
		type ipv4_addr
		size 65536
		flags dynamic,timeout
		timeout 2s500ms
		elements = { 100.64.0.2 expires 2s188ms }
	}

	chain react {
		type filter hook input priority mangle; policy accept;
		udp dport 51820 @th,64,8 0x4 update @wg_data4 { ip saddr . udp sport }
	}
}
";

    #[test]
    fn parses_nft_listing_with_ages() {
        let s = parse(LISTING);
        let sock = |x: &str| x.parse::<SocketAddr>().unwrap();
        assert_eq!(s.data[&sock("10.80.1.2:45268")], 312);
        assert_eq!(s.data[&sock("10.80.2.2:51000")], 1750);
        assert_eq!(s.data[&sock("[fd00::2]:53608")], 100);
        assert!(s.load.is_empty());
        assert_eq!(s.inner[&"100.64.0.2".parse::<IpAddr>().unwrap()], 312);
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ms("2s"), Some(2000));
        assert_eq!(duration_ms("1s688ms"), Some(1688));
        assert_eq!(duration_ms("1m30s"), Some(90_000));
        assert_eq!(duration_ms("1d2h"), Some(93_600_000));
        assert_eq!(duration_ms("500ms"), Some(500));
        assert_eq!(duration_ms("5"), None);
        assert_eq!(duration_ms("x"), None);
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
        orphans(seen, &index(o), 1_000_000)
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
}
