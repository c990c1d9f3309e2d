#!/usr/bin/env python3
"""Coral as a plain Python asyncio orchestrator: the reference `matrix run
configs/coral.yaml` is compared with (bench/cpu_per_call.sh).

One process, one aiohttp session, N tasks in flight. Each task is an MMLU-Pro
question: a teacher and a student take turns (each sees the question, its
own turns as assistant messages and the other's as user messages); after
every turn a 16-token extractor call restates the letter the turn committed
to, a regex pulls it out; after the student's turn the two letters are
compared; the task stops at agreement or after 20 turns. The same prompts,
sampling and stop rule as configs/coral.yaml. Records go to a JSONL file.
Failed calls are retried up to 4 times with exponential back-off.

  python3 bench/coral_asyncio.py --endpoint http://127.0.0.1:8000/v1 \\
      --dataset test/data/mmlu_pro_2000.jsonl --limit 1000 --concurrency 500 --out /tmp/py.jsonl

Prints one JSON line: tasks, llm_calls, prompt/completion tokens, elapsed_s,
cpu_s (user + sys of this process).
"""
import argparse
import asyncio
import json
import random
import re
import resource
import sys
import time

import aiohttp

TEACHER = (
    "You are a teacher discussing a multiple-choice question with a student.\n"
    "Reason step by step, answer the student's arguments, and change your mind\n"
    "only when convinced. End every turn with \"The answer is (X)\" where X is\n"
    "the letter of the option you currently believe is correct.\n")
STUDENT = (
    "You are a student discussing a multiple-choice question with your\n"
    "teacher. Think it through, say where you agree or disagree and why. End\n"
    "every turn with \"The answer is (X)\" where X is the letter of the option\n"
    "you currently believe is correct.\n")
EXTRACT = ("Which option letter does the following reply commit to? Answer only with\n"
           "\"The answer is (X)\".\n\nReply:\n")
LETTER = re.compile(r"answer is \(?([A-J])\)?")
MAX_TURNS = 20


class Stats:
    def __init__(self):
        self.calls = self.errors = self.prompt_tokens = self.completion_tokens = 0


async def chat(session, url, model, messages, sampling, stats, retries=4):
    body = dict(sampling)
    body["model"] = model
    body["messages"] = messages
    for attempt in range(retries + 1):
        try:
            async with session.post(url, json=body) as resp:
                if resp.status == 200:
                    data = await resp.json()
                    usage = data.get("usage") or {}
                    stats.calls += 1
                    stats.prompt_tokens += usage.get("prompt_tokens", 0)
                    stats.completion_tokens += usage.get("completion_tokens", 0)
                    return data["choices"][0]["message"].get("content") or ""
                await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError):
            pass
        await asyncio.sleep(min(30, 0.5 * 2 ** attempt) * random.random())
    stats.errors += 1
    raise RuntimeError("model call failed")


def question_text(row):
    # Byte for byte what configs/coral.yaml's prompt template renders, so that
    # a simulator run with --ignore-seed true gives both the same workload.
    options = "".join(f"{'ABCDEFGHIJ'[i]}. {o}\n" for i, o in enumerate(row["options"]))
    return f"{row['question']}\n{options}\n"


async def run_task(session, args, row, stats, out):
    started = time.monotonic() - args.start
    question = question_text(row)
    history = []  # (role, text)
    answers = {}
    reason = "max_turns"
    try:
        while len(history) < MAX_TURNS:
            role = "teacher" if len(history) % 2 == 0 else "student"
            messages = [{"role": "system", "content": TEACHER if role == "teacher" else STUDENT},
                        {"role": "user", "content": question}]
            messages += [{"role": "assistant" if r == role else "user", "content": t} for r, t in history]
            text = await chat(session, args.url, args.model, messages,
                              {"temperature": 0.7, "max_tokens": 512}, stats)
            history.append((role, text))
            said = await chat(session, args.url, args.model,
                              [{"role": "user", "content": EXTRACT + text + "\n"}],
                              {"temperature": 0, "max_tokens": 16}, stats)
            m = LETTER.search(said)
            answers[role] = m.group(1) if m else None
            if role == "student" and answers.get("teacher") and answers["teacher"] == answers["student"]:
                reason = "agreement"
                break
        status = "done"
    except RuntimeError as e:
        status, reason = "failed", str(e)
    record = {"task_id": str(row.get("question_id")), "status": status, "reason": reason,
              "turns": [{"role": r, "content": t} for r, t in history], "answers": answers,
              "correct": reason == "agreement" and answers.get("student") == row.get("answer"),
              "start_s": round(started, 4), "end_s": round(time.monotonic() - args.start, 4)}
    out.write(json.dumps(record) + "\n")


async def main(args):
    rows = []
    with open(args.dataset) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
            if args.limit and len(rows) >= args.limit:
                break
    stats = Stats()
    connector = aiohttp.TCPConnector(limit=args.concurrency * 2)
    timeout = aiohttp.ClientTimeout(total=120)
    start_cpu = resource.getrusage(resource.RUSAGE_SELF)
    start = args.start = time.monotonic()
    queue = iter(rows)
    with open(args.out, "w") as out:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            async def worker():
                for row in queue:
                    await run_task(session, args, row, stats, out)
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    elapsed = time.monotonic() - start
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "tasks": len(rows), "llm_calls": stats.calls, "llm_errors": stats.errors,
        "prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
        "elapsed_s": round(elapsed, 3),
        "cpu_s": round(cpu.ru_utime - start_cpu.ru_utime + cpu.ru_stime - start_cpu.ru_stime, 3)}))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--endpoint", required=True, help="base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--dataset", required=True)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=500)
    p.add_argument("--model", default="meta-llama/Llama-3.1-8B-Instruct")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    a.url = a.endpoint.rstrip("/") + "/chat/completions"
    asyncio.run(main(a))
    sys.exit(0)
