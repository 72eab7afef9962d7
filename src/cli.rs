//! The command line. Flags override `POSTMESH_*` variables, which override
//! `postmesh.toml`, which overrides built-in defaults; `--help` lists every
//! variable with its default.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use postmesh_kit::config::ConfigSource;

use crate::component::Component;

/// postmesh: a social-media management backend as a mesh of gRPC services.
#[derive(Debug, Parser)]
#[command(name = "postmesh", version, after_help = postmesh_kit::config::env_help())]
pub struct Cli {
    /// Config file (default: ./postmesh.toml when present; also POSTMESH_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every service and the gateway in one process on the embedded
    /// defaults (SQLite, in-memory store, local job bus): gRPC on
    /// 127.0.0.1:50051, HTTP on 127.0.0.1:8080.
    Dev {
        /// Directory for databases and generated keys.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// gRPC listen address.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Gateway (HTTP) listen address.
        #[arg(long, value_name = "ADDR")]
        http_listen: Option<SocketAddr>,
    },
    /// Run one service, or the gateway, in this process (what Kubernetes runs).
    Serve {
        /// The component to run.
        #[arg(value_enum)]
        component: Component,
        /// gRPC listen address.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Gateway (HTTP) listen address, for `serve gateway`.
        #[arg(long, value_name = "ADDR")]
        http_listen: Option<SocketAddr>,
        /// Admin listen address (metrics, health).
        #[arg(long, value_name = "ADDR")]
        admin_listen: Option<SocketAddr>,
        /// Directory for SQLite databases and generated keys.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Apply pending database migrations and exit (all services by default).
    Migrate {
        /// Services to migrate.
        #[arg(value_enum)]
        services: Vec<Component>,
        /// Directory for SQLite databases.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

impl Cli {
    /// The configuration sources: file, process environment, and flags.
    pub fn config_source(&self) -> ConfigSource {
        let mut source = ConfigSource::from_process(self.config.as_deref());
        let mut set = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                source.set(key, value);
            }
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let addr = |a: &Option<SocketAddr>| a.map(|a| a.to_string());
        match &self.command {
            Command::Dev { data_dir, listen, http_listen } => {
                set("data_dir", path(data_dir));
                set("listen", addr(listen));
                set("http_listen", addr(http_listen));
            }
            Command::Serve { listen, http_listen, admin_listen, data_dir, .. } => {
                set("data_dir", path(data_dir));
                set("listen", addr(listen));
                set("http_listen", addr(http_listen));
                set("admin_listen", addr(admin_listen));
            }
            Command::Migrate { data_dir, .. } => set("data_dir", path(data_dir)),
        }
        source
    }
}
