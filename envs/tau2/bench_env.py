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
                    [--flag=-I --flag=-S] [--server PATH] [--reward]
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--domain", default="retail")
    ap.add_argument("--python", default="/usr/bin/python3")
    ap.add_argument("--flag", action="append", default=[], help="interpreter flag, e.g. -I (repeatable)")
    ap.add_argument("--server", default=os.path.join(HERE, "tau2_env.py"))
    ap.add_argument("--reward", action="store_true", help="also replay the gold actions and call matrix/reward")
    args = ap.parse_args()

    with open(os.path.join(HERE, "data", "%s_tasks.jsonl" % args.domain), "rb") as f:
        row = json.loads(f.readline())
    cmd = [args.python] + args.flag + [args.server, "--domain", args.domain]
    order = "#W2378156" if args.domain == "retail" else None

    rows = {k: [] for k in ("init_ms", "idle_rss", "idle_anon", "rss", "anon", "file", "pss", "cpu_ms", "maxrss",
                            "reward_ms", "reward_rss")}
    for _ in range(args.n):
        s = Session(cmd)
        s.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                 "clientInfo": {"name": "bench", "version": "1"}})
        rows["init_ms"].append((time.perf_counter() - s.t0) * 1000)
        m0 = proc_mem(s.p.pid)
        s.p.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        s.request("matrix/start_episode", {"input": row, "seed": 0})
        if order:
            r = s.request("tools/call", {"name": "get_order_details", "arguments": {"order_id": order}})
        else:
            r = s.request("tools/call", {"name": "get_users", "arguments": {}})
        assert not r["isError"], r
        m = proc_mem(s.p.pid)
        if args.reward:
            for a in row["task"]["evaluation_criteria"].get("actions") or []:
                s.request("tools/call", {"name": a["name"], "arguments": a.get("arguments") or {}})
            t0 = time.perf_counter()
            r = s.request("matrix/reward", {"messages": [], "termination": "user_stop"})
            rows["reward_ms"].append((time.perf_counter() - t0) * 1000)
            assert r["breakdown"]["db"] == 1, r
            rows["reward_rss"].append(proc_mem(s.p.pid)["VmRSS"] / 1024)
        cpu, maxrss = s.close()
        rows["idle_rss"].append(m0["VmRSS"] / 1024)
        rows["idle_anon"].append(m0["RssAnon"] / 1024)
        rows["rss"].append(m["VmRSS"] / 1024)
        rows["anon"].append(m["RssAnon"] / 1024)
        rows["file"].append(m["RssFile"] / 1024)
        rows["pss"].append(m.get("Pss", 0) / 1024)
        rows["cpu_ms"].append(cpu * 1000)
        rows["maxrss"].append(maxrss / 1024)

    print("command: %s  (%d sessions, one at a time)" % (" ".join(cmd), args.n))
    print("spawn -> initialize reply (ms)        ", stats(rows["init_ms"]))
    print("VmRSS after initialize (MB)           ", stats(rows["idle_rss"]))
    print("RssAnon after initialize (MB)         ", stats(rows["idle_anon"]))
    print("VmRSS after start_episode+call (MB)   ", stats(rows["rss"]))
    print("  RssAnon (MB)                        ", stats(rows["anon"]))
    print("  RssFile (MB)                        ", stats(rows["file"]))
    print("  Pss (MB)                            ", stats(rows["pss"]))
    if args.reward:
        print("gold actions, then matrix/reward (ms)  ", stats(rows["reward_ms"]))
        print("VmRSS after matrix/reward (MB)        ", stats(rows["reward_rss"]))
    print("peak RSS of the session (MB)          ", stats(rows["maxrss"]))
    print("CPU user+sys of the session (ms)      ", stats(rows["cpu_ms"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
