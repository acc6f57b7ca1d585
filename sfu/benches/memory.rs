//! Memory per subscriber, measured on the engine's real peers: one shard
//! (`greenroom_sfu::fuzzing::ShardBench`) with one publisher and N listeners connected (ICE,
//! DTLS, SRTP) to in-memory str0m clients, three seconds of media (virtual clock) so that send
//! queues and RTX caches fill, then 150 more packets delivered to the clients (which answer with
//! receiver reports: every listener's DTLS session is released early, asserted), then the
//! clients dropped: what stays is the shard's. The same with N = 0 is subtracted, so the figure
//! is per listener; the shard's C heap (OpenSSL, aws-lc) is asserted under 6 KiB per listener
//! (10 KiB in the 10-listener smoke run).
//!
//! Two figures: the Rust heap (a counting global allocator, `stats_alloc`: live bytes, exact)
//! and the process RSS from `/proc/self/statm` (includes OpenSSL's C allocations for the DTLS
//! contexts, and the allocator's own overhead; noisy, page-granular). Also the live heap of
//! one bare `Rtc` built with the server's configuration, per stage.
//!
//! Stages: the same server configuration on bare str0m pairs (server `Rtc` and an in-memory
//! client), the server's heap counted alone (the heap change inside the server's calls only;
//! datagrams crossing to the client are copied outside and dropped inside), at each step of a
//! listener's life: built, offer/answer with M audio m-lines, ICE connected (only STUN
//! delivered), DTLS connected, 3 s of audio, and 31 s later (past the DTLS release grace:
//! `dtls::RELEASE_GRACE`). C heaps (OpenSSL's DTLS, aws-lc's SRTP keys) are not in these
//! figures: the count of live OpenSSL instances is printed next to them; run the bench under
//! `heaptrack` for their bytes (docs/BENCHMARKS.md, *Memory per listener*). The ShardBench rows
//! "+ DTLS grace" idle past the grace, then send one more second of media and check that the
//! listeners' clients still receive it.
//!
//! Run: `cargo bench -p greenroom-sfu --bench memory` (optional argument: listeners, default
//! 200), or in a debug build `cargo test -p greenroom-sfu --bench memory -- 200` (the heap
//! figures do not depend on the optimization level; without an argument: 10 listeners, a smoke
//! run). `--engine-only` runs only the engine's audio listeners (the `ShardBench` row).
//! With `--exit-at-dtls` the first stage run exits the process right after its listeners'
//! DTLS connected, nothing freed: under `heaptrack` the "leaked" C allocations are then what
//! OpenSSL and aws-lc hold for connected peers (`heaptrack --record-only`, `heaptrack_print -l`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::alloc::System;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use greenroom_sfu::fuzzing::ShardBench;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Live Rust heap bytes since `r` started. `stats_alloc` already adds a `realloc`'s growth to
/// `bytes_allocated` (and a shrink to `bytes_deallocated`); `bytes_reallocated` is the same
/// change again, so it is not added.
fn live(r: &Region<'_, System>) -> i64 {
    let c = r.change();
    c.bytes_allocated as i64 - c.bytes_deallocated as i64
}

/// Resident set size of this process, bytes.
fn rss() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Live Rust heap of the whole process (every thread).
fn heap() -> i64 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

/// Live bytes of glibc's malloc, every arena (`mallinfo2`: in-use chunks plus mmapped ones):
/// the Rust heap (the counting allocator wraps the system's) and the C heaps (OpenSSL,
/// aws-lc) together.
fn malloc_live() -> i64 {
    // SAFETY: `mallinfo2` takes no argument and only reads glibc's allocator statistics
    // (under its arena locks); it returns a plain struct by value.
    #[allow(unsafe_code)]
    let mi = unsafe { libc::mallinfo2() };
    (mi.uordblks + mi.hblkhd) as i64
}

/// The server side's live heap: the sum of the heap changes inside [`Meter::run`]; Rust heap
/// (`.0`) and C heap (`.1`: glibc's live bytes minus the Rust heap's, so OpenSSL's DTLS and
/// aws-lc's keys).
struct Meter(i64, i64);

impl Meter {
    fn run<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let (before, before_c) = (heap(), malloc_live());
        let r = f();
        let rust = heap() - before;
        self.0 += rust;
        self.1 += malloc_live() - before_c - rust;
        r
    }
}

