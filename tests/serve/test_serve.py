"""The HTTP API with the real server (``imdb-transformer serve`` on a free port) and tiny models."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from helpers import REPO, classifier_checkpoint, fails, run_cli

pytest.importorskip("litserve", reason="the server needs the serve extra: pip install -e '.[serve]'")

from imdb_transformer.errors import InputError  # noqa: E402
from imdb_transformer.serve import ServeConfig, free_port, run
from imdb_transformer.serve import ServerProcess as Server
from imdb_transformer.serve.app import SentimentAPI, _preflight
from imdb_transformer.serve.hosts import allowed_host_names
from imdb_transformer.serve.schemas import MAX_NEW_TOKENS, MAX_TEXTS, SentimentRequest  # noqa: E402


@pytest.fixture(scope="session")
def served_models(pretrained_run: Path, imdb_dir: Path, cache_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """A tiny backbone, an index of the synthetic test reviews and a classifier checkpoint."""
    root = tmp_path_factory.mktemp("served")
    backbone = pretrained_run / "backbone"
    run_cli("embed", "--backbone", str(backbone), "--source", str(imdb_dir), "--out", str(root / "index"))
    run_cli(
        "fit", "--config", str(REPO / "configs/classify.yaml"), "--data.source", str(imdb_dir),
        "--data.cache_dir", str(cache_dir), "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false", "--model.backbone", str(backbone),
        "--trainer.max_epochs", "3", "--model.pooling", "last", "--model.lexical", "context",
    )  # fmt: skip
    return {
        "backbone": backbone,
        "index": root / "index",
        "classifier": root / "lightning_logs/version_0/checkpoints/last.ckpt",
    }


@pytest.fixture(scope="session")
def server(served_models: dict[str, Path], tmp_path_factory) -> Server:
    m = served_models
    log = tmp_path_factory.mktemp("server") / "server.log"
    running = Server(
        ["--backbone", str(m["backbone"]), "--index", str(m["index"]), "--classifier", str(m["classifier"]),
         "--max_batch_size", "8", "--batch_timeout", "0.05"],
        log,
    )  # fmt: skip
    yield running
    running.stop()


def test_each_endpoint_answers(server: Server) -> None:
    status, info = server.call("GET", "/info")
    assert status == 200 and info["model"]["index"]["reviews"] == 80
    assert set(info["model"]["endpoints"]) == {
        "/search",
        "/sentiment",
        "/embed",
        "/generate",
        "/v1/completions",
        "/v1/embeddings",
    }
    status, found = server.call("POST", "/search", {"query": "a good film", "k": 3})
    assert status == 200 and len(found["hits"]) == 3
    assert {"rank", "score", "id", "label", "snippet"} <= set(found["hits"][0])
    status, found = server.call("POST", "/search", {"query": "a good film", "k": 2, "mode": "lexical"})
    assert status == 200 and [h["rank"] for h in found["hits"]] == [1, 2]
    status, sentiment = server.call("POST", "/sentiment", {"texts": ["great fun", "awful and dull"]})
    assert status == 200 and [r["label"] in ("pos", "neg") for r in sentiment["results"]] == [True, True]
    assert all(0 <= r["probability"] <= 1 for r in sentiment["results"])
    status, embedded = server.call("POST", "/embed", {"texts": ["one", "two words"]})
    assert status == 200 and len(embedded["vectors"]) == 2
    assert abs(sum(v * v for v in embedded["vectors"][0]) - 1) < 1e-4  # unit vectors
    body = {"prompt": "This movie", "strategy": "greedy", "max_new_tokens": 5, "seed": 1}
    status, first = server.call("POST", "/generate", body)
    assert status == 200 and isinstance(first["text"], str)
    assert server.call("POST", "/generate", body)[1] == first  # same seed, same text
    status, html = server.call("GET", "/")
    assert status == 200 and "<title>imdb_transformer</title>" in html
    assert "http://" not in html and "https://" not in html  # nothing loaded from elsewhere: works offline


@pytest.mark.parametrize(
    ("path", "body", "why"),
    [
        ("/search", {"query": "   "}, "empty"),
        ("/search", {"query": ""}, "at least 1 character"),
        ("/search", {"query": 5}, "string"),
        ("/search", {"query": "film", "k": 0}, "greater than or equal to 1"),
        ("/search", {"query": "film", "k": 101}, "less than or equal to 100"),
        ("/search", {"query": "film", "mode": "fuzzy"}, "hybrid"),
        ("/search", {"query": "film", "path": "/etc/passwd"}, "Extra inputs are not permitted"),
        ("/sentiment", {"texts": []}, "at least 1 item"),
        ("/sentiment", {"texts": ["fine", " "]}, "empty"),
        ("/sentiment", {"texts": ["x"] * (MAX_TEXTS + 1)}, f"at most {MAX_TEXTS} items"),
        ("/sentiment", {"texts": "not a list"}, "list"),
        (
            "/generate",
            {"prompt": "The", "max_new_tokens": MAX_NEW_TOKENS + 1},
            f"less than or equal to {MAX_NEW_TOKENS}",
        ),
        ("/generate", {"prompt": "The", "strategy": "beam"}, "greedy"),
        ("/embed", {"texts": [7]}, "string"),
    ],
)
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(
    server: Server, path: str, body: dict, why: str
) -> None:
    status, answer = server.call("POST", path, body)
    assert status == 422 and why in json.dumps(answer)
    assert server.call("POST", "/search", {"query": "film", "k": 1})[0] == 200


def test_invalid_json_and_oversized_bodies_are_refused(server: Server) -> None:
    status, _ = server.call("POST", "/search", raw=b'{"query": "film", ')
    assert status == 422
    status, _ = server.call("POST", "/sentiment", raw=json.dumps({"texts": ["a" * 600_000] * 2}).encode())
    assert status == 413  # over the 1 MB body limit
    assert server.call("GET", "/health")[0] == 200


def test_fifty_requests_from_eight_threads_are_answered_as_one_at_a_time(server: Server) -> None:
    texts = [f"review number {i} was {'great' if i % 2 else 'awful'}" for i in range(50)]
    alone = [server.call("POST", "/sentiment", {"texts": [t]})[1]["results"][0] for t in texts[:10]]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda t: server.call("POST", "/sentiment", {"texts": [t]}), texts))
    assert all(status == 200 for status, _ in answers)
    together = [body["results"][0] for _, body in answers]
    for a, b in zip(alone, together[:10], strict=True):  # batched with others == computed alone
        assert a["label"] == b["label"] and a["probability"] == pytest.approx(b["probability"], abs=1e-5)
    queries = [f"film {i}" for i in range(16)]
    single = [server.call("POST", "/search", {"query": q, "k": 3})[1] for q in queries]
    with ThreadPoolExecutor(8) as pool:
        batched = list(pool.map(lambda q: server.call("POST", "/search", {"query": q, "k": 3})[1], queries))
    assert [[h["id"] for h in s["hits"]] for s in single] == [[h["id"] for h in b["hits"]] for b in batched]


@pytest.fixture(scope="module")
def only(served_models: dict[str, Path], tmp_path_factory) -> Server:
    """A second server: the classifier alone, unbatched, answering two more host names and showing the
    models' paths in /info."""
    log = tmp_path_factory.mktemp("only") / "server.log"
    running = Server(
        ["--classifier", str(served_models["classifier"]), "--max_batch_size", "1",
         "--allowed_hosts", "my.example,10.1.2.3", "--info_paths", "true"],
        log,
    )  # fmt: skip
    yield running
    running.stop()


