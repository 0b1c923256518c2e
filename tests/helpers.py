"""Shared test helpers: running the real console script, reading a run's metrics, and callbacks that
the script's subprocesses import (the tests folder is put on PYTHONPATH for them, see ``HELPERS``)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer

from imdb_transformer.data import LMDataModule

REPO = Path(__file__).resolve().parents[1]
SCRIPT = shutil.which("imdb-transformer") or str(Path(sys.executable).parent / "imdb-transformer")
HELPERS = {"PYTHONPATH": str(Path(__file__).parent)}  # lets a subprocess's config name these callbacks


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``imdb-transformer ARGS`` and return what it did, whatever its exit status."""
    return subprocess.run(
        [SCRIPT, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600
    )


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``imdb-transformer ARGS`` and require it to succeed."""
    result = cli(*args, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def fails(*args: str, env: dict | None = None) -> str:
    """Run ``imdb-transformer ARGS``, require it to fail, and return its stderr."""
    result = cli(*args, env=env)
    assert result.returncode != 0, result.stdout[-3000:]
    return result.stderr


def read_metrics(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """A run's ``metrics.csv`` as ``{name: [(step, value), ...]}``."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(run_dir / "metrics.csv") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if value and key not in ("step", "epoch"):
                    series.setdefault(key, []).append((int(row["step"]), float(value)))
    return series


class RecordBatches(Callback):
    """Saves every training batch a rank sees to ``record_dir/rank{N}.pt``."""

    def __init__(self, record_dir: str) -> None:
        self.record_dir = Path(record_dir)
        self.rows: list[torch.Tensor] = []

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int
    ) -> None:
        self.rows.append(batch.cpu())

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.record_dir.mkdir(parents=True, exist_ok=True)
        torch.save(torch.cat(self.rows), self.record_dir / f"rank{trainer.global_rank}.pt")


def classifier_checkpoint(backbone: Path, path: Path, seed: int = 0, **settings) -> Path:
    """An untrained ``SentimentClassifier`` over ``backbone`` with random head weights, saved to ``path``
    as Lightning saves a checkpoint (its backbone's record included)."""
    from imdb_transformer.models.classifier import SentimentClassifier

    torch.manual_seed(seed)
    model = SentimentClassifier(backbone=str(backbone), **settings)
    with torch.no_grad():
        for name, weights in model.named_parameters():
            if not name.startswith("backbone."):
                weights.normal_(std=0.1)
    checkpoint = {"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def train_blocks(config_path: Path) -> torch.Tensor:
    """The training blocks of the data module a run's saved config describes (as 2 ranks see them)."""
    args = yaml.safe_load(config_path.read_text())["data"]["init_args"]
    dm = LMDataModule(**args)
    dm.trainer = type("T", (), {"world_size": 2})()
    dm.setup("fit")
    return dm.train_set.blocks


class SlowSteps(Callback):
    """Sleeps after every training step, so a test can kill a run part-way through."""

    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds = seconds

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        time.sleep(self.seconds)


class PoisonWeights(Callback):
    """Fills the embedding with NaN before step ``at_step``, as a diverging run would."""

    def __init__(self, at_step: int = 5) -> None:
        self.at_step = at_step

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int
    ) -> None:
        if trainer.global_step == self.at_step:
            with torch.no_grad():
                pl_module.backbone.wte.weight.fill_(float("nan"))


class RecordLogitsDtype(Callback):
    """Writes the dtype of the backbone's output in each training step to ``record``, one per line:
    ``torch.bfloat16`` where the step ran under bf16 autocast."""

    def __init__(self, record: str) -> None:
        self.record = Path(record)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        def hook(module, inputs, output) -> None:
            if module.training:
                with self.record.open("a") as f:
                    f.write(f"{output.dtype}\n")

        pl_module.backbone.register_forward_hook(hook)


# Many console-script runs in one process (index and review tests): each run of imdb-transformer
# spends seconds importing torch and Lightning; main_each pays that once.


_RUNNER = r"""
import contextlib, io, json, sys, traceback
from imdb_transformer.cli import main

results = []
for argv in json.loads(sys.argv[1]):
    print("RUNNING " + json.dumps(argv), flush=True)
    err, out = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit as exit:  # as the interpreter would report it: a message is printed, status 1
            code = exit.code if isinstance(exit.code, int) else 1
            if isinstance(exit.code, str):
                err.write(exit.code + "\n")
        except BaseException:
            err.write(traceback.format_exc())
            code = 1
    results.append({"argv": argv, "code": code, "stderr": err.getvalue(), "stdout": out.getvalue()})
print("RESULTS " + json.dumps(results), flush=True)
"""


def main_each(runs: list[list[str]], env: dict | None = None, cwd: str | None = None) -> list[dict]:
    """``imdb-transformer ARGV`` for each ARGV of ``runs``: their exit codes, stdout and stderr."""
    child = subprocess.run(
        [sys.executable, "-c", _RUNNER, json.dumps(runs)],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=600,
    )  # fmt: skip
    lines = child.stdout.splitlines()
    found = [line for line in lines if line.startswith("RESULTS ")]
    if child.returncode != 0 or not found:
        running = [line for line in lines if line.startswith("RUNNING ")]
        raise AssertionError(
            f"the runs' process ended with status {child.returncode} during "
            f"{running[-1] if running else 'start-up'}:\n{child.stderr[-3000:]}"
        )
    return json.loads(found[-1][len("RESULTS ") :])


def error_line(result: dict) -> str:
    """The one ``error:`` line a failed run printed, after checking it failed with exit status 1 and
    printed no traceback."""
    stderr = result["stderr"]
    assert result["code"] == 1, (result["argv"], result["code"], stderr[-2000:])
    assert "Traceback" not in stderr, (result["argv"], stderr[-2000:])
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, (result["argv"], stderr[-2000:])
    return errors[0]
