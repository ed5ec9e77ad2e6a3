//! `anygate-bgp-bench`: time from a health change on a gateway to the
//! upstream router's kernel route changing.
//!
//! Builds a hub namespace running BIRD 2 (ECMP) and three gateway
//! namespaces, each running `anygate` with its own supervised gobgpd
//! (nodes 1 and 2 also supervise their wireguard-go; node 3 uses one the
//! bench starts, so its device can die and stay dead). Then, from inside
//! the hub (`measure`), for each kind of health change, repeatedly:
//!
//! - drain: `Drain` RPC sent -> the router deprefers the node
//!   (GRACEFUL_SHUTDOWN re-announcement); undrain -> the node is back;
//! - device death: kill -9 of node 3's wireguard-go -> withdrawn; a new
//!   wireguard-go answering -> re-announced (includes reprogramming it);
//! - node crash: kill -9 of anygate (its gobgpd dies with it) -> withdrawn;
//! - SIGTERM: the signal -> withdrawn (withdraw-first shutdown).
//!
//! The route change is timed by `ip monitor route` in the hub (the first
//! kernel route event for the anycast address after the change), confirmed
//! by the route then having the expected next hops.

use anygate_chaos::netns::{run, Topology};
use anygate_chaos::router::{monitor, next_hops, Bird};
use anygate_chaos::{channel, form_cluster, spawn, summary, Proc};
use anygate_proto::v1::cluster_service_client::ClusterServiceClient;
use anygate_proto::v1::pool_service_client::PoolServiceClient;
use anygate_proto::v1::settings_service_client::SettingsServiceClient;
use anygate_proto::v1::*;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const ANYCAST: &str = "198.51.100.1";

#[derive(Parser)]
#[command(about = "anygate: health change on a gateway -> the router's kernel route")]
struct Args {
    #[command(subcommand)]
    cmd: Option<Sub>,
    /// Drain/undrain and device-death rounds.
    #[arg(long, default_value_t = 20)]
    rounds: u32,
    /// Crash and SIGTERM rounds (each restarts a node and waits for BGP).
    #[arg(long, default_value_t = 10)]
    restarts: u32,
    /// The nodes' dataplane observe-interval (bounds device-death detection).
    #[arg(long, default_value = "1s")]
    observe_interval: String,
    /// Data directories and logs.
    #[arg(long, default_value = "/var/tmp/anygate-bgp-bench")]
    work_dir: PathBuf,
    /// Also write the results here as JSON (what `deploy/bench` collects).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Sub {
    /// (internal) Run the nodes and the measurement from inside the hub.
    Measure {
        #[arg(long)]
        hub: String,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        rounds: u32,
        #[arg(long)]
        restarts: u32,
        #[arg(long)]
        observe_interval: String,
        #[arg(long)]
        work_dir: PathBuf,
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Sub::Measure {
        hub,
        prefix,
        rounds,
        restarts,
        observe_interval,
        work_dir,
        json,
    }) = args.cmd
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return rt.block_on(measure(
            Ctx {
                hub,
                prefix,
                observe_interval,
                dir: work_dir,
                nodes: vec![],
                wg3: None,
            },
            rounds,
            restarts,
            json,
        ));
    }
    let _ = std::fs::remove_dir_all(&args.work_dir);
    std::fs::create_dir_all(&args.work_dir)?;
    let prefix = format!("agbb-{}", std::process::id());
    let topo = Topology::create(&prefix, 3)?;
    let _bird = Bird::start(&topo, &args.work_dir, &["198.51.100.0/24"])?;
    let st = topo
        .exec(&topo.hub(), &std::env::current_exe()?.display().to_string())
        .args([
            "measure",
            "--hub",
            &topo.hub(),
            "--prefix",
            &prefix,
            "--rounds",
            &args.rounds.to_string(),
            "--restarts",
            &args.restarts.to_string(),
            "--observe-interval",
            &args.observe_interval,
            "--work-dir",
        ])
        .arg(&args.work_dir)
        .args(
            args.json
                .iter()
                .flat_map(|j| [std::ffi::OsStr::new("--json"), j.as_os_str()]),
        )
        .status()?;
    anyhow::ensure!(
        st.success(),
        "measurement failed: {st} (logs in {})",
        args.work_dir.display()
    );
    Ok(())
}

