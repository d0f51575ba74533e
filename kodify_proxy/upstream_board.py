"""The upstream board: one view of the upstreams for every process of one server (`serve --workers N`).

A small JSON file in the server's instance directory holds, per upstream, the latest check anyone made of it: up or
down, its models (and vLLM's model cards), its error, and when the check began. Whoever checks an upstream (the
periodic checks, or a check a failed request asked for) publishes what it found: merged per upstream by check time
under a flock, written aside and renamed into place, so a reader never sees half a file. Every worker reads the file
every POLL_INTERVAL and adopts what is newer than its own view: reading a few hundred bytes from the page cache and
comparing them with the last read costs a few microseconds (measured in docs/deployment.md), and is exact where a
stat() is not (a renamed file may reuse a freed inode number within one timestamp tick).

The periodic checks are one worker's: whichever holds the prober lock (a non-blocking flock). When it dies the kernel
frees the lock and another worker takes it at its next poll; the checks it finds due follow from the board's times,
so nothing is checked twice as often. Times are CLOCK_MONOTONIC (`time.monotonic`), one clock for every process on
the machine that NTP does not move; the board is rewritten at each start, so a reboot's new clock never meets it.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, ValidationError

from kodify_proxy.upstreams import Upstream, UpstreamState

log = logging.getLogger("kodify_proxy.upstream_monitor")

POLL_INTERVAL: Final = 0.1  # seconds between two reads of the board by each worker
BOARD_NAME: Final = "upstreams.json"
_WRITE_LOCK: Final = "upstreams.lock"
_PROBER_LOCK: Final = "prober.lock"
_CHUNK: Final = 64 << 10  # one read holds a board of ~200 upstreams; os.read allocates what it is asked for


class Observation(BaseModel):
    """What one check of one upstream found, and when it began (monotonic seconds)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    healthy: bool
    models: tuple[str, ...] = ()
    error: str | None = None
    checked_at: float
    model_cards: tuple[dict[str, Any], ...] = ()


class BoardFile(BaseModel):
    """The board on disk: upstream URL -> its latest observation."""

    model_config = ConfigDict(extra="ignore")

    upstreams: dict[str, Observation] = {}


def observe(state: UpstreamState) -> Observation | None:
    """A checked state as an observation (None for one never checked)."""
    if state.checked_at is None:
        return None
    cards = tuple(dict(card) for card in state.model_cards)
    return Observation(
        healthy=state.healthy, models=state.models, error=state.error, checked_at=state.checked_at, model_cards=cards
    )


def adopt(upstream: Upstream, observation: Observation) -> UpstreamState:
    """An observation as the state of `upstream`."""
    return UpstreamState(
        upstream=upstream,
        healthy=observation.healthy,
        models=observation.models,
        error=observation.error,
        checked_at=observation.checked_at,
        model_cards=observation.model_cards,
    )


def merge(current: Mapping[str, Observation], new: Mapping[str, Observation]) -> dict[str, Observation]:
    """Per upstream, the observation whose check began last."""
    merged = dict(current)
    for url, observation in new.items():
        known = merged.get(url)
        if known is None or observation.checked_at > known.checked_at:
            merged[url] = observation
    return merged


def parse_board(data: bytes) -> dict[str, Observation]:
    """The board file's observations; an empty or unreadable file is an empty board (it is rewritten whole)."""
    if not data:
        return {}
    try:
        return BoardFile.model_validate_json(data).upstreams
    except ValidationError:
        log.warning("The upstream board is not readable; it is rewritten at the next check")
        return {}


class UpstreamBoard:
    """One server's board in its instance directory, as one process uses it (publish, poll, lead)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / BOARD_NAME
        self._directory = directory
        self._seen = b""
        self._prober: int | None = None  # the prober lock's descriptor, kept open
        self._leading = False

    def reset(self, observations: Mapping[str, Observation]) -> None:
        """Start the board afresh with `observations` (`serve`, before any worker): nothing of an earlier run stays."""
        self._write(observations, merged=False)

    def publish(self, observations: Mapping[str, Observation]) -> None:
        """Add what this process found, keeping whatever newer the board already holds (blocking: the lock is held
        by another process only for its own read-merge-write)."""
        self._write(observations, merged=True)

    def news(self) -> dict[str, Observation] | None:
        """The board when it changed since the last call, else None."""
        data = self._read()
        if data == self._seen:
            return None
        self._seen = data
        return parse_board(data)

    def lead(self) -> bool:
        """Whether this process makes the periodic checks: it holds the prober lock, or takes it now (one flock
        call while another process holds it)."""
        if not self._leading:
            if self._prober is None:
                self._prober = os.open(self._directory / _PROBER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._prober, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False
            self._leading = True
            log.info("This process makes the periodic upstream checks for the server (pid %d)", os.getpid())
        return True

    def close(self) -> None:
        """Give up the periodic checks (another worker takes them)."""
        if self._prober is not None:
            os.close(self._prober)
            self._prober, self._leading = None, False

    def _read(self) -> bytes:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return b""
        try:
            chunks = [os.read(fd, _CHUNK)]
            while len(chunks[-1]) == _CHUNK:
                chunks.append(os.read(fd, _CHUNK))
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _write(self, observations: Mapping[str, Observation], merged: bool) -> None:
        fd = os.open(self._directory / _WRITE_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if merged:
                observations = merge(parse_board(self._read()), observations)
            draft = self.path.with_name(f".{BOARD_NAME}.draft")  # one writer at a time: the lock
            draft.write_bytes(BoardFile(upstreams=dict(observations)).model_dump_json().encode())
            os.replace(draft, self.path)  # atomic: a reader sees the old board or the new one
        finally:
            os.close(fd)  # frees the lock
