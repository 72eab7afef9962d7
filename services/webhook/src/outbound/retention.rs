//! Ageing out: attempts, finished deliveries, messages and replays older
//! than the log retention (`webhook_log_retention`, default 30 days) are
//! deleted hourly, and idempotency keys after their 24 hours. Pending
//! deliveries and their messages stay whatever their age.

use std::time::Duration;

use postmesh_kit::db::now_ms;
use postmesh_proto::postmesh::webhook::v1::DeliveryStatus;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};

use super::Outbound;
use super::store::{attempts, deliveries, keys, messages, replays};

/// How often the purge runs.
const EVERY: Duration = Duration::from_secs(3600);
/// Messages deleted per pass at most (the rest wait for the next pass).
const MESSAGES_PER_PASS: u64 = 10_000;

/// Runs the purge until shutdown (first pass right after start-up).
pub async fn run(outbound: Outbound) {
    loop {
        if let Err(err) = outbound.purge().await {
            tracing::warn!(error = %err, "purging old webhook deliveries failed");
        }
        tokio::select! {
            _ = outbound.deps.shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

impl Outbound {
    async fn purge(&self) -> Result<(), sea_orm::DbErr> {
        let db = self.deps.db.conn();
        let now = now_ms();
        let cutoff = now - self.deps.config.webhook_log_retention.as_millis() as i64;
        attempts::Entity::delete_many().filter(attempts::Column::AttemptedAtMs.lt(cutoff)).exec(db).await?;
        deliveries::Entity::delete_many()
            .filter(deliveries::Column::UpdatedAtMs.lt(cutoff))
            .filter(deliveries::Column::Status.ne(DeliveryStatus::Pending as i32))
            .exec(db)
            .await?;
        let old: Vec<String> = messages::Entity::find()
            .select_only()
            .column(messages::Column::Id)
            .filter(messages::Column::CreatedAtMs.lt(cutoff))
            .limit(MESSAGES_PER_PASS)
            .into_tuple()
            .all(db)
            .await?;
        for chunk in old.chunks(500) {
            let kept: Vec<String> = deliveries::Entity::find()
                .select_only()
                .column(deliveries::Column::MessageId)
                .filter(deliveries::Column::MessageId.is_in(chunk.to_vec()))
                .into_tuple()
                .all(db)
                .await?;
            let gone: Vec<String> = chunk.iter().filter(|id| !kept.contains(id)).cloned().collect();
            if !gone.is_empty() {
                messages::Entity::delete_many().filter(messages::Column::Id.is_in(gone)).exec(db).await?;
            }
        }
        replays::Entity::delete_many().filter(replays::Column::CreatedAtMs.lt(cutoff)).exec(db).await?;
        let day = 24 * 3600 * 1000;
        keys::Entity::delete_many().filter(keys::Column::CreatedAtMs.lt(now - day)).exec(db).await?;
        Ok(())
    }
}
