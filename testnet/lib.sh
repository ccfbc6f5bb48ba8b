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
