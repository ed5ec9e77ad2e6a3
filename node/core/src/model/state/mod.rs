//! The inventory state machine: deterministic `apply`, with every check that
//! depends on state (duplicates, overlaps, pools, exhaustion). A command either
//! applies whole or is rejected having changed nothing.

use super::ipam::{self, NetIndex};
use super::*;
use std::collections::{BTreeSet, HashMap};

/// What one or more `apply` calls touched; the store persists exactly these.
#[derive(Debug, Default)]
pub struct Changes {
    pub peers: BTreeSet<WgKey>,
    pub pools: BTreeSet<String>,
    /// A pool was added or removed (not just an allocation cursor moved):
    /// gateway addresses and NAT rules change.
    pub pool_set: bool,
    pub settings: bool,
    pub endpoints: BTreeSet<WgKey>,
    pub nodes: BTreeSet<NodeId>,
    /// Keys newly revoked (revocations are never lifted).
    pub revoked: BTreeSet<WgKey>,
    /// Certificate serials newly revoked.
    pub revoked_certs: BTreeSet<String>,
    /// The access policies changed.
    pub policies: bool,
    /// The identity-provider group mappings changed.
    pub idp: bool,
    pub audit: Vec<AuditEntry>,
    /// Request ids remembered (index, id, outcome) and forgotten (index).
    pub requests_added: Vec<RememberedRequest>,
    pub requests_evicted: Vec<u64>,
}

/// An applied request id and how it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RememberedRequest {
    pub index: u64,
    pub id: String,
    pub error: Option<ApplyError>,
}

/// The serialisable whole state (snapshots, and what the store loads).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct InventoryImage {
    pub peers: Vec<Peer>,
    pub pools: Vec<Pool>,
    pub settings: Settings,
    pub endpoints: Vec<(WgKey, EndpointRecord)>,
    pub nodes: Vec<(NodeId, NodeFlags)>,
    #[serde(default)]
    pub requests: Vec<RememberedRequest>,
    #[serde(default)]
    pub policies: Vec<super::policy::Policy>,
    #[serde(default)]
    pub revoked: Vec<(WgKey, Revocation)>,
    #[serde(default)]
    pub revoked_certs: Vec<(String, Revocation)>,
    #[serde(default)]
    pub idp_mappings: Vec<super::idp::IdpMapping>,
    #[serde(default)]
    pub portal_key: Option<Vec<u8>>,
}

#[derive(Debug, Default)]
pub struct Inventory {
    peers: BTreeMap<WgKey, Peer>,
    by_user_device: HashMap<(String, String), WgKey>,
    nets: NetIndex,
    pools: BTreeMap<String, Pool>,
    settings: Settings,
    endpoints: HashMap<WgKey, EndpointRecord>,
    nodes: BTreeMap<NodeId, NodeFlags>,
    requests: HashMap<String, RememberedRequest>,
    request_order: BTreeMap<u64, String>,
    policies: BTreeMap<String, super::policy::Policy>,
    revoked: BTreeMap<WgKey, Revocation>,
    revoked_certs: BTreeMap<String, Revocation>,
    idp_mappings: BTreeMap<String, super::idp::IdpMapping>,
    portal_key: Option<Vec<u8>>,
}

type Res<T> = Result<T, ApplyError>;

/// Audit text never carries more than this of a request's input.
pub const AUDIT_TEXT_BYTES: usize = 256;

