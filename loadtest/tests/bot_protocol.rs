//! The [`Bot`]'s protocol handling, before the real server exists: the test itself plays the
//! server's signaling role on a real WebSocket (127.0.0.1), with a [`Subscriber`] answering the
//! bot's publish offer and a [`Publisher`] producing the `subscriber_offer`. Media flows over
//! real UDP. This checks the bot's wiring (join, publish, auto-answer, stop_publishing modes,
//! error replies, malformed frames); the server's behaviour is tested against the server.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The handshake callback signature is tungstenite's, with its large error type.
#![allow(clippy::result_large_err)]

mod common;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use greenroom_loadtest::{
    Bot, BotConfig, BotError, Publisher, PublisherConfig, StopMode, Subscriber, SubscriberConfig,
};
use greenroom_proto::{
    ClientMessage, ErrorCode, PublishTrack, SubscribedTrack, TrackInfo, TrackSource,
};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use common::init_logs;

const WAIT: Duration = Duration::from_secs(5);

type ServerWs = WebSocketStream<TcpStream>;

/// A bot connected to a WebSocket accepted by the test.
async fn connect(mode: StopMode) -> (Bot, ServerWs) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut cfg = BotConfig::new(url, "test.token.jwt");
    cfg.stop_mode = mode;
    let (bot, ws) = tokio::join!(Bot::connect(cfg), async {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio_tungstenite::accept_hdr_async(
            tcp,
            |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                assert_eq!(req.uri().path(), "/v1/signal");
                assert_eq!(req.uri().query(), Some("token=test.token.jwt"));
                Ok(resp)
            },
        )
        .await
        .unwrap()
    });
    (bot.unwrap(), ws)
}

