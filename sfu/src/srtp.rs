//! Our own SRTP/SRTCP (RFC 3711, RFC 7714) on aws-lc-rs, for the lean audio path.
//!
//! str0m keeps ICE, DTLS, SDP and RTCP input; the DTLS adapter (`dtls.rs`) sees the DTLS-SRTP
//! keying material and the negotiated profile, and the engine protects forwarded RTP and its own
//! sender reports with a [`SrtpSession`] built from them, without a str0m drive per packet. The
//! inbound direction ([`SrtpReceiver`]) exists so tests and later code can decrypt.
//!
//! Pure: no sockets, no clocks. Profiles: `AEAD_AES_128_GCM`, `AEAD_AES_256_GCM` (RFC 7714) and
//! `AES128_CM_HMAC_SHA1_80` (RFC 3711). Session keys come from the master key and salt by the
//! AES-CM PRF of RFC 3711 section 4.3 with a key derivation rate of 0 (the only rate DTLS-SRTP
//! uses, RFC 5764 section 4.1.2); for GCM the 12-byte master salt is zero-padded to the PRF's
//! 14 bytes (RFC 7714 section 12), and AEAD_AES_256_GCM derives with AES-256 (RFC 6188).
//!
//! Every key (an AEAD key, an AES-CTR key schedule, an HMAC key) is built once per context; a
//! packet costs one copy into the caller's buffer, an in-place seal or keystream XOR, and (for
//! AES-CM) one HMAC; the nonce or counter block is built on the stack, so protecting allocates
//! nothing when the output buffer has the capacity.
//!
//! Nonce uniqueness is the caller's: a GCM nonce is (SSRC, extended sequence) for RTP and
//! (SSRC, SRTCP index) for RTCP under one key. Two senders on the same keys (str0m and this
//! module on one peer) must therefore never protect the same SSRC's RTP, and must keep their
//! SRTCP indices apart on a shared SSRC ([`SrtpSession::set_rtcp_index_base`]).

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::cipher::{self, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::hmac;
use str0m_proto::crypto::dtls::SrtpProfile;

/// Which side of the DTLS handshake we were (decides which half of the keying material is ours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtlsRole {
    /// The DTLS client: we protect with the client write key and salt.
    Client,
    /// The DTLS server: we protect with the server write key and salt.
    Server,
}

/// Why a packet could not be protected or unprotected, or a session not built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    /// The negotiated protection profile is not one this module implements.
    #[error("unsupported SRTP profile {0:?}")]
    UnsupportedProfile(SrtpProfile),
    /// The DTLS-SRTP keying material has the wrong length for the profile.
    #[error("keying material is {got} bytes, the profile needs {expected}")]
    KeyingMaterialLength {
        /// Bytes the profile needs (2 keys + 2 salts).
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// A session key or salt has the wrong length for the profile.
    #[error("key or salt is {got} bytes, the profile needs {expected}")]
    KeyLength {
        /// Bytes the profile needs.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// The bytes given as an RTP header are not exactly one well-formed RTP version 2 header
    /// (fixed part, CSRCs and extension).
    #[error("malformed RTP header")]
    RtpHeader,
    /// The header's sequence number is not the low 16 bits of the extended sequence number.
    #[error("RTP header carries sequence {header}, the extended sequence number is {ext_seq}")]
    SequenceMismatch {
        /// The sequence number in the header.
        header: u16,
        /// The extended sequence number given.
        ext_seq: u64,
    },
    /// The extended sequence number does not fit SRTP's 48-bit packet index: the session must be
    /// rekeyed.
    #[error("extended sequence number {0} exceeds the 48-bit SRTP index")]
    IndexExhausted(u64),
    /// An RTCP packet shorter than its 8-byte header (with the sender SSRC).
    #[error("RTCP packet shorter than 8 bytes")]
    RtcpTooShort,
    /// The 31-bit SRTCP index is used up (or a base beyond it was asked): the session must be
    /// rekeyed.
    #[error("SRTCP index exhausted")]
    RtcpIndexExhausted,
    /// An SRTP or SRTCP packet too short to hold its header, trailer and tag.
    #[error("protected packet too short")]
    TooShort,
    /// The authentication tag does not verify: forged, corrupted, or another key.
    #[error("authentication failed")]
    Authentication,
    /// The packet's index was already received, or is older than the replay window.
    #[error("replayed or too old: SSRC {ssrc:#010x}, index {index}")]
    Replay {
        /// The stream.
        ssrc: u32,
        /// The packet's (extended) index.
        index: u64,
    },
    /// An authenticated packet would start a stream beyond [`MAX_STREAMS`].
    #[error("more than {MAX_STREAMS} inbound streams")]
    TooManyStreams,
    /// An SRTP packet given to a receiver built for SRTCP only ([`SrtpReceiver::rtcp_only`]).
    #[error("this receiver has no SRTP context (SRTCP only)")]
    NoRtpContext,
    /// aws-lc-rs refused an operation (a key it would not build, a length it would not process).
    #[error("crypto operation refused")]
    Crypto,
}

impl From<aws_lc_rs::error::Unspecified> for SrtpError {
    fn from(_: aws_lc_rs::error::Unspecified) -> Self {
        SrtpError::Crypto
    }
}

/// Most inbound streams (SSRCs) one [`SrtpReceiver`] tracks, per RTP and per RTCP.
pub const MAX_STREAMS: usize = 256;

/// Packets the replay window remembers behind the highest index received (RFC 3711 section
/// 3.3.2 asks for at least 64).
pub const REPLAY_WINDOW: u64 = 128;

/// The fixed RTP header.
const RTP_FIXED: usize = 12;
/// The E flag of the SRTCP trailer word.
const E_FLAG: u32 = 0x8000_0000;
/// The largest SRTCP index (31 bits).
const MAX_RTCP_INDEX: u32 = 0x7fff_ffff;
/// The largest SRTP packet index (48 bits).
const MAX_RTP_INDEX: u64 = (1 << 48) - 1;
/// AES-CM HMAC-SHA1-80: tag bytes.
const HMAC_TAG: usize = 10;
/// AES-CM: session salt bytes.
const CM_SALT: usize = 14;
/// AES-CM: session authentication key bytes.
const CM_AUTH_KEY: usize = 20;
/// GCM: tag bytes.
const GCM_TAG: usize = 16;
/// GCM: session salt bytes.
const GCM_SALT: usize = 12;
/// The SRTCP trailer (E flag + 31-bit index).
const RTCP_TRAILER: usize = 4;

/// RFC 3711 section 4.3.1 key derivation labels.
mod label {
    pub const RTP_ENCRYPTION: u8 = 0x00;
    pub const RTP_AUTH: u8 = 0x01;
    pub const RTP_SALT: u8 = 0x02;
    pub const RTCP_ENCRYPTION: u8 = 0x03;
    pub const RTCP_AUTH: u8 = 0x04;
    pub const RTCP_SALT: u8 = 0x05;
}

/// The profile's sizes.
#[derive(Clone, Copy)]
struct Params {
    key: usize,
    salt: usize,
    gcm: bool,
}

fn params(profile: SrtpProfile) -> Result<Params, SrtpError> {
    match profile {
        SrtpProfile::AES128_CM_SHA1_80 => Ok(Params {
            key: 16,
            salt: CM_SALT,
            gcm: false,
        }),
        SrtpProfile::AEAD_AES_128_GCM => Ok(Params {
            key: 16,
            salt: GCM_SALT,
            gcm: true,
        }),
        SrtpProfile::AEAD_AES_256_GCM => Ok(Params {
            key: 32,
            salt: GCM_SALT,
            gcm: true,
        }),
        other => Err(SrtpError::UnsupportedProfile(other)),
    }
}

/// AES in the key's size (128 or 256 bits).
fn aes_for(key: &[u8]) -> Result<&'static cipher::Algorithm, SrtpError> {
    match key.len() {
        16 => Ok(&cipher::AES_128),
        32 => Ok(&cipher::AES_256),
        n => Err(SrtpError::KeyLength {
            expected: 16,
            got: n,
        }),
    }
}

/// The AES-CM PRF of RFC 3711 section 4.3.3 with kdr = 0: the keystream of AES-CTR under the
/// master key, from the counter block (master salt, zero-padded to 14 bytes, with `label` XORed
/// into byte 7) || 0x0000, written into `out`.
fn derive(
    master_key: &[u8],
    master_salt: &[u8],
    label: u8,
    out: &mut [u8],
) -> Result<(), SrtpError> {
    if master_salt.len() > CM_SALT {
        return Err(SrtpError::KeyLength {
            expected: CM_SALT,
            got: master_salt.len(),
        });
    }
    let mut iv = [0u8; 16];
    iv[..master_salt.len()].copy_from_slice(master_salt);
    iv[7] ^= label;
    let key = EncryptingKey::ctr(UnboundCipherKey::new(aes_for(master_key)?, master_key)?)?;
    out.fill(0);
    key.less_safe_encrypt(out, EncryptionContext::Iv128(iv.into()))?;
    Ok(())
}

