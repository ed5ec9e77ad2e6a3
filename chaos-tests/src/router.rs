//! A real upstream router for the gateways: BIRD 2 in the topology's hub
//! namespace, one eBGP session per gateway (10.78.K.2), equal routes merged
//! into one multipath kernel route (ECMP, L4 hash), GRACEFUL_SHUTDOWN
//! (65535:0) depreferred as RFC 8326 asks. The hub's kernel route to the
//! anycast address is the ground truth of who receives clients.

use crate::netns::{run, Topology};
use crate::{spawn, Proc};
use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const ROUTER_AS: u32 = 65000;
pub const GATEWAY_AS: u32 = 65010;

pub struct Bird {
    pub ns: String,
    pub dir: PathBuf,
    _proc: Proc,
}

/// BIRD 2 config: the host routes inside `nets` (e.g. "198.51.100.0/24"
/// for the anycast address, a client pool for routed-mode host routes; IPv6
/// nets such as "2001:db8:100::/48" for the /128) accepted from the gateways
/// and exported to the kernel with merged paths. A gateway given by an IPv6
/// address gets an IPv6 session.
pub fn bird_conf(log: &Path, gateways: &[String], nets: &[&str]) -> String {
    let set = |v6: bool| {
        nets.iter()
            .filter(|n| n.contains(':') == v6)
            .map(|n| format!("{n}{{{l},{l}}}", l = if v6 { 128 } else { 32 }))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut conf = format!(
        r#"log "{log}" all;
timeformat log "%F %T.%3f";
router id 10.78.0.1;
protocol device {{ scan time 10; }}
"#,
        log = log.display()
    );
    for (v6, af) in [(false, "4"), (true, "6")] {
        let set = set(v6);
        if set.is_empty() {
            continue;
        }
        let ip = if v6 { "ipv6" } else { "ipv4" };
        conf.push_str(&format!(
            r#"protocol kernel kern{af} {{
  {ip} {{ import none; export filter {{ if net ~ [ {set} ] then accept; reject; }}; }};
  merge paths on limit 16;
  learn off; persist off;
}}
filter anycast_in{af} {{
  if ! (net ~ [ {set} ]) then reject;
  if (65535, 0) ~ bgp_community then bgp_local_pref = 0;
  accept;
}}
template bgp gateways{af} {{
  local as {ROUTER_AS};
  hold time 3; keepalive time 1;
  connect delay time 1; connect retry time 1; error wait time 1, 3;
  {ip} {{ import filter anycast_in{af}; export none; }};
}}
"#
        ));
    }
    for (k, addr) in gateways.iter().enumerate() {
        let af = if addr.contains(':') { "6" } else { "4" };
        conf.push_str(&format!(
            "protocol bgp g{} from gateways{af} {{ neighbor {addr} as {GATEWAY_AS}; }}\n",
            k + 1
        ));
    }
    conf
}

impl Bird {
    /// Start BIRD in the hub of `topo`, peering with every node namespace
    /// over IPv4.
    pub fn start(topo: &Topology, dir: &Path, nets: &[&str]) -> anyhow::Result<Bird> {
        let gws: Vec<String> = (1..=topo.n).map(|k| topo.addr(k)).collect();
        Bird::start_with(topo, dir, &gws, nets)
    }

    /// Start BIRD in the hub of `topo` with these gateway session addresses.
    pub fn start_with(
        topo: &Topology,
        dir: &Path,
        gws: &[String],
        nets: &[&str],
    ) -> anyhow::Result<Bird> {
        let ns = topo.hub();
        run(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-qw",
            "net.ipv4.fib_multipath_hash_policy=1",
        ])?;
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, bird_conf(&dir.join("bird.log"), gws, nets))?;
        let mut cmd = topo.exec(&ns, "bird");
        cmd.arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(dir.join("bird.ctl"));
        let proc = spawn(&mut cmd, &dir.join("bird.stderr"))?;
        Ok(Bird {
            ns,
            dir: dir.to_path_buf(),
            _proc: proc,
        })
    }

    /// Next hops of the kernel route to `addr`/32 (empty: no route; a
    /// failed query is an error, never "no route").
    pub fn next_hops(&self, addr: &str) -> anyhow::Result<BTreeSet<String>> {
        next_hops(&self.ns, addr)
    }

    /// Poll (every 5 ms) until the route to `addr` has exactly `want` as
    /// next hops; how long it took.
    pub fn wait_hops(
        &self,
        addr: &str,
        want: &BTreeSet<String>,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        loop {
            let have = self.next_hops(addr);
            if have.as_ref().ok() == Some(want) {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > timeout {
                anyhow::bail!(
                    "router next hops to {addr}: {have:?}, want {want:?} (waited {timeout:?})\nBIRD log:\n{}",
                    self.log_tail(15)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `birdc show route all ADDR/32`: attributes, communities, preference.
    pub fn show_route(&self, addr: &str) -> String {
        run(&[
            "birdc",
            "-s",
            &self.dir.join("bird.ctl").display().to_string(),
            "show",
            "route",
            "all",
            &format!("{addr}/32"),
        ])
        .unwrap_or_default()
    }

    pub fn log_tail(&self, n: usize) -> String {
        let s = std::fs::read_to_string(self.dir.join("bird.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn monitor(&self, addr: &str) -> anyhow::Result<RouteMonitor> {
        monitor(&self.ns, addr)
    }
}

/// Next hops of the kernel route to `addr`/32 (or /128) in namespace `ns`.
pub fn next_hops(ns: &str, addr: &str) -> anyhow::Result<BTreeSet<String>> {
    let (fam, len) = if addr.contains(':') {
        ("-6", 128)
    } else {
        ("-4", 32)
    };
    let text = run(&[
        "ip",
        fam,
        "-n",
        ns,
        "route",
        "show",
        &format!("{addr}/{len}"),
    ])?;
    let words: Vec<&str> = text.split_whitespace().collect();
    Ok(words
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_string())
        .collect())
}

/// Kernel route changes in `ns` as they happen (`ip monitor route`): each
/// event involving `addr` is sent with the instant it was read.
pub fn monitor(ns: &str, addr: &str) -> anyhow::Result<RouteMonitor> {
    let mut child = std::process::Command::new("ip")
        .args(["-n", ns, "monitor", "route"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let out = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    let needle = addr.to_string();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(l) = line else { break };
            if l.contains(&needle) && tx.send(Instant::now()).is_err() {
                break;
            }
        }
    });
    Ok(RouteMonitor {
        _proc: Proc(child),
        rx,
    })
}

pub struct RouteMonitor {
    _proc: Proc,
    pub rx: mpsc::Receiver<Instant>,
}

impl RouteMonitor {
    /// Forget events seen so far.
    pub fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }
}

/// The next-hop set for gateways `ks` of a topology.
pub fn hops(topo: &Topology, ks: &[u32]) -> BTreeSet<String> {
    ks.iter().map(|k| topo.addr(*k)).collect()
}
