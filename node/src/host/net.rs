//! The host network state a gateway owns, besides the WireGuard peers: the
//! WireGuard link (up, MTU, the pools' gateway addresses), the anycast
//! addresses on `lo`, routes for client addresses outside the pools, and one
//! nftables table (`inet anygate`: SNAT of the listen port to the anycast
//! address, masquerade in `nat` mode). `net_desired` is pure; `NetManager`
//! compares with the kernel over rtnetlink and repairs, so a link flap (which
//! flushes static routes and IPv6 addresses) is undone at the next check.

use crate::model::{Inventory, PeerState, ReturnMode};
use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol, RouteScope};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkWireguard, RouteMessageBuilder};
use std::collections::BTreeSet;
use std::net::IpAddr;

/// Route protocol number that marks routes anygate installed (see
/// /etc/iproute2/rt_protos; 240 is unassigned).
pub const RTPROT_ANYGATE: u8 = 240;
pub const NFT_TABLE: &str = "anygate";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetDesired {
    pub ifname: String,
    pub mtu: u32,
    /// Gateway addresses on the WireGuard link (first host of each pool).
    pub wg_addrs: BTreeSet<IpNet>,
    /// Anycast addresses on `lo` (/32 and /128).
    pub lo_addrs: BTreeSet<IpNet>,
    /// Client prefixes outside every pool, routed into the WireGuard link.
    pub routes: BTreeSet<IpNet>,
    /// The whole `inet anygate` table, as an `nft -f` script.
    pub nft: String,
}

/// What the host should look like for this inventory. Pure.
pub fn net_desired(inv: &Inventory, ifname: &str) -> NetDesired {
    let s = inv.settings();
    let mut wg_addrs = BTreeSet::new();
    let mut pool_nets = Vec::new();
    for p in inv.pools() {
        for c in p.cidrs {
            let first = match c {
                IpNet::V4(n) => IpAddr::V4((u32::from(n.network()) + 1).into()),
                IpNet::V6(n) => IpAddr::V6((u128::from(n.network()) + 1).into()),
            };
            if let Ok(a) = IpNet::new(first, c.prefix_len()) {
                wg_addrs.insert(a);
            }
            pool_nets.push(c);
        }
    }
    let routes = inv
        .peers()
        .filter(|p| p.state == PeerState::Active)
        .flat_map(|p| p.allowed_ips.iter())
        .filter(|ip| !pool_nets.iter().any(|n| n.contains(*ip)))
        .copied()
        .collect();
    let mut lo_addrs = BTreeSet::new();
    if let Some(a) = s.anycast_v4 {
        lo_addrs.insert(IpNet::new(IpAddr::V4(a), 32).expect("/32"));
    }
    if let Some(a) = s.anycast_v6 {
        lo_addrs.insert(IpNet::new(IpAddr::V6(a), 128).expect("/128"));
    }
    let mut rules = Vec::new();
    // Packets the gateway originates from the listen port (a handshake it
    // starts) must leave from the anycast address, or the client roams to
    // the unicast one and loses failover. Rewritten statelessly, with the
    // WireGuard port kept out of conntrack: a stateful SNAT would collide
    // with the client's own flow (same tuple, reversed) and move the source
    // port, and the client would roam to a port nobody listens on.
    let port = s.listen_port;
    let mut raw_out = vec![format!("udp sport {port} notrack")];
    if let Some(a) = s.anycast_v4 {
        raw_out.push(format!("udp sport {port} ip saddr != {a} ip saddr set {a}"));
    }
    if let Some(a) = s.anycast_v6 {
        raw_out.push(format!(
            "udp sport {port} ip6 saddr != {a} ip6 saddr set {a}"
        ));
    }
    if s.return_mode == ReturnMode::Nat {
        let v4: Vec<String> = pool_nets
            .iter()
            .filter(|n| matches!(n, IpNet::V4(_)))
            .map(|n| n.to_string())
            .collect();
        let v6: Vec<String> = pool_nets
            .iter()
            .filter(|n| matches!(n, IpNet::V6(_)))
            .map(|n| n.to_string())
            .collect();
        if !v4.is_empty() {
            rules.push(format!(
                "oifname != \"{ifname}\" ip saddr {{ {} }} masquerade",
                v4.join(", ")
            ));
        }
        if !v6.is_empty() {
            rules.push(format!(
                "oifname != \"{ifname}\" ip6 saddr {{ {} }} masquerade",
                v6.join(", ")
            ));
        }
    }
    let mut nft = format!(
        "table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\ntable inet {NFT_TABLE} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n"
    );
    for r in rules {
        nft.push_str("    ");
        nft.push_str(&r);
        nft.push('\n');
    }
    nft.push_str("  }\n");
    nft.push_str(&format!(
        "  chain raw_prerouting {{\n    type filter hook prerouting priority raw; policy accept;\n    udp dport {port} notrack\n  }}\n  chain raw_output {{\n    type filter hook output priority raw; policy accept;\n"
    ));
    for r in raw_out {
        nft.push_str("    ");
        nft.push_str(&r);
        nft.push('\n');
    }
    nft.push_str("  }\n");
    nft.push_str(&react_nft(port, ifname));
    NetDesired {
        ifname: ifname.to_string(),
        mtu: s.mtu as u32,
        wg_addrs,
        lo_addrs,
        routes,
        nft,
    }
}

