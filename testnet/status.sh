#!/usr/bin/env bash
# testnet/status.sh: show the local plexi testnet started by start.sh.
#
# Prints every node recorded in $TESTNET_DIR/pids with its (supervisor) pid,
# whether that process is alive, its worker's pid (node.json), the version its
# /health reports and its API address; then the cluster as the first live
# node's API sees it (`plexi nodes` with the testnet's admin token).
# Exits 0 when every recorded node is alive, 1 otherwise (or with no testnet).
#
# Environment: TESTNET_DIR (default: <repo>/testnet/run); PLEXI_BIN (default:
# the binary start.sh used, else <repo>/target/$PROFILE/plexi, PROFILE=debug).
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=testnet/lib.sh
source "$script_dir/lib.sh"
repo=$(cd "$script_dir/.." && pwd)
TESTNET_DIR=${TESTNET_DIR:-$repo/testnet/run}
PROFILE=${PROFILE:-debug}

case "${1:-}" in
    "") ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "status.sh: takes no arguments" >&2; exit 2 ;;
esac

pids_file=$TESTNET_DIR/pids
token_file=$TESTNET_DIR/admin.token

if [[ ! -f $pids_file ]]; then
    echo "no testnet recorded in $TESTNET_DIR (no pids file); start one with testnet/start.sh"
    exit 1
fi


api_of() { # NAME: the API address from the node's node.json, or "-"
    local nj=$TESTNET_DIR/$1/node.json
    if [[ -s $nj ]]; then
        python3 -c 'import json, sys; print("http://" + json.load(open(sys.argv[1]))["api_address"])' "$nj" 2>/dev/null || echo -
    else
        echo -
    fi
}

worker_of() { # NAME: the worker pid node.json names, or "-"
    local nj=$TESTNET_DIR/$1/node.json
    if [[ -s $nj ]]; then
        python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["pid"])' "$nj" 2>/dev/null || echo -
    else
        echo -
    fi
}

version_of() { # API: the version its /health reports, or "-"
    [[ $1 != - ]] || { echo -; return; }
    curl -fsS --max-time 2 "$1/health" 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["version"])' 2>/dev/null || echo -
}

first_api=""
all_alive=true
printf '%-8s %-8s %-6s %-8s %-9s %s\n' NAME PID STATE WORKER VERSION API
while read -r name pid _; do
    [[ -n ${name:-} ]] || continue
    api=$(api_of "$name")
    worker=-
    version=-
    if is_node_pid "$pid" "$TESTNET_DIR/$name"; then
        state=alive
        worker=$(worker_of "$name")
        version=$(version_of "$api")
        if [[ -z $first_api && $api != - && $version != - ]]; then
            first_api=$api
        fi
    else
        state=dead
        all_alive=false
    fi
    printf '%-8s %-8s %-6s %-8s %-9s %s\n' "$name" "$pid" "$state" "$worker" "$version" "$api"
done <"$pids_file"
echo

if [[ -z $first_api ]]; then
    echo "no live node to ask"
    exit 1
fi

if [[ -n ${PLEXI_BIN:-} ]]; then
    bin=$PLEXI_BIN
elif [[ -s $TESTNET_DIR/bin ]]; then
    bin=$(head -n 1 "$TESTNET_DIR/bin")
else
    bin=${CARGO_TARGET_DIR:-$repo/target}/$PROFILE/plexi
fi
if [[ ! -x $bin ]]; then
    echo "status.sh: no plexi binary at $bin (set PLEXI_BIN)" >&2
    exit 1
fi
if [[ ! -r $token_file ]]; then
    echo "status.sh: no admin token at $token_file" >&2
    exit 1
fi
token=$(head -n 1 "$token_file")

echo "cluster as seen by $first_api:"
PLEXI_TOKEN=$token "$bin" nodes --api "$first_api"
if ! $all_alive; then
    exit 1
fi
