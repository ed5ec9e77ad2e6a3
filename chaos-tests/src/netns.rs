//! Network namespaces for benchmarks and drills: one hub namespace that
//! routes between N node namespaces (veth pairs created straight into their
//! namespaces, so no address ever appears in the root namespace). Routed, not
//! bridged, so it also works in the kernel VM, whose initramfs has no bridge
//! module. Everything is removed on drop.

use std::process::{Command, Stdio};

pub struct Topology {
    pub prefix: String,
    pub n: u32,
}

pub fn run(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Topology {
    /// Node K (1..=n) is 10.78.K.2/24 in namespace `{prefix}-nK`, the hub
    /// 10.78.K.1 on the other end.
    pub fn create(prefix: &str, n: u32) -> anyhow::Result<Topology> {
        let t = Topology {
            prefix: prefix.to_string(),
            n,
        };
        let hub = t.hub();
        run(&["ip", "netns", "add", &hub])?;
        run(&["ip", "-n", &hub, "link", "set", "lo", "up"])?;
        run(&[
            "ip",
            "netns",
            "exec",
            &hub,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])?;
        for k in 1..=n {
            let ns = t.ns(k);
            let hv = format!("h{k}");
            run(&["ip", "netns", "add", &ns])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            run(&[
                "ip", "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &hv,
                "netns", &hub,
            ])?;
            run(&[
                "ip",
                "-n",
                &hub,
                "addr",
                "add",
                &format!("10.78.{k}.1/24"),
                "dev",
                &hv,
            ])?;
            run(&["ip", "-n", &hub, "link", "set", &hv, "up"])?;
            run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.78.{k}.2/24"),
                "dev",
                "eth0",
            ])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run(&[
                "ip",
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &format!("10.78.{k}.1"),
            ])?;
        }
        Ok(t)
    }

    pub fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    pub fn ns(&self, k: u32) -> String {
        format!("{}-n{k}", self.prefix)
    }

    pub fn addr(&self, k: u32) -> String {
        format!("10.78.{k}.2")
    }

    /// `ip netns exec NS` + args, as a Command.
    pub fn exec(&self, ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for k in 1..=self.n {
            let _ = run(&["ip", "netns", "del", &self.ns(k)]);
        }
        let _ = run(&["ip", "netns", "del", &self.hub()]);
    }
}

/// Gateway K's config file in these topologies (the lab's too): AS 65010 at
/// 10.78.K.2, peering with the router at 10.78.K.1 in AS 65000. Callers
/// set what else their run needs and serialise it with `toml`.
pub fn gateway_config(k: u32) -> anygate_core::config::File {
    use anygate_core::config as file;
    file::File {
        bgp: Some(file::Bgp {
            asn: Some(65010),
            router_id: Some(format!("10.78.{k}.2")),
            neighbors: vec![file::Neighbor {
                address: format!("10.78.{k}.1"),
                peer_as: 65000,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}
