"""Training throughput: our decoder against one built the way the original notebook built it.

    python benchmarks/train_speed.py                   # pretrain.yaml's shape, fp32 and bf16, eager
    python benchmarks/train_speed.py --compile off on  # also with torch.compile

Both models get the same width, depth, heads, context, batch and vocabulary, and the same training
step (forward, fp32 cross-entropy, backward, AdamW step) on the same random batch, timed in this
process in alternating rounds (each model's median round counts); with compile, the model and the
loss are compiled, as ``CausalLM(compile=True)`` trains. The original design:
``nn.TransformerDecoderLayer`` (post-norm) fed its own input embeddings as cross-attention memory,
a learned position table, and an explicit ``(B*heads, T, T)`` mask built on the CPU every step
(which also keeps the fused attention kernels from running). FLOPs are counted with
``torch.utils.flop_counter`` on one step of each model; MFU is achieved FLOP/s over the peak
matmul FLOP/s measured here, in the same precision, in this run. Prints one table.

``--decoders ours`` times the project's decoder alone; ``--profile N`` then runs N more steps of it under
``torch.profiler`` and prints the operators that took the most device time (CUDA kernels on a GPU), the
first place to look for what keeps MFU down.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch
from common import Record, add_out_argument
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from imdb_transformer.core.decoder import CausalDecoder, DecoderConfig
from imdb_transformer.hardware import describe_cpu
from imdb_transformer.models.lm import token_cross_entropy

KINDS = ("original", "ours")


class NotebookDecoder(nn.Module):
    """The original notebook's decoder, at a chosen size (kept only to measure against)."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        c = config
        self.n_head = c.n_head
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd)
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(c.n_embd, c.n_head, 4 * c.n_embd, dropout=0.0, batch_first=True)
            for _ in range(c.n_layer)
        )
        self.head = nn.Linear(c.n_embd, c.vocab_size)

    def forward(self, idx: Tensor) -> Tensor:
        B, T = idx.shape
        # rebuilt on the CPU and copied over every step, one (T, T) copy per sequence and head
        mask = torch.triu(torch.full((T, T), float("-inf")), diagonal=1).repeat(B * self.n_head, 1, 1)
        mask = mask.to(idx.device)
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        memory = x  # its own input embeddings as cross-attention "memory"
        for layer in self.layers:
            x = layer(x, memory, tgt_mask=mask, memory_mask=mask)
        return self.head(x)


