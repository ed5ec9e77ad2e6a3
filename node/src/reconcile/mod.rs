//! Reconciliation: the WireGuard device (and the host around it) kept at
//! what the applied inventory asks for.
//!
//! - `plan.rs`: pure — desired × observed -> [`plan::Plan`]; table-tested.
//! - `belief.rs`: what the device holds as far as we know, and how a device
//!   read that raced with commits is merged into it.
//! - `reconciler.rs`: the one task that writes the device; its select loop
//!   drives commits, duty-cycled reads, liveness, failover kicks and the
//!   host (`crate::host`), and publishes `crate::health::DataplaneStatus`.
//! - `peer_metrics.rs`: per-peer Prometheus series, labelled as operators
//!   name the device.

pub mod belief;
pub mod peer_metrics;
pub use anygate_core::plan;
pub mod reconciler;

pub use reconciler::Reconciler;
