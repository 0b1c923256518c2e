"""Running the server as one unit of processes.

LitServe runs a manager process, one inference worker per endpoint and the HTTP server process. Here
SIGTERM or SIGINT to the main process stops all of them within seconds, and a worker that dies (killed,
or its model failing to load) stops them all with one line naming its endpoint and a non-zero exit.
"""

import dataclasses
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from imdb_transformer.errors import ImdbError, InputError
from imdb_transformer.hardware import usable_cores
from imdb_transformer.serve.app import ServeConfig, build_server, failure_report_name, served, worker_threads
from imdb_transformer.serve.hosts import HOSTS

GRACE_S = 3.0  # seconds the HTTP server gives open requests once told to stop


STOP_WITHIN_S = 10.0  # after which whatever of the server still runs is killed


WATCH_EVERY_S = 0.25  # how often the main process checks that its workers are alive


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
        print(
            f"Each endpoint's worker runs {worker_threads(config)} PyTorch thread(s) on {usable_cores()} "
            "usable core(s) (--threads to change)",
            flush=True,
        )
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
        report = self.failures / failure_report_name(path)
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
