//! Calls, call types, roles, capabilities and track sources.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use ts_rs::TS;
use utoipa::ToSchema;

use crate::ProtoError;

/// A permission a participant holds in a call, named exactly as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, TS)]
#[ts(rename_all = "kebab-case")]
#[repr(u8)]
pub enum Capability {
    /// Join the call (`join-call`).
    JoinCall = 0,
    /// Read the call's state (`read-call`).
    ReadCall = 1,
    /// Join while the call is in backstage (`join-backstage`).
    JoinBackstage = 2,
    /// Join a call that has ended (`join-ended-call`).
    JoinEndedCall = 3,
    /// Publish a microphone track (`send-audio`).
    SendAudio = 4,
    /// Publish a camera track (`send-video`).
    SendVideo = 5,
    /// Publish a screen share (`screenshare`).
    Screenshare = 6,
    /// Create calls (`create-call`).
    CreateCall = 7,
    /// Update the call, including go live / stop live (`update-call`).
    UpdateCall = 8,
    /// Update call settings (`update-call-settings`).
    UpdateCallSettings = 9,
    /// Grant and revoke other users' capabilities (`update-call-permissions`).
    UpdateCallPermissions = 10,
    /// Mute other users (`mute-users`).
    MuteUsers = 11,
    /// Kick a user out of the call (`kick-user`).
    KickUser = 12,
    /// Block and unblock users (`block-users`).
    BlockUsers = 13,
    /// End the call for everyone (`end-call`).
    EndCall = 14,
    /// Send reactions (`create-reaction`).
    CreateReaction = 15,
}

impl Capability {
    /// Every capability, in bit order.
    pub const ALL: [Capability; 16] = [
        Capability::JoinCall,
        Capability::ReadCall,
        Capability::JoinBackstage,
        Capability::JoinEndedCall,
        Capability::SendAudio,
        Capability::SendVideo,
        Capability::Screenshare,
        Capability::CreateCall,
        Capability::UpdateCall,
        Capability::UpdateCallSettings,
        Capability::UpdateCallPermissions,
        Capability::MuteUsers,
        Capability::KickUser,
        Capability::BlockUsers,
        Capability::EndCall,
        Capability::CreateReaction,
    ];

    /// The wire name, e.g. `send-audio`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Capability::JoinCall => "join-call",
            Capability::ReadCall => "read-call",
            Capability::JoinBackstage => "join-backstage",
            Capability::JoinEndedCall => "join-ended-call",
            Capability::SendAudio => "send-audio",
            Capability::SendVideo => "send-video",
            Capability::Screenshare => "screenshare",
            Capability::CreateCall => "create-call",
            Capability::UpdateCall => "update-call",
            Capability::UpdateCallSettings => "update-call-settings",
            Capability::UpdateCallPermissions => "update-call-permissions",
            Capability::MuteUsers => "mute-users",
            Capability::KickUser => "kick-user",
            Capability::BlockUsers => "block-users",
            Capability::EndCall => "end-call",
            Capability::CreateReaction => "create-reaction",
        }
    }

    /// The single bit of this capability in a [`CapabilitySet`].
    pub const fn bit(self) -> u32 {
        1u32 << (self as u8)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Capability {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Capability::ALL
            .iter()
            .copied()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| ProtoError::UnknownCapability(s.to_owned()))
    }
}

impl Serialize for Capability {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Capability {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A set of capabilities as a bit mask: the media plane's gate tests one bit per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, TS)]
#[ts(as = "Vec<Capability>")]
pub struct CapabilitySet(u32);

impl CapabilitySet {
    /// The empty set.
    pub const EMPTY: CapabilitySet = CapabilitySet(0);

    /// Every capability.
    pub const fn all() -> CapabilitySet {
        CapabilitySet((1u32 << Capability::ALL.len()) - 1)
    }

    /// A set from a list of capabilities.
    pub fn of(caps: &[Capability]) -> CapabilitySet {
        caps.iter().fold(CapabilitySet::EMPTY, |s, c| s.with(*c))
    }

    /// The raw bit mask.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// A set from a raw bit mask (bits beyond the known capabilities are dropped).
    pub const fn from_bits(bits: u32) -> CapabilitySet {
        CapabilitySet(bits & CapabilitySet::all().0)
    }

    /// Whether `cap` is in the set.
    pub const fn contains(self, cap: Capability) -> bool {
        self.0 & cap.bit() != 0
    }

