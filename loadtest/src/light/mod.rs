//! Light bots: real WebRTC clients on str0m 0.25 in RTP mode, much cheaper per packet than the
//! webrtc-rs [`Bot`](crate::Bot).
//!
//! A [`LightBot`] joins through the same `/v1/signal` signaling as a [`Bot`](crate::Bot): its
//! publisher [`LightPeer`] offers send-only m-lines and sends synthetic Opus (20 ms frames) and
//! VP8 (the preset's bitrate and frame rate, the same payload sizes, VP8 payload descriptor and
//! [`Probe`](crate::probe::Probe) trailer as the webrtc-rs publisher), optionally as three
//! simulcast layers (rids `q`, `h`, `f` at 1/4, 1/2 and the full bitrate); its subscriber
//! [`LightPeer`] answers the server's `subscriber_offer`s. Each peer is one str0m `Rtc` (full
//! ICE agent, controlling against the ICE-lite server, one host candidate on the bind IP,
//! DTLS-SRTP), one tokio UDP socket (or, with [`PeerTransport::Tcp`], one TCP connection to the
//! server's passive ICE-TCP candidate, see [`link`]) and one tokio task; all receiving peers' tasks
//! share one dedicated current-thread runtime on its own thread, and all publishing peers' tasks
//! another one on another thread ([`PeerRole`]), so that a publisher keeps its nominal rate
//! however many listeners the process serves. Received packets are not depacketized:
//! the payload's probe trailer feeds the same [`TrackCounter`](crate::stats::TrackCounter)
//! (loss by probe sequence gaps, one-way latency, bytes, keyframes) as the webrtc-rs bots.
//!
//! Unlike the webrtc-rs publisher, a light publisher answers PLI/FIR with a keyframe (at most
//! one forced keyframe per 500 ms per layer), which simulcast layer switches need.

pub mod counters;
pub mod link;
mod peer;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use greenroom_proto::{
    CallCid, ClientMessage, JoinSettings, ParticipantInfo, PublishTrack, Quality, ServerMessage,
    SignalMessage, SubscribedTrack, TrackSource,
};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use counters::{datagram_counts, datagrams_received, DatagramCounts, DatagramRates};
pub use link::PeerTransport;
pub use peer::{LightPeer, PeerRole, PeerStatus, SIMULCAST_LAYERS};

use crate::bot::StopMode;
use crate::error::{BotError, Result};
use crate::media::{AudioParams, SentStats, VideoParams};
use crate::signal::{SignalClient, SignalReceiver, SignalSender};
use crate::stats::TrackStats;

/// How a [`LightBot`] is built.
#[derive(Debug, Clone, PartialEq)]
pub struct LightConfig {
    /// Server base URL (`http://127.0.0.1:7880` or `ws://...`).
    pub url: String,
    /// The JWT.
    pub token: String,
    /// Local address of the media sockets (a concrete address).
    pub bind_ip: IpAddr,
    /// Synthetic audio.
    pub audio: AudioParams,
    /// Synthetic video (full-layer bitrate when simulcast).
    pub video: VideoParams,
    /// Publish video as three simulcast layers.
    pub simulcast: bool,
    /// Ask this quality (`set_quality`) for every video track received.
    pub quality: Option<Quality>,
    /// Limit for every request/response exchange and for connecting.
    pub timeout: Duration,
    /// UDP, or ICE-TCP to the server's passive TCP candidate (`--transport tcp`).
    pub transport: PeerTransport,
    /// Obedient: pause the sources named in `stop_publishing`; adversarial: keep sending (a
    /// hostile client; the server must stop forwarding by itself).
    pub stop_mode: StopMode,
}

impl LightConfig {
    /// Defaults: media on 127.0.0.1, default media parameters, no simulcast, 5 s timeouts.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> LightConfig {
        LightConfig {
            url: url.into(),
            token: token.into(),
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            audio: AudioParams::default(),
            video: VideoParams::default(),
            simulcast: false,
            quality: None,
            timeout: Duration::from_secs(5),
            transport: PeerTransport::Udp,
            stop_mode: StopMode::Obedient,
        }
    }
}

/// State shared by the bot and its signaling tasks.
struct Shared {
    publisher: Mutex<Option<Arc<LightPeer>>>,
    subscriber: Arc<LightPeer>,
    errors: Mutex<Vec<String>>,
    answers: AtomicU64,
    stop_mode: StopMode,
    /// `stop_publishing` messages received (obeyed or not).
    stop_publishing: AtomicU64,
}

impl Shared {
    fn error(&self, e: String) {
        tracing::warn!(error = %e, "light bot");
        let mut errors = self.errors.lock();
        if errors.len() < 100 {
            errors.push(e);
        }
    }
}

