"""Text generation from a pretrained :class:`CausalDecoder`, over its KV cache.

One :func:`generate` serves a batch of prompts. Each step turns the logits of the last position
into one new token (greedy, or sampled with temperature, top-k or top-p), appends it and feeds
*only that token* through the model: the keys and values of everything before it are already in
the :class:`KVCache`, so a step costs one position instead of a re-run of the whole prefix.

Prompts of different lengths are left-padded and masked; rotary positions are relative, so
padding changes nothing for the real tokens. When prompt plus output outgrow the context, the
window slides: it restarts from the last ``block_size - slide`` tokens (one re-run of those,
every ``slide`` steps), so a generation of any length runs without error.

One prompt at a time, a step multiplies one row by every weight matrix: it is bound by reading the
weights, not by arithmetic. :func:`in_dtype` gives a bfloat16 copy of the decoder that reads half the
bytes per token. Whether that pays depends on the machine (it did on an AMD EPYC with AVX512-BF16 and did
not on a Xeon with AMX, see docs/generation.md), so :func:`fastest_dtype` measures it once per machine,
model shape and batch size, and caches the answer.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from imdb_transformer.artifacts import atomic_path, cache_key
from imdb_transformer.core.backbone import Backbone
from imdb_transformer.core.decoder import CausalDecoder, KVCache
from imdb_transformer.errors import InputError
from imdb_transformer.hardware import describe_cpu
from imdb_transformer.text.texts import is_blank
from imdb_transformer.text.tokenizer import EOS_ID, PAD_ID, Tokenizer

Strategy = Literal["greedy", "sample", "top_k", "top_p"]
STRATEGIES: tuple[str, ...] = ("greedy", "sample", "top_k", "top_p")
DType = Literal["float32", "bfloat16"]
DecodeDType = Literal["auto", "float32", "bfloat16"]  # auto: the faster of the two here (fastest_dtype)
DEFAULT_CACHE = "~/.cache/imdb_transformer"
# The repetition penalty divides or multiplies float32 logits: far outside these bounds it overflows them
# to infinity (and 0 * inf is NaN); at them, a seen token's logit is already scaled a thousandfold.
MIN_PENALTY, MAX_PENALTY = 1e-3, 1e3


def in_dtype(decoder: CausalDecoder, dtype: DType | torch.dtype) -> CausalDecoder:
    """``decoder`` itself when its weights are already ``dtype``, else a copy cast to it (weights and
    rotary tables; on a CPU attention and the KV cache stay float32; logits are scored in float32
    either way). The copy decodes with the same cached and recomputed paths; its tokens are its own,
    and may part from float32's where two candidates are within bf16 rounding of each other."""
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if dtype not in (torch.float32, torch.bfloat16):
        raise InputError(f"cannot decode in {dtype}; use float32 or bfloat16")
    if next(decoder.parameters()).dtype == dtype:
        return decoder
    cast = copy.deepcopy(decoder).to(dtype)
    if dtype != torch.float32 and cast.wte.weight.device.type == "cpu":
        cast.attention_dtype = torch.float32  # attention reads no weights: bf16 would save no bytes there
    return cast


def fastest_dtype(decoder: CausalDecoder, batch: int = 1, cache_dir: str | Path = DEFAULT_CACHE) -> DType:
    """The weights' dtype that decodes ``batch`` prompts fastest on this machine.

    On a GPU, bfloat16 where it is supported. On a CPU it is measured: a few greedy steps over the KV
    cache in each dtype, alternated twice, the better time of each kept; the answer is cached in
    ``cache_dir/decode-dtype.json`` under the CPU, torch version, model shape and batch size (batches
    above 8 count as 8), so each machine measures once."""
    device = decoder.wte.weight.device
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    batch = max(1, min(batch, 8))
    record = Path(cache_dir).expanduser() / "decode-dtype.json"
    shape = {k: v for k, v in asdict(decoder.config).items() if k not in ("dropout", "reverse")}
    key = cache_key(describe_cpu(), torch.__version__, sorted(shape.items()), batch)
    try:
        known = json.loads(record.read_text())
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), dict) and known[key].get("dtype") in ("float32", "bfloat16"):
        return known[key]["dtype"]
    speeds = _decode_speeds(decoder, batch)
    best: DType = max(speeds, key=speeds.get)
    known[key] = {"dtype": best, "tokens_per_s": speeds, "cpu": describe_cpu(), "batch": batch}
    try:
        with atomic_path(record, overwrite=True) as tmp:
            tmp.write_text(json.dumps(known, indent=1))
    except OSError:  # a read-only cache: measure again next time
        pass
    print(
        f"Decoding in {best}: {speeds[best]:.0f} tokens/s against {min(speeds.values()):.0f} in the other "
        f"dtype on this machine (measured once, cached in {record}); --dtype chooses",
        file=sys.stderr,
    )
    return best


