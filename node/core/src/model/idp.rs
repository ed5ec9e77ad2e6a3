//! Identity-provider group mappings: what a group the company's identity
//! provider puts in a user's token (the configured groups claim) means here.
//! A mapping may put the user's enrolled devices into an anygate group (so
//! the group's access policies apply), give the user a console role, or
//! both, and sets the limits of self-service enrollment for its members:
//! how long an enrolled config lives before it must be renewed by signing
//! in again, how many devices one user may enroll, and whether the token
//! must show multi-factor authentication. A user whose groups map to
//! nothing gets nothing (default deny). Validated here (pure).

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// IdP group names: any printable text up to this many bytes (providers
/// use names, paths such as `/staff/eng`, or GUIDs).
pub const CLAIM_BYTES: usize = 256;
/// Mappings in the cluster.
pub const MAX_MAPPINGS: usize = 1_000;
/// The shortest and longest config lifetime a mapping may give.
pub const MIN_LIFETIME: Duration = Duration::from_secs(10 * 60);
pub const MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Without `--lifetime`: half a day, renewed by signing in again.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Devices one user may enroll through a mapping (1-MAX_DEVICES).
pub const MAX_DEVICES: u32 = 100;
pub const DEFAULT_MAX_DEVICES: u32 = 5;

/// The console role a mapping grants (never a node's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleRole {
    Viewer,
    Operator,
    Admin,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdpMapping {
    /// The group as the identity provider names it in the groups claim.
    pub claim: String,
    /// The anygate group members' enrolled devices join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The console role members get.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<ConsoleRole>,
    /// How long an enrolled config lives (ms) before signing in again must
    /// renew it.
    pub lifetime_ms: u64,
    /// Devices one user may enroll.
    pub max_devices: u32,
    /// The token must show multi-factor authentication (`amr` contains
    /// `mfa`, `otp`, `hwk`, `swk` or `fido`, or the configured `acr`).
    #[serde(default)]
    pub require_mfa: bool,
    /// Raft log index that wrote the mapping (0 until applied).
    #[serde(default)]
    pub revision: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdpError {
    #[error("the IdP group is required")]
    NoClaim,
    #[error("the IdP group is {0} bytes; at most {CLAIM_BYTES} are allowed")]
    ClaimTooLong(usize),
    #[error("the IdP group contains a control character")]
    ClaimControl,
    #[error("a mapping must give a group (--group), a role (--role) or both")]
    Nothing,
    #[error("group: 1-128 bytes, printable, not \"*\"")]
    Group,
    #[error("lifetime {0}: between 10 minutes and 365 days")]
    Lifetime(String),
    #[error("max devices {0}: between 1 and {MAX_DEVICES}")]
    MaxDevices(u32),
}

impl IdpMapping {
    /// A mapping with the default limits.
    pub fn new(claim: &str) -> IdpMapping {
        IdpMapping {
            claim: claim.to_string(),
            group: None,
            role: None,
            lifetime_ms: DEFAULT_LIFETIME.as_millis() as u64,
            max_devices: DEFAULT_MAX_DEVICES,
            require_mfa: false,
            revision: 0,
        }
    }

    pub fn validate(&self) -> Result<(), IdpError> {
        check_claim(&self.claim)?;
        if self.group.is_none() && self.role.is_none() {
            return Err(IdpError::Nothing);
        }
        if let Some(g) = &self.group {
            let bad = g.is_empty()
                || g.len() > super::limits::NAME_BYTES
                || g == super::policy::ALL_GROUPS
                || g.chars().any(char::is_control);
            if bad {
                return Err(IdpError::Group);
            }
        }
        let life = Duration::from_millis(self.lifetime_ms);
        if !(MIN_LIFETIME..=MAX_LIFETIME).contains(&life) {
            return Err(IdpError::Lifetime(
                humantime_serde::re::humantime::format_duration(life).to_string(),
            ));
        }
        if !(1..=MAX_DEVICES).contains(&self.max_devices) {
            return Err(IdpError::MaxDevices(self.max_devices));
        }
        Ok(())
    }
}

pub fn check_claim(claim: &str) -> Result<(), IdpError> {
    if claim.is_empty() {
        return Err(IdpError::NoClaim);
    }
    if claim.len() > CLAIM_BYTES {
        return Err(IdpError::ClaimTooLong(claim.len()));
    }
    if claim.chars().any(char::is_control) {
        return Err(IdpError::ClaimControl);
    }
    Ok(())
}

/// What a user with these IdP groups gets: the anygate groups their devices
/// join, the highest console role, and the strictest enrollment limits of
/// the mappings that matched (shortest lifetime, fewest devices, MFA if any
/// demands it). None: no mapping matched (default deny). Pure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub groups: Vec<String>,
    pub role: Option<ConsoleRole>,
    pub lifetime_ms: u64,
    pub max_devices: u32,
    pub require_mfa: bool,
}

