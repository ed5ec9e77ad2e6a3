//! The replicated endpoint map, this node's side: device reads propose
//! what they saw (a client handshaking here, from an endpoint the map does
//! not have), coalesced per peer and written to Raft in batches — at most
//! one batch per `endpoint-batch-interval`, one write in flight. A write
//! that fails is dropped, not retried: the next read proposes it again.

use crate::metrics::Metrics;
use crate::model::{Command, EndpointRecord, Request, WgKey};
use crate::raft::RaftNode;
use crate::time::now_ms;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tracing::{debug, info};

pub use anygate_core::endpoints::proposals;

pub struct Batcher {
    node: RaftNode,
    metrics: Metrics,
    max: usize,
    interval: Duration,
    pending: BTreeMap<WgKey, EndpointRecord>,
    flush_at: Instant,
    write: Option<tokio::task::JoinHandle<()>>,
}

impl Batcher {
    pub fn new(node: RaftNode, metrics: Metrics, max: usize, interval: Duration) -> Batcher {
        Batcher {
            node,
            metrics,
            max,
            interval,
            pending: BTreeMap::new(),
            flush_at: Instant::now(),
            write: None,
        }
    }

    /// Newer observations replace older ones of the same peer.
    pub fn offer(&mut self, proposals: Vec<(WgKey, EndpointRecord)>) {
        self.pending.extend(proposals);
    }

    /// Propose a batch if one is due and none is in flight.
    pub fn flush(&mut self) {
        if self.pending.is_empty() || Instant::now() < self.flush_at {
            return;
        }
        if self.write.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let mut batch = Vec::new();
        while batch.len() < self.max {
            match self.pending.pop_first() {
                Some(e) => batch.push(e),
                None => break,
            }
        }
        self.flush_at = Instant::now() + self.interval;
        let n = batch.len() as u64;
        // Operators follow clients by these lines; a mass move (a failover
        // of thousands) is summarised instead of flooding the log.
        const LOGGED: usize = 20;
        for (k, r) in batch.iter().take(LOGGED) {
            info!(peer = %k, endpoint = %r.endpoint, handshake_ms = r.last_handshake_ms, "client endpoint changed (handshake here)");
        }
        if batch.len() > LOGGED {
            info!(
                more = batch.len() - LOGGED,
                "more client endpoints changed in this batch"
            );
        }
        let node = self.node.clone();
        let metrics = self.metrics.clone();
        self.write = Some(tokio::spawn(async move {
            let req = Request {
                actor: format!("node-{}/endpoints", node.id),
                at_ms: now_ms(),
                request_id: None,
                cmd: Command::UpdateEndpoints(batch),
            };
            match node.write(req).await {
                Ok(w) => {
                    metrics.endpoint_updates.inc_by(n);
                    debug!(
                        index = w.index,
                        endpoints = n,
                        "endpoint observations replicated"
                    );
                }
                // Dropped, not retried: the next read observes them again.
                Err(e) => debug!(error = %e, "endpoint observations not replicated"),
            }
        }));
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        if let Some(h) = self.write.take() {
            h.abort();
        }
    }
}
