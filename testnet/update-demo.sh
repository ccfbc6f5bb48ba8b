#!/usr/bin/env bash
# testnet/update-demo.sh: the self-update walkthrough on a running testnet
# (start one with testnet/start.sh; 3 nodes or more).
#
#   1. builds a second version (the next patch after the running version and
#      every published release) into <repo>/target/alt:
#        PLEXI_BUILD_VERSION=X.Y.Z CARGO_TARGET_DIR=target/alt \
#        CARGO_PROFILE_DEV_DEBUG=0 cargo build --bin plexi
#      and copies it to $TESTNET_DIR/builds/plexi-X.Y.Z;
#   2. publishes it, signed with $TESTNET_DIR/release.key (plexi release publish);
#   3. starts a client (testnet/update-client.py) that writes 4 KiB objects and
#      reads them back, trying the next node whenever one fails;
#   4. plans a rolling upgrade on node2 and runs `plexi update execute ID --watch`
#      against node3;
#   5. stops the client and prints its counts (0 failures expected) and every
#      node's version (all on the new one expected);
#   6. builds the next version with PLEXI_BUILD_FAULT=exit-at-start (exits as
#      soon as it starts), publishes, plans and executes it: the first node's
#      supervisor returns it to the previous version by itself, the operation
#      ends rolled_back, every node is alive on the previous version; prints
#      `plexi nodes`, the operation and `plexi audit --limit 30`.
# Exits non-zero as soon as an expectation fails.
#
# Environment: TESTNET_DIR (default: <repo>/testnet/run); PLEXI_BIN (the client
# binary; default: the one start.sh used); DEMO_TIMEOUT (seconds to wait for an
# operation to end, default 300).
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=testnet/lib.sh
source "$script_dir/lib.sh"
repo=$(cd "$script_dir/.." && pwd)
TESTNET_DIR=${TESTNET_DIR:-$repo/testnet/run}
DEMO_TIMEOUT=${DEMO_TIMEOUT:-300}

case "${1:-}" in
    "") ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "update-demo.sh: takes no arguments (see --help)" >&2; exit 2 ;;
esac

die() {
    echo >&2
    echo "update-demo.sh: FAILED: $*" >&2
    exit 1
}
step() {
    echo
    echo "==== $(date +%H:%M:%S) $*"
}

[[ -f $TESTNET_DIR/pids ]] || die "no testnet in $TESTNET_DIR (start one with testnet/start.sh)"
TESTNET_DIR=$(cd "$TESTNET_DIR" && pwd)
token=$(head -n 1 "$TESTNET_DIR/admin.token")
key=$TESTNET_DIR/release.key
[[ -f $key ]] || die "no release key at $key: start the testnet with testnet/start.sh without TESTNET_CONFIG"
if [[ -n ${PLEXI_BIN:-} ]]; then
    bin=$PLEXI_BIN
else
    bin=$(head -n 1 "$TESTNET_DIR/bin")
fi
[[ -x $bin ]] || die "no plexi binary at $bin (set PLEXI_BIN)"
command -v cargo >/dev/null || die "cargo is required"
export PLEXI_TOKEN=$token NO_COLOR=1

# The nodes, their supervisors and APIs.
names=()
sups=()
apis=()
while read -r name pid _; do
    [[ -n ${name:-} ]] || continue
    is_node_pid "$pid" "$TESTNET_DIR/$name" || die "$name (pid $pid) is not running"
    names+=("$name")
    sups+=("$pid")
    apis+=("http://$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["api_address"])' "$TESTNET_DIR/$name/node.json")")
