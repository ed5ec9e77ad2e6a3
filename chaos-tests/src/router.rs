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

/// BIRD 2 config: the /32s inside `nets` (e.g. "198.51.100.0/24" for the
/// anycast address, a client pool for routed-mode host routes) accepted
/// from the gateways and exported to the kernel with merged paths.
pub fn bird_conf(log: &Path, gateways: &[String], nets: &[&str]) -> String {
    let set = nets
        .iter()
        .map(|n| format!("{n}{{32,32}}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut conf = format!(
        r#"log "{log}" all;
timeformat log "%F %T.%3f";
router id 10.78.0.1;
protocol device {{ scan time 10; }}
protocol kernel kern4 {{
  ipv4 {{ import none; export filter {{ if net ~ [ {set} ] then accept; reject; }}; }};
  merge paths on limit 16;
  learn off; persist off;
}}
filter anycast_in {{
  if ! (net ~ [ {set} ]) then reject;
  if (65535, 0) ~ bgp_community then bgp_local_pref = 0;
  accept;
}}
template bgp gateways {{
  local as {ROUTER_AS};
  hold time 3; keepalive time 1;
  connect delay time 1; connect retry time 1; error wait time 1, 3;
  ipv4 {{ import filter anycast_in; export none; }};
}}
"#,
        log = log.display()
    );
    for (k, addr) in gateways.iter().enumerate() {
        conf.push_str(&format!(
            "protocol bgp g{} from gateways {{ neighbor {addr} as {GATEWAY_AS}; }}\n",
            k + 1
        ));
    }
    conf
}

impl Bird {
    /// Start BIRD in the hub of `topo`, peering with every node namespace.
    pub fn start(topo: &Topology, dir: &Path, nets: &[&str]) -> anyhow::Result<Bird> {
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
        let gws: Vec<String> = (1..=topo.n).map(|k| topo.addr(k)).collect();
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, bird_conf(&dir.join("bird.log"), &gws, nets))?;
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

    /// Next hops of the kernel route to `addr`/32 (empty: no route).
    pub fn next_hops(&self, addr: &str) -> BTreeSet<String> {
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
            if &have == want {
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

/// Next hops of the kernel route to `addr`/32 in namespace `ns`.
pub fn next_hops(ns: &str, addr: &str) -> BTreeSet<String> {
    let text = run(&["ip", "-n", ns, "route", "show", &format!("{addr}/32")]).unwrap_or_default();
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_string())
        .collect()
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
