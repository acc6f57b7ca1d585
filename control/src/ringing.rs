//! The ringing service: the glue between the pure [`Ringer`] (and [`Groups`]), the user-level
//! sockets, the media sessions in [`AppState`], the call history database and the ring timer.
//!
//! - Devices: every `/v1/signal` socket is a device of its token's user (device id: the
//!   `?device_id=` query parameter, else a per-socket id). Ring events are pushed to the devices
//!   the [`Ringer`]'s [`Recipient`](crate::ring::Recipient)s address; a device whose token is
//!   limited to one call only gets that call's events.
//! - Every transition runs under one lock, then its [`Step`] is carried out: events delivered
//!   (under the lock, so every device sees one call's events in order), history records queued to
//!   the history thread (under the lock, so the latest record wins), the timer woken, and, after
//!   the lock is released, the media sessions of calls that are over are ended (their sessions get
//!   `left`; the ring-level `call.ended` is the only `call.ended` they receive).
//! - Timeouts: a tokio task sleeps until [`Ringer::next_deadline`], woken whenever a transition
//!   may have changed the deadlines, and calls [`Ringer::poll_timeout`].
//! - History: one thread owns the SQLite [`HistoryStore`] (`<data_dir>/history.sqlite3`, opened
//!   on first use) and runs writes and reads in the order they were queued, so a history read
//!   made after an event was delivered sees that event's record. Only ringing calls are recorded.
//! - Leaving: when the last session of a user leaves a media call (leave, disconnect, kick), the
//!   user leaves the ringing call too ([`Ringer::leave`]): a one-to-one call ends, a group call
//!   ends when its last participant leaves, and a caller leaving while it rings cancels.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use greenroom_proto::{
    CallCid, CallEvent, CallKind, CallRecord, ErrorBody, ErrorCode, RingCallInfo,
    RingClientMessage, RingOutcome,
};
use parking_lot::{Mutex, MutexGuard};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};
use utoipa::ToSchema;

use crate::auth::{unix_now_ms, Claims};
use crate::call::{Actor, CallError, Outcome};
use crate::config::Config;
use crate::error::ApiError;
use crate::history::{HistoryCursor, HistoryError, HistoryPage, HistoryStore};
use crate::ring::{Group, GroupError, Groups, InitiateRequest, Output, RingError, Ringer, Step};
use crate::state::{AppState, Outbox};

/// The history database's file name under the data directory.
pub const HISTORY_FILE: &str = "history.sqlite3";
/// Default page size of a history listing.
pub const DEFAULT_HISTORY_PAGE: usize = 50;

/// Why a ringing, group or history request failed.
#[derive(Debug, thiserror::Error)]
pub enum RingingError {
    /// A general API error (token limited to another call, call ended, shutting down...).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The ringing state machine refused.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// The group registry refused.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// The token may not do this (another user's history, a group one is not in).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The history database failed or the cursor is not one it produced.
    #[error(transparent)]
    History(#[from] HistoryError),
}

impl RingingError {
    /// The HTTP status and error body.
    pub fn parts(&self) -> (StatusCode, ErrorBody) {
        use ErrorCode as E;
        use StatusCode as S;
        let (status, code) = match self {
            RingingError::Api(e) => return e.parts(),
            RingingError::Ring(e) => match e {
                RingError::UnknownCall(_) => (S::NOT_FOUND, E::NotFound),
                RingError::CallExists(_)
                | RingError::Busy { .. }
                | RingError::AlreadyAnswered(_)
                | RingError::AlreadyAccepted
                | RingError::Expired
                | RingError::NotActive
                | RingError::AlreadyVideo
                | RingError::NoVideoRequest => (S::CONFLICT, E::BadRequest),
                RingError::NotCaller | RingError::NotCallee(_) | RingError::NotParticipant(_) => {
                    (S::FORBIDDEN, E::Unauthorized)
                }
                RingError::NoCallees
                | RingError::TooManyCallees(_)
                | RingError::InvalidId(_)
                | RingError::InvalidTimeout(_) => (S::BAD_REQUEST, E::BadRequest),
            },
            RingingError::Group(e) => match e {
                GroupError::NotFound(_) => (S::NOT_FOUND, E::NotFound),
                GroupError::Exists(_) => (S::CONFLICT, E::BadRequest),
                GroupError::NotMember { .. } => (S::FORBIDDEN, E::Unauthorized),
                GroupError::InvalidId(_) | GroupError::TooManyMembers => {
                    (S::BAD_REQUEST, E::BadRequest)
                }
            },
            RingingError::Forbidden(_) => (S::FORBIDDEN, E::Unauthorized),
            RingingError::History(HistoryError::BadCursor(_)) => (S::BAD_REQUEST, E::BadRequest),
            RingingError::History(_) => (S::SERVICE_UNAVAILABLE, E::Internal),
        };
        (
            status,
            ErrorBody {
                code,
                message: self.to_string(),
                capability: None,
            },
        )
    }

