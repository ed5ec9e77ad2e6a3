//! Bounds on every string and collection a replicated command carries, and
//! on the encoded size of one log entry. One oversized or escape-heavy
//! entry would otherwise be larger than a Raft message and stall every
//! later commit; so a request outside these bounds is refused before it is
//! proposed (`check_request` at the proposer) and again when it is applied
//! (raw entries, restores), with a message that names the field.
//!
//! README.md's limits table lists these numbers; change both together.

use super::policy::Policy;
use super::{ApplyError, Command, ErrorKind, NewPeer, PeerRef, Request, SettingsPatch};

/// Bytes of one encoded log entry (serde-JSON of the request). Far below
/// the Raft message limit (64 MiB), so one entry always fits one message.
pub const ENTRY_BYTES: usize = 8 * 1024 * 1024;
/// Peers in one AddPeers request (one log entry); endpoint records in one
/// endpoint write.
pub const PEERS_PER_REQUEST: usize = 5_000;
/// User, device and group names, label keys, node sites (bytes).
pub const NAME_BYTES: usize = 128;
/// One label value (bytes).
pub const LABEL_VALUE_BYTES: usize = 256;
/// Labels on one peer.
pub const LABELS: usize = 32;
/// Addresses plus allowed IPs of one peer.
pub const PEER_PREFIXES: usize = 256;
/// Pool names (bytes; letters, digits, `-`, `_`, `.`).
pub const POOL_NAME_BYTES: usize = 64;
/// CIDRs in one pool.
pub const POOL_CIDRS: usize = 16;
/// DNS servers in the settings.
pub const DNS_SERVERS: usize = 8;
/// Routes pushed to clients in the settings.
pub const CLIENT_ROUTES: usize = 256;
/// The actor recorded with a write (a certificate name, or a header).
pub const ACTOR_BYTES: usize = 256;
/// A client's request id.
pub const REQUEST_ID_BYTES: usize = 64;

fn invalid(msg: String) -> ApplyError {
    ApplyError::new(ErrorKind::InvalidArgument, msg)
}

/// A bounded, printable name: no control character (which JSON would
/// inflate sixfold and which would break every table and log line).
fn text(field: &str, s: &str, max: usize, required: bool) -> Result<(), ApplyError> {
    if required && s.is_empty() {
        return Err(invalid(format!("{field} is required")));
    }
    if s.len() > max {
        return Err(invalid(format!(
            "{field} is {} bytes; at most {max} are allowed",
            s.len()
        )));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{field} {:?} contains a control character",
            short(s)
        )));
    }
    Ok(())
}

/// The start of a long value, for error messages (never the whole of a
/// multi-megabyte input).
fn short(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn user_device(user: &str, device: &str) -> Result<(), ApplyError> {
    text("user", user, NAME_BYTES, true)?;
    text("device", device, NAME_BYTES, true)?;
    if user.contains('/') || device.contains('/') {
        return Err(invalid("user and device must not contain '/'".into()));
    }
    Ok(())
}

/// A pool name: 1-64 characters of `A-Z a-z 0-9 - _ .`.
pub fn check_pool_name(name: &str) -> Result<(), ApplyError> {
    let ok = !name.is_empty()
        && name.len() <= POOL_NAME_BYTES
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(invalid(format!(
            "pool name {:?} must be 1-{POOL_NAME_BYTES} characters of A-Z a-z 0-9 - _ .",
            short(name)
        )));
    }
    Ok(())
}

fn peer_ref(r: &PeerRef) -> Result<(), ApplyError> {
    match r {
        PeerRef::Key(_) => Ok(()),
        PeerRef::UserDevice(u, d) => user_device(u, d),
    }
}

