//! The belief: what the device holds as far as this node knows, and the
//! Raft index it reflects. Commits are planned against it (no device dump
//! per write); device reads replace it.

use super::plan::apply_to;
use crate::dataplane::{Action, Observed};
use crate::store::ChangeSet;

#[derive(Default)]
pub struct Belief {
    /// None: unknown (startup, after a failure, a re-created device): read
    /// the device before planning anything against it.
    pub device: Option<Observed>,
    /// The Raft index whose state the device reflects.
    pub index: u64,
}

impl Belief {
    pub fn known(&self) -> bool {
        self.device.is_some()
    }

    /// The device took `actions` for the commits up to `index`.
    pub fn applied(&mut self, actions: &[Action], index: u64) {
        if let Some(d) = &mut self.device {
            apply_to(d, actions);
        }
        self.index = self.index.max(index);
    }

    pub fn forget(&mut self) {
        self.device = None;
    }

    /// A device read that started at belief index `since` is back. Peers
    /// that commits changed since then are taken from the belief (the read
    /// may predate them). None when the change history since `since` is
    /// gone or global: too much changed meanwhile, skip this read. Pure.
    pub fn merge_read(
        &self,
        mut read: Observed,
        since: u64,
        changes: impl FnOnce(u64) -> Option<ChangeSet>,
    ) -> Option<Observed> {
        let Some(b) = &self.device else {
            return Some(read);
        };
        if self.index <= since {
            return Some(read);
        }
        match changes(since) {
            Some(cs) if !cs.global => {
                for k in &cs.peers {
                    match b.peers.get(k) {
                        Some(p) => read.peers.insert(*k, p.clone()),
                        None => read.peers.remove(k),
                    };
                }
                Some(read)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{ObservedPeer, PeerConfig};
    use crate::model::WgKey;

    fn peer(b: u8, ka: u16) -> (WgKey, ObservedPeer) {
        let k = WgKey([b; 32]);
        (
            k,
            ObservedPeer {
                config: PeerConfig {
                    public_key: k,
                    preshared_key: None,
                    endpoint: None,
                    persistent_keepalive: ka,
                    allowed_ips: vec![],
                },
                stats: Default::default(),
            },
        )
    }

    #[test]
    fn a_read_that_raced_with_commits_keeps_the_committed_peers() {
        let (a, b, c) = (WgKey([1; 32]), WgKey([2; 32]), WgKey([3; 32]));
        let mut belief = Belief::default();
        let mut dev = Observed::default();
        dev.peers.extend([peer(1, 25), peer(3, 0)]);
        belief.device = Some(dev);
        belief.index = 10;
        // The read started at index 8 and saw the old `a`, `b` (removed at
        // index 9) and no `c` (added at 10).
        let mut read = Observed::default();
        read.peers.extend([peer(1, 0), peer(2, 0)]);
        let changes = |since| {
            assert_eq!(since, 8);
            let mut cs = ChangeSet::default();
            cs.peers.extend([a, b, c]);
            Some(cs)
        };
        let merged = belief.merge_read(read.clone(), 8, changes).unwrap();
        assert_eq!(merged.peers[&a].config.persistent_keepalive, 25);
        assert!(!merged.peers.contains_key(&b));
        assert!(merged.peers.contains_key(&c));
        // A global change meanwhile: skip the read.
        let global = |_| {
            Some(ChangeSet {
                global: true,
                ..Default::default()
            })
        };
        assert!(belief.merge_read(read.clone(), 8, global).is_none());
        // History gone: skip too.
        assert!(belief.merge_read(read.clone(), 8, |_| None).is_none());
        // Nothing committed since the read started: the read as it is.
        assert_eq!(belief.merge_read(read.clone(), 10, |_| None), Some(read));
    }
}
