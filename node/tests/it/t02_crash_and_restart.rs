//! kill -9 the leader while writes are in flight: a new leader is elected,
//! every acknowledged write is on every node, and the killed node restarts
//! from its data dir and catches up.

use crate::harness::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn leader_crash_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3, &[]);
    c.form();
    let eps = c.all_endpoints();
    ctl_ok(&eps, &["pool", "add", "corp", "--cidr", "10.81.0.0/16"]);

    // Writers add peers through every node until told to stop; each records
    // the keys whose add was acknowledged.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = vec![];
    for w in 0..3 {
        let (acked, stop, eps) = (acked.clone(), stop.clone(), eps.clone());
        writers.push(std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = random_key();
                let out = ctl(
                    &eps,
                    &[
                        "peer",
                        "add",
                        "--user",
                        &format!("w{w}"),
                        "--device",
                        &format!("d{i}"),
                        "--public-key",
                        &key,
                    ],
                );
                if out.status.success() {
                    acked.lock().unwrap().push(key);
                }
                i += 1;
            }
        }));
    }
    eventually("some writes acknowledged", Duration::from_secs(30), || {
        (acked.lock().unwrap().len() >= 10).then_some(())
    });

    let old = c.leader();
    c.node(old).kill();
    let new = eventually(
        "a new leader among the survivors",
        Duration::from_secs(20),
        || {
            let s = status(&c.live_endpoints())?;
            let l = s["leader_id"].as_u64()?;
            (l != 0 && l != old).then_some(l)
        },
    );
    let before = acked.lock().unwrap().len();
    eventually(
        "writes acknowledged under the new leader",
        Duration::from_secs(30),
        || (acked.lock().unwrap().len() >= before + 10).then_some(()),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert_ne!(new, old);

    // Every acknowledged write is on both survivors (linearizable reads).
    for n in c.nodes.iter().filter(|n| n.child.is_some()) {
        let keys = peer_keys(&n.addr, false).expect("list peers");
        let missing: Vec<_> = acked
            .iter()
            .filter(|k| keys.binary_search(k).is_err())
            .collect();
        assert!(
            missing.is_empty(),
            "node {} lacks {} acknowledged peers",
            n.id,
            missing.len()
        );
    }

    // The killed node restarts from its data dir and catches up.
    c.node(old).start();
    let addr = c.addr(old);
    let want = peer_keys(&c.addr(new), false).unwrap();
    eventually(
        "restarted node has every peer",
        Duration::from_secs(30),
        || (peer_keys(&addr, true)? == want).then_some(()),
    );
    let dup = want.len() - {
        let mut d = want.clone();
        d.dedup();
        d.len()
    };
    assert_eq!(dup, 0);
}
