//! `anygate-dp-bench`: how fast replicated writes reach every gateway's
//! WireGuard device, against what a script-driven manager does.
//!
//! For each size N it builds a fresh topology (a hub namespace routing to
//! one namespace per node), starts `anygate` in each with the chosen backend
//! (wireguard-go supervised by the node, or kernel WireGuard in the VM),
//! forms the cluster and then, from the hub namespace (`measure`):
//! - programs N peers from empty (imports of 1,000) and times the last write
//!   until every node's device holds it;
//! - adds single peers one at a time and times from sending `AddPeers`
//!   (so the Raft commit is included) until every node reports its device
//!   applied that commit (p50/p99).
//!
//! The node's "applied" is its reconciler's acknowledgement from the device
//! (UAPI `errno=0` / netlink ACK); at the end every device is dumped with
//! `wg show` and must hold exactly the inventory's peer count.
//!
//! Beside it, like for like, on one scratch device of the same kind per
//! node (each in its own namespace), the config pushed to all of them at
//! once: `wg setconf` of the same N peers (cold) and `wg syncconf` of a
//! full config with one peer added (what a script does per change), each
//! timed until the last device is done.

use anygate_chaos::netns::{run, Topology};
use anygate_chaos::{channel, form_cluster, spawn, Proc};
use anygate_proto::v1::cluster_service_client::ClusterServiceClient;
use anygate_proto::v1::peer_service_client::PeerServiceClient;
use anygate_proto::v1::pool_service_client::PoolServiceClient;
use anygate_proto::v1::settings_service_client::SettingsServiceClient;
use anygate_proto::v1::*;
use base64::Engine;
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Backend {
    Userspace,
    Kernel,
}

#[derive(Parser)]
#[command(about = "anygate: write → every gateway's WireGuard device, vs wg setconf/syncconf")]
struct Args {
    #[command(subcommand)]
    cmd: Option<Sub>,
    #[arg(long, value_enum, default_value = "userspace")]
    backend: Backend,
    /// Peer counts to program from empty (wireguard-go holds at most 65,536).
    #[arg(long, value_delimiter = ',', default_value = "10000,60000")]
    sizes: Vec<u64>,
    /// Single-peer adds timed after the fill.
    #[arg(long, default_value_t = 200)]
    probes: u64,
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Extra flags for every anygate node (e.g. --node-arg=--observe-interval=5s).
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
    /// The nodes' Raft heartbeat (`[raft] heartbeat-interval`): slower
    /// timers let three nodes share an emulated VM without elections.
    #[arg(long, value_parser = humantime::parse_duration)]
    raft_heartbeat: Option<Duration>,
    /// The nodes' Raft election timeout (`[raft] election-timeout`).
    #[arg(long, value_parser = humantime::parse_duration)]
    raft_election_timeout: Option<Duration>,
    /// Data directories and logs.
    #[arg(long, default_value = "/var/tmp/anygate-dp-bench")]
    work_dir: PathBuf,
    /// Also write the results here as JSON (what `deploy/bench` collects).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Sub {
    /// (internal) Drive the cluster from inside the hub namespace.
    Measure {
        #[arg(long, value_delimiter = ',')]
        endpoints: Vec<String>,
        #[arg(long)]
        size: u64,
        #[arg(long)]
        probes: u64,
        #[arg(long)]
        server_key: String,
    },
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn key(i: u64) -> String {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&i.to_be_bytes());
    b[31] = 0x5a;
    b64(&b)
}

fn spec(i: u64) -> PeerSpec {
    PeerSpec {
        public_key: key(i),
        user: format!("u{i}"),
        device: "d".into(),
        pool: "bench".into(),
        ..Default::default()
    }
}

