"""The optimiser and learning-rate schedules the LightningModules here train with: AdamW, and either
linear warmup then a cosine that anneals fully on the run's last step, or ULMFiT's slanted triangle."""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial
from typing import Any, Literal

import lightning as L
import torch
from torch import nn


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warmup from 0 to 1, then cosine decay to ``min_ratio``
    exactly at ``total_steps`` (the schedule anneals fully by the end of the run)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def slanted_triangular(step: int, total_steps: int, cut_frac: float = 0.1, ratio: float = 32.0) -> float:
    """Learning-rate multiplier of ULMFiT's slanted triangular schedule (Howard & Ruder 2018): a short
    linear rise over the first ``cut_frac`` of the run to 1, then a long linear fall to ``1 / ratio``."""
    cut = max(1, math.floor(total_steps * cut_frac))
    p = step / cut if step < cut else max(0.0, 1 - (step - cut) / max(1, total_steps - cut))
    return (1 + p * (ratio - 1)) / ratio


Schedule = Literal["cosine", "stlr"]
OptimizerName = Literal["adamw", "muon"]


class MuonAdamW(torch.optim.Optimizer):
    """Muon (``torch.optim.Muon``: momentum orthogonalised by Newton-Schulz iterations) for the hidden
    weight matrices, AdamW for everything else (the embedding, which the LM head shares, norms,
    biases), stepped as one optimiser, as Lightning's automatic optimisation expects.

    Both share one learning rate: Muon scales its update to AdamW's RMS (``adjust_lr_fn
    match_rms_adamw``), so a schedule written for AdamW drives both. The groups of the two are this
    optimiser's groups (the same dicts), so a learning-rate scheduler sets them all.
    """

    def __init__(
        self, matrices: list[nn.Parameter], others: list[dict], lr: float, weight_decay: float, **adamw: Any
    ) -> None:
        self.muon = torch.optim.Muon(
            matrices, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw"
        )
        self.adamw = torch.optim.AdamW(others, lr=lr, **adamw)
        super().__init__([{"params": []}], {"lr": lr})  # the real groups are the two optimisers'
        self.param_groups = self.muon.param_groups + self.adamw.param_groups

    @property
    def state(self) -> dict:  # read by Lightning when it moves optimiser state between devices
        return {**self.muon.state, **self.adamw.state}

    @state.setter
    def state(self, value: dict) -> None:  # torch.optim.Optimizer.__init__ sets an empty one
        pass

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self.param_groups = self.muon.param_groups + self.adamw.param_groups


def decay_groups(params: Iterable[nn.Parameter], weight_decay: float, **group: Any) -> list[dict]:
    """Parameter groups where weight matrices decay and norms and biases (1-D) do not."""
    params = [p for p in params if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, **group},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, **group},
    ]


def adamw_warmup_cosine(
    trainer: L.Trainer,
    groups: list[dict],
    warmup_steps: int,
    min_lr_ratio: float,
    shape: Schedule = "cosine",
    optimizer: torch.optim.Optimizer | None = None,
    **adamw: Any,
) -> dict:
    """``configure_optimizers``' answer: AdamW over ``groups`` (or the ``optimizer`` given) and a
    per-step schedule over the whole run (``trainer.estimated_stepping_batches``): warmup + cosine
    (warmup takes at most a tenth of it), or with ``shape="stlr"`` the slanted triangle (its rise is
    the first tenth)."""
    if optimizer is None:
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], **adamw)
    total = int(trainer.estimated_stepping_batches)
    warmup = min(warmup_steps, max(1, total // 10))
    if shape == "stlr":
        schedule = partial(slanted_triangular, total_steps=total)
    else:
        schedule = partial(warmup_cosine, warmup_steps=warmup, total_steps=total, min_ratio=min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
