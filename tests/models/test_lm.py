"""CausalLM: the schedule, the optimizer groups, learning, and the validation metrics."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from imdb_transformer.errors import InputError
from imdb_transformer.models.lm import CausalLM, LanguageModel
from imdb_transformer.models.lstm import LSTMLM
from imdb_transformer.models.optim import CLOCK_EVERY, Muon, on_the_clock, orthogonalize, warmup_cosine


def test_schedule_warms_up_then_anneals_fully_by_the_last_step() -> None:
    lrs = [warmup_cosine(s, warmup_steps=10, total_steps=100, min_ratio=0.1) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[100] == pytest.approx(0.1) and lrs[55] == pytest.approx(0.55)


def tiny_lm(**kwargs) -> CausalLM:
    torch.manual_seed(0)
    args = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, learning_rate=3e-3)
    return CausalLM(**{**args, **kwargs})


def test_weight_decay_applies_to_matrices_only() -> None:
    lm = tiny_lm()
    lm.trainer = type("T", (), {"estimated_stepping_batches": 100})()  # what configure_optimizers reads
    optimizer = lm.configure_optimizers()["optimizer"]
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])
    n = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert n == lm.backbone.num_parameters()  # every parameter once, the tied head included


def assert_learns(lm: LanguageModel, steps: int, lr: float) -> None:
    """The loss on one repeated batch starts near uniform (ln 50) and at least halves."""
    batch = torch.randint(4, 50, (4, 17))
    opt = torch.optim.AdamW(lm.parameters(), lr=lr)
    first = lm._loss(batch)[0].item()
    for _ in range(steps):
        loss = lm._loss(batch)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first == pytest.approx(math.log(50), rel=0.1)
    assert loss.item() < first / 2


def test_training_lowers_the_loss_on_a_repeated_batch() -> None:
    assert_learns(tiny_lm(), steps=30, lr=3e-3)


def test_validation_metrics_are_consistent() -> None:
    lm = tiny_lm()
    lm.token_bytes.fill_(4)  # pretend every token is 4 bytes
    logged = {}
    lm.log = lambda name, value, **_: logged.__setitem__(name, float(value))
    batches = [torch.randint(4, 50, (3, 17)), torch.randint(4, 50, (2, 17))]
    with torch.no_grad():
        for i, b in enumerate(batches):
            lm.validation_step(b, i)
        expected = torch.cat([lm._loss(b, reduction="none")[0] for b in batches]).mean().item()
    lm.on_validation_epoch_end()
    assert logged["val/loss"] == pytest.approx(expected, rel=1e-5)  # token-weighted, uneven batches
    assert logged["val/ppl"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert logged["val/bpb"] == pytest.approx(expected / math.log(2) / 4, rel=1e-5)


def test_flops_estimate_counts_the_lm_head() -> None:
    lm = tiny_lm()
    c = lm.config
    non_embedding = lm.backbone.num_parameters(include_embeddings=False)
    assert lm.flops_per_token(16) == 6 * (non_embedding + c.n_embd * c.vocab_size) + 12 * 2 * 32 * 16


def test_the_lstm_baseline_learns_with_the_same_loop() -> None:
    torch.manual_seed(0)
    lm = LSTMLM(vocab_size=50, block_size=16, n_layer=2, n_embd=32)
    assert lm.backbone.lm_head.weight is lm.backbone.wte.weight  # tied
    assert_learns(lm, steps=100, lr=1e-2)
    lstm_matrices = sum(p.numel() for n, p in lm.backbone.lstm.named_parameters() if "weight" in n)
    assert lm.flops_per_token(16) == 6 * (lstm_matrices + 32 * 50)


@pytest.mark.slow
def test_compiling_gives_the_same_losses_and_gradients() -> None:
    torch.manual_seed(0)
    eager, compiled = tiny_lm(), tiny_lm(compile=True)
    compiled.load_state_dict(eager.state_dict())
    compiled.configure_model()  # compiles the backbone and the loss, as the Trainer does
    assert compiled.cross_entropy is not eager.cross_entropy
    batch = torch.randint(0, 50, (4, 17))
    for reduction in ("mean", "sum"):
        (a, _), (b, _) = eager._loss(batch, reduction), compiled._loss(batch, reduction)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    eager._loss(batch)[0].backward()
    compiled._loss(batch)[0].backward()
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_compiling_on_a_cpu_without_a_compiler_is_refused_before_training(monkeypatch) -> None:
    """Inductor builds CPU kernels with a C++ compiler: without one, ``--model.compile true`` stops with
    the fix, not with Inductor's error at the first step."""
    from torch._inductor import cpp_builder

    def missing() -> str:
        raise RuntimeError("no working C++ compiler found in ('g++',)")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    lm = tiny_lm(compile=True)
    with pytest.raises(InputError, match=r"needs a C\+\+ compiler.*g\+\+.*--model.compile false"):
        lm.configure_model()
    tiny_lm().configure_model()  # nothing to compile, nothing asked


