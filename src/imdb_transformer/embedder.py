"""DocumentEmbedder: one L2-normalised vector per review from the frozen pretrained backbone, pooled
directly or through a trained :class:`~imdb_transformer.core.head.EmbeddingHead`."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from tqdm.auto import tqdm

from imdb_transformer.artifacts import weights_fingerprint
from imdb_transformer.core.backbone import Backbone, load_backbone, tokenizer_fingerprint
from imdb_transformer.core.head import EmbeddingHead, load_adapter
from imdb_transformer.core.pooling import Pooling, join_windows, pool, pooled_size
from imdb_transformer.errors import InputError
from imdb_transformer.text.batching import collate_for, length_batches
from imdb_transformer.text.imdb import clean_text
from imdb_transformer.text.texts import is_blank


class DocumentEmbedder(LightningModule):
    """Frozen backbone + pooling over real tokens (or a trained adapter head) + L2 normalisation, so a
    dot product is a cosine. :meth:`embed` embeds texts in a loop on the embedder's device (a query, a
    few texts); ``Trainer.predict`` runs :meth:`predict_step` over a collection on any devices (see
    :func:`~imdb_transformer.predict.predict`).

    A review longer than the context is read whole, in consecutive windows of the context joined into
    one vector (see :meth:`EmbeddingHead.forward <imdb_transformer.core.head.EmbeddingHead.forward>`;
    without a head, the mean of the windows' pooled states), so a name in its middle is found too.
    ``windows=False`` keeps its head and tail instead (one forward pass per review).

    Args:
        backbone: The pretrained decoder and its tokenizer (see :func:`load_backbone`).
        pooling: Without a head: ``mean`` over real tokens (default), ``max``, ``last`` or ``concat``.
        max_length: Tokens per review, EOS marks included; default: the backbone's context.
        head: A trained adapter head (see :func:`~imdb_transformer.core.head.load_adapter`): it
            reads every layer's states and replaces ``pooling``.
        windows: Read a text longer than the context in all of its windows (else head and tail).
    """

    def __init__(
        self,
        backbone: Backbone,
        pooling: Pooling = "mean",
        max_length: int | None = None,
        head: EmbeddingHead | None = None,
        windows: bool = True,
    ) -> None:
        super().__init__()
        self.decoder = backbone.decoder.eval().requires_grad_(False)
        self.tokenizer = backbone.tokenizer
        self.head = head.eval().requires_grad_(False) if head is not None else None
        self.pooling = pooling if head is None else "adapter"
        self.max_length = min(max_length or self.decoder.config.block_size, self.decoder.config.block_size)
        self.windows = windows

    @property
    def fingerprint(self) -> str:
        """Identifies the weights (the backbone's and the head's), tokenizer, pooling, length and reading:
        vectors from different embedders don't mix."""
        states = [self.decoder.state_dict()] + ([self.head.state_dict()] if self.head is not None else [])
        token = tokenizer_fingerprint(self.tokenizer)
        reading = "-windows" if self.windows else ""
        return f"{weights_fingerprint(*states)}-{token}-{self.pooling}-{self.max_length}{reading}"

    @property
    def settings(self) -> dict[str, Any]:
        """What an index records of the embedder that made its vectors: its fingerprint and how it reads
        (so a query is embedded as the index's texts were)."""
        return {
            "embedder": self.fingerprint,
            "pooling": self.pooling,
            "max_length": self.max_length,
            "windows": self.windows,
        }

    @torch.inference_mode()
    def forward(self, ids: Tensor, mask: Tensor, owner: Tensor | None = None) -> Tensor:
        """Unit vectors (B, C) for padded token ids (B, T) with their mask; with ``owner`` (see
        :func:`~imdb_transformer.text.batching.collate_windows`) the rows are windows, and a text's
        windows give it one vector."""
        if self.head is not None:
            states = self.decoder.layer_states(ids, mask, self.head.config.n_states)
            return self.head(states, mask, ids, owner, self.decoder.wte.weight)
        features = pool(self.decoder.hidden_states(ids, attention_mask=mask), mask, self.pooling)
        return nn.functional.normalize(join_windows(features.float(), owner, "mean"), dim=-1)

    @property
    def dim(self) -> int:
        """Width of the vectors."""
        if self.head is not None:
            return self.head.config.out_dim
        return pooled_size(self.decoder.config.n_embd, self.pooling)

    @property
    def sparse(self) -> bool:
        """Whether the vectors are sparse (one dimension per vocabulary entry, few of them non-zero)."""
        return self.head is not None and self.head.config.pooling == "sparse"

    def embed(self, texts: list[str], batch_size: int = 64, progress: bool = True) -> Tensor | sp.csr_matrix:
        """Unit vectors (N, C) for raw review texts, computed in batches of similar length: a tensor, or
        for a sparse head a ``scipy.sparse`` CSR matrix (float32)."""
        if any(is_blank(t) for t in texts):
            raise InputError("cannot embed an empty text: give at least one word")
        ids = self.encode(texts)
        batches = length_batches(ids, batch_size, self.max_length)  # little padding per batch
        out = torch.empty(len(ids), self.dim) if not self.sparse else []
        for chunk in tqdm(batches, desc="Embedding", unit="batch", disable=not progress or len(batches) < 2):
            vectors = self.embed_ids([ids[i] for i in chunk])
            if self.sparse:
                out.append(vectors)
            else:
                out[chunk] = vectors
        if self.sparse:
            stacked = out[0] if len(out) == 1 else sp.vstack(out, format="csr")
            order = np.array([i for chunk in batches for i in chunk])
            if (np.diff(order) > 0).all():  # already in the texts' order (a single query, for one)
                return stacked
            return stacked[np.argsort(order)]  # back in the texts' order
        return out

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of raw texts, cleaned as the reviews the backbone learned from."""
        return self.tokenizer.encode([clean_text(t) for t in texts])

    def embed_ids(self, ids: list[list[int]]) -> Tensor | sp.csr_matrix:
        """Unit vectors of one batch of token ids (see :meth:`encode`), on the CPU: a tensor (B, C), or
        for a sparse head a CSR matrix."""
        collate = collate_for(self.windows)
        batch = collate([{"ids": i} for i in ids], self.max_length, self.decoder.config.reverse)
        device = self.decoder.wte.weight.device
        owner = batch["owner"].to(device) if "owner" in batch else None
        vectors = self(batch["ids"].to(device), batch["mask"].to(device), owner).float().cpu()
        return _csr(vectors) if self.sparse else vectors

    def predict_step(self, batch: dict) -> dict:
        """The vectors of a batch of :class:`~imdb_transformer.predict.PredictTexts`, with its text
        positions."""
        return {"index": batch["index"].cpu(), "vectors": self.embed_ids(batch["ids"])}


def _csr(vectors: Tensor) -> sp.csr_matrix:
    """A CSR matrix of the non-zeros of ``vectors`` (B, C), built from them alone (``nonzero`` lists
    them row by row, so they are already in CSR order)."""
    rows, cols = vectors.nonzero(as_tuple=True)
    indptr = torch.zeros(len(vectors) + 1, dtype=torch.long)
    indptr[1:] = torch.bincount(rows, minlength=len(vectors)).cumsum(0)
    values = vectors[rows, cols].numpy()
    return sp.csr_matrix((values, cols.numpy(), indptr.numpy()), shape=tuple(vectors.shape))


def load_embedder(
    backbone: str | os.PathLike,
    adapter: str | os.PathLike | None = None,
    pooling: Pooling = "mean",
    max_length: int | None = None,
    windows: bool = True,
) -> DocumentEmbedder:
    """The embedder of a backbone (an export folder or a checkpoint) and, optionally, an adapter folder
    trained on it (then ``pooling`` does not apply: the head pools); ``windows`` as in
    :class:`DocumentEmbedder`."""
    loaded = load_backbone(backbone)
    head = load_adapter(adapter, loaded) if adapter is not None else None
    return DocumentEmbedder(
        loaded, pooling=pooling if head is None else "mean", max_length=max_length, head=head, windows=windows
    )
