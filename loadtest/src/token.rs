//! HS256 access tokens for the Greenroom server, signed locally with the server's secret (the
//! dev secret by default), so the load tester does not depend on the control crate.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The dev secret of `greenroom serve` without a configured secret.
pub const DEV_SECRET: &str = "greenroom-dev-secret";
/// The dev API key (the token's `kid`) of `greenroom serve` without a configured key.
pub const DEV_KEY: &str = "devkey";

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
    call: &'a str,
    role: &'a str,
}

/// A token for `user` limited to `call_cid` (`type:id`) with `role` (`host`, `user`, ...),
/// valid for `ttl_secs`, signed with the API key `key` (its `kid`, which must name a key the
/// server is configured with) and its `secret`.
pub fn mint(
    key: &str,
    secret: &str,
    user: &str,
    call_cid: &str,
    role: &str,
    ttl_secs: u64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = Claims {
        sub: user,
        exp: now + ttl_secs,
        iat: now,
        call: call_cid,
        role,
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(key.to_owned());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_verifies_with_the_secret_and_carries_the_claims() {
        let t = mint(DEV_KEY, DEV_SECRET, "bot-1", "default:room", "host", 600);
        let t = t.unwrap_or_default();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(DEV_SECRET.as_bytes()),
            &v,
        );
        let claims = data.map(|d| d.claims).unwrap_or_default();
        assert_eq!(claims["sub"], "bot-1");
        assert_eq!(claims["call"], "default:room");
        assert_eq!(claims["role"], "host");
        let wrong = jsonwebtoken::decode::<serde_json::Value>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(b"other"),
            &v,
        );
        assert!(wrong.is_err());
    }
}
