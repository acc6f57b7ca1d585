//! The server's DTLS: OpenSSL's, so clients with RSA certificates connect as well as ECDSA ones.
//!
//! str0m 0.25's default DTLS (dimpl 0.9) refuses RSA client signatures, and the server is the
//! DTLS server towards browsers, so a client holding an RSA certificate (GStreamer's webrtcbin,
//! some native stacks, `generateCertificate({name: "RSASSA-PKCS1-v1_5"})`) failed with "no client
//! certificate received". OpenSSL's DTLS 1.2 accepts both. The OpenSSL backend published for
//! str0m (`str0m-openssl` 0.6) implements the previous provider traits (str0m-proto 0.7 on dimpl
//! 0.7); the types are the same shapes one version apart, so this module wraps its DTLS instances
//! into the 0.8 traits str0m 0.25 uses, converting each value at the boundary. SRTP, hashing and
//! the STUN HMAC stay on str0m's default provider (aws-lc-rs).
//!
//! SRTP profiles: OpenSSL, as the DTLS server, picks the first of its own list the client offers:
//! AEAD_AES_256_GCM, AEAD_AES_128_GCM, then AES128_CM_SHA1_80, so GCM stays negotiated.
//!
//! Release after the handshake: an OpenSSL DTLS session (its own `SSL_CTX` with the certificate
//! and key, the `SSL`, its buffers: about 86 KiB of C heap per connected peer) is only needed
//! until both sides surely hold the SRTP keys. Once the handshake completed and [`RELEASE_GRACE`] passed
//! without a DTLS record from the client (which covers the client's retransmissions of its last
//! flight when our final flight was lost), the wrapper drops the OpenSSL instance and answers
//! the trait from stored values; later records are ignored and counted ([`stats`]). A session
//! that carried application data (SCTP, data channels) keeps its instance.
//!
//! Keys for the lean audio path: the SRTP keying material str0m derives its contexts from
//! passes through [`Instance::poll_output`]; a copy goes into the peer's [`KeySlot`], handed to
//! the instance at creation through [`with_key_slot`] (str0m creates the instance inside
//! `RtcConfig::build`, synchronously, on the calling thread).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use str0m::crypto::CryptoProvider;
use str0m_proto::crypto::dtls::{
    DtlsCert, DtlsCryptoError, DtlsCryptoOperation, DtlsImplError, DtlsInstance, DtlsOutput,
    DtlsProvider, KeyingMaterial, ProtocolVersion, SrtpProfile,
};
use str0m_proto::crypto::{CryptoError, DtlsVersion};
use str0m_proto_07::crypto::dtls as old;

/// The crypto provider every server-side peer uses: str0m's default (aws-lc-rs) for SRTP and
/// hashing, OpenSSL for DTLS. Built once per process.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            static DTLS: OpensslDtls = OpensslDtls;
            let mut p = str0m::crypto::from_feature_flags();
            p.dtls_provider = &DTLS;
            Arc::new(p)
        })
        .clone()
}

/// One peer's exported SRTP keys: what str0m got from the DTLS handshake.
#[derive(Clone)]
pub(crate) struct SrtpKeys {
    /// The negotiated SRTP protection profile.
    pub(crate) profile: SrtpProfile,
    /// The RFC 5764 keying material (client key, server key, client salt, server salt).
    pub(crate) material: Vec<u8>,
    /// This side was the DTLS client (active).
    pub(crate) active: bool,
}

impl std::fmt::Debug for SrtpKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key bytes.
        f.debug_struct("SrtpKeys")
            .field("profile", &self.profile)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

/// Where one peer's DTLS instance puts its SRTP keys, once, when the handshake completes.
pub(crate) type KeySlot = Arc<OnceLock<SrtpKeys>>;

thread_local! {
    /// The slot the next `new_dtls` on this thread takes (see [`with_key_slot`]).
    static NEXT_SLOT: RefCell<Option<KeySlot>> = const { RefCell::new(None) };
}

/// Runs `build` (which creates one `Rtc`, hence one DTLS instance) with `slot` offered to the
/// DTLS instance it creates; the instance then stores its SRTP keys there. A slot not taken
/// (another provider) is withdrawn afterwards.
pub(crate) fn with_key_slot<T>(slot: &KeySlot, build: impl FnOnce() -> T) -> T {
    NEXT_SLOT.with(|s| *s.borrow_mut() = Some(slot.clone()));
    let out = build();
    NEXT_SLOT.with(|s| s.borrow_mut().take());
    out
}

