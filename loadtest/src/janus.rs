//! A client for Janus's videoroom plugin over the Janus HTTP API, reusing the bots' media
//! layer ([`Publisher`], [`Subscriber`]) with Janus signaling instead of Greenroom's.
//!
//! One [`JanusSession`] (one long-poll loop) carries every handle of a load test; events are
//! routed to handles by their `sender`. A publisher joins a room as `publisher` and sends
//! `publish` with its offer; a subscriber joins as `subscriber` to a list of feeds, gets
//! Janus's offer and answers with `start`. Neither side trickles: the SDPs carry the candidates,
//! followed by an end-of-candidates `trickle`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use greenroom_proto::{SubscribedTrack, TrackInfo, TrackSource};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::BotError;
use crate::light::{LightPeer, PeerRole, PeerTransport};
use crate::media::{
    AudioParams, Publisher, PublisherConfig, Subscriber, SubscriberConfig, VideoParams,
};

/// The videoroom plugin's package name.
pub const VIDEOROOM: &str = "janus.plugin.videoroom";

/// What can go wrong talking to Janus.
#[derive(Debug, thiserror::Error)]
pub enum JanusError {
    /// HTTP failed.
    #[error("janus http: {0}")]
    Http(#[from] reqwest::Error),
    /// Janus answered `error`.
    #[error("janus error {code}: {reason}")]
    Janus {
        /// Janus's error code.
        code: i64,
        /// Its text.
        reason: String,
    },
    /// The videoroom plugin answered with an error.
    #[error("videoroom error {code}: {reason}")]
    Plugin {
        /// The plugin's error code.
        code: i64,
        /// Its text.
        reason: String,
    },
    /// A reply did not have the expected shape.
    #[error("janus protocol: {0}")]
    Protocol(String),
    /// No reply in time.
    #[error("janus: timed out waiting for {0}")]
    Timeout(String),
    /// The media layer failed.
    #[error(transparent)]
    Bot(#[from] BotError),
}

type Result<T, E = JanusError> = std::result::Result<T, E>;

/// A Janus session with its long-poll loop.
pub struct JanusSession {
    client: reqwest::Client,
    base: String,
    id: u64,
    handles: Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Value>>>>,
    next_tx: AtomicU64,
    closed: Arc<AtomicBool>,
    poller: Mutex<Option<JoinHandle<()>>>,
    timeout: Duration,
}

fn janus_error(v: &Value) -> Option<JanusError> {
    (v["janus"] == "error").then(|| JanusError::Janus {
        code: v["error"]["code"].as_i64().unwrap_or(0),
        reason: v["error"]["reason"].as_str().unwrap_or("").to_owned(),
    })
}

fn plugin_error(data: &Value) -> Option<JanusError> {
    data.get("error").map(|e| JanusError::Plugin {
        code: data["error_code"].as_i64().unwrap_or(0),
        reason: e.as_str().unwrap_or("").to_owned(),
    })
}

impl JanusSession {
    /// Creates a session on `base` (`http://127.0.0.1:8088/janus`) and starts polling its events.
    pub async fn create(base: &str, timeout: Duration) -> Result<Arc<JanusSession>> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?;
        let base = base.trim_end_matches('/').to_owned();
        let v: Value = client
            .post(&base)
            .json(&json!({"janus": "create", "transaction": "create"}))
            .timeout(timeout)
            .send()
            .await?
            .json()
            .await?;
        if let Some(e) = janus_error(&v) {
            return Err(e);
        }
        let id = v["data"]["id"]
            .as_u64()
            .ok_or_else(|| JanusError::Protocol(format!("create: no session id in {v}")))?;
        let s = Arc::new(JanusSession {
            client,
            base,
            id,
            handles: Arc::new(Mutex::new(HashMap::new())),
            next_tx: AtomicU64::new(1),
            closed: Arc::new(AtomicBool::new(false)),
            poller: Mutex::new(None),
            timeout,
        });
        let poller = tokio::spawn(poll_loop(
            s.client.clone(),
            format!("{}/{}", s.base, s.id),
            s.handles.clone(),
            s.closed.clone(),
        ));
        *s.poller.lock() = Some(poller);
        Ok(s)
    }

    fn transaction(&self) -> String {
        format!("t{}", self.next_tx.fetch_add(1, Ordering::Relaxed))
    }

    /// Attaches a videoroom handle.
    pub async fn attach(self: &Arc<Self>) -> Result<JanusHandle> {
        let tx = self.transaction();
        let v: Value = self
            .client
            .post(format!("{}/{}", self.base, self.id))
            .json(&json!({"janus": "attach", "plugin": VIDEOROOM, "transaction": tx}))
            .timeout(self.timeout)
            .send()
            .await?
            .json()
            .await?;
        if let Some(e) = janus_error(&v) {
            return Err(e);
        }
        let id = v["data"]["id"]
            .as_u64()
            .ok_or_else(|| JanusError::Protocol(format!("attach: no handle id in {v}")))?;
        let (events_tx, events) = mpsc::unbounded_channel();
        self.handles.lock().insert(id, events_tx);
        Ok(JanusHandle {
            session: self.clone(),
            id,
            events: tokio::sync::Mutex::new(events),
        })
    }

    /// Destroys the session (best effort) and stops polling.
    pub async fn destroy(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let _ = self
            .client
            .post(format!("{}/{}", self.base, self.id))
            .json(&json!({"janus": "destroy", "transaction": self.transaction()}))
            .timeout(self.timeout)
            .send()
            .await;
        if let Some(p) = self.poller.lock().take() {
            p.abort();
        }
    }
}

impl Drop for JanusSession {
    fn drop(&mut self) {
        if let Some(p) = self.poller.lock().take() {
            p.abort();
        }
    }
}

/// Long-polls the session's events and routes them to handles by `sender`.
async fn poll_loop(
    client: reqwest::Client,
    url: String,
    handles: Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Value>>>>,
    closed: Arc<AtomicBool>,
) {
    let url = format!("{url}?maxev=50");
    while !closed.load(Ordering::Relaxed) {
        let res = client
            .get(&url)
            .timeout(Duration::from_secs(45))
            .send()
            .await;
        let v: Value = match res {
            Ok(r) => match r.json().await {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(error = %e, "janus poll body");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            Err(e) => {
                tracing::debug!(error = %e, "janus poll");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let events = match v {
            Value::Array(a) => a,
            other => vec![other],
        };
        for e in events {
            if e["janus"] == "keepalive" {
                continue;
            }
            if let Some(sender) = e["sender"].as_u64() {
                if let Some(tx) = handles.lock().get(&sender) {
                    let _ = tx.send(e);
                }
            }
        }
    }
}

/// A videoroom plugin handle.
pub struct JanusHandle {
    session: Arc<JanusSession>,
    id: u64,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<Value>>,
}

impl JanusHandle {
    /// Sends a plugin message; returns the plugin's reply (`success` at once, or the `event`
    /// answering this transaction) as the whole Janus message (`plugindata`, `jsep`).
    pub async fn request(&self, body: Value, jsep: Option<Value>) -> Result<Value> {
        let tx = self.session.transaction();
        let mut msg = json!({"janus": "message", "transaction": tx, "body": body});
        if let Some(j) = jsep {
            msg["jsep"] = j;
        }
        let v = self.post(&msg).await?;
        if let Some(e) = janus_error(&v) {
            return Err(e);
        }
        let reply = match v["janus"].as_str() {
            Some("success") => v,
            Some("ack") => self.wait_event(&tx).await?,
            _ => return Err(JanusError::Protocol(format!("unexpected reply {v}"))),
        };
        if let Some(e) = plugin_error(&reply["plugindata"]["data"]) {
            return Err(e);
        }
        Ok(reply)
    }

    async fn post(&self, msg: &Value) -> Result<Value> {
        Ok(self
            .session
            .client
            .post(format!(
                "{}/{}/{}",
                self.session.base, self.session.id, self.id
            ))
            .json(msg)
            .timeout(self.session.timeout)
            .send()
            .await?
            .json()
            .await?)
    }

    async fn wait_event(&self, tx: &str) -> Result<Value> {
        let mut events = self.events.lock().await;
        let deadline = tokio::time::Instant::now() + self.session.timeout;
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Err(_) => return Err(JanusError::Timeout(format!("event for {tx}"))),
                Ok(None) => return Err(JanusError::Protocol("handle closed".into())),
                Ok(Some(e)) => {
                    if e["transaction"] == tx {
                        if let Some(err) = janus_error(&e) {
                            return Err(err);
                        }
                        return Ok(e);
                    }
                    if e["janus"] == "hangup" || e["janus"] == "detached" {
                        tracing::debug!(handle = self.id, event = %e, "janus handle hung up");
                    }
                }
            }
        }
    }

    /// Tells Janus there are no more candidates (they are all in the SDP).
    pub async fn trickle_completed(&self) -> Result<()> {
        let msg = json!({
            "janus": "trickle",
            "transaction": self.session.transaction(),
            "candidate": {"completed": true},
        });
        let v = self.post(&msg).await?;
        match janus_error(&v) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Creates a videoroom room (Opus + VP8, no bitrate cap) for `publishers` publishers.
    pub async fn create_room(&self, room: u64, publishers: usize) -> Result<()> {
        let v = self
            .request(
                json!({
                    "request": "create",
                    "room": room,
                    "description": "greenroom-loadtest",
                    "publishers": publishers.max(1),
                    "bitrate": 0,
                    "fir_freq": 0,
                    "audiocodec": "opus",
                    "videocodec": "vp8",
                    "notify_joining": false,
                    "permanent": false,
                }),
                None,
            )
            .await?;
        match v["plugindata"]["data"]["videoroom"].as_str() {
            Some("created") => Ok(()),
            _ => Err(JanusError::Protocol(format!("create room: {v}"))),
        }
    }

    /// Waits until every feed of `feeds` is listed as an active publisher of `room`
    /// (`listparticipants`, `publisher: true`). Janus answers a subscription to a feed whose
    /// PeerConnection is not up on its side yet with "No such feed", even when the publisher's
    /// own side is already connected.
    pub async fn wait_publishing(&self, room: u64, feeds: &[u64], timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let v = self
                .request(json!({"request": "listparticipants", "room": room}), None)
                .await?;
            let publishing = active_publishers(&v["plugindata"]["data"]["participants"]);
            if feeds.iter().all(|f| publishing.contains(f)) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(JanusError::Timeout(format!(
                    "feeds {feeds:?} to publish (publishing: {publishing:?})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Destroys a room (best effort).
    pub async fn destroy_room(&self, room: u64) {
        let _ = self
            .request(json!({"request": "destroy", "room": room}), None)
            .await;
    }

    /// Detaches the handle (best effort).
    pub async fn detach(&self) {
        let msg = json!({"janus": "detach", "transaction": self.session.transaction()});
        let _ = self.post(&msg).await;
        self.session.handles.lock().remove(&self.id);
    }
}

fn jsep_sdp(v: &Value, kind: &str) -> Result<String> {
    if v["jsep"]["type"] != kind {
        return Err(JanusError::Protocol(format!(
            "expected a jsep {kind} in {v}"
        )));
    }
    v["jsep"]["sdp"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| JanusError::Protocol("jsep without sdp".into()))
}

/// Attaches a handle and joins `room` on it as a publisher named `display`: the handle and the
/// feed id Janus gave it.
async fn join_as_publisher(
    session: &Arc<JanusSession>,
    room: u64,
    display: &str,
) -> Result<(JanusHandle, u64)> {
    let handle = session.attach().await?;
    let joined = handle
        .request(
            json!({"request": "join", "ptype": "publisher", "room": room, "display": display}),
            None,
        )
        .await?;
    let data = &joined["plugindata"]["data"];
    if data["videoroom"] != "joined" {
        return Err(JanusError::Protocol(format!("publisher join: {joined}")));
    }
    let feed = data["id"]
        .as_u64()
        .ok_or_else(|| JanusError::Protocol("joined without id".into()))?;
    Ok((handle, feed))
}

/// Sends `publish` with the publisher's `offer` of `sources` on `handle`: Janus's answer.
async fn publish_offer(
    handle: &JanusHandle,
    sources: &[TrackSource],
    offer: &str,
) -> Result<String> {
    let has = |audio: bool| sources.iter().any(|s| s.is_audio() == audio);
    let reply = handle
        .request(
            json!({"request": "publish", "audio": has(true), "video": has(false)}),
            Some(json!({"type": "offer", "sdp": offer})),
        )
        .await?;
    jsep_sdp(&reply, "answer")
}

/// Attaches a handle and joins `room` on it as a subscriber to every stream of `feeds`: the
/// handle, Janus's offer and the subscribed tracks it lists.
async fn join_as_subscriber(
    session: &Arc<JanusSession>,
    room: u64,
    feeds: &[u64],
) -> Result<(JanusHandle, String, Vec<SubscribedTrack>)> {
    let handle = session.attach().await?;
    let streams: Vec<Value> = feeds.iter().map(|f| json!({"feed": f})).collect();
    let attached = handle
        .request(
            json!({"request": "join", "ptype": "subscriber", "room": room, "streams": streams}),
            None,
        )
        .await?;
    let offer = jsep_sdp(&attached, "offer")?;
    let tracks = subscribed_tracks(&attached["plugindata"]["data"]["streams"]);
    Ok((handle, offer, tracks))
}

/// Sends `start` with the subscriber's `answer` on `handle`, then the end of candidates.
async fn start_subscription(handle: &JanusHandle, answer: &str) -> Result<()> {
    handle
        .request(
            json!({"request": "start"}),
            Some(json!({"type": "answer", "sdp": answer})),
        )
        .await?;
    handle.trickle_completed().await
}

/// A publisher in a Janus videoroom: a handle plus the bots' [`Publisher`].
pub struct JanusPublisher {
    handle: JanusHandle,
    /// The feed id Janus gave this publisher (subscribers subscribe to it).
    pub feed: u64,
    /// The media connection.
    pub publisher: Arc<Publisher>,
}

impl JanusPublisher {
    /// Joins `room` as a publisher, publishes `sources` and starts sending once connected.
    pub async fn join(
        session: &Arc<JanusSession>,
        room: u64,
        display: &str,
        sources: &[TrackSource],
        config: PublisherConfig,
        timeout: Duration,
    ) -> Result<JanusPublisher> {
        let (handle, feed) = join_as_publisher(session, room, display).await?;
        let publisher = Arc::new(Publisher::new(sources, config).await?);
        let (offer, _) = publisher.create_offer().await?;
        let answer = publish_offer(&handle, sources, &offer).await?;
        tracing::debug!(%offer, %answer, "janus publisher negotiation");
        publisher.apply_answer(&answer).await?;
        handle.trickle_completed().await?;
        publisher.wait_connected(timeout).await?;
        publisher.start();
        Ok(JanusPublisher {
            handle,
            feed,
            publisher,
        })
    }

    /// Leaves and closes the connection.
    pub async fn close(&self) {
        let _ = self.publisher.close().await;
        self.handle.detach().await;
    }
}

/// A subscriber in a Janus videoroom: one handle receiving several feeds, plus the bots'
/// [`Subscriber`].
pub struct JanusSubscriber {
    handle: JanusHandle,
    /// The media connection.
    pub subscriber: Arc<Subscriber>,
}

impl JanusSubscriber {
    /// Joins `room` as a subscriber to every stream of `feeds`, answers Janus's offer and waits
    /// for the connection.
    pub async fn join(
        session: &Arc<JanusSession>,
        room: u64,
        feeds: &[u64],
        config: SubscriberConfig,
        timeout: Duration,
    ) -> Result<JanusSubscriber> {
        let (handle, offer, tracks) = join_as_subscriber(session, room, feeds).await?;
        let subscriber = Arc::new(Subscriber::new(config).await?);
        let answer = subscriber.apply_offer(&offer, tracks).await?;
        start_subscription(&handle, &answer).await?;
        subscriber.wait_connected(timeout).await?;
        Ok(JanusSubscriber { handle, subscriber })
    }

    /// Leaves and closes the connection.
    pub async fn close(&self) {
        let _ = self.subscriber.close().await;
        self.handle.detach().await;
    }
}

/// A light (str0m) publisher in a Janus videoroom: a handle plus a [`LightPeer`].
pub struct JanusLightPublisher {
    handle: JanusHandle,
    /// The feed id Janus gave this publisher.
    pub feed: u64,
    /// The media connection.
    pub publisher: Arc<LightPeer>,
}

impl JanusLightPublisher {
    /// Joins `room` as a publisher, publishes `sources` from a [`LightPeer`] bound to
    /// `bind_ip` and starts sending once connected.
    pub async fn join(
        session: &Arc<JanusSession>,
        room: u64,
        display: &str,
        sources: &[TrackSource],
        media: (std::net::IpAddr, AudioParams, VideoParams),
        timeout: Duration,
    ) -> Result<JanusLightPublisher> {
        let (handle, feed) = join_as_publisher(session, room, display).await?;
        let (bind_ip, audio, video) = media;
        let publisher = Arc::new(
            LightPeer::with_role(
                bind_ip,
                PeerTransport::Udp,
                PeerRole::Publisher,
                audio,
                video,
            )
            .await?,
        );
        let (offer, _) = publisher.publish_offer(sources, false).await?;
        let answer = publish_offer(&handle, sources, &offer).await?;
        tracing::debug!(%offer, %answer, "janus light publisher negotiation");
        publisher.accept_answer(&answer).await?;
        handle.trickle_completed().await?;
        publisher.wait_connected(timeout).await?;
        publisher.start().await?;
        Ok(JanusLightPublisher {
            handle,
            feed,
            publisher,
        })
    }

    /// Leaves and stops the peer.
    pub async fn close(&self) {
        self.publisher.close();
        self.handle.detach().await;
    }
}

/// A light (str0m) subscriber in a Janus videoroom.
pub struct JanusLightSubscriber {
    handle: JanusHandle,
    /// The media connection.
    pub subscriber: Arc<LightPeer>,
}

impl JanusLightSubscriber {
    /// Joins `room` as a subscriber to every stream of `feeds` with a [`LightPeer`] bound to
    /// `bind_ip`, answers Janus's offer and waits for the connection.
    pub async fn join(
        session: &Arc<JanusSession>,
        room: u64,
        feeds: &[u64],
        bind_ip: std::net::IpAddr,
        timeout: Duration,
    ) -> Result<JanusLightSubscriber> {
        let (handle, offer, tracks) = join_as_subscriber(session, room, feeds).await?;
        let subscriber = Arc::new(
            LightPeer::new(bind_ip, AudioParams::default(), VideoParams::default()).await?,
        );
        let answer = subscriber.accept_offer(&offer, tracks).await?;
        start_subscription(&handle, &answer).await?;
        subscriber.wait_connected(timeout).await?;
        Ok(JanusLightSubscriber { handle, subscriber })
    }

    /// Leaves and stops the peer.
    pub async fn close(&self) {
        self.subscriber.close();
        self.handle.detach().await;
    }
}

/// The feed ids of `listparticipants` entries flagged `publisher: true`.
fn active_publishers(participants: &Value) -> Vec<u64> {
    participants
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["publisher"] == true)
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

/// Janus's `streams` list as the subscriber's track table: `<feed>:microphone` / `<feed>:camera`.
pub fn subscribed_tracks(streams: &Value) -> Vec<SubscribedTrack> {
    let Some(list) = streams.as_array() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|s| {
            let mid = s["mid"].as_str()?.to_owned();
            let source = match s["type"].as_str()? {
                "audio" => TrackSource::Microphone,
                "video" => TrackSource::Camera,
                _ => return None,
            };
            let feed = s["feed_id"]
                .as_u64()
                .map(|f| f.to_string())
                .unwrap_or_default();
            Some(SubscribedTrack {
                mid,
                track: TrackInfo {
                    track_id: format!("{feed}:{source}"),
                    participant_id: feed.clone(),
                    user_id: s["feed_display"].as_str().unwrap_or("").to_owned(),
                    source,
                    muted: false,
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_become_tracks() {
        let v = json!([
            {"mid": "0", "type": "audio", "feed_id": 7, "feed_display": "a"},
            {"mid": "1", "type": "video", "feed_id": 7},
            {"mid": "2", "type": "data"},
            {"type": "audio"}
        ]);
        let t = subscribed_tracks(&v);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].track.track_id, "7:microphone");
        assert_eq!(t[1].mid, "1");
        assert_eq!(t[1].track.source, TrackSource::Camera);
        assert!(subscribed_tracks(&json!(null)).is_empty());
    }

    #[test]
    fn active_publishers_are_listed() {
        let v = json!([
            {"id": 1, "publisher": true},
            {"id": 2, "publisher": false},
            {"id": 3},
            {"publisher": true}
        ]);
        assert_eq!(active_publishers(&v), vec![1]);
        assert!(active_publishers(&json!(null)).is_empty());
    }

    #[test]
    fn errors_are_recognised() {
        assert!(
            janus_error(&json!({"janus": "error", "error": {"code": 458, "reason": "x"}}))
                .is_some()
        );
        assert!(janus_error(&json!({"janus": "success"})).is_none());
        assert!(plugin_error(&json!({"error_code": 426, "error": "No such room"})).is_some());
        assert!(jsep_sdp(&json!({"jsep": {"type": "offer", "sdp": "v=0"}}), "answer").is_err());
    }
}
