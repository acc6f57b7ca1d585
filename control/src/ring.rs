//! Ringing: the pure state machine of calling users or groups, and the in-memory group registry.
//!
//! [`Ringer`] holds every call that is ringing or in progress. It does no I/O and reads no
//! clock: every method takes the current time as Unix milliseconds (`now_ms`, from the wall clock
//! so that history records carry real dates) and returns a [`Step`]: the events to deliver
//! ([`Output`]s addressed by [`Recipient`]), the history records to upsert, and the media sessions
//! to tear down. The driver (the socket layer) calls [`Ringer::poll_timeout`] at
//! [`Ringer::next_deadline`] to turn unanswered rings into `call.missed`.
//!
//! Races resolve to exactly one outcome because every method runs under `&mut self`, so the first
//! action applied wins and later conflicting ones fail with a [`RingError`] without side effects:
//! accept vs cancel (whichever comes first), accept on two devices (the first device wins, the
//! other devices get `call.stop_ringing`), reject vs timeout (an action carrying `now_ms` at or
//! after the ring deadline fails with [`RingError::Expired`] even if `poll_timeout` has not run
//! yet, so the outcome depends on time, not on when the timer fired).
//!
//! Semantics:
//! - Busy: a callee who is the caller of another live call or in an active call is rejected
//!   automatically with reason `busy` when the call is initiated.
//! - One-to-one calls end when either side ends or leaves. Group calls (rung with a group id)
//!   proceed once one member accepts; the other members keep ringing until they answer or the
//!   ring timeout passes (then they alone get `call.missed`); the call ends when the last
//!   participant leaves, or for everyone when a participant ends it.

use std::collections::{BTreeSet, HashMap};

use greenroom_proto::{
    validate_id, CallCid, CallKind, CallRecord, RejectReason, RingCallInfo, RingEvent, RingOutcome,
    RingPhase,
};

/// Ring timeout used when the call type does not configure one.
pub const DEFAULT_RING_TIMEOUT_MS: u64 = 15_000;
/// Longest accepted ring timeout (ten minutes).
pub const MAX_RING_TIMEOUT_MS: u64 = 600_000;
/// Most users one call may ring (and most members of a group).
pub const MAX_CALLEES: usize = 256;

/// Who an event goes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Recipient {
    /// Every connected device of the user.
    User(String),
    /// One device of a user.
    Device {
        /// The user.
        user_id: String,
        /// The device.
        device_id: String,
    },
    /// Every device of the user but one (the one that acted).
    UserExceptDevice {
        /// The user.
        user_id: String,
        /// The device left out.
        device_id: String,
    },
}

impl Recipient {
    /// The user addressed.
    pub fn user_id(&self) -> &str {
        match self {
            Recipient::User(u) => u,
            Recipient::Device { user_id, .. } | Recipient::UserExceptDevice { user_id, .. } => {
                user_id
            }
        }
    }

    /// Whether a device of a user is addressed.
    pub fn includes(&self, user_id: &str, device_id: &str) -> bool {
        match self {
            Recipient::User(u) => u == user_id,
            Recipient::Device {
                user_id: u,
                device_id: d,
            } => u == user_id && d == device_id,
            Recipient::UserExceptDevice {
                user_id: u,
                device_id: d,
            } => u == user_id && d != device_id,
        }
    }
}

/// One event to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Who gets it.
    pub to: Recipient,
    /// What.
    pub event: RingEvent,
}

/// What one transition produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    /// Events to deliver, in order.
    pub outputs: Vec<Output>,
    /// History records to upsert (keyed by `session_id`); the latest one wins.
    pub records: Vec<CallRecord>,
    /// Media sessions to tear down: these calls are over.
    pub end_sessions: Vec<CallCid>,
}

impl Step {
    /// Whether nothing happened.
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty() && self.records.is_empty() && self.end_sessions.is_empty()
    }

    /// Appends another step's effects.
    pub fn extend(&mut self, other: Step) {
        self.outputs.extend(other.outputs);
        self.records.extend(other.records);
        self.end_sessions.extend(other.end_sessions);
    }

    /// The events a given device receives, in order.
    pub fn events_for_device(&self, user_id: &str, device_id: &str) -> Vec<&RingEvent> {
        self.outputs
            .iter()
            .filter(|o| o.to.includes(user_id, device_id))
            .map(|o| &o.event)
            .collect()
    }

    fn send(&mut self, to: Recipient, event: RingEvent) {
        self.outputs.push(Output { to, event });
    }

    fn send_user(&mut self, user_id: &str, event: RingEvent) {
        self.send(Recipient::User(user_id.to_owned()), event);
    }
}

/// Why a ringing action failed. A failed action changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// No such call is ringing or in progress (it may have ended).
    #[error("no ringing or active call `{0}`")]
    UnknownCall(CallCid),
    /// The call cid is already ringing or in progress.
    #[error("call `{0}` is already ringing or in progress")]
    CallExists(CallCid),
    /// Nobody to ring (no callees, or only the caller).
    #[error("nobody to ring")]
    NoCallees,
    /// Too many callees.
    #[error("too many callees: {0} (at most {MAX_CALLEES})")]
    TooManyCallees(usize),
    /// A malformed user or device id.
    #[error("invalid id `{0}`")]
    InvalidId(String),
    /// The ring timeout is out of range.
    #[error("ring timeout {0} ms is out of range 1..={MAX_RING_TIMEOUT_MS}")]
    InvalidTimeout(u64),
    /// The acting user is already in another call.
    #[error("`{user_id}` is already in call `{call_cid}`")]
    Busy {
        /// The user.
        user_id: String,
        /// The call they are in.
        call_cid: CallCid,
    },
    /// Only the caller may do this.
    #[error("only the caller may do this")]
    NotCaller,
    /// The user was not rung in this call.
    #[error("`{0}` was not rung in this call")]
    NotCallee(String),
    /// The user already accepted or rejected (maybe on another device).
    #[error("`{0}` already answered this call")]
    AlreadyAnswered(String),
    /// Someone already accepted; the call can no longer be cancelled.
    #[error("the call was already accepted")]
    AlreadyAccepted,
    /// The ring timeout has passed: the call is missed.
    #[error("the ring timed out")]
    Expired,
    /// The user is not in the call.
    #[error("`{0}` is not in the call")]
    NotParticipant(String),
    /// The call is still ringing (nobody accepted yet).
    #[error("the call is not in progress yet")]
    NotActive,
    /// The call is already a video call.
    #[error("the call is already a video call")]
    AlreadyVideo,
    /// Nobody else asked to switch to video.
    #[error("no pending request to switch to video from someone else")]
    NoVideoRequest,
}

/// What to ring: built by [`InitiateRequest::to_users`] or [`InitiateRequest::to_group`], then
/// adjusted (the ring timeout comes from the call type's configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitiateRequest {
    /// Unique id of this ringing (a v4 UUID by default).
    pub session_id: String,
    /// The call (the media session everyone joins).
    pub call_cid: CallCid,
    /// Who calls.
    pub caller_user_id: String,
    /// Who to ring; duplicates and the caller are dropped.
    pub callee_user_ids: Vec<String>,
    /// The group rung, if any (makes the call a group call).
    pub group_id: Option<String>,
    /// Audio or video.
    pub kind: CallKind,
    /// How long callees ring.
    pub ring_timeout_ms: u64,
}

impl InitiateRequest {
    /// Rings users directly, with the default ring timeout and a fresh session id.
    pub fn to_users(
        call_cid: CallCid,
        caller_user_id: &str,
        callee_user_ids: &[String],
        kind: CallKind,
    ) -> InitiateRequest {
        InitiateRequest {
            session_id: uuid::Uuid::new_v4().to_string(),
            call_cid,
            caller_user_id: caller_user_id.to_owned(),
            callee_user_ids: callee_user_ids.to_vec(),
            group_id: None,
            kind,
            ring_timeout_ms: DEFAULT_RING_TIMEOUT_MS,
        }
    }

    /// Rings every member of a group but the caller, who must be a member.
    pub fn to_group(
        call_cid: CallCid,
        caller_user_id: &str,
        group: &Group,
        kind: CallKind,
    ) -> Result<InitiateRequest, GroupError> {
        if !group.members.contains(caller_user_id) {
            return Err(GroupError::NotMember {
                group_id: group.id.clone(),
                user_id: caller_user_id.to_owned(),
            });
        }
        let callees: Vec<String> = group
            .members
            .iter()
            .filter(|m| *m != caller_user_id)
            .cloned()
            .collect();
        let mut req = InitiateRequest::to_users(call_cid, caller_user_id, &callees, kind);
        req.group_id = Some(group.id.clone());
        Ok(req)
    }