/// OpenSSL's DTLS behind str0m 0.25's [`DtlsProvider`].
#[derive(Debug)]
struct OpensslDtls;

/// The OpenSSL provider's own DTLS factory (str0m-proto 0.7 traits).
fn inner_provider() -> &'static dyn old::DtlsProvider {
    static INNER: OnceLock<&'static dyn old::DtlsProvider> = OnceLock::new();
    *INNER.get_or_init(|| str0m_openssl::default_provider().dtls_provider)
}

impl DtlsProvider for OpensslDtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        inner_provider().generate_certificate().map(|c| DtlsCert {
            certificate: c.certificate,
            private_key: c.private_key,
        })
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let version = match dtls_version {
            DtlsVersion::Dtls12 => str0m_proto_07::crypto::DtlsVersion::Dtls12,
            other => {
                return Err(CryptoError::Other(format!(
                    "OpenSSL DTLS supports DTLS 1.2 only, asked for {other}"
                )));
            }
        };
        let cert = old::DtlsCert {
            certificate: cert.certificate.clone(),
            private_key: cert.private_key.clone(),
        };
        let inner = inner_provider()
            .new_dtls(&cert, now, version, mtu)
            .map_err(|e| CryptoError::Other(e.to_string()))?;
        Ok(Box::new(Instance::new(
            inner,
            now,
            NEXT_SLOT.with(|s| s.borrow_mut().take()),
        )))
    }
}

/// How long a connected DTLS session keeps its OpenSSL instance after the handshake completed
/// and after the client's last DTLS record. A DTLS client whose final flight went unanswered
/// retransmits it on a doubling timer (RFC 6347: 1 s, 2 s, 4 s, ... up to 60 s), and only the
/// OpenSSL instance can answer it; every retransmission restarts the grace, so five
/// retransmissions in a row (1 + 2 + 4 + 8 + 16 s) are covered. SRTP needs nothing from DTLS
/// once both sides hold the keys.
pub const RELEASE_GRACE: Duration = Duration::from_secs(30);

/// Far enough ahead to mean "no DTLS timer" (str0m takes the soonest of its timers).
const NO_TIMER: Duration = Duration::from_secs(3600);

/// Process-wide DTLS release counters (every shard's peers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DtlsStats {
    /// OpenSSL instances alive: created and not yet released or dropped.
    pub live: u64,
    /// OpenSSL instances released after their handshake (the rest end with their peer).
    pub released: u64,
    /// DTLS records that arrived, or application data str0m wanted to send, after the
    /// instance was released: ignored.
    pub late_records: u64,
}

static LIVE: AtomicU64 = AtomicU64::new(0);
static RELEASED: AtomicU64 = AtomicU64::new(0);
static LATE_RECORDS: AtomicU64 = AtomicU64::new(0);

/// The process-wide DTLS release counters.
pub fn stats() -> DtlsStats {
    DtlsStats {
        live: LIVE.load(Relaxed),
        released: RELEASED.load(Relaxed),
        late_records: LATE_RECORDS.load(Relaxed),
    }
}

/// Where a session is on its way to releasing its OpenSSL instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    /// Handshake not complete yet.
    Handshaking,
    /// Connected; the grace period starts at the next timer (the instance has no clock of its
    /// own: `poll_output` asks str0m for a timer due at once).
    Arm,
    /// Connected; released at this instant unless a DTLS record arrives first.
    At(Instant),
    /// Carried application data (SCTP): kept for the session's lifetime.
    Never,
}

/// One OpenSSL DTLS session, seen through the 0.8 [`DtlsInstance`] trait; releases the OpenSSL
/// instance once the handshake is surely over (module docs).
struct Instance {
    /// The OpenSSL session; `None` once released.
    inner: Option<Box<dyn old::DtlsInstance>>,
    /// The OpenSSL instance starts a handshake only when it gets input; as the DTLS client
    /// (active) nothing would arrive first, so the first timeout feeds it an empty packet.
    started: bool,
    /// The latest time str0m gave (creation, timers): never ahead of str0m's own clock.
    now: Instant,
    release: Release,
    /// What `set_active` set, answered after the release.
    active: bool,
    /// `close` was called after the release (nothing left to send).
    closed: bool,
    /// Where the SRTP keys go (the lean audio path), if the engine asked for them.
    keys: Option<KeySlot>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpensslDtlsInstance")
            .field("released", &self.inner.is_none())
            .field("release", &self.release)
            .finish()
    }
}

