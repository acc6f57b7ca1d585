//! Tokens: HS256 JWTs signed with an API secret.
//!
//! Claims: `sub` (user id), `exp`, `iat`, optional `call` (`type:id` the token is limited to),
//! optional `role` (the global role; default `user`), optional `admin` (a server-side token that
//! may do everything). The header's `kid` carries the API key and must name a configured key:
//! the token is verified with that key's secret only. Several keys may be configured at once so
//! operators can rotate secrets: new tokens are signed with the first key, tokens of any
//! configured key verify, and a token whose `kid` names no key is refused
//! ([`AuthError::UnknownKey`]).

use std::time::{SystemTime, UNIX_EPOCH};

use greenroom_proto::{validate_id, CallCid, Role};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::call::Actor;

/// The claims of a Greenroom token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    #[serde(default)]
    pub iat: u64,
    /// The only call this token may be used for, `type:id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<String>,
    /// The global role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// A server-side token with every capability.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in the request.
    #[error("missing token: send Authorization: Bearer <token> (or ?token= on /v1/signal)")]
    Missing,
    /// The token has expired.
    #[error("token expired")]
    Expired,
    /// Signature, format or claims are wrong.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The header's `kid` is missing or names no configured API key.
    #[error("unknown API key: the token's kid `{0}` names no configured key")]
    UnknownKey(String),
    /// Signing failed.
    #[error("cannot sign token: {0}")]
    Sign(String),
}

/// One API key: its name (the token's `kid`) and its HS256 keys.
#[derive(Clone)]
struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// Signs tokens with the first configured API key and verifies tokens of any configured key,
/// chosen by the header's `kid`.
#[derive(Clone)]
pub struct Auth {
    /// Never empty: the first signs.
    keys: Vec<SigningKey>,
    validation: Validation,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|k| k.kid.as_str()).collect();
        f.debug_struct("Auth")
            .field("api_keys", &kids)
            .finish_non_exhaustive()
    }
}

/// Current Unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Current Unix time in milliseconds.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Auth {
    /// A signer/verifier for one key pair.
    pub fn new(api_key: &str, secret: &str) -> Auth {
        Auth::with_keys(api_key, secret, std::iter::empty::<(&str, &str)>())
    }

    /// A signer/verifier that signs with `(api_key, secret)` and also verifies tokens of the
    /// `others` (`(api_key, secret)` pairs), e.g. the previous key during a rotation.
    pub fn with_keys<'a>(
        api_key: &str,
        secret: &str,
        others: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Auth {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let key = |kid: &str, secret: &str| SigningKey {
            kid: kid.to_owned(),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        };
        let mut keys = vec![key(api_key, secret)];
        keys.extend(others.into_iter().map(|(k, s)| key(k, s)));
        Auth { keys, validation }
    }

    /// A signer/verifier for every key of the configuration (the first signs).
    pub fn from_config(keys: &crate::config::KeysConfig) -> Auth {
        Auth::with_keys(
            &keys.api_key,
            &keys.api_secret,
            keys.verify_only
                .iter()
                .map(|k| (k.api_key.as_str(), k.api_secret.as_str())),
        )
    }

    /// The API key new tokens are signed with.
    pub fn signing_key_id(&self) -> &str {
        &self.keys[0].kid
    }

    /// Mints a token.
    pub fn mint(
        &self,
        user_id: &str,
        call: Option<&CallCid>,
        role: Option<Role>,
        admin: bool,
        ttl_secs: u64,
    ) -> Result<String, AuthError> {
        validate_id(user_id).map_err(|e| AuthError::Sign(e.to_string()))?;
        let now = unix_now();
        let claims = Claims {
            sub: user_id.to_owned(),
            exp: now + ttl_secs,
            iat: now,
            call: call.map(|c| c.to_string()),
            role,
            admin,
        };
        self.sign(&claims)
    }

    /// Signs arbitrary claims (tests use it for expired tokens).
    pub fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        let signer = &self.keys[0];
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(signer.kid.clone());
        encode(&header, claims, &signer.encoding).map_err(|e| AuthError::Sign(e.to_string()))
    }

    /// Verifies a token with the key its header's `kid` names and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let kid = header.kid.unwrap_or_default();
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| AuthError::UnknownKey(kid.chars().take(64).collect()))?;
        let data = decode::<Claims>(token, &key.decoding, &self.validation).map_err(|e| match e
            .kind()
        {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        })?;
        validate_id(&data.claims.sub).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if let Some(c) = &data.claims.call {
            c.parse::<CallCid>()
                .map_err(|e| AuthError::Invalid(format!("call claim: {e}")))?;
        }
        Ok(data.claims)
    }
}

