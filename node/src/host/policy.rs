//! Access policies in nftables: the node owns `table inet anygate_policy`.
//!
//! ```text
//! chain forward  (hook forward): iifname WG jump clients; iifname WG drop  ("default deny", counted)
//! chain clients: one accept rule per policy and family, e.g.
//!                ip saddr @g_656e67_4 ip daddr { 10.1.0.0/24 } meta l4proto tcp th dport { 22 } accept comment "p:web:12:4"
//! set g_<hex(group)>_4 / _6: the tunnel addresses and routes of the group's peers (interval sets)
//! ```
//!
//! Changes are incremental: a peer joining a group is one `add element`, a
//! new policy one `add rule`; the table is only rebuilt when its skeleton is
//! gone or wrong (first start, interface renamed, hand edit). A full read of
//! the table (`nft -a list table`) on every resync repairs drift. Matching is
//! stateless, so removing a policy cuts open connections at once.

use crate::model::policy::{Policy, Protocol, ALL_GROUPS};
use crate::model::{Inventory, Peer, WgKey};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

pub const TABLE: &str = "anygate_policy";
pub const DEFAULT_COMMENT: &str = "anygate:default-deny";

/// What the table must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub ifname: String,
    /// Set name -> members (maximal prefixes only: an interval set refuses
    /// overlapping elements).
    pub sets: BTreeMap<String, BTreeSet<IpNet>>,
    /// Rule id (its comment) -> rule text without the comment.
    pub rules: BTreeMap<String, String>,
}

/// What the kernel holds (from `nft -a list table inet anygate_policy`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Present {
    /// The forward chain jumps to `clients` for this interface and ends in
    /// the default drop.
    pub skeleton_for: Option<String>,
    pub sets: BTreeMap<String, BTreeSet<IpNet>>,
    /// Rule id -> handle.
    pub rules: BTreeMap<String, u64>,
    /// Packets dropped by the default deny.
    pub denied_packets: u64,
}

fn set_name(group: &str, v6: bool) -> String {
    let hex: String = group.bytes().map(|b| format!("{b:02x}")).collect();
    format!("g_{hex}_{}", if v6 { 6 } else { 4 })
}

/// Keeps only prefixes not inside another one. Two prefixes are nested or
/// disjoint, so in (network, length) order a prefix is covered iff the last
/// one kept covers it: one pass, O(n) on the ordered set (this ran as an
/// O(n²) scan on every commit, 10k members in a group took ~100 ms). The
/// reference the incremental [`Members`] is tested against.
#[cfg(test)]
fn maximal(nets: BTreeSet<IpNet>) -> BTreeSet<IpNet> {
    let mut out = BTreeSet::new();
    let mut last: Option<IpNet> = None;
    for n in nets {
        if last.is_some_and(|l| l.contains(&n)) {
            continue;
        }
        last = Some(n);
        out.insert(n);
    }
    out
}

