//! The node-to-node relay's own cost per packet, without sockets
//! (`greenroom_sfu::relay_bench::RelayCodec`): on the publishing node, encoding and signing a
//! media datagram (HMAC-SHA256, once per packet whatever the number of nodes); on a receiving
//! node, what the receive thread does per datagram (head, route lookup, MAC check, decode into
//! the shard's message); and the publishing node's sends of a batch of packets to two other
//! nodes on loopback, batched (`send_32x2`) or one `sendto` each (`send_32x2_sendto`). The
//! fan-out (the same as for a local packet) comes on top.
//!
//! Run: `cargo bench -p greenroom-sfu --bench relay` (smoke test: `-- --test`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use greenroom_sfu::relay_bench::{RelayCodec, RelaySender};

fn relay(c: &mut Criterion) {
    let mut g = c.benchmark_group("relay");
    // Opus audio (80 bytes) and a full video packet (1100 bytes).
    for size in [80usize, 1100] {
        let payload = vec![0x55u8; size];
        g.throughput(Throughput::Elements(1));
        let mut codec = RelayCodec::default();
        g.bench_with_input(BenchmarkId::new("encode", size), &payload, |b, p| {
            b.iter(|| codec.encode_media(p).len())
        });
        let mut codec = RelayCodec::default();
        let datagram = codec.encode_media(&payload).to_vec();
        assert!(codec.route(&datagram));
        g.bench_with_input(BenchmarkId::new("receive", size), &datagram, |b, d| {
            b.iter(|| codec.route(d))
        });
    }
    // The sending side: a batch of 32 packets (what a shard handles per wake-up at most), each
    // out to 2 other nodes on loopback, then the end-of-batch flush: queued and sent with
    // sendmmsg (`send_32x2`, the shard's path), or one sendto per datagram
    // (`send_32x2_sendto`, the path before batching).
    for size in [80usize, 1100] {
        let payload = vec![0x55u8; size];
        for (name, batched) in [("send_32x2", true), ("send_32x2_sendto", false)] {
            let mut sender = RelaySender::new(2, batched).unwrap();
            g.throughput(Throughput::Elements(32));
            g.bench_with_input(BenchmarkId::new(name, size), &payload, |b, p| {
                b.iter(|| {
                    for _ in 0..32 {
                        sender.send_media(p);
                    }
                    sender.flush();
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, relay);
criterion_main!(benches);
