//! The floor for one forwarded packet on this machine (see `greenroom_sfu::io::floor`): copy +
//! RTP header rewrite + SRTP AEAD_AES_128_GCM protect (aws-lc-rs) + `sendmmsg` x32 to a drained
//! loopback socket, for 100-byte and 1200-byte payloads. Times are the thread's CPU time, per
//! packet (criterion's throughput is per packet).
//!
//! Run: `cargo bench -p greenroom-sfu --bench limits` (quick: `-- --quick`). The load tester
//! runs the same measurement (`greenroom-loadtest floor`) and reports the server's CPU per
//! forwarded packet as a multiple of it.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use greenroom_sfu::io::floor::{Floor, BATCH};

fn limits(c: &mut Criterion) {
    let mut g = c.benchmark_group("floor");
    g.throughput(Throughput::Elements(BATCH as u64));
    for payload in [100usize, 1200] {
        let mut floor = Floor::new(payload).expect("loopback sockets");
        g.bench_with_input(BenchmarkId::new("payload", payload), &payload, |b, _| {
            b.iter_custom(|iters| {
                let mut cpu = Duration::ZERO;
                for _ in 0..iters {
                    cpu += floor.batch().expect("floor batch").0;
                }
                cpu
            });
        });
    }
    g.finish();
}

criterion_group!(benches, limits);
criterion_main!(benches);
