//! Raft: type config, transport (client in `network`, server in `service`)
//! and [`RaftNode`], the one place that turns a `Request` into a committed,
//! applied `Response` (locally on the leader, forwarded from a follower) and
//! that provides linearizable read barriers.

pub mod network;
pub mod service;
pub use crate::store::types;

use crate::model::{ApplyError, NodeId, Request, Response};
use crate::store::StateView;
use anygate_proto::raft::v1::{ReadIndexRequest, TimeoutNowRequest};
use network::{decode, encode, Channels};
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use types::Raft;

/// How long a read barrier or a forwarded write may take.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
pub enum NodeError {
    /// No leader reachable from here; `leader` names the one we know of.
    #[error("not the leader and could not reach it{}", .leader.as_ref().map(|(i, a)| format!(" (leader is node {i} at {a})")).unwrap_or_default())]
    NotLeader { leader: Option<(NodeId, String)> },
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Rejected(ApplyError),
    #[error("raft stopped: {0}")]
    Fatal(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
}

/// A committed write: the state machine's answer and the log index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Written {
    pub index: u64,
    pub response: Response,
}

#[derive(Clone)]
pub struct RaftNode {
    pub id: NodeId,
    pub addr: String,
    pub raft: Raft,
    pub view: StateView,
    pub channels: Channels,
    /// When a Raft leader last reached this node (AppendEntries accepted).
    pub contact: LeaderContact,
    /// When this node's current leadership began (kept by `observe`).
    pub leading: Leading,
    /// How long a voter refuses to vote after its vote last changed
    /// (openraft's leader lease: the longest election timeout).
    pub vote_lease: Duration,
}

/// The term and instant this node last became leader.
#[derive(Clone, Default)]
pub struct Leading(std::sync::Arc<std::sync::Mutex<Option<(u64, std::time::Instant)>>>);

impl Leading {
    /// Note a metrics update; the first one that shows this node leading
    /// in a new term starts the clock.
    pub fn observe(&self, m: &openraft::RaftMetrics<NodeId, BasicNode>) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if m.state == openraft::ServerState::Leader
            && g.is_none_or(|(term, _)| term != m.current_term)
        {
            *g = Some((m.current_term, std::time::Instant::now()));
        }
    }

    /// How long this node has led in `term`, if it was seen leading in it.
    pub fn for_how_long(&self, term: u64) -> Option<Duration> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .filter(|(t, _)| *t == term)
            .map(|(_, at)| at.elapsed())
    }
}

/// The last time a leader's AppendEntries (entries or heartbeat) was accepted
/// here: the staleness lease for BGP announcements. Also the leader's commit
/// index in the first one accepted: a node does not announce before its
/// device has caught up to it (a gateway that just joined or restarted would
/// otherwise take clients it does not know yet).
#[derive(Clone, Default)]
pub struct LeaderContact(std::sync::Arc<std::sync::Mutex<Contact>>);

#[derive(Default)]
struct Contact {
    at: Option<std::time::Instant>,
    first_commit: Option<u64>,
}

impl LeaderContact {
    pub fn touch(&self, leader_commit: Option<u64>) {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        c.at = Some(std::time::Instant::now());
        if c.first_commit.is_none() {
            c.first_commit = Some(leader_commit.unwrap_or(0));
        }
    }

    pub fn age(&self) -> Option<Duration> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .at
            .map(|t| t.elapsed())
    }

    /// This node led and a quorum acknowledged it at `at`: it heard a
    /// leader (itself) then, so after it steps down its lease runs from
    /// there, not from the last AppendEntries it accepted (none, for a node
    /// that led since it started). The catch-up mark is left alone: a
    /// leader holds the whole log.
    pub fn note_quorum_ack(&self, at: std::time::Instant) {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if c.at.is_none_or(|t| t < at) {
            c.at = Some(at);
        }
    }

    /// The leader's commit index when this node first heard a leader.
    pub fn first_commit(&self) -> Option<u64> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first_commit
    }
}

fn leader_of(f: &ForwardToLeader<NodeId, BasicNode>) -> Option<(NodeId, String)> {
    match (f.leader_id, &f.leader_node) {
        (Some(i), Some(n)) => Some((i, n.addr.clone())),
        _ => None,
    }
}

/// Map openraft's write errors (client writes and membership changes).
pub fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> NodeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => NodeError::NotLeader {
            leader: leader_of(&f),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            NodeError::FailedPrecondition(e.to_string())
        }
        RaftError::Fatal(f) => NodeError::Fatal(f.to_string()),
    }
}

