"""Every review has a unique key, as the original archive's file names give it (``test/pos/2221``):
IMDB's ``id`` repeats across labels, so ``--like``, hits and the index name reviews by key."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import error_line, main_each

from imdb_transformer.core.backbone import load_backbone
from imdb_transformer.embedder import DocumentEmbedder
from imdb_transformer.errors import InputError
from imdb_transformer.search import SemanticIndex
from imdb_transformer.text.imdb import load_reviews

WORDS = ["wonderful", "dreadful", "moving", "boring", "superb", "dull", "brilliant", "awful", "great", "mess"]
# (label, id): ids 7 and 9 are each a positive and a negative review, as in IMDB's own splits
ROWS = [(1, 7), (0, 7), (1, 8), (0, 9), (1, 9), (0, 10), (1, 11), (0, 12), (1, 13), (0, 14)]


def write_split(folder: Path, rows: list[tuple[int, int]], split: str = "test") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    texts = [
        f"A {WORDS[n]} film, the {WORDS[(n * 3) % 10]} story of review {i}." for n, (_, i) in enumerate(rows)
    ]
    table = pa.table(
        {
            "text": pa.array(texts, pa.string()),
            "label": pa.array([lab for lab, _ in rows], pa.int64()),
            "id": pa.array([i for _, i in rows], pa.int32()),
        }
    )
    pq.write_table(table, folder / f"{split}.parquet")
    return folder


def keys_of(table: str) -> list[str]:
    """The review keys of a printed table of hits (its third column)."""
    return [line.split()[2] for line in table.splitlines()[2:]]


@pytest.fixture(scope="module")
def runs(pretrained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An index of a split whose ids repeat across labels, and the searches over it, through the
    console script's entry point (one process for all of them)."""
    root = tmp_path_factory.mktemp("keys")
    source = write_split(root / "imdb", ROWS)
    clash = write_split(root / "clash", [(1, 7), (0, 7), (1, 7)])  # id 7 twice among the positives
    index = root / "index"
    embed = ["embed", "--backbone", str(pretrained_run / "backbone"), "--out"]
    cases = {
        "embed": [*embed, str(index), "--source", str(source)],
        "like key": ["search", "--index", str(index), "--like", "test/pos/7", "-k", "9"],
        "like shared id": ["search", "--index", str(index), "--like", "7"],
        "like own id": ["search", "--index", str(index), "--like", "8", "-k", "9", "--mode", "dense"],
        "like unknown": ["search", "--index", str(index), "--like", "test/pos/99"],
        "query": ["search", "--index", str(index), "wonderful film", "-k", "3"],
        "clash": [*embed, str(root / "clash-index"), "--source", str(clash)],
    }
    return {
        "index": index,
        "source": source,
        **dict(zip(cases, main_each(list(cases.values())), strict=True)),
    }


def test_reviews_sharing_an_id_are_both_indexed_under_their_own_keys(runs: dict) -> None:
    assert runs["embed"]["code"] == 0, runs["embed"]["stderr"][-2000:]
    index = SemanticIndex.load(runs["index"])
    expected = [f"test/{'pos' if lab else 'neg'}/{i}" for lab, i in ROWS]
    assert index.reviews.column("key").to_pylist() == expected
    assert index.reviews.column("id").to_pylist() == [i for _, i in ROWS]
    hits = index.query("wonderful film", 10)
    assert sorted(h.key for h in hits) == sorted(expected)
    assert all(h.key == f"test/{'pos' if h.label else 'neg'}/{h.id}" for h in hits)


def test_like_a_key_ranks_every_other_review_and_leaves_out_exactly_that_one(runs: dict) -> None:
    result = runs["like key"]
    assert result["code"] == 0, result["stderr"][-2000:]
    found = keys_of(result["stdout"])
    assert len(found) == 9 and "test/pos/7" not in found and "test/neg/7" in found
    assert "review key" in result["stdout"].splitlines()[0]


def test_like_a_bare_id_works_when_one_review_has_it(runs: dict) -> None:
    result = runs["like own id"]
    assert result["code"] == 0, result["stderr"][-2000:]
    found = keys_of(result["stdout"])
    assert len(found) == 9 and "test/pos/8" not in found


def test_like_an_id_that_names_several_reviews_is_refused_listing_their_keys(runs: dict) -> None:
    line = error_line(runs["like shared id"])
    assert "review id 7 names 2 reviews in this index: test/neg/7, test/pos/7; pass one of those keys" in line
    assert "test/pos/99" in error_line(runs["like unknown"])


def test_hits_name_their_reviews_by_key(runs: dict) -> None:
    result = runs["query"]
    assert result["code"] == 0
    assert all(key.startswith(("test/pos/", "test/neg/")) for key in keys_of(result["stdout"]))


def test_a_source_where_two_reviews_would_share_a_key_is_refused(runs: dict) -> None:
    line = error_line(runs["clash"])
    assert "id 7 and label 1" in line and "'test/pos/7'" in line
    assert not (runs["index"].parent / "clash-index").exists()


def test_keys_in_the_python_api(runs: dict, pretrained_run: Path, tmp_path: Path) -> None:
    reviews = load_reviews(str(runs["source"]), "test", max_reviews=4)
    assert len(set(reviews.keys)) == 4 and all(k.startswith("test/") for k in reviews.keys)
    unsup = write_split(tmp_path / "u", [(-1, 3), (-1, 4)], split="unsupervised")
    assert load_reviews(str(unsup), "unsupervised").keys == ["unsupervised/unsup/3", "unsupervised/unsup/4"]

    embedder = DocumentEmbedder(load_backbone(pretrained_run / "backbone"))
    texts = ["a fine film", "a dull film", "a fine story"]
    index = SemanticIndex.build(embedder, texts, progress=False)  # no ids: keys are row numbers
    assert index.reviews.column("key").to_pylist() == ["0", "1", "2"]
    assert [h.key for h in index.like("1", 2)] != [] and "1" not in [h.key for h in index.like("1", 2)]
    with pytest.raises(InputError, match="name several"):
        SemanticIndex.build(embedder, texts, ids=[5, 5, 6], progress=False)  # ids alone name them
    labelled = SemanticIndex.build(embedder, texts, ids=[5, 5, 6], labels=[1, 0, 1], progress=False)
    assert labelled.reviews.column("key").to_pylist() == ["pos/5", "neg/5", "pos/6"]
    keyed = SemanticIndex.build(embedder, texts, ids=[5, 5, 6], keys=["a/5", "b/5", "a/6"], progress=False)
    with pytest.raises(InputError, match="review id 5 names 2 reviews in this index: a/5, b/5"):
        keyed.like(5, 1)
