//! The HTTP API under `/v1` and its OpenAPI document.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use greenroom_proto::{
    CallCid, CallState, CallType, Capability, CapabilitySet, ErrorBody, Member, MuteKinds,
};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::auth::Claims;
use crate::call::Actor;
use crate::error::ApiError;
use crate::extract::{parse_object, ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;

/// The verified claims of the request's bearer token.
#[derive(Debug, Clone)]
pub struct Authed(pub Claims);

impl FromRequestParts<Arc<AppState>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let token = match header {
            Some(h) => h.strip_prefix("Bearer ").ok_or_else(|| {
                crate::auth::AuthError::Invalid("expected `Bearer <token>`".into())
            })?,
            None => return Err(crate::auth::AuthError::Missing.into()),
        };
        Ok(Authed(state.auth.verify(token.trim())?))
    }
}

/// Body of `POST /v1/calls/{type}/{id}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCallRequest {
    /// Members and their roles in this call.
    #[serde(default)]
    pub members: Vec<Member>,
    /// Free-form settings.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub settings: serde_json::Value,
}

/// A call and what the caller may do in it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CallResponse {
    /// The call.
    pub call: CallState,
    /// The caller's capabilities in this call.
    pub own_capabilities: CapabilitySet,
    /// Whether this request created the call.
    #[serde(default)]
    pub created: bool,
}

/// Body of `request_permission`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestPermissionRequest {
    /// Capabilities asked for.
    pub permissions: Vec<Capability>,
}

/// Body of `user_permissions`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePermissionsRequest {
    /// The user whose capabilities change.
    pub user_id: String,
    /// Capabilities to grant.
    #[serde(default)]
    pub grant_permissions: Vec<Capability>,
    /// Capabilities to revoke.
    #[serde(default)]
    pub revoke_permissions: Vec<Capability>,
}

/// Body of `mute_users`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MuteUsersRequest {
    /// Users to mute.
    #[serde(default)]
    pub user_ids: Vec<String>,
    /// Mute everyone but the caller.
    #[serde(default)]
    pub mute_all_users: bool,
    /// Mute microphones.
    #[serde(default)]
    pub audio: bool,
    /// Mute cameras.
    #[serde(default)]
    pub video: bool,
    /// Mute screen shares.
    #[serde(default)]
    pub screenshare: bool,
}

/// Body of `kick`, `block`, `unblock`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRequest {
    /// The user.
    pub user_id: String,
}

/// Checks the user ids in a request body like ids in paths ([`greenroom_proto::validate_id`]).
pub trait ValidateIds {
    /// `400 bad_request` naming the first invalid id.
    fn validate_ids(&self) -> Result<(), ApiError>;
}

fn check_id(id: &str) -> Result<(), ApiError> {
    greenroom_proto::validate_id(id).map_err(|_| {
        let shown: String = id.chars().take(80).flat_map(char::escape_debug).collect();
        ApiError::BadRequest(format!(
            "invalid user id \"{shown}\": 1 to 64 characters of A-Z a-z 0-9 _ . @ -"
        ))
    })
}

impl ValidateIds for RequestPermissionRequest {
    fn validate_ids(&self) -> Result<(), ApiError> {
        Ok(())
    }
}

impl ValidateIds for UpdatePermissionsRequest {
    fn validate_ids(&self) -> Result<(), ApiError> {
        check_id(&self.user_id)
    }
}

impl ValidateIds for MuteUsersRequest {
    fn validate_ids(&self) -> Result<(), ApiError> {
        self.user_ids.iter().try_for_each(|u| check_id(u))
    }
}

impl ValidateIds for UserRequest {
    fn validate_ids(&self) -> Result<(), ApiError> {
        check_id(&self.user_id)
    }
}

/// Reply of `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` (200), or `draining` (503) once shutdown has begun.
    pub status: String,
    /// Joined sessions.
    pub sessions: usize,
    /// The media plane's engine shards (`status` `ok` | `degraded` | `down`, `shards`,
    /// `alive`); absent without a media plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub media: Option<greenroom_sfu::MediaHealth>,
}

