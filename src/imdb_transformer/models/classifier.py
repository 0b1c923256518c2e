"""SentimentClassifier: a pretrained backbone, pooled, and a small head that predicts the label."""

from __future__ import annotations

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
from imdb_transformer.core.pooling import Pooling, pool, pooled_size
from imdb_transformer.errors import InputError
from imdb_transformer.models.optim import Schedule, adamw_warmup_cosine


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
        self.head = nn.Sequential(nn.LayerNorm(features), nn.Dropout(dropout), nn.Linear(features, 1))
        if freeze or unfreeze == "gradual":
            self.backbone.requires_grad_(False)  # gradual: blocks are unfrozen epoch by epoch
        self._features: dict[str, dict[int, Tensor]] = {"train": {}, "val": {}, "test": {}, "predict": {}}
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

    def features(self, ids: Tensor, mask: Tensor, owner: Tensor | None = None) -> Tensor:
        """Pooled backbone features of padded reviews: (B, F), or (B, layers, F) from several layers.
        With ``owner`` the rows are windows of reviews (row i belongs to review ``owner[i]``), and a
        review's features are the mean of its windows'."""
        if self.hparams.layers == 1:
            found = pool(self.backbone.hidden_states(ids, attention_mask=mask), mask, self.pooling)
        else:
            states = self.backbone.layer_states(ids, mask)[-self.hparams.layers :]
            found = torch.stack([pool(s, mask, self.pooling) for s in states], dim=1)
        if owner is not None:
            reviews = int(owner.max()) + 1
            total = found.new_zeros(reviews, *found.shape[1:]).index_add_(0, owner, found)
            found = total / torch.bincount(owner, minlength=reviews).view(-1, *[1] * (found.dim() - 1))
        return found

    def _batch_features(self, batch: dict[str, Tensor]) -> Tensor:
        return self.features(batch["ids"], batch["mask"], batch.get("owner"))

    def classify(self, features: Tensor) -> Tensor:
        """Logits (B,) from :meth:`features`: the layers mixed, then the head."""
        if features.dim() == 3:
            if self.mix is not None:
                features = torch.einsum("l,blf->bf", self.mix.softmax(0), features)
            else:
                features = features.flatten(1)
        return self.head(features).squeeze(-1)

    def _cached_features(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        """Frozen features, computed on first sight of each review and reused after."""
        cache = self._features[stage]
        idx = batch["idx"].tolist()
        if all(i in cache for i in idx):
            return torch.stack([cache[i] for i in idx]).to(self.device)
        with torch.no_grad():
            feats = self._batch_features(batch).float()
        for i, f in zip(idx, feats.cpu(), strict=True):  # one copy to the host per batch, not per review
            cache[i] = f
        return feats

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Logits (B,) of the positive class."""
        return self.classify(self.features(ids, mask))

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
        head = list(self.head.parameters()) + ([self.mix] if self.mix is not None else [])
        groups = [{"params": head, "lr": hp.learning_rate}]
        if not hp.freeze:
            for depth, params in enumerate(self.backbone_layers()):  # top (ln_f) first
                groups.append(
                    {"params": params, "lr": hp.backbone_lr * hp.layer_lr_decay ** max(0, depth - 1)}
                )
        return adamw_warmup_cosine(
            self.trainer, groups, hp.warmup_steps, 0.0, hp.schedule, weight_decay=hp.weight_decay
        )
