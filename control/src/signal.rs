//! The signaling WebSocket, `GET /v1/signal?token=...` (or a bearer header).
//!
//! One connection joins at most one call at a time. A reader loop parses [`ClientMessage`]s; a
//! writer task drains the session's bounded queue. Oversized messages close the socket with
//! 1009; malformed or unknown messages get an `error` message and the connection stays; a
//! dropped socket leaves the call.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use greenroom_proto::{
    CallCid, ClientMessage, ServerMessage, SignalMessage, SourceSet, TrackSource, PROTOCOL_VERSION,
};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::auth::{unix_now_ms, AuthError, Claims};
use crate::call::CallError;
use crate::error::ApiError;
use crate::state::{AppState, Outbound, SESSION_QUEUE};

/// Query string of the signaling endpoint.
#[derive(Debug, Deserialize)]
pub struct SignalQuery {
    /// The token, when not sent as a bearer header.
    pub token: Option<String>,
    /// This device's id for ringing (default: a fresh id per socket).
    pub device_id: Option<String>,
}

/// Upgrades to the signaling WebSocket after verifying the token (401 before upgrade).
pub async fn signal(
    State(state): State<Arc<AppState>>,
    Query(q): Query<SignalQuery>,
    headers: HeaderMap,
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
    let limit = state.config.limits.max_message_bytes;
    // The hard cap is above our limit so an oversized message is seen and answered with 1009.
    Ok(ws
        .max_message_size(limit * 4)
        .max_frame_size(limit * 4)
        .on_upgrade(move |socket| {
            // One span per connection (a participant session once joined): every log line of
            // this socket carries the user, and the call and participant after `join`.
            let span = tracing::info_span!(
                "session",
                user = %claims.sub,
                call = tracing::field::Empty,
                participant = tracing::field::Empty
            );
            tracing::Instrument::instrument(run(state, claims, device_id, socket), span)
        }))
}

struct Conn {
    state: Arc<AppState>,
    claims: Claims,
    tx: mpsc::Sender<Outbound>,
    joined: Option<(CallCid, String)>,
    /// Sources published by the current session (mid list comes with each publish).
    published: SourceSet,
    /// This socket's device id for ringing.
    device_id: String,
    /// The `request_id` of the client message being handled, echoed in its direct reply and
    /// errors (protocol 2); `None` between messages, so events and later replies carry none.
    request_id: Option<String>,
    /// When this session's recent reactions and custom events were sent (rate limit).
    recent_sends: std::collections::VecDeque<std::time::Instant>,
}

/// Reactions plus custom events one session may send per [`SEND_WINDOW`].
const SEND_LIMIT: usize = 20;
/// The window of [`SEND_LIMIT`].
const SEND_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

async fn run(state: Arc<AppState>, claims: Claims, device_id: String, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Outbound>(SESSION_QUEUE);
    let (removed_tx, mut removed_rx) = mpsc::unbounded_channel::<&'static str>();
    let writer = tokio::spawn(async move {
        while let Some(o) = rx.recv().await {
            match o {
                Outbound::Msg(m) => {
                    let text = match serde_json::to_string(&*m) {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::error!("cannot serialize message: {e}");
                            continue;
                        }
                    };
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Outbound::Text(text) => {
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Outbound::Removed { reason } => {
                    let _ = removed_tx.send(reason);
                }
                Outbound::Close(code, reason) => {
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame {
                            code,
                            reason: Utf8Bytes::from(reason),
                        })))
                        .await;
                    break;
                }
            }
        }
    });
    let limit = state.config.limits.max_message_bytes;
    // Every socket is a device of its user for ringing (section 6 of docs/PROTOCOL.md).
    let device_key =
        state
            .ringing
            .connect_device(&claims.sub, &device_id, claims.call.clone(), tx.clone());
    let mut conn = Conn {
        state,
        claims,
        tx,
        joined: None,
        published: SourceSet::EMPTY,
        device_id,
        request_id: None,
        recent_sends: std::collections::VecDeque::new(),
    };
    loop {
        tokio::select! {
            reason = removed_rx.recv() => {
                // None: the writer task ended (the socket is gone); leave below.
                let Some(reason) = reason else { break };
                if let Some((cid, _)) = conn.joined.take() {
                    conn.published = SourceSet::EMPTY;
                    tracing::info!(%cid, reason, "session removed from call");
                    conn.state.ringing.session_left(&conn.state, &cid, &conn.claims.sub);
                    conn.reply(SignalMessage::Left { call_cid: cid });
                }
            }
            msg = stream.next() => {
                let Some(msg) = msg else { break };
                match msg {
                    Ok(Message::Text(text)) => {
                        if text.len() > limit {
                            conn.close(1009, "message too big");
                            break;
                        }
                        conn.handle_text(&text).await;
                    }
                    Ok(Message::Binary(b)) => {
                        if b.len() > limit {
                            conn.close(1009, "message too big");
                            break;
                        }
                        conn.error(ApiError::BadRequest("binary messages are not supported".into()), None);
                    }
                    Ok(Message::Close(_)) => break,
                    Ok(_) => {}
                    Err(e) => {
                        let too_big = std::error::Error::source(&e)
                            .map(|s| s.to_string().contains("too long") || s.to_string().contains("Space limit"))
                            .unwrap_or(false)
                            || e.to_string().contains("too long");
                        if too_big {
                            conn.close(1009, "message too big");
                        }
                        break;
                    }
                }
            }
        }
    }
    conn.leave("disconnected");
    conn.state
        .ringing
        .disconnect_device(&conn.claims.sub, device_key);
    drop(conn);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
}

