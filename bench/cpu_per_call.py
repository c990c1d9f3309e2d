#!/usr/bin/env python3
"""CPU per LLM call: `matrix run configs/coral.yaml` against the Python
asyncio orchestrator of the same flow (bench/coral_asyncio.py), alternating,
against one standalone matrix-llm-sim that neither side is charged for.

  bench/cpu_per_call.py [--pairs 3] [--tasks 1000] [--in-flight 500] [--sim-flags "..."]

For each run: CPU time (user + sys) of the whole process tree of the
orchestrator (matrix run and every daemon it started; or the Python process),
LLM calls made, completion tokens, wall time. Prints a table and the medians,
and writes them as JSON (--json, default bench/results/cpu_per_call.json).
"""
import argparse
import glob
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Debian's interpreter, where python3-aiohttp installs.
PYTHON = os.environ.get("PYTHON", "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable)


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def start_sim(bin_dir, work, flags):
    port_file = os.path.join(work, "sim.port")
    log = open(os.path.join(work, "sim.log"), "w")
    proc = subprocess.Popen([os.path.join(bin_dir, "matrix-llm-sim"), "--listen", "127.0.0.1:0", "--port-file",
                             port_file] + flags.split(), stdout=log, stderr=subprocess.STDOUT)
    for _ in range(200):
        if os.path.exists(port_file) and open(port_file).read().strip():
            return proc, open(port_file).read().strip()
        time.sleep(0.05)
    proc.kill()
    sys.exit("matrix-llm-sim did not start; see " + log.name)


def run_matrix(bin_dir, work, endpoint, tasks, in_flight, i):
    out = os.path.join(work, f"matrix-{i}")
    before = children_cpu()
    t0 = time.monotonic()
    res = subprocess.run([os.path.join(bin_dir, "matrix"), "run", os.path.join(ROOT, "configs/coral.yaml"),
                          f"dataset.limit={tasks}", f"run.max_concurrent_tasks={in_flight}",
                          f"models.llama.endpoints=[http://{endpoint}/v1]", "--output", out, "--run-dir",
                          out + ".run", "--quiet"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    wall = time.monotonic() - t0
    cpu = children_cpu() - before
    if not os.path.exists(os.path.join(out, "summary.json")):
        sys.exit(f"matrix run wrote no summary:\n{res.stderr[-2000:]}")
    summary = json.load(open(os.path.join(out, "summary.json")))
    calls = sum(json.load(open(f)).get("llm_calls", 0) for f in glob.glob(out + ".run/progress/*.json"))
    return {"who": "matrix", "cpu_s": cpu, "llm_calls": calls, "completion_tokens": summary["completion_tokens"],
            "elapsed_s": summary["elapsed_s"], "wall_s": wall, "tasks": sum(summary["by_status"].values())}


def run_python(work, endpoint, tasks, in_flight, i):
    out = os.path.join(work, f"python-{i}.jsonl")
    before = children_cpu()
    t0 = time.monotonic()
    res = subprocess.run([PYTHON, os.path.join(ROOT, "bench/coral_asyncio.py"), "--endpoint",
                          f"http://{endpoint}/v1", "--dataset", os.path.join(ROOT, "test/data/mmlu_pro_2000.jsonl"),
                          "--limit", str(tasks), "--concurrency", str(in_flight), "--out", out],
                         capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"coral_asyncio.py failed ({res.returncode}):\n{res.stderr[-2000:]}")
    wall = time.monotonic() - t0
    cpu = children_cpu() - before
    r = json.loads(res.stdout.strip().splitlines()[-1])
    return {"who": "python", "cpu_s": cpu, "llm_calls": r["llm_calls"], "completion_tokens": r["completion_tokens"],
            "elapsed_s": r["elapsed_s"], "wall_s": wall, "tasks": r["tasks"]}


def derived(r):
    r["cpu_ms_per_call"] = 1000 * r["cpu_s"] / max(1, r["llm_calls"])
    r["cpu_ms_per_1k_completion_tokens"] = 1e6 * r["cpu_s"] / max(1, r["completion_tokens"])
    r["completion_tokens_per_s"] = r["completion_tokens"] / max(1e-9, r["elapsed_s"])
    return r


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--in-flight", type=int, default=500)
    p.add_argument("--sim-flags", default="--slots 256 --step-ms 8 --step-ms-per-seq 0.01 --mean-output-tokens 120 "
                                          "--agree-prob 0.6")
    p.add_argument("--bin", default=os.environ.get("BIN", os.path.join(ROOT, "build/release/bin")))
    p.add_argument("--json", default=os.path.join(ROOT, "bench/results/cpu_per_call.json"))
    a = p.parse_args()
    if subprocess.run([PYTHON, "-c", "import aiohttp"], capture_output=True).returncode != 0:
        sys.exit(f"the Python reference needs aiohttp for {PYTHON}: apt-get install python3-aiohttp")
    with tempfile.TemporaryDirectory() as work:
        sim, endpoint = start_sim(a.bin, work, a.sim_flags)
        runs = []
        try:
            for i in range(a.pairs):
                for fn in (lambda: run_matrix(a.bin, work, endpoint, a.tasks, a.in_flight, i),
                           lambda: run_python(work, endpoint, a.tasks, a.in_flight, i)):
                    r = derived(fn())
                    runs.append(r)
                    print(f"{r['who']:7} {r['tasks']:6} tasks {r['llm_calls']:7} calls {r['elapsed_s']:7.1f} s  "
                          f"CPU {r['cpu_s']:6.2f} s = {r['cpu_ms_per_call']:5.2f} ms/call "
                          f"{r['cpu_ms_per_1k_completion_tokens']:6.1f} ms/1k tok  "
                          f"{r['completion_tokens_per_s']:7.0f} completion tok/s", flush=True)
        finally:
            sim.kill()
            sim.wait()
    med = {}
    for who in ("matrix", "python"):
        rs = [r for r in runs if r["who"] == who]
        med[who] = {k: statistics.median(r[k] for r in rs)
                    for k in ("cpu_ms_per_call", "cpu_ms_per_1k_completion_tokens", "completion_tokens_per_s")}
    ratio = med["matrix"]["cpu_ms_per_call"] / med["python"]["cpu_ms_per_call"]
    tps = med["matrix"]["completion_tokens_per_s"] / med["python"]["completion_tokens_per_s"]
    print(f"\n| medians of {a.pairs} alternating pairs, {a.tasks} tasks, {a.in_flight} in flight "
          f"| CPU per LLM call | CPU per 1k completion tokens | completion tok/s |")
    print("|---|---|---|---|")
    for who in ("matrix", "python"):
        m = med[who]
        print(f"| {who} | {m['cpu_ms_per_call']:.2f} ms | {m['cpu_ms_per_1k_completion_tokens']:.1f} ms "
              f"| {m['completion_tokens_per_s']:.0f} |")
    print(f"\nmatrix / python: CPU per call {ratio:.2f}, completion tok/s {tps:.2f}")
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    json.dump({"benchmark": "cpu_per_call", "tasks": a.tasks, "in_flight": a.in_flight, "sim_flags": a.sim_flags,
               "runs": runs, "median": med, "cpu_per_call_ratio": ratio, "completion_tps_ratio": tps},
              open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