impl RaftNode {
    /// Commit `req` on the leader (here, or forwarded) and return its result.
    /// A `Rejected` answer means the command was refused and changed nothing.
    /// Leadership is read from the metrics; if it moved in between, the
    /// answer is `NotLeader` with the new leader, which clients follow.
    pub async fn write(&self, req: Request) -> Result<Written, NodeError> {
        crate::model::limits::check_request(&req).map_err(NodeError::Rejected)?;
        match self.leader() {
            Some((id, addr)) if id != self.id => self.forward(req, id, &addr).await,
            _ => self.write_local(req).await,
        }
    }

    /// Only on this node; `NotLeader` when it is not the leader.
    /// Every request is checked against [`crate::model::limits`] here, so
    /// nothing oversized reaches the log (a forwarded write is checked by
    /// the follower and again by the leader).
    pub async fn write_local(&self, req: Request) -> Result<Written, NodeError> {
        crate::model::limits::check_request(&req).map_err(NodeError::Rejected)?;
        match self.raft.client_write(req).await {
            Ok(r) => match r.data {
                Response::Rejected(e) => Err(NodeError::Rejected(e)),
                response => Ok(Written {
                    index: r.log_id.index,
                    response,
                }),
            },
            Err(e) => Err(write_error(e)),
        }
    }

    async fn forward(
        &self,
        req: Request,
        leader: NodeId,
        addr: &str,
    ) -> Result<Written, NodeError> {
        let not_leader = || NodeError::NotLeader {
            leader: Some((leader, addr.to_string())),
        };
        let mut client = self.channels.raft_client(addr).map_err(|_| not_leader())?;
        let mut r = tonic::Request::new(encode(&req));
        r.set_timeout(CLIENT_TIMEOUT);
        let payload = client.forward(r).await.map_err(|s| {
            tracing::warn!(leader, addr, error = %s.message(), "forwarding a write to the leader failed");
            not_leader()
        })?;
        decode::<Result<Written, NodeError>>(payload.get_ref())
            .map_err(|e| NodeError::Unavailable(format!("bad answer from leader: {e}")))?
    }

    /// Wait until this node's state includes every write committed before
    /// the call (read index from the leader, then wait for apply).
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        let index = match self.raft.get_read_log_id().await {
            Ok((read, _)) => read.map(|l| l.index).unwrap_or(0),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                let Some((id, addr)) = leader_of(&f) else {
                    return Err(NodeError::NotLeader { leader: None });
                };
                let not_leader = || NodeError::NotLeader {
                    leader: Some((id, addr.clone())),
                };
                let mut client = self.channels.raft_client(&addr).map_err(|_| not_leader())?;
                let mut r = tonic::Request::new(ReadIndexRequest {});
                r.set_timeout(CLIENT_TIMEOUT);
                client
                    .read_index(r)
                    .await
                    .map_err(|_| not_leader())?
                    .into_inner()
                    .index
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => {
                return Err(NodeError::Unavailable(format!(
                    "leader cannot reach a quorum: {q}"
                )))
            }
            Err(RaftError::Fatal(f)) => return Err(NodeError::Fatal(f.to_string())),
        };
        self.wait_applied(index, CLIENT_TIMEOUT).await
    }

    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), NodeError> {
        let mut rx = self.view.subscribe();
        let res = tokio::time::timeout(timeout, async {
            rx.wait_for(|applied| *applied >= index).await.map(|_| ())
        })
        .await;
        match res {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(NodeError::Fatal("state machine closed".into())),
            Err(_) => Err(NodeError::Unavailable(format!(
                "this node has not applied index {index} within {timeout:?} (applied {})",
                self.view.applied()
            ))),
        }
    }

    /// What the leader-lease rule (health::lease) looks at, now.
    pub fn leader_facts(&self) -> crate::health::lease::LeaderFacts {
        let m = self.raft.metrics().borrow().clone();
        self.note_leading(&m);
        crate::health::lease::LeaderFacts {
            is_leader: m.state == openraft::ServerState::Leader,
            voters: m.membership_config.membership().voter_ids().count(),
            since_quorum_ack: m.millis_since_quorum_ack.map(Duration::from_millis),
            since_contact: self.contact.age(),
        }
    }

    /// Called with every metrics update (and each time the lease is
    /// looked at): keeps [`Leading`] and, while this node leads with a
    /// quorum's ack, the leader contact (see `note_quorum_ack`).
    pub fn note_leading(&self, m: &openraft::RaftMetrics<NodeId, BasicNode>) {
        self.leading.observe(m);
        if m.state == openraft::ServerState::Leader {
            if let Some(ms) = m.millis_since_quorum_ack {
                if let Some(at) = std::time::Instant::now().checked_sub(Duration::from_millis(ms)) {
                    self.contact.note_quorum_ack(at);
                }
            }
        }
    }

    /// The voters, from the current membership.
    pub fn voters(&self) -> Vec<NodeId> {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config.membership().voter_ids().collect()
    }

    /// Every member (voters and learners) with the host part of its Raft
    /// address (`10.0.0.1`, `gw1.example.net`, `fd00::1`), read without
    /// copying the metrics.
    pub fn member_hosts(&self) -> Vec<(NodeId, String)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, n)| {
                let host = n.addr.rsplit_once(':').map_or(n.addr.as_str(), |(h, _)| h);
                (*id, host.trim_matches(['[', ']']).to_string())
            })
            .collect()
    }

    /// The leader's id and address, if known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
        Some((id, addr))
    }
}

