//! The cross-platform WireGuard UAPI (wireguard-go, boringtun): a text
//! protocol over the unix socket `/var/run/wireguard/<if>.sock`. One
//! `key=value` per line, a request ends with an empty line, every answer ends
//! with `errno=N` and an empty line. Keys are hex on this wire.
//!
//! Pure encoding/decoding functions plus a small client; no decisions here.

pub use super::uapi_text::{encode_set, hex, parse_get, unhex};
use super::{Action, DataplaneError, Observed};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Actions per `set` request: bounds one request's size and what a failure
/// can have half-done (the device applies a request line by line).
pub const ACTIONS_PER_REQUEST: usize = 500;

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
    use crate::dataplane::{DeviceSettings, PeerConfig, PeerStats};
    use crate::model::WgKey;

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
