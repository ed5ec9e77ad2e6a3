//! The only nftables client of the node.
//!
//! Reads go over netlink (nfnetlink, `NFT_MSG_GET*` dumps): the ruleset
//! generation, a set's elements with their expiry in milliseconds, a chain's
//! rules with their handles, comments and counters. They cost a syscall and
//! a parse, no process: react reads its sets ten times a second this way.
//! Writes are `nft -f` scripts, run as one atomic transaction — the simplest
//! correct tool for that — and only when something must change. The full
//! text listing (`nft -a list table`) is used only when the generation shows
//! that someone else changed the ruleset.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_netfilter::nftables::{
    GenMessage, NfTablesMessage, RuleAttribute, RuleMessage, SetElementList, SetElementMessage,
};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::{constants::NETLINK_NETFILTER, Socket};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nftables netlink: {0}")]
    Netlink(String),
    /// The table, chain or set does not exist (ENOENT).
    #[error("not found")]
    NotFound,
    #[error("nft: {0}")]
    Nft(String),
}

/// One element of a set: its key bytes as the kernel stores them, and how
/// long ago the last packet refreshed it (timeout − time left), in ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub key: Vec<u8>,
    pub age_ms: u64,
}

/// One rule of a chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub handle: u64,
    /// The rule's `comment "…"`.
    pub comment: Option<String>,
    /// Packets counted by its `counter`, if it has one.
    pub packets: Option<u64>,
}

/// The ruleset generation: it changes with every nftables transaction,
/// anyone's. Equal before and after means nothing was changed in between.
pub fn generation() -> Result<u32, NftError> {
    const NFTA_GEN_ID: u16 = 1;
    let answers = request(
        NetfilterProtoFamily::Unspec,
        NfTablesMessage::GetGen(GenMessage { attributes: vec![] }),
        false,
    )?;
    let id = answers
        .iter()
        .flat_map(|a| nlas(a))
        .find(|(t, _)| *t == NFTA_GEN_ID)
        .and_then(|(_, v)| Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?)));
    id.ok_or_else(|| NftError::Netlink("no generation in the answer".into()))
}

/// Every element of `inet TABLE SET`, with its age. Elements added without
/// their own timeout report none: `default_timeout_ms` (the set's) is used.
pub fn set_elements(
    table: &str,
    set: &str,
    default_timeout_ms: u64,
) -> Result<Vec<Element>, NftError> {
    const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
    let answers = request(
        NetfilterProtoFamily::Inet,
        NfTablesMessage::GetSetElement(SetElementMessage {
            attributes: vec![
                SetElementList::Table(table.into()),
                SetElementList::Set(set.into()),
            ],
        }),
        true,
    )?;
    let mut out = Vec::new();
    for a in &answers {
        for (t, list) in nlas(a) {
            if t != NFTA_SET_ELEM_LIST_ELEMENTS {
                continue;
            }
            for (t, elem) in nlas(list) {
                if t == NFTA_LIST_ELEM {
                    out.extend(element(elem, default_timeout_ms));
                }
            }
        }
    }
    Ok(out)
}

const NFTA_LIST_ELEM: u16 = 1;

/// One set element's attributes (nf_tables.h `nft_set_elem_attributes`).
/// Pure.
fn element(attrs: &[u8], default_timeout_ms: u64) -> Option<Element> {
    const KEY: u16 = 1;
    const TIMEOUT: u16 = 4;
    const EXPIRATION: u16 = 5;
    const NFTA_DATA_VALUE: u16 = 1;
    let (mut key, mut timeout, mut expires) = (None, default_timeout_ms, 0);
    for (t, v) in nlas(attrs) {
        match t {
            KEY => {
                key = nlas(v)
                    .find(|(t, _)| *t == NFTA_DATA_VALUE)
                    .map(|(_, k)| k.to_vec())
            }
            TIMEOUT => timeout = be64(v)?,
            EXPIRATION => expires = be64(v)?,
            _ => {}
        }
    }
    Some(Element {
        key: key?,
        age_ms: timeout.saturating_sub(expires),
    })
}

/// The rules of `inet TABLE CHAIN`, in order.
pub fn rules(table: &str, chain: &str) -> Result<Vec<Rule>, NftError> {
    let answers = request(
        NetfilterProtoFamily::Inet,
        NfTablesMessage::GetRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(table.into()),
                RuleAttribute::Chain(chain.into()),
            ],
        }),
        true,
    )?;
    Ok(answers.iter().map(|a| rule(a)).collect())
}

