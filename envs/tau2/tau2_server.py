"""Tau2-bench retail and mock tool environments as one MCP server (stdio).

This module is the server; `tau2_env.py` is its command-line entry point.
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

One process serves one session, and many run at once, so startup imports only
what the protocol needs (no argparse, re, hashlib or ast until used) and the
DB file is not parsed up front: entities are read and parsed on first use
(see LazyTable).
"""

import os
import sys
import time

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
_MISSING = object()


def log(msg):
    try:
        sys.stderr.write("[tau2_env] %s\n" % msg)
        sys.stderr.flush()
    except Exception:
        pass


# ---------------------------------------------------------------------------
# JSON: json.loads / json.dumps through the C accelerator the json package
# itself uses (importing the package pulls in re and enum: ~1.5 MB and a few
# ms per process). Falls back to the json package if _json is missing or does
# not round-trip the self-check below.
# ---------------------------------------------------------------------------


def _json_default(o):
    raise TypeError("Object of type %s is not JSON serializable" % o.__class__.__name__)


class _DecodeContext:
    """The attributes _json.make_scanner reads from a json.JSONDecoder()."""
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__
    memo = None


_WS = " \t\n\r"
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


def _json_module():
    import json
    return json


def _bytes_to_text(b):
    """What json.loads does to bytes (UTF-8 without BOM here; anything else is left to json)."""
    if b.startswith(_BOMS) or b"\x00" in b[:4]:
        return None
    return b.decode("utf-8", "surrogatepass")


try:
    import _json as _cjson

    _scan_once = _cjson.make_scanner(_DecodeContext())
    _enc_ascii = _cjson.encode_basestring_ascii
    _enc_utf = _cjson.encode_basestring
    _make_encoder = _cjson.make_encoder

    def loads(s):
        """loads(s) (default decoder)."""
        if not isinstance(s, str):
            t = _bytes_to_text(s)
            if t is None:
                return _json_module().loads(s)
            s = t
        elif s.startswith("\ufeff"):
            raise ValueError("Unexpected UTF-8 BOM (decode using utf-8-sig)")
        i = 0
        if s and s[0] in _WS:
            i = len(s) - len(s.lstrip(_WS))
        try:
            obj, end = _scan_once(s, i)
        except StopIteration as e:
            raise ValueError("Expecting value: char %d" % e.value) from None
        if end != len(s) and s[end:].strip(_WS):
            raise ValueError("Extra data: char %d" % end)
        return obj

    def dumps(obj, sort_keys=False, ensure_ascii=True):
        """dumps(obj, sort_keys=..., ensure_ascii=...) with the default separators."""
        enc = _enc_ascii if ensure_ascii else _enc_utf
        if isinstance(obj, str):
            return enc(obj)
        return "".join(_make_encoder({}, _json_default, enc, None, ": ", ", ", sort_keys, False, True)(obj, 0))

    _probe = loads(' {"b": [1, 2.5, -0.0, 1e+16, null, true, false, "\\u00e9\\ud83d\\ude00", [], {}],'
                   ' "a": {"y": -Infinity, "x": "q\\"\\\\\\n"}} \n')
    if (dumps(_probe, sort_keys=True) != '{"a": {"x": "q\\"\\\\\\n", "y": -Infinity}, "b": [1, 2.5, -0.0, '
            '1e+16, null, true, false, "\\u00e9\\ud83d\\ude00", [], {}]}'
            or dumps(_probe["b"][7], ensure_ascii=False) != '"\u00e9\U0001f600"'
            or loads(b'[1]') != [1]):
        raise ImportError("_json self-check failed")
    del _probe
except Exception:  # no usable accelerator: the json package it is
    _json = _json_module()

    def loads(s):
        return _json.loads(s)

    def dumps(obj, sort_keys=False, ensure_ascii=True):
        return _json.dumps(obj, sort_keys=sort_keys, ensure_ascii=ensure_ascii)


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
# The pristine DB, read lazily
# ---------------------------------------------------------------------------


