//! Call types and their default grants: which role holds which capability, whether backstage is
//! on, and what a user may request. Every value can be overridden per call type in configuration.

use std::collections::BTreeMap;

use greenroom_proto::{CallType, Capability, CapabilitySet, Role};
use serde::{Deserialize, Serialize};

use Capability as C;

/// The settings of one call type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallTypePolicy {
    /// Whether calls of this type start in backstage (only `join-backstage` holders until live).
    pub backstage: bool,
    /// Capabilities each role holds in calls of this type.
    pub grants: BTreeMap<Role, CapabilitySet>,
    /// Capabilities a participant may ask for (`request_permission`).
    pub requestable: CapabilitySet,
    /// How long a ringing call rings before it is missed, in milliseconds.
    pub ring_timeout_ms: u64,
    /// Send-side bandwidth estimation on the subscribers' media peers (TWCC and str0m's
    /// estimator and pacer; its estimate picks simulcast layers): `None` (the default of every
    /// call type) turns it on exactly when the call type may carry video
    /// ([`CallTypePolicy::may_carry_video`]); `Some` forces it on or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_estimation: Option<bool>,
}

impl CallTypePolicy {
    /// The capabilities of a role in this call type (an unknown role gets none).
    pub fn grants_of(&self, role: Role) -> CapabilitySet {
        self.grants.get(&role).copied().unwrap_or_default()
    }

    /// Whether any role may send video or screen share in calls of this type, by default grant
    /// or by request. Calls that cannot carry video skip bandwidth estimation in the media plane.
    pub fn may_carry_video(&self) -> bool {
        self.grants
            .values()
            .chain([&self.requestable])
            .any(|c| c.contains(Capability::SendVideo) || c.contains(Capability::Screenshare))
    }

    /// Whether the subscribers of calls of this type run bandwidth estimation: the configured
    /// [`CallTypePolicy::bandwidth_estimation`], else [`CallTypePolicy::may_carry_video`].
    /// Without it a subscriber of a simulcast track gets the layer its requested quality picks,
    /// never stepped down for its link; single-layer video and audio lose nothing (their lean
    /// packets carry no TWCC sequence, so no estimate covers them anyway).
    pub fn estimates_bandwidth(&self) -> bool {
        self.bandwidth_estimation
            .unwrap_or_else(|| self.may_carry_video())
    }
}

/// The policies of every call type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    types: BTreeMap<CallType, CallTypePolicy>,
}

/// An override of one call type, as written in configuration; absent fields keep the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallTypeOverride {
    /// Backstage on or off.
    pub backstage: Option<bool>,
    /// Replace the grants of the listed roles.
    #[serde(default)]
    pub grants: BTreeMap<Role, CapabilitySet>,
    /// Replace what may be requested.
    pub requestable: Option<CapabilitySet>,
    /// Replace the ring timeout.
    pub ring_timeout_ms: Option<u64>,
    /// Force bandwidth estimation on or off ([`CallTypePolicy::bandwidth_estimation`]).
    pub bandwidth_estimation: Option<bool>,
}

const BASE: &[Capability] = &[C::JoinCall, C::ReadCall, C::CreateReaction];
const MEDIA: &[Capability] = &[C::SendAudio, C::SendVideo, C::Screenshare];
const MODERATE: &[Capability] = &[
    C::UpdateCallPermissions,
    C::MuteUsers,
    C::KickUser,
    C::BlockUsers,
];
const HOST_EXTRA: &[Capability] = &[
    C::JoinBackstage,
    C::UpdateCall,
    C::UpdateCallSettings,
    C::EndCall,
    C::CreateCall,
];

fn set(parts: &[&[Capability]]) -> CapabilitySet {
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}

impl Default for Policy {
    fn default() -> Self {
        let mut types = BTreeMap::new();
        let host = set(&[BASE, MODERATE, HOST_EXTRA]);

        // default: a meeting.
        let everyone = set(&[BASE, MEDIA, &[C::CreateCall]]);
        let staff = everyone.union(host);
        types.insert(
            CallType::Default,
            CallTypePolicy {
                backstage: false,
                grants: BTreeMap::from([
                    (Role::Admin, staff.with(C::JoinEndedCall)),
                    (Role::Host, staff),
                    (Role::Moderator, staff),
                    (Role::User, everyone),
                    (Role::CallMember, everyone),
                ]),
                requestable: set(&[MEDIA]),
                ring_timeout_ms: 15_000,
                bandwidth_estimation: None,
            },
        );

        // audio_room: hosts speak, listeners ask to speak (and react: the app's reaction bar).
        let speaker = host.with(C::SendAudio);
        let listener = set(&[BASE]);
        types.insert(
            CallType::AudioRoom,
            CallTypePolicy {
                backstage: true,
                grants: BTreeMap::from([
                    (Role::Admin, speaker.with(C::JoinEndedCall)),
                    (Role::Host, speaker),
                    (Role::Moderator, set(&[BASE, MODERATE, &[C::JoinBackstage]])),
                    (Role::User, listener),
                    (Role::CallMember, listener),
                ]),
                requestable: CapabilitySet::of(&[C::SendAudio]),
                ring_timeout_ms: 15_000,
                bandwidth_estimation: None,
            },
        );

        // livestream: hosts publish, viewers watch.
        let broadcaster = host.union(set(&[MEDIA]));
        types.insert(
            CallType::Livestream,
            CallTypePolicy {
                backstage: true,
                grants: BTreeMap::from([
                    (Role::Admin, broadcaster.with(C::JoinEndedCall)),
                    (Role::Host, broadcaster),
                    (Role::Moderator, set(&[BASE, MODERATE, &[C::JoinBackstage]])),
                    (Role::User, listener),
                    (Role::CallMember, listener),
                ]),
                requestable: CapabilitySet::EMPTY,
                ring_timeout_ms: 15_000,
                bandwidth_estimation: None,
            },
        );

        // development: everything for everyone.
        types.insert(
            CallType::Development,
            CallTypePolicy {
                backstage: false,
                grants: Role::ALL
                    .iter()
                    .map(|r| (*r, CapabilitySet::all()))
                    .collect(),
                requestable: CapabilitySet::all(),
                ring_timeout_ms: 15_000,
                bandwidth_estimation: None,
            },
        );
        Policy { types }
    }
}

