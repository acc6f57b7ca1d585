//! The relay datagram: encoding, decoding and authentication, pure (no sockets).
//!
//! ```text
//! 0   "GR" magic, 1 byte version (1), 1 byte kind (1 media, 2 announce, 3 keyframe request)
//! 4   call key: 8 bytes, the first 8 bytes of SHA-256("<type>:<id>")
//! 12  sender node id: 1 byte length + UTF-8
//!     participant id: 1 byte length + UTF-8, source: 1 byte (index in TrackSource::ALL)
//!     kind-specific body (below)
//! end MAC: the first 16 bytes of HMAC-SHA256(node key, every byte before it), where the node
//!     key is HMAC-SHA256(cluster secret, "greenroom-relay-v1" || sender node id)
//! ```
//!
//! Media body: rid (1 byte length + ASCII, 0 = none), original SSRC (4), the sender's gate
//! version of the publisher (8), extended sequence number (8), RTP timestamp (4), payload type
//! (1), flags (1: marker, audio level, voice activity, video orientation present), audio level
//! (1), video orientation (1), then the RTP payload as the publisher's node received it after
//! SRTP unprotect. Announce body: the publisher's tracks in JSON ([`TrackDesc`]). Keyframe
//! request body: rid, 1 byte flags (1: FIR, else PLI; 2: forced, past the producing node's
//! rate limit: a new subscriber or a resume there).
//!
//! Every length is checked: a short or malformed datagram decodes to a [`WireError`], never a
//! panic.

use aws_lc_rs::{constant_time, digest, hmac};
use greenroom_proto::{CallCid, TrackSource};
use serde::{Deserialize, Serialize};
use str0m::format::PayloadParams;

/// First bytes of every relay datagram.
const MAGIC: [u8; 2] = *b"GR";
/// Wire version.
const VERSION: u8 = 1;
/// Length of the truncated MAC at the end of a datagram.
pub(crate) const MAC_LEN: usize = 16;
/// Fixed bytes before the sender node id.
const FIXED: usize = 12;
/// Largest datagram the relay sends or accepts (an announce of a publisher's every track with
/// every codec before its first packet stays well below; media is one RTP packet).
pub(crate) const MAX_DATAGRAM: usize = 16_384;

/// What a datagram carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// One RTP packet of a track.
    Media = 1,
    /// A publisher's track descriptions.
    Announce = 2,
    /// A keyframe request from a receiving node to the producing node.
    Keyframe = 3,
}

/// Why a datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    /// Shorter than its fields say.
    #[error("truncated datagram")]
    Truncated,
    /// Not a relay datagram of this version.
    #[error("bad magic, version or kind")]
    BadHeader,
    /// A field holds an invalid value (source index, UTF-8, JSON).
    #[error("malformed field")]
    Malformed,
    /// The MAC does not match the sender's key.
    #[error("bad MAC")]
    BadMac,
    /// Too long to encode (a field over 255 bytes or a datagram over the limit).
    #[error("too long")]
    TooLong,
}

/// The 8-byte key of a call in datagrams.
pub(crate) fn call_key(call: &CallCid) -> u64 {
    let d = digest::digest(&digest::SHA256, call.to_string().as_bytes());
    let mut k = [0u8; 8];
    k.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(k)
}

/// The MAC key of the node `node_id` under the cluster `secret`.
pub(crate) fn node_key(secret: &[u8; 32], node_id: &str) -> hmac::Key {
    let root = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&root);
    ctx.update(b"greenroom-relay-v1");
    ctx.update(node_id.as_bytes());
    hmac::Key::new(hmac::HMAC_SHA256, ctx.sign().as_ref())
}

/// The parts every datagram shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head<'a> {
    pub(crate) kind: Kind,
    pub(crate) call: u64,
    pub(crate) node: &'a str,
    pub(crate) pid: &'a str,
    pub(crate) source: TrackSource,
}

/// One RTP packet (the media body), generic over how the rid and the payload are held:
/// borrowed from the datagram ([`Media`]: encoding, decoding) or owned for the shard
/// (`relay::MediaIn`, see [`MediaOf::map`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MediaOf<R, P> {
    pub(crate) rid: R,
    pub(crate) ssrc: u32,
    pub(crate) version: u64,
    pub(crate) seq: u64,
    pub(crate) ts: u32,
    pub(crate) pt: u8,
    pub(crate) marker: bool,
    pub(crate) audio_level: Option<i8>,
    pub(crate) voice_activity: Option<bool>,
    pub(crate) orientation: Option<u8>,
    pub(crate) payload: P,
}