impl Instance {
    /// Wraps a fresh OpenSSL session created at `now`; `keys` receives its SRTP keys.
    fn new(inner: Box<dyn old::DtlsInstance>, now: Instant, keys: Option<KeySlot>) -> Instance {
        LIVE.fetch_add(1, Relaxed);
        Instance {
            inner: Some(inner),
            started: false,
            now,
            release: Release::Handshaking,
            active: false,
            closed: false,
            keys,
        }
    }

    /// Drops the OpenSSL instance (SSL, SSL_CTX, certificate, key, buffers).
    fn release(&mut self) {
        if let Some(inner) = self.inner.take() {
            self.active = inner.is_active();
            drop(inner);
            LIVE.fetch_sub(1, Relaxed);
            RELEASED.fetch_add(1, Relaxed);
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if self.inner.is_some() {
            LIVE.fetch_sub(1, Relaxed);
        }
    }
}

impl DtlsInstance for Instance {
    fn set_active(&mut self, active: bool) {
        self.active = active;
        if let Some(inner) = &mut self.inner {
            inner.set_active(active);
        }
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.started = true;
        let Some(inner) = &mut self.inner else {
            LATE_RECORDS.fetch_add(1, Relaxed);
            return Ok(());
        };
        if matches!(self.release, Release::At(_)) {
            // The client is still talking DTLS (a retransmitted flight): restart the grace.
            self.release = Release::Arm;
        }
        inner.handle_packet(packet).map_err(convert_error)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        let Some(inner) = &mut self.inner else {
            return DtlsOutput::Timeout(self.now + NO_TIMER);
        };
        let active = inner.is_active();
        let out = inner.poll_output(buf);
        match (&out, self.release) {
            (old::DtlsOutput::Connected, Release::Handshaking) => self.release = Release::Arm,
            (old::DtlsOutput::ApplicationData(_), _) => self.release = Release::Never,
            (old::DtlsOutput::Timeout(t), Release::Arm) => {
                // Due at once: str0m calls `handle_timeout` with its clock, which arms the grace.
                return DtlsOutput::Timeout((*t).min(self.now));
            }
            (old::DtlsOutput::Timeout(t), Release::At(at)) => {
                return DtlsOutput::Timeout((*t).min(at));
            }
            _ => {}
        }
        let out = convert_output(out);
        if let (DtlsOutput::KeyingMaterial(km, profile), Some(slot)) = (&out, &self.keys) {
            // Set once: a second export (none is expected) keeps the first keys, as str0m's
            // contexts would differ from ours otherwise only if it re-keyed, which it cannot.
            let _ = slot.set(SrtpKeys {
                profile: *profile,
                material: km.as_ref().to_vec(),
                active,
            });
        }
        out
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.now = self.now.max(now);
        match self.release {
            Release::Arm => self.release = Release::At(now + RELEASE_GRACE),
            Release::At(at) if now >= at => {
                self.release();
                return Ok(());
            }
            _ => {}
        }
        let Some(inner) = &mut self.inner else {
            return Ok(());
        };
        if !self.started && inner.is_active() {
            self.started = true;
            inner.handle_packet(&[]).map_err(convert_error)?;
        }
        inner.handle_timeout(now).map_err(convert_error)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        let Some(inner) = &mut self.inner else {
            // Only SCTP sends application data, and a session that ran SCTP is never released;
            // one that starts it this late gets nothing through (the media is unaffected).
            LATE_RECORDS.fetch_add(1, Relaxed);
            return Ok(data.len());
        };
        self.release = Release::Never;
        // The 0.7 trait takes all of it or fails; the 0.8 one reports how much it took.
        inner
            .send_application_data(data)
            .map(|()| data.len())
            .map_err(convert_error)
    }

    fn is_active(&self) -> bool {
        self.inner.as_ref().map_or(self.active, |i| i.is_active())
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        // `new_dtls` only ever creates DTLS 1.2 sessions; a released one had completed.
        match &self.inner {
            Some(inner) => inner.protocol_version().map(|_| ProtocolVersion::DTLS1_2),
            None => Some(ProtocolVersion::DTLS1_2),
        }
    }

