//! The data plane's pure types: what a device holds (observed), what it
//! should hold, and the changes between them. No IO here (the fuzz targets
//! compile this file on its own).

use crate::model::WgKey;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// One peer as a WireGuard device sees it (or should see it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    pub public_key: WgKey,
    pub preshared_key: Option<WgKey>,
    pub endpoint: Option<SocketAddr>,
    /// Seconds; 0 is off.
    pub persistent_keepalive: u16,
    /// Kept sorted so that comparisons do not depend on order.
    pub allowed_ips: Vec<IpNet>,
}

/// Counters and timers the device reports for a peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Unix seconds and nanoseconds of the last handshake; (0, 0) if none.
    pub last_handshake: (u64, u32),
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

impl PeerStats {
    /// The last handshake in unix milliseconds (0: never).
    pub fn last_handshake_ms(&self) -> i64 {
        let (s, ns) = self.last_handshake;
        s as i64 * 1000 + ns as i64 / 1_000_000
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedPeer {
    pub config: PeerConfig,
    pub stats: PeerStats,
}

/// The whole device as read back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The device's private key, if one is set.
    pub private_key: Option<[u8; 32]>,
    pub listen_port: u16,
    pub fwmark: u32,
    pub peers: BTreeMap<WgKey, ObservedPeer>,
}

/// Device-level settings to program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSettings {
    pub private_key: [u8; 32],
    pub listen_port: u16,
    pub fwmark: u32,
}

/// A Curve25519 private key as WireGuard stores it (clamped): devices
/// report the clamped form, so comparisons must use it too.
pub fn clamp_private_key(mut k: [u8; 32]) -> [u8; 32] {
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    k
}

/// One change to a device. A `Plan` is a list of these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    SetDevice(DeviceSettings),
    /// Create the peer (or replace everything about it).
    AddPeer(PeerConfig),
    /// Change an existing peer; `None` fields stay as they are.
    UpdatePeer {
        public_key: WgKey,
        preshared_key: Option<Option<WgKey>>,
        endpoint: Option<SocketAddr>,
        persistent_keepalive: Option<u16>,
        /// Replace the allowed IPs (only when they changed).
        allowed_ips: Option<Vec<IpNet>>,
    },
    RemovePeer(WgKey),
}

impl Action {
    /// Only the endpoint changes: the replicated endpoint map saw the
    /// client at a newer address than this device did (a client moved
    /// between gateways), not a difference anyone made by hand.
    pub fn endpoint_only(&self) -> bool {
        matches!(
            self,
            Action::UpdatePeer {
                endpoint: Some(_),
                preshared_key: None,
                persistent_keepalive: None,
                allowed_ips: None,
                ..
            }
        )
    }

    /// The peer the action is about (None for device settings).
    pub fn peer(&self) -> Option<WgKey> {
        match self {
            Action::SetDevice(_) => None,
            Action::AddPeer(c) => Some(c.public_key),
            Action::UpdatePeer { public_key, .. } => Some(*public_key),
            Action::RemovePeer(k) => Some(*k),
        }
    }

    /// A short name, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::SetDevice(_) => "device",
            Action::AddPeer(_) => "add",
            Action::UpdatePeer { .. } => "update",
            Action::RemovePeer(_) => "remove",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("WireGuard refused the change (errno {errno}): {what}")]
    Errno { errno: i32, what: String },
    #[error("malformed answer from the device: {0}")]
    Protocol(String),
    #[error("WireGuard link {0} is gone")]
    Gone(String),
}