/// Every bound on one new peer.
pub fn check_new_peer(p: &NewPeer) -> Result<(), ApplyError> {
    user_device(&p.user, &p.device)?;
    text("group", &p.group, NAME_BYTES, false)?;
    if p.allowed_ips.len() + p.addresses.len() > PEER_PREFIXES {
        return Err(invalid(format!(
            "a peer may have at most {PEER_PREFIXES} addresses and allowed IPs"
        )));
    }
    if p.labels.len() > LABELS {
        return Err(invalid(format!("a peer may have at most {LABELS} labels")));
    }
    for (k, v) in &p.labels {
        text("label name", k, NAME_BYTES, true)?;
        if k.contains('=') {
            return Err(invalid(format!("label name {:?} contains '='", short(k))));
        }
        text(&format!("label {k:?}"), v, LABEL_VALUE_BYTES, false)?;
    }
    if let Some(pool) = &p.pool {
        check_pool_name(pool)?;
    }
    Ok(())
}

fn settings(p: &SettingsPatch) -> Result<(), ApplyError> {
    if p.dns.as_ref().is_some_and(|d| d.len() > DNS_SERVERS) {
        return Err(invalid(format!("at most {DNS_SERVERS} DNS servers")));
    }
    if p.client_routes
        .as_ref()
        .is_some_and(|r| r.len() > CLIENT_ROUTES)
    {
        return Err(invalid(format!("at most {CLIENT_ROUTES} client routes")));
    }
    if p.routable_prefixes
        .as_ref()
        .is_some_and(|r| r.len() > CLIENT_ROUTES)
    {
        return Err(invalid(format!(
            "at most {CLIENT_ROUTES} routable prefixes"
        )));
    }
    if let Some(i) = &p.interface {
        text("interface", i, NAME_BYTES, true)?;
    }
    if let Some(Some(h)) = &p.endpoint_host {
        text("endpoint host", h, NAME_BYTES * 2, true)?;
    }
    Ok(())
}

fn policy(p: &Policy) -> Result<(), ApplyError> {
    text("policy group", &p.group, NAME_BYTES, true)?;
    p.validate().map_err(|e| invalid(e.to_string()))
}

/// Every string and collection of `cmd` within its bound.
pub fn check_command(cmd: &Command) -> Result<(), ApplyError> {
    match cmd {
        Command::AddPeers(list) => {
            if list.is_empty() {
                return Err(invalid("no peers given".into()));
            }
            if list.len() > PEERS_PER_REQUEST {
                return Err(invalid(format!(
                    "request too large: {} peers, at most {PEERS_PER_REQUEST} per request; send them in batches",
                    list.len()
                )));
            }
            for (i, p) in list.iter().enumerate() {
                check_new_peer(p).map_err(|e| match list.len() {
                    1 => e,
                    _ => invalid(format!("peer {} ({}): {}", i + 1, p.public_key, e.message)),
                })?;
            }
            Ok(())
        }
        Command::SetPeerState { peer, .. }
        | Command::RemovePeer { peer }
        | Command::RotatePeer { peer, .. } => peer_ref(peer),
        Command::ExpirePeers => Ok(()),
        Command::AddPool { name, cidrs, group } => {
            check_pool_name(name)?;
            if cidrs.is_empty() || cidrs.len() > POOL_CIDRS {
                return Err(invalid(format!("a pool needs 1-{POOL_CIDRS} CIDRs")));
            }
            match group {
                Some(g) => text("pool group", g, NAME_BYTES, true),
                None => Ok(()),
            }
        }
        Command::RemovePool { name } => text("pool name", name, POOL_NAME_BYTES, true),
        Command::SetSettings(p) => settings(p),
        Command::UpdateEndpoints(e) if e.len() > PEERS_PER_REQUEST => Err(invalid(format!(
            "at most {PEERS_PER_REQUEST} endpoint records per write"
        ))),
        Command::UpdateEndpoints(_) => Ok(()),
        Command::SetNodeFlags { site, .. } => match site {
            Some(Some(s)) => text("site", s, NAME_BYTES, true),
            _ => Ok(()),
        },
        Command::Denied { method, role } => {
            text("method", method, NAME_BYTES, true)?;
            text("role", role, NAME_BYTES, true)
        }
        Command::AddPolicy(p) => policy(p),
        Command::RemovePolicy { name } => text("policy name", name, NAME_BYTES, true),
        Command::RevokeKeys(k) if k.is_empty() || k.len() > PEERS_PER_REQUEST => Err(invalid(
            format!("revoke 1-{PEERS_PER_REQUEST} keys per request"),
        )),
        Command::RevokeKeys(_) => Ok(()),
        Command::SecretRead { object } => text("object", object, NAME_BYTES * 2, true),
        Command::MapIdpGroup(m) => m.validate().map_err(|e| invalid(e.to_string())),
        Command::UnmapIdpGroup { claim } => {
            super::idp::check_claim(claim).map_err(|e| invalid(e.to_string()))
        }
        Command::Enroll { peer, .. } => check_new_peer(peer),
        Command::RenewUser { user, .. } => text("user", user, NAME_BYTES, true),
        Command::SignIn { subject, error } => {
            text("subject", subject, NAME_BYTES * 2, true)?;
            match error {
                Some(e) => text("reason", e, NAME_BYTES * 2, true),
                None => Ok(()),
            }
        }
        Command::InitPortalKey(_) => Ok(()),
        Command::RevokeCertificates(s) if s.is_empty() || s.len() > 100 => Err(invalid(
            "revoke 1-100 certificate serials per request".into(),
        )),
        Command::RevokeCertificates(serials) => {
            for s in serials {
                let hex = s
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
                if s.is_empty() || s.len() > 40 || !hex {
                    return Err(invalid(format!(
                        "certificate serial {:?} must be 1-40 lowercase hex digits",
                        short(s)
                    )));
                }
            }
            Ok(())
        }
    }
}

