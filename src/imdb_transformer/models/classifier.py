"""SentimentClassifier: a pretrained backbone, pooled, and a small head that predicts the label."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryF1Score

from imdb_transformer.core.backbone import (
    BackboneError,
    BackboneSpec,
    add_to_checkpoint,
    require_backbone,
    spec_from_checkpoint,
)
from imdb_transformer.core.lexical import LexicalHead
from imdb_transformer.core.pooling import Pooling, join_windows, pool, pooled_size
from imdb_transformer.errors import InputError
from imdb_transformer.models.optim import Schedule, adamw_warmup_cosine

Lexical = Literal["off", "bag", "context"]


class SentimentClassifier(L.LightningModule):
    """Positive or negative from a review, on top of a pretrained :class:`CausalDecoder`.

    With ``freeze`` (the default) the backbone is a fixed feature extractor: it runs in eval mode
    without gradients, and each review's pooled features are computed once and reused in later
    epochs, so only the head trains. With ``freeze false`` the whole model is fine-tuned, the
    backbone with smaller learning rates that shrink layer by layer towards the embedding
    (ULMFiT's discriminative fine-tuning): lower layers hold general language knowledge to keep.
    ULMFiT's other two devices are options: ``unfreeze gradual`` (the first epoch trains the head
    alone, each later one unfreezes one more block from the top) and ``schedule stlr`` (slanted
    triangular learning rates).

    Features can come from more than the last layer: ``layers k`` pools each of the top ``k`` layer
    states; ``layer_mix concat`` puts them side by side, ``scalar`` learns a softmax-weighted sum
    (ELMo's scalar mix). Frozen, they are still computed once per review and reused every epoch.

    Beside the pooled features, ``lexical`` adds word votes (:class:`LexicalHead`): a linear model over
    a bag of the review's pieces (and pairs of pieces) in the backbone's vocabulary, each occurrence
    weighted by its context (``context``: from the backbone's last-layer state at that token) or
    counted 1 (``bag``: no backbone at all with ``pooled false``). The logits of the two heads add up.
    Frozen, the token states too are computed once per review (kept in bf16) and the backbone runs
    once per review.

    Args:
        backbone: A pretraining run's ``backbone/`` export, or a checkpoint holding a backbone (required).
        freeze: Keep the backbone fixed and train only the head.
        pooling: ``concat`` (mean, max and last token side by side, as ULMFiT does), ``mean``, ``max``
            or ``last``.
        dropout: Dropout before the head's linear layer.
        learning_rate: Peak learning rate of the head.
        backbone_lr: Peak learning rate of the top block when fine-tuning (``freeze false``).
        layer_lr_decay: Each block below the top gets this factor of the one above (ULMFiT: 1/2.6 for
            its 3 layers; for 12 blocks 0.8 keeps the lower ones learning).
        backbone_dropout: When fine-tuning, keep the backbone's own dropout on (off by default: the
            pretrained weights are adjusted gently, without noise in their activations).
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warmup steps before cosine decay.
        layers: Pool each of the top ``layers`` layer states (1: the last layer only).
        layer_mix: How the layers' features combine: ``concat`` or ``scalar`` (learned weights).
        unfreeze: When fine-tuning: ``all`` blocks train from the start, or ``gradual`` (one more
            block each epoch, top first; the embedding last).
        schedule: ``cosine`` (warmup, then cosine decay) or ``stlr`` (ULMFiT's slanted triangle).
        pooled: Classify from the pooled backbone features (``false``: from the word votes alone).
        lexical: Word votes beside the pooled features: ``off``, ``bag`` (each occurrence counts 1) or
            ``context`` (weighted by the backbone's state at each token).
        pairs: The word votes also count pairs of adjacent pieces (hashed), as a bag of bigrams does.
    """

    def __init__(
        self,
        backbone: str | None = None,
        freeze: bool = True,
        pooling: Pooling = "concat",
        dropout: float = 0.1,
        learning_rate: float = 2e-3,
        backbone_lr: float = 1e-4,
        layer_lr_decay: float = 1 / 2.6,
        backbone_dropout: bool = False,
        weight_decay: float = 0.01,
        warmup_steps: int = 50,
        layers: int = 1,
        layer_mix: Literal["concat", "scalar"] = "concat",
        unfreeze: Literal["all", "gradual"] = "all",
        schedule: Schedule = "cosine",
        pooled: bool = True,
        lexical: Lexical = "off",
        pairs: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        loaded = require_backbone(backbone, "SentimentClassifier")
        self.backbone, self.tokenizer = loaded.decoder, loaded.tokenizer
        self.pooling = pooling
        n_states = self.backbone.config.n_layer + 1
        if not 1 <= layers <= n_states:
            raise InputError(f"layers={layers}: the backbone has 1 to {n_states} layer states to pool")
        if layer_mix not in ("concat", "scalar"):
            raise InputError(f"unknown layer_mix {layer_mix!r}; expected concat or scalar")
        features = pooled_size(self.backbone.config.n_embd, pooling)
        if layers > 1 and layer_mix == "concat":
            features *= layers
        self.mix = nn.Parameter(torch.zeros(layers)) if layers > 1 and layer_mix == "scalar" else None
        if lexical not in ("off", "bag", "context"):
            raise InputError(f"unknown lexical {lexical!r}; expected off, bag or context")
        if not pooled and lexical == "off":
            raise InputError("pooled false needs word votes: add --model.lexical context (or bag)")
        if not pooled and layers > 1:
            raise InputError("layers > 1 mixes pooled features: with pooled false, leave layers at 1")
        if not pooled and lexical == "bag" and not freeze:
            raise InputError(
                "pooled false with lexical bag never runs the backbone, so there is nothing to fine-tune: "
                "keep freeze true, or use lexical context"
            )
        self.head = (
            nn.Sequential(nn.LayerNorm(features), nn.Dropout(dropout), nn.Linear(features, 1))
            if pooled
            else None
        )
        self.lexical = None
        if lexical != "off":
            width = self.backbone.config.n_embd if lexical == "context" else None
            self.lexical = LexicalHead(self.backbone.config.vocab_size, width, pairs, dropout)
        if freeze or unfreeze == "gradual":
            self.backbone.requires_grad_(False)  # gradual: blocks are unfrozen epoch by epoch
        self._features: dict[str, dict[int, Features]] = {"train": {}, "val": {}, "test": {}, "predict": {}}
        metrics = MetricCollection({"acc": BinaryAccuracy(), "f1": BinaryF1Score(), "auroc": BinaryAUROC()})
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.train()  # Lightning keeps each module's mode at the start of fit: set them here

    def train(self, mode: bool = True) -> SentimentClassifier:
        super().train(mode)
        if self.hparams.freeze or not self.hparams.backbone_dropout:
            # frozen: a fixed feature extractor, the same features every epoch;
            # fine-tuned: no dropout inside the backbone unless backbone_dropout
            self.backbone.eval()
        return self

    @property
    def runs_backbone(self) -> bool:
        """Whether classifying needs the backbone's states (not for a plain bag of pieces alone)."""
        return self.head is not None or (self.lexical is not None and self.lexical.uses_states)

    def features(
        self,
        ids: Tensor,
        mask: Tensor,
        owner: Tensor | None = None,
        layer_states: list[Tensor] | None = None,
    ) -> Features:
        """What the heads read, from one pass of the backbone over padded reviews: the pooled features
        (B, F), or (B, layers, F) from several layers, and for word votes the token ids with their
        states. With ``owner`` the rows are windows of reviews (row i belongs to review ``owner[i]``):
        a review's pooled features are the mean of its windows', its bag the sum.

        ``layer_states``: the backbone's :meth:`~CausalDecoder.layer_states` for ``ids``, already
        computed (classifiers that share one frozen backbone run it once for all of them)."""
        pooled = states = None
        if self.runs_backbone:
            if layer_states is not None:
                top, layers = layer_states[-1], layer_states[-self.hparams.layers :]
            elif self.hparams.layers == 1:
                top = self.backbone.hidden_states(ids, attention_mask=mask)
                layers = [top]
            else:
                layers = self.backbone.layer_states(ids, mask)[-self.hparams.layers :]
                top = layers[-1]
            if self.head is not None:
                pooled = [pool(state, mask, self.pooling) for state in layers]
                pooled = pooled[0] if len(pooled) == 1 else torch.stack(pooled, dim=1)
                pooled = join_windows(pooled, owner, "mean")  # a review's windows averaged
            if self.lexical is not None and self.lexical.uses_states:
                states = top
        if self.lexical is None:
            return Features(pooled)
        return Features(pooled, ids, mask, states, owner)

    def _batch_features(self, batch: dict[str, Tensor]) -> Features:
        return self.features(batch["ids"], batch["mask"], batch.get("owner"))

    def classify(self, features: Features) -> Tensor:
        """Logits (B,) from :meth:`features`: the pooled head's (its layers mixed first) plus the word
        votes'."""
        logits = 0
        if self.head is not None:
            pooled = features.pooled
            if pooled.dim() == 3:
                if self.mix is not None:
                    pooled = torch.einsum("l,blf->bf", self.mix.softmax(0), pooled)
                else:
                    pooled = pooled.flatten(1)
            logits = self.head(pooled).squeeze(-1)
        if self.lexical is not None:
            logits = logits + self.lexical(features.ids, features.mask, features.states, features.owner)
        return logits

    def _cached_features(self, batch: dict[str, Tensor], stage: str) -> Features:
        """Frozen features, computed on first sight of each review and reused after (token states in
        bf16, on the host)."""
        cache = self._features[stage]
        idx = batch["idx"].tolist()
        if all(i in cache for i in idx):
            return Features.join([cache[i] for i in idx], self.device)
        with torch.no_grad():
            reviews = self._batch_features(batch).split()
        for i, review in zip(idx, reviews, strict=True):
            cache[i] = review
        return Features.join(reviews, self.device)  # as later epochs will see them

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Logits (B,) of the positive class."""
        return self.classify(self.features(ids, mask))

    @torch.no_grad()
    def explain(
        self,
        ids: Tensor,
        mask: Tensor,
        owner: Tensor | None = None,
        layer_states: list[Tensor] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Logits (one per review) and, with word votes, each token's share of its review's logit
        (rows, T): what drove the verdict, word by word (the pooled head's share is the rest).
        ``owner`` and ``layer_states`` as in :meth:`features`."""
        features = self.features(ids, mask, owner, layer_states)
        logits = self.classify(features)
        if self.lexical is None:
            return logits, None
        return logits, self.lexical.contributions(ids, mask, features.states, owner)

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        if self.hparams.freeze:
            logits = self.classify(self._cached_features(batch, stage))
        else:
            logits = self.classify(self._batch_features(batch))
        labels = batch["label"]
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(torch.sigmoid(logits.float()), labels)
        batch_size = labels.size(0)
        self.log(
            f"{stage}/loss",
            loss,
            prog_bar=stage != "test",
            on_step=stage == "train",
            on_epoch=True,
            batch_size=batch_size,
        )
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val", batch_size=batch_size)
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Probability that each review is positive."""
        return torch.sigmoid(self.classify(self._batch_features(batch)))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        add_to_checkpoint(checkpoint, self.backbone.config, self.tokenizer)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse weights trained on top of another backbone (shape or tokenizer) with a clear message,
        before ``load_state_dict`` fails on a tensor's size or, worse, silently fits."""
        saved = spec_from_checkpoint(checkpoint, "the checkpoint").signature
        mine = BackboneSpec(self.backbone.config, self.tokenizer).signature
        if saved != mine:
            raise BackboneError(
                f"this classifier was trained on another backbone ({saved}) than the one given ({mine}); "
                "pass the classifier checkpoint itself as --model.backbone (as "
                "`imdb-transformer test --ckpt_path` does), or the backbone it was trained on"
            )

    def backbone_layers(self) -> list[list[nn.Parameter]]:
        """The backbone's parameters by depth, top first: the final norm, each block, the embedding."""
        b = self.backbone
        return [
            list(b.ln_f.parameters()),
            *[list(block.parameters()) for block in reversed(b.blocks)],
            [b.wte.weight],
        ]

    def on_train_epoch_start(self) -> None:
        """Gradual unfreezing: epoch 0 trains the head alone, epoch e also the top e blocks (the final
        norm goes with the top block, the embedding after the bottom one)."""
        if self.hparams.freeze or self.hparams.unfreeze != "gradual":
            return
        layers = self.backbone_layers()
        groups = [layers[0] + layers[1], *layers[2:]]  # the final norm goes with the top block
        for depth, params in enumerate(groups):
            for p in params:
                p.requires_grad_(depth < self.current_epoch)

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        heads = [m for m in (self.head, self.lexical) if m is not None]
        head = [p for m in heads for p in m.parameters()] + ([self.mix] if self.mix is not None else [])
        groups = [{"params": head, "lr": hp.learning_rate}]
        if not hp.freeze:
            for depth, params in enumerate(self.backbone_layers()):  # top (ln_f) first
                groups.append(
                    {"params": params, "lr": hp.backbone_lr * hp.layer_lr_decay ** max(0, depth - 1)}
                )
        return adamw_warmup_cosine(
            self.trainer, groups, hp.warmup_steps, 0.0, hp.schedule, weight_decay=hp.weight_decay
        )


@dataclass
class Features:
    """What a classifier's heads read for a batch: pooled backbone features (B, ...) and, for word
    votes, token rows (R, T) with their mask, states (R, T, C) and, when rows are windows or cached
    pieces of reviews, the review each row belongs to (``owner``, R)."""

    pooled: Tensor | None
    ids: Tensor | None = None
    mask: Tensor | None = None
    states: Tensor | None = None
    owner: Tensor | None = None

    def split(self) -> list[Features]:
        """One entry per review, on the host, its token rows trimmed to their real tokens (states in
        bf16): what a frozen classifier keeps for each review."""
        # one copy to the host per batch, then slices of it
        pooled = self.pooled.float().cpu() if self.pooled is not None else None
        if self.ids is None:
            return [Features(row) for row in pooled]
        ids, mask = self.ids.cpu(), self.mask.cpu()
        states = self.states.to(torch.bfloat16).cpu() if self.states is not None else None
        owner = self.owner.tolist() if self.owner is not None else list(range(ids.size(0)))
        reviews = [
            Features(None if pooled is None else pooled[j], [], None, None if states is None else [])
            for j in range(max(owner) + 1)
        ]
        for r, j in enumerate(owner):
            reviews[j].ids.append(ids[r][mask[r]])
            if states is not None:
                reviews[j].states.append(states[r][mask[r]])
        return reviews

    @staticmethod
    def join(reviews: list[Features], device: torch.device) -> Features:
        """A batch from the entries :meth:`split` made: pooled features stacked, token rows padded."""
        pooled = None
        if reviews[0].pooled is not None:
            pooled = torch.stack([r.pooled for r in reviews]).to(device)
        if reviews[0].ids is None:
            return Features(pooled)
        rows = [ids for r in reviews for ids in r.ids]
        owner = None  # one row per review, the usual case: no owner, so no per-step count of reviews
        if len(rows) > len(reviews):
            owner = torch.tensor([j for j, r in enumerate(reviews) for _ in r.ids], device=device)
        ids = nn.utils.rnn.pad_sequence(rows, batch_first=True).to(device)
        lengths = torch.tensor([len(row) for row in rows], device=device)
        mask = torch.arange(ids.size(1), device=device) < lengths.unsqueeze(1)
        states = None
        if reviews[0].states is not None:
            states = [s for r in reviews for s in r.states]
            states = nn.utils.rnn.pad_sequence(states, batch_first=True).to(device).float()
        return Features(pooled, ids, mask, states, owner)
