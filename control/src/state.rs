//! The server's shared state: calls, connected sessions, the media plane, and how a call
//! [`Outcome`] is carried out (events pushed, gates sent to the SFU, media torn down).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use greenroom_proto::{CallCid, CallEvent, ServerMessage, SignalMessage};
use greenroom_sfu::{Sfu, SfuEvent};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::auth::{unix_now_ms, Auth};
use crate::call::{Actor, Call, CallError, Outcome};
use crate::config::Config;
use crate::error::ApiError;
use crate::policy::Policy;

/// What a connection's writer task receives.
#[derive(Debug)]
pub enum Outbound {
    /// A message to send.
    Msg(Box<ServerMessage>),
    /// The session was removed from its call (kick, block, end): forget the join.
    Removed {
        /// Why.
        reason: &'static str,
    },
    /// Close the socket with a code and reason.
    Close(u16, String),
    /// A message already serialized to JSON text (ring events and replies).
    Text(String),
}

/// How many messages may wait for a slow client before it is disconnected.
pub const SESSION_QUEUE: usize = 1024;

/// One joined session's handle.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    /// The call it joined.
    pub call: CallCid,
    /// The user.
    pub user_id: String,
    tx: mpsc::Sender<Outbound>,
}

/// Shared state of the running server.
pub struct AppState {
    /// Token signer/verifier.
    pub auth: Auth,
    /// Call type policies.
    pub policy: Policy,
    /// The configuration.
    pub config: Config,
    /// The media plane, when running.
    pub sfu: Option<Sfu>,
    /// Webhook senders, when receivers are configured.
    pub webhooks: Option<crate::webhook::Webhooks>,
    /// Ringing, groups and call history.
    pub ringing: crate::ringing::Ringing,
    calls: Mutex<HashMap<CallCid, Call>>,
    sessions: DashMap<String, SessionHandle>,
    shutting_down: AtomicBool,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State for a configuration, with an optional running media plane.
    pub fn new(config: Config, sfu: Option<Sfu>) -> Arc<AppState> {
        Arc::new(AppState {
            auth: Auth::from_config(&config.keys),
            policy: Policy::with_overrides(&config.call_types),
            webhooks: crate::webhook::Webhooks::start(&config.webhooks, &config.keys.api_secret),
            ringing: crate::ringing::Ringing::new(&config),
            config,
            sfu,
            calls: Mutex::new(HashMap::new()),
            sessions: DashMap::new(),
            shutting_down: AtomicBool::new(false),
        })
    }

    /// Whether joins are refused because the server is draining.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Starts draining: refuse joins, tell every client.
    pub fn begin_shutdown(&self, drain_ms: u64) {
        self.shutting_down.store(true, Ordering::Relaxed);
        for s in self.sessions.iter() {
            let _ = s.tx.try_send(Outbound::Msg(Box::new(ServerMessage::Signal(
                SignalMessage::GoingAway { drain_ms },
            ))));
        }
    }

    /// Number of calls in memory that have not ended.
    pub fn call_count(&self) -> usize {
        self.calls.lock().values().filter(|c| !c.is_ended()).count()
    }

    /// Closes every session's socket (close code 1001, going away).
    pub fn close_all(&self, reason: &str) {
        for s in self.sessions.iter() {
            let _ = s.tx.try_send(Outbound::Close(1001, reason.to_owned()));
        }
    }

    /// Number of joined sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Gets or creates a call; returns whether it was created.
    pub fn get_or_create(
        &self,
        cid: &CallCid,
        actor: &Actor,
        members: Vec<greenroom_proto::Member>,
        settings: serde_json::Value,
    ) -> Result<bool, ApiError> {
        let mut calls = self.calls.lock();
        if let Some(call) = calls.get_mut(cid) {
            let out = call.upsert_members(actor, members)?;
            self.apply(call, out);
            return Ok(false);
        }
        let call = Call::create(
            cid.clone(),
            self.policy.of(cid.call_type).clone(),
            actor,
            members,
            settings,
            unix_now_ms(),
        )?;
        calls.insert(cid.clone(), call);
        Ok(true)
    }

    /// Runs `f` on a call under the lock and carries out its outcome.
    pub fn with_call<T>(
        &self,
        cid: &CallCid,
        f: impl FnOnce(&mut Call) -> Result<(T, Outcome), CallError>,
    ) -> Result<T, ApiError> {
        // One span per call operation: its log lines (and those of applying the outcome) carry
        // the call's cid.
        let _span = tracing::info_span!("call", cid = %cid).entered();
        let mut calls = self.calls.lock();
        let call = calls
            .get_mut(cid)
            .ok_or_else(|| ApiError::NotFound(format!("call {cid}")))?;
        let (value, out) = f(call)?;
        self.apply(call, out);
        Ok(value)
    }

