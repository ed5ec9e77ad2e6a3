//! IPv6: the anycast /128 goes to IPv6 neighbors (MP_REACH_NLRI, next hop
//! self), the /32 to IPv4 ones, both following the same health decision.
//! Two gateways, each with an IPv4 and an IPv6 session to a BIRD 2 router.

use crate::harness::*;
use anygate_chaos::netns::Topology;
use anygate_chaos::router::{next_hops, Bird};
use anygate_core::config as file;
use std::collections::BTreeSet;
use std::time::Duration;

const V4: &str = "198.51.100.1";
const V6: &str = "2001:db8:100::1";

#[test]
fn anycast_v6_announced_over_ipv6_sessions() {
    let mut c = Cluster::empty();
    let topo = Topology::create(&format!("agt11-{}", std::process::id()), 2).unwrap();
    for k in 1..=2u32 {
        let (hub, ns) = (topo.hub(), topo.ns(k));
        in_ns(
            &hub,
            &[
                "ip",
                "addr",
                "add",
                &format!("fd78:{k}::1/64"),
                "dev",
                &format!("h{k}"),
                "nodad",
            ],
        );
        in_ns(
            &ns,
            &[
                "ip",
                "addr",
                "add",
                &format!("fd78:{k}::2/64"),
                "dev",
                "eth0",
                "nodad",
            ],
        );
    }
    let gws: Vec<String> = ["10.78.1.2", "10.78.2.2", "fd78:1::2", "fd78:2::2"]
        .map(String::from)
        .into();
    let bird = Bird::start_with(
        &topo,
        c.dir(),
        &gws,
        &["198.51.100.0/24", "2001:db8:100::/48"],
    )
    .unwrap();
    set_ctl_netns(Some(&topo.ns(1)));
    let (keyfile, public, _) = wg_keyfile(c.dir());
    let tag = std::process::id() % 100_000;
    for k in 1..=2u32 {
        c.add_gateway(Gateway {
            k,
            ns: topo.ns(k),
            bgp: file::Bgp {
                graceful_shutdown_grace: Some(Duration::from_millis(200)),
                neighbors: vec![file::Neighbor {
                    address: format!("fd78:{k}::1"),
                    peer_as: 65000,
                    ..Default::default()
                }],
                ..Default::default()
            },
            dataplane: Default::default(),
            ifname: format!("ag6{tag}-{k}"),
            key: &keyfile,
            supervise: true,
            extra: &[],
        });
    }
    c.form();
    let ep = c.all_endpoints();
    set_identity_and_anycast(&ep, &public, &["--anycast-v4", V4, "--anycast-v6", V6]);
    let set = |v: &[&str]| -> BTreeSet<String> { v.iter().map(|s| s.to_string()).collect() };
    let wait = |addr: &str, want: BTreeSet<String>, what: &str| {
        bird.wait_hops(addr, &want, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    };
    wait(V4, set(&["10.78.1.2", "10.78.2.2"]), "v4 from both");
    wait(V6, set(&["fd78:1::2", "fd78:2::2"]), "v6 from both");
    let s = status(&ep).unwrap();
    let routes = s["nodes"][0]["bgp"]["routes"].to_string();
    assert!(
        routes.contains("198.51.100.1/32") && routes.contains("2001:db8:100::1/128"),
        "{routes}"
    );
    assert_eq!(s["nodes"][0]["bgp"]["sessions_established"], 2, "{s}");

    ctl_ok(&ep, &["node", "drain", "1"]);
    wait(V4, set(&["10.78.2.2"]), "v4 after drain");
    wait(V6, set(&["fd78:2::2"]), "v6 after drain");
    ctl_ok(&ep, &["node", "undrain", "1"]);
    wait(V6, set(&["fd78:1::2", "fd78:2::2"]), "v6 after undrain");
    assert_eq!(
        next_hops(&topo.hub(), V4).unwrap(),
        set(&["10.78.1.2", "10.78.2.2"])
    );
    set_ctl_netns(None);
}
