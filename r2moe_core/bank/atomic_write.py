"""Crash-safe file replacement: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import R2MoEError

STALE_AFTER_S = 3600.0  # a temporary file this old is a leftover whatever wrote it (a save takes seconds)
DEAD_WRITER_GRACE_S = 60.0  # a younger one is removed only when its writer is gone from this machine
LOCK_WAIT_S = 30.0  # how long a save waits for another process's save of the same file (that takes under 1 s)
LOCK_STALE_S = 120.0  # a lock this old was left by a killed save, whichever machine took it
# A save names itself in its lock right after creating it; an empty lock this old lost its writer in between
# (killed after the create, before the write), on whichever machine.
EMPTY_LOCK_STALE_S = 5.0


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


def backup_path(path: Path, age: int = 1) -> Path:
    """Where the previous version number `age` is kept (1 = the newest: `<name>.bak`, then `<name>.bak2`, ...);
    the extension keeps them out of ComfyUI's model lists."""
    return path.with_name(path.name + (".bak" if age == 1 else f".bak{age}"))


def kept_versions(path: Path) -> list[tuple[int, Path]]:
    """The previous versions of `path` on disk, newest first, as (age, file)."""
    pattern = re.compile(rf"^{re.escape(path.name)}\.bak(\d*)$")
    found = []
    for candidate in path.parent.glob(f"{glob.escape(path.name)}.bak*"):
        match = pattern.match(candidate.name)
        if match is not None and match.group(1) != "1" and not match.group(1).startswith("0"):
            found.append((int(match.group(1) or 1), candidate))
    return sorted(found)


def _renumber_versions(path: Path, keep_versions: int) -> None:
    """Make room for a new `.bak`: the kept versions, newest first, become `.bak2`, `.bak3`, ... in order, and
    those past `keep_versions` are dropped. A save killed between two renames leaves a gap in the numbers (say
    `.bak2` and `.bak3` but no `.bak`); renumbering by rank instead of by age closes it on the next save."""
    found = kept_versions(path)
    for _age, old in found[max(keep_versions - 1, 0):]:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
    found = found[: max(keep_versions - 1, 0)]
    moves = [(old, age, rank + 2) for rank, (age, old) in enumerate(found)]
    # Those moving down (after a gap) go first, newest first; then those moving up by one, oldest first: each
    # rename's target is then free, so no version overwrites another.
    for old, _age, target in [m for m in moves if m[2] < m[1]] + [m for m in reversed(moves) if m[2] > m[1]]:
        os.replace(old, backup_path(path, target))


def _keep_current_as_version(path: Path, keep_versions: int) -> None:
    """Renumber the kept versions, then copy `path` to `.bak`. Each step is one atomic rename, so a crash in
    between loses at most the oldest version and never the file itself."""
    _renumber_versions(path, keep_versions)
    bak_tmp = path.with_name(f".{path.name}.{os.getpid()}.bak.tmp")
    try:
        shutil.copy2(path, bak_tmp)
        os.replace(bak_tmp, backup_path(path))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(bak_tmp)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists (another user's), or this platform cannot tell: keep its file
    return True


def sweep_stale_temporaries(path: Path) -> list[Path]:
    """Remove what killed saves of `path` left behind (`.<name>.<pid>.tmp`, `.<name>.<pid>.bak.tmp`): files of a
    writer that is gone from this machine, or older than an hour. A live writer's file is never touched, so two
    processes saving at once (or two machines on a network folder) do not break each other's save."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)(\.bak)?\.tmp$")
    removed, now = [], time.time()
    for candidate in path.parent.glob(f".{path.name}.*.tmp"):
        match = pattern.match(candidate.name)
        if match is None or int(match.group(1)) == os.getpid():
            continue
        try:
            age = now - candidate.stat().st_mtime
        except FileNotFoundError:
            continue
        if age > STALE_AFTER_S or (age > DEAD_WRITER_GRACE_S and not _process_alive(int(match.group(1)))):
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()
                removed.append(candidate)
    return removed


def _lock_is_stale(lock: Path) -> bool:
    """A lock whose holder is gone from this machine, or that is older than any save takes."""
    try:
        age = time.time() - lock.stat().st_mtime
        holder = lock.read_text().split()
    except (FileNotFoundError, UnicodeDecodeError):
        return False  # released meanwhile (or being written): look again
    if age > LOCK_STALE_S or (not holder and age > EMPTY_LOCK_STALE_S):
        return True
    if len(holder) == 2 and holder[0] == socket.gethostname() and holder[1].isdigit():
        return age > 1.0 and not _process_alive(int(holder[1]))
    return False


@contextlib.contextmanager
def replace_lock(path: Path) -> Iterator[None]:
    """Hold `.<name>.lock` beside `path` while the previous version is kept and the new file renamed in.

    Two processes (two ComfyUI instances, or two machines on a network folder) saving the same name then take
    turns: the second keeps the first one's file as the previous version instead of both keeping the older one
    and one write being lost. O_EXCL creation is atomic on local disks and on NFS v3+ and SMB."""
    lock = path.with_name(f".{path.name}.lock")
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            if _lock_is_stale(lock):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock)
                continue
            if time.monotonic() > deadline:
                raise R2MoEError(
                    f"Another process has been saving {path.name} for over {LOCK_WAIT_S:.0f} s (lock file {lock}). "
                    "Wait for it and save again; if no other ComfyUI uses this folder, delete the lock file."
                ) from None
            time.sleep(0.01)
    try:
        os.write(fd, f"{socket.gethostname()} {os.getpid()}".encode())
        os.close(fd)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)


def atomic_write_bytes(path: Path, data: bytes, keep_versions: int = 1) -> None:
    """Write to a temporary file beside `path`, flush and fsync it, then rename it over `path`.

    With `keep_versions` > 0 an existing `path` is first kept as `<path>.bak` (older ones shift to `.bak2` ...
    up to `.bak<keep_versions>`), under `replace_lock`, so that of two processes saving at once neither write is
    lost; 0 keeps none (and removes none: versions kept earlier stay).
    On any failure the temporary file is removed and `path` is untouched; leftovers of earlier killed saves of
    the same file are swept first (`sweep_stale_temporaries`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_versions <= 0:
            os.replace(tmp, path)
        else:
            with replace_lock(path):
                if path.exists():
                    _keep_current_as_version(path, keep_versions)
                os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
