//! The key-value store contract: both implementations must pass it.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use postmesh_kit::kv::{Kv, KvError, RateLimit};
use postmesh_kit::testing::{TestEnv, eventually};

async fn kv(env: &TestEnv) -> Kv {
    Kv::connect(&env.config).await.expect("key-value store connects")
}

#[tokio::test]
async fn set_get_delete_round_trip() {
    let env = TestEnv::new().await;
    let kv = kv(&env).await;
    assert_eq!(kv.get("a").await.unwrap(), None);
    kv.set("a", b"one", None).await.unwrap();
    assert_eq!(kv.get("a").await.unwrap().as_deref(), Some(&b"one"[..]));
    kv.set("a", b"two", None).await.unwrap();
    assert_eq!(kv.get("a").await.unwrap().as_deref(), Some(&b"two"[..]));
    assert_eq!(kv.ttl("a").await.unwrap(), None, "no TTL was given");
    assert!(kv.delete("a").await.unwrap());
    assert!(!kv.delete("a").await.unwrap(), "second delete finds nothing");
    assert_eq!(kv.get("a").await.unwrap(), None);
}

#[tokio::test]
async fn values_expire_after_their_ttl() {
    let env = TestEnv::new().await;
    let kv = kv(&env).await;
    kv.set("short", b"v", Some(Duration::from_millis(300))).await.unwrap();
    kv.set("long", b"v", Some(Duration::from_secs(60))).await.unwrap();
    assert!(kv.get("short").await.unwrap().is_some(), "present right after set");
    let ttl = kv.ttl("short").await.unwrap().expect("has a TTL");
    assert!(ttl <= Duration::from_millis(300) && ttl > Duration::ZERO, "{ttl:?}");

    let expired =
        eventually(Duration::from_secs(3), || async { kv.get("short").await.unwrap().is_none() }).await;
    assert!(expired, "value outlived its TTL");
    assert!(kv.get("long").await.unwrap().is_some(), "a longer TTL is unaffected");
}

#[tokio::test]
async fn set_if_absent_has_exactly_one_winner() {
    let env = TestEnv::new().await;
    let kv = kv(&env).await;
    let attempts = (0..32u8).map(|i| {
        let kv = kv.clone();
        tokio::spawn(
            async move { (i, kv.set_if_absent("lock", &[i], Duration::from_millis(400)).await.unwrap()) },
        )
    });
    let results: Vec<(u8, bool)> =
        futures::future::join_all(attempts).await.into_iter().map(Result::unwrap).collect();
    let winners: Vec<u8> = results.iter().filter(|(_, won)| *won).map(|(i, _)| *i).collect();
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert_eq!(kv.get("lock").await.unwrap(), Some(vec![winners[0]]), "the winner's value is stored");

    let freed = eventually(Duration::from_secs(3), || async {
        kv.set_if_absent("lock", b"next", Duration::from_secs(5)).await.unwrap()
    })
    .await;
    assert!(freed, "the key becomes available once its TTL runs out");
}

#[tokio::test]
async fn increments_are_atomic_and_start_one_window() {
    let env = TestEnv::new().await;
    let kv = kv(&env).await;
    let window = Duration::from_millis(600);
    let tasks = (0..50).map(|_| {
        let kv = kv.clone();
        tokio::spawn(async move { kv.incr("hits", 1, window).await.unwrap() })
    });
    let values: HashSet<i64> =
        futures::future::join_all(tasks).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(values, (1..=50).collect::<HashSet<_>>(), "every increment saw a distinct value");

    let first_ttl = kv.ttl("hits").await.unwrap().expect("the first increment set an expiry");
    assert!(first_ttl <= window);
    assert_eq!(kv.incr("hits", 5, Duration::from_secs(60)).await.unwrap(), 55);
    let later_ttl = kv.ttl("hits").await.unwrap().expect("still expiring");
    assert!(later_ttl <= first_ttl, "a later increment must not extend the window");

    let restarted =
        eventually(Duration::from_secs(3), || async { kv.get("hits").await.unwrap().is_none() }).await;
    assert!(restarted, "the counter disappears when its window ends");
    assert_eq!(kv.incr("hits", 1, window).await.unwrap(), 1, "a new window starts from zero");
}

