//! WebSocket signaling scenarios against a real server on 127.0.0.1:0 (no media plane), driven
//! by tokio-tungstenite clients. HTTP actions (go live, grant, kick, ...) go through the same
//! state's router. Every wait is bounded by a timeout; nothing sleeps. The server and client
//! helpers are `ws_support`'s.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ws_support;

use axum::http::{Method, StatusCode};
use greenroom_control::auth::{unix_now, Auth, Claims};
use greenroom_control::config::Config;
use greenroom_proto::Role;
use serde_json::{json, Value};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{connect_async, connect_async_with_config};

use ws_support::{Client, Server, WAIT};

impl Server {
    /// The HTTP status of a refused upgrade.
    async fn refused_upgrade(&self, token: &str) -> u16 {
        let url = self.url_with(token);
        match timeout(WAIT, connect_async(url)).await.expect("timed out") {
            Ok(_) => panic!("upgrade accepted"),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    /// An HTTP POST as `user` with the global `role`, through the same state's router.
    async fn post(&self, user: &str, role: Role, path: &str, body: Value) -> (StatusCode, Value) {
        let token = self.token(user, role);
        self.http(Method::POST, &token, path, body).await
    }

    async fn post_ok(&self, user: &str, role: Role, path: &str, body: Value) -> Value {
        let (s, v) = self.post(user, role, path, body).await;
        assert_eq!(s, StatusCode::OK, "POST {path}: {v}");
        v
    }
}

impl Client {
    async fn join(&mut self, cid: &str, create: bool) -> Value {
        self.send(json!({"type": "join", "call_cid": cid, "create": create}))
            .await;
        let m = self.next().await;
        assert_eq!(m["type"], "joined", "{}: join {cid}: {m}", self.name);
        m
    }

    /// A join that must fail with `code`.
    async fn join_refused(&mut self, cid: &str, code: &str) -> Value {
        self.send(json!({"type": "join", "call_cid": cid})).await;
        let m = self.next().await;
        assert_eq!(m["type"], "error", "{}: join {cid}: {m}", self.name);
        assert_eq!(m["code"], code, "{}: {m}", self.name);
        assert_eq!(m["request"], "join");
        m
    }

    /// Ping and expect pong: the connection still answers.
    async fn ping(&mut self) {
        self.send(json!({"type": "ping"})).await;
        self.wait_for("pong").await;
    }
}

fn caps(m: &Value) -> Vec<String> {
    m["own_capabilities"]
        .as_array()
        .unwrap_or_else(|| panic!("no own_capabilities: {m}"))
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect()
}

/// The scenario: audio room, backstage, go live, request, grant, revoke.
#[tokio::test]
async fn audio_room_request_grant_revoke() {
    let s = Server::start().await;
    let cid = "audio_room:stage";
    let base = "/v1/calls/audio_room/stage";

    let mut host = s.connect("host", Role::Host).await;
    let joined = host.join(cid, true).await;
    let hc = caps(&joined);
    assert!(hc.contains(&"join-backstage".into()) && hc.contains(&"send-audio".into()));
    assert_eq!(joined["call"]["backstage"], true);

    // Backstage: the listener is refused.
    let mut listener = s.connect("listener", Role::User).await;
    let refused = listener.join_refused(cid, "backstage").await;
    assert_eq!(refused["capability"], "join-backstage");
    listener.ping().await;

    // The host goes live; the listener may join.
    s.post_ok("host", Role::Host, &format!("{base}/go_live"), json!({}))
        .await;
    host.wait_for("call.live_started").await;
    let joined = listener.join(cid, false).await;
    let mut lc = caps(&joined);
    lc.sort();
    assert_eq!(lc, vec!["create-reaction", "join-call", "read-call"]);
    assert_eq!(joined["requestable"], json!(["send-audio"]));
    assert_eq!(joined["call"]["live"], true);
    let pj = host.wait_for("call.session_participant_joined").await;
    assert_eq!(pj["participant"]["user_id"], "listener");

    // The listener may not request video in an audio room.
    listener
        .send(json!({"type": "request_permission", "permissions": ["send-video"]}))
        .await;
    let e = listener.wait_for("error").await;
    assert_eq!(e["code"], "not_requestable");
    assert_eq!(e["capability"], "send-video");

    // Request send-audio: the host hears about it.
    listener
        .send(json!({"type": "request_permission", "permissions": ["send-audio"]}))
        .await;
    let req = host.wait_for("call.permission_request").await;
    assert_eq!(req["user_id"], "listener");
    assert_eq!(req["permissions"], json!(["send-audio"]));
    assert_eq!(req["call_cid"], cid);

    // Grant.
    s.post_ok(
        "host",
        Role::Host,
        &format!("{base}/user_permissions"),
        json!({"user_id": "listener", "grant_permissions": ["send-audio"]}),
    )
    .await;
    let up = listener.wait_for("call.permissions_updated").await;
    assert_eq!(up["user_id"], "listener");
    assert!(caps(&up).contains(&"send-audio".into()), "{up}");

    // The listener can unmute now.
    listener
        .send(json!({"type": "set_muted", "source": "microphone", "muted": false}))
        .await;
    listener.ping().await;

    // Revoke.
    s.post_ok(
        "host",
        Role::Host,
        &format!("{base}/user_permissions"),
        json!({"user_id": "listener", "revoke_permissions": ["send-audio"]}),
    )
    .await;
    let up = listener.wait_for("call.permissions_updated").await;
    let mut lc = caps(&up);
    lc.sort();
    assert_eq!(
        lc,
        vec!["create-reaction", "join-call", "read-call"],
        "{up}"
    );

    // And cannot unmute until granted again.
    listener
        .send(json!({"type": "set_muted", "source": "microphone", "muted": false}))
        .await;
    let e = listener.wait_for("error").await;
    assert_eq!(e["code"], "missing_capability");
    assert_eq!(e["capability"], "send-audio");
    assert_eq!(e["request"], "set_muted");
}

#[tokio::test]
async fn malformed_json_gets_an_error_and_the_socket_stays() {
    let s = Server::start().await;
    let mut c = s.connect("u", Role::User).await;
    c.send_text("{nope".into()).await;
    let e = c.next().await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "invalid_json");
    c.ping().await;
    // Right type, wrong fields.
    c.send(json!({"type": "join", "call_cid": 7})).await;
    let e = c.next().await;
    assert_eq!(e["code"], "invalid_json", "{e}");
    assert_eq!(e["request"], "join");
    c.ping().await;
}

#[tokio::test]
async fn unknown_message_type_gets_an_error_and_the_socket_stays() {
    let s = Server::start().await;
    let mut c = s.connect("u", Role::User).await;
    c.send(json!({"type": "fly", "to": "moon"})).await;
    let e = c.next().await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "unknown_message");
    assert_eq!(e["request"], "fly");
    c.ping().await;
    c.send(json!({"no_type": true})).await;
    let e = c.next().await;
    assert_eq!(e["code"], "unknown_message");
    c.ping().await;
    // Still usable for a join afterwards.
    c.join("default:after", true).await;
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let s = Server::start().await;
    let limit = s.state.config.limits.max_message_bytes;
    let mut c = s.connect("u", Role::User).await;
    c.join("default:big", true).await;
    let mut other = s.connect("o", Role::User).await;
    other.join("default:big", false).await;
    let pad = "x".repeat(limit + 1);
    c.send(json!({"type": "ping", "pad": pad})).await;
    assert_eq!(c.close_code(WAIT).await, u16::from(CloseCode::Size));
    // The closed session left the call.
    let left = other.wait_for("call.session_participant_left").await;
    assert_eq!(left["participant"]["user_id"], "u");
}

