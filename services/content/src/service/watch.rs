//! `WatchPostStatus`: the current status, then every change, until the post
//! settles (or is deleted: NOT_FOUND). Changes are noticed through the
//! [`StatusFeed`](crate::feed::StatusFeed) and, should a notification be
//! lost, by re-reading every [`RECHECK`](crate::feed::RECHECK).

use postmesh_kit::error::ApiError;
use postmesh_proto::postmesh::content::v1 as pb;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::{Content, status_pb};
use crate::feed::RECHECK;

/// Messages buffered for a slow watcher; a watcher that falls further
/// behind just waits (it reads the latest status when it catches up).
const BUFFER: usize = 8;

pub type StatusStream = ReceiverStream<Result<pb::WatchPostStatusResponse, tonic::Status>>;

impl Content {
    async fn current_status(&self, workspace_id: &str, id: &str) -> Result<pb::PublishingStatus, ApiError> {
        let view = self.view(self.db(), workspace_id, id).await?;
        status_pb(&view)
    }

    /// `GetPostStatus`.
    pub async fn post_status(&self, workspace_id: &str, id: &str) -> Result<pb::PublishingStatus, ApiError> {
        if id.is_empty() {
            return Err(ApiError::invalid("id", "is required"));
        }
        self.current_status(workspace_id, id).await
    }

    /// `WatchPostStatus`.
    pub async fn watch_status(&self, workspace_id: &str, id: &str) -> Result<StatusStream, ApiError> {
        // Subscribe before the first read, so no change falls in between.
        let mut changes = self.feed().subscribe();
        let first = self.post_status(workspace_id, id).await?;
        let (tx, rx) = mpsc::channel(BUFFER);
        let settled = first.settled;
        let mut last = first.clone();
        tx.send(Ok(pb::WatchPostStatusResponse { status: Some(first) })).await.ok();
        if settled {
            return Ok(ReceiverStream::new(rx));
        }
        let content = self.clone();
        let (workspace_id, id) = (workspace_id.to_owned(), id.to_owned());
        let shutdown = self.deps().shutdown.clone();
        self.deps().tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(RECHECK) => {}
                    change = changes.recv() => match change {
                        Ok(changed) if *changed == *id => {}
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
                match content.current_status(&workspace_id, &id).await {
                    Ok(status) if status == last => {}
                    Ok(status) => {
                        let settled = status.settled;
                        last = status.clone();
                        if tx.send(Ok(pb::WatchPostStatusResponse { status: Some(status) })).await.is_err()
                            || settled
                        {
                            return;
                        }
                    }
                    Err(err @ ApiError::NotFound(_)) => {
                        let _ = tx.send(Err(err.into())).await;
                        return;
                    }
                    Err(err) => {
                        tracing::warn!(post_id = %id, error = %err, "reading a watched post's status failed")
                    }
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}
