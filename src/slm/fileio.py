"""Atomic file writes and versioned JSON (stdlib only).

Every file slm writes goes through here: written to a temporary name in the same folder,
flushed to disk, then renamed over the target, so a crash or Ctrl-C never leaves a
half-written file that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from slm.errors import SLMError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it over `target` if the block succeeds.

    Use this for writers that want a path (safetensors, torch.save, matplotlib).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600), and some writers keep that mode; give the
        # result the mode a plain open() would have.
        os.chmod(tmp_path, 0o666 & ~_umask())
        _fsync_file(tmp_path)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write(
    target: str | os.PathLike, write: Callable[[IO[Any]], None], binary: bool = False
) -> None:
    """Open a temporary file beside `target`, let `write` fill it, then rename it into place."""
    with atomic_path(target) as tmp:
        mode = "wb" if binary else "w"
        kwargs = {} if binary else {"encoding": "utf-8", "newline": ""}
        with open(tmp, mode, **kwargs) as f:
            write(f)


def write_text(target: str | os.PathLike, text: str) -> None:
    atomic_write(target, lambda f: f.write(text))


def write_json(target: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically, pretty-printed so a person can read and diff it."""
    write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read JSON, turning a missing or corrupt file into one clear `SLMError`."""
    path = Path(path)
    if not path.is_file():
        raise SLMError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SLMError(f"{what} is corrupt: {path} ({exc})") from exc


def check_format_version(obj: dict, supported: int, path: str | os.PathLike, what: str) -> None:
    """Refuse files written by a newer slm instead of misreading them."""
    version = obj.get("format_version")
    if not isinstance(version, int):
        raise SLMError(f"{what} has no format_version: {path}")
    if version > supported:
        raise SLMError(
            f"{what} {path} has format version {version}; this slm reads up to {supported}",
            hint="upgrade slm: pip install -U slm",
        )
