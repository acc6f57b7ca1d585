//! The ringing state machine (`greenroom_fuzz::ring::Ringer`) driven by arbitrary operation
//! sequences on a few calls, users and devices, with a clock that only moves forward.
//!
//! Invariants:
//! - nothing panics; a refused action changes nothing;
//! - a ringing (one `session_id`) has at most one outcome: no record follows its final record,
//!   and once accepted every later record says accepted;
//! - an accepted call stops ringing the accepting user's other devices (not the accepting one);
//! - after `poll_timeout(now)` no call rings past its deadline and no deadline at or before `now`
//!   is pending;
//! - every participant of a live call is engaged in it (busy), and every engagement names a live
//!   call the user is in;
//! - events name the call acted on (or, for timeouts, a call that was live); calls whose media
//!   must end are gone from the ringer and have a final record.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::Arbitrary;
use greenroom_fuzz::ring::{InitiateRequest, Recipient, RingError, Ringer, Step};
use greenroom_proto::{
    CallCid, CallKind, CallType, RejectReason, RingEvent, RingOutcome, RingPhase,
};
use libfuzzer_sys::fuzz_target;

const USERS: [&str; 5] = ["u0", "u1", "u2", "u3", "u4"];
const CALLS: [&str; 3] = ["c0", "c1", "c2"];

fn user(i: u8) -> &'static str {
    USERS[usize::from(i) % USERS.len()]
}

fn cid(i: u8) -> CallCid {
    CallCid::new(CallType::Default, CALLS[usize::from(i) % CALLS.len()]).expect("a valid id")
}

/// A device id; 255 is a malformed one.
fn device(i: u8) -> String {
    if i == 255 {
        "not a device".to_owned()
    } else {
        format!("d{}", i % 3)
    }
}

fn reason(i: u8) -> RejectReason {
    [
        RejectReason::Rejected,
        RejectReason::Busy,
        RejectReason::Declined,
    ][usize::from(i) % 3]
}

#[derive(Arbitrary, Debug)]
enum Op {
    Initiate {
        call: u8,
        caller: u8,
        callees: Vec<u8>,
        group: bool,
        video: bool,
        /// Ring timeout in ms (0 is invalid).
        timeout_ms: u16,
    },
    Accept {
        call: u8,
        user: u8,
        device: u8,
    },
    Reject {
        call: u8,
        user: u8,
        device: Option<u8>,
        reason: u8,
    },
    Cancel {
        call: u8,
        user: u8,
    },
    End {
        call: u8,
        user: u8,
    },
    Leave {
        call: u8,
        user: u8,
    },
    RequestVideo {
        call: u8,
        user: u8,
    },
    AcceptVideo {
        call: u8,
        user: u8,
    },
    Advance {
        ms: u16,
    },
    Poll,
    DeviceConnected {
        user: u8,
        device: u8,
    },
}

impl Op {
    fn call(&self) -> Option<CallCid> {
        match self {
            Op::Initiate { call, .. }
            | Op::Accept { call, .. }
            | Op::Reject { call, .. }
            | Op::Cancel { call, .. }
            | Op::End { call, .. }
            | Op::Leave { call, .. }
            | Op::RequestVideo { call, .. }
            | Op::AcceptVideo { call, .. } => Some(cid(*call)),
            Op::Advance { .. } | Op::Poll | Op::DeviceConnected { .. } => None,
        }
    }
}

/// What the fuzzer remembers across steps.
#[derive(Default)]
struct Model {
    /// Live calls (ringing or active) → their session id.
    live: BTreeMap<CallCid, String>,
    /// Sessions whose final record was emitted.
    finished: BTreeSet<String>,
    /// Sessions with an accepted record.
    accepted: BTreeSet<String>,
    next_session: u32,
}

