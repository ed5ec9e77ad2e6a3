//! The state machine in RocksDB: the inventory lives in memory (indexed for
//! O(log n) checks) and every applied batch is written to its column families
//! in one atomic `WriteBatch` together with the applied log id, so the
//! on-disk state is always a prefix of the log.

use super::*;
use crate::model::{
    AuditEntry, Changes, Inventory, InventoryImage, NodeId, Response, Settings, WgKey,
};
use crate::store::types::{Entry, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftLogId, RaftSnapshotBuilder};
use rocksdb::{IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::RwLock;
use tokio::sync::watch;

const KEY_APPLIED: &[u8] = b"applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
const KEY_SETTINGS: &[u8] = b"settings";
const KEY_POLICIES: &[u8] = b"policies";
const KEY_IDP: &[u8] = b"idp_mappings";
const KEY_PORTAL: &[u8] = b"portal_key";
const KEY_SNAP_META: &[u8] = b"meta";
const KEY_SNAP_DATA: &[u8] = b"data";

/// Read access to the applied state for the API, the reconciler and health.
#[derive(Clone)]
pub struct StateView {
    inner: Arc<Shared>,
}

struct Shared {
    inv: RwLock<Inventory>,
    applied: watch::Sender<u64>,
    db: Arc<DB>,
    feed: std::sync::Mutex<Feed>,
}

/// Which peers each applied batch touched, so the reconciler plans a commit
/// for those peers only. Bounded: older history is dropped and `floor`
/// rises; asking from below the floor means "recompute everything".
#[derive(Default)]
struct Feed {
    batches: std::collections::VecDeque<(u64, Vec<WgKey>, bool)>,
    keys: usize,
    /// Every change after this index is in `batches`.
    floor: u64,
}

const FEED_MAX_KEYS: usize = 1_000_000;

/// What changed after some index: peers (config or endpoint hint), and
/// whether anything global (settings, pools) changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ChangeSet {
    pub upto: u64,
    pub peers: std::collections::BTreeSet<WgKey>,
    pub global: bool,
}

#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    pub since_ms: i64,
    pub actor: Option<String>,
    pub limit: usize,
    /// Only entries below this log index (0: from the newest).
    pub before_index: u64,
}

/// Proposers' clocks may differ: a listing `since` a time reads this much
/// further back before it stops.
const AUDIT_CLOCK_SKEW_MS: i64 = 60_000;
/// Entries one listing call examines at most (the rest: next page).
const AUDIT_SCAN_MAX: usize = 200_000;
/// Entries one apply batch deletes at most (the rest: next batch).
const AUDIT_PRUNE_MAX: u64 = 10_000;

/// One page of the audit log, newest first.
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Where the next (older) page starts; 0 when there is none.
    pub next_before_index: u64,
}

impl StateView {
    /// Run `f` on the applied inventory (hold the lock briefly).
    pub fn read<R>(&self, f: impl FnOnce(&Inventory) -> R) -> R {
        f(&self.inner.inv.read().expect("inventory lock poisoned"))
    }

    /// Index of the last applied log entry.
    pub fn applied(&self) -> u64 {
        *self.inner.applied.borrow()
    }

    /// Changes applied after `index`, or None when that history is no
    /// longer kept (recompute from the whole inventory instead).
    pub fn changes_since(&self, index: u64) -> Option<ChangeSet> {
        let feed = self.inner.feed.lock().expect("feed lock poisoned");
        if index < feed.floor {
            return None;
        }
        let mut cs = ChangeSet {
            upto: index,
            ..Default::default()
        };
        for (i, keys, global) in feed.batches.iter().rev() {
            if *i <= index {
                break;
            }
            cs.upto = cs.upto.max(*i);
            cs.global |= *global;
            cs.peers.extend(keys.iter().copied());
        }
        Some(cs)
    }

    fn record(&self, index: u64, ch: &Changes) {
        let keys: Vec<WgKey> = ch.peers.union(&ch.endpoints).copied().collect();
        let global = ch.settings || ch.pool_set || ch.policies;
        let mut feed = self.inner.feed.lock().expect("feed lock poisoned");
        feed.keys += keys.len();
        feed.batches.push_back((index, keys, global));
        while feed.keys > FEED_MAX_KEYS {
            let Some((i, k, _)) = feed.batches.pop_front() else {
                break;
            };
            feed.keys -= k.len();
            feed.floor = i;
        }
    }

