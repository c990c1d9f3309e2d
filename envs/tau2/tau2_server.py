#!/usr/bin/python3
"""Tau2-bench retail and mock tool environments as one MCP server (stdio).

Usage: tau2_env.py --domain retail|mock [--data DIR] [--strict-user-db] [-v]

Transport: JSON-RPC 2.0, one JSON message per line on stdin/stdout (UTF-8).
Nothing but protocol messages is written to stdout; logs go to stderr.

Methods:
  initialize, notifications/initialized, ping, tools/list, tools/call
  matrix/start_episode  {"input": <dataset row>, "seed": <int>}
                        -> {"ok": true, "task_id": <str|null>}
  matrix/reward         {"messages": [...], "termination": "<reason>"}
                        -> {"reward": float, "breakdown": {...}}
  matrix/db_hash        {} -> {"db_hash": str, "user_db_hash": str|null}

Standard library only. Data: tau2-bench (MIT), see data/LICENSE.
"""

import argparse
import ast
import hashlib
import json
import math
import os
import sys
import time
from collections import Counter, OrderedDict

DEFAULT_PROTOCOL = "2025-06-18"
MAX_TOOL_ERRORS = 10
STOP_TERMINATIONS = ("user_stop", "agent_stop")
ORDER_OPTIONAL_FIELDS = (
    "cancel_reason",
    "exchange_items",
    "exchange_new_items",
    "exchange_payment_method_id",
    "exchange_price_difference",
    "return_items",
    "return_payment_method_id",
)

VERBOSE = False


def log(msg):
    try:
        sys.stderr.write("[tau2_env] %s\n" % msg)
        sys.stderr.flush()
    except Exception:
        pass


class ToolError(Exception):
    """A failed check inside a tool: reported as `Error: <message>`."""


def r2(x):
    return float(round(x, 2))


def ecopy(x):
    """Deep copy of a JSON value (dicts, lists, scalars)."""
    t = type(x)
    if t is dict:
        return {k: ecopy(v) for k, v in x.items()}
    if t is list:
        return [ecopy(v) for v in x]
    return x


def deep_merge(dst, src):
    for k, v in src.items():
        if k in dst and isinstance(dst[k], dict) and isinstance(v, dict):
            deep_merge(dst[k], v)
        else:
            dst[k] = ecopy(v)


# ---------------------------------------------------------------------------
# Copy-on-write database
# ---------------------------------------------------------------------------


class BaseDB:
    """The pristine DB as loaded from disk: {table: {key: entity}}. Never mutated."""

    def __init__(self, obj):
        if not isinstance(obj, dict) or not all(isinstance(v, dict) for v in obj.values()):
            raise ValueError("DB must be an object of tables (objects)")
        self.tables = obj
        self.frag = {name: {} for name in obj}  # cached json.dumps(entity, sort_keys=True)


class Store:
    """Per-episode view of a BaseDB.

    Tables are shallow copies; an entity is deep-copied the first time it is
    written (`w`). Entities still identical (`is`) to the base object reuse a
    cached serialisation for hashing, so an episode costs three dict copies and
    a hash costs one join plus sha256.
    """

    def __init__(self, base):
        self.base = base
        self.t = {name: dict(tab) for name, tab in base.tables.items()}

    def table(self, name):
        return self.t[name]

    def get(self, table, key):
        return self.t[table].get(key)

    def w(self, table, key):
        tab = self.t[table]
        ent = tab[key]
        if ent is self.base.tables.get(table, {}).get(key):
            ent = ecopy(ent)
            tab[key] = ent
        return ent

    def put(self, table, key, value):
        self.t.setdefault(table, {})[key] = value

    def merge(self, data):
        """Recursive dict merge (lists and scalars replaced)."""
        for tname, tval in data.items():
            if tname in self.t and isinstance(tval, dict):
                tab = self.t[tname]
                for key, val in tval.items():
                    if key in tab and isinstance(tab[key], dict) and isinstance(val, dict):
                        deep_merge(self.w(tname, key), val)
                    else:
                        tab[key] = ecopy(val)
            elif isinstance(tval, dict):
                self.t[tname] = ecopy(tval)
            else:
                raise ValueError("cannot merge non-object into table %r" % tname)

    def canonical(self):
        """Exactly json.dumps(db, sort_keys=True) with Python's default separators."""
        dumps = json.dumps
        parts = []
        for tname in sorted(self.t):
            tab = self.t[tname]
            btab = self.base.tables.get(tname, {})
            cache = self.base.frag.setdefault(tname, {})
            items = []
            for k in sorted(tab):
                v = tab[k]
                if v is btab.get(k):
                    s = cache.get(k)
                    if s is None:
                        s = cache[k] = dumps(v, sort_keys=True)
                else:
                    s = dumps(v, sort_keys=True)
                items.append(dumps(k) + ": " + s)
            parts.append(dumps(tname) + ": {" + ", ".join(items) + "}")
        return "{" + ", ".join(parts) + "}"

    def hash(self):
        return hashlib.sha256(self.canonical().encode("utf-8")).hexdigest()

    def snapshot(self):
        return {name: dict(tab) for name, tab in self.t.items()}


# ---------------------------------------------------------------------------
# Tool definitions and argument validation
# ---------------------------------------------------------------------------