fn cid_of(call_type: &str, id: &str) -> Result<CallCid, ApiError> {
    let t: CallType = call_type
        .parse()
        .map_err(|e: greenroom_proto::ProtoError| ApiError::NotFound(e.to_string()))?;
    CallCid::new(t, id).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn authorize(claims: &Claims, cid: &CallCid) -> Result<Actor, ApiError> {
    if !claims.allows_call(cid) {
        return Err(ApiError::WrongCall(claims.call.clone().unwrap_or_default()));
    }
    Ok(claims.actor())
}

fn call_response(
    state: &AppState,
    cid: &CallCid,
    actor: &Actor,
    created: bool,
) -> Result<CallResponse, ApiError> {
    state.read_call(cid, |c| CallResponse {
        call: c.state(),
        own_capabilities: c.capabilities(actor),
        created,
    })
}

/// The `/v1` routes and `/healthz`.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/openapi.json", get(openapi))
        .route(
            "/v1/calls/{call_type}/{id}",
            post(get_or_create).get(get_call),
        )
        .route("/v1/calls/{call_type}/{id}/go_live", post(go_live))
        .route("/v1/calls/{call_type}/{id}/stop_live", post(stop_live))
        .route("/v1/calls/{call_type}/{id}/end", post(end_call))
        .route(
            "/v1/calls/{call_type}/{id}/request_permission",
            post(request_permission),
        )
        .route(
            "/v1/calls/{call_type}/{id}/user_permissions",
            post(user_permissions),
        )
        .route("/v1/calls/{call_type}/{id}/mute_users", post(mute_users))
        .route("/v1/calls/{call_type}/{id}/kick", post(kick))
        .route("/v1/calls/{call_type}/{id}/block", post(block))
        .route("/v1/calls/{call_type}/{id}/unblock", post(unblock))
        .route("/v1/nodes", get(nodes))
        .merge(ring_routes())
}

/// `GET /v1/nodes`: the cluster's registered nodes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodesResponse {
    /// Whether this server runs in cluster mode (without it the list is empty).
    pub cluster: bool,
    /// The node that answered.
    pub node_id: Option<String>,
    /// Every live node, by id, with its load and state.
    pub nodes: Vec<crate::cluster::NodeInfo>,
}

/// The cluster's nodes with their load and state (admin tokens only); 503
/// `cluster_unavailable` while Redis is unreachable.
#[utoipa::path(get, path = "/v1/nodes",
    responses((status = 200, body = NodesResponse), (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn nodes(
    State(state): State<Arc<AppState>>,
    Authed(claims): Authed,
) -> Result<Json<NodesResponse>, ApiError> {
    if !claims.admin {
        return Err(ApiError::Forbidden(
            "listing nodes needs an admin (server-side) token".into(),
        ));
    }
    let Some(cluster) = state.cluster.get() else {
        return Ok(Json(NodesResponse {
            cluster: false,
            node_id: None,
            nodes: Vec::new(),
        }));
    };
    Ok(Json(NodesResponse {
        cluster: true,
        node_id: Some(cluster.node_id().to_owned()),
        nodes: cluster.registry().nodes().await?,
    }))
}

/// Liveness and readiness: `200 {"status":"ok"}` while serving, `503 {"status":"draining"}`
/// once shutdown has begun (a load balancer or Kubernetes readiness probe stops sending
/// traffic).
#[utoipa::path(get, path = "/healthz",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn healthz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Health>) {
    let draining = state.is_shutting_down();
    let status = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(Health {
            status: if draining { "draining" } else { "ok" }.to_owned(),
            sessions: state.session_count(),
            media: state.sfu.as_ref().map(|s| s.health()),
        }),
    )
}

