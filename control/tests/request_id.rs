//! Matched replies (protocol 2): a client message's optional `request_id` comes back on the
//! server's direct reply and on any `error` the message causes; events never carry one; clients
//! that send none see exactly the protocol-1 replies. Real server on 127.0.0.1:0, no media plane.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ws_support;

use std::sync::Arc;

use greenroom_control::config::Config;
use greenroom_control::AppState;
use greenroom_proto::Role;
use serde_json::json;
use ws_support::{next, send, server_with, Ws};

async fn server() -> (Arc<AppState>, String) {
    let mut config = Config::default();
    // Room for the 300 requests in flight below (the default burst is 100 messages).
    config.limits.signal_burst = 1000;
    server_with(config).await
}

async fn connect(state: &AppState, url: &str, user: &str) -> Ws {
    ws_support::connect(state, url, user, Role::User).await
}

#[tokio::test]
async fn direct_replies_and_errors_echo_the_request_id() {
    let (state, url) = server().await;
    let mut a = connect(&state, &url, "alice").await;

    send(&mut a, json!({"type": "ping", "request_id": "p-1"})).await;
    assert_eq!(
        next(&mut a).await,
        json!({"type": "pong", "request_id": "p-1"})
    );

    // An error the message causes (leave before join) carries it, with the request type.
    send(&mut a, json!({"type": "leave", "request_id": "l:0"})).await;
    let e = next(&mut a).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["request"], "leave");
    assert_eq!(e["request_id"], "l:0");

    // Parse errors of a known type too.
    send(
        &mut a,
        json!({"type": "join", "call_cid": 7, "request_id": "bad-join"}),
    )
    .await;
    let e = next(&mut a).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("invalid_json"))
    );
    assert_eq!(e["request_id"], "bad-join");

    send(
        &mut a,
        json!({"type": "join", "call_cid": "default:rid", "create": true, "request_id": "j.1"}),
    )
    .await;
    let j = next(&mut a).await;
    assert_eq!(j["type"], "joined", "{j}");
    assert_eq!(j["request_id"], "j.1");
    assert_eq!(j["protocol"], 2);

    // A second join: the already_joined error carries the second id.
    send(
        &mut a,
        json!({"type": "join", "call_cid": "default:rid", "request_id": "j.2"}),
    )
    .await;
    let e = next(&mut a).await;
    assert_eq!(
        (e["code"].as_str(), e["request_id"].as_str()),
        (Some("already_joined"), Some("j.2"))
    );

    // Events never carry a request_id, even while a request of the receiver is handled.
    let mut b = connect(&state, &url, "bob").await;
    send(
        &mut b,
        json!({"type": "join", "call_cid": "default:rid", "request_id": "b-join"}),
    )
    .await;
    assert_eq!(next(&mut b).await["request_id"], "b-join");
    let ev = loop {
        let m = next(&mut a).await;
        if m["type"] == "call.session_participant_joined" {
            break m;
        }
    };
    assert!(ev.get("request_id").is_none(), "{ev}");

    send(&mut a, json!({"type": "leave", "request_id": "bye"})).await;
    let left = loop {
        let m = next(&mut a).await;
        if m["type"] == "left" {
            break m;
        }
    };
    assert_eq!(left["request_id"], "bye");
}

#[tokio::test]
async fn without_a_request_id_replies_are_unchanged_and_bad_ids_are_refused() {
    let (state, url) = server().await;
    let mut a = connect(&state, &url, "alice").await;
    send(&mut a, json!({"type": "ping"})).await;
    assert_eq!(next(&mut a).await, json!({"type": "pong"}));
    send(
        &mut a,
        json!({"type": "join", "call_cid": "default:old", "create": true}),
    )
    .await;
    let j = next(&mut a).await;
    assert_eq!(j["type"], "joined");
    assert!(j.get("request_id").is_none(), "{j}");

    let long = "x".repeat(65);
    for bad in [json!(""), json!("a b"), json!(long), json!(7), json!(null)] {
        send(&mut a, json!({"type": "ping", "request_id": bad})).await;
        let e = next(&mut a).await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("bad_request")),
            "{bad}: {e}"
        );
        assert_eq!(e["request"], "ping");
        assert!(e.get("request_id").is_none(), "{e}");
    }
    // The socket stays usable.
    send(&mut a, json!({"type": "ping", "request_id": "ok"})).await;
    assert_eq!(next(&mut a).await["request_id"], "ok");
}

#[tokio::test]
async fn ring_replies_echo_the_request_id() {
    let (state, url) = server().await;
    let mut a = connect(&state, &url, "alice").await;
    // Accepting a call that does not ring: an error, with the id.
    send(
        &mut a,
        json!({"type": "ring_accept", "call_cid": "default:nothing", "request_id": "r1"}),
    )
    .await;
    let e = next(&mut a).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["request_id"], "r1");
    send(
        &mut a,
        json!({"type": "ring_initiate", "call_cid": "default:ringrid", "user_ids": ["bob"], "kind": "audio", "request_id": "r2"}),
    )
    .await;
    let ok = loop {
        let m = next(&mut a).await;
        if m["type"] == "ring.ok" {
            break m;
        }
    };
    assert_eq!(ok["request_id"], "r2");
    assert_eq!(ok["request"], "ring_initiate");
}

#[tokio::test]
async fn many_requests_in_flight_each_get_their_own_reply() {
    let (state, url) = server().await;
    let mut a = connect(&state, &url, "alice").await;
    // Fire all at once, then read: replies come back in order, each with its own id.
    const N: usize = 300;
    for i in 0..N {
        send(
            &mut a,
            json!({"type": "ping", "request_id": format!("p{i}")}),
        )
        .await;
    }
    for i in 0..N {
        let m = next(&mut a).await;
        assert_eq!(m["type"], "pong");
        assert_eq!(m["request_id"], format!("p{i}"));
    }
}