RETAIL_SCHEMAS = json.loads(r"""
[
{"name":"calculate","description":"Evaluate an arithmetic expression; result rounded to 2 decimals.","parameters":{"type":"object","properties":{"expression":{"type":"string","description":"Digits, + - * / ( ) . and spaces, e.g. '2 + 2'."}},"required":["expression"]}},
{"name":"cancel_pending_order","description":"Cancel a pending order. Explain and get an explicit yes first. Status becomes 'cancelled'; payments are refunded (gift card: immediately; others: 5-7 business days). Returns the order.","parameters":{"type":"object","properties":{"order_id":{"type":"string","description":"Includes the leading '#', e.g. '#W0000000'."},"reason":{"type":"string","description":"'no longer needed' or 'ordered by mistake'."}},"required":["order_id","reason"]}},
{"name":"exchange_delivered_order_items","description":"Exchange items of a delivered order for available items of the same product. A delivered order can be returned or exchanged only once. Explain and get an explicit yes first. Returns the order.","parameters":{"type":"object","properties":{"order_id":{"type":"string"},"item_ids":{"type":"array","items":{"type":"string"},"description":"May repeat."},"new_item_ids":{"type":"array","items":{"type":"string"},"description":"Position-wise replacements of the same product; may repeat."},"payment_method_id":{"type":"string","description":"Pays or receives the price difference, e.g. 'gift_card_0000000'."}},"required":["order_id","item_ids","new_item_ids","payment_method_id"]}},
{"name":"find_user_id_by_name_zip","description":"Find a user id by first name, last name and zip. Try email first; use this only if email fails or is unknown.","parameters":{"type":"object","properties":{"first_name":{"type":"string"},"last_name":{"type":"string"},"zip":{"type":"string"}},"required":["first_name","last_name","zip"]}},
{"name":"find_user_id_by_email","description":"Find a user id by email.","parameters":{"type":"object","properties":{"email":{"type":"string"}},"required":["email"]}},
{"name":"get_order_details","description":"Get status and details of an order (id includes '#').","parameters":{"type":"object","properties":{"order_id":{"type":"string"}},"required":["order_id"]}},
{"name":"get_product_details","description":"Get a product and its variants. Product id is not item id.","parameters":{"type":"object","properties":{"product_id":{"type":"string"}},"required":["product_id"]}},
{"name":"get_item_details","description":"Get one item (variant). Item id is not product id.","parameters":{"type":"object","properties":{"item_id":{"type":"string"}},"required":["item_id"]}},
{"name":"get_user_details","description":"Get a user's profile, payment methods and order ids.","parameters":{"type":"object","properties":{"user_id":{"type":"string","description":"e.g. 'sara_doe_496'"}},"required":["user_id"]}},
{"name":"list_all_product_types","description":"List the 50 product types as JSON {name: product_id}, sorted by name.","parameters":{"type":"object","properties":{}}},
{"name":"modify_pending_order_address","description":"Change the shipping address of a pending order. Explain and get an explicit yes first. Returns the order.","parameters":{"type":"object","properties":{"order_id":{"type":"string"},"address1":{"type":"string"},"address2":{"type":"string","description":"may be ''"},"city":{"type":"string"},"state":{"type":"string"},"country":{"type":"string"},"zip":{"type":"string"}},"required":["order_id","address1","address2","city","state","country","zip"]}},
{"name":"modify_pending_order_items","description":"Change items of a pending order to available items of the same product; only once per order. Explain and get an explicit yes first. Returns the order.","parameters":{"type":"object","properties":{"order_id":{"type":"string"},"item_ids":{"type":"array","items":{"type":"string"}},"new_item_ids":{"type":"array","items":{"type":"string"},"description":"Same positions, same product, different item."},"payment_method_id":{"type":"string","description":"Pays or receives the price difference."}},"required":["order_id","item_ids","new_item_ids","payment_method_id"]}},
{"name":"modify_pending_order_payment","description":"Switch a pending order to another payment method. Explain and get an explicit yes first. Returns the order.","parameters":{"type":"object","properties":{"order_id":{"type":"string"},"payment_method_id":{"type":"string"}},"required":["order_id","payment_method_id"]}},
{"name":"modify_user_address","description":"Change a user's default address. Explain and get an explicit yes first. Returns the user.","parameters":{"type":"object","properties":{"user_id":{"type":"string"},"address1":{"type":"string"},"address2":{"type":"string"},"city":{"type":"string"},"state":{"type":"string"},"country":{"type":"string"},"zip":{"type":"string"}},"required":["user_id","address1","address2","city","state","country","zip"]}},
{"name":"return_delivered_order_items","description":"Return items of a delivered order; status becomes 'return requested'. Explain and get an explicit yes first. Returns the order.","parameters":{"type":"object","properties":{"order_id":{"type":"string"},"item_ids":{"type":"array","items":{"type":"string"},"description":"May repeat."},"payment_method_id":{"type":"string","description":"Refund target: the original method or a gift card of the user."}},"required":["order_id","item_ids","payment_method_id"]}},
{"name":"transfer_to_human_agents","description":"Transfer to a human agent, only if the user asks for one or the policy and tools cannot solve the issue.","parameters":{"type":"object","properties":{"summary":{"type":"string"}},"required":["summary"]}}
]
""")

RETAIL_KINDS = {
    "calculate": "generic",
    "transfer_to_human_agents": "generic",
    "cancel_pending_order": "write",
    "exchange_delivered_order_items": "write",
    "modify_pending_order_address": "write",
    "modify_pending_order_items": "write",
    "modify_pending_order_payment": "write",
    "modify_user_address": "write",
    "return_delivered_order_items": "write",
}

TRANSFER_SCHEMA = RETAIL_SCHEMAS[-1]

MOCK_ASSISTANT_SCHEMAS = [
    {"name": "create_task",
     "description": "Create a task for an existing user. A title is required; the description is optional. Returns the new task.",
     "parameters": {"type": "object", "properties": {
         "user_id": {"type": "string", "description": "Id of an existing user, e.g. 'user_1'."},
         "title": {"type": "string", "description": "Title of the task."},
         "description": {"type": "string", "description": "Optional longer description."}},
         "required": ["user_id", "title"]}},
    {"name": "get_users",
     "description": "List all users with their task ids.",
     "parameters": {"type": "object", "properties": {}}},
    {"name": "update_task_status",
     "description": "Set the status of an existing task. Returns the task.",
     "parameters": {"type": "object", "properties": {
         "task_id": {"type": "string", "description": "e.g. 'task_1'"},
         "status": {"type": "string", "enum": ["pending", "completed"]}},
         "required": ["task_id", "status"]}},
    TRANSFER_SCHEMA,
]
MOCK_ASSISTANT_KINDS = {"create_task": "write", "get_users": "read",
                        "update_task_status": "write", "transfer_to_human_agents": "generic"}

