//! `anygate-bench`: the inventory write benchmark. Three `anygate` nodes on
//! loopback (durable: every log append is fsynced) against a three-member
//! etcd on loopback on the same disk, same client pattern, same record sizes.
//!
//! Measures single-client commit latency (one peer per request, sequential)
//! and batched import throughput (N peers per request, sequential), and prints
//! a Markdown table plus one JSON line.

use anygate_chaos::etcd::kv_client::KvClient;
use anygate_chaos::etcd::{request_op, PutRequest, RequestOp, TxnRequest};
use anygate_chaos::{channel, form_cluster_with, free_port, spawn, summary, wait_listening, Proc};
use anygate_proto::v1::peer_service_client::PeerServiceClient;
use anygate_proto::v1::pool_service_client::PoolServiceClient;
use anygate_proto::v1::*;
use base64::Engine;
use clap::Parser;
use hdrhistogram::Histogram;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "anygate vs etcd: durable inventory writes on 3 loopback nodes")]
struct Args {
    /// Directory for both systems' data (put it on the disk you care about).
    #[arg(long, default_value = "/var/tmp/anygate-bench")]
    work_dir: PathBuf,
    /// The anygate binary (default: next to this one).
    #[arg(long)]
    anygate: Option<PathBuf>,
    #[arg(long, default_value = "etcd")]
    etcd: String,
    /// Sequential single-peer writes measured (after 100 warm-up writes).
    #[arg(long, default_value_t = 2000)]
    single: usize,
    /// Peers imported in the batched phase.
    #[arg(long, default_value_t = 50_000)]
    total: usize,
    /// Peers per batch.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Skip etcd.
    #[arg(long)]
    no_etcd: bool,
    /// Run anygate with mutual TLS on every connection (client and Raft),
    /// as production does, instead of plaintext like the etcd beside it.
    #[arg(long)]
    tls: bool,
    /// Also write the results here as JSON (what `deploy/bench` collects).
    #[arg(long)]
    json: Option<PathBuf>,
}

fn key(i: u64) -> String {
    // Deterministic distinct 32-byte keys (the benchmark does not need real curve points).
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&i.to_be_bytes());
    b[31] = 0xab;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn spec(i: u64) -> PeerSpec {
    PeerSpec {
        public_key: key(i),
        user: format!("user{:06}", i / 4),
        device: format!("dev{}", i % 4),
        group: "bench".into(),
        pool: "bench".into(),
        ..Default::default()
    }
}

struct Result {
    system: &'static str,
    p50: f64,
    p99: f64,
    max: f64,
    peers_per_s: f64,
}

