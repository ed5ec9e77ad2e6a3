//! Pure domain types, the replicated commands and the deterministic state
//! machine logic ([`Inventory::apply`]). Nothing here does IO, spawns tasks or
//! reads the clock: time arrives inside [`Request`], stamped by the proposer.

pub mod idp;
pub mod ipam;
pub mod key;
pub mod limits;
pub mod policy;
mod state;

pub use key::{KeyError, WgKey};
pub use state::{Changes, Inventory, InventoryImage, RememberedRequest, PORTAL_KEY_BYTES};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub type NodeId = u64;

pub const DEFAULT_LISTEN_PORT: u16 = 51820;
pub const DEFAULT_MTU: u16 = 1420;
pub const DEFAULT_KEEPALIVE: u16 = 25;
pub const DEFAULT_INTERFACE: &str = "wg0";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerState {
    Active,
    Disabled,
    Revoked,
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeerState::Active => "active",
            PeerState::Disabled => "disabled",
            PeerState::Revoked => "revoked",
        })
    }
}

/// A peer as stored in the inventory. `allowed_ips` is exactly what every
/// gateway's WireGuard device gets: the tunnel addresses as host routes plus
/// any routes behind the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub public_key: WgKey,
    pub preshared_key: Option<WgKey>,
    pub allowed_ips: Vec<IpNet>,
    pub addresses: Vec<IpAddr>,
    pub user: String,
    pub device: String,
    pub group: String,
    pub labels: BTreeMap<String, String>,
    pub persistent_keepalive: u16,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub state: PeerState,
    pub revision: u64,
    pub pool: Option<String>,
}

/// A validated request to create a peer (syntax checked by the API layer;
/// everything that depends on state is checked in `apply`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewPeer {
    pub public_key: WgKey,
    pub preshared_key: Option<WgKey>,
    pub allowed_ips: Vec<IpNet>,
    pub addresses: Vec<IpAddr>,
    pub user: String,
    pub device: String,
    pub group: String,
    pub labels: BTreeMap<String, String>,
    pub persistent_keepalive: Option<u16>,
    pub expires_at_ms: Option<i64>,
    pub pool: Option<String>,
    /// The state it starts in (a restore keeps disabled and revoked peers
    /// as they were, in the same write); `None` is active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<PeerState>,
}

/// A public key that was revoked: it is never accepted again, for any
/// peer, even after the peer that held it is removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// When (the proposer's clock) and at which log index.
    pub at_ms: i64,
    pub index: u64,
}

/// Text that does not parse as a model value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("peer {0:?} is neither a public key (44 base64 characters) nor user/device")]
    PeerRef(String),
    #[error("return mode {0:?} is not one of: nat, routed")]
    ReturnMode(String),
    #[error("port {0:?} is not 1-65535")]
    Port(String),
    #[error("port range {0:?} runs backwards")]
    BackwardRange(String),
}

/// A WireGuard interface name the node accepts: what the kernel accepts
/// (at most IFNAMSIZ − 1 = 15 bytes, not `.` or `..`, no `/`, `:` or
/// whitespace), narrowed to letters, digits, `-`, `_` and `.` so the name
/// is safe inside every script, rule and unit the node writes (no quote,
/// `#`, `;` or control character can reach an nft script).
pub fn check_ifname(name: &str) -> Result<(), IfnameError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || name.len() > 15 || name == "." || name == ".." || !ok_chars {
        return Err(IfnameError(name.to_string()));
    }
    Ok(())
}

/// An interface name [`check_ifname`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("interface name {0:?} must be 1-15 characters of A-Z a-z 0-9 - _ . (and not . or ..)")]
pub struct IfnameError(pub String);

/// The host clients dial (`endpoint-host`): an IPv4 or IPv6 address, or a
/// DNS name of letters, digits and hyphens (RFC 1123 labels of 1-63
/// characters, not starting or ending with a hyphen, at most 253 in all).
/// It is printed into every client config, so nothing else may pass.
pub fn check_endpoint_host(host: &str) -> Result<(), EndpointHostError> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let all_digits = host.chars().all(|c| c.is_ascii_digit() || c == '.');
    if host.is_empty() || host.len() > 253 || all_digits || !host.split('.').all(label_ok) {
        return Err(EndpointHostError(host.to_string()));
    }
    Ok(())
}

/// An endpoint host [`check_endpoint_host`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("endpoint host {0:?} must be an IP address or a DNS name (letters, digits, '-' and '.', at most 253 characters)")]
pub struct EndpointHostError(pub String);

