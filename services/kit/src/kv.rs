//! The key-value store: Redis (through a connection manager) when
//! `POSTMESH_REDIS_URL` is set, an in-process map otherwise. Both give the
//! same semantics, checked by one contract test suite: get/set with TTL,
//! set-if-absent, atomic increment that starts an expiry window, delete,
//! publish/subscribe and GCRA rate limiting. Keys and channels are prefixed
//! with the namespace.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt};
use redis::AsyncCommands;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::config::Config;

/// A failure of the store itself (never "key not found"), or a request it
/// cannot carry out as asked.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// Redis refused or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A [`RateLimit`] that cannot be enforced: a caller's mistake, checked
    /// before the store is asked anything.
    #[error("invalid rate limit: {0}")]
    InvalidRateLimit(&'static str),
}

/// Messages on one pub/sub channel, in order. Ends when the store goes away.
pub type Subscription = Pin<Box<dyn Stream<Item = Vec<u8>> + Send>>;

/// A rate for [`Kv::rate_limit`]: `limit` requests per `period`, of which up
/// to `burst` may arrive at once. Requests are spaced `period / limit` apart
/// on average (rounded down to a whole microsecond).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per `period` (at least 1).
    pub limit: u32,
    /// The period `limit` is counted over (`period / limit` at least 1µs).
    pub period: Duration,
    /// Requests allowed back to back after an idle spell (at least 1).
    pub burst: u32,
}

