//! What the content service runs in the background: the scheduler, the
//! consumers of its own due-post jobs and of the social service's
//! publishing events, and the follower of status notifications.
//!
//! | consumer | subject | does |
//! |---|---|---|
//! | `content-post-due` | `jobs.content.post_due` | Scheduled → Queued, publishing jobs |
//! | `content-post-published` | `events.social.post_published` | target Posted |
//! | `content-post-failed` | `events.social.post_failed` | target Faulted |
//! | `content-publish-retry` | `events.social.publish_retry_scheduled` | target waits for its next try |

use std::future::Future;
use std::time::{Duration, Instant};

use postmesh_kit::bus::{ConsumerSpec, Delivery, JobOutcome};
use postmesh_kit::error::ApiError;
use postmesh_proto::postmesh::content::v1 as pb;
use postmesh_proto::postmesh::social::v1 as social;
use tokio_util::sync::CancellationToken;

use crate::domain::now_ms;
use crate::service::Content;

/// Longest the scheduler sleeps: other replicas' new schedules are seen
/// within this.
const SCHEDULER_IDLE: Duration = Duration::from_secs(1);
/// How often expired idempotency keys are removed.
const KEY_CLEANUP_EVERY: Duration = Duration::from_secs(600);

/// Starts the background work of `content` on its runtime's task tracker.
pub fn start(content: &Content) {
    let deps = content.deps();
    deps.tasks.spawn(content.feed().clone().follow(deps.shutdown.clone()));
    deps.tasks.spawn(run_scheduler(content.clone(), deps.shutdown.clone()));
    let consumers = content.clone();
    deps.tasks.spawn(async move {
        if let Err(err) = start_consumers(&consumers).await {
            tracing::error!(error = %err, "the content service's consumers did not start");
        }
    });
}

async fn start_consumers(content: &Content) -> Result<(), postmesh_kit::bus::BusError> {
    let deps = content.deps();
    let c = content.clone();
    deps.consume(
        ConsumerSpec::new("content-post-due", "jobs.content.post_due", &deps.config),
        move |delivery: Delivery| {
            handle::<pb::PostDueJob, _, _>(
                c.clone(),
                delivery,
                |c, job| async move { c.post_due(&job).await },
            )
        },
    )
    .await?;
    let c = content.clone();
    deps.consume(
        ConsumerSpec::new("content-post-published", "events.social.post_published", &deps.config),
        move |delivery: Delivery| {
            handle::<social::PostPublishedEvent, _, _>(c.clone(), delivery, |c, e| async move {
                c.target_published(&e).await
            })
        },
    )
    .await?;
    let c = content.clone();
    deps.consume(
        ConsumerSpec::new("content-post-failed", "events.social.post_failed", &deps.config),
        move |delivery: Delivery| {
            handle::<social::PostFailedEvent, _, _>(c.clone(), delivery, |c, e| async move {
                c.target_failed(&e).await
            })
        },
    )
    .await?;
    let c = content.clone();
    deps.consume(
        ConsumerSpec::new("content-publish-retry", "events.social.publish_retry_scheduled", &deps.config),
        move |delivery: Delivery| {
            handle::<social::PublishRetryScheduledEvent, _, _>(c.clone(), delivery, |c, e| async move {
                c.target_retry_scheduled(&e).await
            })
        },
    )
    .await?;
    Ok(())
}

/// Decodes a delivery and runs `work` on it: a payload that does not decode
/// can never succeed (dead letter at once); a failure is retried.
async fn handle<M, F, Fut>(content: Content, delivery: Delivery, work: F) -> JobOutcome
where
    M: prost::Message + Default,
    F: FnOnce(Content, M) -> Fut,
    Fut: Future<Output = Result<(), ApiError>>,
{
    let message = match M::decode(delivery.message.payload.as_slice()) {
        Ok(message) => message,
        Err(err) => return JobOutcome::Reject { reason: format!("payload does not decode: {err}") },
    };
    match work(content, message).await {
        Ok(()) => JobOutcome::Done,
        Err(err) => JobOutcome::Retry { reason: err.to_string(), after: None },
    }
}

/// Queues due posts, then sleeps until the next one is due (at most
/// [`SCHEDULER_IDLE`]) or a post is scheduled in this process.
async fn run_scheduler(content: Content, shutdown: CancellationToken) {
    let mut cleaned_at: Option<Instant> = None;
    while !shutdown.is_cancelled() {
        let wait = match content.enqueue_due_posts().await {
            Ok(pass) => {
                if pass.queued > 0 {
                    tracing::debug!(queued = pass.queued, "scheduled posts came due");
                }
                match pass.next_due_ms {
                    Some(at) => Duration::from_millis(
                        (at - now_ms()).clamp(0, SCHEDULER_IDLE.as_millis() as i64) as u64,
                    ),
                    None => SCHEDULER_IDLE,
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "the scheduler pass failed");
                SCHEDULER_IDLE
            }
        };
        if cleaned_at.is_none_or(|at| at.elapsed() >= KEY_CLEANUP_EVERY) {
            match content.forget_idempotency_keys().await {
                Ok(removed) if removed > 0 => tracing::debug!(removed, "expired idempotency keys removed"),
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "removing expired idempotency keys failed"),
            }
            cleaned_at = Some(Instant::now());
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = content.schedule_changed().notified() => {}
        }
    }
}
