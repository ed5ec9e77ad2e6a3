//! In the lab (3 gateways, BIRD, wireguard-go, mutual TLS): a client of
//! group staff reaches service A and not service B; `policy add` for B
//! opens it on every gateway for the connected client (no new handshake);
//! `policy remove` closes it again; a hand edit of a gateway's policy
//! table is repaired. Then the gateways' /metrics after that workload.

use anygate_chaos::lab::{self, Options, State, GROUP, SERVICE, SERVICE_B};
use std::path::PathBuf;
use std::time::Duration;

struct Lab(State);

impl Drop for Lab {
    fn drop(&mut self) {
        lab::teardown(&self.0);
    }
}

fn reaches(st: &State, client: usize, addr: &str) -> bool {
    lab::in_ns(&st.clients[client].namespace, &["ping", "-c1", "-W1", addr]).is_ok()
}

fn handshake(st: &State) -> String {
    let c = &st.clients[0];
    lab::in_ns(
        &c.namespace,
        &["wg", "show", &c.wg_interface, "latest-handshakes"],
    )
    .unwrap()
}

fn every_gateway(st: &State, what: &str, f: impl Fn(&str) -> bool) {
    for g in &st.gateways {
        lab::wait(
            &format!("{what} on {}", g.namespace),
            Duration::from_secs(10),
            || {
                lab::in_ns(
                    &g.namespace,
                    &["nft", "list", "table", "inet", "anygate_policy"],
                )
                .is_ok_and(|t| f(&t))
            },
        )
        .unwrap();
    }
}

/// `addr` is an element of a listing (not a prefix of a longer address).
fn listed(listing: &str, addr: &str) -> bool {
    listing
        .split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'))
        .any(|w| w == addr)
}

