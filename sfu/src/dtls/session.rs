//! One DTLS 1.2 session on OpenSSL, driven without a socket: datagrams in, datagrams and events
//! out. Every session shares the process's one `SSL_CTX` ([`context`]: ciphers, SRTP profiles,
//! verification, options, `SSL_MODE_RELEASE_BUFFERS`); only the `SSL`, with the peer's own
//! certificate and key set on it, is per peer.

use std::collections::VecDeque;
use std::io;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use openssl::error::ErrorStack;
use openssl::pkey::PKey;
use openssl::srtp::SrtpProfileId;
use openssl::ssl::{
    ErrorCode, ShutdownState, Ssl, SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions,
    SslStream, SslVerifyMode,
};
use openssl::x509::X509;
use str0m_proto::crypto::dtls::{
    DtlsCert, DtlsCryptoError, DtlsCryptoOperation, DtlsImplError, DtlsOutput, KeyingMaterial,
    SrtpProfile,
};

/// The cipher suites offered and accepted: ECDHE with AES-GCM first, for RSA and ECDSA
/// certificates alike.
const CIPHERS: &str = "ECDHE+AESGCM:ECDHE+AES256:DHE+AESGCM";

/// The SRTP profiles, the server's preference first (OpenSSL, as the DTLS server, picks the
/// first of these the client offers).
const SRTP_PROFILES: &str = "SRTP_AEAD_AES_256_GCM:SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80";

/// RFC 5764's exporter label for the DTLS-SRTP keying material.
const SRTP_LABEL: &str = "EXTRACTOR-dtls_srtp";

/// How often a handshaking session wants a timer: OpenSSL retransmits a lost flight on its own
/// doubling timer (1 s first) when it is driven after that timer expired.
const HANDSHAKE_TICK: Duration = Duration::from_millis(250);

/// The largest DTLS record payload read at once (SCTP over DTLS sends at most an MTU).
const READ_BUF: usize = 2048;

/// The largest record payload this side writes ([`set_max_send_fragment`]): OpenSSL sizes the
/// session's write buffer by it (16 KiB + overhead by default, kept for the session's life:
/// `SSL_MODE_RELEASE_BUFFERS` does nothing for DTLS). Handshake records are cut to the MTU
/// (about 1150 bytes) and SCTP sends at most an MTU per record, so 2 KiB never refuses a write.
pub(super) const MAX_SEND_FRAGMENT: usize = 2048;

/// OpenSSL's `SSL_CTRL_SET_MAX_SEND_FRAGMENT` (`ssl.h`; `SSL_CTX_set_max_send_fragment` is a
/// macro over `SSL_CTX_ctrl`, which the `openssl` crate does not wrap).
const SSL_CTRL_SET_MAX_SEND_FRAGMENT: std::os::raw::c_int = 52;

/// The process's one DTLS context. Built at the first call; an error (OpenSSL could not
/// build it) is kept and reported by every session.
pub(super) fn context() -> Result<&'static SslContext, ErrorStack> {
    static CTX: OnceLock<Result<SslContext, ErrorStack>> = OnceLock::new();
    CTX.get_or_init(build_context)
        .as_ref()
        .map_err(Clone::clone)
}

fn build_context() -> Result<SslContext, ErrorStack> {
    let mut ctx = SslContextBuilder::new(SslMethod::dtls())?;
    ctx.set_cipher_list(CIPHERS)?;
    ctx.set_tlsext_use_srtp(SRTP_PROFILES)?;
    // A client certificate is required; any is accepted here, str0m checks its fingerprint
    // against the one signaled in the SDP (`DtlsOutput::PeerCert`).
    ctx.set_verify_callback(
        SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
        |_, _| true,
    );
    ctx.set_options(SslOptions::SINGLE_ECDH_USE | SslOptions::NO_DTLSV1 | SslOptions::NO_QUERY_MTU);
    // Frees the 16 KiB read and write record buffers whenever no record is in flight (TLS
    // only: OpenSSL 1.1 and 3.0 keep a DTLS session's buffers, hence the smaller write buffer
    // below).
    ctx.set_mode(SslMode::RELEASE_BUFFERS);
    set_max_send_fragment(&mut ctx, MAX_SEND_FRAGMENT)?;
    Ok(ctx.build())
}

