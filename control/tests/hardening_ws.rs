//! Signaling hardening (issue 13): no ghost participants when removals race a leave and a
//! re-join, slow clients are closed for real, unanswered offers are re-sent, typed errors,
//! idle sockets, per-user socket cap, rate limit, calls freed after their TTL, every socket
//! closed at shutdown, one lock per call. A real server on 127.0.0.1:0 (no media plane) and
//! tokio-tungstenite clients; every wait is bounded by a timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ws_support;

use std::collections::BTreeSet;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use greenroom_control::auth::unix_now_ms;
use greenroom_control::config::Config;
use greenroom_proto::{CallCid, Role, ServerMessage, SignalMessage};
use serde_json::{json, Value};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::connect_async;

use ws_support::{Client, Server, WAIT};

impl Server {
    async fn with(f: impl FnOnce(&mut Config)) -> Server {
        let mut config = Config::default();
        f(&mut config);
        Server::start_with(config).await
    }

    async fn post_ok(&self, user: &str, path: &str, body: Value) -> Value {
        let token = self.token(user, Role::Host);
        let (s, v) = self.http(Method::POST, &token, path, body).await;
        assert_eq!(s, StatusCode::OK, "POST {path}: {v}");
        v
    }

    async fn get_status(&self, path: &str) -> StatusCode {
        let token = self.token("host", Role::Host);
        self.http(Method::GET, &token, path, Value::Null).await.0
    }

