//! Health decisions, pure: announce or withdraw, and the leader lease.

pub mod announce;
pub mod lease;

pub use announce::Withdraw;
