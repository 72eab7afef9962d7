//! A post's targets: resolving account ids with the social service
//! (`ResolveTargets`), and formatting and checking the post for each
//! platform (`format::variant`), one variant per platform and set of
//! limits, in the order the accounts were given.

use std::collections::HashMap;

use postmesh_kit::error::ApiError;
use postmesh_proto::postmesh::content::v1 as pb;
use postmesh_proto::postmesh::social::v1 as social;
use postmesh_proto::postmesh::social::v1::social_service_client::SocialServiceClient;
use postmesh_proto::postmesh::r#type::v1::{Platform, TextFormat};

use super::Content;
use crate::domain::platform_name;
use crate::format;

/// What the social service knows about some accounts and platforms. An
/// account it did not return is unknown or of another workspace.
#[derive(Debug, Default)]
pub struct Resolved {
    pub accounts: HashMap<String, social::Account>,
    pub platforms: HashMap<i32, social::PlatformInfo>,
}

impl Resolved {
    fn platform_info(&self, platform: i32) -> Option<&social::PlatformInfo> {
        self.platforms.get(&platform)
    }
}

/// One target account after formatting.
#[derive(Debug, Clone)]
pub struct PlannedTarget {
    pub account_id: String,
    pub platform: Platform,
    pub display_name: String,
    /// The content its jobs carry; `None` when its variant breaks a limit.
    pub rendered: Option<social::RenderedPost>,
}

/// The outcome of formatting a post for its targets.
#[derive(Debug, Default)]
pub struct Plan {
    pub variants: Vec<pb::PlatformVariant>,
    pub targets: Vec<PlannedTarget>,
    /// (field, message) for every broken limit and unusable account.
    pub violations: Vec<(String, String)>,
}

impl Plan {
    pub fn valid(&self) -> bool {
        self.violations.is_empty()
    }
}

impl Content {
    /// Resolves `account_ids` of the workspace (and the registry entries of
    /// `platforms`) through the social service.
    #[tracing::instrument(skip(self, account_ids, platforms), fields(accounts = account_ids.len()))]
    pub(crate) async fn resolve(
        &self,
        workspace_id: &str,
        account_ids: &[String],
        platforms: &[Platform],
    ) -> Result<Resolved, ApiError> {
        let channel = self.deps().clients.channel("social").await.map_err(social_error)?;
        let answer = SocialServiceClient::new(channel)
            .resolve_targets(social::ResolveTargetsRequest {
                workspace_id: workspace_id.to_owned(),
                account_ids: account_ids.to_vec(),
                platforms: platforms.iter().map(|p| *p as i32).collect(),
            })
            .await
            .map_err(social_error)?
            .into_inner();
        Ok(Resolved {
            accounts: answer.accounts.into_iter().map(|a| (a.id.clone(), a)).collect(),
            platforms: answer.platforms.into_iter().map(|p| (p.platform, p)).collect(),
        })
    }
}

/// A failed call to the social service: an outage stays retryable, anything
/// else is our problem, not the caller's.
fn social_error(status: tonic::Status) -> ApiError {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::ResourceExhausted => {
            ApiError::Unavailable(format!("the social service is not answering: {}", status.message()))
        }
        code => ApiError::internal(format!("social ResolveTargets: {code:?}: {}", status.message())),
    }
}

/// Why an account cannot be published to, or `None` if it can.
fn unavailable(account_id: &str, resolved: &Resolved) -> Option<String> {
    let Some(account) = resolved.accounts.get(account_id) else {
        return Some(format!("account {account_id} is not connected to this workspace"));
    };
    match social::AccountStatus::try_from(account.status) {
        Ok(social::AccountStatus::Active) => None,
        Ok(social::AccountStatus::NeedsReauth) => Some(format!(
            "account {account_id} ({}) needs to be connected again{}",
            account.display_name,
            if account.status_reason.is_empty() {
                String::new()
            } else {
                format!(": {}", account.status_reason)
            }
        )),
        Ok(social::AccountStatus::Disconnected) => {
            Some(format!("account {account_id} ({}) is disconnected", account.display_name))
        }
        _ => Some(format!("account {account_id} ({}) cannot be published to", account.display_name)),
    }
}

