"""The embedding head (:class:`EmbeddingHead`) and its folder format: a small module over a frozen
backbone's layer states that turns a review into one vector saying what it is about.

The head reads every layer's states, side by side or mixed with learned weights (ELMo's scalar mix), maps
each token through a small MLP and pools: with learned attention (a token's weight is learned, so names
and rare words can count more than "the movie"), or into a sparse vector of learned token weights over
the vocabulary.
:class:`~imdb_transformer.models.adapter.EmbeddingAdapter` trains it.

An adapter is saved as a folder: ``adapter.safetensors`` and ``adapter.json`` (its settings and the
fingerprint of the backbone it was trained on); no pickle. Loading checks the record's fields and the
weights' shapes before anything is built.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from imdb_transformer.artifacts import (
    atomic_path,
    check_shapes,
    read_artifact,
    read_folder_record,
    safetensors_shapes,
    typed_record,
)
from imdb_transformer.core.backbone import Backbone
from imdb_transformer.core.lexical import pair_buckets
from imdb_transformer.core.pooling import join_windows
from imdb_transformer.errors import InputError

AdapterPooling = Literal["sparse", "attention", "weighted_mean", "mean"]
LayerMix = Literal["scalar", "concat"]
ADAPTER_FORMAT = "imdb_transformer.adapter/1"
WEIGHTS, CONFIG = "adapter.safetensors", "adapter.json"
PAIR_BITS = 16  # 65,536 pair dimensions after the vocabulary's: a row's dense vector stays small
# expansion logits: EXPANSION_SCALE * cosine(query, token embedding) + bias; a random query's cosines have a
# spread of 1/sqrt(n_embd) (0.06 at 256), so at the start about 5% of the entries are above zero
EXPANSION_SCALE, EXPANSION_BIAS = 10.0, -1.0


class AdapterError(InputError):
    """An adapter folder that is missing, damaged, or trained on another backbone."""


@dataclass
class HeadConfig:
    """The shape of an :class:`EmbeddingHead`.

    Args:
        n_states: Layer states it reads: the embedding and the first ``n_states - 1`` blocks (at most
            the backbone's ``n_layer + 1``; fewer is faster, since the blocks above are never run).
        n_embd: Width of the backbone.
        dim: Width of the output vectors of the dense poolings.
        pooling: ``sparse`` (a learned weight for each token of the review, one dimension per
            vocabulary entry: uniCOIL / SPLADE's learned sparse vectors without expansion),
            ``attention`` (learned weight per token over a dense projection), ``weighted_mean``
            (weights growing with position, as SGPT pools a causal model), or ``mean``.
        dropout: Dropout on the mixed states while training (SimCSE's noise).
        vocab_size: The backbone's vocabulary (the width of ``sparse`` vectors; None for the dense
            poolings, which do not use it).
        term_bias: ``sparse`` only: a learned weight for each vocabulary entry, added to every
            occurrence's weight from its context before the softplus: how much a token counts wherever
            it appears, the part of a term's importance BM25 takes from its IDF.
        pairs: ``sparse`` only: also a dimension for each pair of adjacent pieces, hashed into
            ``2**PAIR_BITS`` buckets after the vocabulary's (a word split into pieces matches as the word
            it is, not as its common pieces); the pair's weight comes from the state at its second piece.
        expansion: ``sparse`` only: also weigh vocabulary entries the review does not hold (SPLADE's
            expansion), read through the backbone's frozen LM head: the review's mean state, mapped by a
            small MLP, gives every entry a logit from its cosine with the entry's (tied) embedding, and
            ``log1p(relu(.))`` of it is added to the entry's weight, so a review about a "scary" film can
            match "horror".
        layer_mix: How the layer states are combined before the MLP: ``scalar`` (one learned weight per
            layer, ELMo's scalar mix: the MLP sees one state of width ``n_embd``) or ``concat`` (every
            layer's normalised state side by side: the MLP's first layer learns its own mix for each of
            its units, ``n_states`` times the inputs).
        hidden: Width of the MLP's hidden layer (default: ``n_embd``).
    """

    n_states: int
    n_embd: int
    dim: int = 256
    pooling: AdapterPooling = "attention"
    dropout: float = 0.1
    vocab_size: int | None = None
    term_bias: bool = False
    pairs: bool = False
    expansion: bool = False
    layer_mix: LayerMix = "scalar"
    hidden: int | None = None

    def __post_init__(self) -> None:  # also what loading an adapter.json checks, naming the file
        if self.pooling not in ("sparse", "attention", "weighted_mean", "mean"):
            raise InputError(
                f"unknown pooling {self.pooling!r}; expected sparse, attention, weighted_mean or mean"
            )
        sizes = ("n_states", "n_embd") if self.pooling == "sparse" else ("n_states", "n_embd", "dim")
        for name in sizes:  # sparse vectors are vocabulary-wide: dim is not used
            if getattr(self, name) < 1:
                raise InputError(f"{name}={getattr(self, name)}: it must be a positive number")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout={self.dropout}: it must be at least 0 and below 1")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise InputError(f"vocab_size={self.vocab_size}: it must be a positive number")
        if self.pooling == "sparse" and self.vocab_size is None:
            raise InputError("sparse pooling needs the backbone's vocab_size")
        if (self.term_bias or self.pairs or self.expansion) and self.pooling != "sparse":
            raise InputError(
                "term_bias, pairs and expansion weigh vocabulary entries: they need pooling='sparse'"
            )
        if self.layer_mix not in ("scalar", "concat"):
            raise InputError(f"unknown layer_mix {self.layer_mix!r}; expected scalar or concat")
        if self.hidden is not None and self.hidden < 1:
            raise InputError(f"hidden={self.hidden}: the MLP needs at least one hidden unit")

    @property
    def out_dim(self) -> int:
        """Width of the vectors the head returns."""
        if self.pooling != "sparse":
            return self.dim
        return self.vocab_size + (1 << PAIR_BITS if self.pairs else 0)


class EmbeddingHead(nn.Module):
    """Layer mix -> per-token MLP -> pooling over real tokens -> unit vector (the math, no Lightning).

    ``sparse``: the MLP gives each token a weight ``softplus(.)`` from its context, and the review's
    vector holds, for each vocabulary entry, the largest weight of its occurrences (zero for tokens the
    review lacks). Token identity is kept by construction, so names and rare words can match; what is
    learned is how much each occurrence counts.
    """

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        # scalar: softmax weights over layers; concat: the states side by side, mixed by the MLP itself
        self.mix = nn.Parameter(torch.zeros(config.n_states)) if config.layer_mix == "scalar" else None
        self.norm = nn.LayerNorm(config.n_embd, elementwise_affine=False)  # layers differ in scale
        self.drop = nn.Dropout(config.dropout)
        width = config.n_embd * (config.n_states if config.layer_mix == "concat" else 1)  # the MLP's input
        hidden = config.hidden or config.n_embd
        out = (2 if config.pairs else 1) if config.pooling == "sparse" else config.dim
        self.token = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, out))
        self.score = nn.Linear(width, 1) if config.pooling == "attention" else None
        self.term = nn.Parameter(torch.zeros(config.vocab_size)) if config.term_bias else None
        self.expand = None
        if config.expansion:  # the review's mean state -> a query into the LM head's (tied) embedding
            self.expand = nn.Sequential(
                nn.Linear(width, config.n_embd), nn.GELU(), nn.Linear(config.n_embd, config.n_embd)
            )
            self.expand_bias = nn.Parameter(torch.full((config.vocab_size,), EXPANSION_BIAS))

    def forward(
        self,
        states: list[Tensor],
        mask: Tensor,
        ids: Tensor | None = None,
        owner: Tensor | None = None,
        embedding: Tensor | None = None,
    ) -> Tensor:
        """Unit vectors (B, out_dim) from the backbone's layer states (each (B, T, C)), the mask (B, T)
        and, for ``sparse``, the token ids (B, T). With ``owner`` the rows are windows of texts (row i
        belongs to text ``owner[i]``) and each text gets one vector (one row per text) from all of its
        windows: for ``sparse`` the largest weight of each token's occurrences in the whole text, for
        the dense poolings the mean of its windows' pooled vectors. ``embedding``: the backbone's token
        embedding (V, C), which ``expansion`` reads as its LM head."""
        return self.encode(states, mask, ids, owner, embedding)[0]

    def encode(
        self,
        states: list[Tensor],
        mask: Tensor,
        ids: Tensor | None = None,
        owner: Tensor | None = None,
        embedding: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """:meth:`forward`'s unit vectors and, with ``expansion``, each text's expansion weights
        (B, vocab_size) before normalisation, which training keeps sparse with a FLOPS penalty."""
        if len(states) != self.config.n_states:
            raise InputError(f"the head reads {self.config.n_states} layer states, given {len(states)}")
        if self.mix is None:  # (B, T, n_states * C)
            x = torch.cat([self.norm(s.float()) for s in states], -1)
        else:  # (B, T, C)
            weights = self.mix.softmax(0)
            x = sum(w * self.norm(s.float()) for w, s in zip(weights, states, strict=True))
        x = self.drop(x)
        if self.config.pooling == "sparse":
            if ids is None:
                raise InputError("sparse pooling needs the token ids")
            logits = self.token(x)  # (B, T, 1 or 2): each occurrence's weight from its context
            logit = logits[..., 0]
            if self.term is not None:
                logit = logit + self.term[ids]  # and its token's own weight
            weight = F.softplus(logit) * mask  # zero on padding
            vectors = weight.new_zeros(len(ids), self.config.out_dim)
            vectors = vectors.scatter_reduce(1, ids, weight, "amax")  # each token's largest weight
            expansion = None
            if self.config.pairs:  # the pair ending at each token, from the 2nd token on
                vocab = self.config.vocab_size
                keys = pair_buckets(ids[:, :-1], ids[:, 1:], vocab, PAIR_BITS) + vocab
                both = mask[:, 1:] & mask[:, :-1]
                pair = (F.softplus(logits[:, 1:, 1]) * both).to(vectors.dtype)  # under autocast too
                vectors = vectors.scatter_reduce(1, keys, pair, "amax")
            vectors = join_windows(vectors, owner, "amax")
            if self.expand is not None:
                expansion = self._expansion(x, mask, owner, embedding)
                vectors = vectors + F.pad(expansion, (0, vectors.size(1) - expansion.size(1)))  # pairs: none
            return F.normalize(vectors, dim=-1), expansion
        if self.score is not None:
            logits = self.score(x).squeeze(-1).masked_fill(~mask, float("-inf"))
            attn = logits.softmax(-1)  # (B, T)
        else:
            attn = mask.float()
            if self.config.pooling == "weighted_mean":
                attn = attn * torch.arange(1, mask.size(1) + 1, device=mask.device)
            attn = attn / attn.sum(-1, keepdim=True).clamp(min=1e-9)
        pooled = torch.einsum("bt,btd->bd", attn, self.token(x))
        return F.normalize(join_windows(pooled, owner, "mean"), dim=-1), None

    def _expansion(self, x: Tensor, mask: Tensor, owner: Tensor | None, embedding: Tensor | None) -> Tensor:
        """Each text's expansion weights (texts, vocab_size): its windows' mean mixed state, through the
        MLP, scored by cosine against every token's embedding (the frozen LM head), ``log1p(relu(.))``."""
        if embedding is None:
            raise InputError("an expansion head needs the backbone's token embedding (its LM head)")
        real = mask.unsqueeze(-1).to(x.dtype)
        totals = join_windows(torch.cat([(x * real).sum(1), real.sum(1)], -1), owner, "sum")  # states, count
        mean = totals[:, :-1] / totals[:, -1:]
        query = F.normalize(self.expand(mean), dim=-1)
        logits = EXPANSION_SCALE * query @ F.normalize(embedding.to(query.dtype), dim=-1).T + self.expand_bias
        return torch.log1p(F.relu(logits))


def save_adapter(
    head: EmbeddingHead, backbone_fingerprint: str, backbone: str | None, folder: str | os.PathLike
) -> Path:
    """Write ``head`` to ``folder`` (replaced atomically), with the fingerprint of its backbone and the
    backbone's path relative to the folder."""
    where = os.path.relpath(Path(backbone).resolve(), Path(folder).resolve()) if backbone else None
    meta = {
        "format": ADAPTER_FORMAT,
        "head": asdict(head.config),
        "backbone_fingerprint": backbone_fingerprint,
        "backbone": where,
    }
    with atomic_path(folder, is_dir=True, overwrite=True) as tmp:
        save_model(head, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2))
    return Path(folder)


