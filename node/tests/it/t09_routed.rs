//! Return mode `routed`: the gateway holding a client's session announces
//! a host route for the client's tunnel address; when the session moves to
//! another gateway, the route moves with it. Two gateways (each supervising
//! gobgpd and wireguard-go) behind a BIRD 2 router; a real wireguard-go
//! client in the router's namespace reaching the anycast address.

use crate::harness::*;
use anygate_chaos::netns::Topology;
use anygate_chaos::router::{next_hops, Bird};
use anygate_core::config as file;
use std::collections::BTreeSet;
use std::time::Duration;

const ANYCAST: &str = "198.51.100.1";

fn client_routes(ep: &str, id: u32) -> u64 {
    bgp_status(ep, id as u64)
        .and_then(|b| b["client_routes"].as_u64())
        .unwrap_or(0)
}

#[test]
fn client_host_routes_follow_the_session() {
    let mut c = Cluster::empty();
    let topo = Topology::create(&format!("agt9-{}", std::process::id()), 2).unwrap();
    let bird = Bird::start(&topo, c.dir(), &["198.51.100.0/24", "10.100.0.0/16"]).unwrap();
    set_ctl_netns(Some(&topo.ns(1)));
    let (keyfile, gw_public, _) = wg_keyfile(c.dir());
    let tag = std::process::id() % 100_000;
    for k in 1..=2u32 {
        c.add_gateway(Gateway {
            k,
            ns: topo.ns(k),
            bgp: file::Bgp {
                graceful_shutdown_grace: Some(Duration::from_millis(500)),
                ..Default::default()
            },
            dataplane: Default::default(),
            ifname: format!("agr{tag}-{k}"),
            key: &keyfile,
            supervise: true,
            extra: &["--observe-interval", "200ms"],
        });
    }
    c.form();
    let ep = c.all_endpoints();
    set_identity_and_anycast(
        &ep,
        &gw_public,
        &["--anycast-v4", ANYCAST, "--return-mode", "routed"],
    );
    ctl_ok(&ep, &["pool", "add", "staff", "--cidr", "10.100.0.0/16"]);
    // The client's key pair; its peer gets 10.100.0.2 (the pool's first
    // client address).
    let client_dir = c.dir().join("client");
    std::fs::create_dir_all(&client_dir).unwrap();
    let (client_key, client_public, _) = wg_keyfile(&client_dir);
    let out = ctl_json(
        &ep,
        &[
            "peer",
            "add",
            "--user",
            "carol",
            "--device",
            "laptop",
            "--public-key",
            &client_public,
        ],
    );
    assert!(out.to_string().contains("10.100.0.2"), "{out}");
    let all: BTreeSet<String> = ["10.78.1.2", "10.78.2.2"].map(String::from).into();
    bird.wait_hops(ANYCAST, &all, Duration::from_secs(30))
        .unwrap();

    // The client connects: whichever gateway the router picked holds the
    // session and announces 10.100.0.2/32; the other does not.
    let client_if = format!("agc{tag}");
    let client = WgClient::start(&topo.hub(), &client_if, &client_key, &gw_public, ANYCAST);
    eventually(
        "client reaches the gateway",
        Duration::from_secs(10),
        || client.ping().then_some(()),
    );
    let holder = eventually(
        "a host route for the client",
        Duration::from_secs(10),
        || {
            let h = next_hops(&topo.hub(), "10.100.0.2").ok()?;
            (h.len() == 1).then(|| h.into_iter().next().unwrap())
        },
    );
    let k: u32 = if holder == "10.78.1.2" { 1 } else { 2 };
    let other = 3 - k;
    eventually("client route counts", Duration::from_secs(5), || {
        ((client_routes(&ep, k), client_routes(&ep, other)) == (1, 0)).then_some(())
    });

    // Move the session: drain the holder (anycast goes to the other
    // gateway), and the client starts a new session there.
    ctl_ok(&ep, &["node", "drain", &k.to_string()]);
    drop(client);
    let client = WgClient::start(&topo.hub(), &client_if, &client_key, &gw_public, ANYCAST);
    eventually(
        "client reaches the other gateway",
        Duration::from_secs(10),
        || client.ping().then_some(()),
    );
    let want: BTreeSet<String> = [format!("10.78.{other}.2")].into();
    eventually(
        "the host route moved with the session",
        Duration::from_secs(10),
        || (next_hops(&topo.hub(), "10.100.0.2").ok()? == want).then_some(()),
    );
    // The old holder's device still has a fresh handshake, but the map
    // names the new holder: exactly one route.
    assert_eq!((client_routes(&ep, k), client_routes(&ep, other)), (0, 1));
    drop(client);
    set_ctl_netns(None);
}