#[tokio::test]
async fn publish_reaches_every_current_subscriber_in_order() {
    let env = TestEnv::new().await;
    let kv = kv(&env).await;
    let mut first = kv.subscribe("news").await.unwrap();
    let mut second = kv.subscribe("news").await.unwrap();
    let mut other = kv.subscribe("other").await.unwrap();

    for message in [&b"1"[..], b"2", b"3"] {
        assert_eq!(kv.publish("news", message).await.unwrap(), 2, "two subscribers listen");
    }
    for subscriber in [&mut first, &mut second] {
        let got: Vec<Vec<u8>> =
            tokio::time::timeout(Duration::from_secs(5), subscriber.by_ref().take(3).collect())
                .await
                .expect("messages arrive");
        assert_eq!(got, vec![b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]);
    }
    kv.publish("other", b"x").await.unwrap();
    let on_other =
        tokio::time::timeout(Duration::from_secs(5), other.next()).await.expect("other channel delivers");
    assert_eq!(on_other, Some(b"x".to_vec()), "channels do not mix");

    let mut late = kv.subscribe("news").await.unwrap();
    kv.publish("news", b"4").await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), late.next())
        .await
        .expect("late subscriber gets new messages");
    assert_eq!(next, Some(b"4".to_vec()), "earlier messages are not replayed");
}

#[tokio::test]
async fn namespaces_do_not_see_each_other() {
    let env = TestEnv::new().await;
    let kv_a = kv(&env).await;
    let kv_b = Kv::connect(&env.config_with("POSTMESH_NAMESPACE", "other_tenant")).await.unwrap();
    kv_a.set("shared-name", b"a", Some(Duration::from_secs(30))).await.unwrap();
    assert_eq!(kv_b.get("shared-name").await.unwrap(), None);
    assert!(kv_b.set_if_absent("shared-name", b"b", Duration::from_secs(30)).await.unwrap());
    assert_eq!(kv_a.get("shared-name").await.unwrap(), Some(b"a".to_vec()));
    kv_b.delete("shared-name").await.unwrap();
}

/// Allowance for Redis's clock and the test's clock being read at slightly
/// different moments.
const CLOCK_SLACK: Duration = Duration::from_millis(20);

fn unix_micros() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_micros() as u64
}

#[tokio::test]
async fn rate_limit_allows_a_burst_then_refuses_until_one_interval_frees_up() {
    let env = TestEnv::new().await;
    let kv = kv(&env).await;
    // T = 2s, long enough that no capacity comes back while the test runs.
    let interval = Duration::from_secs(2);
    let rate = RateLimit { limit: 5, period: Duration::from_secs(10), burst: 4 };
    let started = Instant::now();
    let started_micros = unix_micros();

    let mut remaining = Vec::new();
    for _ in 0..4 {
        let decision = kv.rate_limit("login:alice", rate).await.unwrap();
        assert!(decision.allowed, "{decision:?}");
        assert_eq!(decision.retry_after, Duration::ZERO, "{decision:?}");
        assert!(decision.reset_after <= interval * 4, "{decision:?}");
        remaining.push(decision.remaining);
    }
    assert_eq!(remaining, [3, 2, 1, 0], "remaining counts down to zero");

    let refused = kv.rate_limit("login:alice", rate).await.unwrap();
    let elapsed = started.elapsed();
    assert!(!refused.allowed, "the request after a full burst is refused");
    assert_eq!(refused.remaining, 0);
    assert!(
        refused.retry_after <= interval && refused.retry_after + elapsed + CLOCK_SLACK >= interval,
        "retry after about T: {refused:?} after {elapsed:?}"
    );
    assert!(
        refused.reset_after <= interval * 4 && refused.reset_after + elapsed + CLOCK_SLACK >= interval * 4,
        "full again after about 4T: {refused:?}"
    );
    for _ in 0..3 {
        let again = kv.rate_limit("login:alice", rate).await.unwrap();
        assert!(!again.allowed);
        assert!(again.retry_after <= refused.retry_after, "refusals are not recorded: {again:?}");
    }

    let stored = kv.get("login:alice").await.unwrap().expect("the arrival time is stored");
    let tat: u64 = String::from_utf8(stored).unwrap().parse().expect("microseconds as a decimal");
    let window = (interval * 4 + CLOCK_SLACK * 50).as_micros() as u64;
    assert!(
        tat >= started_micros && tat <= unix_micros() + window,
        "stored as microseconds since the Unix epoch: {tat}"
    );
    let ttl = kv.ttl("login:alice").await.unwrap().expect("an idle key expires");
    assert!(ttl <= interval * 4, "{ttl:?}");
}

