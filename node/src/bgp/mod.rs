//! Anycast over BGP: our GoBGP API client, the pure announcement decision,
//! and the speaker task that supervises gobgpd and keeps its RIB equal to
//! the decision.

pub mod client;
pub mod health;
pub mod speaker;
