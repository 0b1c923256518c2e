"""Artifact files (caches, exports, indexes, checkpoints): named by a key of what built them, written
under a temporary name beside their final place and moved there when complete, and read back with an
error that names the file when they are damaged.

The guarantees, whatever the filesystem and whenever the process dies (a full disk, ``kill -9``):

- a path that a later run would load is either the previous complete version or the new complete
  one, never a part of either: the new one is written in a hidden folder beside it (so on the same
  filesystem), flushed to disk, and moved in with one ``rename``;
- a folder that is replaced (an index, an export) is swapped with its new version in one atomic
  exchange (``renameat2(RENAME_EXCHANGE)`` on Linux); where the system has no exchange, the old version
  is moved aside first and put back by the next writer if the process died between the two renames;
- a hidden temporary folder left by a killed writer is removed by the next write to the same path.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import tempfile
import types
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")
_TMP_SUFFIX = ".tmp"


@contextmanager
def atomic_path(final: str | os.PathLike, is_dir: bool = False, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``final`` (an empty folder if ``is_dir``); move it to ``final``
    if the block succeeds. On error the temporary path is removed and ``final`` is untouched.

    A cache (``overwrite=False``) keeps a ``final`` folder that another process finished first: both
    were built from the same inputs. An export (``overwrite=True``) replaces it.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if is_dir and final.exists() and not final.is_dir():
        raise FileExistsError(errno.EEXIST, "a file is in the way of a folder to be written", str(final))
    sweep_stale(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=_TMP_SUFFIX, dir=final.parent))
    target = tmp / "new" if is_dir else tmp / final.name
    if is_dir:
        target.mkdir()
    try:
        try:
            yield target
        except OSError as err:  # name the file being written, not its hidden temporary path
            if err.errno is not None and (err.filename is None or str(tmp) in str(err.filename)):
                raise OSError(err.errno, err.strerror, str(final)) from err
            raise
        _flush(target)
        if is_dir and overwrite and final.is_dir():
            _swap(target, final, tmp / "old")
        else:
            try:
                os.replace(target, final)
            except OSError:
                if not (is_dir and final.is_dir()):  # a real failure, not a concurrent winner
                    raise
        _flush_folder(final.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sweep_stale(final: Path) -> None:
    """Remove the temporary folders that writers of ``final`` killed mid-write left beside it; if one
    died between moving the old version aside and moving the new one in, put the old one back."""
    prefix = f".{final.name}."
    for stale in final.parent.glob(f"{glob_escape(prefix)}*{_TMP_SUFFIX}"):
        pid = stale.name[len(prefix) :].split(".", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        old = stale / "old"
        if old.is_dir() and not final.exists():
            os.replace(old, final)
        shutil.rmtree(stale, ignore_errors=True)


def glob_escape(text: str) -> str:
    """``text`` with glob's special characters taken literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _swap(new: Path, final: Path, aside: Path) -> None:
    """Put folder ``new`` at ``final`` and the folder that was there at ``new``'s place (or at
    ``aside`` where the system cannot exchange two paths atomically)."""
    if _exchange(new, final):
        return
    final.rename(aside)  # a kill here is repaired by the next writer's sweep_stale
    os.replace(new, final)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False where the
    system or the filesystem cannot."""
    rename = getattr(_libc(), "renameat2", None)
    if rename is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if rename(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _flush(path: Path) -> None:
    """Write ``path`` (a file, or every file in a folder) through to the disk before it is moved into
    place, so a crash of the machine cannot leave a renamed but empty file."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        with open(file, "rb") as f:
            os.fsync(f.fileno())


def _flush_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot sync a folder; the rename itself is already atomic
    finally:
        os.close(fd)


def read_artifact(path: Path, read: Callable[[Path], T], error: type[Exception], remedy: str) -> T:
    """``read(path)``, turning any failure (truncation, corruption, a wrong format) into ``error``
    with the file's name, what went wrong and ``remedy``."""
    try:
        return read(path)
    except Exception as err:
        detail = str(err).splitlines()[0] if str(err) else ""
        if "weights_only" in detail:  # torch's advice to unpickle code: never taken here
            detail = "it holds objects other than tensors and plain values"
        raise error(f"{path} cannot be read ({type(err).__name__}: {detail[:300]}); {remedy}") from err


