//! Access policies: which internal destinations the peers of a group may
//! reach. The cluster default is deny; a policy allows. Validated here
//! (pure), enforced by every node with nftables (the node's host/policy.rs).

use super::ParseError;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The group name that means every peer.
pub const ALL_GROUPS: &str = "*";
pub const MAX_DESTINATIONS: usize = 256;
pub const MAX_PORTS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
}

impl Protocol {
    pub fn parse(s: &str) -> Result<Option<Protocol>, String> {
        match s {
            "" | "any" => Ok(None),
            "tcp" => Ok(Some(Protocol::Tcp)),
            "udp" => Ok(Some(Protocol::Udp)),
            "icmp" => Ok(Some(Protocol::Icmp)),
            _ => Err(format!("protocol {s:?} is not one of: any, tcp, udp, icmp")),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        }
    }
}

/// A policy that breaks a rule of [`Policy::validate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy name {0:?}: 1-64 characters of A-Z a-z 0-9 - _ .")]
    Name(String),
    #[error("group: 1-64 characters (or * for every peer)")]
    Group,
    #[error("at least one destination (CIDR) is needed")]
    NoDestination,
    #[error("at most {MAX_DESTINATIONS} destinations")]
    TooManyDestinations,
    #[error("at most {MAX_PORTS} ports or ranges")]
    TooManyPorts,
    #[error("ports need protocol tcp or udp")]
    PortsNeedTcpOrUdp,
}

/// A port or an inclusive range of ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRange(pub u16, pub u16);

impl PortRange {
    pub fn parse(s: &str) -> Result<PortRange, ParseError> {
        let p = |x: &str| {
            x.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| ParseError::Port(x.to_string()))
        };
        let r = match s.split_once('-') {
            Some((a, b)) => PortRange(p(a)?, p(b)?),
            None => {
                let x = p(s)?;
                PortRange(x, x)
            }
        };
        if r.0 > r.1 {
            return Err(ParseError::BackwardRange(s.to_string()));
        }
        Ok(r)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == self.1 {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{}-{}", self.0, self.1)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub name: String,
    /// Peer group this applies to, or `*` for every peer.
    pub group: String,
    pub destinations: Vec<IpNet>,
    /// None: any protocol.
    pub protocol: Option<Protocol>,
    /// Destination ports (tcp/udp only); empty: all ports.
    pub ports: Vec<PortRange>,
    /// Log index that created it (set by apply).
    #[serde(default)]
    pub revision: u64,
}

impl Policy {
    /// Syntax and limits (state-free checks).
    pub fn validate(&self) -> Result<(), PolicyError> {
        let n = &self.name;
        if n.is_empty()
            || n.len() > 64
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(PolicyError::Name(n.clone()));
        }
        if self.group.is_empty() || self.group.len() > 64 {
            return Err(PolicyError::Group);
        }
        if self.destinations.is_empty() {
            return Err(PolicyError::NoDestination);
        }
        if self.destinations.len() > MAX_DESTINATIONS {
            return Err(PolicyError::TooManyDestinations);
        }
        if self.ports.len() > MAX_PORTS {
            return Err(PolicyError::TooManyPorts);
        }
        if !self.ports.is_empty() && !matches!(self.protocol, Some(Protocol::Tcp | Protocol::Udp)) {
            return Err(PolicyError::PortsNeedTcpOrUdp);
        }
        Ok(())
    }

    /// "10.1.0.0/24 tcp/22,443" for tables and `peer show`.
    pub fn describe(&self) -> String {
        let dst: Vec<String> = self.destinations.iter().map(|d| d.to_string()).collect();
        let proto = match (self.protocol, self.ports.is_empty()) {
            (None, _) => "any".to_string(),
            (Some(p), true) => p.as_str().to_string(),
            (Some(p), false) => format!(
                "{}/{}",
                p.as_str(),
                self.ports
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        };
        format!("{} {proto}", dst.join(","))
    }

    pub fn applies_to(&self, group: &str) -> bool {
        self.group == ALL_GROUPS || self.group == group
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pol(proto: Option<Protocol>, ports: Vec<PortRange>) -> Policy {
        Policy {
            name: "web".into(),
            group: "eng".into(),
            destinations: vec!["10.1.0.0/24".parse().unwrap()],
            protocol: proto,
            ports,
            revision: 0,
        }
    }

    #[test]
    fn validation() {
        assert!(pol(Some(Protocol::Tcp), vec![PortRange(22, 22)])
            .validate()
            .is_ok());
        assert!(pol(None, vec![]).validate().is_ok());
        assert!(pol(None, vec![PortRange(22, 22)]).validate().is_err());
        assert!(pol(Some(Protocol::Icmp), vec![PortRange(1, 2)])
            .validate()
            .is_err());
        let mut p = pol(None, vec![]);
        p.name = "a b".into();
        assert!(p.validate().is_err());
        p.name = "ok".into();
        p.destinations.clear();
        assert!(p.validate().is_err());
        assert_eq!(PortRange::parse("8000-8080"), Ok(PortRange(8000, 8080)));
        assert!(PortRange::parse("9-1").is_err());
        assert!(PortRange::parse("0").is_err());
        assert_eq!(
            pol(
                Some(Protocol::Tcp),
                vec![PortRange(22, 22), PortRange(8000, 8080)]
            )
            .describe(),
            "10.1.0.0/24 tcp/22,8000-8080"
        );
    }
}
