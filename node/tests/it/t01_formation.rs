//! Formation through anygatectl, a write sent to a follower, linearizable
//! reads everywhere, settings, the client config, audit.

use crate::harness::*;

#[test]
fn three_nodes_form_and_serve_writes_from_any_node() {
    let mut c = Cluster::start(3, &[]);
    c.form();
    let leader = c.leader();
    let follower = c.nodes.iter().map(|n| n.id).find(|&i| i != leader).unwrap();
    let f = c.addr(follower);

    // Writes sent to a follower reach the leader.
    ctl_ok(
        &f,
        &[
            "pool",
            "add",
            "corp",
            "--cidr",
            "10.80.0.0/16",
            "--cidr",
            "fd00:80::/64",
        ],
    );
    ctl_ok(
        &f,
        &[
            "settings",
            "set",
            "--anycast-v4",
            "192.0.2.10",
            "--server-public-key",
            &random_key(),
            "--dns",
            "10.80.0.1",
        ],
    );
    let added = ctl_json(
        &f,
        &[
            "peer", "add", "--user", "alice", "--device", "laptop", "--group", "eng", "--psk",
        ],
    );
    assert_eq!(added["addresses"][0], "10.80.0.2");
    assert_eq!(added["addresses"][1], "fd00:80::2");
    let cfg = added["client_config"].as_str().unwrap();
    for want in [
        "PrivateKey = ",
        "Address = 10.80.0.2/32, fd00:80::2/128",
        "Endpoint = 192.0.2.10:51820",
        "MTU = 1420",
        "DNS = 10.80.0.1",
        "PresharedKey = ",
        "PersistentKeepalive = 25",
    ] {
        assert!(cfg.contains(want), "config lacks {want:?}:\n{cfg}");
    }
    let key = added["public_key"].as_str().unwrap().to_string();

    // Linearizable read on every node right after the write returned.
    for n in &c.nodes {
        let p = ctl_json(&n.addr, &["peer", "show", &key]);
        assert_eq!(p["user"], "alice", "node {}", n.id);
        assert_eq!(p["state"], "active");
        assert!(
            p.get("preshared_key").is_none_or(|v| v.is_null()),
            "list/show hide the PSK by default"
        );
    }
    // Disable, filters, enable, remove.
    ctl_ok(&f, &["peer", "disable", "alice/laptop"]);
    let disabled = ctl_json(&c.addr(leader), &["peer", "list", "--state", "disabled"]);
    assert_eq!(disabled.as_array().unwrap().len(), 1);
    ctl_ok(&f, &["peer", "enable", "alice/laptop"]);
    let by_user = ctl_json(&f, &["peer", "list", "--user", "alice", "--group", "eng"]);
    assert_eq!(by_user.as_array().unwrap().len(), 1);

    // Rotation keeps the address.
    let rotated = ctl_json(&f, &["peer", "rotate", "alice/laptop"]);
    assert_ne!(rotated["public_key"], key.as_str());
    assert_eq!(rotated["addresses"][0], "10.80.0.2");

    // Table output for people.
    let table = ctl_ok(&f, &["cluster", "status"]);
    for col in [
        "ROLE", "TERM", "LAST LOG", "APPLIED", "LAG", "LEADER", "leader",
    ] {
        assert!(table.contains(col), "status table lacks {col}:\n{table}");
    }
    let settings = ctl_json(&f, &["settings", "get"]);
    assert_eq!(settings["listen_port"], 51820);
    assert_eq!(settings["anycast_v4"], "192.0.2.10");

    // Audit: who did what, on any node. The actor is the name in the
    // caller's certificate (the harness's anygatectl holds "admin").
    let audit = ctl_json(&c.addr(follower), &["audit", "list", "--actor", "admin"]);
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "pool.add",
        "settings.set",
        "peer.add",
        "peer.disable",
        "peer.enable",
        "peer.rotate",
    ] {
        assert!(actions.contains(&a), "audit lacks {a}: {actions:?}");
    }

    // Ephemeral peers disappear everywhere.
    ctl_ok(
        &f,
        &[
            "peer", "add", "--user", "bob", "--device", "kiosk", "--ttl", "3s",
        ],
    );
    let bobs = |n: &Node| {
        ctl_json(&n.addr, &["peer", "list", "--stale", "--user", "bob"])
            .as_array()
            .unwrap()
            .len()
    };
    eventually(
        "ephemeral peer on every node",
        std::time::Duration::from_secs(5),
        || c.nodes.iter().all(|n| bobs(n) == 1).then_some(()),
    );
    eventually(
        "ephemeral peer expired on every node",
        std::time::Duration::from_secs(15),
        || c.nodes.iter().all(|n| bobs(n) == 0).then_some(()),
    );
    let audit = ctl_json(&f, &["audit", "list"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "peer.expire"),
        "{audit:#}"
    );
}

/// A follower that lags (its applies held back 1.5 s): a stale read there
/// misses a write that just returned — so the lag is real — and the
/// default, linearizable read of the same peer on the same node waits for
/// it and finds it.
#[test]
fn a_read_on_a_lagging_follower_sees_the_write_that_just_returned() {
    let mut c = Cluster::empty();
    c.add_node(1, &[]);
    c.add_node(2, &[]);
    c.add_node(3, &["--test-hold-back-apply", "1500ms"]);
    c.form();
    let leader = c.leader();
    assert_ne!(leader, 3, "the lagging node must be a follower");
    let l = c.addr(leader);
    ctl_ok(&l, &["pool", "add", "corp", "--cidr", "10.80.0.0/16"]);
    let added = ctl_json(&l, &["peer", "add", "--user", "bob", "--device", "phone"]);
    let key = added["public_key"].as_str().unwrap().to_string();
    let lagging = c.addr(3);
    let stale = ctl(&lagging, &["peer", "show", &key, "--stale"]);
    assert!(
        !stale.status.success(),
        "node 3 already had the peer: the apply was not held back, the test proves nothing"
    );
    let p = ctl_json(&lagging, &["peer", "show", &key]);
    assert_eq!(p["user"], "bob", "{p}");
}