/// A light client of the Greenroom server: signaling, a publisher and a subscriber
/// [`LightPeer`]. Every wait is bounded; bad server input is an error or recorded in
/// [`LightBot::errors`], never a panic.
pub struct LightBot {
    config: LightConfig,
    sender: SignalSender,
    shared: Arc<Shared>,
    replies: tokio::sync::Mutex<mpsc::UnboundedReceiver<SignalMessage>>,
    tasks: Vec<JoinHandle<()>>,
}

impl LightBot {
    /// Opens the signaling socket and the (idle) subscriber peer.
    pub async fn connect(config: LightConfig) -> Result<LightBot> {
        let client = SignalClient::connect(&config.url, &config.token, config.timeout).await?;
        let (sender, receiver) = client.into_split();
        let subscriber = Arc::new(
            LightPeer::with_transport(config.bind_ip, config.transport, config.audio, config.video)
                .await?,
        );
        let shared = Arc::new(Shared {
            publisher: Mutex::new(None),
            subscriber,
            errors: Mutex::new(Vec::new()),
            answers: AtomicU64::new(0),
            stop_mode: config.stop_mode,
            stop_publishing: AtomicU64::new(0),
        });
        let (replies_tx, replies) = mpsc::unbounded_channel();
        let (offers_tx, offers_rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(receiver, shared.clone(), replies_tx, offers_tx));
        let answerer = tokio::spawn(answer_loop(
            offers_rx,
            shared.clone(),
            sender.clone(),
            config.quality,
        ));
        Ok(LightBot {
            config,
            sender,
            shared,
            replies: tokio::sync::Mutex::new(replies),
            tasks: vec![reader, answerer],
        })
    }

    /// Sends `join` and waits for `joined`; returns this session.
    pub async fn join(&self, call_cid: &str, create: bool) -> Result<ParticipantInfo> {
        let cid: CallCid = call_cid
            .parse()
            .map_err(|e| BotError::Protocol(format!("{e}")))?;
        let mut replies = self.replies.lock().await;
        self.sender
            .send(&ClientMessage::Join {
                call_cid: cid,
                create,
                settings: JoinSettings::default(),
            })
            .await?;
        wait_reply(&mut replies, "join", self.config.timeout, |m| match m {
            SignalMessage::Joined { participant, .. } => Some(participant.clone()),
            _ => None,
        })
        .await
    }

    /// Publishes `sources`: creates the publisher peer (or adds the sources to it), sends
    /// `publish`, applies `publish_answer`, waits for the connection and starts sending.
    pub async fn publish(&self, sources: &[TrackSource]) -> Result<Vec<PublishTrack>> {
        let existing = self.shared.publisher.lock().clone();
        let publisher = match existing {
            Some(p) => p,
            None => {
                let c = &self.config;
                let p = Arc::new(
                    LightPeer::with_role(
                        c.bind_ip,
                        c.transport,
                        PeerRole::Publisher,
                        c.audio,
                        c.video,
                    )
                    .await?,
                );
                *self.shared.publisher.lock() = Some(p.clone());
                p
            }
        };
        let (sdp, tracks) = publisher
            .publish_offer(sources, self.config.simulcast)
            .await?;
        let mut replies = self.replies.lock().await;
        self.sender
            .send(&ClientMessage::Publish {
                sdp,
                tracks: tracks.clone(),
            })
            .await?;
        let answer = wait_reply(&mut replies, "publish", self.config.timeout, |m| match m {
            SignalMessage::PublishAnswer { sdp } => Some(sdp.clone()),
            _ => None,
        })
        .await?;
        drop(replies);
        publisher.accept_answer(&answer).await?;
        publisher.wait_connected(self.config.timeout).await?;
        publisher.start().await?;
        Ok(tracks)
    }

    /// Waits until the subscriber peer is connected.
    pub async fn wait_subscriber_connected(&self, timeout: Duration) -> Result<()> {
        self.shared.subscriber.wait_connected(timeout).await
    }

    /// Sends any client message.
    pub async fn send(&self, msg: &ClientMessage) -> Result<()> {
        self.sender.send(msg).await
    }

    /// What was received per track id.
    pub fn received(&self) -> HashMap<String, TrackStats> {
        self.shared.subscriber.stats()
    }

    /// What was sent per source (empty before publishing).
    pub fn sent(&self) -> HashMap<TrackSource, SentStats> {
        self.shared
            .publisher
            .lock()
            .as_ref()
            .map(|p| p.sent())
            .unwrap_or_default()
    }

