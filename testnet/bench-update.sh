#!/usr/bin/env bash
# testnet/bench-update.sh [N...]: benchmark (not a test) of a rolling upgrade on
# loopback, for clusters of N nodes (default "3 5"), with its baseline measured
# in the same run. For each N it
#   - starts a fresh testnet with testnet/start.sh (its own TESTNET_DIR under a
#     temp dir and its own ports; generated config: rolling_update_delay_seconds
#     0, health_check_timeout_seconds BENCH_HEALTH_TIMEOUT) and publishes a
#     second build (the next patch version, built once into <repo>/target/alt
#     with PLEXI_BUILD_VERSION, CARGO_PROFILE_DEV_DEBUG=0);
#   - steady state: testnet/update-client.py for BENCH_STEADY_SECONDS (30):
#     alternating eventual 4 KiB writes and reads of the last written key, each
#     operation trying the next node when one fails (3 rounds over every node):
#     ops, failures, p50/p99 latency of whole operations (retries included);
#   - baseline "restart + health check": BENCH_RESTARTS times (default 3, nodes
#     1, 2, 3...), SIGKILL of the worker whose pid DATA_DIR/node.json names and
#     the time until the supervisor's new worker (a) answers GET /health and
#     (b) has written DATA_DIR/releases/ready.json naming its own pid (it does
#     that right after node.json, once it serves); the figure is (b) minus the
#     restart backoff the supervisor logs ("worker restart backoff",
#     delay_ms; a crash is restarted after it, a version switch is not). Also
#     reported: (c) the time until node1 lists every node alive again. Polled
#     every 50 ms. Ideal rolling upgrade = N x median of that figure;
#   - the rolling upgrade to the second build while the same client runs: the
#     total from POST .../execute to the operation's completed_at (and as polled
#     by this script), per node started_at -> completed_at and the status API's
#     phase_seconds; coordination overhead per node = node duration - (restart
#     + post_check), i.e. lease + pre_check + drain + backup + fetch + install.
#     restart + post_check is taken from the audit log (the node's node.restart
#     entry to its node.in_service entry for the operation), one record for
#     both processes the phase spans; the phases before the restart come from
#     the status API's phase_seconds;
#     client ops/failures/p50/p99 during the roll;
#   - stops the testnet (stop.sh --clean).
# Output (stdout): a markdown block ready for docs/BENCHMARKS.md (between marker lines) and the raw JSON (also
# written to BENCH_OUT, default ${TMPDIR:-/tmp}/bench-update.json).
#
# Environment:
#   PROFILE          debug (default) or release     PLEXI_BIN  skip the base build
#   BENCH_BASE_PORT  default 29000 (N's testnet: p2p BASE+200k+i, API BASE+200k+100+i)
#   BENCH_STEADY_SECONDS default 30   BENCH_RESTARTS default 3
#   BENCH_HEALTH_TIMEOUT default 60   BENCH_TIMEOUT default 600 (one operation)
#   BENCH_OUT        where the raw JSON goes        BENCH_KEEP=1 keep the temp dir
#   BENCH_WAIT_STAGED default 1: execute once the status shows every node
#                    staged (the release prefetched after the plan); 0: at once
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=testnet/lib.sh
source "$script_dir/lib.sh"
repo=$(cd "$script_dir/.." && pwd)

