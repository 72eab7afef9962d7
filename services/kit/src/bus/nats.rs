//! The job bus on NATS JetStream. Three streams: `POSTMESH_JOBS` (work
//! queue over `jobs.>`), `POSTMESH_EVENTS` (limits retention over
//! `events.>`) and `POSTMESH_DLQ` (`dlq.<original subject>`), each name and
//! subject prefixed by the namespace when one is set. Consumers are durable
//! pull consumers with explicit ack; `Nats-Msg-Id` de-duplicates publishes.
//!
//! The server is told `max_deliver + 1`: the extra delivery only happens
//! when a process died while handling the last allowed one, and the
//! consumer loop then moves the message to the DLQ instead of letting it
//! sit in the work queue forever.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use futures::{FutureExt, StreamExt};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::{
    BusError, ConsumerSpec, DeadLetter, Delivery, Message, Published, Received, Settle, StreamKind, Verdict,
    subject_matches,
};
use crate::config::Config;

/// Events are kept this long for consumers that are behind.
const EVENTS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Dead letters are kept this long for inspection and replay.
const DLQ_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Publish de-duplication window (JetStream's default).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

const CONSUMER_HEADER: &str = "Postmesh-Consumer";
const ATTEMPTS_HEADER: &str = "Postmesh-Attempts";
const ERROR_HEADER: &str = "Postmesh-Error";
const ORIGINAL_ID_HEADER: &str = "Postmesh-Original-Id";
const FAILED_AT_HEADER: &str = "Postmesh-Failed-At";

/// The NATS bus. Cheap to clone.
#[derive(Clone)]
pub struct NatsBus {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    /// `""` or `"<namespace>."`, in front of every subject.
    subject_prefix: String,
    /// `""` or `"<NAMESPACE>_"`, in front of every stream name.
    stream_prefix: String,
    streams: OnceCell<()>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus").field("prefix", &self.inner.subject_prefix).finish()
    }
}

fn nats_err(err: impl std::fmt::Display) -> BusError {
    BusError::Nats(err.to_string())
}

