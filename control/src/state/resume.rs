//! Signaling resume: a joined session outlives a dropped socket for `limits.resume_grace_secs`.
//!
//! Every joined session has one entry here, keyed by participant id, holding the SHA-256 of its
//! resume token and whether a socket holds the session ([`Holder::Socket`]) or nobody does
//! ([`Holder::Parked`], the grace period). A parked session keeps its place in the call and its
//! media peers; its events go to a parking outbox that nobody reads (the `resumed` snapshot
//! covers them), except the media plane's subscriber offers, which are kept and sent again on
//! resume. Resume and expiry both *remove* the parked entry from the map, so exactly one of them
//! wins a race; the loser finds nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use greenroom_proto::{CallCid, SourceSet};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{AppState, Notice, Outbox};

/// Makes a fresh resume token: the participant id and 256 random bits (hex), and in cluster
/// mode a dot and the id of the node holding the session (`home`), so a `resume` reaching
/// another node is relayed there. The server keeps only its SHA-256; the token is never logged.
pub fn new_resume_token(participant_id: &str, home: Option<&str>) -> String {
    let secret: [u8; 32] = rand::random();
    match home {
        Some(home) => format!("{participant_id}.{}.{home}", hex::encode(secret)),
        None => format!("{participant_id}.{}", hex::encode(secret)),
    }
}

/// The node holding a resume token's session, when the token names one (cluster mode).
pub fn resume_token_home(token: &str) -> Option<&str> {
    token.splitn(3, '.').nth(2).filter(|h| !h.is_empty())
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Who holds a resumable session.
#[derive(Debug)]
enum Holder {
    /// A live socket (its outbox: a `resume` from another socket closes it first).
    Socket(Outbox),
    /// Nobody: the socket dropped; the session waits for a `resume` until its grace ends.
    Parked(Parked),
}

/// The part of a dropped socket's session that a resume takes over.
#[derive(Debug)]
pub struct Parked {
    /// Tells parkings apart: the grace timer of an older parking expires nothing.
    epoch: u64,
    /// Why the socket dropped (the leave reason if the grace ends): `disconnected`, `too_slow`.
    reason: &'static str,
    /// Sources the session publishes.
    pub published: SourceSet,
    /// The latest subscriber offer not yet answered, sent again on resume.
    pub offer: Option<Utf8Bytes>,
    /// Notices sent to the session while parked (subscriber offers).
    notices: mpsc::UnboundedReceiver<Box<Notice>>,
}

impl Parked {
    /// Takes the notices that came while parked: the latest subscriber offer replaces the kept
    /// one. Returns false when a notice says the session was removed from its call.
    pub fn drain_notices(&mut self, participant_id: &str) -> bool {
        drain_into(&mut self.notices, participant_id, &mut self.offer)
    }
}

/// Drains `notices` for `participant_id`: the latest offer lands in `offer`; false when one
/// says the session was removed.
fn drain_into(
    notices: &mut mpsc::UnboundedReceiver<Box<Notice>>,
    participant_id: &str,
    offer: &mut Option<Utf8Bytes>,
) -> bool {
    let mut alive = true;
    while let Ok(n) = notices.try_recv() {
        match *n {
            Notice::Offer {
                participant_id: p,
                text,
            } if p == participant_id => *offer = Some(text),
            Notice::Removed(r) if r.participant_id == participant_id => alive = false,
            _ => {}
        }
    }
    alive
}

/// One joined session's resume entry.
#[derive(Debug)]
pub(super) struct Resumable {
    call: CallCid,
    user_id: String,
    token_digest: [u8; 32],
    holder: Holder,
}

/// What a socket hands over when it drops out of a joined session.
#[derive(Debug)]
pub struct Dropped<'a> {
    /// The session's call.
    pub call: &'a CallCid,
    /// The session.
    pub participant_id: &'a str,
    /// The dropping socket's outbox (the session's current one).
    pub outbox: &'a Outbox,
    /// The dropping socket's notice receiver: notices that raced the drop are kept.
    pub notices: &'a mut mpsc::UnboundedReceiver<Box<Notice>>,
    /// Sources the session publishes.
    pub published: SourceSet,
    /// The pending subscriber offer, if any.
    pub offer: Option<Utf8Bytes>,
    /// The leave reason if the grace period ends.
    pub reason: &'static str,
}

