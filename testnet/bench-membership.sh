#!/usr/bin/env bash
# testnet/bench-membership.sh: benchmark (not a test) of plexi cluster membership
# on loopback. Every figure comes with a baseline measured in the same run.
# It measures
#   (0) baseline: a lone node (no peers, no bootstrap), BENCH_RUNS times: the time
#       from its launch until its /health answers and its
#       /api/v1/clustering/nodes lists itself alive (process start + serve
#       time), then its VmRSS and CPU after BENCH_IDLE_SECONDS of idling;
#   (a) convergence: clusters of 3, 5, 10 and 20 nodes started as a chain (node I
#       bootstraps only from node I-1, all launched back to back); the time from
#       launching the last node (and from launching the first) until every node's
#       API lists all N nodes alive; reported raw and minus the median of (0);
#   (b) failure detection: in a 5-node cluster one node (node3, the middle of the
#       chain) is killed with SIGKILL; the time until node1 reports it suspect and
#       dead, and until every survivor reports it dead (default timings). Its
#       baselines: the configured suspect_after_ms / dead_after_ms, less 0..1
#       heartbeat interval (what an ideal timeout detector would show: status is
#       judged from the last heartbeat received), and, in the same cluster after,
#       a graceful leave: node4 gets SIGTERM and the time until node1, and every
#       remaining node, reports it `left`;
#   (c) idle footprint: VmRSS (from /proc/PID/status) of every node after
#       BENCH_IDLE_SECONDS of idling in the 5- and 20-node clusters, and the CPU
#       each node used over that idle window; baseline: the lone node of (0).
# Each measurement is repeated BENCH_RUNS times; min/median/max are reported in a
# markdown table (machine, commit, binary) ready for docs/BENCHMARKS.md, with
# baseline rows marked "Baseline:".
#
# Nodes run with no config file (built-in default timings), from a temp dir, on
# ports derived from BENCH_BASE_PORT (checked free), with a random admin token.
# Every process it starts is recorded and killed by that pid on exit.
# Polling: one `curl --parallel` round over every node's
# /api/v1/clustering/nodes, parsed by python3, then a 50 ms sleep (the report
# gives the average period, ~130 ms on 2 cores); a figure is the time at which
# the round that first saw the condition had completed.
#
# Environment:
#   PROFILE             debug (default) or release    PLEXI_BIN  skip the build
#   BENCH_BASE_PORT     default 27000                 BENCH_RUNS default 3
#   BENCH_SIZES         default "3 5 10 20"           BENCH_IDLE_SECONDS default 10
#   BENCH_TIMEOUT       seconds to wait for one condition (default 120)
#   BENCH_KEEP=1        keep the temp dir (logs) at the end
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=testnet/lib.sh
source "$script_dir/lib.sh"
repo=$(cd "$script_dir/.." && pwd)

case "${1:-}" in
    "") ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-membership.sh: takes no arguments (see --help)" >&2; exit 2 ;;
esac

PROFILE=${PROFILE:-debug}
BENCH_BASE_PORT=${BENCH_BASE_PORT:-27000}
BENCH_RUNS=${BENCH_RUNS:-3}
BENCH_SIZES=${BENCH_SIZES:-3 5 10 20}
BENCH_IDLE_SECONDS=${BENCH_IDLE_SECONDS:-10}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-120}
RSS_SIZES=" 5 20 " # cluster sizes whose idle footprint is measured
FAIL_SIZE=5        # cluster size of the failure-detection runs
FAIL_VICTIM=3      # which node is killed (SIGKILL)
FAIL_LEAVER=4      # which node then leaves gracefully (SIGTERM)
# The built-in default timings the nodes run with (src/config.rs,
# MembershipSection::default); the ideal of a timeout detector.
# Status is computed when asked, from the time since the last heartbeat
# received, so a kill is seen between (timeout - HEARTBEAT_MS) and timeout later.
HEARTBEAT_MS=1000
SUSPECT_AFTER_MS=3000
DEAD_AFTER_MS=6000
POLL_SLEEP=0.05