#[tokio::test]
async fn rate_limit_recovers_after_its_retry_after() {
    let env = TestEnv::new().await;
    let kv = kv(&env).await;
    let rate = RateLimit { limit: 1, period: Duration::from_millis(300), burst: 1 };
    assert!(kv.rate_limit("send", rate).await.unwrap().allowed);
    let refused_at = Instant::now();
    let refused = kv.rate_limit("send", rate).await.unwrap();
    assert!(!refused.allowed, "a second request within T is refused: {refused:?}");

    let recovered =
        eventually(Duration::from_secs(3), || async { kv.rate_limit("send", rate).await.unwrap().allowed })
            .await;
    let waited = refused_at.elapsed();
    assert!(recovered, "one more request fits once T has passed");
    assert!(
        waited + CLOCK_SLACK >= refused.retry_after,
        "allowed only after retry_after: waited {waited:?}, {refused:?}"
    );
    assert!(!kv.rate_limit("send", rate).await.unwrap().allowed, "the recovered slot is used up again");
}

// Several worker threads, so a memory store that let go of its lock between
// reading and writing would be caught too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_rate_limit_calls_admit_exactly_the_burst() {
    let env = TestEnv::new().await;
    let kv = kv(&env).await;
    let rate = RateLimit { limit: 10, period: Duration::from_secs(1), burst: 10 };
    let calls = (0..50).map(|_| {
        let kv = kv.clone();
        tokio::spawn(async move { kv.rate_limit("busy", rate).await.unwrap() })
    });
    let decisions: Vec<_> = futures::future::join_all(calls).await.into_iter().map(Result::unwrap).collect();
    let allowed: Vec<_> = decisions.iter().filter(|d| d.allowed).collect();
    assert_eq!(allowed.len(), 10, "{decisions:?}");
    let remaining: HashSet<u32> = allowed.iter().map(|d| d.remaining).collect();
    assert_eq!(remaining, (0..10).collect::<HashSet<_>>(), "every allowed call saw a distinct state");
}

#[tokio::test]
async fn rate_limits_of_different_keys_and_namespaces_are_independent() {
    let env = TestEnv::new().await;
    let kv_a = kv(&env).await;
    let kv_b = Kv::connect(&env.config_with("POSTMESH_NAMESPACE", "other_tenant")).await.unwrap();
    let rate = RateLimit { limit: 1, period: Duration::from_secs(60), burst: 2 };
    assert!(kv_a.rate_limit("api:alice", rate).await.unwrap().allowed);
    assert!(kv_a.rate_limit("api:alice", rate).await.unwrap().allowed);
    assert!(!kv_a.rate_limit("api:alice", rate).await.unwrap().allowed, "alice used her burst");

    let bob = kv_a.rate_limit("api:bob", rate).await.unwrap();
    assert!(bob.allowed && bob.remaining == 1, "another key starts full: {bob:?}");
    let other_alice = kv_b.rate_limit("api:alice", rate).await.unwrap();
    assert!(
        other_alice.allowed && other_alice.remaining == 1,
        "another namespace starts full: {other_alice:?}"
    );
    kv_b.delete("api:alice").await.unwrap();
}

#[tokio::test]
async fn rate_limits_that_cannot_be_enforced_are_errors() {
    let env = TestEnv::new().await;
    let kv = kv(&env).await;
    let second = Duration::from_secs(1);
    for rate in [
        RateLimit { limit: 0, period: second, burst: 1 },
        RateLimit { limit: 1, period: Duration::ZERO, burst: 1 },
        RateLimit { limit: 1, period: second, burst: 0 },
    ] {
        let result = kv.rate_limit("bad", rate).await;
        assert!(matches!(result, Err(KvError::InvalidRateLimit(_))), "{rate:?}: {result:?}");
    }
    assert_eq!(kv.get("bad").await.unwrap(), None, "nothing is recorded");
}
