"""ContrastiveDataModule: pairs of random crops of the same review, for training an embedding adapter.

Two independent random spans of one review are a positive pair (Contriever's independent cropping), or
two spans from either side of a cut, which share no text (``positives="disjoint"``, as the inverse cloze
task pairs a passage with its context), or for half the reviews a span of the review BM25 finds closest
to it (``positives="neighbours"``, a weak positive); every other review in the batch is a negative. No
labels and no outside text: the ``train`` and ``unsupervised`` reviews only. The ``test`` split is never
read, so retrieval benchmarks on it stay honest.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from functools import partial
from typing import ClassVar

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
import scipy.sparse.linalg  # noqa: F401 (sp.linalg.norm)
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from imdb_transformer.data.reviews import ReviewsDataModule, _Reviews
from imdb_transformer.errors import InputError
from imdb_transformer.text.batching import pad, reading_order
from imdb_transformer.text.imdb import DEFAULT_SOURCE
from imdb_transformer.text.tokenizer import EOS_ID


def random_crop(ids: list[int], rng: random.Random, crop_min: int, crop_max: int) -> list[int]:
    """A span of ``crop_min`` to ``crop_max`` tokens (a whole review if it is shorter), after an EOS as
    every review began in pretraining."""
    length = min(len(ids), rng.randint(crop_min, crop_max))
    start = rng.randint(0, len(ids) - length)
    return [EOS_ID, *ids[start : start + length]]


def disjoint_crops(
    ids: list[int], rng: random.Random, crop_min: int, crop_max: int
) -> tuple[list[int], list[int]]:
    """Two crops that share no token position: the review cut at a random point of its middle third,
    one crop from each side (see :func:`random_crop`), in random order. A review of one token gives it
    twice."""
    if len(ids) < 2:
        return random_crop(ids, rng, crop_min, crop_max), random_crop(ids, rng, crop_min, crop_max)
    cut = rng.randint(max(1, len(ids) // 3), max(1, 2 * len(ids) // 3))
    pair = random_crop(ids[:cut], rng, crop_min, crop_max), random_crop(ids[cut:], rng, crop_min, crop_max)
    return pair if rng.random() < 0.5 else pair[::-1]


POSITIVES = ("crops", "disjoint", "neighbours")
NEIGHBOUR_SHARE = 0.5  # of training pairs whose second crop comes from the review's neighbour
BATCHES = ("random", "topics")


def piece_counts(tokens: np.ndarray, lengths: np.ndarray, vocab_size: int) -> sp.csr_matrix:
    """Each review's count of each piece (reviews, ``vocab_size``), given all reviews' token ids end to end
    (``tokens``) and each review's length."""
    rows = np.repeat(np.arange(len(lengths)), lengths)
    counts = sp.csr_matrix(
        (np.ones(len(tokens), np.float32), (rows, tokens)), shape=(len(lengths), vocab_size)
    )
    counts.sum_duplicates()
    return counts


def bm25_idf(document_frequency: np.ndarray, n: int) -> np.ndarray:
    """BM25's inverse document frequency of each piece held by ``document_frequency`` of ``n`` reviews,
    as Lucene and ``bm25s`` compute it: ``log(1 + (n - df + 0.5) / (df + 0.5))``, never negative."""
    df = document_frequency.astype(np.float64)
    return np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)


def piece_idf(counts: sp.csr_matrix) -> np.ndarray:
    """Each piece's BM25 IDF over the reviews whose piece counts are the rows of ``counts``."""
    return bm25_idf(np.bincount(counts.indices, minlength=counts.shape[1]), counts.shape[0])


def bm25_scores(
    queries: list[list[int]], documents: list[list[int]], idf: np.ndarray, k1: float = 1.5, b: float = 0.75
) -> np.ndarray:
    """BM25 score (queries, documents) of each document for each query, over pieces: each of a query's
    pieces adds ``idf * tf / (tf + k1 * (1 - b + b * length / mean length))`` (Lucene's form, as in
    ``bm25s``; a piece said twice in the query counts twice), the mean length taken over ``documents``."""

    def counts(texts: list[list[int]]) -> sp.csr_matrix:
        lengths = np.array([len(t) for t in texts])
        tokens = np.concatenate([np.zeros(0, np.int64), *(np.asarray(t, np.int64) for t in texts)])
        return piece_counts(tokens, lengths, len(idf))

    weights = bm25_weights(counts(documents), np.array([len(d) for d in documents]), idf, k1, b)
    return (counts(queries) @ weights.T).toarray()


