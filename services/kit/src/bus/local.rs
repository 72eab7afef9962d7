//! The local job bus: JetStream's semantics kept in a database (`bus.db`
//! under the data directory, or a `bus` schema in PostgreSQL), so `postmesh
//! dev` needs no broker and still loses nothing across restarts.
//!
//! Messages get a sequence number; each durable consumer keeps a cursor
//! (jobs consumers start at the beginning, events consumers at the end, as
//! JetStream's work-queue and `DeliverPolicy::New` do) and a row per
//! unsettled delivery whose `available_at_ms` is the ack deadline or the
//! backoff. In-process consumers are woken on publish; others poll.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseBackend, DbErr, Value};
use sea_orm_migration::prelude::{
    ColumnDef, DeriveMigrationName, Index, MigrationTrait, SchemaManager, Table,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    BusError, ConsumerSpec, DeadLetter, Delivery, Message, Published, Received, Settle, StreamKind, Verdict,
    subject_matches,
};
use crate::config::Config;
use crate::db::{Database, now_ms, statement};

/// Published ids are remembered at least this long to drop duplicates
/// (JetStream's default duplicate window).
const DEDUP_WINDOW: Duration = Duration::from_secs(120);
/// How often a publish also purges settled messages.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// The local bus. Cheap to clone.
#[derive(Clone)]
pub struct LocalBus {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    wake: Notify,
    poll_interval: Duration,
    last_purge_ms: AtomicI64,
}

impl std::fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBus").field("schema", &self.inner.db.schema()).finish()
    }
}

