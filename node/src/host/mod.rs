//! The host around the WireGuard device: addresses and routes (rtnetlink,
//! `net.rs`), the NAT and react table `inet anygate` (`net.rs` renders it),
//! the access-policy table `inet anygate_policy` (`policy.rs`), and the one
//! nftables client (`nft.rs`).
//!
//! [`Host`] keeps them at what the inventory asks for. Writes happen when
//! the wanted state changes; the periodic check reads the ruleset
//! generation over netlink and only lists and rewrites the tables when
//! someone else changed the ruleset since our last write — so the steady
//! state runs no process at all.

pub mod net;
pub mod nft;
pub mod policy;

use crate::metrics::Metrics;
use net::{NetDesired, NetError, NetManager};
use tracing::{debug, info, warn};

pub struct Host {
    net: NetManager,
    metrics: Metrics,
    /// The `inet anygate` script as last written.
    nat_written: Option<String>,
    /// The access-policy table as last read or written (None: read it).
    policy: Option<policy::Present>,
    /// The ruleset generation right after our last write or full read.
    generation: Option<u32>,
    /// The last check found the generation changed by someone else: each
    /// table is read (or rewritten) in full once.
    nat_suspect: bool,
    policy_suspect: bool,
    /// The policy table could not be read or written: retried at the next
    /// resync, not on every commit (a host without nftables would spawn
    /// `nft` twice per commit: 150 ms each in the emulated VM).
    policy_failing: bool,
}

impl Host {
    pub fn new(metrics: Metrics) -> Result<Host, NetError> {
        Ok(Host {
            net: NetManager::new()?,
            metrics,
            nat_written: None,
            policy: None,
            generation: None,
            nat_suspect: true,
            policy_suspect: true,
            policy_failing: false,
        })
    }

    pub fn net(&self) -> &NetManager {
        &self.net
    }

    /// The periodic check: if someone else changed the ruleset since we
    /// last wrote or read it, both tables are read (or rewritten) in full.
    /// A failed read counts as a change.
    fn check_generation(&mut self) {
        let changed = match nft::generation() {
            Ok(g) => self.generation != Some(g),
            Err(e) => {
                debug!(error = %e, "cannot read the nftables generation");
                true
            }
        };
        if changed {
            self.nat_suspect = true;
            self.policy_suspect = true;
        }
    }

    fn remember_generation(&mut self) {
        self.generation = nft::generation().ok();
    }

    /// Addresses, routes and the `inet anygate` table. `check` (resync):
    /// also look for changes someone else made to the ruleset, and repair
    /// both tables (this one here, the policy table in `sync_policy`).
    pub async fn reconcile(&mut self, want: &NetDesired, check: bool) {
        if check {
            self.check_generation();
        }
        match self.net.reconcile(want).await {
            Ok(rep) if !rep.is_empty() => {
                info!(ifname = %want.ifname, ?rep, "host network restored");
                self.metrics.route_repairs.inc();
            }
            Ok(_) => {}
            Err(e) => {
                self.metrics.reconcile_errors.inc();
                warn!(error = %e, "host network reconcile failed; will retry");
            }
        }
        let stale = self.nat_written.as_deref() != Some(&want.nft);
        if stale || self.nat_suspect {
            match nft::apply_nft(&want.nft).await {
                Ok(()) => {
                    self.nat_written = Some(want.nft.clone());
                    self.nat_suspect = false;
                    self.remember_generation();
                }
                Err(e) => {
                    self.metrics.reconcile_errors.inc();
                    warn!(error = %e, "nftables table anygate not applied; will retry");
                }
            }
        }
    }

    /// Packets the default deny dropped, read over netlink (every device
    /// read: one small dump, no process).
    pub fn refresh_counters(&mut self) {
        if let Some(h) = &mut self.policy {
            if let Some(n) = denied_packets() {
                h.denied_packets = n;
                self.metrics.policy_denied_packets.set(n as i64);
            }
        }
    }

