//! The access-policy table's cost per peer-touching commit, with N peers
//! in a group a policy names: rebuilding the wanted table from the whole
//! inventory and comparing it with the kernel's (what every commit did
//! before issue 14: `policy::desired` + `policy::plan`) beside keeping it
//! current from the change feed (`policy::Wanted::update` +
//! `policy::plan_delta`: what the reconciler does now). Pure CPU, no root.
//!
//! ```sh
//! cargo bench -p anygate-node --bench policy_commit -- --sizes 10000,50000 [--json FILE]
//! ```

use anygate_node::host::policy::{self, Present, Wanted};
use anygate_node::model::policy::Policy;
use anygate_node::model::{Changes, Command, Inventory, NewPeer, Request, Response, WgKey};
use std::time::{Duration, Instant};

fn key(i: u64) -> WgKey {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&i.to_le_bytes());
    b[31] = 0x5a;
    WgKey(b)
}

fn peer(i: u64) -> NewPeer {
    NewPeer {
        public_key: key(i),
        preshared_key: None,
        allowed_ips: vec![],
        addresses: vec![],
        user: format!("user{i}"),
        device: "laptop".into(),
        group: "staff".into(),
        labels: Default::default(),
        persistent_keepalive: None,
        expires_at_ms: None,
        pool: Some("clients".into()),
        state: None,
    }
}

struct Inv {
    inv: Inventory,
    index: u64,
}

impl Inv {
    fn run(&mut self, cmd: Command) {
        self.index += 1;
        let req = Request {
            actor: "bench".into(),
            at_ms: 0,
            request_id: None,
            cmd,
        };
        let r = self.inv.apply(self.index, &req, &mut Changes::default());
        assert!(!matches!(r, Response::Rejected(_)), "{r:?}");
    }
}

/// (median, max) in ms.
fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(v[v.len() / 2]), ms(v[v.len() - 1]))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let sizes: Vec<u64> = opt("--sizes")
        .map(|s| {
            s.split(',')
                .map(|x| x.parse().expect("--sizes N,N"))
                .collect()
        })
        .unwrap_or_else(|| vec![10_000, 50_000]);
    let mut rows = vec![];
    println!(
        "| peers in the group | rebuild + compare p50 / max | incremental p50 / max | ratio |"
    );
    println!("|---|---|---|---|");
    for n in sizes {
        let mut s = Inv {
            inv: Inventory::default(),
            index: 0,
        };
        s.run(Command::AddPool {
            name: "clients".into(),
            cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            group: None,
        });
        s.run(Command::AddPolicy(Policy {
            name: "staff-web".into(),
            group: "staff".into(),
            destinations: vec!["172.16.0.0/24".parse().unwrap()],
            protocol: None,
            ports: vec![],
            revision: 0,
        }));
        for start in (0..n).step_by(1000) {
            s.run(Command::AddPeers(
                (start..(start + 1000).min(n)).map(peer).collect(),
            ));
        }
        // Old: the whole wanted table, compared with an in-sync kernel.
        let want = policy::desired(&s.inv, "wg0");
        assert_eq!(want.sets.values().map(|m| m.len()).sum::<usize>() as u64, n);
        let mut have = Present {
            skeleton_for: Some("wg0".into()),
            sets: want.sets.clone(),
            rules: want.rules.keys().map(|k| (k.clone(), 1)).collect(),
            denied_packets: 0,
        };
        let mut old = vec![];
        for i in 0..20 {
            s.run(Command::AddPeers(vec![peer(n + i)]));
            let t = Instant::now();
            let want = policy::desired(&s.inv, "wg0");
            let script = policy::plan(Some(&have), &want).expect("one element to add");
            old.push(t.elapsed());
            assert!(script.starts_with("add element"), "{script}");
            have.sets = want.sets;
        }
        // New: kept current peer by peer.
        let mut wanted = Wanted::build(&s.inv, "wg0");
        let mut new = vec![];
        for i in 20..1020 {
            let k = key(n + i);
            s.run(Command::AddPeers(vec![peer(n + i)]));
            let t = Instant::now();
            let d = wanted.update(&s.inv, &[k]);
            let script = policy::plan_delta(&have, &d).expect("the sets exist");
            policy::apply_delta(&mut have, &d);
            new.push(t.elapsed());
            assert!(script.starts_with("add element"), "{script}");
        }
        assert_eq!(have.sets, policy::desired(&s.inv, "wg0").sets);
        let (o50, omax) = stats(old);
        let (n50, nmax) = stats(new);
        println!(
            "| {n} | {o50:.2} / {omax:.2} ms | {n50:.4} / {nmax:.4} ms | {:.0}× |",
            o50 / n50
        );
        rows.push(serde_json::json!({
            "peers": n,
            "rebuild_p50_ms": o50, "rebuild_max_ms": omax,
            "incremental_p50_ms": n50, "incremental_max_ms": nmax,
        }));
    }
    if let Some(path) = opt("--json") {
        let doc = serde_json::json!({ "rows": rows });
        std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap()).expect("write --json");
    }
}
