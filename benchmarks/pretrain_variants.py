"""Pretraining choices side by side at equal wall time: which ones lower ``val/bpb`` on these cores.

    python benchmarks/pretrain_variants.py --source ../shared/data/imdb --minutes 5 \
        --variant "baseline=" --variant "qk-norm + relu2=--model.qk_norm true --model.activation relu2" \
        --out docs/results/pretrain_variants.json

Each variant is one real run of ``imdb-transformer fit --config configs/pretrain.yaml`` plus its own
options, stopped by Lightning's ``--trainer.max_time`` after the same number of minutes (the
learning-rate schedule stays the config's, so each run is the first minutes of the full run it would
become), then ``imdb-transformer validate`` on its last checkpoint: the same held-out reviews for
every variant, with its bits per byte. The runs go one after another on the same cores; the table
gives each variant's steps, tokens/s (Lightning's throughput monitor over the last 50 steps) and
``val/bpb``, and its difference from the first variant.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, Record, add_out_argument
from runs import last_value, latest_version, logged_metric, max_time


def named(value: str) -> tuple[str, list[str]]:
    """``NAME=OPTIONS``: the variant's name and its extra command-line options (empty for the config)."""
    name, sep, options = value.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=OPTIONS, got {value!r}")
    return name.strip(), shlex.split(options)


def cli(*args: str, log: Path) -> str:
    """Run ``imdb-transformer`` with ``args``; its output, also appended to ``log``. Raises on failure."""
    command = [sys.executable, "-m", "imdb_transformer.cli", *args]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    with log.open("a") as f:
        f.write(f"$ {shlex.join(command)}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed ({done.returncode}); see {log}")
    return done.stdout + done.stderr


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="stanfordnlp/imdb", help="dataset id or local parquet folder")
    parser.add_argument("--config", default="configs/pretrain.yaml", help="every variant's base config")
    parser.add_argument("--minutes", type=float, default=5.0, help="training wall time of each variant")
    parser.add_argument(
        "--variant", action="append", type=named, required=True, help="NAME=OPTIONS; repeat for each"
    )
    parser.add_argument("--options", default="", help="options for every variant (e.g. a tiny config's)")
    parser.add_argument("--root", default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--log", default="pretrain_variants.log", help="the runs' output")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    log = Path(args.log).resolve()
    log.write_text("")
    limit = max_time(args.minutes * 60)
    record = Record("pretrain_variants")
    record.notes.update(config=args.config, minutes=args.minutes, options=args.options)
    table = record.table(
        f"{args.minutes:g} minutes of training each",
        ["variant", "options", "steps", "tokens/s (last 50 steps)", "val/bpb", "vs first"],
    )
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.root or scratch).resolve()
        first = None
        for i, (name, options) in enumerate(args.variant):
            run_root = root / f"variant{i}"
            common = ["--config", args.config, "--data.source", args.source, *shlex.split(args.options)]
            common += [*options, "--trainer.default_root_dir", str(run_root)]
            common += ["--trainer.enable_progress_bar", "false"]
            started = time.perf_counter()
            cli("fit", *common, "--trainer.max_time", limit, log=log)
            version = latest_version(run_root)
            metrics = version / "metrics.csv"
            steps = last_value(metrics, "step")
            speed = last_value(metrics, "train/device/items_per_sec")
            out = cli("validate", *common, "--ckpt_path", str(version / "checkpoints" / "last.ckpt"), log=log)
            bpb = logged_metric(out, "val/bpb")
            first = bpb if first is None else first
            table.add(
                name,
                shlex.join(options) or "(config)",
                "" if steps is None else f"{steps + 1:.0f}",
                "" if speed is None else f"{speed:,.0f}",
                f"{bpb:.4f}",
                f"{bpb - first:+.4f}",
            )
            print(f"  ({time.perf_counter() - started:.0f} s with validation)", flush=True)
            record.save(args.out)  # a run cut short still leaves the variants it measured


if __name__ == "__main__":
    main()
