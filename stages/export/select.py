"""The `--where` filter: a SQL boolean expression over manifest columns, run by duckdb.

Why duckdb and not eval: the filter is parsed by a real query engine, on an in-memory copy of
the manifest, with file system access switched off, so a filter can only select rows. Errors
are turned into one line naming the unknown column (or the syntax problem) and the columns
available.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

DEFAULT_WHERE = "status = 'done'"


class FilterError(ValueError):
    """A --where expression that cannot be evaluated on the manifest."""


def _first_line(msg: str) -> str:
    line = msg.strip().splitlines()[0] if msg.strip() else msg
    return re.sub(r"^\w+ Error: ", "", line)


def select(table: pa.Table, where: str | None) -> pa.Table:
    """Rows of `table` (a manifest, one row per asset) where the SQL expression `where` is true.

    `None` or blank selects the done assets (DEFAULT_WHERE). Raises FilterError."""
    import duckdb

    expr = (where or "").strip() or DEFAULT_WHERE
    cols = ", ".join(table.column_names)
    con = duckdb.connect(":memory:")
    try:
        con.register("manifest", table.select(table.column_names))
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        try:
            ids = [r[0] for r in con.execute(
                f"SELECT asset_id FROM manifest WHERE ({expr})").fetchall()]
        except duckdb.BinderException as e:
            m = re.search(r'column "([^"]+)" not found', str(e))
            what = f"unknown column {m.group(1)!r}" if m else _first_line(str(e))
            raise FilterError(f"--where {expr!r}: {what}; available columns: {cols}") from None
        except duckdb.ParserException as e:
            raise FilterError(f"--where {expr!r}: {_first_line(str(e))}; available columns: "
                              f"{cols}") from None
        except duckdb.Error as e:
            raise FilterError(f"--where {expr!r}: {_first_line(str(e))}; available columns: "
                              f"{cols}") from None
    finally:
        con.close()
    mask = pc.is_in(table.column("asset_id"), value_set=pa.array(ids, pa.string()))
    return table.filter(mask)
