//! The cross-platform WireGuard UAPI (wireguard-go, boringtun): a text
//! protocol over the unix socket `/var/run/wireguard/<if>.sock`. One
//! `key=value` per line, a request ends with an empty line, every answer ends
//! with `errno=N` and an empty line. Keys are hex on this wire.
//!
//! Pure encoding/decoding functions plus a small client; no decisions here.

use super::{Action, DataplaneError, Observed, ObservedPeer, PeerConfig, PeerStats};
use crate::model::WgKey;
use ipnet::IpNet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Actions per `set` request: bounds one request's size and what a failure
/// can have half-done (the device applies a request line by line).
pub const ACTIONS_PER_REQUEST: usize = 500;

pub fn hex(k: &[u8; 32]) -> String {
    k.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The body of one `set=1` request for `actions` (without the final blank line).
pub fn encode_set(actions: &[Action]) -> String {
    let mut s = String::from("set=1\n");
    for a in actions {
        match a {
            Action::SetDevice(d) => {
                let _ = writeln!(s, "private_key={}", hex(&d.private_key));
                let _ = writeln!(s, "listen_port={}", d.listen_port);
                let _ = writeln!(s, "fwmark={}", d.fwmark);
            }
            Action::AddPeer(p) => {
                // remove + add: a fresh peer carries no stale session.
                let _ = writeln!(s, "public_key={}", hex(p.public_key.as_bytes()));
                let _ = writeln!(s, "remove=true");
                peer_lines(&mut s, p);
            }
            Action::UpdatePeer {
                public_key,
                preshared_key,
                endpoint,
                persistent_keepalive,
                allowed_ips,
            } => {
                let _ = writeln!(s, "public_key={}", hex(public_key.as_bytes()));
                let _ = writeln!(s, "update_only=true");
                if let Some(psk) = preshared_key {
                    let _ = writeln!(
                        s,
                        "preshared_key={}",
                        hex(psk.as_ref().map(|k| k.as_bytes()).unwrap_or(&[0; 32]))
                    );
                }
                if let Some(e) = endpoint {
                    let _ = writeln!(s, "endpoint={e}");
                }
                if let Some(k) = persistent_keepalive {
                    let _ = writeln!(s, "persistent_keepalive_interval={k}");
                }
                if let Some(ips) = allowed_ips {
                    let _ = writeln!(s, "replace_allowed_ips=true");
                    for ip in ips {
                        let _ = writeln!(s, "allowed_ip={ip}");
                    }
                }
            }
            Action::RemovePeer(k) => {
                let _ = writeln!(s, "public_key={}", hex(k.as_bytes()));
                let _ = writeln!(s, "remove=true");
            }
        }
    }
    s
}

fn peer_lines(s: &mut String, p: &PeerConfig) {
    let _ = writeln!(s, "public_key={}", hex(p.public_key.as_bytes()));
    if let Some(psk) = &p.preshared_key {
        let _ = writeln!(s, "preshared_key={}", hex(psk.as_bytes()));
    }
    if let Some(e) = p.endpoint {
        let _ = writeln!(s, "endpoint={e}");
    }
    let _ = writeln!(
        s,
        "persistent_keepalive_interval={}",
        p.persistent_keepalive
    );
    let _ = writeln!(s, "replace_allowed_ips=true");
    for ip in &p.allowed_ips {
        let _ = writeln!(s, "allowed_ip={ip}");
    }
}

/// Parse the answer to `get=1` (including its `errno=` line).
pub fn parse_get(text: &str) -> Result<Observed, DataplaneError> {
    let bad = |m: String| DataplaneError::Protocol(m);
    let mut obs = Observed::default();
    let mut cur: Option<ObservedPeer> = None;
    let mut errno = None;
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| bad(format!("line without '=': {line:?}")))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| bad(format!("{k}={v} is not a number")))
        };
        match k {
            "errno" => errno = Some(v.parse::<i32>().map_err(|_| bad(format!("errno={v}")))?),
            "private_key" => {
                let key = unhex(v).ok_or_else(|| bad("private_key is not 64 hex digits".into()))?;
                obs.private_key = (key != [0; 32]).then_some(key);
            }
            "listen_port" => obs.listen_port = num(v)? as u16,
            "fwmark" => obs.fwmark = num(v)? as u32,
            "public_key" => {
                if let Some(p) = cur.take() {
                    finish(&mut obs, p);
                }
                let key = unhex(v)
                    .ok_or_else(|| bad(format!("public_key {v:?} is not 64 hex digits")))?;
                cur = Some(ObservedPeer {
                    config: PeerConfig {
                        public_key: WgKey(key),
                        preshared_key: None,
                        endpoint: None,
                        persistent_keepalive: 0,
                        allowed_ips: vec![],
                    },
                    stats: PeerStats::default(),
                });
            }
            _ => {
                let Some(p) = cur.as_mut() else {
                    // Unknown device-level keys are ignored (newer implementations).
                    continue;
                };
                match k {
                    "preshared_key" => {
                        let key = unhex(v).ok_or_else(|| bad(format!("preshared_key {v:?}")))?;
                        p.config.preshared_key = (key != [0; 32]).then_some(WgKey(key));
                    }
                    "endpoint" => {
                        p.config.endpoint =
                            Some(v.parse().map_err(|_| bad(format!("endpoint {v:?}")))?)
                    }
                    "persistent_keepalive_interval" => {
                        p.config.persistent_keepalive = num(v)? as u16
                    }
                    "allowed_ip" => p.config.allowed_ips.push(
                        v.parse::<IpNet>()
                            .map_err(|_| bad(format!("allowed_ip {v:?}")))?,
                    ),
                    "last_handshake_time_sec" => p.stats.last_handshake.0 = num(v)?,
                    "last_handshake_time_nsec" => p.stats.last_handshake.1 = num(v)? as u32,
                    "rx_bytes" => p.stats.rx_bytes = num(v)?,
                    "tx_bytes" => p.stats.tx_bytes = num(v)?,
                    _ => {} // protocol_version and future keys
                }
            }
        }
    }
    if let Some(p) = cur.take() {
        finish(&mut obs, p);
    }
    match errno {
        Some(0) => Ok(obs),
        Some(e) => Err(DataplaneError::Errno {
            errno: e,
            what: "get".into(),
        }),
        None => Err(bad("answer ended without errno".into())),
    }
}