impl Conn {
    fn send(&self, m: ServerMessage) {
        let _ = self.tx.try_send(Outbound::Msg(Box::new(m)));
    }

    /// A direct reply to the message being handled: carries its `request_id`, if any.
    fn reply(&self, m: SignalMessage) {
        match self.request_id.clone() {
            None => self.send(ServerMessage::Signal(m)),
            Some(request_id) => self.send_tagged(&greenroom_proto::Reply {
                message: ServerMessage::Signal(m),
                request_id: Some(request_id),
            }),
        }
    }

    /// Queues an already tagged reply (serialized here: `Outbound::Msg` has no request id).
    fn send_tagged<T: serde::Serialize>(&self, reply: &greenroom_proto::Reply<T>) {
        match serde_json::to_string(reply) {
            Ok(text) => {
                let _ = self.tx.try_send(Outbound::Text(text));
            }
            Err(e) => tracing::error!("cannot serialize reply: {e}"),
        }
    }

    fn close(&self, code: u16, reason: &str) {
        let _ = self.tx.try_send(Outbound::Close(code, reason.to_owned()));
    }

    fn error(&self, e: ApiError, request: Option<&str>) {
        self.reply(SignalMessage::Error {
            error: e.body(),
            request: request.map(str::to_owned),
        });
    }

    fn leave(&mut self, reason: &'static str) {
        if let Some((cid, pid)) = self.joined.take() {
            let _ = self
                .state
                .with_call(&cid, |c| Ok(((), c.leave(&pid, reason))));
            if let Some(sfu) = &self.state.sfu {
                sfu.leave(&pid);
            }
            self.published = SourceSet::EMPTY;
            self.state
                .ringing
                .session_left(&self.state, &cid, &self.claims.sub);
        }
    }

    async fn handle_text(&mut self, text: &str) {
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
        let kind = value
            .get("type")
            .and_then(|t| t.as_str())
            .map(str::to_owned);
        if kind.as_deref().is_some_and(|k| k.starts_with("ring_")) {
            return self.handle_ring(value, kind.unwrap_or_default());
        }
        let msg: ClientMessage = match serde_json::from_value(value) {
            Ok(m) => m,
            Err(e) => {
                let unknown = e.to_string().starts_with("unknown variant");
                let err = if unknown || kind.is_none() {
                    ApiError::BadRequest(format!("unknown message type: {e}"))
                } else {
                    ApiError::InvalidJson(e.to_string())
                };
                let mut body = err.body();
                if unknown || kind.is_none() {
                    body.code = greenroom_proto::ErrorCode::UnknownMessage;
                }
                return self.reply(SignalMessage::Error {
                    error: body,
                    request: kind,
                });
            }
        };
        let kind = kind.unwrap_or_default();
        if let Err(e) = self.handle(msg).await {
            self.error(e, Some(&kind));
        }
    }

