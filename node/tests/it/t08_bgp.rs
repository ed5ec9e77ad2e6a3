//! BGP anycast against real routers: a BIRD2 router doing ECMP in one
//! namespace, three gateway namespaces each running a node that supervises
//! its own gobgpd and wireguard-go. The router's kernel route to the anycast
//! address is the ground truth: its next hops are the gateways announcing.
//!
//! drain -> 2 next hops (the drained one first re-announced with
//! GRACEFUL_SHUTDOWN, which the router deprefers at once); undrain -> 3;
//! kill -9 of a node takes its gobgpd along and the router drops it within
//! 1 s; gobgpd alone killed -> supervisor restores; wireguard-go killed -> the
//! node withdraws, then re-announces; Raft traffic cut with nftables -> the
//! node withdraws after the leader lease and comes back after the heal;
//! SIGTERM withdraws before the node stops.

use crate::harness::*;
use anygate_chaos::netns::Topology;
use anygate_chaos::router::{hops, Bird};
use anygate_core::config as file;
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ANYCAST: &str = "198.51.100.1";
const LEASE_S: u64 = 3;

/// Gateways K = 1..=n in namespaces behind a routing hub that runs BIRD
/// (anygate_chaos's topology and router, shared with the benchmark).
struct Lab {
    topo: Topology,
    bird: Bird,
    /// wireguard-go processes the test started itself (node 3's device).
    wg: Vec<std::process::Child>,
}

