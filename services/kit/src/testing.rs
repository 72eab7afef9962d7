//! Test support, behind the `testing` feature: an isolated configuration per
//! test and a TCP proxy that can cut a connection to a real server.
//!
//! Which backends a test uses comes from the environment, so the same tests
//! run twice in CI: embedded (nothing set: SQLite, memory, local bus) and
//! real (`POSTMESH_TEST_DATABASE_URL`, `POSTMESH_TEST_REDIS_URL`,
//! `POSTMESH_TEST_NATS_URL`). Each test gets its own PostgreSQL database,
//! Redis key prefix and NATS namespace, removed again when it ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::auth::{Auth, Claims, Role, TokenKind};
use crate::config::{Config, ConfigSource};

/// Environment variable naming a PostgreSQL server for tests.
pub const TEST_DATABASE_URL: &str = "POSTMESH_TEST_DATABASE_URL";
/// Environment variable naming a Redis server for tests.
pub const TEST_REDIS_URL: &str = "POSTMESH_TEST_REDIS_URL";
/// Environment variable naming a NATS server for tests.
pub const TEST_NATS_URL: &str = "POSTMESH_TEST_NATS_URL";

/// One test's configuration and the resources behind it.
pub struct TestEnv {
    /// Config pointing at this test's data dir, database and namespace.
    pub config: Config,
    /// The `POSTMESH_*` variables that reproduce `config` in a child process.
    pub env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    cleanup: Cleanup,
}

#[derive(Default, Clone)]
struct Cleanup {
    admin_url: Option<String>,
    database: Option<String>,
    redis_url: Option<String>,
    nats_url: Option<String>,
    namespace: String,
}

impl TestEnv {
    /// A fresh environment with fast timings for tests.
    pub async fn new() -> Self {
        Self::with(&[]).await
    }

    /// A fresh environment with extra `POSTMESH_*` settings.
    pub async fn with(extra: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let namespace = format!("t{:012x}", rand::random::<u64>() >> 16);
        let mut env: Vec<(String, String)> = vec![
            ("POSTMESH_DATA_DIR".into(), dir.path().display().to_string()),
            ("POSTMESH_NAMESPACE".into(), namespace.clone()),
            ("POSTMESH_LISTEN".into(), "127.0.0.1:0".into()),
            ("POSTMESH_HTTP_LISTEN".into(), "127.0.0.1:0".into()),
            ("POSTMESH_ADMIN_LISTEN".into(), "127.0.0.1:0".into()),
            ("POSTMESH_JOBS_ACK_WAIT".into(), "2s".into()),
            ("POSTMESH_JOBS_BACKOFF".into(), "50ms".into()),
            ("POSTMESH_JOBS_POLL_INTERVAL".into(), "50ms".into()),
            ("POSTMESH_OUTBOX_POLL_INTERVAL".into(), "100ms".into()),
            ("POSTMESH_HEALTH_INTERVAL".into(), "200ms".into()),
            ("POSTMESH_SHUTDOWN_GRACE".into(), "5s".into()),
            ("POSTMESH_LOG".into(), "warn".into()),
        ];
        let mut cleanup = Cleanup { namespace: namespace.clone(), ..Cleanup::default() };
        if let Some(url) = std::env::var(TEST_DATABASE_URL).ok().filter(|v| !v.is_empty()) {
            let database = format!("pm_{namespace}");
            create_database(&url, &database).await;
            env.push(("POSTMESH_DATABASE_URL".into(), with_database(&url, &database)));
            cleanup.admin_url = Some(url);
            cleanup.database = Some(database);
        }
        if let Some(url) = std::env::var(TEST_REDIS_URL).ok().filter(|v| !v.is_empty()) {
            env.push(("POSTMESH_REDIS_URL".into(), url.clone()));
            cleanup.redis_url = Some(url);
        }
        if let Some(url) = std::env::var(TEST_NATS_URL).ok().filter(|v| !v.is_empty()) {
            env.push(("POSTMESH_NATS_URL".into(), url.clone()));
            cleanup.nats_url = Some(url);
        }
        for (key, value) in extra {
            env.retain(|(k, _)| k != key);
            env.push(((*key).to_owned(), (*value).to_owned()));
        }
        let config = Self::load(&env);
        Self { config, env, dir, cleanup }
    }