def test_endpoints_without_their_model_answer_404_and_unbatched_serving_agrees(
    server: Server, only: Server
) -> None:
    texts = {"texts": ["great fun", "awful and dull"]}
    unbatched = only.call("POST", "/sentiment", texts)[1]["results"]  # one request at a time
    batched = server.call("POST", "/sentiment", texts)[1]["results"]
    assert [r["label"] for r in unbatched] == [r["label"] for r in batched]
    assert [r["probability"] for r in unbatched] == pytest.approx(
        [r["probability"] for r in batched], abs=1e-5
    )
    status, answer = only.call("POST", "/search", {"query": "film"})
    assert status == 404 and "--index DIR" in answer["error"]
    status, answer = only.call("POST", "/generate", {"prompt": "The"})
    assert status == 404 and "--backbone PATH" in answer["error"]
    assert only.call("POST", "/sentiment", {"texts": ["good"]})[0] == 200


def _log(server: Server) -> str:
    return Path(server.log.name).read_text()


# values JSON cannot carry back in an answer (NaN, infinities, lone surrogates) or that the parser cannot
# read: per endpoint, a body with a numeric or text field to put them in
FIELDS = {
    "/search": b'{"query": "film", "k": %s}',
    "/generate": b'{"prompt": "The", "max_new_tokens": 2, "temperature": %s}',
    "/sentiment": b'{"texts": ["fine", %s]}',
    "/embed": b'{"texts": [%s]}',
}
DEEP = 100_000  # far past the JSON reader's recursion limit, within the 1 MB body limit


