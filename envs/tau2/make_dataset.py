#!/usr/bin/python3
"""Turn data/<domain>/tasks.json into JSONL rows for the Matrix pipeline.

Usage: make_dataset.py --domain retail|mock [--split base|train|test] [--out PATH] [--data DIR]

One row per task:
  {"id", "domain", "user_system", "assistant_system", "task"}
user_system      = user-simulator guidelines + scenario (tau2 layout)
assistant_system = <instructions>INSTR</instructions><policy>policy.md</policy>, one per line
task             = the original task object, unchanged
Standard library only.
"""

import argparse
import json
import os
import sys
import textwrap

# Our wording of the assistant instructions.
ASSISTANT_INSTRUCTIONS = (
    "You are a customer service agent. Help the user with their request while following the "
    "<policy> below at all times.\n"
    "In every turn, do exactly one of two things: send a message to the user, or make a tool "
    "call. Never do both in the same turn.\n"
    "Be helpful, stay within the policy, and make sure every tool call you produce is valid JSON."
)

# Domains whose user simulator has tools of its own.
USER_HAS_TOOLS = {"mock": True, "retail": False}


def indent(text):
    """A tab before each non-empty line."""
    return textwrap.indent(text, "\t")


def render_instructions(instr):
    if isinstance(instr, str):
        return instr
    lines = ["Domain: %s" % instr.get("domain"), "Reason for call:", indent(instr.get("reason_for_call") or "")]
    if instr.get("known_info") is not None:
        lines += ["Known info:", indent(instr["known_info"])]
    if instr.get("unknown_info") is not None:
        lines += ["Unknown info:", indent(instr["unknown_info"])]
    lines += ["Task instructions:", indent(instr.get("task_instructions") or "")]
    return "\n".join(lines)


def render_scenario(scenario):
    lines = []
    persona = scenario.get("persona")
    if persona:
        lines += ["Persona:", indent(persona)]
    lines += ["Instructions:", indent(render_instructions(scenario.get("instructions") or ""))]
    return "\n".join(lines)


def user_system_prompt(guidelines, scenario):
    return guidelines + "\n\n<scenario>\n" + render_scenario(scenario) + "\n</scenario>"


def assistant_system_prompt(policy):
    return "\n".join(["<instructions>", ASSISTANT_INSTRUCTIONS, "</instructions>",
                      "<policy>", policy, "</policy>"])


def read_text(path):
    with open(path, "r", encoding="utf-8", newline="") as f:
        return f.read()


def build_rows(data_dir, domain, split):
    ddir = os.path.join(data_dir, domain)
    with open(os.path.join(ddir, "tasks.json"), "rb") as f:
        tasks = json.loads(f.read())
    with open(os.path.join(ddir, "split_tasks.json"), "rb") as f:
        splits = json.loads(f.read())
    if split not in splits:
        raise SystemExit("domain %s has no split %r (have: %s)" % (domain, split, ", ".join(sorted(splits))))
    wanted = [str(x) for x in splits[split]]
    by_id = {str(t["id"]): t for t in tasks}
    missing = [i for i in wanted if i not in by_id]
    if missing:
        raise SystemExit("split %s names unknown tasks: %s" % (split, ", ".join(missing)))
    wanted_set = set(wanted)
    guide_file = "user_simulator_guidelines_tools.md" if USER_HAS_TOOLS.get(domain) else "user_simulator_guidelines.md"
    guidelines = read_text(os.path.join(data_dir, guide_file))
    policy = read_text(os.path.join(ddir, "policy.md"))
    asys = assistant_system_prompt(policy)
    rows = []
    for t in tasks:  # file order
        if str(t["id"]) not in wanted_set:
            continue
        rows.append({
            "id": str(t["id"]),
            "domain": domain,
            "user_system": user_system_prompt(guidelines, t.get("user_scenario") or {}),
            "assistant_system": asys,
            "task": t,
        })
    return rows


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domain", required=True, choices=["retail", "mock"])
    ap.add_argument("--split", default="base", choices=["base", "train", "test"])
    ap.add_argument("--data", default=os.path.join(here, "data"))
    ap.add_argument("--out", default=None, help="output path (default: stdout)")
    args = ap.parse_args(argv)
    rows = build_rows(args.data, args.domain, args.split)
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if args.out:
        with open(args.out, "w", encoding="utf-8", newline="\n") as f:
            f.write(payload)
        sys.stderr.write("wrote %d rows to %s\n" % (len(rows), args.out))
    else:
        sys.stdout.write(payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