def index_json_layout(buf):
    """Byte spans of the entities of a DB file written by json.dump(db, indent=N).

    `buf` holds `{"table": {"key": {...}, ...}, ...}` with one member per
    line and each nesting level indented by the same N spaces. JSON strings
    cannot hold a raw newline, so a line of exactly 2N spaces and `}` is the
    closing line of an entity: one search per entity finds its end, and the
    file is scanned once. Returns {table: {key: start << 32 | end}} (byte
    offsets; an int takes a third of the memory of a tuple) in file order
    (a repeated key keeps its first place and its last value, as json.loads
    does), or None when the file does not have this layout in every detail
    checked (the caller then parses it whole). An entity span that does not
    parse would show up as an error when that entity is read.
    """
    n = len(buf)
    if n < 4 or n >= 1 << 32 or buf[0:2] != b"{\n":
        return None
    unit = 0
    while 2 + unit < n and buf[2 + unit] == 0x20:
        unit += 1
    if unit == 0:
        return None
    tkey = b"\n" + b" " * unit + b'"'
    tclose = b"\n" + b" " * unit + b"}"
    ekey = b"\n" + b" " * (2 * unit) + b'"'
    eclose = b"\n" + b" " * (2 * unit) + b"}"
    top_end = buf.rfind(b"\n}")
    if top_end < 0 or buf[top_end + 2:].strip(b" \t\r\n"):
        return None

    def key_at(p, pre):
        """The key of the line at p (which starts with `pre`) and where its value starts."""
        if buf[p:p + len(pre)] != pre:
            return None, -1
        k0 = p + len(pre)
        k1 = buf.find(b'"', k0)
        if k1 < 0 or buf[k1:k1 + 3] != b'": ':
            return None, -1
        raw = buf[k0:k1]
        if b"\\" in raw or b"\n" in raw:
            return None, -1
        return raw.decode("utf-8", "surrogatepass"), k1 + 3

    tables = {}
    p = 1
    while True:
        name, v = key_at(p, tkey)
        if name is None or buf[v:v + 1] != b"{":
            return None
        spans = {}
        if buf[v + 1:v + 2] == b"}":
            tend = v + 2
        else:
            q = v + 1
            while True:
                key, s = key_at(q, ekey)
                if key is None:
                    return None
                head = buf[s:s + 2]
                if head == b"{}":
                    e = s + 2
                elif head == b"{\n":
                    c = buf.find(eclose, s)
                    if c < 0:
                        return None
                    e = c + len(eclose)
                else:
                    return None
                spans[key] = s << 32 | e
                if buf[e:e + 1] == b",":
                    q = e + 1
                elif buf[e:e + len(tclose)] == tclose:
                    tend = e + len(tclose)
                    break
                else:
                    return None
        tables[name] = spans
        if buf[tend:tend + 2] == b",\n":
            p = tend + 1
        elif tend == top_end:
            return tables
        else:
            return None