@pytest.mark.parametrize(
    "value",
    [b"NaN", b"Infinity", b"-Infinity", b"1e400", b'"\\ud800"', b'"a\\udfffb"', b'"\xff\xfe"',
     b"[" * 500 + b"]" * 500, b"[" * DEEP + b"]" * DEEP],
    ids=["NaN", "Infinity", "-Infinity", "1e400", "lone-surrogate", "lone-low-surrogate", "invalid-utf8",
         "nested-500", f"nested-{DEEP}"],
)  # fmt: skip
def test_unserialisable_or_malformed_bodies_get_a_short_4xx_and_no_traceback(
    server: Server, value: bytes
) -> None:
    for path, body in FIELDS.items():
        status, answer = server.call("POST", path, raw=body % value)
        assert 400 <= status < 500, (path, status, answer)
        assert isinstance(answer, dict) and "detail" in answer, (path, answer)
        assert len(json.dumps(answer)) < 600, (path, answer)  # a reason, not the input echoed back
    assert "Traceback" not in _log(server)
    assert server.call("POST", "/search", {"query": "film", "k": 1})[0] == 200


def test_other_malformed_bodies_get_a_short_4xx(server: Server) -> None:
    cases = [b"[1, 2]", b'"text"', b"null", b"{" * 1000, b'{"query": "film", "k": 3, ', b'{"\\ud800": 1}',
             b"\xff" * 1000, b""]  # fmt: skip
    for path in FIELDS:
        for raw in cases:
            status, answer = server.call("POST", path, raw=raw)
            assert 400 <= status < 500 and len(json.dumps(answer)) < 600, (path, raw[:20], status, answer)
    status, answer = server.call("POST", "/search", raw=b'{"query": "film", "k": ')
    assert status == 422 and answer["detail"][0]["msg"].startswith("JSON decode error: Expecting value")
    status, answer = server.call("POST", "/generate", raw=b'{"prompt": "The", "top_p": NaN}')
    assert answer["detail"] == [
        {"type": "finite_number", "loc": ["body", "top_p"], "msg": "Input should be a finite number"}
    ]
    assert "Traceback" not in _log(server)


def test_tiny_temperatures_and_nuclei_generate_like_greedy(server: Server) -> None:
    greedy = server.call(
        "POST", "/generate", {"prompt": "The film", "strategy": "greedy", "max_new_tokens": 6}
    )
    assert greedy[0] == 200
    for options in ({"strategy": "sample", "temperature": 1e-300}, {"strategy": "top_p", "top_p": 1e-300},
                    {"strategy": "top_k", "temperature": 5e-324, "top_k": 10_000}):  # fmt: skip
        status, answer = server.call(
            "POST", "/generate", {"prompt": "The film", "max_new_tokens": 6, **options}
        )
        assert status == 200 and answer["text"] == greedy[1]["text"], (options, answer)
    status, answer = server.call(
        "POST", "/generate", {"prompt": "The film", "strategy": "sample", "temperature": 10, "seed": 3}
    )
    assert status == 200 and isinstance(answer["text"], str)
    assert "Traceback" not in _log(server)


@pytest.mark.parametrize(
    ("host", "status"),
    [("evil.example", 400), ("evil.example:{port}", 400), ("127.0.0.1.evil.example:{port}", 400),
     ("localhost.evil.example", 400), ("my.example", 400), ("localhost", 200), ("LOCALHOST:{port}", 200),
     ("127.0.0.1:{port}", 200), ("[::1]:{port}", 200), ("localhost.:{port}", 200)],
)  # fmt: skip
def test_the_host_header_must_name_this_machine(server: Server, host: str, status: int) -> None:
    """A page served from another name (DNS rebinding to 127.0.0.1) sends that name as Host."""
    headers = {"Host": host.format(port=server.port)}
    for method, path, body in (("GET", "/health", None), ("GET", "/", None), ("GET", "/info", None),
                               ("POST", "/search", {"query": "film", "k": 1})):  # fmt: skip
        answer = server.call(method, path, body, headers=headers)
        assert answer[0] == status, (path, answer)
        if status == 400:
            assert "--allowed_hosts" in answer[1]["error"]


