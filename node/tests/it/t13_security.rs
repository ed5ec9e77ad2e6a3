//! Mutual TLS and roles: who is refused and how, what a refusal leaves in
//! the audit log, secrets for admins only, the write rate limit, and
//! certificate rotation (a new CA) with the cluster up throughout.

use crate::harness::*;
use anygate_proto::tls::Role;
use anygate_proto::v1::pool_service_client::PoolServiceClient;
use anygate_proto::v1::{AddPoolRequest, Pool};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// A certificate from `ca`, valid for an hour.
fn cert(
    ca: &anygate_proto::pki::Pem,
    name: &str,
    role: Role,
    sans: Vec<String>,
) -> anygate_proto::pki::Pem {
    let req = anygate_proto::pki::Request::new(name, role, sans, Duration::from_secs(3600));
    anygate_proto::pki::issue(ca, &req).unwrap()
}

/// A TLS client that trusts the cluster CA but presents no certificate.
fn handshake_without_certificate(addr: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_file(pki().ca_path()).unwrap())
            .unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut s = match tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
            .connect(name, tcp)
            .await
        {
            Ok(s) => s,
            Err(e) => return e.to_string(),
        };
        let _ = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let mut b = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
            Ok(Err(e)) => e.to_string(),
            other => format!("no refusal: {other:?}"),
        }
    })
}

