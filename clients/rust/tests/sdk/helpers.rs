//! Starting `postmesh dev` and signing in to it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use postmesh_client::Client;
use postmesh_client::social::ConnectAccountRequest;
use postmesh_client::types::Platform;
use postmesh_client::user::RegisterRequest;

/// A password that passes the policy.
pub const PASSWORD: &str = "violet-ocean-lantern-42";

/// The repository's root.
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `postmesh` binary: `POSTMESH_BIN`, else the workspace's debug
/// build, built once when missing.
fn binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("POSTMESH_BIN") {
                return PathBuf::from(path);
            }
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join("target"));
            let path = target.join("debug").join("postmesh");
            if !path.exists() {
                let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
                let status = Command::new(cargo)
                    .args(["build", "-p", "postmesh", "--bin", "postmesh"])
                    .current_dir(workspace_root())
                    .status()
                    .expect("cargo runs");
                assert!(status.success(), "cargo build -p postmesh failed");
            }
            path
        })
        .clone()
}

/// A running `postmesh dev` with its own data directory; killed when
/// dropped.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:<port>`, its gRPC address.
    pub url: String,
    data: tempfile::TempDir,
}

impl Server {
    /// Starts `postmesh dev` on free ports and waits for its ready line.
    pub fn start() -> Self {
        let data = tempfile::tempdir().expect("a temporary directory");
        let stderr = std::fs::File::create(data.path().join("stderr.log")).expect("stderr file");
        let mut command = Command::new(binary());
        for (name, _) in std::env::vars() {
            if name.starts_with("POSTMESH_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .args(["dev", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .env("POSTMESH_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("postmesh starts");
        let stdout = child.stdout.take().expect("stdout piped");
        let (ready, line) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for text in BufReader::new(stdout).lines().map_while(Result::ok) {
                if text.starts_with("postmesh ready") {
                    let _ = ready.send(text);
                }
            }
        });
        let Ok(line) = line.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let log = std::fs::read_to_string(data.path().join("stderr.log")).unwrap_or_default();
            panic!("postmesh dev did not become ready; stderr:\n{log}");
        };
        let grpc = line
            .split_whitespace()
            .find_map(|part| part.strip_prefix("grpc="))
            .expect("the ready line names the gRPC address");
        Self { child, url: format!("http://{grpc}"), data }
    }

    /// Kills the server (as a crash would) and waits until it is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What the server logged, for failure messages.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.data.path().join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A client signed in as a freshly registered user.
pub async fn signed_in(server: &Server) -> Client {
    let client = Client::builder(&server.url).connect().await.expect("connects");
    let email = format!("sdk-{}@example.com", uuid_like());
    let registered = client
        .users()
        .register(RegisterRequest {
            email,
            password: PASSWORD.into(),
            display_name: "SDK test".into(),
            workspace_name: String::new(),
        })
        .await
        .expect("registers")
        .into_inner();
    client.with_token(&registered.tokens.expect("tokens").access_token).expect("a valid token")
}

/// Connects a webhook account to `url` (connecting makes no network call);
/// returns its id.
pub async fn webhook_account(client: &Client, url: &str) -> String {
    let request = ConnectAccountRequest {
        platform: Platform::Webhook.into(),
        credentials: [
            ("url".to_owned(), url.to_owned()),
            ("secret".to_owned(), "whsec_c2RrLXRlc3RzLXNpZ25pbmcta2V5LTEyMzQ1".to_owned()),
        ]
        .into(),
        display_name: String::new(),
    };
    client
        .social()
        .connect_account(request)
        .await
        .expect("connects the account")
        .into_inner()
        .account
        .expect("account")
        .id
}

/// A value unique to this process and moment.
pub fn uuid_like() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{}-{nanos}", std::process::id())
}
