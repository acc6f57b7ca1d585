//! Ringing: the wire types of calling a user or a group (ring, accept, reject, cancel, missed,
//! end, switch to video) and of the call history.
//!
//! Ring events travel on a user-level socket (every device of a user gets them); they are tagged
//! by `type` with dotted names like the [`CallEvent`](crate::CallEvent)s. `call.ended` has the
//! same shape here as [`CallEvent::Ended`](crate::CallEvent::Ended), so a client parses it the same
//! way whichever enum produced it.

use serde::{Deserialize, Serialize};
use ts_rs::TS;
use utoipa::ToSchema;

use crate::CallCid;

/// What a rung call carries.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema, TS,
)]
#[serde(rename_all = "snake_case")]
pub enum CallKind {
    /// Microphones only.
    Audio,
    /// Microphones and cameras.
    Video,
}

impl CallKind {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            CallKind::Audio => "audio",
            CallKind::Video => "video",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<CallKind> {
        match s {
            "audio" => Some(CallKind::Audio),
            "video" => Some(CallKind::Video),
            _ => None,
        }
    }
}

/// Why a callee did not take a call.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, TS,
)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The callee pressed reject.
    #[default]
    Rejected,
    /// The callee is already in a call (set by the server, automatically).
    Busy,
    /// The callee's device declined on their behalf (do-not-disturb, unavailable).
    Declined,
}

impl RejectReason {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            RejectReason::Rejected => "rejected",
            RejectReason::Busy => "busy",
            RejectReason::Declined => "declined",
        }
    }

    /// The ring outcome of a call whose every callee gave this reason.
    pub const fn outcome(self) -> RingOutcome {
        match self {
            RejectReason::Rejected => RingOutcome::Rejected,
            RejectReason::Busy => RingOutcome::Busy,
            RejectReason::Declined => RingOutcome::Declined,
        }
    }
}

/// How the ringing phase of a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, TS)]
#[serde(rename_all = "snake_case")]
pub enum RingOutcome {
    /// A callee accepted; the call took place.
    Accepted,
    /// Every callee rejected (for a group: with mixed reasons, or all `rejected`).
    Rejected,
    /// Every callee was busy.
    Busy,
    /// Every callee declined.
    Declined,
    /// The caller cancelled before anyone accepted.
    Cancelled,
    /// Nobody answered within the ring timeout.
    Missed,
}

