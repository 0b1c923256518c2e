"""The backbone's math: causality, KV-cache equivalence, padding masks, init and sizes."""

from __future__ import annotations

import pytest
import torch

from imdb_transformer.core.decoder import CausalDecoder, DecoderConfig, KVCache


@pytest.fixture(params=[("gelu", False), ("relu2", True)], ids=["gelu", "relu2-qk_norm"])
def model(request: pytest.FixtureRequest) -> CausalDecoder:
    """A small random decoder, as configured by default and with ReLU^2 and QK-norm: every property
    below holds for both."""
    activation, qk_norm = request.param
    torch.manual_seed(0)
    config = DecoderConfig(
        vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32, activation=activation, qk_norm=qk_norm
    )
    return CausalDecoder(config).eval()


def test_changing_future_tokens_never_changes_earlier_logits(model: CausalDecoder) -> None:
    idx = torch.randint(0, 97, (3, 20))
    for t in (0, 7, 19):
        changed = idx.clone()
        changed[:, t:] = torch.randint(0, 97, (3, 20 - t))
        with torch.no_grad():
            a, b = model(idx), model(changed)
        torch.testing.assert_close(a[:, :t], b[:, :t])
        if t < 19:
            assert not torch.allclose(a[:, t:], b[:, t:])


@pytest.mark.parametrize("chunks", [[20], [1] * 20, [5, 1, 1, 13], [12, 8]])
def test_kv_cache_decoding_equals_the_full_forward(model: CausalDecoder, chunks: list[int]) -> None:
    idx = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        full = model(idx)
        cache = KVCache(model.config, batch_size=2)
        parts, start = [], 0
        for n in chunks:
            parts.append(model(idx[:, start : start + n], cache=cache))
            start += n
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-4)


def test_right_padding_is_invisible_to_real_tokens(model: CausalDecoder) -> None:
    a, b = torch.randint(4, 97, (1, 12)), torch.randint(4, 97, (1, 7))
    batch = torch.zeros(2, 12, dtype=torch.long)
    batch[0], batch[1, :7] = a[0], b[0]
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0], mask[1, :7] = True, True
    with torch.no_grad():
        out = model(batch, attention_mask=mask)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out[0], model(a)[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out[1, :7], model(b)[0], atol=1e-5, rtol=1e-4)


def test_left_padding_gives_real_tokens_the_same_logits(model: CausalDecoder) -> None:
    """Rotary positions are relative, so shifting a sequence right by padding changes nothing."""
    b = torch.randint(4, 97, (1, 7))
    batch = torch.cat([torch.zeros(1, 5, dtype=torch.long), b], dim=1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.bool), torch.ones(1, 7, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        out = model(batch, attention_mask=mask)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out[0, 5:], model(b)[0], atol=1e-5, rtol=1e-4)


def test_cache_with_padding_mask_matches_full_forward(model: CausalDecoder) -> None:
    idx = torch.randint(4, 97, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, :3] = False  # left padding in the prompt of the second row
    with torch.no_grad():
        full = model(idx, attention_mask=mask)
        cache = KVCache(model.config, batch_size=2)
        first = model(idx[:, :6], attention_mask=mask[:, :6], cache=cache)
        rest = [model(idx[:, t : t + 1], cache=cache) for t in range(6, 10)]
    torch.testing.assert_close(torch.cat([first, *rest], dim=1)[mask], full[mask], atol=1e-5, rtol=1e-4)


def test_context_overflow_is_a_clear_error(model: CausalDecoder) -> None:
    with pytest.raises(ValueError, match="exceeds the context of 32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    cache = KVCache(model.config, batch_size=1)
    model(torch.zeros(1, 30, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="crop the input"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)


def test_parameter_count_counts_every_element_once() -> None:
    cfg = DecoderConfig(vocab_size=100, block_size=16, n_layer=3, n_head=2, n_embd=16)
    model = CausalDecoder(cfg)
    assert model.lm_head.weight is model.wte.weight  # tied
    per_block = 2 * 16 + 16 * 48 + 16 * 16 + 16 * 64 + 64 * 16  # two LayerNorms, qkv, proj, mlp
    expected = 100 * 16 + 3 * per_block + 16
    assert model.num_parameters() == expected
    assert model.num_parameters(include_embeddings=False) == expected - 100 * 16


def test_residual_projections_get_scaled_init() -> None:
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=100, block_size=16, n_layer=8, n_head=4, n_embd=128)
    model = CausalDecoder(cfg)
    std_qkv = model.blocks[0].attn.qkv.weight.std().item()
    std_proj = model.blocks[0].attn.proj.weight.std().item()
    assert std_qkv == pytest.approx(0.02, rel=0.05)
    assert std_proj == pytest.approx(0.02 / 4, rel=0.1)  # 0.02 / sqrt(2 * 8)


def test_qk_norm_and_relu2_change_the_function_not_the_weights() -> None:
    torch.manual_seed(0)
    plain = CausalDecoder(DecoderConfig(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32))
    for options in ({"qk_norm": True}, {"activation": "relu2"}):
        other = CausalDecoder(
            DecoderConfig(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32, **options)
        )
        other.load_state_dict(plain.state_dict())  # the same parameters: nothing learned is added
        idx = torch.randint(0, 97, (2, 10))
        with torch.no_grad():
            assert not torch.allclose(other(idx), plain(idx))
    with pytest.raises(Exception, match="activation='swish': use gelu or relu2"):
        DecoderConfig(activation="swish")


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="divisible"):
        DecoderConfig(n_embd=30, n_head=4)


def test_attention_maps_are_causal_distributions_and_change_nothing(model: CausalDecoder) -> None:
    idx = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        before = model(idx)
    maps = model.attention_maps(idx)
    assert len(maps) == 2 and maps[0].shape == (2, 4, 12, 12)
    for weights in maps:
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 12))  # each row a distribution
        assert (weights.triu(diagonal=1) == 0).all()  # nothing attends to the future
        assert (weights[..., torch.ones(12, 12, dtype=torch.bool).tril()] > 0).all()  # the past is seen
    # the explicit weights reproduce the fused kernel's output of the first layer
    attn, x = model.blocks[0].attn, model.blocks[0].ln_1(model.wte(idx))
    with torch.no_grad():
        q, k, v = attn.qkv(x).view(2, 12, 3, 4, 8).permute(2, 0, 3, 1, 4)
        cos, sin = model.rope_cos[:12], model.rope_sin[:12]
        from imdb_transformer.core.decoder import apply_rope

        if model.config.qk_norm:
            q, k = torch.nn.functional.rms_norm(q, (8,)), torch.nn.functional.rms_norm(k, (8,))
        y = maps[0] @ v
        fused = torch.nn.functional.scaled_dot_product_attention(
            apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, is_causal=True
        )
    torch.testing.assert_close(y, fused, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(model(idx), before)  # recording is off again, outputs unchanged
    assert all(block.attn.weights is None and not block.attn.keep_weights for block in model.blocks)


def test_layer_states_can_stop_early_and_agree_with_the_full_stream(model: CausalDecoder) -> None:
    idx = torch.randint(0, model.config.vocab_size, (2, 7))
    full = model.layer_states(idx)
    assert len(full) == model.config.n_layer + 1
    assert torch.allclose(full[-1], model.hidden_states(idx))  # the last one through the final norm
    first = model.layer_states(idx, count=2)
    assert len(first) == 2 and all(torch.equal(a, b) for a, b in zip(first, full[:2], strict=True))
    with pytest.raises(ValueError, match="layer states asked for"):
        model.layer_states(idx, count=model.config.n_layer + 2)
