//! React's event path: the nftables table logs the first WireGuard data
//! packet of a source it has not seen for a while (not in the data set) to
//! an NFLOG group; this listener turns each into the source address, so the
//! reconciler reacts to a client moved here by the router at once instead
//! of at the next read of the sets. A client that moves is exactly such a
//! "new" source, so the event costs nothing in the steady state, however
//! many clients are active. The periodic read stays for the stalled-session
//! case and as the fallback.

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{
    config_request, ConfigCmd, ConfigMode, ConfigNla, PacketNla, Timeout, ULogMessage,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{constants::NETLINK_NETFILTER, Socket};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::sync::mpsc;

pub use anygate_core::failover::react::NFLOG_GROUP as GROUP;

/// Bytes of each logged packet copied to us: IPv6 header + UDP ports.
const COPY: u32 = 48;

/// Bind the group; a thread then forwards every logged source. Errors
/// (no nfnetlink_log in the kernel, the group taken) leave the poll alone.
pub fn listen(tx: mpsc::Sender<SocketAddr>) -> Result<(), NflogError> {
    let mut sock = Socket::new(NETLINK_NETFILTER).map_err(|e| NflogError::Io("socket", e))?;
    sock.bind_auto().map_err(|e| NflogError::Io("bind", e))?;
    let _ = sock.set_rx_buf_sz(1 << 20);
    request(
        &sock,
        config_request(
            NetfilterProtoFamily::Unspec,
            GROUP,
            vec![ConfigCmd::Bind.into()],
        ),
    )?;
    request(
        &sock,
        config_request(
            NetfilterProtoFamily::Unspec,
            GROUP,
            // Deliver every packet at once: the kernel's defaults batch up
            // to 100 packets or 1 s.
            vec![
                ConfigMode::new_packet(COPY).into(),
                ConfigNla::QThresh(1),
                ConfigNla::Timeout(Timeout::new(0)),
            ],
        ),
    )?;
    std::thread::Builder::new()
        .name("react-nflog".into())
        .spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = match sock.recv(&mut &mut buf[..], 0) {
                    Ok(n) => n,
                    // ENOBUFS: the burst outran us; the poll catches up.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                    Err(_) => return,
                };
                for src in sources(&buf[..n]) {
                    if tx.blocking_send(src).is_err() {
                        return;
                    }
                }
            }
        })
        .map_err(|e| NflogError::Io("thread", e))?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum NflogError {
    #[error("netlink {0}: {1}")]
    Io(&'static str, std::io::Error),
    #[error("netlink ack: {0}")]
    Decode(String),
    #[error("nflog group {GROUP}: {0}")]
    Refused(String),
}

/// Send a config request and check its ack.
fn request(sock: &Socket, msg: NetlinkMessage<NetfilterMessage>) -> Result<(), NflogError> {
    let mut buf = vec![0u8; msg.header.length as usize];
    msg.serialize(&mut buf[..]);
    sock.send(&buf, 0).map_err(|e| NflogError::Io("send", e))?;
    let mut rx = vec![0u8; 4096];
    let n = sock
        .recv(&mut &mut rx[..], 0)
        .map_err(|e| NflogError::Io("recv", e))?;
    let m = <NetlinkMessage<NetfilterMessage>>::deserialize(&rx[..n])
        .map_err(|e| NflogError::Decode(e.to_string()))?;
    match m.payload {
        NetlinkPayload::Error(e) if e.code.is_some() => Err(NflogError::Refused(e.to_string())),
        _ => Ok(()),
    }
}

/// The UDP source of every packet in a batch of NFLOG messages.
fn sources(mut bytes: &[u8]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let Ok(m) = <NetlinkMessage<NetfilterMessage>>::deserialize(bytes) else {
            break;
        };
        let len = (m.header.length as usize).max(16);
        if let NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
            ..
        }) = &m.payload
        {
            for nla in nlas {
                if let PacketNla::Payload(p) = nla {
                    if let Some(s) = udp_source(p) {
                        out.push(s);
                    }
                }
            }
        }
        // Messages are 4-byte aligned.
        let step = (len + 3) & !3;
        if step > bytes.len() {
            break;
        }
        bytes = &bytes[step..];
    }
    out
}

/// Source address and port of an IPv4 or IPv6 UDP packet. Pure.
pub fn udp_source(p: &[u8]) -> Option<SocketAddr> {
    match p.first()? >> 4 {
        4 => {
            let ihl = ((p[0] & 0x0f) as usize) * 4;
            if p.len() < ihl + 2 || p.get(9) != Some(&17) {
                return None;
            }
            let a: [u8; 4] = p[12..16].try_into().ok()?;
            let port = u16::from_be_bytes([p[ihl], p[ihl + 1]]);
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port))
        }
        6 => {
            if p.len() < 42 || p[6] != 17 {
                return None;
            }
            let a: [u8; 16] = p[8..24].try_into().ok()?;
            let port = u16::from_be_bytes([p[40], p[41]]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_sources_of_v4_and_v6_packets() {
        let mut v4 = vec![
            0x45, 0, 0, 60, 0, 0, 0, 0, 64, 17, 0, 0, 10, 80, 1, 2, 198, 51, 100, 1,
        ];
        v4.extend([0xb0, 0xd2, 0xca, 0x6c]); // 45266 -> 51820
        assert_eq!(udp_source(&v4), Some("10.80.1.2:45266".parse().unwrap()));
        let mut tcp = v4.clone();
        tcp[9] = 6;
        assert_eq!(udp_source(&tcp), None);
        let mut v6 = vec![0x60, 0, 0, 0, 0, 16, 17, 64];
        v6.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        v6.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        v6.extend([0x13, 0x88, 0xca, 0x6c]);
        assert_eq!(udp_source(&v6), Some("[fd00::2]:5000".parse().unwrap()));
        assert_eq!(udp_source(&v6[..30]), None);
        assert_eq!(udp_source(&[]), None);
    }
}