    /// The error body alone (the payload of a socket `error` message).
    pub fn body(&self) -> ErrorBody {
        self.parts().1
    }
}

impl IntoResponse for RingingError {
    fn into_response(self) -> Response {
        let (status, body) = self.parts();
        (status, Json(body)).into_response()
    }
}

/// The server's reply on the socket to a successful `ring_*` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum RingReply {
    /// The request was applied.
    #[serde(rename = "ring.ok")]
    Ok {
        /// The request's `type` (e.g. `ring_accept`).
        request: String,
        /// The call.
        call_cid: CallCid,
        /// The call as it stands now (with its `session_id`); absent once it is over.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call: Option<RingCallInfo>,
    },
}

/// A group as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupInfo {
    /// The group id.
    pub id: String,
    /// The members, sorted.
    pub members: Vec<String>,
}

impl From<&Group> for GroupInfo {
    fn from(g: &Group) -> GroupInfo {
        GroupInfo {
            id: g.id.clone(),
            members: g.members.iter().cloned().collect(),
        }
    }
}

/// One connected device (socket) of a user.
#[derive(Debug)]
struct Device {
    key: u64,
    device_id: String,
    /// The only call this device's token may see (`type:id`).
    call_limit: Option<String>,
    tx: Outbox,
}

#[derive(Debug, Default)]
struct Inner {
    ringer: Ringer,
    groups: Groups,
    devices: HashMap<String, Vec<Device>>,
    /// Sessions whose `accepted` outcome was already counted in the metrics.
    accepted: HashSet<String>,
}

enum HistoryCmd {
    Upsert(Vec<CallRecord>),
    List {
        user_id: String,
        limit: usize,
        before: Option<HistoryCursor>,
        reply: oneshot::Sender<Result<HistoryPage, HistoryError>>,
    },
    /// Answered once every command queued before it is done (shutdown).
    Flush(oneshot::Sender<()>),
}

/// The history thread's queue; the thread and the database are started on first use.
#[derive(Debug)]
struct History {
    path: PathBuf,
    tx: OnceLock<Option<std::sync::mpsc::Sender<HistoryCmd>>>,
}

impl History {
    fn sender(&self) -> Option<&std::sync::mpsc::Sender<HistoryCmd>> {
        self.tx
            .get_or_init(|| {
                let (tx, rx) = std::sync::mpsc::channel();
                let path = self.path.clone();
                match std::thread::Builder::new()
                    .name("greenroom-history".into())
                    .spawn(move || run_history(&path, &rx))
                {
                    Ok(_) => Some(tx),
                    Err(e) => {
                        tracing::error!("cannot start the history thread: {e}");
                        None
                    }
                }
            })
            .as_ref()
    }

    fn upsert(&self, records: Vec<CallRecord>) {
        if records.is_empty() {
            return;
        }
        if let Some(tx) = self.sender() {
            if tx.send(HistoryCmd::Upsert(records)).is_err() {
                tracing::error!("the history thread stopped: records lost");
            }
        }
    }

