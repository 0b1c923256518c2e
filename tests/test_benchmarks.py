"""The benchmark scripts run and print their table (on tiny sizes; timings are never asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / name), *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_decode_speed_prints_cached_against_recomputed() -> None:
    tiny = ["--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "32", "--vocab_size", "50"]
    out = run_script("decode_speed.py", *tiny, "--new_tokens", "8", "40", "--batch_size", "2")
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[1].strip() for row in rows] == ["8", "40"]  # 40 slides past the context
    assert "differ" not in out and all(row.rstrip(" |").endswith("x") for row in rows)
