# shellcheck shell=bash
# testnet/lib.sh: helpers shared by the testnet scripts (sourced, not run).

# True when PID is alive and is the plexi node using data dir DIR (guards
# against a recorded pid having been reused by an unrelated process).
is_node_pid() {
    local pid=$1 dir=$2
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    [[ -r /proc/$pid/cmdline ]] || return 0
    tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qxF -- "$dir"
}

# Prints, space-separated, those of the given loopback TCP ports that are
# already taken (nothing when all are free).
busy_ports() {
    python3 - "$@" <<'PY'
import socket, sys
busy = []
for p in sys.argv[1:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", int(p)))
    except OSError:
        busy.append(p)
    finally:
        s.close()
print(" ".join(busy))
PY
}

# Prints the key (64 hex) kept in FILE, creating it (32 random bytes, mode
# 0600) when it is missing or not a key. A testnet keeps its cluster key
# (PLEXI_CLUSTER_KEY: who may join) and its data key (PLEXI_DATA_KEY:
# encryption at rest) this way.
testnet_key() {
    local file=$1 key=""
    if [[ -f $file ]]; then
        key=$(head -n 1 "$file")
    fi
    if ! [[ $key =~ ^[0-9a-f]{64}$ ]]; then
        key=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
        [[ $key =~ ^[0-9a-f]{64}$ ]] || return 1
        (umask 077 && printf '%s\n' "$key" >"$file")
    fi
    chmod 600 "$file"
    printf '%s\n' "$key"
}

# Launches node NAME of the testnet in TESTNET_DIR in the background, with
# the arguments listed one per line in TESTNET_DIR/NAME.args (written by
# start.sh), the binary named in TESTNET_DIR/bin and the testnet's token and
# keys; logs to TESTNET_DIR/NAME.log. Prints the node's pid (its
# supervisor's). setsid + nohup: the node gets its own session and survives
# the script and its terminal. In a non-interactive shell the background
# child is not a process-group leader, so setsid and nohup exec in place and
# $! is the node's own pid. Nodes run from TESTNET_DIR so that a
# config/clustering.yml in the caller's directory is not picked up.
launch_node() {
    local name=$1 dir=$TESTNET_DIR bin token cluster_key data_key=""
    local -a args
    bin=$(head -n 1 "$dir/bin")
    token=$(head -n 1 "$dir/admin.token")
    cluster_key=$(head -n 1 "$dir/cluster.key")
    if [[ -z ${TESTNET_NO_DATA_KEY:-} && -f $dir/data.key ]]; then
        data_key=$(head -n 1 "$dir/data.key")
    fi
    mapfile -t args <"$dir/$name.args"
    echo "==== $(date -u +%Y-%m-%dT%H:%M:%SZ) testnet: $bin ${args[*]}" >>"$dir/$name.log"
    (
        cd "$dir"
        export PLEXI_ADMIN_TOKEN=$token PLEXI_CLUSTER_KEY=$cluster_key PLEXI_DATA_KEY=$data_key NO_COLOR=1 PLEXI_LOG=${PLEXI_LOG:-info}
        exec setsid nohup "$bin" "${args[@]}" >>"$dir/$name.log" 2>&1 </dev/null
    ) &
    echo "$!"
}
