"""The in-process runner the tests drive the console script with gives what a process of its own would,
and leaves this process as it found it."""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch
from helpers import cli, in_process


def test_a_run_in_this_process_reports_as_a_process_and_leaves_this_one_as_it_was(tmp_path: Path) -> None:
    before = (dict(os.environ), os.getcwd(), torch.get_num_threads(), torch.random.get_rng_state())
    state = random.getstate()
    shown = in_process(["--help"], env={"IMDB_TRANSFORMER_TEST": "1"}, cwd=str(tmp_path))
    assert shown.returncode == 0 and "usage: imdb-transformer" in shown.stdout and not shown.stderr
    refused = in_process(["search", "--index", str(tmp_path / "nowhere"), "a query"])
    assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1].startswith("error: ")
    unknown = in_process(["no-such-verb"])
    assert unknown.returncode == 1 and "error: 'no-such-verb' is not a command" in unknown.stderr
    after = (dict(os.environ), os.getcwd(), torch.get_num_threads(), torch.random.get_rng_state())
    assert after[:3] == before[:3] and torch.equal(after[3], before[3]) and random.getstate() == state


def test_the_same_run_in_its_own_process_gives_the_same_status_and_error(tmp_path: Path) -> None:
    args = ("search", "--index", str(tmp_path / "nowhere"), "a query")
    here, there = cli(*args), cli(*args, process=True)
    assert here.returncode == there.returncode == 1
    assert here.stderr.strip().splitlines()[-1] == there.stderr.strip().splitlines()[-1]
