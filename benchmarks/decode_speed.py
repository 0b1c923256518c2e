"""Decoding speed: tokens/s with the KV cache against re-running the whole window for each token.

    python benchmarks/decode_speed.py --checkpoint lightning_logs/version_0/backbone
    python benchmarks/decode_speed.py                      # a random model of configs/pretrain.yaml's shape

Both paths run the same greedy loop (``imdb_transformer.generation.generate``, ``use_cache`` on or
off) from the same prompts, one after the other in this process, and must produce the same tokens;
once for a single prompt and once for a batch of eight. Past the context the window slides on both
paths. The paths alternate over ``--rounds`` rounds and each rate is its median. The cached path runs
again on a bfloat16 copy of the weights (``generation.in_dtype``), its speedup also against the
float32 recomputing path; the table says from which token its text parts from float32's. Before the
table, both bfloat16 paths are compared (they give the same tokens unless two candidates tie after
bf16 rounding; the check says where they part) and timed (on CPUs that emulate bf16 the recomputing
path, bound by arithmetic, is slower than in float32). Prints the CPU's bf16
features and one table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import Record, add_out_argument

from imdb_transformer.core.backbone import load_backbone
from imdb_transformer.core.decoder import CausalDecoder, DecoderConfig
from imdb_transformer.generation import generate, in_dtype
from imdb_transformer.hardware import describe_cpu


def timed(decoder: CausalDecoder, prompts: list[list[int]], new_tokens: int, use_cache: bool) -> tuple:
    start = time.perf_counter()
    out = generate(decoder, prompts, new_tokens, eos_id=None, use_cache=use_cache)
    return sum(len(row) for row in out) / (time.perf_counter() - start), out


def parted(a: list[list[int]], b: list[list[int]]) -> str:
    """Where the first row of ``a`` first differs from ``b``'s ("-" when nowhere)."""
    first = next((i for i, (x, y) in enumerate(zip(a[0], b[0], strict=True)) if x != y), None)
    return "-" if first is None else f"token {first + 1}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a backbone/ folder or .ckpt (default: a random model)")
    parser.add_argument("--new_tokens", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--prompt_tokens", type=int, default=16, help="prompt length (random ids)")
    parser.add_argument("--batch_size", type=int, nargs="+", default=[1, 8], help="prompts decoded together")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--check_tokens", type=int, default=64, help="new tokens for the bf16 paths' check")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are quoted")
    shape = parser.add_argument_group("random model (without --checkpoint)")
    shape.add_argument("--n_layer", type=int, default=6)
    shape.add_argument("--n_head", type=int, default=8)
    shape.add_argument("--n_embd", type=int, default=256)
    shape.add_argument("--block_size", type=int, default=512)
    shape.add_argument("--vocab_size", type=int, default=8192)
    add_out_argument(parser)
    args = parser.parse_args(argv)
    record = Record("decode_speed")

    if args.checkpoint:
        decoder = load_backbone(args.checkpoint).decoder
    else:
        torch.manual_seed(0)
        names = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")
        decoder = CausalDecoder(DecoderConfig(**{k: getattr(args, k) for k in names}))
    decoder = decoder.to(args.device).eval()
    half = in_dtype(decoder, torch.bfloat16)
    c = decoder.config
    print(
        f"decoder: {c.n_layer} layers x {c.n_embd} wide, context {c.block_size}, greedy, "
        f"prompts of {args.prompt_tokens} tokens, {args.device}"
    )
    if args.device == "cpu":
        print(f"CPU: {describe_cpu()}")

    def prompts_of(batch: int) -> list[list[int]]:
        shape = (batch, args.prompt_tokens)
        return torch.randint(4, c.vocab_size, shape, generator=torch.Generator().manual_seed(0)).tolist()

    one, n = prompts_of(1), args.check_tokens
    generate(half, one, 8, eos_id=None)  # warm-up
    half_rate, half_cached = timed(half, one, n, use_cache=True)
    half_full_rate, half_full = timed(half, one, n, use_cache=False)
    where = parted(half_cached, half_full)  # two candidates that tie in bf16 can go either way
    verdict = "the same tokens" if where == "-" else f"tokens that part at {where}"
    record.notes["bf16_check"] = {
        "new_tokens": n,
        "cached_equals_recomputed": half_cached == half_full,
        "parted_at": where,
        "cached_tok_s": round(half_rate, 1),
        "recomputed_tok_s": round(half_full_rate, 1),
    }
    print(
        f"bf16 check, 1 prompt, {n} new tokens: cached and recomputed give {verdict}; "
        f"{half_rate:,.1f} against {half_full_rate:,.1f} tok/s\n"
    )
    columns = ["batch", "new tokens", "recomputed fp32 (tok/s)", "cached fp32 (tok/s)", "speedup"]
    columns += ["cached bf16 (tok/s)", "speedup", "bf16 text parts from fp32's at"]
    table = record.table("decoding", columns)
    for batch in args.batch_size:
        prompts = prompts_of(batch)
        generate(decoder, prompts, 8, eos_id=None)  # warm-up (allocator, kernels)
        generate(half, prompts, 8, eos_id=None)
        for n in args.new_tokens:
            paths = {"full": (decoder, False), "cached": (decoder, True), "half": (half, True)}
            rates: dict[str, list[float]] = {name: [] for name in paths}
            outs: dict[str, list[list[int]]] = {}
            for _ in range(args.rounds):  # the paths alternate; each rate is the median of its rounds
                for name, (model, use_cache) in paths.items():
                    rate, outs[name] = timed(model, prompts, n, use_cache=use_cache)
                    rates[name].append(rate)
            full_rate, cached_rate, half_rate = (statistics.median(rates[name]) for name in paths)
            full, cached, half_cached = (outs[name] for name in paths)
            same = "" if cached == full else " (outputs differ!)"
            fp32 = [f"{full_rate:,.1f}", f"{cached_rate:,.1f}", f"{cached_rate / full_rate:.1f}x{same}"]
            bf16 = [f"{half_rate:,.1f}", f"{half_rate / full_rate:.1f}x", parted(half_cached, full)]
            table.add(batch, f"{n:,}", *fp32, *bf16)
    record.save(args.out)


if __name__ == "__main__":
    main()
