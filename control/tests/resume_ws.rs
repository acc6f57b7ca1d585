//! Signaling resume over real sockets (section 4 of docs/PROTOCOL.md, "Resume"): a dropped
//! socket parks its session for `limits.resume_grace_secs`; a new socket of the same user takes
//! it back with `resume`; after the grace the session leaves with `disconnected`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ws_support;

use std::sync::Arc;
use std::time::Duration;

use greenroom_control::call::Actor;
use greenroom_control::config::Config;
use greenroom_control::AppState;
use greenroom_proto::Role;
use serde_json::{json, Value};
use tokio::time::{sleep, timeout, Instant};
use ws_support::{connect, next, send, server_with, Ws, WAIT};

fn config(grace_secs: u64) -> Config {
    let mut c = Config::default();
    c.limits.resume_grace_secs = grace_secs;
    c
}

/// One joined session as its client knows it: the `joined` (or `resumed`) reply, the
/// participant id and the resume token it carries.
struct Session {
    reply: Value,
    pid: String,
    token: String,
}

impl Session {
    fn from_reply(reply: Value) -> Self {
        let pid = reply["participant"]["participant_id"]
            .as_str()
            .expect("a participant_id")
            .to_owned();
        let token = reply["resume_token"]
            .as_str()
            .expect("a resume_token")
            .to_owned();
        Self { reply, pid, token }
    }
}

/// Joins (creating the call) and returns the session.
async fn join(ws: &mut Ws, cid: &str) -> Session {
    send(ws, json!({"type": "join", "call_cid": cid, "create": true})).await;
    let m = next(ws).await;
    assert_eq!(m["type"], "joined", "{m}");
    Session::from_reply(m)
}

/// Connects `user` with `role` and joins `cid`.
async fn joined(state: &AppState, url: &str, user: &str, role: Role, cid: &str) -> (Ws, Session) {
    let mut ws = connect(state, url, user, role).await;
    let session = join(&mut ws, cid).await;
    (ws, session)
}

/// Drops the socket (no close frame, no leave) and waits until the server has parked its
/// session: the only one parked.
async fn drop_and_park(state: &AppState, ws: Ws) {
    drop(ws);
    parked(state, 1).await;
}

/// Reads until a message of `kind` arrives; returns it and the types skipped on the way.
async fn wait_for(ws: &mut Ws, kind: &str) -> (Value, Vec<Value>) {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = timeout(left, next(ws))
            .await
            .unwrap_or_else(|_| panic!("no {kind}; saw {seen:?}"));
        if m["type"] == kind {
            return (m, seen);
        }
        seen.push(m);
    }
}

/// Pings and returns every message that came before the pong.
async fn drain(ws: &mut Ws) -> Vec<Value> {
    send(ws, json!({"type": "ping"})).await;
    wait_for(ws, "pong").await.1
}