class LazyTable:
    """One table of the pristine DB (never mutated).

    Keys are kept in file order with the byte span of each entity; an entity
    is parsed on first use and kept (`get`). Scans read entities without
    keeping them and memoise only what they compare (`fields`). A table built
    from objects in memory (`spans` None) simply holds them all.
    """

    __slots__ = ("src", "spans", "cache", "fix", "memos")

    def __init__(self, src=None, spans=None, entities=None, fix=None):
        self.src = src
        self.spans = spans
        self.cache = {} if entities is None else entities
        self.fix = fix
        self.memos = {}

    def keys(self):
        return self.spans.keys() if self.spans is not None else self.cache.keys()

    def __contains__(self, key):
        return key in (self.spans if self.spans is not None else self.cache)

    def __len__(self):
        return len(self.spans if self.spans is not None else self.cache)

    def _parse(self, key):
        se = self.spans[key]
        return self._parse_raw(self.src.read(se >> 32, se & 0xFFFFFFFF))

    def _parse_raw(self, raw):
        obj = loads(raw)
        if self.fix is not None:
            self.fix(obj)
        return obj

    def peek_all(self, keys, block=1 << 18):
        """(key, entity) for `keys` given in file order, as peek, reading the
        file in blocks of up to `block` bytes instead of once per entity."""
        if self.spans is None:
            for k in keys:
                yield k, self.cache[k]
            return
        run = []
        for k in keys + [None]:
            if k is not None:
                v = self.cache.get(k, _MISSING)
                if v is not _MISSING:
                    yield k, v
                    continue
                se = self.spans[k]
                s, e = se >> 32, se & 0xFFFFFFFF
                if not run or (s >= run[-1][2] and e - run[0][1] <= block):
                    run.append((k, s, e))
                    continue
            if run:
                b0 = run[0][1]
                buf = self.src.read(b0, run[-1][2])
                for rk, rs, re_ in run:
                    yield rk, self._parse_raw(buf[rs - b0:re_ - b0])
                del buf
                run = []
            if k is not None:
                run.append((k, s, e))

    def get(self, key, default=None):
        """The entity, parsed once and kept; `default` if absent."""
        v = self.cache.get(key, _MISSING)
        if v is _MISSING:
            if self.spans is None or key not in self.spans:
                return default
            v = self.cache[key] = self._parse(key)
        return v

    def peek(self, key):
        """The entity (KeyError if absent), without keeping it if not kept already."""
        v = self.cache.get(key, _MISSING)
        if v is _MISSING:
            if self.spans is None:
                raise KeyError(key)
            v = self._parse(key)
        return v

    def fields(self, name, fn, batch=64):
        """(key, fn(entity)) for every key in file order, fn memoised per key
        under `name` (fn must not keep the entity); entities not yet seen are
        read `batch` at a time."""
        memo = self.memos.get(name)
        if memo is None:
            memo = self.memos[name] = {}
        keys = list(self.keys())
        n = len(keys)
        i = 0
        while i < n:
            k = keys[i]
            v = memo.get(k, _MISSING)
            if v is _MISSING:
                todo = []
                j = i
                while j < n and len(todo) < batch and keys[j] not in memo:
                    todo.append(keys[j])
                    j += 1
                for tk, ent in self.peek_all(todo):
                    memo[tk] = fn(ent)
                v = memo[k]
            yield k, v
            i += 1


class DBFile:
    """An open DB file; entities are read with pread (no copy of the file is kept)."""

    def __init__(self, path):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    def read(self, start, end):
        b = os.pread(self.fd, end - start, start)
        if len(b) != end - start:
            raise IOError("%s changed while in use" % self.path)
        return b

    def whole(self):
        size = os.fstat(self.fd).st_size
        return self.read(0, size) if size else b""


class BaseDB:
    """The pristine DB: {table: LazyTable}. Never mutated.

    From a file, the tables are indexed on first use (index_json_layout over
    a transient read of the file); a file of another layout is parsed whole.
    `fixes` maps a table name to a function applied to each entity once
    parsed. `frag` keeps dumps(entity, sort_keys=True) of entities for
    hashing, filled from the second hash pass of the process on (a session
    that hashes once, at its reward, keeps no copy).
    """

    def __init__(self, obj=None, path=None, fixes=None):
        self.fixes = fixes or {}
        self.frag = {}
        self.hash_passes = 0
        self.pristine_hash = None
        if path is not None:
            self.src = DBFile(path)
            self._tables = None
        else:
            self.src = None
            self._tables = self._from_obj(obj)

    def _from_obj(self, obj):
        if not isinstance(obj, dict) or not all(isinstance(v, dict) for v in obj.values()):
            raise ValueError("DB must be an object of tables (objects)")
        for name, tab in obj.items():
            fix = self.fixes.get(name)
            if fix is not None:
                for ent in tab.values():
                    fix(ent)
        return {name: LazyTable(entities=tab) for name, tab in obj.items()}

    @property
    def tables(self):
        t = self._tables
        if t is None:
            buf = self.src.whole()
            spans = index_json_layout(buf)
            if spans is None:
                t = self._from_obj(loads(buf))
            else:
                t = {name: LazyTable(self.src, sp, fix=self.fixes.get(name)) for name, sp in spans.items()}
            del buf
            self._tables = t
        return t


