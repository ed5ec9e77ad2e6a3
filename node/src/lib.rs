//! anygate-node: a gateway node of an anygate cluster, as a library so that
//! tests and drills can embed real nodes. The `anygate` binary is a thin
//! wrapper around [`app::App`].

pub mod api;
pub mod app;
pub mod bgp;
pub mod child;
pub mod config;
pub mod dataplane;
pub mod endpoints;
pub mod failover;
pub mod health;
pub mod host;
pub mod metrics;
pub mod portal;
pub use anygate_core::model;
pub mod raft;
pub mod reconcile;
pub mod store;
pub mod time;
