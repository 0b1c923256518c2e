"""The index folder on disk: its format version and constants, the reviews table, writing the vectors'
arrays, and checking every file and array when it is read (scipy and bm25s trust their index arrays, so
a damaged or crafted one is refused here, never passed on); and the refusal to write an index over
anything that is not one."""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
import torch

from imdb_transformer.core.pooling import Pooling
from imdb_transformer.embedder import DocumentEmbedder
from imdb_transformer.errors import InputError
from imdb_transformer.text.imdb import LABEL_FOLDERS

INDEX_FORMAT = "imdb_transformer.index/3"


INDEX_FORMATS = "imdb_transformer.index/"  # the prefix every version of this project's index format has


DEFAULT_ALPHA = 0.5  # for the default adapter (configs/embed.yaml), chosen on held-out training reviews


Vectors = torch.Tensor | sp.csr_matrix  # dense (N, C), or sparse CSR (N, vocab_size)


class SearchIndexError(InputError):
    """An index folder that is missing, incomplete, damaged, or built by a different embedder."""


REVIEW_COLUMNS = {"key": pa.types.is_string, "id": pa.types.is_integer, "label": pa.types.is_integer}
REVIEW_COLUMNS["text"] = pa.types.is_string


REMEDY = "the index is damaged: build it again with `imdb-transformer embed`"


INDEX_ENTRIES = ("index.json", "vectors.safetensors", "reviews.parquet", "lexical")


def review_table(
    texts: list[str],
    ids: list[int] | None = None,
    labels: list[int] | None = None,
    keys: list[str] | None = None,
) -> pa.Table:
    """The index's table of reviews: ``key`` (unique), ``id`` (default: row numbers), ``label`` (default
    -1) and ``text``. Without ``keys``, a review is named as the archive's label folders name it
    (``pos/2221``: an IMDB id repeats across labels) where ids and labels are given, by its id where
    only ids are, else by its row number."""
    n = len(texts)
    for name, values in (("ids", ids), ("labels", labels), ("keys", keys)):
        if values is not None and len(values) != n:
            raise InputError(f"{len(values)} {name} for {n} texts: give one per text")
    if keys is None and ids is not None and labels is not None:
        keys = [f"{LABEL_FOLDERS.get(lab, lab)}/{i}" for lab, i in zip(labels, ids, strict=True)]
    elif keys is None:
        keys = [str(i) for i in (ids if ids is not None else range(n))]
    table = pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "id": pa.array(ids if ids is not None else range(n), pa.int64()),
            "label": pa.array(labels if labels is not None else [-1] * n, pa.int64()),
            "text": pa.array(texts, pa.string()),
        }
    )
    if table.column("key").null_count:
        raise InputError("every review needs a key; some are None")
    check_unique_keys(table.column("key"))
    return table


def check_alpha(alpha: object) -> None:
    """Refuse a hybrid weight that is not a number in [0, 1] (NaN included)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise InputError(
            f"alpha={alpha!r}: the weight of the dense score in hybrid search is a number in [0, 1] "
            f"(1: dense only, 0: BM25 only; default {DEFAULT_ALPHA})"
        )


def check_unique_keys(keys: pa.ChunkedArray) -> None:
    if pc.count_distinct(keys).as_py() == len(keys):
        return
    counts = pc.value_counts(keys)
    repeated = [c["values"] for c in counts.to_pylist() if c["counts"] > 1]
    shown = ", ".join(map(repr, repeated[:5])) + (
        f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""
    )
    raise InputError(
        f"review keys must name one review each, but {shown} name several; give every review its own key "
        "(review ids repeat across labels and splits: keys such as 'test/pos/2221' do not)"
    )


def check_out_folder(
    folder: str | os.PathLike, keep: dict[str, str | os.PathLike | None] | None = None
) -> Path:
    """Refuse ``folder`` as the place to write an index unless writing there loses nothing: a folder
    that does not exist yet, an empty one, or an index of this project (nothing in it but an index's
    files). A file, a symbolic link, the root, home or current folder, and any folder that holds one of
    them or one of the ``keep`` paths (the data and models an index is built from) are refused.
    Returns the folder's resolved path."""
    given = Path(folder).expanduser()
    fix = "choose a new folder for the index (--out), or remove that one yourself if you mean to replace it"
    if given.is_symlink():
        raise InputError(f"{str(given)!r} is a symbolic link; give the index's own folder: {fix}")
    path = given.resolve()
    if path.exists() and not path.is_dir():
        raise InputError(f"{str(given)!r} is a file, and an index is a folder: {fix}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{str(given)!r} cannot be made: {parent} is a file, not a folder; {fix}")
            break
    guarded = {"the root folder": Path("/"), "the current folder": Path.cwd()}
    with contextlib.suppress(RuntimeError):  # no home folder known: nothing to guard there
        guarded["your home folder"] = Path.home()
    guarded.update({f"the {name}": Path(p).expanduser() for name, p in (keep or {}).items() if p is not None})
    for what, guarded_path in guarded.items():
        guarded_path = guarded_path.resolve()
        inputs = what not in ("the root folder", "the current folder", "your home folder")
        if inputs and guarded_path.is_dir() and guarded_path in path.parents:
            raise InputError(
                f"{str(given)!r} is inside {what} ({guarded_path}); an index written there would mix with "
                f"its files: {fix}"
            )
        if path == guarded_path or path in guarded_path.parents:
            where = "is" if path == guarded_path else "holds"
            raise InputError(
                f"{str(given)!r} {where} {what} ({guarded_path}); writing an index there would replace "
                f"it: {fix}"
            )
    if path.is_dir():
        problem = _not_an_index(path)
        if problem:
            raise InputError(f"{str(given)!r} {problem}, and only an index is replaced by a new one: {fix}")
    return path


