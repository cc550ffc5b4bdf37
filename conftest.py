"""Repository-wide pytest setup: a headless matplotlib, and the notebooks' wall times.

`make test` runs `pytest tests notebooks solutions --nbval-lax`: nbval turns each notebook cell
into a test item. This file sums each notebook's cell durations from the run reports, prints a
table at the end of the session (slowest first) and writes it to .test-timings/notebooks.json,
so that a notebook creeping past the course's time budget is seen at once.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

# Tests draw figures but never show them; Agg needs no display (CI has none).
os.environ["MPLBACKEND"] = "Agg"

# Exercise notebooks raise NotImplementedError by design and tests/ holds fixture notebooks that
# fail on purpose: nbval executes only notebooks/ and solutions/ (tests check the others).
_NOT_FOR_NBVAL = {"tests", "exercises"}

_timings: dict[str, dict] = {}


def pytest_ignore_collect(collection_path, config):
    if collection_path.suffix == ".ipynb":
        try:
            rel = Path(collection_path).resolve().relative_to(config.rootpath.resolve())
        except ValueError:
            return None
        if rel.parts and rel.parts[0] in _NOT_FOR_NBVAL:
            return True
    return None


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    if not path.endswith(".ipynb"):
        return
    t = _timings.setdefault(path, {"path": path, "seconds": 0.0, "cells": 0, "failed": 0, "skipped": 0})
    t["seconds"] += float(getattr(report, "duration", 0.0) or 0.0)  # setup (kernel start), call, teardown
    if report.when == "call":
        t["cells"] += 1
        t["skipped"] += bool(report.skipped)
    t["failed"] += bool(report.failed)


def _status(t: dict) -> str:
    if t["failed"]:
        return "failed"
    return "skipped" if t["cells"] and t["skipped"] == t["cells"] else "passed"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _timings or hasattr(config, "workerinput"):
        return
    rows = [{"path": t["path"], "seconds": t["seconds"], "cells": t["cells"], "status": _status(t)}
            for t in sorted(_timings.values(), key=lambda t: -t["seconds"])]
    width = max(len(r["path"]) for r in rows)
    tr = terminalreporter
    tr.write_sep("=", "notebook wall times (sum of cell durations)")
    for r in rows:
        tr.write_line(f"{r['path']:<{width}}  {r['seconds']:8.1f} s  {r['status']}")
    tr.write_line(f"{'total':<{width}}  {sum(r['seconds'] for r in rows):8.1f} s  ({len(rows)} notebooks)")
    out = config.rootpath / ".test-timings" / "notebooks.json"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        rows = [{**r, "seconds": round(r["seconds"], 2)} for r in rows]
        out.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:  # a read-only checkout must not fail the run
        tr.write_line(f"(could not write {out}: {exc})")
