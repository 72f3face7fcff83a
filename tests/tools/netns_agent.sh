#!/bin/sh
# Open MPI launch agent for the network-namespace "hosts" of tests/tools/netns_hosts.sh, in place
# of ssh: `mpirun --mca plm_rsh_agent /path/netns_agent.sh` runs `netns_agent.sh HOST COMMAND...`
# to start its orted on HOST. HOST (an address or a hostname) is looked up in the map file named by
# PARALLORA_NETNS_MAP (lines `address namespace hostname`); COMMAND then runs inside that namespace
# with the host's own hostname (private UTS namespace), through `sh -c` on the words joined by
# spaces, as ssh's remote shell would (Open MPI quotes the orted arguments for that shell).
set -eu
while [ $# -gt 0 ]; do  # options an rsh agent may be given before the host
  case "$1" in -*) shift ;; *) break ;; esac
done
[ $# -ge 2 ] || { echo "netns_agent: usage: netns_agent.sh HOST COMMAND..." >&2; exit 255; }
host=$1; shift
map=${PARALLORA_NETNS_MAP:?netns_agent: PARALLORA_NETNS_MAP is not set (made by netns_hosts.sh run)}
line=$(awk -v h="$host" '$1 == h || $3 == h { print; exit }' "$map")
[ -n "$line" ] || { echo "netns_agent: host $host is not in $map" >&2; exit 255; }
set -- "$(echo "$line" | awk '{print $2}')" "$(echo "$line" | awk '{print $3}')" "$*"
exec ip netns exec "$1" unshare --uts sh -c 'hostname "$1" && exec sh -c "$2"' sh "$2" "$3"
