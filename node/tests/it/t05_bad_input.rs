//! Every bad input gets its documented error and changes nothing; bad
//! config exits 64 and names the key.

use crate::harness::*;
use anygate_proto::tls::Role;
use anygate_proto::v1::peer_service_client::PeerServiceClient;
use anygate_proto::v1::pool_service_client::PoolServiceClient;
use anygate_proto::v1::{AddPeersRequest, AddPoolRequest, PeerSpec, Pool};
use std::time::Duration;

fn snapshot_state(ep: &str) -> String {
    format!(
        "{}\n{}\n{}",
        ctl_ok(ep, &["peer", "export"]),
        ctl_ok(ep, &["--json", "pool", "list"]),
        ctl_ok(ep, &["--json", "settings", "get"])
    )
}

#[test]
fn bad_input_is_refused_clearly_and_changes_nothing() {
    let mut c = Cluster::start(3, &[]);
    c.form();
    let ep = c.all_endpoints();
    let follower = c
        .nodes
        .iter()
        .find(|n| n.id != c.leader())
        .unwrap()
        .addr
        .clone();
    ctl_ok(&ep, &["pool", "add", "corp", "--cidr", "10.84.0.0/24"]);
    ctl_ok(&ep, &["pool", "add", "tiny", "--cidr", "10.85.0.0/30"]);
    ctl_ok(
        &ep,
        &["settings", "set", "--routable-prefixes", "192.168.0.0/16"],
    );
    let alice = random_key();
    ctl_ok(
        &ep,
        &[
            "peer",
            "add",
            "--user",
            "alice",
            "--device",
            "phone",
            "--public-key",
            &alice,
            "--allowed-ip",
            "192.168.50.0/24",
            "--pool",
            "corp",
        ],
    );
    ctl_ok(
        &ep,
        &[
            "peer",
            "add",
            "--user",
            "t",
            "--device",
            "1",
            "--pool",
            "tiny",
            "--public-key",
            &random_key(),
        ],
    );
    let before = snapshot_state(&ep);

    let short_key = base64_of(&[7u8; 31]);
    // (args, exit code, text that must appear in stderr)
    let k = random_key;
    let add = |extra: &[&str]| {
        let mut v = argv(&["peer", "add", "--user", "b", "--device", "d"]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (add(&["--public-key", "abc!"]), 2, "not valid base64"),
        (add(&["--public-key", &short_key]), 2, "decodes to 31 bytes"),
        (
            add(&["--public-key", &k(), "--allowed-ip", "10.0.0.0/33"]),
            2,
            "is not a CIDR",
        ),
        (
            add(&["--public-key", &k(), "--allowed-ip", "192.168.50.128/25"]),
            1,
            "overlaps peer alice/phone",
        ),
        // Hardening finding 2: client routes cannot take over a default
        // route, the cluster's addresses, or anything an admin did not
        // declare routable.
        (
            add(&["--public-key", &k(), "--allowed-ip", "0.0.0.0/0"]),
            2,
            "covers 127.0.0.1, the cluster address of gateway",
        ),
        (
            add(&["--public-key", &k(), "--allowed-ip", "10.0.0.0/8"]),
            2,
            "outside every pool and every routable prefix",
        ),
        (
            add(&["--public-key", &k(), "--allowed-ip", "172.16.0.0/24"]),
            2,
            "outside every pool and every routable prefix",
        ),
        (
            add(&["--public-key", &k(), "--allowed-ip", "127.0.0.1/32"]),
            2,
            "the cluster address of gateway",
        ),
        (
            argv(&["settings", "set", "--routable-prefixes", "128.0.0.0/1"]),
            2,
            "too broad",
        ),
        (
            argv(&["settings", "set", "--routable-prefixes", "127.0.0.0/8"]),
            2,
            "the cluster address of gateway",
        ),
        (
            add(&["--public-key", &k(), "--address", "172.31.0.5"]),
            2,
            "outside every pool",
        ),
        (
            add(&["--public-key", &k(), "--pool", "tiny"]),
            1,
            "no free IPv4 address",
        ),
        (
            add(&["--public-key", &alice]),
            1,
            "already belongs to peer alice/phone",
        ),
        (
            argv(&[
                "peer",
                "add",
                "--user",
                "alice",
                "--device",
                "phone",
                "--public-key",
                &k(),
            ]),
            1,
            "already has a device",
        ),
        (
            add(&["--public-key", &k(), "--pool", "nope"]),
            1,
            "no pool named \"nope\"",
        ),
        (
            argv(&["peer", "show", "nobody/none"]),
            1,
            "no peer nobody/none",
        ),
        (
            argv(&["peer", "remove", "nobody/none"]),
            1,
            "no peer nobody/none",
        ),
        (
            argv(&["peer", "disable", "not-a-key"]),
            2,
            "neither a public key",
        ),
        (argv(&["pool", "remove", "nope"]), 1, "no pool named"),
        (argv(&["pool", "remove", "corp"]), 1, "still has 1 peers"),
        (
            argv(&["pool", "add", "x", "--cidr", "10.84.0.0/25"]),
            1,
            "overlaps 10.84.0.0/24",
        ),
        (
            argv(&["pool", "add", "bad name", "--cidr", "10.99.0.0/24"]),
            2,
            "pool name",
        ),
        (argv(&["settings", "set", "--mtu", "100"]), 2, "MTU 100"),
        // A line break would put a root command into every client config.
        (
            argv(&[
                "settings",
                "set",
                "--endpoint-host",
                "vpn.example.com\nPostUp = touch /tmp/pwned",
            ]),
            2,
            "must be an IP address or a DNS name",
        ),
        (
            argv(&["settings", "set", "--endpoint-host=-vpn.example.com"]),
            2,
            "endpoint host \"-vpn.example.com\"",
        ),
        (
            argv(&["settings", "set", "--return-mode", "bridge"]),
            2,
            "not one of: nat, routed",
        ),
        (
            argv(&["settings", "set", "--server-public-key", "zzz"]),
            2,
            "server_public_key",
        ),
    ];
    for (args, code, text) in &cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        // Sent to a follower: refusals come back through forwarding intact.
        let out = ctl(&follower, &a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(*code), "{a:?}: {err}");
        assert!(err.contains(text), "{a:?}: stderr lacks {text:?}: {err}");
    }

    // Oversized requests, straight over gRPC.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let leader_addr = c.addr(c.leader());
    rt.block_on(async {
        let mut client = PeerServiceClient::new(admin_channel(&leader_addr));
        let spec = |i: usize| PeerSpec {
            public_key: random_key(),
            user: format!("big{i}"),
            device: "d".into(),
            pool: "corp".into(),
            ..Default::default()
        };
        let too_many = AddPeersRequest {
            peers: (0..5001).map(spec).collect(),
        };
        let e = client.add_peers(too_many).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("request too large"), "{}", e.message());
        let mut huge = spec(0);
        huge.labels
            .insert("blob".into(), "x".repeat(17 * 1024 * 1024));
        let e = client
            .add_peers(AddPeersRequest { peers: vec![huge] })
            .await
            .unwrap_err();
        assert!(
            e.message().contains("message length too large") || e.message().contains("too large"),
            "{e:?}"
        );
        // Finding 1 of the hardening issue, as an operator: one oversized
        // entry must not reach the log (it froze every later commit).
        pki().issue("bounds-operator", Role::Operator, vec![], None);
        let mut op = PeerServiceClient::new(client_channel(&leader_addr, "bounds-operator"))
            .max_encoding_message_size(64 * 1024 * 1024);
        let mut pools = PoolServiceClient::new(client_channel(&follower, "bounds-operator"));
        let mut control = spec(1);
        control
            .labels
            .insert("note".into(), "\u{1}".repeat(14_000_000));
        let e = op
            .add_peers(AddPeersRequest {
                peers: vec![control],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message()
                .contains("label \"note\" is 14000000 bytes; at most 256"),
            "{}",
            e.message()
        );
        // Within every field bound, but quotes double in the log's JSON.
        let quoted: Vec<PeerSpec> = (0..600)
            .map(|i| {
                let mut p = spec(1000 + i);
                for l in 0..32 {
                    p.labels.insert(format!("l{l}"), "\"".repeat(256));
                }
                p
            })
            .collect();
        let e = op
            .add_peers(AddPeersRequest { peers: quoted })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message().contains("one write may be at most 8 MiB"),
            "{}",
            e.message()
        );
        let e = pools
            .add_pool(AddPoolRequest {
                pool: Some(Pool {
                    name: "g".into(),
                    cidrs: vec!["10.97.0.0/24".into()],
                    group: "\u{1}".repeat(1_000_000),
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().contains("pool group is 1000000 bytes"),
            "{}",
            e.message()
        );
        let e = op
            .remove_peer(anygate_proto::v1::RemovePeerRequest {
                peer: format!("{}/d", "u".repeat(100_000)),
            })
            .await
            .unwrap_err();
        assert!(
            e.message().contains("user is 100000 bytes"),
            "{}",
            e.message()
        );
        // An operator cannot widen what is routable, nor route around it.
        let mut settings = anygate_proto::v1::settings_service_client::SettingsServiceClient::new(
            client_channel(&follower, "bounds-operator"),
        );
        let e = settings
            .set_settings(anygate_proto::v1::SetSettingsRequest {
                patch: Some(anygate_proto::v1::SettingsPatch {
                    routable_prefixes: vec!["10.0.0.0/8".into()],
                    set_routable_prefixes: true,
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        let mut default_route = spec(3000);
        default_route.allowed_ips = vec!["0.0.0.0/0".into()];
        default_route.pool = String::new();
        let e = op
            .add_peers(AddPeersRequest {
                peers: vec![default_route],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("covers 127.0.0.1"), "{e:?}");
        // The log is not stuck: the next write commits at once.
        let t = std::time::Instant::now();
        let ok = spec(2000);
        op.add_peers(AddPeersRequest {
            peers: vec![ok.clone()],
        })
        .await
        .expect("a write after the refusals");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        op.remove_peer(anygate_proto::v1::RemovePeerRequest {
            peer: ok.public_key,
        })
        .await
        .expect("cleanup");
        // The same request id twice (a client retrying after a lost answer)
        // applies once and answers the same both times, through any node.
        let retry = spec(100);
        let mut answers = vec![];
        for _ in 0..2 {
            let mut r = tonic::Request::new(AddPeersRequest {
                peers: vec![retry.clone()],
            });
            r.metadata_mut()
                .insert("x-anygate-request-id", "test-retry-1".parse().unwrap());
            answers.push(
                client
                    .add_peers(r)
                    .await
                    .expect("retry answered")
                    .into_inner(),
            );
        }
        assert_eq!(answers[0], answers[1]);
        let mut r = tonic::Request::new(anygate_proto::v1::RemovePeerRequest {
            peer: retry.public_key.clone(),
        });
        r.metadata_mut()
            .insert("x-anygate-request-id", "test-retry-2".parse().unwrap());
        client.remove_peer(r).await.expect("cleanup");
        // A batch with one bad peer applies none of them.
        let mut batch: Vec<PeerSpec> = (0..10).map(spec).collect();
        batch[7].allowed_ips = vec!["192.168.50.1/32".into()];
        batch[7].pool = String::new();
        let e = client
            .add_peers(AddPeersRequest { peers: batch })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("peer 8 of 10"), "{}", e.message());
    });

    assert_eq!(
        snapshot_state(&ep),
        before,
        "a refused request changed the inventory"
    );
    // Refusals that reached the log are audited as refused.
    let audit = ctl_json(&ep, &["audit", "list"]);
    assert!(audit.as_array().unwrap().iter().any(|e| e["error"]
        .as_str()
        .is_some_and(|s| s.contains("overlaps peer"))));
}

#[test]
fn bad_config_exits_64_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(node_bin())
            .args(args)
            .output()
            .unwrap()
    };
    let d = dir.path().join("data");
    let d = d.to_str().unwrap();
    for (args, key) in [
        (vec!["--id", "0", "--data-dir", d], "`id`"),
        (vec!["--id", "1"], "`data-dir`"),
        (
            vec!["--id", "1", "--data-dir", d, "--listen", "localhost"],
            "`listen`",
        ),
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{args:?}: {err}");
    }
    let cfg = write_file(
        dir.path(),
        "node.toml",
        "id = 1\ndata-dir = \"/tmp/x\"\nlisten-port = 7\n",
    );
    let out = run(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen-port"));
}

fn argv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}
