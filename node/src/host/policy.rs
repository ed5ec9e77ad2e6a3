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
use crate::model::Inventory;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
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
/// O(n²) scan on every commit, 10k members in a group took ~100 ms).
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

/// The table the inventory asks for on interface `ifname`.
pub fn desired(inv: &Inventory, ifname: &str) -> Desired {
    let mut d = Desired {
        ifname: ifname.to_string(),
        ..Default::default()
    };
    let groups: BTreeSet<&str> = inv
        .policies()
        .map(|p| p.group.as_str())
        .filter(|g| *g != ALL_GROUPS)
        .collect();
    let mut members: BTreeMap<String, BTreeSet<IpNet>> = BTreeMap::new();
    for g in &groups {
        members.insert(set_name(g, false), BTreeSet::new());
        members.insert(set_name(g, true), BTreeSet::new());
    }
    for peer in inv.peers() {
        if !groups.contains(peer.group.as_str()) {
            continue;
        }
        let nets = peer
            .addresses
            .iter()
            .map(|a| IpNet::from(*a))
            .chain(peer.allowed_ips.iter().map(|n| n.trunc()));
        for n in nets {
            let v6 = matches!(n.addr(), IpAddr::V6(_));
            if let Some(s) = members.get_mut(&set_name(&peer.group, v6)) {
                s.insert(n);
            }
        }
    }
    d.sets = members.into_iter().map(|(k, v)| (k, maximal(v))).collect();
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
            d.rules.insert(id, rule_text(p, v6, &dst));
        }
    }
    d
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
        if !minus.is_empty() {
            add.push_str(&format!(
                "delete element inet {TABLE} {name} {{ {} }}\n",
                elements(&minus)
            ));
        }
        if !plus.is_empty() {
            add.push_str(&format!(
                "add element inet {TABLE} {name} {{ {} }}\n",
                elements(&plus)
            ));
        }
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
}
