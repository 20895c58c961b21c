"""The Markdown tables and CSV files that the benchmark, the sweep and the tools write."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from pathlib import Path


def markdown_table(rows: list[Mapping], columns: Iterable[str] | None = None, *,
                   floatfmt: str | Mapping[str, str] = ".3g", missing: str = "") -> str:  # fmt: skip
    """A Markdown table of `columns` (default: the first row's keys), one line per row.

    Floats are formatted with `floatfmt`: one format spec for every column, or a mapping from column name to spec (a
    column it does not name gets ".3g"). None and "" show as `missing`; anything else as `str()`. A `|` inside a cell
    is escaped so that it cannot split the cell.
    """
    columns = list(columns if columns is not None else (rows[0] if rows else ()))

    def cell(column: str, value) -> str:
        if value is None or (isinstance(value, str) and value == ""):
            return missing
        if isinstance(value, float):
            return format(value, floatfmt if isinstance(floatfmt, str) else floatfmt.get(column, ".3g"))
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c, r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(path: str | Path, rows: list[Mapping], columns: Iterable[str] | None = None) -> Path:
    """Write `rows` (dicts) to a CSV file with a header of `columns` (default: the first row's keys)."""
    path = Path(path)
    columns = list(columns if columns is not None else (rows[0] if rows else ()))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path
