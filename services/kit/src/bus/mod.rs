//! The job bus: NATS JetStream when `POSTMESH_NATS_URL` is set, a local bus
//! kept in the database otherwise. Services never publish directly: they
//! write to their [`Outbox`](crate::outbox::Outbox) in the same transaction
//! as the state change, and the relay publishes with the outbox row id as
//! message id, so a retried publish is de-duplicated by the bus.
//!
//! Subjects are `jobs.<service>.<job>` (work queue: each job goes to the
//! one consumer whose filter matches) and `events.<service>.<event>` (each
//! consumer gets every event). Delivery is at least once with explicit ack;
//! a failing job is delivered again after the configured backoff, and after
//! `max_deliver` tries it is moved to the dead letters, where it stays
//! listable and replayable.

mod local;
mod nats;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use local::LocalBus;
pub use nats::NatsBus;

use crate::config::Config;
use crate::telemetry::{REQUEST_ID_HEADER, RequestContext, TRACEPARENT_HEADER};

/// Header naming the instant (Unix ms) a message entered the outbox.
pub const ENQUEUED_AT_HEADER: &str = "postmesh-enqueued-at";
/// Header on a replayed dead letter naming the only consumer that handles
/// it (an event replay must not reach consumers that already succeeded).
pub const REPLAY_FOR_HEADER: &str = "postmesh-replay-for";
/// Header on a replayed dead letter carrying the original message id.
pub const REPLAY_OF_HEADER: &str = "postmesh-replay-of";

/// A message on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Unique id; publishing the same id twice delivers it once.
    pub id: String,
    /// `jobs.<service>.<job>` or `events.<service>.<event>`.
    pub subject: String,
    /// Protobuf-encoded payload.
    pub payload: Vec<u8>,
    /// Propagated headers (`x-request-id`, `traceparent`, ...).
    pub headers: BTreeMap<String, String>,
}

impl Message {
    /// The request context the message was produced under.
    pub fn context(&self) -> RequestContext {
        let mut headers = http::HeaderMap::new();
        for name in [REQUEST_ID_HEADER, TRACEPARENT_HEADER] {
            if let Some(value) = self.headers.get(name).and_then(|v| v.parse().ok()) {
                headers.insert(name, value);
            }
        }
        RequestContext::from_headers(&headers)
    }
}

/// Which stream a subject belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Work queue: one consumer per job.
    Jobs,
    /// Fan-out: every consumer sees every event.
    Events,
}

impl StreamKind {
    /// The stream of a subject, or an error naming the subject.
    pub fn of(subject: &str) -> Result<Self, BusError> {
        let valid_tokens = subject.split('.').all(|t| {
            !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                || t == ">"
        });
        match subject.split('.').next() {
            Some("jobs") if valid_tokens && subject.split('.').count() >= 2 => Ok(Self::Jobs),
            Some("events") if valid_tokens && subject.split('.').count() >= 2 => Ok(Self::Events),
            _ => Err(BusError::InvalidSubject(subject.to_owned())),
        }
    }
}

/// Whether `subject` matches a consumer `filter`: an exact subject, or a
/// prefix followed by `.>` matching one or more further tokens.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    match filter.strip_suffix(".>") {
        Some(prefix) => {
            subject.len() > prefix.len() + 1
                && subject.starts_with(prefix)
                && subject.as_bytes()[prefix.len()] == b'.'
        }
        None => filter == subject,
    }
}

/// How a durable consumer behaves.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Durable name, unique per bus (e.g. `social-publish`).
    pub name: String,
    /// Subject filter: exact or ending in `.>`.
    pub filter: String,
    /// Deliveries before a job goes to dead letters.
    pub max_deliver: u32,
    /// How long a delivery may stay unacknowledged before it is redelivered.
    pub ack_wait: Duration,
    /// Delay before the 2nd, 3rd, ... delivery after a failure (the last repeats).
    pub backoff: Vec<Duration>,
    /// Jobs handled at once by this process.
    pub concurrency: usize,
}

impl ConsumerSpec {
    /// A consumer with the process's configured delivery policy.
    pub fn new(name: impl Into<String>, filter: impl Into<String>, config: &Config) -> Self {
        Self {
            name: name.into(),
            filter: filter.into(),
            max_deliver: config.jobs_max_deliver,
            ack_wait: config.jobs_ack_wait,
            backoff: config.jobs_backoff.clone(),
            concurrency: 16,
        }
    }

    /// The delay before delivery number `attempt + 1`.
    pub fn backoff_after(&self, attempt: u32) -> Duration {
        let index = (attempt.max(1) as usize - 1).min(self.backoff.len().saturating_sub(1));
        self.backoff.get(index).copied().unwrap_or(Duration::from_secs(1))
    }

