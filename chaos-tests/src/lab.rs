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
use crate::router::next_hops;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const ANYCAST: &str = "198.51.100.1";
pub const SERVICE: &str = "172.16.0.10";
/// A second service the lab's clients may not reach until a policy allows it.
pub const SERVICE_B: &str = "172.16.0.11";
/// The group of the lab's clients, and its policy (service A only).
pub const GROUP: &str = "staff";
pub const POLICY: &str = "staff-service";
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
    /// Failover assists on (react, flush-loser, kick).
    #[serde(default = "yes")]
    pub assists: bool,
}

fn yes() -> bool {
    true
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

    /// The recorded PID of `what` (anygate, gobgpd, wireguard-go) in
    /// gateway k's namespace.
    pub fn pid(&self, k: u32, what: &str) -> Option<u32> {
        let ns = format!("{}-g{k}", self.prefix);
        self.namespaces
            .iter()
            .find(|n| n.name == ns)
            .and_then(|n| n.pids.get(what).copied())
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
    // Appended: a restarted gateway's earlier life stays readable.
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
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
    addr(&svc, &format!("{SERVICE_B}/32"), "lo")?;
    out[1].addresses.push(SERVICE.into());
    out[1].addresses.push(SERVICE_B.into());
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
        route(&g, &format!("{SERVICE_B}/32"), &int)?;
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

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

pub fn keypair() -> (String, String) {
    let s = x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng);
    (
        b64(&s.to_bytes()),
        b64(x25519_dalek::PublicKey::from(&s).as_bytes()),
    )
}

/// A binary built beside this one (from a test: beside `deps/`).
pub fn bin(name: &str) -> anyhow::Result<String> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir.join(name).display().to_string())
}

/// anygatectl, run in the router namespace against every gateway.
pub fn ctl(st: &State, args: &[&str]) -> anyhow::Result<String> {
    let ctl = bin("anygatectl")?;
    let pki = Path::new(&st.dir).join("pki");
    let (ca, cert, key) = (
        pki.join("ca.pem").display().to_string(),
        pki.join("admin.pem").display().to_string(),
        pki.join("admin.key").display().to_string(),
    );
    let mut v = vec![
        "ip",
        "netns",
        "exec",
        &st.ctl_namespace,
        &ctl,
        "--endpoint",
        &st.ctl_endpoints,
        "--ca",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
    ];
    v.extend_from_slice(args);
    run(&v)
}

pub fn in_ns(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    run(&v)
}

/// What a lab is made of.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Gateways in the topology (and the router's configuration).
    pub gateways: u32,
    /// How many of them are started and form the cluster (the others can
    /// join later: the add-gateway drill).
    pub start: u32,
    pub clients: u32,
    /// The failover assists (react, flush-loser, kick); off = stock
    /// WireGuard behaviour, for baselines.
    pub assists: bool,
}

/// The lab whose state is in `dir`, if any of its processes runs.
pub fn running(dir: &Path) -> Option<State> {
    let st = State::load(dir).ok()?;
    st.namespaces
        .iter()
        .flat_map(|n| n.pids.values())
        .any(|p| alive(*p))
        .then_some(st)
}

