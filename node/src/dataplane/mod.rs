//! The WireGuard data plane: what a device holds (observed), what it should
//! hold (desired), and the backends that read and program it. Backends are
//! plain IO; every decision lives in `reconcile::plan`.

pub mod backend;
pub mod identity;
pub mod kernel;
pub mod uapi;

pub use anygate_core::dataplane::*;
