"""Token ids of reviews arranged for a backbone: fit to its context (head and tail), cut into windows,
read backwards for a backward LM, padded into batches, and grouped by length. Plain functions on
lists and tensors, used by training (the DataModules) and inference (embedder, ensemble) alike."""

from __future__ import annotations

from collections.abc import Callable

import torch

from imdb_transformer.text.tokenizer import EOS_ID, PAD_ID


def reading_order(ids, reverse: bool) -> list[int]:
    """A review's token ids in the order a backbone reads them: last token first for a backward LM
    (ULMFiT's second direction), else as written. The one place a review is reversed for reading;
    pretraining reverses whole columns of reviews the same way (:func:`~imdb_transformer.data.lm.pack`)."""
    return list(ids)[::-1] if reverse else list(ids)


def fit_to_context(ids: list[int], max_length: int, head_fraction: float = 0.25) -> list[int]:
    """``[EOS] + ids + [EOS]`` cut to ``max_length``: a long review keeps its head and its tail.

    EOS is what precedes every review in pretraining, so the model reads the review as it learned
    to. Reviews state their verdict mostly at the start and the end; keeping a quarter from the head
    and the rest from the tail is the best split found for long documents by Sun et al. (2019),
    "How to Fine-Tune BERT for Text Classification".
    """
    room = max_length - 2
    if len(ids) > room:
        head = int(room * head_fraction)
        ids = ids[:head] + ids[len(ids) - (room - head) :]
    return [EOS_ID, *ids, EOS_ID]


def windows(ids: list[int], max_length: int) -> list[list[int]]:
    """Every window of a review: consecutive spans of ``max_length - 2`` tokens, each between EOS marks
    as a whole review is (the last one shorter)."""
    room = max_length - 2
    return [[EOS_ID, *ids[start : start + room], EOS_ID] for start in range(0, max(1, len(ids)), room)]


def collate_windows(items: list[dict], max_length: int, reverse: bool = False) -> dict[str, torch.Tensor]:
    """Like :func:`collate_reviews`, but a review longer than the context brings all of its windows
    (rows of ``ids``), and ``owner`` says which review of the batch each row belongs to."""
    rows, owner = [], []
    for i, item in enumerate(items):
        found = windows(reading_order(item["ids"], reverse), max_length)
        rows += found
        owner += [i] * len(found)
    ids, mask = pad(rows)
    return _with_labels({"ids": ids, "mask": mask, "owner": torch.tensor(owner)}, items)


def collate_for(windows: bool) -> Callable[..., dict[str, torch.Tensor]]:
    """The collate function of one way of reading reviews: every window (:func:`collate_windows`) or head
    and tail (:func:`collate_reviews`); training data and inference pick it here alike."""
    return collate_windows if windows else collate_reviews


def pad(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists to the longest: ids (B, T) and the mask of real tokens (B, T)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = True
    return ids, mask


def collate_reviews(items: list[dict], max_length: int, reverse: bool = False) -> dict[str, torch.Tensor]:
    """Pad a list of ``{"ids", "label", "idx"}`` to the longest in the batch; ``mask`` marks real tokens.
    ``reverse``: each review's tokens last to first, for a backward backbone."""
    ids, mask = pad([fit_to_context(reading_order(item["ids"], reverse), max_length) for item in items])
    return _with_labels({"ids": ids, "mask": mask}, items)


def _with_labels(batch: dict[str, torch.Tensor], items: list[dict]) -> dict[str, torch.Tensor]:
    """``batch`` with the items' ``label`` and ``idx``, where they have them."""
    for key in ("label", "idx"):
        if key in items[0]:
            batch[key] = torch.tensor([int(item[key]) for item in items])
    return batch


def length_batches(
    ids: list[list[int]], batch_size: int, context: int, max_tokens: int | None = None
) -> list[list[int]]:
    """Indices of ``ids`` in batches of similar length (shortest first): at most ``batch_size`` of them
    and, with ``max_tokens``, at most that many tokens once padded to the longest (each read up to
    ``context`` tokens), so a batch of long texts is smaller than one of short texts."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batches, chunk = [], []
    for i in order:
        width = min(len(ids[i]) + 2, context)  # the longest so far, EOS marks included
        full = len(chunk) == batch_size or (max_tokens is not None and (len(chunk) + 1) * width > max_tokens)
        if chunk and full:
            batches.append(chunk)
            chunk = []
        chunk.append(i)
    return batches + [chunk] if chunk else batches