/// Why a `resume` failed (all answered `resume_failed`; the distinction is for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// No session with that token: unknown, forged, spent, expired, or another user's.
    #[error("no session to resume with this token (unknown, expired or another user's)")]
    NoSession,
    /// The session is still held by a socket that did not let go in time.
    #[error("the session is still held by another connection")]
    StillHeld,
    /// The session left its call (kicked, blocked, call ended) while disconnected.
    #[error("the session has left the call")]
    Gone,
}

/// What `take_resumable` returns: a session now owned by the resuming socket.
#[derive(Debug)]
pub enum Taken {
    /// The session's parked state, and its call.
    Parked(CallCid, Parked),
    /// A live socket holds it: it was told to close; try again shortly.
    Busy,
}

/// Unique parking epochs.
static EPOCH: AtomicU64 = AtomicU64::new(1);

impl AppState {
    /// Registers a joined (or resumed) session's resume token, held by the socket of `outbox`.
    pub fn register_resumable(
        &self,
        call: &CallCid,
        participant_id: &str,
        user_id: &str,
        token: &str,
        outbox: Outbox,
    ) {
        self.resumable.insert(
            participant_id.to_owned(),
            Resumable {
                call: call.clone(),
                user_id: user_id.to_owned(),
                token_digest: digest(token),
                holder: Holder::Socket(outbox),
            },
        );
    }

    /// Forgets a session's resume entry (it left, or was removed, while a socket held it).
    pub fn forget_resumable(&self, participant_id: &str) {
        self.resumable.remove(participant_id);
    }

    /// Number of sessions waiting for a resume.
    pub fn parked_count(&self) -> usize {
        self.resumable
            .iter()
            .filter(|r| matches!(r.holder, Holder::Parked(_)))
            .count()
    }

