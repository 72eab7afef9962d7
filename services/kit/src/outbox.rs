//! The transactional outbox. A service writes its state change and the
//! message it causes in one database transaction ([`Outbox::enqueue`]);
//! the relay ([`Outbox::run_relay`]) publishes pending rows in order with
//! the row id as message id and deletes them once the bus has them. If the
//! bus is down the rows wait; a relay that dies after publishing but before
//! deleting publishes again, and the bus drops the duplicate by id.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseTransaction, DbErr};
use sea_orm_migration::prelude::{ColumnDef, DeriveMigrationName, MigrationTrait, SchemaManager, Table};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bus::{ENQUEUED_AT_HEADER, JobBus, Message, StreamKind};
use crate::db::{Database, now_ms, statement};
use crate::telemetry::{REQUEST_ID_HEADER, RequestContext, TRACEPARENT_HEADER};

/// Rows one relay pass claims.
const BATCH: i64 = 100;
/// A claimed row is left alone by other relays for this long.
const CLAIM_FOR: Duration = Duration::from_secs(30);
/// Longest wait between attempts while the bus is failing.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A message to publish once the surrounding transaction commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// `jobs.<service>.<job>` or `events.<service>.<event>`.
    pub subject: String,
    /// Protobuf-encoded payload.
    pub payload: Vec<u8>,
    /// Extra headers; request id and trace context are added on enqueue.
    pub headers: BTreeMap<String, String>,
    /// The message's id on the bus, which de-duplicates by it (NATS
    /// `Nats-Msg-Id`); a fresh UUIDv7 when unset. Set it to something
    /// derived from the change (`<key>:<round>`) so that queueing the same
    /// work twice delivers it once.
    pub id: Option<String>,
}

impl OutboxMessage {
    /// A job for `service` (`jobs.<service>.<job>`).
    pub fn job(service: &str, job: &str, payload: &impl prost::Message) -> Self {
        Self::new(format!("jobs.{service}.{job}"), payload.encode_to_vec())
    }

    /// An event of `service` (`events.<service>.<event>`).
    pub fn event(service: &str, event: &str, payload: &impl prost::Message) -> Self {
        Self::new(format!("events.{service}.{event}"), payload.encode_to_vec())
    }

    /// A message with raw bytes.
    pub fn new(subject: impl Into<String>, payload: Vec<u8>) -> Self {
        Self { subject: subject.into(), payload, headers: BTreeMap::new(), id: None }
    }

    /// The same message with a given bus id (see [`OutboxMessage::id`]).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

/// Carries a chosen bus id from the outbox row to the relay.
const MESSAGE_ID_HEADER: &str = "postmesh-message-id";

/// One service's outbox.
#[derive(Clone)]
pub struct Outbox {
    db: Database,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("schema", &self.db.schema()).finish()
    }
}

impl Outbox {
    /// The outbox in `db` (whose migrations must include [`migrations`]).
    pub fn new(db: Database) -> Self {
        Self { db, wake: Arc::new(Notify::new()) }
    }

    /// Writes `message` inside the caller's transaction `conn`; it is
    /// published only if that transaction commits. Returns the message id.
    pub async fn enqueue(
        &self,
        conn: &impl ConnectionTrait,
        message: OutboxMessage,
    ) -> Result<String, DbErr> {
        StreamKind::of(&message.subject).map_err(|e| DbErr::Custom(e.to_string()))?;
        let id = uuid::Uuid::now_v7().to_string();
        let context = RequestContext::current_or_new();
        let now = now_ms();
        let mut headers = message.headers;
        headers.insert(REQUEST_ID_HEADER.into(), context.request_id);
        headers.insert(TRACEPARENT_HEADER.into(), context.traceparent);
        headers.insert(ENQUEUED_AT_HEADER.into(), now.to_string());
        if let Some(message_id) = message.id {
            headers.insert(MESSAGE_ID_HEADER.into(), message_id);
        }
        let headers = serde_json::to_string(&headers).map_err(|e| DbErr::Custom(e.to_string()))?;
        conn.execute_raw(statement(
            conn.get_database_backend(),
            "INSERT INTO postmesh_outbox (id, subject, payload, headers, created_at_ms, claimed_until_ms, attempts) \
             VALUES ($1, $2, $3, $4, $5, 0, 0)",
            vec![id.clone().into(), message.subject.into(), message.payload.into(), headers.into(), now.into()],
        ))
        .await?;
        Ok(id)
    }

