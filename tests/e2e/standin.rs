//! A stand-in for services whose issues have not landed yet, speaking the
//! real contract over real gRPC: it records what reaches it (request and
//! metadata) and answers what a test needs — a live stream, a raw webhook
//! answer, any gRPC status with `google.rpc` details. Gateway tests put
//! `postmesh serve gateway` in front of it to see exactly what the gateway
//! sends and how it renders answers no built service gives yet.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use postmesh_proto::google::api::HttpBody;
use postmesh_proto::postmesh::ai::v1 as ai;
use postmesh_proto::postmesh::content::v1 as content;
use postmesh_proto::postmesh::notification::v1 as notification;
use postmesh_proto::postmesh::webhook::v1 as webhook;
use tokio::sync::Notify;
use tonic::codegen::BoxStream;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// One call that reached the stand-in.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The RPC's name, e.g. `ListPosts`.
    pub rpc: &'static str,
    /// Its metadata.
    pub metadata: MetadataMap,
    /// Typed copies of the requests tests inspect.
    pub list_posts: Option<content::ListPostsRequest>,
    pub update_post: Option<content::UpdatePostRequest>,
    pub inbound: Option<webhook::ReceiveInboundWebhookRequest>,
    pub stream: Option<notification::StreamNotificationsRequest>,
}

#[derive(Clone, Default)]
pub struct StandIn {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Releases the last event of a notification stream.
    pub release: Arc<Notify>,
}

impl StandIn {
    /// Everything that reached the stand-in so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The last call of `rpc`.
    pub fn last(&self, rpc: &str) -> Seen {
        self.seen().into_iter().rev().find(|s| s.rpc == rpc).unwrap_or_else(|| panic!("{rpc} was not called"))
    }

    fn record<T>(&self, rpc: &'static str, request: &Request<T>) -> Seen {
        let seen = Seen {
            rpc,
            metadata: request.metadata().clone(),
            list_posts: None,
            update_post: None,
            inbound: None,
            stream: None,
        };
        self.seen.lock().unwrap().push(seen.clone());
        seen
    }

    fn update_last(&self, change: impl FnOnce(&mut Seen)) {
        if let Some(last) = self.seen.lock().unwrap().last_mut() {
            change(last);
        }
    }

    /// Serves the content, ai, notification and webhook services (with a
    /// health service saying they are SERVING) on a free loopback port.
    pub async fn start(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reporter, health) = tonic_health::server::health_reporter();
        for service in [
            "postmesh.content.v1.ContentService",
            "postmesh.ai.v1.AiService",
            "postmesh.notification.v1.NotificationService",
            "postmesh.webhook.v1.WebhookService",
        ] {
            reporter.set_service_status(service, tonic_health::ServingStatus::Serving).await;
        }
        let router = tonic::transport::Server::builder()
            .add_service(health)
            .add_service(content::content_service_server::ContentServiceServer::new(self.clone()))
            .add_service(ai::ai_service_server::AiServiceServer::new(self.clone()))
            .add_service(notification::notification_service_server::NotificationServiceServer::new(
                self.clone(),
            ))
            .add_service(webhook::webhook_service_server::WebhookServiceServer::new(self.clone()));
        tokio::spawn(router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)));
        addr
    }
}

#[tonic::async_trait]
impl content::content_service_server::ContentService for StandIn {
    async fn list_posts(
        &self,
        request: Request<content::ListPostsRequest>,
    ) -> Result<Response<content::ListPostsResponse>, Status> {
        self.record("ListPosts", &request);
        let typed = request.get_ref().clone();
        self.update_last(|s| s.list_posts = Some(typed));
        Ok(Response::new(content::ListPostsResponse {
            posts: vec![content::Post {
                id: "post-1".into(),
                text: "hello".into(),
                status: content::PostStatus::Scheduled as i32,
                ..Default::default()
            }],
            next_page_token: "next".into(),
        }))
    }

    async fn update_post(
        &self,
        request: Request<content::UpdatePostRequest>,
    ) -> Result<Response<content::UpdatePostResponse>, Status> {
        self.record("UpdatePost", &request);
        let typed = request.get_ref().clone();
        self.update_last(|s| s.update_post = Some(typed.clone()));
        Ok(Response::new(content::UpdatePostResponse { post: typed.post, ..Default::default() }))
    }
}

