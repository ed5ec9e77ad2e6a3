//! One file per subcommand group.

pub mod audit;
pub mod backup;
pub mod cluster;
pub mod config;
pub mod idp;
pub mod node;
pub mod peer;
pub mod pki;
pub mod policy;
pub mod pool;
pub mod settings;

use tonic::{Code, Status};

pub type Result<T = ()> = std::result::Result<T, Status>;

pub fn describe(s: &Status) -> String {
    let what = match s.code() {
        Code::InvalidArgument => "invalid argument",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::FailedPrecondition => "refused",
        Code::OutOfRange => "out of range",
        Code::ResourceExhausted => "exhausted",
        Code::Unavailable => "cluster unavailable",
        Code::DeadlineExceeded => "timed out",
        Code::PermissionDenied => "permission denied",
        Code::Unauthenticated => "not authenticated",
        _ => "error",
    };
    format!("{what}: {}", s.message())
}

/// Exit codes: 1 refused by the cluster, 2 usage/invalid input (as clap), 69 unreachable.
pub fn exit_code(s: &Status) -> u8 {
    match s.code() {
        Code::InvalidArgument | Code::OutOfRange => 2,
        Code::Unavailable | Code::DeadlineExceeded => 69,
        _ => 1,
    }
}

pub fn read_opts(stale: bool) -> Option<anygate_proto::v1::ReadOptions> {
    Some(anygate_proto::v1::ReadOptions { stale })
}