impl LocalBus {
    /// Opens (and migrates) the bus database.
    pub async fn open(config: &Config) -> Result<Self, BusError> {
        let db = Database::connect(config, "bus").await?;
        db.migrate(migrations).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                wake: Notify::new(),
                poll_interval: config.jobs_poll_interval,
                last_purge_ms: AtomicI64::new(now_ms()),
            }),
        })
    }

    fn backend(&self) -> DatabaseBackend {
        self.inner.db.backend()
    }

    pub(super) async fn close(&self) {
        let _ = self.inner.db.conn().close_by_ref().await;
    }

    pub(super) async fn ping(&self) -> Result<(), BusError> {
        Ok(self.inner.db.ping().await?)
    }

    pub(super) async fn publish(&self, message: &Message) -> Result<Published, BusError> {
        let backend = self.backend();
        let txn = self.inner.db.begin_write().await?;
        if backend == DatabaseBackend::Postgres {
            // Sequence numbers must become visible in order, or a consumer
            // could move its cursor past one still being committed.
            txn.execute_unprepared("LOCK TABLE bus_messages IN EXCLUSIVE MODE").await?;
        }
        let inserted = txn
            .execute_raw(statement(
                backend,
                "INSERT INTO bus_messages (msg_id, subject, payload, headers, published_at_ms) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (msg_id) DO NOTHING",
                vec![
                    message.id.clone().into(),
                    message.subject.clone().into(),
                    message.payload.clone().into(),
                    headers_json(message).into(),
                    now_ms().into(),
                ],
            ))
            .await?
            .rows_affected();
        txn.commit().await?;
        if inserted == 0 {
            return Ok(Published::Duplicate);
        }
        self.inner.wake.notify_waiters();
        self.purge_if_due().await;
        Ok(Published::New)
    }

    /// Registers (or updates) the durable consumer and returns its source.
    pub(super) async fn consumer(
        &self,
        spec: &ConsumerSpec,
        stream: StreamKind,
    ) -> Result<LocalConsumer, BusError> {
        let backend = self.backend();
        let conn = self.inner.db.conn();
        let kind = stream_name(stream);
        let existing = conn
            .query_all_raw(statement(
                backend,
                "SELECT name, filter FROM bus_consumers WHERE stream = $1",
                vec![kind.into()],
            ))
            .await?;
        for row in existing {
            let name: String = row.try_get("", "name")?;
            let filter: String = row.try_get("", "filter")?;
            if stream == StreamKind::Jobs && name != spec.name && filters_overlap(&filter, &spec.filter) {
                return Err(BusError::InvalidConsumer(format!(
                    "consumer `{}` ({}) overlaps `{name}` ({filter}): each job goes to one consumer",
                    spec.name, spec.filter
                )));
            }
        }
        let start = match stream {
            StreamKind::Jobs => 0,
            StreamKind::Events => max_seq(conn, backend).await?,
        };
        conn.execute_raw(statement(
            backend,
            "INSERT INTO bus_consumers (name, filter, stream, cursor_seq, created_at_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO UPDATE SET filter = excluded.filter",
            vec![spec.name.clone().into(), spec.filter.clone().into(), kind.into(), start.into(), now_ms().into()],
        ))
        .await?;
        Ok(LocalConsumer { bus: self.clone(), spec: spec.clone() })
    }

    pub(super) async fn dead_letters(
        &self,
        filter: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
        let backend = self.backend();
        let (clause, mut values) = subject_clause(filter, 1);
        values.push((limit as i64).into());
        let sql = format!(
            "SELECT id, consumer, msg_id, subject, payload, headers, attempts, error, failed_at_ms \
             FROM bus_dead_letters WHERE {clause} ORDER BY failed_at_ms, id LIMIT ${}",
            values.len()
        );
        let rows = self.inner.db.conn().query_all_raw(statement(backend, &sql, values)).await?;
        rows.iter().map(dead_letter_from_row).collect::<Result<_, DbErr>>().map_err(Into::into)
    }

    pub(super) async fn replay_dead_letter(&self, id: &str) -> Result<(), BusError> {
        let backend = self.backend();
        let txn = self.inner.db.begin_write().await?;
        let row = txn
            .query_one_raw(statement(
                backend,
                "SELECT id, consumer, msg_id, subject, payload, headers, attempts, error, failed_at_ms \
                 FROM bus_dead_letters WHERE id = $1",
                vec![id.into()],
            ))
            .await?
            .ok_or_else(|| BusError::DeadLetterNotFound(id.to_owned()))?;
        let dead = dead_letter_from_row(&row)?;
        txn.execute_raw(statement(backend, "DELETE FROM bus_dead_letters WHERE id = $1", vec![id.into()]))
            .await?;
        txn.commit().await?;
        // Deleting first and publishing second could lose the message if
        // the publish failed; so on failure the dead letter is restored.
        if let Err(err) = self.publish(&dead.replay_message()).await {
            self.store_dead_letter(&dead).await?;
            return Err(err);
        }
        Ok(())
    }

    async fn store_dead_letter(&self, dead: &DeadLetter) -> Result<(), DbErr> {
        insert_dead_letter(self.inner.db.conn(), self.backend(), dead).await
    }

    /// Claims up to `max` due deliveries for `spec`: redeliveries first,
    /// then messages past the consumer's cursor.
    async fn claim(&self, spec: &ConsumerSpec, max: usize) -> Result<Vec<Received>, DbErr> {
        let backend = self.backend();
        let lock = if backend == DatabaseBackend::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
        let now = now_ms();
        let deadline = now + spec.ack_wait.as_millis() as i64;
        let txn = self.inner.db.begin_write().await?;

        let mut claimed: Vec<(i64, u32)> = Vec::new();
        let due = txn
            .query_all_raw(statement(
                backend,
                &format!(
                    "SELECT seq, attempts FROM bus_deliveries WHERE consumer = $1 AND available_at_ms <= $2 \
                     ORDER BY seq LIMIT $3{lock}"
                ),
                vec![spec.name.clone().into(), now.into(), (max as i64).into()],
            ))
            .await?;
        for row in due {
            let seq: i64 = row.try_get("", "seq")?;
            let attempts: i64 = row.try_get("", "attempts")?;
            txn.execute_raw(statement(
                backend,
                "UPDATE bus_deliveries SET attempts = attempts + 1, available_at_ms = $1 WHERE consumer = $2 AND seq = $3",
                vec![deadline.into(), spec.name.clone().into(), seq.into()],
            ))
            .await?;
            claimed.push((seq, attempts as u32 + 1));
        }

        let room = max - claimed.len();
        if room > 0 {
            let cursor_row = txn
                .query_one_raw(statement(
                    backend,
                    &format!(
                        "SELECT cursor_seq FROM bus_consumers WHERE name = $1{}",
                        if backend == DatabaseBackend::Postgres { " FOR UPDATE" } else { "" }
                    ),
                    vec![spec.name.clone().into()],
                ))
                .await?
                .ok_or_else(|| DbErr::RecordNotFound(format!("consumer {}", spec.name)))?;
            let cursor: i64 = cursor_row.try_get("", "cursor_seq")?;
            let newest = max_seq(&txn, backend).await?;
            let (clause, mut values) = subject_clause(Some(&spec.filter), 2);
            values.insert(0, cursor.into());
            values.push((room as i64).into());
            let sql = format!(
                "SELECT seq FROM bus_messages WHERE seq > $1 AND {clause} ORDER BY seq LIMIT ${}",
                values.len()
            );
            let fresh: Vec<i64> = txn
                .query_all_raw(statement(backend, &sql, values))
                .await?
                .iter()
                .map(|row| row.try_get("", "seq"))
                .collect::<Result<_, _>>()?;
            for seq in &fresh {
                txn.execute_raw(statement(
                    backend,
                    "INSERT INTO bus_deliveries (consumer, seq, attempts, available_at_ms) VALUES ($1, $2, 1, $3)",
                    vec![spec.name.clone().into(), (*seq).into(), deadline.into()],
                ))
                .await?;
                claimed.push((*seq, 1));
            }
            // With fewer matches than room, nothing matching lies between the
            // last match and the newest message: skip the cursor past them.
            let next_cursor = if fresh.len() < room { newest } else { *fresh.last().unwrap_or(&cursor) };
            if next_cursor > cursor {
                txn.execute_raw(statement(
                    backend,
                    "UPDATE bus_consumers SET cursor_seq = $1 WHERE name = $2",
                    vec![next_cursor.into(), spec.name.clone().into()],
                ))
                .await?;
            }
        }

        let mut received = Vec::with_capacity(claimed.len());
        for (seq, attempt) in claimed {
            let Some(row) = txn
                .query_one_raw(statement(
                    backend,
                    "SELECT msg_id, subject, payload, headers FROM bus_messages WHERE seq = $1",
                    vec![seq.into()],
                ))
                .await?
            else {
                // Purged while a delivery was pending cannot happen (purge
                // skips messages with deliveries), but never loop on it.
                txn.execute_raw(statement(
                    backend,
                    "DELETE FROM bus_deliveries WHERE consumer = $1 AND seq = $2",
                    vec![spec.name.clone().into(), seq.into()],
                ))
                .await?;
                continue;
            };
            let message = Message {
                id: row.try_get("", "msg_id")?,
                subject: row.try_get("", "subject")?,
                payload: row.try_get("", "payload")?,
                headers: parse_headers(&row.try_get::<String>("", "headers")?),
            };
            received.push(Received {
                delivery: Delivery { message, attempt },
                settle: Settle::Local(LocalSettle { bus: self.clone(), seq }),
            });
        }
        txn.commit().await?;
        Ok(received)
    }

    /// Drops messages every interested consumer has settled, once they are
    /// older than the duplicate window. Failures only delay the purge.
    async fn purge_if_due(&self) {
        let now = now_ms();
        let last = self.inner.last_purge_ms.load(Ordering::Relaxed);
        if now - last < PURGE_EVERY.as_millis() as i64
            || self
                .inner
                .last_purge_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        if let Err(err) = self.purge(now - DEDUP_WINDOW.as_millis() as i64).await {
            tracing::warn!(error = %err, "purging the local bus failed");
        }
    }

    pub(super) async fn purge(&self, older_than_ms: i64) -> Result<u64, DbErr> {
        let backend = self.backend();
        let conn = self.inner.db.conn();
        let consumers: Vec<(String, i64)> = conn
            .query_all_raw(statement(backend, "SELECT filter, cursor_seq FROM bus_consumers", vec![]))
            .await?
            .iter()
            .map(|row| Ok((row.try_get("", "filter")?, row.try_get("", "cursor_seq")?)))
            .collect::<Result<_, DbErr>>()?;
        let candidates = conn
            .query_all_raw(statement(
                backend,
                "SELECT seq, subject FROM bus_messages m WHERE published_at_ms < $1 \
                 AND NOT EXISTS (SELECT 1 FROM bus_deliveries d WHERE d.seq = m.seq) ORDER BY seq LIMIT 1000",
                vec![older_than_ms.into()],
            ))
            .await?;
        let mut doomed = Vec::new();
        for row in candidates {
            let seq: i64 = row.try_get("", "seq")?;
            let subject: String = row.try_get("", "subject")?;
            if settled_everywhere(&consumers, seq, &subject) {
                doomed.push(seq);
            }
        }
        let mut purged = 0;
        for seq in doomed {
            purged += conn
                .execute_raw(statement(backend, "DELETE FROM bus_messages WHERE seq = $1", vec![seq.into()]))
                .await?
                .rows_affected();
        }
        Ok(purged)
    }
}

