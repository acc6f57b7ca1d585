//! The revoke scenario (`--revoke-after`, Greenroom only): mid-run a moderator revokes the first
//! video publisher's `send-video` with `POST /v1/calls/{type}/{id}/user_permissions`, while every
//! publisher, like a hostile client, ignores `stop_publishing` and keeps sending; optionally
//! (`--regrant-after`) it grants `send-video` again. The runner ([`crate::runner`]) measures what
//! the subscribers received of that publisher's video before the revoke, in the revoked window
//! (from the revoke plus [`REVOKE_GRACE`], for packets already in flight, to the re-grant or the
//! end) and after the re-grant, next to every datagram the server sent the light bots in the
//! revoked window ([`crate::light::counters`]): the gate must leave no media of the revoked
//! track, and padding or probing for it shows there too.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::scenario::Scenario;

/// Packets forwarded before the revoke took effect may still arrive this long after the
/// revoke's HTTP reply: the revoked window starts this much later (so does the after-re-grant
/// window, for the gate to open and a keyframe to come).
pub const REVOKE_GRACE: Duration = Duration::from_millis(500);

/// When to revoke and grant again, from the start of the measurement window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevokePlan {
    /// Revoke `send-video` this long into the window.
    pub after: Duration,
    /// Grant it again this long into the window (`None`: stays revoked to the end).
    pub regrant_after: Option<Duration>,
}

impl RevokePlan {
    /// Refuses a plan whose windows do not fit the scenario, or a scenario without video.
    pub fn validate(&self, scenario: &Scenario) -> Result<(), String> {
        if scenario.video_publishers == 0 {
            return Err("--revoke-after needs a video publisher (--video-publishers 1)".into());
        }
        if scenario.subscribers == 0
            && !(scenario.publishers_subscribe && scenario.publishers() > 1)
        {
            return Err("--revoke-after needs someone receiving the video".into());
        }
        if self.after.is_zero() {
            return Err("--revoke-after must be positive".into());
        }
        let revoked_end = self.regrant_after.unwrap_or(scenario.duration);
        if self.after + REVOKE_GRACE >= revoked_end {
            return Err(format!(
                "--revoke-after {:?} leaves no revoked window before {:?} (the first {:?} after \
                 the revoke are a grace for packets in flight)",
                self.after, revoked_end, REVOKE_GRACE
            ));
        }
        if let Some(r) = self.regrant_after {
            if r + REVOKE_GRACE >= scenario.duration {
                return Err(format!(
                    "--regrant-after {r:?} leaves no window before the end ({:?}; grace {:?})",
                    scenario.duration, REVOKE_GRACE
                ));
            }
        }
        Ok(())
    }
}

/// What the revoke scenario measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RevokeSummary {
    /// The publisher whose `send-video` was revoked.
    pub user_id: String,
    /// Its video track (`<participant_id>:camera`).
    pub track_id: String,
    /// When `send-video` was revoked, s into the measurement window.
    pub revoke_after_s: f64,
    /// When it was granted again, s into the window.
    pub regrant_after_s: Option<f64>,
    /// The grace after the revoke (and re-grant) not measured, ms.
    pub grace_ms: u64,
    /// The `stop_publishing` messages the publisher received (and ignored).
    pub stop_publishing_received: u64,
    /// Media packets of the track all subscribers received per second, from the start of the
    /// window to the revoke.
    pub video_pps_before: f64,
    /// Length of the revoked window, s (revoke + grace to the re-grant or the end).
    pub revoked_secs: f64,
    /// Media packets (with a probe) of the revoked track the subscribers received in the
    /// revoked window: 0 when the gate holds.
    pub revoked_video_media_packets: u64,
    /// RTP packets of the revoked track (with or without a probe) received in the window.
    pub revoked_video_rtp_packets: u64,
    /// Video packets the publisher sent in the revoked window (it keeps sending).
    pub publisher_video_sent: u64,
    /// Media packets of every track received per second in the revoked window (the other
    /// tracks, e.g. the publisher's audio, keep flowing).
    pub media_pps: f64,
    /// Every datagram the server sent the light bots, per second, in the revoked window
    /// (`None` with webrtc-rs bots).
    pub datagrams_out_per_s: Option<f64>,
    /// Of those, RTP datagrams per second.
    pub rtp_per_s: Option<f64>,
    /// RTP datagrams that carried no media packet the bots counted (padding, probing, RTX
    /// the bots dropped) per second: RTP datagrams - RTP packets received.
    pub non_media_rtp_per_s: Option<f64>,
    /// RTP datagrams with the padding bit per second.
    pub padded_rtp_per_s: Option<f64>,
    /// RTCP datagrams per second.
    pub rtcp_per_s: Option<f64>,
    /// STUN datagrams per second.
    pub stun_per_s: Option<f64>,
    /// Media packets of the track received per second after the re-grant (+ grace).
    pub video_pps_after_regrant: Option<f64>,
}

/// A moderator's `user_permissions` request: grants (`grant`) or revokes `send-video` of
/// `user_id` in `call_cid` on the server at `url`, with `token` (it needs
/// `update-call-permissions`).
pub async fn set_send_video(
    url: &str,
    call_cid: &str,
    token: &str,
    user_id: &str,
    grant: bool,
    timeout: Duration,
) -> Result<(), reqwest::Error> {
    let (ty, id) = call_cid.split_once(':').unwrap_or((call_cid, ""));
    let url = format!(
        "{}/v1/calls/{ty}/{id}/user_permissions",
        url.trim_end_matches('/')
    );
    let change = vec!["send-video"];
    let none: Vec<&str> = Vec::new();
    let (grant_permissions, revoke_permissions) = if grant {
        (change, none)
    } else {
        (none, change)
    };
    reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .timeout(timeout)
        .json(&serde_json::json!({
            "user_id": user_id,
            "grant_permissions": grant_permissions,
            "revoke_permissions": revoke_permissions,
        }))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_must_fit_the_scenario() {
        let mut s = Scenario::new("r");
        s.video_publishers = 1;
        s.subscribers = 2;
        s.duration = Duration::from_secs(6);
        let plan = |after: u64, regrant: Option<u64>| RevokePlan {
            after: Duration::from_millis(after),
            regrant_after: regrant.map(Duration::from_millis),
        };
        assert!(plan(1500, Some(4000)).validate(&s).is_ok());
        assert!(plan(1500, None).validate(&s).is_ok());
        assert!(plan(0, None).validate(&s).is_err());
        // No revoked window: the re-grant comes within the grace, or the end does.
        assert!(plan(1500, Some(1900)).validate(&s).is_err());
        assert!(plan(5800, None).validate(&s).is_err());
        // No window after the re-grant.
        assert!(plan(1500, Some(5800)).validate(&s).is_err());
        // Nobody receives the video.
        s.subscribers = 0;
        assert!(plan(1500, None).validate(&s).is_err());
        s.audio_publishers = 1;
        assert!(plan(1500, None).validate(&s).is_ok());
        s.video_publishers = 0;
        s.subscribers = 2;
        assert!(plan(1500, None).validate(&s).is_err());
    }
}
