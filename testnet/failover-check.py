#!/usr/bin/env python3
"""The storage "done means" run, scripted against a running testnet.

Writes N objects (default 150) at mixed consistency through different nodes,
reads every one back byte-exact through other nodes, SIGKILLs one node that
holds replicas (by its recorded pid), reads everything again through the
survivors, then measures how long until every object is back at its
replication factor in live replicas (the configured rereplication delay plus
the repair itself).

Usage (after ./testnet/start.sh 5, optionally with a config that shortens
rereplication_delay_seconds, see docs/BENCHMARKS.md):
    python3 testnet/failover-check.py [--objects 150] [--dir testnet/run]
Only standard library; talks to 127.0.0.1 only; stops by itself.
"""

import argparse
import json
import os
import random
import signal
import sys
import time
import urllib.error
import urllib.request


def call(method, url, token, body=None, timeout=30):
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=150)
    ap.add_argument("--dir", default=os.path.join(os.path.dirname(__file__), "run"))
    ap.add_argument("--timeout", type=float, default=900.0)
    a = ap.parse_args()

    token = open(os.path.join(a.dir, "admin.token")).read().strip()
    nodes = []
    for line in open(os.path.join(a.dir, "pids")):
        name, pid = line.split()
        info = json.load(open(os.path.join(a.dir, name, "node.json")))
        nodes.append({"name": name, "pid": int(pid), "api": "http://" + info["api_address"]})
    n = len(nodes)
    print(f"{n} nodes: {', '.join(x['name'] for x in nodes)}")
    base = "/api/v1/clustering/storage/data/"
    levels = ["strong", "eventual", "weak"]
    rnd = random.Random(7)
    objects = {}
    t0 = time.monotonic()
    for i in range(a.objects):
        oid = f"check-{i}"
        data = rnd.randbytes(rnd.choice([100, 4096, 65536, 300_000]))
        w = nodes[i % n]
        st, body, _ = call("PUT", f"{w['api']}{base}{oid}?consistency={levels[i % 3]}", token, data)
        if st != 201:
            sys.exit(f"PUT {oid} via {w['name']}: {st} {body[:200]!r}")
        objects[oid] = (data, json.loads(body)["checksum"])
    print(f"wrote {len(objects)} objects in {time.monotonic() - t0:.2f} s")

    def read_all(readers, label):
        bad = 0
        for i, (oid, (data, checksum)) in enumerate(objects.items()):
            r = readers[(i + 1) % len(readers)]
            st, body, headers = call("GET", f"{r['api']}{base}{oid}", token)
            etag = headers.get("etag", headers.get("ETag", "")).strip('"')
            if st != 200 or body != data or etag != checksum:
                bad += 1
                print(f"  {label}: {oid} via {r['name']}: status {st}, {len(body)} bytes")
        print(f"{label}: {len(objects) - bad}/{len(objects)} byte-exact")
        return bad

    # Weak writes land a moment later; give them a few seconds.
    time.sleep(2)
    if read_all(nodes, "read back through other nodes"):
        sys.exit(1)

    first = next(iter(objects))
    st, body, _ = call("GET", f"{nodes[0]['api']}{base}{first}/info", token)
    holder = json.loads(body)["replicas"][0]["node_id"]
    victim = next(x for x in nodes if x["name"] == holder)
    os.kill(victim["pid"], signal.SIGKILL)
    killed = time.monotonic()
    print(f"SIGKILLed {holder} (pid {victim['pid']}), a replica holder of {first}")
    survivors = [x for x in nodes if x is not victim]
    if read_all(survivors, "read with a holder SIGKILLed"):
        sys.exit(1)

    def healthy():
        lacking = 0
        for oid in objects:
            st, body, _ = call("GET", f"{survivors[0]['api']}{base}{oid}/info", token)
            if st != 200:
                lacking += 1
                continue
            v = json.loads(body)
            if v["live_replicas"] < v["replication_factor"]:
                lacking += 1
        return lacking

    last_report = 0.0
    while True:
        lacking = healthy()
        now = time.monotonic() - killed
        if lacking == 0:
            print(f"every object back at its replication factor in live replicas {now:.1f} s after the SIGKILL")
            break
        if now - last_report > 15:
            print(f"  {now:.0f} s: {lacking} objects still under-replicated")
            last_report = now
        if now > a.timeout:
            sys.exit(f"still {lacking} under-replicated after {a.timeout} s")
        time.sleep(1)
    st, body, _ = call("GET", f"{survivors[0]['api']}/api/v1/clustering/storage/overview", token)
    print("overview:", body.decode())


if __name__ == "__main__":
    main()