    /// This set plus `cap`.
    #[must_use]
    pub const fn with(self, cap: Capability) -> CapabilitySet {
        CapabilitySet(self.0 | cap.bit())
    }

    /// This set without `cap`.
    #[must_use]
    pub const fn without(self, cap: Capability) -> CapabilitySet {
        CapabilitySet(self.0 & !cap.bit())
    }

    /// The union of two sets.
    #[must_use]
    pub const fn union(self, other: CapabilitySet) -> CapabilitySet {
        CapabilitySet(self.0 | other.0)
    }

    /// This set minus every capability in `other`.
    #[must_use]
    pub const fn difference(self, other: CapabilitySet) -> CapabilitySet {
        CapabilitySet(self.0 & !other.0)
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The capabilities in the set, in bit order.
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }

    /// The capabilities as a vector, in bit order.
    pub fn to_vec(self) -> Vec<Capability> {
        self.iter().collect()
    }
}

impl FromIterator<Capability> for CapabilitySet {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        iter.into_iter()
            .fold(CapabilitySet::EMPTY, |s, c| s.with(c))
    }
}

impl Serialize for CapabilitySet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for CapabilitySet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Vec::<Capability>::deserialize(d)?;
        Ok(v.into_iter().collect())
    }
}

/// Where a published track comes from; decides which capability gates it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema, TS,
)]
#[serde(rename_all = "snake_case")]
pub enum TrackSource {
    /// A microphone: gated by `send-audio`.
    Microphone,
    /// A camera: gated by `send-video`.
    Camera,
    /// A screen share's video: gated by `screenshare`.
    ScreenShare,
    /// A screen share's audio: gated by `screenshare`.
    ScreenShareAudio,
}

impl TrackSource {
    /// Every source.
    pub const ALL: [TrackSource; 4] = [
        TrackSource::Microphone,
        TrackSource::Camera,
        TrackSource::ScreenShare,
        TrackSource::ScreenShareAudio,
    ];

    /// The capability a publisher needs to send a track of this source.
    pub const fn capability(self) -> Capability {
        match self {
            TrackSource::Microphone => Capability::SendAudio,
            TrackSource::Camera => Capability::SendVideo,
            TrackSource::ScreenShare | TrackSource::ScreenShareAudio => Capability::Screenshare,
        }
    }

    /// Whether the track carries audio.
    pub const fn is_audio(self) -> bool {
        matches!(
            self,
            TrackSource::Microphone | TrackSource::ScreenShareAudio
        )
    }

    /// The wire name, e.g. `screen_share`.
    pub const fn as_str(self) -> &'static str {
        match self {
            TrackSource::Microphone => "microphone",
            TrackSource::Camera => "camera",
            TrackSource::ScreenShare => "screen_share",
            TrackSource::ScreenShareAudio => "screen_share_audio",
        }
    }
}

impl fmt::Display for TrackSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role, globally (from the token) or per call (a call member's role overrides the global one).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, PartialOrd, Ord, TS,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Administrator.
    Admin,
    /// The host of a call.
    Host,
    /// A moderator.
    Moderator,
    /// An ordinary user (the default role).
    User,
    /// A member listed on the call with no stronger role.
    CallMember,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Host,
        Role::Moderator,
        Role::User,
        Role::CallMember,
    ];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Host => "host",
            Role::Moderator => "moderator",
            Role::User => "user",
            Role::CallMember => "call_member",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .iter()
            .copied()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| ProtoError::UnknownRole(s.to_owned()))
    }
}

/// The kind of call, which fixes the default grants and whether backstage is on.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, PartialOrd, Ord, TS,
)]
#[serde(rename_all = "snake_case")]
pub enum CallType {
    /// A meeting: everyone joins and publishes.
    Default,
    /// A few speakers and many listeners who raise a hand to speak; backstage on.
    AudioRoom,
    /// Hosts publish, viewers watch; backstage on.
    Livestream,
    /// Everything allowed for everyone.
    Development,
}

impl CallType {
    /// Every call type.
    pub const ALL: [CallType; 4] = [
        CallType::Default,
        CallType::AudioRoom,
        CallType::Livestream,
        CallType::Development,
    ];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            CallType::Default => "default",
            CallType::AudioRoom => "audio_room",
            CallType::Livestream => "livestream",
            CallType::Development => "development",
        }
    }
}