/// Formats `content` for every account of `account_ids` (field `field`).
/// Accounts with the same platform and limits share one variant.
pub fn plan(
    content: &format::Content<'_>,
    language: &str,
    account_ids: &[String],
    field: &str,
    resolved: &Resolved,
) -> Plan {
    struct Group {
        platform: Platform,
        limits: social::PlatformLimits,
        own_limits: bool,
        format: TextFormat,
        name: String,
        accounts: Vec<String>,
    }
    enum Slot {
        Group(usize),
        Unavailable(pb::PlatformVariant),
    }

    let mut plan = Plan::default();
    let mut groups: Vec<Group> = Vec::new();
    let mut slots: Vec<Slot> = Vec::new();
    for (i, account_id) in account_ids.iter().enumerate() {
        let account = resolved.accounts.get(account_id);
        if let Some(reason) = unavailable(account_id, resolved) {
            let platform = account.map(|a| a.platform).unwrap_or_default();
            let at = format!("{field}[{i}]");
            plan.violations.push((at.clone(), reason.clone()));
            slots.push(Slot::Unavailable(pb::PlatformVariant {
                platform,
                account_ids: vec![account_id.clone()],
                violations: vec![pb::LimitViolation {
                    platform,
                    account_id: account_id.clone(),
                    kind: pb::LimitKind::AccountUnavailable as i32,
                    field: at,
                    message: reason,
                    ..Default::default()
                }],
                ..Default::default()
            }));
            continue;
        }
        let account = account.expect("available accounts were resolved");
        let platform = Platform::try_from(account.platform).unwrap_or(Platform::Unspecified);
        let info = resolved.platform_info(account.platform);
        let defaults = info.and_then(|i| i.limits.clone()).unwrap_or_default();
        let limits = account.limits.clone().unwrap_or_else(|| defaults.clone());
        let own_limits = limits != defaults;
        let text_format = info
            .and_then(|i| i.capabilities.as_ref())
            .and_then(|c| TextFormat::try_from(c.text_format).ok())
            .unwrap_or(TextFormat::Plain);
        let name = info
            .map(|i| i.display_name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| platform_name(platform).to_owned());
        match groups
            .iter()
            .position(|g| g.platform == platform && g.limits == limits && g.format == text_format)
        {
            Some(index) => groups[index].accounts.push(account_id.clone()),
            None => {
                groups.push(Group {
                    platform,
                    limits,
                    own_limits,
                    format: text_format,
                    name,
                    accounts: vec![account_id.clone()],
                });
                slots.push(Slot::Group(groups.len() - 1));
            }
        }
    }

    let mut rendered_by_account: HashMap<String, Option<social::RenderedPost>> = HashMap::new();
    for slot in slots {
        match slot {
            Slot::Unavailable(variant) => plan.variants.push(variant),
            Slot::Group(index) => {
                let group = &groups[index];
                let target = format::Target {
                    platform: group.platform,
                    platform_name: &group.name,
                    account_ids: group.accounts.clone(),
                    limits: &group.limits,
                    format: group.format,
                };
                let (mut variant, rendered) = format::variant(content, &target);
                let rendered = rendered.map(|mut r| {
                    r.language = language.to_owned();
                    r
                });
                for violation in &mut variant.violations {
                    if group.own_limits && group.accounts.len() == 1 {
                        violation.account_id = group.accounts[0].clone();
                    }
                    plan.violations.push((violation.field.clone(), violation.message.clone()));
                }
                for account in &group.accounts {
                    rendered_by_account.insert(account.clone(), rendered.clone());
                }
                plan.variants.push(variant);
            }
        }
    }
    for account_id in account_ids {
        if let Some(account) = resolved.accounts.get(account_id) {
            plan.targets.push(PlannedTarget {
                account_id: account_id.clone(),
                platform: Platform::try_from(account.platform).unwrap_or(Platform::Unspecified),
                display_name: account.display_name.clone(),
                rendered: rendered_by_account.get(account_id).cloned().flatten(),
            });
        }
    }
    plan
}

/// Formats `content` for platforms without an account (their default
/// limits), for previews.
pub fn plan_platforms(content: &format::Content<'_>, platforms: &[Platform], resolved: &Resolved) -> Plan {
    let mut plan = Plan::default();
    for platform in platforms {
        let info = resolved.platform_info(*platform as i32);
        let limits = info.and_then(|i| i.limits.clone()).unwrap_or_default();
        let text_format = info
            .and_then(|i| i.capabilities.as_ref())
            .and_then(|c| TextFormat::try_from(c.text_format).ok())
            .unwrap_or(TextFormat::Plain);
        let name = info
            .map(|i| i.display_name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| platform_name(*platform).to_owned());
        let target = format::Target {
            platform: *platform,
            platform_name: &name,
            account_ids: Vec::new(),
            limits: &limits,
            format: text_format,
        };
        let (variant, _) = format::variant(content, &target);
        for violation in &variant.violations {
            plan.violations.push((violation.field.clone(), violation.message.clone()));
        }
        plan.variants.push(variant);
    }
    plan
}
