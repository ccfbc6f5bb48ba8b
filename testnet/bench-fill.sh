#!/usr/bin/env bash
# testnet/bench-fill.sh [OBJECTS]: benchmark (not a test) of a node's resident
# memory as it fills with small objects (issue 12's "after 1 M small objects").
# Starts a fresh 1-node testnet (release binary, the cluster key and the data
# key on), then `plexi bench --mode put --size BENCH_FILL_SIZE --keys OBJECTS
# --keep` with 16 workers for as long as it takes to write OBJECTS keys
# (BENCH_FILL_SECONDS, or the estimate from a 10 s probe), and reports the
# objects the node holds (plexi_storage_replicas), its disk use, and its
# resident memory (worker + supervisor, plexi_process_resident_bytes): idle
# before, the peak during the fill, right after, and BENCH_FILL_IDLE seconds
# later. One node at RF 1 holds what each node of a 3-node RF-3 cluster holds
# for the same objects, without the replica traffic.
#
# Environment:
#   PLEXI_BIN          the binary under test (default: target/release/plexi)
#   BENCH_DIR          where the testnet and reports go (default: a temp dir)
#   BENCH_FILL_SIZE    object size (default 100)
#   BENCH_FILL_SECONDS length of the fill (default: estimated from a probe)
#   BENCH_FILL_IDLE    seconds idle before the last sample (default 60)
#   BASE_P2P_PORT / BASE_API_PORT  as for start.sh (default 37000 / 38000)
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$script_dir/.." && pwd)
case "${1:-}" in
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac

objects=${1:-1000000}
bin=${PLEXI_BIN:-$repo/target/release/plexi}
BENCH_DIR=${BENCH_DIR:-$(mktemp -d /tmp/plexi-bench-fill.XXXXXX)}
size=${BENCH_FILL_SIZE:-100}
idle=${BENCH_FILL_IDLE:-60}
export BASE_P2P_PORT=${BASE_P2P_PORT:-37000} BASE_API_PORT=${BASE_API_PORT:-38000}
[[ -x $bin ]] || { echo "bench-fill.sh: no binary at $bin (cargo build --release)" >&2; exit 1; }
mkdir -p "$BENCH_DIR"
dir=$BENCH_DIR/fill
api=http://127.0.0.1:$((BASE_API_PORT + 1))

TESTNET_DIR="$dir" PLEXI_BIN="$bin" PLEXI_LOG=warn "$script_dir/start.sh" 1 \
    >"$BENCH_DIR/start.log" 2>&1 ||
    { echo "bench-fill.sh: the testnet did not start (see $BENCH_DIR/start.log)" >&2; exit 1; }
trap 'TESTNET_DIR="$dir" "$script_dir/stop.sh" --clean >/dev/null 2>&1 || true' EXIT
export PLEXI_TOKEN
PLEXI_TOKEN=$(cat "$dir/admin.token")

# metric NAME: the sum of a metric's samples in the node's /metrics.
metric() {
    curl -sf -H "Authorization: Bearer $PLEXI_TOKEN" "$api/metrics" |
        awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { printf "%.0f\n", s }'
}
rss_mib() { echo $(( $(metric plexi_process_resident_bytes) / 1048576 )); }

before=$(rss_mib)
fill() {
    "$bin" bench --api "$api" --concurrency 16 --json --mode put --size "$size" \
        --keys "$objects" --replication-factor 1 --consistency eventual --keep \
        --prefix fill --settle 0 --duration "$1"
}
seconds=${BENCH_FILL_SECONDS:-}
if [[ -z $seconds ]]; then
    rate=$(fill 10 | python3 -c 'import json,sys; print(json.load(sys.stdin)["results"][0]["ops_per_sec"])')
    seconds=$(python3 -c "import math; print(math.ceil($objects / $rate * 1.1))")
    echo "probe: $rate puts/s; filling for $seconds s" >&2
fi
fill "$seconds" >"$BENCH_DIR/fill.json"
after=$(rss_mib)
held=$(metric plexi_storage_replicas)
sleep "$idle"
later=$(rss_mib)
disk=$(du -sm "$dir" | cut -f1)
python3 - "$BENCH_DIR/fill.json" "$objects" "$size" "$before" "$after" "$later" "$idle" "$held" "$disk" <<'PY'
import json, sys
path, objects, size, before, after, later, idle, held, disk = sys.argv[1:]
report = json.load(open(path))
r = report["results"][0]
peak = max((m["peak_mib"] for m in report["memory"]), default=None)
print(f"fill: {r['ops']} puts of {size} B in {report['duration_s']:.0f} s ({r['ops_per_sec']:.0f}/s, "
      f"p50 {r['p50_ms']:.2f} ms, {r['errors']} errors); the node holds {held} objects "
      f"(target {objects}), {disk} MiB on disk")
print(f"resident MiB (worker + supervisor): idle before {before}, peak during {peak}, "
      f"right after {after}, {idle} s later {later}")
PY
