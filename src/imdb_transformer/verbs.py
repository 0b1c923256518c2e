"""The console script's verbs beyond training (``embed``, ``search``, ``generate``, ``classify``,
``serve``, ``export``): plain functions.

``imdb-transformer VERB`` builds each one's options from its signature and docstring (see
:mod:`imdb_transformer.cli`), so ``--help`` is this documentation and every verb takes ``--config``
and ``--print_config``. They can be called from Python just the same.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch
from jsonargparse.typing import ClosedUnitInterval, PositiveInt

from imdb_transformer.core.pooling import Pooling
from imdb_transformer.errors import InputError
from imdb_transformer.generation import DecodeDType, Strategy
from imdb_transformer.predict import TrainerOptions
from imdb_transformer.search import Hit, Mode, format_hits
from imdb_transformer.search.ranking import check_mode
from imdb_transformer.text.imdb import DEFAULT_SOURCE

Split = Literal["train", "test", "unsupervised"]


@dataclass(frozen=True)
class Spelled:
    """How ``imdb-transformer VERB`` spells a parameter beyond ``--name VALUE``, declared in the
    signature as ``Annotated[type, Spelled(...)]`` (Python callers see the plain type)."""

    short: str | None = None  # a short alias, such as -k
    old: str | None = None  # an old name, still accepted with a note that says it is old
    repeat: bool = False  # a list given by repeating the option: --prompt A --prompt B
    words: bool = False  # given as plain words after the options (a positional argument)


def _device(device: str | None) -> str:
    """``device`` checked (cpu, cuda or cuda:N, the last two only where CUDA is available), or by
    default cuda when it is available, else cpu."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    gpu = re.fullmatch(r"cuda(?::([0-9]+))?", device)
    if gpu is None:
        raise InputError(f"unknown device {device!r}; use cpu, cuda or cuda:N (N: a GPU's number)")
    if not torch.cuda.is_available():
        raise InputError(
            f"--device {device}: CUDA is not available here (no NVIDIA GPU visible, or a PyTorch built "
            "without CUDA); use --device cpu"
        )
    count = torch.cuda.device_count()
    if gpu.group(1) is not None and int(gpu.group(1)) >= count:
        raise InputError(
            f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
        )
    return device


def _check_positive(**values: int | None) -> None:
    """Refuse counts below 1 given from Python (the console script's option types refuse them first)."""
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"--{name} {value!r}: give a positive whole number")


