//! The Twitch Helix API: EventSub subscriptions (create, list, delete) and
//! enrichment lookups (`/helix/users`, `/helix/streams`, `/helix/channels`,
//! cached in the key-value store), authenticated with an app access token
//! obtained by the client-credentials grant and kept in memory until it
//! expires or Helix answers 401.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postmesh_kit::Config;
use postmesh_kit::kv::Kv;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// Longest a Helix call may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a Helix call did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum HelixError {
    /// No client id or secret configured.
    #[error("the Twitch API is not configured (webhook_twitch_client_id, webhook_twitch_client_secret)")]
    NotConfigured,
    /// Helix refused the request (4xx other than 401/429): retrying will not help.
    #[error("Helix refused: {0}")]
    Rejected(String),
    /// Network error, timeout, 5xx or 429: worth retrying.
    #[error("Helix unavailable: {0}")]
    Unavailable(String),
}

/// A subscription as Helix lists it.
#[derive(Debug, Clone)]
pub struct RemoteSubscription {
    pub id: String,
    pub r#type: String,
    pub version: String,
    /// Canonical JSON of the condition.
    pub condition: String,
    pub status: String,
    pub callback: String,
}

/// What creating a subscription at Twitch gave.
#[derive(Debug)]
pub enum Created {
    /// Accepted; Twitch's id and status.
    New { id: String, status: String },
    /// The app already has this subscription (409).
    Exists,
}

/// The Helix client.
#[derive(Clone)]
pub struct Helix {
    http: reqwest::Client,
    api_url: String,
    auth_url: String,
    client_id: Option<String>,
    client_secret: Option<String>,
    token: Arc<Mutex<Option<(String, Instant)>>>,
    kv: Kv,
    cache_ttl: Duration,
}

/// The canonical JSON of a condition: keys sorted, string values.
pub fn canonical_condition(condition: &BTreeMap<String, String>) -> String {
    serde_json::to_string(condition).unwrap_or_else(|_| "{}".into())
}

