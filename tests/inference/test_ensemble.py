"""Both directions: a backward LM's data, its backbone, and forward + backward classifier ensembles."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from conftest import tiny_pretrain_args
from helpers import REPO, classifier_checkpoint, fails, run_cli, train_blocks

from imdb_transformer.core.backbone import load_backbone, load_spec
from imdb_transformer.data.lm import pack, reverse_each
from imdb_transformer.data.reviews import ReviewsDataModule
from imdb_transformer.ensemble import Reading, SentimentEnsemble
from imdb_transformer.errors import InputError
from imdb_transformer.text.batching import collate_reviews, collate_windows
from imdb_transformer.text.imdb import load_reviews
from imdb_transformer.text.tokenizer import EOS_ID


def test_a_reversed_review_round_trips() -> None:
    reviews = pa.array([[1, 2, 3], [4], [], [5, 6]], pa.list_(pa.int32()))
    assert reverse_each(reviews).to_pylist() == [[3, 2, 1], [4], [], [6, 5]]
    assert reverse_each(reverse_each(reviews)).to_pylist() == reviews.to_pylist()


def test_the_backward_stream_reverses_each_review_and_keeps_them_in_order() -> None:
    reviews = [[10, 11, 12], [20, 21], [30, 31, 32, 33]]
    stream = pack(reviews, block_size=3, reverse=True).reshape(-1).tolist()
    assert stream == [12, 11, 10, EOS_ID, 21, 20, EOS_ID, 33, 32, 31, 30, EOS_ID]
    forward = pack(reviews, block_size=3).reshape(-1).tolist()
    assert forward == [10, 11, 12, EOS_ID, 20, 21, EOS_ID, 30, 31, 32, 33, EOS_ID]


def test_a_backward_backbone_reads_reviews_reversed() -> None:
    items = [{"ids": [5, 6, 7]}]
    assert collate_reviews(items, 16, reverse=True)["ids"][0].tolist() == [EOS_ID, 7, 6, 5, EOS_ID]
    assert collate_reviews(items, 16)["ids"][0].tolist() == [EOS_ID, 5, 6, 7, EOS_ID]


@pytest.fixture(scope="session")
def backward_run(imdb_dir: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny backward LM pretrained through the real console script (``--data.reverse true``)."""
    root = tmp_path_factory.mktemp("backward")
    run_cli(
        "fit", *tiny_pretrain_args(imdb_dir, cache_dir, root), "--data.reverse", "true",
        "--trainer.val_check_interval", "15",
    )  # fmt: skip
    return root / "lightning_logs" / "version_0"


def test_backward_pretraining_sees_every_review_reversed_and_records_it(
    backward_run: Path, pretrained_run: Path, imdb_dir: Path, cache_dir: Path
) -> None:
    spec = load_spec(backward_run / "backbone")
    assert spec.config.reverse and "backward" in spec.signature
    assert not load_spec(pretrained_run / "backbone").config.reverse
    assert load_spec(pretrained_run / "backbone").tokenizer.to_bytes() == spec.tokenizer.to_bytes()  # shared

    def reviews(run: Path) -> list[list[int]]:
        stream = train_blocks(run / "config.yaml").reshape(-1).tolist()
        cut = [i for i, t in enumerate(stream) if t == EOS_ID]
        return [stream[a + 1 : b] for a, b in zip(cut, cut[1:], strict=False)]  # whole reviews only

    forward, backward = reviews(pretrained_run), reviews(backward_run)
    assert len(forward) == len(backward) > 100
    assert all(b == f[::-1] for f, b in zip(forward, backward, strict=True))


def _classifier(backbone: Path, imdb_dir: Path, cache_dir: Path, root: Path) -> Path:
    run_cli(
        "fit", "--config", str(REPO / "configs/classify.yaml"), "--data.source", str(imdb_dir),
        "--data.cache_dir", str(cache_dir), "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false", "--model.backbone", str(backbone),
        "--trainer.max_epochs", "10", "--model.pooling", "concat", "--model.learning_rate", "1e-2",
        "--model.lexical", "off",  # the pooled head alone: members without word votes
    )  # fmt: skip
    return next((root / "lightning_logs/version_0/checkpoints").glob("best-*.ckpt"))


@pytest.fixture(scope="session")
def classifiers(
    pretrained_run: Path, backward_run: Path, imdb_dir: Path, cache_dir: Path, tmp_path_factory
) -> tuple[Path, Path]:
    """A forward and a backward classifier checkpoint, trained through the real console script."""
    forward = _classifier(pretrained_run / "backbone", imdb_dir, cache_dir, tmp_path_factory.mktemp("fwd"))
    backward = _classifier(backward_run / "backbone", imdb_dir, cache_dir, tmp_path_factory.mktemp("bwd"))
    return forward, backward


