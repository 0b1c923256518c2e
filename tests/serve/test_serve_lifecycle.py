"""The server's processes start and end together (the real ``imdb-transformer serve``, a tiny backbone):
SIGTERM or SIGINT to the main process alone stops every process of it, and a worker that dies, killed
or failing to load its model, stops the server with one line naming its endpoint."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import SCRIPT

pytest.importorskip("litserve", reason="the server needs the serve extra: pip install -e '.[serve]'")
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")

from imdb_transformer.serve import ServerProcess, free_port  # noqa: E402


def _parents() -> dict[int, int]:
    """Every process's parent, from /proc/PID/stat (its name, in parentheses, may hold spaces)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # ended while being read
    return parents


def descendants(pid: int) -> set[int]:
    parents, found, frontier = _parents(), set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has ended: only its parent's wait is pending)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_until_gone(pids: set[int], seconds: float) -> set[int]:
    """The pids still running after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while (left := {p for p in pids if running(p)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except OSError:
        return True


def cleanup(process: subprocess.Popen, pids: set[int]) -> None:
    """Leave nothing behind when a test fails half-way."""
    for pid in [process.pid, *pids]:
        if running(pid):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=30)


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)], ids=["SIGTERM", "SIGINT"]
)
def test_a_signal_to_the_main_process_stops_every_process_of_the_server(
    pretrained_run: Path, tmp_path: Path, signum: int
) -> None:
    log = tmp_path / "server.log"
    server = ServerProcess(["--backbone", str(pretrained_run / "backbone")], log)
    main = server.process
    family = descendants(main.pid)  # LitServe's manager, 2 workers, the HTTP server, the resource tracker
    try:
        assert len(family) >= 4, family
        os.kill(main.pid, signum)  # as `kill PID` or a Ctrl-C delivered to this process alone
        assert wait_until_gone(family, 10) == set()
        assert main.wait(timeout=30) == 0
        assert refuses(server.port)
        text = log.read_text()
        assert f"Stopped ({signal.Signals(signum).name})" in text and "Traceback" not in text, text[-3000:]
    finally:
        cleanup(main, family)
        server.log.close()


def _worker_pid(log: Path, endpoint: str, seconds: float = 120) -> int:
    """The pid the server printed for ``endpoint``'s worker (``/generate: worker process PID``)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith(f"{endpoint}: worker process "):
                return int(line.split()[-1])
        time.sleep(0.05)
    raise AssertionError(f"no {endpoint} worker in the log: {log.read_text()[-3000:]}")


def test_a_killed_worker_stops_the_server_with_one_line_naming_its_endpoint(
    pretrained_run: Path, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    server = ServerProcess(["--backbone", str(pretrained_run / "backbone")], log)  # /embed and /generate
    main = server.process
    family = descendants(main.pid)
    try:
        worker = _worker_pid(log, "/generate")
        assert worker in family
        os.kill(worker, signal.SIGKILL)
        assert main.wait(timeout=30) != 0
        assert wait_until_gone(family, 10) == set()
        assert refuses(server.port)
        text = log.read_text()
        last = text.strip().splitlines()[-1]
        assert last.startswith("error: the /generate endpoint's worker") and "killed by SIGKILL" in last, text
        assert "Traceback" not in text, text[-3000:]
    finally:
        cleanup(main, family)
        server.log.close()


@pytest.mark.slow  # the same supervision as a killed worker, reached through a failing setup
def test_a_model_that_fails_to_load_in_its_worker_stops_the_server_with_one_line(
    pretrained_run: Path, tmp_path: Path
) -> None:
    """The backbone passes the main process's check, then is damaged before the workers read it."""
    backbone = shutil.copytree(pretrained_run / "backbone", tmp_path / "backbone")
    log = tmp_path / "server.log"
    port = free_port()
    with open(log, "w") as out:
        main = subprocess.Popen(
            [SCRIPT, "serve", "--backbone", str(backbone), "--port", str(port)], stdout=out, stderr=out
        )
    family: set[int] = set()
    try:
        _worker_pid(log, "/generate")  # the workers are starting (importing torch takes them seconds)
        for file in backbone.iterdir():
            file.write_bytes(b"")
        family = descendants(main.pid)
        try:
            code = main.wait(timeout=120)
        except subprocess.TimeoutExpired:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                pytest.skip("the workers had loaded the backbone before it could be damaged")
            raise
        assert code != 0
        text = log.read_text()
        last = text.strip().splitlines()[-1]
        assert last.startswith("error: the /") and "endpoint's worker" in last, text[-3000:]
        assert "could not load its model" in last and str(backbone) in last, last
        assert "Traceback" not in text, text[-3000:]
        assert wait_until_gone(family, 10) == set()
    finally:
        cleanup(main, family)