def bm25_weights(
    tf: sp.csr_matrix, lengths: np.ndarray, idf: np.ndarray, k1: float = 1.5, b: float = 0.75
) -> sp.csr_matrix:
    """What each piece of each document (rows of ``tf``, its piece counts) adds to BM25 for a query that
    holds the piece once: ``idf * tf / (tf + k1 * (1 - b + b * length / mean length))``."""
    lengths = lengths.astype(np.float32)
    norm = k1 * (1 - b + b * lengths / max(lengths.mean(), 1e-9))
    weights = tf.copy()
    weights.data = weights.data / (weights.data + np.repeat(norm, np.diff(tf.indptr)))
    return (weights @ sp.diags(idf)).tocsr()


def neighbours(
    tokens: np.ndarray, lengths: np.ndarray, vocab_size: int, terms: int = 32, chunk: int = 1024
) -> np.ndarray:
    """For each review (given all reviews' token ids end to end and each one's length), the other review
    that BM25 ranks first when the review's ``terms`` pieces of highest tf-idf are the query, as Lucene's
    MoreLikeThis picks a document's terms: the review that shares most of its rarer words (a film, an
    actor). A review that shares none of them with another is its own neighbour."""
    n = len(lengths)
    tf = piece_counts(tokens, lengths, vocab_size)
    idf = piece_idf(tf)
    documents = bm25_weights(tf, lengths, idf).T.tocsr()  # (pieces, reviews)
    rank = tf @ sp.diags(idf)
    rows, cols = [], []
    for i in range(n):  # each review's query: its top pieces by tf-idf
        start, end = rank.indptr[i], rank.indptr[i + 1]
        top = np.argsort(-rank.data[start:end], kind="stable")[:terms]
        rows.append(np.full(len(top), i))
        cols.append(rank.indices[start:end][top])
    rows_, cols_ = np.concatenate([np.zeros(0, int), *rows]), np.concatenate([np.zeros(0, int), *cols])
    queries = sp.csr_matrix((np.ones(len(rows_), np.float32), (rows_, cols_)), shape=(n, vocab_size))
    found = np.arange(n)
    for lo in range(0, n, chunk):
        scores = (queries[lo : lo + chunk] @ documents).toarray()
        own = np.arange(len(scores))
        scores[own, lo + own] = 0  # not itself
        best = scores.argmax(1)
        shares = scores[own, best] > 0
        found[lo + own[shares]] = best[shares]
    return found


def bm25_logits(a: list[list[int]], b: list[list[int]], idf: np.ndarray, weight: float) -> torch.Tensor:
    """Logits (2, B, B) to add to InfoNCE's, from BM25 between two crops of each of B reviews: ``[0]``
    ranks the ``b`` crops for each ``a`` crop, ``[1]`` the ``a`` crops for each ``b`` crop; each row
    scaled to 0..1 (min-max, as hybrid search fuses scores) and times ``weight``. With them InfoNCE
    trains the head on what BM25 misses: a pair BM25 already tells apart from the rest needs little
    from the head, a pair BM25 confuses needs much (CLEAR, Gao et al., 2021)."""

    def scaled(scores: np.ndarray) -> np.ndarray:
        low, high = scores.min(1, keepdims=True), scores.max(1, keepdims=True)
        return (scores - low) / np.maximum(high - low, 1e-9)

    both = np.stack([scaled(bm25_scores(a, b, idf)), scaled(bm25_scores(b, a, idf))])
    return torch.from_numpy(weight * both).float()


