"""``benchmarks/gpu_check.py --smoke``: every step of the GPU check, on CPU with tiny models."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))  # the check and its helpers, as the check imports them
import gpu_check  # noqa: E402
from runs import last_value, logged_metric, max_time, run_metrics  # noqa: E402

STEPS = [
    "setup",
    "train_speed",
    "pretrain",
    "validate",
    "frozen",
    "frozen_test",
    "decode",
    "embed",
    "embed_index",
]
STEPS += ["finetune", "finetune_test"]


def check(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks/gpu_check.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def in_process(tmp_path: Path, skip: list[str] | None = None):
    """A check built in this process (its steps still run as processes), writing under ``tmp_path``."""
    import argparse

    args = argparse.Namespace(out=tmp_path / "out", work=tmp_path / "work", budget=60, smoke=True)
    args.skip = skip or []
    return gpu_check.Check(args)


def test_smoke_runs_every_step_and_records_each(imdb_dir: Path, tmp_path: Path) -> None:
    """Every step, in order, each recorded ok; the data cache given with --cache is used, so the tokenizer
    fit elsewhere is not fit again."""
    from imdb_transformer.data import LMDataModule

    seed = tmp_path / "seed"  # the smoke run's data settings (tiny.yaml, --data.vocab_size 400)
    LMDataModule(str(imdb_dir), str(seed), vocab_size=400, block_size=64, num_proc=1).fit_tokenizer()
    out = tmp_path / "out"
    done = check(
        "--smoke", "--cache", str(seed), "--data", str(imdb_dir), "--out", str(out),
        "--work", str(tmp_path / "work"),
    )  # fmt: skip
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
    assert by["embed_index"]["reviews"] == 40 and by["embed_index"]["reviews_per_s"] > 0
    assert [name[:22] for name in by["setup"]["cache"]] == ["tokenizer-unigram-400-"]
    log = (out / "gpu_check.log").read_text()
    assert "benchmarks/train_speed.py" in log and " fit " in log and " test " in log
    assert "Fitting a unigram tokenizer" not in log and by["pretrain"]["tokenizer_fit"] is False
    assert by["pretrain"]["tokenizer_fit_s"] is None
    assert "most recent call first" not in log  # no step came near its limit, so none wrote its stacks
    # each classifier fit is told to stop itself before its step's limit (90 s in a smoke run)
    fits = re.findall(r"\$ .* fit --config configs/classify\.yaml .*--trainer\.max_time (\S+)", log)
    assert len(fits) == 2 and all("00:00:00:01" < limit <= "00:00:01:00" for limit in fits), fits


def test_a_short_budget_still_gives_every_step_its_record(imdb_dir: Path, tmp_path: Path) -> None:
    """With 25 s in all, steps are cut at the budget or skipped, each with its reason, and the results
    file is whole JSON lines, one per step."""
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
    assert [r["step"] for r in records] == STEPS and records[0]["status"] == "ok"
    assert {r["status"] for r in records[1:]} <= {"ok", "timeout", "skipped", "failed"}
    assert "skipped" in {r["status"] for r in records} and all(
        r["why"] for r in records if r["status"] == "skipped"
    )
    assert sum(r["seconds"] for r in records) < 25 + 30  # a stopped step gets 20 s to save, no more


def test_a_step_over_its_limit_is_stopped_with_its_children(tmp_path: Path) -> None:
    """SIGTERM to the step itself, then SIGKILL to what is left of its process group: a child it
    started does not outlive it."""
    import os
    import time

    pid_file = tmp_path / "child.pid"
    stubborn = (  # ignores SIGTERM, as a busy worker might, and leaves a child sleeping
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        f"open({str(pid_file)!r}, 'w').write(str(c.pid)); print('started', flush=True); time.sleep(120)"
    )
    started = time.monotonic()
    status, code, output = in_process(tmp_path).run([sys.executable, "-c", stubborn], limit=2)
    assert status == "timeout" and code is None and "started" in output
    # its stacks, written shortly before its limit: where it hung; each line stamped with its time
    assert "most recent call first" in output and 'File "<string>", line 1' in output
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert re.search(r"^\[ *[0-9.]+s\] started$", log, re.M)
    assert log.count("most recent call first") == 1  # the step's own process; its Python child does not
    assert time.monotonic() - started < 2 + 20 + 5  # the limit, the grace period, a margin
    child = int(pid_file.read_text())
    time.sleep(0.5)
    try:
        os.kill(child, 0)
        alive = Path(f"/proc/{child}/stat").read_text().split()[2] != "Z"  # a zombie has ended
    except ProcessLookupError:
        alive = False
    assert not alive


def test_a_used_out_or_work_folder_is_refused(imdb_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.jsonl").write_text("{}\n")
    done = check("--smoke", "--data", str(imdb_dir), "--out", str(tmp_path / "out"), timeout=60)
    assert done.returncode == 2 and "not a new or empty folder" in done.stderr


def test_missing_data_or_out_is_a_usage_error(tmp_path: Path) -> None:
    done = check("--smoke", "--out", str(tmp_path / "fresh"), timeout=60)
    assert done.returncode == 2 and "--data" in done.stderr


def test_a_step_named_by_skip_is_recorded_and_not_run(tmp_path: Path) -> None:
    """--skip: the step is recorded as skipped, saying why, and its command never runs."""
    check_ = in_process(tmp_path, skip=["decode"])
    touched = tmp_path / "ran"
    command = [sys.executable, "-c", f"open({str(touched)!r}, 'w')"]
    assert check_.step("decode", command, limit=30) == {
        "step": "decode",
        "status": "skipped",
        "seconds": 0,
        "why": "--skip names it",
    }
    assert not touched.exists()
    assert check_.step("embed", command, limit=30)["status"] == "ok" and touched.exists()
    written = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [(r["step"], r["status"]) for r in written] == [("decode", "skipped"), ("embed", "ok")]


def test_each_line_and_redraw_is_logged_when_it_comes(tmp_path: Path) -> None:
    """A progress bar's redraws (carriage returns) and text left without an end are stamped when written,
    not when the step ends; odd bytes are replaced; the output handed back is the text, unstamped."""
    check_ = in_process(tmp_path)
    step = (
        "import sys, time; w = sys.stdout.buffer.write; f = sys.stdout.flush\n"
        "w(b'\\rbar 1'); f(); time.sleep(3)\n"  # a redraw, then a pause with 'bar 2' unended
        "w(b'\\rbar 2'); f(); time.sleep(3)\n"
        "w(b'\\xff odd\\n'); f()\n"
    )
    status, code, output = check_.run([sys.executable, "-c", step], limit=30)
    assert (status, code) == ("ok", 0)
    assert output.splitlines() == ["", "bar 1", "bar 2", "\ufffd odd"]
    stamps = dict(
        (text, float(at)) for at, text in re.findall(r"^\[ *([0-9.]+)s\] (.*)$", check_.log.read_text(), re.M)
    )
    assert stamps["bar 1"] < 2.9 and 2.9 < stamps["bar 2"] < 5.9 and stamps["\ufffd odd"] >= 5.9


def test_the_machines_own_sitecustomize_still_runs(tmp_path: Path, monkeypatch) -> None:
    """The check's sitecustomize (the stacks) runs first, then hands over to the one it shadows."""
    own = tmp_path / "own"
    own.mkdir()
    (own / "sitecustomize.py").write_text("print('the machine s own sitecustomize')\n")
    monkeypatch.setenv("PYTHONPATH", str(own))
    check_ = in_process(tmp_path)
    status, _, output = check_.run([sys.executable, "-c", "import faulthandler; print('ran')"], limit=30)
    assert status == "ok" and output.splitlines() == ["the machine s own sitecustomize", "ran"]