/// The media body as the datagram holds it.
pub(crate) type Media<'a> = MediaOf<Option<&'a str>, &'a [u8]>;

impl<R, P> MediaOf<R, P> {
    /// The same packet with its rid and payload converted.
    pub(crate) fn map<R2, P2>(
        self,
        rid: impl FnOnce(R) -> R2,
        payload: impl FnOnce(P) -> P2,
    ) -> MediaOf<R2, P2> {
        MediaOf {
            rid: rid(self.rid),
            ssrc: self.ssrc,
            version: self.version,
            seq: self.seq,
            ts: self.ts,
            pt: self.pt,
            marker: self.marker,
            audio_level: self.audio_level,
            voice_activity: self.voice_activity,
            orientation: self.orientation,
            payload: payload(self.payload),
        }
    }
}

/// A published track as the announce describes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TrackDesc {
    /// The source (the track id is `<participant_id>:<source>`).
    pub(crate) source: TrackSource,
    /// Audio (else video).
    pub(crate) audio: bool,
    /// The codecs of the publisher's payload types (packets carry these PTs).
    pub(crate) params: Vec<PayloadParams>,
    /// Simulcast rids, in layer order (empty: one layer).
    pub(crate) rids: Vec<String>,
}

/// A datagram's body, by kind.
#[derive(Debug, Clone)]
pub(crate) enum Body<'a> {
    /// One RTP packet.
    Media(Media<'a>),
    /// The publisher's complete track list (replaces what the receiver held).
    Announce(Vec<TrackDesc>),
    /// A keyframe request for one layer.
    Keyframe {
        /// The layer's rid.
        rid: Option<&'a str>,
        /// FIR (else PLI).
        fir: bool,
        /// Past the producing node's rate limit.
        force: bool,
    },
}

/// A writer of one datagram.
struct Out<'b>(&'b mut Vec<u8>);

impl Out<'_> {
    fn str8(&mut self, s: &str) -> Result<(), WireError> {
        let n = u8::try_from(s.len()).map_err(|_| WireError::TooLong)?;
        self.0.push(n);
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn source_index(s: TrackSource) -> u8 {
    TrackSource::ALL.iter().position(|x| *x == s).unwrap_or(0) as u8
}

/// Encodes a datagram into `buf` (cleared first) and signs it with `key`.
pub(crate) fn encode(
    buf: &mut Vec<u8>,
    head: &Head<'_>,
    body: &Body<'_>,
    key: &hmac::Key,
) -> Result<(), WireError> {
    buf.clear();
    buf.extend_from_slice(&MAGIC);
    buf.push(VERSION);
    buf.push(head.kind as u8);
    buf.extend_from_slice(&head.call.to_be_bytes());
    let mut o = Out(buf);
    o.str8(head.node)?;
    o.str8(head.pid)?;
    o.0.push(source_index(head.source));
    match body {
        Body::Media(m) => {
            o.str8(m.rid.unwrap_or(""))?;
            o.0.extend_from_slice(&m.ssrc.to_be_bytes());
            o.0.extend_from_slice(&m.version.to_be_bytes());
            o.0.extend_from_slice(&m.seq.to_be_bytes());
            o.0.extend_from_slice(&m.ts.to_be_bytes());
            o.0.push(m.pt);
            let flags = u8::from(m.marker)
                | u8::from(m.audio_level.is_some()) << 1
                | u8::from(m.voice_activity.is_some()) << 2
                | u8::from(m.voice_activity == Some(true)) << 3
                | u8::from(m.orientation.is_some()) << 4;
            o.0.push(flags);
            o.0.push(m.audio_level.unwrap_or(0) as u8);
            o.0.push(m.orientation.unwrap_or(0));
            o.0.extend_from_slice(m.payload);
        }
        Body::Announce(tracks) => {
            serde_json::to_writer(&mut *o.0, tracks).map_err(|_| WireError::Malformed)?;
        }
        Body::Keyframe { rid, fir, force } => {
            o.str8(rid.unwrap_or(""))?;
            o.0.push(u8::from(*fir) | u8::from(*force) << 1);
        }
    }
    let tag = hmac::sign(key, buf);
    buf.extend_from_slice(&tag.as_ref()[..MAC_LEN]);
    if buf.len() > MAX_DATAGRAM {
        return Err(WireError::TooLong);
    }
    Ok(())
}

/// A reader over a datagram's bytes.
struct In<'a>(&'a [u8]);

