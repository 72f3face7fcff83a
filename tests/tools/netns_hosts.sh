#!/usr/bin/env bash
# Two "hosts" on one Linux machine: two network namespaces joined by a veth pair, each with its
# own address (10.77.0.1/24 and 10.77.0.2/24), loopback up, and its own hostname (a private UTS
# namespace per process started in it). Used by tests/tools/two_hosts.test to run mpirun across
# hosts for real (TCP between the namespaces, orted started by tests/tools/netns_agent.sh instead
# of ssh). Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2.
#
#   netns_hosts.sh run DIR -- COMMAND...   make the hosts, run COMMAND inside host0 (hostname
#                                          host0), print host0's veth counters
#                                          (`veth0 tx_bytes T rx_bytes R`), tear everything down
#                                          (trap: also on failure or a signal), exit with
#                                          COMMAND's status
#   netns_hosts.sh up DIR                  make them and leave them (prints the namespace names)
#   netns_hosts.sh down DIR                remove what `up DIR` made
#   netns_hosts.sh probe                   exit 0 when namespaces + veth can be made here
#
# DIR receives `hosts.map` (one line per host: address namespace hostname; the agent reads it via
# PARALLORA_NETNS_MAP, exported for COMMAND), `hostfile` (Open MPI: 2 slots per host, by address)
# and `names` (the namespaces made, for `down`). Namespace names are unique per call
# (plh<pid>-<random>-h0/h1), so parallel runs do not collide; the interfaces live only inside the
# namespaces (veth0 in each), so their names cannot collide either.
set -euo pipefail

SUBNET_PREFIX=${PARALLORA_NETNS_SUBNET:-10.77.0}
SLOTS=${PARALLORA_NETNS_SLOTS:-2}

die() { echo "netns_hosts: $*" >&2; exit 1; }

teardown() {  # DIR: delete the namespaces listed in DIR/names (deleting one end deletes the veth)
  local dir=$1 ns
  [ -f "$dir/names" ] || return 0
  while read -r ns; do
    [ -n "$ns" ] || continue
    # Processes left in a namespace (a hung orted) would keep it alive: end them first.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done < "$dir/names"
  rm -f "$dir/names"
}

setup() {  # DIR
  local dir=$1 base ns0 ns1
  mkdir -p "$dir"
  base="plh$$-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
  ns0="$base-h0"; ns1="$base-h1"
  : > "$dir/names"
  ip netns add "$ns0"; echo "$ns0" >> "$dir/names"
  ip netns add "$ns1"; echo "$ns1" >> "$dir/names"
  # Both ends are created directly inside their namespaces: no name ever exists in the root one.
  ip link add name veth0 netns "$ns0" type veth peer name veth0 netns "$ns1"
  local i=0 ns
  for ns in "$ns0" "$ns1"; do
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$SUBNET_PREFIX.$((i + 1))/24" dev veth0
    ip -n "$ns" link set veth0 up
    i=$((i + 1))
  done
  printf '%s.1 %s host0\n%s.2 %s host1\n' "$SUBNET_PREFIX" "$ns0" "$SUBNET_PREFIX" "$ns1" > "$dir/hosts.map"
  printf '%s.1 slots=%s\n%s.2 slots=%s\n' "$SUBNET_PREFIX" "$SLOTS" "$SUBNET_PREFIX" "$SLOTS" > "$dir/hostfile"
  # Wait for the carrier of both ends (a veth comes up asynchronously).
  for _ in $(seq 50); do
    if ip -n "$ns0" link show veth0 | grep -q LOWER_UP && ip -n "$ns1" link show veth0 | grep -q LOWER_UP; then
      return 0
    fi
    sleep 0.1
  done
  die "$ns0 and $ns1 veth0 did not come up in $ns0 and $ns1"
}

case "${1:-}" in
  probe)
    dir=$(mktemp -d)
    trap 'teardown "$dir"; rm -rf "$dir"' EXIT
    setup "$dir" > /dev/null 2>&1
    ;;
  up)
    [ $# -eq 2 ] || die "usage: netns_hosts.sh up DIR"
    setup "$2"
    cat "$2/names"
    ;;
  down)
    [ $# -eq 2 ] || die "usage: netns_hosts.sh down DIR"
    teardown "$2"
    ;;
  run)
    [ $# -ge 4 ] && [ "$3" = "--" ] || die "usage: netns_hosts.sh run DIR -- COMMAND..."
    dir=$2; shift 3
    trap 'teardown "$dir"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    setup "$dir"
    export PARALLORA_NETNS_MAP="$dir/hosts.map"
    ns0=$(sed -n 1p "$dir/names")
    # Not exec: the EXIT trap must run after COMMAND. In the background (stdin kept) and waited
    # for, so that a signal to this script runs the traps at once: the teardown then kills what
    # is left in the namespaces (mpirun, orted, ranks).
    set +e
    ip netns exec "$ns0" unshare --uts sh -c 'hostname host0 && exec "$@"' sh "$@" 0<&0 &
    wait $!
    rc=$?
    # What crossed the link (host0's end; the namespaces are fresh, so only this run's traffic).
    echo "veth0 tx_bytes $(ip netns exec "$ns0" cat /sys/class/net/veth0/statistics/tx_bytes)" \
      "rx_bytes $(ip netns exec "$ns0" cat /sys/class/net/veth0/statistics/rx_bytes)"
    exit $rc
    ;;
  *)
    die "usage: netns_hosts.sh run DIR -- COMMAND... | up DIR | down DIR | probe"
    ;;
esac
