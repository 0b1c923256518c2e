"""EmbeddingAdapter and hybrid search: frozen backbone, contrastive learning, saving, fusion, FAISS."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_adapter_args
from helpers import fails, read_metrics, run_cli

from imdb_transformer.core.backbone import Backbone, export_backbone, load_backbone
from imdb_transformer.core.decoder import CausalDecoder
from imdb_transformer.core.head import AdapterError, EmbeddingHead, HeadConfig, load_adapter, save_adapter
from imdb_transformer.data.crops import (
    ContrastiveDataModule,
    TopicBatches,
    bm25_idf,
    bm25_logits,
    bm25_scores,
    collate_crops,
    disjoint_crops,
    neighbours,
    piece_counts,
    piece_idf,
    random_crop,
    topics,
)
from imdb_transformer.embedder import DocumentEmbedder
from imdb_transformer.errors import InputError
from imdb_transformer.models.adapter import EmbeddingAdapter, info_nce
from imdb_transformer.search import SemanticIndex
from imdb_transformer.search import ranking as search_ranking
from imdb_transformer.text.imdb import load_reviews
from imdb_transformer.text.tokenizer import EOS_ID


def test_info_nce_is_low_when_pairs_match_and_chance_when_they_do_not() -> None:
    a = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    loss, accuracy, _ = info_nce(a, a, temperature=0.05)
    assert accuracy == 1.0 and loss < 0.1
    loss, _, _ = info_nce(a, torch.roll(a, 1, 0), temperature=1e6)  # every pair looks alike: uniform
    assert loss.item() == pytest.approx(math.log(8), rel=1e-3)


def test_bm25_over_pieces_scores_as_bm25s_does() -> None:
    import bm25s

    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 30, rng.integers(1, 40)).tolist() for _ in range(12)]
    queries = [rng.integers(0, 30, rng.integers(1, 8)).tolist() for _ in range(6)]
    queries[0] = [docs[0][0]] * 3  # a piece said three times counts three times
    retriever = bm25s.BM25()  # Lucene's BM25 (k1 1.5, b 0.75), by the library `search` uses
    retriever.index([[f"w{t}" for t in doc] for doc in docs], show_progress=False)
    counts = piece_counts(np.concatenate(docs), np.array([len(d) for d in docs]), 30)
    idf = bm25_idf(np.bincount(counts.indices, minlength=30), len(docs))
    known = [[f"w{t}" for t in q if f"w{t}" in retriever.vocab_dict] for q in queries]
    expected = np.stack([retriever.get_scores(q) for q in known])
    assert expected.max() > 1 and np.allclose(bm25_scores(queries, docs, idf), expected, atol=1e-5)


def test_the_lexical_prior_ranks_each_crop_against_the_others_scaled_per_row() -> None:
    idf = np.ones(12, np.float32)
    a = [[1, 2], [3, 4], [5, 6]]
    b = [[3, 3, 8], [2, 7], [9]]  # a[0] shares a piece with b[1] only, a[1] with b[0]; b[2] with none
    prior = bm25_logits(a, b, idf, weight=4.0)
    assert prior.shape == (2, 3, 3)
    assert prior[0].argmax(1)[:2].tolist() == [1, 0]  # row: an a crop, column: a b crop (as a @ b.T)
    assert prior[1].argmax(1)[:2].tolist() == [1, 0]  # row: a b crop, column: an a crop (as its transpose)
    assert prior[0, 2].abs().sum() == 0 and prior[1, 2].abs().sum() == 0  # no match: zeros, not 0 / 0
    assert prior[0].amax(1)[:2].tolist() == [4.0, 4.0] and prior.min() == 0
    raw = bm25_scores(b, a, idf)  # the second ranking is BM25 with the b crops as queries
    assert torch.allclose(prior[1, :2], torch.from_numpy(4 * raw[:2] / raw[:2].max(1, keepdims=True)))


def test_a_prior_that_already_ranks_the_pairs_leaves_the_vectors_less_to_learn() -> None:
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    b = torch.nn.functional.normalize(a + 0.5 * torch.randn(8, 16), dim=-1)
    plain, accuracy, _ = info_nce(a, b, temperature=0.1)
    helped, same, _ = info_nce(a, b, temperature=0.1, prior=torch.eye(8).expand(2, 8, 8) * 5)
    misled, _, _ = info_nce(a, b, temperature=0.1, prior=torch.roll(torch.eye(8), 1, 1).expand(2, 8, 8) * 5)
    assert helped < plain < misled and same == accuracy  # the first share counts the vectors' own ranking
    assert info_nce(a, b, 0.1, prior=torch.eye(8).expand(2, 8, 8) * 100)[2] == 1  # the second, with the prior
    prior = torch.randn(2, 8, 8)  # each half added to its own direction's logits
    logits, target = a @ b.T / 0.1, torch.arange(8)
    expected = (F.cross_entropy(logits + prior[0], target) + F.cross_entropy(logits.T + prior[1], target)) / 2
    assert torch.allclose(info_nce(a, b, 0.1, prior)[0], expected)


def test_the_prior_scores_each_crops_text_without_its_eos() -> None:
    idf = np.zeros(64, np.float32)
    idf[EOS_ID] = 100.0  # were the EOS scored, every pair would match through it
    idf[10:] = 1.0
    items = [{"idx": 0, "ids": [10, 11]}, {"idx": 1, "ids": [20, 21]}, {"idx": 2, "ids": [30]}]
    batch = collate_crops(items, crop_min=2, crop_max=2, fixed=True, idf=idf, prior_weight=1.0)
    # with the EOS scored, a shorter crop would outscore a longer one that shares nothing else
    assert torch.equal(batch["prior"], torch.eye(3).expand(2, 3, 3))


def test_batches_carry_the_lexical_prior_from_the_training_reviews_idf(
    imdb_dir: Path, cache_dir: Path, pretrained_run: Path
) -> None:
    dm = ContrastiveDataModule(
        str(imdb_dir), str(cache_dir), backbone=str(pretrained_run / "backbone"), lexical_prior=3.0,
        batch_size=8, val_fraction=0.25,
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    idf = dm.idf()
    assert idf.shape == (dm.tokenizer.vocab_size,) and idf.min() >= 0
    train = dm.splits["train"]
    df = np.zeros(len(idf), int)  # in how many training reviews (held-out ones aside) each piece is
    for i in range(len(train)):
        df[list(set(train[i]["ids"]))] += 1
    assert len(train) == 240 and np.allclose(idf, bm25_idf(df, 240))
    for loader in (dm.train_dataloader(), dm.val_dataloader()):  # val/loss measured as training's
        assert next(iter(loader))["prior"].amax((1, 2)).tolist() == [3.0, 3.0]
    dm.lexical_prior = 0.0
    assert "prior" not in next(iter(dm.train_dataloader()))
    with pytest.raises(InputError, match="--data.lexical_prior must be 0 or more"):
        ContrastiveDataModule("unused", lexical_prior=-1)


def test_an_adapter_for_hybrid_search_trains_through_the_cli_with_the_lexical_prior(
    pretrained_run: Path, imdb_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    args = tiny_adapter_args(pretrained_run, imdb_dir, cache_dir, tmp_path)
    run_cli("fit", *args, "--data.lexical_prior", "5")
    metrics = read_metrics(tmp_path / "lightning_logs" / "version_0")
    assert metrics["val/acc"][-1][1] > 0.5  # the head's own in-batch top-1 of held-out pairs; chance 1/32
    assert metrics["val/acc_hybrid"][-1][1] > 0.5  # the head and BM25 together
    assert (tmp_path / "lightning_logs/version_0/adapter/adapter.safetensors").is_file()


def test_crops_are_spans_of_the_review_after_an_eos() -> None:
    ids = list(range(10, 110))
    rng = random.Random(0)
    for _ in range(50):
        crop = random_crop(ids, rng, 5, 20)
        assert crop[0] == 3 and 5 <= len(crop) - 1 <= 20
        start = ids.index(crop[1])
        assert crop[1:] == ids[start : start + len(crop) - 1]
    assert random_crop([7, 8], rng, 5, 20) == [3, 7, 8]  # shorter than crop_min: the whole review


def test_disjoint_crops_share_no_position_and_stay_in_bounds() -> None:
    ids = list(range(10, 110))  # each id marks its position
    rng = random.Random(0)
    sides = set()
    for _ in range(200):
        a, b = disjoint_crops(ids, rng, 5, 20)
        assert a[0] == b[0] == 3 and 1 <= len(a) - 1 <= 20 and 1 <= len(b) - 1 <= 20
        assert not set(a[1:]) & set(b[1:])
        for crop in (a, b):  # each a contiguous span of the review
            start = ids.index(crop[1])
            assert crop[1:] == ids[start : start + len(crop) - 1]
        sides.add(a[1] < b[1])
        cut_side = a if a[1] < b[1] else b
        assert ids.index(cut_side[-1]) < 2 * len(ids) // 3  # the earlier crop ends before the cut's latest
    assert sides == {True, False}  # either side comes first
    assert disjoint_crops([7], rng, 5, 20) == ([3, 7], [3, 7])  # one token: nothing to cut
    batch = collate_crops([{"ids": ids, "idx": 0}] * 2, 5, 20, fixed=True, positives="disjoint")
    assert torch.equal(batch["a_ids"][0], batch["a_ids"][1])  # fixed: seeded by the review's index
    assert not (set(batch["a_ids"][0].tolist()) - {0, 3}) & set(batch["b_ids"][0].tolist())


def test_positives_must_be_a_known_kind() -> None:
    with pytest.raises(InputError, match="--data.positives must be one of crops, disjoint"):
        ContrastiveDataModule("unused", positives="halves")


def test_topics_gather_reviews_that_share_their_rarer_words() -> None:
    recovered = 0
    for seed in range(10):  # k-means finds a local optimum: nearly always the groups here
        rng = random.Random(seed)
        common = list(range(10))  # in every review
        rare = [list(range(100 + 10 * g, 110 + 10 * g)) for g in range(3)]  # each group's own words
        ids = [[*rng.choices(common, k=30), *rng.choices(rare[i % 3], k=10)] for i in range(90)]
        tokens, lengths = np.concatenate(ids), np.array([len(r) for r in ids])
        found = topics(tokens, lengths, 200, 3, seed=seed)
        recovered += sorted(len(set(found[g::3])) for g in range(3)) == [1, 1, 1] and len(set(found)) == 3
        assert len(set(topics(tokens, lengths, 200, 45, seed=seed))) == 45  # no topic left empty
    assert recovered >= 9


def test_topic_batches_deal_whole_runs_of_one_topic_to_each_process_by_epoch() -> None:
    topic = np.random.default_rng(0).permutation(np.repeat(np.arange(5), [8, 9, 16, 8, 11]))  # 52
    one = TopicBatches(topic, batch_size=8, seed=1)
    first = list(one)
    assert len(first) == len(one) == 48 and len(set(first)) == 48  # 6 whole runs; 4 reviews sit out
    runs = [first[i : i + 8] for i in range(0, 48, 8)]
    assert all(len({topic[j] for j in run}) <= 2 for run in runs)  # a topic, or where two meet
    assert list(one) == first  # the same epoch: the same order, as a resumed run needs
    one.set_epoch(1)
    assert list(one) != first
    shares = [list(TopicBatches(topic, 8, seed=1, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 24 and not set(shares[0]) & set(shares[1])
    halves = TopicBatches(topic, 8, seed=1, num_replicas=2, rank=0)
    assert (halves.num_samples, halves.total_size) == (24, 48)  # DistributedSampler's counts agree
    assert sorted(shares[0] + shares[1]) == sorted(first)  # the same runs, dealt whole
    assert {tuple(shares[0][i : i + 8]) for i in (0, 8, 16)} <= {tuple(r) for r in runs}


def test_each_reviews_neighbour_is_the_other_review_bm25_ranks_first_for_its_rarer_words() -> None:
    rng = random.Random(0)
    common = list(range(10))  # in every review
    ids = [[*rng.choices(common, k=30), 100 + i // 2, 100 + i // 2] for i in range(40)]  # pairs share a word
    ids.append(rng.choices(common, k=30))  # shares only common words: BM25 still ranks someone first
    ids.append([150])  # shares nothing: its own neighbour
    tokens, lengths = np.concatenate(ids), np.array([len(r) for r in ids])
    found = neighbours(tokens, lengths, 200, terms=4, chunk=7)  # chunks that split the pairs
    assert found[:40].tolist() == [i ^ 1 for i in range(40)]  # 0 <-> 1, 2 <-> 3, ...
    assert found[40] in range(40) and found[41] == 41
    # the same as BM25 over all reviews with a query of its 4 pieces of highest tf-idf, itself aside
    tf = piece_counts(tokens, lengths, 200)
    idf = piece_idf(tf)
    rank = tf.toarray()[3] * idf
    query = [int(t) for t in np.argsort(-rank, kind="stable")[:4]]
    scores = bm25_scores([query], ids, idf)[0]
    scores[3] = -1
    assert found[3] == int(np.argmax(scores)) == 2


def test_neighbour_positives_crop_the_partner_for_about_half_the_training_reviews() -> None:
    items = [{"ids": [1000 + i] * 20, "idx": i, "partner": [5000 + i] * 20} for i in range(400)]
    batch = collate_crops(items, 4, 8, fixed=False, positives="neighbours")  # 400 draws: 200 +- 10
    from_partner = [int(row[1]) >= 5000 for row in batch["b_ids"]]
    assert all(int(row[1]) < 5000 for row in batch["a_ids"])  # ``a`` is always the review's own
    assert 150 < sum(from_partner) < 250
    fixed = collate_crops([{k: v for k, v in item.items() if k != "partner"} for item in items], 4, 8, True,
                          positives="neighbours")  # fmt: skip
    assert all(int(row[1]) < 5000 for row in fixed["b_ids"])  # validation items bring no partner: own crops


def test_an_adapter_trains_on_neighbour_positives_through_the_cli(
    pretrained_run: Path, imdb_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    args = tiny_adapter_args(pretrained_run, imdb_dir, cache_dir, tmp_path)
    out = run_cli("fit", *args, "--data.positives", "neighbours", "--data.batches", "topics")
    assert "Neighbours: " in out.stdout + out.stderr and "Topic batches: " in out.stdout + out.stderr
    acc = [v for _, v in read_metrics(tmp_path / "lightning_logs" / "version_0")["val/acc"]]
    assert acc[-1] > 0.5  # held-out pairs (own crops) still find each other in-batch; chance 1/32


def test_batches_must_be_a_known_kind() -> None:
    with pytest.raises(InputError, match="--data.batches must be one of random, topics"):
        ContrastiveDataModule("unused", batches="hard")


def test_a_sparse_adapter_trains_on_topic_batches_through_the_cli(
    pretrained_run: Path, imdb_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    args = tiny_adapter_args(pretrained_run, imdb_dir, cache_dir, tmp_path)
    out = run_cli("fit", *args, "--data.batches", "topics")
    assert "Topic batches: " in out.stdout + out.stderr
    acc = [v for _, v in read_metrics(tmp_path / "lightning_logs" / "version_0")["val/acc"]]
    assert acc[-1] > 0.5  # held-out pairs still find each other in-batch; chance 1/32
    err = fails("fit", *args, "--data.batches", "topics", "--data.max_reviews", "10")
    assert "needs a whole batch" in err and "lower --data.batch_size" in err


def test_topic_batches_train_under_ddp_on_two_cpu_processes(
    pretrained_run: Path, imdb_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    ddp = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    args = tiny_adapter_args(pretrained_run, imdb_dir, cache_dir, tmp_path)
    out = run_cli("fit", *args, *ddp, "--data.batches", "topics", "--trainer.max_steps", "4", process=True)
    assert (out.stdout + out.stderr).count("Topic batches: ") == 1  # found once, by the first process
    assert (tmp_path / "lightning_logs/version_0/adapter/adapter.safetensors").is_file()


def test_the_data_never_reads_test_reviews(imdb_dir: Path, cache_dir: Path, pretrained_run: Path) -> None:
    dm = ContrastiveDataModule(str(imdb_dir), str(cache_dir), backbone=str(pretrained_run / "backbone"))
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == 160 + 160  # train + unsupervised
    with pytest.raises(ValueError, match="never reads test reviews"):
        dm.test_dataloader()
    val = [next(iter(dm.val_dataloader()))["a_ids"] for _ in range(2)]
    assert torch.equal(*val)  # validation crops are the same every time


def test_a_tiny_sparse_adapter_trains_through_the_cli_and_its_crops_find_each_other(
    adapter_run: Path,
) -> None:
    metrics = read_metrics(adapter_run)
    assert [v for _, v in metrics["val/acc"]][-1] > 0.5  # in-batch top-1 of held-out pairs; chance 1/32
    assert sorted(p.name for p in (adapter_run / "adapter").iterdir()) == [
        "adapter.json",
        "adapter.safetensors",
    ]


def test_a_tiny_dense_adapter_trains_through_the_cli_and_its_held_out_loss_falls(
    pretrained_run: Path, imdb_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    run_cli(
        "fit",
        *tiny_adapter_args(pretrained_run, imdb_dir, cache_dir, tmp_path),
        "--model.pooling",
        "attention",
        "--trainer.max_steps",
        "40",
    )
    val = [v for _, v in read_metrics(tmp_path / "lightning_logs" / "version_0")["val/loss"]]
    assert len(val) == 4 and val[-1] < val[0] - 0.1  # held-out pairs with fixed crops: a steady measure


def test_the_sparse_head_learns_its_token_weights() -> None:
    """Gradients reach the token weights through the max over each token's occurrences."""
    torch.manual_seed(0)
    head = EmbeddingHead(HeadConfig(n_states=1, n_embd=16, pooling="sparse", vocab_size=50, dropout=0.0))
    ids = torch.randint(0, 50, (16, 12))
    states = [torch.nn.functional.embedding(ids, torch.randn(50, 16))]  # a token's state is its identity
    crop = [s.roll(3, 1)[:, :9] for s in states], ids.roll(3, 1)[:, :9]  # 9 of the same tokens, shifted
    keep = torch.ones(16, 12, dtype=torch.bool)
    optimiser = torch.optim.AdamW(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss, _, _ = info_nce(head(states, keep, ids), head(crop[0], keep[:, :9], crop[1]), 0.05)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_a_term_bias_weighs_every_occurrence_of_its_token() -> None:
    torch.manual_seed(0)
    head = EmbeddingHead(
        HeadConfig(1, 16, pooling="sparse", vocab_size=50, dropout=0.0, term_bias=True)
    ).eval()
    ids = torch.tensor([[5, 7, 9]])
    states, keep = [torch.randn(1, 3, 16)], torch.ones(1, 3, dtype=torch.bool)
    before = head(states, keep, ids)
    with torch.no_grad():
        head.term[7] = 5.0  # token 7 counts more wherever it appears
    after = head(states, keep, ids)
    assert after[0, 7] / after[0, 5] > before[0, 7] / before[0, 5]
    assert after[0].nonzero().flatten().tolist() == [5, 7, 9]  # still only the review's own tokens
    with pytest.raises(InputError, match="term_bias, pairs and expansion .* need pooling='sparse'"):
        EmbeddingHead(HeadConfig(1, 16, pooling="attention", term_bias=True))


def test_pairs_add_one_dimension_per_pair_of_adjacent_pieces() -> None:
    from imdb_transformer.core.head import PAIR_BITS
    from imdb_transformer.core.lexical import pair_buckets

    head = EmbeddingHead(HeadConfig(1, 16, pooling="sparse", vocab_size=50, dropout=0.0, pairs=True)).eval()
    assert head.config.out_dim == 50 + 2**PAIR_BITS
    ids, keep = torch.tensor([[5, 7, 9, 0]]), torch.tensor([[True, True, True, False]])  # one pad
    found = head([torch.randn(1, 4, 16)], keep, ids)[0].nonzero().flatten().tolist()
    pairs = [
        50 + pair_buckets(torch.tensor(a), torch.tensor(b), 50, PAIR_BITS).item() for a, b in ((5, 7), (7, 9))
    ]
    assert found == sorted([5, 7, 9, *pairs])  # the pieces and their two pairs; none with the padding
    swapped = (
        head([torch.randn(1, 4, 16)], keep, torch.tensor([[7, 5, 9, 0]]))[0].nonzero().flatten().tolist()
    )
    assert set(swapped[3:]) != set(pairs)  # pairs are ordered: "7 5" is not "5 7"


def test_expansion_weighs_entries_the_review_lacks_through_the_lm_head() -> None:
    torch.manual_seed(0)
    config = HeadConfig(1, 16, pooling="sparse", vocab_size=50, dropout=0.0, expansion=True)
    head, embedding = EmbeddingHead(config).eval(), torch.randn(50, 16)
    ids, keep = torch.tensor([[5, 7, 9, 0]]), torch.tensor([[True, True, True, False]])
    states = [torch.randn(1, 4, 16)]
    with torch.no_grad():
        head.expand_bias.fill_(-100.0)  # no entry reaches the LM head's threshold: the review's own tokens
        assert head(states, keep, ids, embedding=embedding)[0].nonzero().flatten().tolist() == [5, 7, 9]
        head.expand_bias.zero_()
        head.expand_bias[[20, 5]] = 50.0  # the LM head now points at entry 20, and at 5 again
        vector, expansion = head.encode(states, keep, ids, embedding=embedding)
        mean = torch.nn.functional.layer_norm(states[0], (16,))[0, :3].mean(0)  # the real tokens' state
        query, keys = (torch.nn.functional.normalize(t, dim=-1) for t in (head.expand(mean), embedding))
        expected = torch.log1p(torch.relu(10.0 * query @ keys.T + head.expand_bias))
    torch.testing.assert_close(expansion[0], expected)
    assert vector[0, 20] > 0 and set(vector[0].nonzero().flatten().tolist()) >= {5, 7, 9, 20}
    with pytest.raises(InputError, match="needs the backbone's token embedding"):
        head(states, keep, ids)
    # a padded batch and windows give each text the expansion of its own real tokens
    two = torch.tensor([[5, 7, 9, 0], [5, 7, 9, 4]]), torch.tensor([[True, True, True, False], [True] * 4])
    both = head.encode([torch.cat([states[0], states[0]])], two[1], two[0], embedding=embedding)[1]
    torch.testing.assert_close(both[0], expansion[0])
    windows = [states[0][:, :3].repeat(2, 1, 1)], keep[:, :3].repeat(2, 1), ids[:, :3].repeat(2, 1)
    halves = head.encode(*windows, torch.tensor([0, 0]), embedding)[1]  # two windows of one text
    torch.testing.assert_close(halves[0], expansion[0])
    with pytest.raises(InputError, match="term_bias, pairs and expansion"):
        EmbeddingHead(HeadConfig(1, 16, pooling="mean", expansion=True))


def test_the_flops_penalty_is_the_squared_mean_weight_of_each_entry() -> None:
    from imdb_transformer.models.adapter import flops_penalty

    weights = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 0.0]])
    assert flops_penalty(weights).item() == pytest.approx(2.0**2 + 0 + 1.0**2)