fn server_addr() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 5_000))
}

/// One server-side listener `Rtc` and its in-memory client.
struct Pair {
    server: Rtc,
    client: Rtc,
    addr: SocketAddr,
    mids: Vec<Mid>,
    /// The server reported ICE connected.
    ice: bool,
    /// Datagrams held back by an [`exchange`] filter (to the client, to the server).
    held: (Vec<Vec<u8>>, Vec<Vec<u8>>),
}

/// Drives an `Rtc` with one datagram (or a timer) and returns what it transmits; `ice` is set
/// when it reports ICE connected.
fn drive(
    ice: &mut bool,
    rtc: &mut Rtc,
    input: Option<(&[u8], SocketAddr, SocketAddr)>,
    now: Instant,
) -> Vec<Transmit> {
    let r = match input {
        Some((data, from, to)) => match Receive::new(Protocol::Udp, from, to, data) {
            Ok(r) => rtc.handle_input(Input::Receive(now, r)),
            Err(_) => return Vec::new(),
        },
        None => rtc.handle_input(Input::Timeout(now)),
    };
    let mut out = Vec::new();
    if r.is_ok() {
        while let Ok(o) = rtc.poll_output() {
            match o {
                Output::Transmit(t) => out.push(t),
                Output::Timeout(_) => break,
                Output::Event(Event::IceConnectionStateChange(
                    IceConnectionState::Connected | IceConnectionState::Completed,
                )) => *ice = true,
                Output::Event(_) => {}
            }
        }
    }
    out
}

/// The server's side of [`drive`], metered; the datagrams are copied out for the client.
fn server_io(m: &mut Meter, p: &mut Pair, input: Option<&[u8]>, now: Instant) -> Vec<Vec<u8>> {
    let input = input.map(|d| (d, p.addr, server_addr()));
    let out = m.run(|| drive(&mut p.ice, &mut p.server, input, now));
    let bytes = out.iter().map(|t| t.contents.to_vec()).collect();
    m.run(|| drop(out));
    bytes
}

fn client_io(p: &mut Pair, input: Option<&[u8]>, now: Instant) -> Vec<Vec<u8>> {
    let input = input.map(|d| (d, server_addr(), p.addr));
    drive(&mut false, &mut p.client, input, now)
        .iter()
        .map(|t| t.contents.to_vec())
        .collect()
}

/// STUN (RFC 7983: first byte 0-3).
fn is_stun(d: &[u8]) -> bool {
    d.first().is_some_and(|b| *b < 4)
}

/// Lets every pair exchange datagrams at `now` until quiet; `pass` filters what is delivered
/// now (the rest is held for a later exchange).
fn exchange(m: &mut Meter, pairs: &mut [Pair], now: Instant, pass: fn(&[u8]) -> bool) {
    for p in pairs {
        let mut to_client = std::mem::take(&mut p.held.0);
        let mut to_server = std::mem::take(&mut p.held.1);
        to_client.extend(server_io(m, p, None, now));
        to_server.extend(client_io(p, None, now));
        for _ in 0..20 {
            for d in std::mem::take(&mut to_client) {
                if pass(&d) {
                    to_server.extend(client_io(p, Some(&d), now));
                } else {
                    p.held.0.push(d);
                }
            }
            for d in std::mem::take(&mut to_server) {
                if pass(&d) {
                    to_client.extend(server_io(m, p, Some(&d), now));
                } else {
                    p.held.1.push(d);
                }
            }
            if to_client.is_empty() {
                break;
            }
        }
    }
}

