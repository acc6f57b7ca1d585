//! The commands from the [`crate::Sfu`] handle: join, publish, subscribe, leave.

use super::*;
use crate::demux::shard_of_ufrag;
use greenroom_proto::SourceSet;
use str0m::change::SdpOffer;
use str0m::media::KeyframeRequestKind;
use str0m::Candidate;
use tracing::debug;

impl Engine {
    /// Applies one command from the handle.
    pub(crate) fn on_cmd(&mut self, cmd: Cmd, now: Instant) {
        match cmd {
            Cmd::Join {
                call,
                pid,
                user_id,
                gate,
                bwe,
            } => self.join(call, pid, user_id, gate, bwe, now),
            Cmd::Publish {
                pid,
                sdp,
                tracks,
                reply,
            } => {
                let r = self.publish(&pid, &sdp, tracks, now);
                let _ = reply.send(r);
            }
            Cmd::SubscriberAnswer { pid, sdp, reply } => {
                let r = self.subscriber_answer(&pid, &sdp, now);
                let _ = reply.send(r);
            }
            Cmd::IceCandidate {
                pid,
                target,
                candidate,
            } => self.ice_candidate(&pid, target, &candidate),
            Cmd::Unpublish { pid, source } => {
                let pks: Vec<Key> = self
                    .parts
                    .get(&pid)
                    .map(|p| p.producers.clone())
                    .unwrap_or_default();
                for pk in pks {
                    if self.producers.get(pk).is_some_and(|p| p.source == source) {
                        self.remove_producer(pk);
                    }
                }
                self.renegotiate_call_of(&pid, now);
            }
            Cmd::SetSubscribed {
                pid,
                track_id,
                subscribed,
            } => self.set_subscribed(&pid, &track_id, subscribed, now),
            Cmd::SetQuality {
                pid,
                track_id,
                quality,
            } => {
                if let Some(p) = self.parts.get_mut(&pid) {
                    p.quality.insert(track_id.clone(), quality);
                }
                if let Some((pk, sub)) = self.find_consumer(&pid, &track_id) {
                    if let Some(c) = self
                        .producers
                        .get_mut(pk)
                        .and_then(|p| p.consumers.iter_mut().find(|c| c.peer == sub))
                    {
                        c.quality = quality;
                    }
                    self.choose_layers(pk, now);
                }
            }
            Cmd::Leave { pid } => self.leave(&pid, now),
            Cmd::Relay(cmd) => self.on_relay_cmd(cmd, now),
            Cmd::RestartIce { pid } => {
                if let Some(p) = self.parts.get_mut(&pid) {
                    p.sub.request_ice_restart();
                }
                self.renegotiate(&pid, now);
            }
            #[cfg(feature = "fault-injection")]
            Cmd::InjectPanic { pid, target } => {
                let key = self.parts.get(&pid).and_then(|p| match target {
                    PeerTarget::Publisher => p.publisher,
                    PeerTarget::Subscriber => Some(p.subscriber),
                });
                if let Some(peer) = key.and_then(|k| self.peers.get_mut(k)) {
                    peer.panic_next = true;
                }
            }
            #[cfg(feature = "fault-injection")]
            Cmd::PanicShard => panic!("injected shard fault"),
            Cmd::Stop => {}
        }
    }

    pub(super) fn join(
        &mut self,
        call: CallCid,
        pid: String,
        user_id: String,
        gate: Arc<GateCell>,
        bwe: bool,
        now: Instant,
    ) {
        if self.parts.contains_key(&pid) {
            self.leave(&pid, now);
        }
        let subscriber = self.new_peer(&pid, Role::Subscriber, bwe, now);
        self.parts.insert(
            pid.clone(),
            Participant {
                call: call.clone(),
                user_id,
                gate,
                publisher: None,
                subscriber,
                producers: Vec::new(),
                sub: Negotiation::default(),
                unsubscribed: HashSet::new(),
                quality: HashMap::new(),
                bwe,
            },
        );
        self.calls
            .entry(call)
            .or_default()
            .members
            .push(pid.clone());
        self.renegotiate(&pid, now);
    }

