//! The job bus contract: the local bus and NATS JetStream must both pass it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use postmesh_kit::bus::{BusError, ConsumerSpec, Delivery, JobBus, JobOutcome, Message, Published};
use postmesh_kit::testing::{TestEnv, eventually};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

pub(crate) async fn bus(env: &TestEnv) -> JobBus {
    JobBus::connect(&env.config).await.expect("bus connects")
}

pub(crate) fn spec(name: &str, filter: &str, max_deliver: u32) -> ConsumerSpec {
    ConsumerSpec {
        name: name.into(),
        filter: filter.into(),
        max_deliver,
        ack_wait: Duration::from_secs(1),
        backoff: vec![Duration::from_millis(50)],
        concurrency: 4,
    }
}

pub(crate) fn message(subject: &str, payload: &str) -> Message {
    Message {
        id: uuid::Uuid::now_v7().to_string(),
        subject: subject.into(),
        payload: payload.as_bytes().to_vec(),
        headers: BTreeMap::from([("x-request-id".to_owned(), format!("req-{payload}"))]),
    }
}

/// A handler that reports every delivery on a channel and answers with
/// `outcome`.
pub(crate) fn recorder(
    outcome: impl Fn(&Delivery) -> JobOutcome + Send + Sync + 'static,
) -> (
    impl Fn(Delivery) -> futures::future::Ready<JobOutcome> + Send + Sync + 'static,
    mpsc::UnboundedReceiver<Delivery>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = move |delivery: Delivery| {
        let result = outcome(&delivery);
        let _ = tx.send(delivery);
        futures::future::ready(result)
    };
    (handler, rx)
}

pub(crate) async fn next(rx: &mut mpsc::UnboundedReceiver<Delivery>) -> Delivery {
    tokio::time::timeout(WAIT, rx.recv()).await.expect("a delivery arrives in time").expect("handler alive")
}

/// Asserts nothing more arrives for a while: the only way to see an absence.
pub(crate) async fn assert_quiet(rx: &mut mpsc::UnboundedReceiver<Delivery>, window: Duration) {
    if let Ok(Some(extra)) = tokio::time::timeout(window, rx.recv()).await {
        panic!("unexpected delivery {} (attempt {})", extra.message.subject, extra.attempt);
    }
}

#[tokio::test]
async fn every_job_is_delivered_once_with_its_headers() {
    let env = TestEnv::new().await;
    let bus = bus(&env).await;
    let shutdown = CancellationToken::new();
    let sent: Vec<Message> = (0..5).map(|i| message("jobs.test.work", &format!("job{i}"))).collect();
    // Published before the consumer exists: a work queue keeps them.
    for m in &sent[..2] {
        assert_eq!(bus.publish(m).await.unwrap(), Published::New);
    }
    let (handler, mut rx) = recorder(|_| JobOutcome::Done);
    bus.consume(spec("worker", "jobs.test.work", 3), handler, shutdown.clone()).await.unwrap();
    for m in &sent[2..] {
        assert_eq!(bus.publish(m).await.unwrap(), Published::New);
    }

    let mut seen = HashSet::new();
    for _ in 0..5 {
        let delivery = next(&mut rx).await;
        assert_eq!(delivery.attempt, 1);
        let original = sent.iter().find(|m| m.id == delivery.message.id).expect("a message we sent");
        assert_eq!(delivery.message.payload, original.payload);
        assert_eq!(delivery.message.subject, "jobs.test.work");
        assert_eq!(delivery.message.headers.get("x-request-id"), original.headers.get("x-request-id"));
        assert!(seen.insert(delivery.message.id));
    }
    assert_quiet(&mut rx, Duration::from_millis(1500)).await;
    shutdown.cancel();
}

#[tokio::test]
async fn a_repeated_message_id_is_delivered_once() {
    let env = TestEnv::new().await;
    let bus = bus(&env).await;
    let shutdown = CancellationToken::new();
    let (handler, mut rx) = recorder(|_| JobOutcome::Done);
    bus.consume(spec("dedup", "jobs.test.dedup", 3), handler, shutdown.clone()).await.unwrap();

    let m = message("jobs.test.dedup", "once");
    assert_eq!(bus.publish(&m).await.unwrap(), Published::New);
    assert_eq!(bus.publish(&m).await.unwrap(), Published::Duplicate);
    assert_eq!(next(&mut rx).await.message.id, m.id);
    assert_eq!(bus.publish(&m).await.unwrap(), Published::Duplicate, "still a duplicate after delivery");
    assert_quiet(&mut rx, Duration::from_millis(1500)).await;
    shutdown.cancel();
}

