//! str0m's SRTP ciphers, built on first use.
//!
//! str0m derives two SRTP contexts per peer from the DTLS keys (what it sends, what it
//! receives), each with four ciphers (RTP and RTCP, encrypt and decrypt), and builds all eight
//! at once. On aws-lc an AES-GCM cipher is an `EVP_AEAD_CTX` in the C heap (the key schedule and
//! the GHASH tables, about 0.9 KiB with glibc's overhead). A lean audio listener's str0m sends no
//! SRTP or SRTCP (the engine forwards and reports for it) and opens only the client's SRTCP
//! (the first packets, until its DTLS session is released), so seven of its eight ciphers were
//! never used.
//!
//! [`LazySrtp`] wraps the default SRTP provider: its AES-GCM factories keep the key and build the
//! wrapped provider's cipher on the first `encrypt` or `decrypt`, then hand every call to it, so
//! the ciphertext is exactly the wrapped cipher's. AES128_CM_SHA1_80 (whose aws-lc cipher already
//! keeps only the key and builds its context per call) and the key-derivation rounds go straight
//! to the wrapped provider.

use std::fmt;

use str0m_proto::crypto::{
    AeadAes128GcmCipher, AeadAes256GcmCipher, CryptoError, SrtpProvider, SupportedAeadAes128Gcm,
    SupportedAeadAes256Gcm, SupportedAes128CmSha1_80,
};

/// An SRTP provider whose AES-GCM ciphers are built on first use (module docs).
#[derive(Debug)]
pub(crate) struct LazySrtp {
    inner: &'static dyn SrtpProvider,
    gcm128: &'static LazyGcm128,
    gcm256: &'static LazyGcm256,
}

impl LazySrtp {
    /// Wraps `inner`. Allocates the two factories once for the program's life (the process's
    /// provider is built once: `dtls::provider`).
    pub(crate) fn new(inner: &'static dyn SrtpProvider) -> Self {
        Self {
            inner,
            gcm128: Box::leak(Box::new(LazyGcm128(inner.aead_aes_128_gcm()))),
            gcm256: Box::leak(Box::new(LazyGcm256(inner.aead_aes_256_gcm()))),
        }
    }
}

impl SrtpProvider for LazySrtp {
    fn aes_128_cm_sha1_80(&self) -> &'static dyn SupportedAes128CmSha1_80 {
        self.inner.aes_128_cm_sha1_80()
    }

    fn aead_aes_128_gcm(&self) -> &'static dyn SupportedAeadAes128Gcm {
        self.gcm128
    }

    fn aead_aes_256_gcm(&self) -> &'static dyn SupportedAeadAes256Gcm {
        self.gcm256
    }

    fn srtp_aes_128_ecb_round(&self, key: &[u8], input: &[u8], output: &mut [u8]) {
        self.inner.srtp_aes_128_ecb_round(key, input, output)
    }

    fn srtp_aes_256_ecb_round(&self, key: &[u8], input: &[u8], output: &mut [u8]) {
        self.inner.srtp_aes_256_ecb_round(key, input, output)
    }
}

