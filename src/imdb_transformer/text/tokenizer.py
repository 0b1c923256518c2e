"""A SentencePiece subword tokenizer with fixed special ids, fit once and cached on disk.

SentencePiece learns its pieces from raw text (no hand-written regex), keeps case and
punctuation, and falls back to bytes, so no input is ever "unknown" and decode(encode(x)) gives
the (whitespace-normalised) text back.
"""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

import datasets
import sentencepiece as spm
import torch

from imdb_transformer.artifacts import atomic_path, cache_key, corpus_fingerprint
from imdb_transformer.errors import InputError
from imdb_transformer.hardware import usable_cores

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
ModelType = Literal["unigram", "bpe"]
_CACHE_VERSION = "1"  # bump when the training settings below change


class Tokenizer:
    """A loaded SentencePiece model. ``pad=0, unk=1, bos=2, eos=3`` in every model we fit.

    Load one from a ``.model`` file (``Tokenizer(path)``) or from its bytes (``Tokenizer.from_bytes``),
    as stored inside checkpoints.
    """

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, path: str | os.PathLike) -> None:
        self.path: Path | None = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"tokenizer model {str(self.path)!r} not found")
        self.sp = spm.SentencePieceProcessor(model_file=str(self.path))

    @classmethod
    def from_bytes(cls, model: bytes) -> Tokenizer:
        """A tokenizer from the bytes of a ``.model`` file (``path`` is then None)."""
        tokenizer = cls.__new__(cls)
        tokenizer.path = None
        tokenizer.sp = spm.SentencePieceProcessor(model_proto=model)
        return tokenizer

    def to_bytes(self) -> bytes:
        """The serialised model: write it to a ``.model`` file, or keep it inside a checkpoint."""
        return self.sp.serialized_model_proto()

    def save(self, path: str | os.PathLike) -> None:
        """Write the model to ``path`` (atomically)."""
        with atomic_path(path) as tmp:
            tmp.write_bytes(self.to_bytes())

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str | list[str], num_threads: int | None = None) -> list[int] | list[list[int]]:
        """Token ids of one text, or of each text in a list (encoded in ``num_threads`` threads, by
        default one per core; a list of one is encoded without starting sentencepiece's thread pool)."""
        if isinstance(text, list) and len(text) == 1:
            return [self.sp.encode(text[0])]
        return self.sp.encode(text, num_threads=num_threads or usable_cores())

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """The piece each id stands for (``▁`` marks a leading space), for showing tokens."""
        return [self.sp.id_to_piece(int(i)) for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a sequence of ids; special ids (pad, bos, eos) decode to nothing."""
        return self.sp.decode([int(i) for i in ids])

    def token_bytes(self) -> torch.Tensor:
        """UTF-8 byte length of each piece (0 for special ids), for bits-per-byte metrics."""
        sizes = []
        for i in range(self.vocab_size):
            if self.sp.is_control(i) or self.sp.is_unknown(i):
                sizes.append(0)
            elif self.sp.is_byte(i):
                sizes.append(1)
            else:
                sizes.append(len(self.sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8")))
        return torch.tensor(sizes, dtype=torch.long)

    @classmethod
    def fit(
        cls,
        texts: Iterable[str],
        path: str | os.PathLike,
        vocab_size: int = 8192,
        model_type: ModelType = "unigram",
    ) -> Tokenizer:
        """Train a SentencePiece model on ``texts`` and write it atomically to ``path``."""
        model = io.BytesIO()
        try:
            _train(model, texts, vocab_size, model_type)
        except RuntimeError as err:
            raise _training_error(err, vocab_size) from None
        with atomic_path(path) as tmp:
            tmp.write_bytes(model.getvalue())
        return cls(path)


def _train(model: io.BytesIO, texts: Iterable[str], vocab_size: int, model_type: ModelType) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        byte_fallback=True,  # unseen characters become bytes, never <unk>
        character_coverage=0.9995,
        split_digits=True,
        max_sentence_length=1 << 16,  # one review is one "sentence"; the longest is ~14 kB
        hard_vocab_limit=False,  # a small corpus may yield fewer pieces than asked for
        num_threads=usable_cores(),  # the cores this process may use, not the machine's
        minloglevel=2,
    )


def _training_error(err: RuntimeError, vocab_size: int) -> InputError:
    """SentencePiece's refusal to train, in the project's words."""
    detail = str(err).splitlines()[0]
    need = re.search(r"smaller than required_chars\. \d+ vs (\d+)", detail)
    if need:
        return InputError(
            f"--data.vocab_size {vocab_size} is too small for these texts: their characters, the 256 byte "
            f"pieces and the special tokens need {need.group(1)} pieces; use --data.vocab_size "
            f"{need.group(1)} or more"
        )
    detail = re.sub(r"^\w+: \S+\(\d+\) (\[.*?\] )?", "", detail)  # drop the C++ file and check
    return InputError(f"the tokenizer could not be fit with --data.vocab_size {vocab_size}: {detail}")


def fit_or_load(
    texts: Sequence[str],
    cache_dir: str | os.PathLike,
    vocab_size: int,
    model_type: ModelType,
    fingerprint: str | None = None,
    say: Callable[[str], object] = print,
) -> Tokenizer:
    """Return the tokenizer fit on exactly these ``texts`` and settings, fitting it only once (``say``
    announces a fit: it takes a while)."""
    fingerprint = fingerprint or corpus_fingerprint(texts)
    key = cache_key(_CACHE_VERSION, fingerprint, vocab_size, model_type)
    path = Path(cache_dir).expanduser() / f"tokenizer-{model_type}-{vocab_size}-{key}.model"
    if path.is_file():
        return Tokenizer(path)
    say(f"Fitting a {model_type} tokenizer ({vocab_size} pieces), {len(texts):,} reviews: {path}")
    started = time.monotonic()
    tokenizer = Tokenizer.fit(texts, path, vocab_size=vocab_size, model_type=model_type)
    say(f"Fit the tokenizer in {time.monotonic() - started:.0f} s on {usable_cores()} cores")
    return tokenizer


class Encode:
    """Batched tokenisation for ``datasets.map`` (picklable: each worker loads the model once)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.model = tokenizer.to_bytes()
        self._tok: Tokenizer | None = None

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if self._tok is None:
            self._tok = Tokenizer.from_bytes(self.model)
        return {"ids": self._tok.encode(batch["text"], num_threads=1)}

    def __getstate__(self) -> dict:
        return {"model": self.model, "_tok": None}


def tokenize(ds: datasets.Dataset, tokenizer: Tokenizer, num_proc: int, name: str) -> datasets.Dataset:
    """Replace the ``text`` column of ``ds`` by ``ids``, in batches over ``num_proc`` processes."""
    return ds.map(
        Encode(tokenizer),
        batched=True,
        batch_size=256,
        num_proc=min(num_proc, max(1, len(ds) // 256)),
        remove_columns=["text"],
        desc=f"Tokenising {name} reviews",
    )