def test_allowed_hosts_adds_names_and_info_paths_shows_the_paths(
    only: Server, server: Server, served_models: dict[str, Path]
) -> None:
    for host, status in (
        ("my.example", 200),
        ("MY.EXAMPLE:80", 200),
        ("10.1.2.3", 200),
        ("other.example", 400),
    ):
        assert only.call("GET", "/health", headers={"Host": host})[0] == status, host
    assert server.call("GET", "/health", headers={"Host": "my.example"})[0] == 400  # not given there
    info = only.call("GET", "/info")[1]["model"]
    assert info["classifier"][0]["path"] == str(served_models["classifier"])


def test_info_shows_fingerprints_and_sizes_but_no_paths(
    server: Server, served_models: dict[str, Path]
) -> None:
    status, info = server.call("GET", "/info")
    model = info["model"]
    assert status == 200 and model["backbone"]["signature"] and model["backbone"]["bytes"] > 0
    assert model["index"]["bytes"] > 0 and model["classifier"][0]["bytes"] > 0
    assert len(model["classifier"][0]["sha256"]) == 16
    text = json.dumps(info)
    assert '"path"' not in text and str(served_models["classifier"].parents[3]) not in text


def test_the_generated_api_docs_are_off(server: Server) -> None:
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        assert server.call("GET", path)[0] == 404, path
    assert server.call("GET", "/")[0] == 200


def test_the_server_listens_on_localhost_only_by_default(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5):
        pass
    outside = [a for a in _own_addresses() if not a.startswith("127.")]
    if not outside:
        pytest.skip("this machine has no address but loopback to try the server from")
    for address in outside:  # the machine's other addresses do not reach it
        with pytest.raises(OSError), socket.create_connection((address, server.port), timeout=2):
            pass


def _own_addresses() -> list[str]:
    """This machine's addresses: its hostname's, and the one it would route outward from (a UDP
    ``connect`` sends nothing)."""
    found = set()
    with contextlib.suppress(OSError):
        found |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe, contextlib.suppress(OSError):
        probe.connect(("10.255.255.255", 1))
        found.add(probe.getsockname()[0])
    return sorted(found)


def _chromium() -> str | None:
    """The OS's Chromium (browser downloads are not possible here: Playwright drives the system one)."""
    for path in ("/usr/bin/chromium", "/usr/lib/chromium/chromium", "/usr/bin/chromium-browser"):
        if Path(path).is_file():
            return path
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def page(server: Server):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[browser]' (Playwright)")
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium installed: apt-get install chromium (.ci/run does)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1000, "height": 900})
        outside: list[str] = []
        tab.on("request", lambda r: None if r.url.startswith(server.url) else outside.append(r.url))
        tab.goto(server.url + "/")
        tab.outside = outside
        yield tab
        browser.close()


def test_the_page_searches_and_shows_a_table(page, server: Server) -> None:
    page.fill("#query", "a good film")
    page.fill("#k", "4")
    page.click("#search-form button")
    page.wait_for_selector("#results tbody tr")
    rows = page.locator("#results tbody tr")
    assert rows.count() == 4
    assert page.locator("#results tbody tr td").first.inner_text() == "1"
    headers = page.locator("#results thead th").all_inner_texts()
    matched = rows.first.locator("td").nth(headers.index("matched")).inner_text()
    assert matched == "-" or set(matched.split(", ")) <= {"good", "film"}  # the query's words it holds
    assert page.outside == []  # everything the page loads comes from the server: it works offline


def test_the_page_shows_a_reviews_label_and_probability(page) -> None:
    page.fill("#review", "great fun, a wonderful film")
    page.click("#sentiment-form button")
    page.wait_for_function("document.getElementById('sentiment').textContent.includes('p(positive)')")
    text = page.inner_text("#sentiment")
    assert text.startswith(("positive", "negative")) and "p(positive) = " in text
    probability = float(text.split("= ")[1].rstrip(")"))
    assert 0 <= probability <= 1


def test_the_page_marks_the_words_that_drove_the_verdict(page, server: Server) -> None:
    review = "great fun, a wonderful film. Not dull at all"
    page.fill("#review", review)
    page.click("#sentiment-form button")
    page.wait_for_function(f"document.getElementById('explained').textContent === {json.dumps(review)}")
    assert page.locator("#explained mark").count() > 0
    marks = page.locator("#explained mark")
    shares = {m.inner_text(): float(m.get_attribute("data-share")) for m in marks.all()}
    answer = server.call("POST", "/sentiment", {"texts": [review], "explain": True})[1]["results"][0]
    assert shares == pytest.approx(dict(answer["words"]))  # every word the server scored, with its share
    assert not page.is_hidden("#explained-key")


