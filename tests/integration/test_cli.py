"""The command line: wiring, and real runs of the ``imdb-transformer`` console script on tiny data."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import HELPERS, REPO, cli, fails, read_metrics, run_cli

from imdb_transformer.cli import VERBS, build_cli, main, verb_parser
from imdb_transformer.core.backbone import CHECKPOINT_KEY
from imdb_transformer.embedder import load_embedder
from imdb_transformer.hardware import describe_cpu
from imdb_transformer.models import CausalLM
from imdb_transformer.search import SemanticIndex


def test_wiring_links_data_sizes_into_the_model(
    tiny_fit_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["imdb-transformer"])  # only ``args`` is parsed
    cli = build_cli([*tiny_fit_args, "--data.vocab_size", "333", "--data.block_size", "24"], run=False)
    assert isinstance(cli.model, CausalLM)
    assert cli.model.config.vocab_size == 333 and cli.model.config.block_size == 24
    assert cli.datamodule.vocab_size == 333
    assert cli.config.seed_everything == 1337  # the seed is fixed in the YAML
    assert any(type(c).__name__ == "ModelCheckpoint" for c in cli.trainer.callbacks)


def test_help_documents_the_arguments() -> None:
    out = " ".join(run_cli("fit", "--data.help", "imdb_transformer.data.LMDataModule").stdout.split())
    assert "--data.source" in out and "local folder holding" in out
    assert "Share of whole reviews held out" in out


def test_tiny_fit_writes_a_checkpoint_and_lowers_the_loss(tiny_fit_args: list[str], tmp_path: Path) -> None:
    run_cli("fit", *tiny_fit_args)
    run = tmp_path / "lightning_logs" / "version_0"
    assert (run / "config.yaml").is_file() and (run / "tokenizer.model").is_file()
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(n.startswith("best-step=") for n in ckpts)
    metrics = read_metrics(run)
    val = [v for _, v in metrics["val/loss"]]
    assert len(val) == 3 and val[-1] < val[0]  # after steps 10, 20 and 30
    train = [v for _, v in metrics["train/loss"]]
    assert train[-1] < train[0]
    assert {"val/ppl", "val/bpb"} <= metrics.keys()
    # checkpoints hold only tensors and plain values: they load without unpickling code
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 30
    saved_tokenizer = bytes(ckpt[CHECKPOINT_KEY]["tokenizer_model"].numpy())
    assert saved_tokenizer == (run / "tokenizer.model").read_bytes()
    assert ckpt[CHECKPOINT_KEY]["config"]["block_size"] == 32


def test_fit_resumes_with_ckpt_path_last(tiny_fit_args: list[str], tmp_path: Path) -> None:
    run_cli("fit", *tiny_fit_args, "--trainer.max_steps", "20")
    out = run_cli("fit", *tiny_fit_args, "--ckpt_path", "last")
    assert "version_0/checkpoints/last.ckpt" in out.stdout
    resumed = tmp_path / "lightning_logs" / "version_1"
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 30
    steps = [s for s, _ in read_metrics(resumed)["train/loss"]]
    assert min(steps) >= 20  # the step count continues where the first run stopped


def test_last_ckpt_is_the_latest_state_when_the_best_stops_improving(
    tiny_fit_args: list[str], tmp_path: Path
) -> None:
    # monitoring the step, only the first validation is a best: last.ckpt must still move on
    run_cli("fit", *tiny_fit_args, "--checkpoint.monitor", "step", "--checkpoint.mode", "min")
    folder = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir())[0].startswith("best-step=10-")
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 30
    run_cli("fit", *tiny_fit_args, "--trainer.max_steps", "10", "--checkpoint.save_last", "false")
    names = [p.name for p in (tmp_path / "lightning_logs/version_1/checkpoints").iterdir()]
    assert len(names) == 1 and names[0].startswith("best-step=10-")  # no last.ckpt when asked for none


def test_ckpt_path_last_without_a_run_is_a_clear_error(tiny_fit_args: list[str]) -> None:
    assert "no last.ckpt under" in fails("fit", *tiny_fit_args, "--ckpt_path", "last")


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "asked", "chosen"),
    [
        (True, False, None, "bf16-mixed"),  # AMX tiles: bf16 in hardware
        (False, True, None, "bf16-mixed"),  # AVX512-BF16
        (False, False, None, "32-true"),  # neither: bf16 is emulated, fp32 is faster
        (True, True, "32-true", "32-true"),  # asked for: kept
        (False, False, "bf16-mixed", "bf16-mixed"),
    ],
)
def test_precision_follows_the_cpu_unless_asked_for(
    tiny_fit_args: list[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    amx: bool,
    avx512_bf16: bool,
    asked: str | None,
    chosen: str,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(sys, "argv", ["imdb-transformer"])  # only ``args`` is parsed
    args = [*tiny_fit_args, *(["--trainer.precision", asked] if asked else [])]
    with caplog.at_level("INFO"):
        cli = build_cli(args, run=False)
    assert cli.trainer.precision == chosen
    said = [r.getMessage() for r in caplog.records if "chosen for this hardware" in r.getMessage()]
    assert said == ([f"Precision {chosen}, chosen for this hardware ({describe_cpu()}); set "
                     "--trainer.precision to choose another"] if asked is None else [])  # fmt: skip


@pytest.mark.parametrize(
    ("precision", "dtype"), [("bf16-mixed", "torch.bfloat16"), ("32-true", "torch.float32")]
)
def test_the_precision_flag_sets_the_autocast_of_training_steps(
    tiny_fit_args: list[str], tmp_path: Path, precision: str, dtype: str
) -> None:
    record = tmp_path / "dtypes.txt"
    run_cli(
        "fit", *tiny_fit_args, "--trainer.precision", precision, "--trainer.max_steps", "4",
        "--trainer.callbacks+=helpers.RecordLogitsDtype", f"--trainer.callbacks.record={record}", env=HELPERS,
    )  # fmt: skip
    assert record.read_text().split() == [dtype] * 4  # every training step's logits
    assert (tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_compiled_backbone_trains_and_saves_plain_keys(tiny_fit_args: list[str], tmp_path: Path) -> None:
    run_cli("fit", *tiny_fit_args, "--model.compile", "true", "--trainer.max_steps", "10")
    ckpt = torch.load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    assert "backbone.wte.weight" in ckpt["state_dict"]  # no "_orig_mod." prefix: loads into a plain model


def test_a_missing_source_fails_before_training(tiny_fit_args: list[str], tmp_path: Path) -> None:
    err = fails("fit", *tiny_fit_args, "--data.source", str(tmp_path / "missing"))
    assert "does not exist; expected a folder holding train.parquet" in err
    assert not (tmp_path / "lightning_logs" / "version_0" / "checkpoints").exists()


def test_ddp_on_two_cpu_processes_sees_each_block_once(tiny_fit_args: list[str], tmp_path: Path) -> None:
    record = tmp_path / "seen"
    run_cli(
        "fit", *tiny_fit_args,
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.max_steps", "-1", "--trainer.max_epochs", "1",
        "--trainer.val_check_interval", "1.0", "--trainer.check_val_every_n_epoch", "1",
        "--trainer.callbacks+=helpers.RecordBatches", f"--trainer.callbacks.record_dir={record}",
        env=HELPERS, process=True,
    )  # fmt: skip
    seen = [tuple(row) for f in sorted(record.glob("rank*.pt")) for row in torch.load(f).tolist()]
    assert len(list(record.glob("rank*.pt"))) == 2
    from helpers import train_blocks

    blocks = train_blocks(tmp_path / "lightning_logs" / "version_0" / "config.yaml")
    assert sorted(seen) == sorted(tuple(r) for r in blocks.tolist())  # each block once, across both ranks


def test_fsdp_on_cpus_is_refused_in_one_line(tiny_fit_args: list[str], tmp_path: Path) -> None:
    """Lightning's FSDP strategy needs GPUs (docs/scaling.md says so): one error line, no run folder."""
    args = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "fsdp"]
    err = fails("fit", *tiny_fit_args, *args)
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("error: --trainer options: The strategy `fsdp` requires a GPU")
    )
    assert not (tmp_path / "lightning_logs").exists() or not any((tmp_path / "lightning_logs").iterdir())


