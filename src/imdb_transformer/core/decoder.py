"""The backbone: a decoder-only (GPT-style) transformer as a plain ``nn.Module``.

Every other part of the package (the pretraining LightningModule, the embedder, the
classifier, generation) holds one of these and adds as little as it needs.

Positions are encoded with rotary embeddings (RoPE) rather than a learned position table:
RoPE rotates queries and keys by an angle proportional to their position, so attention
scores depend only on the *relative* distance between tokens. That has three practical
benefits here: no parameters to learn, a KV cache only needs a position offset, and a
left-padded prompt gives its real tokens exactly the same scores as the unpadded one.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imdb_transformer.errors import InputError

MAX_BLOCK_SIZE = 1 << 17  # positions: the rotary tables for this many take 1 MiB per head channel


@dataclass
class DecoderConfig:
    """Shape of a :class:`CausalDecoder`."""

    vocab_size: int = 8192
    """Number of token ids (embedding rows); the LM head is tied to the embedding."""
    block_size: int = 256
    """Context length: the most tokens one forward pass (or a KV cache) can hold."""
    n_layer: int = 6
    """Number of transformer blocks."""
    n_head: int = 8
    """Attention heads per block; ``n_embd`` must divide evenly among them."""
    n_embd: int = 256
    """Width of the residual stream."""
    dropout: float = 0.0
    """Dropout on attention weights and residual branches (0 for short pretraining runs)."""
    bias: bool = False
    """Biases in linear layers and LayerNorms (False is slightly faster and as good)."""
    rope_base: float = 10000.0
    """Base of the rotary embedding frequencies."""
    qk_norm: bool = False
    """RMS-normalise each head's queries and keys before the rotary embedding (bounds the attention
    logits, so higher learning rates stay stable: QK-norm, as recent small-GPT recipes use)."""
    activation: Literal["gelu", "relu2"] = "gelu"
    """The feed-forward nonlinearity: GELU, or ReLU squared (Primer: sparser, cheaper, often better)."""
    reverse: bool = False
    """The model reads text backwards (a backward LM, ULMFiT's second direction): whatever feeds it
    a review (classifier data, embedder) reverses the review's tokens first. The layers are the same."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InputError(f"{name}={getattr(self, name)!r} must be a whole number of at least 1")
        if self.block_size > MAX_BLOCK_SIZE:
            raise InputError(
                f"block_size={self.block_size} is above the {MAX_BLOCK_SIZE} positions supported"
            )
        if not 0 <= self.dropout < 1:
            raise InputError(f"dropout={self.dropout!r} must be in [0, 1)")
        if not self.rope_base > 1:
            raise InputError(f"rope_base={self.rope_base!r} must be above 1")
        if self.n_embd % self.n_head:
            raise InputError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if (self.n_embd // self.n_head) % 2:
            raise InputError("the head size n_embd // n_head must be even for rotary embeddings")
        if self.activation not in ("gelu", "relu2"):
            raise InputError(f"activation={self.activation!r}: use gelu or relu2")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head


class KVCache:
    """Keys and values of every token seen so far, per layer, preallocated up to ``max_len``.

    Generation feeds only the new tokens; each attention layer appends their keys/values here
    and attends over the whole cached prefix, so a new token costs one position, not a
    re-run of the prefix. ``mask`` remembers which cached positions are real (not padding).
    """

    def __init__(
        self,
        config: DecoderConfig,
        batch_size: int,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.max_len = max_len or config.block_size
        if self.max_len > config.block_size:
            raise InputError(f"max_len={self.max_len} exceeds the model's block_size={config.block_size}")
        shape = (config.n_layer, batch_size, config.n_head, self.max_len, config.head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.mask = torch.ones(batch_size, self.max_len, dtype=torch.bool, device=device)
        self.padded = False  # whether any cached position is padding (then attention needs the mask)
        self.length = 0  # positions filled in every layer

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k, v`` (B, nh, T, hs) after the cached prefix; return all keys/values so far."""
        end = self.length + k.size(2)
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


def _no_padding(mask: Tensor | None) -> bool:
    """Whether ``mask`` marks every position real, checked only where that costs no device sync (on
    the CPU): a batch of one query, or of texts of one length, then skips building an attention mask."""
    return mask is not None and mask.device.type == "cpu" and bool(mask.all())


def rope_angles(config: DecoderConfig, length: int) -> tuple[Tensor, Tensor]:
    """cos and signed sin tables (length, head_size) for rotary position embeddings: channel i
    and channel i + head_size/2 form a pair, rotated by angle position * base^(-2i/head_size)."""
    hs = config.head_size
    inv_freq = 1.0 / (config.rope_base ** (torch.arange(0, hs, 2, dtype=torch.float32) / hs))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (T, hs/2)
    sin = angles.sin()
    return torch.cat((angles, angles), dim=-1).cos(), torch.cat((-sin, sin), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each channel pair (x1, x2) of ``x`` (..., T, hs) to (x1 cos - x2 sin, x2 cos + x1 sin);
    the sign lives in the ``sin`` table, so the swap of halves is a single ``roll``."""
    return x * cos + x.roll(x.size(-1) // 2, dims=-1) * sin


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each token sees only itself and earlier tokens.

    One fused linear layer produces queries, keys and values; the attention itself runs in
    ``F.scaled_dot_product_attention`` so PyTorch can pick a fused (flash / memory-efficient)
    kernel. Without padding or a cache the causal mask is implied by ``is_causal=True`` and no
    (T, T) mask tensor is ever built.
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.proj.is_residual_projection = True  # scaled init, see CausalDecoder._init_weights
        self.dropout = config.dropout
        self.keep_weights = False  # set by CausalDecoder.attention_maps; the training path never is
        self.weights: Tensor | None = None
        self.attention_dtype: torch.dtype | None = None  # see CausalDecoder.attention_dtype

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        attn_mask: Tensor | None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> Tensor:
        B, T, C = x.shape
        nh, hs = self.config.n_head, self.config.head_size
        qkv = self.qkv(x).view(B, T, 3, nh, hs).permute(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
        if self.attention_dtype is not None:
            qkv = qkv.to(self.attention_dtype)
        qk = qkv[:2]
        if self.config.qk_norm:
            qk = F.rms_norm(qk, (hs,))
        qk = apply_rope(qk, cos, sin)  # queries and keys rotated in one pass
        q, k, v = qk[0], qk[1], qkv[2]
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nh, S, hs), S = cached + T
        # No mask means plain causal attention over T == S positions (or one new token, which
        # may see everything before it): let the kernel apply causality itself.
        is_causal = attn_mask is None and q.size(2) == k.size(2) and T > 1
        if self.keep_weights:  # for looking at, not for training: the explicit (B, nh, T, S) matrix
            allowed = attn_mask
            if is_causal:
                allowed = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
            if allowed is not None:
                scores = scores.masked_fill(~allowed, float("-inf"))
            self.weights = scores.softmax(dim=-1).detach()
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads side by side
        if self.attention_dtype is not None:  # back to the weights' dtype; never taken in training
            y = y.to(x.dtype)
        return self.proj(y)


class MLP(nn.Module):
    """The position-wise feed-forward network: expand 4x, GELU (or ReLU squared), project back."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.proj.is_residual_projection = True
        self.activation = config.activation

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        return self.proj(F.gelu(h) if self.activation == "gelu" else F.relu(h).square())


class Block(nn.Module):
    """A pre-norm transformer block: each sub-layer reads a normalised copy of the residual
    stream and adds its output back, so the stream itself is never normalised away."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, attn_mask: Tensor | None, cache: KVCache | None, layer: int
    ) -> Tensor:
        x = x + self.drop(self.attn(self.ln_1(x), cos, sin, attn_mask, cache, layer))
        return x + self.drop(self.mlp(self.ln_2(x)))


class CausalDecoder(nn.Module):
    """Token embedding, a stack of pre-norm blocks, a final LayerNorm and a weight-tied LM head."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying: one matrix reads and writes tokens
        cos, sin = rope_angles(config, config.block_size)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 init: N(0, 0.02), with projections into the residual stream scaled down by
        sqrt(2 * n_layer) so the stream's variance does not grow with depth."""
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "is_residual_projection", False):
                std /= math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def attention_dtype(self) -> torch.dtype:
        """The dtype attention (and so a KV cache) runs in: the weights' unless set otherwise. A
        bfloat16 copy for decoding on a CPU sets float32 (:func:`~imdb_transformer.generation.in_dtype`):
        attention reads no weights, so bf16 would save it no bytes, and float32 keeps the cache exact."""
        return self.blocks[0].attn.attention_dtype or self.wte.weight.dtype

    @attention_dtype.setter
    def attention_dtype(self, dtype: torch.dtype | None) -> None:
        for block in self.blocks:
            block.attn.attention_dtype = dtype

    def num_parameters(self, include_embeddings: bool = True) -> int:
        """Number of parameters, counting every element once (the tied head is not counted twice)."""
        n = sum(p.numel() for p in self.parameters())
        return n if include_embeddings else n - self.wte.weight.numel()

    def _attention_mask(self, T: int, start: int, pad_mask: Tensor | None) -> Tensor | None:
        """Boolean (B, 1, T, S) mask of allowed query->key pairs, or None when causal is implied.

        ``pad_mask`` (B, S) marks real key positions. Each query may also see itself, so a
        padding query never has an all-masked row (which would give NaN).
        """
        S = start + T
        if pad_mask is None and (start == 0 or T == 1):
            return None
        q_pos = torch.arange(start, S, device=self.rope_cos.device)[:, None]
        k_pos = torch.arange(S, device=self.rope_cos.device)[None, :]
        allowed = k_pos <= q_pos  # (T, S) causal
        if pad_mask is None:
            return allowed
        allowed = allowed & pad_mask[:, None, None, :]  # (B, 1, T, S)
        return allowed | (k_pos == q_pos)

    def hidden_states(
        self, idx: Tensor, attention_mask: Tensor | None = None, cache: KVCache | None = None
    ) -> Tensor:
        """Final-layer features (B, T, n_embd) for token ids ``idx`` (B, T).

        ``attention_mask`` (B, T), True for real tokens, hides padding from attention. With a
        ``cache``, ``idx`` holds only the new tokens; they are placed after the cached ones.
        """
        *_, last = self._residual_stream(idx, attention_mask, cache)
        return self.ln_f(last)

    def layer_states(
        self, idx: Tensor, attention_mask: Tensor | None = None, count: int | None = None
    ) -> list[Tensor]:
        """The residual stream (B, T, n_embd) after the embedding and after each block, the last one
        through the final LayerNorm (so it equals :meth:`hidden_states`): ``n_layer + 1`` tensors.
        Lower layers keep more of each token's identity, upper ones more of its context.

        ``count`` < ``n_layer + 1`` returns only the first ``count`` states and runs only the blocks
        they need (no final LayerNorm then)."""
        total = self.config.n_layer + 1
        count = total if count is None else count
        if not 1 <= count <= total:
            raise InputError(f"count={count} layer states asked for; this decoder has 1 to {total}")
        states = list(itertools.islice(self._residual_stream(idx, attention_mask, None), count))
        if count == total:
            states[-1] = self.ln_f(states[-1])
        return states

    def _residual_stream(
        self, idx: Tensor, attention_mask: Tensor | None, cache: KVCache | None
    ) -> Iterator[Tensor]:
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise InputError(
                f"sequence of {start + T} tokens exceeds the context of {self.config.block_size}; "
                "crop the input (or slide the window) to block_size tokens"
            )
        pad_mask = attention_mask
        if cache is None and _no_padding(attention_mask):
            pad_mask = None  # the mask-free causal path (fused attention, no (B, 1, T, S) mask built)
        if cache is not None:
            if attention_mask is not None:
                cache.mask[:, start : start + T] = attention_mask
                cache.padded = True
            pad_mask = cache.mask[:, : start + T] if cache.padded else None
        attn_mask = self._attention_mask(T, start, pad_mask)
        cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]
        x = self.drop(self.wte(idx))  # (B, T, C)
        yield x
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, attn_mask, cache, i)
            yield x
        if cache is not None:
            cache.length += T

    @torch.no_grad()
    def attention_maps(self, idx: Tensor, attention_mask: Tensor | None = None) -> list[Tensor]:
        """Attention weights (B, n_head, T, T) of every layer for ``idx``: row t is how much
        position t attends to each earlier position (zero above the diagonal: the causal mask).

        Computed explicitly for this call only; ordinary forwards keep the fused kernel.
        """
        layers = [block.attn for block in self.blocks]
        try:
            for attn in layers:
                attn.keep_weights = True
            self.hidden_states(idx, attention_mask)
            return [attn.weights for attn in layers]
        finally:
            for attn in layers:
                attn.keep_weights, attn.weights = False, None

    def forward(
        self, idx: Tensor, attention_mask: Tensor | None = None, cache: KVCache | None = None
    ) -> Tensor:
        """Next-token logits (B, T, vocab_size) for token ids ``idx`` (B, T)."""
        return self.lm_head(self.hidden_states(idx, attention_mask, cache))
