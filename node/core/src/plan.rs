//! `plan(desired, observed) -> Plan`: the pure decision of what to change on
//! a WireGuard device. An empty plan means converged. No IO, no clock.

use crate::dataplane::{
    clamp_private_key, Action, DeviceSettings, Observed, ObservedPeer, PeerConfig,
};
use crate::model::{EndpointRecord, Inventory, PeerState, WgKey};
use std::collections::BTreeMap;
use std::fmt;

/// One desired peer, plus where the replicated endpoint map last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredPeer {
    pub config: PeerConfig,
    /// Unix ms of the endpoint hint's observation (0 when there is none).
    pub endpoint_seen_ms: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub device: Option<DeviceSettings>,
    pub peers: BTreeMap<WgKey, DesiredPeer>,
}

/// What the device should get, from the applied inventory: active,
/// unexpired peers only (disabled, revoked and expired peers are removed).
pub fn desired_peers(inv: &Inventory, now_ms: i64) -> BTreeMap<WgKey, DesiredPeer> {
    inv.peers()
        .filter_map(|p| desired_peer(inv, &p.public_key, now_ms).map(|d| (p.public_key, d)))
        .collect()
}

/// One peer's desired device entry; None when it must not be on the device.
pub fn desired_peer(inv: &Inventory, key: &WgKey, now_ms: i64) -> Option<DesiredPeer> {
    let p = inv.peer(key)?;
    if p.state != PeerState::Active || p.expires_at_ms.is_some_and(|t| t <= now_ms) {
        return None;
    }
    let hint: Option<&EndpointRecord> = inv.endpoint(key);
    let mut allowed_ips: Vec<_> = p.allowed_ips.clone();
    allowed_ips.sort();
    Some(DesiredPeer {
        config: PeerConfig {
            public_key: p.public_key,
            preshared_key: p.preshared_key,
            endpoint: hint.map(|h| h.endpoint),
            // Gateways never keep clients alive: clients do.
            persistent_keepalive: 0,
            allowed_ips,
        },
        // When the client was last proven to be at that endpoint (its
        // handshake), not when someone read it.
        endpoint_seen_ms: hint.map(|h| h.last_handshake_ms).unwrap_or(0),
    })
}

/// An ordered list of actions; device settings first, removals before
/// additions (so a moved allowed IP is free before it is claimed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (mut dev, mut add, mut upd, mut rm) = (0, 0, 0, 0);
        for a in &self.actions {
            match a {
                Action::SetDevice(_) => dev += 1,
                Action::AddPeer(_) => add += 1,
                Action::UpdatePeer { .. } => upd += 1,
                Action::RemovePeer(_) => rm += 1,
            }
        }
        if self.is_empty() {
            return f.write_str("converged");
        }
        write!(f, "device {dev}, add {add}, update {upd}, remove {rm}")
    }
}

/// What the device holds after `actions` succeeded: the reconciler's belief
/// between reads, so a commit is planned without dumping the device.
pub fn apply_to(observed: &mut Observed, actions: &[Action]) {
    for a in actions {
        match a {
            Action::SetDevice(d) => {
                observed.private_key = Some(clamp_private_key(d.private_key));
                observed.listen_port = d.listen_port;
                observed.fwmark = d.fwmark;
            }
            Action::AddPeer(p) => {
                let stats = observed
                    .peers
                    .remove(&p.public_key)
                    .map(|o| o.stats)
                    .unwrap_or_default();
                observed.peers.insert(
                    p.public_key,
                    ObservedPeer {
                        config: p.clone(),
                        stats,
                    },
                );
            }
            Action::UpdatePeer {
                public_key,
                preshared_key,
                endpoint,
                persistent_keepalive,
                allowed_ips,
            } => {
                if let Some(o) = observed.peers.get_mut(public_key) {
                    if let Some(psk) = preshared_key {
                        o.config.preshared_key = *psk;
                    }
                    if let Some(e) = endpoint {
                        o.config.endpoint = Some(*e);
                    }
                    if let Some(k) = persistent_keepalive {
                        o.config.persistent_keepalive = *k;
                    }
                    if let Some(ips) = allowed_ips {
                        o.config.allowed_ips = ips.clone();
                    }
                }
            }
            Action::RemovePeer(k) => {
                observed.peers.remove(k);
            }
        }
    }
}

