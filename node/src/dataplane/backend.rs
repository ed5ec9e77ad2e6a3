//! One interface over both real backends: the kernel (generic netlink, the
//! link created over rtnetlink) and a userspace WireGuard over its UAPI
//! socket, optionally a wireguard-go this node starts and supervises (it dies
//! with the node: PR_SET_PDEATHSIG through setpriv).

use super::kernel::KernelWg;
use super::net::NetManager;
use super::uapi::UapiClient;
use super::{Action, DataplaneError, Observed};
use crate::config::{BackendKind, DataplaneConfig};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tracing::{info, warn};

pub enum Device {
    Kernel(KernelWg),
    Userspace {
        uapi: UapiClient,
        /// Set when this node runs wireguard-go itself.
        supervised: Option<Box<Supervised>>,
    },
}

pub struct Supervised {
    bin: PathBuf,
    ifname: String,
    child: Option<tokio::process::Child>,
    restarts: u64,
    next_start: Instant,
    backoff: Duration,
}

impl Device {
    /// Which backend `auto` resolves to on this host.
    pub fn resolve(kind: BackendKind) -> BackendKind {
        match kind {
            BackendKind::Auto if KernelWg::module_present() => BackendKind::Kernel,
            BackendKind::Auto => BackendKind::Userspace,
            k => k,
        }
    }

    pub fn open(cfg: &DataplaneConfig, ifname: &str) -> Result<Device, DataplaneError> {
        match Device::resolve(cfg.backend) {
            BackendKind::Kernel => Ok(Device::Kernel(KernelWg::new(ifname)?)),
            BackendKind::Userspace => {
                let sock = cfg
                    .uapi_socket
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(format!("/var/run/wireguard/{ifname}.sock")));
                Ok(Device::Userspace {
                    uapi: UapiClient::new(sock),
                    supervised: cfg.wireguard_go.clone().map(|bin| {
                        Box::new(Supervised {
                            bin,
                            ifname: ifname.to_string(),
                            child: None,
                            restarts: 0,
                            next_start: Instant::now(),
                            backoff: Duration::from_millis(200),
                        })
                    }),
                })
            }
            BackendKind::None | BackendKind::Auto => Err(DataplaneError::Protocol(
                "no dataplane backend configured".into(),
            )),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Device::Kernel(_) => "kernel",
            Device::Userspace {
                supervised: Some(_),
                ..
            } => "userspace (supervised wireguard-go)",
            Device::Userspace { .. } => "userspace",
        }
    }

    /// Make sure the device exists: create the kernel link, or (re)start a
    /// supervised wireguard-go. Returns true when the device is new (empty),
    /// so the caller knows a full program is due.
    pub async fn ensure(&mut self, net: &NetManager, ifname: &str) -> Result<bool, DataplaneError> {
        match self {
            Device::Kernel(_) => {
                let exists = net
                    .link_index(ifname)
                    .await
                    .map_err(|e| DataplaneError::Protocol(e.to_string()))?
                    .is_some();
                if !exists {
                    net.create_wireguard_link(ifname)
                        .await
                        .map_err(|e| DataplaneError::Protocol(e.to_string()))?;
                    info!(ifname, "created kernel WireGuard link");
                }
                Ok(!exists)
            }
            Device::Userspace {
                uapi,
                supervised: Some(s),
            } => s.ensure(uapi).await,
            Device::Userspace { .. } => Ok(false),
        }
    }

    /// A handle that reads the device concurrently with changes to it. The
    /// kernel reader gets its own netlink socket, so a long dump never
    /// queues a write's acknowledgement behind it.
    pub fn reader(&self) -> Reader {
        match self {
            Device::Kernel(k) => Reader::Kernel(k.separate().unwrap_or_else(|_| k.clone())),
            Device::Userspace { uapi, .. } => Reader::Userspace(uapi.clone()),
        }
    }

    pub async fn get(&self) -> Result<Observed, DataplaneError> {
        match self {
            Device::Kernel(k) => k.get().await,
            Device::Userspace { uapi, .. } => uapi.get().await,
        }
    }

    /// A cheap liveness check, run far more often than a full read: the
    /// kernel link exists, or the UAPI socket accepts a connection.
    /// `Err` names what is missing.
    pub fn alive(&self) -> Result<(), String> {
        match self {
            Device::Kernel(k) => {
                let p = std::path::Path::new("/sys/class/net").join(k.ifname());
                if p.exists() {
                    Ok(())
                } else {
                    Err(format!("WireGuard link {} is gone", k.ifname()))
                }
            }
            Device::Userspace { uapi, .. } => std::os::unix::net::UnixStream::connect(uapi.path())
                .map(drop)
                .map_err(|e| format!("{}: {e}", uapi.path().display())),
        }
    }

    pub async fn set(&self, actions: &[Action]) -> Result<(), DataplaneError> {
        if actions.is_empty() {
            return Ok(());
        }
        match self {
            Device::Kernel(k) => k.set(actions).await,
            Device::Userspace { uapi, .. } => uapi.set(actions).await,
        }
    }

    /// Stop a supervised wireguard-go (its device goes with it).
    pub async fn shutdown(&mut self) {
        if let Device::Userspace {
            supervised: Some(s),
            ..
        } = self
        {
            if let Some(mut c) = s.child.take() {
                let _ = c.kill().await;
            }
        }
    }
}

#[derive(Clone)]
pub enum Reader {
    Kernel(KernelWg),
    Userspace(UapiClient),
}

impl Reader {
    pub async fn get(&self) -> Result<Observed, DataplaneError> {
        match self {
            Reader::Kernel(k) => k.get().await,
            Reader::Userspace(u) => u.get().await,
        }
    }
}

impl Supervised {
    async fn ensure(&mut self, uapi: &UapiClient) -> Result<bool, DataplaneError> {
        if let Some(c) = &mut self.child {
            match c.try_wait() {
                Ok(None) => return Ok(false),
                Ok(Some(st)) => {
                    warn!(ifname = %self.ifname, status = %st, "wireguard-go exited; restarting");
                    self.child = None;
                }
                Err(e) => warn!(error = %e, "wireguard-go: wait failed"),
            }
        }
        if Instant::now() < self.next_start {
            return Err(DataplaneError::Protocol(format!(
                "wireguard-go for {} is down; restart in {:?}",
                self.ifname,
                self.next_start - Instant::now()
            )));
        }
        // A socket left by a dead wireguard-go would refuse the new one.
        let _ = std::fs::remove_file(uapi.path());
        // setpriv (util-linux) sets PR_SET_PDEATHSIG and execs wireguard-go:
        // it dies with this process, even on kill -9 of the node, so a dead
        // node never leaves a live device behind.
        let mut cmd = tokio::process::Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--"])
            .arg(&self.bin)
            .args(["-f", &self.ifname])
            .env("LOG_LEVEL", "error")
            // Without it, wireguard-go prints a banner (or refuses) when the
            // kernel has WireGuard; choosing userspace there is deliberate.
            .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            // It prints a banner about the kernel module; its state is
            // watched through the UAPI socket instead.
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| DataplaneError::Io {
            path: self.bin.display().to_string(),
            source: e,
        })?;
        info!(ifname = %self.ifname, pid = child.id(), restarts = self.restarts, "started wireguard-go");
        self.child = Some(child);
        self.restarts += 1;
        self.next_start = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(10));
        // Wait for its UAPI socket (it appears within milliseconds).
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if uapi.get().await.is_ok() {
                self.backoff = Duration::from_millis(200);
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(DataplaneError::Protocol(format!(
            "wireguard-go started but {} did not answer within 5 s",
            uapi.path().display()
        )))
    }
}