/// The react sets and the rules that feed them (see react.rs): the source
/// of every transport-data packet (WireGuard message type 4, the first
/// payload byte), of those with a payload (longer than a keepalive's 32
/// bytes), and the inner source of every packet the device decrypted; and
/// the first data packet of a source not seen for a while, logged to the
/// NFLOG group the node listens on (see nflog.rs).
fn react_nft(port: u16, ifname: &str) -> String {
    use anygate_core::failover::react::*;
    let set = |name: &str, ty: &str| {
        format!(
            "  set {name} {{ type {ty}; flags dynamic, timeout; timeout {SET_TIMEOUT_MS}ms; size 65536; }}\n"
        )
    };
    let mut s = String::new();
    for (name, ty) in [
        (SET_DATA4, "ipv4_addr . inet_service"),
        (SET_DATA6, "ipv6_addr . inet_service"),
        (SET_LOAD4, "ipv4_addr . inet_service"),
        (SET_LOAD6, "ipv6_addr . inet_service"),
        (SET_IN4, "ipv4_addr"),
        (SET_IN6, "ipv6_addr"),
    ] {
        s.push_str(&set(name, ty));
    }
    let data = format!("udp dport {port} @th,64,8 0x04");
    let group = anygate_core::failover::react::NFLOG_GROUP;
    s.push_str(&format!(
        "  chain react {{\n    type filter hook input priority -150; policy accept;\n\
    {data} ip saddr . udp sport != @{SET_DATA4} log group {group} snaplen 48\n\
    {data} ip6 saddr . udp sport != @{SET_DATA6} log group {group} snaplen 48\n\
    {data} update @{SET_DATA4} {{ ip saddr . udp sport }}\n\
    {data} update @{SET_DATA6} {{ ip6 saddr . udp sport }}\n\
    {data} udp length > 40 update @{SET_LOAD4} {{ ip saddr . udp sport }}\n\
    {data} udp length > 40 update @{SET_LOAD6} {{ ip6 saddr . udp sport }}\n  }}\n\
  chain react_inner {{\n    type filter hook prerouting priority -150; policy accept;\n\
    iifname \"{ifname}\" update @{SET_IN4} {{ ip saddr }}\n\
    iifname \"{ifname}\" update @{SET_IN6} {{ ip6 saddr }}\n  }}\n}}\n"
    ));
    s
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("rtnetlink: {0}")]
    Netlink(String),
    #[error("link {0} does not exist")]
    NoLink(String),
}

fn nl(e: impl std::fmt::Display) -> NetError {
    NetError::Netlink(e.to_string())
}

/// What one check changed (for logs and the drift counter).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NetRepair {
    pub link: bool,
    pub addrs_added: usize,
    pub addrs_removed: usize,
    pub routes_added: usize,
    pub routes_removed: usize,
}

impl NetRepair {
    pub fn is_empty(&self) -> bool {
        *self == NetRepair::default()
    }
}