impl NatsBus {
    /// Connects without waiting for the server: the client keeps retrying
    /// in the background, and streams are created on first use.
    pub async fn connect(config: &Config) -> Result<Self, BusError> {
        let url = config.nats_url.as_ref().ok_or_else(|| nats_err("no NATS URL configured"))?;
        let options = async_nats::ConnectOptions::new()
            .name("postmesh")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("nats connected"),
                    async_nats::Event::Disconnected => tracing::warn!("nats disconnected"),
                    other => tracing::debug!(event = %other, "nats event"),
                }
            });
        let client = options.connect(url.expose().as_str()).await.map_err(nats_err)?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_secs(5));
        let (subject_prefix, stream_prefix) = match &config.namespace {
            Some(ns) => (format!("{}.", ns.as_str()), format!("{}_", ns.as_str().to_ascii_uppercase())),
            None => (String::new(), String::new()),
        };
        Ok(Self {
            inner: Arc::new(Inner { client, js, subject_prefix, stream_prefix, streams: OnceCell::new() }),
        })
    }

    fn subject(&self, logical: &str) -> String {
        format!("{}{logical}", self.inner.subject_prefix)
    }

    fn logical<'a>(&self, subject: &'a str) -> &'a str {
        subject.strip_prefix(&self.inner.subject_prefix).unwrap_or(subject)
    }

    fn stream_name(&self, kind: &str) -> String {
        format!("{}POSTMESH_{kind}", self.inner.stream_prefix)
    }

    /// Creates or updates the three streams, once per process.
    async fn ensure_streams(&self) -> Result<(), BusError> {
        self.inner
            .streams
            .get_or_try_init(|| async {
                let js = &self.inner.js;
                let configs = [
                    stream::Config {
                        name: self.stream_name("JOBS"),
                        subjects: vec![self.subject("jobs.>")],
                        retention: stream::RetentionPolicy::WorkQueue,
                        duplicate_window: DUPLICATE_WINDOW,
                        description: Some("postmesh jobs: one consumer per subject".into()),
                        ..Default::default()
                    },
                    stream::Config {
                        name: self.stream_name("EVENTS"),
                        subjects: vec![self.subject("events.>")],
                        retention: stream::RetentionPolicy::Limits,
                        max_age: EVENTS_MAX_AGE,
                        duplicate_window: DUPLICATE_WINDOW,
                        description: Some("postmesh domain events".into()),
                        ..Default::default()
                    },
                    stream::Config {
                        name: self.stream_name("DLQ"),
                        subjects: vec![self.subject("dlq.>")],
                        retention: stream::RetentionPolicy::Limits,
                        max_age: DLQ_MAX_AGE,
                        duplicate_window: DUPLICATE_WINDOW,
                        description: Some("postmesh dead letters".into()),
                        ..Default::default()
                    },
                ];
                for config in configs {
                    if js.get_stream(&config.name).await.is_ok() {
                        continue;
                    }
                    if let Err(err) = js.create_stream(config.clone()).await {
                        // Another replica may have created it meanwhile.
                        js.get_stream(&config.name).await.map_err(|_| nats_err(err))?;
                    }
                }
                Ok::<(), BusError>(())
            })
            .await
            .map(|_| ())
    }

    pub(super) async fn close(&self) {
        // Flush what is buffered; the connection closes with the last clone.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.client.flush()).await;
    }

    pub(super) async fn ping(&self) -> Result<(), BusError> {
        match self.inner.client.connection_state() {
            async_nats::connection::State::Connected => self.ensure_streams().await,
            state => Err(nats_err(format!("not connected ({state})"))),
        }
    }

    pub(super) async fn publish(&self, message: &Message) -> Result<Published, BusError> {
        self.ensure_streams().await?;
        let ack = self
            .publish_raw(
                &self.subject(&message.subject),
                &message.id,
                &message.payload,
                to_header_map(&message.headers),
            )
            .await?;
        Ok(if ack.duplicate { Published::Duplicate } else { Published::New })
    }

    async fn publish_raw(
        &self,
        subject: &str,
        id: &str,
        payload: &[u8],
        headers: async_nats::HeaderMap,
    ) -> Result<jetstream::publish::PublishAck, BusError> {
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload.to_vec().into())
            .headers(headers)
            .message_id(id);
        self.inner
            .js
            .send_publish(subject.to_owned(), publish)
            .await
            .map_err(nats_err)?
            .await
            .map_err(nats_err)
    }

    pub(super) async fn consumer(
        &self,
        spec: &ConsumerSpec,
        stream: StreamKind,
    ) -> Result<NatsConsumer, BusError> {
        self.ensure_streams().await?;
        let stream_name = self.stream_name(match stream {
            StreamKind::Jobs => "JOBS",
            StreamKind::Events => "EVENTS",
        });
        let js_stream = self.inner.js.get_stream(&stream_name).await.map_err(nats_err)?;
        let config = pull::Config {
            durable_name: Some(spec.name.clone()),
            filter_subject: self.subject(&spec.filter),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: spec.ack_wait,
            max_deliver: i64::from(spec.max_deliver) + 1,
            deliver_policy: match stream {
                StreamKind::Jobs => jetstream::consumer::DeliverPolicy::All,
                StreamKind::Events => jetstream::consumer::DeliverPolicy::New,
            },
            max_ack_pending: (spec.concurrency as i64 * 4).max(64),
            ..Default::default()
        };
        let consumer = match js_stream.create_consumer(config.clone()).await {
            Ok(consumer) => consumer,
            // An existing durable with other settings: apply the new ones.
            Err(_) => js_stream.update_consumer(config).await.map_err(nats_err)?,
        };
        Ok(NatsConsumer { bus: self.clone(), consumer, messages: None })
    }

    pub(super) async fn dead_letters(
        &self,
        filter: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
        self.ensure_streams().await?;
        let dlq = self.inner.js.get_stream(self.stream_name("DLQ")).await.map_err(nats_err)?;
        let subject_filter = self.subject("dlq.>");
        let mut next = 1u64;
        let mut found = Vec::new();
        while found.len() < limit {
            let raw = match dlq
                .raw_message_builder()
                .sequence(next)
                .next_by_subject(subject_filter.clone())
                .send()
                .await
            {
                Ok(raw) => raw,
                Err(err) if err.kind() == stream::RawMessageErrorKind::NoMessageFound => break,
                Err(err) => return Err(nats_err(err)),
            };
            next = raw.sequence + 1;
            let dead = self.dead_letter_from(raw);
            if filter.is_none_or(|f| subject_matches(f, &dead.message.subject)) {
                found.push(dead);
            }
        }
        Ok(found)
    }

    fn dead_letter_from(&self, raw: jetstream::message::StreamMessage) -> DeadLetter {
        let mut headers = from_header_map(&raw.headers);
        let mut take = |name: &str| headers.remove(name).unwrap_or_default();
        let consumer = take(CONSUMER_HEADER);
        let attempts = take(ATTEMPTS_HEADER).parse().unwrap_or(0);
        let error = take(ERROR_HEADER);
        let original_id = take(ORIGINAL_ID_HEADER);
        let failed_at_ms = take(FAILED_AT_HEADER).parse().unwrap_or(0);
        let subject = self.logical(raw.subject.as_str()).trim_start_matches("dlq.").to_owned();
        DeadLetter {
            id: raw.sequence.to_string(),
            consumer,
            message: Message { id: original_id, subject, payload: raw.payload.to_vec(), headers },
            attempts,
            error,
            failed_at_ms,
        }
    }

    pub(super) async fn replay_dead_letter(&self, id: &str) -> Result<(), BusError> {
        let sequence: u64 = id.parse().map_err(|_| BusError::DeadLetterNotFound(id.to_owned()))?;
        self.ensure_streams().await?;
        let dlq = self.inner.js.get_stream(self.stream_name("DLQ")).await.map_err(nats_err)?;
        let raw = match dlq.get_raw_message(sequence).await {
            Ok(raw) => raw,
            Err(err) if err.kind() == stream::RawMessageErrorKind::NoMessageFound => {
                return Err(BusError::DeadLetterNotFound(id.to_owned()));
            }
            Err(err) => return Err(nats_err(err)),
        };
        let replay = self.dead_letter_from(raw).replay_message();
        // Publish before deleting: a failure in between replays twice
        // (handlers are idempotent) rather than losing the job.
        self.publish(&replay).await?;
        dlq.delete_message(sequence).await.map_err(nats_err)?;
        Ok(())
    }

    async fn dead_letter(&self, delivery: &Delivery, consumer: &str, error: &str) -> Result<(), BusError> {
        let mut headers = to_header_map(&delivery.message.headers);
        headers.insert(CONSUMER_HEADER, consumer);
        headers.insert(ATTEMPTS_HEADER, delivery.attempt.to_string().as_str());
        headers.insert(ERROR_HEADER, sanitize_header(error).as_str());
        headers.insert(ORIGINAL_ID_HEADER, delivery.message.id.as_str());
        headers.insert(FAILED_AT_HEADER, crate::db::now_ms().to_string().as_str());
        let subject = self.subject(&format!("dlq.{}", delivery.message.subject));
        // The id makes a repeated dead-lettering of the same delivery (a
        // crash before the ack below) land in the DLQ once.
        let id = format!("{}:{consumer}", delivery.message.id);
        self.publish_raw(&subject, &id, &delivery.message.payload, headers).await?;
        metrics::counter!("postmesh_dead_letters_total", "consumer" => consumer.to_owned()).increment(1);
        Ok(())
    }
}

