//! Test harness: spawn nodes as processes, run anygatectl, wait on
//! conditions with deadlines (never bare sleeps), clean up on drop.

use anygate_core::config as file;
use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn node_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_anygate"))
}

/// anygatectl is built next to anygate by `cargo test --workspace`.
pub fn ctl_bin() -> PathBuf {
    let p = node_bin().with_file_name("anygatectl");
    assert!(
        p.exists(),
        "{} missing: run the tests with `cargo test --workspace`",
        p.display()
    );
    p
}

/// One cluster CA for the whole test binary (every test's nodes and
/// anygatectl use mutual TLS, as production does): an admin certificate
/// for anygatectl, node certificates issued as nodes start.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: anygate_proto::pki::Pem,
}

static PKI: std::sync::OnceLock<Pki> = std::sync::OnceLock::new();

pub fn pki() -> &'static Pki {
    PKI.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("anygate-test-pki")
            .tempdir()
            .unwrap()
            .keep();
        let ca = anygate_proto::pki::new_ca("test CA", Duration::from_secs(86_400)).unwrap();
        std::fs::write(dir.join("ca.pem"), &ca.cert).unwrap();
        let p = Pki { dir, ca };
        p.issue("admin", anygate_proto::tls::Role::Admin, vec![], None);
        p
    })
}

