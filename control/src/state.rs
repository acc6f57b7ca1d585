//! The server's shared state: calls (one lock per call), connected sockets and joined sessions,
//! the media plane, and how a call [`Outcome`] is carried out (events serialized once and queued
//! to every recipient in order, gates sent to the SFU, media torn down, removals announced).

mod outbox;
mod resume;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use greenroom_proto::{CallCid, CallEvent, ServerMessage, SignalMessage};
use greenroom_sfu::{Sfu, SfuEvent};
use parking_lot::Mutex;

pub use outbox::{serialize, CloseReason, Inbox, Notice, Outbound, Outbox, Removal, SESSION_QUEUE};
pub use resume::{
    new_resume_token, resume_token_home, Dropped, Parked, ResumeError, Taken, REPLACED_CLOSE_CODE,
};

use crate::auth::{unix_now_ms, Auth};
use crate::call::{Actor, Call, CallError, Outcome};
use crate::config::Config;
use crate::error::ApiError;
use crate::policy::Policy;

/// One joined session's handle.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    /// The call it joined.
    pub call: CallCid,
    /// The user.
    pub user_id: String,
    outbox: Outbox,
}

/// A call and its bookkeeping, behind the call's own lock.
#[derive(Debug)]
struct CallSlot {
    call: Call,
    /// Set (under the lock) when the call is freed: a holder of a stale reference sees 404.
    freed: bool,
    /// Since when nobody is in the call (unix ms).
    empty_since_ms: Option<u64>,
    /// Since when the call has ended (unix ms).
    ended_since_ms: Option<u64>,
}

impl CallSlot {
    fn new(call: Call, now_ms: u64) -> CallSlot {
        let mut slot = CallSlot {
            call,
            freed: false,
            empty_since_ms: None,
            ended_since_ms: None,
        };
        slot.touch(now_ms);
        slot
    }

    /// Updates the empty and ended clocks after a change.
    fn touch(&mut self, now_ms: u64) {
        if self.call.participant_count() == 0 {
            self.empty_since_ms.get_or_insert(now_ms);
        } else {
            self.empty_since_ms = None;
        }
        if self.call.is_ended() {
            self.ended_since_ms.get_or_insert(now_ms);
        }
    }

    /// Whether the call may be freed now.
    fn expired(&self, now_ms: u64, limits: &crate::config::LimitsConfig) -> bool {
        let Some(empty) = self.empty_since_ms else {
            return false;
        };
        match self.ended_since_ms {
            Some(ended) => {
                now_ms.saturating_sub(empty.max(ended)) >= limits.ended_call_ttl_secs * 1000
            }
            None => now_ms.saturating_sub(empty) >= limits.empty_call_ttl_secs * 1000,
        }
    }
}

type CallRef = Arc<Mutex<CallSlot>>;

/// A socket's place among the user's sockets and in the shutdown list; released on drop.
#[derive(Debug)]
pub struct SocketSlot {
    state: Weak<AppState>,
    user_id: String,
    id: u64,
}

