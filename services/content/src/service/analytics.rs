//! `GetContentAnalytics`: how a workspace's posts fared over a window,
//! computed from the posts and targets themselves (engagement lives in the
//! analytics service). The window is at most 366 days, so the rows involved
//! are read once and counted in memory.

use std::collections::{BTreeMap, HashMap};

use postmesh_kit::error::ApiError;
use postmesh_proto::postmesh::content::v1 as pb;
use sea_orm::sea_query::Query;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};

use super::Content;
use crate::domain::{PostState, TargetState, duration, now_ms, timestamp};
use crate::store::{post_targets, posts, templates};

const DAY_MS: i64 = 24 * 3600 * 1000;
/// The longest window.
pub const MAX_WINDOW_MS: i64 = 366 * DAY_MS;

/// What to summarise.
#[derive(Debug, Clone)]
pub struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
    pub platforms: Vec<i32>,
    pub account_ids: Vec<String>,
}

impl Window {
    fn filters_targets(&self) -> bool {
        !self.platforms.is_empty() || !self.account_ids.is_empty()
    }

    fn target_condition(&self, workspace_id: &str) -> sea_orm::Condition {
        let mut condition = sea_orm::Condition::all().add(post_targets::Column::WorkspaceId.eq(workspace_id));
        if !self.platforms.is_empty() {
            condition = condition.add(post_targets::Column::Platform.is_in(self.platforms.clone()));
        }
        if !self.account_ids.is_empty() {
            condition = condition.add(post_targets::Column::AccountId.is_in(self.account_ids.clone()));
        }
        condition
    }
}