def _not_an_index(folder: Path) -> str | None:
    """Why ``folder`` is neither empty nor one of this project's indexes (None: it is one of those)."""
    entries = sorted(p.name for p in folder.iterdir())
    if not entries:
        return None
    try:
        meta = json.loads((folder / "index.json").read_text())
        is_index = isinstance(meta, dict) and str(meta.get("format", "")).startswith(INDEX_FORMATS)
    except (OSError, ValueError):
        is_index = False
    if not is_index:
        return f"is a folder that is not a search index (it holds {_listing(entries)})"
    foreign = [name for name in entries if name not in INDEX_ENTRIES]
    # an index's files are plain files (lexical/ a folder of them): a folder or a link of the same name
    # holds something else
    foreign += [
        name
        for name in entries
        if name in INDEX_ENTRIES
        and name != "lexical"
        and ((folder / name).is_symlink() or not (folder / name).is_file())
    ]
    lexical = folder / "lexical"
    if lexical.is_symlink():
        foreign.append("lexical")
    elif lexical.is_dir():
        foreign += [
            f"lexical/{p.name}"
            for p in sorted(lexical.iterdir())
            if p.is_symlink() or not (p.is_file() and p.name.endswith((".index.json", ".index.npy")))
        ]
    elif lexical.exists():
        foreign.append("lexical")
    if foreign:
        return f"is an index that also holds files of another kind ({_listing(foreign)})"
    return None


