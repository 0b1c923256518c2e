"""The lexical ranker: BM25 over the reviews' words, with ``bm25s`` (sparse matrices in numpy, saved
without pickle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp


class BM25Index:
    """BM25 over the reviews' words (``bm25s``: sparse matrices in numpy, fast and small).

    Words are lower-cased runs of two or more letters or digits; English stop words are dropped.
    """

    def __init__(self, retriever) -> None:  # a bm25s.BM25
        self.retriever = retriever

    @staticmethod
    def words(texts: list[str]) -> list[list[str]]:
        import bm25s

        return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)

    @classmethod
    def build(cls, texts: list[str]) -> BM25Index:
        import bm25s

        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
        return cls(retriever)

    def _column(self, word: str) -> int | None:
        """The column of ``word`` in the stored scores, or None for a word the index does not store
        (bm25s numbers the empty word past the stored words, with no scores)."""
        stored = len(self.retriever.scores["indptr"]) - 1
        column = self.retriever.vocab_dict.get(word, stored)
        return column if column < stored else None

    def scores(self, text: str) -> np.ndarray:
        """BM25 score of every review for ``text`` (N,); zero where no word matches."""
        words = [w for w in self.words([text])[0] if self._column(w) is not None]
        if not words:
            return np.zeros(self.retriever.scores["num_docs"], dtype=np.float32)
        return self.retriever.get_scores(words)

    def document_frequency(self, word: str) -> int:
        """How many reviews hold ``word`` (0 for a word the index does not know)."""
        column = self._column(word)
        if column is None:
            return 0
        indptr = self.retriever.scores["indptr"]
        return int(indptr[column + 1] - indptr[column])

    def weights(self) -> tuple[sp.csc_matrix, list[str]]:
        """Every review's BM25 weight for every word it holds (its score for a one-word query of it, IDF
        included), as bm25s stores them: a (reviews, words) matrix, column by column, and each
        column's word. A query's BM25 scores are this matrix times the query's word counts."""
        scores = self.retriever.scores
        columns = len(scores["indptr"]) - 1
        shape = (scores["num_docs"], columns)
        matrix = sp.csc_matrix((scores["data"], scores["indices"], scores["indptr"]), shape=shape)
        words = sorted(self.retriever.vocab_dict, key=self.retriever.vocab_dict.get)[:columns]
        return matrix, words

    def save(self, folder: Path) -> None:
        self.retriever.save(str(folder), show_progress=False)

    @classmethod
    def load(cls, folder: Path) -> BM25Index:
        import bm25s

        return cls(bm25s.BM25.load(str(folder), mmap=False, show_progress=False))
