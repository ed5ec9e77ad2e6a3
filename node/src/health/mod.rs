//! Health: what the node's parts say about themselves, and the one decision
//! made from it — announce the anycast prefixes or withdraw them.
//!
//! The status types live here, owned by neither their producer nor their
//! consumers: the reconciler publishes [`DataplaneStatus`], the BGP speaker
//! [`BgpStatus`]; the speaker, the API and `/ready` read them.
//! - `announce.rs`: the pure announce/withdraw decision (table-tested).
//! - `lease.rs`: the leader-lease rule (how long since a leader was heard).
//! - `controller.rs`: a long-lived task that stops or panics withdraws the
//!   announcement and stops the node.
//!
//! Nothing here does IO.

pub mod controller;
pub use anygate_core::health::{announce, lease};

pub use announce::Withdraw;

use crate::model::WgKey;
use tokio::sync::watch;

/// The WireGuard implementation a node programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// `backend = none`: no device (a control-plane-only node).
    #[default]
    None,
    Kernel,
    Userspace,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::None => "none",
            Backend::Kernel => "kernel",
            Backend::Userspace => "userspace",
        }
    }
}

/// This node's dataplane, for `cluster status`, /ready and BGP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataplaneStatus {
    pub backend: Backend,
    /// Userspace: wireguard-go runs as this node's child.
    pub supervised: bool,
    pub interface: String,
    pub public_key: Option<WgKey>,
    pub identity_ok: bool,
    /// Device programmed, current and identity right.
    pub healthy: bool,
    /// Why not healthy (empty when healthy).
    pub reason: String,
    /// Raft index whose state the device reflects.
    pub applied_index: u64,
    pub device_peers: u64,
}

impl DataplaneStatus {
    /// A node that runs without a dataplane.
    pub fn disabled() -> DataplaneStatus {
        DataplaneStatus {
            backend: Backend::None,
            reason: "dataplane disabled (backend = none)".into(),
            ..Default::default()
        }
    }

    /// Before the reconciler's first pass.
    pub fn starting(backend: Backend, supervised: bool) -> DataplaneStatus {
        DataplaneStatus {
            backend,
            supervised,
            reason: "starting".into(),
            ..Default::default()
        }
    }
}

pub type DataplaneRx = watch::Receiver<DataplaneStatus>;

/// What this node does with the anycast prefixes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BgpState {
    /// No `[bgp]` section.
    Disabled,
    #[default]
    Withdrawn,
    /// Draining: announced with GRACEFUL_SHUTDOWN until the grace ends.
    GracefulShutdown,
    Announced,
}

impl BgpState {
    pub fn as_str(self) -> &'static str {
        match self {
            BgpState::Disabled => "disabled",
            BgpState::Withdrawn => "withdrawn",
            BgpState::GracefulShutdown => "graceful-shutdown",
            BgpState::Announced => "announced",
        }
    }

    /// Routers send traffic here (graceful shutdown included).
    pub fn announced(self) -> bool {
        matches!(self, BgpState::Announced | BgpState::GracefulShutdown)
    }

    pub const ALL: [BgpState; 4] = [
        BgpState::Disabled,
        BgpState::Withdrawn,
        BgpState::GracefulShutdown,
        BgpState::Announced,
    ];
}

/// This node's announcement, for `cluster status` and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BgpStatus {
    pub state: BgpState,
    /// Why not announced; None when announced.
    pub reason: Option<Withdraw>,
    pub sessions_established: u32,
    pub sessions: u32,
    /// Anycast prefixes in gobgpd's RIB from this node.
    pub routes: Vec<String>,
    /// Routed mode: client host routes announced (sessions held here).
    pub client_routes: u32,
    pub gobgpd_restarts: u64,
}

impl BgpStatus {
    pub fn disabled() -> BgpStatus {
        BgpStatus {
            state: BgpState::Disabled,
            reason: Some(Withdraw::NotConfigured),
            ..Default::default()
        }
    }

    pub fn starting() -> BgpStatus {
        BgpStatus {
            state: BgpState::Withdrawn,
            reason: Some(Withdraw::Starting),
            ..Default::default()
        }
    }
}

pub type BgpRx = watch::Receiver<BgpStatus>;

/// Peers whose sessions this node's device holds (fresh handshakes): the
/// reconciler publishes them, routed mode's BGP announces their addresses.
pub type SessionsRx = watch::Receiver<std::sync::Arc<std::collections::BTreeSet<WgKey>>>;