fn check_step(ringer: &Ringer, model: &mut Model, step: &Step, op: &Op) {
    let live_before: BTreeSet<CallCid> = model.live.keys().cloned().collect();
    for o in &step.outputs {
        let c = o.event.call_cid();
        assert!(
            Some(c) == op.call().as_ref() || live_before.contains(c),
            "event for an unrelated call: {o:?}"
        );
    }
    for r in &step.records {
        assert!(
            !model.finished.contains(&r.session_id),
            "a record after the final one: {r:?}"
        );
        if model.accepted.contains(&r.session_id) {
            assert_eq!(
                r.outcome,
                RingOutcome::Accepted,
                "an accepted call changed outcome"
            );
        }
        if r.outcome == RingOutcome::Accepted {
            assert!(
                r.answered_at_ms.is_some(),
                "accepted without an answer time"
            );
            model.accepted.insert(r.session_id.clone());
        }
        assert_eq!(
            r.participants.first(),
            Some(&r.caller_user_id),
            "caller not first"
        );
        if let Some(a) = r.answered_at_ms {
            assert!(a >= r.started_at_ms, "answered before it started");
        }
        if let (Some(a), Some(e)) = (r.answered_at_ms, r.ended_at_ms) {
            assert_eq!(r.duration_ms, Some(e - a), "wrong duration");
        }
        if r.ended_at_ms.is_some() {
            model.finished.insert(r.session_id.clone());
            assert!(
                ringer.call(&r.call_cid).is_none(),
                "a finished call is still live"
            );
        }
    }
    for c in &step.end_sessions {
        assert!(
            ringer.call(c).is_none(),
            "an ended session's call is still live"
        );
        assert!(
            step.records
                .iter()
                .any(|r| &r.call_cid == c && r.ended_at_ms.is_some()),
            "an ended session without a final record"
        );
        model.live.remove(c);
    }
}

