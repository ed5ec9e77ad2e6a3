//! React's IO: reading the react sets over nftables netlink. The rule that
//! finds orphans in what was read is pure and lives in
//! `anygate_core::failover::react` (re-exported here).

pub use anygate_core::failover::react::*;

/// Read the six sets over nftables netlink (each element's age in ms from
/// its expiry; no process: ~14 ms for 10,000 sources, BENCHMARKS.md).
pub async fn read(table: &'static str) -> Result<Seen, ReadError> {
    tokio::task::spawn_blocking(move || {
        Ok(Seen {
            data: ages(table, [SET_DATA4, SET_DATA6], sock_key)?,
            load: ages(table, [SET_LOAD4, SET_LOAD6], sock_key)?,
            inner: ages(table, [SET_IN4, SET_IN6], addr_key)?,
        })
    })
    .await
    .map_err(ReadError::Task)?
}

/// Key -> age of the elements of a v4 and a v6 set.
fn ages<K: std::hash::Hash + Eq>(
    table: &str,
    sets: [&'static str; 2],
    key: fn(&[u8]) -> Option<K>,
) -> Result<std::collections::HashMap<K, u64>, ReadError> {
    let mut out = std::collections::HashMap::new();
    for set in sets {
        let elems = crate::host::nft::set_elements(table, set, SET_TIMEOUT_MS)
            .map_err(|e| ReadError::Set(set, e))?;
        out.extend(elems.iter().filter_map(|e| Some((key(&e.key)?, e.age_ms))));
    }
    Ok(out)
}

/// Empty the six sets: what they hold was seen by a device that may not
/// exist any more (a device re-created, a node restarted). A stale entry
/// would make react kick a client the router is not sending here (yet),
/// and its hold-off would then delay the kick that counts; with the sets
/// empty, the client's first packet that does arrive is a new source and
/// takes the event path at once. A rare event, so `nft` itself runs it.
pub async fn forget(table: &str) -> Result<(), crate::host::nft::NftError> {
    let script: String = [SET_DATA4, SET_DATA6, SET_LOAD4, SET_LOAD6, SET_IN4, SET_IN6]
        .iter()
        .map(|set| format!("flush set inet {table} {set}\n"))
        .collect();
    crate::host::nft::apply_nft(&script).await
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("set {0}: {1}")]
    Set(&'static str, crate::host::nft::NftError),
    #[error("react read task: {0}")]
    Task(tokio::task::JoinError),
}
