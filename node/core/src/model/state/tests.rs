use super::*;

fn key(i: u32) -> WgKey {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&i.to_be_bytes());
    b[31] = 1;
    WgKey(b)
}

fn req(cmd: Command) -> Request {
    Request {
        actor: "test".into(),
        at_ms: 1_000,
        request_id: None,
        cmd,
    }
}

fn np(i: u32) -> NewPeer {
    NewPeer {
        public_key: key(i),
        preshared_key: None,
        allowed_ips: vec![],
        addresses: vec![],
        user: format!("u{i}"),
        device: "laptop".into(),
        group: String::new(),
        labels: Default::default(),
        persistent_keepalive: None,
        expires_at_ms: None,
        pool: None,
        state: None,
    }
}

fn inv_with_pool(cidrs: &[&str]) -> Inventory {
    let mut inv = Inventory::default();
    let mut ch = Changes::default();
    let r = inv.apply(
        1,
        &req(Command::AddPool {
            name: "corp".into(),
            cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            group: None,
        }),
        &mut ch,
    );
    assert!(matches!(r, Response::Pool(_)), "{r:?}");
    inv
}

fn add(inv: &mut Inventory, idx: u64, peers: Vec<NewPeer>) -> Response {
    inv.apply(idx, &req(Command::AddPeers(peers)), &mut Changes::default())
}

fn rejected(r: Response) -> ApplyError {
    match r {
        Response::Rejected(e) => e,
        other => panic!("expected rejection, got {other:?}"),
    }
}

#[test]
fn allocation_is_sequential_dual_stack_and_unique() {
    let mut inv = inv_with_pool(&["10.8.0.0/24", "fd00:8::/64"]);
    let Response::Peers(p) = add(&mut inv, 2, vec![np(1), np(2)]) else {
        panic!()
    };
    assert_eq!(
        p[0].addresses,
        vec![
            "10.8.0.2".parse::<IpAddr>().unwrap(),
            "fd00:8::2".parse().unwrap()
        ]
    );
    assert_eq!(p[1].addresses[0], "10.8.0.3".parse::<IpAddr>().unwrap());
    assert_eq!(p[0].allowed_ips.len(), 2);
    assert_eq!(p[0].persistent_keepalive, DEFAULT_KEEPALIVE);
    assert_eq!(p[0].pool.as_deref(), Some("corp"));
    // Removing a peer frees its address; the cursor moves on, then wraps.
    inv.apply(
        3,
        &req(Command::RemovePeer {
            peer: PeerRef::Key(key(1)),
        }),
        &mut Changes::default(),
    );
    let Response::Peers(p) = add(&mut inv, 4, vec![np(3)]) else {
        panic!()
    };
    assert_eq!(p[0].addresses[0], "10.8.0.4".parse::<IpAddr>().unwrap());
}

#[test]
fn exhausted_pool_and_batch_rollback() {
    let mut inv = inv_with_pool(&["10.9.0.0/29"]); // usable .2-.6 = 5
    let batch: Vec<NewPeer> = (1..=6).map(np).collect();
    let e = rejected(add(&mut inv, 2, batch));
    assert_eq!(e.kind, ErrorKind::ResourceExhausted);
    assert!(e.message.contains("peer 6 of 6"), "{}", e.message);
    assert_eq!(
        inv.peer_count(),
        0,
        "a rejected batch leaves nothing behind"
    );
    assert_eq!(inv.pools()[0].allocated, 0);
    let Response::Peers(p) = add(&mut inv, 3, (1..=5).map(np).collect()) else {
        panic!()
    };
    assert_eq!(p.len(), 5);
    assert_eq!(
        rejected(add(&mut inv, 4, vec![np(7)])).kind,
        ErrorKind::ResourceExhausted
    );
}