    /// Participant ids of a call as the server holds them (empty if the call is gone).
    fn participants(&self, cid: &str) -> BTreeSet<String> {
        let cid: CallCid = cid.parse().unwrap();
        self.state
            .read_call(&cid, |c| {
                c.state()
                    .participants
                    .into_iter()
                    .map(|p| p.participant_id)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Client {
    async fn join(&mut self, cid: &str, create: bool) -> String {
        self.send(json!({"type": "join", "call_cid": cid, "create": create}))
            .await;
        let m = self.wait_for("joined").await;
        m["participant"]["participant_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn ping(&mut self) {
        self.send(json!({"type": "ping"})).await;
        self.wait_for("pong").await;
    }
}

/// What a client believes about its own session and the call's others, from what it read.
#[derive(Default)]
struct View {
    own: Option<String>,
    others: BTreeSet<String>,
}

impl View {
    fn apply(&mut self, m: &Value) {
        let pid = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        match m["type"].as_str().unwrap_or_default() {
            "joined" => {
                self.own = Some(pid(&m["participant"]["participant_id"]));
                self.others = m["call"]["participants"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| pid(&p["participant_id"]))
                    .filter(|p| Some(p) != self.own.as_ref())
                    .collect();
            }
            // A `left` names its session; one for an older session changes nothing.
            "left" if self.own.as_deref() == m["participant_id"].as_str() => {
                self.own = None;
                self.others.clear();
            }
            "call.session_participant_joined" => {
                let p = pid(&m["participant"]["participant_id"]);
                if Some(&p) != self.own.as_ref() {
                    self.others.insert(p);
                }
            }
            "call.session_participant_left" => {
                self.others
                    .remove(&pid(&m["participant"]["participant_id"]));
            }
            _ => {}
        }
    }
}

/// The socket still owns its session: `leave` answers `left` for it (a socket that lost track
/// of its session answers `error`, and the session would stay in the call forever).
async fn leave_own(u: &mut Client, uv: &mut View, round: usize) {
    let pid = uv.own.clone().expect("joined");
    u.send(json!({"type": "leave"})).await;
    loop {
        let m = u.next().await;
        assert_ne!(
            m["type"], "error",
            "round {round}: the socket lost its session: {m}"
        );
        uv.apply(&m);
        if m["type"] == "left" && m["participant_id"] == pid.as_str() {
            return;
        }
    }
}

/// Reads both clients until what they believe matches the server (within a bound): the
/// server's sessions of `cid` are exactly the sessions the sockets believe they hold, and the
/// host sees exactly the others. A ghost (a session no socket owns) never converges.
async fn settle(
    s: &Server,
    cid: &str,
    host: &mut Client,
    hv: &mut View,
    u: &mut Client,
    uv: &mut View,
    round: usize,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        let server = s.participants(cid);
        let mut believed: BTreeSet<String> = BTreeSet::new();
        believed.extend(hv.own.clone());
        believed.extend(uv.own.clone());
        let host_others: BTreeSet<String> = uv.own.iter().cloned().collect();
        if server == believed
            && hv.others == host_others
            && s.state.session_count() == believed.len()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "round {round}: ghost: server {server:?}, sockets believe {believed:?}, host sees {:?}, sessions {}",
            hv.others,
            s.state.session_count()
        );
        tokio::select! {
            Some(m) = u.try_next(Duration::from_millis(100)) => uv.apply(&m),
            Some(m) = host.try_next(Duration::from_millis(100)) => hv.apply(&m),
            else => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_racing_leave_and_rejoin_leaves_no_ghost() {
    let s = Server::start().await;
    let cid = "default:race";
    let mut host = s.connect("host", Role::Host).await;
    let mut hv = View::default();
    host.send(json!({"type": "join", "call_cid": cid, "create": true}))
        .await;
    hv.apply(&host.wait_for("joined").await);
    let mut u = s.connect("u", Role::User).await;
    let mut uv = View::default();
    for round in 0..200 {
        if uv.own.is_none() {
            u.send(json!({"type": "join", "call_cid": cid})).await;
            uv.apply(&u.wait_for("joined").await);
        }
        // Both sides at once, in varying interleavings: the kick lands before, between or
        // after the socket's `leave` and `join` reach the server.
        u.send(json!({"type": "leave"})).await;
        u.send(json!({"type": "join", "call_cid": cid})).await;
        // Sweeps the kick across the window in which the frames reach the server.
        for _ in 0..(round % 20) * 500 {
            std::hint::spin_loop();
        }
        s.post_ok(
            "host",
            "/v1/calls/default/race/kick",
            json!({"user_id": "u"}),
        )
        .await;
        // The re-join always gets its `joined` (a kick is not a block).
        loop {
            let m = u.next().await;
            uv.apply(&m);
            if m["type"] == "joined" {
                break;
            }
        }
        settle(&s, cid, &mut host, &mut hv, &mut u, &mut uv, round).await;
        if uv.own.is_some() {
            leave_own(&mut u, &mut uv, round).await;
            settle(&s, cid, &mut host, &mut hv, &mut u, &mut uv, round).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_of_call_racing_leave_and_join_elsewhere_leaves_no_ghost() {
    let s = Server::start().await;
    let mut host = s.connect("host", Role::Host).await;
    let mut u = s.connect("u", Role::User).await;
    for round in 0..150 {
        let a = format!("default:end{round}");
        let b = format!("default:other{round}");
        let host_pid = host.join(&a, true).await;
        let u_old = u.join(&a, false).await;
        u.send(json!({"type": "leave"})).await;
        u.send(json!({"type": "join", "call_cid": b, "create": true}))
            .await;
        for _ in 0..(round % 20) * 500 {
            std::hint::spin_loop();
        }
        s.post_ok(
            "host",
            &format!("/v1/calls/default/end{round}/end"),
            json!({}),
        )
        .await;
        let mut uv = View {
            own: Some(u_old.clone()),
            others: BTreeSet::new(),
        };
        loop {
            let m = u.next().await;
            uv.apply(&m);
            if m["type"] == "joined" {
                break;
            }
        }
        // The end removed the host too (it sees u's old session leave unless the end removed
        // the host first).
        host.wait_until("left", |m| m["participant_id"] == host_pid.as_str())
            .await;
        let deadline = Instant::now() + WAIT;
        loop {
            let server = s.participants(&b);
            let believed: BTreeSet<String> = uv.own.iter().cloned().collect();
            if server == believed && believed.len() == 1 && s.state.session_count() == 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: ghost: server {server:?}, socket believes {believed:?}, sessions {}",
                s.state.session_count()
            );
            if let Some(m) = u.try_next(Duration::from_millis(100)).await {
                uv.apply(&m);
            }
        }
        assert!(s.participants(&a).is_empty());
        leave_own(&mut u, &mut uv, round).await;
        assert!(s.participants(&b).is_empty(), "round {round}");
        assert_eq!(s.state.session_count(), 0, "round {round}");
    }
}

#[tokio::test]
async fn left_names_the_session() {
    let s = Server::start().await;
    let mut u = s.connect("u", Role::User).await;
    let pid = u.join("default:named", true).await;
    u.send(json!({"type": "leave"})).await;
    let l = u.wait_for("left").await;
    assert_eq!(l["participant_id"], pid.as_str());
    assert_eq!(l["call_cid"], "default:named");
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_while_the_call_goes_on() {
    let s = Server::start().await;
    let mut host = s.connect("host", Role::Host).await;
    host.join("default:slow", true).await;
    let mut slow = s.connect("slow", Role::User).await;
    let slow_pid = slow.join("default:slow", false).await;
    host.wait_for("call.session_participant_joined").await;
    // Server traffic to the slow session (it never reads): large messages fill the TCP
    // buffers, then the queue overflows.
    let big = "x".repeat(64 * 1024);
    for i in 0..3000 {
        if s.state.session_count() < 2 {
            break;
        }
        let sources = if i < 300 { big.clone() } else { String::new() };
        s.state.send_to(
            &slow_pid,
            ServerMessage::Signal(SignalMessage::StopPublishing {
                sources: vec![],
                reason: sources,
            }),
        );
        if i % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // The others see it leave as too slow, and the call goes on.
    let left = host
        .wait_until("call.session_participant_left", |m| {
            m["participant"]["participant_id"] == slow_pid.as_str()
        })
        .await;
    assert_eq!(left["reason"], "too_slow");
    assert_eq!(s.state.session_count(), 1);
    host.ping().await;
    // The slow client reads at last: what was sent, then the close frame 1008.
    assert_eq!(slow.close_code(WAIT).await, 1008);
}

#[tokio::test]
async fn an_unanswered_subscriber_offer_is_sent_again() {
    let s = Server::with(|c| c.limits.subscriber_offer_timeout_ms = 300).await;
    let mut u = s.connect("u", Role::User).await;
    let pid = u.join("default:offer", true).await;
    s.state
        .on_sfu_event(greenroom_sfu::SfuEvent::SubscriberOffer {
            participant_id: pid.clone(),
            sdp: "v=0 offer-1".into(),
            tracks: vec![],
        });
    let first = u.wait_for("subscriber_offer").await;
    assert_eq!(first["sdp"], "v=0 offer-1");
    // Not answered: the same offer comes again, and again.
    for _ in 0..2 {
        let again = u.wait_for("subscriber_offer").await;
        assert_eq!(again["sdp"], "v=0 offer-1");
    }
    // Answered (the answer fails here: no media plane): no more re-sends.
    u.send(json!({"type": "subscriber_answer", "sdp": "v=0 answer"}))
        .await;
    let e = u.wait_for("error").await;
    assert_eq!(e["request"], "subscriber_answer");
    // Drain an offer that may have been on its way, then watch several timeouts pass.
    tokio::time::sleep(Duration::from_millis(400)).await;
    while u.try_next(Duration::from_millis(50)).await.is_some() {}
    tokio::time::sleep(Duration::from_millis(1200)).await;
    u.send(json!({"type": "ping"})).await;
    let m = u.next().await;
    assert_eq!(m["type"], "pong", "an answered offer was sent again: {m}");
}

#[tokio::test]
async fn a_bad_value_in_a_known_message_is_invalid_json_not_unknown() {
    let s = Server::start().await;
    let mut u = s.connect("u", Role::User).await;
    u.join("default:typed", true).await;
    u.send(json!({"type": "set_muted", "source": "keyboard", "muted": true}))
        .await;
    let e = u.wait_for("error").await;
    assert_eq!(e["code"], "invalid_json", "{e}");
    assert_eq!(e["request"], "set_muted");
    assert!(e["message"].as_str().unwrap().contains("keyboard"), "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("field `source`"),
        "{e}"
    );
    // A ring message with a bad value is invalid too, an unknown ring type is unknown.
    u.send(json!({"type": "ring_accept", "call_cid": 5})).await;
    let e = u.wait_for("error").await;
    assert_eq!(e["code"], "invalid_json", "{e}");
    assert_eq!(e["request"], "ring_accept");
    u.send(json!({"type": "ring_fly"})).await;
    let e = u.wait_for("error").await;
    assert_eq!(e["code"], "unknown_message", "{e}");
    assert_eq!(e["request"], "ring_fly");
    u.ping().await;
}

#[tokio::test]
async fn two_sources_on_one_mid_are_refused() {
    let s = Server::start().await;
    let mut u = s.connect("u", Role::User).await;
    u.join("default:mids", true).await;
    u.send(json!({"type": "publish", "sdp": "v=0", "tracks": [
        {"mid": "0", "source": "microphone"}, {"mid": "0", "source": "camera"}]}))
        .await;
    let e = u.wait_for("error").await;
    assert_eq!(e["code"], "bad_request", "{e}");
    assert_eq!(e["request"], "publish");
    // Distinct mids pass the check (and reach the absent media plane).
    u.send(json!({"type": "publish", "sdp": "v=0", "tracks": [
        {"mid": "0", "source": "microphone"}, {"mid": "1", "source": "camera"}]}))
        .await;
    let e = u.wait_for("error").await;
    assert_eq!(e["code"], "media_error", "{e}");
}

#[tokio::test]
async fn a_silent_socket_outside_a_call_is_closed_but_pings_and_joins_keep_it() {
    let s = Server::with(|c| c.limits.idle_ws_secs = 1).await;
    let mut silent = s.connect("silent", Role::User).await;
    let mut pinger = s.connect("pinger", Role::User).await;
    let mut joined = s.connect("joined", Role::User).await;
    joined.join("default:idle", true).await;
    let started = Instant::now();
    // The pinger pings (for longer than the idle time) while the silent one is closed.
    let pings = async {
        while started.elapsed() < Duration::from_millis(2500) {
            pinger.ping().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        pinger.ping().await;
    };
    let (code, ()) = tokio::join!(silent.close_code(WAIT), pings);
    assert_eq!(code, 4408);
    // The joined socket said nothing for as long and is still in its call.
    joined.ping().await;
    assert_eq!(s.state.session_count(), 1);
}

#[tokio::test]
async fn sockets_per_user_are_capped() {
    let s = Server::with(|c| c.limits.max_connections_per_user = 2).await;
    let a = s.connect("u", Role::User).await;
    let _b = s.connect("u", Role::User).await;
    match timeout(WAIT, connect_async(s.url("u", Role::User)))
        .await
        .unwrap()
    {
        Ok(_) => panic!("a third socket was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429);
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["code"], "too_many_connections");
        }
        Err(e) => panic!("unexpected error {e}"),
    }
    // Another user is not affected; a closed socket frees its place.
    let _o = s.connect("other", Role::User).await;
    drop(a);
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Ok(_)) = timeout(WAIT, connect_async(s.url("u", Role::User))).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed socket's place was not freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_flood_is_rate_limited_with_one_error() {
    let s = Server::with(|c| {
        c.limits.signal_rate_per_sec = 5;
        c.limits.signal_burst = 10;
    })
    .await;
    let mut u = s.connect("u", Role::User).await;
    for _ in 0..200 {
        u.send(json!({"type": "ping"})).await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    while let Some(m) = u.try_next(Duration::from_millis(500)).await {
        match m["type"].as_str().unwrap() {
            "pong" => pongs += 1,
            "error" => {
                assert_eq!(m["code"], "rate_limited", "{m}");
                limited += 1;
            }
            t => panic!("unexpected {t}"),
        }
    }
    assert!(pongs >= 10, "the burst is served: {pongs}");
    assert!(pongs < 200, "the flood was not limited");
    assert!(limited >= 1, "no rate_limited error");
    assert!(
        limited < 200 - pongs,
        "one error per run of dropped messages"
    );
    // Tokens come back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    u.ping().await;
}

#[tokio::test]
async fn ended_and_empty_calls_are_freed_after_their_ttl() {
    let s = Server::start().await;
    // Never joined.
    s.post_ok("host", "/v1/calls/default/empty", json!({}))
        .await;
    // Ended.
    let mut h = s.connect("host", Role::Host).await;
    h.join("default:over", true).await;
    s.post_ok("host", "/v1/calls/default/over/end", json!({}))
        .await;
    h.wait_for("left").await;
    // In use: never freed.
    h.join("default:busy", true).await;
    let now = unix_now_ms();
    assert_eq!(s.state.free_expired_calls(now), 0, "nothing expired yet");
    assert_eq!(s.get_status("/v1/calls/default/over").await, StatusCode::OK);
    let ended_ttl = s.state.config.limits.ended_call_ttl_secs * 1000;
    let empty_ttl = s.state.config.limits.empty_call_ttl_secs * 1000;
    assert_eq!(s.state.free_expired_calls(now + ended_ttl + 1000), 1);
    assert_eq!(
        s.get_status("/v1/calls/default/over").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.get_status("/v1/calls/default/empty").await,
        StatusCode::OK
    );
    assert_eq!(s.state.free_expired_calls(now + empty_ttl + 1000), 1);
    assert_eq!(
        s.get_status("/v1/calls/default/empty").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(s.get_status("/v1/calls/default/busy").await, StatusCode::OK);
    assert_eq!(s.state.calls_in_memory(), 1);
    // A freed call may be created again.
    s.post_ok("host", "/v1/calls/default/over", json!({})).await;
}

#[tokio::test]
async fn the_background_sweep_frees_calls() {
    let s = Server::with(|c| {
        c.limits.ended_call_ttl_secs = 1;
        c.limits.empty_call_ttl_secs = 1;
    })
    .await;
    s.post_ok("host", "/v1/calls/default/brief", json!({}))
        .await;
    let deadline = Instant::now() + WAIT;
    while s.get_status("/v1/calls/default/brief").await == StatusCode::OK {
        assert!(Instant::now() < deadline, "the call was never freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(s.state.calls_in_memory(), 0);
}

#[tokio::test]
async fn shutdown_closes_sockets_that_never_joined() {
    let s = Server::start().await;
    let mut idle = s.connect("idle", Role::User).await;
    let mut joined = s.connect("joined", Role::User).await;
    joined.join("default:bye", true).await;
    idle.ping().await;
    assert_eq!(s.state.socket_count(), 2);
    s.state.close_all("server shutting down");
    assert_eq!(idle.close_code(WAIT).await, 1001);
    assert_eq!(joined.close_code(WAIT).await, 1001);
}

#[tokio::test]
async fn one_call_is_usable_while_another_calls_lock_is_held() {
    let s = Server::start().await;
    s.post_ok("host", "/v1/calls/default/one", json!({})).await;
    s.post_ok("host", "/v1/calls/default/two", json!({})).await;
    let state = s.state.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    // With one lock for every call this nests the same lock and never returns.
    std::thread::spawn(move || {
        let one: CallCid = "default:one".parse().unwrap();
        let two: CallCid = "default:two".parse().unwrap();
        let r = state.read_call(&one, |_| state.read_call(&two, |c| c.cid().to_string()));
        let _ = tx.send(r.unwrap().unwrap());
    });
    let got = rx
        .recv_timeout(WAIT)
        .expect("call two waited for call one's lock");
    assert_eq!(got, "default:two");
}
