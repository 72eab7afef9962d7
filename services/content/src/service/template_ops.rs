//! Templates: create, list, read, update, delete (soft: posts and analytics
//! still name a deleted template), and rendering with variables.

use std::collections::BTreeMap;

use postmesh_kit::error::{ApiError, Violation, Violations};
use postmesh_proto::postmesh::content::v1 as pb;
use sea_orm::sea_query::LikeExpr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter,
    QueryOrder, QuerySelect,
};

use super::{Content, not_found_template};
use crate::domain::{self, MAX_TEXT_CHARS, MAX_VARIABLE_VALUE, Page, new_id, now_ms, timestamp};
use crate::store::templates;
use crate::templates::ParsedTemplate;

/// The fields `UpdateTemplate` may change.
const UPDATABLE: [&str; 4] = ["name", "description", "body", "default_values"];

/// A template as the contract shows it.
pub fn template_pb(template: &templates::Model) -> Result<pb::Template, ApiError> {
    let defaults: BTreeMap<String, String> = domain::from_json(&template.default_values, "default values")?;
    Ok(pb::Template {
        id: template.id.clone(),
        workspace_id: template.workspace_id.clone(),
        name: template.name.clone(),
        description: template.description.clone(),
        body: template.body.clone(),
        default_values: defaults.into_iter().collect(),
        variables: domain::from_json(&template.variables, "variables")?,
        created_by_user_id: template.created_by.clone(),
        created_at: Some(timestamp(template.created_at_ms)),
        updated_at: Some(timestamp(template.updated_at_ms)),
    })
}

/// Checks a template's fields; returns the variables its body uses.
fn check_template(
    violations: &mut Violations,
    name: &str,
    description: &str,
    body: &str,
    defaults: &BTreeMap<String, String>,
) -> Vec<String> {
    let name_chars = name.chars().count();
    if name.trim().is_empty() {
        violations.add("template.name", "is required");
    } else if name_chars > 100 {
        violations.add("template.name", format!("must be at most 100 characters; it has {name_chars}"));
    }
    let description_chars = description.chars().count();
    if description_chars > 1_000 {
        violations.add(
            "template.description",
            format!("must be at most 1000 characters; it has {description_chars}"),
        );
    }
    let body_chars = body.chars().count();
    let mut variables = Vec::new();
    if body.is_empty() {
        violations.add("template.body", "is required");
    } else if body_chars > MAX_TEXT_CHARS {
        violations.add(
            "template.body",
            format!("must be at most {MAX_TEXT_CHARS} characters; it has {body_chars}"),
        );
    } else {
        match ParsedTemplate::parse(body) {
            Ok(parsed) => variables = parsed.variables(),
            Err(err) => violations.add("template.body", err.to_string()),
        }
    }
    for (key, value) in defaults {
        let chars = value.chars().count();
        if chars > MAX_VARIABLE_VALUE {
            violations.add(
                format!("template.default_values.{key}"),
                format!("must be at most {MAX_VARIABLE_VALUE} characters; it has {chars}"),
            );
        }
    }
    variables
}

fn name_taken(name: &str) -> ApiError {
    ApiError::AlreadyExists(format!("the workspace already has a template named {name:?}"))
}

fn is_unique_violation(err: &sea_orm::DbErr) -> bool {
    matches!(err.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_)))
}

impl Content {
    /// A live template of the workspace; NOT_FOUND otherwise.
    pub async fn template(
        &self,
        conn: &impl ConnectionTrait,
        workspace_id: &str,
        id: &str,
    ) -> Result<templates::Model, ApiError> {
        if id.is_empty() {
            return Err(ApiError::invalid("id", "is required"));
        }
        templates::Entity::find_by_id(id.to_owned())
            .filter(templates::Column::WorkspaceId.eq(workspace_id))
            .one(conn)
            .await?
            .filter(|t| t.deleted_at_ms.is_none())
            .ok_or_else(|| not_found_template(id))
    }

    /// `CreateTemplate`.
    pub async fn create_template(
        &self,
        workspace_id: &str,
        user_id: &str,
        template: &pb::Template,
    ) -> Result<templates::Model, ApiError> {
        let defaults: BTreeMap<String, String> = template.default_values.clone().into_iter().collect();
        let name = template.name.trim().to_owned();
        let mut violations = Violations::new();
        let variables =
            check_template(&mut violations, &name, &template.description, &template.body, &defaults);
        violations.finish()?;
        let now = now_ms();
        let model = templates::Model {
            id: new_id(),
            workspace_id: workspace_id.to_owned(),
            name: name.clone(),
            live_name: Some(name.clone()),
            name_folded: name.to_lowercase(),
            description: template.description.clone(),
            body: template.body.clone(),
            default_values: domain::to_json(&defaults),
            variables: domain::to_json(&variables),
            created_by: user_id.to_owned(),
            created_at_ms: now,
            updated_at_ms: now,
            deleted_at_ms: None,
        };
        match model.clone().into_active_model().reset_all().insert(self.db()).await {
            Ok(_) => Ok(model),
            Err(err) if is_unique_violation(&err) => Err(name_taken(&name)),
            Err(err) => Err(err.into()),
        }
    }