/// `s` cut to [`AUDIT_TEXT_BYTES`] at a character boundary.
fn bounded(mut s: String) -> String {
    if s.len() > AUDIT_TEXT_BYTES {
        let mut end = AUDIT_TEXT_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// The portal's cookie key: 32 bytes to sign, 32 to encrypt.
pub const PORTAL_KEY_BYTES: usize = 64;

/// Policies per cluster (each becomes a rule on every gateway).
pub const MAX_POLICIES: usize = 1000;

fn err(kind: ErrorKind, msg: impl Into<String>) -> ApplyError {
    ApplyError::new(kind, msg)
}

impl Inventory {
    pub fn from_image(img: InventoryImage) -> Inventory {
        let mut inv = Inventory {
            pools: img.pools.into_iter().map(|p| (p.name.clone(), p)).collect(),
            settings: img.settings,
            endpoints: img.endpoints.into_iter().collect(),
            nodes: img.nodes.into_iter().collect(),
            policies: img
                .policies
                .into_iter()
                .map(|p| (p.name.clone(), p))
                .collect(),
            revoked: img.revoked.into_iter().collect(),
            revoked_certs: img.revoked_certs.into_iter().collect(),
            idp_mappings: img
                .idp_mappings
                .into_iter()
                .map(|m| (m.claim.clone(), m))
                .collect(),
            portal_key: img.portal_key,
            ..Default::default()
        };
        for p in img.peers {
            inv.index_peer(&p);
            inv.peers.insert(p.public_key, p);
        }
        for r in img.requests {
            inv.request_order.insert(r.index, r.id.clone());
            inv.requests.insert(r.id.clone(), r);
        }
        inv
    }

    pub fn to_image(&self) -> InventoryImage {
        InventoryImage {
            peers: self.peers.values().cloned().collect(),
            pools: self.pools.values().cloned().collect(),
            settings: self.settings.clone(),
            endpoints: self
                .endpoints
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
            nodes: self.nodes.iter().map(|(k, v)| (*k, v.clone())).collect(),
            requests: self
                .request_order
                .values()
                .map(|id| self.requests[id].clone())
                .collect(),
            policies: self.policies.values().cloned().collect(),
            revoked: self.revoked.iter().map(|(k, r)| (*k, r.clone())).collect(),
            revoked_certs: self
                .revoked_certs
                .iter()
                .map(|(k, r)| (k.clone(), r.clone()))
                .collect(),
            idp_mappings: self.idp_mappings.values().cloned().collect(),
            portal_key: self.portal_key.clone(),
        }
    }

    // ---- reads ---------------------------------------------------------

    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }
    pub fn peer(&self, key: &WgKey) -> Option<&Peer> {
        self.peers.get(key)
    }
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }
    pub fn resolve(&self, r: &PeerRef) -> Option<&Peer> {
        match r {
            PeerRef::Key(k) => self.peers.get(k),
            PeerRef::UserDevice(u, d) => self
                .by_user_device
                .get(&(u.clone(), d.clone()))
                .and_then(|k| self.peers.get(k)),
        }
    }
    /// Every revoked key, in key order.
    pub fn revoked(&self) -> impl Iterator<Item = (&WgKey, &Revocation)> {
        self.revoked.iter()
    }
    pub fn revocation(&self, key: &WgKey) -> Option<&Revocation> {
        self.revoked.get(key)
    }
    /// Every revoked certificate serial.
    pub fn revoked_certs(&self) -> impl Iterator<Item = (&String, &Revocation)> {
        self.revoked_certs.iter()
    }
    pub fn cert_revocation(&self, serial: &str) -> Option<&Revocation> {
        self.revoked_certs.get(serial)
    }
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.get(name)
    }
    pub fn pools(&self) -> Vec<PoolView> {
        self.pools.values().map(|p| self.pool_view(p)).collect()
    }
    pub fn endpoints(&self) -> impl Iterator<Item = (&WgKey, &EndpointRecord)> {
        self.endpoints.iter()
    }
    pub fn endpoint(&self, k: &WgKey) -> Option<&EndpointRecord> {
        self.endpoints.get(k)
    }
    pub fn policies(&self) -> impl Iterator<Item = &super::policy::Policy> {
        self.policies.values()
    }

    /// The identity-provider group mappings, by IdP group.
    pub fn idp_mappings(&self) -> impl Iterator<Item = &super::idp::IdpMapping> {
        self.idp_mappings.values()
    }

    /// The portal's cookie-signing key, once a portal set it.
    pub fn portal_key(&self) -> Option<&[u8]> {
        self.portal_key.as_deref()
    }

    /// The devices `user` enrolled at the portal.
    pub fn enrolled_devices<'a>(&'a self, user: &'a str) -> impl Iterator<Item = &'a Peer> + 'a {
        // by_user_device is keyed by (user, device): a range scan would
        // need an ordered map; users hold a handful of devices, and the
        // portal reads this once per page.
        self.peers
            .values()
            .filter(move |p| p.user == user && p.enrolled())
    }
    pub fn node_flags(&self, id: NodeId) -> Option<&NodeFlags> {
        self.nodes.get(&id)
    }
    /// Earliest expiry among peers, if any.
    pub fn next_expiry(&self) -> Option<i64> {
        self.peers.values().filter_map(|p| p.expires_at_ms).min()
    }

    fn pool_view(&self, p: &Pool) -> PoolView {
        let allocated = p.cidrs.iter().map(|c| self.nets.count_within(c)).sum();
        let capacity = p
            .cidrs
            .iter()
            .map(ipam::capacity)
            .fold(0u128, |a, b| a.saturating_add(b));
        PoolView {
            name: p.name.clone(),
            cidrs: p.cidrs.clone(),
            group: p.group.clone(),
            allocated,
            capacity: capacity.min(u64::MAX as u128) as u64,
        }
    }

    // ---- apply ---------------------------------------------------------

    /// Apply one request at log `index`. On `Err` nothing changed; the
    /// rejection is still audited.
    pub fn apply(&mut self, index: u64, req: &Request, ch: &mut Changes) -> Response {
        if let Some(seen) = req.request_id.as_ref().and_then(|id| self.requests.get(id)) {
            return match &seen.error {
                Some(e) => Response::Rejected(e.clone()),
                None => Response::Duplicate { index: seen.index },
            };
        }
        // The proposer checked these; a raw entry or an old log may not have.
        let result = super::limits::check_fields(req).and_then(|()| self.apply_cmd(index, req, ch));
        if let Some(id) = &req.request_id {
            let error = result.as_ref().err().map(|e| ApplyError {
                kind: e.kind,
                message: bounded(e.message.clone()),
            });
            self.remember(index, id, error, ch);
        }
        let (action, object) = req.cmd.describe();
        // Endpoint observations are telemetry, and a sweep that expired
        // nothing is noise: neither is an operator action worth auditing.
        let audited = !matches!(
            (&req.cmd, &result),
            (Command::UpdateEndpoints(_), _) | (Command::ExpirePeers, Ok(Response::Count(0)))
        );
        if audited {
            let detail = match &result {
                Ok(Response::Peers(p)) if p.len() <= 3 => p
                    .iter()
                    .map(|p| format!("{} {}/{} {:?}", p.public_key, p.user, p.device, p.addresses))
                    .collect::<Vec<_>>()
                    .join("; "),
                Ok(Response::Peers(p)) => format!("{} peers", p.len()),
                Ok(Response::Count(n)) => format!("{n}"),
                _ => String::new(),
            };
            ch.audit.push(AuditEntry {
                index,
                actor: req.actor.clone(),
                at_ms: req.at_ms,
                action: action.to_string(),
                object: bounded(object),
                detail,
                error: result.as_ref().err().map(|e| bounded(e.message.clone())),
            });
        }
        result.unwrap_or_else(Response::Rejected)
    }

    fn remember(&mut self, index: u64, id: &str, error: Option<ApplyError>, ch: &mut Changes) {
        let r = RememberedRequest {
            index,
            id: id.to_string(),
            error,
        };
        self.requests.insert(id.to_string(), r.clone());
        self.request_order.insert(index, id.to_string());
        ch.requests_added.push(r);
        while self.request_order.len() > REMEMBERED_REQUESTS {
            let (old, id) = self.request_order.pop_first().expect("non-empty");
            self.requests.remove(&id);
            ch.requests_evicted.push(old);
        }
    }

    fn apply_cmd(&mut self, index: u64, req: &Request, ch: &mut Changes) -> Res<Response> {
        match &req.cmd {
            Command::AddPeers(list) => self.add_peers(index, req.at_ms, list, ch),
            Command::SetPeerState { peer, state } => {
                let key = self.must_resolve(peer)?;
                let p = self.peers.get_mut(&key).expect("resolved");
                if p.state == PeerState::Revoked && *state != PeerState::Revoked {
                    return Err(err(
                        ErrorKind::FailedPrecondition,
                        format!("peer {peer} is revoked; a revoked key is never re-enabled, add a new key instead"),
                    ));
                }
                p.state = *state;
                p.revision = index;
                let p = p.clone();
                ch.peers.insert(key);
                if *state == PeerState::Revoked {
                    self.tombstone(key, index, req.at_ms, ch);
                }
                Ok(Response::Peers(vec![p]))
            }
            Command::RemovePeer { peer } => {
                let key = self.must_resolve(peer)?;
                let p = self.remove_peer(&key, ch);
                Ok(Response::Peers(vec![p]))
            }
            Command::RotatePeer {
                peer,
                new_key,
                new_psk,
            } => {
                let key = self.must_resolve(peer)?;
                self.not_revoked(new_key)?;
                if self.peers.contains_key(new_key) {
                    return Err(err(
                        ErrorKind::AlreadyExists,
                        format!("public key {new_key} already belongs to a peer"),
                    ));
                }
                let mut p = self.remove_peer(&key, ch);
                p.public_key = *new_key;
                if new_psk.is_some() {
                    p.preshared_key = *new_psk;
                }
                p.revision = index;
                self.index_peer(&p);
                ch.peers.insert(*new_key);
                self.peers.insert(*new_key, p.clone());
                Ok(Response::Peers(vec![p]))
            }
            Command::ExpirePeers => {
                let expired: Vec<WgKey> = self
                    .peers
                    .values()
                    .filter(|p| p.expires_at_ms.is_some_and(|t| t <= req.at_ms))
                    .map(|p| p.public_key)
                    .collect();
                for k in &expired {
                    self.remove_peer(k, ch);
                }
                Ok(Response::Count(expired.len() as u64))
            }
            Command::AddPool { name, cidrs, group } => self.add_pool(name, cidrs, group, ch),
            Command::RemovePool { name } => {
                let Some(pool) = self.pools.get(name) else {
                    return Err(err(ErrorKind::NotFound, format!("no pool named {name:?}")));
                };
                let users = self
                    .peers
                    .values()
                    .filter(|p| p.pool.as_deref() == Some(name.as_str()))
                    .count();
                if users > 0 {
                    return Err(err(
                        ErrorKind::FailedPrecondition,
                        format!("pool {name:?} still has {users} peers; remove them first"),
                    ));
                }
                let view = self.pool_view(pool);
                self.pools.remove(name);
                ch.pools.insert(name.clone());
                ch.pool_set = true;
                Ok(Response::Pool(view))
            }
            Command::SetSettings(patch) => {
                let mut s = self.settings.clone();
                macro_rules! set {
                    ($($f:ident),*) => {$( if let Some(v) = &patch.$f { s.$f = v.clone(); } )*};
                }
                set!(
                    interface,
                    listen_port,
                    server_public_key,
                    mtu,
                    anycast_v4,
                    anycast_v6,
                    dns,
                    return_mode,
                    client_keepalive,
                    endpoint_host,
                    client_routes,
                    routable_prefixes,
                    audit_max_entries,
                    audit_max_age_days
                );
                validate_settings(&s)?;
                self.settings = s;
                ch.settings = true;
                Ok(Response::Settings(self.settings.clone()))
            }
            Command::UpdateEndpoints(obs) => {
                let mut n = 0;
                for (k, rec) in obs {
                    if !self.peers.contains_key(k) {
                        continue;
                    }
                    let newer = self
                        .endpoints
                        .get(k)
                        .is_none_or(|old| rec.observed_at_ms >= old.observed_at_ms);
                    if newer {
                        self.endpoints.insert(*k, rec.clone());
                        ch.endpoints.insert(*k);
                        n += 1;
                    }
                }
                Ok(Response::Count(n))
            }
            Command::SetNodeFlags {
                node,
                drained,
                site,
            } => {
                let f = self.nodes.entry(*node).or_default();
                if let Some(d) = drained {
                    f.drained = *d;
                }
                if let Some(s) = site {
                    f.site = s.clone();
                }
                ch.nodes.insert(*node);
                Ok(Response::Empty)
            }
            Command::AddPolicy(p) => {
                p.validate()
                    .map_err(|m| err(ErrorKind::InvalidArgument, m.to_string()))?;
                if self.policies.contains_key(&p.name) {
                    return Err(err(
                        ErrorKind::AlreadyExists,
                        format!("policy {:?} exists (remove it first to change it)", p.name),
                    ));
                }
                if self.policies.len() >= MAX_POLICIES {
                    return Err(err(
                        ErrorKind::ResourceExhausted,
                        format!("at most {MAX_POLICIES} policies"),
                    ));
                }
                let mut p = p.clone();
                p.revision = index;
                self.policies.insert(p.name.clone(), p.clone());
                ch.policies = true;
                Ok(Response::Policy(p))
            }
            Command::RevokeKeys(keys) => {
                let mut n = 0;
                for k in keys {
                    if let Some(p) = self.peers.get_mut(k) {
                        if p.state != PeerState::Revoked {
                            p.state = PeerState::Revoked;
                            p.revision = index;
                            ch.peers.insert(*k);
                        }
                    }
                    n += u64::from(self.tombstone(*k, index, req.at_ms, ch));
                }
                Ok(Response::Count(n))
            }
            Command::RemovePolicy { name } => match self.policies.remove(name) {
                Some(p) => {
                    ch.policies = true;
                    Ok(Response::Policy(p))
                }
                None => Err(err(ErrorKind::NotFound, format!("no policy {name:?}"))),
            },
            Command::SecretRead { .. } => Ok(Response::Empty),
            Command::MapIdpGroup(m) => {
                m.validate()
                    .map_err(|e| err(ErrorKind::InvalidArgument, e.to_string()))?;
                let new = !self.idp_mappings.contains_key(&m.claim);
                if new && self.idp_mappings.len() >= super::idp::MAX_MAPPINGS {
                    return Err(err(
                        ErrorKind::ResourceExhausted,
                        format!("at most {} IdP group mappings", super::idp::MAX_MAPPINGS),
                    ));
                }
                let mut m = m.clone();
                m.revision = index;
                self.idp_mappings.insert(m.claim.clone(), m.clone());
                ch.idp = true;
                Ok(Response::IdpMapping(m))
            }
            Command::UnmapIdpGroup { claim } => match self.idp_mappings.remove(claim) {
                Some(m) => {
                    ch.idp = true;
                    Ok(Response::IdpMapping(m))
                }
                None => Err(err(
                    ErrorKind::NotFound,
                    format!("IdP group {claim:?} is not mapped"),
                )),
            },
            Command::RevokeCertificates(serials) => {
                let mut n = 0;
                for s in serials {
                    if !self.revoked_certs.contains_key(s) {
                        let r = Revocation {
                            at_ms: req.at_ms,
                            index,
                        };
                        self.revoked_certs.insert(s.clone(), r);
                        ch.revoked_certs.insert(s.clone());
                        n += 1;
                    }
                }
                Ok(Response::Count(n))
            }
            Command::Enroll { peer, max_devices } => {
                let have = self.enrolled_devices(&peer.user).count();
                if have >= *max_devices as usize {
                    return Err(err(
                        ErrorKind::ResourceExhausted,
                        format!(
                            "{} already has {have} enrolled devices, the most their groups allow is {max_devices}; remove one first",
                            peer.user
                        ),
                    ));
                }
                let mut peer = peer.clone();
                peer.labels
                    .insert(ENROLLED_LABEL.0.into(), ENROLLED_LABEL.1.into());
                if peer.expires_at_ms.is_none() {
                    return Err(err(
                        ErrorKind::InvalidArgument,
                        "an enrolled device needs an expiry",
                    ));
                }
                self.add_peers(index, req.at_ms, &[peer], ch)
            }
            Command::RenewUser { user, until_ms } => {
                if *until_ms <= req.at_ms {
                    return Err(err(ErrorKind::InvalidArgument, "renewal is in the past"));
                }
                let keys: Vec<WgKey> = self
                    .enrolled_devices(user)
                    .filter(|p| p.state == PeerState::Active)
                    .filter(|p| {
                        p.expires_at_ms
                            .is_some_and(|t| t < *until_ms && t > req.at_ms)
                    })
                    .map(|p| p.public_key)
                    .collect();
                let mut out = Vec::with_capacity(keys.len());
                for k in keys {
                    let p = self.peers.get_mut(&k).expect("listed");
                    p.expires_at_ms = Some(*until_ms);
                    p.revision = index;
                    out.push(p.clone());
                    ch.peers.insert(k);
                }
                Ok(Response::Peers(out))
            }
            Command::SignIn { error, .. } => match error {
                None => Ok(Response::Empty),
                Some(e) => Err(err(ErrorKind::PermissionDenied, e.clone())),
            },
            Command::InitPortalKey(key) => {
                if key.len() != PORTAL_KEY_BYTES {
                    return Err(err(
                        ErrorKind::InvalidArgument,
                        format!("a portal key is {PORTAL_KEY_BYTES} bytes"),
                    ));
                }
                if self.portal_key.is_none() {
                    self.portal_key = Some(key.clone());
                    ch.idp = true;
                }
                Ok(Response::Empty)
            }
            Command::Denied { method, role } => Err(err(
                ErrorKind::PermissionDenied,
                format!("permission denied: role {role} may not call {method}"),
            )),
        }
    }

    fn must_resolve(&self, r: &PeerRef) -> Res<WgKey> {
        self.resolve(r)
            .map(|p| p.public_key)
            .ok_or_else(|| err(ErrorKind::NotFound, format!("no peer {r}")))
    }

    fn index_peer(&mut self, p: &Peer) {
        for n in &p.allowed_ips {
            self.nets.insert(n, p.public_key);
        }
        self.by_user_device
            .insert((p.user.clone(), p.device.clone()), p.public_key);
    }

    /// Revoke `key` for good; false if it already was.
    fn tombstone(&mut self, key: WgKey, index: u64, at_ms: i64, ch: &mut Changes) -> bool {
        if self.revoked.contains_key(&key) {
            return false;
        }
        self.revoked.insert(key, Revocation { at_ms, index });
        ch.revoked.insert(key);
        true
    }

    /// A peer's allowed IP must lie inside a pool or inside one of the
    /// admin's routable prefixes (which never cover a default route or an
    /// anycast address: `validate_settings`).
    fn routable(&self, n: &IpNet) -> Res<()> {
        let in_pool = self
            .pools
            .values()
            .any(|p| p.cidrs.iter().any(|c| c.contains(n)));
        if in_pool
            || self
                .settings
                .routable_prefixes
                .iter()
                .any(|r| r.contains(n))
        {
            return Ok(());
        }
        Err(err(
            ErrorKind::OutOfRange,
            format!(
                "allowed IP {n} is outside every pool and every routable prefix; an admin allows client routes with `anygatectl settings set --routable-prefixes`"
            ),
        ))
    }

    fn not_revoked(&self, key: &WgKey) -> Res<()> {
        match self.revoked.get(key) {
            Some(r) => Err(err(
                ErrorKind::FailedPrecondition,
                format!(
                    "public key {key} was revoked (log index {}); a revoked key is never accepted again: the device needs a new key",
                    r.index
                ),
            )),
            None => Ok(()),
        }
    }

    fn remove_peer(&mut self, key: &WgKey, ch: &mut Changes) -> Peer {
        let p = self.peers.remove(key).expect("caller checked");
        for n in &p.allowed_ips {
            self.nets.remove(n);
        }
        self.by_user_device
            .remove(&(p.user.clone(), p.device.clone()));
        if self.endpoints.remove(key).is_some() {
            ch.endpoints.insert(*key);
        }
        ch.peers.insert(*key);
        p
    }

    fn owner_name(&self, k: &WgKey) -> String {
        self.peers
            .get(k)
            .map(|p| format!("{}/{} ({})", p.user, p.device, k))
            .unwrap_or_else(|| k.to_string())
    }

    fn add_peers(
        &mut self,
        index: u64,
        at_ms: i64,
        list: &[NewPeer],
        ch: &mut Changes,
    ) -> Res<Response> {
        let cursors: Vec<(String, Vec<u128>)> = self
            .pools
            .iter()
            .map(|(n, p)| (n.clone(), p.cursors.clone()))
            .collect();
        let mut added: Vec<WgKey> = Vec::with_capacity(list.len());
        let mut out = Vec::with_capacity(list.len());
        for (i, np) in list.iter().enumerate() {
            match self.add_one(index, at_ms, np) {
                Ok(p) => {
                    added.push(p.public_key);
                    out.push(p);
                }
                Err(mut e) => {
                    // Roll back everything this command did.
                    for k in &added {
                        let p = self.peers.remove(k).expect("just added");
                        for n in &p.allowed_ips {
                            self.nets.remove(n);
                        }
                        self.by_user_device.remove(&(p.user, p.device));
                    }
                    for (n, c) in cursors {
                        if let Some(p) = self.pools.get_mut(&n) {
                            p.cursors = c;
                        }
                    }
                    if list.len() > 1 {
                        e.message = format!(
                            "peer {} of {} ({}/{}): {}",
                            i + 1,
                            list.len(),
                            np.user,
                            np.device,
                            e.message
                        );
                    }
                    return Err(e);
                }
            }
        }
        for p in out.iter().filter(|p| p.state == PeerState::Revoked) {
            self.tombstone(p.public_key, index, at_ms, ch);
        }
        ch.peers.extend(added);
        ch.pools.extend(self.pools.keys().cloned());
        Ok(Response::Peers(out))
    }

    fn add_one(&mut self, index: u64, at_ms: i64, np: &NewPeer) -> Res<Peer> {
        // A revoked key may only come back as a revoked peer (a restore).
        if np.state != Some(PeerState::Revoked) {
            self.not_revoked(&np.public_key)?;
        }
        if let Some(p) = self.peers.get(&np.public_key) {
            return Err(err(
                ErrorKind::AlreadyExists,
                format!(
                    "public key {} already belongs to peer {}/{}",
                    np.public_key, p.user, p.device
                ),
            ));
        }
        if np.user.is_empty() || np.device.is_empty() {
            return Err(err(
                ErrorKind::InvalidArgument,
                "user and device must not be empty",
            ));
        }
        if let Some(k) = self
            .by_user_device
            .get(&(np.user.clone(), np.device.clone()))
        {
            return Err(err(
                ErrorKind::AlreadyExists,
                format!(
                    "user {:?} already has a device {:?} (peer {k})",
                    np.user, np.device
                ),
            ));
        }
        if let Some(t) = np.expires_at_ms {
            if t <= at_ms {
                return Err(err(ErrorKind::InvalidArgument, "expiry is in the past"));
            }
        }
        let mut allowed: Vec<IpNet> = Vec::new();
        let mut addresses: Vec<IpAddr> = Vec::new();
        let mut pool_name: Option<String> = None;

        for a in &np.addresses {
            let Some(pool) = self
                .pools
                .values()
                .find(|p| p.cidrs.iter().any(|c| c.contains(a)))
            else {
                return Err(err(
                    ErrorKind::OutOfRange,
                    format!("address {a} is outside every pool; add a pool that contains it first"),
                ));
            };
            pool_name.get_or_insert_with(|| pool.name.clone());
            addresses.push(*a);
            allowed.push(ipam::host_net(*a));
        }
        for n in &np.allowed_ips {
            self.routable(n)?;
        }
        allowed.extend(np.allowed_ips.iter().map(|n| n.trunc()));

        let allocate = np.addresses.is_empty() && (np.allowed_ips.is_empty() || np.pool.is_some());
        if allocate {
            let name = self.choose_pool(np)?;
            let got = self.allocate(&name, &allowed)?;
            for a in got {
                addresses.push(a);
                allowed.push(ipam::host_net(a));
            }
            pool_name = Some(name);
        }

        // Overlap: within the peer itself and against every other peer.
        for (i, n) in allowed.iter().enumerate() {
            if let Some(prev) = allowed[..i]
                .iter()
                .find(|m| m.contains(n) || n.contains(*m))
            {
                return Err(err(
                    ErrorKind::InvalidArgument,
                    format!("allowed IPs {prev} and {n} of this peer overlap"),
                ));
            }
            if let Some(owner) = self.nets.overlap(n) {
                return Err(err(
                    ErrorKind::FailedPrecondition,
                    format!("allowed IP {n} overlaps peer {}", self.owner_name(&owner)),
                ));
            }
        }

        let p = Peer {
            public_key: np.public_key,
            preshared_key: np.preshared_key,
            allowed_ips: allowed,
            addresses,
            user: np.user.clone(),
            device: np.device.clone(),
            group: np.group.clone(),
            labels: np.labels.clone(),
            persistent_keepalive: np
                .persistent_keepalive
                .unwrap_or(self.settings.client_keepalive),
            created_at_ms: at_ms,
            expires_at_ms: np.expires_at_ms,
            state: np.state.unwrap_or(PeerState::Active),
            revision: index,
            pool: pool_name,
        };
        self.index_peer(&p);
        self.peers.insert(p.public_key, p.clone());
        Ok(p)
    }

    fn choose_pool(&self, np: &NewPeer) -> Res<String> {
        if let Some(n) = &np.pool {
            let Some(p) = self.pools.get(n) else {
                return Err(err(ErrorKind::NotFound, format!("no pool named {n:?}")));
            };
            if let Some(g) = &p.group {
                if g != &np.group {
                    return Err(err(
                        ErrorKind::FailedPrecondition,
                        format!(
                            "pool {n:?} is reserved for group {g:?}, peer is in group {:?}",
                            np.group
                        ),
                    ));
                }
            }
            return Ok(n.clone());
        }
        let for_group: Vec<&Pool> = self
            .pools
            .values()
            .filter(|p| !np.group.is_empty() && p.group.as_deref() == Some(np.group.as_str()))
            .collect();
        let candidates = if for_group.is_empty() {
            self.pools.values().filter(|p| p.group.is_none()).collect()
        } else {
            for_group
        };
        match candidates.as_slice() {
            [one] => Ok(one.name.clone()),
            [] => Err(err(
                ErrorKind::FailedPrecondition,
                "no pool to allocate from: add one with `anygatectl pool add` or give --allowed-ip",
            )),
            many => Err(err(
                ErrorKind::InvalidArgument,
                format!(
                    "several pools could serve this peer ({}); name one with --pool",
                    many.iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// One address per family the pool has, from its first CIDR of that
    /// family with room.
    fn allocate(&mut self, name: &str, also_taken: &[IpNet]) -> Res<Vec<IpAddr>> {
        let pool = self.pools.get(name).expect("chosen").clone();
        let max_probes = self.peers.len() as u128 + also_taken.len() as u128 + 1;
        let mut out = Vec::new();
        let mut cursors = pool.cursors.clone();
        for fam in [4u8, 6u8] {
            let mut wanted = false;
            let mut found = None;
            for (i, c) in pool.cidrs.iter().enumerate() {
                if ipam::span(c).0 != fam {
                    continue;
                }
                wanted = true;
                let used = |a: IpAddr| {
                    let h = ipam::host_net(a);
                    self.nets.overlap(&h).is_some() || also_taken.iter().any(|t| t.contains(&a))
                };
                if let Some(a) = ipam::find_free(c, cursors[i], max_probes, used) {
                    cursors[i] = ipam::span(&ipam::host_net(a)).1 + 1;
                    found = Some(a);
                    break;
                }
            }
            match (wanted, found) {
                (true, Some(a)) => out.push(a),
                (true, None) => {
                    return Err(err(
                        ErrorKind::ResourceExhausted,
                        format!("pool {name:?} has no free IPv{fam} address left"),
                    ))
                }
                _ => {}
            }
        }
        self.pools.get_mut(name).expect("chosen").cursors = cursors;
        Ok(out)
    }

    fn add_pool(
        &mut self,
        name: &str,
        cidrs: &[IpNet],
        group: &Option<String>,
        ch: &mut Changes,
    ) -> Res<Response> {
        if self.pools.contains_key(name) {
            return Err(err(
                ErrorKind::AlreadyExists,
                format!("pool {name:?} already exists"),
            ));
        }
        if cidrs.is_empty() {
            return Err(err(
                ErrorKind::InvalidArgument,
                "a pool needs at least one CIDR",
            ));
        }
        let cidrs: Vec<IpNet> = cidrs.iter().map(|c| c.trunc()).collect();
        for (i, c) in cidrs.iter().enumerate() {
            if ipam::capacity(c) == 0 {
                return Err(err(
                    ErrorKind::InvalidArgument,
                    format!("CIDR {c} has no usable address"),
                ));
            }
            if cidrs[..i].iter().any(|d| d.contains(c) || c.contains(d)) {
                return Err(err(
                    ErrorKind::InvalidArgument,
                    format!("CIDR {c} is given twice or overlaps"),
                ));
            }
            for p in self.pools.values() {
                if let Some(d) = p.cidrs.iter().find(|d| d.contains(c) || c.contains(*d)) {
                    return Err(err(
                        ErrorKind::FailedPrecondition,
                        format!("CIDR {c} overlaps {d} of pool {:?}", p.name),
                    ));
                }
            }
        }
        let pool = Pool {
            name: name.to_string(),
            cursors: vec![0; cidrs.len()],
            cidrs,
            group: group.clone(),
        };
        let view = self.pool_view(&pool);
        self.pools.insert(name.to_string(), pool);
        ch.pools.insert(name.to_string());
        ch.pool_set = true;
        Ok(Response::Pool(view))
    }
}

pub fn validate_settings(s: &Settings) -> Result<(), ApplyError> {
    let bad = |m: String| Err(err(ErrorKind::InvalidArgument, m));
    if let Err(e) = super::check_ifname(&s.interface) {
        return bad(e.to_string());
    }
    if s.listen_port == 0 {
        return bad("listen port must be 1-65535".into());
    }
    if !(576..=9000).contains(&s.mtu) {
        return bad(format!("MTU {} is outside 576-9000", s.mtu));
    }
    if let Some(Err(e)) = s.endpoint_host.as_deref().map(super::check_endpoint_host) {
        return bad(e.to_string());
    }
    if !(1_000..=10_000_000).contains(&s.audit_max_entries) {
        return bad(format!(
            "audit-max-entries {} is outside 1000-10000000",
            s.audit_max_entries
        ));
    }
    if !(1..=3650).contains(&s.audit_max_age_days) {
        return bad(format!(
            "audit-max-age-days {} is outside 1-3650",
            s.audit_max_age_days
        ));
    }
    for r in &s.routable_prefixes {
        let shortest = if r.addr().is_ipv4() { 8 } else { 16 };
        if r.prefix_len() < shortest {
            return bad(format!(
                "routable prefix {r} is too broad: client routes shorter than /{shortest} would take over a gateway's default route"
            ));
        }
        let anycast = [s.anycast_v4.map(IpAddr::V4), s.anycast_v6.map(IpAddr::V6)];
        if let Some(a) = anycast.into_iter().flatten().find(|a| r.contains(a)) {
            return bad(format!(
                "routable prefix {r} covers the anycast address {a}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