class Store:
    """Per-episode view of a BaseDB, copy-on-write.

    `over` holds, per base table, the entities this episode wrote or added
    (an entity is deep-copied the first time it is written, `w`); `new` holds
    whole tables the base DB does not have. Iteration order is the base
    table's (file order) with added keys after it, as for a dict copy.
    """

    def __init__(self, base):
        self.base = base
        self.over = {}
        self.new = {}

    def _base_table(self, table):
        return self.base.tables[table]  # KeyError for an unknown table, as a dict would

    def lookup(self, table, key):
        """The live entity, or _MISSING."""
        nt = self.new.get(table)
        if nt is not None:
            return nt.get(key, _MISSING)
        o = self.over.get(table)
        if o is not None:
            v = o.get(key, _MISSING)
            if v is not _MISSING:
                return v
        return self._base_table(table).get(key, _MISSING)

    def get(self, table, key):
        v = self.lookup(table, key)
        return None if v is _MISSING else v

    def peek(self, table, key):
        """Like get, but a base entity read here is not kept in memory."""
        nt = self.new.get(table)
        if nt is not None:
            return nt[key]
        o = self.over.get(table)
        if o is not None and key in o:
            return o[key]
        return self._base_table(table).peek(key)

    def w(self, table, key):
        nt = self.new.get(table)
        if nt is not None:
            return nt[key]
        o = self.over.get(table)
        if o is not None and key in o:
            return o[key]
        ent = self._base_table(table).get(key, _MISSING)
        if ent is _MISSING:
            raise KeyError(key)
        ent = ecopy(ent)
        self.over.setdefault(table, {})[key] = ent
        return ent

    def put(self, table, key, value):
        if table in self.new or table not in self.base.tables:
            self.new.setdefault(table, {})[key] = value
        else:
            self.over.setdefault(table, {})[key] = value

    def has_table(self, table):
        return table in self.new or table in self.base.tables

    def keys(self, table):
        nt = self.new.get(table)
        if nt is not None:
            return list(nt)
        bt = self._base_table(table)
        ks = list(bt.keys())
        o = self.over.get(table)
        if o:
            ks.extend(k for k in o if k not in bt)
        return ks

    def size(self, table):
        nt = self.new.get(table)
        if nt is not None:
            return len(nt)
        bt = self._base_table(table)
        o = self.over.get(table)
        return len(bt) + (sum(1 for k in o if k not in bt) if o else 0)

    def items(self, table):
        """(key, entity) in table order; base entities are parsed and kept."""
        for k in self.keys(table):
            yield k, self.get(table, k)

    def values(self, table):
        return [v for _k, v in self.items(table)]

    def scan(self, table, name, fn):
        """(key, fn(entity)) in table order, memoising fn on untouched base entities."""
        nt = self.new.get(table)
        if nt is not None:
            for k, v in nt.items():
                yield k, fn(v)
            return
        bt = self._base_table(table)
        o = self.over.get(table) or {}
        for k, val in bt.fields(name, fn):
            v = o.get(k, _MISSING)
            yield k, (val if v is _MISSING else fn(v))
        for k, v in o.items():
            if k not in bt:
                yield k, fn(v)

    def merge(self, data):
        """Recursive dict merge (lists and scalars replaced)."""
        for tname, tval in data.items():
            if self.has_table(tname) and isinstance(tval, dict):
                for key, val in tval.items():
                    cur = self.lookup(tname, key)
                    if cur is not _MISSING and isinstance(cur, dict) and isinstance(val, dict):
                        deep_merge(self.w(tname, key), val)
                    else:
                        self.put(tname, key, ecopy(val))
            elif isinstance(tval, dict):
                self.new[tname] = ecopy(tval)
            else:
                raise ValueError("cannot merge non-object into table %r" % tname)

    def hash(self):
        return hash_stores([self])[0]


def _table_names(store):
    return sorted(list(store.base.tables) + [t for t in store.new if t not in store.base.tables])


