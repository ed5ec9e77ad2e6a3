//! The Raft log and vote in RocksDB (column families `log` and `raft`).

use super::*;
use crate::store::types::{Entry, LogId, TypeConfig, Vote};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogId, RaftLogReader};
use rocksdb::{Direction, IteratorMode, WriteBatch};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";

#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
}

impl LogStore {
    pub(super) fn new(db: Arc<DB>) -> Self {
        LogStore { db }
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        let v = self
            .db
            .get_cf(cf(&self.db, CF_RAFT), key)
            .map_err(|e| io_err(StorageIOError::read, e))?;
        v.map(|b| serde_json::from_slice(&b).map_err(|e| io_err(StorageIOError::read, e)))
            .transpose()
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], v: &T) -> Result<(), StorageError> {
        let b = serde_json::to_vec(v).map_err(|e| io_err(StorageIOError::write, e))?;
        self.db
            .put_cf_opt(cf(&self.db, CF_RAFT), key, b, &sync_opts())
            .map_err(|e| io_err(StorageIOError::write, e))
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        let mut it = self.db.iterator_cf(cf(&self.db, CF_LOG), IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(Err(e)) => Err(io_err(StorageIOError::read_logs, e)),
            Some(Ok((_, v))) => {
                let ent: Entry =
                    serde_json::from_slice(&v).map_err(|e| io_err(StorageIOError::read_logs, e))?;
                Ok(Some(*ent.get_log_id()))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => *x + 1,
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            cf(&self.db, CF_LOG),
            IteratorMode::From(&be(start), Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(|e| io_err(StorageIOError::read_logs, e))?;
            if !range.contains(&from_be(&k)) {
                break;
            }
            out.push(serde_json::from_slice(&v).map_err(|e| io_err(StorageIOError::read_logs, e))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_PURGED)?;
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(KEY_VOTE, vote).map_err(|_| {
            io_err(
                StorageIOError::write_vote,
                std::io::Error::other("vote write failed"),
            )
        })
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.put_meta(KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = WriteBatch::default();
        let cf_log = cf(&self.db, CF_LOG);
        for ent in entries {
            let v = serde_json::to_vec(&ent).map_err(|e| io_err(StorageIOError::write_logs, e))?;
            batch.put_cf(cf_log, be(ent.get_log_id().index), v);
        }
        // Durable before it is acknowledged.
        let res = self.db.write_opt(batch, &sync_opts());
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(io_err(StorageIOError::write_logs, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf(&self.db, CF_LOG), be(log_id.index), be(u64::MAX));
        batch.delete_cf(cf(&self.db, CF_LOG), be(u64::MAX));
        self.db
            .write_opt(batch, &sync_opts())
            .map_err(|e| io_err(StorageIOError::write_logs, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.put_meta(KEY_PURGED, &log_id)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf(&self.db, CF_LOG), be(0), be(log_id.index + 1));
        self.db
            .write_opt(batch, &sync_opts())
            .map_err(|e| io_err(StorageIOError::write_logs, e))
    }
}