/// AES-CM (RFC 3711 section 4.1.1) with HMAC-SHA1-80 (section 4.2.1): one direction of RTP or
/// RTCP.
struct CmCipher {
    ctr: EncryptingKey,
    salt: [u8; CM_SALT],
    auth: hmac::Key,
}

impl CmCipher {
    fn new(key: &[u8], salt: &[u8], auth: &[u8]) -> Result<Self, SrtpError> {
        let salt: [u8; CM_SALT] = salt.try_into().map_err(|_| SrtpError::KeyLength {
            expected: CM_SALT,
            got: salt.len(),
        })?;
        Ok(CmCipher {
            ctr: EncryptingKey::ctr(UnboundCipherKey::new(aes_for(key)?, key)?)?,
            salt,
            auth: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, auth),
        })
    }

    /// XORs the keystream for (SSRC, index) into `data`: IV = (salt << 16) XOR (SSRC << 64) XOR
    /// (index << 16). AES-CTR is its own inverse.
    fn apply(&self, ssrc: u32, index: u64, data: &mut [u8]) -> Result<(), SrtpError> {
        if data.is_empty() {
            return Ok(());
        }
        let mut iv = [0u8; 16];
        iv[..CM_SALT].copy_from_slice(&self.salt);
        for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *b ^= s;
        }
        for (b, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
            *b ^= s;
        }
        self.ctr
            .less_safe_encrypt(data, EncryptionContext::Iv128(iv.into()))?;
        Ok(())
    }

    /// The 80-bit tag over `parts` concatenated.
    fn tag(&self, parts: &[&[u8]]) -> [u8; HMAC_TAG] {
        let mut ctx = hmac::Context::with_key(&self.auth);
        for p in parts {
            ctx.update(p);
        }
        let full = ctx.sign();
        let mut tag = [0u8; HMAC_TAG];
        tag.copy_from_slice(&full.as_ref()[..HMAC_TAG]);
        tag
    }
}

/// AES-GCM (RFC 7714): one direction of RTP or RTCP.
struct GcmCipher {
    key: LessSafeKey,
    salt: [u8; GCM_SALT],
}

impl GcmCipher {
    fn new(key: &[u8], salt: &[u8]) -> Result<Self, SrtpError> {
        let algorithm = match key.len() {
            16 => &aead::AES_128_GCM,
            32 => &aead::AES_256_GCM,
            n => {
                return Err(SrtpError::KeyLength {
                    expected: 16,
                    got: n,
                })
            }
        };
        let salt: [u8; GCM_SALT] = salt.try_into().map_err(|_| SrtpError::KeyLength {
            expected: GCM_SALT,
            got: salt.len(),
        })?;
        Ok(GcmCipher {
            key: LessSafeKey::new(UnboundKey::new(algorithm, key)?),
            salt,
        })
    }

    /// RFC 7714 sections 8.1 and 9.1: (00 00 || SSRC || `high` || `low`) XOR salt, where
    /// (high, low) is (ROC, SEQ) for RTP and (0, index) for RTCP.
    fn nonce(&self, ssrc: u32, high: u32, low: u16) -> Nonce {
        let mut iv = [0u8; GCM_SALT];
        iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
        iv[6..10].copy_from_slice(&high.to_be_bytes());
        iv[10..12].copy_from_slice(&low.to_be_bytes());
        for (b, s) in iv.iter_mut().zip(&self.salt) {
            *b ^= s;
        }
        Nonce::assume_unique_for_key(iv)
    }

    /// The RTCP nonce for a 31-bit index.
    fn rtcp_nonce(&self, ssrc: u32, index: u32) -> Nonce {
        // The index's high 16 bits sit in bytes 8..10 ("00 00 || 0 || index"), the low 16 in
        // bytes 10..12: the same layout as (ROC, SEQ) shifted by two bytes.
        let mut iv = [0u8; GCM_SALT];
        iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
        iv[8..12].copy_from_slice(&index.to_be_bytes());
        for (b, s) in iv.iter_mut().zip(&self.salt) {
            *b ^= s;
        }
        Nonce::assume_unique_for_key(iv)
    }
}

/// One direction's cipher for RTP or for RTCP.
enum Cipher {
    /// Boxed: the HMAC key holds a whole HMAC context (about 1.7 KiB).
    Cm(Box<CmCipher>),
    Gcm(GcmCipher),
}

impl Cipher {
    /// The RTP tag's length.
    fn overhead(&self) -> usize {
        match self {
            Cipher::Cm(_) => HMAC_TAG,
            Cipher::Gcm(_) => GCM_TAG,
        }
    }
}

/// The RTP and RTCP ciphers of one direction, derived from one master key and salt.
struct Contexts {
    /// Shared with the session's [`RtpSealer`]s.
    rtp: Arc<Cipher>,
    rtcp: Cipher,
}

/// Which of a direction's two streams a cipher is for (its key derivation labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    Rtp,
    Rtcp,
}

/// One direction's master key and salt (RFC 5764 keying material, one side's half).
struct Master<'a> {
    profile: SrtpProfile,
    key: &'a [u8],
    salt: &'a [u8],
}

impl Contexts {
    /// Derives the six session keys (RFC 3711 section 4.3) and builds the ciphers once.
    fn derive(master: &Master<'_>) -> Result<Self, SrtpError> {
        Ok(Contexts {
            rtp: Arc::new(master.cipher(Stream::Rtp)?),
            rtcp: master.cipher(Stream::Rtcp)?,
        })
    }
}

impl Master<'_> {
    /// Derives one stream's three session keys (encryption, salt, and for AES-CM
    /// authentication) and builds its cipher.
    fn cipher(&self, stream: Stream) -> Result<Cipher, SrtpError> {
        let (profile, master_key, master_salt) = (self.profile, self.key, self.salt);
        let p = params(profile)?;
        if master_key.len() != p.key {
            return Err(SrtpError::KeyLength {
                expected: p.key,
                got: master_key.len(),
            });
        }
        if master_salt.len() != p.salt {
            return Err(SrtpError::KeyLength {
                expected: p.salt,
                got: master_salt.len(),
            });
        }
        let mut key = [0u8; 32];
        let mut salt = [0u8; CM_SALT];
        let mut auth = [0u8; CM_AUTH_KEY];
        let mut one = |enc: u8, auth_label: u8, salt_label: u8| -> Result<Cipher, SrtpError> {
            let key = &mut key[..p.key];
            let salt = &mut salt[..p.salt];
            derive(master_key, master_salt, enc, key)?;
            derive(master_key, master_salt, salt_label, salt)?;
            let cipher = if p.gcm {
                Cipher::Gcm(GcmCipher::new(key, salt)?)
            } else {
                derive(master_key, master_salt, auth_label, &mut auth)?;
                Cipher::Cm(Box::new(CmCipher::new(key, salt, &auth)?))
            };
            Ok(cipher)
        };
        let cipher = match stream {
            Stream::Rtp => one(label::RTP_ENCRYPTION, label::RTP_AUTH, label::RTP_SALT),
            Stream::Rtcp => one(label::RTCP_ENCRYPTION, label::RTCP_AUTH, label::RTCP_SALT),
        };
        // Leave no session key material behind on the stack.
        key.fill(0);
        salt.fill(0);
        auth.fill(0);
        cipher
    }

    /// One direction's master key and salt out of RFC 5764 keying material
    /// (client key | server key | client salt | server salt).
    fn from_keying_material(
        profile: SrtpProfile,
        keying_material: &'_ [u8],
        side: DtlsRole,
    ) -> Result<Master<'_>, SrtpError> {
        let p = params(profile)?;
        let expected = 2 * (p.key + p.salt);
        if keying_material.len() != expected {
            return Err(SrtpError::KeyingMaterialLength {
                expected,
                got: keying_material.len(),
            });
        }
        let (keys, salts) = keying_material.split_at(2 * p.key);
        let (client_key, server_key) = keys.split_at(p.key);
        let (client_salt, server_salt) = salts.split_at(p.salt);
        let (key, salt) = match side {
            DtlsRole::Client => (client_key, client_salt),
            DtlsRole::Server => (server_key, server_salt),
        };
        Ok(Master { profile, key, salt })
    }
}

/// The length of the RTP header (fixed part, CSRCs, extension) at the start of `packet`, or
/// `None` when it is not a version 2 RTP header that fits.
fn rtp_header_len(packet: &[u8]) -> Option<usize> {
    let first = *packet.first()?;
    if packet.len() < RTP_FIXED || first >> 6 != 2 {
        return None;
    }
    let mut len = RTP_FIXED + 4 * usize::from(first & 0x0f);
    if first & 0x10 != 0 {
        let words = packet.get(len + 2..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    (packet.len() >= len).then_some(len)
}

/// A big-endian u32 at `at` (the caller checked the length).
fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Outbound SRTP and SRTCP for one DTLS-SRTP association: our half of the keying material.
pub struct SrtpSession {
    profile: SrtpProfile,
    ctx: Contexts,
    /// The next SRTCP index.
    rtcp_index: u32,
}

impl std::fmt::Debug for SrtpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpSession")
            .field("profile", &self.profile)
            .field("rtcp_index", &self.rtcp_index)
            .finish_non_exhaustive()
    }
}

