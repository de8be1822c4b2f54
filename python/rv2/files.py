"""Crash-safe file writes and JSON of numpy values: one implementation each.

A write goes to a temporary file beside its target, is flushed and fsynced,
renamed over the target, and the folder is fsynced, so that after a crash the
target holds either the old or the new content, never half of either.
Temporaries are named `.<name>.tmp-<pid>`, which `clean_temporaries` removes.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator

from rv2.errors import RV2Error, UserError

TMP_MARK = ".tmp-"
# errno values that mean "no room left" (a full disk, a full quota).
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(RV2Error):
    """A write that found no space left; `path` is what was being written. What was
    written before stays consistent (every write is atomic), so freeing space and
    rerunning resumes."""

    exit_code = 1

    def __init__(self, message: str, path: str | os.PathLike):
        super().__init__(message)
        self.path = Path(path)


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


def check_writable(folder: str | os.PathLike, what: str = "--out") -> Path:
    """Create `folder` (and parents) and a probe file in it: a UserError naming the
    folder when it cannot be written (read-only file system, permissions, a file in
    the way), before any slow work starts."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-check{TMP_MARK}{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"\0")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if exc.errno in NO_SPACE:
            reason = "disk full"
        raise UserError(f"{what} {folder} cannot be written ({reason}); choose a writable "
                        "folder") from exc
    return folder


def tmp_path_for(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder so that a rename inside it survives a power loss (no-op where
    folders cannot be opened, as on Windows)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write `path` through (for writers that take a path:
    Parquet, safetensors, PNG); on success it is fsynced and renamed into place, on
    failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        yield tmp
        fd = os.open(str(tmp), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if is_disk_full(exc):
            raise DiskFullError(f"disk full while writing {path}", path) from exc
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def clean_temporaries(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Remove temporaries left by a killed writer (`.name.tmp-PID`); returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob(f".*{TMP_MARK}*") if recursive else folder.glob(f".*{TMP_MARK}*")
    removed = []
    for p in found:
        if p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def json_default(o: Any) -> Any:
    """`json.dumps(default=...)` for numpy scalars and arrays, paths, dates and pandas NA."""
    import numpy as np

    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (_dt.datetime, _dt.date)):
        return o.isoformat()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if o.__class__.__name__ in ("NAType", "NaTType"):
        return None
    return str(o)


def plain(o: Any, nan_to_none: bool = False) -> Any:
    """`o` with numpy scalars as Python ones (recursively through dicts, lists and
    tuples; dict keys as strings) and pandas NA as None; with `nan_to_none`, NaN and
    inf become None too (strict JSON for non-Python readers)."""
    import numpy as np

    if isinstance(o, dict):
        return {str(k): plain(v, nan_to_none) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [plain(v, nan_to_none) for v in o]
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return None if nan_to_none and not math.isfinite(f) else f
    if o.__class__.__name__ in ("NAType", "NaTType"):
        return None
    return o


def dumps(obj: Any, **kw) -> str:
    """JSON text of `obj` with `json_default` (NaN stays NaN, as Python's json writes it)."""
    return json.dumps(obj, default=json_default, **kw)


__all__ = ["DiskFullError", "is_disk_full", "check_writable", "atomic_path", "atomic_write_bytes",
           "atomic_write_text", "clean_temporaries", "fsync_dir", "tmp_path_for", "json_default",
           "dumps", "plain"]