    /// Sets the ring timeout.
    #[must_use]
    pub fn with_ring_timeout_ms(mut self, ms: u64) -> InitiateRequest {
        self.ring_timeout_ms = ms;
        self
    }

    /// Sets the session id.
    #[must_use]
    pub fn with_session_id(mut self, session_id: &str) -> InitiateRequest {
        self.session_id = session_id.to_owned();
        self
    }
}

/// Where one callee stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CalleeState {
    Ringing,
    Accepted,
    Rejected(RejectReason),
    Missed,
    Left,
}

/// A call that rings or is in progress.
#[derive(Debug, Clone)]
struct RingCall {
    session_id: String,
    cid: CallCid,
    caller: String,
    group_id: Option<String>,
    kind: CallKind,
    callees: Vec<(String, CalleeState)>,
    ring_timeout_ms: u64,
    started_at_ms: u64,
    deadline_ms: u64,
    answered_at_ms: Option<u64>,
    /// In the call now, in the order they came.
    present: Vec<String>,
    /// Everyone who took part, in the order they came.
    ever: Vec<String>,
    busy: Vec<String>,
    video_request: Option<String>,
}

impl RingCall {
    fn is_group(&self) -> bool {
        self.group_id.is_some() || self.callees.len() > 1
    }

    fn active(&self) -> bool {
        self.answered_at_ms.is_some()
    }

    fn state_of(&self, user: &str) -> Option<&CalleeState> {
        self.callees.iter().find(|(u, _)| u == user).map(|(_, s)| s)
    }

    fn set_state(&mut self, user: &str, state: CalleeState) {
        if let Some(entry) = self.callees.iter_mut().find(|(u, _)| u == user) {
            entry.1 = state;
        }
    }

    fn ringing(&self) -> Vec<String> {
        self.callees
            .iter()
            .filter(|(_, s)| *s == CalleeState::Ringing)
            .map(|(u, _)| u.clone())
            .collect()
    }

    fn callee_ids(&self) -> Vec<String> {
        self.callees.iter().map(|(u, _)| u.clone()).collect()
    }

    fn is_present(&self, user: &str) -> bool {
        self.present.iter().any(|p| p == user)
    }

    /// The outcome so far: accepted once anyone accepted, else from the rejections.
    fn outcome_if_over(&self) -> RingOutcome {
        if self.active() {
            return RingOutcome::Accepted;
        }
        let mut reasons = self.callees.iter().filter_map(|(_, s)| match s {
            CalleeState::Rejected(r) => Some(*r),
            _ => None,
        });
        match reasons.next() {
            Some(first) if reasons.all(|r| r == first) => first.outcome(),
            _ => RingOutcome::Rejected,
        }
    }

    fn record(&self, outcome: RingOutcome, ended_at_ms: Option<u64>) -> CallRecord {
        CallRecord {
            session_id: self.session_id.clone(),
            call_cid: self.cid.clone(),
            caller_user_id: self.caller.clone(),
            callee_user_ids: self.callee_ids(),
            group_id: self.group_id.clone(),
            kind: self.kind,
            outcome,
            started_at_ms: self.started_at_ms,
            answered_at_ms: self.answered_at_ms,
            ended_at_ms,
            duration_ms: match (self.answered_at_ms, ended_at_ms) {
                (Some(a), Some(e)) => Some(e.saturating_sub(a)),
                _ => None,
            },
            participants: self.ever.clone(),
        }
    }

    fn info(&self, phase: RingPhase, outcome: Option<RingOutcome>) -> RingCallInfo {
        RingCallInfo {
            session_id: self.session_id.clone(),
            call_cid: self.cid.clone(),
            caller_user_id: self.caller.clone(),
            callee_user_ids: self.callee_ids(),
            group_id: self.group_id.clone(),
            kind: self.kind,
            phase,
            outcome,
            ring_timeout_ms: self.ring_timeout_ms,
            started_at_ms: self.started_at_ms,
            participants: self.present.clone(),
            busy_user_ids: self.busy.clone(),
        }
    }

    fn ring_event(&self, ring_timeout_ms: u64) -> RingEvent {
        RingEvent::Ring {
            call_cid: self.cid.clone(),
            caller_user_id: self.caller.clone(),
            kind: self.kind,
            members: self.callee_ids(),
            group_id: self.group_id.clone(),
            ring_timeout_ms,
        }
    }
}

/// Every call that is ringing or in progress, with the indexes for busy detection and timeouts.
#[derive(Debug, Default)]
pub struct Ringer {
    calls: HashMap<CallCid, RingCall>,
    /// Pending ring deadlines.
    deadlines: BTreeSet<(u64, CallCid)>,
    /// Users who are the caller of a live call or in an active call, and that call.
    engaged: HashMap<String, CallCid>,
    /// Calls ringing each user.
    incoming: HashMap<String, BTreeSet<CallCid>>,
}

impl Ringer {
    /// An empty ringer.
    pub fn new() -> Ringer {
        Ringer::default()
    }

    /// How many calls ring or are in progress.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// Whether no call rings or is in progress.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Whether the user is the caller of a live call or in an active call (and so would be
    /// rejected as busy).
    pub fn is_busy(&self, user_id: &str) -> bool {
        self.engaged.contains_key(user_id)
    }

    /// The call the user is engaged in (as caller or participant), if any.
    pub fn engaged_in(&self, user_id: &str) -> Option<&CallCid> {
        self.engaged.get(user_id)
    }

    /// A snapshot of a ringing or active call.
    pub fn call(&self, call_cid: &CallCid) -> Option<RingCallInfo> {
        self.calls.get(call_cid).map(|c| {
            if c.active() {
                c.info(RingPhase::Active, Some(RingOutcome::Accepted))
            } else {
                c.info(RingPhase::Ringing, None)
            }
        })
    }

    /// The calls currently ringing the user.
    pub fn incoming_for(&self, user_id: &str) -> Vec<RingCallInfo> {
        self.incoming
            .get(user_id)
            .into_iter()
            .flatten()
            .filter_map(|cid| self.call(cid))
            .collect()
    }

    /// The earliest pending ring deadline (Unix ms): call [`Ringer::poll_timeout`] then.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// Starts ringing. Busy callees are rejected at once with `busy`; if all are busy the call
    /// is over before it starts (phase `ended`, outcome `busy`). Returns the call as the caller
    /// sees it, and the `call.ring` events for the callees.
    pub fn initiate(
        &mut self,
        req: InitiateRequest,
        now_ms: u64,
    ) -> Result<(RingCallInfo, Step), RingError> {
        if req.ring_timeout_ms == 0 || req.ring_timeout_ms > MAX_RING_TIMEOUT_MS {
            return Err(RingError::InvalidTimeout(req.ring_timeout_ms));
        }
        check_id(&req.caller_user_id)?;
        if req.session_id.is_empty() || req.session_id.len() > 128 {
            return Err(RingError::InvalidId(
                req.session_id.chars().take(80).collect(),
            ));
        }
        if let Some(g) = &req.group_id {
            check_id(g)?;
        }
        if req.callee_user_ids.len() > MAX_CALLEES {
            return Err(RingError::TooManyCallees(req.callee_user_ids.len()));
        }
        let mut callees: Vec<String> = Vec::with_capacity(req.callee_user_ids.len());
        for c in req.callee_user_ids {
            check_id(&c)?;
            if c != req.caller_user_id && !callees.contains(&c) {
                callees.push(c);
            }
        }
        if callees.is_empty() {
            return Err(RingError::NoCallees);
        }
        if self.calls.contains_key(&req.call_cid) {
            return Err(RingError::CallExists(req.call_cid));
        }
        if let Some(other) = self.engaged.get(&req.caller_user_id) {
            return Err(RingError::Busy {
                user_id: req.caller_user_id,
                call_cid: other.clone(),
            });
        }

        let mut call = RingCall {
            session_id: req.session_id,
            cid: req.call_cid,
            caller: req.caller_user_id.clone(),
            group_id: req.group_id,
            kind: req.kind,
            callees: Vec::with_capacity(callees.len()),
            ring_timeout_ms: req.ring_timeout_ms,
            started_at_ms: now_ms,
            deadline_ms: now_ms.saturating_add(req.ring_timeout_ms),
            answered_at_ms: None,
            present: vec![req.caller_user_id.clone()],
            ever: vec![req.caller_user_id],
            busy: Vec::new(),
            video_request: None,
        };
        let mut step = Step::default();
        for c in callees {
            let state = if self.engaged.contains_key(&c) {
                call.busy.push(c.clone());
                step.send_user(
                    &call.caller,
                    RingEvent::Rejected {
                        call_cid: call.cid.clone(),
                        user_id: c.clone(),
                        reason: RejectReason::Busy,
                    },
                );
                CalleeState::Rejected(RejectReason::Busy)
            } else {
                CalleeState::Ringing
            };
            call.callees.push((c, state));
        }

        let ringing = call.ringing();
        if ringing.is_empty() {
            let outcome = call.outcome_if_over();
            step.records.push(call.record(outcome, Some(now_ms)));
            step.end_sessions.push(call.cid.clone());
            return Ok((call.info(RingPhase::Ended, Some(outcome)), step));
        }
        let ring = call.ring_event(call.ring_timeout_ms);
        for u in &ringing {
            step.send_user(u, ring.clone());
            self.incoming
                .entry(u.clone())
                .or_default()
                .insert(call.cid.clone());
        }
        self.engaged.insert(call.caller.clone(), call.cid.clone());
        self.deadlines.insert((call.deadline_ms, call.cid.clone()));
        let info = call.info(RingPhase::Ringing, None);
        self.calls.insert(call.cid.clone(), call);
        Ok((info, step))
    }

