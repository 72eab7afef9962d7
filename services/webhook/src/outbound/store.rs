//! What outbound keeps: endpoints (signing secrets sealed with the
//! service's cipher under a context naming the endpoint), messages (one per
//! emitted event, the `webhook-id`), deliveries (one message to one
//! endpoint, with its retry state), the attempt log, replays and trigger
//! idempotency keys.

use postmesh_kit::db::columns::{int, long_text, ms, string};
use sea_orm_migration::prelude::{ColumnDef, Index, MigrationName, MigrationTrait, SchemaManager, Table};
use sea_orm_migration::sea_orm::DbErr;

pub mod endpoints {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "endpoints")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub workspace_id: String,
        pub url: String,
        /// The filters as a JSON array of strings.
        pub event_types: String,
        pub description: String,
        /// `EndpointStatus` number.
        pub status: i32,
        pub disabled_reason: String,
        pub disabled_by: String,
        pub disabled_at_ms: Option<i64>,
        /// Start of the current run of failed attempts.
        pub failures_started_at_ms: Option<i64>,
        /// The current secret (`whsec_…`), sealed; empty once deleted.
        pub secret: String,
        /// The previous secret during a rotation's overlap, sealed.
        pub previous_secret: Option<String>,
        pub previous_secret_expires_at_ms: Option<i64>,
        pub created_by: String,
        pub created_at_ms: i64,
        pub updated_at_ms: i64,
        /// Set once deleted (kept so a second delete succeeds).
        pub deleted_at_ms: Option<i64>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod messages {
    use sea_orm::entity::prelude::*;

    /// One emitted event; its id is the `webhook-id` of every delivery.
    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "delivery_messages")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub workspace_id: String,
        pub event_type: String,
        /// The `data` object, JSON.
        pub payload: String,
        /// `trigger`, `emit` or the subject of the mesh event.
        pub source: String,
        pub created_at_ms: i64,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod deliveries {
    use sea_orm::entity::prelude::*;

    /// One message to one endpoint.
    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "deliveries")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub workspace_id: String,
        pub message_id: String,
        pub message_created_at_ms: i64,
        pub endpoint_id: String,
        pub event_type: String,
        /// `DeliveryStatus` number.
        pub status: i32,
        pub attempt_count: i32,
        /// Retry-schedule waits used so far.
        pub schedule_step: i32,
        /// Whether failed attempts are followed by scheduled retries (false
        /// after a manual retry of a finished delivery).
        pub auto_retry: bool,
        /// A manual attempt is queued and not yet made.
        pub manual_queued: bool,
        pub next_attempt_at_ms: Option<i64>,
        /// The replay that created it; empty otherwise.
        pub replay_id: String,
        pub created_at_ms: i64,
        pub updated_at_ms: i64,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod attempts {
    use sea_orm::entity::prelude::*;

    /// One HTTP attempt: a line of the delivery log.
    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "delivery_attempts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub workspace_id: String,
        pub delivery_id: String,
        pub message_id: String,
        pub endpoint_id: String,
        pub url: String,
        pub event_type: String,
        pub attempt_number: i32,
        /// `DeliveryAttemptTrigger` number.
        pub trigger: i32,
        /// `DeliveryAttemptStatus` number.
        pub status: i32,
        pub status_code: i32,
        pub latency_ms: i64,
        pub response_excerpt: String,
        pub error: String,
        pub attempted_at_ms: i64,
        pub next_attempt_at_ms: Option<i64>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod replays {
    use sea_orm::entity::prelude::*;

    /// A `ReplayEndpoint` call and how far its job got.
    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "delivery_replays")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub workspace_id: String,
        pub endpoint_id: String,
        pub start_ms: i64,
        pub end_ms: i64,
        pub failed_only: bool,
        /// The last message re-sent (messages go in id order).
        pub cursor: String,
        pub message_count: i32,
        pub done: bool,
        pub created_at_ms: i64,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod keys {
    use sea_orm::entity::prelude::*;

    /// An idempotency key of `TriggerEvent`/`EmitEvent`, valid 24 hours.
    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "delivery_keys")]
    pub struct Model {
        /// `<workspace id>:<key>`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub key: String,
        pub workspace_id: String,
        pub message_id: String,
        pub created_at_ms: i64,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// The outbound tables' migrations.
pub fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![Box::new(CreateOutboundTables)]
}

struct CreateOutboundTables;

// Named by hand: the derived name is the file stem (`store`), which the
// inbound half could share.
impl MigrationName for CreateOutboundTables {
    fn name(&self) -> &str {
        "m_webhook_outbound_0001_create_tables"
    }
}

