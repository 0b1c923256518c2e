"""Every notebook runs top to bottom on a tiny pretraining of the synthetic data, so none can rot."""

from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat
import pytest
from helpers import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_a_tiny_config(
    path: Path, imdb_dir: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMDB_SOURCE", str(imdb_dir))
    monkeypatch.setenv("IMDB_RUN", "")  # pretrain a tiny model inside the notebook
    monkeypatch.setenv(
        "IMDB_ARGS", f"--data.vocab_size 400 --data.cache_dir {cache_dir} --data.max_reviews null"
    )
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()  # raises CellExecutionError, with the failing cell, on any error
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, "notebooks/ holds no .ipynb"