    fn validate(&self) -> Result<StreamKind, BusError> {
        if self.name.is_empty()
            || !self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(BusError::InvalidConsumer(format!(
                "consumer name `{}` must be letters, digits, - and _",
                self.name
            )));
        }
        if self.max_deliver == 0 || self.concurrency == 0 {
            return Err(BusError::InvalidConsumer(format!(
                "consumer `{}` needs max_deliver and concurrency of at least 1",
                self.name
            )));
        }
        if self.filter.contains('*') || self.filter.trim_end_matches(".>").contains('>') {
            return Err(BusError::InvalidSubject(self.filter.clone()));
        }
        StreamKind::of(&self.filter)
    }
}

/// One delivery of a message to a handler.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// 1 for the first delivery, 2 for the first redelivery, ...
    pub attempt: u32,
}

/// What a handler made of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// Done: acknowledge, never deliver again.
    Done,
    /// Failed for now: deliver again after `after` (or the backoff), until
    /// `max_deliver` is reached.
    Retry {
        /// Why, for the logs and the dead letter.
        reason: String,
        /// Wait this long instead of the backoff (e.g. a `Retry-After`).
        after: Option<Duration>,
    },
    /// Can never succeed (malformed payload): straight to dead letters.
    Reject {
        /// Why, kept with the dead letter.
        reason: String,
    },
}

/// Handles deliveries of one consumer. Closures `Fn(Delivery) -> impl
/// Future<Output = JobOutcome>` implement it.
pub trait JobHandler: Send + Sync + 'static {
    /// Processes one delivery. Must be idempotent: delivery is at least once.
    fn handle(&self, delivery: Delivery) -> BoxFuture<'static, JobOutcome>;
}

impl<F, Fut> JobHandler for F
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = JobOutcome> + Send + 'static,
{
    fn handle(&self, delivery: Delivery) -> BoxFuture<'static, JobOutcome> {
        Box::pin(self(delivery))
    }
}

/// A message that exhausted its deliveries or was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Id to replay or inspect it by.
    pub id: String,
    /// Consumer that gave up on it.
    pub consumer: String,
    /// The message as it was published.
    pub message: Message,
    /// Deliveries made.
    pub attempts: u32,
    /// The last failure.
    pub error: String,
    /// When it was dead-lettered (Unix ms).
    pub failed_at_ms: i64,
}

impl DeadLetter {
    /// The message that replays this dead letter: a new id (so the bus does
    /// not take it for a duplicate), addressed to the consumer that failed.
    fn replay_message(&self) -> Message {
        let mut headers = self.message.headers.clone();
        headers.insert(REPLAY_OF_HEADER.into(), self.message.id.clone());
        headers.insert(REPLAY_FOR_HEADER.into(), self.consumer.clone());
        Message {
            id: uuid::Uuid::now_v7().to_string(),
            subject: self.message.subject.clone(),
            payload: self.message.payload.clone(),
            headers,
        }
    }
}

/// Result of publishing one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Stored for delivery.
    New,
    /// A message with this id was already stored; nothing was added.
    Duplicate,
}

/// A bus failure.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The subject is not `jobs.…` or `events.…` with valid tokens.
    #[error("invalid subject `{0}`: expected jobs.<service>.<job> or events.<service>.<event>")]
    InvalidSubject(String),
    /// The consumer spec is unusable.
    #[error("{0}")]
    InvalidConsumer(String),
    /// No dead letter has that id.
    #[error("dead letter `{0}` not found")]
    DeadLetterNotFound(String),
    /// The local bus database failed.
    #[error("local bus database: {0}")]
    Database(#[from] sea_orm::DbErr),
    /// NATS failed or is unreachable.
    #[error("nats: {0}")]
    Nats(String),
}

/// The bus of a process.
#[derive(Clone, Debug)]
pub enum JobBus {
    /// In the database, for `postmesh dev` and single-process setups.
    Local(LocalBus),
    /// NATS JetStream, shared by every replica.
    Nats(NatsBus),
}

impl JobBus {
    /// Connects to NATS when configured (start-up does not wait for it: a
    /// bus that is down is retried in the background and shows in
    /// readiness), otherwise opens the local bus database.
    pub async fn connect(config: &Config) -> Result<Self, BusError> {
        match &config.nats_url {
            Some(_) => Ok(Self::Nats(NatsBus::connect(config).await?)),
            None => Ok(Self::Local(LocalBus::open(config).await?)),
        }
    }

