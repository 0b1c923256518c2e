"""The optimiser and learning-rate schedules the LightningModules here train with: AdamW, and either
linear warmup then a cosine that anneals fully on the run's last step, or ULMFiT's slanted triangle."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer
from torch import Tensor, nn

from imdb_transformer.hardware import fast_bf16


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


def orthogonalize(
    update: Tensor, coefficients: tuple[float, float, float], steps: int, eps: float, dtype: torch.dtype
) -> Tensor:
    """Muon's approximate orthogonalisation of a matrix ``update``: ``steps`` quintic Newton-Schulz
    iterations with ``coefficients`` (a, b, c), computed in ``dtype``, after dividing the update by its
    Frobenius norm so that its spectral norm is at most 1."""
    a, b, c = coefficients
    x = update.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T  # iterate on the smaller Gram matrix
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def run_closure(closure: Any) -> Any:
    """An optimiser step's closure (Lightning's forward and backward), run with gradients on; its loss."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def newton_schulz_dtype(device: torch.device) -> torch.dtype:
    """The precision Muon orthogonalises in on ``device``: bf16 where it is native, fp32 elsewhere."""
    return torch.bfloat16 if fast_bf16(device) else torch.float32


class Muon(torch.optim.Muon):
    """``torch.optim.Muon``, with its Newton-Schulz iterations in the precision the hardware computes
    fast: bf16 where it multiplies bf16 natively (as ``torch.optim.Muon`` always does), fp32 elsewhere,
    where emulated bf16 made them most of a training step (on a CPU with neither AMX nor AVX512-BF16 a step
    over ``pretrain.yaml``'s matrices took 53 times as long: ``benchmarks/muon_step.py``). Same groups,
    state and checkpoints as ``torch.optim.Muon``; ``ns_dtype`` forces a precision.
    """

    def __init__(self, params: Any, ns_dtype: torch.dtype | None = None, **muon: Any) -> None:
        super().__init__(params, **muon)
        self.ns_dtype = ns_dtype
        self._dtypes: dict[torch.device, torch.dtype] = {}  # asked of the hardware once per device

    def _ns_dtype(self, device: torch.device) -> torch.dtype:
        if self.ns_dtype is not None:
            return self.ns_dtype
        if device not in self._dtypes:
            self._dtypes[device] = newton_schulz_dtype(device)
        return self._dtypes[device]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad, state = param.grad, self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                dtype = self._ns_dtype(param.device)
                update = orthogonalize(
                    update, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype
                )
                param.mul_(1 - lr * decay)
                param.add_(update, alpha=-lr * _rms_ratio(group["adjust_lr_fn"], param.shape))
        return loss


def _rms_ratio(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """Muon's learning-rate scale for a matrix of ``shape`` (``torch.optim.Muon``'s ``adjust_lr_fn``)."""
    rows, cols = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":  # the update's RMS matched to AdamW's
        return 0.2 * math.sqrt(max(rows, cols))
    if adjust_lr_fn in (None, "original"):
        return math.sqrt(max(1, rows / cols))
    return 1.0


class MuonAdamW(torch.optim.Optimizer):
    """Muon (:class:`Muon`: momentum orthogonalised by Newton-Schulz iterations) for the hidden
    weight matrices, AdamW for everything else (the embedding, which the LM head shares, norms,
    biases), stepped as one optimiser, as Lightning's automatic optimisation expects.

    Both share one learning rate: Muon scales its update to AdamW's RMS (``adjust_lr_fn
    match_rms_adamw``), so a schedule written for AdamW drives both. The groups of the two are this
    optimiser's groups (the same dicts), so a learning-rate scheduler sets them all.
    """

    def __init__(
        self, matrices: list[nn.Parameter], others: list[dict], lr: float, weight_decay: float, **adamw: Any
    ) -> None:
        self.muon = Muon(matrices, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
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
        loss = run_closure(closure)
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
    the first tenth). With ``--trainer.max_time`` the schedule also runs on the clock (see
    :func:`on_the_clock`), so it anneals fully by the time limit on a slow machine too."""
    if optimizer is None:
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], **adamw)
    total = int(trainer.estimated_stepping_batches)
    warmup = min(warmup_steps, max(1, total // 10))
    if shape == "stlr":
        schedule = partial(slanted_triangular, total_steps=total)
    else:
        schedule = partial(warmup_cosine, warmup_steps=warmup, total_steps=total, min_ratio=min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, on_the_clock(schedule, trainer, total, warmup))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


CLOCK_EVERY = 16  # steps between readings of the clock by a schedule on --trainer.max_time


def on_the_clock(
    schedule: Callable[[int], float], trainer: L.Trainer, total_steps: int, warmup_steps: int = 0
) -> Callable[[int], float]:
    """``schedule`` (a multiplier by step over ``total_steps``), read at whichever is further on: the
    step, or the share of ``--trainer.max_time`` spent, as a step. A run that reaches its time limit
    before its last step (a slower machine than the config was sized on) still ends its schedule
    annealed, instead of being cut off at a high learning rate. Warmup stays counted in steps. Every
    process uses rank 0's clock, so replicas keep the same learning rate; the clock is read on the first
    step after warmup and then every :data:`CLOCK_EVERY` steps, not on every step and parameter group,
    because each reading is a collective under DDP (so the schedule trails the clock by less than
    ``CLOCK_EVERY`` steps). Without ``max_time``, ``schedule`` is returned as it is."""
    timer = next((c for c in getattr(trainer, "callbacks", []) if isinstance(c, Timer)), None)
    if timer is None or timer.time_remaining() is None:
        return schedule
    read = {"step": -CLOCK_EVERY, "share": 0.0}  # the last reading: at which step, what share of the time

    def scheduled(step: int) -> float:
        if step < warmup_steps:
            return schedule(step)
        if not 0 <= step - read["step"] < CLOCK_EVERY:  # every process takes the same steps, so reads alike
            spent, left = timer.time_elapsed(), timer.time_remaining()
            read["step"] = step
            read["share"] = trainer.strategy.broadcast(min(1.0, spent / max(spent + left, 1e-9)))
        return schedule(max(step, round(read["share"] * total_steps)))

    return scheduled
