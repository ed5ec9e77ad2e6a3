//! `bgp.mode = "external"`: the node attaches to a gobgpd it did not start
//! (as with a distribution's gobgpd service), starts BGP there, adds its
//! neighbor and keeps its own path — re-attaching after that gobgpd
//! restarts, and repairing a path deleted by hand.

use crate::harness::*;
use anygate_chaos::netns::Topology;
use anygate_chaos::router::{hops, Bird};
use anygate_core::config as file;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const ANYCAST: &str = "198.51.100.1";
const API: &str = "127.0.0.1:50061";

struct Gobgpd(Option<Child>);

impl Gobgpd {
    fn start(ns: &str) -> Gobgpd {
        Gobgpd(Some(
            Command::new("ip")
                .args(["netns", "exec", ns, "gobgpd", &format!("--api-hosts={API}")])
                .args(["--log-plain", "--pprof-disable"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("gobgpd"),
        ))
    }
}

impl Drop for Gobgpd {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn gobgp(ns: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "gobgp",
            "-u",
            "127.0.0.1",
            "-p",
            "50061",
        ])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn external_gobgpd_is_configured_repaired_and_reattached() {
    let mut c = Cluster::empty();
    let topo = Topology::create(&format!("agt10-{}", std::process::id()), 1).unwrap();
    let bird = Bird::start(&topo, c.dir(), &["198.51.100.0/24"]).unwrap();
    let ns = topo.ns(1);
    set_ctl_netns(Some(&ns));
    let mut daemon = Gobgpd::start(&ns);
    let (keyfile, public, _) = wg_keyfile(c.dir());
    c.add_gateway(Gateway {
        k: 1,
        ns: ns.clone(),
        bgp: file::Bgp {
            mode: Some(file::BgpMode::External),
            api: Some(API.to_string()),
            ..Default::default()
        },
        dataplane: Default::default(),
        ifname: format!("age{}", std::process::id() % 100_000),
        key: &keyfile,
        supervise: true,
        extra: &[],
    });
    c.form();
    let ep = c.all_endpoints();
    set_identity_and_anycast(&ep, &public, &["--anycast-v4", ANYCAST]);
    let one = hops(&topo, &[1]);
    bird.wait_hops(ANYCAST, &one, Duration::from_secs(30))
        .unwrap();
    let global = gobgp(&ns, &["global"]).unwrap();
    assert!(global.contains("65010"), "the node started BGP: {global}");
    assert!(gobgp(&ns, &["neighbor"]).unwrap().contains("10.78.1.1"));

    // A path deleted by hand is put back (checked every 5 s).
    gobgp(
        &ns,
        &[
            "global",
            "rib",
            "del",
            "-a",
            "ipv4",
            &format!("{ANYCAST}/32"),
        ],
    )
    .unwrap();
    bird.wait_hops(ANYCAST, &Default::default(), Duration::from_secs(2))
        .unwrap();
    bird.wait_hops(ANYCAST, &one, Duration::from_secs(10))
        .unwrap();

    // The external gobgpd restarts: the node re-attaches, starts BGP again,
    // re-adds the neighbor and the path.
    drop(daemon);
    bird.wait_hops(ANYCAST, &Default::default(), Duration::from_secs(2))
        .unwrap();
    eventually(
        "node reports gobgpd unavailable",
        Duration::from_secs(10),
        || {
            let s = status(&ep)?;
            let b = s["nodes"][0]["bgp"].clone();
            (b["state"] == "withdrawn" && b["withdraw_reason"] == "gobgpd-unavailable")
                .then_some(())
        },
    );
    daemon = Gobgpd::start(&ns);
    bird.wait_hops(ANYCAST, &one, Duration::from_secs(30))
        .unwrap();
    drop(daemon);
    set_ctl_netns(None);
}