fn elements(nets: &[IpNet]) -> String {
    nets.iter()
        .map(|n| match n.prefix_len() == n.max_prefix_len() {
            true => n.addr().to_string(),
            false => n.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn rule_text(p: &Policy, v6: bool, dst: &[IpNet]) -> String {
    let fam = if v6 { "ip6" } else { "ip" };
    let mut r = String::new();
    if p.group != ALL_GROUPS {
        r.push_str(&format!("{fam} saddr @{} ", set_name(&p.group, v6)));
    }
    r.push_str(&format!("{fam} daddr {{ {} }} ", elements(dst)));
    match p.protocol {
        None => {}
        Some(Protocol::Icmp) => {
            r.push_str(if v6 {
                "meta l4proto ipv6-icmp "
            } else {
                "meta l4proto icmp "
            });
        }
        Some(proto) => {
            r.push_str(&format!("meta l4proto {} ", proto.as_str()));
            if !p.ports.is_empty() {
                let ports: Vec<String> = p.ports.iter().map(|x| x.to_string()).collect();
                r.push_str(&format!("th dport {{ {} }} ", ports.join(", ")));
            }
        }
    }
    r.push_str("accept");
    r
}

/// The table the inventory asks for on interface `ifname` (one pass over
/// the peers; the reconciler keeps a [`Wanted`] current instead).
pub fn desired(inv: &Inventory, ifname: &str) -> Desired {
    Wanted::build(inv, ifname).desired()
}

/// One group set: every prefix its peers contribute, counted (two peers
/// may route the same prefix), and the maximal ones, which the kernel's
/// interval set holds.
#[derive(Debug, Default, Clone)]
struct Members {
    all: BTreeMap<IpNet, u32>,
    top: BTreeSet<IpNet>,
}

/// The range of (network, length) order that holds `n` and every prefix
/// inside it, given that no prefix covering `n` is present.
fn inside(n: &IpNet) -> std::ops::RangeInclusive<IpNet> {
    let lo = IpNet::new(n.network(), 0).expect("length 0 is valid");
    let hi = IpNet::new(n.broadcast(), n.max_prefix_len()).expect("full length is valid");
    lo..=hi
}

impl Members {
    /// Some present prefix strictly covers `n` (at most 128 lookups).
    fn covered(&self, n: &IpNet) -> bool {
        (0..n.prefix_len())
            .any(|len| IpNet::new(n.addr(), len).is_ok_and(|a| self.all.contains_key(&a.trunc())))
    }

    fn insert(&mut self, n: IpNet, d: &mut SetDelta) {
        let count = self.all.entry(n).or_insert(0);
        *count += 1;
        if *count > 1 || self.covered(&n) {
            return;
        }
        let under: Vec<IpNet> = self.top.range(inside(&n)).copied().collect();
        for m in under {
            self.top.remove(&m);
            d.del(m);
        }
        self.top.insert(n);
        d.add(n);
    }

    fn remove(&mut self, n: IpNet, d: &mut SetDelta) {
        match self.all.get_mut(&n) {
            None => return,
            Some(c) if *c > 1 => {
                *c -= 1;
                return;
            }
            Some(_) => {
                self.all.remove(&n);
            }
        }
        if !self.top.remove(&n) {
            return; // a wider prefix still covers it
        }
        d.del(n);
        // What `n` covered comes back: the maximal prefixes inside it.
        let mut last: Option<IpNet> = None;
        for m in self.all.range(inside(&n)).map(|(m, _)| *m) {
            if last.is_some_and(|l| l.contains(&m)) {
                continue;
            }
            last = Some(m);
            self.top.insert(m);
            d.add(m);
        }
    }
}

/// Element changes to one set, net of each other.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SetDelta {
    pub add: BTreeSet<IpNet>,
    pub del: BTreeSet<IpNet>,
}

impl SetDelta {
    fn add(&mut self, n: IpNet) {
        if !self.del.remove(&n) {
            self.add.insert(n);
        }
    }

    fn del(&mut self, n: IpNet) {
        if !self.add.remove(&n) {
            self.del.insert(n);
        }
    }
}

/// Element changes to the group sets (set name -> change); rules and the
/// set list only change with the policies, which rebuild [`Wanted`].
pub type Delta = BTreeMap<String, SetDelta>;

/// The table the inventory asks for, kept current from the change feed:
/// a commit that touches k peers costs O(k log n), not a pass over every
/// peer. Built once per policy change, feed gap and resync.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    ifname: String,
    /// Set name -> members, for every group a policy names.
    sets: BTreeMap<String, Members>,
    /// What each peer in such a group contributes: (group, prefixes).
    by_peer: HashMap<WgKey, (String, Vec<IpNet>)>,
    rules: BTreeMap<String, String>,
}

/// A peer's tunnel addresses and routes, as set members.
fn contribution(peer: &Peer) -> Vec<IpNet> {
    let mut v: Vec<IpNet> = peer
        .addresses
        .iter()
        .map(|a| IpNet::from(*a))
        .chain(peer.allowed_ips.iter().map(|n| n.trunc()))
        .collect();
    v.sort();
    v.dedup();
    v
}

impl Wanted {
    pub fn build(inv: &Inventory, ifname: &str) -> Wanted {
        let mut w = Wanted {
            ifname: ifname.to_string(),
            ..Default::default()
        };
        for p in inv.policies().filter(|p| p.group != ALL_GROUPS) {
            for v6 in [false, true] {
                w.sets.entry(set_name(&p.group, v6)).or_default();
            }
        }
        if !w.sets.is_empty() {
            let mut ignored = Delta::new();
            for peer in inv.peers() {
                w.join(peer, &mut ignored);
            }
        }
        for p in inv.policies() {
            for v6 in [false, true] {
                let dst: Vec<IpNet> = p
                    .destinations
                    .iter()
                    .filter(|n| matches!(n.addr(), IpAddr::V6(_)) == v6)
                    .copied()
                    .collect();
                if dst.is_empty() {
                    continue;
                }
                let id = format!("p:{}:{}:{}", p.name, p.revision, if v6 { 6 } else { 4 });
                w.rules.insert(id, rule_text(p, v6, &dst));
            }
        }
        w
    }

    /// Adds `peer`'s prefixes to its group's sets (if a policy names it).
    fn join(&mut self, peer: &Peer, d: &mut Delta) {
        if !self.sets.contains_key(&set_name(&peer.group, false)) {
            return;
        }
        let nets = contribution(peer);
        for n in &nets {
            let name = set_name(&peer.group, matches!(n, IpNet::V6(_)));
            if let Some(m) = self.sets.get_mut(&name) {
                m.insert(*n, d.entry(name).or_default());
            }
        }
        self.by_peer
            .insert(peer.public_key, (peer.group.clone(), nets));
    }

    fn leave(&mut self, key: &WgKey, d: &mut Delta) {
        let Some((group, nets)) = self.by_peer.remove(key) else {
            return;
        };
        for n in nets {
            let name = set_name(&group, matches!(n, IpNet::V6(_)));
            if let Some(m) = self.sets.get_mut(&name) {
                m.remove(n, d.entry(name).or_default());
            }
        }
    }

    /// Brings the sets up to date for the peers in `keys` (added, removed
    /// or changed since the last update) and says what changed.
    pub fn update<'a>(
        &mut self,
        inv: &Inventory,
        keys: impl IntoIterator<Item = &'a WgKey>,
    ) -> Delta {
        let mut d = Delta::new();
        if self.sets.is_empty() {
            return d;
        }
        for k in keys {
            let now = inv.peer(k);
            let same = match (self.by_peer.get(k), now) {
                (Some((g, nets)), Some(p)) => *g == p.group && *nets == contribution(p),
                (None, Some(p)) => !self.sets.contains_key(&set_name(&p.group, false)),
                (_, None) => !self.by_peer.contains_key(k),
            };
            if same {
                continue;
            }
            self.leave(k, &mut d);
            if let Some(p) = now {
                self.join(p, &mut d);
            }
        }
        d.retain(|_, s| !s.add.is_empty() || !s.del.is_empty());
        d
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The whole table (a copy of every set: for a full comparison).
    pub fn desired(&self) -> Desired {
        Desired {
            ifname: self.ifname.clone(),
            sets: self
                .sets
                .iter()
                .map(|(k, m)| (k.clone(), m.top.clone()))
                .collect(),
            rules: self.rules.clone(),
        }
    }
}

/// The `nft -f` script for `delta` against what the kernel holds, or None
/// when the kernel's table is not the one the delta was computed for (a
/// set it names is missing): then compare the whole table. Elements the
/// kernel already has (or lacks) are left out, so the batch cannot fail on
/// them; removals come first, since a wider prefix may replace narrower ones.
pub fn plan_delta(have: &Present, delta: &Delta) -> Option<String> {
    let mut del = String::new();
    let mut add = String::new();
    for (name, d) in delta {
        let old = have.sets.get(name)?;
        let minus: Vec<IpNet> = d.del.iter().filter(|n| old.contains(n)).copied().collect();
        let plus: Vec<IpNet> = d.add.iter().filter(|n| !old.contains(n)).copied().collect();
        let (d, a) = element_lines(name, &minus, &plus);
        del.push_str(&d);
        add.push_str(&a);
    }
    Some(del + &add)
}

/// What the kernel holds once `delta` was applied.
pub fn apply_delta(have: &mut Present, delta: &Delta) {
    for (name, d) in delta {
        if let Some(s) = have.sets.get_mut(name) {
            for n in &d.del {
                s.remove(n);
            }
            s.extend(d.add.iter().copied());
        }
    }
}

fn set_decl(name: &str) -> String {
    let ty = if name.ends_with("_6") {
        "ipv6_addr"
    } else {
        "ipv4_addr"
    };
    format!("{{ type {ty}; flags interval; }}")
}

/// The whole table, replacing whatever is there (one atomic `nft -f`).
pub fn full_script(d: &Desired) -> String {
    let mut s = format!("table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n");
    for name in d.sets.keys() {
        s.push_str(&format!("  set {name} {}\n", set_decl(name)));
    }
    s.push_str(&format!(
        "  chain clients {{\n  }}\n  chain forward {{\n    type filter hook forward priority filter; policy accept;\n    iifname \"{i}\" jump clients\n    iifname \"{i}\" counter drop comment \"{DEFAULT_COMMENT}\"\n  }}\n}}\n",
        i = d.ifname
    ));
    for (name, members) in &d.sets {
        if !members.is_empty() {
            let v: Vec<IpNet> = members.iter().copied().collect();
            s.push_str(&format!(
                "add element inet {TABLE} {name} {{ {} }}\n",
                elements(&v)
            ));
        }
    }
    for (id, r) in &d.rules {
        s.push_str(&format!(
            "add rule inet {TABLE} clients {r} comment \"{id}\"\n"
        ));
    }
    s
}

/// The `delete element` and `add element` lines for one set (each empty
/// when there is nothing to remove or add).
fn element_lines(name: &str, minus: &[IpNet], plus: &[IpNet]) -> (String, String) {
    let line = |verb: &str, nets: &[IpNet]| match nets.is_empty() {
        true => String::new(),
        false => format!(
            "{verb} element inet {TABLE} {name} {{ {} }}\n",
            elements(nets)
        ),
    };
    (line("delete", minus), line("add", plus))
}

/// The `nft -f` script that turns `have` into `want`: None when nothing
/// differs; the full table when the skeleton is wrong or a rule to delete
/// has no known handle.
pub fn plan(have: Option<&Present>, want: &Desired) -> Option<String> {
    let Some(have) = have.filter(|h| h.skeleton_for.as_deref() == Some(want.ifname.as_str()))
    else {
        return Some(full_script(want));
    };
    let mut add = String::new();
    let mut del = String::new();
    for (name, members) in &want.sets {
        let old = have.sets.get(name);
        if old.is_none() {
            add.push_str(&format!("add set inet {TABLE} {name} {}\n", set_decl(name)));
        }
        let empty = BTreeSet::new();
        let old = old.unwrap_or(&empty);
        let plus: Vec<IpNet> = members.difference(old).copied().collect();
        let minus: Vec<IpNet> = old.difference(members).copied().collect();
        // Removals first within the batch: a wider prefix may replace
        // narrower ones it now covers.
        let (d, a) = element_lines(name, &minus, &plus);
        add.push_str(&d);
        add.push_str(&a);
    }
    for (id, r) in &want.rules {
        if !have.rules.contains_key(id) {
            add.push_str(&format!(
                "add rule inet {TABLE} clients {r} comment \"{id}\"\n"
            ));
        }
    }
    for (id, handle) in &have.rules {
        if !want.rules.contains_key(id) {
            del.push_str(&format!(
                "delete rule inet {TABLE} clients handle {handle}\n"
            ));
        }
    }
    for name in have.sets.keys() {
        if !want.sets.contains_key(name) {
            del.push_str(&format!("delete set inet {TABLE} {name}\n"));
        }
    }
    let s = add + &del;
    (!s.is_empty()).then_some(s)
}

fn parse_element(s: &str) -> Option<IpNet> {
    let s = s.trim().trim_end_matches(',').trim();
    if s.is_empty() {
        return None;
    }
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Reads `nft -a list table inet anygate_policy`.
pub fn parse(text: &str) -> Present {
    let mut p = Present::default();
    let mut chain = String::new();
    let mut set: Option<String> = None;
    let mut in_elements = false;
    let mut jump_if: Option<String> = None;
    let mut has_default = false;
    for line in text.lines() {
        let t = line.trim();
        if in_elements {
            let body = t.trim_end_matches('}');
            if let Some(name) = &set {
                let e = p.sets.entry(name.clone()).or_default();
                e.extend(body.split(',').filter_map(parse_element));
            }
            if t.ends_with('}') {
                in_elements = false;
            }
            continue;
        }
        if let Some(rest) = t.strip_prefix("set ") {
            let name = rest.split_whitespace().next().unwrap_or("").to_string();
            p.sets.entry(name.clone()).or_default();
            set = Some(name);
            continue;
        }
        if let Some(rest) = t.strip_prefix("elements = {") {
            let body = rest.trim_end_matches('}');
            if let Some(name) = &set {
                let e = p.sets.entry(name.clone()).or_default();
                e.extend(body.split(',').filter_map(parse_element));
            }
            in_elements = !rest.trim_end().ends_with('}');
            continue;
        }
        if let Some(rest) = t.strip_prefix("chain ") {
            chain = rest.split_whitespace().next().unwrap_or("").to_string();
            set = None;
            continue;
        }
        let handle = t
            .rsplit_once("# handle ")
            .and_then(|(_, h)| h.trim().parse::<u64>().ok());
        match chain.as_str() {
            "forward" => {
                if t.contains("jump clients") {
                    jump_if = t
                        .strip_prefix("iifname \"")
                        .and_then(|r| r.split('"').next())
                        .map(str::to_string);
                }
                if t.contains(DEFAULT_COMMENT) && t.contains("drop") {
                    has_default = true;
                    p.denied_packets = t
                        .split_once("counter packets ")
                        .and_then(|(_, r)| r.split_whitespace().next())
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                }
            }
            "clients" => {
                if let (Some(h), Some((_, c))) = (handle, t.split_once("comment \"")) {
                    if let Some(id) = c.split('"').next() {
                        p.rules.insert(id.to_string(), h);
                    }
                }
            }
            _ => {}
        }
    }
    if has_default {
        p.skeleton_for = jump_if;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = r#"table inet anygate_policy { # handle 7
	set g_656e67_4 { # handle 2
		type ipv4_addr
		flags interval
		elements = { 100.64.0.2, 100.64.0.3,
			     10.20.0.0/24 }
	}
	set g_656e67_6 { # handle 3
		type ipv6_addr
		flags interval
	}
	chain clients { # handle 1
		ip saddr @g_656e67_4 ip daddr { 172.16.0.10 } meta l4proto tcp th dport { 22, 443 } accept comment "p:web:12:4" # handle 6
	}
	chain forward { # handle 4
		type filter hook forward priority filter; policy accept;
		iifname "wg0" jump clients # handle 5
		iifname "wg0" counter packets 17 bytes 1428 drop comment "anygate:default-deny" # handle 8
	}
}
"#;

    #[test]
    fn parses_the_listing() {
        let p = parse(LISTING);
        assert_eq!(p.skeleton_for.as_deref(), Some("wg0"));
        assert_eq!(p.denied_packets, 17);
        let s = &p.sets["g_656e67_4"];
        assert_eq!(s.len(), 3);
        assert!(s.contains(&"10.20.0.0/24".parse().unwrap()));
        assert!(s.contains(&"100.64.0.3/32".parse().unwrap()));
        assert!(p.sets["g_656e67_6"].is_empty());
        assert_eq!(p.rules.get("p:web:12:4"), Some(&6));
    }

    fn want() -> Desired {
        let mut d = Desired {
            ifname: "wg0".into(),
            ..Default::default()
        };
        d.sets.insert(
            "g_656e67_4".into(),
            ["100.64.0.2/32", "100.64.0.4/32", "10.20.0.0/24"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
        );
        d.sets.insert("g_656e67_6".into(), BTreeSet::new());
        d.rules
            .insert("p:db:14:4".into(), "ip daddr { 172.16.0.11 } accept".into());
        d
    }

    #[test]
    fn plans_only_the_difference() {
        let have = parse(LISTING);
        let s = plan(Some(&have), &want()).unwrap();
        assert!(
            s.contains("delete element inet anygate_policy g_656e67_4 { 100.64.0.3 }"),
            "{s}"
        );
        assert!(
            s.contains("add element inet anygate_policy g_656e67_4 { 100.64.0.4 }"),
            "{s}"
        );
        assert!(s.contains("add rule inet anygate_policy clients ip daddr { 172.16.0.11 } accept comment \"p:db:14:4\""), "{s}");
        assert!(
            s.contains("delete rule inet anygate_policy clients handle 6"),
            "{s}"
        );
        assert!(!s.contains("delete table"), "{s}");
        // Nothing to do when the kernel already matches.
        let mut same = have.clone();
        same.sets = want().sets;
        same.rules = [("p:db:14:4".to_string(), 9)].into();
        assert_eq!(plan(Some(&same), &want()), None);
    }

    #[test]
    fn a_broken_skeleton_rebuilds_the_table() {
        let mut have = parse(LISTING);
        have.skeleton_for = Some("wg1".into());
        let s = plan(Some(&have), &want()).unwrap();
        assert!(s.starts_with("table inet anygate_policy\ndelete table inet anygate_policy\n"));
        assert!(s.contains("iifname \"wg0\" counter drop comment \"anygate:default-deny\""));
        assert!(plan(None, &want()).unwrap().contains("delete table"));
    }

    #[test]
    fn rules_and_sets_from_policies() {
        let p = Policy {
            name: "web".into(),
            group: "eng".into(),
            destinations: vec![
                "172.16.0.10/32".parse().unwrap(),
                "fd00:1::/64".parse().unwrap(),
            ],
            protocol: Some(Protocol::Tcp),
            ports: vec![crate::model::policy::PortRange(443, 443)],
            revision: 12,
        };
        assert_eq!(
            rule_text(&p, false, &[p.destinations[0]]),
            "ip saddr @g_656e67_4 ip daddr { 172.16.0.10 } meta l4proto tcp th dport { 443 } accept"
        );
        let all = Policy {
            group: "*".into(),
            protocol: Some(Protocol::Icmp),
            ports: vec![],
            ..p
        };
        assert_eq!(
            rule_text(&all, true, &[all.destinations[1]]),
            "ip6 daddr { fd00:1::/64 } meta l4proto ipv6-icmp accept"
        );
        let m = maximal(
            ["10.0.0.0/24", "10.0.0.5/32", "10.1.0.1/32"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
        );
        assert_eq!(m.len(), 2);
    }
    /// A tiny deterministic generator (no dependency for one test).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
        /// Nested prefixes in a small space, so covering happens often.
        fn net(&mut self) -> IpNet {
            let len = [8u8, 16, 24, 30, 32][self.next(5) as usize];
            let a = std::net::Ipv4Addr::new(
                10,
                self.next(2) as u8,
                self.next(3) as u8,
                self.next(8) as u8,
            );
            IpNet::new(IpAddr::V4(a), len).unwrap().trunc()
        }
    }

    #[test]
    fn members_stay_maximal_through_any_sequence() {
        let mut rng = Lcg(7);
        let mut m = Members::default();
        let mut kernel: BTreeSet<IpNet> = BTreeSet::new();
        let mut bag: Vec<IpNet> = Vec::new();
        for step in 0..20_000 {
            let mut d = SetDelta::default();
            if bag.is_empty() || rng.next(3) > 0 {
                let n = rng.net();
                bag.push(n);
                m.insert(n, &mut d);
            } else {
                let n = bag.swap_remove(rng.next(bag.len() as u64) as usize);
                m.remove(n, &mut d);
            }
            assert!(d.add.is_disjoint(&d.del), "step {step}: {d:?}");
            for n in &d.del {
                assert!(kernel.remove(n), "step {step}: deleted {n}, not in the set");
            }
            for n in &d.add {
                assert!(kernel.insert(*n), "step {step}: added {n} twice");
            }
            let want = maximal(bag.iter().copied().collect());
            assert_eq!(m.top, want, "step {step}");
            assert_eq!(kernel, want, "step {step}: the deltas replay to the set");
        }
    }

    fn key(i: u64) -> WgKey {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&i.to_le_bytes());
        WgKey(b)
    }

    #[test]
    fn wanted_follows_peer_changes_as_a_rebuild_would() {
        use crate::model::{Changes, Command, NewPeer, Request, Response};
        let mut inv = Inventory::default();
        let mut index = 0;
        // Applies `cmd`; false when the model refused it (nothing changed).
        let mut run = |inv: &mut Inventory, cmd: Command| {
            index += 1;
            let mut ch = Changes::default();
            let req = Request {
                actor: "t".into(),
                at_ms: 0,
                request_id: None,
                cmd,
            };
            !matches!(inv.apply(index, &req, &mut ch), Response::Rejected(_))
        };
        assert!(run(
            &mut inv,
            Command::SetSettings(crate::model::SettingsPatch {
                routable_prefixes: Some(vec!["10.0.0.0/8".parse().unwrap()]),
                ..Default::default()
            })
        ));
        for (name, group) in [("web", "eng"), ("db", "ops")] {
            assert!(run(
                &mut inv,
                Command::AddPolicy(Policy {
                    name: name.into(),
                    group: group.into(),
                    destinations: vec!["172.16.0.0/24".parse().unwrap()],
                    protocol: None,
                    ports: vec![],
                    revision: 0,
                })
            ));
        }
        let mut w = Wanted::build(&inv, "wg0");
        let mut kernel = w.desired();
        let mut rng = Lcg(11);
        let groups = ["eng", "ops", "sales"];
        for round in 0..400u64 {
            let k = key(rng.next(40));
            let cmd = match (inv.peer(&k).is_some(), rng.next(2)) {
                (true, 0) => Command::RemovePeer {
                    peer: crate::model::PeerRef::Key(k),
                },
                _ => {
                    if inv.peer(&k).is_some() {
                        assert!(run(
                            &mut inv,
                            Command::RemovePeer {
                                peer: crate::model::PeerRef::Key(k)
                            }
                        ));
                    }
                    let mut allowed = vec![rng.net(), rng.net()];
                    allowed.sort();
                    allowed.dedup();
                    Command::AddPeers(vec![NewPeer {
                        public_key: k,
                        preshared_key: None,
                        allowed_ips: allowed,
                        addresses: vec![],
                        user: format!("u{round}"),
                        device: "d".into(),
                        group: groups[rng.next(3) as usize].into(),
                        labels: Default::default(),
                        persistent_keepalive: None,
                        expires_at_ms: None,
                        pool: None,
                        state: None,
                    }])
                }
            };
            // A refused add (overlapping routes) changes nothing, but the
            // removal before it did: update either way.
            run(&mut inv, cmd);
            let d = w.update(&inv, &[k]);
            let mut have = Present {
                sets: kernel.sets.clone(),
                ..Default::default()
            };
            assert!(plan_delta(&have, &d).is_some());
            apply_delta(&mut have, &d);
            kernel.sets = have.sets;
            let fresh = desired(&inv, "wg0");
            assert_eq!(w.desired(), fresh, "round {round}");
            assert_eq!(
                kernel.sets, fresh.sets,
                "round {round}: deltas replay to the rebuild"
            );
        }
        assert!(
            !w.by_peer.is_empty(),
            "the test must have put peers in policy groups"
        );
    }
}
