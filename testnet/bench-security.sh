#!/usr/bin/env bash
# testnet/bench-security.sh: what the cluster key and the data key cost. In one
# run, starts 3-node testnets (RF 3, loopback) one after another and measures
# 4 KiB and 1 MiB eventual puts and gets with `plexi bench` (16 workers):
#   keys      cluster key (pnet) and data key (encryption at rest): the testnet default
#   no-data   cluster key only (TESTNET_NO_DATA_KEY=1)
#   baseline  PLEXI_BIN_BASELINE, a build from before the cluster key and the
#             data key (e.g. commit d3f1ac7), when it is given
# Prints one table (ops/s, MiB/s, p50 ms per cell) and writes the raw JSON
# reports to $BENCH_DIR.
#
# Environment:
#   PLEXI_BIN           the binary under test (default: target/release/plexi)
#   PLEXI_BIN_BASELINE  the pre-security binary (optional)
#   BENCH_DIR           where the testnets and reports go (default: a temp dir)
#   BENCH_SECONDS       seconds per cell (default 10)
#   BASE_P2P_PORT / BASE_API_PORT  as for start.sh (default 37000 / 38000)
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$script_dir/.." && pwd)
case "${1:-}" in
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac

bin=${PLEXI_BIN:-$repo/target/release/plexi}
baseline=${PLEXI_BIN_BASELINE:-}
BENCH_DIR=${BENCH_DIR:-$(mktemp -d /tmp/plexi-bench-security.XXXXXX)}
BENCH_SECONDS=${BENCH_SECONDS:-10}
export BASE_P2P_PORT=${BASE_P2P_PORT:-37000} BASE_API_PORT=${BASE_API_PORT:-38000}
[[ -x $bin ]] || { echo "bench-security.sh: no binary at $bin (cargo build --release)" >&2; exit 1; }
[[ -z $baseline || -x $baseline ]] || { echo "bench-security.sh: no binary at $baseline" >&2; exit 1; }
mkdir -p "$BENCH_DIR"

apis=""
for i in 1 2 3; do
    apis+="${apis:+,}http://127.0.0.1:$((BASE_API_PORT + i))"
done

# run_variant NAME BIN [env...]: a fresh testnet, the four cells, stopped.
run_variant() {
    local name=$1 b=$2
    shift 2
    local dir=$BENCH_DIR/$name
    rm -rf "$dir"
    env "$@" TESTNET_DIR="$dir" PLEXI_BIN="$b" PLEXI_LOG=warn "$script_dir/start.sh" 3 >"$BENCH_DIR/$name.start.log" 2>&1 ||
        { echo "bench-security.sh: $name testnet did not start (see $BENCH_DIR/$name.start.log)" >&2; exit 1; }
    local token
    token=$(cat "$dir/admin.token")
    for size in 4KiB 1MiB; do
        for mode in put get; do
            local keys=1024
            [[ $size == 1MiB ]] && keys=64
            PLEXI_TOKEN=$token "$bin" bench --api "$apis" --mode $mode --size $size --keys $keys \
                --concurrency 16 --duration "$BENCH_SECONDS" --consistency eventual \
                --replication-factor 3 --json >"$BENCH_DIR/$name.$mode.$size.json"
        done
    done
    TESTNET_DIR="$dir" "$script_dir/stop.sh" --clean >/dev/null 2>&1 || true
}

variants=(keys no-data)
run_variant keys "$bin"
run_variant no-data "$bin" TESTNET_NO_DATA_KEY=1
if [[ -n $baseline ]]; then
    run_variant baseline "$baseline" TESTNET_NO_DATA_KEY=1
    variants+=(baseline)
fi

python3 - "$BENCH_DIR" "${variants[@]}" <<'PY'
import json, sys
d, variants = sys.argv[1], sys.argv[2:]
print(f"{'cell':<14}" + "".join(f"{v:>36}" for v in variants))
for size in ("4KiB", "1MiB"):
    for mode in ("put", "get"):
        cells = []
        for v in variants:
            r = json.load(open(f"{d}/{v}.{mode}.{size}.json"))
            row = next(x for x in r["results"] if x["op"] == mode)
            unit = f"{row['ops_per_sec']:.0f} ops/s" if size == "4KiB" else f"{row['mib_per_sec']:.1f} MiB/s"
            cells.append(f"{unit}, p50 {row['p50_ms']:.1f} ms, err {row['errors']}")
        print(f"{mode + ' ' + size:<14}" + "".join(f"{c:>36}" for c in cells))
PY
echo "reports: $BENCH_DIR"
