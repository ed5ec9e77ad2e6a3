//! Failover drills: each one gets a fresh lab (see `lab`), clients pinging
//! the internal service every 100 ms and a writer adding peers throughout,
//! injects one fault, heals it, and reports what the clients felt: per
//! client the outage (the longest gap between replies, less the ping
//! interval) and the pings lost, for the failover and for the failback; the
//! router's convergence; and the checks that must hold whatever the timing:
//! every acknowledged write present after the heal, every device equal to
//! the inventory, an isolated node withdrawn once its leader lease ran out.

use crate::lab::{
    create, ctl, in_ns, record_children, serving_gateway, start_gateway, teardown, wait, Options,
    State, ANYCAST, SERVICE,
};
use crate::netns::run;
use crate::router::{monitor, next_hops};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Every drill, in the order `all` runs them.
pub const DRILLS: &[&str] = &[
    "crash",
    "leader-crash",
    "gobgpd",
    "wireguard-go",
    "silent",
    "uplink",
    "drain",
    "rolling-restart",
    "add-gateway",
];

/// The CI subset (each includes its failback).
pub const QUICK: &[&str] = &["crash", "silent", "drain"];

/// Lab timers the bounds depend on (see `lab::start_gateway`).
pub const HOLD_MS: f64 = 3000.0;
pub const LEASE: Duration = Duration::from_secs(3);
const PING_INTERVAL: f64 = 0.1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientResult {
    pub client: String,
    /// Outage after the fault: longest reply gap less the ping interval.
    pub outage_ms: f64,
    pub lost: u64,
    /// Outage after the heal (the flow moving back), if the drill heals.
    pub failback_outage_ms: Option<f64>,
    pub failback_lost: Option<u64>,
    pub recovered: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Bound {
    pub what: String,
    pub limit: f64,
    pub value: f64,
    pub ok: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Assists {
    pub react_no_session: usize,
    pub react_stalled: usize,
    pub kick: usize,
    pub flush_loser: usize,
}

impl Assists {
    /// The node's own counters, from its /metrics text (OpenMetrics):
    /// `anygate_react_handshakes_total{reason=…}`,
    /// `anygate_takeover_kicks_total`, `anygate_loser_flushes_total`. Pure.
    pub fn from_metrics(text: &str) -> Assists {
        let mut a = Assists::default();
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = l.rsplit_once(' ') else {
                continue;
            };
            let Ok(n) = value.trim().parse::<f64>() else {
                continue;
            };
            let n = n as usize;
            match name {
                "anygate_react_handshakes_total{reason=\"no_session\"}" => a.react_no_session += n,
                "anygate_react_handshakes_total{reason=\"stalled\"}" => a.react_stalled += n,
                "anygate_takeover_kicks_total" => a.kick += n,
                "anygate_loser_flushes_total" => a.flush_loser += n,
                _ => {}
            }
        }
        a
    }

    fn add(&mut self, o: &Assists) {
        self.react_no_session += o.react_no_session;
        self.react_stalled += o.react_stalled;
        self.kick += o.kick;
        self.flush_loser += o.flush_loser;
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub drill: String,
    pub gateways: u32,
    /// Failover assists on (react, flush-loser, kick); off = baseline.
    pub assists: bool,
    pub seed: u64,
    pub target: u32,
    /// Fault -> first route change in the router.
    pub router_ms: Option<f64>,
    /// Heal -> the router holds every gateway again.
    pub router_restore_ms: Option<f64>,
    pub clients: Vec<ClientResult>,
    pub writes_acked: usize,
    pub writes_lost: usize,
    pub devices_match: bool,
    /// An isolated node withdrew once its lease ran out (when it applies).
    pub lease_respected: Option<bool>,
    /// What the gateways did, from their metrics: handshakes started by react
    /// (no session / stalled session), by the kick, sessions flushed.
    pub assists_fired: Assists,
    pub bounds: Vec<Bound>,
    pub pass: bool,
    pub error: Option<String>,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// `ping -D` replies: (icmp_seq, reply time in unix seconds). Pure.
pub fn parse_reply(line: &str) -> Option<(u64, f64)> {
    let t: f64 = line.strip_prefix('[')?.split(']').next()?.parse().ok()?;
    if !line.contains(" bytes from ") {
        return None;
    }
    let seq = line.split("icmp_seq=").nth(1)?.split_whitespace().next()?;
    Some((seq.parse().ok()?, t))
}

/// What a client felt in the window [w0, w1): the outage (the longest gap
/// between consecutive replies, counted from the last reply before w0, less
/// the ping interval) in ms, the pings lost, and whether replies came back
/// within the window. Pure.
pub fn window(replies: &[(u64, f64)], w0: f64, w1: f64, interval: f64) -> (f64, u64, bool) {
    let mut r: Vec<(u64, f64)> = replies.to_vec();
    r.sort_by_key(|x| x.0);
    r.dedup_by_key(|x| x.0);
    let anchor = r.iter().rev().find(|x| x.1 < w0).copied();
    let inside: Vec<(u64, f64)> = r
        .iter()
        .filter(|x| x.1 >= w0 && x.1 < w1)
        .copied()
        .collect();
    let Some(last) = inside.last().copied() else {
        let from = anchor.map_or(w0, |a| a.1);
        let gap = (w1 - from - interval).max(0.0);
        return (gap * 1000.0, (gap / interval).round() as u64, false);
    };
    let mut times: Vec<f64> = anchor.iter().map(|a| a.1).collect();
    times.extend(inside.iter().map(|x| x.1));
    times.sort_by(|a, b| a.total_cmp(b));
    let gap = times.windows(2).map(|w| w[1] - w[0]).fold(0.0f64, f64::max);
    let first_seq = anchor.map_or(inside[0].0, |a| a.0);
    let expected = last.0 - first_seq + u64::from(anchor.is_none());
    let got = inside.len() as u64;
    let lost = expected.saturating_sub(got);
    // Recovered: the window ends with replies flowing.
    let recovered = w1 - last.1 < 1.0;
    (((gap - interval).max(0.0)) * 1000.0, lost, recovered)
}

/// `ping -D -i 0.1` from a client namespace to the service.
struct Pinger {
    name: String,
    child: std::process::Child,
    replies: Arc<Mutex<Vec<(u64, f64)>>>,
}

impl Pinger {
    fn start(name: &str, ns: &str) -> anyhow::Result<Pinger> {
        let mut child = std::process::Command::new("ip")
            .args([
                "netns", "exec", ns, "ping", "-D", "-n", "-i", "0.1", "-W", "2", SERVICE,
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let out = child.stdout.take().expect("piped");
        let replies = Arc::new(Mutex::new(Vec::new()));
        let r = replies.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(l) = line else { break };
                if let Some(x) = parse_reply(&l) {
                    r.lock().expect("pinger").push(x);
                }
            }
        });
        Ok(Pinger {
            name: name.into(),
            child,
            replies,
        })
    }

    fn replies(&self) -> Vec<(u64, f64)> {
        self.replies.lock().expect("pinger").clone()
    }

    /// Replied within the last `d`.
    fn flowing(&self, d: f64) -> bool {
        self.replies
            .lock()
            .expect("pinger")
            .last()
            .is_some_and(|x| now() - x.1 < d)
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Adds a peer every 200 ms through anygatectl; remembers what was
/// acknowledged.
struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<(Vec<String>, usize)>>,
}

impl Writer {
    fn start(st: &State, seed: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let st = st.clone();
        let handle = std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let (mut acked, mut failed) = (Vec::new(), 0usize);
            let mut i = 0u32;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                let secret = x25519_dalek::StaticSecret::random_from_rng(&mut rng);
                let public = base64_key(x25519_dalek::PublicKey::from(&secret).as_bytes());
                let dev = format!("d{i}");
                match ctl(
                    &st,
                    &[
                        "peer",
                        "add",
                        "--user",
                        "drill-writer",
                        "--device",
                        &dev,
                        "--public-key",
                        &public,
                    ],
                ) {
                    Ok(_) => acked.push(public),
                    Err(_) => failed += 1,
                }
                let t = Instant::now();
                while t.elapsed() < Duration::from_millis(200) && !s.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            (acked, failed)
        });
        Writer {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> (Vec<String>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn base64_key(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Signal a recorded process. With -KILL the fault must have happened:
/// the process is gone within 5 s, or the drill fails.
fn kill(pid: Option<u32>, sig: &str) -> anyhow::Result<()> {
    let Some(p) = pid else {
        anyhow::bail!("fault not injected: no such process recorded");
    };
    run(&["kill", sig, &p.to_string()])?;
    if sig == "-KILL" {
        wait(&format!("process {p} gone"), Duration::from_secs(5), || {
            !crate::lab::alive(p)
        })?;
    }
    Ok(())
}

/// Add gateway k's failover counters (its /metrics) to the report's; a
/// metrics endpoint that does not answer fails the drill.
fn bank(st: &State, k: u32, report: &mut Report) -> anyhow::Result<()> {
    let text = in_ns(
        &format!("{}-g{k}", st.prefix),
        &[
            "curl",
            "-sf",
            "--max-time",
            "2",
            "http://127.0.0.1:9400/metrics",
        ],
    )
    .map_err(|e| anyhow::anyhow!("gateway {k} metrics: {e:#}"))?;
    anyhow::ensure!(
        text.contains("anygate_loser_flushes_total"),
        "gateway {k} metrics carry no failover counters"
    );
    report.assists_fired.add(&Assists::from_metrics(&text));
    Ok(())
}

fn leader(st: &State) -> anyhow::Result<u32> {
    let v: serde_json::Value = serde_json::from_str(&ctl(st, &["--json", "cluster", "status"])?)?;
    v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| {
            n["role"]
                .as_str()
                .is_some_and(|r| r.eq_ignore_ascii_case("leader"))
        })
        .and_then(|n| n["id"].as_u64())
        .map(|i| i as u32)
        .ok_or_else(|| anyhow::anyhow!("no leader in cluster status"))
}

fn gw_addr(k: u32) -> String {
    format!("10.78.{k}.2")
}

/// Does gateway k's own gobgpd hold the anycast path?
/// Whether gateway k's gobgpd holds the anycast route; a query that fails
/// is an error, not "withdrawn".
fn announces(st: &State, k: u32) -> anyhow::Result<bool> {
    Ok(in_ns(
        &format!("{}-g{k}", st.prefix),
        &["gobgp", "global", "rib", "-a", "ipv4"],
    )?
    .contains(ANYCAST))
}

/// Wait until gateway k is back in the router (after a restart).
fn wait_announced(st: &State, k: u32, timeout: Duration) -> anyhow::Result<()> {
    let router = st.router();
    wait(&format!("gateway {k} announced"), timeout, || {
        next_hops(&router, ANYCAST).is_ok_and(|h| h.contains(&gw_addr(k)))
    })
}

/// Run one drill on a fresh lab; the lab is removed afterwards.
pub fn run_drill(
    dir: &Path,
    name: &str,
    gateways: u32,
    assists: bool,
    seed: u64,
    say: &dyn Fn(&str),
) -> Report {
    let mut report = Report {
        drill: name.into(),
        gateways,
        assists,
        seed,
        target: 0,
        router_ms: None,
        router_restore_ms: None,
        clients: vec![],
        writes_acked: 0,
        writes_lost: 0,
        devices_match: false,
        lease_respected: None,
        assists_fired: Assists::default(),
        bounds: vec![],
        pass: false,
        error: None,
    };
    let dir = dir.join(format!("{name}-{gateways}"));
    let mut state: Option<State> = None;
    if let Err(e) = drill(&dir, say, &mut report, &mut state) {
        report.error = Some(format!("{e:#}"));
    }
    if let Some(st) = &state {
        if report.error.is_some() {
            // Keep the logs of a failed drill next to its report.
            let _ = std::fs::write(
                dir.join("state-at-failure.json"),
                serde_json::to_vec_pretty(st).unwrap_or_default(),
            );
        }
        teardown(st);
    }
    report.bounds = bounds(&report);
    report.pass = report.error.is_none() && report.bounds.iter().all(|b| b.ok);
    report
}

/// The drill `report` names (drill, gateways, assists, seed); fills in what
/// it measured.
fn drill(
    dir: &Path,
    say: &dyn Fn(&str),
    report: &mut Report,
    state: &mut Option<State>,
) -> anyhow::Result<()> {
    let (name, gateways, assists, seed) = (
        report.drill.clone(),
        report.gateways,
        report.assists,
        report.seed,
    );
    let name = name.as_str();
    anyhow::ensure!(DRILLS.contains(&name), "unknown drill {name:?}");
    anyhow::ensure!(gateways >= 2, "a drill needs at least 2 gateways");
    let _ = std::fs::remove_dir_all(dir);
    let adding = name == "add-gateway";
    let quiet = |_: &str| {};
    let st = create(
        dir,
        "agd",
        Options {
            gateways,
            start: if adding { gateways - 1 } else { gateways },
            clients: 3,
            assists,
        },
        &quiet,
        &quiet,
    );
    // The state is recorded even when creation failed half way, so that
    // everything started is removed.
    let mut st = match st {
        Ok(s) => s,
        Err(e) => {
            *state = State::load(dir).ok();
            return Err(e);
        }
    };
    *state = Some(st.clone());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let pingers: Vec<Pinger> = st
        .clients
        .iter()
        .map(|c| Pinger::start(&c.name, &c.namespace))
        .collect::<anyhow::Result<_>>()?;
    let writer = Writer::start(&st, seed ^ 0x5eed);
    let mon = monitor(&st.router(), ANYCAST)?;
    wait(
        "every client's pings flowing",
        Duration::from_secs(20),
        || pingers.iter().all(|p| p.flowing(0.3)),
    )?;
    // A little steady state before the fault.
    let steady = Instant::now();
    wait("steady state", Duration::from_secs(5), || {
        steady.elapsed() > Duration::from_secs(2) && pingers.iter().all(|p| p.flowing(0.3))
    })?;
    let router = st.router();
    let full: BTreeSet<String> = next_hops(&router, ANYCAST)?;
    let probe = rng.gen_range(0..st.clients.len());
    let target = match name {
        "leader-crash" => leader(&st)?,
        "add-gateway" => gateways,
        _ => serving_gateway(&st, &st.clients[probe].public_key).ok_or_else(|| {
            anyhow::anyhow!("no gateway holds {}'s session", st.clients[probe].name)
        })?,
    };
    report.target = target;
    say(&format!(
        "{name} ({gateways} gateways{}): target gateway {target}, seed {seed}",
        if assists { "" } else { ", baseline" }
    ));
    record_children(&mut st)?;
    *state = Some(st.clone());
    // Subscribed well before the fault (an `ip monitor` just started can
    // miss the first events); what it saw so far is dropped.
    mon.drain();
    // Stock WireGuard can take 2 minutes to come back (the hostage effect).
    let limit = if assists { 30 } else { 200 };
    let (t_fault_wall, t_fault) = (now(), Instant::now());
    let tns = format!("{}-g{target}", st.prefix);
    let mut isolated = false;
    match name {
        "crash" | "leader-crash" => {
            bank(&st, target, report)?;
            for p in ["anygate", "gobgpd", "wireguard-go"] {
                kill(st.pid(target, p), "-KILL")?;
            }
        }
        "gobgpd" => kill(st.pid(target, "gobgpd"), "-KILL")?,
        "wireguard-go" => kill(st.pid(target, "wireguard-go"), "-KILL")?,
        "silent" => {
            in_ns(
                &tns,
                &[
                    "nft",
                    "add table inet drill; add chain inet drill inbound { type filter hook input priority -400; policy accept; }; add rule inet drill inbound iifname up0 drop; add chain inet drill outbound { type filter hook output priority -400; policy accept; }; add rule inet drill outbound oifname up0 drop; add chain inet drill forwarded { type filter hook forward priority -400; policy accept; }; add rule inet drill forwarded iifname up0 drop; add rule inet drill forwarded oifname up0 drop",
                ],
            )?;
            let t = in_ns(&tns, &["nft", "list", "table", "inet", "drill"])?;
            anyhow::ensure!(
                t.matches("drop").count() == 4,
                "fault not injected: the drill's drop rules are not in place:\n{t}"
            );
            isolated = true;
        }
        "uplink" => {
            in_ns(&tns, &["ip", "link", "set", "up0", "down"])?;
            let l = in_ns(&tns, &["ip", "-o", "link", "show", "up0"])?;
            anyhow::ensure!(
                !l.contains(",UP") && !l.contains("<UP"),
                "fault not injected: up0 is still up: {l}"
            );
            isolated = true;
        }
        "drain" => {
            ctl(&st, &["node", "drain", &target.to_string(), "--no-wait"])?;
        }
        "rolling-restart" => {
            for k in 1..=gateways {
                let pid = st.pid(k, "anygate");
                bank(&st, k, report)?;
                kill(pid, "-TERM")?;
                if let Some(p) = pid {
                    wait(
                        &format!("gateway {k} stops"),
                        Duration::from_secs(15),
                        || !crate::lab::alive(p),
                    )?;
                }
                start_gateway(&mut st, k)?;
                wait_announced(&st, k, Duration::from_secs(60))?;
                wait("clients flowing", Duration::from_secs(limit), || {
                    pingers.iter().all(|p| p.flowing(0.3))
                })?;
            }
            record_children(&mut st)?;
            *state = Some(st.clone());
        }
        "add-gateway" => {
            start_gateway(&mut st, target)?;
            let ns = st.ctl_namespace.clone();
            let ep = gw_addr(target) + "/7400";
            wait("the new gateway listening", Duration::from_secs(20), || {
                in_ns(&ns, &["bash", "-c", &format!("exec 3<>/dev/tcp/{ep}")]).is_ok()
            })?;
            let id = target.to_string();
            let addr = format!("{}:7400", gw_addr(target));
            ctl(
                &st,
                &["cluster", "add-learner", "--id", &id, "--addr", &addr],
            )?;
            ctl(&st, &["cluster", "promote", "--id", &id])?;
            wait_announced(&st, target, Duration::from_secs(60))?;
            record_children(&mut st)?;
            *state = Some(st.clone());
        }
        _ => unreachable!("checked above"),
    }
    // The router's first reaction: every fault here changes the routes
    // (a hop leaves, or joins); none within the hold time and more means
    // the fault never reached the router.
    let seen = Duration::from_millis(HOLD_MS as u64) + Duration::from_secs(10);
    match mon.rx.recv_timeout(seen) {
        Ok(t) => {
            report.router_ms = Some(t.saturating_duration_since(t_fault).as_secs_f64() * 1000.0)
        }
        Err(_) => anyhow::bail!(
            "the router's routes to {ANYCAST} did not change within {seen:?} of the fault"
        ),
    }
    // A gateway taken out must leave the router's set (drain, crash,
    // isolation, a dead gobgpd); the others come back by themselves.
    if matches!(
        name,
        "crash" | "leader-crash" | "gobgpd" | "silent" | "uplink" | "drain"
    ) {
        let gone = gw_addr(target);
        wait(&format!("the router drops gateway {target}"), seen, || {
            next_hops(&router, ANYCAST).is_ok_and(|h| !h.contains(&gone))
        })
        .map_err(|e| anyhow::anyhow!("fault not seen by the router: {e:#}"))?;
    }
    // Clients recover: every one replying again, a settle time after the
    // fault (a silent node is only noticed after the hold time).
    let settle = match name {
        "silent" => Duration::from_millis(HOLD_MS as u64 + 1000),
        _ => Duration::from_secs(1),
    };
    let recovered = wait("every client recovered", Duration::from_secs(limit), || {
        t_fault.elapsed() > settle && pingers.iter().all(|p| p.flowing(0.3))
    });
    // The lease only withdraws with three or more voters (see the node's
    // health policy); with two, the isolated node keeps its last state.
    if isolated && gateways >= 3 {
        // An isolated node hears no leader: it must withdraw itself once
        // its lease ran out (the router cannot tell us: it lost the node).
        let until = t_fault + LEASE + Duration::from_millis(1500);
        wait("lease expiry", LEASE + Duration::from_secs(5), || {
            Instant::now() >= until
        })?;
        report.lease_respected = Some(!announces(&st, target)?);
    }
    let t_heal_wall = now();
    let t_heal = Instant::now();
    let healing = !matches!(name, "rolling-restart" | "add-gateway");
    if healing {
        match name {
            "crash" | "leader-crash" => {
                start_gateway(&mut st, target)?;
            }
            "silent" => {
                in_ns(&tns, &["nft", "delete", "table", "inet", "drill"])?;
            }
            "uplink" => {
                in_ns(&tns, &["ip", "link", "set", "up0", "up"])?;
                // A link flap flushes the static default route; the host's
                // network configuration would put it back.
                in_ns(
                    &tns,
                    &[
                        "ip",
                        "route",
                        "replace",
                        "default",
                        "via",
                        &format!("10.78.{target}.1"),
                    ],
                )?;
            }
            "drain" => {
                ctl(&st, &["node", "undrain", &target.to_string(), "--no-wait"])?;
            }
            _ => {} // gobgpd, wireguard-go: the node repairs itself
        }
        wait(
            "the router holds every gateway again",
            Duration::from_secs(90),
            || next_hops(&router, ANYCAST).is_ok_and(|h| h == full),
        )?;
        report.router_restore_ms = Some(t_heal.elapsed().as_secs_f64() * 1000.0);
        let back = Instant::now();
        let _ = wait(
            "every client flowing after the heal",
            Duration::from_secs(limit),
            || back.elapsed() > Duration::from_secs(2) && pingers.iter().all(|p| p.flowing(0.3)),
        );
        record_children(&mut st)?;
        *state = Some(st.clone());
    }
    // Settle, then the correctness checks.
    let (acked, _failed) = writer.finish();
    report.writes_acked = acked.len();
    let t_end = now();
    report.writes_lost = writes_lost(&st, &acked)?;
    report.devices_match = wait(
        "devices equal the inventory",
        Duration::from_secs(15),
        || devices_match(&st).unwrap_or(false),
    )
    .is_ok();
    for p in &pingers {
        let r = p.replies();
        let (o, lost, ok1) = window(&r, t_fault_wall, t_heal_wall, PING_INTERVAL);
        let fb = healing.then(|| window(&r, t_heal_wall, t_end, PING_INTERVAL));
        report.clients.push(ClientResult {
            client: p.name.clone(),
            outage_ms: o,
            lost,
            failback_outage_ms: fb.map(|x| x.0),
            failback_lost: fb.map(|x| x.1),
            recovered: ok1 && fb.is_none_or(|x| x.2),
        });
    }
    recovered?;
    // What the gateways did: the counters of every gateway still running
    // (those stopped during the drill were banked before they stopped).
    for k in 1..=gateways {
        if st.pid(k, "anygate").is_some_and(crate::lab::alive) {
            bank(&st, k, report)?;
        }
    }
    Ok(())
}

/// Acknowledged peers missing from the replicated inventory.
fn writes_lost(st: &State, acked: &[String]) -> anyhow::Result<usize> {
    let out = ctl(st, &["--json", "peer", "list", "--user", "drill-writer"])?;
    Ok(acked.iter().filter(|k| !out.contains(k.as_str())).count())
}

/// A device's (or the inventory's) peers: key -> allowed IPs.
type PeerIps = BTreeMap<String, BTreeSet<String>>;

/// Every running gateway's device holds exactly the inventory's active
/// peers, each with exactly its allowed IPs.
fn devices_match(st: &State) -> anyhow::Result<bool> {
    let v: serde_json::Value = serde_json::from_str(&ctl(st, &["--json", "peer", "list"])?)?;
    let mut want = PeerIps::new();
    collect_peers(&v, &mut want);
    for g in &st.gateways {
        let out = in_ns(
            &g.namespace,
            &["wg", "show", &g.wg_interface, "allowed-ips"],
        )?;
        if device_peers(&out) != want {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `wg show IF allowed-ips`: "KEY\tNET NET" per peer, "(none)" for none. Pure.
fn device_peers(out: &str) -> PeerIps {
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let k = w.next()?.to_string();
            Some((k, w.filter(|n| *n != "(none)").map(String::from).collect()))
        })
        .collect()
}

fn collect_peers(v: &serde_json::Value, out: &mut PeerIps) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(k) = m.get("public_key").and_then(|k| k.as_str()) {
                let active = m
                    .get("state")
                    .and_then(|s| s.as_str())
                    .is_none_or(|s| s.eq_ignore_ascii_case("active"));
                if active {
                    let ips = m
                        .get("allowed_ips")
                        .and_then(|a| a.as_array())
                        .into_iter()
                        .flatten()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect();
                    out.insert(k.to_string(), ips);
                }
            }
            m.values().for_each(|x| collect_peers(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_peers(x, out)),
        _ => {}
    }
}

fn p99(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(((v.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(0.0)
}

/// The bounds, for what this report measured. Correctness holds
/// for baselines too; timing bounds only with the assists on.
pub fn bounds(r: &Report) -> Vec<Bound> {
    let mut b = vec![];
    let mut add = |what: &str, limit: f64, value: f64| {
        b.push(Bound {
            what: what.into(),
            limit,
            value,
            ok: value <= limit,
        })
    };
    add("acknowledged writes lost", 0.0, r.writes_lost as f64);
    add(
        "devices differing from the inventory",
        0.0,
        if r.devices_match { 0.0 } else { 1.0 },
    );
    if let Some(l) = r.lease_respected {
        add(
            "isolated node announcing past its lease",
            0.0,
            if l { 0.0 } else { 1.0 },
        );
    }
    if r.clients.is_empty() {
        return b;
    }
    add(
        "clients not recovered",
        0.0,
        r.clients.iter().filter(|c| !c.recovered).count() as f64,
    );
    if !r.assists {
        return b;
    }
    let outages: Vec<f64> = r.clients.iter().map(|c| c.outage_ms).collect();
    let failbacks: Vec<f64> = r
        .clients
        .iter()
        .filter_map(|c| c.failback_outage_ms)
        .collect();
    match r.drill.as_str() {
        "crash" | "leader-crash" if r.gateways >= 3 => {
            add("crash p99 outage ms", 300.0, p99(&outages))
        }
        "silent" => add(
            "silent-node p99 outage ms (hold + 500)",
            HOLD_MS + 500.0,
            p99(&outages),
        ),
        // A drain cannot lose 0 pings here: the router's hash-threshold
        // multipath moves flows of *every* gateway when one leaves, and a
        // moved client's first packet reaches a gateway without its
        // session (sessions are per node). The bound is the crash bound.
        "drain" => add("drain p99 outage ms", 300.0, p99(&outages)),
        "crash" | "leader-crash" | "gobgpd" | "uplink" => {
            add("failover p99 outage ms", 300.0, p99(&outages))
        }
        // The device loses every session with the process: restart,
        // reprogramming and a handshake; a rolling restart and a new
        // gateway rehash live flows.
        "wireguard-go" | "rolling-restart" | "add-gateway" => {
            add("rehash p99 outage ms", 1000.0, p99(&outages))
        }
        other => add(&format!("{other}: no outage bound defined"), 0.0, 1.0),
    }
    if !failbacks.is_empty() {
        add("failback p99 outage ms", 1000.0, p99(&failbacks));
    }
    b
}

/// A readable table of reports.
pub fn table(reports: &[Report]) -> String {
    let mut s = format!(
        "{:<16} {:>3} {:<8} {:>6} {:>9} {:>17} {:>6} {:>17} {:>6} {:>7} {:<5}\n",
        "drill",
        "gw",
        "mode",
        "target",
        "router ms",
        "outage ms max/p50",
        "lost",
        "failback ms max",
        "lost",
        "writes",
        "pass"
    );
    for r in reports {
        let o: Vec<f64> = r.clients.iter().map(|c| c.outage_ms).collect();
        let fb: Vec<f64> = r
            .clients
            .iter()
            .filter_map(|c| c.failback_outage_ms)
            .collect();
        let med = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(|a, b| a.total_cmp(b));
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        let max = |v: &[f64]| v.iter().copied().fold(0.0f64, f64::max);
        let a = &r.assists_fired;
        s.push_str(&format!(
            "{:<16} {:>3} {:<8} {:>6} {:>9} {:>17} {:>6} {:>17} {:>6} {:>7} {:>13} {:<5}\n",
            r.drill,
            r.gateways,
            if r.assists { "anygate" } else { "baseline" },
            r.target,
            r.router_ms.map_or("-".into(), |x| format!("{x:.0}")),
            format!("{:.0}/{:.0}", max(&o), med(&o)),
            r.clients.iter().map(|c| c.lost).sum::<u64>(),
            if fb.is_empty() {
                "-".into()
            } else {
                format!("{:.0}", max(&fb))
            },
            r.clients
                .iter()
                .filter_map(|c| c.failback_lost)
                .sum::<u64>(),
            format!("{}/{}", r.writes_acked - r.writes_lost, r.writes_acked),
            format!(
                "{}/{}/{}/{}",
                a.react_no_session, a.react_stalled, a.kick, a.flush_loser
            ),
            if r.pass { "ok" } else { "FAIL" },
        ));
        for b in r.bounds.iter().filter(|b| !b.ok) {
            s.push_str(&format!(
                "    broken: {} = {:.0} > {:.0}\n",
                b.what, b.value, b.limit
            ));
        }
        if let Some(e) = &r.error {
            s.push_str(&format!("    error: {e}\n"));
        }
    }
    s
}

/// Where drills keep their labs and reports (not inside the lab's own
/// directory, which `deploy/lab down` removes).
pub fn default_dir() -> PathBuf {
    PathBuf::from("/var/lib/anygate-drills")
}

/// A fresh random seed.
pub fn random_seed() -> u64 {
    rand::rngs::OsRng.gen()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping_d_lines() {
        assert_eq!(
            parse_reply(
                "[1732585200.123456] 64 bytes from 172.16.0.10: icmp_seq=5 ttl=63 time=0.512 ms"
            ),
            Some((5, 1732585200.123456))
        );
        assert_eq!(
            parse_reply("[1732585200.1] no answer yet for icmp_seq=6"),
            None
        );
        assert_eq!(
            parse_reply("PING 172.16.0.10 (172.16.0.10) 56(84) bytes of data."),
            None
        );
    }

    #[test]
    fn window_measures_the_gap_and_the_losses() {
        // Replies every 100 ms, seq 10..=14 missing (a 0.6 s gap).
        let r: Vec<(u64, f64)> = (0..30u64)
            .filter(|s| !(10..=14).contains(s))
            .map(|s| (s, 100.0 + s as f64 * 0.1))
            .collect();
        let (o, lost, ok) = window(&r, 100.95, 103.0, 0.1);
        assert!((o - 500.0).abs() < 1.0, "{o}");
        assert_eq!(lost, 5);
        assert!(ok);
        // No gap in a quiet window.
        let (o, lost, _) = window(&r, 102.05, 103.0, 0.1);
        assert!(o < 1.0 && lost == 0);
        // Nothing after the fault: not recovered, outage to the window end.
        let (o, _, ok) = window(&r[..5], 100.45, 101.5, 0.1);
        assert!(!ok && (o - 1000.0).abs() < 1.0, "{o}");
    }

    #[test]
    fn counts_what_the_gateways_did_from_their_metrics() {
        let metrics = "\
# HELP anygate_react_handshakes Handshakes started to clients ...
# TYPE anygate_react_handshakes counter
anygate_react_handshakes_total{reason=\"no_session\"} 3
anygate_react_handshakes_total{reason=\"stalled\"} 1
# TYPE anygate_loser_flushes counter
anygate_loser_flushes_total 2
anygate_takeover_kicks_total 1
anygate_reconcile_errors_total 9
# EOF
";
        assert_eq!(
            Assists::from_metrics(metrics),
            Assists {
                react_no_session: 3,
                react_stalled: 1,
                kick: 1,
                flush_loser: 2
            }
        );
    }

    #[test]
    fn device_peers_with_their_allowed_ips() {
        let out = "AAA=\t10.100.0.2/32 fd00::2/128\nBBB=\t(none)\n";
        let p = device_peers(out);
        assert_eq!(p["AAA="].len(), 2);
        assert!(p["BBB="].is_empty());
    }

    #[test]
    fn bounds_apply_to_assisted_runs_only() {
        let c = |o: f64, lost: u64| ClientResult {
            client: "c".into(),
            outage_ms: o,
            lost,
            failback_outage_ms: Some(200.0),
            failback_lost: Some(1),
            recovered: true,
        };
        let mut r = Report {
            drill: "crash".into(),
            gateways: 3,
            assists: true,
            seed: 1,
            target: 1,
            router_ms: Some(10.0),
            router_restore_ms: Some(3000.0),
            clients: vec![c(250.0, 2), c(0.0, 0), c(450.0, 4)],
            writes_acked: 10,
            writes_lost: 0,
            devices_match: true,
            lease_respected: None,
            assists_fired: Assists::default(),
            bounds: vec![],
            pass: false,
            error: None,
        };
        let b = bounds(&r);
        assert!(b
            .iter()
            .any(|x| x.what.starts_with("crash") && !x.ok && x.value == 450.0));
        assert!(b.iter().any(|x| x.what.starts_with("failback") && x.ok));
        r.assists = false;
        assert!(bounds(&r).iter().all(|x| x.ok));
        r.writes_lost = 1;
        assert!(bounds(&r).iter().any(|x| !x.ok));
    }
}
