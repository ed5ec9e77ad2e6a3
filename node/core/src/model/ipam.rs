//! Address bookkeeping: an interval index of every peer's allowed IPs (so that
//! overlap checks and "is this address used" are O(log n)), and the pure
//! arithmetic of allocating from a pool. No IO, no clock.

use super::key::WgKey;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Family tag + inclusive numeric range of a network.
pub fn span(net: &IpNet) -> (u8, u128, u128) {
    match net {
        IpNet::V4(n) => (
            4,
            u32::from(n.network()) as u128,
            u32::from(n.broadcast()) as u128,
        ),
        IpNet::V6(n) => (6, u128::from(n.network()), u128::from(n.broadcast())),
    }
}

pub fn host_net(addr: IpAddr) -> IpNet {
    IpNet::from(addr)
}

pub fn addr_from(family: u8, v: u128) -> IpAddr {
    if family == 4 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

/// Disjoint networks keyed by their first address. Because stored intervals
/// never overlap, the only stored interval that can contain a point is the one
/// with the greatest start at or below it.
#[derive(Debug, Default, Clone)]
pub struct NetIndex {
    map: BTreeMap<(u8, u128), (u128, WgKey)>,
}

impl NetIndex {
    /// The owner of any stored network overlapping `net`.
    pub fn overlap(&self, net: &IpNet) -> Option<WgKey> {
        let (f, s, e) = span(net);
        if let Some((&(pf, _), &(pe, k))) = self.map.range(..=(f, s)).next_back() {
            if pf == f && pe >= s {
                return Some(k);
            }
        }
        self.map.range((f, s)..=(f, e)).next().map(|(_, &(_, k))| k)
    }

    pub fn insert(&mut self, net: &IpNet, owner: WgKey) {
        let (f, s, e) = span(net);
        self.map.insert((f, s), (e, owner));
    }

    pub fn remove(&mut self, net: &IpNet) {
        let (f, s, _) = span(net);
        self.map.remove(&(f, s));
    }

    /// Number of stored networks that lie inside `net`.
    pub fn count_within(&self, net: &IpNet) -> u64 {
        let (f, s, e) = span(net);
        self.map
            .range((f, s)..=(f, e))
            .filter(|(_, &(end, _))| end <= e)
            .count() as u64
    }
}

/// The usable host range of a pool CIDR: the network address, the broadcast
/// address (v4) and the first host (the gateway's own tunnel address) are
/// never handed to clients. /31, /32, /127 and /128 give every address.
pub fn usable_range(net: &IpNet) -> Option<(u128, u128)> {
    let (f, s, e) = span(net);
    let len = e - s + 1;
    match (f, len) {
        (_, 1) | (_, 2) => Some((s, e)),
        (4, 4) => Some((s + 2, e - 1)),
        (4, _) => Some((s + 2, e - 1)),
        (_, _) => Some((s + 2, e)),
    }
    .filter(|(a, b)| a <= b)
}

pub fn capacity(net: &IpNet) -> u128 {
    usable_range(net).map(|(a, b)| b - a + 1).unwrap_or(0)
}

/// Find a free address in `net`, scanning from `cursor` (wrapping). `used`
/// says whether an address is taken. `max_probes` bounds the scan: with n
/// used addresses in total, n + 1 consecutive probes always find a free one
/// if the range is not full.
pub fn find_free(
    net: &IpNet,
    cursor: u128,
    max_probes: u128,
    used: impl Fn(IpAddr) -> bool,
) -> Option<IpAddr> {
    let (f, _, _) = span(net);
    let (lo, hi) = usable_range(net)?;
    let size = hi - lo + 1;
    let start = if cursor >= lo && cursor <= hi {
        cursor
    } else {
        lo
    };
    let probes = size.min(max_probes.max(1));
    for i in 0..probes {
        let off = (start - lo + i) % size;
        let a = addr_from(f, lo + off);
        if !used(a) {
            return Some(a);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(b: u8) -> WgKey {
        WgKey([b; 32])
    }
    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn overlap_table() {
        let mut idx = NetIndex::default();
        idx.insert(&n("10.0.0.0/24"), k(1));
        idx.insert(&n("10.0.2.5/32"), k(2));
        idx.insert(&n("fd00::/64"), k(3));
        let cases = [
            ("10.0.0.7/32", Some(1)),
            ("10.0.0.0/16", Some(1)),
            ("10.0.1.0/24", None),
            ("10.0.2.0/24", Some(2)),
            ("10.0.2.6/32", None),
            ("0.0.0.0/0", Some(1)),
            ("fd00::1/128", Some(3)),
            ("fd00:0:0:1::/64", None),
            ("::/0", Some(3)),
            ("11.0.0.0/8", None),
        ];
        for (net, want) in cases {
            assert_eq!(idx.overlap(&n(net)), want.map(k), "{net}");
        }
        idx.remove(&n("10.0.0.0/24"));
        assert_eq!(idx.overlap(&n("10.0.0.7/32")), None);
        assert_eq!(idx.count_within(&n("10.0.0.0/16")), 1);
    }

    #[test]
    fn usable_ranges() {
        assert_eq!(capacity(&n("10.0.0.0/24")), 253);
        assert_eq!(capacity(&n("10.0.0.0/30")), 1);
        assert_eq!(capacity(&n("10.0.0.0/31")), 2);
        assert_eq!(capacity(&n("10.0.0.1/32")), 1);
        assert_eq!(capacity(&n("fd00::/126")), 2);
        let first = find_free(&n("10.0.0.0/24"), 0, 10, |_| false).unwrap();
        assert_eq!(first, "10.0.0.2".parse::<IpAddr>().unwrap());
        let skip = find_free(&n("10.0.0.0/24"), 0, 10, |a| a.to_string() == "10.0.0.2").unwrap();
        assert_eq!(skip, "10.0.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(find_free(&n("10.0.0.0/30"), 0, 10, |_| true), None);
        // wraps around from the cursor
        let wrapped = find_free(
            &n("10.0.0.0/29"),
            u32::from(Ipv4Addr::new(10, 0, 0, 6)) as u128,
            10,
            |a| a.to_string() == "10.0.0.6",
        )
        .unwrap();
        assert_eq!(wrapped, "10.0.0.2".parse::<IpAddr>().unwrap());
    }
}