    /// A callee accepts on one device. The first accept wins: the caller (and anyone in the
    /// call) gets `call.accepted`, the callee's other devices `call.stop_ringing`.
    pub fn accept(
        &mut self,
        call_cid: &CallCid,
        user_id: &str,
        device_id: &str,
        now_ms: u64,
    ) -> Result<Step, RingError> {
        check_id(device_id)?;
        self.ringing_callee(call_cid, user_id, now_ms)?;
        if let Some(other) = self.engaged.get(user_id) {
            return Err(RingError::Busy {
                user_id: user_id.to_owned(),
                call_cid: other.clone(),
            });
        }
        let mut step = Step::default();
        let call = self.known_mut(call_cid)?;
        call.set_state(user_id, CalleeState::Accepted);
        if call.answered_at_ms.is_none() {
            call.answered_at_ms = Some(now_ms);
        }
        for p in &call.present {
            step.send_user(
                p,
                RingEvent::Accepted {
                    call_cid: call_cid.clone(),
                    user_id: user_id.to_owned(),
                    device_id: device_id.to_owned(),
                },
            );
        }
        step.send(
            Recipient::UserExceptDevice {
                user_id: user_id.to_owned(),
                device_id: device_id.to_owned(),
            },
            RingEvent::StopRinging {
                call_cid: call_cid.clone(),
            },
        );
        call.present.push(user_id.to_owned());
        if !call.ever.iter().any(|u| u == user_id) {
            call.ever.push(user_id.to_owned());
        }
        call.video_request = None;
        step.records.push(call.record(RingOutcome::Accepted, None));
        let nobody_rings = call.ringing().is_empty();
        let deadline = call.deadline_ms;
        self.engaged.insert(user_id.to_owned(), call_cid.clone());
        self.stop_incoming(user_id, call_cid);
        if nobody_rings {
            self.deadlines.remove(&(deadline, call_cid.clone()));
        }
        Ok(step)
    }

    /// A callee rejects. `device_id` is the device that acted (its other devices get
    /// `call.stop_ringing`; with `None`, all of them do). The caller and anyone in the call get
    /// `call.rejected`. When nobody rings any more and nobody accepted, the call is over.
    pub fn reject(
        &mut self,
        call_cid: &CallCid,
        user_id: &str,
        device_id: Option<&str>,
        reason: RejectReason,
        now_ms: u64,
    ) -> Result<Step, RingError> {
        if let Some(d) = device_id {
            check_id(d)?;
        }
        self.ringing_callee(call_cid, user_id, now_ms)?;
        let mut step = Step::default();
        let call = self.known_mut(call_cid)?;
        call.set_state(user_id, CalleeState::Rejected(reason));
        for p in &call.present {
            step.send_user(
                p,
                RingEvent::Rejected {
                    call_cid: call_cid.clone(),
                    user_id: user_id.to_owned(),
                    reason,
                },
            );
        }
        let stop = RingEvent::StopRinging {
            call_cid: call_cid.clone(),
        };
        match device_id {
            Some(d) => step.send(
                Recipient::UserExceptDevice {
                    user_id: user_id.to_owned(),
                    device_id: d.to_owned(),
                },
                stop,
            ),
            None => step.send_user(user_id, stop),
        }
        let nobody_rings = call.ringing().is_empty();
        let active = call.active();
        let deadline = call.deadline_ms;
        self.stop_incoming(user_id, call_cid);
        if nobody_rings {
            if active {
                self.deadlines.remove(&(deadline, call_cid.clone()));
            } else {
                let over = self.finish(call_cid, now_ms);
                step.extend(over);
            }
        }
        Ok(step)
    }

    /// The caller cancels before anyone accepted: the callees still ringing get
    /// `call.cancelled`, and the call is over.
    pub fn cancel(
        &mut self,
        call_cid: &CallCid,
        user_id: &str,
        now_ms: u64,
    ) -> Result<Step, RingError> {
        let call = self.known(call_cid)?;
        if call.caller != user_id {
            return Err(RingError::NotCaller);
        }
        if call.active() {
            return Err(RingError::AlreadyAccepted);
        }
        if now_ms >= call.deadline_ms {
            return Err(RingError::Expired);
        }
        let mut step = Step::default();
        for u in call.ringing() {
            step.send_user(
                &u,
                RingEvent::Cancelled {
                    call_cid: call_cid.clone(),
                    by: user_id.to_owned(),
                },
            );
        }
        if let Some(c) = self.calls.get_mut(call_cid) {
            c.callees.iter_mut().for_each(|(_, s)| {
                if *s == CalleeState::Ringing {
                    *s = CalleeState::Left;
                }
            });
        }
        step.extend(self.finish_with(call_cid, now_ms, Some(RingOutcome::Cancelled)));
        Ok(step)
    }

    /// Ends the call for everyone: the others in the call (and members still ringing) get
    /// `call.ended`. While the call still rings this is a cancel from the caller and a reject
    /// from a callee.
    pub fn end(
        &mut self,
        call_cid: &CallCid,
        user_id: &str,
        now_ms: u64,
    ) -> Result<Step, RingError> {
        let as_callee =
            |ring: &mut Self| ring.reject(call_cid, user_id, None, RejectReason::Rejected, now_ms);
        if let Some(done) = self.depart_ringing(call_cid, user_id, now_ms, as_callee) {
            return done;
        }
        Ok(self.end_active(call_cid, user_id, now_ms))
    }

    /// A participant leaves. A one-to-one call ends (`call.ended` to the other side); a group
    /// call ends when its last participant leaves. While the call still rings, the caller
    /// leaving cancels it.
    pub fn leave(
        &mut self,
        call_cid: &CallCid,
        user_id: &str,
        now_ms: u64,
    ) -> Result<Step, RingError> {
        let as_callee = |_: &mut Self| Err(RingError::NotParticipant(user_id.to_owned()));
        if let Some(done) = self.depart_ringing(call_cid, user_id, now_ms, as_callee) {
            return done;
        }
        let call = self.known(call_cid)?;
        if !call.is_group() || call.present.len() == 1 {
            return Ok(self.end_active(call_cid, user_id, now_ms));
        }
        if let Some(call) = self.calls.get_mut(call_cid) {
            call.present.retain(|p| p != user_id);
            call.set_state(user_id, CalleeState::Left);
            if call.video_request.as_deref() == Some(user_id) {
                call.video_request = None;
            }
        }
        self.engaged.remove(user_id);
        Ok(Step::default())
    }

    /// A participant of an active audio call asks to switch to video: the others get
    /// `call.video_requested`.
    pub fn request_video(&mut self, call_cid: &CallCid, user_id: &str) -> Result<Step, RingError> {
        let call = self.active_participant(call_cid, user_id)?;
        if call.kind == CallKind::Video {
            return Err(RingError::AlreadyVideo);
        }
        call.video_request = Some(user_id.to_owned());
        let mut step = Step::default();
        for p in call.present.iter().filter(|p| *p != user_id) {
            step.send_user(
                p,
                RingEvent::VideoRequested {
                    call_cid: call_cid.clone(),
                    requested_by: user_id.to_owned(),
                },
            );
        }
        Ok(step)
    }

    /// Another participant accepts the switch to video: everyone in the call gets
    /// `call.switched_to_video`, and the history record's kind becomes video.
    pub fn accept_video(&mut self, call_cid: &CallCid, user_id: &str) -> Result<Step, RingError> {
        let call = self.active_participant(call_cid, user_id)?;
        if call.kind == CallKind::Video {
            return Err(RingError::AlreadyVideo);
        }
        let requested_by = match &call.video_request {
            Some(r) if r != user_id => r.clone(),
            _ => return Err(RingError::NoVideoRequest),
        };
        call.kind = CallKind::Video;
        call.video_request = None;
        let mut step = Step::default();
        for p in &call.present {
            step.send_user(
                p,
                RingEvent::SwitchedToVideo {
                    call_cid: call_cid.clone(),
                    requested_by: requested_by.clone(),
                    accepted_by: user_id.to_owned(),
                },
            );
        }
        step.records.push(call.record(RingOutcome::Accepted, None));
        Ok(step)
    }