/// The RTP cipher of one [`SrtpSession`], shared ([`SrtpSession::rtp_sealer`]): what a sender
/// keeps next to each stream so protecting a packet reads no other state of the session. The
/// caller owns the nonce discipline exactly as with the session (one extended sequence number
/// per SSRC is protected once).
#[derive(Clone)]
pub struct RtpSealer(Arc<Cipher>);

impl std::fmt::Debug for RtpSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtpSealer").finish_non_exhaustive()
    }
}

impl RtpSealer {
    /// Bytes a protected packet gains (the tag: 10 for AES-CM, 16 for GCM).
    pub fn overhead(&self) -> usize {
        self.0.overhead()
    }

    /// [`SrtpSession::protect_rtp_in_place`] with this cipher.
    pub fn protect_in_place(
        &self,
        buf: &mut [u8],
        header_len: usize,
        len: usize,
        ext_seq: u64,
    ) -> Result<usize, SrtpError> {
        seal_rtp(&self.0, buf, header_len, len, ext_seq)
    }

    /// [`SrtpSession::protect_rtp`] with this cipher.
    pub fn protect(
        &self,
        header: &[u8],
        payload: &[u8],
        ext_seq: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), SrtpError> {
        protect_into(&self.0, header, payload, ext_seq, out)
    }
}

/// Appends header ++ payload to `out` (cleared first) and protects it there.
fn protect_into(
    cipher: &Cipher,
    header: &[u8],
    payload: &[u8],
    ext_seq: u64,
    out: &mut Vec<u8>,
) -> Result<(), SrtpError> {
    out.clear();
    let len = header.len() + payload.len();
    out.reserve(len + cipher.overhead());
    out.extend_from_slice(header);
    out.extend_from_slice(payload);
    out.resize(len + cipher.overhead(), 0);
    match seal_rtp(cipher, out, header.len(), len, ext_seq) {
        Ok(n) => {
            out.truncate(n);
            Ok(())
        }
        Err(e) => {
            out.clear();
            Err(e)
        }
    }
}

/// Protects `buf[..len]` (an RTP header of `header_len` bytes, then the payload) in place with
/// `cipher`; the tag goes after it. Returns the protected length.
fn seal_rtp(
    cipher: &Cipher,
    buf: &mut [u8],
    header_len: usize,
    len: usize,
    ext_seq: u64,
) -> Result<usize, SrtpError> {
    let total = len + cipher.overhead();
    if buf.len() < total || header_len > len {
        return Err(SrtpError::TooShort);
    }
    let packet = &mut buf[..total];
    if rtp_header_len(&packet[..header_len]) != Some(header_len) {
        return Err(SrtpError::RtpHeader);
    }
    let seq = u16::from_be_bytes([packet[2], packet[3]]);
    if u64::from(seq) != ext_seq & 0xffff {
        return Err(SrtpError::SequenceMismatch {
            header: seq,
            ext_seq,
        });
    }
    if ext_seq > MAX_RTP_INDEX {
        return Err(SrtpError::IndexExhausted(ext_seq));
    }
    let ssrc = be32(packet, 8);
    // The ROC is the top 32 of the 48 bits: the cast keeps all of them.
    let roc = (ext_seq >> 16) as u32;
    let (head, rest) = packet.split_at_mut(header_len);
    let (body, trailer) = rest.split_at_mut(len - header_len);
    match cipher {
        Cipher::Gcm(c) => {
            let tag = c.key.seal_in_place_separate_tag(
                c.nonce(ssrc, roc, seq),
                Aad::from(&*head),
                body,
            )?;
            trailer.copy_from_slice(tag.as_ref());
        }
        Cipher::Cm(c) => {
            c.apply(ssrc, ext_seq, body)?;
            let tag = c.tag(&[head, body, &roc.to_be_bytes()]);
            trailer.copy_from_slice(&tag);
        }
    }
    Ok(total)
}

impl SrtpSession {
    /// From RFC 5764 keying material (client key | server key | client salt | server salt):
    /// derives the session keys of our side (`role`) and builds every cipher once.
    ///
    /// Fails for a profile other than `AES128_CM_SHA1_80`, `AEAD_AES_128_GCM` and
    /// `AEAD_AES_256_GCM`, or keying material of the wrong length.
    pub fn new(
        profile: SrtpProfile,
        keying_material: &[u8],
        role: DtlsRole,
    ) -> Result<Self, SrtpError> {
        let master = Master::from_keying_material(profile, keying_material, role)?;
        Ok(SrtpSession {
            profile,
            ctx: Contexts::derive(&master)?,
            rtcp_index: 0,
        })
    }

    /// The negotiated profile.
    pub fn profile(&self) -> SrtpProfile {
        self.profile
    }

    /// Bytes [`SrtpSession::protect_rtp`] adds to header + payload (the tag: 10 for AES-CM, 16
    /// for GCM).
    pub fn rtp_overhead(&self) -> usize {
        self.ctx.rtp.overhead()
    }

    /// Bytes [`SrtpSession::protect_rtcp`] adds to the RTCP packet (the index word and the tag).
    pub fn rtcp_overhead(&self) -> usize {
        RTCP_TRAILER
            + match self.ctx.rtcp {
                Cipher::Cm(_) => HMAC_TAG,
                Cipher::Gcm(_) => GCM_TAG,
            }
    }

    /// Appends header ++ encrypted payload ++ tag to `out` (out is cleared first). `header` is
    /// a complete RTP header (with CSRCs and extensions) whose seq is the low 16 bits of
    /// `ext_seq`; the rollover counter is `ext_seq >> 16` (the caller keeps the extended
    /// sequence number, so no ROC guessing). Does not allocate when `out` has capacity for
    /// header + payload + [`SrtpSession::rtp_overhead`].
    ///
    /// Fails (and leaves `out` empty) when `header` is not exactly one RTP header, its sequence
    /// number is not `ext_seq`'s, or `ext_seq` exceeds 48 bits.
    pub fn protect_rtp(
        &mut self,
        header: &[u8],
        payload: &[u8],
        ext_seq: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), SrtpError> {
        protect_into(&self.ctx.rtp, header, payload, ext_seq, out)
    }

    /// [`SrtpSession::protect_rtp`] in place: `buf[..len]` holds one RTP packet (a header of
    /// `header_len` bytes, then the payload), and `buf` has room for
    /// [`SrtpSession::rtp_overhead`] more bytes after it. Encrypts the payload where it is,
    /// writes the tag after it and returns the protected length. No copy, no allocation: the
    /// caller builds the packet straight into the datagram it sends.
    ///
    /// Fails (leaving `buf` in an unspecified state) for the same reasons as
    /// [`SrtpSession::protect_rtp`], or when `buf` is shorter than `len` plus the overhead.
    pub fn protect_rtp_in_place(
        &mut self,
        buf: &mut [u8],
        header_len: usize,
        len: usize,
        ext_seq: u64,
    ) -> Result<usize, SrtpError> {
        seal_rtp(&self.ctx.rtp, buf, header_len, len, ext_seq)
    }

    /// A handle on this session's RTP cipher (shared, not copied): it protects exactly as
    /// [`SrtpSession::protect_rtp_in_place`] does, without borrowing the session.
    pub fn rtp_sealer(&self) -> RtpSealer {
        RtpSealer(self.ctx.rtp.clone())
    }

    /// Sets the SRTCP index the next [`SrtpSession::protect_rtcp`] uses (then it counts up).
    /// Lets the caller keep clear of another sender's SRTCP counter on the same keys (str0m's,
    /// which starts near 0): a GCM nonce is (SSRC, index), so the two must never protect the
    /// same SSRC with the same index. Fails beyond the 31-bit index.
    pub fn set_rtcp_index_base(&mut self, index: u32) -> Result<(), SrtpError> {
        if index > MAX_RTCP_INDEX {
            return Err(SrtpError::RtcpIndexExhausted);
        }
        self.rtcp_index = index;
        Ok(())
    }

    /// The SRTCP index the next [`SrtpSession::protect_rtcp`] will use.
    pub fn next_rtcp_index(&self) -> u32 {
        self.rtcp_index
    }