pub struct NetManager {
    handle: Handle,
    /// Anycast addresses this process put on `lo` (removed when settings change).
    lo_owned: BTreeSet<IpNet>,
    /// Client routes not installed because they would take over the
    /// gateway's own reachability (warned about once each).
    refused: BTreeSet<IpNet>,
}

/// What a client route must never take over: the host's own addresses, the
/// subnets of its other links (neighbors, management) and the next hops of
/// routes it did not install. Read from the kernel before routes are added.
#[derive(Debug, Default)]
pub struct Guard {
    pub addrs: Vec<IpAddr>,
    pub nets: Vec<IpNet>,
}

impl Guard {
    /// Why `r` may not be routed into the WireGuard link, if it may not. Pure.
    pub fn conflict(&self, r: &IpNet) -> Option<String> {
        if r.prefix_len() == 0 {
            return Some("it is a default route".into());
        }
        if let Some(a) = self.addrs.iter().find(|a| r.contains(*a)) {
            return Some(format!(
                "it covers {a}, an address of this host or a next hop of its routes"
            ));
        }
        if let Some(n) = self.nets.iter().find(|n| n.contains(r) || r.contains(*n)) {
            return Some(format!(
                "it overlaps {n}, a subnet on another link of this host"
            ));
        }
        None
    }
}

