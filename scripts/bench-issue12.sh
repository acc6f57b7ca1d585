#!/usr/bin/env bash
# The four scenarios of issue 12, each on Greenroom then on Janus's videoroom with the same light
# (str0m) bots in one run, on loopback only, printed as one markdown table (paste-ready for
# docs/BENCHMARKS.md):
#
#   audio-room-1x200   1 Opus speaker, 200 listeners, call type audio_room
#   audio-room-1x600   1 Opus speaker, 600 listeners, call type audio_room
#   meeting-4x4        4 VP8 500 kbit/s + Opus publishers, each receiving the 3 others
#   livestream-1x50    1 VP8 500 kbit/s + Opus publisher, 50 viewers, call type livestream
#
#   scripts/bench-issue12.sh                      # all four, 15 s each, release build
#   scripts/bench-issue12.sh --duration 10s --only meeting-4x4,livestream-1x50
#   scripts/bench-issue12.sh --smoke              # a few seconds: 1 speaker x 3 listeners, debug
#   scripts/bench-issue12.sh --only revoke-1x10 --revoke   # the revoke row alone
#
# With --revoke, one more row (Greenroom only: Janus has no capabilities to revoke):
#
#   revoke-1x10        1 VP8 + Opus publisher, 10 viewers; a moderator revokes its send-video at
#                      a third of the run and grants it again at two thirds, while the publisher
#                      ignores stop_publishing and keeps sending (greenroom-loadtest
#                      --revoke-after/--regrant-after): what the viewers received of that video
#                      before, in the revoked window and after, next to the server's datagrams
#                      out in the revoked window (a second table)
#
# Every scenario gets a fresh Greenroom (`greenroom serve` on 127.0.0.1) and a fresh Janus
# (scripts/janus/start.sh: 127.0.0.1 candidates), so each memory figure starts from a new
# process. Each greenroom-loadtest run measures the machine's floor just before it
# (--floor-time, default 1s). The script samples both servers' UDP sockets during their runs
# and fails if one is bound to anything but 127.0.0.1: every datagram stays on loopback.
#
# Every row says whether the bots' publishers kept their nominal rate (packets sent vs what the
# scenario's publishers should send; "LOW" and a warning under 95 %: the load tester, not the
# server, set the rate), and the script lists that health per run at the end.
#
# Options: --duration D (default 15s; whole seconds with --revoke), --only a,b (scenario names),
# --floor-time D, --smoke, --revoke (add the revoke row, off by default),
# --no-janus (Greenroom only), --settle D (audio rows: keep the room running D more after the
# window and report the server's memory per listener then too, e.g. 35s: past the server's 30 s
# DTLS release, what a long-lived room holds), --nice N (run both servers and the load tester at this nice
# level, e.g. -5 on a machine busy with builds: the same for every process measured; recorded in
# the output). LOADTEST_PROFILE=debug|release (default release; debug with
# --smoke). --perf: record the Greenroom server of every run with `perf record` (PERF_CALLGRAPH,
# default dwarf,16384; PERF_FREQ, default 499 Hz) into <out>/<name>-greenroom.perf.data, from the
# end of the join phase (PERF_DELAY, default 8s after the load tester starts) to the end of the run,
# print the top of `perf report --no-children` into <name>-greenroom.perf.txt, and scrape the
# server's /metrics when recording starts and ends (<name>-greenroom.metrics-{start,end}.txt: the
# difference gives drives per second by cause, datagrams out, syscalls).
# The servers read the environment they are started with: GREENROOM_CONFIG=file.toml runs
# Greenroom with that configuration (e.g. `[call_types.livestream] bandwidth_estimation = false`,
# docs/BENCHMARKS.md "Per-subscriber fixed costs").
# --batch-bots: run the load tester under SCHED_BATCH (`chrt -b 0`, for both servers alike): the
# kernel then never lets a bot thread woken by a datagram preempt the server that sent it. On
# loopback the bots share the server's two cores, and each wake-up preemption inside the
# server's `sendmmsg` costs the server a context switch that receivers on other machines would
# not (docs/BENCHMARKS.md, "Bots that do not preempt the server"); the default keeps today's
# method.
# Exit status 77 when Janus is not installed and cannot be (the smoke test skips).
# Output: target/loadtest/issue12-<stamp>/ (JSON + HTML per run, servers' logs, table.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

DURATION=15s
ONLY=""
FLOOR_TIME=1s
SMOKE=0
JANUS=1
NICE=""
REVOKE=0
SETTLE=""
PERF=0
BOT_SCHED=()
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --floor-time) FLOOR_TIME="$2"; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    --no-janus) JANUS=0; shift ;;
    --revoke) REVOKE=1; shift ;;
    --settle) SETTLE="$2"; shift 2 ;;
    --nice) NICE="$2"; shift 2 ;;
    --perf) PERF=1; shift ;;
    --batch-bots) BOT_SCHED=(chrt -b 0); shift ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done

