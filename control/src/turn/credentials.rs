//! Time-limited TURN credentials (the "TURN REST API" scheme that coturn, Janus and the
//! browsers' ICE stacks share): the username is `<expiry-unix-seconds>:<user_id>` and the
//! password is `base64(HMAC-SHA1(secret, username))`. The server needs no per-user state to check
//! them: it recomputes the password and compares the expiry with the clock.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};

/// Why a TURN username is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The username is not `<expiry>:<user_id>`.
    #[error("malformed TURN username")]
    Malformed,
    /// The expiry is in the past.
    #[error("TURN credentials expired")]
    Expired,
}

/// A username and password for one user, valid until `expires_unix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// `<expiry-unix-seconds>:<user_id>`.
    pub username: String,
    /// `base64(HMAC-SHA1(secret, username))`.
    pub password: String,
    /// When the credential stops working (Unix seconds).
    pub expires_unix: u64,
}

/// Mints and checks credentials with one shared secret.
#[derive(Clone)]
pub struct Credentials {
    secret: Vec<u8>,
    ttl_secs: u64,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Credentials {
    /// Credentials derived from `secret`, each valid for `ttl_secs` after minting.
    pub fn new(secret: &str, ttl_secs: u64) -> Credentials {
        Credentials {
            secret: secret.as_bytes().to_vec(),
            ttl_secs,
        }
    }

    /// The password of a username (whether or not it is still valid).
    pub fn password(&self, username: &str) -> String {
        // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
        let mut mac = match Hmac::<sha1::Sha1>::new_from_slice(&self.secret) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        mac.update(username.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }

    /// A credential for `user_id`, minted at `now_unix`.
    pub fn mint(&self, user_id: &str, now_unix: u64) -> Credential {
        let expires_unix = now_unix.saturating_add(self.ttl_secs);
        let username = format!("{expires_unix}:{user_id}");
        let password = self.password(&username);
        Credential {
            username,
            password,
            expires_unix,
        }
    }

    /// Checks a username's form and expiry at `now_unix`; returns the user id it was minted for.
    /// The password is checked by the STUN message integrity, keyed with [`Self::password`].
    pub fn check<'a>(&self, username: &'a str, now_unix: u64) -> Result<&'a str, CredentialError> {
        let (expiry, user) = username.split_once(':').ok_or(CredentialError::Malformed)?;
        let expiry: u64 = expiry.parse().map_err(|_| CredentialError::Malformed)?;
        if user.is_empty() {
            return Err(CredentialError::Malformed);
        }
        if expiry <= now_unix {
            return Err(CredentialError::Expired);
        }
        Ok(user)
    }

    /// The long-term key (`MD5(username:realm:password)`) of a valid username.
    pub fn key(
        &self,
        username: &str,
        realm: &str,
        now_unix: u64,
    ) -> Result<Vec<u8>, CredentialError> {
        self.check(username, now_unix)?;
        Ok(stun::integrity::MessageIntegrity::new_long_term_integrity(
            username.to_owned(),
            realm.to_owned(),
            self.password(username),
        )
        .0)
    }
}

impl turn::auth::AuthHandler for Credentials {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        _src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        self.key(username, realm, unix_now())
            .map_err(|e| turn::Error::Other(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_then_check() {
        let c = Credentials::new("s3cret", 3600);
        let cred = c.mint("alice", 1_000);
        assert_eq!(cred.username, "4600:alice");
        assert_eq!(cred.expires_unix, 4600);
        assert_eq!(c.check(&cred.username, 1_000), Ok("alice"));
        assert_eq!(c.check(&cred.username, 4599), Ok("alice"));
        assert_eq!(c.check(&cred.username, 4600), Err(CredentialError::Expired));
        // User ids may contain colons: only the first one separates.
        assert_eq!(c.check("4600:a:b", 1), Ok("a:b"));
    }

    #[test]
    fn password_is_the_rest_api_hmac() {
        // Reference value: `echo -n "1700000000:bob" | openssl dgst -sha1 -hmac secret -binary | base64`.
        let c = Credentials::new("secret", 60);
        assert_eq!(c.password("1700000000:bob"), "YeMuUjjOaxvglmPbYS9o30UEIYg=");
        assert_ne!(
            Credentials::new("other", 60).password("1700000000:bob"),
            c.password("1700000000:bob")
        );
    }

    #[test]
    fn malformed_usernames() {
        let c = Credentials::new("s", 60);
        for u in ["alice", "x:alice", ":alice", "100:", "", "-1:a"] {
            assert_eq!(c.check(u, 0), Err(CredentialError::Malformed), "{u}");
        }
    }
}
