//! One call spanning nodes: media follows the socket (a participant's media lives on the node
//! its socket reached; the session at the call's home), the home drives the other nodes' media
//! planes over the media RPC, the gate holds on every node (a revoke with a version), a killed
//! node's participants leave, and media keeps flowing while Redis is down. Real `redis-server`,
//! real nodes with their media planes and relays, webrtc-rs bots.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster_support;
mod ops_support;

use std::time::{Duration, Instant};

use cluster_support::{
    admin, cluster_env, connect, created_once_redis_is_back, list_nodes, node_with, packets,
    prefix, received_more, refused_while_redis_is_down, send, split_by_home, three_nodes, token,
    user_permissions, wait_for, Node, Redis, WAIT,
};
use greenroom_loadtest::{Bot, BotConfig, StopMode};
use greenroom_proto::{CallCid, Role, TrackSource};
use serde_json::{json, Value};

async fn bot_at(url: String, token: String, mode: StopMode) -> Bot {
    let mut c = BotConfig::new(url, token);
    c.stop_mode = mode;
    Bot::connect(c).await.unwrap()
}

async fn bot(n: &Node, user: &str, mode: StopMode) -> Bot {
    bot_at(n.http(), token(n, user, Role::User), mode).await
}

async fn permissions(n: &Node, call_id: &str, body: Value) {
    assert_eq!(user_permissions(n, call_id, &body).await.status(), 200);
}

