"""SentimentEnsemble: trained classifier checkpoints, each over its own backbone, as one classifier
whose probability is the mean of theirs (ULMFiT's forward + backward ensemble)."""

from __future__ import annotations

import inspect
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from tqdm.auto import tqdm

from imdb_transformer.artifacts import check_shapes, read_artifact, weights_fingerprint
from imdb_transformer.core.backbone import load_checkpoint, tokenizer_fingerprint
from imdb_transformer.errors import ImdbError, InputError
from imdb_transformer.models.classifier import SentimentClassifier
from imdb_transformer.text.batching import collate_for, length_batches
from imdb_transformer.text.imdb import clean_text
from imdb_transformer.text.texts import is_blank


@dataclass(frozen=True)
class Reading:
    """How a classifier reads a review, as its training data did: up to ``length`` tokens (head and
    tail), or with ``windows`` all of it, ``length`` tokens at a time."""

    length: int
    windows: bool = False

    def collate(self, ids: list[list[int]], reverse: bool) -> dict[str, Tensor]:
        """Padded rows of token ids, with ``owner`` (the text of each row) when reading windows."""
        return collate_for(self.windows)([{"ids": i} for i in ids], self.length, reverse)


class SentimentEnsemble(LightningModule):
    """Classifier checkpoints (``SentimentClassifier``, e.g. one over a forward and one over a
    backward backbone) that vote by averaging their probabilities. Each member reads a text with its
    own tokenizer, context and direction (a backward member sees the review reversed), and as its
    training data read reviews (head and tail, or every window with ``--data.windows true``).
    :meth:`member_probabilities` classifies texts in a loop on the ensemble's device;
    ``Trainer.predict`` runs :meth:`predict_step` over a collection on any devices (see
    :func:`~imdb_transformer.predict.predict`).

    Args:
        checkpoints: ``.ckpt`` files of `imdb-transformer fit --config configs/classify.yaml` runs.
        device: Where the members run.
    """

    def __init__(self, checkpoints: list[str | os.PathLike], device: str = "cpu") -> None:
        if not checkpoints:
            raise InputError("an ensemble needs at least one classifier checkpoint (--checkpoint CKPT)")
        super().__init__()
        self.checkpoints = [str(c) for c in checkpoints]
        loaded = [_load(c, device) for c in self.checkpoints]
        self.members = nn.ModuleList([member for member, _ in loaded])
        self.readings = [reading for _, reading in loaded]
        self.groups = self._shared_backbones()
        self.explaining = False  # whether predict_step also gives each text's word shares
        self.to(device)

    @property
    def names(self) -> list[str]:
        """A short name per member: its file, with its direction."""
        return [
            f"{Path(c).name} ({'backward' if m.backbone.config.reverse else 'forward'})"
            for c, m in zip(self.checkpoints, self.members, strict=True)
        ]

    @torch.inference_mode()
    def member_probabilities(
        self,
        texts: list[str],
        batch_size: int = 64,
        progress: bool = True,
        max_tokens: int = 8192,
        words: list[dict[str, float]] | None = None,
    ) -> Tensor:
        """Probability that each text is positive, by each member: (members, texts). Texts are sorted
        by length and batched up to ``batch_size`` texts or ``max_tokens`` padded tokens, so a batch
        of long and short texts is not padded to its longest.

        With ``words`` (an empty list), it is filled with one dict per text: each word and its share of
        the logit in the word votes (the shares of its pieces and of the pairs it ends), averaged over
        the members: what drove the verdict."""
        self.check(texts, explain=words is not None)
        if words is not None:
            words[:] = [{} for _ in texts]
        out = torch.empty(len(self.members), len(texts))
        ids = self.encode(texts)
        bar = tqdm(
            total=len(texts) * len(self.members), desc="Classifying", unit="text", disable=not progress
        )
        for chunk in length_batches(ids, batch_size, self.context, max_tokens):
            shares = [words[i] for i in chunk] if words is not None else None
            out[:, chunk] = self.batch_probabilities([texts[i] for i in chunk], shares)
            bar.update(len(chunk) * len(self.members))
        bar.close()
        return out

    def check(self, texts: list[str], explain: bool = False) -> None:
        """Refuse no texts, an empty text, and ``explain`` without word votes to explain with."""
        if not texts:
            raise InputError("no texts to classify")
        empty = [i for i, t in enumerate(texts) if is_blank(t)]
        if empty:
            raise InputError(f"text {empty[0] + 1} of {len(texts)} is empty: give every text some words")
        if explain and not self.explains:
            raise InputError(
                "explaining needs a classifier with word votes (trained with --model.lexical context "
                "or bag); these classify from pooled features alone"
            )

    @property
    def context(self) -> int:
        """The most tokens a member reads of one text, what batches are sized by: the longest context
        among the members, or every token where a member reads every window."""
        if any(reading.windows for reading in self.readings):
            return sys.maxsize
        return max(reading.length for reading in self.readings)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of raw texts by the first member's tokenizer: what batches are formed by."""
        return self.members[0].tokenizer.encode([clean_text(t) for t in texts])

    @torch.inference_mode()
    def batch_probabilities(self, texts: list[str], words: list[dict[str, float]] | None = None) -> Tensor:
        """Probability that each text of one batch is positive, by each member: (members, texts), on the
        CPU. Each group of members that share a backbone runs it once. With ``words`` (one dict per
        text), each word's share of the logit is added to its text's dict, averaged over the members."""
        out = torch.empty(len(self.members), len(texts))
        cleaned = [clean_text(t) for t in texts]
        for group in self.groups:
            first, reading = self.members[group[0]], self.readings[group[0]]
            reverse = first.backbone.config.reverse
            batch = reading.collate(first.tokenizer.encode(cleaned), reverse)
            tokens, mask = batch["ids"].to(self.device), batch["mask"].to(self.device)
            owner = batch["owner"].to(self.device) if "owner" in batch else None
            shared = len(group) > 1 and any(self.members[m].runs_backbone for m in group)
            layer_states = first.backbone.layer_states(tokens, mask) if shared else None
            for m in group:
                member = self.members[m]
                if words is not None and member.lexical is not None:
                    logits, shares = member.explain(tokens, mask, owner, layer_states)
                else:
                    features = member.features(tokens, mask, owner, layer_states)
                    logits, shares = member.classify(features), None
                out[m] = torch.sigmoid(logits.float()).cpu()
                if shares is None:
                    continue
                rows = owner.tolist() if owner is not None else list(range(len(texts)))
                pieces: list[list[str]] = [[] for _ in texts]
                parts: list[list[float]] = [[] for _ in texts]
                for text, row, real, share in zip(rows, tokens.cpu(), mask.cpu(), shares.cpu(), strict=True):
                    pieces[text] += member.tokenizer.pieces(row[real].tolist())
                    parts[text] += share[real].float().tolist()
                for into, text_pieces, text_parts in zip(words, pieces, parts, strict=True):
                    if reverse:  # back to reading order, so pieces join into words
                        text_pieces, text_parts = text_pieces[::-1], text_parts[::-1]
                    _add_word_shares(into, text_pieces, text_parts, 1 / len(self.members))
        return out

    def predict_step(self, batch: dict) -> dict:
        """The members' probabilities (texts, members) of a batch of
        :class:`~imdb_transformer.predict.PredictTexts`, with its text positions and, when
        ``explaining``, each text's word shares."""
        words = [{} for _ in batch["texts"]] if self.explaining else None
        probabilities = self.batch_probabilities(batch["texts"], words).T
        out = {"index": batch["index"].cpu(), "probabilities": probabilities}
        return out | ({"words": words} if words is not None else {})

    @property
    def explains(self) -> bool:
        """Whether some member has word votes, whose shares explain a verdict word by word."""
        return any(m.lexical is not None for m in self.members)

    def _shared_backbones(self) -> list[list[int]]:
        """The members in groups that share one backbone (the same weights, shape, direction and
        tokenizer, as frozen classifiers over one pretraining run do) and read reviews the same way:
        each group's backbone runs once per batch for all of its members. Found once, when the
        ensemble is loaded."""
        if len(self.members) == 1:
            return [[0]]
        groups: dict[str, list[int]] = {}
        for m, member in enumerate(self.members):
            shape = asdict(member.backbone.config)
            shape.pop("dropout")  # off when classifying
            weights = weights_fingerprint(member.backbone.state_dict())
            reading = self.readings[m]
            key = f"{weights}-{tokenizer_fingerprint(member.tokenizer)}-{sorted(shape.items())}-{reading}"
            groups.setdefault(key, []).append(m)
        return list(groups.values())

    def probabilities(
        self,
        texts: list[str],
        batch_size: int = 64,
        progress: bool = True,
        words: list[dict[str, float]] | None = None,
    ) -> Tensor:
        """Probability that each text is positive: the mean of the members' (texts,); ``words`` as in
        :meth:`member_probabilities`."""
        return self.member_probabilities(texts, batch_size, progress, words=words).mean(0)


