"""The `--where` filter: a SQL boolean expression over manifest columns, run by duckdb.

Why duckdb and not eval: the filter is parsed by a real query engine, on an in-memory copy of
the manifest, so a filter can only select rows. What makes that hold (each is needed alone):
- an expression only: duckdb's own tokenizer must see balanced parentheses, no ';' and no
  comment in it, and duckdb's parser must see exactly `SELECT asset_id FROM manifest WHERE (...)`
  (one SELECT statement, no set operation, CTE, ORDER/LIMIT or GROUP BY around it) with no table
  function anywhere (read_csv, read_parquet, glob, ...), so `1=1); COPY ... --`, `1=1) UNION
  SELECT ... --` and `(SELECT * FROM read_csv(...))` are refused before anything runs;
- no file access: external access off, the temp directory (which duckdb still allows with
  external access off) a private empty folder removed afterwards, the configuration locked;
- a heavy filter stays interruptible: the query runs on a helper thread while the caller waits,
  and Ctrl-C calls duckdb's interrupt (KeyboardInterrupt then reaches the caller).
Every error is one line naming the filter (and, for an unknown column, the columns available).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import tempfile
import threading
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

DEFAULT_WHERE = "status = 'done'"
_WRAP = "SELECT asset_id FROM manifest WHERE ({})"


class FilterError(ValueError):
    """A --where expression that cannot be evaluated on the manifest."""


def _first_line(msg: str) -> str:
    line = msg.strip().splitlines()[0] if msg.strip() else msg
    return re.sub(r"^\w+ Error: ", "", line)


def _fail(expr: str, what: str, cols: str) -> FilterError:
    return FilterError(f"--where {expr!r}: {what}; available columns: {cols}")


def _check_tokens(duckdb: Any, expr: str) -> str:
    """'' when duckdb's tokenizer sees one balanced expression, else why not."""
    tokens = duckdb.tokenize(expr)
    depth = 0
    for k, (pos, kind) in enumerate(tokens):
        if kind == duckdb.token_type.comment:
            return "comments are not allowed (give one condition, e.g. \"clip_l >= 0.28\")"
        if kind != duckdb.token_type.operator:
            continue
        end = tokens[k + 1][0] if k + 1 < len(tokens) else len(expr)
        for ch in expr[pos:end]:
            if ch == ";":
                return "';' is not allowed: give one condition, not statements"
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth < 0:
                return "unbalanced ')': give one condition, e.g. \"status = 'done' AND clip_l >= 0.28\""
    return "" if depth == 0 else "unbalanced '(': give one condition"


def _has_table_function(node: Any) -> bool:
    if isinstance(node, dict):
        if node.get("type") == "TABLE_FUNCTION":
            return True
        return any(_has_table_function(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_table_function(v) for v in node)
    return False


def _check_shape(con: Any, query: str) -> str:
    """'' when duckdb parses `query` as exactly the wrapped filter, else why not."""
    stmts = con.extract_statements(query)
    if len(stmts) != 1 or stmts[0].type.name != "SELECT":
        return "not one condition (it adds statements); give e.g. \"clip_l >= 0.28\""
    ast = json.loads(con.execute("SELECT json_serialize_sql(?::VARCHAR)", [query]).fetchone()[0])
    if ast.get("error"):
        return _first_line(str(ast.get("error_message") or "not a condition"))
    [st] = ast["statements"]
    node = st["node"]
    sel = node.get("select_list") or []
    frm = node.get("from_table") or {}
    if (node.get("type") != "SELECT_NODE" or node.get("modifiers") or (node.get("cte_map") or {}).get("map")
            or node.get("group_expressions") or node.get("having") or node.get("qualify")
            or node.get("sample") or len(sel) != 1 or sel[0].get("column_names") != ["asset_id"]
            or frm.get("type") != "BASE_TABLE" or frm.get("table_name") != "manifest"):
        return "not one condition (it changes the query around it); give e.g. \"clip_l >= 0.28\""
    if _has_table_function(node):
        return "table functions (read_csv, read_parquet, glob, ...) are not allowed: a filter only " \
               "selects manifest rows"
    return ""


def _run_interruptible(con: Any, query: str) -> list:
    """`query`'s rows, run on a helper thread so Ctrl-C interrupts duckdb instead of waiting for the
    query to end (then KeyboardInterrupt reaches the caller, once the query has stopped).

    While the query runs, SIGINT calls a handler that only sets a flag: no KeyboardInterrupt is
    raised inside the wait (one raised inside `Event.wait` can leave its lock held, and the wait
    for the query then hangs: seen once under load). The waiting thread calls `con.interrupt()` until
    the query ends (an interrupt sent before duckdb starts executing is lost, so it repeats).
    Off the main thread (no signal handlers there) the query runs in place."""
    if threading.current_thread() is not threading.main_thread():
        return con.execute(query).fetchall()
    box: dict[str, Any] = {}
    done, stop = threading.Event(), threading.Event()

    def work() -> None:
        try:
            if not stop.is_set():
                box["rows"] = con.execute(query).fetchall()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e
        finally:
            done.set()

    def on_sigint(signum, frame) -> None:
        stop.set()

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        threading.Thread(target=work, name="sctd3d-where", daemon=True).start()
        # an Event, not Thread.join: the connection must never be closed under a running query
        while not done.wait(0.05):
            if stop.is_set():
                con.interrupt()
    finally:
        signal.signal(signal.SIGINT, old)
    if stop.is_set():
        raise KeyboardInterrupt
    if "error" in box:
        raise box["error"]
    return box["rows"]


def select(table: pa.Table, where: str | None) -> pa.Table:
    """Rows of `table` (a manifest, one row per asset) where the SQL expression `where` is true.

    `None` or blank selects the done assets (DEFAULT_WHERE). Raises FilterError (one line)."""
    import duckdb

    expr = (where or "").strip() or DEFAULT_WHERE
    cols = ", ".join(table.column_names)
    why = _check_tokens(duckdb, expr)
    if why:
        raise _fail(expr, why, cols)
    query = _WRAP.format(expr)
    private = tempfile.mkdtemp(prefix="sctd3d-where-")
    con = duckdb.connect(":memory:", config={"temp_directory": private})
    try:
        con.register("manifest", table.select(table.column_names))
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        try:
            why = _check_shape(con, query)
            if why:
                raise _fail(expr, why, cols)
            log.info("--where %r: filtering %d manifest rows", expr, table.num_rows)
            rows = _run_interruptible(con, query)
        except duckdb.BinderException as e:
            m = re.search(r'column "([^"]+)" not found', str(e))
            what = f"unknown column {m.group(1)!r}" if m else _first_line(str(e))
            raise _fail(expr, what, cols) from None
        except duckdb.InterruptException:
            raise KeyboardInterrupt from None
        except duckdb.Error as e:
            raise _fail(expr, _first_line(str(e)), cols) from None
    finally:
        con.close()
        shutil.rmtree(private, ignore_errors=True)
    ids = [r[0] for r in rows]
    if any(not isinstance(i, str) for i in ids):  # cannot happen with the checked shape; never a traceback
        raise _fail(expr, "the filter did not select asset ids", cols)
    mask = pc.is_in(table.column("asset_id"), value_set=pa.array(ids, pa.string()))
    return table.filter(mask)