    /// Forget the history (a snapshot replaced the state wholesale).
    fn reset_feed(&self, index: u64) {
        let mut feed = self.inner.feed.lock().expect("feed lock poisoned");
        *feed = Feed {
            floor: index,
            ..Default::default()
        };
    }

    /// Wakes on every applied batch.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.applied.subscribe()
    }

    /// Newest first, from `before_index` down, stopping at `since_ms`
    /// (less the clock skew allowance), the limit, or the scan bound; never
    /// a scan of the whole log.
    pub fn audit(&self, f: &AuditFilter) -> AuditPage {
        let db = &self.inner.db;
        let mut out = Vec::new();
        let limit = if f.limit == 0 { usize::MAX } else { f.limit };
        let start = be(f.before_index.saturating_sub(1));
        let mode = match f.before_index {
            0 => IteratorMode::End,
            _ => IteratorMode::From(&start, rocksdb::Direction::Reverse),
        };
        let mut next = 0;
        for (scanned, item) in db.iterator_cf(cf(db, CF_AUDIT), mode).enumerate() {
            let Ok((_, v)) = item else { break };
            let Ok(e) = serde_json::from_slice::<AuditEntry>(&v) else {
                continue;
            };
            if scanned >= AUDIT_SCAN_MAX {
                next = e.index + 1;
                break;
            }
            if e.at_ms < f.since_ms - AUDIT_CLOCK_SKEW_MS {
                break;
            }
            if e.at_ms < f.since_ms {
                continue;
            }
            if f.actor
                .as_ref()
                .is_some_and(|a| e.actor != *a && !e.actor.starts_with(&format!("{a}@")))
            {
                continue;
            }
            out.push(e);
            if out.len() >= limit {
                next = out.last().map_or(0, |e| e.index);
                break;
            }
        }
        AuditPage {
            entries: out,
            next_before_index: next,
        }
    }
}

pub struct StateMachine {
    view: StateView,
    db: Arc<DB>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// Tests only (`--test-hold-back-apply`): wait this long before
    /// applying, so a test can show a read is linearizable.
    apply_delay: Option<std::time::Duration>,
    /// Entries in the audit column family (kept within the settings'
    /// retention by `prune_audit`).
    audit_count: u64,
}

#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    image: InventoryImage,
    audit: Vec<AuditEntry>,
}

type R<T> = Result<T, StorageError>;

fn rd<T: serde::de::DeserializeOwned>(b: &[u8]) -> R<T> {
    serde_json::from_slice(b).map_err(|e| io_err(StorageIOError::read_state_machine, e))
}
fn wr<T: Serialize>(v: &T) -> R<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| io_err(StorageIOError::write_state_machine, e))
}

impl StateMachine {
    /// Hold every apply back by `d` (tests: a follower that lags).
    pub fn hold_back_apply(&mut self, d: std::time::Duration) {
        self.apply_delay = Some(d);
    }