#[tokio::test]
async fn a_job_whose_consumer_dies_before_ack_is_delivered_again() {
    let env = TestEnv::new().await;
    let bus = bus(&env).await;
    let first_shutdown = CancellationToken::new();

    // The first consumer takes the job and never finishes it.
    let (taken_tx, mut taken_rx) = mpsc::unbounded_channel();
    let hang = move |delivery: Delivery| {
        let _ = taken_tx.send(delivery);
        futures::future::pending::<JobOutcome>()
    };
    let dying =
        bus.consume(spec("durable", "jobs.test.crash", 5), hang, first_shutdown.clone()).await.unwrap();
    let m = message("jobs.test.crash", "survivor");
    bus.publish(&m).await.unwrap();
    let taken = next(&mut taken_rx).await;
    assert_eq!((taken.message.id.as_str(), taken.attempt), (m.id.as_str(), 1));
    dying.abort();

    // A new process picks the same durable consumer up.
    let shutdown = CancellationToken::new();
    let (handler, mut rx) = recorder(|_| JobOutcome::Done);
    bus.consume(spec("durable", "jobs.test.crash", 5), handler, shutdown.clone()).await.unwrap();
    let again = next(&mut rx).await;
    assert_eq!(again.message.id, m.id);
    assert_eq!(again.message.payload, m.payload);
    assert_eq!(again.attempt, 2, "the redelivery counts as the second attempt");
    assert_quiet(&mut rx, Duration::from_millis(1500)).await;
    shutdown.cancel();
    first_shutdown.cancel();
}

#[tokio::test]
async fn a_failing_job_is_retried_then_dead_lettered_and_can_be_replayed() {
    let env = TestEnv::new().await;
    let bus = bus(&env).await;
    let shutdown = CancellationToken::new();
    let healthy = Arc::new(AtomicU32::new(0));
    let flag = healthy.clone();
    let (handler, mut rx) = recorder(move |d| {
        if flag.load(Ordering::SeqCst) == 1 {
            JobOutcome::Done
        } else {
            JobOutcome::Retry { reason: format!("downstream refused attempt {}", d.attempt), after: None }
        }
    });
    bus.consume(spec("flaky", "jobs.test.flaky", 3), handler, shutdown.clone()).await.unwrap();
    let m = message("jobs.test.flaky", "doomed");
    bus.publish(&m).await.unwrap();

    for attempt in 1..=3 {
        let delivery = next(&mut rx).await;
        assert_eq!((delivery.message.id.as_str(), delivery.attempt), (m.id.as_str(), attempt));
    }
    let dead =
        eventually(WAIT, || async { bus.dead_letters(Some("jobs.test.>"), 10).await.unwrap().len() == 1 })
            .await;
    assert!(dead, "the job reached the dead letters");
    assert_quiet(&mut rx, Duration::from_millis(1000)).await;

    let letters = bus.dead_letters(None, 10).await.unwrap();
    let letter = &letters[0];
    assert_eq!(letter.message.id, m.id);
    assert_eq!(letter.message.subject, "jobs.test.flaky");
    assert_eq!(letter.message.payload, m.payload);
    assert_eq!(letter.consumer, "flaky");
    assert_eq!(letter.attempts, 3);
    assert!(letter.error.contains("downstream refused attempt 3"), "{}", letter.error);
    assert!(bus.dead_letters(Some("jobs.other.>"), 10).await.unwrap().is_empty(), "filter applies");

    healthy.store(1, Ordering::SeqCst);
    bus.replay_dead_letter(&letter.id).await.unwrap();
    let replayed = next(&mut rx).await;
    assert_eq!(replayed.message.payload, m.payload);
    assert_eq!(replayed.attempt, 1, "a replay starts over");
    assert!(bus.dead_letters(None, 10).await.unwrap().is_empty(), "replayed letters leave the queue");
    assert!(matches!(bus.replay_dead_letter(&letter.id).await, Err(BusError::DeadLetterNotFound(_))));
    shutdown.cancel();
}

#[tokio::test]
async fn a_rejected_job_goes_to_dead_letters_at_once() {
    let env = TestEnv::new().await;
    let bus = bus(&env).await;
    let shutdown = CancellationToken::new();
    let (handler, mut rx) = recorder(|_| JobOutcome::Reject { reason: "payload is not a PublishJob".into() });
    bus.consume(spec("strict", "jobs.test.strict", 5), handler, shutdown.clone()).await.unwrap();
    bus.publish(&message("jobs.test.strict", "garbage")).await.unwrap();
    assert_eq!(next(&mut rx).await.attempt, 1);
    let dead = eventually(WAIT, || async { !bus.dead_letters(None, 10).await.unwrap().is_empty() }).await;
    assert!(dead);
    let letter = &bus.dead_letters(None, 10).await.unwrap()[0];
    assert_eq!(letter.attempts, 1);
    assert!(letter.error.contains("payload is not a PublishJob"), "{}", letter.error);
    assert_quiet(&mut rx, Duration::from_millis(1000)).await;
    shutdown.cancel();
}