    async fn list(
        &self,
        user_id: String,
        limit: usize,
        before: Option<HistoryCursor>,
    ) -> Result<HistoryPage, HistoryError> {
        let stopped = || HistoryError::Task("the history thread is not running".into());
        let tx = self.sender().ok_or_else(stopped)?;
        let (reply, rx) = oneshot::channel();
        tx.send(HistoryCmd::List {
            user_id,
            limit,
            before,
            reply,
        })
        .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Waits until every record queued so far is written (at most `within`). Returns whether
    /// it was; true at once when the history was never used.
    async fn flush(&self, within: Duration) -> bool {
        let Some(Some(tx)) = self.tx.get() else {
            return true;
        };
        let (done, rx) = oneshot::channel();
        if tx.send(HistoryCmd::Flush(done)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(within, rx).await, Ok(Ok(())))
    }
}

fn run_history(path: &std::path::Path, rx: &std::sync::mpsc::Receiver<HistoryCmd>) {
    let store = HistoryStore::open(path).map_err(|e| {
        tracing::error!(path = %path.display(), "cannot open the call history: {e}");
        e.to_string()
    });
    while let Ok(cmd) = rx.recv() {
        match cmd {
            HistoryCmd::Upsert(records) => {
                if let Ok(s) = &store {
                    if let Err(e) = s.upsert_all(&records) {
                        tracing::error!("cannot write the call history: {e}");
                    }
                }
            }
            HistoryCmd::List {
                user_id,
                limit,
                before,
                reply,
            } => {
                let page = match &store {
                    Ok(s) => s.list_for_user(&user_id, limit, before),
                    Err(e) => Err(HistoryError::Task(format!(
                        "the call history is unavailable: {e}"
                    ))),
                };
                let _ = reply.send(page);
            }
            HistoryCmd::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// The ringing service of a running server (a field of [`AppState`]).
#[derive(Debug)]
pub struct Ringing {
    inner: Mutex<Inner>,
    wake: Arc<Notify>,
    timer_started: AtomicBool,
    next_key: AtomicU64,
    history: History,
}

impl Drop for Ringing {
    fn drop(&mut self) {
        // Lets the timer task see that the state is gone and stop.
        self.wake.notify_one();
    }
}

fn request_of(m: &RingClientMessage) -> (&'static str, &CallCid) {
    match m {
        RingClientMessage::RingInitiate { call_cid, .. } => ("ring_initiate", call_cid),
        RingClientMessage::RingAccept { call_cid } => ("ring_accept", call_cid),
        RingClientMessage::RingReject { call_cid, .. } => ("ring_reject", call_cid),
        RingClientMessage::RingCancel { call_cid } => ("ring_cancel", call_cid),
        RingClientMessage::RingEnd { call_cid } => ("ring_end", call_cid),
        RingClientMessage::RingLeave { call_cid } => ("ring_leave", call_cid),
        RingClientMessage::RingRequestVideo { call_cid } => ("ring_request_video", call_cid),
        RingClientMessage::RingAcceptVideo { call_cid } => ("ring_accept_video", call_cid),
    }
}

fn check_call(claims: &Claims, cid: &CallCid) -> Result<(), RingingError> {
    if claims.allows_call(cid) {
        Ok(())
    } else {
        Err(ApiError::WrongCall(claims.call.clone().unwrap_or_default()).into())
    }
}

impl Ringing {
    /// The service for a configuration (history under `server.data_dir`).
    pub fn new(config: &Config) -> Ringing {
        Ringing {
            inner: Mutex::new(Inner::default()),
            wake: Arc::new(Notify::new()),
            timer_started: AtomicBool::new(false),
            next_key: AtomicU64::new(1),
            history: History {
                path: config.server.data_dir.join(HISTORY_FILE),
                tx: OnceLock::new(),
            },
        }
    }

    /// Registers a socket as a device of `user_id`; it starts ringing for every call ringing the
    /// user. Returns the key to pass to [`Ringing::disconnect_device`].
    pub fn connect_device(
        &self,
        user_id: &str,
        device_id: &str,
        call_limit: Option<String>,
        tx: Outbox,
    ) -> u64 {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.inner.lock();
        inner
            .devices
            .entry(user_id.to_owned())
            .or_default()
            .push(Device {
                key,
                device_id: device_id.to_owned(),
                call_limit,
                tx,
            });
        let step = inner
            .ringer
            .device_connected(user_id, device_id, unix_now_ms());
        deliver(&inner, &step.outputs);
        key
    }

    /// Forgets a device (its socket closed).
    pub fn disconnect_device(&self, user_id: &str, key: u64) {
        let mut inner = self.inner.lock();
        if let Some(list) = inner.devices.get_mut(user_id) {
            list.retain(|d| d.key != key);
            if list.is_empty() {
                inner.devices.remove(user_id);
            }
        }
    }

    /// How many devices are connected (all users).
    pub fn device_count(&self) -> usize {
        self.inner.lock().devices.values().map(Vec::len).sum()
    }

    /// A snapshot of a ringing or active call.
    pub fn call(&self, cid: &CallCid) -> Option<RingCallInfo> {
        self.inner.lock().ringer.call(cid)
    }

    /// Rings users or a group for `cid` (creating the media call like `POST /v1/calls` when it
    /// does not exist) with the call type's ring timeout. Returns the call with its session id.
    pub fn initiate(
        &self,
        state: &Arc<AppState>,
        claims: &Claims,
        cid: CallCid,
        user_ids: Vec<String>,
        group_id: Option<String>,
        kind: CallKind,
    ) -> Result<RingCallInfo, RingingError> {
        check_call(claims, &cid)?;
        if state.is_shutting_down() {
            return Err(ApiError::ShuttingDown.into());
        }
        if state.read_call(&cid, |c| c.is_ended()).unwrap_or(false) {
            return Err(ApiError::Call(CallError::Ended).into());
        }
        let actor = claims.actor();
        state.get_or_create(&cid, &actor, Vec::new(), serde_json::Value::Null)?;
        self.ensure_timer(state);
        let timeout = state.policy.of(cid.call_type).ring_timeout_ms;
        let mut inner = self.inner.lock();
        let req = match group_id {
            Some(g) => {
                let group = inner.groups.get(&g).ok_or(GroupError::NotFound(g))?;
                InitiateRequest::to_group(cid, &actor.user_id, group, kind)?
            }
            None => InitiateRequest::to_users(cid, &actor.user_id, &user_ids, kind),
        }
        .with_ring_timeout_ms(timeout);
        let (info, step) = inner.ringer.initiate(req, unix_now_ms())?;
        self.apply(state, inner, step);
        Ok(info)
    }

    /// Handles a `ring_*` message from a device.
    pub fn handle_client(
        &self,
        state: &Arc<AppState>,
        claims: &Claims,
        device_id: &str,
        msg: RingClientMessage,
    ) -> Result<RingReply, RingingError> {
        let (request, cid) = request_of(&msg);
        let (request, cid) = (request.to_owned(), cid.clone());
        check_call(claims, &cid)?;
        let user = claims.sub.as_str();
        let now = unix_now_ms();
        if let RingClientMessage::RingInitiate {
            call_cid,
            user_ids,
            group_id,
            kind,
        } = msg
        {
            let info = self.initiate(state, claims, call_cid, user_ids, group_id, kind)?;
            return Ok(RingReply::Ok {
                request,
                call_cid: cid,
                call: Some(info),
            });
        }
        let mut inner = self.inner.lock();
        let r = &mut inner.ringer;
        let step = match msg {
            RingClientMessage::RingInitiate { .. } => Step::default(),
            RingClientMessage::RingAccept { .. } => r.accept(&cid, user, device_id, now)?,
            RingClientMessage::RingReject { reason, .. } => {
                r.reject(&cid, user, Some(device_id), reason, now)?
            }
            RingClientMessage::RingCancel { .. } => r.cancel(&cid, user, now)?,
            RingClientMessage::RingEnd { .. } => r.end(&cid, user, now)?,
            RingClientMessage::RingLeave { .. } => r.leave(&cid, user, now)?,
            RingClientMessage::RingRequestVideo { .. } => r.request_video(&cid, user)?,
            RingClientMessage::RingAcceptVideo { .. } => r.accept_video(&cid, user)?,
        };
        let call = inner.ringer.call(&cid);
        self.apply(state, inner, step);
        Ok(RingReply::Ok {
            request,
            call_cid: cid,
            call,
        })
    }

    /// Called when a session of `user_id` left the media call `cid` (leave, disconnect, kick,
    /// end): once the user has no session left in it, they leave the ringing call.
    pub fn session_left(&self, state: &AppState, cid: &CallCid, user_id: &str) {
        let still_in = state
            .read_call(cid, |c| {
                c.state().participants.iter().any(|p| p.user_id == user_id)
            })
            .unwrap_or(false);
        if still_in {
            return;
        }
        let mut inner = self.inner.lock();
        match inner.ringer.leave(cid, user_id, unix_now_ms()) {
            Ok(step) => self.apply(state, inner, step),
            Err(e) => tracing::trace!(%cid, user_id, "no ringing call to leave: {e}"),
        }
    }

    /// Creates a group. A non-admin creator becomes a member; without an id one is generated.
    pub fn create_group(
        &self,
        claims: &Claims,
        id: Option<String>,
        mut members: Vec<String>,
    ) -> Result<GroupInfo, RingingError> {
        let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        if !claims.admin {
            members.push(claims.sub.clone());
        }
        let mut inner = self.inner.lock();
        Ok(GroupInfo::from(inner.groups.create(&id, &members)?))
    }

    /// A group, for its members and admin tokens.
    pub fn group(&self, claims: &Claims, id: &str) -> Result<GroupInfo, RingingError> {
        let inner = self.inner.lock();
        let g = member_group(&inner.groups, claims, id)?;
        Ok(GroupInfo::from(g))
    }

    /// Adds then removes members, for members and admin tokens.
    pub fn update_group(
        &self,
        claims: &Claims,
        id: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<GroupInfo, RingingError> {
        let mut inner = self.inner.lock();
        member_group(&inner.groups, claims, id)?;
        inner.groups.add_members(id, add)?;
        Ok(GroupInfo::from(inner.groups.remove_members(id, remove)?))
    }

    /// A page of a user's call history, newest first; a user reads their own, admin tokens
    /// anyone's.
    pub async fn history(
        &self,
        claims: &Claims,
        user_id: &str,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<HistoryPage, RingingError> {
        if claims.sub != user_id && !claims.admin {
            return Err(RingingError::Forbidden(
                "a user may only read their own call history".into(),
            ));
        }
        let before = cursor
            .filter(|c| !c.is_empty())
            .map(str::parse::<HistoryCursor>)
            .transpose()?;
        let limit = limit.unwrap_or(DEFAULT_HISTORY_PAGE);
        Ok(self.history.list(user_id.to_owned(), limit, before).await?)
    }

    /// Shutdown: every ringing or active call is over now and gets its final history record
    /// (ringing ones `missed`, active ones `accepted` with their talk time); the devices still
    /// connected are told (`call.missed` / `call.ended`). Call [`Ringing::flush_history`] after.
    pub fn shutdown(&self, state: &AppState) {
        let mut inner = self.inner.lock();
        let step = inner.ringer.end_all("greenroom", unix_now_ms());
        if !step.is_empty() {
            tracing::info!(
                calls = step.records.len(),
                "shutdown: final records of ringing calls"
            );
            self.apply(state, inner, step);
        }
    }

    /// Waits until every history record queued so far is written (at most `within`); returns
    /// whether it was.
    pub async fn flush_history(&self, within: Duration) -> bool {
        self.history.flush(within).await
    }

    /// Carries out a step: deliveries and history records under the lock, then the media
    /// sessions of calls that are over are ended once the lock is released.
    fn apply(&self, state: &AppState, mut inner: MutexGuard<'_, Inner>, step: Step) {
        let Step {
            outputs,
            records,
            end_sessions,
        } = step;
        deliver(&inner, &outputs);
        for r in &records {
            count_outcome(&mut inner.accepted, r);
        }
        self.history.upsert(records);
        drop(inner);
        self.wake.notify_one();
        for cid in end_sessions {
            end_media(state, &cid);
        }
    }

    fn ensure_timer(&self, state: &Arc<AppState>) {
        if self.timer_started.swap(true, Ordering::SeqCst) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(timer(Arc::downgrade(state), self.wake.clone()));
            }
            Err(_) => {
                tracing::warn!("no tokio runtime: ring timeouts are not driven");
                self.timer_started.store(false, Ordering::SeqCst);
            }
        }
    }

    fn poll(&self, state: &AppState) {
        let mut inner = self.inner.lock();
        let step = inner.ringer.poll_timeout(unix_now_ms());
        if !step.is_empty() {
            self.apply(state, inner, step);
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        self.inner.lock().ringer.next_deadline()
    }
}

fn member_group<'a>(
    groups: &'a Groups,
    claims: &Claims,
    id: &str,
) -> Result<&'a Group, RingingError> {
    let g = groups
        .get(id)
        .ok_or_else(|| GroupError::NotFound(id.to_owned()))?;
    if !claims.admin && !g.members.contains(&claims.sub) {
        return Err(GroupError::NotMember {
            group_id: id.to_owned(),
            user_id: claims.sub.clone(),
        }
        .into());
    }
    Ok(g)
}

/// Sends each output to the devices it addresses (that may see its call).
fn deliver(inner: &Inner, outputs: &[Output]) {
    for o in outputs {
        let user = o.to.user_id();
        let Some(devices) = inner.devices.get(user) else {
            continue;
        };
        let text: axum::extract::ws::Utf8Bytes = match serde_json::to_string(&o.event) {
            Ok(t) => t.into(),
            Err(e) => {
                tracing::error!("cannot serialize ring event: {e}");
                continue;
            }
        };
        let cid = o.event.call_cid().to_string();
        crate::metrics::EVENTS
            .with_label_values(&[o.event.kind()])
            .inc();
        for d in devices {
            if !o.to.includes(user, &d.device_id) {
                continue;
            }
            if d.call_limit.as_deref().is_some_and(|c| c != cid) {
                continue;
            }
            // A full queue closes the slow device (1008).
            d.tx.send_text(text.clone());
        }
    }
}

/// Counts a ringing's outcome once: `accepted` at the first accept, others when it is over.
fn count_outcome(accepted: &mut HashSet<String>, r: &CallRecord) {
    let inc = || {
        crate::metrics::RING_OUTCOMES
            .with_label_values(&[r.outcome.as_str()])
            .inc();
    };
    let over = r.ended_at_ms.is_some();
    if r.outcome == RingOutcome::Accepted {
        if over {
            if !accepted.remove(&r.session_id) {
                inc();
            }
        } else if accepted.insert(r.session_id.clone()) {
            inc();
        }
    } else if over {
        inc();
    }
}

/// Ends the media call of a ringing call that is over: its sessions are removed (they get
/// `left`) and the media plane drops them. The call-level `call.ended` is left out: the users
/// get the ring-level one.
fn end_media(state: &AppState, cid: &CallCid) {
    let r = state.with_call(cid, |c| {
        if c.is_ended() {
            return Ok(((), Outcome::default()));
        }
        let mut out = c.end(&Actor::server("greenroom"))?;
        out.events
            .retain(|d| !matches!(d.event, CallEvent::Ended { .. }));
        Ok(((), out))
    });
    if let Err(e) = r {
        tracing::trace!(%cid, "no media session to end: {e}");
    }
}

/// Sleeps until the next ring deadline (or a wake-up), then applies the timeouts. Ends when the
/// state is dropped.
async fn timer(state: Weak<AppState>, wake: Arc<Notify>) {
    loop {
        let next = match state.upgrade() {
            Some(s) => s.ringing.next_deadline(),
            None => return,
        };
        match next {
            None => {
                wake.notified().await;
                continue;
            }
            Some(deadline) => {
                let now = unix_now_ms();
                if deadline > now {
                    let wait = Duration::from_millis(deadline - now + 1);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = wake.notified() => continue,
                    }
                }
            }
        }
        match state.upgrade() {
            Some(s) => s.ringing.poll(&s),
            None => return,
        }
    }
}
