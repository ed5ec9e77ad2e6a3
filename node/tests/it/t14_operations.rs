//! Operations: /metrics after a known workload, and a backup restored into
//! a fresh cluster giving the same inventory.

use crate::harness::*;
use anygate_proto::tls::Role;
use serde_json::Value;
use std::time::Duration;

fn scrape(addr: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sf", &format!("http://{addr}/metrics")])
        .output()
        .unwrap();
    assert!(out.status.success(), "scrape {addr}");
    String::from_utf8(out.stdout).unwrap()
}

fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

#[test]
fn metrics_after_a_workload() {
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let mut c = Cluster::start(1, &["--metrics-listen", &metrics]);
    c.form();
    let ep = c.addr(1);
    ctl_ok(&ep, &["pool", "add", "corp", "--cidr", "10.61.0.0/24"]);
    for i in 0..5 {
        let u = format!("m{i}");
        ctl_ok(
            &ep,
            &[
                "peer",
                "add",
                "--user",
                &u,
                "--device",
                "d",
                "--public-key",
                &random_key(),
            ],
        );
    }
    // A refused write (duplicate device) and a refused role.
    let out = ctl(
        &ep,
        &[
            "peer",
            "add",
            "--user",
            "m0",
            "--device",
            "d",
            "--public-key",
            &random_key(),
        ],
    );
    assert!(!out.status.success());
    let (cv, kv) = pki().issue("metrics-viewer", Role::Viewer, vec![], None);
    let out = ctl(
        &ep,
        &[
            "--ca",
            pki().ca_path().to_str().unwrap(),
            "--cert",
            cv.to_str().unwrap(),
            "--key",
            kv.to_str().unwrap(),
            "pool",
            "remove",
            "corp",
        ],
    );
    assert!(!out.status.success());
    // A TLS handshake refused: plaintext.
    let _ = ctl(&ep, &["--insecure-dev", "--timeout", "1s", "peer", "list"]);

    let m = eventually(
        "the denial and refused handshake counted",
        Duration::from_secs(10),
        || {
            let m = scrape(&metrics);
            (sample(&m, "anygate_tls_handshakes_refused_total").unwrap_or(0.0) >= 1.0).then_some(m)
        },
    );
    assert_eq!(
        sample(&m, r#"anygate_writes_total{action="peer.add",result="ok"}"#),
        Some(5.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"anygate_writes_total{action="peer.add",result="error"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, r#"anygate_writes_total{action="pool.add",result="ok"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"anygate_api_denied_total{role="viewer",method="anygate.v1.PoolService/RemovePool"}"#
        ),
        Some(1.0)
    );
    assert_eq!(sample(&m, "anygate_peers"), Some(5.0));
    assert_eq!(sample(&m, "anygate_raft_is_leader"), Some(1.0));
    assert_eq!(sample(&m, "anygate_raft_leader"), Some(1.0));
    assert_eq!(sample(&m, "anygate_raft_members"), Some(1.0));
    assert!(sample(&m, "anygate_raft_applied_index").unwrap() >= 8.0);
    assert!(sample(&m, "anygate_tls_certificate_expiry_timestamp_seconds").unwrap() > 1.7e9);
    // Probes.
    for (path, want) in [("live", "ok"), ("ready", "ready: leader 1")] {
        let out = std::process::Command::new("curl")
            .args(["-sf", &format!("http://{metrics}/{path}")])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(want),
            "/{path}"
        );
    }
}

/// Fields that survive a restore (not revision, creation time).
fn essence(peers: &Value) -> Vec<Value> {
    let mut v: Vec<Value> = peers
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            serde_json::json!({
                "key": p["public_key"], "user": p["user"], "device": p["device"],
                "group": p["group"], "addresses": p["addresses"], "allowed_ips": p["allowed_ips"],
                "state": p["state"], "psk": p["has_preshared_key"], "labels": p["labels"],
                "keepalive": p["persistent_keepalive"], "pool": p["pool"],
            })
        })
        .collect();
    v.sort_by_key(|x| x["key"].as_str().unwrap().to_string());
    v
}

