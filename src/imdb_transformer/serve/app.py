"""A local HTTP API and web page over the project's models, served with LitServe.

Each model the server is given becomes one LitServe API with its own worker and dynamic batching:
requests that arrive within ``batch_timeout`` seconds of each other (up to ``max_batch_size``) share
one forward pass. Endpoints (JSON in and out):

- ``POST /search`` ``{"query", "k", "mode"}``: ranked hits from a search index (``--index``);
- ``POST /sentiment`` ``{"texts", "explain"}``: label and probability per text (``--classifier``, one
  or an ensemble); with ``explain``, also ``words``: each word of the text and its share of the logit
  (positive: towards positive), largest first, or null where the classifiers have no word votes
  (``GET /info`` says ``explains``);
- ``POST /embed`` ``{"texts"}``: a unit vector per text (the index's embedder, else the backbone's);
- ``POST /generate`` ``{"prompt", "strategy", "max_new_tokens", "seed", ...}``: a continuation
  (``--backbone``);
- ``GET /health``, ``GET /info`` (what is loaded), and ``GET /``: the web page (one static file, no
  outside resources, works offline).

Requests are checked before they reach a model (:mod:`~imdb_transformer.serve.schemas`), so one bad
request is answered 422 alone, with the place and reason of each problem and never the input echoed back,
and never fails the batch it would have joined; bodies over 1 MB get 413. No field names a file: what a
client sends cannot make the server load anything or run code. Endpoints whose model was not given
answer 404 saying what to pass (:data:`ENDPOINTS`, the one table of endpoints).

The surface is that of a local tool (:mod:`~imdb_transformer.serve.hosts`): a request whose ``Host``
header names another machine is refused (400); FastAPI's generated ``/docs``, ``/redoc`` and
``/openapi.json`` are off (they load scripts from a CDN; the page at ``/`` is the UI); ``GET /info`` shows
fingerprints and sizes, not file paths, unless started with ``info_paths``.
:mod:`~imdb_transformer.serve.supervisor` keeps the processes together.

This module deliberately has no ``from __future__ import annotations``: LitServe reads the request
type from ``decode_request``'s annotation at run time.
"""

import contextlib
import functools
import hashlib
import json
import signal
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import litserve as ls
import torch
from pydantic import BaseModel

from imdb_transformer.errors import ImdbError, InputError
from imdb_transformer.serve.hosts import HOST_NAME, HOSTS, HostCheck, allowed_host_names, host_name
from imdb_transformer.serve.schemas import (
    MAX_BODY,
    MAX_CHARS,
    MAX_K,
    MAX_NEW_TOKENS,
    MAX_TEXTS,
    CompletionRequest,
    EmbeddingsRequest,
    GenerateRequest,
    SearchRequest,
    SentimentRequest,
    TextsRequest,
    request_error,
)

MAX_BATCH = 1024  # requests one forward pass may batch
MAX_WORDS = 200  # words an explained verdict lists, largest shares first


MAX_BATCH_TIMEOUT = 10.0  # seconds a request may wait for others to join its batch


