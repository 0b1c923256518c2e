"""The benchmark scripts run and print their table (on tiny sizes; timings are never asserted)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO


def run_script(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / name), *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_decode_speed_prints_cached_against_recomputed(tmp_path: Path) -> None:
    tiny = ["--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "32", "--vocab_size", "50"]
    record = tmp_path / "results" / "decode_speed.json"
    out = run_script(
        "decode_speed.py", *tiny, "--new_tokens", "8", "40", "--batch_size", "1", "2", "--out", str(record)
    )
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    cells = [[c.strip() for c in row.split("|")[1:3]] for row in rows]
    assert cells == [["1", "8"], ["1", "40"], ["2", "8"], ["2", "40"]]  # 40 slides past the context
    speedups = [[c.strip() for c in row.split("|")[5:8:2]] for row in rows]  # fp32 and bf16 cached
    assert "differ" not in out and all(a.endswith("x") and b.endswith("x") for a, b in speedups)
    assert "cached and recomputed give the same tokens" in out and "AVX512-BF16" in out
    saved = json.loads(record.read_text())  # --out: the printed table as a record, and where it came from
    assert [row[:2] for row in saved["tables"]["decoding"]["rows"]] == cells
    assert saved["benchmark"] == "decode_speed" and "decode_speed.py" in saved["command"]
    assert {"date", "commit", "torch"} <= saved.keys() and "AVX512-BF16" in saved["hardware"]["cpu"]
    check = saved["notes"]["bf16_check"]  # where the bf16 paths part ("-": nowhere; a bf16 tie can)
    assert (check["parted_at"] == "-") == check["cached_equals_recomputed"]


def test_train_speed_compares_both_decoders() -> None:
    tiny = ["--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "32", "--vocab_size", "50"]
    out = run_script(
        "train_speed.py", *tiny, "--batch_size", "2", "--steps", "1", "--rounds", "1", "--warmup", "1",
        "--peak_size", "128",
    )  # fmt: skip
    rows = [
        [c.strip() for c in line.split("|")[1:4]] for line in out.splitlines() if line[:3] in ("| f", "| b")
    ]
    expected = [[p, "off", kind] for p in ("fp32", "bf16") for kind in ("original", "ours")]
    assert rows == expected
    assert "AVX512-BF16" in out  # the header names the CPU's bf16 features


def test_muon_step_compares_torch_muon_with_the_hardware_precision(tmp_path: Path) -> None:
    record = tmp_path / "muon_step.json"
    out = run_script(
        "muon_step.py", "--rounds", "1", "--n_layer", "1", "--n_embd", "32", "--out", str(record)
    )
    rows = json.loads(record.read_text())["tables"]["muon_step"]["rows"]
    assert [row[0] for row in rows][0] == "torch.optim.Muon (bf16)" and rows[0][2] == "1.0x"
    assert rows[1][0].startswith("models.optim.Muon (") and rows[1][2].endswith("x") and "AVX" in out


def test_search_speed_times_each_index_size_and_mode(pretrained_run: Path, tmp_path: Path) -> None:
    from imdb_transformer.core.backbone import load_backbone
    from imdb_transformer.embedder import DocumentEmbedder
    from imdb_transformer.search import SemanticIndex

    backbone = str(pretrained_run / "backbone")
    texts = [f"review number {i} of a film" for i in range(30)]
    index = SemanticIndex.build(
        DocumentEmbedder(load_backbone(backbone)), texts, backbone=backbone, progress=False
    )
    index.save(tmp_path / "index")
    args = ["--index", str(tmp_path / "index"), "--queries", "3", "--sizes", "20", "90"]
    ann = ["--ann_sizes", "300", "--ann", "ivf"] if importlib.util.find_spec("faiss") else ["--ann_sizes"]
    out = run_script("search_speed.py", *args, *ann)
    rows = [line.split("|")[1:3] for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    sizes_modes = [(size.strip(), mode.strip()) for size, mode in rows if not size.strip().startswith("300")]
    assert sizes_modes == [(n, m) for n in ("20", "90") for m in ("dense", "lexical", "hybrid")]
    agree = [line.split("|")[5].strip() for line in out.splitlines() if line.startswith(("| 20 ", "| 90 "))]
    assert agree == ["7/7"] * 6  # the fast path's top 10 = the plain computation's
    if importlib.util.find_spec("faiss"):
        assert [mode.strip() for size, mode in rows if size.strip() == "300"] == ["exact", "FAISS ivf"]


def test_data_prep_times_cold_and_cached(imdb_dir: Path) -> None:
    out = run_script("data_prep.py", "--source", str(imdb_dir), "--vocab_size", "300", "--block_size", "32")
    assert "fit the tokenizer (" in out and "tokenize() all 400 reviews" in out
    assert "LMDataModule.prepare_data" in out and "ReviewsDataModule.prepare_data" in out


def test_retrieval_prints_every_method(pretrained_run: Path, adapter_run: Path, imdb_dir: Path) -> None:
    out = run_script(
        "retrieval.py", "--backbone", str(pretrained_run / "backbone"),
        "--adapter", str(adapter_run / "adapter"),
        "--source", str(imdb_dir), "--knn_reviews", "60", "--speed_reviews", "20", "--rounds", "1",
        "--val_fraction", "0.2", "--whiten_dims", "16",
    )  # fmt: skip
    methods = [
        line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ") and "|" in line[2:]
    ]
    expected = ["BM25 (bm25s)", "TF-IDF cosine (scikit-learn)", "dense: mean", "dense: weighted mean"]
    expected += ["dense: whitened mean", "dense: adapter", "mean pooling (default)", "adapter"]
    assert set(expected) <= set(methods)
    assert any(m.startswith("hybrid: adapter + BM25, alpha") for m in methods)
    assert "chosen alpha" in out and out.count("| # | dense before") == 5


def test_fusion_scores_every_ranker_and_fusion_with_ranx(
    pretrained_run: Path, adapter_run: Path, imdb_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    record = tmp_path / "fusion.json"
    out = run_script(
        "fusion.py", "--backbone", str(pretrained_run / "backbone"),
        "--adapters", str(adapter_run / "adapter"), "--source", str(imdb_dir),
        "--val_fraction", "0.2", "--depth", "20", "--test", "--out", str(record),
        "--runs", str(tmp_path / "runs"),
    )  # fmt: skip
    tables = json.loads(record.read_text())["tables"]
    assert list(tables) == ["held-out training reviews", "test reviews (80)"] and "| BM25 | " in out
    runs = ["BM25", "TF-IDF", "adapter 1", "adapter 1 + BM25, search"]
    runs += [f"adapter 1 + {lex}, {m}" for lex in ("BM25", "TF-IDF") for m in ("wsum", "rrf")]
    for table in tables.values():
        assert [row[0] for row in table["rows"]] == runs
        assert table["rows"][0][3:5] == ["1.00x", "-"]
        assert all(0 <= float(row[1]) <= 1 and row[4] != "-" for row in table["rows"][1:])
    chosen = json.loads(record.read_text())["notes"]["chosen"]
    assert chosen["adapter 1 + BM25, wsum"].startswith("weights ") and chosen[
        "adapter 1 + BM25, rrf"
    ].startswith("k ")
    alpha = chosen["adapter 1 + BM25, search"]  # chosen among 0.1 ... 0.9 on held-out, used on test
    assert alpha in {f"alpha {a / 10:g}" for a in range(1, 10)}

    stored = [p.name for p in (tmp_path / "runs").iterdir()]
    # 3 rankers x 2 pools, and the search runs: each weight on held-out, the chosen one on test
    assert len(stored) == 6 + 9 + 1 and all(name.endswith(".json") for name in stored)

    # a second call reads every ranker's stored run and compares more fusions: z-scores, all three rankers;
    # the adapter read another way (windows) is another ranker, computed and stored beside the others
    again = tmp_path / "again.json"
    out = run_script(
        "fusion.py", "--backbone", str(pretrained_run / "backbone"),
        "--adapters", str(adapter_run / "adapter"), "--source", str(imdb_dir),
        "--val_fraction", "0.2", "--depth", "20", "--out", str(again), "--runs", str(tmp_path / "runs"),
        "--norms", "min-max", "zmuv", "--three", "--readings", "head_tail", "windows", "--expand", "8",
    )  # fmt: skip
    assert all(
        f"{name}: read from" in out for name in ("BM25", "TF-IDF", "adapter 1", "adapter 1 + BM25, search")
    )
    assert "adapter 1, windows: read from" not in out
    # 16 stored before; the windows reading, alone and searched at each weight; each of the 4 rankers on the
    # expanded queries; and the expansions
    assert len(list((tmp_path / "runs").iterdir())) == 16 + 1 + 9 + 4 + 1
    rows = {
        row[0]: row for row in json.loads(again.read_text())["tables"]["held-out training reviews"]["rows"]
    }
    first = tables["held-out training reviews"]["rows"]
    assert all(rows[row[0]][1:3] == row[1:3] for row in first)  # the same runs, the same figures
    assert {"adapter 1 + BM25, wsum (zmuv)", "adapter 1 + BM25 + TF-IDF, wsum"} <= set(rows)
    expanded = ["BM25, expanded", "TF-IDF, expanded", "adapter 1, expanded", "adapter 1, windows, expanded"]
    assert set(expanded) | {"adapter 1, expanded + BM25, expanded, rrf"} <= set(rows)
    assert all(0 <= float(rows[name][1]) <= 1 for name in expanded)
    (kept,) = (tmp_path / "runs").glob("expansions-*.json")  # each held-out query, then the backbone's text
    common = _script("common", monkeypatch)
    queries = [common.halves(text)[0] for text in common.held_out_texts(str(imdb_dir), 0.2, 1234)]
    texts = json.loads(kept.read_text())
    assert len(texts) == len(queries) and all(t.startswith(q) for t, q in zip(texts, queries, strict=True))
    assert sum(map(len, texts)) > sum(map(len, queries))
    assert (
        len(json.loads(again.read_text())["notes"]["chosen"]["adapter 1 + BM25 + TF-IDF, wsum"].split("/"))
        == 3
    )


def test_fusion_expansions_are_the_query_then_what_the_backbone_writes_kept_and_read_back(
    pretrained_run: Path, adapter_run: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    fusion = _script("fusion", monkeypatch)
    from imdb_transformer.core.backbone import load_backbone
    from imdb_transformer.core.head import load_adapter
    from imdb_transformer.embedder import DocumentEmbedder

    backbone = load_backbone(pretrained_run / "backbone")  # a 64-token context
    long = " ".join(["the film was long and slow"] * 30)  # past the context: its last 56 tokens prompt
    queries = ["a film about a dog and", "the acting was", "I saw it twice", long]
    texts = fusion.expanded(backbone, queries, 8, str(tmp_path))
    (kept,) = tmp_path.glob("expansions-*.json")
    assert json.loads(kept.read_text()) == texts and len(texts) == 4
    assert all(t.startswith(q) for t, q in zip(texts, queries, strict=True))
    assert sum(len(t) > len(q) for t, q in zip(texts, queries, strict=True)) >= 3  # an end of text adds none
    capsys.readouterr()
    assert fusion.expanded(backbone, queries, 8, str(tmp_path)) == texts  # read, not written again
    assert "expansions: read from" in capsys.readouterr().out
    assert fusion.expanded(backbone, queries, 8, None) == texts  # greedy: the same text, without a folder
    assert len(list(tmp_path.glob("expansions-*.json"))) == 1
    kept.write_text(json.dumps(texts[:2]))  # a stored file that does not fit these queries is refused
    with pytest.raises(RuntimeError, match="not 4 texts, each starting with its query.*delete it"):
        fusion.expanded(backbone, queries, 8, str(tmp_path))

    assert fusion.expanded(backbone, queries[:1], 32, None)[0].startswith(queries[0])  # half the context
    with pytest.raises(ValueError, match=r"--expand 33 is out of range.*1 <= --expand <= 32"):
        fusion.expanded(backbone, queries, 33, None)
    with pytest.raises(SystemExit) as stop:  # the query must keep at least half of the context
        fusion.main(["--backbone", str(pretrained_run / "backbone"), "--adapters", "x", "--expand", "33"])
    assert stop.value.code == 2 and "--expand 33 is out of range" in capsys.readouterr().err

    # every run is named as its table row, whether stored (--runs) or not
    embedder = DocumentEmbedder(backbone, head=load_adapter(adapter_run / "adapter", backbone))
    docs = ["a dog in the film", "the film's acting was poor", "good acting, a good dog", "a long slow film"]
    for folder in (None, str(tmp_path / "runs")):
        runs, searched = fusion.pool_runs(backbone, {"adapter 1": embedder}, queries, docs, 3, folder, 8)
        assert searched == {}  # no weights given: no search runs
        names = ["BM25", "TF-IDF", "adapter 1"]
        assert list(runs) == names + [f"{name}, expanded" for name in names]
        assert all(run.name == name for name, run in runs.items())


def test_fusion_search_runs_rank_as_the_index_searches_at_each_weight(
    pretrained_run: Path, adapter_run: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    fusion = _script("fusion", monkeypatch)
    from imdb_transformer.core.backbone import load_backbone
    from imdb_transformer.core.head import load_adapter
    from imdb_transformer.embedder import DocumentEmbedder
    from imdb_transformer.search import SemanticIndex

    backbone = load_backbone(pretrained_run / "backbone")
    embedder = DocumentEmbedder(backbone, head=load_adapter(adapter_run / "adapter", backbone))
    words = ["dog", "film", "acting", "slow", "plot", "music", "funny", "dull", "actor", "scene", "ending"]
    n = len(words)
    docs = [f"the {words[i]} and the {words[(i + 3) % n]} of this {words[(i + 5) % n]}" for i in range(n)]
    queries = ["a dog in the film", "slow plot, dull ending", "the music was funny", "great actor"]
    runs, searched = fusion.ranker_runs(
        {"adapter 1": embedder}, queries, docs, 5, str(tmp_path), weights={"adapter 1": [0.1, 0.9]}
    )
    assert list(runs) == ["BM25", "TF-IDF", "adapter 1"] and list(searched["adapter 1"]) == [0.1, 0.9]
    orders = set()
    for alpha, run in searched["adapter 1"].items():
        assert run.name == "adapter 1 + BM25, search"
        index = SemanticIndex.build(embedder, docs, alpha=alpha, progress=False)
        for i, query in enumerate(queries):
            rows, scores = index.top_k(embedder.embed([query], progress=False), query, "hybrid", 10)
            ranking = run[f"q{i}"]
            assert list(ranking) == [f"d{r}" for r in rows]  # the index's own hybrid ranking, in its order
            assert np.allclose(list(ranking.values()), scores, atol=1e-6)
            orders.add((i, tuple(rows)))
    assert len(orders) > len(queries)  # the weight changes some ranking: each run is its own weight's
    capsys.readouterr()
    again = fusion.ranker_runs(  # another --depth: the other runs are computed, the search run is read
        {"adapter 1": embedder}, queries, docs, 7, str(tmp_path), weights={"adapter 1": [0.9]}
    )[1]
    out = capsys.readouterr().out
    assert "adapter 1 + BM25, search: read from" in out and "adapter 1: read from" not in out
    assert again["adapter 1"][0.9].to_dict() == searched["adapter 1"][0.9].to_dict()
    # each adapter is searched at its own weights only (on test: the one chosen for it)
    both = {"adapter 1": embedder, "adapter 2": embedder}
    own = fusion.ranker_runs(both, queries, docs, 5, None, weights={"adapter 2": [0.9]})[1]
    assert list(own) == ["adapter 2"] and list(own["adapter 2"]) == [0.9]


def test_fusion_chooses_each_adapters_search_weight_by_mrr_the_lower_on_a_tie(monkeypatch) -> None:
    fusion = _script("fusion", monkeypatch)
    from ranx import Run

    qrels = fusion.qrels_of(2)
    worse = Run({"q0": {"d0": 1.0}, "q1": {"d0": 1.0, "d1": 0.5}})  # MRR@10 0.75
    best = Run({"q0": {"d0": 1.0}, "q1": {"d1": 1.0}})  # MRR@10 1
    searched = {"adapter 1": {0.3: worse, 0.5: best, 0.7: best}, "adapter 2": {0.2: best, 0.4: worse}}
    assert fusion.best_alphas(qrels, searched) == {"adapter 1": 0.5, "adapter 2": 0.2}


def test_fusion_reads_a_stored_run_by_what_made_it_whatever_its_name(tmp_path: Path, monkeypatch) -> None:
    fusion = _script("fusion", monkeypatch)
    from ranx import Run

    made = []

    def make() -> Run:
        made.append(1)
        return Run({"q0": {"d0": 1.0}, "q1": {"d1": 0.5}}, name="made")

    store = fusion.RunStore(str(tmp_path), ["a", "b"], ["c", "d"], depth=10)
    first = store.get("adapter 1", "weights A", make)
    second = store.get("adapter 2", "weights A", make)  # the same adapter in another place of --adapters
    assert len(made) == 1 and (first.name, second.name) == ("adapter 1", "adapter 2")
    assert second.to_dict() == first.to_dict()
    store.get("adapter 2", "weights B", make)  # another adapter: computed
    fewer = fusion.RunStore(str(tmp_path), ["a"], ["c", "d"], depth=10)  # another pool: computed
    fewer.get("adapter 1", "weights A", lambda: Run({"q0": {"d0": 1.0}}))
    assert len(made) == 2 and len(list(tmp_path.iterdir())) == 3


def test_fusion_tests_each_run_against_bm25_and_adapter_1_by_fishers_randomization_test(monkeypatch) -> None:
    fusion = _script("fusion", monkeypatch)
    from ranx import Qrels, Run

    rng = np.random.default_rng(0)
    qrels = Qrels({f"q{i}": {f"d{i}": 1} for i in range(200)})

    def ranked(at: list[int], name: str) -> Run:  # query i's right document at rank at[i] of 5
        return Run(
            {f"q{i}": {f"d{i + (s - r) % 5}": 1.0 - s / 10 for s in range(5)} for i, r in enumerate(at)},
            name=name,
        )

    ranks = rng.integers(0, 5, 200).tolist()
    bm25 = ranked(ranks, "BM25")
    same = ranked(ranks, "same")  # the same ranking: no difference to find
    better = ranked([r // 3 for r in ranks], "better")  # the right document higher for most queries
    noisy = ranked(rng.integers(0, 5, 200).tolist(), "noisy")  # as good on average, other queries
    assert fusion.p_against(qrels, bm25, same) == 1.0
    assert fusion.p_against(qrels, bm25, better) < 0.01
    assert fusion.p_against(qrels, bm25, noisy) > 0.01

    # with two adapters, each run of adapter 2 is also tested against the same run made with adapter 1: the
    # adapters rank alike (p 1 against each other) and better than BM25; fused, adapter 2 is the better one
    higher = [r // 3 for r in ranks]
    runs = {
        "BM25": bm25, "adapter 1": ranked(higher, "adapter 1"), "adapter 2": ranked(higher, "adapter 2"),
        "adapter 1 + BM25, wsum": ranked(ranks, "adapter 1 + BM25, wsum"),
        "adapter 2 + BM25, wsum": ranked(higher, "adapter 2 + BM25, wsum"),
    }  # fmt: skip
    record = fusion.Record("fusion")
    fusion.report(record, "pool", qrels, runs, {})
    table = record.tables["pool"]
    assert table.columns[-1] == "p vs adapter 1 (MRR@10)"
    p_vs_first = {row[0]: row[-1] for row in table.rows}
    assert p_vs_first["BM25"] == p_vs_first["adapter 1"] == p_vs_first["adapter 1 + BM25, wsum"] == "-"
    assert p_vs_first["adapter 2"] == "1" and p_vs_first["adapter 2 + BM25, wsum"].endswith(" *")
    assert {row[0]: row[4] for row in table.rows}["adapter 2"].endswith(" *")  # against BM25: better
    one = fusion.Record("fusion")  # one adapter: no such column
    fusion.report(one, "pool", qrels, {"BM25": bm25, "adapter 1": runs["adapter 1"]}, {})
    assert one.tables["pool"].columns[-1] == "chosen"


def test_adapter_choice_scores_each_adapter_alone_and_at_each_alpha(
    pretrained_run: Path, adapter_run: Path, imdb_dir: Path, tmp_path: Path
) -> None:
    record = tmp_path / "choice.json"
    run_script(
        "adapter_choice.py", "--backbone", str(pretrained_run / "backbone"),
        "--adapters", str(adapter_run / "adapter"), "--source", str(imdb_dir), "--alphas", "0.3", "0.7",
        "--out", str(record),
    )  # fmt: skip
    (row,) = json.loads(record.read_text())["tables"]["adapters"]["rows"]
    assert row[0] == str(adapter_run / "adapter") and all(0 <= float(v) <= 1 for v in row[2:6])


def _script(name: str, monkeypatch):
    """``benchmarks/NAME.py`` as a module, its ``common`` importable."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sentiment_heads_read_the_backbone_once_for_every_head(
    pretrained_run: Path, imdb_dir: Path, cache_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """Three heads and an ensemble on validation; the frozen backbone reads each review once in all."""
    from imdb_transformer.core.decoder import CausalDecoder

    heads = _script("sentiment_heads", monkeypatch)
    rows = []
    original = CausalDecoder.hidden_states

    def counted(self, ids, *args, **kwargs):
        rows.append(ids.size(0))
        return original(self, ids, *args, **kwargs)

    monkeypatch.setattr(CausalDecoder, "hidden_states", counted)
    record = tmp_path / "heads.json"
    heads.main([
        "--backbone", str(pretrained_run / "backbone"), "--source", str(imdb_dir),
        "--cache_dir", str(cache_dir), "--runs", str(tmp_path / "runs"), "--max_epochs", "2",
        "--out", str(record),
        "--ensemble", "mean=pooled states alone|word votes alone (bag of pieces)",
    ])  # fmt: skip
    tables = json.loads(record.read_text())["tables"]
    names = [row[0] for row in tables["validation"]["rows"]]
    assert names == [*[v.partition("=")[0] for v in heads.DEFAULT_VARIANTS], "mean"]
    assert all(0.0 <= float(row[2].rstrip("%")) <= 100.0 for row in tables["validation"]["rows"])
    assert len(tables["mcnemar"]["rows"]) == 6
    assert sum(rows) == 160  # 144 training + 16 validation reviews, each read once by the first head
    assert len(list((tmp_path / "runs").glob("*/best-*.ckpt"))) == 3
    with pytest.raises(SystemExit):  # a used --runs folder is refused
        heads.main(["--backbone", str(pretrained_run / "backbone"), "--runs", str(tmp_path / "runs")])