/// Deliveries of one durable pull consumer.
pub(super) struct NatsConsumer {
    bus: NatsBus,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    messages: Option<pull::Stream>,
}

impl NatsConsumer {
    pub(super) async fn next(
        &mut self,
        max: usize,
        shutdown: &CancellationToken,
    ) -> Result<Vec<Received>, BusError> {
        if self.messages.is_none() {
            let messages = self
                .consumer
                .stream()
                .max_messages_per_batch(max.max(1))
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
                .map_err(nats_err)?;
            self.messages = Some(messages);
        }
        let Some(messages) = self.messages.as_mut() else { return Ok(Vec::new()) };
        let first = tokio::select! {
            _ = shutdown.cancelled() => return Ok(Vec::new()),
            item = messages.next() => item,
        };
        let mut batch = Vec::new();
        let mut item = first;
        loop {
            match item {
                Some(Ok(message)) => batch.push(self.received(message)?),
                Some(Err(err)) => {
                    if batch.is_empty() {
                        return Err(nats_err(err));
                    }
                    break;
                }
                None => {
                    // The pull stream ended (e.g. the consumer was deleted
                    // and recreated); start a new one on the next call.
                    self.messages = None;
                    break;
                }
            }
            if batch.len() >= max {
                break;
            }
            match self.messages.as_mut().and_then(|m| m.next().now_or_never()) {
                Some(next) => item = next,
                None => break,
            }
        }
        Ok(batch)
    }

    fn received(&self, message: jetstream::Message) -> Result<Received, BusError> {
        let attempt = message.info().map_err(nats_err)?.delivered.max(1) as u32;
        let headers = message.headers.as_ref().map(from_header_map).unwrap_or_default();
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let subject = self.bus.logical(message.subject.as_str()).to_owned();
        let payload = message.payload.to_vec();
        let (_, acker) = message.split();
        Ok(Received {
            delivery: Delivery { message: Message { id, subject, payload, headers }, attempt },
            settle: Settle::Nats(Box::new(NatsSettle { bus: self.bus.clone(), acker })),
        })
    }
}

/// Settles one NATS delivery.
pub(super) struct NatsSettle {
    bus: NatsBus,
    acker: jetstream::message::Acker,
}

impl NatsSettle {
    pub(super) async fn apply(
        self,
        delivery: &Delivery,
        consumer: &str,
        verdict: Verdict,
    ) -> Result<(), BusError> {
        match verdict {
            Verdict::Ack => self.acker.double_ack().await.map_err(nats_err),
            Verdict::Redeliver(after) => {
                self.acker.ack_with(AckKind::Nak(Some(after))).await.map_err(nats_err)
            }
            Verdict::Dead(error) => {
                self.bus.dead_letter(delivery, consumer, &error).await?;
                self.acker.double_ack().await.map_err(nats_err)
            }
        }
    }
}

/// Headers that describe the NATS message itself, not the job.
fn is_transport_header(name: &str) -> bool {
    name.starts_with("Nats-") || name.starts_with("nats-")
}

fn to_header_map(headers: &BTreeMap<String, String>) -> async_nats::HeaderMap {
    let mut map = async_nats::HeaderMap::new();
    for (name, value) in headers {
        map.insert(name.as_str(), sanitize_header(value).as_str());
    }
    map
}

fn from_header_map(headers: &async_nats::HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .filter(|(name, _)| !is_transport_header(name.as_ref()))
        .filter_map(|(name, values)| values.first().map(|v| (name.to_string(), v.as_str().to_owned())))
        .collect()
}

/// Header values cannot hold line breaks.
fn sanitize_header(value: &str) -> String {
    value.replace(['\r', '\n'], " ")
}