    pub(super) fn load(db: Arc<DB>) -> R<StateMachine> {
        let get = |cfn: &str, k: &[u8]| {
            db.get_cf(cf(&db, cfn), k)
                .map_err(|e| io_err(StorageIOError::read_state_machine, e))
        };
        let last_applied: Option<LogId> = get(CF_SM, KEY_APPLIED)?.map(|b| rd(&b)).transpose()?;
        let membership: StoredMembership = get(CF_SM, KEY_MEMBERSHIP)?
            .map(|b| rd(&b))
            .transpose()?
            .unwrap_or_default();
        let settings = get(CF_SETTINGS, KEY_SETTINGS)?
            .map(|b| rd(&b))
            .transpose()?
            .unwrap_or_default();
        type Kv = (Box<[u8]>, Box<[u8]>);
        let all = |cfn: &str| -> R<Vec<Kv>> {
            db.iterator_cf(cf(&db, cfn), IteratorMode::Start)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| io_err(StorageIOError::read_state_machine, e))
        };
        let policies = get(CF_SETTINGS, KEY_POLICIES)?
            .map(|b| rd(&b))
            .transpose()?
            .unwrap_or_default();
        let idp_mappings = get(CF_SETTINGS, KEY_IDP)?
            .map(|b| rd(&b))
            .transpose()?
            .unwrap_or_default();
        let portal_key = get(CF_SETTINGS, KEY_PORTAL)?.map(|b| b.to_vec());
        let mut img = InventoryImage {
            settings,
            policies,
            idp_mappings,
            portal_key,
            ..Default::default()
        };
        for (_, v) in all(CF_PEERS)? {
            img.peers.push(rd(&v)?);
        }
        for (_, v) in all(CF_POOLS)? {
            img.pools.push(rd(&v)?);
        }
        for (_, v) in all(CF_ENDPOINTS)? {
            img.endpoints.push(rd(&v)?);
        }
        for (_, v) in all(CF_NODES)? {
            img.nodes.push(rd(&v)?);
        }
        for (_, v) in all(CF_REQUESTS)? {
            img.requests.push(rd(&v)?);
        }
        for (_, v) in all(CF_REVOKED)? {
            img.revoked.push(rd(&v)?);
        }
        for (_, v) in all(CF_REVOKED_CERTS)? {
            img.revoked_certs.push(rd(&v)?);
        }
        let (applied, _) = watch::channel(last_applied.map(|l| l.index).unwrap_or(0));
        let view = StateView {
            inner: Arc::new(Shared {
                inv: RwLock::new(Inventory::from_image(img)),
                feed: std::sync::Mutex::new(Feed {
                    floor: last_applied.map(|l| l.index).unwrap_or(0),
                    ..Default::default()
                }),
                applied,
                db: db.clone(),
            }),
        };
        let audit_count = db
            .iterator_cf(cf(&db, CF_AUDIT), IteratorMode::Start)
            .count() as u64;
        Ok(StateMachine {
            apply_delay: None,
            view,
            db,
            last_applied,
            membership,
            audit_count,
        })
    }

    pub fn view(&self) -> StateView {
        self.view.clone()
    }

    /// Write what `ch` names from the in-memory state, plus the applied id.
    fn persist(&mut self, inv: &Inventory, ch: Changes) -> R<()> {
        let db = &self.db.clone();
        let mut b = WriteBatch::default();
        for k in &ch.peers {
            match inv.peer(k) {
                Some(p) => b.put_cf(cf(db, CF_PEERS), k.as_bytes(), wr(p)?),
                None => b.delete_cf(cf(db, CF_PEERS), k.as_bytes()),
            }
        }
        for n in &ch.pools {
            match inv.pool(n) {
                Some(p) => b.put_cf(cf(db, CF_POOLS), n.as_bytes(), wr(p)?),
                None => b.delete_cf(cf(db, CF_POOLS), n.as_bytes()),
            }
        }
        if ch.settings {
            b.put_cf(cf(db, CF_SETTINGS), KEY_SETTINGS, wr(inv.settings())?);
        }
        if ch.policies {
            let all: Vec<_> = inv.policies().cloned().collect();
            b.put_cf(cf(db, CF_SETTINGS), KEY_POLICIES, wr(&all)?);
        }
        if ch.idp {
            let all: Vec<_> = inv.idp_mappings().cloned().collect();
            b.put_cf(cf(db, CF_SETTINGS), KEY_IDP, wr(&all)?);
            if let Some(k) = inv.portal_key() {
                b.put_cf(cf(db, CF_SETTINGS), KEY_PORTAL, k);
            }
        }
        for k in &ch.endpoints {
            match inv.endpoint(k) {
                Some(e) => b.put_cf(cf(db, CF_ENDPOINTS), k.as_bytes(), wr(&(k, e))?),
                None => b.delete_cf(cf(db, CF_ENDPOINTS), k.as_bytes()),
            }
        }
        for id in &ch.nodes {
            if let Some(f) = inv.node_flags(*id) {
                b.put_cf(cf(db, CF_NODES), be(*id), wr(&(id, f))?);
            }
        }
        for a in &ch.audit {
            b.put_cf(cf(db, CF_AUDIT), be(a.index), wr(a)?);
        }
        if let Some(newest) = ch.audit.last() {
            self.audit_count += ch.audit.len() as u64;
            self.prune_audit(&mut b, inv.settings(), newest.at_ms)?;
        }
        for k in &ch.revoked {
            if let Some(r) = inv.revocation(k) {
                b.put_cf(cf(db, CF_REVOKED), k.as_bytes(), wr(&(k, r))?);
            }
        }
        for s in &ch.revoked_certs {
            if let Some(r) = inv.cert_revocation(s) {
                b.put_cf(cf(db, CF_REVOKED_CERTS), s.as_bytes(), wr(&(s, r))?);
            }
        }
        for r in &ch.requests_added {
            b.put_cf(cf(db, CF_REQUESTS), be(r.index), wr(r)?);
        }
        for i in &ch.requests_evicted {
            b.delete_cf(cf(db, CF_REQUESTS), be(*i));
        }
        b.put_cf(cf(db, CF_SM), KEY_APPLIED, wr(&self.last_applied)?);
        b.put_cf(cf(db, CF_SM), KEY_MEMBERSHIP, wr(&self.membership)?);
        db.write(b)
            .map_err(|e| io_err(StorageIOError::write_state_machine, e))
    }

    /// Deletes the oldest audit entries beyond the settings' count, and
    /// those older than their age limit (measured from `newest_ms`, the
    /// log's own clock, so every node prunes the same entries).
    fn prune_audit(&mut self, b: &mut WriteBatch, s: &Settings, newest_ms: i64) -> R<()> {
        let db = &self.db;
        let over = self.audit_count.saturating_sub(s.audit_max_entries);
        let cutoff = newest_ms - i64::from(s.audit_max_age_days) * 86_400_000;
        let mut deleted = 0;
        for item in db.iterator_cf(cf(db, CF_AUDIT), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| io_err(StorageIOError::read_state_machine, e))?;
            let old = rd::<AuditEntry>(&v).is_ok_and(|e| e.at_ms < cutoff);
            if (deleted >= over && !old) || deleted >= AUDIT_PRUNE_MAX {
                break;
            }
            b.delete_cf(cf(db, CF_AUDIT), k);
            deleted += 1;
        }
        self.audit_count -= deleted;
        Ok(())
    }

    fn read_audit_all(&self) -> R<Vec<AuditEntry>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(cf(&self.db, CF_AUDIT), IteratorMode::Start)
        {
            let (_, v) = item.map_err(|e| io_err(StorageIOError::read_state_machine, e))?;
            out.push(rd(&v)?);
        }
        Ok(out)
    }

    fn stored_snapshot(&self) -> R<Option<Snapshot>> {
        let c = cf(&self.db, CF_SNAPSHOT);
        let get = |k| {
            self.db
                .get_cf(c, k)
                .map_err(|e| io_err(StorageIOError::read_snapshot_none, e))
        };
        match (get(KEY_SNAP_META)?, get(KEY_SNAP_DATA)?) {
            (Some(m), Some(d)) => Ok(Some(Snapshot {
                meta: rd(&m)?,
                snapshot: Box::new(Cursor::new(d)),
            })),
            _ => Ok(None),
        }
    }
}

