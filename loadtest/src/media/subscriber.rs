//! The receiving connection: answers offers and counts what arrives per track.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use greenroom_proto::{SubscribedTrack, TrackSource};
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState, RTCSessionDescription};

use super::peer::{
    build_peer, gathered_local_sdp, same_object, wait_connected, IceConfig, Pc, PeerState,
};
use crate::error::{BotError, Result};
use crate::probe::now_us;
use crate::stats::{Received, TrackCounter, TrackStats};

/// How a [`Subscriber`] is built.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriberConfig {
    /// The local address to bind (a concrete address: a wildcard skips loopback).
    pub bind_ip: IpAddr,
    /// Limit for ICE gathering.
    pub gather_timeout: Duration,
    /// ICE servers and policy.
    pub ice: IceConfig,
}

impl Default for SubscriberConfig {
    fn default() -> Self {
        SubscriberConfig {
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            gather_timeout: Duration::from_secs(5),
            ice: IceConfig::default(),
        }
    }
}

#[derive(Default)]
struct Shared {
    /// mid -> the track the last offer put there.
    mids: Mutex<HashMap<String, SubscribedTrack>>,
    /// track_id -> counter.
    counters: Mutex<HashMap<String, TrackCounter>>,
    pc: OnceLock<Weak<dyn PeerConnection>>,
    readers: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn record(&self, mid: &str, pkt: &rtc::rtp::Packet) {
        let (track_id, source) = match self.mids.lock().get(mid) {
            Some(t) => (t.track.track_id.clone(), Some(t.track.source)),
            None => (format!("mid:{mid}"), None),
        };
        let mut counters = self.counters.lock();
        let c = counters
            .entry(track_id.clone())
            .or_insert_with(|| TrackCounter::new(track_id, mid.to_owned(), source));
        c.relabel(mid, source);
        c.record(&Received {
            ssrc: pkt.header.ssrc,
            payload_type: pkt.header.payload_type,
            marker: pkt.header.marker,
            payload: &pkt.payload,
            recv_us: now_us(),
            at: Instant::now(),
        });
    }
}

/// A subscriber PeerConnection: answers offers (from the server, or from a
/// [`Publisher`](super::Publisher) in tests) with receive-only media and counts every packet
/// per track: packets, bytes, probe loss, one-way latency, keyframes.
pub struct Subscriber {
    pc: Pc,
    state: PeerState,
    config: SubscriberConfig,
    shared: Arc<Shared>,
}

impl Subscriber {
    /// Builds the connection.
    pub async fn new(config: SubscriberConfig) -> Result<Subscriber> {
        let shared = Arc::new(Shared::default());
        let weak = Arc::downgrade(&shared);
        let on_track = Arc::new(move |track: Arc<dyn TrackRemote>| {
            if let Some(shared) = weak.upgrade() {
                let reader = tokio::spawn(read_track(shared.clone(), track));
                let mut readers = shared.readers.lock();
                readers.retain(|r| !r.is_finished());
                readers.push(reader);
            }
        });
        let (pc, state) = build_peer(config.bind_ip, &config.ice, Some(on_track)).await?;
        // Set once, here: cannot already be set.
        let _ = shared.pc.set(Arc::downgrade(&pc));
        Ok(Subscriber {
            pc,
            state,
            config,
            shared,
        })
    }

    /// Applies an offer (first or renegotiation) describing which mid carries which track,
    /// and returns the answer SDP once ICE gathering is complete.
    pub async fn apply_offer(&self, sdp: &str, tracks: Vec<SubscribedTrack>) -> Result<String> {
        let offer = RTCSessionDescription::offer(sdp.to_owned())?;
        {
            let mut mids = self.shared.mids.lock();
            mids.clear();
            mids.extend(tracks.into_iter().map(|t| (t.mid.clone(), t)));
        }
        self.pc.set_remote_description(offer).await?;
        let answer = self.pc.create_answer(None).await?;
        self.pc.set_local_description(answer).await?;
        gathered_local_sdp(&self.pc, &self.state.gathering, self.config.gather_timeout).await
    }

    /// The tracks of the last offer, by mid.
    pub fn tracks(&self) -> HashMap<String, SubscribedTrack> {
        self.shared.mids.lock().clone()
    }

