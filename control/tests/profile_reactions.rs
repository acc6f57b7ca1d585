//! Display names and app data on join, reactions (`send_reaction`, needs `create-reaction`) and
//! custom events (`send_event`), their limits and the per-session rate limit. Real server on
//! 127.0.0.1:0 (no media plane), tokio-tungstenite clients.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ws_support;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use greenroom_control::config::Config;
use greenroom_control::{app, AppState};
use greenroom_proto::Role;
use serde_json::{json, Value};
use tower::ServiceExt;
use ws_support::{connect, next, send, server_with, Ws};

async fn server() -> (Arc<AppState>, String) {
    server_with(Config::default()).await
}

/// Reads until a message of `kind` arrives.
async fn wait_for(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let m = next(ws).await;
        if m["type"] == kind {
            return m;
        }
    }
}

async fn join(ws: &mut Ws, cid: &str, settings: Value) -> Value {
    send(
        ws,
        json!({"type": "join", "call_cid": cid, "create": true, "settings": settings}),
    )
    .await;
    wait_for(ws, "joined").await
}

#[tokio::test]
async fn display_names_and_custom_data_reach_everyone() {
    let (state, url) = server().await;
    let mut a = connect(&state, &url, "alice", Role::User).await;
    let j = join(
        &mut a,
        "default:names",
        json!({"name": "  Alice A. ", "custom": {"color": "teal"}}),
    )
    .await;
    assert_eq!(j["participant"]["name"], "Alice A.", "trimmed: {j}");
    assert_eq!(j["participant"]["custom"], json!({"color": "teal"}));

    let mut b = connect(&state, &url, "bob", Role::User).await;
    let j = join(&mut b, "default:names", json!({"name": "Bob"})).await;
    // Bob's joined carries alice's name in the call's participants.
    let alice = j["call"]["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["user_id"] == "alice")
        .cloned()
        .unwrap();
    assert_eq!(alice["name"], "Alice A.");
    // Alice's event about bob carries his name.
    let ev = wait_for(&mut a, "call.session_participant_joined").await;
    assert_eq!(ev["participant"]["name"], "Bob");
    assert!(ev["participant"].get("custom").is_none(), "{ev}");

    // A join without a name works as before (no name field).
    let mut c = connect(&state, &url, "carol", Role::User).await;
    let j = join(&mut c, "default:names", json!({})).await;
    assert!(j["participant"].get("name").is_none(), "{j}");
}

#[tokio::test]
async fn bad_names_and_oversized_custom_data_are_refused() {
    let (state, url) = server().await;
    let mut a = connect(&state, &url, "alice", Role::User).await;
    let long = "x".repeat(65);
    let big = json!({"blob": "x".repeat(1100)});
    for settings in [
        json!({"name": ""}),
        json!({"name": long}),
        json!({"name": "a\u{0007}b"}),
        json!({"custom": big}),
        json!({"custom": [1, 2]}),
    ] {
        send(&mut a, json!({"type": "join", "call_cid": "default:bad", "create": true, "settings": settings, "request_id": "j"})).await;
        let e = next(&mut a).await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("bad_request")),
            "{settings}: {e}"
        );
        assert_eq!(e["request_id"], "j");
    }
    // Still not joined, and a good join works.
    let j = join(&mut a, "default:bad", json!({"name": "Alice"})).await;
    assert_eq!(j["participant"]["name"], "Alice");
}

