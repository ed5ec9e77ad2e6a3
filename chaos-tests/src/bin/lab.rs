//! `anygate-lab`: the network-namespace lab (see `anygate_chaos::lab`).
//! `deploy/lab` installs what is missing, builds, and calls this.

use anygate_chaos::lab::{
    alive, build_network, daemon, start_router, teardown, wait, Client, Gateway, State, ANYCAST,
    POOL, SERVICE,
};
use anygate_chaos::netns::run;
use anygate_chaos::router::next_hops;
use base64::Engine;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser)]
#[command(about = "anygate lab: BIRD router, anycast gateways, WireGuard clients, in namespaces")]
struct Args {
    /// Where the lab keeps its state, data dirs and logs.
    #[arg(long, env = "ANYGATE_LAB_DIR", default_value = "/var/lib/anygate-lab")]
    dir: PathBuf,
    /// Namespace name prefix.
    #[arg(long, default_value = "agl")]
    prefix: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the lab and show traffic flowing.
    Up {
        #[arg(long, default_value_t = 3)]
        gateways: u32,
        #[arg(long, default_value_t = 3)]
        clients: u32,
    },
    /// Namespaces, roles, addresses, processes (JSON with --json).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Take gateway K down as an operator would: SIGTERM to its node (it
    /// withdraws first, then stops its gobgpd and wireguard-go).
    Stop { gateway: u32 },
    /// Bring gateway K back (its node restarts from its data dir).
    Start { gateway: u32 },
    /// Stop every process the lab started and remove its namespaces.
    Down,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn keypair() -> (String, String) {
    let s = x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng);
    (
        b64(&s.to_bytes()),
        b64(x25519_dalek::PublicKey::from(&s).as_bytes()),
    )
}

fn bin(name: &str) -> anyhow::Result<String> {
    Ok(std::env::current_exe()?
        .with_file_name(name)
        .display()
        .to_string())
}

/// anygatectl, run in the router namespace against every gateway.
fn ctl(st: &State, args: &[&str]) -> anyhow::Result<String> {
    let ctl = bin("anygatectl")?;
    let mut v = vec![
        "ip",
        "netns",
        "exec",
        &st.ctl_namespace,
        &ctl,
        "--endpoint",
        &st.ctl_endpoints,
    ];
    v.extend_from_slice(args);
    run(&v)
}

fn in_ns(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    run(&v)
}

fn say(s: &str) {
    println!("\n\x1b[1m== {s}\x1b[0m");
}

fn running(dir: &Path) -> Option<State> {
    let st = State::load(dir).ok()?;
    st.namespaces
        .iter()
        .flat_map(|n| n.pids.values())
        .any(|p| alive(*p))
        .then_some(st)
}

