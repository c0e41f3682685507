#!/usr/bin/env python3
"""The demo's client: hits every instance of the fleet the whole time and
counts what it sees.

    demo-client.py STATS_FILE CLUSTER/HOST=IP:PORT...
    demo-client.py --report STATS_FILE    per-cluster totals; exit 1 on any failure

One thread per instance sends `POST /publish` on a fresh connection (as a
new client would) about every 20 ms and counts successes (HTTP 200),
failures (anything else: refused, reset, timeout, non-200) and the versions
that answered. The totals are written to STATS_FILE as JSON (temp file +
rename, so a reader never sees half a file) twice a second and once more on
SIGTERM, after which it exits 0.

Standard library only: the demo promises a fresh Debian 12, no pip.
"""

import http.client
import json
import os
import signal
import sys
import threading
import time

REQUEST_TIMEOUT_S = 5.0
PAUSE_S = 0.02
WRITE_EVERY_S = 0.5
FAILURES_KEPT = 5


class Target:
    def __init__(self, spec):
        name, _, addr = spec.partition("=")
        cluster, _, host = name.partition("/")
        ip, _, port = addr.rpartition(":")
        if not (cluster and host and ip and port.isdigit()):
            raise SystemExit(f"demo-client: bad target {spec!r}; want CLUSTER/HOST=IP:PORT")
        self.cluster, self.host, self.ip, self.port = cluster, host, ip, int(port)
        self.ok = 0
        self.failed = 0
        self.failures = []
        self.versions = []
        self.lock = threading.Lock()

    def hit(self):
        conn = http.client.HTTPConnection(self.ip, self.port, timeout=REQUEST_TIMEOUT_S)
        try:
            conn.request("POST", "/publish", body=b"hello", headers={"Connection": "close"})
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                return None, f"HTTP {response.status}: {body[:200]!r}"
            return json.loads(body).get("version", "?"), None
        except (OSError, http.client.HTTPException, ValueError) as e:
            return None, f"{type(e).__name__}: {e}"
        finally:
            conn.close()

    def run(self, stop):
        while not stop.is_set():
            version, error = self.hit()
            with self.lock:
                if error is None:
                    self.ok += 1
                    if version not in self.versions:
                        self.versions.append(version)
                else:
                    self.failed += 1
                    if len(self.failures) < FAILURES_KEPT:
                        self.failures.append(f"{time.strftime('%H:%M:%S')} {error}")
            stop.wait(PAUSE_S)

    def snapshot(self):
        with self.lock:
            return {
                "cluster": self.cluster,
                "host": self.host,
                "address": f"{self.ip}:{self.port}",
                "ok": self.ok,
                "failed": self.failed,
                "versions": list(self.versions),
                "failures": list(self.failures),
            }


def write_stats(path, targets):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump([t.snapshot() for t in targets], f)
    os.replace(tmp, path)


def report(path):
    """Prints the totals per cluster and per host; 1 if any request failed."""
    with open(path, encoding="utf-8") as f:
        hosts = json.load(f)
    clusters = {}
    for h in hosts:
        c = clusters.setdefault(h["cluster"], {"ok": 0, "failed": 0, "hosts": []})
        c["ok"] += h["ok"]
        c["failed"] += h["failed"]
        c["hosts"].append(h)
    print(f"    {'cluster':<8} {'hosts':>5} {'served':>8} {'failed':>7}  versions seen")
    for name, c in clusters.items():
        versions = []
        for h in c["hosts"]:
            versions += [v for v in h["versions"] if v not in versions]
        print(f"    {name:<8} {len(c['hosts']):>5} {c['ok']:>8} {c['failed']:>7}  {' -> '.join(versions)}")
    ok = sum(c["ok"] for c in clusters.values())
    failed = sum(c["failed"] for c in clusters.values())
    print(f"    {'total':<8} {len(hosts):>5} {ok:>8} {failed:>7}")
    for h in hosts:
        for failure in h["failures"]:
            print(f"    failure on {h['host']} ({h['address']}): {failure}")
    return 1 if failed or not ok else 0


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        sys.exit(report(sys.argv[2]))
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    path = sys.argv[1]
    targets = [Target(spec) for spec in sys.argv[2:]]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threads = [threading.Thread(target=t.run, args=(stop,), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    while not stop.wait(WRITE_EVERY_S):
        write_stats(path, targets)
    for thread in threads:
        thread.join(REQUEST_TIMEOUT_S + 1)
    write_stats(path, targets)


if __name__ == "__main__":
    main()
