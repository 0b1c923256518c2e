"""One Muon step over pretrain.yaml's weight matrices: Newton-Schulz in bf16 (``torch.optim.Muon``) against
the precision ``imdb_transformer.models.optim.Muon`` picks for this hardware, side by side.

    python benchmarks/muon_step.py --out docs/results/muon_step.json

The matrices are the blocks' of ``pretrain.yaml``'s decoder (6 x 256, 4x MLP); every round steps each
optimiser once on the same random gradients, in alternating order, and each one's median round counts.
On a CPU without AMX or AVX512-BF16, bf16 is emulated, and the step in bf16 is most of a training step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import Record, add_out_argument

from imdb_transformer.core.decoder import CausalDecoder, DecoderConfig
from imdb_transformer.hardware import describe_cpu, fast_bf16
from imdb_transformer.models.optim import Muon, newton_schulz_dtype


def matrices(n_layer: int, n_embd: int) -> list[torch.nn.Parameter]:
    """The 2-D weights of the blocks of a decoder of this size (pretrain.yaml's by default), which Muon
    trains."""
    decoder = CausalDecoder(
        DecoderConfig(vocab_size=64, block_size=16, n_layer=n_layer, n_head=8, n_embd=n_embd)
    )
    return [p for block in decoder.blocks for p in block.parameters() if p.dim() == 2]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n_layer", type=int, default=6)
    parser.add_argument("--n_embd", type=int, default=256)
    add_out_argument(parser)
    args = parser.parse_args()
    chosen = newton_schulz_dtype(torch.device("cpu"))
    optimisers = {
        "torch.optim.Muon (bf16)": torch.optim.Muon(
            matrices(args.n_layer, args.n_embd), adjust_lr_fn="match_rms_adamw"
        ),
        f"models.optim.Muon ({str(chosen).removeprefix('torch.')})": Muon(
            matrices(args.n_layer, args.n_embd), adjust_lr_fn="match_rms_adamw"
        ),
    }
    for optimiser in optimisers.values():
        for group in optimiser.param_groups:
            for p in group["params"]:
                p.grad = torch.randn_like(p)
    times: dict[str, list[float]] = {name: [] for name in optimisers}
    for r in range(args.rounds + 1):  # the first round warms up
        for name in sorted(optimisers, reverse=bool(r % 2)):
            start = time.perf_counter()
            optimisers[name].step()
            if r:
                times[name].append(time.perf_counter() - start)
    record = Record("muon_step")
    record.notes["cpu"] = describe_cpu()
    print(f"{record.notes['cpu']}; Newton-Schulz of models.optim.Muon in {chosen}")
    record.notes["native bf16"] = fast_bf16(torch.device("cpu"))
    table = record.table("muon_step", ["optimiser", "median step (s)", "ratio to bf16"])
    base = statistics.median(next(iter(times.values())))
    for name, values in times.items():
        median = statistics.median(values)
        table.add(name, f"{median:.3f}", f"{base / median:.1f}x")
    record.save(args.out)


if __name__ == "__main__":
    main()
