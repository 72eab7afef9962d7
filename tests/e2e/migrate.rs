//! `postmesh migrate`: applies every service's migrations; again is a no-op.

use postmesh::Component;
use postmesh_kit::db::Database;
use postmesh_kit::testing::TestEnv;

use crate::helpers::postmesh;

#[tokio::test]
async fn migrating_twice_applies_once() {
    let env = TestEnv::new().await;
    let first = postmesh(&env, &["migrate"]).output().unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let second = postmesh(&env, &["migrate"]).output().unwrap();
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    assert_eq!(first.stdout, second.stdout, "the second run reports the same state");

    let report = String::from_utf8_lossy(&first.stdout);
    for component in Component::SERVICES {
        let spec = component.spec().unwrap();
        let db = Database::connect(&env.config, spec.name).await.unwrap();
        let applied = db.applied_migrations(spec.migrations).await.unwrap();
        assert_eq!(applied.len(), (spec.migrations)().len(), "{}: all applied", spec.name);
        assert!(report.contains(&format!("{}: {} migrations applied", spec.name, applied.len())), "{report}");
        db.migrate(spec.migrations).await.unwrap();
        assert_eq!(db.applied_migrations(spec.migrations).await.unwrap(), applied, "{}: no-op", spec.name);
    }
}

#[tokio::test]
async fn migrating_one_service_leaves_the_others() {
    let env = TestEnv::new().await;
    let output = postmesh(&env, &["migrate", "user"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("user:") && !stdout.contains("content:"), "{stdout}");

    let output = postmesh(&env, &["migrate", "gateway"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("`gateway` has no database"));
}
