//! Ringing scenarios over the user-level `/v1/signal` socket against a real server on
//! 127.0.0.1:0 (no media plane): accept on one of two devices, reject, busy, cancel, missed (a
//! short ring timeout from the call type's configuration), group calls, end, the switch to video,
//! and direct-call tokens. Every wait is bounded (`ws_support::WAIT`); nothing sleeps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ws_support;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::http::{Method, StatusCode};
use greenroom_control::config::Config;
use greenroom_control::policy::CallTypeOverride;
use greenroom_control::{app, start_state, AppState};
use greenroom_proto::CallType;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use ws_support::{http, Client};

/// A data directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        TempDir(std::env::temp_dir().join(format!(
            "greenroom-ring-ws-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        )))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Server {
    state: Arc<AppState>,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Server {
    async fn start() -> Server {
        Server::with_ring_timeout(None).await
    }

    /// A server whose `default` call type rings for `ms` (when given).
    async fn with_ring_timeout(ms: Option<u64>) -> Server {
        let dir = TempDir::new();
        let mut config = Config::default();
        config.server.data_dir = dir.0.clone();
        // A dropped socket's session leaves after 1 s (the resume grace period).
        config.limits.resume_grace_secs = 1;
        if let Some(ms) = ms {
            config.call_types.insert(
                CallType::Default,
                CallTypeOverride {
                    ring_timeout_ms: Some(ms),
                    ..CallTypeOverride::default()
                },
            );
        }
        let state = start_state(config, false).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = app(state.clone());
        tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Server {
            state,
            addr,
            _dir: dir,
        }
    }

    fn token(&self, user: &str) -> String {
        self.state.auth.mint(user, None, None, false, 3600).unwrap()
    }

    fn admin_token(&self) -> String {
        self.state
            .auth
            .mint("backend", None, None, true, 3600)
            .unwrap()
    }

    /// A device of `user`.
    async fn device(&self, user: &str, device: &str) -> Client {
        let token = self.token(user);
        self.device_with_token(user, device, &token).await
    }

    async fn device_with_token(&self, user: &str, device: &str, token: &str) -> Client {
        let url = format!(
            "ws://{}/v1/signal?token={token}&device_id={device}",
            self.addr
        );
        let mut c = Client::connect(&url, &format!("{user}/{device}")).await;
        // The device is registered once the socket answers; keep what came before the pong.
        let early = c.drain().await;
        c.pending.extend(early);
        c
    }

    /// `GET path` with `token` through the server's router.
    async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        http(&self.state, Method::GET, token, path, Value::Null).await
    }

    /// `POST path` with `token` and the JSON `body` through the server's router.
    async fn post(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        http(&self.state, Method::POST, token, path, body).await
    }

    async fn history(&self, user: &str) -> Vec<Value> {
        let (s, v) = self
            .get(&self.token(user), &format!("/v1/users/{user}/calls"))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["calls"].as_array().unwrap().clone()
    }
}

impl Client {
    /// Pings and returns every message received before the pong: everything the server queued
    /// for this socket before it read the ping.
    async fn drain(&mut self) -> Vec<Value> {
        self.send(json!({"type": "ping"})).await;
        let mut got: Vec<Value> = self.pending.drain(..).collect();
        loop {
            let m = self.next().await;
            if m["type"] == "pong" {
                return got;
            }
            got.push(m);
        }
    }