/// Whether no consumer will ever need message `seq` again. A job nobody
/// consumes yet waits for its consumer; an event nobody consumes is never
/// read (new event consumers start at the end).
fn settled_everywhere(consumers: &[(String, i64)], seq: i64, subject: &str) -> bool {
    let interested: Vec<i64> = consumers
        .iter()
        .filter(|(filter, _)| subject_matches(filter, subject))
        .map(|(_, cursor)| *cursor)
        .collect();
    if interested.is_empty() {
        return !subject.starts_with("jobs.");
    }
    interested.iter().all(|cursor| *cursor >= seq)
}

/// Deliveries of one durable consumer.
pub(super) struct LocalConsumer {
    bus: LocalBus,
    spec: ConsumerSpec,
}

impl LocalConsumer {
    pub(super) async fn next(
        &mut self,
        max: usize,
        shutdown: &CancellationToken,
    ) -> Result<Vec<Received>, BusError> {
        loop {
            // Register for the wake-up before looking, so a publish between
            // the look and the wait is not missed.
            let notified = self.bus.inner.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let batch = self.bus.claim(&self.spec, max).await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(Vec::new()),
                _ = &mut notified => {}
                _ = tokio::time::sleep(self.bus.inner.poll_interval) => {}
            }
        }
    }
}

