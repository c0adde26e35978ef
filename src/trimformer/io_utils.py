"""Atomic writes: an interrupted write (an exception, or the process killed) leaves the previous file or folder
intact, and the next write to the same path removes what a killed writer left behind.

Every writer builds its output under a hidden temporary name next to the target, ``.<name>.<pid>.<random>.tmp``,
flushes it to disk and renames it over the target in one step (folders: an atomic exchange where the OS has
one). A temporary whose process is gone is removed by the next write to that target.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporaries that killed writers left next to ``path`` (their process is gone); returns them.

    A folder swap killed half-way (the old folder moved aside, the new one not yet in place) is undone first:
    the previous folder goes back to ``path``."""
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return []
    removed = []
    old = parent / f".{path.name}.old"
    if old.exists() and not path.exists():
        os.replace(old, path)  # the previous version comes back
    for tmp in [*parent.glob(f".{glob_escape(path.name)}.*.tmp"), *([old] if old.exists() else [])]:
        parts = tmp.name[len(path.name) + 2:].split(".")  # [pid, random, "tmp"]
        if tmp != old and (len(parts) != 3 or not parts[0].isdigit() or _pid_alive(int(parts[0]))):
            continue
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def glob_escape(name: str) -> str:
    """``name`` with the glob metacharacters quoted."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prepare(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path)
    return path


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text to ``path`` through a temporary file in the same folder and os.replace."""
    atomic_save_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def atomic_save_file(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then move the temporary file over ``path``."""
    path = _prepare(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        _fsync_path(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def atomic_write_dir(path: str | Path, write: Callable[[Path], None]) -> None:
    """Build a folder with ``write(tmp_dir)`` next to ``path``, then swap it in.

    The old folder is exchanged with the new one only once the new one is complete (on disk), and removed after
    the swap; where the OS has no atomic exchange, the old folder is moved aside for the instant of two renames
    (and put back by the next write if the process dies in between).
    """
    path = _prepare(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        write(tmp)
        for file in tmp.rglob("*"):
            if file.is_file():
                _fsync_path(file)
        _fsync_path(tmp)
        if path.exists() and _exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous folder
            return
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class OutputPathError(ValueError):
    """An output path that would replace something trimformer did not write."""


def check_report_path(path: str | Path) -> Path:
    """``path`` if a JSON report may be written there: a new path, or a JSON file (a previous report). A folder, or
    a file that is not JSON (a data file given by mistake), is refused and left as it is."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{path} is a folder; give the report's file name (e.g. {path / 'results.json'})")
    if path.exists() or path.is_symlink():
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise OutputPathError(f"{path} exists and is not a JSON report: trimformer never replaces it; choose "
                                  "another file name, or move it away yourself") from None
    return path


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
