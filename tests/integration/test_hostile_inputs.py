"""Inputs a hostile user tried against the guarantees of docs/formats.md: each is refused with one clear
error (or, for SIGTERM, ends with a resumable checkpoint and a non-zero status)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import HELPERS, SCRIPT, fails

from imdb_transformer.cli import CheckpointError, _check_training_state
from imdb_transformer.core.backbone import CHECKPOINT_KEY, BackboneError, load_backbone, load_checkpoint
from imdb_transformer.core.decoder import CausalDecoder, DecoderConfig
from imdb_transformer.ensemble import SentimentEnsemble
from imdb_transformer.errors import InputError
from imdb_transformer.generation import generate
from imdb_transformer.search import check_out_folder
from imdb_transformer.serve.hosts import HostCheck, allowed_host_names, host_name
from imdb_transformer.text.imdb import IMDBSourceError, load_reviews


def test_an_index_whose_file_names_hold_folders_is_not_replaced(tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    (fake / "reviews.parquet").mkdir(parents=True)
    (fake / "reviews.parquet" / "notes.txt").write_text("mine")
    (fake / "index.json").write_text(json.dumps({"format": "imdb_transformer.index/3"}))
    with pytest.raises(InputError, match="also holds files of another kind.*reviews.parquet"):
        check_out_folder(fake)
    backbone = tmp_path / "backbone"
    backbone.mkdir()
    with pytest.raises(InputError, match="is inside the backbone"):
        check_out_folder(backbone / "index", {"backbone": backbone})


def test_generation_refuses_sizes_and_seeds_it_cannot_hold() -> None:
    decoder = CausalDecoder(DecoderConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(InputError, match="max_new_tokens must be in 1..100,000"):
        generate(decoder, [[1, 2]], 10**11)
    with pytest.raises(InputError, match="seed must be in 0..4294967295"):
        generate(decoder, [[1, 2]], 5, strategy="sample", seed=10**20)


def test_ids_beyond_int64_are_one_error(tmp_path: Path) -> None:
    table = pa.table(
        {"text": ["a fine film", "a dull film"], "label": [1, 0], "id": pa.array([1, 2**64 - 2], pa.uint64())}
    )
    pq.write_table(table, tmp_path / "test.parquet")
    with pytest.raises(IMDBSourceError, match="ids must be whole numbers from 0 to 2\\*\\*63 - 1"):
        load_reviews(str(tmp_path), "test")


def test_a_checkpoint_with_an_empty_or_foreign_tokenizer_is_refused(
    pretrained_run: Path, tmp_path: Path
) -> None:
    checkpoint = load_checkpoint(pretrained_run / "checkpoints/last.ckpt")
    checkpoint[CHECKPOINT_KEY]["tokenizer_model"] = torch.zeros(0, dtype=torch.uint8)
    torch.save(checkpoint, tmp_path / "empty.ckpt")
    with pytest.raises(BackboneError, match="tokenizer is empty|cannot be read"):
        load_backbone(tmp_path / "empty.ckpt")
    checkpoint = load_checkpoint(pretrained_run / "checkpoints/last.ckpt")
    checkpoint[CHECKPOINT_KEY]["tokenizer"] = "garbage"  # not a field of the record: ignored
    torch.save(checkpoint, tmp_path / "extra.ckpt")
    assert load_backbone(tmp_path / "extra.ckpt").tokenizer.vocab_size == 400


def test_a_checkpoint_whose_saved_settings_do_not_parse_is_one_error_naming_it(
    pretrained_run: Path, tiny_fit_args: list[str], tmp_path: Path
) -> None:
    for name, setting, value, reason in [
        (
            "old.ckpt",
            "dropped_setting",
            1,
            "include dropped_setting, which this version's CausalLM does not take",
        ),
        ("typed.ckpt", "warmup_steps", "soon", "do not fit this version's model (--model.warmup_steps: "),
    ]:  # a setting a later version removed; one whose type it changed
        checkpoint = load_checkpoint(pretrained_run / "checkpoints/last.ckpt")
        checkpoint["hyper_parameters"][setting] = value
        torch.save(checkpoint, tmp_path / name)
        err = fails("validate", *tiny_fit_args, "--ckpt_path", str(tmp_path / name))
        assert err.startswith(f"error: the settings saved in {tmp_path / name} {reason}"), err
        assert err.count("\n") == 1 and err.endswith("pass a checkpoint written by this version\n")


def test_crafted_classifier_checkpoints_are_one_error(tmp_path: Path) -> None:
    torch.save({"hyper_parameters": [1], "state_dict": {}}, tmp_path / "list.ckpt")
    with pytest.raises(InputError, match="not a sentiment classifier's checkpoint"):
        SentimentEnsemble([tmp_path / "list.ckpt"])
    with pytest.raises(InputError, match="is a folder, not a classifier checkpoint"):
        SentimentEnsemble([tmp_path])


def test_a_damaged_training_state_is_refused_before_resuming() -> None:
    for damaged in ("oops", [{}], [{"muon": {"state": {}, "param_groups": []}, "adamw": "x"}]):
        with pytest.raises(CheckpointError, match="optimizer state is damaged"):
            _check_training_state({"optimizer_states": damaged}, Path("last.ckpt"))
    plain = {"state": {}, "param_groups": []}
    _check_training_state({"optimizer_states": [{"muon": plain, "adamw": plain}]}, Path("x"))  # Muon + AdamW
    with pytest.raises(CheckpointError, match="step or epoch"):
        _check_training_state({"global_step": 10**30}, Path("last.ckpt"))
    _check_training_state(
        {"global_step": 3, "optimizer_states": [{"state": {}, "param_groups": []}]}, Path("x")
    )


def test_host_headers_that_smuggle_another_name_are_refused() -> None:
    allowed = allowed_host_names("127.0.0.1")
    assert host_name("[::1]:8000") in allowed and host_name("localhost:8000") in allowed
    for smuggled in ("[::1]evil.com", "[localhost].evil.com:80", "evil.com", "127.0.0.1.evil.com"):
        assert host_name(smuggled) not in allowed, smuggled

    async def ok(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def status(headers: list[tuple[bytes, bytes]]) -> int:
        sent = []

        async def send(message: dict) -> None:
            sent.append(message)

        async def receive() -> dict:
            return {"type": "http.request", "body": b""}

        scope = {"type": "http", "headers": headers, "method": "GET", "path": "/"}
        # in a thread of its own: a test before it in this process may have left an event loop running
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, HostCheck(ok, allowed)(scope, receive, send)).result()
        return sent[0]["status"]

    assert status([(b"host", b"localhost:8000")]) == 200
    assert status([(b"host", b"evil.com"), (b"host", b"localhost")]) == 400  # two Host headers
    assert status([(b"host", b"[::1]evil.com")]) == 400


def test_sigterm_during_fit_saves_last_and_exits_non_zero(tiny_fit_args: list[str], tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [SCRIPT, "fit", *tiny_fit_args, "--trainer.max_steps", "1000", "--trainer.val_check_interval", "500",
         "--trainer.callbacks+=helpers.SlowSteps", "--trainer.callbacks.seconds=0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **HELPERS},
    )  # fmt: skip
    started = tmp_path / "lightning_logs/version_0/hparams.yaml"  # written as training starts
    deadline = time.time() + 300
    while not started.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(4)  # some steps
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "error: stopped by SIGTERM" in err and "--ckpt_path last" in err
    step = torch.load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)[
        "global_step"
    ]
    assert 0 < step < 1000