    /// Applies every ring deadline at or before `now_ms`: callees still ringing get
    /// `call.missed`; a call nobody accepted is over (the caller gets `call.missed` too).
    pub fn poll_timeout(&mut self, now_ms: u64) -> Step {
        let mut step = Step::default();
        while let Some((deadline, cid)) = self.deadlines.first().cloned() {
            if deadline > now_ms {
                break;
            }
            self.deadlines.remove(&(deadline, cid.clone()));
            let Some(call) = self.calls.get_mut(&cid) else {
                continue;
            };
            let missed = call.ringing();
            let event = RingEvent::Missed {
                call_cid: cid.clone(),
            };
            for u in &missed {
                call.set_state(u, CalleeState::Missed);
                step.send_user(u, event.clone());
            }
            let active = call.active();
            let caller = call.caller.clone();
            for u in &missed {
                self.stop_incoming(u, &cid);
            }
            if !active {
                step.send_user(&caller, event);
                step.extend(self.finish_with(&cid, now_ms, Some(RingOutcome::Missed)));
            }
        }
        step
    }

    /// The server is shutting down: every call is over now. A call still ringing ends as
    /// `missed` (its ringing callees and the caller get `call.missed`), an active one as
    /// `accepted` with its talk time (its participants get `call.ended` by `ended_by`). Each
    /// call gets its final record.
    pub fn end_all(&mut self, ended_by: &str, now_ms: u64) -> Step {
        let mut step = Step::default();
        let mut cids: Vec<CallCid> = self.calls.keys().cloned().collect();
        cids.sort_by_key(|c| c.to_string());
        for cid in cids {
            let Some(call) = self.calls.get(&cid) else {
                continue;
            };
            if call.active() {
                step.extend(self.end_active(&cid, ended_by, now_ms));
                continue;
            }
            let event = RingEvent::Missed {
                call_cid: cid.clone(),
            };
            for u in call.ringing().iter().chain(std::iter::once(&call.caller)) {
                step.send_user(u, event.clone());
            }
            step.extend(self.finish_with(&cid, now_ms, Some(RingOutcome::Missed)));
        }
        step
    }

    /// A device of a user connected: it starts ringing for every call ringing the user, with
    /// the time left.
    pub fn device_connected(&self, user_id: &str, device_id: &str, now_ms: u64) -> Step {
        let mut step = Step::default();
        for cid in self.incoming.get(user_id).into_iter().flatten() {
            let Some(call) = self.calls.get(cid) else {
                continue;
            };
            if now_ms >= call.deadline_ms {
                continue;
            }
            step.send(
                Recipient::Device {
                    user_id: user_id.to_owned(),
                    device_id: device_id.to_owned(),
                },
                call.ring_event(call.deadline_ms - now_ms),
            );
        }
        step
    }

    /// The call `call_cid`, or `UnknownCall`.
    fn known(&self, call_cid: &CallCid) -> Result<&RingCall, RingError> {
        self.calls
            .get(call_cid)
            .ok_or_else(|| RingError::UnknownCall(call_cid.clone()))
    }

    /// [`Self::known`], mutable.
    fn known_mut(&mut self, call_cid: &CallCid) -> Result<&mut RingCall, RingError> {
        self.calls
            .get_mut(call_cid)
            .ok_or_else(|| RingError::UnknownCall(call_cid.clone()))
    }

    /// What ending and leaving share, before the call is active: the caller cancels it, a
    /// callee gets `as_callee`'s answer. On an active call, a user who is not in it gets
    /// `NotParticipant`. `None`: the call is active and `user_id` is in it.
    fn depart_ringing(
        &mut self,
        call_cid: &CallCid,
        user_id: &str,
        now_ms: u64,
        as_callee: impl FnOnce(&mut Self) -> Result<Step, RingError>,
    ) -> Option<Result<Step, RingError>> {
        let call = match self.known(call_cid) {
            Ok(call) => call,
            Err(e) => return Some(Err(e)),
        };
        if !call.active() {
            return Some(if call.caller == user_id {
                self.cancel(call_cid, user_id, now_ms)
            } else {
                as_callee(self)
            });
        }
        if !call.is_present(user_id) {
            return Some(Err(RingError::NotParticipant(user_id.to_owned())));
        }
        None
    }

    /// Checks that `user_id` is a callee of `call_cid` still ringing before its deadline.
    fn ringing_callee(
        &self,
        call_cid: &CallCid,
        user_id: &str,
        now_ms: u64,
    ) -> Result<&RingCall, RingError> {
        let call = self.known(call_cid)?;
        match call.state_of(user_id) {
            None => Err(RingError::NotCallee(user_id.to_owned())),
            Some(CalleeState::Ringing) if now_ms >= call.deadline_ms => Err(RingError::Expired),
            Some(CalleeState::Ringing) => Ok(call),
            Some(CalleeState::Missed) => Err(RingError::Expired),
            Some(_) => Err(RingError::AlreadyAnswered(user_id.to_owned())),
        }
    }

    fn active_participant(
        &mut self,
        call_cid: &CallCid,
        user_id: &str,
    ) -> Result<&mut RingCall, RingError> {
        let call = self.known_mut(call_cid)?;
        if !call.active() {
            return Err(RingError::NotActive);
        }
        if !call.is_present(user_id) {
            return Err(RingError::NotParticipant(user_id.to_owned()));
        }
        Ok(call)
    }

    fn end_active(&mut self, call_cid: &CallCid, ended_by: &str, now_ms: u64) -> Step {
        let mut step = Step::default();
        if let Some(call) = self.calls.get(call_cid) {
            let event = RingEvent::Ended {
                call_cid: call_cid.clone(),
                ended_by: ended_by.to_owned(),
            };
            for u in call
                .present
                .iter()
                .filter(|p| *p != ended_by)
                .chain(call.ringing().iter())
            {
                step.send_user(u, event.clone());
            }
        }
        step.extend(self.finish(call_cid, now_ms));
        step
    }

    fn finish(&mut self, call_cid: &CallCid, now_ms: u64) -> Step {
        self.finish_with(call_cid, now_ms, None)
    }

    /// Removes a call from every index and emits its final record.
    fn finish_with(
        &mut self,
        call_cid: &CallCid,
        now_ms: u64,
        outcome: Option<RingOutcome>,
    ) -> Step {
        let mut step = Step::default();
        let Some(call) = self.calls.remove(call_cid) else {
            return step;
        };
        self.deadlines.remove(&(call.deadline_ms, call_cid.clone()));
        for u in call.present.iter().chain(std::iter::once(&call.caller)) {
            if self.engaged.get(u) == Some(call_cid) {
                self.engaged.remove(u);
            }
        }
        for (u, _) in &call.callees {
            self.stop_incoming(u, call_cid);
        }
        let outcome = outcome.unwrap_or_else(|| call.outcome_if_over());
        step.records.push(call.record(outcome, Some(now_ms)));
        step.end_sessions.push(call_cid.clone());
        step
    }

    fn stop_incoming(&mut self, user_id: &str, call_cid: &CallCid) {
        if let Some(set) = self.incoming.get_mut(user_id) {
            set.remove(call_cid);
            if set.is_empty() {
                self.incoming.remove(user_id);
            }
        }
    }
}

fn check_id(id: &str) -> Result<(), RingError> {
    validate_id(id).map_err(|_| RingError::InvalidId(id.chars().take(80).collect()))
}

/// A named set of users that can be rung together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The group id.
    pub id: String,
    /// The members.
    pub members: BTreeSet<String>,
}

/// Why a group operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// A group with this id exists.
    #[error("group `{0}` already exists")]
    Exists(String),
    /// No group with this id.
    #[error("no group `{0}`")]
    NotFound(String),
    /// A malformed group or user id.
    #[error("invalid id `{0}`")]
    InvalidId(String),
    /// The group would have too many members.
    #[error("a group has at most {MAX_CALLEES} members")]
    TooManyMembers,
    /// The user is not a member.
    #[error("`{user_id}` is not a member of group `{group_id}`")]
    NotMember {
        /// The group.
        group_id: String,
        /// The user.
        user_id: String,
    },
}

/// The in-memory group registry.
#[derive(Debug, Default)]
pub struct Groups {
    groups: HashMap<String, Group>,
}

impl Groups {
    /// An empty registry.
    pub fn new() -> Groups {
        Groups::default()
    }

