//! Memory per subscriber, measured on the engine's real peers: one shard
//! (`greenroom_sfu::fuzzing::ShardBench`) with one publisher and N listeners connected (ICE,
//! DTLS, SRTP) to in-memory str0m clients, three seconds of media (virtual clock) so that send
//! queues and RTX caches fill, then the clients dropped: what stays is the shard's. The same
//! with N = 0 is subtracted, so the figure is per listener.
//!
//! Two figures: the Rust heap (a counting global allocator, `stats_alloc`: live bytes, exact)
//! and the process RSS from `/proc/self/statm` (includes OpenSSL's C allocations for the DTLS
//! contexts, and the allocator's own overhead; noisy, page-granular). Also the live heap of
//! one bare `Rtc` built with the server's configuration, per stage.
//!
//! Run: `cargo bench -p greenroom-sfu --bench memory` (optional argument: listeners, default
//! 200), or in a debug build `cargo test -p greenroom-sfu --bench memory -- 200` (the heap
//! figures do not depend on the optimization level; without an argument: 10 listeners, a smoke
//! run).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::alloc::System;
use std::time::Instant;

use greenroom_sfu::fuzzing::ShardBench;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Live Rust heap bytes since `r` started.
fn live(r: &Region<'_, System>) -> i64 {
    let c = r.change();
    c.bytes_allocated as i64 - c.bytes_deallocated as i64 + c.bytes_reallocated as i64
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

/// (Rust heap, RSS) the shard keeps for `listeners` listeners of one publisher.
fn shard(listeners: usize, video: bool, bwe: bool) -> (i64, i64) {
    let rss0 = rss();
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
    b.drop_clients();
    let heap = live(&region);
    let res = (heap, rss() - rss0);
    std::hint::black_box(&b);
    drop(b);
    res
}

fn per_listener(name: &str, listeners: usize, video: bool, bwe: bool) {
    let (h0, r0) = shard(0, video, bwe);
    let (h, r) = shard(listeners, video, bwe);
    println!(
        "memory {name} (x{listeners}): Rust heap {:.1} KiB per listener, RSS {:.1} KiB per listener",
        (h - h0) as f64 / listeners as f64 / 1024.0,
        (r - r0) as f64 / listeners as f64 / 1024.0,
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
    bare(listeners, false);
    bare(listeners, true);
    per_listener("audio listener, no BWE", listeners, false, false);
    per_listener("audio listener, BWE", listeners, false, true);
    per_listener("video subscriber, no BWE", listeners.min(50), true, false);
    per_listener("video subscriber, BWE", listeners.min(50), true, true);
    println!(
        "memory: size_of::<RtpPacket>() = {} B (one RTX cache slot holds one)",
        std::mem::size_of::<str0m::rtp::RtpPacket>()
    );
}
