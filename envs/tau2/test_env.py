#!/usr/bin/python3
"""End-to-end test of tau2_env.py over real MCP stdio (exit 0 = pass).

Replays the gold actions of all 114 retail tasks and all mock tasks through a
server subprocess, checks rewards, gold hashes (SPEC section 7), the expected
tool errors, negative cases and bad-input handling. Standard library only.
"""

import copy
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "tau2_env.py")
DATA = os.path.join(HERE, "data")
PY = sys.executable or "/usr/bin/python3"

INIT_HASH = "b25c9cb211f5efcaee5dd646054a73c4a9f43f4f5acc32c10713cd9f9ac20e9c"
MOCK_INIT_PREFIX = "107f83a70b7bf4f6"
MOCK_USER_INIT_PREFIX = "4cf3d22eed6962ba"

GOLD = """
0:a109be174767 1:eab1dde2ca84 2:9b66e83dbc00 3:efb8b638945f 4:f333ec4241d5 5:9f1e45fc84a6
6:2053905d31cc 7:4759f292bd76 8:b9f3a1f4d12b 9:c0bf2b8ebfe4 10:=init 11:05695f333e6a
12:=init 13:21462ba8f4c9 14:6351938a2a69 15:fe6b690f4810 16:76488acd2c5a 17:582f5d9c8242
18:ae5647e96742 19:ef45b3de7b49 20:d43fdfd87998 21:079ef03ab35d 22:dc23fc9e7832 23:077542b3b671
24:=init 25:=init 26:232e66188bb8 27:08a9f35dd8ee 28:977b187e0993 29:d2d7dc99ebac
30:e714c87d9835 31:62c4403fbd95 32:aef31f614f8b 33:5fe996d49aef 34:bac92290376c 35:4f518424174e
36:c263b7ca5913 37:c263b7ca5913 38:e5c0722a1e6b 39:6cecf269871e 40:09f9be39b93d 41:c3bd28c10157
42:c3bd28c10157 43:a533bdac3eb6 44:7261dbb2b5fe 45:4c50624bd45b 46:9443e4a3f302 47:3e78643a7715
48:f97ba40e5b91 49:57802d7b797e 50:=init 51:5198da6a906f 52:0a993bd7f702 53:75f2e3a64f60
54:ce6253776349 55:b8dc464a3c0c 56:aa54036bba8d 57:=init 58:381a3546df6c 59:8cf194e4eca8
60:c64074b669a7 61:c4714fc4f113 62:=init 63:26acf77e3aeb 64:2e9d92ee0d0c 65:=init
66:a60e11827d3f 67:=init 68:=init 69:847ac0da2e85 70:d8d9d176cae3 71:c14be7c97f71
72:c14be7c97f71 73:3fda1284264c 74:49e0a1364ae7 75:4715bef725f0 76:790091ad9136 77:6b264a9871c7
78:4ceb2d12183f 79:08eab1c97f1c 80:2eb374bb67d5 81:3e6cf2f5d544 82:7ecde7bd7664 83:6d6c5796be53
84:6d6c5796be53 85:e60e8a961176 86:4d145d54e2a0 87:facad1bdef80 88:3ac42fbf475e 89:e6d35273c62b
90:c01984ba9743 91:513010e85e47 92:034b3692aa70 93:0c80a65bf8cd 94:b43bfc63042a 95:a0d1b0eab2e1
96:a99755655767 97:a99755655767 98:a38fddcc78eb 99:0d4c506b6ae1 100:1af6e2cc79b3 101:ecb59101f10d
102:0089a38140d5 103:da721a24a789 104:86fb873c6582 105:=init 106:2d308b3a2193 107:8111ebca3910
108:7db01a0501bb 109:b7a36959054a 110:f45606e4dad4 111:1301e5413c38 112:6eb2be1662a3 113:4337c9b25955
"""
GOLD_PREFIX = {k: v for k, v in (tok.split(":") for tok in GOLD.split())}

# SPEC 7 step 2: the only errors a gold replay may produce.
EXPECTED_ERRORS = {
    "2": {"get_product_details": 1}, "3": {"get_product_details": 1}, "4": {"get_product_details": 1},
    "35": {"find_user_id_by_email": 1}, "37": {"find_user_id_by_email": 1},
    "38": {"find_user_id_by_email": 1}, "54": {"find_user_id_by_email": 1},
    "55": {"find_user_id_by_email": 1},
    "39": {"find_user_id_by_name_zip": 1}, "67": {"find_user_id_by_name_zip": 2},
    "68": {"find_user_id_by_name_zip": 1},
    "46": {"get_order_details": 2}, "47": {"get_order_details": 2},  # #9502126 and #9502127
    "64": {"exchange_delivered_order_items": 1},
    "105": {"exchange_delivered_order_items": 1},
}
NO_NET_WRITE = {"10", "12", "24", "25", "50", "57", "62", "65", "67", "68", "105"}
GOLD_TRANSFER = {"10", "12", "26", "50"}
RETAIL_WRITES = {"cancel_pending_order", "exchange_delivered_order_items", "modify_pending_order_address",
                 "modify_pending_order_items", "modify_pending_order_payment", "modify_user_address",
                 "return_delivered_order_items"}
