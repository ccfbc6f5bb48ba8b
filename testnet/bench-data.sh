#!/usr/bin/env bash
# testnet/bench-data.sh: the data path against its same-run baselines (issue 12's
# ratios), with each node's resident memory. In one run, one after another:
#   engine    `plexi bench --engine-baseline` (bare sled, insert + flush with
#             group commit) at 4 KiB and 1 MiB puts: the cluster's put limit is
#             this rate / 3 (every byte written three times on one disk)
#   lone      a 1-node testnet at RF 1: the get baseline
#   keys      a 3-node testnet at RF 3 with the cluster key and the data key
#             (the testnet default, the production configuration)
#   no-data   the same with the cluster key only (TESTNET_NO_DATA_KEY=1)
# Every cell is `plexi bench` with 16 workers over the node(s)' APIs, eventual
# unless named strong; the keys variant also runs 1 MiB puts for
# BENCH_LONG_SECONDS (the memory bound's "60 s of 1 MiB puts"). Prints the
# figures, the ratios against the baselines and each node's resident memory
# (worker + supervisor: before, peak, after); the raw JSON reports stay in
# $BENCH_DIR.
#
# Environment:
#   PLEXI_BIN           the binary under test (default: target/release/plexi)
#   BENCH_DIR           where the testnets and reports go (default: a temp dir)
#   BENCH_SECONDS       seconds per cell (default 10)
#   BENCH_LONG_SECONDS  seconds of the long 1 MiB put cell (default 60; 0 skips it)
#   BASE_P2P_PORT / BASE_API_PORT  as for start.sh (default 37000 / 38000)
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$script_dir/.." && pwd)
case "${1:-}" in
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac

bin=${PLEXI_BIN:-$repo/target/release/plexi}
BENCH_DIR=${BENCH_DIR:-$(mktemp -d /tmp/plexi-bench-data.XXXXXX)}
BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_LONG_SECONDS=${BENCH_LONG_SECONDS:-60}
export BASE_P2P_PORT=${BASE_P2P_PORT:-37000} BASE_API_PORT=${BASE_API_PORT:-38000}
[[ -x $bin ]] || { echo "bench-data.sh: no binary at $bin (cargo build --release)" >&2; exit 1; }
mkdir -p "$BENCH_DIR"

# cell NAME ARGS...: one `plexi bench` run, its JSON report in NAME.json.
cell() {
    local name=$1
    shift
    "$bin" bench --concurrency 16 --json "$@" >"$BENCH_DIR/$name.json"
}

cell engine.put.4KiB --engine-baseline --mode put --size 4KiB --keys 1024 --duration "$BENCH_SECONDS"
cell engine.put.1MiB --engine-baseline --mode put --size 1MiB --keys 64 --duration "$BENCH_SECONDS"

# testnet NAME N [env...]: a fresh testnet of N nodes, its cells, stopped.
testnet() {
    local name=$1 n=$2
    shift 2
    local dir=$BENCH_DIR/$name apis="" i
    rm -rf "$dir"
    env "$@" TESTNET_DIR="$dir" PLEXI_BIN="$bin" PLEXI_LOG=warn "$script_dir/start.sh" "$n" \
        >"$BENCH_DIR/$name.start.log" 2>&1 ||
        { echo "bench-data.sh: $name testnet did not start (see $BENCH_DIR/$name.start.log)" >&2; exit 1; }
    for ((i = 1; i <= n; i++)); do
        apis+="${apis:+,}http://127.0.0.1:$((BASE_API_PORT + i))"
    done
    local rf=$n common
    common=(--api "$apis" --replication-factor "$rf" --duration "$BENCH_SECONDS")
    export PLEXI_TOKEN
    PLEXI_TOKEN=$(cat "$dir/admin.token")
    cell "$name.put.4KiB" "${common[@]}" --mode put --size 4KiB --keys 1024 --consistency eventual
    cell "$name.get.4KiB" "${common[@]}" --mode get --size 4KiB --keys 1024 --consistency eventual
    cell "$name.put.1MiB" "${common[@]}" --mode put --size 1MiB --keys 64 --consistency eventual
    cell "$name.get.1MiB" "${common[@]}" --mode get --size 1MiB --keys 64 --consistency eventual
    if [[ $n -gt 1 ]]; then
        cell "$name.strong.4KiB" "${common[@]}" --mode put --size 4KiB --keys 1024 --consistency strong
    fi
    if [[ $name == keys && $BENCH_LONG_SECONDS != 0 ]]; then
        cell "$name.long.1MiB" --api "$apis" --replication-factor "$rf" --duration "$BENCH_LONG_SECONDS" \
            --mode put --size 1MiB --keys 64 --consistency eventual
    fi
    TESTNET_DIR="$dir" "$script_dir/stop.sh" --clean >/dev/null 2>&1 || true
}

