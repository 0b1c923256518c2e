"""The ``imdb-transformer`` console script: Lightning's CLI (fit / validate / test / predict).

Every argument comes from a type-hinted signature and its docstring, so
``imdb-transformer fit --help`` (and ``--model.help CausalLM``) is the reference.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from imdb_transformer.atomic import read_artifact
from imdb_transformer.data.imdb import IMDBSourceError
from imdb_transformer.models.backbone import BackboneError, load_checkpoint


class SaveRunFiles(SaveConfigCallback):
    """Writes the resolved ``config.yaml`` and the ``tokenizer.model`` the run used into its log dir,
    so every checkpoint there can be reloaded without guessing."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        log_dir = trainer.log_dir  # a collective call under DDP: every rank must make it
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if trainer.is_global_zero and tokenizer is not None and log_dir is not None:
            tokenizer.save(Path(log_dir) / "tokenizer.model")


class ImdbCLI(LightningCLI):
    """LightningCLI with a best-and-last checkpoint always on and the data's sizes linked to the model."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-step={step}-val_loss={val/loss:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        # The tokenizer's vocabulary and the block length are data settings; the model follows them.
        for name in ("vocab_size", "block_size"):
            parser.link_arguments(f"data.init_args.{name}", f"model.init_args.{name}", apply_on="parse")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """After parsing, check ``--ckpt_path`` before Lightning reads it.

        ``--ckpt_path last`` means the newest run's ``last.ckpt``: Lightning alone looks only in
        the new run's (empty) checkpoint folder and would silently start from scratch. A missing,
        truncated or unsafe checkpoint stops here with one line naming it.
        """
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else None
        if config is None or not config.get("ckpt_path"):
            return
        if config.ckpt_path == "last":
            root = Path(config.trainer.default_root_dir or ".")
            config.ckpt_path = str(find_last_checkpoint(root))
            print(f"Resuming from {config.ckpt_path}")
        check_checkpoint(Path(config.ckpt_path))

    def before_instantiate_classes(self) -> None:
        """To evaluate an adapter (``validate``/``test``/``predict --ckpt_path``), its backbone is
        built from that checkpoint."""
        config = self.config.get(self.subcommand)
        if config is None:
            return
        init_args = config.model.get("init_args")
        if (
            self.subcommand != "fit"
            and config.ckpt_path
            and init_args is not None
            and "backbone" in init_args
        ):
            # An adapter's checkpoint holds its backbone (weights, shape, tokenizer): build from it,
            # so evaluating needs nothing but the checkpoint.
            init_args.backbone = config.ckpt_path

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer, with its default logger given a run folder claimed atomically (``mkdir``), so
        two runs started at once under the same root never share a ``version_N``."""
        trainer = super().instantiate_trainer(**kwargs)
        logger = trainer.logger
        config = self.config.get(self.subcommand, self.config)
        is_default = config.trainer.logger in (None, True) and isinstance(
            logger, (CSVLogger, TensorBoardLogger)
        )
        if (
            is_default
            and os.environ.get("LOCAL_RANK", "0") == "0"
            and os.environ.get("NODE_RANK", "0") == "0"
        ):
            root = Path(trainer.default_root_dir) / "lightning_logs"
            trainer.logger = type(logger)(
                trainer.default_root_dir, name="lightning_logs", version=claim_version(root)
            )
        return trainer


class CheckpointError(ValueError):
    """A checkpoint path that does not exist or cannot be read as a checkpoint."""