def peak_matmul_flops(dtype: torch.dtype, device: str, n: int, reps: int = 10, rounds: int = 3) -> float:
    """FLOP/s of an (n x n) @ (n x n) matmul in ``dtype``, best of ``rounds``: the ceiling MFU is measured
    against."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    seconds = min(timed(lambda: a @ b, reps, device) for _ in range(rounds))
    return 2 * n**3 / seconds


def timed(step: Callable[[], object], n: int, device: str) -> float:
    """Seconds per call of ``step``, over ``n`` calls."""
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return (time.perf_counter() - start) / n


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_fn(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Tensor,
    precision: str,
    device: str,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = token_cross_entropy,
) -> Callable[[], None]:
    """One training step of ``model`` on ``batch``, as a function of no arguments."""
    autocast = (
        torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )

    def step() -> None:
        with autocast:
            logits = model(batch[:, :-1])
        loss = loss_fn(logits, batch[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def prepare(
    kind: str, config: DecoderConfig, args: argparse.Namespace, precision: str, compiled: bool
) -> tuple[Callable[[], None], int]:
    """One model's training step, warmed up (and compiled), and its FLOPs per step."""
    torch.manual_seed(0)
    model = (CausalDecoder if kind == "ours" else NotebookDecoder)(config).to(args.device).train()
    batch = torch.randint(4, config.vocab_size, (args.batch_size, config.block_size + 1), device=args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    with FlopCounterMode(display=False) as counter:
        step_fn(model, optimizer, batch, precision, args.device)()  # eager: the model's own FLOPs
    flops = counter.get_total_flops()
    # compiled as CausalLM(compile=True) trains: the model, and the loss on its logits
    runner, loss_fn = (
        (torch.compile(model), torch.compile(token_cross_entropy))
        if compiled
        else (model, token_cross_entropy)
    )
    step = step_fn(runner, optimizer, batch, precision, args.device, loss_fn)
    for _ in range(args.warmup):  # includes compilation
        step()
    return step, flops


def measure(config: DecoderConfig, args: argparse.Namespace, precision: str, compiled: bool) -> dict:
    """Tokens/s and FLOP/s of both models. Their timings alternate, round by round, and each takes
    its median round, so a machine that speeds up or slows down during the run favours neither."""
    prepared = {kind: prepare(kind, config, args, precision, compiled) for kind in args.decoders}
    rounds: dict[str, list[float]] = {kind: [] for kind in args.decoders}
    for _ in range(args.rounds):
        for kind, (step, _) in prepared.items():
            rounds[kind].append(timed(step, args.steps, args.device))
    results = {}
    for kind, (_, flops) in prepared.items():
        seconds = statistics.median(rounds[kind])
        results[kind] = {
            "tokens_per_s": args.batch_size * config.block_size / seconds,
            "flops_per_s": flops / seconds,
        }
    if args.profile:
        results["ours"]["profile"] = profile(prepared["ours"][0], args.profile, args.device)
    return results


def profile(step: Callable[[], None], steps: int, device: str, top: int = 15) -> list[dict]:
    """``steps`` training steps under ``torch.profiler``: the ``top`` entries by self time on the device
    (on a GPU its kernels, operators' and annotations' rows left out as they repeat the kernels' time;
    on a CPU the operators), each with its share of that time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    activities = [ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    with profiler(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    events = list(prof.key_averages())
    if device.startswith("cuda"):  # the kernels alone: an operator's row repeats its kernels' time
        from torch.autograd import DeviceType

        events = [
            e
            for e in events
            if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
        ]

        def time_of(e) -> float:
            return e.self_device_time_total
    else:

        def time_of(e) -> float:
            return e.self_cpu_time_total

    total = sum(time_of(e) for e in events) or 1
    ranked = sorted(events, key=time_of, reverse=True)[:top]
    return [
        {
            "name": e.key[:80],
            "calls": e.count,
            "ms": round(time_of(e) / 1000, 3),
            "share": round(time_of(e) / total, 4),
        }
        for e in ranked
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_layer", type=int, default=6)
    parser.add_argument("--n_head", type=int, default=8)
    parser.add_argument("--n_embd", type=int, default=256)
    parser.add_argument("--block_size", type=int, default=512, help="context (tokens per sequence)")
    parser.add_argument("--vocab_size", type=int, default=8192)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating the models (median)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed steps first (compilation happens here)"
    )
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--peak_size",
        type=int,
        default=None,
        help="matrix size of the peak-FLOP/s matmul (8192 on GPU, 2048 on CPU)",
    )
    parser.add_argument(
        "--decoders", nargs="+", default=list(KINDS), choices=KINDS, help="which decoders to time"
    )
    parser.add_argument(
        "--profile", type=int, default=0, help="then profile this many steps of ours (0: no profile)"
    )
    add_out_argument(parser)
    args = parser.parse_args(argv)
    if args.profile and "ours" not in args.decoders:
        parser.error("--profile profiles our decoder: keep ours in --decoders")
    record = Record("train_speed")
    peak_size = args.peak_size or (8192 if args.device.startswith("cuda") else 2048)
    config = DecoderConfig(
        vocab_size=args.vocab_size,
        block_size=args.block_size,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
    )
    peaks = {
        p: peak_matmul_flops(torch.float32 if p == "fp32" else torch.bfloat16, args.device, peak_size)
        for p in args.precision
    }
    device_name = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else describe_cpu()  # bf16 is fast only with AMX or AVX512-BF16: the header says which this is
    )
    print(
        f"{args.n_layer} layers x {args.n_embd} wide, {args.n_head} heads, context {args.block_size}, "
        f"batch {args.batch_size}, vocab {args.vocab_size}; {device_name}; peak matmul "
        + ", ".join(f"{p} {peaks[p] / 1e9:,.0f} GFLOP/s" for p in args.precision)
    )
    record.notes["shape"] = {
        k: getattr(args, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "vocab_size")
    }
    record.notes["peak_matmul_gflops"] = {p: round(peaks[p] / 1e9, 1) for p in args.precision}
    table = record.table(
        "throughput", ["precision", "compile", "decoder", "tokens/s", "MFU", "speedup over original"]
    )
    profiled = []
    for precision in args.precision:
        for compiled in args.compile:
            results = measure(config, args, precision, compiled == "on")
            for kind, r in results.items():
                original = results.get("original")
                speedup = f"{r['tokens_per_s'] / original['tokens_per_s']:.2f}x" if original else "-"
                mfu = 100 * r["flops_per_s"] / peaks[precision]
                table.add(precision, compiled, kind, f"{r['tokens_per_s']:,.0f}", f"{mfu:.1f}%", speedup)
            if "profile" in results.get("ours", {}):
                profiled.append((precision, compiled, results["ours"]["profile"]))
    for precision, compiled, ops in profiled:
        print()
        top = record.table(
            f"profile {precision} compile {compiled}",
            ["operator (top by device time)", "calls", "ms", "share"],
        )
        for op in ops:
            top.add(op["name"], op["calls"], f"{op['ms']:.2f}", f"{100 * op['share']:.1f}%")
    record.save(args.out)


if __name__ == "__main__":
    main()
