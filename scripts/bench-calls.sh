#!/usr/bin/env bash
# Many small calls on one server at once: N concurrent 4 x 4 VP8 meetings (light bots, one
# greenroom-loadtest process per call, each in its own call), against one Greenroom started per
# run with GREENROOM_RTC_SHARDS set to each shard count given, alternating, for several rounds.
# It answers what the one-call scenarios of scripts/bench-issue12.sh cannot: whether the media
# plane's shard count (one shard by default on a machine of one or two cores) holds up when
# the load is many calls rather than one large one (docs/BENCHMARKS.md, "Many small calls").
#
#   scripts/bench-calls.sh                               # 8 meetings, shards "1 2", 2 rounds, 10 s
#   scripts/bench-calls.sh --calls 12 --shards "1 2" --rounds 3 --duration 10s --nice -10
#   scripts/bench-calls.sh --smoke                       # 2 calls of 2 bots, 3 s, debug build
#
# Every server socket stays on 127.0.0.1 (the script checks, as bench-issue12.sh does). Each row
# sums the calls' forwarded packets and divides the server's CPU over the window (the same
# process measured by every load tester; their mean) by that sum: server µs per forwarded
# packet and the ratio to the floor (the load testers' median floor). Latency p99 is the worst
# call's, loss is over all calls. The calls start together; their windows overlap to within
# their join phases (a fraction of a second).
#
# Options: --calls N (default 8), --shards "1 2" (shard counts, alternating), --rounds R
# (default 2), --duration D (default 10s), --publishers P (video publishers per call, default 4),
# --nice N (servers and load testers at this nice level), --smoke. LOADTEST_PROFILE=debug|release
# (default release; debug with --smoke).
# The last three columns come from the server's /metrics, scraped 3 s after the load testers
# start (joins done) and when they end: shard wake-ups per second (all causes), datagram batches
# a lone shard absorbed before its flush, and `sendmmsg` calls.
# Output: target/loadtest/calls-<stamp>/ (each load tester's JSON and text, the servers' logs and
# metrics, table.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

CALLS=8
SHARDS="1 2"
ROUNDS=2
DURATION=10s
PUBLISHERS=4
NICE=""
SMOKE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --calls) CALLS="$2"; shift 2 ;;
    --shards) SHARDS="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --publishers) PUBLISHERS="$2"; shift 2 ;;
    --nice) NICE="$2"; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
FLOOR_TIME=500ms
if [ "$SMOKE" = 1 ]; then
  CALLS=2
  PUBLISHERS=2
  ROUNDS=1
  SHARDS="1 2"
  DURATION=3s
  FLOOR_TIME=100ms
fi
PROFILE="${LOADTEST_PROFILE:-$([ "$SMOKE" = 1 ] && echo debug || echo release)}"
if [ "$PROFILE" = release ]; then
  cargo build -q --release -p greenroom-control -p greenroom-loadtest
else
  cargo build -q -p greenroom-control -p greenroom-loadtest
fi
BIN_DIR="$TARGET_DIR/$PROFILE"
if [ -n "$NICE" ] && ! renice -n "$NICE" -p $$ >/dev/null; then
  echo "renice $NICE failed (a negative level needs root): running at the usual level" >&2
  NICE=""
fi
RUN="calls-$(date -u +%Y%m%d-%H%M%S)"
OUT="$TARGET_DIR/loadtest/$RUN"
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# shellcheck source=scripts/janus/lib.sh
. "$ROOT/scripts/janus/lib.sh"
cleanup() {
  gr_stop
  [ -n "${SAMPLER:-}" ] && kill "$SAMPLER" 2>/dev/null || true
}
trap cleanup EXIT

ROWS=()
FAILED=()
for round in $(seq 1 "$ROUNDS"); do
  for shards in $SHARDS; do
    name="r$round-shards$shards"
    export GREENROOM_RTC_SHARDS="$shards"
    gr_start "$OUT/$name-server.log"
    unset GREENROOM_RTC_SHARDS
    load="$(cut -d' ' -f1 /proc/loadavg)"
    echo "== round $round, $shards shard(s): $CALLS calls of $PUBLISHERS (pid $GR_PID; load average $load)" >&2
    sockets_start "$GR_PID" "$OUT/$name-udp-sockets.txt"
    pids=()
    for c in $(seq 1 "$CALLS"); do
      "$BIN_DIR/greenroom-loadtest" --target greenroom --url "$GR_URL" --server-pid "$GR_PID" \
        --bots light --name "$name-call$c" --out "$OUT" --duration "$DURATION" \
        --floor-time "$FLOOR_TIME" --timeout 30s --no-progress \
        --video-publishers "$PUBLISHERS" --join-rate 20 \
        $([ "$SMOKE" = 1 ] && echo --require-media) \
        >"$OUT/$name-call$c.txt" 2>&1 &
      pids+=($!)
    done
    # The server's counters over the steady state: from 3 s in (joins done) to the end.
    sleep 3
    date +%s.%N >"$OUT/$name-metrics-start.txt"
    curl -fsS "$GR_URL/metrics" >>"$OUT/$name-metrics-start.txt" 2>/dev/null || true
    ok=1
    for p in "${pids[@]}"; do
      wait "$p" || ok=0
    done
    date +%s.%N >"$OUT/$name-metrics-end.txt"
    curl -fsS "$GR_URL/metrics" >>"$OUT/$name-metrics-end.txt" 2>/dev/null || true
    sockets_check "$OUT/$name-udp-sockets.txt" greenroom
    gr_stop
    if [ "$ok" = 1 ]; then
      ROWS+=("$name|$shards|$load")
    else
      FAILED+=("$name")
    fi
  done