/// AddPeers with one request id, retried on any node until one accepts it
/// (leadership can move under load, above all in the emulated VM); the
/// request id makes the retry exactly-once.
async fn add(
    chs: &[Channel],
    peers: Vec<PeerSpec>,
    rid: u64,
) -> anyhow::Result<tonic::Response<AddPeersResponse>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut i = 0;
    loop {
        let mut req = tonic::Request::new(AddPeersRequest {
            peers: peers.clone(),
        });
        req.metadata_mut().insert(
            "x-anygate-request-id",
            format!("dp-bench-{}-{rid}", std::process::id()).parse()?,
        );
        match PeerServiceClient::new(chs[i % chs.len()].clone())
            .add_peers(req)
            .await
        {
            Ok(r) => return Ok(r),
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => return Err(s.into()),
        }
    }
}

fn index_of<T>(r: &tonic::Response<T>) -> anyhow::Result<u64> {
    Ok(r.metadata()
        .get("x-anygate-index")
        .ok_or_else(|| anyhow::anyhow!("no x-anygate-index on the answer"))?
        .to_str()?
        .parse()?)
}

/// Until every node's dataplane (or, with `raft_only`, its state machine)
/// has applied `index`.
async fn applied_everywhere(chs: &[Channel], index: u64, timeout: Duration) -> anyhow::Result<()> {
    wait_all(chs, index, timeout, false).await
}

