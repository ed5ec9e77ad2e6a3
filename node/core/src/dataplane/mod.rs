//! The WireGuard data plane's pure side: what a device holds (observed),
//! what it should hold (desired), the actions between them, and the UAPI
//! text protocol of userspace implementations.

mod types;
pub mod uapi_text;

pub use types::*;
