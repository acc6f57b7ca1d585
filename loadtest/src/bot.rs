//! A [`Bot`]: one signaling socket, one publisher and one subscriber connection, behaving like
//! a client of the Greenroom server.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use greenroom_proto::{
    CallCid, CallEvent, CallState, CapabilitySet, ClientMessage, ErrorBody, JoinSettings,
    ParticipantInfo, PublishTrack, Quality, ServerMessage, SignalMessage, SubscribedTrack,
    TrackSource,
};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::error::{BotError, Result};
use crate::media::{Publisher, PublisherConfig, SentStats, Subscriber, SubscriberConfig};
use crate::signal::{SignalClient, SignalReceiver, SignalSender};
use crate::stats::TrackStats;

/// What a bot does with `stop_publishing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopMode {
    /// Pause the named sources (a well-behaved client).
    #[default]
    Obedient,
    /// Keep sending: the server must stop forwarding by itself.
    Adversarial,
}

/// How a [`Bot`] is built.
#[derive(Debug, Clone, PartialEq)]
pub struct BotConfig {
    /// Server base URL (`http://127.0.0.1:7880` or `ws://...`).
    pub url: String,
    /// The JWT.
    pub token: String,
    /// Reaction to `stop_publishing`.
    pub stop_mode: StopMode,
    /// Local address of the media sockets.
    pub bind_ip: IpAddr,
    /// Synthetic media parameters.
    pub publisher: PublisherConfig,
    /// Limit for every request/response exchange and for connecting.
    pub timeout: Duration,
    /// Ask this simulcast quality (`set_quality`) for every video track received.
    pub quality: Option<Quality>,
}

impl BotConfig {
    /// Defaults: obedient, media on 127.0.0.1, 5 s timeouts.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        BotConfig {
            url: url.into(),
            token: token.into(),
            stop_mode: StopMode::Obedient,
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            publisher: PublisherConfig::default(),
            timeout: Duration::from_secs(5),
            quality: None,
        }
    }
}

/// The `joined` reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    /// Protocol version.
    pub protocol: u32,
    /// This session.
    pub participant: ParticipantInfo,
    /// The call at join time.
    pub call: CallState,
    /// What this participant may do.
    pub own_capabilities: CapabilitySet,
    /// What it may request.
    pub requestable: CapabilitySet,
}

struct Shared {
    events: Mutex<Vec<ServerMessage>>,
    /// Bumped on every event and when the socket closes.
    changed: watch::Sender<u64>,
    closed: Mutex<bool>,
    protocol_errors: Mutex<Vec<String>>,
    stop_mode: Mutex<StopMode>,
    publisher: Mutex<Option<Arc<Publisher>>>,
    subscriber: Arc<Subscriber>,
    answers_sent: Mutex<u64>,
}

impl Shared {
    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    fn protocol_error(&self, e: String) {
        tracing::warn!(error = %e, "bot protocol error");
        self.protocol_errors.lock().push(e);
        self.bump();
    }
}