# name | greenroom-loadtest scenario options (the same for both servers; Janus ignores the
# call type, and its rooms have no backstage to go live from).
SCENARIOS=(
  "audio-room-1x200|--audio-publishers 1 --subscribers 200 --no-cross-subscribe --call-type audio_room --join-rate 40"
  "audio-room-1x600|--audio-publishers 1 --subscribers 600 --no-cross-subscribe --call-type audio_room --join-rate 100"
  "meeting-4x4|--video-publishers 4 --join-rate 20"
  "livestream-1x50|--video-publishers 1 --subscribers 50 --no-cross-subscribe --call-type livestream --join-rate 40"
)
if [ "$SMOKE" = 1 ]; then
  SCENARIOS=("smoke-audio-1x3|--audio-publishers 1 --subscribers 3 --no-cross-subscribe --call-type audio_room --join-rate 20")
  DURATION=3s
  FLOOR_TIME=200ms
fi
if [ "$REVOKE" = 1 ]; then
  # Revoke at a third of the run, grant again at two thirds (each window minus a 500 ms grace).
  if ! [[ "$DURATION" =~ ^([0-9]+)s?$ ]] || [ "${BASH_REMATCH[1]}" -lt 3 ]; then
    echo "--revoke needs --duration in whole seconds, at least 3s (got $DURATION)" >&2
    exit 2
  fi
  secs="${BASH_REMATCH[1]}"
  SCENARIOS+=("revoke-1x10|--video-publishers 1 --subscribers 10 --no-cross-subscribe --join-rate 20 --revoke-after $((secs / 3))s --regrant-after $((2 * secs / 3))s")
fi
PROFILE="${LOADTEST_PROFILE:-$([ "$SMOKE" = 1 ] && echo debug || echo release)}"

if [ "$JANUS" = 1 ] && ! command -v janus >/dev/null 2>&1; then
  if [ "$SMOKE" = 1 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "janus is not installed: skipped (scripts/janus/start.sh installs it)" >&2
    exit 77
  fi
fi

if [ "$PROFILE" = release ]; then
  cargo build -q --release -p greenroom-control -p greenroom-loadtest
else
  cargo build -q -p greenroom-control -p greenroom-loadtest
fi
BIN_DIR="$TARGET_DIR/$PROFILE"
# Every process started from here on (both servers, the load tester) inherits the nice level.
if [ -n "$NICE" ] && ! renice -n "$NICE" -p $$ >/dev/null; then
  echo "renice $NICE failed (a negative level needs root): running at the usual level" >&2
  NICE=""
fi
RUN="issue12-$(date -u +%Y%m%d-%H%M%S)"
OUT="$TARGET_DIR/loadtest/$RUN"
mkdir -p "$OUT"

# shellcheck source=scripts/janus/lib.sh
. "$ROOT/scripts/janus/lib.sh"
# Janus's HTTP API on a free port (other worktrees may run their own Janus on 8088), and its own
# state directory for this run.
if [ -z "${JANUS_HTTP_PORT:-}" ]; then
  JANUS_HTTP_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
export JANUS_HTTP_PORT
export JANUS_DIR="${JANUS_DIR:-$TARGET_DIR/janus-issue12}"
# 600 listeners are 600 UDP sockets (and WebSockets) in the load tester and in the server.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cleanup() {
  gr_stop
  [ -n "${SAMPLER:-}" ] && kill "$SAMPLER" 2>/dev/null || true
  [ -n "${PERF_PID:-}" ] && kill -INT "$PERF_PID" 2>/dev/null || true
  [ "$JANUS" = 1 ] && "$ROOT/scripts/janus/stop.sh" || true
}
trap cleanup EXIT

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
FILES=()
LOADS=()
FAILED=()
for entry in "${SCENARIOS[@]}"; do
  name="${entry%%|*}"
  read -r -a opts <<<"${entry#*|}"
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then
    continue
  fi
  common=(--bots light --name "$name" --out "$OUT" --duration "$DURATION"
    --floor-time "$FLOOR_TIME" --timeout 30s --no-progress "${opts[@]}")
  # The smoke fails when no media reached the listeners (an interop break with either server).
  [ "$SMOKE" = 1 ] && common+=(--require-media)
  [ -n "$SETTLE" ] && [[ "$name" == audio-* ]] && common+=(--settle "$SETTLE")

  gr_start "$OUT/$name-greenroom-server.log"
  echo "== $name on greenroom (pid $GR_PID, $GR_URL; load average $(loadavg))" >&2
  LOADS+=("$name greenroom: $(loadavg)")
  sockets_start "$GR_PID" "$OUT/$name-greenroom-udp-sockets.txt"
  PERF_PID=""
  if [ "$PERF" = 1 ]; then
    # Starts recording once the listeners have joined: the steady state is what is profiled.
    (sleep "${PERF_DELAY:-8s}" && curl -fsS "$GR_URL/metrics" >"$OUT/$name-greenroom.metrics-start.txt" 2>/dev/null;
      exec perf record -q -F "${PERF_FREQ:-499}" \
      --call-graph "${PERF_CALLGRAPH:-dwarf,16384}" -p "$GR_PID" \
      -o "$OUT/$name-greenroom.perf.data" 2>"$OUT/$name-greenroom.perf.log") &
    PERF_PID=$!
  fi
  if "${BOT_SCHED[@]}" "$BIN_DIR/greenroom-loadtest" --target greenroom --url "$GR_URL" --server-pid "$GR_PID" \
    "${common[@]}" >"$OUT/$name-greenroom.txt"; then
    FILES+=("$OUT/$name-greenroom.json")
  else
    FAILED+=("$name greenroom")
  fi
  if [ -n "$PERF_PID" ]; then
    # perf writes its file on SIGINT; the subshell execs perf, so its PID is perf's.
    curl -fsS "$GR_URL/metrics" >"$OUT/$name-greenroom.metrics-end.txt" 2>/dev/null || true
    kill -INT "$PERF_PID" 2>/dev/null || true
    wait "$PERF_PID" 2>/dev/null || true
    if [ -s "$OUT/$name-greenroom.perf.data" ]; then
      perf report -q -i "$OUT/$name-greenroom.perf.data" --no-children --sort comm,dso,symbol \
        --percent-limit 0.5 -g none >"$OUT/$name-greenroom.perf.txt" 2>/dev/null || true
      echo "== perf profile: $OUT/$name-greenroom.perf.data (top: $name-greenroom.perf.txt)" >&2
    fi
  fi
  sockets_check "$OUT/$name-greenroom-udp-sockets.txt" greenroom
  gr_stop

  # Janus has no capabilities to revoke: the revoke row runs on Greenroom only.
  if [ "$JANUS" = 1 ] && [[ "$name" != revoke-* ]]; then
    janus_start fresh
    echo "== $name on janus (pid $JANUS_PID, $JANUS_URL; load average $(loadavg))" >&2
    LOADS+=("$name janus: $(loadavg)")
    sockets_start "$JANUS_PID" "$OUT/$name-janus-udp-sockets.txt"
    if "${BOT_SCHED[@]}" "$BIN_DIR/greenroom-loadtest" --target janus --url "$JANUS_URL" \
      --server-pid "$JANUS_PID" --bind-ip "$JANUS_ICE_IP" "${common[@]}" \
      >"$OUT/$name-janus.txt"; then
      FILES+=("$OUT/$name-janus.json")
    else
      FAILED+=("$name janus")
    fi
    sockets_check "$OUT/$name-janus-udp-sockets.txt" janus
    "$ROOT/scripts/janus/stop.sh"
  fi