def topics(
    tokens: np.ndarray, lengths: np.ndarray, vocab_size: int, count: int, seed: int, rounds: int = 10
) -> np.ndarray:
    """A topic (0 to ``count - 1``) for each review, given all reviews' token ids end to end (``tokens``)
    and each review's length: spherical k-means over the reviews' TF-IDF bags of tokens (sublinear
    counts, smoothed IDF, unit rows), started by greedy k-means++ with ``seed``; a topic left empty restarts
    from the review its centre serves worst. Common tokens weigh little, so a topic gathers reviews that
    share their rarer words: a genre, a film, an actor."""
    n = len(lengths)
    bags = piece_counts(tokens, lengths, vocab_size)
    bags.data = 1 + np.log(bags.data)
    df = np.bincount(bags.indices, minlength=vocab_size)
    bags = bags @ sp.diags(np.log((1 + n) / (1 + df)).astype(np.float32) + 1)
    bags = sp.diags(1 / np.maximum(sp.linalg.norm(bags, axis=1), 1e-12).astype(np.float32)) @ bags
    bags = bags.tocsr()
    count = max(1, min(count, n))
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(n))]  # greedy k-means++: each next start far from the ones before
    nearest = (bags @ bags[chosen[0]].T).toarray().ravel()
    tries = 2 + int(np.log(count))
    for _ in range(count - 1):
        far = np.maximum(1 - nearest, 0)  # half the squared distance between unit vectors
        p = far / far.sum() if far.sum() > 0 else None
        candidates = rng.choice(n, size=tries, p=p)
        reach = np.maximum(nearest[:, None], (bags @ bags[candidates].T).toarray())  # (n, tries)
        best = int(reach.sum(0).argmax())  # the candidate that brings the reviews closest
        chosen.append(int(candidates[best]))
        nearest = reach[:, best]
    centres = bags[chosen].toarray()
    for _ in range(rounds + 1):
        similarity = bags @ centres.T
        found = similarity.argmax(1)
        fit = similarity[np.arange(n), found]
        empty = np.setdiff1d(np.arange(count), found)
        if len(empty):  # restart them from the reviews served worst
            found[np.argsort(fit)[: len(empty)]] = empty
        sums = sp.csr_matrix((np.ones(n, np.float32), (found, np.arange(n))), shape=(count, n)) @ bags
        sums = sums.toarray()
        centres = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return found