fn up(dir: &Path, prefix: &str, gateways: u32, clients: u32) -> anyhow::Result<()> {
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
    let mut st = State {
        prefix: prefix.into(),
        dir: dir.display().to_string(),
        service_address: SERVICE.into(),
        anycast: ANYCAST.into(),
        ctl_namespace: format!("{prefix}-router"),
        ctl_endpoints: (1..=gateways)
            .map(|k| format!("10.78.{k}.2:7400"))
            .collect::<Vec<_>>()
            .join(","),
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
    for k in 1..=gateways {
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
    println!("{}", ctl(&st, &["cluster", "init"])?.trim());
    for k in 2..=gateways {
        let id = k.to_string();
        let addr = format!("10.78.{k}.2:7400");
        println!(
            "{}",
            ctl(
                &st,
                &["cluster", "add-learner", "--id", &id, "--addr", &addr]
            )?
            .trim()
        );
        println!("{}", ctl(&st, &["cluster", "promote", "--id", &id])?.trim());
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
        || next_hops(&router, ANYCAST).len() == gateways as usize,
    )?;
    print_router(&router);
    record_children(&mut st)?;

    say(&format!(
        "traffic: every client pings the internal service {SERVICE} through the anycast tunnel"
    ));
    for c in &st.clients {
        let ns = c.namespace.clone();
        wait(
            &format!("{} reaches {SERVICE}", c.name),
            Duration::from_secs(20),
            || in_ns(&ns, &["ping", "-c1", "-W1", SERVICE]).is_ok(),
        )?;
        let out = in_ns(&ns, &["ping", "-c3", "-i0.2", "-W1", SERVICE])?;
        let summary = out.lines().rev().find(|l| l.contains("rtt")).unwrap_or("");
        println!(
            "{:<14} {} -> {SERVICE}: ok  {summary}",
            c.name, c.tunnel_address
        );
    }
    say("failover: a serving gateway crashes");
    show_failover(&mut st)?;
    say("cluster status");
    println!("{}", ctl(&st, &["cluster", "status"])?.trim_end());
    println!(
        "\nlab state: {}/state.json   (deploy/lab status [--json], deploy/lab down)",
        dir.display()
    );
    Ok(())
}

/// Start gateway k's node (it starts its own gobgpd and wireguard-go).
fn start_gateway(st: &mut State, k: u32) -> anyhow::Result<()> {
    let dir = PathBuf::from(&st.dir);
    let prefix = st.prefix.clone();
    let ns = format!("{prefix}-g{k}");
    let cfg = dir.join(format!("g{k}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[bgp]\nasn = 65010\nrouter-id = \"10.78.{k}.2\"\n[[bgp.neighbors]]\naddress = \"10.78.{k}.1\"\npeer-as = 65000\n"
        ),
    )?;
    let ifname = format!("{prefix}g{k}");
    let log = dir.join(format!("g{k}.log"));
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
fn serving_gateway(st: &State, client_public: &str) -> Option<u32> {
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

/// The failover shown by `up`: kill -9 the gateway serving client 1 (its
/// gobgpd and wireguard-go die with it), time the router and the client.
fn show_failover(st: &mut State) -> anyhow::Result<()> {
    let c = st.clients[0].clone();
    let Some(k) = serving_gateway(st, &c.public_key) else {
        anyhow::bail!("no gateway holds {}'s session", c.name);
    };
    let ns = format!("{}-g{k}", st.prefix);
    let pid = st
        .namespaces
        .iter()
        .find(|n| n.name == ns)
        .and_then(|n| n.pids.get("anygate").copied());
    let Some(pid) = pid else {
        anyhow::bail!("no anygate recorded in {ns}")
    };
    let router = st.router();
    let before = next_hops(&router, ANYCAST).len();
    println!("{} is served by gateway {k}; kill -9 of its anygate (its gobgpd and wireguard-go die with it)", c.name);
    let t0 = std::time::Instant::now();
    run(&["kill", "-KILL", &pid.to_string()])?;
    wait("router drops the gateway", Duration::from_secs(10), || {
        next_hops(&router, ANYCAST).len() == before - 1
    })?;
    let routed = t0.elapsed();
    println!(
        "router: gateway {k} withdrawn after {} ms; {ANYCAST} via {}",
        routed.as_millis(),
        next_hops(&router, ANYCAST)
            .into_iter()
            .collect::<Vec<_>>()
            .join(", ")
    );
    let cns = c.namespace.clone();
    wait(
        &format!("{} reaches {SERVICE} again", c.name),
        Duration::from_secs(60),
        || in_ns(&cns, &["ping", "-c1", "-W0.2", SERVICE]).is_ok(),
    )?;
    let outage = t0.elapsed();
    println!(
        "{}: traffic flows again after {:.1} s (stock WireGuard waits 15 s here: the survivor \
         that received the client's data without a session started the handshake itself)",
        c.name,
        outage.as_secs_f64()
    );
    println!("restarting gateway {k}");
    start_gateway(st, k)?;
    wait(
        "router holds every gateway again",
        Duration::from_secs(60),
        || next_hops(&router, ANYCAST).len() == before,
    )?;
    print_router(&router);
    record_children(st)
}

fn print_router(router: &str) {
    println!(
        "router: {ANYCAST} via {}",
        next_hops(router, ANYCAST)
            .into_iter()
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// The gobgpd and wireguard-go the nodes started, by namespace.
fn record_children(st: &mut State) -> anyhow::Result<()> {
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

fn main() {
    if let Err(e) = run_cmd(Args::parse()) {
        eprintln!("anygate-lab: {e:#}");
        std::process::exit(1);
    }
}

fn run_cmd(a: Args) -> anyhow::Result<()> {
    match a.cmd {
        Cmd::Up { gateways, clients } => {
            if let Err(e) = up(&a.dir, &a.prefix, gateways, clients) {
                eprintln!(
                    "lab up failed: {e:#}\nlogs in {}; `deploy/lab down` removes what was started",
                    a.dir.display()
                );
                std::process::exit(1);
            }
        }
        Cmd::Status { json } => {
            let Some(mut st) = running(&a.dir) else {
                anyhow::bail!("no lab is running (state: {})", a.dir.display());
            };
            let _ = record_children(&mut st);
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                for n in &st.namespaces {
                    let pids: Vec<String> = n
                        .pids
                        .iter()
                        .map(|(k, p)| format!("{k}:{p}{}", if alive(*p) { "" } else { "(dead)" }))
                        .collect();
                    println!(
                        "{:<12} {:<8} {:<48} {}",
                        n.name,
                        n.role,
                        n.addresses.join(" "),
                        pids.join(" ")
                    );
                }
                println!(
                    "\nrouter: {ANYCAST} via {:?}",
                    next_hops(&st.router(), ANYCAST)
                );
                println!(
                    "{}",
                    ctl(&st, &["cluster", "status"]).unwrap_or_else(|e| e.to_string())
                );
            }
        }
        Cmd::Stop { gateway } => {
            let Some(mut st) = running(&a.dir) else {
                anyhow::bail!("no lab is running (state: {})", a.dir.display());
            };
            let ns = format!("{}-g{gateway}", st.prefix);
            let pid = st
                .namespaces
                .iter()
                .find(|n| n.name == ns)
                .and_then(|n| n.pids.get("anygate").copied())
                .filter(|p| alive(*p))
                .ok_or_else(|| anyhow::anyhow!("gateway {gateway} is not running"))?;
            run(&["kill", "-TERM", &pid.to_string()])?;
            wait("the node to stop", Duration::from_secs(15), || !alive(pid))?;
            st.ns_mut(&ns).pids.clear();
            st.save()?;
            print_router(&st.router());
            println!("gateway {gateway} stopped");
        }
        Cmd::Start { gateway } => {
            let Some(mut st) = running(&a.dir) else {
                anyhow::bail!("no lab is running (state: {})", a.dir.display());
            };
            anyhow::ensure!(
                gateway >= 1 && gateway as usize <= st.gateways.len(),
                "the lab has gateways 1..={}",
                st.gateways.len()
            );
            let ns = format!("{}-g{gateway}", st.prefix);
            if let Some(p) = st
                .namespaces
                .iter()
                .find(|n| n.name == ns)
                .and_then(|n| n.pids.get("anygate").copied())
                .filter(|p| alive(*p))
            {
                anyhow::bail!("gateway {gateway} is already running (pid {p})");
            }
            start_gateway(&mut st, gateway)?;
            let (router, want) = (st.router(), format!("10.78.{gateway}.2"));
            wait(
                "the gateway to announce again",
                Duration::from_secs(60),
                || next_hops(&router, ANYCAST).contains(&want),
            )?;
            record_children(&mut st)?;
            print_router(&router);
            println!("gateway {gateway} started");
        }
        Cmd::Down => match State::load(&a.dir) {
            Ok(st) => {
                teardown(&st);
                let _ = std::fs::remove_dir_all(&a.dir);
                println!("lab removed");
            }
            Err(_) => println!("no lab state in {}", a.dir.display()),
        },
    }
    Ok(())
}