impl RingOutcome {
    /// Every outcome.
    pub const ALL: [RingOutcome; 6] = [
        RingOutcome::Accepted,
        RingOutcome::Rejected,
        RingOutcome::Busy,
        RingOutcome::Declined,
        RingOutcome::Cancelled,
        RingOutcome::Missed,
    ];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            RingOutcome::Accepted => "accepted",
            RingOutcome::Rejected => "rejected",
            RingOutcome::Busy => "busy",
            RingOutcome::Declined => "declined",
            RingOutcome::Cancelled => "cancelled",
            RingOutcome::Missed => "missed",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<RingOutcome> {
        RingOutcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// Where a rung call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, TS)]
#[serde(rename_all = "snake_case")]
pub enum RingPhase {
    /// Nobody has accepted yet.
    Ringing,
    /// Someone accepted; the call is in progress.
    Active,
    /// The call is over (see the outcome).
    Ended,
}

/// A rung call as the caller (and anyone asking) sees it; the reply to initiating a call.
///
/// The media session to join on `/v1/signal` is `call_cid`; `session_id` names this one ringing
/// of that call (history records are keyed by it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, TS)]
pub struct RingCallInfo {
    /// Unique id of this ringing (one call cid may be rung again later).
    pub session_id: String,
    /// The media session to join.
    pub call_cid: CallCid,
    /// Who called.
    pub caller_user_id: String,
    /// Who was rung (a group's members minus the caller).
    pub callee_user_ids: Vec<String>,
    /// The group rung, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Audio or video (video after a switch).
    pub kind: CallKind,
    /// Ringing, active or ended.
    pub phase: RingPhase,
    /// How the ringing ended, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RingOutcome>,
    /// How long callees ring.
    pub ring_timeout_ms: u64,
    /// Unix milliseconds when the call was initiated.
    pub started_at_ms: u64,
    /// Users in the call now (the caller and those who accepted and have not left).
    pub participants: Vec<String>,
    /// Callees rejected automatically because they were in another call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub busy_user_ids: Vec<String>,
}

/// One call in the history: who called whom, how the ringing ended, when, and who took part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, TS)]
pub struct CallRecord {
    /// Unique id of this ringing.
    pub session_id: String,
    /// The call.
    pub call_cid: CallCid,
    /// Who called.
    pub caller_user_id: String,
    /// Who was rung.
    pub callee_user_ids: Vec<String>,
    /// The group rung, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Audio or video (video if the call was switched).
    pub kind: CallKind,
    /// How the ringing ended.
    pub outcome: RingOutcome,
    /// Unix milliseconds when the call was initiated.
    pub started_at_ms: u64,
    /// Unix milliseconds of the first accept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at_ms: Option<u64>,
    /// Unix milliseconds when the call ended (for unanswered calls: when the ringing stopped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<u64>,
    /// Talk time: from the first accept to the end; absent for unanswered or ongoing calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Everyone who took part (the caller, then the callees in the order they accepted).
    pub participants: Vec<String>,
}

/// A ringing event, pushed to the devices of the users concerned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
#[serde(tag = "type")]
pub enum RingEvent {
    /// An incoming call: the device should ring.
    #[serde(rename = "call.ring")]
    Ring {
        /// The call (the media session to join after accepting).
        call_cid: CallCid,
        /// Who calls.
        caller_user_id: String,
        /// Audio or video.
        kind: CallKind,
        /// Everyone rung (for a group: all members but the caller).
        members: Vec<String>,
        /// The group rung, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group_id: Option<String>,
        /// How long the device rings before the call counts as missed.
        ring_timeout_ms: u64,
    },
    /// A callee accepted; sent to the caller and the others in the call.
    #[serde(rename = "call.accepted")]
    Accepted {
        /// The call.
        call_cid: CallCid,
        /// Who accepted.
        user_id: String,
        /// On which of their devices.
        device_id: String,
    },
    /// A callee rejected (or was busy); sent to the caller and the others in the call.
    #[serde(rename = "call.rejected")]
    Rejected {
        /// The call.
        call_cid: CallCid,
        /// Who rejected.
        user_id: String,
        /// Why.
        reason: RejectReason,
    },
    /// The caller cancelled before anyone accepted; callees stop ringing.
    #[serde(rename = "call.cancelled")]
    Cancelled {
        /// The call.
        call_cid: CallCid,
        /// The caller.
        by: String,
    },
    /// Nobody answered in time (or, to a group member, you did not): stop ringing.
    #[serde(rename = "call.missed")]
    Missed {
        /// The call.
        call_cid: CallCid,
    },
    /// The call ended; same shape as [`CallEvent::Ended`](crate::CallEvent::Ended).
    #[serde(rename = "call.ended")]
    Ended {
        /// The call.
        call_cid: CallCid,
        /// Who ended it (for a group call: the last to leave).
        ended_by: String,
    },
    /// Sent to a callee's other devices once one device accepted or rejected: stop ringing.
    #[serde(rename = "call.stop_ringing")]
    StopRinging {
        /// The call.
        call_cid: CallCid,
    },
    /// A participant of an audio call asks to switch to video; sent to the others.
    #[serde(rename = "call.video_requested")]
    VideoRequested {
        /// The call.
        call_cid: CallCid,
        /// Who asks.
        requested_by: String,
    },
    /// The call switched from audio to video; sent to everyone in the call.
    #[serde(rename = "call.switched_to_video")]
    SwitchedToVideo {
        /// The call.
        call_cid: CallCid,
        /// Who asked.
        requested_by: String,
        /// Who accepted.
        accepted_by: String,
    },
}

impl RingEvent {
    /// The event's `type` string, e.g. `call.ring`.
    pub fn kind(&self) -> &'static str {
        match self {
            RingEvent::Ring { .. } => "call.ring",
            RingEvent::Accepted { .. } => "call.accepted",
            RingEvent::Rejected { .. } => "call.rejected",
            RingEvent::Cancelled { .. } => "call.cancelled",
            RingEvent::Missed { .. } => "call.missed",
            RingEvent::Ended { .. } => "call.ended",
            RingEvent::StopRinging { .. } => "call.stop_ringing",
            RingEvent::VideoRequested { .. } => "call.video_requested",
            RingEvent::SwitchedToVideo { .. } => "call.switched_to_video",
        }
    }

    /// The call the event is about.
    pub fn call_cid(&self) -> &CallCid {
        match self {
            RingEvent::Ring { call_cid, .. }
            | RingEvent::Accepted { call_cid, .. }
            | RingEvent::Rejected { call_cid, .. }
            | RingEvent::Cancelled { call_cid, .. }
            | RingEvent::Missed { call_cid }
            | RingEvent::Ended { call_cid, .. }
            | RingEvent::StopRinging { call_cid }
            | RingEvent::VideoRequested { call_cid, .. }
            | RingEvent::SwitchedToVideo { call_cid, .. } => call_cid,
        }
    }
}

/// A ringing request from a client on its user-level socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RingClientMessage {
    /// Ring users (`user_ids`) or a group (`group_id`) for the call `call_cid`.
    RingInitiate {
        /// The call (the media session everyone joins).
        call_cid: CallCid,
        /// Users to ring (ignored when `group_id` is set).
        #[serde(default)]
        #[ts(as = "Option<_>", optional)]
        user_ids: Vec<String>,
        /// A group whose members (but the caller) are rung.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group_id: Option<String>,
        /// Audio or video.
        kind: CallKind,
    },
    /// Accept an incoming call on this device.
    RingAccept {
        /// The call.
        call_cid: CallCid,
    },
    /// Reject an incoming call.
    RingReject {
        /// The call.
        call_cid: CallCid,
        /// Why (default `rejected`).
        #[serde(default)]
        #[ts(as = "Option<_>", optional)]
        reason: RejectReason,
    },
    /// Cancel one's outgoing call before anyone accepts.
    RingCancel {
        /// The call.
        call_cid: CallCid,
    },
    /// End the call for everyone (while ringing: cancel for the caller, reject for a callee).
    RingEnd {
        /// The call.
        call_cid: CallCid,
    },
    /// Leave the call; a one-to-one call ends, a group call ends when the last one leaves.
    RingLeave {
        /// The call.
        call_cid: CallCid,
    },
    /// Ask the others to switch this audio call to video.
    RingRequestVideo {
        /// The call.
        call_cid: CallCid,
    },
    /// Accept someone's request to switch to video.
    RingAcceptVideo {
        /// The call.
        call_cid: CallCid,
    },
}

