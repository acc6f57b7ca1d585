//! TURN relaying for the webrtc-rs bots (`--transport turn`): each bot gets the credential the
//! server would hand it in `joined.ice_servers` (the TURN REST scheme of docs/PROTOCOL.md,
//! minted here like the bots' tokens, from the same secret) and gathers relayed candidates
//! only, so all its media goes through the node's embedded TURN server.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use webrtc::peer_connection::RTCIceServer;

use crate::media::IceConfig;

/// Where and with which secret the bots relay.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnRelay {
    /// A `turn:host:port?transport=udp` URL (webrtc-rs relays over UDP only).
    pub url: String,
    /// The server's `[turn] secret` (by default its API secret).
    pub secret: String,
    /// Passed to [`IceConfig::relay_acceptance_min_wait`].
    pub relay_acceptance_min_wait: Option<std::time::Duration>,
}

/// Credential lifetime of the bots (a load test is shorter).
const TTL_SECS: u64 = 6 * 3600;

/// `(username, password)`: `<expiry>:<user>`, `base64(HMAC-SHA1(secret, username))`.
pub fn credential(secret: &str, user: &str, expires_unix: u64) -> (String, String) {
    let username = format!("{expires_unix}:{user}");
    // HMAC takes keys of any length: `new_from_slice` cannot fail.
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()) else {
        unreachable!("HMAC accepts keys of any length")
    };
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

impl TurnRelay {
    /// The relay-only ICE configuration of `user`'s connections.
    pub fn ice_for(&self, user: &str) -> IceConfig {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (username, credential) = credential(&self.secret, user, now + TTL_SECS);
        IceConfig {
            servers: vec![RTCIceServer {
                urls: vec![self.url.clone()],
                username,
                credential,
            }],
            relay_only: true,
            relay_acceptance_min_wait: self.relay_acceptance_min_wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_scheme_as_the_server() {
        // `echo -n "1700000000:bob" | openssl dgst -sha1 -hmac secret -binary | base64`
        let (u, p) = credential("secret", "bob", 1_700_000_000);
        assert_eq!(u, "1700000000:bob");
        assert_eq!(p, "YeMuUjjOaxvglmPbYS9o30UEIYg=");
    }
}
