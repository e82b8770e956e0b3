"""Resumable result files for the measurement benchmarks (``bench speed``, ``bench stopping``).

These benchmarks are not (image, method) grids like the suites, so they do not fit
``results.csv``; they share the runner's discipline instead: one JSON file rewritten
atomically after every finished step (with a markdown table beside it), a run stopped at any
point loses at most the step in progress, and ``resume=True`` carries on from the file,
refusing when the settings that decide the numbers differ.

Rows are dicts identified by a ``key`` string; a row gains fields step by step (e.g. the
paper preset's timing, then the fast run), so a resumed run redoes only the missing steps.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import DeepPriorError
from ..images import atomic_write_bytes
from . import report, runner


def now_iso() -> str:
    """The current UTC time, to the second (recorded with every result)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def machine(device: str | None = None) -> dict:
    """The runner's machine record (CPU model, threads, versions) plus cores and the device."""
    info = runner.machine_info()
    info["cores"] = os.cpu_count()
    try:
        info["cores_usable"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        info["cores_usable"] = info["cores"]
    if device is not None:
        info["device"] = device
    return info


def open_results(out_dir: Path, filename: str, kind: str, config: dict, resume: bool) -> dict:
    """Read ``out_dir/filename`` to resume it, or start a new results dict.

    Like the runner: existing results without ``resume`` are an error (so nothing is
    overwritten by accident), and so is resuming with a different ``config``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DeepPriorError(f"{out_dir}: exists and is not a folder")
    path = out_dir / filename
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DeepPriorError(f"{path}: cannot read previous results ({e})") from None
        if not isinstance(data, dict) or data.get("kind") != kind or not isinstance(data.get("rows"), list):
            raise DeepPriorError(f"{path}: not a results file of deepprior bench {kind}")
        if not resume:
            raise DeepPriorError(f"{out_dir} already holds results; pass --resume to continue them or choose another --out")
        runner.check_same_config(out_dir, data.get("config", {}), config)
        return data
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DeepPriorError(f"{out_dir}: cannot create the output folder ({e.strerror})") from None
    return {"kind": kind, "config": dict(config), "started": now_iso(), "rows": []}


def get_row(data: dict, key: str) -> dict | None:
    return next((r for r in data["rows"] if r.get("key") == key), None)


def row_for(data: dict, key: str, **fields) -> dict:
    """The row called ``key``, created (with ``fields``) and appended when it is not there yet."""
    row = get_row(data, key)
    if row is None:
        row = {"key": key, **fields}
        data["rows"].append(row)
    return row


def _json_default(o):
    """The runner's JSON conversions, plus numpy booleans (comparisons of numpy floats make them)."""
    if isinstance(o, np.bool_):
        return bool(o)
    return runner._json_default(o)


def save(out_dir: Path, filename: str, data: dict, md_name: str, markdown: str) -> None:
    """Write the JSON results and the markdown tables, each atomically."""
    out_dir = Path(out_dir)
    data["updated"] = now_iso()
    rows = [{k: runner._clean_float(v) for k, v in r.items()} for r in data["rows"]]
    payload = dict(data, rows=rows)
    atomic_write_bytes(out_dir / filename, json.dumps(payload, indent=1, default=_json_default).encode())
    atomic_write_bytes(out_dir / md_name, markdown.encode())


# --------------------------------------------------------------------------- tables


@dataclass
class Table:
    """A table shown twice: as markdown in the results folder and with rich in the terminal."""

    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def fmt(v, digits: int = 2) -> str:
    """A number for a table cell ('-' for missing); booleans as met / NOT met."""
    if isinstance(v, (bool, np.bool_)):
        return "met" if v else "NOT met"
    return report._fmt(v, digits)


def to_markdown(title: str, preamble: list[str], tables: list[Table]) -> str:
    parts = [f"# {title}", ""] + preamble + [""]
    for t in tables:
        parts += [f"## {t.title}", ""]
        if t.rows:
            parts += [report._table(t.header, t.rows), ""]
        else:
            parts += ["No results yet.", ""]
        parts += [f"- {n}" for n in t.notes] + ([""] if t.notes else [])
    return "\n".join(parts)


def to_rich(tables: list[Table]) -> list:
    """rich Table objects for the terminal (cells that say NOT met are shown in red)."""
    from rich.table import Table as RichTable
    from rich.text import Text

    out = []
    for t in tables:
        rt = RichTable(title=t.title, title_justify="left")
        for h in t.header:
            rt.add_column(h, overflow="fold")
        for r in t.rows:
            rt.add_row(*[Text(c, style="red") if "NOT met" in c else Text(c.replace("**", "")) for c in r])
        out.append(rt)
    return out