#[test]
fn rejections_change_nothing() {
    let mut inv = inv_with_pool(&["10.8.0.0/24"]);
    inv.apply(
        2,
        &req(Command::SetSettings(SettingsPatch {
            routable_prefixes: Some(vec![
                "192.168.0.0/16".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap(),
            ]),
            ..Default::default()
        })),
        &mut Changes::default(),
    );
    let mut a = np(1);
    a.allowed_ips = vec!["192.168.10.0/24".parse().unwrap()];
    a.pool = Some("corp".into());
    assert!(matches!(add(&mut inv, 2, vec![a]), Response::Peers(_)));
    let before = serde_json::to_string(&inv.to_image()).unwrap();

    let mut dup = np(1);
    dup.user = "other".into();
    let mut overlap = np(2);
    overlap.allowed_ips = vec!["192.168.10.128/25".parse().unwrap()];
    let mut outside = np(3);
    outside.addresses = vec!["172.16.0.9".parse().unwrap()];
    let mut nopool = np(4);
    nopool.pool = Some("nope".into());
    let mut same_dev = np(5);
    same_dev.user = "u1".into();
    let mut self_overlap = np(6);
    self_overlap.allowed_ips = vec![
        "10.1.0.0/16".parse().unwrap(),
        "10.1.2.0/24".parse().unwrap(),
    ];
    let cases: Vec<(Command, ErrorKind, &str)> = vec![
        (
            Command::AddPeers(vec![dup]),
            ErrorKind::AlreadyExists,
            "already belongs",
        ),
        (
            Command::AddPeers(vec![overlap]),
            ErrorKind::FailedPrecondition,
            "overlaps peer u1/laptop",
        ),
        (
            Command::AddPeers(vec![outside]),
            ErrorKind::OutOfRange,
            "outside every pool",
        ),
        (
            Command::AddPeers(vec![nopool]),
            ErrorKind::NotFound,
            "no pool named",
        ),
        (
            Command::AddPeers(vec![same_dev]),
            ErrorKind::AlreadyExists,
            "already has a device",
        ),
        (
            Command::AddPeers(vec![self_overlap]),
            ErrorKind::InvalidArgument,
            "overlap",
        ),
        (
            Command::RemovePeer {
                peer: PeerRef::Key(key(99)),
            },
            ErrorKind::NotFound,
            "no peer",
        ),
        (
            Command::RemovePool {
                name: "corp".into(),
            },
            ErrorKind::FailedPrecondition,
            "still has 1 peers",
        ),
        (
            Command::RemovePool { name: "x".into() },
            ErrorKind::NotFound,
            "no pool",
        ),
        (
            Command::AddPool {
                name: "b".into(),
                cidrs: vec!["10.8.0.128/25".parse().unwrap()],
                group: None,
            },
            ErrorKind::FailedPrecondition,
            "overlaps 10.8.0.0/24",
        ),
        (
            Command::SetSettings(SettingsPatch {
                mtu: Some(100),
                ..Default::default()
            }),
            ErrorKind::InvalidArgument,
            "MTU",
        ),
        (
            // A quote would end the name inside the node's nft scripts.
            Command::SetSettings(SettingsPatch {
                interface: Some("wg0\" ; flush ruleset #".into()),
                ..Default::default()
            }),
            ErrorKind::InvalidArgument,
            "interface name",
        ),
        (
            // A line break would put a hook into every client config.
            Command::SetSettings(SettingsPatch {
                endpoint_host: Some(Some("vpn.example.com\nPostUp = id".into())),
                ..Default::default()
            }),
            ErrorKind::InvalidArgument,
            "endpoint host",
        ),
        (
            Command::RotatePeer {
                peer: PeerRef::Key(key(1)),
                new_key: key(1),
                new_psk: None,
            },
            ErrorKind::AlreadyExists,
            "already belongs",
        ),
    ];
    for (i, (cmd, kind, text)) in cases.into_iter().enumerate() {
        let mut ch = Changes::default();
        let e = rejected(inv.apply(10 + i as u64, &req(cmd.clone()), &mut ch));
        assert_eq!(e.kind, kind, "{cmd:?}: {}", e.message);
        assert!(e.message.contains(text), "{cmd:?}: {}", e.message);
        assert!(ch.peers.is_empty() && ch.pools.is_empty() && !ch.settings);
        assert_eq!(ch.audit.len(), 1, "refusals are audited");
        assert!(ch.audit[0].error.is_some());
        assert_eq!(
            serde_json::to_string(&inv.to_image()).unwrap(),
            before,
            "{cmd:?} changed state"
        );
    }
}