    fn is_closing(&self) -> bool {
        self.inner.as_ref().map_or(self.closed, |i| i.is_closing())
    }

    fn is_closed(&self) -> bool {
        self.inner.as_ref().map_or(self.closed, |i| i.is_closed())
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        match &mut self.inner {
            Some(inner) => inner.close().map_err(convert_error),
            // No close_notify after the release: the client learns from ICE consent or
            // signaling that the peer is gone.
            None => {
                self.closed = true;
                Ok(())
            }
        }
    }
}

/// One poll result, 0.7 shape to 0.9 shape.
fn convert_output(out: old::DtlsOutput<'_>) -> DtlsOutput<'_> {
    match out {
        old::DtlsOutput::Packet(p) => DtlsOutput::Packet(p),
        old::DtlsOutput::BufferTooSmall { needed } => DtlsOutput::BufferTooSmall { needed },
        old::DtlsOutput::Timeout(t) => DtlsOutput::Timeout(t),
        old::DtlsOutput::Connected => DtlsOutput::Connected,
        old::DtlsOutput::PeerCert(c) => DtlsOutput::PeerCert(c),
        old::DtlsOutput::KeyingMaterial(km, profile) => {
            DtlsOutput::KeyingMaterial(KeyingMaterial::new(&km), convert_profile(profile))
        }
        old::DtlsOutput::ApplicationData(d) => DtlsOutput::ApplicationData(d),
        old::DtlsOutput::CloseNotify => DtlsOutput::CloseNotify,
        // A variant a later dimpl 0.7 patch could add: nothing to act on, ask to be polled again.
        _ => DtlsOutput::Timeout(Instant::now()),
    }
}

/// The negotiated SRTP profile. OpenSSL is configured with exactly the three profiles below.
fn convert_profile(p: old::SrtpProfile) -> SrtpProfile {
    match p {
        old::SrtpProfile::AEAD_AES_256_GCM => SrtpProfile::AEAD_AES_256_GCM,
        old::SrtpProfile::AEAD_AES_128_GCM => SrtpProfile::AEAD_AES_128_GCM,
        // AES128_CM_SHA1_80, and any profile a later 0.7 patch could add (never configured).
        _ => SrtpProfile::AES128_CM_SHA1_80,
    }
}

/// A DTLS failure. The OpenSSL backend reports encrypt/decrypt failures as crypto errors; the
/// queue and close errors keep their kind; anything else becomes a failed decrypt, which str0m
/// treats like every DTLS error: the session fails.
fn convert_error(e: old::DtlsImplError) -> DtlsImplError {
    match e {
        old::DtlsImplError::ReceiveQueueFull => DtlsImplError::ReceiveQueueFull,
        old::DtlsImplError::TransmitQueueFull => DtlsImplError::TransmitQueueFull,
        old::DtlsImplError::ConnectionClosed => DtlsImplError::ConnectionClosed,
        old::DtlsImplError::CryptoError(old::DtlsCryptoError::OperationFailed(
            old::DtlsCryptoOperation::Encrypt,
        )) => DtlsImplError::CryptoError(DtlsCryptoError::OperationFailed(
            DtlsCryptoOperation::Encrypt,
        )),
        _ => DtlsImplError::CryptoError(DtlsCryptoError::OperationFailed(
            DtlsCryptoOperation::Decrypt,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wrapped OpenSSL session created at `now`.
    fn instance(cert: &DtlsCert, now: Instant) -> Instance {
        let old_cert = old::DtlsCert {
            certificate: cert.certificate.clone(),
            private_key: cert.private_key.clone(),
        };
        let version = str0m_proto_07::crypto::DtlsVersion::Dtls12;
        Instance::new(
            inner_provider()
                .new_dtls(&old_cert, now, version, None)
                .unwrap(),
            now,
            None,
        )
    }

    /// A client and a server session (both through the adapter) after a complete handshake at
    /// `now`, the SRTP profile each exported, and the client's last flight (what completed the
    /// server's handshake).
    struct Connected {
        client: Instance,
        server: Instance,
        profiles: (SrtpProfile, SrtpProfile),
        last_flight: Vec<Vec<u8>>,
    }

    fn connect(client: &DtlsCert, server: &DtlsCert, now: Instant) -> Connected {
        let mut c = instance(client, now);
        let mut s = instance(server, now);
        c.set_active(true);
        s.set_active(false);
        c.handle_timeout(now).unwrap();
        let mut profiles = [None, None];
        let mut last_flight = Vec::new();
        let mut buf = vec![0u8; 4096];
        for _ in 0..50 {
            for idx in [0usize, 1] {
                let (from, to) = if idx == 0 {
                    (&mut c, &mut s)
                } else {
                    (&mut s, &mut c)
                };
                let mut packets = Vec::new();
                loop {
                    match from.poll_output(&mut buf) {
                        DtlsOutput::Packet(p) => packets.push(p.to_vec()),
                        DtlsOutput::KeyingMaterial(_, prof) => profiles[idx] = Some(prof),
                        DtlsOutput::Timeout(_) => break,
                        _ => {}
                    }
                }
                if idx == 0 && !packets.is_empty() {
                    last_flight = packets.clone();
                }
                for p in packets {
                    to.handle_packet(&p).unwrap();
                }
            }
            if let [Some(a), Some(b)] = profiles {
                return Connected {
                    client: c,
                    server: s,
                    profiles: (a, b),
                    last_flight,
                };
            }
        }
        panic!("handshake did not complete: {profiles:?}");
    }

    /// Runs a DTLS handshake between two OpenSSL instances, both through the adapter, to
    /// completion; returns the SRTP profile each side exported.
    fn handshake(client: &DtlsCert, server: &DtlsCert) -> (SrtpProfile, SrtpProfile) {
        connect(client, server, Instant::now()).profiles
    }

    /// Polls until the session asks for a timer; returns it and the packets polled before.
    fn poll_timer(i: &mut Instance) -> (Instant, usize) {
        let mut buf = vec![0u8; 4096];
        let mut packets = 0;
        loop {
            match i.poll_output(&mut buf) {
                DtlsOutput::Timeout(t) => return (t, packets),
                DtlsOutput::Packet(_) => packets += 1,
                _ => {}
            }
        }
    }

    #[test]
    fn the_openssl_instance_is_released_after_the_grace_and_answers_from_stored_values() {
        let t0 = Instant::now();
        let cert = OpensslDtls.generate_certificate().unwrap();
        let Connected {
            mut client,
            mut server,
            ..
        } = connect(&cert, &cert, t0);
        for (side, active) in [(&mut server, false), (&mut client, true)] {
            // Connected: the next timer is due at once, and arms the grace.
            let (due, _) = poll_timer(side);
            assert!(due <= t0, "the grace is armed at the next timer");
            side.handle_timeout(t0).unwrap();
            let (at, _) = poll_timer(side);
            assert!(
                at <= t0 + RELEASE_GRACE,
                "str0m wakes the session to release it"
            );
            side.handle_timeout(t0 + RELEASE_GRACE - Duration::from_millis(1))
                .unwrap();
            assert!(side.inner.is_some(), "kept during the grace");
            side.handle_timeout(t0 + RELEASE_GRACE).unwrap();
            assert!(side.inner.is_none(), "released after the grace");
            // The trait keeps answering.
            assert_eq!(side.is_active(), active);
            assert_eq!(side.protocol_version(), Some(ProtocolVersion::DTLS1_2));
            assert!(!side.is_closing() && !side.is_closed());
            assert!(
                side.handle_packet(&[22, 254, 253, 0, 0]).is_ok(),
                "late record ignored"
            );
            let (next, packets) = poll_timer(side);
            assert_eq!(packets, 0);
            assert!(next > t0 + RELEASE_GRACE);
            assert_eq!(side.send_application_data(b"x").ok(), Some(1));
            side.close().unwrap();
            assert!(side.is_closing() && side.is_closed());
        }
    }

    #[test]
    fn a_late_client_record_restarts_the_grace() {
        let t0 = Instant::now();
        let cert = OpensslDtls.generate_certificate().unwrap();
        let Connected {
            mut server,
            last_flight,
            ..
        } = connect(&cert, &cert, t0);
        assert!(!last_flight.is_empty());
        poll_timer(&mut server);
        server.handle_timeout(t0).unwrap();
        poll_timer(&mut server);
        // 20 s later the client, which lost our final flight, sends its own again (OpenSSL drops
        // these exact records as replays; a real retransmission has new record numbers).
        let t1 = t0 + Duration::from_secs(20);
        for p in &last_flight {
            server.handle_packet(p).unwrap();
        }
        let (due, _) = poll_timer(&mut server);
        assert!(due <= t1, "the grace is armed again at the next timer");
        server.handle_timeout(t1).unwrap();
        server.handle_timeout(t0 + RELEASE_GRACE).unwrap();
        assert!(
            server.inner.is_some(),
            "the grace restarted at the late flight"
        );
        server.handle_timeout(t1 + RELEASE_GRACE).unwrap();
        assert!(server.inner.is_none());
    }

    #[test]
    fn a_session_that_carried_application_data_is_kept() {
        let t0 = Instant::now();
        let cert = OpensslDtls.generate_certificate().unwrap();
        let Connected { mut server, .. } = connect(&cert, &cert, t0);
        server.send_application_data(b"sctp").unwrap();
        poll_timer(&mut server);
        server.handle_timeout(t0).unwrap();
        server.handle_timeout(t0 + RELEASE_GRACE * 4).unwrap();
        assert!(server.inner.is_some(), "SCTP needs the DTLS session");
    }

    fn rsa_cert() -> DtlsCert {
        use openssl::{asn1::Asn1Time, hash::MessageDigest, pkey::PKey, rsa::Rsa, x509};
        let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let mut b = x509::X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        let mut name = x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "rsa-client").unwrap();
        let name = name.build();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
            .unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        DtlsCert {
            certificate: b.build().to_der().unwrap(),
            private_key: key.private_key_to_der().unwrap(),
        }
    }

    #[test]
    fn rsa_client_certificate_is_accepted_and_gcm_negotiated() {
        let server = OpensslDtls.generate_certificate().unwrap();
        let (c, s) = handshake(&rsa_cert(), &server);
        assert_eq!(c, SrtpProfile::AEAD_AES_256_GCM);
        assert_eq!(s, SrtpProfile::AEAD_AES_256_GCM);
    }

    #[test]
    fn ecdsa_client_certificate_is_accepted() {
        let server = OpensslDtls.generate_certificate().unwrap();
        let client = OpensslDtls.generate_certificate().unwrap();
        let (c, s) = handshake(&client, &server);
        assert_eq!(
            (c, s),
            (SrtpProfile::AEAD_AES_256_GCM, SrtpProfile::AEAD_AES_256_GCM)
        );
    }

    #[test]
    fn the_srtp_keys_land_in_the_slot_given_at_creation() {
        let p = OpensslDtls;
        let (cs, ss) = (KeySlot::default(), KeySlot::default());
        let now = Instant::now();
        let cert = p.generate_certificate().unwrap();
        let mut c =
            with_key_slot(&cs, || p.new_dtls(&cert, now, DtlsVersion::Dtls12, None)).unwrap();
        let mut s =
            with_key_slot(&ss, || p.new_dtls(&cert, now, DtlsVersion::Dtls12, None)).unwrap();
        // A later instance made without a slot takes none.
        assert!(NEXT_SLOT.with(|s| s.borrow().is_none()));
        c.set_active(true);
        s.set_active(false);
        c.handle_timeout(now).unwrap();
        let mut buf = vec![0u8; 4096];
        for _ in 0..50 {
            if cs.get().is_some() && ss.get().is_some() {
                break;
            }
            for idx in [0usize, 1] {
                let (from, to) = if idx == 0 {
                    (&mut c, &mut s)
                } else {
                    (&mut s, &mut c)
                };
                let mut packets = Vec::new();
                loop {
                    match from.poll_output(&mut buf) {
                        DtlsOutput::Packet(p) => packets.push(p.to_vec()),
                        DtlsOutput::Timeout(_) => break,
                        _ => {}
                    }
                }
                for p in packets {
                    to.handle_packet(&p).unwrap();
                }
            }
        }
        let (ck, sk) = (cs.get().unwrap(), ss.get().unwrap());
        assert_eq!(ck.profile, SrtpProfile::AEAD_AES_256_GCM);
        assert_eq!(
            ck.material, sk.material,
            "both ends export the same material"
        );
        assert_eq!(ck.material.len(), ck.profile.keying_material_len());
        assert!(ck.active && !sk.active);
    }

    #[test]
    fn only_dtls_1_2_is_offered() {
        let cert = OpensslDtls.generate_certificate().unwrap();
        assert!(OpensslDtls
            .new_dtls(&cert, Instant::now(), DtlsVersion::Dtls13, None)
            .is_err());
    }
}