/// Counts bytes without keeping them.
struct Count(usize);

impl std::io::Write for Count {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len();
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The size of `req` as a log entry (the store and the transport encode
/// it as serde-JSON).
pub fn encoded_len(req: &Request) -> usize {
    let mut c = Count(0);
    serde_json::to_writer(&mut c, req).expect("a request serialises");
    c.0
}

/// Everything a proposer checks before a request enters the log: the
/// actor, the request id, every field bound, and the encoded size.
pub fn check_request(req: &Request) -> Result<(), ApplyError> {
    check_fields(req)?;
    let n = encoded_len(req);
    if n > ENTRY_BYTES {
        return Err(ApplyError::new(
            ErrorKind::ResourceExhausted,
            format!(
                "request too large: it encodes to {:.1} MiB, one write may be at most {} MiB; send fewer peers per request",
                n as f64 / (1024.0 * 1024.0),
                ENTRY_BYTES / (1024 * 1024)
            ),
        ));
    }
    Ok(())
}

/// [`check_request`] without the size (the state machine's check: an
/// entry that is already in the log had its size checked when proposed).
pub fn check_fields(req: &Request) -> Result<(), ApplyError> {
    text("actor", &req.actor, ACTOR_BYTES, false)?;
    if let Some(id) = &req.request_id {
        text("request id", id, REQUEST_ID_BYTES, true)?;
    }
    check_command(&req.cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{WgKey, DEFAULT_KEEPALIVE};
    use std::collections::BTreeMap;

    fn peer(i: u32) -> NewPeer {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        NewPeer {
            public_key: WgKey(k),
            preshared_key: None,
            allowed_ips: vec![],
            addresses: vec![],
            user: format!("u{i}"),
            device: "laptop".into(),
            group: "eng".into(),
            labels: BTreeMap::new(),
            persistent_keepalive: Some(DEFAULT_KEEPALIVE),
            expires_at_ms: None,
            pool: None,
            state: None,
        }
    }

    fn req(cmd: Command) -> Request {
        Request {
            actor: "ops".into(),
            at_ms: 0,
            request_id: None,
            cmd,
        }
    }

    fn refused(cmd: Command, needle: &str) {
        let e = check_request(&req(cmd)).expect_err(needle);
        assert!(
            e.message.contains(needle),
            "{:?} lacks {needle:?}",
            e.message
        );
        assert!(
            e.message.len() < 300,
            "message too long: {}",
            e.message.len()
        );
    }

    #[test]
    fn every_string_and_collection_is_bounded() {
        assert!(check_request(&req(Command::AddPeers(vec![peer(1)]))).is_ok());
        let with = |f: &dyn Fn(&mut NewPeer)| {
            let mut p = peer(1);
            f(&mut p);
            Command::AddPeers(vec![p])
        };
        // The finding: a 14 MB label of control characters.
        refused(
            with(&|p| {
                p.labels.insert("note".into(), "\u{1}".repeat(14_000_000));
            }),
            "at most 256 are allowed",
        );
        refused(
            with(&|p| {
                p.labels.insert("note".into(), "a\u{7}b".into());
            }),
            "control character",
        );
        refused(
            with(&|p| {
                p.labels.insert("x".repeat(129), "v".into());
            }),
            "label name is 129 bytes",
        );
        refused(
            with(&|p| {
                p.labels.insert("a=b".into(), "v".into());
            }),
            "contains '='",
        );
        refused(
            with(&|p| {
                for i in 0..=LABELS {
                    p.labels.insert(format!("k{i}"), "v".into());
                }
            }),
            "at most 32 labels",
        );
        refused(with(&|p| p.group = "g".repeat(129)), "group is 129 bytes");
        refused(with(&|p| p.user = "a/b".into()), "must not contain '/'");
        refused(with(&|p| p.device = String::new()), "device is required");
        refused(with(&|p| p.pool = Some("p\n".into())), "pool name");
        refused(
            Command::AddPool {
                name: "p".into(),
                cidrs: vec!["10.0.0.0/24".parse().unwrap()],
                group: Some("\u{1}".repeat(1_000_000)),
            },
            "pool group is 1000000 bytes",
        );
        refused(
            Command::RemovePeer {
                peer: PeerRef::UserDevice("u".repeat(10_000), "d".into()),
            },
            "user is 10000 bytes",
        );
        refused(
            Command::SetNodeFlags {
                node: 1,
                drained: None,
                site: Some(Some("s\r".into())),
            },
            "control character",
        );
        refused(
            Command::AddPeers((0..=PEERS_PER_REQUEST as u32).map(peer).collect()),
            "at most 5000 per request",
        );
        refused(Command::AddPeers(vec![]), "no peers given");
        let mut r = req(Command::ExpirePeers);
        r.request_id = Some("x".repeat(65));
        assert!(check_request(&r).is_err());
        r.request_id = None;
        r.actor = "a".repeat(ACTOR_BYTES + 1);
        assert!(check_request(&r).is_err());
    }

    #[test]
    fn the_encoded_entry_is_bounded_even_when_each_field_is_within_bounds() {
        // Quotes are within every field bound but double in JSON.
        let quotes = "\"".repeat(LABEL_VALUE_BYTES);
        let peers: Vec<NewPeer> = (0..1_100)
            .map(|i| {
                let mut p = peer(i);
                for l in 0..LABELS {
                    p.labels.insert(format!("l{l}"), quotes.clone());
                }
                p
            })
            .collect();
        let r = req(Command::AddPeers(peers));
        assert!(check_fields(&r).is_ok());
        assert!(encoded_len(&r) > ENTRY_BYTES);
        let e = check_request(&r).unwrap_err();
        assert_eq!(e.kind, ErrorKind::ResourceExhausted);
        assert!(
            e.message.contains("one write may be at most 8 MiB"),
            "{}",
            e.message
        );
        // A normal 5,000-peer import is far below it.
        let r = req(Command::AddPeers((0..5_000).map(peer).collect()));
        assert!(encoded_len(&r) < ENTRY_BYTES / 4, "{}", encoded_len(&r));
    }

    #[test]
    fn certificate_serials_are_hex() {
        let ok = Command::RevokeCertificates(vec!["1f".into(), "a".repeat(40)]);
        assert!(check_request(&req(ok)).is_ok());
        refused(
            Command::RevokeCertificates(vec!["1F".into()]),
            "lowercase hex",
        );
        refused(
            Command::RevokeCertificates(vec!["a".repeat(41)]),
            "1-40 lowercase hex",
        );
        refused(
            Command::RevokeCertificates(vec![]),
            "1-100 certificate serials",
        );
    }

    #[test]
    fn error_messages_show_only_the_start_of_a_long_value() {
        let e = check_pool_name(&"p".repeat(1_000_000)).unwrap_err();
        assert!(e.message.len() < 200, "{}", e.message);
    }
}
