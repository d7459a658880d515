"""Crash-safe file replacement: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported on this platform (Windows): the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def backup_path(path: Path) -> Path:
    """Where the previous version is kept; the extension keeps it out of ComfyUI's model lists."""
    return path.with_name(path.name + ".bak")


def atomic_write_bytes(path: Path, data: bytes, keep_previous: bool = True) -> None:
    """Write to a temporary file beside `path`, flush and fsync it, then rename it over `path`.

    If `path` exists and `keep_previous` is set, it is first copied to `<path>.bak` (also atomically).
    On any failure the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous and path.exists():
            bak_tmp = path.with_name(f".{path.name}.{os.getpid()}.bak.tmp")
            try:
                shutil.copy2(path, bak_tmp)
                os.replace(bak_tmp, backup_path(path))
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(bak_tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
