#!/usr/bin/env bash
# testnet/start-node.sh NAME: start one node of the running testnet again
# (e.g. `testnet/start-node.sh node3` after killing it with SIGKILL), with
# the same arguments, config, token and keys start.sh gave it, and wait
# until it serves. It rejoins through its bootstrap peers and the members
# it remembers; its dead alert resolves once the others see it alive.
# Refuses when that node is running.
#
# Environment: TESTNET_DIR (default: <repo>/testnet/run), TESTNET_TIMEOUT
# (seconds to wait for it to serve, default 60).
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=testnet/lib.sh
source "$script_dir/lib.sh"
repo=$(cd "$script_dir/.." && pwd)
TESTNET_DIR=${TESTNET_DIR:-$repo/testnet/run}
TESTNET_TIMEOUT=${TESTNET_TIMEOUT:-60}

die() {
    echo "start-node.sh: $*" >&2
    exit 1
}

case "${1:-}" in
    -h | --help | "") sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; [[ -n ${1:-} ]]; exit $? ;;
esac
name=$1
[[ $name =~ ^node[1-9][0-9]*$ ]] || die "NAME must be like node3, got '$name'"
[[ $TESTNET_TIMEOUT =~ ^[0-9]+$ ]] || die "TESTNET_TIMEOUT must be a number of seconds"
pids_file=$TESTNET_DIR/pids
[[ -f $TESTNET_DIR/$name.args ]] || die "no $TESTNET_DIR/$name.args: start the testnet with testnet/start.sh first"
[[ -f $pids_file ]] || die "no testnet is running in $TESTNET_DIR (start it with testnet/start.sh)"

while read -r n pid _; do
    if [[ $n == "$name" ]] && is_node_pid "$pid" "$TESTNET_DIR/$name"; then
        die "$name is running (pid $pid); kill it first (kill -9 $pid)"
    fi
done <"$pids_file"

rm -f "$TESTNET_DIR/$name/node.json" # written anew once the node serves
pid=$(launch_node "$name")
# The pids file names this node's new pid; the other lines stay.
grep -v "^$name " "$pids_file" >"$pids_file.tmp" || true
echo "$name $pid" >>"$pids_file.tmp"
mv "$pids_file.tmp" "$pids_file"

deadline=$((SECONDS + TESTNET_TIMEOUT))
while [[ ! -s $TESTNET_DIR/$name/node.json ]]; do
    kill -0 "$pid" 2>/dev/null || die "$name (pid $pid) exited; see $TESTNET_DIR/$name.log"
    ((SECONDS < deadline)) || die "timed out after ${TESTNET_TIMEOUT}s waiting for $name to serve; see $TESTNET_DIR/$name.log"
    sleep 0.1
done
echo "started $name (pid $pid); it serves again"
