//! The UAPI backend against a real wireguard-go, in a network namespace this
//! test creates (interface down: nothing is ever sent) and removes.

use anygate_node::dataplane::uapi::UapiClient;
use anygate_node::dataplane::{Action, DeviceSettings, PeerConfig};
use anygate_node::model::WgKey;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Netns {
    name: String,
    wg: Option<Child>,
    sock: Option<std::path::PathBuf>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(mut c) = self.wg.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(s) = &self.sock {
            let _ = std::fs::remove_file(s);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn key(b: u8) -> WgKey {
    WgKey([b; 32])
}

#[test]
fn uapi_client_programs_and_reads_a_real_wireguard_go() {
    let pid = std::process::id();
    let ns = Netns {
        name: format!("anygate-t06-{pid}"),
        wg: None,
        sock: None,
    };
    let ifname = format!("agt{}", pid % 100_000);
    let st = Command::new("ip")
        .args(["netns", "add", &ns.name])
        .status()
        .expect("ip netns add (needs root and iproute2)");
    assert!(st.success(), "ip netns add failed (this test needs root)");
    let mut ns = ns;
    ns.wg = Some(
        Command::new("ip")
            .args(["netns", "exec", &ns.name, "wireguard-go", "-f", &ifname])
            .env("LOG_LEVEL", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("wireguard-go (apt-get install wireguard-go)"),
    );
    let sock = std::path::PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"));
    ns.sock = Some(sock.clone());
    crate::harness::eventually("wireguard-go socket", Duration::from_secs(10), || {
        sock.exists().then_some(())
    });
    let client = UapiClient::new(&sock);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let fresh = client.get().await.expect("get on a fresh device");
        assert!(fresh.peers.is_empty() && fresh.private_key.is_none());

        let peers: Vec<PeerConfig> = (1..=3u8)
            .map(|i| PeerConfig {
                public_key: key(i),
                preshared_key: (i == 2).then(|| key(100)),
                endpoint: (i == 3).then(|| "192.0.2.3:51820".parse().unwrap()),
                persistent_keepalive: 0,
                allowed_ips: vec![
                    format!("10.0.0.{i}/32").parse().unwrap(),
                    format!("fd00::{i}/128").parse().unwrap(),
                ],
            })
            .collect();
        let mut actions = vec![Action::SetDevice(DeviceSettings {
            private_key: [7; 32],
            listen_port: 0,
            fwmark: 0,
        })];
        actions.extend(peers.iter().cloned().map(Action::AddPeer));
        // listen_port 0 lets the device pick a free port inside the namespace.
        client.set(&actions).await.expect("set");
        let o = client.get().await.unwrap();
        assert_eq!(
            o.private_key,
            Some(anygate_node::dataplane::clamp_private_key([7; 32]))
        );
        assert_eq!(o.peers.len(), 3);
        for p in &peers {
            let mut want = p.clone();
            want.allowed_ips.sort();
            assert_eq!(o.peers[&p.public_key].config, want);
        }
        // Update one, remove one, in one request.
        client
            .set(&[
                Action::UpdatePeer {
                    public_key: key(1),
                    preshared_key: None,
                    endpoint: None,
                    persistent_keepalive: None,
                    allowed_ips: Some(vec!["10.0.9.0/24".parse().unwrap()]),
                },
                Action::RemovePeer(key(3)),
            ])
            .await
            .unwrap();
        let o = client.get().await.unwrap();
        assert_eq!(o.peers.len(), 2);
        assert_eq!(
            o.peers[&key(1)].config.allowed_ips,
            vec!["10.0.9.0/24".parse().unwrap()]
        );
        // 1,200 peers: more than one request per set.
        let many: Vec<Action> = (0..1200u32)
            .map(|i| {
                let mut b = [0u8; 32];
                b[..4].copy_from_slice(&i.to_be_bytes());
                b[31] = 0xee;
                Action::AddPeer(PeerConfig {
                    public_key: WgKey(b),
                    preshared_key: None,
                    endpoint: None,
                    persistent_keepalive: 0,
                    allowed_ips: vec![format!("10.{}.{}.0/24", 100 + i / 256, i % 256)
                        .parse()
                        .unwrap()],
                })
            })
            .collect();
        client.set(&many).await.unwrap();
        assert_eq!(client.get().await.unwrap().peers.len(), 1202);
    });
}
