//! Conversions between protobuf messages and domain types. Parsing here is
//! syntax only (keys, CIDRs, addresses); anything that depends on state is
//! checked in `apply`.

use super::status::invalid;
use crate::model::limits;
use crate::model::*;
use anygate_proto::v1 as pb;
use ipnet::IpNet;
use std::net::IpAddr;
use tonic::Status;

pub fn key(field: &str, s: &str) -> Result<WgKey, Status> {
    s.parse::<WgKey>()
        .map_err(|e| invalid(format!("{field}: {e}")))
}

pub fn cidr(field: &str, s: &str) -> Result<IpNet, Status> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n);
    }
    s.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
        invalid(format!(
            "{field}: {s:?} is not a CIDR (like 10.0.0.0/24 or fd00::/64)"
        ))
    })
}

pub fn addr(field: &str, s: &str) -> Result<IpAddr, Status> {
    s.trim()
        .parse::<IpAddr>()
        .map_err(|_| invalid(format!("{field}: {s:?} is not an IP address")))
}

pub fn peer_ref(s: &str) -> Result<PeerRef, Status> {
    PeerRef::parse(s).map_err(invalid)
}

/// Syntax here; every bound (names, labels, counts) is
/// [`limits::check_new_peer`], the state machine's own check.
pub fn new_peer(s: &pb::PeerSpec) -> Result<NewPeer, Status> {
    if s.allowed_ips.len() + s.addresses.len() > limits::PEER_PREFIXES {
        return Err(invalid(format!(
            "a peer may have at most {} addresses and allowed IPs",
            limits::PEER_PREFIXES
        )));
    }
    let keepalive = match s.persistent_keepalive {
        Some(k) if k > 65535 => {
            return Err(invalid("persistent_keepalive must be 0-65535 seconds"))
        }
        k => k.map(|k| k as u16),
    };
    let p = NewPeer {
        public_key: key("public_key", &s.public_key)?,
        preshared_key: s
            .preshared_key
            .as_deref()
            .map(|k| key("preshared_key", k))
            .transpose()?,
        allowed_ips: s
            .allowed_ips
            .iter()
            .map(|c| cidr("allowed_ips", c))
            .collect::<Result<_, _>>()?,
        addresses: s
            .addresses
            .iter()
            .map(|a| addr("addresses", a))
            .collect::<Result<_, _>>()?,
        user: s.user.clone(),
        device: s.device.clone(),
        group: s.group.clone(),
        labels: s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        persistent_keepalive: keepalive,
        expires_at_ms: s.expires_at_ms,
        pool: (!s.pool.is_empty()).then(|| s.pool.clone()),
        state: state_from_pb(s.state)?,
    };
    limits::check_new_peer(&p).map_err(|e| invalid(e.message))?;
    Ok(p)
}

pub fn state_to_pb(s: PeerState) -> pb::PeerState {
    match s {
        PeerState::Active => pb::PeerState::Active,
        PeerState::Disabled => pb::PeerState::Disabled,
        PeerState::Revoked => pb::PeerState::Revoked,
    }
}

pub fn state_from_pb(s: i32) -> Result<Option<PeerState>, Status> {
    match pb::PeerState::try_from(s) {
        Ok(pb::PeerState::Unspecified) => Ok(None),
        Ok(pb::PeerState::Active) => Ok(Some(PeerState::Active)),
        Ok(pb::PeerState::Disabled) => Ok(Some(PeerState::Disabled)),
        Ok(pb::PeerState::Revoked) => Ok(Some(PeerState::Revoked)),
        Err(_) => Err(invalid(format!("unknown peer state {s}"))),
    }
}

pub fn peer_to_pb(p: &Peer, secrets: bool) -> pb::Peer {
    pb::Peer {
        public_key: p.public_key.to_string(),
        has_preshared_key: p.preshared_key.is_some(),
        allowed_ips: p.allowed_ips.iter().map(|n| n.to_string()).collect(),
        addresses: p.addresses.iter().map(|a| a.to_string()).collect(),
        user: p.user.clone(),
        device: p.device.clone(),
        group: p.group.clone(),
        labels: p
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        persistent_keepalive: p.persistent_keepalive as u32,
        created_at_ms: p.created_at_ms,
        expires_at_ms: p.expires_at_ms,
        state: state_to_pb(p.state) as i32,
        revision: p.revision,
        pool: p.pool.clone().unwrap_or_default(),
        preshared_key: if secrets {
            p.preshared_key.map(|k| k.to_string())
        } else {
            None
        },
    }
}