MOCK_USER_SCHEMAS = [
    {"name": "check_notifications",
     "description": "Show all notifications in your inbox.",
     "parameters": {"type": "object", "properties": {}}},
    {"name": "dismiss_notification",
     "description": "Mark one notification as read.",
     "parameters": {"type": "object", "properties": {
         "notification_id": {"type": "string", "description": "e.g. 'notif_1'"}},
         "required": ["notification_id"]}},
]
MOCK_USER_KINDS = {"check_notifications": "read", "dismiss_notification": "write"}

_JSON_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean",
                    list: "array", dict: "object", type(None): "null"}


def _type_name(v):
    return _JSON_TYPE_NAMES.get(type(v), type(v).__name__)


class Tool:
    __slots__ = ("name", "fn", "kind", "schema", "props", "required")

    def __init__(self, schema, fn, kind):
        self.name = schema["name"]
        self.fn = fn
        self.kind = kind
        self.schema = schema
        params = schema.get("parameters") or {}
        self.props = params.get("properties") or {}
        self.required = list(params.get("required") or [])

    def mcp(self):
        return {"name": self.name, "description": self.schema.get("description", ""),
                "inputSchema": self.schema.get("parameters") or {"type": "object", "properties": {}}}

    def check_args(self, args):
        missing = [p for p in self.required if p not in args]
        if missing:
            raise ToolError("%s() missing required argument%s: %s" % (
                self.name, "s" if len(missing) > 1 else "", ", ".join("'%s'" % m for m in missing)))
        extra = [k for k in args if k not in self.props]
        if extra:
            raise ToolError("%s() got unexpected argument%s: %s" % (
                self.name, "s" if len(extra) > 1 else "", ", ".join("'%s'" % k for k in extra)))
        for k, v in args.items():
            spec = self.props[k]
            if v is None and k not in self.required:
                continue
            want = spec.get("type")
            if want == "string":
                if not isinstance(v, str):
                    raise ToolError("argument '%s' must be a string, got %s" % (k, _type_name(v)))
                enum = spec.get("enum")
                if enum is not None and v not in enum:
                    raise ToolError("argument '%s' must be one of %s, got %s" % (
                        k, ", ".join(json.dumps(e) for e in enum), json.dumps(v)))
            elif want == "array":
                if not isinstance(v, list):
                    raise ToolError("argument '%s' must be an array, got %s" % (k, _type_name(v)))
                if (spec.get("items") or {}).get("type") == "string":
                    for i, e in enumerate(v):
                        if not isinstance(e, str):
                            raise ToolError("argument '%s'[%d] must be a string, got %s" % (k, i, _type_name(e)))


def result_text(v):
    if isinstance(v, str):
        return v
    return json.dumps(v, ensure_ascii=False)


# ---------------------------------------------------------------------------
# calculate(): Python arithmetic over a safe AST
# ---------------------------------------------------------------------------

_CALC_CHARS = frozenset("0123456789+-*/(). ")
_MAX_INT_BITS = 1 << 20


def _calc_eval(node):
    if isinstance(node, ast.Constant):
        if type(node.value) in (int, float):
            return node.value
        raise ToolError("Invalid expression")
    if isinstance(node, ast.UnaryOp):
        v = _calc_eval(node.operand)
        if isinstance(node.op, ast.USub):
            return -v
        if isinstance(node.op, ast.UAdd):
            return +v
        raise ToolError("Invalid expression")
    if isinstance(node, ast.BinOp):
        a = _calc_eval(node.left)
        b = _calc_eval(node.right)
        op = node.op
        if isinstance(op, ast.Add):
            return a + b
        if isinstance(op, ast.Sub):
            return a - b
        if isinstance(op, ast.Mult):
            if type(a) is int and type(b) is int and a.bit_length() + b.bit_length() > _MAX_INT_BITS:
                raise ToolError("Result too large")
            return a * b
        if isinstance(op, ast.Div):
            return a / b
        if isinstance(op, ast.FloorDiv):
            return a // b
        if isinstance(op, ast.Pow):
            if type(a) is int and type(b) is int and b > 0 and abs(a) > 1:
                if b * math.log2(abs(a)) > _MAX_INT_BITS:
                    raise ToolError("Result too large")
            return a ** b
        raise ToolError("Invalid expression")
    raise ToolError("Invalid expression")


def calculate(expression):
    if any(c not in _CALC_CHARS for c in expression):
        raise ToolError("Invalid characters in expression")
    try:
        tree = ast.parse(expression.lstrip(" "), mode="eval")
    except (SyntaxError, ValueError) as e:
        raise ToolError("Invalid expression: %s" % (getattr(e, "msg", None) or e))
    except RecursionError:
        raise ToolError("Expression too deeply nested")
    try:
        v = _calc_eval(tree.body)
    except ToolError:
        raise
    except ZeroDivisionError:
        raise ToolError("division by zero")
    except RecursionError:
        raise ToolError("Expression too deeply nested")
    except (OverflowError, MemoryError):
        raise ToolError("Result too large")
    if isinstance(v, complex):
        raise ToolError("Complex result")
    try:
        return repr(round(float(v), 2))
    except OverflowError:
        raise ToolError("Result too large")


# ---------------------------------------------------------------------------
# Domains
# ---------------------------------------------------------------------------


class DomainData:
    """Everything loaded once per process for a domain."""

    def __init__(self, domain, data_dir):
        self.domain = domain
        self.data_dir = data_dir
        ddir = os.path.join(data_dir, domain)
        with open(os.path.join(ddir, "db.json"), "rb") as f:
            db = json.loads(f.read())
        if domain == "retail":
            for order in db.get("orders", {}).values():
                for k in ORDER_OPTIONAL_FIELDS:
                    order.setdefault(k, None)
        self.base = BaseDB(db)
        self.user_base = None
        upath = os.path.join(ddir, "user_db.json")
        if domain == "mock" and os.path.exists(upath):
            with open(upath, "rb") as f:
                self.user_base = BaseDB(json.loads(f.read()))
        self._tasks = None

    def tasks(self):
        if self._tasks is None:
            with open(os.path.join(self.data_dir, self.domain, "tasks.json"), "rb") as f:
                self._tasks = {str(t["id"]): t for t in json.loads(f.read())}
        return self._tasks


