"""A damaged or crafted index folder is one clear error naming the file, never a crash.

scipy and bm25s index memory with the arrays an index stores, unchecked: one column index past the
vocabulary was enough for a segmentation fault (exit 139). Every array and field is damaged here, one
per copy of a real tiny index (dense and sparse), and ``imdb-transformer search`` must stop with
status 1 and one ``error:`` line that names the file and says to rebuild.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import error_line, fails, main_each
from safetensors.torch import load_file, save_file

from imdb_transformer.core.backbone import load_backbone
from imdb_transformer.core.head import load_adapter
from imdb_transformer.embedder import DocumentEmbedder
from imdb_transformer.search import SearchIndexError, SemanticIndex

TEXTS = [
    "A wonderful, brilliant film. Loved it!",
    "Boring and dreadful; a waste of time.",
    "The camera work was superb and the music moving.",
    "Terrible plot, dull actors, awful ending.",
    "Quite a delightful masterpiece of a film.",
    "The film was a dull mess and I hated it.",
]


@pytest.fixture(scope="module")
def indexes(pretrained_run: Path, adapter_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A dense and a sparse (adapter) index of TEXTS, and the options that find their models."""
    root = tmp_path_factory.mktemp("indexes")
    backbone, adapter = pretrained_run / "backbone", adapter_run / "adapter"
    loaded = load_backbone(backbone)
    dense = SemanticIndex.build(DocumentEmbedder(loaded), TEXTS, backbone=backbone, progress=False)
    sparse_embedder = DocumentEmbedder(loaded, head=load_adapter(adapter, loaded))
    sparse = SemanticIndex.build(sparse_embedder, TEXTS, backbone=backbone, adapter=adapter, progress=False)
    assert sparse.sparse and not dense.sparse
    return {
        "dense": (dense.save(root / "dense"), ["--backbone", str(backbone)]),
        "sparse": (sparse.save(root / "sparse"), ["--backbone", str(backbone), "--adapter", str(adapter)]),
    }


def tensors(name: str, change: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], str]:
    def damage(folder: Path) -> str:
        arrays = load_file(str(folder / "vectors.safetensors"))
        change(arrays)
        save_file({k: v.contiguous().clone() for k, v in arrays.items()}, str(folder / "vectors.safetensors"))
        return "vectors.safetensors"

    damage.__name__ = name
    return damage


def meta(field: str, value: object) -> Callable[[Path], str]:
    def damage(folder: Path) -> str:
        data = json.loads((folder / "index.json").read_text())
        data[field] = value
        (folder / "index.json").write_text(json.dumps(data))  # NaN is written as the literal NaN
        return "index.json"

    return damage


def reviews(change: Callable[[pa.Table], pa.Table]) -> Callable[[Path], str]:
    def damage(folder: Path) -> str:
        pq.write_table(change(pq.read_table(folder / "reviews.parquet")), folder / "reviews.parquet")
        return "reviews.parquet"

    return damage


def bm25(name: str, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], str]:
    def damage(folder: Path) -> str:
        path = folder / "lexical" / f"{name}.csc.index.npy"
        np.save(path, change(np.load(path)))
        return "lexical"

    return damage


def bm25_json(name: str, change: Callable[[dict], None]) -> Callable[[Path], str]:
    def damage(folder: Path) -> str:
        path = folder / "lexical" / f"{name}.index.json"
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
        return "lexical"

    return damage


def _set(arrays: dict, name: str, value: torch.Tensor) -> None:
    arrays[name] = value


def _first(a: np.ndarray, value) -> np.ndarray:
    a = a.copy()
    a[0] = value
    return a


def _last(a: np.ndarray, value) -> np.ndarray:
    a = a.copy()
    a[-1] = value
    return a


