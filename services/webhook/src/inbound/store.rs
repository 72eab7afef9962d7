//! What the inbound half keeps: generic inbound sources (secrets sealed with
//! the service's cipher under a context naming the source), EventSub
//! subscriptions (desired state; deleted rows are kept so reconciliation can
//! remove them at Twitch and a repeated delete succeeds), received inbound
//! events with what the rules did, and the rules.
//!
//! Every table is scoped by `workspace_id`, and every query filters on it.

use postmesh_kit::db::columns::{int, long_text, ms, optional_ms, string};
use sea_orm_migration::prelude::{ColumnDef, Index, MigrationName, MigrationTrait, SchemaManager, Table};
use sea_orm_migration::sea_orm::DbErr;

pub mod sources {
    use sea_orm::entity::prelude::*;

    /// A generic sender of Standard Webhooks.
    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "inbound_sources")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub workspace_id: String,
        pub name: String,
        pub description: String,
        /// The current secret (`whsec_...`), sealed.
        pub secret: String,
        /// The previous secret during a rotation's overlap, sealed.
        pub previous_secret: Option<String>,
        pub previous_secret_expires_at_ms: Option<i64>,
        pub created_at_ms: i64,
        /// Set once deleted; the row stays so a repeated delete succeeds.
        pub deleted_at_ms: Option<i64>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod subscriptions {
    use sea_orm::entity::prelude::*;

    /// A workspace's EventSub subscription (desired state).
    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "eventsub_subscriptions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub workspace_id: String,
        /// Twitch's id; empty until Helix accepted it.
        pub twitch_subscription_id: String,
        #[sea_orm(column_name = "sub_type")]
        pub r#type: String,
        pub version: String,
        /// The condition as canonical JSON (keys sorted), the identity at
        /// Twitch together with type and version.
        pub condition: String,
        /// `EventSubSubscriptionStatus` number.
        pub status: i32,
        pub status_reason: String,
        pub created_at_ms: i64,
        pub updated_at_ms: i64,
        /// Set once deleted; reconciliation removes it at Twitch.
        pub deleted_at_ms: Option<i64>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod events {
    use sea_orm::entity::prelude::*;

    /// A verified inbound event and what the rules did with it.
    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "inbound_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub workspace_id: String,
        /// `InboundSourceKind` number.
        pub source_kind: i32,
        pub source_id: String,
        pub event_type: String,
        /// The sender's message id; unique per workspace and source.
        pub external_id: String,
        /// The body, as received (JSON).
        pub payload: String,
        /// `InboundEventStatus` number.
        pub status: i32,
        pub error: String,
        /// The `RuleFiring`s as JSON (`[{rule_id,status,post_id,detail}]`).
        pub firings: String,
        pub received_at_ms: i64,
        pub processed_at_ms: Option<i64>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod rules {
    use sea_orm::entity::prelude::*;

    /// A rule turning matching inbound events into posts.
    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "rules")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub workspace_id: String,
        pub name: String,
        pub enabled: bool,
        /// `InboundSourceKind` number.
        pub source_kind: i32,
        pub inbound_source_id: String,
        pub event_type: String,
        /// `RuleConditions` as JSON.
        pub conditions: String,
        pub template_id: String,
        /// Template variables as a JSON object.
        pub variables: String,
        /// Target account ids as a JSON array.
        pub target_account_ids: String,
        /// 0: no limit.
        pub min_interval_ms: i64,
        pub last_fired_at_ms: Option<i64>,
        /// The inbound event that claimed the last firing, so a redelivered
        /// job for the same event passes the interval check again.
        pub last_fired_event_id: String,
        pub created_at_ms: i64,
        pub updated_at_ms: i64,
        pub deleted_at_ms: Option<i64>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// The inbound tables' migrations, oldest first.
pub fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![Box::new(CreateInboundTables)]
}

struct CreateInboundTables;

// Named by hand: the derived name is the file stem (`store`), which the
// outbound half could share.
impl MigrationName for CreateInboundTables {
    fn name(&self) -> &str {
        "m_webhook_inbound_0001_create_tables"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateInboundTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("inbound_sources")
                    .if_not_exists()
                    .col(string("id").primary_key().to_owned())
                    .col(string("workspace_id"))
                    .col(string("name"))
                    .col(string("description"))
                    .col(long_text("secret"))
                    .col(ColumnDef::new("previous_secret").text().null())
                    .col(optional_ms("previous_secret_expires_at_ms"))
                    .col(ms("created_at_ms"))
                    .col(optional_ms("deleted_at_ms"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("eventsub_subscriptions")
                    .if_not_exists()
                    .col(string("id").primary_key().to_owned())
                    .col(string("workspace_id"))
                    .col(string("twitch_subscription_id"))
                    .col(string("sub_type"))
                    .col(string("version"))
                    .col(long_text("condition"))
                    .col(int("status"))
                    .col(long_text("status_reason"))
                    .col(ms("created_at_ms"))
                    .col(ms("updated_at_ms"))
                    .col(optional_ms("deleted_at_ms"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("inbound_events")
                    .if_not_exists()
                    .col(string("id").primary_key().to_owned())
                    .col(string("workspace_id"))
                    .col(int("source_kind"))
                    .col(string("source_id"))
                    .col(string("event_type"))
                    .col(string("external_id"))
                    .col(long_text("payload"))
                    .col(int("status"))
                    .col(long_text("error"))
                    .col(long_text("firings"))
                    .col(ms("received_at_ms"))
                    .col(optional_ms("processed_at_ms"))
                    .to_owned(),
            )
            .await?;
        // The database's own guard against storing one message twice (the
        // key-value store's memory is the fast path).
        manager
            .create_index(
                Index::create()
                    .name("inbound_events_external")
                    .table("inbound_events")
                    .if_not_exists()
                    .unique()
                    .col("workspace_id")
                    .col("source_kind")
                    .col("source_id")
                    .col("external_id")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("rules")
                    .if_not_exists()
                    .col(string("id").primary_key().to_owned())
                    .col(string("workspace_id"))
                    .col(string("name"))
                    .col(ColumnDef::new("enabled").boolean().not_null())
                    .col(int("source_kind"))
                    .col(string("inbound_source_id"))
                    .col(string("event_type"))
                    .col(long_text("conditions"))
                    .col(string("template_id"))
                    .col(long_text("variables"))
                    .col(long_text("target_account_ids"))
                    .col(ms("min_interval_ms"))
                    .col(optional_ms("last_fired_at_ms"))
                    .col(string("last_fired_event_id"))
                    .col(ms("created_at_ms"))
                    .col(ms("updated_at_ms"))
                    .col(optional_ms("deleted_at_ms"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("rules_by_event")
                    .table("rules")
                    .if_not_exists()
                    .col("workspace_id")
                    .col("source_kind")
                    .col("event_type")
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
