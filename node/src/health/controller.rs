//! The health controller: every long-lived task of the node runs under it.
//! A task that returns before it was asked to stop, or panics, is a node
//! that can no longer be trusted to serve: the controller publishes the
//! failure (the BGP speaker withdraws on it at once, so a dead reconciler
//! cannot leave a stale "healthy" behind it) and trips shutdown.

use futures::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::error;

#[derive(Clone)]
pub struct Controller {
    shutdown: CancellationToken,
    failed: Arc<watch::Sender<Option<String>>>,
}

impl Controller {
    pub fn new(shutdown: CancellationToken) -> Controller {
        Controller {
            shutdown,
            failed: Arc::new(watch::channel(None).0),
        }
    }

    /// The first task failure, in words (None while all is well).
    pub fn failed(&self) -> watch::Receiver<Option<String>> {
        self.failed.subscribe()
    }

    /// Runs `task` (named `name`, asked to stop by `stop`) under
    /// supervision.
    pub fn guard<F>(
        &self,
        name: &'static str,
        stop: CancellationToken,
        task: F,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let this = self.clone();
        async move {
            let why = match AssertUnwindSafe(task).catch_unwind().await {
                Ok(()) if stop.is_cancelled() => return,
                Ok(()) => format!("the {name} task stopped unexpectedly"),
                Err(p) => {
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(no message)".into());
                    format!("the {name} task panicked: {msg}")
                }
            };
            this.fail(why);
        }
    }

    fn fail(&self, why: String) {
        error!(reason = %why, "a long-lived task failed: withdrawing and stopping the node");
        self.failed.send_if_modified(|f| {
            let first = f.is_none();
            if first {
                *f = Some(why);
            }
            first
        });
        self.shutdown.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_published_and_trips_shutdown() {
        let shutdown = CancellationToken::new();
        let c = Controller::new(shutdown.clone());
        let failed = c.failed();
        c.guard("dataplane", CancellationToken::new(), async {
            panic!("device gone");
        })
        .await;
        assert!(shutdown.is_cancelled());
        assert_eq!(
            failed.borrow().as_deref(),
            Some("the dataplane task panicked: device gone")
        );
    }

    #[tokio::test]
    async fn a_task_that_returns_early_trips_shutdown_and_the_first_failure_stays() {
        let shutdown = CancellationToken::new();
        let c = Controller::new(shutdown.clone());
        c.guard("bgp", CancellationToken::new(), async {}).await;
        c.guard("expiry", CancellationToken::new(), async {}).await;
        assert!(shutdown.is_cancelled());
        assert_eq!(
            c.failed().borrow().as_deref(),
            Some("the bgp task stopped unexpectedly")
        );
    }

    #[tokio::test]
    async fn a_task_asked_to_stop_is_no_failure() {
        let shutdown = CancellationToken::new();
        let c = Controller::new(shutdown.clone());
        let stop = CancellationToken::new();
        stop.cancel();
        c.guard("dataplane", stop, async {}).await;
        assert!(!shutdown.is_cancelled());
        assert!(c.failed().borrow().is_none());
    }
}
