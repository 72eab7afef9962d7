//! The tonic implementation of `SocialService`: the platform registry,
//! connected accounts and publish requests (handed to the content service,
//! which owns the targets and queues the jobs).

use std::collections::BTreeSet;

use postmesh_kit::ServiceDeps;
use postmesh_kit::auth::Caller;
use postmesh_kit::db::now_ms;
use postmesh_kit::error::ApiError;
use postmesh_kit::outbox::OutboxMessage;
use postmesh_proto::postmesh::content::v1::EnqueuePublishRequest;
use postmesh_proto::postmesh::content::v1::content_service_client::ContentServiceClient;
use postmesh_proto::postmesh::social::v1::social_service_server::SocialService;
use postmesh_proto::postmesh::social::v1::{self as pb, AccountStatus, PlatformLimits, PublishTrigger};
use postmesh_proto::postmesh::r#type::v1::Platform;
use prost::Message as _;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, EntityTrait, IntoActiveModel, QueryFilter,
    QueryOrder, QuerySelect,
};
use tonic::{Request, Response, Status};

use crate::operations;
use crate::platforms::{self, Adapters, ConnectError, Connected, Credentials};
use crate::store::accounts;

/// Longest credential value accepted.
const MAX_CREDENTIAL_CHARS: usize = 4096;
/// Longest display name.
const MAX_DISPLAY_NAME_CHARS: usize = 100;

type Reply<T> = Result<Response<T>, Status>;

/// The gRPC face of the social service.
pub struct SocialApi {
    deps: ServiceDeps,
    adapters: Adapters,
}

impl SocialApi {
    pub(crate) fn new(deps: ServiceDeps, adapters: Adapters) -> Self {
        Self { deps, adapters }
    }
}

/// The context credentials of an account are sealed under: a sealed value
/// opens only for the row it was written for.
pub(crate) fn credentials_context(account_id: &str) -> String {
    format!("social-account:{account_id}")
}

/// `Platform` from its number, refusing unspecified and unknown values.
pub(crate) fn platform_field(value: i32, field: &str) -> Result<Platform, ApiError> {
    match Platform::try_from(value) {
        Ok(Platform::Unspecified) | Err(_) => {
            Err(ApiError::invalid(field, format!("{value} is not a platform")))
        }
        Ok(platform) => Ok(platform),
    }
}

pub(crate) use postmesh_kit::db::timestamp_ms;

/// The account as the contract shows it (never its credentials).
pub(crate) fn account_pb(model: &accounts::Model) -> pb::Account {
    let limits = model.limits.as_deref().and_then(|bytes| PlatformLimits::decode(bytes).ok()).or_else(|| {
        Platform::try_from(model.platform).ok().and_then(platforms::info).and_then(|info| info.limits.clone())
    });
    pb::Account {
        id: model.id.clone(),
        workspace_id: model.workspace_id.clone(),
        platform: model.platform,
        display_name: model.display_name.clone(),
        external_id: model.external_id.clone(),
        handle: model.handle.clone(),
        profile_url: model.profile_url.clone(),
        avatar_url: model.avatar_url.clone(),
        status: model.status,
        status_reason: model.status_reason.clone(),
        credential_fields: model
            .credential_fields
            .split(',')
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect(),
        limits,
        token_expires_at: model.token_expires_at_ms.map(timestamp_ms),
        connected_by_user_id: model.connected_by_user_id.clone(),
        connected_at: Some(timestamp_ms(model.connected_at_ms)),
        updated_at: Some(timestamp_ms(model.updated_at_ms)),
        last_published_at: model.last_published_at_ms.map(timestamp_ms),
    }
}

fn connect_error(err: ConnectError) -> ApiError {
    // Credential names are fields of the request's `credentials` map.
    let path = |field: String| if field == "platform" { field } else { format!("credentials.{field}") };
    match err {
        ConnectError::InvalidField { field, reason } => ApiError::invalid(path(field), reason),
        ConnectError::Rejected { field, message } => ApiError::invalid(path(field), message),
        ConnectError::Unavailable(message) => ApiError::Unavailable(message),
    }
}

fn display_name(given: &str, connected: &Connected, existing: Option<&accounts::Model>) -> String {
    let name = if !given.trim().is_empty() {
        given.trim()
    } else if let Some(existing) = existing.filter(|e| !e.display_name.is_empty()) {
        existing.display_name.as_str()
    } else {
        connected.display_name.as_str()
    };
    name.chars().take(MAX_DISPLAY_NAME_CHARS).collect()
}

