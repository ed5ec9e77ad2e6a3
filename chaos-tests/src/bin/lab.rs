//! `anygate-lab`: the network-namespace lab (see `anygate_chaos::lab`).
//! `deploy/lab` installs what is missing, builds, and calls this.

use anygate_chaos::drill;
use anygate_chaos::lab::{
    alive, create, ctl, in_ns, print_router, record_children, running, serving_gateway,
    start_gateway, teardown, wait, Options, State, ANYCAST, GROUP, SERVICE, SERVICE_B,
};
use anygate_chaos::netns::run;
use anygate_chaos::router::next_hops;
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
    /// Failover drills, each on a fresh lab of its own (prefix agd-, beside
    /// a running lab): clients pinging the service every 100 ms and a writer
    /// adding peers while one fault is injected and healed. NAME is a drill,
    /// `quick` (crash, silent, drain: the CI subset) or `all`. Prints a
    /// table, writes a JSON report, exits 1 when a bound is broken.
    Drill {
        /// crash, leader-crash, gobgpd, wireguard-go, silent, uplink, drain,
        /// rolling-restart, add-gateway; quick; all
        name: String,
        /// Lab sizes to run each drill with.
        #[arg(long, value_delimiter = ',', default_value = "2,3")]
        gateways: Vec<u32>,
        /// Run with the failover assists off (stock WireGuard recovery).
        #[arg(long, conflicts_with = "with_baseline")]
        baseline: bool,
        /// Run each drill twice: with the assists, and as the baseline.
        #[arg(long)]
        with_baseline: bool,
        /// Replay a run: the seed picks the target client and the writer's keys.
        #[arg(long)]
        seed: Option<u64>,
        /// Where the JSON report goes [default: <drill dir>/report.json].
        #[arg(long)]
        report: Option<PathBuf>,
    },
}

fn say(s: &str) {
    println!("\n\x1b[1m== {s}\x1b[0m");
}

fn up(dir: &Path, prefix: &str, gateways: u32, clients: u32) -> anyhow::Result<()> {
    let mut st = create(
        dir,
        prefix,
        Options {
            gateways,
            start: gateways,
            clients,
            assists: true,
        },
        &say,
        &|s| println!("{s}"),
    )?;
    print_router(&st.router());
    say(&format!(
        "traffic: every client pings the internal service {SERVICE} through the anycast tunnel"
    ));
    for c in &st.clients {
        let out = in_ns(&c.namespace, &["ping", "-c3", "-i0.2", "-W1", SERVICE])?;
        let summary = out.lines().rev().find(|l| l.contains("rtt")).unwrap_or("");
        println!(
            "{:<14} {} -> {SERVICE}: ok  {summary}",
            c.name, c.tunnel_address
        );
    }
    say(&format!(
        "least privilege: group {GROUP} may reach {SERVICE} only (mutual TLS, CA in {}/pki)",
        dir.display()
    ));
    println!("{}", ctl(&st, &["policy", "list"])?.trim_end());
    let c = &st.clients[0];
    let blocked = in_ns(&c.namespace, &["ping", "-c1", "-W1", SERVICE_B]).is_err();
    println!(
        "{:<14} {} -> {SERVICE_B}: {}",
        c.name,
        c.tunnel_address,
        if blocked {
            "dropped (no policy allows it)"
        } else {
            "REACHABLE (policy not enforced!)"
        }
    );
    if !blocked {
        anyhow::bail!("{SERVICE_B} is reachable without a policy");
    }
    say("failover: a serving gateway crashes");
    show_failover(&mut st)?;
    say("cluster status");
    println!("{}", ctl(&st, &["cluster", "status"])?.trim_end());
    println!(
        "\nlab state: {}/state.json   (deploy/lab status [--json], deploy/lab drill NAME, deploy/lab down)",
        dir.display()
    );
    Ok(())
}

/// The failover shown by `up`: kill -9 the gateway serving client 1 (its
/// gobgpd and wireguard-go die with it), time the router and the client.
fn show_failover(st: &mut State) -> anyhow::Result<()> {
    let c = st.clients[0].clone();
    let Some(k) = serving_gateway(st, &c.public_key) else {
        anyhow::bail!("no gateway holds {}'s session", c.name);
    };
    let Some(pid) = st.pid(k, "anygate") else {
        anyhow::bail!("no anygate recorded for gateway {k}")
    };
    let router = st.router();
    let before = next_hops(&router, ANYCAST)?.len();
    println!("{} is served by gateway {k}; kill -9 of its anygate (its gobgpd and wireguard-go die with it)", c.name);
    let t0 = std::time::Instant::now();
    run(&["kill", "-KILL", &pid.to_string()])?;
    wait("router drops the gateway", Duration::from_secs(10), || {
        next_hops(&router, ANYCAST).is_ok_and(|h| h.len() == before - 1)
    })?;
    let routed = t0.elapsed();
    println!(
        "router: gateway {k} withdrawn after {} ms; {ANYCAST} via {}",
        routed.as_millis(),
        next_hops(&router, ANYCAST)?
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
        || next_hops(&router, ANYCAST).is_ok_and(|h| h.len() == before),
    )?;
    print_router(&router);
    record_children(st)
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
                    next_hops(&st.router(), ANYCAST)?
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
                .pid(gateway, "anygate")
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
            if let Some(p) = st.pid(gateway, "anygate").filter(|p| alive(*p)) {
                anyhow::bail!("gateway {gateway} is already running (pid {p})");
            }
            start_gateway(&mut st, gateway)?;
            let (router, want) = (st.router(), format!("10.78.{gateway}.2"));
            wait(
                "the gateway to announce again",
                Duration::from_secs(60),
                || next_hops(&router, ANYCAST).is_ok_and(|h| h.contains(&want)),
            )?;
            record_children(&mut st)?;
            print_router(&router);
            println!("gateway {gateway} started");
        }
        Cmd::Drill {
            name,
            gateways,
            baseline,
            with_baseline,
            seed,
            report,
        } => {
            let names: Vec<&str> = match name.as_str() {
                "all" => drill::DRILLS.to_vec(),
                "quick" => drill::QUICK.to_vec(),
                n if drill::DRILLS.contains(&n) => vec![n],
                n => anyhow::bail!(
                    "unknown drill {n:?}: one of {}, quick, all",
                    drill::DRILLS.join(", ")
                ),
            };
            let seed = seed.unwrap_or_else(drill::random_seed);
            println!("seed {seed} (replay with --seed {seed})");
            let modes: Vec<bool> = if with_baseline {
                vec![true, false]
            } else {
                vec![!baseline]
            };
            let dir = drill::default_dir();
            std::fs::create_dir_all(&dir)?;
            let mut reports = vec![];
            for n in &names {
                for g in &gateways {
                    for assists in &modes {
                        let r = drill::run_drill(&dir, n, *g, *assists, seed, &|s| say(s));
                        print!("{}", drill::table(std::slice::from_ref(&r)));
                        reports.push(r);
                    }
                }
            }
            let path = report.unwrap_or_else(|| dir.join("report.json"));
            std::fs::write(&path, serde_json::to_vec_pretty(&reports)?)?;
            say("drills");
            print!("{}", drill::table(&reports));
            println!("seed {seed}; JSON report: {}", path.display());
            if reports.iter().any(|r| !r.pass) {
                std::process::exit(1);
            }
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