class RetailEnv:
    def __init__(self, data):
        self.data = data
        self.s = Store(data.base)
        self.user_s = None
        self.toolkits = {"assistant": {}, "user": {}}
        for schema in RETAIL_SCHEMAS:
            name = schema["name"]
            self.toolkits["assistant"][name] = Tool(schema, getattr(self, name), RETAIL_KINDS.get(name, "read"))
        self.helpers = {"assistant": {}, "user": {}}

    # --- lookups -----------------------------------------------------------
    def _order(self, order_id):
        o = self.s.get("orders", order_id)
        if o is None:
            raise ToolError("Order not found")
        return o

    def _user(self, user_id):
        u = self.s.get("users", user_id)
        if u is None:
            raise ToolError("User not found")
        return u

    def _product(self, product_id):
        p = self.s.get("products", product_id)
        if p is None:
            raise ToolError("Product not found")
        return p

    def _method(self, order, pm_id):
        user = self._user(order["user_id"])
        pm = user["payment_methods"].get(pm_id)
        if pm is None:
            raise ToolError("Payment method not found")
        return pm

    def _gift_add(self, user_id, pm_id, delta):
        pm = self.s.w("users", user_id)["payment_methods"][pm_id]
        pm["balance"] = r2(pm["balance"] + delta)

    @staticmethod
    def _count_check(order, item_ids, message):
        have = Counter(it["item_id"] for it in order["items"])
        for iid, n in Counter(item_ids).items():
            if n > have.get(iid, 0):
                raise ToolError(message(iid))

    @staticmethod
    def _first_item(items, item_id):
        for it in items:
            if it["item_id"] == item_id:
                return it
        raise ToolError("%s not found" % item_id)

    def _pair_loop(self, order, item_ids, new_item_ids, allow_same):
        diff = 0
        last = None
        for a, b in zip(item_ids, new_item_ids):
            if a == b and not allow_same:
                raise ToolError("The new item id should be different from the old item id")
            old = self._first_item(order["items"], a)
            product = self._product(old["product_id"])
            variant = product["variants"].get(b)
            if variant is None:
                raise ToolError("Variant not found")
            if not variant.get("available"):
                raise ToolError("New item %s not found or available" % b)
            diff += variant["price"] - old["price"]
            last = variant
        return diff, last

    @staticmethod
    def _address(address1, address2, city, state, country, zip):
        return {"address1": address1, "address2": address2, "city": city,
                "country": country, "state": state, "zip": zip}

    # --- read / generic tools ----------------------------------------------
    def calculate(self, expression):
        return calculate(expression)

    def transfer_to_human_agents(self, summary):
        return "Transfer successful"

    def find_user_id_by_email(self, email):
        want = email.lower()
        for uid, u in self.s.table("users").items():
            if u["email"].lower() == want:
                return uid
        raise ToolError("User not found")

    def find_user_id_by_name_zip(self, first_name, last_name, zip):
        fn, ln = first_name.lower(), last_name.lower()
        for uid, u in self.s.table("users").items():
            if (u["name"]["first_name"].lower() == fn and u["name"]["last_name"].lower() == ln
                    and u["address"]["zip"] == zip):
                return uid
        raise ToolError("User not found")

    def get_order_details(self, order_id):
        return self._order(order_id)

    def get_product_details(self, product_id):
        return self._product(product_id)

    def get_user_details(self, user_id):
        return self._user(user_id)

    def get_item_details(self, item_id):
        for p in self.s.table("products").values():
            v = p["variants"].get(item_id)
            if v is not None:
                return v
        raise ToolError("Item not found")

    def list_all_product_types(self):
        return json.dumps({p["name"]: pid for pid, p in self.s.table("products").items()}, sort_keys=True)

    # --- write tools -------------------------------------------------------
    def cancel_pending_order(self, order_id, reason):
        order = self._order(order_id)
        if order["status"] != "pending":
            raise ToolError("Non-pending order cannot be cancelled")
        if reason not in ("no longer needed", "ordered by mistake"):
            raise ToolError("Invalid reason")
        refunds = []
        for p in list(order["payment_history"]):
            pm_id = p["payment_method_id"]
            refunds.append({"transaction_type": "refund", "amount": p["amount"], "payment_method_id": pm_id})
            pm = self._method(order, pm_id)  # no rollback of earlier balance changes
            if pm.get("source") == "gift_card":
                self._gift_add(order["user_id"], pm_id, p["amount"])
        order = self.s.w("orders", order_id)
        order["status"] = "cancelled"
        order["cancel_reason"] = reason
        order["payment_history"].extend(refunds)
        return order

    def modify_pending_order_address(self, order_id, address1, address2, city, state, country, zip):
        order = self._order(order_id)
        if "pending" not in order["status"]:
            raise ToolError("Non-pending order cannot be modified")
        order = self.s.w("orders", order_id)
        order["address"] = self._address(address1, address2, city, state, country, zip)
        return order

    def modify_user_address(self, user_id, address1, address2, city, state, country, zip):
        self._user(user_id)
        user = self.s.w("users", user_id)
        user["address"] = self._address(address1, address2, city, state, country, zip)
        return user

    def modify_pending_order_payment(self, order_id, payment_method_id):
        order = self._order(order_id)
        if "pending" not in order["status"]:
            raise ToolError("Non-pending order cannot be modified")
        new_pm = self._method(order, payment_method_id)
        ph = order["payment_history"]
        if not (len(ph) == 1 and ph[0]["transaction_type"] == "payment"):
            raise ToolError("There should be exactly one payment for a pending order")
        old_id = ph[0]["payment_method_id"]
        if payment_method_id == old_id:
            raise ToolError("The new payment method should be different from the current one")
        amt = ph[0]["amount"]
        if new_pm.get("source") == "gift_card" and new_pm["balance"] < amt:
            raise ToolError("Insufficient gift card balance to pay for the order")
        uid = order["user_id"]
        order = self.s.w("orders", order_id)
        order["payment_history"].append(
            {"transaction_type": "payment", "amount": amt, "payment_method_id": payment_method_id})
        order["payment_history"].append(
            {"transaction_type": "refund", "amount": amt, "payment_method_id": old_id})
        if new_pm.get("source") == "gift_card":
            self._gift_add(uid, payment_method_id, -amt)
        old_pm = self._user(uid)["payment_methods"].get(old_id)
        if old_pm is not None and old_pm.get("source") == "gift_card":
            self._gift_add(uid, old_id, amt)
        return order

    def modify_pending_order_items(self, order_id, item_ids, new_item_ids, payment_method_id):
        order = self._order(order_id)
        if order["status"] != "pending":
            raise ToolError("Non-pending order cannot be modified")
        self._count_check(order, item_ids, lambda i: "%s not found" % i)
        if len(item_ids) != len(new_item_ids):
            raise ToolError("The number of items to be exchanged should match")
        diff, last = self._pair_loop(order, item_ids, new_item_ids, allow_same=False)
        pm = self._method(order, payment_method_id)
        is_gift = pm.get("source") == "gift_card"
        if is_gift and pm["balance"] < diff:
            raise ToolError("Insufficient gift card balance to pay for the new item")
        uid = order["user_id"]
        order = self.s.w("orders", order_id)
        order["payment_history"].append({
            "transaction_type": "payment" if diff > 0 else "refund",
            "amount": float(abs(diff)),
            "payment_method_id": payment_method_id})
        if is_gift:
            self._gift_add(uid, payment_method_id, -diff)
        for a, b in zip(item_ids, new_item_ids):
            it = self._first_item(order["items"], a)
            it["item_id"] = b
            it["price"] = last["price"]        # faithful: the last variant's price ...
            it["options"] = ecopy(last["options"])  # ... and options for every item
        order["status"] = "pending (item modified)"
        return order

    def exchange_delivered_order_items(self, order_id, item_ids, new_item_ids, payment_method_id):
        order = self._order(order_id)
        if order["status"] != "delivered":
            raise ToolError("Non-delivered order cannot be exchanged")
        self._count_check(order, item_ids, lambda i: "%s not found" % i)
        if len(item_ids) != len(new_item_ids):
            raise ToolError("The number of items to be exchanged should match")
        diff, _ = self._pair_loop(order, item_ids, new_item_ids, allow_same=True)
        diff = r2(diff)
        pm = self._method(order, payment_method_id)
        if pm.get("source") == "gift_card" and pm["balance"] < diff:
            raise ToolError("Insufficient gift card balance to pay for the price difference")
        order = self.s.w("orders", order_id)
        order["status"] = "exchange requested"
        order["exchange_items"] = sorted(item_ids)
        order["exchange_new_items"] = sorted(new_item_ids)
        order["exchange_payment_method_id"] = payment_method_id
        order["exchange_price_difference"] = diff
        return order

    def return_delivered_order_items(self, order_id, item_ids, payment_method_id):
        order = self._order(order_id)
        if order["status"] != "delivered":
            raise ToolError("Non-delivered order cannot be returned")
        pm = self._method(order, payment_method_id)
        if pm.get("source") != "gift_card":
            ph = order["payment_history"]
            if not ph or payment_method_id != ph[0]["payment_method_id"]:
                raise ToolError("Payment method should be the original payment method or a gift card")
        self._count_check(order, item_ids, lambda i: "Some item not found")
        order = self.s.w("orders", order_id)
        order["status"] = "return requested"
        order["return_items"] = sorted(item_ids)
        order["return_payment_method_id"] = payment_method_id
        return order