impl SocketSlot {
    /// Registers the socket's outbox so shutdown can close it.
    pub fn attach(&self, outbox: Outbox) {
        if let Some(state) = self.state.upgrade() {
            state.sockets.insert(self.id, outbox);
        }
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        state.sockets.remove(&self.id);
        state.user_sockets.remove_if_mut(&self.user_id, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
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
    /// Where each participant's media lives and how its operations get there (this node's
    /// `sfu`, or in cluster mode another node's); every media operation goes through it.
    pub media: crate::media_plane::MediaPlane,
    /// Webhook senders, when receivers are configured.
    pub webhooks: Option<crate::webhook::Webhooks>,
    /// Ringing, groups and call history.
    pub ringing: crate::ringing::Ringing,
    /// Calls, each behind its own lock: one busy call never stalls another.
    calls: DashMap<CallCid, CallRef>,
    /// Joined sessions by participant id.
    sessions: DashMap<String, SessionHandle>,
    /// Resume tokens and parked sessions by participant id (see [`resume`]).
    resumable: DashMap<String, resume::Resumable>,
    /// Every open signaling socket, joined or not (closed with 1001 at shutdown).
    sockets: DashMap<u64, Outbox>,
    next_socket: AtomicU64,
    /// Open signaling sockets per user.
    user_sockets: DashMap<String, usize>,
    shutting_down: AtomicBool,
    /// Cluster mode, when started (`crate::cluster::Cluster::start`); unset = one process.
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("sessions", &self.sessions.len())
            .field("sockets", &self.sockets.len())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State for a configuration, with an optional running media plane. Inside a tokio runtime
    /// a background task frees expired calls (see [`AppState::free_expired_calls`]).
    pub fn new(mut config: Config, sfu: Option<Sfu>) -> Arc<AppState> {
        let node_id = resolve_node_id(&mut config);
        let relay_advertise = relay_advertise(&config, sfu.as_ref());
        let media = crate::media_plane::MediaPlane::new(sfu.clone(), node_id, relay_advertise);
        let state = Arc::new(AppState {
            media,
            auth: Auth::from_config(&config.keys),
            policy: Policy::with_overrides(&config.call_types),
            webhooks: crate::webhook::Webhooks::start(&config.webhooks, &config.keys.api_secret),
            ringing: crate::ringing::Ringing::new(&config),
            config,
            sfu,
            calls: DashMap::new(),
            sessions: DashMap::new(),
            resumable: DashMap::new(),
            sockets: DashMap::new(),
            next_socket: AtomicU64::new(1),
            user_sockets: DashMap::new(),
            shutting_down: AtomicBool::new(false),
            cluster: std::sync::OnceLock::new(),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let ttl = state
                .config
                .limits
                .ended_call_ttl_secs
                .min(state.config.limits.empty_call_ttl_secs);
            // A quarter of the shortest TTL, between 100 ms and 5 s.
            let every = Duration::from_millis((ttl * 250).clamp(100, 5000));
            let weak = Arc::downgrade(&state);
            rt.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(state) = weak.upgrade() else { break };
                    state.free_expired_calls(unix_now_ms());
                }
            });
        }
        state
    }

    /// Whether joins are refused because the server is draining.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Starts draining: refuse joins, tell every socket.
    pub fn begin_shutdown(&self, drain_ms: u64) {
        self.shutting_down.store(true, Ordering::Relaxed);
        let msg = ServerMessage::Signal(SignalMessage::GoingAway { drain_ms });
        let Some(text) = serialize(&msg) else { return };
        for s in self.sockets.iter() {
            s.send_text(text.clone());
        }
    }

    /// Number of calls in memory that have not ended.
    pub fn call_count(&self) -> usize {
        self.call_refs()
            .iter()
            .filter(|(_, c)| {
                let g = c.lock();
                !g.freed && !g.call.is_ended()
            })
            .count()
    }

    /// Number of calls in memory, ended or not (freed ones excluded).
    pub fn calls_in_memory(&self) -> usize {
        self.calls.len()
    }

    /// Closes every open socket, joined or not (close code 1001, going away).
    pub fn close_all(&self, reason: &str) {
        for s in self.sockets.iter() {
            s.close(1001, reason);
        }
    }

    /// Number of joined sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Number of open signaling sockets.
    pub fn socket_count(&self) -> usize {
        self.sockets.len()
    }

