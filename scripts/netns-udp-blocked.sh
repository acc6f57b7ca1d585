#!/usr/bin/env bash
# A network namespace whose UDP is blocked, joined to the host by a veth pair: the "corporate
# firewall" of the ICE-TCP browser tests (e2e/icetcp*.test.mjs); with `udp-ok`, a namespace
# whose link the test cuts (e2e/linkcut.test.mjs). Needs root (or sudo), iproute2 and nftables
# (installed by e2e/run.sh).
#
#   scripts/netns-udp-blocked.sh up   <ns> <index> [udp-ok]  # makes it; prints "<host ip> <ns ip>"
#                                                            # (udp-ok: UDP is not blocked)
#   scripts/netns-udp-blocked.sh down <ns> <index>           # removes it (and its veth); never fails
#   scripts/netns-udp-blocked.sh link <ns> <index> down|up   # cuts / restores the namespace's link
#   scripts/netns-udp-blocked.sh exec <ns> cmd...            # runs cmd inside
#
# <index> (1-250) picks the /30 link 10.231.<index>.0 and the veth names, so parallel runs use
# different ones. Inside the namespace nftables drops every UDP packet in and out; TCP and
# ICMP pass. Nothing is routed beyond the link: traffic goes only between the namespace and the
# host side of the veth.
set -euo pipefail

SUDO=""
# -n: never prompt for a password (a test must fail, and skip, instead of hanging).
[ "$(id -u)" -ne 0 ] && SUDO="sudo -n"

cmd="${1:-}"
ns="${2:-}"
if [ -z "$cmd" ] || [ -z "$ns" ]; then
  echo "usage: $0 up|down <ns> <index> | exec <ns> cmd..." >&2
  exit 2
fi

if [ "$cmd" = exec ]; then
  shift 2
  exec $SUDO ip netns exec "$ns" "$@"
fi

idx="${3:-}"
if ! [[ "$idx" =~ ^[0-9]+$ ]] || [ "$idx" -lt 1 ] || [ "$idx" -gt 250 ]; then
  echo "index must be 1-250, got '$idx'" >&2
  exit 2
fi
host_if="grh${idx}"
ns_if="grn${idx}"
host_ip="10.231.${idx}.1"
ns_ip="10.231.${idx}.2"

case "$cmd" in
  up)
    $SUDO ip netns add "$ns"
    # From here on, a failure removes what was made.
    trap '$SUDO ip netns del "$ns" 2>/dev/null || true; $SUDO ip link del "$host_if" 2>/dev/null || true' ERR
    $SUDO ip link add "$host_if" type veth peer name "$ns_if"
    $SUDO ip link set "$ns_if" netns "$ns"
    $SUDO ip addr add "${host_ip}/30" dev "$host_if"
    $SUDO ip link set "$host_if" up
    $SUDO ip netns exec "$ns" ip addr add "${ns_ip}/30" dev "$ns_if"
    $SUDO ip netns exec "$ns" ip link set "$ns_if" up
    $SUDO ip netns exec "$ns" ip link set lo up
    if [ "${4:-}" = udp-ok ]; then
      echo "$host_ip $ns_ip"
      exit 0
    fi
    $SUDO ip netns exec "$ns" nft -f - <<'NFT'
table inet greenroom_block_udp {
  chain input {
    type filter hook input priority 0; policy accept;
    meta l4proto udp drop
  }
  chain output {
    type filter hook output priority 0; policy accept;
    meta l4proto udp drop
  }
}
NFT
    echo "$host_ip $ns_ip"
    ;;
  link)
    # The namespace's end of the veth: down drops its connected route (sends fail, nothing
    # arrives), up restores the link and the route; established sockets survive.
    case "${4:-}" in
      down|up) $SUDO ip netns exec "$ns" ip link set "$ns_if" "$4" ;;
      *) echo "link needs down or up, got '${4:-}'" >&2; exit 2 ;;
    esac
    ;;
  down)
    $SUDO ip netns del "$ns" 2>/dev/null || true
    # Deleting the namespace deletes its veth end, and with it the pair; make sure anyway.
    $SUDO ip link del "$host_if" 2>/dev/null || true
    ;;
  *)
    echo "unknown command $cmd" >&2
    exit 2
    ;;
esac