/// A client of the server: connect, join, publish synthetic media, auto-answer subscriber
/// offers, and observe events and media stats. Every wait is bounded; bad server input is
/// recorded in [`Bot::protocol_errors`] or returned as an error, never a panic.
pub struct Bot {
    config: BotConfig,
    sender: SignalSender,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Bot {
    /// Opens the signaling socket and the (idle) subscriber connection.
    pub async fn connect(config: BotConfig) -> Result<Bot> {
        let client = SignalClient::connect(&config.url, &config.token, config.timeout).await?;
        let (sender, receiver) = client.into_split();
        let subscriber = Arc::new(
            Subscriber::new(SubscriberConfig {
                bind_ip: config.bind_ip,
                gather_timeout: config.timeout,
                ice: config.publisher.ice.clone(),
            })
            .await?,
        );
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            events: Mutex::new(Vec::new()),
            changed,
            closed: Mutex::new(false),
            protocol_errors: Mutex::new(Vec::new()),
            stop_mode: Mutex::new(config.stop_mode),
            publisher: Mutex::new(None),
            subscriber,
            answers_sent: Mutex::new(0),
        });
        let (offers_tx, offers_rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(receiver, shared.clone(), offers_tx));
        let answerer = tokio::spawn(answer_loop(
            offers_rx,
            shared.clone(),
            sender.clone(),
            config.quality,
        ));
        Ok(Bot {
            config,
            sender,
            shared,
            tasks: vec![reader, answerer],
        })
    }

    /// Sends `join` and waits for `joined` (or the `error` answering it).
    pub async fn join(&self, call_cid: &str, create: bool) -> Result<Joined> {
        self.join_with(call_cid, create, JoinSettings::default())
            .await
    }

    /// [`Bot::join`] with settings.
    pub async fn join_with(
        &self,
        call_cid: &str,
        create: bool,
        settings: JoinSettings,
    ) -> Result<Joined> {
        let cid: CallCid = call_cid
            .parse()
            .map_err(|e| BotError::Protocol(format!("{e}")))?;
        let from = self.cursor();
        self.send(&ClientMessage::Join {
            call_cid: cid,
            create,
            settings,
        })
        .await?;
        let reply = self
            .wait_reply(from, "join", |m| match m {
                ServerMessage::Signal(SignalMessage::Joined {
                    protocol,
                    participant,
                    call,
                    own_capabilities,
                    requestable,
                    ..
                }) => Some(Joined {
                    protocol: *protocol,
                    participant: participant.clone(),
                    call: (**call).clone(),
                    own_capabilities: *own_capabilities,
                    requestable: *requestable,
                }),
                _ => None,
            })
            .await?;
        Ok(reply)
    }

    /// Publishes `sources`: creates the publisher connection (or adds the sources to it),
    /// sends `publish`, applies `publish_answer`, waits for `Connected` and starts sending.
    /// A server `error` (e.g. `missing_capability`) is returned as [`BotError::Server`]; the
    /// publisher is kept so a later call can renegotiate.
    pub async fn publish(&self, sources: &[TrackSource]) -> Result<Vec<PublishTrack>> {
        let existing = self.shared.publisher.lock().clone();
        let publisher = match existing {
            Some(p) => {
                p.add_sources(sources).await?;
                p
            }
            None => {
                let mut cfg = self.config.publisher.clone();
                cfg.bind_ip = self.config.bind_ip;
                let p = Arc::new(Publisher::new(sources, cfg).await?);
                *self.shared.publisher.lock() = Some(p.clone());
                p
            }
        };
        let (sdp, tracks) = publisher.create_offer().await?;
        let from = self.cursor();
        self.send(&ClientMessage::Publish {
            sdp,
            tracks: tracks.clone(),
        })
        .await?;
        let answer = self
            .wait_reply(from, "publish", |m| match m {
                ServerMessage::Signal(SignalMessage::PublishAnswer { sdp }) => Some(sdp.clone()),
                _ => None,
            })
            .await?;
        publisher.apply_answer(&answer).await?;
        publisher.wait_connected(self.config.timeout).await?;
        publisher.start();
        Ok(tracks)
    }

    /// Sends any client message.
    pub async fn send(&self, msg: &ClientMessage) -> Result<()> {
        self.sender.send(msg).await
    }

    /// Sends raw text (malformed-input tests).
    pub async fn send_raw(&self, text: impl Into<String>) -> Result<()> {
        self.sender.send_raw(text.into()).await
    }

    /// Sends `set_muted` and pauses/resumes the source locally, like a real client.
    pub async fn set_muted(&self, source: TrackSource, muted: bool) -> Result<()> {
        if let Some(p) = self.publisher() {
            if muted {
                p.pause(source);
            } else {
                p.resume(source);
            }
        }
        self.send(&ClientMessage::SetMuted { source, muted }).await
    }

    /// Sends `leave`.
    pub async fn leave(&self) -> Result<()> {
        self.send(&ClientMessage::Leave).await
    }

    /// Changes the reaction to future `stop_publishing` messages.
    pub fn set_stop_mode(&self, mode: StopMode) {
        *self.shared.stop_mode.lock() = mode;
    }

    /// The publisher, once [`Bot::publish`] created it.
    pub fn publisher(&self) -> Option<Arc<Publisher>> {
        self.shared.publisher.lock().clone()
    }

    /// The subscriber connection.
    pub fn subscriber(&self) -> &Arc<Subscriber> {
        &self.shared.subscriber
    }

    /// What was sent per source (empty before publishing).
    pub fn sent(&self) -> HashMap<TrackSource, SentStats> {
        self.publisher().map(|p| p.sent()).unwrap_or_default()
    }

    /// What was received per track id.
    pub fn received(&self) -> HashMap<String, TrackStats> {
        self.shared.subscriber.stats()
    }

    /// Waits until `pred` holds on the received stats.
    pub async fn wait_for_received(
        &self,
        timeout: Duration,
        pred: impl FnMut(&HashMap<String, TrackStats>) -> bool,
    ) -> Result<HashMap<String, TrackStats>> {
        self.shared.subscriber.wait_for_stats(timeout, pred).await
    }

    /// Every server message received so far, in order.
    pub fn events(&self) -> Vec<ServerMessage> {
        self.shared.events.lock().clone()
    }

    /// The call events received so far.
    pub fn call_events(&self) -> Vec<CallEvent> {
        self.shared
            .events
            .lock()
            .iter()
            .filter_map(|m| match m {
                ServerMessage::Event(e) => Some(e.clone()),
                ServerMessage::Signal(_) => None,
            })
            .collect()
    }

    /// The number of messages received so far: pass it to [`Bot::wait_for_from`] to look
    /// only at later ones.
    pub fn cursor(&self) -> usize {
        self.shared.events.lock().len()
    }

    /// Waits for a message (received at any time, including before the call) for which `f`
    /// returns `Some`.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        f: impl FnMut(&ServerMessage) -> Option<T>,
    ) -> Result<T> {
        self.wait_for_from(0, timeout, f).await
    }

    /// Waits for a message at index `from` or later for which `f` returns `Some`.
    pub async fn wait_for_from<T>(
        &self,
        from: usize,
        timeout: Duration,
        mut f: impl FnMut(&ServerMessage) -> Option<T>,
    ) -> Result<T> {
        let mut changed = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut next = from;
        loop {
            changed.borrow_and_update();
            {
                let events = self.shared.events.lock();
                for m in events.iter().skip(next) {
                    if let Some(t) = f(m) {
                        return Ok(t);
                    }
                }
                next = next.max(events.len());
            }
            if *self.shared.closed.lock() {
                return Err(BotError::Closed);
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Err(_) => return Err(BotError::timeout("matching server message", timeout)),
                Ok(Err(_)) => return Err(BotError::Closed),
                Ok(Ok(())) => {}
            }
        }
    }

    /// Waits for a call event of the given `type` (e.g. `call.user_muted`) at index `from` or
    /// later.
    pub async fn wait_for_event(
        &self,
        from: usize,
        kind: &str,
        timeout: Duration,
    ) -> Result<CallEvent> {
        self.wait_for_from(from, timeout, |m| match m {
            ServerMessage::Event(e) if e.kind() == kind => Some(e.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for `stop_publishing` at index `from` or later; returns its sources and reason.
    pub async fn wait_for_stop_publishing(
        &self,
        from: usize,
        timeout: Duration,
    ) -> Result<(Vec<TrackSource>, String)> {
        self.wait_for_from(from, timeout, |m| match m {
            ServerMessage::Signal(SignalMessage::StopPublishing { sources, reason }) => {
                Some((sources.clone(), reason.clone()))
            }
            _ => None,
        })
        .await
    }

    /// Frames the server sent that did not decode, and failures handling its offers.
    pub fn protocol_errors(&self) -> Vec<String> {
        self.shared.protocol_errors.lock().clone()
    }

    /// How many `subscriber_answer`s were sent.
    pub fn answers_sent(&self) -> u64 {
        *self.shared.answers_sent.lock()
    }

    /// Whether the server closed the socket.
    pub fn is_closed(&self) -> bool {
        *self.shared.closed.lock()
    }

    /// Closes the socket and both connections.
    pub async fn close(&self) -> Result<()> {
        let _ = self.sender.close().await;
        if let Some(p) = self.publisher() {
            let _ = p.close().await;
        }
        self.shared.subscriber.close().await
    }

    /// Waits for a reply matched by `f`, or an `error` whose `request` is `request` (or absent).
    async fn wait_reply<T>(
        &self,
        from: usize,
        request: &str,
        mut f: impl FnMut(&ServerMessage) -> Option<T>,
    ) -> Result<T> {
        let r = self
            .wait_for_from(from, self.config.timeout, |m| {
                if let ServerMessage::Signal(SignalMessage::Error { error, request: r }) = m {
                    if r.as_deref().is_none_or(|r| r == request) {
                        return Some(Err(error.clone()));
                    }
                }
                f(m).map(Ok)
            })
            .await?;
        r.map_err(|e: ErrorBody| BotError::Server(e))
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Records every server message; queues offers; obeys `stop_publishing` when obedient.
async fn read_loop(
    mut receiver: SignalReceiver,
    shared: Arc<Shared>,
    offers: mpsc::UnboundedSender<(String, Vec<SubscribedTrack>)>,
) {
    loop {
        match receiver.next().await {
            Ok(Some(m)) => {
                match &m {
                    ServerMessage::Signal(SignalMessage::SubscriberOffer { sdp, tracks }) => {
                        let _ = offers.send((sdp.clone(), tracks.clone()));
                    }
                    ServerMessage::Signal(SignalMessage::StopPublishing { sources, .. }) => {
                        let obedient = *shared.stop_mode.lock() == StopMode::Obedient;
                        let publisher = shared.publisher.lock().clone();
                        if let (true, Some(p)) = (obedient, publisher) {
                            for s in sources {
                                p.pause(*s);
                            }
                        }
                    }
                    _ => {}
                }
                shared.events.lock().push(m);
                shared.bump();
            }
            Ok(None) => break,
            Err(BotError::Json(e)) => shared.protocol_error(format!("undecodable message: {e}")),
            Err(BotError::Protocol(e)) => shared.protocol_error(e),
            Err(e) => {
                shared.protocol_error(format!("socket error: {e}"));
                break;
            }
        }
    }
    *shared.closed.lock() = true;
    shared.bump();
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
            async move { peer.subscriber.apply_offer(&sdp, tracks).await }
        },
        || *shared.answers_sent.lock() += 1,
        |e| shared.protocol_error(e),
    )
    .await;
}
