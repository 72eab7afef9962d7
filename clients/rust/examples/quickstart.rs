//! The quick start: sign in (or use an API key), connect two webhook
//! accounts, publish one post to both, and follow its status until it
//! settles.
//!
//! ```sh
//! cargo run --release -- dev                                 # in one terminal
//! cargo run -p postmesh-client --example quickstart          # in another
//! ```
//!
//! `POSTMESH_TARGET` names the server (default `http://127.0.0.1:50051`);
//! `POSTMESH_API_KEY` (a `pm_…` key with `accounts:write`, `posts:write`
//! and `posts:read`) is used when set, otherwise a new account is
//! registered. The two webhook accounts point at a tiny HTTP receiver this
//! example runs on 127.0.0.1, so nothing outside your machine is needed.

use std::time::{SystemTime, UNIX_EPOCH};

use postmesh_client::content::{CreatePostRequest, PostStatus, PublishingStatus, TargetStatus};
use postmesh_client::social::ConnectAccountRequest;
use postmesh_client::types::Platform;
use postmesh_client::user::RegisterRequest;
use postmesh_client::{Client, Error};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let target = std::env::var("POSTMESH_TARGET").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let api_key = std::env::var("POSTMESH_API_KEY").ok().filter(|k| !k.is_empty());
    let receiver = Receiver::start().await?;
    let status = match run(&target, api_key.as_deref(), &receiver).await {
        Ok(status) => status,
        Err(error) => {
            eprintln!("quick start failed: {error}");
            for violation in error.field_violations() {
                eprintln!("  {}: {}", violation.field, violation.description);
            }
            std::process::exit(1);
        }
    };
    println!("post {}: {}", status.post_id, status.status().as_str_name());
    for target in &status.targets {
        let failure = target.failure.as_ref().map(|f| format!(" ({})", f.message)).unwrap_or_default();
        println!("  account {}: {}{failure}", target.account_id, target.status().as_str_name());
    }
    let mut deliveries = receiver.deliveries;
    while let Ok(path) = deliveries.try_recv() {
        println!("  the receiver got the post on {path}");
    }
    if !all_posted(&status) {
        std::process::exit(1);
    }
    Ok(())
}

/// The quick start itself; returns the post's settled status.
pub async fn run(
    target: &str,
    api_key: Option<&str>,
    receiver: &Receiver,
) -> Result<PublishingStatus, Error> {
    // 1. A client with a credential: the API key, or a new account's token.
    let client = match api_key {
        Some(key) => Client::builder(target).api_key(key).connect().await?,
        None => {
            let client = Client::builder(target).connect().await?;
            let registered = client
                .users()
                .register(RegisterRequest {
                    email: format!("quickstart-{}@example.com", unique()),
                    password: "violet-ocean-lantern-42".into(),
                    display_name: "Quick Start".into(),
                    workspace_name: String::new(),
                })
                .await?
                .into_inner();
            client.with_token(&registered.tokens.unwrap_or_default().access_token)?
        }
    };

    // 2. Two accounts: signed webhooks to two paths of the local receiver.
    let mut accounts = Vec::new();
    for path in ["/first", "/second"] {
        let request = ConnectAccountRequest {
            platform: Platform::Webhook.into(),
            credentials: [
                ("url".to_owned(), format!("{}{path}", receiver.url)),
                ("secret".to_owned(), WEBHOOK_SECRET.to_owned()),
            ]
            .into(),
            display_name: format!("Quick start {path}"),
        };
        let account =
            client.social().connect_account(request).await?.into_inner().account.unwrap_or_default();
        accounts.push(account.id);
    }

    // 3. One post to both, published now. The idempotency key makes the
    //    call safe to repeat.
    let request = CreatePostRequest {
        text: "Hello from the postmesh quick start".into(),
        target_account_ids: accounts,
        idempotency_key: format!("quickstart-{}", unique()),
        ..Default::default()
    };
    let post = client.content().create_post(request).await?.into_inner().post.unwrap_or_default();

    // 4. Its status, streamed until it settles.
    client.wait_until_settled(&post.id).await
}

/// Whether every target of a settled status was posted.
pub fn all_posted(status: &PublishingStatus) -> bool {
    status.status() == PostStatus::Posted && status.targets.iter().all(|t| t.status() == TargetStatus::Posted)
}

/// The signing secret of the two webhooks (`whsec_` and base64 of 24
/// bytes). A real receiver checks the `webhook-signature` header with it;
/// this one only acknowledges.
const WEBHOOK_SECRET: &str = "whsec_cG9zdG1lc2gtcXVpY2tzdGFydC1kZW1v";

/// Unique enough for an e-mail address and an idempotency key.
fn unique() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default()
}

/// A tiny HTTP server on 127.0.0.1 that answers every request `200 OK`
/// and reports the path of each request that carried a body.
pub struct Receiver {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The path of every delivery, in order of arrival.
    pub deliveries: mpsc::UnboundedReceiver<String>,
}

impl Receiver {
    /// Starts the receiver on a free port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (sender, deliveries) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, sender.clone()));
            }
        });
        Ok(Self { url, deliveries })
    }
}

/// Reads requests from one connection and acknowledges each; the path is
/// reported before the answer, so a post counts as delivered only once it
/// was.
async fn answer(
    stream: tokio::net::TcpStream,
    deliveries: mpsc::UnboundedSender<String>,
) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if stream.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            stream.read_line(&mut header).await?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await?;
        if length > 0 {
            let _ = deliveries.send(path);
        }
        stream
            .get_mut()
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
            .await?;
    }
}
