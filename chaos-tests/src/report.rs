//! BENCHMARKS.md's generated part, from the JSON files `deploy/bench`
//! collects (each benchmark's `--json`, the drills' report). Pure: the
//! files are read and parsed by the caller's `load`, everything else is a
//! function of them, so a missing field or file is an error, never a
//! blank cell.

use crate::drill::Report;
use serde::Deserialize;
use std::fmt::Write;
use std::path::Path;

pub const BEGIN: &str = "<!-- deploy/bench: begin -->";
pub const END: &str = "<!-- deploy/bench: end -->";

#[derive(Debug, Deserialize)]
pub struct Meta {
    pub commit: String,
    pub date: String,
    pub machine: String,
    pub minutes: f64,
}

#[derive(Debug, Deserialize)]
pub struct Writes {
    pub single: u64,
    pub total: u64,
    pub batch: u64,
    pub results: Vec<WriteRow>,
}

#[derive(Debug, Deserialize)]
pub struct WriteRow {
    pub system: String,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub peers_per_s: f64,
}

#[derive(Debug, Deserialize)]
pub struct Dataplane {
    pub backend: String,
    pub nodes: u32,
    pub probes: u64,
    pub rows: Vec<DataplaneRow>,
}

#[derive(Debug, Deserialize)]
pub struct DataplaneRow {
    pub size: u64,
    pub fill_ms: f64,
    pub probe_p50_ms: f64,
    pub probe_p99_ms: f64,
    pub probe_max_ms: f64,
    pub raft_applied_p50_ms: f64,
    pub raft_applied_p99_ms: f64,
    pub peak_rss_kib: Vec<u64>,
    pub setconf_ms: f64,
    pub syncconf_one_change_ms: f64,
}

#[derive(Debug, Deserialize)]
pub struct Bgp {
    pub observe_interval: String,
    pub rows: Vec<BgpRow>,
}

#[derive(Debug, Deserialize)]
pub struct BgpRow {
    pub change: String,
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Deserialize)]
pub struct ReactRead {
    pub rows: Vec<ReactRow>,
}

#[derive(Debug, Deserialize)]
pub struct ReactRow {
    pub sources: u64,
    pub netlink_p50_ms: f64,
    pub netlink_max_ms: f64,
    pub nft_p50_ms: f64,
    pub nft_max_ms: f64,
}

#[derive(Debug, Deserialize)]
pub struct PolicyCommit {
    pub rows: Vec<PolicyRow>,
}

#[derive(Debug, Deserialize)]
pub struct PolicyRow {
    pub peers: u64,
    pub rebuild_p50_ms: f64,
    pub rebuild_max_ms: f64,
    pub incremental_p50_ms: f64,
    pub incremental_max_ms: f64,
}

/// Everything one `deploy/bench` run produced.
#[derive(Debug)]
pub struct Results {
    pub meta: Meta,
    pub writes: Writes,
    pub dataplane: Dataplane,
    pub kernel: Dataplane,
    /// Three nodes inside the VM (slower Raft timers), when it was run.
    pub kernel3: Option<Dataplane>,
    pub bgp: Bgp,
    pub drills: Vec<Report>,
    pub react: ReactRead,
    pub policy: PolicyCommit,
}