impl fmt::Display for CallType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CallType {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CallType::ALL
            .iter()
            .copied()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| ProtoError::UnknownCallType(s.to_owned()))
    }
}

/// A call's full id, `type:id`, e.g. `audio_room:stage1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, TS)]
#[ts(type = "string")]
pub struct CallCid {
    /// The call type.
    pub call_type: CallType,
    /// The call id within its type.
    pub id: String,
}

impl CallCid {
    /// Longest accepted call id.
    pub const MAX_ID_LEN: usize = 64;

    /// A cid from its parts, validating the id.
    pub fn new(call_type: CallType, id: &str) -> Result<CallCid, ProtoError> {
        validate_id(id)?;
        Ok(CallCid {
            call_type,
            id: id.to_owned(),
        })
    }
}

/// Checks an id (call id, user id): 1..=64 characters of `[A-Za-z0-9_.@-]`.
pub fn validate_id(id: &str) -> Result<(), ProtoError> {
    let ok = !id.is_empty()
        && id.len() <= CallCid::MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(ProtoError::InvalidId(id.chars().take(80).collect()))
    }
}

impl fmt::Display for CallCid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.call_type, self.id)
    }
}

impl FromStr for CallCid {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (t, id) = s
            .split_once(':')
            .ok_or_else(|| ProtoError::InvalidCid(s.chars().take(80).collect()))?;
        CallCid::new(t.parse()?, id)
    }
}

impl Serialize for CallCid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CallCid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Capability {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(Capability::ALL.iter().map(|c| c.as_str())))
            .into()
    }
}

impl ToSchema for Capability {}

impl utoipa::PartialSchema for CapabilitySet {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ArrayBuilder::new()
            .items(Capability::schema())
            .description(Some("A set of capabilities"))
            .into()
    }
}

impl ToSchema for CapabilitySet {}

impl utoipa::PartialSchema for CallCid {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("A call's full id, `type:id`"))
            .examples([serde_json::json!("audio_room:stage1")])
            .into()
    }
}

impl ToSchema for CallCid {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_round_trip() {
        for c in Capability::ALL {
            assert_eq!(c.as_str().parse::<Capability>().unwrap(), c);
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
        }
        assert!("send_audio".parse::<Capability>().is_err());
    }

    #[test]
    fn capability_bits_are_distinct() {
        let all = CapabilitySet::of(&Capability::ALL);
        assert_eq!(all, CapabilitySet::all());
        assert_eq!(all.to_vec().len(), 16);
        let s = CapabilitySet::of(&[Capability::SendAudio]);
        assert!(s.contains(Capability::SendAudio));
        assert!(!s.contains(Capability::SendVideo));
        assert!(s.without(Capability::SendAudio).is_empty());
    }

    #[test]
    fn capability_set_serializes_as_names() {
        let s = CapabilitySet::of(&[Capability::SendVideo, Capability::JoinCall]);
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"["join-call","send-video"]"#
        );
        let back: CapabilitySet = serde_json::from_str(r#"["send-video","join-call"]"#).unwrap();
        assert_eq!(back, s);
        assert!(serde_json::from_str::<CapabilitySet>(r#"["fly"]"#).is_err());
    }

    #[test]
    fn sources_map_to_capabilities() {
        assert_eq!(TrackSource::Microphone.capability(), Capability::SendAudio);
        assert_eq!(TrackSource::Camera.capability(), Capability::SendVideo);
        assert_eq!(
            TrackSource::ScreenShare.capability(),
            Capability::Screenshare
        );
        assert_eq!(
            TrackSource::ScreenShareAudio.capability(),
            Capability::Screenshare
        );
        assert_eq!(
            serde_json::to_string(&TrackSource::ScreenShareAudio).unwrap(),
            "\"screen_share_audio\""
        );
    }

    #[test]
    fn cid_parses_and_rejects() {
        let c: CallCid = "audio_room:stage1".parse().unwrap();
        assert_eq!(c.call_type, CallType::AudioRoom);
        assert_eq!(c.id, "stage1");
        assert_eq!(c.to_string(), "audio_room:stage1");
        assert!("nope:stage1".parse::<CallCid>().is_err());
        assert!("default".parse::<CallCid>().is_err());
        assert!("default:".parse::<CallCid>().is_err());
        assert!("default:a b".parse::<CallCid>().is_err());
        assert!(format!("default:{}", "x".repeat(65))
            .parse::<CallCid>()
            .is_err());
    }
}