def test_sentiment_explains_on_request_and_says_when_it_cannot(
    server: Server, served_models: dict[str, Path], tmp_path: Path
) -> None:
    status, info = server.call("GET", "/info")
    assert info["model"]["explains"] is True
    texts = ["great fun", "awful and dull"]
    status, answer = server.call("POST", "/sentiment", {"texts": texts, "explain": True})
    assert status == 200
    for text, result in zip(texts, answer["results"], strict=True):
        assert {word for word, _ in result["words"]} == set(text.split())
        shares = [abs(share) for _, share in result["words"]]
        assert shares == sorted(shares, reverse=True)  # largest first
    assert "words" not in server.call("POST", "/sentiment", {"texts": ["great fun"]})[1]["results"][0]
    # classifiers without word votes: words is null, and /info says so beforehand
    plain = classifier_checkpoint(served_models["backbone"], tmp_path / "plain.ckpt")
    config = ServeConfig(classifier=[str(plain)])
    api = SentimentAPI(config, api_path="/sentiment")
    api.load("cpu")
    asked = [SentimentRequest(texts=["good"], explain=True), SentimentRequest(texts=["bad"])]
    answers = api.predict_many(asked)
    assert answers[0]["results"][0]["words"] is None and "words" not in answers[1]["results"][0]
    assert _preflight(config).explains is False  # what GET /info reports as explains


def test_a_backward_backbone_serves_embeddings_but_not_generation(served_models, tmp_path: Path) -> None:
    """A backward LM would write text last word first: /generate and /v1/completions are not served
    (their 404 says why), /embed and /v1/embeddings are."""
    from dataclasses import replace

    from imdb_transformer.core.backbone import export_backbone, load_backbone
    from imdb_transformer.core.decoder import CausalDecoder
    from imdb_transformer.serve.app import WRITER, served

    forward = load_backbone(served_models["backbone"])
    backward = CausalDecoder(replace(forward.decoder.config, reverse=True))
    backward.load_state_dict(forward.decoder.state_dict())
    folder = export_backbone(backward, forward.tokenizer, tmp_path / "backward")
    assert served(ServeConfig(backbone=str(folder))) == ["/embed", "/v1/embeddings"]
    assert "/generate" in served(ServeConfig(backbone=str(served_models["backbone"])))
    assert "a backward one" in WRITER and "would write text last word first" in WRITER
    running = Server(["--backbone", str(folder)], tmp_path / "server.log")
    try:
        status, answer = running.call("POST", "/generate", {"prompt": "This movie"})
        assert status == 404 and "last word first" in answer["error"]
        assert running.call("POST", "/embed", {"texts": ["a film"]})[0] == 200
    finally:
        running.stop()


def test_the_page_reports_bad_input_and_generates(page, server: Server) -> None:
    page.fill("#query", "   ")
    page.click("#search-form button")
    page.wait_for_function("document.getElementById('search-error').textContent.length > 0")
    assert "empty" in page.inner_text("#search-error")
    page.fill("#prompt", "This movie")
    page.select_option("#strategy", "greedy")
    page.fill("#max_new_tokens", "8")
    page.click("#generate-form button")
    greedy = {"prompt": "This movie", "max_tokens": 8, "temperature": 0}
    expected = "This movie" + server.call("POST", "/v1/completions", greedy)[1]["choices"][0]["text"]
    page.wait_for_function(f"document.getElementById('generated').textContent === {json.dumps(expected)}")
    page.fill("#prompt", "   ")  # the server's reason is shown, as for the other boxes
    page.click("#generate-form button")
    page.wait_for_function("document.getElementById('generate-error').textContent.includes('empty')")
    page.fill("#query", "a good film")
    page.click("#search-form button")
    page.wait_for_function("document.getElementById('search-error').textContent === ''")
    if os.environ.get(
        "IMDB_SCREENSHOT"
    ):  # the README's picture: IMDB_SCREENSHOT=docs/page.png pytest -k page
        page.screenshot(path=os.environ["IMDB_SCREENSHOT"], full_page=True)


def test_a_wrong_path_stops_serve_with_one_line(tmp_path: Path) -> None:
    err = fails("serve", "--index", str(tmp_path / "nowhere"), "--port", str(free_port()))
    assert (
        err.strip().splitlines()[-1].startswith("error:") and "build one with `imdb-transformer embed`" in err
    )
    assert "nothing to serve" in fails("serve", "--port", str(free_port()))


