"""Data preparation wall times: fitting the tokenizer and tokenising the reviews, cold and cached.

    python benchmarks/data_prep.py --source ../shared/data/imdb

Runs in a fresh temporary cache folder (the user cache is not touched), in this order: fit the
tokenizer on the 73,500 training reviews (cold), then again (cached); tokenise all 100,000
reviews (train, test, unsupervised) with ``tokenize``; then each DataModule's ``prepare_data``
(what ``fit`` runs first) cold and cached. Prints one table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

import datasets
from common import Record, add_out_argument

from imdb_transformer.data.lm import LMDataModule
from imdb_transformer.data.reviews import ReviewsDataModule
from imdb_transformer.text.imdb import DEFAULT_SOURCE, clean_text, load_split
from imdb_transformer.text.tokenizer import tokenize


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="dataset id or local parquet folder")
    parser.add_argument("--vocab_size", type=int, default=8192)
    parser.add_argument("--block_size", type=int, default=512)
    parser.add_argument("--max_reviews", type=int, default=None, help="per split, for a quick run")
    parser.add_argument("--num_proc", type=int, default=os.cpu_count(), help="tokenising processes")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    datasets.disable_progress_bars()
    record = Record("data_prep")

    rows = []
    with tempfile.TemporaryDirectory() as cache:
        lm_args = dict(
            source=args.source, cache_dir=cache, vocab_size=args.vocab_size, block_size=args.block_size,
            max_reviews=args.max_reviews, num_proc=args.num_proc,
        )  # fmt: skip
        lm = LMDataModule(**lm_args)
        n_fit = len(lm.reviews()[0])
        cold = timed(lm.fit_tokenizer)
        cached = timed(LMDataModule(**lm_args).fit_tokenizer)
        rows.append((f"fit the tokenizer ({n_fit:,} reviews, {args.vocab_size:,} pieces)", cold, cached))

        tokenizer = lm.fit_tokenizer()
        texts = [
            clean_text(t)
            for split in ("train", "test", "unsupervised")
            for t in load_split(args.source, split)["text"][: args.max_reviews]
        ]
        everything = datasets.Dataset.from_dict({"text": texts})
        seconds = timed(lambda: tokenize(everything, tokenizer, args.num_proc, "all"))
        rows.append(
            (f"tokenize() all {len(texts):,} reviews ({len(texts) / seconds:,.0f} reviews/s)", seconds, None)
        )

        cold = timed(lm.prepare_data)
        cached = timed(LMDataModule(**lm_args).prepare_data)
        rows.append(("LMDataModule.prepare_data (tokenizer already fit): tokenise + pack", cold, cached))

        reviews_args = dict(
            source=args.source, cache_dir=cache, tokenizer=str(tokenizer.path), max_length=args.block_size,
            max_reviews=args.max_reviews, num_proc=args.num_proc,
        )  # fmt: skip
        cold = timed(ReviewsDataModule(**reviews_args).prepare_data)
        cached = timed(ReviewsDataModule(**reviews_args).prepare_data)
        rows.append(("ReviewsDataModule.prepare_data: tokenise train + test", cold, cached))

    print(f"{args.num_proc} tokenising processes, source {args.source}")
    record.notes["num_proc"] = args.num_proc
    table = record.table("data preparation", ["step", "cold (s)", "cached (s)"])
    for name, cold, cached in rows:
        table.add(name, f"{cold:.1f}", "" if cached is None else f"{cached:.1f}")
    record.save(args.out)


if __name__ == "__main__":
    main()