/// How a command names a peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRef {
    Key(WgKey),
    UserDevice(String, String),
}

impl PeerRef {
    /// A public key, or `user/device`.
    pub fn parse(s: &str) -> Result<PeerRef, ParseError> {
        let s = s.trim();
        if let Ok(k) = s.parse::<WgKey>() {
            return Ok(PeerRef::Key(k));
        }
        match s.split_once('/') {
            Some((u, d)) if !u.is_empty() && !d.is_empty() && !d.contains('/') && s.len() != 44 => {
                Ok(PeerRef::UserDevice(u.to_string(), d.to_string()))
            }
            _ => Err(ParseError::PeerRef(s.to_string())),
        }
    }
}

impl fmt::Display for PeerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerRef::Key(k) => write!(f, "{k}"),
            PeerRef::UserDevice(u, d) => write!(f, "{u}/{d}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub name: String,
    pub cidrs: Vec<IpNet>,
    pub group: Option<String>,
    /// Next address to probe, per CIDR (deterministic allocation).
    pub cursors: Vec<u128>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReturnMode {
    Nat,
    Routed,
}

impl fmt::Display for ReturnMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReturnMode::Nat => "nat",
            ReturnMode::Routed => "routed",
        })
    }
}

impl std::str::FromStr for ReturnMode {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "nat" => Ok(ReturnMode::Nat),
            "routed" => Ok(ReturnMode::Routed),
            _ => Err(ParseError::ReturnMode(s.to_string())),
        }
    }
}

/// Gateway settings shared by every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub interface: String,
    pub listen_port: u16,
    pub server_public_key: Option<WgKey>,
    pub mtu: u16,
    pub anycast_v4: Option<Ipv4Addr>,
    pub anycast_v6: Option<Ipv6Addr>,
    pub dns: Vec<IpAddr>,
    pub return_mode: ReturnMode,
    pub client_keepalive: u16,
    pub endpoint_host: Option<String>,
    pub client_routes: Vec<IpNet>,
    /// Prefixes a peer may route (allowed IPs outside the pools). Anything
    /// outside the pools and these is refused, so an operator cannot point
    /// a gateway's routes at a default route, a neighbor or the cluster.
    #[serde(default)]
    pub routable_prefixes: Vec<IpNet>,
    /// Audit entries kept: the newest this many, none older than this many
    /// days (of the newest entry's time).
    #[serde(default = "default_audit_max_entries")]
    pub audit_max_entries: u64,
    #[serde(default = "default_audit_max_age_days")]
    pub audit_max_age_days: u32,
}

pub const DEFAULT_AUDIT_MAX_ENTRIES: u64 = 100_000;
pub const DEFAULT_AUDIT_MAX_AGE_DAYS: u32 = 90;

fn default_audit_max_entries() -> u64 {
    DEFAULT_AUDIT_MAX_ENTRIES
}
fn default_audit_max_age_days() -> u32 {
    DEFAULT_AUDIT_MAX_AGE_DAYS
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            interface: DEFAULT_INTERFACE.into(),
            listen_port: DEFAULT_LISTEN_PORT,
            server_public_key: None,
            mtu: DEFAULT_MTU,
            anycast_v4: None,
            anycast_v6: None,
            dns: vec![],
            return_mode: ReturnMode::Nat,
            client_keepalive: DEFAULT_KEEPALIVE,
            endpoint_host: None,
            client_routes: vec![],
            routable_prefixes: vec![],
            audit_max_entries: DEFAULT_AUDIT_MAX_ENTRIES,
            audit_max_age_days: DEFAULT_AUDIT_MAX_AGE_DAYS,
        }
    }
}

/// Every `Some` replaces the stored value. For the optional settings,
/// `Some(None)` clears them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsPatch {
    pub interface: Option<String>,
    pub listen_port: Option<u16>,
    pub server_public_key: Option<Option<WgKey>>,
    pub mtu: Option<u16>,
    pub anycast_v4: Option<Option<Ipv4Addr>>,
    pub anycast_v6: Option<Option<Ipv6Addr>>,
    pub dns: Option<Vec<IpAddr>>,
    pub return_mode: Option<ReturnMode>,
    pub client_keepalive: Option<u16>,
    pub endpoint_host: Option<Option<String>>,
    pub client_routes: Option<Vec<IpNet>>,
    #[serde(default)]
    pub routable_prefixes: Option<Vec<IpNet>>,
    #[serde(default)]
    pub audit_max_entries: Option<u64>,
    #[serde(default)]
    pub audit_max_age_days: Option<u32>,
}