def test_the_backward_classifiers_data_is_reversed(
    backward_run: Path, imdb_dir: Path, cache_dir: Path
) -> None:
    dm = ReviewsDataModule(str(imdb_dir), str(cache_dir), backbone=str(backward_run / "backbone"))
    dm.prepare_data()
    dm.setup("fit")
    assert dm.reverse
    item = dm.splits["val"][0]
    assert next(iter(dm.val_dataloader()))["ids"][0].tolist()[1 : len(item["ids"]) + 1] == item["ids"][::-1]


def test_ensemble_probabilities_are_the_mean_of_the_members(
    classifiers: tuple[Path, Path], imdb_dir: Path
) -> None:
    texts = load_reviews(str(imdb_dir), "test").texts[:12]
    both = SentimentEnsemble(list(classifiers))
    alone = [SentimentEnsemble([c]).probabilities(texts, batch_size=5, progress=False) for c in classifiers]
    members = both.member_probabilities(texts, batch_size=5, progress=False)
    assert torch.allclose(members, torch.stack(alone))
    assert torch.allclose(both.probabilities(texts, progress=False), (alone[0] + alone[1]) / 2)
    assert not torch.allclose(alone[0], alone[1])  # two different models, really averaged
    contexts = [member.backbone.config.block_size for member in both.members]
    assert both.readings == [Reading(c, windows=False) for c in contexts]  # as their training data read


def test_classifiers_sharing_a_frozen_backbone_run_it_once_per_batch(
    pretrained_run: Path, imdb_dir: Path, tmp_path: Path
) -> None:
    """Members over the same backbone (pooled, word votes in context, a plain bag) are scored from
    one backbone pass per batch, with the probabilities each gives alone."""
    kinds = [{}, {"pooled": False, "lexical": "context"}, {"pooled": False, "lexical": "bag"}, {"layers": 2}]
    paths = [
        classifier_checkpoint(pretrained_run / "backbone", tmp_path / f"member{i}.ckpt", **settings)
        for i, settings in enumerate(kinds)
    ]
    texts = load_reviews(str(imdb_dir), "test").texts[:12]
    alone = [SentimentEnsemble([p]).member_probabilities(texts, 5, progress=False)[0] for p in paths]
    together = SentimentEnsemble(paths)
    read = []  # the rows the backbones read: their token embeddings see each batch
    for member in together.members:
        member.backbone.wte.register_forward_hook(lambda module, args, out: read.append(args[0].shape[0]))
    words: list = []
    members = together.member_probabilities(texts, 5, progress=False, words=words)
    assert sum(read) == len(texts)  # one pass for all four members
    assert torch.allclose(members, torch.stack(alone), atol=1e-5)
    assert all(words)  # the word votes still explain each text


def test_a_forward_backward_ensemble_prints_its_test_accuracy(
    classifiers: tuple[Path, Path], imdb_dir: Path
) -> None:
    forward, backward = classifiers
    out = run_cli(
        "classify", "--classifier", str(forward), "--classifier", str(backward), "--split", "test",
        "--source", str(imdb_dir),
    ).stdout  # fmt: skip
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in out.splitlines()[2:]}
    assert [name.split(" (")[1] for name in rows] == ["forward)", "backward)", "mean of 2)"]
    printed = [float(v.rstrip("%")) / 100 for v in rows.values()]
    test = load_reviews(str(imdb_dir), "test")  # the official split: 80 reviews here
    members = SentimentEnsemble([forward, backward]).member_probabilities(test.texts, progress=False)
    labels = torch.tensor(test.labels)
    expected = [((p > 0.5).long() == labels).float().mean().item() for p in (*members, members.mean(0))]
    assert printed == pytest.approx(expected, abs=1e-4)


def test_classify_labels_texts_from_arguments_and_files(
    classifiers: tuple[Path, Path], tmp_path: Path
) -> None:
    forward, _ = classifiers
    out = run_cli("classify", "--classifier", str(forward), "great", "awful and boring").stdout
    old = run_cli("classify", "--checkpoint", str(forward), "great", "awful and boring")  # the old name
    assert old.stdout == out and "note: --checkpoint is the old name of --classifier" in old.stderr
    lines = out.strip().splitlines()
    assert len(lines) == 3 and lines[1].split("\t")[1] in ("pos", "neg") and "awful" in lines[2]
    (tmp_path / "texts.txt").write_text("great fun\nawful\n")
    assert len(run_cli("classify", "--classifier", str(forward), "--file", str(tmp_path / "texts.txt"))
               .stdout.strip().splitlines()) == 3  # fmt: skip
    (tmp_path / "texts.csv").write_text("review,stars\n great fun,5\nawful,1\n")
    out = run_cli(
        "classify", "--classifier", str(forward), "--file", str(tmp_path / "texts.csv"), "--column", "review"
    )
    assert len(out.stdout.strip().splitlines()) == 3