RETAIL_TOOLS = {"calculate", "cancel_pending_order", "exchange_delivered_order_items", "find_user_id_by_name_zip",
                "find_user_id_by_email", "get_order_details", "get_product_details", "get_item_details",
                "get_user_details", "list_all_product_types", "modify_pending_order_address",
                "modify_pending_order_items", "modify_pending_order_payment", "modify_user_address",
                "return_delivered_order_items", "transfer_to_human_agents"}

# Mock: calls a successful episode needs beyond the gold actions (env assertions).
MOCK_EXTRA = {
    "update_task_with_history_and_env_assertions": [
        ("assistant", "update_task_status", {"task_id": "task_2", "status": "completed"})],
    "update_task_with_user_tools": [
        ("user", "check_notifications", {}),
        ("user", "dismiss_notification", {"notification_id": "notif_1"})],
}

GREETING = "Hi! How can I help you today?"

FAILURES = []
STATS = {"calls": 0, "call_s": 0.0, "starts": 0, "start_s": 0.0, "rewards": 0, "reward_s": 0.0,
         "spawn": []}


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        if len(FAILURES) <= 40:
            print("FAIL:", what, flush=True)
    return cond


class Client:
    def __init__(self, domain, *extra):
        self.err = tempfile.TemporaryFile()
        t0 = time.perf_counter()
        self.p = subprocess.Popen([PY, SERVER, "--domain", domain] + list(extra),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err)
        self.next_id = 0
        r = self.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                        "clientInfo": {"name": "tau2-test", "version": "1"}})
        STATS["spawn"].append(time.perf_counter() - t0)
        self.init_result = r.get("result")
        self.notify("notifications/initialized")

    def send(self, raw):
        self.p.stdin.write(raw)
        self.p.stdin.flush()

    def recv(self):
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError("server closed stdout; stderr:\n" + self.stderr())
        return json.loads(line)

    def request(self, method, params=None):
        self.next_id += 1
        msg = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(json.dumps(msg).encode() + b"\n")
        r = self.recv()
        if r.get("id") != self.next_id:
            raise RuntimeError("id mismatch: sent %s got %r" % (self.next_id, r))
        return r

    def result(self, method, params=None):
        r = self.request(method, params)
        if "error" in r:
            raise RuntimeError("%s failed: %r" % (method, r["error"]))
        return r["result"]

    def notify(self, method, params=None):
        msg = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self.send(json.dumps(msg).encode() + b"\n")

    def call(self, name, args, requestor=None):
        params = {"name": name, "arguments": args}
        if requestor and requestor != "assistant":
            params["_meta"] = {"matrix/requestor": requestor}
        t0 = time.perf_counter()
        r = self.result("tools/call", params)
        STATS["calls"] += 1
        STATS["call_s"] += time.perf_counter() - t0
        return r["content"][0]["text"], r["isError"]

    def start(self, row, seed=0):
        t0 = time.perf_counter()
        r = self.result("matrix/start_episode", {"input": row, "seed": seed})
        STATS["starts"] += 1
        STATS["start_s"] += time.perf_counter() - t0
        return r

    def reward(self, messages, termination="user_stop"):
        t0 = time.perf_counter()
        r = self.result("matrix/reward", {"messages": messages, "termination": termination})
        STATS["rewards"] += 1
        STATS["reward_s"] += time.perf_counter() - t0
        return r

    def stderr(self):
        self.err.seek(0)
        return self.err.read().decode("utf-8", "replace")

    def close(self):
        try:
            self.p.stdin.close()
            rc = self.p.wait(timeout=10)
        except Exception:
            self.p.kill()
            rc = self.p.wait()
        check(rc == 0, "server exit code %s" % rc)
        self.p.stdout.close()
        self.err.close()


def load_rows(name):
    with open(os.path.join(DATA, name), "rb") as f:
        return [json.loads(line) for line in f if line.strip()]


