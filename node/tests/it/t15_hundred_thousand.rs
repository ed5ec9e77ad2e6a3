//! 100,000 peers through the operator paths that return them all: a
//! listing, an export and a backup restored into a fresh cluster. A single
//! gRPC answer stops at the client's message limit (tonic's 4 MiB default
//! held about 30,000 peers); listings and backups are streamed in pages.

use crate::harness::*;

const PEERS: usize = 100_000;

fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_string).collect();
    v.sort();
    v
}

#[test]
fn a_hundred_thousand_peers_list_export_and_restore() {
    let mut a = Cluster::start(1, &[]);
    a.form();
    let ea = a.addr(1);
    ctl_ok(&ea, &["pool", "add", "big", "--cidr", "10.128.0.0/14"]);
    let mut lines = String::with_capacity(PEERS * 120);
    for i in 0..PEERS {
        lines.push_str(&format!(
            "{{\"public_key\":\"{}\",\"user\":\"u{i}\",\"device\":\"d\",\"labels\":{{\"n\":\"{i}\"}}}}\n",
            random_key()
        ));
    }
    let file = write_file(a.dir(), "peers.jsonl", &lines);
    ctl_ok(
        &ea,
        &[
            "--timeout",
            "60s",
            "peer",
            "import",
            file.to_str().unwrap(),
            "--batch",
            "5000",
        ],
    );
    ctl_ok(&ea, &["peer", "revoke", "u7/d"]);
    ctl_ok(&ea, &["peer", "disable", "u8/d"]);

    let listed = ctl_json(&ea, &["peer", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), PEERS);
    let exported = ctl_ok(&ea, &["peer", "export"]);
    assert_eq!(exported.lines().count(), PEERS);

    let backup = a.dir().join("backup.json");
    let out = ctl_json(&ea, &["backup", "export", backup.to_str().unwrap()]);
    assert_eq!(out["peers"], PEERS, "{out}");

    let mut b = Cluster::start(1, &[]);
    b.form();
    let eb = b.addr(1);
    ctl_ok(
        &eb,
        &[
            "--timeout",
            "60s",
            "backup",
            "restore",
            backup.to_str().unwrap(),
            "--batch",
            "5000",
        ],
    );
    // Same peers, keys, addresses, labels and states.
    assert_eq!(
        sorted_lines(&ctl_ok(&eb, &["peer", "export"])),
        sorted_lines(&exported)
    );
    let revoked = |ep: &str| ctl_json(ep, &["peer", "revoked"])[0]["public_key"].clone();
    assert!(revoked(&ea).is_string());
    assert_eq!(revoked(&ea), revoked(&eb));
}
