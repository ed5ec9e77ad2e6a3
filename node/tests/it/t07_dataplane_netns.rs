//! Three nodes, each in its own network namespace with its own wireguard-go
//! (started and supervised by the node), joined by a bridge in a fourth
//! namespace. Everything is created by this test and removed at the end;
//! nothing leaves the namespaces.
//!
//! 1,000 peers are added, changed, disabled and removed through anygatectl;
//! all three devices must equal the inventory; a hand edit with `wg` is
//! reverted; a link flap gets the routes back; a node killed with -9 takes its
//! wireguard-go with it and converges after a restart; a key file readable by
//! others is refused.

use crate::harness::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

struct Topo {
    prefix: String,
    n: u32,
}

impl Topo {
    fn new(n: u32) -> Topo {
        let t = Topo {
            prefix: format!("agt7-{}", std::process::id()),
            n,
        };
        let hub = t.hub();
        sh(&["ip", "netns", "add", &hub]);
        sh(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &hub, "link", "set", "br0", "up"]);
        for k in 1..=n {
            let ns = t.ns(k);
            sh(&["ip", "netns", "add", &ns]);
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            // Created straight into their namespaces: nothing in the root one.
            sh(&[
                "ip",
                "link",
                "add",
                "eth0",
                "netns",
                &ns,
                "type",
                "veth",
                "peer",
                "name",
                &format!("v{k}"),
                "netns",
                &hub,
            ]);
            sh(&[
                "ip",
                "-n",
                &hub,
                "link",
                "set",
                &format!("v{k}"),
                "master",
                "br0",
                "up",
            ]);
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.77.0.{k}/24"),
                "dev",
                "eth0",
            ]);
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        }
        t
    }
    fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }
    fn ns(&self, k: u32) -> String {
        format!("{}-n{k}", self.prefix)
    }
    fn ifname(&self, k: u32) -> String {
        format!("agw{}-{k}", std::process::id() % 100_000)
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for k in 1..=self.n {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(k)])
                .status();
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.ifname(k)));
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub()])
            .status();
    }
}

/// key -> sorted allowed IPs, from `wg show IF dump` inside the namespace.
fn device(ns: &str, ifname: &str) -> Option<BTreeMap<String, Vec<String>>> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "wg", "show", ifname, "dump"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let mut m = BTreeMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let mut ips: Vec<String> = if f[3] == "(none)" {
            vec![]
        } else {
            f[3].split(',').map(str::to_string).collect()
        };
        ips.sort();
        m.insert(f[0].to_string(), ips);
    }
    Some(m)
}

/// Active peers of the inventory, in the same shape.
fn inventory(ep: &str) -> Option<BTreeMap<String, Vec<String>>> {
    let out = ctl(ep, &["--json", "--timeout", "5s", "peer", "list"]);
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut m = BTreeMap::new();
    for p in v.as_array()? {
        if p["state"] != "active" {
            continue;
        }
        let mut ips: Vec<String> = p["allowed_ips"]
            .as_array()?
            .iter()
            .map(|s| s.as_str().unwrap_or_default().to_string())
            .collect();
        ips.sort();
        m.insert(p["public_key"].as_str()?.to_string(), ips);
    }
    Some(m)
}

fn all_devices_equal_inventory(t: &Topo, c: &Cluster, what: &str) -> usize {
    let ep = c.live_endpoints();
    eventually(what, Duration::from_secs(30), || {
        let want = inventory(&ep)?;
        for k in 1..=t.n {
            if device(&t.ns(k), &t.ifname(k))? != want {
                return None;
            }
        }
        Some(want.len())
    })
}

