//! The signaling WebSocket, `GET /v1/signal?token=...` (or a bearer header).
//!
//! One connection joins at most one call at a time. A reader loop parses [`ClientMessage`]s
//! (rate-limited per socket); a writer task drains the socket's bounded queue of pre-serialized
//! messages and watches a close signal beside it, so a slow client is closed (1008) even when
//! its queue is full. Oversized messages close the socket with 1009; malformed or unknown
//! messages get an `error` message and the connection stays; a dropped socket parks its session
//! for `limits.resume_grace_secs` (a new socket takes it back with `resume`, see
//! [`crate::state`]'s resume registry), then it leaves the call; a socket outside any call that
//! stays silent is closed (4408). The rules are in section 4 of docs/PROTOCOL.md.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Utf8Bytes, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use greenroom_proto::{
    CallCid, ClientMessage, RingClientMessage, ServerMessage, SignalMessage, SourceSet,
    TrackSource, PROTOCOL_VERSION,
};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::Message;

use crate::auth::{unix_now_ms, AuthError, Claims};
use crate::call::CallError;
use crate::cluster::relay::Entry;
use crate::error::ApiError;
use crate::state::{
    new_resume_token, AppState, CloseReason, Dropped, Inbox, Notice, Outbound, Outbox, ResumeError,
    SocketSlot, Taken, REPLACED_CLOSE_CODE, SESSION_QUEUE,
};

mod socket;

use socket::{RawUpgrade, MAX_FRAME};

/// How long a `resume` waits for an old socket that still holds the session to let go.
const TAKEOVER_WAIT: Duration = Duration::from_secs(3);

/// Bytes the WebSocket may buffer for writing before a write fails (bounds a connection's
/// memory; every frame fits many times).
const MAX_WRITE_BUFFER: usize = 4 << 20;
/// The read buffer each socket reserves (tungstenite's default is 128 KiB, which an idle socket
/// would hold for its whole life); it grows for larger messages, up to the message limit.
/// Client messages are small: a ping is 16 bytes, an SDP answer about 1-2 KiB.
const READ_BUFFER: usize = 1 << 10;
/// How long the writer tries to deliver a close frame to a client that does not read.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// The close code of an idle socket (4000 + HTTP 408).
pub const IDLE_CLOSE_CODE: u16 = 4408;

/// Query string of the signaling endpoint.
#[derive(Debug, Deserialize)]
pub struct SignalQuery {
    /// The token, when not sent as a bearer header.
    pub token: Option<String>,
    /// This device's id for ringing (default: a fresh id per socket).
    pub device_id: Option<String>,
}

/// Upgrades to the signaling WebSocket after verifying the token (401 before upgrade) and the
/// user's socket count (429 `too_many_connections` before upgrade).
pub async fn signal(
    State(state): State<Arc<AppState>>,
    Query(q): Query<SignalQuery>,
    headers: HeaderMap,
    raw: RawUpgrade,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::to_owned);
    let token = q.token.or(header).ok_or(AuthError::Missing)?;
    let claims = state.auth.verify(&token)?;
    let device_id = match q.device_id {
        Some(d) => {
            greenroom_proto::validate_id(&d)
                .map_err(|e| ApiError::BadRequest(format!("device_id: {e}")))?;
            d
        }
        None => uuid::Uuid::new_v4().simple().to_string(),
    };
    // Reserved before the upgrade; a failed upgrade drops the closure and with it the slot.
    let slot = state.open_socket(&claims.sub)?;
    // Cluster mode: a socket a peer node relays here is served here, never relayed on.
    let relayed = headers.contains_key(crate::cluster::HOP_HEADER);
    // ...and the relaying node hosts the participant's media when it names itself.
    let media_node = headers
        .get(crate::cluster::MEDIA_NODE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|n| relayed && greenroom_proto::validate_id(n).is_ok())
        .map(str::to_owned);
    let limit = state.config.limits.max_message_bytes;
    // The hard cap is above our limit so an oversized message is seen and answered with 1009.
    // Every frame is written at once (write buffer size 0): the buffer holds one frame of at
    // most `MAX_FRAME` bytes, and `write_loop` flushes after each frame anyway.
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit * 4))
        .max_frame_size(Some(limit * 4))
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0);
    Ok(socket::accept(raw, ws, &headers, config, move |socket| {
        // One span per connection (a participant session once joined): every log line of
        // this socket carries the user, and the call and participant after `join`.
        let span = tracing::info_span!(
            "session",
            user = %claims.sub,
            call = tracing::field::Empty,
            participant = tracing::field::Empty
        );
        tracing::Instrument::instrument(
            run(state, claims, device_id, slot, socket, relayed, media_node),
            span,
        )
    }))
}

/// A token bucket: `rate` tokens per second up to `burst`.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            at: now,
        }
    }

    /// Takes a token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A `subscriber_offer` waiting for its answer.
