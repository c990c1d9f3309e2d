#!/usr/bin/python3
"""Tau2-bench retail and mock tool environments as one MCP server (stdio).

Usage: tau2_env.py --domain retail|mock [--data DIR] [--strict-user-db] [-v]

The server is the module tau2_server.py next to this file (see its docstring
for the protocol). This entry point only imports it, so that its bytecode is
read from __pycache__/ instead of compiled at every start: compiling costs
tens of ms and leaves some 5 MB of heap behind in every process. The bytecode
is written even under PYTHONDONTWRITEBYTECODE (where the folder is writable);
for a read-only checkout, run `python3 -m compileall envs/tau2` once.
Standard library only. Data: tau2-bench (MIT), see data/LICENSE.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if sys.path[:1] != [_here]:
    sys.path.insert(0, _here)  # -I / -P leave the script's folder off sys.path

_no_pyc = sys.dont_write_bytecode
sys.dont_write_bytecode = False
try:
    from tau2_server import main  # noqa: E402
finally:
    sys.dont_write_bytecode = _no_pyc

if __name__ == "__main__":
    sys.exit(main())