done <"$TESTNET_DIR/pids"
n=${#names[@]}
((n >= 3)) || die "the demo needs at least 3 nodes, the testnet has $n"

version_of() { # API: the version /health reports, or "down"
    curl -fsS --max-time 2 "$1/health" 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["version"])' 2>/dev/null || echo down
}
show_versions() {
    local i
    for ((i = 0; i < n; i++)); do
        printf '  %-8s %s\n' "${names[$i]}" "$(version_of "${apis[$i]}")"
    done
}
all_on() { # VERSION: true when every node's /health reports it
    local i
    for ((i = 0; i < n; i++)); do
        [[ $(version_of "${apis[$i]}") == "$1" ]] || return 1
    done
}
wait_all_on() { # VERSION SECONDS
    local end=$((SECONDS + $2))
    until all_on "$1"; do
        ((SECONDS < end)) || return 1
        sleep 1
    done
}
supervisors_alive() {
    local i
    for ((i = 0; i < n; i++)); do
        is_node_pid "${sups[$i]}" "$TESTNET_DIR/${names[$i]}" || die "${names[$i]}'s supervisor (pid ${sups[$i]}) died"
    done
}
op_status() { # ID API: the operation's status as API sees it
    "$bin" update status "$1" --json --api "$2" 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["status"])' 2>/dev/null || echo unknown
}
wait_final_everywhere() { # ID WANT SECONDS: every node reports the operation WANT
    local id=$1 want=$2 end=$((SECONDS + $3)) i st ok
    while :; do
        ok=true
        for ((i = 0; i < n; i++)); do
            st=$(op_status "$id" "${apis[$i]}")
            [[ $st == "$want" ]] || { ok=false; break; }
        done
        $ok && return 0
        ((SECONDS < end)) || { echo "  ${names[$i]} reports $id: $st" >&2; return 1; }
        sleep 1
    done
}

# Versions: the next patch after the running version and every published one.
running=$(version_of "${apis[0]}")
[[ $running != down ]] || die "node1 does not answer /health"
published=$("$bin" release list --json --api "${apis[0]}" |
    python3 -c 'import json, sys; print(" ".join(r["version"] for r in json.load(sys.stdin)["releases"]))') ||
    die "plexi release list failed"
next_patch() { # VERSION...: the patch after the highest
    python3 - "$@" <<'PY'
import re, sys
best = (0, 0, 0)
for v in sys.argv[1:]:
    m = re.match(r"^(\d+)\.(\d+)\.(\d+)", v)
    if m:
        best = max(best, tuple(int(x) for x in m.groups()))
print("%d.%d.%d" % (best[0], best[1], best[2] + 1))
PY
}
good=$(next_patch "$running" $published)
broken=$(next_patch "$good")

builds=$TESTNET_DIR/builds
mkdir -p "$builds" "$repo/target/alt"
build() { # VERSION FAULT -> prints the copied binary's path
    local version=$1 fault=$2 out
    out=$builds/plexi-$version${fault:+-$fault}
    echo "building plexi $version${fault:+ (PLEXI_BUILD_FAULT=$fault)} into $repo/target/alt..." >&2
    # The same lock as the process tests' build_version (tests/common/mod.rs).
    (
        cd "$repo"
        flock 9
        PLEXI_BUILD_VERSION=$version PLEXI_BUILD_FAULT=$fault CARGO_TARGET_DIR=$repo/target/alt \
            CARGO_PROFILE_DEV_DEBUG=0 cargo build --bin plexi --quiet >&2
        cp "$repo/target/alt/debug/plexi" "$out.tmp"
        mv "$out.tmp" "$out"
    ) 9>"$repo/target/alt/build.lock" || die "cargo build of $version failed"
    [[ $("$out" --version) == "plexi $version" ]] || die "$out reports $("$out" --version), not $version"
    echo "$out"
}

client_pid=""
stop_file=$TESTNET_DIR/demo-client.stop
cleanup() {
    if [[ -n $client_pid ]] && kill -0 "$client_pid" 2>/dev/null; then
        kill -TERM "$client_pid" 2>/dev/null || true
        wait "$client_pid" 2>/dev/null || true
    fi
    rm -f "$stop_file"
}
trap cleanup EXIT

step "testnet: $n nodes on $running (${names[*]}); next version $good, broken version $broken"
show_versions

# 1. The second build.
step "1. build $good"
good_bin=$(build "$good" "")
echo "  $good_bin"

# 2. Publish it.
step "2. publish $good (signed with $key)"
"$bin" release publish --binary "$good_bin" --version "$good" --key "$key" --api "${apis[0]}" ||
    die "plexi release publish $good failed"

# 3. The client.
step "3. start a client that writes 4 KiB objects and reads them back through every node in turn"
client_out=$TESTNET_DIR/demo-client.json
rm -f "$stop_file" "$client_out"
client_args=()
for api in "${apis[@]}"; do client_args+=(--api "$api"); done
python3 "$script_dir/update-client.py" "${client_args[@]}" --token "$token" --size 4096 \
    --stop-file "$stop_file" --out "$client_out" --prefix demo &