/// Create a lab: network, router, gateways, cluster, clients; returns once
/// every gateway is announced and every client reaches the service.
/// `say` gets a headline per step, `show` the tools' output.
pub fn create(
    dir: &Path,
    prefix: &str,
    opts: Options,
    say: &dyn Fn(&str),
    show: &dyn Fn(&str),
) -> anyhow::Result<State> {
    let Options {
        gateways,
        start,
        clients,
        assists,
    } = opts;
    if let Some(st) = running(dir) {
        anyhow::bail!(
            "a lab is already running (prefix {}, state in {}); use `deploy/lab status` or `deploy/lab down`",
            st.prefix,
            dir.display()
        );
    }
    let existing = run(&["ip", "netns", "list"])?;
    if existing
        .lines()
        .any(|l| l.starts_with(&format!("{prefix}-")))
    {
        anyhow::bail!(
            "namespaces {prefix}-* already exist (a lab started with another --dir?); remove them with `anygate-lab --dir DIR down` or `ip netns del`"
        );
    }
    if let Ok(old) = State::load(dir) {
        teardown(&old);
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    // The lab runs as production does: its own CA, mutual TLS everywhere.
    let pki = dir.join("pki");
    run(&[
        &bin("anygatectl")?,
        "pki",
        "init",
        "--dir",
        &pki.display().to_string(),
    ])?;
    let mut st = State {
        prefix: prefix.into(),
        dir: dir.display().to_string(),
        service_address: SERVICE.into(),
        anycast: ANYCAST.into(),
        ctl_namespace: format!("{prefix}-router"),
        ctl_endpoints: (1..=start)
            .map(|k| format!("10.78.{k}.2:7400"))
            .collect::<Vec<_>>()
            .join(","),
        assists,
        ..Default::default()
    };
    say(&format!(
        "network: router (BIRD), {gateways} gateways, service, {clients} clients"
    ));
    st.namespaces = build_network(prefix, gateways, clients)?;
    st.save()?;
    start_router(&mut st, gateways)?;
    st.save()?;

    say("gateways: anygate + its gobgpd + its wireguard-go");
    let (private, public) = keypair();
    let key = dir.join("wg.key");
    std::fs::write(&key, &private)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    }
    for k in 1..=start {
        start_gateway(&mut st, k)?;
    }
    for g in &st.gateways {
        let (ns, ep) = (st.ctl_namespace.clone(), g.endpoint.replace(':', "/"));
        wait(
            &format!("gateway {} listening", g.id),
            Duration::from_secs(20),
            || in_ns(&ns, &["bash", "-c", &format!("exec 3<>/dev/tcp/{ep}")]).is_ok(),
        )?;
    }

    say("forming the cluster with anygatectl");
    show(ctl(&st, &["cluster", "init"])?.trim());
    for k in 2..=start {
        let id = k.to_string();
        let addr = format!("10.78.{k}.2:7400");
        show(
            ctl(
                &st,
                &["cluster", "add-learner", "--id", &id, "--addr", &addr],
            )?
            .trim(),
        );
        show(ctl(&st, &["cluster", "promote", "--id", &id])?.trim());
    }
    ctl(
        &st,
        &[
            "settings",
            "set",
            "--server-public-key",
            &public,
            "--anycast-v4",
            ANYCAST,
            "--client-routes",
            "172.16.0.0/16",
        ],
    )?;
    ctl(&st, &["pool", "add", "clients", "--cidr", POOL])?;
    // Least privilege: the clients' group reaches service A only (client
    // traffic is dropped unless a policy allows it).
    ctl(
        &st,
        &[
            "policy",
            "add",
            POLICY,
            "--group",
            GROUP,
            "--to",
            &format!("{SERVICE}/32"),
        ],
    )?;

    say("clients: peers added through anygatectl, wireguard-go to the anycast address");
    for j in 1..=clients {
        let ns = format!("{prefix}-c{j}");
        let (cpriv, cpub) = keypair();
        let out = ctl(
            &st,
            &[
                "--json",
                "peer",
                "add",
                "--user",
                &format!("user{j}"),
                "--device",
                "laptop",
                "--group",
                GROUP,
                "--public-key",
                &cpub,
            ],
        )?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let tunnel = v["allowed_ips"][0]
            .as_str()
            .or_else(|| v[0]["allowed_ips"][0].as_str())
            .ok_or_else(|| anyhow::anyhow!("no address in {out}"))?
            .to_string();
        let ifname = format!("{prefix}c{j}");
        let ckey = dir.join(format!("c{j}.key"));
        std::fs::write(&ckey, &cpriv)?;
        let pid = daemon(
            &ns,
            &["wireguard-go", "-f", &ifname],
            &dir.join(format!("c{j}.log")),
        )?;
        st.ns_mut(&ns).pids.insert("wireguard-go".into(), pid);
        let sock = format!("/var/run/wireguard/{ifname}.sock");
        wait("client wireguard-go", Duration::from_secs(5), || {
            Path::new(&sock).exists()
        })?;
        in_ns(
            &ns,
            &[
                "wg",
                "set",
                &ifname,
                "private-key",
                &ckey.display().to_string(),
                "peer",
                &public,
                "endpoint",
                &format!("{ANYCAST}:51820"),
                "allowed-ips",
                "100.64.0.0/16,172.16.0.0/16",
                "persistent-keepalive",
                "25",
            ],
        )?;
        in_ns(&ns, &["ip", "addr", "add", &tunnel, "dev", &ifname])?;
        in_ns(&ns, &["ip", "link", "set", &ifname, "up"])?;
        in_ns(
            &ns,
            &["ip", "route", "add", "172.16.0.0/16", "dev", &ifname],
        )?;
        st.ns_mut(&ns).addresses.push(tunnel.clone());
        st.clients.push(Client {
            name: format!("user{j}/laptop"),
            namespace: ns,
            wg_interface: ifname,
            tunnel_address: tunnel,
            public_key: cpub,
        });
        st.save()?;
    }

    say("waiting for every gateway to announce the anycast address");
    let router = st.router();
    wait(
        "router holds every gateway",
        Duration::from_secs(60),
        || next_hops(&router, ANYCAST).is_ok_and(|h| h.len() == start as usize),
    )?;
    record_children(&mut st)?;
    for c in &st.clients {
        let ns = c.namespace.clone();
        wait(
            &format!("{} reaches {SERVICE}", c.name),
            Duration::from_secs(20),
            || in_ns(&ns, &["ping", "-c1", "-W1", SERVICE]).is_ok(),
        )?;
    }
    Ok(st)
}

