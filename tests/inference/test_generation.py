"""Decoding: greedy against full forwards, the cache against recomputation, sampling filters,
sliding past the context, seeds, and clear errors for bad options."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import cli

from imdb_transformer.core.backbone import load_backbone
from imdb_transformer.core.decoder import CausalDecoder, DecoderConfig
from imdb_transformer.errors import InputError
from imdb_transformer.generation import (
    fastest_dtype,
    generate,
    generate_text,
    in_dtype,
    next_token,
    stream,
    stream_text,
)


@pytest.fixture
def model() -> CausalDecoder:
    """A random decoder with large weights, so its predictions vary from step to step (at the
    usual small init every position predicts about the same token)."""
    torch.manual_seed(0)
    decoder = CausalDecoder(DecoderConfig(vocab_size=61, block_size=32, n_layer=2, n_head=4, n_embd=32))
    with torch.no_grad():
        for weight in (p for p in decoder.parameters() if p.dim() == 2):
            weight.normal_(0.0, 0.5)
    return decoder.eval()


PROMPTS = [[5, 9, 17, 4, 30, 12, 8], [40, 2], [7, 7, 21, 33]]


def test_greedy_is_the_argmax_of_a_full_forward_at_each_step(model: CausalDecoder) -> None:
    prompt = PROMPTS[0]
    out = generate(model, [prompt], max_new_tokens=20, eos_id=None)[0]
    assert len(out) == 20 and len(set(out)) > 3
    with torch.no_grad():
        for i, token in enumerate(out):
            logits = model(torch.tensor([prompt + out[:i]]))[0, -1]
            assert token == int(logits.argmax())


@pytest.mark.parametrize("strategy", ["greedy", "sample", "top_k", "top_p"])
def test_cached_and_uncached_decoding_agree_past_the_context(model: CausalDecoder, strategy: str) -> None:
    """60 new tokens in a 32-token context: the window slides several times on both paths."""
    kwargs = dict(max_new_tokens=60, strategy=strategy, top_k=5, top_p=0.8, seed=7, eos_id=None)
    cached = generate(model, PROMPTS, use_cache=True, **kwargs)
    recomputed = generate(model, PROMPTS, use_cache=False, **kwargs)
    assert cached == recomputed
    assert all(len(row) == 60 for row in cached)


def test_a_prompt_gets_the_same_tokens_alone_and_in_a_padded_batch(model: CausalDecoder) -> None:
    batch = generate(model, PROMPTS, max_new_tokens=15, eos_id=None)
    alone = [generate(model, [p], max_new_tokens=15, eos_id=None)[0] for p in PROMPTS]
    assert batch == alone


def test_top_k_with_k_1_equals_greedy(model: CausalDecoder) -> None:
    greedy = generate(model, PROMPTS, max_new_tokens=25, eos_id=None)
    top1 = generate(model, PROMPTS, max_new_tokens=25, strategy="top_k", top_k=1, seed=3, eos_id=None)
    assert top1 == greedy


def test_a_seed_repeats_a_sample_and_another_seed_differs(model: CausalDecoder) -> None:
    def sample(seed: int) -> list[list[int]]:
        return generate(model, PROMPTS, max_new_tokens=30, strategy="sample", seed=seed, eos_id=None)

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_generation_stops_at_eos(model: CausalDecoder) -> None:
    out = generate(model, [PROMPTS[0]], max_new_tokens=20, eos_id=None)[0]
    stop = next(i for i, t in enumerate(out) if t not in out[:i] and i > 0)
    assert generate(model, [PROMPTS[0]], max_new_tokens=20, eos_id=out[stop])[0] == out[:stop]


def test_a_prompt_longer_than_the_context_is_cropped_to_its_end(model: CausalDecoder) -> None:
    long_prompt = [int(t) for t in torch.randint(4, 61, (50,))]
    out = generate(model, [long_prompt], max_new_tokens=10, eos_id=None)
    assert out == generate(model, [long_prompt[-24:]], max_new_tokens=10, eos_id=None)  # keeps 32 - 32 // 4


def test_the_model_is_left_in_the_mode_it_was_in(model: CausalDecoder) -> None:
    model.train()
    generate(model, [PROMPTS[0]], max_new_tokens=3)
    assert model.training


def test_top_k_and_top_p_sample_only_inside_their_sets() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(500, 4)
    gen = torch.Generator().manual_seed(0)
    top2 = next_token(logits, "top_k", top_k=2, generator=gen)
    assert set(top2.tolist()) == {0, 1}
    nucleus = next_token(logits, "top_p", top_p=0.7, generator=gen)  # 0.5 < 0.7 <= 0.8: two tokens
    assert set(nucleus.tolist()) == {0, 1}
    assert set(next_token(logits, "top_p", top_p=0.5, generator=gen).tolist()) == {0}
    assert set(next_token(logits, "sample", generator=gen).tolist()) == {0, 1, 2, 3}


def test_repetition_penalty_demotes_seen_tokens() -> None:
    logits = torch.tensor([[2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, False, False]])
    assert next_token(logits, "greedy", seen=seen).item() == 0
    assert next_token(logits, "greedy", repetition_penalty=4.0, seen=seen).item() == 1  # 2 / 4 < 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"strategy": "top_k", "top_k": 0}, "top_k must be >= 1"),
        ({"strategy": "top_p", "top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"strategy": "top_p", "top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"strategy": "top_p", "top_p": float("nan")}, r"top_p must be in \(0, 1\]"),
        ({"strategy": "sample", "temperature": -0.5}, "temperature must be a finite number > 0"),
        ({"strategy": "sample", "temperature": float("nan")}, "temperature must be a finite number > 0"),
        ({"strategy": "sample", "temperature": float("inf")}, "temperature must be a finite number > 0"),
        ({"strategy": "beam"}, "unknown strategy 'beam'"),
        ({"max_new_tokens": 0}, "max_new_tokens must be in 1..100,000"),
        ({"repetition_penalty": 0.0}, r"repetition_penalty must be in \[0.001, 1000\]"),
        ({"repetition_penalty": -1.0}, r"repetition_penalty must be in \[0.001, 1000\]"),
        ({"repetition_penalty": float("nan")}, r"repetition_penalty must be in \[0.001, 1000\]"),
        ({"repetition_penalty": 1e300}, r"repetition_penalty must be in \[0.001, 1000\]"),
    ],
)
def test_bad_options_are_clear_errors(model: CausalDecoder, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate(model, PROMPTS, **{"max_new_tokens": 5, **options})


@pytest.mark.parametrize("strategy", ["sample", "top_k", "top_p"])
def test_a_vanishing_temperature_or_top_p_decodes_greedily(model: CausalDecoder, strategy: str) -> None:
    """The limit of sampling as the temperature (or the nucleus) shrinks to 0 is the likeliest token;
    1e-300 is 0 in float32, where dividing by it gave NaN probabilities."""
    greedy = generate(model, PROMPTS, max_new_tokens=12, eos_id=None)
    for options in ({"temperature": 1e-300}, {"temperature": 5e-324}, {"top_p": 1e-300}):
        if "top_p" in options and strategy != "top_p":
            continue
        out = generate(model, PROMPTS, max_new_tokens=12, strategy=strategy, seed=0, eos_id=None, **options)
        assert out == greedy, options


def test_extreme_but_valid_options_sample_without_error(model: CausalDecoder) -> None:
    kwargs = dict(max_new_tokens=20, seed=4, eos_id=None)
    flat = generate(model, PROMPTS, strategy="sample", temperature=1e300, **kwargs)  # uniform in the limit
    assert all(0 <= t < 61 for row in flat for t in row) and len({t for row in flat for t in row}) > 10
    everything = generate(model, PROMPTS, strategy="top_k", top_k=10**9, **kwargs)  # k above the vocabulary
    assert everything == generate(model, PROMPTS, strategy="sample", **kwargs)
    for penalty in (1e-3, 1e3):  # the bounds of the repetition penalty: finite logits, no error
        out = generate(model, PROMPTS, strategy="top_p", repetition_penalty=penalty, **kwargs)
        assert all(len(row) == 20 for row in out)


def test_generate_cli_takes_a_tiny_temperature_and_refuses_nan_in_one_line(pretrained_run) -> None:
    backbone = str(pretrained_run / "backbone")
    base = ["generate", "--backbone", backbone, "--prompt", "The film", "--max_new_tokens", "5"]
    done = cli(*base, "--temperature", "1e-300", "--strategy", "sample")
    assert done.returncode == 0 and done.stdout.startswith("The film"), done.stderr[-2000:]
    # YAML's .nan reaches the options' check; a plain nan the parser refuses
    for option, value in (("--temperature", ".nan"), ("--repetition_penalty", "nan")):
        result = cli(*base, option, value, "--strategy", "top_p")
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert len(errors) == 1 and option.strip("-") in errors[0], result.stderr


def test_an_empty_prompt_is_a_clear_error(model: CausalDecoder, pretrained_run) -> None:
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[5, 6], []], max_new_tokens=5)
    backbone = load_backbone(pretrained_run / "backbone")
    with pytest.raises(ValueError, match="prompt 2 is empty"):
        generate_text(backbone, ["A fine film", "   "], max_new_tokens=5)


def test_generate_text_continues_each_prompt(pretrained_run) -> None:
    backbone = load_backbone(pretrained_run / "backbone")
    texts = generate_text(backbone, ["The movie was", "I hated"], max_new_tokens=12, strategy="top_k", seed=0)
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
    assert texts == generate_text(
        backbone, ["The movie was", "I hated"], max_new_tokens=12, strategy="top_k", seed=0
    )


def test_a_bfloat16_copy_decodes_the_same_tokens_cached_and_recomputed(model: CausalDecoder) -> None:
    half = in_dtype(model, "bfloat16")
    assert next(half.parameters()).dtype == torch.bfloat16 and half.rope_cos.dtype == torch.bfloat16
    assert half.attention_dtype == torch.float32  # on a CPU attention and the cache stay float32
    assert next(model.parameters()).dtype == torch.float32  # the original is untouched
    assert in_dtype(model, torch.float32) is model
    kwargs = dict(max_new_tokens=40, eos_id=None)
    cached = generate(half, PROMPTS, use_cache=True, **kwargs)
    assert cached == generate(half, PROMPTS, use_cache=False, **kwargs)
    full = generate(model, PROMPTS, **kwargs)
    assert [row[:3] for row in cached] == [row[:3] for row in full]  # the same model, rounded
    with pytest.raises(InputError, match="float32 or bfloat16"):
        in_dtype(model, torch.float16)


def test_auto_dtype_is_measured_once_per_machine_model_and_batch(
    model: CausalDecoder, tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import imdb_transformer.generation as generation

    measured = []
    speeds = {1: {"float32": 100.0, "bfloat16": 150.0}, 8: {"float32": 400.0, "bfloat16": 300.0}}
    monkeypatch.setattr(
        generation, "_decode_speeds", lambda d, batch: measured.append(batch) or speeds[batch]
    )
    assert fastest_dtype(model, 1, tmp_path) == "bfloat16"
    assert "Decoding in bfloat16: 150 tokens/s against 100" in capsys.readouterr().err
    assert fastest_dtype(model, 1, tmp_path) == "bfloat16"  # read from the cache
    assert fastest_dtype(model, 8, tmp_path) == "float32" and fastest_dtype(model, 20, tmp_path) == "float32"
    assert measured == [1, 8]  # once per batch size (above 8 counts as 8)
    record = json.loads((tmp_path / "decode-dtype.json").read_text())
    assert sorted(r["dtype"] for r in record.values()) == ["bfloat16", "float32"]
    (tmp_path / "decode-dtype.json").write_text("not json")  # a damaged cache is measured again
    assert fastest_dtype(model, 1, tmp_path) == "bfloat16" and measured == [1, 8, 1]


def test_decode_speeds_times_both_dtypes(model: CausalDecoder) -> None:
    from imdb_transformer.generation import _decode_speeds

    speeds = _decode_speeds(model, 2, steps=3)
    assert set(speeds) == {"float32", "bfloat16"} and all(v > 0 for v in speeds.values())


@pytest.mark.parametrize("options", [{"strategy": "greedy"}, {"strategy": "top_p", "seed": 3}])
def test_streaming_yields_the_tokens_generate_returns(model: CausalDecoder, options: dict) -> None:
    prompt = [3, 5, 7, 9]
    model.train()
    streamed = list(stream(model, prompt, 40, eos_id=None, **options))
    assert streamed == generate(model, [prompt], 40, eos_id=None, **options)[0]
    assert model.training  # put back as it was
    stopped = list(stream(model, prompt, 40, eos_id=streamed[5], **options))
    assert stopped == streamed[: streamed.index(streamed[5])]  # ends before the end-of-text token


def test_streamed_text_adds_up_to_the_generated_text(pretrained_run) -> None:
    backbone = load_backbone(pretrained_run / "backbone")
    for prompt in ("This movie", "Ünïcödé 🎬 film"):
        pieces = list(stream_text(backbone, prompt, 30, strategy="top_k", seed=7))
        assert (
            "".join(text for text, _ in pieces)
            == generate_text(backbone, [prompt], 30, strategy="top_k", seed=7)[0]
        )
        assert all(count >= 1 for _, count in pieces)
    with pytest.raises(InputError, match="prompt is empty"):
        next(stream_text(backbone, "  ", 5))
