//! Offers to a subscriber peer (every other participant's producers in the call, SendOnly) and
//! its answers, with the bookkeeping in [`super::negotiation`].

use super::*;
use greenroom_proto::{SubscribedTrack, TrackInfo};
use str0m::change::SdpAnswer;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind};
use tracing::warn;

use super::peers::configure_send_stream;
use crate::offer_plan::Stale;

impl Engine {
    /// Re-offers to everyone in `pid`'s call except `pid` (their track set changed).
    pub(super) fn renegotiate_call_of(&mut self, pid: &str, now: Instant) {
        let Some(call) = self.parts.get(pid).map(|p| p.call.clone()) else {
            return;
        };
        let members = self
            .calls
            .get(&call)
            .map(|c| c.members.clone())
            .unwrap_or_default();
        for m in members.iter().filter(|m| *m != pid) {
            self.renegotiate(m, now);
        }
    }

    /// Brings `pid`'s subscriber peer in line with the producers it may receive: adds media
    /// for new producers, stops media of gone ones, offers (or queues if an offer is pending).
    /// Lean audio streams, declared again for the offer's `a=ssrc` lines, are removed again
    /// before anything drives the peer (see `lean`).
    pub(super) fn renegotiate(&mut self, pid: &str, now: Instant) {
        let Some(sub_key) = self.parts.get(pid).map(|p| p.subscriber) else {
            return;
        };
        self.offer(pid, now);
        self.repark_lean(sub_key);
    }

    /// [`Engine::renegotiate`] up to the offer.
    fn offer(&mut self, pid: &str, now: Instant) {
        let Some(part) = self.parts.get(pid) else {
            return;
        };
        let call = part.call.clone();
        let sub_key = part.subscriber;
        let desired: Vec<Key> = self
            .producers
            .iter()
            .filter(|(_, p)| p.call == call && p.owner != pid)
            .map(|(k, _)| k)
            .collect();
        let Some(part) = self.parts.get_mut(pid) else {
            return;
        };
        if !part.sub.begin() {
            return;
        }
        // The offer's a=ssrc lines come from the send streams: parked ones are declared again.
        self.unpark_all(sub_key);
        let Some(part) = self.parts.get_mut(pid) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(sub_key) else {
            return;
        };
        let producers = &self.producers;
        let restart_ice = part.sub.take_ice_restart();
        let res = catch_unwind(AssertUnwindSafe(|| {
            let mut api = peer.rtc.sdp_api();
            if restart_ice {
                api.ice_restart(true);
            }
            // A gone producer's section is stopped, except the BUNDLE tag: Chromium tears the
            // bundled transport down when it is rejected (the peer then dies "connection
            // closed"), so it is parked inactive, for good.
            for (mid, action) in part.sub.retire_gone(|pk| producers.contains_key(pk)) {
                match action {
                    Stale::Stop => api.stop_media(mid),
                    Stale::Park => api.set_direction(mid, Direction::Inactive),
                }
            }
            for pk in part.sub.missing(&desired) {
                let Some(prod) = producers.get(pk) else {
                    continue;
                };
                let mid = api.add_media(
                    prod.kind,
                    Direction::SendOnly,
                    Some(prod.owner.clone()),
                    Some(prod.track_id()),
                    None,
                );
                part.sub.added(mid, pk);
            }
            if !api.has_changes() {
                return None;
            }
            api.apply()
        }));
        let (offer, pending) = match res {
            Ok(Some(x)) => x,
            Ok(None) => return,
            Err(_) => {
                self.fail_peer(sub_key, "media engine panic while creating an offer");
                return;
            }
        };
        let offer_sdp = crate::sdp::candidates_in_bundled_section(&offer.to_sdp_string());
        part.sub.offered(pending, crate::sdp::mids(&offer_sdp));
        if !peer.connected && peer.deadline.is_none() {
            peer.deadline = Some(now + self.opts.connect_timeout);
        }
        let listed: Vec<(Mid, Key)> = part.sub.listed().collect();
        let tracks = listed
            .into_iter()
            .filter_map(|(mid, pk)| {
                let prod = self.producers.get(pk)?;
                Some(SubscribedTrack {
                    mid: mid.to_string(),
                    track: TrackInfo {
                        track_id: prod.track_id(),
                        participant_id: prod.owner.clone(),
                        user_id: self
                            .parts
                            .get(&prod.owner)
                            .map(|p| p.user_id.clone())
                            .unwrap_or_default(),
                        source: prod.source,
                        muted: !prod.gate.sends(prod.bit),
                    },
                })
            })
            .collect();
        let _ = self.events.send(SfuEvent::SubscriberOffer {
            participant_id: pid.to_owned(),
            sdp: offer_sdp,
            tracks,
        });
    }