    /// Creates a group.
    pub fn create(&mut self, group_id: &str, members: &[String]) -> Result<&Group, GroupError> {
        check_group_id(group_id)?;
        if self.groups.contains_key(group_id) {
            return Err(GroupError::Exists(group_id.to_owned()));
        }
        let mut set = BTreeSet::new();
        add_checked(&mut set, members)?;
        let group = self
            .groups
            .entry(group_id.to_owned())
            .or_insert_with(|| Group {
                id: group_id.to_owned(),
                members: BTreeSet::new(),
            });
        group.members = set;
        Ok(group)
    }

    /// A group by id.
    pub fn get(&self, group_id: &str) -> Option<&Group> {
        self.groups.get(group_id)
    }

    /// Group `group_id`, or `NotFound`.
    fn known_mut(&mut self, group_id: &str) -> Result<&mut Group, GroupError> {
        self.groups
            .get_mut(group_id)
            .ok_or_else(|| GroupError::NotFound(group_id.to_owned()))
    }

    /// Adds members (existing ones are kept once).
    pub fn add_members(
        &mut self,
        group_id: &str,
        members: &[String],
    ) -> Result<&Group, GroupError> {
        let group = self.known_mut(group_id)?;
        let mut set = group.members.clone();
        add_checked(&mut set, members)?;
        group.members = set;
        Ok(group)
    }

    /// Removes members (absent ones are ignored).
    pub fn remove_members(
        &mut self,
        group_id: &str,
        members: &[String],
    ) -> Result<&Group, GroupError> {
        let group = self.known_mut(group_id)?;
        for m in members {
            group.members.remove(m);
        }
        Ok(group)
    }

    /// Deletes a group, returning it.
    pub fn delete(&mut self, group_id: &str) -> Result<Group, GroupError> {
        self.groups
            .remove(group_id)
            .ok_or_else(|| GroupError::NotFound(group_id.to_owned()))
    }

