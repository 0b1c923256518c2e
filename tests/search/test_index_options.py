"""Options out of their range are refused where they enter (the console script's option types, and the
Python API), and --help shows the ranges; a --device this machine lacks is one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import error_line, main_each

from imdb_transformer import verbs
from imdb_transformer.core.backbone import load_backbone
from imdb_transformer.embedder import DocumentEmbedder
from imdb_transformer.errors import InputError
from imdb_transformer.search import SemanticIndex
from imdb_transformer.text.imdb import load_reviews


def test_out_of_range_options_are_refused_before_anything_runs(tmp_path: Path) -> None:
    embed = ["embed", "--backbone", str(tmp_path / "none"), "--out", str(tmp_path / "index")]
    classify = ["classify", "--classifier", str(tmp_path / "none.ckpt")]
    bad = {  # argv: the option the error names
        "max_reviews -5": [*embed, "--max_reviews", "-5"],
        "max_reviews 0": [*embed, "--max_reviews", "0"],
        "alpha 1.5": [*embed, "--alpha", "1.5"],
        "alpha -0.1": [*embed, "--alpha", "-0.1"],
        "alpha nan": [*embed, "--alpha", "nan"],
        "batch_size 0": [*embed, "--batch_size", "0"],
        "batch_size -3": [*embed, "--batch_size", "-3"],
        "k 0": ["search", "--index", str(tmp_path), "-k", "0", "film"],
        "k -2": ["search", "--index", str(tmp_path), "-k", "-2", "film"],
        "classify max_reviews 0": [*classify, "--split", "test", "--max_reviews", "0"],
        "classify batch_size 0": [*classify, "--batch_size", "0", "good"],
    }
    for case, result in zip(bad, main_each(list(bad.values())), strict=True):
        stderr = result["stderr"]
        option = case.split()[-2]
        assert result["code"] != 0 and "Traceback" not in stderr, (case, stderr)
        assert sum(line.startswith("error:") for line in stderr.splitlines()) == 1, (case, stderr)
        assert f"error: --{option}: " in stderr and case.split()[-1] in stderr, (case, stderr)
        assert not (tmp_path / "index").exists()


def test_help_shows_the_ranges() -> None:
    embed, search, classify = main_each([["embed", "--help"], ["search", "--help"], ["classify", "--help"]])
    assert "--batch_size BATCH_SIZE" in embed["stdout"]
    text = " ".join(embed["stdout"].split())  # help wraps lines
    assert "(type: PositiveInt, default: 64)" in text and "(type: PositiveInt | null, default: null)" in text
    assert "(type: ClosedUnitInterval, default: 0.5)" in text
    assert "(type: PositiveInt, default: 5)" in " ".join(search["stdout"].split())
    assert "(type: PositiveInt | null, default: null)" in " ".join(classify["stdout"].split())


def test_a_device_without_cuda_or_unknown_is_one_clear_line(tmp_path: Path) -> None:
    nowhere = str(tmp_path / "none")
    runs = {
        "embed": ["embed", "--backbone", nowhere, "--out", str(tmp_path / "i"), "--device", "cuda"],
        "classify": ["classify", "--classifier", nowhere, "--device", "cuda:0", "good"],
        "generate": ["generate", "--backbone", nowhere, "--prompt", "The", "--device", "cuda"],
        "unknown": ["embed", "--backbone", nowhere, "--out", str(tmp_path / "i"), "--device", "tpu"],
    }
    results = main_each(
        list(runs.values()), env={"CUDA_VISIBLE_DEVICES": ""}, process=True
    )  # no GPU, whatever the machine
    for verb, result in zip(runs, results, strict=True):
        line = error_line(result)
        if verb == "unknown":
            assert "unknown device 'tpu'; use cpu, cuda or cuda:N" in line
        else:
            assert "CUDA is not available" in line and "use --device cpu" in line, line


def test_the_python_api_refuses_the_same(pretrained_run: Path, imdb_dir: Path, monkeypatch) -> None:
    embedder = DocumentEmbedder(load_backbone(pretrained_run / "backbone"))
    for alpha in (float("nan"), 1.5, -0.5, "0.5"):
        with pytest.raises(InputError, match=r"alpha=.* is a number in \[0, 1\]"):
            SemanticIndex.build(embedder, ["a fine film"], alpha=alpha, progress=False)
    with pytest.raises(InputError, match="batch_size=0"):
        SemanticIndex.build(embedder, ["a fine film"], batch_size=0, progress=False)
    for max_reviews in (0, -5):
        with pytest.raises(InputError, match="positive number of reviews"):
            load_reviews(str(imdb_dir), "test", max_reviews)
    index = SemanticIndex.build(embedder, ["a fine film", "a dull film"], progress=False)
    for k in (0, -1):
        with pytest.raises(InputError, match="out of range"):
            index.like("0", k)
    with pytest.raises(InputError, match="k=2 is out of range"):
        index.like("0", 2)  # only one other review
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(InputError, match="CUDA is not available"):
        verbs._device("cuda")
    assert verbs._device(None) == verbs._device("cpu") == "cpu"
