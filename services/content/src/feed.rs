//! Tells `WatchPostStatus` streams that a post's status changed, in this
//! replica and every other one.
//!
//! After a change commits, the writer publishes the post's id on a channel of
//! the key-value store (Redis pub/sub across replicas, or the in-memory
//! store in one process). Each replica follows that channel with one
//! subscription and hands the ids to its watchers through a broadcast
//! channel; a watcher then reads the status again from the database, so a
//! notification carries no state and a lost one costs only latency:
//! watchers also re-read on their own every [`RECHECK`].

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use postmesh_kit::kv::Kv;
use tokio::sync::broadcast;

/// The key-value channel carrying post ids.
const CHANNEL: &str = "content:post-status";
/// Ids buffered per watcher before it lags (and then simply re-reads).
const BUFFER: usize = 1024;
/// How often a watcher re-reads without being told.
pub const RECHECK: Duration = Duration::from_secs(2);

/// Change notifications of one process.
#[derive(Clone)]
pub struct StatusFeed {
    kv: Kv,
    local: broadcast::Sender<Arc<str>>,
}

impl StatusFeed {
    /// A feed over `kv`. [`StatusFeed::follow`] must run for notifications
    /// from the store to reach watchers.
    pub fn new(kv: Kv) -> Self {
        let (local, _) = broadcast::channel(BUFFER);
        Self { kv, local }
    }

    /// Announces that `post_id` changed, to every replica.
    pub async fn notify(&self, post_id: &str) {
        if let Err(err) = self.kv.publish(CHANNEL, post_id.as_bytes()).await {
            // The store is down: at least this replica's watchers hear it.
            tracing::debug!(error = %err, "status notification not published; notifying locally");
            let _ = self.local.send(Arc::from(post_id));
        }
    }

    /// Ids of posts that changed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.local.subscribe()
    }

    /// Follows the store's channel until `shutdown`, subscribing again when
    /// the subscription ends (Redis restarted).
    pub async fn follow(self, shutdown: tokio_util::sync::CancellationToken) {
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            match self.kv.subscribe(CHANNEL).await {
                Ok(mut messages) => {
                    failures = 0;
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            message = messages.next() => match message {
                                Some(bytes) => {
                                    if let Ok(id) = std::str::from_utf8(&bytes) {
                                        let _ = self.local.send(Arc::from(id));
                                    }
                                }
                                None => break,
                            },
                        }
                    }
                }
                Err(err) => {
                    failures += 1;
                    tracing::warn!(error = %err, "cannot follow post status changes in the key-value store");
                }
            }
            let wait = Duration::from_millis(100 * 2u64.pow(failures.min(5)));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