    /// The subscriber peer.
    pub fn subscriber(&self) -> &Arc<LightPeer> {
        &self.shared.subscriber
    }

    /// The publisher peer, once [`LightBot::publish`] created it.
    pub fn publisher(&self) -> Option<Arc<LightPeer>> {
        self.shared.publisher.lock().clone()
    }

    /// How many `subscriber_answer`s were sent.
    pub fn answers_sent(&self) -> u64 {
        self.shared.answers.load(Ordering::Relaxed)
    }

    /// How many `stop_publishing` messages arrived (obeyed or, in
    /// [`StopMode::Adversarial`], ignored).
    pub fn stop_publishing_received(&self) -> u64 {
        self.shared.stop_publishing.load(Ordering::Relaxed)
    }

    /// Failures handling server messages and offers.
    pub fn errors(&self) -> Vec<String> {
        self.shared.errors.lock().clone()
    }

    /// Waits until `pred` holds on the received stats, checking every 10 ms.
    pub async fn wait_for_received(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&HashMap<String, TrackStats>) -> bool,
    ) -> Result<HashMap<String, TrackStats>> {
        crate::media::poll_stats(
            timeout,
            "light bot received stats",
            || self.received(),
            &mut pred,
        )
        .await
    }

    /// Closes the socket and stops both peers.
    pub async fn close(&self) {
        let _ = self.sender.close().await;
        if let Some(p) = self.publisher() {
            p.close();
        }
        self.shared.subscriber.close();
    }
}

impl Drop for LightBot {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Waits for a reply matched by `f`, or an `error` whose `request` is `request` (or absent).
async fn wait_reply<T>(
    replies: &mut mpsc::UnboundedReceiver<SignalMessage>,
    request: &str,
    timeout: Duration,
    mut f: impl FnMut(&SignalMessage) -> Option<T>,
) -> Result<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let m = match tokio::time::timeout_at(deadline, replies.recv()).await {
            Err(_) => return Err(BotError::timeout(format!("reply to {request}"), timeout)),
            Ok(None) => return Err(BotError::Closed),
            Ok(Some(m)) => m,
        };
        if let SignalMessage::Error { error, request: r } = &m {
            if r.as_deref().is_none_or(|r| r == request) {
                return Err(BotError::Server(error.clone()));
            }
        }
        if let Some(t) = f(&m) {
            return Ok(t);
        }
    }
}

/// Routes server messages: replies to the waiting request, offers to the answerer, and
/// `stop_publishing` to the publisher (unless the bot is adversarial).
async fn read_loop(
    mut receiver: SignalReceiver,
    shared: Arc<Shared>,
    replies: mpsc::UnboundedSender<SignalMessage>,
    offers: mpsc::UnboundedSender<(String, Vec<SubscribedTrack>)>,
) {
    loop {
        match receiver.next().await {
            Ok(Some(ServerMessage::Signal(m))) => match m {
                SignalMessage::SubscriberOffer { sdp, tracks } => {
                    let _ = offers.send((sdp, tracks));
                }
                SignalMessage::StopPublishing { sources, .. } => {
                    shared.stop_publishing.fetch_add(1, Ordering::Relaxed);
                    let publisher = shared.publisher.lock().clone();
                    let obey = shared.stop_mode == StopMode::Obedient;
                    if let (true, Some(p)) = (obey, publisher) {
                        for s in sources {
                            let _ = p.set_paused(s, true).await;
                        }
                    }
                }
                m @ (SignalMessage::Joined { .. }
                | SignalMessage::PublishAnswer { .. }
                | SignalMessage::Error { .. }) => {
                    let _ = replies.send(m);
                }
                _ => {}
            },
            Ok(Some(ServerMessage::Event(_))) => {}
            Ok(None) => break,
            Err(BotError::Json(e)) => shared.error(format!("undecodable message: {e}")),
            Err(BotError::Protocol(e)) => shared.error(e),
            Err(e) => {
                shared.error(format!("socket error: {e}"));
                break;
            }
        }
    }
}

/// Answers subscriber offers in order; then asks `quality` for each new video track.
async fn answer_loop(
    offers: mpsc::UnboundedReceiver<(String, Vec<SubscribedTrack>)>,
    shared: Arc<Shared>,
    sender: SignalSender,
    quality: Option<Quality>,
) {
    let peer = shared.clone();
    crate::signal::answer_offers(
        offers,
        sender,
        quality,
        move |sdp, tracks| {
            let peer = peer.clone();
            async move { peer.subscriber.accept_offer(&sdp, tracks).await }
        },
        || {
            shared.answers.fetch_add(1, Ordering::Relaxed);
        },
        |e| shared.error(e),
    )
    .await;
}
