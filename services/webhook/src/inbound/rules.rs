//! Rules: CRUD and validation. A rule names an event type (and for Twitch
//! conditions on the broadcaster, tags and language), a content template
//! with variables, target accounts and a minimum interval between firings.
//! Templates and accounts are checked with the content and social services
//! when a rule is written.

use std::collections::BTreeMap;

use postmesh_kit::db::now_ms;
use postmesh_kit::error::{ApiError, Violations};
use postmesh_proto::postmesh::content::v1::GetTemplateForWorkspaceRequest;
use postmesh_proto::postmesh::content::v1::content_service_client::ContentServiceClient;
use postmesh_proto::postmesh::social::v1::ResolveTargetsRequest;
use postmesh_proto::postmesh::social::v1::social_service_client::SocialServiceClient;
use postmesh_proto::postmesh::webhook::v1::{self as pb, InboundSourceKind};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder,
    QuerySelect,
};
use serde::{Deserialize, Serialize};

use super::Inbound;
use super::common::{duration_ms, duration_pb, page_size, page_token, timestamp_ms};
use super::store::{rules, sources};

/// Longest `min_interval`: 30 days.
const MAX_INTERVAL_MS: i64 = 30 * 24 * 3600 * 1000;

/// `RuleConditions` as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Conditions {
    #[serde(default)]
    pub broadcaster_user_ids: Vec<String>,
    #[serde(default)]
    pub broadcaster_logins: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub languages: Vec<String>,
}

impl Conditions {
    fn from_pb(c: &pb::RuleConditions) -> Self {
        let clean = |items: &[String]| -> Vec<String> {
            items.iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
        };
        Self {
            broadcaster_user_ids: clean(&c.broadcaster_user_ids),
            broadcaster_logins: clean(&c.broadcaster_logins),
            tags: clean(&c.tags),
            languages: clean(&c.languages),
        }
    }