    /// A complete (compound or reduced-size) RTCP packet → SRTCP in `out` (cleared first):
    /// the first 8 bytes in clear, the rest encrypted, the E flag with the 31-bit index from this
    /// session's own counter, and the tag (AES-CM: index word then tag, the tag covering it;
    /// GCM: tag then index word, the header and index word as associated data). Does not
    /// allocate when `out` has capacity for the packet + [`SrtpSession::rtcp_overhead`].
    ///
    /// Fails when the packet is shorter than 8 bytes or the index is used up (rekey).
    pub fn protect_rtcp(&mut self, rtcp: &[u8], out: &mut Vec<u8>) -> Result<(), SrtpError> {
        out.clear();
        if rtcp.len() < 8 {
            return Err(SrtpError::RtcpTooShort);
        }
        let index = self.rtcp_index;
        if index > MAX_RTCP_INDEX {
            return Err(SrtpError::RtcpIndexExhausted);
        }
        let ssrc = be32(rtcp, 4);
        let word = (E_FLAG | index).to_be_bytes();
        out.extend_from_slice(rtcp);
        let sealed = match &self.ctx.rtcp {
            Cipher::Gcm(c) => {
                let mut aad = [0u8; 12];
                aad[..8].copy_from_slice(&rtcp[..8]);
                aad[8..].copy_from_slice(&word);
                c.key
                    .seal_in_place_separate_tag(
                        c.rtcp_nonce(ssrc, index),
                        Aad::from(aad),
                        &mut out[8..],
                    )
                    .map(|tag| {
                        out.extend_from_slice(tag.as_ref());
                        out.extend_from_slice(&word);
                    })
                    .map_err(SrtpError::from)
            }
            Cipher::Cm(c) => c.apply(ssrc, u64::from(index), &mut out[8..]).map(|()| {
                out.extend_from_slice(&word);
                let tag = c.tag(&[&out[..]]);
                out.extend_from_slice(&tag);
            }),
        };
        match sealed {
            Ok(()) => {
                // Past the last index the counter stays out of range: the next call fails.
                self.rtcp_index = index + 1;
                Ok(())
            }
            Err(e) => {
                out.clear();
                Err(e)
            }
        }
    }
}

/// A replay window over one stream's indices (RFC 3711 section 3.3.2).
#[derive(Debug, Clone, Copy)]
struct ReplayWindow {
    /// The highest index accepted.
    highest: u64,
    /// Bit i: index `highest - i` was accepted.
    seen: u128,
}

impl ReplayWindow {
    /// A window whose first accepted index is `index`.
    fn starting_at(index: u64) -> Self {
        ReplayWindow {
            highest: index,
            seen: 1,
        }
    }

    /// Whether `index` is new and inside the window.
    fn fresh(&self, index: u64) -> bool {
        if index > self.highest {
            return true;
        }
        let behind = self.highest - index;
        behind < REPLAY_WINDOW && self.seen & (1u128 << behind) == 0
    }

    /// Records an authenticated `index` (which [`ReplayWindow::fresh`] accepted).
    fn accept(&mut self, index: u64) {
        if index > self.highest {
            let ahead = index - self.highest;
            self.seen = if ahead >= REPLAY_WINDOW {
                1
            } else {
                (self.seen << ahead) | 1
            };
            self.highest = index;
        } else {
            self.seen |= 1u128 << (self.highest - index);
        }
    }
}

/// The extended index of `seq` nearest to `highest` (RFC 3711 appendix A): the rollover counter
/// of the highest index received, or one more or one less.
fn estimate_index(highest: u64, seq: u16) -> u64 {
    let roc = highest >> 16;
    let last = highest & 0xffff;
    let seq = u64::from(seq);
    let v = if last < 0x8000 {
        if seq > last + 0x8000 && roc > 0 {
            roc - 1
        } else {
            roc
        }
    } else if seq + 0x8000 < last {
        roc + 1
    } else {
        roc
    };
    (v << 16) | seq
}

/// What [`SrtpReceiver::unprotect_rtp`] learnt about an authentic packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpUnprotected {
    /// The packet's SSRC.
    pub ssrc: u32,
    /// Its extended sequence number (ROC << 16 | SEQ).
    pub ext_seq: u64,
    /// The RTP header's length in the output (the payload follows it).
    pub header_len: usize,
}

/// What [`SrtpReceiver::unprotect_rtcp`] learnt about an authentic packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpUnprotected {
    /// The sender SSRC (bytes 4..8).
    pub ssrc: u32,
    /// The packet's SRTCP index.
    pub index: u32,
    /// Whether the packet was encrypted (E flag); if not, it was only authenticated.
    pub encrypted: bool,
}

/// Inbound SRTP and SRTCP for one DTLS-SRTP association: the peer's half of the keying
/// material, with a replay window per SSRC for RTP and for RTCP.
///
/// The rollover counter of an RTP stream is estimated from the highest index received (RFC 3711
/// appendix A); a stream's first packet is taken to have ROC 0.
pub struct SrtpReceiver {
    profile: SrtpProfile,
    /// `None` for a receiver of SRTCP only ([`SrtpReceiver::rtcp_only`]).
    rtp_cipher: Option<Cipher>,
    rtcp_cipher: Cipher,
    rtp: HashMap<u32, ReplayWindow>,
    rtcp: HashMap<u32, ReplayWindow>,
}

impl std::fmt::Debug for SrtpReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpReceiver")
            .field("profile", &self.profile)
            .field("rtp_streams", &self.rtp.len())
            .field("rtcp_streams", &self.rtcp.len())
            .finish_non_exhaustive()
    }
}

impl SrtpReceiver {
    /// From RFC 5764 keying material: derives the keys of the *other* side than `role` (what
    /// the peer protects with). Fails like [`SrtpSession::new`].
    pub fn new(
        profile: SrtpProfile,
        keying_material: &[u8],
        role: DtlsRole,
    ) -> Result<Self, SrtpError> {
        Self::build(profile, keying_material, role, true)
    }

    /// [`SrtpReceiver::new`] without the SRTP context: for a peer that sends us SRTCP but no
    /// SRTP (a subscriber), one AES key schedule less per peer. Its
    /// [`SrtpReceiver::unprotect_rtp`] fails with [`SrtpError::NoRtpContext`].
    pub fn rtcp_only(
        profile: SrtpProfile,
        keying_material: &[u8],
        role: DtlsRole,
    ) -> Result<Self, SrtpError> {
        Self::build(profile, keying_material, role, false)
    }

    fn build(
        profile: SrtpProfile,
        keying_material: &[u8],
        role: DtlsRole,
        with_rtp: bool,
    ) -> Result<Self, SrtpError> {
        let peer = match role {
            DtlsRole::Client => DtlsRole::Server,
            DtlsRole::Server => DtlsRole::Client,
        };
        let master = Master::from_keying_material(profile, keying_material, peer)?;
        Ok(SrtpReceiver {
            profile,
            rtp_cipher: with_rtp.then(|| master.cipher(Stream::Rtp)).transpose()?,
            rtcp_cipher: master.cipher(Stream::Rtcp)?,
            rtp: HashMap::new(),
            rtcp: HashMap::new(),
        })
    }

    /// Starts RTP stream `ssrc` at extended sequence number `ext_seq`, as received: another
    /// receiver of the same keys (str0m, before the engine took the stream over) reached it, so
    /// the rollover counter of the next packets is estimated from there instead of taken as 0
    /// for the first one. Replaces the stream's window if it had one. Fails beyond the 48-bit
    /// index or [`MAX_STREAMS`].
    pub fn start_rtp_at(&mut self, ssrc: u32, ext_seq: u64) -> Result<(), SrtpError> {
        if ext_seq > MAX_RTP_INDEX {
            return Err(SrtpError::Replay {
                ssrc,
                index: ext_seq,
            });
        }
        if !self.rtp.contains_key(&ssrc) && self.rtp.len() >= MAX_STREAMS {
            return Err(SrtpError::TooManyStreams);
        }
        self.rtp.insert(ssrc, ReplayWindow::starting_at(ext_seq));
        Ok(())
    }