die() {
    echo "bench-membership.sh: $*" >&2
    exit 1
}

for v in BENCH_BASE_PORT BENCH_RUNS BENCH_IDLE_SECONDS BENCH_TIMEOUT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer"
done
((BENCH_RUNS >= 1)) || die "BENCH_RUNS must be at least 1"
for s in $BENCH_SIZES; do
    if ! [[ $s =~ ^[0-9]+$ ]] || ((s < 2 || s > 49)); then
        die "BENCH_SIZES: sizes must be 2..49, got '$s'"
    fi
done
for tool in curl python3; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
[[ -r /proc/self/status ]] || die "needs Linux /proc"
# The per-round evaluations run the interpreter itself (not a version-manager
# shim) without site-packages: ~40 ms a start instead of ~160 ms here, which
# would otherwise dominate the polling period.
py=$(python3 -c 'import sys; print(sys.executable)')
[[ -x $py ]] || die "cannot resolve the python3 interpreter"
pyeval() { "$py" -S -c "$PY_EVAL" "$@"; }

# ---- the binary
if [[ -n ${PLEXI_BIN:-} ]]; then
    bin=$PLEXI_BIN
    [[ -x $bin ]] || die "PLEXI_BIN is not an executable: $bin"
    bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
    profile_label="PLEXI_BIN"
else
    case $PROFILE in
        debug) build_args=() ;;
        release) build_args=(--release) ;;
        *) die "PROFILE must be debug or release, got '$PROFILE'" ;;
    esac
    echo "building plexi ($PROFILE)..." >&2
    (cd "$repo" && cargo build "${build_args[@]}") >&2
    bin=${CARGO_TARGET_DIR:-$repo/target}/$PROFILE/plexi
    [[ -x $bin ]] || die "build produced no binary at $bin"
    profile_label=$PROFILE
fi

# ---- bookkeeping and cleanup
work=$(mktemp -d "${TMPDIR:-/tmp}/plexi-bench.XXXXXX")
results=$work/results.tsv # kind <TAB> size <TAB> value
: >"$results"
all_pids=() # every node process this script started
token=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')

# True when PID is alive and still one of our nodes (its command line names a
# data dir under $work), so a reused pid is never signalled.
is_ours() {
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 1
    # (2>/dev/null first: the node may exit between kill -0 and the read)
    tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline" | grep -q "^$work/"
}

