"""The recurrent baseline: an LSTM language model trained by the same loop as the transformer.

The project began as a recurrent model; this is that baseline done properly (tied embeddings,
packed blocks, the same optimiser, schedule and metrics), so ``val/bpb`` shows what attention
buys at equal training time. Select it with
``--model.class_path imdb_transformer.models.LSTMLM`` (or ``--config configs/lstm.yaml``).
"""

from __future__ import annotations

from torch import Tensor, nn

from imdb_transformer.models.lm import LanguageModel


class RecurrentLM(nn.Module):
    """Token embedding, a stack of LSTM layers and a weight-tied LM head.

    Each block starts from a zero state: blocks are shuffled, so a state carried over from the
    previous batch would belong to another part of the corpus.
    """

    def __init__(self, vocab_size: int, n_embd: int, n_layer: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.drop = nn.Dropout(dropout)
        between = dropout if n_layer > 1 else 0.0
        self.lstm = nn.LSTM(n_embd, n_embd, n_layer, batch_first=True, dropout=between)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in the transformer (Press & Wolf 2017)
        # U(-0.1, 0.1), the usual start for LSTM language models: the LSTM's outputs lie in (-1, 1)
        # with no final norm, so a GPT-sized 0.02 would leave the tied head's logits near zero for long
        nn.init.uniform_(self.wte.weight, -0.1, 0.1)

    def forward(self, idx: Tensor) -> Tensor:
        """Next-token logits (B, T, vocab_size) for token ids ``idx`` (B, T)."""
        x, _ = self.lstm(self.drop(self.wte(idx)))  # (B, T, C); each step reads the state of the last
        return self.lm_head(self.drop(x))


class LSTMLM(LanguageModel):
    """Pretrains the recurrent baseline on the same packed blocks, with the same metrics.

    Args:
        vocab_size: Embedding rows; filled in from ``data.vocab_size`` by the CLI.
        block_size: Length of the packed blocks (from ``data.block_size``); an LSTM has no context limit.
        n_layer: Stacked LSTM layers.
        n_embd: Width of the embedding and of every LSTM layer's state (equal, for the tied head).
        dropout: Dropout between layers and before the head.
        learning_rate: Peak AdamW learning rate, reached after warmup.
        weight_decay: AdamW decay, applied to weight matrices only (not biases).
        betas: AdamW betas.
        warmup_steps: Steps of linear warmup before cosine decay.
        min_lr_ratio: The cosine ends at ``learning_rate * min_lr_ratio`` on the last step.
        compile: ``torch.compile`` the network and the loss on its logits.
    """

    def __init__(
        self,
        vocab_size: int = 8192,
        block_size: int = 256,
        n_layer: int = 2,
        n_embd: int = 512,
        dropout: float = 0.0,
        learning_rate: float = 5e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 200,
        min_lr_ratio: float = 0.1,
        compile: bool = False,
    ) -> None:
        super().__init__(vocab_size)
        self.save_hyperparameters()
        self.backbone = RecurrentLM(vocab_size, n_embd, n_layer, dropout)

    def flops_per_token(self, seq_len: int) -> int:
        """6 per parameter-multiply (forward + backward): the LSTM's input and recurrent matrices
        (four gates each) and the LM head."""
        n, c, v = self.hparams.n_layer, self.hparams.n_embd, self.hparams.vocab_size
        return 6 * (n * 4 * (c * c + c * c) + c * v)