#[test]
fn state_transitions_rotate_and_expiry() {
    let mut inv = inv_with_pool(&["10.8.0.0/24"]);
    let mut eph = np(2);
    eph.expires_at_ms = Some(5_000);
    add(&mut inv, 2, vec![np(1), eph]);
    let ud = PeerRef::UserDevice("u1".into(), "laptop".into());
    let r = inv.apply(
        3,
        &req(Command::SetPeerState {
            peer: ud.clone(),
            state: PeerState::Disabled,
        }),
        &mut Changes::default(),
    );
    let Response::Peers(p) = r else {
        panic!("{r:?}")
    };
    assert_eq!((p[0].state, p[0].revision), (PeerState::Disabled, 3));
    inv.apply(
        4,
        &req(Command::SetPeerState {
            peer: ud.clone(),
            state: PeerState::Revoked,
        }),
        &mut Changes::default(),
    );
    let e = rejected(inv.apply(
        5,
        &req(Command::SetPeerState {
            peer: ud.clone(),
            state: PeerState::Active,
        }),
        &mut Changes::default(),
    ));
    assert_eq!(e.kind, ErrorKind::FailedPrecondition);

    let r = inv.apply(
        6,
        &req(Command::RotatePeer {
            peer: ud.clone(),
            new_key: key(50),
            new_psk: None,
        }),
        &mut Changes::default(),
    );
    let Response::Peers(p) = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        p[0].addresses[0],
        "10.8.0.2".parse::<IpAddr>().unwrap(),
        "rotation keeps addresses"
    );
    assert!(inv.peer(&key(1)).is_none() && inv.peer(&key(50)).is_some());

    let mut early = req(Command::ExpirePeers);
    early.at_ms = 4_999;
    assert_eq!(
        inv.apply(7, &early, &mut Changes::default()),
        Response::Count(0)
    );
    let mut late = req(Command::ExpirePeers);
    late.at_ms = 5_000;
    let mut ch = Changes::default();
    assert_eq!(inv.apply(8, &late, &mut ch), Response::Count(1));
    assert!(inv.peer(&key(2)).is_none());
    assert!(ch.peers.contains(&key(2)));
}

#[test]
fn endpoints_keep_the_freshest_and_image_roundtrips() {
    let mut inv = inv_with_pool(&["10.8.0.0/24"]);
    add(&mut inv, 2, vec![np(1)]);
    let rec = |at: i64, port: u16| EndpointRecord {
        endpoint: SocketAddr::from(([192, 0, 2, 1], port)),
        last_handshake_ms: at,
        observed_by: 1,
        observed_at_ms: at,
    };
    let r = inv.apply(
        3,
        &req(Command::UpdateEndpoints(vec![
            (key(1), rec(10, 1000)),
            (key(9), rec(10, 1)),
        ])),
        &mut Changes::default(),
    );
    assert_eq!(r, Response::Count(1), "unknown peers are ignored");
    inv.apply(
        4,
        &req(Command::UpdateEndpoints(vec![(key(1), rec(5, 2000))])),
        &mut Changes::default(),
    );
    assert_eq!(
        inv.endpoint(&key(1)).unwrap().endpoint.port(),
        1000,
        "older observation loses"
    );
    let img = serde_json::to_string(&inv.to_image()).unwrap();
    let back = Inventory::from_image(serde_json::from_str(&img).unwrap());
    assert_eq!(serde_json::to_string(&back.to_image()).unwrap(), img);
    // the rebuilt indexes work
    let mut dup = np(3);
    dup.addresses = vec!["10.8.0.2".parse().unwrap()];
    let mut back = back;
    assert_eq!(
        rejected(add(&mut back, 5, vec![dup])).kind,
        ErrorKind::FailedPrecondition
    );
}

#[test]
fn pool_choice_by_group() {
    let mut inv = inv_with_pool(&["10.8.0.0/24"]);
    inv.apply(
        2,
        &req(Command::AddPool {
            name: "eng".into(),
            cidrs: vec!["10.9.0.0/24".parse().unwrap()],
            group: Some("eng".into()),
        }),
        &mut Changes::default(),
    );
    let mut e = np(1);
    e.group = "eng".into();
    let Response::Peers(p) = add(&mut inv, 3, vec![e]) else {
        panic!()
    };
    assert_eq!(p[0].pool.as_deref(), Some("eng"));
    let Response::Peers(p) = add(&mut inv, 4, vec![np(2)]) else {
        panic!()
    };
    assert_eq!(p[0].pool.as_deref(), Some("corp"));
    let mut wrong = np(3);
    wrong.pool = Some("eng".into());
    assert_eq!(
        rejected(add(&mut inv, 5, vec![wrong])).kind,
        ErrorKind::FailedPrecondition
    );
}

