"""CausalLM: the LightningModule that pretrains a :class:`CausalDecoder` by next-token prediction."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import SumMetric

from imdb_transformer.core.backbone import add_to_checkpoint, export_backbone
from imdb_transformer.core.decoder import CausalDecoder, DecoderConfig
from imdb_transformer.errors import InputError
from imdb_transformer.hardware import require_cpu_compiler
from imdb_transformer.models.export import export_best, part
from imdb_transformer.models.optim import MuonAdamW, OptimizerName, adamw_warmup_cosine, decay_groups
from imdb_transformer.text.tokenizer import Tokenizer


def token_cross_entropy(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """Next-token cross-entropy of ``logits`` (B, T, V) against ``targets`` (B, T), computed in fp32
    whatever the logits' dtype. Compiled along with the model (``compile``), the cast, softmax and
    their backward fuse into a few passes over the logits instead of one per operation."""
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), reduction=reduction
    )


class LanguageModel(L.LightningModule):
    """Next-token prediction on packed blocks of token ids, for any network in ``self.backbone``
    that maps ids (B, T) to logits (B, T, V). :class:`CausalLM` and :class:`LSTMLM` share this
    training loop, its metrics and its optimiser, so they compare like for like.

    Logs ``train/loss``, and per validation run ``val/loss`` (nats per token), ``val/ppl`` and
    ``val/bpb`` (bits per UTF-8 byte of text, comparable across tokenizers).
    """

    backbone: nn.Module

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.val_nats = SumMetric()
        self.val_tokens = SumMetric()
        self.val_bytes = SumMetric()
        self.register_buffer("token_bytes", torch.ones(vocab_size, dtype=torch.long), persistent=False)
        self.flops_per_batch = 0  # read by Lightning's ThroughputMonitor for MFU
        self.cross_entropy = token_cross_entropy
        self.tokenizer: Tokenizer | None = None

    def use_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Give the model the tokenizer its data was encoded with: it counts the bytes behind each
        token for ``val/bpb`` and travels with the backbone in checkpoints and the export. The CLI
        calls this from the data (:class:`~imdb_transformer.callbacks.ShareTokenizer`); without it,
        bits per byte count every token as one byte."""
        if tokenizer.vocab_size > self.hparams.vocab_size:
            raise InputError(
                f"the tokenizer has {tokenizer.vocab_size} ids but the model only "
                f"{self.hparams.vocab_size} embedding rows; set model.vocab_size >= data.vocab_size"
            )
        self.tokenizer = tokenizer
        sizes = tokenizer.token_bytes()
        self.token_bytes.zero_()[: len(sizes)] = sizes.to(self.token_bytes.device)

    def configure_model(self) -> None:
        if self.hparams.get("compile"):
            if self._trainer is None or self.trainer.strategy.root_device.type == "cpu":
                require_cpu_compiler()
            self.backbone.compile()  # in place: the state_dict keys stay the same
            self.cross_entropy = torch.compile(token_cross_entropy)

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per predicted token (forward + backward) at context ``seq_len``."""
        raise NotImplementedError

    def forward(self, idx: Tensor) -> Tensor:
        return self.backbone(idx)

    def _loss(self, batch: Tensor, reduction: str = "mean") -> tuple[Tensor, Tensor]:
        x, y = batch[:, :-1], batch[:, 1:]  # predict token t+1 from tokens <= t
        return self.cross_entropy(self.backbone(x), y, reduction), y

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss, y = self._loss(batch)
        self.flops_per_batch = self.flops_per_token(y.size(1)) * y.numel()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        nats, y = self._loss(batch, reduction="sum")
        self.val_nats.update(nats)
        self.val_tokens.update(y.numel())
        self.val_bytes.update(self.token_bytes[y].sum())

    def on_validation_epoch_end(self) -> None:
        nats, tokens, nbytes = self.val_nats.compute(), self.val_tokens.compute(), self.val_bytes.compute()
        loss = nats / tokens
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)
        self.log("val/ppl", torch.exp(loss))
        self.log("val/bpb", nats / math.log(2) / nbytes.clamp(min=1))
        for metric in (self.val_nats, self.val_tokens, self.val_bytes):
            metric.reset()

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        groups = decay_groups(self.parameters(), hp.weight_decay)
        optimizer = None
        if hp.get("optimizer", "adamw") == "muon":
            # Muon for the blocks' weight matrices; AdamW for the embedding (tied to the LM head),
            # norms and biases, which Muon's orthogonalised updates do not suit
            matrices = [p for block in self.backbone.blocks for p in block.parameters() if p.dim() == 2]
            taken = {id(p) for p in matrices}
            others = [{**g, "params": [p for p in g["params"] if id(p) not in taken]} for g in groups]
            optimizer = MuonAdamW(
                matrices, [g for g in others if g["params"]], hp.learning_rate, hp.weight_decay,
                betas=tuple(hp.betas),
            )  # fmt: skip
        return adamw_warmup_cosine(
            self.trainer, groups, hp.warmup_steps, hp.min_lr_ratio, optimizer=optimizer,
            lr=hp.learning_rate, betas=tuple(hp.betas),
        )  # fmt: skip


class CausalLM(LanguageModel):
    """Pretrains a decoder-only transformer (:class:`CausalDecoder`) on packed blocks of token ids.

    Args:
        vocab_size: Embedding rows; filled in from ``data.vocab_size`` by the CLI.
        block_size: Context length; filled in from ``data.block_size`` by the CLI.
        n_layer: Transformer blocks.
        n_head: Attention heads per block.
        n_embd: Width of the residual stream.
        dropout: Dropout probability in attention and residual branches.
        learning_rate: Peak AdamW learning rate, reached after warmup.
        weight_decay: AdamW decay, applied to weight matrices only (not norms or biases).
        betas: AdamW betas.
        warmup_steps: Steps of linear warmup before cosine decay.
        min_lr_ratio: The cosine ends at ``learning_rate * min_lr_ratio`` on the last step.
        compile: ``torch.compile`` the backbone and the loss on its logits (faster steps after a
            one-off compile).
        qk_norm: RMS-normalise queries and keys per head (QK-norm).
        optimizer: ``adamw``, or ``muon``: Muon for the blocks' weight matrices (their updates
            orthogonalised), AdamW for the embedding, norms and biases, at the same learning rate.
        activation: ``gelu`` or ``relu2`` (ReLU squared) in the feed-forward layers.
        reverse: A backward LM (its data reads each review last token first); the CLI sets it from
            ``data.reverse``, and the backbone records it so its users reverse reviews too.
    """

    def __init__(
        self,
        vocab_size: int = 8192,
        block_size: int = 256,
        n_layer: int = 6,
        n_head: int = 8,
        n_embd: int = 256,
        dropout: float = 0.0,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 200,
        min_lr_ratio: float = 0.1,
        compile: bool = False,
        reverse: bool = False,
        qk_norm: bool = False,
        activation: Literal["gelu", "relu2"] = "gelu",
        optimizer: OptimizerName = "adamw",
    ) -> None:
        super().__init__(vocab_size)
        self.save_hyperparameters()
        self.config = DecoderConfig(
            vocab_size=vocab_size,
            block_size=block_size,
            n_layer=n_layer,
            n_head=n_head,
            n_embd=n_embd,
            dropout=dropout,
            qk_norm=qk_norm,
            activation=activation,
            reverse=reverse,
        )
        self.backbone = CausalDecoder(self.config)
        # weights that multiply every token: all but the embedding lookup, plus the (tied) LM head
        self._matmul_params = self.backbone.num_parameters(include_embeddings=False) + n_embd * vocab_size

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.tokenizer is not None:
            add_to_checkpoint(checkpoint, self.config, self.tokenizer)

    def on_fit_end(self) -> None:
        """Export the best weights (by ``val/loss``) to ``backbone/`` in the run folder: safetensors,
        config JSON and tokenizer, which the adapters load without pickle."""
        if self.tokenizer is None:
            return

        def save(state: dict | None, folder: Path) -> Path:
            decoder = self.backbone
            if state is not None:
                decoder = CausalDecoder(self.backbone.config)
                decoder.load_state_dict(part(state, "backbone."))
            return export_backbone(decoder, self.tokenizer, folder)

        export_best(self, "backbone", save)

    def flops_per_token(self, seq_len: int) -> int:
        """6 per parameter-multiply (forward + backward), including the LM head, plus attention's
        12 * layers * width * context (the PaLM paper's estimate)."""
        c = self.config
        return 6 * self._matmul_params + 12 * c.n_layer * c.n_embd * seq_len