/// Start gateway k's node (it starts its own gobgpd and wireguard-go).
pub fn start_gateway(st: &mut State, k: u32) -> anyhow::Result<()> {
    let dir = PathBuf::from(&st.dir);
    let prefix = st.prefix.clone();
    let ns = format!("{prefix}-g{k}");
    let cfg = dir.join(format!("g{k}.toml"));
    let mut file = crate::netns::gateway_config(k);
    let a = Some(st.assists);
    (
        file.dataplane.react,
        file.dataplane.flush_loser,
        file.dataplane.kick,
    ) = (a, a, a);
    if let Some(b) = &mut file.bgp {
        b.leader_lease = Some(Duration::from_secs(3));
    }
    std::fs::write(&cfg, toml::to_string(&file)?)?;
    let ifname = format!("{prefix}g{k}");
    let log = dir.join(format!("g{k}.log"));
    let pki = dir.join("pki");
    let name = format!("gateway-{k}");
    if !pki.join(format!("{name}.pem")).exists() {
        run(&[
            &bin("anygatectl")?,
            "pki",
            "issue",
            "--dir",
            &pki.display().to_string(),
            "--role",
            "node",
            "--name",
            &name,
            "--san",
            &format!("10.78.{k}.2"),
        ])?;
    }
    let pem = |f: &str| pki.join(f).display().to_string();
    let pid = daemon(
        &ns,
        &[
            &bin("anygate")?,
            "--id",
            &k.to_string(),
            "--listen",
            &format!("10.78.{k}.2:7400"),
            "--data-dir",
            &dir.join(format!("g{k}")).display().to_string(),
            "--config",
            &cfg.display().to_string(),
            "--metrics-listen",
            "127.0.0.1:9400",
            "--dataplane-backend",
            "userspace",
            "--wireguard-go",
            "wireguard-go",
            "--wg-interface",
            &ifname,
            "--wg-private-key-file",
            &dir.join("wg.key").display().to_string(),
            "--log-level",
            "info,openraft=warn",
            "--tls-ca",
            &pem("ca.pem"),
            "--tls-cert",
            &pem(&format!("{name}.pem")),
            "--tls-key",
            &pem(&format!("{name}.key")),
        ],
        &log,
    )?;
    st.ns_mut(&ns).pids.insert("anygate".into(), pid);
    if !st.gateways.iter().any(|g| g.id == k as u64) {
        st.gateways.push(Gateway {
            id: k as u64,
            namespace: ns,
            anycast: ANYCAST.into(),
            uapi_socket: format!("/var/run/wireguard/{ifname}.sock"),
            wg_interface: ifname,
            endpoint: format!("10.78.{k}.2:7400"),
            log: log.display().to_string(),
        });
    }
    st.save()
}

/// Which gateway holds a client's session: the one whose device has a
/// handshake with it.
pub fn serving_gateway(st: &State, client_public: &str) -> Option<u32> {
    for g in &st.gateways {
        let dump = in_ns(
            &g.namespace,
            &["wg", "show", &g.wg_interface, "latest-handshakes"],
        )
        .ok()?;
        if dump
            .lines()
            .any(|l| l.starts_with(client_public) && !l.trim_end().ends_with("\t0"))
        {
            return Some(g.id as u32);
        }
    }
    None
}

pub fn print_router(router: &str) {
    println!(
        "router: {ANYCAST} via {}",
        next_hops(router, ANYCAST)
            .unwrap_or_default()
            .into_iter()
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// The gobgpd and wireguard-go the nodes started, by namespace.
pub fn record_children(st: &mut State) -> anyhow::Result<()> {
    for g in st.gateways.clone() {
        let pids = run(&["ip", "netns", "pids", &g.namespace])?;
        for p in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            let comm = comm.trim();
            if comm == "gobgpd" || comm == "wireguard-go" {
                st.ns_mut(&g.namespace).pids.insert(comm.into(), p);
            }
        }
    }
    st.save()
}