    fn to_pb(&self) -> pb::RuleConditions {
        pb::RuleConditions {
            broadcaster_user_ids: self.broadcaster_user_ids.clone(),
            broadcaster_logins: self.broadcaster_logins.clone(),
            tags: self.tags.clone(),
            languages: self.languages.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.broadcaster_user_ids.is_empty()
            && self.broadcaster_logins.is_empty()
            && self.tags.is_empty()
            && self.languages.is_empty()
    }
}

/// The stored conditions of a rule.
pub fn conditions_of(model: &rules::Model) -> Conditions {
    serde_json::from_str(&model.conditions).unwrap_or_default()
}

/// The stored variables of a rule.
pub fn variables_of(model: &rules::Model) -> BTreeMap<String, String> {
    serde_json::from_str(&model.variables).unwrap_or_default()
}

/// The stored target accounts of a rule.
pub fn targets_of(model: &rules::Model) -> Vec<String> {
    serde_json::from_str(&model.target_account_ids).unwrap_or_default()
}

pub(super) fn rule_pb(model: &rules::Model) -> pb::Rule {
    let conditions = conditions_of(model);
    pb::Rule {
        id: model.id.clone(),
        name: model.name.clone(),
        enabled: Some(model.enabled),
        source_kind: model.source_kind,
        inbound_source_id: model.inbound_source_id.clone(),
        event_type: model.event_type.clone(),
        conditions: (!conditions.is_empty()).then(|| conditions.to_pb()),
        template_id: model.template_id.clone(),
        variables: variables_of(model).into_iter().collect(),
        target_account_ids: targets_of(model),
        min_interval: (model.min_interval_ms > 0).then(|| duration_pb(model.min_interval_ms)),
        last_fired_at: model.last_fired_at_ms.map(timestamp_ms),
        created_at: Some(timestamp_ms(model.created_at_ms)),
        updated_at: Some(timestamp_ms(model.updated_at_ms)),
    }
}

/// A rule's writable fields, validated.
struct Spec {
    name: String,
    enabled: bool,
    source_kind: InboundSourceKind,
    inbound_source_id: String,
    event_type: String,
    conditions: Conditions,
    template_id: String,
    variables: BTreeMap<String, String>,
    target_account_ids: Vec<String>,
    min_interval_ms: i64,
}

fn unique(items: &[String]) -> bool {
    let mut seen = std::collections::BTreeSet::new();
    items.iter().all(|i| seen.insert(i))
}

impl Inbound {
    /// Checks `rule` fully (the stored state merged with an update, or a new
    /// rule), calling the content and social services.
    async fn spec(&self, workspace_id: &str, rule: &pb::Rule) -> Result<Spec, ApiError> {
        let mut v = Violations::new();
        let name = rule.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 100 {
            v.add("name", "must be 1 to 100 characters");
        }
        let source_kind = match InboundSourceKind::try_from(rule.source_kind) {
            Ok(kind @ (InboundSourceKind::Twitch | InboundSourceKind::Generic)) => kind,
            _ => {
                v.add("source_kind", "must be INBOUND_SOURCE_KIND_TWITCH or INBOUND_SOURCE_KIND_GENERIC");
                InboundSourceKind::Unspecified
            }
        };
        let event_type = rule.event_type.trim().to_owned();
        if event_type.is_empty() || event_type.chars().count() > 100 {
            v.add("event_type", "must be 1 to 100 characters");
        }
        let conditions = rule.conditions.as_ref().map(Conditions::from_pb).unwrap_or_default();
        if conditions.broadcaster_user_ids.len() > 100 {
            v.add("conditions.broadcaster_user_ids", "at most 100");
        }
        if conditions.broadcaster_user_ids.iter().any(|id| !id.bytes().all(|b| b.is_ascii_digit())) {
            v.add("conditions.broadcaster_user_ids", "must be numeric Twitch user ids");
        }
        if conditions.broadcaster_logins.len() > 100 {
            v.add("conditions.broadcaster_logins", "at most 100");
        }
        if conditions.tags.len() > 50 {
            v.add("conditions.tags", "at most 50");
        }
        if conditions.languages.len() > 50 {
            v.add("conditions.languages", "at most 50");
        }
        for (i, lang) in conditions.languages.iter().enumerate() {
            let ok = lang == "other" || (lang.len() == 2 && lang.bytes().all(|b| b.is_ascii_alphabetic()));
            if !ok {
                v.add(format!("conditions.languages[{i}]"), "must be an ISO 639-1 code or `other`");
            }
        }
        match source_kind {
            InboundSourceKind::Generic => {
                if !conditions.is_empty() {
                    v.add("conditions", "must be empty for a generic source");
                }
                if rule.inbound_source_id.is_empty() {
                    v.add("inbound_source_id", "is required for a generic source");
                } else {
                    let found = sources::Entity::find_by_id(rule.inbound_source_id.clone())
                        .filter(sources::Column::WorkspaceId.eq(workspace_id))
                        .filter(sources::Column::DeletedAtMs.is_null())
                        .one(self.deps.db.conn())
                        .await?;
                    if found.is_none() {
                        v.add("inbound_source_id", format!("no inbound source {}", rule.inbound_source_id));
                    }
                }
            }
            InboundSourceKind::Twitch if !rule.inbound_source_id.is_empty() => {
                v.add("inbound_source_id", "must be empty for Twitch");
            }
            _ => {}
        }
        if rule.variables.len() > 50 {
            v.add("variables", "at most 50 entries");
        }
        for (k, value) in &rule.variables {
            if k.is_empty() || k.len() > 100 || value.chars().count() > 10_000 {
                v.add(format!("variables.{k}"), "names 1 to 100 characters, values at most 10,000");
            }
        }
        let targets: Vec<String> = rule.target_account_ids.iter().map(|s| s.trim().to_owned()).collect();
        if targets.is_empty() || targets.len() > 50 {
            v.add("target_account_ids", "must name 1 to 50 accounts");
        } else if !unique(&targets) {
            v.add("target_account_ids", "must not repeat an account");
        }
        let min_interval_ms = rule.min_interval.as_ref().map(duration_ms).unwrap_or(0);
        if !(0..=MAX_INTERVAL_MS).contains(&min_interval_ms) {
            v.add("min_interval", "must be between 0 and 30 days");
        }
        let template_id = rule.template_id.trim().to_owned();
        if template_id.is_empty() {
            v.add("template_id", "is required");
        }
        v.finish()?;

        // The other services' view: the template and the accounts exist.
        let mut v = Violations::new();
        let content = self.deps.clients.channel("content").await?;
        let template = ContentServiceClient::new(content)
            .get_template_for_workspace(GetTemplateForWorkspaceRequest {
                workspace_id: workspace_id.to_owned(),
                template_id: template_id.clone(),
            })
            .await;
        match template {
            Ok(_) => {}
            Err(status) if matches!(status.code(), tonic::Code::NotFound | tonic::Code::InvalidArgument) => {
                v.add("template_id", format!("no template {template_id}"));
            }
            Err(status) => return Err(ApiError::Passthrough(status)),
        }
        let social = self.deps.clients.channel("social").await?;
        let resolved = SocialServiceClient::new(social)
            .resolve_targets(ResolveTargetsRequest {
                workspace_id: workspace_id.to_owned(),
                account_ids: targets.clone(),
                platforms: vec![],
            })
            .await
            .map_err(ApiError::Passthrough)?
            .into_inner();
        for missing in &resolved.missing_account_ids {
            let i = targets.iter().position(|t| t == missing).unwrap_or_default();
            v.add(format!("target_account_ids[{i}]"), format!("no account {missing}"));
        }
        v.finish()?;
        Ok(Spec {
            name,
            enabled: rule.enabled.unwrap_or(true),
            source_kind,
            inbound_source_id: rule.inbound_source_id.clone(),
            event_type,
            conditions,
            template_id,
            variables: rule.variables.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            target_account_ids: targets,
            min_interval_ms,
        })
    }

