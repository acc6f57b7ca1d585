//! The call state machine: pure, no sockets, no clocks (time comes in as arguments).
//!
//! A [`Call`] holds members and their roles, joined participants, per-user grants and revokes,
//! mutes, blocks, backstage/live and ended flags. Every transition checks the actor's capability
//! and returns an [`Outcome`]: the events to deliver (already resolved to participant ids), the
//! media gates that changed, the publishers to tell to stop sending, and the participants to
//! remove. The server applies an outcome; tests inspect it.

use std::collections::{BTreeMap, BTreeSet};

use greenroom_proto::{
    CallCid, CallEvent, CallState, Capability, CapabilitySet, MediaGate, Member, MuteKinds,
    ParticipantInfo, Role, SourceSet, TrackInfo, TrackSource,
};

use crate::policy::CallTypePolicy;

/// Who performs an action: the identity from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The user id (`sub`).
    pub user_id: String,
    /// The global role from the token (default `user`).
    pub role: Role,
    /// A server-side token: every capability.
    pub admin: bool,
}

impl Actor {
    /// An ordinary user with a global role.
    pub fn user(user_id: &str, role: Role) -> Actor {
        Actor {
            user_id: user_id.to_owned(),
            role,
            admin: false,
        }
    }

    /// A server-side (admin) actor.
    pub fn server(user_id: &str) -> Actor {
        Actor {
            user_id: user_id.to_owned(),
            role: Role::Admin,
            admin: true,
        }
    }
}

/// Why a transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The actor lacks a capability.
    #[error("missing capability {0}")]
    MissingCapability(Capability),
    /// The user is blocked from the call.
    #[error("user {0} is blocked from this call")]
    Blocked(String),
    /// The call has ended.
    #[error("the call has ended")]
    Ended,
    /// The call is in backstage and the user may not join backstage.
    #[error("the call is in backstage; only join-backstage holders may join")]
    Backstage,
    /// A capability that may not be requested in this call type.
    #[error("{0} cannot be requested in this call type")]
    NotRequestable(Capability),
    /// No such participant session.
    #[error("unknown participant {0}")]
    UnknownParticipant(String),
    /// A request with nothing in it, or contradictory values.
    #[error("bad request: {0}")]
    BadRequest(String),
}

/// Where an event goes, resolved to participant session ids at emission time.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Receiving sessions.
    pub to: Vec<String>,
    /// The event.
    pub event: CallEvent,
}

/// What the server must do after a transition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Events to push.
    pub events: Vec<Delivery>,
    /// New media gates for participants whose gate changed.
    pub gates: Vec<(String, MediaGate)>,
    /// Publishers to tell to stop sending some sources, with the reason.
    pub stop_publishing: Vec<(String, Vec<TrackSource>, &'static str)>,
    /// Sessions removed from the call (their media must be torn down), with the reason.
    pub removed: Vec<(String, &'static str)>,
}

impl Outcome {
    /// Appends another outcome.
    pub fn merge(&mut self, other: Outcome) {
        self.events.extend(other.events);
        self.gates.extend(other.gates);
        self.stop_publishing.extend(other.stop_publishing);
        self.removed.extend(other.removed);
    }

    /// The events delivered to one session, in order (for tests and logging).
    pub fn events_for(&self, participant_id: &str) -> Vec<&CallEvent> {
        self.events
            .iter()
            .filter(|d| d.to.iter().any(|p| p == participant_id))
            .map(|d| &d.event)
            .collect()
    }
}

#[derive(Debug, Clone)]
struct Participant {
    user_id: String,
    global_role: Role,
    admin: bool,
    joined_at_ms: u64,
    published: SourceSet,
    gate: MediaGate,
    /// Sources forwarded if the call were live: for mute/unmute events.
    allowed: SourceSet,
    /// Display name given at join (validated by the caller).
    name: Option<String>,
    /// App data given at join (validated by the caller).
    custom: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default)]
struct UserOverrides {
    granted: CapabilitySet,
    revoked: CapabilitySet,
    muted: SourceSet,
}

/// One call.
#[derive(Debug, Clone)]
pub struct Call {
    cid: CallCid,
    policy: CallTypePolicy,
    created_by: String,
    created_at_ms: u64,
    settings: serde_json::Value,
    members: BTreeMap<String, Role>,
    participants: BTreeMap<String, Participant>,
    users: BTreeMap<String, UserOverrides>,
    blocked: BTreeSet<String>,
    pending_requests: BTreeMap<String, CapabilitySet>,
    live: bool,
    ended: bool,
}