case "${1:-}" in
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac
sizes=("$@")
((${#sizes[@]} > 0)) || sizes=(3 5)

PROFILE=${PROFILE:-debug}
BENCH_BASE_PORT=${BENCH_BASE_PORT:-29000}
BENCH_STEADY_SECONDS=${BENCH_STEADY_SECONDS:-30}
BENCH_RESTARTS=${BENCH_RESTARTS:-3}
BENCH_HEALTH_TIMEOUT=${BENCH_HEALTH_TIMEOUT:-60}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-600}
BENCH_OUT=${BENCH_OUT:-${TMPDIR:-/tmp}/bench-update.json}
BENCH_WAIT_STAGED=${BENCH_WAIT_STAGED:-1}

die() {
    echo "bench-update.sh: $*" >&2
    exit 1
}
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

for v in BENCH_BASE_PORT BENCH_STEADY_SECONDS BENCH_RESTARTS BENCH_HEALTH_TIMEOUT BENCH_TIMEOUT BENCH_WAIT_STAGED; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer"
done
((BENCH_RESTARTS >= 1)) || die "BENCH_RESTARTS must be at least 1"
for s in "${sizes[@]}"; do
    if ! [[ $s =~ ^[0-9]+$ ]] || ((s < 3 || s > 49)); then
        die "sizes must be 3..49, got '$s'"
    fi
done
for tool in curl python3 cargo flock; do
    command -v "$tool" >/dev/null || die "$tool is required"
done

now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $((10#$t / 1000)); }

# ---- the binaries
if [[ -n ${PLEXI_BIN:-} ]]; then
    bin=$PLEXI_BIN
    [[ -x $bin ]] || die "PLEXI_BIN is not an executable: $bin"
    bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
    profile_label=PLEXI_BIN
else
    case $PROFILE in
        debug) build_args=() ;;
        release) build_args=(--release) ;;
        *) die "PROFILE must be debug or release, got '$PROFILE'" ;;
    esac
    log "building plexi ($PROFILE)..."
    (cd "$repo" && cargo build "${build_args[@]}" --bin plexi) >&2
    bin=${CARGO_TARGET_DIR:-$repo/target}/$PROFILE/plexi
    [[ -x $bin ]] || die "build produced no binary at $bin"
    profile_label=$PROFILE
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/plexi-bench-update.XXXXXX")
# The base binary is copied so that a rebuild by someone else cannot change it
# under the run.
cp "$bin" "$work/plexi-base"
bin=$work/plexi-base
base_version=$("$bin" --version | awk '{print $2}')
next_version=$(python3 -c 'import sys; a = sys.argv[1].split("-")[0].split("."); print("%s.%s.%d" % (a[0], a[1], int(a[2]) + 1))' "$base_version")
log "building the second build, plexi $next_version (target/alt, debug info off)..."
mkdir -p "$repo/target/alt"
(
    cd "$repo"
    flock 9 # the same lock as the process tests' build_version
    if [[ $profile_label == release ]]; then alt_args=(--release); else alt_args=(); fi
    PLEXI_BUILD_VERSION=$next_version PLEXI_BUILD_FAULT='' CARGO_TARGET_DIR=$repo/target/alt \
        CARGO_PROFILE_DEV_DEBUG=0 cargo build --bin plexi --quiet "${alt_args[@]}" >&2
    if [[ $profile_label == release ]]; then cp target/alt/release/plexi "$work/plexi-next"; else cp target/alt/debug/plexi "$work/plexi-next"; fi
) 9>"$repo/target/alt/build.lock" || die "the second build failed"
[[ $("$work/plexi-next" --version) == "plexi $next_version" ]] || die "the second build reports $("$work/plexi-next" --version)"

started_dirs=() # testnets to stop on exit
client_pid=""
cleanup() {
    local d
    trap - EXIT INT TERM
    if [[ -n $client_pid ]] && kill -0 "$client_pid" 2>/dev/null; then
        kill -TERM "$client_pid" 2>/dev/null || true
        wait "$client_pid" 2>/dev/null || true
    fi
    for d in "${started_dirs[@]}"; do
        [[ -f $d/pids ]] || continue
        TESTNET_DIR=$d "$script_dir/stop.sh" >/dev/null 2>&1 || echo "bench-update.sh: stop.sh failed for $d" >&2
    done
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        echo "kept $work" >&2
    else
        rm -rf -- "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

json_get() { # FILE EXPR (python on `d`)
    python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

k=0
for n in "${sizes[@]}"; do
    dir=$work/n$n
    p2p_base=$((BENCH_BASE_PORT + 200 * k))
    api_base=$((p2p_base + 100))
    k=$((k + 1))
    log "N=$n: starting a testnet in $dir"
    started_dirs+=("$dir")
    TESTNET_DIR=$dir BASE_P2P_PORT=$p2p_base BASE_API_PORT=$api_base PLEXI_BIN=$bin \
        TESTNET_ROLLING_DELAY=0 TESTNET_HEALTH_TIMEOUT=$BENCH_HEALTH_TIMEOUT TESTNET_TIMEOUT=120 \
        "$script_dir/start.sh" "$n" >"$work/start-n$n.log" 2>&1 || {
        tail -n 30 "$work/start-n$n.log" >&2
        die "N=$n: start.sh failed"
    }
    token=$(head -n 1 "$dir/admin.token")
    apis=()
    client_args=()
    for ((i = 1; i <= n; i++)); do
        apis+=("http://127.0.0.1:$((api_base + i))")
        client_args+=(--api "http://127.0.0.1:$((api_base + i))")
    done
    api1=${apis[0]}
    export PLEXI_TOKEN=$token NO_COLOR=1

    wait_all_alive() { # SECONDS: node1 lists all n alive; prints ms waited
        local t0 end listed
        t0=$(now_ms)
        end=$((SECONDS + $1))
        while :; do
            listed=$(curl -fsS --max-time 2 -H "Authorization: Bearer $token" "$api1/api/v1/clustering/nodes" 2>/dev/null |
                python3 -c 'import json, sys; ns = json.load(sys.stdin)["nodes"]; print(sum(1 for x in ns if x["status"] == "alive"))' 2>/dev/null || echo 0)
            ((listed == n)) && break
            ((SECONDS < end)) || return 1
            sleep 0.05
        done
        echo $(($(now_ms) - t0))
    }

    log "N=$n: publishing $next_version"
    "$bin" release publish --binary "$work/plexi-next" --version "$next_version" --key "$dir/release.key" \
        --api "$api1" >"$work/publish-n$n.log" 2>&1 || { cat "$work/publish-n$n.log" >&2; die "publish failed"; }

    log "N=$n: steady state, ${BENCH_STEADY_SECONDS}s of client load"
    python3 "$script_dir/update-client.py" "${client_args[@]}" --token "$token" --size 4096 \
        --duration "$BENCH_STEADY_SECONDS" --out "$work/steady-n$n.json" --prefix steady 2>"$work/steady-n$n.err" ||
        die "the steady-state client failed"

    # ---- baseline: plain supervisor restarts of a worker
    : >"$work/restarts-n$n.tsv"
    for ((r = 0; r < BENCH_RESTARTS; r++)); do
        idx=$((r % n + 1))
        nd=$dir/node$idx
        old=$(json_get "$nd/node.json" 'd["pid"]')
        is_node_pid "$old" "$nd" || die "node$idx: worker $old from node.json is not running"
        logf=$dir/node$idx.log
        log_lines=$(wc -l <"$logf")
        api=${apis[$idx - 1]}
        t0=$(now_ms)
        kill -KILL "$old"
        t_health=""
        t_ready=""
        while :; do
            now=$(now_ms)
            ((now - t0 < 60000)) || die "node$idx: no new worker ready 60 s after SIGKILL"
            if [[ -z $t_health ]] && curl -fs --max-time 0.5 -o /dev/null "$api/health" 2>/dev/null; then
                t_health=$(($(now_ms) - t0))
            fi
            if [[ -z $t_ready ]]; then
                rp=$(json_get "$nd/releases/ready.json" 'd["pid"]' 2>/dev/null || echo "")
                if [[ -n $rp && $rp != "$old" ]] && kill -0 "$rp" 2>/dev/null; then
                    t_ready=$(($(now_ms) - t0))
                fi
            fi
            [[ -n $t_health && -n $t_ready ]] && break
            sleep 0.05
        done
        alive_ms=$(wait_all_alive 60) || die "node$idx: the cluster did not list every node alive 60 s after the restart"
        t_alive=$(($(now_ms) - t0))
        backoff=$(tail -n +"$((log_lines + 1))" "$logf" | grep "worker restart backoff" | tail -n 1 |
            sed -n 's/.*delay_ms=\([0-9]*\).*/\1/p')
        backoff=${backoff:-0}
        printf '%s\t%s\t%s\t%s\t%s\n' "node$idx" "$t_health" "$t_ready" "$t_alive" "$backoff" >>"$work/restarts-n$n.tsv"
        log "N=$n: restart of node$idx's worker: /health after ${t_health} ms, ready after ${t_ready} ms (backoff ${backoff} ms), all alive after ${t_alive} ms"
        sleep 2
    done

    # ---- the rolling upgrade under load
    log "N=$n: rolling upgrade to $next_version under client load"
    rm -f "$work/roll-n$n.stop"
    python3 "$script_dir/update-client.py" "${client_args[@]}" --token "$token" --size 4096 \
        --stop-file "$work/roll-n$n.stop" --out "$work/roll-n$n.json" --prefix roll 2>"$work/roll-n$n.err" &
    client_pid=$!
    sleep 1
    plan=$(curl -fsS --max-time 10 -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -d "{\"target_version\": \"$next_version\", \"strategy\": \"rolling\"}" "$api1/api/v1/clustering/updates/plan") ||
        die "plan failed"
    op=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["operation_id"])' <<<"$plan")
    # Nodes fetch the planned release in the background; an operator
    # executes once the status shows every node staged (BENCH_WAIT_STAGED=0:
    # execute at once, and the first node fetches during its turn).
    t_plan=$(now_ms)
    staged_ms=""
    if ((BENCH_WAIT_STAGED)); then
        while :; do
            if curl -fsS --max-time 2 -H "Authorization: Bearer $token" -o "$work/plan-n$n.json" \
                "$api1/api/v1/clustering/updates/$op/status" 2>/dev/null &&
                [[ $(json_get "$work/plan-n$n.json" 'all(s.get("staged_at") for s in d["node_statuses"].values())') == True ]]; then
                staged_ms=$(($(now_ms) - t_plan))
                break
            fi
            (($(now_ms) - t_plan < BENCH_TIMEOUT * 1000)) || die "operation $op: nodes not staged after ${BENCH_TIMEOUT}s"
            sleep 0.1
        done
        log "N=$n: every node staged $next_version ${staged_ms} ms after the plan"
    fi
    printf '%s\n' "$staged_ms" >"$work/staged-n$n.ms"
    t_exec=$(now_ms)
    curl -fsS --max-time 10 -H "Authorization: Bearer $token" -X POST "$api1/api/v1/clustering/updates/$op/execute" \
        -o /dev/null || die "execute failed"
    t_final=""
    status=""
    while :; do
        for api in "${apis[@]}"; do
            if curl -fsS --max-time 2 -H "Authorization: Bearer $token" -o "$work/op-n$n.json.tmp" \
                "$api/api/v1/clustering/updates/$op/status" 2>/dev/null; then
                mv "$work/op-n$n.json.tmp" "$work/op-n$n.json"
                status=$(json_get "$work/op-n$n.json" 'd["status"]')
                break
            fi
        done
        case $status in
            completed | failed | rolled_back | cancelled) t_final=$(now_ms); break ;;
        esac
        (($(now_ms) - t_exec < BENCH_TIMEOUT * 1000)) || die "operation $op not final after ${BENCH_TIMEOUT}s"
        sleep 0.5
    done
    touch "$work/roll-n$n.stop"
    wait "$client_pid" || true
    client_pid=""
    [[ $status == completed ]] || die "N=$n: the rolling upgrade ended $status: $(json_get "$work/op-n$n.json" 'd.get("halted_reason")')"
    log "N=$n: $status after $((t_final - t_exec)) ms (as polled)"
    sleep 1 # the last node's audit entries
    curl -fsS --max-time 10 -H "Authorization: Bearer $token" -o "$work/audit-n$n.json" \
        "$api1/api/v1/clustering/audit?limit=1000" || die "GET audit failed"
    cp "$dir"/node*.log "$work/" 2>/dev/null || true
    printf '%s\n' "$t_exec" >"$work/exec-n$n.ms"
    printf '%s\n' "$t_final" >"$work/final-n$n.ms"
    TESTNET_DIR=$dir "$script_dir/stop.sh" --clean >"$work/stop-n$n.log" 2>&1 || die "N=$n: stop.sh failed"
done

# ---- report
commit=$(cd "$repo" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(cd "$repo" && git status --porcelain 2>/dev/null | grep -v '^??' || true) ]]; then commit="$commit (dirty)"; fi
cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //' || echo unknown)
python3 - "$work" "$BENCH_OUT" "$base_version" "$next_version" "$commit" "$cpu" "$(nproc)" "$profile_label" \
    "$BENCH_STEADY_SECONDS" "${sizes[@]}" <<'PY'