class MockEnv:
    def __init__(self, data):
        self.data = data
        self.s = Store(data.base)
        self.user_s = Store(data.user_base) if data.user_base is not None else Store(BaseDB({"notifications": {}}))
        self.toolkits = {"assistant": {}, "user": {}}
        for schema in MOCK_ASSISTANT_SCHEMAS:
            n = schema["name"]
            self.toolkits["assistant"][n] = Tool(schema, getattr(self, n), MOCK_ASSISTANT_KINDS[n])
        for schema in MOCK_USER_SCHEMAS:
            n = schema["name"]
            self.toolkits["user"][n] = Tool(schema, getattr(self, n), MOCK_USER_KINDS[n])
        self.helpers = {
            "assistant": {"assert_number_of_tasks": self.assert_number_of_tasks,
                          "assert_task_status": self.assert_task_status},
            "user": {"add_notification": self.add_notification,
                     "assert_notification_status": self.assert_notification_status},
        }

    # agent tools
    def create_task(self, user_id, title, description=None):
        if self.s.get("users", user_id) is None:
            raise ToolError("User %s not found" % user_id)
        tid = "task_%d" % (len(self.s.table("tasks")) + 1)
        task = {"task_id": tid, "title": title, "description": description, "status": "pending"}
        self.s.put("tasks", tid, task)
        self.s.w("users", user_id)["tasks"].append(tid)
        return task

    def get_users(self):
        return list(self.s.table("users").values())

    def update_task_status(self, task_id, status):
        if self.s.get("tasks", task_id) is None:
            raise ToolError("Task %s not found" % task_id)
        task = self.s.w("tasks", task_id)
        task["status"] = status
        return task

    def transfer_to_human_agents(self, summary):
        return "Transfer successful"

    # user tools
    def check_notifications(self):
        return list(self.user_s.table("notifications").values())

    def dismiss_notification(self, notification_id):
        if self.user_s.get("notifications", notification_id) is None:
            raise ToolError("Notification %s not found" % notification_id)
        self.user_s.w("notifications", notification_id)["status"] = "read"
        return "Notification %s dismissed" % notification_id

    # helpers
    def assert_number_of_tasks(self, user_id, expected_number):
        u = self.s.get("users", user_id)
        if u is None:
            raise ToolError("User %s not found" % user_id)
        return len(u["tasks"]) == expected_number

    def assert_task_status(self, task_id, expected_status):
        t = self.s.get("tasks", task_id)
        if t is None:
            raise ToolError("Task %s not found" % task_id)
        return t["status"] == expected_status

    def add_notification(self, notification_id, message, task_id=None):
        n = {"notification_id": notification_id, "message": message, "status": "unread", "task_id": task_id}
        self.user_s.put("notifications", notification_id, n)
        return n

    def assert_notification_status(self, notification_id, expected_status):
        n = self.user_s.get("notifications", notification_id)
        if n is None:
            raise ToolError("Notification %s not found" % notification_id)
        return n["status"] == expected_status