async fn wait_all(
    chs: &[Channel],
    index: u64,
    timeout: Duration,
    raft_only: bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut done = vec![false; chs.len()];
    loop {
        for (i, ch) in chs.iter().enumerate() {
            if done[i] {
                continue;
            }
            let s = ClusterServiceClient::new(ch.clone())
                .node_info(NodeInfoRequest {})
                .await?
                .into_inner();
            done[i] = if raft_only {
                s.applied_index >= index
            } else {
                s.dataplane.is_some_and(|d| d.applied_index >= index)
            };
        }
        if done.iter().all(|d| *d) {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("index {index} not on every device within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn measure(
    endpoints: Vec<String>,
    size: u64,
    probes: u64,
    server_key: String,
) -> anyhow::Result<()> {
    let chs: Vec<Channel> = endpoints.iter().map(|a| channel(a)).collect();
    // Wait for every node to answer.
    let deadline = Instant::now() + Duration::from_secs(60);
    for ch in &chs {
        while ClusterServiceClient::new(ch.clone())
            .node_info(NodeInfoRequest {})
            .await
            .is_err()
        {
            anyhow::ensure!(Instant::now() < deadline, "nodes did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    form_cluster(&endpoints).await?;
    SettingsServiceClient::new(chs[0].clone())
        .set_settings(SetSettingsRequest {
            patch: Some(SettingsPatch {
                server_public_key: Some(server_key),
                ..Default::default()
            }),
        })
        .await?;
    PoolServiceClient::new(chs[0].clone())
        .add_pool(AddPoolRequest {
            pool: Some(Pool {
                name: "bench".into(),
                cidrs: vec!["100.64.0.0/10".into()],
                ..Default::default()
            }),
        })
        .await?;
    // Every dataplane healthy before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(120);
    for ch in &chs {
        loop {
            let s = ClusterServiceClient::new(ch.clone())
                .node_info(NodeInfoRequest {})
                .await?
                .into_inner();
            if s.dataplane.as_ref().is_some_and(|d| d.healthy) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "node {} dataplane not healthy: {:?}",
                s.id,
                s.dataplane
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let started = Instant::now();
    let mut last = 0;
    let mut n = 0;
    while n < size {
        let k = 1000.min(size - n);
        let r = add(&chs, (n..n + k).map(spec).collect(), n).await?;
        last = index_of(&r)?;
        n += k;
    }
    let writes_done = started.elapsed();
    applied_everywhere(&chs, last, Duration::from_secs(300)).await?;
    let fill = started.elapsed();
    let mut h = Histogram::<u64>::new(3)?;
    let mut h_raft = Histogram::<u64>::new(3)?;
    for i in 0..probes {
        // Timed from sending the write: the Raft commit is part of it.
        let t = Instant::now();
        let r = add(&chs, vec![spec(size + i)], size + i).await?;
        let index = index_of(&r)?;
        wait_all(&chs, index, Duration::from_secs(60), true).await?;
        h_raft.record(t.elapsed().as_micros() as u64)?;
        applied_everywhere(&chs, index, Duration::from_secs(60)).await?;
        h.record(t.elapsed().as_micros() as u64)?;
    }
    let ms = |v: u64| v as f64 / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "size": size,
            "writes_ms": writes_done.as_millis() as u64,
            "fill_ms": fill.as_millis() as u64,
            "probe_p50_ms": ms(h.value_at_quantile(0.5)),
            "probe_p99_ms": ms(h.value_at_quantile(0.99)),
            "probe_max_ms": ms(h.max()),
            "raft_applied_p50_ms": ms(h_raft.value_at_quantile(0.5)),
            "raft_applied_p99_ms": ms(h_raft.value_at_quantile(0.99)),
            "probes": probes,
        })
    );
    Ok(())
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

fn wg_conf(private: &str, peers: impl Iterator<Item = u64>) -> String {
    let mut s = format!("[Interface]\nPrivateKey = {private}\nListenPort = 51820\n");
    for i in peers {
        s.push_str(&format!(
            "\n[Peer]\nPublicKey = {}\nAllowedIPs = 100.{}.{}.{}/32\n",
            key(i),
            64 + ((i >> 16) & 0x3f),
            (i >> 8) & 0xff,
            i & 0xff
        ));
    }
    s
}

/// Runs the same `wg` command on every scratch device at once and times
/// until the last one is done (a script pushing one file to N gateways).
fn on_every(devs: &[(String, String)], args: &[&str]) -> anyhow::Result<f64> {
    let t = Instant::now();
    let children: Vec<_> = devs
        .iter()
        .map(|(ns, ifname)| {
            std::process::Command::new("ip")
                .args(["netns", "exec", ns, "wg", args[0], ifname])
                .args(&args[1..])
                .stdout(std::process::Stdio::null())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for mut c in children {
        let st = c.wait()?;
        anyhow::ensure!(st.success(), "wg {} failed: {st}", args.join(" "));
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// What a script-driven manager does, like for like with anygate: one
/// device of the same kind per node (each in its own namespace), the whole
/// config pushed to all of them at once. Returns (setconf of `size` peers
/// from empty, median of 5 `syncconf` runs with one peer added), both
/// timed until the last device is done.
fn scripted(
    backend: Backend,
    prefix: &str,
    dir: &Path,
    private: &str,
    size: u64,
    nodes: u32,
) -> anyhow::Result<(f64, f64)> {
    let devs: Vec<(String, String)> = (1..=nodes)
        .map(|k| (format!("{prefix}-s{k}"), format!("{prefix}s{k}")))
        .collect();
    let mut wg_go: Vec<Proc> = vec![];
    let mut made = vec![];
    let res = (|| -> anyhow::Result<(f64, f64)> {
        for (ns, ifname) in &devs {
            run(&["ip", "netns", "add", ns])?;
            made.push(ns.clone());
            match backend {
                Backend::Userspace => {
                    let _ = std::fs::remove_file(format!("/var/run/wireguard/{ifname}.sock"));
                    wg_go.push(spawn(
                        std::process::Command::new("ip")
                            .args(["netns", "exec", ns, "wireguard-go", "-f", ifname])
                            .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1"),
                        &dir.join(format!("scratch-{ifname}.log")),
                    )?);
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while run(&["ip", "netns", "exec", ns, "wg", "show", ifname]).is_err() {
                        anyhow::ensure!(
                            Instant::now() < deadline,
                            "scratch wireguard-go did not start"
                        );
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                Backend::Kernel => {
                    run(&["ip", "-n", ns, "link", "add", ifname, "type", "wireguard"])?;
                }
            }
        }
        let conf = dir.join("scripted.conf");
        let conf_s = conf.to_str().unwrap().to_string();
        std::fs::write(&conf, wg_conf(private, 0..size))?;
        let setconf = on_every(&devs, &["setconf", &conf_s])?;
        // One peer added per change: write the whole file, syncconf.
        let mut sync = vec![];
        for extra in 0..5u64 {
            let t = Instant::now();
            std::fs::write(&conf, wg_conf(private, 0..size + extra + 1))?;
            on_every(&devs, &["syncconf", &conf_s])?;
            sync.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        sync.sort_by(f64::total_cmp);
        // Empty them before the namespaces go (deleting a big kernel device is slow).
        std::fs::write(&conf, "[Interface]\n")?;
        on_every(&devs, &["setconf", &conf_s])?;
        Ok((setconf, sync[sync.len() / 2]))
    })();
    drop(wg_go);
    for ns in made {
        let _ = run(&["ip", "netns", "del", &ns]);
    }
    for (_, ifname) in &devs {
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{ifname}.sock"));
    }
    res
}

fn one_size(a: &Args, size: u64) -> anyhow::Result<serde_json::Value> {
    let prefix = format!("agb{}", std::process::id() % 100_000);
    let dir = a.work_dir.join(format!("n{size}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let secret = x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng);
    let public = b64(x25519_dalek::PublicKey::from(&secret).as_bytes());
    let private = b64(&secret.to_bytes());
    let keyfile = dir.join("wg.key");
    std::fs::write(&keyfile, &private)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&keyfile, std::fs::Permissions::from_mode(0o600))?;

    let topo = Topology::create(&prefix, a.nodes)?;
    let anygate = std::env::current_exe()?.with_file_name("anygate");
    let me = std::env::current_exe()?;
    let mut procs = vec![];
    let mut endpoints = vec![];
    for k in 1..=a.nodes {
        let ep = format!("{}:7400", topo.addr(k));
        let ifname = format!("{prefix}{k}");
        let mut cmd = topo.exec(&topo.ns(k), anygate.to_str().unwrap());
        cmd.args([
            "--id",
            &k.to_string(),
            "--listen",
            &ep,
            "--log-level",
            "warn",
            // Measures the dataplane, not the API: plaintext gRPC.
            "--insecure-dev",
        ])
        .arg("--data-dir")
        .arg(dir.join(format!("node{k}")))
        .args(["--wg-interface", &ifname, "--wg-private-key-file"])
        .arg(&keyfile);
        match a.backend {
            Backend::Userspace => {
                cmd.args([
                    "--dataplane-backend",
                    "userspace",
                    "--wireguard-go",
                    "wireguard-go",
                ]);
            }
            Backend::Kernel => {
                cmd.args(["--dataplane-backend", "kernel"]);
            }
        }
        if a.raft_heartbeat.is_some() || a.raft_election_timeout.is_some() {
            let file = anygate_core::config::File {
                raft: anygate_core::config::Raft {
                    heartbeat_interval: a.raft_heartbeat,
                    election_timeout: a.raft_election_timeout,
                },
                ..Default::default()
            };
            let path = dir.join(format!("node{k}.toml"));
            std::fs::write(&path, toml::to_string(&file)?)?;
            cmd.arg("--config").arg(path);
        }
        cmd.args(&a.node_args);
        procs.push(spawn(&mut cmd, &dir.join(format!("node{k}.log")))?);
        endpoints.push(ep);
    }
    let out = topo
        .exec(&topo.hub(), me.to_str().unwrap())
        .args([
            "measure",
            "--endpoints",
            &endpoints.join(","),
            "--size",
            &size.to_string(),
            "--probes",
            &a.probes.to_string(),
            "--server-key",
            &public,
        ])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        for k in 1..=a.nodes {
            let log = std::fs::read_to_string(dir.join(format!("node{k}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!("--- node {k} log (last lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        anyhow::bail!("measure failed (logs in {})", dir.display());
    }
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    // Memory of each anygate process (ip netns exec execs it: same pid).
    let rss: Vec<(u64, u64)> = procs.iter().map(|p| rss_kib(p.0.id())).collect();
    // Every device really holds the inventory.
    let want = size + a.probes;
    for k in 1..=a.nodes {
        let ifname = format!("{prefix}{k}");
        let dump = run(&[
            "ip",
            "netns",
            "exec",
            &topo.ns(k),
            "wg",
            "show",
            &ifname,
            "dump",
        ])?;
        let got = dump.lines().count() as u64 - 1;
        anyhow::ensure!(
            got == want,
            "node {k}'s device has {got} peers, want {want}"
        );
    }
    drop(procs);
    if a.backend == Backend::Kernel {
        // Empty big kernel devices before their namespace goes (deleting a
        // device with many peers takes minutes).
        let empty = dir.join("empty.conf");
        std::fs::write(&empty, "[Interface]\n")?;
        for k in 1..=a.nodes {
            let ifname = format!("{prefix}{k}");
            let _ = run(&[
                "ip",
                "netns",
                "exec",
                &topo.ns(k),
                "wg",
                "setconf",
                &ifname,
                empty.to_str().unwrap(),
            ]);
        }
    }
    drop(topo);
    let (setconf, syncconf) = scripted(a.backend, &prefix, &dir, &private, size, a.nodes)?;
    v["rss_kib"] = rss.iter().map(|r| r.0).collect::<Vec<_>>().into();
    v["peak_rss_kib"] = rss.iter().map(|r| r.1).collect::<Vec<_>>().into();
    v["setconf_ms"] = setconf.into();
    v["syncconf_one_change_ms"] = syncconf.into();
    v["backend"] = format!("{:?}", a.backend).to_lowercase().into();
    v["nodes"] = a.nodes.into();
    Ok(v)
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if let Some(Sub::Measure {
        endpoints,
        size,
        probes,
        server_key,
    }) = a.cmd
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return rt.block_on(measure(endpoints, size, probes, server_key));
    }
    let mut rows = vec![];
    for &size in &a.sizes {
        eprintln!("== {size} peers, {:?}, {} nodes", a.backend, a.nodes);
        let v = one_size(&a, size)?;
        eprintln!("{v}");
        rows.push(v);
    }
    println!(
        "| backend | peers | fill → all {} devices | add → all devices p50 / p99 / max | anygate RSS (peak) | wg setconf (cold) | wg syncconf, 1 change | syncconf ÷ anygate p50 |",
        a.nodes
    );
    println!("|---|---|---|---|---|---|---|---|");
    for v in &rows {
        let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
        let peak = v["peak_rss_kib"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_u64()).max().unwrap_or(0))
            .unwrap_or(0);
        println!(
            "| {} | {} | {:.2} s | {:.1} / {:.1} / {:.1} ms | {:.0} MiB | {:.0} ms | {:.0} ms | {:.0}× |",
            v["backend"].as_str().unwrap_or(""),
            v["size"],
            f("fill_ms") / 1000.0,
            f("probe_p50_ms"),
            f("probe_p99_ms"),
            f("probe_max_ms"),
            peak as f64 / 1024.0,
            f("setconf_ms"),
            f("syncconf_one_change_ms"),
            f("syncconf_one_change_ms") / f("probe_p50_ms").max(0.001),
        );
    }
    let doc = serde_json::json!({
        "backend": format!("{:?}", a.backend).to_lowercase(),
        "nodes": a.nodes,
        "probes": a.probes,
        "rows": rows,
    });
    println!("{doc}");
    if let Some(path) = &a.json {
        anygate_chaos::write_json(path, &doc)?;
    }
    Ok(())
}