async fn recv(ws: &mut ServerWs) -> ClientMessage {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("client message in time")
            .expect("socket open")
            .unwrap();
        if let Message::Text(t) = m {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

async fn send(ws: &mut ServerWs, v: serde_json::Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

fn joined_json(participant_id: &str) -> serde_json::Value {
    json!({
        "type": "joined",
        "protocol": 1,
        "participant": {"participant_id": participant_id, "user_id": "alice", "role": "host",
                        "joined_at_ms": 1},
        "call": {"cid": "default:room1", "type": "default", "id": "room1", "created_by": "alice",
                 "created_at_ms": 1, "backstage_enabled": false, "backstage": false, "live": true,
                 "ended": false, "members": [], "participants": [], "blocked_user_ids": []},
        "own_capabilities": ["send-audio", "send-video"],
        "requestable": []
    })
}

/// Plays the server through join and publish; returns the server-side subscriber (which
/// receives the bot's media as `p1:<source>`).
async fn join_and_publish(bot: &Bot, ws: &mut ServerWs, sources: &[TrackSource]) -> Subscriber {
    let (joined, ()) = tokio::join!(bot.join("default:room1", true), async {
        match recv(ws).await {
            ClientMessage::Join {
                call_cid, create, ..
            } => {
                assert_eq!(call_cid.to_string(), "default:room1");
                assert!(create);
            }
            other => panic!("expected join, got {other:?}"),
        }
        send(ws, joined_json("p1")).await;
    });
    assert_eq!(joined.unwrap().participant.participant_id, "p1");

    let server_sub = Subscriber::new(SubscriberConfig::default()).await.unwrap();
    let (published, ()) = tokio::join!(bot.publish(sources), async {
        let ClientMessage::Publish { sdp, tracks } = recv(ws).await else {
            panic!("expected publish");
        };
        let answer = server_sub
            .apply_offer(&sdp, as_subscribed("p1", &tracks))
            .await
            .unwrap();
        send(ws, json!({"type": "publish_answer", "sdp": answer})).await;
    });
    assert_eq!(published.unwrap().len(), sources.len());
    server_sub
}

fn as_subscribed(pid: &str, tracks: &[PublishTrack]) -> Vec<SubscribedTrack> {
    tracks
        .iter()
        .map(|t| SubscribedTrack {
            mid: t.mid.clone(),
            track: TrackInfo {
                track_id: format!("{pid}:{}", t.source),
                participant_id: pid.into(),
                user_id: "alice".into(),
                source: t.source,
                muted: false,
            },
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_joins_publishes_answers_offers_and_obeys_stop_publishing() {
    init_logs();
    let (bot, mut ws) = connect(StopMode::Obedient).await;
    let server_sub = join_and_publish(&bot, &mut ws, &[TrackSource::Microphone]).await;
    server_sub
        .wait_for_stats(WAIT, |s| {
            s.get("p1:microphone").is_some_and(|t| t.packets >= 10)
        })
        .await
        .unwrap();

    // The server offers another participant's camera: the bot answers by itself.
    let server_pub = Publisher::new(&[TrackSource::Camera], PublisherConfig::default())
        .await
        .unwrap();
    let (offer, tracks) = server_pub.create_offer().await.unwrap();
    send(
        &mut ws,
        json!({"type": "subscriber_offer", "sdp": offer, "tracks": as_subscribed("p2", &tracks)}),
    )
    .await;
    let ClientMessage::SubscriberAnswer { sdp } = recv(&mut ws).await else {
        panic!("expected subscriber_answer");
    };
    server_pub.apply_answer(&sdp).await.unwrap();
    server_pub.wait_connected(WAIT).await.unwrap();
    server_pub.start();
    let got = bot
        .wait_for_received(WAIT, |s| {
            s.get("p2:camera").is_some_and(|t| t.keyframes >= 1)
        })
        .await
        .unwrap();
    assert_eq!(got["p2:camera"].source, Some(TrackSource::Camera));
    assert_eq!(bot.answers_sent(), 1);

    // A frame that is no server message is recorded, not fatal.
    ws.send(Message::text(r#"{"type":"no_such_message"}"#))
        .await
        .unwrap();
    // Then stop_publishing: an obedient bot pauses the source.
    let from = bot.cursor();
    send(
        &mut ws,
        json!({"type": "stop_publishing", "sources": ["microphone"], "reason": "permission_revoked"}),
    )
    .await;
    let (sources, reason) = bot.wait_for_stop_publishing(from, WAIT).await.unwrap();
    assert_eq!(sources, vec![TrackSource::Microphone]);
    assert_eq!(reason, "permission_revoked");
    let publisher = bot.publisher().unwrap();
    assert_eq!(publisher.is_paused(TrackSource::Microphone), Some(true));
    assert!(
        bot.protocol_errors()
            .iter()
            .any(|e| e.contains("undecodable")),
        "{:?}",
        bot.protocol_errors()
    );
    assert!(!bot.is_closed());

    // Nothing is sent while paused: the sender's count stays put, and the receiver's count
    // settles (UDP on a loaded machine may lose a packet, so it is not compared to `sent`).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = bot.sent()[&TrackSource::Microphone].packets;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = server_sub
        .stats()
        .get("p1:microphone")
        .map(|t| t.packets)
        .unwrap_or(0);
    assert!(
        settled > 0 && settled <= sent,
        "received {settled} of {sent}"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(bot.sent()[&TrackSource::Microphone].packets, sent);
    assert_eq!(
        server_sub.stats().get("p1:microphone").map(|t| t.packets),
        Some(settled)
    );

    // Closing the socket is seen by waiters.
    ws.close(None).await.unwrap();
    let err = bot
        .wait_for_from(bot.cursor(), WAIT, |_| Some(()))
        .await
        .unwrap_err();
    assert!(matches!(err, BotError::Closed), "{err:?}");
    bot.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_bot_keeps_sending_after_stop_publishing() {
    init_logs();
    let (bot, mut ws) = connect(StopMode::Adversarial).await;
    let server_sub = join_and_publish(&bot, &mut ws, &[TrackSource::Camera]).await;
    let from = bot.cursor();
    send(
        &mut ws,
        json!({"type": "stop_publishing", "sources": ["camera"], "reason": "muted_by_moderator"}),
    )
    .await;
    bot.wait_for_stop_publishing(from, WAIT).await.unwrap();
    let publisher = bot.publisher().unwrap();
    assert_eq!(publisher.is_paused(TrackSource::Camera), Some(false));
    let before = bot.sent()[&TrackSource::Camera].packets;
    server_sub
        .wait_for_stats(WAIT, |s| {
            s.get("p1:camera").is_some_and(|t| t.packets > before)
        })
        .await
        .unwrap();
    bot.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_error_is_returned() {
    init_logs();
    let (bot, mut ws) = connect(StopMode::Obedient).await;
    let (joined, ()) = tokio::join!(bot.join("default:room1", false), async {
        recv(&mut ws).await;
        send(&mut ws, joined_json("p9")).await;
    });
    joined.unwrap();
    let (res, ()) = tokio::join!(bot.publish(&[TrackSource::Camera]), async {
        let ClientMessage::Publish { .. } = recv(&mut ws).await else {
            panic!("expected publish");
        };
        // An unrelated error first: it must not be taken as the publish reply.
        send(
            &mut ws,
            json!({"type": "error", "code": "not_found", "message": "x", "request": "subscribe"}),
        )
        .await;
        send(
            &mut ws,
            json!({"type": "error", "code": "missing_capability", "message": "no video",
                   "capability": "send-video", "request": "publish"}),
        )
        .await;
    });
    match res {
        Err(BotError::Server(body)) => assert_eq!(body.code, ErrorCode::MissingCapability),
        other => panic!("expected a server error, got {other:?}"),
    }
    // Bad cids are rejected locally.
    assert!(matches!(
        bot.join("no-colon", false).await,
        Err(BotError::Protocol(_))
    ));
    bot.close().await.unwrap();
}