#[test]
fn retried_request_ids_apply_once() {
    let mut inv = inv_with_pool(&["10.8.0.0/24"]);
    let mut r = req(Command::AddPeers(vec![np(1)]));
    r.request_id = Some("abc".into());
    let mut ch = Changes::default();
    assert!(matches!(inv.apply(2, &r, &mut ch), Response::Peers(_)));
    assert_eq!(ch.requests_added.len(), 1);
    // The same id again, e.g. resent after a leader crash: not applied twice.
    let mut ch = Changes::default();
    assert_eq!(inv.apply(3, &r, &mut ch), Response::Duplicate { index: 2 });
    assert!(ch.peers.is_empty() && ch.audit.is_empty());
    // A refused request stays refused on retry.
    let mut bad = req(Command::RemovePeer {
        peer: PeerRef::Key(key(99)),
    });
    bad.request_id = Some("def".into());
    let first = inv.apply(4, &bad, &mut Changes::default());
    assert_eq!(inv.apply(5, &bad, &mut Changes::default()), first);
    // Remembered ids survive the image round trip.
    let mut back = Inventory::from_image(inv.to_image());
    assert_eq!(
        back.apply(6, &r, &mut Changes::default()),
        Response::Duplicate { index: 2 }
    );
}

#[test]
fn an_unbounded_raw_entry_is_refused_and_its_audit_and_id_stay_small() {
    // A log entry the proposer's bound never saw (an old version, a
    // restore): the state machine refuses it too, and what it keeps of it
    // (audit object, error, remembered request id) is bounded.
    let mut inv = inv_with_pool(&["10.0.0.0/24"]);
    let before = inv.to_image().peers.len();
    let mut p = np(1);
    p.labels.insert("note".into(), "\u{1}".repeat(1_000_000));
    let mut ch = Changes::default();
    let mut r = req(Command::AddPeers(vec![p]));
    r.request_id = Some("retry-1".into());
    let e = rejected(inv.apply(2, &r, &mut ch));
    assert!(
        e.message.contains("label \"note\" is 1000000 bytes"),
        "{}",
        e.message
    );
    assert_eq!(inv.to_image().peers.len(), before);
    let long_ref = PeerRef::UserDevice("u".repeat(100), "d".repeat(100));
    rejected(inv.apply(3, &req(Command::RemovePeer { peer: long_ref }), &mut ch));
    assert_eq!(ch.audit.len(), 2);
    for a in &ch.audit {
        assert!(a.object.len() <= AUDIT_TEXT_BYTES + 3, "{}", a.object.len());
        assert!(a.error.as_ref().unwrap().len() <= AUDIT_TEXT_BYTES + 3);
    }
    assert!(ch.requests_added[0].error.as_ref().unwrap().message.len() <= AUDIT_TEXT_BYTES + 3);
}

