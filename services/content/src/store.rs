//! What the content service keeps: posts, their targets (post × account),
//! templates and idempotency keys.
//!
//! Instants are Unix milliseconds (`*_ms`, `i64`) because the scheduler,
//! cursors and analytics compare them, and both backends must order them the
//! same way (as the outbox and the local bus do). Statuses are stored by
//! name (see [`crate::domain`]); platforms by their `postmesh.type.v1`
//! number. A target's content for its platform is stored as the encoded
//! `postmesh.social.v1.RenderedPost` that its publishing jobs carry.

use postmesh_kit::db::columns::{id, int, long_text, ms, optional_ms, string};
use sea_orm_migration::prelude::{
    ColumnDef, DeriveMigrationName, Index, MigrationTrait, SchemaManager, Table,
};
use sea_orm_migration::sea_orm::DbErr;

pub mod posts {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "posts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub workspace_id: String,
        pub text: String,
        /// JSON array of `{url, mime_type, alt_text}` (mime types resolved).
        pub media: String,
        pub publish_at_ms: Option<i64>,
        pub draft: bool,
        pub template_id: String,
        /// JSON object of the variables the text was rendered with.
        pub template_variables: String,
        /// JSON array of `{platform, text}` in request order.
        pub overrides: String,
        pub language: String,
        pub status: String,
        /// Increases whenever `publish_at` or `draft` changes (and on
        /// cancel/delete/publish-now), so a stale `PostDueJob` does nothing.
        pub schedule_revision: i64,
        /// The revision a `PostDueJob` was last queued for, and when.
        pub due_revision: i64,
        pub due_enqueued_at_ms: i64,
        /// Encoded `PreviewPostResponse` holding the variants of the last
        /// create or update (returned again on an idempotent replay).
        pub variants: Vec<u8>,
        pub created_by: String,
        pub origin: String,
        pub created_at_ms: i64,
        pub updated_at_ms: i64,
        pub completed_at_ms: Option<i64>,
        pub deleted_at_ms: Option<i64>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod post_targets {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "post_targets")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub post_id: String,
        pub workspace_id: String,
        /// Order in the post's `target_account_ids`.
        pub position: i32,
        pub account_id: String,
        pub platform: i32,
        pub account_display_name: String,
        pub status: String,
        pub external_id: String,
        pub external_url: String,
        /// JSON `{kind, message, retryable, http_status}` while Faulted or
        /// waiting for the next try.
        pub failure: Option<String>,
        pub attempts: i32,
        pub round: i32,
        pub next_attempt_at_ms: Option<i64>,
        pub queued_at_ms: Option<i64>,
        pub finished_at_ms: Option<i64>,
        pub updated_at_ms: i64,
        /// Encoded `postmesh.social.v1.RenderedPost`.
        pub rendered: Vec<u8>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod templates {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "templates")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub workspace_id: String,
        pub name: String,
        /// `name` while the template exists, NULL once deleted: unique per
        /// workspace, so a deleted template's name can be used again.
        pub live_name: Option<String>,
        /// Lower-case name, for `name_contains`.
        pub name_folded: String,
        pub description: String,
        pub body: String,
        /// JSON object.
        pub default_values: String,
        /// JSON array, in order of first use.
        pub variables: String,
        pub created_by: String,
        pub created_at_ms: i64,
        pub updated_at_ms: i64,
        pub deleted_at_ms: Option<i64>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod idempotency_keys {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "idempotency_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub workspace_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub idem_key: String,
        pub post_id: String,
        pub created_at_ms: i64,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// The content service's migrations after the outbox.
pub fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![Box::new(CreateContentTables)]
}

#[derive(DeriveMigrationName)]
struct CreateContentTables;

#[async_trait::async_trait]
impl MigrationTrait for CreateContentTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("posts")
                    .if_not_exists()
                    .col(id("id"))
                    .col(string("workspace_id"))
                    .col(long_text("text"))
                    .col(long_text("media"))
                    .col(optional_ms("publish_at_ms"))
                    .col(ColumnDef::new("draft").boolean().not_null())
                    .col(string("template_id"))
                    .col(long_text("template_variables"))
                    .col(long_text("overrides"))
                    .col(string("language"))
                    .col(string("status"))
                    .col(ms("schedule_revision"))
                    .col(ms("due_revision"))
                    .col(ms("due_enqueued_at_ms"))
                    .col(ColumnDef::new("variants").blob().not_null())
                    .col(string("created_by"))
                    .col(string("origin"))
                    .col(ms("created_at_ms"))
                    .col(ms("updated_at_ms"))
                    .col(optional_ms("completed_at_ms"))
                    .col(optional_ms("deleted_at_ms"))
                    .to_owned(),
            )
            .await?;
        // Listing: a workspace's posts, newest first.
        manager
            .create_index(
                Index::create()
                    .name("posts_by_workspace")
                    .table("posts")
                    .if_not_exists()
                    .col("workspace_id")
                    .col("created_at_ms")
                    .col("id")
                    .to_owned(),
            )
            .await?;
        // The scheduler: scheduled posts by due time.
        manager
            .create_index(
                Index::create()
                    .name("posts_by_status_due")
                    .table("posts")
                    .if_not_exists()
                    .col("status")
                    .col("publish_at_ms")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("post_targets")
                    .if_not_exists()
                    .col(id("id"))
                    .col(string("post_id"))
                    .col(string("workspace_id"))
                    .col(int("position"))
                    .col(string("account_id"))
                    .col(int("platform"))
                    .col(string("account_display_name"))
                    .col(string("status"))
                    .col(long_text("external_id"))
                    .col(long_text("external_url"))
                    .col(ColumnDef::new("failure").text().null())
                    .col(int("attempts"))
                    .col(int("round"))
                    .col(optional_ms("next_attempt_at_ms"))
                    .col(optional_ms("queued_at_ms"))
                    .col(optional_ms("finished_at_ms"))
                    .col(ms("updated_at_ms"))
                    .col(ColumnDef::new("rendered").blob().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("post_targets_by_post_account")
                    .table("post_targets")
                    .if_not_exists()
                    .unique()
                    .col("post_id")
                    .col("account_id")
                    .to_owned(),
            )
            .await?;
        // Analytics: a workspace's finished targets by time.
        manager
            .create_index(
                Index::create()
                    .name("post_targets_by_workspace_finished")
                    .table("post_targets")
                    .if_not_exists()
                    .col("workspace_id")
                    .col("finished_at_ms")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("templates")
                    .if_not_exists()
                    .col(id("id"))
                    .col(string("workspace_id"))
                    .col(string("name"))
                    .col(ColumnDef::new("live_name").string().null())
                    .col(string("name_folded"))
                    .col(long_text("description"))
                    .col(long_text("body"))
                    .col(long_text("default_values"))
                    .col(long_text("variables"))
                    .col(string("created_by"))
                    .col(ms("created_at_ms"))
                    .col(ms("updated_at_ms"))
                    .col(optional_ms("deleted_at_ms"))
                    .to_owned(),
            )
            .await?;
        // One live template per name and workspace (NULLs never collide).
        manager
            .create_index(
                Index::create()
                    .name("templates_by_live_name")
                    .table("templates")
                    .if_not_exists()
                    .unique()
                    .col("workspace_id")
                    .col("live_name")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("idempotency_keys")
                    .if_not_exists()
                    .col(string("workspace_id"))
                    .col(string("idem_key"))
                    .col(string("post_id"))
                    .col(ms("created_at_ms"))
                    .primary_key(Index::create().col("workspace_id").col("idem_key"))
                    .to_owned(),
            )
            .await
    }
}
