//! The key-value store: Redis (through a connection manager) when
//! `POSTMESH_REDIS_URL` is set, an in-process map otherwise. Both give the
//! same semantics, checked by one contract test suite: get/set with TTL,
//! set-if-absent, atomic increment that starts an expiry window, delete and
//! publish/subscribe. Keys and channels are prefixed with the namespace.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use redis::AsyncCommands;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::config::Config;

/// A failure of the store itself (never "key not found").
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// Redis refused or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Messages on one pub/sub channel, in order. Ends when the store goes away.
pub type Subscription = Pin<Box<dyn Stream<Item = Vec<u8>> + Send>>;

/// The key-value store of a process.
#[derive(Clone)]
pub enum Kv {
    /// In-process map, for `postmesh dev` and single-process setups.
    Memory(MemoryKv),
    /// Redis, shared by every replica.
    Redis(RedisKv),
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.backend_name())
    }
}

impl Kv {
    /// Connects to Redis when configured, otherwise creates a memory store.
    pub async fn connect(config: &Config) -> Result<Self, KvError> {
        let prefix = config.namespace.as_ref().map(|n| format!("{}:", n.as_str())).unwrap_or_default();
        match &config.redis_url {
            Some(url) => Ok(Self::Redis(RedisKv::connect(url.expose().as_str(), prefix).await?)),
            None => Ok(Self::Memory(MemoryKv::new(prefix))),
        }
    }

    /// `redis` or `memory`.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Redis(_) => "redis",
        }
    }

    /// The value of `key`, if present and not expired.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        match self {
            Self::Memory(m) => Ok(m.get(key)),
            Self::Redis(r) => r.get(key).await,
        }
    }

    /// The values of several keys at once (one round trip on Redis).
    pub async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        match self {
            Self::Memory(m) => Ok(keys.iter().map(|k| m.get(k)).collect()),
            Self::Redis(r) => r.get_many(keys).await,
        }
    }

    /// Sets `key`, replacing any value; `ttl` of `None` keeps it forever.
    pub async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), KvError> {
        match self {
            Self::Memory(m) => {
                m.set(key, value, ttl);
                Ok(())
            }
            Self::Redis(r) => r.set(key, value, ttl).await,
        }
    }

    /// Sets `key` only if it is absent; true when this call set it. Exactly
    /// one of any number of concurrent callers wins.
    pub async fn set_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, KvError> {
        match self {
            Self::Memory(m) => Ok(m.set_if_absent(key, value, ttl)),
            Self::Redis(r) => r.set_if_absent(key, value, ttl).await,
        }
    }

    /// Adds `by` to the counter at `key` and returns the new value. The
    /// first increment (creating the key) starts a window of `ttl` after
    /// which the counter disappears; later increments do not extend it.
    pub async fn incr(&self, key: &str, by: i64, ttl: Duration) -> Result<i64, KvError> {
        match self {
            Self::Memory(m) => Ok(m.incr(key, by, ttl)),
            Self::Redis(r) => r.incr(key, by, ttl).await,
        }
    }

    /// Removes `key`; true when it existed.
    pub async fn delete(&self, key: &str) -> Result<bool, KvError> {
        match self {
            Self::Memory(m) => Ok(m.delete(key)),
            Self::Redis(r) => r.delete(key).await,
        }
    }

    /// Time left before `key` expires: `None` when absent or without expiry.
    pub async fn ttl(&self, key: &str) -> Result<Option<Duration>, KvError> {
        match self {
            Self::Memory(m) => Ok(m.ttl(key)),
            Self::Redis(r) => r.ttl(key).await,
        }
    }

    /// Publishes `message` to every current subscriber of `channel`;
    /// returns how many received it (on Redis, across all replicas).
    pub async fn publish(&self, channel: &str, message: &[u8]) -> Result<usize, KvError> {
        match self {
            Self::Memory(m) => Ok(m.publish(channel, message)),
            Self::Redis(r) => r.publish(channel, message).await,
        }
    }

    /// Subscribes to `channel`. Messages published after this returns are
    /// delivered; earlier ones are not.
    pub async fn subscribe(&self, channel: &str) -> Result<Subscription, KvError> {
        match self {
            Self::Memory(m) => Ok(m.subscribe(channel)),
            Self::Redis(r) => r.subscribe(channel).await,
        }
    }

    /// Checks that the store answers.
    pub async fn ping(&self) -> Result<(), KvError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(r) => r.ping().await,
        }
    }
}

/// The in-process store. Expired entries are dropped when touched and by a
/// sweep on writes, so memory stays bounded by live keys.
#[derive(Clone)]
pub struct MemoryKv {
    inner: Arc<MemoryInner>,
}

struct MemoryInner {
    prefix: String,
    entries: Mutex<Entries>,
    channels: Mutex<HashMap<String, broadcast::Sender<Vec<u8>>>>,
}

#[derive(Default)]
struct Entries {
    map: HashMap<String, Entry>,
    writes_since_sweep: usize,
}

