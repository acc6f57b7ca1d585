//! Webhooks through the real server state and a real receiver (a small axum server on
//! 127.0.0.1): events are signed, ordered, and all delivered exactly once after the receiver was
//! down for a while (nothing listening on its port while the events happened).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ops_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use greenroom_control::config::Config;
use greenroom_control::webhook::{verify, WebhookEnvelope};
use ops_support::free_tcp;
use parking_lot::Mutex;

const SECRET: &str = "ops-webhook-secret";

#[derive(Debug, Clone)]
struct Delivery {
    id_header: String,
    timestamp: u64,
    signature: String,
    body: Bytes,
}

type Inbox = Arc<Mutex<Vec<Delivery>>>;

async fn hook(State(inbox): State<Inbox>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    inbox.lock().push(Delivery {
        id_header: h("x-greenroom-webhook-id"),
        timestamp: h("x-greenroom-timestamp").parse().unwrap_or(0),
        signature: h("x-greenroom-signature"),
        body,
    });
    StatusCode::NO_CONTENT
}

fn retried() -> u64 {
    greenroom_control::metrics::WEBHOOKS
        .with_label_values(&["retried"])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_signed_in_order_once_after_the_receiver_was_down() {
    let receiver = free_tcp();
    let mut config = Config::default();
    config.webhooks.urls = vec![format!("http://{receiver}/hook")];
    config.webhooks.secret = SECRET.to_owned();
    config.webhooks.timeout_ms = 2_000;
    let state = greenroom_control::start_state(config, false).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let app = greenroom_control::app(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Call events while nobody listens on the receiver's port.
    let admin = state.auth.mint("backend", None, None, true, 600).unwrap();
    let http = reqwest::Client::new();
    let mut expected = Vec::new();
    let base = format!("{api}/v1/calls/audio_room/webhook-ops");
    let r = http
        .post(&base)
        .bearer_auth(&admin)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    for _ in 0..3 {
        for (action, kind) in [
            ("go_live", "call.live_started"),
            ("stop_live", "call.live_stopped"),
        ] {
            let r = http
                .post(format!("{base}/{action}"))
                .bearer_auth(&admin)
                .json(&serde_json::json!({}))
                .send()
                .await
                .unwrap();
            assert!(
                r.status().is_success(),
                "{action}: {}",
                r.text().await.unwrap()
            );
            expected.push(kind);
        }
    }
    let r = http
        .post(format!("{base}/end"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "end: {}", r.text().await.unwrap());
    expected.push("call.ended");

    // The receiver really was down: deliveries failed and were retried.
    let deadline = Instant::now() + Duration::from_secs(10);
    while retried() < 2 {
        assert!(Instant::now() < deadline, "no failed delivery was retried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Now the receiver comes up on that port.
    let inbox: Inbox = Arc::default();
    let listener = tokio::net::TcpListener::bind(receiver).await.unwrap();
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(inbox.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Backoff is capped at 5 s, so everything arrives well within 15 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    while inbox.lock().len() < expected.len() {
        assert!(
            Instant::now() < deadline,
            "only {} of {} webhooks arrived",
            inbox.lock().len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give a duplicate (a retry of something already delivered) the chance to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = inbox.lock().clone();
    assert_eq!(got.len(), expected.len(), "duplicates: {got:#?}");

    let mut ids = std::collections::HashSet::new();
    let mut last_seq = None;
    for (d, kind) in got.iter().zip(&expected) {
        assert!(
            verify(SECRET, d.timestamp, &d.body, &d.signature),
            "bad signature on {d:?}"
        );
        assert!(!verify("wrong", d.timestamp, &d.body, &d.signature));
        let env: WebhookEnvelope = serde_json::from_slice(&d.body).unwrap();
        assert_eq!(env.kind, *kind, "out of order: {got:#?}");
        assert_eq!(env.id, d.id_header);
        assert_eq!(
            env.event["call_cid"], "audio_room:webhook-ops",
            "{:?}",
            env.event
        );
        assert!(ids.insert(env.id.clone()), "id {} repeated", env.id);
        if let Some(prev) = last_seq {
            assert!(env.seq > prev, "seq {} after {prev}", env.seq);
        }
        last_seq = Some(env.seq);
    }
}
