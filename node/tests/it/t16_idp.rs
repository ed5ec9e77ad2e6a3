//! Identity-provider group mappings (`anygatectl idp`): replicated, only an
//! admin may write them, bad input is refused with a message that names
//! the rule and changes nothing, and they survive a restart.

use crate::harness::*;
use anygate_proto::tls::Role;
use std::time::Duration;

#[test]
fn idp_mappings_are_replicated_role_checked_and_validated() {
    let mut c = Cluster::start(3, &[]);
    c.form();
    let ep = c.all_endpoints();
    let m = ctl_json(
        &ep,
        &[
            "idp",
            "map",
            "/staff/eng",
            "--group",
            "eng",
            "--lifetime",
            "30d",
            "--max-devices",
            "3",
        ],
    );
    assert_eq!(m["idp_group"], "/staff/eng");
    assert_eq!(m["group"], "eng");
    assert_eq!(m["role"], "none");
    assert_eq!(m["lifetime_seconds"], 30 * 24 * 3600);
    assert_eq!(m["max_devices"], 3);
    // Every node answers the same (linearizable reads).
    for id in 1..=3 {
        let l = ctl_json(&c.addr(id), &["idp", "list"]);
        assert_eq!(l.as_array().unwrap().len(), 1, "node {id}: {l}");
        assert_eq!(l[0]["group"], "eng");
    }
    // Mapping a group again replaces its mapping (defaults: 12 h, 5).
    ctl_ok(&ep, &["idp", "map", "/staff/eng", "--role", "operator"]);
    ctl_ok(
        &ep,
        &[
            "idp",
            "map",
            "vpn-admins",
            "--role",
            "admin",
            "--require-mfa",
        ],
    );
    let l = ctl_json(&ep, &["idp", "list"]);
    assert_eq!(l.as_array().unwrap().len(), 2, "{l}");
    let eng = &l[0];
    assert_eq!(
        (eng["group"].clone(), eng["role"].clone()),
        ("".into(), "operator".into())
    );
    assert_eq!(eng["lifetime_seconds"], 12 * 3600);
    assert_eq!(eng["max_devices"], 5);
    assert_eq!(l[1]["require_mfa"], true);
    let table = ctl_ok(&ep, &["idp", "list"]);
    assert!(
        table.contains("IDP GROUP") && table.contains("vpn-admins"),
        "{table}"
    );

    // Bad input: refused, named, nothing changed.
    let before = ctl_json(&ep, &["idp", "list"]);
    // Invalid input exits 2, a refusal by the cluster 1 (README).
    for (args, code, says) in [
        (
            vec!["idp", "map", "sales"],
            2,
            "a group (--group), a role (--role) or both",
        ),
        (
            vec!["idp", "map", "sales", "--group", "s", "--lifetime", "1m"],
            2,
            "between 10 minutes and 365 days",
        ),
        (
            vec!["idp", "map", "sales", "--group", "s", "--max-devices", "0"],
            2,
            "0 is not in 1..=100",
        ),
        (
            vec!["idp", "map", "sales", "--group", "s", "--lifetime", "0s"],
            2,
            "between 10 minutes and 365 days",
        ),
        (
            vec!["idp", "map", "sa\tles", "--group", "s"],
            2,
            "control character",
        ),
        (vec!["idp", "map", "sales", "--group", "*"], 2, "not \"*\""),
        (vec!["idp", "unmap", "nobody"], 1, "is not mapped"),
    ] {
        let out = ctl(&ep, &args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    let long = "g".repeat(300);
    let out = ctl(&ep, &["idp", "map", &long, "--group", "s"]);
    assert!(
        stderr(&out).contains("300 bytes; at most 256"),
        "{}",
        stderr(&out)
    );
    // A role the console does not have is a usage error (exit 2).
    let out = ctl(&ep, &["idp", "map", "sales", "--role", "node"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(ctl_json(&ep, &["idp", "list"]), before);

    // Only an admin writes mappings; a viewer reads them.
    let p = pki();
    for (name, role) in [("otto", Role::Operator), ("vera", Role::Viewer)] {
        let (cert, key) = p.issue(name, role, vec![], None);
        let out = ctl_as(
            &ep,
            &p.ca_path(),
            &cert,
            &key,
            &["idp", "map", "x", "--role", "admin"],
        );
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(stderr(&out).contains("may not"), "{name}: {}", stderr(&out));
        let out = ctl_as(&ep, &p.ca_path(), &cert, &key, &["--json", "idp", "list"]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
    }
    assert_eq!(ctl_json(&ep, &["idp", "list"]), before);

    // Written and refused changes are in the replicated audit log.
    let audit = ctl_json(&ep, &["audit", "list"]);
    let has =
        |action: &str, object: &str, failed: bool| {
            audit.as_array().unwrap().iter().any(|e| {
                e["action"] == action && e["object"] == object && (e["error"] != "") == failed
            })
        };
    assert!(has("idp.map", "/staff/eng", false), "{audit}");
    assert!(has("idp.unmap", "nobody", true), "{audit}");

    // Unmap; the state survives a restart (RocksDB).
    ctl_ok(&ep, &["idp", "unmap", "vpn-admins"]);
    let n2 = c.addr(2);
    let local = |ep: &str| -> Option<Vec<serde_json::Value>> {
        let out = ctl(ep, &["--json", "idp", "list", "--stale"]);
        out.status.success().then(|| {
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .unwrap()
                .as_array()
                .unwrap()
                .clone()
        })
    };
    eventually("node 2 applied the unmap", Duration::from_secs(10), || {
        local(&n2).filter(|l| l.len() == 1)
    });
    c.node(2).kill();
    c.node(2).start();
    let after = eventually("node 2 answers again", Duration::from_secs(20), || {
        local(&n2)
    });
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["idp_group"], "/staff/eng");
}