pub fn pool_to_pb(p: &PoolView) -> pb::Pool {
    pb::Pool {
        name: p.name.clone(),
        cidrs: p.cidrs.iter().map(|c| c.to_string()).collect(),
        group: p.group.clone().unwrap_or_default(),
        allocated: p.allocated,
        capacity: p.capacity,
    }
}

pub fn settings_to_pb(s: &Settings) -> pb::GatewaySettings {
    pb::GatewaySettings {
        interface: s.interface.clone(),
        listen_port: s.listen_port as u32,
        server_public_key: s
            .server_public_key
            .map(|k| k.to_string())
            .unwrap_or_default(),
        mtu: s.mtu as u32,
        anycast_v4: s.anycast_v4.map(|a| a.to_string()).unwrap_or_default(),
        anycast_v6: s.anycast_v6.map(|a| a.to_string()).unwrap_or_default(),
        dns: s.dns.iter().map(|a| a.to_string()).collect(),
        return_mode: s.return_mode.to_string(),
        client_keepalive: s.client_keepalive as u32,
        endpoint_host: s.endpoint_host.clone().unwrap_or_default(),
        client_routes: s.client_routes.iter().map(|c| c.to_string()).collect(),
        routable_prefixes: s.routable_prefixes.iter().map(|c| c.to_string()).collect(),
        audit_max_entries: s.audit_max_entries,
        audit_max_age_days: s.audit_max_age_days,
    }
}

fn cidrs_if(set: bool, field: &str, v: &[String]) -> Result<Option<Vec<IpNet>>, Status> {
    if !set {
        return Ok(None);
    }
    v.iter()
        .map(|c| cidr(field, c))
        .collect::<Result<_, _>>()
        .map(Some)
}

fn opt<T>(
    s: &Option<String>,
    f: impl Fn(&str) -> Result<T, Status>,
) -> Result<Option<Option<T>>, Status> {
    match s.as_deref() {
        None => Ok(None),
        Some("") => Ok(Some(None)),
        Some(v) => Ok(Some(Some(f(v)?))),
    }
}

fn port16(field: &str, v: Option<u32>) -> Result<Option<u16>, Status> {
    v.map(|v| u16::try_from(v).map_err(|_| invalid(format!("{field} {v} does not fit 0-65535"))))
        .transpose()
}

pub fn settings_patch(p: &pb::SettingsPatch) -> Result<SettingsPatch, Status> {
    Ok(SettingsPatch {
        interface: p.interface.clone(),
        listen_port: port16("listen_port", p.listen_port)?,
        server_public_key: opt(&p.server_public_key, |v| key("server_public_key", v))?,
        mtu: port16("mtu", p.mtu)?,
        anycast_v4: opt(&p.anycast_v4, |v| {
            v.parse()
                .map_err(|_| invalid(format!("anycast_v4: {v:?} is not an IPv4 address")))
        })?,
        anycast_v6: opt(&p.anycast_v6, |v| {
            v.parse()
                .map_err(|_| invalid(format!("anycast_v6: {v:?} is not an IPv6 address")))
        })?,
        dns: if p.set_dns {
            Some(
                p.dns
                    .iter()
                    .map(|a| addr("dns", a))
                    .collect::<Result<_, _>>()?,
            )
        } else {
            None
        },
        return_mode: p
            .return_mode
            .as_deref()
            .map(|m| m.parse().map_err(invalid))
            .transpose()?,
        client_keepalive: port16("client_keepalive", p.client_keepalive)?,
        endpoint_host: opt(&p.endpoint_host, |v| {
            crate::model::check_endpoint_host(v).map_err(invalid)?;
            Ok(v.to_string())
        })?,
        client_routes: cidrs_if(p.set_client_routes, "client_routes", &p.client_routes)?,
        routable_prefixes: cidrs_if(
            p.set_routable_prefixes,
            "routable_prefixes",
            &p.routable_prefixes,
        )?,
        audit_max_entries: p.audit_max_entries,
        audit_max_age_days: p.audit_max_age_days,
    })
}

pub fn audit_to_pb(a: &AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        index: a.index,
        actor: a.actor.clone(),
        at_ms: a.at_ms,
        action: a.action.clone(),
        object: a.object.clone(),
        detail: a.detail.clone(),
        error: a.error.clone().unwrap_or_default(),
    }
}

pub fn revoked_to_pb(k: &WgKey, r: &Revocation) -> pb::RevokedKey {
    pb::RevokedKey {
        public_key: k.to_string(),
        revoked_at_ms: r.at_ms,
        index: r.index,
    }
}