    /// `nats` or `local`.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Local(_) => "local",
            Self::Nats(_) => "nats",
        }
    }

    /// Stores `message` for delivery, once per id.
    pub async fn publish(&self, message: &Message) -> Result<Published, BusError> {
        StreamKind::of(&message.subject)?;
        if message.subject.contains('>') {
            // Wildcards belong in consumer filters, never on a message.
            return Err(BusError::InvalidSubject(message.subject.clone()));
        }
        match self {
            Self::Local(bus) => bus.publish(message).await,
            Self::Nats(bus) => bus.publish(message).await,
        }
    }

    /// Starts a durable consumer that feeds `handler` until `shutdown`,
    /// then lets in-flight deliveries finish. The returned handle completes
    /// when the consumer has stopped.
    pub async fn consume(
        &self,
        spec: ConsumerSpec,
        handler: impl JobHandler,
        shutdown: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, BusError> {
        let stream = spec.validate()?;
        let source = match self {
            Self::Local(bus) => Source::Local(bus.consumer(&spec, stream).await?),
            Self::Nats(bus) => Source::Nats(Box::new(bus.consumer(&spec, stream).await?)),
        };
        Ok(tokio::spawn(run_consumer(source, spec, Arc::new(handler), shutdown)))
    }

    /// Dead letters, newest last, optionally only those whose original
    /// subject matches `filter`.
    pub async fn dead_letters(
        &self,
        filter: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
        match self {
            Self::Local(bus) => bus.dead_letters(filter, limit).await,
            Self::Nats(bus) => bus.dead_letters(filter, limit).await,
        }
    }

    /// Publishes a dead letter again (as a new message) and removes it.
    pub async fn replay_dead_letter(&self, id: &str) -> Result<(), BusError> {
        match self {
            Self::Local(bus) => bus.replay_dead_letter(id).await,
            Self::Nats(bus) => bus.replay_dead_letter(id).await,
        }
    }

    /// Releases the bus's connections (after consumers have stopped).
    pub async fn close(&self) {
        match self {
            Self::Local(bus) => bus.close().await,
            Self::Nats(bus) => bus.close().await,
        }
    }

    /// Checks that the bus answers.
    pub async fn ping(&self) -> Result<(), BusError> {
        match self {
            Self::Local(bus) => bus.ping().await,
            Self::Nats(bus) => bus.ping().await,
        }
    }
}

/// Where a consumer's deliveries come from.
enum Source {
    Local(local::LocalConsumer),
    Nats(Box<nats::NatsConsumer>),
}

/// A delivery plus the means to settle it with its backend.
struct Received {
    delivery: Delivery,
    settle: Settle,
}

enum Settle {
    Local(local::LocalSettle),
    Nats(Box<nats::NatsSettle>),
}

/// How a delivery ends.
enum Verdict {
    Ack,
    Redeliver(Duration),
    Dead(String),
}

impl Settle {
    async fn apply(self, delivery: &Delivery, consumer: &str, verdict: Verdict) -> Result<(), BusError> {
        match self {
            Self::Local(s) => s.apply(delivery, consumer, verdict).await,
            Self::Nats(s) => s.apply(delivery, consumer, verdict).await,
        }
    }
}

impl Source {
    /// Waits for up to `max` deliveries; empty on shutdown.
    async fn next(&mut self, max: usize, shutdown: &CancellationToken) -> Result<Vec<Received>, BusError> {
        match self {
            Self::Local(source) => source.next(max, shutdown).await,
            Self::Nats(source) => source.next(max, shutdown).await,
        }
    }
}