/// Per-listener server heap (and live OpenSSL instances) at each stage of `n` bare listener
/// `Rtc`s with `mlines` audio m-lines each.
fn stages(n: usize, mlines: usize, name: &str, config: fn() -> RtcConfig) {
    let mut m = Meter(0, 0);
    let live0 = greenroom_sfu::dtls_stats().live as i64;
    let mut now = Instant::now();
    let mut rows: Vec<(&str, i64, i64, i64)> = Vec::new();
    let mut row = |name, m: &Meter| {
        let live = greenroom_sfu::dtls_stats().live as i64 - live0;
        rows.push((name, m.0, m.1, live));
    };
    let servers: Vec<Rtc> = m.run(|| {
        (0..n)
            .map(|_| {
                let mut rtc = config().build(now);
                rtc.add_local_candidate(Candidate::host(server_addr(), "udp").unwrap());
                rtc
            })
            .collect()
    });
    row("built (with its host candidate)", &m);
    let mut pairs: Vec<Pair> = servers
        .into_iter()
        .enumerate()
        .map(|(i, server)| {
            let addr = SocketAddr::from(([10, 0, 0, 2], 30_000 + i as u16));
            let mut client = RtcConfig::new().set_rtp_mode(true).build(now);
            client.add_local_candidate(Candidate::host(addr, "udp").unwrap());
            Pair {
                server,
                client,
                addr,
                mids: Vec::new(),
                ice: false,
                held: (Vec::new(), Vec::new()),
            }
        })
        .collect();
    for p in &mut pairs {
        let (offer, pending) = m.run(|| {
            let mut api = p.server.sdp_api();
            for _ in 0..mlines {
                p.mids
                    .push(api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
            }
            api.apply().unwrap()
        });
        let sdp = offer.to_sdp_string();
        m.run(|| drop(offer));
        let offer = SdpOffer::from_sdp_string(&sdp).unwrap();
        let answer = p
            .client
            .sdp_api()
            .accept_offer(offer)
            .unwrap()
            .to_sdp_string();
        m.run(|| {
            let answer = SdpAnswer::from_sdp_string(&answer).unwrap();
            p.server.sdp_api().accept_answer(pending, answer).unwrap();
            for mid in &p.mids {
                // As the engine sizes an audio send stream (engine::peers::configure_send_stream).
                if let Some(tx) = p.server.direct_api().stream_tx_by_mid(*mid, None) {
                    tx.set_rtx_cache(1, Duration::ZERO, None);
                }
            }
        });
    }
    row("offer/answer", &m);
    for _ in 0..400 {
        now += Duration::from_millis(5);
        exchange(&mut m, &mut pairs, now, is_stun);
        if pairs.iter().all(|p| p.ice) {
            break;
        }
    }
    row("ICE connected (STUN only)", &m);
    for _ in 0..400 {
        now += Duration::from_millis(5);
        exchange(&mut m, &mut pairs, now, |_| true);
        if pairs.iter().all(|p| p.server.is_connected()) {
            break;
        }
    }
    assert!(
        pairs.iter().all(|p| p.server.is_connected()),
        "pairs connect"
    );
    row("DTLS connected, SRTP keyed", &m);
    // Guards the DTLS write buffer cut (`dtls::session::MAX_SEND_FRAGMENT`): a connected
    // session's C heap was 84.6 KiB per listener with OpenSSL's 16 KiB write buffer, 70.6 KiB
    // with the 2 KiB one, 70.9 KiB in the third pass (glibc's per-chunk overhead of the Rust
    // allocations included).
    let c_kib = m.1 as f64 / n as f64 / 1024.0;
    assert!(
        c_kib < 74.0,
        "server C heap per connected listener {c_kib:.1} KiB (OpenSSL's write buffer back to 16 KiB?)"
    );
    if std::env::args().any(|a| a == "--exit-at-dtls") {
        println!("exit at DTLS connected: {n} listeners");
        std::process::exit(0);
    }
    for seq in 1..=150u64 {
        now += Duration::from_millis(20);
        for p in &mut pairs {
            m.run(|| {
                let pt = p
                    .server
                    .codec_config()
                    .find(|c| c.spec().codec == Codec::Opus)
                    .map(|c| c.pt())
                    .unwrap();
                let mut api = p.server.direct_api();
                for mid in &p.mids {
                    if let Some(tx) = api.stream_tx_by_mid(*mid, None) {
                        let w = RtpWrite::new(
                            pt,
                            SeqNo::from(seq),
                            seq as u32 * 960,
                            now,
                            vec![0x42; 100],
                        );
                        tx.write_rtp(w.marker(true));
                    }
                }
            });
        }
        exchange(&mut m, &mut pairs, now, |_| true);
    }
    row("3 s of audio (150 packets per m-line)", &m);
    let end = now + greenroom_sfu::DTLS_RELEASE_GRACE + Duration::from_secs(1);
    while now < end {
        now += Duration::from_millis(250);
        exchange(&mut m, &mut pairs, now, |_| true);
    }
    assert!(
        pairs.iter().all(|p| p.server.is_connected()),
        "pairs stay connected"
    );
    row("+ DTLS release grace, idle", &m);
    let nf = n as f64;
    println!(
        "memory stages, {name}, {mlines} audio m-line(s), x{n}: server Rust heap per listener \
         (cumulative), server C heap per listener (OpenSSL, aws-lc), live OpenSSL instances"
    );
    let mut prev = 0;
    for (stage, bytes, c_bytes, live) in rows {
        println!(
            "  {stage:<45} {:>7.1} KiB (+{:>6.1})  C heap {:>6.1} KiB  OpenSSL instances {live}",
            bytes as f64 / nf / 1024.0,
            (bytes - prev) as f64 / nf / 1024.0,
            c_bytes as f64 / nf / 1024.0,
        );
        prev = bytes;
    }
    drop(pairs);
}

/// (Rust heap, C heap, RSS, live OpenSSL DTLS instances after the media) the shard keeps for
/// `listeners` listeners of one publisher. The C heap is glibc's live bytes minus the Rust
/// heap's ([`malloc_live`]): OpenSSL's DTLS sessions, aws-lc's SRTP keys.
fn shard(listeners: usize, video: bool, bwe: bool, idle: bool) -> (i64, i64, i64, i64) {
    let rss0 = rss();
    let malloc0 = malloc_live();
    let live0 = greenroom_sfu::dtls_stats().live as i64;
    let region = Region::new(GLOBAL);
    let mut b = ShardBench::with_bwe(1, listeners, video, bwe).expect("peers connect");
    // Three seconds of media: 150 audio packets, or 1000 video packets (3 ms apart).
    let (packets, per_batch) = if video { (1_000, 10) } else { (150, 1) };
    for i in 0..packets / per_batch {
        b.prepare(per_batch);
        b.feed();
        if i % 10 == 9 {
            b.pump();
        }
    }
    b.pump();
    assert!(
        b.forwarded() > 0 || listeners == 0,
        "media reached the listeners"
    );
    // Then 150 more packets (3 s of audio) delivered to the clients: each listener's client
    // receives them and sends its first receiver report (SRTCP under its keys; a str0m client
    // sends it 5 s after its receive stream started, the SRs of the first 3 s started it), long
    // before the 30 s grace, so its DTLS session is released (`dtls`, early release; the
    // publisher's is kept).
    for _ in 0..150 / per_batch {
        b.prepare(per_batch);
        b.feed_delivered();
        b.pump();
    }
    let dtls_live = greenroom_sfu::dtls_stats().live as i64 - live0;
    if idle {
        // Past the DTLS release grace, then one more second of media.
        b.idle(greenroom_sfu::DTLS_RELEASE_GRACE + Duration::from_secs(1));
        let before = b.received();
        for _ in 0..50 {
            b.prepare(per_batch);
            b.feed_delivered();
            b.pump();
        }
        assert!(
            b.received() > before || listeners == 0,
            "media still reaches the listeners"
        );
    }
    b.drop_clients();
    let heap = live(&region);
    let res = (
        heap,
        malloc_live() - malloc0 - heap,
        rss() - rss0,
        dtls_live,
    );
    std::hint::black_box(&b);
    drop(b);
    res
}

fn per_listener(name: &str, listeners: usize, video: bool, bwe: bool, idle: bool) {
    let (h0, c0, r0, d0) = shard(0, video, bwe, idle);
    let (h, c, r, d) = shard(listeners, video, bwe, idle);
    let kib = |x: i64| x as f64 / listeners as f64 / 1024.0;
    println!(
        "memory {name} (x{listeners}): Rust heap {:.1} KiB per listener, C heap {:.1} KiB per \
         listener, RSS {:.1} KiB per listener, OpenSSL instances alive after the media: {d} \
         (publisher only: {d0})",
        kib(h - h0),
        kib(c - c0),
        kib(r - r0),
    );
    assert_eq!(
        d, d0,
        "every listener's DTLS session is released once its client sent SRTCP"
    );
    // Guards the early release, the SRTCP-only receiver and str0m's lazy SRTP ciphers
    // (`lazy_srtp`): 71-74 KiB of C heap per listener while its DTLS session lived; after the
    // release 8.3 KiB (audio) and 8.7 KiB (video) with both SRTP contexts of the receiver, 7.6
    // and 8.2 KiB with SRTCP only, 3.6 and 4.0-4.4 KiB with str0m's ciphers built on first use
    // (debug build, 200 audio / 50 video listeners; 4.4-6.9 KiB with 10 listeners, glibc's
    // fragmentation spread over few).
    // Guards str0m never parsing an all-lean listener's RTCP (`lean_rtcp::Read::OnlyFirstProof`:
    // its RTCP queue, 2 x 1040 B, and its SRTCP cipher): 42.6-43.8 KiB of Rust heap per audio
    // listener when str0m read the first proof, 40.4-41.7 since (debug build, 200 listeners).
    if !video && listeners >= 50 {
        assert!(
            kib(h - h0) < 42.5,
            "server Rust heap per audio listener {:.1} KiB (str0m reads the listeners' RTCP again?)",
            kib(h - h0)
        );
    }
    let bound = if listeners >= 50 { 6.0 } else { 10.0 };
    assert!(
        kib(c - c0) < bound,
        "server C heap per listener {:.1} KiB (DTLS sessions kept? str0m's SRTP ciphers built?)",
        kib(c - c0)
    );
}

/// The live heap of `n` bare `Rtc`s with the server's configuration, per stage.
fn bare(n: usize, bwe: bool) {
    use str0m::media::{Direction, MediaKind};
    let region = Region::new(GLOBAL);
    let rss0 = rss();
    let mut rtcs = Vec::new();
    for _ in 0..n {
        rtcs.push(greenroom_sfu::rtc_config(bwe).build(Instant::now()));
    }
    let built = live(&region);
    let built_rss = rss() - rss0;
    let mut offers = Vec::new();
    for rtc in &mut rtcs {
        let mut api = rtc.sdp_api();
        api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        offers.push(api.apply());
    }
    let offered = live(&region);
    let n = n as f64;
    println!(
        "memory bare Rtc (bwe {bwe}): built {:.1} KiB heap / {:.1} KiB RSS; + one audio m-line \
         offered {:.1} KiB heap; size_of::<Rtc>() = {} B",
        built as f64 / n / 1024.0,
        built_rss as f64 / n / 1024.0,
        (offered - built) as f64 / n / 1024.0,
        std::mem::size_of::<str0m::Rtc>(),
    );
    drop(offers);
    drop(rtcs);
}

fn main() {
    // `cargo bench` passes `--bench`; under `cargo test` (no argument) a quick smoke run.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let default = if args.iter().any(|a| a == "--bench") {
        200
    } else {
        10
    };
    let listeners: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(default);
    if args.iter().any(|a| a == "--engine-only") {
        // Only the engine's peers, audio listeners (what the peers' `SlotMap` and the engine's
        // own structs cost on top of str0m's).
        per_listener("audio listener, no BWE", listeners, false, false, false);
        return;
    }
    bare(listeners, false);
    bare(listeners, true);
    let listener = || greenroom_sfu::subscriber_config(false);
    stages(
        listeners,
        1,
        "listener (subscriber_config(false))",
        listener,
    );
    stages(
        listeners.min(50),
        4,
        "listener (subscriber_config(false))",
        listener,
    );
    let no_stats = || greenroom_sfu::subscriber_config(false).set_stats_interval(None);
    stages(listeners, 1, "listener, stats off", no_stats);
    let bwe = || greenroom_sfu::subscriber_config(true);
    stages(
        listeners,
        1,
        "subscriber with BWE (subscriber_config(true))",
        bwe,
    );
    per_listener("audio listener, no BWE", listeners, false, false, false);
    per_listener(
        "audio listener, no BWE, + DTLS grace",
        listeners,
        false,
        false,
        true,
    );
    per_listener("audio listener, BWE", listeners, false, true, false);
    per_listener(
        "video subscriber, no BWE",
        listeners.min(50),
        true,
        false,
        false,
    );
    per_listener(
        "video subscriber, no BWE, + DTLS grace",
        listeners.min(50),
        true,
        false,
        true,
    );
    per_listener(
        "video subscriber, BWE",
        listeners.min(50),
        true,
        true,
        false,
    );
    println!(
        "memory: size_of::<RtpPacket>() = {} B (one RTX cache slot holds one), \
         size_of::<Rtcp>() = {} B (one slot of str0m's RTCP feedback queues)",
        std::mem::size_of::<str0m::rtp::RtpPacket>(),
        std::mem::size_of::<str0m::rtp::rtcp::Rtcp>()
    );
}