    /// Reserves a socket for a user, or refuses when the user holds
    /// `limits.max_connections_per_user` sockets already. The slot is released when dropped.
    pub fn open_socket(self: &Arc<Self>, user_id: &str) -> Result<SocketSlot, ApiError> {
        let max = self.config.limits.max_connections_per_user;
        let mut n = self.user_sockets.entry(user_id.to_owned()).or_insert(0);
        if *n >= max {
            return Err(ApiError::TooManyConnections(max));
        }
        *n += 1;
        drop(n);
        Ok(SocketSlot {
            state: Arc::downgrade(self),
            user_id: user_id.to_owned(),
            id: self.next_socket.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The ids of the calls in memory (the cluster refreshes their placement claims).
    pub fn call_cids(&self) -> Vec<CallCid> {
        self.calls.iter().map(|e| e.key().clone()).collect()
    }

    fn call_refs(&self) -> Vec<(CallCid, CallRef)> {
        self.calls
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }

    fn call_ref(&self, cid: &CallCid) -> Result<CallRef, ApiError> {
        // The map's shard lock is released before the call's lock is taken.
        self.calls
            .get(cid)
            .map(|r| r.value().clone())
            .ok_or_else(|| ApiError::NotFound(format!("call {cid}")))
    }

    /// Frees calls that are over: ended and empty for `limits.ended_call_ttl_secs`, or empty
    /// (never joined or everyone left) for `limits.empty_call_ttl_secs`. Returns how many.
    pub fn free_expired_calls(&self, now_ms: u64) -> usize {
        let mut freed = 0;
        for (cid, slot) in self.call_refs() {
            {
                let mut g = slot.lock();
                if g.freed || !g.expired(now_ms, &self.config.limits) {
                    continue;
                }
                g.freed = true;
            }
            self.calls.remove_if(&cid, |_, v| Arc::ptr_eq(v, &slot));
            tracing::info!(%cid, "call freed");
            freed += 1;
        }
        freed
    }

    /// Gets or creates a call; returns whether it was created.
    pub fn get_or_create(
        &self,
        cid: &CallCid,
        actor: &Actor,
        members: Vec<greenroom_proto::Member>,
        settings: serde_json::Value,
    ) -> Result<bool, ApiError> {
        let now = unix_now_ms();
        loop {
            let slot = match self.calls.entry(cid.clone()) {
                Entry::Occupied(e) => e.get().clone(),
                Entry::Vacant(v) => {
                    let call = Call::create(
                        cid.clone(),
                        self.policy.of(cid.call_type).clone(),
                        actor,
                        members,
                        settings,
                        now,
                    )?;
                    v.insert(Arc::new(Mutex::new(CallSlot::new(call, now))));
                    return Ok(true);
                }
            };
            let mut g = slot.lock();
            if g.freed {
                // Freed between the lookup and the lock: its map entry is gone; look again.
                drop(g);
                self.calls.remove_if(cid, |_, v| Arc::ptr_eq(v, &slot));
                continue;
            }
            let out = g.call.upsert_members(actor, members)?;
            self.apply(&g.call, out);
            g.touch(now);
            return Ok(false);
        }
    }

    /// Runs `f` on a call under the call's lock and carries out its outcome.
    pub fn with_call<T>(
        &self,
        cid: &CallCid,
        f: impl FnOnce(&mut Call) -> Result<(T, Outcome), CallError>,
    ) -> Result<T, ApiError> {
        // One span per call operation: its log lines (and those of applying the outcome) carry
        // the call's cid.
        let _span = tracing::info_span!("call", cid = %cid).entered();
        let slot = self.call_ref(cid)?;
        let mut g = slot.lock();
        if g.freed {
            return Err(ApiError::NotFound(format!("call {cid}")));
        }
        let (value, out) = f(&mut g.call)?;
        self.apply(&g.call, out);
        g.touch(unix_now_ms());
        Ok(value)
    }

    /// Reads a call under the call's lock.
    pub fn read_call<T>(&self, cid: &CallCid, f: impl FnOnce(&Call) -> T) -> Result<T, ApiError> {
        let slot = self.call_ref(cid)?;
        let g = slot.lock();
        if g.freed {
            return Err(ApiError::NotFound(format!("call {cid}")));
        }
        Ok(f(&g.call))
    }

    /// Registers a joined session's outbox (call it under the call's lock, at the join).
    pub fn register_session(&self, participant_id: &str, handle: SessionHandle) {
        self.sessions.insert(participant_id.to_owned(), handle);
    }

    /// A session handle for a new join.
    pub fn session_handle(call: CallCid, user_id: &str, outbox: Outbox) -> SessionHandle {
        SessionHandle {
            call,
            user_id: user_id.to_owned(),
            outbox,
        }
    }

    /// Sends a message to one session; a full queue closes the slow client (1008).
    pub fn send_to(&self, participant_id: &str, msg: ServerMessage) {
        if let Some(s) = self.sessions.get(participant_id) {
            s.outbox.send(&msg);
        }
    }

    /// Carries out an outcome: events, gates, stop orders, removals. Called under the call's
    /// lock so that every participant sees one call's events in order. Each event is
    /// serialized once and the same text is queued to every recipient.
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
            let Some(text) = serialize(&ServerMessage::Event(d.event)) else {
                continue;
            };
            for pid in &d.to {
                if let Some(s) = self.sessions.get(pid) {
                    s.outbox.send_text(text.clone());
                }
            }
        }
        self.media.set_gates(call.cid(), &gates);
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
            self.media.leave(call.cid(), &pid);
            if let Some((_, s)) = self.sessions.remove(&pid) {
                s.outbox.notify(Notice::Removed(Removal {
                    call_cid: call.cid().clone(),
                    participant_id: pid,
                    reason,
                }));
            }
        }
        tracing::trace!(call = %call.cid(), "outcome applied");
    }