testnet lone 1
testnet keys 3
testnet no-data 3 TESTNET_NO_DATA_KEY=1

python3 - "$BENCH_DIR" <<'PY'
import json, os, sys
d = sys.argv[1]
def load(name):
    p = f"{d}/{name}.json"
    return json.load(open(p)) if os.path.exists(p) else None
def row(name):
    r = load(name)
    return r and r["results"][0]
def rate(name, unit):
    x = row(name)
    if x is None:
        return None
    return x["ops_per_sec"] if unit == "ops" else x["mib_per_sec"]
engine4, engine1 = rate("engine.put.4KiB", "ops"), rate("engine.put.1MiB", "mib")
lone4, lone1 = rate("lone.get.4KiB", "ops"), rate("lone.get.1MiB", "mib")
print(f"engine baseline: 4 KiB put+flush {engine4:.0f} ops/s (/3 = {engine4/3:.0f}), 1 MiB {engine1:.1f} MiB/s (/3 = {engine1/3:.1f})")
print(f"lone node (RF 1): 4 KiB get {lone4:.0f} ops/s, 1 MiB get {lone1:.1f} MiB/s")
print()
checks = [
    ("put 4 KiB eventual", "put.4KiB", "ops", engine4 / 3, "engine/3", 0.50),
    ("put 4 KiB strong", "strong.4KiB", "ops", engine4 / 3, "engine/3", 0.40),
    ("put 1 MiB", "put.1MiB", "mib", engine1 / 3, "engine/3", 0.80),
    ("get 4 KiB", "get.4KiB", "ops", lone4, "lone", 0.80),
    ("get 1 MiB", "get.1MiB", "mib", lone1, "lone", 0.80),
]
print(f"{'cell':<20}{'variant':<10}{'rate':>14}{'p50 ms':>9}{'err':>6}{'ratio':>8}  target")
for label, cell, unit, base, basename, target in checks:
    for v in ("keys", "no-data"):
        x = row(f"{v}.{cell}")
        if x is None:
            continue
        r = x["ops_per_sec"] if unit == "ops" else x["mib_per_sec"]
        u = "ops/s" if unit == "ops" else "MiB/s"
        print(f"{label:<20}{v:<10}{r:>8.1f} {u}{x['p50_ms']:>9.2f}{x['errors']:>6}{r/base:>8.2f}  >= {target} of {basename}")
print()
print("resident memory per node, MiB (worker + supervisor): before / peak / after")
for v in ("lone", "keys", "no-data"):
    for cell in ("put.4KiB", "put.1MiB", "long.1MiB"):
        r = load(f"{v}.{cell}")
        if not r or not r.get("memory"):
            continue
        mem = "  ".join(f"{m['before_mib']:.0f}/{m['peak_mib']:.0f}/{m['after_mib']:.0f}" for m in r["memory"])
        print(f"{v + ' ' + cell:<22}{mem}")
PY
echo "reports: $BENCH_DIR"
