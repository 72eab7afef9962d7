//! Migrations apply once: a second run (or a second replica) is a no-op.

use postmesh_kit::db::Database;
use postmesh_kit::testing::TestEnv;

#[tokio::test]
async fn applying_migrations_twice_changes_nothing() {
    let env = TestEnv::new().await;
    let db = Database::connect(&env.config, "svc").await.unwrap();
    db.migrate(postmesh_kit::outbox::migrations).await.unwrap();
    let first = db.applied_migrations(postmesh_kit::outbox::migrations).await.unwrap();
    db.migrate(postmesh_kit::outbox::migrations).await.unwrap();
    let second = db.applied_migrations(postmesh_kit::outbox::migrations).await.unwrap();
    assert_eq!(first.len(), postmesh_kit::outbox::migrations().len());
    assert_eq!(first, second);
}

#[tokio::test]
async fn concurrent_migrations_apply_once() {
    let env = TestEnv::new().await;
    let a = Database::connect(&env.config, "svc").await.unwrap();
    let b = Database::connect(&env.config, "svc").await.unwrap();
    let (ra, rb) = tokio::join!(
        a.migrate(postmesh_kit::outbox::migrations),
        b.migrate(postmesh_kit::outbox::migrations)
    );
    ra.unwrap();
    rb.unwrap();
    assert_eq!(a.applied_migrations(postmesh_kit::outbox::migrations).await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_local_bus_tables_migrate_idempotently() {
    let env = TestEnv::new().await;
    // Opening the local bus migrates its database; opening again must not fail.
    postmesh_kit::bus::LocalBus::open(&env.config).await.unwrap();
    postmesh_kit::bus::LocalBus::open(&env.config).await.unwrap();
}