    /// A socket dropped out of its joined session: parks the session for the grace period and
    /// returns true (also when the session is no longer this socket's: nothing to do then).
    /// Returns false when it cannot be parked (no grace configured, the server is draining, or
    /// the session is no longer in the call); the caller then leaves as before. Spawns the
    /// grace timer: call it inside the tokio runtime (the socket's task).
    pub fn park(self: &Arc<Self>, d: Dropped<'_>) -> bool {
        let grace = self.config.limits.resume_grace_secs;
        if grace == 0 || self.is_shutting_down() {
            self.forget_resumable(d.participant_id);
            return false;
        }
        let (parking, inbox) = Outbox::new(1);
        // Events to a parked session are dropped at once (the snapshot on resume covers them).
        drop(inbox.queue);
        let epoch = EPOCH.fetch_add(1, Ordering::Relaxed);
        {
            let Some(mut r) = self.resumable.get_mut(d.participant_id) else {
                return false;
            };
            let Holder::Socket(holder) = &r.holder else {
                return true;
            };
            if !holder.same(d.outbox) {
                return true;
            }
            // The session's messages go to the parking outbox from now on; a notice sent to
            // the old socket before the swap is still in `d.notices` (drained below).
            let swapped = match self.sessions.get_mut(d.participant_id) {
                Some(mut s) if s.outbox.same(d.outbox) => {
                    s.outbox = parking;
                    true
                }
                _ => false,
            };
            let mut offer = d.offer;
            if !swapped || !drain_into(d.notices, d.participant_id, &mut offer) {
                drop(r);
                self.forget_resumable(d.participant_id);
                return false;
            }
            r.holder = Holder::Parked(Parked {
                epoch,
                reason: d.reason,
                published: d.published,
                offer,
                notices: inbox.notices,
            });
        }
        tracing::info!(grace_secs = grace, "session parked, waiting for a resume");
        let weak = Arc::downgrade(self);
        let pid = d.participant_id.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(grace)).await;
            if let Some(state) = weak.upgrade() {
                state.expire_parked(&pid, Some(epoch));
            }
        });
        true
    }

    /// Ends a parked session's grace period: it leaves its call with the reason its socket
    /// dropped with. `epoch` names one parking (the grace timer's); `None` expires whatever
    /// parking there is (a test hook for racing a resume). Returns whether a session left.
    pub fn expire_parked(&self, participant_id: &str, epoch: Option<u64>) -> bool {
        let Some((_, r)) = self
            .resumable
            .remove_if(participant_id, |_, r| match &r.holder {
                Holder::Parked(p) => epoch.is_none_or(|e| e == p.epoch),
                Holder::Socket(_) => false,
            })
        else {
            return false;
        };
        let reason = match &r.holder {
            Holder::Parked(p) => p.reason,
            Holder::Socket(_) => "disconnected",
        };
        tracing::info!(
            participant_id,
            reason,
            "resume grace period over, session leaves"
        );
        self.end_session(&r.call, participant_id, &r.user_id, reason);
        true
    }

    /// Ends a session taken for a resume that then failed (it left its call meanwhile, or the
    /// resuming socket may not be in that call): it leaves as if its grace had run out.
    pub fn end_taken(&self, call: &CallCid, participant_id: &str, user_id: &str) {
        self.end_session(call, participant_id, user_id, "disconnected");
    }

    fn end_session(
        &self,
        call: &CallCid,
        participant_id: &str,
        user_id: &str,
        reason: &'static str,
    ) {
        let _ = self.with_call(call, |c| Ok(((), c.leave(participant_id, reason))));
        self.media.leave(call, participant_id);
        self.ringing.session_left(self, call, user_id);
    }

    /// Takes a session for a `resume` by `user_id` with `token`. A parked session is removed
    /// from the map (the grace timer then finds nothing); a session still held by a live socket
    /// has that socket closed (4409) and answers [`Taken::Busy`]: the caller retries until the
    /// old socket has parked it.
    pub fn take_resumable(&self, token: &str, user_id: &str) -> Result<Taken, ResumeError> {
        let pid = token.split_once('.').map(|(p, _)| p).unwrap_or_default();
        let want = digest(token);
        let matches = |r: &Resumable| r.token_digest == want && r.user_id == user_id;
        if let Some((_, r)) = self.resumable.remove_if(pid, |_, r| {
            matches(r) && matches!(r.holder, Holder::Parked(_))
        }) {
            return match r.holder {
                Holder::Parked(p) => Ok(Taken::Parked(r.call, p)),
                Holder::Socket(_) => Err(ResumeError::NoSession),
            };
        }
        match self.resumable.get(pid) {
            Some(r) if matches(&r) => {
                if let Holder::Socket(o) = &r.holder {
                    o.close(REPLACED_CLOSE_CODE, "resumed on another connection");
                }
                Ok(Taken::Busy)
            }
            _ => Err(ResumeError::NoSession),
        }
    }
}

/// The close code of a socket whose session was resumed on another socket (4000 + HTTP 409).
pub const REPLACED_CLOSE_CODE: u16 = 4409;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bound_to_the_participant_and_unguessable() {
        let a = new_resume_token("p1", None);
        let b = new_resume_token("p1", None);
        assert!(a.starts_with("p1."));
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 64);
        assert_ne!(digest(&a), digest(&b));
        assert_eq!(resume_token_home(&a), None);
        let c = new_resume_token("p1", Some("node.a"));
        assert!(c.starts_with("p1."));
        assert_eq!(resume_token_home(&c), Some("node.a"));
        assert_eq!(c.split_once('.').map(|(p, _)| p), Some("p1"));
    }

    #[test]
    fn draining_keeps_the_latest_offer_and_sees_a_removal() {
        let (out, mut inbox) = Outbox::new(1);
        let offer = |t: &str| Notice::Offer {
            participant_id: "p".into(),
            text: t.into(),
        };
        out.notify(offer("o1"));
        out.notify(offer("o2"));
        let mut kept = None;
        assert!(drain_into(&mut inbox.notices, "p", &mut kept));
        assert_eq!(kept.as_ref().map(|t| t.as_str()), Some("o2"));
        out.notify(Notice::Removed(super::super::Removal {
            call_cid: "default:x".parse().unwrap(),
            participant_id: "p".into(),
            reason: "kicked",
        }));
        assert!(!drain_into(&mut inbox.notices, "p", &mut kept));
    }
}
