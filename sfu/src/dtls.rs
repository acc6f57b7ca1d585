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
//! Keys for the lean audio path: the SRTP keying material str0m derives its contexts from
//! passes through [`Instance::poll_output`]; a copy goes into the peer's [`KeySlot`], handed to
//! the instance at creation through [`with_key_slot`] (str0m creates the instance inside
//! `RtcConfig::build`, synchronously, on the calling thread).

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

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
        Ok(Box::new(Instance {
            inner,
            started: false,
            keys: NEXT_SLOT.with(|s| s.borrow_mut().take()),
        }))
    }
}

/// One OpenSSL DTLS session, seen through the 0.8 [`DtlsInstance`] trait.
struct Instance {
    inner: Box<dyn old::DtlsInstance>,
    /// The OpenSSL instance starts a handshake only when it gets input; as the DTLS client
    /// (active) nothing would arrive first, so the first timeout feeds it an empty packet.
    started: bool,
    /// Where the SRTP keys go (the lean audio path), if the engine asked for them.
    keys: Option<KeySlot>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpensslDtlsInstance").finish()
    }
}

impl DtlsInstance for Instance {
    fn set_active(&mut self, active: bool) {
        self.inner.set_active(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.started = true;
        self.inner.handle_packet(packet).map_err(convert_error)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        let out = convert_output(self.inner.poll_output(buf));
        if let (DtlsOutput::KeyingMaterial(km, profile), Some(slot)) = (&out, &self.keys) {
            // Set once: a second export (none is expected) keeps the first keys, as str0m's
            // contexts would differ from ours otherwise only if it re-keyed, which it cannot.
            let _ = slot.set(SrtpKeys {
                profile: *profile,
                material: km.as_ref().to_vec(),
                active: self.inner.is_active(),
            });
        }
        out
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        if !self.started && self.inner.is_active() {
            self.started = true;
            self.inner.handle_packet(&[]).map_err(convert_error)?;
        }
        self.inner.handle_timeout(now).map_err(convert_error)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        // The 0.7 trait takes all of it or fails; the 0.8 one reports how much it took.
        self.inner
            .send_application_data(data)
            .map(|()| data.len())
            .map_err(convert_error)
    }

    fn is_active(&self) -> bool {
        self.inner.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        // `new_dtls` only ever creates DTLS 1.2 sessions.
        self.inner
            .protocol_version()
            .map(|_| ProtocolVersion::DTLS1_2)
    }

    fn is_closing(&self) -> bool {
        self.inner.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.inner.close().map_err(convert_error)
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

    /// Runs a DTLS handshake between two OpenSSL instances, both through the adapter, to
    /// completion; returns the SRTP profile each side exported.
    fn handshake(client: &DtlsCert, server: &DtlsCert) -> (SrtpProfile, SrtpProfile) {
        let p = OpensslDtls;
        let now = Instant::now();
        let mut c = p.new_dtls(client, now, DtlsVersion::Dtls12, None).unwrap();
        let mut s = p.new_dtls(server, now, DtlsVersion::Dtls12, None).unwrap();
        c.set_active(true);
        s.set_active(false);
        c.handle_timeout(now).unwrap();
        let mut profiles = [None, None];
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
                for p in packets {
                    to.handle_packet(&p).unwrap();
                }
            }
            if let [Some(a), Some(b)] = profiles {
                return (a, b);
            }
        }
        panic!("handshake did not complete: {profiles:?}");
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