/// The answer of [`Kv::rate_limit`], with what the `RateLimit-*` and
/// `Retry-After` response headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the request fits (and was recorded).
    pub allowed: bool,
    /// Requests still allowed right now (for `RateLimit-Remaining`).
    pub remaining: u32,
    /// Until the limiter is back to full capacity (for `RateLimit-Reset`).
    pub reset_after: Duration,
    /// When refused: until one request would be allowed (for `Retry-After`);
    /// zero when allowed.
    pub retry_after: Duration,
}

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

    /// Asks the generic cell rate algorithm (GCRA) whether one more request
    /// under `key` fits `limit` requests per `period` with bursts up to
    /// `burst` (>= 1), and records it if so. Atomic: of any number of
    /// concurrent callers, exactly as many are allowed as the limit admits.
    ///
    /// The key holds the theoretical arrival time in microseconds since the
    /// Unix epoch and expires when the limiter is back to full capacity.
    /// Redis uses its own clock, so every replica shares one time line.
    pub async fn rate_limit(&self, key: &str, limit: RateLimit) -> Result<RateDecision, KvError> {
        let gcra = Gcra::try_from(limit)?;
        match self {
            Self::Memory(m) => Ok(m.rate_limit(key, gcra)),
            Self::Redis(r) => r.rate_limit(key, gcra).await,
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

/// A checked [`RateLimit`] in microseconds, the unit both backends count in.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    /// T: the spacing of requests at the sustained rate.
    interval: u64,
    /// τ: how far ahead of `now` the arrival time may run, T × (burst − 1).
    tolerance: u64,
}

/// Longest time a full burst may take to refill. Redis scripts count in
/// doubles, exact to 2^53µs (about 285 years since 1970); this keeps
/// arrival times well inside that.
const MAX_RATE_WINDOW: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl TryFrom<RateLimit> for Gcra {
    type Error = KvError;

    fn try_from(rate: RateLimit) -> Result<Self, KvError> {
        if rate.limit == 0 {
            return Err(KvError::InvalidRateLimit("limit must be at least 1"));
        }
        if rate.burst == 0 {
            return Err(KvError::InvalidRateLimit("burst must be at least 1"));
        }
        // u128 cannot overflow: period < 2^84µs, burst < 2^32.
        let interval = rate.period.as_micros() / u128::from(rate.limit);
        if interval == 0 {
            return Err(KvError::InvalidRateLimit("period / limit must be at least 1µs"));
        }
        let window = interval * u128::from(rate.burst);
        if window > MAX_RATE_WINDOW.as_micros() {
            return Err(KvError::InvalidRateLimit("period / limit × burst must be at most 100 years"));
        }
        Ok(Self { interval: interval as u64, tolerance: (window - interval) as u64 })
    }
}

impl Gcra {
    /// One step at `now` given the stored arrival time; returns the answer
    /// and, when allowed, the arrival time to store. The Redis script
    /// (`RATE_LIMIT_SCRIPT`) is the same computation.
    fn decide(self, stored_tat: Option<u64>, now: u64) -> (RateDecision, Option<u64>) {
        let tat = stored_tat.unwrap_or(now).max(now);
        if tat - now > self.tolerance {
            let decision = RateDecision {
                allowed: false,
                remaining: 0,
                reset_after: Duration::from_micros(tat - now),
                retry_after: Duration::from_micros(tat - self.tolerance - now),
            };
            return (decision, None);
        }
        let new_tat = tat + self.interval;
        let ahead = new_tat - now;
        let decision = RateDecision {
            allowed: true,
            // At most burst − 1, so it fits.
            remaining: ((self.tolerance + self.interval - ahead) / self.interval) as u32,
            reset_after: Duration::from_micros(ahead),
            retry_after: Duration::ZERO,
        };
        (decision, Some(new_tat))
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
    /// The monotonic clock's reading at a known Unix time, so rate limits
    /// store Unix microseconds (like Redis) without following wall-clock jumps.
    clock_origin: (Instant, u64),
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
                clock_origin: (Instant::now(), unix_micros(SystemTime::now())),
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

    fn rate_limit(&self, key: &str, gcra: Gcra) -> RateDecision {
        let now = Instant::now();
        let (origin, origin_micros) = self.inner.clock_origin;
        let now_micros = origin_micros + unix_micros_between(origin, now);
        let key = self.key(key);
        let mut entries = self.entries();
        let stored =
            entries.map.get(&key).filter(|e| e.live(now)).map(|e| parse_counter(&e.value).max(0) as u64);
        let (decision, new_tat) = gcra.decide(stored, now_micros);
        if let Some(new_tat) = new_tat {
            let entry = Entry {
                value: new_tat.to_string().into_bytes(),
                expires_at: Some(now + Duration::from_micros(new_tat - now_micros)),
            };
            self.write(&mut entries, key, entry);
        }
        decision
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

fn unix_micros(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn unix_micros_between(earlier: Instant, later: Instant) -> u64 {
    later.saturating_duration_since(earlier).as_micros() as u64
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

/// GCRA, the same steps as `Gcra::decide`, in microseconds since the Unix
/// epoch on the server's clock so every replica agrees. ARGV: emission
/// interval, tolerance. Returns {allowed, remaining, reset_after,
/// retry_after}. Numbers are doubles here, exact for integers below 2^53,
/// and written with %.0f because tostring would round them to 14 digits.
/// TIME before a write relies on effect replication, the default since
/// Redis 5.
const RATE_LIMIT_SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end
if tat - now > tolerance then
  return {0, 0, tat - now, tat - tolerance - now}
end
local new_tat = tat + interval
local ahead = new_tat - now
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', string.format('%.0f', math.ceil(ahead / 1000)))
return {1, math.floor((tolerance + interval - ahead) / interval), ahead, 0}
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

    async fn rate_limit(&self, key: &str, gcra: Gcra) -> Result<RateDecision, KvError> {
        let (allowed, remaining, reset_after, retry_after): (i64, u32, u64, u64) =
            redis::Script::new(RATE_LIMIT_SCRIPT)
                .key(self.key(key))
                .arg(gcra.interval)
                .arg(gcra.tolerance)
                .invoke_async(&mut self.conn.clone())
                .await?;
        Ok(RateDecision {
            allowed: allowed == 1,
            remaining,
            reset_after: Duration::from_micros(reset_after),
            retry_after: Duration::from_micros(retry_after),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn gcra(limit: u32, period: Duration, burst: u32) -> Gcra {
        Gcra::try_from(RateLimit { limit, period, burst }).expect("valid rate")
    }

    #[test]
    fn gcra_admits_a_burst_then_one_request_per_interval() {
        // T = 100ms, τ = 200ms.
        let gcra = gcra(10, Duration::from_secs(1), 3);
        let ms = |n: u64| n * 1000;
        let (first, tat) = gcra.decide(None, ms(1000));
        assert_eq!(
            (first.allowed, first.remaining, first.reset_after),
            (true, 2, Duration::from_millis(100))
        );
        let (second, tat) = gcra.decide(tat, ms(1000));
        let (third, tat) = gcra.decide(tat, ms(1000));
        assert_eq!((second.remaining, third.remaining), (1, 0));
        assert_eq!(third.reset_after, Duration::from_millis(300));

        let (refused, stored) = gcra.decide(tat, ms(1040));
        assert!(!refused.allowed);
        assert_eq!(stored, None, "a refusal records nothing");
        assert_eq!(refused.retry_after, Duration::from_millis(60));
        assert_eq!(refused.reset_after, Duration::from_millis(260));

        let (recovered, _) = gcra.decide(tat, ms(1100));
        assert!(recovered.allowed, "one interval after the burst one more fits");
        assert_eq!(recovered.remaining, 0);
        let (idle, _) = gcra.decide(tat, ms(5000));
        assert_eq!(idle.remaining, 2, "an idle key is back to a full burst");
    }

    #[test]
    fn rate_limits_that_cannot_be_enforced_are_refused() {
        let second = Duration::from_secs(1);
        for (limit, period, burst) in
            [(0, second, 1), (1, second, 0), (1, Duration::ZERO, 1), (2_000_000, second, 1)]
        {
            let rate = RateLimit { limit, period, burst };
            assert!(matches!(Gcra::try_from(rate), Err(KvError::InvalidRateLimit(_))), "{rate:?}");
        }
        let rate = RateLimit { limit: 1, period: Duration::from_secs(u64::MAX), burst: u32::MAX };
        assert!(Gcra::try_from(rate).is_err(), "a window beyond exact arithmetic is refused");
    }
}