def _muon_pair() -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """Two copies of the same matrices (one tall, one wide), for two optimisers stepped side by side."""
    torch.manual_seed(0)
    first = [torch.nn.Parameter(torch.randn(48, 16)), torch.nn.Parameter(torch.randn(16, 40))]
    return first, [torch.nn.Parameter(p.detach().clone()) for p in first]


@pytest.mark.parametrize("adjust", ["match_rms_adamw", "original"])
def test_muon_in_bf16_steps_exactly_as_torch_muon(adjust: str) -> None:
    ours, theirs = _muon_pair()
    settings = {"lr": 0.02, "weight_decay": 0.1, "adjust_lr_fn": adjust}
    mine, reference = Muon(ours, ns_dtype=torch.bfloat16, **settings), torch.optim.Muon(theirs, **settings)
    for step in range(3):
        for a, b in zip(ours, theirs, strict=True):
            a.grad = torch.randn_like(a, generator=torch.Generator().manual_seed(step))
            b.grad = a.grad.clone()
        mine.step()
        reference.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert set(mine.state_dict()["state"][0]) == {"momentum_buffer"}  # checkpoints as torch's


def test_muon_orthogonalises_in_the_precision_the_cpu_computes_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    for native, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native)
        assert Muon([torch.nn.Parameter(torch.zeros(4, 4))])._ns_dtype(cpu) == dtype
    assert (
        Muon([torch.nn.Parameter(torch.zeros(4, 4))], ns_dtype=torch.bfloat16)._ns_dtype(cpu)
        == torch.bfloat16
    )
    # fp32 iterations bring the singular values near 1 as bf16 ones do, and the two updates agree
    update = torch.randn(64, 24, generator=torch.Generator().manual_seed(1))
    full = orthogonalize(update, (3.4445, -4.7750, 2.0315), 5, 1e-7, torch.float32)
    half = orthogonalize(update, (3.4445, -4.7750, 2.0315), 5, 1e-7, torch.bfloat16)
    assert full.dtype == torch.float32 and full.shape == update.shape
    singular = torch.linalg.svdvals(full)
    assert singular.min() > 0.5 and singular.max() < 1.3
    assert torch.nn.functional.cosine_similarity(full.flatten(), half.float().flatten(), dim=0) > 0.99


def test_with_max_time_the_schedule_runs_on_the_clock_and_anneals_by_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import lightning as L
    from lightning.pytorch.callbacks import Timer

    options = {"max_steps": 100, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    trainer = L.Trainer(max_time={"minutes": 10}, **options)
    timer = next(c for c in trainer.callbacks if isinstance(c, Timer))
    spent = {"seconds": 0.0}
    monkeypatch.setattr(timer, "time_elapsed", lambda stage=None: spent["seconds"])
    readings = []  # each reading of rank 0's clock is a broadcast, a collective under DDP
    monkeypatch.setattr(trainer.strategy, "broadcast", lambda obj, src=0: readings.append(obj) or obj)
    schedule = partial(warmup_cosine, warmup_steps=10, total_steps=100, min_ratio=0.1)
    clocked = on_the_clock(schedule, trainer, 100, warmup_steps=10)
    assert clocked(5) == schedule(5) and clocked(20) == schedule(20)  # on time: by the step
    spent["seconds"] = 300.0  # half the time gone: half way through the schedule, from the next reading
    assert clocked(5) == schedule(5)  # warmup stays counted in steps
    assert clocked(20 + CLOCK_EVERY - 1) == schedule(20 + CLOCK_EVERY - 1)  # read at step 20, not since
    assert clocked(20 + CLOCK_EVERY) == pytest.approx(schedule(50))
    spent["seconds"] = 600.0
    assert clocked(20 + 2 * CLOCK_EVERY) == pytest.approx(0.1)  # out of time: fully annealed
    assert readings == [0.0, 0.5, 1.0]

    readings.clear()  # a whole run: LambdaLR asks once per parameter group each step (and once as it is
    # made); the clock is read on one of every CLOCK_EVERY steps after warmup, whatever the groups
    groups = [
        {"params": [torch.nn.Parameter(torch.zeros(2, 2))]},
        {"params": [torch.nn.Parameter(torch.zeros(2))]},
    ]
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, on_the_clock(schedule, trainer, 100, warmup_steps=10)
    )
    for _ in range(99):
        optimizer.step()
        scheduler.step()
    assert len(readings) == -(-90 // CLOCK_EVERY)  # steps 10, 26, ..., 90
    assert optimizer.param_groups[0]["lr"] == optimizer.param_groups[1]["lr"] == pytest.approx(1e-4)
    assert on_the_clock(schedule, L.Trainer(**options), 100) is schedule  # no max_time: by the step only