@dataclass
class ServeConfig:
    """What the server loads, where it listens and how it batches (see
    :func:`imdb_transformer.verbs.serve`); options out of range raise :class:`InputError` naming the
    option and its range."""

    backbone: str | None = None
    adapter: str | None = None
    index: str | None = None
    classifier: list[str] = field(default_factory=list)
    max_batch_size: int = 16
    batch_timeout: float = 0.01
    host: str = "127.0.0.1"
    port: int = 8000
    allowed_hosts: Sequence[str] = ()  # Host header names answered beyond LOOPBACK and host; "*": any
    info_paths: bool = False  # GET /info shows the models' file paths
    failures: str | None = None  # where a worker whose model fails to load writes why (run() sets it)
    threads: int | None = None  # PyTorch threads per worker; None: the cores split among the workers

    def __post_init__(self) -> None:
        if self.host not in HOSTS:
            raise InputError(
                f"--host must be 127.0.0.1 or localhost (this machine only), or 0.0.0.0 or :: (every "
                f"interface; name the host clients use with --allowed_hosts): LitServe listens on no other "
                f"address (got {self.host!r})"
            )
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1024 <= self.port <= 65535:
            raise InputError(
                f"--port must be an integer in 1024..65535 (got {self.port!r}); LitServe refuses the ports "
                "below 1024, which need root"
            )
        threads = self.threads
        whole = isinstance(threads, int) and not isinstance(threads, bool)
        if threads is not None and not (whole and 1 <= threads <= 1024):
            raise InputError(
                f"--threads must be a whole number in 1..1024 (got {self.threads!r}); leave it out to split "
                "the cores among the workers"
            )
        if not 1 <= self.max_batch_size <= MAX_BATCH:
            raise InputError(
                f"--max_batch_size must be in 1..{MAX_BATCH} (got {self.max_batch_size}); 1 is no batching"
            )
        if not 0 <= self.batch_timeout <= MAX_BATCH_TIMEOUT:  # NaN fails every comparison
            raise InputError(
                f"--batch_timeout must be a number of seconds in [0, {MAX_BATCH_TIMEOUT:g}] (got "
                f"{self.batch_timeout}); 0.01 lets the requests that arrive within 10 ms share a pass"
            )
        names = self.allowed_hosts
        names = names.split(",") if isinstance(names, str) else list(names)
        for name in names:
            if not HOST_NAME.fullmatch(name.strip()):
                raise InputError(
                    f"--allowed_hosts: {name!r} is not a host name or address; give names such as "
                    "myhost.example or 192.168.1.20, separated by commas, or * to answer any Host header"
                )
        self.allowed_hosts = tuple(host_name(n) for n in names)


class _API(ls.LitAPI):
    """A LitServe API over the models a :class:`ServeConfig` names (pickled into its worker process,
    where ``setup`` loads them)."""

    def __init__(self, config: ServeConfig, **options) -> None:
        super().__init__(**options)
        self.config = config

    def setup(self, device: str) -> None:
        """Load the models, in the worker process.

        SIGINT is left to the main process: a terminal's Ctrl-C reaches every process of its group,
        and the main one stops the workers in order. A model that fails to load ends the worker with
        the reason written to ``config.failures``, which the main process reports in one line.
        """
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        torch.set_num_threads(worker_threads(self.config))
        try:
            self.load(device)
        except Exception as err:
            if self.config.failures is None:
                raise
            reason = str(err) if isinstance(err, ImdbError) else f"{type(err).__name__}: {err}"
            Path(self.config.failures, failure_report_name(self.api_path)).write_text(
                reason, encoding="utf-8"
            )
            sys.exit(3)  # SystemExit passes LitServe's handler, which would log a traceback

    def load(self, device: str) -> None:
        raise NotImplementedError

    def encode_response(self, output: dict) -> dict:
        return output

    def predict(self, x: BaseModel | list[BaseModel]) -> dict | list[dict]:
        """LitServe passes a list of requests when batching (max_batch_size > 1), else one."""
        if isinstance(x, list):
            return self.predict_many(x)
        return self.predict_many([x])[0]

    def predict_many(self, requests: list) -> list[dict]:
        """One answer per request, computed together."""
        raise NotImplementedError


class SearchAPI(_API):
    def load(self, device: str) -> None:
        from imdb_transformer.search import SemanticIndex

        c = self.config
        self.index = SemanticIndex.load(c.index, backbone=c.backbone, adapter=c.adapter)

    def decode_request(self, request: SearchRequest) -> SearchRequest:  # validated before it queued
        return request

    def predict_many(self, requests: list[SearchRequest]) -> list[dict]:
        n = len(self.index)  # k above the index's size: every review, ranked
        found = self.index.query_many([(r.query, min(r.k, n), r.mode) for r in requests])  # one pass
        return [
            {"query": r.query, "hits": [asdict(h) for h in hits]}
            for r, hits in zip(requests, found, strict=True)
        ]