#[tokio::test]
async fn a_panicking_handler_counts_as_a_failed_attempt() {
    let env = TestEnv::new().await;
    let bus = bus(&env).await;
    let shutdown = CancellationToken::new();
    let calls = Arc::new(AtomicU32::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let counter = calls.clone();
    let handler = move |delivery: Delivery| {
        let tx = tx.clone();
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let _ = tx.send(delivery);
            if n == 0 {
                panic!("handler bug");
            }
            JobOutcome::Done
        }
    };
    bus.consume(spec("panicky", "jobs.test.panic", 3), handler, shutdown.clone()).await.unwrap();
    bus.publish(&message("jobs.test.panic", "p")).await.unwrap();
    assert_eq!(next(&mut rx).await.attempt, 1);
    assert_eq!(next(&mut rx).await.attempt, 2, "the consumer survived the panic and retried");
    shutdown.cancel();
}

#[tokio::test]
async fn events_reach_every_consumer_and_replays_only_the_one_that_failed() {
    let env = TestEnv::new().await;
    let bus = bus(&env).await;
    let shutdown = CancellationToken::new();
    let (ok_handler, mut ok_rx) = recorder(|_| JobOutcome::Done);
    let failing = Arc::new(AtomicU32::new(1));
    let flag = failing.clone();
    let (bad_handler, mut bad_rx) = recorder(move |_| {
        if flag.load(Ordering::SeqCst) == 1 {
            JobOutcome::Reject { reason: "not now".into() }
        } else {
            JobOutcome::Done
        }
    });
    bus.consume(spec("analytics-posts", "events.content.>", 3), ok_handler, shutdown.clone()).await.unwrap();
    bus.consume(spec("notify-posts", "events.content.>", 3), bad_handler, shutdown.clone()).await.unwrap();

    let event = message("events.content.post_created", "e1");
    bus.publish(&event).await.unwrap();
    assert_eq!(next(&mut ok_rx).await.message.id, event.id);
    assert_eq!(next(&mut bad_rx).await.message.id, event.id);

    let dead = eventually(WAIT, || async { bus.dead_letters(None, 10).await.unwrap().len() == 1 }).await;
    assert!(dead);
    failing.store(0, Ordering::SeqCst);
    let letter = bus.dead_letters(None, 10).await.unwrap().remove(0);
    assert_eq!(letter.consumer, "notify-posts");
    bus.replay_dead_letter(&letter.id).await.unwrap();
    assert_eq!(next(&mut bad_rx).await.message.payload, event.payload);
    assert_quiet(&mut ok_rx, Duration::from_millis(1000)).await;
    shutdown.cancel();
}

#[tokio::test]
async fn overlapping_job_consumers_are_refused() {
    let env = TestEnv::new().await;
    let bus = bus(&env).await;
    let shutdown = CancellationToken::new();
    let (handler, _rx) = recorder(|_| JobOutcome::Done);
    bus.consume(spec("social-all", "jobs.social.>", 3), handler, shutdown.clone()).await.unwrap();
    let (handler, _rx2) = recorder(|_| JobOutcome::Done);
    let overlap =
        bus.consume(spec("social-publish", "jobs.social.publish", 3), handler, shutdown.clone()).await;
    assert!(overlap.is_err(), "two consumers would split one work queue");
    shutdown.cancel();
}

#[tokio::test]
async fn bad_subjects_and_consumers_are_refused_by_name() {
    let env = TestEnv::new().await;
    let bus = bus(&env).await;
    let err = bus.publish(&message("mail.send", "x")).await.unwrap_err();
    assert!(err.to_string().contains("mail.send"), "{err}");
    let err = bus.publish(&message("jobs.social.>", "x")).await.unwrap_err();
    assert!(err.to_string().contains("jobs.social.>"), "a wildcard is not a subject: {err}");
    let (handler, _rx) = recorder(|_| JobOutcome::Done);
    let err =
        bus.consume(spec("bad name", "jobs.x.y", 3), handler, CancellationToken::new()).await.unwrap_err();
    assert!(err.to_string().contains("bad name"), "{err}");
}