/// The consumer loop shared by both backends: fetch while there is room,
/// run each delivery in its own task (a panicking handler is a failed
/// attempt, not a dead consumer), settle by outcome.
async fn run_consumer(
    mut source: Source,
    spec: ConsumerSpec,
    handler: Arc<dyn JobHandler>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(spec.concurrency));
    let tasks = TaskTracker::new();
    let spec = Arc::new(spec);
    let mut failures = 0u32;
    tracing::debug!(consumer = %spec.name, filter = %spec.filter, "consumer started");
    while !shutdown.is_cancelled() {
        let Ok(first) = slots.clone().acquire_owned().await else { break };
        let free = 1 + slots.available_permits();
        let batch = match source.next(free, &shutdown).await {
            Ok(batch) => {
                failures = 0;
                batch
            }
            Err(err) => {
                drop(first);
                failures += 1;
                let wait = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                tracing::warn!(consumer = %spec.name, error = %err, retry_in_ms = wait.as_millis() as u64, "fetching jobs failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        };
        let mut first = Some(first);
        for received in batch {
            let permit = match first.take() {
                Some(permit) => permit,
                None => match slots.clone().acquire_owned().await {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let handler = handler.clone();
            let spec = spec.clone();
            tasks.spawn(async move {
                settle(received, &spec, handler).await;
                drop(permit);
            });
        }
    }
    tasks.close();
    tasks.wait().await;
    tracing::debug!(consumer = %spec.name, "consumer stopped");
}

async fn settle(received: Received, spec: &ConsumerSpec, handler: Arc<dyn JobHandler>) {
    let context = received.delivery.message.context();
    let span = tracing::info_span!(
        "job",
        consumer = %spec.name,
        subject = %received.delivery.message.subject,
        attempt = received.delivery.attempt,
        request_id = %context.request_id,
    );
    settle_in_span(received, spec, handler, context).instrument(span).await;
}

async fn settle_in_span(
    received: Received,
    spec: &ConsumerSpec,
    handler: Arc<dyn JobHandler>,
    context: RequestContext,
) {
    let Received { delivery, settle } = received;
    record_lag(&delivery, spec);

    let verdict = if delivery
        .message
        .headers
        .get(REPLAY_FOR_HEADER)
        .is_some_and(|target| *target != spec.name)
    {
        // A dead letter replayed for another consumer of the same events.
        Verdict::Ack
    } else if delivery.attempt > spec.max_deliver {
        // Delivered once more than allowed: the process handling the last
        // allowed attempt died before settling it.
        Verdict::Dead(format!(
            "no outcome after {} deliveries (the consumer stopped before acknowledging)",
            spec.max_deliver
        ))
    } else {
        let outcome = {
            let run = context.scope(handler.handle(delivery.clone()));
            match tokio::spawn(run).await {
                Ok(outcome) => outcome,
                Err(err) => JobOutcome::Retry { reason: format!("handler panicked: {err}"), after: None },
            }
        };
        match outcome {
            JobOutcome::Done => Verdict::Ack,
            JobOutcome::Retry { reason, .. } if delivery.attempt >= spec.max_deliver => {
                Verdict::Dead(format!("failed {} times, last: {reason}", delivery.attempt))
            }
            JobOutcome::Retry { reason, after } => {
                let wait = after.unwrap_or_else(|| spec.backoff_after(delivery.attempt));
                tracing::info!(reason = %reason, retry_in_ms = wait.as_millis() as u64, "job failed, will retry");
                Verdict::Redeliver(wait)
            }
            JobOutcome::Reject { reason } => Verdict::Dead(format!("rejected: {reason}")),
        }
    };
    let outcome = match &verdict {
        Verdict::Ack => "done",
        Verdict::Redeliver(_) => "retry",
        Verdict::Dead(reason) => {
            tracing::warn!(reason = %reason, "job moved to dead letters");
            "dead"
        }
    };
    metrics::counter!("postmesh_jobs_total", "consumer" => spec.name.clone(), "outcome" => outcome)
        .increment(1);
    if let Err(err) = settle.apply(&delivery, &spec.name, verdict).await {
        // Not settled: the bus delivers it again after ack_wait.
        tracing::warn!(error = %err, "settling a job failed; it will be delivered again");
    }
}

fn record_lag(delivery: &Delivery, spec: &ConsumerSpec) {
    if delivery.attempt != 1 {
        return;
    }
    if let Some(enqueued) =
        delivery.message.headers.get(ENQUEUED_AT_HEADER).and_then(|v| v.parse::<i64>().ok())
    {
        let lag = (crate::db::now_ms() - enqueued).max(0) as f64 / 1000.0;
        metrics::histogram!("postmesh_job_lag_seconds", "consumer" => spec.name.clone()).record(lag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_like_nats() {
        assert!(subject_matches("jobs.social.>", "jobs.social.publish"));
        assert!(subject_matches("jobs.social.>", "jobs.social.publish.retry"));
        assert!(!subject_matches("jobs.social.>", "jobs.social"));
        assert!(!subject_matches("jobs.social.>", "jobs.socialx.publish"));
        assert!(subject_matches("jobs.social.publish", "jobs.social.publish"));
        assert!(!subject_matches("jobs.social.publish", "jobs.social.publish2"));
    }

    #[test]
    fn subjects_are_checked() {
        assert_eq!(StreamKind::of("jobs.social.publish").unwrap(), StreamKind::Jobs);
        assert_eq!(StreamKind::of("events.user.deleted").unwrap(), StreamKind::Events);
        assert!(StreamKind::of("other.x").is_err());
        assert!(StreamKind::of("jobs..x").is_err());
        assert!(StreamKind::of("jobs.a b").is_err());
        assert!(StreamKind::of("jobs").is_err());
    }

    #[test]
    fn backoff_repeats_its_last_step() {
        let spec = ConsumerSpec {
            name: "t".into(),
            filter: "jobs.t.x".into(),
            max_deliver: 9,
            ack_wait: Duration::from_secs(1),
            backoff: vec![Duration::from_secs(1), Duration::from_secs(5)],
            concurrency: 1,
        };
        assert_eq!(spec.backoff_after(1), Duration::from_secs(1));
        assert_eq!(spec.backoff_after(2), Duration::from_secs(5));
        assert_eq!(spec.backoff_after(7), Duration::from_secs(5));
    }
}