pub fn plan(desired: &Desired, observed: &Observed) -> Plan {
    let mut actions = Vec::new();
    if let Some(d) = &desired.device {
        if observed.private_key != Some(clamp_private_key(d.private_key))
            || observed.listen_port != d.listen_port
            || observed.fwmark != d.fwmark
        {
            actions.push(Action::SetDevice(d.clone()));
        }
    }
    for k in observed.peers.keys() {
        if !desired.peers.contains_key(k) {
            actions.push(Action::RemovePeer(*k));
        }
    }
    for (k, want) in &desired.peers {
        let w = &want.config;
        let Some(have) = observed.peers.get(k) else {
            actions.push(Action::AddPeer(w.clone()));
            continue;
        };
        let h = &have.config;
        let last_handshake_ms = have.stats.last_handshake.0 as i64 * 1000;
        // The device's own observation wins unless the replicated one is
        // newer than the device's last handshake with the peer.
        let endpoint = match (w.endpoint, h.endpoint) {
            (Some(hint), current) if current != Some(hint) => {
                (current.is_none() || want.endpoint_seen_ms > last_handshake_ms).then_some(hint)
            }
            _ => None,
        };
        let preshared_key = (h.preshared_key != w.preshared_key).then_some(w.preshared_key);
        let persistent_keepalive =
            (h.persistent_keepalive != w.persistent_keepalive).then_some(w.persistent_keepalive);
        let allowed_ips = (h.allowed_ips != w.allowed_ips).then(|| w.allowed_ips.clone());
        if endpoint.is_some()
            || preshared_key.is_some()
            || persistent_keepalive.is_some()
            || allowed_ips.is_some()
        {
            actions.push(Action::UpdatePeer {
                public_key: *k,
                preshared_key,
                endpoint,
                persistent_keepalive,
                allowed_ips,
            });
        }
    }
    // Removals and allowed-IP changes before additions.
    actions.sort_by_key(|a| match a {
        Action::SetDevice(_) => 0,
        Action::RemovePeer(_) => 1,
        Action::UpdatePeer { .. } => 2,
        Action::AddPeer(_) => 3,
    });
    Plan { actions }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::PeerStats;

    fn k(b: u8) -> WgKey {
        WgKey([b; 32])
    }
    fn pc(b: u8, ips: &[&str]) -> PeerConfig {
        PeerConfig {
            public_key: k(b),
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: 0,
            allowed_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }
    fn desired(peers: Vec<PeerConfig>) -> Desired {
        Desired {
            device: None,
            peers: peers
                .into_iter()
                .map(|c| {
                    (
                        c.public_key,
                        DesiredPeer {
                            config: c,
                            endpoint_seen_ms: 0,
                        },
                    )
                })
                .collect(),
        }
    }
    fn observed(peers: Vec<PeerConfig>) -> Observed {
        Observed {
            peers: peers
                .into_iter()
                .map(|c| {
                    (
                        c.public_key,
                        ObservedPeer {
                            config: c,
                            stats: PeerStats::default(),
                        },
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn table() {
        let a = pc(1, &["10.0.0.2/32"]);
        let b = pc(2, &["10.0.0.3/32"]);
        let mut a_moved = a.clone();
        a_moved.allowed_ips = vec!["10.0.0.9/32".parse().unwrap()];
        let mut a_psk = a.clone();
        a_psk.preshared_key = Some(k(9));
        struct Case {
            name: &'static str,
            want: Desired,
            have: Observed,
            expect: Vec<Action>,
        }
        let cases = vec![
            Case {
                name: "converged",
                want: desired(vec![a.clone()]),
                have: observed(vec![a.clone()]),
                expect: vec![],
            },
            Case {
                name: "empty",
                want: desired(vec![]),
                have: observed(vec![]),
                expect: vec![],
            },
            Case {
                name: "add missing, remove extra (removal first)",
                want: desired(vec![a.clone()]),
                have: observed(vec![b.clone()]),
                expect: vec![Action::RemovePeer(k(2)), Action::AddPeer(a.clone())],
            },
            Case {
                name: "allowed IPs replaced only when changed",
                want: desired(vec![a_moved.clone(), b.clone()]),
                have: observed(vec![a.clone(), b.clone()]),
                expect: vec![Action::UpdatePeer {
                    public_key: k(1),
                    preshared_key: None,
                    endpoint: None,
                    persistent_keepalive: None,
                    allowed_ips: Some(a_moved.allowed_ips.clone()),
                }],
            },
            Case {
                name: "hand-edited preshared key reverted",
                want: desired(vec![a.clone()]),
                have: observed(vec![a_psk.clone()]),
                expect: vec![Action::UpdatePeer {
                    public_key: k(1),
                    preshared_key: Some(None),
                    endpoint: None,
                    persistent_keepalive: None,
                    allowed_ips: None,
                }],
            },
        ];
        for c in cases {
            assert_eq!(plan(&c.want, &c.have).actions, c.expect, "{}", c.name);
        }
    }

    #[test]
    fn endpoint_hint_only_when_fresher() {
        let mut want = desired(vec![pc(1, &["10.0.0.2/32"])]);
        let hint: std::net::SocketAddr = "192.0.2.7:4000".parse().unwrap();
        let dp = want.peers.get_mut(&k(1)).unwrap();
        dp.config.endpoint = Some(hint);
        dp.endpoint_seen_ms = 2_000_000;
        // Device has no endpoint: take the hint.
        let mut have = observed(vec![pc(1, &["10.0.0.2/32"])]);
        assert!(
            matches!(&plan(&want, &have).actions[..], [Action::UpdatePeer { endpoint: Some(e), .. }] if *e == hint)
        );
        // Device talked to the client after the hint was recorded: keep its own.
        let p = have.peers.get_mut(&k(1)).unwrap();
        p.config.endpoint = Some("198.51.100.1:5000".parse().unwrap());
        p.stats.last_handshake = (3_000, 0);
        assert!(plan(&want, &have).is_empty(), "{}", plan(&want, &have));
        // Hint newer than the device's last handshake: use it.
        have.peers.get_mut(&k(1)).unwrap().stats.last_handshake = (1_000, 0);
        let p = plan(&want, &have);
        assert_eq!(p.actions.len(), 1);
        // A moved client is not drift; a hand-edited allowed IP is.
        assert!(p.actions[0].endpoint_only());
        have.peers.get_mut(&k(1)).unwrap().config.allowed_ips =
            vec!["10.9.9.9/32".parse().unwrap()];
        assert!(!plan(&want, &have).actions[0].endpoint_only());
    }

    #[test]
    fn device_settings_reverted() {
        let dev = DeviceSettings {
            private_key: [5; 32],
            listen_port: 51820,
            fwmark: 0,
        };
        let want = Desired {
            device: Some(dev.clone()),
            peers: BTreeMap::new(),
        };
        let mut have = Observed {
            private_key: Some(clamp_private_key([5; 32])),
            listen_port: 51820,
            ..Default::default()
        };
        assert!(plan(&want, &have).is_empty());
        have.listen_port = 1234;
        assert_eq!(plan(&want, &have).actions, vec![Action::SetDevice(dev)]);
        assert_eq!(
            plan(&want, &have).to_string(),
            "device 1, add 0, update 0, remove 0"
        );
    }

    #[test]
    fn applying_a_plan_converges_the_belief() {
        let mut a2 = pc(1, &["10.0.0.8/32"]);
        a2.preshared_key = Some(k(7));
        let mut want = desired(vec![a2, pc(3, &["10.0.0.4/32"])]);
        want.device = Some(DeviceSettings {
            private_key: [1; 32],
            listen_port: 51820,
            fwmark: 0,
        });
        let mut have = observed(vec![pc(1, &["10.0.0.2/32"]), pc(2, &["10.0.0.3/32"])]);
        let p = plan(&want, &have);
        assert_eq!(p.actions.len(), 4, "{p}");
        apply_to(&mut have, &p.actions);
        assert!(plan(&want, &have).is_empty(), "{}", plan(&want, &have));
    }
}