import json, statistics, sys
from datetime import datetime

work, out, base, nxt, commit, cpu, ncpu, profile, steady_s = sys.argv[1:10]
sizes = [int(s) for s in sys.argv[10:]]
PHASES = ["lease", "pre_check", "drain", "backup", "fetch", "install", "restart", "post_check"]

def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()

def med(v):
    return statistics.median(v) if v else None

def r1(x):
    return None if x is None else round(x, 1)

def r2(x):
    return None if x is None else round(x, 2)

raw = {"commit": commit, "cpu": cpu, "cores": int(ncpu), "profile": profile,
       "from_version": base, "to_version": nxt, "steady_seconds": int(steady_s), "runs": []}
for n in sizes:
    steady = json.load(open("%s/steady-n%d.json" % (work, n)))
    roll = json.load(open("%s/roll-n%d.json" % (work, n)))
    op = json.load(open("%s/op-n%d.json" % (work, n)))
    t_exec = int(open("%s/exec-n%d.ms" % (work, n)).read()) / 1000
    t_final = int(open("%s/final-n%d.ms" % (work, n)).read()) / 1000
    staged = open("%s/staged-n%d.ms" % (work, n)).read().strip()
    staged_s = int(staged) / 1000 if staged else None
    restarts = []
    for line in open("%s/restarts-n%d.tsv" % (work, n)):
        node, h, rd, al, bo = line.split()
        restarts.append({"node": node, "health_ms": int(h), "ready_ms": int(rd), "all_alive_ms": int(al),
                         "backoff_ms": int(bo), "restart_ms": int(rd) - int(bo)})
    restart_s = med([r["restart_ms"] for r in restarts]) / 1000
    audit = json.load(open("%s/audit-n%d.json" % (work, n)))["entries"]
    marks = {}
    for e in audit:
        if e.get("operation_id") != op["operation_id"]:
            continue
        nid = (e.get("detail") or {}).get("node_id", e.get("node_id"))
        if e["action"] in ("node.restart", "node.in_service"):
            # node.in_service names the moment it served again (its entry
            # may be appended later, after the lease release).
            at = (e.get("detail") or {}).get("in_service_at", e["at"])
            marks[(nid, e["action"])] = ts(at)
    nodes = []
    for nid in [x for b in op["batches"] for x in b]:
        s = op["node_statuses"][nid]
        dur = ts(s["completed_at"]) - ts(s["started_at"])
        ph = s.get("phase_seconds", {})
        a, b = marks.get((nid, "node.restart")), marks.get((nid, "node.in_service"))
        if a is None or b is None:
            sys.exit("no node.restart / node.in_service audit entries for %s" % nid)
        rp = b - a
        before = sum(ph.get(p, 0) for p in PHASES[:6])
        nodes.append({"node": nid, "started_at": s["started_at"], "completed_at": s["completed_at"],
                      "duration_s": r2(dur), "phase_seconds": ph,
                      "restart_post_check_s": r2(rp), "phases_before_restart_s": r2(before),
                      "overhead_s": r2(dur - rp)})
    total = ts(op["completed_at"]) - t_exec
    raw["runs"].append({
        "nodes": n, "operation_id": op["operation_id"], "status": op["status"],
        "steady_client": steady, "roll_client": roll, "restarts": restarts,
        "restart_health_check_s": r2(restart_s), "ideal_s": r2(n * restart_s),
        "total_s": r2(total), "total_polled_s": r2(t_final - t_exec),
        "plan_to_staged_s": r2(staged_s) if staged_s is not None else None,
        "op_started_at": op["started_at"], "op_completed_at": op["completed_at"],
        "sum_node_durations_s": r2(sum(x["duration_s"] for x in nodes)),
        "node_updates": nodes})

