"""The README's quick start runs: each of its shell commands through the real console script, on the suite's
tiny synthetic IMDB folder instead of the real data, writing under tmp_path, with fewer steps. So the README
cannot drift from the code. Commands run in as few processes as their inputs allow (``main_each``: a
command that reads what an earlier one writes waits for it), since each process spends seconds on imports."""

from __future__ import annotations

import glob
import json
import re
import shlex
from pathlib import Path

import pyarrow.parquet as pq
from helpers import REPO, main_each

from imdb_transformer.serve import ServerProcess

DATA = "../shared/data/imdb"  # the README's local copy of the IMDB parquet files

# what the synthetic data needs (a small vocabulary), and caps for speed, appended to each kind of command
PRETRAIN = ["--data.vocab_size", "400", "--trainer.max_steps", "20"]
CLASSIFY = ["--trainer.max_epochs", "2"]
ADAPTER = ["--data.val_fraction", "0.1", "--trainer.max_steps", "10"]
QUIET = ["--trainer.enable_progress_bar", "false"]


def quick_start() -> list[list[str]]:
    """The shell commands of the README's Quick start section (its ```bash blocks), one argv each."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                commands.append(argv)
    return commands


def localised(argv: list[str], imdb_dir: Path, cache_dir: Path, root: Path) -> list[str]:
    """``argv`` (without the program name) on the synthetic data: the data folder replaced, configs from the
    repository, ``runs/...`` under ``root``, globs expanded, caps and the session's cache added."""
    out = []
    for arg in argv[1:]:
        if arg == DATA:
            arg = str(imdb_dir)
        elif arg.startswith("configs/"):
            arg = str(REPO / arg)
        elif arg.startswith("runs/"):
            arg = str(root / arg)
        if "*" in arg:
            found = glob.glob(arg)
            if not found:
                raise FileNotFoundError(arg)  # written by an earlier command that has not run yet
            assert len(found) == 1, f"{arg} matches {found}"
            arg = found[0]
        out.append(arg)
    verb = out[0]
    configs = [Path(out[i + 1]).name for i, arg in enumerate(out) if arg == "--config"]
    if verb in ("fit", "test"):
        out += ["--data.cache_dir", str(cache_dir), *QUIET]
    if "tiny.yaml" in configs:
        out += PRETRAIN
    elif "classify.yaml" in configs and verb == "fit":
        out += CLASSIFY
    elif "embed.yaml" in configs:
        out += ADAPTER
    if "--like" in out:  # a review key of the real data; name the first synthetic test review instead
        first = pq.read_table(imdb_dir / "test.parquet").slice(0, 1).to_pylist()[0]
        out[out.index("--like") + 1] = f"test/{('neg', 'pos')[first['label']]}/{first['id']}"
    return out


def curl(server: ServerProcess, argv: list[str]) -> tuple[str, int, object]:
    """Send what ``curl -s URL [-H ...] [-d BODY]`` sends, to ``server``; the path, status and answer."""
    url = next(arg for arg in argv[1:] if "localhost:" in arg or "127.0.0.1:" in arg)
    path = "/" + url.split("/", 1)[1] if "/" in url else "/"
    body = json.loads(argv[argv.index("-d") + 1]) if "-d" in argv else None
    status, answer = server.call("POST" if body is not None else "GET", path, body)
    return path, status, answer


def test_quick_start_runs_on_tiny_data(imdb_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    commands = quick_start()
    verbs = [argv[1] for argv in commands if argv[0] == "imdb-transformer"]
    assert {"fit", "test", "classify", "embed", "search", "generate", "serve"} <= set(verbs), verbs
    assert all(argv[0] in ("imdb-transformer", "curl") for argv in commands), commands
    pending: list[list[str]] = []

    def run_pending() -> None:
        for result in main_each(pending) if pending else []:
            args, out = result["argv"], result["stdout"]
            assert result["code"] == 0, (args, out[-2000:], result["stderr"][-4000:])
            if args[0] == "search":
                assert "review key" in out, out
            if args[0] == "classify":
                assert out.count("\n") >= 3, out  # a header and a line per text
        pending.clear()

    server = None
    try:
        for argv in commands:
            if argv[0] == "curl":
                assert server is not None, "a curl line before serve"
                path, status, answer = curl(server, argv)
                assert status == 200, (path, answer)
                continue
            try:
                args = localised(argv, imdb_dir, cache_dir, tmp_path)
            except FileNotFoundError:  # it reads what the pending commands write
                run_pending()
                args = localised(argv, imdb_dir, cache_dir, tmp_path)
            if args[0] != "serve":
                pending.append(args)
                continue
            run_pending()
            port = args.index("--port")
            del args[port : port + 2]  # ServerProcess picks a free port
            server = ServerProcess(args[1:], tmp_path / "serve.log")
        run_pending()
    finally:
        if server is not None:
            server.stop()
    assert server is not None, "the quick start serves"