#[derive(Debug)]
struct PendingOffer {
    participant_id: String,
    text: Utf8Bytes,
    resend_at: Instant,
}

struct Conn {
    state: Arc<AppState>,
    claims: Claims,
    outbox: Outbox,
    joined: Option<(CallCid, String)>,
    /// Sources published by the current session (mid list comes with each publish).
    published: SourceSet,
    /// This socket's device id for ringing.
    device_id: String,
    bucket: TokenBucket,
    /// Whether the current run of dropped messages was answered with `rate_limited`.
    rate_warned: bool,
    offer: Option<PendingOffer>,
    /// When a socket outside any call is closed unless it sends `ping`, `join` or a ring message.
    idle_at: Option<Instant>,
    /// The `request_id` of the client message being handled, echoed in its direct reply and
    /// errors (protocol 2); `None` between messages, so events and later replies carry none.
    request_id: Option<String>,
    /// When this session's recent reactions and custom events were sent (rate limit).
    recent_sends: std::collections::VecDeque<std::time::Instant>,
    /// Cluster mode: this socket was relayed here by a peer node (served here, never relayed).
    relayed: bool,
    /// Cluster mode: the node that relayed this socket here hosts the session's media.
    media_node: Option<String>,
    /// Cluster mode: this socket's call is homed on another node; every message goes there.
    relay: Option<crate::cluster::relay::Relay>,
}

/// Reactions plus custom events one session may send per [`SEND_WINDOW`].
const SEND_LIMIT: usize = 20;
/// The window of [`SEND_LIMIT`].
const SEND_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the reader stopped; the session (if any) leaves with this reason.
type LeaveReason = &'static str;

/// What a connection's tasks need of its socket: a WebSocket ([`socket::Socket`] when served; any
/// tokio-tungstenite stream in tests).
trait WsIo:
    futures_util::Stream<Item = Result<Message, tungstenite::Error>>
    + futures_util::Sink<Message, Error = tungstenite::Error>
    + Send
    + Unpin
    + 'static
{
}

impl<T> WsIo for T where
    T: futures_util::Stream<Item = Result<Message, tungstenite::Error>>
        + futures_util::Sink<Message, Error = tungstenite::Error>
        + Send
        + Unpin
        + 'static
{
}

