//! Property test over the operator API's request types: arbitrary strings
//! (control characters, quotes, megabytes), sizes and prefixes go through
//! the same path a gRPC call takes before and after the log — conversion,
//! the proposer's bounds (`limits::check_request`), the state machine.
//! Every request is accepted whole, or refused with a status a person can
//! act on and nothing changed; an accepted one fits one log entry (so the
//! log cannot stall on it); nothing panics.

use super::convert;
use super::policies::policy_from_pb;
use crate::model::limits::{self, ENTRY_BYTES};
use crate::model::{Changes, Command, ErrorKind, Inventory, Request, Response};
use anygate_proto::v1 as pb;
use proptest::prelude::*;
use tonic::Code;

/// Text an attacker or a careless script might send.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9]{1,12}",
        2 => "\\PC{0,40}",
        2 => ".{0,40}",
        1 => "[\"\\\\\\n\\r\\t\\x00#=/]{0,20}",
        1 => (prop_oneof![Just('x'), Just('\u{1}'), Just('"'), Just('é')], 100usize..300_000)
            .prop_map(|(c, n)| std::iter::repeat_n(c, n).collect()),
    ]
}

fn cidr() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (any::<u32>(), 0u8..=33).prop_map(|(a, l)| format!("{}/{l}", std::net::Ipv4Addr::from(a))),
        2 => (any::<u32>(), 0u8..=32).prop_map(|(a, l)| format!("10.{}.{}.0/{l}", a % 256, (a >> 8) % 256)),
        2 => (any::<u128>(), 0u8..=129).prop_map(|(a, l)| format!("{}/{l}", std::net::Ipv6Addr::from(a))),
        1 => Just("0.0.0.0/0".to_string()),
        1 => text(),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => any::<[u8; 32]>().prop_map(|k| crate::model::WgKey(k).to_string()),
        1 => text(),
    ]
}

fn peer_spec() -> impl Strategy<Value = pb::PeerSpec> {
    (
        (key(), proptest::option::of(key()), text(), text(), text()),
        (
            proptest::collection::vec(cidr(), 0..4),
            proptest::collection::vec(
                cidr().prop_map(|c| c.split('/').next().unwrap_or("").to_string()),
                0..3,
            ),
            proptest::collection::btree_map(text(), text(), 0..4),
            proptest::option::of(0u32..70_000),
            prop_oneof![Just(String::new()), Just("corp".to_string()), text()],
            0i32..5,
        ),
    )
        .prop_map(
            |((k, psk, user, device, group), (allowed, addresses, labels, ka, pool, state))| {
                pb::PeerSpec {
                    public_key: k,
                    preshared_key: psk,
                    allowed_ips: allowed,
                    addresses,
                    user,
                    device,
                    group,
                    labels: labels.into_iter().collect(),
                    persistent_keepalive: ka,
                    expires_at_ms: None,
                    pool,
                    state,
                }
            },
        )
}

/// One operator request, converted as its RPC handler converts it (a
/// conversion refusal is the handler's answer).
fn request() -> impl Strategy<Value = Result<Command, Code>> {
    let conv = |r: Result<Command, tonic::Status>| r.map_err(|s| s.code());
    prop_oneof![
        4 => proptest::collection::vec(peer_spec(), 1..6).prop_map(move |specs| conv(
            specs.iter().map(convert::new_peer).collect::<Result<Vec<_>, _>>().map(Command::AddPeers)
        )),
        1 => (text(), proptest::collection::vec(cidr(), 0..4), proptest::option::of(text())).prop_map(move |(name, cidrs, group)| conv(
            cidrs.iter().map(|c| convert::cidr("cidr", c)).collect::<Result<Vec<_>, _>>().map(|cidrs| Command::AddPool { name, cidrs, group })
        )),
        1 => (proptest::collection::vec(cidr(), 0..3), proptest::option::of(text()), proptest::option::of(0u32..70_000)).prop_map(move |(routable, host, mtu)| conv(
            convert::settings_patch(&pb::SettingsPatch {
                routable_prefixes: routable,
                set_routable_prefixes: true,
                endpoint_host: host,
                mtu,
                ..Default::default()
            }).map(Command::SetSettings)
        )),
        1 => (text(), text(), proptest::collection::vec(cidr(), 0..3), text()).prop_map(move |(name, group, dst, proto)| conv(
            policy_from_pb(&pb::Policy { name, group, destinations: dst, protocol: proto, ..Default::default() }).map(Command::AddPolicy)
        )),
        1 => text().prop_map(move |r| conv(convert::peer_ref(&r).map(|peer| Command::RemovePeer { peer }))),
    ]
}

fn seeded() -> Inventory {
    let mut inv = Inventory::default();
    for (i, cmd) in [
        Command::AddPool {
            name: "corp".into(),
            cidrs: vec!["10.0.0.0/16".parse().unwrap()],
            group: None,
        },
        Command::SetSettings(crate::model::SettingsPatch {
            routable_prefixes: Some(vec!["192.168.0.0/16".parse().unwrap()]),
            ..Default::default()
        }),
    ]
    .into_iter()
    .enumerate()
    {
        let r = inv.apply(i as u64 + 1, &req(cmd), &mut Changes::default());
        assert!(!matches!(r, Response::Rejected(_)), "{r:?}");
    }
    inv
}

fn req(cmd: Command) -> Request {
    Request {
        actor: "operator".into(),
        at_ms: 1_000,
        request_id: None,
        cmd,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn every_request_is_accepted_whole_or_refused_clearly(reqs in proptest::collection::vec(request(), 1..6)) {
        let mut inv = seeded();
        for (i, r) in reqs.into_iter().enumerate() {
            let cmd = match r {
                Ok(cmd) => cmd,
                Err(code) => {
                    prop_assert_eq!(code, Code::InvalidArgument);
                    continue;
                }
            };
            let r = req(cmd);
            if let Err(e) = limits::check_request(&r) {
                prop_assert!(matches!(e.kind, ErrorKind::InvalidArgument | ErrorKind::ResourceExhausted), "{:?}", e);
                prop_assert!(e.message.len() < 400, "{}", e.message.len());
                continue;
            }
            prop_assert!(limits::encoded_len(&r) <= ENTRY_BYTES);
            let before = serde_json::to_string(&inv.to_image()).unwrap();
            match inv.apply(10 + i as u64, &r, &mut Changes::default()) {
                Response::Rejected(e) => {
                    prop_assert!(e.kind != ErrorKind::PermissionDenied, "{:?}", e);
                    prop_assert!(e.message.len() < 600, "{}", e.message.len());
                    prop_assert_eq!(serde_json::to_string(&inv.to_image()).unwrap(), before, "a refusal changed state");
                }
                Response::Duplicate { .. } => prop_assert!(false, "no request ids were sent"),
                _ => {}
            }
        }
    }
}
