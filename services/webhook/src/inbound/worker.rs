//! The inbound worker: consumes `jobs.webhook.process_inbound`, one stored
//! inbound event per job. It enriches Twitch events through Helix (cached),
//! runs the enabled rules of the event's source and type in creation order,
//! and for each match claims the rule's minimum interval (one conditional
//! UPDATE, so two replicas fire once) and creates the post through the
//! content service with the idempotency key `rule:<rule_id>:<event_id>`, so
//! a redelivered job never creates a second post. The firings, the event's
//! status and the `events.webhook.rule_fired` events are written in one
//! transaction; an event no longer RECEIVED is acked without effect.

use std::collections::{BTreeMap, HashMap};

use postmesh_kit::ServiceDeps;
use postmesh_kit::bus::{ConsumerSpec, Delivery, JobOutcome};
use postmesh_kit::db::now_ms;
use postmesh_kit::outbox::OutboxMessage;
use postmesh_proto::postmesh::content::v1::content_service_client::ContentServiceClient;
use postmesh_proto::postmesh::content::v1::{
    CreatePostForWorkspaceRequest, CreatePostRequest, GetTemplateForWorkspaceRequest,
};
use postmesh_proto::postmesh::webhook::v1::{
    self as pb, InboundEventStatus, InboundSourceKind, ProcessInboundEventJob, RuleFiringStatus,
};
use prost::Message as _;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, EntityTrait, IntoActiveModel, QueryFilter,
    QueryOrder,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Inbound;
use super::common::timestamp_ms;
use super::helix::HelixError;
use super::rules::{Conditions, conditions_of, targets_of, variables_of};
use super::store::{events, rules};

/// The subject of processing jobs.
pub const SUBJECT: &str = "jobs.webhook.process_inbound";

/// A `RuleFiring` as stored on the event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Firing {
    pub rule_id: String,
    pub status: i32,
    #[serde(default)]
    pub post_id: String,
    #[serde(default)]
    pub detail: String,
}

impl Firing {
    pub fn to_pb(&self) -> pb::RuleFiring {
        pb::RuleFiring {
            rule_id: self.rule_id.clone(),
            status: self.status,
            post_id: self.post_id.clone(),
            detail: self.detail.clone(),
        }
    }
}

/// Why processing stopped before the end.
enum Stop {
    /// Worth another delivery (Helix, content service or store down).
    Later(String),
}

impl From<sea_orm::DbErr> for Stop {
    fn from(err: sea_orm::DbErr) -> Self {
        Stop::Later(format!("database: {err}"))
    }
}