impl SocialApi {
    async fn account(&self, workspace_id: &str, id: &str) -> Result<accounts::Model, ApiError> {
        accounts::Entity::find_by_id(id.to_owned())
            .filter(accounts::Column::WorkspaceId.eq(workspace_id))
            .one(self.deps.db.conn())
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("account {id} not found")))
    }

    async fn connect(
        &self,
        caller: &Caller,
        request: pb::ConnectAccountRequest,
    ) -> Result<pb::ConnectAccountResponse, ApiError> {
        let workspace_id = caller.workspace_id()?.to_owned();
        let user_id = caller.user_id().map(str::to_owned).unwrap_or_default();
        let platform = platform_field(request.platform, "platform")?;
        if request.display_name.chars().count() > MAX_DISPLAY_NAME_CHARS {
            return Err(ApiError::invalid(
                "display_name",
                format!("at most {MAX_DISPLAY_NAME_CHARS} characters"),
            ));
        }
        for (name, value) in &request.credentials {
            if value.chars().count() > MAX_CREDENTIAL_CHARS {
                return Err(ApiError::invalid(
                    format!("credentials.{name}"),
                    format!("at most {MAX_CREDENTIAL_CHARS} characters"),
                ));
            }
        }
        let connected = self
            .adapters
            .connect(platform, Credentials(request.credentials.into_iter().collect()))
            .await
            .map_err(connect_error)?;
        let sealed_json = serde_json::to_vec(&connected.credentials.0).map_err(ApiError::internal)?;
        let fields = connected.credentials.0.keys().cloned().collect::<Vec<_>>().join(",");
        let limits = connected.limits.as_ref().map(prost::Message::encode_to_vec);
        let now = now_ms();

        // The same platform identity in the workspace is the same account:
        // a second connect replaces the credentials and reactivates it.
        let txn = self.deps.db.begin_write().await?;
        let existing = accounts::Entity::find()
            .filter(accounts::Column::WorkspaceId.eq(&workspace_id))
            .filter(accounts::Column::Platform.eq(platform as i32))
            .filter(accounts::Column::ExternalId.eq(&connected.external_id))
            .one(&txn)
            .await?;
        let created = existing.is_none();
        let id = existing.as_ref().map_or_else(|| uuid::Uuid::now_v7().to_string(), |e| e.id.clone());
        let sealed = self.deps.cipher.encrypt(&sealed_json, &credentials_context(&id));
        let name = display_name(&request.display_name, &connected, existing.as_ref());
        let model = match existing {
            Some(existing) => {
                let mut active = existing.into_active_model();
                active.display_name = Set(name);
                active.handle = Set(connected.handle.clone());
                active.profile_url = Set(connected.profile_url.clone());
                active.avatar_url = Set(connected.avatar_url.clone());
                active.status = Set(AccountStatus::Active as i32);
                active.status_reason = Set(String::new());
                active.credential_fields = Set(fields);
                active.credentials = Set(Some(sealed));
                active.limits = Set(limits);
                active.token_expires_at_ms = Set(connected.token_expires_at.map(|t| t.timestamp_millis()));
                active.connected_by_user_id = Set(user_id.clone());
                active.updated_at_ms = Set(now);
                active.update(&txn).await?
            }
            None => {
                accounts::ActiveModel {
                    id: Set(id),
                    workspace_id: Set(workspace_id.clone()),
                    platform: Set(platform as i32),
                    external_id: Set(connected.external_id.clone()),
                    display_name: Set(name),
                    handle: Set(connected.handle.clone()),
                    profile_url: Set(connected.profile_url.clone()),
                    avatar_url: Set(connected.avatar_url.clone()),
                    status: Set(AccountStatus::Active as i32),
                    status_reason: Set(String::new()),
                    credential_fields: Set(fields),
                    credentials: Set(Some(sealed)),
                    limits: Set(limits),
                    token_expires_at_ms: Set(connected.token_expires_at.map(|t| t.timestamp_millis())),
                    connected_by_user_id: Set(user_id.clone()),
                    connected_at_ms: Set(now),
                    updated_at_ms: Set(now),
                    last_published_at_ms: Set(None),
                }
                .insert(&txn)
                .await?
            }
        };
        if crate::refresh::due(&self.deps, &model) {
            crate::refresh::queue(&self.deps, &txn, &model).await?;
        }
        let account = account_pb(&model);
        let event = pb::AccountConnectedEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            workspace_id,
            occurred_at: Some(timestamp_ms(now)),
            account: Some(account.clone()),
            reconnected: !created,
            user_id,
        };
        self.deps.outbox.enqueue(&txn, OutboxMessage::event("social", "account_connected", &event)).await?;
        self.deps.outbox.commit(txn).await?;
        Ok(pb::ConnectAccountResponse { account: Some(account), created })
    }

    async fn list(
        &self,
        workspace_id: &str,
        request: pb::ListAccountsRequest,
    ) -> Result<pb::ListAccountsResponse, ApiError> {
        let page_size = match request.page_size {
            0 => 50,
            n @ 1..=200 => n as u64,
            _ => return Err(ApiError::invalid("page_size", "between 0 and 200")),
        };
        let mut query = accounts::Entity::find().filter(accounts::Column::WorkspaceId.eq(workspace_id));
        if !request.platforms.is_empty() {
            for (i, p) in request.platforms.iter().enumerate() {
                platform_field(*p, &format!("platforms[{i}]"))?;
            }
            query = query.filter(accounts::Column::Platform.is_in(request.platforms.clone()));
        }
        query = if request.statuses.is_empty() {
            query.filter(accounts::Column::Status.ne(AccountStatus::Disconnected as i32))
        } else {
            let mut any = Condition::any();
            for status in &request.statuses {
                any = any.add(accounts::Column::Status.eq(*status));
            }
            query.filter(any)
        };
        if !request.page_token.is_empty() {
            // Ids are UUIDv7: their order is connection order.
            if uuid::Uuid::parse_str(&request.page_token).is_err() {
                return Err(ApiError::invalid("page_token", "not a token this call returned"));
            }
            query = query.filter(accounts::Column::Id.gt(request.page_token.clone()));
        }
        let mut rows =
            query.order_by_asc(accounts::Column::Id).limit(page_size + 1).all(self.deps.db.conn()).await?;
        let next_page_token = if rows.len() as u64 > page_size {
            rows.truncate(page_size as usize);
            rows.last().map(|r| r.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListAccountsResponse { accounts: rows.iter().map(account_pb).collect(), next_page_token })
    }

    async fn disconnect(&self, caller: &Caller, id: &str) -> Result<pb::Account, ApiError> {
        let workspace_id = caller.workspace_id()?.to_owned();
        let txn = self.deps.db.begin_write().await?;
        let model = accounts::Entity::find_by_id(id.to_owned())
            .filter(accounts::Column::WorkspaceId.eq(&workspace_id))
            .one(&txn)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("account {id} not found")))?;
        if model.status == AccountStatus::Disconnected as i32 {
            return Ok(account_pb(&model));
        }
        let now = now_ms();
        let mut active = model.into_active_model();
        active.status = Set(AccountStatus::Disconnected as i32);
        active.status_reason = Set("disconnected".into());
        active.credentials = Set(None);
        active.credential_fields = Set(String::new());
        active.token_expires_at_ms = Set(None);
        active.updated_at_ms = Set(now);
        let model = active.update(&txn).await?;
        let event = pb::AccountDisconnectedEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            workspace_id,
            occurred_at: Some(timestamp_ms(now)),
            account_id: model.id.clone(),
            platform: model.platform,
            display_name: model.display_name.clone(),
            user_id: caller.user_id().map(str::to_owned).unwrap_or_default(),
        };
        self.deps
            .outbox
            .enqueue(&txn, OutboxMessage::event("social", "account_disconnected", &event))
            .await?;
        self.deps.outbox.commit(txn).await?;
        Ok(account_pb(&model))
    }

    async fn resolve(
        &self,
        request: pb::ResolveTargetsRequest,
    ) -> Result<pb::ResolveTargetsResponse, ApiError> {
        if request.workspace_id.is_empty() {
            return Err(ApiError::invalid("workspace_id", "required"));
        }
        if request.account_ids.len() > 200 {
            return Err(ApiError::invalid("account_ids", "at most 200"));
        }
        let found = accounts::Entity::find()
            .filter(accounts::Column::WorkspaceId.eq(&request.workspace_id))
            .filter(accounts::Column::Id.is_in(request.account_ids.clone()))
            .all(self.deps.db.conn())
            .await?;
        let mut accounts = Vec::new();
        let mut missing = Vec::new();
        let mut wanted: Vec<i32> = Vec::new();
        for id in &request.account_ids {
            match found.iter().find(|a| &a.id == id) {
                Some(model) => {
                    wanted.push(model.platform);
                    accounts.push(account_pb(model));
                }
                None => missing.push(id.clone()),
            }
        }
        for (i, p) in request.platforms.iter().enumerate() {
            platform_field(*p, &format!("platforms[{i}]"))?;
            wanted.push(*p);
        }
        let mut seen = BTreeSet::new();
        let platforms = wanted
            .into_iter()
            .filter(|p| seen.insert(*p))
            .filter_map(|p| Platform::try_from(p).ok().and_then(platforms::info).cloned())
            .collect();
        Ok(pb::ResolveTargetsResponse { accounts, missing_account_ids: missing, platforms })
    }

    async fn publish(
        &self,
        caller: &Caller,
        request: pb::PublishPostRequest,
    ) -> Result<pb::PublishPostResponse, ApiError> {
        let workspace_id = caller.workspace_id()?.to_owned();
        if request.post_id.is_empty() {
            return Err(ApiError::invalid("post_id", "required"));
        }
        if request.account_ids.len() > 50 {
            return Err(ApiError::invalid("account_ids", "at most 50"));
        }
        let channel = self.deps.clients.channel("content").await?;
        let answer = ContentServiceClient::new(channel)
            .enqueue_publish(EnqueuePublishRequest {
                workspace_id,
                post_id: request.post_id.clone(),
                account_ids: request.account_ids,
                trigger: PublishTrigger::Manual as i32,
                requested_by_user_id: caller.user_id().map(str::to_owned).unwrap_or_default(),
            })
            .await
            .map_err(passthrough)?
            .into_inner();
        Ok(pb::PublishPostResponse { post_id: request.post_id, results: answer.results })
    }
}

