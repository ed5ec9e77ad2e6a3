//! Failover decisions, pure: which sessions here are lost to another
//! gateway, which clients a sole survivor takes over, how long a kicked
//! peer is left alone. No IO, no clock: `now` comes in.

use super::react::{self, Index};
use crate::dataplane::Observed;
use crate::model::{Inventory, NodeId, WgKey};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

pub use super::react::SESSION_LIFETIME_MS;

/// How long a kicked peer is left alone (doubling for repeat offenders).
pub const HOLDOFF: Duration = Duration::from_secs(1);
/// A peer not kicked for this long starts again from HOLDOFF.
pub const FORGET: Duration = Duration::from_secs(120);

/// The last handshake react (or the kick) started to a peer. A peer kicked
/// again and again (a client whose packets never decrypt into its allowed
/// IPs, say) waits twice as long each time, up to a minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kicked {
    pub at: std::time::Instant,
    pub strikes: u32,
}

impl Kicked {
    pub fn holdoff(&self) -> Duration {
        (HOLDOFF * 2u32.pow(self.strikes.min(6))).min(Duration::from_secs(60))
    }

    /// May the peer last kicked as `prev` be kicked at `now`? Some(the new
    /// record) if so: a kick soon after the hold-off escalates.
    /// Still within the hold-off at `now`: the kick's handshake may be in
    /// flight, so nothing else should touch the peer's session.
    pub fn holding(&self, now: std::time::Instant) -> bool {
        now.duration_since(self.at) < self.holdoff()
    }

    pub fn next(prev: Option<&Kicked>, now: std::time::Instant) -> Option<Kicked> {
        let strikes = match prev {
            Some(p) if p.holding(now) => return None,
            Some(p) if now.duration_since(p.at) < p.holdoff() * 4 => p.strikes + 1,
            _ => 0,
        };
        Some(Kicked { at: now, strikes })
    }
}

/// In a two-voter cluster, the other voter when this node has not heard a
/// leader (itself included: no quorum ack) for longer than `after`, and
/// this node has been announced to the router for at least that long
/// (`announced_for`: None when not announced now). None in any other
/// cluster shape: with three or more gateways no single survivor can know
/// it is the router's choice; None when never heard at all (just started:
/// no basis to call anyone lost).
///
/// The announcement rule tells the survivor from the isolated one: both
/// lose Raft contact, but only the survivor kept its BGP session all along.
/// An isolated gateway that kicked would send handshakes that reach the
/// clients when it comes back, pull their sessions away from the gateway
/// the router still sends them to, and cost them a second outage.
pub fn sole_survivor_of(
    me: NodeId,
    voters: &[NodeId],
    leader_age: Option<Duration>,
    after: Duration,
    announced_for: Option<Duration>,
) -> Option<NodeId> {
    if voters.len() != 2 || !voters.contains(&me) {
        return None;
    }
    let other = *voters.iter().find(|v| **v != me)?;
    let age = leader_age?;
    (age > after && announced_for? >= age).then_some(other)
}

/// Peers with a live session on this device: a handshake within the
/// session lifetime. Pure.
pub fn fresh_sessions(observed: &Observed, now_ms: i64) -> BTreeSet<WgKey> {
    observed
        .peers
        .iter()
        .filter(|(_, p)| react::live(p.stats.last_handshake_ms(), now_ms))
        .map(|(k, _)| *k)
        .collect()
}

/// Sessions this device holds whose client has since handshaken with
/// another gateway (a newer handshake in the endpoint map, observed by
/// someone else): the flow moved away. Pure.
pub fn lost_sessions(inv: &Inventory, observed: &Observed, node: u64, now_ms: i64) -> Vec<WgKey> {
    observed
        .peers
        .iter()
        .filter(|(k, p)| {
            let hs = p.stats.last_handshake_ms();
            react::live(hs, now_ms) && moved_elsewhere(inv, k, hs, node)
        })
        .map(|(k, _)| *k)
        .collect()
}

/// The endpoint map shows the client handshaking with another node after
/// this node's session made at `hs_ms`: authenticated proof (a handshake)
/// that the client's session is no longer this one. Pure.
pub fn moved_elsewhere(inv: &Inventory, peer: &WgKey, hs_ms: i64, node: u64) -> bool {
    inv.endpoint(peer)
        .is_some_and(|r| r.observed_by != node && r.last_handshake_ms > hs_ms)
}

