"""Without the hf extra, exporting for Hugging Face fails with one line naming the extra to install."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from imdb_transformer.core.hf import export_hf
from imdb_transformer.errors import InputError


def test_exporting_without_transformers_names_the_extra(
    pretrained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    with pytest.raises(InputError, match=r'pip install -e "\.\[hf\]"'):
        export_hf(pretrained_run / "backbone", tmp_path / "out")
    assert not (tmp_path / "out").exists()
