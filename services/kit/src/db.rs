//! Database per service. SQLite files under the data directory by default
//! (`<data_dir>/<service>.db`); with `POSTMESH_DATABASE_URL` set, one
//! PostgreSQL schema per service in that database. Migrations are sea-orm
//! migrations owned by each service crate, applied under a lock so that
//! replicas starting together do not race.

use std::path::Path;
use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, DatabaseBackend, DatabaseConnection, DatabaseTransaction, DbErr,
    SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait, Value,
};
use sea_orm_migration::{MigrationTrait, MigratorTraitSelf};

use crate::config::Config;

/// The migrations of one service, in order.
pub type Migrations = fn() -> Vec<Box<dyn MigrationTrait>>;

/// A connection pool to one service's own database or schema.
#[derive(Debug, Clone)]
pub struct Database {
    conn: DatabaseConnection,
    schema: String,
}

impl Database {
    /// Connects to the database of `schema` (a service name, or `bus` for
    /// the local job bus), creating the SQLite file or Postgres schema.
    #[tracing::instrument(skip(config), fields(backend))]
    pub async fn connect(config: &Config, schema: &str) -> Result<Self, DbErr> {
        let conn = match &config.database_url {
            Some(url) => {
                ensure_pg_schema(url.expose(), schema).await?;
                let mut options = ConnectOptions::new(url.expose().as_str());
                options
                    .max_connections(config.database_max_connections)
                    .min_connections(0)
                    .connect_timeout(Duration::from_secs(5))
                    .acquire_timeout(Duration::from_secs(10))
                    .set_schema_search_path(schema)
                    .sqlx_logging(false);
                tracing::Span::current().record("backend", "postgres");
                sea_orm::Database::connect(options).await?
            }
            None => {
                let path = config.data_dir.join(format!("{schema}.db"));
                tracing::Span::current().record("backend", "sqlite");
                connect_sqlite(&path).await?
            }
        };
        Ok(Self { conn, schema: schema.to_owned() })
    }

    /// The pool, for queries and transactions.
    pub fn conn(&self) -> &DatabaseConnection {
        &self.conn
    }

    /// The schema (service) this database belongs to.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Which SQL dialect the pool speaks.
    pub fn backend(&self) -> DatabaseBackend {
        self.conn.get_database_backend()
    }

    /// Begins a transaction that will write. On SQLite it takes the write
    /// lock up front (`BEGIN IMMEDIATE`): in WAL mode a transaction that
    /// reads first and writes later cannot wait for the lock and fails with
    /// SQLITE_BUSY_SNAPSHOT when another writer got there in between.
    pub async fn begin_write(&self) -> Result<DatabaseTransaction, DbErr> {
        self.conn
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            })
            .await
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), DbErr> {
        self.conn.ping().await
    }

    /// Applies pending migrations. On PostgreSQL a transaction-scoped
    /// advisory lock makes concurrent starts apply them once.
    #[tracing::instrument(skip(self, migrations), fields(schema = %self.schema))]
    pub async fn migrate(&self, migrations: Migrations) -> Result<(), DbErr> {
        let migrator = Migrator(migrations);
        match self.backend() {
            DatabaseBackend::Postgres => {
                let txn = self.conn.begin().await?;
                txn.execute_raw(Statement::from_sql_and_values(
                    DatabaseBackend::Postgres,
                    "SELECT pg_advisory_xact_lock(hashtext($1))",
                    [Value::from(format!("postmesh-migrate-{}", self.schema))],
                ))
                .await?;
                migrator.up(&txn, None).await?;
                txn.commit().await
            }
            _ => {
                // SQLite is the single-process embedded mode: serializing
                // migrations within the process is enough.
                let _guard = SQLITE_MIGRATIONS.lock().await;
                migrator.up(&self.conn, None).await
            }
        }
    }

    /// Names of the migrations applied so far, oldest first.
    pub async fn applied_migrations(&self, migrations: Migrations) -> Result<Vec<String>, DbErr> {
        let applied = Migrator(migrations).get_applied_migrations(&self.conn).await?;
        Ok(applied.iter().map(|m| m.name().to_owned()).collect())
    }

    /// Closes the pool.
    pub async fn close(self) -> Result<(), DbErr> {
        self.conn.close().await
    }
}