done

{
  echo "Run $RUN: commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD 2>/dev/null || echo '+changes'), $PROFILE build, light bots, $DURATION per run, $(nproc) cores"
  echo "(Linux $(uname -r); $( (janus --version 2>/dev/null || echo 'janus: none') | sed -n 1p)); every server socket on 127.0.0.1."
  echo
  echo '```sh'
  echo "scripts/bench-issue12.sh --duration $DURATION${ONLY:+ --only $ONLY}${NICE:+ --nice $NICE}$([ "$SMOKE" = 1 ] && echo ' --smoke')$([ "$REVOKE" = 1 ] && echo ' --revoke')${SETTLE:+ --settle $SETTLE}$([ "${#BOT_SCHED[@]}" -gt 0 ] && echo ' --batch-bots')"
  echo '```'
  echo
  if [ "${#FILES[@]}" -gt 0 ]; then
    "$BIN_DIR/greenroom-loadtest" --compare "${FILES[@]}" --markdown
    echo
    echo "Publishers' rate (packets sent / nominal) per run:"
    python3 - "${FILES[@]}" <<'PY'
import json, sys
for path in sys.argv[1:]:
    for r in json.load(open(path)):
        s = r["summary"]
        pct = s.get("publisher_rate_pct")
        health = "-" if pct is None else ("OK" if pct >= 95 else "LOW: the load tester set the rate")
        pct = "-" if pct is None else f"{pct:.1f} %"
        print(f"- {s['scenario']} on {s['target']}: {s.get('sent_pps', 0):.0f} of "
              f"{s.get('nominal_sent_pps', 0):.0f} pkt/s, {pct}: {health}")
PY
  fi
  echo
  echo "Load average (1/5/15 min) before each run: $(IFS=';'; echo "${LOADS[*]}" | sed 's/;/; /g')."
  if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "Runs that failed (see $OUT/*.txt): ${FAILED[*]}."
  fi
} | tee "$OUT/table.md"
echo "reports: $OUT" >&2
[ "${#FILES[@]}" -gt 0 ] && [ "${#FAILED[@]}" -eq 0 ]
