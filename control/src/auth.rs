//! Tokens: HS256 JWTs signed with the API secret.
//!
//! Claims: `sub` (user id), `exp`, `iat`, optional `call` (`type:id` the token is limited to),
//! optional `role` (the global role; default `user`), optional `admin` (a server-side token that
//! may do everything). The header's `kid` carries the API key.

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
    /// Signing failed.
    #[error("cannot sign token: {0}")]
    Sign(String),
}

/// Signs and verifies tokens with one API key and secret.
#[derive(Clone)]
pub struct Auth {
    api_key: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("api_key", &self.api_key)
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
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Auth {
            api_key: api_key.to_owned(),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
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
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.api_key.clone());
        encode(&header, claims, &self.encoding).map_err(|e| AuthError::Sign(e.to_string()))
    }

    /// Verifies a token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let data =
            decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                    _ => AuthError::Invalid(e.to_string()),
                }
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
}
