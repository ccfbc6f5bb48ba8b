#!/usr/bin/env bash
# testnet/start.sh [N]: start a local plexi cluster of N nodes (default 3) on
# loopback, wait until every node is up and node 1 lists all of them alive, then
# print each node's API, UI and p2p address, the admin token and example commands.
#
# Nodes are named node1..nodeN; node I listens on BASE_P2P_PORT+I (libp2p) and
# BASE_API_PORT+I (REST API and UI). Regions cycle over eu-west, us-east,
# ap-south and zones alternate between <region>-a and <region>-b. Node 1 starts
# the cluster; node I>1 bootstraps from node 1 and node I-1. All nodes share one
# admin token, kept in $TESTNET_DIR/admin.token (mode 0600), and one cluster key
# (the libp2p private network: only holders can connect), created once in
# $TESTNET_DIR/cluster.key (mode 0600) and given to every node as
# PLEXI_CLUSTER_KEY, and one data key (encryption at rest of object bytes and
# update backups), created once in $TESTNET_DIR/data.key (0600) and given as
# PLEXI_DATA_KEY. Logs name keys by fingerprint; the keys are never printed.
#
# Each `plexi node` is a supervisor: it installs its binary into
# nodeI/releases/<version>/ on first start and runs the worker from
# nodeI/releases/current (the version updates switch). The pid recorded is the
# supervisor's; its worker dies with it. node.json carries the worker's pid.
#
# Self-update: unless TESTNET_CONFIG is given, every node gets
# $TESTNET_DIR/clustering.yml (written at every start) trusting the release key
# $TESTNET_DIR/release.key (created once with `plexi release keygen`; its public
# key is kept in release.pub), with demo-friendly timings.
#
# Each node also gets node.location (a city of its zone) in $TESTNET_DIR/nodeI.yml
# (clustering.yml plus that key), so the panel's map shows it. The UI address
# printed for each node is the web admin panel: open it and sign in with the
# printed admin token.
#
# Layout of $TESTNET_DIR: nodeI/ (data dir), nodeI.log (stderr/stdout, appended),
# pids ("name pid" per line, the list stop.sh and status.sh use), admin.token,
# cluster.key, data.key, bin (path of the plexi binary in use), release.key, release.pub,
# clustering.yml.
#
# Environment:
#   TESTNET_DIR     state, logs and pids (default: <repo>/testnet/run)
#   BASE_P2P_PORT   default 17000       BASE_API_PORT   default 18000
#   PROFILE         debug (default) or release: which cargo profile to build
#   PLEXI_BIN       use this binary and do not build
#   TESTNET_CONFIG  config file passed as is to every node as --config (then no
#                   clustering.yml is generated and no release key is trusted
#                   unless that file says so)
#   TESTNET_ROLLING_DELAY   rolling_update_delay_seconds of the generated config (5)
#   TESTNET_HEALTH_TIMEOUT  health_check_timeout_seconds of the generated config (30)
#   TESTNET_NO_DATA_KEY  set: no data key (object bytes stored in plaintext;
#                   for comparisons, see bench-security.sh)
#   TESTNET_TIMEOUT seconds to wait for convergence (default 60)
#   PLEXI_LOG       node log filter (default: info)
# Stop the cluster with testnet/stop.sh; inspect it with testnet/status.sh.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=testnet/lib.sh
source "$script_dir/lib.sh"
repo=$(cd "$script_dir/.." && pwd)

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
esac
if [[ $# -gt 1 ]]; then
    usage >&2
    exit 2
fi

n=${1:-3}
TESTNET_DIR=${TESTNET_DIR:-$repo/testnet/run}
BASE_P2P_PORT=${BASE_P2P_PORT:-17000}
BASE_API_PORT=${BASE_API_PORT:-18000}
PROFILE=${PROFILE:-debug}
TESTNET_TIMEOUT=${TESTNET_TIMEOUT:-60}
TESTNET_ROLLING_DELAY=${TESTNET_ROLLING_DELAY:-5}
TESTNET_HEALTH_TIMEOUT=${TESTNET_HEALTH_TIMEOUT:-30}
REGIONS=(eu-west us-east ap-south)

die() {
    echo "start.sh: $*" >&2
    exit 1
}

[[ $n =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, got '$n'"
[[ $BASE_P2P_PORT =~ ^[0-9]+$ && $BASE_API_PORT =~ ^[0-9]+$ ]] || die "ports must be numbers"
((BASE_P2P_PORT + n <= 65535 && BASE_API_PORT + n <= 65535)) || die "ports out of range"
[[ $TESTNET_TIMEOUT =~ ^[0-9]+$ ]] || die "TESTNET_TIMEOUT must be a number of seconds"
[[ $TESTNET_ROLLING_DELAY =~ ^[0-9]+$ ]] || die "TESTNET_ROLLING_DELAY must be a number of seconds"
[[ $TESTNET_HEALTH_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "TESTNET_HEALTH_TIMEOUT must be a positive number of seconds"
command -v curl >/dev/null || die "curl is required"
command -v python3 >/dev/null || die "python3 is required"
if [[ -n ${TESTNET_CONFIG:-} ]]; then
    [[ -f $TESTNET_CONFIG ]] || die "TESTNET_CONFIG: no such file: $TESTNET_CONFIG"
    TESTNET_CONFIG=$(cd "$(dirname "$TESTNET_CONFIG")" && pwd)/$(basename "$TESTNET_CONFIG")
fi

pids_file=$TESTNET_DIR/pids
token_file=$TESTNET_DIR/admin.token


# Refuse to start over a running testnet.
if [[ -f $pids_file ]]; then
    running=()
    while read -r name pid _; do
        [[ -n ${name:-} ]] || continue
        if is_node_pid "$pid" "$TESTNET_DIR/$name"; then
            running+=("$name (pid $pid)")
        fi
    done <"$pids_file"
    if ((${#running[@]} > 0)); then
        die "a testnet is already running in $TESTNET_DIR: ${running[*]}; stop it with testnet/stop.sh"
    fi
    rm -f "$pids_file" # stale: none of its processes is alive
fi

# The binary.
if [[ -n ${PLEXI_BIN:-} ]]; then
    bin=$PLEXI_BIN
    [[ -x $bin ]] || die "PLEXI_BIN is not an executable: $bin"
    bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
else
    case $PROFILE in
        debug) build_args=() ;;
        release) build_args=(--release) ;;
        *) die "PROFILE must be debug or release, got '$PROFILE'" ;;
    esac
    echo "building plexi ($PROFILE)..."
    (cd "$repo" && cargo build "${build_args[@]}")
    bin=${CARGO_TARGET_DIR:-$repo/target}/$PROFILE/plexi
    [[ -x $bin ]] || die "build produced no binary at $bin"
fi

# Ports must be free: a node that cannot bind exits, which would otherwise only
# show up as a convergence timeout.
ports=()
for ((i = 1; i <= n; i++)); do
    ports+=($((BASE_P2P_PORT + i)) $((BASE_API_PORT + i)))
done
busy=$(busy_ports "${ports[@]}")
[[ -z $busy ]] || die "ports already in use: $busy (set BASE_P2P_PORT/BASE_API_PORT)"

mkdir -p "$TESTNET_DIR"
TESTNET_DIR=$(cd "$TESTNET_DIR" && pwd)
pids_file=$TESTNET_DIR/pids
token_file=$TESTNET_DIR/admin.token

# The shared admin token: reuse a valid one from an earlier run so exported
# PLEXI_TOKEN values keep working, otherwise generate 32 random bytes as hex.
token=""
if [[ -f $token_file ]]; then
    token=$(head -n 1 "$token_file")
fi
if ! [[ $token =~ ^[0-9a-f]{64}$ ]]; then
    token=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
    [[ $token =~ ^[0-9a-f]{64}$ ]] || die "could not generate a token"
    (umask 077 && printf '%s\n' "$token" >"$token_file")
fi
chmod 600 "$token_file"
printf '%s\n' "$bin" >"$TESTNET_DIR/bin"

# The cluster key every node gets: created once, reused on later starts (the
# data dirs' nodes only talk to holders of the key they joined with).
cluster_key=$(testnet_key "$TESTNET_DIR/cluster.key") || die "could not create $TESTNET_DIR/cluster.key"
# The data key: object bytes and update backups are sealed at rest under it.
data_key=""
if [[ -z ${TESTNET_NO_DATA_KEY:-} ]]; then
    data_key=$(testnet_key "$TESTNET_DIR/data.key") || die "could not create $TESTNET_DIR/data.key"
fi

# The release signing key (created once) and the config that trusts it.
release_key=$TESTNET_DIR/release.key
release_pub=$TESTNET_DIR/release.pub
if [[ -n ${TESTNET_CONFIG:-} ]]; then
    config=$TESTNET_CONFIG
else
    if [[ ! -f $release_key ]]; then
        rm -f "$release_pub"
        pub=$("$bin" release keygen --out "$release_key" 2>/dev/null | tail -n 1) ||
            die "plexi release keygen --out $release_key failed"
        [[ $pub =~ ^[0-9a-f]{64}$ ]] || die "plexi release keygen printed no public key"
        printf '%s\n' "$pub" >"$release_pub"
    fi
    [[ -s $release_pub ]] || die "$release_key exists but $release_pub (its public key) does not; delete the key to make a new one"
    pub=$(head -n 1 "$release_pub")
    [[ $pub =~ ^[0-9a-f]{64}$ ]] || die "$release_pub does not hold a hex public key"
    config=$TESTNET_DIR/clustering.yml
    cat >"$config.tmp" <<EOF
# Generated by testnet/start.sh at every start (set TESTNET_CONFIG to use your own).
# Every node trusts releases signed with $release_key.
cluster_updates:
  release_public_keys: ["$pub"]
  rolling_update_delay_seconds: $TESTNET_ROLLING_DELAY
  health_check_timeout_seconds: $TESTNET_HEALTH_TIMEOUT
EOF
    mv "$config.tmp" "$config"
fi

region_of() { echo "${REGIONS[$((($1 - 1) % ${#REGIONS[@]}))]}"; }
zone_of() {
    local r
    r=$(region_of "$1")
    if (($1 % 2 == 1)); then echo "$r-a"; else echo "$r-b"; fi
}
# node.location of node I (a city of its region and zone), for the panel's map.
location_of() {
    case "$(zone_of "$1")" in
        eu-west-a) echo "{lat: 53.35, lon: -6.26}" ;;  # Dublin
        eu-west-b) echo "{lat: 48.86, lon: 2.35}" ;;   # Paris
        us-east-a) echo "{lat: 39.04, lon: -77.49}" ;; # Ashburn
        us-east-b) echo "{lat: 40.71, lon: -74.01}" ;; # New York
        ap-south-a) echo "{lat: 19.08, lon: 72.88}" ;; # Mumbai
        *) echo "{lat: 13.08, lon: 80.27}" ;;          # Chennai
    esac
}

