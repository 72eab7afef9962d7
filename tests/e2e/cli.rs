//! The command line: `--help` documents every variable, and bad input stops
//! the process with a message naming the problem, never a panic.

use postmesh_kit::config::KEYS;
use postmesh_kit::testing::TestEnv;

use crate::helpers::postmesh;

fn run(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> (i32, String) {
    let output = postmesh(env, args).envs(vars.iter().copied()).output().expect("postmesh runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "a panic instead of an error:\n{stderr}");
    (output.status.code().expect("exited normally"), stderr)
}

#[tokio::test]
async fn help_documents_every_variable() {
    let env = TestEnv::new().await;
    let output = postmesh(&env, &["--help"]).output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for key in KEYS {
        assert!(help.contains(&key.env_var()), "{} missing from --help", key.env_var());
    }
    for command in ["dev", "serve", "migrate"] {
        assert!(help.contains(command), "{command} missing from --help");
    }
}

#[tokio::test]
async fn an_unparseable_url_is_named() {
    let env = TestEnv::new().await;
    let (code, stderr) = run(&env, &["dev"], &[("POSTMESH_DATABASE_URL", "postgres//missing-colon")]);
    assert_eq!(code, 2);
    assert!(stderr.contains("POSTMESH_DATABASE_URL"), "{stderr}");
    assert!(stderr.contains("not a URL"), "{stderr}");

    let (code, stderr) = run(&env, &["dev"], &[("POSTMESH_NATS_URL", "http://nats:4222")]);
    assert_eq!(code, 2);
    assert!(stderr.contains("POSTMESH_NATS_URL") && stderr.contains("unsupported scheme `http`"), "{stderr}");
}

#[tokio::test]
async fn an_unknown_service_is_named_with_the_valid_ones() {
    let env = TestEnv::new().await;
    let (code, stderr) = run(&env, &["serve", "mailer"], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("mailer"), "{stderr}");
    assert!(stderr.contains("notification"), "lists the valid services: {stderr}");
}

#[tokio::test]
async fn bad_values_and_files_are_named() {
    let env = TestEnv::new().await;
    let (code, stderr) = run(&env, &["dev"], &[("POSTMESH_SHUTDOWN_GRACE", "soon")]);
    assert_eq!(code, 2);
    assert!(stderr.contains("POSTMESH_SHUTDOWN_GRACE"), "{stderr}");

    let (code, stderr) = run(&env, &["dev", "--listen", "nowhere"], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--listen"), "{stderr}");

    let file = env.data_dir().join("typo.toml");
    std::fs::write(&file, "databse_url = \"postgres://x/y\"\n").unwrap();
    let file_arg = file.display().to_string();
    let (code, stderr) = run(&env, &["--config", &file_arg, "dev"], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("databse_url"), "{stderr}");

    let missing = env.data_dir().join("missing.toml").display().to_string();
    let (code, stderr) = run(&env, &["--config", &missing, "dev"], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("missing.toml"), "{stderr}");
}

#[tokio::test]
async fn an_unreachable_database_fails_start_with_a_message() {
    let env = TestEnv::new().await;
    // A port nothing listens on: start-up must fail fast and say why.
    let (code, stderr) = run(
        &env,
        &["serve", "user"],
        &[("POSTMESH_DATABASE_URL", "postgres://postmesh@127.0.0.1:9/postmesh")],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot connect to postgres://postmesh@127.0.0.1:9/postmesh"), "{stderr}");
    assert!(stderr.to_lowercase().contains("refused"), "the cause is shown: {stderr}");
}

#[test]
fn the_configuration_reference_lists_every_variable() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/CONFIGURATION.md")).unwrap();
    let generated = postmesh_kit::config::markdown_table();
    assert!(
        doc.contains(&generated),
        "docs/CONFIGURATION.md is out of date; its table should read:\n\n{generated}"
    );
}

#[test]
fn the_permission_matrix_in_docs_is_the_one_enforced() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PERMISSIONS.md")).unwrap();
    let generated = postmesh_kit::auth::permission_matrix_markdown();
    assert!(
        doc.contains(&generated),
        "docs/PERMISSIONS.md is out of date; its generated part should read:\n\n{generated}"
    );
}