fn read<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> anyhow::Result<T> {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("{}: {e} (run deploy/bench)", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub fn load(dir: &Path) -> anyhow::Result<Results> {
    Ok(Results {
        meta: read(dir, "meta.json")?,
        writes: read(dir, "writes.json")?,
        dataplane: read(dir, "dataplane.json")?,
        kernel: read(dir, "dataplane-kernel.json")?,
        kernel3: match dir.join("dataplane-kernel3.json").exists() {
            true => Some(read(dir, "dataplane-kernel3.json")?),
            false => None,
        },
        bgp: read(dir, "bgp.json")?,
        drills: read(dir, "drills.json")?,
        react: read(dir, "react_read.json")?,
        policy: read(dir, "policy_commit.json")?,
    })
}

fn met(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
}

fn thousands(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn writes(w: &Writes, s: &mut String) {
    let _ = writeln!(
        s,
        "### Inventory writes: three nodes against a three-member etcd, each at its leader\n\n\
         {} sequential one-peer writes, then {} peers in batches of {} \
         (`anygate-bench`, both fsync every append).\n\n\
         | system | single p50 (ms) | single p99 (ms) | max (ms) | batched (peers/s) |\n|---|---|---|---|---|",
        thousands(w.single as f64),
        thousands(w.total as f64),
        w.batch
    );
    for r in &w.results {
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.2} | {:.1} | {} |",
            r.system,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            thousands(r.peers_per_s)
        );
    }
    let g = w.results.iter().find(|r| r.system == "anygate");
    let e = w.results.iter().find(|r| r.system.starts_with("etcd"));
    if let Some(g) = g {
        let _ = writeln!(
            s,
            "\nTargets: single-write p99 ≤ 10 ms {} ({:.2} ms); batched ≥ 5,000 peers/s {} ({}).",
            met(g.p99_ms <= 10.0),
            g.p99_ms,
            met(g.peers_per_s >= 5000.0),
            thousands(g.peers_per_s)
        );
        if let Some(e) = e {
            let _ = writeln!(
                s,
                "Against etcd: p99 ≤ etcd's {} ({:.1}× etcd's), bulk ≥ etcd's {} ({:.2}× etcd's).",
                met(g.p99_ms <= e.p99_ms),
                g.p99_ms / e.p99_ms,
                met(g.peers_per_s >= e.peers_per_s),
                g.peers_per_s / e.peers_per_s
            );
        }
    }
}

fn dataplane(d: &Dataplane, title: &str, s: &mut String) {
    let n = d.nodes;
    let (devices, pushed, x) = match n {
        1 => (
            "the device".to_string(),
            "on one device of the same kind".to_string(),
            String::new(),
        ),
        _ => (
            format!("all {n} devices"),
            format!(
                "on {n} devices of the same kind (one per node), the whole config pushed to all of them at once, timed until the last one is done"
            ),
            format!(" × {n}"),
        ),
    };
    let _ = writeln!(
        s,
        "### {title}\n\n\
         Add → {devices}: from sending `AddPeers` (the Raft commit included) until every \
         node's device acknowledged it, {} probes. The `wg` columns are the scripted \
         alternative {pushed}.\n\n\
         | peers | fill → {devices} | add → {devices} p50 / p99 / max | Raft applied p50 / p99 | anygate RSS (peak) | wg setconf{x} (cold) | wg syncconf{x}, 1 change | syncconf ÷ anygate p50 |\n\
         |---|---|---|---|---|---|---|---|",
        d.probes
    );
    for r in &d.rows {
        let peak = r.peak_rss_kib.iter().copied().max().unwrap_or(0);
        let _ = writeln!(
            s,
            "| {} | {:.2} s | {:.1} / {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.0} MiB | {} ms | {} ms | {}× |",
            thousands(r.size as f64),
            r.fill_ms / 1000.0,
            r.probe_p50_ms,
            r.probe_p99_ms,
            r.probe_max_ms,
            r.raft_applied_p50_ms,
            r.raft_applied_p99_ms,
            peak as f64 / 1024.0,
            thousands(r.setconf_ms),
            thousands(r.syncconf_one_change_ms),
            thousands(r.syncconf_one_change_ms / r.probe_p50_ms.max(0.001))
        );
    }
    for r in d.rows.iter().filter(|r| r.size == 100_000) {
        let peak = r.peak_rss_kib.iter().copied().max().unwrap_or(0) as f64 / 1024.0;
        let _ = writeln!(
            s,
            "\nTarget: anygate RSS at 100,000 peers ≤ 300 MiB {} ({peak:.0} MiB).",
            met(peak <= 300.0)
        );
    }
    if d.backend == "userspace" {
        let worst = d.rows.iter().map(|r| r.probe_p99_ms).fold(0.0, f64::max);
        let _ = writeln!(
            s,
            "\nTarget: add → all devices p99 ≤ 250 ms {} (worst {:.1} ms).",
            met(worst <= 250.0),
            worst
        );
    }
}

fn bgp(b: &Bgp, s: &mut String) {
    let _ = writeln!(
        s,
        "### Health change → the upstream router's kernel route\n\n\
         BIRD 2 in a hub namespace, three gateways, observe-interval {} (`anygate-bgp-bench`).\n\n\
         | change | samples | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|",
        b.observe_interval
    );
    for r in &b.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} | {:.1} |",
            r.change, r.samples, r.p50_ms, r.p99_ms, r.max_ms
        );
    }
}