cleanup() {
    local pid t any
    trap - EXIT INT TERM
    for pid in "${all_pids[@]}"; do
        if is_ours "$pid"; then kill -TERM "$pid" 2>/dev/null || true; fi
    done
    for ((t = 0; t < 100; t++)); do
        any=false
        for pid in "${all_pids[@]}"; do
            if is_ours "$pid"; then any=true; fi
        done
        $any || break
        sleep 0.1
    done
    for pid in "${all_pids[@]}"; do
        if is_ours "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
    for pid in "${all_pids[@]}"; do
        wait "$pid" 2>/dev/null || true
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

NOW_MS=0
now_ms() { # sets NOW_MS (wall clock, milliseconds, no subshell)
    local t=${EPOCHREALTIME/[.,]/}
    NOW_MS=$((10#$t / 1000))
}

# ---- ports: one block of 100 per cluster, p2p at +1.., API at +51..
next_block=0
P2P_BASE=0
API_BASE=0
alloc_ports() { # N
    local n=$1 tries p base busy
    for ((tries = 0; tries < 200; tries++)); do
        base=$((BENCH_BASE_PORT + next_block * 100))
        next_block=$((next_block + 1))
        ((base + 100 <= 65535)) || break
        local ports=()
        for ((p = 1; p <= n; p++)); do ports+=($((base + p)) $((base + 50 + p))); done
        busy=$(busy_ports "${ports[@]}")
        if [[ -z $busy ]]; then
            P2P_BASE=$base
            API_BASE=$((base + 50))
            return 0
        fi
    done
    die "no free port block from $BENCH_BASE_PORT on"
}

# ---- clusters
REGIONS=(eu-west us-east ap-south)
C_DIR=""
C_PIDS=()
C_APIS=()
C_HEALTH=()
T_FIRST=0
T_LAST=0
cluster_seq=0

launch_chain() { # N: start N nodes, node I bootstrapping only from node I-1
    local n=$1 i region zone
    cluster_seq=$((cluster_seq + 1))
    C_DIR=$work/c$cluster_seq-n$n
    mkdir -p "$C_DIR"
    # One cluster key per cluster (the libp2p private network).
    cluster_key=$(testnet_key "$C_DIR/cluster.key") || die "could not create $C_DIR/cluster.key"
    alloc_ports "$n"
    C_PIDS=()
    C_APIS=()
    C_HEALTH=()
    now_ms
    T_FIRST=$NOW_MS
    for ((i = 1; i <= n; i++)); do
        region=${REGIONS[$(((i - 1) % 3))]}
        if ((i % 2)); then zone=$region-a; else zone=$region-b; fi
        local args=(node --data-dir "$C_DIR/node$i" --name "node$i"
            --listen "/ip4/127.0.0.1/tcp/$((P2P_BASE + i))"
            --api "127.0.0.1:$((API_BASE + i))" --region "$region" --zone "$zone")
        if ((i > 1)); then
            args+=(--bootstrap "/ip4/127.0.0.1/tcp/$((P2P_BASE + i - 1))")
        fi
        # The subshell execs the node, so $! is the node's own pid.
        (
            cd "$C_DIR"
            export PLEXI_ADMIN_TOKEN=$token PLEXI_CLUSTER_KEY=$cluster_key NO_COLOR=1 PLEXI_LOG=${PLEXI_LOG:-info}
            exec "$bin" "${args[@]}" >"$C_DIR/node$i.log" 2>&1 </dev/null
        ) &
        C_PIDS+=($!)
        all_pids+=($!)
        C_APIS+=("http://127.0.0.1:$((API_BASE + i))/api/v1/clustering/nodes")
        C_HEALTH+=("http://127.0.0.1:$((API_BASE + i))/health")
    done
    now_ms
    T_LAST=$NOW_MS
}

stop_cluster() {
    local pid t any
    for pid in "${C_PIDS[@]}"; do
        if is_ours "$pid"; then kill -TERM "$pid" 2>/dev/null || true; fi
    done
    for ((t = 0; t < 100; t++)); do
        any=false
        for pid in "${C_PIDS[@]}"; do
            if is_ours "$pid"; then any=true; fi
        done
        $any || break
        sleep 0.1
    done
    for pid in "${C_PIDS[@]}"; do
        if is_ours "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
        wait "$pid" 2>/dev/null || true
    done
    if [[ ${BENCH_KEEP:-0} != 1 ]]; then
        rm -rf -- "$C_DIR"
    fi
}

show_logs() {
    local f
    for f in "$C_DIR"/node*.log; do
        [[ -f $f ]] || continue
        echo "---- tail of $f" >&2
        tail -n 5 "$f" >&2
    done
}

# One polling round over the given node indexes (1-based); responses land in
# $C_DIR/poll.I (and, when POLL_HEALTH=1, /health's in $C_DIR/health.I, fetched
# in the same parallel round). Sets NOW_MS to the time the round completed.
# POLL_PREV_START=0 starts a new series (the period is averaged within series).
POLL_ROUNDS=0
POLL_MS_TOTAL=0
POLL_HEALTH=0
POLL_PREV_START=0
POLL_PERIODS=0
POLL_PERIOD_MS_TOTAL=0
poll_round() {
    local i args=() start
    now_ms
    start=$NOW_MS
    if ((POLL_PREV_START > 0)); then
        POLL_PERIODS=$((POLL_PERIODS + 1))
        POLL_PERIOD_MS_TOTAL=$((POLL_PERIOD_MS_TOTAL + start - POLL_PREV_START))
    fi
    POLL_PREV_START=$start
    for i in "$@"; do
        rm -f "$C_DIR/poll.$i" "$C_DIR/health.$i"
        args+=(-o "$C_DIR/poll.$i" "${C_APIS[$i - 1]}")
        if ((POLL_HEALTH)); then
            args+=(-o "$C_DIR/health.$i" "${C_HEALTH[$i - 1]}")
        fi
    done
    curl --parallel --parallel-immediate --parallel-max 64 -s --connect-timeout 1 --max-time 2 \
        -H "Authorization: Bearer $token" "${args[@]}" 2>/dev/null || true
    now_ms
    POLL_ROUNDS=$((POLL_ROUNDS + 1))
    POLL_MS_TOTAL=$((POLL_MS_TOTAL + NOW_MS - start))
}

# python3 evaluation of one round.
#   alive N FILE...   -> how many files list exactly N members, all alive
#   status NAME FILE... -> NAME's status in each file (none / err when unknown)
#   health - FILE...    -> how many files are a /health answer with status "ok"
PY_EVAL='
import json, sys
mode, arg, files = sys.argv[1], sys.argv[2], sys.argv[3:]
def nodes(f):
    try:
        with open(f) as fh:
            return json.load(fh)["nodes"]
    except Exception:
        return None
def healthy(f):
    try:
        with open(f) as fh:
            return json.load(fh).get("status") == "ok"
    except Exception:
        return False
if mode == "health":
    print(sum(1 for f in files if healthy(f)))
elif mode == "alive":
    n, ok = int(arg), 0
    for f in files:
        ns = nodes(f)
        if ns is not None and len(ns) == n and all(x.get("status") == "alive" for x in ns):
            ok += 1
    print(ok)
else:
    out = []
    for f in files:
        ns = nodes(f)
        if ns is None:
            out.append("err")
        else:
            out.append(next((x.get("status", "none") for x in ns if x.get("node_id") == arg), "none"))
    print(" ".join(out))
'

any_died() { # true when a node of the current cluster has exited
    local pid
    for pid in "${C_PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || return 0
    done
    return 1
}

# Wait until every node of the current cluster lists all N nodes alive (and,
# when POLL_HEALTH=1, also answers /health with status ok in the same round);
# sets CONV_MS to the time the round that saw it completed.
CONV_MS=0
wait_converged() { # N
    local n=$1 i ok hok answered f deadline idx=() files=() hfiles=()
    for ((i = 1; i <= n; i++)); do
        idx+=("$i")
        files+=("$C_DIR/poll.$i")
        hfiles+=("$C_DIR/health.$i")
    done
    now_ms
    deadline=$((NOW_MS + BENCH_TIMEOUT * 1000))
    POLL_PREV_START=0
    while :; do
        poll_round "${idx[@]}"
        # A node that did not answer (still starting) fails the round: skip
        # the evaluation, so early rounds follow each other quickly.
        ok=0
        answered=true
        for f in "${files[@]}"; do
            [[ -s $f ]] || { answered=false; break; }
        done
        if $answered; then
            ok=$(pyeval alive "$n" "${files[@]}")
        fi
        if ((POLL_HEALTH && ok == n)); then
            hok=$(pyeval health - "${hfiles[@]}")
            ((hok == n)) || ok=0
        fi
        if ((ok == n)); then
            CONV_MS=$NOW_MS
            return 0
        fi
        if any_died; then
            echo "a node exited" >&2
            return 1
        fi
        ((NOW_MS < deadline)) || { echo "timed out: $ok of $n nodes list all alive" >&2; return 1; }
        sleep "$POLL_SLEEP"
    done
}

record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$results"; }

ms() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }

clk_tck=$(getconf CLK_TCK)
cpu_ticks() { # PID: utime+stime in clock ticks
    local stat rest f
    stat=$(<"/proc/$1/stat")
    rest=${stat##*) } # fields after "(comm) "; utime and stime are fields 14, 15
    read -r -a f <<<"$rest"
    echo $((f[11] + f[12]))
}

machine_cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
machine_nproc=$(nproc)
mem_total=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
commit=$(git -C "$repo" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    commit="$commit (+ uncommitted changes)"
fi
version=$("$bin" --version 2>/dev/null || echo "plexi ?")
# With PLEXI_BIN the binary may predate HEAD: give its build time, and say so.
bin_mtime=$(stat -c %Y "$bin")
bin_built=$(date -u -d "@$bin_mtime" +%Y-%m-%dT%H:%M:%SZ)
head_time=$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)
if [[ $profile_label == PLEXI_BIN ]] && ((head_time > bin_mtime)); then
    commit="$commit (HEAD at run time; committed after the binary was built, so the binary is of an earlier commit)"
fi
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)

echo "plexi membership benchmark: $version ($profile_label), $BENCH_RUNS run(s), sizes $BENCH_SIZES, work dir $work" >&2

# Idle the current cluster for BENCH_IDLE_SECONDS, then record every node's
# VmRSS (kB, as RSS_KIND) and the CPU it used over the window (hundredths of a
# percent of one core, as CPU_KIND). Sets IDLE_RSS_LIST (MiB per node).
IDLE_RSS_LIST=()
measure_idle() { # RSS_KIND CPU_KIND SIZE
    local rss_kind=$1 cpu_kind=$2 size=$3 pid idle_start idle_ms kb t1
    local -A t0=()
    for pid in "${C_PIDS[@]}"; do t0[$pid]=$(cpu_ticks "$pid"); done
    now_ms
    idle_start=$NOW_MS
    sleep "$BENCH_IDLE_SECONDS"
    now_ms
    idle_ms=$((NOW_MS - idle_start))
    IDLE_RSS_LIST=()
    for pid in "${C_PIDS[@]}"; do
        is_ours "$pid" || die "node pid $pid is gone before its RSS was read"
        kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
        record "$rss_kind" "$size" "$kb"
        IDLE_RSS_LIST+=("$((kb / 1024))")
        t1=$(cpu_ticks "$pid")
        record "$cpu_kind" "$size" $(((t1 - t0[$pid]) * 1000 * 10000 / clk_tck / idle_ms))
    done
}

# ---- (0) baseline: a lone node, launch to /health ok + itself listed alive,
# then its idle footprint
for ((run = 1; run <= BENCH_RUNS; run++)); do
    launch_chain 1
    POLL_HEALTH=1
    if wait_converged 1; then
        POLL_HEALTH=0
        record base_start 1 $((CONV_MS - T_FIRST))
        echo "lone node run $run: /health ok and itself listed alive $(ms $((CONV_MS - T_FIRST))) s after launch" >&2
        measure_idle base_rss_kb base_idle_cpu 1
        echo "lone node run $run: idle VmRSS MiB after ${BENCH_IDLE_SECONDS}s: ${IDLE_RSS_LIST[*]}" >&2
    else
        POLL_HEALTH=0
        record base_timeout 1 1
        echo "lone node run $run: did not come up" >&2
        show_logs
    fi
    stop_cluster
done

# ---- (a) convergence, and (c) idle footprint for RSS_SIZES
for n in $BENCH_SIZES; do
    for ((run = 1; run <= BENCH_RUNS; run++)); do
        launch_chain "$n"
        if wait_converged "$n"; then
            record conv_last "$n" $((CONV_MS - T_LAST))
            record conv_first "$n" $((CONV_MS - T_FIRST))
            echo "n=$n run $run: all alive everywhere $(ms $((CONV_MS - T_LAST))) s after the last launch, $(ms $((CONV_MS - T_FIRST))) s after the first" >&2
            if [[ $RSS_SIZES == *" $n "* ]]; then
                measure_idle rss_kb idle_cpu "$n"
                echo "n=$n run $run: idle VmRSS MiB after ${BENCH_IDLE_SECONDS}s: ${IDLE_RSS_LIST[*]}" >&2
            fi
        else
            record conv_timeout "$n" 1
            echo "n=$n run $run: did not converge" >&2
            show_logs
        fi
        stop_cluster
    done
done

# ---- (b) failure detection
for ((run = 1; run <= BENCH_RUNS; run++)); do
    n=$FAIL_SIZE
    launch_chain "$n"
    if ! wait_converged "$n"; then
        record fail_timeout "$n" 1
        echo "failure run $run: cluster did not converge" >&2
        show_logs
        stop_cluster
        continue
    fi
    sleep 2 # steady state
    survivors=()
    files=()
    for ((i = 1; i <= n; i++)); do
        if ((i != FAIL_VICTIM)); then
            survivors+=("$i")
            files+=("$C_DIR/poll.$i")
        fi
    done
    victim_pid=${C_PIDS[$FAIL_VICTIM - 1]}
    is_ours "$victim_pid" || die "victim pid $victim_pid is not a node"
    POLL_PREV_START=0
    kill -KILL "$victim_pid"
    { wait "$victim_pid"; } 2>/dev/null || true # reap it quietly (no "Killed" notice)
    now_ms
    t_kill=$NOW_MS
    deadline=$((t_kill + BENCH_TIMEOUT * 1000))
    t_suspect=""
    t_dead1=""
    t_dead_all=""
    while :; do
        poll_round "${survivors[@]}"
        read -r -a st <<<"$(pyeval status "node$FAIL_VICTIM" "${files[@]}")"
        # st[0] is node1's view (node1 always survives: FAIL_VICTIM > 1)
        if [[ -z $t_suspect && (${st[0]} == suspect || ${st[0]} == dead) ]]; then t_suspect=$NOW_MS; fi
        if [[ -z $t_dead1 && ${st[0]} == dead ]]; then t_dead1=$NOW_MS; fi
        all_dead=true
        for s in "${st[@]}"; do
            [[ $s == dead ]] || all_dead=false
        done
        if $all_dead; then
            t_dead_all=$NOW_MS
            break
        fi
        ((NOW_MS < deadline)) || break
        sleep "$POLL_SLEEP"
    done
    if [[ -n $t_dead_all ]]; then
        t_suspect=${t_suspect:-$t_dead1}
        record fail_suspect1 "$n" $((t_suspect - t_kill))
        record fail_dead1 "$n" $((t_dead1 - t_kill))
        record fail_dead_all "$n" $((t_dead_all - t_kill))
        echo "failure run $run: node$FAIL_VICTIM SIGKILLed; node1 saw it suspect after $(ms $((t_suspect - t_kill))) s, dead after $(ms $((t_dead1 - t_kill))) s; all survivors saw it dead after $(ms $((t_dead_all - t_kill))) s" >&2
    else
        record fail_timeout "$n" 1
        echo "failure run $run: survivors did not all report node$FAIL_VICTIM dead within ${BENCH_TIMEOUT}s (last: ${st[*]})" >&2
        show_logs
    fi
    # Baseline in the same cluster: a graceful leave. node$FAIL_LEAVER gets
    # SIGTERM; poll the remaining nodes until node1, then all, report it `left`.
    stayers=()
    files=()
    for ((i = 1; i <= n; i++)); do
        if ((i != FAIL_VICTIM && i != FAIL_LEAVER)); then
            stayers+=("$i")
            files+=("$C_DIR/poll.$i")
        fi
    done
    leaver_pid=${C_PIDS[$FAIL_LEAVER - 1]}
    is_ours "$leaver_pid" || die "leaver pid $leaver_pid is not a node"
    now_ms
    t_term=$NOW_MS
    POLL_PREV_START=0
    kill -TERM "$leaver_pid"
    deadline=$((t_term + BENCH_TIMEOUT * 1000))
    t_left1=""
    t_left_all=""
    t_exit=""
    while :; do
        poll_round "${stayers[@]}"
        if [[ -z $t_exit ]]; then # exited (gone, or a zombie not yet reaped)
            pstate=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$leaver_pid/status" 2>/dev/null || true)
            if [[ -z $pstate || $pstate == Z ]]; then t_exit=$NOW_MS; fi
        fi
        read -r -a st <<<"$(pyeval status "node$FAIL_LEAVER" "${files[@]}")"
        if [[ -z $t_left1 && ${st[0]} == left ]]; then t_left1=$NOW_MS; fi
        all_left=true
        for s in "${st[@]}"; do
            [[ $s == left ]] || all_left=false
        done
        if $all_left; then
            t_left_all=$NOW_MS
            break
        fi
        ((NOW_MS < deadline)) || break
        sleep "$POLL_SLEEP"
    done
    if [[ -n $t_exit ]]; then
        exit_note="the process had exited $(ms $((t_exit - t_term))) s after SIGTERM"
    else
        exit_note="the process had not exited yet"
    fi
    if [[ -n $t_left_all ]]; then
        record leave_left1 "$n" $((t_left1 - t_term))
        record leave_left_all "$n" $((t_left_all - t_term))
        echo "failure run $run: node$FAIL_LEAVER SIGTERMed; node1 saw it left after $(ms $((t_left1 - t_term))) s, all remaining nodes after $(ms $((t_left_all - t_term))) s; $exit_note" >&2
    else
        record leave_timeout "$n" 1
        echo "failure run $run: remaining nodes did not all report node$FAIL_LEAVER left within ${BENCH_TIMEOUT}s (last: ${st[*]})" >&2
        show_logs
    fi
    stop_cluster
done

load_end=$(cut -d' ' -f1-3 /proc/loadavg)
poll_avg=$((POLL_ROUNDS > 0 ? POLL_MS_TOTAL / POLL_ROUNDS : 0))
poll_period=$((POLL_PERIODS > 0 ? POLL_PERIOD_MS_TOTAL / POLL_PERIODS : 0))

# ---- the report
python3 - "$results" <<PY
import statistics, sys
from collections import defaultdict

rows = defaultdict(list)
timeouts = defaultdict(int)
for line in open(sys.argv[1]):
    kind, size, value = line.rstrip("\n").split("\t")
    if kind.endswith("_timeout"):
        timeouts[(kind, int(size))] += 1
    else:
        rows[(kind, int(size))].append(int(value))

sizes = [int(s) for s in "$BENCH_SIZES".split()]
rss_sizes = [s for s in sizes if " %d " % s in "$RSS_SIZES"]
fail_size = $FAIL_SIZE
B = "**Baseline:** "

def fmt(kind, v):
    if kind.endswith("rss_kb"):
        return "%.1f" % (v / 1024)
    if kind.endswith("idle_cpu"):
        return "%.2f" % (v / 100)
    return "%.2f" % (v / 1000)

def runs(k):
    return "%d runs" % k

def nodes(k):
    return "%d nodes" % k

def row(label, kind, size, samples_note, timeout_kind=None, minus=None):
    """minus: a (kind, size) whose median is subtracted from every sample."""
    vals = rows.get((kind, size), [])
    failed = timeouts.get((timeout_kind, size), 0) if timeout_kind else 0
    note = samples_note(len(vals))
    if failed:
        note += ", %d run(s) failed" % failed
    if minus is not None:
        base = rows.get(minus, [])
        vals = [v - statistics.median(base) for v in vals] if base else []
    if not vals:
        print("| %s | %d | %s | - | - | - |" % (label, size, note))
        return
    print("| %s | %d | %s | %s | %s | %s |" % (label, size, note,
          fmt(kind, min(vals)), fmt(kind, statistics.median(vals)), fmt(kind, max(vals))))

def config_row(label, size, timeout_ms):
    # An ideal timeout detector fed a heartbeat every HEARTBEAT_MS, evaluated when
    # asked: it sees a kill between timeout - HEARTBEAT_MS and timeout later.
    print("| %s | %d | configured | %.2f | - | %.2f |" % (label, size,
          (timeout_ms - $HEARTBEAT_MS) / 1000, timeout_ms / 1000))

print()
print("### Membership on loopback (testnet/bench-membership.sh)")
print()
print("- Machine: $machine_nproc CPUs, $machine_cpu, $mem_total RAM; load average $load_start at start, $load_end at end")
print("- Commit: $commit; binary: $version, $profile_label build, built $bin_built")
print("- Date: $started_at; timings: defaults (heartbeat $HEARTBEAT_MS ms, exchange 1000 ms, suspect $SUSPECT_AFTER_MS ms, dead $DEAD_AFTER_MS ms)")
print("- Chain start: node I bootstraps only from node I-1, all launched back to back; a polling round (curl over every node's API, then python3) every $poll_period ms on average (curl's share $poll_avg ms, then evaluation and a 50 ms sleep), so figures are upper bounds within about one period")
print("- Rows marked Baseline were measured in the same run (or are the configured timeout): a lone node with no peers for start-up and idle footprint, a graceful SIGTERM leave in the same 5-node cluster for failure detection; \"minus baseline\" rows subtract the lone node's median start-up time from every sample")
print()
print("| Measurement | Nodes | Samples | Min | Median | Max |")
print("|---|---:|---|---:|---:|---:|")
base = ("base_start", 1)
row(B + "lone node, launch to /health ok and itself listed alive (s)", "base_start", 1, runs, "base_timeout")
for s in sizes:
    row("Convergence after last launch (s)", "conv_last", s, runs, "conv_timeout")
for s in sizes:
    row("Convergence after last launch, minus baseline (s)", "conv_last", s, runs, "conv_timeout", base)
for s in sizes:
    row("Convergence after first launch (s)", "conv_first", s, runs, "conv_timeout")
for s in sizes:
    row("Convergence after first launch, minus baseline (s)", "conv_first", s, runs, "conv_timeout", base)
config_row(B + "configured suspect_after_ms = %.2f s, less 0..1 heartbeat interval (s)" % ($SUSPECT_AFTER_MS / 1000), fail_size, $SUSPECT_AFTER_MS)
row("SIGKILL to suspect, seen by node1 (s)", "fail_suspect1", fail_size, runs, "fail_timeout")
config_row(B + "configured dead_after_ms = %.2f s, less 0..1 heartbeat interval: ideal timeout detector (s)" % ($DEAD_AFTER_MS / 1000), fail_size, $DEAD_AFTER_MS)
row("SIGKILL to dead, seen by node1 (s)", "fail_dead1", fail_size, runs, "fail_timeout")
row("SIGKILL to dead, seen by all survivors (s)", "fail_dead_all", fail_size, runs, "fail_timeout")
row(B + "SIGTERM to left (graceful leave, same cluster), seen by node1 (s)", "leave_left1", fail_size, runs, "leave_timeout")
row(B + "SIGTERM to left, seen by all remaining nodes (s)", "leave_left_all", fail_size, runs, "leave_timeout")
row(B + "idle VmRSS of a lone node after ${BENCH_IDLE_SECONDS} s (MiB)", "base_rss_kb", 1, nodes)
for s in rss_sizes:
    row("Idle VmRSS per node after ${BENCH_IDLE_SECONDS} s (MiB)", "rss_kb", s, nodes)
row(B + "idle CPU of a lone node over ${BENCH_IDLE_SECONDS} s (% of one core)", "base_idle_cpu", 1, nodes)
for s in rss_sizes:
    row("Idle CPU per node over ${BENCH_IDLE_SECONDS} s (% of one core)", "idle_cpu", s, nodes)
PY
