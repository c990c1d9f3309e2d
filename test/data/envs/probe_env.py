#!/usr/bin/python3
"""A small MCP server (stdio, JSON-RPC 2.0, one message per line) whose tools
probe the sandbox around it: echo, a per-session counter, sleeping, allocating
memory, forking, connecting to a TCP port, writing a file and exiting."""
import json
import os
import socket
import sys
import time

TOOLS = [
    {"name": "echo", "description": "Echo the text.",
     "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
    {"name": "count", "description": "Add one to this session's counter and return it.",
     "inputSchema": {"type": "object", "properties": {}}},
    {"name": "sleep", "description": "Sleep for some seconds.",
     "inputSchema": {"type": "object", "properties": {"seconds": {"type": "number"}}, "required": ["seconds"]}},
    {"name": "alloc", "description": "Allocate and touch megabytes of memory.",
     "inputSchema": {"type": "object", "properties": {"mb": {"type": "integer"}}, "required": ["mb"]}},
    {"name": "fork", "description": "Start child processes that sleep.",
     "inputSchema": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}},
    {"name": "connect", "description": "Open a TCP connection to 127.0.0.1:port.",
     "inputSchema": {"type": "object", "properties": {"port": {"type": "integer"}}, "required": ["port"]}},
    {"name": "write", "description": "Write a file of some megabytes in the working directory.",
     "inputSchema": {"type": "object", "properties": {"mb": {"type": "integer"}}, "required": ["mb"]}},
    {"name": "exit", "description": "Exit the server process.",
     "inputSchema": {"type": "object", "properties": {"code": {"type": "integer"}}}},
    {"name": "whoami", "description": "Process facts: uid, pid, cwd, whether $HOME is writable.",
     "inputSchema": {"type": "object", "properties": {}}},
]

counter = 0
episode = None


def call(name, args):
    global counter
    if name == "echo":
        return str(args["text"])
    if name == "count":
        counter += 1
        return str(counter)
    if name == "sleep":
        time.sleep(float(args["seconds"]))
        return "slept"
    if name == "alloc":
        block = bytearray(int(args["mb"]) * 1024 * 1024)
        for i in range(0, len(block), 4096):
            block[i] = 1
        return "allocated %d MB" % args["mb"]
    if name == "fork":
        pids = []
        for _ in range(int(args["n"])):
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            pids.append(pid)
        return "forked %d" % len(pids)
    if name == "connect":
        s = socket.create_connection(("127.0.0.1", int(args["port"])), timeout=2)
        s.close()
        return "connected"
    if name == "write":
        with open("blob.bin", "wb") as f:
            for _ in range(int(args["mb"])):
                f.write(b"\0" * 1024 * 1024)
        return "wrote"
    if name == "exit":
        sys.stdout.flush()
        os._exit(int(args.get("code", 3)))
    if name == "whoami":
        return json.dumps({"uid": os.getuid(), "pid": os.getpid(), "cwd": os.getcwd(),
                           "episode": episode})
    raise KeyError(name)


def reply(msg_id, result=None, error=None):
    out = {"jsonrpc": "2.0", "id": msg_id}
    if error is not None:
        out["error"] = error
    else:
        out["result"] = result
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


def main():
    global episode
    for raw in sys.stdin.buffer:
        try:
            msg = json.loads(raw.decode("utf-8", "replace"))
        except ValueError:
            reply(None, error={"code": -32700, "message": "parse error"})
            continue
        if "id" not in msg:
            continue
        method, params, msg_id = msg.get("method"), msg.get("params") or {}, msg["id"]
        if method == "initialize":
            caps = {"tools": {}}
            if "--episode" in sys.argv:
                caps["experimental"] = {"matrix/episode": {"version": 1}}
            reply(msg_id, {"protocolVersion": "2025-06-18", "capabilities": caps,
                           "serverInfo": {"name": "probe", "version": "1"}})
        elif method == "tools/list":
            reply(msg_id, {"tools": TOOLS})
        elif method == "tools/call":
            name = params.get("name")
            if name not in [t["name"] for t in TOOLS]:
                reply(msg_id, error={"code": -32602, "message": "Unknown tool: %s" % name})
                continue
            try:
                reply(msg_id, {"content": [{"type": "text", "text": call(name, params.get("arguments") or {})}],
                               "isError": False})
            except Exception as e:  # the tool failed: the model sees why
                reply(msg_id, {"content": [{"type": "text", "text": "%s: %s" % (type(e).__name__, e)}],
                               "isError": True})
        elif method == "matrix/start_episode":
            episode = params.get("input")
            reply(msg_id, {"ok": True})
        elif method == "matrix/reward":
            reply(msg_id, {"reward": float(counter), "breakdown": {"count": counter,
                                                                   "messages": len(params.get("messages", []))}})
        else:
            reply(msg_id, error={"code": -32601, "message": "method not found"})


if __name__ == "__main__":
    main()
