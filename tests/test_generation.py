"""Decoding: greedy against full forwards, the cache against recomputation, sampling filters,
sliding past the context, seeds, and clear errors for bad options."""

from __future__ import annotations

import pytest
import torch

from imdb_transformer.errors import InputError
from imdb_transformer.generation import generate, generate_text, in_dtype, next_token
from imdb_transformer.models.backbone import load_backbone
from imdb_transformer.models.decoder import CausalDecoder, DecoderConfig


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
        ({"strategy": "sample", "temperature": -0.5}, "temperature must be > 0"),
        ({"strategy": "beam"}, "unknown strategy 'beam'"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0"),
    ],
)
def test_bad_options_are_clear_errors(model: CausalDecoder, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate(model, PROMPTS, **{"max_new_tokens": 5, **options})


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