def embed(
    *,
    backbone: str,
    out: str,
    adapter: str | None = None,
    source: str = DEFAULT_SOURCE,
    split: Split = "test",
    pooling: Pooling = "mean",
    windows: bool = True,
    batch_size: PositiveInt = 64,
    max_reviews: PositiveInt | None = None,
    lexical: bool = True,
    alpha: ClosedUnitInterval = 0.5,
    device: str | None = None,
    trainer: TrainerOptions = TrainerOptions(),  # noqa: B008 (frozen: shared safely)
) -> None:
    """Embed the reviews of an IMDB split and save them as a search index.

    The index is a folder (vectors.safetensors, reviews.parquet, index.json) that `imdb-transformer
    search` queries; it records the backbone relative to itself. The embedding runs as Lightning's
    Trainer.predict: --trainer.devices, --trainer.strategy, --trainer.precision and --trainer.num_nodes
    spread it over devices and machines (docs/scaling.md), and the first process writes the index.

    Args:
        backbone: A pretraining run's backbone/ folder or one of its checkpoints.
        out: The index folder to write: a new or empty folder, or an index to replace (atomically).
            Any other existing folder or file is refused, never overwritten.
        adapter: A trained embedding adapter (the adapter/ folder of a `fit --config configs/embed.yaml`
            run): vectors that say what a review is about. Without it, pooled backbone states.
        source: A dataset id for datasets.load_dataset, or a local folder of {split}.parquet files.
        split: Which split's reviews to index.
        pooling: Without an adapter, how token states become one vector: mean, weighted_mean, max,
            last or concat.
        windows: Read a review longer than the backbone's context whole, in consecutive windows joined
            into one vector; false reads its head and tail only. The index records it, and queries are
            read the same way.
        batch_size: Reviews per forward pass.
        max_reviews: Index only a sample of this many reviews (drawn with a fixed seed).
        lexical: Also index the words with BM25, for lexical and hybrid search.
        alpha: Weight of the dense score in hybrid search (the rest is BM25's), as chosen on held-out
            training reviews by benchmarks/retrieval.py.
        device: cpu, cuda or cuda:N: one device (a shorthand for --trainer.accelerator and
            --trainer.devices; default: a GPU when there is one).
        trainer: Lightning Trainer options for the embedding (see docs/scaling.md).
    """
    from imdb_transformer.embedder import load_embedder
    from imdb_transformer.predict import predict, shard_base, trainer_options
    from imdb_transformer.search import SemanticIndex, check_alpha, check_out_folder
    from imdb_transformer.text.imdb import is_local, load_reviews

    # every check that needs no model or data first: a mistake fails in a moment, and nothing is written
    _check_positive(batch_size=batch_size, max_reviews=max_reviews)
    check_alpha(alpha)
    options = trainer_options(trainer, device and _device(device))
    keep = {"source": source if is_local(source) else None, "backbone": backbone, "adapter": adapter}
    check_out_folder(out, keep)
    # the models next: a wrong one fails before any data
    embedder = load_embedder(backbone, adapter, pooling, windows=windows)
    reviews = load_reviews(source, split, max_reviews)
    start = time.perf_counter()
    outputs = predict(
        embedder, reviews.texts, embedder.encode, context=embedder.max_length, batch_size=batch_size,
        trainer=options, shards=shard_base(out),
    )  # fmt: skip
    if outputs is None:  # another process of a distributed job: the first one writes the index
        return
    index = SemanticIndex.build(
        embedder.cpu(), reviews.texts, reviews.ids, reviews.labels, batch_size, backbone, adapter,
        lexical=lexical, alpha=alpha, keys=reviews.keys, vectors=outputs["vectors"],
    )  # fmt: skip
    rate = len(index) / (time.perf_counter() - start)
    print(f"Saved {len(index):,} review embeddings ({rate:.1f} reviews/s) to {index.save(out)}")


def search(
    query: Annotated[str, Spelled(words=True)] = "",
    /,
    *,
    index: str | None = None,
    k: Annotated[PositiveInt, Spelled(short="-k")] = 5,
    mode: Mode | None = None,
    like: str | None = None,
    backbone: str | None = None,
    adapter: str | None = None,
    url: str | None = None,
    path: str | None = None,
    collection: str = "imdb",
) -> None:
    """Print the k reviews of an index that best match a query, as a table.

    Examples: imdb-transformer search --index index/test "classic horror movie" -k 5;
    imdb-transformer search --index index/test --like test/pos/2221 (more like that review);
    imdb-transformer search --url http://localhost:6333 "classic horror movie" (an index exported to
    Qdrant by `imdb-transformer export-index`; --path DIR for a local Qdrant folder).

    Args:
        query: The text to search for (leave it out with --like).
        index: An index folder written by `imdb-transformer embed` (or give --url or --path).
        k: How many results.
        mode: hybrid (BM25 and dense vectors fused; the default when the index has both), dense
            (vectors only) or lexical (BM25 only: exact words, names).
        like: Rank the index against one of its own reviews instead of a query: its key, as the
            results' "review key" column shows it (test/pos/2221), or a review id that only one
            review of the index has.
        backbone: The backbone that built the index, if it has moved since (default: the one the
            index records, relative to the index folder; for Qdrant, where it was at export).
        adapter: Likewise for the index's adapter.
        url: Search a Qdrant server's collection instead (http://HOST:6333).
        path: Search a local Qdrant folder's collection instead.
        collection: The Qdrant collection, with --url or --path.
    """
    from imdb_transformer.search import SemanticIndex

    if query and like is not None:
        raise InputError("give either a query or --like REVIEW_KEY, not both")
    if not query and like is None:
        raise InputError("nothing to search for: give a query (some words) or --like REVIEW_KEY")
    _check_positive(k=k)
    if (index is None) == (url is None and path is None):
        raise InputError("give the index one way: --index DIR, or a Qdrant collection with --url or --path")
    if index is None:
        if like is not None:
            raise InputError("--like runs on an index folder (--index); a Qdrant collection takes a query")
        from imdb_transformer.search.qdrant import QdrantIndex, connect

        client = connect(url, path, create=False)
        try:
            engine = QdrantIndex(client, collection, backbone=backbone, adapter=adapter)
            fused = check_mode(mode, engine.meta["lexical"]) == "hybrid"
            _show_hits(engine.query(query, k, mode), fused, "the query")
        finally:
            client.close()
        return
    loaded = SemanticIndex.load(index, backbone=backbone, adapter=adapter)
    hits = loaded.like(like, k, mode) if like is not None else loaded.query(query, k, mode)
    fused = check_mode(mode, loaded.lexical is not None) == "hybrid"
    _show_hits(hits, fused, "the query" if like is None else "the review")


