#!/usr/bin/env python3
"""testnet/update-client.py: the client that runs while a testnet updates.

Used by update-demo.sh and bench-update.sh (stdlib only). It alternates a
write (PUT, ?consistency=eventual, SIZE random bytes under a fresh key) and a
read (GET of the last acknowledged key, bytes compared). Every operation tries
the nodes in turn, starting at a different node each time: an attempt that
fails (connection refused, timeout, non-2xx such as 503 while a node drains,
or wrong bytes) moves on to the next node; after a round over every node it
sleeps 200 ms x round and starts again, up to ROUNDS rounds. An operation is a
failure only when every attempt of every round failed. Then it sleeps PAUSE.

It stops after --duration seconds, or when --stop-file exists, or on
SIGTERM/SIGINT; it then writes one JSON object to --out (or stdout):
ops, failures, writes, reads, retried (operations that needed more than one
attempt), attempts_failed, latency percentiles of whole operations in ms
(p50, p99, max; retries and pauses between rounds included, PAUSE not), the
wall-clock start/end (epoch seconds) and up to 20 failure descriptions.
"""
import argparse
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request

stop = False


def on_signal(_sig, _frame):
    global stop
    stop = True


def request(method, url, token, body=None, timeout=5.0):
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", "Bearer " + token)
    if body is not None:
        req.add_header("Content-Type", "application/octet-stream")
    with urllib.request.urlopen(req, timeout=timeout) as res:
        return res.status, res.read()


def percentile(sorted_ms, p):
    if not sorted_ms:
        return None
    return round(sorted_ms[int((len(sorted_ms) - 1) * p)], 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", action="append", required=True, help="base URL of a node (repeat)")
    ap.add_argument("--token", required=True)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--duration", type=float, default=0, help="seconds; 0 = until stopped")
    ap.add_argument("--stop-file")
    ap.add_argument("--out")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pause", type=float, default=0.02)
    ap.add_argument("--prefix", default="client")
    ap.add_argument("--verbose", action="store_true", help="log each failed attempt to stderr")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    apis = [u.rstrip("/") for u in a.api]
    base = "/api/v1/clustering/storage/data/"
    run = "%s-%d-%d" % (a.prefix, os.getpid(), int(time.time()))
    started = time.time()
    ops = failures = writes = reads = retried = attempts_failed = 0
    lat = []
    problems = []
    last = None  # (key, bytes) of the last acknowledged write
    i = 0
    while not stop:
        if a.duration and time.time() - started >= a.duration:
            break
        if a.stop_file and os.path.exists(a.stop_file):
            break
        i += 1
        write = i % 2 == 1 or last is None
        if write:
            key = "%s-%d" % (run, i)
            body = os.urandom(a.size)
        t0 = time.monotonic()
        ok = False
        attempts = 0
        errors = []
        for rnd in range(a.rounds):
            for k in range(len(apis)):
                api = apis[(i + k) % len(apis)]
                attempts += 1
                try:
                    if write:
                        st, _ = request("PUT", api + base + key + "?consistency=eventual", a.token, body)
                        ok = 200 <= st < 300
                    else:
                        st, got = request("GET", api + base + last[0], a.token)
                        ok = 200 <= st < 300 and got == last[1]
                        if not ok:
                            errors.append("%s: wrong bytes for %s" % (api, last[0]))
                except urllib.error.HTTPError as e:
                    errors.append("%s: HTTP %d %s" % (api, e.code, e.read()[:120].decode("utf-8", "replace")))
                except Exception as e:  # refused, reset, timeout
                    errors.append("%s: %s" % (api, e))
                if ok:
                    break
                attempts_failed += 1
                if a.verbose:
                    print("attempt failed: " + errors[-1], file=sys.stderr)
            if ok:
                break
            time.sleep(0.2 * (rnd + 1))
        lat.append((time.monotonic() - t0) * 1000.0)
        ops += 1
        if write:
            writes += 1
        else:
            reads += 1
        if attempts > 1:
            retried += 1
        if ok:
            if write:
                last = (key, body)
        else:
            failures += 1
            what = "write %s" % key if write else "read %s" % last[0]
            msg = "%s failed on every node: %s" % (what, "; ".join(errors[-len(apis):]))
            print("client: " + msg, file=sys.stderr)
            if len(problems) < 20:
                problems.append(msg)
        time.sleep(a.pause)

    lat.sort()
    result = {
        "ops": ops,
        "failures": failures,
        "writes": writes,
        "reads": reads,
        "retried": retried,
        "attempts_failed": attempts_failed,
        "size_bytes": a.size,
        "p50_ms": percentile(lat, 0.50),
        "p99_ms": percentile(lat, 0.99),
        "max_ms": round(lat[-1], 1) if lat else None,
        "started_at": round(started, 3),
        "ended_at": round(time.time(), 3),
        "seconds": round(time.time() - started, 2),
        "problems": problems,
    }
    text = json.dumps(result)
    if a.out:
        with open(a.out + ".tmp", "w") as f:
            f.write(text + "\n")
        os.replace(a.out + ".tmp", a.out)
    else:
        print(text)


if __name__ == "__main__":
    main()