def check_checkpoint(path: Path) -> None:
    """Fail at once, naming the file, if ``path`` is missing, truncated or holds pickled code."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found")
    remedy = (
        "it may be truncated (a run killed while writing it), not a checkpoint, or hold pickled code "
        "(never run: checkpoints load with weights_only=True). Pass another, such as a best-*.ckpt beside it"
    )
    read_artifact(path, load_checkpoint, CheckpointError, remedy)


def claim_version(root: Path) -> int:
    """Create and return the next free ``root/version_N`` (``mkdir`` fails if another run took it)."""
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[8:]) for p in root.glob("version_*") if p.name[8:].isdigit()]
    n = max(taken, default=-1) + 1
    while True:
        try:
            (root / f"version_{n}").mkdir()
            return n
        except FileExistsError:
            n += 1


def find_last_checkpoint(root: Path) -> Path:
    """The most recently written ``last*.ckpt`` of the runs under ``root/lightning_logs``."""
    found = sorted(root.glob("lightning_logs/*/checkpoints/last*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise CheckpointError(
            f"--ckpt_path last: no last.ckpt under {root.resolve()}/lightning_logs/*/checkpoints; "
            "pass the path of a checkpoint instead, or the same --trainer.default_root_dir as the stopped run"
        )
    return found[-1]


def build_cli(args: list[str] | None = None, run: bool = True) -> ImdbCLI:
    """Parse ``args`` (default: ``sys.argv``) and, with ``run``, execute the subcommand."""
    # Packed blocks are tensors in memory: loading a batch is a slice, so no workers are needed.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    # Without tensorboard installed, runs log to CSV (lightning_logs/version_N/metrics.csv) on purpose.
    warnings.filterwarnings("ignore", ".*`tensorboardX` has been removed as a dependency.*")
    # A frozen backbone stays in eval mode on purpose (no dropout: the same features every epoch).
    warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode at the start of training.*")
    return ImdbCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=SaveRunFiles,
        args=args,
        run=run,
        parser_kwargs={
            "description": "Pretrain a causal transformer on IMDB and reuse it. Training and evaluation: "
            "fit, validate, test, predict. Also: `imdb-transformer embed --help` (build a search index) and "
            "`imdb-transformer search --help` (query it), "
            "`imdb-transformer generate --help` (continue a prompt)."
        },
    )


def embed_main(argv: list[str]) -> None:
    """``imdb-transformer embed``: embed a split's reviews and save them as a search index."""
    from imdb_transformer.data.imdb import DEFAULT_SOURCE, load_split, review_texts
    from imdb_transformer.models.backbone import load_backbone
    from imdb_transformer.models.embedder import DocumentEmbedder
    from imdb_transformer.search import SemanticIndex

    parser = argparse.ArgumentParser(
        prog="imdb-transformer embed",
        description="Embed the reviews of an IMDB split with a pretrained backbone and save them as a search "
        "index folder (vectors.safetensors, reviews.parquet, index.json).",
    )
    parser.add_argument(
        "--backbone", required=True, help="a pretraining run's backbone/ folder or checkpoint"
    )
    parser.add_argument("--out", required=True, help="the index folder to write")
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="dataset id or local parquet folder")
    parser.add_argument("--split", default="test", choices=["train", "test", "unsupervised"])
    parser.add_argument("--pooling", default="mean", choices=["mean", "max", "last", "concat"])
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--max_reviews", type=int, default=None, help="embed only the first N reviews")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="default: cuda if available"
    )
    args = parser.parse_args(argv)
    ds = load_split(args.source, args.split)
    texts, rows = review_texts(ds, f"{args.source}:{args.split}")
    rows = rows[: args.max_reviews]
    ids = ds["id"] if "id" in ds.column_names else list(range(len(ds)))
    labels = ds["label"]
    kept_texts, kept_ids, kept_labels = texts[: len(rows)], [ids[i] for i in rows], [labels[i] for i in rows]
    embedder = DocumentEmbedder(load_backbone(args.backbone), pooling=args.pooling).to(args.device)
    start = time.perf_counter()
    index = SemanticIndex.build(
        embedder, kept_texts, kept_ids, kept_labels, args.batch_size, backbone=args.backbone
    )
    rate = len(index) / (time.perf_counter() - start)
    print(f"Saved {len(index):,} review embeddings ({rate:.1f} reviews/s) to {index.save(args.out)}")


def search_main(argv: list[str]) -> None:
    """``imdb-transformer search``: the reviews most similar to a query, as a table."""
    from imdb_transformer.search import SemanticIndex, format_hits

    parser = argparse.ArgumentParser(
        prog="imdb-transformer search", description="Print the k reviews of an index most similar to a query."
    )
    parser.add_argument("--index", required=True, help="an index folder written by `imdb-transformer embed`")
    parser.add_argument("query", help="the text to search for")
    parser.add_argument("-k", type=int, default=5, help="how many results (default 5)")
    args = parser.parse_args(argv)
    print(format_hits(SemanticIndex.load(args.index).query(args.query, args.k)))


def generate_main(argv: list[str]) -> None:
    """``imdb-transformer generate``: continue one or more prompts with a pretrained model."""
    from imdb_transformer.generation import STRATEGIES, generate_text
    from imdb_transformer.models.backbone import load_backbone

    parser = argparse.ArgumentParser(
        prog="imdb-transformer generate",
        description="Continue review openings with a pretrained decoder (KV-cached decoding). "
        "Each --prompt gives one continuation.",
    )
    parser.add_argument(
        "--checkpoint", required=True, help="a pretraining run's backbone/ folder or one of its .ckpt files"
    )
    parser.add_argument(
        "--prompt", action="append", required=True, help="the opening of a review; repeat for several"
    )
    parser.add_argument(
        "--strategy", default="top_k", choices=STRATEGIES, help="how to pick each token (default top_k)"
    )
    parser.add_argument("--max_new_tokens", type=int, default=60, help="tokens to add at most (default 60)")
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="> 0; lower is more conservative (default 1.0)"
    )
    parser.add_argument("--top_k", type=int, default=50, help="top_k: sample among the k likeliest (50)")
    parser.add_argument(
        "--top_p", type=float, default=0.9, help="top_p: sample within this probability mass (default 0.9)"
    )
    parser.add_argument(
        "--repetition_penalty", type=float, default=1.0, help="> 1 discourages repeats (default 1.0: off)"
    )
    parser.add_argument("--seed", type=int, default=None, help="fix the sampling for repeatable output")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="default: cuda if available"
    )
    args = parser.parse_args(argv)
    backbone = load_backbone(args.checkpoint)
    backbone.decoder.to(args.device)
    continuations = generate_text(
        backbone,
        args.prompt,
        args.max_new_tokens,
        strategy=args.strategy,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )
    for i, (prompt, text) in enumerate(zip(args.prompt, continuations, strict=True), start=1):
        print(f"[{i}] {prompt}{text}\n" if len(args.prompt) > 1 else f"{prompt}{text}")


VERBS = {"embed": embed_main, "search": search_main, "generate": generate_main}


def main() -> None:
    """Entry point of the ``imdb-transformer`` console script."""
    if len(sys.argv) > 1 and sys.argv[1] in VERBS:
        try:
            VERBS[sys.argv[1]](sys.argv[2:])
        except ValueError as err:  # bad input: one clear line, no traceback
            sys.exit(f"error: {err}")
        return
    try:
        build_cli()
    except (IMDBSourceError, BackboneError, CheckpointError, FloatingPointError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
