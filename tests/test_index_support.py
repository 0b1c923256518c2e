"""Helpers for the index and review tests (no tests here): many console-script runs in one process.

Each run of ``imdb-transformer`` spends seconds importing torch and Lightning. ``main_each`` pays that
once: a child Python runs :func:`imdb_transformer.cli.main` (what the console script calls) for each
argument list in turn, with stdout and stderr captured per run. A run that crashes the interpreter
(a segmentation fault) ends the child, and the test that asked fails naming that run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

_RUNNER = r"""
import contextlib, io, json, sys, traceback
from imdb_transformer.cli import main

results = []
for argv in json.loads(sys.argv[1]):
    print("RUNNING " + json.dumps(argv), flush=True)
    err, out = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit as exit:  # as the interpreter would report it: a message is printed, status 1
            code = exit.code if isinstance(exit.code, int) else 1
            if isinstance(exit.code, str):
                err.write(exit.code + "\n")
        except BaseException:
            err.write(traceback.format_exc())
            code = 1
    results.append({"argv": argv, "code": code, "stderr": err.getvalue(), "stdout": out.getvalue()})
print("RESULTS " + json.dumps(results), flush=True)
"""


def main_each(runs: list[list[str]], env: dict | None = None, cwd: str | None = None) -> list[dict]:
    """``imdb-transformer ARGV`` for each ARGV of ``runs``: their exit codes, stdout and stderr."""
    child = subprocess.run(
        [sys.executable, "-c", _RUNNER, json.dumps(runs)],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=600,
    )  # fmt: skip
    lines = child.stdout.splitlines()
    found = [line for line in lines if line.startswith("RESULTS ")]
    if child.returncode != 0 or not found:
        running = [line for line in lines if line.startswith("RUNNING ")]
        raise AssertionError(
            f"the runs' process ended with status {child.returncode} during "
            f"{running[-1] if running else 'start-up'}:\n{child.stderr[-3000:]}"
        )
    return json.loads(found[-1][len("RESULTS ") :])


def error_line(result: dict) -> str:
    """The one ``error:`` line a failed run printed, after checking it failed with exit status 1 and
    printed no traceback."""
    stderr = result["stderr"]
    assert result["code"] == 1, (result["argv"], result["code"], stderr[-2000:])
    assert "Traceback" not in stderr, (result["argv"], stderr[-2000:])
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, (result["argv"], stderr[-2000:])
    return errors[0]
