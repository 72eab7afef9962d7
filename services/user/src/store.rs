//! What the user service keeps: accounts, workspaces and memberships,
//! invitations, login sessions with their refresh tokens, API keys and 2FA
//! recovery codes. Bearer secrets (refresh tokens, API keys, invitation
//! tokens, recovery codes) are stored as SHA-256 hashes; the TOTP seed is
//! sealed with the service's cipher.

use postmesh_kit::db::columns::{id, string};
use sea_orm_migration::prelude::{
    ColumnDef, DeriveMigrationName, Index, MigrationTrait, SchemaManager, Table,
};
use sea_orm_migration::sea_orm::DbErr;

pub mod users {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "users")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        #[sea_orm(unique)]
        pub email: String,
        pub display_name: String,
        pub password_hash: Option<String>,
        pub avatar_url: String,
        pub time_zone: String,
        pub locale: String,
        /// Sealed TOTP seed once 2FA is on.
        pub totp_secret: Option<String>,
        /// Sealed seed awaiting confirmation.
        pub totp_pending: Option<String>,
        pub totp_pending_expires_at: Option<DateTimeUtc>,
        /// Highest TOTP time step accepted, so a code works once.
        pub totp_last_step: Option<i64>,
        pub totp_enabled_at: Option<DateTimeUtc>,
        pub last_workspace_id: Option<String>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        pub last_login_at: Option<DateTimeUtc>,
        pub deleted_at: Option<DateTimeUtc>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod workspaces {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "workspaces")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub name: String,
        pub creator_user_id: String,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        pub deleted_at: Option<DateTimeUtc>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod memberships {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "memberships")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub workspace_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub user_id: String,
        pub role: String,
        pub inviter_user_id: Option<String>,
        pub joined_at: DateTimeUtc,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod invitations {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "invitations")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub workspace_id: String,
        pub email: String,
        pub role: String,
        #[sea_orm(unique)]
        pub token_hash: String,
        pub inviter_user_id: String,
        pub created_at: DateTimeUtc,
        pub expires_at: DateTimeUtc,
        pub accepted_at: Option<DateTimeUtc>,
        pub accepted_user_id: Option<String>,
        pub revoked_at: Option<DateTimeUtc>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod sessions {
    use sea_orm::entity::prelude::*;

    /// A login session: one refresh token family.
    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sessions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub user_id: String,
        pub workspace_id: String,
        pub created_at: DateTimeUtc,
        pub last_used_at: DateTimeUtc,
        pub revoked_at: Option<DateTimeUtc>,
        pub revoked_reason: Option<String>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod refresh_tokens {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "refresh_tokens")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub session_id: String,
        #[sea_orm(unique)]
        pub token_hash: String,
        pub created_at: DateTimeUtc,
        pub expires_at: DateTimeUtc,
        /// Set when rotated: presenting it again means it leaked.
        pub used_at: Option<DateTimeUtc>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod api_keys {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "api_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub user_id: String,
        pub workspace_id: String,
        pub name: String,
        pub prefix: String,
        #[sea_orm(unique)]
        pub key_hash: String,
        /// Space-separated permissions.
        pub scopes: String,
        pub created_at: DateTimeUtc,
        pub expires_at: DateTimeUtc,
        pub last_used_at: Option<DateTimeUtc>,
        pub revoked_at: Option<DateTimeUtc>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod recovery_codes {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "recovery_codes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub user_id: String,
        pub code_hash: String,
        pub created_at: DateTimeUtc,
        pub used_at: Option<DateTimeUtc>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// The user service's migrations after the outbox.
pub fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![Box::new(CreateUserTables)]
}

#[derive(DeriveMigrationName)]
struct CreateUserTables;

fn optional_text(name: &'static str) -> ColumnDef {
    ColumnDef::new(name).string().null().to_owned()
}

fn at(name: &'static str) -> ColumnDef {
    ColumnDef::new(name).timestamp_with_time_zone().not_null().to_owned()
}

fn optional_at(name: &'static str) -> ColumnDef {
    ColumnDef::new(name).timestamp_with_time_zone().null().to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for CreateUserTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("users")
                    .if_not_exists()
                    .col(id("id"))
                    .col(string("email").unique_key().to_owned())
                    .col(string("display_name"))
                    .col(optional_text("password_hash"))
                    .col(string("avatar_url"))
                    .col(string("time_zone"))
                    .col(string("locale"))
                    .col(optional_text("totp_secret"))
                    .col(optional_text("totp_pending"))
                    .col(optional_at("totp_pending_expires_at"))
                    .col(ColumnDef::new("totp_last_step").big_integer().null())
                    .col(optional_at("totp_enabled_at"))
                    .col(optional_text("last_workspace_id"))
                    .col(at("created_at"))
                    .col(at("updated_at"))
                    .col(optional_at("last_login_at"))
                    .col(optional_at("deleted_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("workspaces")
                    .if_not_exists()
                    .col(id("id"))
                    .col(string("name"))
                    .col(string("creator_user_id"))
                    .col(at("created_at"))
                    .col(at("updated_at"))
                    .col(optional_at("deleted_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("memberships")
                    .if_not_exists()
                    .col(string("workspace_id"))
                    .col(string("user_id"))
                    .col(string("role"))
                    .col(optional_text("inviter_user_id"))
                    .col(at("joined_at"))
                    .primary_key(Index::create().col("workspace_id").col("user_id"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("memberships_by_user")
                    .table("memberships")
                    .if_not_exists()
                    .col("user_id")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("invitations")
                    .if_not_exists()
                    .col(id("id"))
                    .col(string("workspace_id"))
                    .col(string("email"))
                    .col(string("role"))
                    .col(string("token_hash").unique_key().to_owned())
                    .col(string("inviter_user_id"))
                    .col(at("created_at"))
                    .col(at("expires_at"))
                    .col(optional_at("accepted_at"))
                    .col(optional_text("accepted_user_id"))
                    .col(optional_at("revoked_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("sessions")
                    .if_not_exists()
                    .col(id("id"))
                    .col(string("user_id"))
                    .col(string("workspace_id"))
                    .col(at("created_at"))
                    .col(at("last_used_at"))
                    .col(optional_at("revoked_at"))
                    .col(optional_text("revoked_reason"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("sessions_by_user")
                    .table("sessions")
                    .if_not_exists()
                    .col("user_id")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("refresh_tokens")
                    .if_not_exists()
                    .col(id("id"))
                    .col(string("session_id"))
                    .col(string("token_hash").unique_key().to_owned())
                    .col(at("created_at"))
                    .col(at("expires_at"))
                    .col(optional_at("used_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("api_keys")
                    .if_not_exists()
                    .col(id("id"))
                    .col(string("user_id"))
                    .col(string("workspace_id"))
                    .col(string("name"))
                    .col(string("prefix"))
                    .col(string("key_hash").unique_key().to_owned())
                    .col(string("scopes"))
                    .col(at("created_at"))
                    .col(at("expires_at"))
                    .col(optional_at("last_used_at"))
                    .col(optional_at("revoked_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("api_keys_by_owner")
                    .table("api_keys")
                    .if_not_exists()
                    .col("user_id")
                    .col("workspace_id")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("recovery_codes")
                    .if_not_exists()
                    .col(id("id"))
                    .col(string("user_id"))
                    .col(string("code_hash"))
                    .col(at("created_at"))
                    .col(optional_at("used_at"))
                    .to_owned(),
            )
            .await
    }
}
