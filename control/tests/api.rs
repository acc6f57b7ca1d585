//! HTTP API tests through `greenroom_control::app(state)` with `tower::ServiceExt::oneshot`:
//! the call lifecycle and every bad input the issue lists.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use greenroom_control::auth::{unix_now, Auth, Claims};
use greenroom_control::config::Config;
use greenroom_control::{app, AppState};
use greenroom_proto::{CallCid, Role};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

struct Api {
    state: Arc<AppState>,
    app: Router,
}

impl Api {
    fn new() -> Api {
        let state = AppState::new(Config::default(), None);
        Api {
            app: app(state.clone()),
            state,
        }
    }

    fn token(&self, user: &str, role: Role) -> String {
        self.state
            .auth
            .mint(user, None, Some(role), false, 3600)
            .unwrap()
    }

    fn server_token(&self) -> String {
        self.state.auth.mint("srv", None, None, true, 3600).unwrap()
    }

    async fn send_raw(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(b)
            }
            None => Body::empty(),
        };
        let resp = self
            .app
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    async fn post(&self, uri: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.send_raw(Method::POST, uri, Some(token), Some(body.to_string()))
            .await
    }

    async fn post_empty(&self, uri: &str, token: &str) -> (StatusCode, Value) {
        self.send_raw(Method::POST, uri, Some(token), None).await
    }

    async fn get(&self, uri: &str, token: &str) -> (StatusCode, Value) {
        self.send_raw(Method::GET, uri, Some(token), None).await
    }

    /// Creates an audio_room call with alice (host member) and bob (user member) by a server token.
    async fn audio_room(&self, id: &str) -> String {
        let uri = format!("/v1/calls/audio_room/{id}");
        let (s, v) = self
            .post(
                &uri,
                &self.server_token(),
                json!({"members": [
                    {"user_id": "alice", "role": "host"},
                    {"user_id": "bob", "role": "user"}
                ]}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        uri
    }
}

fn caps(v: &Value) -> Vec<String> {
    v["own_capabilities"]
        .as_array()
        .unwrap_or_else(|| panic!("no own_capabilities in {v}"))
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect()
}

fn has(v: &Value, cap: &str) -> bool {
    caps(v).iter().any(|c| c == cap)
}

#[track_caller]
fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(got.0, status, "body: {}", got.1);
    assert_eq!(got.1["code"], code, "body: {}", got.1);
    assert!(
        got.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error has a message: {}",
        got.1
    );
}

#[track_caller]
fn assert_missing(got: &(StatusCode, Value), cap: &str) {
    assert_error(got, StatusCode::FORBIDDEN, "missing_capability");
    assert_eq!(got.1["capability"], cap, "body: {}", got.1);
}