impl<'a> In<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn str8(&mut self) -> Result<&'a str, WireError> {
        let n = usize::from(self.u8()?);
        std::str::from_utf8(self.take(n)?).map_err(|_| WireError::Malformed)
    }
}

/// A decoded, not yet authenticated datagram: its head, and the rest for [`open`].
#[derive(Debug)]
pub(crate) struct Sealed<'a> {
    pub(crate) head: Head<'a>,
    signed: &'a [u8],
    mac: &'a [u8],
    body: &'a [u8],
}

/// Reads a datagram's head (who sent it, for which call) after checking its length (at most
/// [`MAX_DATAGRAM`]), magic, version and kind; the MAC is checked by [`open`].
pub(crate) fn peek(data: &[u8]) -> Result<Sealed<'_>, WireError> {
    if data.len() < FIXED + MAC_LEN {
        return Err(WireError::Truncated);
    }
    if data.len() > MAX_DATAGRAM {
        return Err(WireError::TooLong);
    }
    let (signed, mac) = data.split_at(data.len() - MAC_LEN);
    let mut r = In(signed);
    if r.arr::<2>()? != MAGIC || r.u8()? != VERSION {
        return Err(WireError::BadHeader);
    }
    let kind = match r.u8()? {
        1 => Kind::Media,
        2 => Kind::Announce,
        3 => Kind::Keyframe,
        _ => return Err(WireError::BadHeader),
    };
    let call = u64::from_be_bytes(r.arr()?);
    let node = r.str8()?;
    let pid = r.str8()?;
    let source = *TrackSource::ALL
        .get(usize::from(r.u8()?))
        .ok_or(WireError::Malformed)?;
    Ok(Sealed {
        head: Head {
            kind,
            call,
            node,
            pid,
            source,
        },
        signed,
        mac,
        body: r.0,
    })
}