class SentimentAPI(_API):
    def load(self, device: str) -> None:
        from imdb_transformer.ensemble import SentimentEnsemble

        self.ensemble = SentimentEnsemble(self.config.classifier, device)

    def decode_request(self, request: SentimentRequest) -> SentimentRequest:
        return request

    def predict_many(self, requests: list[SentimentRequest]) -> list[dict]:
        from imdb_transformer.ensemble import top_words

        texts = [t for r in requests for t in r.texts]  # every request's texts in one pass
        explain = self.ensemble.explains and any(r.explain for r in requests)
        words: list[dict[str, float]] | None = [] if explain else None
        probabilities = self.ensemble.probabilities(texts, progress=False, words=words).tolist()
        out, start = [], 0
        for r in requests:
            results = [_label(p) for p in probabilities[start : start + len(r.texts)]]
            if r.explain:
                for i, result in enumerate(results, start):
                    shares = None if words is None else top_words(words[i], MAX_WORDS)
                    result["words"] = None if shares is None else [[w, share] for w, share in shares]
            out.append({"results": results})
            start += len(r.texts)
        return out


class EmbedAPI(_API):
    def load(self, device: str) -> None:
        self.embedder = _embedder(self.config)

    def decode_request(self, request: TextsRequest) -> TextsRequest:
        return request

    def predict_many(self, requests: list[TextsRequest]) -> list[dict]:
        vectors = self.embedder.embed([t for r in requests for t in r.texts], progress=False)
        out, start = [], 0
        for r in requests:
            rows = vectors[start : start + len(r.texts)]
            start += len(r.texts)
            out.append({"dim": self.embedder.dim, "vectors": _vector_json(rows)})
        return out


class GenerateAPI(_API):
    def load(self, device: str) -> None:
        from imdb_transformer.core.backbone import load_backbone

        self.backbone = load_backbone(self.config.backbone)

    def decode_request(self, request: GenerateRequest) -> GenerateRequest:
        return request

    def predict_many(self, requests: list[GenerateRequest]) -> list[dict]:
        from imdb_transformer.generation import generate_text

        out = []
        for r in requests:
            options = r.model_dump(exclude={"prompt", "max_new_tokens"})
            text = generate_text(self.backbone, [r.prompt], r.max_new_tokens, **options)[0]
            out.append({"prompt": r.prompt, "text": text})
        return out


class CompletionsAPI(_API):
    """OpenAI's ``POST /v1/completions`` over the backbone, one request at a time; the answer streams
    out as it is decoded: server-sent events (``data: {chunk}``, then ``data: [DONE]``) when the
    request says ``stream``, else one JSON object once done. LitServe's OpenAI spec covers chat
    completions, which a base language model has no template for; this is the completions API."""

    def load(self, device: str) -> None:
        from imdb_transformer.core.backbone import load_backbone

        self.backbone = load_backbone(self.config.backbone)
        self.backbone.decoder.to(device)
        self.model_id = model_id(self.config)

    def decode_request(self, request: CompletionRequest) -> CompletionRequest:
        return request

    def predict(self, request: CompletionRequest):
        from imdb_transformer.generation import stream_text

        head = {
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": self.model_id,
        }  # fmt: skip
        stops = request.stops
        hold = max((len(s) for s in stops), default=1) - 1  # text that may still become a stop sequence
        text, sent, tokens, finish = "", 0, 0, None
        pieces = stream_text(self.backbone, request.text, request.max_tokens, **request.sampling())
        with contextlib.closing(pieces):  # a stop sequence ends decoding at once
            for piece, count in pieces:
                text, tokens = text + piece, tokens + count
                found = [i for i in (text.find(s) for s in stops) if i >= 0]
                if found:
                    text, finish = text[: min(found)], "stop"
                    break
                if request.stream and len(text) - hold > sent:
                    yield _event(head, text[sent : len(text) - hold], None)
                    sent = len(text) - hold
        finish = finish or ("length" if tokens >= request.max_tokens else "stop")  # else: end of text
        if request.stream:
            if len(text) > sent:
                yield _event(head, text[sent:], None)
            yield _event(head, "", finish)
            yield "data: [DONE]\n\n"
            return
        prompt_tokens = len(self.backbone.tokenizer.encode(request.text)) + 1  # after an end-of-text mark
        yield json.dumps({
            **head,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
            "usage": {
                "prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                "total_tokens": prompt_tokens + tokens,
            },
        })  # fmt: skip

    def encode_response(self, outputs):
        yield from outputs  # already what the client reads: events, or one JSON object