async fn bench_anygate(a: &Args, dir: &std::path::Path) -> anyhow::Result<(Result, Vec<Proc>)> {
    let bin = a
        .anygate
        .clone()
        .unwrap_or_else(|| std::env::current_exe().unwrap().with_file_name("anygate"));
    let addrs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    // With --tls: a CA, one node certificate for 127.0.0.1, an admin.
    let tls = if a.tls {
        use anygate_proto::pki;
        use anygate_proto::tls::Role;
        let pki_dir = dir.join("pki");
        std::fs::create_dir_all(&pki_dir)?;
        let ca = pki::new_ca("bench CA", Duration::from_secs(86_400))?;
        std::fs::write(pki_dir.join("ca.pem"), &ca.cert)?;
        let day = Duration::from_secs(86_400);
        for (name, role, sans) in [
            ("node", Role::Node, vec!["127.0.0.1".to_string()]),
            ("admin", Role::Admin, vec![]),
        ] {
            let p = pki::issue(&ca, &pki::Request::new(name, role, sans, day))?;
            std::fs::write(pki_dir.join(format!("{name}.pem")), p.cert)?;
            let key = pki_dir.join(format!("{name}.key"));
            std::fs::write(&key, p.key)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        }
        Some(pki_dir)
    } else {
        None
    };
    let mut procs = vec![];
    for (i, addr) in addrs.iter().enumerate() {
        let id = (i + 1).to_string();
        let data = dir.join(format!("anygate{id}"));
        let mut cmd = Command::new(&bin);
        match &tls {
            Some(p) => cmd
                .arg("--tls-ca")
                .arg(p.join("ca.pem"))
                .arg("--tls-cert")
                .arg(p.join("node.pem"))
                .arg("--tls-key")
                .arg(p.join("node.key")),
            // Plaintext, as etcd is run here: the comparison is of the
            // replicated write path.
            None => cmd.arg("--insecure-dev"),
        };
        procs.push(spawn(
            cmd.args([
                "--id",
                &id,
                "--listen",
                addr,
                "--log-level",
                "warn",
                "--dataplane-backend",
                "none",
                // The bench is one client pushing as hard as it can.
                "--write-rate",
                "1000000",
                "--data-dir",
            ])
            .arg(&data),
            &dir.join(format!("anygate{id}.log")),
        )?);
        wait_listening(addr, Duration::from_secs(20))?;
    }
    let client_tls = match &tls {
        Some(p) => Some(anygate_proto::tls::Tls::load(anygate_proto::tls::Paths {
            ca: p.join("ca.pem"),
            cert: p.join("admin.pem"),
            key: p.join("admin.key"),
        })?),
        None => None,
    };
    let ch = move |addr: &str| match &client_tls {
        Some(t) => anygate_proto::tls::channel(addr, Some(t.clone()), Duration::from_secs(2))
            .expect("host:port"),
        None => channel(addr),
    };
    form_cluster_with(&addrs, &ch).await?;
    PoolServiceClient::new(ch(&addrs[0]))
        .add_pool(AddPoolRequest {
            pool: Some(Pool {
                name: "bench".into(),
                cidrs: vec!["10.0.0.0/8".into()],
                group: "bench".into(),
                ..Default::default()
            }),
        })
        .await?;
    // Writes go to the leader, as they go to etcd's (no forwarding hop).
    let status =
        anygate_proto::v1::cluster_service_client::ClusterServiceClient::new(ch(&addrs[0]))
            .status(StatusRequest {})
            .await?
            .into_inner();
    let leader = status
        .nodes
        .iter()
        .find(|n| n.id == status.leader_id)
        .map(|n| n.addr.clone())
        .ok_or_else(|| anyhow::anyhow!("no anygate leader after forming the cluster"))?;
    eprintln!(
        "anygate: writing to the leader, node {} at {leader}",
        status.leader_id
    );
    let mut peers = PeerServiceClient::new(ch(&leader)).max_decoding_message_size(usize::MAX);
    let mut n = 0u64;
    for _ in 0..100 {
        peers
            .add_peers(AddPeersRequest {
                peers: vec![spec(n)],
            })
            .await?;
        n += 1;
    }
    let mut h = Histogram::<u64>::new(3)?;
    for _ in 0..a.single {
        let t = Instant::now();
        peers
            .add_peers(AddPeersRequest {
                peers: vec![spec(n)],
            })
            .await?;
        h.record(t.elapsed().as_micros() as u64)?;
        n += 1;
    }
    let t = Instant::now();
    let mut done = 0;
    while done < a.total {
        let k = a.batch.min(a.total - done);
        let batch: Vec<PeerSpec> = (0..k as u64).map(|j| spec(n + j)).collect();
        peers.add_peers(AddPeersRequest { peers: batch }).await?;
        n += k as u64;
        done += k;
    }
    let rate = a.total as f64 / t.elapsed().as_secs_f64();
    let (p50, p99, max) = summary(&h);
    Ok((
        Result {
            system: if a.tls {
                "anygate (mutual TLS)"
            } else {
                "anygate"
            },
            p50,
            p99,
            max,
            peers_per_s: rate,
        },
        procs,
    ))
}

/// The client URL of etcd's leader (`etcdctl endpoint status`).
fn etcd_leader(urls: &[String]) -> anyhow::Result<String> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "endpoint",
            "status",
            "-w",
            "json",
            "--endpoints",
            &urls.join(","),
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "etcdctl endpoint status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v.as_array()
        .into_iter()
        .flatten()
        .find(|e| {
            let s = &e["Status"];
            s["leader"].as_u64().is_some() && s["leader"] == s["header"]["member_id"]
        })
        .and_then(|e| e["Endpoint"].as_str().map(String::from))
        .ok_or_else(|| anyhow::anyhow!("no etcd member says it leads: {v}"))
}