fn dataplane_of(ep: &str, id: u64) -> Option<Value> {
    let s = status(ep)?;
    s["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["id"] == id)
        .map(|n| n["dataplane"].clone())
}

#[test]
fn three_nodes_keep_their_wireguard_go_devices_equal_to_the_inventory() {
    let topo = Topo::new(3);
    set_ctl_netns(Some(&topo.ns(1)));
    let mut c = Cluster::empty();
    let (keyfile, public, private) = wg_keyfile(c.dir());
    let key = keyfile.to_str().unwrap().to_string();
    for k in 1..=3u32 {
        let ifname = topo.ifname(k);
        c.add_node_at(
            k as u64,
            format!("10.77.0.{k}:7400"),
            Some(topo.ns(k)),
            &[
                "--dataplane-backend",
                "userspace",
                "--wireguard-go",
                "wireguard-go",
                "--wg-interface",
                &ifname,
                "--wg-private-key-file",
                &key,
                "--resync-interval",
                "2s",
                "--observe-interval",
                "500ms",
            ],
        );
    }
    c.form();
    let ep = c.all_endpoints();

    // Identity: unhealthy until the cluster names this key.
    let d = eventually("dataplane reports", Duration::from_secs(10), || {
        dataplane_of(&ep, 2).filter(|d| d["backend"] == "userspace" && d["reason"] != "starting")
    });
    assert_eq!(d["healthy"], false);
    assert!(
        d["reason"].as_str().unwrap().contains("server-public-key"),
        "{d}"
    );
    ctl_ok(
        &ep,
        &[
            "settings",
            "set",
            "--server-public-key",
            &public,
            "--anycast-v4",
            "198.51.100.1",
            // Site routes, and (below) one inside the nodes' own subnet
            // that every node must refuse to install.
            "--routable-prefixes",
            "172.31.0.0/16,10.77.0.128/25",
        ],
    );
    ctl_ok(&ep, &["pool", "add", "staff", "--cidr", "10.100.0.0/16"]);

    // 1,000 peers through anygatectl import.
    let mut lines = String::new();
    let mut keys = vec![];
    for i in 0..1000 {
        let k = random_key();
        lines.push_str(&format!(
            "{{\"public_key\":\"{k}\",\"user\":\"u{i}\",\"device\":\"d\",\"pool\":\"staff\"}}\n"
        ));
        keys.push(k);
    }
    let file = write_file(c.dir(), "peers.jsonl", &lines);
    ctl_ok(&ep, &["peer", "import", file.to_str().unwrap()]);
    assert_eq!(
        all_devices_equal_inventory(&topo, &c, "1,000 peers on every device"),
        1000
    );
    for id in 1..=3 {
        let d = eventually("healthy dataplane", Duration::from_secs(10), || {
            dataplane_of(&ep, id).filter(|d| d["healthy"] == true)
        });
        assert_eq!(d["device_peers"], 1000, "{d}");
    }

    // Change 50 (rotate), disable 50, remove 50, and one static route
    // outside the pool.
    for (i, k) in keys.iter().enumerate().take(150) {
        let verb = match i / 50 {
            0 => "rotate",
            1 => "disable",
            _ => "remove",
        };
        let mut args = vec!["peer", verb, k.as_str()];
        let new_key;
        if verb == "rotate" {
            new_key = random_key();
            args.extend(["--public-key", new_key.as_str()]);
        }
        ctl_ok(&ep, &args);
    }
    ctl_ok(
        &ep,
        &[
            "peer",
            "add",
            "--user",
            "site",
            "--device",
            "router",
            "--public-key",
            &random_key(),
            "--allowed-ip",
            "172.31.5.0/24",
        ],
    );
    assert_eq!(
        all_devices_equal_inventory(&topo, &c, "devices after change/disable/remove"),
        1000 - 100 + 1
    );

    // A hand edit on node 2 is reverted (one extra peer, one removed).
    let (ns2, if2) = (topo.ns(2), topo.ifname(2));
    in_ns(
        &ns2,
        &[
            "wg",
            "set",
            &if2,
            "peer",
            &random_key(),
            "allowed-ips",
            "10.99.0.1/32",
        ],
    );
    in_ns(&ns2, &["wg", "set", &if2, "peer", &keys[500], "remove"]);
    all_devices_equal_inventory(&topo, &c, "hand edit reverted");

    // Host network on node 3: gateway address, anycast on lo, the static
    // client route, the SNAT rule; a link flap loses the route, the node
    // puts it back.
    let (ns3, if3) = (topo.ns(3), topo.ifname(3));
    let route_back = |what: &str| {
        eventually(what, Duration::from_secs(10), || {
            let r = in_ns(&ns3, &["ip", "route", "show", "dev", &if3]);
            let a = in_ns(&ns3, &["ip", "addr", "show", "dev", &if3]);
            (r.contains("172.31.5.0/24")
                && r.contains("proto 240")
                && a.contains("10.100.0.1/16")
                && a.contains("UP"))
            .then_some(())
        })
    };
    route_back("routes on node 3");
    assert!(in_ns(&ns3, &["ip", "addr", "show", "dev", "lo"]).contains("198.51.100.1/32"));
    let nft = in_ns(&ns3, &["nft", "list", "table", "inet", "anygate"]);
    assert!(nft.contains("ip saddr set 198.51.100.1"), "{nft}");
    assert!(nft.contains("udp dport 51820 notrack"), "{nft}");
    assert!(nft.contains("masquerade"), "{nft}");
    in_ns(&ns3, &["ip", "link", "set", &if3, "down"]);
    assert!(!in_ns(&ns3, &["ip", "route", "show", "dev", &if3]).contains("172.31.5.0/24"));
    in_ns(&ns3, &["ip", "link", "set", &if3, "up"]);
    route_back("route restored after the link flap");

    // A client route never takes over the gateway's own reachability (a
    // host on its cluster subnet) and never replaces a route someone else
    // installed: node 3 has a blackhole for 172.31.9.0/24 of its own.
    in_ns(&ns3, &["ip", "route", "add", "blackhole", "172.31.9.0/24"]);
    for (user, net) in [("near", "10.77.0.200/32"), ("theirs", "172.31.9.0/24")] {
        ctl_ok(
            &ep,
            &[
                "peer",
                "add",
                "--user",
                user,
                "--device",
                "r",
                "--public-key",
                &random_key(),
                "--allowed-ip",
                net,
            ],
        );
    }
    let (ns1, if1) = (topo.ns(1), topo.ifname(1));
    eventually(
        "node 1 routes the site, not the host on its subnet",
        Duration::from_secs(10),
        || {
            let r = in_ns(&ns1, &["ip", "route", "show", "dev", &if1]);
            let log = c.nodes.iter().find(|n| n.id == 1).unwrap().log();
            (r.contains("172.31.9.0/24")
                && log.contains("client route not installed")
                && log.contains("10.77.0.200/32"))
            .then_some(())
        },
    );
    eventually(
        "node 3 leaves the foreign route alone",
        Duration::from_secs(10),
        || {
            let log = c.nodes.iter().find(|n| n.id == 3).unwrap().log();
            log.contains("a route to it that anygate did not install exists")
                .then_some(())
        },
    );
    for ns in [&ns1, &ns3] {
        let r = in_ns(ns, &["ip", "route", "show", "10.77.0.200"]);
        assert!(!r.contains("proto 240"), "{ns}: {r}");
    }
    let r3 = in_ns(&ns3, &["ip", "route", "show", "172.31.9.0/24"]);
    assert!(
        r3.contains("blackhole") && !r3.contains("proto 240"),
        "{r3}"
    );
    // Nodes are reachable on their cluster subnet as before.
    status(&c.addr(3)).expect("node 3 answers on its cluster address");
    for user in ["near", "theirs"] {
        ctl_ok(&ep, &["peer", "remove", &format!("{user}/r")]);
    }
    in_ns(&ns3, &["ip", "route", "del", "blackhole", "172.31.9.0/24"]);

    // kill -9 node 3: its wireguard-go dies with it (the device vanishes).
    c.node(3).kill();
    eventually(
        "node 3's wireguard-go gone",
        Duration::from_secs(10),
        || {
            let out = Command::new("ip")
                .args(["-n", &ns3, "link", "show", &if3])
                .stderr(Stdio::null())
                .output()
                .ok()?;
            (!out.status.success()).then_some(())
        },
    );
    let ep12 = c.live_endpoints();
    for k in keys.iter().skip(900).take(10) {
        ctl_ok(&ep12, &["peer", "remove", k]);
    }
    c.node(3).start();
    assert_eq!(
        all_devices_equal_inventory(&topo, &c, "node 3 converged after restart"),
        1000 - 100 + 1 - 10
    );
    route_back("routes on node 3 after restart");

    // A key file others can read is refused, with the reason.
    let loose = c.dir().join("loose.key");
    std::fs::write(&loose, &private).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(node_bin())
        .args(["--id", "9", "--insecure-dev", "--data-dir"])
        .arg(c.dir().join("n9"))
        .args(["--dataplane-backend", "userspace", "--wg-private-key-file"])
        .arg(&loose)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    assert!(
        !c.dir().join("n9").exists(),
        "nothing created before refusing"
    );
    set_ctl_netns(None);
}
