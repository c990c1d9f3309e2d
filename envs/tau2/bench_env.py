#!/usr/bin/python3
"""Per-session cost of tau2_env.py: startup time and resident memory.

Starts the server N times, one after the other (never in parallel), and for
each session measures
  - wall time from spawn to the `initialize` reply,
  - VmRSS / RssAnon / RssFile (/proc/<pid>/status) and Pss
    (/proc/<pid>/smaps_rollup) right after `initialize`, and again after
    matrix/start_episode (retail task 0) + one get_order_details call,
  - with --reward: then the task's gold actions and matrix/reward (round
    trip, and VmRSS after it),
  - CPU time (user + sys) of the whole session (wait4 rusage).

Usage: bench_env.py [-n 20] [--domain retail] [--python /usr/bin/python3]
                    [--flag=-I --flag=-S] [--server PATH ...] [--reward]
With several --server, sessions alternate between them (fairer on a busy
machine).
Standard library only.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def proc_mem(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[k] = int(v.split()[0])
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k == "Pss":
                    out["Pss"] = int(v.split()[0])
    except OSError:
        pass
    return out


class Session:
    def __init__(self, cmd):
        self.t0 = time.perf_counter()
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL)
        self.n = 0

    def request(self, method, params):
        self.n += 1
        self.p.stdin.write(json.dumps({"jsonrpc": "2.0", "id": self.n, "method": method,
                                       "params": params}).encode() + b"\n")
        self.p.stdin.flush()
        r = json.loads(self.p.stdout.readline())
        if "error" in r:
            raise RuntimeError("%s: %r" % (method, r["error"]))
        return r["result"]

    def close(self):
        self.p.stdin.close()
        _, status, ru = os.wait4(self.p.pid, 0)
        self.p.returncode = os.waitstatus_to_exitcode(status)
        self.p.stdout.close()
        return ru.ru_utime + ru.ru_stime, ru.ru_maxrss


def stats(xs):
    return "median %7.1f  mean %7.1f  min %7.1f  max %7.1f" % (
        statistics.median(xs), statistics.mean(xs), min(xs), max(xs))


def run_session(cmd, row, order, with_reward):
    out = {}
    s = Session(cmd)
    s.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                             "clientInfo": {"name": "bench", "version": "1"}})
    out["init_ms"] = (time.perf_counter() - s.t0) * 1000
    m0 = proc_mem(s.p.pid)
    s.p.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
    s.request("matrix/start_episode", {"input": row, "seed": 0})
    if order:
        r = s.request("tools/call", {"name": "get_order_details", "arguments": {"order_id": order}})
    else:
        r = s.request("tools/call", {"name": "get_users", "arguments": {}})
    assert not r["isError"], r
    m = proc_mem(s.p.pid)
    if with_reward:
        for a in row["task"]["evaluation_criteria"].get("actions") or []:
            s.request("tools/call", {"name": a["name"], "arguments": a.get("arguments") or {}})
        t0 = time.perf_counter()
        r = s.request("matrix/reward", {"messages": [], "termination": "user_stop"})
        out["reward_ms"] = (time.perf_counter() - t0) * 1000
        assert r["breakdown"]["db"] == 1, r
        out["reward_rss"] = proc_mem(s.p.pid)["VmRSS"] / 1024
    cpu, maxrss = s.close()
    out.update(idle_rss=m0["VmRSS"] / 1024, idle_anon=m0["RssAnon"] / 1024, rss=m["VmRSS"] / 1024,
               anon=m["RssAnon"] / 1024, file=m["RssFile"] / 1024, pss=m.get("Pss", 0) / 1024,
               cpu_ms=cpu * 1000, maxrss=maxrss / 1024)
    return out


LINES = (
    ("init_ms", "spawn -> initialize reply (ms)"),
    ("idle_rss", "VmRSS after initialize (MB)"),
    ("idle_anon", "RssAnon after initialize (MB)"),
    ("rss", "VmRSS after start_episode+call (MB)"),
    ("anon", "  RssAnon (MB)"),
    ("file", "  RssFile (MB)"),
    ("pss", "  Pss (MB)"),
    ("reward_ms", "gold actions + matrix/reward (ms)"),
    ("reward_rss", "VmRSS after matrix/reward (MB)"),
    ("maxrss", "peak RSS of the session (MB)"),
    ("cpu_ms", "CPU user+sys of the session (ms)"),
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20, help="sessions per server")
    ap.add_argument("--domain", default="retail")
    ap.add_argument("--python", default="/usr/bin/python3")
    ap.add_argument("--flag", action="append", default=[], help="interpreter flag, e.g. --flag=-I (repeatable)")
    ap.add_argument("--server", action="append", default=[],
                    help="tau2_env.py to run (repeatable: sessions alternate between them); default: this folder's")
    ap.add_argument("--reward", action="store_true", help="also replay the gold actions and call matrix/reward")
    args = ap.parse_args()

    with open(os.path.join(HERE, "data", "%s_tasks.jsonl" % args.domain), "rb") as f:
        row = json.loads(f.readline())
    servers = args.server or [os.path.join(HERE, "tau2_env.py")]
    cmds = [[args.python] + args.flag + [srv, "--domain", args.domain] for srv in servers]
    order = "#W2378156" if args.domain == "retail" else None

    results = [[] for _ in cmds]
    for _ in range(args.n):
        for i, cmd in enumerate(cmds):
            results[i].append(run_session(cmd, row, order, args.reward))

    for cmd, res in zip(cmds, results):
        print("command: %s  (%d sessions, one at a time)" % (" ".join(cmd), args.n))
        for key, label in LINES:
            xs = [r[key] for r in res if key in r]
            if xs:
                print("  %-38s %s" % (label, stats(xs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