    /// Commits `txn` and wakes the relay, so the messages it enqueued go
    /// out now instead of at the next poll.
    pub async fn commit(&self, txn: DatabaseTransaction) -> Result<(), DbErr> {
        txn.commit().await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Messages not yet handed to the bus.
    pub async fn backlog(&self) -> Result<u64, DbErr> {
        let row = self
            .db
            .conn()
            .query_one_raw(statement(
                self.db.backend(),
                "SELECT COUNT(*) AS pending FROM postmesh_outbox",
                vec![],
            ))
            .await?;
        Ok(row.map(|r| r.try_get::<i64>("", "pending")).transpose()?.unwrap_or(0) as u64)
    }

    /// Publishes pending messages until `shutdown`. Wakes on
    /// [`Outbox::commit`] and every `poll_interval` (for rows written by
    /// other replicas or left behind by a crash).
    pub async fn run_relay(self, bus: JobBus, poll_interval: Duration, shutdown: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let wait = match self.relay_once(&bus).await {
                Ok(published) if published as i64 >= BATCH => {
                    failures = 0;
                    continue;
                }
                Ok(_) => {
                    failures = 0;
                    poll_interval
                }
                Err(err) => {
                    failures += 1;
                    let wait = (Duration::from_millis(50) * 2u32.pow(failures.min(10))).min(MAX_BACKOFF);
                    tracing::warn!(schema = %self.db.schema(), error = %err, retry_in_ms = wait.as_millis() as u64, "outbox relay failed; messages wait");
                    wait
                }
            };
            if let Ok(backlog) = self.backlog().await {
                metrics::gauge!("postmesh_outbox_backlog", "service" => self.db.schema().to_owned())
                    .set(backlog as f64);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        // A last pass so messages committed during shutdown leave now.
        if let Err(err) = self.relay_once(&bus).await {
            tracing::warn!(schema = %self.db.schema(), error = %err, "final outbox pass failed; messages stay for the next start");
        }
    }

    /// One pass: claim a batch, publish in order, delete what was
    /// published. Stops at the first failure so order is kept.
    pub async fn relay_once(&self, bus: &JobBus) -> Result<usize, RelayError> {
        let claimed = self.claim().await?;
        for (published, (row, message)) in claimed.iter().enumerate() {
            if let Err(err) = bus.publish(message).await {
                // Hand back this row and every later one, so the next pass
                // (here or in another replica) starts from the same place.
                let unpublished: Vec<&str> =
                    claimed[published..].iter().map(|(row, _)| row.as_str()).collect();
                self.release(&unpublished, &err.to_string()).await?;
                return Err(RelayError::Bus(err));
            }
            self.db
                .conn()
                .execute_raw(statement(
                    self.db.backend(),
                    "DELETE FROM postmesh_outbox WHERE id = $1",
                    vec![row.clone().into()],
                ))
                .await?;
        }
        Ok(claimed.len())
    }

    /// Claims a batch: each row's id with the message it carries.
    async fn claim(&self) -> Result<Vec<(String, Message)>, DbErr> {
        let backend = self.db.backend();
        let now = now_ms();
        let lock = if backend == DatabaseBackend::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
        let txn = self.db.begin_write().await?;
        let rows = txn
            .query_all_raw(statement(
                backend,
                &format!(
                    "SELECT id, subject, payload, headers FROM postmesh_outbox WHERE claimed_until_ms < $1 \
                     ORDER BY id LIMIT $2{lock}"
                ),
                vec![now.into(), BATCH.into()],
            ))
            .await?;
        let mut messages = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("", "id")?;
            txn.execute_raw(statement(
                backend,
                "UPDATE postmesh_outbox SET claimed_until_ms = $1 WHERE id = $2",
                vec![(now + CLAIM_FOR.as_millis() as i64).into(), id.clone().into()],
            ))
            .await?;
            let mut headers: BTreeMap<String, String> =
                serde_json::from_str(&row.try_get::<String>("", "headers")?).unwrap_or_default();
            let message = Message {
                id: headers.remove(MESSAGE_ID_HEADER).unwrap_or_else(|| id.clone()),
                subject: row.try_get("", "subject")?,
                payload: row.try_get("", "payload")?,
                headers,
            };
            messages.push((id, message));
        }
        txn.commit().await?;
        Ok(messages)
    }

    /// Gives rows back after a failed publish, noting why.
    async fn release(&self, ids: &[&str], error: &str) -> Result<(), DbErr> {
        let error: String = error.chars().take(500).collect();
        for id in ids {
            self.db
                .conn()
                .execute_raw(statement(
                    self.db.backend(),
                    "UPDATE postmesh_outbox SET claimed_until_ms = 0, attempts = attempts + 1, last_error = $1 WHERE id = $2",
                    vec![error.clone().into(), (*id).into()],
                ))
                .await?;
        }
        Ok(())
    }
}

/// Why a relay pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The service database failed.
    #[error("outbox database: {0}")]
    Database(#[from] DbErr),
    /// The bus refused or is unreachable.
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
}

/// The outbox table; every service includes these in its migrations.
pub fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![Box::new(CreateOutbox)]
}

#[derive(DeriveMigrationName)]
struct CreateOutbox;

#[async_trait::async_trait]
impl MigrationTrait for CreateOutbox {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("postmesh_outbox")
                    .if_not_exists()
                    .col(ColumnDef::new("id").string().not_null().primary_key())
                    .col(ColumnDef::new("subject").string().not_null())
                    .col(ColumnDef::new("payload").blob().not_null())
                    .col(ColumnDef::new("headers").text().not_null())
                    .col(ColumnDef::new("created_at_ms").big_integer().not_null())
                    .col(ColumnDef::new("claimed_until_ms").big_integer().not_null())
                    .col(ColumnDef::new("attempts").big_integer().not_null())
                    .col(ColumnDef::new("last_error").text().null())
                    .to_owned(),
            )
            .await
    }
}