    pub(super) fn publish(
        &mut self,
        pid: &str,
        sdp: &str,
        tracks: Vec<PublishTrack>,
        now: Instant,
    ) -> Result<String, SfuError> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| SfuError::Sdp(e.to_string()))?;
        let part = self
            .parts
            .get(pid)
            .ok_or_else(|| SfuError::UnknownParticipant(pid.to_owned()))?;
        let existing = part.publisher.filter(|k| self.peers.get(*k).is_some());
        let key = match existing {
            Some(k) => k,
            None => self.new_peer(pid, Role::Publisher, false, now),
        };
        if let Some(p) = self.parts.get_mut(pid) {
            p.publisher = Some(key);
        }
        let peer = self
            .peers
            .get_mut(key)
            .ok_or_else(|| SfuError::UnknownParticipant(pid.to_owned()))?;
        let rtc = &mut peer.rtc;
        let answer = match catch_unwind(AssertUnwindSafe(|| rtc.sdp_api().accept_offer(offer))) {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => return Err(SfuError::Sdp(e.to_string())),
            Err(_) => {
                self.fail_peer(key, "media engine panic while applying the offer");
                return Err(SfuError::Sdp("offer made the engine fail".into()));
            }
        };
        if !peer.connected && peer.deadline.is_none() {
            peer.deadline = Some(now + self.opts.connect_timeout);
        }
        // A client-initiated ICE restart gave this peer random credentials without our shard
        // tag: let the receive thread find the shard by the new ufrag.
        let ufrag = peer.rtc.direct_api().local_ice_credentials().ufrag;
        if ufrag != peer.ufrag {
            self.routes.set_ufrag(key, Some(&peer.ufrag), &ufrag);
            peer.ufrag = ufrag.clone();
        }
        if shard_of_ufrag(&ufrag) != Some(self.shard) && peer.untagged_ufrag != Some(ufrag.clone())
        {
            let mut map = self.untagged.write();
            if let Some(old) = peer.untagged_ufrag.take() {
                map.remove(&old);
            }
            map.insert(ufrag.clone(), self.shard);
            peer.untagged_ufrag = Some(ufrag);
        }
        peer.ssrcs.clear();
        // Resolve each announced track to its m-line.
        let mut wanted: Vec<(TrackSource, Mid, MediaKind)> = Vec::new();
        for t in &tracks {
            let mid = Mid::from(t.mid.as_str());
            match peer.rtc.media(mid) {
                Some(m) if m.disabled() => return Err(SfuError::TrackRejected(t.mid.clone())),
                Some(m) if m.kind().is_audio() == t.source.is_audio() => {
                    if !wanted.iter().any(|w| w.0 == t.source) {
                        wanted.push((t.source, mid, m.kind()));
                    }
                }
                Some(_) => {
                    return Err(SfuError::Sdp(format!(
                        "mid {} does not carry {} media",
                        t.mid,
                        if t.source.is_audio() {
                            "audio"
                        } else {
                            "video"
                        }
                    )))
                }
                None => return Err(SfuError::Sdp(format!("mid {} not in the offer", t.mid))),
            }
        }
        let Some(part) = self.parts.get(pid) else {
            return Err(SfuError::UnknownParticipant(pid.to_owned()));
        };
        let (call, gate, old) = (part.call.clone(), part.gate.clone(), part.producers.clone());
        let mut changed = false;
        // Drop producers whose source left the list.
        for pk in &old {
            let keep = self
                .producers
                .get(*pk)
                .is_some_and(|p| wanted.iter().any(|w| w.0 == p.source));
            if !keep {
                self.remove_producer(*pk);
                changed = true;
            }
        }
        for (source, mid, kind) in wanted {
            let pks = self
                .parts
                .get(pid)
                .map(|p| p.producers.clone())
                .unwrap_or_default();
            let existing = pks
                .into_iter()
                .find(|pk| self.producers.get(*pk).is_some_and(|p| p.source == source));
            match existing.and_then(|pk| self.producers.get_mut(pk)) {
                Some(p) => {
                    if p.mid != mid {
                        p.mid = mid;
                        p.layers.clear();
                        p.epoch = p.epoch.wrapping_add(1);
                    }
                    p.publisher = key;
                    p.params.clear();
                }
                None => {
                    let pk = self.producers.insert(Producer {
                        owner: pid.to_owned(),
                        call: call.clone(),
                        source,
                        bit: SourceSet::bit(source),
                        gate: gate.clone(),
                        publisher: key,
                        mid,
                        kind,
                        epoch: 0,
                        open: false,
                        layers: Vec::new(),
                        params: Vec::new(),
                        consumers: Vec::new(),
                        level: LevelMeter::default(),
                        cache: None,
                    });
                    if let Some(p) = self.parts.get_mut(pid) {
                        p.producers.push(pk);
                    }
                    changed = true;
                }
            }
        }
        self.mark_dirty(key);
        self.ingress_renegotiated(key);
        if changed {
            self.renegotiate_call_of(pid, now);
        }
        Ok(crate::sdp::candidates_in_bundled_section(
            &answer.to_sdp_string(),
        ))
    }

    pub(super) fn remove_producer(&mut self, pk: Key) {
        let Some(prod) = self.producers.remove(pk) else {
            return;
        };
        if let Some(p) = self.parts.get_mut(&prod.owner) {
            p.producers.retain(|k| *k != pk);
        }
        if let Some(peer) = self.peers.get_mut(prod.publisher) {
            peer.ssrcs.retain(|(_, k, _)| *k != pk);
        }
        for c in &prod.consumers {
            if let Some(peer) = self.peers.get_mut(c.peer) {
                peer.sub_mids.retain(|_, k| *k != pk);
            }
        }
    }

    pub(super) fn ice_candidate(&mut self, pid: &str, target: PeerTarget, candidate: &str) {
        let Some(part) = self.parts.get(pid) else {
            return;
        };
        let key = match target {
            PeerTarget::Publisher => part.publisher,
            PeerTarget::Subscriber => Some(part.subscriber),
        };
        let Some(peer) = key.and_then(|k| self.peers.get_mut(k)) else {
            return;
        };
        let s = candidate.trim();
        let s = s.strip_prefix("a=").unwrap_or(s);
        let parsed = Candidate::from_sdp_string(s)
            .or_else(|_| Candidate::from_sdp_string(&format!("candidate:{s}")));
        match parsed {
            Ok(c) => peer.rtc.add_remote_candidate(c),
            Err(e) => debug!("ignoring candidate {s:?}: {e}"),
        }
    }

    pub(super) fn find_consumer(&self, pid: &str, track_id: &str) -> Option<(Key, Key)> {
        let sub = self.parts.get(pid)?.subscriber;
        let (owner, source) = track_id.rsplit_once(':')?;
        let owner = self.parts.get(owner)?;
        owner.producers.iter().copied().find_map(|pk| {
            let p = self.producers.get(pk)?;
            (p.source.as_str() == source).then_some((pk, sub))
        })
    }

    pub(super) fn set_subscribed(
        &mut self,
        pid: &str,
        track_id: &str,
        subscribed: bool,
        now: Instant,
    ) {
        if let Some(p) = self.parts.get_mut(pid) {
            if subscribed {
                p.unsubscribed.remove(track_id);
            } else {
                p.unsubscribed.insert(track_id.to_owned());
            }
        }
        let Some((pk, sub)) = self.find_consumer(pid, track_id) else {
            return;
        };
        let Some(c) = self
            .producers
            .get_mut(pk)
            .and_then(|p| p.consumers.iter_mut().find(|c| c.peer == sub))
        else {
            return;
        };
        c.st.paused = !subscribed;
        if subscribed {
            let layer = self.consumer_layer(pk, sub);
            self.request_keyframe(pk, layer, KeyframeRequestKind::Pli, now, false);
        }
    }

    pub(super) fn leave(&mut self, pid: &str, now: Instant) {
        let Some(part) = self.parts.get(pid) else {
            return;
        };
        let call = part.call.clone();
        let peers: Vec<Key> = part
            .publisher
            .into_iter()
            .chain([part.subscriber])
            .collect();
        for pk in part.producers.clone() {
            self.remove_producer(pk);
        }
        for k in peers {
            self.drop_peer(k);
        }
        self.parts.remove(pid);
        if let Some(c) = self.calls.get_mut(&call) {
            c.members.retain(|m| m != pid);
            if c.members.is_empty() {
                self.calls.remove(&call);
            }
        }
        let members = self
            .calls
            .get(&call)
            .map(|c| c.members.clone())
            .unwrap_or_default();
        for m in members {
            self.renegotiate(&m, now);
        }
    }
}