impl Call {
    /// The policy of this call's type.
    pub fn policy(&self) -> &CallTypePolicy {
        &self.policy
    }

    /// Creates a call. The creator must hold `create-call` in this call type (checked here).
    pub fn create(
        cid: CallCid,
        policy: CallTypePolicy,
        creator: &Actor,
        members: Vec<Member>,
        settings: serde_json::Value,
        now_ms: u64,
    ) -> Result<Call, CallError> {
        let call = Call {
            cid,
            policy,
            created_by: creator.user_id.clone(),
            created_at_ms: now_ms,
            settings,
            members: members.into_iter().map(|m| (m.user_id, m.role)).collect(),
            participants: BTreeMap::new(),
            users: BTreeMap::new(),
            blocked: BTreeSet::new(),
            pending_requests: BTreeMap::new(),
            live: false,
            ended: false,
        };
        call.require(creator, Capability::CreateCall)?;
        Ok(call)
    }

    /// The call's cid.
    pub fn cid(&self) -> &CallCid {
        &self.cid
    }

    /// Whether the call has ended.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Whether the call is live.
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Number of joined sessions.
    pub fn participant_count(&self) -> usize {
        self.participants.len()
    }

    /// Adds or updates members (an existing call's get-or-create with members).
    pub fn upsert_members(
        &mut self,
        actor: &Actor,
        members: Vec<Member>,
    ) -> Result<Outcome, CallError> {
        if members.is_empty() {
            return Ok(Outcome::default());
        }
        self.require(actor, Capability::UpdateCall)?;
        for m in members {
            self.members.insert(m.user_id, m.role);
        }
        Ok(self.refresh_all())
    }

    /// The role that applies to a user in this call: the member role, else the global role.
    pub fn role_of(&self, user_id: &str, global_role: Role) -> Role {
        self.members.get(user_id).copied().unwrap_or(global_role)
    }

    /// The capabilities an actor holds in this call.
    pub fn capabilities(&self, actor: &Actor) -> CapabilitySet {
        self.caps(&actor.user_id, actor.role, actor.admin)
    }

    fn caps(&self, user_id: &str, global_role: Role, admin: bool) -> CapabilitySet {
        if admin {
            return CapabilitySet::all();
        }
        let base = self.policy.grants_of(self.role_of(user_id, global_role));
        match self.users.get(user_id) {
            Some(o) => base.union(o.granted).difference(o.revoked),
            None => base,
        }
    }

    /// What this call type lets participants request.
    pub fn requestable(&self) -> CapabilitySet {
        self.policy.requestable
    }

    fn require(&self, actor: &Actor, cap: Capability) -> Result<(), CallError> {
        if self.capabilities(actor).contains(cap) {
            Ok(())
        } else {
            Err(CallError::MissingCapability(cap))
        }
    }

    fn backstage(&self) -> bool {
        self.policy.backstage && !self.live
    }

    fn all_ids(&self) -> Vec<String> {
        self.participants.keys().cloned().collect()
    }