class StreamContentType:
    """ASGI middleware: LitServe's streaming answers carry no ``Content-Type``, and clients that check
    it (SSE readers, proxies that buffer) need one. A 200 from a streaming endpoint gets
    ``text/event-stream`` when its body is server-sent events (it starts with ``data:``), else
    ``application/json`` (one object, as a non-streamed completion is)."""

    def __init__(self, app, paths: Sequence[str]) -> None:
        self.app = app
        self.paths = frozenset(paths)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        start: dict | None = None

        async def typed(message: dict) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] == 200:
                start = message  # held until the first bytes of the body say what it is
                return
            if start is not None and message["type"] == "http.response.body":
                body = message.get("body", b"")
                if not body and message.get("more_body", False):
                    return  # nothing to tell the kind by yet
                kind = b"text/event-stream" if body.startswith(b"data:") else b"application/json"
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-type"]
                await send({**start, "headers": [*headers, (b"content-type", kind)]})
                start = None
            await send(message)

        await self.app(scope, receive, typed)


def _event(head: dict, text: str, finish: str | None) -> str:
    """One server-sent event of a streamed completion."""
    choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
    return f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"


class OpenAIEmbeddingsAPI(_API):
    """OpenAI's ``POST /v1/embeddings``: the vectors ``/embed`` gives (the index's embedder, else the
    backbone's), as floats or base64 of little-endian float32. A sparse adapter's vectors (one
    dimension per vocabulary entry) do not fit OpenAI's dense lists: every request is then answered
    400 saying so, and ``GET /v1/models`` says it beforehand."""

    def load(self, device: str) -> None:
        self.embedder = _embedder(self.config)
        self.model_id = model_id(self.config)

    def decode_request(self, request: EmbeddingsRequest) -> EmbeddingsRequest:
        return request

    def predict_many(self, requests: list[EmbeddingsRequest]) -> list[dict]:
        import base64

        import numpy as np
        from fastapi import HTTPException

        if self.embedder.sparse:
            raise HTTPException(400, SPARSE_EMBEDDINGS)
        texts = [t for r in requests for t in r.texts]
        vectors = self.embedder.embed(texts, progress=False).float().numpy()
        counts = [len(ids) for ids in self.embedder.tokenizer.encode(texts)]
        out, start = [], 0
        for r in requests:
            data = []
            for i in range(len(r.texts)):
                row = vectors[start + i]
                value = (
                    row.tolist()
                    if r.encoding_format == "float"
                    else base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
                )
                data.append({"object": "embedding", "index": i, "embedding": value})
            used = int(np.sum(counts[start : start + len(r.texts)]))
            start += len(r.texts)
            out.append({
                "object": "list", "data": data, "model": self.model_id,
                "usage": {"prompt_tokens": used, "total_tokens": used},
            })  # fmt: skip
        return out


SPARSE_EMBEDDINGS = (
    "this server's embedder is a sparse adapter (one dimension per vocabulary entry, few of them non-zero), "
    "which OpenAI's dense float lists cannot carry: POST /embed returns its vectors as indices and values; "
    "start the server with --backbone alone (or an index of a dense adapter) for /v1/embeddings"
)


def model_id(config: ServeConfig) -> str:
    """The name the OpenAI-compatible endpoints give the served model: the backbone's signature."""
    from imdb_transformer.core.backbone import load_spec

    if config.backbone is not None:
        return f"imdb-transformer-{load_spec(config.backbone).signature}"
    meta = _index_meta(config.index)
    return f"imdb-transformer-index-{meta.get('count')}-reviews"


def _label(probability: float) -> dict:
    return {"label": "pos" if probability > 0.5 else "neg", "probability": probability}


def _vector_json(rows) -> list:
    import scipy.sparse as sp

    if sp.issparse(rows):  # one dimension per vocabulary entry: send the non-zero ones
        return [{"indices": r.indices.tolist(), "values": r.data.tolist()} for r in rows]
    return rows.tolist()


def _embedder(config: ServeConfig):
    """The index's embedder (its backbone and adapter, or those given if they moved), else the
    backbone's (with the adapter, if given)."""
    from imdb_transformer.embedder import load_embedder

    if config.index is not None:
        from imdb_transformer.search import SemanticIndex

        return SemanticIndex.load(config.index, backbone=config.backbone, adapter=config.adapter).embedder
    return load_embedder(config.backbone, config.adapter)