fn check_ringer(ringer: &Ringer, model: &Model) {
    assert_eq!(
        ringer.len(),
        model.live.len(),
        "live calls differ from the model"
    );
    for (c, session) in &model.live {
        let info = ringer
            .call(c)
            .expect("a live call in the model is in the ringer");
        assert_eq!(&info.session_id, session);
        assert_ne!(info.phase, RingPhase::Ended);
        assert!(
            !info.participants.is_empty(),
            "a live call with nobody in it"
        );
        for p in &info.participants {
            assert_eq!(
                ringer.engaged_in(p),
                Some(c),
                "{p} in {c} is not engaged in it"
            );
        }
    }
    for u in USERS {
        if let Some(c) = ringer.engaged_in(u) {
            let info = ringer.call(c).expect("engaged in a live call");
            assert!(
                info.participants.iter().any(|p| p == u),
                "{u} engaged but not in {c}"
            );
        }
        for info in ringer.incoming_for(u) {
            assert!(
                info.callee_user_ids.iter().any(|x| x == u),
                "{u} rung but not a callee"
            );
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut ringer = Ringer::new();
    let mut model = Model::default();
    let mut now: u64 = 1_700_000_000_000;
    for op in ops.iter().take(64) {
        let snapshot = format!("{ringer:?}");
        let result: Result<Step, RingError> = match op {
            Op::Initiate {
                call,
                caller,
                callees,
                group,
                video,
                timeout_ms,
            } => {
                let session = format!("s{}", model.next_session);
                model.next_session += 1;
                let callees: Vec<String> = callees
                    .iter()
                    .take(8)
                    .map(|u| user(*u).to_owned())
                    .collect();
                let kind = if *video {
                    CallKind::Video
                } else {
                    CallKind::Audio
                };
                let mut req = InitiateRequest::to_users(cid(*call), user(*caller), &callees, kind)
                    .with_session_id(&session)
                    .with_ring_timeout_ms(u64::from(*timeout_ms));
                if *group {
                    req.group_id = Some("g0".to_owned());
                }
                ringer.initiate(req, now).map(|(info, step)| {
                    assert_eq!(info.session_id, session);
                    assert_eq!(info.participants, vec![user(*caller).to_owned()]);
                    if info.phase == RingPhase::Ended {
                        assert!(ringer.call(&cid(*call)).is_none(), "an ended call is live");
                        assert_eq!(step.end_sessions, vec![cid(*call)]);
                    } else {
                        assert_eq!(info.phase, RingPhase::Ringing);
                        model.live.insert(cid(*call), session);
                    }
                    step
                })
            }
            Op::Accept {
                call,
                user: u,
                device: d,
            } => {
                let (u, d) = (user(*u), device(*d));
                ringer.accept(&cid(*call), u, &d, now).inspect(|step| {
                    let stop = |o: &&greenroom_fuzz::ring::Output| {
                        matches!(o.event, RingEvent::StopRinging { .. })
                    };
                    assert!(
                        step.outputs.iter().filter(stop).any(|o| o.to
                            == Recipient::UserExceptDevice {
                                user_id: u.to_owned(),
                                device_id: d.clone()
                            }),
                        "accept did not stop the other devices ringing"
                    );
                    assert!(
                        !step
                            .outputs
                            .iter()
                            .filter(stop)
                            .any(|o| o.to.includes(u, &d)),
                        "accept stopped the accepting device"
                    );
                    let info = ringer.call(&cid(*call)).expect("an accepted call is live");
                    assert_eq!(info.phase, RingPhase::Active);
                    assert!(info.participants.iter().any(|p| p == u));
                })
            }
            Op::Reject {
                call,
                user: u,
                device: d,
                reason: r,
            } => {
                let d = d.map(device);
                ringer.reject(&cid(*call), user(*u), d.as_deref(), reason(*r), now)
            }
            Op::Cancel { call, user: u } => {
                ringer.cancel(&cid(*call), user(*u), now).inspect(|_| {
                    assert!(
                        ringer.call(&cid(*call)).is_none(),
                        "a cancelled call is live"
                    );
                })
            }
            Op::End { call, user: u } => ringer.end(&cid(*call), user(*u), now),
            Op::Leave { call, user: u } => ringer.leave(&cid(*call), user(*u), now).inspect(|_| {
                if let Some(info) = ringer.call(&cid(*call)) {
                    assert!(
                        !info.participants.iter().any(|p| p == user(*u)),
                        "left but present"
                    );
                }
            }),
            Op::RequestVideo { call, user: u } => ringer.request_video(&cid(*call), user(*u)),
            Op::AcceptVideo { call, user: u } => ringer.accept_video(&cid(*call), user(*u)),
            Op::Advance { ms } => {
                now += u64::from(*ms);
                Ok(Step::default())
            }
            Op::Poll => {
                let step = ringer.poll_timeout(now);
                if let Some(d) = ringer.next_deadline() {
                    assert!(d > now, "a deadline at or before now is still pending");
                }
                for c in ringer
                    .call(&cid(0))
                    .into_iter()
                    .chain(ringer.call(&cid(1)))
                    .chain(ringer.call(&cid(2)))
                {
                    if c.phase == RingPhase::Ringing {
                        assert!(
                            c.started_at_ms + c.ring_timeout_ms > now,
                            "rings past its deadline"
                        );
                    }
                }
                for u in USERS {
                    for c in ringer.incoming_for(u) {
                        assert!(
                            c.started_at_ms + c.ring_timeout_ms > now,
                            "{u} rung past the deadline"
                        );
                    }
                }
                Ok(step)
            }
            Op::DeviceConnected { user: u, device: d } => {
                let d = device(*d);
                let step = ringer.device_connected(user(*u), &d, now);
                for o in &step.outputs {
                    assert_eq!(
                        o.to,
                        Recipient::Device {
                            user_id: user(*u).to_owned(),
                            device_id: d.clone()
                        }
                    );
                    match &o.event {
                        RingEvent::Ring {
                            ring_timeout_ms,
                            call_cid,
                            ..
                        } => {
                            let info = ringer.call(call_cid).expect("rings for a live call");
                            assert!(
                                *ring_timeout_ms > 0 && *ring_timeout_ms <= info.ring_timeout_ms
                            );
                        }
                        e => panic!("a connecting device got {e:?}"),
                    }
                }
                assert!(step.records.is_empty() && step.end_sessions.is_empty());
                Ok(step)
            }
        };
        match &result {
            Ok(step) => check_step(&ringer, &mut model, step, op),
            Err(e) => assert_eq!(
                format!("{ringer:?}"),
                snapshot,
                "refused action ({e}) changed the ringer"
            ),
        }
        check_ringer(&ringer, &model);
    }
});