    pub(super) fn subscriber_answer(
        &mut self,
        pid: &str,
        sdp: &str,
        now: Instant,
    ) -> Result<(), SfuError> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| SfuError::Sdp(e.to_string()))?;
        let part = self
            .parts
            .get_mut(pid)
            .ok_or_else(|| SfuError::UnknownParticipant(pid.to_owned()))?;
        if part.sub.answer_mismatch(&crate::sdp::mids(sdp)) {
            // Not the answer to this offer (a late one to a replaced peer's offer): applying it
            // would spend the offer the client is about to answer.
            return Err(SfuError::Sdp(
                "the answer's mids are not the pending subscriber offer's".into(),
            ));
        }
        let pending = part
            .sub
            .take_pending()
            .ok_or_else(|| SfuError::Sdp("no subscriber offer is pending".into()))?;
        let sub_key = part.subscriber;
        let gate = part.gate.clone();
        let Some(peer) = self.peers.get_mut(sub_key) else {
            return Err(SfuError::UnknownParticipant(pid.to_owned()));
        };
        let rtc = &mut peer.rtc;
        match catch_unwind(AssertUnwindSafe(|| {
            rtc.sdp_api().accept_answer(pending, answer)
        })) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // The offer is gone; roll the track list back so the next offer retries.
                if part.sub.refused() {
                    self.renegotiate(pid, now);
                }
                return Err(SfuError::Sdp(e.to_string()));
            }
            Err(_) => {
                self.fail_peer(sub_key, "media engine panic while applying the answer");
                return Err(SfuError::Sdp("answer made the engine fail".into()));
            }
        }
        let (opened, again) = part.sub.accepted();
        let unsubscribed = part.unsubscribed.clone();
        let quality = part.quality.clone();
        // An answer to an ICE-restart offer switched the peer to new local credentials.
        self.route_new_local_ufrag(sub_key);
        // The answer made str0m declare send streams for the lean streams' m-lines.
        self.repark_lean(sub_key);
        for (mid, pk) in opened {
            let Some(kind) = self.producers.get(pk).map(|p| p.kind) else {
                continue;
            };
            let lean_video =
                self.opts.lean_video && kind == MediaKind::Video && self.single_layer(pk);
            let Some(peer) = self.peers.get_mut(sub_key) else {
                break;
            };
            let stream = peer.rtc.direct_api().stream_tx_by_mid(mid, None).map(|s| {
                configure_send_stream(s, kind);
                (s.ssrc(), s.rtx())
            });
            let Some((ssrc, rtx)) = stream else {
                warn!("subscriber {pid}: no send stream for mid {mid}");
                continue;
            };
            peer.sub_mids.insert(mid, pk);
            // Audio (and video of a single-layer source) goes lean from the start: str0m's
            // stream, with its RTX stream, is removed before anything drives the peer, so str0m
            // never sends on their SSRCs, not even a first sender report.
            let mut park = super::quiet::ParkState::default();
            let lean = if self.opts.lean_audio && kind == MediaKind::Audio {
                Some(super::lean::LeanTx::new(super::lean::audio_exts(
                    &peer.rtc, mid,
                )))
            } else if lean_video {
                Some(super::lean::LeanTx::video(super::lean::video_exts(
                    &peer.rtc, mid,
                )))
            } else {
                None
            };
            if lean.is_some() {
                peer.lean.add_stream(super::lean::LeanStream {
                    ssrc,
                    mid,
                    pk,
                    video: lean_video,
                });
                super::quiet::park(&mut peer.rtc, ssrc, &mut park);
            } else {
                // A reused m-line that carried a lean stream now goes through str0m.
                peer.lean.forget(mid);
            }
            let Some(prod) = self.producers.get_mut(pk) else {
                continue;
            };
            // Retransmits to lean video consumers come from one cache per source.
            if lean_video && rtx.is_some() && prod.cache.is_none() {
                prod.cache = Some(Box::default());
            }
            let track_id = prod.track_id();
            prod.consumers.push(Consumer {
                peer: sub_key,
                ssrc,
                rtx,
                mid,
                park,
                gate: GateCopy::new(gate.clone()),
                st: ConsumerState::new(unsubscribed.contains(&track_id)),
                quality: quality.get(&track_id).copied().unwrap_or(Quality::High),
                cur: NO_LAYER,
                target: NO_LAYER,
                lean,
            });
            self.choose_layers(pk, now);
            // A new subscriber needs a keyframe at once.
            let layer = self.consumer_layer(pk, sub_key);
            self.request_keyframe(pk, layer, KeyframeRequestKind::Pli, now, true);
        }
        // Lean video retransmits use the RTX payload types of this answer.
        self.refresh_rtx_pts(sub_key);
        self.mark_dirty(sub_key);
        if again {
            self.renegotiate(pid, now);
        }
        Ok(())
    }
}
