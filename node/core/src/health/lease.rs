//! The leader lease: how long since this node last heard from a Raft leader.
//! A node that has not heard one within the lease may hold a stale inventory
//! (a revoked key would still get in), so it withdraws; in a two-voter
//! cluster the same age tells the survivor its peer is gone (failover's
//! kick). One rule, used by both.

use std::time::Duration;

/// What the rule looks at, sampled from Raft's metrics at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaderFacts {
    pub is_leader: bool,
    pub voters: usize,
    /// Leader only: since a quorum last acknowledged it.
    pub since_quorum_ack: Option<Duration>,
    /// Follower: since a leader's AppendEntries was last accepted here, or
    /// since this node last led with a quorum's ack, whichever is later (a
    /// leader that steps down has heard a leader: itself).
    pub since_contact: Option<Duration>,
}

/// Time since this node last heard a leader: itself, when it leads and a
/// quorum acknowledged it (at once, when it is the only voter). None: never.
pub fn leader_age(f: &LeaderFacts) -> Option<Duration> {
    if f.is_leader {
        if f.voters <= 1 {
            Some(Duration::ZERO)
        } else {
            f.since_quorum_ack
        }
    } else {
        f.since_contact
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_age_table() {
        let s = Duration::from_secs;
        let rows = [
            (
                "sole voter leads: always fresh",
                LeaderFacts {
                    is_leader: true,
                    voters: 1,
                    since_quorum_ack: None,
                    since_contact: None,
                },
                Some(s(0)),
            ),
            (
                "leader: since the quorum ack",
                LeaderFacts {
                    is_leader: true,
                    voters: 3,
                    since_quorum_ack: Some(s(2)),
                    since_contact: Some(s(9)),
                },
                Some(s(2)),
            ),
            (
                "leader never acknowledged",
                LeaderFacts {
                    is_leader: true,
                    voters: 2,
                    since_quorum_ack: None,
                    since_contact: None,
                },
                None,
            ),
            (
                "follower: since the last AppendEntries",
                LeaderFacts {
                    is_leader: false,
                    voters: 3,
                    since_quorum_ack: Some(s(1)),
                    since_contact: Some(s(4)),
                },
                Some(s(4)),
            ),
            (
                "follower that never heard one",
                LeaderFacts {
                    is_leader: false,
                    voters: 3,
                    since_quorum_ack: None,
                    since_contact: None,
                },
                None,
            ),
        ];
        for (name, f, want) in rows {
            assert_eq!(leader_age(&f), want, "{name}");
        }
    }
}
