//! Anycast over BGP: our GoBGP API client, and the speaker task that
//! supervises gobgpd and keeps its RIB equal to the health decision
//! (`crate::health::announce`).

pub mod client;
pub mod speaker;