fn ms_null(name: &'static str) -> ColumnDef {
    ColumnDef::new(name).big_integer().null().to_owned()
}

fn flag(name: &'static str) -> ColumnDef {
    ColumnDef::new(name).boolean().not_null().to_owned()
}

async fn index(
    manager: &SchemaManager<'_>,
    name: &str,
    table: &str,
    columns: &[&'static str],
) -> Result<(), DbErr> {
    let mut index = Index::create();
    index.name(name).table(table.to_owned()).if_not_exists();
    for column in columns {
        index.col(*column);
    }
    manager.create_index(index.to_owned()).await
}

#[async_trait::async_trait]
impl MigrationTrait for CreateOutboundTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("endpoints")
                    .if_not_exists()
                    .col(string("id").primary_key().to_owned())
                    .col(string("workspace_id"))
                    .col(long_text("url"))
                    .col(long_text("event_types"))
                    .col(long_text("description"))
                    .col(int("status"))
                    .col(long_text("disabled_reason"))
                    .col(string("disabled_by"))
                    .col(ms_null("disabled_at_ms"))
                    .col(ms_null("failures_started_at_ms"))
                    .col(long_text("secret"))
                    .col(ColumnDef::new("previous_secret").text().null())
                    .col(ms_null("previous_secret_expires_at_ms"))
                    .col(string("created_by"))
                    .col(ms("created_at_ms"))
                    .col(ms("updated_at_ms"))
                    .col(ms_null("deleted_at_ms"))
                    .to_owned(),
            )
            .await?;
        index(manager, "endpoints_by_workspace", "endpoints", &["workspace_id", "id"]).await?;
        manager
            .create_table(
                Table::create()
                    .table("delivery_messages")
                    .if_not_exists()
                    .col(string("id").primary_key().to_owned())
                    .col(string("workspace_id"))
                    .col(string("event_type"))
                    .col(long_text("payload"))
                    .col(string("source"))
                    .col(ms("created_at_ms"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("deliveries")
                    .if_not_exists()
                    .col(string("id").primary_key().to_owned())
                    .col(string("workspace_id"))
                    .col(string("message_id"))
                    .col(ms("message_created_at_ms"))
                    .col(string("endpoint_id"))
                    .col(string("event_type"))
                    .col(int("status"))
                    .col(int("attempt_count"))
                    .col(int("schedule_step"))
                    .col(flag("auto_retry"))
                    .col(flag("manual_queued"))
                    .col(ms_null("next_attempt_at_ms"))
                    .col(string("replay_id"))
                    .col(ms("created_at_ms"))
                    .col(ms("updated_at_ms"))
                    .to_owned(),
            )
            .await?;
        index(manager, "deliveries_by_endpoint", "deliveries", &["endpoint_id", "message_created_at_ms"])
            .await?;
        index(manager, "deliveries_by_message", "deliveries", &["message_id"]).await?;
        manager
            .create_table(
                Table::create()
                    .table("delivery_attempts")
                    .if_not_exists()
                    .col(string("id").primary_key().to_owned())
                    .col(string("workspace_id"))
                    .col(string("delivery_id"))
                    .col(string("message_id"))
                    .col(string("endpoint_id"))
                    .col(long_text("url"))
                    .col(string("event_type"))
                    .col(int("attempt_number"))
                    .col(int("trigger"))
                    .col(int("status"))
                    .col(int("status_code"))
                    .col(ms("latency_ms"))
                    .col(long_text("response_excerpt"))
                    .col(long_text("error"))
                    .col(ms("attempted_at_ms"))
                    .col(ms_null("next_attempt_at_ms"))
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "delivery_attempts_by_workspace",
            "delivery_attempts",
            &["workspace_id", "attempted_at_ms"],
        )
        .await?;
        manager
            .create_table(
                Table::create()
                    .table("delivery_replays")
                    .if_not_exists()
                    .col(string("id").primary_key().to_owned())
                    .col(string("workspace_id"))
                    .col(string("endpoint_id"))
                    .col(ms("start_ms"))
                    .col(ms("end_ms"))
                    .col(flag("failed_only"))
                    .col(string("cursor"))
                    .col(int("message_count"))
                    .col(flag("done"))
                    .col(ms("created_at_ms"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("delivery_keys")
                    .if_not_exists()
                    .col(long_text("key").primary_key().to_owned())
                    .col(string("workspace_id"))
                    .col(string("message_id"))
                    .col(ms("created_at_ms"))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