/// One rule's attributes (nf_tables.h `nft_rule_attributes`). Pure.
fn rule(attrs: &[u8]) -> Rule {
    const HANDLE: u16 = 3;
    const EXPRESSIONS: u16 = 4;
    const USERDATA: u16 = 7;
    const NFTA_EXPR_NAME: u16 = 1;
    const NFTA_EXPR_DATA: u16 = 2;
    const NFTA_COUNTER_PACKETS: u16 = 2;
    let mut r = Rule::default();
    for (t, v) in nlas(attrs) {
        match t {
            HANDLE => r.handle = be64(v).unwrap_or(0),
            USERDATA => r.comment = comment(v),
            EXPRESSIONS => {
                for (_, expr) in nlas(v).filter(|(t, _)| *t == NFTA_LIST_ELEM) {
                    let name = nlas(expr).find(|(t, _)| *t == NFTA_EXPR_NAME);
                    if name.is_some_and(|(_, n)| n.split(|b| *b == 0).next() == Some(b"counter")) {
                        r.packets = nlas(expr)
                            .find(|(t, _)| *t == NFTA_EXPR_DATA)
                            .and_then(|(_, d)| nlas(d).find(|(t, _)| *t == NFTA_COUNTER_PACKETS))
                            .and_then(|(_, p)| be64(p));
                    }
                }
            }
            _ => {}
        }
    }
    r
}

fn be64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

/// The attributes in `b`: (type without the nested/byte-order flags,
/// value). Stops at the first malformed one. Pure.
fn nlas(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        let value = &b[4..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        Some((kind, value))
    })
}

/// The comment in a rule's user data, as nft stores it: TLVs of (type u8,
/// length u8, value); type 0 is the comment, NUL-terminated. Pure.
pub fn comment(mut udata: &[u8]) -> Option<String> {
    const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
    while udata.len() >= 2 {
        let (t, l) = (udata[0], udata[1] as usize);
        let v = udata.get(2..2 + l)?;
        if t == NFTNL_UDATA_RULE_COMMENT {
            let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
            return String::from_utf8(v[..end].to_vec()).ok();
        }
        udata = &udata[2 + l..];
    }
    None
}

/// One request (a dump when `dump`): the attributes of every answer (what
/// follows the netlink and nfgen headers), until DONE or the ack. Answers
/// are walked by hand: the typed decoder of netlink-packet-netfilter 0.4
/// formats its whole input into every attribute's error context, which made
/// a 10,000-element dump take 18 s.
fn request(
    family: NetfilterProtoFamily,
    msg: NfTablesMessage,
    dump: bool,
) -> Result<Vec<Vec<u8>>, NftError> {
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const HEADERS: usize = 16 + 4;
    let mut sock = Socket::new(NETLINK_NETFILTER).map_err(|e| NftError::Netlink(e.to_string()))?;
    sock.bind_auto()
        .map_err(|e| NftError::Netlink(e.to_string()))?;
    let mut nl = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::InnerMessage(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            msg,
        )),
    );
    nl.header.flags = NLM_F_REQUEST | NLM_F_ACK | if dump { NLM_F_DUMP } else { 0 };
    nl.header.sequence_number = 1;
    nl.finalize();
    let mut buf = vec![0u8; nl.buffer_len()];
    nl.serialize(&mut buf[..]);
    sock.send(&buf, 0)
        .map_err(|e| NftError::Netlink(format!("send: {e}")))?;
    let mut out = Vec::new();
    let mut rx = vec![0u8; 1 << 16];
    loop {
        let n = sock
            .recv(&mut &mut rx[..], 0)
            .map_err(|e| NftError::Netlink(format!("recv: {e}")))?;
        let mut bytes = &rx[..n];
        while bytes.len() >= 16 {
            let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
            let kind = u16::from_ne_bytes([bytes[4], bytes[5]]);
            if len < 16 || len > bytes.len() {
                return Err(NftError::Netlink(format!(
                    "truncated message ({len} bytes)"
                )));
            }
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code = bytes
                        .get(16..20)
                        .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                        .unwrap_or(-libc::EIO);
                    match -code {
                        0 if dump => {}
                        0 => return Ok(out),
                        libc::ENOENT => return Err(NftError::NotFound),
                        e => {
                            return Err(NftError::Netlink(
                                std::io::Error::from_raw_os_error(e).to_string(),
                            ))
                        }
                    }
                }
                _ if len >= HEADERS => out.push(bytes[HEADERS..len].to_vec()),
                _ => {}
            }
            bytes = &bytes[((len + 3) & !3).min(bytes.len())..];
        }
    }
}

