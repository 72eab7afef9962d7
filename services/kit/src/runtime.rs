//! What one process shares between the services it runs: configuration,
//! the key-value store, the job bus (once a service needs it), health and
//! the background tasks
//! (outbox relays, consumers, health checks) that must stop together.
//! [`Runtime::service`] gives each service its own database, outbox and
//! relay and wires its health to the connections it depends on.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::Routes;

use crate::auth::Auth;
use crate::bus::{BusError, ConsumerSpec, JobBus, JobHandler};
use crate::client::Clients;
use crate::config::Config;
use crate::crypto::{Cipher, CryptoError};
use crate::db::{Database, Migrations};
use crate::health::{Check, Health};
use crate::kv::{Kv, KvError};
use crate::outbox::Outbox;

/// Static description of a service crate.
#[derive(Debug, Clone, Copy)]
pub struct ServiceSpec {
    /// Short name: `user`, `content`, ... (also its database/schema name).
    pub name: &'static str,
    /// Full gRPC service name, e.g. `postmesh.user.v1.UserService`.
    pub grpc_name: &'static str,
    /// The service's own migrations (the outbox table is added by kit).
    pub migrations: Migrations,
}

/// Why a process could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A service database could not be opened or migrated.
    #[error("{schema} database: {source}")]
    Database {
        /// Which database.
        schema: String,
        /// What went wrong.
        source: sea_orm::DbErr,
    },
    /// The key-value store could not be reached.
    #[error("key-value store: {0}")]
    Kv(#[from] KvError),
    /// The job bus could not be opened.
    #[error("job bus: {0}")]
    Bus(#[from] BusError),
    /// Reflection could not be built from the descriptor set.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Keys for tokens or encryption could not be loaded.
    #[error("keys: {0}")]
    Keys(#[from] CryptoError),
    /// The HTTP gateway could not be set up from the contract.
    #[error("gateway: {0}")]
    Gateway(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// The shared parts of a running process.
pub struct Runtime {
    /// The process configuration.
    pub config: Arc<Config>,
    /// Key-value store.
    pub kv: Kv,
    /// Client stacks to other services.
    pub clients: Clients,
    /// Authentication: verifies every call, signs tokens where keys are held.
    pub auth: Auth,
    /// Health state.
    pub health: Health,
    /// Cancelled on SIGTERM/Ctrl-C (or by a test).
    pub shutdown: CancellationToken,
    /// Background tasks to wait for on shutdown.
    pub tasks: TaskTracker,
    /// Job bus, connected when the first service needs it (the gateway
    /// alone does not).
    bus: Option<JobBus>,
    /// Secrets-at-rest cipher, loaded when the first service needs it.
    cipher: Option<Cipher>,
    routes: Routes,
    services: Vec<&'static str>,
    databases: Vec<Database>,
}

impl Runtime {
    /// Connects the key-value store and sets up authentication and health.
    /// `name` identifies the process in service tokens; `signs_tokens` says
    /// the user service runs here, so the token key ring is loaded.
    pub async fn start(
        config: Config,
        name: &str,
        signs_tokens: bool,
        shutdown: CancellationToken,
    ) -> Result<Self, StartError> {
        let config = Arc::new(config);
        let kv = Kv::connect(&config).await?;
        let clients = Clients::new(config.clone(), shutdown.clone());
        let auth = Auth::new(&config, kv.clone(), clients.clone(), name, signs_tokens)?;
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let health = Health::new(reporter).await;
        let report = clients.clone();
        health.add_section("clients", move || report.report());
        let kv_check = kv.clone();
        health.add_check(Check::new(format!("kv:{}", kv.backend_name()), move || {
            let kv = kv_check.clone();
            async move { kv.ping().await.map_err(|e| e.to_string()) }
        }));
        Ok(Self {
            config,
            kv,
            clients,
            auth,
            cipher: None,
            bus: None,
            health,
            shutdown,
            tasks: TaskTracker::new(),
            routes: Routes::new(health_service),
            services: Vec::new(),
            databases: Vec::new(),
        })
    }

    /// The job bus, connected (and added to health) on first use.
    pub async fn bus(&mut self) -> Result<JobBus, StartError> {
        if let Some(bus) = &self.bus {
            return Ok(bus.clone());
        }
        let bus = JobBus::connect(&self.config).await?;
        let bus_check = bus.clone();
        self.health.add_check(Check::new(format!("bus:{}", bus.backend_name()), move || {
            let bus = bus_check.clone();
            async move { bus.ping().await.map_err(|e| e.to_string()) }
        }));
        self.bus = Some(bus.clone());
        Ok(bus)
    }

    /// The cipher for secrets at rest: the configured keys, or a key
    /// generated under the data directory.
    pub fn cipher(&mut self) -> Result<Cipher, StartError> {
        if let Some(cipher) = &self.cipher {
            return Ok(cipher.clone());
        }
        let cipher = match &self.config.encryption_keys {
            Some(keys) => Cipher::from_spec(keys.expose())?,
            None => Cipher::load_or_generate(&self.config.data_dir.join("keys"))?,
        };
        self.cipher = Some(cipher.clone());
        Ok(cipher)
    }

    /// Opens and migrates `spec`'s database, starts its outbox relay and
    /// registers its health; returns what the service needs to run.
    pub async fn service(&mut self, spec: ServiceSpec) -> Result<ServiceDeps, StartError> {
        let bus = self.bus().await?;
        let cipher = self.cipher()?;
        let db_error = |source| StartError::Database { schema: spec.name.to_owned(), source };
        let db = Database::connect(&self.config, spec.name).await.map_err(db_error)?;
        db.migrate(spec.migrations).await.map_err(db_error)?;
        let outbox = Outbox::new(db.clone());
        self.tasks.spawn(outbox.clone().run_relay(
            bus.clone(),
            self.config.outbox_poll_interval,
            self.shutdown.clone(),
        ));

        let db_check_name = format!("database:{}", spec.name);
        let db_check = db.clone();
        self.health.add_check(Check::new(db_check_name.clone(), move || {
            let db = db_check.clone();
            async move { db.ping().await.map_err(|e| e.to_string()) }
        }));
        let depends_on = vec![
            db_check_name,
            format!("kv:{}", self.kv.backend_name()),
            format!("bus:{}", bus.backend_name()),
        ];
        self.health.add_service(spec.grpc_name, depends_on).await;
        self.services.push(spec.grpc_name);
        self.databases.push(db.clone());

        Ok(ServiceDeps {
            spec,
            config: self.config.clone(),
            db,
            kv: self.kv.clone(),
            bus,
            auth: self.auth.clone(),
            clients: self.clients.clone(),
            cipher,
            outbox,
            shutdown: self.shutdown.clone(),
            tasks: self.tasks.clone(),
        })
    }

    /// Adds a service's gRPC server to what this process serves.
    pub fn add_grpc_service<S>(&mut self, service: S)
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = std::convert::Infallible>
            + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        let routes = std::mem::take(&mut self.routes);
        self.routes = routes.add_service(service);
    }

    /// Full gRPC names of the services added so far.
    pub fn services(&self) -> &[&'static str] {
        &self.services
    }

    /// Every route this process serves: its services, health and reflection.
    pub fn grpc_routes(&mut self) -> Result<Routes, StartError> {
        let routes = std::mem::take(&mut self.routes);
        Ok(crate::server::add_reflection(routes, &self.services)?)
    }

    /// Starts the periodic dependency checks (after a first check, so the
    /// process reports SERVING as soon as it really is).
    pub async fn start_health_checks(&self) {
        self.health.check_now().await;
        self.tasks.spawn(self.health.clone().run(self.config.health_interval, self.shutdown.clone()));
    }

    /// Waits for background tasks after shutdown (at most the grace
    /// period), then closes the databases so SQLite checkpoints its WAL.
    pub async fn drain(&self) {
        self.tasks.close();
        if tokio::time::timeout(self.config.shutdown_grace, self.tasks.wait()).await.is_err() {
            tracing::warn!("background tasks did not stop within the grace period");
        }
        for db in &self.databases {
            if let Err(err) = db.conn().close_by_ref().await {
                tracing::warn!(schema = %db.schema(), error = %err, "closing the database failed");
            }
        }
        if let Some(bus) = &self.bus {
            bus.close().await;
        }
    }
}

/// What a service gets from the runtime.
#[derive(Clone, Debug)]
pub struct ServiceDeps {
    /// The service being run.
    pub spec: ServiceSpec,
    /// Process configuration.
    pub config: Arc<Config>,
    /// The service's own database.
    pub db: Database,
    /// Key-value store.
    pub kv: Kv,
    /// Job bus (to consume; publishing goes through the outbox).
    pub bus: JobBus,
    /// Authentication state (key ring, revocations, service tokens).
    pub auth: Auth,
    /// Client stacks to other services.
    pub clients: Clients,
    /// Cipher for secrets at rest.
    pub cipher: Cipher,
    /// The service's outbox.
    pub outbox: Outbox,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    /// Tracks the service's background tasks.
    pub tasks: TaskTracker,
}

impl ServiceDeps {
    /// Starts a durable consumer whose lifetime the runtime tracks.
    pub async fn consume(&self, spec: ConsumerSpec, handler: impl JobHandler) -> Result<(), BusError> {
        let handle = self.bus.consume(spec, handler, self.shutdown.clone()).await?;
        self.tasks.spawn(async move {
            let _ = handle.await;
        });
        Ok(())
    }
}