/// Last place a client was seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub endpoint: SocketAddr,
    pub last_handshake_ms: i64,
    pub observed_by: NodeId,
    pub observed_at_ms: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFlags {
    pub drained: bool,
    pub site: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub index: u64,
    pub actor: String,
    pub at_ms: i64,
    pub action: String,
    pub object: String,
    pub detail: String,
    pub error: Option<String>,
}

/// One replicated write: who, when (the proposer's clock), what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub actor: String,
    pub at_ms: i64,
    /// Set by clients that may retry: a request id already applied is not
    /// applied again (exactly-once across leader changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub cmd: Command,
}

/// How many applied request ids the state machine remembers.
pub const REMEMBERED_REQUESTS: usize = 100_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// All or nothing.
    AddPeers(Vec<NewPeer>),
    SetPeerState {
        peer: PeerRef,
        state: PeerState,
    },
    RemovePeer {
        peer: PeerRef,
    },
    RotatePeer {
        peer: PeerRef,
        new_key: WgKey,
        new_psk: Option<WgKey>,
    },
    /// Remove every peer whose expiry is at or before `at_ms` of the request.
    ExpirePeers,
    AddPool {
        name: String,
        cidrs: Vec<IpNet>,
        group: Option<String>,
    },
    RemovePool {
        name: String,
    },
    SetSettings(SettingsPatch),
    UpdateEndpoints(Vec<(WgKey, EndpointRecord)>),
    SetNodeFlags {
        node: NodeId,
        drained: Option<bool>,
        site: Option<Option<String>>,
    },
    /// A call refused for the caller's role: changes nothing, recorded so
    /// the refusal is in the replicated audit log.
    Denied {
        method: String,
        role: String,
    },
    AddPolicy(policy::Policy),
    RemovePolicy {
        name: String,
    },
    /// Revoke keys for good, whether or not a peer holds them now (a
    /// leaked key; a restore carrying the old cluster's revocations). A
    /// peer holding one becomes revoked.
    RevokeKeys(Vec<WgKey>),
    /// A secret was read (a preshared key, a backup): changes nothing; in
    /// the replicated audit log before the secret is handed out.
    SecretRead {
        object: String,
    },
    /// Refuse these certificate serials (lowercase hex) on every node, at
    /// the next request, open connections included. For good.
    RevokeCertificates(Vec<String>),
    /// Map an identity-provider group: what its members get. Replaces the
    /// group's earlier mapping, if any.
    MapIdpGroup(idp::IdpMapping),
    UnmapIdpGroup {
        claim: String,
    },
    /// A device a user enrolled at the portal after signing in at the
    /// identity provider: added like one peer, refused when the user
    /// already has `max_devices` enrolled devices (checked here, so two
    /// gateways enrolling at once cannot both pass the limit).
    Enroll {
        peer: NewPeer,
        max_devices: u32,
    },
    /// The user signed in again: the expiry of each of their enrolled
    /// devices moves out to `until_ms` (never in). Disabled and revoked
    /// devices stay as they are.
    RenewUser {
        user: String,
        until_ms: i64,
    },
    /// A sign-in at the portal: changes nothing, recorded in the
    /// replicated audit (`error` is why it was refused).
    SignIn {
        subject: String,
        error: Option<String>,
    },
    /// The key that signs the portal's cookies (64 random bytes), set by
    /// the first portal that needs one; later proposals change nothing, so
    /// every gateway signs with the same key.
    InitPortalKey(Vec<u8>),
}

/// The label an enrolled (signed-in, self-service) device carries.
pub const ENROLLED_LABEL: (&str, &str) = ("enrolled", "sso");

impl Peer {
    /// Enrolled by its user at the portal (not added by an operator).
    pub fn enrolled(&self) -> bool {
        self.labels.get(ENROLLED_LABEL.0).map(String::as_str) == Some(ENROLLED_LABEL.1)
    }
}