def printed_accuracy(out: str) -> float:
    """``test/acc`` from the table ``test`` prints (plain, or drawn with rich's box characters)."""
    return float(re.search(r"test/acc\W+([0-9.]+)", out).group(1))


def classify_args(imdb_dir: Path, cache_dir: Path, root: Path) -> list[str]:
    return [
        "--config", str(REPO / "configs/classify.yaml"), "--data.source", str(imdb_dir),
        "--data.cache_dir", str(cache_dir), "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip


def fit_and_test(
    backbone: Path, imdb_dir: Path, cache_dir: Path, root: Path, *options: str
) -> tuple[Path, str]:
    """Train a classifier for 10 epochs through the CLI, then test its best checkpoint: the checkpoint
    and what ``test`` printed."""
    common = classify_args(imdb_dir, cache_dir, root)
    run_cli("fit", *common, "--model.backbone", str(backbone), "--trainer.max_epochs", "10", *options)
    best = next((root / "lightning_logs/version_0/checkpoints").glob("best-*.ckpt"))
    return best, run_cli("test", *common, "--ckpt_path", str(best)).stdout


def test_pretrain_classify_test_pipeline_beats_chance(
    pretrained_run: Path, imdb_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    options = ["--model.pooling", "last", "--model.learning_rate", "1e-2"]
    _, out = fit_and_test(pretrained_run / "backbone", imdb_dir, cache_dir, tmp_path, *options)
    for metric in ("test/acc", "test/f1", "test/auroc"):
        assert metric in out
    assert printed_accuracy(out) >= 0.7  # 80 balanced test reviews: chance is 0.5


def test_word_votes_train_test_and_explain_through_the_cli(
    pretrained_run: Path, imdb_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    options = ["--model.pooled", "false", "--model.lexical", "context", "--model.learning_rate", "1e-1"]
    best, out = fit_and_test(pretrained_run / "backbone", imdb_dir, cache_dir, tmp_path, *options)
    assert printed_accuracy(out) >= 0.9  # the sentiment words decide: chance is 0.5
    texts = ["a wonderful superb film", "dull and boring"]
    out = run_cli("classify", "--classifier", str(best), "--explain", "true", *texts).stdout.splitlines()
    assert out[0].split("\t")[-1] == "words (share of the logit)"
    good, bad = (dict(w.rsplit(" ", 1) for w in line.split("\t")[-1].split(", ")) for line in out[1:])
    assert out[1].split("\t")[1] == "pos" and float(good["superb"]) > 0 and float(good["wonderful"]) > 0
    assert out[2].split("\t")[1] == "neg" and float(bad["boring"]) < 0 and float(bad["dull"]) < 0
    long = run_cli("classify", "--classifier", str(best), "--explain", "true", "a" * 5000).stdout.splitlines()
    assert len(long[1]) < 200 and long[1].split("\t")[-1].startswith("a" * 23 + "… ")  # the word cut, too


def test_the_classifier_trains_under_ddp_on_two_cpu_processes(
    pretrained_run: Path, imdb_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    run_cli(
        "fit", *classify_args(imdb_dir, cache_dir, tmp_path),
        "--model.backbone", str(pretrained_run / "backbone"),
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.max_epochs", "2", "--data.batch_size", "8", process=True,
    )  # fmt: skip
    run = tmp_path / "lightning_logs" / "version_0"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 * 9  # 144 training reviews, 72 per rank in batches of 8, two epochs
    val_acc = [v for _, v in read_metrics(run)["val/acc"]]
    assert len(val_acc) == 2 and all(v * 16 == round(v * 16) for v in val_acc)  # over all 16, synced


def test_a_refused_backbone_is_one_line_not_a_namespace_dump(imdb_dir: Path, tmp_path: Path) -> None:
    err = fails(
        "fit", *classify_args(imdb_dir, tmp_path, tmp_path), "--model.backbone", str(tmp_path / "nope")
    )
    assert err.strip().splitlines()[-1].startswith(f"error: backbone '{tmp_path / 'nope'}' not found")
    assert "Namespace" not in err and "Traceback" not in err


def test_a_mistyped_training_option_or_command_is_one_line_not_the_usage(
    tiny_fit_args: list[str], tmp_path: Path
) -> None:
    from lightning.pytorch.cli import LightningCLI

    for option, value, expected in [
        ("--model.learning_rate", "fast", "float"),
        ("--data.max_reviews", "2.5", "int"),  # int | None: the Union's NoneType branch is left out
        ("--trainer.max_steps", "many", "int"),
        ("--model.nosuch", "1", "'nosuch' is not accepted"),
    ]:
        err = fails("fit", *tiny_fit_args, option, value)
        assert err.count("\n") == 1 and err.endswith(" (see imdb-transformer fit --help)\n"), err
        assert err.startswith(f"error: {option.rsplit('.', 1)[0] if 'nosuch' in option else option}: ")
        assert expected in err and "NoneType" not in err and "Subtypes" not in err
    assert not (tmp_path / "lightning_logs").exists()  # refused before any run folder
    commands = ", ".join([*LightningCLI.subcommands(), *VERBS])
    assert (
        fails("fitt")
        == f"error: 'fitt' is not a command: choose one of {commands} (see imdb-transformer --help)\n"
    )
    assert fails().startswith(f"error: no command given: choose one of {commands}")


def test_parse_errors_become_one_line_naming_the_option() -> None:
    from imdb_transformer.cli import parse_error_line

    nested = """Parser key "model":
  Does not validate against any of the Union subtypes
  Subtypes: [<class 'LightningModule'>, <class 'NoneType'>]
  Errors:
    - Problem with given class_path 'imdb_transformer.models.EmbeddingAdapter':
        - Parser key "hidden": Expected a <class 'int'>
    - Expected a <class 'NoneType'>
  Given value type: <class 'str'>
  Given value: 2.5"""
    assert parse_error_line(nested) == "--model.hidden: Expected a <class 'int'>; Given value: 2.5"
    listed = 'Parser key "trainer.callbacks" element 2: Expected a dot import path string: Nope'
    assert parse_error_line(listed) == "--trainer.callbacks: Expected a dot import path string: Nope"
    assert parse_error_line("unrecognized arguments: --bogus 1") == "unrecognized arguments: --bogus 1"


def test_a_real_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(query: str, /, *, index: str) -> None:
        """A verb with a bug in it."""
        raise ValueError("a bug, not bad input")

    monkeypatch.setitem(sys.modules["imdb_transformer.cli"].VERBS, "search", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["search", "--index", "i", "q"])


def test_verbs_spell_their_options_as_their_signatures_declare(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert list(VERBS) == ["embed", "search", "generate", "classify", "serve", "export", "export-index"]
    parse = {name: (lambda argv, name=name: verb_parser(name).parse_args(argv).as_dict()) for name in VERBS}
    # a list given by repeating its option, under its name or its old one (which says so)
    generate = parse["generate"](["--checkpoint", "b", "--prompt", "one", "--prompt=two"])
    assert generate["backbone"] == "b" and generate["prompt"] == ["one", "two"]
    assert "note: --checkpoint is the old name of --backbone" in capsys.readouterr().err
    classify = parse["classify"](["--classifier", "f.ckpt", "--checkpoint", "g.ckpt", "a text", "another"])
    assert classify["classifier"] == ["f.ckpt", "g.ckpt"] and classify["texts"] == ["a text", "another"]
    assert "note: --checkpoint is the old name of --classifier" in capsys.readouterr().err
    # a short alias; a positional that --like makes optional
    assert parse["search"](["--index", "i", "-k", "3", "film"])["k"] == 3
    # the Trainer's options of a verb that runs Trainer.predict, nested as the training verbs' are
    embed = parse["embed"](
        ["--backbone", "b", "--out", "o", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    )
    assert embed["trainer"] == {**embed["trainer"], "devices": 2, "strategy": "ddp", "accelerator": "auto"}
    assert parse["search"](["--index", "i", "--like", "test/pos/1"])["query"] == ""
    # the same lists from a config file
    config = tmp_path / "g.yaml"
    config.write_text("backbone: b\nprompt: [one, two]\n")
    assert parse["generate"](["--config", str(config)])["prompt"] == ["one", "two"]
    assert parse["serve"]([])["classifier"] is None


def test_tiny_yaml_says_what_it_stacks_on() -> None:
    first = (REPO / "configs/tiny.yaml").read_text().splitlines()[0]
    assert "pretrain.yaml" in first and "classify" in (REPO / "configs/tiny.yaml").read_text()


def test_embed_then_search_prints_a_table(pretrained_run: Path, imdb_dir: Path, tmp_path: Path) -> None:
    index = str(tmp_path / "i")
    run_cli(
        "embed", "--backbone", str(pretrained_run / "backbone"), "--source", str(imdb_dir), "--out", index
    )
    out = run_cli("search", "--index", index, "a wonderful superb movie", "-k", "3").stdout
    lines = out.strip().splitlines()
    assert lines[0].split()[:4] == ["#", "score", "review", "key"] and len(lines) == 2 + 3
    assert run_cli("search", "a wonderful superb movie", "--index", index, "--k", "3").stdout == out
    err = fails("search", "--index", index, "x", "-k", "0")
    assert err.startswith("error: --k: ") and "PositiveInt" in err and err.count("\n") == 1
    assert "nothing to search for: give a query" in fails("search", "--index", index)
    assert "not both" in fails("search", "--index", index, "film", "--like", "test/pos/1")
    nowhere, a_file = tmp_path / "nope", str(tmp_path / "i" / "index.json")
    err = fails("search", "--index", index, "--adapter", str(nowhere), "film")
    assert f"the adapter given for {index}, {nowhere}, does not exist" in err and err.count("\n") == 1
    assert f"{a_file} is a file, not an adapter folder" in fails(
        "search", "--index", index, "--adapter", a_file, "x"
    )
    nothing = cli("search", "--index", index, "xyzzyqq", "--mode", "lexical", "-k", "2")
    assert nothing.returncode == 0 and len(nothing.stdout.strip().splitlines()) == 2 + 2  # k hits, scoring 0
    assert "note: no review of the index shares anything with the query" in nothing.stderr


def test_search_says_when_hits_only_fill_k(capsys: pytest.CaptureFixture[str]) -> None:
    from imdb_transformer.search import Hit
    from imdb_transformer.verbs import _show_hits

    def hits(*scores: float) -> list[Hit]:
        return [Hit(i, s, f"test/pos/{i}", i, 1, "a review", []) for i, s in enumerate(scores, 1)]

    _show_hits(hits(0.7, 0.2, 0.0, 0.0), False, "the query")
    shown = capsys.readouterr()
    assert len(shown.out.splitlines()) == 2 + 4
    assert (
        shown.err == "note: the last 2 of the 4 hits share nothing with the query (score 0); they fill -k\n"
    )
    _show_hits(hits(0.0, 0.0), False, "the review")
    assert (
        capsys.readouterr().err
        == "note: no review of the index shares anything with the review; these hits score 0\n"
    )
    _show_hits(hits(1.0, 0.0), True, "the query")  # hybrid: its lowest real candidate scales to 0
    assert capsys.readouterr().err == ""


def test_an_index_reads_long_reviews_in_windows_records_it_and_reads_its_queries_so(
    pretrained_run: Path, adapter_run: Path, imdb_dir: Path, tmp_path: Path
) -> None:
    index = tmp_path / "i"
    backbone, adapter = str(pretrained_run / "backbone"), str(adapter_run / "adapter")
    args = ["--backbone", backbone, "--adapter", adapter, "--source", str(imdb_dir), "--out", str(index)]
    run_cli("embed", *args, "--lexical", "false")  # windows: the default
    assert json.loads((index / "index.json").read_text())["windows"] is True
    loaded = SemanticIndex.load(index)
    assert loaded.embedder.windows  # queries are read as the reviews were
    texts = loaded.reviews.column("text").to_pylist()
    long = max(range(len(texts)), key=lambda i: len(loaded.embedder.encode([texts[i]])[0]))
    assert len(loaded.embedder.encode([texts[long]])[0]) > loaded.embedder.max_length  # two windows or more
    whole = load_embedder(backbone, adapter).embed([texts[long]], progress=False)
    ends = load_embedder(backbone, adapter, windows=False).embed([texts[long]], progress=False)
    np.testing.assert_allclose(loaded.vectors[long].toarray(), whole.toarray(), atol=1e-5)
    assert abs(loaded.vectors[long] - ends).max() > 1e-3  # not the head and tail alone
    assert "--windows" in " ".join(run_cli("embed", "--help").stdout.split())
    run_cli("embed", *args, "--windows", "false", "--lexical", "false")  # head and tail, asked for
    assert json.loads((index / "index.json").read_text())["windows"] is False
    np.testing.assert_allclose(SemanticIndex.load(index).vectors[long].toarray(), ends.toarray(), atol=1e-5)


def test_every_verb_takes_help_config_and_print_config(pretrained_run: Path, tmp_path: Path) -> None:
    for verb, documented in [("embed", "--max_reviews"), ("search", "--backbone"), ("generate", "--top_p")]:
        out = " ".join(run_cli(verb, "--help").stdout.split())
        assert "--config" in out and "--print_config" in out and documented in out
    assert "sample within this probability mass" in " ".join(run_cli("generate", "--help").stdout.split())
    args = ["--backbone", str(pretrained_run / "backbone"), "--prompt", "A", "--prompt", "B"]
    printed = yaml.safe_load(run_cli("generate", *args, "--top_k", "7", "--print_config").stdout)
    assert printed["top_k"] == 7 and printed["prompt"] == ["A", "B"] and printed["strategy"] == "top_k"
    config = tmp_path / "generate.yaml"
    config.write_text(yaml.safe_dump({**printed, "max_new_tokens": 3, "seed": 0}))
    out = run_cli("generate", "--config", str(config)).stdout
    assert out.startswith("[1] A") and "\n[2] B" in out


def test_generate_prints_one_continuation_per_prompt(pretrained_run: Path) -> None:
    args = ["generate", "--backbone", str(pretrained_run / "backbone"), "--strategy", "top_k"]
    args += ["--top_k", "5", "--max_new_tokens", "8", "--seed", "0"]
    args += ["--prompt", "A wonderful film", "--prompt", "It was dull"]
    out = run_cli(*args).stdout  # --dtype auto: the faster dtype here, measured once and cached
    assert out.startswith("[1] A wonderful film") and "\n[2] It was dull" in out
    exact = run_cli(*args, "--dtype", "float32").stdout
    assert exact == run_cli(*args, "--dtype", "float32").stdout  # seeded: the same sample again
    for bad, message in [(["--top_k", "0"], "top_k must be >= 1"), (["--prompt", ""], "prompt 3 is empty")]:
        assert message in fails(*args, *bad)
    half = run_cli(*args, "--dtype", "bfloat16").stdout  # decoded by a bf16 copy of the weights
    assert half.startswith("[1] A wonderful film") and "\n[2] It was dull" in half
    err = fails(*args, "--dtype", "float16")
    assert err.startswith("error: --dtype: ") and "float16" in err and err.count("\n") == 1


def test_qk_norm_and_relu2_train_and_travel_with_the_backbone(
    tiny_fit_args: list[str], tmp_path: Path
) -> None:
    from imdb_transformer.core.backbone import load_backbone

    run_cli(
        "fit", *tiny_fit_args, "--model.qk_norm", "true", "--model.activation", "relu2",
        "--trainer.max_steps", "20",
    )  # fmt: skip
    run = tmp_path / "lightning_logs" / "version_0"
    losses = [v for _, v in read_metrics(run)["train/loss"]]
    assert losses[-1] < losses[0]
    config = load_backbone(run / "backbone").decoder.config
    assert config.qk_norm and config.activation == "relu2"  # recorded with the weights: loaded as trained


def test_muon_trains_the_blocks_and_resumes(tiny_fit_args: list[str], tmp_path: Path) -> None:
    args = [*tiny_fit_args, "--model.optimizer", "muon", "--model.learning_rate", "2e-3"]
    run_cli("fit", *args, "--trainer.max_steps", "20")
    first = tmp_path / "lightning_logs" / "version_0"
    losses = [v for _, v in read_metrics(first)["train/loss"]]
    assert losses[-1] < losses[0]
    state = torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"][0]
    assert set(state) == {"muon", "adamw"} and state["muon"]["state"]  # both halves saved, with momentum
    run_cli("fit", *args, "--ckpt_path", "last")  # and loaded again: the run goes on to step 30
    resumed = tmp_path / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt"
    assert torch.load(resumed, weights_only=True)["global_step"] == 30


def test_lstm_baseline_trains_through_the_same_cli(tiny_fit_args: list[str], tmp_path: Path) -> None:
    run_cli(
        "fit", *tiny_fit_args, "--config", str(REPO / "configs/lstm.yaml"),
        "--model.n_embd", "32", "--trainer.max_steps", "20",
    )  # fmt: skip
    run = tmp_path / "lightning_logs" / "version_0"
    metrics = read_metrics(run)
    assert len(metrics["val/bpb"]) == 2 and metrics["val/loss"][-1][1] < metrics["val/loss"][0][1]
    assert "LSTMLM" in (run / "config.yaml").read_text()
    err = fails("generate", "--backbone", str(run / "checkpoints" / "last.ckpt"), "--prompt", "A")
    assert "is not a checkpoint of a pretrained CausalLM" in err