/// How a stopping leader's hand-off ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandOff {
    /// This node was not the leader: nothing to hand over.
    NotLeader,
    /// The only voter: nobody to hand over to.
    Alone,
    /// `to` leads now and has reached this node.
    Done { to: NodeId },
    /// No hand-off within the time allowed; the followers elect a leader
    /// after their election timeout, as after a crash.
    Failed(String),
}

impl HandOff {
    /// The metric label.
    pub fn result(&self) -> &'static str {
        match self {
            HandOff::NotLeader => "not-leader",
            HandOff::Alone => "alone",
            HandOff::Done { .. } => "ok",
            HandOff::Failed(_) => "failed",
        }
    }
}

impl RaftNode {
    /// Leadership hand-off for a stopping leader (Raft's TimeoutNow, §3.10
    /// of the Raft thesis): wait until the most up-to-date voter holds
    /// every entry of this node's log, ask it to elect itself at once, and
    /// wait until it leads. This node still runs and grants the vote (its
    /// leader lease dates from its own election), so the new leader is in
    /// place one round trip later; without it the followers would wait
    /// out the lease plus an election timeout (1.2–1.6 s by default) with
    /// no leader. The caller must have stopped proposing (see
    /// [`RaftNode::await_vote_lease`]): an entry appended after the target
    /// caught up makes the target's log shorter and its election fail.
    pub async fn hand_off(&self, within: Duration) -> HandOff {
        let deadline = tokio::time::Instant::now() + within;
        let mut rx = self.raft.metrics();
        let (target, term, last) = loop {
            let m = rx.borrow_and_update().clone();
            if m.state != openraft::ServerState::Leader {
                return HandOff::NotLeader;
            }
            let voters: Vec<NodeId> = m
                .membership_config
                .membership()
                .voter_ids()
                .filter(|v| *v != self.id)
                .collect();
            if voters.is_empty() {
                return HandOff::Alone;
            }
            let last = m.last_log_index.unwrap_or(0);
            let best = m.replication.as_ref().and_then(|rep| {
                voters
                    .iter()
                    .map(|v| {
                        let matched = rep.get(v).copied().flatten().map(|l| l.index);
                        (matched, *v)
                    })
                    .max()
            });
            if let Some((Some(matched), v)) = best {
                if matched >= last {
                    break (v, m.current_term, last);
                }
            }
            if let Err(f) = changed(&mut rx, deadline, || {
                format!("no voter caught up to index {last} within {within:?}")
            })
            .await
            {
                return f;
            }
        };
        let Some(addr) = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&target)
            .map(|n| n.addr.clone())
        else {
            return HandOff::Failed(format!("node {target} has no address"));
        };
        let mut client = match self.channels.raft_client(&addr) {
            Ok(c) => c,
            Err(e) => return HandOff::Failed(format!("node {target} at {addr}: {e}")),
        };
        let mut r = tonic::Request::new(TimeoutNowRequest {
            leader_id: self.id,
            term,
            last_log_index: last,
        });
        r.set_timeout(deadline.saturating_duration_since(tokio::time::Instant::now()));
        if let Err(s) = client.timeout_now(r).await {
            return HandOff::Failed(format!(
                "node {target} at {addr} refused to take over: {}",
                s.message()
            ));
        }
        loop {
            let m = rx.borrow_and_update().clone();
            if let Some(l) = m.current_leader.filter(|l| *l != self.id) {
                return if l == target {
                    HandOff::Done { to: l }
                } else {
                    HandOff::Failed(format!("node {l} won the election, not node {target}"))
                };
            }
            if let Err(f) = changed(&mut rx, deadline, || {
                format!("node {target} did not take over within {within:?}")
            })
            .await
            {
                return f;
            }
        }
    }

    /// Before a hand-off: a leader younger than the vote lease would refuse
    /// the target's vote (its own vote is as fresh as its election) and the
    /// target would stand as a candidate nobody elects, so a young leader
    /// first waits until its lease has run, leading (and taking forwarded
    /// writes) all the while. At most the lease; at once for a leader of
    /// longer standing, a sole voter or a follower.
    pub async fn await_vote_lease(&self) {
        let m = self.raft.metrics().borrow().clone();
        // A sole voter has nobody to hand over to: no wait.
        if m.state != openraft::ServerState::Leader
            || m.membership_config.membership().voter_ids().count() <= 1
        {
            return;
        }
        let led = self
            .leading
            .for_how_long(m.current_term)
            .unwrap_or_default();
        let want = self.vote_lease + Duration::from_millis(50);
        if led < want {
            tracing::info!(led = ?led, wait = ?(want - led), "young leader: waiting out its vote lease before the hand-off");
            tokio::time::sleep(want - led).await;
        }
    }

    /// The receiving side of [`RaftNode::hand_off`]: elect this node now,
    /// if the request comes from the leader of the current term and this
    /// node's log holds everything the leader had. Anything else is
    /// refused with the reason (a stale or misdirected request must not
    /// start an election that would only disturb the cluster).
    pub async fn timeout_now(&self, req: TimeoutNowRequest) -> Result<(), NodeError> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_term != req.term || m.current_leader != Some(req.leader_id) {
            return Err(NodeError::FailedPrecondition(format!(
                "hand-off from node {} in term {} is stale: this node is in term {} with leader {:?}",
                req.leader_id, req.term, m.current_term, m.current_leader
            )));
        }
        if !m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.id)
        {
            return Err(NodeError::FailedPrecondition(format!(
                "node {} is not a voter",
                self.id
            )));
        }
        let have = m.last_log_index.unwrap_or(0);
        if have < req.last_log_index {
            return Err(NodeError::FailedPrecondition(format!(
                "this node's log ends at {have}, the leader's at {}",
                req.last_log_index
            )));
        }
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| NodeError::Fatal(e.to_string()))
    }
}