done

{
  echo "Run $RUN: commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD 2>/dev/null || echo '+changes'), $PROFILE build, light bots, $CALLS calls of $PUBLISHERS VP8 + Opus publishers each receiving the others, $DURATION, $(nproc) cores"
  echo
  echo '```sh'
  echo "scripts/bench-calls.sh --calls $CALLS --shards \"$SHARDS\" --rounds $ROUNDS --duration $DURATION --publishers $PUBLISHERS${NICE:+ --nice $NICE}$([ "$SMOKE" = 1 ] && echo ' --smoke')"
  echo '```'
  echo
  python3 - "$OUT" "$CALLS" "${ROWS[@]}" <<'PY'
import json, statistics, sys
out, calls, rows = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def counters(path):
    """The metrics file's timestamp and its counters, summed over labels by name."""
    lines = open(path).read().splitlines()
    t, vals = float(lines[0]), {}
    for line in lines[1:]:
        if line.startswith("#") or " " not in line:
            continue
        key, v = line.rsplit(" ", 1)
        name = key.split("{", 1)[0]
        if key.startswith("greenroom_engine_wakeups_total"):
            name = key
        try:
            vals[name] = vals.get(name, 0.0) + float(v)
        except ValueError:
            pass
    return t, vals

def rates(name):
    try:
        t0, a = counters(f"{out}/{name}-metrics-start.txt")
        t1, b = counters(f"{out}/{name}-metrics-end.txt")
    except (OSError, ValueError, IndexError):
        return "-", "-", "-"
    per_s = lambda k: (b.get(k, 0.0) - a.get(k, 0.0)) / max(1e-9, t1 - t0)
    wake = sum(per_s(k) for k in b if k.startswith("greenroom_engine_wakeups_total"))
    return (f"{wake:.0f}", f"{per_s('greenroom_engine_absorbed_total'):.1f}",
            f"{per_s('greenroom_udp_send_syscalls_total'):.0f}")

print("| run | shards | load avg (1 min) | fwd pkt/s (expected), loss | worst p50 / p99 (ms) | "
      "server CPU (% core) | **µs / fwd pkt** (x floor) | publishers' rate | shard wake-ups/s | "
      "absorbed/s | `sendmmsg`/s |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for row in rows:
    name, shards, load = row.split("|")
    s = [json.load(open(f"{out}/{name}-call{c}-greenroom.json"))[0]["summary"] for c in range(1, calls + 1)]
    fwd = sum(x["forwarded_pps"] for x in s)
    exp = sum(x["expected_pps"] for x in s)
    sent = sum(x["sent_packets"] for x in s)
    lost = sum(x["lost_packets"] for x in s)
    fwd_pkts = sum(x["forwarded_packets"] for x in s)
    loss = 100.0 * lost / max(1, fwd_pkts + lost)
    cpu = statistics.mean(x["server_cpu_pct"] for x in s)
    us = cpu * 1e4 / fwd if fwd else float("nan")
    floor = statistics.median(x["floor_ns_per_packet"] for x in s)
    rate = 100.0 * sum(x["sent_pps"] for x in s) / max(1e-9, sum(x["nominal_sent_pps"] for x in s))
    p50 = max(x["latency_p50_ms"] for x in s)
    p99 = max(x["latency_p99_ms"] for x in s)
    print(f"| {name} | {shards} | {load} | {fwd:.0f} ({exp:.0f}), {loss:.2f} % | {p50:.2f} / {p99:.2f} | "
          f"{cpu:.1f} | **{us:.2f}** ({us * 1000 / floor:.1f}x) | {rate:.1f} % | "
          + " | ".join(rates(name)) + " |")
    if sent == 0 or fwd_pkts == 0:
        sys.exit(f"{name}: no media forwarded")
PY
  if [ "${#FAILED[@]}" -gt 0 ]; then
    echo
    echo "Runs that failed (see $OUT/*.txt): ${FAILED[*]}."
  fi
} | tee "$OUT/table.md"
echo "reports: $OUT" >&2
[ "${#ROWS[@]}" -gt 0 ] && [ "${#FAILED[@]}" -eq 0 ]