@dataclass(frozen=True)
class Endpoint:
    """One endpoint of the API: its path, the LitServe API that answers it, which models it needs, what
    to pass when they were not given (its 404), and whether its requests share forward passes."""

    path: str
    api: type
    needs: Callable[[ServeConfig], bool]
    missing: str
    batched: bool = True
    stream: bool = False


WRITER = (
    "start the server with --backbone PATH, a forward pretraining run's backbone/ folder (a backward one, "
    "trained with --data.reverse true, would write text last word first: it serves /embed and "
    "/v1/embeddings only)"
)


@functools.lru_cache(maxsize=8)
def writes_forward(backbone: str | None) -> bool:
    """Whether ``backbone`` is given and reads left to right, so it can continue a prompt."""
    if backbone is None:
        return False
    from imdb_transformer.core.backbone import load_spec

    return not load_spec(backbone).config.reverse


ENDPOINTS = (
    Endpoint(
        "/search", SearchAPI, lambda c: c.index is not None,
        "start the server with --index DIR (an index written by `imdb-transformer embed`)",
    ),
    Endpoint(
        "/sentiment", SentimentAPI, lambda c: bool(c.classifier),
        "start the server with --classifier CKPT (a classifier checkpoint; repeat for an ensemble)",
    ),
    Endpoint(
        "/embed", EmbedAPI, lambda c: c.index is not None or c.backbone is not None,
        "start the server with --backbone PATH or --index DIR",
    ),
    Endpoint(  # one request at a time: the sampling options differ per request
        "/generate", GenerateAPI, lambda c: writes_forward(c.backbone), WRITER, batched=False,
    ),
    Endpoint(  # OpenAI's completions, streamed as decoded: one request at a time
        "/v1/completions", CompletionsAPI, lambda c: writes_forward(c.backbone), WRITER, batched=False,
        stream=True,
    ),
    Endpoint(
        "/v1/embeddings", OpenAIEmbeddingsAPI, lambda c: c.index is not None or c.backbone is not None,
        "start the server with --backbone PATH or --index DIR",
    ),
)  # fmt: skip


def served(config: ServeConfig) -> list[str]:
    """The endpoints ``config`` has models for."""
    return [e.path for e in ENDPOINTS if e.needs(config)]


def _apis(config: ServeConfig) -> list[_API]:
    """One LitServe API per endpoint whose model was given."""
    batching = {"max_batch_size": config.max_batch_size, "batch_timeout": config.batch_timeout}
    return [
        e.api(config, api_path=e.path, stream=e.stream, **(batching if e.batched else {}))
        for e in ENDPOINTS
        if e.needs(config)
    ]


def worker_threads(config: ServeConfig) -> int:
    """PyTorch threads of each worker: ``config.threads``, else the usable cores split evenly among the
    workers (one per endpoint served), at least one each."""
    from imdb_transformer.hardware import threads_per_worker

    return config.threads or threads_per_worker(len(served(config)))


def describe(config: ServeConfig, explains: bool = False) -> dict:
    """What ``GET /info`` reports about the loaded models (cheap: fingerprints of files, sizes); file
    paths only with ``config.info_paths``, as they tell a client about the machine's folders.
    ``explains``: whether the classifiers have word votes (``/sentiment`` can explain its verdicts)."""
    info: dict = {"endpoints": served(config)}
    where = (lambda path: {"path": str(path)}) if config.info_paths else (lambda path: {})
    if config.backbone is not None:
        from imdb_transformer.core.backbone import load_spec

        spec = load_spec(config.backbone)
        info["backbone"] = {
            **where(config.backbone), "signature": spec.signature, "bytes": _size(config.backbone)
        }  # fmt: skip
    if config.index is not None:
        meta = _index_meta(config.index)
        info["index"] = {
            **where(config.index), "reviews": meta.get("count"), "embedder": meta.get("embedder"),
            "bytes": _size(config.index),
        }  # fmt: skip
    if config.classifier:
        info["classifier"] = [
            {**where(c), "sha256": _file_hash(c), "bytes": _size(c)} for c in config.classifier
        ]
        info["explains"] = explains
    info["threads_per_worker"] = worker_threads(config)
    info["limits"] = {
        "max_body_bytes": MAX_BODY, "max_texts": MAX_TEXTS, "max_chars": MAX_CHARS, "max_k": MAX_K,
        "max_new_tokens": MAX_NEW_TOKENS,
    }  # fmt: skip
    return info


