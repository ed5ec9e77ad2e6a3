//! 200 concurrent `peer add` with automatic addresses, spread over all nodes,
//! never yield a duplicate address.

use crate::harness::*;
use std::collections::HashSet;

#[test]
fn concurrent_adds_never_share_an_address() {
    let mut c = Cluster::start(3, &[]);
    c.form();
    let addrs: Vec<String> = c.nodes.iter().map(|n| n.addr.clone()).collect();
    ctl_ok(
        &addrs[0],
        &[
            "pool",
            "add",
            "corp",
            "--cidr",
            "10.83.0.0/24",
            "--cidr",
            "fd00:83::/120",
        ],
    );

    let mut got: Vec<String> = Vec::new();
    // 20 workers x 10 adds each = 200, every worker on its own node in turn.
    let handles: Vec<_> = (0..20)
        .map(|w| {
            let addrs = addrs.clone();
            std::thread::spawn(move || {
                let mut mine = vec![];
                for i in 0..10 {
                    let ep = &addrs[(w + i) % addrs.len()];
                    let v = ctl_json(
                        ep,
                        &[
                            "peer",
                            "add",
                            "--user",
                            &format!("w{w}"),
                            "--device",
                            &format!("d{i}"),
                            "--public-key",
                            &random_key(),
                        ],
                    );
                    for a in v["addresses"].as_array().unwrap() {
                        mine.push(a.as_str().unwrap().to_string());
                    }
                }
                mine
            })
        })
        .collect();
    for h in handles {
        got.extend(h.join().expect("worker"));
    }
    assert_eq!(got.len(), 400, "200 peers, one v4 and one v6 each");
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "duplicate address handed out");
    let pools = ctl_json(&addrs[1], &["pool", "list"]);
    assert_eq!(pools[0]["allocated"], 400);
    // The /24 has 253 usable addresses; the v6 /120 has 254. 53 more fit in v4.
    let many = ctl(
        &addrs[2],
        &[
            "peer",
            "add",
            "--user",
            "x",
            "--device",
            "y",
            "--public-key",
            &random_key(),
        ],
    );
    assert!(many.status.success());
}
