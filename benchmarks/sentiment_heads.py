"""Classifier heads over one frozen backbone side by side on validation, from one pass of the backbone.

    python benchmarks/sentiment_heads.py --backbone RUN/backbone --source ../shared/data/imdb \
        --runs runs/heads --out docs/results/sentiment_heads.json

Each variant is a ``SentimentClassifier`` (the model of ``configs/classify.yaml``) with its own
options, trained by Lightning as ``fit --config configs/classify.yaml`` trains it (the config's epochs,
seed, learning rate, batch size and validation split, precision from the hardware), keeping the
checkpoint with the best ``val/acc``. The frozen backbone's features of each review (pooled states, token
ids and token states) are computed once, by the first variant, and every later variant reads them:
a variant costs its head's epochs, not a pass of the backbone. ``--ensemble NAME=A|B`` also scores the
mean of variants' probabilities (what ``classify --classifier A --classifier B`` computes). The table
gives each one's validation accuracy and McNemar's test against every other; the checkpoints stay
under ``--runs`` for ``sentiment_test.py`` to read the test split with.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from common import Record, add_ensembles, add_out_argument, ensemble_argument, mcnemar_table
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from imdb_transformer import hardware
from imdb_transformer.data import ReviewsDataModule
from imdb_transformer.models import SentimentClassifier

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "classify.yaml"

DEFAULT_VARIANTS = [
    # the first variant reads everything later ones need: pooled features and token states
    "pooled + word votes in context=--model.lexical context",
    "pooled states alone=--model.lexical off",
    "word votes alone (bag of pieces)=--model.pooled false --model.lexical bag",
]


def variant(value: str) -> tuple[str, dict]:
    """``NAME=--model.KEY VALUE ...``: the variant's name and its ``SentimentClassifier`` options."""
    name, sep, options = value.partition("=")
    words = shlex.split(options)
    if not sep or not name.strip() or len(words) % 2:
        raise argparse.ArgumentTypeError(f"expected NAME=--model.KEY VALUE ..., got {value!r}")
    kwargs = {}
    for key, text in zip(words[::2], words[1::2], strict=True):
        if not key.startswith("--model."):
            raise argparse.ArgumentTypeError(f"{key}: only --model.KEY options vary between heads")
        kwargs[key.removeprefix("--model.")] = _value(text)
    return name.strip(), kwargs


def _value(text: str) -> object:
    """A command-line value as the CLI reads it: ``true``/``false``, a number, else the word itself
    (``off`` stays a word, as jsonargparse keeps it for a string option)."""
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@torch.no_grad()
def val_probabilities(model: SentimentClassifier, data: ReviewsDataModule) -> tuple[np.ndarray, np.ndarray]:
    """The model's probabilities and the labels of the validation reviews, from the cached features."""
    model.eval()
    probs, labels = [], []
    for batch in data.val_dataloader():
        logits = model.classify(model._cached_features(batch, "val"))
        probs.append(torch.sigmoid(logits.float()))
        labels.append(batch["label"])
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", required=True, help="the frozen backbone (export folder or checkpoint)")
    parser.add_argument("--source", default="stanfordnlp/imdb", help="dataset id or local parquet folder")
    parser.add_argument("--runs", required=True, type=Path, help="folder for each variant's checkpoints")
    parser.add_argument(
        "--variant", action="append", type=variant,
        help="NAME=--model.KEY VALUE ...; repeat (default: the ablation's three heads)",
    )  # fmt: skip
    parser.add_argument(
        "--ensemble", action="append", type=ensemble_argument, default=[],
        help="NAME=A|B: the mean of variants A and B; repeat",
    )  # fmt: skip
    parser.add_argument("--max_epochs", type=int, default=None, help="default: the config's")
    parser.add_argument("--max_reviews", type=int, default=None, help="a sample of train: for smoke runs")
    parser.add_argument(
        "--windows", action="store_true",
        help="read every window of a long review, not its head and tail (--data.windows true)",
    )  # fmt: skip
    parser.add_argument("--cache_dir", default="~/.cache/imdb_transformer", help="tokenised reviews' cache")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    variants = args.variant or [variant(v) for v in DEFAULT_VARIANTS]
    names = [name for name, _ in variants]
    for name, members in args.ensemble:
        if unknown := [m for m in members if m not in names]:
            parser.error(f"--ensemble {name}: no variant named {unknown[0]!r}; variants: {', '.join(names)}")
    if args.runs.exists() and any(args.runs.iterdir()):
        parser.error(f"--runs {args.runs} is not empty: give a new folder")

    config = yaml.safe_load(CONFIG.read_text())
    model_defaults = config["model"]["init_args"]
    max_epochs = args.max_epochs or config["trainer"]["max_epochs"]
    data = ReviewsDataModule(
        source=args.source,
        backbone=args.backbone,
        batch_size=config["data"]["init_args"]["batch_size"],
        max_reviews=args.max_reviews,
        cache_dir=args.cache_dir,
        windows=args.windows,
    )
    data.prepare_data()
    data.setup("fit")
    record = Record("sentiment_heads")
    record.notes.update(
        backbone=str(args.backbone), max_epochs=max_epochs, config=str(CONFIG.name), windows=args.windows
    )
    features = None  # the first variant's cache of frozen features, read by every later one
    probabilities: dict[str, np.ndarray] = {}
    table = record.table("validation", ["head", "options", "val acc", "best epoch", "seconds"])
    for name, kwargs in variants:
        L.seed_everything(config["seed_everything"], verbose=False)
        model = SentimentClassifier(backbone=args.backbone, **{**model_defaults, **kwargs})
        if features is not None:
            model._features = features
        folder = args.runs / name.replace(" ", "_").replace("/", "_")
        checkpoint = ModelCheckpoint(dirpath=folder, monitor="val/acc", mode="max", filename="best-{epoch}")
        trainer = L.Trainer(
            max_epochs=max_epochs,
            precision=hardware.default_precision("cpu" if not torch.cuda.is_available() else "gpu"),
            callbacks=[checkpoint],
            logger=CSVLogger(folder, name="", version=""),
            log_every_n_steps=config["trainer"]["log_every_n_steps"],
            enable_model_summary=False,
        )
        started = time.perf_counter()
        trainer.fit(model, datamodule=data)
        seconds = time.perf_counter() - started
        features = features or model._features
        best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)
        model.load_state_dict(best["state_dict"])
        probabilities[name], labels = val_probabilities(model, data)
        table.add(
            name,
            " ".join(f"--model.{k} {v}" for k, v in kwargs.items()),
            f"{((probabilities[name] > 0.5) == labels).mean():.2%}",
            best["epoch"],
            round(seconds),
        )
        print(f"{name}: best {checkpoint.best_model_path}", flush=True)
    for name, members in add_ensembles(probabilities, args.ensemble).items():
        accuracy = ((probabilities[name] > 0.5) == labels).mean()
        table.add(name, "mean of " + " | ".join(members), f"{accuracy:.2%}", "", "")
    mcnemar_table(record, {name: (p > 0.5) == labels for name, p in probabilities.items()})
    record.save(args.out)


if __name__ == "__main__":
    main()