async fn bench_etcd(a: &Args, dir: &std::path::Path) -> anyhow::Result<(Result, Vec<Proc>)> {
    let client: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peer: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let initial = (0..3)
        .map(|i| format!("e{i}=http://127.0.0.1:{}", peer[i]))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = vec![];
    for i in 0..3 {
        let c = format!("http://127.0.0.1:{}", client[i]);
        let p = format!("http://127.0.0.1:{}", peer[i]);
        procs.push(spawn(
            Command::new(&a.etcd)
                .args(["--name", &format!("e{i}"), "--data-dir"])
                .arg(dir.join(format!("etcd{i}")))
                .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
                .args([
                    "--listen-peer-urls",
                    &p,
                    "--initial-advertise-peer-urls",
                    &p,
                ])
                .args([
                    "--initial-cluster",
                    &initial,
                    "--initial-cluster-state",
                    "new",
                ])
                .args([
                    "--max-txn-ops",
                    &a.batch.max(128).to_string(),
                    "--max-request-bytes",
                    "33554432",
                ])
                .args(["--quota-backend-bytes", "8589934592", "--log-level", "warn"]),
            &dir.join(format!("etcd{i}.log")),
        )?);
    }
    for c in &client {
        wait_listening(&format!("127.0.0.1:{c}"), Duration::from_secs(20))?;
    }
    let urls: Vec<String> = client
        .iter()
        .map(|c| format!("http://127.0.0.1:{c}"))
        .collect();
    let ep = tonic::transport::Endpoint::from_shared(urls[0].clone())?
        .connect()
        .await?;
    let mut kv = KvClient::new(ep).max_encoding_message_size(usize::MAX);
    let put = |i: u64| {
        let s = spec(i);
        let value = serde_json::to_vec(&s).expect("serialisable");
        PutRequest {
            key: format!("/anygate/peers/{}", s.public_key).into_bytes(),
            value,
            ..Default::default()
        }
    };
    // Wait for a leader: the first put retries until the cluster is up.
    let deadline = Instant::now() + Duration::from_secs(20);
    while kv.put(put(u64::MAX)).await.is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "etcd cluster did not accept a write within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Writes go to the leader (a follower would forward each one).
    let leader = etcd_leader(&urls)?;
    eprintln!("etcd: writing to the leader at {leader}");
    let mut kv = KvClient::new(
        tonic::transport::Endpoint::from_shared(leader)?
            .connect()
            .await?,
    )
    .max_encoding_message_size(usize::MAX);
    let mut n = 0u64;
    for _ in 0..100 {
        kv.put(put(n)).await?;
        n += 1;
    }
    let mut h = Histogram::<u64>::new(3)?;
    for _ in 0..a.single {
        let t = Instant::now();
        kv.put(put(n)).await?;
        h.record(t.elapsed().as_micros() as u64)?;
        n += 1;
    }
    let t = Instant::now();
    let mut done = 0;
    while done < a.total {
        let k = a.batch.min(a.total - done);
        let success = (0..k as u64)
            .map(|j| RequestOp {
                request: Some(request_op::Request::RequestPut(put(n + j))),
            })
            .collect();
        kv.txn(TxnRequest {
            success,
            failure: vec![],
        })
        .await?;
        n += k as u64;
        done += k;
    }
    let rate = a.total as f64 / t.elapsed().as_secs_f64();
    let (p50, p99, max) = summary(&h);
    Ok((
        Result {
            system: "etcd",
            p50,
            p99,
            max,
            peers_per_s: rate,
        },
        procs,
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let dir = a.work_dir.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut results = vec![];
    {
        let (r, _procs) = bench_anygate(&a, &dir).await?;
        results.push(r);
    }
    if !a.no_etcd {
        let (r, _procs) = bench_etcd(&a, &dir).await?;
        results.push(r);
    }
    println!("| system | single write p50 (ms) | p99 (ms) | max (ms) | batched import (peers/s, batch {}) |", a.batch);
    println!("| --- | --- | --- | --- | --- |");
    for r in &results {
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.0} |",
            r.system, r.p50, r.p99, r.max, r.peers_per_s
        );
    }
    if let [g, e] = &results[..] {
        println!(
            "\nratio anygate/etcd: p50 {:.2}x, p99 {:.2}x (lower is better); throughput {:.2}x (higher is better)",
            g.p50 / e.p50,
            g.p99 / e.p99,
            g.peers_per_s / e.peers_per_s
        );
    }
    let json: Vec<_> = results
        .iter()
        .map(|r| serde_json::json!({"system": r.system, "p50_ms": r.p50, "p99_ms": r.p99, "max_ms": r.max, "peers_per_s": r.peers_per_s}))
        .collect();
    let doc = serde_json::json!({"single": a.single, "total": a.total, "batch": a.batch, "tls": a.tls, "results": json});
    println!("{doc}");
    if let Some(path) = &a.json {
        anygate_chaos::write_json(path, &doc)?;
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