def _show_hits(hits: list[Hit], fused: bool, asked: str) -> None:
    """Print the hits' table and, when some only fill ``-k``, say so on stderr: ranked by one scorer
    (not ``fused``), a hit scoring 0 shares nothing with what was ``asked`` (BM25 no word, a sparse
    vector no token). Hybrid's min-max scaling gives its lowest real candidate 0 too, so it says nothing."""
    print(format_hits(hits))
    empty = 0 if fused else sum(h.score == 0 for h in hits)
    if empty:
        some = f"the last {empty} of the {len(hits)} hits share nothing with {asked} (score 0); they fill -k"
        every = f"no review of the index shares anything with {asked}; these hits score 0"
        print(f"note: {every if empty == len(hits) else some}", file=sys.stderr)


def generate(
    *,
    backbone: Annotated[str, Spelled(old="--checkpoint")],
    prompt: Annotated[list[str], Spelled(repeat=True)],
    strategy: Strategy = "top_k",
    max_new_tokens: int = 60,
    temperature: float = 1.0,
    top_k: int = 50,
    top_p: float = 0.9,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    device: str | None = None,
    dtype: DecodeDType = "auto",
) -> None:
    """Continue review openings with a pretrained decoder.

    Each --prompt gives one continuation; several are decoded together as one batch, each new token
    fed alone through the model over its KV cache.

    Args:
        backbone: A pretraining run's backbone/ folder or one of its checkpoints (what `embed
            --backbone` takes).
        prompt: The opening of a review; repeat --prompt for several.
        strategy: How each token is picked: greedy, sample (temperature only), top_k or top_p.
        max_new_tokens: Tokens to add at most (a continuation stops early where the review ends).
        temperature: Above 0; lower is more conservative.
        top_k: For top_k: sample among the k likeliest tokens.
        top_p: For top_p: sample within this probability mass.
        repetition_penalty: Above 1 discourages repeats (CTRL-style); 1.0 is off.
        seed: Fix the sampling, for repeatable output.
        device: cpu or cuda (default: cuda when available).
        dtype: Weights for decoding: float32, bfloat16 (half the bytes per token; its text can part
            from float32's after a while), or auto: the faster of the two on this machine, measured
            once and cached (bfloat16 on a GPU).
    """
    from imdb_transformer.core.backbone import load_backbone
    from imdb_transformer.generation import fastest_dtype, generate_text, in_dtype

    device = _device(device)  # before the model loads: a machine without CUDA says so at once
    loaded = load_backbone(backbone)
    if loaded.decoder.config.reverse:
        raise InputError(
            f"{backbone} is a backward LM (trained with --data.reverse true): it writes text last word "
            "first; generate with a forward backbone"
        )
    loaded.decoder = loaded.decoder.to(device)
    if dtype == "auto":
        dtype = fastest_dtype(loaded.decoder, len(prompt))
    loaded.decoder = in_dtype(loaded.decoder, dtype)
    continuations = generate_text(
        loaded,
        prompt,
        max_new_tokens,
        strategy=strategy,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
    )
    for i, (opening, text) in enumerate(zip(prompt, continuations, strict=True), start=1):
        print(f"[{i}] {opening}{text}\n" if len(prompt) > 1 else f"{opening}{text}")