def episode(c, row, actions=None, extra=(), text=True, termination="user_stop"):
    """Start an episode, replay calls, build the trajectory, return (reward result, errors by tool)."""
    task = row["task"]
    crit = task.get("evaluation_criteria") or {}
    if actions is None:
        actions = crit.get("actions") or []
    c.start(row)
    msgs = [{"role": "assistant", "content": GREETING},
            {"role": "user", "content": "I need help with something."}]
    errors = {}
    calls = [(a.get("requestor") or "assistant", a["name"], a.get("arguments") or {}) for a in actions]
    calls += list(extra)
    for i, (req, name, args) in enumerate(calls):
        out, err = c.call(name, args, req)
        if err:
            errors[name] = errors.get(name, 0) + 1
        cid = "call_%d" % i
        msgs.append({"role": req, "content": None, "tool_calls": [
            {"id": cid, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]})
        msgs.append({"role": "tool", "tool_call_id": cid, "content": out})
    info = crit.get("communicate_info") or []
    if text:
        msgs.append({"role": "assistant", "content": "Done. " + " ".join(info)})
    msgs.append({"role": "user", "content": "Thanks! ###STOP###"})
    return c.reward(msgs, termination), errors


def prefix_ok(h, want):
    if want == "=init":
        return h == INIT_HASH
    return h.startswith(want)


def test_retail(rows):
    c = Client("retail")
    ir = c.init_result
    check(ir["serverInfo"]["name"] == "tau2-retail", "serverInfo name")
    check(ir["capabilities"]["experimental"]["matrix/episode"]["version"] == 1, "experimental capability")
    check(ir["protocolVersion"] == "2025-06-18", "protocolVersion echo")

    tools = c.result("tools/list")["tools"]
    names = {t["name"] for t in tools}
    check(names == RETAIL_TOOLS and len(tools) == 16, "retail tools/list: %s" % sorted(names))
    check(all(t["inputSchema"]["type"] == "object" and t["description"] for t in tools), "tool schemas")

    # SPEC 7 step 1: initial hash (fresh DB without start_episode).
    check(c.result("matrix/db_hash")["db_hash"] == INIT_HASH, "initial retail hash")

    passed = 0
    neg_drop = neg_rev = 0
    for row in rows:
        tid = row["id"]
        res, errors = episode(c, row)
        bd = res["breakdown"]
        ok = True
        ok &= check(res["reward"] == 1.0, "task %s reward %s %s" % (tid, res["reward"], bd))
        ok &= check(prefix_ok(bd["gold_db_hash"], GOLD_PREFIX[tid]),
                    "task %s gold hash %s != %s" % (tid, bd["gold_db_hash"][:12], GOLD_PREFIX[tid]))
        ok &= check(bd["db_hash"] == bd["gold_db_hash"], "task %s live hash != gold" % tid)
        ok &= check(errors == EXPECTED_ERRORS.get(tid, {}),
                    "task %s tool errors %s, expected %s" % (tid, errors, EXPECTED_ERRORS.get(tid, {})))
        ok &= check(bd["tool_errors"] == sum(errors.values()), "task %s tool_errors count" % tid)
        ok &= check((bd["gold_db_hash"] == INIT_HASH) == (tid in NO_NET_WRITE), "task %s net-write class" % tid)
        actions = row["task"]["evaluation_criteria"]["actions"]
        ok &= check(any(a["name"] == "transfer_to_human_agents" for a in actions) == (tid in GOLD_TRANSFER),
                    "task %s transfer class" % tid)
        want_basis = ["DB", "COMMUNICATE"] if row["task"]["evaluation_criteria"].get("nl_assertions") else ["DB"]
        ok &= check(bd["basis"] == want_basis, "task %s basis %s" % (tid, bd["basis"]))
        passed += bool(ok)

        # SPEC 7 step 3 negatives: drop the last write.
        if tid not in NO_NET_WRITE:
            last = max(i for i, a in enumerate(actions) if a["name"] in RETAIL_WRITES)
            res2, _ = episode(c, row, actions[:last] + actions[last + 1:])
            check(res2["reward"] == 0.0 and res2["breakdown"]["db"] == 0, "task %s drop-last-write reward %s"
                  % (tid, res2["reward"]))
            neg_drop += 1
        # ... and reverse the lists of a multi-item modify.
        for i, a in enumerate(actions):
            if a["name"] == "modify_pending_order_items" and len(a["arguments"]["item_ids"]) > 1:
                rev = dict(a, arguments=dict(a["arguments"], item_ids=a["arguments"]["item_ids"][::-1],
                                             new_item_ids=a["arguments"]["new_item_ids"][::-1]))
                res3, _ = episode(c, row, actions[:i] + [rev] + actions[i + 1:])
                check(res3["reward"] == 0.0, "task %s reversed multi-item modify reward %s" % (tid, res3["reward"]))
                neg_rev += 1

    by_id = {r["id"]: r for r in rows}
    # COMMUNICATE applies only where nl_assertions exist.
    res, _ = episode(c, by_id["2"], text=False)
    check(res["reward"] == 0.0 and res["breakdown"]["db"] == 1 and res["breakdown"]["communicate"] == 0,
          "task 2 without communicate text must fail COMMUNICATE: %s" % res)
    res, _ = episode(c, by_id["30"], text=False)
    check(res["reward"] == 1.0 and res["breakdown"]["communicate"] is None,
          "task 30 (no nl_assertions) ignores COMMUNICATE: %s" % res)
    # Commas are removed from the message only.
    row = by_id["2"]
    info = row["task"]["evaluation_criteria"]["communicate_info"]
    c.start(row)
    for a in row["task"]["evaluation_criteria"]["actions"]:
        c.call(a["name"], a["arguments"])
    r = c.reward([{"role": "assistant", "content": ", ".join(s.upper() for s in info)}], "user_stop")
    check(r["reward"] == 1.0, "communicate is case-insensitive and comma-blind: %s" % r)
    # Any termination other than user_stop / agent_stop gives 0.
    res, _ = episode(c, by_id["0"], termination="max_steps")
    check(res["reward"] == 0.0 and res["breakdown"]["components_reward"] == 1.0
          and res["breakdown"]["termination"] == "max_steps", "max_steps gives 0: %s" % res)
    res, _ = episode(c, by_id["0"], termination="agent_stop")
    check(res["reward"] == 1.0, "agent_stop counts: %s" % res)
    # 10 cumulative tool errors.
    res, _ = episode(c, by_id["10"], extra=[("assistant", "no_such_tool", {})] * 10)
    check(res["reward"] == 0.0 and res["breakdown"]["tool_errors"] == 10
          and res["breakdown"]["too_many_errors"] is True, "too_many_errors: %s" % res["breakdown"])
    res, _ = episode(c, by_id["10"], extra=[("assistant", "no_such_tool", {})] * 9)
    check(res["reward"] == 1.0 and res["breakdown"]["tool_errors"] == 9, "9 errors are fine: %s" % res["breakdown"])

    # Copy-on-write isolation: after all those episodes a fresh one is pristine again.
    r = c.start({})
    check(r["ok"] is True and r["task_id"] is None, "start_episode without task")
    check(c.result("matrix/db_hash")["db_hash"] == INIT_HASH, "fresh episode hash after many episodes")
    r = c.start({"id": "20"})
    check(r["task_id"] == "20", "start_episode by id lookup")
    r = c.request("matrix/reward", {"messages": [], "termination": "user_stop"})
    check(r.get("result", {}).get("reward") == 0.0, "reward of a task with no calls is 0 (DB differs)")

    # calculate / read tools spot checks
    for expr, want in (("2 + 2", "4.0"), ("1/3", "0.33"), ("10**16", "1e+16"), ("3 // 2", "1.0"),
                       ("  (1+2)*3", "9.0"), ("-2.5 * 2", "-5.0")):
        out, err = c.call("calculate", {"expression": expr})
        check(out == want and not err, "calculate(%r) = %r" % (expr, out))
    for expr in ("1/0", "2**99999999999", "(-8)**0.5", "abc", "1 +", "()", "((((", "1" + "+1" * 50000):
        out, err = c.call("calculate", {"expression": expr})
        check(err and out.startswith("Error: "), "calculate(%r) must fail, got %r" % (expr[:20], out[:80]))
    out, err = c.call("list_all_product_types", {})
    check(not err and len(json.loads(out)) == 50, "list_all_product_types")
    out, err = c.call("transfer_to_human_agents", {"summary": "x"})
    check(out == "Transfer successful" and not err, "transfer result")

    bad_inputs(c)
    c.close()
    return passed, neg_drop, neg_rev


def bad_inputs(c):
    def raw(b):
        c.send(b)
        return c.recv()

    r = raw(b"this is not json\n")
    check(r.get("id") is None and r["error"]["code"] == -32700, "garbage -> -32700: %r" % r)
    r = raw(b"\xff\xfe\x80 not utf8 \xc3\x28\n")
    check(r.get("id") is None and r["error"]["code"] == -32700, "invalid utf-8 -> -32700: %r" % r)
    r = raw(b'{"jsonrpc":"2.0","id":"u8","method":"tools/call","params":{"name":"get_user_details",'
            b'"arguments":{"user_id":"\xff\xfe"}}}\n')
    check(r.get("id") == "u8" and r["result"]["isError"] is True, "invalid utf-8 inside a string: %r" % r)
    r = raw(b'{"jsonrpc":"2.0","id":"x","method":"nope/nope"}\n')
    check(r.get("id") == "x" and r["error"]["code"] == -32601, "unknown method -> -32601: %r" % r)
    r = raw(b"[1, 2]\n")
    check(r["error"]["code"] == -32600, "batch/array -> -32600")
    r = raw(b"[" * 100000 + b"\n")
    check(r["error"]["code"] == -32700, "deep nesting -> -32700")
    r = raw(b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":[1]}\n')
    check(r["error"]["code"] == -32602, "non-object params -> -32602")
    r = raw(b'{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"arguments":{}}}\n')
    check(r["error"]["code"] == -32602, "tools/call without name -> -32602")
    # notifications get no reply: the next line answered must be the ping
    c.notify("notifications/whatever", {"x": 1})
    r = c.request("ping")
    check(r.get("result") == {}, "ping after notification")

    out, err = c.call("no_such_tool", {})
    check(err and out == "Error: Tool 'no_such_tool' not found.", "unknown tool text: %r" % out)
    out, err = c.call("get_order_details", {})
    check(err and "order_id" in out and out.startswith("Error: "), "missing arg: %r" % out)
    out, err = c.call("get_order_details", {"order_id": "#W2378156", "verbose": True})
    check(err and "verbose" in out, "extra arg: %r" % out)
    out, err = c.call("get_order_details", {"order_id": 2378156})
    check(err and "string" in out, "wrong type: %r" % out)
    out, err = c.call("return_delivered_order_items",
                      {"order_id": "#W2378156", "item_ids": "4202497723", "payment_method_id": "x"})
    check(err and "array" in out, "string instead of array: %r" % out)
    out, err = c.call("get_order_details", "not an object")
    check(err, "non-object arguments: %r" % out)
    out, err = c.call("get_order_details", {"order_id": "#W0000000"})
    check(err and out == "Error: Order not found", "entity not found: %r" % out)
    out, err = c.call("get_order_details", {"order_id": "#W2378156"})
    check(not err and json.loads(out)["order_id"] == "#W2378156" and "cancel_reason" in json.loads(out),
          "server still answers after bad input")


def test_fresh_processes(rows):
    by_id = {r["id"]: r for r in rows}
    n = 0
    for tid in ("0", "20", "64", "100", "105"):
        c = Client("retail")
        res, errors = episode(c, by_id[tid])
        check(res["reward"] == 1.0 and prefix_ok(res["breakdown"]["db_hash"], GOLD_PREFIX[tid]),
              "fresh process task %s: %s" % (tid, res))
        c.close()
        n += 1
    # A plain MCP client (no start_episode) gets a fresh DB.
    c = Client("retail")
    out, err = c.call("cancel_pending_order", {"order_id": "#W9373487", "reason": "no longer needed"})
    o = json.loads(out) if not err else {}
    check(not err and o.get("status") == "cancelled" and o["payment_history"][-1]["amount"] == 109.27,
          "plain client write works: %r" % out[:200])
    check(c.result("matrix/db_hash")["db_hash"] != INIT_HASH, "plain client write changed the DB")
    r = c.request("matrix/reward", {"messages": [], "termination": "user_stop"})
    check(r.get("error", {}).get("code") == -32602, "reward without a task -> -32602")
    c.start({})
    check(c.result("matrix/db_hash")["db_hash"] == INIT_HASH, "start_episode resets the DB")
    c.close()
    return n + 1


def test_mock():
    rows = load_rows("mock_tasks.jsonl")
    c = Client("mock")
    h = c.result("matrix/db_hash")
    check(h["db_hash"].startswith(MOCK_INIT_PREFIX), "mock agent initial hash %s" % h["db_hash"][:16])
    check(h["user_db_hash"].startswith(MOCK_USER_INIT_PREFIX), "mock user initial hash %s" % h["user_db_hash"][:16])
    names = [t["name"] for t in c.result("tools/list")["tools"]]
    check(sorted(names) == ["create_task", "get_users", "transfer_to_human_agents", "update_task_status"],
          "mock assistant tools %s" % names)
    unames = [t["name"] for t in c.result("tools/list", {"_meta": {"matrix/requestor": "user"}})["tools"]]
    check(sorted(unames) == ["check_notifications", "dismiss_notification"], "mock user tools %s" % unames)
    passed = 0
    for row in rows:
        tid = row["id"]
        res, errors = episode(c, row, extra=MOCK_EXTRA.get(tid, ()))
        ok = check(res["reward"] == 1.0 and not errors, "mock %s reward %s errors %s %s"
                   % (tid, res["reward"], errors, res["breakdown"]))
        passed += bool(ok)
    by_id = {r["id"]: r for r in rows}
    # message history was replayed: task_2 exists right after start_episode
    c.start(by_id["update_task_with_message_history"])
    users = json.loads(c.call("get_users", {})[0])
    check(users[0]["tasks"] == ["task_1", "task_2"], "message_history replay: %s" % users)
    # negatives
    res, _ = episode(c, by_id["create_task_1"], actions=[
        {"name": "create_task", "arguments": {"user_id": "user_1", "title": "Important Meeting",
                                              "description": "x"}}])
    check(res["reward"] == 0.0, "create_task with a description fails DB")
    res, _ = episode(c, by_id["impossible_task_1"], actions=[])
    check(res["reward"] == 0.0 and res["breakdown"]["action"] == 0, "impossible task without transfer fails ACTION")
    res, _ = episode(c, by_id["update_task_with_history_and_env_assertions"])
    check(res["reward"] == 0.0 and res["breakdown"]["env_assertion"] == 0, "env assertion unmet")
    out, err = c.call("update_task_status", {"task_id": "task_1", "status": "done"})
    check(err, "status enum enforced: %r" % out)
    out, err = c.call("check_notifications", {})
    check(err and "not found" in out, "user tool invisible to the assistant")
    c.close()
    # Faithful strict mode: the user-DB comparison makes update_task_with_user_tools unpassable.
    c = Client("mock", "--strict-user-db")
    res, _ = episode(c, by_id["update_task_with_user_tools"], extra=MOCK_EXTRA["update_task_with_user_tools"])
    check(res["reward"] == 0.0 and res["breakdown"]["user_db_match"] == 0, "strict user DB contradiction")
    c.close()
    return passed, len(rows)


def load_retail_db():
    """The retail DB as the original server held it: json.load + the 7 optional order fields."""
    with open(os.path.join(DATA, "retail", "db.json"), "rb") as f:
        raw = f.read()
    db = json.loads(raw)
    for o in db["orders"].values():
        for k in ("cancel_reason", "exchange_items", "exchange_new_items", "exchange_payment_method_id",
                  "exchange_price_difference", "return_items", "return_payment_method_id"):
            o.setdefault(k, None)
    return raw, db


def sha(db):
    return hashlib.sha256(json.dumps(db, sort_keys=True).encode("utf-8")).hexdigest()


def test_lazy_db():
    """In process: the JSON layer and the lazily indexed DB agree with the json module."""
    sys.path.insert(0, HERE)
    import tau2_server as srv
    n = 0
    # JSON: the _json accelerator directly (no json / re import), identical to json.loads / json.dumps.
    check(not hasattr(srv, "_json"), "tau2_server falls back to the json package")
    raw, db = load_retail_db()
    plain = json.loads(raw)
    check(srv.loads(raw) == plain, "loads(db.json bytes)")
    for v in (plain, db["orders"]["#W2378156"],
              {"b": [1, -0.0, 1e300, 5e-324, 2 ** 70, math.inf, -math.inf, None, True, False, "", [], {}],
               "a": "caf\u00e9 \U0001f600 \\ \" \n \x00 \u2028", "\u00e9": {"z": 1, "y": [{"x": 0.1}]}}):
        for kw in ({}, {"sort_keys": True}, {"ensure_ascii": False}, {"sort_keys": True, "ensure_ascii": False}):
            check(srv.dumps(v, **kw) == json.dumps(v, **kw), "dumps %s" % kw)
            t = json.dumps(v, **kw)
            check(srv.loads(t) == json.loads(t), "loads round trip %s" % kw)
        n += 1
    nan = srv.loads("[NaN]")[0]
    check(nan != nan and srv.dumps(srv.loads(" [1 , 2] \n")) == "[1, 2]", "NaN and whitespace")
    for bad in ("", "  ", "[1,]", "{\"a\" 1}", "[1] x", "\ufeff[1]", "nul", "[" * 100000):
        try:
            srv.loads(bad)
            check(False, "loads(%r) must fail" % bad[:20])
        except (ValueError, RecursionError):
            pass
    # The index: same tables, keys in file order, every span parses to the entity.
    spans = srv.index_json_layout(raw)
    check(spans is not None and list(spans) == list(plain)
          and all(list(spans[t]) == list(plain[t]) for t in plain), "index keys in file order")
    bad = [(t, k) for t in plain for k, se in spans[t].items()
           if json.loads(raw[se >> 32:se & 0xFFFFFFFF]) != plain[t][k]]
    check(not bad, "index spans: %s" % bad[:3])
    two = srv.index_json_layout(json.dumps(plain, indent=2).encode())
    check(two is not None and {t: list(v) for t, v in two.items()} == {t: list(v) for t, v in plain.items()},
          "indent=2 is indexed too")
    check(srv.index_json_layout(json.dumps(plain).encode()) is None, "one-line JSON is not indexed")
    check(srv.index_json_layout(json.dumps(plain, indent=4, separators=(", ", ": ")).encode()) is None,
          "trailing spaces are not indexed")
    # Lazy tables against the plain dicts (fix applied), and the pristine hash.
    base = srv.BaseDB(path=os.path.join(DATA, "retail", "db.json"), fixes={"orders": srv._fix_order})
    st = srv.Store(base)
    check(all(st.keys(t) == list(db[t]) for t in db), "Store keys")
    check(all(st.get(t, k) == v for t in db for k, v in db[t].items()), "Store entities")
    fresh = srv.BaseDB(path=os.path.join(DATA, "retail", "db.json"), fixes={"orders": srv._fix_order})
    ot = fresh.tables["orders"]
    some = list(db["orders"])[::7]
    check(list(ot.peek_all(some, block=3000)) == [(k, db["orders"][k]) for k in some] and not ot.cache,
          "peek_all in blocks")
    emails = list(fresh.tables["users"].fields("e", lambda u: u["email"], batch=7))
    check(emails == [(k, u["email"]) for k, u in db["users"].items()], "fields in batches")
    check(srv.hash_stores([st]) == [INIT_HASH] == [sha(db)], "lazy pristine hash")
    # Copy-on-write against a deep copy of the dicts: merge (into entities, new keys, a new table),
    # put, w; order of keys, entities and hashes.
    ref = copy.deepcopy(db)
    patch = {"users": {"noah_brown_6181": {"email": "ZZ@example.com", "address": {"zip": "11111"}},
                       "zz_new_1": dict(db["users"]["noah_brown_6181"], user_id="zz_new_1")},
             "coupons": {"c1": {"code": "X"}},
             "products": {"9523456873": {"name": "T-Shirt 2"}}}
    st.merge(patch)
    ref["users"]["noah_brown_6181"]["email"] = "ZZ@example.com"
    ref["users"]["noah_brown_6181"]["address"]["zip"] = "11111"
    ref["users"]["zz_new_1"] = dict(db["users"]["noah_brown_6181"], user_id="zz_new_1")
    ref["coupons"] = {"c1": {"code": "X"}}
    ref["products"]["9523456873"]["name"] = "T-Shirt 2"
    st.w("orders", "#W2378156")["status"] = "x"
    ref["orders"]["#W2378156"]["status"] = "x"
    st.put("orders", "#W0", {"order_id": "#W0"})
    ref["orders"]["#W0"] = {"order_id": "#W0"}
    st2 = srv.Store(base)
    st2.w("users", "noah_brown_6181")["orders"].append("#W1")
    ref2 = copy.deepcopy(db)
    ref2["users"]["noah_brown_6181"]["orders"].append("#W1")
    check(all(st.keys(t) == list(ref[t]) for t in ref) and st.size("orders") == 1001, "overlay keys")
    check(all(st.get(t, k) == v for t in ref for k, v in ref[t].items()), "overlay entities")
    check(db["users"]["noah_brown_6181"] == base.tables["users"].get("noah_brown_6181"), "base untouched")
    check(srv.hash_stores([st, st2, srv.Store(base)]) == [sha(ref), sha(ref2), INIT_HASH], "overlay hashes")
    check(srv.hash_stores([st2, st]) == [sha(ref2), sha(ref)], "overlay hashes, kept fragments")
    return n


def test_layouts(rows):
    """Subprocesses on the same DB written differently: indent=2 (indexed) and one line (parsed whole)."""
    by_id = {r["id"]: r for r in rows}
    with open(os.path.join(DATA, "retail", "db.json"), "rb") as f:
        plain = json.loads(f.read())
    n = 0
    for name, text in (("indent2", json.dumps(plain, indent=2)), ("oneline", json.dumps(plain))):
        d = tempfile.mkdtemp(prefix="tau2_layout_")
        try:
            os.makedirs(os.path.join(d, "retail"))
            with open(os.path.join(d, "retail", "db.json"), "w") as f:
                f.write(text)
            shutil.copy(os.path.join(DATA, "retail", "tasks.json"), os.path.join(d, "retail"))
            c = Client("retail", "--data", d)
            check(c.result("matrix/db_hash")["db_hash"] == INIT_HASH, "%s: initial hash" % name)
            for tid in ("0", "35", "67", "105"):
                res, errors = episode(c, by_id[tid])
                check(res["reward"] == 1.0 and prefix_ok(res["breakdown"]["gold_db_hash"], GOLD_PREFIX[tid])
                      and errors == EXPECTED_ERRORS.get(tid, {}), "%s: task %s %s" % (name, tid, res))
            c.close()
            n += 1
        finally:
            shutil.rmtree(d)
    return n


def test_scans_over_writes():
    """Scanning tools see the episode's writes and added entities, in table order."""
    _raw, db = load_retail_db()
    noah = db["users"]["noah_brown_6181"]
    new_user = dict(copy.deepcopy(noah), user_id="zz_new_1", email="New@Example.com")
    variant = {"item_id": "1111111111", "options": {"color": "red"}, "available": True, "price": 1.5}
    task = {"id": "scan-test", "initial_state": {"initialization_data": {"agent_data": {
        "users": {"noah_brown_6181": {"email": "zz@example.com"}, "zz_new_1": new_user},
        "products": {"9523456873": {"name": "T-Shirt 2"},
                     "9999999999": {"name": "Aardvark", "product_id": "9999999999",
                                    "variants": {"1111111111": variant}}},
        "coupons": {"c1": {"code": "X"}}}}}}
    ref = copy.deepcopy(db)
    ref["users"]["noah_brown_6181"]["email"] = "zz@example.com"
    ref["users"]["zz_new_1"] = new_user
    ref["products"]["9523456873"]["name"] = "T-Shirt 2"
    ref["products"]["9999999999"] = task["initial_state"]["initialization_data"]["agent_data"]["products"]["9999999999"]
    ref["coupons"] = {"c1": {"code": "X"}}
    c = Client("retail")
    c.start({"task": task})
    want = [
        ("find_user_id_by_email", {"email": "ZZ@EXAMPLE.com"}, "noah_brown_6181", False),
        ("find_user_id_by_email", {"email": "noah.brown7922@example.com"}, "Error: User not found", True),
        ("find_user_id_by_email", {"email": "new@example.com"}, "zz_new_1", False),
        ("find_user_id_by_name_zip", {"first_name": "noah", "last_name": "BROWN", "zip": "80279"},
         "noah_brown_6181", False),
        ("get_item_details", {"item_id": "1111111111"}, json.dumps(variant), False),
        ("get_item_details", {"item_id": "9612497925"},
         json.dumps(db["products"]["9523456873"]["variants"]["9612497925"]), False),
        ("get_item_details", {"item_id": "0"}, "Error: Item not found", True),
        ("list_all_product_types", {},
         json.dumps({p["name"]: k for k, p in ref["products"].items()}, sort_keys=True), False),
    ]
    for name, args, out, err in want:
        got = c.call(name, args)
        check(got == (out, err), "%s(%s) -> %r" % (name, args, got[0][:120]))
    c.call("modify_user_address", {"user_id": "zz_new_1", "address1": "a", "address2": "", "city": "c",
                                   "state": "s", "country": "x", "zip": "00000"})
    ref["users"]["zz_new_1"]["address"] = {"address1": "a", "address2": "", "city": "c", "country": "x",
                                          "state": "s", "zip": "00000"}
    got = c.call("find_user_id_by_name_zip", {"first_name": "Noah", "last_name": "Brown", "zip": "00000"})
    check(got == ("zz_new_1", False), "name/zip scan sees a write: %r" % (got,))
    check(c.result("matrix/db_hash")["db_hash"] == sha(ref), "hash with added entities and a new table")
    c.close()
    return len(want) + 2


def main():
    t0 = time.perf_counter()
    rows = load_rows("retail_tasks.jsonl")
    check(len(rows) == 114, "114 retail rows")
    retail_passed, neg_drop, neg_rev = test_retail(rows)
    procs = test_fresh_processes(rows)
    mock_passed, mock_n = test_mock()
    lazy_n = test_lazy_db()
    layouts = test_layouts(rows)
    scans = test_scans_over_writes()
    total = time.perf_counter() - t0
    spawn = STATS["spawn"]
    print("retail gold replay: %d/%d tasks passed (reward 1.0, gold hash, expected errors)" % (retail_passed, len(rows)))
    print("negatives: %d drop-last-write, %d reversed multi-item modify -> reward 0" % (neg_drop, neg_rev))
    print("fresh server processes: %d; mock: %d/%d tasks passed" % (procs, mock_passed, mock_n))
    print("lazy DB: JSON layer (%d values), index, overlays and hashes agree with json; %d other file layouts; "
          "%d scans over writes" % (lazy_n, layouts, scans))
    print("server start (spawn -> initialize reply): mean %.1f ms, max %.1f ms over %d starts"
          % (1000 * sum(spawn) / len(spawn), 1000 * max(spawn), len(spawn)))
    print("tools/call round trip: mean %.3f ms over %d calls" % (1000 * STATS["call_s"] / STATS["calls"], STATS["calls"]))
    print("matrix/start_episode round trip (fresh DB copy + initial_state): mean %.3f ms over %d"
          % (1000 * STATS["start_s"] / STATS["starts"], STATS["starts"]))
    print("matrix/reward round trip (incl. gold env on first use): mean %.2f ms over %d"
          % (1000 * STATS["reward_s"] / STATS["rewards"], STATS["rewards"]))
    print("total %.2f s" % total)
    if FAILURES:
        print("FAILED: %d check(s)" % len(FAILURES))
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