def test_the_test_benchmark_compares_classifiers_pairwise(
    classifiers: tuple[Path, Path], imdb_dir: Path, tmp_path: Path
) -> None:
    import json
    import subprocess
    import sys

    forward, backward = classifiers
    record = tmp_path / "sentiment_test.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/sentiment_test.py"), "--source", str(imdb_dir), "--tfidf",
         "--classifier", f"forward={forward}", "--classifier", str(backward), "--out", str(record),
         "--ensemble", f"mean=forward|{backward}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    saved = json.loads(record.read_text())["tables"]
    assert [row[0] for row in saved["test"]["rows"]] == ["TF-IDF + LR", "forward", str(backward), "mean"]
    pairs = saved["mcnemar"]["rows"]
    assert [row[:2] for row in pairs][:3] == [["TF-IDF + LR", "forward"], ["TF-IDF + LR", str(backward)],
                                              ["TF-IDF + LR", "mean"]]  # fmt: skip
    assert len(pairs) == 6 and pairs[3][:2] == ["forward", str(backward)]
    test = load_reviews(str(imdb_dir), "test")
    probs = SentimentEnsemble([forward, backward]).member_probabilities(test.texts, progress=False)
    right = [((p > 0.5).long() == torch.tensor(test.labels)).numpy() for p in probs]
    only_forward = int((right[0] & ~right[1]).sum())
    assert pairs[3][2] == str(only_forward) and 0.0 <= float(pairs[3][4]) <= 1.0
    mean = ((probs[0] + probs[1]) / 2 > 0.5).long() == torch.tensor(test.labels)
    assert saved["test"]["rows"][3][1] == f"{mean.float().mean().item():.2%}"


def test_explaining_needs_word_votes(classifiers: tuple[Path, Path]) -> None:
    forward, _ = classifiers  # pooled features only
    with pytest.raises(InputError, match="explaining needs a classifier with word votes"):
        SentimentEnsemble([forward]).member_probabilities(["great"], progress=False, words=[])
    assert "not for --split" in fails(
        "classify", "--classifier", str(forward), "--explain", "true", "--split", "test"
    )


def test_classify_refuses_bad_input_clearly(classifiers: tuple[Path, Path], tmp_path: Path) -> None:
    forward, _ = classifiers
    (tmp_path / "gap.txt").write_text("fine\n\nalso fine\n")
    assert "line 2 is empty" in fails(
        "classify", "--classifier", str(forward), "--file", str(tmp_path / "gap.txt")
    )
    assert "not found" in fails(
        "classify", "--classifier", str(forward), "--file", str(tmp_path / "none.txt")
    )
    (tmp_path / "t.csv").write_text("body\nfine\n")
    err = fails("classify", "--classifier", str(forward), "--file", str(tmp_path / "t.csv"))
    assert "no column 'text'" in err and "body" in err
    assert "give the texts to classify one way" in fails("classify", "--classifier", str(forward))
    assert "is empty" in fails("classify", "--classifier", str(forward), "   ")
    assert "text 2 of 2 is empty" in fails("classify", "--classifier", str(forward), "good", "\u200b")
    err = fails("classify", "--classifier", str(tmp_path / "t.csv"), "text")
    assert err.startswith("error:") and "not a checkpoint" in err
    with pytest.raises(InputError, match="at least one"):
        SentimentEnsemble([])


def test_a_backward_backbone_is_refused_for_generation(backward_run: Path) -> None:
    err = fails("generate", "--backbone", str(backward_run / "backbone"), "--prompt", "The film")
    assert "backward" in err
    assert load_backbone(backward_run / "backbone").decoder.config.reverse


def test_words_join_their_pieces_and_byte_fallback_pieces_decode() -> None:
    from imdb_transformer.ensemble import _add_word_shares

    pieces = ["<s>", "\u2581N", "<0x6F>", "t", "\u2581bad", "<0x2C>", "\u2581", "<0xC3>", "<0xA9>", "t", "é"]
    pieces.append("</s>")
    shares = [9.0, 0.1, 0.2, 0.3, -1.0, 0.5, 0.01, 0.02, 0.03, 0.04, 0.05, 9.0]
    words: dict[str, float] = {}
    _add_word_shares(words, pieces, shares, 1.0)
    assert words == pytest.approx({"Not": 0.6, "bad": -1.0, ",": 0.5, "été": 0.15})


