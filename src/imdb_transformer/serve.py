"""A local HTTP API and web page over the project's models, served with LitServe.

Each model the server is given becomes one LitServe API with its own worker and dynamic batching:
requests that arrive within ``batch_timeout`` seconds of each other (up to ``max_batch_size``) share
one forward pass. Endpoints (JSON in and out):

- ``POST /search`` ``{"query", "k", "mode"}``: ranked hits from a search index (``--index``);
- ``POST /sentiment`` ``{"texts"}``: label and probability per text (``--classifier``, one or an
  ensemble);
- ``POST /embed`` ``{"texts"}``: a unit vector per text (the index's embedder, else the backbone's);
- ``POST /generate`` ``{"prompt", "strategy", "max_new_tokens", "seed", ...}``: a continuation
  (``--backbone``);
- ``GET /health``, ``GET /info`` (what is loaded), and ``GET /``: the web page (one static file, no
  outside resources, works offline).

Requests are checked before they reach a model (pydantic models, unknown fields refused), so one bad
request is answered 422 alone and never fails the batch it would have joined; bodies over
:data:`MAX_BODY` get 413. No field names a file: what a client sends cannot make the server load
anything or run code. Endpoints whose model was not given answer 404 saying what to pass.

This module deliberately has no ``from __future__ import annotations``: LitServe reads the request
type from ``decode_request``'s annotation at run time.
"""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import litserve as ls
import torch
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from imdb_transformer.errors import InputError

MAX_BODY = 1_000_000  # bytes of one request body
MAX_TEXTS = 64  # texts in one /sentiment or /embed request
MAX_CHARS = 20_000  # characters of one text (a long IMDB review is about 14,000)
MAX_K = 100  # results of one search
MAX_NEW_TOKENS = 256  # tokens one /generate may add

Text = Annotated[str, StringConstraints(strip_whitespace=False, min_length=1, max_length=MAX_CHARS)]


class _Strict(BaseModel):
    """Fields of the right JSON type only (no coercion of 5 to "5"), and no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True)


def _words(text: str) -> str:
    if not text.strip():
        raise ValueError("text is empty or whitespace: give some words")
    return text


class SearchRequest(_Strict):
    query: Text
    k: int = Field(5, ge=1, le=MAX_K)
    mode: Literal["hybrid", "dense", "lexical"] | None = None

    def model_post_init(self, context: object) -> None:
        _words(self.query)


class TextsRequest(_Strict):
    texts: list[Text] = Field(min_length=1, max_length=MAX_TEXTS)

    def model_post_init(self, context: object) -> None:
        for text in self.texts:
            _words(text)


class GenerateRequest(_Strict):
    prompt: Text
    strategy: Literal["greedy", "sample", "top_k", "top_p"] = "top_k"
    max_new_tokens: int = Field(60, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(1.0, gt=0, le=10)
    top_k: int = Field(50, ge=1, le=10_000)
    top_p: float = Field(0.9, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)

    def model_post_init(self, context: object) -> None:
        _words(self.prompt)


@dataclass
class ServeConfig:
    """What the server loads and how it batches (see :func:`imdb_transformer.verbs.serve`)."""

    backbone: str | None = None
    adapter: str | None = None
    index: str | None = None
    classifier: list[str] = field(default_factory=list)
    max_batch_size: int = 16
    batch_timeout: float = 0.01


class _API(ls.LitAPI):
    """A LitServe API over the models a :class:`ServeConfig` names (pickled into its worker process,
    where ``setup`` loads them)."""

    def __init__(self, config: ServeConfig, **options) -> None:
        super().__init__(**options)
        self.config = config

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
    def setup(self, device: str) -> None:
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
    def setup(self, device: str) -> None:
        from imdb_transformer.models.ensemble import SentimentEnsemble

        self.ensemble = SentimentEnsemble(self.config.classifier, device)

    def decode_request(self, request: TextsRequest) -> TextsRequest:
        return request

    def predict_many(self, requests: list[TextsRequest]) -> list[dict]:
        texts = [t for r in requests for t in r.texts]  # every request's texts in one pass
        probabilities = iter(self.ensemble.probabilities(texts, progress=False).tolist())
        return [{"results": [_label(next(probabilities)) for _ in r.texts]} for r in requests]


class EmbedAPI(_API):
    def setup(self, device: str) -> None:
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
    def setup(self, device: str) -> None:
        from imdb_transformer.models.backbone import load_backbone

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


def _label(probability: float) -> dict:
    return {"label": "pos" if probability > 0.5 else "neg", "probability": probability}


def _apis(config: ServeConfig) -> list[_API]:
    """One LitServe API per endpoint whose model was given."""
    batching = {"max_batch_size": config.max_batch_size, "batch_timeout": config.batch_timeout}
    apis: list[_API] = []
    if config.index is not None:
        apis.append(SearchAPI(config, api_path="/search", **batching))
    if config.classifier:
        apis.append(SentimentAPI(config, api_path="/sentiment", **batching))
    if config.index is not None or config.backbone is not None:
        apis.append(EmbedAPI(config, api_path="/embed", **batching))
    if config.backbone is not None:
        apis.append(GenerateAPI(config, api_path="/generate"))  # one at a time: options differ per request
    return apis


def _vector_json(rows) -> list:
    import scipy.sparse as sp

    if sp.issparse(rows):  # one dimension per vocabulary entry: send the non-zero ones
        return [{"indices": r.indices.tolist(), "values": r.data.tolist()} for r in rows]
    return rows.tolist()


def _embedder(config: ServeConfig):
    from imdb_transformer.models.adapter import load_adapter
    from imdb_transformer.models.backbone import load_backbone
    from imdb_transformer.models.embedder import DocumentEmbedder

    if config.index is not None:
        from imdb_transformer.search import SemanticIndex

        return SemanticIndex.load(config.index, backbone=config.backbone, adapter=config.adapter).embedder
    loaded = load_backbone(config.backbone)
    head = load_adapter(config.adapter, loaded) if config.adapter is not None else None
    return DocumentEmbedder(loaded, head=head)


MISSING = {
    "/search": "start the server with --index DIR (an index written by `imdb-transformer embed`)",
    "/sentiment": "start the server with --classifier CKPT (a classifier checkpoint; repeat for an ensemble)",
    "/embed": "start the server with --backbone PATH or --index DIR",
    "/generate": "start the server with --backbone PATH (a pretraining run's backbone/ folder)",
}


def describe(config: ServeConfig) -> dict:
    """What ``GET /info`` reports about the loaded models (cheap: fingerprints of files, sizes)."""
    info: dict = {"endpoints": served(config)}
    if config.backbone is not None:
        from imdb_transformer.models.backbone import load_spec

        spec = load_spec(config.backbone)
        info["backbone"] = {"path": str(config.backbone), "fingerprint": spec.fingerprint}
    if config.index is not None:
        meta = _index_meta(config.index)
        info["index"] = {
            "path": str(config.index),
            "reviews": meta.get("count"),
            "embedder": meta.get("embedder"),
        }
    if config.classifier:
        info["classifier"] = [{"path": str(c), "sha256": _file_hash(c)} for c in config.classifier]
    info["limits"] = {
        "max_body_bytes": MAX_BODY, "max_texts": MAX_TEXTS, "max_chars": MAX_CHARS, "max_k": MAX_K,
        "max_new_tokens": MAX_NEW_TOKENS,
    }  # fmt: skip
    return info


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


def served(config: ServeConfig) -> list[str]:
    """The endpoints ``config`` has models for."""
    return [api for api in MISSING if api not in _missing(config)]


def _missing(config: ServeConfig) -> list[str]:
    served = set()
    if config.index is not None:
        served |= {"/search", "/embed"}
    if config.classifier:
        served.add("/sentiment")
    if config.backbone is not None:
        served |= {"/embed", "/generate"}
    return [api for api in MISSING if api not in served]


def page() -> str:
    """The web page's HTML (one file, its script and style inline)."""
    return resources.files("imdb_transformer").joinpath("web/index.html").read_text(encoding="utf-8")