/// This API's OpenAPI document.
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Gets a call, creating it (with members) when it does not exist (`create-call`).
#[utoipa::path(post, path = "/v1/calls/{call_type}/{id}", request_body = CreateCallRequest,
    params(("call_type" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = CallResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_or_create(
    State(state): State<Arc<AppState>>,
    Authed(claims): Authed,
    ApiPath((call_type, id)): ApiPath<(String, String)>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<CallResponse>, ApiError> {
    // An oversized body gets the same `too_large` error body as the JSON routes.
    let body = body?;
    let cid = cid_of(&call_type, &id)?;
    let actor = authorize(&claims, &cid)?;
    // The body is optional here; when present it must be a JSON object.
    let req: CreateCallRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CreateCallRequest::default()
    } else {
        parse_object(&body)?
    };
    for m in &req.members {
        check_id(&m.user_id)?;
    }
    // A draining server creates no new calls (existing ones still answer).
    if state.is_shutting_down() && state.read_call(&cid, |_| ()).is_err() {
        return Err(ApiError::ShuttingDown);
    }
    let created = state.get_or_create(&cid, &actor, req.members, req.settings)?;
    Ok(Json(call_response(&state, &cid, &actor, created)?))
}

/// A call's state, members, participants and the caller's capabilities (`read-call`).
#[utoipa::path(get, path = "/v1/calls/{call_type}/{id}",
    params(("call_type" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = CallResponse), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_call(
    State(state): State<Arc<AppState>>,
    Authed(claims): Authed,
    ApiPath((call_type, id)): ApiPath<(String, String)>,
) -> Result<Json<CallResponse>, ApiError> {
    let cid = cid_of(&call_type, &id)?;
    let actor = authorize(&claims, &cid)?;
    let caps = state.read_call(&cid, |c| c.capabilities(&actor))?;
    if !caps.contains(Capability::ReadCall) {
        return Err(crate::call::CallError::MissingCapability(Capability::ReadCall).into());
    }
    Ok(Json(call_response(&state, &cid, &actor, false)?))
}

macro_rules! call_action {
    ($(#[$doc:meta])* $name:ident, $path:literal, |$call:ident, $actor:ident| $body:expr) => {
        $(#[$doc])*
        #[utoipa::path(post, path = $path,
            params(("call_type" = String, Path), ("id" = String, Path)),
            responses((status = 200, body = CallResponse), (status = 403, body = ErrorBody),
                (status = 404, body = ErrorBody)),
            security(("bearer" = [])))]
        pub async fn $name(
            State(state): State<Arc<AppState>>,
            Authed(claims): Authed,
            ApiPath((call_type, id)): ApiPath<(String, String)>,
        ) -> Result<Json<CallResponse>, ApiError> {
            let cid = cid_of(&call_type, &id)?;
            let $actor = authorize(&claims, &cid)?;
            state.with_call(&cid, |$call| Ok(((), $body?)))?;
            Ok(Json(call_response(&state, &cid, &$actor, false)?))
        }
    };
}

call_action!(
    /// Goes live (`update-call`).
    go_live, "/v1/calls/{call_type}/{id}/go_live", |call, actor| call.go_live(&actor)
);
call_action!(
    /// Stops live, back to backstage (`update-call`).
    stop_live, "/v1/calls/{call_type}/{id}/stop_live", |call, actor| call.stop_live(&actor)
);
call_action!(
    /// Ends the call for everyone (`end-call`).
    end_call, "/v1/calls/{call_type}/{id}/end", |call, actor| call.end(&actor)
);

macro_rules! body_action {
    ($(#[$doc:meta])* $name:ident, $path:literal, $req:ty, |$call:ident, $actor:ident, $r:ident| $body:expr) => {
        $(#[$doc])*
        #[utoipa::path(post, path = $path, request_body = $req,
            params(("call_type" = String, Path), ("id" = String, Path)),
            responses((status = 200, body = CallResponse), (status = 400, body = ErrorBody),
                (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
            security(("bearer" = [])))]
        pub async fn $name(
            State(state): State<Arc<AppState>>,
            Authed(claims): Authed,
            ApiPath((call_type, id)): ApiPath<(String, String)>,
            ApiJson($r): ApiJson<$req>,
        ) -> Result<Json<CallResponse>, ApiError> {
            let cid = cid_of(&call_type, &id)?;
            $r.validate_ids()?;
            let $actor = authorize(&claims, &cid)?;
            state.with_call(&cid, |$call| Ok(((), $body?)))?;
            Ok(Json(call_response(&state, &cid, &$actor, false)?))
        }
    };
}

body_action!(
    /// Asks the call's moderators for capabilities.
    request_permission, "/v1/calls/{call_type}/{id}/request_permission", RequestPermissionRequest,
    |call, actor, r| call.request_permission(&actor, &r.permissions)
);
body_action!(
    /// Grants and revokes a user's capabilities (`update-call-permissions`).
    user_permissions, "/v1/calls/{call_type}/{id}/user_permissions", UpdatePermissionsRequest,
    |call, actor, r| call.update_permissions(&actor, &r.user_id, &r.grant_permissions, &r.revoke_permissions)
);
body_action!(
    /// Mutes users' audio, video or screen share (`mute-users`).
    mute_users, "/v1/calls/{call_type}/{id}/mute_users", MuteUsersRequest,
    |call, actor, r| call.mute_users(&actor, &r.user_ids, r.mute_all_users,
        MuteKinds { audio: r.audio, video: r.video, screenshare: r.screenshare })
);
body_action!(
    /// Kicks a user out of the call (`kick-user`).
    kick, "/v1/calls/{call_type}/{id}/kick", UserRequest, |call, actor, r| call.kick(&actor, &r.user_id)
);
body_action!(
    /// Blocks a user (`block-users`).
    block, "/v1/calls/{call_type}/{id}/block", UserRequest, |call, actor, r| call.block(&actor, &r.user_id)
);
body_action!(
    /// Unblocks a user (`block-users`).
    unblock, "/v1/calls/{call_type}/{id}/unblock", UserRequest, |call, actor, r| call.unblock(&actor, &r.user_id)
);

// ---- Ringing, direct calls, groups, history and tokens (section 6 of docs/PROTOCOL.md) ----

/// Body of `POST /v1/calls/{type}/{id}/ring`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RingRequest {
    /// Users to ring (ignored when `group_id` is set).
    #[serde(default)]
    pub user_ids: Vec<String>,
    /// A group whose members (but the caller) are rung.
    #[serde(default)]
    pub group_id: Option<String>,
    /// `audio` or `video`.
    pub kind: greenroom_proto::CallKind,
}

/// Body of `POST /v1/groups`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {
    /// The group id (default: a generated one).
    #[serde(default)]
    pub id: Option<String>,
    /// The members (a non-admin creator is added).
    #[serde(default)]
    pub members: Vec<String>,
}

/// Body of `POST /v1/groups/{id}/members`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupMembersRequest {
    /// Users to add.
    #[serde(default)]
    pub add: Vec<String>,
    /// Users to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Query of `GET /v1/users/{id}/calls`.
#[derive(Debug, Clone, Deserialize)]
pub struct HistoryQuery {
    /// Page size (default 50, at most 200).
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    pub cursor: Option<String>,
}

/// Reply of `GET /v1/users/{id}/calls`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CallHistoryResponse {
    /// The calls, newest first.
    pub calls: Vec<greenroom_proto::CallRecord>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Body of `POST /v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The user id (`sub`).
    pub user_id: String,
    /// Limit the token to this call (`type:id`), e.g. a direct call's `default:<session>`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub call_cid: Option<CallCid>,
    /// The global role.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub role: Option<greenroom_proto::Role>,
    /// Lifetime in seconds (default 6 hours, at most 30 days).
    #[serde(default)]
    pub ttl: Option<u64>,
}

/// Reply of `POST /v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// The JWT.
    pub token: String,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
}

/// Longest lifetime of a token minted by `POST /v1/tokens`.
pub const MAX_TOKEN_TTL_SECS: u64 = 30 * 86_400;
/// Default lifetime of a token minted by `POST /v1/tokens`.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 6 * 3_600;

type RingResult<T> = Result<Json<T>, crate::ringing::RingingError>;

/// The ringing, group, history and token routes.
pub fn ring_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/calls/{call_type}/{id}/ring", post(ring))
        .route("/v1/groups", post(create_group))
        .route("/v1/groups/{id}", get(get_group))
        .route("/v1/groups/{id}/members", post(update_group))
        .route("/v1/users/{id}/calls", get(call_history))
        .route("/v1/tokens", post(create_token))
}

/// Creates the call if needed and rings users or a group; the reply carries the session id.
#[utoipa::path(post, path = "/v1/calls/{call_type}/{id}/ring", request_body = RingRequest,
    params(("call_type" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = greenroom_proto::RingCallInfo), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn ring(
    State(state): State<Arc<AppState>>,
    Authed(claims): Authed,
    ApiPath((call_type, id)): ApiPath<(String, String)>,
    ApiJson(r): ApiJson<RingRequest>,
) -> RingResult<greenroom_proto::RingCallInfo> {
    let cid = cid_of(&call_type, &id)?;
    let info = state
        .ringing
        .initiate(&state, &claims, cid, r.user_ids, r.group_id, r.kind)?;
    Ok(Json(info))
}

/// Creates a group of users to ring together.
#[utoipa::path(post, path = "/v1/groups", request_body = CreateGroupRequest,
    responses((status = 200, body = crate::ringing::GroupInfo), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_group(
    State(state): State<Arc<AppState>>,
    Authed(claims): Authed,
    ApiJson(r): ApiJson<CreateGroupRequest>,
) -> RingResult<crate::ringing::GroupInfo> {
    Ok(Json(state.ringing.create_group(&claims, r.id, r.members)?))
}

/// A group (members and admin tokens only).
#[utoipa::path(get, path = "/v1/groups/{id}", params(("id" = String, Path)),
    responses((status = 200, body = crate::ringing::GroupInfo), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_group(
    State(state): State<Arc<AppState>>,
    Authed(claims): Authed,
    ApiPath(id): ApiPath<String>,
) -> RingResult<crate::ringing::GroupInfo> {
    check_id(&id)?;
    Ok(Json(state.ringing.group(&claims, &id)?))
}

/// Adds and removes members (members and admin tokens only).
#[utoipa::path(post, path = "/v1/groups/{id}/members", request_body = GroupMembersRequest,
    params(("id" = String, Path)),
    responses((status = 200, body = crate::ringing::GroupInfo), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_group(
    State(state): State<Arc<AppState>>,
    Authed(claims): Authed,
    ApiPath(id): ApiPath<String>,
    ApiJson(r): ApiJson<GroupMembersRequest>,
) -> RingResult<crate::ringing::GroupInfo> {
    check_id(&id)?;
    Ok(Json(
        state
            .ringing
            .update_group(&claims, &id, &r.add, &r.remove)?,
    ))
}

/// A user's ringing calls, newest first, a page at a time (own history, or any with an admin
/// token).
#[utoipa::path(get, path = "/v1/users/{id}/calls",
    params(("id" = String, Path), ("limit" = Option<usize>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = CallHistoryResponse), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn call_history(
    State(state): State<Arc<AppState>>,
    Authed(claims): Authed,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> RingResult<CallHistoryResponse> {
    check_id(&id)?;
    let page = state
        .ringing
        .history(&claims, &id, q.limit, q.cursor.as_deref())
        .await?;
    Ok(Json(CallHistoryResponse {
        calls: page.records,
        next: page.next.map(|c| c.to_string()),
    }))
}

/// Mints a token for a user, optionally limited to one call (admin tokens only).
#[utoipa::path(post, path = "/v1/tokens", request_body = TokenRequest,
    responses((status = 200, body = TokenResponse), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_token(
    State(state): State<Arc<AppState>>,
    Authed(claims): Authed,
    ApiJson(r): ApiJson<TokenRequest>,
) -> RingResult<TokenResponse> {
    use crate::ringing::RingingError;
    if !claims.admin {
        return Err(RingingError::Forbidden(
            "minting tokens needs an admin (server-side) token".into(),
        ));
    }
    check_id(&r.user_id)?;
    let ttl = r.ttl.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
    if ttl == 0 || ttl > MAX_TOKEN_TTL_SECS {
        return Err(ApiError::BadRequest(format!(
            "ttl must be within 1..={MAX_TOKEN_TTL_SECS} seconds"
        ))
        .into());
    }
    let token = state
        .auth
        .mint(&r.user_id, r.call_cid.as_ref(), r.role, false, ttl)
        .map_err(ApiError::from)?;
    Ok(Json(TokenResponse {
        token,
        expires_at: crate::auth::unix_now() + ttl,
    }))
}

// ---- end of the ringing block ----

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document, generated from the handlers above.
#[derive(OpenApi)]
#[openapi(
    info(title = "Greenroom API", description = "Calls, roles, capabilities and permissions of the Greenroom SFU"),
    paths(healthz, get_or_create, get_call, go_live, stop_live, end_call, request_permission,
        user_permissions, mute_users, kick, block, unblock,
        ring, create_group, get_group, update_group, call_history, create_token, nodes),
    components(schemas(CreateCallRequest, CallResponse, RequestPermissionRequest,
        UpdatePermissionsRequest, MuteUsersRequest, UserRequest, Health, ErrorBody,
        RingRequest, CreateGroupRequest, GroupMembersRequest, CallHistoryResponse, TokenRequest,
        TokenResponse, NodesResponse, crate::cluster::NodeInfo, crate::ringing::GroupInfo, greenroom_proto::RingCallInfo,
        greenroom_proto::CallRecord)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;