fn lefts(msgs: &[Value], pid: &str) -> Vec<String> {
    msgs.iter()
        .filter(|m| {
            m["type"] == "call.session_participant_left"
                && m["participant"]["participant_id"] == pid
        })
        .map(|m| m["reason"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Waits for the next participant-left event and checks whose it is and why.
async fn assert_left(ws: &mut Ws, pid: &str, reason: &str) {
    let (left, _) = wait_for(ws, "call.session_participant_left").await;
    assert_eq!(left["participant"]["participant_id"], pid, "{left}");
    assert_eq!(left["reason"], reason, "{left}");
}

/// Waits until the server has parked `n` sessions.
async fn parked(state: &AppState, n: usize) {
    let deadline = Instant::now() + WAIT;
    while state.parked_count() != n {
        assert!(Instant::now() < deadline, "never {n} parked sessions");
        sleep(Duration::from_millis(5)).await;
    }
}

async fn resume(ws: &mut Ws, token: &str) -> Value {
    send(ws, json!({"type": "resume", "resume_token": token})).await;
    next(ws).await
}

/// Resumes with `token` and checks that participant `pid` came back; returns the new session.
async fn assert_resumes(ws: &mut Ws, token: &str, pid: &str) -> Session {
    let m = resume(ws, token).await;
    assert_eq!(m["type"], "resumed", "{m}");
    let session = Session::from_reply(m);
    assert_eq!(session.pid, pid, "{}", session.reply);
    session
}

/// Resumes with `token` and checks that the server refuses with `resume_failed`; returns the
/// error.
async fn assert_resume_fails(ws: &mut Ws, token: &str) -> Value {
    let m = resume(ws, token).await;
    assert_eq!(m["type"], "error", "{token}: {m}");
    assert_eq!(m["code"], "resume_failed", "{token}: {m}");
    m
}

#[tokio::test]
async fn a_resume_keeps_the_participant_and_others_see_no_leave() {
    let (state, url) = server_with(config(15)).await;
    let (mut a, _) = joined(&state, &url, "alice", Role::Admin, "default:r1").await;
    let (b, bob) = joined(&state, &url, "bob", Role::User, "default:r1").await;
    assert!(bob.token.len() >= 64, "an unguessable token");
    wait_for(&mut a, "call.session_participant_joined").await;

    drop_and_park(&state, b).await;
    // While bob is away, carol joins: bob misses the event but the snapshot has her.
    let (_c, _) = joined(&state, &url, "carol", Role::User, "default:r1").await;
    assert!(
        lefts(&drain(&mut a).await, &bob.pid).is_empty(),
        "no leave yet"
    );

    let mut b2 = connect(&state, &url, "bob", Role::User).await;
    let bob2 = assert_resumes(&mut b2, &bob.token, &bob.pid).await;
    assert_ne!(bob.token, bob2.token, "the token rotates");
    let users: Vec<&str> = bob2.reply["call"]["participants"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["user_id"].as_str())
        .collect();
    assert!(
        users.contains(&"carol"),
        "the snapshot has carol: {users:?}"
    );
    assert_eq!(state.parked_count(), 0);
    assert_eq!(state.session_count(), 3);

    // Alice saw no leave, and events reach bob's new socket.
    assert!(lefts(&drain(&mut a).await, &bob.pid).is_empty(), "no leave");
    send(&mut a, json!({"type": "send_event", "custom": {"n": 1}})).await;
    let (ev, _) = wait_for(&mut b2, "call.custom").await;
    assert_eq!(ev["custom"]["n"], 1);

    // The spent token does not work again; the new one does, after another drop.
    let mut b3 = connect(&state, &url, "bob", Role::User).await;
    assert_resume_fails(&mut b3, &bob.token).await;
    drop_and_park(&state, b2).await;
    assert_resumes(&mut b3, &bob2.token, &bob.pid).await;

    // An explicit leave ends the session at once, and its token with it.
    send(&mut b3, json!({"type": "leave"})).await;
    wait_for(&mut b3, "left").await;
    assert_left(&mut a, &bob.pid, "left").await;
    assert_eq!(state.parked_count(), 0);
}

#[tokio::test]
async fn after_the_grace_period_others_see_left_disconnected() {
    let (state, url) = server_with(config(1)).await;
    let (mut a, _) = joined(&state, &url, "alice", Role::Admin, "default:r2").await;
    let (b, bob) = joined(&state, &url, "bob", Role::User, "default:r2").await;
    // Not drop_and_park: with a 1 s grace the parked state may be over before a poll sees it.
    drop(b);
    assert_left(&mut a, &bob.pid, "disconnected").await;
    assert_eq!(state.parked_count(), 0);
    assert_eq!(state.session_count(), 1);
    // Too late now.
    let mut b2 = connect(&state, &url, "bob", Role::User).await;
    let m = assert_resume_fails(&mut b2, &bob.token).await;
    assert_eq!(m["request"], "resume");
    // The client then joins afresh.
    join(&mut b2, "default:r2").await;
}

#[tokio::test]
async fn a_forged_or_other_users_token_fails_and_does_not_spend_the_session() {
    let (state, url) = server_with(config(15)).await;
    let (b, bob) = joined(&state, &url, "bob", Role::User, "default:r3").await;
    drop_and_park(&state, b).await;

    let mut eve = connect(&state, &url, "eve", Role::Admin).await;
    let forged = format!("{}.{}", bob.pid, "0".repeat(64));
    for bad in [bob.token.as_str(), forged.as_str(), "x", ""] {
        assert_resume_fails(&mut eve, bad).await;
    }
    let mut b2 = connect(&state, &url, "bob", Role::User).await;
    assert_resume_fails(&mut b2, &forged).await;
    assert_resumes(&mut b2, &bob.token, &bob.pid).await;
}

#[tokio::test]
async fn a_kick_while_parked_ends_the_session_at_once_and_the_resume_fails() {
    let (state, url) = server_with(config(15)).await;
    let (mut a, _) = joined(&state, &url, "alice", Role::Admin, "default:r5").await;
    let (b, bob) = joined(&state, &url, "bob", Role::User, "default:r5").await;
    drop_and_park(&state, b).await;
    let cid = "default:r5".parse().unwrap();
    let admin = Actor::server("alice");
    state
        .with_call(&cid, |c| Ok(((), c.kick(&admin, "bob")?)))
        .unwrap();
    // Others see the kick's leave now, not after the grace period.
    assert_left(&mut a, &bob.pid, "kicked").await;
    let mut b2 = connect(&state, &url, "bob", Role::User).await;
    assert_resume_fails(&mut b2, &bob.token).await;
    assert_eq!(state.parked_count(), 0);
    // Exactly one leave for bob: the failed resume did not announce another.
    assert!(lefts(&drain(&mut a).await, &bob.pid).is_empty());
}

#[tokio::test]
async fn a_resume_from_a_new_socket_takes_over_a_socket_that_still_holds_the_session() {
    let (state, url) = server_with(config(15)).await;
    let (mut b, bob) = joined(&state, &url, "bob", Role::User, "default:r4").await;
    let mut b2 = connect(&state, &url, "bob", Role::User).await;
    assert_resumes(&mut b2, &bob.token, &bob.pid).await;
    // The old socket was closed with 4409.
    let closed = timeout(WAIT, async {
        loop {
            match futures_util::StreamExt::next(&mut b).await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f)))) => {
                    return u16::from(f.code)
                }
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(closed, 4409);
}

/// A resume and the end of the grace period fired at once, 200 times: every round ends in
/// exactly one outcome, the same on every side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_racing_the_grace_expiry_ends_in_one_outcome() {
    let (state, url) = server_with(config(15)).await;
    let (mut a, _) = joined(&state, &url, "alice", Role::Admin, "default:race").await;
    let (mut resumed, mut expired) = (0, 0);
    for round in 0..200 {
        let (b, bob) = joined(&state, &url, "bob", Role::User, "default:race").await;
        drop_and_park(&state, b).await;
        let mut b2 = connect(&state, &url, "bob", Role::User).await;
        let st: Arc<AppState> = state.clone();
        let p = bob.pid.clone();
        let expire = tokio::spawn(async move { st.expire_parked(&p, None) });
        let reply = resume(&mut b2, &bob.token).await;
        let did_expire = expire.await.unwrap();
        if did_expire {
            expired += 1;
            assert_eq!(reply["type"], "error", "round {round}: {reply}");
            assert_eq!(reply["code"], "resume_failed", "round {round}");
            let msgs = drain(&mut a).await;
            assert_eq!(
                lefts(&msgs, &bob.pid),
                vec!["disconnected"],
                "round {round}"
            );
        } else {
            resumed += 1;
            assert_eq!(reply["type"], "resumed", "round {round}: {reply}");
            assert_eq!(reply["participant"]["participant_id"], bob.pid.as_str());
            send(&mut b2, json!({"type": "leave"})).await;
            wait_for(&mut b2, "left").await;
            let msgs = drain(&mut a).await;
            assert_eq!(lefts(&msgs, &bob.pid), vec!["left"], "round {round}");
        }
        assert_eq!(state.parked_count(), 0, "round {round}");
        assert_eq!(state.session_count(), 1, "round {round}: only alice is in");
        drop(b2);
    }
    eprintln!("200 rounds: {resumed} resumed, {expired} expired");
}