def _windowed(
    backbone: Path, path: Path, windows: object = True, max_length: object = 12, **settings
) -> Path:
    """A classifier checkpoint whose training data read reviews ``max_length`` tokens at a time."""
    classifier_checkpoint(backbone, path, **settings)
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["datamodule_hyper_parameters"] = {"windows": windows, "max_length": max_length}
    torch.save(checkpoint, path)
    return path


def test_a_classifier_trained_on_windows_reads_every_window_of_a_review(
    pretrained_run: Path, imdb_dir: Path, tmp_path: Path
) -> None:
    """Classifying reads a review as the classifier's training data did: every window of it, so a word
    past the head and tail changes the verdict, and the token shares of a review's windows sum to its
    logit."""
    backbone = pretrained_run / "backbone"
    kinds = {"pooled": False, "lexical": "context"}
    windowed = _windowed(backbone, tmp_path / "windows.ckpt", **kinds)
    plain = _windowed(backbone, tmp_path / "plain.ckpt", windows=False, **kinds)
    ensemble = SentimentEnsemble([windowed])
    assert ensemble.readings == [Reading(12, windows=True)]
    assert ensemble.context == sys.maxsize  # batches are sized by each text's whole length
    member = ensemble.members[0]
    words = "a b c d e f g h i j k l m n o p q r s t u v w x y z".split() * 2
    texts = [" ".join(words), " ".join(words[:12] + ["terrible", "awful"] + words[14:]), "great"]
    ids = member.tokenizer.encode(texts)
    assert len(ids[0]) > 40  # several windows of 10 tokens, and a middle that head and tail leave out
    batch = collate_windows([{"ids": i} for i in ids], 12)
    with torch.no_grad():
        logits = member.classify(member.features(batch["ids"], batch["mask"], batch["owner"]))
    got = ensemble.member_probabilities(texts, progress=False)[0]
    assert torch.allclose(got, torch.sigmoid(logits), atol=1e-6)
    assert not torch.isclose(got[0], got[1])  # the changed middle counts
    heads_tails = SentimentEnsemble([plain]).member_probabilities(texts, progress=False)[0]
    assert torch.isclose(heads_tails[0], heads_tails[1])  # head and tail alone never see it
    explained, token_shares = member.explain(batch["ids"], batch["mask"], batch["owner"])
    per_review = torch.zeros(len(texts)).index_add_(0, batch["owner"], token_shares.sum(1))
    assert torch.allclose(explained, logits) and torch.allclose(per_review, logits - member.lexical.bias)
    shares: list = []
    ensemble.member_probabilities(texts, progress=False, words=shares)
    for text, found in zip(texts, shares, strict=True):
        assert found and set(found) <= set(text.split())  # whole words, windows joined into one text
    assert {"terrible", "awful"} <= set(shares[1])


def test_members_reading_reviews_differently_do_not_share_a_batch(
    pretrained_run: Path, imdb_dir: Path, tmp_path: Path
) -> None:
    backbone = pretrained_run / "backbone"
    paths = [
        _windowed(backbone, tmp_path / "a.ckpt", windows=True, max_length=12),
        _windowed(backbone, tmp_path / "b.ckpt", windows=False, max_length=None),
        classifier_checkpoint(backbone, tmp_path / "c.ckpt"),  # no data settings: head and tail
    ]
    together = SentimentEnsemble(paths)
    assert together.groups == [[0], [1, 2]]
    texts = load_reviews(str(imdb_dir), "test").texts[:6]
    alone = [SentimentEnsemble([p]).member_probabilities(texts, 4, progress=False)[0] for p in paths]
    assert torch.allclose(
        together.member_probabilities(texts, 4, progress=False), torch.stack(alone), atol=1e-5
    )


@pytest.mark.parametrize(("windows", "max_length"), [("yes", 12), (True, 2), (False, "long"), (True, True)])
def test_a_checkpoint_with_odd_data_settings_is_refused(
    pretrained_run: Path, tmp_path: Path, windows: object, max_length: object
) -> None:
    path = _windowed(pretrained_run / "backbone", tmp_path / "odd.ckpt", windows, max_length)
    with pytest.raises(InputError, match="data settings .* are not a way to read a review"):
        SentimentEnsemble([path])
