"""Where the Compose tier keeps what outlives a run: ${KODIFY_CACHE:-~/.cache/kodify-proxy}/compose, each entry named
by a digest of what it was made from, so a changed recipe makes a new one and the old one is removed."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

CACHE = Path(os.environ.get("KODIFY_CACHE") or Path.home() / ".cache" / "kodify-proxy") / "compose"


def digest(*parts: str | bytes) -> str:
    """A short sha256 of `parts` in order: the key of a cache entry."""
    hasher = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        hasher.update(len(data).to_bytes(8, "big") + data)
    return hasher.hexdigest()[:16]


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """The cache to this process alone: a second run on the machine waits, then finds the entries made."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def drop_older(entry: Path, prefix: str) -> None:
    """Remove the entries beside `entry` whose names start with `prefix`: earlier versions of it."""
    for other in entry.parent.glob(f"{prefix}*"):
        if other != entry:
            shutil.rmtree(other) if other.is_dir() else other.unlink()
