"""The runs of `bench/run cpu`: `matrix run configs/coral.yaml` and the Python
asyncio orchestrator of the same flow (bench/coral_asyncio.py) against one
standalone matrix-llm-sim that neither side is charged for.

Each run reports CPU time (user + sys) of the orchestrator's whole process
tree (matrix run and every daemon it waited for; or the Python process), LLM
calls made, completion tokens, wall time of the command and the span of its
tasks (first admitted to last finished, from the records).
"""
import glob
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Debian's interpreter, where python3-aiohttp installs.
PYTHON = os.environ.get("PYTHON", "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable)


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def children_switches():
    """Context switches (voluntary and not) of every reaped child: each one a
    thread that went to sleep or was woken, the cost of handing work between
    threads and processes."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_nvcsw + r.ru_nivcsw


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


DATASET = os.path.join(ROOT, "test/data/mmlu_pro_2000.jsonl")


def run_matrix(bin_dir, work, endpoint, tasks, in_flight, i, dataset=DATASET):
    out = os.path.join(work, f"matrix-{i}")
    before, switches = children_cpu(), children_switches()
    t0 = time.monotonic()
    res = subprocess.run([os.path.join(bin_dir, "matrix"), "run", os.path.join(ROOT, "configs/coral.yaml"),
                          f"dataset.path={dataset}", f"dataset.limit={tasks}", f"run.max_concurrent_tasks={in_flight}",
                          f"models.llama.endpoints=[http://{endpoint}/v1]", "--output", out, "--run-dir",
                          out + ".run", "--quiet"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    wall = time.monotonic() - t0
    cpu = children_cpu() - before
    if not os.path.exists(os.path.join(out, "summary.json")):
        sys.exit(f"matrix run wrote no summary:\n{res.stderr[-2000:]}")
    summary = json.load(open(os.path.join(out, "summary.json")))
    calls = sum(json.load(open(f)).get("llm_calls", 0) for f in glob.glob(out + ".run/progress/*.json"))
    spans = [(r["created_us"], r["finished_us"]) for f in glob.glob(os.path.join(out, "p*.jsonl"))
             for r in map(json.loads, open(f))]
    tasks_s = (max(e for _, e in spans) - min(s for s, _ in spans)) / 1e6 if spans else 0
    return {"who": "matrix", "cpu_s": cpu, "switches": children_switches() - switches, "llm_calls": calls, "completion_tokens": summary["completion_tokens"],
            "elapsed_s": summary["elapsed_s"], "tasks_s": tasks_s, "wall_s": wall,
            "tasks": sum(summary["by_status"].values())}


def run_python(work, endpoint, tasks, in_flight, i, dataset=DATASET):
    out = os.path.join(work, f"python-{i}.jsonl")
    before, switches = children_cpu(), children_switches()
    t0 = time.monotonic()
    res = subprocess.run([PYTHON, os.environ.get("CORAL_PY", os.path.join(ROOT, "bench/coral_asyncio.py")), "--endpoint",
                          f"http://{endpoint}/v1", "--dataset", dataset,
                          "--limit", str(tasks), "--concurrency", str(in_flight), "--out", out],
                         capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"coral_asyncio.py failed ({res.returncode}):\n{res.stderr[-2000:]}")
    wall = time.monotonic() - t0
    cpu = children_cpu() - before
    r = json.loads(res.stdout.strip().splitlines()[-1])
    spans = [(x["start_s"], x["end_s"]) for x in map(json.loads, open(out))]
    tasks_s = max(e for _, e in spans) - min(s for s, _ in spans) if spans else 0
    return {"who": "python", "cpu_s": cpu, "switches": children_switches() - switches, "llm_calls": r["llm_calls"], "completion_tokens": r["completion_tokens"],
            "elapsed_s": r["elapsed_s"], "tasks_s": tasks_s, "wall_s": wall, "tasks": r["tasks"]}


def derived(r):
    r["cpu_ms_per_call"] = 1000 * r["cpu_s"] / max(1, r["llm_calls"])
    r["switches_per_call"] = r["switches"] / max(1, r["llm_calls"])
    r["cpu_ms_per_1k_completion_tokens"] = 1e6 * r["cpu_s"] / max(1, r["completion_tokens"])
    # Over the whole command (start-up and shutdown included), and over the
    # tasks' own span (first admitted to last finished): what a long run sees.
    r["completion_tokens_per_s"] = r["completion_tokens"] / max(1e-9, r["wall_s"])
    r["completion_tokens_per_task_s"] = r["completion_tokens"] / max(1e-9, r["tasks_s"])
    return r