impl RingClientMessage {
    /// Every `type` of a ringing request.
    pub const TYPES: &'static [&'static str] = &[
        "ring_initiate",
        "ring_accept",
        "ring_reject",
        "ring_cancel",
        "ring_end",
        "ring_leave",
        "ring_request_video",
        "ring_accept_video",
    ];

    /// The message's `type` string, e.g. `ring_accept`.
    pub fn kind(&self) -> &'static str {
        match self {
            RingClientMessage::RingInitiate { .. } => "ring_initiate",
            RingClientMessage::RingAccept { .. } => "ring_accept",
            RingClientMessage::RingReject { .. } => "ring_reject",
            RingClientMessage::RingCancel { .. } => "ring_cancel",
            RingClientMessage::RingEnd { .. } => "ring_end",
            RingClientMessage::RingLeave { .. } => "ring_leave",
            RingClientMessage::RingRequestVideo { .. } => "ring_request_video",
            RingClientMessage::RingAcceptVideo { .. } => "ring_accept_video",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CallEvent;

    #[test]
    fn ring_types_list_every_client_message() {
        let c = cid();
        let all = [
            RingClientMessage::RingInitiate {
                call_cid: c.clone(),
                user_ids: vec![],
                group_id: None,
                kind: CallKind::Audio,
            },
            RingClientMessage::RingAccept {
                call_cid: c.clone(),
            },
            RingClientMessage::RingReject {
                call_cid: c.clone(),
                reason: RejectReason::default(),
            },
            RingClientMessage::RingCancel {
                call_cid: c.clone(),
            },
            RingClientMessage::RingEnd {
                call_cid: c.clone(),
            },
            RingClientMessage::RingLeave {
                call_cid: c.clone(),
            },
            RingClientMessage::RingRequestVideo {
                call_cid: c.clone(),
            },
            RingClientMessage::RingAcceptVideo { call_cid: c },
        ];
        assert_eq!(all.len(), RingClientMessage::TYPES.len());
        for m in all {
            let j = serde_json::to_value(&m).unwrap();
            assert_eq!(j["type"], m.kind());
            assert!(RingClientMessage::TYPES.contains(&m.kind()));
        }
    }
    use serde_json::json;

    fn cid() -> CallCid {
        "default:abc".parse().unwrap()
    }

    #[test]
    fn ring_event_shape() {
        let e = RingEvent::Ring {
            call_cid: cid(),
            caller_user_id: "alice".into(),
            kind: CallKind::Video,
            members: vec!["bob".into()],
            group_id: None,
            ring_timeout_ms: 15_000,
        };
        let j = serde_json::to_value(&e).unwrap();
        assert_eq!(
            j,
            json!({"type":"call.ring","call_cid":"default:abc","caller_user_id":"alice",
                   "kind":"video","members":["bob"],"ring_timeout_ms":15000})
        );
        assert_eq!(serde_json::from_value::<RingEvent>(j).unwrap(), e);
        assert_eq!(e.kind(), "call.ring");
    }

    #[test]
    fn every_event_round_trips_with_its_dotted_type() {
        let c = cid();
        let events = vec![
            RingEvent::Ring {
                call_cid: c.clone(),
                caller_user_id: "a".into(),
                kind: CallKind::Audio,
                members: vec!["b".into(), "c".into()],
                group_id: Some("g1".into()),
                ring_timeout_ms: 1,
            },
            RingEvent::Accepted {
                call_cid: c.clone(),
                user_id: "b".into(),
                device_id: "phone".into(),
            },
            RingEvent::Rejected {
                call_cid: c.clone(),
                user_id: "b".into(),
                reason: RejectReason::Busy,
            },
            RingEvent::Cancelled {
                call_cid: c.clone(),
                by: "a".into(),
            },
            RingEvent::Missed {
                call_cid: c.clone(),
            },
            RingEvent::Ended {
                call_cid: c.clone(),
                ended_by: "a".into(),
            },
            RingEvent::StopRinging {
                call_cid: c.clone(),
            },
            RingEvent::VideoRequested {
                call_cid: c.clone(),
                requested_by: "a".into(),
            },
            RingEvent::SwitchedToVideo {
                call_cid: c.clone(),
                requested_by: "a".into(),
                accepted_by: "b".into(),
            },
        ];
        for e in events {
            let j = serde_json::to_value(&e).unwrap();
            assert_eq!(j["type"], e.kind());
            assert_eq!(j["call_cid"], "default:abc");
            assert_eq!(e.call_cid(), &c);
            assert_eq!(serde_json::from_value::<RingEvent>(j).unwrap(), e);
        }
    }

    #[test]
    fn specific_field_names() {
        let j = serde_json::to_value(RingEvent::Rejected {
            call_cid: cid(),
            user_id: "bob".into(),
            reason: RejectReason::Declined,
        })
        .unwrap();
        assert_eq!(
            j,
            json!({"type":"call.rejected","call_cid":"default:abc","user_id":"bob","reason":"declined"})
        );
        let j = serde_json::to_value(RingEvent::Cancelled {
            call_cid: cid(),
            by: "alice".into(),
        })
        .unwrap();
        assert_eq!(
            j,
            json!({"type":"call.cancelled","call_cid":"default:abc","by":"alice"})
        );
        let j = serde_json::to_value(RingEvent::SwitchedToVideo {
            call_cid: cid(),
            requested_by: "alice".into(),
            accepted_by: "bob".into(),
        })
        .unwrap();
        assert_eq!(
            j,
            json!({"type":"call.switched_to_video","call_cid":"default:abc",
                   "requested_by":"alice","accepted_by":"bob"})
        );
        let j = serde_json::to_value(RingEvent::StopRinging { call_cid: cid() }).unwrap();
        assert_eq!(
            j,
            json!({"type":"call.stop_ringing","call_cid":"default:abc"})
        );
    }

    #[test]
    fn ended_has_the_same_shape_as_call_event_ended() {
        let ring = RingEvent::Ended {
            call_cid: cid(),
            ended_by: "bob".into(),
        };
        let call = CallEvent::Ended {
            call_cid: cid(),
            ended_by: "bob".into(),
        };
        let rj = serde_json::to_value(&ring).unwrap();
        assert_eq!(rj, serde_json::to_value(&call).unwrap());
        assert_eq!(serde_json::from_value::<CallEvent>(rj).unwrap(), call);
    }

    #[test]
    fn client_messages_parse() {
        let m: RingClientMessage = serde_json::from_str(
            r#"{"type":"ring_initiate","call_cid":"default:x","user_ids":["bob"],"kind":"audio"}"#,
        )
        .unwrap();
        assert_eq!(
            m,
            RingClientMessage::RingInitiate {
                call_cid: "default:x".parse().unwrap(),
                user_ids: vec!["bob".into()],
                group_id: None,
                kind: CallKind::Audio,
            }
        );
        let m: RingClientMessage =
            serde_json::from_str(r#"{"type":"ring_reject","call_cid":"default:x"}"#).unwrap();
        assert_eq!(
            m,
            RingClientMessage::RingReject {
                call_cid: "default:x".parse().unwrap(),
                reason: RejectReason::Rejected,
            }
        );
        let m: RingClientMessage = serde_json::from_str(
            r#"{"type":"ring_reject","call_cid":"default:x","reason":"busy"}"#,
        )
        .unwrap();
        assert!(matches!(
            m,
            RingClientMessage::RingReject {
                reason: RejectReason::Busy,
                ..
            }
        ));
        for t in [
            "ring_accept",
            "ring_cancel",
            "ring_end",
            "ring_leave",
            "ring_request_video",
            "ring_accept_video",
        ] {
            let s = format!(r#"{{"type":"{t}","call_cid":"default:x"}}"#);
            let m: RingClientMessage = serde_json::from_str(&s).unwrap();
            assert_eq!(serde_json::to_value(&m).unwrap()["type"], t);
        }
    }

    #[test]
    fn bad_client_messages_are_errors() {
        for s in [
            r#"{"type":"ring_accept"}"#,
            r#"{"type":"ring_accept","call_cid":"nocolon"}"#,
            r#"{"type":"ring_reject","call_cid":"default:x","reason":"tired"}"#,
            r#"{"type":"ring_initiate","call_cid":"default:x","kind":"hologram"}"#,
            r#"{"type":"ring_dance","call_cid":"default:x"}"#,
        ] {
            assert!(serde_json::from_str::<RingClientMessage>(s).is_err(), "{s}");
        }
    }

    #[test]
    fn record_shape() {
        let r = CallRecord {
            session_id: "s1".into(),
            call_cid: cid(),
            caller_user_id: "alice".into(),
            callee_user_ids: vec!["bob".into()],
            group_id: None,
            kind: CallKind::Audio,
            outcome: RingOutcome::Missed,
            started_at_ms: 10,
            answered_at_ms: None,
            ended_at_ms: Some(15_010),
            duration_ms: None,
            participants: vec!["alice".into()],
        };
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(
            j,
            json!({"session_id":"s1","call_cid":"default:abc","caller_user_id":"alice",
                   "callee_user_ids":["bob"],"kind":"audio","outcome":"missed",
                   "started_at_ms":10,"ended_at_ms":15010,"participants":["alice"]})
        );
        assert_eq!(serde_json::from_value::<CallRecord>(j).unwrap(), r);
    }

    #[test]
    fn names_parse_back() {
        for o in RingOutcome::ALL {
            assert_eq!(RingOutcome::parse(o.as_str()), Some(o));
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
        assert_eq!(RingOutcome::parse("nope"), None);
        for k in [CallKind::Audio, CallKind::Video] {
            assert_eq!(CallKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(RejectReason::Busy.outcome(), RingOutcome::Busy);
        assert_eq!(
            serde_json::to_value(RejectReason::Declined).unwrap(),
            RejectReason::Declined.as_str()
        );
    }
}