ENV_CLASSES = {"retail": RetailEnv, "mock": MockEnv}


# ---------------------------------------------------------------------------
# Episodes and reward
# ---------------------------------------------------------------------------


def norm_tool_call(tc, default_requestor):
    """(name, arguments|None, requestor, id) from an OpenAI or tau2 style tool call."""
    if not isinstance(tc, dict):
        return None
    fn = tc.get("function")
    if isinstance(fn, dict):
        name = fn.get("name")
        args = fn.get("arguments")
    else:
        name = tc.get("name")
        args = tc.get("arguments")
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            args = None
    if args is not None and not isinstance(args, dict):
        args = None
    req = tc.get("requestor") or default_requestor
    return name, args, req, tc.get("id")


def message_text(m):
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        parts = []
        for p in c:
            if isinstance(p, dict) and isinstance(p.get("text"), str):
                parts.append(p["text"])
            elif isinstance(p, str):
                parts.append(p)
        return "".join(parts)
    return ""


class Episode:
    def __init__(self, data, task=None, seed=None):
        self.data = data
        self.env = ENV_CLASSES[data.domain](data)
        self.task = task
        self.seed = seed
        self.tool_errors = 0
        self.init_warnings = []
        if task is not None:
            apply_initial_state(self.env, task.get("initial_state"), self.init_warnings)

    def call(self, name, args, requestor="assistant"):
        """Run one tool call; returns (text, is_error). Never raises."""
        text, err = run_tool(self.env, name, args, requestor)
        if err:
            self.tool_errors += 1
        return text, err


def run_tool(env, name, args, requestor="assistant"):
    tools = env.toolkits.get(requestor) or {}
    tool = tools.get(name) if isinstance(name, str) else None
    if tool is None:
        return "Error: Tool '%s' not found." % (name,), True
    try:
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                raise ToolError("arguments must be a JSON object")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ToolError("arguments must be a JSON object, got %s" % _type_name(args))
        tool.check_args(args)
        return result_text(tool.fn(**args)), False
    except ToolError as e:
        return "Error: %s" % e, True
    except RecursionError:
        return "Error: input too deeply nested", True
    except Exception as e:  # a bug or an odd input: report it as a tool error
        log("tool %s raised %s: %s" % (name, type(e).__name__, e))
        return "Error: %s" % (e,), True


def call_by_name(env, env_type, func_name, arguments):
    """Toolkit method or helper by name (initialization_actions, env_assertions). Raises on failure."""
    env_type = env_type or "assistant"
    args = arguments or {}
    tool = (env.toolkits.get(env_type) or {}).get(func_name)
    if tool is not None:
        tool.check_args(args)
        return tool.fn(**args)
    helper = (env.helpers.get(env_type) or {}).get(func_name)
    if helper is None:
        raise ToolError("Function '%s' not found in the %s toolkit" % (func_name, env_type))
    return helper(**args)


def history_calls(history):
    """Yield (name, args, requestor, id) for tool calls in a message history."""
    for m in history or []:
        if not isinstance(m, dict):
            continue
        role = m.get("role")
        tcs = m.get("tool_calls")
        for tc in tcs if isinstance(tcs, list) else []:
            nt = norm_tool_call(tc, "user" if role == "user" else "assistant")
            if nt is not None:
                yield nt


def apply_initial_state(env, state, warnings):
    if not state:
        return
    idata = state.get("initialization_data")
    if idata:
        for key, store in (("agent_data", env.s), ("user_data", env.user_s)):
            part = idata.get(key)
            if part:
                if store is None:
                    warnings.append("%s given but the domain has no such DB" % key)
                    continue
                try:
                    store.merge(part)
                except Exception as e:
                    warnings.append("%s merge failed: %s" % (key, e))
    for act in state.get("initialization_actions") or []:
        try:
            call_by_name(env, act.get("env_type"), act.get("func_name"), act.get("arguments"))
        except Exception as e:
            warnings.append("initialization action %s failed: %s" % (act.get("func_name"), e))
    history = state.get("message_history") or []
    recorded = {}
    for m in history:
        if isinstance(m, dict) and m.get("role") == "tool":
            recorded[m.get("id") or m.get("tool_call_id")] = m.get("content")
    for name, args, req, cid in history_calls(history):
        tool = (env.toolkits.get(req) or {}).get(name)
        if tool is None or tool.kind != "write":
            continue
        text, err = run_tool(env, name, args, req)
        rec = recorded.get(cid)
        if rec is not None:
            try:
                same = json.loads(text) == json.loads(rec)
            except ValueError:
                same = text == rec
            if not same:
                warnings.append("history call %s replayed to a different result" % cid)
        if err:
            warnings.append("history call %s failed: %s" % (cid, text))