fn finish(obs: &mut Observed, mut p: ObservedPeer) {
    p.config.allowed_ips.sort();
    obs.peers.insert(p.config.public_key, p);
}

/// A connection-per-call client of one device's UAPI socket.
#[derive(Clone, Debug)]
pub struct UapiClient {
    path: PathBuf,
}

impl UapiClient {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        UapiClient { path: path.into() }
    }

    /// The conventional socket of interface `ifname`.
    pub fn for_interface(dir: &Path, ifname: &str) -> Self {
        Self::new(dir.join(format!("{ifname}.sock")))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, e: std::io::Error) -> DataplaneError {
        DataplaneError::Io {
            path: self.path.display().to_string(),
            source: e,
        }
    }

    /// Send one request body and return the answer up to and including errno.
    async fn roundtrip(
        &self,
        stream: &mut BufReader<UnixStream>,
        body: &str,
    ) -> Result<String, DataplaneError> {
        stream
            .get_mut()
            .write_all(body.as_bytes())
            .await
            .map_err(|e| self.io(e))?;
        stream
            .get_mut()
            .write_all(b"\n")
            .await
            .map_err(|e| self.io(e))?;
        let mut answer = String::new();
        loop {
            let mut line = String::new();
            let n = stream.read_line(&mut line).await.map_err(|e| self.io(e))?;
            if n == 0 {
                return Err(DataplaneError::Protocol(
                    "device closed the socket before errno".into(),
                ));
            }
            if line == "\n" && answer.contains("errno=") {
                return Ok(answer);
            }
            answer.push_str(&line);
        }
    }

    async fn connect(&self) -> Result<BufReader<UnixStream>, DataplaneError> {
        Ok(BufReader::new(
            UnixStream::connect(&self.path)
                .await
                .map_err(|e| self.io(e))?,
        ))
    }

    pub async fn get(&self) -> Result<Observed, DataplaneError> {
        let mut s = self.connect().await?;
        let answer = self.roundtrip(&mut s, "get=1\n").await?;
        parse_get(&answer)
    }

    /// Apply `actions` in requests of at most [`ACTIONS_PER_REQUEST`], over one
    /// connection. Stops at the first refused request and says which.
    pub async fn set(&self, actions: &[Action]) -> Result<(), DataplaneError> {
        let mut s = self.connect().await?;
        for (i, chunk) in actions.chunks(ACTIONS_PER_REQUEST).enumerate() {
            let answer = self.roundtrip(&mut s, &encode_set(chunk)).await?;
            let errno = answer
                .lines()
                .find_map(|l| l.strip_prefix("errno="))
                .and_then(|v| v.parse::<i32>().ok())
                .ok_or_else(|| DataplaneError::Protocol(format!("no errno in {answer:?}")))?;
            if errno != 0 {
                let first = i * ACTIONS_PER_REQUEST;
                return Err(DataplaneError::Errno {
                    errno,
                    what: format!(
                        "actions {}-{} of {}",
                        first + 1,
                        first + chunk.len(),
                        actions.len()
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::DeviceSettings;

    fn k(b: u8) -> WgKey {
        WgKey([b; 32])
    }

    #[test]
    fn hex_roundtrip_and_rejects() {
        let key = [0xab; 32];
        assert_eq!(unhex(&hex(&key)), Some(key));
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex(&"g".repeat(64)), None);
    }

    #[test]
    fn encodes_every_action() {
        let p = PeerConfig {
            public_key: k(1),
            preshared_key: Some(k(2)),
            endpoint: Some("192.0.2.1:51820".parse().unwrap()),
            persistent_keepalive: 25,
            allowed_ips: vec![
                "10.0.0.2/32".parse().unwrap(),
                "fd00::2/128".parse().unwrap(),
            ],
        };
        let s = encode_set(&[
            Action::SetDevice(DeviceSettings {
                private_key: [3; 32],
                listen_port: 51820,
                fwmark: 0,
            }),
            Action::AddPeer(p),
            Action::UpdatePeer {
                public_key: k(4),
                preshared_key: Some(None),
                endpoint: None,
                persistent_keepalive: Some(1),
                allowed_ips: Some(vec![]),
            },
            Action::RemovePeer(k(5)),
        ]);
        let want = format!(
            "set=1\nprivate_key={}\nlisten_port=51820\nfwmark=0\n\
             public_key={}\nremove=true\npublic_key={}\npreshared_key={}\nendpoint=192.0.2.1:51820\n\
             persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.0.0.2/32\nallowed_ip=fd00::2/128\n\
             public_key={}\nupdate_only=true\npreshared_key={}\npersistent_keepalive_interval=1\nreplace_allowed_ips=true\n\
             public_key={}\nremove=true\n",
            hex(&[3; 32]),
            hex(&[1; 32]),
            hex(&[1; 32]),
            hex(&[2; 32]),
            hex(&[4; 32]),
            "0".repeat(64),
            hex(&[5; 32]),
        );
        assert_eq!(s, want);
    }

    #[test]
    fn parses_a_get_answer() {
        // As wireguard-go 0.0.20220316 answers (see the lab findings).
        let text = format!(
            "private_key={}\nlisten_port=51820\npublic_key={}\npreshared_key={}\nprotocol_version=1\n\
             endpoint=10.255.100.2:51821\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\n\
             tx_bytes=92\nrx_bytes=148\npersistent_keepalive_interval=25\nallowed_ip=fd00::2/128\n\
             allowed_ip=100.64.0.2/32\npublic_key={}\npreshared_key={}\nendpoint=[2001:db8::1]:4000\n\
             persistent_keepalive_interval=0\nerrno=0\n",
            hex(&[9; 32]),
            hex(&[1; 32]),
            "0".repeat(64),
            hex(&[2; 32]),
            hex(&[7; 32]),
        );
        let o = parse_get(&text).unwrap();
        assert_eq!(o.private_key, Some([9; 32]));
        assert_eq!(o.listen_port, 51820);
        assert_eq!(o.peers.len(), 2);
        let p1 = &o.peers[&k(1)];
        assert_eq!(p1.config.preshared_key, None);
        assert_eq!(
            p1.config.allowed_ips[0].to_string(),
            "100.64.0.2/32",
            "sorted"
        );
        assert_eq!(
            p1.stats,
            PeerStats {
                last_handshake: (1_700_000_000, 5),
                rx_bytes: 148,
                tx_bytes: 92
            }
        );
        let p2 = &o.peers[&k(2)];
        assert_eq!(p2.config.preshared_key, Some(k(7)));
        assert_eq!(
            p2.config.endpoint.unwrap().to_string(),
            "[2001:db8::1]:4000"
        );
        assert!(matches!(
            parse_get("listen_port=1\nerrno=-22\n"),
            Err(DataplaneError::Errno { errno: -22, .. })
        ));
        assert!(matches!(
            parse_get("listen_port=1\n"),
            Err(DataplaneError::Protocol(_))
        ));
        assert!(matches!(
            parse_get("public_key=zz\nerrno=0\n"),
            Err(DataplaneError::Protocol(_))
        ));
    }
}
