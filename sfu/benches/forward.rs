//! Forwarding path benchmark over the engine's real code: one shard (`greenroom_sfu::fuzzing::
//! ShardBench`) with its publishers and subscribers connected (ICE, DTLS, SRTP AEAD-GCM) to
//! in-memory str0m clients. Each iteration gives the shard one batch of SRTP datagrams from the
//! publishers (decrypt, gate, fan-out, rewrite, `write_rtp`, drive, protect) and lets it fire its
//! due timers; the shard's output goes to a counting sink instead of a socket. The clients'
//! encryption and their replies (consent checks, RTCP) run outside the timed region; the clock
//! is virtual (audio 50 packets/s, video about 330 packets/s per publisher).
//!
//! Variants: publishers x listeners, `audio 1x10`, `audio 1x200`, `cold` (audio 1x200 with
//! the caches flushed before each batch by writing a 32 MiB buffer), and `video 4x4` (four VP8
//! publishers in a meeting, each receiving the three others, with bandwidth estimation and the
//! pacer; each batch is a frame of three 1100 B packets per publisher).
//!
//! Run: `cargo bench -p greenroom-sfu --bench forward` (quick: append `-- --quick`; smoke test in
//! CI: `-- --test`). Prints ns and str0m drive cycles per forwarded packet for each variant.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::cell::Cell;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use greenroom_sfu::fuzzing::ShardBench;

/// One variant: name, publishers, listeners, video, packets per publisher per batch, cold.
struct Variant {
    name: &'static str,
    publishers: usize,
    listeners: usize,
    video: bool,
    batch: usize,
    cold: bool,
}

const VARIANTS: [Variant; 4] = [
    Variant {
        name: "audio 1x10",
        publishers: 1,
        listeners: 10,
        video: false,
        batch: 1,
        cold: false,
    },
    Variant {
        name: "audio 1x200",
        publishers: 1,
        listeners: 200,
        video: false,
        batch: 1,
        cold: false,
    },
    Variant {
        name: "cold audio 1x200",
        publishers: 1,
        listeners: 200,
        video: false,
        batch: 1,
        cold: true,
    },
    Variant {
        name: "video 4x4",
        publishers: 4,
        listeners: 0,
        video: true,
        batch: 3,
        cold: false,
    },
];

/// Overwrites a buffer larger than the last-level cache.
fn flush_caches(buf: &mut [u8], round: u8) {
    for chunk in buf.chunks_mut(64) {
        chunk[0] = round;
    }
    std::hint::black_box(&buf);
}

fn forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward");
    group.sample_size(10);
    let mut trash = vec![0u8; 32 << 20];
    for v in &VARIANTS {
        let mut b = ShardBench::new(v.publishers, v.listeners, v.video).expect("peers connect");
        // Subscribers per packet: every listener and every other publisher.
        let fanout = (v.listeners + v.publishers - 1) as u64;
        let per_batch = fanout * (v.publishers * v.batch) as u64;
        let (total_ns, total_fwd) = (Cell::new(0u128), Cell::new(0u64));
        let drives_before = b.drives();
        group.throughput(Throughput::Elements(per_batch));
        group.bench_function(BenchmarkId::from_parameter(v.name), |bench| {
            bench.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for i in 0..iters {
                    b.prepare(v.batch);
                    if v.cold {
                        flush_caches(&mut trash, i as u8);
                    }
                    let fwd = b.forwarded();
                    let start = Instant::now();
                    b.feed();
                    timed += start.elapsed();
                    total_fwd.set(total_fwd.get() + b.forwarded() - fwd);
                    if i % 10 == 9 {
                        b.pump();
                    }
                }
                total_ns.set(total_ns.get() + timed.as_nanos());
                timed
            })
        });
        let (i0, o0, t0) = drives_before;
        let (i1, o1, t1) = b.drives();
        let fwd = total_fwd.get().max(1) as f64;
        println!(
            "forward {}: {:.0} ns per forwarded packet; drives per forwarded packet: input {:.3}, \
             output {:.3}, timer {:.3} ({} packets forwarded)",
            v.name,
            total_ns.get() as f64 / fwd,
            (i1 - i0) as f64 / fwd,
            (o1 - o0) as f64 / fwd,
            (t1 - t0) as f64 / fwd,
            total_fwd.get(),
        );
    }
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