#[tokio::test]
async fn very_large_message_closes_with_1009() {
    let s = Server::start().await;
    let limit = s.state.config.limits.max_message_bytes;
    let mut c = s.connect("u", Role::User).await;
    c.ping().await;
    // Far above any internal cap.
    c.send_text("y".repeat(limit * 16)).await;
    assert_eq!(c.close_code(WAIT).await, 1009);
}

#[tokio::test]
async fn dropped_socket_leaves_the_call_without_a_resume_grace() {
    // With a grace period the session waits for a `resume` first (tests/resume_ws.rs).
    let mut config = Config::default();
    config.limits.resume_grace_secs = 0;
    let s = Server::start_with(config).await;
    let mut a = s.connect("a", Role::User).await;
    a.join("default:drop", true).await;
    let mut b = s.connect("b", Role::User).await;
    b.join("default:drop", false).await;
    a.wait_for("call.session_participant_joined").await;
    // Drop without a close handshake.
    drop(b);
    let left = a.wait_for("call.session_participant_left").await;
    assert_eq!(left["participant"]["user_id"], "b");
    assert_eq!(left["reason"], "disconnected");
}

#[tokio::test]
async fn leave_tells_the_others() {
    let s = Server::start().await;
    let mut a = s.connect("a", Role::User).await;
    a.join("default:leave", true).await;
    let mut b = s.connect("b", Role::User).await;
    b.join("default:leave", false).await;
    b.send(json!({"type": "leave"})).await;
    b.wait_for("left").await;
    let left = a.wait_for("call.session_participant_left").await;
    assert_eq!(left["reason"], "left");
    // The same socket can join again.
    b.join("default:leave", false).await;
}