def load_adapter(folder: str | os.PathLike, backbone: Backbone) -> EmbeddingHead:
    """Load the head saved in ``folder`` for ``backbone``; refused, naming both fingerprints, if it was
    trained on another backbone."""
    folder = Path(folder).expanduser()
    remedy = "the adapter is damaged: export it again from its run's checkpoint"
    meta = read_folder_record(
        folder, (CONFIG, WEIGHTS), CONFIG, error=AdapterError, kind="an adapter folder", remedy=remedy,
        fix="pass the adapter/ folder of an `imdb-transformer fit --config configs/embed.yaml` run",
    )  # fmt: skip
    if meta.get("format") != ADAPTER_FORMAT:
        found = meta.get("format")
        raise AdapterError(f"{folder / CONFIG} has format {found!r:.60}, expected {ADAPTER_FORMAT!r}")
    if meta.get("backbone_fingerprint") != backbone.fingerprint:
        raise AdapterError(
            f"the adapter {folder} was trained on backbone {str(meta.get('backbone_fingerprint'))[:60]}, not "
            f"on the one given ({backbone.fingerprint}); use the backbone it was trained on, or train an "
            "adapter for this one"
        )
    config = typed_record(HeadConfig, meta.get("head"), f"{folder / CONFIG}: head", AdapterError, ())
    c = backbone.decoder.config
    if (
        config.n_embd != c.n_embd
        or config.n_states > c.n_layer + 1
        or config.vocab_size not in (None, c.vocab_size)
    ):
        raise AdapterError(
            f"{folder / CONFIG}: a head over {config.n_states} layer states of width {config.n_embd} does "
            f"not fit the backbone ({c.n_layer + 1} states of width {c.n_embd}); {remedy}"
        )
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in EmbeddingHead(config).state_dict().items()}
    found = read_artifact(folder / WEIGHTS, safetensors_shapes, AdapterError, remedy)
    check_shapes(expected, found, str(folder / WEIGHTS), AdapterError, remedy)
    head = EmbeddingHead(config)
    read_artifact(folder / WEIGHTS, lambda p: load_model(head, str(p)), AdapterError, remedy)
    if not all(bool(torch.isfinite(t).all()) for t in head.state_dict().values() if t.is_floating_point()):
        raise AdapterError(f"{folder / WEIGHTS} holds NaN or infinite weights; {remedy}")
    return head.eval()
