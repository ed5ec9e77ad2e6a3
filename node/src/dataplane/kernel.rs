//! Kernel WireGuard over generic netlink (`wireguard` family).
//!
//! Reads are one multi-part GET_DEVICE dump (a peer's allowed IPs may
//! continue in the next part: entries with the same key are merged; an
//! interrupted dump is retried). Writes are SET_DEVICE messages packed up to
//! `MESSAGE_BUDGET` bytes, as `wg setconf` does: device fields only in the
//! first message, and a peer whose allowed IPs do not fit is continued in the
//! next message with just its key and `UpdateOnly`. Peers are changed one by
//! one (never `REPLACE_PEERS`), so a partly applied batch is never a wipe.

use super::{Action, DataplaneError, Observed, ObservedPeer, PeerConfig, PeerStats};
use crate::model::WgKey;
use futures::StreamExt;
use genetlink::GenetlinkHandle;
use ipnet::IpNet;
use netlink_packet_core::{
    Emitable, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};

/// Attribute bytes per SET_DEVICE message (wg(8) uses one page).
pub const MESSAGE_BUDGET: usize = 4096;
/// SET_DEVICE messages in flight at once.
const PIPELINE: usize = 16;

#[derive(Clone)]
pub struct KernelWg {
    ifname: String,
    handle: GenetlinkHandle,
}

fn nl_err(what: &str, e: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::Protocol(format!("netlink {what}: {e}"))
}

impl KernelWg {
    /// Opens a generic netlink connection (its event loop runs on the current
    /// tokio runtime).
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn new(ifname: &str) -> Result<Self, DataplaneError> {
        let (conn, handle, _) = genetlink::new_connection().map_err(|e| DataplaneError::Io {
            path: "netlink (generic)".into(),
            source: e,
        })?;
        tokio::spawn(conn);
        Ok(KernelWg {
            ifname: ifname.to_string(),
            handle,
        })
    }

    /// The same device over a new netlink socket.
    pub fn separate(&self) -> Result<Self, DataplaneError> {
        KernelWg::new(&self.ifname)
    }

    /// Whether this kernel has the WireGuard module (loaded or built in).
    pub fn module_present() -> bool {
        std::path::Path::new("/sys/module/wireguard").exists()
    }

    pub async fn get(&self) -> Result<Observed, DataplaneError> {
        for _ in 0..5 {
            if let Some(obs) = self.dump_once().await? {
                return Ok(obs);
            }
        }
        Err(DataplaneError::Protocol(
            "device dump interrupted 5 times in a row (peers changing underneath)".into(),
        ))
    }