/// A Helix condition object as a map of strings (non-strings as their JSON).
pub fn condition_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|map| {
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
                .filter(|(_, v)| !v.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

impl Helix {
    pub fn new(config: &Config, kv: Kv) -> Self {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            http,
            api_url: config.webhook_twitch_api_url.trim_end_matches('/').to_owned(),
            auth_url: config.webhook_twitch_auth_url.trim_end_matches('/').to_owned(),
            client_id: config.webhook_twitch_client_id.clone().filter(|id| !id.is_empty()),
            client_secret: config
                .webhook_twitch_client_secret
                .as_ref()
                .map(|s| s.expose().clone())
                .filter(|s| !s.is_empty()),
            token: Arc::new(Mutex::new(None)),
            kv,
            cache_ttl: config.webhook_twitch_cache_ttl,
        }
    }

    /// Whether a client id and secret are configured.
    pub fn configured(&self) -> bool {
        self.client_id.is_some() && self.client_secret.is_some()
    }

    async fn token(&self, refresh: bool) -> Result<String, HelixError> {
        let (Some(client_id), Some(client_secret)) = (&self.client_id, &self.client_secret) else {
            return Err(HelixError::NotConfigured);
        };
        let mut cached = self.token.lock().await;
        if !refresh
            && let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", client_id)
            .append_pair("client_secret", client_secret)
            .append_pair("grant_type", "client_credentials")
            .finish();
        let response = self
            .http
            .post(format!("{}/oauth2/token", self.auth_url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| HelixError::Unavailable(format!("token: {e}")))?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let message = answer["message"].as_str().unwrap_or("").to_owned();
            return Err(if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                HelixError::Unavailable(format!("token: {status} {message}"))
            } else {
                HelixError::Rejected(format!("token: {status} {message}"))
            });
        }
        let token = answer["access_token"]
            .as_str()
            .ok_or_else(|| HelixError::Unavailable("token: no access_token in the answer".into()))?
            .to_owned();
        // Renew a minute early.
        let lifetime = answer["expires_in"].as_u64().unwrap_or(3600).saturating_sub(60).max(1);
        *cached = Some((token.clone(), Instant::now() + Duration::from_secs(lifetime)));
        Ok(token)
    }

    /// One Helix call; a 401 renews the token once.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), HelixError> {
        let client_id = self.client_id.clone().ok_or(HelixError::NotConfigured)?;
        let mut url = url::Url::parse(&format!("{}/helix{path}", self.api_url))
            .map_err(|e| HelixError::Rejected(format!("bad Helix URL: {e}")))?;
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        let mut refresh = false;
        loop {
            let token = self.token(refresh).await?;
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .header("client-id", &client_id)
                .bearer_auth(&token);
            if let Some(body) = body {
                request = request.json(body);
            }
            let response =
                request.send().await.map_err(|e| HelixError::Unavailable(format!("{method} {path}: {e}")))?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !refresh {
                refresh = true;
                continue;
            }
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                return Err(HelixError::Unavailable(format!("{method} {path}: {status}")));
            }
            return Ok((status, answer));
        }
    }

    fn message(answer: &Value, status: StatusCode) -> String {
        answer["message"].as_str().filter(|m| !m.is_empty()).map_or_else(|| status.to_string(), str::to_owned)
    }

    /// Every EventSub subscription of the app (all pages).
    pub async fn list_subscriptions(&self) -> Result<Vec<RemoteSubscription>, HelixError> {
        let mut all = Vec::new();
        let mut after = String::new();
        for _ in 0..100 {
            let query: Vec<(&str, &str)> =
                if after.is_empty() { vec![] } else { vec![("after", after.as_str())] };
            let (status, answer) = self.call(Method::GET, "/eventsub/subscriptions", &query, None).await?;
            if !status.is_success() {
                return Err(HelixError::Rejected(Self::message(&answer, status)));
            }
            for item in answer["data"].as_array().into_iter().flatten() {
                all.push(RemoteSubscription {
                    id: item["id"].as_str().unwrap_or_default().to_owned(),
                    r#type: item["type"].as_str().unwrap_or_default().to_owned(),
                    version: item["version"].as_str().unwrap_or_default().to_owned(),
                    condition: canonical_condition(&condition_map(&item["condition"])),
                    status: item["status"].as_str().unwrap_or_default().to_owned(),
                    callback: item["transport"]["callback"].as_str().unwrap_or_default().to_owned(),
                });
            }
            match answer["pagination"]["cursor"].as_str() {
                Some(cursor) if !cursor.is_empty() => after = cursor.to_owned(),
                _ => break,
            }
        }
        Ok(all)
    }

    /// Creates a webhook subscription with `callback` and `secret`.
    pub async fn create_subscription(
        &self,
        r#type: &str,
        version: &str,
        condition: &BTreeMap<String, String>,
        callback: &str,
        secret: &str,
    ) -> Result<Created, HelixError> {
        let body = json!({
            "type": r#type,
            "version": version,
            "condition": condition,
            "transport": { "method": "webhook", "callback": callback, "secret": secret },
        });
        let (status, answer) = self.call(Method::POST, "/eventsub/subscriptions", &[], Some(&body)).await?;
        if status == StatusCode::CONFLICT {
            return Ok(Created::Exists);
        }
        if !status.is_success() {
            return Err(HelixError::Rejected(Self::message(&answer, status)));
        }
        let item = &answer["data"][0];
        Ok(Created::New {
            id: item["id"].as_str().unwrap_or_default().to_owned(),
            status: item["status"].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// Deletes a subscription at Twitch; one already gone succeeds.
    pub async fn delete_subscription(&self, id: &str) -> Result<(), HelixError> {
        let (status, answer) =
            self.call(Method::DELETE, "/eventsub/subscriptions", &[("id", id)], None).await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(HelixError::Rejected(Self::message(&answer, status)))
        }
    }

    /// The first `data` item of `GET /helix/<resource>?<key>=<value>`, or
    /// `Null` when Helix has none, cached for the configured TTL.
    async fn lookup(&self, resource: &str, key: &str, value: &str) -> Result<Value, HelixError> {
        let cache_key = format!("webhook:helix:{resource}:{key}:{value}");
        if let Ok(Some(bytes)) = self.kv.get(&cache_key).await
            && let Ok(cached) = serde_json::from_slice::<Value>(&bytes)
        {
            return Ok(cached);
        }
        let (status, answer) = self.call(Method::GET, &format!("/{resource}"), &[(key, value)], None).await?;
        if !status.is_success() {
            return Err(HelixError::Rejected(Self::message(&answer, status)));
        }
        let item = answer["data"].as_array().and_then(|items| items.first()).cloned().unwrap_or(Value::Null);
        if let Ok(bytes) = serde_json::to_vec(&item) {
            // A cache that cannot be written only costs a later lookup.
            let _ = self.kv.set(&cache_key, &bytes, Some(self.cache_ttl)).await;
        }
        Ok(item)
    }

    /// The user (`/helix/users?id=`).
    pub async fn user(&self, user_id: &str) -> Result<Value, HelixError> {
        self.lookup("users", "id", user_id).await
    }

    /// The live stream, `Null` when offline (`/helix/streams?user_id=`).
    pub async fn stream(&self, user_id: &str) -> Result<Value, HelixError> {
        self.lookup("streams", "user_id", user_id).await
    }

    /// The channel (`/helix/channels?broadcaster_id=`).
    pub async fn channel(&self, broadcaster_id: &str) -> Result<Value, HelixError> {
        self.lookup("channels", "broadcaster_id", broadcaster_id).await
    }
}
