#!/usr/bin/env bash
# testnet/stop.sh [--clean]: stop the local plexi testnet started by start.sh.
#
# Only the processes recorded in $TESTNET_DIR/pids are signalled, never anything
# found by name, and a recorded pid is signalled only while it is still the
# plexi node of that data dir (a pid reused by another process is left alone).
# Each node (its supervisor) gets SIGTERM and passes it to its worker, which
# leaves the cluster gracefully; nodes still running after STOP_TIMEOUT seconds
# (default 20) get SIGKILL (the worker then dies with its supervisor). stop.sh
# also waits for the workers node.json names to be gone. The pids file is removed;
# state and logs are kept unless --clean is given, which deletes $TESTNET_DIR.
#
# Environment: TESTNET_DIR (default: <repo>/testnet/run), STOP_TIMEOUT.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=testnet/lib.sh
source "$script_dir/lib.sh"
repo=$(cd "$script_dir/.." && pwd)
TESTNET_DIR=${TESTNET_DIR:-$repo/testnet/run}
STOP_TIMEOUT=${STOP_TIMEOUT:-20}

clean=false
for arg in "$@"; do
    case $arg in
        --clean) clean=true ;;
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "stop.sh: unknown argument '$arg' (usage: stop.sh [--clean])" >&2; exit 2 ;;
    esac
done
[[ $STOP_TIMEOUT =~ ^[0-9]+$ ]] || { echo "stop.sh: STOP_TIMEOUT must be a number of seconds" >&2; exit 2; }

pids_file=$TESTNET_DIR/pids


if [[ -f $pids_file ]]; then
    names=()
    pids=()
    workers=() # "pid name" of the workers of the nodes being stopped
    while read -r name pid _; do
        [[ -n ${name:-} ]] || continue
        if is_node_pid "$pid" "$TESTNET_DIR/$name"; then
            names+=("$name")
            pids+=("$pid")
            if [[ -s $TESTNET_DIR/$name/node.json ]]; then
                w=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["pid"])' \
                    "$TESTNET_DIR/$name/node.json" 2>/dev/null || true)
                if [[ -n $w ]] && is_node_pid "$w" "$TESTNET_DIR/$name"; then
                    workers+=("$w $name")
                fi
            fi
        else
            echo "$name (pid $pid): not running"
        fi
    done <"$pids_file"

    for ((k = 0; k < ${#pids[@]}; k++)); do
        echo "stopping ${names[$k]} (pid ${pids[$k]}): SIGTERM"
        kill -TERM "${pids[$k]}" 2>/dev/null || true
    done

    # Poll until all are gone or the timeout passes (tenths of a second).
    left=${#pids[@]}
    for ((t = 0; t < STOP_TIMEOUT * 10 && left > 0; t++)); do
        sleep 0.1
        left=0
        for ((k = 0; k < ${#pids[@]}; k++)); do
            if is_node_pid "${pids[$k]}" "$TESTNET_DIR/${names[$k]}"; then
                left=$((left + 1))
            fi
        done
    done

    for ((k = 0; k < ${#pids[@]}; k++)); do
        if is_node_pid "${pids[$k]}" "$TESTNET_DIR/${names[$k]}"; then
            echo "${names[$k]} (pid ${pids[$k]}) still running after ${STOP_TIMEOUT}s: SIGKILL"
            kill -KILL "${pids[$k]}" 2>/dev/null || true
        fi
    done
    for ((k = 0; k < ${#pids[@]}; k++)); do
        for ((t = 0; t < 50; t++)); do
            is_node_pid "${pids[$k]}" "$TESTNET_DIR/${names[$k]}" || break
            sleep 0.1
        done
        if is_node_pid "${pids[$k]}" "$TESTNET_DIR/${names[$k]}"; then
            echo "stop.sh: ${names[$k]} (pid ${pids[$k]}) survived SIGKILL" >&2
            exit 1
        fi
    done
    # A worker dies with its supervisor (PR_SET_PDEATHSIG); make sure.
    for wn in "${workers[@]}"; do
        read -r w name <<<"$wn"
        for ((t = 0; t < 50; t++)); do
            is_node_pid "$w" "$TESTNET_DIR/$name" || break
            sleep 0.1
        done
        if is_node_pid "$w" "$TESTNET_DIR/$name"; then
            echo "stop.sh: $name's worker (pid $w) outlived its supervisor: SIGKILL" >&2
            kill -KILL "$w" 2>/dev/null || true
        fi
    done
    rm -f "$pids_file"
    echo "stopped ${#pids[@]} node(s)"
else
    echo "no testnet recorded in $TESTNET_DIR (no pids file)"
fi

if ! $clean; then
    if [[ -d $TESTNET_DIR ]]; then
        echo "state and logs kept in $TESTNET_DIR (stop.sh --clean deletes them)"
    fi
elif [[ ! -d $TESTNET_DIR ]]; then
    echo "nothing to remove: $TESTNET_DIR does not exist"
elif [[ -f $TESTNET_DIR/admin.token || -d $TESTNET_DIR/node1 ]] && [[ $(cd "$TESTNET_DIR" && pwd) != / ]]; then
    # Delete only what looks like a testnet directory.
    rm -rf -- "$TESTNET_DIR"
    echo "removed $TESTNET_DIR"
else
    echo "stop.sh: $TESTNET_DIR does not look like a testnet directory; not removing it" >&2
    exit 1
fi
