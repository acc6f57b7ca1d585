//! Cluster mode on a real Redis: the node registry (load, draining, a node that stops
//! refreshing disappears), atomic placement under a race, Redis going away and coming back, and
//! any node serving any call (HTTP proxied, signaling relayed to the call's home).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster_support;

use std::time::Duration;

use cluster_support::{
    admin, connect, create_call, created_once_redis_is_back, list_nodes, node, packets, prefix,
    received_more, refused_while_redis_is_down, send, split_by_home, three_nodes, token,
    user_permissions, wait_for, Redis, WAIT,
};
use greenroom_control::cluster::{Cluster, Route};
use greenroom_proto::{CallCid, CallType, Role};
use serde_json::{json, Value};

async fn nodes(n: &cluster_support::Node) -> Value {
    list_nodes(n, &admin(n)).await.json().await.unwrap()
}

fn caps(v: &Value) -> Vec<String> {
    v["own_capabilities"]
        .as_array()
        .or_else(|| v["capabilities"].as_array())
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_to_place_a_call_never_both_own_it() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let p = prefix("race");
    let a = node(&redis, "race-a", &p).await;
    let b = node(&redis, "race-b", &p).await;
    let (mut on_a, mut on_b) = (0, 0);
    for round in 0..300 {
        let cid = CallCid::new(CallType::Default, &format!("race-{round}")).unwrap();
        let (ra, rb) = tokio::join!(
            a.cluster.route(&a.state, &cid),
            b.cluster.route(&b.state, &cid)
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        match (&ra, &rb) {
            (Route::Local, Route::Remote(h)) => {
                assert_eq!(h.node_id, "race-a", "round {round}");
                on_a += 1;
            }
            (Route::Remote(h), Route::Local) => {
                assert_eq!(h.node_id, "race-b", "round {round}");
                on_b += 1;
            }
            _ => panic!("round {round}: a={ra:?} b={rb:?}: not exactly one owner"),
        }
        // Asked again, both still agree (the claim is stable).
        let again = a.cluster.route(&a.state, &cid).await.unwrap();
        assert_eq!(again, ra, "round {round}");
    }
    // The load score spreads placements: both nodes got calls.
    assert!(on_a > 0 && on_b > 0, "a={on_a} b={on_b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_lists_nodes_drains_and_forgets_a_silent_node() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let p = prefix("registry");
    let a = node(&redis, "reg-b", &p).await;
    let b = node(&redis, "reg-c", &p).await;
    let list = nodes(&a).await;
    assert_eq!(list["cluster"], true);
    assert_eq!(list["node_id"], "reg-b");
    let ids: Vec<&str> = list["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["reg-b", "reg-c"]);
    assert_eq!(list["nodes"][0]["state"], "active");
    assert!(list["nodes"][0]["advertise_url"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:"));
    // Admin only.
    let user = a.state.auth.mint("u", None, None, false, 600).unwrap();
    assert_eq!(list_nodes(&a, &user).await.status(), 403);

    // A node that registered once and stopped refreshing: it owns a call, disappears after its
    // TTL (2 s), and the call is re-placed at the next request.
    let mut silent = a.state.config.clone();
    let mut c = cluster_support::cluster_config(&redis, "reg-a", &p);
    c.advertise_url = "http://127.0.0.1:9".into();
    silent.cluster = Some(c);
    let _dead = Cluster::connect(&silent).await.unwrap();
    let cid = CallCid::new(CallType::Default, "orphan").unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{p}:call:default:orphan"))
        .arg("reg-a")
        .query_async(&mut conn)
        .await
        .unwrap();
    // While its registration lives, the claim holds.
    match a.cluster.route(&a.state, &cid).await.unwrap() {
        Route::Remote(h) => assert_eq!(h.node_id, "reg-a"),
        Route::Local => panic!("the live claim was taken over"),
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list = nodes(&a).await;
        let gone = !list["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["node_id"] == "reg-a");
        if gone {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "silent node listed: {list}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match a.cluster.route(&a.state, &cid).await.unwrap() {
        Route::Local => {}
        Route::Remote(h) => assert_ne!(h.node_id, "reg-a", "placed on a dead node"),
    }

    // Draining: no new call goes to "reg-b"; its state is listed.
    a.cluster.drain(&a.state).await;
    let list = nodes(&b).await;
    assert_eq!(list["nodes"][0]["node_id"], "reg-b");
    assert_eq!(list["nodes"][0]["state"], "draining");
    for i in 0..30 {
        let cid = CallCid::new(CallType::Default, &format!("after-drain-{i}")).unwrap();
        assert_eq!(
            b.cluster.route(&b.state, &cid).await.unwrap(),
            Route::Local,
            "call {i} placed on the draining node"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_keeps_calls_refuses_new_ones_then_recovers() {
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let p = prefix("down");
    let a = node(&redis, "down-a", &p).await;
    let host = token(&a, "host", Role::Host);
    assert_eq!(create_call(&a, &host, "up").await.status(), 200);
    let mut ws = connect(&a, "host", Role::Host).await;
    send(&mut ws, json!({"type": "join", "call_cid": "default:up"})).await;
    wait_for(&mut ws, "joined").await;

    redis.stop();
    // The established call keeps working: HTTP on it and signaling in it.
    let r = reqwest::Client::new()
        .get(format!("{}/v1/calls/default/up", a.http()))
        .bearer_auth(&host)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    send(&mut ws, json!({"type": "ping"})).await;
    wait_for(&mut ws, "pong").await;
    // A new call cannot be placed: 503 cluster_unavailable, over HTTP and on a join.
    refused_while_redis_is_down(&a, &host, "new-while-down").await;
    let mut other = connect(&a, "guest", Role::User).await;
    send(
        &mut other,
        json!({"type": "join", "call_cid": "default:new-while-down", "create": true}),
    )
    .await;
    let e = wait_for(&mut other, "error").await;
    assert_eq!(e["code"], "cluster_unavailable", "{e}");

    // Redis comes back (empty): the node re-registers, new calls work again.
    redis.restart().await;
    created_once_redis_is_back(&a, &host, "after").await;
    send(&mut ws, json!({"type": "ping"})).await;
    wait_for(&mut ws, "pong").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_another_node_joins_and_gets_a_revoke_sent_there() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let p = prefix("relay");
    let n1 = node(&redis, "relay-1", &p).await;
    let n2 = node(&redis, "relay-2", &p).await;
    let cid = CallCid::new(CallType::Default, "spanning").unwrap();
    // Find the call's home; the other node is the client's entry.
    let (home, others) = split_by_home(&[&n1, &n2], &cid.to_string()).await;
    let entry = others[0];
    let host_token = entry
        .state
        .auth
        .mint("host", None, Some(Role::Host), false, 600)
        .unwrap();
    // Created through the entry node's HTTP API: proxied, the call lives at its home.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/calls/default/spanning", entry.http()))
        .bearer_auth(&host_token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["created"], true);
    assert!(
        home.state.read_call(&cid, |_| ()).is_ok(),
        "not at its home"
    );
    assert!(
        entry.state.read_call(&cid, |_| ()).is_err(),
        "created twice"
    );

    // The host joins at home, the listener through the entry node (relayed).
    let mut host = connect(home, "host", Role::Host).await;
    send(
        &mut host,
        json!({"type": "join", "call_cid": "default:spanning"}),
    )
    .await;
    wait_for(&mut host, "joined").await;
    let mut listener = connect(entry, "listener", Role::User).await;
    send(
        &mut listener,
        json!({"type": "join", "call_cid": "default:spanning", "request_id": "j1"}),
    )
    .await;
    let joined = wait_for(&mut listener, "joined").await;
    assert_eq!(joined["request_id"], "j1", "{joined}");
    assert!(caps(&joined).contains(&"send-audio".to_owned()), "{joined}");
    let pj = wait_for(&mut host, "call.session_participant_joined").await;
    assert_eq!(pj["participant"]["user_id"], "listener");
    assert_eq!(home.state.session_count(), 2, "both sessions live at home");
    assert_eq!(entry.state.session_count(), 0);
    // Messages keep flowing both ways through the relay.
    send(&mut listener, json!({"type": "ping"})).await;
    wait_for(&mut listener, "pong").await;

    // A revoke sent to the entry node's HTTP API reaches the relayed listener.
    let r = reqwest::Client::new()
        .post(format!(
            "{}/v1/calls/default/spanning/user_permissions",
            entry.http()
        ))
        .bearer_auth(&host_token)
        .json(&json!({"user_id": "listener", "revoke_permissions": ["send-audio"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let up = wait_for(&mut listener, "call.permissions_updated").await;
    assert_eq!(up["user_id"], "listener");
    assert!(!caps(&up).contains(&"send-audio".to_owned()), "{up}");

    // The listener's socket closes: it leaves the call at its home.
    drop(listener);
    let left = wait_for(&mut host, "call.session_participant_left").await;
    assert_eq!(left["participant"]["user_id"], "listener");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_flows_for_clients_of_non_home_nodes_and_a_revoke_there_stops_it() {
    use greenroom_loadtest::{Bot, BotConfig};
    use greenroom_proto::TrackSource;
    let Some(redis) = Redis::start().await else {
        return;
    };
    let nodes3 = three_nodes(&redis, "media", true).await;
    let listed = nodes(&nodes3[0]).await;
    assert_eq!(listed["nodes"].as_array().unwrap().len(), 3, "{listed}");
    let cid = "default:spanning-media";
    let (home, others) = split_by_home(&nodes3.each_ref(), cid).await;
    let (entry, third) = (others[0], others[1]);
    let bot = |n: &cluster_support::Node, user: &str| {
        let token = n
            .state
            .auth
            .mint(user, None, Some(Role::User), false, 600)
            .unwrap();
        Bot::connect(BotConfig::new(n.http(), token))
    };
    // The publisher and one subscriber reach the call through one non-home node, one
    // subscriber through the other non-home node, one through the home.
    let alice = bot(entry, "alice").await.unwrap();
    let bob = bot(entry, "bob").await.unwrap();
    let dave = bot(third, "dave").await.unwrap();
    let carol = bot(home, "carol").await.unwrap();
    let a = alice.join(cid, true).await.unwrap();
    bob.join(cid, false).await.unwrap();
    dave.join(cid, false).await.unwrap();
    carol.join(cid, false).await.unwrap();
    assert_eq!(
        home.state.session_count(),
        4,
        "every session lives at the home"
    );
    alice
        .publish(&[TrackSource::Microphone, TrackSource::Camera])
        .await
        .unwrap();
    let pid = a.participant.participant_id;
    let (mic, cam) = (format!("{pid}:microphone"), format!("{pid}:camera"));
    for sub in [&bob, &carol, &dave] {
        received_more(sub, &mic, 25).await;
        received_more(sub, &cam, 10).await;
    }

    // A revoke sent to the entry node's API: the publisher is told to stop, video stops for
    // every subscriber while audio flows on.
    let from = alice.cursor();
    let revoke = json!({"user_id": "alice", "revoke_permissions": ["send-video"]});
    let r = user_permissions(entry, "spanning-media", &revoke).await;
    if r.status() != 200 {
        // A 404 here means the node that served the revoke does not hold the call: its
        // placement moved away from the home (the home's registration or claim lapsed).
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        panic!(
            "revoke via {}: {status} {body}; home {} holds the call: {}; registry: {}",
            entry.cluster.node_id(),
            home.cluster.node_id(),
            home.state.read_call(&cid.parse().unwrap(), |_| ()).is_ok(),
            nodes(home).await
        );
    }
    let (sources, _) = alice.wait_for_stop_publishing(from, WAIT).await.unwrap();
    assert_eq!(sources, vec![TrackSource::Camera]);
    bob.wait_for_event(0, "call.user_muted", WAIT)
        .await
        .unwrap();
    // Let in-flight packets land, then video stays frozen while audio goes on.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let frozen = [packets(&bob, &cam), packets(&dave, &cam)];
    let audio = packets(&dave, &mic);
    received_more(&dave, &mic, audio + 25).await;
    assert_eq!(
        [packets(&bob, &cam), packets(&dave, &cam)],
        frozen,
        "video leaked after the revoke"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_request_or_socket_for_a_call_homed_elsewhere_is_refused_not_served() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let Some(redis) = Redis::start().await else {
        return;
    };
    let p = prefix("hop");
    let n1 = node(&redis, "hop-1", &p).await;
    let n2 = node(&redis, "hop-2", &p).await;
    let cid = CallCid::new(CallType::Default, "hopped").unwrap();
    let (home, others) = split_by_home(&[&n1, &n2], &cid.to_string()).await;
    let other = others[0];
    let token = other
        .state
        .auth
        .mint("host", None, Some(Role::Host), false, 600)
        .unwrap();
    // HTTP with the hop header at the wrong node: 503, and no call created there.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/calls/default/hopped", other.http()))
        .bearer_auth(&token)
        .header(greenroom_control::cluster::HOP_HEADER, "1")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "cluster_unavailable");
    assert!(other.state.read_call(&cid, |_| ()).is_err());
    // A relayed socket joining there: an error, not a local join.
    let mut req = format!("{}?token={token}", other.ws())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert(greenroom_control::cluster::HOP_HEADER, "1".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    send(
        &mut ws,
        json!({"type": "join", "call_cid": "default:hopped", "create": true}),
    )
    .await;
    let e = wait_for(&mut ws, "error").await;
    assert_eq!(e["code"], "cluster_unavailable", "{e}");
    assert!(other.state.read_call(&cid, |_| ()).is_err());
    assert_eq!(other.state.session_count(), 0);
    // Without the header, the same request is forwarded and served at home.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/calls/default/hopped", other.http()))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(home.state.read_call(&cid, |_| ()).is_ok());
}
