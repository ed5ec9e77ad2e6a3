//! anygate-chaos: drills and benchmarks against real processes. For now it
//! holds the process helpers the inventory benchmark uses; the failover
//! drills of the lab build on them.

pub mod etcd {
    #![allow(clippy::all)]
    tonic::include_proto!("etcdserverpb");
}

pub mod netns;

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