/// One lazy AEAD cipher type and its factory, for a key length and str0m's cipher traits.
macro_rules! lazy_aead {
    ($factory:ident, $cipher:ident, $supported:ident, $trait:ident, $len:literal) => {
        #[doc = concat!("The factory of [`", stringify!($cipher), "`]s: each builds the wrapped factory's cipher on first use.")]
        pub(crate) struct $factory(&'static dyn $supported);

        impl fmt::Debug for $factory {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(stringify!($factory))
            }
        }

        impl $supported for $factory {
            fn create_cipher(&self, key: [u8; $len], encrypt: bool) -> Box<dyn $trait> {
                Box::new($cipher {
                    factory: self.0,
                    encrypt,
                    state: LazyState::Key(key),
                })
            }
        }

        /// A cipher that holds its key until the first call, then the wrapped cipher.
        pub(crate) struct $cipher {
            factory: &'static dyn $supported,
            encrypt: bool,
            state: LazyState<[u8; $len], Box<dyn $trait>>,
        }

        impl $cipher {
            /// The wrapped cipher, built now if this is the first call (the key is dropped).
            fn built(&mut self) -> &mut dyn $trait {
                if let LazyState::Key(key) = &self.state {
                    self.state = LazyState::Built(self.factory.create_cipher(*key, self.encrypt));
                }
                match &mut self.state {
                    LazyState::Built(c) => c.as_mut(),
                    // Just replaced above.
                    LazyState::Key(_) => unreachable!("the cipher was built above"),
                }
            }

            /// Whether the wrapped cipher was built (tests).
            #[cfg(test)]
            fn is_built(&self) -> bool {
                matches!(self.state, LazyState::Built(_))
            }
        }

        impl fmt::Debug for $cipher {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Never the key.
                f.debug_struct(stringify!($cipher))
                    .field("encrypt", &self.encrypt)
                    .field("built", &matches!(self.state, LazyState::Built(_)))
                    .finish_non_exhaustive()
            }
        }

        impl $trait for $cipher {
            fn encrypt(
                &mut self,
                iv: &[u8; 12],
                aad: &[u8],
                input: &[u8],
                output: &mut [u8],
            ) -> Result<(), CryptoError> {
                self.built().encrypt(iv, aad, input, output)
            }

            fn decrypt(
                &mut self,
                iv: &[u8; 12],
                aads: &[&[u8]],
                input: &[u8],
                output: &mut [u8],
            ) -> Result<usize, CryptoError> {
                self.built().decrypt(iv, aads, input, output)
            }
        }
    };
}

/// A lazy cipher's state: the key until the first use, then the built cipher.
enum LazyState<K, C> {
    Key(K),
    Built(C),
}

lazy_aead!(
    LazyGcm128,
    LazyGcm128Cipher,
    SupportedAeadAes128Gcm,
    AeadAes128GcmCipher,
    16
);
lazy_aead!(
    LazyGcm256,
    LazyGcm256Cipher,
    SupportedAeadAes256Gcm,
    AeadAes256GcmCipher,
    32
);

#[cfg(test)]
mod tests {
    use super::*;

