//! `postmesh`: parses the command line and hands over to the library.
#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use postmesh::cli::{Cli, Command};
use postmesh::{App, Component, Mode};
use postmesh_kit::Config;
use postmesh_kit::db::Database;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config_source()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    postmesh_kit::telemetry::init(&config.log, config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Our error messages already include their causes.
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Dev { .. } => serve(config, Mode::Dev).await,
        Command::Serve { component, .. } => serve(config, Mode::Serve(component)).await,
        Command::Migrate { services, .. } => migrate(config, services).await,
    }
}

async fn serve(config: Config, mode: Mode) -> anyhow::Result<()> {
    let shutdown = postmesh_kit::shutdown::on_signal();
    let app = App::build(config, mode, shutdown).await?;
    // One machine-readable line on stdout (logs go to stderr) so scripts
    // and tests learn the bound addresses, port 0 included.
    let mut line = String::from("postmesh ready");
    for (name, addr) in [("grpc", app.grpc_addr()), ("http", app.http_addr()), ("admin", app.admin_addr())] {
        if let Some(addr) = addr {
            line.push_str(&format!(" {name}={addr}"));
        }
    }
    println!("{line}");
    let _ = std::io::stdout().flush();
    tracing::info!(grpc = ?app.grpc_addr(), http = ?app.http_addr(), admin = ?app.admin_addr(), ready = app.is_ready(), "postmesh started");
    app.run().await.map_err(anyhow::Error::msg)
}

async fn migrate(config: Config, services: Vec<Component>) -> anyhow::Result<()> {
    let services = if services.is_empty() { Component::SERVICES.to_vec() } else { services };
    for component in services {
        let Some(spec) = component.spec() else {
            anyhow::bail!("`{component}` has no database to migrate");
        };
        let db = Database::connect(&config, spec.name)
            .await
            .map_err(|e| anyhow::anyhow!("{} database: {e}", spec.name))?;
        db.migrate(spec.migrations).await.map_err(|e| anyhow::anyhow!("migrating {}: {e}", spec.name))?;
        let applied = db.applied_migrations(spec.migrations).await?;
        println!("{}: {} migrations applied", spec.name, applied.len());
        db.close().await?;
    }
    if config.nats_url.is_none() {
        postmesh_kit::bus::LocalBus::open(&config).await?;
        println!("bus: local job bus ready");
    }
    Ok(())
}
