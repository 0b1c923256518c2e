"""The SentencePiece tokenizer: special ids, round trips, the on-disk cache, byte lengths."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imdb_transformer.text.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, fit_or_load

TEXTS = [
    "This movie was GREAT! Loved it.",
    "Terrible, boring film... why?",
    "Mr. Smith seems to act well; 10/10 from me.",
] * 40


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return fit_or_load(TEXTS, tmp_path_factory.mktemp("tok"), vocab_size=320, model_type="unigram")


def test_special_ids_are_fixed(tokenizer: Tokenizer) -> None:
    sp = tokenizer.sp
    assert (
        (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id())
        == (PAD_ID, UNK_ID, BOS_ID, EOS_ID)
        == (0, 1, 2, 3)
    )
    assert tokenizer.decode([BOS_ID, *tokenizer.encode("Loved it."), EOS_ID, PAD_ID]) == "Loved it."


@pytest.mark.parametrize(
    "text", ["This movie was GREAT! Loved it.", "Mr. Smith seems to act well?", "Unseen: café ☃ 42 <3"]
)
def test_round_trip_keeps_case_punctuation_and_unseen_characters(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    assert UNK_ID not in ids  # byte fallback: nothing is unknown
    assert tokenizer.decode(ids) == text


def test_batched_encode_matches_one_by_one(tokenizer: Tokenizer) -> None:
    assert tokenizer.encode(TEXTS[:3]) == [tokenizer.encode(t) for t in TEXTS[:3]]


def test_cache_is_keyed_on_texts_and_settings(tokenizer: Tokenizer) -> None:
    cache = tokenizer.path.parent
    mtime = tokenizer.path.stat().st_mtime_ns
    again = fit_or_load(TEXTS, cache, vocab_size=320, model_type="unigram")
    assert again.path == tokenizer.path and again.path.stat().st_mtime_ns == mtime  # not refit
    assert fit_or_load(TEXTS, cache, vocab_size=300, model_type="unigram").path != tokenizer.path
    assert fit_or_load(TEXTS[:60], cache, vocab_size=320, model_type="unigram").path != tokenizer.path
    assert fit_or_load(TEXTS, cache, vocab_size=320, model_type="bpe").path != tokenizer.path
    assert not list(cache.glob(".*tmp"))  # no temporary files left behind


def test_token_bytes_sum_to_the_text_length(tokenizer: Tokenizer) -> None:
    text = "This movie was GREAT! Loved it. café"
    sizes = tokenizer.token_bytes()
    assert len(sizes) == tokenizer.vocab_size and sizes[EOS_ID] == 0
    # one extra byte: the word-boundary marker SentencePiece puts before the first word
    assert int(sizes[tokenizer.encode(text)].sum()) == len(text.encode()) + 1


def test_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer model"):
        Tokenizer(tmp_path / "nope.model")


def test_a_fit_says_how_long_it_took_and_a_cached_one_says_nothing(tmp_path: Path) -> None:
    said: list[str] = []
    fit_or_load(TEXTS, tmp_path, vocab_size=320, model_type="unigram", say=said.append)
    assert said[0].startswith("Fitting a unigram tokenizer (320 pieces)")
    assert re.fullmatch(r"Fit the tokenizer in \d+ s on \d+ cores", said[1]) and len(said) == 2
    said.clear()
    fit_or_load(TEXTS, tmp_path, vocab_size=320, model_type="unigram", say=said.append)
    assert said == []