#[tokio::test]
async fn get_or_create_with_members_and_state() {
    let api = Api::new();
    let srv = api.server_token();
    let (s, v) = api
        .post(
            "/v1/calls/audio_room/r1",
            &srv,
            json!({"members": [
                {"user_id": "alice", "role": "host"},
                {"user_id": "bob", "role": "user"}
            ], "settings": {"topic": "rust"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["created"], true);
    assert_eq!(v["call"]["cid"], "audio_room:r1");
    assert_eq!(v["call"]["type"], "audio_room");
    assert_eq!(v["call"]["backstage"], true);
    assert_eq!(v["call"]["settings"]["topic"], "rust");
    let members = v["call"]["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    assert!(members.contains(&json!({"user_id": "alice", "role": "host"})));
    // Second call: get, not create.
    let (s, v) = api.post("/v1/calls/audio_room/r1", &srv, json!({})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["created"], false);

    // alice's token says `user`, but her member role is host.
    let alice = api.token("alice", Role::User);
    let (s, v) = api.get("/v1/calls/audio_room/r1", &alice).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for c in [
        "join-call",
        "read-call",
        "join-backstage",
        "send-audio",
        "update-call",
        "update-call-permissions",
        "mute-users",
        "kick-user",
        "block-users",
        "end-call",
    ] {
        assert!(has(&v, c), "alice lacks {c}: {v}");
    }
    assert!(!has(&v, "send-video") && !has(&v, "screenshare"), "{v}");

    // bob's token says host, but his member role is user: only join, read and react.
    let bob = api.token("bob", Role::Host);
    let (s, v) = api.get("/v1/calls/audio_room/r1", &bob).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut c = caps(&v);
    c.sort();
    assert_eq!(c, vec!["create-reaction", "join-call", "read-call"]);

    // A default call with an empty body.
    let carol = api.token("carol", Role::User);
    let (s, v) = api.post_empty("/v1/calls/default/d1", &carol).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["created"], true);
    assert_eq!(v["call"]["created_by"], "carol");
    assert!(has(&v, "send-video") && has(&v, "screenshare"));
    assert!(!has(&v, "end-call"));
}

#[tokio::test]
async fn members_of_an_existing_call_need_update_call() {
    let api = Api::new();
    let uri = api.audio_room("r2").await;
    let bob = api.token("bob", Role::User);
    let got = api
        .post(
            &uri,
            &bob,
            json!({"members": [{"user_id": "bob", "role": "host"}]}),
        )
        .await;
    assert_missing(&got, "update-call");
    let alice = api.token("alice", Role::User);
    let (s, v) = api
        .post(
            &uri,
            &alice,
            json!({"members": [{"user_id": "bob", "role": "host"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = api.get(&uri, &bob).await;
    assert!(has(&v, "send-audio"), "bob promoted: {v}");
}

#[tokio::test]
async fn creating_needs_create_call() {
    let api = Api::new();
    let bob = api.token("bob", Role::User);
    let got = api.post_empty("/v1/calls/audio_room/new", &bob).await;
    assert_missing(&got, "create-call");
    let got = api.get("/v1/calls/audio_room/new", &bob).await;
    assert_error(&got, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn go_live_stop_live_and_end() {
    let api = Api::new();
    let uri = api.audio_room("r3").await;
    let alice = api.token("alice", Role::User);
    let bob = api.token("bob", Role::User);

    assert_missing(
        &api.post_empty(&format!("{uri}/go_live"), &bob).await,
        "update-call",
    );
    let (s, v) = api.post_empty(&format!("{uri}/go_live"), &alice).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["call"]["live"], true);
    assert_eq!(v["call"]["backstage"], false);

    assert_missing(
        &api.post_empty(&format!("{uri}/stop_live"), &bob).await,
        "update-call",
    );
    let (s, v) = api.post_empty(&format!("{uri}/stop_live"), &alice).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["call"]["live"], false);
    assert_eq!(v["call"]["backstage"], true);

    assert_missing(
        &api.post_empty(&format!("{uri}/end"), &bob).await,
        "end-call",
    );
    let (s, v) = api.post_empty(&format!("{uri}/end"), &alice).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["call"]["ended"], true);
    // An ended call cannot go live again.
    assert_error(
        &api.post_empty(&format!("{uri}/go_live"), &alice).await,
        StatusCode::FORBIDDEN,
        "call_ended",
    );
}

#[tokio::test]
async fn request_permission_by_call_type() {
    let api = Api::new();
    let uri = api.audio_room("r4").await;
    let bob = api.token("bob", Role::User);
    let (s, v) = api
        .post(
            &format!("{uri}/request_permission"),
            &bob,
            json!({"permissions": ["send-audio"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let got = api
        .post(
            &format!("{uri}/request_permission"),
            &bob,
            json!({"permissions": ["send-video"]}),
        )
        .await;
    assert_error(&got, StatusCode::FORBIDDEN, "not_requestable");
    assert_eq!(got.1["capability"], "send-video");
    let got = api
        .post(
            &format!("{uri}/request_permission"),
            &bob,
            json!({"permissions": ["fly"]}),
        )
        .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_json");

    // livestream: nothing is requestable.
    let srv = api.server_token();
    let (s, _) = api.post_empty("/v1/calls/livestream/l1", &srv).await;
    assert_eq!(s, StatusCode::OK);
    let got = api
        .post(
            "/v1/calls/livestream/l1/request_permission",
            &bob,
            json!({"permissions": ["send-audio"]}),
        )
        .await;
    assert_error(&got, StatusCode::FORBIDDEN, "not_requestable");
    assert_eq!(got.1["capability"], "send-audio");
}

#[tokio::test]
async fn user_permissions_grant_and_revoke() {
    let api = Api::new();
    let uri = api.audio_room("r5").await;
    let alice = api.token("alice", Role::User);
    let bob = api.token("bob", Role::User);
    let perms = format!("{uri}/user_permissions");

    let got = api
        .post(
            &perms,
            &bob,
            json!({"user_id": "bob", "grant_permissions": ["send-audio"]}),
        )
        .await;
    assert_missing(&got, "update-call-permissions");
    assert!(!has(&api.get(&uri, &bob).await.1, "send-audio"));

    let (s, v) = api
        .post(
            &perms,
            &alice,
            json!({"user_id": "bob", "grant_permissions": ["send-audio"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(has(&api.get(&uri, &bob).await.1, "send-audio"));

    let (s, v) = api
        .post(
            &perms,
            &alice,
            json!({"user_id": "bob", "revoke_permissions": ["send-audio"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(!has(&api.get(&uri, &bob).await.1, "send-audio"));

    // Revoking a role capability from the host herself works too.
    let (s, _) = api
        .post(
            &perms,
            &alice,
            json!({"user_id": "alice", "revoke_permissions": ["send-audio"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(!has(&api.get(&uri, &alice).await.1, "send-audio"));

    let got = api.post(&perms, &alice, json!({"user_id": "bob"})).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
    let got = api
        .post(
            &perms,
            &alice,
            json!({"user_id": "bob", "grant_permissions": ["send-audio"],
                   "revoke_permissions": ["send-audio"]}),
        )
        .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn mute_users() {
    let api = Api::new();
    let uri = api.audio_room("r6").await;
    let alice = api.token("alice", Role::User);
    let bob = api.token("bob", Role::User);
    let mute = format!("{uri}/mute_users");
    let (s, v) = api
        .post(&mute, &alice, json!({"user_ids": ["bob"], "audio": true}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = api
        .post(
            &mute,
            &alice,
            json!({"mute_all_users": true, "audio": true, "video": true, "screenshare": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_missing(
        &api.post(&mute, &bob, json!({"user_ids": ["alice"], "audio": true}))
            .await,
        "mute-users",
    );
    assert_error(
        &api.post(&mute, &alice, json!({"user_ids": ["bob"]})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        &api.post(&mute, &alice, json!({"audio": true})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
}

#[tokio::test]
async fn kick_block_unblock() {
    let api = Api::new();
    let uri = api.audio_room("r7").await;
    let alice = api.token("alice", Role::User);
    let bob = api.token("bob", Role::User);

    assert_missing(
        &api.post(&format!("{uri}/kick"), &bob, json!({"user_id": "alice"}))
            .await,
        "kick-user",
    );
    let (s, v) = api
        .post(&format!("{uri}/kick"), &alice, json!({"user_id": "bob"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    assert_missing(
        &api.post(&format!("{uri}/block"), &bob, json!({"user_id": "alice"}))
            .await,
        "block-users",
    );
    let (s, v) = api
        .post(&format!("{uri}/block"), &alice, json!({"user_id": "bob"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["call"]["blocked_user_ids"], json!(["bob"]));

    assert_missing(
        &api.post(&format!("{uri}/unblock"), &bob, json!({"user_id": "bob"}))
            .await,
        "block-users",
    );
    let (s, v) = api
        .post(&format!("{uri}/unblock"), &alice, json!({"user_id": "bob"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["call"]["blocked_user_ids"], json!([]));

    let got = api
        .post(&format!("{uri}/kick"), &alice, json!({"user": "bob"}))
        .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_json");
}

#[tokio::test]
async fn malformed_json_is_400_invalid_json() {
    let api = Api::new();
    let uri = api.audio_room("bad1").await;
    let alice = api.token("alice", Role::User);
    for (path, body) in [
        (format!("{uri}/user_permissions"), "{not json"),
        (format!("{uri}/mute_users"), "[1,2"),
        (format!("{uri}/kick"), "{\"user_id\": 5}"),
        (format!("{uri}/request_permission"), ""),
        (uri.clone(), "{\"members\": [{\"user_id\": \"x\"}"),
        (uri.clone(), "{\"members\": 3}"),
        ("/v1/calls/default/fresh".to_owned(), "nope"),
    ] {
        let got = api
            .send_raw(Method::POST, &path, Some(&alice), Some(body.to_owned()))
            .await;
        assert_error(&got, StatusCode::BAD_REQUEST, "invalid_json");
    }
    // The malformed create did not create the call.
    let got = api.get("/v1/calls/default/fresh", &alice).await;
    assert_error(&got, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn unknown_call_and_unknown_type_are_404() {
    let api = Api::new();
    let alice = api.token("alice", Role::Admin);
    assert_error(
        &api.get("/v1/calls/default/nope", &alice).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    for action in ["go_live", "stop_live", "end"] {
        assert_error(
            &api.post_empty(&format!("/v1/calls/default/nope/{action}"), &alice)
                .await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
    assert_error(
        &api.post(
            "/v1/calls/default/nope/kick",
            &alice,
            json!({"user_id": "bob"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &api.post_empty("/v1/calls/party/x", &alice).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &api.get("/v1/calls/party/x", &alice).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn bad_call_id_is_400() {
    let api = Api::new();
    let alice = api.token("alice", Role::Admin);
    let got = api.post_empty("/v1/calls/default/bad%20id", &alice).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn tokens_expired_forged_missing_and_wrong_call() {
    let api = Api::new();
    let uri = api.audio_room("auth1").await;

    let expired = api
        .state
        .auth
        .sign(&Claims {
            sub: "alice".into(),
            exp: unix_now() - 3600,
            iat: unix_now() - 7200,
            call: None,
            role: Some(Role::Admin),
            admin: false,
        })
        .unwrap();
    assert_error(
        &api.get(&uri, &expired).await,
        StatusCode::UNAUTHORIZED,
        "token_expired",
    );

    let forged = Auth::new("devkey", "not-the-secret")
        .mint("alice", None, Some(Role::Admin), true, 3600)
        .unwrap();
    assert_error(
        &api.get(&uri, &forged).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_error(
        &api.post_empty(&format!("{uri}/end"), &forged).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_error(
        &api.get(&uri, "garbage").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );

    assert_error(
        &api.send_raw(Method::GET, &uri, None, None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_error(
        &api.send_raw(Method::POST, &format!("{uri}/end"), None, Some("{}".into()))
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );

    // Not `Bearer`.
    let good = api.token("alice", Role::User);
    let req = Request::builder()
        .uri(&uri)
        .header(header::AUTHORIZATION, format!("Token {good}"))
        .body(Body::empty())
        .unwrap();
    let resp = api.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // A token limited to another call.
    let other: CallCid = "audio_room:elsewhere".parse().unwrap();
    let limited = api
        .state
        .auth
        .mint("alice", Some(&other), None, false, 3600)
        .unwrap();
    assert_error(
        &api.get(&uri, &limited).await,
        StatusCode::FORBIDDEN,
        "wrong_call",
    );
    assert_error(
        &api.post_empty(&format!("{uri}/go_live"), &limited).await,
        StatusCode::FORBIDDEN,
        "wrong_call",
    );
    // ... and accepted for its own call.
    let own: CallCid = uri
        .trim_start_matches("/v1/calls/")
        .replacen('/', ":", 1)
        .parse()
        .unwrap();
    let limited = api
        .state
        .auth
        .mint("alice", Some(&own), None, false, 3600)
        .unwrap();
    let (s, _) = api.get(&uri, &limited).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let api = Api::new();
    let uri = api.audio_room("big").await;
    let alice = api.token("alice", Role::User);
    let limit = api.state.config.limits.max_body_bytes;
    let big_id = "x".repeat(limit + 1024);
    let got = api
        .post(&format!("{uri}/kick"), &alice, json!({"user_id": big_id}))
        .await;
    assert_error(&got, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    let got = api
        .post(
            &uri,
            &alice,
            json!({"settings": {"pad": "y".repeat(limit + 1024)}}),
        )
        .await;
    assert_error(&got, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
}

#[tokio::test]
async fn openapi_lists_the_paths() {
    let api = Api::new();
    let (s, v) = api
        .send_raw(Method::GET, "/v1/openapi.json", None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let paths = v["paths"].as_object().expect("paths object");
    for p in [
        "/healthz",
        "/v1/calls/{call_type}/{id}",
        "/v1/calls/{call_type}/{id}/go_live",
        "/v1/calls/{call_type}/{id}/stop_live",
        "/v1/calls/{call_type}/{id}/end",
        "/v1/calls/{call_type}/{id}/request_permission",
        "/v1/calls/{call_type}/{id}/user_permissions",
        "/v1/calls/{call_type}/{id}/mute_users",
        "/v1/calls/{call_type}/{id}/kick",
        "/v1/calls/{call_type}/{id}/block",
        "/v1/calls/{call_type}/{id}/unblock",
    ] {
        assert!(paths.contains_key(p), "openapi lacks {p}");
    }
    assert!(paths["/v1/calls/{call_type}/{id}"]["get"].is_object());
    assert!(paths["/v1/calls/{call_type}/{id}"]["post"].is_object());
}

#[tokio::test]
async fn healthz() {
    let api = Api::new();
    let (s, v) = api.send_raw(Method::GET, "/healthz", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["sessions"], 0);
}