    /// Reads a call under the lock.
    pub fn read_call<T>(&self, cid: &CallCid, f: impl FnOnce(&Call) -> T) -> Result<T, ApiError> {
        let calls = self.calls.lock();
        let call = calls
            .get(cid)
            .ok_or_else(|| ApiError::NotFound(format!("call {cid}")))?;
        Ok(f(call))
    }

    /// Registers a joined session's outbound queue.
    pub fn register_session(&self, participant_id: &str, handle: SessionHandle) {
        self.sessions.insert(participant_id.to_owned(), handle);
    }

    /// A session handle for a new join.
    pub fn session_handle(
        call: CallCid,
        user_id: &str,
        tx: mpsc::Sender<Outbound>,
    ) -> SessionHandle {
        SessionHandle {
            call,
            user_id: user_id.to_owned(),
            tx,
        }
    }

    /// Sends a message to one session; a full queue disconnects the slow client.
    pub fn send_to(&self, participant_id: &str, msg: ServerMessage) {
        if let Some(s) = self.sessions.get(participant_id) {
            Self::push(&s, participant_id, Outbound::Msg(Box::new(msg)));
        }
    }

    fn push(s: &SessionHandle, participant_id: &str, o: Outbound) {
        if let Err(mpsc::error::TrySendError::Full(_)) = s.tx.try_send(o) {
            tracing::warn!(participant_id, "client too slow, closing its connection");
            let _ = s.tx.try_send(Outbound::Close(1008, "too slow".into()));
        }
    }

    /// Carries out an outcome: events, gates, stop orders, removals. Called under the call lock
    /// so that every participant sees one call's events in order.
    fn apply(&self, call: &Call, out: Outcome) {
        let Outcome {
            events,
            gates,
            stop_publishing,
            removed,
        } = out;
        for d in events {
            crate::metrics::EVENTS
                .with_label_values(&[d.event.kind()])
                .inc();
            if let Some(w) = &self.webhooks {
                match serde_json::to_value(&d.event) {
                    Ok(v) => w.send(d.event.kind(), v),
                    Err(e) => tracing::error!("cannot serialize event: {e}"),
                }
            }
            let msg = ServerMessage::Event(d.event);
            for pid in &d.to {
                self.send_to(pid, msg.clone());
            }
        }
        if let Some(sfu) = &self.sfu {
            for (pid, gate) in &gates {
                sfu.set_gate(pid, *gate);
            }
        }
        for (pid, sources, reason) in stop_publishing {
            self.send_to(
                &pid,
                ServerMessage::Signal(SignalMessage::StopPublishing {
                    sources,
                    reason: reason.to_owned(),
                }),
            );
        }
        for (pid, reason) in removed {
            if let Some(sfu) = &self.sfu {
                sfu.leave(&pid);
            }
            if let Some((_, s)) = self.sessions.remove(&pid) {
                Self::push(&s, &pid, Outbound::Removed { reason });
            }
        }
        tracing::trace!(call = %call.cid(), "outcome applied");
    }

    /// Handles one event from the media plane.
    pub fn on_sfu_event(&self, ev: SfuEvent) {
        match ev {
            SfuEvent::SubscriberOffer {
                participant_id,
                sdp,
                tracks,
            } => self.send_to(
                &participant_id,
                ServerMessage::Signal(SignalMessage::SubscriberOffer { sdp, tracks }),
            ),
            SfuEvent::Speakers { call, speakers } => {
                let calls = self.calls.lock();
                let Some(c) = calls.get(&call) else { return };
                let state = c.state();
                let speakers = speakers
                    .into_iter()
                    .filter_map(|(pid, level)| {
                        let p = state
                            .participants
                            .iter()
                            .find(|p| p.participant_id == pid)?;
                        Some(greenroom_proto::Speaker {
                            participant_id: pid,
                            user_id: p.user_id.clone(),
                            level,
                        })
                    })
                    .collect();
                let msg = ServerMessage::Event(CallEvent::SpeakersChanged {
                    call_cid: call,
                    speakers,
                });
                for p in &state.participants {
                    self.send_to(&p.participant_id, msg.clone());
                }
            }
            SfuEvent::PeerFailed {
                participant_id,
                reason,
            } => {
                tracing::warn!(participant_id, reason, "media peer failed");
                self.send_to(
                    &participant_id,
                    ServerMessage::Signal(SignalMessage::Error {
                        error: ApiError::Media(reason).body(),
                        request: None,
                    }),
                );
            }
        }
    }
}
