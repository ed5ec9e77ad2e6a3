//! The UAPI text protocol (wireguard-go, boringtun): encoding `set`
//! requests and parsing `get` answers. Pure; fuzzed (node/fuzz).

use super::{Action, DataplaneError, Observed, ObservedPeer, PeerConfig, PeerStats};
use crate::model::WgKey;
use ipnet::IpNet;
use std::fmt::Write as _;

pub fn hex(k: &[u8; 32]) -> String {
    k.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The body of one `set=1` request for `actions` (without the final blank line).
pub fn encode_set(actions: &[Action]) -> String {
    let mut s = String::from("set=1\n");
    for a in actions {
        match a {
            Action::SetDevice(d) => {
                let _ = writeln!(s, "private_key={}", hex(&d.private_key));
                let _ = writeln!(s, "listen_port={}", d.listen_port);
                let _ = writeln!(s, "fwmark={}", d.fwmark);
            }
            Action::AddPeer(p) => {
                // remove + add: a fresh peer carries no stale session.
                let _ = writeln!(s, "public_key={}", hex(p.public_key.as_bytes()));
                let _ = writeln!(s, "remove=true");
                peer_lines(&mut s, p);
            }
            Action::UpdatePeer {
                public_key,
                preshared_key,
                endpoint,
                persistent_keepalive,
                allowed_ips,
            } => {
                let _ = writeln!(s, "public_key={}", hex(public_key.as_bytes()));
                let _ = writeln!(s, "update_only=true");
                if let Some(psk) = preshared_key {
                    let _ = writeln!(
                        s,
                        "preshared_key={}",
                        hex(psk.as_ref().map(|k| k.as_bytes()).unwrap_or(&[0; 32]))
                    );
                }
                if let Some(e) = endpoint {
                    let _ = writeln!(s, "endpoint={e}");
                }
                if let Some(k) = persistent_keepalive {
                    let _ = writeln!(s, "persistent_keepalive_interval={k}");
                }
                if let Some(ips) = allowed_ips {
                    let _ = writeln!(s, "replace_allowed_ips=true");
                    for ip in ips {
                        let _ = writeln!(s, "allowed_ip={ip}");
                    }
                }
            }
            Action::RemovePeer(k) => {
                let _ = writeln!(s, "public_key={}", hex(k.as_bytes()));
                let _ = writeln!(s, "remove=true");
            }
        }
    }
    s
}

fn peer_lines(s: &mut String, p: &PeerConfig) {
    let _ = writeln!(s, "public_key={}", hex(p.public_key.as_bytes()));
    if let Some(psk) = &p.preshared_key {
        let _ = writeln!(s, "preshared_key={}", hex(psk.as_bytes()));
    }
    if let Some(e) = p.endpoint {
        let _ = writeln!(s, "endpoint={e}");
    }
    let _ = writeln!(
        s,
        "persistent_keepalive_interval={}",
        p.persistent_keepalive
    );
    let _ = writeln!(s, "replace_allowed_ips=true");
    for ip in &p.allowed_ips {
        let _ = writeln!(s, "allowed_ip={ip}");
    }
}

/// Parse the answer to `get=1` (including its `errno=` line).
pub fn parse_get(text: &str) -> Result<Observed, DataplaneError> {
    let bad = |m: String| DataplaneError::Protocol(m);
    let mut obs = Observed::default();
    let mut cur: Option<ObservedPeer> = None;
    let mut errno = None;
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| bad(format!("line without '=': {line:?}")))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| bad(format!("{k}={v} is not a number")))
        };
        match k {
            "errno" => errno = Some(v.parse::<i32>().map_err(|_| bad(format!("errno={v}")))?),
            "private_key" => {
                let key = unhex(v).ok_or_else(|| bad("private_key is not 64 hex digits".into()))?;
                obs.private_key = (key != [0; 32]).then_some(key);
            }
            "listen_port" => obs.listen_port = num(v)? as u16,
            "fwmark" => obs.fwmark = num(v)? as u32,
            "public_key" => {
                if let Some(p) = cur.take() {
                    finish(&mut obs, p);
                }
                let key = unhex(v)
                    .ok_or_else(|| bad(format!("public_key {v:?} is not 64 hex digits")))?;
                cur = Some(ObservedPeer {
                    config: PeerConfig {
                        public_key: WgKey(key),
                        preshared_key: None,
                        endpoint: None,
                        persistent_keepalive: 0,
                        allowed_ips: vec![],
                    },
                    stats: PeerStats::default(),
                });
            }
            _ => {
                let Some(p) = cur.as_mut() else {
                    // Unknown device-level keys are ignored (newer implementations).
                    continue;
                };
                match k {
                    "preshared_key" => {
                        let key = unhex(v).ok_or_else(|| bad(format!("preshared_key {v:?}")))?;
                        p.config.preshared_key = (key != [0; 32]).then_some(WgKey(key));
                    }
                    "endpoint" => {
                        p.config.endpoint =
                            Some(v.parse().map_err(|_| bad(format!("endpoint {v:?}")))?)
                    }
                    "persistent_keepalive_interval" => {
                        p.config.persistent_keepalive = num(v)? as u16
                    }
                    "allowed_ip" => p.config.allowed_ips.push(
                        v.parse::<IpNet>()
                            .map_err(|_| bad(format!("allowed_ip {v:?}")))?,
                    ),
                    "last_handshake_time_sec" => p.stats.last_handshake.0 = num(v)?,
                    "last_handshake_time_nsec" => p.stats.last_handshake.1 = num(v)? as u32,
                    "rx_bytes" => p.stats.rx_bytes = num(v)?,
                    "tx_bytes" => p.stats.tx_bytes = num(v)?,
                    _ => {} // protocol_version and future keys
                }
            }
        }
    }
    if let Some(p) = cur.take() {
        finish(&mut obs, p);
    }
    match errno {
        Some(0) => Ok(obs),
        Some(e) => Err(DataplaneError::Errno {
            errno: e,
            what: "get".into(),
        }),
        None => Err(bad("answer ended without errno".into())),
    }
}

fn finish(obs: &mut Observed, mut p: ObservedPeer) {
    p.config.allowed_ips.sort();
    obs.peers.insert(p.config.public_key, p);
}
