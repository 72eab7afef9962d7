//! What a caller's build gets: the generated clients and the client stack,
//! never the services' database, key-value store or job bus clients.

use std::process::Command;

/// Crates only a server needs.
const SERVER_SIDE: [&str; 8] = [
    "sea-orm",
    "sea-orm-migration",
    "sqlx",
    "sqlx-core",
    "async-nats",
    "redis",
    "postmesh-kit",
    "metrics-exporter-prometheus",
];

#[test]
fn no_server_side_dependency_reaches_a_caller() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["tree", "-p", "postmesh-client", "-e", "normal", "--prefix", "none", "--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(output.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&output.stderr));
    let tree = String::from_utf8(output.stdout).expect("UTF-8");
    let crates: Vec<&str> = tree.lines().filter_map(|line| line.split_whitespace().next()).collect();
    assert!(crates.contains(&"postmesh-proto"), "the tree lists the generated clients:\n{tree}");
    assert!(crates.contains(&"tower-resilience-circuitbreaker"), "and the client stack:\n{tree}");
    for name in SERVER_SIDE {
        assert!(!crates.contains(&name), "{name} is in postmesh-client's dependencies:\n{tree}");
    }
}
