//! Dead letters and publishing metrics: what an operator of a workspace
//! looks at when posts fail.

use std::collections::BTreeMap;
use std::time::Duration;

use postmesh_kit::ServiceDeps;
use postmesh_kit::db::ms_of;
use postmesh_kit::db::now_ms;
use postmesh_kit::error::ApiError;
use postmesh_proto::postmesh::content::v1::EnqueuePublishRequest;
use postmesh_proto::postmesh::content::v1::content_service_client::ContentServiceClient;
use postmesh_proto::postmesh::social::v1::{
    self as pb, DeadLetterState, PublishDisposition, PublishErrorKind, PublishFailure, PublishTrigger,
    ReplayOutcome,
};
use postmesh_proto::postmesh::r#type::v1::Platform;
use prost::Message as _;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder,
    QuerySelect,
};

use crate::grpc::{platform_field, timestamp_ms};
use crate::store::{attempts, dead_letters, published};

/// Longest metrics window.
const MAX_WINDOW: Duration = Duration::from_secs(90 * 24 * 3600);

fn dead_letter_pb(row: &dead_letters::Model) -> pb::DeadLetter {
    pb::DeadLetter {
        id: row.id.clone(),
        subject: row.subject.clone(),
        post_id: row.post_id.clone(),
        target_id: row.target_id.clone(),
        account_id: row.account_id.clone(),
        platform: row.platform,
        attempts: row.attempts,
        last_failure: PublishFailure::decode(row.last_failure.as_slice()).ok(),
        enqueued_at: Some(timestamp_ms(row.enqueued_at_ms)),
        dead_lettered_at: Some(timestamp_ms(row.dead_lettered_at_ms)),
        state: if row.replay_count > 0 { DeadLetterState::Replayed } else { DeadLetterState::Pending } as i32,
        replay_count: row.replay_count,
        last_replayed_at: row.last_replayed_at_ms.map(timestamp_ms),
    }
}

/// Lists a workspace's dead letters, newest first.
pub async fn list_dead_letters(
    deps: &ServiceDeps,
    workspace_id: &str,
    request: pb::ListDeadLettersRequest,
) -> Result<pb::ListDeadLettersResponse, ApiError> {
    let page_size = match request.page_size {
        0 => 50,
        n @ 1..=200 => n as u64,
        _ => return Err(ApiError::invalid("page_size", "between 0 and 200")),
    };
    let mut query = dead_letters::Entity::find().filter(dead_letters::Column::WorkspaceId.eq(workspace_id));
    match DeadLetterState::try_from(request.state) {
        Ok(DeadLetterState::Pending) => query = query.filter(dead_letters::Column::ReplayCount.eq(0)),
        Ok(DeadLetterState::Replayed) => query = query.filter(dead_letters::Column::ReplayCount.gt(0)),
        Ok(DeadLetterState::Unspecified) => {}
        Err(_) => return Err(ApiError::invalid("state", format!("{} is not a state", request.state))),
    }
    if !request.platforms.is_empty() {
        for (i, p) in request.platforms.iter().enumerate() {
            platform_field(*p, &format!("platforms[{i}]"))?;
        }
        query = query.filter(dead_letters::Column::Platform.is_in(request.platforms.clone()));
    }
    if !request.account_id.is_empty() {
        query = query.filter(dead_letters::Column::AccountId.eq(&request.account_id));
    }
    if !request.post_id.is_empty() {
        query = query.filter(dead_letters::Column::PostId.eq(&request.post_id));
    }
    if let Some(start) = &request.start_at {
        query = query.filter(dead_letters::Column::DeadLetteredAtMs.gte(ms_of(start)));
    }
    if let Some(end) = &request.end_at {
        query = query.filter(dead_letters::Column::DeadLetteredAtMs.lt(ms_of(end)));
    }
    if !request.page_token.is_empty() {
        if uuid::Uuid::parse_str(&request.page_token).is_err() {
            return Err(ApiError::invalid("page_token", "not a token this call returned"));
        }
        query = query.filter(dead_letters::Column::Id.lt(request.page_token.clone()));
    }
    let mut rows =
        query.order_by_desc(dead_letters::Column::Id).limit(page_size + 1).all(deps.db.conn()).await?;
    let next_page_token = if rows.len() as u64 > page_size {
        rows.truncate(page_size as usize);
        rows.last().map(|r| r.id.clone()).unwrap_or_default()
    } else {
        String::new()
    };
    Ok(pb::ListDeadLettersResponse {
        dead_letters: rows.iter().map(dead_letter_pb).collect(),
        next_page_token,
    })
}

