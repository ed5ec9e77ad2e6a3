//! anygate-chaos: the lab, the failover drills and the benchmarks, all
//! against real processes (anygate, gobgpd, BIRD, wireguard-go).

pub mod etcd {
    #![allow(clippy::all)]
    tonic::include_proto!("etcdserverpb");
}

pub mod drill;
pub mod lab;
pub mod netns;
pub mod report;
pub mod router;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A child process killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn(cmd: &mut Command, log: &Path) -> anyhow::Result<Proc> {
    let f = std::fs::File::create(log)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()?;
    Ok(Proc(child))
}

/// Wait until a TCP connect to `addr` succeeds.
pub fn wait_listening(addr: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("{addr} did not start listening within {timeout:?}")
}

/// p50/p99/max of a latency sample, in milliseconds.
pub fn summary(h: &hdrhistogram::Histogram<u64>) -> (f64, f64, f64) {
    let ms = |v: u64| v as f64 / 1000.0;
    (
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
    )
}

/// A lazily connecting gRPC channel to a node.
pub fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("host:port")
        .connect_lazy()
}

/// Form a cluster over the API: init on the first node (id 1), then add
/// and promote the others in order (ids 2, 3, ...).
pub async fn form_cluster(addrs: &[String]) -> anyhow::Result<()> {
    form_cluster_with(addrs, &channel).await
}

/// `form_cluster` over channels made by `ch` (e.g. mutual TLS).
pub async fn form_cluster_with(
    addrs: &[String],
    ch: &dyn Fn(&str) -> tonic::transport::Channel,
) -> anyhow::Result<()> {
    use anygate_proto::v1::cluster_service_client::ClusterServiceClient;
    use anygate_proto::v1::{AddLearnerRequest, InitRequest, PromoteRequest};
    let mut cluster = ClusterServiceClient::new(ch(&addrs[0]));
    cluster.init(InitRequest {}).await?;
    for (i, addr) in addrs.iter().enumerate().skip(1) {
        let id = i as u64 + 1;
        cluster
            .add_learner(AddLearnerRequest {
                id,
                addr: addr.clone(),
            })
            .await?;
        cluster.promote(PromoteRequest { id }).await?;
    }
    Ok(())
}

/// Writes a benchmark's results as pretty JSON (the files `deploy/bench`
/// collects and `anygate-bench-report` turns into BENCHMARKS.md's tables).
pub fn write_json(path: &Path, doc: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(doc)? + "\n")
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}