    /// Types of the messages received so far (see [`Client::drain`]).
    async fn drained_types(&mut self) -> Vec<String> {
        self.drain()
            .await
            .iter()
            .map(|m| m["type"].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    /// Sends a ring request and returns the `ring.ok` reply; panics on an error reply. Events
    /// that arrive before the reply stay queued for later reads.
    async fn ring(&mut self, v: Value) -> Value {
        let request = v["type"].clone();
        let reply = self
            .reply_to(v, |m| m["type"] == "ring.ok" && m["request"] == request)
            .await;
        assert!(
            reply["type"] == "ring.ok",
            "{}: {request} failed: {reply}",
            self.name
        );
        reply
    }

    /// Sends a ring request that must fail; returns the error.
    async fn ring_refused(&mut self, v: Value) -> Value {
        let request = v["type"].clone();
        let reply = self
            .reply_to(v, |m| m["type"] == "ring.ok" && m["request"] == request)
            .await;
        assert!(
            reply["type"] == "error",
            "{}: {request} succeeded",
            self.name
        );
        reply
    }

    /// Sends `v` and reads until its reply (`ok` or an `error` naming the request); the other
    /// messages read meanwhile are kept, in order, for the next reads.
    async fn reply_to(&mut self, v: Value, ok: impl Fn(&Value) -> bool) -> Value {
        let request = v["type"].clone();
        self.send(v).await;
        let mut skipped = VecDeque::new();
        loop {
            let m = self.next().await;
            if ok(&m) || (m["type"] == "error" && m["request"] == request) {
                skipped.extend(self.pending.drain(..));
                self.pending = skipped;
                return m;
            }
            skipped.push_back(m);
        }
    }

    async fn join(&mut self, cid: &str) -> Value {
        self.send(json!({"type": "join", "call_cid": cid})).await;
        self.wait_for("joined").await
    }
}

/// A ring request about one call: `{"type": kind, "call_cid": cid}`.
fn on_call(kind: &str, cid: &str) -> Value {
    json!({"type": kind, "call_cid": cid})
}

fn initiate(cid: &str, users: &[&str], kind: &str) -> Value {
    json!({"type": "ring_initiate", "call_cid": cid, "user_ids": users, "kind": kind})
}

fn outcome_count(outcome: &str) -> u64 {
    greenroom_control::metrics::RING_OUTCOMES
        .with_label_values(&[outcome])
        .get()
}

#[tokio::test]
async fn accept_on_one_device_stops_the_others_then_end() {
    let s = Server::start().await;
    let accepted_before = outcome_count("accepted");
    let mut alice = s.device("alice", "laptop").await;
    let mut phone = s.device("bob", "phone").await;
    let mut laptop = s.device("bob", "laptop").await;

    let ok = alice.ring(initiate("default:c1", &["bob"], "video")).await;
    let session = ok["call"]["session_id"].as_str().unwrap().to_owned();
    assert!(!session.is_empty());
    assert_eq!(ok["call"]["phase"], "ringing");
    assert_eq!(ok["call"]["ring_timeout_ms"], 15_000);
    for dev in [&mut phone, &mut laptop] {
        let ring = dev.wait_for("call.ring").await;
        assert_eq!(ring["call_cid"], "default:c1");
        assert_eq!(ring["caller_user_id"], "alice");
        assert_eq!(ring["kind"], "video");
    }
    // A device connecting while the call rings rings too.
    let mut watch = s.device("bob", "watch").await;
    let ring = watch.wait_for("call.ring").await;
    assert!(ring["ring_timeout_ms"].as_u64().unwrap() <= 15_000);

    let ok = phone.ring(on_call("ring_accept", "default:c1")).await;
    assert_eq!(ok["call"]["phase"], "active");
    let acc = alice.wait_for("call.accepted").await;
    assert_eq!(acc["user_id"], "bob");
    assert_eq!(acc["device_id"], "phone");
    laptop.wait_for("call.stop_ringing").await;
    watch.wait_for("call.stop_ringing").await;
    assert!(!phone
        .drained_types()
        .await
        .contains(&"call.stop_ringing".to_owned()));
    // The second device is too late.
    let err = laptop
        .ring_refused(on_call("ring_accept", "default:c1"))
        .await;
    assert!(err["message"]
        .as_str()
        .unwrap()
        .contains("already answered"));

    // Both join the media session the ring created.
    alice.join("default:c1").await;
    phone.join("default:c1").await;
    phone.ring(on_call("ring_end", "default:c1")).await;
    let ended = alice.wait_for("call.ended").await;
    assert_eq!(ended["ended_by"], "bob");
    // The media session is torn down: both sessions leave, the call has ended.
    alice.wait_for("left").await;
    phone.wait_for("left").await;
    assert_eq!(s.state.call_count(), 0);
    assert!(s
        .state
        .ringing
        .call(&"default:c1".parse().unwrap())
        .is_none());
    assert!(outcome_count("accepted") > accepted_before);

    let hist = s.history("bob").await;
    assert_eq!(hist.len(), 1);
    assert_eq!(hist[0]["session_id"], session.as_str());
    assert_eq!(hist[0]["outcome"], "accepted");
    assert_eq!(hist[0]["kind"], "video");
    assert_eq!(hist[0]["participants"], json!(["alice", "bob"]));
    assert!(hist[0]["duration_ms"].is_u64());
}

#[tokio::test]
async fn reject_tells_the_caller_and_records_it() {
    let s = Server::start().await;
    let mut alice = s.device("alice", "laptop").await;
    let mut phone = s.device("bob", "phone").await;
    let mut laptop = s.device("bob", "laptop").await;
    alice.ring(initiate("default:r1", &["bob"], "audio")).await;
    phone.wait_for("call.ring").await;
    laptop.wait_for("call.ring").await;
    phone
        .ring(json!({"type": "ring_reject", "call_cid": "default:r1", "reason": "declined"}))
        .await;
    let rej = alice.wait_for("call.rejected").await;
    assert_eq!(rej["user_id"], "bob");
    assert_eq!(rej["reason"], "declined");
    laptop.wait_for("call.stop_ringing").await;
    assert!(s
        .state
        .ringing
        .call(&"default:r1".parse().unwrap())
        .is_none());
    let hist = s.history("alice").await;
    assert_eq!(hist[0]["outcome"], "declined");
    assert_eq!(hist[0]["callee_user_ids"], json!(["bob"]));
    // A plain reject after the call is over is refused.
    let err = phone
        .ring_refused(on_call("ring_reject", "default:r1"))
        .await;
    assert_eq!(err["code"], "not_found");
}

#[tokio::test]
async fn a_callee_in_a_call_is_busy() {
    let s = Server::start().await;
    let mut alice = s.device("alice", "laptop").await;
    let mut bob = s.device("bob", "phone").await;
    let mut carol = s.device("carol", "phone").await;
    alice.ring(initiate("default:b1", &["bob"], "audio")).await;
    bob.wait_for("call.ring").await;
    bob.ring(on_call("ring_accept", "default:b1")).await;

    // carol rings bob over HTTP: bob is busy, the call is over at once.
    let (st, info) = s
        .post(
            &s.token("carol"),
            "/v1/calls/default/b2/ring",
            json!({"user_ids": ["bob"], "kind": "video"}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{info}");
    assert_eq!(info["phase"], "ended");
    assert_eq!(info["outcome"], "busy");
    assert_eq!(info["busy_user_ids"], json!(["bob"]));
    let rej = carol.wait_for("call.rejected").await;
    assert_eq!(rej["reason"], "busy");
    assert_eq!(rej["call_cid"], "default:b2");
    assert!(!bob.drained_types().await.contains(&"call.ring".to_owned()));
    let hist = s.history("carol").await;
    assert_eq!(hist[0]["outcome"], "busy");
}

#[tokio::test]
async fn cancel_stops_the_callee_and_ends_the_media_session() {
    let s = Server::start().await;
    let mut alice = s.device("alice", "laptop").await;
    let mut bob = s.device("bob", "phone").await;
    alice.ring(initiate("default:x1", &["bob"], "audio")).await;
    alice.join("default:x1").await;
    bob.wait_for("call.ring").await;
    // Only the caller may cancel.
    let err = bob.ring_refused(on_call("ring_cancel", "default:x1")).await;
    assert_eq!(err["code"], "unauthorized");
    alice.ring(on_call("ring_cancel", "default:x1")).await;
    let c = bob.wait_for("call.cancelled").await;
    assert_eq!(c["by"], "alice");
    alice.wait_for("left").await;
    assert_eq!(s.history("bob").await[0]["outcome"], "cancelled");
}

#[tokio::test]
async fn unanswered_calls_are_missed_after_the_call_types_timeout() {
    let s = Server::with_ring_timeout(Some(300)).await;
    let mut alice = s.device("alice", "laptop").await;
    let mut phone = s.device("bob", "phone").await;
    let mut laptop = s.device("bob", "laptop").await;
    let ok = alice.ring(initiate("default:m1", &["bob"], "audio")).await;
    assert_eq!(ok["call"]["ring_timeout_ms"], 300);
    let ring = phone.wait_for("call.ring").await;
    assert_eq!(ring["ring_timeout_ms"], 300);
    phone.wait_for("call.missed").await;
    laptop.wait_for("call.missed").await;
    let m = alice.wait_for("call.missed").await;
    assert_eq!(m["call_cid"], "default:m1");
    assert_eq!(s.history("alice").await[0]["outcome"], "missed");
    // Too late to accept.
    let err = phone
        .ring_refused(on_call("ring_accept", "default:m1"))
        .await;
    assert_eq!(err["code"], "not_found");
}

#[tokio::test]
async fn group_call_rings_everyone_proceeds_and_ends_with_the_last() {
    let s = Server::start().await;
    let (st, g) = s
        .post(
            &s.token("alice"),
            "/v1/groups",
            json!({"id": "team", "members": ["bob", "carol"]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{g}");
    assert_eq!(g["members"], json!(["alice", "bob", "carol"]));
    let (st, _) = s.get(&s.token("dave"), "/v1/groups/team").await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, g) = s
        .post(
            &s.token("bob"),
            "/v1/groups/team/members",
            json!({"add": ["dave"]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{g}");
    let (st, g) = s.get(&s.token("dave"), "/v1/groups/team").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(g["members"], json!(["alice", "bob", "carol", "dave"]));

    let mut alice = s.device("alice", "laptop").await;
    let mut bob = s.device("bob", "phone").await;
    let mut carol = s.device("carol", "phone").await;
    let mut dave = s.device("dave", "phone").await;
    let ok = alice
        .ring(json!({"type": "ring_initiate", "call_cid": "default:g1", "group_id": "team", "kind": "audio"}))
        .await;
    assert_eq!(ok["call"]["group_id"], "team");
    for c in [&mut bob, &mut carol, &mut dave] {
        let ring = c.wait_for("call.ring").await;
        assert_eq!(ring["group_id"], "team");
        assert_eq!(ring["members"], json!(["bob", "carol", "dave"]));
    }
    bob.ring(on_call("ring_accept", "default:g1")).await;
    assert_eq!(alice.wait_for("call.accepted").await["user_id"], "bob");
    carol.ring(on_call("ring_accept", "default:g1")).await;
    assert_eq!(alice.wait_for("call.accepted").await["user_id"], "carol");
    assert_eq!(bob.wait_for("call.accepted").await["user_id"], "carol");
    dave.ring(on_call("ring_reject", "default:g1")).await;
    for c in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(c.wait_for("call.rejected").await["user_id"], "dave");
    }

    for c in [&mut alice, &mut bob, &mut carol] {
        c.join("default:g1").await;
    }
    let cid = "default:g1".parse().unwrap();
    // The caller leaves: the call goes on.
    alice.send(json!({"type": "leave"})).await;
    alice.wait_for("left").await;
    let info = s.state.ringing.call(&cid).expect("still active");
    assert_eq!(info.participants, ["bob", "carol"]);
    bob.send(json!({"type": "leave"})).await;
    bob.wait_for("left").await;
    assert!(s.state.ringing.call(&cid).is_some());
    // The last one leaves: the call is over.
    carol.send(json!({"type": "leave"})).await;
    carol.wait_for("left").await;
    assert!(s.state.ringing.call(&cid).is_none());
    let rec = &s.history("dave").await[0];
    assert_eq!(rec["outcome"], "accepted");
    assert_eq!(rec["participants"], json!(["alice", "bob", "carol"]));
    assert!(rec["ended_at_ms"].is_u64());
}

#[tokio::test]
async fn switch_to_video_then_a_dropped_socket_ends_the_call() {
    let s = Server::start().await;
    let mut alice = s.device("alice", "laptop").await;
    let mut bob = s.device("bob", "phone").await;
    alice.ring(initiate("default:e1", &["bob"], "audio")).await;
    bob.wait_for("call.ring").await;
    bob.ring(on_call("ring_accept", "default:e1")).await;
    alice.join("default:e1").await;
    let joined = bob.join("default:e1").await;
    assert_eq!(joined["call"]["participants"].as_array().unwrap().len(), 2);

    alice
        .ring(on_call("ring_request_video", "default:e1"))
        .await;
    assert_eq!(
        bob.wait_for("call.video_requested").await["requested_by"],
        "alice"
    );
    bob.ring(on_call("ring_accept_video", "default:e1")).await;
    for c in [&mut alice, &mut bob] {
        let sw = c.wait_for("call.switched_to_video").await;
        assert_eq!(sw["requested_by"], "alice");
        assert_eq!(sw["accepted_by"], "bob");
    }

    // alice's socket drops: her session leaves (after the resume grace), the one-to-one call
    // ends for bob.
    drop(alice);
    let ended = bob.wait_for("call.ended").await;
    assert_eq!(ended["ended_by"], "alice");
    bob.wait_for("left").await;
    let rec = &s.history("bob").await[0];
    assert_eq!(rec["kind"], "video");
    assert_eq!(rec["outcome"], "accepted");
}

#[tokio::test]
async fn direct_call_tokens_are_minted_by_admins_only() {
    let s = Server::start().await;
    let (st, _) = s
        .post(
            &s.token("alice"),
            "/v1/tokens",
            json!({"user_id": "bob", "call_cid": "default:d1"}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, t) = s
        .post(
            &s.admin_token(),
            "/v1/tokens",
            json!({"user_id": "bob", "call_cid": "default:d1", "ttl": 600}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{t}");
    let bob_token = t["token"].as_str().unwrap().to_owned();
    let claims = s.state.auth.verify(&bob_token).unwrap();
    assert_eq!(claims.sub, "bob");
    assert_eq!(claims.call.as_deref(), Some("default:d1"));

    // bob's call-limited device rings only for that call.
    let mut alice = s.device("alice", "laptop").await;
    let mut bob = s.device_with_token("bob", "kiosk", &bob_token).await;
    alice
        .ring(initiate("default:other", &["bob"], "audio"))
        .await;
    assert!(!bob.drained_types().await.contains(&"call.ring".to_owned()));
    let err = bob
        .ring_refused(on_call("ring_accept", "default:other"))
        .await;
    assert_eq!(err["code"], "wrong_call");
    alice.ring(on_call("ring_cancel", "default:other")).await;
    alice.ring(initiate("default:d1", &["bob"], "audio")).await;
    assert_eq!(bob.wait_for("call.ring").await["call_cid"], "default:d1");
    bob.ring(on_call("ring_accept", "default:d1")).await;
    assert_eq!(alice.wait_for("call.accepted").await["device_id"], "kiosk");
    // The direct call's media session, joined with call settings.
    bob.send(json!({"type": "join", "call_cid": "default:d1",
        "settings": {"audio_only": true, "start_audio_muted": true}}))
        .await;
    let joined = bob.wait_for("joined").await;
    assert_eq!(joined["call"]["cid"], "default:d1");
    // A user may not read another user's history; an admin token may.
    let (st, _) = s.get(&s.token("bob"), "/v1/users/alice/calls").await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s.get(&s.admin_token(), "/v1/users/alice/calls").await;
    assert_eq!(st, StatusCode::OK);
}
