"""DocumentEmbedder and SemanticIndex: padding invariance, save/load, ranked results, clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from imdb_transformer.core.backbone import load_backbone
from imdb_transformer.core.head import load_adapter
from imdb_transformer.core.pooling import pool
from imdb_transformer.embedder import DocumentEmbedder
from imdb_transformer.search import SearchIndexError, SemanticIndex, format_hits, top_k_rows
from imdb_transformer.search.hits import matched_words
from imdb_transformer.text.batching import collate_reviews, pad, windows

TEXTS = [
    "A wonderful, brilliant film. Loved it!",
    "Boring and dreadful; a waste of time.",
    "The camera work was superb and the music moving.",
    "Terrible plot, dull actors, awful ending.",
    "Quite a delightful masterpiece.",
]


@pytest.fixture(scope="module")
def embedder(pretrained_run: Path) -> DocumentEmbedder:
    return DocumentEmbedder(load_backbone(pretrained_run / "backbone"))


@pytest.mark.parametrize("pooling", ["mean", "max", "last"])
def test_a_review_alone_and_in_a_padded_batch_gets_the_same_vector(
    pretrained_run: Path, pooling: str
) -> None:
    emb = DocumentEmbedder(load_backbone(pretrained_run / "backbone"), pooling=pooling)
    ids = emb.tokenizer.encode(TEXTS)
    batch = collate_reviews([{"ids": i} for i in ids], emb.max_length)
    together = emb(batch["ids"], batch["mask"])
    for row, review in enumerate(ids):
        alone = collate_reviews([{"ids": review}], emb.max_length)
        torch.testing.assert_close(emb(alone["ids"], alone["mask"])[0], together[row], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together.norm(dim=-1), torch.ones(len(TEXTS)))  # L2-normalised


def test_a_sparse_adapter_reading_windows_keeps_a_word_past_head_and_tail(
    pretrained_run: Path, adapter_run: Path
) -> None:
    backbone = load_backbone(pretrained_run / "backbone")
    head = load_adapter(adapter_run / "adapter", backbone)
    ends = DocumentEmbedder(backbone, head=head, windows=False)
    whole = DocumentEmbedder(backbone, head=head)  # the default: every window
    filler = backbone.tokenizer.encode(["the film was fine and the cast was fine"])[0]
    word = backbone.tokenizer.encode(["masterpiece"])[0]
    assert not set(word) & set(filler)
    long = filler * (4 * ends.max_length // len(filler))  # several windows of the context
    middle = long[: len(long) // 2] + word + long[len(long) // 2 :]
    short = filler * 2 + word
    assert len(short) + 2 <= ends.max_length < len(middle) // 3
    read_ends, read_whole = ends.embed_ids([middle, short]), whole.embed_ids([middle, short])
    assert read_ends[0, word].count_nonzero() == 0  # the middle is cut away from head and tail
    assert read_whole[0, word].count_nonzero() == len(set(word))  # every window is read
    np.testing.assert_allclose(read_whole[1].toarray(), read_ends[1].toarray(), atol=1e-6)  # one window
    alone = whole.embed_ids([middle])
    np.testing.assert_allclose(alone.toarray(), read_whole[0].toarray(), atol=1e-5)  # as in a batch
    assert whole.fingerprint != ends.fingerprint  # vectors read differently never mix


def test_without_a_head_a_long_text_read_in_windows_is_the_mean_of_its_windows(pretrained_run: Path) -> None:
    emb = DocumentEmbedder(load_backbone(pretrained_run / "backbone"), windows=True)
    text = emb.tokenizer.encode(["the film was fine and the cast was fine"])[0] * 20
    rows = windows(text, emb.max_length)
    assert len(rows) > 2
    ids, mask = pad(rows)
    with torch.inference_mode():
        pooled = pool(emb.decoder.hidden_states(ids, attention_mask=mask), mask, "mean")
    expected = torch.nn.functional.normalize(pooled.mean(0), dim=-1)
    torch.testing.assert_close(emb.embed_ids([text])[0], expected, atol=1e-5, rtol=1e-4)


def test_embed_keeps_input_order(embedder: DocumentEmbedder) -> None:
    out = embedder.embed(TEXTS, batch_size=2, progress=False)
    for i in (0, 3):
        torch.testing.assert_close(
            out[i], embedder.embed([TEXTS[i]], progress=False)[0], atol=1e-5, rtol=1e-4
        )


def test_index_survives_save_and_load(
    embedder: DocumentEmbedder, tmp_path: Path, pretrained_run: Path
) -> None:
    index = SemanticIndex.build(
        embedder,
        TEXTS,
        ids=[10, 11, 12, 13, 14],
        labels=[1, 0, 1, 0, 1],
        backbone=str(pretrained_run / "backbone"),
    )
    index.save(tmp_path / "idx")
    loaded = SemanticIndex.load(tmp_path / "idx")  # the backbone is found from the index itself
    torch.testing.assert_close(loaded.vectors, index.vectors)
    assert loaded.query(TEXTS[2], 3) == index.query(TEXTS[2], 3)


def test_queries_return_k_results_best_first(embedder: DocumentEmbedder) -> None:
    index = SemanticIndex.build(embedder, TEXTS, ids=[10, 11, 12, 13, 14], labels=[1, 0, 1, 0, 1])
    hits = index.query(TEXTS[3], k=4)
    assert [h.rank for h in hits] == [1, 2, 3, 4]
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))
    assert hits[0].id == 13 and hits[0].score == pytest.approx(1.0, abs=1e-5)  # itself, first
    assert hits[0].key == "neg/13"  # named by label folder and id, as the archive names it
    table = format_hits(hits)
    assert "review key" in table and table.splitlines()[2].split()[2:4] == ["neg/13", "neg"]


def test_hits_list_the_query_words_they_hold_rarest_first(embedder: DocumentEmbedder) -> None:
    texts = ["a superb film, superb acting", "the film was dull", "superb music", "dull film, dull plot"]
    index = SemanticIndex.build(embedder, texts, ids=[1, 2, 3, 4], labels=[1, 0, 1, 0])
    hits = {h.id: h.matched for h in index.query("superb dull film", k=4, mode="lexical")}
    # film is in 3 reviews, superb and dull in 2 each: the rarer words come first; stop words never
    assert hits == {1: ["superb", "film"], 2: ["dull", "film"], 3: ["superb"], 4: ["dull", "film"]}
    assert matched_words(["b", "a", "b", "c"], ["a", "b"]) == ["b", "a"]  # the query's order, once each
    like = index.like("pos/1", k=1, mode="lexical")[0]
    assert like.id == 3 and like.matched == ["superb"]
    assert "matched" in format_hits([like]) and "superb" in format_hits([like]).splitlines()[2]


def test_bad_queries_are_clear_errors(embedder: DocumentEmbedder) -> None:
    index = SemanticIndex.build(embedder, TEXTS)
    with pytest.raises(ValueError, match="empty query"):
        index.query("   ", 3)
    for k in (0, 6):
        with pytest.raises(ValueError, match="out of range"):
            index.query("good", k)


def test_a_moved_index_finds_its_backbone_or_says_how_to_re_point_it(
    embedder: DocumentEmbedder, tmp_path: Path, pretrained_run: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(pretrained_run / "backbone", run / "backbone")
    SemanticIndex.build(embedder, TEXTS, backbone=str(run / "backbone")).save(run / "index")
    expected = SemanticIndex.load(run / "index").query(TEXTS[0], 2)
    (run).rename(tmp_path / "moved")  # the run folder moves, index and backbone together
    assert SemanticIndex.load(tmp_path / "moved" / "index").query(TEXTS[0], 2) == expected
    (tmp_path / "moved" / "index").rename(tmp_path / "index")  # the index alone moves
    with pytest.raises(SearchIndexError, match="pass its new place with --backbone"):
        SemanticIndex.load(tmp_path / "index")
    assert SemanticIndex.load(tmp_path / "index", embedder).query(TEXTS[0], 2) == expected  # no path needed
    with pytest.raises(SearchIndexError, match=r"the backbone given for .*index, .*nowhere, does not exist"):
        SemanticIndex.load(tmp_path / "index", backbone=tmp_path / "nowhere")
    loaded = SemanticIndex.load(tmp_path / "index", backbone=tmp_path / "moved" / "backbone")
    assert loaded.query(TEXTS[0], 2) == expected


def test_missing_or_foreign_indexes_are_clear_errors(embedder: DocumentEmbedder, tmp_path: Path) -> None:
    with pytest.raises(SearchIndexError, match="not found; build one"):
        SemanticIndex.load(tmp_path / "nope", embedder)
    SemanticIndex.build(embedder, TEXTS).save(tmp_path / "idx")
    other = DocumentEmbedder(embedder_backbone(embedder), pooling="max")
    with pytest.raises(SearchIndexError, match="another backbone, adapter, pooling, length or reading"):
        SemanticIndex.load(tmp_path / "idx", other)
    (tmp_path / "idx" / "vectors.safetensors").unlink()
    with pytest.raises(SearchIndexError, match="vectors.safetensors missing"):
        SemanticIndex.load(tmp_path / "idx", embedder)


def embedder_backbone(embedder: DocumentEmbedder):
    from imdb_transformer.core.backbone import Backbone

    return Backbone(embedder.decoder, embedder.tokenizer)


@pytest.mark.parametrize("positive", [0, 3, 50])
def test_top_rows_are_the_k_highest_scores_best_first(positive: int) -> None:
    """Mostly-zero scores (sparse and BM25), negatives (dense cosines), fewer positives than k."""
    rng = np.random.default_rng(positive)
    scores = np.zeros(1000, dtype=np.float32)
    scores[rng.choice(1000, positive, replace=False)] = rng.random(positive) + 0.1
    scores[rng.choice(1000, 20, replace=False)] -= rng.random(20).astype(np.float32)
    rows = top_k_rows(scores, 10)
    assert list(scores[rows]) == sorted(scores, reverse=True)[:10] and len(set(rows)) == 10


@pytest.mark.parametrize("zeros", [0.0, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("negatives", [False, True])
def test_candidates_are_the_highest_non_zero_scores(zeros: float, negatives: bool) -> None:
    """Whether most scores are zero (BM25) or few are (a sparse query's cosines over a big index, where
    the selection runs over all scores), the candidates are the highest non-zero ones."""
    from imdb_transformer.search.ranking import candidates

    rng = np.random.default_rng(0)
    scores = rng.random(5000).astype(np.float32) - (0.5 if negatives else 0.0)
    scores[rng.random(5000) < zeros] = 0
    for count in (1, 100, 4999, 6000):
        nonzero = np.flatnonzero(scores != 0)
        expected = nonzero[np.argsort(-scores[nonzero], kind="stable")[:count]]
        assert sorted(candidates(scores, count).tolist()) == sorted(expected.tolist())
