//! kill -9 the leader while writes are in flight: a new leader is elected,
//! every acknowledged write is on every node, and the killed node restarts
//! from its data dir and catches up. SIGTERM the leader: it hands
//! leadership over, and writes pause for milliseconds, not an election.

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

/// SIGTERM the leader while a writer writes through the survivors: the
/// stopping leader hands leadership to a caught-up voter (TimeoutNow), so
/// the writes pause for a hand-off, not for the followers' leader lease
/// plus an election timeout (1.2–1.6 s with the default timers), and the
/// new leader is elected in the very next term.
#[test]
fn stopping_the_leader_hands_over_without_an_election_gap() {
    let mut c = Cluster::start(3, &[]);
    c.form();
    ctl_ok(
        &c.all_endpoints(),
        &["pool", "add", "corp", "--cidr", "10.81.0.0/16"],
    );
    let old = c.leader();
    let term = status(&c.addr(old)).expect("status")["term"]
        .as_u64()
        .expect("term");
    let survivors: Vec<u64> = c.nodes.iter().map(|n| n.id).filter(|i| *i != old).collect();
    let eps = survivors
        .iter()
        .map(|i| c.addr(*i))
        .collect::<Vec<_>>()
        .join(",");

    let acks = Arc::new(Mutex::new(Vec::<std::time::Instant>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (acks, stop, eps) = (acks.clone(), stop.clone(), eps.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = random_key();
                let d = format!("d{i}");
                let out = ctl(
                    &eps,
                    &[
                        "peer",
                        "add",
                        "--user",
                        "w",
                        "--device",
                        &d,
                        "--public-key",
                        &key,
                    ],
                );
                if out.status.success() {
                    acks.lock().unwrap().push(std::time::Instant::now());
                }
                i += 1;
            }
        })
    };
    eventually("writes acknowledged", Duration::from_secs(30), || {
        (acks.lock().unwrap().len() >= 10).then_some(())
    });
    let t0 = std::time::Instant::now();
    c.node(old).terminate();
    let new = eventually("a new leader", Duration::from_secs(20), || {
        let l = status(&eps)?["leader_id"].as_u64()?;
        (l != 0 && l != old).then_some(l)
    });
    let after = |t: std::time::Instant| acks.lock().unwrap().iter().filter(|a| **a > t).count();
    eventually(
        "writes acknowledged under the new leader",
        Duration::from_secs(30),
        || (after(t0) >= 10).then_some(()),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();

    // The longest pause between acknowledged writes around the stop.
    let acks = acks.lock().unwrap().clone();
    let last_before = acks
        .iter()
        .rev()
        .find(|a| **a <= t0)
        .copied()
        .expect("a write before");
    let gap = acks
        .iter()
        .filter(|a| **a >= last_before)
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1].duration_since(*w[0]))
        .max()
        .expect("writes after the stop");
    eprintln!("leader {old} stopped: node {new} leads; longest write pause {gap:?}");
    assert!(
        gap < Duration::from_millis(700),
        "writes paused {gap:?} when the leader stopped: longer than a hand-off, as long as an election timeout"
    );
    let st = status(&eps).expect("status");
    assert_eq!(
        st["term"].as_u64(),
        Some(term + 1),
        "one election, started by the hand-off: {st}"
    );
    let log = c.node(old).log();
    assert!(
        log.contains("leadership handed over"),
        "the old leader logged the hand-off:\n{log}"
    );
    assert!(
        c.node(new).log().contains("hands leadership to this node"),
        "node {new} was asked to take over"
    );
}
