"""Decoding speed: tokens/s with the KV cache against re-running the whole window for each token.

    python benchmarks/decode_speed.py --checkpoint lightning_logs/version_0/backbone
    python benchmarks/decode_speed.py                      # a random model of configs/pretrain.yaml's shape

Both paths run the same greedy loop (``imdb_transformer.generation.generate``, ``use_cache`` on or
off) from the same prompts, one after the other in this process, and must produce the same tokens;
once for a single prompt and once for a batch of eight. Past the context the window slides on both
paths. Prints one table.
"""

from __future__ import annotations

import argparse
import time

import torch

from imdb_transformer.generation import generate
from imdb_transformer.models.backbone import load_backbone
from imdb_transformer.models.decoder import CausalDecoder, DecoderConfig


def timed(decoder: CausalDecoder, prompts: list[list[int]], new_tokens: int, use_cache: bool) -> tuple:
    start = time.perf_counter()
    out = generate(decoder, prompts, new_tokens, eos_id=None, use_cache=use_cache)
    return sum(len(row) for row in out) / (time.perf_counter() - start), out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a backbone/ folder or .ckpt (default: a random model)")
    parser.add_argument("--new_tokens", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--prompt_tokens", type=int, default=16, help="prompt length (random ids)")
    parser.add_argument("--batch_size", type=int, nargs="+", default=[1, 8], help="prompts decoded together")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    shape = parser.add_argument_group("random model (without --checkpoint)")
    shape.add_argument("--n_layer", type=int, default=6)
    shape.add_argument("--n_head", type=int, default=8)
    shape.add_argument("--n_embd", type=int, default=256)
    shape.add_argument("--block_size", type=int, default=512)
    shape.add_argument("--vocab_size", type=int, default=8192)
    args = parser.parse_args(argv)

    if args.checkpoint:
        decoder = load_backbone(args.checkpoint).decoder
    else:
        torch.manual_seed(0)
        names = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")
        decoder = CausalDecoder(DecoderConfig(**{k: getattr(args, k) for k in names}))
    decoder = decoder.to(args.device).eval()
    c = decoder.config
    print(
        f"decoder: {c.n_layer} layers x {c.n_embd} wide, context {c.block_size}, greedy, "
        f"prompts of {args.prompt_tokens} tokens, {args.device}, {torch.get_num_threads()} threads"
    )
    print("| batch | new tokens | cached (tok/s) | recomputed (tok/s) | speedup |")
    print("| --- | --- | --- | --- | --- |")
    for batch in args.batch_size:
        shape = (batch, args.prompt_tokens)
        prompts = torch.randint(4, c.vocab_size, shape, generator=torch.Generator().manual_seed(0)).tolist()
        generate(decoder, prompts, 8, eos_id=None)  # warm-up (allocator, kernels)
        for n in args.new_tokens:
            cached_rate, cached = timed(decoder, prompts, n, use_cache=True)
            full_rate, full = timed(decoder, prompts, n, use_cache=False)
            same = "" if cached == full else " (outputs differ!)"
            speedup = f"{cached_rate / full_rate:.1f}x{same}"
            print(f"| {batch} | {n:,} | {cached_rate:,.1f} | {full_rate:,.1f} | {speedup} |")


if __name__ == "__main__":
    main()