impl NetManager {
    pub fn new() -> Result<Self, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(nl)?;
        tokio::spawn(conn);
        Ok(NetManager {
            handle,
            lo_owned: BTreeSet::new(),
            refused: BTreeSet::new(),
        })
    }

    pub async fn link_index(&self, name: &str) -> Result<Option<(u32, bool, u32)>, NetError> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(l)) => {
                let mtu = l
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::Mtu(m) => Some(*m),
                        _ => None,
                    })
                    .unwrap_or(0);
                Ok(Some((
                    l.header.index,
                    l.header.flags.contains(LinkFlags::Up),
                    mtu,
                )))
            }
            Ok(None) => Ok(None),
            // ENODEV comes back as an error for a missing name.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(None),
            Err(e) => Err(nl(e)),
        }
    }

    /// Create a kernel WireGuard link (kernel backend only).
    pub async fn create_wireguard_link(&self, name: &str) -> Result<(), NetError> {
        self.handle
            .link()
            .add(LinkWireguard::new(name).build())
            .execute()
            .await
            .map_err(nl)
    }

    pub async fn delete_link(&self, name: &str) -> Result<(), NetError> {
        if let Some((idx, _, _)) = self.link_index(name).await? {
            self.handle.link().del(idx).execute().await.map_err(nl)?;
        }
        Ok(())
    }

    /// Bring the host in line with `want`. Errors on one item do not stop
    /// the others; the first is returned after all were tried.
    pub async fn reconcile(&mut self, want: &NetDesired) -> Result<NetRepair, NetError> {
        let mut rep = NetRepair::default();
        let (idx, up, mtu) = self
            .link_index(&want.ifname)
            .await?
            .ok_or_else(|| NetError::NoLink(want.ifname.clone()))?;
        if !up || (want.mtu != 0 && mtu != want.mtu) {
            let mut b = LinkUnspec::new_with_index(idx).up();
            if want.mtu != 0 {
                b = b.mtu(want.mtu);
            }
            self.handle
                .link()
                .set(b.build())
                .execute()
                .await
                .map_err(nl)?;
            rep.link = true;
        }
        let mut first_err = None;
        // Addresses on the WireGuard link: exactly the wanted ones.
        let have = self.addresses(idx).await?;
        for a in want.wg_addrs.difference(&have) {
            match self.add_addr(idx, a).await {
                Ok(()) => rep.addrs_added += 1,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        for a in have.difference(&want.wg_addrs) {
            // Leave the kernel's IPv6 link-local alone.
            if matches!(a, IpNet::V6(n) if n.addr().segments()[0] & 0xffc0 == 0xfe80) {
                continue;
            }
            match self.del_addr(idx, a).await {
                Ok(()) => rep.addrs_removed += 1,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        // Anycast on lo: add the wanted ones, remove only those we added.
        if let Some((lo, _, _)) = self.link_index("lo").await? {
            let have_lo = self.addresses(lo).await?;
            for a in want.lo_addrs.difference(&have_lo) {
                match self.add_addr(lo, a).await {
                    Ok(()) => rep.addrs_added += 1,
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            let stale: Vec<IpNet> = self
                .lo_owned
                .difference(&want.lo_addrs)
                .filter(|a| have_lo.contains(a))
                .copied()
                .collect();
            for a in stale {
                if self.del_addr(lo, &a).await.is_ok() {
                    rep.addrs_removed += 1;
                }
            }
            self.lo_owned = want.lo_addrs.clone();
        }
        // Client routes outside the pools, never over the host's own
        // reachability and never over a route someone else installed.
        let (have_routes, mut guard) = self.main_routes(idx).await?;
        let mut allowed = want.routes.clone();
        let missing: Vec<IpNet> = want.routes.difference(&have_routes).copied().collect();
        if !missing.is_empty() {
            guard.addrs.extend(self.local_addresses(idx).await?);
        }
        let mut refused = BTreeSet::new();
        for r in missing {
            let why = match guard.conflict(&r) {
                Some(why) => Some(why),
                None => match self.add_route(idx, &r).await {
                    Ok(true) => {
                        rep.routes_added += 1;
                        None
                    }
                    Ok(false) => Some("a route to it that anygate did not install exists".into()),
                    Err(e) => {
                        first_err.get_or_insert(e);
                        None
                    }
                },
            };
            if let Some(why) = why {
                if !self.refused.contains(&r) {
                    tracing::warn!(route = %r, reason = %why, "client route not installed");
                }
                allowed.remove(&r);
                refused.insert(r);
            }
        }
        self.refused = refused;
        for r in have_routes.difference(&allowed) {
            match self.del_route(r).await {
                Ok(()) => rep.routes_removed += 1,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(rep),
        }
    }

    async fn addresses(&self, idx: u32) -> Result<BTreeSet<IpNet>, NetError> {
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(idx)
            .execute();
        let mut out = BTreeSet::new();
        while let Some(m) = s.try_next().await.map_err(nl)? {
            if m.header.index != idx {
                continue;
            }
            for a in &m.attributes {
                if let AddressAttribute::Address(ip) = a {
                    if let Ok(n) = IpNet::new(*ip, m.header.prefix_len) {
                        out.insert(n);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn add_addr(&self, idx: u32, a: &IpNet) -> Result<(), NetError> {
        match self
            .handle
            .address()
            .add(idx, a.addr(), a.prefix_len())
            .execute()
            .await
        {
            // EEXIST: someone else added it meanwhile; fine.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -17 => Ok(()),
            r => r.map_err(nl),
        }
    }

    async fn del_addr(&self, idx: u32, a: &IpNet) -> Result<(), NetError> {
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(idx)
            .set_address_filter(a.addr())
            .set_prefix_length_filter(a.prefix_len())
            .execute();
        while let Some(m) = s.try_next().await.map_err(nl)? {
            self.handle.address().del(m).execute().await.map_err(nl)?;
        }
        Ok(())
    }

    /// The main table: our routes (protocol `RTPROT_ANYGATE`), and from
    /// everyone else's the next hops and the subnets of other links.
    async fn main_routes(&self, wg: u32) -> Result<(BTreeSet<IpNet>, Guard), NetError> {
        let addr = |a: &RouteAddress| match a {
            RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
            RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
            _ => None,
        };
        let mut owned = BTreeSet::new();
        let mut guard = Guard::default();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessageBuilder::<IpAddr>::new().build();
            msg.header.address_family = fam;
            let mut s = self.handle.route().get(msg).execute();
            while let Some(r) = s.try_next().await.map_err(nl)? {
                let mut dst = None;
                let mut oif = None;
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Destination(d) => dst = addr(d),
                        RouteAttribute::Gateway(g) => guard.addrs.extend(addr(g)),
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        _ => {}
                    }
                }
                let net = match dst {
                    Some(d) => IpNet::new(d, r.header.destination_prefix_length).ok(),
                    None => None,
                };
                if r.header.protocol == RouteProtocol::Other(RTPROT_ANYGATE) {
                    owned.extend(net);
                } else if r.header.scope == RouteScope::Link && oif != Some(wg) {
                    if let Some(n) = net.filter(|n| n.prefix_len() > 0) {
                        guard.nets.push(n);
                    }
                }
            }
        }
        Ok((owned, guard))
    }

    /// Every address of every link but the WireGuard one.
    async fn local_addresses(&self, wg: u32) -> Result<Vec<IpAddr>, NetError> {
        let mut s = self.handle.address().get().execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(nl)? {
            if m.header.index == wg {
                continue;
            }
            for a in &m.attributes {
                if let AddressAttribute::Address(ip) = a {
                    out.push(*ip);
                }
            }
        }
        Ok(out)
    }

    fn route_msg(&self, idx: Option<u32>, r: &IpNet) -> netlink_packet_route::route::RouteMessage {
        let b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(r.addr(), r.prefix_len())
            .expect("same family");
        let mut b = b.protocol(RouteProtocol::Other(RTPROT_ANYGATE));
        if let Some(i) = idx {
            b = b.output_interface(i);
        }
        b.build()
    }

    /// Adds the route without replacing anything: false if a route to the
    /// same prefix exists (not ours: ours were listed first).
    async fn add_route(&self, idx: u32, r: &IpNet) -> Result<bool, NetError> {
        let msg = self.route_msg(Some(idx), r);
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(true),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -17 => Ok(false),
            Err(e) => Err(nl(e)),
        }
    }

    async fn del_route(&self, r: &IpNet) -> Result<(), NetError> {
        let msg = self.route_msg(None, r);
        self.handle.route().del(msg).execute().await.map_err(nl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_route_never_takes_over_the_hosts_own_reachability() {
        let g = Guard {
            addrs: vec!["10.77.0.3".parse().unwrap(), "192.0.2.1".parse().unwrap()],
            nets: vec![
                "10.77.0.0/24".parse().unwrap(),
                "fd00:77::/64".parse().unwrap(),
            ],
        };
        let why = |r: &str| g.conflict(&r.parse().unwrap());
        assert!(why("0.0.0.0/0").unwrap().contains("default route"));
        assert!(why("::/0").unwrap().contains("default route"));
        assert!(why("192.0.2.0/24").unwrap().contains("covers 192.0.2.1"));
        assert!(why("10.77.0.200/32")
            .unwrap()
            .contains("overlaps 10.77.0.0/24"));
        assert!(why("10.0.0.0/8").unwrap().contains("10.77.0.3"));
        assert!(why("fd00:77::5/128")
            .unwrap()
            .contains("overlaps fd00:77::/64"));
        assert_eq!(why("172.31.5.0/24"), None);
        assert_eq!(why("10.78.0.0/24"), None);
    }
    use crate::model::{Changes, Command, Request, SettingsPatch};

    #[test]
    fn desired_host_state_from_inventory() {
        let mut inv = Inventory::default();
        let mut ch = Changes::default();
        let mut run = |inv: &mut Inventory, cmd: Command| {
            let r = inv.apply(
                1,
                &Request {
                    actor: "t".into(),
                    at_ms: 0,
                    request_id: None,
                    cmd,
                },
                &mut ch,
            );
            assert!(!matches!(r, crate::model::Response::Rejected(_)), "{r:?}");
        };
        run(
            &mut inv,
            Command::AddPool {
                name: "staff".into(),
                cidrs: vec![
                    "10.100.0.0/16".parse().unwrap(),
                    "fd00:100::/64".parse().unwrap(),
                ],
                group: None,
            },
        );
        run(
            &mut inv,
            Command::SetSettings(SettingsPatch {
                anycast_v4: Some(Some("198.51.100.1".parse().unwrap())),
                ..Default::default()
            }),
        );
        let d = net_desired(&inv, "wg-test");
        assert_eq!(
            d.wg_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            ["10.100.0.1/16", "fd00:100::1/64"]
        );
        assert_eq!(
            d.lo_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            ["198.51.100.1/32"]
        );
        assert!(d
            .nft
            .contains("udp sport 51820 ip saddr != 198.51.100.1 ip saddr set 198.51.100.1"));
        assert!(d
            .nft
            .contains("oifname != \"wg-test\" ip saddr { 10.100.0.0/16 } masquerade"));
        assert!(d.nft.contains("ip6 saddr { fd00:100::/64 } masquerade"));
        assert!(d.routes.is_empty());
    }
}
