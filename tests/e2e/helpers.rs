//! Starting the binary and talking to it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use futures::StreamExt;
use postmesh_kit::testing::TestEnv;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The seven services' gRPC names.
pub const SERVICES: [&str; 7] = [
    "postmesh.user.v1.UserService",
    "postmesh.content.v1.ContentService",
    "postmesh.social.v1.SocialService",
    "postmesh.analytics.v1.AnalyticsService",
    "postmesh.ai.v1.AiService",
    "postmesh.notification.v1.NotificationService",
    "postmesh.webhook.v1.WebhookService",
];

/// A `postmesh` command with this test's environment (and none of the
/// caller's own `POSTMESH_*` settings).
pub fn postmesh(env: &TestEnv, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_postmesh"));
    for (name, _) in std::env::vars() {
        if name.starts_with("POSTMESH_") {
            command.env_remove(name);
        }
    }
    command
        .envs(env.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(args)
        .current_dir(env.data_dir());
    command
}

/// A running `postmesh` process; killed when dropped.
pub struct Process {
    pub child: Child,
    pub grpc: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub stderr: PathBuf,
}

impl Process {
    /// Starts `postmesh <args>` and waits for its ready line.
    pub fn start(env: &TestEnv, args: &[&str]) -> Self {
        Self::start_with(env, args, &[])
    }

    /// Like [`Process::start`], with extra environment variables.
    pub fn start_with(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> Self {
        let stderr = env.data_dir().join(format!("stderr-{}.log", rand_suffix()));
        let mut child = postmesh(env, args)
            .envs(vars.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("postmesh starts");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("postmesh ready") {
                    let _ = tx.send(line);
                }
            }
        });
        let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let log = std::fs::read_to_string(&stderr).unwrap_or_default();
            panic!("postmesh {args:?} did not become ready; stderr:\n{log}");
        };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|part| part.strip_prefix(&format!("{name}=")))
                .map(|addr| addr.parse().expect("address parses"))
        };
        Self { grpc: field("grpc"), http: field("http"), admin: field("admin"), child, stderr }
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc.expect("serves gRPC"))
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.grpc_url()).unwrap().connect().await.expect("gRPC connects")
    }

    /// Sends SIGTERM and waits for the exit (without blocking the test's
    /// runtime, whose connections must be able to answer the server).
    pub async fn terminate(&mut self) -> ExitStatus {
        let status =
            Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill runs");
        assert!(status.success(), "SIGTERM delivered");
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().expect("wait works") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("postmesh did not exit within 15 s of SIGTERM");
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Waits (on the health Watch stream, not by polling) until `service` is
/// SERVING; real backends may take a moment to connect.
pub async fn wait_serving(channel: Channel, service: &str) -> ServingStatus {
    let mut client = HealthClient::new(channel);
    let mut watch =
        client.watch(HealthCheckRequest { service: service.into() }).await.expect("watch").into_inner();
    let wait = async {
        while let Some(Ok(update)) = watch.next().await {
            if update.status() == ServingStatus::Serving {
                return ServingStatus::Serving;
            }
        }
        ServingStatus::Unknown
    };
    tokio::time::timeout(Duration::from_secs(30), wait).await.unwrap_or(ServingStatus::NotServing)
}

/// One health check.
pub async fn check(channel: Channel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let mut client = HealthClient::new(channel);
    Ok(client.check(HealthCheckRequest { service: service.into() }).await?.into_inner().status())
}

/// Services listed by reflection v1 and v1alpha.
pub async fn reflected_services(channel: Channel) -> (Vec<String>, Vec<String>) {
    use tonic_reflection::pb::{v1, v1alpha};
    let mut v1_client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut responses = v1_client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1")
        .into_inner();
    let v1_names = match responses.next().await.unwrap().unwrap().message_response.unwrap() {
        v1::server_reflection_response::MessageResponse::ListServicesResponse(list) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    };

    let mut alpha_client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut responses = alpha_client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1alpha")
        .into_inner();
    let alpha_names = match responses.next().await.unwrap().unwrap().message_response.unwrap() {
        v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    };
    (v1_names, alpha_names)
}

/// A password that passes the policy.
pub const PASSWORD: &str = "violet-ocean-lantern-42";

/// Registers a fresh account; returns (access token, refresh token, workspace id).
pub async fn register(channel: Channel, name: &str) -> (String, String, String) {
    use postmesh_proto::postmesh::user::v1 as pb;
    let mut client = pb::user_service_client::UserServiceClient::new(channel);
    let response = client
        .register(pb::RegisterRequest {
            email: format!("{name}.{}@example.com", uuid::Uuid::now_v7().simple()),
            password: PASSWORD.into(),
            display_name: name.into(),
            workspace_name: String::new(),
        })
        .await
        .expect("registration works")
        .into_inner();
    let tokens = response.tokens.expect("tokens");
    (tokens.access_token, tokens.refresh_token, response.workspace.expect("workspace").id)
}

/// `message` with `authorization: Bearer <token>`.
pub fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("header value"));
    request
}

/// GET on the process's HTTP side; status and JSON body.
pub async fn get_json(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(format!("http://{addr}{path}")).await.expect("HTTP answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(serde_json::Value::Null))
}

/// HTTP calls to a gateway.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

/// An answer: status, headers, body as JSON (`Null` when it is not JSON).
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// The first field violation's field, if any.
    pub fn violated_field(&self) -> &str {
        self.body["details"][0]["field_violations"][0]["field"].as_str().unwrap_or("")
    }
}

impl Api {
    pub fn new(addr: SocketAddr) -> Self {
        Self { base: format!("http://{addr}"), http: reqwest::Client::new() }
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("the gateway answers");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("a body");
        Answer { status, headers, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) }
    }

    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
        let mut request = self.request(method, path);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request).await
    }
}

/// A registered account.
pub struct Account {
    pub token: String,
    pub user_id: String,
}

pub async fn sign_up(api: &Api, name: &str) -> Account {
    let email = format!("{name}.{}@example.com", uuid::Uuid::now_v7().simple());
    let body = json!({ "email": email, "password": PASSWORD, "display_name": name });
    let answer = api.call(Method::POST, "/api/users/register", None, Some(body)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    Account {
        token: answer.body["tokens"]["access_token"].as_str().expect("access token").to_owned(),
        user_id: answer.body["user"]["id"].as_str().expect("user id").to_owned(),
    }
}

/// `postmesh dev` and its gateway.
pub fn dev(env: &TestEnv, vars: &[(&str, &str)]) -> (Process, Api) {
    let process = Process::start_with(env, &["dev"], vars);
    let api = Api::new(process.http.expect("dev serves the gateway"));
    (process, api)
}