fn secs_or_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

/// The drill table, as in the sections below it.
pub fn drills(reports: &[Report], s: &mut String) {
    let _ = writeln!(
        s,
        "### Failover drills (`anygate-lab drill all --gateways 2,3`, assists on)\n\n\
         | drill | gw | router reacts | outage (worst client) / pings lost | failback / lost | writes acked, lost | react no-session / stalled / kick / flush | pass |\n\
         |---|---|---|---|---|---|---|---|"
    );
    for r in reports {
        let worst = |f: &dyn Fn(&crate::drill::ClientResult) -> Option<f64>| {
            r.clients
                .iter()
                .filter_map(f)
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
        };
        let outage = worst(&|c| Some(c.outage_ms));
        let failback = worst(&|c| c.failback_outage_ms);
        let lost: u64 = r.clients.iter().map(|c| c.lost).sum();
        let fb_lost: u64 = r.clients.iter().filter_map(|c| c.failback_lost).sum();
        let a = &r.assists_fired;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} / {} | {} | {}, {} | {} / {} / {} / {} | {} |",
            r.drill,
            r.gateways,
            r.router_ms.map_or("—".into(), |x| format!("{x:.0} ms")),
            outage.map_or("—".into(), secs_or_ms),
            lost,
            failback.map_or("—".into(), |f| format!("{} / {fb_lost}", secs_or_ms(f))),
            r.writes_acked,
            r.writes_lost,
            a.react_no_session,
            a.react_stalled,
            a.kick,
            a.flush_loser,
            if r.pass { "yes" } else { "**no**" }
        );
    }
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.pass)
        .map(|r| format!("{} ({} gw)", r.drill, r.gateways))
        .collect();
    let lost: usize = reports.iter().map(|r| r.writes_lost).sum();
    let _ = writeln!(
        s,
        "\n{} of {} drills passed every bound{}; acknowledged writes lost: {lost}.",
        reports.len() - failed.len(),
        reports.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" (**failed: {}**)", failed.join(", "))
        }
    );
}

fn react(r: &ReactRead, s: &mut String) {
    let _ = writeln!(
        s,
        "### React's read of its sets (`cargo bench -p anygate-node --bench react_read`)\n\n\
         | active sources | netlink read p50 / max | `nft list table` p50 / max | ratio |\n|---|---|---|---|"
    );
    for x in &r.rows {
        let _ = writeln!(
            s,
            "| {} | {:.1} / {:.1} ms | {} / {} ms | {:.0}× |",
            thousands(x.sources as f64),
            x.netlink_p50_ms,
            x.netlink_max_ms,
            thousands(x.nft_p50_ms),
            thousands(x.nft_max_ms),
            x.nft_p50_ms / x.netlink_p50_ms.max(0.001)
        );
    }
}

fn policy(p: &PolicyCommit, s: &mut String) {
    let _ = writeln!(
        s,
        "### Access-policy work per peer-touching commit (`cargo bench -p anygate-node --bench policy_commit`)\n\n\
         One peer added to a group a policy names: rebuilding the wanted table and comparing it \
         with the kernel's, beside keeping it current from the change feed (what the node does).\n\n\
         | peers in the group | rebuild + compare p50 / max | incremental p50 / max | ratio |\n|---|---|---|---|"
    );
    for x in &p.rows {
        let _ = writeln!(
            s,
            "| {} | {:.1} / {:.1} ms | {:.1} / {:.1} µs | {}× |",
            thousands(x.peers as f64),
            x.rebuild_p50_ms,
            x.rebuild_max_ms,
            x.incremental_p50_ms * 1000.0,
            x.incremental_max_ms * 1000.0,
            thousands(x.rebuild_p50_ms / x.incremental_p50_ms.max(1e-6))
        );
    }
}

