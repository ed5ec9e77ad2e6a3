//! RocksDB storage: the Raft log, the vote, and the state machine, one column
//! family per concern, big-endian integer keys so that iteration order is
//! numeric order.
//!
//! Durability: log appends, truncations, purges and votes are written with
//! `sync = true` and acknowledged to openraft only after that returns, so an
//! acknowledged write survives `kill -9` and power loss. State-machine writes
//! go through the WAL unsynced (they can be replayed from the log); before a
//! snapshot lets openraft purge the log, the WAL is synced.
//!
//! This module must not know about gRPC or the network.

// openraft's storage traits return its `StorageError` (over 200 bytes); the
// helpers here return what the traits need.
#![allow(clippy::result_large_err)]

mod log;
mod sm;
pub mod types;

pub use log::LogStore;
pub use sm::{AuditFilter, AuditPage, ChangeSet, StateMachine, StateView};

use crate::store::types::StorageError;
use openraft::{AnyError, StorageIOError};
use rocksdb::{ColumnFamilyDescriptor, Options, DB};
use std::path::Path;
use std::sync::Arc;

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_RAFT: &str = "raft";
pub(crate) const CF_SM: &str = "sm";
pub(crate) const CF_PEERS: &str = "peers";
pub(crate) const CF_POOLS: &str = "pools";
pub(crate) const CF_SETTINGS: &str = "settings";
pub(crate) const CF_ENDPOINTS: &str = "endpoints";
pub(crate) const CF_NODES: &str = "nodes";
pub(crate) const CF_AUDIT: &str = "audit";
pub(crate) const CF_SNAPSHOT: &str = "snapshot";
pub(crate) const CF_REQUESTS: &str = "requests";
pub(crate) const CF_REVOKED: &str = "revoked";
pub(crate) const CF_REVOKED_CERTS: &str = "revoked_certs";

/// Raft's own column families; the state machine's are [`SM_CFS`].
const RAFT_CFS: &[&str] = &[CF_LOG, CF_RAFT, CF_SNAPSHOT];

/// State-machine column families: wiped and rewritten when a snapshot is installed.
pub(crate) const SM_CFS: &[&str] = &[
    CF_SM,
    CF_PEERS,
    CF_POOLS,
    CF_SETTINGS,
    CF_ENDPOINTS,
    CF_NODES,
    CF_AUDIT,
    CF_REQUESTS,
    CF_REVOKED,
    CF_REVOKED_CERTS,
];

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open RocksDB at {path}: {source}")]
    Rocks {
        path: String,
        source: rocksdb::Error,
    },
    #[error("stored state in {path} is unreadable: {msg}")]
    Corrupt { path: String, msg: String },
}

/// Open (or create) the node's database and return its two halves.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachine), OpenError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_keep_log_file_num(4);
    // Bounded memory: all memtables together stay under 32 MiB (RocksDB's
    // default is 64 MiB per column family, ×11 here), one shared 16 MiB
    // block cache. The whole inventory also lives in memory; RocksDB is for
    // durability, not for serving reads.
    opts.set_db_write_buffer_size(32 << 20);
    let cache = rocksdb::Cache::new_lru_cache(16 << 20);
    let cf_opts = || {
        let mut o = Options::default();
        o.set_write_buffer_size(8 << 20);
        let mut t = rocksdb::BlockBasedOptions::default();
        t.set_block_cache(&cache);
        o.set_block_based_table_factory(&t);
        o
    };
    let cfs = RAFT_CFS
        .iter()
        .chain(SM_CFS)
        .map(|n| ColumnFamilyDescriptor::new(*n, cf_opts()));
    let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|source| OpenError::Rocks {
        path: dir.display().to_string(),
        source,
    })?;
    let db = Arc::new(db);
    let sm = StateMachine::load(db.clone()).map_err(|e| OpenError::Corrupt {
        path: dir.display().to_string(),
        msg: e.to_string(),
    })?;
    Ok((LogStore::new(db), sm))
}

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).expect("column family created at open")
}

pub(crate) fn be(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

pub(crate) fn from_be(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

pub(crate) fn sync_opts() -> rocksdb::WriteOptions {
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    wo
}

pub(crate) fn io_err(
    f: fn(AnyError) -> StorageIOError<crate::model::NodeId>,
    e: impl std::error::Error + 'static,
) -> StorageError {
    StorageError::IO {
        source: f(AnyError::new(&e)),
    }
}

#[cfg(test)]
mod suite;
