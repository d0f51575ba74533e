"""The durable local spool: append-only JSON-lines segment files (fsync'd), read back oldest first.

Every batch goes through the spool before the database, so a row survives a database outage, a SIGTERM, and a
crash after the fsync. A segment is deleted once all its rows are stored; rows read again after a crash are
stored once because inserts are keyed on the request id.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from kodify_proxy.errors import describe_validation
from kodify_proxy.journal.record import JournalRow, minimal_row

log = logging.getLogger("kodify_proxy.journal")

SEGMENT_BYTES = 8 << 20
_SEGMENT_GLOB = "segment-*.jsonl"
REJECTED_NAME = "rejected.jsonl"  # lines that are not rows, or rows the database refuses; kept for a human


class SpoolLocked(Exception):
    """Another process already uses this spool directory."""


@dataclass(frozen=True)
class Chunk:
    """Rows read from the oldest segment, and the byte offset reading stopped at."""

    segment: Path
    end: int
    rows: tuple[JournalRow, ...]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _append_synced(path: Path, data: bytes) -> None:
    # 0600: spooled rows hold prompts and answers, no other local user may read them.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "ab") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def spool_line(row: JournalRow) -> bytes:
    """A row as one JSON line; a row that can't be serialized whole becomes its minimal row, never nothing."""
    try:
        return row.model_dump_json().encode() + b"\n"
    except (PydanticSerializationError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log.error("Journal: request %s could not be serialized (%s); its minimal row is kept", row.request_id, reason)
        return minimal_row(row, reason).model_dump_json().encode() + b"\n"


# What a salvaged row keeps of a spooled line, and what stands in for a value that is missing or invalid.
_MINIMAL_FIELDS = ("started_at", "user_id", "method", "route", "status", "latency_ms")
_FALLBACK = {"started_at": "1970-01-01T00:00:00Z", "method": "?", "route": "?", "status": 500, "latency_ms": 0.0}


def salvage(line: bytes, reason: str) -> JournalRow | None:
    """The minimal row of a spooled line that is a JSON object with a request id but not a valid row; else None."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("request_id"), str):
        return None
    kept = {name: data[name] for name in _MINIMAL_FIELDS if name in data}
    for _ in range(2):  # a second time without the fields that were invalid: the fallbacks always are valid
        try:
            return minimal_row(JournalRow(request_id=data["request_id"], **{**_FALLBACK, **kept}), reason)
        except ValidationError as exc:
            kept = {name: value for name, value in kept.items() if name not in {e["loc"][0] for e in exc.errors()}}
    return None


def _segment_number(path: Path) -> int:
    return int(path.stem.removeprefix("segment-"))


class Spool:
    """Append-only segments in one directory, owned by one process (flock), thread-safe."""

    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory = directory
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._lock_fd = self._take_ownership(directory)
        self._active: Path | None = None
        self._cursor: tuple[Path, int] | None = None
        existing = self._segments()
        self._next_number = _segment_number(existing[-1]) + 1 if existing else 1

    @staticmethod
    def _take_ownership(directory: Path) -> int:
        fd = os.open(directory / "spool.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SpoolLocked(
                f"The journal spool {directory} is in use by another process; give each kodify-proxy its own "
                "KODIFY_JOURNAL_SPOOL_DIR (or KODIFY_STATE_DIR)"
            ) from None
        return fd

    def close(self) -> None:
        """Release the directory for another process."""
        with self._lock:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1

    def _segments(self) -> list[Path]:
        return sorted(self.directory.glob(_SEGMENT_GLOB), key=_segment_number)

    def append(self, rows: Sequence[JournalRow]) -> None:
        """Write rows durably (fsync) after everything already spooled."""
        if not rows:
            return
        data = b"".join(spool_line(row) for row in rows)
        with self._lock:
            if self._active is None:
                self._active = self.directory / f"segment-{self._next_number:012d}.jsonl"
                self._next_number += 1
                _append_synced(self._active, data)
                _fsync_dir(self.directory)
            else:
                _append_synced(self._active, data)
            if self._active.stat().st_size >= self._segment_bytes:
                self._active = None

    def pending(self) -> bool:
        """True while some spooled row is not known to be stored."""
        with self._lock:
            return bool(self._segments())

    def pending_bytes(self) -> int:
        """Bytes of spooled rows not known to be stored."""
        with self._lock:
            skip = self._cursor[1] if self._cursor is not None else 0
            return max(0, sum(path.stat().st_size for path in self._segments()) - skip)

    def read(self, limit: int) -> Chunk | None:
        """Up to `limit` rows from the oldest segment, after those already committed; None when empty."""
        with self._lock:
            segments = self._segments()
            if not segments:
                return None
            segment = segments[0]
            start = self._cursor[1] if self._cursor is not None and self._cursor[0] == segment else 0
            return self._read_segment(segment, start, limit)

    def _read_segment(self, segment: Path, start: int, limit: int) -> Chunk:
        rows: list[JournalRow] = []
        position = start
        with segment.open("rb") as handle:
            handle.seek(start)
            for line in handle:
                if not line.endswith(b"\n"):
                    # Only a crash mid-write leaves a line without its newline: it never held a whole row.
                    if segment != self._active:
                        self._reject(line, f"torn write at the end of {segment.name}")
                        position += len(line)
                    break
                position += len(line)
                row = self._parse(line, segment)
                if row is not None:
                    rows.append(row)
                if len(rows) >= limit:
                    break
        return Chunk(segment, position, tuple(rows))

    def _parse(self, line: bytes, segment: Path) -> JournalRow | None:
        try:
            return JournalRow.model_validate_json(line)
        except ValidationError as exc:
            reason = describe_validation(exc, first_only=True)
        salvaged = salvage(line, reason)
        if salvaged is None:
            self._reject(line, f"not a journal row in {segment.name}: {reason}")
            return None
        log.error(
            "Journal spool: request %s is not a whole row (%s); its minimal row is kept", salvaged.request_id, reason
        )
        return salvaged

    def _reject(self, line: bytes, reason: str) -> None:
        log.error("Journal spool: %s; kept in %s", reason, self.directory / REJECTED_NAME)
        _append_synced(self.directory / REJECTED_NAME, line.rstrip(b"\n") + b"\n")

    def reject(self, rows: Sequence[JournalRow], reason: str) -> None:
        """Set aside rows the database refuses (kept in rejected.jsonl), so they don't block the rest."""
        with self._lock:
            for row in rows:
                self._reject(spool_line(row), f"request {row.request_id}: {reason}")

    def adopt(self, other: Spool) -> int:
        """Move `other`'s segments (this process owns both spools) after this one's, oldest first; how many."""
        with self._lock:
            segments = other._segments()
            for segment in segments:
                segment.rename(self.directory / f"segment-{self._next_number:012d}.jsonl")
                self._next_number += 1
            _fsync_dir(self.directory)
            return len(segments)

    def commit(self, chunk: Chunk) -> None:
        """The chunk's rows are stored: move past them, deleting the segment once it is used up."""
        with self._lock:
            if chunk.end < chunk.segment.stat().st_size:
                self._cursor = (chunk.segment, chunk.end)
                return
            if chunk.segment == self._active:
                self._active = None
            chunk.segment.unlink()
            self._cursor = None


def adopt_orphans(base: Path, workers: int) -> int:
    """Move the segments of `base/worker-N` spools that no worker of this run owns (N >= `workers`: an earlier run
    had more) into `base`'s own, after its segments, so worker 0 stores them. Run before any worker starts; each
    spool is locked while it is touched. Returns how many segments moved."""
    orphans = orphan_directories(base, workers)
    if not orphans or not any(orphan.glob(_SEGMENT_GLOB) for orphan in orphans):
        return 0
    moved = 0
    owner = Spool(base)
    try:
        for orphan in orphans:
            spool = Spool(orphan)
            try:
                moved += owner.adopt(spool)
            finally:
                spool.close()
    finally:
        owner.close()
    return moved


def orphan_directories(base: Path, workers: int) -> list[Path]:
    """The `base/worker-N` spool directories no worker of a run with `workers` workers owns (N >= `workers`)."""
    return [path for path in sorted(base.glob("worker-*")) if path.is_dir() and _worker_number(path) >= workers]


def adopt_spools(base: Path, other: Path) -> tuple[int, list[Path]]:
    """Move the segments of the spool `other` and its `worker-N` spools (a server that stopped, or an older release,
    left them) into `base`'s own, so this server's worker 0 stores them. A spool still locked is a running server's:
    it is left alone and returned, to be said. Returns how many segments moved, and the spools left."""
    sources = [other, *sorted(path for path in other.glob("worker-*") if path.is_dir())] if other.is_dir() else []
    pending = [source for source in sources if any(source.glob(_SEGMENT_GLOB))]
    if not pending:
        return 0, []
    moved, busy = 0, []
    owner = Spool(base)
    try:
        for source in pending:
            try:
                spool = Spool(source)
            except SpoolLocked:
                busy.append(source)
                continue
            try:
                moved += owner.adopt(spool)
            finally:
                spool.close()
    finally:
        owner.close()
    return moved, busy


def _worker_number(path: Path) -> int:
    suffix = path.name.removeprefix("worker-")
    return int(suffix) if suffix.isdigit() else -1