    /// The policy table is known to hold no sets and no rules (nothing to
    /// do while the inventory has no policies either).
    pub fn policy_is_empty(&self) -> bool {
        self.policy
            .as_ref()
            .is_some_and(|h| h.sets.is_empty() && h.rules.is_empty())
            && !self.policy_suspect
    }

    /// Brings `table inet anygate_policy` to `want` with the smallest
    /// change. It reads the kernel first when the last check found the
    /// ruleset changed under us, so hand edits are repaired.
    pub async fn sync_policy(&mut self, want: policy::Desired, check: bool) {
        if self.policy_failing && !check {
            return;
        }
        let had = self.policy.is_some();
        let reread = !had || self.policy_suspect;
        if reread {
            match nft::list_table(policy::TABLE, true).await {
                Ok(t) => {
                    self.policy = t.map(|t| policy::parse(&t));
                    self.policy_suspect = false;
                    if self.policy.is_some() {
                        self.remember_generation();
                    }
                }
                Err(e) => {
                    return self.policy_failed("cannot read the access-policy table", &e);
                }
            }
        }
        self.policy_failing = false;
        let Some(script) = policy::plan(self.policy.as_ref(), &want) else {
            return;
        };
        match nft::apply_nft(&script).await {
            Ok(()) => {
                if reread && had {
                    warn!(script = %script.trim(), "access-policy table differed from the policies (hand edit?); repaired");
                    self.metrics.drift_repairs.inc();
                } else {
                    debug!(script = %script.trim(), "access-policy table updated");
                }
                self.metrics.policy_rules.set(want.rules.len() as i64);
                // The kernel now holds `want`; new rules' handles (needed
                // to delete them later) are read back over netlink.
                self.policy = match nft::rules(policy::TABLE, "clients") {
                    Ok(rules) => Some(policy::Present {
                        skeleton_for: Some(want.ifname.clone()),
                        rules: rules
                            .into_iter()
                            .filter_map(|r| Some((r.comment?, r.handle)))
                            .collect(),
                        denied_packets: self.policy.as_ref().map_or(0, |h| h.denied_packets),
                        sets: want.sets,
                    }),
                    Err(e) => {
                        warn!(error = %e, "cannot read the access-policy rules back; will list the table");
                        None
                    }
                };
                self.remember_generation();
            }
            Err(e) => self.policy_failed("access-policy table not updated", &e),
        }
    }

    /// The policy table could not be read or written: forget what it
    /// holds and leave it to the next resync (counted, logged).
    fn policy_failed(&mut self, what: &str, e: &dyn std::fmt::Display) {
        self.metrics.reconcile_errors.inc();
        warn!(error = %e, "{what}; will retry at the next resync");
        self.policy = None;
        self.policy_failing = true;
    }

    /// Applies one commit's element changes to the group sets: a script
    /// of the changed elements only. Compares the whole table instead when
    /// the kernel's table is not known to be the one the delta was
    /// computed against (first start, a failure, someone else's change).
    pub async fn sync_policy_delta(&mut self, delta: &policy::Delta, wanted: &policy::Wanted) {
        if self.policy_failing {
            return; // retried at the next resync
        }
        let have = self
            .policy
            .as_mut()
            .filter(|h| h.skeleton_for.as_deref() == Some(wanted.ifname()) && !self.policy_suspect);
        let Some(have) = have else {
            return self.sync_policy(wanted.desired(), false).await;
        };
        let Some(script) = policy::plan_delta(have, delta) else {
            return self.sync_policy(wanted.desired(), false).await;
        };
        if script.is_empty() {
            return;
        }
        match nft::apply_nft(&script).await {
            Ok(()) => {
                debug!(script = %script.trim(), "access-policy sets updated");
                policy::apply_delta(have, delta);
                self.remember_generation();
            }
            Err(e) => self.policy_failed("access-policy sets not updated", &e),
        }
    }
}

/// Packets the default deny dropped (its counter), over netlink.
fn denied_packets() -> Option<u64> {
    nft::rules(policy::TABLE, "forward")
        .ok()?
        .into_iter()
        .find(|r| r.comment.as_deref() == Some(policy::DEFAULT_COMMENT))?
        .packets
}