impl Command {
    /// (action, object) for the audit log.
    pub fn describe(&self) -> (&'static str, String) {
        match self {
            Command::AddPeers(p) if p.len() == 1 => ("peer.add", p[0].public_key.to_string()),
            Command::AddPeers(p) => ("peer.import", format!("{} peers", p.len())),
            Command::SetPeerState { peer, state } => match state {
                PeerState::Active => ("peer.enable", peer.to_string()),
                PeerState::Disabled => ("peer.disable", peer.to_string()),
                PeerState::Revoked => ("peer.revoke", peer.to_string()),
            },
            Command::RemovePeer { peer } => ("peer.remove", peer.to_string()),
            Command::RotatePeer { peer, .. } => ("peer.rotate", peer.to_string()),
            Command::ExpirePeers => ("peer.expire", String::new()),
            Command::AddPool { name, .. } => ("pool.add", name.clone()),
            Command::RemovePool { name } => ("pool.remove", name.clone()),
            Command::SetSettings(_) => ("settings.set", String::new()),
            Command::UpdateEndpoints(e) => ("endpoints.update", format!("{} endpoints", e.len())),
            Command::SetNodeFlags {
                node,
                drained: Some(true),
                site: None,
            } => ("node.drain", node.to_string()),
            Command::SetNodeFlags {
                node,
                drained: Some(false),
                site: None,
            } => ("node.undrain", node.to_string()),
            Command::SetNodeFlags { node, .. } => ("node.flags", node.to_string()),
            Command::Denied { method, .. } => ("denied", method.clone()),
            Command::AddPolicy(p) => ("policy.add", p.name.clone()),
            Command::RemovePolicy { name } => ("policy.remove", name.clone()),
            Command::RevokeKeys(k) if k.len() == 1 => ("key.revoke", k[0].to_string()),
            Command::RevokeKeys(k) => ("key.revoke", format!("{} keys", k.len())),
            Command::SecretRead { object } => ("secret.read", object.clone()),
            Command::RevokeCertificates(s) => ("cert.revoke", s.join(",")),
            Command::MapIdpGroup(m) => ("idp.map", m.claim.clone()),
            Command::UnmapIdpGroup { claim } => ("idp.unmap", claim.clone()),
            Command::Enroll { peer, .. } => {
                ("device.enroll", format!("{}/{}", peer.user, peer.device))
            }
            Command::RenewUser { user, .. } => ("device.renew", user.clone()),
            Command::SignIn { subject, .. } => ("signin", subject.clone()),
            Command::InitPortalKey(_) => ("portal.key", String::new()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    OutOfRange,
    ResourceExhausted,
    PermissionDenied,
}

/// A command that `apply` refused. It changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApplyError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApplyError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApplyError {
            kind,
            message: message.into(),
        }
    }
}

/// Pool as shown to operators.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    pub name: String,
    pub cidrs: Vec<IpNet>,
    pub group: Option<String>,
    pub allocated: u64,
    pub capacity: u64,
}

/// What `apply` returns for one entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Empty,
    Peers(Vec<Peer>),
    Pool(PoolView),
    Settings(Settings),
    Count(u64),
    Policy(policy::Policy),
    IdpMapping(idp::IdpMapping),
    Rejected(ApplyError),
    /// The request id was already applied at `index`; nothing changed now.
    Duplicate {
        index: u64,
    },
}

#[cfg(test)]
mod ifname_tests {
    use super::{check_endpoint_host, check_ifname};

    #[test]
    fn endpoint_hosts_are_addresses_or_dns_names() {
        for ok in [
            "vpn.example.com",
            "vpn-1.corp.example",
            "gw",
            "198.51.100.1",
            "2001:db8::1",
            "xn--bcher-kva.example",
        ] {
            assert!(check_endpoint_host(ok).is_ok(), "{ok}");
        }
        let long = format!("{}.example", "a".repeat(64));
        for bad in [
            "",
            "vpn.example.com\nPostUp = id",
            "vpn.example.com:51820",
            "[2001:db8::1]",
            "-vpn.example.com",
            "vpn-.example.com",
            "vpn..example.com",
            "vpn.example.com.",
            "vpn example.com",
            "vpn#.example.com",
            "999.1.1.1",
            long.as_str(),
        ] {
            assert!(check_endpoint_host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn interface_names_the_kernel_and_our_scripts_accept() {
        for ok in ["wg0", "anygate", "wg-corp_1.v4", "a23456789012345"] {
            assert!(check_ifname(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a234567890123456",
            ".",
            "..",
            "wg/0",
            "wg:0",
            "wg 0",
            "wg\t0",
            "wg\"0",
            "wg'0",
            "wg#0",
            "wg;0",
            "wg\n0",
            "wgé",
        ] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
    }
}