async fn run<S: WsIo>(
    state: Arc<AppState>,
    claims: Claims,
    device_id: String,
    slot: SocketSlot,
    socket: S,
    relayed: bool,
    media_node: Option<String>,
) {
    let (outbox, inbox) = Outbox::new(SESSION_QUEUE);
    slot.attach(outbox.clone());
    let Inbox {
        queue,
        close,
        mut notices,
    } = inbox;
    let (sink, stream) = socket.split();
    let mut writer = tokio::spawn(write_loop(sink, queue, close.clone()));
    // Every socket is a device of its user for ringing (section 6 of docs/PROTOCOL.md).
    let device_key =
        state
            .ringing
            .connect_device(&claims.sub, &device_id, claims.call.clone(), outbox.clone());
    let limits = &state.config.limits;
    let now = Instant::now();
    let bucket = TokenBucket::new(limits.signal_rate_per_sec, limits.signal_burst, now);
    let mut conn = Conn {
        claims,
        outbox,
        joined: None,
        published: SourceSet::EMPTY,
        device_id,
        bucket,
        rate_warned: false,
        offer: None,
        idle_at: None,
        state,
        request_id: None,
        recent_sends: std::collections::VecDeque::new(),
        relayed,
        media_node,
        relay: None,
    };
    conn.reset_idle();
    let closed = close.clone();
    let reason = conn.read_loop(stream, &mut notices, close).await;
    // The server closing a socket for cause (too slow, message too big, shutdown) ends its
    // session at once; a socket that drops, or one replaced by a resume, parks it.
    let server_close = closed.borrow().as_ref().map(|c| c.0);
    let park = server_close.is_none_or(|code| code == REPLACED_CLOSE_CODE);
    if !(park && conn.park(reason, &mut notices)) {
        conn.leave(reason);
    }
    conn.state
        .ringing
        .disconnect_device(&conn.claims.sub, device_key);
    drop(conn);
    // The last outboxes go: the writer drains what is queued and ends.
    drop(slot);
    if tokio::time::timeout(CLOSE_GRACE + Duration::from_secs(1), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

/// Sends queued messages until the queue ends or a close is signalled; then sends the close
/// frame (bounded by [`CLOSE_GRACE`]: a client that does not read is simply dropped). A
/// message longer than [`MAX_FRAME`] goes out in fragments ([`socket::frames`]); a close
/// signalled between two of them sends the close frame after the ones written (control
/// frames may come between fragments, RFC 6455 section 5.4).
async fn write_loop<S: WsIo>(
    mut sink: SplitSink<S, Message>,
    mut queue: mpsc::Receiver<Outbound>,
    mut close: watch::Receiver<Option<CloseReason>>,
) {
    'messages: loop {
        tokio::select! {
            biased;
            _ = close.changed() => break,
            o = queue.recv() => {
                let Some(Outbound::Text(text)) = o else { return };
                for frame in socket::frames(*text, MAX_FRAME) {
                    tokio::select! {
                        biased;
                        _ = close.changed() => break 'messages,
                        r = sink.send(Message::Frame(frame)) => if r.is_err() { return },
                    }
                }
            }
        }
    }
    let frame = close.borrow().clone();
    if let Some((code, reason)) = frame {
        let frame = CloseFrame {
            code: code.into(),
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(Message::Close(Some(frame)))).await;
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Conn {
    async fn read_loop<S: WsIo>(
        &mut self,
        mut stream: SplitStream<S>,
        notices: &mut mpsc::UnboundedReceiver<Box<Notice>>,
        mut close: watch::Receiver<Option<CloseReason>>,
    ) -> LeaveReason {
        let limit = self.state.config.limits.max_message_bytes;
        loop {
            let offer_at = self.offer.as_ref().map(|o| o.resend_at);
            tokio::select! {
                r = close.changed() => {
                    let slow = r.is_ok() && close.borrow().as_ref().is_some_and(|c| c.0 == 1008);
                    return if slow { "too_slow" } else { "disconnected" };
                }
                n = notices.recv() => {
                    // The outbox in `self` keeps the channel open.
                    let Some(n) = n else { return "disconnected" };
                    self.on_notice(*n);
                }
                _ = sleep_until(offer_at) => self.resend_offer(),
                _ = sleep_until(self.idle_at) => {
                    tracing::info!("idle socket closed");
                    self.close(IDLE_CLOSE_CODE, "idle timeout");
                    return "disconnected";
                }
                msg = stream.next() => {
                    let Some(msg) = msg else { return "disconnected" };
                    match msg {
                        Ok(Message::Text(text)) => {
                            if text.len() > limit {
                                self.close(1009, "message too big");
                                return "disconnected";
                            }
                            if self.admit() {
                                self.handle_text(&text).await;
                            }
                        }
                        Ok(Message::Binary(b)) => {
                            if b.len() > limit {
                                self.close(1009, "message too big");
                                return "disconnected";
                            }
                            if self.admit() {
                                self.error(
                                    ApiError::BadRequest("binary messages are not supported".into()),
                                    None,
                                );
                            }
                        }
                        Ok(Message::Close(_)) => return "disconnected",
                        Ok(_) => {}
                        Err(tungstenite::Error::Capacity(_)) => {
                            // A message or frame over tungstenite's cap.
                            self.close(1009, "message too big");
                            return "disconnected";
                        }
                        Err(_) => return "disconnected",
                    }
                }
            }
        }
    }

    /// The rate limit: whether to handle this message. A dropped message is answered with one
    /// `rate_limited` error per run of dropped messages.
    fn admit(&mut self) -> bool {
        if self.bucket.take(Instant::now()) {
            self.rate_warned = false;
            return true;
        }
        if !self.rate_warned {
            self.rate_warned = true;
            let l = &self.state.config.limits;
            self.error(
                ApiError::RateLimited(l.signal_rate_per_sec, l.signal_burst),
                None,
            );
        }
        false
    }

    /// Restarts the idle clock of a socket outside any call (none while joined).
    fn reset_idle(&mut self) {
        let secs = self.state.config.limits.idle_ws_secs;
        self.idle_at =
            (self.joined.is_none() && secs > 0).then(|| Instant::now() + Duration::from_secs(secs));
    }

    fn on_notice(&mut self, n: Notice) {
        match n {
            Notice::Removed(r) => {
                // A notice for an older session of this socket (it left and joined again) is
                // stale: the current session stays.
                let current = self
                    .joined
                    .as_ref()
                    .is_some_and(|(_, pid)| *pid == r.participant_id);
                if !current {
                    return;
                }
                self.joined = None;
                self.offer = None;
                self.published = SourceSet::EMPTY;
                self.state.forget_resumable(&r.participant_id);
                tracing::info!(cid = %r.call_cid, reason = r.reason, "session removed from call");
                self.state
                    .ringing
                    .session_left(&self.state, &r.call_cid, &self.claims.sub);
                self.reply(SignalMessage::Left {
                    call_cid: r.call_cid,
                    participant_id: r.participant_id,
                });
                self.reset_idle();
            }
            Notice::Offer {
                participant_id,
                text,
            } => {
                if self.joined.as_ref().map(|(_, p)| p) != Some(&participant_id) {
                    return;
                }
                self.outbox.send_text(text.clone());
                self.offer = Some(PendingOffer {
                    participant_id,
                    text,
                    resend_at: Instant::now() + self.offer_timeout(),
                });
            }
        }
    }

    fn offer_timeout(&self) -> Duration {
        Duration::from_millis(self.state.config.limits.subscriber_offer_timeout_ms)
    }

    /// No `subscriber_answer` came in time: send the pending offer again.
    fn resend_offer(&mut self) {
        let timeout = self.offer_timeout();
        let Some(o) = &mut self.offer else { return };
        if self.joined.as_ref().map(|(_, p)| p) != Some(&o.participant_id) {
            self.offer = None;
            return;
        }
        tracing::info!("subscriber offer not answered in time, sending it again");
        self.outbox.send_text(o.text.clone());
        o.resend_at = Instant::now() + timeout;
    }

    /// The one way out for direct replies and errors: carries the `request_id` of the message
    /// being handled, if any.
    fn reply(&self, m: SignalMessage) {
        match self.request_id.clone() {
            None => self.outbox.send(&ServerMessage::Signal(m)),
            Some(request_id) => self.send_tagged(&greenroom_proto::Reply {
                message: ServerMessage::Signal(m),
                request_id: Some(request_id),
            }),
        }
    }

    /// Queues a reply tagged with a request id.
    fn send_tagged<T: serde::Serialize>(&self, reply: &greenroom_proto::Reply<T>) {
        match serde_json::to_string(reply) {
            Ok(text) => self.outbox.send_text(text.into()),
            Err(e) => tracing::error!("cannot serialize reply: {e}"),
        }
    }

    fn close(&self, code: u16, reason: &str) {
        self.outbox.close(code, reason);
    }

    /// The one way out for errors (a future `request_id` is added here).
    fn error(&self, e: ApiError, request: Option<&str>) {
        self.reply(SignalMessage::Error {
            error: e.body(),
            request: request.map(str::to_owned),
        });
    }

    /// The socket dropped (not by `leave`): parks the joined session for the resume grace
    /// period. Returns false when there is nothing to park or it cannot be parked.
    fn park(
        &mut self,
        reason: &'static str,
        notices: &mut mpsc::UnboundedReceiver<Box<Notice>>,
    ) -> bool {
        let Some((cid, pid)) = &self.joined else {
            return false;
        };
        let parked = self.state.park(Dropped {
            call: cid,
            participant_id: pid,
            outbox: &self.outbox,
            notices,
            published: self.published,
            offer: self.offer.as_ref().map(|o| o.text.clone()),
            reason,
        });
        if parked {
            self.joined = None;
            self.offer = None;
            self.published = SourceSet::EMPTY;
        }
        parked
    }

    fn leave(&mut self, reason: &'static str) {
        self.offer = None;
        if let Some((cid, pid)) = self.joined.take() {
            self.state.forget_resumable(&pid);
            let _ = self
                .state
                .with_call(&cid, |c| Ok(((), c.leave(&pid, reason))));
            self.state.media.leave(&cid, &pid);
            self.published = SourceSet::EMPTY;
            self.state
                .ringing
                .session_left(&self.state, &cid, &self.claims.sub);
        }
        self.reset_idle();
    }

    async fn handle_text(&mut self, text: &str) {
        if let Some(relay) = &self.relay {
            return relay.forward(text);
        }
        let value: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return self.error(ApiError::InvalidJson(e.to_string()), None),
        };
        // Protocol 2: an optional top-level `request_id`, echoed in the reply and any error.
        match value.get("request_id") {
            None => {}
            Some(serde_json::Value::String(id))
                if greenroom_proto::validate_request_id(id).is_ok() =>
            {
                self.request_id = Some(id.clone());
            }
            Some(_) => {
                let kind = value.get("type").and_then(|t| t.as_str());
                return self.error(
                    ApiError::BadRequest(
                        "request_id: 1 to 64 characters of A-Z a-z 0-9 _ - . :".into(),
                    ),
                    kind,
                );
            }
        }
        self.handle_value(value).await;
        self.request_id = None;
    }

    async fn handle_value(&mut self, value: serde_json::Value) {
        let Some(kind) = value
            .get("type")
            .and_then(|t| t.as_str())
            .map(str::to_owned)
        else {
            return self.error(
                ApiError::UnknownMessage("a message needs a string `type`".into()),
                None,
            );
        };
        if RingClientMessage::TYPES.contains(&kind.as_str()) {
            self.reset_idle();
            return self.handle_ring(value, kind);
        }
        if !ClientMessage::TYPES.contains(&kind.as_str()) {
            return self.error(
                ApiError::UnknownMessage(format!("unknown message type `{kind}`")),
                Some(&kind),
            );
        }
        let msg = match ClientMessage::deserialize(&value) {
            Ok(m) => m,
            Err(e) => {
                // Name the field with the bad value when there is one (typed per field).
                let detail = match ClientMessage::bad_field(&value) {
                    Some((field, why)) => format!("{kind}: field `{field}`: {why}"),
                    None => format!("{kind}: {e}"),
                };
                return self.error(ApiError::InvalidJson(detail), Some(&kind));
            }
        };
        if matches!(
            msg,
            ClientMessage::Ping | ClientMessage::Join { .. } | ClientMessage::Resume { .. }
        ) {
            self.reset_idle();
        }
        if let Err(e) = self.handle(msg).await {
            self.error(e, Some(&kind));
        }
    }

    /// A user-level ringing request (section 6 of docs/PROTOCOL.md); works joined or not.
    fn handle_ring(&self, value: serde_json::Value, kind: String) {
        let msg: RingClientMessage = match serde_json::from_value(value) {
            Ok(m) => m,
            Err(e) => {
                return self.error(ApiError::InvalidJson(format!("{kind}: {e}")), Some(&kind));
            }
        };
        let r = self
            .state
            .ringing
            .handle_client(&self.state, &self.claims, &self.device_id, msg);
        match r {
            Ok(reply) => self.send_tagged(&greenroom_proto::Reply {
                message: reply,
                request_id: self.request_id.clone(),
            }),
            Err(e) => self.reply(SignalMessage::Error {
                error: e.body(),
                request: Some(kind),
            }),
        }
    }

    fn joined(&self) -> Result<(CallCid, String), ApiError> {
        self.joined
            .clone()
            .ok_or_else(|| ApiError::BadRequest("join a call first".into()))
    }

    async fn handle(&mut self, msg: ClientMessage) -> Result<(), ApiError> {
        match msg {
            ClientMessage::Ping => self.reply(SignalMessage::Pong),
            ClientMessage::Join {
                call_cid,
                create,
                settings,
            } => {
                // Boxed, as below: the connection's future would otherwise hold the largest
                // branch (the cluster relay's connect) for the socket's whole life.
                Box::pin(self.enter(Entry::Join {
                    call_cid,
                    create,
                    settings,
                }))
                .await?
            }
            ClientMessage::Leave => {
                let (cid, pid) = self.joined()?;
                self.leave("left");
                self.reply(SignalMessage::Left {
                    call_cid: cid,
                    participant_id: pid,
                });
            }
            ClientMessage::RequestPermission { permissions } => {
                let (cid, _) = self.joined()?;
                let actor = self.claims.actor();
                self.state.with_call(&cid, |c| {
                    Ok(((), c.request_permission(&actor, &permissions)?))
                })?;
            }
            ClientMessage::SetMuted { source, muted } => {
                let (cid, pid) = self.joined()?;
                self.state
                    .with_call(&cid, |c| Ok(((), c.set_self_muted(&pid, source, muted)?)))?;
            }
            ClientMessage::Publish { sdp, tracks } => {
                let (cid, pid) = self.joined()?;
                let mut sources = SourceSet::EMPTY;
                let mut mids = std::collections::HashSet::new();
                for t in &tracks {
                    if !mids.insert(t.mid.as_str()) {
                        return Err(ApiError::BadRequest(format!(
                            "mid {} carries two sources",
                            t.mid
                        )));
                    }
                    if sources.contains(t.source) {
                        return Err(ApiError::BadRequest(format!(
                            "source {} is published twice",
                            t.source
                        )));
                    }
                    sources = sources.with(t.source);
                }
                self.state.media.ready(&pid)?;
                self.state.read_call(&cid, |c| {
                    tracks
                        .iter()
                        .try_for_each(|t| c.check_publish(&pid, t.source))
                })??;
                // Boxed (rare, and large with a remote media node's RPC).
                let answer = Box::pin(self.state.media.publish(&pid, sdp, tracks)).await?;
                self.reply(SignalMessage::PublishAnswer { sdp: answer });
                self.published = sources;
                self.state
                    .with_call(&cid, |c| Ok(((), c.set_published(&pid, sources)?)))?;
            }
            ClientMessage::Unpublish { source } => {
                let (cid, pid) = self.joined()?;
                self.state.media.unpublish(&pid, source);
                self.published = self.published.without(source);
                let now = self.published;
                self.state
                    .with_call(&cid, |c| Ok(((), c.set_published(&pid, now)?)))?;
            }
            ClientMessage::SubscriberAnswer { sdp } => {
                let (_, pid) = self.joined()?;
                // Answered (or failed): the offer is no longer pending either way.
                self.offer = None;
                Box::pin(self.state.media.subscriber_answer(&pid, sdp)).await?;
            }
            ClientMessage::IceCandidate { target, candidate } => {
                let (_, pid) = self.joined()?;
                self.state.media.ice_candidate(&pid, target, candidate)?;
            }
            ClientMessage::Subscribe { track_id } => {
                let (_, pid) = self.joined()?;
                self.state.media.set_subscribed(&pid, &track_id, true)?;
            }
            ClientMessage::Unsubscribe { track_id } => {
                let (_, pid) = self.joined()?;
                self.state.media.set_subscribed(&pid, &track_id, false)?;
            }
            ClientMessage::SetQuality { track_id, quality } => {
                let (_, pid) = self.joined()?;
                self.state.media.set_quality(&pid, &track_id, quality)?;
            }
            ClientMessage::SendReaction { mut reaction } => {
                let (cid, pid) = self.joined()?;
                let bad = |e: greenroom_proto::PayloadError| ApiError::BadRequest(e.to_string());
                reaction.reaction_type = greenroom_proto::validate_text(
                    "type",
                    &reaction.reaction_type,
                    greenroom_proto::MAX_REACTION_CHARS,
                )
                .map_err(bad)?;
                if let Some(code) = &reaction.emoji_code {
                    let code = greenroom_proto::validate_text(
                        "emoji_code",
                        code,
                        greenroom_proto::MAX_REACTION_CHARS,
                    )
                    .map_err(bad)?;
                    reaction.emoji_code = Some(code);
                }
                if let Some(custom) = &reaction.custom {
                    greenroom_proto::validate_custom(
                        "custom",
                        custom,
                        greenroom_proto::MAX_CUSTOM_BYTES,
                    )
                    .map_err(bad)?;
                }
                let actor = self.claims.actor();
                // The capability is checked before the rate limit counts the send.
                self.state.read_call(&cid, |c| {
                    if c.capabilities(&actor)
                        .contains(greenroom_proto::Capability::CreateReaction)
                    {
                        Ok(())
                    } else {
                        Err(CallError::MissingCapability(
                            greenroom_proto::Capability::CreateReaction,
                        ))
                    }
                })??;
                if !self.take_send_slot() {
                    self.rate_limited("send_reaction");
                    return Ok(());
                }
                self.state
                    .with_call(&cid, |c| Ok(((), c.send_reaction(&actor, &pid, reaction)?)))?;
            }
            ClientMessage::Resume { resume_token } => {
                Box::pin(self.enter(Entry::Resume { resume_token })).await?
            }
            ClientMessage::RestartIce => {
                let (_, pid) = self.joined()?;
                self.state.media.restart_ice(&pid)?;
            }
            ClientMessage::SendEvent { custom } => {
                let (cid, pid) = self.joined()?;
                greenroom_proto::validate_custom(
                    "custom",
                    &custom,
                    greenroom_proto::MAX_EVENT_BYTES,
                )
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
                if !self.take_send_slot() {
                    self.rate_limited("send_event");
                    return Ok(());
                }
                let actor = self.claims.actor();
                self.state
                    .with_call(&cid, |c| Ok(((), c.send_custom(&actor, &pid, custom)?)))?;
            }
        }
        Ok(())
    }

    /// A `join` or `resume`: relayed to the node that serves it in cluster mode
    /// ([`crate::cluster::relay::relay_elsewhere`]), else served here.
    async fn enter(&mut self, entry: Entry) -> Result<(), ApiError> {
        let client = crate::cluster::relay::Client {
            claims: &self.claims,
            device_id: &self.device_id,
            request_id: self.request_id.as_deref(),
            relayed: self.relayed,
            joined: self.joined.is_some(),
        };
        let relay =
            crate::cluster::relay::relay_elsewhere(&self.state, client, &entry, &self.outbox)
                .await?;
        if let Some(r) = relay {
            self.relay = Some(r);
            self.idle_at = None;
            return Ok(());
        }
        match entry {
            Entry::Join {
                call_cid,
                create,
                settings,
            } => self.join(call_cid, create, settings).await,
            Entry::Resume { resume_token } => self.resume(&resume_token).await,
        }
    }

    /// Counts one reaction or custom event against [`SEND_LIMIT`] per [`SEND_WINDOW`]; false
    /// when the session is over the limit (nothing is counted then).
    fn take_send_slot(&mut self) -> bool {
        let now = std::time::Instant::now();
        while self
            .recent_sends
            .front()
            .is_some_and(|t| now.duration_since(*t) >= SEND_WINDOW)
        {
            self.recent_sends.pop_front();
        }
        if self.recent_sends.len() >= SEND_LIMIT {
            return false;
        }
        self.recent_sends.push_back(now);
        true
    }

    /// Replies `error` `rate_limited` to the message being handled.
    fn rate_limited(&self, request: &str) {
        let mut body = ApiError::BadRequest(format!(
            "at most {SEND_LIMIT} reactions and custom events per {} s",
            SEND_WINDOW.as_secs()
        ))
        .body();
        body.code = greenroom_proto::ErrorCode::RateLimited;
        self.reply(SignalMessage::Error {
            error: body,
            request: Some(request.to_owned()),
        });
    }

    /// Answers a failed `resume` with `error` `resume_failed`.
    fn resume_failed(&self, why: ResumeError) {
        tracing::info!(%why, "resume failed");
        let mut body = ApiError::BadRequest(format!("resume failed: {why}")).body();
        body.code = greenroom_proto::ErrorCode::ResumeFailed;
        self.reply(SignalMessage::Error {
            error: body,
            request: Some("resume".to_owned()),
        });
    }

    /// Takes back a parked session (section 4 of docs/PROTOCOL.md, "Resume").
    async fn resume(&mut self, token: &str) -> Result<(), ApiError> {
        if self.joined.is_some() {
            return Err(ApiError::AlreadyJoined);
        }
        if self.state.is_shutting_down() {
            return Err(ApiError::ShuttingDown);
        }
        let give_up = Instant::now() + TAKEOVER_WAIT;
        let (cid, mut parked) = loop {
            match self.state.take_resumable(token, &self.claims.sub) {
                Ok(Taken::Parked(cid, p)) => break (cid, p),
                Ok(Taken::Busy) if Instant::now() < give_up => {
                    // The old socket was told to close; it parks the session as it goes.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(Taken::Busy) => {
                    self.resume_failed(ResumeError::StillHeld);
                    return Ok(());
                }
                Err(e) => {
                    self.resume_failed(e);
                    return Ok(());
                }
            }
        };
        // The token names its participant (checked against the stored digest above).
        let pid = token
            .split_once('.')
            .map(|(p, _)| p.to_owned())
            .unwrap_or_default();
        let user = self.claims.sub.clone();
        if !self.claims.allows_call(&cid) {
            // Only a token of this user gets here: the session is this user's, yet this socket
            // may not be in its call. It ends as if its grace had run out.
            self.state.end_taken(&cid, &pid, &user);
            self.resume_failed(ResumeError::NoSession);
            return Ok(());
        }
        let new_token = new_resume_token(&pid, self.home_id().as_deref());
        let handle = AppState::session_handle(cid.clone(), &user, self.outbox.clone());
        let state = self.state.clone();
        let outbox = self.outbox.clone();
        let request_id = self.request_id.clone();
        let actor = self.claims.actor();
        let resumed = self.state.with_call(&cid, |c| {
            let Some(participant) = c.participant(&pid) else {
                return Err(CallError::UnknownParticipant(pid.clone()));
            };
            // Under the call's lock: every event after this snapshot goes to this socket.
            state.register_session(&pid, handle);
            state.register_resumable(&cid, &pid, &user, &new_token, outbox.clone());
            let resumed = SignalMessage::Resumed {
                protocol: PROTOCOL_VERSION,
                participant,
                call: Box::new(c.state()),
                own_capabilities: c.capabilities(&actor),
                requestable: c.requestable(),
                resume_token: new_token.clone(),
                ice_servers: crate::turn::ice_servers(&state.config, &actor.user_id),
            };
            send_reply(&outbox, resumed, request_id);
            Ok(((), crate::call::Outcome::default()))
        });
        if resumed.is_err() {
            // Removed (kick, block, end of call) while disconnected.
            self.state.end_taken(&cid, &pid, &user);
            self.resume_failed(ResumeError::Gone);
            return Ok(());
        }
        // Offers that came while parked (a removal would have failed the resume above).
        parked.drain_notices(&pid);
        let span = tracing::Span::current();
        span.record("call", tracing::field::display(&cid));
        span.record("participant", pid.as_str());
        tracing::info!("resumed");
        self.joined = Some((cid, pid.clone()));
        self.published = parked.published;
        self.idle_at = None;
        if let Some(text) = parked.offer.take() {
            self.outbox.send_text(text.clone());
            self.offer = Some(PendingOffer {
                participant_id: pid,
                text,
                resend_at: Instant::now() + self.offer_timeout(),
            });
        }
        Ok(())
    }

    /// Cluster mode: this node's id (resume tokens name it).
    fn home_id(&self) -> Option<String> {
        self.state.cluster.get().map(|c| c.node_id().to_owned())
    }

    async fn join(
        &mut self,
        cid: CallCid,
        create: bool,
        settings: greenroom_proto::JoinSettings,
    ) -> Result<(), ApiError> {
        if self.joined.is_some() {
            return Err(ApiError::AlreadyJoined);
        }
        if self.state.is_shutting_down() {
            return Err(ApiError::ShuttingDown);
        }
        if !self.claims.allows_call(&cid) {
            return Err(ApiError::WrongCall(
                self.claims.call.clone().unwrap_or_default(),
            ));
        }
        let name = settings
            .name
            .as_deref()
            .map(greenroom_proto::validate_display_name)
            .transpose()
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        if let Some(custom) = &settings.custom {
            greenroom_proto::validate_custom("custom", custom, greenroom_proto::MAX_CUSTOM_BYTES)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        }
        let custom = settings.custom.clone();
        // Cluster mode: media follows the socket to the node that relayed it here.
        let remote = match &self.media_node {
            Some(n)
                if self.state.cluster.get().is_some()
                    && self.state.media.node_id() != Some(n.as_str()) =>
            {
                Some(self.state.media.connect(&self.state, n).await?)
            }
            _ => None,
        };
        let started = std::time::Instant::now();
        let actor = self.claims.actor();
        if create {
            self.state
                .get_or_create(&cid, &actor, Vec::new(), serde_json::Value::Null)?;
        }
        let pid = uuid::Uuid::new_v4().simple().to_string();
        let resume_token = new_resume_token(&pid, self.home_id().as_deref());
        let handle = AppState::session_handle(cid.clone(), &actor.user_id, self.outbox.clone());
        let state = self.state.clone();
        let outbox = self.outbox.clone();
        let request_id = self.request_id.clone();
        let joined = self.state.with_call(&cid, |c| {
            let (info, mut out) = c.join_with_profile(&actor, &pid, unix_now_ms(), name, custom)?;
            state.register_session(&pid, handle);
            state.register_resumable(&cid, &pid, &actor.user_id, &resume_token, outbox.clone());
            let options = greenroom_sfu::JoinOptions {
                bandwidth_estimation: c.policy().estimates_bandwidth(),
            };
            state.media.join(
                &cid,
                &pid,
                &actor.user_id,
                c.gate(&pid).unwrap_or_default(),
                options,
                remote,
            );
            if settings.start_audio_muted {
                out.merge(c.set_self_muted(&pid, TrackSource::Microphone, true)?);
            }
            if settings.start_video_muted || settings.audio_only {
                out.merge(c.set_self_muted(&pid, TrackSource::Camera, true)?);
            }
            let joined = SignalMessage::Joined {
                protocol: PROTOCOL_VERSION,
                participant: c.participant(&pid).unwrap_or(info),
                call: Box::new(c.state()),
                own_capabilities: c.capabilities(&actor),
                requestable: c.requestable(),
                resume_token: Some(resume_token),
                ice_servers: crate::turn::ice_servers(&state.config, &actor.user_id),
            };
            // Queued before the outcome is applied, so `joined` precedes every event.
            send_reply(&outbox, joined, request_id);
            Ok(((), out))
        });
        match joined {
            Ok(()) => {
                crate::metrics::JOIN_SECONDS.observe(started.elapsed().as_secs_f64());
                let span = tracing::Span::current();
                span.record("call", tracing::field::display(&cid));
                span.record("participant", pid.as_str());
                tracing::info!("joined");
                self.joined = Some((cid, pid));
                self.idle_at = None;
                Ok(())
            }
            Err(e) => {
                if let ApiError::Call(CallError::UnknownParticipant(_)) = e {
                    return Err(ApiError::NotFound("participant".into()));
                }
                Err(e)
            }
        }
    }
}

/// Queues a direct reply (tagged with the request id, if any) on an outbox; used under a call's
/// lock, where `joined` and `resumed` are queued before any event.
fn send_reply(outbox: &Outbox, msg: SignalMessage, request_id: Option<String>) {
    match request_id {
        None => outbox.send(&ServerMessage::Signal(msg)),
        Some(request_id) => match serde_json::to_string(&greenroom_proto::Reply {
            message: ServerMessage::Signal(msg),
            request_id: Some(request_id),
        }) {
            Ok(text) => outbox.send_text(text.into()),
            Err(e) => tracing::error!("cannot serialize a reply: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5, t0);
        assert!((0..5).all(|_| b.take(t0)), "the burst");
        assert!(!b.take(t0), "empty");
        // 10 per second: one token after 100 ms, never more than the burst.
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.take(later)).count(), 5);
    }

    /// The connection task's future is held for the socket's life: its rarely taken branches
    /// (`join`, `resume` and their cluster relay) are boxed, so it stays small.
    #[tokio::test]
    async fn the_connection_task_is_small() {
        let state = AppState::new(crate::config::Config::default(), None);
        let token = state.auth.mint("u", None, None, false, 60).unwrap();
        let claims = state.auth.verify(&token).unwrap();
        let slot = state.open_socket("u").unwrap();
        let (io, _peer) = tokio::io::duplex(64);
        let socket = tokio_tungstenite_axum::WebSocketStream::from_raw_socket(
            io,
            tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let task = run(state, claims, "d".to_owned(), slot, socket, false, None);
        let size = std::mem::size_of_val(&task);
        eprintln!("the connection task's future: {size} bytes");
        // 7.6 KiB before the boxing (debug build), 2.0 KiB after.
        assert!(size <= 3 << 10, "{size} bytes");
    }
}