#[tonic::async_trait]
impl ai::ai_service_server::AiService for StandIn {
    /// Answers with the status the text asks for: `code:N`, `bad-field`
    /// (field violations), `slow-down` (RESOURCE_EXHAUSTED with retry
    /// info) or `secret` (an INTERNAL error with a secret in its message).
    async fn analyze_sentiment(
        &self,
        request: Request<ai::AnalyzeSentimentRequest>,
    ) -> Result<Response<ai::AnalyzeSentimentResponse>, Status> {
        self.record("AnalyzeSentiment", &request);
        let text = request.get_ref().text.clone();
        if let Some(code) = text.strip_prefix("code:").and_then(|n| n.parse::<i32>().ok()) {
            return Err(Status::new(Code::from_i32(code), format!("stand-in answers {code}")));
        }
        match text.as_str() {
            "bad-field" => Err(Status::with_error_details(
                Code::InvalidArgument,
                "invalid request: text: too short",
                ErrorDetails::with_bad_request(vec![FieldViolation::new("text", "too short")]),
            )),
            "slow-down" => Err(Status::with_error_details(
                Code::ResourceExhausted,
                "quota used up",
                ErrorDetails::with_retry_info(Some(Duration::from_millis(2500))),
            )),
            "secret" => Err(Status::internal("database password=hunter2 rejected")),
            _ => Ok(Response::new(ai::AnalyzeSentimentResponse::default())),
        }
    }
}

#[tonic::async_trait]
impl notification::notification_service_server::NotificationService for StandIn {
    /// Two notifications and a heartbeat at once, a third notification when
    /// the test releases it; with the topic `fail`, an UNAVAILABLE error
    /// instead of the third.
    async fn stream_notifications(
        &self,
        request: Request<notification::StreamNotificationsRequest>,
    ) -> Result<Response<BoxStream<notification::StreamNotificationsResponse>>, Status> {
        self.record("StreamNotifications", &request);
        let typed = request.get_ref().clone();
        let fail = typed.topics.iter().any(|t| t == "fail");
        self.update_last(|s| s.stream = Some(typed));
        use notification::stream_notifications_response::Event;
        let note = |id: &str, title: &str| notification::StreamNotificationsResponse {
            event_id: id.into(),
            event: Some(Event::Notification(notification::Notification {
                id: format!("n-{id}"),
                title: title.into(),
                ..Default::default()
            })),
        };
        let first = vec![
            Ok(note("1", "first")),
            Ok(note("2", "second")),
            Ok(notification::StreamNotificationsResponse {
                event_id: String::new(),
                event: Some(Event::Heartbeat(notification::Heartbeat::default())),
            }),
        ];
        let release = self.release.clone();
        let last = async move {
            release.notified().await;
            if fail { Err(Status::unavailable("stream source went away")) } else { Ok(note("3", "third")) }
        };
        let stream = futures::stream::iter(first).chain(futures::stream::once(last));
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tonic::async_trait]
impl webhook::webhook_service_server::WebhookService for StandIn {
    async fn receive_inbound_webhook(
        &self,
        request: Request<webhook::ReceiveInboundWebhookRequest>,
    ) -> Result<Response<webhook::ReceiveInboundWebhookResponse>, Status> {
        self.record("ReceiveInboundWebhook", &request);
        let typed = request.get_ref().clone();
        self.update_last(|s| s.inbound = Some(typed));
        Ok(Response::new(webhook::ReceiveInboundWebhookResponse {
            event_id: "evt-1".into(),
            duplicate: false,
        }))
    }

    /// Answers a verification challenge as raw `text/plain`, as Twitch wants.
    async fn receive_twitch_event(
        &self,
        request: Request<webhook::ReceiveTwitchEventRequest>,
    ) -> Result<Response<webhook::ReceiveTwitchEventResponse>, Status> {
        self.record("ReceiveTwitchEvent", &request);
        let body = request.get_ref().body.clone().unwrap_or_default();
        let challenge: serde_json::Value = serde_json::from_slice(&body.data).unwrap_or_default();
        let answer = challenge["challenge"].as_str().unwrap_or_default().to_owned();
        Ok(Response::new(webhook::ReceiveTwitchEventResponse {
            body: Some(HttpBody {
                content_type: "text/plain".into(),
                data: answer.into_bytes(),
                extensions: vec![],
            }),
        }))
    }
}
