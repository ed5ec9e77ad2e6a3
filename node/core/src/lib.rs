//! anygate-core: the pure parts of a gateway node, on their own so they can
//! be read, tested and fuzzed without IO, tokio or RocksDB.
//!
//! - [`model`]: the replicated inventory and the commands that change it.
//! - [`dataplane`]: what a WireGuard device holds, the actions that change
//!   it, and the UAPI text protocol.
//! - [`plan`]: desired × observed -> the actions that converge a device.
//! - [`failover`]: react's orphan rule, lost sessions, takeover, hold-off.
//! - [`endpoints`]: which device observations are news for the endpoint map.
//! - [`health`]: the announce/withdraw decision and the leader lease.
//! - [`config`]: the node's config file as written (one struct per section).
//! - [`wgquick`]: the one writer of client configs, and the check of one.
//!
//! Time comes in as an argument (`now_ms`, `Instant`); nothing here reads a
//! clock, a socket or a file.

pub mod config;
pub mod dataplane;
pub mod endpoints;
pub mod failover;
pub mod health;
pub mod model;
pub mod plan;
pub mod wgquick;