/// Settles one local delivery.
pub(super) struct LocalSettle {
    bus: LocalBus,
    seq: i64,
}

impl LocalSettle {
    pub(super) async fn apply(
        self,
        delivery: &Delivery,
        consumer: &str,
        verdict: Verdict,
    ) -> Result<(), BusError> {
        let backend = self.bus.backend();
        let conn = self.bus.inner.db.conn();
        match verdict {
            Verdict::Ack => {
                conn.execute_raw(statement(
                    backend,
                    "DELETE FROM bus_deliveries WHERE consumer = $1 AND seq = $2",
                    vec![consumer.into(), self.seq.into()],
                ))
                .await?;
            }
            Verdict::Redeliver(after) => {
                conn.execute_raw(statement(
                    backend,
                    "UPDATE bus_deliveries SET available_at_ms = $1 WHERE consumer = $2 AND seq = $3",
                    vec![(now_ms() + after.as_millis() as i64).into(), consumer.into(), self.seq.into()],
                ))
                .await?;
            }
            Verdict::Dead(error) => {
                let dead = DeadLetter {
                    id: uuid::Uuid::now_v7().to_string(),
                    consumer: consumer.to_owned(),
                    message: delivery.message.clone(),
                    attempts: delivery.attempt,
                    error,
                    failed_at_ms: now_ms(),
                };
                let txn = self.bus.inner.db.begin_write().await?;
                insert_dead_letter(&txn, backend, &dead).await?;
                txn.execute_raw(statement(
                    backend,
                    "DELETE FROM bus_deliveries WHERE consumer = $1 AND seq = $2",
                    vec![consumer.into(), self.seq.into()],
                ))
                .await?;
                txn.commit().await?;
                metrics::counter!("postmesh_dead_letters_total", "consumer" => consumer.to_owned())
                    .increment(1);
            }
        }
        Ok(())
    }
}

async fn insert_dead_letter(
    conn: &impl ConnectionTrait,
    backend: DatabaseBackend,
    dead: &DeadLetter,
) -> Result<(), DbErr> {
    conn.execute_raw(statement(
        backend,
        "INSERT INTO bus_dead_letters (id, consumer, msg_id, subject, payload, headers, attempts, error, failed_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
        vec![
            dead.id.clone().into(),
            dead.consumer.clone().into(),
            dead.message.id.clone().into(),
            dead.message.subject.clone().into(),
            dead.message.payload.clone().into(),
            headers_json(&dead.message).into(),
            i64::from(dead.attempts).into(),
            dead.error.clone().into(),
            dead.failed_at_ms.into(),
        ],
    ))
    .await?;
    Ok(())
}

fn stream_name(stream: StreamKind) -> &'static str {
    match stream {
        StreamKind::Jobs => "jobs",
        StreamKind::Events => "events",
    }
}

/// Two consumer filters overlap when some subject matches both.
fn filters_overlap(a: &str, b: &str) -> bool {
    let prefix = |f: &str| f.strip_suffix(".>").map(str::to_owned);
    match (prefix(a), prefix(b)) {
        (None, None) => a == b,
        (Some(_), None) => subject_matches(a, b),
        (None, Some(_)) => subject_matches(b, a),
        (Some(pa), Some(pb)) => {
            pa == pb || subject_matches(a, &format!("{pb}.x")) || subject_matches(b, &format!("{pa}.x"))
        }
    }
}

/// SQL condition on `subject` for a consumer filter, with its values
/// numbered from `first`.
fn subject_clause(filter: Option<&str>, first: usize) -> (String, Vec<Value>) {
    match filter {
        None => ("1 = 1".into(), vec![]),
        Some(filter) => match filter.strip_suffix(".>") {
            Some(prefix) => {
                let escaped = prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
                (format!("subject LIKE ${first} ESCAPE '\\'"), vec![format!("{escaped}.%").into()])
            }
            None => (format!("subject = ${first}"), vec![filter.into()]),
        },
    }
}