    /// One dump; `None` when the kernel flagged it as interrupted.
    async fn dump_once(&self) -> Result<Option<Observed>, DataplaneError> {
        let msg = WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::IfName(self.ifname.clone())],
        };
        let mut req = NetlinkMessage::from(GenlMessage::from_payload(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut handle = self.handle.clone();
        let mut stream = handle
            .request(req)
            .await
            .map_err(|e| nl_err("request", e))?;
        let mut obs = Observed::default();
        let mut interrupted = false;
        while let Some(part) = stream.next().await {
            let part = part.map_err(|e| nl_err("decode", e))?;
            if part.header.flags & NLM_F_DUMP_INTR != 0 {
                interrupted = true;
            }
            match part.payload {
                NetlinkPayload::InnerMessage(g) => merge_part(&mut obs, g.payload)?,
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(errno(e.raw_code(), &format!("dump {}", self.ifname)));
                }
                _ => {}
            }
        }
        Ok((!interrupted).then_some(obs))
    }

    /// Messages go out in order with up to `PIPELINE` awaiting their ack
    /// (the kernel handles one socket's messages in order).
    pub async fn set(&self, actions: &[Action]) -> Result<(), DataplaneError> {
        let mut acks = futures::stream::iter(encode_set(&self.ifname, actions))
            .map(|attrs| self.send_set(attrs))
            .buffered(PIPELINE);
        while let Some(r) = acks.next().await {
            r?;
        }
        Ok(())
    }

    async fn send_set(&self, attributes: Vec<WireguardAttribute>) -> Result<(), DataplaneError> {
        let msg = WireguardMessage {
            cmd: WireguardCmd::SetDevice,
            attributes,
        };
        let mut req = NetlinkMessage::from(GenlMessage::from_payload(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let mut handle = self.handle.clone();
        let mut stream = handle
            .request(req)
            .await
            .map_err(|e| nl_err("request", e))?;
        while let Some(part) = stream.next().await {
            if let NetlinkPayload::Error(e) = part.map_err(|e| nl_err("decode", e))?.payload {
                if e.code.is_some() {
                    return Err(errno(e.raw_code(), &format!("set {}", self.ifname)));
                }
            }
        }
        Ok(())
    }
}

fn errno(raw: i32, what: &str) -> DataplaneError {
    DataplaneError::Errno {
        errno: -raw,
        what: format!("{what}: {}", std::io::Error::from_raw_os_error(-raw)),
    }
}

fn merge_part(obs: &mut Observed, msg: WireguardMessage) -> Result<(), DataplaneError> {
    for a in msg.attributes {
        match a {
            WireguardAttribute::PrivateKey(k) => obs.private_key = (k != [0; 32]).then_some(k),
            WireguardAttribute::ListenPort(p) => obs.listen_port = p,
            WireguardAttribute::Fwmark(m) => obs.fwmark = m,
            WireguardAttribute::Peers(peers) => {
                for p in peers {
                    merge_peer(obs, p)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn merge_peer(obs: &mut Observed, p: WireguardPeer) -> Result<(), DataplaneError> {
    let mut key = None;
    let mut cfg = PeerConfig {
        public_key: WgKey([0; 32]),
        preshared_key: None,
        endpoint: None,
        persistent_keepalive: 0,
        allowed_ips: vec![],
    };
    let mut stats = PeerStats::default();
    for a in p.0 {
        match a {
            WireguardPeerAttribute::PublicKey(k) => key = Some(WgKey(k)),
            WireguardPeerAttribute::PresharedKey(k) => {
                cfg.preshared_key = (k != [0; 32]).then_some(WgKey(k))
            }
            WireguardPeerAttribute::Endpoint(e) => cfg.endpoint = Some(e),
            WireguardPeerAttribute::PersistentKeepalive(s) => cfg.persistent_keepalive = s,
            WireguardPeerAttribute::LastHandshake(t) => {
                stats.last_handshake = (t.seconds.max(0) as u64, t.nano_seconds.max(0) as u32)
            }
            WireguardPeerAttribute::RxBytes(b) => stats.rx_bytes = b,
            WireguardPeerAttribute::TxBytes(b) => stats.tx_bytes = b,
            WireguardPeerAttribute::AllowedIps(ips) => {
                for ip in ips {
                    cfg.allowed_ips.push(allowed_ip_of(&ip)?);
                }
            }
            _ => {}
        }
    }
    let key = key.ok_or_else(|| DataplaneError::Protocol("peer without a public key".into()))?;
    cfg.public_key = key;
    match obs.peers.get_mut(&key) {
        // The continuation of a peer whose allowed IPs spilled over.
        Some(have) => {
            have.config.allowed_ips.extend(cfg.allowed_ips);
            have.config.allowed_ips.sort();
        }
        None => {
            cfg.allowed_ips.sort();
            obs.peers.insert(key, ObservedPeer { config: cfg, stats });
        }
    }
    Ok(())
}

fn allowed_ip_of(ip: &WireguardAllowedIp) -> Result<IpNet, DataplaneError> {
    let (mut addr, mut cidr) = (None, None);
    for a in &ip.0 {
        match a {
            WireguardAllowedIpAttr::IpAddr(a) => addr = Some(*a),
            WireguardAllowedIpAttr::Cidr(c) => cidr = Some(*c),
            _ => {}
        }
    }
    match (addr, cidr) {
        (Some(a), Some(c)) => {
            IpNet::new(a, c).map_err(|e| DataplaneError::Protocol(format!("allowed ip: {e}")))
        }
        _ => Err(DataplaneError::Protocol("incomplete allowed ip".into())),
    }
}

fn allowed_ip(n: &IpNet) -> WireguardAllowedIp {
    let family = match n {
        IpNet::V4(_) => WireguardAddressFamily::Ipv4,
        IpNet::V6(_) => WireguardAddressFamily::Ipv6,
    };
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(family),
        WireguardAllowedIpAttr::IpAddr(n.addr()),
        WireguardAllowedIpAttr::Cidr(n.prefix_len()),
    ])
}

/// Peer attributes for one action, without allowed IPs (added separately so
/// they can be split), and the allowed IPs to add after it, if any.
fn peer_head(a: &Action) -> Option<(Vec<WireguardPeerAttribute>, Option<&[IpNet]>)> {
    use WireguardPeerAttribute as P;
    match a {
        Action::SetDevice(_) => None,
        Action::RemovePeer(k) => Some((
            vec![P::PublicKey(k.0), P::Flags(WireguardPeerFlags::RemoveMe)],
            None,
        )),
        Action::AddPeer(p) => {
            let mut v = vec![
                P::PublicKey(p.public_key.0),
                P::Flags(WireguardPeerFlags::ReplaceAllowedIps),
                P::PresharedKey(p.preshared_key.map(|k| k.0).unwrap_or([0; 32])),
                P::PersistentKeepalive(p.persistent_keepalive),
            ];
            if let Some(e) = p.endpoint {
                v.push(P::Endpoint(e));
            }
            Some((v, Some(&p.allowed_ips)))
        }
        Action::UpdatePeer {
            public_key,
            preshared_key,
            endpoint,
            persistent_keepalive,
            allowed_ips,
        } => {
            let mut flags = WireguardPeerFlags::UpdateOnly;
            if allowed_ips.is_some() {
                flags |= WireguardPeerFlags::ReplaceAllowedIps;
            }
            let mut v = vec![P::PublicKey(public_key.0), P::Flags(flags)];
            if let Some(psk) = preshared_key {
                v.push(P::PresharedKey(psk.map(|k| k.0).unwrap_or([0; 32])));
            }
            if let Some(e) = endpoint {
                v.push(P::Endpoint(*e));
            }
            if let Some(k) = persistent_keepalive {
                v.push(P::PersistentKeepalive(*k));
            }
            Some((v, allowed_ips.as_deref()))
        }
    }
}

fn peer_len(p: &WireguardPeer) -> usize {
    WireguardAttribute::Peers(vec![p.clone()]).buffer_len()
        - WireguardAttribute::Peers(vec![]).buffer_len()
}

fn ip_len(ip: &WireguardAllowedIp) -> usize {
    [WireguardPeerAttribute::AllowedIps(vec![ip.clone()])]
        .as_slice()
        .buffer_len()
        - [WireguardPeerAttribute::AllowedIps(vec![])]
            .as_slice()
            .buffer_len()
}

/// SET_DEVICE attribute lists, each at most `MESSAGE_BUDGET` bytes. Pure, so
/// the splitting is unit-tested.
pub fn encode_set(ifname: &str, actions: &[Action]) -> Vec<Vec<WireguardAttribute>> {
    let base = WireguardAttribute::IfName(ifname.to_string());
    let mut head = vec![base.clone()];
    for a in actions {
        if let Action::SetDevice(d) = a {
            head.push(WireguardAttribute::PrivateKey(d.private_key));
            head.push(WireguardAttribute::ListenPort(d.listen_port));
            head.push(WireguardAttribute::Fwmark(d.fwmark));
        }
    }
    let empty_peers = WireguardAttribute::Peers(vec![]).buffer_len();
    let list_hdr = [WireguardPeerAttribute::AllowedIps(vec![])]
        .as_slice()
        .buffer_len();
    let mut msgs = Vec::new();
    let mut peers: Vec<WireguardPeer> = Vec::new();
    let mut used = head.as_slice().buffer_len() + empty_peers;
    let mut flush =
        |head: &mut Vec<WireguardAttribute>, peers: &mut Vec<WireguardPeer>, used: &mut usize| {
            let mut m = std::mem::replace(head, vec![base.clone()]);
            if !peers.is_empty() {
                m.push(WireguardAttribute::Peers(std::mem::take(peers)));
            }
            msgs.push(m);
            *used = [base.clone()].as_slice().buffer_len() + empty_peers;
        };
    for a in actions {
        let Some((attrs, ips)) = peer_head(a) else {
            continue;
        };
        let key = match &attrs[0] {
            WireguardPeerAttribute::PublicKey(k) => *k,
            _ => unreachable!("peer_head starts with the key"),
        };
        let mut ips = ips.unwrap_or(&[]).iter().peekable();
        let mut p = WireguardPeer(attrs);
        loop {
            let plen = peer_len(&p);
            // Room for the head and at least its first allowed IP.
            let first_ip = ips
                .peek()
                .map(|n| list_hdr + ip_len(&allowed_ip(n)))
                .unwrap_or(0);
            if used + plen + first_ip > MESSAGE_BUDGET && !peers.is_empty() {
                flush(&mut head, &mut peers, &mut used);
            }
            let mut list = Vec::new();
            let mut list_len = list_hdr;
            while let Some(n) = ips.peek() {
                let ip = allowed_ip(n);
                let l = ip_len(&ip);
                if used + plen + list_len + l > MESSAGE_BUDGET && !list.is_empty() {
                    break;
                }
                list.push(ip);
                list_len += l;
                ips.next();
            }
            if !list.is_empty() {
                p.0.push(WireguardPeerAttribute::AllowedIps(list));
            }
            used += peer_len(&p);
            peers.push(p);
            if ips.peek().is_none() {
                break;
            }
            // Continue this peer in the next message: key + UpdateOnly.
            flush(&mut head, &mut peers, &mut used);
            p = WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey(key),
                WireguardPeerAttribute::Flags(WireguardPeerFlags::UpdateOnly),
            ]);
        }
    }
    if !peers.is_empty() || head.len() > 1 {
        flush(&mut head, &mut peers, &mut used);
    }
    msgs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::DeviceSettings;

    fn k(i: u32) -> WgKey {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&i.to_be_bytes());
        b[31] = 1;
        WgKey(b)
    }
    fn add(i: u32, n_ips: u32) -> Action {
        Action::AddPeer(PeerConfig {
            public_key: k(i),
            preshared_key: None,
            endpoint: Some("192.0.2.7:5000".parse().unwrap()),
            persistent_keepalive: 0,
            allowed_ips: (0..n_ips)
                .map(|j| {
                    format!("10.{}.{}.{}/32", i % 200, j / 250, j % 250)
                        .parse()
                        .unwrap()
                })
                .collect(),
        })
    }

    /// Decode the messages back into what the kernel would end up holding.
    fn replay(msgs: &[Vec<WireguardAttribute>]) -> Observed {
        let mut obs = Observed::default();
        for m in msgs {
            assert!(
                m.as_slice().buffer_len() <= MESSAGE_BUDGET,
                "message over budget"
            );
            merge_part(
                &mut obs,
                WireguardMessage {
                    cmd: WireguardCmd::SetDevice,
                    attributes: m.clone(),
                },
            )
            .unwrap();
        }
        obs
    }

    #[test]
    fn many_peers_are_split_by_size_and_nothing_is_lost() {
        let mut actions = vec![Action::SetDevice(DeviceSettings {
            private_key: [9; 32],
            listen_port: 51820,
            fwmark: 0,
        })];
        actions.extend((0..10_000).map(|i| add(i, 2)));
        let msgs = encode_set("wg0", &actions);
        assert!(msgs.len() > 50, "10k peers in {} messages", msgs.len());
        // Device fields only in the first message.
        for (i, m) in msgs.iter().enumerate() {
            let has_key = m
                .iter()
                .any(|a| matches!(a, WireguardAttribute::PrivateKey(_)));
            assert_eq!(has_key, i == 0);
        }
        let obs = replay(&msgs);
        assert_eq!(obs.peers.len(), 10_000);
        assert!(obs.peers.values().all(|p| p.config.allowed_ips.len() == 2));
    }

    #[test]
    fn a_peer_with_more_ips_than_fit_is_continued_with_update_only() {
        let msgs = encode_set("wg0", &[add(1, 5), add(2, 1000), add(3, 1)]);
        assert!(msgs.len() >= 3, "{} messages", msgs.len());
        let obs = replay(&msgs);
        assert_eq!(obs.peers[&k(2)].config.allowed_ips.len(), 1000);
        assert_eq!(obs.peers[&k(1)].config.allowed_ips.len(), 5);
        assert_eq!(obs.peers[&k(3)].config.allowed_ips.len(), 1);
        // Continuations carry UpdateOnly and no ReplaceAllowedIps.
        let mut firsts = 0;
        for m in &msgs {
            for a in m {
                if let WireguardAttribute::Peers(ps) = a {
                    for p in ps {
                        if p.0[0] == WireguardPeerAttribute::PublicKey(k(2).0) {
                            let WireguardPeerAttribute::Flags(f) = p.0[1] else {
                                panic!("flags second")
                            };
                            if f.contains(WireguardPeerFlags::ReplaceAllowedIps) {
                                firsts += 1;
                            } else {
                                assert!(f.contains(WireguardPeerFlags::UpdateOnly));
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(firsts, 1, "allowed IPs replaced exactly once");
    }

    #[test]
    fn removals_and_updates_encode() {
        let msgs = encode_set(
            "wg0",
            &[
                Action::RemovePeer(k(1)),
                Action::UpdatePeer {
                    public_key: k(2),
                    preshared_key: None,
                    endpoint: Some("[2001:db8::1]:51820".parse().unwrap()),
                    persistent_keepalive: Some(25),
                    allowed_ips: None,
                },
            ],
        );
        assert_eq!(msgs.len(), 1);
        let WireguardAttribute::Peers(ps) = &msgs[0][1] else {
            panic!()
        };
        assert!(ps[0]
            .0
            .contains(&WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe)));
        assert!(ps[1].0.contains(&WireguardPeerAttribute::Flags(
            WireguardPeerFlags::UpdateOnly
        )));
        assert!(encode_set("wg0", &[]).is_empty());
    }
}