pub fn grant<'a>(
    mappings: impl IntoIterator<Item = &'a IdpMapping>,
    user_groups: &[String],
) -> Option<Grant> {
    let mut out: Option<Grant> = None;
    for m in mappings {
        if !user_groups.contains(&m.claim) {
            continue;
        }
        let g = out.get_or_insert(Grant {
            groups: Vec::new(),
            role: None,
            lifetime_ms: u64::MAX,
            max_devices: u32::MAX,
            require_mfa: false,
        });
        if let Some(group) = &m.group {
            if !g.groups.contains(group) {
                g.groups.push(group.clone());
            }
        }
        g.role = g.role.max(m.role);
        g.lifetime_ms = g.lifetime_ms.min(m.lifetime_ms);
        g.max_devices = g.max_devices.min(m.max_devices);
        g.require_mfa |= m.require_mfa;
    }
    if let Some(g) = &mut out {
        g.groups.sort();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(claim: &str, group: Option<&str>, role: Option<ConsoleRole>) -> IdpMapping {
        IdpMapping {
            group: group.map(String::from),
            role,
            ..IdpMapping::new(claim)
        }
    }

    #[test]
    fn validation_names_the_rule_broken() {
        assert_eq!(
            m("", Some("staff"), None).validate(),
            Err(IdpError::NoClaim)
        );
        assert_eq!(m("eng", None, None).validate(), Err(IdpError::Nothing));
        assert_eq!(m("eng", Some("*"), None).validate(), Err(IdpError::Group));
        assert_eq!(
            m("eng", Some("a\nb"), None).validate(),
            Err(IdpError::Group)
        );
        assert_eq!(
            m(&"x".repeat(300), Some("staff"), None).validate(),
            Err(IdpError::ClaimTooLong(300))
        );
        assert_eq!(
            m("a\u{0}", Some("staff"), None).validate(),
            Err(IdpError::ClaimControl)
        );
        let short = IdpMapping {
            lifetime_ms: 60_000,
            ..m("eng", Some("staff"), None)
        };
        assert_eq!(short.validate(), Err(IdpError::Lifetime("1m".into())));
        let many = IdpMapping {
            max_devices: 0,
            ..m("eng", Some("staff"), None)
        };
        assert_eq!(many.validate(), Err(IdpError::MaxDevices(0)));
        assert!(m("/staff/eng", Some("staff"), Some(ConsoleRole::Viewer))
            .validate()
            .is_ok());
        assert!(m("ops", None, Some(ConsoleRole::Admin)).validate().is_ok());
    }

    #[test]
    fn a_grant_is_the_union_of_groups_and_the_strictest_limits() {
        let eng = IdpMapping {
            lifetime_ms: 30 * 24 * 3_600_000,
            max_devices: 10,
            ..m("eng", Some("engineering"), Some(ConsoleRole::Viewer))
        };
        let contractors = IdpMapping {
            lifetime_ms: 12 * 3_600_000,
            max_devices: 2,
            require_mfa: true,
            ..m("contractors", Some("vendors"), None)
        };
        let ops = m("ops", None, Some(ConsoleRole::Admin));
        let all = [eng, contractors, ops];
        let user = |gs: &[&str]| gs.iter().map(|g| g.to_string()).collect::<Vec<_>>();
        // Nothing matched: default deny.
        assert_eq!(grant(&all, &user(&["sales"])), None);
        assert_eq!(grant(&all, &[]), None);
        let g = grant(&all, &user(&["eng", "contractors", "ops"])).unwrap();
        assert_eq!(g.groups, ["engineering", "vendors"]);
        assert_eq!(g.role, Some(ConsoleRole::Admin));
        assert_eq!((g.lifetime_ms, g.max_devices), (12 * 3_600_000, 2));
        assert!(g.require_mfa);
        // A role-only mapping grants the console but no device group.
        let g = grant(&all, &user(&["ops"])).unwrap();
        assert!(g.groups.is_empty());
        assert_eq!(g.role, Some(ConsoleRole::Admin));
        // Matching is exact: no prefix, no case folding.
        assert_eq!(grant(&all, &user(&["Eng", "en"])), None);
    }
}
