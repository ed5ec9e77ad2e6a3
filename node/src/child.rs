//! The node's child processes (gobgpd, wireguard-go): one supervisor for
//! both. A child runs under PR_SET_PDEATHSIG (through util-linux's
//! `setpriv`), so it dies with the node even on `kill -9` — a dead node
//! never leaves a BGP session or a device behind — and is killed when its
//! handle is dropped. Restarts back off from 200 ms to 10 s; a child that
//! came up healthy resets the backoff.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tracing::{info, warn};

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub struct Supervisor {
    /// For logs: "gobgpd", "wireguard-go".
    name: &'static str,
    program: PathBuf,
    child: Option<Child>,
    starts: u64,
    next_start: Instant,
    backoff: Duration,
}

impl Supervisor {
    pub fn new(name: &'static str, program: PathBuf) -> Supervisor {
        Supervisor {
            name,
            program,
            child: None,
            starts: 0,
            next_start: Instant::now(),
            backoff: FIRST_BACKOFF,
        }
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Times the child was started again after its first start.
    pub fn restarts(&self) -> u64 {
        self.starts.saturating_sub(1)
    }

    /// The child is running (an exited child is reaped and logged).
    pub fn running(&mut self) -> bool {
        let Some(c) = &mut self.child else {
            return false;
        };
        match c.try_wait() {
            Ok(None) => true,
            Ok(Some(st)) => {
                warn!(child = self.name, status = %st, "child exited");
                self.child = None;
                false
            }
            Err(e) => {
                warn!(child = self.name, error = %e, "cannot wait for child");
                true
            }
        }
    }

    /// How long until the backoff allows the next start (zero: now).
    pub fn start_in(&self) -> Duration {
        self.next_start.saturating_duration_since(Instant::now())
    }

    /// Start the child: `setpriv --pdeathsig KILL -- PROGRAM`, with the
    /// arguments, environment and stdio that `configure` sets.
    pub fn start(&mut self, configure: impl FnOnce(&mut Command)) -> std::io::Result<&mut Child> {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--"])
            .arg(&self.program)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        configure(&mut cmd);
        let child = cmd.spawn()?;
        info!(
            child = self.name,
            pid = child.id(),
            restarts = self.starts,
            "started"
        );
        self.starts += 1;
        self.next_start = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Ok(self.child.insert(child))
    }

    /// The child came up and answers: the next failure starts over from
    /// the shortest backoff.
    pub fn healthy(&mut self) {
        self.backoff = FIRST_BACKOFF;
    }

    /// Wait until the running child exits (forever when none runs).
    pub async fn exited(&mut self) -> Option<ExitStatus> {
        match self.child.as_mut() {
            Some(c) => {
                let st = c.wait().await.ok();
                self.child = None;
                st
            }
            None => std::future::pending().await,
        }
    }

    /// Kill the child, if one runs.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }
}