    /// A snapshot of what arrived, by track id.
    pub fn stats(&self) -> HashMap<String, TrackStats> {
        self.shared
            .counters
            .lock()
            .iter()
            .map(|(k, c)| (k.clone(), c.stats().clone()))
            .collect()
    }

    /// Stats of one track.
    pub fn track_stats(&self, track_id: &str) -> Option<TrackStats> {
        self.shared
            .counters
            .lock()
            .get(track_id)
            .map(|c| c.stats().clone())
    }

    /// Stats of the tracks of one source (any publisher).
    pub fn stats_for_source(&self, source: TrackSource) -> Vec<TrackStats> {
        self.shared
            .counters
            .lock()
            .values()
            .filter(|c| c.stats().source == Some(source))
            .map(|c| c.stats().clone())
            .collect()
    }

    /// Waits until `pred` holds on the stats, checking every 10 ms; returns the stats that
    /// satisfied it.
    pub async fn wait_for_stats(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&HashMap<String, TrackStats>) -> bool,
    ) -> Result<HashMap<String, TrackStats>> {
        poll_stats(
            timeout,
            "subscriber stats predicate",
            || self.stats(),
            &mut pred,
        )
        .await
    }

    /// Waits until the connection is `Connected` (fails at once on `Failed`/`Closed`).
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        wait_connected(&self.state.state, timeout).await
    }

    /// The connection state now.
    pub fn connection_state(&self) -> RTCPeerConnectionState {
        *self.state.state.borrow()
    }

    /// The underlying webrtc-rs connection.
    pub fn peer_connection(&self) -> &Pc {
        &self.pc
    }

    /// Closes the connection.
    pub async fn close(&self) -> Result<()> {
        self.abort_readers();
        self.pc.close().await?;
        Ok(())
    }

    fn abort_readers(&self) {
        for r in self.shared.readers.lock().drain(..) {
            r.abort();
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.abort_readers();
    }
}

/// One line per track, for timeout messages.
/// Reads `read()` every 10 ms until `pred` holds on it (returns that reading) or `timeout`
/// passes (the error names `what` and summarises the last reading). Shared by every bot kind.
pub(crate) async fn poll_stats(
    timeout: Duration,
    what: &str,
    read: impl Fn() -> HashMap<String, TrackStats>,
    pred: &mut impl FnMut(&HashMap<String, TrackStats>) -> bool,
) -> Result<HashMap<String, TrackStats>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let s = read();
        if pred(&s) {
            return Ok(s);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(BotError::timeout(
                format!("{what} (last: {})", summary(&s)),
                timeout,
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn summary(s: &HashMap<String, TrackStats>) -> String {
    let mut v: Vec<String> = s
        .values()
        .map(|t| {
            format!(
                "{} mid={} packets={} lost={} keyframes={}",
                t.track_id, t.mid, t.packets, t.lost, t.keyframes
            )
        })
        .collect();
    v.sort();
    if v.is_empty() {
        "no packets".into()
    } else {
        v.join("; ")
    }
}

/// Finds the mid of the transceiver whose receiver owns `track`.
async fn mid_of(shared: &Shared, track: &Arc<dyn TrackRemote>) -> Option<String> {
    let pc = shared.pc.get()?.upgrade()?;
    for t in pc.get_transceivers().await {
        let Ok(Some(r)) = t.receiver().await else {
            continue;
        };
        if same_object(r.track(), track) {
            return t.mid().await.ok().flatten();
        }
    }
    None
}

/// Reads a remote track until it ends, counting every RTP packet. Must keep up: webrtc-rs
/// drops events once 256 are queued.
async fn read_track(shared: Arc<Shared>, track: Arc<dyn TrackRemote>) {
    let mut mid = mid_of(&shared, &track).await;
    let mut retries = 0;
    while let Some(evt) = track.poll().await {
        match evt {
            TrackRemoteEvent::OnRtpPacket(pkt) => {
                if mid.is_none() && retries < 20 {
                    retries += 1;
                    mid = mid_of(&shared, &track).await;
                }
                let m = mid
                    .clone()
                    .unwrap_or_else(|| format!("ssrc-{}", pkt.header.ssrc));
                shared.record(&m, &pkt);
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
}
