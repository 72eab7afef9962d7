//! The mesh's own events, fanned out to subscribed endpoints: one durable
//! consumer per event subject turns the protobuf event into its JSON form
//! (proto field names) and emits it as a message whose id is the event's
//! id, so a redelivered event is sent once.

use std::sync::LazyLock;

use postmesh_kit::bus::{ConsumerSpec, Delivery, JobOutcome};
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;

use super::Outbound;
use super::emit::NewMessage;

/// Each fanned-out subject: (subject, protobuf message, event type).
const SOURCES: &[(&str, &str, &str)] = &[
    ("events.social.post_published", "postmesh.social.v1.PostPublishedEvent", "post.published"),
    ("events.social.post_failed", "postmesh.social.v1.PostFailedEvent", "post.failed"),
    ("events.content.post_created", "postmesh.content.v1.PostCreatedEvent", "post.created"),
    ("events.webhook.rule_fired", "postmesh.webhook.v1.RuleFiredEvent", "rule.fired"),
    (
        "events.webhook.inbound_event_received",
        "postmesh.webhook.v1.InboundEventReceivedEvent",
        "inbound_event.received",
    ),
    (
        "events.webhook.eventsub_subscription_revoked",
        "postmesh.webhook.v1.EventSubSubscriptionRevokedEvent",
        "eventsub.subscription_revoked",
    ),
    ("events.webhook.endpoint_disabled", "postmesh.webhook.v1.EndpointDisabledEvent", "endpoint.disabled"),
];

/// The event types postmesh emits, with what they mean.
pub const EVENT_TYPES: &[(&str, &str)] = &[
    ("post.published", "a post was published to one account (social service)"),
    ("post.failed", "publishing a post to one account failed for good (social service)"),
    ("post.created", "a post was created (content service)"),
    ("rule.fired", "a webhook rule created a post from an inbound event"),
    ("inbound_event.received", "a verified inbound webhook or Twitch EventSub notification was stored"),
    ("eventsub.subscription_revoked", "Twitch revoked an EventSub subscription"),
    ("endpoint.disabled", "an outbound webhook endpoint was disabled, by a user or after failing"),
    ("notification.created", "a notification was sent with the webhook channel (notification service)"),
];

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(postmesh_proto::FILE_DESCRIPTOR_SET).expect("the compiled contract decodes")
});

/// Starts one consumer per fanned-out subject.
pub async fn start(outbound: &Outbound) -> Result<(), postmesh_kit::bus::BusError> {
    for (subject, message, event_type) in SOURCES {
        let name = format!("webhook-fanout-{}", subject.trim_start_matches("events.").replace('.', "-"));
        let spec = ConsumerSpec::new(name, *subject, &outbound.deps.config);
        let worker = outbound.clone();
        deps_consume(outbound, spec, move |delivery: Delivery| {
            let worker = worker.clone();
            async move { worker.fan_out(delivery, message, event_type).await }
        })
        .await?;
    }
    Ok(())
}

async fn deps_consume<F, Fut>(
    outbound: &Outbound,
    spec: ConsumerSpec,
    handler: F,
) -> Result<(), postmesh_kit::bus::BusError>
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = JobOutcome> + Send + 'static,
{
    outbound.deps.consume(spec, handler).await
}

impl Outbound {
    async fn fan_out(&self, delivery: Delivery, message_name: &str, event_type: &str) -> JobOutcome {
        let Some(descriptor) = POOL.get_message_by_name(message_name) else {
            return JobOutcome::Reject { reason: format!("{message_name} is not in the contract") };
        };
        let event = match DynamicMessage::decode(descriptor, delivery.message.payload.as_slice()) {
            Ok(event) => event,
            Err(err) => return JobOutcome::Reject { reason: format!("malformed {message_name}: {err}") },
        };
        let options = SerializeOptions::new().use_proto_field_name(true);
        let payload = match event.serialize_with_options(serde_json::value::Serializer, &options) {
            Ok(Value::Object(payload)) => payload,
            Ok(_) => return JobOutcome::Reject { reason: "event is not an object".into() },
            Err(err) => return JobOutcome::Reject { reason: format!("event to JSON: {err}") },
        };
        let text = |name: &str| payload.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
        let workspace_id = text("workspace_id");
        if workspace_id.is_empty() {
            return JobOutcome::Done;
        }
        let event_id = text("event_id");
        let new = NewMessage {
            workspace_id,
            event_type: event_type.to_owned(),
            payload: Value::Object(payload),
            source: delivery.message.subject.clone(),
            id: Some(if event_id.is_empty() { delivery.message.id.clone() } else { event_id }),
            idempotency_key: None,
            endpoint_ids: Vec::new(),
            keep_unsent: false,
        };
        match self.emit(new).await {
            Ok(_) => JobOutcome::Done,
            Err(err) => JobOutcome::Retry { reason: format!("fan-out: {err}"), after: None },
        }
    }
}