#[test]
fn a_revoked_key_never_comes_back() {
    let mut inv = inv_with_pool(&["10.0.0.0/24"]);
    add(&mut inv, 2, vec![np(1)]);
    let mut ch = Changes::default();
    let revoke = Command::SetPeerState {
        peer: PeerRef::Key(key(1)),
        state: PeerState::Revoked,
    };
    assert!(matches!(
        inv.apply(3, &req(revoke), &mut ch),
        Response::Peers(_)
    ));
    assert!(ch.revoked.contains(&key(1)));
    // Remove, then add the same key again (the finding): refused.
    inv.apply(
        4,
        &req(Command::RemovePeer {
            peer: PeerRef::Key(key(1)),
        }),
        &mut Changes::default(),
    );
    let e = rejected(add(&mut inv, 5, vec![np(1)]));
    assert_eq!(e.kind, ErrorKind::FailedPrecondition);
    assert!(
        e.message.contains("was revoked (log index 3)"),
        "{}",
        e.message
    );
    // Nor as the new key of a rotation.
    add(&mut inv, 6, vec![np(2)]);
    let e = rejected(inv.apply(
        7,
        &req(Command::RotatePeer {
            peer: PeerRef::Key(key(2)),
            new_key: key(1),
            new_psk: None,
        }),
        &mut Changes::default(),
    ));
    assert!(e.message.contains("never accepted again"), "{}", e.message);
    // A key revoked while no peer holds it (a leak; a restore), and a
    // held key, in one write; the holder becomes revoked.
    let mut ch = Changes::default();
    let r = inv.apply(
        8,
        &req(Command::RevokeKeys(vec![key(9), key(2), key(1)])),
        &mut ch,
    );
    assert_eq!(r, Response::Count(2), "key 1 already was");
    assert_eq!(inv.peer(&key(2)).unwrap().state, PeerState::Revoked);
    assert!(rejected(add(&mut inv, 9, vec![np(9)]))
        .message
        .contains("revoked"));
    // A peer added revoked (a restore) is revoked in the same write, and
    // a batch that fails leaves no revocation behind.
    let mut p = np(20);
    p.state = Some(PeerState::Revoked);
    let mut bad = np(21);
    bad.user = "u20".into();
    let mut ch = Changes::default();
    rejected(inv.apply(10, &req(Command::AddPeers(vec![p.clone(), bad])), &mut ch));
    assert!(inv.revocation(&key(20)).is_none() && ch.revoked.is_empty());
    add(&mut inv, 11, vec![p]);
    assert_eq!(inv.peer(&key(20)).unwrap().state, PeerState::Revoked);
    assert_eq!(inv.revocation(&key(20)).unwrap().index, 11);
    // A revoked key may come back only as a revoked peer (a restore
    // replays revocations before peers).
    let mut again = np(9);
    again.state = Some(PeerState::Revoked);
    assert!(matches!(add(&mut inv, 12, vec![again]), Response::Peers(_)));
    assert_eq!(
        inv.revocation(&key(9)).unwrap().index,
        8,
        "the first revocation stays"
    );
    // Snapshots carry them.
    let back = Inventory::from_image(inv.to_image());
    let keys: Vec<WgKey> = back.revoked().map(|(k, _)| *k).collect();
    assert_eq!(keys, vec![key(1), key(2), key(9), key(20)]);
}

#[test]
fn client_routes_need_a_pool_or_a_routable_prefix_and_never_cover_a_default_route() {
    let mut inv = inv_with_pool(&["10.0.0.0/24"]);
    let with_route = |i: u32, net: &str| {
        let mut p = np(i);
        p.allowed_ips = vec![net.parse().unwrap()];
        p
    };
    // The finding: a default route, or any prefix outside the pools.
    for (i, net) in ["0.0.0.0/0", "::/0", "192.168.7.0/24", "10.9.0.1/32"]
        .iter()
        .enumerate()
    {
        let e = rejected(add(&mut inv, 2 + i as u64, vec![with_route(i as u32, net)]));
        assert_eq!(e.kind, ErrorKind::OutOfRange);
        assert!(
            e.message
                .contains("outside every pool and every routable prefix"),
            "{}",
            e.message
        );
    }
    assert_eq!(inv.peer_count(), 0);
    let set = |inv: &mut Inventory, idx: u64, nets: &[&str], v4: Option<&str>| {
        inv.apply(
            idx,
            &req(Command::SetSettings(SettingsPatch {
                routable_prefixes: Some(nets.iter().map(|n| n.parse().unwrap()).collect()),
                anycast_v4: v4.map(|a| Some(a.parse().unwrap())),
                ..Default::default()
            })),
            &mut Changes::default(),
        )
    };
    // Too broad, or covering the anycast address: refused.
    assert!(rejected(set(&mut inv, 10, &["0.0.0.0/1"], None))
        .message
        .contains("too broad"));
    assert!(rejected(set(&mut inv, 11, &["::/8"], None))
        .message
        .contains("too broad"));
    let e = rejected(set(&mut inv, 12, &["192.0.2.0/24"], Some("192.0.2.10")));
    assert!(
        e.message.contains("covers the anycast address 192.0.2.10"),
        "{}",
        e.message
    );
    assert!(matches!(
        set(&mut inv, 13, &["192.168.0.0/16"], None),
        Response::Settings(_)
    ));
    assert!(matches!(
        add(&mut inv, 14, vec![with_route(1, "192.168.7.0/24")]),
        Response::Peers(_)
    ));
    assert!(
        rejected(add(&mut inv, 15, vec![with_route(2, "172.16.0.0/24")]))
            .message
            .contains("routable prefix")
    );
    // Inside a pool needs no routable prefix.
    assert!(matches!(
        add(&mut inv, 16, vec![with_route(3, "10.0.0.128/25")]),
        Response::Peers(_)
    ));
}

