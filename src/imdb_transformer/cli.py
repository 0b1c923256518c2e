"""The ``imdb-transformer`` console script.

Training and evaluation (``fit / validate / test / predict``) are Lightning's CLI over the
LightningModules and DataModules; the other verbs (``embed / search / generate / classify / serve``)
are the functions of :mod:`imdb_transformer.verbs`. Both are built by jsonargparse from type-hinted
signatures and their docstrings, so ``--help`` is the reference and every verb takes ``--config`` and
``--print_config``.
"""

from __future__ import annotations

import argparse
import errno
import inspect
import re
import shutil
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import docstring_parser
import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from imdb_transformer import hardware, verbs
from imdb_transformer.artifacts import read_artifact
from imdb_transformer.callbacks import (
    AtomicCheckpointIO,
    FiniteLossGuard,
    LatestCheckpoint,
    PrecisionAdvice,
    SaveOnTerm,
    ShareTokenizer,
)
from imdb_transformer.core.backbone import load_checkpoint
from imdb_transformer.errors import ImdbError, InputError
from imdb_transformer.models.export import run_folder
from imdb_transformer.predict import refused_options


class SaveRunFiles(SaveConfigCallback):
    """Writes the resolved ``config.yaml`` and the ``tokenizer.model`` the model reads with into the run's
    folder beside its checkpoints (:func:`run_folder`, whatever the logger), so every checkpoint there can
    be reloaded without guessing."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        folder = run_folder(trainer)  # a collective call under DDP: every rank must make it
        config = folder / self.config_filename
        taken = trainer.strategy.broadcast(trainer.is_global_zero and config.exists())
        if taken and not self.overwrite:  # a folder every run shares (no logger, a fixed version)
            raise InputError(
                f"{config} exists: an earlier run keeps its files in {folder}, and this run's would "
                "replace them. Give --trainer.default_root_dir a new folder, or leave --trainer.logger at "
                "its default (each run gets its own lightning_logs/version_N)"
            )
        if trainer.is_global_zero:
            folder.mkdir(parents=True, exist_ok=True)
            self.parser.save(
                self.config, str(config), skip_unset=False, overwrite=True, multifile=self.multifile
            )
            tokenizer = getattr(pl_module, "tokenizer", None)
            if tokenizer is not None:
                tokenizer.save(folder / "tokenizer.model")
        self.already_saved = True


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

        ``--ckpt_path last`` means the newest ``last.ckpt`` under the root of a run of the same module
        as the one asked for: Lightning alone looks only in the new run's (empty) checkpoint folder and
        would silently start from scratch. A missing, truncated or unsafe checkpoint stops here with
        one line naming it, as does a mistyped option or command (:func:`refused`).
        """
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as err:  # raised, not exited on: the parser has exit_on_error off
            raise refused(err, sys.argv[1:] if args is None else [str(a) for a in args]) from None
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else None
        if config is None or not config.get("ckpt_path"):
            return
        if config.ckpt_path == "last":
            root = Path(config.trainer.default_root_dir or ".")
            config.ckpt_path = str(find_last_checkpoint(root, config.model.get("class_path")))
            print(f"Resuming from {config.ckpt_path}")
        check_checkpoint(Path(config.ckpt_path))

    def _parse_ckpt_path(self) -> None:
        """Lightning fills the model's settings from the checkpoint given with ``--ckpt_path``, its
        class included; first refuse a checkpoint of another module and, when resuming a ``fit``,
        one whose settings differ from those asked for (Lightning would silently use its own), then
        one whose saved settings this version's model does not take."""
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else None
        if config is None or not config.get("ckpt_path"):
            return  # Lightning has nothing to read either
        check_requested(Path(config.ckpt_path), config.model, resuming=subcommand == "fit")
        try:
            super()._parse_ckpt_path()
        except argparse.ArgumentError as err:  # a saved setting of another type than this version's
            raise CheckpointError(
                f"the settings saved in {config.ckpt_path} do not fit this version's model "
                f"({parse_error_line(str(err))}): pass a checkpoint written by this version"
            ) from None
        model = self.config[subcommand].model  # the settings Lightning merged in from the checkpoint
        unknown = sorted(model.get("dict_kwargs") or {})
        if unknown:  # saved settings the model no longer takes: its constructor would fail on them
            raise CheckpointError(
                f"the settings saved in {config.ckpt_path} include {', '.join(unknown)}, which this "
                f"version's {model.class_path.rsplit('.', 1)[-1]} does not take: pass a checkpoint "
                "written by this version"
            )

    def before_instantiate_classes(self) -> None:
        """Without ``--trainer.precision``, choose it from the hardware (:func:`hardware.default_precision`:
        bf16 autocast where bf16 matrix hardware exists, fp32 elsewhere) and say so. To evaluate an
        adapter (``validate``/``test``/``predict --ckpt_path``), its backbone is built from that
        checkpoint."""
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        if config is None:
            return
        if config.trainer.get("precision") is None:
            config.trainer.precision = hardware.default_precision(config.trainer.get("accelerator", "auto"))
            rank_zero_info(
                f"Precision {config.trainer.precision}, chosen for this hardware ({_hardware_line()}); "
                "set --trainer.precision to choose another"
            )
        init_args = config.model.get("init_args")
        if (
            self.subcommand != "fit"
            and config.get("ckpt_path")
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
        two runs started at once under the same root never share a ``version_N``, and checkpoints
        written beside their final path (:class:`AtomicCheckpointIO`). Trainer options Lightning refuses
        (an accelerator that is not here, FSDP on CPUs, ...) are one error line."""
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError) as err:
            raise refused_options(err) from None
        # before the run-files callback, which saves the tokenizer ShareTokenizer hands over
        trainer.callbacks[:0] = [ShareTokenizer(), FiniteLossGuard(), PrecisionAdvice(), SaveOnTerm()]
        keep_last_every_validation(trainer)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not a user's own plugin
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        config = self.config.get(self.subcommand, self.config)
        self.claimed_run: Path | None = None
        if config.trainer.logger in (None, True):  # the default logger: CSV, whether or not TensorBoard is
            # installed (Lightning's default would switch), so every run has its metrics.csv. Only the job's
            # first process, as Lightning's cluster environment ranks it (torchrun, SLURM, LSF, MPI, Kubeflow
            # or its own launcher), claims the folder; the others learn it from rank 0 (run_folder).
            version = None
            if trainer.global_rank == 0:
                version = claim_version(Path(trainer.default_root_dir) / "lightning_logs")
                self.claimed_run = Path(trainer.default_root_dir) / "lightning_logs" / f"version_{version}"
            trainer.logger = CSVLogger(trainer.default_root_dir, name="lightning_logs", version=version)
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        """Run the subcommand after checking that a checkpoint to resume or evaluate belongs to the
        module and data asked for; a run that fails before writing a checkpoint or a metric leaves no
        run folder behind."""
        try:
            ckpt_path = self.config_init[subcommand].get("ckpt_path")
            if ckpt_path:
                check_resumable(Path(ckpt_path), self.model, self.datamodule, resuming=subcommand == "fit")
            super()._run_subcommand(subcommand)
        except BaseException:
            forget_unused_run(getattr(self, "claimed_run", None))
            raise


def _hardware_line() -> str:
    """The device a run uses by default, in a few words."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return hardware.describe_cpu()


class CheckpointError(InputError):
    """A checkpoint path that does not exist or cannot be read as a checkpoint."""


def keep_last_every_validation(trainer: Trainer) -> None:
    """Hand the best-checkpoint callback's ``save_last`` to a :class:`LatestCheckpoint`, so ``last.ckpt``
    is the latest state at every checkpointing point, as ``--ckpt_path last`` expects."""
    best = trainer.checkpoint_callback
    if best is None or best.save_last is not True:  # off, or "link" (a link to the newest best)
        return
    best.save_last = None
    trainer.callbacks.append(LatestCheckpoint(best))


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


def find_last_checkpoint(root: Path, class_path: str | None = None) -> Path:
    """The most recently written ``last*.ckpt`` under ``root/lightning_logs`` of a run of the module
    ``class_path`` (any module if None)."""
    found = sorted(root.glob("lightning_logs/*/checkpoints/last*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise CheckpointError(
            f"--ckpt_path last: no last.ckpt under {root.resolve()}/lightning_logs/*/checkpoints; "
            "pass the path of a checkpoint instead, or the same --trainer.default_root_dir as the stopped run"
        )
    wanted = _class_name(class_path)
    others = []
    for path in reversed(found):
        kind = _class_name(_checkpoint_class(path))
        if kind != "damaged" and (wanted is None or kind == wanted):
            return path
        others.append(f"{path} ({'damaged: unreadable' if kind == 'damaged' else kind or 'unknown module'})")
    raise CheckpointError(
        f"--ckpt_path last: no checkpoint of a {wanted} run under {root.resolve()}/lightning_logs; found "
        f"only {', '.join(others[:3])}{' ...' if len(others) > 3 else ''}. Pass the checkpoint to resume "
        "with --ckpt_path PATH, or leave --ckpt_path out to start afresh"
    )


def _checkpoint_class(path: Path) -> str | None:
    """The module class a checkpoint records, ``"damaged"`` if it cannot be read (no candidate then),
    None if it records none."""
    try:
        contents = load_checkpoint(path)
    except Exception:
        return "damaged"
    hparams = contents.get("hyper_parameters", {}) if isinstance(contents, dict) else None
    return hparams.get("_class_path") if isinstance(hparams, dict) else None


def _class_name(class_path: str | None) -> str | None:
    return class_path.rsplit(".", 1)[-1] if class_path else None


def check_requested(path: Path, model: Any, resuming: bool) -> None:
    """Refuse a checkpoint of another module than ``model`` (the parsed ``class_path`` and
    ``init_args``) and, when ``resuming``, one whose recorded settings differ from the ones asked for,
    naming the differences."""
    hparams = load_checkpoint(path).get("hyper_parameters") or {}
    found, wanted = _class_name(hparams.get("_class_path")), _class_name(model.get("class_path"))
    if found is not None and wanted is not None and found != wanted:
        raise CheckpointError(
            f"{path} is a checkpoint of a {found} run, not of the {wanted} asked for: pass a checkpoint "
            f"of a {wanted} run, or the config that {path} was trained with"
        )
    asked = model.get("init_args") or {}
    differences = [
        f"--model.{key} is {asked[key]!r} here and {value!r} there"
        for key, value in hparams.items()
        if not key.startswith("_") and key in asked and not _same_setting(asked[key], value)
    ]
    if resuming and differences:
        raise CheckpointError(
            f"{path} does not fit the run asked for: {'; '.join(differences[:3])}. Resume with the settings "
            "it was trained with (its run folder's config.yaml), or leave --ckpt_path out to start afresh"
        )


def _same_setting(asked: Any, recorded: Any) -> bool:
    if isinstance(asked, (list, tuple)) and isinstance(recorded, (list, tuple)):
        return list(asked) == list(recorded)
    if isinstance(asked, str) and isinstance(recorded, str) and asked != recorded:
        return Path(asked).expanduser().resolve() == Path(recorded).expanduser().resolve()  # one file
    return asked == recorded


def check_resumable(
    path: Path, model: LightningModule, datamodule: LightningDataModule | None, resuming: bool = True
) -> None:
    """Refuse, naming the difference, a checkpoint whose data settings differ from the run's or whose
    weights do not fit ``model``, and (``resuming``) one whose training state is damaged (Lightning would
    otherwise fail deep inside with a traceback, or resume at a step past the end)."""
    checkpoint = load_checkpoint(path)
    if resuming:
        _check_training_state(checkpoint, path)
    differences = []
    data_hparams = checkpoint.get("datamodule_hyper_parameters") or {}
    ours = dict(datamodule.hparams) if datamodule is not None else {}
    for key in ("vocab_size", "block_size", "reverse", "tokenizer_type"):
        if key in data_hparams and key in ours and data_hparams[key] != ours[key]:
            differences.append(f"--data.{key} is {ours[key]!r} here and {data_hparams[key]!r} there")
    state = checkpoint.get("state_dict") or {}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name in sorted(expected.keys() & state.keys()):
        if tuple(state[name].shape) != expected[name]:
            differences.append(f"{name} is {expected[name]} here and {tuple(state[name].shape)} there")
    missing = sorted(expected.keys() - state.keys())
    if missing:
        differences.append(f"it lacks {len(missing)} of the model's tensors ({missing[0]}, ...)")
    if differences:
        raise CheckpointError(
            f"{path} does not fit the run asked for: {'; '.join(differences[:3])}. Resume with the config "
            "it was trained with (its run folder's config.yaml), or leave --ckpt_path out to start afresh"
        )


def _check_training_state(checkpoint: dict, path: Path) -> None:
    def count(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10**12

    optimizers = checkpoint.get("optimizer_states", [])
    schedulers = checkpoint.get("lr_schedulers", [])
    problem = None
    if not count(checkpoint.get("global_step", 0)) or not count(checkpoint.get("epoch", 0)):
        problem = (
            f"its step or epoch ({checkpoint.get('global_step')!r:.40}, {checkpoint.get('epoch')!r:.40})"
        )
    elif not isinstance(optimizers, list) or not all(_optimizer_state(o) for o in optimizers):
        problem = "its optimizer state"
    elif not isinstance(schedulers, list) or not all(isinstance(o, dict) for o in schedulers):
        problem = "its learning-rate schedule"
    elif not isinstance(checkpoint.get("loops", {}), dict):
        problem = "its loop state"
    if problem:
        raise CheckpointError(
            f"{path}: {problem} is damaged, so training cannot resume from it; resume from another "
            "checkpoint of the run (a best-*.ckpt beside it), or leave --ckpt_path out to start afresh"
        )


def _optimizer_state(saved: object) -> bool:
    """Whether ``saved`` has the shape of an optimiser's state dict (``state`` and ``param_groups``),
    or of several side by side under names (:class:`~imdb_transformer.models.optim.MuonAdamW`)."""

    def plain(o: object) -> bool:
        return (
            isinstance(o, dict)
            and isinstance(o.get("state"), dict)
            and isinstance(o.get("param_groups"), list)
        )

    return plain(saved) or (isinstance(saved, dict) and bool(saved) and all(plain(o) for o in saved.values()))


def forget_unused_run(run: Path | None) -> None:
    """Remove a failed run's folder if it holds nothing of the run's own (no checkpoint, no metric):
    only the resolved config, the tokenizer and hyperparameters that the next run writes again."""
    if run is None or not run.is_dir():
        return
    if any(run.rglob("*.ckpt")) or any(run.rglob("metrics.csv")) or any(run.rglob("events.out.*")):
        return
    shutil.rmtree(run, ignore_errors=True)


def build_cli(args: list[str] | None = None, run: bool = True) -> ImdbCLI:
    """Parse ``args`` (default: ``sys.argv``) and, with ``run``, execute the subcommand."""
    # Packed blocks are tensors in memory: loading a batch is a slice, so no workers are needed.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    # The default logger is CSV (lightning_logs/version_N/metrics.csv), TensorBoard installed or not.
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
            + "; ".join(f"`imdb-transformer {name} --help` ({_summary(f)})" for name, f in VERBS.items())
            + ".",
            # a bad option raises (the subcommands' parsers inherit it), for parse_arguments to make
            # one line of, instead of printing the usage and exiting
            "exit_on_error": False,
        },
    )


# jsonargparse's bookkeeping around a bad value (the types of a Union it tried), not the reason
_NOT_A_REASON = (
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Given value: NestedArg(",
    "Given value: {",
    "Given value: Namespace(",
    "Does not validate against any of the Union subtypes",
    "Expected a <class 'NoneType'>",
    "Problem with given class_path",
)


def parse_error_line(message: str) -> str:
    """A parser's error ``message`` as one line: the option (nested keys joined, ``--model.hidden``)
    and the reasons, without the Union bookkeeping jsonargparse prints around them."""
    keys, reasons = [], []
    for line in message.splitlines():
        line = line.strip().removeprefix("- ")
        key = re.match(r'Parser key "([^"]+)"(?: element \d+)?:', line)
        if key:
            keys.append(key.group(1))
            line = line[key.end() :].strip()
        if line and not line.startswith(_NOT_A_REASON):
            reasons.append(line)
    if not reasons:
        return " ".join(message.split())
    where = f"--{'.'.join(dict.fromkeys(keys))}: " if keys else ""
    return where + "; ".join(dict.fromkeys(reasons))


# a verb's name is its function's, with dashes (export_index: export-index)
VERBS: dict[str, Callable[..., None]] = {f.__name__.replace("_", "-"): f for f in verbs.VERBS}


def _summary(function: Callable[..., None]) -> str:
    """The first sentence of ``function``'s docstring, as --help lists the verb."""
    return inspect.getdoc(function).split(".")[0].split(":")[0]


def verb_parser(name: str) -> ArgumentParser:
    """The parser of ``imdb-transformer NAME``, built from the signature and docstring of its function.

    Parameters annotated with :class:`~imdb_transformer.verbs.Spelled` get the spelling it declares
    (a short alias, an old name, a list given by repeating the option, plain words after the options);
    jsonargparse builds the others from their type hints.
    """
    function = VERBS[name]
    doc = inspect.getdoc(function)
    parser = ArgumentParser(
        prog=f"imdb-transformer {name}", description=doc.split("Args:")[0].strip(), exit_on_error=False
    )
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML file of these options.")
    hints = get_type_hints(function, include_extras=True)
    spelled = {
        key: spelling
        for key, hint in hints.items()
        for spelling in getattr(hint, "__metadata__", ())
        if isinstance(spelling, verbs.Spelled)
    }
    parser.add_function_arguments(function, as_positional=True, skip=set(spelled))
    helps = {param.arg_name: param.description for param in docstring_parser.parse(doc).params}
    parameters = inspect.signature(function).parameters
    for key, spelling in spelled.items():
        _add_spelled(parser, key, hints[key].__origin__, parameters[key].default, spelling, helps[key])
    return parser


def _add_spelled(
    parser: ArgumentParser, key: str, hint: Any, default: Any, spelling: verbs.Spelled, about: str
) -> None:
    """Add the parameter ``key`` to ``parser`` as ``spelling`` declares."""
    required = default is inspect.Parameter.empty
    listed = get_origin(hint) is list or any(get_origin(arg) is list for arg in get_args(hint))
    about = " ".join(about.split())  # jsonargparse adds "(required)" or the default
    if spelling.words:
        parser.add_argument(key, nargs="*" if listed else "?", default=default, help=about)
        return
    names = [f"--{key}", *([spelling.short] if spelling.short else [])]
    kind = {"action": _Given, "repeat": True} if spelling.repeat else {"type": hint}
    parser.add_argument(*names, required=required, default=None if required else default, help=about, **kind)
    if spelling.old:
        parser.add_argument(
            spelling.old, dest=key, action=_Given, repeat=spelling.repeat, new=names[0],
            help=f"The old name of {names[0]}, still accepted.", default=argparse.SUPPRESS,
        )  # fmt: skip


class _Given(argparse.Action):
    """Stores an option's value; with ``repeat``, each occurrence adds one item to a list. Under an
    old name (``new`` set), it first prints a note naming the new one."""

    def __init__(self, *args: Any, repeat: bool = False, new: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.repeat, self.new = repeat, new

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        if self.new is not None:
            print(f"note: {option_string} is the old name of {self.new}", file=sys.stderr)
        if self.repeat:
            have = getattr(namespace, self.dest, None)
            values = [*(have if isinstance(have, list) else []), values]
        setattr(namespace, self.dest, values)


def run_verb(name: str, argv: list[str]) -> None:
    """Parse ``argv`` for the verb ``name`` and call its function."""
    parser = verb_parser(name)
    try:
        options = parser.parse_args(argv).as_dict()
    except argparse.ArgumentError as err:  # one line naming the option and its type, not the usage
        hint = ""
        if "unrecognized arguments" in str(err) and any(not a.option_strings for a in parser._actions):
            hint = "; plain words (texts, a query) go after all the options"
        raise InputError(f"{parse_error_line(str(err))}{hint} (see imdb-transformer {name} --help)") from None
    options.pop("config", None)
    function = VERBS[name]
    positional = [
        options.pop(p.name)
        for p in inspect.signature(function).parameters.values()
        if p.kind is inspect.Parameter.POSITIONAL_ONLY
    ]
    function(*positional, **options)


def refused(err: argparse.ArgumentError, words: list[str]) -> InputError:
    """LightningCLI's refusal of the command line ``words`` as one line: an unknown or missing command
    lists every command; a bad option is named with its reason."""
    subcommands = list(LightningCLI.subcommands())
    if "subcommand" in str(err):  # jsonargparse: an invalid choice, or none given
        unknown = re.search(r"invalid choice: '([^']*)'", str(err))
        given = f"{unknown.group(1)!r} is not a command" if unknown else "no command given"
        commands = ", ".join([*subcommands, *VERBS])
        return InputError(f"{given}: choose one of {commands} (see imdb-transformer --help)")
    command = " ".join(["imdb-transformer", *[w for w in words if w in subcommands][:1]])
    return InputError(f"{parse_error_line(str(err))} (see {command} --help)")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``imdb-transformer`` console script. The project's own errors (bad input, a
    damaged file, a diverged run) and a full or read-only disk print as one ``error:`` line; anything
    else keeps its traceback."""
    words = sys.argv[1:] if argv is None else argv
    try:
        if words and words[0] in VERBS:
            run_verb(words[0], words[1:])
        else:
            build_cli(argv)  # None: LightningCLI reads sys.argv itself
    except ImdbError as err:
        sys.exit(f"error: {err}")
    except SIGTERMException:  # Lightning ends a run that got SIGTERM with a SystemExit of status 0
        print(
            "error: stopped by SIGTERM; its last.ckpt holds the step it reached: resume with the same "
            "command and --ckpt_path last",
            file=sys.stderr,
        )
        sys.exit(128 + signal.SIGTERM)
    except Exception as err:
        reason = disk_problem(err)
        if reason is None:
            raise
        sys.exit(f"error: {reason}")


_DISK_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the filesystem is read-only",
}


def disk_problem(err: BaseException) -> str | None:
    """A one-line account of ``err`` if it (or what caused it) is a full, over-quota or read-only
    disk, else None. Files the project writes are moved into place only when complete, so the line
    can say that nothing half-written was left."""
    while err is not None:
        code = getattr(err, "errno", None)
        text = str(err)
        if code not in _DISK_ERRORS:
            code = errno.ENOSPC if "No space left on device" in text or "StorageFull" in text else code
        if code in _DISK_ERRORS:
            where = f" writing {err.filename}" if getattr(err, "filename", None) else ""
            return (
                f"{_DISK_ERRORS[code]}{where}: nothing half-written was left in place (earlier files, such "
                "as the last checkpoint, are whole). Free some space, or write elsewhere "
                "(--trainer.default_root_dir, --out), then run again (fit: add --ckpt_path last to resume)"
            )
        err = err.__cause__ or err.__context__
    return None


if __name__ == "__main__":
    main()
