"""Artifact files (caches, exports, indexes): named by a key of what built them, written under a
temporary name and moved into place when complete, and read back with an error that names the file
when they are damaged.

A run that is killed mid-write, or a second run writing the same cache at the same time,
never leaves a path that a later run would load as if it were whole.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


@contextmanager
def atomic_path(final: str | os.PathLike, is_dir: bool = False, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``final`` (an empty folder if ``is_dir``); move it to ``final``
    if the block succeeds. On error the temporary path is removed and ``final`` is untouched.

    A cache (``overwrite=False``) keeps a ``final`` folder that another process finished first: both
    were built from the same inputs. An export (``overwrite=True``) replaces it.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    target = tmp / "new" if is_dir else tmp / final.name
    if is_dir:
        target.mkdir()
    try:
        yield target
        if overwrite and final.is_dir():
            final.rename(tmp / "old")  # moved out of the way, deleted with tmp
        try:
            os.replace(target, final)
        except OSError:
            if not final.exists():  # a real failure, not a concurrent winner
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_artifact(path: Path, read: Callable[[Path], T], error: type[Exception], remedy: str) -> T:
    """``read(path)``, turning any failure (truncation, corruption, a wrong format) into ``error``
    with the file's name, what went wrong and ``remedy``."""
    try:
        return read(path)
    except Exception as err:
        detail = str(err).splitlines()[0] if str(err) else ""
        raise error(f"{path} cannot be read ({type(err).__name__}: {detail}); {remedy}") from err


def cache_key(*parts: object) -> str:
    """A short stable hash of the inputs and settings that determine a cached artifact."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(repr(part).encode())
        h.update(b"\0")
    return h.hexdigest()


def corpus_fingerprint(texts: Iterable[str]) -> str:
    """A hash of the exact texts a tokenizer or dataset is built from."""
    h = hashlib.blake2b(digest_size=16)
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()
