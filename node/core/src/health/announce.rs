//! The announcement decision: pure, so every rule is a table test.
//!
//! A node announces the anycast prefixes iff it can serve clients right now:
//! none of its long-lived tasks has stopped, not shutting down, not drained, its WireGuard device programmed and
//! current with the identity the cluster expects, a Raft leader heard within
//! the lease (a partitioned node's inventory may be stale: revoked peers
//! would still get in), and a BGP session established.

use std::fmt;
use std::time::Duration;

/// Everything the decision looks at, sampled at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inputs {
    /// A long-lived task that stopped or panicked (see controller.rs).
    pub failed_task: Option<String>,
    pub shutting_down: bool,
    pub drained: bool,
    /// False when the node runs without a dataplane (backend = none).
    pub dataplane_enabled: bool,
    /// The reconciler's verdict: device alive, programmed at the applied
    /// index (within its short grace), identity right.
    pub dataplane_healthy: bool,
    pub dataplane_reason: String,
    /// Time since this node last heard from a Raft leader (itself, when it
    /// is the leader and a quorum acknowledged it). None: never.
    pub leader_age: Option<Duration>,
    pub leader_lease: Duration,
    /// Voters in the cluster. With fewer than three, any single failure
    /// loses the quorum: a lease that ran out there does not withdraw (it
    /// would turn every single failure into a total outage); a node that
    /// never heard a leader still does.
    pub voters: usize,
    /// (device's applied index, the leader's commit when first heard) while
    /// the device has not reached it yet; None once it has.
    pub catching_up: Option<(u64, u64)>,
    pub sessions_established: usize,
}

/// Why the node is not announcing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Withdraw {
    /// Before the first decision.
    Starting,
    /// No `[bgp]` section in the node config.
    NotConfigured,
    GobgpdUnavailable,
    /// Announce would be right, but the settings name no anycast prefix.
    NoAnycastAddress,
    TaskFailed(String),
    ShuttingDown,
    Drained,
    NoDataplane,
    Dataplane(String),
    LeaderLease(Option<Duration>),
    CatchingUp(u64, u64),
    NoSession,
}

impl Withdraw {
    /// A short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Withdraw::Starting => "starting",
            Withdraw::NotConfigured => "not-configured",
            Withdraw::GobgpdUnavailable => "gobgpd-unavailable",
            Withdraw::NoAnycastAddress => "no-anycast-address",
            Withdraw::TaskFailed(_) => "task-failed",
            Withdraw::ShuttingDown => "shutting-down",
            Withdraw::Drained => "drained",
            Withdraw::NoDataplane => "no-dataplane",
            Withdraw::Dataplane(_) => "dataplane",
            Withdraw::LeaderLease(_) => "leader-lease",
            Withdraw::CatchingUp(..) => "catching-up",
            Withdraw::NoSession => "no-session",
        }
    }
}

impl fmt::Display for Withdraw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Withdraw::Starting => write!(f, "starting"),
            Withdraw::NotConfigured => write!(f, "no [bgp] section in the node config"),
            Withdraw::GobgpdUnavailable => write!(f, "gobgpd unavailable"),
            Withdraw::NoAnycastAddress => {
                write!(f, "the cluster settings have no anycast address")
            }
            Withdraw::TaskFailed(t) => write!(f, "{t}"),
            Withdraw::ShuttingDown => write!(f, "shutting down"),
            Withdraw::Drained => write!(f, "drained by an operator"),
            Withdraw::NoDataplane => write!(f, "no dataplane (backend = none)"),
            Withdraw::Dataplane(r) => write!(f, "dataplane: {r}"),
            Withdraw::LeaderLease(None) => write!(f, "no Raft leader heard since start"),
            Withdraw::LeaderLease(Some(a)) => {
                write!(f, "no Raft leader heard for {:.1} s", a.as_secs_f64())
            }
            Withdraw::CatchingUp(a, c) => write!(
                f,
                "catching up with the cluster: device at index {a} of {c}"
            ),
            Withdraw::NoSession => write!(f, "no BGP session established"),
        }
    }
}

/// `Ok(())` = announce; `Err(why)` = withdraw. The first failing rule wins,
/// in the order an operator would want to read it.
pub fn decide(i: &Inputs) -> Result<(), Withdraw> {
    if let Some(t) = &i.failed_task {
        return Err(Withdraw::TaskFailed(t.clone()));
    }
    if i.shutting_down {
        return Err(Withdraw::ShuttingDown);
    }
    if i.drained {
        return Err(Withdraw::Drained);
    }
    if !i.dataplane_enabled {
        return Err(Withdraw::NoDataplane);
    }
    if !i.dataplane_healthy {
        return Err(Withdraw::Dataplane(i.dataplane_reason.clone()));
    }
    match i.leader_age {
        Some(a) if a <= i.leader_lease => {}
        Some(_) if i.voters < 3 => {}
        a => return Err(Withdraw::LeaderLease(a)),
    }
    if let Some((a, c)) = i.catching_up {
        return Err(Withdraw::CatchingUp(a, c));
    }
    if i.sessions_established == 0 {
        return Err(Withdraw::NoSession);
    }
    Ok(())
}