def _swap_middle(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    i = int(np.argmax(np.diff(a) > 0)) + 1  # a step that rises: make it fall
    a[i] = a[-1] + 1 if i < len(a) - 1 else a[i]
    return a


def _column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


SPARSE = {  # the CSR arrays of an adapter's sparse vectors
    "index one past the vocabulary": tensors(
        "past", lambda a: a["indices"].__setitem__(0, int(a["shape"][1]))
    ),
    "negative index": tensors("negative", lambda a: a["indices"].__setitem__(-1, -1)),
    "indptr decreasing": tensors("down", lambda a: a["indptr"].__setitem__(1, int(a["indptr"][-1]) + 7)),
    "indptr one short": tensors("short", lambda a: _set(a, "indptr", a["indptr"][:-1])),
    "indptr not from 0": tensors("start", lambda a: a["indptr"].__setitem__(0, 1)),
    "indptr past the values": tensors("end", lambda a: a["indptr"].__setitem__(-1, int(a["indptr"][-1]) + 3)),
    "shape of 3 ints": tensors("shape3", lambda a: _set(a, "shape", torch.tensor([6, 10, 1]))),
    "shape narrower than the vocabulary": tensors(
        "narrow", lambda a: _set(a, "shape", torch.tensor([6, int(a["shape"][1]) - 1]))
    ),
    "shape negative": tensors("negshape", lambda a: _set(a, "shape", torch.tensor([-6, int(a["shape"][1])]))),
    "data NaN": tensors("nan", lambda a: a["data"].__setitem__(0, float("nan"))),
    "data float64": tensors("f64", lambda a: _set(a, "data", a["data"].double())),
    "indices int32": tensors("i32", lambda a: _set(a, "indices", a["indices"].int())),
    "indices 2-D": tensors("i2d", lambda a: _set(a, "indices", a["indices"][None])),
    "a tensor missing": tensors("missing", lambda a: a.pop("indptr")),
}
DENSE = {
    "vectors 1-D": tensors("flat", lambda a: _set(a, "vectors", a["vectors"].flatten())),
    "vectors infinite": tensors("inf", lambda a: a["vectors"].__setitem__((0, 0), float("inf"))),
    "vectors too narrow": tensors("narrow", lambda a: _set(a, "vectors", a["vectors"][:, :-1])),
    "vectors too few": tensors("few", lambda a: _set(a, "vectors", a["vectors"][:-1])),
    "vectors float16": tensors("half", lambda a: _set(a, "vectors", a["vectors"].half())),
    "vectors as CSR arrays": tensors(
        "kind", lambda a: a.update(data=a["vectors"][0], shape=torch.tensor([1]))
    ),
    "index.json a list": lambda f: (f / "index.json").write_text("[1, 2]") and "index.json",
    "count a string": meta("count", "6"),
    "count a bool": meta("count", True),
    "count wrong": meta("count", 5),
    "alpha NaN": meta("alpha", float("nan")),
    "alpha above 1": meta("alpha", 1.5),
    "alpha a string": meta("alpha", "0.5"),
    "pooling unknown": meta("pooling", "median"),
    "lexical not a bool": meta("lexical", "yes"),
    "windows not a bool": meta("windows", "yes"),
    "max_length 0": meta("max_length", 0),
    "max_length a float": meta("max_length", 64.5),
    "backbone a number": meta("backbone", 5),
    "format of version 2": meta("format", "imdb_transformer.index/2"),
    "format foreign": meta("format", "something/1"),
    "reviews without keys": reviews(lambda t: t.drop_columns(["key"])),
    "reviews without text": reviews(lambda t: t.drop_columns(["text"])),
    "review ids strings": reviews(lambda t: _column(t, "id", pa.array([str(i) for i in range(6)]))),
    "review texts ints": reviews(lambda t: _column(t, "text", pa.array(range(6), pa.int64()))),
    "review key null": reviews(
        lambda t: _column(t, "key", pa.array([None, *map(str, range(1, 6))], pa.string()))
    ),
    "review keys repeated": reviews(lambda t: _column(t, "key", pa.array(["a"] * 6))),
    "reviews too few": reviews(lambda t: t.slice(0, 5)),
    "bm25 index past the reviews": bm25("indices", lambda a: _first(a, 6)),
    "bm25 index negative": bm25("indices", lambda a: _first(a, -1)),
    "bm25 indptr decreasing": bm25("indptr", _swap_middle),
    "bm25 indptr past the values": bm25("indptr", lambda a: _last(a, a[-1] + 5)),
    "bm25 indptr not from 0": bm25("indptr", lambda a: _first(a, 2)),
    "bm25 data NaN": bm25("data", lambda a: _first(a, np.nan)),
    "bm25 data ints": bm25("data", lambda a: a.astype(np.int64)),
    "bm25 data 2-D": bm25("data", lambda a: a[None]),
    "bm25 num_docs wrong": bm25_json("params", lambda p: p.update(num_docs=60)),
    "bm25 num_docs missing": bm25_json("params", lambda p: p.pop("num_docs")),
    "bm25 dtype unknown": bm25_json("params", lambda p: p.update(dtype="float99")),
    "bm25 vocab id past the words": bm25_json("vocab", lambda v: v.update(film=10_000)),
    "bm25 vocab a list": lambda f: (f / "lexical" / "vocab.index.json").write_text("[1]") and "lexical",
    "bm25 file missing": lambda f: (f / "lexical" / "indptr.csc.index.npy").unlink() or "lexical",
}


def _damaged(indexes: dict, kind: str, cases: dict, root: Path) -> tuple[list[list[str]], list[str]]:
    folder, options = indexes[kind]
    runs, names = [], []
    for n, damage in enumerate(cases.values()):
        copy = Path(shutil.copytree(folder, root / f"{kind}-{n}"))
        names.append(damage(copy))
        query = ["film"] if n % 2 else ["--like", "3"]  # by text, and by a review of the index
        runs.append(["search", "--index", str(copy), *options, *query])
    return runs, names


@pytest.mark.parametrize(("kind", "cases"), [("sparse", SPARSE), ("dense", DENSE)])
def test_each_damaged_array_or_field_is_one_error_naming_its_file(
    indexes: dict, kind: str, cases: dict, tmp_path: Path
) -> None:
    runs, names = _damaged(indexes, kind, cases, tmp_path)
    results = main_each(runs)  # a segmentation fault in any run fails here, naming it
    for case, name, result in zip(cases, names, results, strict=True):
        line = error_line(result)
        assert name in line, (case, line)
        if "version 2" in case:
            assert "rebuild the index with `imdb-transformer embed`" in line, line
        elif "foreign" in case:
            assert "build one with `imdb-transformer embed`" in line, line
        else:
            assert "build it again with `imdb-transformer embed`" in line, (case, line)


def test_the_undamaged_copies_answer(indexes: dict, tmp_path: Path) -> None:
    """The damage above is what fails: the same runs over intact copies succeed."""
    runs = []
    for kind, (folder, options) in indexes.items():
        copy = shutil.copytree(folder, tmp_path / kind)
        runs += [
            ["search", "--index", str(copy), *options, *q] for q in (["film"], ["--like", "3", "-k", "2"])
        ]
    for result in main_each(runs):
        assert result["code"] == 0, result
        assert "review key" in result["stdout"] and len(result["stdout"].splitlines()) >= 3


def test_the_console_script_reports_an_index_past_the_vocabulary_in_one_line(
    indexes: dict, tmp_path: Path
) -> None:
    """The crash as the issue met it: the installed script, a column index past the vocabulary."""
    folder, options = indexes["sparse"]
    copy = Path(shutil.copytree(folder, tmp_path / "crafted"))
    SPARSE["index one past the vocabulary"](copy)
    bm25("indices", lambda a: _first(a, 6))(copy)
    stderr = fails("search", "--index", str(copy), *options, "film")
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and "vectors.safetensors" in stderr


def test_the_python_api_refuses_the_same(indexes: dict, tmp_path: Path) -> None:
    folder, _ = indexes["dense"]
    copy = Path(shutil.copytree(folder, tmp_path / "nan-alpha"))
    meta("alpha", float("nan"))(copy)
    with pytest.raises(SearchIndexError, match=r"alpha is nan, not a number in \[0, 1\]"):
        SemanticIndex.load(copy)