def classify(
    *,
    classifier: Annotated[list[str], Spelled(repeat=True, old="--checkpoint")],
    texts: Annotated[list[str] | None, Spelled(words=True)] = None,
    file: str | None = None,
    column: str = "text",
    split: Literal["test"] | None = None,
    source: str = DEFAULT_SOURCE,
    max_reviews: PositiveInt | None = None,
    batch_size: PositiveInt = 64,
    device: str | None = None,
    explain: bool = False,
    out: str | None = None,
    trainer: TrainerOptions = TrainerOptions(),  # noqa: B008 (frozen: shared safely)
) -> None:
    """Label texts positive or negative with a trained classifier, or an ensemble of several.

    Examples: imdb-transformer classify --classifier fwd.ckpt "A wonderful film." "Dull and long.";
    imdb-transformer classify --classifier fwd.ckpt --classifier bwd.ckpt --file reviews.txt;
    imdb-transformer classify --classifier fwd.ckpt --classifier bwd.ckpt --split test --source
    ../shared/data/imdb (the accuracy of each member and of the ensemble on the official test split).
    With several checkpoints the probability is the mean of theirs. Classifying runs as Lightning's
    Trainer.predict: --trainer.devices, --trainer.strategy, --trainer.precision and --trainer.num_nodes
    spread it over devices and machines (docs/scaling.md).

    Args:
        classifier: A classifier's .ckpt (of `fit --config configs/classify.yaml`; what `serve
            --classifier` takes); repeat for an ensemble (e.g. one over
            a forward and one over a backward backbone).
        texts: Texts to classify, given after the options.
        file: Texts from a file instead: .txt (one per line), .csv or .parquet (see --column).
        column: The column of a .csv or .parquet file that holds the texts.
        split: test: score the official test split's reviews against their labels instead.
        source: With --split: a dataset id or a local folder of {split}.parquet files.
        max_reviews: With --split: a sample of this many reviews (default: all 25,000).
        batch_size: Texts per forward pass.
        device: cpu, cuda or cuda:N: one device (a shorthand for --trainer.accelerator and
            --trainer.devices; default: a GPU when there is one).
        explain: Add the words that drove each verdict, with their share of its logit (+ towards
            positive), from the word votes of a classifier trained with --model.lexical.
        out: Write the predictions to this .parquet file instead of printing them, in the order of
            the texts: id (the review's id with --split, else the text's number), key and label (with
            --split), probability (of positive), predicted (1 positive, 0 negative) and, with
            --explain, words (the top words and their shares). Replaced if it exists. A job over
            several machines needs it on a filesystem they all see.
        trainer: Lightning Trainer options for classifying (see docs/scaling.md).
    """
    from imdb_transformer.ensemble import SentimentEnsemble, top_words
    from imdb_transformer.predict import predict, shard_base, trainer_options
    from imdb_transformer.text.imdb import load_reviews
    from imdb_transformer.text.texts import read_texts

    given = [name for name, value in (("texts", texts), ("--file", file), ("--split", split)) if value]
    if len(given) != 1:
        raise InputError(
            "give the texts to classify one way: as arguments, with --file PATH, or --split test "
            f"(got {' and '.join(given) if given else 'none'})"
        )
    _check_positive(max_reviews=max_reviews, batch_size=batch_size)
    if explain and split is not None:
        raise InputError("--explain shows the words behind each verdict of given texts, not for --split")
    if out is not None and (not out.endswith(".parquet") or Path(out).is_dir()):
        raise InputError(f"--out {out}: give a file name ending in .parquet (the predictions are a table)")
    options = trainer_options(trainer, device and _device(device))
    inputs = texts or []
    if file is not None:
        inputs = read_texts(file, column)
    labels = None
    if split is not None:
        reviews = load_reviews(source, split, max_reviews)
        inputs, labels = reviews.texts, torch.tensor(reviews.labels)
    ensemble = SentimentEnsemble(classifier)
    ensemble.check(inputs, explain)
    ensemble.explaining = explain
    outputs = predict(
        ensemble, inputs, ensemble.encode, context=ensemble.context, batch_size=batch_size, max_tokens=8192,
        trainer=options, shards=shard_base(out) if out else None, progress=len(inputs) > batch_size,
    )  # fmt: skip
    if outputs is None:  # another process of a distributed job: the first one reports
        return
    members = outputs["probabilities"].T  # (members, texts)
    words = outputs.get("words")
    mean = members.mean(0)
    if out is not None:
        columns = {"id": reviews.ids, "key": reviews.keys, "label": reviews.labels} if split else {}
        if words is not None:
            columns["words"] = [[{"word": w, "share": s} for w, s in top_words(found)] for found in words]
        print(f"Saved {len(inputs):,} predictions to {_write_predictions(out, mean, columns)}")
    if labels is not None:
        print(f"| model | test accuracy ({len(inputs):,} reviews) |\n| --- | --- |")
        rows = list(zip(ensemble.names, members, strict=True))
        if len(ensemble.members) > 1:
            rows.append((f"ensemble (mean of {len(ensemble.members)})", mean))
        for name, p in rows:
            print(f"| {name} | {((p > 0.5).long() == labels).float().mean().item():.2%} |")
        return
    if out is not None:
        return
    from imdb_transformer.search import snippet

    print("#\tlabel\tp(positive)\ttext" + ("\twords (share of the logit)" if explain else ""))
    for i, (text, p) in enumerate(zip(inputs, mean.tolist(), strict=True), start=1):
        line = f"{i}\t{'pos' if p > 0.5 else 'neg'}\t{p:.3f}\t{snippet(' '.join(text.split()), 80)}"
        if words is not None:
            shown = top_words(words[i - 1])  # a very long "word" is cut as the text is
            line += "\t" + ", ".join(f"{snippet(word, 24)} {share:+.2f}" for word, share in shown)
        print(line)


