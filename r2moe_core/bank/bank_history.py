"""A bank's kept versions (`<name>.bak`, `.bak2`, ...): list them with what they hold, restore one.

Versions are named to a user by a short content digest, not by their age, because every save shifts the ages:
restoring digest X twice restores it once (the second time it is already the current file)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInputError, R2MoEError
from .atomic_write import atomic_write_bytes, kept_versions
from .bank_file import DEFAULT_KEEP_VERSIONS, bank_from_bytes

DIGEST_CHARS = 12


@dataclass(frozen=True)
class BankVersion:
    age: int  # 0 = the current file, 1 = the newest kept version, ...
    path: Path
    saved: float  # modification time, seconds since the epoch
    digest: str  # the first DIGEST_CHARS hex digits of the file's SHA-256
    concepts: tuple[str, ...] | None  # None when the file does not read as a bank
    problem: str = ""

    def line(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.saved))
        names = ", ".join(self.concepts or ()) or "(no concepts)"
        what = f"unreadable: {self.problem}" if self.concepts is None else names
        label = "current" if self.age == 0 else f"version {self.age}"
        return f"{self.digest}  {label:<10} saved {when}  {what}"


def _version(age: int, path: Path) -> BankVersion:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:DIGEST_CHARS]
    try:
        concepts: tuple[str, ...] | None = tuple(c.name for c in bank_from_bytes(data, path.name).concepts)
        problem = ""
    except R2MoEError as err:
        concepts, problem = None, str(err)[:200]
    return BankVersion(age, path, path.stat().st_mtime, digest, concepts, problem)


def bank_versions(path: str | Path) -> list[BankVersion]:
    """The current file (if any) and its kept versions, newest first."""
    path = Path(path)
    found = [(0, path)] if path.is_file() else []
    return [_version(age, file) for age, file in [*found, *kept_versions(path)]]


def restore_version(path: str | Path, digest: str, keep_versions: int = DEFAULT_KEEP_VERSIONS) -> BankVersion:
    """Make the version with this digest the current file again; the file it replaces becomes version 1, so a
    restore is undone by restoring that one. Unreadable versions are refused, so a restore never breaks a bank."""
    path, digest = Path(path), digest.strip().lower()
    versions = bank_versions(path)
    matches = [v for v in versions if v.digest.startswith(digest)] if len(digest) >= 6 else []
    if len({v.digest for v in matches}) == 1:
        matches = matches[:1]  # the same bytes kept twice: the newest copy (the current file, if it is one)
    if len(matches) != 1:
        listed = "; ".join(f"{v.digest} ({'current' if v.age == 0 else f'version {v.age}'})" for v in versions)
        why = "matches no version" if not matches else "matches several versions"
        raise InvalidInputError(
            f"{digest[:40]!r} {why} of {path.name} (give at least 6 characters of a digest: {listed or 'none'})."
        )
    chosen = matches[0]
    if chosen.concepts is None:
        raise InvalidInputError(f"Version {chosen.digest} of {path.name} is not a readable bank: {chosen.problem}")
    if chosen.age == 0:
        return chosen
    atomic_write_bytes(path, chosen.path.read_bytes(), keep_versions=max(keep_versions, 1))
    return _version(0, path)