/// Serializes SQLite migrations in this process (PostgreSQL uses an
/// advisory lock instead).
static SQLITE_MIGRATIONS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Migrator(Migrations);

impl MigratorTraitSelf for Migrator {
    fn migrations(&self) -> Vec<Box<dyn MigrationTrait>> {
        (self.0)()
    }
}

async fn connect_sqlite(path: &Path) -> Result<DatabaseConnection, DbErr> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| DbErr::Custom(format!("cannot create data directory {}: {e}", dir.display())))?;
    }
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut options = ConnectOptions::new(url);
    options
        // SQLite has a single writer. With several connections, writers
        // queue on its file lock, where the busy handler sleeps between
        // looks (milliseconds each): under concurrent writes that cost more
        // than half the throughput. One connection queues them in the pool
        // instead, woken the moment it is free.
        .max_connections(1)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|opts: SqliteConnectOptions| {
            // WAL lets readers run beside the single writer; the busy timeout
            // makes a second writer wait instead of failing with SQLITE_BUSY.
            opts.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
        });
    sea_orm::Database::connect(options).await
}

/// Creates the service's schema if needed, on one direct connection, so an
/// unreachable server is reported with its real cause rather than as a pool
/// timeout. Two processes may race here; PostgreSQL then reports a
/// duplicate, which is the outcome we wanted.
async fn ensure_pg_schema(url: &url::Url, schema: &str) -> Result<(), DbErr> {
    use sea_orm::sqlx::{Connection, Executor, postgres::PgConnection};

    let unreachable = |e: sea_orm::sqlx::Error| {
        let mut shown = url.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        DbErr::Custom(format!("cannot connect to {shown}: {e}"))
    };
    let connect = PgConnection::connect(url.as_str());
    let mut conn = match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(conn) => conn.map_err(unreachable)?,
        Err(_) => return Err(unreachable(sea_orm::sqlx::Error::PoolTimedOut)),
    };
    let sql = format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", schema.replace('"', ""));
    let result = conn.execute(sea_orm::sqlx::AssertSqlSafe(sql)).await;
    let _ = conn.close().await;
    match result {
        Ok(_) => Ok(()),
        Err(err) if err.to_string().contains("duplicate key") => Ok(()),
        Err(err) => Err(DbErr::Custom(format!("cannot create schema {schema}: {err}"))),
    }
}

/// Writes `$1, $2, ...` placeholders the way the backend wants them, so
/// hand-written statements read the same for both dialects.
pub fn statement(backend: DatabaseBackend, sql: &str, values: Vec<Value>) -> Statement {
    let sql = match backend {
        DatabaseBackend::Postgres => sql.to_owned(),
        _ => sql.replace('$', "?"),
    };
    Statement::from_sql_and_values(backend, sql, values)
}

/// Milliseconds since the Unix epoch: how postmesh stores instants in
/// tables both backends must compare the same way.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Unix milliseconds as a protobuf `Timestamp`.
pub fn timestamp_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// A protobuf `Timestamp` as Unix milliseconds (saturating).
pub fn ms_of(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds.saturating_mul(1000).saturating_add(i64::from(ts.nanos) / 1_000_000)
}

/// Column definitions the services' migrations share: every column is NOT
/// NULL unless its name says otherwise.
pub mod columns {
    use sea_orm_migration::prelude::ColumnDef;

    /// A string primary key (UUIDv7 ids).
    pub fn id(name: &'static str) -> ColumnDef {
        ColumnDef::new(name).string().not_null().primary_key().to_owned()
    }

    /// A short string (`VARCHAR` on PostgreSQL).
    pub fn string(name: &'static str) -> ColumnDef {
        ColumnDef::new(name).string().not_null().to_owned()
    }

    /// Text of any length.
    pub fn long_text(name: &'static str) -> ColumnDef {
        ColumnDef::new(name).text().not_null().to_owned()
    }

    /// A 32-bit integer (enums, counts).
    pub fn int(name: &'static str) -> ColumnDef {
        ColumnDef::new(name).integer().not_null().to_owned()
    }

    /// Unix milliseconds.
    pub fn ms(name: &'static str) -> ColumnDef {
        ColumnDef::new(name).big_integer().not_null().to_owned()
    }

    /// Unix milliseconds, or NULL.
    pub fn optional_ms(name: &'static str) -> ColumnDef {
        ColumnDef::new(name).big_integer().null().to_owned()
    }
}