fn metric(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[test]
fn group_policy_is_enforced_on_every_gateway_without_a_reconnect() {
    let dir = PathBuf::from("/var/lib/anygate-test-lab-policy");
    if let Some(old) = lab::running(&dir) {
        lab::teardown(&old);
    }
    let st = lab::create(
        &dir,
        "agp",
        Options {
            gateways: 3,
            start: 3,
            clients: 2,
            assists: true,
        },
        &|s| eprintln!("== {s}"),
        &|s| eprintln!("{s}"),
    )
    .expect("lab up");
    let lab = Lab(st);
    let st = &lab.0;

    // Group staff may reach service A only (the lab's policy).
    assert!(reaches(st, 0, SERVICE));
    assert!(
        !reaches(st, 0, SERVICE_B),
        "service B reachable without a policy"
    );
    let addr = st.clients[0]
        .tunnel_address
        .split('/')
        .next()
        .unwrap()
        .to_string();
    every_gateway(st, "the client in group staff's set", |t| t.contains(&addr));
    let show = lab::ctl(st, &["peer", "show", &st.clients[0].public_key]).unwrap();
    assert!(
        show.contains(&format!("{SERVICE}/32 any (staff-service)")),
        "{show}"
    );

    // Joining and leaving the group while its policy exists: one commit
    // each, applied as element changes to the group's set (the per-peer
    // path, not a rebuild), on every gateway.
    let (_, extra) = lab::keypair();
    let out = lab::ctl(
        st,
        &[
            "--json",
            "peer",
            "add",
            "--user",
            "joiner",
            "--device",
            "phone",
            "--group",
            GROUP,
            "--public-key",
            &extra,
        ],
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let joined = v["allowed_ips"][0]
        .as_str()
        .or_else(|| v[0]["allowed_ips"][0].as_str())
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no address in {out}"))
        .to_string();
    every_gateway(st, "the new member in the group's set", |t| {
        listed(t, &joined) && listed(t, &addr)
    });
    lab::ctl(st, &["peer", "remove", &extra]).unwrap();
    every_gateway(st, "the removed member out of the group's set", |t| {
        !listed(t, &joined) && listed(t, &addr)
    });

    // Open B for the group: every gateway, the connected client, no handshake.
    let before = handshake(st);
    lab::ctl(
        st,
        &[
            "policy", "add", "staff-b", "--group", GROUP, "--to", SERVICE_B, "--proto", "icmp",
        ],
    )
    .unwrap();
    every_gateway(st, "the rule for staff-b", |t| t.contains("p:staff-b:"));
    lab::wait("client 1 reaches service B", Duration::from_secs(5), || {
        reaches(st, 0, SERVICE_B)
    })
    .unwrap();
    assert!(
        reaches(st, 1, SERVICE_B),
        "client 2 (same group) does not reach B"
    );
    assert_eq!(handshake(st), before, "the client had to reconnect");

    // A hand edit (the rule deleted) is repaired by the next resync.
    let g = &st.gateways[0].namespace;
    let listing = lab::in_ns(
        g,
        &[
            "nft",
            "-a",
            "list",
            "chain",
            "inet",
            "anygate_policy",
            "clients",
        ],
    )
    .unwrap();
    let handle = listing
        .lines()
        .find(|l| l.contains("p:staff-b:"))
        .and_then(|l| l.rsplit_once("# handle "))
        .map(|(_, h)| h.trim().to_string())
        .unwrap();
    lab::in_ns(
        g,
        &[
            "nft",
            "delete",
            "rule",
            "inet",
            "anygate_policy",
            "clients",
            "handle",
            &handle,
        ],
    )
    .unwrap();
    lab::wait("the deleted rule is back", Duration::from_secs(20), || {
        lab::in_ns(
            g,
            &["nft", "list", "chain", "inet", "anygate_policy", "clients"],
        )
        .is_ok_and(|t| t.contains("p:staff-b:"))
    })
    .unwrap();

    // Remove it: closed again, on every gateway.
    lab::ctl(st, &["policy", "remove", "staff-b"]).unwrap();
    every_gateway(st, "no rule for staff-b", |t| !t.contains("p:staff-b:"));
    lab::wait("service B closed again", Duration::from_secs(5), || {
        !reaches(st, 0, SERVICE_B)
    })
    .unwrap();
    assert!(reaches(st, 0, SERVICE));

    // Metrics after that workload, from the serving gateway's /metrics.
    let serving = lab::serving_gateway(st, &st.clients[0].public_key).unwrap_or(1);
    let g = &st.gateways[serving as usize - 1].namespace;
    lab::wait(
        "per-peer metrics after a device read",
        Duration::from_secs(15),
        || {
            let m = lab::in_ns(g, &["curl", "-sf", "http://127.0.0.1:9400/metrics"])
                .unwrap_or_default();
            // Series exist for live sessions on this gateway: client 1's.
            metric(&m, "anygate_peer_rx_bytes")
                .iter()
                .any(|(k, _)| k.contains("user=\"user1\""))
        },
    )
    .unwrap();
    let m = lab::in_ns(g, &["curl", "-sf", "http://127.0.0.1:9400/metrics"]).unwrap();
    let rx = metric(&m, "anygate_peer_rx_bytes");
    assert!(
        rx.iter().any(|(k, v)| k.contains("user=\"user1\"")
            && k.contains("group=\"staff\"")
            && *v > 0.0),
        "{rx:?}"
    );
    let hs = metric(&m, "anygate_peer_last_handshake_timestamp_seconds");
    assert!(hs.iter().any(|(_, v)| *v > 1.7e9), "{hs:?}");
    assert_eq!(
        metric(&m, "anygate_policy_rules").first().map(|x| x.1),
        Some(1.0)
    );
    // The counter is read back with every device read (1 s).
    lab::wait(
        "the dropped pings to B counted",
        Duration::from_secs(5),
        || {
            let m = lab::in_ns(g, &["curl", "-sf", "http://127.0.0.1:9400/metrics"])
                .unwrap_or_default();
            metric(&m, "anygate_policy_denied_packets")
                .first()
                .is_some_and(|x| x.1 >= 1.0)
        },
    )
    .unwrap();
    assert_eq!(
        metric(&m, "anygate_bgp_announced").first().map(|x| x.1),
        Some(1.0)
    );
    assert!(
        metric(&m, "anygate_raft_term")
            .first()
            .is_some_and(|x| x.1 >= 1.0),
        "raft term"
    );
    assert!(
        metric(&m, "anygate_bgp_session_up")
            .iter()
            .any(|(_, v)| *v == 1.0),
        "BGP session state"
    );
    let ready = lab::in_ns(
        g,
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://127.0.0.1:9400/ready",
        ],
    )
    .unwrap();
    assert_eq!(ready.trim(), "200");
}