def build_server(config: ServeConfig):
    """A ``litserve.LitServer`` with the endpoints ``config`` has models for, the page at ``/``, and a
    404 naming what to pass for the others."""
    from fastapi.responses import HTMLResponse, JSONResponse

    apis = _apis(config)
    _preflight(config)
    if not apis:
        raise InputError("nothing to serve: give --backbone PATH, --index DIR and/or --classifier CKPT")
    if config.max_batch_size < 1 or config.batch_timeout < 0:
        raise InputError("max_batch_size must be >= 1 and batch_timeout >= 0")
    server = ls.LitServer(
        apis, accelerator="cpu" if not torch.cuda.is_available() else "auto", max_payload_size=MAX_BODY,
        model_metadata=describe(config), timeout=60,
    )  # fmt: skip
    html = page()
    # the page replaces LitServe's own "/" (a plain "litserve running")
    server.app.router.routes = [r for r in server.app.router.routes if getattr(r, "path", None) != "/"]
    server.app.add_api_route("/", lambda: HTMLResponse(html), methods=["GET"], include_in_schema=False)
    for path in _missing(config):
        message = {"error": f"{path} is not served: {MISSING[path]}"}
        server.app.add_api_route(
            path, lambda message=message: JSONResponse(message, status_code=404), methods=["GET", "POST"]
        )
    return server


class ServerProcess:
    """``imdb-transformer serve ARGS`` in a child process on a free local port, started and waited for
    (``GET /health``); ``call`` sends one request and returns (status, decoded JSON or text), ``stop``
    ends it and its workers. For tests, benchmarks and scripts."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "imdb_transformer.cli", "serve", *args, "--port", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {log.read_text()[-3000:]}")
            try:
                if self.call("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the server did not start: {log.read_text()[-3000:]}")

    def call(
        self, method: str, path: str, body: object = None, raw: bytes | None = None
    ) -> tuple[int, object]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                text = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as err:
            text, status = err.read().decode(), err.code
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)  # the server and its worker processes
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


def _preflight(config: ServeConfig) -> None:
    """Load every model once here, so a wrong path or a damaged file stops the command with one clear
    line before any worker process starts (a worker's failure would only end the server)."""
    if config.index is not None:
        from imdb_transformer.search import SemanticIndex

        SemanticIndex.load(config.index, backbone=config.backbone, adapter=config.adapter)
    elif config.backbone is not None:
        _embedder(config)
    if config.classifier:
        from imdb_transformer.models.ensemble import SentimentEnsemble

        SentimentEnsemble(config.classifier)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (for tests and benchmarks)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