impl Lab {
    fn new(n: u32, dir: &std::path::Path) -> Lab {
        let topo = Topology::create(&format!("agt8-{}", std::process::id()), n).unwrap();
        let bird = Bird::start(&topo, dir, &["198.51.100.0/24"]).unwrap();
        Lab {
            topo,
            bird,
            wg: vec![],
        }
    }
    fn gw(&self, k: u32) -> String {
        self.topo.ns(k)
    }
    fn ifname(&self, k: u32) -> String {
        format!("agb{}-{k}", std::process::id() % 100_000)
    }
    fn next_hops(&self) -> BTreeSet<String> {
        self.bird.next_hops(ANYCAST).expect("router route query")
    }
    fn hops_of(&self, ks: &[u32]) -> BTreeSet<String> {
        hops(&self.topo, ks)
    }
    fn wait_hops(&self, what: &str, ks: &[u32], timeout: Duration) -> Duration {
        self.bird
            .wait_hops(ANYCAST, &self.hops_of(ks), timeout)
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// An unsupervised wireguard-go for gateway k (as an operator might run
    /// one under systemd); returns once its UAPI socket answers.
    fn start_wireguard_go(&mut self, k: u32) -> u32 {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.gw(k),
                "wireguard-go",
                "-f",
                &self.ifname(k),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("wireguard-go");
        let pid = child.id();
        self.wg.push(child);
        let (ns, ifname) = (self.gw(k), self.ifname(k));
        eventually("wireguard-go up", Duration::from_secs(5), || {
            Command::new("ip")
                .args(["netns", "exec", &ns, "wg", "show", &ifname])
                .stderr(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .ok()?
                .success()
                .then_some(())
        });
        pid
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Lab {
    fn drop(&mut self) {
        for mut w in self.wg.drain(..) {
            let _ = w.kill();
            let _ = w.wait();
        }
        for k in 1..=self.topo.n {
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.ifname(k)));
        }
    }
}

fn kill9(pid: u32) {
    sh(&["kill", "-9", &pid.to_string()]);
}

#[test]
fn anycast_follows_health_drain_and_failures() {
    let mut c = Cluster::empty();
    let mut lab = Lab::new(3, c.dir());
    // Nodes 1 and 2 supervise their wireguard-go; node 3 uses one started
    // outside the node, so that its device can die and stay dead.
    let wg3 = lab.start_wireguard_go(3);
    set_ctl_netns(Some(&lab.gw(1)));
    let (keyfile, public, _) = wg_keyfile(c.dir());
    for k in 1..=3u32 {
        c.add_gateway(Gateway {
            k,
            ns: lab.gw(k),
            bgp: file::Bgp {
                leader_lease: Some(Duration::from_secs(LEASE_S)),
                graceful_shutdown_grace: Some(Duration::from_secs(2)),
                shutdown_grace: Some(Duration::from_millis(500)),
                ..Default::default()
            },
            dataplane: Default::default(),
            ifname: lab.ifname(k),
            key: &keyfile,
            supervise: k != 3,
            extra: &["--observe-interval", "300ms", "--resync-interval", "2s"],
        });
    }
    c.form();
    let ep = c.all_endpoints();

    // Nothing is announced while the dataplane cannot serve (no identity yet).
    let b = eventually("BGP status reported", Duration::from_secs(10), || {
        bgp_status(&ep, 1)
            .filter(|b| b["state"] != "disabled" && b["withdraw_reason"] != "starting")
    });
    assert_eq!(b["state"], "withdrawn", "{b}");
    assert!(lab.next_hops().is_empty());
    set_identity_and_anycast(&ep, &public, &["--anycast-v4", ANYCAST]);
    ctl_ok(&ep, &["pool", "add", "staff", "--cidr", "10.100.0.0/16"]);
    lab.wait_hops("3 gateways announce", &[1, 2, 3], Duration::from_secs(30));
    for id in 1..=3 {
        let b = bgp_status(&ep, id).unwrap();
        assert_eq!(b["state"], "announced", "node {id}: {b}");
        assert_eq!(b["sessions_established"], 1, "{b}");
        assert_eq!(b["routes"][0], format!("{ANYCAST}/32"), "{b}");
    }
    let table = ctl_ok(&ep, &["cluster", "status"]);
    assert!(
        table.contains("ANYCAST") && table.contains("announced 1/1"),
        "{table}"
    );

    // Idle for longer than the lease: leader contact (heartbeats) keeps
    // every node announcing, the leader included.
    let all = lab.hops_of(&[1, 2, 3]);
    holds_for(
        "idle cluster stays announced",
        Duration::from_secs(LEASE_S + 1),
        || lab.next_hops() == all,
    );

    // Drain node 2: GRACEFUL_SHUTDOWN first (the router deprefers it at
    // once, well inside the 2 s grace), then the withdrawal.
    let t0 = Instant::now();
    let out = ctl_in(Some(&lab.gw(1)), &ep, &["node", "drain", "2", "--no-wait"]);
    assert!(out.status.success(), "{out:?}");
    lab.wait_hops("drained node deprefered", &[1, 3], Duration::from_secs(2));
    let deprefered = t0.elapsed();
    let r = lab.bird.show_route(ANYCAST);
    assert!(
        r.contains("(65535,0)") && r.contains("10.78.2.2"),
        "during the grace node 2's route carries GRACEFUL_SHUTDOWN:\n{r}"
    );
    assert!(deprefered < Duration::from_secs(2), "{deprefered:?}");
    eventually("node 2 withdrawn", Duration::from_secs(5), || {
        (!lab.bird.show_route(ANYCAST).contains("10.78.2.2")).then_some(())
    });
    let b = bgp_status(&ep, 2).unwrap();
    assert_eq!(b["state"], "withdrawn");
    assert_eq!(b["reason"], "drained by an operator");
    assert_eq!(b["withdraw_reason"], "drained");
    let s = ctl_json(&ep, &["cluster", "status"]);
    assert!(s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["id"] == 2 && n["drained"] == true));
    // Undrain: back to 3 (the CLI waits until it announces).
    ctl_ok(&ep, &["node", "undrain", "2"]);
    lab.wait_hops("undrained", &[1, 2, 3], Duration::from_secs(5));
    // A node that does not exist is refused, non-zero exit.
    let out = ctl(&ep, &["node", "drain", "9"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a member"),
        "{out:?}"
    );

    // Kill only gobgpd on node 2: the router drops it, the supervisor
    // restarts gobgpd and re-announces.
    let g2 = pids_in_ns(&lab.gw(2), "gobgpd");
    assert_eq!(g2.len(), 1, "one gobgpd in node 2's namespace: {g2:?}");
    kill9(g2[0]);
    lab.wait_hops("gobgpd killed", &[1, 3], Duration::from_secs(2));
    lab.wait_hops(
        "gobgpd restarted and re-announced",
        &[1, 2, 3],
        Duration::from_secs(30),
    );
    let b = bgp_status(&ep, 2).unwrap();
    assert_eq!(b["gobgpd_restarts"], 1, "{b}");

    // gobgpd's API (no authentication) answers the node's user only, also
    // after the restart: another local user is reset (hardening finding 13).
    let root = Command::new("ip")
        .args(["netns", "exec", &lab.gw(2), "gobgp", "global"])
        .output()
        .unwrap();
    assert!(root.status.success(), "{root:?}");
    let connect = |user: &str| {
        Command::new("ip")
            .args(["netns", "exec", &lab.gw(2), "setpriv"])
            .args([
                format!("--reuid={user}"),
                format!("--regid={user}"),
                "--clear-groups".into(),
            ])
            .args(["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/50051"])
            .output()
            .unwrap()
    };
    let other = connect("65534");
    assert!(!other.status.success(), "{other:?}");
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(err.contains("Connection refused"), "{err}");
    // The same connect as root (the node's user here) goes through.
    let own = connect("0");
    assert!(own.status.success(), "{own:?}");

    // Kill node 3's wireguard-go: the node withdraws (no black hole) and
    // announces again once a device is back and reprogrammed.
    let t0 = Instant::now();
    kill9(wg3);
    lab.wait_hops("device gone -> withdrawn", &[1, 2], Duration::from_secs(1));
    let withdrawn_after = t0.elapsed();
    eprintln!("wireguard-go killed: router dropped the node after {withdrawn_after:?}");
    let b = bgp_status(&ep, 3).unwrap();
    assert!(
        b["reason"].as_str().unwrap().starts_with("dataplane:"),
        "{b}"
    );
    lab.start_wireguard_go(3);
    lab.wait_hops(
        "device back -> announced",
        &[1, 2, 3],
        Duration::from_secs(30),
    );
    // A supervised wireguard-go (node 1) is restarted by its node at once.
    let w1 = pids_in_ns(&lab.gw(1), "wireguard-go");
    assert_eq!(w1.len(), 1, "{w1:?}");
    kill9(w1[0]);
    eventually(
        "node 1's wireguard-go restarted",
        Duration::from_secs(10),
        || {
            let now = pids_in_ns(&lab.gw(1), "wireguard-go");
            (now.len() == 1 && now != w1).then_some(())
        },
    );
    lab.wait_hops(
        "node 1 announcing after the restart",
        &[1, 2, 3],
        Duration::from_secs(30),
    );

    // Cut the Raft leader off from the other nodes' Raft traffic (BGP to
    // the router stays up): it withdraws once the lease runs out; the other
    // two elect a leader and keep announcing; after the heal it is back.
    let leader = c.leader() as u32;
    let others: Vec<u32> = (1..=3).filter(|k| *k != leader).collect();
    let peers = others
        .iter()
        .map(|k| format!("10.78.{k}.2"))
        .collect::<Vec<_>>()
        .join(", ");
    let cut = write_file(
        c.dir(),
        "cut.nft",
        &format!(
            "table inet agtcut {{\n chain i {{ type filter hook input priority -10; ip saddr {{ {peers} }} tcp dport 7400 drop; ip saddr {{ {peers} }} tcp sport 7400 drop; }}\n chain o {{ type filter hook output priority -10; ip daddr {{ {peers} }} tcp dport 7400 drop; ip daddr {{ {peers} }} tcp sport 7400 drop; }}\n}}\n"
        ),
    );
    let t0 = Instant::now();
    in_ns(&lab.gw(leader), &["nft", "-f", cut.to_str().unwrap()]);
    lab.wait_hops(
        "partitioned leader withdrawn",
        &others,
        Duration::from_secs(LEASE_S + 5),
    );
    let after = t0.elapsed();
    assert!(
        after >= Duration::from_secs(LEASE_S) - Duration::from_millis(500),
        "withdrew after {after:?}, before the {LEASE_S} s lease ran out"
    );
    eprintln!("partitioned leader withdrew after {after:?} (lease {LEASE_S} s)");
    in_ns(
        &lab.gw(leader),
        &["nft", "delete", "table", "inet", "agtcut"],
    );
    lab.wait_hops(
        "healed node announces again",
        &[1, 2, 3],
        Duration::from_secs(20),
    );

    // kill -9 node 3: its gobgpd dies with it; the router drops it within 1 s.
    let t0 = Instant::now();
    c.node(3).kill();
    let took = lab.wait_hops("node 3 killed", &[1, 2], Duration::from_secs(1));
    eprintln!(
        "kill -9 of node 3: router dropped it after {:?}",
        t0.elapsed().max(took)
    );
    eventually("node 3's gobgpd gone", Duration::from_secs(2), || {
        pids_in_ns(&lab.gw(3), "gobgpd").is_empty().then_some(())
    });

    // SIGTERM node 1: it withdraws before it stops serving.
    let pid1 = c.node(1).child.as_ref().unwrap().id();
    sh(&["kill", "-TERM", &pid1.to_string()]);
    lab.wait_hops("SIGTERM withdraws first", &[2], Duration::from_secs(2));
    let st = c.node(1).child.as_mut().unwrap().wait().unwrap();
    assert!(st.success(), "node 1 exited cleanly after SIGTERM: {st}");
    c.node(1).child = None;
    let log = c.node(1).log();
    let w = log.find("withdrawn").expect("withdrawal logged");
    let s = log.find("stopped").expect("stop logged");
    assert!(w < s, "withdrawn before stopped:\n{}", tail(&log, 30));
    set_ctl_netns(None);
}
