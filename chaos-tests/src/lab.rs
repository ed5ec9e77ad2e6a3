//! The network-namespace lab: a BIRD 2 router doing ECMP, N gateways each
//! running `anygate` (with its own supervised gobgpd and wireguard-go), an
//! internal service behind the gateways, and M WireGuard clients behind the
//! router — everything in namespaces named `{prefix}-…`, nothing in the root
//! namespace. The daemons outlive the command that starts them; their PIDs
//! and every address are kept in `{dir}/state.json` (what `status --json`
//! prints), so `down` stops exactly what `up` started.
//!
//! ```text
//!  client J ({p}-cJ)          router ({p}-router, BIRD)         gateway K ({p}-gK)            service ({p}-svc)
//!  eth0 10.80.J.2/24 ──────── c-J 10.80.J.1/24                   up0  10.78.K.2/24   int0 172.16.K.2/24 ── s-K 172.16.K.1/24
//!  wg   100.64.0.x            g-K 10.78.K.1/24 ───────────────── lo   198.51.100.1 (anycast)              lo  172.16.0.10 (service)
//!                             198.51.100.1 = ECMP via gateways   wg   100.64.0.1/16
//! ```

use crate::netns::run;
use crate::router::bird_conf;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const ANYCAST: &str = "198.51.100.1";
pub const SERVICE: &str = "172.16.0.10";
pub const POOL: &str = "100.64.0.0/16";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Namespace {
    pub name: String,
    /// router | gateway | client | service
    pub role: String,
    pub addresses: Vec<String>,
    /// Process name -> PID, for the processes the lab started in it.
    pub pids: BTreeMap<String, u32>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Gateway {
    pub id: u64,
    pub namespace: String,
    pub anycast: String,
    pub wg_interface: String,
    pub uapi_socket: String,
    /// anygatectl endpoint (reachable from the router namespace).
    pub endpoint: String,
    pub log: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Client {
    pub name: String,
    pub namespace: String,
    pub wg_interface: String,
    pub tunnel_address: String,
    pub public_key: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub prefix: String,
    pub dir: String,
    pub namespaces: Vec<Namespace>,
    pub gateways: Vec<Gateway>,
    pub clients: Vec<Client>,
    pub service_address: String,
    pub anycast: String,
    /// Run anygatectl with this namespace and these endpoints.
    pub ctl_namespace: String,
    pub ctl_endpoints: String,
}

impl State {
    pub fn load(dir: &Path) -> anyhow::Result<State> {
        Ok(serde_json::from_slice(&std::fs::read(
            dir.join("state.json"),
        )?)?)
    }

    pub fn save(&self) -> anyhow::Result<()> {
        let p = Path::new(&self.dir).join("state.json");
        std::fs::write(&p, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }

    pub fn ns_mut(&mut self, name: &str) -> &mut Namespace {
        self.namespaces
            .iter_mut()
            .find(|n| n.name == name)
            .expect("namespace in state")
    }

    pub fn router(&self) -> String {
        format!("{}-router", self.prefix)
    }
}

/// A process whose PID is alive.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

/// Start a daemon in `ns` that outlives this process; its output goes to
/// `log`. `ip netns exec` execs without forking, so the PID is the daemon's.
pub fn daemon(ns: &str, args: &[&str], log: &Path) -> anyhow::Result<u32> {
    let f = std::fs::File::create(log)?;
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()?;
    Ok(child.id())
}

/// Wait until `f` holds, polling every 20 ms.
pub fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while !f() {
        anyhow::ensure!(t0.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    let mut v = vec!["ip"];
    v.extend_from_slice(args);
    run(&v)
}

/// A namespace with loopback up.
fn netns(name: &str) -> anyhow::Result<()> {
    ip(&["netns", "add", name])?;
    ip(&["-n", name, "link", "set", "lo", "up"])?;
    Ok(())
}

fn sysctl(ns: &str, kv: &str) -> anyhow::Result<()> {
    run(&["ip", "netns", "exec", ns, "sysctl", "-qw", kv])?;
    Ok(())
}

fn addr(ns: &str, cidr: &str, dev: &str) -> anyhow::Result<()> {
    ip(&["-n", ns, "addr", "add", cidr, "dev", dev])?;
    ip(&["-n", ns, "link", "set", dev, "up"])?;
    Ok(())
}

fn route(ns: &str, dst: &str, via: &str) -> anyhow::Result<()> {
    ip(&["-n", ns, "route", "add", dst, "via", via])?;
    Ok(())
}

/// A veth pair created straight into both namespaces, each end addressed
/// and up: (namespace, interface, address/len) for each side.
fn link(a: (&str, &str, &str), b: (&str, &str, &str)) -> anyhow::Result<()> {
    ip(&[
        "link", "add", a.1, "netns", a.0, "type", "veth", "peer", "name", b.1, "netns", b.0,
    ])?;
    addr(a.0, a.2, a.1)?;
    addr(b.0, b.2, b.1)
}

/// The namespaces and links, no processes yet.
pub fn build_network(prefix: &str, gateways: u32, clients: u32) -> anyhow::Result<Vec<Namespace>> {
    let router = format!("{prefix}-router");
    let svc = format!("{prefix}-svc");
    let mut out = vec![];
    for (name, role) in [(router.clone(), "router"), (svc.clone(), "service")] {
        netns(&name)?;
        out.push(Namespace {
            name,
            role: role.into(),
            ..Default::default()
        });
    }
    sysctl(&router, "net.ipv4.ip_forward=1")?;
    sysctl(&router, "net.ipv4.fib_multipath_hash_policy=1")?;
    addr(&svc, &format!("{SERVICE}/32"), "lo")?;
    out[1].addresses.push(SERVICE.into());
    for k in 1..=gateways {
        let g = format!("{prefix}-g{k}");
        let (up, int) = (format!("10.78.{k}.1"), format!("172.16.{k}.1"));
        netns(&g)?;
        sysctl(&g, "net.ipv4.ip_forward=1")?;
        link(
            (&g, "up0", &format!("10.78.{k}.2/24")),
            (&router, &format!("g-{k}"), &format!("{up}/24")),
        )?;
        route(&g, "default", &up)?;
        link(
            (&g, "int0", &format!("172.16.{k}.2/24")),
            (&svc, &format!("s-{k}"), &format!("{int}/24")),
        )?;
        route(&g, &format!("{SERVICE}/32"), &int)?;
        out[0].addresses.push(format!("{up}/24"));
        out[1].addresses.push(format!("{int}/24"));
        out.push(Namespace {
            name: g,
            role: "gateway".into(),
            addresses: vec![
                format!("10.78.{k}.2/24"),
                format!("172.16.{k}.2/24"),
                format!("{ANYCAST}/32"),
            ],
            ..Default::default()
        });
    }
    for j in 1..=clients {
        let c = format!("{prefix}-c{j}");
        netns(&c)?;
        link(
            (&c, "eth0", &format!("10.80.{j}.2/24")),
            (&router, &format!("c-{j}"), &format!("10.80.{j}.1/24")),
        )?;
        route(&c, "default", &format!("10.80.{j}.1"))?;
        out[0].addresses.push(format!("10.80.{j}.1/24"));
        out.push(Namespace {
            name: c,
            role: "client".into(),
            addresses: vec![format!("10.80.{j}.2/24")],
            ..Default::default()
        });
    }
    Ok(out)
}

/// Start BIRD in the router namespace, peering with every gateway.
pub fn start_router(state: &mut State, gateways: u32) -> anyhow::Result<()> {
    let dir = PathBuf::from(&state.dir);
    let gws: Vec<String> = (1..=gateways).map(|k| format!("10.78.{k}.2")).collect();
    std::fs::write(
        dir.join("bird.conf"),
        bird_conf(&dir.join("bird.log"), &gws, &["198.51.100.0/24"]),
    )?;
    let router = state.router();
    let conf = dir.join("bird.conf").display().to_string();
    let ctl = dir.join("bird.ctl").display().to_string();
    let pid = daemon(
        &router,
        &["bird", "-f", "-c", &conf, "-s", &ctl],
        &dir.join("bird.stderr"),
    )?;
    state.ns_mut(&router).pids.insert("bird".into(), pid);
    Ok(())
}

/// Remove every namespace with the prefix and stop every recorded process.
pub fn teardown(state: &State) {
    for ns in &state.namespaces {
        for pid in ns.pids.values() {
            if alive(*pid) {
                let _ = run(&["kill", "-TERM", &pid.to_string()]);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for ns in &state.namespaces {
        for pid in ns.pids.values() {
            while alive(*pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive(*pid) {
                let _ = run(&["kill", "-KILL", &pid.to_string()]);
            }
        }
    }
    for ns in &state.namespaces {
        let _ = run(&["ip", "netns", "del", &ns.name]);
    }
    for g in &state.gateways {
        let _ = std::fs::remove_file(&g.uapi_socket);
    }
    for c in &state.clients {
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", c.wg_interface));
    }
}