/// What a Twitch event offers rules: placeholders and condition inputs.
#[derive(Debug, Default)]
struct Facts {
    placeholders: BTreeMap<String, String>,
    broadcaster_id: String,
    broadcaster_login: String,
    tags: Vec<String>,
    language: String,
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn first_text(values: &[&Value]) -> Option<String> {
    values.iter().find_map(|v| text(v))
}

/// `{data.<path>}`: a dotted path into the body, then into Twitch's
/// `event` or the Standard Webhooks `data` object.
fn data_path(payload: &Value, path: &str) -> Option<String> {
    let walk = |root: &Value| -> Option<Value> {
        let mut at = root;
        for part in path.split('.') {
            at = match at {
                Value::Object(map) => map.get(part)?,
                Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(at.clone())
    };
    [payload, &payload["event"], &payload["data"]].into_iter().find_map(|root| {
        walk(root).and_then(|v| match v {
            Value::Array(items) => Some(items.iter().filter_map(text).collect::<Vec<_>>().join(", ")),
            other => text(&other).or_else(|| other.is_object().then(|| other.to_string())),
        })
    })
}

/// Replaces `{name}` placeholders in `value`; the first unknown one is the error.
fn render(value: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = after.find('}');
        let name = end.map(|e| &after[..e]);
        match name {
            Some(name)
                if !name.is_empty()
                    && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') =>
            {
                out.push_str(&lookup(name).ok_or_else(|| format!("placeholder {{{name}}} has no value"))?);
                rest = &after[name.len() + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn matches(conditions: &Conditions, facts: &Facts) -> bool {
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    (conditions.broadcaster_user_ids.is_empty()
        || conditions.broadcaster_user_ids.iter().any(|id| id == &facts.broadcaster_id))
        && (conditions.broadcaster_logins.is_empty()
            || conditions.broadcaster_logins.iter().any(|l| eq(l, &facts.broadcaster_login)))
        && (conditions.tags.is_empty() || conditions.tags.iter().any(|t| facts.tags.iter().any(|s| eq(s, t))))
        && (conditions.languages.is_empty() || conditions.languages.iter().any(|l| eq(l, &facts.language)))
}

/// Starts the consumer.
pub(super) async fn start(deps: &ServiceDeps, inbound: Inbound) -> Result<(), postmesh_kit::bus::BusError> {
    let mut spec = ConsumerSpec::new("webhook-process-inbound", SUBJECT, &deps.config);
    spec.concurrency = 16;
    let max_attempts = spec.max_deliver;
    deps.consume(spec, move |delivery: Delivery| {
        let inbound = inbound.clone();
        async move {
            let job = match ProcessInboundEventJob::decode(delivery.message.payload.as_slice()) {
                Ok(job) => job,
                Err(err) => return JobOutcome::Reject { reason: format!("malformed inbound job: {err}") },
            };
            inbound.process(&job, delivery.attempt, max_attempts).await
        }
    })
    .await
}

impl Inbound {
    async fn process(&self, job: &ProcessInboundEventJob, attempt: u32, max_attempts: u32) -> JobOutcome {
        match self.try_process(job).await {
            Ok(()) => JobOutcome::Done,
            Err(Stop::Later(reason)) if attempt < max_attempts => JobOutcome::Retry { reason, after: None },
            Err(Stop::Later(reason)) => {
                if let Err(err) = self.finish(job, InboundEventStatus::Failed, &reason, &[], &[]).await {
                    tracing::warn!(error = %err, "could not mark the inbound event failed");
                }
                JobOutcome::Reject { reason }
            }
        }
    }

    async fn try_process(&self, job: &ProcessInboundEventJob) -> Result<(), Stop> {
        let Some(event) = events::Entity::find_by_id(job.inbound_event_id.clone())
            .filter(events::Column::WorkspaceId.eq(&job.workspace_id))
            .one(self.deps.db.conn())
            .await?
        else {
            return Ok(());
        };
        if event.status != InboundEventStatus::Received as i32 {
            return Ok(());
        }
        let twitch = event.source_kind == InboundSourceKind::Twitch as i32;
        let mut query = rules::Entity::find()
            .filter(rules::Column::WorkspaceId.eq(&event.workspace_id))
            .filter(rules::Column::DeletedAtMs.is_null())
            .filter(rules::Column::Enabled.eq(true))
            .filter(rules::Column::SourceKind.eq(event.source_kind))
            .filter(
                Condition::any()
                    .add(rules::Column::EventType.eq(&event.event_type))
                    .add(rules::Column::EventType.eq("*")),
            );
        if !twitch {
            query = query.filter(rules::Column::InboundSourceId.eq(&event.source_id));
        }
        let candidates = query.order_by_asc(rules::Column::Id).all(self.deps.db.conn()).await?;
        let payload: Value = serde_json::from_str(&event.payload).unwrap_or(Value::Null);
        let facts = if twitch && !candidates.is_empty() {
            self.twitch_facts(&payload).await?
        } else {
            Facts::default()
        };

        let mut firings = Vec::new();
        let mut fired = Vec::new();
        for rule in &candidates {
            if twitch && !matches(&conditions_of(rule), &facts) {
                continue;
            }
            let firing = self.fire(rule, &event, &payload, &facts).await?;
            if firing.status == RuleFiringStatus::PostCreated as i32 {
                fired.push((rule.id.clone(), firing.post_id.clone()));
            }
            firings.push(firing);
        }
        self.finish(job, InboundEventStatus::Processed, "", &firings, &fired).await?;
        Ok(())
    }

    /// Placeholders and condition inputs of a Twitch event, enriched
    /// through Helix when it is configured.
    async fn twitch_facts(&self, payload: &Value) -> Result<Facts, Stop> {
        let event = &payload["event"];
        let id = first_text(&[&event["broadcaster_user_id"], &event["user_id"]]).unwrap_or_default();
        let (mut user, mut stream, mut channel) = (Value::Null, Value::Null, Value::Null);
        if self.helix.configured() && !id.is_empty() {
            let looked = async {
                Ok::<_, HelixError>((
                    self.helix.user(&id).await?,
                    self.helix.stream(&id).await?,
                    self.helix.channel(&id).await?,
                ))
            };
            match looked.await {
                Ok((u, s, c)) => (user, stream, channel) = (u, s, c),
                Err(HelixError::Unavailable(message)) => return Err(Stop::Later(message)),
                Err(err) => tracing::warn!(error = %err, "enrichment skipped"),
            }
        }
        let login = first_text(&[&event["broadcaster_user_login"], &event["user_login"], &user["login"]])
            .unwrap_or_default();
        let tags: Vec<String> = [&stream["tags"], &channel["tags"]]
            .into_iter()
            .find_map(|t| t.as_array().filter(|a| !a.is_empty()))
            .map(|a| a.iter().filter_map(text).collect())
            .unwrap_or_default();
        let language =
            first_text(&[&stream["language"], &channel["broadcaster_language"]]).unwrap_or_default();
        let mut placeholders = BTreeMap::new();
        let mut put = |name: &str, value: Option<String>| {
            if let Some(value) = value {
                placeholders.insert(name.to_owned(), value);
            }
        };
        put(
            "broadcaster_user_name",
            first_text(&[&event["broadcaster_user_name"], &event["user_name"], &user["display_name"]]),
        );
        put("broadcaster_user_login", (!login.is_empty()).then(|| login.clone()));
        put("broadcaster_user_id", (!id.is_empty()).then(|| id.clone()));
        put("title", first_text(&[&stream["title"], &channel["title"], &event["title"]]));
        put("category", first_text(&[&stream["game_name"], &channel["game_name"], &event["category_name"]]));
        put("tags", (!tags.is_empty()).then(|| tags.join(", ")));
        put("language", (!language.is_empty()).then(|| language.clone()));
        put("viewer_count", text(&stream["viewer_count"]));
        put("profile_image_url", first_text(&[&user["profile_image_url"]]));
        put("stream_url", (!login.is_empty()).then(|| format!("https://twitch.tv/{login}")));
        Ok(Facts { placeholders, broadcaster_id: id, broadcaster_login: login, tags, language })
    }

    /// Claims the rule's interval for `event_id`; false when another
    /// event fired it too recently.
    async fn claim(&self, rule: &rules::Model, event_id: &str, now: i64) -> Result<bool, Stop> {
        let mut query = rules::Entity::update_many()
            .col_expr(rules::Column::LastFiredAtMs, Expr::value(now))
            .col_expr(rules::Column::LastFiredEventId, Expr::value(event_id))
            .filter(rules::Column::Id.eq(&rule.id));
        if rule.min_interval_ms > 0 {
            query = query.filter(
                Condition::any()
                    .add(rules::Column::LastFiredEventId.eq(event_id))
                    .add(rules::Column::LastFiredAtMs.is_null())
                    .add(rules::Column::LastFiredAtMs.lte(now - rule.min_interval_ms)),
            );
        }
        let result = query.exec(self.deps.db.conn()).await?;
        Ok(result.rows_affected == 1)
    }

    /// Gives the interval back after a firing that created no post.
    async fn release(&self, rule: &rules::Model, event_id: &str) -> Result<(), Stop> {
        rules::Entity::update_many()
            .col_expr(rules::Column::LastFiredAtMs, Expr::value(rule.last_fired_at_ms))
            .col_expr(rules::Column::LastFiredEventId, Expr::value(rule.last_fired_event_id.clone()))
            .filter(rules::Column::Id.eq(&rule.id))
            .filter(rules::Column::LastFiredEventId.eq(event_id))
            .exec(self.deps.db.conn())
            .await?;
        Ok(())
    }

    async fn fire(
        &self,
        rule: &rules::Model,
        event: &events::Model,
        payload: &Value,
        facts: &Facts,
    ) -> Result<Firing, Stop> {
        let failed = |detail: String| Firing {
            rule_id: rule.id.clone(),
            status: RuleFiringStatus::Failed as i32,
            post_id: String::new(),
            detail,
        };
        let channel =
            self.deps.clients.channel("content").await.map_err(|s| Stop::Later(s.message().to_owned()))?;
        let mut content = ContentServiceClient::new(channel);
        let template = content
            .get_template_for_workspace(GetTemplateForWorkspaceRequest {
                workspace_id: event.workspace_id.clone(),
                template_id: rule.template_id.clone(),
            })
            .await;
        let template = match template {
            Ok(answer) => answer.into_inner().template.unwrap_or_default(),
            Err(status) if permanent(status.code()) => {
                return Ok(failed(format!("template {}: {}", rule.template_id, status.message())));
            }
            Err(status) => return Err(Stop::Later(format!("content service: {}", status.message()))),
        };
        let lookup = |name: &str| -> Option<String> {
            match name.strip_prefix("data.") {
                Some(path) => data_path(payload, path),
                None => facts.placeholders.get(name).cloned(),
            }
        };
        let own = variables_of(rule);
        let mut values: HashMap<String, String> = HashMap::new();
        for name in &template.variables {
            let value = match own.get(name) {
                Some(value) => match render(value, &lookup) {
                    Ok(value) => Some(value),
                    Err(why) => return Ok(failed(format!("variable {name}: {why}"))),
                },
                None => lookup(name),
            };
            match value {
                Some(value) => {
                    values.insert(name.clone(), value);
                }
                None if template.default_values.contains_key(name) => {}
                None => return Ok(failed(format!("variable {name} has no value"))),
            }
        }

        let now = now_ms();
        if !self.claim(rule, &event.id, now).await? {
            return Ok(Firing {
                rule_id: rule.id.clone(),
                status: RuleFiringStatus::SkippedMinInterval as i32,
                post_id: String::new(),
                detail: "fired less than min_interval ago".into(),
            });
        }
        let created = content
            .create_post_for_workspace(CreatePostForWorkspaceRequest {
                workspace_id: event.workspace_id.clone(),
                request: Some(CreatePostRequest {
                    target_account_ids: targets_of(rule),
                    template_id: rule.template_id.clone(),
                    template_variables: values,
                    idempotency_key: format!("rule:{}:{}", rule.id, event.id),
                    ..CreatePostRequest::default()
                }),
                origin: format!("webhook_rule:{}", rule.id),
            })
            .await;
        match created {
            Ok(answer) => {
                let post_id = answer.into_inner().post.map(|p| p.id).unwrap_or_default();
                Ok(Firing {
                    rule_id: rule.id.clone(),
                    status: RuleFiringStatus::PostCreated as i32,
                    post_id,
                    detail: String::new(),
                })
            }
            Err(status) if permanent(status.code()) => {
                self.release(rule, &event.id).await?;
                Ok(failed(format!("content service refused the post: {}", status.message())))
            }
            // The claim stays with this event, so the retry passes it.
            Err(status) => Err(Stop::Later(format!("content service: {}", status.message()))),
        }
    }

    async fn finish(
        &self,
        job: &ProcessInboundEventJob,
        status: InboundEventStatus,
        error: &str,
        firings: &[Firing],
        fired: &[(String, String)],
    ) -> Result<(), sea_orm::DbErr> {
        let now = now_ms();
        let txn = self.deps.db.begin_write().await?;
        let Some(event) = events::Entity::find_by_id(job.inbound_event_id.clone())
            .filter(events::Column::WorkspaceId.eq(&job.workspace_id))
            .one(&txn)
            .await?
        else {
            return Ok(());
        };
        if event.status != InboundEventStatus::Received as i32 {
            return Ok(());
        }
        let event_type = event.event_type.clone();
        let mut active = event.into_active_model();
        active.status = Set(status as i32);
        active.error = Set(error.to_owned());
        active.firings = Set(serde_json::to_string(firings).unwrap_or_else(|_| "[]".into()));
        active.processed_at_ms = Set(Some(now));
        active.update(&txn).await?;
        for (rule_id, post_id) in fired {
            let fired = pb::RuleFiredEvent {
                event_id: uuid::Uuid::now_v7().to_string(),
                workspace_id: job.workspace_id.clone(),
                occurred_at: Some(timestamp_ms(now)),
                rule_id: rule_id.clone(),
                inbound_event_id: job.inbound_event_id.clone(),
                event_type: event_type.clone(),
                post_id: post_id.clone(),
            };
            let id = fired.event_id.clone();
            self.deps
                .outbox
                .enqueue(&txn, OutboxMessage::event("webhook", "rule_fired", &fired).with_id(id))
                .await?;
        }
        self.deps.outbox.commit(txn).await
    }
}

/// Whether a status from another service will not change on a retry.
fn permanent(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::InvalidArgument
            | tonic::Code::NotFound
            | tonic::Code::FailedPrecondition
            | tonic::Code::PermissionDenied
            | tonic::Code::AlreadyExists
    )
}