def test_sentiment_heads_on_windows_leave_classifiers_that_read_windows(
    pretrained_run: Path, imdb_dir: Path, cache_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """``--windows``: the heads train on every window of a review, and their checkpoints say so, so
    ``sentiment_test.py`` and ``classify`` read the test reviews the same way."""
    from imdb_transformer.core.backbone import load_spec
    from imdb_transformer.ensemble import Reading, SentimentEnsemble

    heads = _script("sentiment_heads", monkeypatch)
    heads.main([
        "--backbone", str(pretrained_run / "backbone"), "--source", str(imdb_dir),
        "--cache_dir", str(cache_dir), "--runs", str(tmp_path / "runs"), "--max_epochs", "1", "--windows",
        "--out", str(tmp_path / "w.json"),
        "--variant", "in context=--model.pooled false --model.lexical context",
    ])  # fmt: skip
    assert json.loads((tmp_path / "w.json").read_text())["notes"]["windows"] is True
    (checkpoint,) = (tmp_path / "runs").glob("*/best-*.ckpt")
    context = load_spec(pretrained_run / "backbone").config.block_size
    assert SentimentEnsemble([checkpoint]).readings == [Reading(context, windows=True)]


def test_mcnemar_table_names_a_p_value_below_a_doubles_range(monkeypatch) -> None:
    """Thousands of one-sided disagreements give p = 0 in floating point: the table says how small."""
    import numpy as np

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from common import Record, mcnemar_table

    record = Record("mcnemar")
    a = np.ones(5000, bool)
    b = np.r_[np.zeros(4000, bool), np.ones(1000, bool)]
    mcnemar_table(record, {"a": a, "b": b, "same": a.copy()})
    rows = record.as_dict()["tables"]["mcnemar"]["rows"]
    assert rows[0] == ["a", "b", "4000", "0", "< 1e-300"]
    assert rows[1] == ["a", "same", "0", "0", "1"]