impl Pki {
    /// Writes DIR/NAME.pem and DIR/NAME.key; `not_after` in the past makes
    /// an expired certificate.
    pub fn issue(
        &self,
        name: &str,
        role: anygate_proto::tls::Role,
        sans: Vec<String>,
        not_after: Option<std::time::SystemTime>,
    ) -> (PathBuf, PathBuf) {
        let mut req =
            anygate_proto::pki::Request::new(name, role, sans, Duration::from_secs(86_400));
        if let Some(t) = not_after {
            req.not_before = t - Duration::from_secs(3600);
            req.not_after = t;
        }
        let pem = anygate_proto::pki::issue(&self.ca, &req).unwrap();
        let (c, k) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, pem.cert).unwrap();
        std::fs::write(&k, pem.key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        (c, k)
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

/// A gRPC channel to `addr` holding the admin certificate.
pub fn admin_channel(addr: &str) -> tonic::transport::Channel {
    client_channel(addr, "admin")
}

/// A gRPC channel to `addr` holding the certificate DIR/NAME.pem of the
/// test PKI (see [`Pki::issue`]).
pub fn client_channel(addr: &str, name: &str) -> tonic::transport::Channel {
    let p = pki();
    let tls = anygate_proto::tls::Tls::load(anygate_proto::tls::Paths {
        ca: p.ca_path(),
        cert: p.dir.join(format!("{name}.pem")),
        key: p.dir.join(format!("{name}.key")),
    })
    .unwrap();
    anygate_proto::tls::channel(addr, Some(tls), Duration::from_secs(2)).unwrap()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Check `f` every 100 ms for `period`; panic with `what` the first time
/// it is false: the check for "stays so" (a bare sleep and one look at the
/// end would miss a flap in between).
pub fn holds_for(what: &str, period: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        assert!(f(), "{what}: stopped holding after {:?}", start.elapsed());
        if start.elapsed() >= period {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Poll `f` until it returns Some, or panic with `what` after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

pub struct Node {
    pub id: u64,
    pub addr: String,
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub extra: Vec<String>,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
}

impl Node {
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node {} already running", self.id);
        let log =
            std::fs::File::create(self.dir.with_extension(format!("log{}", self.id))).unwrap();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(node_bin());
                c
            }
            None => Command::new(node_bin()),
        };
        if !self.extra.iter().any(|a| a == "--dataplane-backend") {
            cmd.args(["--dataplane-backend", "none"]);
        }
        if !self
            .extra
            .iter()
            .any(|a| a == "--insecure-dev" || a == "--tls-cert")
        {
            let (host, port) = self.addr.rsplit_once(':').unwrap();
            let (cert, key) = pki().issue(
                &format!("node-{}-{}-{port}", self.id, host.replace(':', "_")),
                anygate_proto::tls::Role::Node,
                vec![host.trim_matches(['[', ']']).to_string()],
                None,
            );
            cmd.arg("--tls-ca")
                .arg(pki().ca_path())
                .arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key);
        }
        let child = cmd
            .args([
                "--id",
                &self.id.to_string(),
                "--listen",
                &self.addr,
                "--data-dir",
            ])
            .arg(&self.dir)
            .args(["--log-level", "info,openraft=warn"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn anygate");
        self.child = Some(child);
        let addr = self.addr.clone();
        let ns = self.netns.clone();
        eventually(
            &format!("node {} listening on {addr}", self.id),
            Duration::from_secs(20),
            || match &ns {
                None => std::net::TcpStream::connect(&addr).ok().map(|_| ()),
                Some(ns) => Command::new("ip")
                    .args(["netns", "exec", ns, "bash", "-c"])
                    .arg(format!("exec 3<>/dev/tcp/{}", addr.replace(':', "/")))
                    .stderr(Stdio::null())
                    .status()
                    .ok()?
                    .success()
                    .then_some(()),
            },
        );
    }

    /// kill -9: no shutdown path runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the process to exit; asserts a clean exit.
    pub fn terminate(&mut self) {
        let mut child = self.child.take().expect("node is running");
        sh(&["kill", "-TERM", &child.id().to_string()]);
        let st = child.wait().unwrap();
        assert!(
            st.success(),
            "node {} exited cleanly after SIGTERM: {st}",
            self.id
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension(format!("log{}", self.id)))
            .unwrap_or_default()
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    /// UAPI sockets of the nodes' wireguard-go (a killed one leaves its
    /// socket behind), removed on drop.
    pub sockets: Vec<PathBuf>,
    _tmp: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
        if std::thread::panicking() {
            for n in &self.nodes {
                let log = n.log();
                // A panic's message matters more than its backtrace.
                if let Some(at) = log.find("panicked at") {
                    let start = log[..at].rfind('\n').map_or(0, |i| i + 1);
                    let lines: Vec<&str> = log[start..].lines().take(4).collect();
                    eprintln!("---- node {} panicked ----\n{}", n.id, lines.join("\n"));
                }
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("---- node {} log (last {} lines) ----", n.id, tail.len());
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

impl Cluster {
    /// `n` nodes started but not yet joined.
    pub fn start(n: u64, extra: &[&str]) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = Cluster {
            nodes: vec![],
            sockets: vec![],
            _tmp: tmp,
        };
        for id in 1..=n {
            c.add_node(id, extra);
        }
        c
    }

    pub fn add_node(&mut self, id: u64, extra: &[&str]) -> &mut Node {
        let addr = format!("127.0.0.1:{}", free_port());
        self.add_node_at(id, addr, None, extra)
    }

    /// A cluster with no nodes yet (see `add_node_at`).
    pub fn empty() -> Cluster {
        Cluster {
            nodes: vec![],
            sockets: vec![],
            _tmp: tempfile::tempdir().unwrap(),
        }
    }

    pub fn dir(&self) -> &Path {
        self._tmp.path()
    }

    pub fn add_node_at(
        &mut self,
        id: u64,
        addr: String,
        netns: Option<String>,
        extra: &[&str],
    ) -> &mut Node {
        let dir = self._tmp.path().join(format!("n{id}"));
        let mut node = Node {
            id,
            addr,
            dir,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            netns,
        };
        node.start();
        self.nodes.push(node);
        self.nodes.last_mut().unwrap()
    }

    pub fn node(&mut self, id: u64) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("node exists")
    }

    pub fn addr(&self, id: u64) -> String {
        self.nodes.iter().find(|n| n.id == id).unwrap().addr.clone()
    }

    pub fn all_endpoints(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// init on node 1, add and promote the rest, all through anygatectl.
    pub fn form(&mut self) {
        let first = self.addr(1);
        ctl_ok(&first, &["cluster", "init"]);
        let others: Vec<(u64, String)> = self
            .nodes
            .iter()
            .skip(1)
            .map(|n| (n.id, n.addr.clone()))
            .collect();
        for (id, addr) in &others {
            ctl_ok(
                &first,
                &[
                    "cluster",
                    "add-learner",
                    "--id",
                    &id.to_string(),
                    "--addr",
                    addr,
                ],
            );
            ctl_ok(&first, &["cluster", "promote", "--id", &id.to_string()]);
        }
        let want = self.nodes.len();
        eventually(
            "every node a voter with a leader",
            Duration::from_secs(20),
            || {
                let s = status(&first)?;
                let nodes = s["nodes"].as_array()?;
                (nodes.len() == want
                    && nodes
                        .iter()
                        .all(|n| n["voter"] == Value::Bool(true) && n["role"] != "unreachable")
                    && s["leader_id"].as_u64()? > 0)
                    .then_some(())
            },
        );
    }

    pub fn leader(&self) -> u64 {
        let eps = self.live_endpoints();
        eventually("a leader", Duration::from_secs(20), || {
            let s = status(&eps)?;
            let l = s["leader_id"].as_u64()?;
            (l > 0 && self.nodes.iter().any(|n| n.id == l && n.child.is_some())).then_some(l)
        })
    }

    pub fn live_endpoints(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }
}

thread_local! {
    /// Namespace the helpers run anygatectl in (tests whose nodes live in
    /// network namespaces set it; each test runs on one thread).
    static CTL_NETNS: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

pub fn set_ctl_netns(ns: Option<&str>) {
    CTL_NETNS.with(|c| *c.borrow_mut() = ns.map(str::to_string));
}

pub fn ctl(endpoint: &str, args: &[&str]) -> Output {
    let ns = CTL_NETNS.with(|c| c.borrow().clone());
    ctl_in(ns.as_deref(), endpoint, args)
}

/// anygatectl, inside a network namespace when `ns` is given.
pub fn ctl_in(ns: Option<&str>, endpoint: &str, args: &[&str]) -> Output {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(ctl_bin());
            c
        }
        None => Command::new(ctl_bin()),
    };
    if !args
        .iter()
        .any(|a| *a == "--cert" || *a == "--insecure-dev")
    {
        let p = pki();
        cmd.env("ANYGATE_CA", p.ca_path())
            .env("ANYGATE_CERT", p.dir.join("admin.pem"))
            .env("ANYGATE_KEY", p.dir.join("admin.key"));
    }
    cmd.args([
        "--endpoint",
        endpoint,
        "--timeout",
        "15s",
        "--operator",
        "tester",
    ])
    .args(args)
    .stdin(Stdio::null())
    .output()
    .expect("run anygatectl")
}

pub fn ctl_ok(endpoint: &str, args: &[&str]) -> String {
    let out = ctl(endpoint, args);
    assert!(
        out.status.success(),
        "anygatectl {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn ctl_json(endpoint: &str, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let s = ctl_ok(endpoint, &a);
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("anygatectl {args:?}: bad JSON ({e}): {s}"))
}

pub fn status(endpoint: &str) -> Option<Value> {
    let out = ctl(
        endpoint,
        &["--json", "--timeout", "2s", "cluster", "status"],
    );
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Public keys of all peers, read locally (stale) from one node.
pub fn peer_keys(endpoint: &str, stale: bool) -> Option<Vec<String>> {
    let mut args = vec!["--json", "--timeout", "3s", "peer", "list"];
    if stale {
        args.push("--stale");
    }
    let out = ctl(endpoint, &args);
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut keys: Vec<String> = v
        .as_array()?
        .iter()
        .map(|p| p["public_key"].as_str().unwrap_or_default().to_string())
        .collect();
    keys.sort();
    Some(keys)
}

pub fn random_key() -> String {
    use base64::Engine;
    let secret = x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng);
    base64::engine::general_purpose::STANDARD
        .encode(x25519_dalek::PublicKey::from(&secret).as_bytes())
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Run a command; panic with its name when it fails.
pub fn sh(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .stderr(Stdio::inherit())
        .status()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(st.success(), "{args:?} failed: {st}");
}

/// Run a command inside a network namespace and return its stdout.
pub fn in_ns(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip netns exec");
    assert!(
        out.status.success(),
        "{args:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A fresh WireGuard private key in `dir/wg.key` (mode 0600):
/// (path, public key, private key), both keys base64.
pub fn wg_keyfile(dir: &Path) -> (PathBuf, String, String) {
    use base64::Engine;
    use std::os::unix::fs::PermissionsExt;
    let b64 = base64::engine::general_purpose::STANDARD;
    let s = x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng);
    let public = b64.encode(x25519_dalek::PublicKey::from(&s).as_bytes());
    let private = b64.encode(s.to_bytes());
    let path = dir.join("wg.key");
    std::fs::write(&path, &private).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (path, public, private)
}

/// PIDs of the processes named `comm` running in network namespace `ns`.
pub fn pids_in_ns(ns: &str, comm: &str) -> Vec<u32> {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .expect("ip netns pids");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|p: &u32| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}

/// How a gateway node in a test topology (namespace `ns`, address
/// 10.78.K.2, BGP neighbor 10.78.K.1 in AS 65000) is started.
pub struct Gateway<'a> {
    pub k: u32,
    pub ns: String,
    /// `[bgp]` keys; AS 65010, the router id 10.78.K.2 and the first
    /// neighbor (10.78.K.1, AS 65000) are filled in; `neighbors` adds to it.
    pub bgp: file::Bgp,
    /// `[dataplane]` keys.
    pub dataplane: file::Dataplane,
    pub ifname: String,
    pub key: &'a Path,
    /// The node starts and supervises its wireguard-go.
    pub supervise: bool,
    pub extra: &'a [&'a str],
}

impl Cluster {
    /// Start a gateway node: AS 65010, userspace dataplane, its `[bgp]`
    /// section written to the cluster dir.
    pub fn add_gateway(&mut self, g: Gateway) -> &mut Node {
        let k = g.k;
        // The topology's standard [bgp] section, under the test's keys.
        let mut cfg = anygate_chaos::netns::gateway_config(k);
        let std = cfg.bgp.take().expect("a [bgp] section");
        let mut bgp = g.bgp;
        bgp.asn = bgp.asn.or(std.asn);
        bgp.router_id = bgp.router_id.or(std.router_id);
        bgp.neighbors.splice(0..0, std.neighbors);
        cfg.bgp = Some(bgp);
        cfg.dataplane = g.dataplane;
        let cfg = write_file(
            self.dir(),
            &format!("n{k}.toml"),
            &toml::to_string(&cfg).expect("config serialises"),
        );
        let mut args: Vec<String> = [
            "--config",
            cfg.to_str().unwrap(),
            "--dataplane-backend",
            "userspace",
            "--wg-interface",
            &g.ifname,
            "--wg-private-key-file",
            g.key.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if g.supervise {
            args.extend(["--wireguard-go".into(), "wireguard-go".into()]);
        }
        args.extend(g.extra.iter().map(|s| s.to_string()));
        self.sockets
            .push(format!("/var/run/wireguard/{}.sock", g.ifname).into());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.add_node_at(k as u64, format!("10.78.{k}.2:7400"), Some(g.ns), &refs)
    }
}

/// `settings set` of the gateways' public key and anycast address(es).
pub fn set_identity_and_anycast(ep: &str, public: &str, extra: &[&str]) {
    let mut args = vec!["settings", "set", "--server-public-key", public];
    args.extend_from_slice(extra);
    ctl_ok(ep, &args);
}

/// A node's `bgp` object from `cluster status --json`.
pub fn bgp_status(ep: &str, id: u64) -> Option<Value> {
    let s = status(ep)?;
    s["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["id"] == id)
        .map(|n| n["bgp"].clone())
}

/// A wireguard-go client in a namespace: address 10.100.0.2, one peer (the
/// gateways) at the anycast endpoint, 10.100.0.1 routed through it.
pub struct WgClient {
    child: Option<Child>,
    ns: String,
    ifname: String,
}

impl WgClient {
    /// wireguard-go in `ns`: address 10.100.0.2, the gateways' key at the
    /// anycast endpoint; one ping starts the handshake.
    pub fn start(
        ns: &str,
        ifname: &str,
        key: &std::path::Path,
        gw_public: &str,
        anycast: &str,
    ) -> WgClient {
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{ifname}.sock"));
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "wireguard-go", "-f", ifname])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("client wireguard-go");
        let c = WgClient {
            child: Some(child),
            ns: ns.into(),
            ifname: ifname.into(),
        };
        eventually("client device", Duration::from_secs(5), || {
            Command::new("ip")
                .args(["-n", ns, "link", "show", ifname])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .ok()?
                .success()
                .then_some(())
        });
        in_ns(
            ns,
            &[
                "wg",
                "set",
                ifname,
                "private-key",
                key.to_str().unwrap(),
                "peer",
                gw_public,
                "endpoint",
                &format!("{anycast}:51820"),
                "allowed-ips",
                "10.100.0.1/32",
            ],
        );
        in_ns(ns, &["ip", "addr", "add", "10.100.0.2/32", "dev", ifname]);
        in_ns(ns, &["ip", "link", "set", ifname, "up"]);
        in_ns(ns, &["ip", "route", "add", "10.100.0.1/32", "dev", ifname]);
        c
    }

    pub fn ping(&self) -> bool {
        self.ping_within("1")
    }

    /// One ping to the gateways' tunnel address, answered within `secs`.
    pub fn ping_within(&self, secs: &str) -> bool {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "ping",
                "-c1",
                "-W",
                secs,
                "-I",
                &self.ifname,
                "10.100.0.1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for WgClient {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.ifname));
    }
}

/// anygatectl presenting DIR/NAME.pem, trusting `ca`.
pub fn ctl_as(
    ep: &str,
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    let mut a = vec![
        "--ca",
        ca.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    a.extend_from_slice(args);
    ctl(ep, &a)
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
