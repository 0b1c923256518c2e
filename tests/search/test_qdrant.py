"""An index exported to Qdrant (its in-process local mode) ranks as the embedded index does: the same
top 10 for dense, sparse (adapter), BM25 and hybrid queries, ties aside; and the verbs around it."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import fails, run_cli

from imdb_transformer.core.backbone import load_backbone
from imdb_transformer.core.head import load_adapter
from imdb_transformer.embedder import DocumentEmbedder
from imdb_transformer.errors import InputError
from imdb_transformer.search import Hit, SearchIndexError, SemanticIndex
from imdb_transformer.search.qdrant import QdrantIndex, connect, export_index
from imdb_transformer.text.imdb import load_reviews

pytest.importorskip("qdrant_client")

QUERIES = ["a wonderful film", "boring and dreadful acting", "the music", "zzqx unknownword"]


@pytest.fixture(scope="module")
def indexes(pretrained_run: Path, adapter_run: Path, imdb_dir: Path, tmp_path_factory) -> dict:
    """A dense and a sparse (adapter) index of the tiny test split, each with BM25, saved."""
    root = tmp_path_factory.mktemp("qdrant")
    reviews = load_reviews(str(imdb_dir), "test")
    backbone, adapter = pretrained_run / "backbone", adapter_run / "adapter"
    loaded = load_backbone(backbone)
    built = {}
    for name, head in (("dense", None), ("sparse", load_adapter(adapter, loaded))):
        index = SemanticIndex.build(
            DocumentEmbedder(loaded, head=head), reviews.texts, reviews.ids, reviews.labels,
            backbone=backbone, adapter=adapter if head else None, keys=reviews.keys, progress=False,
        )  # fmt: skip
        built[name] = SemanticIndex.load(index.save(root / name))
    return built


def same_ranking(ours: list[Hit], theirs: list[Hit], close: float = 1e-4) -> None:
    """The same hits with the same scores (within float32 rounding: Qdrant computes them its own way);
    hits whose score is within ``close`` of a neighbour's (near ties) may change places."""
    scores = [h.score for h in ours]
    assert [h.score for h in theirs] == pytest.approx(scores, abs=close)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        neighbours = scores[max(i - 1, 0) : i] + scores[i + 1 : i + 2]
        tied = any(abs(scores[i] - n) < 2 * close for n in neighbours) or i == len(ours) - 1
        assert tied or a.key == b.key, (i, [h.key for h in ours], [h.key for h in theirs])


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_qdrant_ranks_as_the_index_does(indexes: dict, kind: str, tmp_path: Path) -> None:
    index = indexes[kind]
    client = connect(path=tmp_path / "qdrant")
    try:
        assert export_index(index, client, "imdb", batch_size=7, progress=False) == len(index)
        engine = QdrantIndex(client, "imdb")  # the embedder the collection records
        assert (
            engine.embedder.fingerprint == index.embedder.fingerprint
            and engine.embedder.sparse == index.sparse
        )
        for query in QUERIES:
            for mode in ("dense", "lexical", "hybrid"):
                ours, theirs = index.query(query, 10, mode), engine.query(query, 10, mode)
                same_ranking(ours, theirs)
                if mode == "lexical" and ours[0].score > 0:  # Qdrant lists them in the query's order
                    assert set(ours[0].matched) == set(theirs[0].matched)
        with pytest.raises(
            SearchIndexError, match="the backbone given for Qdrant collection 'imdb', .*moved, does not"
        ):
            QdrantIndex(client, "imdb", backbone=tmp_path / "moved")
        with pytest.raises(InputError, match="--replace true"):
            export_index(index, client, "imdb", progress=False)
        export_index(index, client, "imdb", replace=True, progress=False)
        assert client.count("imdb").count == len(index)
    finally:
        client.close()


def test_a_failed_export_leaves_no_collection(indexes: dict, tmp_path: Path, monkeypatch) -> None:
    client = connect(path=tmp_path / "qdrant")
    try:
        calls = []

        def broken(*args, **kwargs) -> None:
            calls.append(1)
            if len(calls) == 2:
                raise OSError("disk full")

        monkeypatch.setattr(client, "upsert", broken)
        with pytest.raises(OSError, match="disk full"):
            export_index(indexes["dense"], client, "imdb", batch_size=10, progress=False)
        assert not client.collection_exists("imdb")
        client.create_collection("other")
        with pytest.raises(SearchIndexError, match="not written by `imdb-transformer export-index`"):
            QdrantIndex(client, "other")
    finally:
        client.close()


def test_export_index_and_search_through_the_console_script(indexes: dict, tmp_path: Path) -> None:
    folder = str(tmp_path / "qdrant")
    index = str(indexes["sparse"].save(tmp_path / "index"))
    out = run_cli("export-index", "--index", index, "--path", folder, "--collection", "reviews").stdout
    assert f"Exported {len(indexes['sparse'])} reviews" in out
    query = ["a wonderful film", "-k", "3"]  # hybrid, the default; every mode is compared above, in-process
    embedded = run_cli("search", "--index", index, *query).stdout
    engine = run_cli("search", "--path", folder, "--collection", "reviews", *query).stdout
    assert (
        [line.split()[:4] for line in engine.splitlines()]
        == [  # rank, score, key, label
            line.split()[:4] for line in embedded.splitlines()
        ]
    )
    assert "--replace true" in fails(
        "export-index", "--index", index, "--path", folder, "--collection", "reviews"
    )
    assert "no collection 'imdb'" in fails("search", "--path", folder, "a film")
    assert "one way" in fails("search", "--path", folder, "--index", index, "a film")
    assert "--like runs on an index folder" in fails("search", "--path", folder, "--like", "test/pos/1")
    assert "no such folder" in fails("search", "--path", str(tmp_path / "typo"), "a film")
    assert not (tmp_path / "typo").exists()
    assert "Connection refused" in fails("search", "--url", "http://127.0.0.1:9", "a film")