    fn load(env: &[(String, String)]) -> Config {
        Config::load(&ConfigSource { env: env.to_vec(), ..ConfigSource::default() })
            .expect("test config is valid")
    }

    /// This test's data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The config with `key` (a `POSTMESH_*` name) replaced.
    pub fn config_with(&self, key: &str, value: &str) -> Config {
        let mut env = self.env.clone();
        env.retain(|(k, _)| k != key);
        env.push((key.to_owned(), value.to_owned()));
        Self::load(&env)
    }

    /// Whether this run uses PostgreSQL.
    pub fn has_postgres(&self) -> bool {
        self.cleanup.database.is_some()
    }

    /// The Redis URL of this run, if it uses Redis.
    pub fn redis_url(&self) -> Option<&str> {
        self.cleanup.redis_url.as_deref()
    }

    /// The NATS URL of this run, if it uses NATS.
    pub fn nats_url(&self) -> Option<&str> {
        self.cleanup.nats_url.as_deref()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let cleanup = self.cleanup.clone();
        // Drop cannot await, and the test's runtime may be shutting down:
        // clean up on a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async move {
                let _ = tokio::time::timeout(Duration::from_secs(10), cleanup.run()).await;
            });
        })
        .join();
    }
}

impl Cleanup {
    async fn run(self) {
        use sea_orm::ConnectionTrait;
        if let (Some(url), Some(database)) = (&self.admin_url, &self.database)
            && let Ok(admin) = sea_orm::Database::connect(url.as_str()).await
        {
            let sql = format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)");
            let _ = admin.execute_unprepared(&sql).await;
            let _ = admin.close().await;
        }
        if let Some(url) = &self.redis_url
            && let Ok(client) = redis::Client::open(url.as_str())
            && let Ok(mut conn) = client.get_multiplexed_async_connection().await
        {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.namespace))
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
            }
        }
        if let Some(url) = &self.nats_url
            && let Ok(client) = async_nats::connect(url.as_str()).await
        {
            let js = async_nats::jetstream::new(client);
            let prefix = format!("{}_", self.namespace.to_ascii_uppercase());
            for kind in ["JOBS", "EVENTS", "DLQ"] {
                let _ = js.delete_stream(format!("{prefix}POSTMESH_{kind}")).await;
            }
        }
    }
}

async fn create_database(admin_url: &str, database: &str) {
    use sea_orm::ConnectionTrait;
    let admin = sea_orm::Database::connect(admin_url).await.expect("connect to the test PostgreSQL");
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{database}\""))
        .await
        .expect("create the test database");
    let _ = admin.close().await;
}

fn with_database(url: &str, database: &str) -> String {
    let mut url = url::Url::parse(url).expect("test database URL parses");
    url.set_path(&format!("/{database}"));
    url.to_string()
}

/// Authentication for a test process that holds its own key ring (as
/// `postmesh dev` does).
pub async fn auth(env: &TestEnv) -> Auth {
    let kv = crate::kv::Kv::connect(&env.config).await.expect("key-value store");
    let clients = crate::client::Clients::new(std::sync::Arc::new(env.config.clone()), Default::default());
    Auth::new(&env.config, kv, clients, "test", true).expect("test keys")
}

/// An access token for `user_id` with `roles` in `workspace_id`, signed by
/// `auth`'s key ring.
pub fn access_token(auth: &Auth, user_id: &str, workspace_id: &str, roles: &[Role]) -> String {
    let settings = auth.settings();
    let mut claims = Claims::new(settings, TokenKind::Access, user_id, settings.access_ttl);
    claims.ws = Some(workspace_id.to_owned());
    claims.roles = roles.to_vec();
    claims.sid = Some(uuid::Uuid::now_v7().to_string());
    auth.key_ring().expect("test auth holds keys").sign(&claims)
}