def _listing(names: list[str], most: int = 5) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def check_meta(meta: object, path: Path) -> None:
    """Refuse an ``index.json`` that is not an object with every field of the right type."""
    if not isinstance(meta, dict):
        raise SearchIndexError(f"{path} holds {type(meta).__name__}, not an object; {REMEDY}")
    found = meta.get("format")
    if found != INDEX_FORMAT:
        if isinstance(found, str) and found.startswith(INDEX_FORMATS):
            raise SearchIndexError(
                f"{path} is of format {found!r}, made by an earlier version; this one reads {INDEX_FORMAT!r} "
                "(reviews named by unique keys): rebuild the index with `imdb-transformer embed`"
            )
        raise SearchIndexError(
            f"{path} has format {found!r}, not {INDEX_FORMAT!r}: not an index of imdb-transformer; "
            "build one with `imdb-transformer embed`"
        )

    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_number(v: object) -> bool:
        return (is_int(v) or isinstance(v, float)) and math.isfinite(v)

    poolings = (*get_args(Pooling), "adapter")
    fields = {
        "count": (lambda v: is_int(v) and v >= 1, "a positive integer"),
        "embedder": (lambda v: isinstance(v, str), "a string"),
        "backbone": (lambda v: v is None or isinstance(v, str), "a path or null"),
        "adapter": (lambda v: v is None or isinstance(v, str), "a path or null"),
        "pooling": (lambda v: isinstance(v, str) and v in poolings, f"one of {', '.join(poolings)}"),
        "max_length": (lambda v: is_int(v) and v >= 1, "a positive integer"),
        "lexical": (lambda v: isinstance(v, bool), "true or false"),
        "alpha": (lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    }
    optional = {"windows": (lambda v: isinstance(v, bool), "true or false")}  # absent: head and tail
    for name, (valid, expected) in {**fields, **optional}.items():
        if name not in meta:
            if name in optional:
                continue
            raise SearchIndexError(f"{path} lacks the field {name!r}; {REMEDY}")
        if not valid(meta[name]):
            raise SearchIndexError(f"{path}: {name} is {meta[name]!r}, not {expected}; {REMEDY}")


def checked_arrays(
    arrays: dict[str, torch.Tensor], path: Path, count: int, embedder: DocumentEmbedder
) -> dict[str, torch.Tensor]:
    """``arrays`` of ``vectors.safetensors``, once every one is known to be what :meth:`save` writes:
    dense vectors (count, dim), or a CSR matrix (count, dim) whose index arrays stay in bounds (scipy
    trusts them: one index past the end reads or writes memory it does not own)."""
    dense, sparse = {"vectors"}, {"data", "indices", "indptr", "shape"}
    if set(arrays) not in (dense, sparse):
        raise ValueError(
            f"holds tensors {sorted(arrays)}; expected 'vectors', or 'data', 'indices', 'indptr' and 'shape'"
        )

    def expect(name: str, dtype: torch.dtype, rank: int) -> np.ndarray:
        t = arrays[name]
        if t.dtype != dtype or t.dim() != rank:
            raise ValueError(f"{name!r} is a {t.dim()}-D {t.dtype} tensor; expected {rank}-D {dtype}")
        return t.numpy()

    kind = "sparse" if embedder.sparse else "dense"
    if set(arrays) == dense:
        vectors = expect("vectors", torch.float32, 2)
        if embedder.sparse:
            raise ValueError(f"holds dense vectors, but its embedder makes {kind} ones")
        if vectors.shape[0] != count:
            raise ValueError(f"'vectors' holds {vectors.shape[0]} rows, but index.json says count {count}")
        if vectors.shape[1] != embedder.dim:
            raise ValueError(
                f"'vectors' is {vectors.shape[1]} wide; the embedder's vectors are {embedder.dim}"
            )
        if not np.isfinite(vectors).all():
            raise ValueError("'vectors' holds NaN or infinite values")
        return arrays
    if not embedder.sparse:
        raise ValueError(f"holds sparse vectors, but its embedder makes {kind} ones")
    shape = expect("shape", torch.int64, 1)
    if len(shape) == 2 and shape[0] != count:
        raise ValueError(f"'shape' says {shape[0]} rows, but index.json says count {count}")
    if shape.tolist() != [count, embedder.dim]:
        raise ValueError(f"'shape' is {shape.tolist()}; expected [{count}, {embedder.dim}]")
    data, indices = expect("data", torch.float32, 1), expect("indices", torch.int64, 1)
    check_compressed(expect("indptr", torch.int64, 1), indices, data, count, embedder.dim, "rows")
    return arrays


def check_compressed(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n_major: int, n_minor: int, major: str
) -> None:
    """The invariants of a CSR (or CSC) matrix of ``n_major`` rows (columns) by ``n_minor``: ``indptr``
    has n_major + 1 entries from 0 up to the number of stored values, never decreasing; ``indices``
    are in [0, n_minor); ``data`` is finite. Raises ValueError naming the first that fails."""
    if len(indptr) != n_major + 1:
        raise ValueError(f"'indptr' has {len(indptr)} entries; {n_major} {major} need {n_major + 1}")
    if len(indices) != len(data):
        raise ValueError(f"'indices' has {len(indices)} entries and 'data' {len(data)}; they must match")
    if indptr[0] != 0 or indptr[-1] != len(indices):
        raise ValueError(f"'indptr' runs from {indptr[0]} to {indptr[-1]}; expected 0 to {len(indices)}")
    if (np.diff(indptr) < 0).any():
        raise ValueError("'indptr' decreases somewhere; it must never decrease")
    if len(indices) and (indices.min() < 0 or indices.max() >= n_minor):
        raise ValueError(
            f"'indices' runs from {indices.min()} to {indices.max()}; expected 0 to {n_minor - 1}"
        )
    if not np.isfinite(data).all():
        raise ValueError("'data' holds NaN or infinite values")


def checked_reviews(table: pa.Table, path: Path, count: int) -> pa.Table:
    """The four columns of ``reviews.parquet``, once they have the right types, no nulls, ``count``
    rows and unique keys."""
    for name, is_type in REVIEW_COLUMNS.items():
        if name not in table.column_names:
            raise SearchIndexError(
                f"{path} lacks the column {name!r} (it has {', '.join(table.column_names) or 'none'}); "
                f"{REMEDY}"
            )
        column = table.column(name)
        if not is_type(column.type) and not (
            name in ("key", "text") and pa.types.is_large_string(column.type)
        ):
            raise SearchIndexError(f"{path}: column {name!r} is of type {column.type}; {REMEDY}")
        if column.null_count:
            raise SearchIndexError(f"{path}: column {name!r} has {column.null_count} nulls; {REMEDY}")
    if table.num_rows != count:
        raise SearchIndexError(
            f"{path} holds {table.num_rows} reviews, but index.json says {count}; {REMEDY}"
        )
    try:
        check_unique_keys(table.column("key"))
    except InputError as err:
        raise SearchIndexError(f"{path}: {err}; {REMEDY}") from None
    return table.select(list(REVIEW_COLUMNS))


def check_lexical(retriever, path: Path, count: int) -> None:  # retriever: a bm25s.BM25
    """The BM25 index as ``bm25s`` loaded it, once its arrays are a CSC matrix of (documents, words)
    over ``count`` documents and its vocabulary points inside it (bm25s indexes with them unchecked)."""
    scores = retriever.scores
    try:
        num_docs = scores.get("num_docs")
        if isinstance(num_docs, bool) or not isinstance(num_docs, int) or num_docs != count:
            raise ValueError(f"params.index.json: num_docs is {num_docs!r}; the index holds {count} reviews")
        arrays = {}
        for name, kind in (("data", "f"), ("indices", "iu"), ("indptr", "iu")):
            a = scores.get(name)
            if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype.kind not in kind:
                what = f"a {a.ndim}-D {a.dtype} array" if isinstance(a, np.ndarray) else type(a).__name__
                raise ValueError(f"{name}.csc.index.npy holds {what}; expected a 1-D {kind} array")
            arrays[name] = a
        words = len(arrays["indptr"]) - 1
        if words < 0:
            raise ValueError("indptr.csc.index.npy is empty")
        try:
            check_compressed(arrays["indptr"], arrays["indices"], arrays["data"], words, count, "words")
        except ValueError as err:
            raise ValueError(f"its arrays (*.csc.index.npy): {err}") from None
        vocab = retriever.vocab_dict
        # ids run over the stored words, and bm25s gives the empty word the one past them
        if not isinstance(vocab, dict) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= words for i in vocab.values()
        ):
            raise ValueError(f"vocab.index.json must map words to ids in [0, {words}]")
        for name in ("dtype", "int_dtype"):
            np.dtype(getattr(retriever, name))  # a dtype that numpy does not know is refused here
        if np.dtype(retriever.dtype).kind != "f" or np.dtype(retriever.int_dtype).kind not in "iu":
            raise ValueError(
                f"params.index.json: dtypes {retriever.dtype}, {retriever.int_dtype} are unusable"
            )
        if retriever.nonoccurrence_array is not None:
            raise ValueError(f"params.index.json: method {retriever.method!r} is not what embed builds")
    except (ValueError, TypeError) as err:
        raise SearchIndexError(f"{path}: {err}; {REMEDY}") from None


def vector_arrays(vectors: Vectors) -> dict[str, torch.Tensor]:
    """The tensors ``vectors.safetensors`` holds: ``vectors``, or a CSR matrix's three arrays and shape."""
    if not sp.issparse(vectors):
        return {"vectors": vectors.contiguous()}
    return {
        "data": torch.from_numpy(vectors.data.astype(np.float32)),
        "indices": torch.from_numpy(vectors.indices.astype(np.int64)),
        "indptr": torch.from_numpy(vectors.indptr.astype(np.int64)),
        "shape": torch.tensor(vectors.shape, dtype=torch.int64),
    }


def vectors_from_arrays(arrays: dict[str, torch.Tensor]) -> Vectors:
    if "vectors" in arrays:
        return arrays["vectors"]
    matrix = (arrays["data"].numpy(), arrays["indices"].numpy(), arrays["indptr"].numpy())
    return sp.csr_matrix(matrix, shape=tuple(arrays["shape"].tolist()))