/// `nft [-a] list table inet NAME`; None when the table does not exist.
pub async fn list_table(name: &str, handles: bool) -> Result<Option<String>, NftError> {
    let mut cmd = tokio::process::Command::new("nft");
    if handles {
        cmd.arg("-a");
    }
    let out = cmd
        .args(["list", "table", "inet", name])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| NftError::Nft(format!("cannot run nft (is nftables installed?): {e}")))?;
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No such file or directory") {
        Ok(None)
    } else {
        Err(NftError::Nft(err.trim().to_string()))
    }
}

/// Replace the `inet anygate` table atomically (`nft -f -` runs the script as
/// one transaction).
pub async fn apply_nft(script: &str) -> Result<(), NftError> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| NftError::Nft(format!("cannot run nft (is nftables installed?): {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(script.as_bytes())
        .await
        .map_err(|e| NftError::Nft(e.to_string()))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| NftError::Nft(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut v = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        v.extend(kind.to_ne_bytes());
        v.extend(value);
        v.resize((v.len() + 3) & !3, 0);
        v
    }

    #[test]
    fn a_set_element_with_its_age() {
        // KEY { DATA_VALUE 10.80.1.2 . 45268 }, TIMEOUT 2000, EXPIRATION 1688.
        let mut attrs = nla(1 | 0x8000, &nla(1, &[10, 80, 1, 2, 0xb0, 0xd4, 0, 0]));
        let key_len = attrs.len();
        attrs.extend(nla(4 | 0x4000, &2000u64.to_be_bytes()));
        attrs.extend(nla(5 | 0x4000, &1688u64.to_be_bytes()));
        let e = element(&attrs, 9_999).unwrap();
        assert_eq!(e.key, [10, 80, 1, 2, 0xb0, 0xd4, 0, 0]);
        assert_eq!(e.age_ms, 312);
        // Neither timeout nor expiration: the set's timeout, all of it.
        let e = element(&attrs[..key_len], 2_000).unwrap();
        assert_eq!(e.age_ms, 2_000);
        assert!(element(&nla(4, &1u64.to_be_bytes()), 1).is_none(), "no key");
    }

    #[test]
    fn a_rule_with_handle_comment_and_counter() {
        let mut counter = nla(1, b"counter\0");
        let mut data = nla(1, &7u64.to_be_bytes());
        data.extend(nla(2, &42u64.to_be_bytes()));
        counter.extend(nla(2 | 0x8000, &data));
        let mut attrs = nla(3, &17u64.to_be_bytes());
        attrs.extend(nla(4 | 0x8000, &nla(1 | 0x8000, &counter)));
        let mut udata = vec![0u8, 21];
        udata.extend_from_slice(b"anygate:default-deny\0");
        attrs.extend(nla(7, &udata));
        let r = rule(&attrs);
        assert_eq!(r.handle, 17);
        assert_eq!(r.packets, Some(42));
        assert_eq!(r.comment.as_deref(), Some("anygate:default-deny"));
    }

    #[test]
    fn malformed_attributes_end_the_walk() {
        assert_eq!(nlas(&[8, 0, 1, 0, 1, 2]).count(), 0, "length past the end");
        assert_eq!(nlas(&[2, 0, 1, 0]).count(), 0, "length below the header");
    }

    #[test]
    fn the_comment_is_read_from_rule_user_data() {
        // nft's encoding of `comment "p:web:12:4"`.
        let mut u = vec![0u8, 11];
        u.extend_from_slice(b"p:web:12:4\0");
        assert_eq!(comment(&u).as_deref(), Some("p:web:12:4"));
        // Another TLV first, then the comment.
        let mut v = vec![7u8, 2, 1, 2];
        v.extend_from_slice(&u);
        assert_eq!(comment(&v).as_deref(), Some("p:web:12:4"));
        assert_eq!(comment(&[0, 40, b'x']), None, "truncated");
        assert_eq!(comment(&[]), None);
    }
}
