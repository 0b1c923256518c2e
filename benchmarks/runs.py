"""Starting and reading CLI runs, with the standard library alone (``gpu_check.py`` imports it before
anything is installed): a wall-time limit in Lightning's form, the newest run folder, a column of its
``metrics.csv``, a metric Lightning printed."""

from __future__ import annotations

import csv
import re
from pathlib import Path


def max_time(seconds: float) -> str:
    """``--trainer.max_time`` (DD:HH:MM:SS) for ``seconds``, rounded and at least 1."""
    minutes, seconds = divmod(max(1, round(seconds)), 60)
    return f"00:{minutes // 60:02d}:{minutes % 60:02d}:{seconds:02d}"


def latest_version(root: Path) -> Path | None:
    """The newest ``root/lightning_logs/version_N`` by its number, or None."""
    found = [p for p in (root / "lightning_logs").glob("version_*") if p.name[8:].isdigit()]
    return max(found, key=lambda p: int(p.name[8:]), default=None)


def run_metrics(root: Path) -> Path | None:
    """The ``metrics.csv`` of the newest run under ``root``, or None when no run logged a step."""
    run = latest_version(root)
    metrics = run / "metrics.csv" if run else None
    return metrics if metrics is not None and metrics.is_file() else None


def last_value(metrics: Path | None, column: str) -> float | None:
    """The last value of ``column`` in a run's ``metrics.csv``, or None if it has none (or there is no
    file: ``run_metrics`` found no run)."""
    if metrics is None:
        return None
    with metrics.open() as f:
        values = [row[column] for row in csv.DictReader(f) if row.get(column)]
    return float(values[-1]) if values else None


def logged_metric(output: str, name: str) -> float:
    """A metric from the results table Lightning prints (plain, or drawn with rich's box characters); a
    ValueError when the output has none (a run stopped before its table)."""
    found = re.search(re.escape(name) + r"\W+([0-9.]+)", output)
    if found is None:
        raise ValueError(f"{name} is not in the output: the run printed no results table")
    return float(found.group(1))
