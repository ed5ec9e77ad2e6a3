//! Snapshots: build, purge the log, install on a new node that catches up
//! by snapshot; a 4th voter added and one removed.

use crate::harness::*;
use std::time::Duration;

#[test]
fn new_node_catches_up_by_snapshot_then_membership_changes() {
    let mut c = Cluster::start(3, &["--snapshot-logs", "50"]);
    c.form();
    let eps = c.all_endpoints();
    ctl_ok(&eps, &["pool", "add", "corp", "--cidr", "10.82.0.0/16"]);
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..300)
        .map(|i| serde_json::json!({"public_key": random_key(), "user": format!("u{i}"), "device": "phone"}).to_string())
        .collect();
    let file = write_file(dir.path(), "peers.jsonl", &lines.join("\n"));
    // Small batches: many log entries, so the snapshot policy kicks in.
    ctl_ok(
        &eps,
        &["peer", "import", file.to_str().unwrap(), "--batch", "3"],
    );
    for n in &c.nodes {
        ctl_ok(&n.addr, &["cluster", "snapshot"]);
    }
    let leader = c.leader();
    let st = status(&c.addr(leader)).unwrap();
    for n in st["nodes"].as_array().unwrap() {
        assert!(
            n["purged_index"].as_u64().unwrap() > 50,
            "log purged behind the snapshot: {n}"
        );
    }

    // Node 4 joins: the leader no longer has the early log, so it must be
    // sent the snapshot.
    c.add_node(4, &["--snapshot-logs", "50"]);
    let a4 = c.addr(4);
    // Sent to a follower only: it answers Unavailable with the leader's
    // address, and anygatectl follows it.
    let leader = c.leader();
    let follower = c
        .nodes
        .iter()
        .find(|n| n.id != leader && n.id != 4)
        .unwrap()
        .addr
        .clone();
    ctl_ok(
        &follower,
        &["cluster", "add-learner", "--id", "4", "--addr", &a4],
    );
    let want = peer_keys(&eps, false).unwrap();
    assert_eq!(want.len(), 300);
    eventually("node 4 has every peer", Duration::from_secs(30), || {
        (peer_keys(&a4, true)? == want).then_some(())
    });
    // The leader's view (it asks node 4 itself).
    let me = eventually(
        "node 4 in the status table",
        Duration::from_secs(10),
        || {
            let info = status(&eps)?;
            info["nodes"]
                .as_array()?
                .iter()
                .find(|n| n["id"] == 4 && n["role"] != "unreachable")
                .cloned()
        },
    );
    assert!(
        me["snapshot_index"].as_u64().unwrap() > 0,
        "node 4 installed a snapshot: {me}"
    );

    ctl_ok(&follower, &["cluster", "promote", "--id", "4"]);
    eventually("4 voters", Duration::from_secs(10), || {
        let s = status(&eps)?;
        (s["nodes"]
            .as_array()?
            .iter()
            .filter(|n| n["voter"] == true)
            .count()
            == 4)
            .then_some(())
    });
    // Remove one voter (the leader, the hardest case).
    let leader = c.leader();
    ctl_ok(&eps, &["cluster", "remove", "--id", &leader.to_string()]);
    c.node(leader).kill();
    let rest = c.live_endpoints();
    eventually(
        "3 voters and a leader without the removed node",
        Duration::from_secs(20),
        || {
            let s = status(&rest)?;
            let nodes = s["nodes"].as_array()?;
            (nodes.len() == 3
                && nodes.iter().all(|n| n["id"] != leader)
                && s["leader_id"].as_u64()? != 0)
                .then_some(())
        },
    );
    // Still writable.
    ctl_ok(
        &rest,
        &[
            "peer",
            "add",
            "--user",
            "after",
            "--device",
            "removal",
            "--public-key",
            &random_key(),
        ],
    );
}