/// `SSL_CTX_set_max_send_fragment(ctx, len)`: every `SSL` made on `ctx` writes records of at
/// most `len` payload bytes and allocates its write buffer for that size. Measured: the write
/// buffer of a DTLS session falls from 16.3 KiB to about 2.4 KiB (docs/BENCHMARKS.md,
/// *Memory per audio listener, media plane*).
fn set_max_send_fragment(ctx: &mut SslContextBuilder, len: usize) -> Result<(), ErrorStack> {
    let len = std::os::raw::c_long::try_from(len).unwrap_or(std::os::raw::c_long::MAX);
    // SAFETY: `ctx.as_ptr()` is the live `SSL_CTX` the builder owns (borrowed mutably for the
    // call, so nothing else uses it meanwhile); this control command reads only `larg` (no
    // pointer argument: `parg` is null) and stores it in the context.
    #[allow(unsafe_code)]
    let ok = unsafe {
        openssl_sys::SSL_CTX_ctrl(
            ctx.as_ptr(),
            SSL_CTRL_SET_MAX_SEND_FRAGMENT,
            len,
            std::ptr::null_mut(),
        )
    };
    // OpenSSL refuses a length outside 512..=16384 with 0 (and queues no error).
    if ok == 1 {
        Ok(())
    } else {
        Err(ErrorStack::get())
    }
}

/// The session's datagram pipe: what OpenSSL reads (one datagram per read, as from a socket)
/// and writes (one record flight per write).
#[derive(Default)]
struct Pipe {
    incoming: VecDeque<Vec<u8>>,
    outgoing: VecDeque<Vec<u8>>,
}

impl io::Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(d) = self.incoming.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let n = d.len().min(buf.len());
        buf[..n].copy_from_slice(&d[..n]);
        Ok(n)
    }
}

impl io::Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.push_back(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What the session has for str0m, in order.
enum Event {
    Packet(Vec<u8>),
    Connected,
    PeerCert(Vec<u8>),
    Keys(Vec<u8>, SrtpProfile),
    Data(Vec<u8>),
    CloseNotify,
}

/// The OpenSSL connection: before `set_active` it has no side yet.
enum Conn {
    Idle(Ssl),
    Open(SslStream<Pipe>),
    /// Setting up the stream failed: every later call fails.
    Broken,
}

/// Where the handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handshake {
    Running,
    Done,
    Failed,
}

/// One DTLS session (module docs).
pub(super) struct Session {
    conn: Conn,
    active: Option<bool>,
    handshake: Handshake,
    events: VecDeque<Event>,
    /// Application data str0m gave before the handshake completed.
    queued: Vec<Vec<u8>>,
    close_sent: bool,
    close_received: bool,
}

fn failed(op: DtlsCryptoOperation) -> DtlsImplError {
    DtlsImplError::CryptoError(DtlsCryptoError::OperationFailed(op))
}

impl Session {
    /// A session on the shared context with `cert` as this peer's certificate; `mtu` caps its
    /// records.
    pub(super) fn new(cert: &DtlsCert, mtu: usize) -> Result<Session, ErrorStack> {
        let mut ssl = Ssl::new(context()?)?;
        let x509 = X509::from_der(&cert.certificate)?;
        let key = PKey::private_key_from_der(&cert.private_key)?;
        ssl.set_certificate(&x509)?;
        ssl.set_private_key(&key)?;
        ssl.set_mtu(u32::try_from(mtu).unwrap_or(u32::MAX))?;
        Ok(Session {
            conn: Conn::Idle(ssl),
            active: None,
            handshake: Handshake::Running,
            events: VecDeque::new(),
            queued: Vec::new(),
            close_sent: false,
            close_received: false,
        })
    }

    /// Client (`true`, sends the first flight at the next timeout) or server. Only the first
    /// call takes effect.
    pub(super) fn set_active(&mut self, active: bool) {
        let Conn::Idle(_) = self.conn else { return };
        let Conn::Idle(mut ssl) = std::mem::replace(&mut self.conn, Conn::Broken) else {
            return;
        };
        if active {
            ssl.set_connect_state();
        } else {
            ssl.set_accept_state();
        }
        self.active = Some(active);
        if let Ok(stream) = SslStream::new(ssl, Pipe::default()) {
            self.conn = Conn::Open(stream);
        }
    }