tail_logs() {
    local i
    for ((i = 1; i <= n; i++)); do
        if [[ -f $TESTNET_DIR/node$i.log ]]; then
            echo "---- tail of $TESTNET_DIR/node$i.log" >&2
            tail -n 20 "$TESTNET_DIR/node$i.log" >&2
        fi
    done
}

fail() {
    echo "start.sh: $*" >&2
    tail_logs
    echo "start.sh: nodes that are still running were left running; stop them with testnet/stop.sh (TESTNET_DIR=$TESTNET_DIR)" >&2
    exit 1
}

declare -a node_pids
deadline=$((SECONDS + TESTNET_TIMEOUT))

# Fail at once when a started node has died.
check_alive() {
    local i
    for ((i = 1; i <= ${#node_pids[@]}; i++)); do
        if ! kill -0 "${node_pids[$i - 1]}" 2>/dev/null; then
            fail "node$i (pid ${node_pids[$i - 1]}) exited"
        fi
    done
}

wait_node_json() {
    local i=$1
    while [[ ! -s $TESTNET_DIR/node$i/node.json ]]; do
        check_alive
        ((SECONDS < deadline)) || fail "timed out after ${TESTNET_TIMEOUT}s waiting for $TESTNET_DIR/node$i/node.json"
        sleep 0.1
    done
}

: >>"$pids_file"
for ((i = 1; i <= n; i++)); do
    name=node$i
    dir=$TESTNET_DIR/$name
    (umask 077 && mkdir -p "$dir")
    rm -f "$dir/node.json" # written anew once the node serves
    args=(node --data-dir "$dir" --name "$name"
        --listen "/ip4/127.0.0.1/tcp/$((BASE_P2P_PORT + i))"
        --api "127.0.0.1:$((BASE_API_PORT + i))"
        --region "$(region_of "$i")" --zone "$(zone_of "$i")")
    if ((i > 1)); then
        args+=(--bootstrap "/ip4/127.0.0.1/tcp/$((BASE_P2P_PORT + 1))")
    fi
    if ((i > 2)); then
        args+=(--bootstrap "/ip4/127.0.0.1/tcp/$((BASE_P2P_PORT + i - 1))")
    fi
    node_config=$config
    if [[ -z ${TESTNET_CONFIG:-} ]]; then
        # The shared config plus this node's place on the map.
        node_config=$TESTNET_DIR/$name.yml
        { cat "$config"; printf 'node:\n  location: %s\n' "$(location_of "$i")"; } >"$node_config.tmp"
        mv "$node_config.tmp" "$node_config"
    fi
    args+=(--config "$node_config")
    printf '%s\n' "${args[@]}" >"$TESTNET_DIR/$name.args"
    pid=$(launch_node "$name")
    node_pids+=("$pid")
    echo "$name $pid" >>"$pids_file"
    echo "started $name (pid $pid)"
    # Let node 1 come up first so the others' bootstrap dials find it.
    if ((i == 1)); then
        wait_node_json 1
    fi
done

for ((i = 1; i <= n; i++)); do
    wait_node_json "$i"
done

json_field() { # FILE KEY: print one field of a node.json
    python3 -c 'import json, sys; v = json.load(open(sys.argv[1]))[sys.argv[2]]; print(v[0] if isinstance(v, list) else v)' "$1" "$2"
}

# The recorded pid must be the supervisor's: node.json names the worker, whose
# parent it is.
parent_of() { # PID: its parent's pid (empty when gone)
    awk '/^PPid:/ {print $2}' "/proc/$1/status" 2>/dev/null || true
}
worker_pids=()
for ((i = 1; i <= n; i++)); do
    worker=$(json_field "$TESTNET_DIR/node$i/node.json" pid)
    worker_pids+=("$worker")
    if [[ -r /proc/$worker/status ]]; then
        parent=$(parent_of "$worker")
        [[ $parent == "${node_pids[$i - 1]}" ]] ||
            fail "node$i: recorded pid ${node_pids[$i - 1]} but node.json's worker $worker has parent ${parent:-none}"
    fi
done

api1=http://$(json_field "$TESTNET_DIR/node1/node.json" api_address)
echo "waiting for node1 to list all $n nodes alive..."
while :; do
    check_alive
    listed=$(curl -fsS --max-time 2 -H "Authorization: Bearer $token" "$api1/api/v1/clustering/nodes" 2>/dev/null || true)
    alive=$(printf '%s' "$listed" | python3 -c '
import json, sys
n = int(sys.argv[1])
try:
    nodes = json.load(sys.stdin)["nodes"]
except Exception:
    print(0); sys.exit()
want = {"node%d" % i for i in range(1, n + 1)}
print(sum(1 for x in nodes if x.get("node_id") in want and x.get("status") == "alive"))
' "$n")
    if ((alive == n)); then
        break
    fi
    ((SECONDS < deadline)) || fail "timed out after ${TESTNET_TIMEOUT}s: node1 lists $alive of $n nodes alive"
    sleep 0.2
done

echo
echo "plexi testnet: $n nodes up in $TESTNET_DIR (binary $bin)"
printf '%-8s %-7s %-7s %-9s %-20s %-25s %-28s %s\n' NAME PID WORKER VERSION REGION/ZONE API UI P2P
for ((i = 1; i <= n; i++)); do
    nj=$TESTNET_DIR/node$i/node.json
    api=http://$(json_field "$nj" api_address)
    p2p=$(json_field "$nj" p2p_addresses)/p2p/$(json_field "$nj" peer_id)
    printf '%-8s %-7s %-7s %-9s %-20s %-25s %-28s %s\n' "node$i" "${node_pids[$i - 1]}" \
        "${worker_pids[$i - 1]}" "$(json_field "$nj" version)" \
        "$(region_of "$i")/$(zone_of "$i")" "$api" "$api/" "$p2p"
done
echo
echo "admin token: $token"
echo "  (in $token_file; paste it into any node's UI address to sign in to the panel)"
echo "cluster key: $TESTNET_DIR/cluster.key (fingerprint in each node's log: grep 'cluster key' $TESTNET_DIR/node1.log)"
if [[ -n $data_key ]]; then
    echo "data key:    $TESTNET_DIR/data.key (object bytes and backups sealed at rest; grep 'data key' $TESTNET_DIR/node1.log)"
else
    echo "data key:    none (TESTNET_NO_DATA_KEY): object bytes are stored in plaintext"
fi
echo
echo "try:"
echo "  export PLEXI_API=$api1 PLEXI_TOKEN=\$(cat $token_file)"
echo "  $bin nodes"
echo "  $bin health node$n"
echo "  curl -H \"Authorization: Bearer \$PLEXI_TOKEN\" $api1/api/v1/clustering/nodes"
echo
echo "config: $config"
if [[ -z ${TESTNET_CONFIG:-} ]]; then
    echo "release signing key: $release_key (public key $pub, trusted by every node)"
    echo "update the cluster (or run $script_dir/update-demo.sh):"
    echo "  $bin release publish --binary NEW_PLEXI --version X.Y.Z --key $release_key"
    echo "  $bin update plan --version X.Y.Z --strategy rolling   # prints the operation id last"
    echo "  $bin update execute OPERATION_ID --watch"
fi
echo "status: $script_dir/status.sh    stop: $script_dir/stop.sh [--clean]"
