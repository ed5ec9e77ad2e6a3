//! One interface over both real backends: the kernel (generic netlink, the
//! link created over rtnetlink) and a userspace WireGuard over its UAPI
//! socket, optionally a wireguard-go this node starts and supervises (it dies
//! with the node: PR_SET_PDEATHSIG through setpriv).

use super::kernel::KernelWg;
use super::uapi::UapiClient;
use super::{Action, DataplaneError, Observed};
use crate::config::{BackendKind, DataplaneConfig};
use crate::host::net::NetManager;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tracing::info;

pub enum Device {
    Kernel(KernelWg),
    Userspace {
        uapi: UapiClient,
        /// Set when this node runs wireguard-go itself.
        supervised: Option<Box<Supervised>>,
    },
}

pub struct Supervised {
    ifname: String,
    child: crate::child::Supervisor,
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
                            ifname: ifname.to_string(),
                            child: crate::child::Supervisor::new("wireguard-go", bin),
                        })
                    }),
                })
            }
            BackendKind::None | BackendKind::Auto => Err(DataplaneError::Protocol(
                "no dataplane backend configured".into(),
            )),
        }
    }

    /// The backend, and whether wireguard-go is this node's child.
    pub fn backend(&self) -> (crate::health::Backend, bool) {
        match self {
            Device::Kernel(_) => (crate::health::Backend::Kernel, false),
            Device::Userspace { supervised, .. } => {
                (crate::health::Backend::Userspace, supervised.is_some())
            }
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
    pub fn alive(&self) -> Result<(), DataplaneError> {
        match self {
            Device::Kernel(k) => {
                let p = std::path::Path::new("/sys/class/net").join(k.ifname());
                if p.exists() {
                    Ok(())
                } else {
                    Err(DataplaneError::Gone(k.ifname().to_string()))
                }
            }
            Device::Userspace { uapi, .. } => std::os::unix::net::UnixStream::connect(uapi.path())
                .map(drop)
                .map_err(|source| DataplaneError::Io {
                    path: uapi.path().display().to_string(),
                    source,
                }),
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
            s.child.stop().await;
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
        if self.child.running() {
            return Ok(false);
        }
        let wait = self.child.start_in();
        if !wait.is_zero() {
            return Err(DataplaneError::Protocol(format!(
                "wireguard-go for {} is down; restart in {wait:?}",
                self.ifname
            )));
        }
        // A socket left by a dead wireguard-go would refuse the new one.
        let _ = std::fs::remove_file(uapi.path());
        let ifname = self.ifname.clone();
        let program = self.child.program().display().to_string();
        self.child
            .start(|cmd| {
                cmd.args(["-f", &ifname])
                    .env("LOG_LEVEL", "error")
                    // Without it, wireguard-go prints a banner (or refuses)
                    // when the kernel has WireGuard; choosing userspace
                    // there is deliberate.
                    .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
                    // Its state is watched through the UAPI socket.
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null());
            })
            .map_err(|e| DataplaneError::Io {
                path: program,
                source: e,
            })?;
        // Wait for its UAPI socket (it appears within milliseconds).
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if uapi.get().await.is_ok() {
                self.child.healthy();
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