/// When the decision can change by time alone (the lease running out).
pub fn lease_deadline(i: &Inputs) -> Option<Duration> {
    i.leader_age
        .filter(|a| *a <= i.leader_lease)
        .map(|a| i.leader_lease - a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Inputs {
        Inputs {
            failed_task: None,
            shutting_down: false,
            drained: false,
            dataplane_enabled: true,
            dataplane_healthy: true,
            dataplane_reason: String::new(),
            leader_age: Some(Duration::from_millis(100)),
            leader_lease: Duration::from_secs(10),
            voters: 3,
            catching_up: None,
            sessions_established: 1,
        }
    }

    #[test]
    fn decision_table() {
        type Edit = fn(&mut Inputs);
        let rows: Vec<(&str, Edit, Result<(), Withdraw>)> = vec![
            ("all good", |_| {}, Ok(())),
            (
                "lease exactly reached still announces",
                |i| i.leader_age = Some(Duration::from_secs(10)),
                Ok(()),
            ),
            (
                "shutting down",
                |i| i.shutting_down = true,
                Err(Withdraw::ShuttingDown),
            ),
            ("drained", |i| i.drained = true, Err(Withdraw::Drained)),
            (
                "no dataplane",
                |i| i.dataplane_enabled = false,
                Err(Withdraw::NoDataplane),
            ),
            (
                "device dead",
                |i| {
                    i.dataplane_healthy = false;
                    i.dataplane_reason = "uapi: connection refused".into()
                },
                Err(Withdraw::Dataplane("uapi: connection refused".into())),
            ),
            (
                "lease expired",
                |i| i.leader_age = Some(Duration::from_millis(10_001)),
                Err(Withdraw::LeaderLease(Some(Duration::from_millis(10_001)))),
            ),
            (
                "lease expired in a two-voter cluster: keeps serving",
                |i| {
                    i.voters = 2;
                    i.leader_age = Some(Duration::from_secs(60));
                },
                Ok(()),
            ),
            (
                "two voters, never heard a leader",
                |i| {
                    i.voters = 2;
                    i.leader_age = None;
                },
                Err(Withdraw::LeaderLease(None)),
            ),
            (
                "device behind the leader's commit when first heard",
                |i| i.catching_up = Some((3, 40)),
                Err(Withdraw::CatchingUp(3, 40)),
            ),
            (
                "never heard a leader",
                |i| i.leader_age = None,
                Err(Withdraw::LeaderLease(None)),
            ),
            (
                "no session",
                |i| i.sessions_established = 0,
                Err(Withdraw::NoSession),
            ),
            (
                "a stopped task outranks everything",
                |i| {
                    i.failed_task = Some("the dataplane task panicked".into());
                    i.shutting_down = true;
                },
                Err(Withdraw::TaskFailed("the dataplane task panicked".into())),
            ),
            (
                "shutdown outranks the rest",
                |i| {
                    i.shutting_down = true;
                    i.drained = true;
                    i.dataplane_healthy = false;
                    i.leader_age = None;
                    i.sessions_established = 0
                },
                Err(Withdraw::ShuttingDown),
            ),
            (
                "drain outranks an unhealthy device",
                |i| {
                    i.drained = true;
                    i.dataplane_healthy = false
                },
                Err(Withdraw::Drained),
            ),
            (
                "dataplane outranks the lease",
                |i| {
                    i.dataplane_healthy = false;
                    i.dataplane_reason = "x".into();
                    i.leader_age = Some(Duration::from_secs(60))
                },
                Err(Withdraw::Dataplane("x".into())),
            ),
        ];
        for (name, edit, want) in rows {
            let mut i = healthy();
            edit(&mut i);
            assert_eq!(decide(&i), want, "{name}");
        }
    }

    #[test]
    fn reasons_read_well_and_have_stable_kinds() {
        assert_eq!(
            Withdraw::LeaderLease(Some(Duration::from_millis(12_340))).to_string(),
            "no Raft leader heard for 12.3 s"
        );
        assert_eq!(Withdraw::Drained.kind(), "drained");
        assert_eq!(
            Withdraw::Dataplane("device at index 4, state at 9".into()).to_string(),
            "dataplane: device at index 4, state at 9"
        );
    }

    #[test]
    fn lease_deadline_is_the_time_left() {
        let mut i = healthy();
        i.leader_age = Some(Duration::from_secs(4));
        assert_eq!(lease_deadline(&i), Some(Duration::from_secs(6)));
        i.leader_age = Some(Duration::from_secs(11));
        assert_eq!(lease_deadline(&i), None);
    }
}
