//! The data plane's pure types and the UAPI text protocol.

#[path = "../../src/dataplane/types.rs"]
mod types;
#[path = "../../src/dataplane/uapi_text.rs"]
pub mod uapi_text;

pub use types::*;
