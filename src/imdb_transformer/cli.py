"""The ``imdb-transformer`` console script.

Training and evaluation (``fit / validate / test / predict``) are Lightning's CLI over the
LightningModules and DataModules; the other verbs (``embed / search / generate``) are the functions of
:mod:`imdb_transformer.verbs`. Both are built by jsonargparse from type-hinted signatures and their
docstrings, so ``--help`` is the reference and every verb takes ``--config`` and ``--print_config``.
"""

from __future__ import annotations

import inspect
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from imdb_transformer import verbs
from imdb_transformer.artifacts import read_artifact
from imdb_transformer.callbacks import FiniteLossGuard, PrecisionAdvice, ShareTokenizer
from imdb_transformer.errors import ImdbError, InputError
from imdb_transformer.models.backbone import load_checkpoint


class SaveRunFiles(SaveConfigCallback):
    """Writes the resolved ``config.yaml`` and the ``tokenizer.model`` the model reads with into the run's
    log dir, so every checkpoint there can be reloaded without guessing."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        log_dir = trainer.log_dir  # a collective call under DDP: every rank must make it
        tokenizer = getattr(pl_module, "tokenizer", None)
        if trainer.is_global_zero and tokenizer is not None and log_dir is not None:
            tokenizer.save(Path(log_dir) / "tokenizer.model")


class ImdbCLI(LightningCLI):
    """LightningCLI with what every run here needs: a best-and-last checkpoint, a stop on a non-finite
    loss, and the explicit links between model and data.

    The links: in pretraining the data decides the vocabulary and block length and the model follows
    (at parse time) and gets the tokenizer the data fit (:class:`ShareTokenizer`, at setup); an adapter
    brings its backbone, and its data reads reviews with that backbone's tokenizer and context
    (``model.backbone`` -> ``data.backbone``).
    """

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
        # The tokenizer's vocabulary, the block length and the reading direction are data settings; the
        # model follows them.
        for name in ("vocab_size", "block_size", "reverse"):
            parser.link_arguments(f"data.init_args.{name}", f"model.init_args.{name}", apply_on="parse")
        parser.link_arguments("model.init_args.backbone", "data.init_args.backbone", apply_on="parse")

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
            if "backbone" in config.data.get("init_args", {}):
                config.data.init_args.backbone = config.ckpt_path

    def instantiate_classes(self) -> None:
        """Build model, data and trainer; an error raised by the project's own code while doing so (a
        refused backbone, a bad option) surfaces as itself, not as a dump of the whole namespace."""
        try:
            super().instantiate_classes()
        except Exception as err:
            cause = err
            while cause is not None and not isinstance(cause, ImdbError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            raise cause from None

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer, with its default logger given a run folder claimed atomically (``mkdir``), so
        two runs started at once under the same root never share a ``version_N``."""
        trainer = super().instantiate_trainer(**kwargs)
        # before the run-files callback, which saves the tokenizer ShareTokenizer hands over
        trainer.callbacks[:0] = [ShareTokenizer(), FiniteLossGuard(), PrecisionAdvice()]
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


class CheckpointError(InputError):
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
            "fit, validate, test, predict. Also: "
            + ", ".join(f"`imdb-transformer {name} --help` ({what})" for name, what in VERB_SUMMARY.items())
            + "."
        },
    )


VERBS: dict[str, Callable[..., None]] = {
    "embed": verbs.embed,
    "search": verbs.search,
    "generate": verbs.generate,
    "classify": verbs.classify,
    "serve": verbs.serve,
}
VERB_SUMMARY = {
    "embed": "build a search index",
    "search": "query it",
    "generate": "continue a prompt",
    "classify": "label texts with a classifier or an ensemble",
    "serve": "an HTTP API and web page",
}
# spellings the verbs accept beyond their signatures: a short -k, and list options given by repeating
# them (--prompt, --checkpoint) or, for classify's texts, as plain words after the options
_SPELLINGS = {
    "search": {"-k": "--k"},
    "generate": {"--prompt": "--prompt+"},
    "classify": {"--checkpoint": "--checkpoint+"},
    "serve": {"--classifier": "--classifier+"},
}


def verb_parser(name: str) -> ArgumentParser:
    """The parser of ``imdb-transformer NAME``, built from the signature and docstring of its function."""
    function = VERBS[name]
    about = inspect.getdoc(function).split("Args:")[0].strip()  # the docstring before its arguments
    parser = ArgumentParser(prog=f"imdb-transformer {name}", description=about)
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML file of these options.")
    parser.add_function_arguments(function, as_positional=True)
    return parser


def run_verb(name: str, argv: list[str]) -> None:
    """Parse ``argv`` for the verb ``name`` and call its function."""
    spellings = _SPELLINGS.get(name, {})
    argv = [_respell(a, spellings) for a in argv]
    if name == "search" and any(a.split("=")[0] == "--like" for a in argv) and not _positionals(argv):
        argv.append("")  # `search --like ID` needs no query
    if name == "classify":
        at = set(_positionals(argv))
        argv = [a for i, a in enumerate(argv) if i not in at] + [f"--texts+={argv[i]}" for i in sorted(at)]

    options = verb_parser(name).parse_args(argv).as_dict()
    options.pop("config", None)
    function = VERBS[name]
    positional = [
        options.pop(p.name)
        for p in inspect.signature(function).parameters.values()
        if p.kind is inspect.Parameter.POSITIONAL_ONLY
    ]
    function(*positional, **options)


def _respell(word: str, spellings: dict[str, str]) -> str:
    """``word`` (``--name`` or ``--name=value``) with its option name as the verb's parser spells it."""
    name, sep, value = word.partition("=")
    return spellings.get(name, name) + sep + value


def _positionals(argv: list[str]) -> list[int]:
    """Where ``argv`` holds words that are not options or their values (every verb option takes a
    value)."""
    at, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
        elif a.startswith("-"):
            skip = "=" not in a
        else:
            at.append(i)
    return at


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``imdb-transformer`` console script. The project's own errors (bad input, a
    damaged file, a diverged run) print as one ``error:`` line; anything else keeps its traceback."""
    words = sys.argv[1:] if argv is None else argv
    try:
        if words and words[0] in VERBS:
            run_verb(words[0], words[1:])
        else:
            build_cli(argv)  # None: LightningCLI reads sys.argv itself
    except ImdbError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
