//! The kernel backend against real kernel WireGuard. The host has no
//! WireGuard module, so these run inside a VM (deploy/kernel-vm/run as
//! cargo's runner; deploy/test does this):
//!
//!   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=deploy/kernel-vm/run \
//!     cargo test --release -p anygate-node --test kernel -- --include-ignored --test-threads 1
//!
//! Each test checks for /sys/module/wireguard first, so running them on a
//! host without it fails loudly instead of passing.

use anygate_node::dataplane::kernel::KernelWg;
use anygate_node::dataplane::{clamp_private_key, Action, DeviceSettings, PeerConfig};
use anygate_node::host::net::{NetDesired, NetManager};
use anygate_node::model::WgKey;
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Instant;

const IGNORE: &str = "needs kernel WireGuard: run through deploy/kernel-vm/run";

fn require_module() {
    assert!(
        KernelWg::module_present(),
        "no WireGuard kernel module here; {IGNORE}"
    );
}

fn key(i: u32) -> WgKey {
    let mut b = [7u8; 32];
    b[..4].copy_from_slice(&i.to_be_bytes());
    // Any 32 bytes are a valid public key; keep them distinct.
    WgKey(b)
}

fn peer(i: u32) -> PeerConfig {
    PeerConfig {
        public_key: key(i),
        preshared_key: i.is_multiple_of(3).then(|| key(1_000_000 + i)),
        endpoint: i.is_multiple_of(2).then(|| {
            format!("192.0.2.{}:{}", i % 250 + 1, 1024 + i % 60000)
                .parse()
                .unwrap()
        }),
        persistent_keepalive: if i.is_multiple_of(5) { 25 } else { 0 },
        allowed_ips: {
            let mut v: Vec<IpNet> = vec![
                format!(
                    "10.{}.{}.{}/32",
                    (i >> 16) & 0xff,
                    (i >> 8) & 0xff,
                    i & 0xff
                )
                .parse()
                .unwrap(),
                format!("fd00::{:x}:{:x}/128", i >> 16, i & 0xffff)
                    .parse()
                    .unwrap(),
            ];
            v.sort();
            v
        },
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
#[ignore = "needs kernel WireGuard: run through deploy/kernel-vm/run"]
fn create_configure_dump_update_remove() {
    require_module();
    rt().block_on(async {
        let net = NetManager::new().unwrap();
        net.create_wireguard_link("agk0").await.unwrap();
        let wg = KernelWg::new("agk0").unwrap();
        let dev = DeviceSettings {
            private_key: [42; 32],
            listen_port: 51820,
            fwmark: 0x51,
        };
        let mut actions = vec![Action::SetDevice(dev.clone())];
        actions.extend((0..3).map(|i| Action::AddPeer(peer(i))));
        wg.set(&actions).await.unwrap();
        let obs = wg.get().await.unwrap();
        assert_eq!(obs.private_key, Some(clamp_private_key([42; 32])));
        assert_eq!((obs.listen_port, obs.fwmark), (51820, 0x51));
        assert_eq!(obs.peers.len(), 3);
        for i in 0..3 {
            assert_eq!(obs.peers[&key(i)].config, peer(i), "peer {i}");
        }
        // `wg` agrees with what we read.
        let shown = Command::new("wg")
            .args(["show", "agk0", "peers"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&shown.stdout).lines().count(), 3);

        // Update: replace allowed IPs and the endpoint, drop the PSK; remove one.
        let new_ips: Vec<IpNet> = vec!["10.200.0.0/24".parse().unwrap()];
        wg.set(&[
            Action::RemovePeer(key(2)),
            Action::UpdatePeer {
                public_key: key(0),
                preshared_key: Some(None),
                endpoint: Some("[2001:db8::7]:4500".parse().unwrap()),
                persistent_keepalive: Some(0),
                allowed_ips: Some(new_ips.clone()),
            },
        ])
        .await
        .unwrap();
        let obs = wg.get().await.unwrap();
        assert_eq!(obs.peers.len(), 2);
        let p0 = &obs.peers[&key(0)].config;
        assert_eq!(p0.allowed_ips, new_ips);
        assert_eq!(p0.preshared_key, None);
        assert_eq!(p0.endpoint, Some("[2001:db8::7]:4500".parse().unwrap()));
        assert_eq!(
            obs.peers[&key(1)].config,
            peer(1),
            "untouched peer unchanged"
        );

        // Remove the peers first, then the link (deleting a link with many
        // peers is very slow).
        let rm: Vec<Action> = obs.peers.keys().map(|k| Action::RemovePeer(*k)).collect();
        wg.set(&rm).await.unwrap();
        assert!(wg.get().await.unwrap().peers.is_empty());
        net.delete_link("agk0").await.unwrap();
        assert!(net.link_index("agk0").await.unwrap().is_none());
        // A device that is gone is a clear error, not an empty device.
        assert!(wg.get().await.is_err());
    });
}

#[test]
#[ignore = "needs kernel WireGuard: run through deploy/kernel-vm/run"]
fn ten_thousand_peers_split_across_messages() {
    require_module();
    rt().block_on(async {
        let net = NetManager::new().unwrap();
        net.create_wireguard_link("agk1").await.unwrap();
        let wg = KernelWg::new("agk1").unwrap();
        let n = 10_000u32;
        let mut actions = vec![Action::SetDevice(DeviceSettings {
            private_key: [9; 32],
            listen_port: 51821,
            fwmark: 0,
        })];
        actions.extend((0..n).map(|i| Action::AddPeer(peer(i))));
        // Split as `wg setconf` does: every message within the budget, and
        // packed (not one peer per message).
        let sizes: Vec<usize> = anygate_node::dataplane::kernel::encode_set("agk1", &actions)
            .iter()
            .map(|m| netlink_packet_core::Emitable::buffer_len(&m.as_slice()))
            .collect();
        let messages = sizes.len();
        let budget = anygate_node::dataplane::kernel::MESSAGE_BUDGET;
        assert!(sizes.iter().all(|s| *s <= budget), "{sizes:?}");
        let floor = sizes.iter().sum::<usize>().div_ceil(budget);
        assert!(
            messages > 1 && messages <= floor + floor / 10 + 1,
            "{n} peers in {messages} messages; {floor} would do"
        );
        let t = Instant::now();
        wg.set(&actions).await.unwrap();
        let set = t.elapsed();
        let t = Instant::now();
        let obs = wg.get().await.unwrap();
        let dump = t.elapsed();
        assert_eq!(obs.peers.len(), n as usize);
        for i in (0..n).step_by(97) {
            assert_eq!(obs.peers[&key(i)].config, peer(i), "peer {i}");
        }
        // One peer with far more allowed IPs than fit in one message.
        let mut big = peer(n + 1);
        big.allowed_ips = (0..2000u32)
            .map(|j| format!("172.{}.{}.0/24", 16 + j / 256, j % 256).parse().unwrap())
            .collect();
        big.allowed_ips.sort();
        wg.set(&[Action::AddPeer(big.clone())]).await.unwrap();
        let obs = wg.get().await.unwrap();
        assert_eq!(obs.peers[&big.public_key].config.allowed_ips.len(), 2000);
        assert_eq!(obs.peers.len(), n as usize + 1);
        let t = Instant::now();
        let rm: Vec<Action> = obs.peers.keys().map(|k| Action::RemovePeer(*k)).collect();
        wg.set(&rm).await.unwrap();
        let clear = t.elapsed();
        assert!(wg.get().await.unwrap().peers.is_empty());
        net.delete_link("agk1").await.unwrap();
        eprintln!(
            "kernel (TCG VM): {n} peers set in {messages} messages {set:?}, dump {dump:?}, remove all {clear:?}"
        );
    });
}

#[test]
#[ignore = "needs kernel WireGuard: run through deploy/kernel-vm/run"]
fn host_network_reconcile_on_a_kernel_link() {
    require_module();
    rt().block_on(async {
        let mut net = NetManager::new().unwrap();
        net.create_wireguard_link("agk2").await.unwrap();
        let want = NetDesired {
            ifname: "agk2".into(),
            mtu: 1380,
            wg_addrs: BTreeSet::from([
                "10.100.0.1/16".parse().unwrap(),
                "fd00:100::1/64".parse().unwrap(),
            ]),
            lo_addrs: BTreeSet::from(["198.51.100.1/32".parse().unwrap()]),
            routes: BTreeSet::from(["172.31.5.0/24".parse().unwrap()]),
            nft: String::new(),
        };
        let rep = net.reconcile(&want).await.unwrap();
        assert!(
            rep.link && rep.addrs_added == 3 && rep.routes_added == 1,
            "{rep:?}"
        );
        let link = ip(&["link", "show", "agk2"]);
        assert!(link.contains("mtu 1380") && link.contains(",UP"), "{link}");
        assert!(ip(&["addr", "show", "lo"]).contains("198.51.100.1/32"));
        assert!(ip(&["route", "show", "dev", "agk2"]).contains("172.31.5.0/24 proto 240"));
        assert!(
            net.reconcile(&want).await.unwrap().is_empty(),
            "second pass is a no-op"
        );
        // Link flap: the kernel drops the static route; reconcile restores it.
        ip(&["link", "set", "agk2", "down"]);
        ip(&["link", "set", "agk2", "up"]);
        assert!(!ip(&["route", "show", "dev", "agk2"]).contains("172.31.5.0/24"));
        let rep = net.reconcile(&want).await.unwrap();
        assert!(rep.routes_added == 1, "{rep:?}");
        assert!(ip(&["route", "show", "dev", "agk2"]).contains("172.31.5.0/24"));
        // A removed route and address go away.
        let mut less = want.clone();
        less.routes.clear();
        less.wg_addrs.remove(&"fd00:100::1/64".parse().unwrap());
        let rep = net.reconcile(&less).await.unwrap();
        assert_eq!((rep.routes_removed, rep.addrs_removed), (1, 1), "{rep:?}");
        net.delete_link("agk2").await.unwrap();
    });
}

/// The whole node on the kernel backend: `auto` picks the kernel, the
/// reconciler programs what anygatectl writes, reverts a hand edit, and
/// `cluster status` reports the kernel dataplane healthy.
#[test]
#[ignore = "needs kernel WireGuard: run through deploy/kernel-vm/run"]
fn node_programs_kernel_wireguard_end_to_end() {
    use std::time::Duration;
    require_module();
    // /var/tmp is a fresh tmpfs in the VM (the rest of / is read-only).
    let dir = tempfile::Builder::new()
        .prefix("anygate-kernel-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let secret = x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng);
    let b64 = |b: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(b)
    };
    let keyfile = dir.path().join("wg.key");
    std::fs::write(&keyfile, b64(&secret.to_bytes())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&keyfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let public = b64(x25519_dalek::PublicKey::from(&secret).as_bytes());
    let node_bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_anygate"));
    let ctl_bin = node_bin.with_file_name("anygatectl");
    let mut node = Command::new(&node_bin)
        // Inside the VM, on loopback: the backend is under test, not TLS.
        .args([
            "--id",
            "1",
            "--listen",
            "127.0.0.1:7400",
            "--insecure-dev",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .args(["--dataplane-backend", "auto", "--wg-interface", "agk3"])
        .arg("--wg-private-key-file")
        .arg(&keyfile)
        .args(["--observe-interval", "300ms", "--log-level", "warn"])
        .spawn()
        .unwrap();
    let ctl = |args: &[&str]| {
        Command::new(&ctl_bin)
            .args([
                "-e",
                "127.0.0.1:7400",
                "--operator",
                "kernel-test",
                "--insecure-dev",
                "--timeout",
                "20s",
            ])
            .args(args)
            .output()
            .unwrap()
    };
    let until = |what: &str, f: &mut dyn FnMut() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    until("the node answering", &mut || {
        ctl(&["cluster", "init"]).status.success()
    });
    assert!(ctl(&["settings", "set", "--server-public-key", &public])
        .status
        .success());
    assert!(ctl(&["pool", "add", "staff", "--cidr", "100.64.0.0/16"])
        .status
        .success());
    let mut lines = String::new();
    for i in 0..100u32 {
        lines.push_str(&format!(
            "{{\"public_key\":\"{}\",\"user\":\"u{i}\",\"device\":\"d\",\"pool\":\"staff\"}}\n",
            key(i)
        ));
    }
    let file = dir.path().join("peers.jsonl");
    std::fs::write(&file, lines).unwrap();
    let out = ctl(&["peer", "import", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peers = || {
        Command::new("wg")
            .args(["show", "agk3", "peers"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
            .unwrap_or(0)
    };
    until("100 peers on the kernel device", &mut || peers() == 100);
    assert!(ctl(&["peer", "disable", &key(7).to_string()])
        .status
        .success());
    until("the disabled peer removed", &mut || peers() == 99);
    // Hand edit: remove a peer behind the node's back; it comes back.
    assert!(Command::new("wg")
        .args(["set", "agk3", "peer", &key(8).to_string(), "remove"])
        .status()
        .unwrap()
        .success());
    until("the hand edit reverted", &mut || peers() == 99);
    let status = ctl(&["--json", "cluster", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let dp = &v["nodes"][0]["dataplane"];
    assert_eq!(dp["backend"], "kernel", "{dp}");
    assert_eq!(dp["healthy"], true, "{dp}");
    assert!(ip(&["addr", "show", "agk3"]).contains("100.64.0.1/16"));
    let _ = node.kill();
    let _ = node.wait();
    rt().block_on(async {
        let wg = KernelWg::new("agk3").unwrap();
        let obs = wg.get().await.unwrap();
        let rm: Vec<Action> = obs.peers.keys().map(|k| Action::RemovePeer(*k)).collect();
        wg.set(&rm).await.unwrap();
        NetManager::new()
            .unwrap()
            .delete_link("agk3")
            .await
            .unwrap();
    });
}
