//! The key-value store contract: both implementations must pass it.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use postmesh_kit::kv::Kv;
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