struct Entry {
    value: Vec<u8>,
    expires_at: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

/// Subscribers that fall this far behind lose the oldest messages.
const CHANNEL_CAPACITY: usize = 1024;
/// Writes between sweeps of expired entries.
const SWEEP_EVERY: usize = 1024;

impl MemoryKv {
    /// An empty store whose keys live under `prefix`.
    pub fn new(prefix: String) -> Self {
        Self {
            inner: Arc::new(MemoryInner {
                prefix,
                entries: Mutex::new(Entries::default()),
                channels: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.inner.prefix)
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding the lock cannot leave an entry half-written
        // (each operation is a single map call), so poisoning is ignored.
        self.inner.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, entries: &mut Entries, key: String, entry: Entry) {
        entries.map.insert(key, entry);
        entries.writes_since_sweep += 1;
        if entries.writes_since_sweep >= SWEEP_EVERY {
            let now = Instant::now();
            entries.map.retain(|_, e| e.live(now));
            entries.writes_since_sweep = 0;
        }
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        let entries = self.entries();
        entries.map.get(&self.key(key)).filter(|e| e.live(now)).map(|e| e.value.clone())
    }

    fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) {
        let entry = Entry { value: value.to_vec(), expires_at: ttl.map(|t| Instant::now() + t) };
        let mut entries = self.entries();
        self.write(&mut entries, self.key(key), entry);
    }

    fn set_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> bool {
        let now = Instant::now();
        let key = self.key(key);
        let mut entries = self.entries();
        if entries.map.get(&key).is_some_and(|e| e.live(now)) {
            return false;
        }
        self.write(&mut entries, key, Entry { value: value.to_vec(), expires_at: Some(now + ttl) });
        true
    }

    fn incr(&self, key: &str, by: i64, ttl: Duration) -> i64 {
        let now = Instant::now();
        let key = self.key(key);
        let mut entries = self.entries();
        let (current, expires_at) = match entries.map.get(&key).filter(|e| e.live(now)) {
            Some(entry) => (parse_counter(&entry.value), entry.expires_at),
            None => (0, Some(now + ttl)),
        };
        let next = current.saturating_add(by);
        self.write(&mut entries, key, Entry { value: next.to_string().into_bytes(), expires_at });
        next
    }

    fn delete(&self, key: &str) -> bool {
        let now = Instant::now();
        let mut entries = self.entries();
        entries.map.remove(&self.key(key)).is_some_and(|e| e.live(now))
    }

    fn ttl(&self, key: &str) -> Option<Duration> {
        let now = Instant::now();
        let entries = self.entries();
        entries.map.get(&self.key(key)).filter(|e| e.live(now)).and_then(|e| e.expires_at).map(|at| at - now)
    }

    fn sender(&self, channel: &str) -> broadcast::Sender<Vec<u8>> {
        let mut channels = self.inner.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels.retain(|_, tx| tx.receiver_count() > 0);
        channels.entry(self.key(channel)).or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0).clone()
    }

    fn publish(&self, channel: &str, message: &[u8]) -> usize {
        self.sender(channel).send(message.to_vec()).unwrap_or(0)
    }

    fn subscribe(&self, channel: &str) -> Subscription {
        let rx = self.sender(channel).subscribe();
        let stream = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|item| async move {
            match item {
                Ok(message) => Some(message),
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "slow subscriber skipped messages");
                    None
                }
            }
        });
        Box::pin(stream)
    }
}

fn parse_counter(value: &[u8]) -> i64 {
    std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Redis, through a connection manager that reconnects on its own.
#[derive(Clone)]
pub struct RedisKv {
    client: redis::Client,
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

/// INCRBY that sets the expiry only when it created the key, atomically.
const INCR_SCRIPT: &str = r"
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
";

impl RedisKv {
    async fn connect(url: &str, prefix: String) -> Result<Self, KvError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2);
        let conn = client.get_connection_manager_with_config(config).await?;
        Ok(Self { client, conn, prefix })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.conn.clone().get(self.key(key)).await?)
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let prefixed: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        Ok(redis::cmd("MGET").arg(prefixed).query_async(&mut self.conn.clone()).await?)
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), KvError> {
        let mut conn = self.conn.clone();
        match ttl {
            Some(ttl) => conn.pset_ex::<_, _, ()>(self.key(key), value, millis(ttl)).await?,
            None => conn.set::<_, _, ()>(self.key(key), value).await?,
        }
        Ok(())
    }

    async fn set_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, KvError> {
        let reply: Option<String> = redis::cmd("SET")
            .arg(self.key(key))
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(reply.is_some())
    }

    async fn incr(&self, key: &str, by: i64, ttl: Duration) -> Result<i64, KvError> {
        let value = redis::Script::new(INCR_SCRIPT)
            .key(self.key(key))
            .arg(by)
            .arg(millis(ttl))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(value)
    }

    async fn delete(&self, key: &str) -> Result<bool, KvError> {
        let removed: i64 = self.conn.clone().del(self.key(key)).await?;
        Ok(removed > 0)
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>, KvError> {
        let ms: i64 = self.conn.clone().pttl(self.key(key)).await?;
        Ok((ms >= 0).then(|| Duration::from_millis(ms as u64)))
    }

    async fn publish(&self, channel: &str, message: &[u8]) -> Result<usize, KvError> {
        let receivers: i64 = self.conn.clone().publish(self.key(channel), message).await?;
        Ok(receivers.max(0) as usize)
    }

    async fn subscribe(&self, channel: &str) -> Result<Subscription, KvError> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(self.key(channel)).await?;
        let stream = pubsub.into_on_message().map(|msg| msg.get_payload_bytes().to_vec());
        Ok(Box::pin(stream))
    }

    async fn ping(&self) -> Result<(), KvError> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn.clone()).await?;
        Ok(())
    }
}

fn millis(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}