def test_a_forked_child_of_a_step_exits_without_waiting_on_the_stacks_watchdog(tmp_path: Path) -> None:
    """faulthandler's watchdog is stopped around a fork, so a child that exits the ordinary way ends at
    once (a child holding the parent's watchdog state would wait for a thread it does not have)."""
    child = (
        "import os, sys\n"
        "pid = os.fork()\n"
        "if pid == 0:\n    sys.exit(0)\n"
        "os.waitpid(pid, 0); print('child ended')\n"
    )
    status, _, output = in_process(tmp_path).run([sys.executable, "-c", child], limit=20)
    assert status == "ok" and "child ended" in output


def test_an_unknown_step_to_skip_is_a_usage_error(tmp_path: Path) -> None:
    done = check("--smoke", "--skip", "pretrain", "--data", "x", "--out", str(tmp_path / "o"), timeout=60)
    assert done.returncode == 2 and "invalid choice: 'pretrain'" in done.stderr


def test_the_tokenizer_fit_is_read_from_the_lines_the_fit_prints(tmp_path: Path) -> None:
    """The pretrain record's tokenizer fields, read from what ``fit_or_load`` itself says (so the two
    cannot drift apart), and nothing from a run that found the tokenizer cached."""
    from imdb_transformer.text.tokenizer import fit_or_load

    said: list[str] = []
    texts = [f"review {i}: a fine film, a dull plot and some acting worth seeing again" for i in range(60)]
    fit_or_load(texts, tmp_path, vocab_size=300, model_type="unigram", say=said.append)
    found = gpu_check.tokenizer_fit("\n".join(["Seed set to 1337", *said, "Cached token blocks"]))
    assert found["tokenizer_fit"] is True and isinstance(found["tokenizer_fit_s"], int)
    assert gpu_check.tokenizer_fit("Using cached token blocks") == {
        "tokenizer_fit": False,
        "tokenizer_fit_s": None,
    }


def test_pretraining_leaves_the_classifier_and_its_test_their_time() -> None:
    """Pretraining's wall time is what was asked, less what the budget left needs for its own start and
    export and for the steps after it; ``validate``, when skipped, gives its share back to pretraining."""
    # a 575 s budget after a 16 s set-up, 4 minutes asked (the H200 window's figures)
    assert gpu_check.pretrain_seconds(559, 240, smoke=False, skip=["train_speed", "validate"]) == 199
    assert gpu_check.pretrain_seconds(559, 240, smoke=False, skip=["train_speed"]) == 124
    assert gpu_check.pretrain_seconds(10_000, 240, smoke=False, skip=[]) == 240
    assert gpu_check.pretrain_seconds(100, 240, smoke=False, skip=[]) == 10  # never below 10 s
    assert gpu_check.pretrain_seconds(520, 30, smoke=True, skip=[]) == 30


def test_run_helpers_format_max_time_read_a_missing_run_and_name_a_missing_metric(tmp_path: Path) -> None:
    assert [max_time(s) for s in (30, 199.6, 3725, 0)] == [
        "00:00:00:30",
        "00:00:03:20",
        "00:01:02:05",
        "00:00:00:01",
    ]
    assert logged_metric("│ test/acc │ 0.9112 │", "test/acc") == 0.9112
    with pytest.raises(ValueError, match="test/acc is not in the output"):
        logged_metric("Received SIGTERM: 15", "test/acc")
    assert run_metrics(tmp_path) is None and last_value(run_metrics(tmp_path), "val/acc") is None
    run = tmp_path / "lightning_logs" / "version_3"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text("step,val/acc\n0,0.5\n1,\n2,0.75\n")
    assert (
        run_metrics(tmp_path) == run / "metrics.csv" and last_value(run_metrics(tmp_path), "val/acc") == 0.75
    )