def _decode_speeds(decoder: CausalDecoder, batch: int, steps: int = 24) -> dict[str, float]:
    """Tokens per second of greedy decoding over the KV cache, in float32 and in bfloat16."""
    prompts = [[EOS_ID, *range(4, 20)]] * batch
    copies = {dtype: in_dtype(decoder, dtype) for dtype in ("float32", "bfloat16")}
    best = dict.fromkeys(copies, math.inf)
    for _ in range(2):
        for dtype, model in copies.items():
            generate(model, prompts, 2, eos_id=None)  # warm up
            start = time.perf_counter()
            generate(model, prompts, steps, eos_id=None)
            best[dtype] = min(best[dtype], time.perf_counter() - start)
    return {dtype: round(batch * steps / seconds, 1) for dtype, seconds in best.items()}


MOST_NEW_TOKENS = 100_000  # tokens one call may add to each prompt
MAX_SEED = 2**32 - 1


def check_options(
    strategy: str,
    temperature: float,
    top_k: int,
    top_p: float,
    repetition_penalty: float,
    max_new_tokens: int,
) -> None:
    """Raise ``ValueError`` naming the bad option and its valid range (NaN and infinities are refused)."""
    if strategy not in STRATEGIES:
        raise InputError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise InputError(
            f"temperature must be a finite number > 0 (got {temperature}); for deterministic output use the "
            "greedy strategy"
        )
    if top_k < 1:
        raise InputError(f"top_k must be >= 1 (got {top_k}); 1 is greedy, larger values sample more widely")
    if not 0 < top_p <= 1:
        raise InputError(f"top_p must be in (0, 1] (got {top_p}); 0.9 keeps the likeliest 90% of the mass")
    if not MIN_PENALTY <= repetition_penalty <= MAX_PENALTY:
        raise InputError(
            f"repetition_penalty must be in [{MIN_PENALTY:g}, {MAX_PENALTY:g}] (got {repetition_penalty}); "
            "1.0 turns it off, above 1 discourages repeats"
        )
    if not 1 <= max_new_tokens <= MOST_NEW_TOKENS:
        raise InputError(
            f"max_new_tokens must be in 1..{MOST_NEW_TOKENS:,} (got {max_new_tokens}): the new tokens of "
            "every prompt are held in memory"
        )