    /// `ListTemplates`: by name, then id.
    pub async fn list_templates(
        &self,
        workspace_id: &str,
        name_contains: &str,
        page: &Page<(String, String)>,
    ) -> Result<(Vec<templates::Model>, String), ApiError> {
        let mut query = templates::Entity::find()
            .filter(templates::Column::WorkspaceId.eq(workspace_id))
            .filter(templates::Column::DeletedAtMs.is_null());
        if !name_contains.is_empty() {
            let escaped: String = name_contains
                .to_lowercase()
                .chars()
                .flat_map(|c| match c {
                    '%' | '_' | '\\' => vec!['\\', c],
                    c => vec![c],
                })
                .collect();
            query = query.filter(
                templates::Column::NameFolded.like(LikeExpr::new(format!("%{escaped}%")).escape('\\')),
            );
        }
        if let Some((name, id)) = &page.after {
            query = query.filter(
                Condition::any().add(templates::Column::Name.gt(name.as_str())).add(
                    Condition::all()
                        .add(templates::Column::Name.eq(name.as_str()))
                        .add(templates::Column::Id.gt(id.as_str())),
                ),
            );
        }
        let found = query
            .order_by_asc(templates::Column::Name)
            .order_by_asc(templates::Column::Id)
            .limit(page.size)
            .all(self.db())
            .await?;
        let next = match found.last() {
            Some(last) if found.len() as u64 == page.size => domain::encode_cursor(&last.name, &last.id),
            _ => String::new(),
        };
        Ok((found, next))
    }

    /// `UpdateTemplate`.
    pub async fn update_template(
        &self,
        workspace_id: &str,
        id: &str,
        changes: &pb::Template,
        mask: &[String],
    ) -> Result<templates::Model, ApiError> {
        let mut violations = Violations::new();
        if mask.is_empty() {
            violations
                .add("update_mask", format!("name the fields to change: any of {}", UPDATABLE.join(", ")));
        }
        for path in mask {
            if !UPDATABLE.contains(&path.as_str()) {
                violations.add(
                    "update_mask",
                    format!("{path:?} cannot be changed; use any of {}", UPDATABLE.join(", ")),
                );
            }
        }
        violations.finish()?;
        let mut template = self.template(self.db(), workspace_id, id).await?;
        let named = |field: &str| mask.iter().any(|p| p == field);
        if named("name") {
            template.name = changes.name.trim().to_owned();
        }
        if named("description") {
            template.description = changes.description.clone();
        }
        if named("body") {
            template.body = changes.body.clone();
        }
        let mut defaults: BTreeMap<String, String> =
            domain::from_json(&template.default_values, "default values")?;
        if named("default_values") {
            defaults = changes.default_values.clone().into_iter().collect();
        }
        let mut violations = Violations::new();
        let variables =
            check_template(&mut violations, &template.name, &template.description, &template.body, &defaults);
        violations.finish()?;
        template.live_name = Some(template.name.clone());
        template.name_folded = template.name.to_lowercase();
        template.default_values = domain::to_json(&defaults);
        template.variables = domain::to_json(&variables);
        template.updated_at_ms = now_ms();
        match template.clone().into_active_model().reset_all().update(self.db()).await {
            Ok(_) => Ok(template),
            Err(err) if is_unique_violation(&err) => Err(name_taken(&template.name)),
            Err(err) => Err(err.into()),
        }
    }

    /// `DeleteTemplate`: already deleted succeeds; unknown is NOT_FOUND.
    pub async fn delete_template(&self, workspace_id: &str, id: &str) -> Result<(), ApiError> {
        if id.is_empty() {
            return Err(ApiError::invalid("id", "is required"));
        }
        let template = templates::Entity::find_by_id(id.to_owned())
            .filter(templates::Column::WorkspaceId.eq(workspace_id))
            .one(self.db())
            .await?
            .ok_or_else(|| not_found_template(id))?;
        if template.deleted_at_ms.is_some() {
            return Ok(());
        }
        let now = now_ms();
        let mut deleted = template;
        deleted.live_name = None;
        deleted.deleted_at_ms = Some(now);
        deleted.updated_at_ms = now;
        deleted.into_active_model().reset_all().update(self.db()).await?;
        Ok(())
    }

    /// `RenderTemplate`: the text and the variables that took their default.
    pub async fn render(
        &self,
        workspace_id: &str,
        id: &str,
        values: &BTreeMap<String, String>,
    ) -> Result<(String, Vec<String>), ApiError> {
        let template = self.template(self.db(), workspace_id, id).await?;
        let parsed = ParsedTemplate::parse(&template.body)
            .map_err(|e| ApiError::internal(format!("stored template {id} does not parse: {e}")))?;
        let defaults: BTreeMap<String, String> =
            domain::from_json(&template.default_values, "default values")?;
        parsed.render(values, &defaults).map_err(|missing| {
            ApiError::Invalid(
                missing
                    .into_iter()
                    .map(|name| {
                        Violation::new(
                            format!("variables.{name}"),
                            format!("the template uses {{{name}}}, which has no value and no default"),
                        )
                    })
                    .collect(),
            )
        })
    }
}