with open(out, "w") as f:
    json.dump(raw, f, indent=2)

def lat(c):
    return "%s / %s" % (r1(c["p50_ms"]), r1(c["p99_ms"]))

print("---- markdown for docs/BENCHMARKS.md ----")
print("")
print("### Rolling upgrade (%s -> %s), rolling_update_delay_seconds 0" % (base, nxt))
print("")
print("Machine: %s, %s cores; commit %s; %s build; loopback, one testnet at a time." % (cpu, ncpu, commit, profile))
print("Client: eventual 4 KiB writes alternating with reads, retrying on the next node; latency of whole operations.")
print("")
print("| N | steady: ops/s, failures, p50 / p99 ms | restart + health check (s, median of %d) | ideal N x that (s) | plan -> every node staged (s) | rolling upgrade, execute -> completed (s) | x ideal | per node (s, median) | restart + post_check (s, median) | overhead per node (s, median) | during the roll: ops, failures, p50 / p99 ms |" % len(raw["runs"][0]["restarts"]))
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in raw["runs"]:
    st, ro, ns = r["steady_client"], r["roll_client"], r["node_updates"]
    staged = "%.2f" % r["plan_to_staged_s"] if r["plan_to_staged_s"] is not None else "not waited"
    print("| %d | %.0f, %d, %s | %.2f | %.1f | %s | %.2f | %.2f | %.2f | %.2f | %.2f | %d, %d, %s |" % (
        r["nodes"], st["ops"] / max(st["seconds"], 0.001), st["failures"], lat(st),
        r["restart_health_check_s"], r["ideal_s"], staged, r["total_s"], r["total_s"] / r["ideal_s"],
        med([x["duration_s"] for x in ns]), med([x["restart_post_check_s"] for x in ns]),
        med([x["overhead_s"] for x in ns]), ro["ops"], ro["failures"], lat(ro)))