fn save_snapshot(db: &DB, meta: &SnapshotMeta, data: &[u8]) -> R<()> {
    let c = cf(db, CF_SNAPSHOT);
    let mut b = WriteBatch::default();
    b.put_cf(c, KEY_SNAP_META, wr(meta)?);
    b.put_cf(c, KEY_SNAP_DATA, data);
    db.write_opt(b, &sync_opts())
        .map_err(|e| io_err(StorageIOError::write_snapshot_none, e))
}

trait SnapErr {
    fn read_snapshot_none(e: openraft::AnyError) -> Self;
    fn write_snapshot_none(e: openraft::AnyError) -> Self;
}
impl SnapErr for StorageIOError<NodeId> {
    fn read_snapshot_none(e: openraft::AnyError) -> Self {
        StorageIOError::read_snapshot(None, e)
    }
    fn write_snapshot_none(e: openraft::AnyError) -> Self {
        StorageIOError::write_snapshot(None, e)
    }
}

/// Builds a snapshot from a consistent copy of the state.
pub struct SnapshotBuilder {
    body: Vec<u8>,
    meta: SnapshotMeta,
    db: Arc<DB>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> R<Snapshot> {
        // The state machine CFs must be durable before openraft purges the
        // log entries this snapshot covers.
        self.db
            .flush_wal(true)
            .map_err(|e| io_err(StorageIOError::write_state_machine, e))?;
        save_snapshot(&self.db, &self.meta, &self.body)?;
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(std::mem::take(&mut self.body))),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> R<(Option<LogId>, StoredMembership)> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> R<Vec<Response>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        if let Some(d) = self.apply_delay {
            tokio::time::sleep(d).await;
        }
        let mut out = Vec::new();
        let mut ch = Changes::default();
        let view = self.view.clone();
        let mut inv = view.inner.inv.write().expect("inventory lock poisoned");
        for ent in entries {
            let id = *ent.get_log_id();
            self.last_applied = Some(id);
            match ent.payload {
                EntryPayload::Blank => out.push(Response::Empty),
                EntryPayload::Normal(req) => out.push(inv.apply(id.index, &req, &mut ch)),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(id), m);
                    out.push(Response::Empty);
                }
            }
        }
        let idx = self.last_applied.map(|l| l.index).unwrap_or(0);
        self.view.record(idx, &ch);
        self.persist(&inv, ch)?;
        drop(inv);
        self.view.inner.applied.send_replace(idx);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        let image = self.view.read(|inv| inv.to_image());
        let audit = self.read_audit_all().unwrap_or_default();
        let body = serde_json::to_vec(&SnapshotBody { image, audit }).expect("serialisable");
        let last = self.last_applied;
        let snapshot_id = match last {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, body.len()),
            None => format!("empty-{}", body.len()),
        };
        SnapshotBuilder {
            body,
            meta: SnapshotMeta {
                last_log_id: last,
                last_membership: self.membership.clone(),
                snapshot_id,
            },
            db: self.db.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> R<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> R<()> {
        let data = snapshot.into_inner();
        let body: SnapshotBody = serde_json::from_slice(&data)
            .map_err(|e| io_err(StorageIOError::read_snapshot_none, e))?;
        let db = &self.db;
        let mut b = WriteBatch::default();
        for name in SM_CFS {
            for item in db.iterator_cf(cf(db, name), IteratorMode::Start) {
                let (k, _) = item.map_err(|e| io_err(StorageIOError::write_state_machine, e))?;
                b.delete_cf(cf(db, name), k);
            }
        }
        let img = &body.image;
        for p in &img.peers {
            b.put_cf(cf(db, CF_PEERS), p.public_key.as_bytes(), wr(p)?);
        }
        for p in &img.pools {
            b.put_cf(cf(db, CF_POOLS), p.name.as_bytes(), wr(p)?);
        }
        b.put_cf(cf(db, CF_SETTINGS), KEY_SETTINGS, wr(&img.settings)?);
        b.put_cf(cf(db, CF_SETTINGS), KEY_POLICIES, wr(&img.policies)?);
        b.put_cf(cf(db, CF_SETTINGS), KEY_IDP, wr(&img.idp_mappings)?);
        match &img.portal_key {
            Some(k) => b.put_cf(cf(db, CF_SETTINGS), KEY_PORTAL, k),
            None => b.delete_cf(cf(db, CF_SETTINGS), KEY_PORTAL),
        }
        for e in &img.endpoints {
            b.put_cf(cf(db, CF_ENDPOINTS), e.0.as_bytes(), wr(e)?);
        }
        for n in &img.nodes {
            b.put_cf(cf(db, CF_NODES), be(n.0), wr(n)?);
        }
        for a in &body.audit {
            b.put_cf(cf(db, CF_AUDIT), be(a.index), wr(a)?);
        }
        self.audit_count = body.audit.len() as u64;
        for r in &img.requests {
            b.put_cf(cf(db, CF_REQUESTS), be(r.index), wr(r)?);
        }
        for r in &img.revoked {
            b.put_cf(cf(db, CF_REVOKED), r.0.as_bytes(), wr(r)?);
        }
        for r in &img.revoked_certs {
            b.put_cf(cf(db, CF_REVOKED_CERTS), r.0.as_bytes(), wr(r)?);
        }
        b.put_cf(cf(db, CF_SM), KEY_APPLIED, wr(&meta.last_log_id)?);
        b.put_cf(cf(db, CF_SM), KEY_MEMBERSHIP, wr(&meta.last_membership)?);
        db.write_opt(b, &sync_opts())
            .map_err(|e| io_err(StorageIOError::write_state_machine, e))?;
        save_snapshot(&self.db, meta, &data)?;

        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        *self
            .view
            .inner
            .inv
            .write()
            .expect("inventory lock poisoned") = Inventory::from_image(body.image);
        self.view
            .reset_feed(meta.last_log_id.map(|l| l.index).unwrap_or(0));
        self.view
            .inner
            .applied
            .send_replace(meta.last_log_id.map(|l| l.index).unwrap_or(0));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> R<Option<Snapshot>> {
        self.stored_snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::{AuditFilter, StateMachine};
    use crate::model::{Changes, Command, Inventory, Request, SettingsPatch, WgKey};

    fn req(at_ms: i64, cmd: Command) -> Request {
        Request {
            actor: "t".into(),
            at_ms,
            request_id: None,
            cmd,
        }
    }

    /// Applies `cmds` at indexes from `index`, one batch each.
    fn run(sm: &mut StateMachine, inv: &mut Inventory, index: &mut u64, cmds: Vec<(i64, Command)>) {
        for (at, cmd) in cmds {
            *index += 1;
            let mut ch = Changes::default();
            inv.apply(*index, &req(at, cmd), &mut ch);
            sm.last_applied = Some(openraft::LogId::new(
                openraft::CommittedLeaderId::new(1, 1),
                *index,
            ));
            sm.persist(inv, ch).unwrap();
        }
    }

    fn denied() -> Command {
        Command::Denied {
            method: "anygate.v1.PeerService/AddPeers".into(),
            role: "viewer".into(),
        }
    }

    #[test]
    fn the_audit_log_is_bounded_by_count_and_age_and_listed_by_range() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = super::super::open(dir.path()).unwrap();
        let mut inv = Inventory::default();
        let mut i = 0;
        let day = 86_400_000;
        let patch = SettingsPatch {
            audit_max_entries: Some(1_000),
            audit_max_age_days: Some(2),
            ..Default::default()
        };
        run(
            &mut sm,
            &mut inv,
            &mut i,
            vec![(0, Command::SetSettings(patch))],
        );
        // 1,500 refused writes (the finding: each one used to stay forever).
        run(
            &mut sm,
            &mut inv,
            &mut i,
            (0..1_500).map(|n| (n, denied())).collect(),
        );
        let all = |sm: &StateMachine| {
            sm.view().audit(&AuditFilter {
                since_ms: 0,
                actor: None,
                limit: 0,
                before_index: 0,
            })
        };
        let page = all(&sm);
        assert_eq!(page.entries.len(), 1_000);
        assert_eq!(sm.audit_count, 1_000);
        assert_eq!(
            page.entries.last().unwrap().index,
            502,
            "the oldest went first"
        );
        // Three days later, everything older than two days is gone.
        run(&mut sm, &mut inv, &mut i, vec![(3 * day, denied())]);
        let page = all(&sm);
        assert_eq!(page.entries.len(), 1);
        assert_eq!(sm.audit_count, 1);
        // Paging by index, and `since` stops the scan.
        run(
            &mut sm,
            &mut inv,
            &mut i,
            (1..=30).map(|n| (3 * day + n, denied())).collect(),
        );
        let page = |before, since, limit| {
            sm.view().audit(&AuditFilter {
                since_ms: since,
                actor: None,
                limit,
                before_index: before,
            })
        };
        let first = page(0, 0, 10);
        assert_eq!(first.entries.len(), 10);
        let second = page(first.next_before_index, 0, 10);
        assert_eq!(second.entries[0].index, first.entries[9].index - 1);
        let recent = page(0, 3 * day + 21, 0);
        assert_eq!(recent.entries.len(), 10);
        assert_eq!(recent.next_before_index, 0);
        // Restarted: the count is read back.
        drop(sm);
        drop(_log);
        let (_log, sm) = super::super::open(dir.path()).unwrap();
        assert_eq!(sm.audit_count, 31);
    }

    #[test]
    fn revocations_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let leaked = WgKey([7; 32]);
        {
            let (_log, mut sm) = super::super::open(dir.path()).unwrap();
            sm.last_applied = Some(openraft::LogId::new(
                openraft::CommittedLeaderId::new(1, 1),
                3,
            ));
            let mut inv = Inventory::default();
            let mut ch = Changes::default();
            let req = Request {
                actor: "t".into(),
                at_ms: 5,
                request_id: None,
                cmd: Command::RevokeKeys(vec![leaked]),
            };
            inv.apply(3, &req, &mut ch);
            sm.persist(&inv, ch).unwrap();
        }
        let (_log, sm) = super::super::open(dir.path()).unwrap();
        let r = sm.view().read(|inv| inv.revocation(&leaked).cloned());
        assert_eq!(r.map(|r| (r.index, r.at_ms)), Some((3, 5)));
    }
}