#[test]
fn idp_mappings_replace_unmap_and_survive_the_image() {
    use crate::model::idp::{ConsoleRole, IdpMapping};
    let mut inv = Inventory::default();
    let mut ch = Changes::default();
    let eng = IdpMapping {
        group: Some("eng".into()),
        ..IdpMapping::new("/staff/eng")
    };
    match inv.apply(7, &req(Command::MapIdpGroup(eng.clone())), &mut ch) {
        Response::IdpMapping(m) => assert_eq!(m.revision, 7),
        other => panic!("{other:?}"),
    }
    assert!(ch.idp);
    // Mapping again replaces (one mapping per IdP group).
    let admin = IdpMapping {
        role: Some(ConsoleRole::Admin),
        ..IdpMapping::new("/staff/eng")
    };
    inv.apply(
        8,
        &req(Command::MapIdpGroup(admin)),
        &mut Changes::default(),
    );
    let all: Vec<_> = inv.idp_mappings().cloned().collect();
    assert_eq!(all.len(), 1);
    assert_eq!(
        (all[0].group.clone(), all[0].role),
        (None, Some(ConsoleRole::Admin))
    );
    // A raw entry that skipped the API's checks is refused by apply too.
    let bad = IdpMapping::new("nothing-granted");
    let e = rejected(inv.apply(9, &req(Command::MapIdpGroup(bad)), &mut Changes::default()));
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    // The image carries the mappings.
    let copy = Inventory::from_image(inv.to_image());
    assert_eq!(copy.idp_mappings().cloned().collect::<Vec<_>>(), all);
    // Unmap; unmapping again is NotFound and changes nothing.
    let mut ch = Changes::default();
    assert!(matches!(
        inv.apply(
            10,
            &req(Command::UnmapIdpGroup {
                claim: "/staff/eng".into()
            }),
            &mut ch
        ),
        Response::IdpMapping(_)
    ));
    assert!(ch.idp && inv.idp_mappings().next().is_none());
    let mut ch = Changes::default();
    let e = rejected(inv.apply(
        11,
        &req(Command::UnmapIdpGroup {
            claim: "/staff/eng".into(),
        }),
        &mut ch,
    ));
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(!ch.idp);
}

fn enroll(i: u32, user: &str, device: &str, expires: i64) -> Command {
    let mut p = np(i);
    p.user = user.into();
    p.device = device.into();
    p.expires_at_ms = Some(expires);
    Command::Enroll {
        peer: p,
        max_devices: 2,
    }
}