    /// The side `set_active` chose (server before it).
    pub(super) fn is_active(&self) -> bool {
        self.active.unwrap_or(false)
    }

    fn stream(&mut self) -> Result<&mut SslStream<Pipe>, DtlsImplError> {
        match &mut self.conn {
            Conn::Open(s) => Ok(s),
            // Records before the side is known, or after a failed setup.
            Conn::Idle(_) | Conn::Broken => Err(failed(DtlsCryptoOperation::Decrypt)),
        }
    }

    /// One datagram from the peer. An empty one (str0m starts an active session with it) only
    /// drives the handshake: to OpenSSL an empty read is the end of the stream.
    pub(super) fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        let stream = self.stream()?;
        if !packet.is_empty() {
            stream.get_mut().incoming.push_back(packet.to_vec());
        }
        self.drive()
    }

    /// Drives the handshake (the client's first flight, OpenSSL's retransmissions).
    pub(super) fn handle_timeout(&mut self) -> Result<(), DtlsImplError> {
        if matches!(self.conn, Conn::Open(_)) {
            self.drive()?;
        }
        Ok(())
    }

    /// Runs the handshake as far as the input allows, then reads any application data and
    /// close_notify; queues what comes out.
    fn drive(&mut self) -> Result<(), DtlsImplError> {
        let result = self.advance();
        self.collect_packets();
        if result.is_err() {
            self.handshake = Handshake::Failed;
        }
        result
    }

    fn advance(&mut self) -> Result<(), DtlsImplError> {
        if self.handshake == Handshake::Failed {
            return Err(failed(DtlsCryptoOperation::Decrypt));
        }
        if self.handshake == Handshake::Running {
            match self.stream()?.do_handshake() {
                Ok(()) => self.connected()?,
                Err(e) if wants_io(e.code()) => return Ok(()),
                Err(_) => return Err(failed(DtlsCryptoOperation::Decrypt)),
            }
        }
        self.read_records()
    }

    /// The handshake just completed: the events str0m waits for, then queued data.
    fn connected(&mut self) -> Result<(), DtlsImplError> {
        self.handshake = Handshake::Done;
        let ssl = self.stream()?.ssl();
        let cert = ssl
            .peer_certificate()
            .and_then(|c| c.to_der().ok())
            .ok_or(failed(DtlsCryptoOperation::Decrypt))?;
        let profile = ssl
            .selected_srtp_profile()
            .and_then(|p| srtp_profile(p.id()))
            .ok_or(failed(DtlsCryptoOperation::Decrypt))?;
        let mut keys = vec![0u8; profile.keying_material_len()];
        ssl.export_keying_material(&mut keys, SRTP_LABEL, None)
            .map_err(|_| failed(DtlsCryptoOperation::Decrypt))?;
        // The final flight (a server's) goes out before the events.
        self.collect_packets();
        self.events.push_back(Event::Connected);
        self.events.push_back(Event::PeerCert(cert));
        self.events.push_back(Event::Keys(keys, profile));
        for data in std::mem::take(&mut self.queued) {
            self.write(&data)?;
        }
        Ok(())
    }

    /// Reads every application record and a close_notify out of the datagrams given.
    fn read_records(&mut self) -> Result<(), DtlsImplError> {
        let mut buf = [0u8; READ_BUF];
        loop {
            let stream = self.stream()?;
            match stream.ssl_read(&mut buf) {
                Ok(n) if n > 0 => self.events.push_back(Event::Data(buf[..n].to_vec())),
                Err(e) if wants_io(e.code()) => return Ok(()),
                Ok(_) | Err(_) if stream.get_shutdown().contains(ShutdownState::RECEIVED) => {
                    if !self.close_received {
                        self.close_received = true;
                        self.events.push_back(Event::CloseNotify);
                        // Answer with our own close_notify (RFC 5246 7.2.1), once.
                        if !self.close_sent {
                            self.close_sent = true;
                            let _ = self.stream()?.shutdown();
                        }
                    }
                    return Ok(());
                }
                Ok(_) | Err(_) => return Err(failed(DtlsCryptoOperation::Decrypt)),
            }
        }
    }

    fn write(&mut self, data: &[u8]) -> Result<(), DtlsImplError> {
        self.stream()?
            .ssl_write(data)
            .map_err(|_| failed(DtlsCryptoOperation::Encrypt))?;
        self.collect_packets();
        Ok(())
    }

    fn collect_packets(&mut self) {
        if let Conn::Open(s) = &mut self.conn {
            let out = &mut s.get_mut().outgoing;
            self.events.extend(out.drain(..).map(Event::Packet));
        }
    }

    /// Application data (SCTP) to send; queued until the handshake completed.
    pub(super) fn send_application_data(&mut self, data: &[u8]) -> Result<(), DtlsImplError> {
        match self.handshake {
            Handshake::Done => self.write(data),
            Handshake::Running => {
                self.queued.push(data.to_vec());
                Ok(())
            }
            Handshake::Failed => Err(failed(DtlsCryptoOperation::Encrypt)),
        }
    }

    /// The next output; `now` dates the timer while handshaking.
    pub(super) fn poll_output<'a>(&mut self, buf: &'a mut [u8], now: Instant) -> DtlsOutput<'a> {
        let Some(event) = self.events.pop_front() else {
            let wait = match (self.handshake, &self.conn) {
                (Handshake::Running, Conn::Open(_)) => HANDSHAKE_TICK,
                _ => super::NO_TIMER,
            };
            return DtlsOutput::Timeout(now + wait);
        };
        let bytes = match &event {
            Event::Packet(b) | Event::PeerCert(b) | Event::Keys(b, _) | Event::Data(b) => b,
            Event::Connected => return DtlsOutput::Connected,
            Event::CloseNotify => return DtlsOutput::CloseNotify,
        };
        if bytes.len() > buf.len() {
            let needed = bytes.len();
            self.events.push_front(event);
            return DtlsOutput::BufferTooSmall { needed };
        }
        let out = &mut buf[..bytes.len()];
        out.copy_from_slice(bytes);
        match event {
            Event::Packet(_) => DtlsOutput::Packet(out),
            Event::PeerCert(_) => DtlsOutput::PeerCert(out),
            Event::Keys(_, profile) => {
                DtlsOutput::KeyingMaterial(KeyingMaterial::new(out), profile)
            }
            Event::Data(_) => DtlsOutput::ApplicationData(out),
            Event::Connected | Event::CloseNotify => unreachable!("returned above"),
        }
    }

    /// Sends close_notify (once).
    pub(super) fn close(&mut self) -> Result<(), DtlsImplError> {
        if !self.close_sent && self.handshake == Handshake::Done {
            let _ = self.stream()?.shutdown();
            self.collect_packets();
        }
        self.close_sent = true;
        Ok(())
    }

    /// A close_notify was sent or received.
    pub(super) fn is_closing(&self) -> bool {
        self.close_sent || self.close_received
    }

    /// Our close_notify is sent and every datagram polled.
    pub(super) fn is_closed(&self) -> bool {
        self.close_sent && !self.events.iter().any(|e| matches!(e, Event::Packet(_)))
    }
}

/// OpenSSL waits for the next datagram (or could not write: the pipe never refuses).
fn wants_io(code: ErrorCode) -> bool {
    code == ErrorCode::WANT_READ || code == ErrorCode::WANT_WRITE
}

/// The negotiated SRTP profile, of the three offered.
fn srtp_profile(id: SrtpProfileId) -> Option<SrtpProfile> {
    match id {
        SrtpProfileId::SRTP_AEAD_AES_256_GCM => Some(SrtpProfile::AEAD_AES_256_GCM),
        SrtpProfileId::SRTP_AEAD_AES_128_GCM => Some(SrtpProfile::AEAD_AES_128_GCM),
        SrtpProfileId::SRTP_AES128_CM_SHA1_80 => Some(SrtpProfile::AES128_CM_SHA1_80),
        _ => None,
    }
}