#[tokio::test]
async fn kick_removes_the_user_who_may_rejoin() {
    let s = Server::start().await;
    let mut host = s.connect("host", Role::Host).await;
    host.join("default:kick", true).await;
    let mut u = s.connect("u", Role::User).await;
    u.join("default:kick", false).await;
    // A user cannot kick.
    let (st, v) = s
        .post(
            "u",
            Role::User,
            "/v1/calls/default/kick/kick",
            json!({"user_id": "host"}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(v["capability"], "kick-user");

    s.post_ok(
        "host",
        Role::Host,
        "/v1/calls/default/kick/kick",
        json!({"user_id": "u"}),
    )
    .await;
    let k = u.wait_for("call.kicked_user").await;
    assert_eq!(k["user_id"], "u");
    assert_eq!(k["kicked_by"], "host");
    let l = u.wait_for("left").await;
    assert_eq!(l["call_cid"], "default:kick");
    let pl = host
        .wait_until("call.session_participant_left", |m| {
            m["participant"]["user_id"] == "u"
        })
        .await;
    assert_eq!(pl["reason"], "kicked");
    // The kicked socket is no longer in the call.
    u.send(json!({"type": "leave"})).await;
    let e = u.wait_for("error").await;
    assert_eq!(e["code"], "bad_request");
    // Kick is not a block.
    u.join("default:kick", false).await;
}

#[tokio::test]
async fn end_call_reaches_everyone_and_refuses_rejoin() {
    let s = Server::start().await;
    let mut host = s.connect("host", Role::Host).await;
    host.join("default:end", true).await;
    let mut u = s.connect("u", Role::User).await;
    u.join("default:end", false).await;
    s.post_ok("host", Role::Host, "/v1/calls/default/end/end", json!({}))
        .await;
    for c in [&mut host, &mut u] {
        let e = c.wait_for("call.ended").await;
        assert_eq!(e["ended_by"], "host");
        c.wait_for("left").await;
    }
    assert_eq!(s.state.session_count(), 0);
    u.join_refused("default:end", "call_ended").await;
    host.join_refused("default:end", "call_ended").await;
    // An admin holds join-ended-call.
    let mut admin = s.connect("adm", Role::Admin).await;
    admin.join("default:end", false).await;
}

#[tokio::test]
async fn blocked_user_is_refused_until_unblocked() {
    let s = Server::start().await;
    let mut host = s.connect("host", Role::Host).await;
    host.join("default:blk", true).await;
    let mut u = s.connect("u", Role::User).await;
    u.join("default:blk", false).await;
    s.post_ok(
        "host",
        Role::Host,
        "/v1/calls/default/blk/block",
        json!({"user_id": "u"}),
    )
    .await;
    let b = u.wait_for("call.blocked_user").await;
    assert_eq!(b["user_id"], "u");
    u.wait_for("left").await;
    u.join_refused("default:blk", "blocked").await;
    // A new connection of the same user, even with a host token, is refused too.
    let mut u2 = s.connect("u", Role::Host).await;
    u2.join_refused("default:blk", "blocked").await;
    s.post_ok(
        "host",
        Role::Host,
        "/v1/calls/default/blk/unblock",
        json!({"user_id": "u"}),
    )
    .await;
    u.join("default:blk", false).await;
}

#[tokio::test]
async fn moderator_mute_stops_publishing_and_is_announced() {
    let s = Server::start().await;
    let mut host = s.connect("host", Role::Host).await;
    host.join("default:mute", true).await;
    let mut u = s.connect("u", Role::User).await;
    u.join("default:mute", false).await;
    s.post_ok(
        "host",
        Role::Host,
        "/v1/calls/default/mute/mute_users",
        json!({"user_ids": ["u"], "audio": true}),
    )
    .await;
    let m = u.wait_for("call.user_muted").await;
    assert_eq!(m["muted_user_ids"], json!(["u"]));
    assert_eq!(m["sources"], json!(["microphone"]));
    assert_eq!(m["from_user_id"], "host");
    host.wait_for("call.user_muted").await;
}

#[tokio::test]
async fn join_errors() {
    let s = Server::start().await;
    let mut c = s.connect("u", Role::User).await;
    // Unknown call without create.
    c.join_refused("default:ghost", "not_found").await;
    // A listener cannot create an audio room.
    c.send(json!({"type": "join", "call_cid": "audio_room:new", "create": true}))
        .await;
    let e = c.next().await;
    assert_eq!(e["code"], "missing_capability", "{e}");
    assert_eq!(e["capability"], "create-call");
    assert_eq!(e["request"], "join");
    // Join twice.
    c.join("default:twice", true).await;
    c.send(json!({"type": "join", "call_cid": "default:twice"}))
        .await;
    assert_eq!(c.next().await["code"], "already_joined");
    // Actions before join.
    let mut d = s.connect("d", Role::User).await;
    d.send(json!({"type": "request_permission", "permissions": ["send-audio"]}))
        .await;
    assert_eq!(d.next().await["code"], "bad_request");
    // A token limited to another call.
    let other = "default:other".parse().unwrap();
    let t = s
        .state
        .auth
        .mint("w", Some(&other), None, false, 3600)
        .unwrap();
    let mut w = s.connect_token("w", &t).await;
    w.join_refused("default:twice", "wrong_call").await;
}

#[tokio::test]
async fn bad_tokens_are_refused_before_upgrade() {
    let s = Server::start().await;
    let expired = s
        .state
        .auth
        .sign(&Claims {
            sub: "u".into(),
            exp: unix_now() - 3600,
            iat: 0,
            call: None,
            role: None,
            admin: false,
        })
        .unwrap();
    assert_eq!(s.refused_upgrade(&expired).await, 401);
    let forged = Auth::new("devkey", "wrong-secret")
        .mint("u", None, None, true, 3600)
        .unwrap();
    assert_eq!(s.refused_upgrade(&forged).await, 401);
    assert_eq!(s.refused_upgrade("").await, 401);
}

/// The largest frame payload the server writes (`MAX_FRAME` in control/src/signal/socket.rs).
const SERVER_MAX_FRAME: usize = 2 << 10;

#[tokio::test]
async fn a_large_join_snapshot_arrives_whole_in_bounded_frames() {
    let s = Server::start().await;
    // 12 participants with 800 bytes of custom data each (2-byte characters, so fragment cuts
    // could fall inside one): the snapshot is about 11 KiB.
    let bio = "é".repeat(400);
    let mut others = Vec::new();
    for i in 0..12 {
        let mut c = s.connect(&format!("u{i}"), Role::User).await;
        c.send(
            json!({"type": "join", "call_cid": "default:big", "create": i == 0,
            "settings": {"custom": {"bio": bio, "i": i}}}),
        )
        .await;
        c.wait_for("joined").await;
        others.push(c);
    }
    // A client whose tungstenite refuses any frame longer than the server's bound (it would
    // fail with a capacity error) but takes whole messages of any size.
    let config = WebSocketConfig::default()
        .max_frame_size(Some(SERVER_MAX_FRAME))
        .max_message_size(Some(1 << 20));
    let (ws, _) = timeout(
        WAIT,
        connect_async_with_config(s.url("late", Role::User), Some(config), false),
    )
    .await
    .expect("connect timed out")
    .expect("connect failed");
    let mut late = Client {
        ws,
        name: "late".to_owned(),
        pending: Default::default(),
    };
    let joined = late.join("default:big", false).await;
    assert!(
        joined.to_string().len() > 4 * SERVER_MAX_FRAME,
        "the snapshot spans several frames"
    );
    let participants = joined["call"]["participants"].as_array().unwrap();
    assert_eq!(participants.len(), 13);
    let mut seen: Vec<i64> = participants
        .iter()
        .filter(|p| p["user_id"] != "late")
        .map(|p| {
            assert_eq!(p["custom"]["bio"], bio.as_str(), "{p}");
            p["custom"]["i"].as_i64().unwrap()
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..12).collect::<Vec<_>>());
    // The socket is fine afterwards (the next message is whole too).
    late.ping().await;
}
