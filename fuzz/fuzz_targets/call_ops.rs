//! The call state machine (`greenroom_fuzz::call::Call`) driven by arbitrary operation
//! sequences, with its invariants checked after every step.
//!
//! Invariants:
//! - nothing panics; a refused operation changes nothing;
//! - an operation that needs a capability is refused with exactly that missing capability when
//!   the actor lacks it;
//! - every participant's media gate sends only sources whose capability the participant holds,
//!   never a muted one, and nothing at all (nor receives) while held in backstage;
//! - an ended call is not live, and ending it removes every participant; kicked and blocked users
//!   have no session left, and a blocked user cannot join;
//! - every event names this call and goes only to sessions that were or are in it; the gates an
//!   outcome reports are the gates now in force; removed sessions are gone; a stop-publishing
//!   order names only sources the gate no longer forwards.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::Arbitrary;
use greenroom_fuzz::call::{Actor, Call, CallError, Outcome};
use greenroom_fuzz::policy::Policy;
use greenroom_proto::{
    CallCid, CallType, Capability, Member, MuteKinds, Role, SourceSet, TrackSource,
};
use libfuzzer_sys::fuzz_target;

/// The user ids the fuzzer picks from (a small pool so that operations meet).
const USERS: [&str; 5] = ["u0", "u1", "u2", "u3", "u4"];

/// An actor: a user of the pool, the global role of its token, and rarely a server token.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct ActorSel {
    user: u8,
    role: u8,
    /// A server (admin) token when `kind % 8 == 0`.
    kind: u8,
}

impl ActorSel {
    fn actor(self) -> Actor {
        let user = user(self.user);
        if self.kind.is_multiple_of(8) {
            Actor::server(user)
        } else {
            Actor::user(user, role(self.role))
        }
    }
}

fn user(i: u8) -> &'static str {
    USERS[usize::from(i) % USERS.len()]
}

fn role(i: u8) -> Role {
    Role::ALL[usize::from(i) % Role::ALL.len()]
}

fn cap(i: u8) -> Capability {
    Capability::ALL[usize::from(i) % Capability::ALL.len()]
}

fn source(i: u8) -> TrackSource {
    TrackSource::ALL[usize::from(i) % TrackSource::ALL.len()]
}

fn sources(bits: u8) -> SourceSet {
    TrackSource::ALL
        .into_iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, s)| s)
        .collect()
}

fn members(list: &[(u8, u8)]) -> Vec<Member> {
    list.iter()
        .map(|(u, r)| Member {
            user_id: user(*u).to_owned(),
            role: role(*r),
        })
        .collect()
}