impl Policy {
    /// The default policy with configuration overrides applied.
    pub fn with_overrides(overrides: &BTreeMap<CallType, CallTypeOverride>) -> Policy {
        let mut p = Policy::default();
        for (t, o) in overrides {
            let entry = p.types.get_mut(t);
            // Every CallType has a default entry, so the lookup always succeeds.
            if let Some(tp) = entry {
                if let Some(b) = o.backstage {
                    tp.backstage = b;
                }
                for (role, caps) in &o.grants {
                    tp.grants.insert(*role, *caps);
                }
                if let Some(r) = o.requestable {
                    tp.requestable = r;
                }
                if let Some(ms) = o.ring_timeout_ms {
                    tp.ring_timeout_ms = ms;
                }
                if let Some(b) = o.bandwidth_estimation {
                    tp.bandwidth_estimation = Some(b);
                }
            }
        }
        p
    }

    /// The policy of a call type.
    pub fn of(&self, t: CallType) -> &CallTypePolicy {
        // The constructor fills every CallType; fall back to development's shape is never needed.
        &self.types[&t]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_room_listeners_join_read_and_react() {
        let p = Policy::default();
        let ar = p.of(CallType::AudioRoom);
        assert!(ar.backstage);
        // Listeners (user and call_member) in audio rooms and livestreams join, read and react.
        let listener = CapabilitySet::of(&[C::JoinCall, C::ReadCall, C::CreateReaction]);
        for t in [CallType::AudioRoom, CallType::Livestream] {
            for r in [Role::User, Role::CallMember] {
                assert_eq!(p.of(t).grants_of(r), listener, "{t:?} {r:?}");
            }
        }
        assert!(ar.grants_of(Role::Host).contains(C::SendAudio));
        assert!(!ar.grants_of(Role::Host).contains(C::SendVideo));
        assert_eq!(ar.requestable, CapabilitySet::of(&[C::SendAudio]));
        assert!(
            !ar.may_carry_video(),
            "audio rooms carry no video by default"
        );
        assert!(p.of(CallType::Default).may_carry_video());
        assert!(p.of(CallType::Livestream).may_carry_video());
        let mut video_by_request = ar.clone();
        video_by_request.requestable = CapabilitySet::of(&[C::SendAudio, C::SendVideo]);
        assert!(video_by_request.may_carry_video());
        assert!(video_by_request.estimates_bandwidth());
    }

    #[test]
    fn bandwidth_estimation_follows_video_unless_configured() {
        let p = Policy::default();
        // The defaults: on wherever video may flow, off in audio rooms.
        for t in [
            CallType::Default,
            CallType::Livestream,
            CallType::Development,
        ] {
            assert!(p.of(t).estimates_bandwidth(), "{t:?}");
        }
        assert!(!p.of(CallType::AudioRoom).estimates_bandwidth());
        // Configured off for livestreams, on for audio rooms; the other types keep theirs.
        let o = BTreeMap::from([
            (
                CallType::Livestream,
                CallTypeOverride {
                    bandwidth_estimation: Some(false),
                    ..Default::default()
                },
            ),
            (
                CallType::AudioRoom,
                CallTypeOverride {
                    bandwidth_estimation: Some(true),
                    ..Default::default()
                },
            ),
        ]);
        let p = Policy::with_overrides(&o);
        assert!(!p.of(CallType::Livestream).estimates_bandwidth());
        assert!(p.of(CallType::Livestream).may_carry_video());
        assert!(p.of(CallType::AudioRoom).estimates_bandwidth());
        assert!(p.of(CallType::Default).estimates_bandwidth());
    }

    #[test]
    fn overrides_replace_only_named_fields() {
        let o = BTreeMap::from([(
            CallType::Default,
            CallTypeOverride {
                backstage: Some(true),
                grants: BTreeMap::from([(Role::User, CapabilitySet::of(&[C::JoinCall]))]),
                ..Default::default()
            },
        )]);
        let p = Policy::with_overrides(&o);
        let d = p.of(CallType::Default);
        assert!(d.backstage);
        assert_eq!(d.grants_of(Role::User), CapabilitySet::of(&[C::JoinCall]));
        assert!(d.grants_of(Role::Host).contains(C::SendVideo));
        assert_eq!(
            p.of(CallType::AudioRoom),
            Policy::default().of(CallType::AudioRoom)
        );
    }
}