/// A gRPC server of the crate under test, started the way `postmesh serve`
/// starts one: [`TestServer::builder`] binds a free port and starts the
/// runtime; mount services on `builder.runtime`, then [`TestServerBuilder::serve`].
pub struct TestServer {
    /// The server's address.
    pub addr: SocketAddr,
    /// Its authentication state (key ring, revocations).
    pub auth: Auth,
    /// Its key-value store.
    pub kv: crate::kv::Kv,
    /// Its job bus.
    pub bus: crate::bus::JobBus,
    _runtime: crate::Runtime,
    shutdown: tokio_util::sync::CancellationToken,
}

/// See [`TestServer`].
pub struct TestServerBuilder {
    /// The runtime to mount services on.
    pub runtime: crate::Runtime,
    bound: crate::server::Bound,
    shutdown: tokio_util::sync::CancellationToken,
}

impl TestServer {
    /// Binds a port and starts a runtime named `name`; with `signs_tokens`
    /// the process holds the key ring and is its own user service.
    pub async fn builder(env: &TestEnv, name: &str, signs_tokens: bool) -> TestServerBuilder {
        let bound = crate::server::Bound::bind("127.0.0.1:0".parse().expect("loopback")).await.expect("bind");
        let mut config = env.config.clone();
        if signs_tokens {
            let own = format!("http://{}", bound.addr()).try_into().expect("valid URL");
            config.set_service_url("user", own);
        }
        let shutdown = tokio_util::sync::CancellationToken::new();
        let runtime = crate::Runtime::start(config, name, signs_tokens, shutdown.clone())
            .await
            .expect("runtime starts");
        TestServerBuilder { runtime, bound, shutdown }
    }

    /// A channel to the server.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(format!("http://{}", self.addr))
            .expect("URL")
            .connect()
            .await
            .expect("server reachable")
    }
}

impl TestServerBuilder {
    /// Starts serving what was mounted.
    pub async fn serve(mut self) -> TestServer {
        let addr = self.bound.addr();
        let routes = self.runtime.grpc_routes().expect("routes");
        self.runtime.start_health_checks().await;
        let auth = self.runtime.auth.clone();
        let kv = self.runtime.kv.clone();
        let bus = self.runtime.bus().await.expect("bus connects");
        let options = crate::server::ServeOptions::from_config(&self.runtime.config);
        tokio::spawn(crate::server::serve_grpc(
            self.bound,
            routes,
            auth.clone(),
            self.shutdown.clone(),
            options,
        ));
        TestServer { addr, auth, kv, bus, _runtime: self.runtime, shutdown: self.shutdown }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A TCP proxy in front of a real server that a test can cut and restore,
/// to see how postmesh behaves while Redis, NATS or PostgreSQL is gone.
pub struct ChaosProxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl ChaosProxy {
    /// Starts a proxy on a free loopback port forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let task = tokio::spawn(accept_loop(listener, target, up.clone(), generation.clone()));
        Self { addr, up, generation, task }
    }

    /// The proxy's address, to put in a URL in place of the server's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    up: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        if !up.load(Ordering::SeqCst) {
            drop(inbound);
            continue;
        }
        let mut cut = generation.subscribe();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else { return };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = cut.changed() => {}
            }
        });
    }
}

/// Resolves a `scheme://host:port` URL to a socket address.
pub fn socket_addr(url: &str) -> SocketAddr {
    let url = url::Url::parse(url).expect("URL parses");
    let host = url.host_str().expect("URL has a host");
    let port = url.port_or_known_default().or(match url.scheme() {
        "nats" => Some(4222),
        "redis" => Some(6379),
        "postgres" | "postgresql" => Some(5432),
        _ => None,
    });
    let text =
        format!("{}:{}", if host == "localhost" { "127.0.0.1" } else { host }, port.expect("URL has a port"));
    text.parse().expect("host is an IP address or localhost")
}

/// Polls `check` until it returns true or `within` passes; the last
/// answer is returned. For conditions with no signal to wait on (a TTL
/// running out, a remote process changing state).
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
