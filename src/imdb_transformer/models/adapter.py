"""EmbeddingAdapter: a small head over the frozen backbone, trained so that a vector says what a review
is about.

Mean-pooled states of a causal LM encode a review's length and tone more than its subject. The head
reads every layer's states (lower layers keep more of each token's identity), side by side or mixed with
learned weights (ELMo's scalar mix), maps each token through a small MLP and pools: into learned sparse
token weights over the vocabulary, or with learned attention (a token's weight is learned, so names and
rare words can count more than "the movie"). It is trained with InfoNCE on in-batch negatives: two
random crops of the same review are a positive pair (Contriever), every other review in the batch a
negative; dropout on the head's input is the noise that unsupervised SimCSE relies on. Only the head
trains; the backbone's weights never change.

The head and its folder format live in :mod:`imdb_transformer.core.head`; this module trains it.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from imdb_transformer.core.backbone import add_to_checkpoint, require_backbone
from imdb_transformer.core.head import AdapterPooling, EmbeddingHead, HeadConfig, LayerMix, save_adapter
from imdb_transformer.errors import InputError
from imdb_transformer.models.export import export_best, part
from imdb_transformer.models.optim import adamw_warmup_cosine, decay_groups


def info_nce(
    a: Tensor, b: Tensor, temperature: float, prior: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Symmetric InfoNCE over a batch of positive pairs (row i of ``a`` and of ``b``), every other row a
    negative. ``prior`` (2, B, B): fixed logits added to the ``a``-to-``b`` and the ``b``-to-``a``
    rankings, so the vectors learn what the prior's ranker misses. Returns the loss and two in-batch
    top-1 shares (rows whose positive scores highest): of the vectors alone, and of the vectors with the
    prior (the same share without one)."""
    logits = a @ b.T / temperature  # (B, B)
    target = torch.arange(len(a), device=a.device)
    ab, ba = (logits, logits.T) if prior is None else (logits + prior[0], logits.T + prior[1])
    loss = (F.cross_entropy(ab, target) + F.cross_entropy(ba, target)) / 2
    accuracy = (logits.argmax(-1) == target).float().mean()
    return loss, accuracy, (ab.argmax(-1) == target).float().mean() if prior is not None else accuracy


def flops_penalty(weights: Tensor) -> Tensor:
    """SPLADE's FLOPS regulariser of a batch of non-negative weights (B, V): the sum over entries of
    their squared mean weight, a smooth stand-in for the number of multiplications a query costs."""
    return weights.mean(0).square().sum()