/// The next change of Raft's metrics, or the hand-off's failure: Raft
/// stopped, or `deadline` passed (`late` says what did not happen).
async fn changed(
    rx: &mut tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>>,
    deadline: tokio::time::Instant,
    late: impl FnOnce() -> String,
) -> Result<(), HandOff> {
    match tokio::time::timeout_at(deadline, rx.changed()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(HandOff::Failed("raft stopped".into())),
        Err(_) => Err(HandOff::Failed(late())),
    }
}

/// openraft 0.9's leader lease: a voter refuses other candidates for this
/// long after its vote last changed (the longest election timeout).
pub fn vote_lease(t: crate::config::RaftTimings) -> Duration {
    t.election_timeout * 2
}

/// openraft settings: the configured timers (short ones for a LAN
/// cluster of gateways by default).
pub fn raft_config(snapshot_logs: u64, t: crate::config::RaftTimings) -> openraft::Config {
    let ms = |d: Duration| d.as_millis() as u64;
    openraft::Config {
        cluster_name: "anygate".into(),
        heartbeat_interval: ms(t.heartbeat),
        election_timeout_min: ms(t.election_timeout),
        election_timeout_max: ms(vote_lease(t)),
        install_snapshot_timeout: 2_000,
        max_payload_entries: 1_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_logs),
        max_in_snapshot_log_to_keep: 0,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_node_that_led_has_heard_a_leader() {
        let c = LeaderContact::default();
        assert_eq!(c.age(), None, "never heard one");
        // Led since start, last quorum ack 2 s ago, then stepped down: its
        // lease runs from that ack, it is not a node that never heard a
        // leader (which withdraws at once).
        c.note_quorum_ack(Instant::now() - Duration::from_secs(2));
        let age = c.age().expect("heard a leader: itself");
        assert!(age >= Duration::from_secs(2) && age < Duration::from_secs(3));
        assert_eq!(c.first_commit(), None, "a leader holds the whole log");
        // An older ack never moves the record back.
        c.note_quorum_ack(Instant::now() - Duration::from_secs(9));
        assert!(c.age().unwrap() < Duration::from_secs(3));
        // An AppendEntries from a new leader counts as contact too.
        c.touch(Some(7));
        assert!(c.age().unwrap() < Duration::from_secs(1));
        assert_eq!(c.first_commit(), Some(7));
    }
}