impl Claims {
    /// The actor these claims describe.
    pub fn actor(&self) -> Actor {
        Actor {
            user_id: self.sub.clone(),
            role: self.role.unwrap_or(Role::User),
            admin: self.admin,
        }
    }

    /// Whether the token may be used for `cid`.
    pub fn allows_call(&self, cid: &CallCid) -> bool {
        self.admin || self.call.as_deref().is_none_or(|c| c == cid.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_and_verify() {
        let a = Auth::new("k", "s");
        let cid: CallCid = "default:x".parse().unwrap();
        let t = a
            .mint("alice", Some(&cid), Some(Role::Host), false, 60)
            .unwrap();
        let c = a.verify(&t).unwrap();
        assert_eq!(c.sub, "alice");
        assert_eq!(c.role, Some(Role::Host));
        assert!(c.allows_call(&cid));
        assert!(!c.allows_call(&"default:y".parse().unwrap()));
    }

    #[test]
    fn forged_and_expired_are_refused() {
        let a = Auth::new("k", "s");
        let other = Auth::new("k", "not-s");
        let t = other.mint("alice", None, None, true, 60).unwrap();
        assert!(matches!(a.verify(&t), Err(AuthError::Invalid(_))));
        let expired = a
            .sign(&Claims {
                sub: "alice".into(),
                exp: unix_now() - 3600,
                iat: 0,
                call: None,
                role: None,
                admin: false,
            })
            .unwrap();
        assert_eq!(a.verify(&expired), Err(AuthError::Expired));
        assert!(matches!(a.verify("garbage"), Err(AuthError::Invalid(_))));
    }

    fn claims_for(user: &str) -> Claims {
        Claims {
            sub: user.into(),
            exp: unix_now() + 60,
            iat: unix_now(),
            call: None,
            role: None,
            admin: false,
        }
    }

    #[test]
    fn kid_must_name_a_configured_key() {
        let a = Auth::new("k", "s");
        // Same secret, another kid: refused although the signature would verify.
        let wrong_kid = Auth::new("other", "s").mint("alice", None, None, false, 60);
        assert_eq!(
            a.verify(&wrong_kid.unwrap()),
            Err(AuthError::UnknownKey("other".into()))
        );
        // No kid at all.
        let no_kid = encode(
            &Header::new(Algorithm::HS256),
            &claims_for("alice"),
            &EncodingKey::from_secret(b"s"),
        )
        .unwrap();
        assert_eq!(a.verify(&no_kid), Err(AuthError::UnknownKey(String::new())));
    }

    #[test]
    fn rotation_verifies_every_configured_key_and_signs_with_the_first() {
        let old = Auth::new("k1", "s1");
        let new = Auth::new("k2", "s2");
        let both = Auth::with_keys("k2", "s2", [("k1", "s1")]);
        assert_eq!(both.signing_key_id(), "k2");
        let t_old = old.sign(&claims_for("alice")).unwrap();
        let t_new = new.sign(&claims_for("bob")).unwrap();
        assert_eq!(both.verify(&t_old).unwrap().sub, "alice");
        assert_eq!(both.verify(&t_new).unwrap().sub, "bob");
        // Minted tokens carry the first key and verify with it alone.
        let minted = both.mint("carol", None, None, false, 60).unwrap();
        assert_eq!(new.verify(&minted).unwrap().sub, "carol");
        // A kid naming k1 with k2's secret does not verify (the kid picks the secret).
        let forged = Auth::new("k1", "s2").sign(&claims_for("eve")).unwrap();
        assert!(matches!(both.verify(&forged), Err(AuthError::Invalid(_))));
        // Once k1 is removed its tokens are refused.
        assert_eq!(new.verify(&t_old), Err(AuthError::UnknownKey("k1".into())));
    }
}