class Server:
    def __init__(self, domain, data_dir, strict_user_db=False):
        self.data = DomainData(domain, data_dir)
        self.domain = domain
        self.strict_user_db = strict_user_db
        self.episode = None
        self.gold_cache = OrderedDict()

    # --- episode -----------------------------------------------------------
    def current(self):
        if self.episode is None:
            self.episode = Episode(self.data)
        return self.episode

    def resolve_task(self, inp):
        if not isinstance(inp, dict):
            return None
        t = inp.get("task")
        if isinstance(t, dict):
            return t
        if "evaluation_criteria" in inp or "user_scenario" in inp:
            return inp
        tid = inp.get("id", inp.get("task_id"))
        if tid is not None:
            t = self.data.tasks().get(str(tid))
            if t is None:
                raise ValueError("unknown task id %r" % (tid,))
            return t
        return None

    def start_episode(self, params):
        task = self.resolve_task(params.get("input"))
        seed = params.get("seed")
        self.episode = Episode(self.data, task, seed)
        for w in self.episode.init_warnings:
            log("start_episode(%s): %s" % (task.get("id") if task else None, w))
        return {"ok": True, "task_id": (str(task["id"]) if task and task.get("id") is not None else None)}

    # --- reward ------------------------------------------------------------
    def gold(self, task):
        crit = task.get("evaluation_criteria") or {}
        key = json.dumps([task.get("id"), task.get("initial_state"), crit.get("actions")], sort_keys=True)
        hit = self.gold_cache.get(key)
        if hit is not None:
            self.gold_cache.move_to_end(key)
            return hit
        ep = Episode(self.data, task)
        errors = []
        for a in crit.get("actions") or []:
            try:
                call_by_name(ep.env, a.get("requestor") or "assistant", a.get("name"), a.get("arguments"))
            except Exception as e:  # swallowed, like the original
                errors.append("%s: %s" % (a.get("action_id") or a.get("name"), e))
        res = (ep.env.s.hash(), ep.env.user_s.hash() if ep.env.user_s is not None else None, errors)
        self.gold_cache[key] = res
        if len(self.gold_cache) > 512:
            self.gold_cache.popitem(last=False)
        return res

    def reward(self, params):
        ep = self.episode
        if ep is None or ep.task is None:
            raise ValueError("no task: call matrix/start_episode with a dataset row first")
        task = ep.task
        messages = params.get("messages") or []
        if not isinstance(messages, list):
            raise ValueError("messages must be an array")
        termination = params.get("termination")
        crit = task.get("evaluation_criteria")

        history = ((task.get("initial_state") or {}).get("message_history")) or []
        msgs = [m for m in list(history) + list(messages) if isinstance(m, dict)]

        db_hash = ep.env.s.hash()
        user_hash = ep.env.user_s.hash() if ep.env.user_s is not None else None
        bd = {
            "task_id": str(task.get("id")) if task.get("id") is not None else None,
            "scheme": "judge-free: DB x COMMUNICATE (COMMUNICATE stands in for NL_ASSERTION "
                      "on tasks that have nl_assertions)",
            "termination": termination,
            "tool_errors": ep.tool_errors,
            "too_many_errors": ep.tool_errors >= MAX_TOOL_ERRORS,
            "db_hash": db_hash,
            "gold_db_hash": None,
            "db": None, "communicate": None, "env_assertion": None, "action": None,
        }
        if user_hash is not None:
            bd["user_db_hash"] = user_hash
            bd["gold_user_db_hash"] = None

        if crit is None:
            bd["basis"] = []
            bd["task_basis"] = None
            components = 1.0
        else:
            task_basis = crit.get("reward_basis") or ["DB", "COMMUNICATE"]
            basis = []
            for b in task_basis:
                if b == "NL_ASSERTION":
                    if crit.get("nl_assertions"):
                        b = "COMMUNICATE"
                    else:
                        continue
                if b not in basis:
                    basis.append(b)
            bd["basis"] = basis
            bd["task_basis"] = list(task_basis)
            components = 1.0

            gold_hash, gold_user_hash, gold_errors = self.gold(task)
            bd["gold_db_hash"] = gold_hash
            if user_hash is not None:
                bd["gold_user_db_hash"] = gold_user_hash
            bd["gold_errors"] = len(gold_errors)
            if "DB" in basis:
                if crit.get("actions") is None and crit.get("env_assertions") is None:
                    db = 1
                else:
                    db = 1 if db_hash == gold_hash else 0
                    if user_hash is not None:
                        user_ok = user_hash == gold_user_hash
                        bd["user_db_match"] = int(user_ok)
                        if self.strict_user_db and not user_ok:
                            db = 0
                bd["db"] = db
                components *= db
            if "COMMUNICATE" in basis:
                bd["communicate"] = c = self.communicate(crit.get("communicate_info"), msgs)
                components *= c
            if "ENV_ASSERTION" in basis:
                bd["env_assertion"] = c = self.env_assertion(ep.env, crit.get("env_assertions"))
                components *= c
            if "ACTION" in basis:
                bd["action"] = c = self.action(crit.get("actions"), msgs)
                components *= c
        bd["components_reward"] = components
        reward = components
        if termination not in STOP_TERMINATIONS:
            reward = 0.0
            bd["zeroed_by"] = "termination"
        elif ep.tool_errors >= MAX_TOOL_ERRORS:
            reward = 0.0
            bd["zeroed_by"] = "too_many_errors"
        return {"reward": float(reward), "breakdown": bd}

    @staticmethod
    def communicate(info, msgs):
        if not info:
            return 1
        texts = [message_text(m).lower().replace(",", "") for m in msgs if m.get("role") == "assistant"]
        texts = [t for t in texts if t]
        for s in info:
            if not isinstance(s, str) or not any(s.lower() in t for t in texts):
                return 0
        return 1

    @staticmethod
    def env_assertion(env, assertions):
        if not assertions:
            return 1
        for a in assertions:
            try:
                v = call_by_name(env, a.get("env_type"), a.get("func_name"), a.get("arguments"))
            except Exception:
                return 0
            want = a.get("assert_value", True)
            if bool(v) != bool(want if want is not None else True):
                return 0
        return 1

    @staticmethod
    def action(gold_actions, msgs):
        if not gold_actions:
            return 1
        calls = []
        for m in msgs:
            tcs = m.get("tool_calls")
            if m.get("role") in ("assistant", "user") and isinstance(tcs, list):
                for tc in tcs:
                    nt = norm_tool_call(tc, m.get("role"))
                    if nt is not None:
                        calls.append(nt)
        for g in gold_actions:
            gargs = g.get("arguments") or {}
            keys = g.get("compare_args")
            found = False
            for name, args, _req, _id in calls:
                if name != g.get("name"):
                    continue
                if keys is not None and len(keys) == 0:
                    found = True
                    break
                if args is None:
                    continue
                ks = keys if keys is not None else list(args.keys())
                if all(gargs.get(k) == args.get(k) for k in ks):
                    found = True
                    break
            if not found:
                return 0
        return 1

    # --- MCP ---------------------------------------------------------------
    @staticmethod
    def requestor(params):
        req = params.get("requestor")
        meta = params.get("_meta")
        if req is None and isinstance(meta, dict):
            req = meta.get("matrix/requestor")
        if req is None:
            return "assistant"
        if req not in ("assistant", "user"):
            raise InvalidParams("requestor must be 'assistant' or 'user'")
        return req

    def handle(self, method, params):
        if method == "initialize":
            pv = params.get("protocolVersion")
            return {"protocolVersion": pv if isinstance(pv, str) and pv else DEFAULT_PROTOCOL,
                    "capabilities": {"tools": {}, "experimental": {"matrix/episode": {"version": 1}}},
                    "serverInfo": {"name": "tau2-%s" % self.domain, "version": "1"}}
        if method == "ping":
            return {}
        if method == "tools/list":
            req = self.requestor(params)
            tools = self.current().env.toolkits.get(req) or {}
            return {"tools": [t.mcp() for t in tools.values()]}
        if method == "tools/call":
            name = params.get("name")
            if not isinstance(name, str):
                raise InvalidParams("tools/call needs a string 'name'")
            req = self.requestor(params)
            text, err = self.current().call(name, params.get("arguments"), req)
            if VERBOSE:
                log("call %s -> %s%s" % (name, "ERROR " if err else "", text[:200]))
            return {"content": [{"type": "text", "text": text}], "isError": err}
        if method == "matrix/start_episode":
            try:
                return self.start_episode(params)
            except ValueError as e:
                raise InvalidParams(str(e))
        if method == "matrix/reward":
            try:
                return self.reward(params)
            except ValueError as e:
                raise InvalidParams(str(e))
        if method == "matrix/db_hash":
            env = self.current().env
            return {"db_hash": env.s.hash(), "user_db_hash": env.user_s.hash() if env.user_s is not None else None}
        raise MethodNotFound("Method not found: %s" % (method,))