#[test]
fn enrollment_counts_the_users_devices_and_renewal_only_extends() {
    let mut inv = inv_with_pool(&["10.8.0.0/24"]);
    let mut ch = Changes::default();
    let r = inv.apply(2, &req(enroll(1, "alice", "laptop", 50_000)), &mut ch);
    let Response::Peers(p) = r else {
        panic!("{r:?}")
    };
    assert!(p[0].enrolled(), "labelled as enrolled");
    assert_eq!(p[0].addresses[0], "10.8.0.2".parse::<IpAddr>().unwrap());
    assert!(ch.peers.contains(&key(1)));
    // An operator's peer for the same user does not count against the limit.
    let mut op = np(9);
    op.user = "alice".into();
    op.device = "server".into();
    assert!(matches!(add(&mut inv, 3, vec![op]), Response::Peers(_)));
    let r = inv.apply(
        4,
        &req(enroll(2, "alice", "phone", 60_000)),
        &mut Changes::default(),
    );
    assert!(matches!(r, Response::Peers(_)), "{r:?}");
    let e = rejected(inv.apply(
        5,
        &req(enroll(3, "alice", "tablet", 60_000)),
        &mut Changes::default(),
    ));
    assert_eq!(e.kind, ErrorKind::ResourceExhausted);
    assert!(
        e.message.contains("already has 2 enrolled devices"),
        "{}",
        e.message
    );
    assert!(inv.peer(&key(3)).is_none(), "nothing half-applied");
    // Another user is not affected by alice's limit.
    let r = inv.apply(
        6,
        &req(enroll(4, "bob", "laptop", 60_000)),
        &mut Changes::default(),
    );
    assert!(matches!(r, Response::Peers(_)), "{r:?}");
    // No expiry: refused.
    let mut c = enroll(5, "bob", "phone", 0);
    if let Command::Enroll { peer, .. } = &mut c {
        peer.expires_at_ms = None;
    }
    assert_eq!(
        rejected(inv.apply(7, &req(c), &mut Changes::default())).kind,
        ErrorKind::InvalidArgument
    );

    // Renewal: alice's enrolled devices move out to 90 s; the operator's
    // peer and bob's devices do not change; a shorter renewal changes nothing.
    let mut ch = Changes::default();
    let r = inv.apply(
        8,
        &req(Command::RenewUser {
            user: "alice".into(),
            until_ms: 90_000,
        }),
        &mut ch,
    );
    let Response::Peers(p) = r else {
        panic!("{r:?}")
    };
    assert_eq!(p.len(), 2);
    assert_eq!(inv.peer(&key(1)).unwrap().expires_at_ms, Some(90_000));
    assert_eq!(inv.peer(&key(2)).unwrap().expires_at_ms, Some(90_000));
    assert_eq!(inv.peer(&key(9)).unwrap().expires_at_ms, None);
    assert_eq!(inv.peer(&key(4)).unwrap().expires_at_ms, Some(60_000));
    assert_eq!(ch.peers.len(), 2);
    let r = inv.apply(
        9,
        &req(Command::RenewUser {
            user: "alice".into(),
            until_ms: 70_000,
        }),
        &mut Changes::default(),
    );
    assert!(matches!(r, Response::Peers(p) if p.is_empty()));
    assert_eq!(inv.peer(&key(1)).unwrap().expires_at_ms, Some(90_000));
    // A disabled device is not renewed.
    let r = inv.apply(
        10,
        &req(Command::SetPeerState {
            peer: PeerRef::Key(key(2)),
            state: PeerState::Disabled,
        }),
        &mut Changes::default(),
    );
    assert!(matches!(r, Response::Peers(_)));
    inv.apply(
        11,
        &req(Command::RenewUser {
            user: "alice".into(),
            until_ms: 99_000,
        }),
        &mut Changes::default(),
    );
    assert_eq!(inv.peer(&key(1)).unwrap().expires_at_ms, Some(99_000));
    assert_eq!(inv.peer(&key(2)).unwrap().expires_at_ms, Some(90_000));
}

#[test]
fn sign_ins_are_audited_and_the_portal_key_is_set_once() {
    let mut inv = Inventory::default();
    let mut ch = Changes::default();
    let ok = Command::SignIn {
        subject: "alice".into(),
        error: None,
    };
    assert!(matches!(inv.apply(1, &req(ok), &mut ch), Response::Empty));
    assert_eq!(ch.audit[0].action, "signin");
    assert_eq!(ch.audit[0].error, None);
    let mut ch = Changes::default();
    let bad = Command::SignIn {
        subject: "mallory".into(),
        error: Some("no mapped group".into()),
    };
    let e = rejected(inv.apply(2, &req(bad), &mut ch));
    assert_eq!(e.kind, ErrorKind::PermissionDenied);
    assert_eq!(ch.audit[0].error.as_deref(), Some("no mapped group"));

    assert!(inv.portal_key().is_none());
    let e = rejected(inv.apply(
        3,
        &req(Command::InitPortalKey(vec![1; 10])),
        &mut Changes::default(),
    ));
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    let mut ch = Changes::default();
    inv.apply(
        4,
        &req(Command::InitPortalKey(vec![7; PORTAL_KEY_BYTES])),
        &mut ch,
    );
    assert!(ch.idp, "stored");
    let mut ch = Changes::default();
    inv.apply(
        5,
        &req(Command::InitPortalKey(vec![8; PORTAL_KEY_BYTES])),
        &mut ch,
    );
    assert!(!ch.idp, "the first key stays");
    assert_eq!(inv.portal_key(), Some(&[7u8; PORTAL_KEY_BYTES][..]));
    let back = Inventory::from_image(inv.to_image());
    assert_eq!(back.portal_key(), Some(&[7u8; PORTAL_KEY_BYTES][..]));
}
