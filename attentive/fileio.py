"""Atomic file writes: temp file in the same directory, fsync, rename, fsync of the directory. A crash leaves
either the old file or the new one, never a torn one; a directory (`atomic_directory`) is complete or absent.
Shared by checkpoints, exports, predictors, data preparation and benches. Reading a JSON or torch file that is
missing or unreadable raises `BadFileError` naming the file."""
from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, IO, Iterator

import torch


class BadFileError(ValueError):
    """A file that cannot be used as what it claims to be: missing, truncated, foreign (another format, space or
    version) or tampered. The message names the file and why; every CLI turns it into exit status 2."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(directory: str | Path) -> None:
    """Make a rename or a file creation in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(f)` on a binary temp file beside `path`, then move it into place atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes it private; outputs get the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def json_safe(obj: Any) -> Any:
    """Non-finite floats (an undefined metric, e.g. Kendall tau of constant values) -> None, in nested dicts and
    lists, so that the object is strict JSON (null)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def gunzip_atomic(source: str | Path, target: str | Path) -> None:
    """Decompress gzip file `source` to `target` atomically (a concurrent or killed run never sees a partial
    file)."""
    def copy(out: IO[bytes]) -> None:
        with gzip.open(source, "rb") as src:
            shutil.copyfileobj(src, out)

    write_atomic(target, copy)


def check_output_dir(path: str | Path, force: bool) -> Path:
    """Refuse an existing output (file or directory) unless `force`; a file is never replaced by a directory."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not force:
            raise FileExistsError(f"output {path} already exists; pass --force (force=True) to replace it")
        if not path.is_dir() or path.is_symlink():
            raise FileExistsError(f"output {path} exists and is not a directory; refusing to replace it")
    return path


@contextlib.contextmanager
def atomic_directory(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to `path`; on success it replaces `path` (only with `force` if `path`
    exists), on error it is removed and `path` is untouched."""
    path = check_output_dir(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~umask())
        yield tmp
        check_output_dir(path, force)  # something may have appeared meanwhile
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / path.name)  # move the old output aside, then swap the new one in
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---- reading, with the file named in every error ---------------------------------------------------------------
def read_json_file(path: str | Path, what: str = "JSON file") -> Any:
    """The JSON in `path`; `BadFileError` naming the file when it is missing, unreadable or not JSON (NaN and
    infinities are refused: the writers here never produce them)."""
    path = Path(path)
    if not path.is_file():
        raise BadFileError(path, f"no such {what}")
    try:
        return json.loads(path.read_bytes(), parse_constant=_refuse_constant)
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadFileError(path, f"not a readable {what} (truncated, or not JSON): {_first_line(e)}") from None


def check_format(data: Any, where: str | Path, expected: str, version: int, what: str) -> dict:
    """`data` (a file's parsed header) as a dict whose "format" is `expected` and "format_version" is `version`;
    else `BadFileError` naming `where`: "not <what>" for a foreign file, the version found for another version.
    `what` is the noun with its article ("a latency table"); the version message drops the article."""
    if not isinstance(data, dict) or data.get("format") != expected:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise BadFileError(where, f"not {what} (format {found!r}, expected {expected!r})")
    if data.get("format_version") != version:
        noun = what.split(" ", 1)[1] if what.split(" ", 1)[0] in ("a", "an") else what
        raise BadFileError(where, f"{noun} format version {data.get('format_version')!r}; this code reads "
                                  f"version {version}")
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not strict JSON")


def load_torch_file(path: str | Path, map_location: Any = "cpu", what: str = "torch file") -> Any:
    """`torch.load(path, weights_only=True)`; `BadFileError` naming the file when it is missing, truncated or
    torn, not a torch file, or holds code objects (which weights_only refuses)."""
    path = Path(path)
    if not path.is_file():
        raise BadFileError(path, f"no such {what}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # zip, pickle and weights_only errors alike: the file is not a readable torch file
        raise BadFileError(path, f"not a readable {what} (truncated, torn, or not written by attentive): "
                                 f"{type(e).__name__}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""