def hash_stores(stores):
    """sha256 of the canonical text of each store: exactly
    dumps(db, sort_keys=True) with Python's default separators.

    Stores sharing a BaseDB are hashed in one pass, table by table, so an
    untouched entity is serialised once for all of them. A store with nothing
    written hashes to its base's pristine hash (computed once).
    """
    import hashlib

    out = [None] * len(stores)
    groups = {}
    for i, s in enumerate(stores):
        if not s.over and not s.new and s.base.pristine_hash is not None:
            out[i] = s.base.pristine_hash
        else:
            groups.setdefault(id(s.base), []).append(i)
    for idxs in groups.values():
        base = stores[idxs[0]].base
        base.hash_passes += 1
        keep = base.hash_passes > 1
        hs = {i: hashlib.sha256(b"{") for i in idxs}
        names = {i: _table_names(stores[i]) for i in idxs}
        started = {i: False for i in idxs}
        for tname in sorted(set(n for i in idxs for n in names[i])):
            bt = base.tables.get(tname)
            memo = base.frag.setdefault(tname, {}) if keep else {}
            if bt is not None:
                # serialise the untouched entities that some store uses, in file order
                need = [k for k in bt.keys() if k not in memo
                        and any(tname in names[i] and k not in stores[i].over.get(tname, ()) for i in idxs)]
                for k, ent in bt.peek_all(need):
                    memo[k] = dumps(ent, sort_keys=True)
            for i in idxs:
                if tname not in names[i]:
                    continue
                s = stores[i]
                h = hs[i]
                h.update(((", " if started[i] else "") + dumps(tname) + ": {").encode("utf-8"))
                started[i] = True
                nt = s.new.get(tname)
                o = (s.over.get(tname) or {}) if nt is None else None
                parts = []
                sep = ""
                for k in sorted(nt if nt is not None else s.keys(tname)):
                    if nt is not None:
                        piece = dumps(nt[k], sort_keys=True)
                    else:
                        v = o.get(k, _MISSING)
                        if v is _MISSING:
                            piece = memo[k]
                        else:
                            piece = dumps(v, sort_keys=True)
                    parts.append(dumps(k) + ": " + piece)
                    if len(parts) >= 256:
                        h.update((sep + ", ".join(parts)).encode("utf-8"))
                        sep, parts = ", ", []
                if parts:
                    h.update((sep + ", ".join(parts)).encode("utf-8"))
                h.update(b"}")
        for i in idxs:
            hs[i].update(b"}")
            out[i] = hs[i].hexdigest()
            s = stores[i]
            if not s.over and not s.new:
                base.pristine_hash = out[i]
    return out


# ---------------------------------------------------------------------------
# Tool definitions and argument validation
# ---------------------------------------------------------------------------