    fn inner() -> &'static dyn SrtpProvider {
        str0m::crypto::from_feature_flags().srtp_provider
    }

    /// An AAD of the shape SRTP uses (at least 12 bytes).
    const AAD: [u8; 12] = [0x80, 0x6f, 0x12, 0x34, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef];

    #[test]
    fn a_cipher_is_built_on_first_use_only() {
        let lazy = LazySrtp::new(inner());
        let mut out = [0u8; 64];
        let mut enc = LazyGcm128Cipher {
            factory: lazy.gcm128.0,
            encrypt: true,
            state: LazyState::Key([7; 16]),
        };
        assert!(!enc.is_built());
        enc.encrypt(&[1; 12], &AAD, b"hello", &mut out).unwrap();
        assert!(enc.is_built());
        // The Debug form says whether it was built and never shows the key.
        let dbg = format!("{enc:?}");
        assert!(dbg.contains("built: true"), "{dbg}");
        assert!(!dbg.contains('7'), "{dbg}");

        let mut dec = LazyGcm256Cipher {
            factory: lazy.gcm256.0,
            encrypt: false,
            state: LazyState::Key([8; 32]),
        };
        assert!(!dec.is_built());
        assert!(!format!("{dec:?}").contains('8'));
        // A packet that fails to authenticate still builds the cipher (and fails).
        assert!(dec.decrypt(&[1; 12], &[&AAD], &[0; 40], &mut out).is_err());
        assert!(dec.is_built());
    }

    /// Encrypts (iv, plaintext, output) with one cipher.
    type Seal<'a> = dyn FnMut(&[u8; 12], &[u8], &mut [u8]) + 'a;
    /// Decrypts (iv, ciphertext with tag, output) with one cipher: the plaintext's length.
    type Open<'a> = dyn FnMut(&[u8; 12], &[u8], &mut [u8]) -> Result<usize, CryptoError> + 'a;

    /// Encrypts and decrypts a run of packets with the lazy and the eager cipher of one key:
    /// the same ciphertext and tag from the first packet on, each decrypts the other's.
    fn same_as_eager(
        lazy_enc: &mut Seal<'_>,
        eager_enc: &mut Seal<'_>,
        lazy_dec: &mut Open<'_>,
        eager_dec: &mut Open<'_>,
    ) {
        for i in 0..20u8 {
            let iv = [i; 12];
            let plain: Vec<u8> = (0..(10 + usize::from(i) * 37))
                .map(|b| b as u8 ^ i)
                .collect();
            let mut a = vec![0u8; plain.len() + 16];
            let mut b = vec![0u8; plain.len() + 16];
            lazy_enc(&iv, &plain, &mut a);
            eager_enc(&iv, &plain, &mut b);
            assert_eq!(a, b, "packet {i}: the lazy cipher's output differs");
            let mut p1 = vec![0u8; a.len()];
            let mut p2 = vec![0u8; a.len()];
            let n1 = lazy_dec(&iv, &b, &mut p1).expect("the lazy cipher opens the eager's");
            let n2 = eager_dec(&iv, &a, &mut p2).expect("the eager cipher opens the lazy's");
            assert_eq!(&p1[..n1], &plain[..]);
            assert_eq!(&p2[..n2], &plain[..]);
            // A flipped byte fails to authenticate in both.
            let mut bad = a.clone();
            bad[0] ^= 1;
            assert!(lazy_dec(&iv, &bad, &mut p1).is_err());
            assert!(eager_dec(&iv, &bad, &mut p2).is_err());
        }
    }

    #[test]
    fn lazy_aes_128_gcm_is_the_eager_cipher_from_the_first_packet_on() {
        let lazy = LazySrtp::new(inner());
        let key = [0x42; 16];
        let mut le = lazy.aead_aes_128_gcm().create_cipher(key, true);
        let mut ld = lazy.aead_aes_128_gcm().create_cipher(key, false);
        let mut ee = inner().aead_aes_128_gcm().create_cipher(key, true);
        let mut ed = inner().aead_aes_128_gcm().create_cipher(key, false);
        same_as_eager(
            &mut |iv, p, o| le.encrypt(iv, &AAD, p, o).unwrap(),
            &mut |iv, p, o| ee.encrypt(iv, &AAD, p, o).unwrap(),
            &mut |iv, c, o| ld.decrypt(iv, &[&AAD], c, o),
            &mut |iv, c, o| ed.decrypt(iv, &[&AAD], c, o),
        );
    }

    #[test]
    fn lazy_aes_256_gcm_is_the_eager_cipher_from_the_first_packet_on() {
        let lazy = LazySrtp::new(inner());
        let key = [0x24; 32];
        let mut le = lazy.aead_aes_256_gcm().create_cipher(key, true);
        let mut ld = lazy.aead_aes_256_gcm().create_cipher(key, false);
        let mut ee = inner().aead_aes_256_gcm().create_cipher(key, true);
        let mut ed = inner().aead_aes_256_gcm().create_cipher(key, false);
        same_as_eager(
            &mut |iv, p, o| le.encrypt(iv, &AAD, p, o).unwrap(),
            &mut |iv, p, o| ee.encrypt(iv, &AAD, p, o).unwrap(),
            &mut |iv, c, o| ld.decrypt(iv, &[&AAD], c, o),
            &mut |iv, c, o| ed.decrypt(iv, &[&AAD], c, o),
        );
    }

    #[test]
    fn a_first_decrypt_that_fails_still_leaves_a_working_cipher() {
        let lazy = LazySrtp::new(inner());
        let key = [9; 16];
        let mut ee = inner().aead_aes_128_gcm().create_cipher(key, true);
        let mut ld = lazy.aead_aes_128_gcm().create_cipher(key, false);
        let mut sealed = [0u8; 32];
        ee.encrypt(&[3; 12], &AAD, b"sixteen bytes!!!", &mut sealed)
            .unwrap();
        let mut out = [0u8; 32];
        let mut bad = sealed;
        bad[5] ^= 0x80;
        assert!(ld.decrypt(&[3; 12], &[&AAD], &bad, &mut out).is_err());
        let n = ld.decrypt(&[3; 12], &[&AAD], &sealed, &mut out).unwrap();
        assert_eq!(&out[..n], b"sixteen bytes!!!");
    }

    #[test]
    fn aes_cm_and_the_key_rounds_are_the_wrapped_providers() {
        let lazy = LazySrtp::new(inner());
        let key = [5; 16];
        let iv = [6; 16];
        let mut a = [0u8; 40];
        let mut b = [0u8; 40];
        lazy.aes_128_cm_sha1_80()
            .create_cipher(key, true)
            .encrypt(&iv, &[1; 40], &mut a)
            .unwrap();
        inner()
            .aes_128_cm_sha1_80()
            .create_cipher(key, true)
            .encrypt(&iv, &[1; 40], &mut b)
            .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, [1; 40]);
        let (mut x, mut y) = ([0u8; 16], [0u8; 16]);
        lazy.srtp_aes_128_ecb_round(&[1; 16], &[2; 16], &mut x);
        inner().srtp_aes_128_ecb_round(&[1; 16], &[2; 16], &mut y);
        assert_eq!(x, y);
        let (mut x, mut y) = ([0u8; 16], [0u8; 16]);
        lazy.srtp_aes_256_ecb_round(&[1; 32], &[2; 16], &mut x);
        inner().srtp_aes_256_ecb_round(&[1; 32], &[2; 16], &mut y);
        assert_eq!(x, y);
    }

    #[test]
    fn the_servers_provider_serves_every_profile_with_lazy_gcm() {
        let p = crate::dtls::provider();
        let srtp = p.srtp_provider;
        // Both AES-GCM profiles through the lazy factories, opened by the eager ciphers.
        let mut c = srtp.aead_aes_128_gcm().create_cipher([1; 16], true);
        assert!(format!("{c:?}").contains("LazyGcm128Cipher"), "{c:?}");
        let mut sealed = [0u8; 40];
        c.encrypt(&[2; 12], &AAD, &[3; 24], &mut sealed).unwrap();
        let mut out = [0u8; 40];
        let n = inner()
            .aead_aes_128_gcm()
            .create_cipher([1; 16], false)
            .decrypt(&[2; 12], &[&AAD], &sealed, &mut out)
            .unwrap();
        assert_eq!(&out[..n], &[3; 24]);
        let mut c = srtp.aead_aes_256_gcm().create_cipher([1; 32], true);
        assert!(format!("{c:?}").contains("LazyGcm256Cipher"), "{c:?}");
        c.encrypt(&[2; 12], &AAD, &[3; 24], &mut sealed).unwrap();
        let n = inner()
            .aead_aes_256_gcm()
            .create_cipher([1; 32], false)
            .decrypt(&[2; 12], &[&AAD], &sealed, &mut out)
            .unwrap();
        assert_eq!(&out[..n], &[3; 24]);
        // AES128_CM_SHA1_80 as before.
        let mut a = [0u8; 24];
        let mut b = [0u8; 24];
        srtp.aes_128_cm_sha1_80()
            .create_cipher([4; 16], true)
            .encrypt(&[5; 16], &[6; 24], &mut a)
            .unwrap();
        inner()
            .aes_128_cm_sha1_80()
            .create_cipher([4; 16], true)
            .encrypt(&[5; 16], &[6; 24], &mut b)
            .unwrap();
        assert_eq!(a, b);
    }
}
