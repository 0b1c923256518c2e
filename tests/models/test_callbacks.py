"""Callbacks the CLI puts on every run: the bf16 advice that follows the CPU."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from imdb_transformer import hardware
from imdb_transformer.callbacks import PrecisionAdvice
from imdb_transformer.models.lm import CausalLM


def fit_one_step(precision: str) -> list[str]:
    torch.manual_seed(0)
    model = CausalLM(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16, warmup_steps=1)
    trainer = L.Trainer(
        max_steps=1, precision=precision, accelerator="cpu", callbacks=[PrecisionAdvice()], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, DataLoader(torch.randint(4, 50, (4, 17)), batch_size=2))
    return [str(w.message) for w in caught if "bf16 hardware" in str(w.message)]


@pytest.mark.parametrize(("native", "precision", "warned"), [
    (False, "bf16-mixed", True), (True, "bf16-mixed", False), (False, "32-true", False),
])  # fmt: skip
def test_bf16_on_a_cpu_without_bf16_hardware_warns_once(
    monkeypatch: pytest.MonkeyPatch, native: bool, precision: str, warned: bool
) -> None:
    monkeypatch.setattr(hardware, "native_bf16_cpu", lambda: native)
    messages = fit_one_step(precision)
    assert len(messages) == int(warned)
    if warned:
        assert "--trainer.precision 32-true" in messages[0] and "AVX512-BF16" in messages[0]


def test_the_cpu_description_names_its_bf16_features() -> None:
    line = hardware.describe_cpu()
    assert "AMX" in line and "AVX512-BF16" in line and "SIMD" in line