/// A status from another service, handed to our caller as it is (its
/// details, such as field violations, included).
fn passthrough(status: Status) -> ApiError {
    ApiError::Passthrough(status)
}

fn reply<T>(result: Result<T, ApiError>) -> Reply<T> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl SocialService for SocialApi {
    async fn list_platforms(
        &self,
        _request: Request<pb::ListPlatformsRequest>,
    ) -> Reply<pb::ListPlatformsResponse> {
        reply(Ok(pb::ListPlatformsResponse { platforms: platforms::registry().to_vec() }))
    }

    async fn connect_account(
        &self,
        request: Request<pb::ConnectAccountRequest>,
    ) -> Reply<pb::ConnectAccountResponse> {
        let caller = Caller::of(&request)?.clone();
        reply(self.connect(&caller, request.into_inner()).await)
    }

    async fn list_accounts(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Reply<pb::ListAccountsResponse> {
        let workspace_id = Caller::of(&request)?.workspace_id()?.to_owned();
        reply(self.list(&workspace_id, request.into_inner()).await)
    }

    async fn get_account(&self, request: Request<pb::GetAccountRequest>) -> Reply<pb::GetAccountResponse> {
        let workspace_id = Caller::of(&request)?.workspace_id()?.to_owned();
        let account = self.account(&workspace_id, &request.get_ref().id).await;
        reply(account.map(|a| pb::GetAccountResponse { account: Some(account_pb(&a)) }))
    }

    async fn disconnect_account(
        &self,
        request: Request<pb::DisconnectAccountRequest>,
    ) -> Reply<pb::DisconnectAccountResponse> {
        let caller = Caller::of(&request)?.clone();
        let account = self.disconnect(&caller, &request.get_ref().id).await;
        reply(account.map(|a| pb::DisconnectAccountResponse { account: Some(a) }))
    }

    async fn publish_post(&self, request: Request<pb::PublishPostRequest>) -> Reply<pb::PublishPostResponse> {
        let caller = Caller::of(&request)?.clone();
        reply(self.publish(&caller, request.into_inner()).await)
    }

    async fn get_publishing_metrics(
        &self,
        request: Request<pb::GetPublishingMetricsRequest>,
    ) -> Reply<pb::GetPublishingMetricsResponse> {
        let workspace_id = Caller::of(&request)?.workspace_id()?.to_owned();
        reply(operations::metrics(&self.deps, &workspace_id, request.into_inner()).await)
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Reply<pb::ListDeadLettersResponse> {
        let workspace_id = Caller::of(&request)?.workspace_id()?.to_owned();
        reply(operations::list_dead_letters(&self.deps, &workspace_id, request.into_inner()).await)
    }

    async fn replay_dead_letters(
        &self,
        request: Request<pb::ReplayDeadLettersRequest>,
    ) -> Reply<pb::ReplayDeadLettersResponse> {
        let caller = Caller::of(&request)?;
        let workspace_id = caller.workspace_id()?.to_owned();
        let user_id = caller.user_id().map(str::to_owned).unwrap_or_default();
        reply(
            operations::replay_dead_letters(&self.deps, &workspace_id, &user_id, request.into_inner()).await,
        )
    }

    async fn resolve_targets(
        &self,
        request: Request<pb::ResolveTargetsRequest>,
    ) -> Reply<pb::ResolveTargetsResponse> {
        reply(self.resolve(request.into_inner()).await)
    }
}