print("")
print("Per node (seconds): duration = started_at -> completed_at; phases before the restart from the status API's phase_seconds; restart + post_check from the audit log (node.restart -> node.in_service); overhead = duration - restart - post_check.")
print("")
print("| N | node | duration | " + " | ".join(PHASES[:6]) + " | sum of those | restart + post_check | overhead |")
print("|---|---|---|" + "---|" * 6 + "---|---|---|")
for r in raw["runs"]:
    for x in r["node_updates"]:
        cells = []
        for p in PHASES[:6]:
            v = x["phase_seconds"].get(p)
            cells.append("-" if v is None else "%.2f" % v)
        print("| %d | %s | %.2f | %s | %.2f | %.2f | %.2f |" % (r["nodes"], x["node"], x["duration_s"],
              " | ".join(cells), x["phases_before_restart_s"], x["restart_post_check_s"], x["overhead_s"]))
print("")
print("Gap between nodes (rolling_update_delay_seconds 0): total - sum of node durations = " +
      ", ".join("N=%d: %.2f s" % (r["nodes"], r["total_s"] - r["sum_node_durations_s"]) for r in raw["runs"]) + ".")
print("")
print("Restart baseline (ms; SIGKILL of the worker -> new worker's /health answers / its ready.json; backoff logged by the supervisor; node1 lists all alive):")
print("")
print("| N | node | /health | ready | backoff | ready - backoff | all alive |")
print("|---|---|---|---|---|---|---|")
for r in raw["runs"]:
    for x in r["restarts"]:
        print("| %d | %s | %d | %d | %d | %d | %d |" % (r["nodes"], x["node"], x["health_ms"], x["ready_ms"],
              x["backoff_ms"], x["restart_ms"], x["all_alive_ms"]))
print("")
print("---- end of markdown ----")
print("")
print("raw JSON (%s):" % out)
print(json.dumps(raw, indent=2))
PY