#[tokio::test]
async fn reactions_and_custom_events_go_to_everyone_with_limits() {
    let (state, url) = server().await;
    let mut a = connect(&state, &url, "alice", Role::User).await;
    let mut b = connect(&state, &url, "bob", Role::User).await;
    join(&mut a, "default:react", json!({})).await;
    join(&mut b, "default:react", json!({})).await;

    send(&mut a, json!({"type": "send_reaction", "reaction": {"type": "like", "emoji_code": ":heart:", "custom": {"n": 1}}})).await;
    for ws in [&mut a, &mut b] {
        let ev = wait_for(ws, "call.reaction").await;
        assert_eq!(ev["user_id"], "alice");
        assert_eq!(
            ev["reaction"],
            json!({"type": "like", "emoji_code": ":heart:", "custom": {"n": 1}})
        );
        assert!(ev.get("request_id").is_none());
    }
    send(
        &mut b,
        json!({"type": "send_event", "custom": {"poll": "lunch?"}}),
    )
    .await;
    for ws in [&mut a, &mut b] {
        let ev = wait_for(ws, "call.custom").await;
        assert_eq!(ev["user_id"], "bob");
        assert_eq!(ev["custom"], json!({"poll": "lunch?"}));
    }

    // Sized: a too-long type, a too-large event, a non-object event.
    for (msg, why) in [
        (
            json!({"type": "send_reaction", "reaction": {"type": "x".repeat(33)}}),
            "long type",
        ),
        (
            json!({"type": "send_event", "custom": {"b": "x".repeat(5200)}}),
            "large event",
        ),
        (
            json!({"type": "send_event", "custom": "text"}),
            "not an object",
        ),
    ] {
        send(&mut a, msg).await;
        let e = wait_for(&mut a, "error").await;
        assert_eq!(e["code"], "bad_request", "{why}: {e}");
    }

    // Rate limit: 20 per 10 s per session (the two sends above counted). Fire 30 more at once.
    for i in 0..30 {
        send(
            &mut b,
            json!({"type": "send_event", "custom": {"i": i}, "request_id": format!("e{i}")}),
        )
        .await;
    }
    send(&mut b, json!({"type": "ping", "request_id": "end"})).await;
    let (mut delivered, mut limited) = (0, 0);
    loop {
        let m = next(&mut b).await;
        match m["type"].as_str() {
            Some("call.custom") => delivered += 1,
            Some("error") => {
                assert_eq!(m["code"], "rate_limited", "{m}");
                assert_eq!(m["request"], "send_event");
                limited += 1;
            }
            Some("pong") if m["request_id"] == "end" => break,
            _ => {}
        }
    }
    // bob sent one event before: 19 more fit in his window.
    assert_eq!((delivered, limited), (19, 11));
}

/// POSTs `body` to `path` as `user` with a global `role`; the answer must be 200.
async fn post_ok(state: &Arc<AppState>, user: &str, role: Role, path: &str, body: Value) {
    let token = state
        .auth
        .mint(user, None, Some(role), false, 3600)
        .unwrap();
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "POST {path}");
}

#[tokio::test]
async fn reactions_need_create_reaction() {
    let (state, url) = server().await;
    // In an audio room a listener (plain user) holds join-call, read-call and create-reaction.
    let mut host = connect(&state, &url, "host", Role::Host).await;
    join(&mut host, "audio_room:stage", json!({})).await;
    post_ok(
        &state,
        "host",
        Role::Host,
        "/v1/calls/audio_room/stage/go_live",
        json!({}),
    )
    .await;
    let mut l = connect(&state, &url, "listener", Role::User).await;
    send(
        &mut l,
        json!({"type": "join", "call_cid": "audio_room:stage"}),
    )
    .await;
    let j = next(&mut l).await;
    assert_eq!(j["type"], "joined", "{j}");
    let own = j["own_capabilities"].as_array().unwrap();
    assert!(own.contains(&json!("create-reaction")), "{j}");
    // By default the listener reacts: the host gets it.
    send(
        &mut l,
        json!({"type": "send_reaction", "reaction": {"type": "clap"}, "request_id": "ok"}),
    )
    .await;
    let r = wait_for(&mut host, "call.reaction").await;
    assert_eq!(r["user_id"], "listener", "{r}");
    assert_eq!(r["reaction"]["type"], "clap", "{r}");

    // The host revokes create-reaction: the listener's next reaction is refused.
    post_ok(
        &state,
        "host",
        Role::Host,
        "/v1/calls/audio_room/stage/user_permissions",
        json!({"user_id": "listener", "revoke_permissions": ["create-reaction"]}),
    )
    .await;
    let up = wait_for(&mut l, "call.permissions_updated").await;
    let own = up["own_capabilities"].as_array().unwrap();
    assert!(!own.contains(&json!("create-reaction")), "{up}");
    send(
        &mut l,
        json!({"type": "send_reaction", "reaction": {"type": "clap"}, "request_id": "r"}),
    )
    .await;
    let e = wait_for(&mut l, "error").await;
    assert_eq!(e["code"], "missing_capability");
    assert_eq!(e["capability"], "create-reaction");
    assert_eq!(e["request_id"], "r");
    // Not in a call: an error, nothing sent.
    let mut x = connect(&state, &url, "x", Role::User).await;
    send(
        &mut x,
        json!({"type": "send_event", "custom": {}, "request_id": "n"}),
    )
    .await;
    let e = next(&mut x).await;
    assert_eq!(
        (e["type"].as_str(), e["request_id"].as_str()),
        (Some("error"), Some("n"))
    );
}