/// The clients a lost node held within the session lifetime, that this
/// device has no newer session with: (peer, endpoint), oldest handshake
/// last. Pure.
pub fn takeover_candidates(
    inv: &Inventory,
    index: &Index,
    lost: u64,
    now_ms: i64,
) -> Vec<(WgKey, SocketAddr)> {
    let mut v: Vec<(i64, WgKey, SocketAddr)> = inv
        .endpoints()
        .filter(|(_, r)| r.observed_by == lost && react::live(r.last_handshake_ms, now_ms))
        .filter(|(k, r)| match index.get(&r.endpoint) {
            Some((ik, _, hs)) => *ik == **k && *hs < r.last_handshake_ms,
            None => false,
        })
        .map(|(k, r)| (r.last_handshake_ms, *k, r.endpoint))
        .collect();
    v.sort_by_key(|x| std::cmp::Reverse(x.0));
    v.into_iter().map(|(_, k, e)| (k, e)).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dataplane::{ObservedPeer, PeerConfig, PeerStats};
    use crate::model::{Changes, Command, EndpointRecord, NewPeer, Request};

    pub(crate) fn inv_with(keys: &[WgKey], hint: Option<(WgKey, &str, i64)>) -> Inventory {
        let mut inv = Inventory::default();
        let mut ch = Changes::default();
        let mut run = |inv: &mut Inventory, cmd| {
            inv.apply(
                1,
                &Request {
                    actor: "t".into(),
                    at_ms: 0,
                    request_id: None,
                    cmd,
                },
                &mut ch,
            )
        };
        run(
            &mut inv,
            Command::SetSettings(crate::model::SettingsPatch {
                routable_prefixes: Some(vec!["10.0.0.0/16".parse().unwrap()]),
                ..Default::default()
            }),
        );
        let peers = keys
            .iter()
            .enumerate()
            .map(|(i, k)| NewPeer {
                public_key: *k,
                preshared_key: None,
                allowed_ips: vec![format!("10.0.0.{}/32", i + 2).parse().unwrap()],
                addresses: vec![],
                user: format!("u{i}"),
                device: "d".into(),
                group: String::new(),
                labels: Default::default(),
                persistent_keepalive: None,
                expires_at_ms: None,
                pool: None,
                state: None,
            })
            .collect();
        run(&mut inv, Command::AddPeers(peers));
        if let Some((k, ep, hs)) = hint {
            run(
                &mut inv,
                Command::UpdateEndpoints(vec![(
                    k,
                    EndpointRecord {
                        endpoint: ep.parse().unwrap(),
                        last_handshake_ms: hs,
                        observed_by: 2,
                        observed_at_ms: hs + 500,
                    },
                )]),
            );
        }
        inv
    }

    pub(crate) fn seen(k: WgKey, ep: &str, hs_s: u64) -> (WgKey, ObservedPeer) {
        (
            k,
            ObservedPeer {
                config: PeerConfig {
                    public_key: k,
                    preshared_key: None,
                    endpoint: Some(ep.parse().unwrap()),
                    persistent_keepalive: 0,
                    allowed_ips: vec![],
                },
                stats: PeerStats {
                    last_handshake: (hs_s, 0),
                    ..Default::default()
                },
            },
        )
    }

    #[test]
    fn a_session_is_lost_when_another_node_saw_a_newer_handshake() {
        let (a, b) = (WgKey([1; 32]), WgKey([2; 32]));
        // Node 2 saw `a` handshake at t = 60 s.
        let inv = inv_with(&[a, b], Some((a, "192.0.2.1:1000", 60_000)));
        let mut obs = Observed::default();
        obs.peers.extend([
            seen(a, "192.0.2.1:1000", 50), // ours is older: the flow moved
            seen(b, "192.0.2.2:2000", 50), // no record elsewhere
        ]);
        assert_eq!(lost_sessions(&inv, &obs, 1, 100_000), [a]);
        // Node 2 itself holds it; a newer session here is not lost either.
        assert!(lost_sessions(&inv, &obs, 2, 100_000).is_empty());
        obs.peers.extend([seen(a, "192.0.2.1:1000", 70)]);
        assert!(lost_sessions(&inv, &obs, 1, 100_000).is_empty());
        // An expired session here is nothing to flush.
        obs.peers.extend([seen(a, "192.0.2.1:1000", 50)]);
        assert!(lost_sessions(&inv, &obs, 1, 50_000 + SESSION_LIFETIME_MS + 1).is_empty());
    }

    #[test]
    fn takeover_kicks_the_lost_nodes_recent_clients_only() {
        let a = WgKey([1; 32]);
        let inv = inv_with(&[a], Some((a, "192.0.2.1:1000", 60_000)));
        let index = |hs_s: u64| {
            let mut o = Observed::default();
            o.peers.extend([seen(a, "192.0.2.1:1000", hs_s)]);
            super::super::react::index(&o)
        };
        let ep: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        assert_eq!(takeover_candidates(&inv, &index(0), 2, 100_000), [(a, ep)]);
        // Another node was lost: not its client.
        assert!(takeover_candidates(&inv, &index(0), 3, 100_000).is_empty());
        // This device already has a newer session with the client.
        assert!(takeover_candidates(&inv, &index(70), 2, 100_000).is_empty());
        // The lost node's session is long expired: the client is idle.
        assert!(
            takeover_candidates(&inv, &index(0), 2, 60_000 + SESSION_LIFETIME_MS + 1).is_empty()
        );
    }

    #[test]
    fn fresh_sessions_are_handshakes_within_reject_after_time() {
        let (a, b, c) = (WgKey([1; 32]), WgKey([2; 32]), WgKey([3; 32]));
        let mut obs = Observed::default();
        obs.peers.extend([
            seen(a, "192.0.2.1:1", 1_000),
            seen(b, "192.0.2.2:2", 1_000 - 181),
            seen(c, "192.0.2.3:3", 0),
        ]);
        let s = fresh_sessions(&obs, 1_000_000);
        assert_eq!(s.into_iter().collect::<Vec<_>>(), [a]);
    }

    #[test]
    fn a_kicked_peer_waits_and_repeat_kicks_escalate() {
        let t0 = std::time::Instant::now();
        let first = Kicked::next(None, t0).unwrap();
        assert_eq!(first.strikes, 0);
        assert_eq!(
            Kicked::next(Some(&first), t0 + Duration::from_millis(500)),
            None
        );
        let again = Kicked::next(Some(&first), t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(again.strikes, 1, "soon after the hold-off: escalate");
        assert_eq!(again.holdoff(), Duration::from_secs(2));
        let later = Kicked::next(Some(&first), t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(later.strikes, 0, "long after: start over");
        let worst = Kicked {
            at: t0,
            strikes: 40,
        };
        assert_eq!(worst.holdoff(), Duration::from_secs(60));
    }

    #[test]
    fn sole_survivor_only_in_two_voter_clusters() {
        let s = Duration::from_secs;
        let up = Some(s(3600));
        assert_eq!(sole_survivor_of(1, &[1, 2], Some(s(5)), s(3), up), Some(2));
        assert_eq!(
            sole_survivor_of(1, &[1, 2], Some(s(1)), s(3), up),
            None,
            "heard recently"
        );
        assert_eq!(
            sole_survivor_of(1, &[1, 2], None, s(3), up),
            None,
            "never heard"
        );
        assert_eq!(
            sole_survivor_of(1, &[1, 2, 3], Some(s(5)), s(3), up),
            None,
            "three voters"
        );
        assert_eq!(
            sole_survivor_of(3, &[1, 2], Some(s(5)), s(3), up),
            None,
            "not a voter"
        );
    }

    #[test]
    fn an_isolated_gateway_is_no_survivor() {
        let s = Duration::from_secs;
        // Lost its BGP session with the Raft contact: the router is not
        // sending it anyone.
        assert_eq!(sole_survivor_of(1, &[1, 2], Some(s(5)), s(3), None), None);
        // Announced again only since it came back (shorter than the loss):
        // it was cut off too, not the survivor.
        assert_eq!(
            sole_survivor_of(1, &[1, 2], Some(s(5)), s(3), Some(s(1))),
            None
        );
        // Announced through the whole loss: the router's only choice.
        assert_eq!(
            sole_survivor_of(1, &[1, 2], Some(s(5)), s(3), Some(s(5))),
            Some(2)
        );
    }
}