class TopicBatches(DistributedSampler):
    """Training reviews grouped by topic, so a batch's negatives are reviews about the same things:
    topic-aware sampling (TAS-B, Hofstätter et al., 2021). Each epoch shuffles the reviews within their
    topics and the topics, lays them end to end and cuts runs of ``batch_size``: one topic each, or the
    end of one and the start of the next (more where topics are small). The runs are shuffled and dealt
    to the processes whole (``num_replicas``, ``rank``; Lightning leaves a ``DistributedSampler`` as it
    is), each the same number of them; the few reviews left over sit out that epoch. The order depends
    on ``seed`` and the epoch only (Lightning calls :meth:`set_epoch`), so a resumed run repeats it."""

    def __init__(
        self, topic: np.ndarray, batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0
    ) -> None:
        super().__init__(topic, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.topic, self.batch_size = topic, batch_size
        self.runs = len(topic) // batch_size // num_replicas  # whole runs per process
        self.num_samples = self.runs * batch_size  # DistributedSampler's counts, kept true to what is dealt
        self.total_size = self.num_samples * num_replicas

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng((self.seed, self.epoch))
        order = np.concatenate(
            [
                rng.permutation(np.flatnonzero(self.topic == t))
                for t in rng.permutation(int(self.topic.max()) + 1)
            ]
        )
        runs = order[: len(order) // self.batch_size * self.batch_size].reshape(-1, self.batch_size)
        mine = rng.permutation(len(runs))[self.rank :: self.num_replicas][: self.runs]
        return iter(runs[mine].ravel().tolist())


def collate_crops(
    items: list[dict],
    crop_min: int,
    crop_max: int,
    fixed: bool,
    reverse: bool = False,
    positives: str = "crops",
    idf: np.ndarray | None = None,
    prior_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Two crops ``a`` and ``b`` of each review: independent (``positives="crops"``) or from either side of
    a cut (``"disjoint"``); with ``"neighbours"``, for ``NEIGHBOUR_SHARE`` of the items that bring a
    ``partner`` (the ids of their nearest review, see :func:`neighbours`), ``b`` is a crop of the partner
    instead, and the others as with ``"crops"``. With ``fixed`` each review's crops are drawn from a
    generator seeded by its index, so validation sees the same pairs every time. ``reverse``: reviews read
    last token first, for a backward backbone. With ``idf`` (each piece's BM25 IDF) the batch also holds
    ``prior``: the crops' BM25 scores against each other times ``prior_weight`` (see :func:`bm25_logits`)."""
    shared = random.Random()
    a, b = [], []
    for item in items:
        rng = random.Random(int(item["idx"])) if fixed else shared
        ids = reading_order(item["ids"], reverse)
        if positives == "disjoint":
            first, second = disjoint_crops(ids, rng, crop_min, crop_max)
        else:  # two independent crops, the second of the neighbour for NEIGHBOUR_SHARE of partnered items
            other = ids
            if positives == "neighbours" and "partner" in item and rng.random() < NEIGHBOUR_SHARE:
                other = reading_order(item["partner"], reverse)
            first = random_crop(ids, rng, crop_min, crop_max)
            second = random_crop(other, rng, crop_min, crop_max)
        a.append(first)
        b.append(second)
    (a_ids, a_mask), (b_ids, b_mask) = pad(a), pad(b)
    batch = {"a_ids": a_ids, "a_mask": a_mask, "b_ids": b_ids, "b_mask": b_mask}
    if idf is not None:  # each crop's text without the EOS it starts with
        batch["prior"] = bm25_logits([x[1:] for x in a], [x[1:] for x in b], idf, prior_weight)
    return batch


class _Partnered(Dataset):
    """The training reviews, each with its neighbour's ids as ``partner`` (``partner[i]`` is the position
    of review ``i``'s neighbour among them)."""

    def __init__(self, reviews: _Reviews, partner: np.ndarray) -> None:
        self.reviews, self.partner = reviews, partner

    def __len__(self) -> int:
        return len(self.reviews)

    def __getitem__(self, i: int) -> dict:
        return {**self.reviews[i], "partner": self.reviews[int(self.partner[i])]["ids"]}


def held_out(n: int, val_fraction: float, seed: int) -> np.ndarray:
    """Which of ``n`` reviews (``train`` then ``unsupervised``, in order) are held out for validation:
    the adapter never trains on them, so ``benchmarks/retrieval.py`` tunes on them too."""
    order = np.random.default_rng(seed).permutation(n)
    return order[: max(1, round(n * val_fraction))]


class ContrastiveDataModule(ReviewsDataModule):
    """IMDB ``train`` + ``unsupervised`` reviews (75,000) as pairs of random crops of the same review.

    Tokenised once with the backbone's tokenizer and cached, as :class:`ReviewsDataModule` does. A
    share of whole reviews is held out for validation, with crops fixed per review.

    Args:
        source: A dataset id for ``datasets.load_dataset`` or a local folder of ``{split}.parquet``.
        cache_dir: Where the tokenised reviews are cached.
        backbone: The backbone the adapter runs on (its tokenizer and context); filled in from
            ``model.backbone`` by the CLI.
        tokenizer: A SentencePiece ``.model`` (overrides the backbone's).
        max_length: Longest crop, EOS included (default: the backbone's context).
        crop_min: Shortest crop, in tokens.
        crop_max: Longest crop, in tokens, capped at the context (a query is short, a review long:
            crops span both).
        positives: ``crops``: two independent random crops of a review (they may overlap); ``disjoint``:
            one crop from each side of a random cut in the review's middle third (no shared text, so
            the pair must match by topic and names rather than by copied words); ``neighbours``: as
            ``crops``, but for half the training reviews the second crop comes from the review BM25 ranks
            first for it (see :func:`neighbours`, found at setup), a weak positive about the same things;
            validation keeps ``crops``, so its figures compare across options.
        batches: ``random``: reviews drawn at random into batches; ``topics``: each batch drawn from one
            topic of the training reviews (see :class:`TopicBatches`), so its negatives are hard ones.
            The topics (one per ``batch_size`` reviews) are found by :func:`topics` at setup.
        lexical_prior: Above 0, train the adapter for hybrid search: each batch's logits start from
            BM25 between its crops (over pieces, IDF from the training reviews), each row scaled to
            0..1 and times this weight (val/loss too), so the head learns what BM25 misses (see
            :func:`bm25_logits`).
            0 (the default) trains the head alone: hybrid search fuses each ranker's own proposals, and a
            head trained beside BM25 proposes poorly on its own (docs/search.md measures 3 and 10).
        val_fraction: Share of whole reviews held out for validation.
        max_reviews: Use only this many reviews of each split: for smoke runs.
        batch_size: Reviews per batch: each brings two crops, and every other review is a negative.
        num_workers: DataLoader worker processes.
        num_proc: Processes for tokenising in ``prepare_data`` (default: all CPU cores).
        seed: Seeds the validation split and the ``max_reviews`` sample.
    """

    source_splits = ("train", "unsupervised")
    stage_splits: ClassVar[dict[str, tuple[str, ...]]] = {}  # every stage carves its validation from both

    def __init__(
        self,
        source: str = DEFAULT_SOURCE,
        cache_dir: str = "~/.cache/imdb_transformer",
        backbone: str | None = None,
        tokenizer: str | None = None,
        max_length: int | None = None,
        crop_min: int = 16,
        crop_max: int = 128,
        positives: str = "crops",
        batches: str = "random",
        lexical_prior: float = 0.0,
        val_fraction: float = 0.02,
        max_reviews: int | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
        num_proc: int | None = None,
        seed: int = 1234,
    ) -> None:
        if not 1 <= crop_min <= crop_max:
            raise InputError(f"need 1 <= crop_min <= crop_max, got {crop_min} and {crop_max}")
        if positives not in POSITIVES:
            raise InputError(f"--data.positives must be one of {', '.join(POSITIVES)} (got {positives!r})")
        if batches not in BATCHES:
            raise InputError(f"--data.batches must be one of {', '.join(BATCHES)} (got {batches!r})")
        if not lexical_prior >= 0:
            raise InputError(f"--data.lexical_prior must be 0 or more (got {lexical_prior}); 0 turns it off")
        super().__init__(
            source, cache_dir, backbone, tokenizer, max_length, val_fraction, max_reviews, batch_size,
            num_workers, num_proc, seed,
        )  # fmt: skip
        self.crop_min, self.crop_max, self.positives, self.batches = crop_min, crop_max, positives, batches
        self.lexical_prior = lexical_prior
        self._idf: np.ndarray | None = None

    def _arrange(self, tables: dict[str, datasets.Dataset]) -> dict[str, _Reviews]:
        table = datasets.concatenate_datasets([tables[s] for s in self.source_splits])
        table = table.remove_columns("idx").add_column("idx", list(range(len(table))))
        val = held_out(len(table), self.val_fraction, self.seed)
        train = np.setdiff1d(np.arange(len(table)), val)
        return {
            "train": _Reviews(table, np.random.default_rng(self.seed).permutation(train)),
            "val": _Reviews(table, val),
        }

    def train_dataloader(self) -> DataLoader:
        train = self.splits["train"]
        dataset = train
        if self.positives == "neighbours":
            partner = self._found_once(lambda: neighbours(*self._train_tokens(), self.tokenizer.vocab_size))
            rank_zero_info(
                f"Neighbours: {np.sum(partner != np.arange(len(partner))):,} of {len(partner):,} training "
                "reviews have one"
            )
            dataset = _Partnered(train, partner)
        if self.batches == "random":
            return self._loader("train", shuffle=True, dataset=dataset)
        world, rank = self._processes()
        if len(train) < self.batch_size * world:
            raise InputError(
                f"--data.batches topics needs a whole batch for each of {world} process(es): "
                f"{len(train):,} training reviews for batches of {self.batch_size}; lower --data.batch_size"
            )
        count = len(train) // self.batch_size
        topic = self._found_once(
            lambda: topics(*self._train_tokens(), self.tokenizer.vocab_size, count, self.seed)
        )
        rank_zero_info(f"Topic batches: {len(train):,} training reviews in {len(np.unique(topic)):,} topics")
        sampler = TopicBatches(topic, self.batch_size, self.seed, world, rank)
        return self._loader("train", sampler=sampler, dataset=dataset)

    def _processes(self) -> tuple[int, int]:
        """How many processes train, and which one this is (one, the first, outside a Trainer)."""
        return (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)

    def _found_once(self, find: Callable[[], np.ndarray]) -> np.ndarray:
        """``find()`` on the first process, handed to the others, so every process deals the same."""
        world, rank = self._processes()
        found = find() if rank == 0 else None
        if world > 1:
            found = self.trainer.strategy.broadcast(found, src=0)
        return found

    def _train_tokens(self) -> tuple[np.ndarray, np.ndarray]:
        """The training reviews' token ids end to end, and each review's length."""
        train = self.splits["train"]
        column = train.table.data.column("ids").take(pa.array(train.order))
        return (
            pc.list_flatten(column).to_numpy(zero_copy_only=False),
            pc.list_value_length(column).to_numpy(zero_copy_only=False),
        )

    def idf(self) -> np.ndarray:
        """Each piece's BM25 IDF over the training reviews (held-out reviews aside), found once."""
        if self._idf is None:
            tokens, lengths = self._train_tokens()
            self._idf = piece_idf(piece_counts(tokens, lengths, self.tokenizer.vocab_size))
        return self._idf

    def _collate(self, split: str) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        crop_max = min(self.crop_max, self.context - 1)  # room for the EOS before it
        crop_min = min(self.crop_min, crop_max)
        return partial(
            collate_crops, crop_min=crop_min, crop_max=crop_max, fixed=split != "train", reverse=self.reverse,
            positives=self.positives, idf=self.idf() if self.lexical_prior > 0 else None,
            prior_weight=self.lexical_prior,
        )  # fmt: skip

    def test_dataloader(self) -> DataLoader:
        raise InputError(
            "the embedding adapter has no test split here (it never reads test reviews); measure it with "
            "`python benchmarks/retrieval.py`"
        )

    predict_dataloader = test_dataloader