    /// A user-level ringing request (section 6 of docs/PROTOCOL.md); works joined or not.
    fn handle_ring(&self, value: serde_json::Value, kind: String) {
        let msg: greenroom_proto::RingClientMessage = match serde_json::from_value(value) {
            Ok(m) => m,
            Err(e) => {
                let mut body = ApiError::InvalidJson(e.to_string()).body();
                if e.to_string().starts_with("unknown variant") {
                    body.code = greenroom_proto::ErrorCode::UnknownMessage;
                }
                return self.reply(SignalMessage::Error {
                    error: body,
                    request: Some(kind),
                });
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

    fn sfu(&self) -> Result<&greenroom_sfu::Sfu, ApiError> {
        self.state
            .sfu
            .as_ref()
            .ok_or_else(|| ApiError::Media("the media plane is not running".into()))
    }

    async fn handle(&mut self, msg: ClientMessage) -> Result<(), ApiError> {
        match msg {
            ClientMessage::Ping => self.reply(SignalMessage::Pong),
            ClientMessage::Join {
                call_cid,
                create,
                settings,
            } => self.join(call_cid, create, settings)?,
            ClientMessage::Leave => {
                let (cid, _) = self.joined()?;
                self.leave("left");
                self.reply(SignalMessage::Left { call_cid: cid });
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
                let sfu = self.sfu()?.clone();
                let mut sources = SourceSet::EMPTY;
                for t in &tracks {
                    if sources.contains(t.source) {
                        return Err(ApiError::BadRequest(format!(
                            "source {} is published twice",
                            t.source
                        )));
                    }
                    sources = sources.with(t.source);
                }
                self.state.read_call(&cid, |c| {
                    tracks
                        .iter()
                        .try_for_each(|t| c.check_publish(&pid, t.source))
                })??;
                let answer = sfu
                    .publish(&pid, sdp, tracks)
                    .await
                    .map_err(|e| ApiError::Media(e.to_string()))?;
                self.reply(SignalMessage::PublishAnswer { sdp: answer });
                self.published = sources;
                self.state
                    .with_call(&cid, |c| Ok(((), c.set_published(&pid, sources)?)))?;
            }
            ClientMessage::Unpublish { source } => {
                let (cid, pid) = self.joined()?;
                if let Some(sfu) = &self.state.sfu {
                    sfu.unpublish(&pid, source);
                }
                self.published = self.published.without(source);
                let now = self.published;
                self.state
                    .with_call(&cid, |c| Ok(((), c.set_published(&pid, now)?)))?;
            }
            ClientMessage::SubscriberAnswer { sdp } => {
                let (_, pid) = self.joined()?;
                self.sfu()?
                    .subscriber_answer(&pid, sdp)
                    .await
                    .map_err(|e| ApiError::Media(e.to_string()))?;
            }
            ClientMessage::IceCandidate { target, candidate } => {
                let (_, pid) = self.joined()?;
                self.sfu()?.ice_candidate(&pid, target, candidate);
            }
            ClientMessage::Subscribe { track_id } => {
                let (_, pid) = self.joined()?;
                self.sfu()?.set_subscribed(&pid, &track_id, true);
            }
            ClientMessage::Unsubscribe { track_id } => {
                let (_, pid) = self.joined()?;
                self.sfu()?.set_subscribed(&pid, &track_id, false);
            }
            ClientMessage::SetQuality { track_id, quality } => {
                let (_, pid) = self.joined()?;
                self.sfu()?.set_quality(&pid, &track_id, quality);
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

    fn join(
        &mut self,
        cid: CallCid,
        create: bool,
        settings: greenroom_proto::JoinSettings,
    ) -> Result<(), ApiError> {
        if self.joined.is_some() {
            let mut body =
                ApiError::BadRequest("this connection already joined a call".into()).body();
            body.code = greenroom_proto::ErrorCode::AlreadyJoined;
            self.reply(SignalMessage::Error {
                error: body,
                request: Some("join".into()),
            });
            return Ok(());
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
        let started = std::time::Instant::now();
        let actor = self.claims.actor();
        if create {
            self.state
                .get_or_create(&cid, &actor, Vec::new(), serde_json::Value::Null)?;
        }
        let pid = uuid::Uuid::new_v4().simple().to_string();
        let handle = AppState::session_handle(cid.clone(), &actor.user_id, self.tx.clone());
        let state = self.state.clone();
        let tx = self.tx.clone();
        let request_id = self.request_id.clone();
        let joined = self.state.with_call(&cid, |c| {
            let (info, mut out) = c.join_with_profile(&actor, &pid, unix_now_ms(), name, custom)?;
            state.register_session(&pid, handle);
            if let Some(sfu) = &state.sfu {
                let options = greenroom_sfu::JoinOptions {
                    bandwidth_estimation: c.policy().may_carry_video(),
                };
                sfu.join_with(
                    &cid,
                    &pid,
                    &actor.user_id,
                    c.gate(&pid).unwrap_or_default(),
                    options,
                );
            }
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
            };
            // Queued before the outcome is applied, so `joined` precedes every event.
            let out_msg = match request_id {
                None => Outbound::Msg(Box::new(ServerMessage::Signal(joined))),
                Some(request_id) => {
                    let tagged = greenroom_proto::Reply {
                        message: ServerMessage::Signal(joined),
                        request_id: Some(request_id),
                    };
                    match serde_json::to_string(&tagged) {
                        Ok(text) => Outbound::Text(text),
                        Err(e) => {
                            tracing::error!("cannot serialize joined: {e}");
                            Outbound::Msg(Box::new(tagged.message))
                        }
                    }
                }
            };
            let _ = tx.try_send(out_msg);
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