@pytest.mark.parametrize(
    ("options", "message"),
    [({"port": 0}, "--port must be an integer in 1024..65535"),
     ({"port": 80}, "--port must be an integer in 1024..65535"),
     ({"port": 65536}, "--port must be an integer in 1024..65535"),
     ({"host": "nowhere.invalid"}, "--host must be 127.0.0.1 or localhost"),
     ({"host": "192.0.2.7"}, "--host must be 127.0.0.1 or localhost"),
     ({"max_batch_size": 0}, "--max_batch_size must be in 1..1024"),
     ({"max_batch_size": -3}, "--max_batch_size must be in 1..1024"),
     ({"batch_timeout": -0.5}, r"--batch_timeout must be a number of seconds in \[0, 10\]"),
     ({"batch_timeout": float("nan")}, r"--batch_timeout must be a number of seconds in \[0, 10\]"),
     ({"batch_timeout": float("inf")}, r"--batch_timeout must be a number of seconds in \[0, 10\]"),
     ({"allowed_hosts": "a.example,b c"}, "--allowed_hosts: 'b c' is not a host name")],
)  # fmt: skip
def test_out_of_range_serve_options_are_refused_naming_the_range(options: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        ServeConfig(backbone="unused", **options)


def test_serve_refuses_bad_options_and_a_busy_port_in_one_line_before_loading_anything(
    server: Server,
) -> None:
    refused = [
        (["--port", "0"], "--port must be an integer in 1024..65535 (got 0)"),
        (["--batch_timeout", ".nan"], "--batch_timeout must be a number of seconds"),
    ]
    for options, message in refused:
        err = fails("serve", "--backbone", "/nowhere", *options)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: " + message), err
    with pytest.raises(InputError, match=f"cannot listen on 127.0.0.1 port {server.port}"):
        run(ServeConfig(backbone="/nowhere", port=server.port))  # in use by the test server: refused first


def test_the_host_names_answered(tmp_path: Path) -> None:
    assert allowed_host_names("127.0.0.1") == {"localhost", "127.0.0.1", "::1"}
    assert allowed_host_names("0.0.0.0", ("Box.Example.", "[fe80::1]")) == {
        "localhost", "127.0.0.1", "::1", "box.example", "fe80::1"
    }  # fmt: skip
    assert allowed_host_names("::", ("*",)) is None  # no check
    assert ServeConfig(backbone="unused", allowed_hosts="a.example, 10.0.0.2").allowed_hosts == (
        "a.example", "10.0.0.2"
    )  # fmt: skip


def test_workers_split_the_cores_and_threads_can_be_set(
    served_models: dict[str, Path], server: Server
) -> None:
    from imdb_transformer.hardware import threads_per_worker
    from imdb_transformer.serve.app import worker_threads

    assert [threads_per_worker(w, cores=2) for w in (1, 2, 4)] == [2, 1, 1]  # split, at least one each
    assert [threads_per_worker(w, cores=16) for w in (1, 4, 5)] == [16, 4, 3]
    every = ServeConfig(backbone=str(served_models["backbone"]), index=str(served_models["index"]),
                        classifier=[str(served_models["classifier"])])  # fmt: skip
    assert worker_threads(every) == threads_per_worker(6)  # search, sentiment, embed, generate and /v1's two
    assert worker_threads(ServeConfig(classifier=["x.ckpt"], threads=3)) == 3
    with pytest.raises(InputError, match="--threads must be a whole number"):
        ServeConfig(classifier=["x.ckpt"], threads=0)
    assert server.call("GET", "/info")[1]["model"]["threads_per_worker"] == threads_per_worker(6)
    # a worker sets its threads as it starts, before it loads its model
    before, sigint = torch.get_num_threads(), signal.getsignal(signal.SIGINT)
    try:
        SentimentAPI(
            ServeConfig(classifier=[str(served_models["classifier"])], threads=1), api_path="/s"
        ).setup("cpu")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
        signal.signal(signal.SIGINT, sigint)  # setup leaves Ctrl-C to a server's main process


# --- OpenAI-compatible endpoints, called with the official openai client ----------------------------


@pytest.fixture(scope="module")
def client(server: Server):
    openai = pytest.importorskip("openai", reason="the OpenAI tests need the openai client (dev extra)")
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_lists_the_served_model(client, served_models: dict[str, Path]) -> None:
    from imdb_transformer.core.backbone import load_spec

    models = client.models.list().data
    assert [m.id for m in models] == [f"imdb-transformer-{load_spec(served_models['backbone']).signature}"]
    assert models[0].model_extra["embeddings"].startswith("dense, ")
    assert set(models[0].model_extra["endpoints"]) == {"/v1/completions", "/v1/embeddings"}


def test_completions_give_the_generate_endpoints_text(client, server: Server) -> None:
    model = client.models.list().data[0].id
    done = client.completions.create(model=model, prompt="This movie", max_tokens=12, temperature=0)
    expected = server.call(
        "POST", "/generate", {"prompt": "This movie", "strategy": "greedy", "max_new_tokens": 12}
    )[1]["text"]
    assert done.choices[0].text == expected and done.object == "text_completion"
    assert done.choices[0].finish_reason in ("length", "stop") and done.usage.completion_tokens <= 12
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    # the same text streamed, token by token, as server-sent events
    chunks = list(
        client.completions.create(model=model, prompt="This movie", max_tokens=12, temperature=0, stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert len(chunks) > 2 and chunks[-1].choices[0].finish_reason == done.choices[0].finish_reason
    # a seed repeats a sample; a stop sequence ends the text before it
    sampling = {
        "model": model,
        "prompt": "A film",
        "max_tokens": 20,
        "temperature": 1.0,
        "top_p": 0.9,
        "seed": 5,
    }
    sampled = [client.completions.create(**sampling).choices[0].text for _ in range(2)]
    assert sampled[0] == sampled[1]
    # vLLM's extension top_k (with top_p left at 1): k = 1 is greedy
    top_1 = client.completions.create(**{**sampling, "top_p": 1.0}, extra_body={"top_k": 1})
    assert (
        top_1.choices[0].text == client.completions.create(**{**sampling, "temperature": 0}).choices[0].text
    )
    word = expected.split()[1] if len(expected.split()) > 1 else expected.split()[0]
    stopped = client.completions.create(
        model=model, prompt="This movie", max_tokens=12, temperature=0, stop=[word]
    )
    assert stopped.choices[0].text == expected[: expected.index(word)]
    assert stopped.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model=model, prompt="This movie", max_tokens=12, temperature=0, stop=word, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == stopped.choices[0].text


def test_embeddings_are_the_embed_endpoints_vectors(client, server: Server) -> None:
    texts = ["a classic horror film", "great fun"]
    ours = server.call("POST", "/embed", {"texts": texts})[1]["vectors"]
    given = client.embeddings.create(model="any", input=texts)  # the client asks for base64 by default
    assert [e.index for e in given.data] == [0, 1]
    assert torch.allclose(torch.tensor([e.embedding for e in given.data]), torch.tensor(ours), atol=1e-6)
    one = client.embeddings.create(model="any", input="great fun", encoding_format="float")
    assert torch.allclose(torch.tensor(one.data[0].embedding), torch.tensor(ours[1]), atol=1e-6)
    assert one.usage.prompt_tokens > 0


def test_openai_requests_are_checked_alone(client) -> None:
    import openai

    bad = [
        {"prompt": "  "}, {"prompt": "film", "max_tokens": MAX_NEW_TOKENS + 1}, {"prompt": "film", "n": 2},
        {"prompt": "film", "temperature": 3}, {"prompt": ["a", "b"]}, {"prompt": "film", "stop": ["a"] * 5},
        {"prompt": "film", "extra_body_field": 1},
    ]  # fmt: skip
    for request in bad:
        extra = {k: request.pop(k) for k in list(request) if k == "extra_body_field"}
        with pytest.raises(openai.UnprocessableEntityError):
            client.completions.create(model="m", **request, extra_body=extra or None)
    with pytest.raises(openai.UnprocessableEntityError):
        client.embeddings.create(model="m", input=[])
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.completions.create(model="m", prompt="film", top_p=0.5, extra_body={"top_k": 5})
    assert "not both" in refused.value.response.text  # the reason, for the client to show
    # what some wrappers send at its neutral value is accepted; the server still answers
    neutral = {"presence_penalty": 0, "frequency_penalty": 0, "best_of": 1, "echo": False, "logprobs": None}
    assert (
        client.completions.create(model="m", prompt="film", max_tokens=2, **neutral).object
        == "text_completion"
    )


def test_a_sparse_embedder_is_refused_with_the_reason(pretrained_run: Path, adapter_run: Path) -> None:
    from fastapi import HTTPException

    from imdb_transformer.serve.app import OpenAIEmbeddingsAPI
    from imdb_transformer.serve.schemas import EmbeddingsRequest

    config = ServeConfig(backbone=str(pretrained_run / "backbone"), adapter=str(adapter_run / "adapter"))
    api = OpenAIEmbeddingsAPI(config, api_path="/v1/embeddings")
    api.load("cpu")
    assert api.embedder.sparse
    with pytest.raises(HTTPException, match="sparse adapter") as refused:
        api.predict_many([EmbeddingsRequest(input="good")])
    assert refused.value.status_code == 400


def test_completions_say_their_content_type(server: Server) -> None:
    import urllib.request

    for stream, kind in ((False, "application/json"), (True, "text/event-stream")):
        body = json.dumps({"prompt": "This movie", "max_tokens": 3, "stream": stream}).encode()
        request = urllib.request.Request(
            server.url + "/v1/completions", body, {"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            assert answer.headers["Content-Type"] == kind
            text = answer.read().decode()
        assert (
            text.endswith("data: [DONE]\n\n") if stream else json.loads(text)["object"] == "text_completion"
        )


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_sequence_split_across_pieces_is_held_back_and_cut(monkeypatch, stream: bool) -> None:
    """The text a stream sends never holds a stop sequence, even one spelled across several pieces, and
    adds up to the text before it."""
    import imdb_transformer.generation as generation
    from imdb_transformer.serve.app import CompletionsAPI
    from imdb_transformer.serve.schemas import CompletionRequest

    pieces = [("a", 1), ("b", 1), ("c", 1), ("d", 1), ("e", 1)]
    monkeypatch.setattr(generation, "stream_text", lambda *args, **options: (piece for piece in pieces))
    api = CompletionsAPI(ServeConfig(backbone="unused"), api_path="/v1/completions", stream=True)
    api.backbone = type(
        "Fake", (), {"tokenizer": type("T", (), {"encode": staticmethod(lambda t: [1, 2])})()}
    )()
    api.model_id = "m"
    out = list(api.predict(CompletionRequest(prompt="x", stop=["bcd", "zz"], stream=stream, max_tokens=9)))
    if stream:
        events = [json.loads(e[len("data: ") :]) for e in out if e != "data: [DONE]\n\n"]
        assert "".join(e["choices"][0]["text"] for e in events) == "a"
        assert [e["choices"][0]["finish_reason"] for e in events][-1] == "stop" and out[
            -1
        ] == "data: [DONE]\n\n"
    else:
        answer = json.loads(out[0])
        assert answer["choices"][0] == {"text": "a", "index": 0, "logprobs": None, "finish_reason": "stop"}
        assert answer["usage"]["completion_tokens"] == 4  # the pieces up to the one that ends the stop


@pytest.mark.slow  # two more servers with every model: minutes on 2 cores
def test_serve_load_compares_thread_settings(
    served_models: dict[str, Path], imdb_dir: Path, tmp_path: Path
) -> None:
    """``benchmarks/serve_load.py --compare threads``: two real servers (cores split among the workers
    against every worker on all cores), decoding alone and under load, each row measured."""
    import subprocess
    import sys

    m = served_models
    record = tmp_path / "serve_load.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/serve_load.py"), "--compare", "threads",
         "--index", str(m["index"]), "--classifier", str(m["classifier"]), "--backbone", str(m["backbone"]),
         "--source", str(imdb_dir), "--clients", "2", "--requests", "4", "--rounds", "1", "--tokens", "4",
         "--out", str(record)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    tables = json.loads(record.read_text())["tables"]
    rows = tables["threads"]["rows"]
    under_load = "decoding + 2 clients each on /search, /sentiment"
    loads = [("decoding alone", "/v1/completions")] + [
        (under_load, p) for p in ("/v1/completions", "/search", "/sentiment")
    ]
    assert [tuple(r[:3]) for r in rows] == [
        (*load, s) for load in loads for s in ("cores split", "all cores each")
    ]
    assert all(float(r[3].split()[0]) > 0 for r in rows)
    assert [r[1] for r in tables["threads gain"]["rows"]] == ["/v1/completions"] * 2 + [
        "/search",
        "/sentiment",
    ]


def test_serve_load_threads_needs_a_backbone(served_models: dict[str, Path]) -> None:
    import subprocess
    import sys

    m = served_models
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/serve_load.py"), "--compare", "threads",
         "--index", str(m["index"]), "--classifier", str(m["classifier"])],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "give --backbone" in result.stderr