#[test]
fn backup_restores_into_a_fresh_cluster() {
    let mut a = Cluster::start(1, &[]);
    a.form();
    let ea = a.addr(1);
    ctl_ok(
        &ea,
        &[
            "settings",
            "set",
            "--anycast-v4",
            "192.0.2.44",
            "--mtu",
            "1380",
            "--dns",
            "10.62.0.53",
            "--routable-prefixes",
            "192.168.0.0/16",
        ],
    );
    ctl_ok(
        &ea,
        &[
            "pool",
            "add",
            "corp",
            "--cidr",
            "10.62.0.0/24",
            "--cidr",
            "fd00:62::/120",
        ],
    );
    ctl_ok(
        &ea,
        &[
            "pool",
            "add",
            "eng",
            "--cidr",
            "10.63.0.0/24",
            "--group",
            "eng",
        ],
    );
    ctl_ok(
        &ea,
        &[
            "policy",
            "add",
            "eng-web",
            "--group",
            "eng",
            "--to",
            "10.1.0.0/24",
            "--proto",
            "tcp",
            "--port",
            "443",
        ],
    );
    ctl_ok(
        &ea,
        &[
            "policy",
            "add",
            "dns",
            "--group",
            "*",
            "--to",
            "10.62.0.53",
            "--proto",
            "udp",
            "--port",
            "53",
        ],
    );
    let mut specs = vec![];
    for i in 0..120 {
        specs.push(serde_json::json!({
            "public_key": random_key(), "user": format!("u{i}"), "device": "laptop",
            "group": if i % 3 == 0 { "eng" } else { "" }, "pool": if i % 3 == 0 { "eng" } else { "corp" },
            "labels": {"n": i.to_string()},
        }));
    }
    let f = a.dir().join("peers.json");
    std::fs::write(&f, serde_json::to_string(&specs).unwrap()).unwrap();
    ctl_ok(
        &ea,
        &["peer", "import", f.to_str().unwrap(), "--batch", "50"],
    );
    ctl_ok(
        &ea,
        &[
            "peer",
            "add",
            "--user",
            "psk",
            "--device",
            "d",
            "--public-key",
            &random_key(),
            "--psk",
            "--pool",
            "corp",
        ],
    );
    ctl_ok(
        &ea,
        &[
            "peer",
            "add",
            "--user",
            "site",
            "--device",
            "r",
            "--public-key",
            &random_key(),
            "--allowed-ip",
            "192.168.7.0/24",
        ],
    );
    ctl_ok(&ea, &["peer", "disable", "u1/laptop"]);
    ctl_ok(&ea, &["peer", "revoke", "u2/laptop"]);
    // A key revoked and then removed: only its revocation remains.
    let k3 = ctl_json(&ea, &["peer", "show", "u3/laptop"])["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    ctl_ok(&ea, &["peer", "revoke", "u3/laptop"]);
    ctl_ok(&ea, &["peer", "remove", "u3/laptop"]);
    let readd = |ep: &str, key: &str| {
        ctl(
            ep,
            &[
                "peer",
                "add",
                "--user",
                "back",
                "--device",
                "d",
                "--public-key",
                key,
                "--pool",
                "corp",
            ],
        )
    };
    let out = readd(&ea, &k3);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is never accepted again"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `peer export` carries states, so an import cannot re-activate one.
    let exported = ctl_ok(&ea, &["peer", "export"]);
    assert!(exported
        .lines()
        .any(|l| l.contains("\"user\":\"u2\"") && l.contains("\"state\":\"revoked\"")));
    assert!(exported
        .lines()
        .any(|l| l.contains("\"user\":\"u1\"") && l.contains("\"state\":\"disabled\"")));
    let psk = ctl_json(&ea, &["peer", "show", "psk/d", "--secrets"])["preshared_key"].clone();

    ctl_ok(
        &ea,
        &[
            "idp",
            "map",
            "/staff/eng",
            "--group",
            "eng",
            "--role",
            "viewer",
            "--lifetime",
            "30d",
            "--max-devices",
            "3",
            "--require-mfa",
        ],
    );
    let backup = a.dir().join("backup.json");
    ctl_ok(&ea, &["backup", "export", backup.to_str().unwrap()]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the backup holds preshared keys");
    // Both secret reads are in the replicated audit log, not only in one
    // node's log file.
    let audit = ctl_json(&ea, &["audit", "list"]);
    for object in ["preshared key of psk/d", "backup (every preshared key)"] {
        assert!(
            audit
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["action"] == "secret.read" && e["object"] == object && e["error"] == ""),
            "{object}: {audit}"
        );
    }

    let mut b = Cluster::start(1, &[]);
    b.form();
    let eb = b.addr(1);
    ctl_ok(
        &eb,
        &[
            "backup",
            "restore",
            backup.to_str().unwrap(),
            "--batch",
            "40",
        ],
    );

    assert_eq!(
        essence(&ctl_json(&ea, &["peer", "list"])),
        essence(&ctl_json(&eb, &["peer", "list"]))
    );
    assert_eq!(
        ctl_json(&eb, &["peer", "show", "psk/d", "--secrets"])["preshared_key"],
        psk
    );
    // The revocations came along, the removed peer's too: its key is
    // refused in the new cluster, and so is the revoked peer's once removed.
    let revoked = |ep: &str| -> Vec<Value> {
        let mut v: Vec<Value> = ctl_json(ep, &["peer", "revoked"])
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["public_key"].clone())
            .collect();
        v.sort_by_key(|k| k.as_str().unwrap().to_string());
        v
    };
    assert_eq!(revoked(&ea).len(), 2);
    assert_eq!(revoked(&ea), revoked(&eb));
    assert_eq!(readd(&eb, &k3).status.code(), Some(1));
    let strip = |v: Value| -> Vec<Value> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let mut p = p.clone();
                p["revision"] = Value::Null;
                p
            })
            .collect()
    };
    assert_eq!(
        strip(ctl_json(&ea, &["policy", "list"])),
        strip(ctl_json(&eb, &["policy", "list"]))
    );
    assert_eq!(
        strip(ctl_json(&ea, &["idp", "list"])),
        strip(ctl_json(&eb, &["idp", "list"]))
    );
    assert_eq!(ctl_json(&eb, &["idp", "list"])[0]["role"], "viewer");
    assert_eq!(
        ctl_json(&ea, &["pool", "list"]),
        ctl_json(&eb, &["pool", "list"])
    );
    assert_eq!(
        ctl_json(&ea, &["settings", "get"]),
        ctl_json(&eb, &["settings", "get"])
    );

    let k2 = ctl_json(&eb, &["peer", "show", "u2/laptop"])["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    ctl_ok(&eb, &["peer", "remove", "u2/laptop"]);
    let out = readd(&eb, &k2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("was revoked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second restore is refused: the cluster is no longer empty.
    let out = ctl(&eb, &["backup", "restore", backup.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
}

#[test]
fn signed_client_configs_verify_and_tampering_is_caught() {
    let mut c = Cluster::start(1, &[]);
    c.form();
    let ep = c.addr(1);
    ctl_ok(
        &ep,
        &[
            "settings",
            "set",
            "--anycast-v4",
            "192.0.2.45",
            "--server-public-key",
            &random_key(),
        ],
    );
    ctl_ok(&ep, &["pool", "add", "corp", "--cidr", "10.64.0.0/24"]);
    let d = c.dir().to_path_buf();
    let key = d.join("signer");
    let keys = key.to_str().unwrap();
    let pubkey = format!("{keys}.pub");
    ctl_ok(&ep, &["config", "keygen", "--out", keys]);
    // anygatectl generates the client's key pair and signs the whole config.
    let cfg = ctl_ok(
        &ep,
        &[
            "peer",
            "add",
            "--user",
            "sig",
            "--device",
            "laptop",
            "--sign-key",
            keys,
        ],
    );
    assert!(
        cfg.contains("[Interface]") && cfg.contains("# anygate-signature: ed25519 "),
        "{cfg}"
    );
    let file = d.join("sig.conf");
    std::fs::write(&file, &cfg).unwrap();
    let f = file.to_str().unwrap();
    let ok = ctl(&ep, &["config", "verify", f, "--key", &pubkey]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // One changed endpoint.
    std::fs::write(&file, cfg.replace("192.0.2.45", "203.0.113.9")).unwrap();
    let out = ctl(&ep, &["config", "verify", f, "--key", &pubkey]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("changed after signing"));
    // Another signer's key.
    let other = d.join("other");
    ctl_ok(&ep, &["config", "keygen", "--out", other.to_str().unwrap()]);
    std::fs::write(&file, &cfg).unwrap();
    let out = ctl(
        &ep,
        &[
            "config",
            "verify",
            f,
            "--key",
            &format!("{}.pub", other.display()),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    // The existing peer's config, signed again, verifies too.
    let shown = ctl_ok(
        &ep,
        &["peer", "show", "sig/laptop", "--config", "--sign-key", keys],
    );
    std::fs::write(&file, &shown).unwrap();
    assert!(ctl(&ep, &["config", "verify", f, "--key", &pubkey])
        .status
        .success());
    // A rotation hands out a new signed config (new key, same addresses).
    let rotated = ctl_ok(&ep, &["peer", "rotate", "sig/laptop", "--sign-key", keys]);
    std::fs::write(&file, &rotated).unwrap();
    assert!(ctl(&ep, &["config", "verify", f, "--key", &pubkey])
        .status
        .success());
    assert_ne!(rotated, cfg);
    // A signing key others can read is refused before anything is added.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = ctl(
        &ep,
        &[
            "peer",
            "add",
            "--user",
            "sig2",
            "--device",
            "d",
            "--sign-key",
            keys,
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("0600"));
    assert!(ctl_json(&ep, &["peer", "list"])
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["user"] != "sig2"));
}
