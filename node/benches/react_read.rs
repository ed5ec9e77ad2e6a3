//! React's read of its nftables sets, at 10,000 and 50,000 active sources:
//! over nftables netlink (what the node does, `failover::react::read`)
//! beside `nft list table inet anygate` (what it ran before: a process that
//! formats every element, before any parsing).
//!
//! Needs root: it runs itself inside a network namespace it creates (and
//! removes), fills the real react table (`host::net::net_desired`) with N
//! sources in each of the data, payload and inner sets, and times both.
//!
//! ```sh
//! cargo bench -p anygate-node --bench react_read -- --sizes 10000,50000 [--json FILE]
//! ```

use anygate_node::failover::react;
use anygate_node::host::net::{net_desired, NFT_TABLE};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const INNER: &str = "ANYGATE_REACT_BENCH_NS";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sizes: Vec<usize> = args
        .iter()
        .position(|a| a == "--sizes")
        .and_then(|i| args.get(i + 1))
        .map(|s| {
            s.split(',')
                .map(|x| x.parse().expect("--sizes N,N"))
                .collect()
        })
        .unwrap_or_else(|| vec![10_000, 50_000]);
    if std::env::var(INNER).is_err() {
        std::process::exit(outer(&args));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let json = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1));
    let mut rows = vec![];
    println!("| active sources | netlink read p50 / max | `nft list table` p50 / max | ratio |");
    println!("|---|---|---|---|");
    for n in sizes {
        fill(n);
        let netlink = time(20, || {
            let seen = rt.block_on(react::read(NFT_TABLE)).expect("netlink read");
            assert_eq!(
                (seen.data.len(), seen.load.len(), seen.inner.len()),
                (n, n, n),
                "the read must see every source"
            );
        });
        let nft = time(5, || {
            let out = Command::new("nft")
                .args(["list", "table", "inet", NFT_TABLE])
                .output()
                .expect("nft");
            assert!(out.status.success() && out.stdout.len() > n * 10);
        });
        println!(
            "| {n} | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.0}× |",
            ms(netlink.0),
            ms(netlink.1),
            ms(nft.0),
            ms(nft.1),
            nft.0.as_secs_f64() / netlink.0.as_secs_f64()
        );
        rows.push(serde_json::json!({
            "sources": n,
            "netlink_p50_ms": ms(netlink.0), "netlink_max_ms": ms(netlink.1),
            "nft_p50_ms": ms(nft.0), "nft_max_ms": ms(nft.1),
        }));
    }
    if let Some(path) = json {
        let doc = serde_json::json!({ "rows": rows });
        std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap()).expect("write --json");
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// (median, max) of `runs` timings of `f`.
fn time(runs: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut v: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    (v[runs / 2], v[runs - 1])
}

/// The react table as the node writes it, with `n` sources in each set
/// (a long element timeout, so nothing expires while we read).
fn fill(n: usize) {
    let inv = anygate_node::model::Inventory::default();
    let mut script = net_desired(&inv, "wgbench").nft;
    let addr = |i: usize| format!("10.{}.{}.{}", 1 + i / 65_536, (i / 256) % 256, i % 256);
    for (set, port) in [
        (react::SET_DATA4, true),
        (react::SET_LOAD4, true),
        (react::SET_IN4, false),
    ] {
        for chunk in (0..n).collect::<Vec<_>>().chunks(5_000) {
            let elems: Vec<String> = chunk
                .iter()
                .map(|i| match port {
                    true => format!("{} . {} timeout 1h", addr(*i), 1024 + i % 60_000),
                    false => format!("{} timeout 1h", addr(*i)),
                })
                .collect();
            script.push_str(&format!(
                "add element inet {NFT_TABLE} {set} {{ {} }}\n",
                elems.join(", ")
            ));
        }
    }
    let mut c = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft");
    c.stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .expect("write script");
    assert!(c.wait().expect("nft").success(), "nft -f failed");
}

/// Run this binary again inside a fresh namespace; remove it afterwards.
fn outer(args: &[String]) -> i32 {
    let ns = format!("agreact{}", std::process::id());
    let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
    if !ok(Command::new("ip").args(["netns", "add", &ns])) {
        eprintln!("cannot create network namespace {ns} (run as root)");
        return 1;
    }
    let exe = std::env::current_exe().expect("current exe");
    let status = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(exe)
        .args(args)
        .env(INNER, "1")
        .status();
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    match status {
        Ok(s) if s.success() => 0,
        _ => 1,
    }
}
