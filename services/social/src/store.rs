//! What the social service keeps: connected accounts (credentials sealed
//! with the service's cipher, under a context naming the account, so a
//! sealed value cannot be moved to another row), the record of targets
//! already published (the guard against posting twice), one row per
//! publish try for the metrics, and the dead-lettered publishing jobs.

use postmesh_kit::db::columns::{int, ms, string};
use sea_orm_migration::prelude::{
    ColumnDef, DeriveMigrationName, Index, MigrationTrait, SchemaManager, Table,
};
use sea_orm_migration::sea_orm::DbErr;

pub mod accounts {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "social_accounts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub workspace_id: String,
        /// `postmesh.type.v1.Platform` number.
        pub platform: i32,
        /// The platform-side identity; unique per workspace and platform.
        pub external_id: String,
        pub display_name: String,
        pub handle: String,
        pub profile_url: String,
        pub avatar_url: String,
        /// `AccountStatus` number.
        pub status: i32,
        pub status_reason: String,
        /// Names of the stored credential fields, comma-separated.
        pub credential_fields: String,
        /// The credentials as sealed JSON; None once disconnected.
        pub credentials: Option<String>,
        /// `PlatformLimits` the platform reported for the account, encoded.
        pub limits: Option<Vec<u8>>,
        pub token_expires_at_ms: Option<i64>,
        pub connected_by_user_id: String,
        pub connected_at_ms: i64,
        pub updated_at_ms: i64,
        pub last_published_at_ms: Option<i64>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod published {
    use sea_orm::entity::prelude::*;

    /// A target the platform accepted, written before the job is acked.
    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "social_published")]
    pub struct Model {
        /// `PublishJob.idempotency_key` (`pm-<post>-<account>`).
        #[sea_orm(primary_key, auto_increment = false)]
        pub idempotency_key: String,
        pub workspace_id: String,
        pub post_id: String,
        pub target_id: String,
        pub account_id: String,
        pub platform: i32,
        pub round: i32,
        pub attempt: i32,
        pub external_id: String,
        pub external_url: String,
        /// The `events.social.post_published` id, re-used on redelivery.
        pub event_id: String,
        pub latency_ms: i64,
        pub published_at_ms: i64,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod attempts {
    use sea_orm::entity::prelude::*;

    /// One publish try and how it ended.
    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "social_attempts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub workspace_id: String,
        pub platform: i32,
        pub account_id: String,
        pub post_id: String,
        /// `posted`, `retry` or `faulted`.
        pub outcome: String,
        /// The try, from 1.
        pub attempt: i32,
        /// `PublishErrorKind` number; 0 when posted.
        pub error_kind: i32,
        pub http_status: i32,
        pub latency_ms: i64,
        pub at_ms: i64,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod dead_letters {
    use sea_orm::entity::prelude::*;

    /// A publishing job that used up its tries, kept per workspace so it
    /// can be listed and replayed through the content service.
    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "social_dead_letters")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub workspace_id: String,
        pub subject: String,
        pub post_id: String,
        pub target_id: String,
        pub account_id: String,
        pub platform: i32,
        pub attempts: i32,
        /// The last `PublishFailure`, encoded.
        pub last_failure: Vec<u8>,
        pub enqueued_at_ms: i64,
        pub dead_lettered_at_ms: i64,
        pub replay_count: i32,
        pub last_replayed_at_ms: Option<i64>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// The store's migrations.
pub fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![Box::new(CreateSocialTables)]
}

#[derive(DeriveMigrationName)]
struct CreateSocialTables;

#[async_trait::async_trait]
impl MigrationTrait for CreateSocialTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("social_accounts")
                    .if_not_exists()
                    .col(string("id").primary_key().to_owned())
                    .col(string("workspace_id"))
                    .col(int("platform"))
                    .col(string("external_id"))
                    .col(string("display_name"))
                    .col(string("handle"))
                    .col(string("profile_url"))
                    .col(string("avatar_url"))
                    .col(int("status"))
                    .col(string("status_reason"))
                    .col(string("credential_fields"))
                    .col(ColumnDef::new("credentials").text().null())
                    .col(ColumnDef::new("limits").binary().null())
                    .col(ColumnDef::new("token_expires_at_ms").big_integer().null())
                    .col(string("connected_by_user_id"))
                    .col(ms("connected_at_ms"))
                    .col(ms("updated_at_ms"))
                    .col(ColumnDef::new("last_published_at_ms").big_integer().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("social_accounts_identity")
                    .table("social_accounts")
                    .if_not_exists()
                    .unique()
                    .col("workspace_id")
                    .col("platform")
                    .col("external_id")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("social_published")
                    .if_not_exists()
                    .col(string("idempotency_key").primary_key().to_owned())
                    .col(string("workspace_id"))
                    .col(string("post_id"))
                    .col(string("target_id"))
                    .col(string("account_id"))
                    .col(int("platform"))
                    .col(int("round"))
                    .col(int("attempt"))
                    .col(string("external_id"))
                    .col(string("external_url"))
                    .col(string("event_id"))
                    .col(ms("latency_ms"))
                    .col(ms("published_at_ms"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("social_attempts")
                    .if_not_exists()
                    .col(string("id").primary_key().to_owned())
                    .col(string("workspace_id"))
                    .col(int("platform"))
                    .col(string("account_id"))
                    .col(string("post_id"))
                    .col(string("outcome"))
                    .col(int("attempt"))
                    .col(int("error_kind"))
                    .col(int("http_status"))
                    .col(ms("latency_ms"))
                    .col(ms("at_ms"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("social_dead_letters")
                    .if_not_exists()
                    .col(string("id").primary_key().to_owned())
                    .col(string("workspace_id"))
                    .col(string("subject"))
                    .col(string("post_id"))
                    .col(string("target_id"))
                    .col(string("account_id"))
                    .col(int("platform"))
                    .col(int("attempts"))
                    .col(ColumnDef::new("last_failure").binary().not_null())
                    .col(ms("enqueued_at_ms"))
                    .col(ms("dead_lettered_at_ms"))
                    .col(int("replay_count"))
                    .col(ColumnDef::new("last_replayed_at_ms").big_integer().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("social_attempts_by_workspace")
                    .table("social_attempts")
                    .if_not_exists()
                    .col("workspace_id")
                    .col("at_ms")
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
