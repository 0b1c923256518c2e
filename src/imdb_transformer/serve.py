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
anything or run code. Endpoints whose model was not given answer 404 saying what to pass. A request
error is answered with the place and reason of each problem, never the input echoed back (NaN, a
lone surrogate or a deep nesting could not be written as JSON, and would turn a 422 into a 500).

The surface is that of a local tool: a request whose ``Host`` header names another machine is refused
(400), so a web page cannot reach the server through DNS rebinding; FastAPI's generated ``/docs``,
``/redoc`` and ``/openapi.json`` are off (they load scripts from a CDN; the page at ``/`` is the UI);
``GET /info`` shows fingerprints and sizes, not file paths, unless started with ``info_paths``.

:func:`run` keeps the processes together: SIGTERM or SIGINT to the main process stops the HTTP server,
every inference worker and LitServe's manager within seconds, and a worker that dies (killed, or its
model failing to load) stops them all with one line naming its endpoint.

This module deliberately has no ``from __future__ import annotations``: LitServe reads the request
type from ``decode_request``'s annotation at run time.
"""

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import litserve as ls
import torch
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from imdb_transformer.errors import ImdbError, InputError

MAX_BODY = 1_000_000  # bytes of one request body
MAX_TEXTS = 64  # texts in one /sentiment or /embed request
MAX_CHARS = 20_000  # characters of one text (a long IMDB review is about 14,000)
MAX_K = 100  # results of one search
MAX_NEW_TOKENS = 256  # tokens one /generate may add

MAX_BATCH = 1024  # requests one forward pass may batch
MAX_BATCH_TIMEOUT = 10.0  # seconds a request may wait for others to join its batch
LOOPBACK = ("localhost", "127.0.0.1", "::1")  # the names of this machine a Host header may give
# the addresses LitServe can listen on (it refuses any other), and what each means
HOSTS = {"127.0.0.1": "127.0.0.1", "localhost": "127.0.0.1", "0.0.0.0": "0.0.0.0", "::": "::"}
GRACE_S = 3.0  # seconds the HTTP server gives open requests once told to stop
STOP_WITHIN_S = 10.0  # after which whatever of the server still runs is killed
WATCH_EVERY_S = 0.25  # how often the main process checks that its workers are alive


# pydantic refuses a string holding a lone surrogate (a "\ud800" escape in the JSON) as not Unicode
Text = Annotated[str, StringConstraints(strip_whitespace=False, min_length=1, max_length=MAX_CHARS)]


class _Strict(BaseModel):
    """Fields of the right JSON type only (no coercion of 5 to "5"), no unknown fields, and finite
    numbers (Python's JSON reader takes NaN, Infinity and 1e400, which is infinite)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


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
            if not _HOST_NAME.fullmatch(name.strip()):
                raise InputError(
                    f"--allowed_hosts: {name!r} is not a host name or address; give names such as "
                    "myhost.example or 192.168.1.20, separated by commas, or * to answer any Host header"
                )
        self.allowed_hosts = tuple(_host_name(n) for n in names)


_HOST_NAME = re.compile(r"\*|\[?[0-9A-Za-z._:%-]{1,253}\]?")


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
        try:
            self.load(device)
        except Exception as err:
            if self.config.failures is None:
                raise
            reason = str(err) if isinstance(err, ImdbError) else f"{type(err).__name__}: {err}"
            Path(self.config.failures, _report_name(self.api_path)).write_text(reason, encoding="utf-8")
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
        from imdb_transformer.models.ensemble import SentimentEnsemble

        self.ensemble = SentimentEnsemble(self.config.classifier, device)

    def decode_request(self, request: TextsRequest) -> TextsRequest:
        return request

    def predict_many(self, requests: list[TextsRequest]) -> list[dict]:
        texts = [t for r in requests for t in r.texts]  # every request's texts in one pass
        probabilities = iter(self.ensemble.probabilities(texts, progress=False).tolist())
        return [{"results": [_label(next(probabilities)) for _ in r.texts]} for r in requests]


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
    """What ``GET /info`` reports about the loaded models (cheap: fingerprints of files, sizes); file
    paths only with ``config.info_paths``, as they tell a client about the machine's folders."""
    info: dict = {"endpoints": served(config)}
    where = (lambda path: {"path": str(path)}) if config.info_paths else (lambda path: {})
    if config.backbone is not None:
        from imdb_transformer.models.backbone import load_spec

        spec = load_spec(config.backbone)
        info["backbone"] = {
            **where(config.backbone), "fingerprint": spec.fingerprint, "bytes": _size(config.backbone)
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
    """A ``litserve.LitServer`` with the endpoints ``config`` has models for, the page at ``/``, a 404
    naming what to pass for the others, request errors answered without echoing the input, and the
    ``Host`` header checked (see the module's docstring)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse

    apis = _apis(config)
    _preflight(config)
    if not apis:
        raise InputError("nothing to serve: give --backbone PATH, --index DIR and/or --classifier CKPT")
    server = ls.LitServer(
        apis, accelerator="cpu" if not torch.cuda.is_available() else "auto", max_payload_size=MAX_BODY,
        model_metadata=describe(config), timeout=60, disable_openapi_url=True,
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
    server.app.add_exception_handler(RequestValidationError, _request_error)
    allowed = allowed_host_names(config.host, config.allowed_hosts)
    if allowed is not None:
        server.app.add_middleware(HostCheck, allowed=allowed)  # added last: it runs first
    return server


MAX_ERRORS = 20  # problems listed in one 422


async def _request_error(request, exc) -> object:
    """422 with each problem's place and reason (a JSON syntax error's too), never its input."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"detail": [_brief(e) for e in exc.errors()[:MAX_ERRORS]]}, status_code=422)


def _brief(error: dict) -> dict:
    message = str(error.get("msg", "invalid"))
    reason = (error.get("ctx") or {}).get("error")
    if error.get("type") == "json_invalid" and isinstance(reason, str):  # "Expecting value", ...
        message = f"{message}: {reason}"
    return {
        "type": _printable(error.get("type", ""), 40),
        "loc": [part if isinstance(part, int) else _printable(part, 40) for part in error.get("loc", ())],
        "msg": _printable(message, 300),
    }


def _printable(value: object, limit: int) -> str:
    """``value`` as text that JSON can carry (a lone surrogate escaped), cut to ``limit`` characters."""
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def allowed_host_names(host: str, extra: Sequence[str] = ()) -> frozenset[str] | None:
    """The names a request's ``Host`` header may give: this machine's loopback names, the address the
    server listens on unless it is every interface (0.0.0.0, ::), and ``extra``; None (no check)
    when ``extra`` holds ``*``."""
    names = [*LOOPBACK, *extra]
    if HOSTS.get(host, host) not in ("0.0.0.0", "::"):
        names.append(host)
    if "*" in names:
        return None
    return frozenset(_host_name(name) for name in names)


def _host_name(value: str) -> str:
    """The host of a ``Host`` header or of a name given: lower case, without its port, the brackets of
    an IPv6 address or a trailing dot."""
    value = value.strip().lower()
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:  # name:port (an IPv6 address without brackets has several)
        value = value.partition(":")[0]
    return value.rstrip(".")


class HostCheck:
    """ASGI middleware answering 400 to a request whose ``Host`` header names none of ``allowed``.

    A web page can make a browser send requests to a local server through DNS rebinding (a name of
    the page's own that it points at 127.0.0.1); the browser still sends that name as ``Host``,
    which is how the server tells it from a request meant for it. A request without the header
    (HTTP/1.0; browsers always send it) is let through.
    """

    def __init__(self, app, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host")
            if host is not None and _host_name(host.decode("latin-1")) not in self.allowed:
                from fastapi.responses import JSONResponse

                names = ", ".join(sorted(self.allowed))
                message = (
                    f"this server answers requests for {names} only (the Host header names another "
                    "machine): start it with --allowed_hosts NAME to add the name clients use"
                )
                await JSONResponse({"error": message}, status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ServerStopped(ImdbError):
    """A process of the server died, so the server stopped: its message names the endpoint and why."""


def run(config: ServeConfig) -> None:
    """Serve ``config`` until SIGTERM or SIGINT (Ctrl-C), then stop every process of the server and
    return; raise :class:`ServerStopped` if a worker dies (the others are stopped first)."""
    _check_free(config.host, config.port)
    with tempfile.TemporaryDirectory(prefix="imdb-serve-") as failures:
        config = dataclasses.replace(config, failures=failures)
        try:
            server = build_server(config)
        except KeyboardInterrupt:  # Ctrl-C while the models load: nothing runs yet
            print("Stopped before the server started.", flush=True)
            return
        shown = f"[{config.host}]" if ":" in config.host else config.host
        endpoints = ", ".join(served(config))
        print(f"Serving on http://{shown}:{config.port}/ (page), API: {endpoints}", flush=True)
        stopped_by = _Supervisor(server, Path(failures)).run(
            host=HOSTS[config.host], port=config.port, generate_client_file=False, num_api_servers=1
        )
        print(f"Stopped ({stopped_by}): the server and its workers have exited.", flush=True)


def _check_free(host: str, port: int) -> None:
    """Refuse a port another program listens on now, before any model loads."""
    address = HOSTS[host]
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((address, port))
        except OSError as err:
            raise InputError(
                f"cannot listen on {host} port {port} ({err.strerror}): another program may use it; "
                "pick another --port"
            ) from None


class _Supervisor:
    """Runs a ``LitServer`` as one unit.

    LitServe's ``run`` starts a manager process, one inference worker process per endpoint and the
    HTTP server process (forked), then waits. A SIGTERM to the main process would end it alone and
    leave the others serving, and LitServe's own monitor, when a worker dies, shuts the rest down
    from its thread while ``run`` is still waiting on the manager it just stopped: a traceback. Here
    SIGTERM and SIGINT raise ``KeyboardInterrupt`` in the main thread, which ``run`` answers by
    stopping its processes; a watchdog thread polls the workers and the HTTP server and, when one
    has died, notes why and signals the main thread the same way; whatever still runs afterwards is
    terminated, and a stop that takes more than :data:`STOP_WITHIN_S` seconds is finished by killing.
    """

    def __init__(self, server, failures: Path) -> None:
        self.server = server
        self.failures = failures
        self.pid = os.getpid()
        self.workers: list[tuple[str, multiprocessing.Process]] = []  # (endpoint, process)
        self.http: list[multiprocessing.Process] = []
        self.stopping: str | None = None  # what stopped the server, once something has
        self.failure: str | None = None
        self.done = threading.Event()
        self.finished = threading.Event()
        server._monitor_workers = False  # the watchdog replaces it
        server.uvicorn_graceful_timeout = GRACE_S
        launch, start = server.launch_inference_worker, server._start_server

        def launch_and_watch(lit_api):
            processes = launch(lit_api)
            self.workers += [(lit_api.api_path, p) for p in processes]
            pids = ", ".join(str(p.pid) for p in processes)
            print(f"{lit_api.api_path}: worker process {pids}", flush=True)
            return processes

        def start_and_watch(*args, **kwargs):
            started = start(*args, **kwargs)
            self.http += [w for w in started.values() if isinstance(w, multiprocessing.process.BaseProcess)]
            return started

        server.launch_inference_worker = launch_and_watch
        server._start_server = start_and_watch

    def run(self, **options) -> str:
        """``server.run(**options)`` until a signal or a failure stops it; returns the signal's name,
        raises :class:`ServerStopped` for a failure."""
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for sig in previous:
                signal.signal(sig, self._on_signal)
            threading.Thread(target=self._watch, name="imdb-serve-watchdog", daemon=True).start()
            self.server.run(**options)
        except KeyboardInterrupt:  # the signal came before run() waited (it only catches it there)
            pass
        except Exception:  # a process died under run(): its manager, a worker it was talking to
            self.stopping = self.stopping or "failure"  # no KeyboardInterrupt from the watchdog from here
            self.failure = self.failure or self._find_failure()
            if self.failure is None:
                raise
        finally:
            self.stopping = self.stopping or "the server ended"
            self.done.set()
            self._stop_children()
            self.finished.set()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.failure is not None:
            raise ServerStopped(self.failure)
        return self.stopping

    def _on_signal(self, signum: int, frame) -> None:
        if os.getpid() != self.pid:  # a process forked from this one before it set its own handlers
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.stopping is not None:  # already stopping; _deadline bounds how long it takes
            return
        self.stopping = "failure" if self.failure is not None else signal.Signals(signum).name
        threading.Thread(target=self._deadline, name="imdb-serve-deadline", daemon=True).start()
        raise KeyboardInterrupt  # LitServe's run() stops its processes on it

    def _watch(self) -> None:
        """Poll the processes; on the first that died, note why and interrupt the main thread. (It
        prints nothing: the HTTP server is forked from this process, and a fork taken while this
        thread held the lock of stdout would leave that lock held in the child.)"""
        main = threading.main_thread().ident
        while not self.done.wait(WATCH_EVERY_S):
            if self.stopping is not None:
                return
            failure = self._find_failure()
            if failure is not None and self.stopping is None:
                self.failure = failure
                signal.pthread_kill(main, signal.SIGTERM)
                return

    def _find_failure(self) -> str | None:
        for path, process in list(self.workers):
            if process.exitcode is not None:
                why = self._why(path, process)
                return (
                    f"the {path} endpoint's worker (process {process.pid}) {why}; every endpoint is stopped: "
                    "restart the server"
                )
        for process in list(self.http):
            if process.exitcode is not None:
                return (
                    f"the HTTP server process ({process.pid}) {_ended(process.exitcode)}; every endpoint is "
                    "stopped: restart the server"
                )
        return None

    def _why(self, path: str, process: multiprocessing.Process) -> str:
        report = self.failures / _report_name(path)
        if report.is_file():
            return f"could not load its model ({report.read_text(encoding='utf-8').strip()})"
        return _ended(process.exitcode)

    def _stop_children(self) -> None:
        """Terminate whatever child process still runs (LitServe's manager, workers, HTTP server), and
        kill those that have not ended within a few seconds."""
        children = multiprocessing.active_children()
        for child in children:
            child.terminate()
        deadline = time.monotonic() + GRACE_S
        for child in children:
            child.join(max(0.1, deadline - time.monotonic()))
        for child in children:
            if child.is_alive():
                child.kill()
                child.join(1)

    def _deadline(self) -> None:
        if self.finished.wait(STOP_WITHIN_S):
            return
        for child in multiprocessing.active_children():
            child.kill()
        late = f"the server did not stop within {STOP_WITHIN_S:g} s; its processes were killed"
        print(f"error: {self.failure or late}", file=sys.stderr, flush=True)
        os._exit(1)


def _ended(exitcode: int) -> str:
    if exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    return f"exited with status {exitcode}"


def _report_name(api_path: str) -> str:
    return api_path.strip("/").replace("/", "_") + ".failed"


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
        self,
        method: str,
        path: str,
        body: object = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, object]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Content-Type": "application/json", **(headers or {})},
        )  # fmt: skip
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
        """SIGTERM to the main process, which stops its workers; then SIGKILL to whatever of its
        process group is left (nothing, unless it failed to stop)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):  # raised when every process of the group has exited
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
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