    /// SRTP → header ++ decrypted payload in `out` (cleared first). Rejects (with `out` empty)
    /// a malformed or short packet, a tag that does not verify, and a replayed or too old
    /// index; only an authentic packet moves the replay window.
    pub fn unprotect_rtp(
        &mut self,
        packet: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<RtpUnprotected, SrtpError> {
        out.clear();
        let cipher = self.rtp_cipher.as_ref().ok_or(SrtpError::NoRtpContext)?;
        let header_len = rtp_header_len(packet).ok_or(SrtpError::RtpHeader)?;
        let tag_len = match cipher {
            Cipher::Cm(_) => HMAC_TAG,
            Cipher::Gcm(_) => GCM_TAG,
        };
        if packet.len() < header_len + tag_len {
            return Err(SrtpError::TooShort);
        }
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let ssrc = be32(packet, 8);
        let window = self.rtp.get(&ssrc).copied();
        let ext_seq = window.map_or(u64::from(seq), |w| estimate_index(w.highest, seq));
        if ext_seq > MAX_RTP_INDEX || window.is_some_and(|w| !w.fresh(ext_seq)) {
            return Err(SrtpError::Replay {
                ssrc,
                index: ext_seq,
            });
        }
        if window.is_none() && self.rtp.len() >= MAX_STREAMS {
            return Err(SrtpError::TooManyStreams);
        }
        let roc = (ext_seq >> 16) as u32;
        let body_end = packet.len() - tag_len;
        let opened = match cipher {
            Cipher::Gcm(c) => {
                out.extend_from_slice(&packet[..body_end]);
                let (head, body) = out.split_at_mut(header_len);
                c.key
                    .open_in_place_separate_tag(
                        c.nonce(ssrc, roc, seq),
                        Aad::from(&*head),
                        &packet[body_end..],
                        body,
                    )
                    .map(|_| ())
                    .map_err(|_| SrtpError::Authentication)
            }
            Cipher::Cm(c) => {
                let tag = c.tag(&[&packet[..body_end], &roc.to_be_bytes()]);
                verify_slices_are_equal(&tag, &packet[body_end..])
                    .map_err(|_| SrtpError::Authentication)
                    .and_then(|()| {
                        out.extend_from_slice(&packet[..body_end]);
                        c.apply(ssrc, ext_seq, &mut out[header_len..])
                    })
            }
        };
        if let Err(e) = opened {
            out.clear();
            return Err(e);
        }
        match window {
            Some(mut w) => {
                w.accept(ext_seq);
                self.rtp.insert(ssrc, w);
            }
            None => {
                self.rtp.insert(ssrc, ReplayWindow::starting_at(ext_seq));
            }
        }
        Ok(RtpUnprotected {
            ssrc,
            ext_seq,
            header_len,
        })
    }

    /// SRTCP → the RTCP packet in `out` (cleared first), decrypted when its E flag is set and
    /// only authenticated when not. Rejects (with `out` empty) a short packet, a tag that does
    /// not verify, and a replayed or too old index.
    pub fn unprotect_rtcp(
        &mut self,
        packet: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<RtcpUnprotected, SrtpError> {
        out.clear();
        let tag_len = match self.rtcp_cipher {
            Cipher::Cm(_) => HMAC_TAG,
            Cipher::Gcm(_) => GCM_TAG,
        };
        if packet.len() < 8 + RTCP_TRAILER + tag_len {
            return Err(SrtpError::TooShort);
        }
        let ssrc = be32(packet, 4);
        // AES-CM: rtcp || word || tag. GCM: rtcp || tag || word.
        let (word_at, tag_at, rtcp_end) = match self.rtcp_cipher {
            Cipher::Cm(_) => {
                let word_at = packet.len() - tag_len - RTCP_TRAILER;
                (word_at, word_at + RTCP_TRAILER, word_at)
            }
            Cipher::Gcm(_) => {
                let word_at = packet.len() - RTCP_TRAILER;
                (word_at, word_at - tag_len, word_at - tag_len)
            }
        };
        let word = be32(packet, word_at);
        let encrypted = word & E_FLAG != 0;
        let index = word & MAX_RTCP_INDEX;
        let window = self.rtcp.get(&ssrc).copied();
        if window.is_some_and(|w| !w.fresh(u64::from(index))) {
            return Err(SrtpError::Replay {
                ssrc,
                index: u64::from(index),
            });
        }
        if window.is_none() && self.rtcp.len() >= MAX_STREAMS {
            return Err(SrtpError::TooManyStreams);
        }
        let word_bytes = &packet[word_at..word_at + RTCP_TRAILER];
        let tag = &packet[tag_at..tag_at + tag_len];
        out.extend_from_slice(&packet[..rtcp_end]);
        let opened = match &self.rtcp_cipher {
            Cipher::Gcm(c) => {
                let nonce = c.rtcp_nonce(ssrc, index);
                let opened = if encrypted {
                    let mut aad = [0u8; 12];
                    aad[..8].copy_from_slice(&packet[..8]);
                    aad[8..].copy_from_slice(word_bytes);
                    c.key
                        .open_in_place_separate_tag(nonce, Aad::from(aad), tag, &mut out[8..])
                        .map(|_| ())
                } else {
                    // RFC 7714 section 9.2: the whole packet and the index word are associated
                    // data, nothing is encrypted.
                    let aad = [&packet[..rtcp_end], word_bytes].concat();
                    c.key
                        .open_in_place_separate_tag(nonce, Aad::from(aad), tag, &mut [])
                        .map(|_| ())
                };
                opened.map_err(|_| SrtpError::Authentication)
            }
            Cipher::Cm(c) => {
                let expected = c.tag(&[&packet[..tag_at]]);
                verify_slices_are_equal(&expected, tag)
                    .map_err(|_| SrtpError::Authentication)
                    .and_then(|()| {
                        if encrypted {
                            c.apply(ssrc, u64::from(index), &mut out[8..])
                        } else {
                            Ok(())
                        }
                    })
            }
        };
        if let Err(e) = opened {
            out.clear();
            return Err(e);
        }
        let index64 = u64::from(index);
        match window {
            Some(mut w) => {
                w.accept(index64);
                self.rtcp.insert(ssrc, w);
            }
            None => {
                self.rtcp.insert(ssrc, ReplayWindow::starting_at(index64));
            }
        }
        Ok(RtcpUnprotected {
            ssrc,
            index,
            encrypted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc_srtp::config::Config;
    use rtc_srtp::context::Context;
    use rtc_srtp::protection_profile::ProtectionProfile;

    const PROFILES: [SrtpProfile; 3] = [
        SrtpProfile::AES128_CM_SHA1_80,
        SrtpProfile::AEAD_AES_128_GCM,
        SrtpProfile::AEAD_AES_256_GCM,
    ];

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// A session and a receiver on the same raw *session* keys (the RFC 7714 vectors are given
    /// below the key derivation).
    fn gcm_pair(key: &str, salt: &str) -> (SrtpSession, SrtpReceiver) {
        let ctx = || Contexts {
            rtp: Arc::new(Cipher::Gcm(GcmCipher::new(&hex(key), &hex(salt)).unwrap())),
            rtcp: Cipher::Gcm(GcmCipher::new(&hex(key), &hex(salt)).unwrap()),
        };
        let profile = if hex(key).len() == 16 {
            SrtpProfile::AEAD_AES_128_GCM
        } else {
            SrtpProfile::AEAD_AES_256_GCM
        };
        let session = SrtpSession {
            profile,
            ctx: ctx(),
            rtcp_index: 0,
        };
        let gcm = || Cipher::Gcm(GcmCipher::new(&hex(key), &hex(salt)).unwrap());
        let receiver = SrtpReceiver {
            profile,
            rtp_cipher: Some(gcm()),
            rtcp_cipher: gcm(),
            rtp: HashMap::new(),
            rtcp: HashMap::new(),
        };
        (session, receiver)
    }

    fn keying_material(profile: SrtpProfile) -> Vec<u8> {
        (0..profile.keying_material_len())
            .map(|i| (i as u8).wrapping_mul(37).wrapping_add(11))
            .collect()
    }

    fn rtc_profile(profile: SrtpProfile) -> ProtectionProfile {
        match profile {
            SrtpProfile::AES128_CM_SHA1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            SrtpProfile::AEAD_AES_128_GCM => ProtectionProfile::AeadAes128Gcm,
            SrtpProfile::AEAD_AES_256_GCM => ProtectionProfile::AeadAes256Gcm,
            other => panic!("no rtc-srtp profile for {other:?}"),
        }
    }

    /// rtc-srtp contexts of the peer of a session whose DTLS role is `ours`: (the peer's
    /// outbound context, the peer's inbound context).
    fn peer_contexts(profile: SrtpProfile, ours: DtlsRole) -> (Context, Context) {
        let mut config = Config {
            profile: rtc_profile(profile),
            ..Default::default()
        };
        config
            .set_session_keys_from_keying_material(
                &keying_material(profile),
                ours == DtlsRole::Server,
            )
            .unwrap();
        let provider = rtc_srtp::crypto::default_provider().unwrap();
        let k = &config.keys;
        let ctx = |key: &[u8], salt: &[u8]| {
            Context::new(key, salt, config.profile, None, None, provider.crypto()).unwrap()
        };
        (
            ctx(&k.local_master_key, &k.local_master_salt),
            ctx(&k.remote_master_key, &k.remote_master_salt),
        )
    }

    /// An RTP header: version 2, payload type 111, the sequence number, SSRC; `csrcs` CSRCs and,
    /// when `ext_words` > 0, a one-byte-header extension of that many words.
    fn rtp_header(seq: u16, ssrc: u32, csrcs: u8, ext_words: u16) -> Vec<u8> {
        let mut h = vec![0x80 | csrcs, 111];
        h.extend_from_slice(&seq.to_be_bytes());
        h.extend_from_slice(&(u32::from(seq) * 960).to_be_bytes());
        h.extend_from_slice(&ssrc.to_be_bytes());
        for c in 0..u32::from(csrcs) {
            h.extend_from_slice(&(0x1000 + c).to_be_bytes());
        }
        if ext_words > 0 {
            h[0] |= 0x10;
            h.extend_from_slice(&[0xbe, 0xde]);
            h.extend_from_slice(&ext_words.to_be_bytes());
            for w in 0..ext_words {
                // id 1, length 1 (two bytes of data), then padding.
                h.extend_from_slice(&[0x11, w as u8, 0xab, 0]);
            }
        }
        h
    }

    fn payload(n: usize, salt: u64) -> Vec<u8> {
        (0..n).map(|i| (i as u64 * 31 + salt) as u8).collect()
    }

    /// A sender report (28 bytes) from `ssrc`.
    fn sender_report(ssrc: u32, count: u32) -> Vec<u8> {
        let mut p = vec![0x80, 200, 0, 6];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&0x1122_3344_5566_7788u64.to_be_bytes());
        p.extend_from_slice(&(count * 960).to_be_bytes());
        p.extend_from_slice(&count.to_be_bytes());
        p.extend_from_slice(&(count * 100).to_be_bytes());
        p
    }

    #[test]
    fn rfc3711_b3_key_derivation() {
        let key = hex("E1F97A0D3E018BE0D64FA32C06DE4139");
        let salt = hex("0EC675AD498AFEEBB6960B3AABE6");
        let mut out = [0u8; 94];
        derive(&key, &salt, label::RTP_ENCRYPTION, &mut out[..16]).unwrap();
        assert_eq!(out[..16], hex("C61E7A93744F39EE10734AFE3FF7A087"));
        derive(&key, &salt, label::RTP_SALT, &mut out[..14]).unwrap();
        assert_eq!(out[..14], hex("30CBBC08863D8C85D49DB34A9AE1"));
        derive(&key, &salt, label::RTP_AUTH, &mut out[..20]).unwrap();
        assert_eq!(out[..20], hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4"));
        // The whole 94-byte keystream of the appendix (several counter blocks).
        derive(&key, &salt, label::RTP_AUTH, &mut out).unwrap();
        assert_eq!(
            out[..],
            hex(
                "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA48F0A0ACF3C34E2359E6CDBCE
                 E049646C43D9327AD175578EF72270986371C10C9A369AC2F94A8C5FBCDDDC25
                 6D6E919A48B610EF17C2041E474035766B68642C59BBFC2F34DB60DBDFB2"
            )
        );
    }

    #[test]
    fn rfc3711_b2_aes_cm_keystream() {
        let c = CmCipher::new(
            &hex("2B7E151628AED2A6ABF7158809CF4F3C"),
            &hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD"),
            &[0; 20],
        )
        .unwrap();
        // SSRC 0 and index 0: the IV is the salt shifted, the RFC's first counter.
        let mut stream = vec![0u8; 1_044_512];
        c.apply(0, 0, &mut stream).unwrap();
        assert_eq!(
            stream[..48],
            hex("E03EAD0935C95E80E166B16DD92B4EB4
                 D23513162B02D0F72A43A2FE4A5F97AB
                 41E95B3BB0A2E8DD477901E4FCA894C0")
        );
        assert_eq!(
            stream[stream.len() - 48..],
            hex("EC8CDF7398607CB0F2D21675EA9EA1E4
                 362B7C3C6773516318A077D7FC5073AE
                 6A2CC3787889374FBEB4C81B17BA6C44")
        );
    }

    const RFC7714_KEY_128: &str = "000102030405060708090a0b0c0d0e0f";
    const RFC7714_KEY_256: &str =
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const RFC7714_SALT: &str = "517569642070726f2071756f";
    const RFC7714_RTP: &str = "8040f17b8041f8d35501a0b2
        47616c6c696120657374206f6d6e69732064697669736120696e207061727465732074726573";
    const RFC7714_RTCP: &str = "81c8000d4d6172734e5450314e545032525450200000042a0000e930
        4c756e61deadbeefdeadbeefdeadbeefdeadbeefdeadbeef";

    fn check_rfc7714_rtp(key: &str, expected: &str) {
        let (mut session, mut receiver) = gcm_pair(key, RFC7714_SALT);
        let rtp = hex(RFC7714_RTP);
        let mut out = Vec::new();
        session
            .protect_rtp(&rtp[..12], &rtp[12..], 0xf17b, &mut out)
            .unwrap();
        assert_eq!(out, hex(expected));
        let mut plain = Vec::new();
        let info = receiver.unprotect_rtp(&out, &mut plain).unwrap();
        assert_eq!(plain, rtp);
        assert_eq!(info.ext_seq, 0xf17b);
        assert_eq!(info.ssrc, 0x5501_a0b2);
    }

    #[test]
    fn rfc7714_16_1_aead_aes_128_gcm_rtp() {
        check_rfc7714_rtp(
            RFC7714_KEY_128,
            "8040f17b8041f8d35501a0b2f24de3a3fb34de6cacba861c9d7e4bcabe633bd50d294e6f42a5f47a
             51c7d19b36de3adf8833899d7f27beb16a9152cf765ee4390cce",
        );
    }

    #[test]
    fn rfc7714_16_2_aead_aes_256_gcm_rtp() {
        check_rfc7714_rtp(
            RFC7714_KEY_256,
            "8040f17b8041f8d35501a0b232b1de78a822fe12ef9f78fa332e33aab18012389a58e2f3b50b2a02
             76ffae0f1ba63799b87b7aa3db36dfffd6b0f9bb7878d7a76c13",
        );
    }

    fn check_rfc7714_rtcp(key: &str, expected: &str) {
        let (mut session, mut receiver) = gcm_pair(key, RFC7714_SALT);
        let rtcp = hex(RFC7714_RTCP);
        session.set_rtcp_index_base(0x5d4).unwrap();
        let mut out = Vec::new();
        session.protect_rtcp(&rtcp, &mut out).unwrap();
        assert_eq!(out, hex(expected));
        assert_eq!(session.next_rtcp_index(), 0x5d5);
        let mut plain = Vec::new();
        let info = receiver.unprotect_rtcp(&out, &mut plain).unwrap();
        assert_eq!(plain, rtcp);
        assert_eq!(
            (info.ssrc, info.index, info.encrypted),
            (0x4d61_7273, 0x5d4, true)
        );
    }

    #[test]
    fn rfc7714_17_1_aead_aes_128_gcm_rtcp() {
        check_rfc7714_rtcp(
            RFC7714_KEY_128,
            "81c8000d4d61727363e94885dcdab67ca727d7662f6b7e997ff5c0f76c06f32dc676a5f1730d6fda
             4ce09b4686303ded0bb9275bc84aa45896cf4d2fc5abf87245d9eade800005d4",
        );
    }

    #[test]
    fn rfc7714_17_2_aead_aes_256_gcm_rtcp() {
        check_rfc7714_rtcp(
            RFC7714_KEY_256,
            "81c8000d4d617273d50ae4d1f5ce5d304ba297e47d470c282c3ece5dbffe0a50a2eaa5c1110555be
             8415f658c61de0476f1b6fad1d1eb30c4446839f57ff6f6cb26ac3be800005d4",
        );
    }

    #[test]
    fn rfc7714_17_3_authenticated_only_rtcp_is_accepted_unchanged() {
        let (_, mut receiver) = gcm_pair(RFC7714_KEY_128, RFC7714_SALT);
        let tagged = hex(
            "81c8000d4d6172734e5450314e545032525450200000042a0000e9304c756e61deadbeefdeadbeef
             deadbeefdeadbeefdeadbeef841dd9683dd78ec92ae58790125f62b3000005d4",
        );
        let mut plain = Vec::new();
        let info = receiver.unprotect_rtcp(&tagged, &mut plain).unwrap();
        assert_eq!(plain, hex(RFC7714_RTCP));
        assert!(!info.encrypted);
        assert_eq!(info.index, 0x5d4);
        // The same bytes with a flipped tag bit are refused.
        let mut forged = tagged.clone();
        forged[60] ^= 1;
        let (_, mut fresh) = gcm_pair(RFC7714_KEY_128, RFC7714_SALT);
        assert_eq!(
            fresh.unprotect_rtcp(&forged, &mut plain),
            Err(SrtpError::Authentication)
        );
    }

    /// Our protect → rtc-srtp's unprotect, across the 16-bit wrap, for both DTLS roles.
    #[test]
    fn rtc_srtp_opens_what_we_protect_across_the_rollover() {
        for profile in PROFILES {
            for role in [DtlsRole::Client, DtlsRole::Server] {
                let mut session =
                    SrtpSession::new(profile, &keying_material(profile), role).unwrap();
                let (_, mut theirs) = peer_contexts(profile, role);
                let mut out = Vec::new();
                for (i, ext_seq) in (65_530u64..65_546).enumerate() {
                    let header =
                        rtp_header(ext_seq as u16, 0xcafe_0001, (i % 3) as u8, (i % 2) as u16);
                    let body = payload(20 + i * 7, ext_seq);
                    session
                        .protect_rtp(&header, &body, ext_seq, &mut out)
                        .unwrap();
                    assert_eq!(
                        out.len(),
                        header.len() + body.len() + session.rtp_overhead()
                    );
                    assert_ne!(&out[header.len()..header.len() + body.len()], &body[..]);
                    let plain = theirs
                        .decrypt_rtp(&out)
                        .unwrap_or_else(|e| panic!("{profile:?} {role:?} seq {ext_seq}: {e}"));
                    assert_eq!(&plain[..header.len()], &header[..]);
                    assert_eq!(&plain[header.len()..], &body[..]);
                }
            }
        }
    }

    /// rtc-srtp's protect → our unprotect, across the 16-bit wrap, for both DTLS roles; the
    /// receiver's extended sequence numbers follow the wrap.
    #[test]
    fn we_open_what_rtc_srtp_protects_across_the_rollover() {
        for profile in PROFILES {
            for role in [DtlsRole::Client, DtlsRole::Server] {
                let mut receiver =
                    SrtpReceiver::new(profile, &keying_material(profile), role).unwrap();
                let (mut theirs, _) = peer_contexts(profile, role);
                let mut plain = Vec::new();
                for (i, ext_seq) in (65_530u64..65_546).enumerate() {
                    let header =
                        rtp_header(ext_seq as u16, 0xcafe_0002, (i % 2) as u8, (i % 3) as u16);
                    let mut packet = header.clone();
                    packet.extend_from_slice(&payload(30 + i, ext_seq));
                    let protected = theirs.encrypt_rtp(&packet).unwrap();
                    let info = receiver
                        .unprotect_rtp(&protected, &mut plain)
                        .unwrap_or_else(|e| panic!("{profile:?} {role:?} seq {ext_seq}: {e}"));
                    assert_eq!(plain, packet);
                    assert_eq!(info.ext_seq, ext_seq);
                    assert_eq!(info.header_len, header.len());
                }
            }
        }
    }

    /// A stream taken over after another receiver saw it wrap: started at that receiver's
    /// extended sequence number, ours opens the rest with the right rollover counter; a fresh
    /// receiver (rollover counter 0) cannot.
    #[test]
    fn a_stream_started_where_another_receiver_left_it_keeps_its_rollover_counter() {
        for profile in PROFILES {
            let role = DtlsRole::Server;
            let km = keying_material(profile);
            let mut seeded = SrtpReceiver::new(profile, &km, role).unwrap();
            let mut fresh = SrtpReceiver::new(profile, &km, role).unwrap();
            let (mut theirs, _) = peer_contexts(profile, role);
            let mut plain = Vec::new();
            for ext_seq in 65_530u64..65_550 {
                let header = rtp_header(ext_seq as u16, 0xcafe_0005, 0, 0);
                let mut packet = header.clone();
                packet.extend_from_slice(&payload(40, ext_seq));
                let protected = theirs.encrypt_rtp(&packet).unwrap();
                // The first ten went to the other receiver, across the wrap.
                if ext_seq < 65_540 {
                    continue;
                }
                if ext_seq == 65_540 {
                    seeded.start_rtp_at(0xcafe_0005, 65_539).unwrap();
                    assert!(fresh.unprotect_rtp(&protected, &mut plain).is_err());
                }
                let info = seeded.unprotect_rtp(&protected, &mut plain).unwrap();
                assert_eq!(info.ext_seq, ext_seq);
                assert_eq!(plain, packet);
                // What the other receiver already had is a replay.
                let replay = rtp_header(65_539u64 as u16, 0xcafe_0005, 0, 0);
                assert!(seeded.unprotect_rtp(&replay, &mut plain).is_err());
            }
            assert!(seeded.start_rtp_at(1, MAX_RTP_INDEX + 1).is_err());
        }
    }

    /// SRTCP both ways with rtc-srtp, for both DTLS roles, from our default index and from a
    /// high base.
    #[test]
    fn srtcp_interoperates_with_rtc_srtp_both_ways() {
        for profile in PROFILES {
            for role in [DtlsRole::Client, DtlsRole::Server] {
                let km = keying_material(profile);
                let mut session = SrtpSession::new(profile, &km, role).unwrap();
                let mut receiver = SrtpReceiver::new(profile, &km, role).unwrap();
                let (mut their_out, mut their_in) = peer_contexts(profile, role);
                let mut out = Vec::new();
                for count in 0..6u32 {
                    if count == 3 {
                        session.set_rtcp_index_base(1 << 30).unwrap();
                    }
                    let sr = sender_report(0xcafe_0003, count);
                    session.protect_rtcp(&sr, &mut out).unwrap();
                    assert_eq!(out.len(), sr.len() + session.rtcp_overhead());
                    let plain = their_in
                        .decrypt_rtcp(&out)
                        .unwrap_or_else(|e| panic!("{profile:?} {role:?} #{count}: {e}"));
                    assert_eq!(&plain[..], &sr[..]);

                    let sr = sender_report(0xbeef_0004, count);
                    let protected = their_out.encrypt_rtcp(&sr).unwrap();
                    let info = receiver
                        .unprotect_rtcp(&protected, &mut out)
                        .unwrap_or_else(|e| panic!("{profile:?} {role:?} #{count}: {e}"));
                    assert_eq!(out, sr);
                    assert!(info.encrypted);
                    assert_eq!(info.ssrc, 0xbeef_0004);
                }
                assert_eq!(session.next_rtcp_index(), (1 << 30) + 3);
            }
        }
    }

    /// Each side's packets open only with the other side's receiver: the roles pick different
    /// halves of the keying material.
    #[test]
    fn the_dtls_role_picks_the_half_of_the_keying_material() {
        for profile in PROFILES {
            let km = keying_material(profile);
            let mut client = SrtpSession::new(profile, &km, DtlsRole::Client).unwrap();
            let header = rtp_header(7, 1, 0, 0);
            let mut out = Vec::new();
            client.protect_rtp(&header, b"hello", 7, &mut out).unwrap();
            let mut plain = Vec::new();
            let mut as_client = SrtpReceiver::new(profile, &km, DtlsRole::Client).unwrap();
            assert_eq!(
                as_client.unprotect_rtp(&out, &mut plain),
                Err(SrtpError::Authentication)
            );
            let mut as_server = SrtpReceiver::new(profile, &km, DtlsRole::Server).unwrap();
            as_server.unprotect_rtp(&out, &mut plain).unwrap();
            assert_eq!(&plain[header.len()..], b"hello");
        }
    }

    /// A receiver of SRTCP only opens the peer's SRTCP exactly as a full one does, refuses
    /// SRTP with a typed error, and is smaller on the heap (one AES key schedule less; counted
    /// with the memory bench's allocator, not here).
    #[test]
    fn an_srtcp_only_receiver_opens_srtcp_and_refuses_srtp() {
        for profile in PROFILES {
            let km = keying_material(profile);
            let mut client = SrtpSession::new(profile, &km, DtlsRole::Client).unwrap();
            let (mut srtp, mut srtcp, mut plain) = (Vec::new(), Vec::new(), Vec::new());
            client
                .protect_rtp(&rtp_header(7, 1, 0, 0), b"hello", 7, &mut srtp)
                .unwrap();
            let report = sender_report(0x0a0b_0c0d, 3);
            client.protect_rtcp(&report, &mut srtcp).unwrap();
            let mut rx = SrtpReceiver::rtcp_only(profile, &km, DtlsRole::Server).unwrap();
            assert_eq!(
                rx.unprotect_rtp(&srtp, &mut plain),
                Err(SrtpError::NoRtpContext)
            );
            assert!(plain.is_empty());
            let opened = rx.unprotect_rtcp(&srtcp, &mut plain).unwrap();
            assert_eq!(plain, report, "{profile:?}");
            assert_eq!(opened.ssrc, 0x0a0b_0c0d);
            assert!(
                rx.unprotect_rtcp(&srtcp, &mut plain).is_err(),
                "replay refused"
            );
            // The wrong half of the keying material does not open it.
            let mut wrong = SrtpReceiver::rtcp_only(profile, &km, DtlsRole::Client).unwrap();
            assert_eq!(
                wrong.unprotect_rtcp(&srtcp, &mut plain).map(|_| ()),
                Err(SrtpError::Authentication)
            );
        }
    }

    /// Any single bit flip anywhere in an SRTP or SRTCP packet is rejected.
    #[test]
    fn every_single_bit_flip_is_rejected() {
        for profile in PROFILES {
            let km = keying_material(profile);
            let mut session = SrtpSession::new(profile, &km, DtlsRole::Server).unwrap();
            let mut receiver = SrtpReceiver::new(profile, &km, DtlsRole::Client).unwrap();
            let (mut srtp, mut srtcp, mut plain) = (Vec::new(), Vec::new(), Vec::new());
            let header = rtp_header(100, 0x0102_0304, 1, 1);
            session
                .protect_rtp(&header, &payload(100, 1), 100, &mut srtp)
                .unwrap();
            session
                .protect_rtcp(&sender_report(0x0102_0304, 9), &mut srtcp)
                .unwrap();
            for packet in [&srtp, &srtcp] {
                let is_rtp = std::ptr::eq(packet, &srtp);
                for bit in 0..packet.len() * 8 {
                    let mut bad = packet.clone();
                    bad[bit / 8] ^= 1 << (bit % 8);
                    let result = if is_rtp {
                        receiver.unprotect_rtp(&bad, &mut plain).map(|_| ())
                    } else {
                        receiver.unprotect_rtcp(&bad, &mut plain).map(|_| ())
                    };
                    assert!(
                        result.is_err(),
                        "{profile:?} rtp={is_rtp} bit {bit} accepted"
                    );
                    assert!(plain.is_empty());
                }
            }
            // The untouched packets still open: the flips were refused for being flips.
            receiver.unprotect_rtp(&srtp, &mut plain).unwrap();
            receiver.unprotect_rtcp(&srtcp, &mut plain).unwrap();
            assert_eq!(plain, sender_report(0x0102_0304, 9));
        }
    }

    #[test]
    fn replays_and_packets_older_than_the_window_are_rejected() {
        for profile in PROFILES {
            let km = keying_material(profile);
            let mut session = SrtpSession::new(profile, &km, DtlsRole::Client).unwrap();
            let mut receiver = SrtpReceiver::new(profile, &km, DtlsRole::Server).unwrap();
            let packets: Vec<Vec<u8>> = (0..300u64)
                .map(|seq| {
                    let mut out = Vec::new();
                    session
                        .protect_rtp(&rtp_header(seq as u16, 9, 0, 0), b"x", seq, &mut out)
                        .unwrap();
                    out
                })
                .collect();
            let mut plain = Vec::new();
            receiver.unprotect_rtp(&packets[200], &mut plain).unwrap();
            assert_eq!(
                receiver.unprotect_rtp(&packets[200], &mut plain),
                Err(SrtpError::Replay {
                    ssrc: 9,
                    index: 200
                })
            );
            // Reordered inside the window: accepted once.
            receiver.unprotect_rtp(&packets[150], &mut plain).unwrap();
            assert!(receiver.unprotect_rtp(&packets[150], &mut plain).is_err());
            // Older than the window: refused.
            assert_eq!(
                receiver.unprotect_rtp(&packets[200 - REPLAY_WINDOW as usize], &mut plain),
                Err(SrtpError::Replay {
                    ssrc: 9,
                    index: 200 - REPLAY_WINDOW
                })
            );
            receiver.unprotect_rtp(&packets[299], &mut plain).unwrap();
            receiver.unprotect_rtp(&packets[250], &mut plain).unwrap();

            let mut srtcp = Vec::new();
            session
                .protect_rtcp(&sender_report(9, 1), &mut srtcp)
                .unwrap();
            receiver.unprotect_rtcp(&srtcp, &mut plain).unwrap();
            assert_eq!(
                receiver.unprotect_rtcp(&srtcp, &mut plain),
                Err(SrtpError::Replay { ssrc: 9, index: 0 })
            );
        }
    }

    #[test]
    fn the_rollover_estimate_picks_the_nearest_index() {
        assert_eq!(estimate_index(65_535, 0), 65_536);
        assert_eq!(estimate_index(65_536, 65_535), 65_535);
        assert_eq!(estimate_index(5 << 16 | 100, 200), 5 << 16 | 200);
        assert_eq!(estimate_index(5 << 16 | 100, 65_000), 4 << 16 | 65_000);
        assert_eq!(estimate_index(5 << 16 | 60_000, 10), 6 << 16 | 10);
        assert_eq!(estimate_index(5 << 16 | 60_000, 40_000), 5 << 16 | 40_000);
        assert_eq!(estimate_index(100, 65_000), 65_000);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let profile = SrtpProfile::AEAD_AES_128_GCM;
        let km = keying_material(profile);
        assert_eq!(
            SrtpSession::new(profile, &km[1..], DtlsRole::Client).err(),
            Some(SrtpError::KeyingMaterialLength {
                expected: 56,
                got: 55
            })
        );
        // CM keying material is 60 bytes: not GCM's.
        assert!(SrtpSession::new(SrtpProfile::AES128_CM_SHA1_80, &km, DtlsRole::Client).is_err());
        let mut s = SrtpSession::new(profile, &km, DtlsRole::Client).unwrap();
        let mut out = vec![1, 2, 3];
        let header = rtp_header(5, 1, 0, 0);
        assert_eq!(
            s.protect_rtp(&header, b"p", 6, &mut out),
            Err(SrtpError::SequenceMismatch {
                header: 5,
                ext_seq: 6
            })
        );
        assert!(out.is_empty());
        assert_eq!(
            s.protect_rtp(&header, b"p", 5 | 1 << 48, &mut out),
            Err(SrtpError::IndexExhausted(5 | 1 << 48))
        );
        assert_eq!(
            s.protect_rtp(&header[..11], b"p", 5, &mut out),
            Err(SrtpError::RtpHeader)
        );
        // A header claiming an extension it does not carry, or followed by extra bytes.
        let with_ext = rtp_header(5, 1, 0, 2);
        assert_eq!(
            s.protect_rtp(&with_ext[..with_ext.len() - 4], b"p", 5, &mut out),
            Err(SrtpError::RtpHeader)
        );
        assert_eq!(
            s.protect_rtp(&with_ext[..12], b"p", 5, &mut out),
            Err(SrtpError::RtpHeader)
        );
        assert_eq!(
            s.protect_rtcp(&[0x80; 7], &mut out),
            Err(SrtpError::RtcpTooShort)
        );
        assert_eq!(
            s.set_rtcp_index_base(MAX_RTCP_INDEX + 1),
            Err(SrtpError::RtcpIndexExhausted)
        );
        s.set_rtcp_index_base(MAX_RTCP_INDEX).unwrap();
        s.protect_rtcp(&sender_report(1, 1), &mut out).unwrap();
        assert_eq!(
            s.protect_rtcp(&sender_report(1, 2), &mut out),
            Err(SrtpError::RtcpIndexExhausted)
        );

        let mut r = SrtpReceiver::new(profile, &km, DtlsRole::Server).unwrap();
        for short in 0..40 {
            let junk = vec![0x80u8; short];
            assert!(r.unprotect_rtp(&junk, &mut out).is_err());
            assert!(r.unprotect_rtcp(&junk, &mut out).is_err());
        }
    }

    /// With capacity, protect writes into `out`'s existing buffer (no reallocation).
    #[test]
    fn protect_reuses_the_output_buffer() {
        for profile in PROFILES {
            let mut s =
                SrtpSession::new(profile, &keying_material(profile), DtlsRole::Server).unwrap();
            let mut out = Vec::with_capacity(1500);
            let ptr = out.as_ptr();
            let body = payload(1200, 3);
            for seq in 0..10u64 {
                s.protect_rtp(&rtp_header(seq as u16, 3, 0, 1), &body, seq, &mut out)
                    .unwrap();
                s.protect_rtcp(&sender_report(3, seq as u32), &mut out)
                    .unwrap();
            }
            assert_eq!(out.as_ptr(), ptr);
            assert_eq!(out.capacity(), 1500);
        }
    }

    /// The in-place seal writes exactly what the copying one does, for every profile.
    #[test]
    fn in_place_protection_matches_the_copying_one() {
        for profile in PROFILES {
            let km = keying_material(profile);
            let mut a = SrtpSession::new(profile, &km, DtlsRole::Server).unwrap();
            let mut b = SrtpSession::new(profile, &km, DtlsRole::Server).unwrap();
            let mut out = Vec::new();
            for (seq, size) in [(1u64, 0usize), (2, 100), (0x1_0003, 1200)] {
                let header = rtp_header(seq as u16, 3, 0, 1);
                let body = payload(size, seq);
                a.protect_rtp(&header, &body, seq, &mut out).unwrap();
                let mut buf = vec![0xaa; header.len() + size + b.rtp_overhead() + 7];
                buf[..header.len()].copy_from_slice(&header);
                buf[header.len()..header.len() + size].copy_from_slice(&body);
                let n = b
                    .protect_rtp_in_place(&mut buf, header.len(), header.len() + size, seq)
                    .unwrap();
                assert_eq!(&buf[..n], &out[..], "{profile:?} seq {seq}");
                // Too little room for the tag: refused.
                let mut short = buf[..header.len() + size].to_vec();
                assert!(b
                    .protect_rtp_in_place(&mut short, header.len(), header.len() + size, seq)
                    .is_err());
            }
        }
    }
}