/// The generated part, markers included.
pub fn render(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{BEGIN}\n<!-- Generated by anygate-bench-report from deploy/bench's JSON files; edit the generator, not this text. -->\n\n\
         Measured at **{}** on {} ({}), one `deploy/bench` run of {:.0} minutes after the build. \
         Everything on one machine, loopback and network namespaces only.\n",
        r.meta.commit, r.meta.date, r.meta.machine, r.meta.minutes
    );
    writes(&r.writes, &mut s);
    s.push('\n');
    dataplane(
        &r.dataplane,
        &format!(
            "Write → every gateway's device: wireguard-go, {} nodes on the same cores",
            r.dataplane.nodes
        ),
        &mut s,
    );
    s.push('\n');
    dataplane(
        &r.kernel,
        &format!(
            "Write → device: kernel WireGuard in the qemu VM (TCG emulation: compare within the table), {} node{}",
            r.kernel.nodes,
            if r.kernel.nodes == 1 { "" } else { "s" }
        ),
        &mut s,
    );
    if let Some(k3) = &r.kernel3 {
        s.push('\n');
        dataplane(
            k3,
            &format!(
                "Write → every device: kernel WireGuard, {} nodes inside one emulated VM (slower Raft timers)",
                k3.nodes
            ),
            &mut s,
        );
    }
    s.push('\n');
    bgp(&r.bgp, &mut s);
    s.push('\n');
    drills(&r.drills, &mut s);
    s.push('\n');
    react(&r.react, &mut s);
    s.push('\n');
    policy(&r.policy, &mut s);
    s.push_str(&format!("\n{END}"));
    s
}

/// `doc` with the text between the markers replaced by `generated`
/// (which carries its own markers). The markers must appear once each,
/// in order.
pub fn splice(doc: &str, generated: &str) -> anyhow::Result<String> {
    let (b, e) = (doc.matches(BEGIN).count(), doc.matches(END).count());
    anyhow::ensure!(
        b == 1 && e == 1,
        "BENCHMARKS.md must hold `{BEGIN}` and `{END}` once each (found {b} and {e})"
    );
    let start = doc.find(BEGIN).expect("counted");
    let end = doc.find(END).expect("counted") + END.len();
    anyhow::ensure!(start < end, "`{END}` comes before `{BEGIN}`");
    Ok(format!("{}{generated}{}", &doc[..start], &doc[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_only_between_the_markers() {
        let doc = format!("# B\nbefore\n{BEGIN}\nold\n{END}\nafter\n");
        let out = splice(&doc, &format!("{BEGIN}\nnew\n{END}")).unwrap();
        assert_eq!(out, format!("# B\nbefore\n{BEGIN}\nnew\n{END}\nafter\n"));
        assert!(splice("no markers", "x").is_err());
        assert!(splice(&format!("{END}{BEGIN}"), "x").is_err());
        assert!(splice(&format!("{BEGIN}{BEGIN}{END}"), "x").is_err());
    }

    #[test]
    fn targets_are_judged_from_the_numbers() {
        let w = |p99: f64, rate: f64| Writes {
            single: 2000,
            total: 50_000,
            batch: 1000,
            results: vec![
                WriteRow {
                    system: "anygate".into(),
                    p50_ms: 1.5,
                    p99_ms: p99,
                    max_ms: 20.0,
                    peers_per_s: rate,
                },
                WriteRow {
                    system: "etcd".into(),
                    p50_ms: 0.7,
                    p99_ms: 1.3,
                    max_ms: 5.0,
                    peers_per_s: 49_604.0,
                },
            ],
        };
        let mut s = String::new();
        writes(&w(4.4, 28_538.0), &mut s);
        assert!(s.contains("p99 ≤ 10 ms **met** (4.40 ms)"), "{s}");
        assert!(s.contains("p99 ≤ etcd's **not met** (3.4× etcd's)"), "{s}");
        assert!(
            s.contains("| anygate | 1.50 | 4.40 | 20.0 | 28,538 |"),
            "{s}"
        );
        let mut s = String::new();
        writes(&w(12.0, 60_000.0), &mut s);
        assert!(s.contains("p99 ≤ 10 ms **not met** (12.00 ms)"), "{s}");
        assert!(s.contains("bulk ≥ etcd's **met**"), "{s}");
    }

    #[test]
    fn a_missing_file_is_an_error_that_names_it() {
        let dir = std::env::temp_dir().join(format!("agreport{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = load(&dir).unwrap_err().to_string();
        assert!(e.contains("meta.json"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