class EmbeddingAdapter(L.LightningModule):
    """Trains an :class:`EmbeddingHead` over a frozen pretrained backbone with contrastive crops.

    The backbone runs without gradients in chunks of ``backbone_chunk`` crops, so the batch of in-batch
    negatives can be as large as memory for the head's inputs allows, not as large as a backward pass
    through the backbone would: on a CPU, batches of 256 reviews (512 crops); on a GPU, raise
    ``data.batch_size`` to 1,024 or more.

    Args:
        backbone: A pretraining run's ``backbone/`` export or one of its checkpoints (required).
        dim: Width of the output vectors of the dense poolings.
        pooling: ``sparse`` (learned token weights), ``attention``, ``weighted_mean`` or ``mean``
            (see :class:`HeadConfig`).
        layers: Blocks of the backbone the head reads (default: all); fewer embed faster.
        dropout: Dropout on the head's input while training.
        temperature: Softmax temperature of InfoNCE.
        learning_rate: Peak AdamW learning rate of the head.
        weight_decay: AdamW weight decay (matrices only).
        warmup_steps: Linear warmup steps before cosine decay.
        backbone_chunk: Crops per forward pass of the frozen backbone.
        term_bias: ``sparse`` only: also learn a weight per vocabulary entry (see :class:`HeadConfig`).
        term_learning_rate: Peak learning rate of those weights: one per token, each seen only in the
            batches holding its token, so they move faster than the MLP's.
        pairs: ``sparse`` only: also weigh pairs of adjacent pieces (see :class:`HeadConfig`).
        expansion: ``sparse`` only: also weigh entries the review lacks, through the frozen LM head
            (SPLADE's expansion, see :class:`HeadConfig`).
        expansion_penalty: Weight of SPLADE's FLOPS penalty on the expansion weights (the sum over
            the vocabulary of each entry's squared mean weight in the batch): higher keeps fewer
            expansion terms per review, so the index stays sparse and queries fast.
        layer_mix: ``scalar`` (one learned weight per layer) or ``concat`` (the layers side by side
            into the MLP, which learns a mix per hidden unit; see :class:`HeadConfig`).
        hidden: Width of the head's MLP (default: the backbone's width).
    """

    def __init__(
        self,
        backbone: str | None = None,
        dim: int = 256,
        pooling: AdapterPooling = "sparse",
        layers: int | None = None,
        dropout: float = 0.1,
        temperature: float = 0.05,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 50,
        backbone_chunk: int = 64,
        term_bias: bool = False,
        term_learning_rate: float = 3e-2,
        pairs: bool = False,
        expansion: bool = False,
        expansion_penalty: float = 1e-3,
        layer_mix: LayerMix = "scalar",
        hidden: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        loaded = require_backbone(backbone, "EmbeddingAdapter")
        self.backbone, self.tokenizer = loaded.decoder.requires_grad_(False), loaded.tokenizer
        self.backbone_fingerprint = loaded.fingerprint
        c = self.backbone.config
        if layers is not None and not 1 <= layers <= c.n_layer:
            raise InputError(f"layers={layers}: the backbone has 1 to {c.n_layer} blocks to read")
        states = (layers if layers is not None else c.n_layer) + 1
        config = HeadConfig(
            states,
            c.n_embd,
            dim,
            pooling,
            dropout,
            c.vocab_size,
            term_bias=term_bias,
            pairs=pairs,
            expansion=expansion,
            layer_mix=layer_mix,
            hidden=hidden,
        )
        self.head = EmbeddingHead(config)
        self.train()

    def train(self, mode: bool = True) -> EmbeddingAdapter:
        super().train(mode)
        self.backbone.eval()  # frozen: no dropout inside it, the same states every time
        return self

    @torch.no_grad()
    def layer_states(self, ids: Tensor, mask: Tensor) -> list[Tensor]:
        """The frozen backbone's layer states, computed in chunks without gradients."""
        n, count = self.hparams.backbone_chunk, self.head.config.n_states
        chunks = [
            self.backbone.layer_states(ids[i : i + n], mask[i : i + n], count) for i in range(0, len(ids), n)
        ]
        return [torch.cat(layer) for layer in zip(*chunks, strict=True)]

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Unit vectors (B, out_dim) of padded token ids."""
        return self.encode(ids, mask)[0]

    def encode(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor | None]:
        """Unit vectors (B, out_dim) of padded token ids and, with ``expansion``, their expansion
        weights (see :meth:`EmbeddingHead.encode`)."""
        return self.head.encode(self.layer_states(ids, mask), mask, ids, embedding=self.backbone.wte.weight)

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        a, a_expansion = self.encode(batch["a_ids"], batch["a_mask"])
        b, b_expansion = self.encode(batch["b_ids"], batch["b_mask"])
        loss, accuracy, hybrid = info_nce(a, b, self.hparams.temperature, batch.get("prior"))
        size = len(a)
        if "prior" in batch:  # the vectors and BM25 together, as the loss ranks
            self.log(f"{stage}/acc_hybrid", hybrid, prog_bar=stage == "val", on_epoch=True, batch_size=size)
        if a_expansion is not None:
            flops = (flops_penalty(a_expansion) + flops_penalty(b_expansion)) / 2
            loss = loss + self.hparams.expansion_penalty * flops
            terms = torch.cat([a_expansion, b_expansion]).gt(0).sum(1).float().mean()
            self.log(
                f"{stage}/expansion_terms", terms, on_step=stage == "train", on_epoch=True, batch_size=size
            )
        self.log(
            f"{stage}/loss", loss, prog_bar=True, on_step=stage == "train", on_epoch=True, batch_size=size
        )
        self.log(f"{stage}/acc", accuracy, prog_bar=stage == "val", on_epoch=True, batch_size=size)
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        term = self.head.term
        groups = decay_groups([p for p in self.head.parameters() if p is not term], hp.weight_decay)
        if term is not None:
            groups.append({"params": [term], "weight_decay": 0.0, "lr": hp.term_learning_rate})
        return adamw_warmup_cosine(self.trainer, groups, hp.warmup_steps, 0.0, lr=hp.learning_rate)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        add_to_checkpoint(checkpoint, self.backbone.config, self.tokenizer)

    def on_fit_end(self) -> None:
        """Export the best head (by ``val/loss``) to ``adapter/`` in the run folder."""

        def save(state: dict | None, folder: Path) -> Path:
            head = self.head
            if state is not None:
                head = EmbeddingHead(self.head.config)
                head.load_state_dict(part(state, "head."))
            return save_adapter(head, self.backbone_fingerprint, self.hparams.backbone, folder)

        export_best(self, "adapter", save)