class InvalidParams(Exception):
    pass


class MethodNotFound(Exception):
    pass


def error_response(id_, code, message):
    return {"jsonrpc": "2.0", "id": id_, "error": {"code": code, "message": message}}


def process_line(server, raw):
    """Returns a response dict or None (notification / nothing to answer)."""
    text = raw.decode("utf-8", errors="replace").strip()
    if not text:
        return None
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):
        return error_response(None, -32700, "Parse error")
    if not isinstance(msg, dict):
        return error_response(None, -32600, "Invalid Request: expected a JSON object")
    has_id = "id" in msg
    id_ = msg.get("id")
    method = msg.get("method")
    if not isinstance(method, str):
        if has_id and ("result" in msg or "error" in msg):
            return None  # a response to something we never sent: ignore
        return error_response(id_ if isinstance(id_, (str, int, float)) else None, -32600,
                              "Invalid Request: missing method")
    if not has_id:
        if method not in ("notifications/initialized",) and VERBOSE:
            log("ignoring notification %s" % method)
        return None
    if not (id_ is None or isinstance(id_, (str, int, float))) or isinstance(id_, bool):
        return error_response(None, -32600, "Invalid Request: bad id")
    params = msg.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        return error_response(id_, -32602, "Invalid params: expected an object")
    try:
        result = server.handle(method, params)
        return {"jsonrpc": "2.0", "id": id_, "result": result}
    except MethodNotFound as e:
        return error_response(id_, -32601, str(e))
    except InvalidParams as e:
        return error_response(id_, -32602, "Invalid params: %s" % e)
    except Exception as e:
        log("internal error in %s: %s: %s" % (method, type(e).__name__, e))
        return error_response(id_, -32603, "Internal error: %s: %s" % (type(e).__name__, e))


def main(argv=None):
    global VERBOSE
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description="Tau2-bench retail/mock MCP server (stdio)")
    ap.add_argument("--domain", required=True, choices=sorted(ENV_CLASSES))
    ap.add_argument("--data", default=os.path.join(here, "data"), help="data folder (default: data/ next to this script)")
    ap.add_argument("--strict-user-db", action="store_true",
                    help="DB component also requires the user-side DB (mock) to match the gold one")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every call to stderr")
    args = ap.parse_args(argv)
    VERBOSE = args.verbose
    t0 = time.perf_counter()
    server = Server(args.domain, args.data, args.strict_user_db)
    log("domain=%s ready in %.1f ms" % (args.domain, (time.perf_counter() - t0) * 1000))

    inp = sys.stdin.buffer
    out = sys.stdout.buffer
    while True:
        try:
            raw = inp.readline()
        except KeyboardInterrupt:
            break
        if not raw:
            break
        try:
            resp = process_line(server, raw)
        except Exception as e:  # last line of defence: never crash
            log("unexpected: %s: %s" % (type(e).__name__, e))
            resp = error_response(None, -32603, "Internal error")
        if resp is None:
            continue
        try:
            data = json.dumps(resp, ensure_ascii=True)
        except Exception as e:
            data = json.dumps(error_response(resp.get("id"), -32603, "unserialisable result: %s" % e))
        try:
            out.write(data.encode("ascii") + b"\n")
            out.flush()
        except (BrokenPipeError, OSError):
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