RETAIL_SCHEMAS = loads(r"""
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
                        k, ", ".join(dumps(e) for e in enum), dumps(v)))
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
    return dumps(v, ensure_ascii=False)


# ---------------------------------------------------------------------------
# calculate(): Python arithmetic over a safe AST
# ---------------------------------------------------------------------------

_CALC_CHARS = frozenset("0123456789+-*/(). ")
_MAX_INT_BITS = 1 << 20


def _calc_eval(node):
    import ast
    import math
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
    import ast
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


def _fix_order(order):
    for k in ORDER_OPTIONAL_FIELDS:
        order.setdefault(k, None)


class DomainData:
    """Everything loaded once per process for a domain (the DB files are opened, not read)."""

    def __init__(self, domain, data_dir):
        self.domain = domain
        self.data_dir = data_dir
        ddir = os.path.join(data_dir, domain)
        fixes = {"orders": _fix_order} if domain == "retail" else None
        self.base = BaseDB(path=os.path.join(ddir, "db.json"), fixes=fixes)
        self.user_base = None
        upath = os.path.join(ddir, "user_db.json")
        if domain == "mock" and os.path.exists(upath):
            self.user_base = BaseDB(path=upath)
        self._tasks = None

    def tasks(self):
        if self._tasks is None:
            with open(os.path.join(self.data_dir, self.domain, "tasks.json"), "rb") as f:
                self._tasks = {str(t["id"]): t for t in loads(f.read())}
        return self._tasks


# What the scanning tools compare, extracted from a user / product so that a
# scan keeps a few strings per entity instead of the entity. _MISSING (an
# irregular entity) makes the tool evaluate its own expression on the whole
# entity, so errors and comparisons are exactly those of a plain dict scan.

def _user_email(u):
    e = u.get("email", _MISSING) if type(u) is dict else _MISSING
    return e if type(e) is str else _MISSING


def _user_name_zip(u):
    try:
        n, a = u["name"], u["address"]
        t = (n["first_name"], n["last_name"], a["zip"])
    except Exception:
        return _MISSING
    return t if type(t[0]) is str and type(t[1]) is str and type(t[2]) in (str, int, float) else _MISSING


def _product_variant_ids(p):
    v = p.get("variants") if type(p) is dict else None
    return frozenset(v) if type(v) is dict else _MISSING


def _product_name(p):
    name = p.get("name", _MISSING) if type(p) is dict else _MISSING
    return (name,) if type(name) is str else _MISSING


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
        have = {}
        for it in order["items"]:
            iid = it["item_id"]
            have[iid] = have.get(iid, 0) + 1
        want = {}
        for iid in item_ids:
            want[iid] = want.get(iid, 0) + 1
        for iid, n in want.items():
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
        for uid, em in self.s.scan("users", "email", _user_email):
            if em is _MISSING:
                em = self.s.peek("users", uid)["email"]
            if em.lower() == want:
                return uid
        raise ToolError("User not found")

    def find_user_id_by_name_zip(self, first_name, last_name, zip):
        fn, ln = first_name.lower(), last_name.lower()
        for uid, t in self.s.scan("users", "name_zip", _user_name_zip):
            if t is _MISSING:
                u = self.s.peek("users", uid)
                if (u["name"]["first_name"].lower() == fn and u["name"]["last_name"].lower() == ln
                        and u["address"]["zip"] == zip):
                    return uid
            elif t[0].lower() == fn and t[1].lower() == ln and t[2] == zip:
                return uid
        raise ToolError("User not found")

    def get_order_details(self, order_id):
        return self._order(order_id)

    def get_product_details(self, product_id):
        return self._product(product_id)

    def get_user_details(self, user_id):
        return self._user(user_id)

    def get_item_details(self, item_id):
        for pid, ids in self.s.scan("products", "variant_ids", _product_variant_ids):
            if ids is _MISSING or item_id in ids:
                v = (self.s.peek if ids is _MISSING else self.s.get)("products", pid)["variants"].get(item_id)
                if v is not None:
                    return v
        raise ToolError("Item not found")

    def list_all_product_types(self):
        types = {}
        for pid, name in self.s.scan("products", "name", _product_name):
            types[self.s.peek("products", pid)["name"] if name is _MISSING else name[0]] = pid
        return dumps(types, sort_keys=True)

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
        self.user_s = Store(data.user_base) if data.user_base is not None else Store(BaseDB(obj={"notifications": {}}))
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
        tid = "task_%d" % (self.s.size("tasks") + 1)
        task = {"task_id": tid, "title": title, "description": description, "status": "pending"}
        self.s.put("tasks", tid, task)
        self.s.w("users", user_id)["tasks"].append(tid)
        return task

    def get_users(self):
        return self.s.values("users")

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
        return self.user_s.values("notifications")

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
            args = loads(args) if args.strip() else {}
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
                args = loads(args) if args.strip() else {}
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
                same = loads(text) == loads(rec)
            except ValueError:
                same = text == rec
            if not same:
                warnings.append("history call %s replayed to a different result" % cid)
        if err:
            warnings.append("history call %s failed: %s" % (cid, text))


def env_stores(env):
    return [env.s] if env.user_s is None else [env.s, env.user_s]


class Server:
    def __init__(self, domain, data_dir, strict_user_db=False):
        self.data = DomainData(domain, data_dir)
        self.domain = domain
        self.strict_user_db = strict_user_db
        self.episode = None
        self.gold_cache = {}  # insertion order = least recently used first

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
    def gold(self, task, live):
        """(gold db hash, gold user db hash, gold errors) of the task, and the
        hashes of the `live` stores, computed in the same pass over the DB."""
        crit = task.get("evaluation_criteria") or {}
        key = dumps([task.get("id"), task.get("initial_state"), crit.get("actions")], sort_keys=True)
        hit = self.gold_cache.pop(key, None)
        if hit is not None:
            self.gold_cache[key] = hit
            return hit, hash_stores(live)
        ep = Episode(self.data, task)
        errors = []
        for a in crit.get("actions") or []:
            try:
                call_by_name(ep.env, a.get("requestor") or "assistant", a.get("name"), a.get("arguments"))
            except Exception as e:  # swallowed, like the original
                errors.append("%s: %s" % (a.get("action_id") or a.get("name"), e))
        gold_stores = env_stores(ep.env)
        hs = hash_stores(live + gold_stores)
        g = hs[len(live):]
        res = (g[0], g[1] if len(g) > 1 else None, errors)
        self.gold_cache[key] = res
        if len(self.gold_cache) > 512:
            del self.gold_cache[next(iter(self.gold_cache))]
        return res, hs[:len(live)]

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

        live = env_stores(ep.env)
        if crit is None:
            gold, hashes = None, hash_stores(live)
        else:
            gold, hashes = self.gold(task, live)
        db_hash = hashes[0]
        user_hash = hashes[1] if len(hashes) > 1 else None
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

            gold_hash, gold_user_hash, gold_errors = gold
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
            hs = hash_stores(env_stores(self.current().env))
            return {"db_hash": hs[0], "user_db_hash": hs[1] if len(hs) > 1 else None}
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
        msg = loads(text)
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


def _argparse(argv, here):
    import argparse
    ap = argparse.ArgumentParser(description="Tau2-bench retail/mock MCP server (stdio)")
    ap.add_argument("--domain", required=True, choices=sorted(ENV_CLASSES))
    ap.add_argument("--data", default=os.path.join(here, "data"), help="data folder (default: data/ next to this script)")
    ap.add_argument("--strict-user-db", action="store_true",
                    help="DB component also requires the user-side DB (mock) to match the gold one")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every call to stderr")
    return vars(ap.parse_args(argv))


def parse_args(argv, here):
    """The options argparse would give, without importing it for the usual
    command lines; anything else (-h, errors, abbreviations) goes to argparse."""
    opts = {"domain": None, "data": os.path.join(here, "data"), "strict_user_db": False, "verbose": False}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--strict-user-db":
            opts["strict_user_db"] = True
        elif a in ("-v", "--verbose"):
            opts["verbose"] = True
        elif a in ("--domain", "--data") or a.startswith(("--domain=", "--data=")):
            name, eq, val = a.partition("=")
            if not eq:
                i += 1
                if i >= len(argv) or argv[i].startswith("-"):
                    return _argparse(argv, here)
                val = argv[i]
            opts[name[2:]] = val
        else:
            return _argparse(argv, here)
        i += 1
    if opts["domain"] not in ENV_CLASSES:
        return _argparse(argv, here)
    return opts


def main(argv=None):
    global VERBOSE
    here = os.path.dirname(os.path.abspath(__file__))
    args = parse_args(sys.argv[1:] if argv is None else list(argv), here)
    VERBOSE = args["verbose"]
    t0 = time.perf_counter()
    server = Server(args["domain"], args["data"], args["strict_user_db"])
    log("domain=%s ready in %.1f ms" % (args["domain"], (time.perf_counter() - t0) * 1000))

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
            data = dumps(resp, ensure_ascii=True)
        except Exception as e:
            data = dumps(error_response(resp.get("id"), -32603, "unserialisable result: %s" % e))
        try:
            out.write(data.encode("ascii") + b"\n")
            out.flush()
        except (BrokenPipeError, OSError):
            break
    return 0