client_pid=$!
sleep 3
kill -0 "$client_pid" 2>/dev/null || die "the client exited at once"

# 4. Plan on node2, execute (and watch) through node3.
step "4. plan a rolling upgrade to $good on ${names[1]}, execute it through ${names[2]}"
plan_out=$("$bin" update plan --version "$good" --strategy rolling --api "${apis[1]}") ||
    die "plexi update plan failed: $plan_out"
echo "$plan_out"
op=$(tail -n 1 <<<"$plan_out")
echo "+ plexi update execute $op --watch --api ${apis[2]}"
"$bin" update execute "$op" --watch --api "${apis[2]}" || die "the rolling upgrade to $good did not complete"
wait_final_everywhere "$op" completed 30 || die "not every node reports $op completed"

# 5. Stop the client; check.
step "5. the client and the versions"
sleep 2
touch "$stop_file"
for ((t = 0; t < 100; t++)); do
    kill -0 "$client_pid" 2>/dev/null || break
    sleep 0.1
done
wait "$client_pid" || true
client_pid=""
[[ -s $client_out ]] || die "the client wrote no result"
python3 - "$client_out" <<'PY' || die "the client saw failures during the rolling upgrade (or barely ran)"
import json, sys
r = json.load(open(sys.argv[1]))
print("  client: %(ops)d operations (%(writes)d writes, %(reads)d reads) in %(seconds)s s, "
      "%(failures)d failed; %(retried)d needed another node (%(attempts_failed)d failed attempts); "
      "latency p50 %(p50_ms)s ms, p99 %(p99_ms)s ms, max %(max_ms)s ms" % r)
for p in r["problems"]:
    print("  " + p)
sys.exit(0 if r["failures"] == 0 and r["ops"] >= 20 else 1)
PY
wait_all_on "$good" 20 || { show_versions; die "not every node reports $good"; }
show_versions
supervisors_alive

# 6. A release that exits at once.
step "6. build, publish and roll out $broken, a build that exits as soon as it starts"
broken_bin=$(build "$broken" exit-at-start)
echo "  $broken_bin"
"$bin" release publish --binary "$broken_bin" --version "$broken" --key "$key" --api "${apis[0]}" ||
    die "plexi release publish $broken failed"
plan_out=$("$bin" update plan --version "$broken" --strategy rolling --api "${apis[0]}") ||
    die "plexi update plan failed: $plan_out"
echo "$plan_out"
op2=$(tail -n 1 <<<"$plan_out")
echo "+ plexi update execute $op2 --watch --api ${apis[1]}   (expected to end rolled_back)"
if "$bin" update execute "$op2" --watch --api "${apis[1]}"; then
    die "the broken release $broken completed"
fi
echo "  (the watch exits 1: the operation did not complete, as expected)"
wait_final_everywhere "$op2" rolled_back "$DEMO_TIMEOUT" || die "operation $op2 did not end rolled_back on every node"
wait_all_on "$good" 60 || { show_versions; die "not every node is back on $good"; }
supervisors_alive

step "every node, as ${names[0]} sees it"
curl -fsS --max-time 5 -H "Authorization: Bearer $token" -o "$TESTNET_DIR/demo-nodes.json" \
    "${apis[0]}/api/v1/clustering/nodes" || die "GET /clustering/nodes failed"
"$bin" nodes --api "${apis[0]}"
python3 - "$good" "$n" "$TESTNET_DIR/demo-nodes.json" <<'PY' || die "not every node is alive on $good"
import json, sys
want, n = sys.argv[1], int(sys.argv[2])
nodes = json.load(open(sys.argv[3]))["nodes"]
bad = [(x["node_id"], x["status"], x["version"]) for x in nodes if x["status"] != "alive" or x["version"] != want]
if bad or len(nodes) != n:
    print("  unexpected: %r (%d nodes listed)" % (bad, len(nodes)))
    sys.exit(1)
PY
echo
"$bin" update status "$op2" --api "${apis[0]}"

step "the audit log (newest first)"
"$bin" audit --limit 30 --api "${apis[0]}" || die "plexi audit failed (or its hash chains do not verify)"

step "done: $good rolled out with 0 client failures; $broken rolled back by itself; every node alive on $good"