/// Checks the MAC with the sender's `key` and decodes the body.
pub(crate) fn open<'a>(s: &Sealed<'a>, key: &hmac::Key) -> Result<Body<'a>, WireError> {
    let tag = hmac::sign(key, s.signed);
    constant_time::verify_slices_are_equal(&tag.as_ref()[..MAC_LEN], s.mac)
        .map_err(|_| WireError::BadMac)?;
    let mut r = In(s.body);
    Ok(match s.head.kind {
        Kind::Media => {
            let rid = Some(r.str8()?).filter(|x| !x.is_empty());
            let ssrc = u32::from_be_bytes(r.arr()?);
            let version = u64::from_be_bytes(r.arr()?);
            let seq = u64::from_be_bytes(r.arr()?);
            let ts = u32::from_be_bytes(r.arr()?);
            let pt = r.u8()?;
            let flags = r.u8()?;
            let level = r.u8()? as i8;
            let orientation = r.u8()?;
            Body::Media(Media {
                rid,
                ssrc,
                version,
                seq,
                ts,
                pt,
                marker: flags & 1 != 0,
                audio_level: (flags & 2 != 0).then_some(level),
                voice_activity: (flags & 4 != 0).then_some(flags & 8 != 0),
                orientation: (flags & 16 != 0).then_some(orientation),
                payload: r.0,
            })
        }
        Kind::Announce => {
            Body::Announce(serde_json::from_slice(r.0).map_err(|_| WireError::Malformed)?)
        }
        Kind::Keyframe => {
            let rid = Some(r.str8()?).filter(|x| !x.is_empty());
            let flags = r.u8()?;
            Body::Keyframe {
                rid,
                fir: flags & 1 != 0,
                force: flags & 2 != 0,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(node: &str) -> hmac::Key {
        node_key(&[7; 32], node)
    }

    fn media(payload: &[u8]) -> Media<'_> {
        Media {
            rid: Some("h"),
            ssrc: 0x1234_5678,
            version: 42,
            seq: 70_000,
            ts: 0xdead_beef,
            pt: 111,
            marker: true,
            audio_level: Some(-30),
            voice_activity: Some(true),
            orientation: None,
            payload,
        }
    }

    fn head(kind: Kind) -> Head<'static> {
        Head {
            kind,
            call: 99,
            node: "node-a",
            pid: "p1",
            source: TrackSource::Camera,
        }
    }

    #[test]
    fn media_round_trips() {
        let mut buf = Vec::new();
        let m = media(b"payload bytes");
        encode(
            &mut buf,
            &head(Kind::Media),
            &Body::Media(m.clone()),
            &key("node-a"),
        )
        .unwrap();
        let s = peek(&buf).unwrap();
        assert_eq!(s.head, head(Kind::Media));
        match open(&s, &key("node-a")).unwrap() {
            Body::Media(got) => assert_eq!(got, m),
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn announce_and_keyframe_round_trip() {
        let mut buf = Vec::new();
        let tracks = vec![TrackDesc {
            source: TrackSource::Microphone,
            audio: true,
            params: Vec::new(),
            rids: vec!["q".into()],
        }];
        let b = Body::Announce(tracks);
        encode(&mut buf, &head(Kind::Announce), &b, &key("node-a")).unwrap();
        match open(&peek(&buf).unwrap(), &key("node-a")).unwrap() {
            Body::Announce(t) => {
                assert_eq!(t.len(), 1);
                assert_eq!(t[0].source, TrackSource::Microphone);
                assert_eq!(t[0].rids, ["q"]);
            }
            other => panic!("decoded {other:?}"),
        }
        let b = Body::Keyframe {
            rid: None,
            fir: true,
            force: true,
        };
        encode(&mut buf, &head(Kind::Keyframe), &b, &key("node-a")).unwrap();
        assert!(matches!(
            open(&peek(&buf).unwrap(), &key("node-a")).unwrap(),
            Body::Keyframe {
                rid: None,
                fir: true,
                force: true
            }
        ));
    }

    #[test]
    fn another_nodes_key_or_a_flipped_bit_fails_the_mac() {
        let mut buf = Vec::new();
        encode(
            &mut buf,
            &head(Kind::Media),
            &Body::Media(media(b"x")),
            &key("node-a"),
        )
        .unwrap();
        // A node claiming to be node-a without node-a's key (its own, or another secret).
        let s = peek(&buf).unwrap();
        assert_eq!(open(&s, &key("node-b")).err(), Some(WireError::BadMac));
        assert_eq!(
            open(&s, &node_key(&[8; 32], "node-a")).err(),
            Some(WireError::BadMac)
        );
        // Every single-bit change is detected (a replay into another call changes the key).
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 1;
            let ok = peek(&b).ok().map(|s| open(&s, &key("node-a")).is_ok());
            assert_ne!(ok, Some(true), "bit flip at {i} accepted");
        }
    }

    #[test]
    fn truncated_and_garbage_never_panic() {
        let mut buf = Vec::new();
        encode(
            &mut buf,
            &head(Kind::Media),
            &Body::Media(media(b"abc")),
            &key("node-a"),
        )
        .unwrap();
        for n in 0..buf.len() {
            if let Ok(s) = peek(&buf[..n]) {
                assert!(open(&s, &key("node-a")).is_err());
            }
        }
        // Pseudo-random garbage, including a valid-looking head with lengths past the end.
        let mut x = 0x9e37_79b9_u32;
        for _ in 0..2000 {
            let len = (x % 200) as usize;
            let mut g = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                g.push(x as u8);
            }
            if g.len() > 4 {
                g[..4].copy_from_slice(&[b'G', b'R', 1, (x % 4) as u8]);
            }
            if let Ok(s) = peek(&g) {
                assert!(open(&s, &key("node-a")).is_err());
            }
        }
    }

    #[test]
    fn a_datagram_over_the_limit_is_refused_at_its_head() {
        let mut buf = Vec::new();
        encode(
            &mut buf,
            &head(Kind::Media),
            &Body::Media(media(&[7; MAX_DATAGRAM - 200])),
            &key("node-a"),
        )
        .unwrap();
        assert!(buf.len() <= MAX_DATAGRAM);
        assert!(peek(&buf).is_ok());
        // One byte more than the limit (what the receive thread's buffer holds at most).
        buf.resize(MAX_DATAGRAM + 1, 0);
        assert_eq!(peek(&buf).err(), Some(WireError::TooLong));
    }

    #[test]
    fn call_keys_differ_per_call_and_agree_across_nodes() {
        let a: CallCid = "default:a".parse().unwrap();
        let b: CallCid = "default:b".parse().unwrap();
        assert_ne!(call_key(&a), call_key(&b));
        assert_eq!(call_key(&a), call_key(&"default:a".parse().unwrap()));
    }
}
