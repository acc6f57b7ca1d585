#!/usr/bin/env python3
"""What one very large room costs on a Greenroom cluster (docs/SCALING.md quotes the output).

Model: one audio room, S speakers heard by L listeners spread evenly over N nodes. Each speaker's
producer lives on its home node. A node with listeners needs each speaker's stream once
(node-to-node RTP relay), then fans it out locally. Compared: a star (the home sends one copy to
every other node) and a relay tree (each node forwards to at most K others).

Redis: placement is one EVALSHA per join that does not find the call in memory (the script does a
GET, an HGET and a PEXPIRE, or the least-loaded scan over the node hashes once per call); the
spanning-call design adds a SADD of the node to the call's node set when a node gets its first
participant of the call (N times per call, not per join) and one PUBLISH per control change
(revoke, mute, kick, end: delivered by Redis to the N subscribed nodes). Registry refreshes are
per node per interval, independent of the room.

Pure arithmetic, no randomness: the same parameters print the same tables.
"""

import argparse
import math


def wire_bytes(payload_bytes: float) -> float:
    # IPv4 20 + UDP 8 + RTP 12 + SRTP auth tag 10 + one-byte header extensions ~8
    return payload_bytes + 58


def stream_bps(kbps: float, pps: float) -> float:
    payload = kbps * 1000 / 8 / pps
    return wire_bytes(payload) * 8 * pps


def tree_depth(n: int, k: int) -> int:
    """Hops from the home to the farthest node when each node forwards to at most k others."""
    if n <= 1:
        return 0
    reached, frontier, depth = 1, 1, 0
    while reached < n:
        frontier *= k
        reached += frontier
        depth += 1
    return depth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listeners", type=int, default=100_000)
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--speakers", type=int, default=3, help="speakers talking at once")
    ap.add_argument("--audio-kbps", type=float, default=32.0)
    ap.add_argument("--audio-pps", type=float, default=50.0)
    ap.add_argument("--fanout", type=int, default=7, help="relay tree fan-out K")
    ap.add_argument("--hop-ms", type=float, default=0.5, help="added delay per relay hop (LAN + forward)")
    ap.add_argument("--node-pps-budget", type=float, default=300_000.0,
                    help="packets/s one node forwards (8 cores at the measured 24 CPU-s per M packets of docs/BENCHMARKS.md is ~330 000)")
    ap.add_argument("--refresh-s", type=float, default=2.0)
    a = ap.parse_args()

    per_node = math.ceil(a.listeners / a.nodes)
    s_bps = stream_bps(a.audio_kbps, a.audio_pps)
    print(f"room: {a.listeners} listeners over {a.nodes} nodes ({per_node} per node), "
          f"{a.speakers} speakers at once, Opus {a.audio_kbps:g} kbit/s at {a.audio_pps:g} pps "
          f"= {s_bps / 1000:.1f} kbit/s per stream on the wire")
    print()

    local_out_pps = per_node * a.speakers * a.audio_pps
    local_out_bps = per_node * a.speakers * s_bps
    print("per node, local fan-out (same in both topologies):")
    print(f"  egress to listeners   {local_out_pps:>12,.0f} pps   {local_out_bps / 1e6:>9.1f} Mbit/s")
    print(f"  ingress from relays   {a.speakers * a.audio_pps:>12,.0f} pps   "
          f"{a.speakers * s_bps / 1e6:>9.3f} Mbit/s  (one copy of each speaker)")
    print(f"  forwarding budget used {100 * local_out_pps / a.node_pps_budget:>10.1f} %  "
          f"(of {a.node_pps_budget:,.0f} pps)")
    print()

    others = a.nodes - 1
    star_home = others * a.speakers * s_bps
    depth = tree_depth(a.nodes, a.fanout)
    tree_home = min(a.fanout, others) * a.speakers * s_bps
    print("relay topology (speaker's home node, relay egress only):")
    print(f"  {'':22}{'home relay egress':>20}{'max hops':>10}{'added delay':>13}{'relay streams':>15}")
    print(f"  {'star':22}{star_home / 1e6:>15.2f} Mbit/s{1:>10}{a.hop_ms:>10.1f} ms{others * a.speakers:>15}")
    print(f"  {f'tree (K={a.fanout})':22}{tree_home / 1e6:>15.2f} Mbit/s{depth:>10}"
          f"{depth * a.hop_ms:>10.1f} ms{others * a.speakers:>15}")
    print("  (both send every stream once per receiving node: the total relay traffic is equal;")
    print("   the star puts it all on the home's NIC, the tree spreads it and adds hops)")
    print()

    joins = a.listeners
    print("Redis operations:")
    print(f"  per join                1 EVALSHA (place: GET + HGET + PEXPIRE inside)"
          f" + 1 SADD on a node's first join of the call")
    print(f"  whole room ramp-up      {joins:,} EVALSHA + {a.nodes} SADD")
    print(f"  per permission change   1 PUBLISH (versioned update) -> {a.nodes} deliveries "
          f"(one per node, not per listener)")
    print(f"  registry, steady        {a.nodes / a.refresh_s:.0f} refreshes/s "
          f"(1 MULTI: HSET + PEXPIRE + SADD, + 1 EVALSHA refreshing the node's claims)")
    print()
    print("signaling to listeners when one speaker is revoked: 1 HTTP request -> 1 PUBLISH -> "
          f"{a.nodes} nodes -> {a.listeners:,} `call.permissions_updated`-class events sent "
          "locally by each node")


if __name__ == "__main__":
    main()