def _add_word_shares(into: dict[str, float], pieces: list[str], shares: list[float], scale: float) -> None:
    """Add ``scale`` times each word's share of a logit to ``into``: the pieces of a text in reading
    order, joined into words (a piece that starts with ``▁`` starts one; punctuation stands alone;
    byte-fallback pieces ``<0xNN>`` are decoded, a run of them as one piece), the review's start and
    end marks left out."""
    word, share = "", 0.0
    for piece, part in [*_bytes_decoded(pieces, shares), ("\u2581", 0.0)]:
        special = piece.startswith("<") and piece.endswith(">")
        text = piece.lstrip("\u2581")
        alone = not any(c.isalnum() for c in text)
        starts = special or piece.startswith("\u2581") or alone or not any(c.isalnum() for c in word)
        if starts and word:
            into[word] = into.get(word, 0.0) + scale * share
            word, share = "", 0.0
        if not special:
            word, share = word + text, share + part


_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _bytes_decoded(pieces: list[str], shares: list[float]) -> list[tuple[str, float]]:
    """``pieces`` with each run of byte-fallback pieces (``<0xNN>``: a character outside the vocabulary,
    one piece per UTF-8 byte) decoded into the text it spells, its shares summed."""
    out: list[tuple[str, float]] = []
    run, run_share = bytearray(), 0.0
    for piece, part in zip(pieces, shares, strict=True):
        byte = _BYTE.fullmatch(piece)
        if byte:
            run.append(int(byte.group(1), 16))
            run_share += part
            continue
        if run:
            out.append((run.decode("utf-8", errors="replace"), run_share))
            run, run_share = bytearray(), 0.0
        out.append((piece, part))
    if run:
        out.append((run.decode("utf-8", errors="replace"), run_share))
    return out


