"""Throughput of ``embed`` and ``classify``'s work through ``Trainer.predict`` against the plain loop
on one device.

    python benchmarks/predict_speed.py --backbone RUN/backbone --adapter ADAPTER/adapter \
        --classifier CKPT --source ../shared/data/imdb --reviews 1000 --out docs/results/predict_speed.json

The same training reviews (the test split stays unread) go through each model both ways in alternating
rounds: :meth:`DocumentEmbedder.embed` or :meth:`SentimentEnsemble.member_probabilities` (a loop over
batches of similar length) and :func:`imdb_transformer.predict.predict` (the Trainer, its prediction
writer and the merge of the shards, what the verbs run). Each way's median round counts; the table gives
reviews/s, the ratio of the Trainer to the loop, and the largest difference between their outputs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from common import Record, add_out_argument

from imdb_transformer.core.backbone import load_backbone
from imdb_transformer.embedder import DocumentEmbedder
from imdb_transformer.hardware import describe_cpu
from imdb_transformer.predict import TrainerOptions, predict
from imdb_transformer.text.imdb import load_reviews


def dense(x: object) -> torch.Tensor:
    return torch.as_tensor(x.toarray()) if hasattr(x, "toarray") else torch.as_tensor(x)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", required=True, help="a pretraining run's backbone/ folder")
    parser.add_argument("--adapter", default=None, help="also an adapter/ folder's sparse vectors")
    parser.add_argument("--classifier", default=None, help="also a classifier's .ckpt")
    parser.add_argument("--source", default="stanfordnlp/imdb", help="dataset id or local parquet folder")
    parser.add_argument("--reviews", type=int, default=1000, help="training reviews per round")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are quoted")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    record = Record("predict_speed")
    texts = load_reviews(args.source, "train", max_reviews=args.reviews).texts
    options = TrainerOptions(accelerator="cpu")
    print(f"{len(texts)} training reviews, batch {args.batch_size}, one process; {describe_cpu()}")

    ways: dict[str, tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]] = {}
    backbone = load_backbone(args.backbone)
    models = [("embed, mean pooling", DocumentEmbedder(backbone))]
    if args.adapter:
        from imdb_transformer.core.head import load_adapter

        models.append(
            ("embed, sparse adapter", DocumentEmbedder(backbone, head=load_adapter(args.adapter, backbone)))
        )
    for name, embedder in models:
        ways[name] = (
            lambda e=embedder: dense(e.embed(texts, batch_size=args.batch_size, progress=False)),
            lambda e=embedder: dense(
                predict(e, texts, e.encode, context=e.max_length, batch_size=args.batch_size,
                        trainer=options, progress=False)["vectors"]
            ),
        )  # fmt: skip
    if args.classifier:
        from imdb_transformer.ensemble import SentimentEnsemble

        ensemble = SentimentEnsemble([args.classifier])
        context = ensemble.members[0].backbone.config.block_size
        ways["classify"] = (
            lambda: ensemble.member_probabilities(texts, args.batch_size, progress=False).T,
            lambda: predict(ensemble, texts, ensemble.encode, context=context, batch_size=args.batch_size,
                            max_tokens=8192, trainer=options, progress=False)["probabilities"],
        )  # fmt: skip

    table = record.table(
        "one process", ["work", "loop reviews/s", "Trainer.predict reviews/s", "predict / loop", "max |diff|"]
    )
    for name, (loop, trainer) in ways.items():
        times: dict[str, list[float]] = {"loop": [], "predict": []}
        outputs = {}
        for _ in range(args.rounds):
            for way, run in (("loop", loop), ("predict", trainer)):
                start = time.perf_counter()
                outputs[way] = run()
                times[way].append(time.perf_counter() - start)
        rate = {way: len(texts) / statistics.median(t) for way, t in times.items()}
        diff = (outputs["loop"] - outputs["predict"]).abs().max().item()
        table.add(name, f"{rate['loop']:,.1f}", f"{rate['predict']:,.1f}",
                  f"{rate['predict'] / rate['loop']:.3f}x", f"{diff:.1e}")  # fmt: skip
    record.save(args.out)


if __name__ == "__main__":
    main()