def test_an_expansion_adapter_trains_through_the_cli_and_its_index_holds_expansion_terms(
    pretrained_run: Path, imdb_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    run_cli(
        "fit", *tiny_adapter_args(pretrained_run, imdb_dir, cache_dir, tmp_path), "--model.expansion", "true"
    )
    metrics = (tmp_path / "lightning_logs/version_0/metrics.csv").read_text()
    assert "train/expansion_terms" in metrics and "val/expansion_terms" in metrics
    backbone = load_backbone(pretrained_run / "backbone")
    head = load_adapter(tmp_path / "lightning_logs/version_0/adapter", backbone)
    assert head.config.expansion and head.expand_bias.shape == (head.config.vocab_size,)
    embedder = DocumentEmbedder(backbone, head=head)
    texts = ["a good film", "a bad film with a dull plot"]
    vectors = embedder.embed(texts, progress=False)
    own = [set(ids) for ids in embedder.encode(texts)]
    found = [set(vectors[i].indices.tolist()) for i in range(2)]
    assert all(o <= f for o, f in zip(own, found, strict=True))  # every token of the text is kept
    assert any(f - o for o, f in zip(own, found, strict=True))  # and entries it lacks are added


def test_a_sparse_adapter_with_term_bias_and_pairs_trains_through_the_cli_and_reloads(
    pretrained_run: Path, imdb_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    options = ["--model.term_bias", "true", "--model.pairs", "true", "--data.positives", "disjoint"]
    run_cli("fit", *tiny_adapter_args(pretrained_run, imdb_dir, cache_dir, tmp_path), *options)
    head = load_adapter(
        tmp_path / "lightning_logs/version_0/adapter", load_backbone(pretrained_run / "backbone")
    )
    assert head.config.term_bias and head.term.abs().max() > 0.05  # the token weights moved from zero
    assert head.term.shape == (head.config.vocab_size,) and head.config.pairs
    backbone = load_backbone(pretrained_run / "backbone")
    vectors = DocumentEmbedder(backbone, head=head).embed(["a good film", "a bad film"], progress=False)
    assert vectors.shape[1] == head.config.out_dim and (vectors[:, head.config.vocab_size :].nnz > 0)


def test_training_leaves_the_backbone_unchanged_and_crops_find_their_review(
    pretrained_run: Path, imdb_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    import lightning as L

    torch.manual_seed(0)
    model = EmbeddingAdapter(
        backbone=str(pretrained_run / "backbone"), dim=32, pooling="attention", learning_rate=3e-3
    )  # dense: the head must learn what the sparse one gets from token identity
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    dm = ContrastiveDataModule(
        str(imdb_dir), str(cache_dir), backbone=str(pretrained_run / "backbone"), crop_max=24, batch_size=32,
        val_fraction=0.1,
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))  # 32 held-out reviews, two crops each

    def held_out() -> tuple[float, float]:
        """InfoNCE loss and in-batch top-1 of the held-out pairs."""
        model.eval()
        with torch.no_grad():
            a = model(batch["a_ids"], batch["a_mask"])
            b = model(batch["b_ids"], batch["b_mask"])
        loss, accuracy, _ = info_nce(a, b, 0.05)
        return loss.item(), accuracy.item()

    untrained = held_out()
    trainer = L.Trainer(
        max_steps=40, enable_progress_bar=False, logger=False, enable_checkpointing=False,
        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, dm)
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    loss, accuracy = held_out()
    assert loss < untrained[0]  # crops of one review score higher against each other than against others
    assert accuracy > 0.25  # chance: 1 in 32


def test_an_index_with_an_adapter_survives_save_and_load(
    adapter_run: Path, pretrained_run: Path, imdb_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "index"
    backbone = pretrained_run / "backbone"
    run_cli("embed", "--backbone", str(backbone), "--adapter", str(adapter_run / "adapter"),
            "--source", str(imdb_dir), "--out", str(out))  # fmt: skip
    loaded = SemanticIndex.load(out)
    vocab = loaded.embedder.decoder.config.vocab_size
    assert loaded.embedder.head is not None and loaded.sparse and loaded.vectors.shape == (80, vocab)
    reviews = load_reviews(str(imdb_dir), "test")
    for mode in ("dense", "hybrid", "lexical"):
        assert loaded.query(reviews.texts[7], 1, mode)[0].id == reviews.ids[7]  # a review finds itself
    like = loaded.like(reviews.ids[7], 3)
    assert len(like) == 3 and reviews.ids[7] not in [h.id for h in like]
    out_text = run_cli("search", "--index", str(out), "--like", str(reviews.ids[7]), "-k", "2").stdout
    assert len(out_text.strip().splitlines()) == 2 + 2


def test_sparse_vectors_hold_each_tokens_largest_weight_and_nothing_else() -> None:
    torch.manual_seed(0)
    head = EmbeddingHead(HeadConfig(n_states=2, n_embd=8, pooling="sparse", vocab_size=20)).eval()
    states = [torch.randn(2, 4, 8) for _ in range(2)]
    ids = torch.tensor([[5, 5, 7, 0], [9, 3, 3, 3]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    vectors = head(states, mask, ids)
    assert vectors.shape == (2, 20) and torch.allclose(vectors.norm(dim=-1), torch.ones(2))
    assert vectors[0].nonzero().flatten().tolist() == [5, 7]  # the padding's id 0 gets nothing
    assert vectors[1].nonzero().flatten().tolist() == [3, 9]
    mixed = sum(w * head.norm(s) for w, s in zip(head.mix.softmax(0), states, strict=True))
    weights = torch.nn.functional.softplus(head.token(mixed).squeeze(-1))
    raw = torch.zeros(20).index_reduce(0, ids[0, :3], weights[0, :3], "amax", include_self=False)
    assert torch.allclose(vectors[0], raw.nan_to_num() / raw.nan_to_num().norm())


def test_a_concat_head_feeds_every_layers_state_side_by_side_to_a_wider_mlp() -> None:
    torch.manual_seed(0)
    config = HeadConfig(n_states=3, n_embd=8, pooling="sparse", vocab_size=20, layer_mix="concat", hidden=32)
    head = EmbeddingHead(config).eval()
    assert head.mix is None and head.token[0].in_features == 24 and head.token[0].out_features == 32
    states = [torch.randn(1, 4, 8) for _ in range(3)]
    ids, mask = torch.tensor([[5, 6, 5, 2]]), torch.ones(1, 4, dtype=torch.bool)
    side_by_side = torch.cat([head.norm(s) for s in states], -1)
    weights = torch.nn.functional.softplus(head.token(side_by_side).squeeze(-1))[0]
    raw = torch.zeros(20)
    for i, token in enumerate(ids[0].tolist()):
        raw[token] = max(raw[token], weights[i])
    assert torch.allclose(head(states, mask, ids)[0], raw / raw.norm())
    with pytest.raises(InputError, match="reads 3 layer states, given 2"):
        head(states[:2], mask, ids)
    with pytest.raises(InputError, match="unknown layer_mix 'sum'"):
        HeadConfig(n_states=2, n_embd=8, pooling="sparse", vocab_size=20, layer_mix="sum")  # type: ignore[arg-type]


def test_a_concat_head_feeds_the_side_by_side_state_to_attention_pooling_and_to_expansion() -> None:
    torch.manual_seed(0)
    states = [torch.randn(2, 4, 8) for _ in range(3)]
    mask = torch.tensor([[True, True, True, False], [True] * 4])
    norm = torch.nn.functional.layer_norm
    side_by_side = torch.cat([norm(s, (8,)) for s in states], -1)  # (2, 4, 24)
    attention = HeadConfig(n_states=3, n_embd=8, dim=6, pooling="attention", layer_mix="concat", dropout=0.0)
    head = EmbeddingHead(attention).eval()
    assert head.score.in_features == 24 and head.token[0].in_features == 24
    with torch.no_grad():
        for row in range(2):  # each review's softmax over its real tokens, then its tokens' vectors
            real = side_by_side[row][mask[row]]
            pooled = head.score(real).squeeze(-1).softmax(0) @ head.token(real)
            torch.testing.assert_close(head(states, mask)[row], pooled / pooled.norm())

    expansion = HeadConfig(
        n_states=3, n_embd=8, pooling="sparse", vocab_size=20, layer_mix="concat", expansion=True, dropout=0.0
    )
    head, embedding = EmbeddingHead(expansion).eval(), torch.randn(20, 8)
    assert head.expand[0].in_features == 24  # the expansion MLP reads the concatenated state too
    ids = torch.tensor([[5, 6, 5, 0], [2, 3, 4, 5]])
    with torch.no_grad():
        weights = head.encode(states, mask, ids, embedding=embedding)[1]
        for row in range(2):  # the mean of the review's real concatenated states, through the LM head
            mean = side_by_side[row][mask[row]].mean(0)
            query = torch.nn.functional.normalize(head.expand(mean), dim=-1)
            keys = torch.nn.functional.normalize(embedding, dim=-1)
            expected = torch.log1p(torch.relu(10.0 * query @ keys.T + head.expand_bias))
            torch.testing.assert_close(weights[row], expected)


def saved_head(backbone: Backbone, pooling: str, folder: Path) -> tuple[EmbeddingHead, Path]:
    """A fresh head over every layer of ``backbone``, saved as an adapter folder."""
    c = backbone.decoder.config
    head = EmbeddingHead(HeadConfig(c.n_layer + 1, c.n_embd, pooling=pooling, vocab_size=c.vocab_size))
    return head, save_adapter(head, backbone.fingerprint, None, folder)


def edit_head_record(folder: Path, **fields: object) -> None:
    """Set ``fields`` in the ``head`` record of ``folder``'s adapter.json; a field set to None is
    removed (as a record written before it existed)."""
    record = json.loads((folder / "adapter.json").read_text())
    for name, value in fields.items():
        if value is None:
            del record["head"][name]
        else:
            record["head"][name] = value
    (folder / "adapter.json").write_text(json.dumps(record))


@pytest.mark.parametrize("layer_mix", ["concat", "scalar"])
def test_a_head_with_a_wider_mlp_trains_through_the_cli_and_reloads_with_either_mix(
    layer_mix: str, pretrained_run: Path, imdb_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    options = ["--model.layer_mix", layer_mix, "--model.hidden", "48"]
    run_cli("fit", *tiny_adapter_args(pretrained_run, imdb_dir, cache_dir, tmp_path), *options)
    backbone = load_backbone(pretrained_run / "backbone")
    folder = tmp_path / "lightning_logs/version_0/adapter"
    head = load_adapter(folder, backbone)
    c = backbone.decoder.config
    width = c.n_embd * (c.n_layer + 1 if layer_mix == "concat" else 1)
    assert (head.config.layer_mix, head.config.hidden) == (layer_mix, 48)
    assert head.token[0].in_features == width and head.token[0].out_features == 48
    assert (head.mix is None) == (layer_mix == "concat")
    vectors = DocumentEmbedder(backbone, head=head).embed(["a good film", "a bad film"], progress=False)
    assert vectors.shape == (2, c.vocab_size) and vectors.nnz > 0


def test_an_adapter_saved_without_layer_mix_and_hidden_loads_as_the_scalar_mix_it_was(
    pretrained_run: Path, tmp_path: Path
) -> None:
    backbone = load_backbone(pretrained_run / "backbone")
    torch.manual_seed(0)
    head, folder = saved_head(backbone, "sparse", tmp_path / "adapter")
    edit_head_record(folder, layer_mix=None, hidden=None)  # as adapters were written before either
    loaded = load_adapter(folder, backbone)
    assert (loaded.config.layer_mix, loaded.config.hidden) == ("scalar", None)
    texts = ["a good film", "a bad film about a good actor"]
    expected = DocumentEmbedder(backbone, head=head.eval()).embed(texts, progress=False)
    found = DocumentEmbedder(backbone, head=loaded).embed(texts, progress=False)
    assert np.allclose(expected.toarray(), found.toarray())


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_states", -1, "n_states=-1: it must be a positive number"),
        ("n_embd", 0, "n_embd=0: it must be a positive number"),
        ("dim", 0, "dim=0: it must be a positive number"),
        ("dropout", 1.5, "dropout=1.5: it must be at least 0 and below 1"),
        ("dropout", -0.5, "dropout=-0.5: it must be at least 0 and below 1"),
        ("vocab_size", -1, "vocab_size=-1: it must be a positive number"),
        ("hidden", 0, "hidden=0: the MLP needs at least one hidden unit"),
    ],
)
def test_a_head_refuses_impossible_numbers_in_training_and_in_a_damaged_adapter_json(
    field: str, value: float, message: str, pretrained_run: Path, tmp_path: Path
) -> None:
    pooling = "attention" if field == "dim" else "sparse"  # a sparse head has no use for dim
    with pytest.raises(InputError, match=message):
        HeadConfig(**{"n_states": 2, "n_embd": 8, "pooling": pooling, "vocab_size": 20, field: value})
    backbone = load_backbone(pretrained_run / "backbone")
    _, folder = saved_head(backbone, pooling, tmp_path / "adapter")
    edit_head_record(folder, **{field: value})  # refused naming the file, before any weight is allocated
    with pytest.raises(AdapterError, match=rf"adapter\.json: head: {message}"):
        load_adapter(folder, backbone)


def test_a_sparse_index_ranks_as_the_full_product_and_refuses_ann(
    adapter_run: Path, pretrained_run: Path
) -> None:
    backbone = load_backbone(pretrained_run / "backbone")
    embedder = DocumentEmbedder(backbone, head=load_adapter(adapter_run / "adapter", backbone))
    rng = random.Random(0)
    words = "horror comedy war musical cartoon western drama romance thriller sequel actor".split()
    texts = [" ".join(rng.choices(words, k=12)) for _ in range(60)]
    index = SemanticIndex.build(embedder, texts, progress=False)
    query = embedder.embed(["a western with a great actor"], progress=False)
    full = (index.vectors @ query.T).toarray().ravel()  # every review, the plain way
    assert np.allclose(index.cosines(query), full, atol=1e-6)
    rows, scores = index.dense_top_k(query, 5)
    assert list(rows) == list(np.argsort(-full, kind="stable")[:5])
    with pytest.raises(InputError, match="searched exactly through its inverted index"):
        SemanticIndex(embedder, index.vectors, index.reviews, ann="hnsw")


def test_hybrid_finds_the_review_that_holds_a_rare_word(pretrained_run: Path) -> None:
    embedder = DocumentEmbedder(load_backbone(pretrained_run / "backbone"))
    texts = [f"a film with the actor number {i} and a plot that was really quite dull" for i in range(40)]
    texts[23] = "a film with Zanzibarovsky in the lead and a plot that was really quite dull"
    index = SemanticIndex.build(embedder, texts, progress=False)
    assert index.query("Zanzibarovsky", 1)[0].id == 23  # hybrid, the default
    assert index.query("Zanzibarovsky", 1, "lexical")[0].id == 23


def test_an_adapter_on_another_backbone_is_refused_naming_both(
    adapter_run: Path, pretrained_run: Path, tmp_path: Path
) -> None:
    real = load_backbone(pretrained_run / "backbone")
    load_adapter(adapter_run / "adapter", real)  # its own backbone: accepted
    torch.manual_seed(1)
    other = export_backbone(CausalDecoder(real.decoder.config), real.tokenizer, tmp_path / "other")
    with pytest.raises(
        AdapterError,
        match=rf"trained on backbone {real.fingerprint}, .* \({load_backbone(other).fingerprint}\)",
    ):
        load_adapter(adapter_run / "adapter", load_backbone(other))
    err = fails(
        "embed",
        "--backbone",
        str(other),
        "--adapter",
        str(adapter_run / "adapter"),
        "--out",
        str(tmp_path / "i"),
    )
    assert real.fingerprint in err and "error:" in err


def test_faiss_hnsw_agrees_with_exact_search_on_the_top_hit(pretrained_run: Path) -> None:
    pytest.importorskip("faiss", reason="faiss-cpu is an optional extra: pip install -e '.[faiss]'")
    embedder = DocumentEmbedder(load_backbone(pretrained_run / "backbone"))
    rng = random.Random(0)
    words = "horror comedy war musical cartoon western drama romance thriller sequel actor".split()
    texts = [" ".join(rng.choices(words, k=12)) for _ in range(200)]
    exact = SemanticIndex.build(embedder, texts, lexical=False, progress=False)
    approx = SemanticIndex(embedder, exact.vectors, exact.reviews, ann="hnsw")
    for text in texts[:20]:
        assert approx.query(text, 1)[0].id == exact.query(text, 1)[0].id


@pytest.mark.parametrize("proposals", [4, 100])
def test_hybrid_fuses_each_rankers_top_proposals_as_the_plain_computation_does(
    adapter_run: Path, pretrained_run: Path, monkeypatch: pytest.MonkeyPatch, proposals: int
) -> None:
    """Fusion min-max scales both rankers' scores over the union of each one's top ``CANDIDATES`` (among
    reviews it scores above zero) and mixes them by alpha: the ranking of the plain computation."""
    monkeypatch.setattr(search_ranking, "CANDIDATES", proposals)  # what exact search's hybrid_top reads
    backbone = load_backbone(pretrained_run / "backbone")
    embedder = DocumentEmbedder(backbone, head=load_adapter(adapter_run / "adapter", backbone))
    rng = random.Random(1)
    words = "horror comedy war musical cartoon western drama romance thriller sequel actor".split()
    texts = [" ".join(rng.choices(words, k=rng.randint(5, 25))) for _ in range(50)]
    index = SemanticIndex.build(embedder, texts, progress=False, alpha=0.4)
    text = "a musical western"
    query = embedder.embed([text], progress=False)
    dense = (index.vectors @ query.T).toarray().ravel()
    lexical = index.lexical.scores(text)
    for scores in (dense, lexical):  # no tie at the edge of the proposals, so they are well defined
        assert proposals >= 50 or np.sort(scores)[-proposals] > np.sort(scores)[-proposals - 1]
    rows = np.union1d(*[np.argsort(-x)[: min(proposals, np.count_nonzero(x))] for x in (dense, lexical)])

    def scaled(x: np.ndarray) -> np.ndarray:
        return (x - x.min()) / (x.max() - x.min())

    fused = 0.4 * scaled(dense[rows]) + 0.6 * scaled(lexical[rows])
    top, scores = index.top_k(query, text, "hybrid", 5)
    assert np.allclose(scores, np.sort(fused)[::-1][:5], atol=1e-6)
    assert set(top) <= set(rows)


def test_hybrid_returns_k_hits_when_fewer_reviews_share_anything_with_the_query(
    pretrained_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    embedder = DocumentEmbedder(load_backbone(pretrained_run / "backbone"))
    index = SemanticIndex.build(embedder, [f"review number {i} of a film" for i in range(12)], progress=False)
    nothing = np.zeros(len(index), dtype=np.float32)  # no review shares a word or a token with the query
    monkeypatch.setattr(index.lexical, "scores", lambda text: nothing)
    monkeypatch.setattr(
        index, "cosines", lambda vector, rows=None: nothing if rows is None else nothing[rows]
    )
    hits = index.query("unrelated words", 5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5] and all(h.score == 0 for h in hits)