def _size(path: str) -> int:
    """Bytes of a file, or of the files under a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _index_meta(index: str) -> dict:
    from imdb_transformer.search import SearchIndexError

    path = Path(index) / "index.json"
    if not path.is_file():
        raise SearchIndexError(
            f"{index} is not an index folder (no index.json): build one with `imdb-transformer embed`"
        )
    return json.loads(path.read_text())


def _file_hash(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def page() -> str:
    """The web page's HTML (one file, its script and style inline)."""
    return resources.files("imdb_transformer.serve").joinpath("page.html").read_text(encoding="utf-8")


def build_server(config: ServeConfig):
    """A ``litserve.LitServer`` with the endpoints ``config`` has models for, the page at ``/``, a 404
    naming what to pass for the others, request errors answered without echoing the input, and the
    ``Host`` header checked (see the module's docstring)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse

    apis = _apis(config)
    loaded = _preflight(config)
    if not apis:
        raise InputError("nothing to serve: give --backbone PATH, --index DIR and/or --classifier CKPT")
    server = ls.LitServer(
        apis, accelerator="cpu" if not torch.cuda.is_available() else "auto", max_payload_size=MAX_BODY,
        model_metadata=describe(config, loaded.explains), timeout=60, disable_openapi_url=True,
    )  # fmt: skip
    html = page()
    # the page replaces LitServe's own "/" (a plain "litserve running")
    server.app.router.routes = [r for r in server.app.router.routes if getattr(r, "path", None) != "/"]
    server.app.add_api_route("/", lambda: HTMLResponse(html), methods=["GET"], include_in_schema=False)
    if config.backbone is not None or config.index is not None:
        models = models_list(config, loaded)
        server.app.add_api_route("/v1/models", lambda: JSONResponse(models), methods=["GET"])
    for endpoint in ENDPOINTS:
        if endpoint.needs(config):
            continue
        message = {"error": f"{endpoint.path} is not served: {endpoint.missing}"}
        server.app.add_api_route(
            endpoint.path,
            lambda message=message: JSONResponse(message, status_code=404),
            methods=["GET", "POST"],
        )
    server.app.add_exception_handler(RequestValidationError, request_error)
    streamed = [e.path for e in ENDPOINTS if e.stream and e.needs(config)]
    if streamed:
        server.app.add_middleware(StreamContentType, paths=streamed)
    allowed = allowed_host_names(config.host, config.allowed_hosts)
    if allowed is not None:
        server.app.add_middleware(HostCheck, allowed=allowed)  # added last: it runs first
    return server


def failure_report_name(api_path: str) -> str:
    return api_path.strip("/").replace("/", "_") + ".failed"


@dataclass
class Loaded:
    """What loading the models once in the main process told about them."""

    explains: bool = False  # the classifiers have word votes: /sentiment can explain its verdicts
    embeddings: str | None = None  # the vectors /v1/embeddings serves, or why it cannot


def _preflight(config: ServeConfig) -> Loaded:
    """Load every model once here, so a wrong path or a damaged file stops the command with one clear
    line before any worker process starts (a worker's failure would only end the server)."""
    loaded = Loaded()
    if config.index is not None or config.backbone is not None:
        embedder = _embedder(config)  # the index (when given) is loaded and checked on the way
        loaded.embeddings = SPARSE_EMBEDDINGS if embedder.sparse else f"dense, {embedder.dim} dimensions"
    if config.classifier:
        from imdb_transformer.ensemble import SentimentEnsemble

        loaded.explains = SentimentEnsemble(config.classifier).explains
    return loaded


def models_list(config: ServeConfig, loaded: Loaded) -> dict:
    """``GET /v1/models``: the one served model, in OpenAI's shape, with the OpenAI-compatible
    endpoints it answers and the vectors ``/v1/embeddings`` gives."""
    return {
        "object": "list",
        "data": [{
            "id": model_id(config), "object": "model", "created": 0, "owned_by": "imdb_transformer",
            "endpoints": [path for path in served(config) if path.startswith("/v1/")],
            "embeddings": loaded.embeddings,
        }],
    }  # fmt: skip