/// Replays dead letters through the content service, like a manual retry.
pub async fn replay_dead_letters(
    deps: &ServiceDeps,
    workspace_id: &str,
    user_id: &str,
    request: pb::ReplayDeadLettersRequest,
) -> Result<pb::ReplayDeadLettersResponse, ApiError> {
    if request.dead_letter_ids.is_empty() != request.all_pending {
        return Err(ApiError::invalid("dead_letter_ids", "name dead letters or set all_pending, not both"));
    }
    if request.dead_letter_ids.len() > 100 {
        return Err(ApiError::invalid("dead_letter_ids", "at most 100"));
    }
    let mut query = dead_letters::Entity::find().filter(dead_letters::Column::WorkspaceId.eq(workspace_id));
    if request.all_pending {
        query = query.filter(dead_letters::Column::ReplayCount.eq(0));
        if !request.platforms.is_empty() {
            query = query.filter(dead_letters::Column::Platform.is_in(request.platforms.clone()));
        }
        if !request.account_id.is_empty() {
            query = query.filter(dead_letters::Column::AccountId.eq(&request.account_id));
        }
        query = query.order_by_asc(dead_letters::Column::Id).limit(1000);
    } else {
        query = query.filter(dead_letters::Column::Id.is_in(request.dead_letter_ids.clone()));
    }
    let rows = query.all(deps.db.conn()).await?;
    let mut results = Vec::new();
    let mut replayed_count = 0;
    let order: Vec<String> = if request.all_pending {
        rows.iter().map(|r| r.id.clone()).collect()
    } else {
        request.dead_letter_ids.clone()
    };
    for id in order {
        let Some(row) = rows.iter().find(|r| r.id == id) else {
            results.push(result(&id, ReplayOutcome::NotFound, "no such dead letter in the workspace"));
            continue;
        };
        if row.replay_count > 0 && !request.force {
            results.push(result(
                &id,
                ReplayOutcome::AlreadyReplayed,
                "replayed before; set force to replay again",
            ));
            continue;
        }
        let channel = deps.clients.channel("content").await?;
        let answer = ContentServiceClient::new(channel)
            .enqueue_publish(EnqueuePublishRequest {
                workspace_id: workspace_id.to_owned(),
                post_id: row.post_id.clone(),
                account_ids: vec![row.account_id.clone()],
                trigger: PublishTrigger::Replay as i32,
                requested_by_user_id: user_id.to_owned(),
            })
            .await;
        let outcome = match answer {
            Ok(answer) => match answer.into_inner().results.first().map(|r| r.disposition()) {
                Some(PublishDisposition::Queued) => (ReplayOutcome::Replayed, String::new()),
                Some(PublishDisposition::AlreadyPosted) => {
                    (ReplayOutcome::NotNeeded, "already posted".into())
                }
                _ => (ReplayOutcome::NotNeeded, "already queued or publishing".into()),
            },
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::NotFound | tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument
                ) =>
            {
                (ReplayOutcome::Gone, status.message().to_owned())
            }
            Err(status) => return Err(ApiError::Passthrough(status)),
        };
        if outcome.0 == ReplayOutcome::Replayed {
            replayed_count += 1;
            let mut active = row.clone().into_active_model();
            active.replay_count = Set(row.replay_count + 1);
            active.last_replayed_at_ms = Set(Some(now_ms()));
            active.update(deps.db.conn()).await?;
        }
        results.push(result(&id, outcome.0, &outcome.1));
    }
    Ok(pb::ReplayDeadLettersResponse { results, replayed_count })
}

fn result(id: &str, outcome: ReplayOutcome, detail: &str) -> pb::ReplayResult {
    pb::ReplayResult { dead_letter_id: id.to_owned(), outcome: outcome as i32, detail: detail.to_owned() }
}

/// Counts and latencies of one platform (or all).
#[derive(Default)]
struct Tally {
    posted: i64,
    faulted: i64,
    attempts: i64,
    retries: i64,
    rate_limit_hits: i64,
    dead_lettered: i64,
    call_ms: Vec<i64>,
    end_to_end_ms: Vec<i64>,
}