def next_token(
    logits: Tensor,
    strategy: str,
    temperature: float = 1.0,
    top_k: int = 50,
    top_p: float = 0.9,
    repetition_penalty: float = 1.0,
    seen: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Choose one token per row from ``logits`` (B, V).

    ``greedy`` takes the argmax; ``sample`` draws from softmax(logits / temperature); ``top_k``
    draws among the k likeliest tokens only; ``top_p`` (nucleus) among the fewest tokens whose
    probabilities add up to ``top_p``. The repetition penalty (CTRL, Keskar et al. 2019) divides
    positive logits, and multiplies negative ones, of tokens already ``seen`` (B, V bool).
    """
    if repetition_penalty != 1.0 and seen is not None:
        penalised = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if strategy == "greedy":
        return logits.argmax(dim=-1)
    if temperature != 1.0:
        logits = _tempered(logits, temperature)
    if strategy == "top_k":
        kth = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    elif strategy == "top_p":
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens before it already hold top_p (the first always stays)
        outside = probs.cumsum(dim=-1) - probs >= top_p
        outside[:, 0] = False  # a top_p below float32's smallest number would otherwise drop it too
        sorted_logits = sorted_logits.masked_fill(outside, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def _tempered(logits: Tensor, temperature: float) -> Tensor:
    """``logits / temperature`` up to a constant per row, without NaN for any temperature > 0.

    The division runs in float64 on logits shifted so that each row's largest is 0: that one stays 0
    and every other becomes a negative number or -inf. A temperature so small that it is 0 in
    float32 (1e-300) thus leaves only the likeliest tokens, the limit of sampling as the temperature
    goes to 0, instead of the NaN of 0 / 0; a huge one flattens the row towards uniform.
    """
    shifted = (logits - logits.amax(dim=-1, keepdim=True)).double()
    return (shifted / temperature).to(logits.dtype)


@torch.inference_mode()
def generate(
    decoder: CausalDecoder,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    strategy: Strategy = "greedy",
    temperature: float = 1.0,
    top_k: int = 50,
    top_p: float = 0.9,
    repetition_penalty: float = 1.0,
    eos_id: int | None = EOS_ID,
    seed: int | None = None,
    use_cache: bool = True,
    slide: int | None = None,
) -> list[list[int]]:
    """Continue each prompt (a list of token ids) by up to ``max_new_tokens`` tokens.

    Returns the new tokens of each prompt, ending before ``eos_id`` when the model emits it.
    ``seed`` makes sampling repeatable. ``use_cache=False`` re-runs the whole window for every
    token (the slow way, kept to check and benchmark the cache). When the sequence outgrows the
    context, it continues from its last ``block_size - slide`` tokens (default slide: a quarter
    of the context), with or without the cache alike.
    """
    steps = _token_steps(
        decoder, prompts, max_new_tokens, strategy, temperature, top_k, top_p, repetition_penalty,
        eos_id, seed, use_cache, slide,
    )  # fmt: skip
    columns = list(steps)  # one (B,) tensor of new tokens per step
    if not columns:
        return [[] for _ in prompts]
    out = []
    for row in torch.stack(columns, dim=1).tolist():  # one host sync at the end, not one per step
        out.append(row[: row.index(eos_id)] if eos_id is not None and eos_id in row else row)
    return out


@torch.inference_mode()
def stream(
    decoder: CausalDecoder,
    prompt: Sequence[int],
    max_new_tokens: int,
    strategy: Strategy = "greedy",
    temperature: float = 1.0,
    top_k: int = 50,
    top_p: float = 0.9,
    repetition_penalty: float = 1.0,
    eos_id: int | None = EOS_ID,
    seed: int | None = None,
) -> Iterator[int]:
    """Continue one prompt token by token: yields each new token as soon as it is chosen, the same
    tokens :func:`generate` returns (with the KV cache), stopping before ``eos_id``."""
    for new in _token_steps(
        decoder, [prompt], max_new_tokens, strategy, temperature, top_k, top_p, repetition_penalty,
        eos_id, seed, True, None,
    ):  # fmt: skip
        token = int(new[0])
        if eos_id is not None and token == eos_id:
            return
        yield token


def _token_steps(
    decoder: CausalDecoder,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    strategy: Strategy,
    temperature: float,
    top_k: int,
    top_p: float,
    repetition_penalty: float,
    eos_id: int | None,
    seed: int | None,
    use_cache: bool,
    slide: int | None,
) -> Iterator[Tensor]:
    """The options checked, then each step's new tokens (B,), the decoder in eval mode meanwhile."""
    check_options(strategy, temperature, top_k, top_p, repetition_penalty, max_new_tokens)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed must be in 0..{MAX_SEED} (got {seed})")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise InputError("every prompt needs at least one token")
    block = decoder.config.block_size
    slide = slide or max(1, block // 4)
    if not 1 <= slide < block:
        raise InputError(f"slide must be in [1, {block - 1}] for a context of {block} (got {slide})")
    return _steps_in_eval(
        decoder, prompts, max_new_tokens, block - slide, eos_id, seed, use_cache,
        partial(
            next_token, strategy=strategy, temperature=temperature, top_k=top_k, top_p=top_p,
            repetition_penalty=repetition_penalty,
        ),
        repetition_penalty != 1.0,
    )  # fmt: skip


def _steps_in_eval(decoder: CausalDecoder, *args: Any) -> Iterator[Tensor]:
    was_training = decoder.training
    try:
        yield from _steps(decoder.eval(), *args)
    finally:
        decoder.train(was_training)


def _steps(  # the decoding loop, for a decoder already in eval mode: each step's new tokens (B,)
    decoder: CausalDecoder,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    keep: int,
    eos_id: int | None,
    seed: int | None,
    use_cache: bool,
    choose: Callable[..., Tensor],
    track_seen: bool,
) -> Iterator[Tensor]:
    block = decoder.config.block_size
    param = next(decoder.parameters())
    device, vocab = param.device, decoder.config.vocab_size
    B, P = len(prompts), max(len(p) for p in prompts)
    tokens = torch.full((B, P + max_new_tokens), PAD_ID, dtype=torch.long, device=device)
    real = torch.zeros_like(tokens, dtype=torch.bool)
    for i, prompt in enumerate(prompts):  # left padding: every prompt ends at column P
        tokens[i, P - len(prompt) : P] = torch.as_tensor(prompt, dtype=torch.long, device=device)
        real[i, P - len(prompt) : P] = True
    seen = None  # tokens each row has seen so far, for the repetition penalty
    if track_seen:
        seen = torch.zeros(B, vocab, dtype=torch.bool, device=device).scatter_(1, tokens[:, :P], True)
    rows = torch.arange(B, device=device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    done = torch.zeros(B, dtype=torch.bool, device=device)

    cache, start, end = None, 0, P
    for _ in range(max_new_tokens):
        if end - start > block:  # prompt too long, or window full: slide it and start a fresh cache
            start, cache = end - keep, None
        if use_cache and cache is not None:  # only the newest token goes through the model
            hidden = decoder.hidden_states(tokens[:, end - 1 : end], cache=cache)
        else:
            mask = real[:, start:end]
            if use_cache:
                cache = KVCache(decoder.config, B, device=device, dtype=decoder.attention_dtype)
            hidden = decoder.hidden_states(
                tokens[:, start:end], attention_mask=None if mask.all() else mask, cache=cache
            )
        logits = decoder.lm_head(hidden[:, -1]).float()  # (B, V)
        new = choose(logits, seen=seen, generator=generator)
        if eos_id is not None:
            new = new.masked_fill(done, PAD_ID)  # finished rows idle on padding (ignored below)
        tokens[:, end], real[:, end] = new, True
        if seen is not None:
            seen[rows, new] = True
        end += 1
        yield new
        if eos_id is not None:
            done |= new == eos_id
            if bool(done.all()):
                break


def generate_text(backbone: Backbone, prompts: Sequence[str], max_new_tokens: int, **options) -> list[str]:
    """Continue each text prompt; returns the continuations (the prompt itself is not repeated).

    Each prompt is read as the start of a review: it follows an end-of-text token, as every review
    did in pretraining. ``options`` are those of :func:`generate`.
    """
    for i, prompt in enumerate(prompts):
        if is_blank(prompt):
            raise InputError(f"prompt {i + 1} is empty; give the opening words of a review to continue")
    tok = backbone.tokenizer
    ids = [[EOS_ID, *tok.encode(prompt)] for prompt in prompts]
    new = generate(backbone.decoder, ids, max_new_tokens, eos_id=EOS_ID, **options)
    return [continuation(tok, p, n) for p, n in zip(ids, new, strict=True)]


def continuation(tokenizer: Tokenizer, prompt: Sequence[int], new: Sequence[int]) -> str:
    """The text the ``new`` token ids add after ``prompt``'s (an end-of-text token at its head aside): the
    two decoded together and the prompt's text cut off, so a word split across them keeps its spacing (a
    first piece without a leading space carries on the prompt's last word)."""
    prompt = list(prompt[1:] if len(prompt) and prompt[0] == EOS_ID else prompt)
    return tokenizer.decode(prompt + list(new))[len(tokenizer.decode(prompt)) :]


def stream_text(backbone: Backbone, prompt: str, max_new_tokens: int, **options) -> Iterator[tuple[str, int]]:
    """Continue one text prompt piece by piece: yields ``(text, tokens)``, the text the newest tokens
    add to the continuation and how many tokens that took, as :func:`generate_text` reads them (a
    character spelled by several byte tokens comes out whole, once its last byte is chosen).
    ``options`` are those of :func:`stream`."""
    if is_blank(prompt):
        raise InputError("the prompt is empty; give the opening words of a review to continue")
    tok = backbone.tokenizer
    ids = tok.encode(prompt)
    before = tok.decode(ids)
    new: list[int] = []
    shown, pending = "", 0
    for token in stream(backbone.decoder, [EOS_ID, *ids], max_new_tokens, **options):
        new.append(token)
        pending += 1
        text = tok.decode(ids + new)[len(before) :]
        if text.endswith("\ufffd") or not text.startswith(shown):  # a character still being spelled
            continue
        yield text[len(shown) :], pending
        shown, pending = text, 0
    if pending:  # bytes that never became a character: what decoding them gives
        yield tok.decode(ids + new)[len(before) :][len(shown) :], pending