/// One operation. Sessions are picked by index among the joined ones; an index past them names
/// a session that does not exist.
#[derive(Arbitrary, Debug)]
enum Op {
    Join {
        actor: ActorSel,
        now_ms: u16,
    },
    Leave {
        session: u8,
    },
    SetPublished {
        session: u8,
        sources: u8,
    },
    CheckPublish {
        session: u8,
        source: u8,
    },
    RequestPermission {
        actor: ActorSel,
        caps: Vec<u8>,
    },
    UpdatePermissions {
        actor: ActorSel,
        user: u8,
        grant: Vec<u8>,
        revoke: Vec<u8>,
    },
    UpsertMembers {
        actor: ActorSel,
        members: Vec<(u8, u8)>,
    },
    GoLive {
        actor: ActorSel,
    },
    StopLive {
        actor: ActorSel,
    },
    MuteUsers {
        actor: ActorSel,
        users: Vec<u8>,
        all: bool,
        kinds: u8,
    },
    SetSelfMuted {
        session: u8,
        source: u8,
        muted: bool,
    },
    Kick {
        actor: ActorSel,
        user: u8,
    },
    Block {
        actor: ActorSel,
        user: u8,
    },
    Unblock {
        actor: ActorSel,
        user: u8,
    },
    End {
        actor: ActorSel,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    call_type: u8,
    creator: ActorSel,
    members: Vec<(u8, u8)>,
    ops: Vec<Op>,
}

/// The fuzzer's view of the joined sessions: id → the actor whose token joined it.
type Sessions = BTreeMap<String, Actor>;

fn pick(sessions: &Sessions, i: u8) -> String {
    let i = usize::from(i);
    sessions
        .keys()
        .nth(i % (sessions.len() + 1))
        .cloned()
        .unwrap_or_else(|| "p-none".to_owned())
}

/// The capability an operation needs, checked before it runs.
fn expect_capability<T: std::fmt::Debug>(
    call_before: &Call,
    actor: &Actor,
    cap: Capability,
    r: &Result<T, CallError>,
) {
    let has = call_before.capabilities(actor).contains(cap);
    match r {
        Err(CallError::MissingCapability(c)) if *c == cap => {
            assert!(!has, "refused for missing {cap} that {actor:?} holds")
        }
        _ => assert!(has, "{actor:?} lacks {cap} but got {r:?}"),
    }
}

fn check_outcome(call: &Call, out: &Outcome, before: &BTreeSet<String>, sessions: &Sessions) {
    let cid = call.cid().to_string();
    for d in &out.events {
        let v = serde_json::to_value(&d.event).expect("events serialize");
        assert_eq!(v["call_cid"], cid.as_str(), "event for another call: {d:?}");
        for to in &d.to {
            assert!(
                before.contains(to) || sessions.contains_key(to),
                "event to unknown session {to}: {d:?}"
            );
        }
    }
    let mut last_gate = BTreeMap::new();
    for (id, g) in &out.gates {
        last_gate.insert(id, *g);
    }
    for (id, g) in last_gate {
        if let Some(now) = call.gate(id) {
            assert_eq!(now, g, "outcome gate for {id} is not the gate in force");
        }
    }
    for (id, _) in &out.removed {
        assert!(
            call.gate(id).is_none(),
            "removed session {id} still in the call"
        );
    }
    for (id, srcs, _) in &out.stop_publishing {
        if let Some(g) = call.gate(id) {
            for s in srcs {
                assert!(
                    !g.send.contains(*s),
                    "stop order for {s} still forwarded for {id}"
                );
            }
        }
    }
}

fn check_call(call: &Call, sessions: &Sessions) {
    let state = call.state();
    serde_json::to_string(&state).expect("the call state serializes");
    assert_eq!(call.participant_count(), sessions.len());
    assert_eq!(state.participants.len(), sessions.len());
    assert_eq!(state.backstage, call.policy().backstage && !call.is_live());
    assert!(
        !(call.is_ended() && call.is_live()),
        "an ended call is live"
    );
    for (id, actor) in sessions {
        let gate = call.gate(id).expect("a joined session has a gate");
        let caps = call.capabilities(actor);
        for s in gate.send.iter() {
            assert!(
                caps.contains(s.capability()),
                "{id} forwards {s} without {}",
                s.capability()
            );
        }
        if state.backstage && !caps.contains(Capability::JoinBackstage) {
            assert!(
                gate.send == SourceSet::EMPTY && !gate.receive,
                "{id} on stage in backstage"
            );
        } else {
            assert!(gate.receive, "{id} does not receive on stage");
        }
        let info = call.participant(id).expect("a joined session has info");
        assert_eq!(info.user_id, actor.user_id);
        for s in &info.muted {
            assert!(
                info.published.contains(s),
                "{id}: muted {s} is not published"
            );
            assert!(!gate.send.contains(*s), "{id}: muted {s} is forwarded");
        }
        assert!(
            !call.is_blocked(&actor.user_id),
            "blocked {} has a session",
            actor.user_id
        );
    }
}

fuzz_target!(|input: Input| {
    let t = CallType::ALL[usize::from(input.call_type) % CallType::ALL.len()];
    let policy = Policy::default().of(t).clone();
    let cid = CallCid::new(t, "fuzz").expect("a valid id");
    let creator = input.creator.actor();
    let Ok(mut call) = Call::create(
        cid,
        policy,
        &creator,
        members(&input.members),
        serde_json::Value::Null,
        0,
    ) else {
        return;
    };
    let mut sessions = Sessions::new();
    let mut next_session = 0u32;
    for op in input.ops.iter().take(64) {
        let snapshot = format!("{call:?}");
        let frozen = call.clone();
        let before: BTreeSet<String> = sessions.keys().cloned().collect();
        let was_ended = call.is_ended();
        let result: Result<Outcome, CallError> = match op {
            Op::Join { actor, now_ms } => {
                let a = actor.actor();
                let id = format!("p{next_session}");
                next_session += 1;
                let blocked = call.is_blocked(&a.user_id);
                let r = call.join(&a, &id, u64::from(*now_ms));
                if blocked {
                    assert!(
                        matches!(r, Err(CallError::Blocked(_))),
                        "blocked user joined"
                    );
                }
                match r {
                    Ok((info, out)) => {
                        assert_eq!(info.participant_id, id);
                        assert_eq!(
                            out.gates,
                            vec![(id.clone(), call.gate(&id).expect("joined"))]
                        );
                        sessions.insert(id, a);
                        Ok(out)
                    }
                    Err(e) => Err(e),
                }
            }
            Op::Leave { session } => {
                let id = pick(&sessions, *session);
                let out = call.leave(&id, "left");
                assert_eq!(out.removed.len(), usize::from(sessions.contains_key(&id)));
                Ok(out)
            }
            Op::SetPublished {
                session,
                sources: bits,
            } => {
                let id = pick(&sessions, *session);
                call.set_published(&id, sources(*bits))
            }
            Op::CheckPublish { session, source: s } => {
                let id = pick(&sessions, *session);
                let r = call.check_publish(&id, source(*s));
                if let Some(a) = sessions.get(&id) {
                    let has = call.capabilities(a).contains(source(*s).capability());
                    assert_eq!(r.is_ok(), has, "check_publish disagrees with capabilities");
                }
                r.map(|()| Outcome::default())
            }
            Op::RequestPermission { actor, caps } => {
                let caps: Vec<Capability> = caps.iter().take(8).map(|c| cap(*c)).collect();
                call.request_permission(&actor.actor(), &caps)
            }
            Op::UpdatePermissions {
                actor,
                user: u,
                grant,
                revoke,
            } => {
                let a = actor.actor();
                let grant: Vec<Capability> = grant.iter().take(8).map(|c| cap(*c)).collect();
                let revoke: Vec<Capability> = revoke.iter().take(8).map(|c| cap(*c)).collect();
                let r = call.update_permissions(&a, user(*u), &grant, &revoke);
                expect_capability(&frozen, &a, Capability::UpdateCallPermissions, &r);
                r
            }
            Op::UpsertMembers { actor, members: m } => {
                let a = actor.actor();
                let list = members(&m[..m.len().min(8)]);
                let empty = list.is_empty();
                let r = call.upsert_members(&a, list);
                if !empty {
                    expect_capability(&frozen, &a, Capability::UpdateCall, &r);
                }
                r
            }
            Op::GoLive { actor } => {
                let a = actor.actor();
                let r = call.go_live(&a);
                expect_capability(&frozen, &a, Capability::UpdateCall, &r);
                r
            }
            Op::StopLive { actor } => {
                let a = actor.actor();
                let r = call.stop_live(&a);
                expect_capability(&frozen, &a, Capability::UpdateCall, &r);
                r
            }
            Op::MuteUsers {
                actor,
                users,
                all,
                kinds,
            } => {
                let a = actor.actor();
                let ids: Vec<String> = users.iter().take(8).map(|u| user(*u).to_owned()).collect();
                let kinds = MuteKinds {
                    audio: kinds & 1 != 0,
                    video: kinds & 2 != 0,
                    screenshare: kinds & 4 != 0,
                };
                let r = call.mute_users(&a, &ids, *all, kinds);
                expect_capability(&frozen, &a, Capability::MuteUsers, &r);
                if r.is_ok() {
                    // Every targeted session forwards none of the muted sources now.
                    for (id, who) in &sessions {
                        let targeted = if *all {
                            who.user_id != a.user_id
                        } else {
                            ids.contains(&who.user_id)
                        };
                        if targeted {
                            let g = call.gate(id).expect("joined");
                            for s in TrackSource::ALL.into_iter().filter(|s| kinds.covers(*s)) {
                                assert!(!g.send.contains(s), "muted {s} still forwarded for {id}");
                            }
                        }
                    }
                }
                r
            }
            Op::SetSelfMuted {
                session,
                source: s,
                muted,
            } => {
                let id = pick(&sessions, *session);
                let r = call.set_self_muted(&id, source(*s), *muted);
                if r.is_ok() && *muted {
                    let g = call.gate(&id).expect("joined");
                    assert!(!g.send.contains(source(*s)), "self-muted source forwarded");
                }
                r
            }
            Op::Kick { actor, user: u } => {
                let a = actor.actor();
                let r = call.kick(&a, user(*u));
                expect_capability(&frozen, &a, Capability::KickUser, &r);
                r
            }
            Op::Block { actor, user: u } => {
                let a = actor.actor();
                let r = call.block(&a, user(*u));
                expect_capability(&frozen, &a, Capability::BlockUsers, &r);
                if r.is_ok() {
                    assert!(call.is_blocked(user(*u)));
                }
                r
            }
            Op::Unblock { actor, user: u } => {
                let a = actor.actor();
                let r = call.unblock(&a, user(*u));
                expect_capability(&frozen, &a, Capability::BlockUsers, &r);
                if r.is_ok() {
                    assert!(!call.is_blocked(user(*u)));
                }
                r
            }
            Op::End { actor } => {
                let a = actor.actor();
                let r = call.end(&a);
                expect_capability(&frozen, &a, Capability::EndCall, &r);
                if r.is_ok() {
                    assert!(call.is_ended());
                    if !was_ended {
                        assert_eq!(
                            call.participant_count(),
                            0,
                            "an ended call has participants"
                        );
                    }
                }
                r
            }
        };
        match &result {
            Ok(out) => {
                for (id, _) in &out.removed {
                    sessions.remove(id);
                }
                // Kicked and blocked users are gone.
                if let Op::Kick { user: u, .. } | Op::Block { user: u, .. } = op {
                    assert!(
                        sessions.values().all(|a| a.user_id != user(*u)),
                        "a kicked or blocked user still has a session"
                    );
                }
                check_outcome(&call, out, &before, &sessions);
            }
            Err(e) => {
                assert_eq!(
                    format!("{call:?}"),
                    snapshot,
                    "refused operation ({e}) changed the call"
                );
            }
        }
        check_call(&call, &sessions);
    }
});
