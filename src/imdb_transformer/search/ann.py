"""Approximate nearest neighbours with FAISS (the ``faiss`` extra), for dense indexes that outgrow
exact search: an HNSW graph or IVF clusters over unit vectors by inner product (= cosine)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from imdb_transformer.errors import InputError

Ann = Literal["exact", "hnsw", "ivf"]


def build_faiss(vectors: torch.Tensor, ann: Ann, neighbours: int = 32, probes: int = 16):
    """A FAISS index over unit ``vectors`` by inner product (= cosine): an HNSW graph (``neighbours``
    links a node, searched with ``efSearch`` 128) or IVF (sqrt(4N) clusters, ``probes`` searched).
    Needs the ``faiss`` extra (faiss-cpu)."""
    try:
        import faiss
    except ImportError as err:
        raise InputError(
            "approximate search needs FAISS: pip install -e '.[faiss]' (faiss-cpu), or use exact search"
        ) from err
    data = vectors.float().contiguous().numpy()
    dim = data.shape[1]
    if ann == "hnsw":
        index = faiss.IndexHNSWFlat(dim, neighbours, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.add(data)
        index.hnsw.efSearch = 128
        return index
    if ann != "ivf":
        raise InputError(f"unknown ann {ann!r}; expected exact, hnsw or ivf")
    lists = max(1, int(2 * len(data) ** 0.5))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
    sample = data[np.random.default_rng(0).permutation(len(data))[: 64 * lists]]
    index.train(sample)
    index.add(data)
    index.nprobe = probes
    return index
