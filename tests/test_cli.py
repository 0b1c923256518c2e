"""The command line: wiring, and real runs of the ``imdb-transformer`` console script on tiny data."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imdb_transformer.cli import build_cli
from imdb_transformer.models import CausalLM

REPO = Path(__file__).resolve().parents[1]
SCRIPT = shutil.which("imdb-transformer") or str(Path(sys.executable).parent / "imdb-transformer")


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [SCRIPT, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def read_metrics(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    with open(run_dir / "metrics.csv") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if value and key not in ("step", "epoch"):
                    series.setdefault(key, []).append((int(row["step"]), float(value)))
    return series


def test_wiring_links_data_sizes_into_the_model(
    tiny_fit_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["imdb-transformer"])  # only ``args`` is parsed
    cli = build_cli([*tiny_fit_args, "--data.vocab_size", "333", "--data.block_size", "24"], run=False)
    assert isinstance(cli.model, CausalLM)
    assert cli.model.config.vocab_size == 333 and cli.model.config.block_size == 24
    assert cli.datamodule.vocab_size == 333
    assert cli.config.seed_everything == 1337  # the seed is fixed in the YAML
    assert any(type(c).__name__ == "ModelCheckpoint" for c in cli.trainer.callbacks)


def test_help_documents_the_arguments() -> None:
    out = " ".join(run_cli("fit", "--data.help", "imdb_transformer.data.LMDataModule").stdout.split())
    assert "--data.source" in out and "local folder holding" in out
    assert "Share of whole reviews held out" in out


def test_tiny_fit_writes_a_checkpoint_and_lowers_the_loss(tiny_fit_args: list[str], tmp_path: Path) -> None:
    run_cli("fit", *tiny_fit_args)
    run = tmp_path / "lightning_logs" / "version_0"
    assert (run / "config.yaml").is_file() and (run / "tokenizer.model").is_file()
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(n.startswith("best-step=") for n in ckpts)
    metrics = read_metrics(run)
    val = [v for _, v in metrics["val/loss"]]
    assert len(val) == 3 and val[-1] < val[0]  # after steps 10, 20 and 30
    train = [v for _, v in metrics["train/loss"]]
    assert train[-1] < train[0]
    assert {"val/ppl", "val/bpb"} <= metrics.keys()
    # checkpoints hold only tensors and plain values: they load without unpickling code
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 30
    saved_tokenizer = bytes(ckpt["LMDataModule"]["tokenizer_model"].numpy())
    assert saved_tokenizer == (run / "tokenizer.model").read_bytes()


def test_fit_resumes_with_ckpt_path_last(tiny_fit_args: list[str], tmp_path: Path) -> None:
    run_cli("fit", *tiny_fit_args, "--trainer.max_steps", "20")
    out = run_cli("fit", *tiny_fit_args, "--ckpt_path", "last")
    assert "version_0/checkpoints/last.ckpt" in out.stdout
    resumed = tmp_path / "lightning_logs" / "version_1"
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 30
    steps = [s for s, _ in read_metrics(resumed)["train/loss"]]
    assert min(steps) >= 20  # the step count continues where the first run stopped


def test_ckpt_path_last_without_a_run_is_a_clear_error(tiny_fit_args: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        [SCRIPT, "fit", *tiny_fit_args, "--ckpt_path", "last"], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "no last.ckpt under" in result.stderr


def test_bf16_mixed_precision_runs_on_cpu(tiny_fit_args: list[str], tmp_path: Path) -> None:
    run_cli("fit", *tiny_fit_args, "--trainer.precision", "bf16-mixed", "--trainer.max_steps", "10")
    assert (tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_compiled_backbone_trains_and_saves_plain_keys(tiny_fit_args: list[str], tmp_path: Path) -> None:
    run_cli("fit", *tiny_fit_args, "--model.compile", "true", "--trainer.max_steps", "10")
    ckpt = torch.load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    assert "backbone.wte.weight" in ckpt["state_dict"]  # no "_orig_mod." prefix: loads into a plain model


def test_a_missing_source_fails_before_training(tiny_fit_args: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        [SCRIPT, "fit", *tiny_fit_args, "--data.source", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "does not exist; expected a folder holding train.parquet" in result.stderr
    assert not (tmp_path / "lightning_logs" / "version_0" / "checkpoints").exists()


def test_ddp_on_two_cpu_processes_sees_each_block_once(tiny_fit_args: list[str], tmp_path: Path) -> None:
    record = tmp_path / "seen"
    run_cli(
        "fit", *tiny_fit_args,
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.max_steps", "-1", "--trainer.max_epochs", "1",
        "--trainer.val_check_interval", "1.0", "--trainer.check_val_every_n_epoch", "1",
        "--trainer.callbacks+=helpers.RecordBatches", f"--trainer.callbacks.record_dir={record}",
        env={"PYTHONPATH": str(Path(__file__).parent)},
    )  # fmt: skip
    seen = [tuple(row) for f in sorted(record.glob("rank*.pt")) for row in torch.load(f).tolist()]
    assert len(list(record.glob("rank*.pt"))) == 2
    from helpers import train_blocks

    blocks = train_blocks(tmp_path / "lightning_logs" / "version_0" / "config.yaml")
    assert sorted(seen) == sorted(tuple(r) for r in blocks.tolist())  # each block once, across both ranks


def test_pretrain_classify_test_pipeline_prints_accuracy(
    pretrained_run: Path, imdb_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    common = ["--config", str(REPO / "configs/classify.yaml"), "--data.source", str(imdb_dir)]
    common += ["--data.cache_dir", str(cache_dir), "--trainer.default_root_dir", str(tmp_path)]
    run_cli(
        "fit", *common, "--model.backbone", str(pretrained_run / "backbone"),
        "--trainer.max_epochs", "3", "--trainer.enable_progress_bar", "false",
    )  # fmt: skip
    best = next((tmp_path / "lightning_logs/version_0/checkpoints").glob("best-*.ckpt"))
    out = run_cli("test", *common, "--ckpt_path", str(best)).stdout
    for metric in ("test/acc", "test/f1", "test/auroc"):
        assert metric in out
    accuracy = float(out.split("test/acc")[1].split()[0])
    assert 0.0 <= accuracy <= 1.0


def test_embed_then_search_prints_a_table(pretrained_run: Path, imdb_dir: Path, tmp_path: Path) -> None:
    run_cli(
        "embed",
        "--backbone",
        str(pretrained_run / "backbone"),
        "--source",
        str(imdb_dir),
        "--out",
        str(tmp_path / "i"),
        "--device",
        "cpu",
    )
    out = run_cli("search", "--index", str(tmp_path / "i"), "a wonderful superb movie", "-k", "3").stdout
    lines = out.strip().splitlines()
    assert lines[0].split()[:4] == ["#", "score", "review", "id"] and len(lines) == 2 + 3
    bad = subprocess.run(
        [SCRIPT, "search", "--index", str(tmp_path / "i"), "x", "-k", "0"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "k=0 is out of range" in bad.stderr


def test_generate_prints_one_continuation_per_prompt(pretrained_run: Path) -> None:
    args = ["generate", "--checkpoint", str(pretrained_run / "backbone"), "--strategy", "top_k"]
    args += ["--top_k", "5", "--max_new_tokens", "8", "--seed", "0"]
    args += ["--prompt", "A wonderful film", "--prompt", "It was dull"]
    out = run_cli(*args).stdout
    assert out.startswith("[1] A wonderful film") and "\n[2] It was dull" in out
    assert out == run_cli(*args).stdout  # seeded: the same sample again
    for bad, message in [(["--top_k", "0"], "top_k must be >= 1"), (["--prompt", ""], "prompt 3 is empty")]:
        result = subprocess.run([SCRIPT, *args, *bad], capture_output=True, text=True)
        assert result.returncode != 0 and message in result.stderr


def test_lstm_baseline_trains_through_the_same_cli(tiny_fit_args: list[str], tmp_path: Path) -> None:
    run_cli(
        "fit", *tiny_fit_args, "--config", str(REPO / "configs/lstm.yaml"),
        "--model.n_embd", "32", "--trainer.max_steps", "20",
    )  # fmt: skip
    run = tmp_path / "lightning_logs" / "version_0"
    metrics = read_metrics(run)
    assert len(metrics["val/bpb"]) == 2 and metrics["val/loss"][-1][1] < metrics["val/loss"][0][1]
    assert "LSTMLM" in (run / "config.yaml").read_text()
    result = subprocess.run(
        [SCRIPT, "generate", "--checkpoint", str(run / "checkpoints" / "last.ckpt"), "--prompt", "A"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "is not a checkpoint of a pretrained CausalLM" in result.stderr
