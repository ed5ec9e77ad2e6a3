//! React's IO: reading the react sets over nftables netlink. The rule that
//! finds orphans in what was read is pure and lives in
//! `anygate_core::failover::react` (re-exported here).

pub use anygate_core::failover::react::*;

/// Read the six sets over nftables netlink (each element's age in ms from
/// its expiry; no process, ~1 ms per 1,000 sources).
pub async fn read(table: &'static str) -> Result<Seen, ReadError> {
    tokio::task::spawn_blocking(move || {
        let mut seen = Seen::default();
        let read = |set| {
            crate::host::nft::set_elements(table, set, SET_TIMEOUT_MS)
                .map_err(|e| ReadError::Set(set, e))
        };
        for set in [SET_DATA4, SET_DATA6] {
            seen.data.extend(
                read(set)?
                    .iter()
                    .filter_map(|e| Some((sock_key(&e.key)?, e.age_ms))),
            );
        }
        for set in [SET_LOAD4, SET_LOAD6] {
            seen.load.extend(
                read(set)?
                    .iter()
                    .filter_map(|e| Some((sock_key(&e.key)?, e.age_ms))),
            );
        }
        for set in [SET_IN4, SET_IN6] {
            seen.inner.extend(
                read(set)?
                    .iter()
                    .filter_map(|e| Some((addr_key(&e.key)?, e.age_ms))),
            );
        }
        Ok(seen)
    })
    .await
    .map_err(ReadError::Task)?
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("set {0}: {1}")]
    Set(&'static str, crate::host::nft::NftError),
    #[error("react read task: {0}")]
    Task(tokio::task::JoinError),
}