/// Waits until `f` holds (bounded by WAIT).
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_spans_three_nodes_the_gate_holds_everywhere_and_media_outlives_redis() {
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let nodes3 = three_nodes(&redis, "span", true).await;
    let call_id = "spanning";
    let cid = format!("default:{call_id}");
    let parsed: CallCid = cid.parse().unwrap();
    // A is the call's home; B and C are the others.
    let (a, others) = split_by_home(&nodes3.each_ref(), &cid).await;
    let (b, c) = (others[0], others[1]);
    let listed: Value = list_nodes(b, &admin(b)).await.json().await.unwrap();
    let listed = listed["nodes"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(
        listed
            .iter()
            .all(|n| !n["relay_addr"].as_str().unwrap().is_empty()),
        "every node lists its relay address: {listed:?}"
    );

    // An adversarial speaker (it keeps sending after `stop_publishing`) through A, listeners
    // through B and C.
    let speaker = bot(a, "speaker", StopMode::Adversarial).await;
    let l_b = bot(b, "listener-b", StopMode::Obedient).await;
    let l_c = bot(c, "listener-c", StopMode::Obedient).await;
    let s = speaker.join(&cid, true).await.unwrap();
    let jb = l_b.join(&cid, false).await.unwrap();
    let jc = l_c.join(&cid, false).await.unwrap();
    speaker.publish(&[TrackSource::Microphone]).await.unwrap();
    let mic = format!("{}:microphone", s.participant.participant_id);
    received_more(&l_b, &mic, 25).await;
    received_more(&l_c, &mic, 25).await;

    // The sessions live at the home, the listeners' media where their sockets are.
    assert_eq!(a.state.session_count(), 3);
    let media_node = |pid: &str| a.state.media.media_node_of(&parsed, pid);
    assert_eq!(
        media_node(&jb.participant.participant_id).as_deref(),
        Some(b.cluster.node_id())
    );
    assert_eq!(
        media_node(&jc.participant.participant_id).as_deref(),
        Some(c.cluster.node_id())
    );
    assert_eq!(
        media_node(&s.participant.participant_id).as_deref(),
        Some(a.cluster.node_id())
    );
    // B and C each host their listener and the speaker relayed from A.
    assert!(b.state.media.served_count() >= 2, "B hosts media");
    assert!(c.state.media.served_count() >= 2, "C hosts media");
    assert_eq!(a.state.media.served_count(), 0, "A hosts its own only");

    // A revoke sent to C's API while the speaker keeps sending: nothing reaches either
    // listener afterwards.
    let from = speaker.cursor();
    let revoked_at = Instant::now();
    permissions(
        c,
        call_id,
        json!({"user_id": "speaker", "revoke_permissions": ["send-audio"]}),
    )
    .await;
    let answered = revoked_at.elapsed();
    speaker.wait_for_stop_publishing(from, WAIT).await.unwrap();
    // In-flight packets land; then the counts freeze while the speaker sends on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frozen = [packets(&l_b, &mic), packets(&l_c, &mic)];
    let sent = speaker.sent()[&TrackSource::Microphone].packets;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        speaker.sent()[&TrackSource::Microphone].packets > sent + 10,
        "the adversarial speaker kept sending"
    );
    assert_eq!(
        [packets(&l_b, &mic), packets(&l_c, &mic)],
        frozen,
        "audio leaked after the revoke"
    );
    for (name, l) in [("B", &l_b), ("C", &l_c)] {
        // Measured, not asserted: the last packet the listener got, relative to the moment the
        // revoke was sent (negative: the gate closed before the speaker's next packet).
        let last = l.received()[&mic].last_packet_at.unwrap();
        let ms = match last.checked_duration_since(revoked_at) {
            Some(d) => d.as_secs_f64() * 1000.0,
            None => -(revoked_at.duration_since(last).as_secs_f64() * 1000.0),
        };
        println!(
            "REVOKE_DELAY node {name}: last packet {ms:+.1} ms after the HTTP revoke was sent \
             (HTTP answered after {:.1} ms; the speaker sends every 20 ms)",
            answered.as_secs_f64() * 1000.0
        );
    }
    // Re-grant: media resumes without a rejoin.
    permissions(
        c,
        call_id,
        json!({"user_id": "speaker", "grant_permissions": ["send-audio"]}),
    )
    .await;
    received_more(&l_b, &mic, frozen[0] + 25).await;
    received_more(&l_c, &mic, frozen[1] + 25).await;

    // Grants and revokes fired at once through B's and C's APIs for 50 rounds, then one last
    // revoke: whatever order they reached the home and the nodes in, no stale grant reopens the
    // gate after it (the versions only grow).
    let grant = json!({"user_id": "speaker", "grant_permissions": ["send-audio"]});
    let revoke = json!({"user_id": "speaker", "revoke_permissions": ["send-audio"]});
    for _ in 0..50 {
        tokio::join!(
            permissions(b, call_id, grant.clone()),
            permissions(c, call_id, revoke.clone())
        );
    }
    permissions(a, call_id, revoke.clone()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frozen = [packets(&l_b, &mic), packets(&l_c, &mic)];
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        [packets(&l_b, &mic), packets(&l_c, &mic)],
        frozen,
        "audio leaked after the last of racing grants and revokes"
    );
    permissions(b, call_id, grant).await;
    received_more(&l_b, &mic, frozen[0] + 25).await;
    received_more(&l_c, &mic, frozen[1] + 25).await;

    // Redis down: the established call keeps forwarding (media and the media RPC do not
    // need Redis); a new call cannot be placed (503 cluster_unavailable).
    redis.stop();
    let n = packets(&l_c, &mic);
    received_more(&l_c, &mic, n + 50).await;
    let host = token(b, "host", Role::Host);
    refused_while_redis_is_down(b, &host, "new-while-down").await;
    let n = packets(&l_b, &mic);
    received_more(&l_b, &mic, n + 25).await;
    // Redis back: new calls work.
    redis.restart().await;
    created_once_redis_is_back(b, &host, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_its_listeners_and_the_others_keep_the_call() {
    use ops_support::{command, free_tcp, free_udp, temp_dir, wait_ready, Server};
    let Some(redis) = Redis::start().await else {
        return;
    };
    let p = prefix("kill");
    let a = node_with(&redis, "kill-a", &p, true).await;
    let c = node_with(&redis, "kill-c", &p, true).await;
    let call_id = "kill-span";
    let cid = format!("default:{call_id}");
    let parsed: CallCid = cid.parse().unwrap();
    // Placed before B exists: the home is A or C.
    let (home, others) = split_by_home(&[&a, &c], &cid).await;
    let other = others[0];
    // B is the real binary (same keys and Redis prefix), so it can be killed with -9.
    let dir = temp_dir("cluster-span-kill");
    let http = free_tcp();
    let mut cmd = command();
    cmd.env("GREENROOM_HTTP_ADDR", http.to_string())
        .env("GREENROOM_UDP_ADDR", free_udp().to_string())
        .env("GREENROOM_DATA_DIR", &dir)
        .envs(cluster_env(&redis, "kill-b", Some(&p)))
        .args(["serve"]);
    let mut b = Server::spawn(&mut cmd, http, &dir);
    wait_ready(
        &mut b,
        &reqwest::Client::new(),
        &format!("http://{http}/healthz"),
    )
    .await;

    let speaker = bot(home, "speaker", StopMode::Obedient).await;
    let l_b_token = token(home, "listener-b", Role::User);
    let l_b = bot_at(format!("http://{http}"), l_b_token, StopMode::Obedient).await;
    let l_c = bot(other, "listener-c", StopMode::Obedient).await;
    let s = speaker.join(&cid, true).await.unwrap();
    let jb = l_b.join(&cid, false).await.unwrap();
    l_c.join(&cid, false).await.unwrap();
    speaker.publish(&[TrackSource::Microphone]).await.unwrap();
    let mic = format!("{}:microphone", s.participant.participant_id);
    received_more(&l_b, &mic, 25).await;
    received_more(&l_c, &mic, 25).await;
    let pid_b = jb.participant.participant_id.clone();
    assert_eq!(
        home.state.media.media_node_of(&parsed, &pid_b).as_deref(),
        Some("kill-b"),
        "{}",
        b.log()
    );

    b.child.kill().unwrap();
    let _ = b.child.wait();
    let killed = Instant::now();
    until("B's listener leaves the call", || {
        home.state
            .read_call(&parsed, |c| c.participant(&pid_b).is_none())
            .unwrap()
    })
    .await;
    println!(
        "KILL: B's listener left the call {:.0} ms after kill -9 (node TTL 2 s)",
        killed.elapsed().as_secs_f64() * 1000.0
    );
    // A and C are unaffected: the speaker and C's listener stay, media flows on.
    assert_eq!(
        home.state
            .read_call(&parsed, |c| c.participant_count())
            .unwrap(),
        2
    );
    let n = packets(&l_c, &mic);
    received_more(&l_c, &mic, n + 50).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_reaching_any_node_is_relayed_to_the_sessions_home() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let nodes3 = three_nodes(&redis, "resume", false).await;
    let cid = "default:resume-span";
    let parsed: CallCid = cid.parse().unwrap();
    let (home, others) = split_by_home(&nodes3.each_ref(), cid).await;
    let (b, c) = (others[0], others[1]);
    // Joined through B (relayed to the home), the socket drops, the resume reaches C.
    for (first, second) in [(b, c), (c, home), (home, b)] {
        let mut ws = connect(first, "roamer", Role::User).await;
        send(
            &mut ws,
            json!({"type": "join", "call_cid": cid, "create": true}),
        )
        .await;
        let joined = wait_for(&mut ws, "joined").await;
        let pid = joined["participant"]["participant_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let token = joined["resume_token"].as_str().unwrap().to_owned();
        drop(ws);
        let mut again = connect(second, "roamer", Role::User).await;
        send(
            &mut again,
            json!({"type": "resume", "resume_token": token, "request_id": "r1"}),
        )
        .await;
        let resumed = wait_for(&mut again, "resumed").await;
        assert_eq!(resumed["participant"]["participant_id"], pid.as_str());
        assert_eq!(resumed["request_id"], "r1");
        // The session is the home's, and still in the call.
        assert!(home
            .state
            .read_call(&parsed, |c| c.participant(&pid).is_some())
            .unwrap());
        send(&mut again, json!({"type": "ping"})).await;
        wait_for(&mut again, "pong").await;
        send(&mut again, json!({"type": "leave"})).await;
        wait_for(&mut again, "left").await;
    }
}