struct Ctx {
    hub: String,
    prefix: String,
    observe_interval: String,
    dir: PathBuf,
    nodes: Vec<Option<Proc>>,
    wg3: Option<Proc>,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // Stop the nodes (their wireguard-go go with them), then remove the
        // UAPI sockets a killed wireguard-go leaves behind.
        self.nodes.clear();
        self.wg3 = None;
        for k in 1..=3 {
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.ifname(k)));
        }
    }
}

impl Ctx {
    fn ns(&self, k: u32) -> String {
        format!("{}-n{k}", self.prefix)
    }
    fn ifname(&self, k: u32) -> String {
        format!("agbb{}", k)
    }
    fn addr(k: u32) -> String {
        format!("10.78.{k}.2")
    }
    fn hops(ks: &[u32]) -> BTreeSet<String> {
        ks.iter().map(|k| Ctx::addr(*k)).collect()
    }

    fn start_node(&mut self, k: u32) -> anyhow::Result<()> {
        let cfg = self.dir.join(format!("n{k}.toml"));
        std::fs::write(
            &cfg,
            toml::to_string(&anygate_chaos::netns::gateway_config(k))?,
        )?;
        let mut cmd = std::process::Command::new("ip");
        let anygate = std::env::current_exe()?.with_file_name("anygate");
        cmd.args(["netns", "exec", &self.ns(k)])
            .arg(anygate)
            .args(["--id", &k.to_string()])
            .args(["--listen", &format!("{}:7400", Ctx::addr(k)), "--data-dir"])
            .arg(self.dir.join(format!("n{k}")))
            .arg("--config")
            .arg(&cfg)
            .args([
                "--dataplane-backend",
                "userspace",
                "--wg-interface",
                &self.ifname(k),
            ])
            .arg("--wg-private-key-file")
            .arg(self.dir.join("wg.key"))
            .args(["--observe-interval", &self.observe_interval])
            .args(["--log-level", "info,openraft=warn"])
            // Measures BGP reaction, not the API: plaintext keeps it comparable.
            .arg("--insecure-dev");
        if k != 3 {
            cmd.args(["--wireguard-go", "wireguard-go"]);
        }
        let p = spawn(&mut cmd, &self.dir.join(format!("n{k}.log")))?;
        self.nodes[k as usize - 1] = Some(p);
        Ok(())
    }

    fn start_wg3(&mut self) -> anyhow::Result<()> {
        let mut cmd = std::process::Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.ns(3),
            "wireguard-go",
            "-f",
            &self.ifname(3),
        ]);
        self.wg3 = Some(spawn(&mut cmd, &self.dir.join("wg3.log"))?);
        let deadline = Instant::now() + Duration::from_secs(5);
        while run(&[
            "ip",
            "netns",
            "exec",
            &self.ns(3),
            "wg",
            "show",
            &self.ifname(3),
        ])
        .is_err()
        {
            anyhow::ensure!(Instant::now() < deadline, "wireguard-go did not come up");
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    fn pid(&self, k: u32) -> u32 {
        self.nodes[k as usize - 1].as_ref().expect("running").0.id()
    }
}

