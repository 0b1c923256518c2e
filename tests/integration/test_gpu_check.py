"""``benchmarks/gpu_check.py --smoke``: every step of the GPU check, on CPU with tiny models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import REPO

STEPS = ["setup", "train_speed", "pretrain", "validate", "frozen", "frozen_test", "decode", "embed"]
STEPS += ["finetune", "finetune_test"]


def check(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks/gpu_check.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_smoke_runs_every_step_and_records_each(imdb_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = check("--smoke", "--data", str(imdb_dir), "--out", str(out), "--work", str(tmp_path / "work"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu_check.log",
        "results.jsonl",
    ]  # nothing else comes back
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == STEPS
    assert all(r["status"] == "ok" for r in records), [r for r in records if r["status"] != "ok"]
    by = {r["step"]: r for r in records}
    assert by["setup"]["smoke"] and by["setup"]["cuda"] is False and by["setup"]["torch"]
    speed = by["train_speed"]["tables"]
    assert (
        speed["throughput"]["rows"][0][:3] == ["bf16", "off", "ours"]
        and speed["profile bf16 compile off"]["rows"]
    )
    assert by["pretrain"]["steps"] >= 1 and 0 < by["validate"]["val_bpb"] < 20
    assert 0 <= by["frozen_test"]["test_acc"] <= 1 and by["frozen_test"]["checkpoint"].startswith("best-")
    assert [row[0] for row in by["embed"]["tables"]["embedding"]["rows"]] == ["fp32", "bf16"]
    assert by["decode"]["tables"]["decoding"]["rows"]
    log = (out / "gpu_check.log").read_text()
    assert "benchmarks/train_speed.py" in log and " fit " in log and " test " in log


def test_a_step_over_budget_is_cut_and_the_rest_skipped(imdb_dir: Path, tmp_path: Path) -> None:
    """With 25 s in all, a step is stopped at the budget and recorded; the steps after it are skipped,
    each with its reason, and the results file is whole JSON lines."""
    out = tmp_path / "out"
    check(
        "--smoke",
        "--budget",
        "25",
        "--data",
        str(imdb_dir),
        "--out",
        str(out),
        "--work",
        str(tmp_path / "work"),
    )
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    statuses = {r["step"]: r["status"] for r in records}
    assert statuses["setup"] == "ok"
    assert "timeout" in statuses.values() or "skipped" in statuses.values()
    assert all(r["why"] for r in records if r["status"] == "skipped")
    assert sum(r["seconds"] for r in records) < 25 + 30  # a stopped step gets 20 s to save, no more


def test_missing_data_or_out_is_a_usage_error(tmp_path: Path) -> None:
    done = check("--smoke", "--out", str(tmp_path), timeout=60)
    assert done.returncode == 2 and "--data" in done.stderr