    fn sessions_of(&self, user_id: &str) -> Vec<String> {
        self.participants
            .iter()
            .filter(|(_, p)| p.user_id == user_id)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn holders_of(&self, cap: Capability) -> Vec<String> {
        self.participants
            .iter()
            .filter(|(_, p)| self.caps(&p.user_id, p.global_role, p.admin).contains(cap))
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn info(&self, id: &str, p: &Participant) -> ParticipantInfo {
        let muted = self
            .users
            .get(&p.user_id)
            .map(|o| o.muted)
            .unwrap_or_default();
        ParticipantInfo {
            participant_id: id.to_owned(),
            user_id: p.user_id.clone(),
            role: self.role_of(&p.user_id, p.global_role),
            joined_at_ms: p.joined_at_ms,
            published: p.published.iter().collect(),
            muted: p
                .published
                .iter()
                .filter(|s| muted.contains(*s) || !p.allowed.contains(*s))
                .collect(),
            name: p.name.clone(),
            custom: p.custom.clone(),
        }
    }

    /// A participant's public description.
    pub fn participant(&self, participant_id: &str) -> Option<ParticipantInfo> {
        self.participants
            .get(participant_id)
            .map(|p| self.info(participant_id, p))
    }

    /// A published track's description.
    pub fn track(&self, participant_id: &str, source: TrackSource) -> Option<TrackInfo> {
        let p = self.participants.get(participant_id)?;
        Some(TrackInfo {
            track_id: format!("{participant_id}:{source}"),
            participant_id: participant_id.to_owned(),
            user_id: p.user_id.clone(),
            source,
            muted: !p.gate.send.contains(source),
        })
    }

    /// The participant's current media gate.
    pub fn gate(&self, participant_id: &str) -> Option<MediaGate> {
        self.participants.get(participant_id).map(|p| p.gate)
    }

    /// The call's state as the API returns it.
    pub fn state(&self) -> CallState {
        CallState {
            cid: self.cid.clone(),
            call_type: self.cid.call_type,
            id: self.cid.id.clone(),
            created_by: self.created_by.clone(),
            created_at_ms: self.created_at_ms,
            backstage_enabled: self.policy.backstage,
            backstage: self.backstage(),
            live: self.live,
            ended: self.ended,
            members: self
                .members
                .iter()
                .map(|(u, r)| Member {
                    user_id: u.clone(),
                    role: *r,
                })
                .collect(),
            participants: self
                .participants
                .iter()
                .map(|(id, p)| self.info(id, p))
                .collect(),
            blocked_user_ids: self.blocked.iter().cloned().collect(),
            settings: self.settings.clone(),
        }
    }

    /// Sources a user may have forwarded if the call were live: capability held and not muted.
    fn allowed_sources(&self, user_id: &str, global_role: Role, admin: bool) -> SourceSet {
        let caps = self.caps(user_id, global_role, admin);
        let muted = self.users.get(user_id).map(|o| o.muted).unwrap_or_default();
        TrackSource::ALL
            .into_iter()
            .filter(|s| caps.contains(s.capability()) && !muted.contains(*s))
            .collect()
    }

    fn compute_gate(&self, p: &Participant) -> (MediaGate, SourceSet) {
        let allowed = self.allowed_sources(&p.user_id, p.global_role, p.admin);
        let on_stage = !self.backstage()
            || self
                .caps(&p.user_id, p.global_role, p.admin)
                .contains(Capability::JoinBackstage);
        let gate = MediaGate {
            send: if on_stage { allowed } else { SourceSet::EMPTY },
            receive: on_stage,
        };
        (gate, allowed)
    }

    /// Recomputes every participant's gate and derives gate updates, stop-publishing orders and
    /// mute/unmute events (`from` is who caused it).
    fn refresh(&mut self, from: Option<&str>) -> Outcome {
        let mut out = Outcome::default();
        let mut muted_by_user: BTreeMap<String, (BTreeSet<TrackSource>, &'static str)> =
            BTreeMap::new();
        let mut unmuted_by_user: BTreeMap<String, BTreeSet<TrackSource>> = BTreeMap::new();
        let ids = self.all_ids();
        for id in ids {
            let Some(p) = self.participants.get(&id) else {
                continue;
            };
            let (gate, allowed) = self.compute_gate(p);
            let (old_gate, old_allowed, published, user) =
                (p.gate, p.allowed, p.published, p.user_id.clone());
            let lost: Vec<TrackSource> = published
                .iter()
                .filter(|s| old_allowed.contains(*s) && !allowed.contains(*s))
                .collect();
            let regained: Vec<TrackSource> = published
                .iter()
                .filter(|s| !old_allowed.contains(*s) && allowed.contains(*s))
                .collect();
            if !lost.is_empty() {
                let muted = self.users.get(&user).map(|o| o.muted).unwrap_or_default();
                let reason = if lost.iter().all(|s| muted.contains(*s)) {
                    "muted_by_moderator"
                } else {
                    "permission_revoked"
                };
                out.stop_publishing.push((id.clone(), lost.clone(), reason));
                let e = muted_by_user
                    .entry(user.clone())
                    .or_insert((BTreeSet::new(), reason));
                e.0.extend(lost);
            }
            if !regained.is_empty() {
                unmuted_by_user.entry(user).or_default().extend(regained);
            }
            if gate != old_gate {
                out.gates.push((id.clone(), gate));
            }
            if let Some(p) = self.participants.get_mut(&id) {
                p.gate = gate;
                p.allowed = allowed;
            }
        }
        let everyone = self.all_ids();
        for (user, (sources, _)) in muted_by_user {
            out.events.push(Delivery {
                to: everyone.clone(),
                event: CallEvent::UserMuted {
                    call_cid: self.cid.clone(),
                    from_user_id: from.unwrap_or(&user).to_owned(),
                    muted_user_ids: vec![user],
                    sources: sources.into_iter().collect(),
                },
            });
        }
        for (user, sources) in unmuted_by_user {
            out.events.push(Delivery {
                to: everyone.clone(),
                event: CallEvent::UserUnmuted {
                    call_cid: self.cid.clone(),
                    user_id: user,
                    sources: sources.into_iter().collect(),
                },
            });
        }
        out
    }

    fn refresh_all(&mut self) -> Outcome {
        self.refresh(None)
    }

    fn broadcast(&self, out: &mut Outcome, event: CallEvent) {
        out.events.push(Delivery {
            to: self.all_ids(),
            event,
        });
    }

    /// A new session joins. Checks `join-call`, blocks, backstage and ended.
    pub fn join(
        &mut self,
        actor: &Actor,
        participant_id: &str,
        now_ms: u64,
    ) -> Result<(ParticipantInfo, Outcome), CallError> {
        self.join_with_profile(actor, participant_id, now_ms, None, None)
    }

    /// [`Call::join`] with a display name and app data (already validated by the caller), which
    /// `call.session_participant_joined` and every participant description carry.
    pub fn join_with_profile(
        &mut self,
        actor: &Actor,
        participant_id: &str,
        now_ms: u64,
        name: Option<String>,
        custom: Option<serde_json::Value>,
    ) -> Result<(ParticipantInfo, Outcome), CallError> {
        let caps = self.capabilities(actor);
        if self.blocked.contains(&actor.user_id) {
            return Err(CallError::Blocked(actor.user_id.clone()));
        }
        if self.ended && !caps.contains(Capability::JoinEndedCall) {
            return Err(CallError::Ended);
        }
        if !caps.contains(Capability::JoinCall) {
            return Err(CallError::MissingCapability(Capability::JoinCall));
        }
        if self.backstage() && !caps.contains(Capability::JoinBackstage) {
            return Err(CallError::Backstage);
        }
        let mut p = Participant {
            user_id: actor.user_id.clone(),
            global_role: actor.role,
            admin: actor.admin,
            joined_at_ms: now_ms,
            published: SourceSet::EMPTY,
            gate: MediaGate::default(),
            allowed: SourceSet::EMPTY,
            name,
            custom,
        };
        let (gate, allowed) = self.compute_gate(&p);
        p.gate = gate;
        p.allowed = allowed;
        let info = self.info(participant_id, &p);
        self.participants.insert(participant_id.to_owned(), p);
        let mut out = Outcome::default();
        out.gates.push((participant_id.to_owned(), gate));
        out.events.push(Delivery {
            to: self
                .all_ids()
                .into_iter()
                .filter(|id| id != participant_id)
                .collect(),
            event: CallEvent::ParticipantJoined {
                call_cid: self.cid.clone(),
                participant: info.clone(),
            },
        });
        Ok((info, out))
    }

    /// A joined session sends a reaction (`create-reaction`): `call.reaction` to everyone.
    pub fn send_reaction(
        &self,
        actor: &Actor,
        participant_id: &str,
        reaction: greenroom_proto::Reaction,
    ) -> Result<Outcome, CallError> {
        self.require(actor, Capability::CreateReaction)?;
        if !self.participants.contains_key(participant_id) {
            return Err(CallError::UnknownParticipant(participant_id.to_owned()));
        }
        let mut out = Outcome::default();
        self.broadcast(
            &mut out,
            CallEvent::Reaction {
                call_cid: self.cid.clone(),
                participant_id: participant_id.to_owned(),
                user_id: actor.user_id.clone(),
                reaction,
            },
        );
        Ok(out)
    }

    /// A joined session sends an app-defined event: `call.custom` to everyone.
    pub fn send_custom(
        &self,
        actor: &Actor,
        participant_id: &str,
        custom: serde_json::Value,
    ) -> Result<Outcome, CallError> {
        if !self.participants.contains_key(participant_id) {
            return Err(CallError::UnknownParticipant(participant_id.to_owned()));
        }
        let mut out = Outcome::default();
        self.broadcast(
            &mut out,
            CallEvent::Custom {
                call_cid: self.cid.clone(),
                participant_id: participant_id.to_owned(),
                user_id: actor.user_id.clone(),
                custom,
            },
        );
        Ok(out)
    }

    /// A session leaves (`reason`: left, disconnected, ...).
    pub fn leave(&mut self, participant_id: &str, reason: &'static str) -> Outcome {
        let mut out = Outcome::default();
        let Some(p) = self.participants.get(participant_id) else {
            return out;
        };
        let info = self.info(participant_id, p);
        self.participants.remove(participant_id);
        out.removed.push((participant_id.to_owned(), reason));
        let mut to = self.all_ids();
        to.push(participant_id.to_owned());
        out.events.push(Delivery {
            to,
            event: CallEvent::ParticipantLeft {
                call_cid: self.cid.clone(),
                participant: info,
                reason: reason.to_owned(),
            },
        });
        out
    }

    /// Checks that a session may publish a source: returns the missing capability otherwise.
    pub fn check_publish(
        &self,
        participant_id: &str,
        source: TrackSource,
    ) -> Result<(), CallError> {
        let p = self
            .participants
            .get(participant_id)
            .ok_or_else(|| CallError::UnknownParticipant(participant_id.to_owned()))?;
        let cap = source.capability();
        if self.caps(&p.user_id, p.global_role, p.admin).contains(cap) {
            Ok(())
        } else {
            Err(CallError::MissingCapability(cap))
        }
    }

    /// Records the sources a session publishes now (after a successful publish).
    pub fn set_published(
        &mut self,
        participant_id: &str,
        sources: SourceSet,
    ) -> Result<Outcome, CallError> {
        let p = self
            .participants
            .get_mut(participant_id)
            .ok_or_else(|| CallError::UnknownParticipant(participant_id.to_owned()))?;
        let old = p.published;
        p.published = sources;
        let mut out = Outcome::default();
        for s in TrackSource::ALL {
            let was = old.contains(s);
            let is = sources.contains(s);
            if was == is {
                continue;
            }
            if let Some(track) = self.track(participant_id, s) {
                let event = if is {
                    CallEvent::TrackPublished {
                        call_cid: self.cid.clone(),
                        track,
                    }
                } else {
                    CallEvent::TrackUnpublished {
                        call_cid: self.cid.clone(),
                        track,
                    }
                };
                self.broadcast(&mut out, event);
            }
        }
        Ok(out)
    }

    /// A participant asks for capabilities; holders of `update-call-permissions` are told.
    pub fn request_permission(
        &mut self,
        actor: &Actor,
        permissions: &[Capability],
    ) -> Result<Outcome, CallError> {
        if permissions.is_empty() {
            return Err(CallError::BadRequest("permissions is empty".into()));
        }
        if self.blocked.contains(&actor.user_id) {
            return Err(CallError::Blocked(actor.user_id.clone()));
        }
        if let Some(c) = permissions
            .iter()
            .find(|c| !self.policy.requestable.contains(**c))
        {
            return Err(CallError::NotRequestable(*c));
        }
        let asked: CapabilitySet = permissions.iter().copied().collect();
        *self
            .pending_requests
            .entry(actor.user_id.clone())
            .or_default() = asked;
        let mut out = Outcome::default();
        out.events.push(Delivery {
            to: self.holders_of(Capability::UpdateCallPermissions),
            event: CallEvent::PermissionRequest {
                call_cid: self.cid.clone(),
                user_id: actor.user_id.clone(),
                permissions: asked.to_vec(),
            },
        });
        Ok(out)
    }

    /// Pending permission requests by user.
    pub fn pending_requests(&self) -> &BTreeMap<String, CapabilitySet> {
        &self.pending_requests
    }

    /// Grants and revokes capabilities of a user (`update-call-permissions`).
    pub fn update_permissions(
        &mut self,
        actor: &Actor,
        user_id: &str,
        grant: &[Capability],
        revoke: &[Capability],
    ) -> Result<Outcome, CallError> {
        self.require(actor, Capability::UpdateCallPermissions)?;
        if grant.is_empty() && revoke.is_empty() {
            return Err(CallError::BadRequest(
                "grant_permissions and revoke_permissions are both empty".into(),
            ));
        }
        if let Some(c) = grant.iter().find(|c| revoke.contains(c)) {
            return Err(CallError::BadRequest(format!(
                "{c} is both granted and revoked"
            )));
        }
        let o = self.users.entry(user_id.to_owned()).or_default();
        for c in grant {
            o.granted = o.granted.with(*c);
            o.revoked = o.revoked.without(*c);
        }
        for c in revoke {
            o.revoked = o.revoked.with(*c);
            o.granted = o.granted.without(*c);
        }
        if let Some(pending) = self.pending_requests.get_mut(user_id) {
            *pending = pending.difference(grant.iter().copied().collect());
            if pending.is_empty() {
                self.pending_requests.remove(user_id);
            }
        }
        let mut out = self.refresh(Some(&actor.user_id));
        // Tell the affected user's sessions their new capabilities (per session: the global
        // role of each session's token may differ).
        for id in self.sessions_of(user_id) {
            if let Some(p) = self.participants.get(&id) {
                out.events.push(Delivery {
                    to: vec![id.clone()],
                    event: CallEvent::PermissionsUpdated {
                        call_cid: self.cid.clone(),
                        user_id: user_id.to_owned(),
                        own_capabilities: self.caps(&p.user_id, p.global_role, p.admin),
                    },
                });
            }
        }
        Ok(out)
    }

    /// Goes live (`update-call`): everyone joins and exchanges media.
    pub fn go_live(&mut self, actor: &Actor) -> Result<Outcome, CallError> {
        self.require(actor, Capability::UpdateCall)?;
        if self.ended {
            return Err(CallError::Ended);
        }
        let mut out = Outcome::default();
        if self.live {
            return Ok(out);
        }
        self.live = true;
        out.merge(self.refresh(Some(&actor.user_id)));
        self.broadcast(
            &mut out,
            CallEvent::LiveStarted {
                call_cid: self.cid.clone(),
            },
        );
        Ok(out)
    }

    /// Stops live (`update-call`): back to backstage where the call type has it.
    pub fn stop_live(&mut self, actor: &Actor) -> Result<Outcome, CallError> {
        self.require(actor, Capability::UpdateCall)?;
        let mut out = Outcome::default();
        if !self.live {
            return Ok(out);
        }
        self.live = false;
        out.merge(self.refresh(Some(&actor.user_id)));
        self.broadcast(
            &mut out,
            CallEvent::LiveStopped {
                call_cid: self.cid.clone(),
            },
        );
        Ok(out)
    }

    /// Mutes users (`mute-users`): the listed ones, or everyone but the actor.
    pub fn mute_users(
        &mut self,
        actor: &Actor,
        user_ids: &[String],
        all: bool,
        kinds: MuteKinds,
    ) -> Result<Outcome, CallError> {
        self.require(actor, Capability::MuteUsers)?;
        if kinds.is_empty() {
            return Err(CallError::BadRequest(
                "nothing to mute: set audio, video or screenshare".into(),
            ));
        }
        if !all && user_ids.is_empty() {
            return Err(CallError::BadRequest(
                "user_ids is empty and mute_all_users is false".into(),
            ));
        }
        let targets: BTreeSet<String> = if all {
            self.participants
                .values()
                .map(|p| p.user_id.clone())
                .filter(|u| *u != actor.user_id)
                .collect()
        } else {
            user_ids.iter().cloned().collect()
        };
        let sources: Vec<TrackSource> = TrackSource::ALL
            .into_iter()
            .filter(|s| kinds.covers(*s))
            .collect();
        for u in &targets {
            let o = self.users.entry(u.clone()).or_default();
            for s in &sources {
                o.muted = o.muted.with(*s);
            }
        }
        let mut out = self.refresh(Some(&actor.user_id));
        // Users with nothing published still learn they are muted (their UI shows it).
        let reported: BTreeSet<String> = out
            .events
            .iter()
            .filter_map(|d| match &d.event {
                CallEvent::UserMuted { muted_user_ids, .. } => muted_user_ids.first().cloned(),
                _ => None,
            })
            .collect();
        let rest: Vec<String> = targets.difference(&reported).cloned().collect();
        if !rest.is_empty() {
            self.broadcast(
                &mut out,
                CallEvent::UserMuted {
                    call_cid: self.cid.clone(),
                    from_user_id: actor.user_id.clone(),
                    muted_user_ids: rest,
                    sources,
                },
            );
        }
        Ok(out)
    }

    /// A session mutes or unmutes one of its own sources. Unmuting needs the source's capability.
    pub fn set_self_muted(
        &mut self,
        participant_id: &str,
        source: TrackSource,
        muted: bool,
    ) -> Result<Outcome, CallError> {
        let p = self
            .participants
            .get(participant_id)
            .ok_or_else(|| CallError::UnknownParticipant(participant_id.to_owned()))?;
        let user = p.user_id.clone();
        if !muted
            && !self
                .caps(&user, p.global_role, p.admin)
                .contains(source.capability())
        {
            return Err(CallError::MissingCapability(source.capability()));
        }
        let o = self.users.entry(user.clone()).or_default();
        o.muted = if muted {
            o.muted.with(source)
        } else {
            o.muted.without(source)
        };
        let mut out = self.refresh(Some(&user));
        // A self-mute needs no stop order: the client did it.
        out.stop_publishing.clear();
        Ok(out)
    }

    fn remove_user(&mut self, user_id: &str, reason: &'static str) -> Outcome {
        let mut out = Outcome::default();
        for id in self.sessions_of(user_id) {
            out.merge(self.leave(&id, reason));
        }
        out
    }

    /// Kicks a user's sessions out (`kick-user`); they may join again.
    pub fn kick(&mut self, actor: &Actor, user_id: &str) -> Result<Outcome, CallError> {
        self.require(actor, Capability::KickUser)?;
        let mut out = Outcome::default();
        self.broadcast(
            &mut out,
            CallEvent::KickedUser {
                call_cid: self.cid.clone(),
                user_id: user_id.to_owned(),
                kicked_by: actor.user_id.clone(),
            },
        );
        out.merge(self.remove_user(user_id, "kicked"));
        Ok(out)
    }

    /// Blocks a user (`block-users`): removed now, refused on join until unblocked.
    pub fn block(&mut self, actor: &Actor, user_id: &str) -> Result<Outcome, CallError> {
        self.require(actor, Capability::BlockUsers)?;
        self.blocked.insert(user_id.to_owned());
        let mut out = Outcome::default();
        self.broadcast(
            &mut out,
            CallEvent::BlockedUser {
                call_cid: self.cid.clone(),
                user_id: user_id.to_owned(),
                blocked_by: actor.user_id.clone(),
            },
        );
        out.merge(self.remove_user(user_id, "blocked"));
        Ok(out)
    }

    /// Unblocks a user (`block-users`).
    pub fn unblock(&mut self, actor: &Actor, user_id: &str) -> Result<Outcome, CallError> {
        self.require(actor, Capability::BlockUsers)?;
        self.blocked.remove(user_id);
        let mut out = Outcome::default();
        self.broadcast(
            &mut out,
            CallEvent::UnblockedUser {
                call_cid: self.cid.clone(),
                user_id: user_id.to_owned(),
                unblocked_by: actor.user_id.clone(),
            },
        );
        Ok(out)
    }

    /// Ends the call for everyone (`end-call`).
    pub fn end(&mut self, actor: &Actor) -> Result<Outcome, CallError> {
        self.require(actor, Capability::EndCall)?;
        let mut out = Outcome::default();
        if self.ended {
            return Ok(out);
        }
        self.ended = true;
        self.live = false;
        self.broadcast(
            &mut out,
            CallEvent::Ended {
                call_cid: self.cid.clone(),
                ended_by: actor.user_id.clone(),
            },
        );
        for id in self.all_ids() {
            out.merge(self.leave(&id, "call_ended"));
        }
        Ok(out)
    }

    /// Whether a user is blocked.
    pub fn is_blocked(&self, user_id: &str) -> bool {
        self.blocked.contains(user_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use greenroom_proto::CallType;

    fn call(t: CallType) -> Call {
        let policy = Policy::default().of(t).clone();
        Call::create(
            CallCid::new(t, "c1").unwrap(),
            policy,
            &Actor::server("srv"),
            vec![Member {
                user_id: "host".into(),
                role: Role::Host,
            }],
            serde_json::Value::Null,
            0,
        )
        .unwrap()
    }

    fn host() -> Actor {
        Actor::user("host", Role::User)
    }

    #[test]
    fn audio_room_backstage_admits_only_backstage_holders() {
        let mut c = call(CallType::AudioRoom);
        assert_eq!(
            c.join(&Actor::user("l", Role::User), "p-l", 1).unwrap_err(),
            CallError::Backstage
        );
        let (_, out) = c.join(&host(), "p-h", 1).unwrap();
        assert_eq!(
            out.gates[0].1.send,
            SourceSet::EMPTY.with(TrackSource::Microphone)
        );
        assert!(out.gates[0].1.receive);
        let out = c.go_live(&host()).unwrap();
        assert!(matches!(
            out.events.last().unwrap().event,
            CallEvent::LiveStarted { .. }
        ));
        let (_, _) = c.join(&Actor::user("l", Role::User), "p-l", 2).unwrap();
        assert_eq!(c.gate("p-l").unwrap().send, SourceSet::EMPTY);
        assert!(c.gate("p-l").unwrap().receive);
    }

    #[test]
    fn grant_then_revoke_moves_the_gate_and_tells_the_user() {
        let mut c = call(CallType::AudioRoom);
        c.join(&host(), "p-h", 1).unwrap();
        c.go_live(&host()).unwrap();
        let l = Actor::user("l", Role::User);
        c.join(&l, "p-l", 2).unwrap();
        let out = c.request_permission(&l, &[Capability::SendAudio]).unwrap();
        assert_eq!(out.events[0].to, vec!["p-h".to_string()]);
        assert!(c.check_publish("p-l", TrackSource::Microphone).is_err());
        let out = c
            .update_permissions(&host(), "l", &[Capability::SendAudio], &[])
            .unwrap();
        assert!(c.pending_requests().is_empty());
        assert!(out
            .gates
            .iter()
            .any(|(id, g)| id == "p-l" && g.send.contains(TrackSource::Microphone)));
        match out.events_for("p-l").last().unwrap() {
            CallEvent::PermissionsUpdated {
                own_capabilities, ..
            } => {
                assert!(own_capabilities.contains(Capability::SendAudio))
            }
            e => panic!("unexpected {e:?}"),
        }
        c.check_publish("p-l", TrackSource::Microphone).unwrap();
        c.set_published("p-l", SourceSet::EMPTY.with(TrackSource::Microphone))
            .unwrap();
        let out = c
            .update_permissions(&host(), "l", &[], &[Capability::SendAudio])
            .unwrap();
        assert_eq!(
            out.stop_publishing,
            vec![(
                "p-l".to_string(),
                vec![TrackSource::Microphone],
                "permission_revoked"
            )]
        );
        assert!(out
            .events_for("p-h")
            .iter()
            .any(|e| matches!(e, CallEvent::UserMuted { .. })));
        assert_eq!(c.gate("p-l").unwrap().send, SourceSet::EMPTY);
        // Cannot unmute until granted again.
        assert_eq!(
            c.set_self_muted("p-l", TrackSource::Microphone, false)
                .unwrap_err(),
            CallError::MissingCapability(Capability::SendAudio)
        );
    }

    #[test]
    fn server_mute_stops_forwarding_and_self_unmute_resumes() {
        let mut c = call(CallType::Default);
        c.join(&host(), "p-h", 1).unwrap();
        let u = Actor::user("u", Role::User);
        c.join(&u, "p-u", 1).unwrap();
        c.set_published("p-u", SourceSet::ALL.without(TrackSource::ScreenShareAudio))
            .unwrap();
        let kinds = MuteKinds {
            audio: true,
            ..Default::default()
        };
        assert_eq!(
            c.mute_users(&u, &["host".into()], false, kinds)
                .unwrap_err(),
            CallError::MissingCapability(Capability::MuteUsers)
        );
        let out = c.mute_users(&host(), &[], true, kinds).unwrap();
        assert_eq!(out.stop_publishing[0].2, "muted_by_moderator");
        let g = c.gate("p-u").unwrap();
        assert!(!g.send.contains(TrackSource::Microphone));
        assert!(g.send.contains(TrackSource::Camera));
        // The host muted everyone but itself.
        assert!(c
            .gate("p-h")
            .unwrap()
            .send
            .contains(TrackSource::Microphone));
        let out = c
            .set_self_muted("p-u", TrackSource::Microphone, false)
            .unwrap();
        assert!(out
            .events
            .iter()
            .any(|d| matches!(d.event, CallEvent::UserUnmuted { .. })));
        assert!(c
            .gate("p-u")
            .unwrap()
            .send
            .contains(TrackSource::Microphone));
    }

    #[test]
    fn kick_block_and_end() {
        let mut c = call(CallType::Default);
        c.join(&host(), "p-h", 1).unwrap();
        let u = Actor::user("u", Role::User);
        c.join(&u, "p-u", 1).unwrap();
        let out = c.kick(&host(), "u").unwrap();
        assert_eq!(out.removed, vec![("p-u".to_string(), "kicked")]);
        assert!(out
            .events_for("p-u")
            .iter()
            .any(|e| matches!(e, CallEvent::KickedUser { .. })));
        c.join(&u, "p-u2", 2).unwrap();
        let out = c.block(&host(), "u").unwrap();
        assert_eq!(out.removed, vec![("p-u2".to_string(), "blocked")]);
        assert!(matches!(c.join(&u, "p-u3", 3), Err(CallError::Blocked(_))));
        c.unblock(&host(), "u").unwrap();
        c.join(&u, "p-u3", 3).unwrap();
        assert_eq!(
            c.end(&u).unwrap_err(),
            CallError::MissingCapability(Capability::EndCall)
        );
        let out = c.end(&host()).unwrap();
        assert_eq!(out.removed.len(), 2);
        assert_eq!(c.participant_count(), 0);
        assert_eq!(c.join(&u, "p-u4", 4).unwrap_err(), CallError::Ended);
        c.join(&Actor::user("adm", Role::Admin), "p-a", 5).unwrap();
    }
}
