//! The outbox: messages leave only with their transaction, carry the
//! request context, and are neither lost nor duplicated when the bus is
//! down or the relay dies.

use std::collections::HashSet;
use std::time::Duration;

use postmesh_kit::Config;
use postmesh_kit::bus::{JobBus, JobOutcome, Published};
use postmesh_kit::db::Database;
use postmesh_kit::outbox::{Outbox, OutboxMessage};
use postmesh_kit::telemetry::RequestContext;
use postmesh_kit::testing::{ChaosProxy, TestEnv, eventually, socket_addr};
use sea_orm::TransactionTrait;
use tokio_util::sync::CancellationToken;

use crate::bus::{assert_quiet, next, recorder, spec};

/// A service database with its outbox.
async fn service_outbox(config: &Config) -> (Database, Outbox) {
    let db = Database::connect(config, "svc").await.expect("service database");
    db.migrate(postmesh_kit::outbox::migrations).await.expect("outbox migration");
    (db.clone(), Outbox::new(db))
}

async fn enqueue_committed(outbox: &Outbox, db: &Database, n: usize) {
    for i in 0..n {
        let txn = db.conn().begin().await.unwrap();
        let payload = format!("job-{i}").into_bytes();
        outbox.enqueue(&txn, OutboxMessage::new("jobs.test.outbox", payload)).await.unwrap();
        outbox.commit(txn).await.unwrap();
    }
}

#[tokio::test]
async fn messages_leave_only_with_their_transaction_and_carry_the_context() {
    let env = TestEnv::new().await;
    let bus = JobBus::connect(&env.config).await.unwrap();
    let (db, outbox) = service_outbox(&env.config).await;
    let shutdown = CancellationToken::new();
    let (handler, mut rx) = recorder(|_| JobOutcome::Done);
    bus.consume(spec("outbox-ctx", "jobs.test.outbox", 3), handler, shutdown.clone()).await.unwrap();
    tokio::spawn(outbox.clone().run_relay(bus.clone(), Duration::from_secs(30), shutdown.clone()));

    let rolled_back = db.conn().begin().await.unwrap();
    outbox.enqueue(&rolled_back, OutboxMessage::new("jobs.test.outbox", b"never".to_vec())).await.unwrap();
    rolled_back.rollback().await.unwrap();

    let context = RequestContext { request_id: "req-outbox-1".into(), ..RequestContext::generate() };
    let trace = context.traceparent.clone();
    context
        .scope(async {
            let txn = db.conn().begin().await.unwrap();
            outbox.enqueue(&txn, OutboxMessage::new("jobs.test.outbox", b"kept".to_vec())).await.unwrap();
            outbox.commit(txn).await.unwrap();
        })
        .await;

    // Woken by the commit, not by the 30 s poll.
    let delivery = next(&mut rx).await;
    assert_eq!(delivery.message.payload, b"kept");
    assert_eq!(delivery.message.headers.get("x-request-id").map(String::as_str), Some("req-outbox-1"));
    assert_eq!(delivery.message.headers.get("traceparent"), Some(&trace));
    assert_eq!(delivery.message.context().request_id, "req-outbox-1");
    assert_quiet(&mut rx, Duration::from_millis(1000)).await;
    assert_eq!(outbox.backlog().await.unwrap(), 0, "published rows are removed");
    shutdown.cancel();
}

#[tokio::test]
async fn messages_written_while_no_relay_runs_are_published_once_it_starts() {
    let env = TestEnv::new().await;
    let bus = JobBus::connect(&env.config).await.unwrap();
    let (db, outbox) = service_outbox(&env.config).await;
    enqueue_committed(&outbox, &db, 10).await;
    assert_eq!(outbox.backlog().await.unwrap(), 10);

    let shutdown = CancellationToken::new();
    let (handler, mut rx) = recorder(|_| JobOutcome::Done);
    bus.consume(spec("outbox-late", "jobs.test.outbox", 3), handler, shutdown.clone()).await.unwrap();
    tokio::spawn(outbox.clone().run_relay(bus.clone(), Duration::from_millis(100), shutdown.clone()));
    let mut payloads = HashSet::new();
    for _ in 0..10 {
        assert!(payloads.insert(next(&mut rx).await.message.payload));
    }
    assert_quiet(&mut rx, Duration::from_millis(1000)).await;
    shutdown.cancel();
}

#[tokio::test]
async fn a_relay_that_publishes_twice_delivers_once() {
    let env = TestEnv::new().await;
    let bus = JobBus::connect(&env.config).await.unwrap();
    let (db, outbox) = service_outbox(&env.config).await;
    enqueue_committed(&outbox, &db, 1).await;
    // Two relays (replicas, or one restarted mid-pass) race for the same row.
    let (a, b) = tokio::join!(outbox.relay_once(&bus), outbox.relay_once(&bus));
    assert_eq!(a.unwrap() + b.unwrap(), 1, "a claimed row is not published by two relays");

    let shutdown = CancellationToken::new();
    let (handler, mut rx) = recorder(|_| JobOutcome::Done);
    bus.consume(spec("outbox-race", "jobs.test.outbox", 3), handler, shutdown.clone()).await.unwrap();
    let delivered = next(&mut rx).await;
    // Publishing the same message again is what a relay dying between
    // publish and delete does: the bus must drop it.
    assert_eq!(bus.publish(&delivered.message).await.unwrap(), Published::Duplicate);
    assert_quiet(&mut rx, Duration::from_millis(1000)).await;
    shutdown.cancel();
}

/// The case: with NATS unreachable, jobs accepted into the outbox
/// wait, and once NATS is back each is delivered exactly once.
#[tokio::test]
async fn jobs_written_while_nats_is_down_arrive_once_when_it_returns() {
    let env = TestEnv::new().await;
    let Some(nats_url) = env.nats_url() else {
        // Embedded pass: the local bus lives in the database and cannot be
        // cut off; the relay-restart test above covers its side.
        return;
    };
    let proxy = ChaosProxy::start(socket_addr(nats_url)).await;
    let config = env.config_with("POSTMESH_NATS_URL", &format!("nats://{}", proxy.addr()));
    let bus = JobBus::connect(&config).await.unwrap();
    let direct = JobBus::connect(&env.config).await.unwrap();
    let up = eventually(Duration::from_secs(15), || async { bus.ping().await.is_ok() }).await;
    assert!(up, "bus is up through the proxy");

    let (db, outbox) = service_outbox(&config).await;

    proxy.cut();
    enqueue_committed(&outbox, &db, 10).await;
    assert!(outbox.relay_once(&bus).await.is_err(), "publishing fails while NATS is away");
    assert_eq!(outbox.backlog().await.unwrap(), 10, "nothing is lost or half-sent");

    let shutdown = CancellationToken::new();
    let (handler, mut rx) = recorder(|_| JobOutcome::Done);
    direct.consume(spec("outbox-nats", "jobs.test.outbox", 3), handler, shutdown.clone()).await.unwrap();
    tokio::spawn(outbox.clone().run_relay(bus.clone(), Duration::from_millis(100), shutdown.clone()));
    proxy.restore();

    let mut payloads = HashSet::new();
    for _ in 0..10 {
        let delivery = next(&mut rx).await;
        assert!(payloads.insert(delivery.message.payload.clone()), "duplicate delivery");
    }
    assert_quiet(&mut rx, Duration::from_millis(2000)).await;
    assert_eq!(outbox.backlog().await.unwrap(), 0);
    shutdown.cancel();
}