def _write_predictions(out: str, probabilities: torch.Tensor, columns: dict[str, list]) -> Path:
    """Write ``probabilities`` (of positive, one per text) to the parquet file ``out`` in one piece,
    after each text's ``columns`` (id, key and label of a review; words that explain it), its number
    as its id where ``columns`` has none."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imdb_transformer.artifacts import atomic_path

    p = probabilities.float().numpy()
    columns = {"id": list(range(1, len(p) + 1)), **columns}
    words = columns.pop("words", None)
    table = pa.table({**columns, "probability": p, "predicted": (p > 0.5).astype("int64")})
    if words is not None:
        table = table.append_column("words", pa.array(words))
    with atomic_path(out, overwrite=True) as tmp:
        pq.write_table(table, tmp)
    return Path(out)


def serve(
    *,
    backbone: str | None = None,
    adapter: str | None = None,
    index: str | None = None,
    classifier: Annotated[list[str] | None, Spelled(repeat=True)] = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch_size: int = 16,
    batch_timeout: float = 0.01,
    allowed_hosts: list[str] | str | None = None,
    info_paths: bool = False,
    threads: PositiveInt | None = None,
) -> None:
    """Serve the models over HTTP (LitServe) with a web page at /: search, sentiment, embed, generate.

    Example: imdb-transformer serve --index index/test --classifier run/checkpoints/best.ckpt
    --backbone run/backbone --port 8000, then open http://127.0.0.1:8000/ (or curl the JSON API:
    POST /search, /sentiment, /embed, /generate; GET /health, /info). Only the endpoints whose
    models are given are served; the others answer 404 saying what to pass. Requests that arrive
    within --batch_timeout seconds share one forward pass (up to --max_batch_size).

    The server answers only requests addressed to it by name: the Host header must be localhost,
    127.0.0.1, [::1], the --host it listens on, or a name of --allowed_hosts (else 400), so that a
    web page cannot reach it through DNS rebinding. Listening on every interface (--host 0.0.0.0),
    give the names clients use: --allowed_hosts myhost.example,192.168.1.20. SIGTERM or Ctrl-C
    stops the server and all its worker processes; if a worker dies, the server stops with one
    error line naming its endpoint.

    Args:
        backbone: A pretraining run's backbone/ folder: /generate and /embed (and the index's
            backbone if it moved).
        adapter: An embedding adapter for /embed (default: the index's own, if any).
        index: An index folder written by `imdb-transformer embed`: /search (and /embed).
        classifier: A classifier checkpoint for /sentiment; repeat for an ensemble.
        host: The address to listen on: 127.0.0.1 or localhost (this machine only), or 0.0.0.0 or ::
            (every interface: only if you mean to expose it, with --allowed_hosts).
        port: The TCP port, 1024..65535.
        max_batch_size: Most requests batched into one forward pass, 1..1024 (1: no batching).
        batch_timeout: Seconds a request may wait for others to join its batch, 0..10.
        allowed_hosts: Further names the Host header may give, comma-separated or a list (the host
            name or address clients reach the server by); * accepts any (no DNS rebinding check).
        info_paths: Show the models' file paths in GET /info (by default only fingerprints and
            sizes: the paths tell any client about this machine's folders).
        threads: PyTorch threads of each worker process (one per endpoint). Default: the cores split
            evenly among the workers, at least one each (a worker whose threads share cores with
            other workers waits on its slowest thread).
    """
    from imdb_transformer.serve import ServeConfig, run

    config = ServeConfig(
        backbone=backbone, adapter=adapter, index=index, classifier=classifier or [],
        max_batch_size=max_batch_size, batch_timeout=batch_timeout, host=host, port=port,
        allowed_hosts=allowed_hosts or (), info_paths=info_paths, threads=threads,
    )  # fmt: skip
    run(config)


def export(*, backbone: str, out: str, format: Literal["hf"] = "hf") -> None:
    """Export a backbone for other tools: a Hugging Face transformers model folder (GPT-NeoX).

    The folder (config.json, model.safetensors, tokenizer.json, README.md: a model card) loads with
    AutoModelForCausalLM.from_pretrained(DIR) and AutoTokenizer.from_pretrained(DIR), no custom code.
    Before the folder is kept, it is loaded back and its logits are checked against the backbone's.
    Needs the hf extra: pip install -e ".[hf]".

    Args:
        backbone: A pretraining run's backbone/ folder or one of its checkpoints.
        out: The folder to write: a new or empty folder, or an earlier export to replace (atomically).
        format: hf (Hugging Face transformers).
    """
    from imdb_transformer.core.hf import check_out, export_hf

    check_out(out, backbone)
    folder = export_hf(backbone, out)
    print(f"Exported {backbone} for Hugging Face transformers (GPT-NeoX) to {folder}")


# The verbs of the console script, in the order its --help lists them; each one's name, options and
# help come from its signature and docstring.
def export_index(
    *,
    index: str,
    to: Literal["qdrant"] = "qdrant",
    url: str | None = None,
    path: str | None = None,
    collection: str = "imdb",
    replace: bool = False,
    batch_size: PositiveInt = 256,
) -> None:
    """Copy an index into a search engine that runs beyond one process (Qdrant).

    The collection holds the index's vectors (dense, or sparse from an adapter), each review's BM25
    weights as a sparse vector, and its key, id, label and text; `imdb-transformer search --url URL`
    (or --path) queries it as it queries the index. Example: imdb-transformer export-index --index
    index/test --url http://localhost:6333 --collection imdb.

    Args:
        index: An index folder written by `imdb-transformer embed`.
        to: The engine: qdrant (pip install 'imdb-transformer[qdrant]').
        url: A Qdrant server (http://HOST:6333).
        path: A local Qdrant folder instead (created if missing; Qdrant's local mode, in this process).
        collection: The collection to write.
        replace: Replace the collection if it exists (else it is refused).
        batch_size: Reviews per upload request.
    """
    from imdb_transformer.search import SemanticIndex
    from imdb_transformer.search.qdrant import connect
    from imdb_transformer.search.qdrant import export_index as export

    _check_positive(batch_size=batch_size)
    loaded = SemanticIndex.load(index)  # a wrong index fails before anything is made in Qdrant
    client = connect(url, path)
    try:
        count = export(loaded, client, collection, batch_size=batch_size, replace=replace)
    finally:
        client.close()
    print(f"Exported {count:,} reviews of {index} to Qdrant collection {collection!r} at {url or path}")


VERBS = (embed, search, generate, classify, serve, export, export_index)