impl Tally {
    fn into_pb(mut self, platform: i32) -> pb::PlatformPublishingMetrics {
        pb::PlatformPublishingMetrics {
            platform,
            posted: self.posted,
            faulted: self.faulted,
            attempts: self.attempts,
            retries: self.retries,
            rate_limit_hits: self.rate_limit_hits,
            dead_lettered: self.dead_lettered,
            call_latency: summary(&mut self.call_ms),
            end_to_end_latency: summary(&mut self.end_to_end_ms),
        }
    }
}

fn summary(values: &mut [i64]) -> Option<pb::LatencySummary> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let at = |q: f64| {
        let ms = values[((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1];
        prost_types::Duration { seconds: ms / 1000, nanos: ((ms % 1000) * 1_000_000) as i32 }
    };
    Some(pb::LatencySummary {
        p50: Some(at(0.50)),
        p95: Some(at(0.95)),
        p99: Some(at(0.99)),
        max: Some(at(1.0)),
    })
}

/// Publishing metrics of a workspace over a window.
pub async fn metrics(
    deps: &ServiceDeps,
    workspace_id: &str,
    request: pb::GetPublishingMetricsRequest,
) -> Result<pb::GetPublishingMetricsResponse, ApiError> {
    let end = request.end_at.as_ref().map_or_else(now_ms, ms_of);
    let start = request.start_at.as_ref().map_or(end - 24 * 3600 * 1000, ms_of);
    if start >= end {
        return Err(ApiError::invalid("start_at", "must be before end_at"));
    }
    if (end - start) as u128 > MAX_WINDOW.as_millis() {
        return Err(ApiError::invalid("start_at", "the window may span at most 90 days"));
    }
    for (i, p) in request.platforms.iter().enumerate() {
        platform_field(*p, &format!("platforms[{i}]"))?;
    }
    let wanted = |platform: i32, account: &str| {
        (request.platforms.is_empty() || request.platforms.contains(&platform))
            && (request.account_ids.is_empty() || request.account_ids.iter().any(|a| a == account))
    };
    let db = deps.db.conn();
    let tries = attempts::Entity::find()
        .filter(attempts::Column::WorkspaceId.eq(workspace_id))
        .filter(attempts::Column::AtMs.gte(start))
        .filter(attempts::Column::AtMs.lt(end))
        .all(db)
        .await?;
    let posts = published::Entity::find()
        .filter(published::Column::WorkspaceId.eq(workspace_id))
        .filter(published::Column::PublishedAtMs.gte(start))
        .filter(published::Column::PublishedAtMs.lt(end))
        .all(db)
        .await?;
    let letters = dead_letters::Entity::find()
        .filter(dead_letters::Column::WorkspaceId.eq(workspace_id))
        .filter(dead_letters::Column::DeadLetteredAtMs.gte(start))
        .filter(dead_letters::Column::DeadLetteredAtMs.lt(end))
        .all(db)
        .await?;
    let mut tallies: BTreeMap<i32, Tally> = BTreeMap::new();
    let mut total = Tally::default();
    for t in tries.iter().filter(|t| wanted(t.platform, &t.account_id)) {
        for tally in [tallies.entry(t.platform).or_default(), &mut total] {
            tally.attempts += 1;
            tally.retries += i64::from(t.attempt > 1);
            tally.rate_limit_hits += i64::from(t.error_kind == PublishErrorKind::RateLimited as i32);
            tally.faulted += i64::from(t.outcome == "faulted");
            tally.call_ms.push(t.latency_ms);
        }
    }
    for p in posts.iter().filter(|p| wanted(p.platform, &p.account_id)) {
        for tally in [tallies.entry(p.platform).or_default(), &mut total] {
            tally.posted += 1;
            tally.end_to_end_ms.push(p.latency_ms);
        }
    }
    for l in letters.iter().filter(|l| wanted(l.platform, &l.account_id)) {
        for tally in [tallies.entry(l.platform).or_default(), &mut total] {
            tally.dead_lettered += 1;
            tally.faulted += 1;
        }
    }
    Ok(pb::GetPublishingMetricsResponse {
        start_at: Some(timestamp_ms(start)),
        end_at: Some(timestamp_ms(end)),
        platforms: tallies.into_iter().map(|(platform, tally)| tally.into_pb(platform)).collect(),
        total: Some(total.into_pb(Platform::Unspecified as i32)),
    })
}