    /// Handles one event from the media plane (this node's, or a media node's for a session
    /// homed here; cluster mode: an event of a participant a remote home created here goes to
    /// that home).
    pub fn on_sfu_event(&self, ev: SfuEvent) {
        let Some(ev) = self.media.route_event(ev) else {
            return;
        };
        match ev {
            SfuEvent::SubscriberOffer {
                participant_id,
                sdp,
                tracks,
            } => {
                let msg = ServerMessage::Signal(SignalMessage::SubscriberOffer { sdp, tracks });
                let Some(text) = serialize(&msg) else { return };
                if let Some(s) = self.sessions.get(&participant_id) {
                    // The socket's reader queues it and re-sends it until it is answered.
                    s.outbox.notify(Notice::Offer {
                        participant_id: participant_id.clone(),
                        text,
                    });
                }
            }
            SfuEvent::Speakers { call, speakers } => {
                let Ok(slot) = self.call_ref(&call) else {
                    return;
                };
                let g = slot.lock();
                if g.freed {
                    return;
                }
                let state = g.call.state();
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
                let Some(text) = serialize(&msg) else { return };
                for p in &state.participants {
                    if let Some(s) = self.sessions.get(&p.participant_id) {
                        s.outbox.send_text(text.clone());
                    }
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

/// Cluster mode: this node's id, resolved once (a `node_id` left empty becomes the host name or
/// a random id, written back into the configuration so every part uses the same).
pub fn resolve_node_id(config: &mut Config) -> Option<String> {
    let c = config.cluster.as_mut()?;
    match c.resolved_node_id() {
        Ok(id) => {
            c.node_id = id.clone();
            Some(id)
        }
        // Reported by `Cluster::start`.
        Err(_) => None,
    }
}

/// Cluster mode: the relay address the other nodes reach (`cluster.relay_advertise`, else the
/// relay socket's port on `rtc.node_ip` when it is bound to an unspecified address).
fn relay_advertise(config: &Config, sfu: Option<&Sfu>) -> Option<std::net::SocketAddr> {
    let c = config.cluster.as_ref()?;
    if !c.relay_advertise.is_empty() {
        // `ip:port`, or `host:port` resolved once at start-up (e.g. a compose service name).
        use std::net::ToSocketAddrs;
        match c.relay_advertise.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(a)) => return Some(a),
            Ok(None) => tracing::warn!("cluster.relay_advertise resolves to nothing"),
            Err(e) => tracing::warn!("cluster.relay_advertise: {e}: using the bound address"),
        }
    }
    let bound = sfu?.relay_addr()?;
    let ip = if bound.ip().is_unspecified() {
        config.rtc.node_ip
    } else {
        bound.ip()
    };
    Some(std::net::SocketAddr::new(ip, bound.port()))
}
