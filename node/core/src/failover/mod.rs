//! Failover decisions, pure (the node's `failover` module holds the state
//! between them and the IO).

pub mod decide;
pub mod react;
