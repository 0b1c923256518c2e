"""The GPU check: set up, then measure the GPU path in one command that fits one short window.

    python3 benchmarks/gpu_check.py --data .gpu_check/imdb --cache .gpu_check/cache \
        --wheels .gpu_check/wheels --out OUT
    python3 benchmarks/gpu_check.py --smoke --data DIR --out OUT   # the same steps on CPU, tiny (minutes)

Steps, one after another, each under its own time limit and all within ``--budget`` seconds:

1. ``setup``: Python, torch and the GPU; the project runs from ``src/`` (nothing is built), and the
   packages it needs that the machine lacks are installed from ``--wheels`` (no index is reached), or
   from the package index where there is one. The machine's own torch is kept: a GPU image's CUDA build.
2. ``train_speed``: ``train_speed.py`` at the GPU config's size (12 x 768, context 512, batch 64, bf16,
   compiled): tokens/s, MFU against the bf16 matmul peak measured in the same run, the profiler's top
   kernels.
3. ``pretrain`` and ``validate``: ``configs/pretrain_gpu.yaml`` through the real CLI for
   ``--pretrain_minutes`` (Lightning's ``--trainer.max_time``; fewer if the later steps need the budget
   left), then ``validate`` on its last checkpoint: steps, tokens/s, MFU (Lightning's FLOP/s over the
   measured peak), ``val/bpb``.
4. ``frozen`` and ``frozen_test``: a frozen classifier on that backbone (``configs/classify.yaml``: pooled
   features and word votes in context; Lightning's ``max_time`` ends its fit before the step's limit),
   then ``test`` of its best checkpoint on the 25,000 test reviews.
5. ``decode`` and ``embed``: ``decode_speed.py`` and ``embed_speed.py`` on that backbone (fp32 and bf16);
   ``embed_index``: ``imdb-transformer embed`` of the 25,000 test reviews into an index through
   ``Trainer.predict`` in ``bf16-mixed`` (reviews/s, BM25 and saving included).
6. ``finetune`` and ``finetune_test``: one epoch of fine-tuning and its ``test``, when time is left.

Each step appends one JSON object to ``OUT/results.jsonl`` as it ends (``step``, ``status``: ok, failed,
timeout, skipped or interrupted, ``seconds``, and what it measured: a CLI step cut short keeps the figures
its ``metrics.csv`` holds) and streams its output to ``OUT/gpu_check.log``, each line stamped with the seconds
since the step began, and a step's stacks shortly before its limit; nothing else is written under
``OUT`` (runs and checkpoints go to ``--work``), so the two files are all a short window has to bring back.
A step over its limit gets SIGTERM, then SIGKILL with its children; the check stopped by a signal stops
its step the same way. Nothing is downloaded at run time: the data is a local parquet folder (``--data``).

``--cache`` starts from a data cache fit elsewhere (the tokenizer); ``--skip`` leaves out steps no later one
needs. ``--smoke`` runs every step on the CPU with tiny models and few steps, so the script is tested before a
GPU is ever available (``tests/integration/test_gpu_check.py``). Only the Python standard library is
imported here: this file runs before anything is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from runs import last_value, latest_version, logged_metric, max_time, run_metrics

REPO = Path(__file__).resolve().parents[1]
# import name -> distribution: what the project imports (pyproject's dependencies and theirs that GPU
# images tend to lack); torch is the machine's own
NEEDED = {
    "lightning": "lightning",
    "torchmetrics": "torchmetrics",
    "datasets": "datasets",
    "dill": "dill",
    "multiprocess": "multiprocess",
    "sentencepiece": "sentencepiece",
    "safetensors": "safetensors",
    "jsonargparse": "jsonargparse",
    "docstring_parser": "docstring-parser",
    "typeshed_client": "typeshed-client",
    "bm25s": "bm25s",
    "scipy": "scipy",
    "pyarrow": "pyarrow",
    "tqdm": "tqdm",
}
# steps a short window can leave out (--skip): no later step needs their results, except that pretraining's
# MFU needs train_speed's measured peak (validate checks that last.ckpt restores; pretraining logs val/bpb)
SKIPPABLE = ("train_speed", "validate", "decode", "embed", "embed_index", "finetune")
# Limits and reservations, in seconds, sized from an H200 window's stamped log (docs/benchmarks.md, "The GPU
# check"): pretraining spent 60 s beside its max_time with a cached tokenizer (start, data, compile, export);
# validate 47; a frozen classifier 62 to start; its test 51 to start.
PRETRAIN_OVERHEAD = {True: 40, False: 90}  # pretraining's time beyond max_time (a tokenizer fit not included)
VALIDATE_LIMIT = {True: 60, False: 150}  # the checkpoint's own model compiles again
CLASSIFIER_LIMIT = {True: 90, False: 150}
CLASSIFIER_START = {True: 30, False: 75}  # a classifier fit's start; its max_time is what the limit leaves
TEST_LIMIT = 120
GPU_SHAPE = ["--n_layer", "12", "--n_head", "12", "--n_embd", "768", "--block_size", "512"]
TINY_SHAPE = ["--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "32", "--vocab_size", "50"]


class Check:
    """The results file, the log, the deadline, and the environment the steps run in."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check-")).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.results = self.out / "results.jsonl"
        self.log = self.out / "gpu_check.log"
        self.deadline = time.monotonic() + args.budget
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.paths = [str(REPO / "src"), str(REPO / "benchmarks"), str(stacks_folder(self.work))]
        self._path_env()

    def _path_env(self) -> None:
        self.env["PYTHONPATH"] = os.pathsep.join([*self.paths, os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def write(self, record: dict) -> None:
        with self.results.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)

    def say(self, text: str) -> None:
        with self.log.open("a", encoding="utf-8", errors="backslashreplace") as f:
            f.write(text)

    def run(self, command: list[str], limit: float) -> tuple[str, int | None, str]:
        """Run ``command`` from the repository root for at most ``limit`` seconds; (status, return code,
        its output). Its output goes to the log as it comes (:meth:`_copy`), and a Python step writes its
        threads' stacks there shortly before its limit (:data:`STACKS`), so a step that hangs shows where
        it was. A command over its limit gets SIGTERM (Lightning then saves a checkpoint), then its whole
        process group SIGKILL after a grace period."""
        self.say(f"\n$ {shlex.join(command)}   (at {self.args.budget - self.left():.0f} s of the check)\n")
        began = time.monotonic()
        env = {
            **self.env,
            "GPU_CHECK_PID": str(os.getpid()),
            "GPU_CHECK_STACKS_AT": str(began + limit - min(5.0, limit / 4)),  # CLOCK_MONOTONIC: system-wide
        }
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        lines: list[str] = []
        copier = threading.Thread(target=self._copy, args=(process.stdout, began, lines), daemon=True)
        copier.start()
        try:
            code = process.wait(timeout=max(1.0, limit))
            status = "ok" if code == 0 else "failed"
        except subprocess.TimeoutExpired:
            code, status = None, "timeout"
        finally:
            stop(process)  # also what a finished command left running (a worker, a server)
            copier.join(timeout=10)  # the pipe closes once the whole group has ended
            if copier.is_alive():  # a process that left the group holds it: stop reading
                process.stdout.close()
                self.say(
                    "(a process outside the step's group still holds its output; the rest is not logged)\n"
                )
        return status, code, "".join(lines)

    def _copy(self, stream: io.BufferedReader, began: float, lines: list[str]) -> None:
        """Write each line of ``stream`` to the log, stamped with the seconds since ``began``, and keep it
        in ``lines``. A line ends at a newline or a carriage return (a progress bar's redraw), and text
        left without an end for a second is written as it stands, so a stuck bar shows when it stuck.
        Undecodable bytes are replaced; a log that cannot be written (a full disk) does not stop the
        reading, so the step never blocks on a full pipe."""
        try:
            log = self.log.open("a", encoding="utf-8", errors="backslashreplace")
        except OSError:
            log = None

        def emit(piece: bytes) -> None:
            text = piece.decode("utf-8", errors="replace")
            lines.append(text + "\n")
            if log is not None:
                with contextlib.suppress(OSError, ValueError):
                    log.write(f"[{time.monotonic() - began:6.1f}s] {text}\n")
                    log.flush()

        pending, written, after_cr = b"", False, False  # written: pending went out before its end came
        with contextlib.suppress(OSError, ValueError):  # the stream closed under it (run gave up on it)
            while True:
                ready, _, _ = select.select([stream], [], [], 1.0)
                if not ready:
                    if pending:
                        emit(pending)
                        pending, written = b"", True
                    continue
                chunk = stream.read1(65536)
                if not chunk:
                    break
                if after_cr and chunk.startswith(b"\n"):  # a CRLF split between two reads
                    chunk = chunk[1:]
                after_cr = chunk.endswith(b"\r")
                *ended, pending = re.split(rb"\r\n|\r|\n", pending + chunk)
                if written and ended and ended[0] == b"":  # the end of the text already written
                    ended, written = ended[1:], False
                written = written and not ended and not pending
                for piece in ended:
                    emit(piece)
        if pending:
            emit(pending)
        if log is not None:
            with contextlib.suppress(OSError):
                log.close()
        with contextlib.suppress(OSError, ValueError):
            stream.close()

    def skip(self, name: str, why: str) -> dict:
        record = {"step": name, "status": "skipped", "seconds": 0, "why": why}
        self.write(record)
        return record

    def step(
        self,
        name: str,
        command: list[str],
        limit: float,
        read: Callable[[str], dict] | None = None,
        needs: float = 10.0,
    ) -> dict:
        """One step: skipped when less than ``needs`` seconds are left, else run for at most ``limit``
        seconds (cut to the budget left); its figures from ``read(output)``, also after a timeout."""
        if name in self.args.skip:
            return self.skip(name, "--skip names it")
        left = self.left()
        if left < needs:
            return self.skip(name, f"{left:.0f} s of the budget left")
        started = time.monotonic()
        try:
            status, code, output = self.run(command, min(limit, left))
        except Interrupted:
            self.write(
                {"step": name, "status": "interrupted", "seconds": round(time.monotonic() - started, 1)}
            )
            raise
        record = {"step": name, "status": status, "seconds": round(time.monotonic() - started, 1)}
        if code:
            record["returncode"] = code
            record["tail"] = output[-1500:]
        if read is not None:
            try:
                record.update(read(output))
            except Exception as err:  # a figure missing from a step cut short: say so, keep the rest
                record["unread"] = f"{type(err).__name__}: {err}"
        self.write(record)
        return record


STACKS = """\
# Written by gpu_check.py and put first on a step's PYTHONPATH. The step's own Python process (a child of the
# check) writes its threads' stacks to stderr, the check's log, at GPU_CHECK_STACKS_AT (a time.monotonic():
# Linux shares that clock between processes), shortly before the check stops a step over its limit.
# faulthandler's watchdog thread needs no signal and works while the main thread is in native code. It is
# stopped before each fork and armed again in the parent, so a forked child has no watchdog to wait for
# when it exits. Then the machine's own sitecustomize, if there is one, runs as it would have.
import faulthandler
import importlib
import os
import sys
import time


def _arm():
    left = float(os.environ["GPU_CHECK_STACKS_AT"]) - time.monotonic()
    faulthandler.dump_traceback_later(max(1.0, left), exit=False)


if os.environ.get("GPU_CHECK_STACKS_AT") and str(os.getppid()) == os.environ.get("GPU_CHECK_PID"):
    _arm()
    os.register_at_fork(before=faulthandler.cancel_dump_traceback_later, after_in_parent=_arm)

_here = os.path.dirname(os.path.abspath(__file__))
_path = sys.path[:]
sys.path[:] = [p for p in _path if os.path.abspath(p or ".") != _here]
_mine = sys.modules.pop("sitecustomize")
try:
    importlib.import_module("sitecustomize")
except ImportError as err:
    if err.name != "sitecustomize":
        raise
finally:
    sys.path[:] = _path
    sys.modules.setdefault("sitecustomize", _mine)
"""


def stacks_folder(work: Path) -> Path:
    """A folder holding :data:`STACKS` as ``sitecustomize``, for the steps' ``PYTHONPATH``: a run killed
    before its own handlers are set up would otherwise leave no trace of where it was."""
    folder = work / "stacks"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(STACKS)
    return folder


class Interrupted(Exception):
    """The check itself was told to stop (SIGTERM, SIGINT)."""


def stop(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM to ``process`` alone (its data workers must not die first, or nothing is saved), then,
    after ``grace`` seconds at most, SIGKILL to whatever of its process group is left."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def interrupt(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def python() -> str:
    return sys.executable


def setup(check: Check) -> dict:
    """What the machine has, and the missing packages installed (from wheels, else from the index)."""
    started = time.monotonic()
    probe = (
        "import json, importlib.util, platform, torch\n"
        "cuda = torch.cuda.is_available()\n"
        "print(json.dumps({'python': platform.python_version(), 'torch': torch.__version__, 'cuda': cuda,"
        " 'gpu': torch.cuda.get_device_name() if cuda else None,"
        f" 'missing': [m for m in {sorted(NEEDED)!r} if importlib.util.find_spec(m) is None]}}))"
    )
    status, _, output = check.run([python(), "-c", probe], min(120, check.left()))
    found = last_json(output) if status == "ok" else None
    if not isinstance(found, dict):
        why = "torch does not import: install the build for this machine (a CUDA build on a GPU) first"
        record = {"step": "setup", "status": "failed", "why": why, "tail": output[-1500:]}
        record["seconds"] = round(time.monotonic() - started, 1)
        check.write(record)
        return record
    missing = found.pop("missing")
    record = {"step": "setup", "status": "ok", **found, "installed": []}
    if missing:
        site = check.work / "site"
        names = [NEEDED[m] for m in missing]
        command = [python(), "-m", "pip", "install", "-q", "--target", str(site)]
        if check.args.wheels:  # only the missing ones' wheels: the machine's own packages stay in use
            wheels = [
                w for w in sorted(Path(check.args.wheels).resolve().glob("*.whl")) if wheel_name(w) in names
            ]
            command += ["--no-index", "--no-deps", *map(str, wheels)]
            record["installed"] = [w.name for w in wheels]
        else:
            command += names
            record["installed"] = names
        status, _, output = check.run(command, min(300, check.left()))
        check.paths.insert(0, str(site))
        check._path_env()
        # imported, not only found: a wheel whose own needs the machine lacks fails here, not mid-step
        recheck = (
            "import importlib, json\nbad = []\n"
            f"for m in {missing!r}:\n"
            "    try:\n        importlib.import_module(m)\n"
            "    except Exception as err:\n        bad.append(f'{m}: {type(err).__name__}: {err}')\n"
            "print(json.dumps(bad))"
        )
        _, _, still = check.run([python(), "-c", recheck], min(120, check.left()))
        broken = last_json(still)
        if status != "ok" or broken != []:
            found = broken if broken is not None else "the check printed no answer"
            why = f"could not install {names}: {found}"
            record.update(status="failed", why=why, tail=output[-1500:])
    if check.args.cache:  # e.g. the tokenizer, fit on another machine: the GPU's minutes go to the model
        try:
            shutil.copytree(check.args.cache, check.work / "cache", dirs_exist_ok=True)
            record["cache"] = sorted(path.name for path in check.args.cache.iterdir())
        except OSError as err:
            record.update(status="failed", why=f"could not copy --cache {check.args.cache}: {err}")
    if check.args.smoke:
        record["smoke"] = True
    record["seconds"] = round(time.monotonic() - started, 1)
    check.write(record)
    return record


def last_json(output: str) -> object:
    """The JSON on the last line of ``output``, or None if it holds none."""
    lines = output.strip().splitlines()
    try:
        return json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None


def wheel_name(wheel: Path) -> str:
    """A wheel file's distribution, normalised as pip compares names (``typeshed_client`` ->
    ``typeshed-client``)."""
    return re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()


def tokenizer_fit(output: str) -> dict:
    """Whether a run's output shows the tokenizer being fit (no ``--cache``, or one of other data or
    settings), and in how many seconds if the fit finished."""
    fit = re.search(r"Fit the tokenizer in (\d+) s", output)
    return {"tokenizer_fit": "Fitting a " in output, "tokenizer_fit_s": int(fit[1]) if fit else None}


def json_record(path: Path) -> Callable[[str], dict]:
    """A reader of a benchmark's ``--out`` record: its tables and notes."""

    def read(output: str) -> dict:
        saved = json.loads(path.read_text())
        return {"tables": saved["tables"], "notes": saved.get("notes", {})}

    return read


def empty_or_new(value: str) -> Path:
    """An argparse type: a folder that is new or empty, so no earlier run's files are read as this one's."""
    path = Path(value).resolve()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise argparse.ArgumentTypeError(
            f"{path} is not a new or empty folder: give a fresh one for each run"
        )
    return path


def folder(value: str) -> Path:
    """An argparse type: a folder that exists."""
    path = Path(value).resolve()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is not a folder")
    return path


def pretrain_seconds(left: float, wanted: float, smoke: bool, skip: list[str]) -> int:
    """Pretraining's wall time (at least 10 s): ``wanted``, less what the ``left`` of the budget needs
    for pretraining's own start and export and for the steps its backbone is for: ``validate`` unless
    skipped, then a frozen classifier and its test."""
    later = CLASSIFIER_LIMIT[smoke] + TEST_LIMIT
    later += 0 if "validate" in skip else VALIDATE_LIMIT[smoke] // 2  # half its limit; it took about a third
    return round(max(10, min(wanted, left - PRETRAIN_OVERHEAD[smoke] - later)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", required=True, help="a local IMDB parquet folder (train, test, unsupervised)"
    )
    parser.add_argument(
        "--out",
        required=True,
        type=empty_or_new,
        help="results.jsonl and gpu_check.log go here, nothing else",
    )
    parser.add_argument(
        "--work", type=empty_or_new, default=None, help="runs and checkpoints (default: a temporary folder)"
    )
    parser.add_argument(
        "--cache", type=folder, default=None,
        help="a data cache to start from, copied into the work folder's (the tokenizer fit on another "
        "machine, so it is not fit again on the GPU's time)",
    )  # fmt: skip
    parser.add_argument(
        "--wheels", default=None, help="a folder of wheels for the packages the machine lacks"
    )
    parser.add_argument("--budget", type=float, default=540, help="seconds for every step together")
    parser.add_argument(
        "--pretrain_minutes", type=float, default=3.5,
        help="pretraining's wall time at most, after its data is prepared; less if the budget left needs it",
    )  # fmt: skip
    parser.add_argument(
        "--skip", nargs="+", action="extend", default=[], choices=SKIPPABLE, metavar="STEP",
        help=f"steps to leave out, recorded as skipped: any of {', '.join(SKIPPABLE)} (their figures are "
        "not needed by later steps; without train_speed, pretraining's MFU is not computed)",
    )  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="the same steps on CPU with tiny models")
    args = parser.parse_args(argv)
    check = Check(args)
    if args.smoke:  # a smoke run on a machine with a GPU still tests the CPU path
        check.env["CUDA_VISIBLE_DEVICES"] = ""
    signal.signal(signal.SIGTERM, interrupt)  # a stopped check stops its step and records it
    signal.signal(signal.SIGINT, interrupt)
    try:
        return steps(check)
    except Interrupted as err:
        check.say(f"\nstopped by {err}\n")
        return 130


def steps(check: Check) -> int:
    """Every step after the set-up, in order; 0 if the classifier steps were reached."""
    if setup(check)["status"] != "ok":
        return 1
    args, work, smoke = check.args, check.work, check.args.smoke
    data = str(Path(args.data).resolve())
    cli = [python(), "-m", "imdb_transformer.cli"]

    # 2. the training step's speed at the GPU config's size, profiled
    speed = work / "train_speed.json"
    if smoke:
        shape = [*TINY_SHAPE, "--batch_size", "2", "--peak_size", "128", "--compile", "off", "--profile", "2"]
        shape += ["--steps", "1", "--rounds", "1", "--warmup", "1"]
    else:
        shape = [*GPU_SHAPE, "--batch_size", "64", "--compile", "on", "--profile", "5"]
        shape += ["--steps", "10", "--rounds", "3", "--warmup", "3"]
    timing = [python(), "benchmarks/train_speed.py", *shape, "--precision", "bf16", "--decoders", "ours"]
    timed = check.step(
        "train_speed", [*timing, "--out", str(speed)], limit=90 if smoke else 150, read=json_record(speed)
    )
    peak = timed.get("notes", {}).get("peak_matmul_gflops", {}).get("bf16")

    # 3. pretraining through the CLI for a wall time that leaves the later steps their share of the budget
    wanted = round((0.5 if smoke else args.pretrain_minutes) * 60)
    seconds = pretrain_seconds(check.left(), wanted, smoke, args.skip)
    config = [
        "--config",
        "configs/pretrain.yaml",
        "--config",
        "configs/tiny.yaml" if smoke else "configs/pretrain_gpu.yaml",
    ]
    config += [
        "--data.source",
        data,
        "--data.cache_dir",
        str(work / "cache"),
        "--trainer.enable_progress_bar",
        "false",
    ]
    if smoke:
        # tiny.yaml's 2,000 reviews: the IMDB folder in a few seconds, a small test folder whole
        config += ["--data.vocab_size", "400", "--trainer.max_steps", "30"]
    lm = work / "lm"

    def read_pretraining(output: str) -> dict:
        found = {"max_time_s": seconds, **tokenizer_fit(output)}
        metrics = run_metrics(lm)
        if metrics is None:
            return {**found, "steps": None, "unread": "no metrics.csv: the run logged no step"}
        flops = last_value(metrics, "train/device/flops_per_sec")
        found.update(steps=last_value(metrics, "step"), flops_per_s=flops)
        found["tokens_per_s"] = last_value(metrics, "train/device/items_per_sec")
        found["val_bpb_logged"] = last_value(metrics, "val/bpb")  # the last validation during training
        if flops and peak:
            found["mfu"] = round(flops / (peak * 1e9), 4)
        return found

    fit = [*cli, "fit", *config, "--trainer.default_root_dir", str(lm)]
    fit += ["--trainer.max_time", max_time(seconds)]
    check.step("pretrain", fit, limit=seconds + PRETRAIN_OVERHEAD[smoke], read=read_pretraining, needs=60)
    run = latest_version(lm)
    last = run / "checkpoints" / "last.ckpt" if run else None
    if last is not None and last.is_file():
        # the checkpoint's own hyper-parameters apply (a compiled model compiles again): a generous limit
        validate = [*cli, "validate", *config, "--trainer.default_root_dir", str(work / "validate")]
        check.step(
            "validate", [*validate, "--ckpt_path", str(last)], limit=VALIDATE_LIMIT[smoke],
            read=lambda out: {"val_bpb": logged_metric(out, "val/bpb")},
        )  # fmt: skip
    else:
        check.skip("validate", "pretraining left no last.ckpt")
    backbone = run / "backbone" if run else None
    if backbone is None or not backbone.is_dir():
        for name in ("frozen", "frozen_test", "decode", "embed", "embed_index", "finetune", "finetune_test"):
            check.skip(name, "pretraining exported no backbone")
        return 1

    # 4. a frozen classifier on that backbone, tested on the test split; 6. one epoch fine-tuned
    classify = [
        "--config",
        "configs/classify.yaml",
        "--data.source",
        data,
        "--data.cache_dir",
        str(work / "cache"),
    ]
    classify += ["--model.backbone", str(backbone), "--trainer.enable_progress_bar", "false"]
    classify += (
        ["--trainer.max_epochs", "1", "--data.max_reviews", "2000"]
        if smoke
        else ["--trainer.precision", "bf16-mixed"]
    )

    def classifier(name: str, options: list[str], limit: float) -> None:
        root = work / name
        fit = [*cli, "fit", *classify, *options, "--trainer.default_root_dir", str(root)]
        # the fit stops itself before its limit (or the budget's end), keeping its best checkpoint, rather
        # than being stopped
        fit += ["--trainer.max_time", max_time(min(limit, check.left()) - CLASSIFIER_START[smoke])]
        fitted = check.step(
            name, fit, limit=limit, needs=CLASSIFIER_START[smoke] + 30,  # 30 s of fitting at least
            read=lambda out: {"val_acc": last_value(run_metrics(root), "val/acc")},
        )  # fmt: skip
        version = latest_version(root)
        best = sorted(version.glob("checkpoints/best-*.ckpt")) if version else []
        if fitted["status"] == "skipped" or not best:
            why = f"{name} was skipped" if fitted["status"] == "skipped" else "no best checkpoint to test"
            check.skip(f"{name}_test", why)
            return
        test = [*cli, "test", *classify, *options, "--trainer.default_root_dir", str(root / "test")]
        check.step(
            f"{name}_test", [*test, "--ckpt_path", str(best[-1])], limit=TEST_LIMIT,
            read=lambda out: {"test_acc": logged_metric(out, "test/acc"), "checkpoint": best[-1].name},
        )  # fmt: skip

    classifier("frozen", [], limit=CLASSIFIER_LIMIT[smoke])

    # 5. decoding and embedding, fp32 against bf16
    decode, embed = work / "decode_speed.json", work / "embed_speed.json"
    if smoke:
        tokens = ["--new_tokens", "8", "--batch_size", "1", "--rounds", "1", "--check_tokens", "4"]
        reviews = ["--reviews", "40", "--rounds", "1"]
    else:
        tokens = ["--new_tokens", "256", "--batch_size", "1", "8", "--rounds", "3"]
        reviews = ["--reviews", "5000", "--batch_size", "128"]
    decoding = [python(), "benchmarks/decode_speed.py", "--checkpoint", str(backbone), *tokens]
    check.step("decode", [*decoding, "--out", str(decode)], limit=90, read=json_record(decode))
    embedding = [
        python(),
        "benchmarks/embed_speed.py",
        "--backbone",
        str(backbone),
        "--source",
        data,
        *reviews,
    ]
    check.step("embed", [*embedding, "--out", str(embed)], limit=90, read=json_record(embed))
    index = [*cli, "embed", "--backbone", str(backbone), "--source", data, "--out", str(work / "index")]
    index += ["--max_reviews", "40", "--trainer.precision", "32-true"] if smoke else []
    index += [] if smoke else ["--batch_size", "128", "--trainer.precision", "bf16-mixed"]

    def read_index(output: str) -> dict:
        saved = re.search(r"Saved ([0-9,]+) review embeddings \(([0-9.]+) reviews/s\)", output)
        return {"reviews": int(saved[1].replace(",", "")), "reviews_per_s": float(saved[2])} if saved else {}

    check.step("embed_index", index, limit=120, read=read_index)

    tuned = ["--model.freeze", "false", "--model.layer_lr_decay", "0.8"]
    classifier(
        "finetune", tuned + ([] if smoke else ["--trainer.max_epochs", "1"]), limit=90 if smoke else 240
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