async fn max_seq(conn: &impl ConnectionTrait, backend: DatabaseBackend) -> Result<i64, DbErr> {
    let row = conn
        .query_one_raw(statement(backend, "SELECT COALESCE(MAX(seq), 0) AS newest FROM bus_messages", vec![]))
        .await?;
    match row {
        Some(row) => row.try_get("", "newest"),
        None => Ok(0),
    }
}

fn headers_json(message: &Message) -> String {
    serde_json::to_string(&message.headers).unwrap_or_else(|_| "{}".into())
}

fn parse_headers(text: &str) -> std::collections::BTreeMap<String, String> {
    serde_json::from_str(text).unwrap_or_default()
}

fn dead_letter_from_row(row: &sea_orm::QueryResult) -> Result<DeadLetter, DbErr> {
    Ok(DeadLetter {
        id: row.try_get("", "id")?,
        consumer: row.try_get("", "consumer")?,
        message: Message {
            id: row.try_get("", "msg_id")?,
            subject: row.try_get("", "subject")?,
            payload: row.try_get("", "payload")?,
            headers: parse_headers(&row.try_get::<String>("", "headers")?),
        },
        attempts: row.try_get::<i64>("", "attempts")? as u32,
        error: row.try_get("", "error")?,
        failed_at_ms: row.try_get("", "failed_at_ms")?,
    })
}

/// The local bus tables.
pub fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![Box::new(CreateLocalBus)]
}

#[derive(DeriveMigrationName)]
struct CreateLocalBus;

#[async_trait::async_trait]
impl MigrationTrait for CreateLocalBus {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("bus_messages")
                    .if_not_exists()
                    .col(ColumnDef::new("seq").big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new("msg_id").string().not_null().unique_key())
                    .col(ColumnDef::new("subject").string().not_null())
                    .col(ColumnDef::new("payload").blob().not_null())
                    .col(ColumnDef::new("headers").text().not_null())
                    .col(ColumnDef::new("published_at_ms").big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("bus_consumers")
                    .if_not_exists()
                    .col(ColumnDef::new("name").string().not_null().primary_key())
                    .col(ColumnDef::new("filter").string().not_null())
                    .col(ColumnDef::new("stream").string().not_null())
                    .col(ColumnDef::new("cursor_seq").big_integer().not_null())
                    .col(ColumnDef::new("created_at_ms").big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("bus_deliveries")
                    .if_not_exists()
                    .col(ColumnDef::new("consumer").string().not_null())
                    .col(ColumnDef::new("seq").big_integer().not_null())
                    .col(ColumnDef::new("attempts").big_integer().not_null())
                    .col(ColumnDef::new("available_at_ms").big_integer().not_null())
                    .primary_key(Index::create().col("consumer").col("seq"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("bus_deliveries_due")
                    .table("bus_deliveries")
                    .if_not_exists()
                    .col("consumer")
                    .col("available_at_ms")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("bus_dead_letters")
                    .if_not_exists()
                    .col(ColumnDef::new("id").string().not_null().primary_key())
                    .col(ColumnDef::new("consumer").string().not_null())
                    .col(ColumnDef::new("msg_id").string().not_null())
                    .col(ColumnDef::new("subject").string().not_null())
                    .col(ColumnDef::new("payload").blob().not_null())
                    .col(ColumnDef::new("headers").text().not_null())
                    .col(ColumnDef::new("attempts").big_integer().not_null())
                    .col(ColumnDef::new("error").text().not_null())
                    .col(ColumnDef::new("failed_at_ms").big_integer().not_null())
                    .to_owned(),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_filters() {
        assert!(filters_overlap("jobs.a.>", "jobs.a.x"));
        assert!(filters_overlap("jobs.a.x", "jobs.a.>"));
        assert!(filters_overlap("jobs.a.>", "jobs.a.b.>"));
        assert!(filters_overlap("jobs.a.>", "jobs.a.>"));
        assert!(!filters_overlap("jobs.a.>", "jobs.b.>"));
        assert!(!filters_overlap("jobs.a.x", "jobs.a.y"));
        assert!(!filters_overlap("jobs.ab.>", "jobs.a.>"));
    }

    #[test]
    fn like_patterns_escape_underscores() {
        let (clause, values) = subject_clause(Some("jobs.my_service.>"), 3);
        assert_eq!(clause, "subject LIKE $3 ESCAPE '\\'");
        assert_eq!(values, vec![Value::from("jobs.my\\_service.%")]);
    }
}