/// Wait until the router's route to the anycast address has `want` as next
/// hops; the time from `t0` to the first route event after `t0`.
fn route_change(
    hub: &str,
    mon: &anygate_chaos::router::RouteMonitor,
    t0: Instant,
    want: &BTreeSet<String>,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let mut first: Option<Instant> = None;
    loop {
        while let Ok(t) = mon.rx.try_recv() {
            if t >= t0 && first.is_none() {
                first = Some(t);
            }
        }
        if next_hops(hub, ANYCAST).as_ref().ok() == Some(want) {
            // Events are read a moment after they happen; take any that
            // arrived meanwhile.
            std::thread::sleep(Duration::from_millis(2));
            while let Ok(t) = mon.rx.try_recv() {
                if t >= t0 && first.is_none() {
                    first = Some(t);
                }
            }
            let t1 = first.unwrap_or_else(Instant::now);
            return Ok(t1 - t0);
        }
        anyhow::ensure!(
            t0.elapsed() < timeout,
            "router next hops {:?}, want {want:?} after {timeout:?}",
            next_hops(hub, ANYCAST)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

async fn node_info(k: u32) -> anyhow::Result<NodeStatus> {
    Ok(
        ClusterServiceClient::new(channel(&format!("{}:7400", Ctx::addr(k))))
            .node_info(NodeInfoRequest {})
            .await?
            .into_inner(),
    )
}

async fn wait_state(k: u32, state: anygate_proto::v1::BgpState) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = node_info(k).await {
            if s.bgp.as_ref().is_some_and(|b| b.state() == state) {
                return Ok(());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "node {k} not {state:?} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Prints one table row and returns it for the JSON file.
fn row(name: &str, h: &Histogram<u64>) -> serde_json::Value {
    let (p50, p99, max) = summary(h);
    println!("| {name} | {} | {p50:.1} | {p99:.1} | {max:.1} |", h.len());
    serde_json::json!({"change": name, "samples": h.len(), "p50_ms": p50, "p99_ms": p99, "max_ms": max})
}

async fn measure(
    mut c: Ctx,
    rounds: u32,
    restarts: u32,
    json: Option<PathBuf>,
) -> anyhow::Result<()> {
    // Shared WireGuard key (0600).
    {
        use base64::Engine;
        use std::os::unix::fs::PermissionsExt;
        let b64 = base64::engine::general_purpose::STANDARD;
        let s = x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng);
        let p = c.dir.join("wg.key");
        std::fs::write(&p, b64.encode(s.to_bytes()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
        std::fs::write(
            c.dir.join("wg.pub"),
            b64.encode(x25519_dalek::PublicKey::from(&s).as_bytes()),
        )?;
    }
    let public = std::fs::read_to_string(c.dir.join("wg.pub"))?;
    c.nodes = vec![None, None, None];
    c.start_wg3()?;
    for k in 1..=3 {
        c.start_node(k)?;
    }
    let endpoints: Vec<String> = (1..=3).map(|k| format!("{}:7400", Ctx::addr(k))).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for k in 1..=3 {
        while node_info(k).await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "node {k} did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    form_cluster(&endpoints).await?;
    let ch = channel(&endpoints[0]);
    SettingsServiceClient::new(ch.clone())
        .set_settings(SetSettingsRequest {
            patch: Some(SettingsPatch {
                server_public_key: Some(public),
                anycast_v4: Some(ANYCAST.into()),
                ..Default::default()
            }),
        })
        .await?;
    PoolServiceClient::new(ch.clone())
        .add_pool(AddPoolRequest {
            pool: Some(Pool {
                name: "bench".into(),
                cidrs: vec!["100.64.0.0/10".into()],
                ..Default::default()
            }),
        })
        .await?;
    let all = Ctx::hops(&[1, 2, 3]);
    let settle = Duration::from_secs(30);
    let mon = monitor(&c.hub, ANYCAST)?;
    route_change(&c.hub, &mon, Instant::now(), &all, Duration::from_secs(60))?;
    eprintln!("3 gateways announced; measuring");

    let mut drain = Histogram::<u64>::new(3)?;
    let mut undrain = Histogram::<u64>::new(3)?;
    let mut dev_down = Histogram::<u64>::new(3)?;
    let mut dev_up = Histogram::<u64>::new(3)?;
    let mut crash = Histogram::<u64>::new(3)?;
    let mut term = Histogram::<u64>::new(3)?;
    let us = |d: Duration| d.as_micros() as u64;
    // A random pause before each change, so that it does not land at a fixed
    // phase of the node's timers (liveness checks, retries).
    // Returns the instant the change is made from.
    let begin = || {
        use rand::Rng;
        std::thread::sleep(Duration::from_millis(rand::thread_rng().gen_range(0..250)));
        mon.drain();
        Instant::now()
    };
    let mut cl = ClusterServiceClient::new(ch.clone());
    for _ in 0..rounds {
        let t0 = begin();
        cl.drain(DrainRequest {
            id: 2,
            drained: true,
        })
        .await?;
        drain.record(us(route_change(
            &c.hub,
            &mon,
            t0,
            &Ctx::hops(&[1, 3]),
            settle,
        )?))?;
        wait_state(2, anygate_proto::v1::BgpState::Withdrawn).await?;
        let t0 = begin();
        cl.drain(DrainRequest {
            id: 2,
            drained: false,
        })
        .await?;
        undrain.record(us(route_change(&c.hub, &mon, t0, &all, settle)?))?;
    }
    eprintln!("drain/undrain done");
    for _ in 0..rounds {
        let t0 = begin();
        c.wg3 = None; // kill -9 and reap
        dev_down.record(us(route_change(
            &c.hub,
            &mon,
            t0,
            &Ctx::hops(&[1, 2]),
            settle,
        )?))?;
        mon.drain();
        c.start_wg3()?;
        let t0 = Instant::now();
        dev_up.record(us(route_change(&c.hub, &mon, t0, &all, settle)?))?;
    }
    eprintln!("device death done");
    for _ in 0..restarts {
        let t0 = begin();
        c.nodes[1] = None; // kill -9 of node 2; its gobgpd dies with it
        crash.record(us(route_change(
            &c.hub,
            &mon,
            t0,
            &Ctx::hops(&[1, 3]),
            settle,
        )?))?;
        c.start_node(2)?;
        route_change(&c.hub, &mon, Instant::now(), &all, Duration::from_secs(60))?;

        let pid = c.pid(1);
        let t0 = begin();
        run(&["kill", "-TERM", &pid.to_string()])?;
        term.record(us(route_change(
            &c.hub,
            &mon,
            t0,
            &Ctx::hops(&[2, 3]),
            settle,
        )?))?;
        if let Some(mut p) = c.nodes[0].take() {
            let st = p.0.wait()?;
            anyhow::ensure!(st.success(), "node 1 exited with {st} after SIGTERM");
        }
        c.start_node(1)?;
        route_change(&c.hub, &mon, Instant::now(), &all, Duration::from_secs(60))?;
    }
    eprintln!("crash/SIGTERM done");
    println!("\nanygate-bgp-bench: health change -> router kernel route (BIRD 2, 3 gateways, observe-interval {})\n", c.observe_interval);
    println!("| change | samples | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    let rows = vec![
        row(
            "drain requested -> router deprefers (GRACEFUL_SHUTDOWN)",
            &drain,
        ),
        row("undrain requested -> router uses the node again", &undrain),
        row("wireguard-go killed -> withdrawn", &dev_down),
        row(
            "wireguard-go back -> re-announced (incl. reprogramming)",
            &dev_up,
        ),
        row(
            "kill -9 of the node (gobgpd dies with it) -> withdrawn",
            &crash,
        ),
        row("SIGTERM -> withdrawn (withdraw-first shutdown)", &term),
    ];
    if let Some(path) = json {
        let doc = serde_json::json!({"observe_interval": c.observe_interval, "rows": rows});
        anygate_chaos::write_json(&path, &doc)?;
    }
    Ok(())
}