#[test]
fn only_certified_callers_with_the_right_role_get_in() {
    let mut c = Cluster::start(3, &["--write-rate", "5"]);
    c.form();
    let leader = c.leader();
    let l = c.addr(leader);
    let f = c.addr(if leader == 1 { 2 } else { 1 });
    let p = pki();

    // No certificate: plaintext, and TLS without a client certificate.
    let out = ctl(&f, &["--insecure-dev", "peer", "list"]);
    assert!(!out.status.success(), "plaintext was served");
    assert!(stderr(&out).contains("requires TLS"), "{}", stderr(&out));
    let e = handshake_without_certificate(&f);
    assert!(e.contains("CertificateRequired"), "{e}");

    // A certificate from another CA.
    let other = tempfile::tempdir().unwrap();
    let ca2 = anygate_proto::pki::new_ca("other CA", Duration::from_secs(3600)).unwrap();
    let adm2 = cert(&ca2, "mallory", Role::Admin, vec![]);
    let (c2, k2) = (other.path().join("m.pem"), other.path().join("m.key"));
    std::fs::write(&c2, adm2.cert).unwrap();
    std::fs::write(&k2, adm2.key).unwrap();
    let out = ctl_as(&f, &p.ca_path(), &c2, &k2, &["peer", "list"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not trust your certificate"),
        "{}",
        stderr(&out)
    );

    // An expired certificate of the right CA.
    let (ce, ke) = p.issue(
        "expired-admin",
        Role::Admin,
        vec![],
        Some(SystemTime::now() - Duration::from_secs(60)),
    );
    let out = ctl_as(&f, &p.ca_path(), &ce, &ke, &["peer", "list"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));

    // A viewer reads, but cannot write; the refusal is audited on every node.
    let (cv, kv) = p.issue("vera", Role::Viewer, vec![], None);
    let out = ctl_as(&f, &p.ca_path(), &cv, &kv, &["--json", "peer", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ctl_as(
        &f,
        &p.ca_path(),
        &cv,
        &kv,
        &["pool", "add", "x", "--cidr", "10.9.0.0/24"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("needs role operator"),
        "{}",
        stderr(&out)
    );
    for n in 1..=3 {
        let ep = c.addr(n);
        eventually(
            &format!("node {n} audits the refusal"),
            Duration::from_secs(10),
            || {
                let a = ctl_json(&ep, &["audit", "list", "--actor", "vera", "--stale"]);
                a.as_array()?
                    .iter()
                    .any(|e| {
                        e["action"] == "denied"
                            && e["object"] == "anygate.v1.PoolService/AddPool"
                            && e["error"]
                                .as_str()
                                .is_some_and(|s| s.contains("role viewer"))
                    })
                    .then_some(())
            },
        );
    }
    assert!(ctl_json(&l, &["pool", "list"])
        .as_array()
        .unwrap()
        .is_empty());

    // An operator adds pools and peers, reads no preshared key, changes no settings.
    let (co, ko) = p.issue("otto", Role::Operator, vec![], None);
    let out = ctl_as(
        &l,
        &p.ca_path(),
        &co,
        &ko,
        &["pool", "add", "corp", "--cidr", "10.9.0.0/24"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let key = random_key();
    let out = ctl_as(
        &l,
        &p.ca_path(),
        &co,
        &ko,
        &[
            "peer",
            "add",
            "--user",
            "u",
            "--device",
            "d",
            "--public-key",
            &key,
            "--psk",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = ctl_json(&l, &["peer", "show", "u/d", "--secrets"]);
    let psk = shown["preshared_key"]
        .as_str()
        .expect("an admin sees the preshared key")
        .to_string();
    assert_eq!(psk.len(), 44);
    for args in [
        &["--json", "peer", "list"][..],
        &["--json", "peer", "show", "u/d"],
        &["--json", "peer", "export"],
    ] {
        let out = ctl_as(&l, &p.ca_path(), &co, &ko, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains(&psk),
            "{args:?} printed a preshared key"
        );
    }
    let out = ctl_as(
        &l,
        &p.ca_path(),
        &co,
        &ko,
        &["peer", "show", "u/d", "--secrets"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("needs role admin"),
        "{}",
        stderr(&out)
    );
    let out = ctl_as(
        &l,
        &p.ca_path(),
        &co,
        &ko,
        &["settings", "set", "--mtu", "1380"],
    );
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );
    let audit = ctl_json(&l, &["audit", "list", "--actor", "otto"]);
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "pool.add"));

    // An operator cannot speak Raft.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut raft = anygate_proto::raft::v1::raft_service_client::RaftServiceClient::new(
            client_channel(&l, "otto"),
        );
        let e = raft
            .vote(anygate_proto::raft::v1::RaftPayload {
                data: b"{}".to_vec(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    });

    // Write rate: 5/s with a burst of 10 per caller; the excess is refused
    // before it reaches the log.
    let (ok, limited) = rt.block_on(async {
        let mut pools = PoolServiceClient::new(client_channel(&l, "otto"));
        let (mut ok, mut limited) = (0, 0);
        for i in 0..30 {
            let r = pools
                .add_pool(AddPoolRequest {
                    pool: Some(Pool {
                        name: format!("burst{i}"),
                        cidrs: vec![format!("10.10.{i}.0/24")],
                        ..Default::default()
                    }),
                })
                .await;
            match r {
                Ok(_) => ok += 1,
                Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                    assert!(s.message().contains("write rate limit"), "{}", s.message());
                    limited += 1
                }
                Err(s) => panic!("unexpected {s}"),
            }
        }
        (ok, limited)
    });
    // otto spent 2 of its burst of 10 above.
    assert!(ok >= 8 && limited > 0, "ok {ok}, limited {limited}");
    let pools = ctl_json(&l, &["pool", "list"]);
    let burst = pools
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("burst")))
        .count();
    assert_eq!(burst, ok, "exactly the accepted writes applied");
}

/// Writes `pems` concatenated to `to` (atomically: a node may be reading).
fn write_bundle(to: &Path, pems: &[&str]) {
    let tmp = to.with_extension("tmp");
    std::fs::write(&tmp, pems.concat()).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

fn put(dir: &Path, name: &str, pem: &anygate_proto::pki::Pem) -> (PathBuf, PathBuf) {
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    let kt = k.with_extension("tmp");
    std::fs::write(&kt, &pem.key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&kt, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&kt, &k).unwrap();
    write_bundle(&c, &[&pem.cert]);
    (c, k)
}

fn hup(c: &Cluster) {
    for n in &c.nodes {
        if let Some(ch) = &n.child {
            let st = std::process::Command::new("kill")
                .args(["-HUP", &ch.id().to_string()])
                .status()
                .unwrap();
            assert!(st.success());
        }
    }
}

#[test]
fn a_new_ca_is_rolled_out_with_the_cluster_up() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = pki();
    // Phase 0: the test CA (CA1); one node certificate for 127.0.0.1 serves all three.
    let ca1 = p.ca.cert.clone();
    write_bundle(&d.join("ca.pem"), &[&ca1]);
    let n1 = cert(&p.ca, "node", Role::Node, vec!["127.0.0.1".into()]);
    let (nc, nk) = put(d, "node", &n1);
    let (ca, ncs, nks) = (
        d.join("ca.pem").display().to_string(),
        nc.display().to_string(),
        nk.display().to_string(),
    );
    let mut c = Cluster::start(3, &["--tls-ca", &ca, "--tls-cert", &ncs, "--tls-key", &nks]);
    c.form();
    let eps = c.all_endpoints();
    ctl_ok(&eps, &["pool", "add", "corp", "--cidr", "10.11.0.0/24"]);

    // Phase 1: trust CA1 and CA2.
    let ca2 = anygate_proto::pki::new_ca("CA2", Duration::from_secs(3600)).unwrap();
    write_bundle(&d.join("ca.pem"), &[&ca1, &ca2.cert]);
    hup(&c);
    let adm2 = cert(&ca2, "admin2", Role::Admin, vec![]);
    let (ac, ak) = put(d, "admin2", &adm2);
    let bundle = d.join("ca.pem");
    eventually(
        "an admin of CA2 is accepted",
        Duration::from_secs(10),
        || {
            ctl_as(&eps, &bundle, &ac, &ak, &["peer", "list"])
                .status
                .success()
                .then_some(())
        },
    );

    // Phase 2: nodes switch to certificates of CA2; a restarted node rejoins
    // over new connections with them.
    let n2 = cert(&ca2, "node", Role::Node, vec!["127.0.0.1".into()]);
    put(d, "node", &n2);
    hup(&c);
    c.node(3).kill();
    c.node(3).start();
    let key = random_key();
    let out = ctl_as(
        &eps,
        &bundle,
        &ac,
        &ak,
        &[
            "peer",
            "add",
            "--user",
            "r",
            "--device",
            "d",
            "--public-key",
            &key,
            "--pool",
            "corp",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let n3 = c.addr(3);
    eventually(
        "the restarted node has the new write",
        Duration::from_secs(20),
        || {
            let out = ctl_as(
                &n3,
                &bundle,
                &ac,
                &ak,
                &["--json", "peer", "list", "--stale"],
            );
            String::from_utf8_lossy(&out.stdout)
                .contains(&key)
                .then_some(())
        },
    );

    // Phase 3: CA1 is no longer trusted: its admin is refused, CA2's works,
    // and the cluster still commits writes.
    write_bundle(&d.join("ca.pem"), &[&ca2.cert]);
    hup(&c);
    eventually("CA1's admin is refused", Duration::from_secs(10), || {
        let out = ctl(&eps, &["peer", "list"]);
        (!out.status.success()).then_some(())
    });
    let out = ctl_as(
        &eps,
        &bundle,
        &ac,
        &ak,
        &["pool", "add", "more", "--cidr", "10.12.0.0/24"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ctl_as(&eps, &bundle, &ac, &ak, &["--json", "cluster", "status"]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(s["leader_id"].as_u64().unwrap() > 0);
    for n in &c.nodes {
        assert!(
            n.log().contains("TLS material reloaded"),
            "node {} never reloaded",
            n.id
        );
    }
}

#[test]
fn unsafe_files_and_wrong_certificates_stop_the_node_before_it_serves() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki();
    let (nc, nk) = p.issue("files-node", Role::Node, vec!["127.0.0.1".into()], None);
    let run = |data: &Path, cert: &Path, key: &Path| {
        std::process::Command::new(node_bin())
            .args(["--id", "1", "--dataplane-backend", "none", "--listen"])
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--data-dir")
            .arg(data)
            .arg("--tls-ca")
            .arg(p.ca_path())
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .unwrap()
    };
    // Exit 64 (a configuration error: systemd does not restart into it),
    // saying what to fix.
    let refused = |out: std::process::Output, why: &str| {
        assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
        assert!(stderr(&out).contains(why), "{}", stderr(&out));
    };
    use std::os::unix::fs::PermissionsExt;
    // A data dir others can read.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    refused(run(&open, &nc, &nk), "chmod 700");
    // A TLS key others can read.
    let loose = dir.path().join("loose.key");
    std::fs::copy(&nk, &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused(run(&dir.path().join("d1"), &nc, &loose), "chmod 600");
    // An operator's certificate is not a node's.
    let (oc, ok) = p.issue("files-operator", Role::Operator, vec![], None);
    refused(run(&dir.path().join("d2"), &oc, &ok), "needs role node");
    // A key that is not the certificate's.
    refused(run(&dir.path().join("d3"), &nc, &ok), "does not match");
}

/// Hardening finding 11: 3,000 idle connections from one source (no TLS
/// handshake, the cheapest attack there is) hold at most the per-source
/// limit of the node's file descriptors; Raft and the API keep working.
#[test]
fn idle_connections_cannot_starve_raft_or_the_api() {
    let mut c = Cluster::start(3, &[]);
    c.form();
    let ep = c.all_endpoints();
    let target: std::net::SocketAddr = c.addr(1).parse().unwrap();
    let pid = c.node(1).child.as_ref().unwrap().id();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let before = fds();
    anygate_proto::tls::raise_nofile();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let socks = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..3_000 {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            if let Ok(conn) = s.connect(target).await {
                v.push(conn.into_std().unwrap());
            }
        }
        v
    });
    assert!(
        socks.len() > 2_000,
        "the attack must have connected: {}",
        socks.len()
    );
    // The node closed all but its per-source limit at once.
    let closed = eventually(
        "connections over the limit closed",
        Duration::from_secs(10),
        || {
            let closed = socks
                .iter()
                .filter(|s| {
                    use std::io::Read;
                    let mut b = [0u8; 1];
                    let mut s: &std::net::TcpStream = s;
                    !matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                })
                .count();
            (closed >= socks.len() - 64).then_some(closed)
        },
    );
    assert!(closed <= socks.len());
    let held = fds();
    assert!(
        held < before + 100,
        "node 1 holds {held} fds (was {before})"
    );
    // Raft and the API through node 1 work, and a write commits at once.
    let t = Instant::now();
    ctl_ok(
        &c.addr(1),
        &["pool", "add", "after", "--cidr", "10.91.0.0/24"],
    );
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(
        ctl_json(&ep, &["pool", "list"]).as_array().unwrap().len(),
        1
    );
    assert!(status(&c.addr(1)).is_some());
    drop(socks);
}

/// Hardening finding 10: a revoked certificate is refused on every node at
/// its next call, on a connection that was already open; a node
/// certificate that names no member's address has no Raft rights.
#[test]
fn revoked_certificates_and_non_members_are_refused() {
    let mut c = Cluster::start(3, &[]);
    c.form();
    let ep = c.all_endpoints();
    let (a1, a2) = (c.addr(1), c.addr(2));
    let p = pki();
    let (cert, _) = p.issue("leaver", Role::Operator, vec![], None);
    p.issue("stranger-node", Role::Node, vec!["127.0.0.9".into()], None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_rt = rt.enter();
    let list = |ch: tonic::transport::Channel| async move {
        PoolServiceClient::new(ch)
            .list_pools(anygate_proto::v1::ListPoolsRequest { read: None })
            .await
    };
    // One channel (one connection) to node 2, used before and after.
    let ch = client_channel(&a2, "leaver");
    rt.block_on(list(ch.clone()))
        .expect("the operator works before");
    let out = ctl_ok(&ep, &["--json", "pki", "revoke", cert.to_str().unwrap()]);
    let serial = serde_json::from_str::<serde_json::Value>(&out).unwrap()["serials"][0]
        .as_str()
        .unwrap()
        .to_string();
    let e = eventually(
        "node 2 refuses the revoked certificate",
        Duration::from_secs(5),
        || rt.block_on(list(ch.clone())).err(),
    );
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    assert!(
        e.message()
            .contains(&format!("(serial {serial}) was revoked")),
        "{e}"
    );
    // Every node, new connections too.
    let e = rt
        .block_on(list(client_channel(&a1, "leaver")))
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    let listed = ctl_json(&ep, &["pki", "revoked"]);
    assert_eq!(listed[0]["serial"], serial, "{listed}");
    // Others are unaffected.
    ctl_ok(&ep, &["pool", "add", "still", "--cidr", "10.92.0.0/24"]);

    // A node certificate for an address that is no member's.
    rt.block_on(async {
        let vote = |name: &'static str| {
            let a = a1.clone();
            async move {
                anygate_proto::raft::v1::raft_service_client::RaftServiceClient::new(
                    client_channel(&a, name),
                )
                .vote(anygate_proto::raft::v1::RaftPayload {
                    data: b"{}".to_vec(),
                })
                .await
                .unwrap_err()
            }
        };
        let e = vote("stranger-node").await;
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
        assert!(
            e.message().contains("names none of the members' addresses"),
            "{e}"
        );
        // A member's certificate gets past the gate (and fails on the
        // garbage payload instead).
        let member = c.nodes[1].addr.rsplit_once(':').unwrap().1.to_string();
        let name = format!("node-2-127.0.0.1-{member}");
        let e = vote(Box::leak(name.into_boxed_str())).await;
        assert_ne!(e.code(), tonic::Code::Unauthenticated, "{e}");
    });
}