    async fn rule(&self, workspace_id: &str, id: &str) -> Result<rules::Model, ApiError> {
        rules::Entity::find_by_id(id.to_owned())
            .filter(rules::Column::WorkspaceId.eq(workspace_id))
            .filter(rules::Column::DeletedAtMs.is_null())
            .one(self.deps.db.conn())
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("rule {id} not found")))
    }

    pub(super) async fn create_rule_in(
        &self,
        workspace_id: &str,
        rule: Option<pb::Rule>,
    ) -> Result<pb::Rule, ApiError> {
        let rule = rule.ok_or_else(|| ApiError::invalid("rule", "is required"))?;
        let spec = self.spec(workspace_id, &rule).await?;
        let now = now_ms();
        let model = rules::ActiveModel {
            id: Set(uuid::Uuid::now_v7().to_string()),
            workspace_id: Set(workspace_id.to_owned()),
            name: Set(spec.name),
            enabled: Set(spec.enabled),
            source_kind: Set(spec.source_kind as i32),
            inbound_source_id: Set(spec.inbound_source_id),
            event_type: Set(spec.event_type),
            conditions: Set(serde_json::to_string(&spec.conditions).map_err(ApiError::internal)?),
            template_id: Set(spec.template_id),
            variables: Set(serde_json::to_string(&spec.variables).map_err(ApiError::internal)?),
            target_account_ids: Set(
                serde_json::to_string(&spec.target_account_ids).map_err(ApiError::internal)?
            ),
            min_interval_ms: Set(spec.min_interval_ms),
            last_fired_at_ms: Set(None),
            last_fired_event_id: Set(String::new()),
            created_at_ms: Set(now),
            updated_at_ms: Set(now),
            deleted_at_ms: Set(None),
        }
        .insert(self.deps.db.conn())
        .await?;
        Ok(rule_pb(&model))
    }

    pub(super) async fn get_rule_in(&self, workspace_id: &str, id: &str) -> Result<pb::Rule, ApiError> {
        Ok(rule_pb(&self.rule(workspace_id, id).await?))
    }

    pub(super) async fn list_rules_in(
        &self,
        workspace_id: &str,
        request: pb::ListRulesRequest,
    ) -> Result<pb::ListRulesResponse, ApiError> {
        let size = page_size(request.page_size)?;
        let mut query = rules::Entity::find()
            .filter(rules::Column::WorkspaceId.eq(workspace_id))
            .filter(rules::Column::DeletedAtMs.is_null());
        if request.source_kind != 0 {
            query = query.filter(rules::Column::SourceKind.eq(request.source_kind));
        }
        if !request.event_type.is_empty() {
            query = query.filter(rules::Column::EventType.eq(&request.event_type));
        }
        if request.enabled_only {
            query = query.filter(rules::Column::Enabled.eq(true));
        }
        if let Some(after) = page_token(&request.page_token)? {
            query = query.filter(rules::Column::Id.lt(after));
        }
        let mut rows =
            query.order_by_desc(rules::Column::Id).limit(size + 1).all(self.deps.db.conn()).await?;
        let next_page_token = if rows.len() as u64 > size {
            rows.truncate(size as usize);
            rows.last().map(|r| r.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListRulesResponse { rules: rows.iter().map(rule_pb).collect(), next_page_token })
    }

    pub(super) async fn update_rule_in(
        &self,
        workspace_id: &str,
        request: pb::UpdateRuleRequest,
    ) -> Result<pb::Rule, ApiError> {
        let given = request.rule.ok_or_else(|| ApiError::invalid("rule", "is required"))?;
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(ApiError::invalid("update_mask", "is required"));
        }
        let stored = self.rule(workspace_id, &given.id).await?;
        let mut merged = rule_pb(&stored);
        for path in &paths {
            match path.as_str() {
                "name" => merged.name = given.name.clone(),
                "enabled" => merged.enabled = Some(given.enabled.unwrap_or(false)),
                "inbound_source_id" => merged.inbound_source_id = given.inbound_source_id.clone(),
                "event_type" => merged.event_type = given.event_type.clone(),
                "conditions" => merged.conditions = given.conditions.clone(),
                "template_id" => merged.template_id = given.template_id.clone(),
                "variables" => merged.variables = given.variables.clone(),
                "target_account_ids" => merged.target_account_ids = given.target_account_ids.clone(),
                "min_interval" => merged.min_interval = given.min_interval,
                other => {
                    return Err(ApiError::invalid("update_mask", format!("{other} cannot be updated")));
                }
            }
        }
        let spec = self.spec(workspace_id, &merged).await?;
        let mut active = stored.into_active_model();
        active.name = Set(spec.name);
        active.enabled = Set(spec.enabled);
        active.inbound_source_id = Set(spec.inbound_source_id);
        active.event_type = Set(spec.event_type);
        active.conditions = Set(serde_json::to_string(&spec.conditions).map_err(ApiError::internal)?);
        active.template_id = Set(spec.template_id);
        active.variables = Set(serde_json::to_string(&spec.variables).map_err(ApiError::internal)?);
        active.target_account_ids =
            Set(serde_json::to_string(&spec.target_account_ids).map_err(ApiError::internal)?);
        active.min_interval_ms = Set(spec.min_interval_ms);
        active.updated_at_ms = Set(now_ms());
        let model = active.update(self.deps.db.conn()).await?;
        Ok(rule_pb(&model))
    }

    pub(super) async fn delete_rule_in(&self, workspace_id: &str, id: &str) -> Result<(), ApiError> {
        let model = rules::Entity::find_by_id(id.to_owned())
            .filter(rules::Column::WorkspaceId.eq(workspace_id))
            .one(self.deps.db.conn())
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("rule {id} not found")))?;
        if model.deleted_at_ms.is_some() {
            return Ok(());
        }
        let mut active = model.into_active_model();
        active.deleted_at_ms = Set(Some(now_ms()));
        active.enabled = Set(false);
        active.update(self.deps.db.conn()).await?;
        Ok(())
    }
}
