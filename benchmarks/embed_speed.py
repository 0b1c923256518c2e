"""Embedding throughput: reviews/s of a backbone's document vectors in fp32 and under bf16 autocast.

    python benchmarks/embed_speed.py --backbone RUN/backbone --source ../shared/data/imdb --reviews 2000

The same training reviews (the test split stays unread) are embedded by :class:`DocumentEmbedder`
(mean pooling, or ``--adapter``'s head) in each precision, in alternating rounds; each precision's median
round counts. The table gives reviews/s, the ratio to the first precision given (fp32 by default), and how
far each precision's vectors are from that one's (the smallest cosine between a review's two vectors). The
timed work includes tokenising the reviews, which a faster device does not speed up.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from common import Record, add_out_argument
from train_speed import sync

from imdb_transformer.core.backbone import load_backbone
from imdb_transformer.embedder import DocumentEmbedder
from imdb_transformer.hardware import describe_cpu
from imdb_transformer.text.imdb import load_reviews


def embed_in(embedder: DocumentEmbedder, texts: list[str], precision: str, batch_size: int) -> torch.Tensor:
    """The reviews' vectors (dense, float32), computed in fp32 or under bf16 autocast."""
    device = embedder.decoder.wte.weight.device.type
    autocast = (
        torch.autocast(device_type=device, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    with autocast:
        vectors = embedder.embed(texts, batch_size=batch_size, progress=False)
    return torch.as_tensor(vectors.toarray()) if hasattr(vectors, "toarray") else vectors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", required=True, help="a pretraining run's backbone/ folder")
    parser.add_argument("--adapter", default=None, help="an adapter/ folder (default: mean pooling)")
    parser.add_argument("--source", default="stanfordnlp/imdb", help="dataset id or local parquet folder")
    parser.add_argument("--reviews", type=int, default=2000, help="training reviews embedded per round")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are quoted")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    record = Record("embed_speed")
    backbone = load_backbone(args.backbone)
    head = None
    if args.adapter:
        from imdb_transformer.core.head import load_adapter

        head = load_adapter(args.adapter, backbone)
    embedder = DocumentEmbedder(backbone, head=head).to(args.device)
    texts = load_reviews(args.source, "train", max_reviews=args.reviews).texts
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else describe_cpu()
    print(f"{len(texts)} training reviews, {embedder.pooling}, batch {args.batch_size}; {where}")
    vectors = {
        p: embed_in(embedder, texts[: args.batch_size], p, args.batch_size) for p in args.precision
    }  # warm up
    times: dict[str, list[float]] = {p: [] for p in args.precision}
    for _ in range(args.rounds):
        for p in args.precision:
            sync(args.device)
            start = time.perf_counter()
            vectors[p] = embed_in(embedder, texts, p, args.batch_size)
            sync(args.device)
            times[p].append(time.perf_counter() - start)
    rates = {p: len(texts) / statistics.median(t) for p, t in times.items()}
    first = args.precision[0]
    table = record.table("embedding", ["precision", "reviews/s", f"vs {first}", f"min cosine to {first}"])
    for p, rate in rates.items():
        cosine = (vectors[p] * vectors[first]).sum(1).min().item()
        table.add(p, f"{rate:,.1f}", f"{rate / rates[first]:.2f}x", f"{cosine:.4f}")
    record.save(args.out)


if __name__ == "__main__":
    main()