def read_folder_record(
    folder: Path,
    files: Iterable[str],
    record: str,
    *,
    error: type[Exception],
    kind: str,
    fix: str,
    remedy: str,
) -> dict[str, Any]:
    """The JSON object in ``folder / record``, after checking that ``folder`` holds every one of
    ``files``. A missing folder or file, or a file given as ``folder``, is ``error`` saying what
    ``folder`` should be (``kind``) and ``fix``; an unreadable record, or one that is not a JSON
    object, is ``error`` naming it and ``remedy``. Exports, adapters and indexes (a folder of files
    and its JSON record) all open so."""
    if folder.is_file():
        raise error(f"{folder} is a file, not {kind}; {fix}")
    if not folder.is_dir():
        raise error(f"{kind} {str(folder)!r} not found; {fix}")
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        raise error(f"{folder} is not {kind}: {', '.join(missing)} missing; {fix}")
    meta = read_artifact(folder / record, lambda p: json.loads(p.read_text()), error, remedy)
    if not isinstance(meta, dict):
        raise error(f"{folder / record} holds a {type(meta).__name__}, not an object; {remedy}")
    return meta


def typed_record(cls: type[T], data: Any, where: str, error: type[Exception], required: Iterable[str]) -> T:
    """Build the dataclass ``cls`` from the JSON-like ``data`` after checking it field by field: an
    object, the ``required`` fields present, each field of its declared type (int, float, bool, str,
    a ``Literal`` or ``None`` where allowed; numbers finite), unknown fields ignored. Anything else is
    ``error`` naming ``where`` and the field, so a damaged or crafted record never reaches a
    constructor or an allocation."""
    if not is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    if not isinstance(data, dict):
        raise error(f"{where}: expected an object of fields, found {type(data).__name__}")
    hints = get_type_hints(cls)
    values = {}
    for f in fields(cls):
        if f.name not in data:
            if f.name in required or (f.default is MISSING and f.default_factory is MISSING):
                raise error(f"{where}: the field {f.name!r} is missing")
            continue
        value = data[f.name]
        if not _is_a(value, hints[f.name]):
            raise error(f"{where}: the field {f.name!r} is {value!r:.60}, expected {_name(hints[f.name])}")
        values[f.name] = float(value) if _is_float(hints[f.name]) and isinstance(value, int) else value
    try:
        return cls(**values)
    except (ValueError, TypeError) as err:  # the dataclass's own checks of ranges and combinations
        raise error(f"{where}: {err}") from None


def _is_a(value: Any, kind: Any) -> bool:
    origin = get_origin(kind)
    if origin is Literal:
        return any(value == option and type(value) is type(option) for option in get_args(kind))
    if origin in (Union, types.UnionType):
        return any(_is_a(value, option) for option in get_args(kind))
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value)
    if kind is str:
        return isinstance(value, str)
    return isinstance(value, kind) if isinstance(kind, type) else False


def _finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))


def _is_float(kind: Any) -> bool:
    return kind is float or (get_origin(kind) is not None and float in get_args(kind))


def _name(kind: Any) -> str:
    if get_origin(kind) is Literal:
        return "one of " + ", ".join(repr(o) for o in get_args(kind))
    if get_origin(kind) is not None:
        return " or ".join(_name(k) for k in get_args(kind))
    return (
        "null"
        if kind is type(None)
        else ("a finite number" if kind is float else getattr(kind, "__name__", str(kind)))
    )


def check_shapes(
    expected: dict[str, tuple[int, ...]],
    found: dict[str, tuple[int, ...]],
    where: str,
    error: type[Exception],
    remedy: str,
) -> None:
    """Refuse weights whose tensor names or shapes are not those of the model their record
    describes, naming the first difference."""
    missing = sorted(expected.keys() - found.keys())
    extra = sorted(found.keys() - expected.keys())
    if missing or extra:
        what = f"lacks {missing[0]!r}" if missing else f"has an unexpected tensor {extra[0]!r}"
        raise error(f"{where} {what} ({len(missing)} missing, {len(extra)} unexpected); {remedy}")
    for name, shape in expected.items():
        if tuple(found[name]) != tuple(shape):
            raise error(
                f"{where}: {name} has shape {tuple(found[name])}, but its record describes {tuple(shape)}; "
                f"{remedy}"
            )


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in a safetensors file, read from its header alone (nothing is
    allocated, whatever sizes the header claims)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118


def cache_key(*parts: object) -> str:
    """A short stable hash of the inputs and settings that determine a cached artifact."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(repr(part).encode())
        h.update(b"\0")
    return h.hexdigest()


def weights_fingerprint(*states: dict) -> str:
    """The one fingerprint of weights: a hash of every tensor's name and bytes in the ``state_dict``s
    given, in name order. What an adapter, an index or a classifier records of the weights it was
    built on, and checks again when loaded."""
    import torch  # here, not at the top: the writers above are used (and tested) without torch loaded

    h = hashlib.sha256()
    for state in states:
        for name, tensor in sorted(state.items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def corpus_fingerprint(texts: Iterable[str]) -> str:
    """A hash of the exact texts a tokenizer or dataset is built from."""
    h = hashlib.blake2b(digest_size=16)
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()