def top_words(shares: dict[str, float], k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` words with the largest shares in absolute value, largest first."""
    return sorted(shares.items(), key=lambda item: -abs(item[1]))[:k]


def _load(checkpoint: str, device: str) -> tuple[SentimentClassifier, Reading]:
    """A classifier from its checkpoint alone (it holds its backbone), read without pickle; its settings
    and weights are checked before the classifier is built from them. With it, how it reads a review:
    as its training data did (the data module's settings Lightning keeps in the checkpoint)."""
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise InputError(f"classifier checkpoint {checkpoint} not found: pass a .ckpt of a classify run")
    if not path.is_file():
        raise InputError(
            f"{checkpoint} is a folder, not a classifier checkpoint: pass a .ckpt of a classify run"
        )
    remedy = "it is truncated, not a checkpoint, or holds code (refused: loaded without unpickling code)"
    contents = read_artifact(path, load_checkpoint, InputError, remedy)
    hparams = contents.get("hyper_parameters") if isinstance(contents, dict) else None
    state = contents.get("state_dict") if isinstance(contents, dict) else None
    hparams = hparams if isinstance(hparams, dict) else {}
    state = state if isinstance(state, dict) else {}
    known = inspect.signature(SentimentClassifier).parameters
    settings = {k: v for k, v in hparams.items() if k in known}
    if "freeze" not in settings or not any(
        isinstance(k, str) and k.startswith(("head.", "lexical.")) for k in state
    ):
        raise InputError(
            f"{checkpoint} is not a sentiment classifier's checkpoint: pass one written by "
            "`imdb-transformer fit --config configs/classify.yaml`"
        )
    settings["backbone"] = str(path)
    remedy = "the checkpoint is damaged or was written by another version: pass another, or train it again"
    odd = [
        k
        for k, v in state.items()
        if not isinstance(v, torch.Tensor) or v.layout != torch.strided or v.is_complex()
    ]
    if odd:
        raise InputError(f"{checkpoint}: {odd[0]} is not a dense real-valued tensor; {remedy}")
    try:
        model = SentimentClassifier(**settings)
    except ImdbError:
        raise
    except (TypeError, ValueError, RuntimeError) as err:  # settings of the wrong type or range
        raise InputError(f"{checkpoint}: its settings cannot build a classifier ({err}); {remedy}") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    check_shapes(expected, found, str(checkpoint), InputError, remedy)
    model.load_state_dict(state)
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise InputError(f"{checkpoint} holds NaN or infinite weights (a diverged run); {remedy}")
    return model.eval().to(device), _reading(contents, model, checkpoint, remedy)


def _reading(contents: dict, model: SentimentClassifier, checkpoint: str, remedy: str) -> Reading:
    """How the classifier's training data read a review (``max_length`` and ``windows`` of its
    ``ReviewsDataModule``); the backbone's context, head and tail, where the checkpoint does not say."""
    data = contents.get("datamodule_hyper_parameters")
    data = data if isinstance(data, dict) else {}
    length, windows = data.get("max_length"), data.get("windows", False)
    length = model.backbone.config.block_size if length is None else length
    if not isinstance(windows, bool) or isinstance(length, bool) or not isinstance(length, int) or length < 3:
        raise InputError(
            f"{checkpoint}: its data settings (max_length {length!r}, windows {windows!r}) are not a way to "
            f"read a review; {remedy}"
        )
    return Reading(length, windows)
