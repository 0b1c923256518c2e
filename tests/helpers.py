"""Shared test helpers: running the real console script, reading a run's metrics, and callbacks that
the script's runs import (the tests folder is put on PYTHONPATH for a subprocess, see ``HELPERS``)."""

from __future__ import annotations

import contextlib
import csv
import gc
import io
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer

from imdb_transformer.data import LMDataModule

REPO = Path(__file__).resolve().parents[1]
SCRIPT = shutil.which("imdb-transformer") or str(Path(sys.executable).parent / "imdb-transformer")
HELPERS = {"PYTHONPATH": str(Path(__file__).parent)}  # lets a subprocess's config name these callbacks


def cli(*args: str, env: dict | None = None, process: bool = False) -> subprocess.CompletedProcess:
    """Run ``imdb-transformer ARGS`` and return what it did, whatever its exit status.

    By default the console script's entry point runs in this process (see :func:`in_process`), which
    spares each run the seconds a new interpreter spends importing torch and Lightning. With
    ``process`` it runs as its own process: for what only a process of its own has (signals, an
    environment read at import, which GPUs CUDA may see)."""
    if not process:
        return in_process([*args], env)
    return subprocess.run(
        [SCRIPT, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600
    )


def run_cli(*args: str, env: dict | None = None, process: bool = False) -> subprocess.CompletedProcess:
    """Run ``imdb-transformer ARGS`` (as :func:`cli` does) and require it to succeed."""
    result = cli(*args, env=env, process=process)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def fails(*args: str, env: dict | None = None, process: bool = False) -> str:
    """Run ``imdb-transformer ARGS`` (as :func:`cli` does), require it to fail, and return its stderr."""
    result = cli(*args, env=env, process=process)
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


# A run of the console script inside the test's own process, as a fresh process would see it.

_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


@contextlib.contextmanager
def _as_a_fresh_process(
    argv: list[str], env: dict | None, cwd: str | None
) -> Iterator[tuple[io.StringIO, ...]]:
    """What a new ``imdb-transformer`` process would have, for one run inside this one: its argv,
    environment and working folder; stdout and stderr of its own (yielded), with Lightning's log lines
    and Python's warnings printed there; and afterwards this process's threads, matmul precision,
    grad mode, random states, signal handlers and log settings as they were."""
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_argv, saved_cwd = dict(os.environ), sys.argv, os.getcwd()
    threads, precision, grad = (
        torch.get_num_threads(),
        torch.get_float32_matmul_precision(),
        torch.is_grad_enabled(),
    )
    states = torch.random.get_rng_state(), random.getstate(), np.random.get_state()
    handlers = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    loggers = [logging.getLogger(name) for name in _LIGHTNING_LOGGERS]
    log_settings = [(log.level, log.propagate, log.handlers) for log in loggers]
    os.environ.update(env or {})
    sys.argv = [SCRIPT, *argv]
    if cwd is not None:
        os.chdir(cwd)
    for log in loggers:  # as Lightning sets its loggers up in a process without logging configured
        log.handlers, log.propagate = [logging.StreamHandler(err)], False
        log.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: (
                err.write(warnings.formatwarning(message, category, filename, lineno, line))
            )
            yield out, err
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(precision)
        torch.set_grad_enabled(grad)
        torch.random.set_rng_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for log, (level, propagate, kept) in zip(loggers, log_settings, strict=True):
            log.setLevel(level)
            log.propagate, log.handlers = propagate, kept
        gc.collect()


def in_process(
    argv: list[str], env: dict | None = None, cwd: str | None = None
) -> subprocess.CompletedProcess:
    """Run ``imdb-transformer ARGV`` through the console script's entry point in this process, and
    return its exit status, stdout and stderr as the interpreter would give them: ``sys.exit`` with a
    message prints it and exits 1, an uncaught exception prints its traceback and exits 1."""
    from imdb_transformer.cli import main

    code = 0
    with _as_a_fresh_process(argv, env, cwd) as (out, err):
        try:
            main()  # as the console script calls it: the arguments come from sys.argv
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
            if isinstance(exit.code, str):
                err.write(exit.code + "\n")
        except KeyboardInterrupt:
            raise
        except BaseException:
            err.write(traceback.format_exc())
            code = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # so the next run starts as a new process would
        raise AssertionError(
            f"imdb-transformer {' '.join(argv)} launched processes of its own, whose output this "
            "process cannot capture: run it with process=True"
        )
    return subprocess.CompletedProcess([SCRIPT, *argv], code, out.getvalue(), err.getvalue())


_RUNNER = r"""
import json, sys
from helpers import in_process
results = []
for argv in json.loads(sys.argv[1]):
    print("RUNNING " + json.dumps(argv), flush=True)
    run = in_process(argv)
    results.append({"argv": argv, "code": run.returncode, "stderr": run.stderr, "stdout": run.stdout})
print("RESULTS " + json.dumps(results), flush=True)
"""


def main_each(
    runs: list[list[str]], env: dict | None = None, cwd: str | None = None, process: bool = False
) -> list[dict]:
    """``imdb-transformer ARGV`` for each ARGV of ``runs``: their exit codes, stdout and stderr. They run
    in this process (see :func:`in_process`), or with ``process`` one after another in one new process."""
    if not process:
        return [
            {"argv": argv, "code": run.returncode, "stderr": run.stderr, "stdout": run.stdout}
            for argv in runs
            for run in [in_process(argv, env, cwd)]
        ]
    child = subprocess.run(
        [sys.executable, "-c", _RUNNER, json.dumps(runs)],
        capture_output=True, text=True, env={**os.environ, **HELPERS, **(env or {})}, cwd=cwd, timeout=600,
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