/// The value at `fraction` of sorted `values` (nearest rank).
fn percentile(sorted: &[i64], fraction: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Content {
    pub async fn content_analytics(
        &self,
        workspace_id: &str,
        window: &Window,
    ) -> Result<pb::GetContentAnalyticsResponse, ApiError> {
        let targets_of_interest = || {
            let mut query = Query::select();
            query.column(post_targets::Column::PostId).from(post_targets::Entity);
            query.cond_where(window.target_condition(workspace_id));
            query.to_owned()
        };

        let mut created = posts::Entity::find()
            .filter(posts::Column::WorkspaceId.eq(workspace_id))
            .filter(posts::Column::DeletedAtMs.is_null())
            .filter(posts::Column::CreatedAtMs.gte(window.start_ms))
            .filter(posts::Column::CreatedAtMs.lt(window.end_ms));
        if window.filters_targets() {
            created = created.filter(posts::Column::Id.in_subquery(targets_of_interest()));
        }
        let created: Vec<(String, String, i64)> = created
            .select_only()
            .column(posts::Column::Status)
            .column(posts::Column::TemplateId)
            .column(posts::Column::CreatedAtMs)
            .into_tuple()
            .all(self.db())
            .await?;

        let mut upcoming = posts::Entity::find()
            .filter(posts::Column::WorkspaceId.eq(workspace_id))
            .filter(posts::Column::DeletedAtMs.is_null())
            .filter(posts::Column::Status.eq(PostState::Scheduled.as_str()))
            .filter(posts::Column::PublishAtMs.gt(now_ms()));
        if window.filters_targets() {
            upcoming = upcoming.filter(posts::Column::Id.in_subquery(targets_of_interest()));
        }
        let upcoming: Vec<String> =
            upcoming.select_only().column(posts::Column::Id).into_tuple().all(self.db()).await?;

        let finished: Vec<(i32, String, Option<i64>, Option<i64>)> = post_targets::Entity::find()
            .filter(window.target_condition(workspace_id))
            .filter(
                post_targets::Column::Status
                    .is_in([TargetState::Posted.as_str(), TargetState::Faulted.as_str()]),
            )
            .filter(post_targets::Column::FinishedAtMs.gte(window.start_ms))
            .filter(post_targets::Column::FinishedAtMs.lt(window.end_ms))
            .select_only()
            .column(post_targets::Column::Platform)
            .column(post_targets::Column::Status)
            .column(post_targets::Column::QueuedAtMs)
            .column(post_targets::Column::FinishedAtMs)
            .into_tuple()
            .all(self.db())
            .await?;

        // Posts by status.
        let mut by_status: HashMap<&str, i64> = HashMap::new();
        for (status, _, _) in &created {
            *by_status.entry(status.as_str()).or_default() += 1;
        }
        let status_counts = PostState::ALL
            .iter()
            .filter_map(|s| {
                by_status
                    .get(s.as_str())
                    .map(|count| pb::PostStatusCount { status: s.to_proto() as i32, count: *count })
            })
            .collect();

        // Days of the window.
        let first_day = window.start_ms.div_euclid(DAY_MS) * DAY_MS;
        let mut daily: BTreeMap<i64, pb::DailyContentStats> = BTreeMap::new();
        let mut day = first_day;
        while day < window.end_ms {
            daily.insert(
                day,
                pb::DailyContentStats { day_start_at: Some(timestamp(day)), ..Default::default() },
            );
            day += DAY_MS;
        }
        let day_of = |ms: i64| ms.div_euclid(DAY_MS) * DAY_MS;
        for (_, _, at) in &created {
            if let Some(d) = daily.get_mut(&day_of(*at)) {
                d.posts_created += 1;
            }
        }

        // Per platform.
        struct Tally {
            posted: i64,
            faulted: i64,
            times: Vec<i64>,
        }
        let mut platforms: BTreeMap<i32, Tally> = BTreeMap::new();
        for (platform, status, queued, finished_at) in &finished {
            let tally =
                platforms.entry(*platform).or_insert(Tally { posted: 0, faulted: 0, times: Vec::new() });
            let posted = status == TargetState::Posted.as_str();
            if posted {
                tally.posted += 1;
                if let (Some(q), Some(f)) = (queued, finished_at) {
                    tally.times.push((f - q).max(0));
                }
            } else {
                tally.faulted += 1;
            }
            if let Some(d) = finished_at.and_then(|f| daily.get_mut(&day_of(f))) {
                if posted {
                    d.targets_posted += 1;
                } else {
                    d.targets_faulted += 1;
                }
            }
        }
        let platforms = platforms
            .into_iter()
            .map(|(platform, mut tally)| {
                tally.times.sort_unstable();
                let total = tally.posted + tally.faulted;
                pb::PlatformContentStats {
                    platform,
                    targets_posted: tally.posted,
                    targets_faulted: tally.faulted,
                    success_rate: if total == 0 { 0.0 } else { tally.posted as f64 / total as f64 },
                    median_time_to_post: Some(duration(percentile(&tally.times, 0.5))),
                    p95_time_to_post: Some(duration(percentile(&tally.times, 0.95))),
                }
            })
            .collect();

        // Templates most used.
        let mut uses: HashMap<&str, i64> = HashMap::new();
        for (_, template_id, _) in &created {
            if !template_id.is_empty() {
                *uses.entry(template_id.as_str()).or_default() += 1;
            }
        }
        let mut top: Vec<(&str, i64)> = uses.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        top.truncate(10);
        let names: HashMap<String, String> = if top.is_empty() {
            HashMap::new()
        } else {
            templates::Entity::find()
                .filter(templates::Column::WorkspaceId.eq(workspace_id))
                .filter(templates::Column::Id.is_in(top.iter().map(|(id, _)| id.to_string())))
                .select_only()
                .column(templates::Column::Id)
                .column(templates::Column::Name)
                .into_tuple()
                .all(self.db())
                .await?
                .into_iter()
                .collect()
        };
        let top_templates = top
            .into_iter()
            .map(|(id, posts)| pb::TemplateUsage {
                template_id: id.to_owned(),
                name: names.get(id).cloned().unwrap_or_default(),
                posts,
            })
            .collect();

        Ok(pb::GetContentAnalyticsResponse {
            start_at: Some(timestamp(window.start_ms)),
            end_at: Some(timestamp(window.end_ms)),
            posts_created: created.len() as i64,
            status_counts,
            posts_scheduled_upcoming: upcoming.len() as i64,
            platforms,
            daily: daily.into_values().collect(),
            top_templates,
        })
    }
}
