"""The ``imdb-transformer`` console script: Lightning's CLI (fit / validate / test / predict).

Every argument comes from a type-hinted signature and its docstring, so
``imdb-transformer fit --help`` (and ``--model.help CausalLM``) is the reference.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback


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

    def before_instantiate_classes(self) -> None:
        """``--ckpt_path last`` means the newest run's ``last.ckpt``.

        Lightning alone looks only in the new run's (empty) checkpoint folder and would silently
        start from scratch; here it resumes the run that was stopped.
        """
        config = self.config.get(self.subcommand)
        if config is not None and config.get("ckpt_path") == "last":
            root = Path(config.trainer.default_root_dir or ".")
            config.ckpt_path = str(find_last_checkpoint(root))
            print(f"Resuming from {config.ckpt_path}")


def find_last_checkpoint(root: Path) -> Path:
    """The most recently written ``last*.ckpt`` of the runs under ``root/lightning_logs``."""
    found = sorted(root.glob("lightning_logs/*/checkpoints/last*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(
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
    return ImdbCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=SaveRunFiles,
        args=args,
        run=run,
        parser_kwargs={"description": "Pretrain a causal transformer on IMDB and reuse it."},
    )


def main() -> None:
    """Entry point of the ``imdb-transformer`` console script."""
    build_cli()


if __name__ == "__main__":
    main()