    /// How many groups exist.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether no group exists.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

fn check_group_id(id: &str) -> Result<(), GroupError> {
    validate_id(id).map_err(|_| GroupError::InvalidId(id.chars().take(80).collect()))
}

fn add_checked(set: &mut BTreeSet<String>, members: &[String]) -> Result<(), GroupError> {
    for m in members {
        check_group_id(m)?;
        set.insert(m.clone());
        if set.len() > MAX_CALLEES {
            return Err(GroupError::TooManyMembers);
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;
    const TIMEOUT: u64 = 15_000;

    fn cid(id: &str) -> CallCid {
        format!("default:{id}").parse().unwrap()
    }

    fn users(u: &[&str]) -> Vec<String> {
        u.iter().map(|s| (*s).to_owned()).collect()
    }

    fn req(id: &str, caller: &str, callees: &[&str], kind: CallKind) -> InitiateRequest {
        InitiateRequest::to_users(cid(id), caller, &users(callees), kind)
            .with_session_id(&format!("s-{id}"))
            .with_ring_timeout_ms(TIMEOUT)
    }

    /// alice rings bob (audio) at T0.
    fn one_to_one() -> (Ringer, CallCid) {
        let mut r = Ringer::new();
        let (info, step) = r
            .initiate(req("c1", "alice", &["bob"], CallKind::Audio), T0)
            .unwrap();
        assert_eq!(info.phase, RingPhase::Ringing);
        assert_eq!(step.outputs.len(), 1);
        (r, cid("c1"))
    }

    fn to_user<'a>(step: &'a Step, user: &str) -> Vec<&'a RingEvent> {
        step.outputs
            .iter()
            .filter(|o| o.to.user_id() == user)
            .map(|o| &o.event)
            .collect()
    }

    /// `user` rejects `c` (every device) for `reason` at `at`, which must succeed.
    fn rejected(r: &mut Ringer, c: &CallCid, user: &str, reason: RejectReason, at: u64) -> Step {
        r.reject(c, user, None, reason, at).unwrap()
    }

    fn last_record(step: &Step) -> &CallRecord {
        step.records.last().expect("a record")
    }

    fn assert_idle(r: &Ringer) {
        assert!(r.is_empty(), "calls left: {}", r.len());
        assert!(r.engaged.is_empty(), "engaged left: {:?}", r.engaged);
        assert!(r.incoming.is_empty(), "incoming left: {:?}", r.incoming);
        assert!(r.deadlines.is_empty(), "deadlines left");
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn end_all_gives_every_call_its_final_record() {
        let (mut r, ringing) = one_to_one();
        let (_, _) = r
            .initiate(req("c2", "carol", &["dave"], CallKind::Video), T0)
            .unwrap();
        let active = cid("c2");
        r.accept(&active, "dave", "d1", T0 + 1_000).unwrap();
        let step = r.end_all("server", T0 + 5_000);
        assert_eq!(step.records.len(), 2);
        let rec = |c: &CallCid| step.records.iter().find(|x| &x.call_cid == c).unwrap();
        let rung = rec(&ringing);
        assert_eq!(rung.outcome, RingOutcome::Missed);
        assert_eq!(rung.ended_at_ms, Some(T0 + 5_000));
        let talked = rec(&active);
        assert_eq!(talked.outcome, RingOutcome::Accepted);
        assert_eq!(talked.duration_ms, Some(4_000));
        assert!(to_user(&step, "bob")
            .iter()
            .any(|e| matches!(e, RingEvent::Missed { .. })));
        assert!(to_user(&step, "dave")
            .iter()
            .any(|e| matches!(e, RingEvent::Ended { .. })));
        assert_eq!(step.end_sessions.len(), 2);
        assert_idle(&r);
    }

    #[test]
    fn initiate_rings_the_callee_with_caller_kind_and_timeout() {
        let mut r = Ringer::new();
        let (info, step) = r
            .initiate(req("c1", "alice", &["bob"], CallKind::Video), T0)
            .unwrap();
        assert_eq!(info.session_id, "s-c1");
        assert_eq!(info.call_cid, cid("c1"));
        assert_eq!(info.participants, users(&["alice"]));
        assert_eq!(info.kind, CallKind::Video);
        assert_eq!(
            step.outputs,
            vec![Output {
                to: Recipient::User("bob".into()),
                event: RingEvent::Ring {
                    call_cid: cid("c1"),
                    caller_user_id: "alice".into(),
                    kind: CallKind::Video,
                    members: users(&["bob"]),
                    group_id: None,
                    ring_timeout_ms: TIMEOUT,
                },
            }]
        );
        assert!(step.records.is_empty());
        assert_eq!(r.next_deadline(), Some(T0 + TIMEOUT));
        assert!(r.is_busy("alice"));
        assert!(!r.is_busy("bob"));
        assert_eq!(r.incoming_for("bob").len(), 1);
        assert_eq!(r.call(&cid("c1")).unwrap().phase, RingPhase::Ringing);
    }

    #[test]
    fn initiate_validates_input() {
        let mut r = Ringer::new();
        assert_eq!(
            r.initiate(req("c1", "alice", &[], CallKind::Audio), T0),
            Err(RingError::NoCallees)
        );
        assert_eq!(
            r.initiate(req("c1", "alice", &["alice"], CallKind::Audio), T0),
            Err(RingError::NoCallees)
        );
        assert!(matches!(
            r.initiate(req("c1", "alice", &["b ob"], CallKind::Audio), T0),
            Err(RingError::InvalidId(_))
        ));
        assert_eq!(
            r.initiate(
                req("c1", "alice", &["bob"], CallKind::Audio).with_ring_timeout_ms(0),
                T0
            ),
            Err(RingError::InvalidTimeout(0))
        );
        let many: Vec<String> = (0..=MAX_CALLEES).map(|i| format!("u{i}")).collect();
        let mut big = req("c1", "alice", &[], CallKind::Audio);
        big.callee_user_ids = many;
        assert_eq!(
            r.initiate(big, T0),
            Err(RingError::TooManyCallees(MAX_CALLEES + 1))
        );
        assert_idle(&r);
        // Duplicates and the caller are dropped.
        let (info, step) = r
            .initiate(
                req("c1", "alice", &["bob", "alice", "bob"], CallKind::Audio),
                T0,
            )
            .unwrap();
        assert_eq!(info.callee_user_ids, users(&["bob"]));
        assert_eq!(step.outputs.len(), 1);
        assert_eq!(
            r.initiate(req("c1", "carol", &["dave"], CallKind::Audio), T0),
            Err(RingError::CallExists(cid("c1")))
        );
    }

    #[test]
    fn caller_already_in_a_call_cannot_initiate() {
        let (mut r, c1) = one_to_one();
        assert_eq!(
            r.initiate(req("c2", "alice", &["carol"], CallKind::Audio), T0),
            Err(RingError::Busy {
                user_id: "alice".into(),
                call_cid: c1
            })
        );
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn accept_notifies_caller_and_stops_other_devices() {
        let (mut r, c) = one_to_one();
        let step = r.accept(&c, "bob", "phone", T0 + 2_000).unwrap();
        assert_eq!(
            to_user(&step, "alice"),
            vec![&RingEvent::Accepted {
                call_cid: c.clone(),
                user_id: "bob".into(),
                device_id: "phone".into(),
            }]
        );
        assert!(step.events_for_device("bob", "phone").is_empty());
        assert_eq!(
            step.events_for_device("bob", "laptop"),
            vec![&RingEvent::StopRinging {
                call_cid: c.clone()
            }]
        );
        let rec = last_record(&step);
        assert_eq!(rec.outcome, RingOutcome::Accepted);
        assert_eq!(rec.answered_at_ms, Some(T0 + 2_000));
        assert_eq!(rec.ended_at_ms, None);
        assert_eq!(rec.participants, users(&["alice", "bob"]));
        assert!(step.end_sessions.is_empty());
        let info = r.call(&c).unwrap();
        assert_eq!(info.phase, RingPhase::Active);
        assert_eq!(info.participants, users(&["alice", "bob"]));
        assert!(r.is_busy("bob"));
        assert!(r.incoming_for("bob").is_empty());
        // Nobody else rings: no timeout pending.
        assert_eq!(r.next_deadline(), None);
        assert!(r.poll_timeout(T0 + 60_000).is_empty());
    }

    #[test]
    fn reject_ends_a_one_to_one_call_with_the_reason() {
        for (reason, outcome) in [
            (RejectReason::Rejected, RingOutcome::Rejected),
            (RejectReason::Declined, RingOutcome::Declined),
            (RejectReason::Busy, RingOutcome::Busy),
        ] {
            let (mut r, c) = one_to_one();
            let step = r
                .reject(&c, "bob", Some("phone"), reason, T0 + 1_000)
                .unwrap();
            assert_eq!(
                to_user(&step, "alice"),
                vec![&RingEvent::Rejected {
                    call_cid: c.clone(),
                    user_id: "bob".into(),
                    reason,
                }]
            );
            assert_eq!(
                step.events_for_device("bob", "tablet"),
                vec![&RingEvent::StopRinging {
                    call_cid: c.clone()
                }]
            );
            assert!(step.events_for_device("bob", "phone").is_empty());
            let rec = last_record(&step);
            assert_eq!(rec.outcome, outcome);
            assert_eq!(rec.ended_at_ms, Some(T0 + 1_000));
            assert_eq!(rec.duration_ms, None);
            assert_eq!(step.end_sessions, vec![c.clone()]);
            assert_idle(&r);
        }
    }

    #[test]
    fn reject_without_device_stops_every_device() {
        let (mut r, c) = one_to_one();
        let step = rejected(&mut r, &c, "bob", RejectReason::Rejected, T0 + 1);
        assert_eq!(
            step.events_for_device("bob", "any"),
            vec![&RingEvent::StopRinging { call_cid: c }]
        );
    }

    #[test]
    fn cancel_tells_ringing_callees() {
        let (mut r, c) = one_to_one();
        assert_eq!(r.cancel(&c, "bob", T0 + 1), Err(RingError::NotCaller));
        let step = r.cancel(&c, "alice", T0 + 3_000).unwrap();
        assert_eq!(
            to_user(&step, "bob"),
            vec![&RingEvent::Cancelled {
                call_cid: c.clone(),
                by: "alice".into()
            }]
        );
        assert!(to_user(&step, "alice").is_empty());
        assert_eq!(last_record(&step).outcome, RingOutcome::Cancelled);
        assert_eq!(last_record(&step).ended_at_ms, Some(T0 + 3_000));
        assert_eq!(step.end_sessions, vec![c.clone()]);
        assert_idle(&r);
        assert_eq!(
            r.cancel(&c, "alice", T0 + 4_000),
            Err(RingError::UnknownCall(c))
        );
    }

    #[test]
    fn timeout_misses_the_call_for_everyone() {
        let (mut r, c) = one_to_one();
        assert!(r.poll_timeout(T0 + TIMEOUT - 1).is_empty());
        assert_eq!(r.len(), 1);
        let step = r.poll_timeout(T0 + TIMEOUT);
        let missed = RingEvent::Missed {
            call_cid: c.clone(),
        };
        assert_eq!(to_user(&step, "bob"), vec![&missed]);
        assert_eq!(to_user(&step, "alice"), vec![&missed]);
        let rec = last_record(&step);
        assert_eq!(rec.outcome, RingOutcome::Missed);
        assert_eq!(rec.ended_at_ms, Some(T0 + TIMEOUT));
        assert_eq!(rec.participants, users(&["alice"]));
        assert_eq!(step.end_sessions, vec![c]);
        assert_idle(&r);
        assert!(r.poll_timeout(T0 + 10 * TIMEOUT).is_empty());
    }

    #[test]
    fn either_side_ends_the_call_and_the_other_is_told() {
        for ender in ["alice", "bob"] {
            let other = if ender == "alice" { "bob" } else { "alice" };
            let (mut r, c) = one_to_one();
            r.accept(&c, "bob", "phone", T0 + 1_000).unwrap();
            assert_eq!(
                r.end(&c, "carol", T0 + 2_000),
                Err(RingError::NotParticipant("carol".into()))
            );
            let step = r.end(&c, ender, T0 + 61_000).unwrap();
            assert_eq!(
                to_user(&step, other),
                vec![&RingEvent::Ended {
                    call_cid: c.clone(),
                    ended_by: ender.into()
                }]
            );
            assert!(to_user(&step, ender).is_empty());
            let rec = last_record(&step);
            assert_eq!(rec.outcome, RingOutcome::Accepted);
            assert_eq!(rec.ended_at_ms, Some(T0 + 61_000));
            assert_eq!(rec.duration_ms, Some(60_000));
            assert_eq!(step.end_sessions, vec![c.clone()]);
            assert_idle(&r);
        }
    }

    #[test]
    fn leaving_a_one_to_one_call_ends_it() {
        let (mut r, c) = one_to_one();
        r.accept(&c, "bob", "phone", T0 + 1_000).unwrap();
        let step = r.leave(&c, "bob", T0 + 5_000).unwrap();
        assert_eq!(
            to_user(&step, "alice"),
            vec![&RingEvent::Ended {
                call_cid: c.clone(),
                ended_by: "bob".into()
            }]
        );
        assert_eq!(step.end_sessions, vec![c]);
        assert_idle(&r);
    }

    #[test]
    fn end_or_leave_while_ringing_is_cancel_or_reject() {
        let (mut r, c) = one_to_one();
        let step = r.end(&c, "alice", T0 + 1).unwrap();
        assert_eq!(last_record(&step).outcome, RingOutcome::Cancelled);
        assert_idle(&r);

        let (mut r, c) = one_to_one();
        let step = r.leave(&c, "alice", T0 + 1).unwrap();
        assert_eq!(last_record(&step).outcome, RingOutcome::Cancelled);

        let (mut r, c) = one_to_one();
        let step = r.end(&c, "bob", T0 + 1).unwrap();
        assert_eq!(last_record(&step).outcome, RingOutcome::Rejected);
        assert_idle(&r);

        let (mut r, c) = one_to_one();
        assert_eq!(
            r.leave(&c, "bob", T0 + 1),
            Err(RingError::NotParticipant("bob".into()))
        );
        assert_eq!(
            r.end(&c, "mallory", T0 + 1),
            Err(RingError::NotCallee("mallory".into()))
        );
    }

    #[test]
    fn only_callees_accept_or_reject() {
        let (mut r, c) = one_to_one();
        assert_eq!(
            r.accept(&c, "alice", "d", T0),
            Err(RingError::NotCallee("alice".into()))
        );
        assert_eq!(
            r.accept(&c, "carol", "d", T0),
            Err(RingError::NotCallee("carol".into()))
        );
        assert_eq!(
            r.reject(&c, "carol", None, RejectReason::Rejected, T0),
            Err(RingError::NotCallee("carol".into()))
        );
        assert!(matches!(
            r.accept(&c, "bob", "", T0),
            Err(RingError::InvalidId(_))
        ));
        assert_eq!(
            r.accept(&cid("nope"), "bob", "d", T0),
            Err(RingError::UnknownCall(cid("nope")))
        );
        assert_eq!(r.len(), 1);
    }

    // ---- races ----

    #[test]
    fn race_accept_then_cancel_accept_wins() {
        let (mut r, c) = one_to_one();
        r.accept(&c, "bob", "phone", T0 + 10).unwrap();
        assert_eq!(
            r.cancel(&c, "alice", T0 + 10),
            Err(RingError::AlreadyAccepted)
        );
        assert_eq!(r.call(&c).unwrap().phase, RingPhase::Active);
    }

    #[test]
    fn race_cancel_then_accept_cancel_wins() {
        let (mut r, c) = one_to_one();
        let step = r.cancel(&c, "alice", T0 + 10).unwrap();
        assert_eq!(last_record(&step).outcome, RingOutcome::Cancelled);
        assert_eq!(
            r.accept(&c, "bob", "phone", T0 + 10),
            Err(RingError::UnknownCall(c.clone()))
        );
        assert_idle(&r);
    }

    #[test]
    fn race_accept_on_two_devices_first_wins() {
        let (mut r, c) = one_to_one();
        let step = r.accept(&c, "bob", "phone", T0 + 10).unwrap();
        assert_eq!(
            step.events_for_device("bob", "laptop"),
            vec![&RingEvent::StopRinging {
                call_cid: c.clone()
            }]
        );
        assert_eq!(
            r.accept(&c, "bob", "laptop", T0 + 11),
            Err(RingError::AlreadyAnswered("bob".into()))
        );
        assert_eq!(
            r.reject(&c, "bob", Some("laptop"), RejectReason::Rejected, T0 + 11),
            Err(RingError::AlreadyAnswered("bob".into()))
        );
        let info = r.call(&c).unwrap();
        assert_eq!(info.participants, users(&["alice", "bob"]));
    }

    #[test]
    fn race_reject_before_timeout_reject_wins() {
        let (mut r, c) = one_to_one();
        let step = rejected(&mut r, &c, "bob", RejectReason::Rejected, T0 + TIMEOUT - 1);
        assert_eq!(last_record(&step).outcome, RingOutcome::Rejected);
        assert!(r.poll_timeout(T0 + TIMEOUT).is_empty());
    }

    #[test]
    fn race_reject_after_deadline_but_before_poll_timeout_wins() {
        let (mut r, c) = one_to_one();
        // The timer has not fired yet, but time has passed the deadline.
        assert_eq!(
            r.reject(&c, "bob", None, RejectReason::Rejected, T0 + TIMEOUT),
            Err(RingError::Expired)
        );
        assert_eq!(
            r.accept(&c, "bob", "phone", T0 + TIMEOUT + 5),
            Err(RingError::Expired)
        );
        assert_eq!(
            r.cancel(&c, "alice", T0 + TIMEOUT + 5),
            Err(RingError::Expired)
        );
        let step = r.poll_timeout(T0 + TIMEOUT + 7);
        assert_eq!(last_record(&step).outcome, RingOutcome::Missed);
        assert_eq!(step.records.len(), 1);
        assert_idle(&r);
    }

    // ---- busy ----

    #[test]
    fn callee_in_an_active_call_is_rejected_as_busy() {
        let (mut r, c1) = one_to_one();
        r.accept(&c1, "bob", "phone", T0 + 1).unwrap();
        let (info, step) = r
            .initiate(req("c2", "carol", &["bob"], CallKind::Video), T0 + 2)
            .unwrap();
        assert_eq!(info.phase, RingPhase::Ended);
        assert_eq!(info.outcome, Some(RingOutcome::Busy));
        assert_eq!(info.busy_user_ids, users(&["bob"]));
        assert_eq!(
            to_user(&step, "carol"),
            vec![&RingEvent::Rejected {
                call_cid: cid("c2"),
                user_id: "bob".into(),
                reason: RejectReason::Busy
            }]
        );
        assert!(
            to_user(&step, "bob").is_empty(),
            "bob's devices must not ring"
        );
        assert_eq!(last_record(&step).outcome, RingOutcome::Busy);
        assert_eq!(step.end_sessions, vec![cid("c2")]);
        assert_eq!(r.len(), 1);
        assert!(!r.is_busy("carol"));
    }

    #[test]
    fn caller_of_a_ringing_call_is_busy() {
        let (mut r, _c1) = one_to_one();
        let (info, _) = r
            .initiate(req("c2", "carol", &["alice", "dave"], CallKind::Audio), T0)
            .unwrap();
        assert_eq!(info.phase, RingPhase::Ringing);
        assert_eq!(info.busy_user_ids, users(&["alice"]));
        // Being rung does not make one busy: bob can still be rung by someone else.
        let (info, _) = r
            .initiate(req("c3", "erin", &["bob"], CallKind::Audio), T0)
            .unwrap();
        assert_eq!(info.phase, RingPhase::Ringing);
        assert_eq!(r.incoming_for("bob").len(), 2);
        // But bob cannot accept a second call while in the first.
        r.accept(&cid("c1"), "bob", "phone", T0 + 1).unwrap();
        assert_eq!(
            r.accept(&cid("c3"), "bob", "phone", T0 + 2),
            Err(RingError::Busy {
                user_id: "bob".into(),
                call_cid: cid("c1")
            })
        );
    }

    // ---- groups ----

    fn group_call(r: &mut Ringer) -> CallCid {
        let mut groups = Groups::new();
        groups
            .create("team", &users(&["alice", "bob", "carol", "dave"]))
            .unwrap();
        let g = groups.get("team").unwrap();
        let req = InitiateRequest::to_group(cid("g1"), "alice", g, CallKind::Audio)
            .unwrap()
            .with_session_id("s-g1")
            .with_ring_timeout_ms(TIMEOUT);
        let (info, step) = r.initiate(req, T0).unwrap();
        assert_eq!(info.group_id.as_deref(), Some("team"));
        assert_eq!(info.callee_user_ids, users(&["bob", "carol", "dave"]));
        for u in ["bob", "carol", "dave"] {
            assert!(matches!(
                to_user(&step, u).as_slice(),
                [RingEvent::Ring { group_id: Some(_), members, .. }] if members.len() == 3
            ));
        }
        cid("g1")
    }

    #[test]
    fn group_call_proceeds_on_first_accept_and_others_keep_ringing() {
        let mut r = Ringer::new();
        let c = group_call(&mut r);
        let step = r.accept(&c, "bob", "phone", T0 + 1_000).unwrap();
        assert_eq!(to_user(&step, "alice").len(), 1);
        assert_eq!(r.call(&c).unwrap().phase, RingPhase::Active);
        assert_eq!(
            r.cancel(&c, "alice", T0 + 1_001),
            Err(RingError::AlreadyAccepted)
        );
        // carol joins later: both alice and bob learn it.
        let step = r.accept(&c, "carol", "web", T0 + 2_000).unwrap();
        assert_eq!(to_user(&step, "alice").len(), 1);
        assert_eq!(to_user(&step, "bob").len(), 1);
        let rec = last_record(&step);
        assert_eq!(rec.participants, users(&["alice", "bob", "carol"]));
        assert_eq!(rec.answered_at_ms, Some(T0 + 1_000));
        // dave never answers: only he gets call.missed, the call goes on.
        let step = r.poll_timeout(T0 + TIMEOUT);
        assert_eq!(
            step.outputs,
            vec![Output {
                to: Recipient::User("dave".into()),
                event: RingEvent::Missed {
                    call_cid: c.clone()
                }
            }]
        );
        assert!(step.end_sessions.is_empty());
        assert_eq!(
            r.accept(&c, "dave", "phone", T0 + TIMEOUT + 1),
            Err(RingError::Expired)
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn group_call_ends_when_the_last_leaves() {
        let mut r = Ringer::new();
        let c = group_call(&mut r);
        r.accept(&c, "bob", "phone", T0 + 1_000).unwrap();
        r.accept(&c, "carol", "web", T0 + 1_500).unwrap();
        assert!(r.leave(&c, "alice", T0 + 2_000).unwrap().is_empty());
        assert!(!r.is_busy("alice"));
        assert!(r.leave(&c, "bob", T0 + 3_000).unwrap().is_empty());
        assert_eq!(
            r.leave(&c, "bob", T0 + 3_001),
            Err(RingError::NotParticipant("bob".into()))
        );
        assert_eq!(r.call(&c).unwrap().participants, users(&["carol"]));
        // dave still rings; the last leaver ends the call and dave stops ringing.
        let step = r.leave(&c, "carol", T0 + 4_000).unwrap();
        assert_eq!(
            to_user(&step, "dave"),
            vec![&RingEvent::Ended {
                call_cid: c.clone(),
                ended_by: "carol".into()
            }]
        );
        let rec = last_record(&step);
        assert_eq!(rec.participants, users(&["alice", "bob", "carol"]));
        assert_eq!(rec.duration_ms, Some(3_000));
        assert_eq!(step.end_sessions, vec![c]);
        assert_idle(&r);
    }

    #[test]
    fn group_end_ends_for_everyone() {
        let mut r = Ringer::new();
        let c = group_call(&mut r);
        r.accept(&c, "bob", "phone", T0 + 1_000).unwrap();
        let step = r.end(&c, "bob", T0 + 2_000).unwrap();
        // alice is in the call, carol and dave still ring: all are told.
        for u in ["alice", "carol", "dave"] {
            assert_eq!(to_user(&step, u).len(), 1, "{u}");
        }
        assert!(to_user(&step, "bob").is_empty());
        assert_idle(&r);
    }

    #[test]
    fn group_rejected_by_everyone_is_over() {
        let mut r = Ringer::new();
        let c = group_call(&mut r);
        rejected(&mut r, &c, "bob", RejectReason::Declined, T0 + 1);
        let step = rejected(&mut r, &c, "carol", RejectReason::Declined, T0 + 2);
        assert!(step.records.is_empty(), "dave still rings");
        let step = rejected(&mut r, &c, "dave", RejectReason::Rejected, T0 + 3);
        assert_eq!(last_record(&step).outcome, RingOutcome::Rejected);
        assert_idle(&r);
    }

    #[test]
    fn group_partly_rejected_then_timed_out_is_missed() {
        let mut r = Ringer::new();
        let c = group_call(&mut r);
        rejected(&mut r, &c, "bob", RejectReason::Rejected, T0 + 1);
        let step = r.poll_timeout(T0 + TIMEOUT);
        assert_eq!(last_record(&step).outcome, RingOutcome::Missed);
        assert!(to_user(&step, "bob").is_empty());
        assert_eq!(to_user(&step, "carol").len(), 1);
        assert_eq!(to_user(&step, "alice").len(), 1);
        assert_idle(&r);
    }

    #[test]
    fn group_member_rejecting_during_an_active_call_does_not_end_it() {
        let mut r = Ringer::new();
        let c = group_call(&mut r);
        r.accept(&c, "bob", "phone", T0 + 1).unwrap();
        rejected(&mut r, &c, "carol", RejectReason::Rejected, T0 + 2);
        let step = rejected(&mut r, &c, "dave", RejectReason::Rejected, T0 + 3);
        assert_eq!(to_user(&step, "alice").len(), 1);
        assert_eq!(to_user(&step, "bob").len(), 1);
        assert!(step.end_sessions.is_empty());
        assert_eq!(r.next_deadline(), None);
        assert_eq!(r.call(&c).unwrap().phase, RingPhase::Active);
    }

    #[test]
    fn to_group_requires_membership() {
        let mut groups = Groups::new();
        groups.create("team", &users(&["alice", "bob"])).unwrap();
        let g = groups.get("team").unwrap();
        assert_eq!(
            InitiateRequest::to_group(cid("x"), "mallory", g, CallKind::Audio),
            Err(GroupError::NotMember {
                group_id: "team".into(),
                user_id: "mallory".into()
            })
        );
    }

    #[test]
    fn groups_registry() {
        let mut g = Groups::new();
        assert!(g.is_empty());
        g.create("team", &users(&["a", "b"])).unwrap();
        assert_eq!(
            g.create("team", &[]).unwrap_err(),
            GroupError::Exists("team".into())
        );
        assert!(matches!(
            g.create("bad id", &[]),
            Err(GroupError::InvalidId(_))
        ));
        assert!(matches!(
            g.create("ok", &users(&["bad user"])),
            Err(GroupError::InvalidId(_))
        ));
        assert!(g.get("ok").is_none(), "a failed create leaves nothing");
        let grp = g.add_members("team", &users(&["c", "a"])).unwrap();
        assert_eq!(grp.members.len(), 3);
        let grp = g.remove_members("team", &users(&["a", "zz"])).unwrap();
        assert_eq!(
            grp.members.iter().cloned().collect::<Vec<_>>(),
            users(&["b", "c"])
        );
        let too_many: Vec<String> = (0..=MAX_CALLEES).map(|i| format!("u{i}")).collect();
        assert_eq!(
            g.add_members("team", &too_many).unwrap_err(),
            GroupError::TooManyMembers
        );
        assert_eq!(
            g.get("team").unwrap().members.len(),
            2,
            "unchanged on error"
        );
        assert_eq!(
            g.add_members("nope", &[]).unwrap_err(),
            GroupError::NotFound("nope".into())
        );
        assert_eq!(g.delete("team").unwrap().id, "team");
        assert_eq!(g.len(), 0);
        assert_eq!(
            g.delete("team").unwrap_err(),
            GroupError::NotFound("team".into())
        );
    }

    // ---- video switch ----

    #[test]
    fn switch_to_video_needs_a_request_and_another_participant() {
        let (mut r, c) = one_to_one();
        assert_eq!(r.request_video(&c, "alice"), Err(RingError::NotActive));
        let accept = r.accept(&c, "bob", "phone", T0 + 1).unwrap();
        assert_eq!(last_record(&accept).kind, CallKind::Audio);
        assert_eq!(r.accept_video(&c, "bob"), Err(RingError::NoVideoRequest));
        let step = r.request_video(&c, "alice").unwrap();
        assert_eq!(
            step.outputs,
            vec![Output {
                to: Recipient::User("bob".into()),
                event: RingEvent::VideoRequested {
                    call_cid: c.clone(),
                    requested_by: "alice".into()
                }
            }]
        );
        assert_eq!(r.accept_video(&c, "alice"), Err(RingError::NoVideoRequest));
        assert_eq!(
            r.accept_video(&c, "carol"),
            Err(RingError::NotParticipant("carol".into()))
        );
        let step = r.accept_video(&c, "bob").unwrap();
        let switched = RingEvent::SwitchedToVideo {
            call_cid: c.clone(),
            requested_by: "alice".into(),
            accepted_by: "bob".into(),
        };
        assert_eq!(to_user(&step, "alice"), vec![&switched]);
        assert_eq!(to_user(&step, "bob"), vec![&switched]);
        assert_eq!(last_record(&step).kind, CallKind::Video);
        assert_eq!(r.call(&c).unwrap().kind, CallKind::Video);
        assert_eq!(r.request_video(&c, "bob"), Err(RingError::AlreadyVideo));
        let end = r.end(&c, "alice", T0 + 10).unwrap();
        assert_eq!(last_record(&end).kind, CallKind::Video);
    }

    // ---- devices ----

    #[test]
    fn a_device_connecting_while_rung_rings_with_the_time_left() {
        let (mut r, c) = one_to_one();
        let step = r.device_connected("bob", "watch", T0 + 5_000);
        assert_eq!(
            step.outputs,
            vec![Output {
                to: Recipient::Device {
                    user_id: "bob".into(),
                    device_id: "watch".into()
                },
                event: RingEvent::Ring {
                    call_cid: c.clone(),
                    caller_user_id: "alice".into(),
                    kind: CallKind::Audio,
                    members: users(&["bob"]),
                    group_id: None,
                    ring_timeout_ms: TIMEOUT - 5_000,
                }
            }]
        );
        assert!(r.device_connected("alice", "laptop", T0 + 5_000).is_empty());
        assert!(r.device_connected("bob", "watch", T0 + TIMEOUT).is_empty());
        r.accept(&c, "bob", "phone", T0 + 6_000).unwrap();
        assert!(r.device_connected("bob", "watch", T0 + 7_000).is_empty());
    }

    #[test]
    fn recipients_address_devices() {
        let u = Recipient::User("bob".into());
        let d = Recipient::Device {
            user_id: "bob".into(),
            device_id: "p".into(),
        };
        let x = Recipient::UserExceptDevice {
            user_id: "bob".into(),
            device_id: "p".into(),
        };
        assert!(u.includes("bob", "p") && u.includes("bob", "q") && !u.includes("al", "p"));
        assert!(d.includes("bob", "p") && !d.includes("bob", "q"));
        assert!(!x.includes("bob", "p") && x.includes("bob", "q") && !x.includes("al", "q"));
    }

    #[test]
    fn many_calls_time_out_in_deadline_order() {
        let mut r = Ringer::new();
        for i in 0..50u64 {
            let rq = req(
                &format!("c{i}"),
                &format!("caller{i}"),
                &[&format!("callee{i}")],
                CallKind::Audio,
            )
            .with_ring_timeout_ms(1_000 + (i * 37) % 500);
            r.initiate(rq, T0 + i).unwrap();
        }
        let mut last = 0;
        let mut missed = 0;
        while let Some(d) = r.next_deadline() {
            assert!(d >= last);
            last = d;
            let step = r.poll_timeout(d);
            assert!(!step.records.is_empty());
            missed += step.records.len();
        }
        assert_eq!(missed, 50);
        assert_idle(&r);
    }
}
